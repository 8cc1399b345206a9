//! Load: turn an input file into a [`StencilSet`].
//!
//! The format is decided by the file's *content*, never by its name: a
//! `jit_stencils.h` is C text with `emit_…` functions holding `code_body`
//! arrays; object files are recognised by their magic numbers (ELF, Mach-O,
//! COFF). ELF objects load through `elf.rs`, Mach-O and COFF through one
//! reader (`reader.rs`, with the format facts in `macho.rs` and `coff.rs`);
//! each gives an `object::RawObject` that `object.rs` turns into a stencil. A
//! directory means every `*.o` in it, one stencil each, named by file stem.
//!
//! Bounded and never vacuous: files are read with a limit ([`MAX_HEADER_FILE`],
//! [`MAX_OBJECT_FILE`]), special files (FIFOs, devices, sockets) are refused
//! before they are read, bodies are capped at [`MAX_BODY`] and inputs at
//! [`MAX_STENCILS`]; in a directory, every `*.o` entry must be a readable
//! regular file and at least one must exist. Each is exit 2 naming the file.

pub mod coff;
pub mod crosscheck;
pub mod elf;
pub mod header;
pub mod macho;
pub mod object;
pub mod reader;
pub mod symbols;

use crate::error::BadInput;
use crate::model::StencilSet;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest input file read: a `jit_stencils.h` (3.13.5's is ~3 MiB).
pub const MAX_HEADER_FILE: u64 = 256 << 20;
/// Largest object file read (3.13.5's are a few KiB each).
pub const MAX_OBJECT_FILE: u64 = 64 << 20;
/// Largest code or data body of one stencil, in either loader: 16 KiB, 28
/// times CPython 3.13.5's largest (576 bytes of code). Work grows with it:
/// 64 placements of 16 KiB of zeros take ~3 s, of 64 KiB ~13 s, of 1 MiB
/// ~95 s (a 928-byte object claiming a 16 MiB `SHT_NOBITS` `.text` took
/// 121 s and 2.2 GB before this limit).
pub const MAX_BODY: usize = 16 << 10;
/// Most stencils in one input (CPython has a few hundred uops).
pub const MAX_STENCILS: usize = 10_000;

/// What an input looks like, judged from its first bytes and its text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// A generated `jit_stencils.h` (3.13 or 3.14+ layout; `header::dialect` tells).
    Header,
    /// An ELF object (`\x7fELF`).
    Elf,
    /// A Mach-O object (thin or universal).
    MachO,
    /// A COFF object (x86-64, aarch64 or i386 machine field).
    Coff,
    /// Anything else.
    Unknown,
}

impl InputKind {
    /// Sniff `bytes`. Object magics are checked first; text counts as a
    /// header when some line starts an `emit_` function and the text has a
    /// `code_body` or a `StencilGroup` somewhere.
    pub fn sniff(bytes: &[u8]) -> InputKind {
        const MACHO: [[u8; 4]; 5] = [
            [0xcf, 0xfa, 0xed, 0xfe],
            [0xce, 0xfa, 0xed, 0xfe],
            [0xfe, 0xed, 0xfa, 0xcf],
            [0xfe, 0xed, 0xfa, 0xce],
            [0xca, 0xfe, 0xba, 0xbe],
        ];
        // IMAGE_FILE_MACHINE_AMD64, _ARM64, _I386, little-endian.
        const COFF: [[u8; 2]; 3] = [[0x64, 0x86], [0x64, 0xaa], [0x4c, 0x01]];
        if bytes.starts_with(b"\x7fELF") {
            return InputKind::Elf;
        }
        if MACHO.iter().any(|m| bytes.starts_with(m)) {
            return InputKind::MachO;
        }
        if COFF.iter().any(|m| bytes.starts_with(m)) {
            return InputKind::Coff;
        }
        let text = String::from_utf8_lossy(bytes);
        if looks_like_header(&text) {
            InputKind::Header
        } else {
            InputKind::Unknown
        }
    }
}

fn looks_like_header(text: &str) -> bool {
    // (3.14+ leaves all-zero bodies out: a header of empty stencils still
    // has its StencilGroup table.)
    (text.contains("code_body") || text.contains("StencilGroup"))
        && text.lines().any(|l| l.starts_with("emit_") && l.contains('('))
}

/// Read `path` and load whatever it holds.
pub fn load_path(path: &Path) -> Result<StencilSet, BadInput> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| BadInput::in_file(&shown, format!("cannot read: {e}")))?;
    let set = if meta.is_dir() {
        load_dir(path)?
    } else {
        let bytes = read_limited(path, MAX_HEADER_FILE)?;
        load_bytes(path, &bytes)?
    };
    check_count(&shown, &set)?;
    Ok(set)
}

