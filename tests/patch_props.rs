//! Properties of the patch ports, checked against an independent oracle:
//! the patched instruction is DECODED (iced-x86 for x86, bit math for
//! aarch64) and must reach the symbol S the relocation names (DOMAIN.md §6).
//!
//! Every property is a plain function over a `&dyn Fn` patch implementation,
//! so the same check runs against `Ports` (must pass) and against
//! deliberately wrong variants re-enacting real relocation bugs (must fail).

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use stencilcheck::model::{PatchFn, Section};
use stencilcheck::patch::aarch64::{get_bits, set_bits};
use stencilcheck::patch::{Image, PatchAssert, Patcher, Ports};

type Patch<'a> = &'a dyn Fn(&mut Image, u64, u64) -> Result<(), PatchAssert>;

fn port(func: PatchFn) -> impl Fn(&mut Image, u64, u64) -> Result<(), PatchAssert> {
    move |im, loc, value| Ports.patch(func, im, loc, value)
}

/// Runs `test` over `strategy`. Ports get random seeds (more coverage over
/// time; failures print the shrunk case); mutants a fixed seed (no flakes).
fn run<S: Strategy>(
    strategy: S,
    deterministic: bool,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) -> Result<(), String> {
    let config = Config { cases: 512, failure_persistence: None, ..Config::default() };
    let mut runner = if deterministic {
        TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha))
    } else {
        TestRunner::new(config)
    };
    runner.run(&strategy, test).map_err(|e| e.to_string())
}

fn must_pass(r: Result<(), String>) {
    if let Err(e) = r {
        panic!("property failed: {e}");
    }
}

fn must_fail(r: Result<(), String>, mutant: &str) {
    match r {
        Ok(()) => panic!("the property check accepted the mutant `{mutant}`"),
        Err(e) => eprintln!("mutant `{mutant}` rejected: {e}"),
    }
}

const CODE_LEN: usize = 64;
const DATA_LEN: usize = 64;

/// Code and data addresses (16-aligned code, ≥ 4 GiB so data may sit below
/// it without wrapping) with data up to ~2 GiB before or after the code, and
/// the data's noise bytes.
fn layout() -> impl Strategy<Value = (u64, u64, Vec<u8>)> {
    let code = (1u64 << 28..(1u64 << 43) - (1 << 28)).prop_map(|x| x << 4);
    let gap = prop_oneof![0x40u64..0x1000, 0x1000u64..(1 << 31) - 0x1000];
    (code, gap, any::<bool>(), proptest::collection::vec(any::<u8>(), DATA_LEN)).prop_map(
        |(code, gap, below, noise)| {
            let data = if below { code - DATA_LEN as u64 - gap } else { code + CODE_LEN as u64 + gap };
            (code, data, noise)
        },
    )
}

fn decode(image: &Image, addr: u64, bitness: u32) -> Instruction {
    let (base, code) = image.region(Section::Code);
    let off = (addr - base) as usize;
    Decoder::with_ip(bitness, &code[off..], addr, DecoderOptions::NONE).decode()
}

/// Bytes outside `[from, to)` of the code, and all of the data, unchanged.
fn only_changed(before: &Image, after: &Image, from: u64, to: u64) -> Result<(), TestCaseError> {
    prop_assert_eq!(&before.data, &after.data, "data changed");
    for (i, (a, b)) in before.code.iter().zip(&after.code).enumerate() {
        let addr = before.code_addr + i as u64;
        if addr < from || addr >= to {
            prop_assert_eq!(a, b, "code byte at {:#x} changed", addr);
        }
    }
    Ok(())
}

// ===========================================================================
// x86-64: patch_x86_64_32rx (R_X86_64_GOTPCRELX / REX_GOTPCRELX)
// ===========================================================================

#[derive(Clone, Copy, Debug, PartialEq)]
enum Relax {
    Lea,
    Call,
    Jmp,
    Never,
}

#[derive(Clone, Copy, Debug)]
struct RxTemplate {
    name: &'static str,
    bytes: &'static [u8],
    disp_at: u64,
    relax: Relax,
}

const RX_TEMPLATES: &[RxTemplate] = &[
    RxTemplate { name: "mov rax, [rip+slot]", bytes: &[0x48, 0x8b, 0x05, 0, 0, 0, 0], disp_at: 3, relax: Relax::Lea },
    RxTemplate { name: "mov r12, [rip+slot]", bytes: &[0x4c, 0x8b, 0x25, 0, 0, 0, 0], disp_at: 3, relax: Relax::Lea },
    RxTemplate { name: "mov eax, [rip+slot]", bytes: &[0x8b, 0x05, 0, 0, 0, 0], disp_at: 2, relax: Relax::Lea },
    RxTemplate { name: "call [rip+slot]", bytes: &[0xff, 0x15, 0, 0, 0, 0], disp_at: 2, relax: Relax::Call },
    RxTemplate { name: "jmp [rip+slot]", bytes: &[0xff, 0x25, 0, 0, 0, 0], disp_at: 2, relax: Relax::Jmp },
    RxTemplate { name: "lea rax, [rip+slot]", bytes: &[0x48, 0x8d, 0x05, 0, 0, 0, 0], disp_at: 3, relax: Relax::Never },
    RxTemplate {
        name: "movzx eax, word ptr [rip+slot]",
        bytes: &[0x0f, 0xb7, 0x05, 0, 0, 0, 0],
        disp_at: 3,
        relax: Relax::Never,
    },
];

/// S given relative to the relaxation's own measure (`S - 4 - location`), or absolutely.
#[derive(Clone, Copy, Debug)]
enum SymSpec {
    Rel(i64),
    Abs(u64),
}

