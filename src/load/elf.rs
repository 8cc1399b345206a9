//! ELF relocatable objects (x86-64, aarch64) → [`RawObject`].
//!
//! Only the ELF-specific part lives here: which sections are code or data
//! (`SHF_ALLOC`, `SHF_EXECINSTR`), relocation type numbers, and implicit
//! addends of `SHT_REL` sections (read from the relocated bytes, which are
//! then zeroed: the code looks as it would with explicit addends, so a final
//! `jmp *_JIT_CONTINUE@GOTPCREL` is recognised either way). Turning a
//! `RawObject` into a stencil is format-independent (`object.rs`).

use super::object::{bad, RawKind, RawObject, RawReloc, RawSection, RawTarget};
use crate::error::BadInput;
use crate::model::{Arch, RelocKind};
use object::elf;
use object::read::elf::{ElfFile64, SectionHeader as _};
use object::{
    Endianness, Object, ObjectSection, ObjectSymbol, RelocationFlags, RelocationTarget, SectionFlags, SymbolKind,
};
use std::collections::BTreeMap;

/// Largest part (all code, or all read-only data) of one stencil: see
/// [`super::MAX_BODY`]. A `SHT_NOBITS` section of that size costs no bytes
/// in the file, so it is checked before anything is allocated.
const MAX_PART: u64 = super::MAX_BODY as u64;

/// The relocation kind of an ELF `r_type` on `arch`.
pub fn reloc_kind(arch: Arch, r_type: u32) -> Option<RelocKind> {
    use RelocKind::*;
    Some(match arch {
        Arch::X86_64 => match r_type {
            elf::R_X86_64_64 => X86_64_64,
            elf::R_X86_64_32 => X86_64_32,
            elf::R_X86_64_32S => X86_64_32S,
            elf::R_X86_64_PC32 => X86_64_PC32,
            elf::R_X86_64_PLT32 => X86_64_PLT32,
            elf::R_X86_64_GOTPCREL => X86_64_GOTPCREL,
            elf::R_X86_64_GOTPCRELX => X86_64_GOTPCRELX,
            elf::R_X86_64_REX_GOTPCRELX => X86_64_REX_GOTPCRELX,
            _ => return None,
        },
        Arch::Aarch64 => match r_type {
            elf::R_AARCH64_ABS64 => Aarch64_ABS64,
            elf::R_AARCH64_ADR_GOT_PAGE => Aarch64_ADR_GOT_PAGE,
            elf::R_AARCH64_LD64_GOT_LO12_NC => Aarch64_LD64_GOT_LO12_NC,
            elf::R_AARCH64_ADR_PREL_PG_HI21 => Aarch64_ADR_PREL_PG_HI21,
            elf::R_AARCH64_ADD_ABS_LO12_NC => Aarch64_ADD_ABS_LO12_NC,
            elf::R_AARCH64_LDST8_ABS_LO12_NC => Aarch64_LDST8_ABS_LO12_NC,
            elf::R_AARCH64_LDST16_ABS_LO12_NC => Aarch64_LDST16_ABS_LO12_NC,
            elf::R_AARCH64_LDST32_ABS_LO12_NC => Aarch64_LDST32_ABS_LO12_NC,
            elf::R_AARCH64_LDST64_ABS_LO12_NC => Aarch64_LDST64_ABS_LO12_NC,
            elf::R_AARCH64_LDST128_ABS_LO12_NC => Aarch64_LDST128_ABS_LO12_NC,
            elf::R_AARCH64_JUMP26 => Aarch64_JUMP26,
            elf::R_AARCH64_CALL26 => Aarch64_CALL26,
            elf::R_AARCH64_MOVW_UABS_G0_NC => Aarch64_MOVW_UABS_G0_NC,
            elf::R_AARCH64_MOVW_UABS_G1_NC => Aarch64_MOVW_UABS_G1_NC,
            elf::R_AARCH64_MOVW_UABS_G2_NC => Aarch64_MOVW_UABS_G2_NC,
            elf::R_AARCH64_MOVW_UABS_G3 => Aarch64_MOVW_UABS_G3,
            _ => return None,
        },
        // CPython builds i686 stencils for Windows only: COFF, not ELF.
        Arch::I686 => return None,
    })
}

/// Bytes an implicit addend occupies for `kind` (aarch64 REL is not supported).
fn implicit_width(kind: RelocKind) -> Option<usize> {
    match kind {
        RelocKind::X86_64_64 => Some(8),
        k if k.arch() == Arch::X86_64 => Some(4),
        _ => None,
    }
}

