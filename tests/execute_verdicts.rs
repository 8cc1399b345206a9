//! Honest verdicts for what the emulator cannot judge: instructions no
//! stencil may execute are findings that name them; valid code Unicorn
//! lacks is inconclusive, naming the engine; a computed jump to where no
//! code can be says nothing either way.

use std::path::PathBuf;
use stencilcheck::model::{Stencil, StencilSet};
use stencilcheck::patch::Ports;
use stencilcheck::pipeline::{self, Options, StencilResult};
use stencilcheck::target::{Arch, ObjectFormat, Target, Version};
mod common;
use common::{raw, X86};

const ARM64: Target = Target { arch: Arch::Aarch64, format: ObjectFormat::Elf, version: Version::V3_13 };

fn verify(target: Target, stencil: Stencil) -> StencilResult {
    let set =
        StencilSet { path: PathBuf::from("verdicts.h"), target, stencils: vec![stencil], symbols_map: Vec::new() };
    let options = Options {
        seed: 3,
        placements: 4,
        stencils: vec![],
        placement: None,
        instruction_limit: 20_000,
        threads: 1,
        strict: false,
        explore: 0,
        patcher: &Ports,
        engine: stencilcheck::execute::EngineKind::Unicorn,
    };
    pipeline::verify(&set, &options).expect("verifies").results.remove(0)
}

fn messages(r: &StencilResult) -> Vec<String> {
    r.findings.iter().map(|s| s.finding.message.clone()).collect()
}

/// A `Fault` finding in every run, naming `named`, no inconclusive runs.
fn assert_forbidden(target: Target, name: &str, code: Vec<u8>, named: &str) {
    let r = verify(target, raw(name, code));
    let m = messages(&r);
    assert_eq!(m.len(), 1, "{name}: {m:?} (inconclusive: {:?})", r.first_inconclusive);
    assert!(m[0].contains(&format!("`{named}")) && m[0].contains("no stencil may execute"), "{name}: {}", m[0]);
    assert_eq!(format!("{:?}", r.findings[0].finding.kind), "Fault");
    assert_eq!(r.findings[0].runs, 4);
    assert_eq!(r.findings[0].finding.at, Some(4), "{name}: the offset of the instruction");
}

/// Four `nop`s first: the reported offset is the instruction's, not the run's start.
fn after_nops(insn: &[u8]) -> Vec<u8> {
    let mut code = vec![0x90; 4];
    code.extend_from_slice(insn);
    code.extend_from_slice(&[0x48, 0x83, 0xc5, 0x08]); // add rbp, 8
    code
}

#[test]
fn hlt_is_a_finding_naming_it() {
    assert_forbidden(X86, "_HLT", after_nops(&[0xf4]), "hlt");
}

#[test]
fn system_calls_and_software_interrupts_are_findings() {
    assert_forbidden(X86, "_SYSCALL", after_nops(&[0x0f, 0x05]), "syscall");
    assert_forbidden(X86, "_SYSENTER", after_nops(&[0x0f, 0x34]), "sysenter");
    assert_forbidden(X86, "_INT80", after_nops(&[0xcd, 0x80]), "int 80h");
}

#[test]
fn privileged_instructions_are_findings() {
    assert_forbidden(X86, "_MOV_CR0", after_nops(&[0x0f, 0x22, 0xc0]), "mov cr0");
    assert_forbidden(X86, "_IN", after_nops(&[0xec]), "in al");
    assert_forbidden(X86, "_OUT", after_nops(&[0xee]), "out dx");
    assert_forbidden(X86, "_CLI", after_nops(&[0xfa]), "cli");
}

#[test]
fn valid_code_unicorn_lacks_is_inconclusive_naming_the_engine() {
    // vpaddq zmm0, zmm1, zmm2 (AVX-512)
    let r = verify(X86, raw("_AVX512", after_nops(&[0x62, 0xf1, 0xf5, 0x48, 0xd4, 0xc2])));
    assert!(r.findings.is_empty(), "{:?}", messages(&r));
    assert_eq!(r.inconclusive, 4);
    let why = &r.first_inconclusive.as_ref().unwrap().1;
    assert!(why.starts_with("Unicorn cannot run `vpaddq zmm0,zmm1,zmm2`") && why.contains("code+0x4"), "{why}");
    // vpaddd ymm0, ymm1, ymm2 (AVX2)
    let r = verify(X86, raw("_AVX2", after_nops(&[0xc5, 0xf5, 0xfe, 0xc2])));
    assert!(r.findings.is_empty(), "{:?}", messages(&r));
    assert!(r.first_inconclusive.as_ref().unwrap().1.starts_with("Unicorn cannot run `vpaddd ymm0,ymm1,ymm2`"));
}

