//! The native engine (`--engine native`): the same traces as the Unicorn
//! engine, run by run (instruction counts aside: native runs do not count
//! them), on every x86-64 stencil we have; stencils that misbehave (wild
//! accesses, hangs, `hlt`, system calls, invalid instructions, writes into
//! their own code) are judged as under Unicorn and never take the verifier
//! down; a worker killed mid-run is replaced and the run still answers.
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

use std::path::{Path, PathBuf};
use stencilcheck::execute::native::NativeEngine;
use stencilcheck::execute::x86_64::UnicornX86;
use stencilcheck::execute::{Engine, EngineKind, Trace};
use stencilcheck::model::StencilSet;
use stencilcheck::patch::{self, Ports};
use stencilcheck::pipeline::{self, Options};
use stencilcheck::place;
mod common;
use common::{raw, X86};

const REAL_HEADER: &str = "/tmp/cpython-stencils/3.13.5/x86_64-unknown-linux-gnu/jit_stencils.h";

/// A trace as JSON, without the instruction count.
fn comparable(trace: &Trace) -> serde_json::Value {
    let mut v = serde_json::to_value(trace).unwrap();
    v.as_object_mut().unwrap().remove("instructions");
    v
}

/// Run every placement of every stencil of `set` on both engines and
/// compare the traces; returns (runs, runs the native engine answered itself).
fn traces_agree(set: &StencilSet, placements: u32, limit: u64) -> (u64, u64) {
    let convention = set.target.convention(set);
    let mut unicorn = UnicornX86::new(convention.clone(), limit).unwrap();
    let mut native = NativeEngine::new(convention, limit).unwrap();
    for stencil in set.stencils.iter().filter(|s| !s.code.is_empty()) {
        let functions = place::function_externs(set.target, stencil);
        for index in 0..placements {
            let placement = place::place(set.target, stencil, 1, index).unwrap().with_functions(&functions);
            let Ok(image) = patch::emit(stencil, &placement, &Ports) else { continue };
            let expected = comparable(&unicorn.run(stencil, &placement, &image));
            let got = comparable(&native.run(stencil, &placement, &image));
            assert_eq!(got, expected, "{}: {} placement {index} differs", set.path.display(), stencil.name);
        }
    }
    let stats = native.stats();
    (stats.runs, stats.runs - stats.fallbacks())
}

fn x86_64(set: &StencilSet) -> bool {
    set.target.arch == stencilcheck::target::Arch::X86_64
}

#[test]
fn the_embedded_x86_64_corpora_run_as_on_unicorn() {
    for (triple, _) in stencilcheck::corpus::TRIPLES.iter().filter(|(t, _)| t.starts_with("x86_64")) {
        let set = stencilcheck::corpus::load_triple(triple).unwrap();
        let (runs, native) = traces_agree(&set, 16, stencilcheck::execute::DEFAULT_INSTRUCTION_LIMIT);
        eprintln!("corpus {triple}: {runs} runs, {native} answered natively");
        assert!(native * 10 >= runs * 9, "{triple}: only {native} of {runs} runs were native");
    }
}

/// Every header under tests/fixtures (3.13 and 3.14) that loads and is x86-64.
fn fixture_headers() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut out = Vec::new();
    for dir in [root.clone(), root.join("3.14-x86_64")] {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "h") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_x86_64_fixture_runs_as_on_unicorn() {
    let mut checked = 0;
    for path in fixture_headers() {
        let Ok(set) = stencilcheck::load::load_path(&path) else { continue };
        if !x86_64(&set) {
            continue;
        }
        traces_agree(&set, 16, stencilcheck::execute::DEFAULT_INSTRUCTION_LIMIT);
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} x86-64 fixtures loaded");
}

/// Findings, verdicts and coverage of the whole pipeline, instruction counts aside.
fn report(set: &StencilSet, engine: EngineKind, placements: u32, threads: usize) -> serde_json::Value {
    let options = Options {
        seed: 1,
        placements,
        stencils: Vec::new(),
        placement: None,
        instruction_limit: stencilcheck::execute::DEFAULT_INSTRUCTION_LIMIT,
        threads,
        strict: false,
        explore: 0,
        patcher: &Ports,
        engine,
    };
    let outcome = pipeline::verify(set, &options).unwrap();
    assert_eq!(outcome.native.is_some(), engine == EngineKind::Native);
    let mut results = serde_json::to_value(&outcome.results).unwrap();
    for r in results.as_array_mut().unwrap() {
        r.as_object_mut().unwrap().remove("instructions");
    }
    results
}

#[test]
fn the_real_3_13_5_header_gets_the_same_verdicts() {
    if !Path::new(REAL_HEADER).exists() {
        common::skip(&format!("{REAL_HEADER} missing: the real header's parity is not checked"));
        return;
    }
    let set = stencilcheck::load::load_path(Path::new(REAL_HEADER)).unwrap();
    let unicorn = report(&set, EngineKind::Unicorn, 16, 2);
    let native = report(&set, EngineKind::Native, 16, 2);
    assert_eq!(native, unicorn);
}