fn sym_spec() -> impl Strategy<Value = SymSpec> {
    let edges = [
        -(1i64 << 31) - 1,
        -(1i64 << 31),
        -(1i64 << 31) + 1,
        (1i64 << 31) - 3,
        (1i64 << 31) - 2,
        (1i64 << 31) - 1,
        1i64 << 31,
        -1,
        0,
        1,
    ];
    prop_oneof![
        3 => (-0x10_0000i64..0x10_0000).prop_map(SymSpec::Rel),
        3 => (-(1i64 << 31) - 64..(1i64 << 31) + 64).prop_map(SymSpec::Rel),
        1 => proptest::sample::select(edges.to_vec()).prop_map(SymSpec::Rel),
        1 => any::<u64>().prop_map(SymSpec::Abs),
        1 => (0u64..0x1_0000).prop_map(SymSpec::Abs),
    ]
}

#[derive(Clone, Debug)]
struct RxCase {
    tpl: RxTemplate,
    image: Image,
    insn: u64,
    location: u64,
    slot: u64,
    s: u64,
}

fn rx_case() -> impl Strategy<Value = RxCase> {
    (proptest::sample::select(RX_TEMPLATES.to_vec()), layout(), 0u64..40, 0u64..8, sym_spec()).prop_map(
        |(tpl, (code_addr, data_addr, mut data), insn_off, slot_idx, spec)| {
            let insn = code_addr + insn_off;
            let location = insn + tpl.disp_at;
            let s = match spec {
                SymSpec::Rel(d) => location.wrapping_add(4).wrapping_add(d as u64),
                SymSpec::Abs(s) => s,
            };
            let slot = data_addr + 8 * slot_idx;
            data[8 * slot_idx as usize..][..8].copy_from_slice(&s.to_le_bytes());
            let mut code = vec![0xcc; CODE_LEN];
            code[insn_off as usize..][..tpl.bytes.len()].copy_from_slice(tpl.bytes);
            RxCase { tpl, image: Image::new(code_addr, code, data_addr, data), insn, location, slot, s }
        },
    )
}

fn mask(bytes: usize) -> u64 {
    if bytes >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * bytes)) - 1
    }
}

/// The oracle for a GOTPCRELX site: after patching, the instruction either
/// still goes through the slot (its RIP-relative operand IS the slot), or it
/// was relaxed and reaches S itself (lea forms S, call/jmp go to S). When S is
/// comfortably within reach, a relaxable instruction must have been relaxed.
fn check_rx(patch: Patch, case: RxCase) -> Result<(), TestCaseError> {
    let RxCase { tpl, image, insn, location, slot, s } = case;
    let mut after = image.clone();
    // As the header calls it: patch_x86_64_32rx(code + off, (uintptr_t)data + slot - 4).
    if let Err(e) = patch(&mut after, location, slot - 4) {
        return Err(TestCaseError::fail(format!("{}: patch failed on a valid site: {e}", tpl.name)));
    }
    let len = tpl.bytes.len() as u64;
    only_changed(&image, &after, insn, insn + len)?;
    let opcode = &after.code[(insn - after.code_addr) as usize..][..tpl.disp_at as usize];
    let relaxed = if opcode == &tpl.bytes[..tpl.disp_at as usize] {
        let i = decode(&after, insn, 64);
        prop_assert_eq!(i.len() as u64, len, "{}: length", tpl.name);
        prop_assert!(i.is_ip_rel_memory_operand(), "{}: lost its RIP-relative operand", tpl.name);
        prop_assert_eq!(
            i.ip_rel_memory_address(),
            slot,
            "{}: unrelaxed operand must be the GOT slot (S = {:#x})",
            tpl.name,
            s
        );
        false
    } else {
        match tpl.relax {
            Relax::Lea => {
                let i = decode(&after, insn, 64);
                prop_assert_eq!(i.mnemonic(), Mnemonic::Lea, "{}: relaxed to {:?}", tpl.name, i);
                prop_assert_eq!(i.len() as u64, len);
                prop_assert!(i.is_ip_rel_memory_operand());
                let m = mask(i.op0_register().size());
                prop_assert_eq!(
                    i.ip_rel_memory_address() & m,
                    s & m,
                    "{}: lea forms {:#x}, S is {:#x}",
                    tpl.name,
                    i.ip_rel_memory_address(),
                    s
                );
            }
            Relax::Call | Relax::Jmp => {
                prop_assert_eq!(after.code[(insn - after.code_addr) as usize], 0x90, "{}: nop", tpl.name);
                let i = decode(&after, insn + 1, 64);
                let want = if tpl.relax == Relax::Call { Mnemonic::Call } else { Mnemonic::Jmp };
                prop_assert_eq!(i.mnemonic(), want, "{}: relaxed to {:?}", tpl.name, i);
                prop_assert_eq!(i.op0_kind(), OpKind::NearBranch64);
                prop_assert_eq!(i.len() as u64, len - 1);
                prop_assert_eq!(
                    i.near_branch_target(),
                    s,
                    "{}: branches to {:#x}, S is {:#x}",
                    tpl.name,
                    i.near_branch_target(),
                    s
                );
            }
            Relax::Never => {
                return Err(TestCaseError::fail(format!("{}: must never be rewritten, got {:02x?}", tpl.name, opcode)))
            }
        }
        true
    };
    // Well within reach (8 bytes clear of either edge): must be relaxed.
    let d = s.wrapping_sub(4).wrapping_sub(location) as i64;
    if tpl.relax != Relax::Never && d > -(1i64 << 31) + 8 && d < (1i64 << 31) - 8 {
        prop_assert!(relaxed, "{}: S {:#x} is {:#x} away but the GOT load stayed", tpl.name, s, d);
    }
    Ok(())
}

fn prop_rx(patch: Patch, deterministic: bool) -> Result<(), String> {
    run(rx_case(), deterministic, |case| check_rx(patch, case))
}

#[test]
fn x86_64_32rx_reaches_s_through_the_slot_or_directly() {
    must_pass(prop_rx(&port(PatchFn::X86_64_32rx), false));
}

