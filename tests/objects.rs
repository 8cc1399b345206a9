//! The object loader end to end, through the binary: the embedded corpus,
//! CPython's own objects (when built on this machine), diff and cross-check.

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
        eprintln!("note: {CPYTHON} absent (scripts/verify-cpython.sh builds it): skipped");
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
        patcher: &stencilcheck::patch::Ports,
    };
    let outcome = stencilcheck::pipeline::verify(&set, &options).expect("runs");
    let findings: Vec<_> = outcome.results.iter().flat_map(|r| r.findings.iter()).collect();
    assert!(
        findings.iter().any(|f| {
            f.finding.kind != stencilcheck::judge::FindingKind::DataSlot
                && f.finding.site.as_ref().and_then(|s| s.relocation.as_deref()).is_some_and(|r| r.contains("_JIT_CONTINUE"))
        }),
        "a swapped continuation went unnoticed by the relocation oracle: {findings:?}"
    );
}

#[test]
fn cpython_aarch64_objects_match_the_header() {
    let root = Path::new("/tmp/cpython-stencils/3.13.5/aarch64-unknown-linux-gnu");
    let (objs, header) = (root.join("objs"), root.join("jit_stencils.h"));
    if !objs.is_dir() || !header.is_file() {
        eprintln!("note: {} absent: skipped", root.display());
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
        eprintln!("note: {} absent: skipped", root.display());
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
                patcher: &stencilcheck::patch::Ports,
            };
            let outcome = stencilcheck::pipeline::verify(&bad, &options).expect("runs");
            if outcome.results.iter().all(|r| r.findings.is_empty()) {
                missed.push(format!("{}: {}({} + {:#x}, {})", s.name, p.func, p.section, p.offset, p.value));
            }
        }
    }
    assert!(missed.is_empty(), "moved holes nobody noticed: {missed:#?}");
}
