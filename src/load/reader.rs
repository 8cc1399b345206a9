//! One reader for the object formats whose addends live in the relocated
//! field (Mach-O, COFF) → [`RawObject`], over the `object` crate's traits.
//!
//! Format detection and the few format facts stay apart from the walk
//! (gimli-rs/object style): a [`Format`] says which sections are code, data
//! or skipped and where a section lands, how many relocations a section's
//! table really holds (the `object` iterators stop quietly on a damaged
//! table, skip scattered Mach-O entries and fold `ARM64_RELOC_ADDEND`
//! pairs: the count is checked against the raw table), what a raw
//! relocation type is, how C names are prefixed and how llvm-objdump prints
//! a relocation's value. This file does the rest, once: sections and their
//! limits, symbols, relocation targets (symbol or section), addends.
//!
//! Addends (`RawReloc::addend`, ELF's meaning: the field must make the
//! instruction refer to S + A):
//! * kinds whose target table has an `implicit_addend_bias` (Mach-O x86-64,
//!   COFF): the field's signed value plus the bias;
//! * a paired `ARM64_RELOC_ADDEND`: its value; an arm64 `UNSIGNED`: the
//!   8-byte field (Mach-O keeps that addend in place);
//! * Mach-O section-relative relocations (`r_extern = 0`): the field holds
//!   the target's *address* in the object (PC-relative kinds: relative to
//!   the field's end), so S is the target section and A is where in it the
//!   target lies (less 4 for PC-relative kinds): the true referent, which
//!   CPython 3.13 gets wrong for `X86_64_RELOC_SIGNED` (it adds the field
//!   to the section's start as if it were an offset).
//!
//! The relocated bytes are kept as they are (CPython's header keeps them
//! too; the patch functions overwrite the field).

use super::object::{bad, RawKind, RawObject, RawReloc, RawSection, RawTarget};
use super::symbols::field_value;
use crate::error::BadInput;
use crate::model::{Arch, RelocKind};
use crate::target::ObjectFormat;
use object::{Object, ObjectSection, ObjectSymbol, RelocationFlags, RelocationTarget, SectionIndex, SymbolKind};

/// Largest part (code or read-only data) of one stencil, gaps included.
const MAX_PART: u64 = super::MAX_BODY as u64;

/// What a section is to a stencil.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Code,
    Data,
    /// Not copied: debug information, unwind tables, linker directives.
    Skip,
}

/// The format-specific facts the reader asks.
pub trait Format {
    const FORMAT: ObjectFormat;
    /// Code, data or skipped, for section `index` named `name`.
    fn class(&self, index: SectionIndex, name: &str) -> Class;
    /// Where the section lands (Mach-O: by address, as CPython lays the
    /// parts out); `None`: appended to its part.
    fn address(&self, index: SectionIndex) -> Option<u64>;
    /// Relocations the section's table holds, as the `object` iterator
    /// must yield them (an error: the table itself is damaged).
    fn relocation_count(&self, index: SectionIndex) -> Result<u64, String>;
    /// The relocation kind of a raw relocation (an error names what is wrong).
    fn kind(&self, arch: Arch, flags: RelocationFlags) -> Result<RelocKind, String>;
    /// The symbol name as CPython's tools use it (prefix removed).
    fn cpython_name<'a>(&self, raw: &'a str) -> &'a str;
    /// How llvm-objdump prints the relocation's value (no addend: these
    /// formats keep it in the field).
    fn printed(&self, kind: RelocKind, raw: &str) -> String;
}

