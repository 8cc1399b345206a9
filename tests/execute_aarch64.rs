//! Stage tests of execute on AArch64 (`src/execute/aarch64`, run by
//! `src/execute/unicorn.rs`): calls stubbed through the link register, exits,
//! stack alignment at calls, made-up memory, relaxed GOT pairs, and the judge
//! on what the runs saw. Stencils are hand-assembled, placed and patched with
//! the ports, the way a CPython 3.13 aarch64 header would have them.

use stencilcheck::execute::aarch64::UnicornArm64;
use stencilcheck::execute::{Contents, Convention, Engine, ExitKind, Fault, RunEnd, Trace, RETURN_SENTINEL};
use stencilcheck::judge::{self, FindingKind};
use stencilcheck::model::{
    DataComment, DataCommentKind, Effect, EmitOp, ObjdumpInstruction, PatchCall, PatchFn, RelocKind, Relocation,
    Section, Stencil, Symbol, Term, Value,
};
use stencilcheck::patch::{self, Image, Ports};
use stencilcheck::place::{self, Placement};
use stencilcheck::target::{Arch, Target};

const A64: Target = Target {
    arch: Arch::Aarch64,
    format: stencilcheck::target::ObjectFormat::Elf,
    version: stencilcheck::target::Version::V3_13,
};

// ---------------------------------------------------------------------------
// Hand assembly
// ---------------------------------------------------------------------------

const STP_FP_LR: u32 = 0xa9bf_7bfd; // stp x29, x30, [sp, #-0x10]!
const LDP_FP_LR: u32 = 0xa8c1_7bfd; // ldp x29, x30, [sp], #0x10
const MOV_FP_SP: u32 = 0x9100_03fd; // mov x29, sp
const ADRP_X8: u32 = 0x9000_0008; // adrp x8, 0
const LDR_X8: u32 = 0xf940_0108; // ldr x8, [x8]
const BLR_X8: u32 = 0xd63f_0100;
const BR_X8: u32 = 0xd61f_0100;
const BR_X9: u32 = 0xd61f_0120;
const B: u32 = 0x1400_0000;
const BL: u32 = 0x9400_0000;
const RET: u32 = 0xd65f_03c0;
const PAD: u32 = 0; // udf #0: CPython pads aarch64 code to 8 bytes
const SUB_SP_8: u32 = 0xd100_23ff; // sub sp, sp, #0x8
const ADD_SP_8: u32 = 0x9100_23ff; // add sp, sp, #0x8
const SUB_SP_16: u32 = 0xd100_43ff;
const ADD_SP_16: u32 = 0x9100_43ff;
const LDR_X9_X0_16: u32 = 0xf940_0809; // ldr x9, [x0, #0x10]
const STRH_W8_X1: u32 = 0x7900_0028; // strh w8, [x1]
const ADD_X1_8: u32 = 0x9100_2021; // add x1, x1, #0x8
const CBNZ_X0: u32 = 0xb500_0000; // cbnz x0, .

