//! How each object format spells a relocation's symbol, and where it keeps
//! the addend: one place for the header listing and the object readers.
//!
//! - ELF: names as they are (`_JIT_OPARG`, `.rodata.str1.1`), addends in RELA.
//! - Mach-O: C names carry a `_` prefix (`__JIT_OPARG`, `__Py_Dealloc`);
//!   llvm-objdump prints GOT references as `_sym@GOTPCREL`; a relocation
//!   against a section prints the section (`__cstring`); assembler-local
//!   names start with `l` or `L` (`l_.str`, `ltmp0`).
//! - COFF: `__imp_X` is the import slot of X, which CPython turns into a GOT
//!   entry (the target says which kind that makes); MSVC string literals
//!   (`??_C@…`), `$`-names and section names are the object's own; i686
//!   adds a `_` prefix to C names.
//! - Mach-O x86-64 and COFF keep the addend in the field itself.

use crate::model::{RelocKind, Relocation, Symbol};
use crate::target::{format_of_reloc, ObjectFormat, Target};
use std::collections::BTreeMap;

/// The kind and symbol a relocation printed as `kind printed` stands for.
pub fn resolve(kind: RelocKind, printed: &str) -> (RelocKind, Symbol) {
    let info = Target::elf(kind.arch()).info();
    match format_of_reloc(kind) {
        Some(ObjectFormat::MachO) => {
            let name = printed.strip_suffix("@GOTPCREL").unwrap_or(printed);
            if is_macho_section(name) || name.starts_with('l') || name.starts_with('L') {
                return (kind, Symbol::Local(name.to_string()));
            }
            (kind, Symbol::classify(name.strip_prefix('_').unwrap_or(name)))
        }
        Some(ObjectFormat::Coff) => {
            let (kind, name) = match (printed.strip_prefix("__imp_"), info.through_import(kind)) {
                (Some(slot_of), Some(imported)) => (imported, slot_of),
                _ => (kind, printed),
            };
            if name.starts_with("??_C@") || name.starts_with('$') || name.starts_with('.') {
                return (kind, Symbol::Local(name.to_string()));
            }
            let prefix = info.coff_symbol_prefix();
            (kind, Symbol::classify(name.strip_prefix(prefix).filter(|_| !prefix.is_empty()).unwrap_or(name)))
        }
        Some(ObjectFormat::Elf) | None => (kind, Symbol::classify(printed)),
    }
}

/// Section names a Mach-O relocation against a section prints (`__cstring`,
/// `__const`, `__literal16`…): `__` and lower-case letters and digits.
fn is_macho_section(name: &str) -> bool {
    name.strip_prefix("__")
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
}

/// The signed little-endian value of a relocated field (4 or 8 bytes, the
/// only widths the tables have; 0 otherwise): an implicit addend.
pub fn field_value(field: &[u8]) -> i64 {
    match *field {
        [a, b, c, d] => i64::from(i32::from_le_bytes([a, b, c, d])),
        [a, b, c, d, e, f, g, h] => i64::from_le_bytes([a, b, c, d, e, f, g, h]),
        _ => 0,
    }
}

