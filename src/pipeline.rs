//! The whole check, stage after stage, for every stencil of a set:
//!
//! place → patch → execute (static, then a run) → judge, merged per stencil.
//!
//! Stencils are shared out to worker threads (one engine each, every run from
//! an identical emulator state, so which worker ran what before never shows); results are
//! put back in file order, so the report never depends on thread timing.

use crate::error::BadInput;
use crate::execute::{Convention, Engine, EngineKind, NativeStats, Steering};
use crate::explore::{Cfg, Explorer};
use crate::judge::{self, Finding};
use crate::model::Section;
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
    /// Steered runs per stencil toward holes the placements left
    /// unexecuted ([`crate::explore`]); 0: none.
    pub explore: u32,
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
    /// Steered runs made ([`Options::explore`]).
    pub explored: u32,
    /// Holes no run executed, each with why.
    pub unreached: Vec<Unreached>,
}

/// A hole no run executed.
#[derive(Clone, Debug, Serialize)]
pub struct Unreached {
    /// `code+0x1c`, `data+0x8`.
    pub hole: String,
    pub reason: String,
}

pub struct Outcome {
    pub results: Vec<StencilResult>,
    pub convention: Convention,
    /// With the native engine: its runs, and how many Unicorn made instead.
    pub native: Option<NativeStats>,
}

/// Check every selected stencil of `set` under `options`.
pub fn verify(set: &StencilSet, options: &Options) -> Result<Outcome, BadInput> {
    verify_with_progress(set, options, &|_| {})
}

/// Where a run of [`verify_with_progress`] has got to: told after each
/// stencil, in the order stencils finish (not file order).
pub struct Progress<'r> {
    /// Stencils finished, of `total`.
    pub done: usize,
    pub total: usize,
    /// The one just finished (an error: it was refused).
    pub result: &'r Result<StencilResult, BadInput>,
}

