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
        let _ = writeln!(out, "  cost split, [{}] on one thread: {}", i + 1, cost_split(m));
        for note in &m.notes {
            let _ = writeln!(out, "  [{}] {note}", i + 1);
        }
    }
    Ok(out)
}

/// Microseconds per run spent in each stage, from the cumulative rates
/// (each row runs one more stage than the one before), and each stage's share.
fn cost_split(m: &Measured) -> String {
    let per_run = |label: &str| m.rates.iter().find(|(l, _)| l == label).map(|(_, r)| 1e6 / r.max(1e-9));
    let rows = ["place", "place + patch", "place + patch + static judge", "full, unicorn, 1 thread"];
    let Some(times) = rows.iter().map(|r| per_run(r)).collect::<Option<Vec<f64>>>() else { return String::new() };
    let names = ["place", "patch", "static judge", "execute + run judge"];
    let total = times[3].max(1e-9);
    let mut previous = 0.0;
    let mut parts = Vec::new();
    for (name, t) in names.iter().zip(&times) {
        let own = (t - previous).max(0.0);
        previous = *t;
        parts.push(format!("{name} {own:.1} µs ({:.1}%)", 100.0 * own / total));
    }
    format!("{}; load {:.1} ms once", parts.join(", "), m.load_ms)
}

fn measure(path: &std::path::Path, o: &BenchOptions, patcher: &(dyn Patcher + Sync)) -> Result<Measured, BadInput> {
    let (load, _) = best(o.repeat, || crate::load::load_path(path).map(|_| 0))?;
    let set = crate::load::load_path(path)?;
    let mut rates = Vec::new();
    let (d, n) = best(o.repeat, || stages(&set, o, patcher, Stage::Place))?;
    rates.push(("place".to_string(), rate(n, d)));
    let (d, n) = best(o.repeat, || stages(&set, o, patcher, Stage::Patch))?;
    rates.push(("place + patch".to_string(), rate(n, d)));
    let (d, n) = best(o.repeat, || stages(&set, o, patcher, Stage::StaticJudge))?;
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
            let options = plain_options(o, patcher, threads, engine);
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

/// Every stencil, every placement, default budgets, no exploration: the
/// same work for every engine and thread count measured.
fn plain_options<'a>(
    o: &BenchOptions,
    patcher: &'a (dyn Patcher + Sync),
    threads: usize,
    engine: EngineKind,
) -> pipeline::Options<'a> {
    pipeline::Options {
        seed: o.seed,
        placements: o.placements,
        stencils: Vec::new(),
        placement: None,
        instruction_limit: execute::DEFAULT_INSTRUCTION_LIMIT,
        threads,
        strict: false,
        explore: 0,
        patcher,
        engine,
    }
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

/// How far [`stages`] goes for each run.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Place,
    Patch,
    StaticJudge,
}

fn stages(set: &StencilSet, o: &BenchOptions, patcher: &dyn Patcher, upto: Stage) -> Result<u64, BadInput> {
    let mut runs = 0;
    for stencil in set.stencils.iter().filter(|s| !s.code.is_empty()) {
        for i in 0..o.placements {
            let placement = place::place(set.target, stencil, o.seed, i)?;
            if upto == Stage::Place {
                std::hint::black_box(&placement);
                runs += 1;
                continue;
            }
            if let Ok(image) = patch::emit(stencil, &placement, patcher) {
                if upto == Stage::StaticJudge {
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

/// Every run of `path` under `o` as JSON lines in `file`: what
/// `scripts/baseline.py` replays. x86-64 only (the baseline's one target).
pub fn export_runs(
    path: &std::path::Path,
    o: &BenchOptions,
    patcher: &dyn Patcher,
    file: &std::path::Path,
) -> Result<u64, BadInput> {
    use std::io::Write as _;
    let set = crate::load::load_path(path)?;
    if set.target.arch != crate::target::Arch::X86_64 {
        return Err(BadInput::unsupported(path.display(), &set.target.unsupported("exporting runs".to_string())));
    }
    let convention = set.target.convention(&set);
    let mut engine = execute::x86_64::UnicornX86::new(convention, execute::DEFAULT_INSTRUCTION_LIMIT)
        .map_err(|e| BadInput::unsupported(path.display(), &set.target.unsupported(e)))?;
    let cannot_write = |e: std::io::Error| BadInput::in_file(file.display(), format!("cannot write: {e}"));
    let mut w = std::io::BufWriter::new(std::fs::File::create(file).map_err(cannot_write)?);
    let mut runs = 0;
    for stencil in set.stencils.iter().filter(|s| !s.code.is_empty()) {
        let functions = place::function_externs(set.target, stencil);
        for i in 0..o.placements {
            let placement = place::place_within(set.target, &patcher.address_space(), stencil, o.seed, i)
                .map_err(|e| BadInput::at_line(set.path.display(), stencil.line, e.message))?
                .with_functions(&functions);
            let Ok(image) = patch::emit(stencil, &placement, patcher) else { continue };
            let run = engine
                .export(stencil, &placement, &image)
                .map_err(|e| BadInput::in_file(path.display(), format!("{}: {e}", stencil.name)))?;
            let line = serde_json::to_string(&run).expect("plain data serializes");
            writeln!(w, "{line}").map_err(cannot_write)?;
            runs += 1;
        }
    }
    w.flush().map_err(cannot_write)?;
    Ok(runs)
}

/// The Unicorn engine on one thread against `script` (a Python + Unicorn
/// driver) on the same runs of `path`: both rates and their ratio.
pub fn against_baseline(
    path: &std::path::Path,
    o: &BenchOptions,
    patcher: &(dyn Patcher + Sync),
    script: &std::path::Path,
) -> Result<String, BadInput> {
    let dir = std::env::temp_dir().join(format!("stencilcheck-baseline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| BadInput::in_file(dir.display(), e.to_string()))?;
    let runs_file = dir.join("runs.jsonl");
    let exported = export_runs(path, o, patcher, &runs_file)?;
    let output = std::process::Command::new("python3")
        .arg(script)
        .arg(&runs_file)
        .arg("--repeat")
        .arg(o.repeat.to_string())
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    let output = output.map_err(|e| BadInput::in_file(script.display(), format!("cannot run python3: {e}")))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let baseline = stdout
        .lines()
        .find_map(|l| l.strip_prefix("runs/s: "))
        .and_then(|r| r.trim().parse::<f64>().ok())
        .filter(|_| output.status.success())
        .ok_or_else(|| {
            let why = String::from_utf8_lossy(&output.stderr);
            BadInput::in_file(script.display(), format!("no `runs/s:` line ({})", why.trim()))
        })?;
    let set = crate::load::load_path(path)?;
    let options = plain_options(o, patcher, 1, EngineKind::Unicorn);
    let (d, n) =
        best(o.repeat, || pipeline::verify(&set, &options).map(|r| r.results.iter().map(|s| s.runs as u64).sum()))?;
    let ours = rate(n, d);
    let mut out = String::new();
    let _ = writeln!(out, "baseline: {} on the same {exported} runs", script.display());
    let _ = writeln!(out, "  {:<30}{baseline:>16.0}", "python + unicorn, 1 thread");
    let _ =
        writeln!(out, "  {:<30}{ours:>16.0} ({:.2}x the baseline)", "stencilcheck unicorn, 1 thread", ours / baseline);
    for line in stdout.lines().filter(|l| l.starts_with("ends:")) {
        let _ = writeln!(out, "  baseline {line}");
    }
    Ok(out)
}
