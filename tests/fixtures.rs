//! The fixture headers in `tests/fixtures/`, run through the library.
//!
//! `good.h` is a small hand-written header in the CPython 3.13 layout (see
//! `scripts/make-fixture.py` and `tests/fixtures/asm/`); every other fixture is
//! a copy of it with ONE edit, named by the `// BUG:` line at its top. Each test
//! asserts the diagnosis, not just "something was found": the kind of finding,
//! the stencil, the site, and what the expected and actual values are.

use std::collections::BTreeSet;
use std::path::PathBuf;

use stencilcheck::judge::FindingKind;
use stencilcheck::model::{EmitOp, PatchFn, RelocKind, Section, StencilSet};
use stencilcheck::pipeline::{self, Options, Outcome, Seen};

const PLACEMENTS: u32 = 64;

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn load(name: &str) -> StencilSet {
    stencilcheck::load::load_path(&path(name)).unwrap_or_else(|e| panic!("{name} does not load: {e}"))
}

fn options(seed: u64, placements: u32) -> Options<'static> {
    Options {
        seed,
        placements,
        stencils: vec![],
        placement: None,
        instruction_limit: stencilcheck::execute::DEFAULT_INSTRUCTION_LIMIT,
        threads: 2,
        strict: false,
        explore: 0,
        patcher: &stencilcheck::patch::Ports,
        engine: stencilcheck::execute::EngineKind::Unicorn,
    }
}

fn verify(set: &StencilSet, options: &Options) -> Outcome {
    pipeline::verify(set, options).unwrap_or_else(|e| panic!("verify failed: {e}"))
}

fn run(name: &str) -> (StencilSet, Outcome) {
    let set = load(name);
    let outcome = verify(&set, &options(1, PLACEMENTS));
    (set, outcome)
}

/// Every finding, with the stencil it is in.
fn findings(outcome: &Outcome) -> Vec<(&str, &Seen)> {
    outcome.results.iter().flat_map(|r| r.findings.iter().map(move |s| (r.name.as_str(), s))).collect()
}

fn describe(outcome: &Outcome) -> String {
    findings(outcome)
        .iter()
        .map(|(name, s)| format!("  {name} [{:?}] {}", s.finding.kind, s.finding.message))
        .collect::<Vec<_>>()
        .join("\n")
}

/// All findings are in `stencil`; the other stencils stay correct.
fn only_in<'o>(outcome: &'o Outcome, stencil: &str) -> Vec<&'o Seen> {
    let all = findings(outcome);
    assert!(!all.is_empty(), "no findings at all");
    for (name, _) in &all {
        assert_eq!(*name, stencil, "a finding outside {stencil}:\n{}", describe(outcome));
    }
    all.into_iter().map(|(_, s)| s).collect()
}

fn kinds(seen: &[&Seen]) -> BTreeSet<FindingKind> {
    seen.iter().map(|s| s.finding.kind).collect()
}

/// The one finding of `kind` at `section`+`offset`.
fn at<'s>(seen: &[&'s Seen], kind: FindingKind, section: Section, offset: u64) -> &'s Seen {
    let hits: Vec<&&Seen> = seen
        .iter()
        .filter(|s| {
            s.finding.kind == kind
                && s.finding.site.as_ref().is_some_and(|site| site.section == section && site.offset == offset)
        })
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "expected one {kind:?} at {section}+{offset:#x}, got {}:\n{}",
        hits.len(),
        seen.iter().map(|s| format!("  [{:?}] {}", s.finding.kind, s.finding.message)).collect::<Vec<_>>().join("\n")
    );
    hits[0]
}

fn labels(seen: &Seen) -> (&str, &str) {
    let f = &seen.finding;
    (
        f.expected.as_ref().map(|v| v.label.as_str()).unwrap_or("<none>"),
        f.actual.as_ref().map(|v| v.label.as_str()).unwrap_or("<none>"),
    )
}

fn hole(seen: &Seen) -> &str {
    seen.finding.site.as_ref().and_then(|s| s.hole.as_deref()).unwrap_or("")
}

/// Re-running only the placement a finding names shows the same finding.
fn assert_replays(set: &StencilSet, stencil: &str, seen: &Seen) {
    let mut o = options(1, PLACEMENTS);
    o.stencils = vec![stencil.to_string()];
    o.placement = Some(seen.placement);
    let outcome = verify(set, &o);
    assert_eq!(outcome.results.len(), 1);
    let again = &outcome.results[0].findings;
    assert!(
        again.iter().any(|s| s.finding == seen.finding),
        "placement {} of {stencil} does not show `{}` again; it shows:\n{}",
        seen.placement,
        seen.finding.message,
        describe(&outcome)
    );
}

// ---- the good header -----------------------------------------------------------

