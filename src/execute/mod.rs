//! Execute: run a patched stencil image and record what its relocation sites
//! did, where it called, and how it left. Nothing here decides right or wrong;
//! that is the judge's job, from the observations recorded here.
//!
//! Two kinds of observation come out of this stage:
//! - *static*: every relocation site decoded on the patched image, without
//!   running, for the sites whose operand does not depend on registers;
//! - *dynamic*: a run in an emulator, with a fake frame, stack and thread
//!   state, externs stubbed out and memory made up on demand from a seed.
//!
//! `unicorn.rs` is the run loop every machine shares; `x86_64.rs` (decoded
//! with iced-x86) and `aarch64/` (our own A64 decoder) say what is theirs:
//! registers, how calls return, how an exit is classified, what a site does.

pub mod aarch64;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub mod native;
pub mod unicorn;
pub mod x86_64;

use crate::model::{Effect, Stencil};
use crate::place::{splitmix, Placement, PAGE};
use serde::Serialize;

/// Fake objects all live in the first MiB of the heap: object graphs stay
/// within a few mapped chunks.
pub use crate::place::HEAP_OBJECTS;

/// Default instruction budget of one run. Generous: loops bounded by oparg
/// (≤ 65535 iterations) stay well under it.
pub const DEFAULT_INSTRUCTION_LIMIT: u64 = 200_000;
/// Where a `ret` to the trace's caller goes: in the first 64 KiB, never
/// executable, distinct from every placed address.
pub const RETURN_SENTINEL: u64 = 0xdea0;
/// Made-up pages one run may map. Correct stencils touch a handful; runs
/// that walk made-up pointers further are inconclusive, and bounding them
/// keeps every run cheap (each mapping costs more than the last).
pub const DEMAND_PAGE_LIMIT: usize = 64;
/// Wall-clock backstop for one run.
pub const RUN_TIME_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Every address below this is the NULL page: Linux never maps it
/// (`vm.mmap_min_addr`), so no code is there. Loads and stores there are
/// made up like any other memory when the address came from made-up
/// contents (made-up integers are small and zero often, and stencils
/// dereference them on paths a real type check would have excluded:
/// refusing them all made 46% of the 3.13.5 x86-64 runs inconclusive);
/// when no made-up value produced the address, the access is a finding
/// ([`Fault::NullConstant`], see [`unicorn::AddressSource`]).
pub const NULL_PAGE_END: u64 = 0x1_0000;
/// Calls a run may make before we call it a runaway.
pub const CALL_LIMIT: usize = 4096;

/// What one relocation site did with its relocated field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SiteObservation {
    /// Index into `stencil.relocations`.
    pub relocation: usize,
    /// Address and length of the instruction (after patching) that holds the field.
    pub pc: u64,
    pub len: u32,
    /// `None`: the field is not a displacement, branch or immediate of the
    /// instruction now there (the bytes were patched into something else).
    pub effect: Option<Effect>,
}

/// A call the stencil made (to an extern or through a pointer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CallRecord {
    pub from: u64,
    pub target: u64,
    /// Stack pointer at the callee's first instruction.
    pub sp: u64,
    pub returned: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitKind {
    /// A jump (direct, indirect or conditional) out of the code.
    Jump,
    /// A `ret`.
    Return,
    /// Execution ran off the end of the code.
    FallThrough,
    /// A call was the last instruction (a noreturn callee, `Py_FatalError`):
    /// only our stub returned, to just past the code.
    AfterNoReturnCall,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "end")]
pub enum RunEnd {
    /// Control left the code: `from` is the last instruction executed in it,
    /// `sp` the stack pointer just before the transfer (before `ret` pops).
    /// `computed`: the target came from a register or from memory that no
    /// relocation fills (`jmp *%rax`), so it is run-time data, not a hole.
    Exit { kind: ExitKind, from: u64, target: u64, sp: u64, computed: bool },
    /// The emulated code faulted.
    Fault { fault: Fault, pc: u64, address: u64 },
    /// The instruction budget ran out (a hang, or a loop over made-up memory).
    InstructionLimit { limit: u64, pc: u64 },
    /// More than [`CALL_LIMIT`] calls.
    CallLimit { pc: u64 },
    /// The run outlived [`RUN_TIME_LIMIT`].
    TimeLimit { pc: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    WriteIntoCode,
    WriteIntoData,
    /// Access to an address that cannot be mapped (non-canonical), or a
    /// write to the padding beside the image (a made-up pointer strayed).
    Unmappable,
    /// The run wanted more made-up memory than one run may have.
    MemoryBudget,
    /// A load or store in the NULL page through an address no made-up
    /// value produced (`mov (0), %rax`; `xor %eax,%eax; mov 8(%rax),%rcx`):
    /// it faults whatever the stencil's inputs.
    NullConstant,
    InvalidInstruction,
    /// An instruction no stencil may execute: privileged, a system call,
    /// `hlt`, a software interrupt or breakpoint (named by the judge).
    Forbidden,
    /// Valid machine code the emulator cannot run (AVX, AVX-512 in
    /// Unicorn): not the stencil's bug, the run says nothing.
    Unsupported,
    /// A load or store inside a function extern's first bytes: its code
    /// used as data (a function's address where a data address belongs).
    FunctionAsData,
    /// Code about to write a register the platform reserves (x18 on Darwin
    /// and Windows on Arm): the instruction is named by the judge.
    ReservedRegister,
    /// Any other emulator error (named in `detail` of the finding).
    Other,
}

/// Everything one run observed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Trace {
    pub sites: Vec<SiteObservation>,
    pub calls: Vec<CallRecord>,
    pub end: Option<RunEnd>,
    pub instructions: u64,
    /// Stack pointer at entry (address of the return-address slot).
    pub entry_sp: u64,
    /// Address the run was entered at.
    pub entry: u64,
    /// True when entered as a function (the trampoline/shim), so `ret` is its exit.
    pub entered_by_call: bool,
    /// Steered runs: which way each conditional branch went, as (branch
    /// offset, offset run next; `unicorn::LEFT_THE_CODE` when it jumped out
    /// of the code), each pair once, in the order first seen.
    #[serde(skip)]
    pub branches: Vec<(u32, u32)>,
}

