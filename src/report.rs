//! Report: findings for people (human) and for machines (JSON).
//!
//! The JSON report is a pure function of the input, seed and options: no
//! times, no thread counts, so the same seed gives byte-identical output.
//! Every finding carries the one command that replays it.

use crate::model::StencilSet;
use crate::pipeline::{Outcome, Seen, StencilResult};
use serde::Serialize;
use std::fmt::Write as _;
use std::time::Duration;

/// How to spell the replay command for a finding.
pub struct Replay {
    /// `stencilcheck verify PATH`, plus any option that changes results.
    pub base: String,
    pub seed: u64,
}

impl Replay {
    pub fn command(&self, stencil: &str, placement: u32) -> String {
        format!("{} --seed {} --stencil {} --placement {}", self.base, self.seed, stencil, placement)
    }
}

#[derive(Serialize)]
struct JsonReport<'a> {
    tool: &'static str,
    version: &'static str,
    input: String,
    arch: String,
    seed: u64,
    placements: u32,
    convention: &'a crate::execute::Convention,
    summary: Summary,
    stencils: Vec<JsonStencil<'a>>,
}

#[derive(Serialize, Default)]
pub struct Summary {
    pub stencils: usize,
    pub correct: usize,
    pub with_findings: usize,
    pub findings: usize,
    pub runs: u64,
    pub holes: usize,
    pub holes_covered: usize,
    pub inconclusive_runs: u64,
    /// Steered runs made toward unexecuted holes (`--explore`).
    pub explored_runs: u64,
    /// Holes no run executed (each listed with why in its stencil).
    pub holes_unreached: usize,
}

#[derive(Serialize)]
struct JsonStencil<'a> {
    name: &'a str,
    line: usize,
    runs: u32,
    holes: usize,
    holes_covered: usize,
    findings: Vec<JsonFinding<'a>>,
    inconclusive: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_inconclusive: Option<JsonInconclusive<'a>>,
    explored: u32,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    unreached: &'a [crate::pipeline::Unreached],
}

#[derive(Serialize)]
struct JsonInconclusive<'a> {
    placement: u32,
    reason: &'a str,
    replay: String,
}

#[derive(Serialize)]
struct JsonFinding<'a> {
    #[serde(flatten)]
    seen: &'a Seen,
    replay: String,
}

pub fn summary(outcome: &Outcome) -> Summary {
    let mut s = Summary { stencils: outcome.results.len(), ..Summary::default() };
    for r in &outcome.results {
        if r.findings.is_empty() {
            s.correct += 1;
        } else {
            s.with_findings += 1;
        }
        s.findings += r.findings.len();
        s.runs += r.runs as u64;
        s.holes += r.holes;
        s.holes_covered += r.holes_covered;
        s.inconclusive_runs += r.inconclusive as u64;
        s.explored_runs += r.explored as u64;
        s.holes_unreached += r.unreached.len();
    }
    s
}

pub fn json(set: &StencilSet, outcome: &Outcome, placements: u32, replay: &Replay) -> String {
    let report = JsonReport {
        tool: "stencilcheck",
        version: env!("CARGO_PKG_VERSION"),
        input: set.path.display().to_string(),
        arch: set.arch().to_string(),
        seed: replay.seed,
        placements,
        convention: &outcome.convention,
        summary: summary(outcome),
        stencils: outcome
            .results
            .iter()
            .map(|r| JsonStencil {
                name: &r.name,
                line: r.line,
                runs: r.runs,
                holes: r.holes,
                holes_covered: r.holes_covered,
                findings: r
                    .findings
                    .iter()
                    .map(|seen| JsonFinding { seen, replay: replay.command(&r.name, seen.placement) })
                    .collect(),
                inconclusive: r.inconclusive,
                first_inconclusive: r.first_inconclusive.as_ref().map(|(p, why)| JsonInconclusive {
                    placement: *p,
                    reason: why,
                    replay: replay.command(&r.name, *p),
                }),
                explored: r.explored,
                unreached: &r.unreached,
            })
            .collect(),
    };
    let mut out = serde_json::to_string_pretty(&report).expect("report serializes");
    out.push('\n');
    out
}