#[test]
fn good_header_loads_as_written() {
    let set = load("good.h");
    let names: Vec<&str> = set.stencils.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["_FX_CALL_HELPER", "_FX_FORMAT_ERROR", "_FX_GUARD_TYPE", "_FX_PUSH_ARGS", "trampoline"]);
    let get = |n: &str| set.stencils.iter().find(|s| s.name == n).unwrap();

    // The trailing `jmp *_JIT_CONTINUE` was cut off the code (and its relocation dropped).
    let push = get("_FX_PUSH_ARGS");
    assert_eq!((push.code_size(), push.data_size()), (28, 16));
    assert_eq!(push.relocations.len(), 2);
    let format = get("_FX_FORMAT_ERROR");
    assert_eq!((format.code_size(), format.data_size()), (50, 48));
    assert_eq!(format.relocations.len(), 4, "the removed jump's relocation is gone");
    // The format string leads the data part, padded to 8.
    assert_eq!(format.rodata_len(), 0x18);
    assert!(format.data.starts_with(b"fx: %R is not ready\0"));

    // Data before code in every emit function.
    for s in &set.stencils {
        let copy_data = s.emit.iter().position(|op| matches!(op, EmitOp::CopyData { .. }));
        let copy_code = s.emit.iter().position(|op| matches!(op, EmitOp::CopyCode { .. }));
        assert!(copy_data < copy_code, "{}: data must be copied first", s.name);
        // As many holes as relocations in the code, plus one data hole per slot.
        let code_holes = s.holes().filter(|h| h.section == Section::Code).count();
        assert_eq!(code_holes, s.relocations.len(), "{}", s.name);
    }
}

#[test]
fn good_header_is_correct_under_several_seeds() {
    let set = load("good.h");
    // Every layout family comes round every 8 placements: 32 is 4 of each.
    for (seed, placements) in [(1, PLACEMENTS), (2, 32), (0xdead_beef, 32)] {
        let outcome = verify(&set, &options(seed, placements));
        assert_eq!(outcome.results.len(), 5);
        assert!(findings(&outcome).is_empty(), "seed {seed}: findings in good.h:\n{}", describe(&outcome));
        assert_eq!(outcome.convention.source, "trampoline", "convention read off the fixture's trampoline");
        assert_eq!(
            (outcome.convention.frame, outcome.convention.stack_pointer, outcome.convention.tstate),
            ("r13", "rbp", "r12")
        );
        for r in &outcome.results {
            assert_eq!(r.runs, placements, "{}", r.name);
            assert_eq!(r.inconclusive, 0, "seed {seed}: {} had inconclusive runs: {:?}", r.name, r.first_inconclusive);
            assert!(r.holes_covered > 0, "{}: no hole was ever exercised", r.name);
        }
    }
}

/// Where one run of `stencil` left for, named: `_JIT_CONTINUE`, `return`, ….
fn exits(set: &StencilSet, stencil: &str, placements: u32) -> BTreeSet<String> {
    use stencilcheck::execute::{self, ExitKind, RunEnd};
    let s = set.stencils.iter().find(|s| s.name == stencil).unwrap();
    let mut engine = set.target.engine(set.target.convention(set), execute::DEFAULT_INSTRUCTION_LIMIT).unwrap();
    let mut out = BTreeSet::new();
    for i in 0..placements {
        let placement = stencilcheck::place::place(set.target, s, 1, i).unwrap();
        let image = stencilcheck::patch::emit(s, &placement, &stencilcheck::patch::Ports).unwrap();
        let trace = engine.run(s, &placement, &image);
        match trace.end {
            Some(RunEnd::Exit { kind: ExitKind::Return, .. }) => out.insert("return".to_string()),
            // (judge::label knows only the symbols some relocation names: a
            // stencil whose only continuation is falling off its end has none.)
            Some(RunEnd::Exit { target, .. }) if target == placement.continuation(s) => {
                out.insert("_JIT_CONTINUE".to_string())
            }
            Some(RunEnd::Exit { target, .. }) => out.insert(stencilcheck::judge::label(s, &placement, target)),
            other => panic!("{stencil} placement {i} did not exit: {other:?}"),
        };
    }
    out
}

#[test]
fn good_header_takes_every_exit() {
    // The fixture's branches are live: over the test's placements every
    // stencil leaves by each of its exits at least once.
    let set = load("good.h");
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    for (stencil, expected) in [
        ("_FX_PUSH_ARGS", names(&["_JIT_CONTINUE"])),
        ("_FX_CALL_HELPER", names(&["_JIT_CONTINUE", "_JIT_ERROR_TARGET"])),
        ("_FX_FORMAT_ERROR", names(&["_JIT_CONTINUE", "_JIT_ERROR_TARGET"])),
        ("_FX_GUARD_TYPE", names(&["_JIT_CONTINUE", "_JIT_JUMP_TARGET", "_JIT_ERROR_TARGET"])),
        ("trampoline", names(&["return"])),
    ] {
        assert_eq!(exits(&set, stencil, PLACEMENTS), expected, "{stencil}");
    }
}

