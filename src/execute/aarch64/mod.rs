//! AArch64: what a relocation site does (decoded by our own small A64
//! decoder, `decode.rs`), the register convention stencils are entered with,
//! and the machine facts the Unicorn engine (`execute::unicorn`) needs: the
//! link register, `bl`/`blr` calls, `b`/`br`/`ret` exits.
//!
//! Every relocated field on AArch64 is a whole 4-byte instruction. When a
//! patch rewrote the instruction into another kind (CPython's
//! `patch_aarch64_33rx` turns `adrp`+`ldr` into `movz`+`nop`, `movz`+`movk`
//! or `ldr` literal+`nop`), the site reports [`Effect::Formed`]: the value the
//! original instruction's destination register holds once the new one ran.

pub mod decode;

use self::decode::{decode, writes, BranchRegKind, Insn, MemOp, MovOp};
use super::unicorn::{ensure_mapped, le, AddressSource, Machine, RunState, Transfer, UnicornEngine};
use super::{
    entered_by_call, Convention, ExitKind, SiteObservation, TransferClass, AAPCS64, AAPCS64_X18_RESERVED,
    RETURN_SENTINEL,
};
use crate::model::{truncate, Effect, Stencil, StencilSet};
use crate::patch::Image;
use crate::target::{ObjectFormat, Target, Version};
use unicorn_engine::unicorn_const::{uc_error, Arch, Arm64CpuModel, Mode};
use unicorn_engine::{RegisterARM64, Unicorn};

/// x0..x30, by number.
const X: [RegisterARM64; 31] = [
    RegisterARM64::X0,
    RegisterARM64::X1,
    RegisterARM64::X2,
    RegisterARM64::X3,
    RegisterARM64::X4,
    RegisterARM64::X5,
    RegisterARM64::X6,
    RegisterARM64::X7,
    RegisterARM64::X8,
    RegisterARM64::X9,
    RegisterARM64::X10,
    RegisterARM64::X11,
    RegisterARM64::X12,
    RegisterARM64::X13,
    RegisterARM64::X14,
    RegisterARM64::X15,
    RegisterARM64::X16,
    RegisterARM64::X17,
    RegisterARM64::X18,
    RegisterARM64::X19,
    RegisterARM64::X20,
    RegisterARM64::X21,
    RegisterARM64::X22,
    RegisterARM64::X23,
    RegisterARM64::X24,
    RegisterARM64::X25,
    RegisterARM64::X26,
    RegisterARM64::X27,
    RegisterARM64::X28,
    RegisterARM64::X29,
    RegisterARM64::X30,
];

const NAMES: [&str; 31] = [
    "x0", "x1", "x2", "x3", "x4", "x5", "x6", "x7", "x8", "x9", "x10", "x11", "x12", "x13", "x14", "x15", "x16", "x17",
    "x18", "x19", "x20", "x21", "x22", "x23", "x24", "x25", "x26", "x27", "x28", "x29", "x30",
];

fn number(name: &str) -> Option<u8> {
    NAMES.iter().position(|n| *n == name).map(|i| i as u8)
}

// Convention ------------------------------------------------------------------

/// 3.13 enters uops with the C convention (x0, x1, x2); 3.14+ with
/// `preserve_none` (x20, x21, x22), DOMAIN.md §5.
fn default_convention(version: Version) -> Convention {
    match version {
        Version::V3_13 => {
            Convention { frame: "x0", stack_pointer: "x1", tstate: "x2", source: "default", c_abi: AAPCS64 }
        }
        Version::V3_14 => {
            Convention { frame: "x20", stack_pointer: "x21", tstate: "x22", source: "default", c_abi: AAPCS64 }
        }
    }
}

/// Read the convention off the trampoline or shim: where the C arguments
/// x0, x1, x2 (frame, stack_pointer, tstate) are when it calls the first uop
/// (its first `bl`/`blr`/`b`). Register moves copy them; any other write
/// loses them. When it moved all three into other registers (the shim's
/// `mov x20, x0`…: the reason it exists), those; else, when they are still
/// where the version's default (then the C convention) has them, that, read
/// off it. Without a trampoline or shim with code, or when it says nothing,
/// the version's default.
pub fn convention(target: Target, set: &StencilSet) -> Convention {
    let c_abi = match target.format {
        ObjectFormat::Elf => AAPCS64,
        ObjectFormat::MachO | ObjectFormat::Coff => AAPCS64_X18_RESERVED,
    };
    let default = Convention { c_abi, ..default_convention(target.version) };
    let Some(entry) = set.stencils.iter().find(|s| entered_by_call(s) && !s.code.is_empty()) else {
        return default;
    };
    let source: &'static str = if entry.name == "shim" { "shim" } else { "trampoline" };
    // holds[r] = Some(k): register r holds argument k.
    let mut holds: [Option<usize>; 31] = [None; 31];
    holds[0] = Some(0);
    holds[1] = Some(1);
    holds[2] = Some(2);
    for chunk in entry.code.chunks_exact(4) {
        let w = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        let insn = decode(w);
        if matches!(insn, Insn::Branch { .. } | Insn::BranchReg { .. }) {
            break;
        }
        // mov xd, xm = orr xd, xzr, xm
        if w & 0xffe0_ffe0 == 0xaa00_03e0 {
            let (rd, rm) = ((w & 31) as usize, ((w >> 16) & 31) as usize);
            if rd < 31 {
                holds[rd] = if rm < 31 { holds[rm] } else { None };
            }
            continue;
        }
        let clobbered = writes(w);
        for (r, h) in holds.iter_mut().enumerate() {
            if clobbered & (1 << r) != 0 {
                *h = None;
            }
        }
    }
    let holder = |k: usize, r: usize| holds[r] == Some(k);
    let moved: Vec<Option<usize>> = (0..3).map(|k| (0..31).find(|&r| r != k && holder(k, r))).collect();
    let wanted = [default.frame, default.stack_pointer, default.tstate].map(|n| number(n).map(usize::from));
    let found: [Option<&'static str>; 3] = if moved.iter().all(Option::is_some) {
        [0, 1, 2].map(|k| moved[k].map(|r| NAMES[r]))
    } else if (0..3).all(|k| wanted[k].is_some_and(|r| holder(k, r))) {
        [0, 1, 2].map(|k| wanted[k].map(|r| NAMES[r]))
    } else {
        [0, 1, 2].map(|k| holder(k, k).then_some(NAMES[k]))
    };
    match found {
        [Some(frame), Some(stack_pointer), Some(tstate)] => Convention { frame, stack_pointer, tstate, source, c_abi },
        _ => default,
    }
}

