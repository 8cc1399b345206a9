//! Stage tests of the judge (`src/judge.rs`): a correct stencil passes at
//! every layout, and every mutant — of the patched image, of the emit order,
//! or of a run's trace — is caught with a finding that names the right
//! relocation and the right labels.

use common::{place, static_sites, X86};
use std::collections::BTreeSet;
use std::path::PathBuf;
use stencilcheck::execute::x86_64::{convention, UnicornX86, RETURN_SENTINEL};
use stencilcheck::execute::{CallRecord, Engine, ExitKind, RunEnd, SiteObservation, Trace};
use stencilcheck::judge::{
    coverage, judge_accounting, judge_data_slots, judge_relaxed_pairs, judge_run, judge_sites, Finding, FindingKind,
};
use stencilcheck::model::{
    Arch, DataComment, DataCommentKind, Effect, EmitOp, PatchFn, RelocKind, Section, Stencil, StencilSet, Term,
};
use stencilcheck::patch::{self, Image, Ports};
use stencilcheck::place::{Layout, Placement};
mod common;
use common::{hole_at as hole, listing, reloc_at as reloc, slot_at as slot};

// ---------------------------------------------------------------------------
// Building stencils
// ---------------------------------------------------------------------------

// Relocation indices of `uop()`.
const R_DATA: usize = 0;
const R_OPARG: usize = 1;
const R_STR: usize = 2;
const R_FUNC: usize = 3;
const R_ERROR: usize = 4;
const R_CONTINUE: usize = 5;

/// A uop in 3.13's shape:
///
/// ```text
///  0: 53               push rbx
///  1: 48 8b 05 ..      mov rax, [rip+slot]   @4  REX_GOTPCRELX PyData-4          (slot data+8)
///  8: 0f b7 0d ..      movzwl ecx, [rip+slot] @11 GOTPCREL _JIT_OPARG-4          (slot data+16)
/// 15: 48 8d 15 ..      lea rdx, [rip+.L.str] @18 PC32 .L.str-4                   (data+0)
/// 22: ff 15 ..         call *[rip+slot]      @24 GOTPCRELX PyFunc-4              (slot data+24)
/// 28: 5b               pop rbx
/// 29: 48 85 c0         test rax, rax
/// 32: 75 06            jne 40
/// 34: ff 25 ..         jmp *[rip+slot]       @36 GOTPCRELX _JIT_ERROR_TARGET-4   (slot data+32)
/// 40: ff 25 ..         jmp *[rip+slot]       @42 GOTPCRELX _JIT_CONTINUE-4       (slot data+40)
/// ```
/// Holes in emit order: data+8, +16, +24, +32, +40 (0..=4), then code+4,
/// +11, +18, +24, +36, +42 (5..=10).
fn uop() -> Stencil {
    let mut code = vec![0x53];
    code.extend([0x48, 0x8b, 0x05, 0, 0, 0, 0]);
    code.extend([0x0f, 0xb7, 0x0d, 0, 0, 0, 0]);
    code.extend([0x48, 0x8d, 0x15, 0, 0, 0, 0]);
    code.extend([0xff, 0x15, 0, 0, 0, 0]);
    code.extend([0x5b, 0x48, 0x85, 0xc0, 0x75, 0x06]);
    code.extend([0xff, 0x25, 0, 0, 0, 0]);
    code.extend([0xff, 0x25, 0, 0, 0, 0]);
    assert_eq!(code.len(), 46);
    let mut data = b"hi!\0\0\0\0\0".to_vec();
    data.resize(48, 0);
    let sym = |n: &str| Term::Symbol(n.into());
    Stencil {
        locals: Default::default(),
        ordinals: Default::default(),
        trampoline_mask: Vec::new(),
        got_mask: Vec::new(),
        name: "_UOP".into(),
        line: 100,
        instructions: listing(&code),
        code,
        data,
        relocations: vec![
            reloc(4, RelocKind::X86_64_REX_GOTPCRELX, "PyData", -4, 110),
            reloc(11, RelocKind::X86_64_GOTPCREL, "_JIT_OPARG", -4, 111),
            reloc(18, RelocKind::X86_64_PC32, ".L.str", -4, 112),
            reloc(24, RelocKind::X86_64_GOTPCRELX, "PyFunc", -4, 113),
            reloc(36, RelocKind::X86_64_GOTPCRELX, "_JIT_ERROR_TARGET", -4, 114),
            reloc(42, RelocKind::X86_64_GOTPCRELX, "_JIT_CONTINUE", -4, 115),
        ],
        data_comments: vec![
            DataComment { offset: 0, kind: DataCommentKind::Bytes, line: 120 },
            slot(8, sym("PyData"), 121),
            slot(16, Term::Oparg, 122),
            slot(24, sym("PyFunc"), 123),
            slot(32, Term::ErrorTarget, 124),
            slot(40, Term::Continue, 125),
        ],
        emit: vec![
            EmitOp::CopyData { line: 130 },
            hole(PatchFn::P64, Section::Data, 8, sym("PyData"), 0, 131),
            hole(PatchFn::P64, Section::Data, 16, Term::Oparg, 0, 132),
            hole(PatchFn::P64, Section::Data, 24, sym("PyFunc"), 0, 133),
            hole(PatchFn::P64, Section::Data, 32, Term::ErrorTarget, 0, 134),
            hole(PatchFn::P64, Section::Data, 40, Term::Continue, 0, 135),
            EmitOp::CopyCode { line: 136 },
            hole(PatchFn::X86_64_32rx, Section::Code, 4, Term::Data, 8 - 4, 137),
            hole(PatchFn::X86_64_32rx, Section::Code, 11, Term::Data, 16 - 4, 138),
            hole(PatchFn::P32r, Section::Code, 18, Term::Data, -4, 139),
            hole(PatchFn::X86_64_32rx, Section::Code, 24, Term::Data, 24 - 4, 140),
            hole(PatchFn::X86_64_32rx, Section::Code, 36, Term::Data, 32 - 4, 141),
            hole(PatchFn::X86_64_32rx, Section::Code, 42, Term::Data, 40 - 4, 142),
        ],
    }
}

/// `jmp *[rip]` → `_JIT_CONTINUE` (always relaxed: the continuation is next door).
fn jmp_continue() -> Stencil {
    let code = vec![0xff, 0x25, 0, 0, 0, 0];
    Stencil {
        locals: Default::default(),
        ordinals: Default::default(),
        trampoline_mask: Vec::new(),
        got_mask: Vec::new(),
        name: "_JMP".into(),
        line: 1,
        instructions: listing(&code),
        code,
        data: vec![0; 8],
        relocations: vec![reloc(2, RelocKind::X86_64_GOTPCRELX, "_JIT_CONTINUE", -4, 2)],
        data_comments: vec![slot(0, Term::Continue, 3)],
        emit: vec![
            EmitOp::CopyData { line: 4 },
            hole(PatchFn::P64, Section::Data, 0, Term::Continue, 0, 5),
            EmitOp::CopyCode { line: 6 },
            hole(PatchFn::X86_64_32rx, Section::Code, 2, Term::Data, -4, 7),
        ],
    }
}

fn engine() -> UnicornX86 {
    let set = StencilSet {
        path: PathBuf::from("test.h"),
        target: stencilcheck::target::Target::elf(Arch::X86_64),
        stencils: vec![],
        symbols_map: Vec::new(),
    };
    UnicornX86::new(convention(&set, stencilcheck::execute::SYSV_X86_64), 100_000).unwrap()
}

fn placement_of(s: &Stencil, seed: u64, layout: Layout) -> Placement {
    (0..8).map(|i| place(s, seed, i).unwrap()).find(|p| p.layout == layout).unwrap()
}