/// A test-local 32rx with one bug at a time.
#[derive(Clone, Copy)]
enum RxBug {
    /// LLVM JITLink (#190968): relaxed call/jmp/lea got the absolute address
    /// in the PC-relative field.
    AbsoluteWhenRelaxed,
    /// LLVM JITLink (PR #190179): reach tested as an unsigned absolute value.
    UnsignedAbsoluteReach,
    /// Forgot that the slot's value must be biased by -4 like the field.
    NoMinus4,
    /// Reads `*(value)` instead of `*(value + 4)`.
    ReadsValueNotSlot,
}

fn rx_mutant(bug: RxBug) -> impl Fn(&mut Image, u64, u64) -> Result<(), PatchAssert> {
    move |im: &mut Image, location: u64, value: u64| {
        let fail = |m: &str| PatchAssert {
            func: PatchFn::X86_64_32rx,
            location,
            value,
            message: m.to_string(),
            kind: Default::default(),
        };
        let read_at = match bug {
            RxBug::ReadsValueNotSlot => value,
            _ => value + 4,
        };
        let got = im.read_u64(read_at).ok_or_else(|| fail("wild read"))?;
        let relaxed = match bug {
            RxBug::NoMinus4 => got,
            _ => got.wrapping_sub(4),
        };
        let delta = relaxed.wrapping_sub(location) as i64;
        let reach = match bug {
            RxBug::UnsignedAbsoluteReach => relaxed < (1 << 31),
            _ => delta >= -(1i64 << 31) && delta + 1 < (1i64 << 31),
        };
        let op = im.read_u8(location - 2).unwrap();
        let modrm = im.read_u8(location - 1).unwrap();
        let new: Option<&[u8]> = match (op, modrm) {
            (0x8b, _) => Some(&[0x8d]),
            (0xff, 0x15) => Some(&[0x90, 0xe8]),
            (0xff, 0x25) => Some(&[0x90, 0xe9]),
            _ => None,
        };
        match new {
            Some(bytes) if reach => {
                im.write(location - 2, bytes).unwrap();
                let field = match bug {
                    RxBug::AbsoluteWhenRelaxed => relaxed.wrapping_add(4) as u32,
                    _ => relaxed.wrapping_sub(location) as u32,
                };
                im.write(location, &field.to_le_bytes()).ok_or_else(|| fail("wild write"))
            }
            _ => Ports.patch(PatchFn::P32r, im, location, value),
        }
    }
}

#[test]
fn mutant_32rx_absolute_address_in_relaxed_branch_is_caught() {
    must_fail(prop_rx(&rx_mutant(RxBug::AbsoluteWhenRelaxed), true), "absolute when relaxed");
}

#[test]
fn mutant_32rx_unsigned_absolute_reach_is_caught() {
    must_fail(prop_rx(&rx_mutant(RxBug::UnsignedAbsoluteReach), true), "unsigned absolute reach");
}

#[test]
fn mutant_32rx_missing_minus_4_is_caught() {
    must_fail(prop_rx(&rx_mutant(RxBug::NoMinus4), true), "no -4");
}

#[test]
fn mutant_32rx_reading_value_instead_of_slot_is_caught() {
    must_fail(prop_rx(&rx_mutant(RxBug::ReadsValueNotSlot), true), "reads *(value)");
}

#[test]
fn the_correct_32rx_variant_passes_the_same_deterministic_run() {
    // The mutants above differ from this in one bug each; make sure the
    // fixed-seed run they lose is one a correct port wins.
    must_pass(prop_rx(&port(PatchFn::X86_64_32rx), true));
}

// ===========================================================================
// x86-64: patch_32r (R_X86_64_PC32 / PLT32)
// ===========================================================================

#[derive(Clone, Copy, Debug)]
struct RelTemplate {
    name: &'static str,
    bytes: &'static [u8],
    disp_at: u64,
    branch: bool,
}

const REL_TEMPLATES: &[RelTemplate] = &[
    RelTemplate { name: "call S", bytes: &[0xe8, 0, 0, 0, 0], disp_at: 1, branch: true },
    RelTemplate { name: "jmp S", bytes: &[0xe9, 0, 0, 0, 0], disp_at: 1, branch: true },
    RelTemplate { name: "jne S", bytes: &[0x0f, 0x85, 0, 0, 0, 0], disp_at: 2, branch: true },
    RelTemplate { name: "mov rax, [rip+S]", bytes: &[0x48, 0x8b, 0x05, 0, 0, 0, 0], disp_at: 3, branch: false },
    RelTemplate { name: "lea rdi, [rip+S]", bytes: &[0x48, 0x8d, 0x3d, 0, 0, 0, 0], disp_at: 3, branch: false },
    RelTemplate { name: "cmp byte ptr [rip+S], 0", bytes: &[0x80, 0x3d, 0, 0, 0, 0, 0], disp_at: 2, branch: false },
    RelTemplate {
        name: "mov dword ptr [rip+S], 7",
        bytes: &[0xc7, 0x05, 0, 0, 0, 0, 7, 0, 0, 0],
        disp_at: 2,
        branch: false,
    },
];

#[derive(Clone, Debug)]
struct RelCase {
    tpl: RelTemplate,
    image: Image,
    insn: u64,
    location: u64,
    /// value - location, as patch_32r computes it.
    delta: i64,
}

impl RelCase {
    /// The relocation's addend: -4 less the bytes after the field (an imm8/imm32).
    fn addend(&self) -> i64 {
        -4 - (self.tpl.bytes.len() as i64 - self.tpl.disp_at as i64 - 4)
    }
    fn value(&self) -> u64 {
        self.location.wrapping_add(self.delta as u64)
    }
    /// value = S + A, so S = value - A.
    fn s(&self) -> u64 {
        self.value().wrapping_sub(self.addend() as u64)
    }
}

