//! i686 (32-bit x86, Windows COFF, CPython's `i686-pc-windows-msvc`):
//! relocations, reach, address space, ABI. Decoding and the Unicorn engine
//! are x86-64's, run at 32 bits (`execute::x86_64`).

use super::{Abi, Arch, ObjectFormat, RelExpr, RelocInfo, Target, TargetInfo, Unsupported};
use crate::execute::{self, Convention, Engine, SiteObservation, TransferClass};
use crate::model::{PatchFn, RelocKind, Stencil, StencilSet};
use crate::patch::Image;
use std::ops::Range;

pub struct I686;

/// A 32-bit process on 64-bit Windows linked `/LARGEADDRESSAWARE` has the
/// whole 4 GiB below the top 64 KiB; the first 64 KiB are never mapped.
/// The widest space a 32-bit CPython can have, so placements above 2 GiB
/// (where a sign-extending patch would go wrong) are part of every run.
pub const USER_SPACE: Range<u64> = 0x1_0000..0xffff_0000;

/// Reach of `patch_32r`'s asserts: it subtracts in 64 bits, so even though
/// a 32-bit displacement wraps around the whole space, CPython's asserts
/// (in a debug build) only allow a signed 32-bit distance.
const REACH32: i64 = 1 << 31;

const COFF: Option<ObjectFormat> = Some(ObjectFormat::Coff);

/// CPython's `_targets.py` turns `DIR32` into `patch_32` and `REL32` (calls
/// and jumps, direct) into `patch_x86_64_32rx`, whose relaxation never
/// applies to a direct `call`/`jmp`/`jcc`: it then is `patch_32r`. COFF
/// keeps addends in the field: a `DIR32` field is the addend; a `REL32`
/// field counts from the end of the field, −4 from its start.
const RELOCATIONS: &[RelocInfo] = &[
    RelocInfo::new(RelocKind::I386_DIR32, RelExpr::Absolute, PatchFn::P32, 4, COFF).implicit(0),
    RelocInfo::new(RelocKind::I386_REL32, RelExpr::PcRelative, PatchFn::X86_64_32rx, 4, COFF).implicit(-4),
];

impl TargetInfo for I686 {
    fn arch(&self) -> Arch {
        Arch::I686
    }

    fn relocations(&self) -> &'static [RelocInfo] {
        RELOCATIONS
    }

    /// x86-64's relaxing patch, borrowed (its home is x86-64).
    fn patch_fns(&self) -> &'static [PatchFn] {
        &[PatchFn::P32r, PatchFn::X86_64_32rx]
    }

    fn reach(&self, func: PatchFn) -> Option<Range<i64>> {
        match func {
            PatchFn::P32r | PatchFn::X86_64_32rx => Some(-REACH32..REACH32),
            _ => None,
        }
    }

    /// Nothing: a `REL32` field is a direct branch's, whose opcode a
    /// relaxation must never touch (if `patch_x86_64_32rx` rewrote the byte
    /// before an `e8`, that is a corrupted instruction, not an accounted patch).
    fn relaxable_bytes_before(&self, _expr: RelExpr) -> u64 {
        0
    }

    /// Relative to the end of the instruction, modulo 2^32 (EIP wraps).
    fn pc_relative_referent(&self, s_plus_a: u64, p: u64, _pc: u64, next_pc: u64) -> u64 {
        s_plus_a.wrapping_add(next_pc.wrapping_sub(p)) & 0xffff_ffff
    }

    fn user_space(&self) -> Range<u64> {
        USER_SPACE
    }

    /// Byte-granular, like x86-64.
    fn code_alignment(&self) -> u64 {
        1
    }

    fn max_instruction_len(&self) -> usize {
        15
    }

    /// Windows i686 keeps the stack only 4-byte aligned at calls (MSVC's
    /// default; stencils push 4-byte arguments right before a call).
    fn abi(&self) -> Abi {
        Abi { stack_pointer: "esp", call_sp_align: 4, call_sp_residue: 0 }
    }

    fn convention(&self, _target: Target, set: &StencilSet) -> Convention {
        execute::x86_64::convention_i686(set)
    }

    fn static_sites(&self, stencil: &Stencil, image: &Image) -> Vec<SiteObservation> {
        execute::x86_64::static_sites_at(stencil, image, 32)
    }

    fn transfer_class(&self, bytes: &[u8], ip: u64) -> TransferClass {
        execute::x86_64::transfer_class_at(bytes, ip, 32)
    }

    fn relaxed(&self, original: &[u8], patched: &[u8]) -> bool {
        execute::x86_64::mnemonic_at(original, 0, 32) != execute::x86_64::mnemonic_at(patched, 0, 32)
    }

    fn format_instruction(&self, bytes: &[u8], ip: u64) -> String {
        execute::x86_64::format_with(bytes, ip, 32)
    }

    fn branch_target(&self, bytes: &[u8], ip: u64) -> Option<u64> {
        execute::x86_64::branch_target_at(bytes, ip, 32)
    }

    /// No 3.14+ trampolines on i686 (every 32-bit target is in reach).
    fn trampoline_size(&self) -> u64 {
        0
    }

    fn engine(&self, target: Target, convention: Convention, limit: u64) -> Result<Box<dyn Engine>, Unsupported> {
        let engine = execute::x86_64::UnicornI686::new(convention, limit)
            .map_err(|e| target.unsupported(format!("the Unicorn x86-32 engine ({e})")))?;
        Ok(Box::new(engine))
    }

    /// COFF i386 decorates C names with one leading `_`.
    fn coff_symbol_prefix(&self) -> &'static str {
        "_"
    }

    /// `patch_x86_64_32rx` reads 8 bytes at `value + 4`: for `REL32` that is
    /// the symbol itself (code of a C function, another uop), memory the
    /// process has but the stencil's image does not.
    fn relaxation_reads_symbols(&self) -> bool {
        true
    }
}