/// The registers holding frame, stack_pointer and tstate on entry to a uop.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Convention {
    pub frame: &'static str,
    pub stack_pointer: &'static str,
    pub tstate: &'static str,
    /// Where it came from: "trampoline" (read off it) or "default".
    pub source: &'static str,
    /// The platform's C convention: how the trampoline is called, what a
    /// stubbed C callee may clobber.
    #[serde(skip)]
    pub c_abi: CAbi,
}

/// A platform's C calling convention, as far as a run needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CAbi {
    /// The first three integer argument registers (frame, stack_pointer,
    /// tstate when the trampoline is called).
    pub args: [&'static str; 3],
    /// Registers a callee may leave anything in, besides the return value.
    pub caller_saved: &'static [&'static str],
    /// Registers the platform keeps for itself: code must never write them.
    pub reserved: &'static [&'static str],
}

/// System V x86-64 (Linux, macOS).
pub const SYSV_X86_64: CAbi = CAbi {
    args: ["rdi", "rsi", "rdx"],
    caller_saved: &["rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11"],
    reserved: &[],
};
/// Windows x64: rsi and rdi are callee-saved there.
pub const WIN64: CAbi =
    CAbi { args: ["rcx", "rdx", "r8"], caller_saved: &["rcx", "rdx", "r8", "r9", "r10", "r11"], reserved: &[] };
/// i686 cdecl (Windows): arguments on the stack (`args` name the registers
/// the convention's values would be read from, unused), eax returns, ecx
/// and edx are the callee's to clobber.
pub const CDECL_I686: CAbi = CAbi { args: ["eax", "ecx", "edx"], caller_saved: &["ecx", "edx"], reserved: &[] };
/// AAPCS64 on Linux (x18 is an ordinary temporary there; a stub leaves it
/// alone everywhere).
pub const AAPCS64: CAbi = CAbi {
    args: ["x0", "x1", "x2"],
    caller_saved: &[
        "x1", "x2", "x3", "x4", "x5", "x6", "x7", "x8", "x9", "x10", "x11", "x12", "x13", "x14", "x15", "x16", "x17",
    ],
    reserved: &[],
};
/// AAPCS64 on Darwin and Windows: x18 is the platform register (Darwin
/// reserves it; Windows keeps the TEB there), which code must never write.
pub const AAPCS64_X18_RESERVED: CAbi = CAbi { reserved: &["x18"], ..AAPCS64 };

/// How a stencil is entered.
pub fn entered_by_call(stencil: &Stencil) -> bool {
    matches!(stencil.name.as_str(), "trampoline" | "shim")
}

/// An engine runs one placed, patched stencil at a time.
pub trait Engine {
    fn run(&mut self, stencil: &Stencil, placement: &Placement, image: &crate::patch::Image) -> Trace;

    /// A run that records which way every conditional branch went
    /// ([`Trace::branches`]) and sends the branches `steering` names the way
    /// it says. `None`: this engine cannot steer (no exploration).
    fn run_steered(
        &mut self,
        _stencil: &Stencil,
        _placement: &Placement,
        _image: &crate::patch::Image,
        _steering: &Steering,
    ) -> Option<Trace> {
        None
    }

    /// The code's control flow, instruction by instruction from offset 0,
    /// for exploration. `None`: this engine cannot steer.
    fn flows(&self, _image: &crate::patch::Image) -> Option<Vec<Flow>> {
        None
    }

    /// The native engine's counts of runs and of those Unicorn made
    /// instead; `None` for an engine that has no fast path.
    fn native_stats(&self) -> Option<NativeStats> {
        None
    }
}

