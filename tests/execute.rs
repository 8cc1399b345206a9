//! Stage tests of execute (`src/execute`): the Unicorn x86-64 engine's run
//! ends, calls, faults and site observations, and the static site decoder,
//! on hand-built stencils patched with the ports.

use common::{place, static_sites};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use stencilcheck::execute::x86_64::{convention, UnicornX86, RETURN_SENTINEL};
use stencilcheck::execute::{Engine, ExitKind, Fault, RunEnd, SiteObservation, Trace};
use stencilcheck::model::{
    Arch, DataComment, Effect, EmitOp, PatchFn, RelocKind, Relocation, Section, Stencil, StencilSet, Term,
};
use stencilcheck::patch::{self, Image, Ports};
use stencilcheck::place::{Layout, Placement, PAGE};
mod common;
use common::{hole, listing, reloc, slot};

// ---------------------------------------------------------------------------
// Building stencils
// ---------------------------------------------------------------------------

fn stencil(
    name: &str,
    code: Vec<u8>,
    data: Vec<u8>,
    relocations: Vec<Relocation>,
    data_comments: Vec<DataComment>,
    emit: Vec<EmitOp>,
) -> Stencil {
    Stencil {
        locals: Default::default(),
        ordinals: Default::default(),
        trampoline_mask: Vec::new(),
        got_mask: Vec::new(),
        name: name.into(),
        line: 1,
        instructions: listing(&code),
        code,
        data,
        relocations,
        data_comments,
        emit,
    }
}

/// `jmp *[rip]` → `_JIT_CONTINUE` through the data slot at data+0.
fn jmp_continue() -> Stencil {
    stencil(
        "_JMP",
        vec![0xff, 0x25, 0, 0, 0, 0],
        vec![0; 8],
        vec![reloc(2, RelocKind::X86_64_GOTPCRELX, "_JIT_CONTINUE", -4)],
        vec![slot(0, Term::Continue)],
        vec![
            EmitOp::CopyData { line: 0 },
            hole(PatchFn::P64, Section::Data, 0, Term::Continue, 0),
            EmitOp::CopyCode { line: 0 },
            hole(PatchFn::X86_64_32rx, Section::Code, 2, Term::Data, -4),
        ],
    )
}

/// `jmp *[rip]` → `_JIT_JUMP_TARGET` through data+0.
fn jmp_target() -> Stencil {
    let mut s = jmp_continue();
    s.name = "_JMP_TARGET".into();
    s.relocations = vec![reloc(2, RelocKind::X86_64_GOTPCRELX, "_JIT_JUMP_TARGET", -4)];
    s.data_comments = vec![slot(0, Term::JumpTarget)];
    s.emit[1] = hole(PatchFn::P64, Section::Data, 0, Term::JumpTarget, 0);
    s
}

/// ```text
///  0: 53                push rbx            (only with `push`)
///  1: ff 15 ..          call *[rip+slot]    @3  GOTPCRELX PyFunc-4 (slot data+0)
///  7: 5b                pop rbx             (only with `push`)
///  8: ff 25 ..          jmp *[rip+slot]     @10 GOTPCRELX _JIT_CONTINUE-4 (slot data+8)
/// ```
/// Without `push`, the push/pop are `nop`s.
fn call_extern(push: bool) -> Stencil {
    let (a, b) = if push { (0x53, 0x5b) } else { (0x90, 0x90) };
    stencil(
        if push { "_CALL" } else { "_CALL_UNALIGNED" },
        vec![a, 0xff, 0x15, 0, 0, 0, 0, b, 0xff, 0x25, 0, 0, 0, 0],
        vec![0; 16],
        vec![
            reloc(3, RelocKind::X86_64_GOTPCRELX, "PyFunc", -4),
            reloc(10, RelocKind::X86_64_GOTPCRELX, "_JIT_CONTINUE", -4),
        ],
        vec![slot(0, Term::Symbol("PyFunc".into())), slot(8, Term::Continue)],
        vec![
            EmitOp::CopyData { line: 0 },
            hole(PatchFn::P64, Section::Data, 0, Term::Symbol("PyFunc".into()), 0),
            hole(PatchFn::P64, Section::Data, 8, Term::Continue, 0),
            EmitOp::CopyCode { line: 0 },
            hole(PatchFn::X86_64_32rx, Section::Code, 3, Term::Data, -4),
            hole(PatchFn::X86_64_32rx, Section::Code, 10, Term::Data, 8 - 4),
        ],
    )
}

/// `movzwl (%rip), %eax` of `_JIT_OPARG` (3.13's `_LOAD_FAST` way), then
/// `add rbp, 8`, no final jump (CPython strips it): falls through.
fn load_oparg() -> Stencil {
    stencil(
        "_OPARG",
        vec![0x0f, 0xb7, 0x05, 0, 0, 0, 0, 0x48, 0x83, 0xc5, 0x08],
        vec![0; 8],
        vec![reloc(3, RelocKind::X86_64_GOTPCREL, "_JIT_OPARG", -4)],
        vec![slot(0, Term::Oparg)],
        vec![
            EmitOp::CopyData { line: 0 },
            hole(PatchFn::P64, Section::Data, 0, Term::Oparg, 0),
            EmitOp::CopyCode { line: 0 },
            hole(PatchFn::P32r, Section::Code, 3, Term::Data, -4),
        ],
    )
}

