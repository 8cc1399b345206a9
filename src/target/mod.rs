//! Targets: everything one machine × object format × CPython version knows,
//! in one place per architecture, asked by every stage.
//!
//! In the spirit of lld's `TargetInfo` + `RelExpr`: each relocation kind maps
//! onto an architecture-neutral [`RelExpr`] (what the relocated field must
//! make the instruction do with S and A), so the judge computes expectations
//! once, for every target; the architecture files only say which expression
//! a kind is, how far a patch function reaches, what the address space and
//! the calling convention are, and how instructions decode.
//!
//! A combination stencilcheck cannot handle is an [`Unsupported`] error,
//! never an empty answer.

pub mod aarch64;
pub mod i686;
pub mod x86_64;

use crate::execute::{Convention, Engine, SiteObservation, TransferClass};
use crate::model::{PatchFn, RelocKind, Stencil, StencilSet};
use crate::patch::Image;
use serde::Serialize;
use std::fmt;
use std::ops::Range;

/// A machine the stencils were compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    X86_64,
    Aarch64,
    /// 32-bit x86 (CPython's `i686-pc-windows-msvc`).
    I686,
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
            Arch::I686 => "i686",
        })
    }
}

/// The object format the stencils came from (and whose relocation names the
/// header's comments use).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectFormat {
    Elf,
    MachO,
    Coff,
}

impl fmt::Display for ObjectFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObjectFormat::Elf => "ELF",
            ObjectFormat::MachO => "Mach-O",
            ObjectFormat::Coff => "COFF",
        })
    }
}

/// Which CPython's JIT the stencils are for: it decides the header dialect,
/// the calling convention and how `_PyJIT_Compile` lays a trace out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Version {
    /// CPython 3.13: a trampoline, all code then all data, one GOT per stencil.
    V3_13,
    /// CPython 3.14, 3.15 and main: `jit_state`, a shim, code | trampolines |
    /// data | GOT in one allocation per trace.
    V3_14,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Version::V3_13 => "3.13",
            Version::V3_14 => "3.14+",
        })
    }
}

/// Architecture × object format × CPython version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Target {
    pub arch: Arch,
    pub format: ObjectFormat,
    pub version: Version,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} CPython {}", self.arch, self.format, self.version)
    }
}

/// A valid input stencilcheck cannot handle (yet): distinct from bad input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsupported {
    pub target: Target,
    pub what: String,
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is not supported for {}", self.what, self.target)
    }
}

impl std::error::Error for Unsupported {}

impl Target {
    pub fn new(arch: Arch, format: ObjectFormat, version: Version) -> Target {
        Target { arch, format, version }
    }

    /// 3.13 ELF, the target the header and object loaders default to.
    pub fn elf(arch: Arch) -> Target {
        Target::new(arch, ObjectFormat::Elf, Version::V3_13)
    }

    /// The architecture's knowledge, for this target.
    pub fn info(self) -> &'static dyn TargetInfo {
        match self.arch {
            Arch::X86_64 => &x86_64::X86_64,
            Arch::Aarch64 => &aarch64::Aarch64,
            Arch::I686 => &i686::I686,
        }
    }

    pub fn unsupported(self, what: impl Into<String>) -> Unsupported {
        Unsupported { target: self, what: what.into() }
    }

    /// The relocation expression of `kind` on this target (a kind of
    /// another object format is not this target's).
    pub fn expr(self, kind: RelocKind) -> Result<RelExpr, Unsupported> {
        self.info()
            .relocations()
            .iter()
            .find(|r| r.kind == kind && r.format.is_none_or(|f| f == self.format))
            .map(|r| r.expr)
            .ok_or_else(|| self.unsupported(format!("relocation {kind}")))
    }

    /// True when `func` is a patch function this target's stencils may call.
    pub fn has_patch_fn(self, func: PatchFn) -> bool {
        matches!(func, PatchFn::P64 | PatchFn::P32 | PatchFn::GotSymbol) || self.info().patch_fns().contains(&func)
    }

    /// The convention uops of `set` are entered with.
    pub fn convention(self, set: &StencilSet) -> Convention {
        self.info().convention(self, set)
    }

    /// A fresh engine for this target.
    pub fn engine(self, convention: Convention, limit: u64) -> Result<Box<dyn Engine>, Unsupported> {
        self.info().engine(self, convention, limit)
    }
}

/// What a relocated field must make its instruction do, for a symbol S and
/// an addend A at place P, independent of the architecture's encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RelExpr {
    /// The field holds S + A (as wide as the instruction takes it).
    Absolute,
    /// Bits `16*k .. 16*k+16` of S + A (a movz/movk chain).
    AbsoluteChunk(u8),
    /// The instruction refers to S + A, relative to where it is (the
    /// architecture says how the PC bias works).
    PcRelative,
    /// The instruction reads an 8-byte slot holding S, or (relaxed) uses S.
    Got,
    /// The page of an 8-byte slot holding S (aarch64 `adrp` of a GOT pair).
    GotPage,
    /// The low 12 bits of that slot: the pair loads S.
    GotPageOffset,
    /// The page of S + A (`adrp`).
    Page,
    /// The low 12 bits of S + A: the pair forms, loads or stores at S + A.
    PageOffset,
    /// A branch or call to S + A (reach is the patch function's).
    Branch,
}

