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
use object::{Object, ObjectSection, ObjectSymbol, RelocationFlags, RelocationTarget, SectionFlags, SymbolKind};
use std::collections::BTreeMap;

/// Largest `SHT_NOBITS` section accepted (16 MiB).
const MAX_ZEROED: u64 = 16 << 20;

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
pub fn read(path: &str, bytes: &[u8]) -> Result<RawObject, BadInput> {
    let file = object::File::parse(bytes).map_err(|e| BadInput::in_file(path, format!("bad ELF object: {e}")))?;
    if file.format() != object::BinaryFormat::Elf {
        return Err(BadInput::in_file(path, "not an ELF object"));
    }
    let arch = match file.architecture() {
        object::Architecture::X86_64 => Arch::X86_64,
        object::Architecture::Aarch64 => Arch::Aarch64,
        a => return Err(BadInput::in_file(path, format!("unsupported ELF machine {a:?}"))),
    };
    if file.kind() != object::ObjectKind::Relocatable {
        return Err(BadInput::in_file(path, "not a relocatable object (ET_REL)"));
    }

    let mut sections = Vec::new();
    let mut names: BTreeMap<usize, String> = BTreeMap::new();
    for s in file.sections() {
        let name = s.name().unwrap_or("").to_string();
        names.insert(s.index().0, name.clone());
        let SectionFlags::Elf { sh_flags } = s.flags() else { continue };
        if sh_flags & u64::from(elf::SHF_ALLOC) == 0 {
            continue;
        }
        let kind = if sh_flags & u64::from(elf::SHF_EXECINSTR) != 0 { RawKind::Code } else { RawKind::Data };
        let data = if s.kind() == object::SectionKind::UninitializedData {
            // A stencil's data part is small; a huge size is a damaged header.
            if s.size() > MAX_ZEROED {
                return Err(bad(path, &name, 0, format!("{:#x} bytes of zeros is not a stencil's data", s.size())));
            }
            vec![0; s.size() as usize]
        } else {
            let d = s.data().map_err(|e| bad(path, &name, 0, format!("truncated section: {e}")))?;
            if (d.len() as u64) < s.size() {
                return Err(bad(path, &name, d.len() as u64, "truncated section"));
            }
            d.to_vec()
        };
        sections.push(RawSection { index: s.index().0, name, kind, bytes: data, symbols: Vec::new() });
    }
    for sym in file.symbols() {
        let Some(idx) = sym.section_index() else { continue };
        if matches!(sym.kind(), SymbolKind::Section | SymbolKind::File) {
            continue;
        }
        let Ok(name) = sym.name() else { continue };
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
        for (offset, rel) in s.relocations() {
            let RelocationFlags::Elf { r_type } = rel.flags() else {
                return Err(bad(path, &sname, offset, "not an ELF relocation"));
            };
            let kind = reloc_kind(arch, r_type)
                .ok_or_else(|| bad(path, &sname, offset, format!("unknown relocation type {r_type}")))?;
            if offset.checked_add(kind.width()).is_none_or(|end| end > size) {
                return Err(bad(path, &sname, offset, format!("{} outside its section ({size:#x} bytes)", kind.name())));
            }
            let RelocationTarget::Symbol(si) = rel.target() else {
                return Err(bad(path, &sname, offset, "relocation without a symbol"));
            };
            let sym = file
                .symbol_by_index(si)
                .map_err(|e| bad(path, &sname, offset, format!("bad symbol index: {e}")))?;
            let (symbol, target) = match sym.section_index() {
                Some(idx) => {
                    let name = if sym.kind() == SymbolKind::Section {
                        names.get(&idx.0).cloned().unwrap_or_default()
                    } else {
                        sym.name().unwrap_or("").to_string()
                    };
                    if !sections.iter().any(|c| c.index == idx.0) {
                        return Err(bad(path, &sname, offset, format!("relocation against `{name}` in a section that is not copied")));
                    }
                    (name, RawTarget::Defined { section: idx.0, offset: sym.address() })
                }
                None => (sym.name().unwrap_or("").to_string(), RawTarget::Undefined),
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
            relocs.push(RawReloc { section: copied.index, offset, kind, symbol, target, addend });
        }
    }
    for (pos, offset, w) in implicit {
        sections[pos].bytes[offset..offset + w].fill(0);
    }
    Ok(RawObject { arch, sections, relocs })
}