fn rel_case() -> impl Strategy<Value = RelCase> {
    let delta = prop_oneof![
        4 => any::<i32>().prop_map(i64::from),
        2 => -0x1000i64..0x1000,
        1 => proptest::sample::select(vec![
            i32::MIN as i64 - 1,
            i32::MIN as i64,
            i32::MAX as i64,
            i32::MAX as i64 + 1,
        ]),
        1 => 1i64 << 31..1i64 << 44,
        1 => -(1i64 << 44)..-(1i64 << 31),
    ];
    (proptest::sample::select(REL_TEMPLATES.to_vec()), layout(), 0u64..40, delta).prop_map(
        |(tpl, (code_addr, data_addr, data), insn_off, delta)| {
            let insn = code_addr + insn_off;
            let mut code = vec![0xcc; CODE_LEN];
            code[insn_off as usize..][..tpl.bytes.len()].copy_from_slice(tpl.bytes);
            RelCase {
                tpl,
                image: Image::new(code_addr, code, data_addr, data),
                insn,
                location: insn + tpl.disp_at,
                delta,
            }
        },
    )
}

/// In range: the decoded branch target / RIP-relative address is S (so for
/// `call`, S = value + 4). Out of range: the assert fires and nothing changes.
fn check_rel(patch: Patch, case: RelCase) -> Result<(), TestCaseError> {
    let mut after = case.image.clone();
    let r = patch(&mut after, case.location, case.value());
    let name = case.tpl.name;
    if case.delta < i32::MIN as i64 || case.delta > i32::MAX as i64 {
        prop_assert!(r.is_err(), "{}: value - location = {:#x} must assert", name, case.delta);
        prop_assert_eq!(&after, &case.image, "a firing assert must not write");
        return Ok(());
    }
    if let Err(e) = r {
        return Err(TestCaseError::fail(format!("{name}: in range but failed: {e}")));
    }
    only_changed(&case.image, &after, case.location, case.location + 4)?;
    let i = decode(&after, case.insn, 64);
    prop_assert_eq!(i.len(), case.tpl.bytes.len());
    let got = if case.tpl.branch { i.near_branch_target() } else { i.ip_rel_memory_address() };
    prop_assert_eq!(got, case.s(), "{}: reaches {:#x}, S is {:#x}", name, got, case.s());
    if case.tpl.bytes[0] == 0xe8 {
        prop_assert_eq!(got, case.value().wrapping_add(4));
    }
    Ok(())
}

fn prop_rel(patch: Patch, deterministic: bool) -> Result<(), String> {
    run(rel_case(), deterministic, |case| check_rel(patch, case))
}

#[test]
fn x86_64_32r_reaches_s_or_asserts() {
    must_pass(prop_rel(&port(PatchFn::P32r), false));
    must_pass(prop_rel(&port(PatchFn::P32r), true));
}

#[test]
fn mutant_32r_absolute_address_in_pc_relative_field_is_caught() {
    let mutant = |im: &mut Image, location: u64, value: u64| {
        let d = value.wrapping_sub(location) as i64;
        if d < i32::MIN as i64 || d > i32::MAX as i64 {
            return Err(PatchAssert {
                func: PatchFn::P32r,
                location,
                value,
                message: "range".into(),
                kind: Default::default(),
            });
        }
        im.write(location, &(value as u32).to_le_bytes()).unwrap();
        Ok(())
    };
    must_fail(prop_rel(&mutant, true), "absolute in PC32");
}

#[test]
fn mutant_32r_wrong_sign_is_caught() {
    let mutant = |im: &mut Image, location: u64, value: u64| {
        Ports.patch(PatchFn::P32r, im, location, value)?;
        let field = location.wrapping_sub(value) as u32;
        im.write(location, &field.to_le_bytes()).unwrap();
        Ok(())
    };
    must_fail(prop_rel(&mutant, true), "location - value");
}

#[test]
fn mutant_32r_without_range_assert_is_caught() {
    let mutant = |im: &mut Image, location: u64, value: u64| {
        im.write(location, &(value.wrapping_sub(location) as u32).to_le_bytes()).unwrap();
        Ok(())
    };
    must_fail(prop_rel(&mutant, true), "silent truncation");
}

// ===========================================================================
// patch_64 (movabs / data slots) and patch_32 (i686's R_386_32)
// ===========================================================================

fn abs_case() -> impl Strategy<Value = (Image, u64, u64)> {
    (layout(), 0u64..40, any::<u64>()).prop_map(|((code_addr, data_addr, data), off, value)| {
        let mut code = vec![0xcc; CODE_LEN];
        code[off as usize..][..10].copy_from_slice(&[0x48, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0]);
        (Image::new(code_addr, code, data_addr, data), code_addr + off, value)
    })
}

fn check_64(patch: Patch, (image, insn, value): (Image, u64, u64)) -> Result<(), TestCaseError> {
    let mut after = image.clone();
    patch(&mut after, insn + 2, value).map_err(|e| TestCaseError::fail(e.to_string()))?;
    only_changed(&image, &after, insn + 2, insn + 10)?;
    let i = decode(&after, insn, 64);
    prop_assert_eq!(i.mnemonic(), Mnemonic::Mov);
    prop_assert_eq!(i.op1_kind(), OpKind::Immediate64);
    prop_assert_eq!(i.immediate64(), value, "movabs rax, imm64");
    // A data slot too: what a GOT-style load will read back.
    let slot = after.data_addr + 8;
    patch(&mut after, slot, value).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(after.read_u64(slot), Some(value));
    Ok(())
}

#[test]
fn patch_64_immediate_and_slot_hold_the_value() {
    must_pass(run(abs_case(), false, |c| check_64(&port(PatchFn::P64), c)));
}

