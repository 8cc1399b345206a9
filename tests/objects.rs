//! The object loader end to end, through the binary: the embedded corpus,
//! CPython's own objects (when built on this machine), diff and cross-check.

mod common;
use std::path::Path;
use std::process::{Command, Output};

const CPYTHON: &str = "/tmp/cpython-stencils/3.13.5/x86_64-unknown-linux-gnu";

fn stencilcheck(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stencilcheck")).args(args).output().expect("runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn verify_without_input_checks_the_embedded_corpus() {
    let o = stencilcheck(&["verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("<embedded corpus/x86_64-unknown-linux-gnu> (x86_64, 9 stencils)"), "{t}");
    assert!(t.contains("9 stencils: 9 correct"), "{t}");
    assert!(t.contains("frame r12, stack_pointer r13, tstate r14 (trampoline)"), "{t}");
}

#[test]
fn verify_reads_one_object_and_a_directory() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/x86_64-unknown-linux-gnu");
    let one = dir.join("pc32_string.o");
    let o = stencilcheck(&["verify", one.to_str().unwrap(), "--placements", "8"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("1 stencils: 1 correct") || text(&o).contains("1 stencil: 1 correct"), "{}", text(&o));
    let o = stencilcheck(&["verify", dir.to_str().unwrap(), "--placements", "8"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn verify_refuses_a_truncated_object_with_exit_2() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/x86_64-unknown-linux-gnu");
    let bytes = std::fs::read(dir.join("load_oparg.o")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cut = tmp.path().join("cut.o");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let o = stencilcheck(&["verify", cut.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cut.o"), "{err}");
}

#[test]
fn cross_check_objdump_agrees_on_the_corpus() {
    let o = stencilcheck(&["verify", "--cross-check-objdump", "--placements", "2"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("loader and llvm-objdump") || t.contains("not on PATH: skipped"), "{t}");
}

#[test]
fn cpython_objects_verify_and_match_the_header() {
    let objs = Path::new(CPYTHON).join("objs");
    let header = Path::new(CPYTHON).join("jit_stencils.h");
    if !objs.is_dir() || !header.is_file() {
        common::skip(&format!("{CPYTHON} absent (scripts/verify-cpython.sh builds it): skipped"));
        return;
    }
    let o = stencilcheck(&["verify", objs.to_str().unwrap(), "--placements", "16", "--cross-check-objdump"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("235 stencils: 235 correct"), "{}", text(&o));
    let o = stencilcheck(&["diff", header.to_str().unwrap(), objs.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("235 header stencils, 235 objects: 0 differences"), "{}", text(&o));
}

#[test]
fn diff_lists_differences_with_offsets() {
    // diff takes any two inputs; two directories holding different objects
    // under the same name show what a difference looks like.
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/x86_64-unknown-linux-gnu");
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    std::fs::copy(corpus.join("load_oparg.o"), a.join("x.o")).unwrap();
    std::fs::copy(corpus.join("load_operand.o"), b.join("x.o")).unwrap();
    let o = stencilcheck(&["diff", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("x: hole only in the header (line 0): patch_64(data + 0x0, instruction->oparg)"), "{t}");
    assert!(t.contains("x: relocation only in the object: 0x3: R_X86_64_REX_GOTPCRELX _JIT_OPERAND-0x4"), "{t}");
}

/// The oracle read from an object is independent of the holes derived from
/// it: a derived hole made wrong on purpose is a finding.
#[test]
fn a_wrong_derived_hole_is_caught_by_the_object_oracle() {
    use stencilcheck::model::{EmitOp, Term};
    let mut set = stencilcheck::corpus::load().expect("corpus");
    let s = set.stencils.iter_mut().find(|s| s.name == "call_extern").unwrap();
    // Swap the continuation slot's value for the error target, in the holes
    // and in the slot descriptions alike: only the relocations can tell.
    for c in &mut s.data_comments {
        if let stencilcheck::model::DataCommentKind::Slot(v) = &mut c.kind {
            if v.term == Term::Continue {
                v.term = Term::ErrorTarget;
            }
        }
    }
    for op in &mut s.emit {
        if let EmitOp::Patch(p) = op {
            if p.value.term == Term::Continue {
                p.value.term = Term::ErrorTarget;
            }
        }
    }
    let options = stencilcheck::pipeline::Options {
        seed: 1,
        placements: 8,
        stencils: vec!["call_extern".into()],
        placement: None,
        instruction_limit: stencilcheck::execute::DEFAULT_INSTRUCTION_LIMIT,
        threads: 1,
        strict: false,
        explore: 0,
        patcher: &stencilcheck::patch::Ports,
        engine: stencilcheck::execute::EngineKind::Unicorn,
    };
    let outcome = stencilcheck::pipeline::verify(&set, &options).expect("runs");
    let findings: Vec<_> = outcome.results.iter().flat_map(|r| r.findings.iter()).collect();
    assert!(
        findings.iter().any(|f| {
            f.finding.kind != stencilcheck::judge::FindingKind::DataSlot
                && f.finding
                    .site
                    .as_ref()
                    .and_then(|s| s.relocation.as_deref())
                    .is_some_and(|r| r.contains("_JIT_CONTINUE"))
        }),
        "a swapped continuation went unnoticed by the relocation oracle: {findings:?}"
    );
}

#[test]
fn cpython_aarch64_objects_match_the_header() {
    let root = Path::new("/tmp/cpython-stencils/3.13.5/aarch64-unknown-linux-gnu");
    let (objs, header) = (root.join("objs"), root.join("jit_stencils.h"));
    if !objs.is_dir() || !header.is_file() {
        common::skip(&format!("{} absent: skipped", root.display()));
        return;
    }
    let o = stencilcheck(&["diff", header.to_str().unwrap(), objs.to_str().unwrap()]);
    let t = text(&o);
    // 3.13 compiles no trampoline for aarch64 (its uops use the C
    // convention) and writes an empty group for it: not a difference.
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(t.contains("235 header stencils, 234 objects: 0 differences"), "{t}");
}

#[test]
fn a_header_stencil_with_code_but_no_object_is_a_difference() {
    let root = Path::new("/tmp/cpython-stencils/3.13.5/aarch64-unknown-linux-gnu");
    if !root.join("objs").is_dir() {
        common::skip(&format!("{} absent: skipped", root.display()));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(root.join("objs")).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "_BINARY_OP.o" {
            std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
        }
    }
    let header = root.join("jit_stencils.h");
    let o = stencilcheck(&["diff", header.to_str().unwrap(), dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("_BINARY_OP: in the header, no object"), "{}", text(&o));
}

/// Every hole derived for the corpus matters: moving any one of them by a
/// few bytes is a finding (the oracle and the data slots are read from the
/// object, not from the holes).
#[test]
fn every_corpus_hole_moved_is_a_finding() {
    use stencilcheck::model::EmitOp;
    let set = stencilcheck::corpus::load().expect("corpus");
    let mut missed = Vec::new();
    for (si, s) in set.stencils.iter().enumerate() {
        for (oi, op) in s.emit.iter().enumerate() {
            let EmitOp::Patch(p) = op else { continue };
            let mut bad = set.clone();
            if let EmitOp::Patch(q) = &mut bad.stencils[si].emit[oi] {
                q.value.addend += 0x40;
            }
            let options = stencilcheck::pipeline::Options {
                seed: 3,
                placements: 8,
                stencils: vec![s.name.clone()],
                placement: None,
                instruction_limit: stencilcheck::execute::DEFAULT_INSTRUCTION_LIMIT,
                threads: 1,
                strict: false,
                explore: 0,
                patcher: &stencilcheck::patch::Ports,
                engine: stencilcheck::execute::EngineKind::Unicorn,
            };
            let outcome = stencilcheck::pipeline::verify(&bad, &options).expect("runs");
            if outcome.results.iter().all(|r| r.findings.is_empty()) {
                missed.push(format!("{}: {}({} + {:#x}, {})", s.name, p.func, p.section, p.offset, p.value));
            }
        }
    }
    assert!(missed.is_empty(), "moved holes nobody noticed: {missed:#?}");
}

// ---- Loaders that never drop data silently, and bounded work ----

/// The objects to damage: CPython's own when built here, else the corpus.
fn objects_to_damage() -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut dirs: Vec<std::path::PathBuf> = ["x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu"]
        .iter()
        .map(|t| Path::new("/tmp/cpython-stencils/3.13.5").join(t).join("objs"))
        .filter(|d| d.is_dir())
        .collect();
    if dirs.is_empty() {
        dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/x86_64-unknown-linux-gnu"));
    }
    let mut out = Vec::new();
    for d in dirs {
        let mut paths: Vec<_> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().path()).collect();
        paths.sort();
        for p in paths.into_iter().filter(|p| p.extension().is_some_and(|x| x == "o")) {
            let bytes = std::fs::read(&p).unwrap();
            out.push((p, bytes));
        }
    }
    out
}

fn u16_at(b: &[u8], at: usize) -> usize {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap()) as usize
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// (file offset of its header, sh_type, sh_offset, sh_size) of every section.
fn section_headers(b: &[u8]) -> Vec<(usize, u32, usize, usize)> {
    let (shoff, shnum) = (u64_at(b, 0x28) as usize, u16_at(b, 0x3c));
    (0..shnum)
        .map(|i| {
            let h = shoff + i * 64;
            (h, u32_at(b, h + 4), u64_at(b, h + 24) as usize, u64_at(b, h + 32) as usize)
        })
        .collect()
}

/// The header offset of the object's first `SHT_RELA` section (`.rela.text`).
fn rela_text_header(b: &[u8]) -> (usize, usize, usize) {
    section_headers(b)
        .into_iter()
        .find(|&(_, t, _, _)| t == 4)
        .map(|(h, _, off, size)| (h, off, size))
        .expect("a relocation section")
}

/// A corpus object damaged by `f`, written out, verified: exit 2, one line
/// naming the object, `.rela.text` and its header's offset.
fn assert_damage_refused(what: &str, f: impl Fn(&mut Vec<u8>, usize)) {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/x86_64-unknown-linux-gnu");
    let mut bytes = std::fs::read(corpus.join("load_oparg.o")).unwrap();
    let (h, _, _) = rela_text_header(&bytes);
    f(&mut bytes, h);
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("damaged.o");
    std::fs::write(&p, &bytes).unwrap();
    let o = stencilcheck(&["verify", p.to_str().unwrap(), "--placements", "2"]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "{what}: {}", text(&o));
    assert_eq!(err.lines().count(), 1, "{what}: {err}");
    assert!(
        err.contains("damaged.o") && err.contains(".rela.text") && err.contains(&format!("{h:#x}")),
        "{what}: {err}"
    );
}

#[test]
fn a_relocation_section_with_its_link_out_of_range_is_refused() {
    assert_damage_refused("sh_link 200", |b, h| b[h + 40..h + 44].copy_from_slice(&200u32.to_le_bytes()));
    // A section that exists but is not the symbol table.
    assert_damage_refused("sh_link 1", |b, h| b[h + 40..h + 44].copy_from_slice(&1u32.to_le_bytes()));
}

#[test]
fn a_relocation_section_past_the_end_of_the_file_is_refused() {
    assert_damage_refused("sh_offset past the end", |b, h| {
        let past = b.len() as u64 + 0x100;
        b[h + 24..h + 32].copy_from_slice(&past.to_le_bytes())
    });
    assert_damage_refused("sh_size past the end", |b, h| {
        let huge = 24u64 << 20;
        b[h + 32..h + 40].copy_from_slice(&huge.to_le_bytes())
    });
}

#[test]
fn a_truncated_relocation_section_is_refused() {
    // sh_size cut to a partial entry, or the entry size lying about its type.
    assert_damage_refused("sh_size 24k+7", |b, h| {
        let size = u64_at(b, h + 32) - 17;
        b[h + 32..h + 40].copy_from_slice(&size.to_le_bytes())
    });
    assert_damage_refused("sh_entsize 16", |b, h| b[h + 56..h + 64].copy_from_slice(&16u64.to_le_bytes()));
    assert_damage_refused("sh_info 0", |b, h| b[h + 44..h + 48].copy_from_slice(&0u32.to_le_bytes()));
    assert_damage_refused("sh_type PROGBITS", |b, h| b[h + 4..h + 8].copy_from_slice(&1u32.to_le_bytes()));
}

/// Single-byte mutations of the real objects' section header tables and
/// relocation sections: every mutant loads with all its relocations (the
/// original number; a mutated entry may read differently) or is refused.
/// Never fewer relocations, never a panic.
#[test]
fn mutated_section_headers_and_relocations_never_lose_relocations() {
    use rand::{Rng, SeedableRng};
    use stencilcheck::load::{elf, object};
    let objects = objects_to_damage();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5eed);
    let (mut same, mut changed, mut refused, mut fewer, mut panics) = (0, 0, 0, Vec::new(), Vec::new());
    let relocs_of = |raw: &object::RawObject| -> Vec<String> { raw.relocs.iter().map(|r| format!("{r:?}")).collect() };
    const MUTANTS: usize = 3000;
    for k in 0..MUTANTS {
        let (path, bytes) = &objects[rng.gen_range(0..objects.len())];
        let original = relocs_of(&elf::read("x.o", bytes).expect("the original loads"));
        let headers = section_headers(bytes);
        let at = if k % 2 == 0 {
            let shoff = u64_at(bytes, 0x28) as usize;
            shoff + rng.gen_range(0..headers.len() * 64)
        } else {
            let relas: Vec<_> = headers.iter().filter(|h| h.1 == 4 && h.3 > 0).collect();
            let (_, _, off, size) = relas[rng.gen_range(0..relas.len())];
            off + rng.gen_range(0..*size)
        };
        let mut mutant = bytes.clone();
        mutant[at] ^= rng.gen_range(1..=255u8);
        let result = std::panic::catch_unwind(|| {
            elf::read("m.o", &mutant).inspect(|raw| {
                let _ = object::build("m", raw);
            })
        });
        match result {
            Err(_) => panics.push(format!("{} byte {at:#x}", path.display())),
            Ok(Err(_)) => refused += 1,
            Ok(Ok(raw)) => {
                let got = relocs_of(&raw);
                if got.len() < original.len() {
                    fewer.push(format!(
                        "{} byte {at:#x}: {} of {} relocations",
                        path.display(),
                        got.len(),
                        original.len()
                    ));
                } else if got == original {
                    same += 1;
                } else {
                    changed += 1;
                }
            }
        }
    }
    eprintln!(
        "{MUTANTS} mutants of {} objects: {same} load the original relocations, {changed} load as many (an entry reads differently), {refused} refused, {} fewer, {} panics",
        objects.len(),
        fewer.len(),
        panics.len()
    );
    assert!(panics.is_empty(), "panics: {panics:#?}");
    assert!(fewer.is_empty(), "relocations lost silently: {fewer:#?}");
}

/// A 928-byte object whose `.text` claims 16 MiB of `SHT_NOBITS` zeros is
/// refused at once (it took minutes and gigabytes when emulated).
#[test]
fn a_huge_nobits_text_is_refused_quickly() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/x86_64-unknown-linux-gnu");
    let mut bytes = std::fs::read(corpus.join("load_oparg.o")).unwrap();
    let shstrndx = u16_at(&bytes, 0x3e);
    let headers = section_headers(&bytes);
    let strtab = headers[shstrndx].2;
    let text_h = headers
        .iter()
        .find(|(h, ..)| {
            let name = u32_at(&bytes, *h) as usize;
            bytes[strtab + name..].starts_with(b".text\0")
        })
        .unwrap()
        .0;
    bytes[text_h + 4..text_h + 8].copy_from_slice(&8u32.to_le_bytes()); // SHT_NOBITS
    bytes[text_h + 32..text_h + 40].copy_from_slice(&(16u64 << 20).to_le_bytes());
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("nobits.o");
    std::fs::write(&p, &bytes).unwrap();
    let start = std::time::Instant::now();
    let o = stencilcheck(&["verify", p.to_str().unwrap(), "--placements", "64"]);
    assert!(start.elapsed() < std::time::Duration::from_secs(10), "{:?}", start.elapsed());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("nobits.o") && err.contains(".text") && err.contains("limit"), "{err}");
    // The limit itself is accepted, one byte more is not.
    let limit = stencilcheck::load::MAX_BODY as u64;
    bytes[text_h + 32..text_h + 40].copy_from_slice(&limit.to_le_bytes());
    assert!(stencilcheck::load::elf::read("at-limit.o", &bytes).is_ok());
    bytes[text_h + 32..text_h + 40].copy_from_slice(&(limit + 1).to_le_bytes());
    assert!(stencilcheck::load::elf::read("over.o", &bytes).is_err());
}

#[test]
fn an_object_file_over_the_size_limit_is_refused_unread() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/x86_64-unknown-linux-gnu");
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("big.o");
    std::fs::copy(corpus.join("load_oparg.o"), &p).unwrap();
    // Sparse: costs no disk.
    std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len((64 << 20) + 1).unwrap();
    let o = stencilcheck(&["verify", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("big.o"), "{}", text(&o));
    // In a directory too.
    let o = stencilcheck(&["verify", tmp.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("big.o") && String::from_utf8_lossy(&o.stderr).contains("limit"),
        "{}",
        text(&o)
    );
}

// ---- Gates that cannot pass vacuously: directories ----

fn assert_dir_refused(dir: &Path, naming: &str) {
    let o = stencilcheck(&["verify", dir.to_str().unwrap(), "--placements", "2"]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(naming), "does not name {naming}: {err}");
}

#[test]
fn directory_entries_that_are_not_objects_are_refused_not_skipped() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/x86_64-unknown-linux-gnu");
    let with_good = || {
        let d = tempfile::tempdir().unwrap();
        std::fs::copy(corpus.join("load_oparg.o"), d.path().join("good.o")).unwrap();
        d
    };
    // Empty.
    let d = tempfile::tempdir().unwrap();
    assert_dir_refused(d.path(), "no object files");
    // A dangling symlink.
    let d = with_good();
    std::os::unix::fs::symlink("/nonexistent/stencilcheck.o", d.path().join("gone.o")).unwrap();
    assert_dir_refused(d.path(), "gone.o");
    // A directory named x.o.
    let d = with_good();
    std::fs::create_dir(d.path().join("x.o")).unwrap();
    assert_dir_refused(d.path(), "x.o");
    // A FIFO named x.o (would block a reader).
    let d = with_good();
    let fifo = d.path().join("pipe.o");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    assert_dir_refused(d.path(), "pipe.o");
}

#[test]
fn a_directory_with_more_objects_than_the_limit_is_refused_before_reading_them() {
    let d = tempfile::tempdir().unwrap();
    for i in 0..=stencilcheck::load::MAX_STENCILS {
        std::fs::File::create(d.path().join(format!("s{i}.o"))).unwrap();
    }
    assert_dir_refused(d.path(), "limit");
}

/// Every CPython 3.13 target's objects load, with every relocation read as
/// llvm-objdump reads it (a relocation type the loader forgot is a refusal;
/// one it misreads is a difference), and the counts match.
#[test]
fn cpython_objects_of_every_target_match_objdump() {
    let root = Path::new("/tmp/cpython-stencils/3.13.5");
    let triples = [
        "x86_64-unknown-linux-gnu",
        "aarch64-unknown-linux-gnu",
        "x86_64-apple-darwin",
        "aarch64-apple-darwin",
        "x86_64-pc-windows-msvc",
        "i686-pc-windows-msvc",
    ];
    for triple in triples {
        let objs = root.join(triple).join("objs");
        if !objs.is_dir() {
            common::skip(&format!("{} absent (scripts/cpython-stencils.sh builds it)", objs.display()));
            continue;
        }
        let set = stencilcheck::load::load_path(&objs).unwrap_or_else(|e| panic!("{triple}: {e}"));
        assert!(set.stencils.len() >= 234, "{triple}: {} stencils", set.stencils.len());
        let checked = stencilcheck::load::crosscheck::check(&set).unwrap_or_else(|e| panic!("{triple}: {e}"));
        assert!(!checked.contains("skipped"), "{triple}: llvm-objdump is needed here: {checked}");
        let relocations: usize =
            checked.split(" relocations").next().and_then(|h| h.rsplit(' ').next()).unwrap().parse().unwrap();
        let objects: usize = checked.split(' ').next().unwrap().parse().unwrap();
        assert_eq!(objects, set.stencils.len(), "{triple}: every object checked: {checked}");
        assert!(relocations > 1000, "{triple}: every relocation counted: {checked}");
    }
}