// Decoding for the target tables ---------------------------------------------------

fn word(bytes: &[u8]) -> Option<u32> {
    bytes.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

pub fn transfer_class(bytes: &[u8], _ip: u64) -> TransferClass {
    match word(bytes).map(decode) {
        Some(Insn::Branch { link: true, .. } | Insn::BranchReg { kind: BranchRegKind::Blr, .. }) => TransferClass::Call,
        Some(Insn::Branch { link: false, .. } | Insn::BranchReg { kind: BranchRegKind::Br, .. }) => TransferClass::Jump,
        _ => TransferClass::Other,
    }
}

/// A direct branch's (taken) target, conditional ones included.
pub fn branch_target(bytes: &[u8], ip: u64) -> Option<u64> {
    word(bytes).and_then(|w| decode(w).branch_target(ip))
}

pub fn format_at(bytes: &[u8], ip: u64) -> String {
    match word(bytes) {
        // Exception generation (`svc`, `hvc`, `smc`, `brk`, `hlt`): named for
        // the findings that report reaching one.
        Some(w) if w & 0xff00_0000 == 0xd400_0000 && exception_name(w).is_some() => {
            format!("{} #{:#x}", exception_name(w).unwrap_or_default(), (w >> 5) & 0xffff)
        }
        Some(w) => decode::format(w, ip),
        None => format!("(truncated) {}", crate::model::hex_bytes(bytes)),
    }
}

/// The exception-generating instruction `w` is, if it is one a stencil may not run.
fn exception_name(w: u32) -> Option<&'static str> {
    match w & 0xffe0_001f {
        0xd400_0001 => Some("svc"),
        0xd400_0002 => Some("hvc"),
        0xd400_0003 => Some("smc"),
        0xd420_0000 => Some("brk"),
        0xd440_0000 => Some("hlt"),
        _ => None,
    }
}

// What a site does ----------------------------------------------------------------

/// What evaluating a site told us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evaluation {
    Known(Effect),
    /// The instruction there does nothing a relocation could have asked for.
    NotAnOperand,
    /// It does, but that needs a register or memory we cannot read here.
    Unknown,
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

/// Register `n` (31: sp when `sp`, else the zero register); `None` when unknown.
pub type Regs<'a> = &'a mut dyn FnMut(u8, bool) -> Option<u64>;
/// `n` bytes of memory at an address, little-endian; `None` when unreadable.
pub type Mem<'a> = &'a mut dyn FnMut(u64, usize) -> Option<u64>;

/// Where a branch to `target` ends up: through a veneer (`ldr xN, #lit;
/// br xN`, CPython's trampolines for far externs) its literal, and the
/// literal's address; through 3.13's inline veneer (`movz/movk xN` ×4;
/// `br xN`) the value it forms; else `target` itself. `image` reads the
/// patched image only (code, trampolines), never made-up memory.
pub fn through_veneer(target: u64, image: Mem) -> (u64, Option<u64>) {
    let word = |a: u64, image: &mut dyn FnMut(u64, usize) -> Option<u64>| image(a, 4).map(|w| decode(w as u32));
    if let Some(to) = inline_veneer(target, image) {
        return (to, None);
    }
    if let Some(Insn::LdrLiteral { op: MemOp::Load, fp: false, size: 3, rt, offset }) = word(target, image) {
        if word(target.wrapping_add(4), image) == Some(Insn::BranchReg { kind: BranchRegKind::Br, rn: rt }) {
            let slot = target.wrapping_add(offset as u64);
            if let Some(to) = image(slot, 8) {
                return (to, Some(slot));
            }
        }
    }
    (target, None)
}

/// `n` bytes of the patched image at `a` (its code or trampolines, never
/// made-up memory), little-endian.
fn read_image(uc: &Unicorn<'_, RunState>, a: u64, n: usize) -> Option<u64> {
    let st = uc.get_data();
    let within = |r: &std::ops::Range<u64>| r.contains(&a) && r.contains(&(a + n as u64 - 1));
    let mut b = vec![0u8; n];
    ((within(&st.trampolines) || within(&st.code)) && uc.mem_read(a, &mut b).is_ok()).then(|| le(&b))
}

/// `movz xN, #a; movk xN, #b, lsl #16; movk xN, #c, lsl #32; movk xN, #d,
/// lsl #48; br xN` at `at`: the address it jumps to.
fn inline_veneer(at: u64, image: Mem) -> Option<u64> {
    let mut value = 0u64;
    let mut reg = None;
    for (k, op) in [MovOp::Z, MovOp::K, MovOp::K, MovOp::K].into_iter().enumerate() {
        match decode(image(at + 4 * k as u64, 4)? as u32) {
            Insn::MovWide { sf: true, op: o, rd, imm16, hw }
                if o == op && hw as usize == k && reg.is_none_or(|r| r == rd) =>
            {
                value |= (imm16 as u64) << (16 * k);
                reg = Some(rd);
            }
            _ => return None,
        }
    }
    match decode(image(at + 16, 4)? as u32) {
        Insn::BranchReg { kind: BranchRegKind::Br, rn } if Some(rn) == reg => Some(value),
        _ => None,
    }
}

fn width(sf: bool) -> u32 {
    if sf {
        64
    } else {
        32
    }
}

/// A load's value as the register receives it.
fn extend(raw: u64, op: MemOp, size: u8) -> u64 {
    let bits = 8u32 << size;
    match op {
        MemOp::LoadSigned { to64 } if bits < 64 => truncate(decode::sext(raw, bits) as u64, width(to64)),
        _ => raw,
    }
}