/// Everything the pipeline judges for one image: static sites, data slots,
/// the run's sites and the run itself (not strict).
struct Judged {
    static_findings: Vec<Finding>,
    slot_findings: Vec<Finding>,
    dynamic_findings: Vec<Finding>,
    run_findings: Vec<Finding>,
    inconclusive: Option<String>,
    trace: Trace,
}

impl Judged {
    fn all(&self) -> Vec<&Finding> {
        self.static_findings
            .iter()
            .chain(&self.slot_findings)
            .chain(&self.dynamic_findings)
            .chain(&self.run_findings)
            .collect()
    }
}

fn judge(e: &mut UnicornX86, s: &Stencil, p: &Placement, image: &Image) -> Judged {
    let st = static_sites(s, image);
    let trace = e.run(s, p, image);
    let run = judge_run(X86, s, p, &trace, false);
    Judged {
        static_findings: judge_sites(X86, s, p, image, &st),
        slot_findings: judge_data_slots(s, p, image),
        dynamic_findings: judge_sites(X86, s, p, image, &trace.sites),
        run_findings: run.findings,
        inconclusive: run.inconclusive,
        trace,
    }
}

fn write_u32(image: &mut Image, addr: u64, v: u32) {
    image.write(addr, &v.to_le_bytes()).unwrap();
}

fn write_u64(image: &mut Image, addr: u64, v: u64) {
    image.write(addr, &v.to_le_bytes()).unwrap();
}

fn exit_target(t: &Trace) -> u64 {
    match t.end {
        Some(RunEnd::Exit { target, .. }) => target,
        ref other => panic!("{other:?}"),
    }
}

/// The one WrongValue finding among `fs`, checked against relocation `r` and the expected label.
fn wrong_value<'a>(fs: &'a [Finding], s: &Stencil, r: usize, expected_label: &str) -> &'a Finding {
    let hits: Vec<&Finding> = fs.iter().filter(|f| f.kind == FindingKind::WrongValue).collect();
    assert_eq!(hits.len(), 1, "want one WrongValue, got {fs:#?}");
    let f = hits[0];
    assert_eq!(f.relocation, Some(r), "{f:#?}");
    assert_eq!(f.expected.as_ref().unwrap().label, expected_label, "{f:#?}");
    let site = f.site.as_ref().unwrap();
    assert_eq!(site.offset, s.relocations[r].offset);
    assert_eq!(site.relocation.as_deref(), Some(s.relocations[r].text.as_str()));
    assert_eq!(site.relocation_line, Some(s.relocations[r].line));
    assert!(f.message.contains(s.relocations[r].kind.name()), "{}", f.message);
    f
}

// ---------------------------------------------------------------------------
// The correct stencil
// ---------------------------------------------------------------------------

#[test]
fn a_correct_stencil_has_no_findings_at_any_layout() {
    let s = uop();
    let mut e = engine();
    let (mut errors, mut continues, mut relaxed, mut unrelaxed) = (0, 0, 0, 0);
    for seed in 0..8 {
        for index in 0..8 {
            let p = place(&s, seed, index).unwrap();
            let image = patch::emit(&s, &p, &Ports).unwrap();
            let j = judge(&mut e, &s, &p, &image);
            let what = format!("seed {seed} {:?}", p.layout);
            assert!(j.all().is_empty(), "{what}: {:#?}", j.all());
            assert_eq!(j.inconclusive, None, "{what}");
            // Every site before the branch ran, and at least one exit site.
            let seen: BTreeSet<usize> = j.trace.sites.iter().map(|o| o.relocation).collect();
            for r in [R_DATA, R_OPARG, R_STR, R_FUNC] {
                assert!(seen.contains(&r), "{what}: site {r} not observed: {seen:?}");
            }
            assert_eq!(static_sites(&s, &image).len(), 6, "{what}");
            let t = exit_target(&j.trace);
            if t == p.error_target {
                errors += 1;
            } else {
                assert_eq!(t, p.continuation(&s));
                continues += 1;
            }
            if image.code[2] == 0x8d {
                relaxed += 1
            } else {
                unrelaxed += 1
            }
            // Strict judging of a clean run finds nothing either.
            let strict = judge_run(X86, &s, &p, &j.trace, true);
            assert!(strict.findings.is_empty() && strict.inconclusive.is_none(), "{what}");
        }
    }
    // Both exits and both forms of the GOT load were exercised.
    assert!(errors > 0 && continues > 0, "error exits {errors}, continues {continues}");
    assert!(relaxed > 0 && unrelaxed > 0, "relaxed {relaxed}, unrelaxed {unrelaxed}");
}

// ---------------------------------------------------------------------------
// Mutants of the patched image
// ---------------------------------------------------------------------------

#[test]
fn mutant_relaxed_jmp_off_by_8_is_caught() {
    let s = jmp_continue();
    let mut e = engine();
    for index in 0..8 {
        let p = place(&s, 1, index).unwrap();
        let mut image = patch::emit(&s, &p, &Ports).unwrap();
        assert_eq!(image.code[..2], [0x90, 0xe9]);
        let rel = image.read_u32(p.code + 2).unwrap();
        write_u32(&mut image, p.code + 2, rel.wrapping_add(8));
        let j = judge(&mut e, &s, &p, &image);
        let cont = p.continuation(&s);
        for fs in [&j.static_findings, &j.dynamic_findings] {
            let f = wrong_value(fs, &s, 0, "_JIT_CONTINUE");
            assert_eq!(f.expected.as_ref().unwrap().value, cont);
            assert_eq!(f.actual.as_ref().unwrap().value, cont + 8);
            assert_eq!(
                f.site.as_ref().unwrap().hole.as_deref(),
                Some("patch_x86_64_32rx(code + 0x2, (uintptr_t)data + -0x4)")
            );
        }
        // The run left for continuation+8: no relocation allows that.
        assert_eq!(exit_target(&j.trace), cont + 8);
        assert_eq!(j.run_findings.len(), 1, "{:#?}", j.run_findings);
        assert_eq!(j.run_findings[0].kind, FindingKind::BadExit);
        // The slot itself is fine.
        assert!(j.slot_findings.is_empty());
    }
}

#[test]
fn mutant_relaxed_error_jump_off_by_8_is_caught() {
    let s = uop();
    let mut e = engine();
    let p = placement_of(&s, 2, Layout::Compact);
    let mut image = patch::emit(&s, &p, &Ports).unwrap();
    assert_eq!(image.code[34..36], [0x90, 0xe9], "error jump relaxed");
    let rel = image.read_u32(p.code + 36).unwrap();
    write_u32(&mut image, p.code + 36, rel.wrapping_add(8));
    let j = judge(&mut e, &s, &p, &image);
    let f = wrong_value(&j.static_findings, &s, R_ERROR, "_JIT_ERROR_TARGET");
    assert_eq!(f.actual.as_ref().unwrap().value, p.error_target + 8);
    assert!(f.message.contains("instead of _JIT_ERROR_TARGET"), "{}", f.message);
}

/// LLVM JITLink #190968: relaxing `call *` wrote the ABSOLUTE address into the PC-relative `e8`.
#[test]
fn mutant_absolute_address_in_relaxed_call_is_caught() {
    let s = uop();
    let mut e = engine();
    for seed in 0..4 {
        let p = placement_of(&s, seed, Layout::Compact);
        let mut image = patch::emit(&s, &p, &Ports).unwrap();
        assert_eq!(image.code[22..24], [0x90, 0xe8]);
        let func = p.externs["PyFunc"];
        write_u32(&mut image, p.code + 24, func as u32);
        let j = judge(&mut e, &s, &p, &image);
        let f = wrong_value(&j.static_findings, &s, R_FUNC, "PyFunc");
        assert_eq!(f.expected.as_ref().unwrap().value, func);
        assert_eq!(f.site.as_ref().unwrap().hole_line, Some(140));
        // The run called somewhere else too.
        wrong_value(&j.dynamic_findings, &s, R_FUNC, "PyFunc");
        assert_ne!(j.trace.calls[0].target, func);
    }
}