/// Raw code, no holes.
fn raw(name: &str, code: Vec<u8>) -> Stencil {
    stencil(name, code, vec![0; 8], vec![], vec![], vec![EmitOp::CopyData { line: 0 }, EmitOp::CopyCode { line: 0 }])
}

fn engine(limit: u64) -> UnicornX86 {
    let set = StencilSet {
        path: PathBuf::from("test.h"),
        target: stencilcheck::target::Target::elf(Arch::X86_64),
        stencils: vec![],
        symbols_map: Vec::new(),
    };
    UnicornX86::new(convention(&set, stencilcheck::execute::SYSV_X86_64), limit).unwrap()
}

fn run(s: &Stencil, p: &Placement) -> (Image, Trace) {
    let image = patch::emit(s, p, &Ports).unwrap();
    let trace = engine(100_000).run(s, p, &image);
    (image, trace)
}

fn exit(trace: &Trace) -> (ExitKind, u64, u64, bool) {
    match trace.end {
        Some(RunEnd::Exit { kind, target, sp, computed, .. }) => (kind, target, sp, computed),
        ref other => panic!("run did not exit: {other:?}"),
    }
}

fn placement_of(s: &Stencil, seed: u64, layout: Layout) -> Placement {
    (0..8).map(|i| place(s, seed, i).unwrap()).find(|p| p.layout == layout).unwrap()
}

/// Re-place the code at `code` (data `data_delta` bytes after it) and keep the rest.
fn moved(mut p: Placement, code: u64, data_delta: i64) -> Placement {
    p.code = code;
    p.data = code.wrapping_add(data_delta as u64);
    p
}

fn sites_of(trace_or_static: &[SiteObservation], relocation: usize) -> Vec<Effect> {
    trace_or_static.iter().filter(|o| o.relocation == relocation).map(|o| o.effect.expect("an effect")).collect()
}

// ---------------------------------------------------------------------------
// Exits
// ---------------------------------------------------------------------------

#[test]
fn got_jump_to_continue_exits_there_with_the_entry_stack() {
    let s = jmp_continue();
    for seed in 0..4 {
        for index in 0..8 {
            let p = place(&s, seed, index).unwrap();
            let (image, trace) = run(&s, &p);
            let cont = p.continuation(&s);
            assert_eq!(exit(&trace), (ExitKind::Jump, cont, trace.entry_sp, false), "{:?}", p.layout);
            assert_eq!(trace.entry, p.code);
            assert_eq!(trace.entry_sp, p.machine_sp - 8);
            assert!(!trace.entered_by_call);
            let dynamic = sites_of(&trace.sites, 0);
            assert_eq!(dynamic.len(), 1, "{:?}", trace.sites);
            match dynamic[0] {
                Effect::Transfer { target, slot: None } => {
                    assert_eq!(target, cont);
                    assert_eq!(image.code[..2], [0x90, 0xe9], "relaxed");
                }
                Effect::Transfer { target, slot: Some(slot) } => {
                    assert_eq!((target, slot), (cont, p.data));
                    assert_eq!(image.code[..2], [0xff, 0x25], "not relaxed");
                }
                other => panic!("{other:?}"),
            }
            // The static decoder sees the same.
            assert_eq!(sites_of(&static_sites(&s, &image), 0), dynamic);
        }
    }
}

#[test]
fn unrelaxed_got_jump_records_its_slot() {
    let s = jmp_target();
    let mut p = place(&s, 5, 0).unwrap();
    p.jump_target = p.code + (16 << 30); // far: patch_x86_64_32rx keeps the indirect jump
    let (image, trace) = run(&s, &p);
    assert_eq!(image.code[..2], [0xff, 0x25]);
    assert_eq!(exit(&trace), (ExitKind::Jump, p.jump_target, trace.entry_sp, false));
    let want = Effect::Transfer { target: p.jump_target, slot: Some(p.data) };
    assert_eq!(sites_of(&trace.sites, 0), [want]);
    assert_eq!(sites_of(&static_sites(&s, &image), 0), [want]);
    // Near: relaxed to a direct jump.
    p.jump_target = p.code + 0x5000;
    let (image, trace) = run(&s, &p);
    assert_eq!(image.code[..2], [0x90, 0xe9]);
    assert_eq!(exit(&trace), (ExitKind::Jump, p.jump_target, trace.entry_sp, false));
    assert_eq!(sites_of(&trace.sites, 0), [Effect::Transfer { target: p.jump_target, slot: None }]);
}