impl RelExpr {
    /// The instruction reaches S through a GOT slot: the loader gives it one.
    pub fn is_got(self) -> bool {
        matches!(self, RelExpr::Got | RelExpr::GotPage | RelExpr::GotPageOffset)
    }
}

/// One relocation kind a target knows.
#[derive(Clone, Copy, Debug)]
pub struct RelocInfo {
    pub kind: RelocKind,
    pub expr: RelExpr,
    /// The patch function CPython's `Tools/jit` gives a hole of this kind.
    pub patch_fn: PatchFn,
    /// Bytes of the relocated field.
    pub width: u64,
    /// The object format whose relocation this is; `None` for the kinds
    /// CPython's own tools write into every format's header (the aarch64
    /// `MOVW_UABS` trampolines of 3.13).
    pub format: Option<ObjectFormat>,
    /// Mach-O x86-64 and COFF keep the addend in the field (objdump prints
    /// none): A = the field's signed value + this bias (−4 for the
    /// PC-relative kinds, whose displacement counts from the field's end,
    /// as CPython's `_targets.py` computes it). `None`: the listing's addend.
    pub implicit_addend_bias: Option<i64>,
}

impl RelocInfo {
    /// A relocation of `format` whose addend the listing (or the ELF `RELA`) gives.
    pub const fn new(
        kind: RelocKind,
        expr: RelExpr,
        patch_fn: PatchFn,
        width: u64,
        format: Option<ObjectFormat>,
    ) -> RelocInfo {
        RelocInfo { kind, expr, patch_fn, width, format, implicit_addend_bias: None }
    }

    /// The addend is in the field, plus `bias`.
    pub const fn implicit(self, bias: i64) -> RelocInfo {
        RelocInfo { implicit_addend_bias: Some(bias), ..self }
    }
}

/// The ABI rules every exit and call is held to.
#[derive(Clone, Copy, Debug)]
pub struct Abi {
    /// The machine stack pointer's name, for messages.
    pub stack_pointer: &'static str,
    /// At a C callee's first instruction, `sp % call_sp_align` must be
    /// `call_sp_residue` (SysV x86-64: 16 and 8; AAPCS64: 16 and 0; Windows
    /// i686 keeps only 4-byte alignment: 4 and 0).
    pub call_sp_align: u64,
    pub call_sp_residue: u64,
}

/// What an architecture knows. One implementation per file in `target/`.
pub trait TargetInfo: Sync {
    fn arch(&self) -> Arch;
    /// Every relocation kind, with its expression and field width.
    fn relocations(&self) -> &'static [RelocInfo];
    /// The architecture's own patch functions (the portable `patch_64`,
    /// `patch_32` and `patch_got_symbol` are everyone's).
    fn patch_fns(&self) -> &'static [PatchFn];
    /// The displacement range (value − location) a relative patch function
    /// reaches; `None` for absolute ones.
    fn reach(&self, func: PatchFn) -> Option<Range<i64>>;
    /// What a PC-relative field makes the instruction at `pc` (ending at
    /// `next_pc`, field at `p`) refer to, for `s_plus_a`.
    fn pc_relative_referent(&self, s_plus_a: u64, p: u64, pc: u64, next_pc: u64) -> u64;
    /// Bytes before a relocated field that relaxing it may rewrite (x86-64's
    /// `mov`→`lea`, `call *`→`nop; call`): patched bytes there are accounted for.
    fn relaxable_bytes_before(&self, expr: RelExpr) -> u64;
    /// Addresses a user-space process can have.
    fn user_space(&self) -> Range<u64>;
    /// What CPython pads each stencil's code and data to (3.13's
    /// `_targets.py` alignment): uops and their data start aligned to it.
    fn code_alignment(&self) -> u64;
    /// The longest instruction, in bytes (to read enough to decode one).
    fn max_instruction_len(&self) -> usize;
    fn abi(&self) -> Abi;
    /// The registers frame, stack_pointer and tstate arrive in.
    fn convention(&self, target: Target, set: &StencilSet) -> Convention;
    /// Site observations on the patched image, without running it.
    fn static_sites(&self, stencil: &Stencil, image: &Image) -> Vec<SiteObservation>;
    /// Call, jump or neither, for the instruction at the start of `bytes`.
    fn transfer_class(&self, bytes: &[u8], ip: u64) -> TransferClass;
    /// The target of the direct branch (conditional or not, call or jump) at
    /// the start of `bytes`, if it is one.
    fn branch_target(&self, bytes: &[u8], ip: u64) -> Option<u64>;
    /// True when patching turned the instruction `original` into another
    /// kind of instruction (a relaxation), not just new field values.
    fn relaxed(&self, original: &[u8], patched: &[u8]) -> bool;
    /// The instruction at the start of `bytes`, formatted for reports.
    fn format_instruction(&self, bytes: &[u8], ip: u64) -> String;
    /// Bytes of one 3.14+ trampoline (a veneer to a far extern).
    fn trampoline_size(&self) -> u64;
    /// An execution engine for stencils of `target`.
    fn engine(&self, target: Target, convention: Convention, limit: u64) -> Result<Box<dyn Engine>, Unsupported>;
    /// COFF: the kind a relocation becomes when its symbol is `__imp_X`
    /// (the address of X's import slot, which CPython makes a GOT entry).
    fn through_import(&self, _kind: RelocKind) -> Option<RelocKind> {
        None
    }
    /// The prefix COFF puts before C names on this machine (i686: `_`).
    fn coff_symbol_prefix(&self) -> &'static str {
        ""
    }
    /// True when a relaxing patch reads memory at the symbol itself rather
    /// than at a GOT slot of the stencil (i686's `REL32` uses x86-64's
    /// `patch_x86_64_32rx`): such reads land in the process, outside the image.
    fn relaxation_reads_symbols(&self) -> bool {
        false
    }
}