/// Where the target keeps the addend in the field (Mach-O x86-64, COFF),
/// take it from `code` (the bytes as the object has them) and add it to the
/// printed one (objdump prints none for these formats).
///
/// A Mach-O relocation against a section (`__cstring`: r_extern = 0)
/// stores the target's object-file address relative to the field's end.
/// CPython lays each data section at `address − code size` in the data
/// part (the code's size in the object: before CPython cut a final jump off
/// it), so the section's name is given the local offset `−code size` (the
/// object's address 0 in data terms) and the addend becomes the object-file
/// address minus the PC bias: the site is judged against exactly where the
/// object says, not merely "somewhere in the data". Returns those locals.
pub fn fill_implicit_addends(
    code: &[u8],
    object_code_len: u64,
    relocations: &mut [Relocation],
) -> BTreeMap<String, u64> {
    let mut locals = BTreeMap::new();
    for r in relocations {
        let info = crate::target::reloc_info(r.kind);
        let Some(bias) = info.implicit_addend_bias else { continue };
        let start = r.offset as usize;
        let Some(field) = code.get(start..start + info.width as usize) else { continue };
        r.addend = r.addend.wrapping_add(field_value(field)).wrapping_add(bias);
        if let Symbol::Local(name) = &r.symbol {
            if format_of_reloc(r.kind) == Some(ObjectFormat::MachO) && is_macho_section(name) && bias != 0 {
                // Field end (P + 4) plus the stored displacement is the object address.
                r.addend = r.addend.wrapping_add(r.offset as i64 + 4);
                locals.insert(name.clone(), object_code_len.wrapping_neg());
            }
        }
    }
    locals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mach_o_names_lose_one_underscore_but_sections_and_locals_stay() {
        let k = RelocKind::MachO_X86_64_GOT;
        assert_eq!(resolve(k, "__JIT_OPARG@GOTPCREL"), (k, Symbol::Oparg));
        assert_eq!(resolve(k, "__Py_Dealloc@GOTPCREL"), (k, Symbol::External("_Py_Dealloc".into())));
        assert_eq!(resolve(k, "_PyLong_Type@GOTPCREL"), (k, Symbol::External("PyLong_Type".into())));
        let s = RelocKind::MachO_X86_64_SIGNED;
        assert_eq!(resolve(s, "__cstring"), (s, Symbol::Local("__cstring".into())));
        assert_eq!(resolve(s, "l_switch.table._JIT_ENTRY"), (s, Symbol::Local("l_switch.table._JIT_ENTRY".into())));
        let b = RelocKind::MachO_ARM64_BRANCH26;
        assert_eq!(resolve(b, "__JIT_CONTINUE"), (b, Symbol::Continue));
    }

    #[test]
    fn coff_imports_become_the_import_kind_of_the_bare_name() {
        let k = RelocKind::Coff_AMD64_REL32;
        assert_eq!(resolve(k, "__imp__JIT_OPARG"), (RelocKind::Coff_AMD64_REL32_Import, Symbol::Oparg));
        assert_eq!(
            resolve(k, "__imp_PyLong_Type"),
            (RelocKind::Coff_AMD64_REL32_Import, Symbol::External("PyLong_Type".into()))
        );
        assert_eq!(resolve(k, "_JIT_CONTINUE"), (k, Symbol::Continue));
        assert_eq!(resolve(k, "??_C@_0L@HIBONIGH@x?$AA@"), (k, Symbol::Local("??_C@_0L@HIBONIGH@x?$AA@".into())));
        let p = RelocKind::Coff_ARM64_PAGEBASE_REL21;
        assert_eq!(
            resolve(p, "__imp_PyObject_Free"),
            (RelocKind::Coff_ARM64_PAGEBASE_REL21_Import, Symbol::External("PyObject_Free".into()))
        );
        // No import variant: the name stays whole.
        let b = RelocKind::Coff_ARM64_BRANCH26;
        assert_eq!(resolve(b, "__imp_X"), (b, Symbol::External("__imp_X".into())));
    }

    #[test]
    fn implicit_addends_come_from_the_field_plus_the_bias() {
        let mk = |kind, offset| Relocation {
            offset,
            kind,
            symbol: Symbol::Continue,
            addend: 0,
            line: 0,
            text: String::new(),
        };
        let code = [0xe9, 0xfc, 0xff, 0xff, 0xff, 0xe8, 0x10, 0, 0, 0];
        let mut rs = vec![mk(RelocKind::Coff_AMD64_REL32, 1), mk(RelocKind::MachO_X86_64_BRANCH, 6)];
        rs.push(mk(RelocKind::X86_64_PLT32, 6));
        assert!(fill_implicit_addends(&code, code.len() as u64, &mut rs).is_empty());
        assert_eq!(rs.iter().map(|r| r.addend).collect::<Vec<_>>(), vec![-8, 12, 0]);
    }

    #[test]
    fn a_mach_o_section_relocation_refers_to_the_object_address_in_data_terms() {
        // 0x2c: `leaq 0xf(%rip)` in 0x3f bytes of code: the object address 0x3f,
        // the first byte of __cstring, which CPython puts at data+0.
        // (The header's body is 5 bytes shorter: CPython cut a `jmp` off.)
        let mut code = vec![0u8; 0x3a];
        code[0x2c..0x30].copy_from_slice(&0xfi32.to_le_bytes());
        let mut rs = vec![Relocation {
            offset: 0x2c,
            kind: RelocKind::MachO_X86_64_SIGNED,
            symbol: Symbol::Local("__cstring".into()),
            addend: 0,
            line: 0,
            text: String::new(),
        }];
        let locals = fill_implicit_addends(&code, 0x3f, &mut rs);
        let origin = locals["__cstring"] as i64; // data − 0x3f
                                                 // S + A + (next_pc − P) with next_pc = P + 4: data + 0.
        assert_eq!(origin + rs[0].addend + 4, 0);
    }
}