#[test]
fn mutant_64_big_endian_is_caught() {
    let mutant = |im: &mut Image, location: u64, value: u64| {
        im.write(location, &value.to_be_bytes()).unwrap();
        Ok(())
    };
    must_fail(run(abs_case(), true, |c| check_64(&mutant, c)), "big-endian patch_64");
}

fn check_32(patch: Patch, (image, insn, value): (Image, u64, u64)) -> Result<(), TestCaseError> {
    // 32-bit code: `mov eax, imm32` (b8) then `mov eax, [moffs32]` (a1).
    let mut image = image;
    image.write(insn, &[0xb8, 0, 0, 0, 0, 0xa1, 0, 0, 0, 0]).unwrap();
    let mut after = image.clone();
    let r = patch(&mut after, insn + 1, value).and_then(|()| patch(&mut after, insn + 6, value));
    if value >> 32 != 0 {
        prop_assert!(r.is_err(), "value {:#x} does not fit 32 bits: must assert", value);
        prop_assert_eq!(&after, &image);
        return Ok(());
    }
    r.map_err(|e| TestCaseError::fail(e.to_string()))?;
    let i = decode(&after, insn, 32);
    prop_assert_eq!(i.immediate32() as u64, value);
    let j = decode(&after, insn + 5, 32);
    prop_assert_eq!(j.memory_displacement64(), value);
    Ok(())
}

fn abs32_case() -> impl Strategy<Value = (Image, u64, u64)> {
    let value = prop_oneof![3 => any::<u32>().prop_map(u64::from), 1 => 1u64 << 32..u64::MAX];
    (abs_case(), value).prop_map(|((im, insn, _), v)| (im, insn, v))
}

#[test]
fn patch_32_holds_the_value_or_asserts() {
    must_pass(run(abs32_case(), false, |c| check_32(&port(PatchFn::P32), c)));
}

#[test]
fn mutant_32_without_assert_is_caught() {
    let mutant = |im: &mut Image, location: u64, value: u64| {
        im.write(location, &(value as u32).to_le_bytes()).unwrap();
        Ok(())
    };
    must_fail(run(abs32_case(), true, |c| check_32(&mutant, c)), "patch_32 truncating");
}

// ===========================================================================
// aarch64: an oracle that executes the patched words by bit math
// ===========================================================================

fn sext(v: u64, bits: u32) -> i64 {
    ((v << (64 - bits)) as i64) >> (64 - bits)
}

#[derive(Debug, PartialEq)]
enum Outcome {
    /// The registers after running straight-line code (x0..x30).
    Regs(Box<[Option<u64>; 31]>),
    /// A B/BL to this address.
    Branch(u64),
}

/// Runs `n` words at `pc`: ADRP, ADD (imm, 64-bit), LDR Xt (unsigned
/// offset), LDR Xt (literal), MOVZ/MOVK (64-bit), NOP, B/BL. Anything else,
/// or a read outside the image, is an error.
fn execute(image: &Image, pc: u64, n: u64) -> Result<Outcome, String> {
    let mut x = [None; 31];
    let get = |x: &[Option<u64>; 31], r: usize| x.get(r).copied().flatten().ok_or(format!("x{r} unset"));
    for k in 0..n {
        let at = pc + 4 * k;
        let w = image.read_u32(at).ok_or("pc outside image")?;
        let rd = (w & 31) as usize;
        let rn = ((w >> 5) & 31) as usize;
        let load = |a: u64| image.read_u64(a).ok_or(format!("load at {a:#x} outside the image"));
        let value = if w & 0x9f00_0000 == 0x9000_0000 {
            let imm = ((w as u64 >> 29) & 3) | (((w as u64 >> 5) & 0x7ffff) << 2);
            (at & !0xfff).wrapping_add((sext(imm, 21) as u64) << 12)
        } else if w & 0xff80_0000 == 0x9100_0000 {
            get(&x, rn)?.wrapping_add((w as u64 >> 10) & 0xfff)
        } else if w & 0xffc0_0000 == 0xf940_0000 {
            load(get(&x, rn)?.wrapping_add(((w as u64 >> 10) & 0xfff) * 8))?
        } else if w & 0xff00_0000 == 0x5800_0000 {
            load(at.wrapping_add((sext((w as u64 >> 5) & 0x7ffff, 19) << 2) as u64))?
        } else if w & 0xff80_0000 == 0xd280_0000 {
            ((w as u64 >> 5) & 0xffff) << (16 * ((w >> 21) & 3))
        } else if w & 0xff80_0000 == 0xf280_0000 {
            let sh = 16 * ((w >> 21) & 3);
            (get(&x, rd)? & !(0xffff << sh)) | (((w as u64 >> 5) & 0xffff) << sh)
        } else if w == 0xd503_201f {
            continue;
        } else if w & 0x7c00_0000 == 0x1400_0000 {
            return Ok(Outcome::Branch(at.wrapping_add((sext(w as u64 & 0x3ff_ffff, 26) << 2) as u64)));
        } else {
            return Err(format!("cannot execute {w:#010x} at {at:#x}"));
        };
        if rd == 31 {
            return Err("writes xzr/sp".into());
        }
        x[rd] = Some(value);
    }
    Ok(Outcome::Regs(Box::new(x)))
}

fn reg_after(image: &Image, pc: u64, n: u64, reg: u32) -> Result<u64, TestCaseError> {
    match execute(image, pc, n) {
        Ok(Outcome::Regs(x)) => x[reg as usize].ok_or_else(|| TestCaseError::fail(format!("x{reg} not written"))),
        Ok(other) => Err(TestCaseError::fail(format!("unexpected {other:?}"))),
        Err(e) => Err(TestCaseError::fail(e)),
    }
}

const ADRP: u32 = 0x9000_0000;
const ADD: u32 = 0x9100_0000;
const LDR: u32 = 0xf940_0000;
const B: u32 = 0x1400_0000;
const BL: u32 = 0x9400_0000;