/// Every architecture, for lookups that start from a name.
pub const ARCHS: [Arch; 3] = [Arch::X86_64, Arch::Aarch64, Arch::I686];

fn info_of(arch: Arch) -> &'static dyn TargetInfo {
    Target::elf(arch).info()
}

/// The table entry of a relocation kind (each kind is in exactly one table).
pub fn reloc_info(kind: RelocKind) -> RelocInfo {
    ARCHS
        .iter()
        .flat_map(|a| info_of(*a).relocations())
        .find(|r| r.kind == kind)
        .copied()
        .unwrap_or_else(|| panic!("relocation {kind} is in no target's table"))
}

/// The object format whose relocation `kind` is (`None`: any).
pub fn format_of_reloc(kind: RelocKind) -> Option<ObjectFormat> {
    reloc_info(kind).format
}

/// The architecture whose relocation `kind` is.
pub fn arch_of_reloc(kind: RelocKind) -> Arch {
    *ARCHS
        .iter()
        .find(|a| info_of(**a).relocations().iter().any(|r| r.kind == kind))
        .unwrap_or_else(|| panic!("relocation {kind} is in no target's table"))
}

/// The architecture a patch function belongs to; `None` for the portable ones.
pub fn arch_of_patch_fn(func: PatchFn) -> Option<Arch> {
    ARCHS.iter().copied().find(|a| info_of(*a).patch_fns().contains(&func))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_relocation_kind_is_in_exactly_one_table() {
        for (kind, name) in RelocKind::ALL {
            let n = ARCHS.iter().filter(|a| info_of(**a).relocations().iter().any(|r| r.kind == *kind)).count();
            assert_eq!(n, 1, "{name}");
        }
    }

    #[test]
    fn every_patch_function_has_one_home() {
        for (func, name) in PatchFn::ALL {
            let n = ARCHS.iter().filter(|a| info_of(**a).patch_fns().contains(func)).count();
            let portable = matches!(func, PatchFn::P64 | PatchFn::P32 | PatchFn::GotSymbol);
            // i686 borrows x86-64's (its home is the first in ARCHS).
            let borrowed = matches!(func, PatchFn::P32r | PatchFn::X86_64_32rx);
            assert_eq!(n, usize::from(!portable) + usize::from(borrowed), "{name}");
            if !portable {
                assert_eq!(
                    arch_of_patch_fn(*func),
                    Some(if name.starts_with("patch_aarch64") { Arch::Aarch64 } else { Arch::X86_64 })
                );
            }
        }
    }

    #[test]
    fn reach_is_only_for_relative_functions() {
        let x = Target::elf(Arch::X86_64);
        assert_eq!(x.info().reach(PatchFn::P32r), Some(-(1 << 31)..(1 << 31)));
        assert_eq!(x.info().reach(PatchFn::P64), None);
        let a = Target::elf(Arch::Aarch64);
        assert_eq!(a.info().reach(PatchFn::Aarch64_26r), Some(-(1 << 27)..(1 << 27)));
        assert!(a.info().reach(PatchFn::Aarch64_12).is_none());
    }

    #[test]
    fn unsupported_names_what_and_target() {
        let t = Target::elf(Arch::X86_64);
        let e = t.expr(RelocKind::Aarch64_CALL26).unwrap_err();
        assert_eq!(e.to_string(), "relocation R_AARCH64_CALL26 is not supported for x86_64 ELF CPython 3.13");
    }
}