/// The general register `insn` (at `pc`) writes and the value it leaves
/// there: `Some(None)` when it writes none we follow, `None` when the value
/// needs a register or memory we cannot read.
pub fn result(insn: &Insn, pc: u64, reg: Regs, mem: Mem) -> Option<Option<(u8, u64)>> {
    let to = |rd: u8, v: u64| Some((rd != 31).then_some((rd, v)));
    match *insn {
        Insn::Adrp { rd, imm } => to(rd, (pc & !0xfff).wrapping_add((imm << 12) as u64)),
        Insn::Adr { rd, imm } => to(rd, pc.wrapping_add(imm as u64)),
        Insn::AddSubImm { sf, sub, flags, rd, rn, imm, .. } => {
            if rd == 31 && !flags {
                return Some(None); // sp
            }
            let base = reg(rn, true)?;
            let v = if sub { base.wrapping_sub(imm) } else { base.wrapping_add(imm) };
            to(rd, truncate(v, width(sf)))
        }
        Insn::MovWide { sf, op, rd, imm16, hw } => {
            let shift = 16 * hw as u32;
            let imm = (imm16 as u64) << shift;
            let v = match op {
                MovOp::Z => imm,
                MovOp::N => !imm,
                MovOp::K => (reg(rd, false)? & !(0xffffu64 << shift)) | imm,
            };
            to(rd, truncate(v, width(sf)))
        }
        Insn::LdStImm { op: op @ (MemOp::Load | MemOp::LoadSigned { .. }), fp: false, size, rt, rn, offset } => {
            let address = reg(rn, true)?.wrapping_add(offset);
            to(rt, extend(mem(address, 1 << size)?, op, size))
        }
        Insn::LdrLiteral { op: op @ (MemOp::Load | MemOp::LoadSigned { .. }), fp: false, size, rt, offset } => {
            to(rt, extend(mem(pc.wrapping_add(offset as u64), 1 << size)?, op, size))
        }
        _ => Some(None),
    }
}

/// What the instruction `word` at `pc` does with the relocated field it is;
/// `original` is the word objdump listed at that offset before patching;
/// `image` reads the patched image alone (to follow a branch through a veneer).
pub fn site_effect(word: u32, pc: u64, original: Option<u32>, reg: Regs, mem: Mem, image: Mem) -> Evaluation {
    use Evaluation::{Known, NotAnOperand, Unknown};
    let insn = decode(word);
    if let Some(orig) = original.map(decode).filter(|o| !o.same_kind(&insn)) {
        // Relaxed into another kind: what the original's register now holds.
        let Some(dest) = orig.destination() else { return NotAnOperand };
        let can_form = matches!(
            insn,
            Insn::Nop
                | Insn::MovWide { .. }
                | Insn::Adrp { .. }
                | Insn::Adr { .. }
                | Insn::AddSubImm { .. }
                | Insn::LdStImm { op: MemOp::Load | MemOp::LoadSigned { .. }, fp: false, .. }
                | Insn::LdrLiteral { op: MemOp::Load | MemOp::LoadSigned { .. }, fp: false, .. }
        );
        if !can_form {
            return NotAnOperand;
        }
        return match result(&insn, pc, reg, mem) {
            None => Unknown,
            Some(Some((rd, value))) if rd == dest => Known(Effect::Formed { value }),
            Some(_) => reg(dest, false).map_or(Unknown, |value| Known(Effect::Formed { value })),
        };
    }
    let load = |address: u64, size: u8, mem: Mem| -> Evaluation {
        // 128-bit loads: the low half is what can be judged.
        let n = (1usize << size).min(8);
        match mem(address, n) {
            Some(value) => Known(Effect::Load { address, value, bits: 8 * n as u32 }),
            None => Unknown,
        }
    };
    match insn {
        Insn::Branch { .. } | Insn::BranchCond { .. } | Insn::CompareBranch { .. } | Insn::TestBranch { .. } => {
            let (target, slot) = through_veneer(insn.branch_target(pc).unwrap_or(0), image);
            Known(Effect::Transfer { target, slot })
        }
        Insn::Adrp { imm, .. } => {
            Known(Effect::Address { value: (pc & !0xfff).wrapping_add((imm << 12) as u64), bits: 64 })
        }
        Insn::Adr { imm, .. } => Known(Effect::Address { value: pc.wrapping_add(imm as u64), bits: 64 }),
        Insn::AddSubImm { sf, sub, rn, imm, .. } => match reg(rn, true) {
            Some(base) => {
                let v = if sub { base.wrapping_sub(imm) } else { base.wrapping_add(imm) };
                Known(Effect::Address { value: truncate(v, width(sf)), bits: width(sf) })
            }
            None => Unknown,
        },
        Insn::LdStImm { op, size, rn, offset, .. } => {
            let Some(base) = reg(rn, true) else { return Unknown };
            let address = base.wrapping_add(offset);
            match op {
                MemOp::Load | MemOp::LoadSigned { .. } => load(address, size, mem),
                MemOp::Store | MemOp::Prefetch => Known(Effect::MemoryOperand { address }),
            }
        }
        Insn::LdrLiteral { op, size, offset, .. } => {
            let address = pc.wrapping_add(offset as u64);
            match op {
                MemOp::Prefetch | MemOp::Store => Known(Effect::MemoryOperand { address }),
                _ => load(address, size, mem),
            }
        }
        Insn::MovWide { imm16, hw, .. } => {
            Known(Effect::Immediate { value: (imm16 as u64) << (16 * hw as u32), bits: 64 })
        }
        Insn::Nop | Insn::BranchReg { .. } | Insn::Other(_) => NotAnOperand,
    }
}

// Static observations -------------------------------------------------------------

/// How far back (in instructions) a register's value is followed statically.
const TRACK_WINDOW: u64 = 16;

/// The patched code, with every offset some direct branch in it lands on.
struct Code<'a> {
    image: &'a Image,
    targets: Vec<bool>,
}

impl Code<'_> {
    fn word(&self, offset: u64) -> Option<u32> {
        self.image.read_u32(self.image.code_addr + offset)
    }

    /// The value register `n` holds just before the instruction at `at`
    /// runs, when a straight line of code from an `adrp`/`adr`/`movz`/`movk`/
    /// `ldr` literal (within [`TRACK_WINDOW`] instructions, no branch landing
    /// in between, nothing else writing `n`) decides it.
    fn value_before(&self, at: u64, n: u8, depth: u32) -> Option<u64> {
        if n == 31 || depth == 0 {
            return None;
        }
        for k in 1..=TRACK_WINDOW {
            let p = at.checked_sub(4 * k)?;
            // Another path reaches the instructions after p.
            if self.targets.get((p + 4) as usize).copied().unwrap_or(true) {
                return None;
            }
            let w = self.word(p)?;
            let insn = decode(w);
            if insn.is_unconditional_transfer() {
                return None;
            }
            if writes(w) & (1 << n) == 0 {
                continue;
            }
            let sets = match insn {
                Insn::Adrp { rd, .. } | Insn::Adr { rd, .. } => rd == n,
                Insn::MovWide { rd, .. } => rd == n,
                Insn::LdrLiteral { op: MemOp::Load | MemOp::LoadSigned { .. }, fp: false, rt, .. } => rt == n,
                _ => false,
            };
            if !sets {
                return None;
            }
            let pc = self.image.code_addr + p;
            let mut reg = |r: u8, _sp: bool| if r == n { self.value_before(p, n, depth - 1) } else { None };
            let mut mem = |a: u64, len: usize| self.image.read(a, len).map(le);
            return match result(&insn, pc, &mut reg, &mut mem) {
                Some(Some((rd, v))) if rd == n => Some(v),
                _ => None,
            };
        }
        None
    }
}

