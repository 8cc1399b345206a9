//! COFF objects (AMD64, ARM64, I386): the format's facts for [`super::reader`].
//!
//! * Sections: executable (`IMAGE_SCN_MEM_EXECUTE`) is code; readable
//!   (`IMAGE_SCN_MEM_READ`: `.rdata`, `.data`, `.bss`, string-literal
//!   COMDATs) is data, appended in section order as CPython's
//!   `_targets.py` does; discardable or linker-only ones (`.debug$S`,
//!   `.drectve`, `.llvm_addrsig`) and the unwind tables `.pdata`/`.xdata`
//!   are skipped.
//! * Relocation tables are read raw to count them (the `object` iterator
//!   yields nothing from a table outside the file).
//! * `__imp_X` is the import slot of X: `symbols::resolve` makes it the
//!   import kind (a GOT entry of X).

use super::reader::{Class, Format};
use crate::error::BadInput;
use crate::model::{Arch, RelocKind};
use crate::target::ObjectFormat;
use object::pe;
use object::read::coff::CoffFile;
use object::{RelocationFlags, SectionIndex};

struct Coff<'a, 'd> {
    file: &'a CoffFile<'d>,
    bytes: &'d [u8],
}

/// Read a COFF object.
pub fn read(path: &str, bytes: &[u8]) -> Result<super::object::RawObject, BadInput> {
    let file = CoffFile::<&[u8]>::parse(bytes).map_err(|e| BadInput::in_file(path, format!("bad COFF object: {e}")))?;
    super::reader::read(path, &file, &Coff { file: &file, bytes })
}

/// The relocation kind of a COFF relocation `typ` on `arch`.
pub fn reloc_kind(arch: Arch, typ: u16) -> Option<RelocKind> {
    use RelocKind::*;
    Some(match arch {
        Arch::X86_64 => match typ {
            pe::IMAGE_REL_AMD64_REL32 => Coff_AMD64_REL32,
            pe::IMAGE_REL_AMD64_ADDR64 => Coff_AMD64_ADDR64,
            _ => return None,
        },
        Arch::Aarch64 => match typ {
            pe::IMAGE_REL_ARM64_BRANCH26 => Coff_ARM64_BRANCH26,
            pe::IMAGE_REL_ARM64_BRANCH19 => Coff_ARM64_BRANCH19,
            pe::IMAGE_REL_ARM64_PAGEBASE_REL21 => Coff_ARM64_PAGEBASE_REL21,
            pe::IMAGE_REL_ARM64_PAGEOFFSET_12A => Coff_ARM64_PAGEOFFSET_12A,
            pe::IMAGE_REL_ARM64_PAGEOFFSET_12L => Coff_ARM64_PAGEOFFSET_12L,
            pe::IMAGE_REL_ARM64_ADDR64 => Coff_ARM64_ADDR64,
            _ => return None,
        },
        Arch::I686 => match typ {
            pe::IMAGE_REL_I386_DIR32 => I386_DIR32,
            pe::IMAGE_REL_I386_REL32 => I386_REL32,
            _ => return None,
        },
    })
}

impl Coff<'_, '_> {
    fn header(&self, index: SectionIndex) -> Option<&pe::ImageSectionHeader> {
        self.file.coff_section_table().section(index).ok()
    }
}

impl Format for Coff<'_, '_> {
    const FORMAT: ObjectFormat = ObjectFormat::Coff;

    fn class(&self, index: SectionIndex, name: &str) -> Class {
        let Some(h) = self.header(index) else { return Class::Skip };
        let c = h.characteristics.get(object::LittleEndian);
        let unwind = name == ".pdata" || name == ".xdata" || name.starts_with(".pdata$") || name.starts_with(".xdata$");
        if c & pe::IMAGE_SCN_MEM_EXECUTE != 0 {
            Class::Code
        } else if unwind
            || name.starts_with(".debug")
            || c & (pe::IMAGE_SCN_MEM_DISCARDABLE | pe::IMAGE_SCN_LNK_REMOVE | pe::IMAGE_SCN_LNK_INFO) != 0
        {
            Class::Skip
        } else if c & pe::IMAGE_SCN_MEM_READ != 0 {
            Class::Data
        } else {
            Class::Skip
        }
    }

    fn address(&self, _index: SectionIndex) -> Option<u64> {
        None
    }

    fn relocation_count(&self, index: SectionIndex) -> Result<u64, String> {
        let h = self.header(index).ok_or("no such section")?;
        let (at, n) =
            (h.pointer_to_relocations.get(object::LittleEndian), h.number_of_relocations.get(object::LittleEndian));
        h.coff_relocations(self.bytes)
            .map(|t| t.len() as u64)
            .map_err(|_| format!("relocation table ({n} entries at {at:#x}) lies outside the file"))
    }

    fn kind(&self, arch: Arch, flags: RelocationFlags) -> Result<RelocKind, String> {
        let RelocationFlags::Coff { typ } = flags else {
            return Err("not a COFF relocation".to_string());
        };
        reloc_kind(arch, typ).ok_or_else(|| format!("unknown relocation type {typ:#x}"))
    }

    fn cpython_name<'a>(&self, raw: &'a str) -> &'a str {
        raw
    }

    fn printed(&self, _kind: RelocKind, raw: &str) -> String {
        raw.to_string()
    }
}
