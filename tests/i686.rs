//! The i686 (32-bit x86, Windows COFF) target end to end, on a small
//! hand-written header in CPython 3.13's layout (our own bytes): loading
//! (COFF's `_` prefix, addends kept in the field), the convention read off
//! the trampoline, placement below 4 GiB, patching, the 32-bit engine and
//! the judge. Every mutation is one a broken patcher or header really makes.

use stencilcheck::judge::FindingKind;
use stencilcheck::model::{PatchFn, RelocKind, StencilSet, Symbol, Term};
use stencilcheck::patch::{Image, PatchAssert, Patcher, Ports};
use stencilcheck::pipeline::{self, Options, Outcome};
use stencilcheck::target::{Arch, ObjectFormat};

const HEADER: &str = r#"// stencilcheck test fixture: hand-written i686 stencils in the CPython 3.13 layout.

void
emit_trampoline(
    unsigned char *code, unsigned char *data, _PyExecutorObject *executor,
    const _PyUOpInstruction *instruction, uintptr_t instruction_starts[])
{
    // 
    // trampoline.o:    file format coff-i386
    // 
    // Disassembly of section .text:
    // 
    // 00000000 <__ENTRY>:
    // 0: 55                            pushl   %ebp
    // 1: 53                            pushl   %ebx
    // 2: 57                            pushl   %edi
    // 3: 56                            pushl   %esi
    // 4: 8b 4c 24 1c                   movl    0x1c(%esp), %ecx
    // 8: 8b 6c 24 18                   movl    0x18(%esp), %ebp
    // c: 8b 5c 24 14                   movl    0x14(%esp), %ebx
    // 10: 89 cf                         movl    %ecx, %edi
    // 12: e8 00 00 00 00                calll   0x17 <__ENTRY+0x17>
    // 00000013:  IMAGE_REL_I386_REL32 __JIT_CONTINUE
    // 17: 5e                            popl    %esi
    // 18: 5f                            popl    %edi
    // 19: 5b                            popl    %ebx
    // 1a: 5d                            popl    %ebp
    // 1b: c3                            retl
    // 1c: 
    const unsigned char code_body[28] = {
        0x55, 0x53, 0x57, 0x56, 0x8b, 0x4c, 0x24, 0x1c,
        0x8b, 0x6c, 0x24, 0x18, 0x8b, 0x5c, 0x24, 0x14,
        0x89, 0xcf, 0xe8, 0x00, 0x00, 0x00, 0x00, 0x5e,
        0x5f, 0x5b, 0x5d, 0xc3,
    };
    // 0: 
    memcpy(code, code_body, sizeof(code_body));
    patch_x86_64_32rx(code + 0x13, (uintptr_t)code + sizeof(code_body) + -0x4);
}