/// The other half of the JITLink bug family: `call *` relaxed into `jmp`
/// (e9). The target is right, so only the kind of transfer gives it away.
#[test]
fn mutant_relaxed_call_turned_into_a_jump_is_caught() {
    let s = uop();
    let mut e = engine();
    for seed in 0..4 {
        let p = placement_of(&s, seed, Layout::Compact);
        let mut image = patch::emit(&s, &p, &Ports).unwrap();
        assert_eq!(image.code[22..24], [0x90, 0xe8]);
        // e9 with the same rel32 reaches PyFunc, but never comes back.
        image.code[23] = 0xe9;
        let j = judge(&mut e, &s, &p, &image);
        for fs in [&j.static_findings, &j.dynamic_findings] {
            let f: Vec<&Finding> = fs.iter().filter(|f| f.relocation == Some(R_FUNC)).collect();
            assert_eq!(f.len(), 1, "seed {seed}: {fs:#?}");
            assert_eq!(f[0].kind, FindingKind::MangledSite);
            assert!(f[0].message.contains("call") && f[0].message.contains("now a jump"), "{}", f[0].message);
        }
    }
}

#[test]
fn mutant_got_slot_redirected_to_the_error_target_is_caught() {
    let s = uop();
    let mut e = engine();
    let p = placement_of(&s, 3, Layout::FarExterns);
    let mut image = patch::emit(&s, &p, &Ports).unwrap();
    assert_eq!(image.code[22..24], [0xff, 0x15], "far: the call stays indirect");
    write_u64(&mut image, p.data + 24, p.error_target);
    let j = judge(&mut e, &s, &p, &image);
    for fs in [&j.static_findings, &j.dynamic_findings] {
        let f = wrong_value(fs, &s, R_FUNC, "PyFunc");
        assert_eq!(f.actual.as_ref().unwrap().value, p.error_target);
        assert_eq!(f.actual.as_ref().unwrap().label, "_JIT_ERROR_TARGET");
        assert!(f.message.contains("control went to"), "{}", f.message);
    }
    assert_eq!(j.trace.calls[0].target, p.error_target);
    // The data slot check says the same, from the data side.
    assert_eq!(j.slot_findings.len(), 1);
    let f = &j.slot_findings[0];
    assert_eq!(f.kind, FindingKind::DataSlot);
    assert_eq!(
        (f.expected.as_ref().unwrap().label.as_str(), f.actual.as_ref().unwrap().label.as_str()),
        ("PyFunc", "_JIT_ERROR_TARGET")
    );
    assert_eq!(f.site.as_ref().unwrap().offset, 24);
    assert_eq!(f.site.as_ref().unwrap().hole_line, Some(133));
}

#[test]
fn mutant_relaxed_lea_turned_back_into_a_load_is_caught() {
    let s = uop();
    let mut e = engine();
    let mut dynamic_caught = 0;
    for seed in 0..8 {
        let p = placement_of(&s, seed, Layout::Compact);
        let mut image = patch::emit(&s, &p, &Ports).unwrap();
        assert_eq!(image.code[2], 0x8d);
        image.code[2] = 0x8b; // mov rax, [rip + PyData]: loads from S instead of forming it
        let j = judge(&mut e, &s, &p, &image);
        // Statically the load's memory is outside the image: the site cannot
        // be evaluated (it is no mangled site either), so only the run judges it.
        assert!(
            j.static_findings.iter().all(|f| f.relocation == Some(R_DATA) && f.kind == FindingKind::WrongValue),
            "seed {seed}: {:#?}",
            j.static_findings
        );
        // The run loads made-up memory at S.
        let loads = j.trace.sites.iter().filter(|o| o.relocation == R_DATA).collect::<Vec<_>>();
        assert!(
            matches!(loads[0].effect, Some(Effect::Load { address, bits: 64, .. }) if address == p.externs["PyData"])
        );
        if j.dynamic_findings.iter().any(|f| f.kind == FindingKind::WrongValue && f.relocation == Some(R_DATA)) {
            dynamic_caught += 1;
        }
    }
    assert!(dynamic_caught >= 6, "the run caught it in only {dynamic_caught} of 8 placements");
}

#[test]
fn mutant_wrong_got_load_value_is_caught() {
    let s = uop();
    let mut e = engine();
    let p = placement_of(&s, 4, Layout::FarExterns);
    let mut image = patch::emit(&s, &p, &Ports).unwrap();
    assert_eq!(image.code[2], 0x8b, "far: stays a GOT load");
    let data = p.externs["PyData"];
    write_u64(&mut image, p.data + 8, data + 8);
    let j = judge(&mut e, &s, &p, &image);
    for fs in [&j.static_findings, &j.dynamic_findings] {
        let f = wrong_value(fs, &s, R_DATA, "PyData");
        assert_eq!(f.actual.as_ref().unwrap().value, data + 8);
        assert!(f.message.contains("loaded"), "{}", f.message);
    }
    assert_eq!(j.slot_findings.len(), 1);
}

#[test]
fn mutant_oparg_slot_is_judged_at_the_width_the_instruction_loads() {
    let s = uop();
    let mut e = engine();
    let p = place(&s, 5, 0).unwrap();
    let image = patch::emit(&s, &p, &Ports).unwrap();
    let oparg = p.oparg as u64;
    // Low 16 bits wrong: movzwl loads a wrong oparg.
    let mut low = image.clone();
    write_u64(&mut low, p.data + 16, oparg ^ 1);
    let j = judge(&mut e, &s, &p, &low);
    for fs in [&j.static_findings, &j.dynamic_findings] {
        wrong_value(fs, &s, R_OPARG, "_JIT_OPARG");
    }
    assert_eq!(j.slot_findings.len(), 1);
    // Only bits above 16 wrong: the instruction cannot see it, the slot check can.
    let mut high = image.clone();
    write_u64(&mut high, p.data + 16, oparg | 0x1_0000);
    let j = judge(&mut e, &s, &p, &high);
    assert!(j.static_findings.is_empty() && j.dynamic_findings.is_empty(), "{:#?}", j.static_findings);
    assert_eq!(j.slot_findings.len(), 1);
    assert_eq!(j.slot_findings[0].expected.as_ref().unwrap().label, "_JIT_OPARG");
}

#[test]
fn mutant_rodata_lea_outside_the_rodata_is_caught() {
    let s = uop();
    let mut e = engine();
    let p = place(&s, 6, 1).unwrap();
    let mut image = patch::emit(&s, &p, &Ports).unwrap();
    // Within the 8 bytes of rodata: still fine (a string may be addressed mid-way).
    let rel = image.read_u32(p.code + 18).unwrap();
    write_u32(&mut image, p.code + 18, rel.wrapping_add(3));
    assert!(judge(&mut e, &s, &p, &image).static_findings.is_empty());
    // 8 bytes on: the first GOT slot, not rodata.
    write_u32(&mut image, p.code + 18, rel.wrapping_add(8));
    let j = judge(&mut e, &s, &p, &image);
    for fs in [&j.static_findings, &j.dynamic_findings] {
        let f = wrong_value(fs, &s, R_STR, "data+0x0");
        assert_eq!(f.expected.as_ref().unwrap().value, p.data);
        assert_eq!(f.actual.as_ref().unwrap().label, "data+0x8");
    }
}