/// At most [`MAX_STENCILS`] stencils.
fn check_count(shown: &str, set: &StencilSet) -> Result<(), BadInput> {
    if set.stencils.len() > MAX_STENCILS {
        return Err(BadInput::in_file(
            shown,
            format!("{} stencils, more than the limit of {MAX_STENCILS}", set.stencils.len()),
        ));
    }
    Ok(())
}

/// What a file that is not a regular file is, for messages.
fn file_type_name(t: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// Read a regular file of at most `limit` bytes. Special files (FIFOs,
/// devices, sockets) are refused before they are opened for reading (and
/// the file is opened non-blocking, checked again once open, so a FIFO
/// swapped in between cannot block us); a file growing past `limit` while
/// being read is refused without reading more than `limit + 1` bytes.
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, BadInput> {
    use std::os::unix::fs::OpenOptionsExt;
    let shown = path.display().to_string();
    let cannot = |e: std::io::Error| BadInput::in_file(&shown, format!("cannot read: {e}"));
    let special = |t: std::fs::FileType| {
        BadInput::in_file(&shown, format!("cannot read: {}, not a regular file", file_type_name(t)))
    };
    let too_large =
        |n: u64| BadInput::in_file(&shown, format!("{n} bytes or more, larger than the limit of {limit} bytes"));
    let meta = std::fs::metadata(path).map_err(cannot)?;
    if !meta.is_file() {
        return Err(special(meta.file_type()));
    }
    if meta.len() > limit {
        return Err(too_large(meta.len()));
    }
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    if !meta.is_file() {
        return Err(special(meta.file_type()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1).read_to_end(&mut bytes).map_err(cannot)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Load an input already in memory; `path` is used for messages and
/// recorded in the result.
pub fn load_bytes(path: &Path, bytes: &[u8]) -> Result<StencilSet, BadInput> {
    let shown = path.display().to_string();
    match InputKind::sniff(bytes) {
        InputKind::Header => {
            let text = String::from_utf8_lossy(bytes);
            let mut set = header::parse(&shown, &text)?;
            set.path = path.to_path_buf();
            Ok(set)
        }
        InputKind::Elf | InputKind::MachO | InputKind::Coff => {
            if bytes.len() as u64 > MAX_OBJECT_FILE {
                return Err(BadInput::in_file(
                    &shown,
                    format!("{} bytes, larger than the limit of {MAX_OBJECT_FILE} bytes for an object", bytes.len()),
                ));
            }
            load_objects(path, &[(path.to_path_buf(), bytes.to_vec())])
        }
        InputKind::Unknown => Err(BadInput::in_file(&shown, "not a jit_stencils.h (no emit_ functions)")),
    }
}

/// The stencil name of an object: its file stem (`trampoline.o` → `trampoline`).
pub fn stem(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Read an object of any format stencilcheck knows (by its magic).
pub fn read_object(shown: &str, bytes: &[u8]) -> Result<object::RawObject, BadInput> {
    match InputKind::sniff(bytes) {
        InputKind::Elf => elf::read(shown, bytes),
        InputKind::MachO if bytes.starts_with(&[0xca, 0xfe, 0xba, 0xbe]) => {
            Err(BadInput::in_file(shown, "a universal (fat) Mach-O file: give one architecture's object"))
        }
        InputKind::MachO => macho::read(shown, bytes),
        InputKind::Coff => coff::read(shown, bytes),
        _ => Err(BadInput::in_file(shown, "not an object (ELF, Mach-O or COFF)")),
    }
}

/// One object → one stencil named after the file.
pub fn load_object(path: &Path, bytes: &[u8]) -> Result<crate::model::Stencil, BadInput> {
    let raw = read_object(&path.display().to_string(), bytes)?;
    Ok(object::build(&stem(path), &raw))
}

/// Several objects (already in memory) → one set; names from the paths.
pub fn load_objects(set_path: &Path, objects: &[(std::path::PathBuf, Vec<u8>)]) -> Result<StencilSet, BadInput> {
    let mut stencils = Vec::new();
    let mut first = None;
    for (p, bytes) in objects {
        let shown = p.display().to_string();
        let raw = read_object(&shown, bytes)?;
        match first {
            None => first = Some((raw.arch, raw.format)),
            Some((a, f)) if (a, f) != (raw.arch, raw.format) => {
                return Err(BadInput::in_file(
                    &shown,
                    format!("{} {} object among {a} {f} objects", raw.arch, raw.format),
                ))
            }
            _ => {}
        }
        stencils.push(object::build(&stem(p), &raw));
    }
    let (arch, format) = first.ok_or_else(|| BadInput::in_file(set_path.display(), "no object files (*.o)"))?;
    Ok(StencilSet {
        path: set_path.to_path_buf(),
        target: crate::target::Target::new(arch, format, crate::target::Version::V3_13),
        stencils,
        symbols_map: Vec::new(),
    })
}

/// A directory of `*.o`: one stencil per object, sorted by name. Nothing
/// is skipped silently: an entry that cannot be read, or a `*.o` that is
/// not a readable regular file (a dangling symlink, a FIFO, a directory),
/// refuses the directory naming the entry; so does a directory without any
/// `*.o`. Other names (`notes.txt`) are not objects and are left alone.
pub fn load_dir(dir: &Path) -> Result<StencilSet, BadInput> {
    let shown = dir.display().to_string();
    let entries = std::fs::read_dir(dir).map_err(|e| BadInput::in_file(&shown, format!("cannot read: {e}")))?;
    let mut paths: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| BadInput::in_file(&shown, format!("cannot read a directory entry: {e}")))?;
        let p = entry.path();
        if p.extension().is_some_and(|x| x == "o") {
            if paths.len() >= MAX_STENCILS {
                return Err(BadInput::in_file(&shown, format!("more than {MAX_STENCILS} objects (*.o), the limit")));
            }
            paths.push(p);
        }
    }
    paths.sort();
    let mut objects = Vec::new();
    for p in paths {
        let bytes = read_limited(&p, MAX_OBJECT_FILE)?;
        objects.push((p, bytes));
    }
    load_objects(dir, &objects)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_temp(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(bytes).expect("write temp file");
        f
    }

    #[test]
    fn a_universal_mach_o_is_refused_by_name() {
        let fat = [0xca, 0xfe, 0xba, 0xbe, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0];
        let e = read_object("fat.o", &fat).expect_err("fat files hold several architectures");
        assert!(e.message.contains("universal (fat) Mach-O"), "{}", e.message);
    }

    #[test]
    fn a_header_needs_both_a_body_or_table_and_an_emit_function() {
        let emit = "void\nemit_x(\n{\n}\n";
        assert_eq!(InputKind::sniff(emit.as_bytes()), InputKind::Unknown, "emit_ alone");
        assert_eq!(InputKind::sniff(b"code_body StencilGroup\n"), InputKind::Unknown, "no emit_ function");
        // The emit_ line must start the function: a call in a comment or a
        // line naming emit_ later is not one.
        let no_start = "code_body\nf(x)\n  emit_y(\n";
        assert_eq!(InputKind::sniff(no_start.as_bytes()), InputKind::Unknown, "no line starts an emit_ function");
        assert_eq!(InputKind::sniff(format!("{emit}StencilGroup\n").as_bytes()), InputKind::Header);
    }

    #[test]
    fn a_file_of_exactly_the_limit_is_read_whole_and_one_byte_more_is_refused() {
        let f = write_temp(&[7u8; 100]);
        assert_eq!(read_limited(f.path(), 100).expect("at the limit").len(), 100);
        let e = read_limited(f.path(), 99).expect_err("one byte over");
        assert!(e.message.contains("larger than the limit of 99 bytes"), "{}", e.message);
    }

    /// A file whose size the kernel does not know (procfs says 0) is still
    /// cut at the limit and refused, never read short as if it were whole.
    #[test]
    fn a_file_longer_than_its_reported_size_is_refused_past_the_limit() {
        let maps = Path::new("/proc/self/maps");
        assert_eq!(std::fs::metadata(maps).expect("procfs").len(), 0);
        let e = read_limited(maps, 16).expect_err("longer than 16 bytes");
        assert!(e.message.contains("17 bytes or more"), "{}", e.message);
    }

    #[test]
    fn the_stencil_count_limit_is_inclusive() {
        let stencil = || crate::model::Stencil {
            locals: Default::default(),
            ordinals: Default::default(),
            trampoline_mask: Vec::new(),
            got_mask: Vec::new(),
            name: "_X".into(),
            line: 1,
            instructions: Vec::new(),
            code: Vec::new(),
            data: Vec::new(),
            relocations: Vec::new(),
            data_comments: Vec::new(),
            emit: Vec::new(),
        };
        let mut set = StencilSet {
            path: "many.h".into(),
            target: crate::target::Target::elf(crate::target::Arch::X86_64),
            stencils: (0..MAX_STENCILS).map(|_| stencil()).collect(),
            symbols_map: Vec::new(),
        };
        assert!(check_count("many.h", &set).is_ok(), "exactly the limit");
        set.stencils.push(stencil());
        let e = check_count("many.h", &set).expect_err("one over");
        assert!(e.message.contains("10001 stencils, more than the limit of 10000"), "{}", e.message);
    }

    #[test]
    fn an_object_of_exactly_the_limit_is_parsed_and_one_byte_more_is_refused() {
        let mut bytes = vec![0u8; MAX_OBJECT_FILE as usize];
        bytes[..4].copy_from_slice(b"\x7fELF");
        let at_limit = load_bytes(Path::new("big.o"), &bytes).expect_err("not a valid ELF");
        assert!(!at_limit.message.contains("larger than the limit"), "{}", at_limit.message);
        bytes.push(0);
        let over = load_bytes(Path::new("big.o"), &bytes).expect_err("one byte over");
        assert!(over.message.contains("larger than the limit"), "{}", over.message);
    }

    #[test]
    fn load_sniffs_kinds() {
        assert_eq!(InputKind::sniff(b"\x7fELF\x02\x01\x01"), InputKind::Elf);
        assert_eq!(InputKind::sniff(&[0xcf, 0xfa, 0xed, 0xfe, 7, 0, 0, 1]), InputKind::MachO);
        assert_eq!(InputKind::sniff(&[0x64, 0x86, 3, 0]), InputKind::Coff);
        assert_eq!(InputKind::sniff(b"int main(void) { return 0; }\n"), InputKind::Unknown);
        assert_eq!(InputKind::sniff(b""), InputKind::Unknown);
        assert_eq!(
            InputKind::sniff(b"void\nemit_x(\n{\n    const unsigned char code_body[1] = {0x90,};\n"),
            InputKind::Header
        );
        assert_eq!(
            InputKind::sniff(b"void\nemit_x(\n    jit_state *state)\n{\n}\nstatic const StencilGroup x = {emit_x, 0, 0, {0}, {0}};\n"),
            InputKind::Header,
            "3.14+: no bodies at all"
        );
    }

    #[test]
    fn load_rejects_objects_and_other_files() {
        let elf = write_temp(b"\x7fELF\x02\x01\x01\x00");
        let e = load_path(elf.path()).unwrap_err();
        assert!(e.message.starts_with("bad ELF object"), "{e}");
        assert_eq!(e.location, elf.path().display().to_string());

        let other = write_temp(b"hello\nworld\n");
        let e = load_path(other.path()).unwrap_err();
        assert_eq!(e.to_string(), format!("{}: not a jit_stencils.h (no emit_ functions)", other.path().display()));

        let missing = Path::new("/nonexistent/stencilcheck/jit_stencils.h");
        let e = load_path(missing).unwrap_err();
        assert!(e.message.starts_with("cannot read:"), "{e}");

        let dir = tempfile::tempdir().expect("temp dir");
        let e = load_path(dir.path()).unwrap_err();
        assert_eq!(e.message, "no object files (*.o)");
    }

    #[test]
    fn load_directory_of_objects_names_stencils_by_stem() {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        let dir = tempfile::tempdir().expect("temp dir");
        let x86 = corpus.join("x86_64-unknown-linux-gnu");
        std::fs::copy(x86.join("trampoline.o"), dir.path().join("trampoline.o")).unwrap();
        std::fs::copy(x86.join("load_oparg.o"), dir.path().join("_LOAD_X.o")).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not an object").unwrap();
        let set = load_path(dir.path()).expect("loads");
        let names: Vec<&str> = set.stencils.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["_LOAD_X", "trampoline"]);
        assert_eq!(set.arch(), crate::model::Arch::X86_64);

        std::fs::copy(corpus.join("aarch64-unknown-linux-gnu/load_oparg.o"), dir.path().join("arm.o")).unwrap();
        let e = load_path(dir.path()).unwrap_err();
        assert!(e.message.contains("aarch64 ELF object among x86_64 ELF objects"), "{e}");
        std::fs::remove_file(dir.path().join("arm.o")).unwrap();

        std::fs::write(dir.path().join("bogus.o"), "text, not ELF").unwrap();
        let e = load_path(dir.path()).unwrap_err();
        assert!(e.location.ends_with("bogus.o") && e.message == "not an object (ELF, Mach-O or COFF)", "{e}");
    }

    #[test]
    fn load_reads_a_header_by_content_not_name() {
        let f = write_temp(header::tests::FIXTURE.as_bytes());
        let set = load_path(f.path()).expect("fixture loads");
        assert_eq!(set.path, f.path());
        assert_eq!(set.stencils.len(), 2);
    }
}