void
emit__FX_TABLE_CALL(
    unsigned char *code, unsigned char *data, _PyExecutorObject *executor,
    const _PyUOpInstruction *instruction, uintptr_t instruction_starts[])
{
    // 
    // _FX_TABLE_CALL.o:    file format coff-i386
    // 
    // Disassembly of section .text:
    // 
    // 00000000 <__JIT_ENTRY>:
    // 0: 8b 45 fc                      movl    -0x4(%ebp), %eax
    // 3: 83 e0 03                      andl    $0x3, %eax
    // 6: 50                            pushl   %eax
    // 7: ff 14 85 10 00 00 00          calll   *0x10(,%eax,4)
    // 0000000a:  IMAGE_REL_I386_DIR32 __PyFx_Table
    // e: 83 c4 04                      addl    $0x4, %esp
    // 11: 68 00 00 00 00                pushl   $0x0
    // 00000012:  IMAGE_REL_I386_DIR32 ??_C@_05FXHELLO@hello?$AA@
    // 16: e8 00 00 00 00                calll   0x1b <__JIT_ENTRY+0x1b>
    // 00000017:  IMAGE_REL_I386_REL32 _PyFx_Helper
    // 1b: 83 c4 04                      addl    $0x4, %esp
    // 1e: 85 c0                         testl   %eax, %eax
    // 20: 74 05                         je      0x27 <__JIT_ENTRY+0x27>
    // 22: e9 00 00 00 00                jmp     0x27 <__JIT_ENTRY+0x27>
    // 00000023:  IMAGE_REL_I386_REL32 __JIT_CONTINUE
    // 27: e9 00 00 00 00                jmp     0x2c <__JIT_ENTRY+0x2c>
    // 00000028:  IMAGE_REL_I386_REL32 __JIT_ERROR_TARGET
    // 2c: 
    const unsigned char code_body[44] = {
        0x8b, 0x45, 0xfc, 0x83, 0xe0, 0x03, 0x50, 0xff,
        0x14, 0x85, 0x10, 0x00, 0x00, 0x00, 0x83, 0xc4,
        0x04, 0x68, 0x00, 0x00, 0x00, 0x00, 0xe8, 0x00,
        0x00, 0x00, 0x00, 0x83, 0xc4, 0x04, 0x85, 0xc0,
        0x74, 0x05, 0xe9, 0x00, 0x00, 0x00, 0x00, 0xe9,
        0x00, 0x00, 0x00, 0x00,
    };
    // 0: "hello\x00"
    // 6: 00 00
    const unsigned char data_body[8] = {
        0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x00, 0x00, 0x00,
    };
    memcpy(data, data_body, sizeof(data_body));
    memcpy(code, code_body, sizeof(code_body));
    patch_32(code + 0xa, (uintptr_t)&_PyFx_Table + 0x10);
    patch_32(code + 0x12, (uintptr_t)data);
    patch_x86_64_32rx(code + 0x17, (uintptr_t)&PyFx_Helper + -0x4);
    patch_x86_64_32rx(code + 0x23, (uintptr_t)code + sizeof(code_body) + -0x4);
    patch_x86_64_32rx(code + 0x28, instruction_starts[instruction->error_target] + -0x4);
}

void
emit__FX_OPERAND(
    unsigned char *code, unsigned char *data, _PyExecutorObject *executor,
    const _PyUOpInstruction *instruction, uintptr_t instruction_starts[])
{
    // 
    // _FX_OPERAND.o:    file format coff-i386
    // 
    // Disassembly of section .text:
    // 
    // 00000000 <__JIT_ENTRY>:
    // 0: b9 00 00 00 00                movl    $0x0, %ecx
    // 00000001:  IMAGE_REL_I386_DIR32 __JIT_OPARG
    // 5: 89 4d 00                      movl    %ecx, (%ebp)
    // 8: 83 c5 04                      addl    $0x4, %ebp
    // b: a1 08 00 00 00                movl    0x8, %eax
    // 0000000c:  IMAGE_REL_I386_DIR32 __JIT_OPERAND_LO
    // 10: 
    const unsigned char code_body[16] = {
        0xb9, 0x00, 0x00, 0x00, 0x00, 0x89, 0x4d, 0x00,
        0x83, 0xc5, 0x04, 0xa1, 0x08, 0x00, 0x00, 0x00,
    };
    // 0: 
    memcpy(code, code_body, sizeof(code_body));
    patch_32(code + 0x1, instruction->oparg);
    patch_32(code + 0xc, (instruction->operand & UINT32_MAX) + 0x8);
}

static const StencilGroup trampoline = {emit_trampoline, 28, 0};

static const StencilGroup stencil_groups[MAX_UOP_ID + 1] = {
    [_FX_TABLE_CALL] = {emit__FX_TABLE_CALL, 44, 8},
    [_FX_OPERAND] = {emit__FX_OPERAND, 16, 0},
};
"#;

const PLACEMENTS: u32 = 64;

fn parse(text: &str) -> StencilSet {
    stencilcheck::load::header::parse("i686.h", text).unwrap_or_else(|e| panic!("does not load: {e}"))
}

fn verify_with(set: &StencilSet, patcher: &(dyn Patcher + Sync)) -> Outcome {
    let options = Options {
        seed: 1,
        placements: PLACEMENTS,
        stencils: vec![],
        placement: None,
        instruction_limit: stencilcheck::execute::DEFAULT_INSTRUCTION_LIMIT,
        threads: 2,
        strict: false,
        explore: 0,
        patcher,
        engine: stencilcheck::execute::EngineKind::Unicorn,
    };
    pipeline::verify(set, &options).unwrap_or_else(|e| panic!("verify failed: {e}"))
}