#[test]
fn a_jump_through_a_register_is_a_computed_exit() {
    // lea rax, [rip+0x10000]; jmp rax: leaves the code for an address no relocation names.
    let s = raw("_COMPUTED", vec![0x48, 0x8d, 0x05, 0x00, 0x00, 0x01, 0x00, 0xff, 0xe0]);
    let p = place(&s, 1, 0).unwrap();
    let (_, trace) = run(&s, &p);
    match trace.end {
        Some(RunEnd::Exit { kind, from, target, sp, computed }) => {
            assert_eq!((kind, from, target, sp), (ExitKind::Jump, p.code + 7, p.code + 7 + 0x10000, trace.entry_sp));
            assert!(computed, "jmp rax is no relocation's exit");
        }
        ref other => panic!("{other:?}"),
    }
    // The same jump through a relocated GOT slot is not computed (see
    // `unrelaxed_got_jump_records_its_slot`); a direct jmp rel32 with no
    // relocation is not computed either: its target is in the bytes.
    let s = raw("_DIRECT_JMP", vec![0xe9, 0x00, 0x00, 0x01, 0x00]);
    let p = place(&s, 1, 0).unwrap();
    let (_, trace) = run(&s, &p);
    assert_eq!(exit(&trace), (ExitKind::Jump, p.code + 5 + 0x10000, trace.entry_sp, false));
}

#[test]
fn falling_off_the_end_exits_to_the_continuation() {
    let s = load_oparg();
    let base = place(&s, 3, 0).unwrap();
    let end_page = 0x5555_0000_0000u64;
    let code_len = s.code_size() as i64;
    // Code ending exactly at a page boundary: data far away, right after
    // (its page follows the code's), or before the code.
    let cases = [
        ("page end, data far", moved(base.clone(), end_page - s.code_size(), 0x10_0000)),
        ("page end, data next", moved(base.clone(), end_page - s.code_size(), code_len)),
        ("page end, data before", moved(base.clone(), end_page - s.code_size(), -0x2000)),
        ("mid-page", moved(base.clone(), end_page + 0x123, 0x4000)),
        ("as placed", base.clone()),
    ];
    for (what, p) in cases {
        let (image, trace) = run(&s, &p);
        let cont = p.continuation(&s);
        if what.starts_with("page end") {
            assert_eq!(cont % PAGE, 0);
        }
        assert_eq!(exit(&trace), (ExitKind::FallThrough, cont, trace.entry_sp, false), "{what}");
        if let Some(RunEnd::Exit { from, .. }) = trace.end {
            assert_eq!(from, p.code + 7, "{what}: last instruction is the add");
        }
        assert_eq!(trace.instructions, 2, "{what}");
        let want = Effect::Load { address: p.data, value: p.oparg as u64, bits: 16 };
        assert_eq!(sites_of(&trace.sites, 0), [want], "{what}");
        assert_eq!(sites_of(&static_sites(&s, &image), 0), [want], "{what}");
    }
}