// ---- one bug each ------------------------------------------------------------------

/// Each wrong fixture differs from good.h in exactly one stencil's emit body.
#[test]
fn each_variant_changes_one_stencil() {
    let good = load("good.h");
    let ops = |set: &StencilSet, name: &str| -> Vec<String> {
        let s = set.stencils.iter().find(|s| s.name == name).unwrap();
        s.emit
            .iter()
            .map(|op| match op {
                EmitOp::CopyData { .. } => "copy data".to_string(),
                EmitOp::CopyCode { .. } => "copy code".to_string(),
                EmitOp::Patch(p) => format!("{}({} + {:#x}, {})", p.func, p.section, p.offset, p.value),
            })
            .collect()
    };
    for (file, stencil) in [
        ("wrong-addend.h", "_FX_CALL_HELPER"),
        ("swapped-targets.h", "_FX_GUARD_TYPE"),
        ("code-before-data.h", "_FX_GUARD_TYPE"),
        ("wrong-patch-function.h", "_FX_PUSH_ARGS"),
        ("dropped-data-patch.h", "_FX_CALL_HELPER"),
        ("wrong-offset.h", "_FX_PUSH_ARGS"),
        ("equivalent-rewrite.h", "_FX_FORMAT_ERROR"),
    ] {
        let text = std::fs::read_to_string(path(file)).unwrap();
        let first = text.lines().next().unwrap();
        assert!(first.starts_with("// BUG: ") || first.starts_with("// NOT A BUG: "), "{file}: {first}");
        let set = load(file);
        for s in &good.stencils {
            let same = ops(&good, &s.name) == ops(&set, &s.name);
            assert_eq!(
                !same,
                s.name == stencil,
                "{file}: emit_{} {}",
                s.name,
                if same { "unchanged" } else { "changed" }
            );
            let other = set.stencils.iter().find(|o| o.name == s.name).unwrap();
            assert_eq!((&other.code, &other.data, &other.relocations.len()), (&s.code, &s.data, &s.relocations.len()));
        }
    }
}

#[test]
fn wrong_addend_reads_the_neighbouring_slot() {
    // patch_x86_64_32rx(code + 0xe, data + 0xc): the call reads the CONTINUE
    // slot (data+0x10) instead of PyFx_Helper's (data+0x8).
    let (set, outcome) = run("wrong-addend.h");
    let seen = only_in(&outcome, "_FX_CALL_HELPER");
    assert_eq!(kinds(&seen), BTreeSet::from([FindingKind::WrongValue]), "data slots are all right");
    let f = at(&seen, FindingKind::WrongValue, Section::Code, 0xe);
    assert_eq!(labels(f), ("PyFx_Helper", "_JIT_CONTINUE"));
    assert_eq!(hole(f), "patch_x86_64_32rx(code + 0xe, (uintptr_t)data + 0xc)");
    assert!(f.finding.site.as_ref().unwrap().relocation.as_deref().unwrap().contains("PyFx_Helper-0x4"));
    assert_eq!(f.runs, PLACEMENTS, "wrong in every placement");
    assert_replays(&set, "_FX_CALL_HELPER", f);
}

#[test]
fn swapped_targets_go_to_each_others_target() {
    let (set, outcome) = run("swapped-targets.h");
    let seen = only_in(&outcome, "_FX_GUARD_TYPE");
    // Both targets are legal exits of the stencil, so no bad_exit: only the
    // sites and the slots are wrong.
    assert_eq!(kinds(&seen), BTreeSet::from([FindingKind::WrongValue, FindingKind::DataSlot]));
    let jump = at(&seen, FindingKind::WrongValue, Section::Code, 0x34);
    assert_eq!(labels(jump), ("_JIT_JUMP_TARGET", "_JIT_ERROR_TARGET"));
    let error = at(&seen, FindingKind::WrongValue, Section::Code, 0x3b);
    assert_eq!(labels(error), ("_JIT_ERROR_TARGET", "_JIT_JUMP_TARGET"));
    let slot = at(&seen, FindingKind::DataSlot, Section::Data, 0x20);
    assert_eq!(labels(slot), ("_JIT_JUMP_TARGET", "_JIT_ERROR_TARGET"));
    assert_eq!(hole(slot), "patch_64(data + 0x20, instruction_starts[instruction->error_target])");
    let slot = at(&seen, FindingKind::DataSlot, Section::Data, 0x28);
    assert_eq!(labels(slot), ("_JIT_ERROR_TARGET", "_JIT_JUMP_TARGET"));
    assert_eq!(seen.len(), 4);
    for f in [jump, error] {
        assert_eq!(f.runs, PLACEMENTS);
        assert_replays(&set, "_FX_GUARD_TYPE", f);
    }
}

