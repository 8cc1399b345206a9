//! A small A64 decoder: exactly the instructions relocations patch (and the
//! ones the engine must classify), from the Arm ARM's encoding tables, plus
//! which general registers any instruction may write (conservatively) and an
//! objdump-like formatter.

/// One decoded A64 instruction. Register numbers are 0..=31; what 31 means
/// (sp or zero) depends on the operand, as the Arm ARM says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insn {
    /// `adrp xd, page`: `imm` is the signed 21-bit page count.
    Adrp {
        rd: u8,
        imm: i64,
    },
    /// `adr xd, label`: `imm` is the signed 21-bit byte offset.
    Adr {
        rd: u8,
        imm: i64,
    },
    /// ADD/SUB (immediate), `imm` already shifted by `lsl #12` when `shift`.
    AddSubImm {
        sf: bool,
        sub: bool,
        flags: bool,
        rd: u8,
        rn: u8,
        imm: u64,
        shift: bool,
    },
    /// MOVN/MOVZ/MOVK.
    MovWide {
        sf: bool,
        op: MovOp,
        rd: u8,
        imm16: u16,
        hw: u8,
    },
    /// Load/store register, unsigned scaled immediate offset: the access is
    /// `1 << size` bytes at `xn + offset` (already scaled).
    LdStImm {
        op: MemOp,
        fp: bool,
        size: u8,
        rt: u8,
        rn: u8,
        offset: u64,
    },
    /// LDR (literal): `1 << size` bytes at `pc + offset`.
    LdrLiteral {
        op: MemOp,
        fp: bool,
        size: u8,
        rt: u8,
        offset: i64,
    },
    /// B or BL.
    Branch {
        link: bool,
        offset: i64,
    },
    BranchCond {
        cond: u8,
        offset: i64,
    },
    /// CBZ/CBNZ.
    CompareBranch {
        sf: bool,
        nonzero: bool,
        rt: u8,
        offset: i64,
    },
    /// TBZ/TBNZ.
    TestBranch {
        nonzero: bool,
        rt: u8,
        bit: u8,
        offset: i64,
    },
    /// BR/BLR/RET through `rn`.
    BranchReg {
        kind: BranchRegKind,
        rn: u8,
    },
    Nop,
    /// Anything else.
    Other(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MovOp {
    N,
    Z,
    K,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemOp {
    Store,
    /// Zero-extending load (or any FP/SIMD load).
    Load,
    /// Sign-extending load into a 64-bit (`x`) or 32-bit (`w`) register.
    LoadSigned {
        to64: bool,
    },
    Prefetch,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BranchRegKind {
    Br,
    Blr,
    Ret,
}

/// Sign-extend the low `bits` bits of `v`.
pub fn sext(v: u64, bits: u32) -> i64 {
    ((v << (64 - bits)) as i64) >> (64 - bits)
}

fn field(w: u32, start: u32, width: u32) -> u32 {
    (w >> start) & ((1u32 << width) - 1)
}

fn reg(w: u32, start: u32) -> u8 {
    field(w, start, 5) as u8
}

pub const NOP: u32 = 0xd503_201f;

pub fn decode(w: u32) -> Insn {
    if w == NOP {
        return Insn::Nop;
    }
    // PC-relative addressing: op 1 immlo 10000 immhi Rd.
    if w & 0x1f00_0000 == 0x1000_0000 {
        let imm = sext(((field(w, 5, 19) as u64) << 2) | field(w, 29, 2) as u64, 21);
        return if w & 0x8000_0000 != 0 { Insn::Adrp { rd: reg(w, 0), imm } } else { Insn::Adr { rd: reg(w, 0), imm } };
    }
    // ADD/SUB (immediate): sf op S 100010 sh imm12 Rn Rd.
    if w & 0x1f80_0000 == 0x1100_0000 {
        let shift = field(w, 22, 1) == 1;
        let imm = (field(w, 10, 12) as u64) << if shift { 12 } else { 0 };
        return Insn::AddSubImm {
            sf: field(w, 31, 1) == 1,
            sub: field(w, 30, 1) == 1,
            flags: field(w, 29, 1) == 1,
            rd: reg(w, 0),
            rn: reg(w, 5),
            imm,
            shift,
        };
    }
    // Move wide (immediate): sf opc 100101 hw imm16 Rd (opc 01 unallocated).
    if w & 0x1f80_0000 == 0x1280_0000 {
        let op = match field(w, 29, 2) {
            0 => MovOp::N,
            2 => MovOp::Z,
            3 => MovOp::K,
            _ => return Insn::Other(w),
        };
        let sf = field(w, 31, 1) == 1;
        let hw = field(w, 21, 2) as u8;
        if !sf && hw > 1 {
            return Insn::Other(w);
        }
        return Insn::MovWide { sf, op, rd: reg(w, 0), imm16: field(w, 5, 16) as u16, hw };
    }
    // Load/store register (unsigned immediate): size 111 V 01 opc imm12 Rn Rt.
    if w & 0x3b00_0000 == 0x3900_0000 {
        let (size, opc, fp) = (field(w, 30, 2) as u8, field(w, 22, 2), field(w, 26, 1) == 1);
        let (op, size) = if fp {
            // opc<1> with size 00 is the 128-bit q access.
            let size = if opc & 2 != 0 {
                if size != 0 {
                    return Insn::Other(w);
                }
                4
            } else {
                size
            };
            (if opc & 1 == 1 { MemOp::Load } else { MemOp::Store }, size)
        } else {
            let op = match (size, opc) {
                (_, 0) => MemOp::Store,
                (_, 1) => MemOp::Load,
                (3, 2) => MemOp::Prefetch,
                (3, 3) | (2, 3) => return Insn::Other(w),
                (_, 2) => MemOp::LoadSigned { to64: true },
                (_, _) => MemOp::LoadSigned { to64: false },
            };
            (op, size)
        };
        let offset = (field(w, 10, 12) as u64) << size;
        return Insn::LdStImm { op, fp, size, rt: reg(w, 0), rn: reg(w, 5), offset };
    }
    // Load register (literal): opc 011 V 00 imm19 Rt.
    if w & 0x3b00_0000 == 0x1800_0000 {
        let (opc, fp) = (field(w, 30, 2), field(w, 26, 1) == 1);
        let (op, size) = match (fp, opc) {
            (false, 0) => (MemOp::Load, 2),
            (false, 1) => (MemOp::Load, 3),
            (false, 2) => (MemOp::LoadSigned { to64: true }, 2),
            (false, _) => (MemOp::Prefetch, 3),
            (true, 0) => (MemOp::Load, 2),
            (true, 1) => (MemOp::Load, 3),
            (true, 2) => (MemOp::Load, 4),
            (true, _) => return Insn::Other(w),
        };
        let offset = sext(field(w, 5, 19) as u64, 19) * 4;
        return Insn::LdrLiteral { op, fp, size, rt: reg(w, 0), offset };
    }
    // Unconditional branch (immediate): op 00101 imm26.
    if w & 0x7c00_0000 == 0x1400_0000 {
        let offset = sext(field(w, 0, 26) as u64, 26) * 4;
        return Insn::Branch { link: w & 0x8000_0000 != 0, offset };
    }
    // Conditional branch (immediate): 0101010 0 imm19 0 cond.
    if w & 0xff00_0010 == 0x5400_0000 {
        let offset = sext(field(w, 5, 19) as u64, 19) * 4;
        return Insn::BranchCond { cond: field(w, 0, 4) as u8, offset };
    }
    // Compare and branch: sf 011010 op imm19 Rt.
    if w & 0x7e00_0000 == 0x3400_0000 {
        let offset = sext(field(w, 5, 19) as u64, 19) * 4;
        return Insn::CompareBranch { sf: w & 0x8000_0000 != 0, nonzero: field(w, 24, 1) == 1, rt: reg(w, 0), offset };
    }
    // Test and branch: b5 011011 op b40 imm14 Rt.
    if w & 0x7e00_0000 == 0x3600_0000 {
        let offset = sext(field(w, 5, 14) as u64, 14) * 4;
        let bit = ((field(w, 31, 1) << 5) | field(w, 19, 5)) as u8;
        return Insn::TestBranch { nonzero: field(w, 24, 1) == 1, rt: reg(w, 0), bit, offset };
    }
    // Unconditional branch (register): BR, BLR, RET (no pointer authentication).
    let kind = match w & 0xffff_fc1f {
        0xd61f_0000 => Some(BranchRegKind::Br),
        0xd63f_0000 => Some(BranchRegKind::Blr),
        0xd65f_0000 => Some(BranchRegKind::Ret),
        _ => None,
    };
    if let Some(kind) = kind {
        return Insn::BranchReg { kind, rn: reg(w, 5) };
    }
    Insn::Other(w)
}

impl Insn {
    /// Same kind of instruction (what a relaxation may change), ignoring operands.
    pub fn same_kind(&self, other: &Insn) -> bool {
        match (self, other) {
            (Insn::MovWide { op: a, .. }, Insn::MovWide { op: b, .. }) => a == b,
            (Insn::LdStImm { op: a, .. }, Insn::LdStImm { op: b, .. }) => a == b,
            (Insn::Branch { link: a, .. }, Insn::Branch { link: b, .. }) => a == b,
            (Insn::BranchReg { kind: a, .. }, Insn::BranchReg { kind: b, .. }) => a == b,
            (Insn::Other(_), Insn::Other(_)) => true,
            _ => std::mem::discriminant(self) == std::mem::discriminant(other),
        }
    }

    /// A direct branch's (taken) target, conditional ones included.
    pub fn branch_target(&self, pc: u64) -> Option<u64> {
        match *self {
            Insn::Branch { offset, .. }
            | Insn::BranchCond { offset, .. }
            | Insn::CompareBranch { offset, .. }
            | Insn::TestBranch { offset, .. } => Some(pc.wrapping_add(offset as u64)),
            _ => None,
        }
    }

    /// The general register this instruction writes a value into, when it is
    /// one the relocation oracle cares about (`None` for xzr and sp).
    pub fn destination(&self) -> Option<u8> {
        let rd = match *self {
            Insn::Adrp { rd, .. } | Insn::Adr { rd, .. } | Insn::MovWide { rd, .. } => rd,
            Insn::AddSubImm { rd, .. } => rd,
            Insn::LdStImm { op: MemOp::Load | MemOp::LoadSigned { .. }, fp: false, rt, .. } => rt,
            Insn::LdrLiteral { op: MemOp::Load | MemOp::LoadSigned { .. }, fp: false, rt, .. } => rt,
            _ => return None,
        };
        (rd != 31).then_some(rd)
    }

    /// Ends a straight-line run: control never falls through to the next instruction.
    pub fn is_unconditional_transfer(&self) -> bool {
        matches!(
            self,
            Insn::Branch { link: false, .. } | Insn::BranchReg { kind: BranchRegKind::Br | BranchRegKind::Ret, .. }
        )
    }
}

/// Bit `n` for each general register x0..x30 the instruction `w` may write
/// (conservatively: unknown encodings may write any register they name, a
/// call clobbers every caller-saved register and x30).
pub fn writes(w: u32) -> u32 {
    let bit = |r: u8| if r < 31 { 1u32 << r } else { 0 };
    match decode(w) {
        Insn::Nop
        | Insn::Branch { link: false, .. }
        | Insn::BranchCond { .. }
        | Insn::CompareBranch { .. }
        | Insn::TestBranch { .. }
        | Insn::BranchReg { kind: BranchRegKind::Br | BranchRegKind::Ret, .. } => 0,
        // A call: the callee may leave anything in x0..x18 and the link in x30.
        Insn::Branch { link: true, .. } | Insn::BranchReg { kind: BranchRegKind::Blr, .. } => 0x4007_ffff,
        Insn::Adrp { rd, .. } | Insn::Adr { rd, .. } | Insn::MovWide { rd, .. } => bit(rd),
        Insn::AddSubImm { rd, flags, .. } => {
            if rd == 31 && !flags {
                0 // sp
            } else {
                bit(rd)
            }
        }
        Insn::LdStImm { op, fp, rt, .. } | Insn::LdrLiteral { op, fp, rt, .. } => match op {
            MemOp::Load | MemOp::LoadSigned { .. } if !fp => bit(rt),
            _ => 0,
        },
        Insn::Other(w) => {
            let op0 = field(w, 25, 4);
            let fp = field(w, 26, 1) == 1;
            if w & 0x3a00_0000 == 0x2800_0000 {
                // Load/store pair (offset, pre-, post-index, no-allocate):
                // a load writes Rt and Rt2, pre/post-index writes Rn back.
                let load = field(w, 22, 1) == 1 && !fp;
                let writeback = matches!(field(w, 23, 2), 1 | 3);
                (if load { bit(reg(w, 0)) | bit(reg(w, 10)) } else { 0 }) | (if writeback { bit(reg(w, 5)) } else { 0 })
            } else if w & 0x3b20_0000 == 0x3800_0000 {
                // Load/store register (unscaled, pre/post-index, unprivileged):
                // a load writes Rt, pre/post-index writes Rn back.
                let load = field(w, 22, 2) != 0 && !fp && !(field(w, 30, 2) == 3 && field(w, 22, 2) == 2);
                let writeback = matches!(field(w, 10, 2), 1 | 3);
                (if load { bit(reg(w, 0)) } else { 0 }) | (if writeback { bit(reg(w, 5)) } else { 0 })
            } else if op0 & 0b0101 == 0b0100 {
                // Loads and stores: Rt, Rt2, a written-back Rn, a status Rs.
                bit(reg(w, 0)) | bit(reg(w, 10)) | bit(reg(w, 5)) | bit(reg(w, 16))
            } else if op0 & 0b1100 == 0 {
                // Reserved, SME, SVE: anything.
                u32::MAX >> 1
            } else if w & 0xffff_f01f == 0xd503_201f {
                // Hints (PACIASP and friends sign x30; BTI, NOP write nothing).
                bit(30) | bit(17) | bit(16)
            } else {
                // Data processing (immediate, register, SIMD/FP moves to
                // general registers) and system (MRS): Rd.
                bit(reg(w, 0))
            }
        }
    }
}

// Formatting ------------------------------------------------------------------

const CONDS: [&str; 16] =
    ["eq", "ne", "hs", "lo", "mi", "pl", "vs", "vc", "hi", "ls", "ge", "lt", "gt", "le", "al", "nv"];

/// `x3`, `w3`, or 31 as `sp`/`wsp` (`sp == true`) or `xzr`/`wzr`.
fn gpr(r: u8, sf: bool, sp: bool) -> String {
    match (r, sf, sp) {
        (31, true, true) => "sp".into(),
        (31, false, true) => "wsp".into(),
        (31, true, false) => "xzr".into(),
        (31, false, false) => "wzr".into(),
        (r, true, _) => format!("x{r}"),
        (r, false, _) => format!("w{r}"),
    }
}

fn fpr(r: u8, size: u8) -> String {
    let c = ["b", "h", "s", "d", "q"][size.min(4) as usize];
    format!("{c}{r}")
}

/// The instruction `w` at `pc`, the way llvm-objdump spells it (targets as
/// absolute addresses); a `.inst` word for what this decoder does not know.
pub fn format(w: u32, pc: u64) -> String {
    match decode(w) {
        Insn::Nop => "nop".into(),
        Insn::Adrp { rd, imm } => {
            format!("adrp {}, {:#x}", gpr(rd, true, false), (pc & !0xfff).wrapping_add((imm << 12) as u64))
        }
        Insn::Adr { rd, imm } => format!("adr {}, {:#x}", gpr(rd, true, false), pc.wrapping_add(imm as u64)),
        Insn::AddSubImm { sf, sub, flags, rd, rn, imm, shift } => {
            let name = match (sub, flags) {
                (false, false) => "add",
                (false, true) => "adds",
                (true, false) => "sub",
                (true, true) => "subs",
            };
            let (imm, lsl) = if shift { (imm >> 12, ", lsl #12") } else { (imm, "") };
            format!("{name} {}, {}, #{imm:#x}{lsl}", gpr(rd, sf, !flags), gpr(rn, sf, true))
        }
        Insn::MovWide { sf, op, rd, imm16, hw } => {
            let name = match op {
                MovOp::N => "movn",
                MovOp::Z => "movz",
                MovOp::K => "movk",
            };
            let lsl = if hw == 0 { String::new() } else { format!(", lsl #{}", 16 * hw) };
            format!("{name} {}, #{imm16:#x}{lsl}", gpr(rd, sf, false))
        }
        Insn::LdStImm { op, fp, size, rt, rn, offset } => {
            let (name, target) = mem_names(op, fp, size, rt);
            let off = if offset == 0 { String::new() } else { format!(", #{offset:#x}") };
            format!("{name} {target}, [{}{off}]", gpr(rn, true, true))
        }
        Insn::LdrLiteral { op, fp, size, rt, offset } => {
            let (name, target) = mem_names(op, fp, size, rt);
            format!("{name} {target}, {:#x}", pc.wrapping_add(offset as u64))
        }
        Insn::Branch { link, offset } => {
            format!("{} {:#x}", if link { "bl" } else { "b" }, pc.wrapping_add(offset as u64))
        }
        Insn::BranchCond { cond, offset } => {
            format!("b.{} {:#x}", CONDS[cond as usize], pc.wrapping_add(offset as u64))
        }
        Insn::CompareBranch { sf, nonzero, rt, offset } => format!(
            "{} {}, {:#x}",
            if nonzero { "cbnz" } else { "cbz" },
            gpr(rt, sf, false),
            pc.wrapping_add(offset as u64)
        ),
        Insn::TestBranch { nonzero, rt, bit, offset } => format!(
            "{} {}, #{bit:#x}, {:#x}",
            if nonzero { "tbnz" } else { "tbz" },
            gpr(rt, bit >= 32, false),
            pc.wrapping_add(offset as u64)
        ),
        Insn::BranchReg { kind: BranchRegKind::Ret, rn: 30 } => "ret".into(),
        Insn::BranchReg { kind, rn } => {
            let name = match kind {
                BranchRegKind::Br => "br",
                BranchRegKind::Blr => "blr",
                BranchRegKind::Ret => "ret",
            };
            format!("{name} {}", gpr(rn, true, false))
        }
        Insn::Other(w) => format!(".inst {w:#010x}"),
    }
}

/// Mnemonic and transfer register of a load/store of `1 << size` bytes.
fn mem_names(op: MemOp, fp: bool, size: u8, rt: u8) -> (String, String) {
    if fp {
        let name = if op == MemOp::Store { "str" } else { "ldr" };
        return (name.into(), fpr(rt, size));
    }
    let suffix = match size {
        0 => "b",
        1 => "h",
        _ => "",
    };
    match op {
        MemOp::Store => (format!("str{suffix}"), gpr(rt, size == 3, false)),
        MemOp::Load => (format!("ldr{suffix}"), gpr(rt, size == 3, false)),
        MemOp::LoadSigned { to64 } => {
            let suffix = if size == 2 { "w" } else { suffix };
            (format!("ldrs{suffix}"), gpr(rt, to64, false))
        }
        MemOp::Prefetch => ("prfm".into(), format!("#{rt:#x}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Hand-assembled words (checked against llvm-mc / the Arm ARM).
    #[test]
    fn adrp_pages_are_signed() {
        // adrp x8, 0 pages
        assert_eq!(decode(0x9000_0008), Insn::Adrp { rd: 8, imm: 0 });
        // immlo = 1, immhi = 0: +1 page
        assert_eq!(decode(0xb000_0008), Insn::Adrp { rd: 8, imm: 1 });
        // immhi all ones, immlo = 3: -1 page
        assert_eq!(decode(0xf0ff_ffe8), Insn::Adrp { rd: 8, imm: -1 });
        // the lowest page: imm = -2^20 (immhi top bit only)
        assert_eq!(decode(0x9080_0009), Insn::Adrp { rd: 9, imm: -(1 << 20) });
        // the highest page: 2^20 - 1
        assert_eq!(decode(0xf07f_ffe9), Insn::Adrp { rd: 9, imm: (1 << 20) - 1 });
        assert_eq!(format(0xf0ff_ffe8, 0x1_0000_2345), "adrp x8, 0x100001000");
        // adr x0, #-4
        assert_eq!(decode(0x70ff_ffe0), Insn::Adr { rd: 0, imm: -1 });
        assert_eq!(decode(0x10ff_ffe0), Insn::Adr { rd: 0, imm: -4 });
    }

    #[test]
    fn add_immediate_and_shift() {
        // add x8, x8, #0x123
        assert_eq!(
            decode(0x9104_8d08),
            Insn::AddSubImm { sf: true, sub: false, flags: false, rd: 8, rn: 8, imm: 0x123, shift: false }
        );
        // add x0, x1, #0x1, lsl #12
        assert_eq!(
            decode(0x9140_0420),
            Insn::AddSubImm { sf: true, sub: false, flags: false, rd: 0, rn: 1, imm: 0x1000, shift: true }
        );
        // mov x29, sp = add x29, sp, #0
        assert_eq!(format(0x9100_03fd, 0), "add x29, sp, #0x0");
        // subs x8, x8, #0x1 (cmp-like, rd is a register)
        assert_eq!(format(0xf100_0508, 0), "subs x8, x8, #0x1");
        assert_eq!(format(0x9140_0420, 0), "add x0, x1, #0x1, lsl #12");
    }

    #[test]
    fn unsigned_offset_loads_are_scaled_by_size() {
        // ldr x8, [x8, #0x10]: imm12 = 2, scaled by 8
        assert_eq!(
            decode(0xf940_0908),
            Insn::LdStImm { op: MemOp::Load, fp: false, size: 3, rt: 8, rn: 8, offset: 0x10 }
        );
        // ldr w1, [x1, #0x4]: imm12 = 1, scaled by 4
        assert_eq!(decode(0xb940_0421), Insn::LdStImm { op: MemOp::Load, fp: false, size: 2, rt: 1, rn: 1, offset: 4 });
        // ldrb w1, [x1, #0x3]: unscaled
        assert_eq!(decode(0x3940_0c21), Insn::LdStImm { op: MemOp::Load, fp: false, size: 0, rt: 1, rn: 1, offset: 3 });
        // ldrh w1, [x1, #0x2]
        assert_eq!(decode(0x7940_0421), Insn::LdStImm { op: MemOp::Load, fp: false, size: 1, rt: 1, rn: 1, offset: 2 });
        // ldrsw x8, [x8, #0x4]
        assert_eq!(
            decode(0xb980_0508),
            Insn::LdStImm { op: MemOp::LoadSigned { to64: true }, fp: false, size: 2, rt: 8, rn: 8, offset: 4 }
        );
        // ldr q1, [x1, #0x10]: 128-bit, scaled by 16
        assert_eq!(
            decode(0x3dc0_0421),
            Insn::LdStImm { op: MemOp::Load, fp: true, size: 4, rt: 1, rn: 1, offset: 0x10 }
        );
        // str x25, [sp, #0x10]
        assert_eq!(
            decode(0xf900_0bf9),
            Insn::LdStImm { op: MemOp::Store, fp: false, size: 3, rt: 25, rn: 31, offset: 0x10 }
        );
        assert_eq!(format(0xf900_0bf9, 0), "str x25, [sp, #0x10]");
        assert_eq!(format(0xf940_0108, 0), "ldr x8, [x8]");
        assert_eq!(format(0x3940_0c21, 0), "ldrb w1, [x1, #0x3]");
        assert_eq!(format(0x3dc0_0421, 0), "ldr q1, [x1, #0x10]");
        // ldur/ldr pre-index are not unsigned-offset forms
        assert!(matches!(decode(0xf85f_82b8), Insn::Other(_)));
        assert!(matches!(decode(0xf85f_8eb9), Insn::Other(_)));
    }

    #[test]
    fn literal_loads() {
        // ldr x8, #8
        assert_eq!(decode(0x5800_0048), Insn::LdrLiteral { op: MemOp::Load, fp: false, size: 3, rt: 8, offset: 8 });
        // ldr x8, #-4 (imm19 all ones)
        assert_eq!(decode(0x58ff_ffe8), Insn::LdrLiteral { op: MemOp::Load, fp: false, size: 3, rt: 8, offset: -4 });
        // ldr w3, #0x10
        assert_eq!(decode(0x1800_0083), Insn::LdrLiteral { op: MemOp::Load, fp: false, size: 2, rt: 3, offset: 0x10 });
        assert_eq!(format(0x58ff_ffe8, 0x1000), "ldr x8, 0xffc");
    }

    #[test]
    fn move_wide() {
        // movz x8, #0x1234
        assert_eq!(decode(0xd282_4688), Insn::MovWide { sf: true, op: MovOp::Z, rd: 8, imm16: 0x1234, hw: 0 });
        // movk x8, #0x5678, lsl #16
        assert_eq!(decode(0xf2aa_cf08), Insn::MovWide { sf: true, op: MovOp::K, rd: 8, imm16: 0x5678, hw: 1 });
        // movk x1, #0xffff, lsl #48
        assert_eq!(decode(0xf2ff_ffe1), Insn::MovWide { sf: true, op: MovOp::K, rd: 1, imm16: 0xffff, hw: 3 });
        // movk w11, #0x2, lsl #16
        assert_eq!(decode(0x72a0_004b), Insn::MovWide { sf: false, op: MovOp::K, rd: 11, imm16: 2, hw: 1 });
        // mov w1, #1 = movz w1, #1
        assert_eq!(decode(0x5280_0021), Insn::MovWide { sf: false, op: MovOp::Z, rd: 1, imm16: 1, hw: 0 });
        assert_eq!(format(0xf2aa_cf08, 0), "movk x8, #0x5678, lsl #16");
        // jit.c's relaxation words: movz/movk with reg and imm or'ed in
        assert_eq!(
            decode(0xd280_0000 | (0xbeef << 5) | 9),
            Insn::MovWide { sf: true, op: MovOp::Z, rd: 9, imm16: 0xbeef, hw: 0 }
        );
        assert_eq!(
            decode(0xf2a0_0000 | (0xdead << 5) | 9),
            Insn::MovWide { sf: true, op: MovOp::K, rd: 9, imm16: 0xdead, hw: 1 }
        );
    }

    #[test]
    fn branches() {
        let pc = 0x10_0000;
        // b #-4
        assert_eq!(decode(0x17ff_ffff), Insn::Branch { link: false, offset: -4 });
        assert_eq!(decode(0x17ff_ffff).branch_target(pc), Some(pc - 4));
        // bl #+0x40
        assert_eq!(decode(0x9400_0010), Insn::Branch { link: true, offset: 0x40 });
        // the extremes of 26 bits: ±128 MiB
        assert_eq!(decode(0x1600_0000).branch_target(pc), Some(pc.wrapping_sub(1 << 27)));
        assert_eq!(decode(0x15ff_ffff).branch_target(pc), Some(pc + (1 << 27) - 4));
        // b.eq #+0x4c (0x58: b.eq 0xa4)
        assert_eq!(decode(0x5400_0260), Insn::BranchCond { cond: 0, offset: 0x4c });
        assert_eq!(format(0x5400_0260, 0x58), "b.eq 0xa4");
        // b.ne backwards
        assert_eq!(decode(0x54ff_ffe1).branch_target(pc), Some(pc - 4));
        // cbz x8, +0x14 (0x7c: cbz x8, 0x90)
        assert_eq!(decode(0xb400_00a8), Insn::CompareBranch { sf: true, nonzero: false, rt: 8, offset: 0x14 });
        // cbnz w0, -8
        assert_eq!(decode(0x35ff_ffc0), Insn::CompareBranch { sf: false, nonzero: true, rt: 0, offset: -8 });
        // tbnz w8, #0x1f, +0x10 (0x4c: tbnz w8, #0x1f, 0x5c)
        assert_eq!(decode(0x37f8_0088), Insn::TestBranch { nonzero: true, rt: 8, bit: 31, offset: 0x10 });
        assert_eq!(format(0x37f8_0088, 0x4c), "tbnz w8, #0x1f, 0x5c");
        // tbz w8, #0x1f, backwards (0xd8: tbz w8, #0x1f, 0x64)
        assert_eq!(decode(0x36ff_fc68).branch_target(0xd8), Some(0x64));
        // tbz x3, #63, +4: b5 set
        assert_eq!(decode(0xb6f8_0023), Insn::TestBranch { nonzero: false, rt: 3, bit: 63, offset: 4 });
        assert_eq!(decode(0xd61f_0060), Insn::BranchReg { kind: BranchRegKind::Br, rn: 3 });
        assert_eq!(decode(0xd63f_0100), Insn::BranchReg { kind: BranchRegKind::Blr, rn: 8 });
        assert_eq!(decode(0xd65f_03c0), Insn::BranchReg { kind: BranchRegKind::Ret, rn: 30 });
        assert_eq!(format(0xd65f_03c0, 0), "ret");
        assert_eq!(format(0xd63f_0100, 0), "blr x8");
        assert_eq!(decode(0xd61f_0060).branch_target(pc), None);
    }

    #[test]
    fn relaxation_changes_kind() {
        let adrp = decode(0x9000_0008);
        let ldr = decode(0xf940_0108);
        assert!(!adrp.same_kind(&decode(0xd280_0008))); // movz
        assert!(!ldr.same_kind(&decode(NOP)));
        assert!(!ldr.same_kind(&decode(0xf2a0_0008))); // movk
        assert!(!adrp.same_kind(&decode(0x5800_0008))); // ldr literal
        assert!(ldr.same_kind(&decode(0xf940_0508)));
        assert!(adrp.same_kind(&decode(0xf0ff_ffe8)));
        assert!(!decode(0x9400_0000).same_kind(&decode(0x1400_0000))); // bl vs b
        assert_eq!(ldr.destination(), Some(8));
        assert_eq!(decode(0xf900_0bf9).destination(), None); // a store
    }

    #[test]
    fn register_writes() {
        assert_eq!(writes(0x9000_0008), 1 << 8); // adrp x8
        assert_eq!(writes(0xf900_0bf9), 0); // str x25, [sp, #0x10]
        assert_eq!(writes(0xf940_0108), 1 << 8); // ldr x8, [x8]
        assert_eq!(writes(0xaa01_03f5), 1 << 21); // mov x21, x1
        assert_ne!(writes(0xf85f_8eb9) & (1 << 21), 0); // ldr x25, [x21, #-8]!: writeback
        assert_eq!(writes(0xa9bb_7bfd), 0); // stp x29, x30, [sp, #-0x50]!: sp written back only
        assert_eq!(writes(0x6d01_33ed), 0); // stp d13, d12, [sp, #0x10]
        assert_eq!(writes(0xa944_4ff4), (1 << 20) | (1 << 19)); // ldp x20, x19, [sp, #0x40]
        assert_eq!(writes(0xa8c5_7bfd), (1 << 29) | (1 << 30)); // ldp x29, x30, [sp], #0x50
        assert_eq!(writes(0xa8c1_0be1), (1 << 1) | (1 << 2)); // ldp x1, x2, [sp], #0x10
        assert_eq!(writes(0xf85f_82b8), 1 << 24); // ldur x24, [x21, #-0x8]
        assert_eq!(writes(0xf81f_0297), 0); // stur x23, [x20, #-0x10]
        assert_eq!(writes(0xf81f_8e80), 1 << 20); // str x0, [x20, #-0x8]!: writeback
        assert_eq!(writes(0xf8408680), (1 << 0) | (1 << 20)); // ldr x0, [x20], #0x8
        assert_ne!(writes(0xd63f_0100) & (1 << 8), 0); // blr clobbers x8
        assert_eq!(writes(0xd63f_0100) & (1 << 19), 0); // but not x19
        assert_eq!(writes(0x1400_0000), 0);
        assert_eq!(writes(0x9100_03ff), 0); // mov sp, sp
    }

    #[test]
    fn unknown_words_format_as_inst() {
        assert_eq!(format(0xa9bb_7bfd, 0), ".inst 0xa9bb7bfd");
        assert_eq!(format(NOP, 0), "nop");
    }
}
