//! The command line: `stencilcheck verify HEADER [...]`.
//!
//! Exit codes: 0 every stencil correct, 1 findings, 2 bad input (one line on
//! stderr naming the file and line or offset).

use crate::error::BadInput;
use crate::{load, patch, pipeline, report};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Printed after every command's `--help`: what a CI script and a shell need.
const EXIT_AND_ENVIRONMENT: &str = "\
Exit status:
  0  every stencil was placed, patched, run and judged correct
  1  findings (the report lists each with the command that replays it)
  2  bad input: one line on stderr naming the file and line or offset
  3  valid input this build does not support (e.g. --engine native for aarch64)

Environment:
  STENCILCHECK_DEBUG  print every emulated instruction with its registers on stderr
  CC                  the C compiler for --jit-c (default: cc)
  XDG_CACHE_HOME      --jit-c caches its compiled patch worker in
                      $XDG_CACHE_HOME/stencilcheck (default: $HOME/.cache)";

#[derive(Parser)]
#[command(
    name = "stencilcheck",
    version,
    about = "Prove copy-and-patch JIT stencils are patched correctly",
    after_help = EXIT_AND_ENVIRONMENT,
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Place, patch, run and judge every stencil of a jit_stencils.h.
    #[command(after_help = EXIT_AND_ENVIRONMENT)]
    Verify(VerifyArgs),
    /// Measure each stage's throughput in stencil runs per second.
    #[command(after_help = EXIT_AND_ENVIRONMENT)]
    Bench(BenchArgs),
    /// Compare the holes CPython wrote (a jit_stencils.h) with the ones
    /// derived from its objects (a directory of *.o); exit 1 on differences.
    #[command(after_help = EXIT_AND_ENVIRONMENT)]
    Diff(DiffArgs),
    /// Compare stencilcheck's patch ports with a jit.c's own patch functions
    /// on random and boundary inputs (exit 1 on any difference).
    #[command(after_help = EXIT_AND_ENVIRONMENT)]
    DiffPatch(DiffPatchArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    /// on stdout, e.g. `stencilcheck completions bash > /etc/bash_completion.d/stencilcheck`.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout: `stencilcheck manpage > stencilcheck.1`.
    Manpage {
        /// Instead write one page per command into DIR (`stencilcheck.1`,
        /// `stencilcheck-verify.1`, ...).
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
pub struct DiffArgs {
    /// CPython's jit_stencils.h.
    pub header: PathBuf,
    /// The directory of objects it was generated from (or one object).
    pub objects: PathBuf,
}

#[derive(clap::Args)]
pub struct DiffPatchArgs {
    /// The `Python/jit.c` whose patch functions are compared.
    #[arg(long = "jit-c", value_name = "PATH")]
    pub jit_c: PathBuf,
    /// Seed for the random cases: same seed, same cases.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Cases per patch function.
    #[arg(long, default_value_t = 2000)]
    pub cases: u64,
    /// Differences printed per function (and per header).
    #[arg(long, default_value_t = 5)]
    pub show: usize,
    /// Also replay every emit function of this jit_stencils.h (any target,
    /// aarch64 included) with both patchers and compare the images.
    #[arg(long, value_name = "HEADER")]
    pub header: Option<PathBuf>,
    /// Placements per stencil for --header.
    #[arg(long, default_value_t = 16)]
    pub placements: u32,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// One or more inputs (headers, objects, directories): measured side by
    /// side, with ratios to the first.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Seed for placements and made-up memory (as `verify --seed`).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Placements (runs) per stencil.
    #[arg(long, default_value_t = 16)]
    pub placements: u32,
    /// Repetitions; the best is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: u32,
    /// Worker threads (default: one per core); runs/s is also given per core.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Write every run of the first input (x86-64 only) as JSON lines to
    /// FILE and stop: the placed, patched images and entry state a driver
    /// outside stencilcheck needs to run exactly what the engine runs.
    #[arg(long, value_name = "FILE")]
    pub export_runs: Option<PathBuf>,
    /// Also run this Python + Unicorn driver (scripts/baseline.py) on the
    /// first input's runs and print the engine's speed as a ratio to it.
    #[arg(long, value_name = "SCRIPT")]
    pub baseline: Option<PathBuf>,
}

#[derive(clap::Args, Clone)]
pub struct VerifyArgs {
    /// A jit_stencils.h, an object (ELF, Mach-O, COFF) or a directory of *.o
    /// (the format is decided by content); a build directory holding
    /// `<triple>/jit_stencils.h` and/or `<triple>/objs/` for several triples
    /// (each verified, then a summary line per input; exit status the
    /// worst); none: the embedded corpus.
    pub input: Option<PathBuf>,
    /// Also run llvm-objdump (when on PATH) on each object and check its
    /// relocation lines match what the loader read.
    #[arg(long)]
    pub cross_check_objdump: bool,
    /// Seed for placements and made-up memory: same seed, same report.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Placements (runs) per stencil.
    #[arg(long, default_value_t = 64)]
    pub placements: u32,
    /// Only these stencils (repeatable; `_BINARY_OP` or `emit__BINARY_OP`).
    #[arg(long = "stencil", value_name = "NAME")]
    pub stencils: Vec<String>,
    /// Only this placement index (what a finding's replay command uses).
    #[arg(long)]
    pub placement: Option<u32>,
    /// Report format on stdout: `human` (findings, then a summary) or
    /// `json` (the same, for machines).
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
    /// Instructions one run may execute before it counts as a hang.
    #[arg(long, default_value_t = crate::execute::DEFAULT_INSTRUCTION_LIMIT)]
    pub instruction_limit: u64,
    /// Worker threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Count inconclusive runs (instruction budget, unmappable made-up
    /// pointers) as findings.
    #[arg(long)]
    pub strict: bool,
    /// Steered runs per stencil toward holes no placement executed: each
    /// re-runs a placement with one more conditional branch sent the other
    /// way. Holes still unexecuted are listed with why (-v). Steered runs'
    /// site findings count as inconclusive (the path may be infeasible).
    #[arg(long, default_value_t = DEFAULT_EXPLORE, value_name = "RUNS")]
    pub explore: u32,
    /// Progress on stderr as stencils finish: a line that updates in place
    /// on a terminal, a line every 10% otherwise. Default: on when stderr
    /// is a terminal.
    #[arg(long, conflicts_with = "quiet")]
    pub progress: bool,
    /// No progress on stderr (the report is unchanged).
    #[arg(long, short)]
    pub quiet: bool,
    /// Also list every stencil with its runs and hole coverage.
    #[arg(long, short)]
    pub verbose: bool,
    /// With no input: only the embedded corpus built for this triple (with
    /// neither, every embedded triple, a summary line each).
    #[arg(long, value_name = "TRIPLE", conflicts_with = "input")]
    pub corpus: Option<String>,
    /// Patch with the `patch_*` functions of this `Python/jit.c` (compiled
    /// with the system C compiler) instead of stencilcheck's Rust ports.
    #[arg(long = "jit-c", value_name = "PATH")]
    pub jit_c: Option<PathBuf>,
    /// Which engine runs the stencils: `unicorn` (any target, any host) or
    /// `native` (x86-64 stencils on an x86-64 Linux host: the host CPU runs
    /// them in a worker process, with Unicorn's verdicts; a run it cannot
    /// reproduce exactly is made on Unicorn, and stderr says how many).
    /// Native for another target or host is refused (exit 3).
    #[arg(long, value_enum, default_value_t = EngineArg::Unicorn)]
    pub engine: EngineArg,
}

/// `--engine`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum EngineArg {
    Unicorn,
    Native,
}

impl From<EngineArg> for crate::execute::EngineKind {
    fn from(e: EngineArg) -> Self {
        match e {
            EngineArg::Unicorn => crate::execute::EngineKind::Unicorn,
            EngineArg::Native => crate::execute::EngineKind::Native,
        }
    }
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Human,
    Json,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut out = String::new();
    let result = dispatch(cli.command, &mut out);
    print!("{out}");
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("stencilcheck: error: {e}");
            ExitCode::from(e.kind.exit_code())
        }
    }
}

