//! Mach-O relocatable objects (x86-64, arm64): the format's facts for
//! [`super::reader`].
//!
//! * Sections: `S_ATTR_DEBUG` ones (`__compact_unwind`, `__DWARF`) and
//!   `__eh_frame` are skipped; a section with instructions
//!   (`S_ATTR_SOME_INSTRUCTIONS` / `S_ATTR_PURE_INSTRUCTIONS`) is code;
//!   any other is data. Sections land by address: the code part mirrors the
//!   object's addresses, and a data section at address `a` lands at data
//!   offset `a` − (bytes of code), as CPython's `_targets.py` lays them out.
//! * Relocation tables are read raw to count them: a scattered entry is
//!   refused (the `object` iterator would skip it), and an
//!   `ARM64_RELOC_ADDEND` must be followed by the `PAGE21`/`PAGEOFF12` whose
//!   addend it is (the iterator folds the pair into one relocation).
//!   `r_length` and `r_pcrel` must be what the type needs.
//! * C names carry a `_` prefix; llvm-objdump prints x86-64 GOT references
//!   as `_sym@GOTPCREL` and a section-relative relocation by its section.

use super::reader::{Class, Format};
use crate::error::BadInput;
use crate::model::{Arch, RelocKind};
use crate::target::ObjectFormat;
use object::macho;
use object::read::macho::{MachHeader, MachOFile64, Section as _};
use object::{Endianness, Object, RelocationFlags, SectionIndex};

struct MachO<'a, 'd> {
    file: &'a MachOFile64<'d, Endianness>,
}

/// Read a Mach-O object.
pub fn read(path: &str, bytes: &[u8]) -> Result<super::object::RawObject, BadInput> {
    let file = MachOFile64::<Endianness>::parse(bytes)
        .map_err(|e| BadInput::in_file(path, format!("bad Mach-O object: {e}")))?;
    if file.macho_header().filetype(file.endian()) != macho::MH_OBJECT {
        return Err(BadInput::in_file(path, "not a relocatable Mach-O object (MH_OBJECT)"));
    }
    super::reader::read(path, &file, &MachO { file: &file })
}

/// The relocation kind of a Mach-O `r_type` on `arch`.
pub fn reloc_kind(arch: Arch, r_type: u8) -> Option<RelocKind> {
    use RelocKind::*;
    Some(match arch {
        Arch::X86_64 => match r_type {
            macho::X86_64_RELOC_UNSIGNED => MachO_X86_64_UNSIGNED,
            macho::X86_64_RELOC_SIGNED => MachO_X86_64_SIGNED,
            macho::X86_64_RELOC_BRANCH => MachO_X86_64_BRANCH,
            macho::X86_64_RELOC_GOT_LOAD => MachO_X86_64_GOT_LOAD,
            macho::X86_64_RELOC_GOT => MachO_X86_64_GOT,
            _ => return None,
        },
        Arch::Aarch64 => match r_type {
            macho::ARM64_RELOC_UNSIGNED => MachO_ARM64_UNSIGNED,
            macho::ARM64_RELOC_BRANCH26 => MachO_ARM64_BRANCH26,
            macho::ARM64_RELOC_PAGE21 => MachO_ARM64_PAGE21,
            macho::ARM64_RELOC_PAGEOFF12 => MachO_ARM64_PAGEOFF12,
            macho::ARM64_RELOC_GOT_LOAD_PAGE21 => MachO_ARM64_GOT_LOAD_PAGE21,
            macho::ARM64_RELOC_GOT_LOAD_PAGEOFF12 => MachO_ARM64_GOT_LOAD_PAGEOFF12,
            _ => return None,
        },
        // CPython builds no 32-bit macOS target.
        Arch::I686 => return None,
    })
}

impl MachO<'_, '_> {
    fn section(&self, index: SectionIndex) -> Option<&macho::Section64<Endianness>> {
        self.file.section_by_index(index).ok().map(|s| s.macho_section())
    }
}

impl Format for MachO<'_, '_> {
    const FORMAT: ObjectFormat = ObjectFormat::MachO;

    fn class(&self, index: SectionIndex, name: &str) -> Class {
        let Some(s) = self.section(index) else { return Class::Skip };
        let flags = s.flags(self.file.endian());
        if flags & macho::S_ATTR_DEBUG != 0 || name == "__eh_frame" || name == "__compact_unwind" {
            Class::Skip
        } else if flags & (macho::S_ATTR_SOME_INSTRUCTIONS | macho::S_ATTR_PURE_INSTRUCTIONS) != 0 {
            Class::Code
        } else {
            Class::Data
        }
    }

    fn address(&self, index: SectionIndex) -> Option<u64> {
        self.section(index).map(|s| s.addr(self.file.endian()))
    }

    fn relocation_count(&self, index: SectionIndex) -> Result<u64, String> {
        let endian = self.file.endian();
        let s = self.section(index).ok_or("no such section")?;
        let (at, n) = (s.reloff(endian), s.nreloc(endian));
        let table = s
            .relocations(endian, self.file.data())
            .map_err(|_| format!("relocation table ({n} entries at {at:#x}) lies outside the file"))?;
        let cputype = self.file.macho_header().cputype(endian);
        let mut count = 0;
        let mut pending_addend = false;
        for (k, r) in table.iter().enumerate() {
            if r.r_scattered(endian, cputype) {
                return Err(format!("relocation entry {k} is scattered (not supported)"));
            }
            let info = r.info(endian);
            let paired = matches!(info.r_type, macho::ARM64_RELOC_PAGE21 | macho::ARM64_RELOC_PAGEOFF12);
            if pending_addend && !paired {
                return Err(format!("relocation entry {k}: ARM64_RELOC_ADDEND not followed by a PAGE21 or PAGEOFF12"));
            }
            pending_addend = cputype == macho::CPU_TYPE_ARM64 && info.r_type == macho::ARM64_RELOC_ADDEND;
            if pending_addend {
                continue;
            }
            count += 1;
        }
        if pending_addend {
            return Err("the last relocation entry is an ARM64_RELOC_ADDEND without its relocation".to_string());
        }
        Ok(count)
    }

    fn kind(&self, arch: Arch, flags: RelocationFlags) -> Result<RelocKind, String> {
        let RelocationFlags::MachO { r_type, r_pcrel, r_length } = flags else {
            return Err("not a Mach-O relocation".to_string());
        };
        let kind = reloc_kind(arch, r_type).ok_or_else(|| format!("unknown relocation type {r_type}"))?;
        let pc_relative = !matches!(kind, RelocKind::MachO_X86_64_UNSIGNED | RelocKind::MachO_ARM64_UNSIGNED)
            && !matches!(kind, RelocKind::MachO_ARM64_PAGEOFF12 | RelocKind::MachO_ARM64_GOT_LOAD_PAGEOFF12);
        let width = 1u64 << r_length;
        if width != kind.width() {
            return Err(format!("{kind} with r_length {r_length} ({width} bytes, not {})", kind.width()));
        }
        if r_pcrel != pc_relative {
            return Err(format!("{kind} with r_pcrel {}", u8::from(r_pcrel)));
        }
        Ok(kind)
    }

    fn cpython_name<'a>(&self, raw: &'a str) -> &'a str {
        raw.strip_prefix('_').unwrap_or(raw)
    }

    fn printed(&self, kind: RelocKind, raw: &str) -> String {
        match kind {
            RelocKind::MachO_X86_64_GOT | RelocKind::MachO_X86_64_GOT_LOAD => format!("{raw}@GOTPCREL"),
            _ => raw.to_string(),
        }
    }
}
