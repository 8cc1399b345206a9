//! AArch64: relocations, reach, address space, ABI, and where decoding and
//! the Unicorn engine for it live (`execute::aarch64`).

use super::{Abi, Arch, ObjectFormat, RelExpr, RelocInfo, Target, TargetInfo, Unsupported};
use crate::execute::aarch64::decode::{decode, Insn};
use crate::execute::{self, Convention, Engine, SiteObservation, TransferClass};
use crate::model::{PatchFn, RelocKind, Stencil, StencilSet};
use crate::patch::Image;
use std::ops::Range;

pub struct Aarch64;

const PAGE: i64 = 0x1000;

const ELF: Option<ObjectFormat> = Some(ObjectFormat::Elf);
const MACHO: Option<ObjectFormat> = Some(ObjectFormat::MachO);
const COFF: Option<ObjectFormat> = Some(ObjectFormat::Coff);

/// ELF, Mach-O and COFF kinds, mapped as CPython's `_stencils.py` patches
/// them; the `MOVW_UABS` chunks are what CPython 3.13 writes for its inline
/// trampolines into every format's header.
const RELOCATIONS: &[RelocInfo] = &[
    RelocInfo::new(RelocKind::Aarch64_ABS64, RelExpr::Absolute, PatchFn::P64, 8, ELF),
    RelocInfo::new(RelocKind::Aarch64_ADR_GOT_PAGE, RelExpr::GotPage, PatchFn::Aarch64_21rx, 4, ELF),
    RelocInfo::new(RelocKind::Aarch64_LD64_GOT_LO12_NC, RelExpr::GotPageOffset, PatchFn::Aarch64_12x, 4, ELF),
    RelocInfo::new(RelocKind::Aarch64_ADR_PREL_PG_HI21, RelExpr::Page, PatchFn::Aarch64_21r, 4, ELF),
    RelocInfo::new(RelocKind::Aarch64_ADD_ABS_LO12_NC, RelExpr::PageOffset, PatchFn::Aarch64_12, 4, ELF),
    RelocInfo::new(RelocKind::Aarch64_LDST8_ABS_LO12_NC, RelExpr::PageOffset, PatchFn::Aarch64_12, 4, ELF),
    RelocInfo::new(RelocKind::Aarch64_LDST16_ABS_LO12_NC, RelExpr::PageOffset, PatchFn::Aarch64_12, 4, ELF),
    RelocInfo::new(RelocKind::Aarch64_LDST32_ABS_LO12_NC, RelExpr::PageOffset, PatchFn::Aarch64_12, 4, ELF),
    RelocInfo::new(RelocKind::Aarch64_LDST64_ABS_LO12_NC, RelExpr::PageOffset, PatchFn::Aarch64_12, 4, ELF),
    RelocInfo::new(RelocKind::Aarch64_LDST128_ABS_LO12_NC, RelExpr::PageOffset, PatchFn::Aarch64_12, 4, ELF),
    RelocInfo::new(RelocKind::Aarch64_JUMP26, RelExpr::Branch, PatchFn::Aarch64_26r, 4, ELF),
    RelocInfo::new(RelocKind::Aarch64_CALL26, RelExpr::Branch, PatchFn::Aarch64_26r, 4, ELF),
    RelocInfo::new(RelocKind::Aarch64_CONDBR19, RelExpr::Branch, PatchFn::Aarch64_19r, 4, ELF),
    RelocInfo::new(RelocKind::Aarch64_MOVW_UABS_G0_NC, RelExpr::AbsoluteChunk(0), PatchFn::Aarch64_16a, 4, None),
    RelocInfo::new(RelocKind::Aarch64_MOVW_UABS_G1_NC, RelExpr::AbsoluteChunk(1), PatchFn::Aarch64_16b, 4, None),
    RelocInfo::new(RelocKind::Aarch64_MOVW_UABS_G2_NC, RelExpr::AbsoluteChunk(2), PatchFn::Aarch64_16c, 4, None),
    RelocInfo::new(RelocKind::Aarch64_MOVW_UABS_G3, RelExpr::AbsoluteChunk(3), PatchFn::Aarch64_16d, 4, None),
    RelocInfo::new(RelocKind::MachO_ARM64_BRANCH26, RelExpr::Branch, PatchFn::Aarch64_26r, 4, MACHO),
    RelocInfo::new(RelocKind::MachO_ARM64_GOT_LOAD_PAGE21, RelExpr::GotPage, PatchFn::Aarch64_21rx, 4, MACHO),
    RelocInfo::new(RelocKind::MachO_ARM64_GOT_LOAD_PAGEOFF12, RelExpr::GotPageOffset, PatchFn::Aarch64_12x, 4, MACHO),
    RelocInfo::new(RelocKind::MachO_ARM64_PAGE21, RelExpr::Page, PatchFn::Aarch64_21r, 4, MACHO),
    RelocInfo::new(RelocKind::MachO_ARM64_PAGEOFF12, RelExpr::PageOffset, PatchFn::Aarch64_12, 4, MACHO),
    RelocInfo::new(RelocKind::MachO_ARM64_UNSIGNED, RelExpr::Absolute, PatchFn::P64, 8, MACHO),
    RelocInfo::new(RelocKind::Coff_ARM64_BRANCH26, RelExpr::Branch, PatchFn::Aarch64_26r, 4, COFF),
    RelocInfo::new(RelocKind::Coff_ARM64_BRANCH19, RelExpr::Branch, PatchFn::Aarch64_19r, 4, COFF),
    RelocInfo::new(RelocKind::Coff_ARM64_PAGEBASE_REL21, RelExpr::Page, PatchFn::Aarch64_21rx, 4, COFF),
    RelocInfo::new(RelocKind::Coff_ARM64_PAGEBASE_REL21_Import, RelExpr::GotPage, PatchFn::Aarch64_21rx, 4, COFF),
    RelocInfo::new(RelocKind::Coff_ARM64_PAGEOFFSET_12A, RelExpr::PageOffset, PatchFn::Aarch64_12, 4, COFF),
    RelocInfo::new(RelocKind::Coff_ARM64_PAGEOFFSET_12L, RelExpr::PageOffset, PatchFn::Aarch64_12x, 4, COFF),
    RelocInfo::new(RelocKind::Coff_ARM64_PAGEOFFSET_12L_Import, RelExpr::GotPageOffset, PatchFn::Aarch64_12x, 4, COFF),
    RelocInfo::new(RelocKind::Coff_ARM64_ADDR64, RelExpr::Absolute, PatchFn::P64, 8, COFF),
];