#[test]
fn code_before_data_relaxes_against_stale_slots() {
    let (set, outcome) = run("code-before-data.h");
    let seen = only_in(&outcome, "_FX_GUARD_TYPE");
    // By the time the code runs the slots are right: the bug is only in what
    // patch_x86_64_32rx decided while they still held stale bytes.
    assert!(!kinds(&seen).contains(&FindingKind::DataSlot), "data slots end up right");
    let wrong: Vec<&&Seen> = seen.iter().filter(|s| s.finding.kind == FindingKind::WrongValue).collect();
    assert!(!wrong.is_empty(), "no wrong_value:\n{}", describe(&outcome));
    for f in &wrong {
        let site = f.finding.site.as_ref().unwrap();
        // Only the relaxable call/jmp sites; the `cmpq` GOT load at code+0xc is never relaxed.
        assert!([0x14, 0x22, 0x2d, 0x34, 0x3b].contains(&site.offset), "{}", f.finding.message);
        assert!(hole(f).starts_with("patch_x86_64_32rx("), "{}", hole(f));
        // ...and what is wrong there is a relaxed (direct) call or jump.
        let insn = site.instruction.as_deref().unwrap();
        assert!(
            (insn.starts_with("call ") || insn.starts_with("jmp ")) && !insn.contains('['),
            "not a relaxed branch: {insn}"
        );
        let (expected, actual) = labels(f);
        assert_ne!(expected, actual);
        assert_ne!(f.finding.expected.as_ref().unwrap().value, f.finding.actual.as_ref().unwrap().value);
    }
    // Several of the five relaxable sites show it at this many placements.
    let sites: BTreeSet<u64> = wrong.iter().map(|f| f.finding.site.as_ref().unwrap().offset).collect();
    assert!(sites.len() >= 2, "{sites:?}");
    assert_replays(&set, "_FX_GUARD_TYPE", wrong[0]);
}

#[test]
fn wrong_patch_function_breaks_the_oparg_load() {
    // patch_64 on code + 0x4: the movzwl's displacement becomes the low half
    // of an absolute address (and the next instruction is overwritten).
    let (set, outcome) = run("wrong-patch-function.h");
    let seen = only_in(&outcome, "_FX_PUSH_ARGS");
    let f = at(&seen, FindingKind::WrongValue, Section::Code, 0x4);
    assert_eq!(labels(f).0, "_JIT_OPARG");
    assert_eq!(hole(f), "patch_64(code + 0x4, (uintptr_t)data + -0x4)");
    assert!(f.finding.message.starts_with("R_X86_64_GOTPCREL at code+0x4 loaded "), "{}", f.finding.message);
    assert_replays(&set, "_FX_PUSH_ARGS", f);
}

#[test]
fn dropped_data_patch_leaves_the_slot_empty() {
    let (set, outcome) = run("dropped-data-patch.h");
    let seen = only_in(&outcome, "_FX_CALL_HELPER");
    assert_eq!(kinds(&seen), BTreeSet::from([FindingKind::WrongValue, FindingKind::DataSlot]));
    let slot = at(&seen, FindingKind::DataSlot, Section::Data, 0x8);
    assert_eq!(labels(slot).0, "PyFx_Helper");
    assert_eq!(slot.finding.actual.as_ref().unwrap().value, 0, "data_body's zeros");
    assert_eq!(hole(slot), "", "no patch call writes that slot");
    assert_eq!(slot.runs, PLACEMENTS);
    let call = at(&seen, FindingKind::WrongValue, Section::Code, 0xe);
    assert_eq!(labels(call).0, "PyFx_Helper");
    // Through the empty slot: to 0, or (relaxed, when the code sits within
    // 2 GiB of address 0) to 0 - 4.
    let target = call.finding.actual.as_ref().unwrap().value;
    assert!(target == 0 || target == 0u64.wrapping_sub(4), "{target:#x}");
    assert_replays(&set, "_FX_CALL_HELPER", slot);
    assert_replays(&set, "_FX_CALL_HELPER", call);
}

#[test]
fn wrong_offset_misses_the_operand_field() {
    let (set, outcome) = run("wrong-offset.h");
    let seen = only_in(&outcome, "_FX_PUSH_ARGS");
    let f = at(&seen, FindingKind::WrongValue, Section::Code, 0xb);
    assert_eq!(labels(f).0, "_JIT_OPERAND");
    assert!(f.finding.site.as_ref().unwrap().relocation.as_deref().unwrap().contains("_JIT_OPERAND-0x4"));
    // The OPARG site before it is untouched and right.
    assert!(
        !seen.iter().any(|s| s.finding.site.as_ref().is_some_and(|site| site.offset == 0x4)),
        "{}",
        describe(&outcome)
    );
    assert_replays(&set, "_FX_PUSH_ARGS", f);
}

