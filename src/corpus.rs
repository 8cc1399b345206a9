//! The embedded corpus: stencilcheck's own small stencils
//! (`corpus/templates/*.c`, compiled by `scripts/build-corpus.sh TRIPLE`
//! into `corpus/TRIPLE/*.o`) for every triple the templates build for,
//! verified by `stencilcheck verify` with no input. Add an object to
//! [`objects!`]'s list when you add a template.
//!
//! i686 is not among them: its stencils need CPython's GHC convention
//! (3.13 rewrites the LLVM IR to `ghccc`), which clang offers no attribute
//! for on 32-bit x86 (`preserve_none` is x86-64/aarch64 only).

use crate::error::BadInput;
use crate::model::StencilSet;
use std::path::{Path, PathBuf};

/// The triple of the default corpus (what tests and `--cross-check-objdump` use).
pub const TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// (stencil name, object bytes) of one triple, the trampoline first.
macro_rules! objects {
    ($triple:literal) => {
        &[
            ("trampoline", include_bytes!(concat!("../corpus/", $triple, "/trampoline.o")) as &[u8]),
            ("abs32_oparg", include_bytes!(concat!("../corpus/", $triple, "/abs32_oparg.o"))),
            ("call_extern", include_bytes!(concat!("../corpus/", $triple, "/call_extern.o"))),
            ("guard_jump", include_bytes!(concat!("../corpus/", $triple, "/guard_jump.o"))),
            ("load_oparg", include_bytes!(concat!("../corpus/", $triple, "/load_oparg.o"))),
            ("load_operand", include_bytes!(concat!("../corpus/", $triple, "/load_operand.o"))),
            ("medium_movabs", include_bytes!(concat!("../corpus/", $triple, "/medium_movabs.o"))),
            ("pc32_string", include_bytes!(concat!("../corpus/", $triple, "/pc32_string.o"))),
            ("plt_call", include_bytes!(concat!("../corpus/", $triple, "/plt_call.o"))),
        ]
    };
}

/// One embedded object: its stencil name and bytes.
pub type Object = (&'static str, &'static [u8]);

/// Every embedded triple and its objects.
pub const TRIPLES: &[(&str, &[Object])] = &[
    ("x86_64-unknown-linux-gnu", objects!("x86_64-unknown-linux-gnu")),
    ("aarch64-unknown-linux-gnu", objects!("aarch64-unknown-linux-gnu")),
    ("x86_64-apple-darwin", objects!("x86_64-apple-darwin")),
    ("aarch64-apple-darwin", objects!("aarch64-apple-darwin")),
    ("x86_64-pc-windows-msvc", objects!("x86_64-pc-windows-msvc")),
];

/// The default triple's objects.
pub const OBJECTS: &[Object] = TRIPLES[0].1;

/// Where reports say a triple's corpus came from.
pub fn path_of(triple: &str) -> PathBuf {
    PathBuf::from(format!("<embedded corpus/{triple}>"))
}

/// Where reports say the default corpus came from.
pub fn path() -> PathBuf {
    path_of(TRIPLE)
}

/// The objects of the embedded corpus whose report path is `path`.
pub fn objects_at(path: &Path) -> Option<&'static [Object]> {
    TRIPLES.iter().find(|(t, _)| path_of(t) == path).map(|(_, objects)| *objects)
}

/// Load one triple's embedded corpus as a stencil set.
pub fn load_triple(triple: &str) -> Result<StencilSet, BadInput> {
    let shown = path_of(triple);
    let objects =
        objects_at(&shown).ok_or_else(|| BadInput::in_file(shown.display(), "no embedded corpus for this triple"))?;
    let objects: Vec<(PathBuf, Vec<u8>)> = objects
        .iter()
        .map(|(name, bytes)| (Path::new(&format!("corpus/{triple}/{name}.o")).to_path_buf(), bytes.to_vec()))
        .collect();
    crate::load::load_objects(&shown, &objects)
}

/// Load the default triple's embedded corpus.
pub fn load() -> Result<StencilSet, BadInput> {
    load_triple(TRIPLE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RelocKind;

    #[test]
    fn corpus_covers_every_x86_64_relocation_kind_it_promises() {
        let set = load().expect("embedded corpus loads");
        assert_eq!(set.stencils.len(), OBJECTS.len());
        let kinds: std::collections::BTreeSet<&str> =
            set.stencils.iter().flat_map(|s| s.relocations.iter().map(|r| r.kind.name())).collect();
        for k in [
            RelocKind::X86_64_GOTPCREL,
            RelocKind::X86_64_GOTPCRELX,
            RelocKind::X86_64_REX_GOTPCRELX,
            RelocKind::X86_64_PC32,
            RelocKind::X86_64_PLT32,
            RelocKind::X86_64_64,
            RelocKind::X86_64_32,
            RelocKind::X86_64_32S,
        ] {
            assert!(kinds.contains(k.name()), "corpus lacks {k}: has {kinds:?}");
        }
    }

    #[test]
    fn corpus_is_every_object_on_disk_for_every_triple_on_disk() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        let mut triples_on_disk: Vec<String> = std::fs::read_dir(&root)
            .expect("corpus dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir() && e.file_name() != "templates")
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        triples_on_disk.sort();
        let mut embedded_triples: Vec<String> = TRIPLES.iter().map(|(t, _)| t.to_string()).collect();
        embedded_triples.sort();
        assert_eq!(triples_on_disk, embedded_triples, "add new triples to corpus::TRIPLES");
        for (triple, objects) in TRIPLES {
            let mut on_disk: Vec<String> = std::fs::read_dir(root.join(triple))
                .expect("corpus dir")
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "o"))
                .map(|p| crate::load::stem(&p))
                .collect();
            on_disk.sort();
            let mut embedded: Vec<String> = objects.iter().map(|(n, _)| n.to_string()).collect();
            embedded.sort();
            assert_eq!(on_disk, embedded, "{triple}: add new objects to the objects! list");
        }
    }

    #[test]
    fn every_embedded_triple_loads_as_its_target() {
        for (triple, _) in TRIPLES {
            let set = load_triple(triple).expect(triple);
            let arch = triple.split('-').next().unwrap();
            assert_eq!(set.target.arch.to_string(), arch, "{triple}");
            let format = if triple.contains("apple") {
                "Mach-O"
            } else if triple.contains("windows") {
                "COFF"
            } else {
                "ELF"
            };
            assert_eq!(set.target.format.to_string(), format, "{triple}");
        }
    }
}
