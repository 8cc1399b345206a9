//! `stencilcheck bench`: throughput of each stage, in stencil runs per
//! second, so engines can be compared as ratios (a native engine against
//! Unicorn) and regressions show up as numbers, not as slow tests.

use crate::error::BadInput;
use crate::model::StencilSet;
use crate::patch::{self, Patcher};
use crate::{execute, judge, pipeline, place};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

pub struct BenchOptions {
    pub seed: u64,
    pub placements: u32,
    pub repeat: u32,
    pub threads: usize,
}

/// Best of `repeat` timings of `f`, which performs `runs` stencil runs.
fn best(repeat: u32, mut f: impl FnMut() -> Result<u64, BadInput>) -> Result<(Duration, u64), BadInput> {
    let mut best = Duration::MAX;
    let mut runs = 0;
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        runs = f()?;
        best = best.min(t.elapsed());
    }
    Ok((best, runs))
}

fn rate(runs: u64, d: Duration) -> f64 {
    runs as f64 / d.as_secs_f64().max(1e-9)
}

pub fn bench(path: &std::path::Path, o: &BenchOptions, patcher: &(dyn Patcher + Sync)) -> Result<String, BadInput> {
    let mut out = String::new();
    let (load, _) = best(o.repeat, || crate::load::load_path(path).map(|_| 0))?;
    let set = crate::load::load_path(path)?;
    let _ = writeln!(
        out,
        "bench: {} ({} stencils x {} placements, seed {}, best of {})",
        path.display(),
        set.stencils.len(),
        o.placements,
        o.seed,
        o.repeat
    );
    let _ = writeln!(out, "  {:<28} {:>10.1} ms", "load", load.as_secs_f64() * 1e3);
    let (d, n) = best(o.repeat, || place_and_patch(&set, o, patcher, false))?;
    let _ = writeln!(out, "  {:<28} {:>10.0} stencil runs/s", "place + patch", rate(n, d));
    let (d, n) = best(o.repeat, || place_and_patch(&set, o, patcher, true))?;
    let _ = writeln!(out, "  {:<28} {:>10.0} stencil runs/s", "place + patch + static judge", rate(n, d));
    let mut unicorn_one = 0.0;
    for threads in [1, o.threads.max(1)] {
        let options = pipeline::Options {
            seed: o.seed,
            placements: o.placements,
            stencils: Vec::new(),
            placement: None,
            instruction_limit: execute::DEFAULT_INSTRUCTION_LIMIT,
            threads,
            strict: false,
            patcher,
        };
        let (d, n) = best(o.repeat, || {
            pipeline::verify(&set, &options).map(|r| r.results.iter().map(|s| s.runs as u64).sum())
        })?;
        let r = rate(n, d);
        if threads == 1 {
            unicorn_one = r;
        }
        let label = format!("full, unicorn, {threads} thread{}", if threads == 1 { "" } else { "s" });
        let _ = writeln!(out, "  {:<28} {:>10.0} stencil runs/s ({:.2}x one thread)", label, r, r / unicorn_one);
        if o.threads <= 1 {
            break;
        }
    }
    Ok(out)
}

fn place_and_patch(set: &StencilSet, o: &BenchOptions, patcher: &dyn Patcher, judge_too: bool) -> Result<u64, BadInput> {
    let mut runs = 0;
    for stencil in set.stencils.iter().filter(|s| !s.code.is_empty()) {
        for i in 0..o.placements {
            let placement = place::place(set.target, stencil, o.seed, i)?;
            if let Ok(image) = patch::emit(stencil, &placement, patcher) {
                if judge_too {
                    let sites = set.target.info().static_sites(stencil, &image);
                    std::hint::black_box(judge::judge_sites(set.target, stencil, &placement, &image, &sites));
                }
                std::hint::black_box(&image);
            }
            runs += 1;
        }
    }
    Ok(runs)
}
