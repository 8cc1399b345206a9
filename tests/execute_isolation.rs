//! Every run starts from an identical emulator: a stencil that faults (divide
//! by zero, wild write, invalid instruction, hang) or leaves registers behind
//! changes nothing for the stencils run after it on the same worker. The
//! report is byte-identical whatever the thread count, and each stencil's
//! verdict is the one it gets verified alone.

use std::path::PathBuf;
use stencilcheck::model::{Stencil, StencilSet};
use stencilcheck::patch::Ports;
use stencilcheck::pipeline::{self, Options};
use stencilcheck::report::{self, Replay};
mod common;
use common::{raw, X86};

/// Faulting stencils interleaved with ordinary ones, and ones whose verdict
/// depends on state a previous run could leave behind (SSE registers, the
/// direction flag, the x87 stack).
fn stencils() -> Vec<Stencil> {
    vec![
        // xor ecx, ecx; div rcx
        raw("_DIV0", vec![0x31, 0xc9, 0x48, 0xf7, 0xf1]),
        // movq rax, xmm0; test rax, rax; jz +1; push rax  (nonzero xmm0: stack imbalance)
        raw("_READS_XMM0", vec![0x66, 0x48, 0x0f, 0x7e, 0xc0, 0x48, 0x85, 0xc0, 0x74, 0x01, 0x50]),
        // add rbp, 8
        raw("_PLAIN", vec![0x48, 0x83, 0xc5, 0x08]),
        // mov byte [rip-7], al: a write into its own code
        raw("_WILD_WRITE", vec![0x88, 0x05, 0xf9, 0xff, 0xff, 0xff]),
        raw("_READS_XMM0_AGAIN", vec![0x66, 0x48, 0x0f, 0x7e, 0xc0, 0x48, 0x85, 0xc0, 0x74, 0x01, 0x50]),
        // ud2
        raw("_UD2", vec![0x0f, 0x0b]),
        // movq xmm0, rbp; std; xor ecx, ecx; div rcx  (leaves xmm0 and DF set, then faults)
        raw("_DIRTY_DIV0", vec![0x66, 0x48, 0x0f, 0x6e, 0xc5, 0xfd, 0x31, 0xc9, 0x48, 0xf7, 0xf1]),
        // pushf; pop rax; bt eax, 10 (DF); jnc +1; push rax  (DF set: stack imbalance)
        raw("_READS_DF", vec![0x9c, 0x58, 0x0f, 0xba, 0xe0, 0x0a, 0x73, 0x01, 0x50]),
        // jmp $
        raw("_HANG", vec![0xeb, 0xfe]),
        // movq xmm0, rbp  (leaves xmm0 nonzero, ends normally)
        raw("_DIRTY", vec![0x66, 0x48, 0x0f, 0x6e, 0xc5]),
        raw("_READS_XMM0_LAST", vec![0x66, 0x48, 0x0f, 0x7e, 0xc0, 0x48, 0x85, 0xc0, 0x74, 0x01, 0x50]),
        raw("_PLAIN_LAST", vec![0x48, 0x83, 0xc5, 0x08]),
    ]
}

fn set() -> StencilSet {
    StencilSet { path: PathBuf::from("isolation.h"), target: X86, stencils: stencils(), symbols_map: Vec::new() }
}

fn report(set: &StencilSet, threads: usize, only: &[&str]) -> (String, pipeline::Outcome) {
    let options = Options {
        seed: 7,
        placements: 6,
        stencils: only.iter().map(|s| s.to_string()).collect(),
        placement: None,
        instruction_limit: 20_000,
        threads,
        strict: false,
        explore: 0,
        patcher: &Ports,
        engine: stencilcheck::execute::EngineKind::Unicorn,
    };
    let outcome = pipeline::verify(set, &options).expect("verifies");
    let replay = Replay { base: "stencilcheck verify isolation.h".into(), seed: 7 };
    (report::json(set, &outcome, 6, &replay), outcome)
}

#[test]
fn reports_are_identical_across_thread_counts_and_match_stencils_verified_alone() {
    let set = set();
    let (one, outcome) = report(&set, 1, &[]);
    for threads in [2, 7, 2, 7] {
        assert_eq!(report(&set, threads, &[]).0, one, "--threads {threads} differs from --threads 1");
    }
    for r in &outcome.results {
        let (_, alone) = report(&set, 1, &[r.name.as_str()]);
        let alone = &alone.results[0];
        let verdict = |r: &pipeline::StencilResult| {
            (serde_json::to_string(&r.findings).unwrap(), r.inconclusive, r.first_inconclusive.clone(), r.instructions)
        };
        assert_eq!(verdict(r), verdict(alone), "{}: verdict in the set differs from its verdict alone", r.name);
    }
    // The state-reading stencils are correct from a fresh engine.
    for name in ["_READS_XMM0", "_READS_XMM0_AGAIN", "_READS_XMM0_LAST", "_READS_DF", "_PLAIN", "_PLAIN_LAST"] {
        let r = outcome.results.iter().find(|r| r.name == name).unwrap();
        assert!(r.findings.is_empty(), "{name}: {:?}", r.findings);
    }
}