#[test]
fn equivalent_rewrite_is_not_flagged() {
    let set = load("equivalent-rewrite.h");
    let format = set.stencils.iter().find(|s| s.name == "_FX_FORMAT_ERROR").unwrap();
    let h = format.holes().find(|h| h.section == Section::Code && h.offset == 0xf).unwrap();
    assert_eq!(h.func, PatchFn::P32r, "the fixture really uses patch_32r there");
    for seed in [1, 2] {
        let outcome = verify(&set, &options(seed, 32));
        assert!(findings(&outcome).is_empty(), "seed {seed}:\n{}", describe(&outcome));
    }
}

// ---- bad input ---------------------------------------------------------------------

#[test]
fn malformed_fixtures_name_the_line() {
    for (file, needle, part) in [
        ("malformed-unknown-patch.h", Some("patch_x86_64_32rz("), "unknown patch function `patch_x86_64_32rz`"),
        ("malformed-garbage-expr.h", Some(">> 3);"), "cannot parse patch value"),
        ("malformed-truncated.h", None, "truncated: emit__FX_GUARD_TYPE"),
    ] {
        let text = std::fs::read_to_string(path(file)).unwrap();
        let line = match needle {
            Some(n) => text.lines().position(|l| l.contains(n) && !l.starts_with("// BUG")).unwrap() + 1,
            None => text.lines().count(),
        };
        let e = stencilcheck::load::load_path(&path(file)).err().unwrap_or_else(|| panic!("{file} loads"));
        assert_eq!(e.location, format!("{}:{line}", path(file).display()), "{file}: {e}");
        assert!(e.message.contains(part), "{file}: {e}");
        assert!(!e.to_string().contains('\n'));
    }
}

// ---- known tool bugs (run with `cargo test -- --ignored` once fixed) ----------------

/// In wrong-offset.h the instruction at code+0x8 is still `mov rcx, [rip+disp32]`
/// with the relocated field as its displacement; only the displacement is
/// wrong (it points outside the stencil). That is a wrong_value, which the
/// run does report; the static pass ALSO reports mangled_site ("no longer a
/// displacement"), because `static_sites` cannot read the (outside) memory
/// and turns the missing load value into "no effect".
#[test]
fn a_displacement_pointing_outside_the_image_is_not_mangled() {
    let (_, outcome) = run("wrong-offset.h");
    let seen = only_in(&outcome, "_FX_PUSH_ARGS");
    let f = at(&seen, FindingKind::WrongValue, Section::Code, 0xb);
    assert!(f.finding.site.as_ref().unwrap().instruction.as_deref().unwrap().starts_with("mov rcx,[rip+"));
    assert!(!seen.iter().any(|s| s.finding.kind == FindingKind::MangledSite), "{}", describe(&outcome));
}

// ---- CPython 3.14+ fixtures ---------------------------------------------------------
//
// `3.14-x86_64/` and `3.14-aarch64/` hold headers in the 3.14+ layout, built
// by `scripts/make-fixture.py --layout 3.14` from `asm-3.14/`; their variants
// carry ONE edit each, named by their `// BUG:` line.

use std::collections::BTreeMap;
use stencilcheck::model::{Stencil, Term};
use stencilcheck::target::{Arch, Version};

fn stencil<'s>(set: &'s StencilSet, name: &str) -> &'s Stencil {
    set.stencils.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no stencil {name}"))
}

fn ordinals(pairs: &[(u32, &str)]) -> BTreeMap<u32, String> {
    pairs.iter().map(|(n, s)| (*n, s.to_string())).collect()
}

/// The text of emit_NAME in a fixture file.
fn function_text(file: &str, name: &str) -> String {
    let text = std::fs::read_to_string(path(file)).unwrap();
    let start = text.find(&format!("\nemit_{name}(\n")).unwrap_or_else(|| panic!("{file}: no emit_{name}"));
    let end = start + text[start..].find("\n}\n").unwrap();
    text[start..end].to_string()
}