#[test]
fn an_undefined_instruction_stays_a_finding() {
    let r = verify(X86, raw("_UD2", after_nops(&[0x0f, 0x0b])));
    assert_eq!(messages(&r), vec!["at code+0x4 ran an invalid instruction".to_string()]);
    assert_eq!(r.inconclusive, 0);
}

#[test]
fn a_computed_jump_to_where_no_code_can_be_is_not_correct() {
    // movabs rax, 0x4141414141414141 (non-canonical); jmp rax
    let mut code = vec![0x48, 0xb8];
    code.extend_from_slice(&0x4141_4141_4141_4141u64.to_le_bytes());
    code.extend_from_slice(&[0xff, 0xe0]);
    let r = verify(X86, raw("_WILD_JUMP", code));
    assert_eq!(r.inconclusive, 4, "{:?}", messages(&r));
    assert!(r.first_inconclusive.as_ref().unwrap().1.contains("left for 0x4141414141414141, where no code can be"));
    // xor eax, eax; jmp rax: into the NULL page
    let r = verify(X86, raw("_NULL_JUMP", vec![0x31, 0xc0, 0xff, 0xe0]));
    assert_eq!(r.inconclusive, 4, "{:?}", messages(&r));
    assert!(r.first_inconclusive.as_ref().unwrap().1.contains("left for 0x0, where no code can be"));
}

fn words(ws: &[u32]) -> Vec<u8> {
    ws.iter().flat_map(|w| w.to_le_bytes()).collect()
}

#[test]
fn aarch64_system_calls_halts_and_breakpoints_are_findings() {
    const NOP: u32 = 0xd503_201f;
    for (name, w, named) in [
        ("_SVC", 0xd400_0001u32, "svc"),
        ("_HVC", 0xd400_0002, "hvc"),
        ("_SMC", 0xd400_0003, "smc"),
        ("_BRK", 0xd420_0020, "brk"),
        ("_HLT", 0xd440_0000, "hlt"),
    ] {
        let r = verify(ARM64, raw(name, words(&[NOP, w, NOP, NOP])));
        let m = messages(&r);
        assert_eq!(m.len(), 1, "{name}: {m:?} (inconclusive: {:?})", r.first_inconclusive);
        assert!(m[0].contains(&format!("`{named}")) && m[0].contains("no stencil may execute"), "{name}: {}", m[0]);
        assert_eq!(r.findings[0].finding.at, Some(4), "{name}");
    }
}

/// One `Fault` finding naming the NULL page, in every run.
fn assert_null_constant(target: Target, name: &str, code: Vec<u8>, address: &str) {
    let r = verify(target, raw(name, code));
    let m = messages(&r);
    assert_eq!(m.len(), 1, "{name}: {m:?} (inconclusive: {:?})", r.first_inconclusive);
    assert!(m[0].contains(&format!("touched {address} in the NULL page")), "{name}: {}", m[0]);
    assert_eq!(r.findings[0].runs, 4, "{name}");
    assert_eq!(r.inconclusive, 0, "{name}");
}

#[test]
fn a_load_or_store_through_a_constant_null_is_a_finding() {
    // mov rax, [0]
    assert_null_constant(X86, "_ABS_NULL", after_nops(&[0x48, 0x8b, 0x04, 0x25, 0, 0, 0, 0]), "0x0");
    // xor eax, eax; mov rcx, [rax+8]
    assert_null_constant(X86, "_XOR_NULL", after_nops(&[0x31, 0xc0, 0x48, 0x8b, 0x48, 0x08]), "0x8");
    // mov eax, 0x10; add rax, 8; mov rcx, [rax]
    let code = [0xb8, 0x10, 0, 0, 0, 0x48, 0x83, 0xc0, 0x08, 0x48, 0x8b, 0x08];
    assert_null_constant(X86, "_IMM_NULL", after_nops(&code), "0x18");
    // xor ecx, ecx; mov rax, rcx; mov [rax+0x20], rdx
    let code = [0x31, 0xc9, 0x48, 0x89, 0xc8, 0x48, 0x89, 0x50, 0x20];
    assert_null_constant(X86, "_STORE_NULL", after_nops(&code), "0x20");
    // mov x1, #0x28; add x1, x1, #8; ldr x0, [x1]
    let code = words(&[0xd280_0501, 0x9100_2021, 0xf940_0020, 0xd503_201f]);
    assert_null_constant(ARM64, "_A64_NULL", code, "0x30");
    // mov x2, xzr; mov x1, x2; str x0, [x1, #16]
    let code = words(&[0xaa1f_03e2, 0xaa02_03e1, 0xf900_0820, 0xd503_201f]);
    assert_null_constant(ARM64, "_A64_STORE_NULL", code, "0x10");
}