/// Hand-made stencils that misbehave, each judged as Unicorn judges it.
fn misbehaving() -> StencilSet {
    let stencils = vec![
        // movabs rax, 0x7000_dead_0000; mov rax, [rax]: a wild (made-up) read
        raw("_WILD_READ", [&[0x48, 0xb8][..], &0x7000_dead_0000u64.to_le_bytes(), &[0x48, 0x8b, 0x00]].concat()),
        // movabs rax, 0xdead_beef_0000_0000; mov [rax], rax: a non-canonical write
        raw("_WILD_WRITE", [&[0x48, 0xb8][..], &0xdead_beef_0000_0000u64.to_le_bytes(), &[0x48, 0x89, 0x00]].concat()),
        // jmp $
        raw("_HANG", vec![0xeb, 0xfe]),
        // dec rcx; jnz -5; (a loop as long as made-up rcx says)
        raw("_LONG_LOOP", vec![0x48, 0xff, 0xc9, 0x75, 0xfb]),
        raw("_HLT", vec![0xf4]),
        raw("_SYSCALL", vec![0x0f, 0x05]),
        raw("_UD2", vec![0x0f, 0x0b]),
        raw("_INT3", vec![0xcc]),
        // mov byte [rip-6], al: a write into its own first byte
        raw("_SELF_WRITE", vec![0x88, 0x05, 0xfa, 0xff, 0xff, 0xff]),
        // xor eax, eax; mov rcx, [rax+8]: a NULL dereference whatever the inputs
        raw("_NULL", vec![0x31, 0xc0, 0x48, 0x8b, 0x48, 0x08]),
        // xor ecx, ecx; div rcx
        raw("_DIV0", vec![0x31, 0xc9, 0x48, 0xf7, 0xf1]),
        // add rbp, 8
        raw("_PLAIN", vec![0x48, 0x83, 0xc5, 0x08]),
        // tzcnt eax, ecx; jc +1; push rax: BMI1, run natively (its carry
        // says whether the made-up rcx was zero)
        raw("_TZCNT", vec![0xf3, 0x0f, 0xbc, 0xc1, 0x72, 0x01, 0x50]),
    ];
    StencilSet { path: PathBuf::from("misbehaving.h"), target: X86, stencils, symbols_map: Vec::new() }
}

#[test]
fn misbehaving_stencils_are_judged_as_on_unicorn_and_contained() {
    let set = misbehaving();
    traces_agree(&set, 8, 20_000);
    let unicorn = report(&set, EngineKind::Unicorn, 8, 1);
    let native = report(&set, EngineKind::Native, 8, 1);
    assert_eq!(native, unicorn);
    // The verdicts are the Unicorn engine's, not "correct": hlt, syscall
    // and the self-write are findings, the hang is inconclusive.
    let findings = |name: &str| {
        let r = native.as_array().unwrap().iter().find(|r| r["name"] == name).unwrap();
        (r["findings"].as_array().unwrap().len(), r["inconclusive"].as_u64().unwrap())
    };
    for name in ["_HLT", "_SYSCALL", "_UD2", "_INT3", "_SELF_WRITE", "_NULL"] {
        assert!(findings(name).0 > 0, "{name} has no finding");
    }
    assert_eq!(findings("_HANG"), (0, 8));
    assert_eq!(findings("_PLAIN").0, 0);
}

#[test]
fn a_worker_killed_mid_run_is_replaced_and_the_run_still_answers() {
    let set = misbehaving();
    let hang = set.stencils.iter().find(|s| s.name == "_HANG").unwrap();
    let plain = set.stencils.iter().find(|s| s.name == "_PLAIN").unwrap();
    let convention = set.target.convention(&set);
    // A budget and stop limit that keep the native hang busy for seconds
    // (it stops at every backward jump), and Unicorn for well under one.
    let limit = 2_000_000;
    let mut native = NativeEngine::new(convention.clone(), limit).unwrap();
    native.set_stop_limit(u64::MAX);
    let mut unicorn = UnicornX86::new(convention, limit).unwrap();
    let placement = place::place(X86, hang, 1, 0).unwrap();
    let image = patch::emit(hang, &placement, &Ports).unwrap();
    let pid = native.worker_pid().expect("a worker");
    let killer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        // SAFETY: a child process of this test, by its id.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let trace = native.run(hang, &placement, &image);
    killer.join().unwrap();
    assert_eq!(comparable(&trace), comparable(&unicorn.run(hang, &placement, &image)));
    assert_eq!(native.stats().refused.get("worker"), Some(&1));
    let fresh = native.worker_pid().expect("a fresh worker");
    assert_ne!(fresh, pid);
    let placement = place::place(X86, plain, 1, 0).unwrap();
    let image = patch::emit(plain, &placement, &Ports).unwrap();
    let before = native.stats().fallbacks();
    let trace = native.run(plain, &placement, &image);
    assert_eq!(native.stats().fallbacks(), before, "the fresh worker answered natively");
    assert_eq!(comparable(&trace), comparable(&unicorn.run(plain, &placement, &image)));
}

#[test]
fn native_is_refused_for_other_targets() {
    let set = stencilcheck::corpus::load_triple("aarch64-unknown-linux-gnu").unwrap();
    let options = Options {
        seed: 1,
        placements: 1,
        stencils: Vec::new(),
        placement: None,
        instruction_limit: 1000,
        threads: 1,
        strict: false,
        explore: 0,
        patcher: &Ports,
        engine: EngineKind::Native,
    };
    let e = pipeline::verify(&set, &options).err().expect("refused");
    assert_eq!(e.kind.exit_code(), 3);
    assert!(e.to_string().contains("not supported"), "{e}");
    let (code, _, err) = stencilcheck::cli::run([
        "stencilcheck",
        "verify",
        "--corpus",
        "aarch64-unknown-linux-gnu",
        "--engine",
        "native",
    ]);
    assert_eq!(code, 3, "{err}");
}