/// (stencil, kind, code offset of the site) of every finding.
fn findings(outcome: &Outcome) -> Vec<(String, FindingKind, Option<u64>)> {
    let mut out: Vec<_> = outcome
        .results
        .iter()
        .flat_map(|r| {
            r.findings.iter().map(move |s| (r.name.clone(), s.finding.kind, s.finding.site.as_ref().map(|x| x.offset)))
        })
        .collect();
    out.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    out
}

fn with(from: &str, to: &str) -> String {
    assert!(HEADER.contains(from), "header lacks `{from}`");
    HEADER.replacen(from, to, 1)
}

#[test]
fn the_header_loads_as_i686_coff_with_names_undecorated_and_addends_from_the_fields() {
    let set = parse(HEADER);
    assert_eq!((set.target.arch, set.target.format), (Arch::I686, ObjectFormat::Coff));
    let call = set.stencils.iter().find(|s| s.name == "_FX_TABLE_CALL").unwrap();
    let relocs: Vec<_> = call.relocations.iter().map(|r| (r.offset, r.kind, r.symbol.clone(), r.addend)).collect();
    assert_eq!(
        relocs,
        [
            (0xa, RelocKind::I386_DIR32, Symbol::External("_PyFx_Table".into()), 0x10),
            (0x12, RelocKind::I386_DIR32, Symbol::Local("??_C@_05FXHELLO@hello?$AA@".into()), 0),
            (0x17, RelocKind::I386_REL32, Symbol::External("PyFx_Helper".into()), -4),
            (0x23, RelocKind::I386_REL32, Symbol::Continue, -4),
            (0x28, RelocKind::I386_REL32, Symbol::ErrorTarget, -4),
        ]
    );
    let op = set.stencils.iter().find(|s| s.name == "_FX_OPERAND").unwrap();
    assert_eq!(op.relocations[0].symbol, Symbol::Oparg);
    assert_eq!((op.relocations[1].symbol.clone(), op.relocations[1].addend), (Symbol::OperandLo(0), 8));
    assert_eq!(op.holes().nth(1).unwrap().value.term, Term::OperandLo(0));
}

#[test]
fn the_convention_is_read_off_the_trampoline() {
    let set = parse(HEADER);
    let c = set.target.convention(&set);
    assert_eq!((c.frame, c.stack_pointer, c.tstate, c.source), ("ebx", "ebp", "edi", "trampoline"));
    // Arguments loaded into other registers: the convention follows them
    // (tstate moves on from ecx to esi; frame is the first argument whatever
    // the pushes before it).
    let moved =
        with("89 cf                         movl    %ecx, %edi", "89 ce                         movl    %ecx, %esi")
            .replacen("0x89, 0xcf", "0x89, 0xce", 1);
    let set = parse(&moved);
    let c = set.target.convention(&set);
    assert_eq!((c.frame, c.stack_pointer, c.tstate), ("ebx", "ebp", "esi"));
}

#[test]
fn correct_stencils_have_no_findings_and_stay_below_4_gib() {
    let set = parse(HEADER);
    let outcome = verify_with(&set, &Ports);
    assert_eq!(findings(&outcome), [], "{:#?}", outcome.results);
    for r in &outcome.results {
        assert_eq!(r.runs, PLACEMENTS);
        assert!(
            r.inconclusive < PLACEMENTS / 4,
            "{}: {} inconclusive {:?}",
            r.name,
            r.inconclusive,
            r.first_inconclusive
        );
    }
    let call = outcome.results.iter().find(|r| r.name == "_FX_TABLE_CALL").unwrap();
    assert_eq!((call.holes_covered, call.holes), (5, 5), "every hole runs in some placement");
    for s in &set.stencils {
        for p in stencilcheck::place::placements(set.target, s, 1, PLACEMENTS).unwrap() {
            let mut addresses = vec![p.code, p.data, p.executor, p.frame, p.stack_pointer, p.tstate, p.machine_sp];
            addresses.extend([p.jump_target, p.error_target, p.top, p.heap + p.heap_size]);
            addresses.extend(p.externs.values());
            assert!(addresses.iter().all(|a| *a < 0xffff_0000 && *a >= 0x1_0000), "{p:?}");
        }
    }
}

#[test]
fn a_rel32_off_by_one_is_a_wrong_call_target() {
    let set = parse(&with("(uintptr_t)&PyFx_Helper + -0x4", "(uintptr_t)&PyFx_Helper + -0x3"));
    let got = findings(&verify_with(&set, &Ports));
    assert_eq!(got, [("_FX_TABLE_CALL".to_string(), FindingKind::WrongValue, Some(0x17))]);
}