/// The order bug of DOMAIN §7: code patched before data relaxes against
/// stale slot contents. Wherever that leaves a site using something other
/// than S, the judge must say so, for that site, and nowhere else.
#[test]
fn mutant_code_patched_before_data_is_caught() {
    let good = uop();
    let mut swapped = uop();
    let code_ops = swapped.emit.split_off(6);
    swapped.emit = [code_ops, swapped.emit].concat();
    let mut e = engine();
    let (mut broken, mut differing) = (0, 0);
    for seed in 0..6 {
        for index in 0..8 {
            let p = place(&good, seed, index).unwrap();
            let right = patch::emit(&good, &p, &Ports).unwrap();
            let wrong = patch::emit(&swapped, &p, &Ports).unwrap();
            if wrong != right {
                differing += 1;
            }
            let j = judge(&mut e, &good, &p, &wrong);
            // Independent oracle: decode each relaxable GOT site by hand.
            // (relocation, displacement offset, instruction end, S)
            let sites = [
                (R_DATA, 4u64, 8u64, p.externs["PyData"]),
                (R_FUNC, 24, 28, p.externs["PyFunc"]),
                (R_ERROR, 36, 40, p.error_target),
                (R_CONTINUE, 42, 46, p.continuation(&good)),
            ];
            for (r, off, end, s_val) in sites {
                let disp = wrong.read_u32(p.code + off).unwrap() as i32 as i64 as u64;
                let refers = (p.code + end).wrapping_add(disp);
                let relaxed = matches!(wrong.code[off as usize - 2], 0x8d | 0x90);
                let uses = if relaxed { refers } else { wrong.read_u64(refers).unwrap() };
                let flagged: Vec<&Finding> = j.static_findings.iter().filter(|f| f.relocation == Some(r)).collect();
                let what = format!("seed {seed} index {index} relocation {r}");
                if uses == s_val {
                    assert!(flagged.is_empty(), "{what}: correct site flagged: {flagged:#?}");
                } else {
                    broken += 1;
                    assert_eq!(flagged.len(), 1, "{what}: uses {uses:#x} instead of {s_val:#x}, not caught");
                    assert_eq!(flagged[0].kind, FindingKind::WrongValue);
                    assert_eq!(flagged[0].expected.as_ref().unwrap().label, good.relocations[r].symbol.to_string());
                    assert_eq!(flagged[0].actual.as_ref().unwrap().value, uses);
                }
            }
            // Nothing else is ever flagged: the other sites are not relaxable.
            for f in &j.static_findings {
                assert!([R_DATA, R_FUNC, R_ERROR, R_CONTINUE].contains(&f.relocation.unwrap()), "{f:#?}");
            }
            // The data ends up right either way.
            assert!(j.slot_findings.is_empty());
        }
    }
    assert!(differing > 10, "only {differing} of 48 swapped images differ");
    assert!(broken > 10, "only {broken} broken sites in 48 swapped images");
}

// ---------------------------------------------------------------------------
// Mutants of the trace
// ---------------------------------------------------------------------------

/// A clean run of `jmp_continue` and its placement.
fn clean_run() -> (Stencil, Placement, Trace) {
    let s = jmp_continue();
    let p = place(&s, 7, 0).unwrap();
    let image = patch::emit(&s, &p, &Ports).unwrap();
    let trace = engine().run(&s, &p, &image);
    let j = judge_run(X86, &s, &p, &trace, true);
    assert!(j.findings.is_empty() && j.inconclusive.is_none(), "{:#?}", j.findings);
    (s, p, trace)
}

fn with_end(t: &Trace, f: impl FnOnce(&mut RunEnd)) -> Trace {
    let mut t = t.clone();
    f(t.end.as_mut().unwrap());
    t
}

fn kinds(fs: &[Finding]) -> Vec<FindingKind> {
    fs.iter().map(|f| f.kind).collect()
}

#[test]
fn trace_mutant_exit_to_a_random_address_is_a_bad_exit() {
    let (s, p, trace) = clean_run();
    let random = p.code.wrapping_add(0x1234_5678);
    let t = with_end(&trace, |e| {
        if let RunEnd::Exit { target, .. } = e {
            *target = random;
        }
    });
    let j = judge_run(X86, &s, &p, &t, false);
    assert_eq!(kinds(&j.findings), [FindingKind::BadExit]);
    assert!(j.findings[0].message.contains(&format!("{random:#x}")), "{}", j.findings[0].message);
    // The same target computed at run time is not the relocations' business.
    let t = with_end(&t, |e| {
        if let RunEnd::Exit { computed, .. } = e {
            *computed = true;
        }
    });
    let j = judge_run(X86, &s, &p, &t, true);
    assert!(j.findings.is_empty(), "{:#?}", j.findings);
    // Exits to a target the stencil does not name are bad too (jmp_continue names no error target).
    let t = with_end(&trace, |e| {
        if let RunEnd::Exit { target, .. } = e {
            *target = p.error_target;
        }
    });
    assert_eq!(kinds(&judge_run(X86, &s, &p, &t, false).findings), [FindingKind::BadExit]);
}

#[test]
fn trace_mutant_exit_targets_the_uop_may_take_are_allowed() {
    let s = uop();
    let p = place(&s, 8, 0).unwrap();
    let image = patch::emit(&s, &p, &Ports).unwrap();
    let trace = engine().run(&s, &p, &image);
    for ok in [p.continuation(&s), p.error_target, p.externs["PyFunc"]] {
        let t = with_end(&trace, |e| {
            if let RunEnd::Exit { target, .. } = e {
                *target = ok;
            }
        });
        assert!(judge_run(X86, &s, &p, &t, true).findings.is_empty(), "{ok:#x}");
    }
    // PyData is an extern too, but only loaded: never a place to jump to.
    for bad in [p.jump_target, p.top, p.code, p.data + 8, p.externs["PyData"]] {
        let t = with_end(&trace, |e| {
            if let RunEnd::Exit { target, .. } = e {
                *target = bad;
            }
        });
        assert_eq!(kinds(&judge_run(X86, &s, &p, &t, false).findings), [FindingKind::BadExit], "{bad:#x}");
    }
}

#[test]
fn trace_mutant_stack_off_by_8_is_a_stack_imbalance() {
    let (s, p, trace) = clean_run();
    for delta in [8u64, 8u64.wrapping_neg(), 16] {
        let t = with_end(&trace, |e| {
            if let RunEnd::Exit { sp, .. } = e {
                *sp = sp.wrapping_add(delta);
            }
        });
        let j = judge_run(X86, &s, &p, &t, false);
        assert_eq!(kinds(&j.findings), [FindingKind::StackImbalance], "{delta:#x}");
        assert!(j.findings[0].message.contains(&format!("{:+}", delta as i64)), "{}", j.findings[0].message);
    }
    // A noreturn call's exit carries the stub's stack: not judged for balance.
    let t = with_end(&trace, |e| {
        if let RunEnd::Exit { sp, kind, .. } = e {
            *sp += 8;
            *kind = ExitKind::AfterNoReturnCall;
        }
    });
    assert!(judge_run(X86, &s, &p, &t, true).findings.is_empty());
}

#[test]
fn trace_mutant_return_anywhere_but_the_sentinel_is_a_bad_exit() {
    let (s, p, trace) = clean_run();
    let ret = |to: u64| {
        with_end(&trace, |e| {
            if let RunEnd::Exit { kind, target, .. } = e {
                *kind = ExitKind::Return;
                *target = to;
            }
        })
    };
    assert!(judge_run(X86, &s, &p, &ret(RETURN_SENTINEL), true).findings.is_empty());
    // Even to the continuation: a `ret` that lands there popped a wrong address.
    for to in [p.continuation(&s), RETURN_SENTINEL + 8, 0] {
        assert_eq!(kinds(&judge_run(X86, &s, &p, &ret(to), false).findings), [FindingKind::BadExit], "{to:#x}");
    }
}