/// Code region of 0x100 bytes with `words` at `code + 4*slot`, zeros elsewhere
/// (zero is `udf`, which the oracle refuses to run).
fn a64_code(words: &[u32], at: usize) -> Vec<u8> {
    let mut code = vec![0u8; 0x100];
    for (i, w) in words.iter().enumerate() {
        code[4 * (at + i)..][..4].copy_from_slice(&w.to_le_bytes());
    }
    code
}

fn a64_code_addr() -> impl Strategy<Value = u64> {
    // 256-byte aligned, ≥ 4 GiB so targets/slots up to ~4 GiB below stay positive.
    (1u64 << 24..(1u64 << 39) - (1 << 24)).prop_map(|x| x << 8)
}

// -- 21r + 12: ADR_PREL_PG_HI21 + ADD_ABS_LO12_NC forms S ---------------------

#[derive(Clone, Debug)]
struct AdrpCase {
    image: Image,
    loc: u64,
    reg: u32,
    pages: i64,
    s: u64,
}

fn adrp_case() -> impl Strategy<Value = AdrpCase> {
    let pages = prop_oneof![
        4 => -(1i64 << 20)..(1i64 << 20),
        2 => -64i64..64,
        1 => proptest::sample::select(vec![-(1i64 << 20) - 1, -(1i64 << 20), (1i64 << 20) - 1, 1i64 << 20]),
    ];
    (a64_code_addr(), 0usize..60, 0u32..31, pages, 0u64..0x1000).prop_map(|(code, at, reg, pages, off)| {
        let words = [ADRP | reg, ADD | reg << 5 | reg];
        let loc = code + 4 * at as u64;
        let s = (loc & !0xfff).wrapping_add((pages << 12) as u64) + off;
        AdrpCase { image: Image::new(code, a64_code(&words, at), 0x1000, vec![]), loc, reg, pages, s }
    })
}

fn check_adrp_add(hi: Patch, lo: Patch, c: AdrpCase) -> Result<(), TestCaseError> {
    let mut after = c.image.clone();
    let r = hi(&mut after, c.loc, c.s);
    if !(-(1i64 << 20)..(1i64 << 20)).contains(&c.pages) {
        prop_assert!(r.is_err(), "page delta {:#x} out of range must assert", c.pages);
        return Ok(());
    }
    r.map_err(|e| TestCaseError::fail(e.to_string()))?;
    lo(&mut after, c.loc + 4, c.s).map_err(|e| TestCaseError::fail(e.to_string()))?;
    only_changed(&c.image, &after, c.loc, c.loc + 8)?;
    let got = reg_after(&after, c.loc, 2, c.reg)?;
    prop_assert_eq!(got, c.s, "adrp+add formed {:#x}, S is {:#x} ({} pages away)", got, c.s, c.pages);
    Ok(())
}

fn prop_adrp_add(hi: Patch, lo: Patch, deterministic: bool) -> Result<(), String> {
    run(adrp_case(), deterministic, |c| check_adrp_add(hi, lo, c))
}

#[test]
fn aarch64_21r_12_form_s_above_and_below() {
    must_pass(prop_adrp_add(&port(PatchFn::Aarch64_21r), &port(PatchFn::Aarch64_12), false));
    must_pass(prop_adrp_add(&port(PatchFn::Aarch64_21rx), &port(PatchFn::Aarch64_12x), true));
}

#[test]
fn mutant_21r_zero_extended_page_delta_is_caught() {
    // Cranelift (wasmtime PR #11734): the page delta went through u32 and a
    // logical shift, so any target below the instruction lands ~4 GiB off.
    let mutant = |im: &mut Image, location: u64, value: u64| {
        let delta = ((value & !0xfff).wrapping_sub(location & !0xfff) as u32 as u64) >> 12;
        let mut w = im.read_u32(location).unwrap();
        set_bits(&mut w, 29, delta, 0, 2);
        set_bits(&mut w, 5, delta, 2, 19);
        im.write(location, &w.to_le_bytes()).unwrap();
        Ok(())
    };
    must_fail(prop_adrp_add(&mutant, &port(PatchFn::Aarch64_12), true), "zero-extended ADRP delta");
}

// -- 21r + 12 on a GOT pair: ADR_GOT_PAGE + LD64_GOT_LO12_NC load S -------------

#[derive(Clone, Debug)]
struct GotCase {
    image: Image,
    loc: u64,
    reg: u32,
    slot: u64,
    s: u64,
}

/// A GOT slot (8-aligned, holding `s`) that sits `near` the code (±512 KiB)
/// or up to ~4 GiB before or after it.
fn got_case() -> impl Strategy<Value = GotCase> {
    let dist = prop_oneof![
        2 => 0x200u64..(1 << 19) - 0x100,
        2 => 0x200u64..(1 << 32) - 0x2000,
    ];
    let s = prop_oneof![
        1 => 0u64..0x1_0000,
        1 => 0x1_0000u64..1 << 32,
        3 => any::<u64>(),
    ];
    (a64_code_addr(), 0usize..60, 0u32..31, dist, any::<bool>(), 0u64..8, s, proptest::collection::vec(any::<u8>(), 64))
        .prop_map(|(code, at, reg, dist, below, slot_idx, s, mut data)| {
            let words = [ADRP | reg, LDR | reg << 5 | reg];
            let loc = code + 4 * at as u64;
            let data_addr = if below { code - 64 - (dist & !7) } else { code + 0x100 + (dist & !7) };
            data[8 * slot_idx as usize..][..8].copy_from_slice(&s.to_le_bytes());
            GotCase {
                image: Image::new(code, a64_code(&words, at), data_addr, data),
                loc,
                reg,
                slot: data_addr + 8 * slot_idx,
                s,
            }
        })
}

