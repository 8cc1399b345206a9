//! `--cross-check-objdump`: run llvm-objdump (`llvm-objdump-19`, else
//! `llvm-objdump`) on each object and confirm its relocation lines are
//! exactly the relocations the loader read (offset, type, symbol±addend),
//! section by section. A disagreement is reported as bad input (exit 2):
//! the loader cannot be trusted on that object.

use super::object::RawObject;
use crate::error::BadInput;
use crate::model::RelocKind;
use crate::model::StencilSet;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The first llvm-objdump that runs.
pub fn objdump() -> Option<&'static str> {
    ["llvm-objdump-19", "llvm-objdump"]
        .into_iter()
        .find(|tool| Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success()))
}

/// `(section, "OFFSET TYPE VALUE")` lines from `llvm-objdump -r`.
pub fn parse_objdump(text: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let mut section = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("RELOCATION RECORDS FOR [") {
            section = rest.strip_suffix("]:").map(str::to_string);
            continue;
        }
        // The header's listing and `llvm-objdump -r` share one relocation-line grammar.
        if let (Some(s), Some(r)) = (&section, super::header::listing::relocation_line(line)) {
            out.insert((s.clone(), format!("{:#x} {} {}", r.offset, r.kind, r.target)));
        }
    }
    out
}

/// The same lines from what the loader read.
pub fn loader_lines(raw: &RawObject) -> BTreeSet<(String, String)> {
    raw.relocs
        .iter()
        .map(|r| {
            let s = raw.sections.iter().find(|s| s.index == r.section).map(|s| s.name.clone()).unwrap_or_default();
            (s, format!("{:#x} {} {}", r.offset, r.kind.name(), r.printed))
        })
        .chain(raw.relocs.iter().filter_map(|r| {
            // Mach-O arm64 prints a paired addend as a line of its own.
            let paired = matches!(r.kind, RelocKind::MachO_ARM64_PAGE21 | RelocKind::MachO_ARM64_PAGEOFF12);
            let s = raw.sections.iter().find(|s| s.index == r.section).map(|s| s.name.clone()).unwrap_or_default();
            (paired && r.addend != 0).then(|| (s, format!("{:#x} ARM64_RELOC_ADDEND {:#x}", r.offset, r.addend)))
        }))
        .collect()
}

/// Compare what the loader reads from `path` with objdump's `listing` of it.
fn check_listing(tool: &str, path: &Path, listing: &str) -> Result<usize, BadInput> {
    let shown = path.display().to_string();
    let bytes = super::read_limited(path, super::MAX_OBJECT_FILE)?;
    let raw = super::read_object(&shown, &bytes)?;
    let theirs = parse_objdump(listing);
    // Only the sections the loader copies (objdump also lists e.g. .eh_frame).
    let copied: BTreeSet<&str> = raw.sections.iter().map(|s| s.name.as_str()).collect();
    let theirs: BTreeSet<_> = theirs.into_iter().filter(|(s, _)| copied.contains(s.as_str())).collect();
    let ours = loader_lines(&raw);
    if let Some((s, l)) = theirs.difference(&ours).next() {
        return Err(BadInput::in_file(&shown, format!("{tool} prints `{l}` in {s}, the loader did not read it")));
    }
    if let Some((s, l)) = ours.difference(&theirs).next() {
        return Err(BadInput::in_file(&shown, format!("the loader read `{l}` in {s}, {tool} does not print it")));
    }
    Ok(ours.len())
}

/// Files per llvm-objdump process: one process per object cost ~25 ms each
/// (six seconds for a target's 235 objects), a batch of them as much as one.
const OBJDUMP_BATCH: usize = 128;

/// `llvm-objdump -r` of each path, in order: one process per batch, its
/// output split at the `PATH:\tfile format` line objdump prints per file.
fn objdump_listings(tool: &str, paths: &[PathBuf]) -> Result<Vec<String>, BadInput> {
    let mut listings = Vec::with_capacity(paths.len());
    for batch in paths.chunks(OBJDUMP_BATCH) {
        let out = Command::new(tool)
            .arg("-r")
            .args(batch)
            .output()
            .map_err(|e| BadInput::in_file(batch[0].display(), format!("cannot run {tool}: {e}")))?;
        if !out.status.success() {
            // Name the object objdump refused, not the batch.
            for p in batch {
                let one = Command::new(tool).arg("-r").arg(p).output();
                if !one.is_ok_and(|o| o.status.success()) {
                    return Err(BadInput::in_file(p.display(), format!("{tool} -r failed")));
                }
            }
            return Err(BadInput::in_file(batch[0].display(), format!("{tool} -r failed on a batch")));
        }
        listings.extend(split_listing(tool, batch, &String::from_utf8_lossy(&out.stdout))?);
    }
    Ok(listings)
}