#[test]
fn v314_x86_64_fixture_loads_as_written() {
    let set = load("3.14-x86_64/good.h");
    assert_eq!((set.arch(), set.target.version), (Arch::X86_64, Version::V3_14));
    let names: Vec<&str> = set.stencils.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["shim", "_FX_CALL_GLOBAL", "_FX_GUARD"]);
    assert_eq!(set.symbols_map, [Some("PyFx_Type".to_string()), Some("PyFx_Lookup".to_string())]);

    let shim = stencil(&set, "shim");
    assert_eq!((shim.code_size(), shim.data_size()), (43, 0));
    assert!(shim.ordinals.is_empty() && shim.relocations.is_empty());

    let call = stencil(&set, "_FX_CALL_GLOBAL");
    assert_eq!((call.code_size(), call.data_size()), (53, 16));
    assert_eq!(call.ordinals, ordinals(&[(0, "PyFx_Type"), (1, "PyFx_Lookup")]));
    assert_eq!((&call.trampoline_mask[..], &call.got_mask[..]), (&[0][..], &[0x3][..]));
    assert!(call.data.starts_with(b"fx\0"));
    // code_body[53] lists no trailing zeros (the error jump's displacement).
    assert!(function_text("3.14-x86_64/good.h", "_FX_CALL_GLOBAL").contains("        0xe9,\n    };"));
    assert_eq!(&call.code[48..], &[0xe9, 0, 0, 0, 0]);
    let got: Vec<(u64, &Term, i64)> = call
        .holes()
        .filter(|h| matches!(h.value.term, Term::GotSymbol(_) | Term::Ordinal(_)))
        .map(|h| (h.offset, &h.value.term, h.value.addend))
        .collect();
    assert_eq!(
        got,
        [
            (0, &Term::Ordinal(0), 0),
            (1, &Term::Ordinal(1), 0),
            (0x16, &Term::GotSymbol(0), -4),
            (0x1c, &Term::GotSymbol(1), -4),
        ]
    );
    assert_eq!(call.holes().filter(|h| h.section == Section::Got).count(), 2);
    let error = call.holes().find(|h| h.offset == 0x31).unwrap();
    assert_eq!(error.value.term, Term::ErrorTarget);
    assert!(call.holes().any(|h| h.section == Section::Data && h.value.term == Term::Operand(0)));

    // No data_body: its one _JIT_EXECUTOR slot is zero until patched.
    let guard = stencil(&set, "_FX_GUARD");
    assert_eq!((guard.code_size(), guard.data_size()), (61, 8));
    assert_eq!(guard.data, [0; 8]);
    let text = function_text("3.14-x86_64/good.h", "_FX_GUARD");
    assert!(!text.contains("data_body") && !text.contains("memcpy(data"));
    assert_eq!(guard.ordinals, ordinals(&[(0, "PyFx_Type")]));
    assert_eq!(guard.got_mask, [0x1]);
    let targets: Vec<(u64, &Term)> = guard
        .holes()
        .filter(|h| matches!(h.value.term, Term::JumpTarget | Term::ErrorTarget | Term::Operand(1)))
        .map(|h| (h.offset, &h.value.term))
        .collect();
    assert_eq!(targets, [(0x11, &Term::JumpTarget), (0x1c, &Term::ErrorTarget), (0x22, &Term::Operand(1))]);
    // The trailing jump to _JIT_CONTINUE was cut off the code and its listing.
    assert!(guard.relocations.iter().all(|r| r.offset < 61));
    for s in &set.stencils {
        for h in s.holes().filter(|h| h.section == Section::Code) {
            assert!(s.relocations.iter().any(|r| r.offset == h.offset), "{}: {h}", s.name);
        }
    }
}

#[test]
fn v314_aarch64_fixture_loads_as_written() {
    let set = load("3.14-aarch64/good.h");
    assert_eq!((set.arch(), set.target.version), (Arch::Aarch64, Version::V3_14));
    let names: Vec<&str> = set.stencils.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["shim", "_FX_CALL_GLOBAL", "_FX_CALL_HELPER"]);
    let syms = ["PyFx_Type", "PyFx_Lookup", "PyFx_Helper", "PyFx_Fallback"];
    assert_eq!(set.symbols_map, syms.map(|s| Some(s.to_string())));
    assert_eq!(stencil(&set, "shim").code_size(), 72);

    let call = stencil(&set, "_FX_CALL_GLOBAL");
    assert_eq!((call.code_size(), call.data_size()), (64, 8));
    assert_eq!(call.data, [0; 8], "no data_body: only a _JIT_OPERAND0 slot");
    assert_eq!(call.ordinals, ordinals(&[(0, "PyFx_Type"), (1, "PyFx_Lookup")]));
    assert_eq!((&call.trampoline_mask[..], &call.got_mask[..]), (&[0][..], &[0x3][..]));
    let pairs: Vec<(u64, PatchFn, &Term)> =
        call.holes().filter(|h| h.func == PatchFn::Aarch64_33rx).map(|h| (h.offset, h.func, &h.value.term)).collect();
    assert_eq!(
        pairs,
        [
            (0xc, PatchFn::Aarch64_33rx, &Term::Data),
            (0x14, PatchFn::Aarch64_33rx, &Term::GotSymbol(0)),
            (0x1c, PatchFn::Aarch64_33rx, &Term::GotSymbol(1)),
        ]
    );

    let helper = stencil(&set, "_FX_CALL_HELPER");
    assert_eq!((helper.code_size(), helper.data_size()), (60, 0));
    assert_eq!(helper.ordinals, ordinals(&[(2, "PyFx_Helper"), (3, "PyFx_Fallback")]));
    assert_eq!((&helper.trampoline_mask[..], &helper.got_mask[..]), (&[0xc][..], &[0][..]));
    let calls: Vec<(u64, PatchFn, Section, &Term)> =
        helper.holes().filter(|h| h.func.takes_state()).map(|h| (h.offset, h.func, h.section, &h.value.term)).collect();
    assert_eq!(
        calls,
        [
            (0x1c, PatchFn::Aarch64_Trampoline, Section::Code, &Term::Ordinal(2)),
            (0x24, PatchFn::Aarch64_Trampoline, Section::Code, &Term::Ordinal(3)),
        ]
    );
    let by_offset = |o: u64| helper.holes().find(|h| h.offset == o).unwrap();
    assert_eq!((by_offset(0x2c).func, &by_offset(0x2c).value.term), (PatchFn::Aarch64_19r, &Term::JumpTarget));
    assert_eq!((by_offset(0x38).func, &by_offset(0x38).value.term), (PatchFn::Aarch64_26r, &Term::ErrorTarget));
    assert_eq!((by_offset(0xc).func, &by_offset(0xc).value.term), (PatchFn::Aarch64_16d, &Term::Operand(1)));
    let kinds: Vec<RelocKind> = helper.relocations.iter().map(|r| r.kind).collect();
    assert!(kinds.contains(&RelocKind::Aarch64_CALL26) && kinds.contains(&RelocKind::Aarch64_CONDBR19));
}