#[test]
fn ret_goes_to_the_sentinel_and_is_a_return_exit() {
    let s = raw("_RET", vec![0xc3]);
    let p = place(&s, 1, 0).unwrap();
    let (_, trace) = run(&s, &p);
    match trace.end {
        Some(RunEnd::Exit { kind, target, sp, from, computed }) => {
            assert_eq!(kind, ExitKind::Return);
            assert_eq!(target, RETURN_SENTINEL);
            assert_eq!(sp, trace.entry_sp, "sp is reported before the pop");
            assert_eq!(from, p.code);
            assert!(!computed);
        }
        ref other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Calls
// ---------------------------------------------------------------------------

#[test]
fn a_call_through_the_got_is_stubbed_and_the_run_continues() {
    let s = call_extern(true);
    for (layout, relaxed) in [(Layout::Compact, true), (Layout::FarExterns, false)] {
        for seed in 0..4 {
            let p = placement_of(&s, seed, layout);
            let (image, trace) = run(&s, &p);
            let ext = p.externs["PyFunc"];
            assert_eq!(image.code[1..3], if relaxed { [0x90, 0xe8] } else { [0xff, 0x15] }, "{layout:?}");
            assert_eq!(trace.calls.len(), 1, "{layout:?}: {:?}", trace.calls);
            let call = &trace.calls[0];
            assert_eq!(call.target, ext);
            assert_eq!(call.from, p.code + if relaxed { 2 } else { 1 });
            assert_eq!(call.sp, trace.entry_sp - 16, "one push, one return address");
            assert_eq!(call.sp % 16, 8, "C ABI: sp ≡ 8 mod 16 at the callee");
            // The stub returned: the jmp after the call ran.
            assert_eq!(exit(&trace), (ExitKind::Jump, p.continuation(&s), trace.entry_sp, false));
            let want = if relaxed {
                Effect::Transfer { target: ext, slot: None }
            } else {
                Effect::Transfer { target: ext, slot: Some(p.data) }
            };
            assert_eq!(sites_of(&trace.sites, 0), [want]);
            assert_eq!(sites_of(&static_sites(&s, &image), 0), [want]);
        }
    }
}

#[test]
fn a_call_without_the_push_reaches_the_callee_misaligned() {
    let s = call_extern(false);
    let p = place(&s, 2, 0).unwrap();
    let (_, trace) = run(&s, &p);
    assert_eq!(trace.calls.len(), 1);
    assert_eq!(trace.calls[0].sp % 16, 0);
    assert_eq!(exit(&trace).0, ExitKind::Jump);
}

#[test]
fn a_call_as_the_last_instruction_is_an_after_noreturn_exit() {
    // call PyAbort (rel32) and nothing after it.
    let s = stencil(
        "_NORETURN",
        vec![0xe8, 0, 0, 0, 0],
        vec![],
        vec![reloc(1, RelocKind::X86_64_PLT32, "PyAbort", -4)],
        vec![],
        vec![EmitOp::CopyCode { line: 0 }, hole(PatchFn::P32r, Section::Code, 1, Term::Symbol("PyAbort".into()), -4)],
    );
    let p = place(&s, 2, 0).unwrap();
    let (_, trace) = run(&s, &p);
    assert_eq!(trace.calls.len(), 1);
    assert_eq!(trace.calls[0].target, p.externs["PyAbort"]);
    assert_eq!(exit(&trace).0, ExitKind::AfterNoReturnCall);
    assert_eq!(exit(&trace).1, p.continuation(&s));
}

// ---------------------------------------------------------------------------
// Faults and limits
// ---------------------------------------------------------------------------

fn fault(trace: &Trace) -> (Fault, u64, u64) {
    match trace.end {
        Some(RunEnd::Fault { fault, pc, address }) => (fault, pc, address),
        ref other => panic!("no fault: {other:?}"),
    }
}

#[test]
fn a_write_into_its_own_code_faults() {
    // mov [rip-6], eax: writes over its own first byte.
    let s = raw("_SELF_WRITE", vec![0x89, 0x05, 0xfa, 0xff, 0xff, 0xff]);
    let p = place(&s, 1, 0).unwrap();
    let (_, trace) = run(&s, &p);
    assert_eq!(fault(&trace), (Fault::WriteIntoCode, p.code, p.code));
}

#[test]
fn a_write_into_its_data_faults() {
    // mov [rip + data+4], eax
    let s = stencil(
        "_DATA_WRITE",
        vec![0x89, 0x05, 0, 0, 0, 0],
        vec![0; 16],
        vec![reloc(2, RelocKind::X86_64_PC32, ".L.buf", 0)],
        vec![],
        vec![
            EmitOp::CopyData { line: 0 },
            EmitOp::CopyCode { line: 0 },
            hole(PatchFn::P32r, Section::Code, 2, Term::Data, 4 - 4),
        ],
    );
    for index in 0..8 {
        let p = place(&s, 1, index).unwrap();
        let (_, trace) = run(&s, &p);
        assert_eq!(fault(&trace), (Fault::WriteIntoData, p.code, p.data + 4), "{:?}", p.layout);
    }
}

#[test]
fn an_infinite_loop_hits_the_instruction_limit_quickly() {
    let s = raw("_HANG", vec![0xeb, 0xfe]);
    let p = place(&s, 1, 0).unwrap();
    let image = patch::emit(&s, &p, &Ports).unwrap();
    let mut e = engine(1000);
    let t0 = Instant::now();
    let trace = e.run(&s, &p, &image);
    assert!(t0.elapsed() < Duration::from_secs(2), "took {:?}", t0.elapsed());
    assert_eq!(trace.end, Some(RunEnd::InstructionLimit { limit: 1000, pc: p.code }));
    assert_eq!(trace.instructions, 1001, "counted up to the one over the limit");
    // The engine is reusable after a limit.
    let j = jmp_continue();
    let pj = place(&j, 1, 0).unwrap();
    let trace = e.run(&j, &pj, &patch::emit(&j, &pj, &Ports).unwrap());
    assert_eq!(exit(&trace).0, ExitKind::Jump);
}

#[test]
fn ud2_is_an_invalid_instruction() {
    let s = raw("_UD2", vec![0x90, 0x0f, 0x0b]);
    let p = place(&s, 1, 0).unwrap();
    let (_, trace) = run(&s, &p);
    assert_eq!(fault(&trace).0, Fault::InvalidInstruction);
    assert_eq!(fault(&trace).1, p.code + 1);
}

// ---------------------------------------------------------------------------
// Static decoding
// ---------------------------------------------------------------------------

/// `mov rax, [rip+slot PyData]` (REX_GOTPCRELX @3, slot data+0), then `movzwl` of OPARG (@10, slot data+8).
fn loads() -> Stencil {
    stencil(
        "_LOADS",
        vec![0x48, 0x8b, 0x05, 0, 0, 0, 0, 0x0f, 0xb7, 0x0d, 0, 0, 0, 0],
        vec![0; 16],
        vec![
            reloc(3, RelocKind::X86_64_REX_GOTPCRELX, "PyData", -4),
            reloc(10, RelocKind::X86_64_GOTPCREL, "_JIT_OPARG", -4),
        ],
        vec![slot(0, Term::Symbol("PyData".into())), slot(8, Term::Oparg)],
        vec![
            EmitOp::CopyData { line: 0 },
            hole(PatchFn::P64, Section::Data, 0, Term::Symbol("PyData".into()), 0),
            hole(PatchFn::P64, Section::Data, 8, Term::Oparg, 0),
            EmitOp::CopyCode { line: 0 },
            hole(PatchFn::X86_64_32rx, Section::Code, 3, Term::Data, -4),
            // 3.13 writes GOTPCREL with patch_x86_64_32rx too; movzwl is never relaxed.
            hole(PatchFn::X86_64_32rx, Section::Code, 10, Term::Data, 8 - 4),
        ],
    )
}

#[test]
fn static_sites_see_lea_load_and_movzwl() {
    let s = loads();
    // Relaxed: mov → lea forms S.
    let p = placement_of(&s, 1, Layout::Compact);
    let image = patch::emit(&s, &p, &Ports).unwrap();
    assert_eq!(image.code[1], 0x8d);
    let st = static_sites(&s, &image);
    let s_data = p.externs["PyData"];
    assert_eq!(
        st,
        [
            SiteObservation {
                relocation: 0,
                pc: p.code,
                len: 7,
                effect: Some(Effect::Address { value: s_data, bits: 64 })
            },
            SiteObservation {
                relocation: 1,
                pc: p.code + 7,
                len: 7,
                effect: Some(Effect::Load { address: p.data + 8, value: p.oparg as u64, bits: 16 })
            },
        ]
    );
    // Unrelaxed: the GOT load reads S from the slot.
    let p = placement_of(&s, 1, Layout::FarExterns);
    let image = patch::emit(&s, &p, &Ports).unwrap();
    assert_eq!(image.code[1], 0x8b);
    let st = static_sites(&s, &image);
    assert_eq!(sites_of(&st, 0), [Effect::Load { address: p.data, value: p.externs["PyData"], bits: 64 }]);
    assert_eq!(sites_of(&st, 1), [Effect::Load { address: p.data + 8, value: p.oparg as u64, bits: 16 }]);
    // The run agrees with the static view.
    let trace = engine(1000).run(&s, &p, &image);
    assert_eq!(sites_of(&trace.sites, 0), sites_of(&st, 0));
    assert_eq!(sites_of(&trace.sites, 1), sites_of(&st, 1));
}

#[test]
fn static_sites_see_a_direct_call_and_an_immediate() {
    // call PyFunc (PLT32 @1); movabs rax, PyData+0x10 (R_X86_64_64 @7)
    let s = stencil(
        "_DIRECT",
        vec![0xe8, 0, 0, 0, 0, 0x48, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0],
        vec![],
        vec![reloc(1, RelocKind::X86_64_PLT32, "PyFunc", -4), reloc(7, RelocKind::X86_64_64, "PyData", 0x10)],
        vec![],
        vec![
            EmitOp::CopyCode { line: 0 },
            hole(PatchFn::P32r, Section::Code, 1, Term::Symbol("PyFunc".into()), -4),
            hole(PatchFn::P64, Section::Code, 7, Term::Symbol("PyData".into()), 0x10),
        ],
    );
    for index in 0..8 {
        let p = place(&s, 4, index).unwrap();
        let image = patch::emit(&s, &p, &Ports).unwrap();
        let st = static_sites(&s, &image);
        assert_eq!(sites_of(&st, 0), [Effect::Transfer { target: p.externs["PyFunc"], slot: None }]);
        assert_eq!(sites_of(&st, 1), [Effect::Immediate { value: p.externs["PyData"] + 0x10, bits: 64 }]);
    }
}

#[test]
fn static_sites_report_a_field_that_is_no_operand_as_mangled() {
    // The relocation claims code+0 (the opcode of a nop; ret follows): no operand there.
    let mut s = raw("_MANGLED", vec![0x90, 0xc3]);
    s.relocations = vec![reloc(0, RelocKind::X86_64_PC32, "PyData", -4)];
    let p = place(&s, 1, 0).unwrap();
    let image = patch::emit(&s, &p, &Ports).unwrap();
    let st = static_sites(&s, &image);
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].effect, None);
}