fn dispatch(command: Command, out: &mut String) -> Result<u8, BadInput> {
    match command {
        Command::Verify(args) => verify(&args, out),
        Command::Bench(args) => bench(&args, out),
        Command::Diff(args) => diff(&args, out),
        Command::DiffPatch(args) => diff_patch(&args, out),
        Command::Completions { shell } => Ok(completions(shell, out)),
        Command::Manpage { out_dir } => manpage(out_dir.as_deref(), out),
    }
}

fn completions(shell: clap_complete::Shell, out: &mut String) -> u8 {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "stencilcheck", &mut script);
    out.push_str(&String::from_utf8_lossy(&script));
    0
}

/// `stencilcheck.1` on stdout, or with `--out-dir` one page per command
/// (`stencilcheck.1`, `stencilcheck-verify.1`, ...) as man(1) expects them.
fn manpage(out_dir: Option<&std::path::Path>, out: &mut String) -> Result<u8, BadInput> {
    let command = <Cli as clap::CommandFactory>::command();
    let Some(dir) = out_dir else {
        let mut page = Vec::new();
        clap_mangen::Man::new(command).render(&mut page).expect("writes to memory");
        out.push_str(&String::from_utf8_lossy(&page));
        return Ok(0);
    };
    std::fs::create_dir_all(dir).map_err(|e| BadInput::in_file(dir.display(), format!("cannot create: {e}")))?;
    clap_mangen::generate_to(command, dir)
        .map_err(|e| BadInput::in_file(dir.display(), format!("cannot write: {e}")))?;
    Ok(0)
}
/// Runs a command line in this process (what the tests use, so they do not
/// depend on a binary another build may have replaced): exit code, stdout,
/// stderr.
pub fn run<I, T>(args: I) -> (u8, String, String)
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => return (e.exit_code() as u8, String::new(), e.to_string()),
    };
    let mut out = String::new();
    match dispatch(cli.command, &mut out) {
        Ok(code) => (code, out, String::new()),
        Err(e) => (e.kind.exit_code(), out, format!("stencilcheck: error: {e}\n")),
    }
}

