//! The whole check, stage after stage, for every stencil of a set:
//!
//! place → patch → execute (static, then a run) → judge, merged per stencil.
//!
//! Stencils are shared out to worker threads (one engine each, every run from
//! an identical emulator state, so which worker ran what before never shows); results are
//! put back in file order, so the report never depends on thread timing.

use crate::error::BadInput;
use crate::execute::{Convention, Engine, EngineKind, NativeStats};
use crate::judge::{self, Finding};
use crate::model::{Stencil, StencilSet};
use crate::patch::{self, Patcher};
use crate::place::{self, Layout, Placement};
use serde::Serialize;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

pub struct Options<'a> {
    pub seed: u64,
    pub placements: u32,
    /// Only these stencils (all when empty).
    pub stencils: Vec<String>,
    /// Only this placement index (replay).
    pub placement: Option<u32>,
    pub instruction_limit: u64,
    pub threads: usize,
    /// Count inconclusive runs (budget, unmappable made-up pointers) as findings.
    pub strict: bool,
    pub patcher: &'a (dyn Patcher + Sync),
    /// Which engine runs the stencils.
    pub engine: EngineKind,
}

/// A finding with the runs that showed it.
#[derive(Clone, Debug, Serialize)]
pub struct Seen {
    #[serde(flatten)]
    pub finding: Finding,
    /// The first placement (lowest index) that showed it: the one to replay.
    pub placement: u32,
    pub layout: Layout,
    /// How many runs showed it.
    pub runs: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct StencilResult {
    pub name: String,
    pub line: usize,
    pub runs: u32,
    pub holes: usize,
    pub holes_covered: usize,
    pub instructions: u64,
    pub findings: Vec<Seen>,
    /// Runs that could not judge the whole stencil (see `judge::RunJudgement`).
    pub inconclusive: u32,
    /// The first of them: placement and why.
    pub first_inconclusive: Option<(u32, String)>,
}

pub struct Outcome {
    pub results: Vec<StencilResult>,
    pub convention: Convention,
    /// With the native engine: its runs, and how many Unicorn made instead.
    pub native: Option<NativeStats>,
}

/// Check every selected stencil of `set` under `options`.
pub fn verify(set: &StencilSet, options: &Options) -> Result<Outcome, BadInput> {
    let selected = select(set, &options.stencils)?;
    let convention = set.target.convention(set);
    let next = AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<Result<StencilResult, BadInput>>>> =
        selected.iter().map(|_| Mutex::new(None)).collect();
    let engine_error = Mutex::new(None);
    let native: Mutex<Option<NativeStats>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..options.threads.max(1).min(selected.len().max(1)) {
            scope.spawn(|| {
                let mut engine = match engine(set, options, &convention) {
                    Ok(e) => e,
                    Err(e) => {
                        *engine_error.lock().unwrap() = Some(e);
                        return;
                    }
                };
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(stencil) = selected.get(i) else { break };
                    let result = verify_stencil(set, stencil, options, engine.as_mut());
                    *slots[i].lock().unwrap() = Some(result);
                }
                if let Some(stats) = engine.native_stats() {
                    native.lock().unwrap().get_or_insert_with(NativeStats::default).add(&stats);
                }
            });
        }
    });
    if let Some(e) = engine_error.into_inner().unwrap() {
        return Err(BadInput::unsupported(set.path.display(), &e));
    }
    let mut results = Vec::with_capacity(slots.len());
    for slot in slots {
        match slot.into_inner().unwrap() {
            Some(Ok(r)) => results.push(r),
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    Ok(Outcome { results, convention, native: native.into_inner().unwrap() })
}

/// A fresh engine of the kind `options` asks for. Native is x86-64 on an
/// x86-64 Linux host only: anything else is refused, never run on Unicorn
/// instead.
fn engine(
    set: &StencilSet,
    options: &Options,
    convention: &Convention,
) -> Result<Box<dyn Engine>, crate::target::Unsupported> {
    match options.engine {
        EngineKind::Unicorn => set.target.engine(convention.clone(), options.instruction_limit),
        EngineKind::Native => native_engine(set.target, convention, options.instruction_limit),
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn native_engine(
    target: crate::target::Target,
    convention: &Convention,
    limit: u64,
) -> Result<Box<dyn Engine>, crate::target::Unsupported> {
    if target.arch != crate::target::Arch::X86_64 {
        return Err(target.unsupported("the native engine (x86-64 stencils only)"));
    }
    let engine = crate::execute::native::NativeEngine::new(convention.clone(), limit)
        .map_err(|e| target.unsupported(format!("the native engine ({e})")))?;
    Ok(Box::new(engine))
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn native_engine(
    target: crate::target::Target,
    _convention: &Convention,
    _limit: u64,
) -> Result<Box<dyn Engine>, crate::target::Unsupported> {
    Err(target.unsupported("the native engine on a host other than x86-64 Linux"))
}

fn select<'s>(set: &'s StencilSet, names: &[String]) -> Result<Vec<&'s Stencil>, BadInput> {
    if names.is_empty() {
        return Ok(set.stencils.iter().collect());
    }
    names
        .iter()
        .map(|n| {
            let n = n.strip_prefix("emit_").unwrap_or(n);
            set.stencils
                .iter()
                .find(|s| s.name == n)
                .ok_or_else(|| BadInput::in_file(set.path.display(), format!("no stencil named `{n}`")))
        })
        .collect()
}

fn verify_stencil(
    set: &StencilSet,
    stencil: &Stencil,
    options: &Options,
    engine: &mut dyn Engine,
) -> Result<StencilResult, BadInput> {
    let mut result = StencilResult {
        name: stencil.name.clone(),
        line: stencil.line,
        runs: 0,
        holes: stencil.holes().count(),
        holes_covered: 0,
        instructions: 0,
        findings: Vec::new(),
        inconclusive: 0,
        first_inconclusive: None,
    };
    if stencil.code.is_empty() {
        return Ok(result); // `_NOP`: nothing to place or run
    }
    let indices: Vec<u32> = match options.placement {
        Some(i) => vec![i],
        None => (0..options.placements).collect(),
    };
    let mut covered = BTreeSet::new();
    // Which externs are functions: the stencil's, once, not per placement.
    let functions = place::function_externs(set.target, stencil);
    for index in indices {
        let placement = place::place_within(set.target, &options.patcher.address_space(), stencil, options.seed, index)
            .map_err(|e| BadInput::at_line(set.path.display(), stencil.line, e.message))?
            .with_functions(&functions);
        let findings = run_one(set, stencil, &placement, options, engine, &mut covered, &mut result);
        merge(&mut result.findings, findings, &placement);
        result.runs += 1;
    }
    result.holes_covered = covered.len();
    Ok(result)
}

/// One placement: patch, judge the image, run, judge the run.
fn run_one(
    set: &StencilSet,
    stencil: &Stencil,
    placement: &Placement,
    options: &Options,
    engine: &mut dyn Engine,
    covered: &mut BTreeSet<usize>,
    result: &mut StencilResult,
) -> Vec<Finding> {
    let image = match patch::emit(stencil, placement, options.patcher) {
        Ok(image) => image,
        Err(failure) if failure.assert.is_inconclusive() && !options.strict => {
            // `--jit-c`: the placed addresses are taken in our own process,
            // so the real C cannot run there; or what the patch does depends
            // on memory we do not model. Not the stencil's fault.
            result.inconclusive += 1;
            result.first_inconclusive.get_or_insert((placement.index, failure.assert.message));
            return Vec::new();
        }
        Err(failure) => return vec![judge::judge_emit_failure(stencil, placement, &failure)],
    };
    let static_sites = set.target.info().static_sites(stencil, &image);
    let mut findings = judge::judge_sites(set.target, stencil, placement, &image, &static_sites);
    findings.extend(judge::judge_data_slots(stencil, placement, &image));
    findings.extend(judge::judge_accounting(set.target, stencil, placement, &image));
    findings.extend(judge::judge_relaxed_pairs(set.target, stencil, placement, &image));
    let trace = engine.run(stencil, placement, &image);
    findings.extend(judge::judge_sites(set.target, stencil, placement, &image, &trace.sites));
    let run = judge::judge_run(set.target, stencil, placement, &trace, options.strict);
    findings.extend(run.findings);
    if let Some(why) = run.inconclusive {
        result.inconclusive += 1;
        result.first_inconclusive.get_or_insert((placement.index, why));
    }
    covered.extend(judge::coverage(stencil, placement, &trace));
    result.instructions += trace.instructions;
    findings
}

/// Fold one run's findings into the stencil's, one entry per distinct bug.
fn merge(into: &mut Vec<Seen>, findings: Vec<Finding>, placement: &Placement) {
    let mut this_run = BTreeSet::new();
    for f in findings {
        let key = f.key();
        match into.iter_mut().find(|s| s.finding.key() == key) {
            Some(seen) => {
                if this_run.insert(key) {
                    seen.runs += 1;
                }
            }
            None => {
                this_run.insert(key);
                into.push(Seen { finding: f, placement: placement.index, layout: placement.layout, runs: 1 });
            }
        }
    }
}