fn check_got_pair(hi: Patch, lo: Patch, c: GotCase) -> Result<(), TestCaseError> {
    let mut after = c.image.clone();
    hi(&mut after, c.loc, c.slot).map_err(|e| TestCaseError::fail(e.to_string()))?;
    lo(&mut after, c.loc + 4, c.slot).map_err(|e| TestCaseError::fail(e.to_string()))?;
    only_changed(&c.image, &after, c.loc, c.loc + 8)?;
    let got = reg_after(&after, c.loc, 2, c.reg)?;
    prop_assert_eq!(got, c.s, "adrp+ldr loaded {:#x}, S is {:#x} (slot {:#x})", got, c.s, c.slot);
    Ok(())
}

#[test]
fn aarch64_got_pair_loads_s() {
    let (hi, lo) = (port(PatchFn::Aarch64_21r), port(PatchFn::Aarch64_12));
    must_pass(run(got_case(), false, |c| check_got_pair(&hi, &lo, c)));
}

#[test]
fn mutant_12_ignoring_the_ldr_scale_is_caught() {
    let mutant = |im: &mut Image, location: u64, value: u64| {
        let mut w = im.read_u32(location).unwrap();
        set_bits(&mut w, 10, value, 0, 12);
        im.write(location, &w.to_le_bytes()).unwrap();
        Ok(())
    };
    let hi = port(PatchFn::Aarch64_21r);
    must_fail(run(got_case(), true, |c| check_got_pair(&hi, &mutant, c)), "unscaled LDR offset");
}

// -- 33rx: the pair relaxed as one still yields S -----------------------------

fn check_33rx(patch: Patch, c: GotCase) -> Result<(), TestCaseError> {
    let mut after = c.image.clone();
    patch(&mut after, c.loc, c.slot).map_err(|e| TestCaseError::fail(e.to_string()))?;
    only_changed(&c.image, &after, c.loc, c.loc + 8)?;
    let got = reg_after(&after, c.loc, 2, c.reg)?;
    let words = (after.read_u32(c.loc).unwrap(), after.read_u32(c.loc + 4).unwrap());
    prop_assert_eq!(got, c.s, "33rx pair {:08x?} gives {:#x}, S is {:#x}", words, got, c.s);
    Ok(())
}

fn prop_33rx(patch: Patch, deterministic: bool) -> Result<(), String> {
    run(got_case(), deterministic, |c| check_33rx(patch, c))
}

#[test]
fn aarch64_33rx_yields_s_in_every_relaxation() {
    must_pass(prop_33rx(&port(PatchFn::Aarch64_33rx), false));
    must_pass(prop_33rx(&port(PatchFn::Aarch64_33rx), true));
}

#[test]
fn mutant_33rx_literal_measured_from_the_second_word_is_caught() {
    let mutant = |im: &mut Image, location: u64, value: u64| {
        Ports.patch(PatchFn::Aarch64_33rx, im, location, value)?;
        let w = im.read_u32(location).unwrap();
        if w & 0xff00_0000 == 0x5800_0000 {
            let d = value.wrapping_sub(location + 4);
            let w = 0x5800_0000 | (get_bits(d, 2, 19) << 5) | (w & 31);
            im.write(location, &w.to_le_bytes()).unwrap();
        }
        Ok(())
    };
    must_fail(prop_33rx(&mutant, true), "ldr literal off by one word");
}

#[test]
fn mutant_33rx_movz_movk_dropping_the_high_half_is_caught() {
    let mutant = |im: &mut Image, location: u64, value: u64| {
        Ports.patch(PatchFn::Aarch64_33rx, im, location, value)?;
        if im.read_u32(location + 4).unwrap() & 0xffe0_0000 == 0xf2a0_0000 {
            im.write(location + 4, &0xd503_201fu32.to_le_bytes()).unwrap();
        }
        Ok(())
    };
    must_fail(prop_33rx(&mutant, true), "movz without movk");
}

// -- 26r: B/BL go to S -----------------------------------------------------------

fn branch_case() -> impl Strategy<Value = (Image, u64, u64, i64)> {
    let words = prop_oneof![
        4 => -(1i64 << 25)..(1i64 << 25),
        1 => proptest::sample::select(vec![-(1i64 << 25) - 1, -(1i64 << 25), (1i64 << 25) - 1, 1i64 << 25]),
    ];
    (a64_code_addr(), 0usize..63, any::<bool>(), words, prop_oneof![4 => Just(0u64), 1 => 1u64..4]).prop_map(
        |(code, at, link, words, misalign)| {
            let loc = code + 4 * at as u64;
            let s = loc.wrapping_add((words << 2) as u64) + misalign;
            let im = Image::new(code, a64_code(&[if link { BL } else { B }], at), 0x1000, vec![]);
            (im, loc, s, words)
        },
    )
}

fn check_branch(patch: Patch, (image, loc, s, words): (Image, u64, u64, i64)) -> Result<(), TestCaseError> {
    let mut after = image.clone();
    let r = patch(&mut after, loc, s);
    if s & 3 != 0 || !(-(1i64 << 25)..(1i64 << 25)).contains(&words) {
        prop_assert!(r.is_err(), "target {:#x} from {:#x} cannot be encoded: must assert", s, loc);
        prop_assert_eq!(&after, &image);
        return Ok(());
    }
    r.map_err(|e| TestCaseError::fail(e.to_string()))?;
    only_changed(&image, &after, loc, loc + 4)?;
    let opcode = image.read_u32(loc).unwrap() & 0xfc00_0000;
    prop_assert_eq!(after.read_u32(loc).unwrap() & 0xfc00_0000, opcode, "B/BL kept");
    match execute(&after, loc, 1) {
        Ok(Outcome::Branch(t)) => prop_assert_eq!(t, s, "branches to {:#x}, S is {:#x}", t, s),
        other => return Err(TestCaseError::fail(format!("{other:?}"))),
    }
    Ok(())
}