/// Judge-ready observations of every site on the patched image, without
/// running it: sites whose operands are the image alone, or registers a
/// straight line of code just set (`adrp` then `ldr`/`add`, `movz` then
/// `nop`/`movk`). The rest is left to the runs.
pub fn static_sites(stencil: &Stencil, image: &Image) -> Vec<SiteObservation> {
    let len = image.code.len() as u64;
    let mut targets = vec![false; len as usize + 1];
    for off in (0..len.saturating_sub(3)).step_by(4) {
        let Some(w) = image.read_u32(image.code_addr + off) else { continue };
        if let Some(t) = decode(w).branch_target(image.code_addr + off) {
            if let Some(o) = t.checked_sub(image.code_addr).filter(|o| *o <= len) {
                targets[o as usize] = true;
            }
        }
    }
    let code = Code { image, targets };
    let mut out = Vec::new();
    for (i, reloc) in stencil.relocations.iter().enumerate() {
        let original = stencil.instruction_at(reloc.offset);
        let offset = original.map_or(reloc.offset, |o| o.offset) & !3;
        let pc = image.code_addr + offset;
        let Some(w) = code.word(offset) else {
            out.push(SiteObservation { relocation: i, pc, len: 0, effect: None });
            continue;
        };
        let original = original.and_then(|o| word(&o.bytes));
        let mut reg = |r: u8, sp: bool| if sp && r == 31 { None } else { code.value_before(offset, r, 4) };
        let mut mem = |a: u64, n: usize| image.read(a, n).map(le);
        let mut only_image = |a: u64, n: usize| image.read(a, n).map(le);
        if let Some(effect) = site_effect(w, pc, original, &mut reg, &mut mem, &mut only_image).observation() {
            out.push(SiteObservation { relocation: i, pc, len: 4, effect });
        }
    }
    out
}

// The machine ---------------------------------------------------------------------

/// The ARM64 Unicorn engine.
pub type UnicornArm64 = UnicornEngine<Arm64>;

/// AArch64 for [`UnicornEngine`].
pub struct Arm64;

/// Linux's 48-bit user space.
const USER_END: u64 = 0x0001_0000_0000_0000;

fn read_reg(uc: &Unicorn<'_, RunState>, n: u8, sp: bool) -> Option<u64> {
    match n {
        31 if sp => uc.reg_read(RegisterARM64::SP).ok(),
        31 => Some(0),
        n => uc.reg_read(X[n as usize]).ok(),
    }
}

impl Machine for Arm64 {
    type Reg = RegisterARM64;
    const NAME: &'static str = "ARM64";
    const ARCH: Arch = Arch::ARM64;
    const MODE: Mode = Mode::ARM;
    const USER_END: u64 = USER_END;
    /// `udf #0`.
    const GUARD: [u8; 4] = [0; 4];
    const MAX_INSN: usize = 4;
    const SITE_LOOKBACK: u64 = 0;
    const SP: RegisterARM64 = RegisterARM64::SP;
    const RETURN_VALUE: RegisterARM64 = RegisterARM64::X0;
    const GPRS: &'static [RegisterARM64] = &X;
    const USES_ORIGINALS: bool = true;
    const ZERO_PADDING: bool = true;
    const TRACKS_REGISTERS: bool = true;

    fn register(name: &str) -> RegisterARM64 {
        number(name).map_or(RegisterARM64::X0, |n| X[n as usize])
    }

    /// The most capable CPU (stencils may use any extension clang chose),
    /// FP/SIMD enabled (CPACR_EL1.FPEN = 0b11).
    fn init(uc: &mut Unicorn<'_, RunState>) -> Result<(), String> {
        uc.ctl_set_cpu_model(Arm64CpuModel::MAX as i32).map_err(|e| format!("CPU model: {e:?}"))?;
        let cpacr = uc.reg_read(RegisterARM64::CPACR_EL1).map_err(|e| format!("CPACR_EL1: {e:?}"))?;
        uc.reg_write(RegisterARM64::CPACR_EL1, cpacr | (3 << 20)).map_err(|e| format!("CPACR_EL1: {e:?}"))
    }

    /// sp 16-byte aligned; x30 = the sentinel, so a `ret` leaves the trace.
    fn enter(uc: &mut Unicorn<'_, RunState>, machine_sp: u64) -> u64 {
        let sp = machine_sp & !0xf;
        let _ = uc.reg_write(RegisterARM64::SP, sp);
        let _ = uc.reg_write(RegisterARM64::X30, RETURN_SENTINEL);
        let _ = uc.reg_write(RegisterARM64::NZCV, 0);
        sp
    }

    /// `bl`/`blr` left the return address in x30.
    fn callee(uc: &mut Unicorn<'_, RunState>) -> Option<(u64, u64)> {
        let sp = uc.reg_read(RegisterARM64::SP).ok()?;
        let lr = uc.reg_read(RegisterARM64::X30).ok()?;
        Some((sp, lr))
    }