/// [`verify`], telling `progress` as each stencil finishes (from the worker
/// threads: it must be cheap and thread-safe).
pub fn verify_with_progress(
    set: &StencilSet,
    options: &Options,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Outcome, BadInput> {
    let selected = select(set, &options.stencils)?;
    let done = AtomicUsize::new(0);
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
                    let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
                    progress(Progress { done: finished, total: selected.len(), result: &result });
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
        explored: 0,
        unreached: Vec::new(),
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
    let mut explorer = (options.explore > 0).then(Explorer::default);
    let place_at = |index| {
        place::place_within(set.target, &options.patcher.address_space(), stencil, options.seed, index)
            .map_err(|e| BadInput::at_line(set.path.display(), stencil.line, e.message))
            .map(|p| p.with_functions(&functions))
    };
    for index in indices {
        let placement = place_at(index)?;
        // Unicorn records branches at no cost; the native engine's runs
        // record none (exploration records its own runs then, see `explore`).
        let record = explorer.is_some() && engine.native_stats().is_none();
        let run = Run { steering: record.then(Steering::default) };
        let (findings, branches) = run_one(set, stencil, &placement, options, engine, &mut covered, &mut result, run);
        if let (Some(explorer), Some(branches)) = (explorer.as_mut(), branches) {
            explorer.record(index, &Steering::default(), &branches);
        }
        merge(&mut result.findings, findings, &placement);
        result.runs += 1;
    }
    if let Some(explorer) = explorer.as_mut() {
        explore(set, stencil, options, engine, &place_at, explorer, &mut covered, &mut result)?;
    }
    result.holes_covered = covered.len();
    result.unreached.extend(unreached_without_reason(stencil, &covered, &result.unreached));
    Ok(result)
}

/// How one run is made: steered (branches recorded, some forced) or plain.
struct Run {
    steering: Option<Steering>,
}

/// Steered runs toward each code hole no run executed yet, in hole order,
/// until every hole ran or [`Options::explore`] runs are spent. Site
/// findings of steered runs count as inconclusive ([`crate::explore`]).
#[allow(clippy::too_many_arguments)]
fn explore(
    set: &StencilSet,
    stencil: &Stencil,
    options: &Options,
    engine: &mut dyn Engine,
    place_at: &dyn Fn(u32) -> Result<Placement, BadInput>,
    explorer: &mut Explorer,
    covered: &mut BTreeSet<usize>,
    result: &mut StencilResult,
) -> Result<(), BadInput> {
    let first = place_at(options.placement.unwrap_or(0))?;
    let Ok(image) = patch::emit(stencil, &first, options.patcher) else { return Ok(()) };
    let Some(flows) = engine.flows(&image) else { return Ok(()) };
    let cfg = Cfg::new(flows, image.code_addr);
    // No branches recorded by the placements' runs (a native engine):
    // record a few placements' paths first, from the same budget.
    if explorer.is_empty() && !covered_all_code(stencil, covered) {
        let indices: Vec<u32> = match options.placement {
            Some(i) => vec![i],
            None => (0..options.placements.min(RECORDED_PLACEMENTS).min(options.explore / 2)).collect(),
        };
        for index in indices {
            let placement = place_at(index)?;
            let Ok(image) = patch::emit(stencil, &placement, options.patcher) else { continue };
            let Some(trace) = engine.run_steered(stencil, &placement, &image, &Steering::default()) else { break };
            explorer.record(index, &Steering::default(), &trace.branches);
            result.explored += 1;
        }
    }
    let holes: Vec<_> = stencil.holes().collect();
    let mut given_up = BTreeSet::new();
    while result.explored < options.explore {
        let goal = (0..holes.len())
            .find(|i| holes[*i].section == Section::Code && !covered.contains(i) && !given_up.contains(i));
        let Some(goal) = goal else { break };
        let reason = match cfg.instruction_holding(holes[goal].offset) {
            None => Some("not inside an instruction of the decoded code"),
            Some(insn) if !cfg.reachable_from_entry(insn) => Some("no path from the entry leads to it"),
            Some(insn) => match explorer.next_toward(&cfg, insn) {
                None => Some("no run took a branch that leads toward it, steered or not"),
                Some((index, steering)) => {
                    let placement = place_at(index)?;
                    let run = Run { steering: Some(steering.clone()) };
                    let (findings, branches) = run_one(set, stencil, &placement, options, engine, covered, result, run);
                    explorer.record(index, &steering, &branches.unwrap_or_default());
                    result.explored += 1;
                    if let Some(f) = findings.first() {
                        result.inconclusive += 1;
                        let why = format!("on a steered path ({:?}): {}", steering.force, f.message);
                        result.first_inconclusive.get_or_insert((index, why));
                    }
                    None
                }
            },
        };
        if let Some(reason) = reason {
            given_up.insert(goal);
            result.unreached.push(Unreached { hole: hole_name(holes[goal]), reason: reason.to_string() });
        }
    }
    Ok(())
}

/// Placements whose paths exploration records itself when the engine's
/// runs record none (at most half the budget).
const RECORDED_PLACEMENTS: u32 = 4;

fn covered_all_code(stencil: &Stencil, covered: &BTreeSet<usize>) -> bool {
    stencil.holes().enumerate().all(|(i, h)| h.section != Section::Code || covered.contains(&i))
}

fn hole_name(hole: &crate::model::PatchCall) -> String {
    format!("{}+{:#x}", hole.section, hole.offset)
}

/// Holes not covered and not explained by exploration, with the reason
/// that holds for each.
fn unreached_without_reason(stencil: &Stencil, covered: &BTreeSet<usize>, explained: &[Unreached]) -> Vec<Unreached> {
    let explained: BTreeSet<&str> = explained.iter().map(|u| u.hole.as_str()).collect();
    stencil
        .holes()
        .enumerate()
        .filter(|(i, h)| !covered.contains(i) && !explained.contains(hole_name(h).as_str()))
        .map(|(_, h)| Unreached {
            hole: hole_name(h),
            reason: match h.section {
                Section::Code => "no run executed it (exploration off or its budget spent)",
                _ => "no run read or used its slot",
            }
            .to_string(),
        })
        .collect()
}

/// One placement: patch, judge the image, run, judge the run. A steered
/// run also gives the way its branches went; its run is not judged (its
/// path may be one no input takes), only its sites.
#[allow(clippy::too_many_arguments)]
fn run_one(
    set: &StencilSet,
    stencil: &Stencil,
    placement: &Placement,
    options: &Options,
    engine: &mut dyn Engine,
    covered: &mut BTreeSet<usize>,
    result: &mut StencilResult,
    how: Run,
) -> (Vec<Finding>, Option<Vec<(u32, u32)>>) {
    let image = match patch::emit(stencil, placement, options.patcher) {
        Ok(image) => image,
        Err(failure) if failure.assert.is_inconclusive() && !options.strict => {
            // `--jit-c`: the placed addresses are taken in our own process,
            // so the real C cannot run there; or what the patch does depends
            // on memory we do not model. Not the stencil's fault.
            result.inconclusive += 1;
            result.first_inconclusive.get_or_insert((placement.index, failure.assert.message));
            return (Vec::new(), None);
        }
        Err(failure) => return (vec![judge::judge_emit_failure(stencil, placement, &failure)], None),
    };
    let steered = how.steering.as_ref().is_some_and(|s| !s.force.is_empty());
    let trace = match &how.steering {
        Some(steering) => engine.run_steered(stencil, placement, &image, steering),
        None => None,
    };
    let branches = trace.as_ref().map(|t| t.branches.clone());
    let trace = trace.unwrap_or_else(|| engine.run(stencil, placement, &image));
    if steered {
        covered.extend(judge::coverage(stencil, placement, &trace));
        return (judge::judge_sites(set.target, stencil, placement, &image, &trace.sites), branches);
    }
    let static_sites = set.target.info().static_sites(stencil, &image);
    let mut findings = judge::judge_sites(set.target, stencil, placement, &image, &static_sites);
    findings.extend(judge::judge_data_slots(stencil, placement, &image));
    findings.extend(judge::judge_accounting(set.target, stencil, placement, &image));
    findings.extend(judge::judge_relaxed_pairs(set.target, stencil, placement, &image));
    findings.extend(judge::judge_sites(set.target, stencil, placement, &image, &trace.sites));
    let run = judge::judge_run(set.target, stencil, placement, &trace, options.strict);
    findings.extend(run.findings);
    if let Some(why) = run.inconclusive {
        result.inconclusive += 1;
        result.first_inconclusive.get_or_insert((placement.index, why));
    }
    covered.extend(judge::coverage(stencil, placement, &trace));
    result.instructions += trace.instructions;
    (findings, branches)
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