/// An instruction with the fields patches write cleared: two words of the
/// same shape differ only in relocated values, not in kind (a relaxation
/// changes the shape).
fn shape(word: u32) -> Insn {
    match decode(word) {
        Insn::Adrp { rd, .. } => Insn::Adrp { rd, imm: 0 },
        Insn::Adr { rd, .. } => Insn::Adr { rd, imm: 0 },
        Insn::AddSubImm { sf, sub, flags, rd, rn, shift, .. } => {
            Insn::AddSubImm { sf, sub, flags, rd, rn, imm: 0, shift }
        }
        Insn::MovWide { sf, op, rd, hw, .. } => Insn::MovWide { sf, op, rd, imm16: 0, hw },
        Insn::LdStImm { op, fp, size, rt, rn, .. } => Insn::LdStImm { op, fp, size, rt, rn, offset: 0 },
        Insn::LdrLiteral { op, fp, size, rt, .. } => Insn::LdrLiteral { op, fp, size, rt, offset: 0 },
        Insn::Branch { link, .. } => Insn::Branch { link, offset: 0 },
        Insn::BranchCond { cond, .. } => Insn::BranchCond { cond, offset: 0 },
        Insn::CompareBranch { sf, nonzero, rt, .. } => Insn::CompareBranch { sf, nonzero, rt, offset: 0 },
        Insn::TestBranch { nonzero, rt, bit, .. } => Insn::TestBranch { nonzero, rt, bit, offset: 0 },
        other => other,
    }
}

impl TargetInfo for Aarch64 {
    fn arch(&self) -> Arch {
        Arch::Aarch64
    }