fn diff(args: &DiffArgs, out: &mut String) -> Result<u8, BadInput> {
    let header = load::load_path(&args.header)?;
    let objects = load::load_path(&args.objects)?;
    let diffs = crate::diff::diff(&header, &objects);
    out.push_str(&crate::diff::render(&header, &objects, &diffs));
    Ok(if diffs.is_empty() { 0 } else { 1 })
}

fn verify(args: &VerifyArgs, out: &mut String) -> Result<u8, BadInput> {
    let shown = args.input.as_ref().map_or("(embedded corpus)".to_string(), |p| p.display().to_string());
    if args.placements == 0 && args.placement.is_none() {
        // A gate that runs nothing must not pass.
        return Err(BadInput::in_file(&shown, "--placements 0 would check nothing"));
    }
    if let Some(inputs) = args.input.as_deref().and_then(build_inputs) {
        let root = args.input.as_deref().unwrap_or(std::path::Path::new(""));
        let runs: Vec<(String, VerifyArgs)> = inputs
            .iter()
            .map(|i| {
                let shown = i.strip_prefix(root).unwrap_or(i).display().to_string();
                (shown, VerifyArgs { input: Some(i.clone()), ..args.clone() })
            })
            .collect();
        return verify_build(args, &runs, &format!("{}/", root.display()), out);
    }
    if args.input.is_none() && args.corpus.is_none() {
        // The embedded corpus: every triple it was built for.
        let runs: Vec<(String, VerifyArgs)> = crate::corpus::TRIPLES
            .iter()
            .map(|(t, _)| (format!("corpus/{t}"), VerifyArgs { corpus: Some(t.to_string()), ..args.clone() }))
            .collect();
        return verify_build(args, &runs, "", out);
    }
    verify_one(args, out).map(|(code, _)| code)
}

/// One verified input, for the summary of a whole build.
struct Verified {
    stencils: usize,
    findings: usize,
    inconclusive: u64,
    holes: (usize, usize),
    runs: u64,
    seconds: f64,
    target: String,
}

/// `DIR/<triple>/jit_stencils.h` and `DIR/<triple>/objs` for every triple
/// directory of `dir` that has either: a whole build (what
/// `scripts/cpython-stencils.sh` makes). `None` when `dir` is not one (a
/// directory of objects, say).
fn build_inputs(dir: &std::path::Path) -> Option<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut triples: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect();
    triples.sort();
    let inputs: Vec<PathBuf> =
        triples.iter().flat_map(|t| [t.join("jit_stencils.h"), t.join("objs")]).filter(|p| p.exists()).collect();
    (!inputs.is_empty()).then_some(inputs)
}