#[test]
fn static_sites_skip_register_dependent_operands() {
    // mov rax, [r13 + disp32] with a relocation on the displacement: needs r13.
    let mut s = raw("_REG", vec![0x49, 0x8b, 0x85, 0, 0, 0, 0]);
    s.relocations = vec![reloc(3, RelocKind::X86_64_32S, "_JIT_OPARG", 0)];
    let p = place(&s, 1, 0).unwrap();
    let image = patch::emit(&s, &p, &Ports).unwrap();
    assert!(static_sites(&s, &image).is_empty());
    // A run evaluates it: r13 is the frame.
    let trace = engine(1000).run(&s, &p, &image);
    match sites_of(&trace.sites, 0)[..] {
        [Effect::Load { address, bits: 64, .. }] => assert_eq!(address, p.frame),
        ref other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Determinism
// ---------------------------------------------------------------------------

/// A uop that reads made-up memory (the frame's locals), calls out and
/// loads through what the call returned, so the contents seed matters.
fn busy() -> Stencil {
    // 0: 53                push rbx
    // 1: 49 8b 45 48       mov rax, [r13+0x48]
    // 5: 48 8b 18          mov rbx, [rax]
    // 8: ff 15 ..          call *[rip+slot PyFunc]    @10 (slot data+0)
    // e: 48 85 c0          test rax, rax
    // 11: 74 03            je +3 → 0x16
    // 13: 48 8b 00         mov rax, [rax]
    // 16: 5b               pop rbx
    // 17: ff 25 ..         jmp *[rip+slot CONTINUE]  @0x19 (slot data+8)
    let code = vec![
        0x53, 0x49, 0x8b, 0x45, 0x48, 0x48, 0x8b, 0x18, 0xff, 0x15, 0, 0, 0, 0, 0x48, 0x85, 0xc0, 0x74, 0x03, 0x48,
        0x8b, 0x00, 0x5b, 0xff, 0x25, 0, 0, 0, 0,
    ];
    stencil(
        "_BUSY",
        code,
        vec![0; 16],
        vec![
            reloc(10, RelocKind::X86_64_GOTPCRELX, "PyFunc", -4),
            reloc(0x19, RelocKind::X86_64_GOTPCRELX, "_JIT_CONTINUE", -4),
        ],
        vec![slot(0, Term::Symbol("PyFunc".into())), slot(8, Term::Continue)],
        vec![
            EmitOp::CopyData { line: 0 },
            hole(PatchFn::P64, Section::Data, 0, Term::Symbol("PyFunc".into()), 0),
            hole(PatchFn::P64, Section::Data, 8, Term::Continue, 0),
            EmitOp::CopyCode { line: 0 },
            hole(PatchFn::X86_64_32rx, Section::Code, 10, Term::Data, -4),
            hole(PatchFn::X86_64_32rx, Section::Code, 0x19, Term::Data, 8 - 4),
        ],
    )
}

fn json(t: &Trace) -> String {
    serde_json::to_string(t).unwrap()
}

#[test]
fn runs_are_deterministic_on_one_engine_and_on_fresh_ones() {
    let stencils = [busy(), call_extern(true), load_oparg(), jmp_continue()];
    let mut shared = engine(100_000);
    for s in &stencils {
        for index in 0..8 {
            let p = place(s, 11, index).unwrap();
            let image = patch::emit(s, &p, &Ports).unwrap();
            let first = shared.run(s, &p, &image);
            let again = shared.run(s, &p, &image);
            let fresh = engine(100_000).run(s, &p, &image);
            assert_eq!(json(&first), json(&again), "{} {:?}: same engine", s.name, p.layout);
            assert_eq!(json(&first), json(&fresh), "{} {:?}: fresh engine", s.name, p.layout);
            assert_eq!(format!("{first:?}"), format!("{fresh:?}"));
        }
    }
}

#[test]
fn earlier_runs_of_other_stencils_leave_no_trace() {
    let a = busy();
    let pa = place(&a, 12, 1).unwrap();
    let ia = patch::emit(&a, &pa, &Ports).unwrap();
    let alone = engine(100_000).run(&a, &pa, &ia);
    let mut e = engine(100_000);
    // Other stencils at other places (some sharing pages with A's), in between.
    for (s, index) in [(call_extern(true), 0), (load_oparg(), 3), (busy(), 5), (jmp_continue(), 6)] {
        let p = place(&s, 12, index).unwrap();
        let _ = e.run(&s, &p, &patch::emit(&s, &p, &Ports).unwrap());
        // The same stencil moved onto A's code pages, with different bytes.
        let p2 = moved(p.clone(), pa.code, pa.data as i64 - pa.code as i64);
        if let Ok(im) = patch::emit(&s, &p2, &Ports) {
            let _ = e.run(&s, &p2, &im);
        }
        assert_eq!(json(&e.run(&a, &pa, &ia)), json(&alone), "after {}", s.name);
    }
}

#[test]
fn made_up_memory_depends_on_the_contents_seed() {
    let s = busy();
    let p = place(&s, 13, 0).unwrap();
    let image = patch::emit(&s, &p, &Ports).unwrap();
    let mut e = engine(100_000);
    let mut distinct = std::collections::BTreeSet::new();
    for k in 0..16u64 {
        let mut q = p.clone();
        q.contents_seed = p.contents_seed ^ (k << 17);
        distinct.insert(json(&e.run(&s, &q, &image)));
    }
    assert!(distinct.len() > 4, "only {} distinct traces over 16 contents seeds", distinct.len());
}

// ---------------------------------------------------------------------------
// More exits, conventions and budgets
// ---------------------------------------------------------------------------

#[test]
fn exits_to_targets_beside_the_code_and_on_other_pages() {
    let s = jmp_target();
    let base = place(&s, 21, 0).unwrap();
    for code in [0x5555_0000_0000u64, 0x5555_0000_0ffa, 0x5555_0000_0800] {
        let mut p = moved(base.clone(), code, 0x2000);
        // Just before the code (maybe on the previous, unmapped page), just
        // after it (maybe on the guard page), and on the code's own page.
        for target in [code - 5, code - 1, code + 6, code + 7, (code & !(PAGE - 1)) + 0xf00, code + 0x3000] {
            if (code..code + 6).contains(&target) {
                continue;
            }
            p.jump_target = target;
            let (image, trace) = run(&s, &p);
            assert_eq!(image.code[..2], [0x90, 0xe9]);
            assert_eq!(
                exit(&trace),
                (ExitKind::Jump, target, trace.entry_sp, false),
                "code {code:#x} target {target:#x}"
            );
        }
    }
}

#[test]
fn a_conditional_jump_out_of_the_code_is_a_jump_exit() {
    // jne _JIT_JUMP_TARGET (rel32, PLT32 @2); falls through when not taken.
    // test rax, rax first: rax made up, so both ways show over seeds.
    let s = stencil(
        "_JNE",
        vec![0x48, 0x85, 0xc0, 0x0f, 0x85, 0, 0, 0, 0],
        vec![],
        vec![reloc(5, RelocKind::X86_64_PLT32, "_JIT_JUMP_TARGET", -4)],
        vec![],
        vec![EmitOp::CopyCode { line: 0 }, hole(PatchFn::P32r, Section::Code, 5, Term::JumpTarget, -4)],
    );
    let (mut taken, mut not) = (0, 0);
    for seed in 0..24 {
        let p = place(&s, seed, 0).unwrap();
        let (image, trace) = run(&s, &p);
        let want = Effect::Transfer { target: p.jump_target, slot: None };
        assert_eq!(sites_of(&trace.sites, 0), [want]);
        assert_eq!(sites_of(&static_sites(&s, &image), 0), [want]);
        match exit(&trace) {
            (ExitKind::Jump, t, sp, false) if t == p.jump_target && sp == trace.entry_sp => taken += 1,
            // Not taken: off the end to the continuation. src reports that as a
            // `Jump` (see `a_not_taken_conditional_jump_at_the_end_falls_through`).
            (ExitKind::FallThrough | ExitKind::Jump, t, sp, false)
                if t == p.continuation(&s) && sp == trace.entry_sp =>
            {
                not += 1
            }
            other => panic!("{other:?} (jump target {:#x}, continuation {:#x})", p.jump_target, p.continuation(&s)),
        }
    }
    assert!(taken > 0 && not > 0, "taken {taken}, not taken {not}");
}

#[test]
fn the_trampoline_is_entered_by_call_and_sets_the_convention() {
    // 3.14-style shim: rdi→r12, rsi→r13, rdx→r14, then `ret` (a stand-in for the call into the trace).
    let code = vec![0x49, 0x89, 0xfc, 0x49, 0x89, 0xf5, 0x49, 0x89, 0xd6, 0xc3];
    let mut tramp = raw("trampoline", code);
    for (insn, text) in
        tramp.instructions.iter_mut().zip(["movq    %rdi, %r12", "movq    %rsi, %r13", "movq    %rdx, %r14", "retq"])
    {
        insn.text = text.into();
    }
    let set = StencilSet {
        path: PathBuf::from("t.h"),
        target: stencilcheck::target::Target::elf(Arch::X86_64),
        stencils: vec![tramp.clone()],
        symbols_map: Vec::new(),
    };
    let conv = convention(&set, stencilcheck::execute::SYSV_X86_64);
    assert_eq!((conv.frame, conv.stack_pointer, conv.tstate, conv.source), ("r12", "r13", "r14", "trampoline"));
    let mut e = UnicornX86::new(conv, 1000).unwrap();
    let p = place(&tramp, 1, 0).unwrap();
    let trace = e.run(&tramp, &p, &patch::emit(&tramp, &p, &Ports).unwrap());
    assert!(trace.entered_by_call);
    assert_eq!(
        trace.end.as_ref().map(|_| exit(&trace)),
        Some((ExitKind::Return, RETURN_SENTINEL, trace.entry_sp, false))
    );
    // A uop under that convention finds the frame in r12: mov rax, [r12+disp32] (32S @4).
    let mut uop = raw("_FRAME", vec![0x49, 0x8b, 0x84, 0x24, 0, 0, 0, 0]);
    uop.relocations = vec![reloc(4, RelocKind::X86_64_32S, "_JIT_OPARG", 0)];
    let p = place(&uop, 1, 0).unwrap();
    let trace = e.run(&uop, &p, &patch::emit(&uop, &p, &Ports).unwrap());
    match sites_of(&trace.sites, 0)[..] {
        [Effect::Load { address, .. }] => assert_eq!(address, p.frame),
        ref other => panic!("{other:?}"),
    }
    // With no trampoline, 3.13's GHC default: frame in r13.
    let set = StencilSet {
        path: PathBuf::from("t.h"),
        target: stencilcheck::target::Target::elf(Arch::X86_64),
        stencils: vec![],
        symbols_map: Vec::new(),
    };
    assert_eq!(
        (
            convention(&set, stencilcheck::execute::SYSV_X86_64).frame,
            convention(&set, stencilcheck::execute::SYSV_X86_64).source
        ),
        ("r13", "default")
    );
}

#[test]
fn observations_of_a_site_in_a_loop_are_capped() {
    // mov ebx, 100; L: movzwl eax, [rip+slot OPARG] (@8); dec ebx; jnz L
    let s = stencil(
        "_LOOP",
        vec![0xbb, 100, 0, 0, 0, 0x0f, 0xb7, 0x05, 0, 0, 0, 0, 0xff, 0xcb, 0x75, 0xf5],
        vec![0; 8],
        vec![reloc(8, RelocKind::X86_64_GOTPCREL, "_JIT_OPARG", -4)],
        vec![slot(0, Term::Oparg)],
        vec![
            EmitOp::CopyData { line: 0 },
            hole(PatchFn::P64, Section::Data, 0, Term::Oparg, 0),
            EmitOp::CopyCode { line: 0 },
            hole(PatchFn::P32r, Section::Code, 8, Term::Data, -4),
        ],
    );
    let p = place(&s, 1, 0).unwrap();
    let (_, trace) = run(&s, &p);
    // Leaves by the final, not taken `jnz` (reported as a Jump, see below).
    assert_eq!(exit(&trace).1, p.continuation(&s));
    assert_eq!(trace.instructions, 1 + 300);
    assert_eq!(trace.sites.len(), 8, "observations per site are capped at 8");
}

#[test]
fn a_runaway_call_loop_hits_the_call_limit() {
    // mov ebx, 5000; L: call *[rip+slot PyFunc] (@7); dec ebx; jnz L
    let s = stencil(
        "_CALLS",
        vec![0xbb, 0x88, 0x13, 0, 0, 0xff, 0x15, 0, 0, 0, 0, 0xff, 0xcb, 0x75, 0xf6],
        vec![0; 8],
        vec![reloc(7, RelocKind::X86_64_GOTPCRELX, "PyFunc", -4)],
        vec![slot(0, Term::Symbol("PyFunc".into()))],
        vec![
            EmitOp::CopyData { line: 0 },
            hole(PatchFn::P64, Section::Data, 0, Term::Symbol("PyFunc".into()), 0),
            EmitOp::CopyCode { line: 0 },
            hole(PatchFn::X86_64_32rx, Section::Code, 7, Term::Data, -4),
        ],
    );
    let p = place(&s, 1, 2).unwrap(); // FarExterns: the call stays indirect
    let t0 = Instant::now();
    let (_, trace) = run(&s, &p);
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(matches!(trace.end, Some(RunEnd::CallLimit { .. })), "{:?}", trace.end);
    assert_eq!(trace.calls.len(), stencilcheck::execute::CALL_LIMIT);
    assert!(trace.calls.iter().all(|c| c.target == p.externs["PyFunc"]));
}

/// `transfer_kind` classifies by the last instruction's flow control: a
/// conditional branch is always a `Jump`, even when it was not taken and the
/// run simply ran off the end (the `FlowControl::Next` arm never sees it).
#[test]
fn a_not_taken_conditional_jump_at_the_end_falls_through() {
    // xor eax, eax (ZF=1); jne +0x100: never taken, runs off the end.
    let s = raw("_JNE_NOT_TAKEN", vec![0x31, 0xc0, 0x0f, 0x85, 0x00, 0x01, 0x00, 0x00]);
    let p = place(&s, 1, 0).unwrap();
    let (_, trace) = run(&s, &p);
    assert_eq!(exit(&trace), (ExitKind::FallThrough, p.continuation(&s), trace.entry_sp, false));
}

#[test]
fn a_windows_trampoline_is_read_with_the_windows_argument_registers() {
    let mut tramp = raw("trampoline", vec![0x49, 0x89, 0xcd, 0x48, 0x89, 0xd5, 0x4d, 0x89, 0xc4, 0xc3]);
    tramp.instructions = ["movq    %rcx, %r13", "movq    %rdx, %rbp", "movq    %r8, %r12", "retq"]
        .iter()
        .zip([0u64, 3, 6, 9])
        .map(|(text, offset)| stencilcheck::model::ObjdumpInstruction {
            offset,
            bytes: vec![],
            text: text.to_string(),
            line: 0,
        })
        .collect();
    let set = StencilSet {
        path: PathBuf::from("t.h"),
        target: stencilcheck::target::Target::elf(Arch::X86_64),
        stencils: vec![tramp],
        symbols_map: Vec::new(),
    };
    let win = convention(&set, stencilcheck::execute::WIN64);
    assert_eq!((win.frame, win.stack_pointer, win.tstate, win.source), ("r13", "rbp", "r12", "trampoline"));
    // Read with System V's registers, nothing matches: the default, not the trampoline.
    assert_eq!(convention(&set, stencilcheck::execute::SYSV_X86_64).source, "default");
    // Windows keeps rsi and rdi across calls; System V does not.
    assert!(!stencilcheck::execute::WIN64.caller_saved.contains(&"rsi"));
    assert!(stencilcheck::execute::SYSV_X86_64.caller_saved.contains(&"rsi"));
}