/// Each 3.14+ variant loads, and differs from its good.h in one stencil's
/// emit body or in one symbols_map entry, nothing else.
#[test]
fn v314_each_variant_changes_one_thing() {
    let shown = |set: &StencilSet, name: &str| -> Vec<String> {
        stencil(set, name)
            .emit
            .iter()
            .map(|op| match op {
                EmitOp::CopyData { .. } => "copy data".to_string(),
                EmitOp::CopyCode { .. } => "copy code".to_string(),
                EmitOp::Patch(p) => p.to_string(),
            })
            .collect()
    };
    for (dir, file, changed) in [
        ("3.14-x86_64", "wrong-got-ordinal.h", Some("_FX_CALL_GLOBAL")),
        ("3.14-x86_64", "wrong-symbols-map.h", None),
        ("3.14-x86_64", "missing-got-patch.h", Some("_FX_CALL_GLOBAL")),
        ("3.14-x86_64", "swapped-targets.h", Some("_FX_GUARD")),
        ("3.14-aarch64", "wrong-got-ordinal.h", Some("_FX_CALL_GLOBAL")),
        ("3.14-aarch64", "trampoline-wrong-ordinal.h", Some("_FX_CALL_HELPER")),
        ("3.14-aarch64", "trampoline-wrong-symbols-map.h", None),
        ("3.14-aarch64", "missing-got-patch.h", Some("_FX_CALL_GLOBAL")),
        ("3.14-aarch64", "swapped-targets.h", Some("_FX_CALL_HELPER")),
    ] {
        let good = load(&format!("{dir}/good.h"));
        let name = format!("{dir}/{file}");
        let text = std::fs::read_to_string(path(&name)).unwrap();
        assert!(text.starts_with("// BUG: "), "{name}");
        let set = load(&name);
        assert_eq!(set.target, good.target, "{name}");
        for s in &good.stencils {
            let same = shown(&good, &s.name) == shown(&set, &s.name);
            assert_eq!(!same, changed == Some(s.name.as_str()), "{name}: emit_{}", s.name);
            let other = stencil(&set, &s.name);
            let relocs = |s: &Stencil| s.relocations.iter().map(|r| r.text.clone()).collect::<Vec<_>>();
            assert_eq!((&other.code, &other.data, relocs(other)), (&s.code, &s.data, relocs(s)), "{name}");
            assert_eq!((&other.trampoline_mask, &other.got_mask), (&s.trampoline_mask, &s.got_mask), "{name}");
        }
        let map_changes = good.symbols_map.iter().zip(&set.symbols_map).filter(|(a, b)| a != b).count();
        assert_eq!(map_changes, usize::from(changed.is_none()), "{name}: symbols_map");
    }
}

#[test]
fn v314_x86_64_good_is_correct() {
    let set = load("3.14-x86_64/good.h");
    for (seed, placements) in [(1, PLACEMENTS), (2, 32)] {
        let outcome = verify(&set, &options(seed, placements));
        assert_eq!(outcome.results.len(), 3);
        assert!(findings(&outcome).is_empty(), "seed {seed}:\n{}", describe(&outcome));
        assert_eq!(
            (outcome.convention.frame, outcome.convention.stack_pointer, outcome.convention.tstate),
            ("r12", "r13", "r14"),
            "read off the shim"
        );
        for r in &outcome.results {
            assert_eq!(r.runs, placements, "{}", r.name);
            assert_eq!(r.inconclusive, 0, "{}: {:?}", r.name, r.first_inconclusive);
            assert_eq!(r.holes_covered, r.holes, "{}", r.name);
        }
    }
}

