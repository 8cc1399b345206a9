//! x86-64: relocations, reach, address space, ABI, and where decoding and
//! the Unicorn engine for it live (`execute::x86_64`).

use super::{Abi, Arch, ObjectFormat, RelExpr, RelocInfo, Target, TargetInfo, Unsupported};
use crate::execute::{self, Convention, Engine, SiteObservation, TransferClass};
use crate::model::{PatchFn, RelocKind, Stencil, StencilSet};
use crate::patch::Image;
use std::ops::Range;

pub struct X86_64;

/// Canonical 47-bit user space, less the first 64 KiB (`vm.mmap_min_addr`,
/// so NULL-ish pointers fault).
pub const USER_SPACE: Range<u64> = 0x1_0000..0x0000_8000_0000_0000;

/// Reach of a signed 32-bit displacement.
const REACH32: i64 = 1 << 31;

const ELF: Option<ObjectFormat> = Some(ObjectFormat::Elf);
const MACHO: Option<ObjectFormat> = Some(ObjectFormat::MachO);
const COFF: Option<ObjectFormat> = Some(ObjectFormat::Coff);

/// ELF, Mach-O and COFF kinds, mapped as CPython's `_stencils.py` patches
/// them. Mach-O and COFF keep addends in the field; their PC-relative
/// displacements count from the field's end, hence the −4.
const RELOCATIONS: &[RelocInfo] = &[
    RelocInfo::new(RelocKind::X86_64_64, RelExpr::Absolute, PatchFn::P64, 8, ELF),
    RelocInfo::new(RelocKind::X86_64_32, RelExpr::Absolute, PatchFn::P32, 4, ELF),
    RelocInfo::new(RelocKind::X86_64_32S, RelExpr::Absolute, PatchFn::P32, 4, ELF),
    RelocInfo::new(RelocKind::X86_64_PC32, RelExpr::PcRelative, PatchFn::P32r, 4, ELF),
    RelocInfo::new(RelocKind::X86_64_PLT32, RelExpr::PcRelative, PatchFn::P32r, 4, ELF),
    RelocInfo::new(RelocKind::X86_64_GOTPCREL, RelExpr::Got, PatchFn::P32r, 4, ELF),
    RelocInfo::new(RelocKind::X86_64_GOTPCRELX, RelExpr::Got, PatchFn::X86_64_32rx, 4, ELF),
    RelocInfo::new(RelocKind::X86_64_REX_GOTPCRELX, RelExpr::Got, PatchFn::X86_64_32rx, 4, ELF),
    RelocInfo::new(RelocKind::MachO_X86_64_BRANCH, RelExpr::PcRelative, PatchFn::P32r, 4, MACHO).implicit(-4),
    RelocInfo::new(RelocKind::MachO_X86_64_SIGNED, RelExpr::PcRelative, PatchFn::P32r, 4, MACHO).implicit(-4),
    RelocInfo::new(RelocKind::MachO_X86_64_GOT, RelExpr::Got, PatchFn::X86_64_32rx, 4, MACHO).implicit(-4),
    RelocInfo::new(RelocKind::MachO_X86_64_GOT_LOAD, RelExpr::Got, PatchFn::X86_64_32rx, 4, MACHO).implicit(-4),
    RelocInfo::new(RelocKind::MachO_X86_64_UNSIGNED, RelExpr::Absolute, PatchFn::P64, 8, MACHO).implicit(0),
    // CPython patches every REL32 with 32rx: on a direct `call`/`jmp` it is 32r.
    RelocInfo::new(RelocKind::Coff_AMD64_REL32, RelExpr::PcRelative, PatchFn::X86_64_32rx, 4, COFF).implicit(-4),
    RelocInfo::new(RelocKind::Coff_AMD64_REL32_Import, RelExpr::Got, PatchFn::X86_64_32rx, 4, COFF).implicit(-4),
    RelocInfo::new(RelocKind::Coff_AMD64_ADDR64, RelExpr::Absolute, PatchFn::P64, 8, COFF).implicit(0),
];

impl TargetInfo for X86_64 {
    fn arch(&self) -> Arch {
        Arch::X86_64
    }

    fn relocations(&self) -> &'static [RelocInfo] {
        RELOCATIONS
    }

    fn patch_fns(&self) -> &'static [PatchFn] {
        &[PatchFn::P32r, PatchFn::X86_64_32rx, PatchFn::X86_64_Trampoline]
    }

    fn reach(&self, func: PatchFn) -> Option<Range<i64>> {
        match func {
            PatchFn::P32r | PatchFn::X86_64_32rx => Some(-REACH32..REACH32),
            _ => None,
        }
    }

    /// `patch_x86_64_32rx` may rewrite the opcode and ModRM bytes of a GOT load.
    fn relaxable_bytes_before(&self, expr: RelExpr) -> u64 {
        if expr == RelExpr::Got {
            2
        } else {
            0
        }
    }

    /// RIP-relative: the displacement counts from the end of the instruction.
    fn pc_relative_referent(&self, s_plus_a: u64, p: u64, _pc: u64, next_pc: u64) -> u64 {
        s_plus_a.wrapping_add(next_pc.wrapping_sub(p))
    }

    fn user_space(&self) -> Range<u64> {
        USER_SPACE
    }

    /// Byte-granular: x86-64 stencils are not padded.
    fn code_alignment(&self) -> u64 {
        1
    }

    fn max_instruction_len(&self) -> usize {
        15
    }

    /// SysV: a `call` leaves the return address on a 16-byte boundary + 8.
    fn abi(&self) -> Abi {
        Abi { stack_pointer: "rsp", call_sp_align: 16, call_sp_residue: 8 }
    }

    /// Windows passes C arguments in rcx, rdx, r8 and keeps rsi and rdi.
    fn convention(&self, target: Target, set: &StencilSet) -> Convention {
        let c_abi = if target.format == super::ObjectFormat::Coff { execute::WIN64 } else { execute::SYSV_X86_64 };
        execute::x86_64::convention(set, c_abi)
    }

    fn static_sites(&self, stencil: &Stencil, image: &Image) -> Vec<SiteObservation> {
        execute::x86_64::static_sites(stencil, image)
    }

    fn transfer_class(&self, bytes: &[u8], ip: u64) -> TransferClass {
        execute::x86_64::transfer_class(bytes, ip)
    }

    fn relaxed(&self, original: &[u8], patched: &[u8]) -> bool {
        execute::x86_64::mnemonic(original, 0) != execute::x86_64::mnemonic(patched, 0)
    }

    fn format_instruction(&self, bytes: &[u8], ip: u64) -> String {
        execute::x86_64::format_at(bytes, ip)
    }

    fn branch_target(&self, bytes: &[u8], ip: u64) -> Option<u64> {
        execute::x86_64::branch_target(bytes, ip)
    }

    /// `jmp *0(%rip)` and the 8-byte address, padded to 16.
    fn trampoline_size(&self) -> u64 {
        16
    }

    fn through_import(&self, kind: RelocKind) -> Option<RelocKind> {
        (kind == RelocKind::Coff_AMD64_REL32).then_some(RelocKind::Coff_AMD64_REL32_Import)
    }

    fn engine(&self, target: Target, convention: Convention, limit: u64) -> Result<Box<dyn Engine>, Unsupported> {
        let engine = execute::x86_64::UnicornX86::new(convention, limit)
            .map_err(|e| target.unsupported(format!("the Unicorn x86-64 engine ({e})")))?;
        Ok(Box::new(engine))
    }
}