#[test]
fn trace_mutant_instruction_limit_is_inconclusive_unless_strict() {
    let (s, p, trace) = clean_run();
    let mut t = trace.clone();
    t.end = Some(RunEnd::InstructionLimit { limit: 1000, pc: p.code });
    let j = judge_run(X86, &s, &p, &t, false);
    assert!(j.findings.is_empty());
    assert!(j.inconclusive.as_deref().unwrap().contains("1000"), "{:?}", j.inconclusive);
    let j = judge_run(X86, &s, &p, &t, true);
    assert_eq!(kinds(&j.findings), [FindingKind::Hang]);
    assert_eq!(j.inconclusive, None);
    // Same for the call budget.
    t.end = Some(RunEnd::CallLimit { pc: p.code });
    assert!(judge_run(X86, &s, &p, &t, false).inconclusive.is_some());
    assert_eq!(kinds(&judge_run(X86, &s, &p, &t, true).findings), [FindingKind::Hang]);
}

#[test]
fn trace_mutant_misaligned_call_is_caught() {
    let (s, p, trace) = clean_run();
    let mut t = trace.clone();
    let call = |sp: u64| CallRecord { from: p.code, target: 0x7000_0000, sp, returned: 0 };
    // entry_sp ≡ 8 mod 16 (entered as if by call); one push and the call's
    // return address later, the callee sees entry_sp − 16 ≡ 8 mod 16: aligned.
    assert_eq!(trace.entry_sp % 16, 8);
    t.calls = vec![call(trace.entry_sp - 16)];
    assert!(judge_run(X86, &s, &p, &t, true).findings.is_empty());
    t.calls = vec![call(trace.entry_sp - 8), call(trace.entry_sp - 16), call(trace.entry_sp - 12)];
    let j = judge_run(X86, &s, &p, &t, false);
    assert_eq!(kinds(&j.findings), [FindingKind::MisalignedCall, FindingKind::MisalignedCall]);
    // A real run without the push before the call: the engine's record is misaligned.
    let mut s2 = uop();
    s2.code[0] = 0x90; // no push
    s2.code[28] = 0x90; // no pop
    let p2 = place(&s2, 9, 0).unwrap();
    let image = patch::emit(&s2, &p2, &Ports).unwrap();
    let t2 = engine().run(&s2, &p2, &image);
    assert_eq!(t2.calls.len(), 1);
    let j = judge_run(X86, &s2, &p2, &t2, false);
    assert_eq!(kinds(&j.findings), [FindingKind::MisalignedCall]);
}