#[test]
fn v314_x86_64_wrong_got_ordinal_calls_the_other_symbol() {
    let (set, outcome) = run("3.14-x86_64/wrong-got-ordinal.h");
    let seen = only_in(&outcome, "_FX_CALL_GLOBAL");
    assert_eq!(kinds(&seen), BTreeSet::from([FindingKind::WrongValue]));
    let f = at(&seen, FindingKind::WrongValue, Section::Code, 0x1c);
    assert_eq!(labels(f), ("PyFx_Lookup", "PyFx_Type"));
    assert!(hole(f).contains("got_symbol_address(0x0, state)"), "{}", hole(f));
    assert_eq!(f.runs, PLACEMENTS);
    assert_replays(&set, "_FX_CALL_GLOBAL", f);
}

#[test]
fn v314_x86_64_wrong_symbols_map_entry_fills_the_slot_wrongly() {
    let (set, outcome) = run("3.14-x86_64/wrong-symbols-map.h");
    let seen = only_in(&outcome, "_FX_CALL_GLOBAL");
    let f = at(&seen, FindingKind::WrongValue, Section::Code, 0x1c);
    assert_eq!(labels(f), ("PyFx_Lookup", "PyFx_Other"));
    assert_eq!(f.runs, PLACEMENTS);
    assert_replays(&set, "_FX_CALL_GLOBAL", f);
}

#[test]
fn v314_x86_64_missing_got_patch_leaves_the_slot_stale() {
    let (set, outcome) = run("3.14-x86_64/missing-got-patch.h");
    let seen = only_in(&outcome, "_FX_CALL_GLOBAL");
    let f = at(&seen, FindingKind::WrongValue, Section::Code, 0x1c);
    assert_eq!(labels(f).0, "PyFx_Lookup");
    assert_ne!(labels(f).1, "PyFx_Lookup");
    assert!(hole(f).contains("got_symbol_address(0x1, state)"), "{}", hole(f));
    assert_eq!(f.runs, PLACEMENTS);
    assert_replays(&set, "_FX_CALL_GLOBAL", f);
}

#[test]
fn v314_x86_64_swapped_targets_go_to_each_others_target() {
    let (set, outcome) = run("3.14-x86_64/swapped-targets.h");
    let seen = only_in(&outcome, "_FX_GUARD");
    assert_eq!(kinds(&seen), BTreeSet::from([FindingKind::WrongValue]));
    let jump = at(&seen, FindingKind::WrongValue, Section::Code, 0x11);
    assert_eq!(labels(jump), ("_JIT_JUMP_TARGET", "_JIT_ERROR_TARGET"));
    let error = at(&seen, FindingKind::WrongValue, Section::Code, 0x1c);
    assert_eq!(labels(error), ("_JIT_ERROR_TARGET", "_JIT_JUMP_TARGET"));
    assert_eq!(seen.len(), 2);
    for f in [jump, error] {
        assert_eq!(f.runs, PLACEMENTS);
        assert_replays(&set, "_FX_GUARD", f);
    }
}

// aarch64: the same verdicts, once the aarch64 engine runs stencils.

/// Findings only in `stencil`, and one of them at one of `offsets` in its code.
fn flagged_at(file: &str, stencil: &str, offsets: &[u64]) {
    let (set, outcome) = run(file);
    let seen = only_in(&outcome, stencil);
    let hit = seen
        .iter()
        .find(|s| {
            s.finding.site.as_ref().is_some_and(|site| site.section == Section::Code && offsets.contains(&site.offset))
        })
        .unwrap_or_else(|| panic!("{file}: nothing at code+{offsets:x?}:\n{}", describe(&outcome)));
    assert_replays(&set, stencil, hit);
}

#[test]
fn v314_aarch64_good_is_correct() {
    let set = load("3.14-aarch64/good.h");
    let outcome = verify(&set, &options(1, PLACEMENTS));
    assert!(findings(&outcome).is_empty(), "{}", describe(&outcome));
    assert_eq!(
        (outcome.convention.frame, outcome.convention.stack_pointer, outcome.convention.tstate),
        ("x20", "x21", "x22")
    );
}

#[test]
fn v314_aarch64_wrong_got_ordinal_is_flagged() {
    flagged_at("3.14-aarch64/wrong-got-ordinal.h", "_FX_CALL_GLOBAL", &[0x1c, 0x20]);
}

#[test]
fn v314_aarch64_missing_got_patch_is_flagged() {
    flagged_at("3.14-aarch64/missing-got-patch.h", "_FX_CALL_GLOBAL", &[0x1c, 0x20]);
}

#[test]
fn v314_aarch64_trampoline_to_the_wrong_symbol_is_flagged() {
    flagged_at("3.14-aarch64/trampoline-wrong-ordinal.h", "_FX_CALL_HELPER", &[0x1c]);
    flagged_at("3.14-aarch64/trampoline-wrong-symbols-map.h", "_FX_CALL_HELPER", &[0x1c]);
}

#[test]
fn v314_aarch64_swapped_targets_are_flagged() {
    flagged_at("3.14-aarch64/swapped-targets.h", "_FX_CALL_HELPER", &[0x2c]);
    flagged_at("3.14-aarch64/swapped-targets.h", "_FX_CALL_HELPER", &[0x38]);
}