#[test]
fn a_null_access_through_made_up_values_is_not_the_stencils() {
    // Made-up words are small integers and zero often: walking them touches
    // the NULL page in some runs, and a real type check would have kept the
    // stencil away. mov rax, [r13]; mov rcx, [rax+8]; mov rdx, [rcx]
    let chain = [0x49, 0x8b, 0x45, 0x00, 0x48, 0x8b, 0x48, 0x08, 0x48, 0x8b, 0x11];
    // xor eax, eax; cmp qword [r13+8], 0; sete al; mov rcx, [rax*8+0x100]:
    // the address is a constant's, but which one the made-up flags chose.
    let flags =
        [0x31, 0xc0, 0x49, 0x83, 0x7d, 0x08, 0x00, 0x0f, 0x94, 0xc0, 0x48, 0x8b, 0x0c, 0xc5, 0x00, 0x01, 0x00, 0x00];
    for (name, code) in [("_CHAIN", &chain[..]), ("_FLAGS", &flags[..])] {
        let r = verify(X86, raw(name, after_nops(code)));
        assert!(r.findings.is_empty(), "{name}: {:?}", messages(&r));
    }
    // ldr x1, [x20]; ldr x0, [x1, #8]
    let r = verify(ARM64, raw("_A64_CHAIN", words(&[0xf940_0281, 0xf940_0420, 0xd503_201f, 0xd503_201f])));
    assert!(r.findings.is_empty(), "{:?}", messages(&r));
}

#[test]
fn writing_x18_is_a_finding_where_the_platform_reserves_it() {
    const NOP: u32 = 0xd503_201f;
    let code = words(&[NOP, 0xd280_0032, NOP, NOP]); // movz x18, #1
    for format in [ObjectFormat::MachO, ObjectFormat::Coff] {
        let target = Target { format, ..ARM64 };
        let r = verify(target, raw("_X18", code.clone()));
        let m = messages(&r);
        assert_eq!(m.len(), 1, "{format}: {m:?}");
        assert!(m[0].contains("`movz x18, #0x1`") && m[0].contains("reserves"), "{}", m[0]);
        assert_eq!(r.findings[0].finding.at, Some(4));
    }
    // Linux: x18 is an ordinary temporary.
    let r = verify(ARM64, raw("_X18", code));
    assert!(r.findings.is_empty(), "{:?}", messages(&r));
}

/// `call PyFx_F` makes PyFx_F a function; `mov rax, [rip + PyFx_F]` then
/// reads its code as data (a `PC32` where a GOT load belonged). The same
/// load of an extern the stencil never calls is a data object's, fine.
#[test]
fn reading_a_called_functions_code_as_data_is_a_finding() {
    use stencilcheck::model::{EmitOp, PatchFn, RelocKind, Section, Term};
    let with = |called: bool| {
        // push rax (aligns the call); call rel32; pop rcx; mov rax, [rip + disp32]
        let code = vec![0x50, 0xe8, 0, 0, 0, 0, 0x59, 0x48, 0x8b, 0x05, 0, 0, 0, 0];
        let mut s = raw("_FN_AS_DATA", code);
        let extern_at = |offset| common::reloc(offset, RelocKind::X86_64_PC32, "PyFx_F", -4);
        s.relocations = vec![extern_at(10)];
        let patch = |offset| common::hole(PatchFn::P32r, Section::Code, offset, Term::Symbol("PyFx_F".into()), -4);
        s.emit.push(patch(10));
        if called {
            s.relocations.insert(0, common::reloc(2, RelocKind::X86_64_PLT32, "PyFx_F", -4));
            s.emit.insert(2, patch(2));
        } else {
            s.code[1..6].copy_from_slice(&[0x0f, 0x1f, 0x44, 0, 0]); // nop
            s.instructions = common::listing(&s.code);
        }
        assert!(matches!(s.emit.last(), Some(EmitOp::Patch(_))));
        verify(X86, s)
    };
    let r = with(true);
    let m = messages(&r);
    assert!(m.iter().any(|m| m.contains("(PyFx_F+0x0)") && m.contains("a function used as data")), "{m:?}");
    let r = with(false);
    assert!(r.findings.is_empty(), "{:?}", messages(&r));
}
