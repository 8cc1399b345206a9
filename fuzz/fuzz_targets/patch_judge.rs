//! The fuzzer's bytes choose a stencil of the embedded corpus, a seed and a
//! placement; the stencil is placed, patched by stencilcheck's own ports of
//! `jit.c`, run and judged. The corpus is correct, so any finding is a bug
//! of stencilcheck's (a false positive) and crashes the target; so does a
//! panic anywhere in place, patch, execute or judge.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use stencilcheck::model::StencilSet;
use stencilcheck::patch::Ports;
use stencilcheck::pipeline::{self, Options};

fn corpora() -> &'static [StencilSet] {
    static SETS: OnceLock<Vec<StencilSet>> = OnceLock::new();
    SETS.get_or_init(|| {
        stencilcheck::corpus::TRIPLES
            .iter()
            .map(|(t, _)| stencilcheck::corpus::load_triple(t).expect("the embedded corpus loads"))
            .collect()
    })
}

fn word(data: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    for (i, b) in data.iter().skip(at).take(8).enumerate() {
        w[i] = *b;
    }
    u64::from_le_bytes(w)
}

fuzz_target!(|data: &[u8]| {
    let sets = corpora();
    let set = &sets[word(data, 0) as usize % sets.len()];
    let stencil = &set.stencils[word(data, 8) as usize % set.stencils.len()];
    let options = Options {
        seed: word(data, 16),
        placements: 1,
        stencils: vec![stencil.name.clone()],
        placement: Some(word(data, 24) as u32),
        instruction_limit: stencilcheck::execute::DEFAULT_INSTRUCTION_LIMIT,
        threads: 1,
        strict: false,
        explore: 0,
        patcher: &Ports,
        engine: Default::default(),
    };
    let outcome = pipeline::verify(set, &options).expect("a corpus stencil verifies");
    for r in &outcome.results {
        assert!(
            r.findings.is_empty(),
            "false positive: {} {} seed {} placement {}: {}",
            set.target,
            r.name,
            options.seed,
            word(data, 24) as u32,
            r.findings[0].finding.message
        );
    }
});