    /// The stub's `ret` changes nothing but the pc.
    fn finish_stub(_uc: &mut Unicorn<'_, RunState>, _sp: u64) {}

    fn exit_sp(_kind: ExitKind, sp: u64) -> u64 {
        sp
    }

    fn flow(bytes: &[u8], pc: u64, offset: u32) -> Option<super::Flow> {
        let insn = decode(word(bytes)?);
        let flow = super::Flow { offset, len: 4, falls_through: true, target: None, steerable: false };
        Some(match insn {
            Insn::Branch { link, .. } => super::Flow { falls_through: link, target: insn.branch_target(pc), ..flow },
            Insn::BranchCond { .. } | Insn::CompareBranch { .. } | Insn::TestBranch { .. } => {
                super::Flow { target: insn.branch_target(pc), steerable: true, ..flow }
            }
            Insn::BranchReg { kind: BranchRegKind::Blr, .. } => flow,
            Insn::BranchReg { .. } => super::Flow { falls_through: false, ..flow },
            _ => flow,
        })
    }

    fn classify(bytes: &[u8], last_pc: u64, target: u64, st: &RunState) -> Transfer {
        let Some(w) = word(bytes) else { return Transfer::Exit(ExitKind::Jump, false) };
        let insn = decode(w);
        let next = last_pc.wrapping_add(4);
        match insn {
            Insn::Branch { link: true, .. } | Insn::BranchReg { kind: BranchRegKind::Blr, .. } => Transfer::Call,
            Insn::BranchReg { kind: BranchRegKind::Ret, .. } => Transfer::Exit(ExitKind::Return, false),
            // Through a register: a relocation's value, or run-time data.
            // Out of an inline veneer a `bl` entered: that `bl`'s call.
            Insn::BranchReg { kind: BranchRegKind::Br, .. } if st.linked_into_code => Transfer::Call,
            Insn::BranchReg { kind: BranchRegKind::Br, rn } => {
                Transfer::Exit(ExitKind::Jump, rn == 31 || st.formed & (1 << rn) == 0)
            }
            Insn::Branch { link: false, .. } => Transfer::Exit(ExitKind::Jump, false),
            // A conditional branch not taken runs off the end.
            Insn::BranchCond { .. } | Insn::CompareBranch { .. } | Insn::TestBranch { .. }
                if target == next && insn.branch_target(last_pc) != Some(next) =>
            {
                Transfer::Exit(ExitKind::FallThrough, false)
            }
            Insn::BranchCond { .. } | Insn::CompareBranch { .. } | Insn::TestBranch { .. } => {
                Transfer::Exit(ExitKind::Jump, false)
            }
            _ if target == next => Transfer::Exit(ExitKind::FallThrough, false),
            _ => Transfer::Exit(ExitKind::Jump, false),
        }
    }

    fn site_effect(
        uc: &mut Unicorn<'_, RunState>,
        relocation: usize,
        addr: u64,
        bytes: &[u8],
        _field_addr: u64,
    ) -> Option<Option<Effect>> {
        let w = word(bytes)?;
        let original = uc.get_data().originals.get(relocation).and_then(|b| word(b));
        // Memory the instruction is about to read: make it exist first.
        let mut reads: Vec<(u64, usize)> = Vec::new();
        {
            let mut reg = |n: u8, sp: bool| read_reg(uc, n, sp);
            let mut mem = |a: u64, n: usize| {
                reads.push((a, n));
                None
            };
            let mut none = |_: u64, _: usize| None;
            let _ = site_effect(w, addr, original, &mut reg, &mut mem, &mut none);
        }
        for (a, n) in reads {
            ensure_mapped(uc, a, n);
        }
        let mut mem = |a: u64, n: usize| {
            let mut b = vec![0u8; n];
            uc.mem_read(a, &mut b).ok().map(|_| le(&b))
        };
        let mut reg = |n: u8, sp: bool| read_reg(uc, n, sp);
        let mut only_image = |a: u64, n: usize| read_image(uc, a, n);
        site_effect(w, addr, original, &mut reg, &mut mem, &mut only_image).observation()
    }

    /// What a relocation site writes is formed; anything else overwrites.
    fn step(st: &mut RunState, offset: usize, site: bool) {
        let Some(w) = st.code_bytes.get(offset..offset + 4).and_then(word) else { return };
        st.formed &= !(writes(w) as u64);
        let pc = st.code.start + offset as u64;
        let insn = decode(w);
        // A call's clobbers are the callee's to honour, not this code's writes.
        let call = matches!(insn, Insn::Branch { link: true, .. } | Insn::BranchReg { kind: BranchRegKind::Blr, .. });
        if !call && writes(w) & st.reserved_mask != 0 {
            st.reserved_at = Some(pc);
        }
        match insn {
            Insn::Branch { link: true, .. } => {
                st.linked_into_code = insn.branch_target(pc).is_some_and(|t| st.code.contains(&t));
            }
            _ if writes(w) & (1 << 30) != 0 => st.linked_into_code = false,
            _ => {}
        }
        if site {
            if let Some(rd) = insn.destination() {
                st.formed |= 1 << rd;
            }
        }
    }

    /// A veneer in the trace's trampolines (`ldr x8, #8; br x8`) goes where its literal says.
    fn resolve(uc: &Unicorn<'_, RunState>, target: u64) -> u64 {
        through_veneer(target, &mut |a, n| read_image(uc, a, n)).0
    }

    /// `svc`, `hvc`, `smc` (system and hypervisor calls), `hlt`, `brk`
    /// (`__builtin_trap`): nothing a stencil may run.
    fn forbidden(bytes: &[u8], _pc: u64) -> bool {
        word(bytes).and_then(exception_name).is_some()
    }

    fn fault(e: uc_error) -> Option<super::Fault> {
        // `udf`: the stencil ran a trap.
        (e == uc_error::EXCEPTION).then_some(super::Fault::InvalidInstruction)
    }

    fn register_mask(names: &[&str]) -> u32 {
        names.iter().filter_map(|n| number(n)).fold(0, |m, r| m | 1 << r)
    }

    fn null_access_source(st: &RunState) -> AddressSource {
        let code = &st.code_bytes;
        let word_at =
            |offset: usize| (code.get(offset..offset + 4).and_then(word).unwrap_or(0), st.holds_field(offset, 4));
        null_access_source(st.trail().map(word_at))
    }

    fn debug_registers(uc: &Unicorn<'_, RunState>) -> String {
        let r = |r| uc.reg_read(r).unwrap_or(0);
        format!(
            "x0={:#x} x1={:#x} x2={:#x} x8={:#x} x30={:#x} sp={:#x}",
            r(RegisterARM64::X0),
            r(RegisterARM64::X1),
            r(RegisterARM64::X2),
            r(RegisterARM64::X8),
            r(RegisterARM64::X30),
            r(RegisterARM64::SP)
        )
    }
}

/// Where the base address of the load or store first in `trail` (the
/// instructions run, newest first) came from: its base register's writers,
/// followed back through `add`/`sub` immediates and register moves, end in
/// `movz`/`movn`, `mov xN, xzr`, `adr(p)` or a literal load (a constant), or
/// in a load, a call, a hole's value (an operand: placed addresses are never
/// in the NULL page), another computation or the registers the run began
/// with (made up). `trail` pairs each word with whether it holds a relocated
/// field.
fn null_access_source(mut trail: impl Iterator<Item = (u32, bool)>) -> AddressSource {
    let Some((access, _)) = trail.next() else { return AddressSource::MadeUp };
    // Every load/store encoding (op0 = x1x0) names its base in bits 5..9.
    if (access >> 25) & 0b0101 != 0b0100 {
        return AddressSource::MadeUp;
    }
    let mut wanted = 1u32 << ((access >> 5) & 31);
    wanted &= !(1 << 31); // sp: placed, never made up
    for (w, holds_hole) in trail {
        if wanted == 0 {
            return AddressSource::Constant;
        }
        let hit = writes(w) & wanted;
        if hit == 0 {
            continue;
        }
        if holds_hole {
            return AddressSource::MadeUp;
        }
        wanted &= !hit;
        let from = match decode(w) {
            Insn::MovWide { op: MovOp::K, .. } => hit, // the other 48 bits are older
            Insn::MovWide { .. } | Insn::Adrp { .. } | Insn::Adr { .. } | Insn::LdrLiteral { .. } => 0,
            Insn::AddSubImm { rn, .. } => 1 << rn,
            Insn::Other(w) if w & 0x7fe0_ffe0 == 0x2a00_03e0 => 1 << ((w >> 16) & 31), // mov xd, xm (orr)
            _ => return AddressSource::MadeUp,
        };
        wanted |= from & !(1 << 31);
    }
    if wanted == 0 {
        AddressSource::Constant
    } else {
        AddressSource::MadeUp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ObjdumpInstruction, RelocKind, Relocation, Symbol};
    use crate::target::{Arch, ObjectFormat};

    const CODE: u64 = 0x4000_1234_5000;
    const DATA: u64 = CODE + 0x3000;

    fn words(ws: &[u32]) -> Vec<u8> {
        ws.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    fn listing(code: &[u8]) -> Vec<ObjdumpInstruction> {
        code.chunks_exact(4)
            .enumerate()
            .map(|(i, b)| ObjdumpInstruction {
                offset: 4 * i as u64,
                bytes: b.to_vec(),
                text: format_at(b, 4 * i as u64),
                line: 0,
            })
            .collect()
    }

    fn reloc(offset: u64, kind: RelocKind, symbol: &str) -> Relocation {
        Relocation { offset, kind, symbol: Symbol::classify(symbol), addend: 0, line: 0, text: String::new() }
    }

    fn stencil(name: &str, original: &[u32], relocations: Vec<Relocation>) -> Stencil {
        let code = words(original);
        Stencil {
            name: name.into(),
            line: 1,
            instructions: listing(&code),
            code,
            data: vec![0; 0x40],
            relocations,
            data_comments: Vec::new(),
            emit: Vec::new(),
            locals: Default::default(),
            ordinals: Default::default(),
            trampoline_mask: Vec::new(),
            got_mask: Vec::new(),
        }
    }

    fn image(patched: &[u32], slot: u64) -> Image {
        let mut data = vec![0; 0x40];
        data[0x10..0x18].copy_from_slice(&slot.to_le_bytes());
        Image::new(CODE, words(patched), DATA, data)
    }

    /// Evaluate with fixed registers (x8 = `x8`, sp = 0x1000) and memory
    /// (DATA+0x10 holds `slot`, anything else unreadable).
    fn eval(word: u32, pc: u64, original: Option<u32>, x8: Option<u64>, slot: u64) -> Evaluation {
        let mut reg = |n: u8, sp: bool| match (n, sp) {
            (8, _) => x8,
            (31, true) => Some(0x1000),
            (31, false) => Some(0),
            _ => None,
        };
        let mut mem = |a: u64, n: usize| (a == DATA + 0x10 && n <= 8).then_some(slot & (u64::MAX >> (64 - 8 * n)));
        let mut image = |a: u64, n: usize| {
            (a == VENEER && n == 4)
                .then_some(0x5800_0048)
                .or((a == VENEER + 4 && n == 4).then_some(0xd61f_0100))
                .or((a == VENEER + 8 && n == 8).then_some(0xfeed_f00d))
        };
        site_effect(word, pc, original, &mut reg, &mut mem, &mut image)
    }

    /// A veneer `ldr x8, #8; br x8; .quad 0xfeedf00d` at VENEER.
    const VENEER: u64 = CODE + 0x8000;

    const ADRP_X8: u32 = 0x9000_0008;
    const LDR_X8: u32 = 0xf940_0108; // ldr x8, [x8]
    const NOP: u32 = decode::NOP;

    fn movz_x8(imm: u32) -> u32 {
        0xd280_0000 | (imm << 5) | 8
    }
    fn movk16_x8(imm: u32) -> u32 {
        0xf2a0_0000 | (imm << 5) | 8
    }
    /// `ldr x8, #off` (literal).
    fn ldr_lit_x8(off: i64) -> u32 {
        0x5800_0000 | ((((off / 4) as u32) & 0x7ffff) << 5) | 8
    }
    /// `adrp x8` of the page `pages` away.
    fn adrp_x8(pages: i64) -> u32 {
        let imm = pages as u32 & 0x1f_ffff;
        ADRP_X8 | ((imm & 3) << 29) | ((imm >> 2) << 5)
    }
    /// `ldr x8, [x8, #lo12]` (scaled by 8).
    fn ldr_x8_lo12(lo12: u64) -> u32 {
        LDR_X8 | (((lo12 / 8) as u32) << 10)
    }

    #[test]
    fn adrp_forms_its_page_above_and_below() {
        let pc = CODE + 0x104;
        assert_eq!(
            eval(adrp_x8(3), pc, Some(ADRP_X8), None, 0),
            Evaluation::Known(Effect::Address { value: CODE + 0x3000, bits: 64 })
        );
        // A negative page count is sign-extended (wasmtime PR 11734's bug zero-extended it).
        assert_eq!(
            eval(adrp_x8(-0x10_0000), pc, Some(ADRP_X8), None, 0),
            Evaluation::Known(Effect::Address { value: CODE - (1 << 32), bits: 64 })
        );
        assert_eq!(
            eval(adrp_x8(-1), pc, None, None, 0),
            Evaluation::Known(Effect::Address { value: CODE - 0x1000, bits: 64 })
        );
    }

    #[test]
    fn lo12_loads_and_adds_use_the_base_register() {
        let pc = CODE + 0x108;
        // ldr x8, [x8, #0x10]: address x8 + 0x10, the 8 bytes there.
        assert_eq!(
            eval(ldr_x8_lo12(0x10), pc, Some(LDR_X8), Some(DATA), 0xfeed),
            Evaluation::Known(Effect::Load { address: DATA + 0x10, value: 0xfeed, bits: 64 })
        );
        // ldrb w8, [x8, #0x10]: unscaled, 8 bits.
        let ldrb = 0x3940_0108 | (0x10 << 10);
        assert_eq!(
            eval(ldrb, pc, Some(0x3940_0108), Some(DATA), 0x1234),
            Evaluation::Known(Effect::Load { address: DATA + 0x10, value: 0x34, bits: 8 })
        );
        // add x8, x8, #0x123
        assert_eq!(
            eval(0x9104_8d08, pc, Some(0x9100_0108), Some(DATA), 0),
            Evaluation::Known(Effect::Address { value: DATA + 0x123, bits: 64 })
        );
        // str x9, [x8, #0x8]: only the address.
        assert_eq!(
            eval(0xf900_0509, pc, Some(0xf900_0109), Some(DATA), 0),
            Evaluation::Known(Effect::MemoryOperand { address: DATA + 8 })
        );
        // The base unknown: left to the runs.
        assert_eq!(eval(ldr_x8_lo12(0x10), pc, Some(LDR_X8), None, 0), Evaluation::Unknown);
        // Unreadable memory: unknown too.
        assert_eq!(eval(ldr_x8_lo12(0x18), pc, Some(LDR_X8), Some(DATA), 0), Evaluation::Unknown);
    }

    #[test]
    fn branches_transfer_to_their_target() {
        let pc = CODE + 0x40;
        for (w, target) in [
            (0x1400_0010u32, pc + 0x40), // b
            (0x97ff_fff0, pc - 0x40),    // bl
            (0x5400_0260, pc + 0x4c),    // b.eq
            (0xb400_00a8, pc + 0x14),    // cbz x8
            (0x37f8_0088, pc + 0x10),    // tbnz w8, #31
        ] {
            assert_eq!(
                eval(w, pc, Some(w), None, 0),
                Evaluation::Known(Effect::Transfer { target, slot: None }),
                "{w:#x}"
            );
        }
        // Through a veneer: where its literal goes, read from the image.
        let bl_veneer = 0x9400_0000 | (((VENEER - pc) / 4) as u32 & 0x3ff_ffff);
        assert_eq!(
            eval(bl_veneer, pc, Some(0x9400_0000), None, 0),
            Evaluation::Known(Effect::Transfer { target: 0xfeed_f00d, slot: Some(VENEER + 8) })
        );
        // A branch patched into something else is no branch.
        assert_eq!(eval(NOP, pc, Some(0x1400_0000), None, 0), Evaluation::NotAnOperand);
    }

    #[test]
    fn movz_movk_carry_their_chunk() {
        let movk48 = 0xf2e0_0000 | (0xbeef << 5) | 1;
        assert_eq!(
            eval(movk48, 0, Some(0xf2e0_0001), None, 0),
            Evaluation::Known(Effect::Immediate { value: 0xbeef << 48, bits: 64 })
        );
        assert_eq!(
            eval(movz_x8(0x1234), 0, Some(movz_x8(0)), None, 0),
            Evaluation::Known(Effect::Immediate { value: 0x1234, bits: 64 })
        );
    }

    #[test]
    fn relaxed_pairs_report_what_the_register_holds() {
        let pc = CODE + 0x100;
        // movz x8 in place of adrp: the immediate.
        assert_eq!(
            eval(movz_x8(0xbeef), pc, Some(ADRP_X8), None, 0),
            Evaluation::Known(Effect::Formed { value: 0xbeef })
        );
        // nop in place of the ldr: x8 as the movz left it.
        assert_eq!(
            eval(NOP, pc + 4, Some(LDR_X8), Some(0xbeef), 0),
            Evaluation::Known(Effect::Formed { value: 0xbeef })
        );
        assert_eq!(eval(NOP, pc + 4, Some(LDR_X8), None, 0), Evaluation::Unknown);
        // movk x8 in place of the ldr: x8 after the movk.
        assert_eq!(
            eval(movk16_x8(0xdead), pc + 4, Some(LDR_X8), Some(0xffff_beef), 0),
            Evaluation::Known(Effect::Formed { value: 0xdead_beef })
        );
        // ldr literal in place of adrp: the loaded value.
        let lit = ldr_lit_x8((DATA + 0x10 - pc) as i64);
        assert_eq!(
            eval(lit, pc, Some(ADRP_X8), None, 0x7777_0000_1234),
            Evaluation::Known(Effect::Formed { value: 0x7777_0000_1234 })
        );
        // Left as a pair: ordinary effects, not Formed.
        assert!(matches!(eval(adrp_x8(3), pc, Some(ADRP_X8), None, 0), Evaluation::Known(Effect::Address { .. })));
        // Rewritten into something that forms nothing: mangled.
        assert_eq!(eval(0x1400_0000, pc, Some(ADRP_X8), None, 0), Evaluation::NotAnOperand);
        // A movz of another register leaves x8 as it was.
        let movz_x9 = 0xd280_0000 | (5 << 5) | 9;
        assert_eq!(eval(movz_x9, pc, Some(ADRP_X8), Some(42), 0), Evaluation::Known(Effect::Formed { value: 42 }));
    }

    fn got_pair_stencil(original: &[u32], at: u64) -> Stencil {
        stencil(
            "_PAIR",
            original,
            vec![
                reloc(at, RelocKind::Aarch64_ADR_GOT_PAGE, "PyFoo"),
                reloc(at + 4, RelocKind::Aarch64_LD64_GOT_LO12_NC, "PyFoo"),
            ],
        )
    }

    #[test]
    fn static_sites_follow_a_straight_line_from_the_first_half() {
        // adrp x8, DATA page; mov x9, x1 (not x8); ldr x8, [x8, #0x10]
        let original = [ADRP_X8, 0xaa01_03e9, LDR_X8, 0xd65f_03c0];
        let mut s = got_pair_stencil(&original, 0);
        s.relocations[1].offset = 8;
        let pages = ((DATA >> 12) - (CODE >> 12)) as i64;
        let im = image(&[adrp_x8(pages), 0xaa01_03e9, ldr_x8_lo12(0x10), 0xd65f_03c0], 0xabcd);
        let sites = static_sites(&s, &im);
        assert_eq!(sites.len(), 2);
        assert_eq!(sites[0].effect, Some(Effect::Address { value: DATA, bits: 64 }));
        assert_eq!(sites[1].effect, Some(Effect::Load { address: DATA + 0x10, value: 0xabcd, bits: 64 }));
        assert_eq!(sites[1].pc, CODE + 8);
    }

    #[test]
    fn static_sites_stop_at_a_write_or_a_branch_landing_between() {
        let pages = ((DATA >> 12) - (CODE >> 12)) as i64;
        // adrp x8; add x8, x8, #1 (writes x8); ldr x8, [x8, #0x10]
        let original = [ADRP_X8, 0x9100_0508, LDR_X8];
        let mut s = got_pair_stencil(&original, 0);
        s.relocations[1].offset = 8;
        let im = image(&[adrp_x8(pages), 0x9100_0508, ldr_x8_lo12(0x10)], 1);
        assert_eq!(static_sites(&s, &im).len(), 1, "the ldr's base is not the adrp's any more");
        // b.eq +8 at 0 lands on the ldr at 8: another path reaches it.
        let original = [0x5400_0040, ADRP_X8, LDR_X8];
        let mut s = got_pair_stencil(&original, 4);
        s.relocations[1].offset = 8;
        let im = image(&[0x5400_0040, adrp_x8(pages), ldr_x8_lo12(0x10)], 1);
        assert_eq!(static_sites(&s, &im).len(), 1, "a branch lands on the second half");
    }

    #[test]
    fn static_sites_of_relaxed_pairs() {
        // movz+nop: the nop's x8 comes from the movz.
        let s = got_pair_stencil(&[ADRP_X8, LDR_X8], 0);
        let sites = static_sites(&s, &image(&[movz_x8(0x42), NOP], 0));
        let effects: Vec<_> = sites.iter().map(|o| o.effect).collect();
        assert_eq!(effects, vec![Some(Effect::Formed { value: 0x42 }), Some(Effect::Formed { value: 0x42 })]);
        // movz+movk
        let sites = static_sites(&s, &image(&[movz_x8(0xbeef), movk16_x8(0xdead)], 0));
        assert_eq!(sites[1].effect, Some(Effect::Formed { value: 0xdead_beef }));
        // ldr literal + nop
        let lit = ldr_lit_x8((DATA + 0x10 - CODE) as i64);
        let sites = static_sites(&s, &image(&[lit, NOP], 0x1234_5678_9abc));
        assert_eq!(sites[0].effect, Some(Effect::Formed { value: 0x1234_5678_9abc }));
        assert_eq!(sites[1].effect, Some(Effect::Formed { value: 0x1234_5678_9abc }));
    }

    fn set_with(version: Version, entry: Option<Stencil>) -> StencilSet {
        StencilSet {
            path: "t.h".into(),
            target: Target::new(Arch::Aarch64, ObjectFormat::Elf, version),
            stencils: entry.into_iter().collect(),
            symbols_map: Vec::new(),
        }
    }

    #[test]
    fn convention_read_off_the_shim_or_by_version() {
        let t13 = Target::new(Arch::Aarch64, ObjectFormat::Elf, Version::V3_13);
        let t14 = Target::new(Arch::Aarch64, ObjectFormat::Elf, Version::V3_14);
        let c = convention(t13, &set_with(Version::V3_13, None));
        assert_eq!((c.frame, c.stack_pointer, c.tstate, c.source), ("x0", "x1", "x2", "default"));
        let c = convention(t14, &set_with(Version::V3_14, None));
        assert_eq!((c.frame, c.stack_pointer, c.tstate, c.source), ("x20", "x21", "x22", "default"));
        // CPython main's shim: mov x21, x1; mov x22, x2; stp; mov x20, x0; bl
        let shim = stencil("shim", &[0xaa01_03f5, 0xaa02_03f6, 0xa909_4ff4, 0xaa00_03f4, 0x9400_000c], vec![]);
        let c = convention(t14, &set_with(Version::V3_14, Some(shim)));
        assert_eq!((c.frame, c.stack_pointer, c.tstate, c.source), ("x20", "x21", "x22", "shim"));
        // A shim moving elsewhere (mov x25, x0; mov x26, x1; mov x27, x2): read, not defaulted.
        let shim = stencil("shim", &[0xaa00_03f9, 0xaa01_03fa, 0xaa02_03fb, 0x9400_0002], vec![]);
        let c = convention(t14, &set_with(Version::V3_14, Some(shim)));
        assert_eq!((c.frame, c.stack_pointer, c.tstate), ("x25", "x26", "x27"));
        // A trampoline that moves all three (stencilcheck's corpus, preserve_none
        // uops under a 3.13 loader): the moved registers, FP pairs saved between.
        let tramp = stencil(
            "trampoline",
            &[0x6db6_3bef, 0xa908_57f6, 0xaa01_03f5, 0xaa02_03f6, 0xa909_4ff4, 0xaa00_03f4, 0x6d01_33ed, 0x9400_0000],
            vec![],
        );
        let c = convention(t13, &set_with(Version::V3_13, Some(tramp)));
        assert_eq!((c.frame, c.stack_pointer, c.tstate, c.source), ("x20", "x21", "x22", "trampoline"));
        // A 3.13 trampoline keeping a copy (mov x19, x0) still calls with x0..x2.
        let tramp = stencil("trampoline", &[0xaa00_03f3, 0x9400_0002], vec![]);
        let c = convention(t13, &set_with(Version::V3_13, Some(tramp)));
        assert_eq!((c.frame, c.stack_pointer, c.tstate, c.source), ("x0", "x1", "x2", "trampoline"));
        // An argument register overwritten before the call: nothing to read, the default.
        let tramp = stencil("shim", &[0xd280_0000, 0x9400_0002], vec![]);
        let c = convention(t14, &set_with(Version::V3_14, Some(tramp)));
        assert_eq!(c.source, "default");
    }

    #[test]
    fn transfer_classes_and_branch_targets() {
        let b = |w: u32| w.to_le_bytes();
        assert_eq!(transfer_class(&b(0x9400_0010), 0), TransferClass::Call);
        assert_eq!(transfer_class(&b(0xd63f_0100), 0), TransferClass::Call);
        assert_eq!(transfer_class(&b(0x1400_0010), 0), TransferClass::Jump);
        assert_eq!(transfer_class(&b(0xd61f_0060), 0), TransferClass::Jump);
        assert_eq!(transfer_class(&b(0x5400_0260), 0), TransferClass::Other);
        assert_eq!(transfer_class(&b(0xd65f_03c0), 0), TransferClass::Other);
        assert_eq!(branch_target(&b(0x5400_0260), 0x58), Some(0xa4));
        assert_eq!(branch_target(&b(0x17ff_ffff), 0x1000), Some(0xffc));
        assert_eq!(branch_target(&b(ADRP_X8), 0x1000), None);
        assert_eq!(format_at(&b(0x9400_0010), 0x1000), "bl 0x1040");
    }
}