/// How control goes on after one instruction of the code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// Code offset of the instruction and its length.
    pub offset: u32,
    pub len: u32,
    /// The next instruction runs after it (also after a call: the stub returns).
    pub falls_through: bool,
    /// A direct branch's (or call's) target address.
    pub target: Option<u64>,
    /// A two-way branch with no other effect (`jcc`, `b.cond`, `cbz`,
    /// `tbz`): exploration may send it either way.
    pub steerable: bool,
}

/// Which way exploration sends conditional branches: (code offset of the
/// branch, code offset it continues at), for every time it runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Steering {
    pub force: Vec<(u32, u32)>,
}

/// Which engine runs the stencils.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EngineKind {
    /// Unicorn (QEMU's TCG): every target, every host.
    #[default]
    Unicorn,
    /// The host CPU (x86-64 stencils on an x86-64 Linux host), Unicorn's
    /// verdicts by construction (see `native`).
    Native,
}

/// How many runs the native engine made, and how many it handed to
/// Unicorn (by reason: what the native run could not reproduce exactly).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NativeStats {
    pub runs: u64,
    pub refused: std::collections::BTreeMap<&'static str, u64>,
    /// Worker processes started (the first, and one after each death).
    pub workers: u64,
}

impl NativeStats {
    pub fn fallbacks(&self) -> u64 {
        self.refused.values().sum()
    }

    pub fn add(&mut self, other: &NativeStats) {
        self.runs += other.runs;
        self.workers += other.workers;
        for (k, v) in &other.refused {
            *self.refused.entry(k).or_default() += v;
        }
    }

    /// `1234 runs, 56 on Unicorn (4.5%: 30 null page, 26 memory)`.
    pub fn summary(&self) -> String {
        let share = 100.0 * self.fallbacks() as f64 / self.runs.max(1) as f64;
        let reasons: Vec<String> = self.refused.iter().map(|(k, v)| format!("{v} {k}")).collect();
        let why = if reasons.is_empty() { String::new() } else { format!(": {}", reasons.join(", ")) };
        format!("{} runs, {} on Unicorn ({share:.1}%{why})", self.runs, self.fallbacks())
    }
}

/// Made-up memory: what a stencil finds when it reads somewhere we never
/// wrote. Every 8-byte word is a function of (seed, address) alone, so the
/// same placement reads the same bytes in whatever order it reads them.
///
/// The mix matters for coverage: pointers into the fake heap (so objects
/// have objects inside), small integers and zero (refcounts, sizes, NULL),
/// immortal-looking refcounts, and the stencil's own symbol values (so type
/// checks like `Py_TYPE(o) == &PyLong_Type` sometimes succeed).
pub struct Contents<'a> {
    pub seed: u64,
    pub heap: u64,
    pub heap_size: u64,
    /// Addresses of the stencil's externs (never its own targets: those sit
    /// next to its code, and a made-up object there would be written to).
    pub interesting: &'a [u64],
}

impl Contents<'_> {
    pub fn word(&self, addr: u64) -> u64 {
        let h = splitmix(self.seed ^ addr.wrapping_mul(0x9e37_79b9));
        let pick = h % 100;
        let r = h >> 8;
        match pick {
            0..=39 => self.heap + (r % HEAP_OBJECTS) / 16 * 16,
            40..=69 => r % 8,
            70..=79 => 0,
            80..=89 if !self.interesting.is_empty() => self.interesting[(r as usize) % self.interesting.len()],
            // An immortal-looking refcount (negative as int32).
            90..=94 => 0xffff_ffff,
            _ => r % 0x7fff_ffff_0000,
        }
    }

    /// A whole page of made-up contents.
    pub fn page(&self, page: u64) -> Vec<u8> {
        let mut out = vec![0; PAGE as usize];
        self.fill(page, &mut out);
        out
    }

    /// Made-up contents of the memory at `start` into `out` (whole words).
    pub fn fill(&self, start: u64, out: &mut [u8]) {
        for (i, word) in out.chunks_exact_mut(8).enumerate() {
            word.copy_from_slice(&self.word(start + i as u64 * 8).to_le_bytes());
        }
    }

    /// What the `n`th stub call returns: NULL often (to reach error exits),
    /// otherwise an object, a small int, or a symbol's value.
    pub fn return_value(&self, n: usize) -> u64 {
        let h = splitmix(self.seed ^ 0x5eed_0000 ^ n as u64);
        match h % 10 {
            0..=2 => 0,
            3..=6 => self.heap + ((h >> 8) % HEAP_OBJECTS) / 16 * 16,
            7 => [1, 0, 2][(h >> 8) as usize % 3],
            _ if !self.interesting.is_empty() => self.interesting[(h >> 8) as usize % self.interesting.len()],
            _ => 1,
        }
    }
}

/// What kind of control transfer an instruction is: relaxation may rewrite
/// an instruction, but a call must stay a call and a jump a jump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferClass {
    Call,
    Jump,
    Other,
}
