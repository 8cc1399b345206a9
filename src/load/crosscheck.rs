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

/// Check one object file.
pub fn check_file(tool: &str, path: &Path) -> Result<usize, BadInput> {
    let shown = path.display().to_string();
    let bytes = super::read_limited(path, super::MAX_OBJECT_FILE)?;
    let raw = super::read_object(&shown, &bytes)?;
    let out = Command::new(tool)
        .arg("-r")
        .arg(path)
        .output()
        .map_err(|e| BadInput::in_file(&shown, format!("cannot run {tool}: {e}")))?;
    if !out.status.success() {
        return Err(BadInput::in_file(&shown, format!("{tool} -r failed")));
    }
    let theirs = parse_objdump(&String::from_utf8_lossy(&out.stdout));
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
    let mut n = 0;
    for f in &files {
        n += check_file(tool, f)?;
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