    fn relocations(&self) -> &'static [RelocInfo] {
        RELOCATIONS
    }

    fn patch_fns(&self) -> &'static [PatchFn] {
        &[
            PatchFn::Aarch64_12,
            PatchFn::Aarch64_12x,
            PatchFn::Aarch64_16a,
            PatchFn::Aarch64_16b,
            PatchFn::Aarch64_16c,
            PatchFn::Aarch64_16d,
            PatchFn::Aarch64_21r,
            PatchFn::Aarch64_21rx,
            PatchFn::Aarch64_19r,
            PatchFn::Aarch64_26r,
            PatchFn::Aarch64_33rx,
            PatchFn::Aarch64_Trampoline,
        ]
    }

    fn reach(&self, func: PatchFn) -> Option<Range<i64>> {
        match func {
            // b/bl: a signed 26-bit word offset, ±128 MiB.
            PatchFn::Aarch64_26r => Some(-(1 << 27)..(1 << 27)),
            // b.cond/cbz/cbnz: a signed 19-bit word offset, ±1 MiB.
            PatchFn::Aarch64_19r => Some(-(1 << 20)..(1 << 20)),
            // adrp: ±2^20 pages, less a page either side for the page rounding.
            PatchFn::Aarch64_21r | PatchFn::Aarch64_21rx | PatchFn::Aarch64_33rx => {
                Some(-(1i64 << 32) + PAGE..(1i64 << 32) - PAGE)
            }
            _ => None,
        }
    }

    /// Every field is a whole instruction: a relaxation rewrites nothing else.
    fn relaxable_bytes_before(&self, _expr: RelExpr) -> u64 {
        0
    }

    /// Branches and `adr` count from the instruction itself.
    fn pc_relative_referent(&self, s_plus_a: u64, _p: u64, _pc: u64, _next_pc: u64) -> u64 {
        s_plus_a
    }

    /// Linux's 48-bit user space (4 KiB pages, four levels), less the first 64 KiB.
    fn user_space(&self) -> Range<u64> {
        0x1_0000..0x0001_0000_0000_0000
    }

    /// Code and data padded to 8 bytes (`alignment=8` in `_targets.py`).
    fn code_alignment(&self) -> u64 {
        8
    }

    fn max_instruction_len(&self) -> usize {
        4
    }

    /// AAPCS64: sp is 16-byte aligned at every public interface.
    fn abi(&self) -> Abi {
        Abi { stack_pointer: "sp", call_sp_align: 16, call_sp_residue: 0 }
    }

    /// 3.13: AAPCS64, frame/stack_pointer/tstate in x0, x1, x2; 3.14+:
    /// `preserve_none`, x20, x21, x22. Read off the trampoline or shim when
    /// the set has one with code.
    fn convention(&self, target: Target, set: &StencilSet) -> Convention {
        execute::aarch64::convention(target, set)
    }

    fn static_sites(&self, stencil: &Stencil, image: &Image) -> Vec<SiteObservation> {
        execute::aarch64::static_sites(stencil, image)
    }

    fn transfer_class(&self, bytes: &[u8], ip: u64) -> TransferClass {
        execute::aarch64::transfer_class(bytes, ip)
    }

    fn format_instruction(&self, bytes: &[u8], ip: u64) -> String {
        execute::aarch64::format_at(bytes, ip)
    }

    fn branch_target(&self, bytes: &[u8], ip: u64) -> Option<u64> {
        execute::aarch64::branch_target(bytes, ip)
    }

    fn relaxed(&self, original: &[u8], patched: &[u8]) -> bool {
        let word = |b: &[u8]| b.get(..4).and_then(|w| w.try_into().ok()).map(u32::from_le_bytes);
        match (word(original), word(patched)) {
            (Some(a), Some(b)) => shape(a) != shape(b),
            _ => false,
        }
    }

    /// `ldr x8, 8; br x8` and the 8-byte address (CPython's veneer).
    fn trampoline_size(&self) -> u64 {
        16
    }

    fn through_import(&self, kind: RelocKind) -> Option<RelocKind> {
        match kind {
            RelocKind::Coff_ARM64_PAGEBASE_REL21 => Some(RelocKind::Coff_ARM64_PAGEBASE_REL21_Import),
            RelocKind::Coff_ARM64_PAGEOFFSET_12L => Some(RelocKind::Coff_ARM64_PAGEOFFSET_12L_Import),
            _ => None,
        }
    }

    fn engine(&self, target: Target, convention: Convention, limit: u64) -> Result<Box<dyn Engine>, Unsupported> {
        let engine = execute::aarch64::UnicornArm64::new(convention, limit)
            .map_err(|e| target.unsupported(format!("the Unicorn ARM64 engine ({e})")))?;
        Ok(Box::new(engine))
    }
}