#[test]
fn a_fault_is_always_a_finding() {
    let (s, p, trace) = clean_run();
    use stencilcheck::execute::Fault;
    for (fault, finding) in [
        (Fault::WriteIntoCode, Some(FindingKind::Fault)),
        (Fault::WriteIntoData, Some(FindingKind::Fault)),
        (Fault::InvalidInstruction, Some(FindingKind::Fault)),
        (Fault::Other, Some(FindingKind::Fault)),
        (Fault::Unmappable, None),
        (Fault::MemoryBudget, None),
    ] {
        let mut t = trace.clone();
        t.end = Some(RunEnd::Fault { fault, pc: p.code, address: p.data });
        let j = judge_run(X86, &s, &p, &t, false);
        match finding {
            Some(k) => assert_eq!(kinds(&j.findings), [k], "{fault:?}"),
            None => {
                assert!(j.findings.is_empty() && j.inconclusive.is_some(), "{fault:?}");
                assert!(!judge_run(X86, &s, &p, &t, true).findings.is_empty(), "{fault:?} strict");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Data slots
// ---------------------------------------------------------------------------

#[test]
fn a_continue_slot_holding_the_error_target_is_a_data_slot_finding() {
    let s = uop();
    for index in 0..8 {
        let p = place(&s, 10, index).unwrap();
        let mut image = patch::emit(&s, &p, &Ports).unwrap();
        assert!(judge_data_slots(&s, &p, &image).is_empty());
        write_u64(&mut image, p.data + 40, p.error_target);
        let fs = judge_data_slots(&s, &p, &image);
        assert_eq!(fs.len(), 1, "{fs:#?}");
        let f = &fs[0];
        assert_eq!(f.kind, FindingKind::DataSlot);
        assert_eq!(f.relocation, None);
        let (exp, act) = (f.expected.as_ref().unwrap(), f.actual.as_ref().unwrap());
        assert_eq!((exp.value, exp.label.as_str()), (p.continuation(&s), "_JIT_CONTINUE"));
        assert_eq!((act.value, act.label.as_str()), (p.error_target, "_JIT_ERROR_TARGET"));
        let site = f.site.as_ref().unwrap();
        assert_eq!((site.section, site.offset, site.address), (Section::Data, 40, p.data + 40));
        assert_eq!(site.hole.as_deref(), Some("patch_64(data + 0x28, (uintptr_t)code + sizeof(code_body))"));
        assert!(f.message.contains("data+0x28") && f.message.contains("line 125"), "{}", f.message);
    }
}

// ---------------------------------------------------------------------------
// Coverage
// ---------------------------------------------------------------------------

fn obs(relocation: usize, pc: u64, len: u32, effect: Effect) -> SiteObservation {
    SiteObservation { relocation, pc, len, effect: Some(effect) }
}

#[test]
fn coverage_marks_exactly_the_holes_a_trace_touched() {
    let s = uop();
    let p = place(&s, 11, 0).unwrap();
    let trace = |sites: Vec<SiteObservation>| Trace { sites, ..Trace::default() };
    let cov = |sites| coverage(&s, &p, &trace(sites)).into_iter().collect::<Vec<_>>();
    assert_eq!(cov(vec![]), Vec::<usize>::new());
    // The lea at code+1..8 covers code hole code+4 (hole 5), and the PyData
    // slot (data hole 0) whose value the relaxation put into it.
    assert_eq!(cov(vec![obs(R_DATA, p.code + 1, 7, Effect::Address { value: 1, bits: 64 })]), [0, 5]);
    // A load from the PyFunc slot, at an instruction covering no code hole: data hole 2.
    assert_eq!(cov(vec![obs(R_DATA, p.code + 29, 3, Effect::Load { address: p.data + 24, value: 0, bits: 64 })]), [2]);
    // ...also through the middle of the slot, and a transfer through the CONTINUE slot: data hole 4.
    assert_eq!(cov(vec![obs(R_DATA, p.code + 29, 3, Effect::Load { address: p.data + 28, value: 0, bits: 32 })]), [2]);
    assert_eq!(
        cov(vec![obs(R_CONTINUE, p.code + 29, 3, Effect::Transfer { target: 0, slot: Some(p.data + 40) })]),
        [4]
    );
    // Forming the slot's address, or a direct transfer, reads no slot.
    assert_eq!(
        cov(vec![obs(R_DATA, p.code + 29, 3, Effect::Address { value: p.data + 8, bits: 64 })]),
        Vec::<usize>::new()
    );
    assert_eq!(
        cov(vec![obs(R_DATA, p.code + 29, 3, Effect::MemoryOperand { address: p.data + 8 })]),
        Vec::<usize>::new()
    );
    // The unrelaxed GOT load at code+8..15 covers code hole 6 and reads the OPARG slot (hole 1).
    assert_eq!(
        cov(vec![obs(R_OPARG, p.code + 8, 7, Effect::Load { address: p.data + 16, value: 0, bits: 16 })]),
        [1, 6]
    );
    // Outside the code: nothing.
    assert_eq!(cov(vec![obs(R_DATA, p.code + 46, 6, Effect::Address { value: 0, bits: 64 })]), Vec::<usize>::new());
}

#[test]
fn coverage_of_real_runs_includes_every_hole_over_a_few_placements() {
    let s = uop();
    let mut e = engine();
    let mut all = BTreeSet::new();
    for index in 0..16 {
        let p = place(&s, 12, index).unwrap();
        let image = patch::emit(&s, &p, &Ports).unwrap();
        let t = e.run(&s, &p, &image);
        let c = coverage(&s, &p, &t);
        // Sites before the branch always run.
        for h in [5, 6, 7, 8] {
            assert!(c.contains(&h), "index {index}: hole {h} not covered: {c:?}");
        }
        all.extend(c);
    }
    // Code holes all ran; data holes are read only by unrelaxed GOT sites.
    for h in [1, 5, 6, 7, 8, 9, 10] {
        assert!(all.contains(&h), "hole {h} never covered: {all:?}");
    }
}

// ---------------------------------------------------------------------------
// Expectation rules (DOMAIN §6)
// ---------------------------------------------------------------------------

/// `lea rax, [rip + PyObj]` with `R_X86_64_PC32 PyObj-0x4` at 3.
fn lea_pc32() -> Stencil {
    let code = vec![0x48, 0x8d, 0x05, 0, 0, 0, 0];
    Stencil {
        locals: Default::default(),
        ordinals: Default::default(),
        trampoline_mask: Vec::new(),
        got_mask: Vec::new(),
        name: "_LEA".into(),
        line: 1,
        instructions: listing(&code),
        code,
        data: vec![],
        relocations: vec![reloc(3, RelocKind::X86_64_PC32, "PyObj", -4, 2)],
        data_comments: vec![],
        emit: vec![
            EmitOp::CopyCode { line: 3 },
            hole(PatchFn::P32r, Section::Code, 3, Term::Symbol("PyObj".into()), -4, 4),
        ],
    }
}

#[test]
fn pc32_with_addend_minus_4_on_lea_expects_s() {
    let s = lea_pc32();
    let mut e = engine();
    for index in 0..8 {
        let p = place(&s, 13, index).unwrap();
        let image = patch::emit(&s, &p, &Ports).unwrap();
        let st = static_sites(&s, &image);
        assert_eq!(st[0].effect, Some(Effect::Address { value: p.externs["PyObj"], bits: 64 }));
        let j = judge(&mut e, &s, &p, &image);
        assert!(j.all().is_empty(), "{:?}: {:#?}", p.layout, j.all());
        // Off by one either way: caught, expected S.
        for delta in [1u32, u32::MAX] {
            let mut m = image.clone();
            let rel = m.read_u32(p.code + 3).unwrap();
            write_u32(&mut m, p.code + 3, rel.wrapping_add(delta));
            let j = judge(&mut e, &s, &p, &m);
            for fs in [&j.static_findings, &j.dynamic_findings] {
                let f = wrong_value(fs, &s, 0, "PyObj");
                assert_eq!(f.expected.as_ref().unwrap().value, p.externs["PyObj"]);
                assert!(f.message.contains("referred to"), "{}", f.message);
            }
        }
    }
    // The addend is part of the rule: with `PyObj+0x10-0x4` the lea must form S+0x10.
    let mut s2 = s.clone();
    s2.relocations[0].addend = 0xc;
    let p = place(&s2, 13, 0).unwrap();
    let image = patch::emit(&s, &p, &Ports).unwrap(); // patched for S, not S+0x10
    let j = judge(&mut e, &s2, &p, &image);
    let f = wrong_value(&j.static_findings, &s2, 0, "");
    assert_eq!(f.expected.as_ref().unwrap().value, p.externs["PyObj"] + 0x10);
}

/// `movabs rax, PyObj+0x10` with `R_X86_64_64 PyObj+0x10` at 2, then `ret`-free fall through.
fn movabs() -> Stencil {
    let code = vec![0x48, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0];
    Stencil {
        locals: Default::default(),
        ordinals: Default::default(),
        trampoline_mask: Vec::new(),
        got_mask: Vec::new(),
        name: "_MOVABS".into(),
        line: 1,
        instructions: listing(&code),
        code,
        data: vec![],
        relocations: vec![reloc(2, RelocKind::X86_64_64, "PyObj", 0x10, 2)],
        data_comments: vec![],
        emit: vec![
            EmitOp::CopyCode { line: 3 },
            hole(PatchFn::P64, Section::Code, 2, Term::Symbol("PyObj".into()), 0x10, 4),
        ],
    }
}

#[test]
fn r_x86_64_64_on_movabs_expects_the_immediate_s_plus_a() {
    let s = movabs();
    let mut e = engine();
    for index in 0..8 {
        let p = place(&s, 14, index).unwrap();
        let want = p.externs["PyObj"] + 0x10;
        let image = patch::emit(&s, &p, &Ports).unwrap();
        let st = static_sites(&s, &image);
        assert_eq!(st[0].effect, Some(Effect::Immediate { value: want, bits: 64 }));
        let j = judge(&mut e, &s, &p, &image);
        assert!(j.all().is_empty(), "{:#?}", j.all());
        assert_eq!(j.trace.sites.len(), 1);
        // Off by one: caught, with S+A expected.
        let mut m = image.clone();
        write_u64(&mut m, p.code + 2, want + 1);
        let j = judge(&mut e, &s, &p, &m);
        for fs in [&j.static_findings, &j.dynamic_findings] {
            let f = wrong_value(fs, &s, 0, "");
            assert_eq!((f.expected.as_ref().unwrap().value, f.actual.as_ref().unwrap().value), (want, want + 1));
            assert!(f.message.contains("immediate") || f.message.contains("held"), "{}", f.message);
        }
        // S without the addend: caught too, and labelled as the symbol.
        let mut m = image.clone();
        write_u64(&mut m, p.code + 2, want - 0x10);
        let j = judge(&mut e, &s, &p, &m);
        let f = wrong_value(&j.static_findings, &s, 0, "");
        assert_eq!(f.actual.as_ref().unwrap().label, "PyObj");
    }
}

/// `mov rax, [rip + PyObj]` with `R_X86_64_PC32 PyObj-0x4`: a correct
/// PC-relative LOAD of an extern (what `-mcmodel=medium` or a hidden symbol
/// gives). Statically the loaded memory is outside the image, so
/// `site_effect` returns None and `static_sites` records `effect: None`,
/// which the judge reports as a MangledSite on correct code. The run judges
/// it right (the address is what PC32 constrains).
#[test]
fn a_correct_pc32_load_of_an_extern_passes_statically() {
    let mut s = lea_pc32();
    s.code[1] = 0x8b;
    s.instructions = listing(&s.code);
    let mut e = engine();
    let p = place(&s, 15, 0).unwrap();
    let image = patch::emit(&s, &p, &Ports).unwrap();
    let j = judge(&mut e, &s, &p, &image);
    assert!(j.dynamic_findings.is_empty(), "{:#?}", j.dynamic_findings);
    assert!(j.static_findings.is_empty(), "{:#?}", j.static_findings);
}

// ---------------------------------------------------------------------------
// Accounting: every patched byte in a field or slot, every field written
// ---------------------------------------------------------------------------

fn accounting(s: &Stencil, index: u32) -> Vec<Finding> {
    let p = place(s, 1, index).unwrap();
    let image = patch::emit(s, &p, &Ports).unwrap();
    judge_accounting(X86, s, &p, &image)
}

#[test]
fn accounting_is_clean_for_correct_stencils_at_every_placement() {
    for s in [uop(), jmp_continue()] {
        for i in 0..16 {
            assert!(accounting(&s, i).is_empty(), "{} placement {i}: {:?}", s.name, accounting(&s, i));
        }
    }
}

/// Moves the code hole at `offset` by `by` bytes (a writer's off-by-N).
fn hole_moved(mut s: Stencil, offset: u64, by: i64) -> Stencil {
    for op in &mut s.emit {
        if let EmitOp::Patch(h) = op {
            if h.section == Section::Code && h.offset == offset {
                h.offset = (h.offset as i64 + by) as u64;
            }
        }
    }
    s
}

#[test]
fn a_code_hole_moved_by_one_two_or_three_bytes_is_flagged_on_every_placement() {
    // The relocation at code+18 is a PC32 `lea` (patch_32r): moving it keeps
    // the patch "working" on the bytes, so only accounting sees it at once.
    for by in [1i64, 2, 3, -1] {
        let s = hole_moved(uop(), 18, by);
        for i in 0..8 {
            let Ok(p) = place(&s, 1, i) else { continue };
            let Ok(image) = patch::emit(&s, &p, &Ports) else { continue };
            let f = judge_accounting(X86, &s, &p, &image);
            assert!(f.iter().any(|f| f.kind == FindingKind::Unaccounted), "moved by {by}, placement {i}: {f:?}");
            assert!(
                f.iter().any(|f| f.message.contains("written by no hole") && f.relocation == Some(R_STR)),
                "moved by {by}: the relocation the hole left is named: {f:?}"
            );
        }
    }
}

#[test]
fn a_hole_without_a_relocation_and_a_relocation_without_a_hole_are_flagged() {
    // Drop the oparg relocation comment: its hole now writes no field.
    let mut s = uop();
    s.relocations.remove(R_OPARG);
    let f = accounting(&s, 0);
    assert!(
        f.iter().any(|f| f.message.contains("holds no relocation's field") && f.site.as_ref().unwrap().offset == 11),
        "{f:?}"
    );
    // Drop the oparg hole instead: the relocation is written by nobody.
    let mut s = uop();
    s.emit.retain(|op| !matches!(op, EmitOp::Patch(h) if h.section == Section::Code && h.offset == 11));
    let f = accounting(&s, 0);
    assert!(f.iter().any(|f| f.message.contains("written by no hole") && f.relocation == Some(R_OPARG)), "{f:?}");
}

#[test]
fn a_data_patch_outside_the_listed_slots_is_flagged() {
    let mut s = uop();
    // The slot comment for data+16 says it is at data+17: the patch writes
    // bytes no comment lists.
    for c in &mut s.data_comments {
        if c.offset == 16 {
            c.offset = 17;
        }
    }
    // (Flagged whenever the oparg's low byte is not what the body held.)
    let flagged = (0..8)
        .filter(|i| {
            accounting(&s, *i)
                .iter()
                .any(|f| f.kind == FindingKind::Unaccounted && f.site.as_ref().unwrap().section == Section::Data)
        })
        .count();
    assert!(flagged >= 4, "flagged on {flagged} of 8 placements");
}

// ---------------------------------------------------------------------------
// Branches into relaxed pairs (CPython issue 146128)
// ---------------------------------------------------------------------------

/// aarch64: `[cbz x0, ldr] ; adrp x8, slot ; ldr x8, [x8, slot] ; ret`, the
/// adrp+ldr GOT pair of `_JIT_OPARG` patched as one by `patch_aarch64_33rx`.
/// With `branch`, the `cbz` lands on the `ldr`; without, a `nop` stands there.
fn pair_stencil(branch: bool) -> Stencil {
    let words: [u32; 4] = [if branch { 0xB400_0040 } else { 0xD503_201F }, 0x9000_0008, 0xF940_0108, 0xD65F_03C0];
    let texts = [if branch { "cbz x0, 0x8" } else { "nop" }, "adrp x8, 0x0", "ldr x8, [x8]", "ret"];
    let code: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let instructions = words
        .iter()
        .zip(texts)
        .enumerate()
        .map(|(i, (w, t))| stencilcheck::model::ObjdumpInstruction {
            offset: 4 * i as u64,
            bytes: w.to_le_bytes().to_vec(),
            text: t.to_string(),
            line: 10 + i,
        })
        .collect();
    Stencil {
        locals: Default::default(),
        ordinals: Default::default(),
        trampoline_mask: Vec::new(),
        got_mask: Vec::new(),
        name: "_PAIR".into(),
        line: 1,
        instructions,
        code,
        data: vec![0; 8],
        relocations: vec![
            reloc(4, RelocKind::Aarch64_ADR_GOT_PAGE, "_JIT_OPARG", 0, 20),
            reloc(8, RelocKind::Aarch64_LD64_GOT_LO12_NC, "_JIT_OPARG", 0, 21),
        ],
        data_comments: vec![slot(0, Term::Oparg, 30)],
        emit: vec![
            EmitOp::CopyData { line: 31 },
            hole(PatchFn::P64, Section::Data, 0, Term::Oparg, 0, 32),
            EmitOp::CopyCode { line: 33 },
            hole(PatchFn::Aarch64_33rx, Section::Code, 4, Term::Data, 0, 34),
        ],
    }
}

#[test]
fn a_branch_into_a_relaxed_pair_is_flagged_and_the_same_stencil_without_it_is_not() {
    let a64 = stencilcheck::target::Target::elf(Arch::Aarch64);
    for (branch, want) in [(true, true), (false, false)] {
        let s = pair_stencil(branch);
        for i in 0..8 {
            let p = stencilcheck::place::place(a64, &s, 1, i).unwrap();
            let image = patch::emit(&s, &p, &Ports).unwrap();
            // The oparg is below 2^16: 33rx always relaxes the pair to movz+nop.
            let f = judge_relaxed_pairs(a64, &s, &p, &image);
            assert_eq!(!f.is_empty(), want, "branch {branch}, placement {i}: {f:?}");
            if want {
                assert_eq!(f[0].kind, FindingKind::RelaxedBranchTarget);
                assert_eq!(f[0].at, Some(0), "named at the branch");
                assert_eq!(f[0].site.as_ref().unwrap().offset, 8, "and at the pair's second half");
                assert!(f[0].message.contains("patch_aarch64_33rx(code + 0x4"), "{}", f[0].message);
                // Everything else about the stencil is in order.
                assert!(judge_accounting(a64, &s, &p, &image).is_empty());
            }
        }
    }
}

// ---------------------------------------------------------------------------
// aarch64 page halves, judged on their own (the second opinion beside the
// pair's load or add)
// ---------------------------------------------------------------------------

/// `adrp x8, S; add x8, x8, :lo12:S` (page) or `adrp x8, slot; ldr x8, [x8, slot]` (GOT).
fn page_pair(got: bool) -> Stencil {
    let words: [u32; 3] = [0x9000_0008, if got { 0xF940_0108 } else { 0x9100_0108 }, 0xD65F_03C0];
    let code: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let instructions = words
        .iter()
        .enumerate()
        .map(|(i, w)| stencilcheck::model::ObjdumpInstruction {
            offset: 4 * i as u64,
            bytes: w.to_le_bytes().to_vec(),
            text: String::new(),
            line: 10 + i,
        })
        .collect();
    let (first, second) = if got {
        (RelocKind::Aarch64_ADR_GOT_PAGE, RelocKind::Aarch64_LD64_GOT_LO12_NC)
    } else {
        (RelocKind::Aarch64_ADR_PREL_PG_HI21, RelocKind::Aarch64_ADD_ABS_LO12_NC)
    };
    let value = if got { Term::Data } else { Term::Symbol("PyFoo".into()) };
    let mut emit = vec![EmitOp::CopyData { line: 30 }];
    if got {
        emit.push(hole(PatchFn::P64, Section::Data, 0, Term::Symbol("PyFoo".into()), 0, 31));
    }
    emit.push(EmitOp::CopyCode { line: 32 });
    emit.push(hole(
        if got { PatchFn::Aarch64_21rx } else { PatchFn::Aarch64_21r },
        Section::Code,
        0,
        value.clone(),
        0,
        33,
    ));
    emit.push(hole(if got { PatchFn::Aarch64_12x } else { PatchFn::Aarch64_12 }, Section::Code, 4, value, 0, 34));
    Stencil {
        locals: Default::default(),
        ordinals: Default::default(),
        trampoline_mask: Vec::new(),
        got_mask: Vec::new(),
        name: "_PAGE".into(),
        line: 1,
        instructions,
        code,
        data: vec![0; 8],
        relocations: vec![reloc(0, first, "PyFoo", 0, 20), reloc(4, second, "PyFoo", 0, 21)],
        data_comments: if got { vec![slot(0, Term::Symbol("PyFoo".into()), 22)] } else { vec![] },
        emit,
    }
}

#[test]
fn an_adrp_must_form_the_page_of_its_symbol_or_of_a_slot_holding_it() {
    let a64 = stencilcheck::target::Target::elf(Arch::Aarch64);
    for got in [false, true] {
        let s = page_pair(got);
        let p = (0..16)
            .map(|i| stencilcheck::place::place(a64, &s, 3, i).unwrap())
            .find(|p| p.externs["PyFoo"] & 0xfff != 0 && p.data & 0xfff != 0)
            .unwrap();
        let image = patch::emit(&s, &p, &Ports).unwrap();
        let right = if got { p.data & !0xfff } else { p.externs["PyFoo"] & !0xfff };
        let judge = |page: u64| {
            let o = SiteObservation {
                relocation: 0,
                pc: p.code,
                len: 4,
                effect: Some(Effect::Address { value: page, bits: 64 }),
            };
            judge_sites(a64, &s, &p, &image, &[o])
        };
        assert!(judge(right).is_empty(), "got {got}: {:?}", judge(right));
        // The neighbouring page is wrong; for a page of S, so is S unmasked
        // (a GOT page is judged by the slots on it, whatever its low bits).
        let mut wrongs = vec![right + 0x1000];
        if !got {
            wrongs.push(p.externs["PyFoo"]);
        }
        for wrong in wrongs {
            let f = judge(wrong);
            assert!(
                f.len() == 1 && f[0].kind == FindingKind::WrongValue,
                "got {got}: page {wrong:#x} instead of {right:#x} not flagged: {f:?}"
            );
        }
    }
}

/// A call patched into something that transfers nowhere (`lea`): the call
/// is gone, whatever the field holds (killed mutants of that condition).
#[test]
fn mutant_relaxed_call_turned_into_a_lea_is_caught() {
    let s = uop();
    let mut e = engine();
    let p = placement_of(&s, 1, Layout::Compact);
    let mut image = patch::emit(&s, &p, &Ports).unwrap();
    assert_eq!(image.code[22..24], [0x90, 0xe8]);
    // 8d 05 rel32: lea eax, [rip + rel32].
    image.code[22..24].copy_from_slice(&[0x8d, 0x05]);
    let j = judge(&mut e, &s, &p, &image);
    let f: Vec<&Finding> = j
        .static_findings
        .iter()
        .filter(|f| f.relocation == Some(R_FUNC) && f.kind == FindingKind::MangledSite)
        .collect();
    assert_eq!(f.len(), 1, "{:#?}", j.static_findings);
    assert!(f[0].message.contains("call") && f[0].message.contains("now a"), "{}", f[0].message);
}

/// The reverse: an `lea` of the string patched into a `call` (48 ff 15):
/// a transfer where none was (killed the last mutant of that condition).
#[test]
fn mutant_lea_turned_into_a_call_is_caught() {
    let s = uop();
    let mut e = engine();
    let p = placement_of(&s, 1, Layout::Compact);
    let mut image = patch::emit(&s, &p, &Ports).unwrap();
    assert_eq!(image.code[15..18], [0x48, 0x8d, 0x15]);
    image.code[16..18].copy_from_slice(&[0xff, 0x15]);
    let j = judge(&mut e, &s, &p, &image);
    let f: Vec<&Finding> = j
        .static_findings
        .iter()
        .filter(|f| f.relocation == Some(R_STR) && f.kind == FindingKind::MangledSite)
        .collect();
    assert_eq!(f.len(), 1, "{:#?}", j.static_findings);
    assert!(f[0].message.contains("non-branch instruction") && f[0].message.contains("now a call"), "{}", f[0].message);
}

/// A stray data write outside every listed slot is a finding naming the
/// hole that made it; an emit function that copies no (all-zero) data body
/// is held to the same rule. Killed surviving mutants of the accounting's
/// data part.
#[test]
fn a_stray_patch_in_data_or_code_names_its_hole_even_without_a_copied_body() {
    for copied in [true, false] {
        let mut s = uop();
        s.data = vec![0; 56];
        // patch_64(data + 0x30, &PyData) after the five slot patches: data+0x30
        // is past every listed slot.
        s.emit.insert(6, hole(PatchFn::P64, Section::Data, 0x30, Term::Symbol("PyData".into()), 0, 150));
        if !copied {
            s.emit.retain(|op| !matches!(op, EmitOp::CopyData { .. }));
        }
        let p = placement_of(&s, 1, Layout::Compact);
        let image = patch::emit(&s, &p, &Ports).unwrap();
        let f = judge_accounting(X86, &s, &p, &image);
        let stray: Vec<&Finding> = f.iter().filter(|f| f.message.contains("lies in no slot")).collect();
        assert_eq!(stray.len(), 1, "copied {copied}: {f:#?}");
        if copied {
            assert_eq!(stray[0].site.as_ref().unwrap().hole_line, Some(150));
        }
    }
}

/// The same for code: a patch that writes code bytes outside every
/// relocation's field is a finding naming the hole (killed surviving
/// mutants of the accounting's code part).
#[test]
fn a_stray_patch_in_code_names_its_hole_even_without_a_copied_body() {
    for copied in [true, false] {
        let mut s = uop();
        // patch_32(code + 0x1c, oparg) after the six code patches: `pop rbx;
        // test rax, rax` is no relocation's field.
        s.emit.push(hole(PatchFn::P32, Section::Code, 0x1c, Term::Oparg, 0, 151));
        if !copied {
            s.code = vec![0; s.code.len()];
            s.emit.retain(|op| !matches!(op, EmitOp::CopyCode { .. }));
        }
        let p = placement_of(&s, 1, Layout::Compact);
        let image = patch::emit(&s, &p, &Ports).unwrap();
        let f = judge_accounting(X86, &s, &p, &image);
        let stray: Vec<&Finding> = f.iter().filter(|f| f.message.contains("lies in no relocation's field")).collect();
        assert_eq!(stray.len(), 1, "copied {copied}: {f:#?}");
        if copied {
            assert_eq!(stray[0].site.as_ref().unwrap().hole_line, Some(151));
        }
    }
}

/// A failed patch call names the relocation whose field it writes: a code
/// hole at a relocation's offset does, a data hole at the same number
/// (data+0x18 vs code+0x18) and a code hole elsewhere do not (killed
/// surviving mutants of that match).
#[test]
fn a_failed_patch_names_its_relocation_only_for_its_own_field() {
    use stencilcheck::judge::judge_emit_failure;
    use stencilcheck::patch::{EmitFailure, FailureKind, PatchAssert};
    let s = uop();
    let p = placement_of(&s, 1, Layout::Compact);
    let fail = |section: Section, offset: u64| {
        let call = s.holes().find(|h| h.section == section && h.offset == offset).unwrap().clone();
        let assert =
            PatchAssert { func: call.func, location: 0, value: 0, message: "x".into(), kind: FailureKind::default() };
        judge_emit_failure(&s, &p, &EmitFailure { call, assert }).relocation
    };
    assert_eq!(fail(Section::Code, 24), Some(R_FUNC));
    assert_eq!(fail(Section::Data, 24), None);
    assert_eq!(fail(Section::Code, 4), Some(R_DATA));
    let mut moved = s.holes().find(|h| h.section == Section::Code && h.offset == 4).unwrap().clone();
    moved.offset = 5;
    let assert =
        PatchAssert { func: moved.func, location: 0, value: 0, message: "x".into(), kind: FailureKind::default() };
    assert_eq!(judge_emit_failure(&s, &p, &EmitFailure { call: moved, assert }).relocation, None);
}
