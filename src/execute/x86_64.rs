//! x86-64 and i686: what a relocation site does (decoded with iced-x86), the
//! register convention stencils are entered with, and the machine facts the
//! Unicorn engine (`execute::unicorn`) needs to run them: registers, how
//! `call` and `ret` use the stack, and how the last instruction before
//! leaving the code is classified. One machine, [`X86`], at 64 or 32 bits:
//! the two differ in word size, registers and where a function's arguments
//! arrive, not in how an instruction's fields are read.

use super::unicorn::{ensure_mapped, le, AddressSource, Machine, RunState, Transfer, UnicornEngine};
use super::{entered_by_call, CAbi, Convention, ExitKind, SiteObservation, CDECL_I686};
use crate::model::{hex_bytes, truncate, Effect, Stencil, StencilSet};
use crate::patch::Image;
use crate::target::{i686, x86_64::USER_SPACE};
use iced_x86::{
    ConstantOffsets, Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, Mnemonic, OpAccess,
    OpKind, Register,
};
use unicorn_engine::unicorn_const::{Arch, Mode};
use unicorn_engine::{RegisterX86, Unicorn};

pub use super::{DEMAND_PAGE_LIMIT, RETURN_SENTINEL};

/// Read the convention off the trampoline: it moves the C arguments
/// (frame, stack_pointer, tstate: rdi, rsi, rdx in System V; rcx, rdx, r8
/// on Windows) into the registers uops expect. Falls back to 3.13's GHC
/// default (DOMAIN.md §5) when there is no trampoline.
pub fn convention(set: &StencilSet, c_abi: CAbi) -> Convention {
    let default = Convention { frame: "r13", stack_pointer: "rbp", tstate: "r12", source: "default", c_abi };
    let Some(tramp) = set.stencils.iter().find(|s| entered_by_call(s)) else {
        return default;
    };
    let mut found: [Option<&'static str>; 3] = [None; 3];
    for insn in &tramp.instructions {
        // objdump's AT&T spelling: `movq %rdi, %r13` moves rdi into r13.
        let Some(operands) = insn.text.strip_prefix("movq") else { continue };
        let Some((src, dst)) = operands.split_once(',') else { continue };
        let Some(slot) = c_abi.args.iter().position(|a| src.trim().strip_prefix('%') == Some(a)) else { continue };
        if let Some(reg) = gpr_name(dst.trim().trim_start_matches('%')) {
            found[slot].get_or_insert(reg);
        }
    }
    match found {
        [Some(frame), Some(stack_pointer), Some(tstate)] => {
            Convention { frame, stack_pointer, tstate, source: "trampoline", c_abi }
        }
        _ => default,
    }
}

/// CPython 3.13 on i686 enters uops with GHC's 32-bit convention (LLVM's
/// `CC_X86_32_GHC`: ebx, ebp, edi for the first three arguments), as its
/// trampoline shows.
const DEFAULT_CONVENTION_I686: Convention =
    Convention { frame: "ebx", stack_pointer: "ebp", tstate: "edi", source: "default", c_abi: CDECL_I686 };

/// Read the i686 convention off the trampoline: a cdecl function whose
/// arguments frame, stack_pointer, tstate sit on the stack above the return
/// address. Follows `pushl`s (each moves the arguments 4 bytes further from
/// `esp`), `movl N(%esp), %reg` (argument (N − 4·pushes − 4)/4 into reg) and
/// `movl %src, %dst` (the argument moves along) up to the first call, the
/// one into the first uop; each argument's register is the last it moved to.
pub fn convention_i686(set: &StencilSet) -> Convention {
    let Some(tramp) = set.stencils.iter().find(|s| entered_by_call(s)) else {
        return DEFAULT_CONVENTION_I686;
    };
    let mut pushes: i64 = 0;
    let mut holds: Vec<(&'static str, usize)> = Vec::new();
    let mut found: [Option<&'static str>; 3] = [None; 3];
    for insn in &tramp.instructions {
        let mut words = insn.text.split_whitespace();
        let (Some(mnemonic), operands) = (words.next(), words.collect::<String>()) else { continue };
        match mnemonic {
            "pushl" => pushes += 1,
            "calll" => break,
            "movl" => {
                let Some((src, dst)) = operands.split_once(',') else { continue };
                let Some(dst) = GPRS32.iter().map(|(n, _)| *n).find(|n| dst.strip_prefix('%') == Some(n)) else {
                    continue;
                };
                // The destination no longer holds what it held.
                holds.retain(|(r, _)| *r != dst);
                let arg = if let Some(off) = src.strip_suffix("(%esp)") {
                    parse_displacement(off)
                        .map(|o| (o - 4 * pushes - 4) / 4)
                        .filter(|a| (0..3).contains(a))
                        .map(|a| a as usize)
                } else {
                    let src = src.strip_prefix('%').unwrap_or(src);
                    holds.iter().find(|(r, _)| *r == src).map(|(_, a)| *a)
                };
                if let Some(arg) = arg {
                    holds.push((dst, arg));
                    found[arg] = Some(dst);
                }
            }
            _ => {}
        }
    }
    match found {
        [Some(frame), Some(stack_pointer), Some(tstate)] => {
            Convention { frame, stack_pointer, tstate, source: "trampoline", c_abi: CDECL_I686 }
        }
        _ => DEFAULT_CONVENTION_I686,
    }
}

/// `0x14`, `-0x8`, `` (none): an AT&T displacement.
fn parse_displacement(s: &str) -> Option<i64> {
    let (negative, digits) = s.strip_prefix('-').map_or((false, s), |d| (true, d));
    let value = match digits {
        "" => 0,
        d => i64::from_str_radix(d.strip_prefix("0x")?, 16).ok()?,
    };
    Some(if negative { -value } else { value })
}

/// The eight 32-bit general registers, Unicorn's names for them.
const GPRS32: [(&str, RegisterX86); 8] = [
    ("eax", RegisterX86::EAX),
    ("ebx", RegisterX86::EBX),
    ("ecx", RegisterX86::ECX),
    ("edx", RegisterX86::EDX),
    ("esi", RegisterX86::ESI),
    ("edi", RegisterX86::EDI),
    ("ebp", RegisterX86::EBP),
    ("esp", RegisterX86::ESP),
];

const GPRS: [(&str, RegisterX86); 16] = [
    ("rax", RegisterX86::RAX),
    ("rbx", RegisterX86::RBX),
    ("rcx", RegisterX86::RCX),
    ("rdx", RegisterX86::RDX),
    ("rsi", RegisterX86::RSI),
    ("rdi", RegisterX86::RDI),
    ("rbp", RegisterX86::RBP),
    ("rsp", RegisterX86::RSP),
    ("r8", RegisterX86::R8),
    ("r9", RegisterX86::R9),
    ("r10", RegisterX86::R10),
    ("r11", RegisterX86::R11),
    ("r12", RegisterX86::R12),
    ("r13", RegisterX86::R13),
    ("r14", RegisterX86::R14),
    ("r15", RegisterX86::R15),
];

fn gpr_name(name: &str) -> Option<&'static str> {
    GPRS.iter().find(|(n, _)| *n == name).map(|(n, _)| *n)
}

fn gpr(name: &str) -> RegisterX86 {
    GPRS.iter().chain(&GPRS32).find(|(n, _)| *n == name).map(|(_, r)| *r).unwrap_or(RegisterX86::RAX)
}

/// cdecl: eax (the return value), ecx and edx are the callee's to clobber.
/// Caller-saved registers a C callee may leave anything in.
/// The Unicorn register for an iced register (for effective addresses), at
/// `bits` (in 32-bit mode Unicorn has only the 32-bit registers).
fn uc_register(r: Register, bits: u32) -> Option<(RegisterX86, u64)> {
    let full = r.full_register();
    let mask = match r.size() {
        8 => u64::MAX,
        4 => u32::MAX as u64,
        2 => u16::MAX as u64,
        _ => return None,
    };
    let reg = match full {
        Register::RAX => RegisterX86::RAX,
        Register::RBX => RegisterX86::RBX,
        Register::RCX => RegisterX86::RCX,
        Register::RDX => RegisterX86::RDX,
        Register::RSI => RegisterX86::RSI,
        Register::RDI => RegisterX86::RDI,
        Register::RBP => RegisterX86::RBP,
        Register::RSP => RegisterX86::RSP,
        Register::R8 => RegisterX86::R8,
        Register::R9 => RegisterX86::R9,
        Register::R10 => RegisterX86::R10,
        Register::R11 => RegisterX86::R11,
        Register::R12 => RegisterX86::R12,
        Register::R13 => RegisterX86::R13,
        Register::R14 => RegisterX86::R14,
        Register::R15 => RegisterX86::R15,
        _ => return None,
    };
    if bits == 32 {
        let name = GPRS.iter().find(|(_, g)| *g == reg)?.0;
        let reg = GPRS32.iter().find(|(n, _)| n[1..] == name[1..])?.1;
        return Some((reg, mask & u32::MAX as u64));
    }
    Some((reg, mask))
}

pub(crate) fn decode(bytes: &[u8], ip: u64, bits: u32) -> (Instruction, ConstantOffsets) {
    let mut decoder = Decoder::with_ip(bits, bytes, ip, DecoderOptions::NONE);
    let insn = decoder.decode();
    let offsets = decoder.get_constant_offsets(&insn);
    (insn, offsets)
}

/// The target of a direct (near) branch or call.
pub fn branch_target(bytes: &[u8], ip: u64) -> Option<u64> {
    branch_target_at(bytes, ip, 64)
}

/// [`branch_target`] at `bits` (64 or 32).
pub fn branch_target_at(bytes: &[u8], ip: u64, bits: u32) -> Option<u64> {
    let (insn, _) = decode(bytes, ip, bits);
    matches!(insn.op0_kind(), OpKind::NearBranch64 | OpKind::NearBranch32).then(|| insn.near_branch_target())
}

/// The instruction's mnemonic (what a relaxation changes).
pub fn mnemonic(bytes: &[u8], ip: u64) -> Mnemonic {
    mnemonic_at(bytes, ip, 64)
}

/// [`mnemonic`] at `bits`.
pub fn mnemonic_at(bytes: &[u8], ip: u64, bits: u32) -> Mnemonic {
    decode(bytes, ip, bits).0.mnemonic()
}

pub fn transfer_class(bytes: &[u8], ip: u64) -> super::TransferClass {
    transfer_class_at(bytes, ip, 64)
}

/// [`transfer_class`] at `bits`.
pub fn transfer_class_at(bytes: &[u8], ip: u64, bits: u32) -> super::TransferClass {
    use super::TransferClass;
    let (insn, _) = decode(bytes, ip, bits);
    match insn.flow_control() {
        FlowControl::Call | FlowControl::IndirectCall => TransferClass::Call,
        FlowControl::UnconditionalBranch | FlowControl::IndirectBranch => TransferClass::Jump,
        _ => TransferClass::Other,
    }
}

/// Format an instruction the way reports show it (Intel syntax, like iced's default).
pub fn format_at(bytes: &[u8], ip: u64) -> String {
    format_with(bytes, ip, 64)
}

/// [`format_at`] at `bits`.
pub fn format_with(bytes: &[u8], ip: u64, bits: u32) -> String {
    use iced_x86::{Formatter, IntelFormatter};
    let (insn, _) = decode(bytes, ip, bits);
    if insn.is_invalid() {
        return format!("(invalid) {}", hex_bytes(&bytes[..bytes.len().min(8)]));
    }
    let mut out = String::new();
    let mut f = IntelFormatter::new();
    f.options_mut().set_rip_relative_addresses(true);
    f.format(&insn, &mut out);
    out
}

/// What evaluating a site told us.
enum Evaluation {
    Known(Effect),
    /// The field is not a displacement, branch or immediate of `insn`.
    NotAnOperand,
    /// It is, but its effect needs a register or memory we cannot read here.
    Unknown,
}

/// What `insn` does with the field that starts `field` bytes into it.
/// `reg` gives register values (None: unknown, e.g. statically); `mem` reads
/// memory (None: unreadable).
fn site_effect(
    insn: &Instruction,
    offsets: &ConstantOffsets,
    field: usize,
    mut reg: impl FnMut(Register) -> Option<u64>,
    mut mem: impl FnMut(u64, usize) -> Option<u64>,
) -> Evaluation {
    use Evaluation::{Known, NotAnOperand, Unknown};
    let near_branch = matches!(insn.op0_kind(), OpKind::NearBranch64 | OpKind::NearBranch32);
    let mem_op = (0..insn.op_count()).find(|&i| insn.op_kind(i) == OpKind::Memory);
    let in_disp = offsets.has_displacement() && offsets.displacement_offset() == field;
    let in_imm = offsets.has_immediate() && offsets.immediate_offset() == field;
    if near_branch && (in_imm || in_disp || field + 4 == insn.len()) {
        return Known(Effect::Transfer { target: insn.near_branch_target(), slot: None });
    }
    if in_disp {
        let Some(op) = mem_op else { return NotAnOperand };
        // 32-bit code has no RIP-relative addressing, so absolute fields sit
        // in based and indexed operands (`call [eax*4 + _PyEval_BinaryOps]`,
        // i686's tables): the field is the displacement alone, the registers
        // are the run's. (In long mode CPython's stencils are PIC: a based
        // absolute displacement is judged by the address it forms.)
        let indexed = insn.memory_index() != Register::None || insn.memory_base() != Register::None;
        if insn.code_size() == iced_x86::CodeSize::Code32 && indexed {
            let bits = offsets.displacement_size() as u32 * 8;
            return Known(Effect::Displacement { value: truncate(insn.memory_displacement64(), bits), bits });
        }
        let address = insn.virtual_address(op, 0, |r, _, _| match r {
            Register::ES | Register::CS | Register::SS | Register::DS => Some(0),
            _ => reg(r),
        });
        let Some(address) = address else { return Unknown };
        let flow = insn.flow_control();
        if matches!(flow, FlowControl::IndirectBranch | FlowControl::IndirectCall) {
            // A pointer: 8 bytes in long mode, 4 at 32 bits.
            return match mem(address, insn.memory_size().size().clamp(1, 8)) {
                Some(target) => Known(Effect::Transfer { target, slot: Some(address) }),
                None => Unknown,
            };
        }
        if insn.mnemonic() == Mnemonic::Lea {
            let bits = insn.op0_register().size() as u32 * 8;
            return Known(Effect::Address { value: truncate(address, bits), bits });
        }
        let size = insn.memory_size().size().clamp(1, 8);
        let mut info = InstructionInfoFactory::new();
        let reads =
            info.info(insn).used_memory().iter().any(|m| matches!(m.access(), OpAccess::Read | OpAccess::CondRead));
        if reads {
            let bits = size as u32 * 8;
            return match mem(address, size) {
                Some(value) => Known(Effect::Load { address, value, bits }),
                None => Unknown,
            };
        }
        return Known(Effect::MemoryOperand { address });
    }
    if in_imm {
        let op = (0..insn.op_count()).find(|&i| {
            matches!(
                insn.op_kind(i),
                OpKind::Immediate64
                    | OpKind::Immediate32
                    | OpKind::Immediate32to64
                    | OpKind::Immediate16
                    | OpKind::Immediate8to64
                    | OpKind::Immediate8to32
            )
        });
        let Some(op) = op else { return NotAnOperand };
        let bits = match insn.op_kind(op) {
            OpKind::Immediate32 => 32,
            OpKind::Immediate16 => 16,
            _ => 64,
        };
        return Known(Effect::Immediate { value: insn.immediate(op), bits });
    }
    NotAnOperand
}

impl Evaluation {
    /// As an observation: `None` for a mangled site, skipped when unknown.
    fn observation(self) -> Option<Option<Effect>> {
        match self {
            Evaluation::Known(e) => Some(Some(e)),
            Evaluation::NotAnOperand => Some(None),
            Evaluation::Unknown => None,
        }
    }
}

/// Decode forward from `start` until an instruction covers `field_addr`.
fn instruction_covering(
    read: impl Fn(u64, usize) -> Option<Vec<u8>>,
    start: u64,
    field_addr: u64,
    bits: u32,
) -> Option<(Instruction, ConstantOffsets)> {
    let mut pc = start;
    for _ in 0..4 {
        let bytes = read(pc, 15)?;
        let (insn, offsets) = decode(&bytes, pc, bits);
        if insn.is_invalid() {
            return None;
        }
        if (pc..pc + insn.len() as u64).contains(&field_addr) {
            return Some((insn, offsets));
        }
        pc += insn.len() as u64;
        if pc > field_addr {
            return None;
        }
    }
    None
}

/// Judge-ready observations of every site on the patched image, without
/// running it. Register-dependent operands cannot be evaluated and are left
/// to the runs.
pub fn static_sites(stencil: &Stencil, image: &Image) -> Vec<SiteObservation> {
    static_sites_at(stencil, image, 64)
}

/// [`static_sites`] at `bits`.
pub fn static_sites_at(stencil: &Stencil, image: &Image, bits: u32) -> Vec<SiteObservation> {
    let read = |a: u64, n: usize| -> Option<Vec<u8>> {
        // The image may end within 15 bytes: read what there is.
        let avail = (image.code_addr + image.code.len() as u64).saturating_sub(a).min(n as u64) as usize;
        image.read(a, avail).map(|b| b.to_vec())
    };
    let mut out = Vec::new();
    for (i, reloc) in stencil.relocations.iter().enumerate() {
        let field_addr = image.code_addr + reloc.offset;
        let start = stencil.instruction_at(reloc.offset).map(|x| x.offset).unwrap_or(reloc.offset);
        let Some((insn, offsets)) = instruction_covering(read, image.code_addr + start, field_addr, bits) else {
            out.push(SiteObservation { relocation: i, pc: image.code_addr + start, len: 0, effect: None });
            continue;
        };
        let field = (field_addr - insn.ip()) as usize;
        // Registers are unknown statically; memory outside the image too:
        // such sites are left to the runs.
        let evaluation = site_effect(&insn, &offsets, field, |_| None, |a, n| image.read(a, n).map(le));
        if let Some(effect) = evaluation.observation() {
            out.push(SiteObservation { relocation: i, pc: insn.ip(), len: insn.len() as u32, effect });
        }
    }
    out
}

/// The x86-64 Unicorn engine.
pub type UnicornX86 = UnicornEngine<X86>;
/// The i686 Unicorn engine (protected mode, flat 4 GiB).
pub type UnicornI686 = UnicornEngine<X86<32>>;

/// x86 for [`UnicornEngine`]: long mode (`BITS` 64) or 32-bit protected mode.
pub struct X86<const BITS: u32 = 64>;

const GPR_REGS: [RegisterX86; 16] = {
    let mut out = [RegisterX86::RAX; 16];
    let mut i = 0;
    while i < 16 {
        out[i] = GPRS[i].1;
        i += 1;
    }
    out
};

const GPR_REGS32: [RegisterX86; 8] = {
    let mut out = [RegisterX86::EAX; 8];
    let mut i = 0;
    while i < 8 {
        out[i] = GPRS32[i].1;
        i += 1;
    }
    out
};

impl<const BITS: u32> X86<BITS> {
    fn read_word(uc: &Unicorn<'_, RunState>, addr: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        uc.mem_read(addr, &mut b[..<Self as Machine>::WORD as usize]).ok()?;
        Some(u64::from_le_bytes(b))
    }
}

impl<const BITS: u32> Machine for X86<BITS> {
    type Reg = RegisterX86;
    const NAME: &'static str = if BITS == 64 { "x86-64" } else { "x86-32" };
    const ARCH: Arch = Arch::X86;
    const MODE: Mode = if BITS == 64 { Mode::MODE_64 } else { Mode::MODE_32 };
    const USER_END: u64 = if BITS == 64 { USER_SPACE.end } else { i686::USER_SPACE.end };
    /// `int3`.
    const GUARD: [u8; 4] = [0xcc; 4];
    const MAX_INSN: usize = 15;
    const SITE_LOOKBACK: u64 = 14;
    const SP: RegisterX86 = if BITS == 64 { RegisterX86::RSP } else { RegisterX86::ESP };
    const RETURN_VALUE: RegisterX86 = if BITS == 64 { RegisterX86::RAX } else { RegisterX86::EAX };
    const GPRS: &'static [RegisterX86] = if BITS == 64 { &GPR_REGS } else { &GPR_REGS32 };
    /// i686 passes C arguments on the stack ([`CAbi::args`] is unused there).
    const ARGS_ON_STACK: bool = BITS == 32;
    const WORD: u64 = BITS as u64 / 8;

    fn register(name: &str) -> RegisterX86 {
        gpr(name)
    }

    /// `rsp` points at the return-address slot: the sentinel for a function
    /// entry (a uop must never return through it).
    fn enter(uc: &mut Unicorn<'_, RunState>, machine_sp: u64) -> u64 {
        let sp = machine_sp - Self::WORD;
        let _ = uc.reg_write(Self::SP, sp);
        let _ = uc.reg_write(RegisterX86::EFLAGS, 0x202);
        ensure_mapped(uc, sp, Self::WORD as usize);
        let _ = uc.mem_write(sp, &RETURN_SENTINEL.to_le_bytes()[..Self::WORD as usize]);
        sp
    }

    /// `call` pushed the return address.
    fn callee(uc: &mut Unicorn<'_, RunState>) -> Option<(u64, u64)> {
        let sp = uc.reg_read(Self::SP).ok()?;
        Some((sp, Self::read_word(uc, sp)?))
    }

    /// The stub's `ret` pops it.
    fn finish_stub(uc: &mut Unicorn<'_, RunState>, sp: u64) {
        let _ = uc.reg_write(Self::SP, sp + Self::WORD);
    }

    /// Report the stack pointer as it was before `ret` popped.
    fn exit_sp(kind: ExitKind, sp: u64) -> u64 {
        if kind == ExitKind::Return {
            sp.wrapping_sub(Self::WORD)
        } else {
            sp
        }
    }

    fn classify(bytes: &[u8], last_pc: u64, target: u64, st: &RunState) -> Transfer {
        classify_exit(bytes, last_pc, target, &st.fields, BITS)
    }

    /// Privileged (CPL 0, or IOPL-sensitive: `in`, `out`, `cli`, `sti`),
    /// system calls, `hlt`, software interrupts. Unicorn runs in ring 0 and
    /// would execute most of them silently.
    fn forbidden(bytes: &[u8], pc: u64) -> bool {
        forbidden(&decode(bytes, pc, BITS).0)
    }

    fn flow(bytes: &[u8], pc: u64, offset: u32) -> Option<super::Flow> {
        let (insn, _) = decode(bytes, pc, BITS);
        if insn.is_invalid() {
            return None;
        }
        let flow = super::Flow { offset, len: insn.len() as u32, falls_through: true, target: None, steerable: false };
        // `loop` and `jcxz` also count rcx down or test it: not steerable.
        let counts = matches!(
            insn.mnemonic(),
            Mnemonic::Loop | Mnemonic::Loope | Mnemonic::Loopne | Mnemonic::Jcxz | Mnemonic::Jecxz | Mnemonic::Jrcxz
        );
        Some(match insn.flow_control() {
            FlowControl::Next | FlowControl::IndirectCall => flow,
            FlowControl::Call => super::Flow { target: Some(insn.near_branch_target()), ..flow },
            FlowControl::UnconditionalBranch => {
                super::Flow { falls_through: false, target: Some(insn.near_branch_target()), ..flow }
            }
            FlowControl::ConditionalBranch => {
                super::Flow { target: Some(insn.near_branch_target()), steerable: !counts, ..flow }
            }
            _ => super::Flow { falls_through: false, ..flow },
        })
    }

    /// iced-x86 decodes it (and it is no `ud0`/`ud1`/`ud2`): valid x86-64
    /// that Unicorn (QEMU 5's x86, no AVX or AVX-512) cannot run.
    fn invalid(bytes: &[u8], pc: u64) -> super::Fault {
        let (insn, _) = decode(bytes, pc, BITS);
        let undefined = matches!(insn.mnemonic(), Mnemonic::Ud0 | Mnemonic::Ud1 | Mnemonic::Ud2);
        if insn.is_invalid() || undefined {
            super::Fault::InvalidInstruction
        } else {
            super::Fault::Unsupported
        }
    }

    fn site_effect(
        uc: &mut Unicorn<'_, RunState>,
        _relocation: usize,
        addr: u64,
        bytes: &[u8],
        field_addr: u64,
    ) -> Option<Option<Effect>> {
        let regs = |uc: &Unicorn<'_, RunState>, r: Register| {
            uc_register(r, BITS).and_then(|(reg, mask)| uc.reg_read(reg).ok().map(|v| v & mask))
        };
        let mut reads: Vec<(u64, usize)> = Vec::new();
        let wanted = observe_site(
            bytes,
            addr,
            field_addr,
            BITS,
            |r| regs(uc, r),
            |a, n| {
                reads.push((a, n));
                None
            },
        );
        // Reading memory the instruction is about to read: make it exist first.
        if wanted.is_some() && reads.is_empty() {
            return wanted;
        }
        for (a, n) in reads {
            ensure_mapped(uc, a, n);
        }
        observe_site(
            bytes,
            addr,
            field_addr,
            BITS,
            |r| regs(uc, r),
            |a, n| {
                let mut b = vec![0u8; n];
                uc.mem_read(a, &mut b).ok().map(|_| le(&b))
            },
        )
    }

    fn null_access_source(st: &RunState) -> AddressSource {
        let code = &st.code_bytes;
        let decode_at = |offset: usize| {
            let insn = decode(&code[offset..(offset + 15).min(code.len())], st.code.start + offset as u64, BITS).0;
            (insn, st.holds_field(offset, insn.len()))
        };
        let caller_saved = if BITS == 64 { CALLER_SAVED_BITS } else { CALLER_SAVED_BITS32 };
        null_access_source(st.trail().map(decode_at), caller_saved)
    }

    fn debug_registers(uc: &Unicorn<'_, RunState>) -> String {
        let r = |r| uc.reg_read(r).unwrap_or(0);
        if BITS == 32 {
            let all = GPRS32.iter().map(|(n, reg)| format!("{n}={:#x}", r(*reg)));
            return all.collect::<Vec<_>>().join(" ");
        }
        format!(
            "rax={:#x} rbx={:#x} rcx={:#x} r15={:#x} rbp={:#x} rsp={:#x}",
            r(RegisterX86::RAX),
            r(RegisterX86::RBX),
            r(RegisterX86::RCX),
            r(RegisterX86::R15),
            r(RegisterX86::RBP),
            r(RegisterX86::RSP)
        )
    }
}

/// What the instruction in `bytes` at `addr` does with the relocated field
/// at `field_addr`, read off `reg` (live register values) and `read`
/// (memory): `None` when not known (a register or memory could not be
/// read), `Some(None)` when the field is no operand of it. Shared by the
/// Unicorn engine and the native one, so both observe a site alike.
pub(crate) fn observe_site(
    bytes: &[u8],
    addr: u64,
    field_addr: u64,
    bits: u32,
    reg: impl FnMut(Register) -> Option<u64>,
    read: impl FnMut(u64, usize) -> Option<u64>,
) -> Option<Option<Effect>> {
    let (insn, offsets) = decode(bytes, addr, bits);
    let field = (field_addr - addr) as usize;
    site_effect(&insn, &offsets, field, reg, read).observation()
}

/// Was leaving the code for `target` after the instruction in `bytes` (at
/// `last_pc`) a call, a jump, a return or a fall-through? `fields` are the
/// relocated fields' (relocation, address), sorted by address.
pub(crate) fn classify_exit(bytes: &[u8], last_pc: u64, target: u64, fields: &[(usize, u64)], bits: u32) -> Transfer {
    let (insn, _) = decode(bytes, last_pc, bits);
    let end = last_pc + insn.len() as u64;
    let at_site = fields.iter().any(|(_, f)| (last_pc..end).contains(f));
    match insn.flow_control() {
        FlowControl::Call | FlowControl::IndirectCall => Transfer::Call,
        FlowControl::Return => Transfer::Exit(ExitKind::Return, false),
        // Running on past the last instruction, a not-taken branch included.
        FlowControl::Next | FlowControl::ConditionalBranch if target == insn.next_ip() => {
            Transfer::Exit(ExitKind::FallThrough, false)
        }
        FlowControl::IndirectBranch => Transfer::Exit(ExitKind::Jump, !at_site),
        _ => Transfer::Exit(ExitKind::Jump, false),
    }
}

/// Privileged (CPL 0, or IOPL-sensitive: `in`, `out`, `cli`, `sti`),
/// system calls, `hlt`, software interrupts: no stencil may run them.
pub(crate) fn forbidden(insn: &Instruction) -> bool {
    if insn.is_invalid() {
        return false; // the emulator says so itself
    }
    insn.is_privileged()
        || matches!(
            insn.mnemonic(),
            Mnemonic::Hlt
                | Mnemonic::Syscall
                | Mnemonic::Sysenter
                | Mnemonic::Sysexit
                | Mnemonic::Sysret
                | Mnemonic::Int
                | Mnemonic::Int1
                | Mnemonic::Int3
                | Mnemonic::Into
        )
}

/// Bit of a general register (any width) in a set of the 16 full ones;
/// `None` for every other register.
fn gpr_bit(r: Register) -> Option<u16> {
    let full = r.full_register();
    full.is_gpr64().then(|| 1 << (full as u32 - Register::RAX as u32))
}

/// rax, rcx, rdx, rsi, rdi, r8-r11: what a called stub leaves made up.
pub(crate) const CALLER_SAVED_BITS: u16 = 0b0000_1111_1100_0111;
/// eax, ecx, edx: cdecl's.
const CALLER_SAVED_BITS32: u16 = 0b0000_0000_0000_0111;
const RSP_BIT: u16 = 1 << 4;

/// Where the address of the memory access made by the first of `trail` (the
/// instructions run, newest first, each with whether it holds a relocated
/// field) came from. Walks back through the writers of its base and index
/// registers: a zeroing idiom, an immediate, an `lea` of placed addresses or
/// a load from the image's own data is a constant; a load from elsewhere, a
/// call's result, a hole's value (a placed address is never in the NULL
/// page, so it was an operand: a made-up input), anything computed from
/// flags or vector registers, or a register as the run began is made up.
/// Partial and conditional writes keep the register's older value in
/// question too.
pub(crate) fn null_access_source(
    mut trail: impl Iterator<Item = (Instruction, bool)>,
    caller_saved_bits: u16,
) -> AddressSource {
    let mut factory = InstructionInfoFactory::new();
    let Some((access, access_holds_hole)) = trail.next() else { return AddressSource::MadeUp };
    let info = factory.info(&access);
    let Some(memory) = info.used_memory().iter().find(|m| m.access() != OpAccess::NoMemAccess) else {
        return AddressSource::MadeUp;
    };
    // fs/gs: thread-local storage, a part of the process we do not model.
    if matches!(memory.segment(), Register::FS | Register::GS) || memory.base() == Register::RIP {
        return AddressSource::MadeUp;
    }
    let mut wanted = [memory.base(), memory.index()].into_iter().filter_map(gpr_bit).fold(0, |a, b| a | b);
    if wanted == 0 && access_holds_hole {
        return AddressSource::MadeUp; // the address is an operand's
    }
    wanted &= !RSP_BIT; // the stack pointer is placed, never made up
    for (insn, holds_hole) in trail {
        if wanted == 0 {
            return AddressSource::Constant;
        }
        if matches!(insn.flow_control(), FlowControl::Call | FlowControl::IndirectCall) {
            if wanted & caller_saved_bits != 0 {
                return AddressSource::MadeUp;
            }
            continue;
        }
        let info = factory.info(&insn);
        let mut written = 0u16;
        let mut kept = 0u16;
        for used in info.used_registers() {
            let Some(bit) = gpr_bit(used.register()) else { continue };
            match used.access() {
                OpAccess::Write if used.register().size() >= 4 => written |= bit,
                OpAccess::Write | OpAccess::ReadWrite | OpAccess::CondWrite | OpAccess::ReadCondWrite => {
                    written |= bit;
                    kept |= bit;
                }
                _ => {}
            }
        }
        let hit = written & wanted;
        if hit == 0 {
            continue;
        }
        if holds_hole {
            return AddressSource::MadeUp;
        }
        let zeroing = matches!(insn.mnemonic(), Mnemonic::Xor | Mnemonic::Sub)
            && insn.op_count() == 2
            && insn.op0_kind() == OpKind::Register
            && insn.op1_kind() == OpKind::Register
            && insn.op0_register() == insn.op1_register();
        if zeroing {
            wanted &= !hit;
            continue;
        }
        let loads = info.used_memory().iter().filter(|m| {
            matches!(m.access(), OpAccess::Read | OpAccess::CondRead | OpAccess::ReadWrite | OpAccess::ReadCondWrite)
        });
        // The image's own data (RIP-relative) holds placed values; anything else is made up.
        if loads.into_iter().any(|m| m.base() != Register::RIP) {
            return AddressSource::MadeUp;
        }
        if insn.rflags_read() != 0 {
            return AddressSource::MadeUp;
        }
        let mut read = 0u16;
        for used in info.used_registers() {
            if !matches!(
                used.access(),
                OpAccess::Read | OpAccess::CondRead | OpAccess::ReadWrite | OpAccess::ReadCondWrite
            ) {
                continue;
            }
            match gpr_bit(used.register()) {
                Some(bit) => read |= bit,
                None if used.register() == Register::RIP || used.register().is_segment_register() => {}
                // A vector or other register we do not follow.
                None => return AddressSource::MadeUp,
            }
        }
        // Fully written: this instruction's inputs are now in question instead.
        wanted = (wanted & !hit) | (hit & kept) | (read & !RSP_BIT);
    }
    // Registers as the run began hold made-up values (or placed addresses,
    // which are never NULL); a trail cut short gets the benefit of the doubt.
    if wanted == 0 {
        AddressSource::Constant
    } else {
        AddressSource::MadeUp
    }
}