pub fn human(
    set: &StencilSet,
    outcome: &Outcome,
    placements: u32,
    replay: &Replay,
    elapsed: Duration,
    verbose: bool,
) -> String {
    let mut out = String::new();
    let c = &outcome.convention;
    let _ = writeln!(
        out,
        "stencilcheck: {} ({}, {} stencils), seed {}, {} placements each",
        set.path.display(),
        set.arch(),
        set.stencils.len(),
        replay.seed,
        placements
    );
    let _ = writeln!(
        out,
        "convention: frame {}, stack_pointer {}, tstate {} ({})",
        c.frame, c.stack_pointer, c.tstate, c.source
    );
    for r in &outcome.results {
        for seen in &r.findings {
            out.push('\n');
            finding(&mut out, r, seen, replay);
        }
    }
    let inconclusive: Vec<&StencilResult> = outcome.results.iter().filter(|r| r.inconclusive > 0).collect();
    if verbose && !inconclusive.is_empty() {
        let _ =
            writeln!(out, "\ninconclusive runs (made-up memory led nowhere; not findings, --strict makes them so):");
        for r in &inconclusive {
            if let Some((p, why)) = &r.first_inconclusive {
                let _ = writeln!(out, "  {} {}/{} runs, first: {why}", r.name, r.inconclusive, r.runs);
                let _ = writeln!(out, "    replay: {}", replay.command(&r.name, *p));
            }
        }
    }
    if verbose && outcome.results.iter().any(|r| !r.unreached.is_empty()) {
        let _ = writeln!(out, "\nholes no run executed:");
        for r in &outcome.results {
            for u in &r.unreached {
                let _ = writeln!(out, "  {} {}: {}", r.name, u.hole, u.reason);
            }
        }
    }
    if verbose {
        out.push('\n');
        for r in &outcome.results {
            let _ = writeln!(
                out,
                "{:<40} {:>4} runs  holes {:>3}/{:<3} {}",
                r.name,
                r.runs,
                r.holes_covered,
                r.holes,
                if r.findings.is_empty() { "correct".to_string() } else { format!("{} findings", r.findings.len()) }
            );
        }
    }
    let s = summary(outcome);
    let secs = elapsed.as_secs_f64().max(1e-9);
    let _ = writeln!(
        out,
        "\n{} stencils: {} correct, {} with findings ({} findings)",
        s.stencils, s.correct, s.with_findings, s.findings
    );
    let _ = writeln!(
        out,
        "runs: {} in {:.1} s ({:.0} stencil runs/s), {} inconclusive in {} stencils{}; hole coverage {}/{} ({:.1}%){}",
        s.runs,
        secs,
        s.runs as f64 / secs,
        s.inconclusive_runs,
        inconclusive.len(),
        if verbose || inconclusive.is_empty() { "" } else { " (-v lists them)" },
        s.holes_covered,
        s.holes,
        100.0 * s.holes_covered as f64 / s.holes.max(1) as f64,
        explored(&s, verbose)
    );
    out
}

/// `, 120 steered runs, 12 holes unreached (-v lists them with why)`.
fn explored(s: &Summary, verbose: bool) -> String {
    let mut out = String::new();
    if s.explored_runs > 0 {
        let _ = write!(out, ", {} steered runs", s.explored_runs);
    }
    if s.holes_unreached > 0 && s.explored_runs > 0 {
        let _ = write!(out, ", {} holes unreached{}", s.holes_unreached, if verbose { "" } else { " (-v lists why)" });
    }
    out
}

fn finding(out: &mut String, r: &StencilResult, seen: &Seen, replay: &Replay) {
    let f = &seen.finding;
    let kind = serde_json::to_value(f.kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
    let _ = writeln!(out, "FINDING {} [{}]: {}", r.name, kind, f.message);
    if let Some(site) = &f.site {
        if let Some(insn) = &site.instruction {
            let at = site.instruction_offset.unwrap_or(site.offset);
            let _ = writeln!(
                out,
                "  instruction  {insn}    (at code+{at:#x}; field at {:#x}, {}+{:#x})",
                site.address, site.section, site.offset
            );
        }
        if let (Some(rel), Some(line)) = (&site.relocation, site.relocation_line) {
            // Line 0: read from an object, not a header; no line to name.
            let at = if line == 0 { String::new() } else { format!("    (line {line})") };
            let _ = writeln!(out, "  relocation   {rel}{at}");
        }
        if let (Some(hole), Some(line)) = (&site.hole, site.hole_line) {
            let at = if line == 0 { " (derived from the object)".to_string() } else { format!("    (line {line})") };
            let _ = writeln!(out, "  hole         {hole}{at}");
        }
    }
    for (name, v) in [("expected", &f.expected), ("actual", &f.actual)] {
        if let Some(v) = v {
            let _ = writeln!(out, "  {name:<12} {:#x} {}", v.value, v.label);
        }
    }
    let _ = writeln!(
        out,
        "  seen in      {} of {} runs (first: placement {}, {:?} layout)",
        seen.runs, r.runs, seen.placement, seen.layout
    );
    let _ = writeln!(out, "  replay       {}", replay.command(&r.name, seen.placement));
}