/// Read an ELF object.
///
/// Nothing is dropped silently: every relocation section (`SHT_RELA`,
/// `SHT_REL`) that patches a copied section is checked whole before it is
/// read (in the file, entry size of its type, `sh_size` a multiple of it,
/// `sh_link` naming the symbol table) and the relocations read from it are
/// counted against `sh_size / sh_entsize`; any mismatch refuses the object
/// naming the relocation section and the offset of its header.
pub fn read(path: &str, bytes: &[u8]) -> Result<RawObject, BadInput> {
    if bytes.get(4) != Some(&elf::ELFCLASS64) {
        return Err(BadInput::in_file(path, "bad ELF object: not a 64-bit ELF object (ELFCLASS64)"));
    }
    let file =
        ElfFile64::<Endianness>::parse(bytes).map_err(|e| BadInput::in_file(path, format!("bad ELF object: {e}")))?;
    let arch = match file.architecture() {
        object::Architecture::X86_64 => Arch::X86_64,
        object::Architecture::Aarch64 => Arch::Aarch64,
        a => return Err(BadInput::in_file(path, format!("unsupported ELF machine {a:?}"))),
    };
    if file.kind() != object::ObjectKind::Relocatable {
        return Err(BadInput::in_file(path, "not a relocatable object (ET_REL)"));
    }
    let expected = relocation_sections(path, &file)?;

    let mut sections = Vec::new();
    let (mut code_total, mut data_total) = (0u64, 0u64);
    let mut names: BTreeMap<usize, String> = BTreeMap::new();
    for s in file.sections() {
        let name = s
            .name()
            .map_err(|e| BadInput::in_file(path, format!("bad ELF object: section {}: {e}", s.index().0)))?
            .to_string();
        names.insert(s.index().0, name.clone());
        let SectionFlags::Elf { sh_flags } = s.flags() else { continue };
        if sh_flags & u64::from(elf::SHF_ALLOC) == 0 {
            continue;
        }
        let kind = if sh_flags & u64::from(elf::SHF_EXECINSTR) != 0 { RawKind::Code } else { RawKind::Data };
        // A stencil is a few KiB; a huge section is a damaged header (or
        // an attempt to make us allocate and emulate megabytes of zeros).
        let part = if kind == RawKind::Code { &mut code_total } else { &mut data_total };
        *part = part.saturating_add(s.size());
        if *part > MAX_PART {
            let what = if kind == RawKind::Code { "code" } else { "read-only data" };
            return Err(bad(
                path,
                &name,
                0,
                format!("{:#x} bytes make the {what} larger than a stencil's limit ({MAX_PART:#x} bytes)", s.size()),
            ));
        }
        let data = if s.kind() == object::SectionKind::UninitializedData {
            vec![0; s.size() as usize]
        } else {
            let d = s.data().map_err(|e| bad(path, &name, 0, format!("truncated section: {e}")))?;
            if (d.len() as u64) < s.size() {
                return Err(bad(path, &name, d.len() as u64, "truncated section"));
            }
            d.to_vec()
        };
        sections.push(RawSection { index: s.index().0, name, kind, bytes: data, symbols: Vec::new(), address: None });
    }
    for sym in file.symbols() {
        let Some(idx) = sym.section_index() else { continue };
        if matches!(sym.kind(), SymbolKind::Section | SymbolKind::File) {
            continue;
        }
        let name = sym
            .name()
            .map_err(|e| BadInput::in_file(path, format!("bad ELF object: symbol {}: {e}", sym.index().0)))?;
        if let Some(s) = sections.iter_mut().find(|s| s.index == idx.0) {
            s.symbols.push((name.to_string(), sym.address()));
        }
    }

    let mut relocs = Vec::new();
    // Implicit addends read from the bytes: (section position, offset, width),
    // zeroed afterwards so the bytes look as they would with explicit addends.
    let mut implicit: Vec<(usize, usize, usize)> = Vec::new();
    for s in file.sections() {
        let Some(pos) = sections.iter().position(|c| c.index == s.index().0) else { continue };
        let copied = &sections[pos];
        let sname = copied.name.clone();
        let size = copied.bytes.len() as u64;
        let mut read = 0u64;
        for (offset, rel) in s.relocations() {
            read += 1;
            let RelocationFlags::Elf { r_type } = rel.flags() else {
                return Err(bad(path, &sname, offset, "not an ELF relocation"));
            };
            let kind = reloc_kind(arch, r_type)
                .ok_or_else(|| bad(path, &sname, offset, format!("unknown relocation type {r_type}")))?;
            if offset.checked_add(kind.width()).is_none_or(|end| end > size) {
                return Err(bad(
                    path,
                    &sname,
                    offset,
                    format!("{} outside its section ({size:#x} bytes)", kind.name()),
                ));
            }
            let RelocationTarget::Symbol(si) = rel.target() else {
                return Err(bad(path, &sname, offset, "relocation without a symbol"));
            };
            let sym =
                file.symbol_by_index(si).map_err(|e| bad(path, &sname, offset, format!("bad symbol index: {e}")))?;
            let (symbol, target) = match sym.section_index() {
                Some(idx) => {
                    let name = if sym.kind() == SymbolKind::Section {
                        names.get(&idx.0).cloned().unwrap_or_default()
                    } else {
                        sym.name().map_err(|e| bad(path, &sname, offset, format!("bad symbol name: {e}")))?.to_string()
                    };
                    if !sections.iter().any(|c| c.index == idx.0) {
                        return Err(bad(
                            path,
                            &sname,
                            offset,
                            format!("relocation against `{name}` in a section that is not copied"),
                        ));
                    }
                    (name, RawTarget::Defined { section: idx.0, offset: sym.address() })
                }
                None => (
                    sym.name().map_err(|e| bad(path, &sname, offset, format!("bad symbol name: {e}")))?.to_string(),
                    RawTarget::Undefined,
                ),
            };
            let addend = if rel.has_implicit_addend() {
                let w = implicit_width(kind)
                    .ok_or_else(|| bad(path, &sname, offset, "implicit addend for this relocation type"))?;
                let b = &copied.bytes[offset as usize..offset as usize + w];
                implicit.push((pos, offset as usize, w));
                if w == 8 {
                    i64::from_le_bytes(b.try_into().unwrap_or([0; 8]))
                } else {
                    i64::from(i32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
                }
            } else {
                rel.addend()
            };
            let printed = super::object::symbol_text(&symbol, addend);
            relocs.push(RawReloc { section: copied.index, offset, kind, symbol, target, addend, printed });
        }
        let want = expected.get(&s.index().0).copied().unwrap_or(0);
        if read != want {
            return Err(bad(
                path,
                &sname,
                0,
                format!("{read} relocations read, but its relocation sections hold {want}"),
            ));
        }
    }
    for (pos, offset, w) in implicit {
        sections[pos].bytes[offset..offset + w].fill(0);
    }
    Ok(RawObject { arch, format: crate::target::ObjectFormat::Elf, sections, relocs })
}

/// Every relocation section, checked whole: section index it patches →
/// number of relocations it (and any other relocation section of that
/// target) holds. Relocation sections of sections that are not copied
/// (non-allocated, e.g. debug information) are only counted when they
/// could be read; a section named `.rel…` that is not `SHT_REL`/`SHT_RELA`
/// is refused (a damaged `sh_type` would otherwise hide its relocations).
fn relocation_sections(path: &str, file: &ElfFile64<'_, Endianness>) -> Result<BTreeMap<usize, u64>, BadInput> {
    let endian = file.endian();
    let table = file.elf_section_table();
    let symtab = file.elf_symbol_table().section();
    let file_len = file.data().len() as u64;
    let shoff = file.elf_header().e_shoff.get(endian);
    let mut counts = BTreeMap::new();
    for (index, h) in table.iter().enumerate() {
        let name = table.section_name(endian, h).map(|n| String::from_utf8_lossy(n).into_owned());
        let header_at = shoff + index as u64 * 64;
        let shown = match &name {
            Ok(n) if !n.is_empty() => n.clone(),
            _ => format!("section {index}"),
        };
        let refuse =
            |msg: String| BadInput::in_file(path, format!("{shown} (section header at {header_at:#x}): {msg}"));
        let sh_type = h.sh_type(endian);
        let entsize = match sh_type {
            elf::SHT_RELA => 24,
            elf::SHT_REL => 16,
            _ => {
                if let Ok(n) = &name {
                    if n.starts_with(".rel") {
                        return Err(refuse(format!("named like a relocation section, but its type is {sh_type:#x}")));
                    }
                }
                continue;
            }
        };
        let target = h.sh_info(endian) as usize;
        if target == 0 || target >= table.len() {
            return Err(refuse(format!("sh_info {target} names no section ({} sections)", table.len())));
        }
        let target_header = table.section(object::SectionIndex(target)).map_err(|e| refuse(e.to_string()))?;
        let allocated = target_header.sh_flags(endian) & u64::from(elf::SHF_ALLOC) != 0;
        let executable = target_header.sh_flags(endian) & u64::from(elf::SHF_EXECINSTR) != 0;
        if !allocated && executable {
            return Err(refuse(format!("patches section {target}, code that is not allocated (SHF_ALLOC)")));
        }
        let (offset, size, ent) = (h.sh_offset(endian), h.sh_size(endian), h.sh_entsize(endian));
        let check = || -> Result<u64, BadInput> {
            let link = h.sh_link(endian) as usize;
            if link == 0 || link >= table.len() {
                return Err(refuse(format!("sh_link {link} names no section ({} sections)", table.len())));
            }
            if object::SectionIndex(link) != symtab {
                return Err(refuse(format!("sh_link {link} is not the symbol table (section {})", symtab.0)));
            }
            if ent != entsize {
                return Err(refuse(format!("sh_entsize {ent} where its type has {entsize}-byte entries")));
            }
            if size % entsize != 0 {
                return Err(refuse(format!("sh_size {size:#x} is not a multiple of {entsize}")));
            }
            if offset.checked_add(size).is_none_or(|end| end > file_len) {
                return Err(refuse(format!(
                    "sh_offset {offset:#x} + sh_size {size:#x} lies past the end of the file ({file_len:#x} bytes)"
                )));
            }
            Ok(size / entsize)
        };
        if !allocated {
            continue;
        }
        *counts.entry(target).or_insert(0) += check()?;
    }
    Ok(counts)
}