#[test]
fn aarch64_26r_branches_to_s_or_asserts() {
    must_pass(run(branch_case(), false, |c| check_branch(&port(PatchFn::Aarch64_26r), c)));
}

#[test]
fn mutant_26r_unscaled_offset_is_caught() {
    let mutant = |im: &mut Image, location: u64, value: u64| {
        let d = value.wrapping_sub(location);
        if d & 3 != 0 || !(-(1i64 << 27)..(1i64 << 27)).contains(&(d as i64)) {
            return Err(PatchAssert {
                func: PatchFn::Aarch64_26r,
                location,
                value,
                message: "x".into(),
                kind: Default::default(),
            });
        }
        let mut w = im.read_u32(location).unwrap();
        set_bits(&mut w, 0, d, 0, 26);
        im.write(location, &w.to_le_bytes()).unwrap();
        Ok(())
    };
    must_fail(run(branch_case(), true, |c| check_branch(&mutant, c)), "26r without >> 2");
}

// -- 16a..d: movz/movk chain builds S --------------------------------------------

#[test]
fn aarch64_16_chain_builds_any_value() {
    let case = (a64_code_addr(), 0usize..60, 0u32..31, any::<u64>());
    must_pass(run(case, false, |(code, at, reg, s)| {
        let words = [0xd280_0000 | reg, 0xf2a0_0000 | reg, 0xf2c0_0000 | reg, 0xf2e0_0000 | reg];
        let mut im = Image::new(code, a64_code(&words, at), 0x1000, vec![]);
        let loc = code + 4 * at as u64;
        let funcs = [PatchFn::Aarch64_16a, PatchFn::Aarch64_16b, PatchFn::Aarch64_16c, PatchFn::Aarch64_16d];
        for (k, f) in funcs.into_iter().enumerate() {
            Ports.patch(f, &mut im, loc + 4 * k as u64, s).map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        prop_assert_eq!(reg_after(&im, loc, 4, reg)?, s);
        Ok(())
    }));
}

// -- the oracle itself --------------------------------------------------------------

#[test]
fn oracle_decodes_known_encodings() {
    // adrp x0, <page - 1> ; add x0, x0, #0xff8 at 0x10000_1000: x0 = 0x1_0000_0ff8.
    let code = 0x1_0000_1000u64;
    let adrp = 0x9000_0000 | (3 << 29) | (0x7ffff << 5); // immhi:immlo = -1
    let add = 0x9100_0000 | (0xff8 << 10);
    let im = Image::new(code, a64_code(&[adrp, add], 0), 0x1000, vec![]);
    assert_eq!(reg_after(&im, code, 2, 0).unwrap(), 0x1_0000_0ff8);
    // b .-8
    let im = Image::new(code, a64_code(&[B | 0x3ff_fffe], 0), 0x1000, vec![]);
    assert_eq!(execute(&im, code, 1), Ok(Outcome::Branch(code - 8)));
    // iced: call rel32 and a RIP-relative load.
    let im = Image::new(code, vec![0xe8, 0xfb, 0xff, 0xff, 0xff, 0x48, 0x8b, 0x05, 1, 0, 0, 0], 0x1000, vec![]);
    assert_eq!(decode(&im, code, 64).near_branch_target(), code);
    assert_eq!(decode(&im, code + 5, 64).ip_rel_memory_address(), code + 12 + 1);
}

// -- the generators reach every branch -------------------------------------------

fn sample<S: Strategy>(strategy: S, n: usize) -> Vec<S::Value> {
    use proptest::strategy::ValueTree;
    let mut runner = TestRunner::deterministic();
    (0..n).map(|_| strategy.new_tree(&mut runner).unwrap().current()).collect()
}

#[test]
fn rx_cases_hit_relaxed_and_unrelaxed_forms_of_every_template() {
    let mut seen = std::collections::BTreeSet::new();
    for c in sample(rx_case(), 4000) {
        let (mut relaxed, mut plain) = (c.image.clone(), c.image.clone());
        Ports.patch(PatchFn::X86_64_32rx, &mut relaxed, c.location, c.slot - 4).unwrap();
        Ports.patch(PatchFn::P32r, &mut plain, c.location, c.slot - 4).unwrap();
        seen.insert((c.tpl.name, relaxed != plain));
    }
    for t in RX_TEMPLATES {
        assert!(seen.contains(&(t.name, false)), "{} never stayed a GOT load", t.name);
        assert_eq!(seen.contains(&(t.name, true)), t.relax != Relax::Never, "{}", t.name);
    }
}

#[test]
fn rel_and_branch_cases_hit_both_success_and_assert() {
    let rel: Vec<bool> = sample(rel_case(), 500)
        .into_iter()
        .map(|c| Ports.patch(PatchFn::P32r, &mut c.image.clone(), c.location, c.value()).is_ok())
        .collect();
    assert!(rel.contains(&true) && rel.contains(&false));
    let br: Vec<bool> = sample(branch_case(), 500)
        .into_iter()
        .map(|(mut im, loc, s, _)| Ports.patch(PatchFn::Aarch64_26r, &mut im, loc, s).is_ok())
        .collect();
    assert!(br.contains(&true) && br.contains(&false));
}

#[test]
fn got_cases_hit_every_33rx_relaxation() {
    let mut kinds = std::collections::BTreeSet::new();
    for c in sample(got_case(), 2000) {
        let mut im = c.image.clone();
        Ports.patch(PatchFn::Aarch64_33rx, &mut im, c.loc, c.slot).unwrap();
        let (a, b) = (im.read_u32(c.loc).unwrap(), im.read_u32(c.loc + 4).unwrap());
        kinds.insert(match (a >> 24, b) {
            (0xd2, 0xd503_201f) => "movz; nop",
            (0xd2, _) => "movz; movk",
            (0x58, _) => "ldr literal; nop",
            _ => "adrp; ldr",
        });
    }
    assert_eq!(kinds.len(), 4, "{kinds:?}");
}