fn words(ws: &[u32]) -> Vec<u8> {
    ws.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn listing(code: &[u8]) -> Vec<ObjdumpInstruction> {
    code.chunks_exact(4)
        .enumerate()
        .map(|(i, b)| ObjdumpInstruction {
            offset: 4 * i as u64,
            bytes: b.to_vec(),
            text: A64.info().format_instruction(b, 4 * i as u64),
            line: 0,
        })
        .collect()
}

fn reloc(offset: u64, kind: RelocKind, symbol: &str) -> Relocation {
    Relocation {
        offset,
        kind,
        symbol: Symbol::classify(symbol),
        addend: 0,
        line: 0,
        text: format!("{offset:016x}:  {kind} {symbol}"),
    }
}

fn hole(func: PatchFn, section: Section, offset: u64, term: Term, addend: i64) -> EmitOp {
    EmitOp::Patch(PatchCall { func, section, offset, value: Value::new(term, addend), line: 0 })
}

fn slot(offset: u64, term: Term) -> DataComment {
    DataComment { offset, kind: DataCommentKind::Slot(Value::new(term, 0)), line: 0 }
}

fn stencil(
    name: &str,
    code: &[u32],
    data_len: usize,
    relocations: Vec<Relocation>,
    slots: Vec<DataComment>,
    patches: Vec<EmitOp>,
) -> Stencil {
    let code = words(code);
    let (data_patches, code_patches): (Vec<_>, Vec<_>) =
        patches.into_iter().partition(|op| matches!(op, EmitOp::Patch(p) if p.section == Section::Data));
    let mut emit = vec![EmitOp::CopyData { line: 0 }];
    emit.extend(data_patches);
    emit.push(EmitOp::CopyCode { line: 0 });
    emit.extend(code_patches);
    Stencil {
        name: name.into(),
        line: 1,
        instructions: listing(&code),
        code,
        data: vec![0; data_len],
        relocations,
        data_comments: slots,
        emit,
        locals: Default::default(),
        ordinals: Default::default(),
        trampoline_mask: Vec::new(),
        got_mask: Vec::new(),
    }
}

/// ```text
///  0: stp x29, x30, [sp, #-0x10]!
///  4: adrp x8, PyFunc@GOT            ADR_GOT_PAGE      (slot data+0)
///  8: mov x29, sp
///  c: ldr x8, [x8, PyFunc@GOT lo12]  LD64_GOT_LO12_NC
/// 10: blr x8
/// 14: ldp x29, x30, [sp], #0x10
/// 18: b _JIT_CONTINUE                JUMP26
/// 1c: (padding)
/// ```
fn call_through_got() -> Stencil {
    stencil(
        "_CALL",
        &[STP_FP_LR, ADRP_X8, MOV_FP_SP, LDR_X8, BLR_X8, LDP_FP_LR, B, PAD],
        16,
        vec![
            reloc(4, RelocKind::Aarch64_ADR_GOT_PAGE, "PyFunc"),
            reloc(0xc, RelocKind::Aarch64_LD64_GOT_LO12_NC, "PyFunc"),
            reloc(0x18, RelocKind::Aarch64_JUMP26, "_JIT_CONTINUE"),
        ],
        vec![slot(0, Term::Symbol("PyFunc".into()))],
        vec![
            hole(PatchFn::P64, Section::Data, 0, Term::Symbol("PyFunc".into()), 0),
            hole(PatchFn::Aarch64_21rx, Section::Code, 4, Term::Data, 0),
            hole(PatchFn::Aarch64_12x, Section::Code, 0xc, Term::Data, 0),
            hole(PatchFn::Aarch64_26r, Section::Code, 0x18, Term::Continue, 0),
        ],
    )
}

/// `sub sp, sp, #n; bl PyFunc; add sp, sp, #n; b _JIT_CONTINUE`.
fn direct_call(misaligned: bool) -> Stencil {
    let (sub, add) = if misaligned { (SUB_SP_8, ADD_SP_8) } else { (SUB_SP_16, ADD_SP_16) };
    stencil(
        "_BL",
        &[sub, BL, add, B],
        0,
        vec![reloc(4, RelocKind::Aarch64_CALL26, "PyFunc"), reloc(0xc, RelocKind::Aarch64_JUMP26, "_JIT_CONTINUE")],
        vec![],
        vec![
            hole(PatchFn::Aarch64_26r, Section::Code, 4, Term::Symbol("PyFunc".into()), 0),
            hole(PatchFn::Aarch64_26r, Section::Code, 0xc, Term::Continue, 0),
        ],
    )
}

fn raw(name: &str, code: &[u32]) -> Stencil {
    stencil(name, code, 0, vec![], vec![], vec![])
}

fn engine() -> UnicornArm64 {
    let conv = Convention {
        frame: "x0",
        stack_pointer: "x1",
        tstate: "x2",
        source: "default",
        c_abi: stencilcheck::execute::AAPCS64,
    };
    UnicornArm64::new(conv, 100_000).unwrap()
}

fn placed(s: &Stencil, seed: u64, index: u32) -> Placement {
    place::place(A64, s, seed, index).unwrap()
}

fn run(e: &mut UnicornArm64, s: &Stencil, p: &Placement) -> (Image, Trace) {
    let image = patch::emit(s, p, &Ports).unwrap_or_else(|f| panic!("{}", f.assert.message));
    let trace = e.run(s, p, &image);
    (image, trace)
}

fn exit(trace: &Trace) -> (ExitKind, u64, u64, bool) {
    match trace.end {
        Some(RunEnd::Exit { kind, target, sp, computed, .. }) => (kind, target, sp, computed),
        ref other => panic!("run did not exit: {other:?}"),
    }
}

/// Every finding the pipeline would report for this run.
fn findings(s: &Stencil, p: &Placement, image: &Image, trace: &Trace) -> Vec<judge::Finding> {
    let statics = A64.info().static_sites(s, image);
    let mut out = judge::judge_sites(A64, s, p, image, &statics);
    out.extend(judge::judge_sites(A64, s, p, image, &trace.sites));
    out.extend(judge::judge_run(A64, s, p, trace, false).findings);
    out
}

// ---------------------------------------------------------------------------
// Calls
// ---------------------------------------------------------------------------

#[test]
fn a_call_is_stubbed_and_returns_through_the_link_register() {
    let s = call_through_got();
    let mut e = engine();
    for index in 0..16 {
        let p = placed(&s, 7, index);
        let (image, trace) = run(&mut e, &s, &p);
        // Entry: sp 16-byte aligned.
        assert_eq!(trace.entry_sp % 16, 0);
        assert_eq!(trace.calls.len(), 1, "{:?}", trace.end);
        let call = &trace.calls[0];
        assert_eq!(call.target, p.externs["PyFunc"]);
        assert_eq!(call.from, p.code + 0x10);
        // sp at the callee: the frame record pushed, still aligned.
        assert_eq!(call.sp, trace.entry_sp - 16);
        // The stub's value is the scheme's first one.
        let contents = Contents {
            seed: p.contents_seed,
            heap: p.heap,
            heap_size: p.heap_size,
            interesting: &p.externs.values().copied().collect::<Vec<_>>(),
        };
        assert_eq!(call.returned, contents.return_value(0));
        // Back at 0x14 (LR), then out through the patched `b`.
        assert_eq!(exit(&trace), (ExitKind::Jump, p.continuation(&s), trace.entry_sp, false));
        assert_eq!(trace.instructions, 7);
        // The GOT pair, seen running: the page of the slot, then S loaded.
        let dynamic: Vec<_> = trace.sites.iter().map(|o| (o.relocation, o.effect)).collect();
        assert!(dynamic.contains(&(0, Some(Effect::Address { value: p.data & !0xfff, bits: 64 }))), "{dynamic:?}");
        assert!(dynamic.contains(&(1, Some(Effect::Load { address: p.data, value: p.externs["PyFunc"], bits: 64 }))));
        assert!(findings(&s, &p, &image, &trace).is_empty(), "{:?}", findings(&s, &p, &image, &trace));
    }
}

#[test]
fn the_got_pair_is_judged_statically_too() {
    let s = call_through_got();
    let p = placed(&s, 3, 0);
    let image = patch::emit(&s, &p, &Ports).unwrap();
    let statics = A64.info().static_sites(&s, &image);
    let effects: Vec<_> = statics.iter().map(|o| (o.relocation, o.effect)).collect();
    assert_eq!(
        effects,
        vec![
            (0, Some(Effect::Address { value: p.data & !0xfff, bits: 64 })),
            (1, Some(Effect::Load { address: p.data, value: p.externs["PyFunc"], bits: 64 })),
            (2, Some(Effect::Transfer { target: p.continuation(&s), slot: None })),
        ]
    );
    // A wrong low-12 field loads another slot: the judge says so.
    let mut bad = image.clone();
    let w = bad.read_u32(p.code + 0xc).unwrap() ^ (1 << 10);
    bad.write(p.code + 0xc, &w.to_le_bytes()).unwrap();
    let statics = A64.info().static_sites(&s, &bad);
    let found = judge::judge_sites(A64, &s, &p, &bad, &statics);
    assert!(found.iter().any(|f| f.kind == FindingKind::WrongValue && f.relocation == Some(1)), "{found:?}");
}

#[test]
fn a_misaligned_stack_at_a_call_is_recorded_and_judged() {
    for (misaligned, expect) in [(true, 8), (false, 0)] {
        let s = direct_call(misaligned);
        let mut e = engine();
        let p = placed(&s, 11, 0);
        let (image, trace) = run(&mut e, &s, &p);
        assert_eq!(trace.calls.len(), 1);
        assert_eq!(trace.calls[0].sp % 16, expect);
        assert_eq!(trace.calls[0].target, p.externs["PyFunc"]);
        assert_eq!(exit(&trace), (ExitKind::Jump, p.continuation(&s), trace.entry_sp, false));
        let misaligned_found = findings(&s, &p, &image, &trace).iter().any(|f| f.kind == FindingKind::MisalignedCall);
        assert_eq!(misaligned_found, misaligned);
    }
}

#[test]
fn a_noreturn_call_before_the_padding_ends_the_run() {
    // bl Py_FatalError, then the 8-byte padding: the stub returns into udf.
    let s = stencil(
        "_FATAL",
        &[BL, PAD],
        0,
        vec![reloc(0, RelocKind::Aarch64_CALL26, "Py_FatalError")],
        vec![],
        vec![hole(PatchFn::Aarch64_26r, Section::Code, 0, Term::Symbol("Py_FatalError".into()), 0)],
    );
    let p = placed(&s, 1, 0);
    let (image, trace) = run(&mut engine(), &s, &p);
    assert_eq!(trace.calls.len(), 1);
    assert_eq!(exit(&trace).0, ExitKind::AfterNoReturnCall);
    assert!(findings(&s, &p, &image, &trace).is_empty());
    // Code after the call (not zeros) runs on.
    let s2 = stencil("_CALL_ADD", &[BL, ADD_X1_8], 0, s.relocations.clone(), vec![], s.emit.clone());
    let p = placed(&s2, 1, 0);
    let (_, trace) = run(&mut engine(), &s2, &p);
    assert_eq!(exit(&trace).0, ExitKind::FallThrough);
    assert_eq!(trace.instructions, 2);
}

// ---------------------------------------------------------------------------
// Exits
// ---------------------------------------------------------------------------

#[test]
fn ret_returns_to_the_sentinel_in_the_link_register() {
    let s = raw("_RET", &[RET, PAD]);
    let p = placed(&s, 2, 0);
    let (image, trace) = run(&mut engine(), &s, &p);
    assert_eq!(exit(&trace), (ExitKind::Return, RETURN_SENTINEL, trace.entry_sp, false));
    assert!(findings(&s, &p, &image, &trace).is_empty());
}

#[test]
fn an_unbalanced_stack_at_exit_is_judged() {
    // sub sp, sp, #16; b _JIT_CONTINUE
    let s = stencil(
        "_LEAK",
        &[SUB_SP_16, B],
        0,
        vec![reloc(4, RelocKind::Aarch64_JUMP26, "_JIT_CONTINUE")],
        vec![],
        vec![hole(PatchFn::Aarch64_26r, Section::Code, 4, Term::Continue, 0)],
    );
    let p = placed(&s, 2, 0);
    let (image, trace) = run(&mut engine(), &s, &p);
    assert_eq!(exit(&trace), (ExitKind::Jump, p.continuation(&s), trace.entry_sp - 16, false));
    let found = findings(&s, &p, &image, &trace);
    assert!(found.iter().any(|f| f.kind == FindingKind::StackImbalance), "{found:?}");
}

#[test]
fn running_off_the_end_falls_through() {
    let s = raw("_ADD", &[ADD_X1_8, ADD_X1_8]);
    let p = placed(&s, 4, 0);
    let (image, trace) = run(&mut engine(), &s, &p);
    assert_eq!(exit(&trace), (ExitKind::FallThrough, p.continuation(&s), trace.entry_sp, false));
    assert_eq!(trace.instructions, 2);
    assert!(findings(&s, &p, &image, &trace).is_empty());
}

#[test]
fn a_taken_conditional_branch_leaves_for_its_target() {
    // cbnz x0, _JIT_JUMP_TARGET (CONDBR19); b _JIT_CONTINUE. x0 = frame != 0.
    let s = stencil(
        "_CBNZ",
        &[CBNZ_X0, B],
        0,
        vec![
            reloc(0, RelocKind::Aarch64_CONDBR19, "_JIT_JUMP_TARGET"),
            reloc(4, RelocKind::Aarch64_JUMP26, "_JIT_CONTINUE"),
        ],
        vec![],
        vec![
            hole(PatchFn::Aarch64_19r, Section::Code, 0, Term::JumpTarget, 0),
            hole(PatchFn::Aarch64_26r, Section::Code, 4, Term::Continue, 0),
        ],
    );
    let mut e = engine();
    for index in 0..8 {
        let p = placed(&s, 5, index);
        assert_eq!(p.jump_target % 8, 0, "instruction starts are aligned");
        let (image, trace) = run(&mut e, &s, &p);
        assert_eq!(exit(&trace), (ExitKind::Jump, p.jump_target, trace.entry_sp, false));
        assert_eq!(trace.sites[0].effect, Some(Effect::Transfer { target: p.jump_target, slot: None }));
        assert!(findings(&s, &p, &image, &trace).is_empty());
    }
}

#[test]
fn a_branch_through_made_up_memory_is_computed() {
    // ldr x9, [x0, #0x10]; br x9: the frame's made-up contents.
    let s = raw("_BR", &[LDR_X9_X0_16, BR_X9]);
    let mut e = engine();
    for index in 0..8 {
        let p = placed(&s, 9, index);
        let (image, trace) = run(&mut e, &s, &p);
        let contents = Contents { seed: p.contents_seed, heap: p.heap, heap_size: p.heap_size, interesting: &[] };
        let (kind, target, sp, computed) = exit(&trace);
        assert_eq!((kind, target, sp, computed), (ExitKind::Jump, contents.word(p.frame + 0x10), trace.entry_sp, true));
        assert!(findings(&s, &p, &image, &trace).is_empty());
    }
}

#[test]
fn a_branch_through_a_relocated_register_is_judged() {
    // adrp x8, _JIT_CONTINUE@GOT; mov x29, sp; ldr x8, [x8, lo12]; br x8
    let s = stencil(
        "_BR_GOT",
        &[ADRP_X8, MOV_FP_SP, LDR_X8, BR_X8],
        8,
        vec![
            reloc(0, RelocKind::Aarch64_ADR_GOT_PAGE, "_JIT_CONTINUE"),
            reloc(8, RelocKind::Aarch64_LD64_GOT_LO12_NC, "_JIT_CONTINUE"),
        ],
        vec![slot(0, Term::Continue)],
        vec![
            hole(PatchFn::P64, Section::Data, 0, Term::Continue, 0),
            hole(PatchFn::Aarch64_21rx, Section::Code, 0, Term::Data, 0),
            hole(PatchFn::Aarch64_12x, Section::Code, 8, Term::Data, 0),
        ],
    );
    let p = placed(&s, 6, 0);
    let (image, trace) = run(&mut engine(), &s, &p);
    assert_eq!(exit(&trace), (ExitKind::Jump, p.continuation(&s), trace.entry_sp, false));
    assert!(findings(&s, &p, &image, &trace).is_empty());
    // The data slot patched wrong: the jump is judged, not waved through.
    let mut bad = s.clone();
    bad.emit[1] = hole(PatchFn::P64, Section::Data, 0, Term::Continue, 8);
    let image = patch::emit(&bad, &p, &Ports).unwrap();
    let trace = engine().run(&bad, &p, &image);
    assert_eq!(exit(&trace), (ExitKind::Jump, p.continuation(&s) + 8, trace.entry_sp, false));
    let found = judge::judge_run(A64, &bad, &p, &trace, false).findings;
    assert!(found.iter().any(|f| f.kind == FindingKind::BadExit), "{found:?}");
}

// ---------------------------------------------------------------------------
// Made-up memory, relaxed pairs, faults
// ---------------------------------------------------------------------------

#[test]
fn loads_from_unmapped_memory_are_made_up_on_demand_and_repeatable() {
    let s = raw("_BR", &[LDR_X9_X0_16, BR_X9]);
    let p = placed(&s, 12, 3);
    let image = patch::emit(&s, &p, &Ports).unwrap();
    let mut e = engine();
    let first = e.run(&s, &p, &image);
    // Another stencil in between, then the same placement again.
    let other = raw("_ADD", &[ADD_X1_8, ADD_X1_8]);
    let po = placed(&other, 1, 0);
    let _ = e.run(&other, &po, &patch::emit(&other, &po, &Ports).unwrap());
    let again = e.run(&s, &p, &image);
    assert_eq!(first.end, again.end);
    assert_eq!(first.entry_sp, again.entry_sp);
}

/// `adrp x8, _JIT_OPARG@GOT; ldr x8, [x8, lo12]` folded into
/// `patch_aarch64_33rx`, then `strh w8, [x1]; b _JIT_CONTINUE`.
fn oparg_pair() -> Stencil {
    stencil(
        "_OPARG",
        &[ADRP_X8, LDR_X8, STRH_W8_X1, B],
        8,
        vec![
            reloc(0, RelocKind::Aarch64_ADR_GOT_PAGE, "_JIT_OPARG"),
            reloc(4, RelocKind::Aarch64_LD64_GOT_LO12_NC, "_JIT_OPARG"),
            reloc(0xc, RelocKind::Aarch64_JUMP26, "_JIT_CONTINUE"),
        ],
        vec![slot(0, Term::Oparg)],
        vec![
            hole(PatchFn::P64, Section::Data, 0, Term::Oparg, 0),
            hole(PatchFn::Aarch64_33rx, Section::Code, 0, Term::Data, 0),
            hole(PatchFn::Aarch64_26r, Section::Code, 0xc, Term::Continue, 0),
        ],
    )
}

#[test]
fn a_relaxed_got_pair_forms_the_value() {
    let s = oparg_pair();
    let mut e = engine();
    for index in 0..8 {
        let p = placed(&s, 13, index);
        let (image, trace) = run(&mut e, &s, &p);
        // movz x8, #oparg; nop
        assert_eq!(image.read_u32(p.code).unwrap() & 0xffe0_001f, 0xd280_0008);
        assert_eq!(image.read_u32(p.code + 4), Some(0xd503_201f));
        let oparg = p.oparg as u64;
        let formed: Vec<_> = trace.sites.iter().filter(|o| o.relocation < 2).map(|o| o.effect).collect();
        assert_eq!(formed, vec![Some(Effect::Formed { value: oparg }), Some(Effect::Formed { value: oparg })]);
        assert_eq!(exit(&trace), (ExitKind::Jump, p.continuation(&s), trace.entry_sp, false));
        assert!(findings(&s, &p, &image, &trace).is_empty());
    }
}

#[test]
fn a_relaxation_that_forms_the_wrong_value_is_judged() {
    let s = oparg_pair();
    let p = placed(&s, 13, 0);
    let mut image = patch::emit(&s, &p, &Ports).unwrap();
    // movz x8, #(oparg ^ 1): the pair's end holds the wrong value.
    let w = image.read_u32(p.code).unwrap() ^ (1 << 5);
    image.write(p.code, &w.to_le_bytes()).unwrap();
    let trace = engine().run(&s, &p, &image);
    let found = findings(&s, &p, &image, &trace);
    assert!(found.iter().any(|f| f.kind == FindingKind::WrongValue && f.relocation == Some(1)), "{found:?}");
}

#[test]
fn an_instruction_trap_is_a_fault() {
    // brk #0x1 inside the code: a trap no stencil may reach (named by the judge).
    let s = raw("_BRK", &[0xd420_0020, PAD]);
    let p = placed(&s, 1, 0);
    let (_, trace) = run(&mut engine(), &s, &p);
    assert!(matches!(trace.end, Some(RunEnd::Fault { fault: Fault::Forbidden, .. })), "{:?}", trace.end);
    // udf #0: an undefined instruction.
    let s = raw("_UDF", &[0x0000_0000, 0xd503_201f]);
    let p = placed(&s, 1, 0);
    let (_, trace) = run(&mut engine(), &s, &p);
    assert!(matches!(trace.end, Some(RunEnd::Fault { fault: Fault::InvalidInstruction, .. })), "{:?}", trace.end);
}

#[test]
fn fp_and_simd_instructions_run() {
    // movi v0.2d, #0; str q0, [x1]; ldr q1, [x1]; fadd d0, d0, d1; add x1, x1, #8
    let s = raw("_FP", &[0x6f00_e400, 0x3d80_0020, 0x3dc0_0021, 0x1e61_2800, ADD_X1_8, ADD_X1_8]);
    let p = placed(&s, 1, 0);
    let (_, trace) = run(&mut engine(), &s, &p);
    assert_eq!(exit(&trace).0, ExitKind::FallThrough, "{:?}", trace.end);
}

/// `stp x29, x30; bl PyFunc; ldp x29, x30; br xN`: where the stub leaves xN.
fn call_then_br(n: u32) -> Stencil {
    stencil(
        "_CALL_BR",
        &[STP_FP_LR, BL, LDP_FP_LR, 0xd61f_0000 | (n << 5)],
        0,
        vec![reloc(4, RelocKind::Aarch64_CALL26, "PyFunc")],
        vec![],
        vec![hole(PatchFn::Aarch64_26r, Section::Code, 4, Term::Symbol("PyFunc".into()), 0)],
    )
}

#[test]
fn the_stub_returns_in_x0_and_scrambles_only_caller_saved_registers() {
    let mut e = engine();
    for index in 0..4 {
        // x0: the made-up return value.
        let s = call_then_br(0);
        let p = placed(&s, 21, index);
        let (_, trace) = run(&mut e, &s, &p);
        assert_eq!(exit(&trace).1, trace.calls[0].returned);
        // x9: scrambled from the seed and the call's number (x1 is the first).
        let s = call_then_br(9);
        let (_, trace) = run(&mut e, &s, &p);
        assert_eq!(exit(&trace).1, stencilcheck::place::splitmix(p.contents_seed ^ 8));
        // x19 (callee-saved): still its made-up entry contents.
        let s = call_then_br(19);
        let (_, trace) = run(&mut e, &s, &p);
        let contents = Contents {
            seed: p.contents_seed,
            heap: p.heap,
            heap_size: p.heap_size,
            interesting: &p.externs.values().copied().collect::<Vec<_>>(),
        };
        assert_eq!(exit(&trace), (ExitKind::Jump, contents.word(p.contents_seed ^ (19 * 8)), trace.entry_sp, true));
    }
}

#[test]
fn uops_get_the_convention_and_the_shim_gets_c_arguments() {
    let conv = Convention {
        frame: "x20",
        stack_pointer: "x21",
        tstate: "x22",
        source: "shim",
        c_abi: stencilcheck::execute::AAPCS64,
    };
    let mut e = UnicornArm64::new(conv, 1000).unwrap();
    // ldr x9, [x20, #0x10]; br x9
    let uop = raw("_UOP", &[0xf940_0a89, BR_X9]);
    // ldr x9, [x0, #0x10]; br x9, entered as the shim
    let shim = raw("shim", &[LDR_X9_X0_16, BR_X9]);
    for s in [uop, shim] {
        let p = placed(&s, 8, 0);
        let (_, trace) = run(&mut e, &s, &p);
        let contents = Contents { seed: p.contents_seed, heap: p.heap, heap_size: p.heap_size, interesting: &[] };
        assert_eq!(exit(&trace).1, contents.word(p.frame + 0x10), "{}", s.name);
        assert_eq!(trace.entered_by_call, s.name == "shim");
    }
}

/// CPython 3.14+: `b PyFoo` / `bl PyFoo` patched by `patch_aarch64_trampoline`:
/// direct when in reach, else through a veneer in the trace's trampolines.
fn via_trampoline(link: bool) -> Stencil {
    let code = if link { [STP_FP_LR, BL, LDP_FP_LR, B] } else { [B, PAD, PAD, PAD] };
    let at = if link { 4 } else { 0 };
    let kind = if link { RelocKind::Aarch64_CALL26 } else { RelocKind::Aarch64_JUMP26 };
    let mut relocations = vec![reloc(at, kind, "PyFoo")];
    let mut patches = vec![hole(PatchFn::Aarch64_Trampoline, Section::Code, at, Term::Ordinal(0), 0)];
    if link {
        relocations.push(reloc(0xc, RelocKind::Aarch64_JUMP26, "_JIT_CONTINUE"));
        patches.push(hole(PatchFn::Aarch64_26r, Section::Code, 0xc, Term::Continue, 0));
    }
    let mut s = stencil("_TRAMP", &code, 0, relocations, vec![], patches);
    s.ordinals.insert(0, "PyFoo".into());
    s.trampoline_mask = vec![1];
    s
}

#[test]
fn branches_through_trampolines_go_where_the_veneer_says() {
    let t314 = Target { version: stencilcheck::target::Version::V3_14, ..A64 };
    let conv = Convention {
        frame: "x20",
        stack_pointer: "x21",
        tstate: "x22",
        source: "shim",
        c_abi: stencilcheck::execute::AAPCS64,
    };
    let mut e = UnicornArm64::new(conv, 1000).unwrap();
    let mut veneers = 0;
    for link in [false, true] {
        let s = via_trampoline(link);
        for index in 0..16 {
            let p = place::place(t314, &s, 17, index).unwrap();
            let image = patch::emit(&s, &p, &Ports).unwrap_or_else(|f| panic!("{}", f.assert.message));
            let trace = e.run(&s, &p, &image);
            let foo = p.externs["PyFoo"];
            let slot = p.trace.as_ref().and_then(|t| t.trampoline_slot(0)).unwrap();
            let branch = image.read_u32(p.code + if link { 4 } else { 0 }).unwrap();
            let through =
                A64.info().branch_target(&branch.to_le_bytes(), p.code + if link { 4 } else { 0 }) == Some(slot);
            veneers += through as u32;
            if link {
                assert_eq!(trace.calls[0].target, foo, "call target resolved through the veneer");
                assert_eq!(exit(&trace).0, ExitKind::Jump);
            } else {
                assert_eq!(exit(&trace), (ExitKind::Jump, foo, trace.entry_sp, false));
            }
            let sites = A64.info().static_sites(&s, &image);
            let want = Effect::Transfer { target: foo, slot: through.then_some(slot + 8) };
            assert_eq!(sites[0].effect, Some(want));
            let mut found = judge::judge_sites(t314, &s, &p, &image, &sites);
            found.extend(judge::judge_run(t314, &s, &p, &trace, false).findings);
            assert!(found.is_empty(), "{found:?}");
        }
    }
    assert!(veneers > 0, "some placements are out of direct reach");
}

#[test]
fn a_branch_onto_the_second_half_of_a_relaxed_pair_is_caught_running() {
    // CPython issue 146128 re-enacted: `b 8` skips the pair's first half, so
    // the `nop` that replaced `ldr x8, [x8]` leaves whatever x8 held.
    let s = stencil(
        "_OPARG_SKIP",
        &[0x1400_0002, ADRP_X8, LDR_X8, B], // b 0x8; adrp; ldr; b _JIT_CONTINUE
        8,
        vec![
            reloc(4, RelocKind::Aarch64_ADR_GOT_PAGE, "_JIT_OPARG"),
            reloc(8, RelocKind::Aarch64_LD64_GOT_LO12_NC, "_JIT_OPARG"),
            reloc(0xc, RelocKind::Aarch64_JUMP26, "_JIT_CONTINUE"),
        ],
        vec![slot(0, Term::Oparg)],
        vec![
            hole(PatchFn::P64, Section::Data, 0, Term::Oparg, 0),
            hole(PatchFn::Aarch64_33rx, Section::Code, 4, Term::Data, 0),
            hole(PatchFn::Aarch64_26r, Section::Code, 0xc, Term::Continue, 0),
        ],
    );
    let p = placed(&s, 14, 0);
    let (image, trace) = run(&mut engine(), &s, &p);
    assert_eq!(image.read_u32(p.code + 8), Some(0xd503_201f), "relaxed to movz+nop");
    let formed: Vec<_> = trace.sites.iter().filter(|o| o.relocation == 1).map(|o| o.effect).collect();
    assert_eq!(formed.len(), 1);
    assert_ne!(formed[0], Some(Effect::Formed { value: p.oparg as u64 }));
    let found = findings(&s, &p, &image, &trace);
    assert!(found.iter().any(|f| f.kind == FindingKind::WrongValue && f.relocation == Some(1)), "{found:?}");
}

/// An `adrp` to a header-local symbol (`.rodata`, no offset known) must form
/// one of the pages the stencil's read-only data spans, and no other: the
/// page after data that ends on a page boundary is outside (killed mutants
/// of that range's arithmetic).
#[test]
fn an_adrp_to_header_local_data_forms_one_of_the_data_pages() {
    for data_len in [0x40usize, 0] {
        let s = stencil(
            "_STR",
            &[ADRP_X8, PAD],
            data_len,
            vec![reloc(0, RelocKind::Aarch64_ADR_PREL_PG_HI21, ".rodata.str1.1")],
            vec![],
            vec![hole(PatchFn::Aarch64_21r, Section::Code, 0, Term::Data, 0)],
        );
        let mut p = placed(&s, 5, 0);
        // The data ends exactly on a page boundary (or, empty, starts on one).
        p.data = ((p.data + 0x10_0000) & !0xfff) + 0x1000 - data_len as u64;
        let forming = |page: u64| {
            let mut image = patch::emit(&s, &p, &Ports).unwrap();
            patch::aarch64::patch_aarch64_21r(&mut image, p.code, page).unwrap();
            let statics = A64.info().static_sites(&s, &image);
            judge::judge_sites(A64, &s, &p, &image, &statics).len()
        };
        assert_eq!(forming(p.data), 0, "data_len {data_len:#x}");
        // The page right after the data (the data's own page when it is empty).
        let after = p.data + (data_len as u64).max(0x1000);
        assert_eq!(forming(after), 1, "data_len {data_len:#x}");
        assert_eq!(forming(p.data - 0x1000), 1, "data_len {data_len:#x}");
    }
}

/// A relocation no hole writes is a finding on aarch64 too, where every
/// field starts its instruction (killed a mutant that compared an empty
/// slice of the listing and took the field for one CPython resolved).
#[test]
fn an_aarch64_relocation_with_no_hole_is_unaccounted() {
    let mut s = oparg_pair();
    s.emit.retain(|op| !matches!(op, EmitOp::Patch(p) if p.func == PatchFn::Aarch64_26r));
    let p = placed(&s, 13, 0);
    let image = patch::emit(&s, &p, &Ports).unwrap();
    let f = judge::judge_accounting(A64, &s, &p, &image);
    assert!(f.iter().any(|f| f.relocation == Some(2) && f.message.contains("is written by no hole")), "{f:#?}");
}