/// LLVM JITLink's i686 bug (PR #111091): `R_386_32` lost the addend kept
/// in the field. Here the header drops it; the oracle still has it.
#[test]
fn a_dir32_losing_its_implicit_addend_is_flagged() {
    let set = parse(&with("(uintptr_t)&_PyFx_Table + 0x10", "(uintptr_t)&_PyFx_Table"));
    let got = findings(&verify_with(&set, &Ports));
    assert_eq!(got, [("_FX_TABLE_CALL".to_string(), FindingKind::WrongValue, Some(0xa))]);
    let set = parse(&with("(instruction->operand & UINT32_MAX) + 0x8", "(instruction->operand & UINT32_MAX)"));
    let got = findings(&verify_with(&set, &Ports));
    assert_eq!(got, [("_FX_OPERAND".to_string(), FindingKind::WrongValue, Some(0xc))]);
}

/// A patcher that writes REL32 fields as absolute addresses (JITLink's
/// x86-64 relaxation bug, in 32-bit form) and sign-extends nothing else.
struct AbsoluteRel32;

impl Patcher for AbsoluteRel32 {
    fn patch(&self, func: PatchFn, image: &mut Image, location: u64, value: u64) -> Result<(), PatchAssert> {
        match func {
            PatchFn::X86_64_32rx => Ports.patch(PatchFn::P32, image, location, value.wrapping_add(4) & 0xffff_ffff),
            _ => Ports.patch(func, image, location, value),
        }
    }
    fn name(&self) -> &str {
        "absolute-rel32"
    }
}

#[test]
fn a_patcher_writing_rel32_as_absolute_is_flagged_at_every_rel32_site() {
    let set = parse(HEADER);
    let got = findings(&verify_with(&set, &AbsoluteRel32));
    let sites: Vec<_> = got.iter().filter(|f| f.1 == FindingKind::WrongValue).map(|f| (f.0.as_str(), f.2)).collect();
    assert_eq!(
        sites,
        [
            ("_FX_TABLE_CALL", Some(0x17)),
            ("_FX_TABLE_CALL", Some(0x23)),
            ("_FX_TABLE_CALL", Some(0x28)),
            ("trampoline", Some(0x13))
        ]
    );
}

/// `patch_x86_64_32rx` on a REL32 reads 8 bytes at the symbol: memory the
/// process has and we do not. With no relaxable opcode before the field
/// that read cannot matter; with one (a preceding immediate ending in 0x8b)
/// what CPython writes depends on it, and the port says so instead of
/// guessing.
#[test]
fn the_relaxation_read_at_the_symbol_is_harmless_unless_a_relaxable_opcode_precedes() {
    let set = parse(HEADER);
    let call = set.stencils.iter().find(|s| s.name == "_FX_TABLE_CALL").unwrap();
    let p = stencilcheck::place::place(set.target, call, 1, 0).unwrap();
    assert!(p.symbols_readable);
    let image = stencilcheck::patch::emit(call, &p, &Ports).unwrap();
    let field = image.read_u32(p.code + 0x17).unwrap();
    assert_eq!(((p.code + 0x1b) as u32).wrapping_add(field) as u64, p.externs["PyFx_Helper"]);
    // The string's address ends in 0x8b: `e8` is now preceded by 0x8b.
    let mut q = p.clone();
    q.data = (q.data & !0xff00_0000) | 0x8b00_0000;
    let e = stencilcheck::patch::emit(call, &q, &Ports).unwrap_err();
    assert!(e.assert.is_inconclusive() && !e.assert.is_unusable(), "{e}");
    assert!(e.assert.message.contains("reads process memory outside the stencil"), "{e}");
    // Where symbols are not process memory (x86-64: the read must be a GOT
    // slot of the stencil), a relaxable form reading outside is a patch
    // assert; a plain branch still patches like patch_32r.
    let mut r = q.clone();
    r.symbols_readable = false;
    let e = stencilcheck::patch::emit(call, &r, &Ports).unwrap_err();
    assert!(!e.assert.is_inconclusive(), "{e}");
    let mut plain = p.clone();
    plain.symbols_readable = false;
    stencilcheck::patch::emit(call, &plain, &Ports).unwrap();
}