/// Read `file` (already parsed and of format `F`).
pub fn read<'d, O: Object<'d>, F: Format>(path: &str, file: &O, format: &F) -> Result<RawObject, BadInput> {
    let what = F::FORMAT;
    let arch = match file.architecture() {
        object::Architecture::X86_64 => Arch::X86_64,
        object::Architecture::Aarch64 => Arch::Aarch64,
        object::Architecture::I386 => Arch::I686,
        a => return Err(BadInput::in_file(path, format!("unsupported {what} machine {a:?}"))),
    };
    if file.kind() != object::ObjectKind::Relocatable {
        return Err(BadInput::in_file(path, format!("not a relocatable {what} object")));
    }

    let mut sections: Vec<RawSection> = Vec::new();
    let mut names: Vec<(usize, String, u64)> = Vec::new();
    // Bytes each part has so far, gaps included, and the address the next
    // section may start at (Mach-O: code and data share one address space).
    let (mut code_total, mut data_total) = (0u64, 0u64);
    for s in file.sections() {
        let index = s.index();
        let name = s
            .name()
            .map_err(|e| BadInput::in_file(path, format!("bad {what} object: section {}: {e}", index.0)))?
            .to_string();
        names.push((index.0, name.clone(), s.address()));
        let kind = match format.class(index, &name) {
            Class::Skip => continue,
            Class::Code => RawKind::Code,
            Class::Data => RawKind::Data,
        };
        let address = format.address(index);
        let gap = match address {
            Some(a) => a.checked_sub(code_total + data_total).ok_or_else(|| {
                bad(
                    path,
                    &name,
                    0,
                    format!("at address {a:#x}, inside what comes before it ({:#x} bytes)", code_total + data_total),
                )
            })?,
            None => 0,
        };
        let part = if kind == RawKind::Code { &mut code_total } else { &mut data_total };
        *part = part.saturating_add(gap).saturating_add(s.size());
        if *part > MAX_PART {
            let which = if kind == RawKind::Code { "code" } else { "read-only data" };
            return Err(bad(
                path,
                &name,
                0,
                format!(
                    "{:#x} bytes (after a gap of {gap:#x}) make the {which} larger than a stencil's limit ({MAX_PART:#x} bytes)",
                    s.size()
                ),
            ));
        }
        let bytes = if s.kind() == object::SectionKind::UninitializedData {
            vec![0; s.size() as usize]
        } else {
            let d = s.data().map_err(|e| bad(path, &name, 0, format!("truncated section: {e}")))?;
            if (d.len() as u64) != s.size() {
                return Err(bad(path, &name, d.len() as u64, format!("truncated section ({:#x} bytes)", s.size())));
            }
            d.to_vec()
        };
        sections.push(RawSection { index: index.0, name, kind, bytes, symbols: Vec::new(), address });
    }

    for sym in file.symbols() {
        let Some(idx) = sym.section_index() else { continue };
        if matches!(sym.kind(), SymbolKind::Section | SymbolKind::File) {
            continue;
        }
        let name = sym
            .name()
            .map_err(|e| BadInput::in_file(path, format!("bad {what} object: symbol {}: {e}", sym.index().0)))?;
        let Some(s) = sections.iter_mut().find(|s| s.index == idx.0) else { continue };
        let start = names.iter().find(|(i, ..)| *i == idx.0).map_or(0, |(_, _, a)| *a);
        let offset = sym.address().checked_sub(start).filter(|o| *o <= s.bytes.len() as u64).ok_or_else(|| {
            bad(path, &s.name, 0, format!("symbol `{name}` at {:#x} lies outside its section", sym.address()))
        })?;
        s.symbols.push((format.cpython_name(name).to_string(), offset));
    }

    let mut relocs = Vec::new();
    for s in file.sections() {
        let Some(copied) = sections.iter().find(|c| c.index == s.index().0) else { continue };
        let sname = copied.name.clone();
        let size = copied.bytes.len() as u64;
        let want = format.relocation_count(s.index()).map_err(|m| bad(path, &sname, 0, m))?;
        let mut read = 0u64;
        for (offset, rel) in s.relocations() {
            read += 1;
            let at = |m: String| bad(path, &sname, offset, m);
            let kind = format.kind(arch, rel.flags()).map_err(at)?;
            let width = kind.width();
            if offset.checked_add(width).is_none_or(|end| end > size) {
                return Err(at(format!("{} outside its section ({size:#x} bytes)", kind.name())));
            }
            let field = &copied.bytes[offset as usize..(offset + width) as usize];
            let info = crate::target::reloc_info(kind);
            let pc_relative = info.implicit_addend_bias.is_some_and(|b| b != 0);
            let (raw_name, target, addend) = match rel.target() {
                RelocationTarget::Symbol(si) => {
                    let sym = file.symbol_by_index(si).map_err(|e| at(format!("bad symbol index: {e}")))?;
                    let name = sym.name().map_err(|e| at(format!("bad symbol name: {e}")))?;
                    let target = match sym.section_index() {
                        Some(idx) => {
                            let Some(t) = sections.iter().find(|c| c.index == idx.0) else {
                                return Err(at(format!("relocation against `{name}` in a section that is not copied")));
                            };
                            let start = names.iter().find(|(i, ..)| *i == idx.0).map_or(0, |(_, _, a)| *a);
                            let name = if sym.kind() == SymbolKind::Section { t.name.as_str() } else { name };
                            let offset = sym.address().wrapping_sub(start);
                            (name.to_string(), RawTarget::Defined { section: idx.0, offset })
                        }
                        None => (name.to_string(), RawTarget::Undefined),
                    };
                    let addend = match info.implicit_addend_bias {
                        Some(bias) => field_value(field).wrapping_add(bias),
                        None if kind == RelocKind::MachO_ARM64_UNSIGNED => field_value(field),
                        // A paired ARM64_RELOC_ADDEND (the `object` crate folds it in).
                        None if !rel.has_implicit_addend() => rel.addend(),
                        None => 0,
                    };
                    (target.0, target.1, addend)
                }
                // Mach-O `r_extern = 0`: the field holds the target's address.
                RelocationTarget::Section(si) => {
                    let Some(t) = sections.iter().find(|c| c.index == si.0) else {
                        return Err(at(format!("relocation against section {} that is not copied", si.0)));
                    };
                    let Some(bias) = info.implicit_addend_bias else {
                        return Err(at(format!("{} against a section (r_extern = 0)", kind.name())));
                    };
                    let start = names.iter().find(|(i, ..)| *i == si.0).map_or(0, |(_, _, a)| *a);
                    let place = names.iter().find(|(i, ..)| *i == copied.index).map_or(0, |(_, _, a)| *a) + offset;
                    let referent = if pc_relative {
                        place.wrapping_add(width).wrapping_add(field_value(field) as u64)
                    } else {
                        field_value(field) as u64
                    };
                    let addend = (referent.wrapping_sub(start) as i64).wrapping_add(bias);
                    (t.name.clone(), RawTarget::Defined { section: si.0, offset: 0 }, addend)
                }
                other => return Err(at(format!("relocation target {other:?}"))),
            };
            let printed = format.printed(kind, &raw_name);
            let (kind, symbol) = super::symbols::resolve(kind, &printed);
            let name = match (&target, symbol) {
                // Section-relative: the section, as objdump prints it.
                (RawTarget::Defined { .. }, crate::model::Symbol::Local(n)) => n,
                (_, s) => s.to_string(),
            };
            relocs.push(RawReloc { section: copied.index, offset, kind, symbol: name, target, addend, printed });
        }
        if read != want {
            return Err(bad(
                path,
                &sname,
                0,
                format!("{read} relocations read, but its relocation table holds {want}"),
            ));
        }
    }
    Ok(RawObject { arch, format: what, sections, relocs })
}
