//! The embedded corpus: stencilcheck's own small stencils
//! (`corpus/templates/*.c`, compiled by `scripts/build-corpus.sh` into
//! `corpus/x86_64-unknown-linux-gnu/*.o`), verified by `stencilcheck verify`
//! with no input. Add an object here when you add a template.

use crate::error::BadInput;
use crate::model::StencilSet;
use std::path::{Path, PathBuf};

/// The triple the embedded objects were built for.
pub const TRIPLE: &str = "x86_64-unknown-linux-gnu";

macro_rules! objects {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_bytes!(concat!("../corpus/x86_64-unknown-linux-gnu/", $name, ".o")) as &[u8])),*]
    };
}

/// (stencil name, object bytes), the trampoline first.
pub const OBJECTS: &[(&str, &[u8])] = objects![
    "trampoline",
    "abs32_oparg",
    "call_extern",
    "guard_jump",
    "load_oparg",
    "load_operand",
    "medium_movabs",
    "pc32_string",
    "plt_call",
];

/// Where reports say the corpus came from.
pub fn path() -> PathBuf {
    PathBuf::from(format!("<embedded corpus/{TRIPLE}>"))
}

/// Load the embedded corpus as one stencil set.
pub fn load() -> Result<StencilSet, BadInput> {
    let objects: Vec<(PathBuf, Vec<u8>)> = OBJECTS
        .iter()
        .map(|(name, bytes)| (Path::new(&format!("corpus/{TRIPLE}/{name}.o")).to_path_buf(), bytes.to_vec()))
        .collect();
    crate::load::load_objects(&path(), &objects)
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
    fn corpus_is_every_object_on_disk() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(TRIPLE);
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .expect("corpus dir")
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "o"))
            .map(|p| crate::load::stem(&p))
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = OBJECTS.iter().map(|(n, _)| n.to_string()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded, "add new objects to corpus::OBJECTS");
    }
}
