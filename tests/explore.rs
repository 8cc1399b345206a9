//! Exploration: steered runs reach holes no placement executes, and a hole
//! still unexecuted is listed with why.

use std::path::PathBuf;
use stencilcheck::execute::EngineKind;
use stencilcheck::model::{EmitOp, PatchFn, RelocKind, Section, StencilSet, Term};
use stencilcheck::patch::Ports;
use stencilcheck::pipeline::{self, Options, StencilResult};
mod common;
use common::{hole, raw, reloc, X86};

/// `cmp rbp, 0x12345678; jne over; movabs rax, <operand>; over: add rbp, 8`.
/// rbp holds the placed stack_pointer, never that value: no plain run
/// executes the `movabs`, whose immediate is a hole.
fn guarded_operand() -> stencilcheck::model::Stencil {
    let mut code = vec![0x48, 0x81, 0xfd, 0x78, 0x56, 0x34, 0x12, 0x75, 0x0a, 0x48, 0xb8];
    code.extend_from_slice(&[0; 8]);
    code.extend_from_slice(&[0x48, 0x83, 0xc5, 0x08]);
    let mut s = raw("_GUARDED_OPERAND", code);
    s.relocations = vec![reloc(11, RelocKind::X86_64_64, "_JIT_OPERAND", 0)];
    s.emit.push(hole(PatchFn::P64, Section::Code, 11, Term::Operand(0), 0));
    s
}

fn verify(explore: u32) -> StencilResult {
    verify_on(explore, EngineKind::Unicorn)
}

fn verify_on(explore: u32, engine: EngineKind) -> StencilResult {
    let set = StencilSet {
        path: PathBuf::from("explore.h"),
        target: X86,
        stencils: vec![guarded_operand()],
        symbols_map: Vec::new(),
    };
    let options = Options {
        seed: 1,
        placements: 8,
        stencils: vec![],
        placement: None,
        instruction_limit: 20_000,
        threads: 1,
        strict: false,
        explore,
        patcher: &Ports,
        engine,
    };
    pipeline::verify(&set, &options).expect("verifies").results.remove(0)
}

#[test]
fn a_hole_behind_a_guard_no_input_passes_is_reached_by_steering() {
    let plain = verify(0);
    assert_eq!((plain.holes, plain.holes_covered), (1, 0), "no plain run executes the movabs");
    assert_eq!(plain.unreached.len(), 1);
    assert!(plain.unreached[0].hole == "code+0xb", "{:?}", plain.unreached);
    assert!(plain.findings.is_empty());

    let explored = verify(8);
    assert_eq!(explored.holes_covered, 1, "steering the jne reaches it: {:?}", explored.unreached);
    assert!(explored.unreached.is_empty());
    assert_eq!(explored.explored, 1, "one steered run was enough");
    assert!(explored.findings.is_empty() && explored.inconclusive == 0);
}

#[test]
fn a_hole_after_a_return_is_listed_as_unreachable() {
    // `ret` first: nothing after it runs, whatever the steering.
    let mut s = guarded_operand();
    s.code.insert(0, 0xc3);
    s.instructions = common::listing(&s.code);
    s.relocations[0].offset += 1;
    if let Some(EmitOp::Patch(p)) = s.emit.last_mut() {
        p.offset += 1;
    }
    let set = StencilSet { path: PathBuf::from("explore.h"), target: X86, stencils: vec![s], symbols_map: Vec::new() };
    let options = Options {
        seed: 1,
        placements: 2,
        stencils: vec![],
        placement: None,
        instruction_limit: 20_000,
        threads: 1,
        strict: false,
        explore: 8,
        patcher: &Ports,
        engine: EngineKind::Unicorn,
    };
    let r = pipeline::verify(&set, &options).expect("verifies").results.remove(0);
    assert_eq!(r.holes_covered, 0);
    assert_eq!(r.explored, 0, "nothing to steer toward");
    assert_eq!(r.unreached.len(), 1);
    assert!(r.unreached[0].reason.contains("no path from the entry"), "{:?}", r.unreached);
}

#[test]
fn the_native_engine_explores_through_unicorn_runs() {
    if !cfg!(all(target_arch = "x86_64", target_os = "linux")) {
        eprintln!("note: skipped (the native engine needs an x86-64 Linux host)");
        return;
    }
    let r = verify_on(8, EngineKind::Native);
    assert_eq!(r.holes_covered, 1, "{:?}", r.unreached);
    assert!(r.explored >= 2, "paths recorded first, then one steered run: {}", r.explored);
    assert!(r.findings.is_empty() && r.inconclusive == 0);
}