/// Verify every input of a build, each report in turn, then one line per
/// input (target, stencils, findings, coverage, runs/s) and a total. The
/// exit status is the worst: a refused input does not stop the others.
fn verify_build(
    args: &VerifyArgs,
    runs: &[(String, VerifyArgs)],
    root: &str,
    out: &mut String,
) -> Result<u8, BadInput> {
    use std::fmt::Write;
    let mut worst = 0u8;
    let mut lines = Vec::new();
    let mut json = Vec::new();
    for (shown, one) in runs {
        let mut text = String::new();
        match verify_one(one, &mut text) {
            Ok((code, v)) => {
                worst = worst.max(code);
                let coverage = 100.0 * v.holes.0 as f64 / v.holes.1.max(1) as f64;
                lines.push(format!(
                    "{:<40} {:<28} {:>4} stencils {:>5} findings {:>6} inconclusive  coverage {:>5.1}%  {:>6.0} runs/s",
                    shown,
                    v.target,
                    v.stencils,
                    v.findings,
                    v.inconclusive,
                    coverage,
                    v.runs as f64 / v.seconds.max(1e-9)
                ));
            }
            Err(e) => {
                let code = e.kind.exit_code();
                worst = worst.max(code);
                // Paths in the message relative to the build directory, as in the line's head.
                let why = if root.is_empty() { e.to_string() } else { e.to_string().replace(root, "") };
                lines.push(format!("{shown:<40} refused (exit {code}): {why}"));
                text = format!("stencilcheck: error: {e}\n");
            }
        }
        match args.format {
            Format::Json => json.push(text),
            Format::Human => {
                out.push_str(&text);
                out.push('\n');
            }
        }
    }
    if args.format == Format::Json {
        let reports: Vec<&str> = json.iter().map(|t| t.trim()).filter(|t| t.starts_with('{')).collect();
        let _ = writeln!(out, "[{}]", reports.join(","));
        return Ok(worst);
    }
    let _ = writeln!(out, "== build summary ({} inputs)", runs.len());
    for line in &lines {
        let _ = writeln!(out, "{line}");
    }
    let verdict = match worst {
        0 => "all correct",
        1 => "findings",
        _ => "some inputs refused",
    };
    let _ = writeln!(out, "total: {} inputs, exit {worst} ({verdict})", runs.len());
    Ok(worst)
}

fn verify_one(args: &VerifyArgs, out: &mut String) -> Result<(u8, Verified), BadInput> {
    let shown = args.input.as_ref().map_or("(embedded corpus)".to_string(), |p| p.display().to_string());
    let set = match &args.input {
        Some(input) => load::load_path(input)?,
        None => crate::corpus::load_triple(args.corpus.as_deref().unwrap_or(crate::corpus::TRIPLE))?,
    };
    if set.stencils.is_empty() {
        return Err(BadInput::in_file(&shown, "no stencils to verify"));
    }
    if args.cross_check_objdump {
        let checked = crate::load::crosscheck::check(&set)?;
        eprintln!("cross-check: {checked}");
    }
    let native = match &args.jit_c {
        Some(path) => {
            let native = patch::native::NativePatcher::from_path(path)?;
            native.check_set(&set, path)?;
            Some(native)
        }
        None => None,
    };
    let patcher: &(dyn patch::Patcher + Sync) = match &native {
        Some(n) => n,
        None => &patch::Ports,
    };
    let threads = args.threads.unwrap_or_else(default_threads);
    let options = pipeline::Options {
        seed: args.seed,
        placements: args.placements,
        stencils: args.stencils.clone(),
        placement: args.placement,
        instruction_limit: args.instruction_limit,
        threads,
        strict: args.strict,
        explore: args.explore,
        patcher,
        engine: args.engine.into(),
    };
    let started = Instant::now();
    let progress = Progress::new(&shown, args.progress_mode());
    let outcome = pipeline::verify_with_progress(&set, &options, &|p| progress.tell(&p))?;
    progress.finish();
    let elapsed = started.elapsed();
    if let Some(stats) = &outcome.native {
        eprintln!("native engine: {}", stats.summary());
    }
    let replay = report::Replay { base: replay_base(args), seed: args.seed };
    let text = match args.format {
        Format::Json => report::json(&set, &outcome, args.placements, &replay),
        Format::Human => report::human(&set, &outcome, args.placements, &replay, elapsed, args.verbose),
    };
    out.push_str(&text);
    let s = report::summary(&outcome);
    let verified = Verified {
        stencils: s.stencils,
        findings: s.findings,
        inconclusive: s.inconclusive_runs,
        holes: (s.holes_covered, s.holes),
        runs: s.runs,
        seconds: elapsed.as_secs_f64(),
        target: set.target.to_string(),
    };
    Ok((if s.findings > 0 { 1 } else { 0 }, verified))
}

fn bench(args: &BenchArgs, out: &mut String) -> Result<u8, BadInput> {
    let options = crate::bench::BenchOptions {
        seed: args.seed,
        placements: args.placements,
        repeat: args.repeat,
        threads: args.threads.unwrap_or_else(default_threads),
    };
    if let Some(file) = &args.export_runs {
        let runs = crate::bench::export_runs(&args.inputs[0], &options, &patch::Ports, file)?;
        out.push_str(&format!("{runs} runs written to {}\n", file.display()));
        return Ok(0);
    }
    out.push_str(&crate::bench::bench(&args.inputs, &options, &patch::Ports)?);
    if let Some(script) = &args.baseline {
        out.push_str(&crate::bench::against_baseline(&args.inputs[0], &options, &patch::Ports, script)?);
    }
    Ok(0)
}