/// Split one objdump output over several files into one listing per file.
fn split_listing(tool: &str, batch: &[PathBuf], text: &str) -> Result<Vec<String>, BadInput> {
    let heads: Vec<String> = batch.iter().map(|p| format!("{}:\tfile format ", p.display())).collect();
    let mut listings: Vec<String> = Vec::with_capacity(batch.len());
    for line in text.lines() {
        if heads.get(listings.len()).is_some_and(|h| line.starts_with(h.as_str())) {
            listings.push(String::new());
        } else if let Some(current) = listings.last_mut() {
            current.push_str(line);
            current.push('\n');
        }
    }
    if listings.len() != batch.len() {
        let missing = &batch[listings.len()];
        return Err(BadInput::in_file(missing.display(), format!("{tool} -r printed no listing for it")));
    }
    Ok(listings)
}

/// The object files behind `set`, writing the embedded corpus to a temp dir.
fn object_files(set: &StencilSet) -> Result<(Vec<PathBuf>, Option<tempdir::Dir>), BadInput> {
    if let Some(objects) = crate::corpus::objects_at(&set.path) {
        let dir = tempdir::Dir::new().map_err(|e| BadInput::in_file("corpus", format!("temp dir: {e}")))?;
        let mut files = Vec::new();
        for (name, bytes) in objects {
            let p = dir.0.join(format!("{name}.o"));
            std::fs::write(&p, bytes).map_err(|e| BadInput::in_file(p.display(), format!("cannot write: {e}")))?;
            files.push(p);
        }
        return Ok((files, Some(dir)));
    }
    if set.path.is_dir() {
        return Ok((set.stencils.iter().map(|s| set.path.join(format!("{}.o", s.name))).collect(), None));
    }
    let bytes = super::read_limited(&set.path, super::MAX_OBJECT_FILE).unwrap_or_default();
    if matches!(
        super::InputKind::sniff(&bytes),
        super::InputKind::Elf | super::InputKind::MachO | super::InputKind::Coff
    ) {
        return Ok((vec![set.path.clone()], None));
    }
    Err(BadInput::in_file(set.path.display(), "--cross-check-objdump needs object files"))
}

/// Check every object behind `set`; a one-line summary.
pub fn check(set: &StencilSet) -> Result<String, BadInput> {
    let Some(tool) = objdump() else {
        return Ok("llvm-objdump not on PATH: skipped".to_string());
    };
    let (files, _keep) = object_files(set)?;
    let listings = objdump_listings(tool, &files)?;
    let mut n = 0;
    for (f, listing) in files.iter().zip(&listings) {
        n += check_listing(tool, f, listing)?;
    }
    Ok(format!("{} objects, {n} relocations: loader and {tool} agree", files.len()))
}

mod tempdir {
    /// A directory removed when dropped.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> std::io::Result<Dir> {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            let p = std::env::temp_dir().join(format!("stencilcheck-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&p)?;
            Ok(Dir(p))
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_objdump_output_splits_into_a_listing_per_file_in_order() {
        let batch = [PathBuf::from("a.o"), PathBuf::from("dir/b c.o")];
        let text = "\na.o:\tfile format elf64-x86-64\n\nRELOCATION RECORDS FOR [.text]:\n1 R 2\n\n\
                    dir/b c.o:\tfile format elf64-x86-64\nRELOCATION RECORDS FOR [.data]:\n3 R 4\n";
        let l = split_listing("objdump", &batch, text).unwrap();
        assert_eq!(l.len(), 2);
        assert!(l[0].contains("[.text]") && l[0].contains("1 R 2") && !l[0].contains("[.data]"), "{l:?}");
        assert!(l[1].contains("[.data]") && l[1].contains("3 R 4") && !l[1].contains("[.text]"), "{l:?}");
    }

    #[test]
    fn a_file_objdump_printed_nothing_for_is_named() {
        let batch = [PathBuf::from("a.o"), PathBuf::from("b.o")];
        let e = split_listing("objdump", &batch, "a.o:\tfile format elf64-x86-64\n").unwrap_err();
        assert!(e.to_string().starts_with("b.o"), "{e}");
        // A file's name inside another's listing does not start a listing.
        let e = split_listing("objdump", &batch, "a.o:\tfile format x\n  b.o: file format\n").unwrap_err();
        assert!(e.to_string().contains("b.o"), "{e}");
    }
}
