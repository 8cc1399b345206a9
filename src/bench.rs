//! `stencilcheck bench`: throughput of each stage, in stencil runs per
//! second, so engines can be compared as ratios (a native engine against
//! Unicorn) and regressions show up as numbers, not as slow tests.

use crate::error::BadInput;
use crate::execute::EngineKind;
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

/// One input's numbers.
struct Measured {
    input: String,
    target: String,
    stencils: usize,
    load_ms: f64,
    /// (label, stencil runs per second)
    rates: Vec<(String, f64)>,
    /// Lines under the table: the native engine against Unicorn.
    notes: Vec<String>,
}

/// Each input's stages side by side (one column per input, so targets
/// compare in one run), with every rate also as a ratio to the first input.
pub fn bench(
    paths: &[std::path::PathBuf],
    o: &BenchOptions,
    patcher: &(dyn Patcher + Sync),
) -> Result<String, BadInput> {
    let measured = paths.iter().map(|p| measure(p, o, patcher)).collect::<Result<Vec<_>, _>>()?;
    let mut out = String::new();
    let _ = writeln!(out, "bench: {} placements per stencil, seed {}, best of {}", o.placements, o.seed, o.repeat);
    for (i, m) in measured.iter().enumerate() {
        let _ = writeln!(out, "  [{}] {} ({}, {} stencils)", i + 1, m.input, m.target, m.stencils);
    }
    let header: String = (1..=measured.len()).map(|i| format!("{:>16}", format!("[{i}]"))).collect();
    let _ = writeln!(out, "  {:<30}{header}", "stencil runs/s");
    let _ = writeln!(
        out,
        "  {:<30}{}",
        "load (ms)",
        measured.iter().map(|m| format!("{:>16.1}", m.load_ms)).collect::<String>()
    );
    for (row, (label, _)) in measured[0].rates.iter().enumerate() {
        let first = measured[0].rates[row].1;
        let cells: String = measured
            .iter()
            .map(|m| {
                let r = m.rates.get(row).map_or(0.0, |x| x.1);
                if measured.len() > 1 {
                    format!("{:>16}", format!("{r:.0} ({:.2}x)", r / first.max(1e-9)))
                } else {
                    format!("{r:>16.0}")
                }
            })
            .collect();
        let _ = writeln!(out, "  {label:<30}{cells}");
    }
    for (i, m) in measured.iter().enumerate() {
        for note in &m.notes {
            let _ = writeln!(out, "  [{}] {note}", i + 1);
        }
    }
    Ok(out)
}

fn measure(path: &std::path::Path, o: &BenchOptions, patcher: &(dyn Patcher + Sync)) -> Result<Measured, BadInput> {
    let (load, _) = best(o.repeat, || crate::load::load_path(path).map(|_| 0))?;
    let set = crate::load::load_path(path)?;
    let mut rates = Vec::new();
    let (d, n) = best(o.repeat, || place_and_patch(&set, o, patcher, false))?;
    rates.push(("place + patch".to_string(), rate(n, d)));
    let (d, n) = best(o.repeat, || place_and_patch(&set, o, patcher, true))?;
    rates.push(("place + patch + static judge".to_string(), rate(n, d)));
    let mut threads_to_run = vec![1];
    if o.threads > 1 {
        threads_to_run.push(o.threads);
    }
    let mut notes = Vec::new();
    for threads in threads_to_run {
        let plural = if threads == 1 { "" } else { "s" };
        let mut unicorn = 0.0;
        for engine in engines(&set) {
            let options = pipeline::Options {
                seed: o.seed,
                placements: o.placements,
                stencils: Vec::new(),
                placement: None,
                instruction_limit: execute::DEFAULT_INSTRUCTION_LIMIT,
                threads,
                strict: false,
                patcher,
                engine,
            };
            let mut native = None;
            let (d, n) = best(o.repeat, || {
                let outcome = pipeline::verify(&set, &options)?;
                native = outcome.native;
                Ok(outcome.results.iter().map(|s| s.runs as u64).sum())
            })?;
            let name = if engine == EngineKind::Native { "native" } else { "unicorn" };
            rates.push((format!("full, {name}, {threads} thread{plural}"), rate(n, d)));
            match native {
                None => unicorn = rate(n, d),
                Some(stats) => notes.push(format!(
                    "native, {threads} thread{plural}: {:.1}x unicorn's runs/s; {}",
                    rate(n, d) / f64::max(unicorn, 1e-9),
                    stats.summary()
                )),
            }
        }
    }
    Ok(Measured {
        input: path.display().to_string(),
        target: set.target.to_string(),
        stencils: set.stencils.len(),
        load_ms: load.as_secs_f64() * 1e3,
        rates,
        notes,
    })
}

/// Unicorn always; the native engine too where it can run the set's stencils.
fn engines(set: &StencilSet) -> Vec<EngineKind> {
    let native =
        cfg!(all(target_arch = "x86_64", target_os = "linux")) && set.target.arch == crate::target::Arch::X86_64;
    if native {
        vec![EngineKind::Unicorn, EngineKind::Native]
    } else {
        vec![EngineKind::Unicorn]
    }
}

fn place_and_patch(
    set: &StencilSet,
    o: &BenchOptions,
    patcher: &dyn Patcher,
    judge_too: bool,
) -> Result<u64, BadInput> {
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