fn diff_patch(args: &DiffPatchArgs, out: &mut String) -> Result<u8, BadInput> {
    let native = patch::native::NativePatcher::from_path(&args.jit_c)?;
    let summary = crate::diffpatch::run(&native, args.seed, args.cases);
    out.push_str(&crate::diffpatch::report(&summary, patch::Patcher::name(&native), args.show));
    let mut differ = !summary.differences.is_empty();
    if let Some(header) = &args.header {
        let set = load::load_path(header)?;
        native.check_set(&set, &args.jit_c)?;
        let emits = crate::diffpatch::compare_emits(&set, &native, args.seed, args.placements);
        for d in emits.differences.iter().take(args.show) {
            out.push_str(d);
            out.push_str("\n\n");
        }
        if emits.differences.len() > args.show {
            out.push_str(&format!("... {} more stencil run(s) differ\n", emits.differences.len() - args.show));
        }
        out.push_str(&format!(
            "diff-patch: {}: {} stencil runs replayed with both, {} skipped (placement unusable), {}\n",
            header.display(),
            emits.runs,
            emits.skipped,
            if emits.differences.is_empty() {
                "no differences".to_string()
            } else {
                format!("{} differ", emits.differences.len())
            }
        ));
        differ |= !emits.differences.is_empty();
    }
    Ok(if differ { 1 } else { 0 })
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl VerifyArgs {
    fn progress_mode(&self) -> ProgressMode {
        use std::io::IsTerminal;
        let terminal = std::io::stderr().is_terminal();
        match (self.quiet, self.progress, terminal) {
            (true, _, _) | (false, false, false) => ProgressMode::Off,
            (false, _, true) => ProgressMode::InPlace,
            (false, true, false) => ProgressMode::Lines,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ProgressMode {
    Off,
    /// One line rewritten with `\r` (a terminal).
    InPlace,
    /// A line at every 10% (a CI log).
    Lines,
}

/// Progress of one input's verification on stderr.
struct Progress<'a> {
    input: &'a str,
    mode: ProgressMode,
    findings: std::sync::atomic::AtomicUsize,
    printed: std::sync::Mutex<usize>,
}

impl<'a> Progress<'a> {
    fn new(input: &'a str, mode: ProgressMode) -> Progress<'a> {
        Progress { input, mode, findings: Default::default(), printed: std::sync::Mutex::new(0) }
    }

    fn tell(&self, p: &pipeline::Progress) {
        use std::sync::atomic::Ordering;
        let found = p.result.as_ref().map_or(0, |r| r.findings.len());
        let findings = self.findings.fetch_add(found, Ordering::Relaxed) + found;
        let line = format!("{}: {}/{} stencils, {findings} findings so far", self.input, p.done, p.total);
        let mut printed = self.printed.lock().unwrap();
        match self.mode {
            ProgressMode::Off => {}
            ProgressMode::InPlace => eprint!("\r{line}"),
            ProgressMode::Lines => {
                // Every tenth of the way (and the end), once each.
                let tenth = p.done * 10 / p.total.max(1);
                if tenth > *printed || p.done == p.total {
                    *printed = tenth.max(*printed + usize::from(p.done == p.total));
                    eprintln!("{line}");
                }
            }
        }
    }

    fn finish(&self) {
        if self.mode == ProgressMode::InPlace {
            eprintln!();
        }
    }
}

/// Steered runs per stencil by default ([`VerifyArgs::explore`]).
pub const DEFAULT_EXPLORE: u32 = 64;

/// The replay command names every option that changes what a run does.
fn replay_base(args: &VerifyArgs) -> String {
    let mut base = match &args.input {
        Some(input) => format!("stencilcheck verify {}", shell_word(&input.display().to_string())),
        None => format!("stencilcheck verify --corpus {}", args.corpus.as_deref().unwrap_or(crate::corpus::TRIPLE)),
    };
    if args.instruction_limit != crate::execute::DEFAULT_INSTRUCTION_LIMIT {
        base.push_str(&format!(" --instruction-limit {}", args.instruction_limit));
    }
    if args.strict {
        base.push_str(" --strict");
    }
    if args.explore != DEFAULT_EXPLORE {
        base.push_str(&format!(" --explore {}", args.explore));
    }
    if let Some(jit_c) = &args.jit_c {
        base.push_str(&format!(" --jit-c {}", shell_word(&jit_c.display().to_string())));
    }
    base
}

fn shell_word(s: &str) -> String {
    if s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+=:,".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}
