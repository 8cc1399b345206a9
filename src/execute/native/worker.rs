//! The worker process: runs one placed, patched stencil at a time natively,
//! at its placed addresses, and answers with what Unicorn's run loop would
//! have recorded.
//!
//! The worker is a fork of the verifier (single-threaded from then on). It
//! never prints and never touches the parent's stdio: a panic ends it with
//! `_exit`, and the engine starts a fresh one. Everything a run does to the
//! worker happens in one signal handler on an alternate stack:
//! - `SIGTRAP` at a planted `int3` ([`super::plan`]): observe a site,
//!   emulate a control transfer (stubbing calls as Unicorn's engine does),
//!   or give up; after a single step (trap flag), plant it again;
//! - `SIGSEGV`: memory nobody mapped is made up as Unicorn's `on_unmapped`
//!   does, a logical region (Unicorn's chunks and budget) at a time, a
//!   physical page at a time;
//! - anything else (`SIGILL`, `SIGFPE`, `SIGBUS`, `SIGSYS` from the seccomp
//!   filter) ends the run natively: Unicorn runs that placement instead.
//!
//! A run is entered through `stencilcheck_native_enter` (every register
//! set, SSE and x87 state as a fresh Unicorn has it) and left by pointing
//! the signal's saved context at `stencilcheck_native_landing`, which
//! returns from the enter call.

use super::plan::{self, REFUSE, REPLANT, SITE, START, STEP, TRANSFER};
use super::protocol::{Answer, Refusal, Request};
use crate::execute::unicorn::{AddressSource, Transfer, FUNCTION_BYTES, SITE_OBSERVATION_CAP};
use crate::execute::x86_64::{classify_exit, null_access_source, observe_site, CALLER_SAVED_BITS};
use crate::execute::{
    CallRecord, Contents, ExitKind, Fault, RunEnd, SiteObservation, CALL_LIMIT, DEMAND_PAGE_LIMIT, NULL_PAGE_END,
    RETURN_SENTINEL,
};
use crate::model::Effect;
use crate::place::{splitmix, PAGE};
use crate::target::x86_64::USER_SPACE;
use iced_x86::{FlowControl, InstructionInfoFactory, OpAccess, OpKind, Register};
use libc::{c_int, c_void, siginfo_t, ucontext_t};
use std::io::{Read, Write};

const MAP_FIXED_NOREPLACE: c_int = 0x10_0000;
const SEGV_ACCERR: c_int = 2;
const SI_KERNEL: c_int = 0x80;
/// Page-fault error code bit (`REG_ERR`): an instruction fetch.
const PF_FETCH: i64 = 1 << 4;
const TRAP_FLAG: i64 = 1 << 8;
/// Unicorn (no paging: linear is physical) drops an address's top 12 bits.
const UNICORN_ADDRESS_MASK: u64 = (1 << 52) - 1;
const INT3: u8 = 0xcc;
/// Trails a NULL-page decision may explore, and how far back: beyond
/// that, Unicorn decides (a run costs about as much as a few hundred).
const NULL_TRAIL_EVALUATIONS: u32 = 256;
const NULL_TRAIL_DEPTH: usize = 96;
/// Bytes of the alternate signal stack (decoding runs there).
const SIGNAL_STACK: usize = 1 << 20;

/// `ucontext` greg index of each general register, in the order of
/// [`Request::registers`] (rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp, r8..r15).
const GREG: [c_int; 16] = [
    libc::REG_RAX,
    libc::REG_RBX,
    libc::REG_RCX,
    libc::REG_RDX,
    libc::REG_RSI,
    libc::REG_RDI,
    libc::REG_RBP,
    libc::REG_RSP,
    libc::REG_R8,
    libc::REG_R9,
    libc::REG_R10,
    libc::REG_R11,
    libc::REG_R12,
    libc::REG_R13,
    libc::REG_R14,
    libc::REG_R15,
];
const RAX: usize = 0;
const RSP: usize = 7;

// The switch between the worker and a stencil. `enter` keeps the worker's
// callee-saved registers on its own stack, remembers that stack, sets the
// SSE and x87 state a fresh Unicorn has (zeroed registers, default control
// words), the flags (0x202) and all sixteen registers from `regs`, and
// jumps to the code. `landing` is where the signal handler sends control
// when the run is over: it restores the worker's state and returns from
// `enter`.
std::arch::global_asm!(
    ".globl stencilcheck_native_enter",
    "stencilcheck_native_enter:",
    "push rbx",
    "push rbp",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "mov [rip + {worker_sp}], rsp",
    "fninit",
    "ldmxcsr [rip + {mxcsr}]",
    "pxor xmm0, xmm0",
    "pxor xmm1, xmm1",
    "pxor xmm2, xmm2",
    "pxor xmm3, xmm3",
    "pxor xmm4, xmm4",
    "pxor xmm5, xmm5",
    "pxor xmm6, xmm6",
    "pxor xmm7, xmm7",
    "pxor xmm8, xmm8",
    "pxor xmm9, xmm9",
    "pxor xmm10, xmm10",
    "pxor xmm11, xmm11",
    "pxor xmm12, xmm12",
    "pxor xmm13, xmm13",
    "pxor xmm14, xmm14",
    "pxor xmm15, xmm15",
    "push 0x202",
    "popfq",
    "mov rax, [rdi]",
    "mov rbx, [rdi + 8]",
    "mov rcx, [rdi + 16]",
    "mov rdx, [rdi + 24]",
    "mov rsi, [rdi + 32]",
    "mov rbp, [rdi + 48]",
    "mov rsp, [rdi + 56]",
    "mov r8, [rdi + 64]",
    "mov r9, [rdi + 72]",
    "mov r10, [rdi + 80]",
    "mov r11, [rdi + 88]",
    "mov r12, [rdi + 96]",
    "mov r13, [rdi + 104]",
    "mov r14, [rdi + 112]",
    "mov r15, [rdi + 120]",
    "mov rdi, [rdi + 40]",
    "jmp qword ptr [rip + {entry}]",
    ".globl stencilcheck_native_landing",
    "stencilcheck_native_landing:",
    "mov rsp, [rip + {worker_sp}]",
    "fninit",
    "ldmxcsr [rip + {mxcsr}]",
    "cld",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbp",
    "pop rbx",
    "ret",
    worker_sp = sym WORKER_SP,
    entry = sym ENTRY,
    mxcsr = sym MXCSR,
);

extern "C" {
    fn stencilcheck_native_enter(regs: *const u64);
    fn stencilcheck_native_landing();
}

/// The worker's stack pointer while a stencil runs (written by `enter`).
static mut WORKER_SP: u64 = 0;
/// Where `enter` jumps.
static mut ENTRY: u64 = 0;
/// MXCSR as every run starts (and the worker continues): all exceptions masked.
static MXCSR: u32 = 0x1f80;
/// The run in progress, for the signal handler (the worker is single-threaded).
static mut CURRENT: *mut Run = std::ptr::null_mut();

/// The worker's loop: read a request, run it, answer; leave on end of input.
pub fn serve(input: c_int, output: c_int) -> ! {
    // SAFETY: only this process's own descriptors, handed over by the fork.
    let (mut input, mut output) = unsafe {
        use std::os::fd::FromRawFd;
        (std::fs::File::from_raw_fd(input), std::fs::File::from_raw_fd(output))
    };
    if install_handlers().is_err() || super::seccomp::install().is_err() {
        exit(2);
    }
    loop {
        let mut len = [0u8; 4];
        if input.read_exact(&mut len).is_err() {
            exit(0);
        }
        let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
        if input.read_exact(&mut body).is_err() {
            exit(0);
        }
        let answer = match Request::decode(&body) {
            Some(request) => run(request),
            None => exit(3),
        };
        let bytes = answer.encode();
        let mut message = (bytes.len() as u32).to_le_bytes().to_vec();
        message.extend_from_slice(&bytes);
        if output.write_all(&message).is_err() {
            exit(0);
        }
    }
}

fn exit(code: c_int) -> ! {
    // SAFETY: ends this process at once, running nothing of the parent's.
    unsafe { libc::_exit(code) }
}

/// The alternate stack and the handler for every signal a stencil may raise.
fn install_handlers() -> Result<(), ()> {
    // SAFETY: a fresh anonymous mapping becomes the signal stack; the
    // handler is installed for signals this process only gets from the
    // code it runs.
    unsafe {
        let stack = libc::mmap(
            std::ptr::null_mut(),
            SIGNAL_STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if stack == libc::MAP_FAILED {
            return Err(());
        }
        let ss = libc::stack_t { ss_sp: stack, ss_flags: 0, ss_size: SIGNAL_STACK };
        if libc::sigaltstack(&ss, std::ptr::null_mut()) != 0 {
            return Err(());
        }
        let signals = [libc::SIGSEGV, libc::SIGBUS, libc::SIGTRAP, libc::SIGILL, libc::SIGFPE, libc::SIGSYS];
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut action.sa_mask);
        let mut unblock: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut unblock);
        for s in signals {
            libc::sigaddset(&mut action.sa_mask, s);
            libc::sigaddset(&mut unblock, s);
        }
        for s in signals {
            if libc::sigaction(s, &action, std::ptr::null_mut()) != 0 {
                return Err(());
            }
        }
        libc::sigprocmask(libc::SIG_UNBLOCK, &unblock, std::ptr::null_mut());
    }
    std::panic::set_hook(Box::new(|_| exit(101)));
    Ok(())
}

/// How the handler leaves the stencil.
enum Stop {
    /// The run is over, as Unicorn would have ended it.
    End(RunEnd),
    /// Unicorn must run this placement.
    Refuse(Refusal),
}

type Step = Result<(), Stop>;

/// Why an instruction is being single-stepped (the trap flag is set).
#[derive(Clone, Copy, Default)]
struct Stepping {
    /// A planted instruction restored to run once: its code offset (planted
    /// again after it ran, when it must be seen again).
    restored: Option<usize>,
    /// Register, original value and whether the instruction writes it: its
    /// memory operand was moved to the truncated address Unicorn accesses
    /// (see [`Run::rebase`]); the register gets its value back after.
    rebased: Option<(usize, u64, bool)>,
}

/// One run's state, shared by the worker and its signal handler.
struct Run {
    request: Request,
    code: std::ops::Range<u64>,
    /// Offset of the code's last instruction.
    last: usize,
    /// The byte after the code is a trap of the image's own padding.
    guard_after: bool,
    /// (relocation, field address), as Unicorn's `RunState::fields`.
    fields: Vec<(usize, u64)>,
    /// Image page ranges, as mapped (read+execute).
    image: Vec<(u64, u64)>,
    /// Made-up regions as Unicorn maps them (start, length): they count
    /// against [`DEMAND_PAGE_LIMIT`] and decide what a chunk may cover.
    demand: Vec<(u64, u64)>,
    /// Pages of `demand` mapped natively so far (each on first touch).
    pages: Vec<u64>,
    budget_hit: bool,
    per_site: Vec<u16>,
    sites: Vec<SiteObservation>,
    calls: Vec<CallRecord>,
    /// Instructions run at most, so far (see [`Run::count_segment`]).
    spent: u64,
    /// Signals taken so far.
    stops: u64,
    /// Code offset where native execution last resumed.
    resumed: usize,
    /// Longest forward paths from a resume point (see [`Run::longest_from`]).
    paths: Vec<(usize, Vec<u32>)>,
    /// An instruction being single-stepped.
    stepping: Option<Stepping>,
    end: Option<Stop>,
    /// (from, to) of the code's direct branches inside it, once needed.
    branches: Option<Vec<(usize, usize)>>,
}

fn run(request: Request) -> Answer {
    let mut run = match Run::new(request) {
        Ok(run) => run,
        Err(why) => return Answer::Refused(why),
    };
    let answer = run.go();
    run.unmap();
    answer
}

impl Run {
    fn new(request: Request) -> Result<Run, Refusal> {
        let (code_addr, code) = request.regions.first().map(|(a, b)| (*a, b.len() as u64)).ok_or(Refusal::Code)?;
        let code_range = code_addr..code_addr + code;
        let last = request.flags.iter().rposition(|f| f & START != 0).ok_or(Refusal::Code)?;
        let guard_after = !request.regions.iter().any(|(a, b)| (*a..*a + b.len() as u64).contains(&code_range.end));
        let fields = request.fields.iter().map(|(r, a)| (*r as usize, *a)).collect();
        let per_site = vec![0; request.relocations as usize];
        let mut run = Run {
            code: code_range,
            last,
            guard_after,
            fields,
            image: Vec::new(),
            demand: Vec::new(),
            pages: Vec::new(),
            budget_hit: false,
            per_site,
            sites: Vec::new(),
            calls: Vec::new(),
            spent: 0,
            stops: 0,
            resumed: 0,
            paths: Vec::new(),
            stepping: None,
            end: None,
            branches: None,
            request,
        };
        if let Err(why) = run.map_image() {
            run.unmap();
            return Err(why);
        }
        Ok(run)
    }

    /// Map the image's pages at their placed addresses (never over the
    /// worker's own), trap-filled, the regions written in, `int3` planted
    /// at every stop, then read+execute as Unicorn maps them.
    fn map_image(&mut self) -> Result<(), Refusal> {
        for &(start, end) in &self.request.pages.clone() {
            // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping.
            let p = unsafe { map_fixed(start, end - start, libc::PROT_READ | libc::PROT_WRITE) };
            if !p {
                return Err(Refusal::Collision);
            }
            self.image.push((start, end));
            // SAFETY: just mapped, writable, `end - start` bytes.
            unsafe { std::ptr::write_bytes(start as *mut u8, INT3, (end - start) as usize) };
        }
        for (addr, bytes) in &self.request.regions {
            // SAFETY: every region lies in the pages just mapped.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), *addr as *mut u8, bytes.len()) };
        }
        let stops = REFUSE | SITE | TRANSFER | STEP;
        for (offset, f) in self.request.flags.iter().enumerate() {
            if f & stops != 0 {
                // SAFETY: a code byte, in the pages just mapped.
                unsafe { *((self.code.start + offset as u64) as *mut u8) = INT3 };
            }
        }
        for &(start, end) in &self.image {
            // SAFETY: our own mapping.
            unsafe { libc::mprotect(start as *mut c_void, (end - start) as usize, libc::PROT_READ | libc::PROT_EXEC) };
        }
        Ok(())
    }

    fn unmap(&mut self) {
        for (start, end) in std::mem::take(&mut self.image) {
            // SAFETY: a mapping this run made.
            unsafe { libc::munmap(start as *mut c_void, (end - start) as usize) };
        }
        for page in std::mem::take(&mut self.pages) {
            // SAFETY: a page this run mapped.
            unsafe { libc::munmap(page as *mut c_void, PAGE as usize) };
        }
    }

    /// Enter the code and wait for the handler to end the run.
    fn go(&mut self) -> Answer {
        let regs = self.request.registers;
        let sp = regs[RSP];
        // Unicorn's `enter`: the return-address slot, made up, holds the sentinel.
        self.ensure_mapped(sp, 8);
        if self.logical(sp) {
            if let Err(Stop::Refuse(why)) = self.physical(sp & !(PAGE - 1)) {
                return Answer::Refused(why);
            }
            // SAFETY: the page is mapped read+write by this run.
            unsafe { (sp as *mut u64).write_unaligned(RETURN_SENTINEL) };
        }
        // SAFETY: the handler only runs while the stencil runs, and `self`
        // outlives the run; `enter` returns through `landing`.
        unsafe {
            ENTRY = self.code.start;
            CURRENT = self;
            stencilcheck_native_enter(regs.as_ptr());
            CURRENT = std::ptr::null_mut();
        }
        match self.end.take() {
            Some(Stop::End(end)) => {
                Answer::Ran { sites: std::mem::take(&mut self.sites), calls: std::mem::take(&mut self.calls), end }
            }
            Some(Stop::Refuse(why)) => Answer::Refused(why),
            None => Answer::Refused(Refusal::Control),
        }
    }

    fn contents(&self) -> Contents<'_> {
        Contents {
            seed: self.request.seed,
            heap: self.request.heap,
            heap_size: self.request.heap_size,
            interesting: &self.request.interesting,
        }
    }

    fn code_bytes(&self) -> &[u8] {
        &self.request.regions[0].1
    }

    fn flags(&self, offset: usize) -> u8 {
        self.request.flags.get(offset).copied().unwrap_or(0)
    }

    // ---- memory, as Unicorn sees it ----

    /// Is `addr` mapped in Unicorn's view (image pages or a made-up region)?
    fn logical(&self, addr: u64) -> bool {
        self.in_image(addr) || self.demand.iter().any(|(s, l)| (*s..*s + *l).contains(&addr))
    }

    fn in_image(&self, addr: u64) -> bool {
        self.image.iter().any(|(s, e)| (*s..*e).contains(&addr))
    }

    /// Natively map (on first touch) the made-up page at `page`.
    fn physical(&mut self, page: u64) -> Step {
        if self.in_image(page) || self.pages.contains(&page) {
            return Ok(());
        }
        // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping.
        if !unsafe { map_fixed(page, PAGE, libc::PROT_READ | libc::PROT_WRITE) } {
            return Err(Stop::Refuse(if page < NULL_PAGE_END { Refusal::NullPage } else { Refusal::Collision }));
        }
        self.pages.push(page);
        // SAFETY: the page was just mapped read+write, PAGE bytes.
        let bytes = unsafe { std::slice::from_raw_parts_mut(page as *mut u8, PAGE as usize) };
        self.contents().fill(page, bytes);
        Ok(())
    }

    fn touches_function(&self, addr: u64, len: usize) -> bool {
        let end = addr.saturating_add(len.max(1) as u64);
        self.request.functions.iter().any(|&f| addr < f.saturating_add(FUNCTION_BYTES) && f < end)
    }

    /// Unicorn's `map_demand_page`, in the logical view.
    fn map_demand_page(&mut self, page: u64) -> bool {
        if self.demand.len() >= DEMAND_PAGE_LIMIT {
            self.budget_hit = true;
            return false;
        }
        if page >= USER_SPACE.end {
            return false;
        }
        // A page at a time, as Unicorn maps it.
        if self.overlaps(page, PAGE) {
            return false;
        }
        self.demand.push((page, PAGE));
        true
    }

    fn overlaps(&self, start: u64, len: u64) -> bool {
        let end = start + len;
        self.image.iter().any(|(s, e)| start < *e && *s < end)
            || self.demand.iter().any(|(s, l)| start < s + l && *s < end)
    }

    /// Unicorn's `ensure_mapped` (site reads, the entry slot).
    fn ensure_mapped(&mut self, addr: u64, len: usize) {
        if self.touches_function(addr, len) {
            return;
        }
        let first = addr & !(PAGE - 1);
        let last = addr.saturating_add(len.max(1) as u64 - 1) & !(PAGE - 1);
        let mut page = first;
        loop {
            if !self.logical(page) {
                self.map_demand_page(page);
            }
            if page >= last {
                break;
            }
            page += PAGE;
        }
    }

    /// Read `len` bytes as Unicorn's `mem_read` would (the original code
    /// where the code is; `None` where Unicorn has nothing mapped).
    fn read(&mut self, addr: u64, len: usize) -> Result<Option<u64>, Stop> {
        let end = addr.checked_add(len as u64).ok_or(Stop::Refuse(Refusal::Memory))?;
        if addr >= self.code.start && end <= self.code.end {
            let off = (addr - self.code.start) as usize;
            return Ok(Some(crate::execute::unicorn::le(&self.code_bytes()[off..off + len])));
        }
        let mut page = addr & !(PAGE - 1);
        while page < end {
            if !self.logical(page) {
                return Ok(None);
            }
            self.physical(page)?;
            page += PAGE;
        }
        if self.code.start < end && addr < self.code.end {
            return Err(Stop::Refuse(Refusal::Memory)); // straddles the code's edge
        }
        let mut bytes = [0u8; 8];
        // SAFETY: every page of the range is mapped (image or made up).
        unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, bytes.as_mut_ptr(), len.min(8)) };
        Ok(Some(u64::from_le_bytes(bytes)))
    }

    /// An access by the instruction at code offset `head` that Unicorn
    /// would have made: unmapped memory is made up (or refused) as its
    /// `on_unmapped` does. `write`: a store (into the image, Unicorn's
    /// write-protection fault, not reproduced here). Unicorn's hook sees
    /// the access's address for its first page and the second page's start
    /// for the rest of an access across a page edge (with the access size
    /// for a load, 1 for a store).
    fn access(&mut self, addr: u64, len: usize, write: bool, head: usize) -> Step {
        let seen = addr & UNICORN_ADDRESS_MASK;
        if seen != addr {
            // Unicorn accesses the address less its top 12 bits: beyond user
            // space that is its unmappable fault (within, see `rebase`).
            if seen < USER_SPACE.end {
                return Err(Stop::Refuse(Refusal::Truncated));
            }
            return self.on_unmapped(seen, len.min(8), head);
        }
        let first = addr & !(PAGE - 1);
        let last = addr.wrapping_add(len.max(1) as u64 - 1) & !(PAGE - 1);
        let second_len = if write { 1 } else { len.min(8) };
        for (page, at, n) in [(first, addr, len.min(8)), (last, last, second_len)] {
            if write && self.in_image(page) {
                return Err(Stop::Refuse(Refusal::ImageWrite));
            }
            if !self.logical(page) {
                match self.on_unmapped(at, n, head) {
                    // Which address a failing split access reports is Unicorn's own.
                    Err(Stop::End(_)) if first != last || len > 8 => return Err(Stop::Refuse(Refusal::Memory)),
                    other => other?,
                }
            }
            self.physical(page)?;
        }
        Ok(())
    }

    /// Unicorn's `on_unmapped` for an access at `addr` by the instruction at `head`.
    fn on_unmapped(&mut self, addr: u64, len: usize, head: usize) -> Step {
        let pc = self.code.start + head as u64;
        let fault = |fault| Err(Stop::End(RunEnd::Fault { fault, pc, address: addr }));
        if self.touches_function(addr, len) {
            return fault(Fault::FunctionAsData);
        }
        if addr < NULL_PAGE_END {
            match self.null_source(head) {
                None => return Err(Stop::Refuse(Refusal::NullPage)),
                Some(AddressSource::Constant) => return fault(Fault::NullConstant),
                Some(AddressSource::MadeUp) => {}
            }
        }
        if self.map_demand_page(addr & !(PAGE - 1)) {
            Ok(())
        } else if self.budget_hit {
            fault(Fault::MemoryBudget)
        } else {
            fault(Fault::Unmappable)
        }
    }

    /// Where the address of the NULL-page access by the instruction at
    /// `head` came from, as Unicorn decides it from its instruction trail.
    /// The trail is not recorded natively; every trail the code allows is
    /// (back from `head`, through each instruction that may have run just
    /// before: the one falling through, each branch landing there, or the
    /// run's start), as far as the decision reads it. `None` unless they
    /// all agree (or exploring them costs more than a Unicorn run).
    fn null_source(&mut self, head: usize) -> Option<AddressSource> {
        let mut answer = None;
        let mut budget = NULL_TRAIL_EVALUATIONS;
        self.explore_trails(&mut vec![head], &mut answer, &mut budget).then_some(answer).flatten()
    }

    /// Decide for every trail starting with `path`; false when they
    /// disagree or the budget ran out.
    fn explore_trails(&mut self, path: &mut Vec<usize>, answer: &mut Option<AddressSource>, budget: &mut u32) -> bool {
        if *budget == 0 || path.len() > NULL_TRAIL_DEPTH {
            return false;
        }
        *budget -= 1;
        let mut wanted_more = false;
        let items = path.iter().map(|&offset| {
            let insn = plan::instruction_at(self.code_bytes(), self.code.start, offset);
            (insn, self.flags(offset) & plan::FIELD != 0)
        });
        let trail = items.chain(std::iter::from_fn(|| {
            wanted_more = true;
            None
        }));
        let source = null_access_source(trail, CALLER_SAVED_BITS);
        let agree = |answer: &mut Option<AddressSource>, source| *answer.get_or_insert(source) == source;
        if !wanted_more {
            return agree(answer, source);
        }
        let last = *path.last().unwrap_or(&0);
        // The run began here: its trail ends (`source` is that answer).
        if last == 0 && !agree(answer, source) {
            return false;
        }
        for previous in self.predecessors(last) {
            path.push(previous);
            let ok = self.explore_trails(path, answer, budget);
            path.pop();
            if !ok {
                return false;
            }
        }
        true
    }

    /// Code offsets of the instructions that may run just before the one
    /// at `offset`: the one before it, unless it never falls through (a
    /// stubbed call returns to the next instruction), and every direct
    /// branch landing there (control never enters the code otherwise:
    /// computed transfers into it are refused).
    fn predecessors(&mut self, offset: usize) -> Vec<usize> {
        if self.branches.is_none() {
            self.branches = Some(self.direct_branches());
        }
        let mut out: Vec<usize> =
            self.branches.iter().flatten().filter(|(_, to)| *to == offset).map(|(from, _)| *from).collect();
        if let Some(previous) = (0..offset).rev().find(|o| self.flags(*o) & START != 0) {
            let insn = plan::instruction_at(self.code_bytes(), self.code.start, previous);
            let falls_through = matches!(
                insn.flow_control(),
                FlowControl::Next | FlowControl::ConditionalBranch | FlowControl::Call | FlowControl::IndirectCall
            );
            if falls_through {
                out.push(previous);
            }
        }
        out
    }

    /// (from, to) code offsets of every direct jump or conditional branch inside the code.
    fn direct_branches(&self) -> Vec<(usize, usize)> {
        let starts = (0..self.request.flags.len()).filter(|o| self.flags(*o) & START != 0);
        starts
            .filter_map(|from| {
                let insn = plan::instruction_at(self.code_bytes(), self.code.start, from);
                let branch =
                    matches!(insn.flow_control(), FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch);
                let to = insn.near_branch_target();
                (branch && self.code.contains(&to)).then(|| (from, (to - self.code.start) as usize))
            })
            .collect()
    }

    // ---- the signal handler's work ----

    fn on_signal(&mut self, signal: c_int, info: &siginfo_t, uc: &mut Context) -> Step {
        // A stop costs the host what Unicorn spends on a few hundred
        // instructions: a run that stops this often is a loop Unicorn runs
        // faster.
        self.stops += 1;
        if self.stops > self.request.stop_limit {
            return Err(Stop::Refuse(Refusal::Loop));
        }
        self.count_segment(signal, uc)?;
        let step = match signal {
            libc::SIGTRAP => self.on_trap(uc),
            libc::SIGSEGV => self.on_fault(info, uc),
            libc::SIGSYS => Err(Stop::Refuse(Refusal::Instruction)),
            _ => Err(Stop::Refuse(Refusal::Control)),
        };
        if step.is_ok() {
            let rip = uc.rip();
            if !self.code.contains(&rip) {
                return Err(Stop::Refuse(Refusal::Control));
            }
            self.resumed = (rip - self.code.start) as usize;
        }
        step
    }

    /// Unicorn's instruction budget, kept natively without counting: the
    /// code ran from where it last resumed to where this signal stopped it
    /// without a stop between, so along forward edges only (every backward
    /// or computed transfer is a stop); the longest such path bounds what
    /// ran. A run whose bound passes the budget is refused, so a run
    /// answered natively never reached Unicorn's limit.
    fn count_segment(&mut self, signal: c_int, uc: &Context) -> Step {
        let rip = uc.rip();
        let (end, ran_end) = match signal {
            libc::SIGTRAP if self.stepping.is_some() => (self.resumed, true),
            libc::SIGTRAP if rip.wrapping_sub(1) == self.code.end => (self.last, true),
            // Stopped before the planted instruction (an emulated transfer
            // counts itself).
            libc::SIGTRAP => (rip.wrapping_sub(1).wrapping_sub(self.code.start) as usize, false),
            // The faulting instruction runs again.
            _ => (rip.wrapping_sub(self.code.start) as usize, false),
        };
        let Some(length) = self.longest_from(self.resumed).get(end).copied().filter(|l| *l > 0) else {
            return Err(Stop::Refuse(Refusal::Control));
        };
        self.spent += length as u64 - !ran_end as u64;
        if self.spent > self.request.limit {
            return Err(Stop::Refuse(Refusal::Budget));
        }
        Ok(())
    }

    /// Per code offset: instructions on the longest path from `from` that
    /// ends there, running forward and through no planted transfer (0: no
    /// such path).
    fn longest_from(&mut self, from: usize) -> &[u32] {
        if let Some(i) = self.paths.iter().position(|(f, _)| *f == from) {
            return &self.paths[i].1;
        }
        let len = self.request.flags.len();
        let mut longest = vec![0u32; len];
        if from < len {
            longest[from] = 1;
        }
        for offset in from..len {
            let f = self.flags(offset);
            if longest[offset] == 0 || f & START == 0 || f & (TRANSFER | REFUSE) != 0 {
                continue;
            }
            let insn = plan::instruction_at(self.code_bytes(), self.code.start, offset);
            let falls = matches!(insn.flow_control(), FlowControl::Next | FlowControl::ConditionalBranch);
            let jumps =
                matches!(insn.flow_control(), FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch);
            let next = falls.then(|| insn.next_ip());
            let target = jumps.then(|| insn.near_branch_target());
            for to in [next, target].into_iter().flatten().filter(|t| self.code.contains(t)) {
                let to = (to - self.code.start) as usize;
                if to > offset {
                    longest[to] = longest[to].max(longest[offset] + 1);
                }
            }
        }
        self.paths.push((from, longest));
        &self.paths.last().unwrap().1
    }

    fn on_trap(&mut self, uc: &mut Context) -> Step {
        let rip = uc.rip();
        if let Some(step) = self.stepping.take() {
            uc.set_flags(uc.flags() & !TRAP_FLAG);
            if let Some((reg, value, false)) = step.rebased {
                uc.set_register(reg, value);
            }
            if let Some(offset) = step.restored {
                if self.flags(offset) & REPLANT != 0 && self.under_cap(offset) {
                    self.plant(offset, INT3);
                }
            }
            if !self.code.contains(&rip) {
                return self.fell_through(self.last, rip, uc);
            }
            return Ok(());
        }
        let at = rip.wrapping_sub(1);
        if at == self.code.end && self.guard_after {
            return self.fell_through(self.last, at, uc);
        }
        if !self.code.contains(&at) {
            return Err(Stop::Refuse(Refusal::Control));
        }
        let offset = (at - self.code.start) as usize;
        let f = self.flags(offset);
        if f & (REFUSE | SITE | TRANSFER | STEP) == 0 {
            return Err(Stop::Refuse(Refusal::Control)); // an int3 nobody planted
        }
        uc.set_rip(at);
        if f & REFUSE != 0 {
            return Err(Stop::Refuse(Refusal::Instruction));
        }
        if f & SITE != 0 {
            self.observe(offset, uc)?;
        }
        if f & TRANSFER != 0 {
            return self.transfer(offset, uc);
        }
        // Run the instruction itself: restored, and single-stepped when it
        // must be seen again (a loop's site, the last instruction).
        self.plant(offset, self.code_bytes()[offset]);
        if f & STEP != 0 || (f & REPLANT != 0 && self.under_cap(offset)) {
            uc.set_flags(uc.flags() | TRAP_FLAG);
            self.stepping = Some(Stepping { restored: Some(offset), rebased: None });
        }
        Ok(())
    }

    /// Write `byte` at code offset `offset` (a planted `int3` or the original).
    fn plant(&mut self, offset: usize, byte: u8) {
        let addr = self.code.start + offset as u64;
        let page = addr & !(PAGE - 1);
        // SAFETY: the code page is this run's mapping; it is writable only
        // while the handler writes the byte (no stencil code runs meanwhile).
        unsafe {
            libc::mprotect(page as *mut c_void, PAGE as usize, libc::PROT_READ | libc::PROT_WRITE);
            *(addr as *mut u8) = byte;
            libc::mprotect(page as *mut c_void, PAGE as usize, libc::PROT_READ | libc::PROT_EXEC);
        }
    }

    /// The instruction at `offset` and the relocated fields in it.
    fn instruction_fields(&self, offset: usize) -> (iced_x86::Instruction, Vec<(usize, u64)>) {
        let insn = plan::instruction_at(self.code_bytes(), self.code.start, offset);
        let fields = self.fields.iter().filter(|(_, f)| (insn.ip()..insn.next_ip()).contains(f)).copied().collect();
        (insn, fields)
    }

    fn under_cap(&self, offset: usize) -> bool {
        self.instruction_fields(offset).1.iter().any(|(i, _)| self.per_site[*i] < SITE_OBSERVATION_CAP)
    }

    /// Unicorn's `observe`, from the signal's registers.
    fn observe(&mut self, offset: usize, uc: &Context) -> Step {
        let (insn, fields) = self.instruction_fields(offset);
        let bytes = self.code_bytes()[offset..offset + insn.len()].to_vec();
        for (i, field_addr) in fields {
            if self.per_site[i] >= SITE_OBSERVATION_CAP {
                continue;
            }
            let Some(effect) = self.site_effect(&bytes, insn.ip(), field_addr, uc)? else { continue };
            self.per_site[i] += 1;
            self.sites.push(SiteObservation { relocation: i, pc: insn.ip(), len: insn.len() as u32, effect });
        }
        Ok(())
    }

    /// `X86::site_effect`: memory the site is about to read is made to exist first.
    fn site_effect(
        &mut self,
        bytes: &[u8],
        addr: u64,
        field_addr: u64,
        uc: &Context,
    ) -> Result<Option<Option<Effect>>, Stop> {
        let regs = uc.registers();
        let mut reads: Vec<(u64, usize)> = Vec::new();
        let wanted = observe_site(
            bytes,
            addr,
            field_addr,
            64,
            |r| gpr_value(r, &regs),
            |a, n| {
                reads.push((a, n));
                None
            },
        );
        if wanted.is_some() && reads.is_empty() {
            return Ok(wanted);
        }
        let mut values = Vec::with_capacity(reads.len());
        for &(a, n) in &reads {
            self.ensure_mapped(a, n);
            values.push(self.read(a, n)?);
        }
        let mut next = values.into_iter();
        Ok(observe_site(bytes, addr, field_addr, 64, |r| gpr_value(r, &regs), |_, _| next.next().flatten()))
    }

    /// Emulate the control transfer at `offset` as Unicorn runs it: its
    /// memory accesses, then where control goes (stay, stub a call, or exit).
    fn transfer(&mut self, offset: usize, uc: &mut Context) -> Step {
        self.spent += 1;
        let insn = plan::instruction_at(self.code_bytes(), self.code.start, offset);
        let mut regs = uc.registers();
        let flow = insn.flow_control();
        let computed = matches!(flow, FlowControl::IndirectBranch | FlowControl::IndirectCall | FlowControl::Return);
        let target = match flow {
            FlowControl::ConditionalBranch if plan::taken(insn.condition_code(), uc.flags() as u64) => {
                insn.near_branch_target()
            }
            FlowControl::ConditionalBranch => insn.next_ip(),
            FlowControl::UnconditionalBranch | FlowControl::Call => insn.near_branch_target(),
            FlowControl::IndirectBranch | FlowControl::IndirectCall => self.operand(&insn, &regs, offset)?,
            FlowControl::Return => {
                let sp = regs[RSP];
                self.access(sp, 8, false, offset)?;
                let target = self.read(sp, 8)?.ok_or(Stop::Refuse(Refusal::Memory))?;
                let popped = if insn.op_count() == 1 { insn.immediate16() as u64 } else { 0 };
                regs[RSP] = sp.wrapping_add(8).wrapping_add(popped);
                target
            }
            _ => return Err(Stop::Refuse(Refusal::Control)),
        };
        if matches!(flow, FlowControl::Call | FlowControl::IndirectCall) {
            let sp = regs[RSP].wrapping_sub(8);
            self.access(sp, 8, true, offset)?;
            // SAFETY: `access` mapped the slot read+write (never image pages).
            unsafe { (sp as *mut u64).write_unaligned(insn.next_ip()) };
            regs[RSP] = sp;
        }
        if self.code.contains(&target) {
            let lands = self.flags((target - self.code.start) as usize) & START != 0;
            if computed || !lands {
                return Err(Stop::Refuse(Refusal::Control));
            }
            uc.set_register(RSP, regs[RSP]);
            uc.set_rip(target);
            return Ok(());
        }
        uc.set_register(RSP, regs[RSP]);
        let end = (insn.ip() - self.code.start) as usize;
        let bytes = &self.code_bytes()[end..(end + 15).min(self.code_bytes().len())];
        match classify_exit(bytes, insn.ip(), target, &self.fields, 64) {
            Transfer::Call => self.stub(insn.ip(), target, uc),
            Transfer::Exit(kind, computed) => Err(self.exit(kind, insn.ip(), target, regs[RSP], computed)),
        }
    }

    fn exit(&self, kind: ExitKind, from: u64, target: u64, sp: u64, computed: bool) -> Stop {
        let sp = if kind == ExitKind::Return { sp.wrapping_sub(8) } else { sp };
        Stop::End(RunEnd::Exit { kind, from, target, sp, computed })
    }

    /// The value of an indirect transfer's operand (a register, or memory).
    fn operand(&mut self, insn: &iced_x86::Instruction, regs: &[u64; 16], head: usize) -> Result<u64, Stop> {
        match insn.op0_kind() {
            OpKind::Register => gpr_value(insn.op0_register(), regs).ok_or(Stop::Refuse(Refusal::Instruction)),
            OpKind::Memory => {
                let address = insn
                    .virtual_address(0, 0, |r, _, _| segment_or(r, regs))
                    .ok_or(Stop::Refuse(Refusal::Instruction))?;
                self.access(address, 8, false, head)?;
                self.read(address, 8)?.ok_or(Stop::Refuse(Refusal::Memory))
            }
            _ => Err(Stop::Refuse(Refusal::Instruction)),
        }
    }

    /// Unicorn's `stub_return`: record the call, return a made-up value,
    /// scramble the caller-saved registers, pop the return address.
    fn stub(&mut self, from: u64, target: u64, uc: &mut Context) -> Step {
        if self.calls.len() >= CALL_LIMIT {
            return Err(Stop::End(RunEnd::CallLimit { pc: target }));
        }
        let sp = uc.register(RSP);
        let Some(ret) = self.read(sp, 8)? else {
            return Err(Stop::End(RunEnd::Fault { fault: Fault::Unmappable, pc: target, address: 0 }));
        };
        let n = self.calls.len();
        let value = self.contents().return_value(n);
        self.calls.push(CallRecord { from, target, sp, returned: value });
        uc.set_register(RAX, value);
        let seed = self.request.seed;
        for (i, r) in self.request.caller_saved.clone().iter().enumerate() {
            uc.set_register(*r as usize, splitmix(seed ^ (n as u64) << 8 ^ i as u64));
        }
        uc.set_register(RSP, sp + 8);
        if self.code.contains(&ret) {
            if self.flags((ret - self.code.start) as usize) & START == 0 {
                return Err(Stop::Refuse(Refusal::Control));
            }
            uc.set_rip(ret);
            return Ok(());
        }
        Err(Stop::End(RunEnd::Exit {
            kind: ExitKind::AfterNoReturnCall,
            from,
            target: ret,
            sp: sp + 8,
            computed: false,
        }))
    }

    /// Control ran off the code's end after the instruction at `offset`.
    fn fell_through(&self, offset: usize, target: u64, uc: &Context) -> Step {
        let last_pc = self.code.start + offset as u64;
        let bytes = &self.code_bytes()[offset..(offset + 15).min(self.code_bytes().len())];
        match classify_exit(bytes, last_pc, target, &self.fields, 64) {
            Transfer::Exit(kind, computed) => Err(self.exit(kind, last_pc, target, uc.register(RSP), computed)),
            Transfer::Call => Err(Stop::Refuse(Refusal::Control)),
        }
    }

    /// A load or store faulted: memory is made up (or the run ends) as
    /// Unicorn's `on_unmapped` decides for the access the instruction made.
    fn on_fault(&mut self, info: &siginfo_t, uc: &mut Context) -> Step {
        let rip = uc.rip();
        if !self.code.contains(&rip) || uc.error() & PF_FETCH != 0 {
            return Err(Stop::Refuse(Refusal::Control));
        }
        let offset = (rip - self.code.start) as usize;
        // SAFETY: a SIGSEGV's siginfo carries the faulting address.
        let si_addr = unsafe { info.si_addr() } as u64;
        let general_protection = info.si_code == SI_KERNEL;
        if info.si_code == SEGV_ACCERR || (!general_protection && self.in_image(si_addr)) {
            return Err(Stop::Refuse(Refusal::ImageWrite));
        }
        if !general_protection && self.logical(si_addr) {
            return self.physical(si_addr & !(PAGE - 1)); // made up already: now natively too
        }
        let insn = plan::instruction_at(self.code_bytes(), self.code.start, offset);
        let regs = uc.registers();
        let Some((address, len, write)) = faulting_access(&insn, &regs, si_addr, general_protection) else {
            return Err(Stop::Refuse(Refusal::Memory));
        };
        if general_protection && address < USER_SPACE.end {
            return Err(Stop::Refuse(Refusal::Memory)); // not a bad address: alignment or the like
        }
        let seen = address & UNICORN_ADDRESS_MASK;
        if seen != address && seen < USER_SPACE.end {
            return self.rebase(&insn, address, seen, uc);
        }
        self.access(address, len, write, offset)
    }

    /// Unicorn runs an access to a non-canonical `address` at `seen` (its
    /// low 52 bits). Natively: move the memory operand there (its base
    /// register less the difference), single-step the instruction, and give
    /// the register its value back, when the base register is nothing else
    /// to the instruction; otherwise Unicorn runs the placement.
    fn rebase(&mut self, insn: &iced_x86::Instruction, address: u64, seen: u64, uc: &mut Context) -> Step {
        let refuse = Err(Stop::Refuse(Refusal::Truncated));
        let base = insn.memory_base();
        let Some(reg) = gpr_index(base) else { return refuse };
        if base.size() != 8 || base == Register::RSP || insn.memory_index().full_register() == base {
            return refuse;
        }
        let explicit = (0..insn.op_count())
            .any(|i| insn.op_kind(i) == OpKind::Register && insn.op_register(i).full_register() == base);
        let mut factory = InstructionInfoFactory::new();
        let uses: Vec<OpAccess> = factory
            .info(insn)
            .used_registers()
            .iter()
            .filter(|u| u.register().full_register() == base)
            .map(|u| u.access())
            .collect();
        // Read for the address, and at most overwritten by the instruction
        // (`mov (%rax), %rax`): never a value it computes with.
        let written = uses.contains(&OpAccess::Write);
        let only_addressing = uses.iter().all(|a| matches!(a, OpAccess::Read | OpAccess::Write));
        if !only_addressing || (explicit && !written) {
            return refuse;
        }
        let original = uc.register(reg);
        uc.set_register(reg, original.wrapping_sub(address.wrapping_sub(seen)));
        uc.set_flags(uc.flags() | TRAP_FLAG);
        let step = self.stepping.get_or_insert_with(Stepping::default);
        step.rebased = Some((reg, original, written));
        Ok(())
    }
}

/// The memory access of `insn` that faulted: at `si_addr` (a page fault),
/// or its only one (a general-protection fault says no address). Address,
/// size, and whether it only stores.
fn faulting_access(
    insn: &iced_x86::Instruction,
    regs: &[u64; 16],
    si_addr: u64,
    gp: bool,
) -> Option<(u64, usize, bool)> {
    let mut factory = InstructionInfoFactory::new();
    let info = factory.info(insn);
    let accesses: Vec<(u64, usize, bool)> = info
        .used_memory()
        .iter()
        .filter(|m| m.access() != OpAccess::NoMemAccess)
        .map(|m| {
            let address = m.virtual_address(0, |r, _, _| segment_or(r, regs))?;
            let store = matches!(m.access(), OpAccess::Write | OpAccess::CondWrite);
            Some((address, m.memory_size().size().max(1), store))
        })
        .collect::<Option<_>>()?;
    if gp {
        return (accesses.len() == 1).then(|| accesses[0]);
    }
    accesses.into_iter().find(|(a, n, _)| (*a..a.wrapping_add(*n as u64)).contains(&si_addr))
}

/// Our index ([`Request::registers`] order) of a 64-bit general register.
fn gpr_index(r: Register) -> Option<usize> {
    if !r.is_gpr64() {
        return None;
    }
    // iced numbers rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8..r15.
    const ICED_TO_OURS: [usize; 16] = [0, 2, 3, 1, 7, 6, 4, 5, 8, 9, 10, 11, 12, 13, 14, 15];
    Some(ICED_TO_OURS[r as usize - Register::RAX as usize])
}

/// Segment bases are 0 (as Unicorn's site reading takes them); fs and gs are not known.
fn segment_or(r: Register, regs: &[u64; 16]) -> Option<u64> {
    match r {
        Register::ES | Register::CS | Register::SS | Register::DS => Some(0),
        _ => gpr_value(r, regs),
    }
}

/// The value of a general register as Unicorn's site reading sees it: 64,
/// 32 and 16-bit views; byte registers are not read.
fn gpr_value(r: Register, regs: &[u64; 16]) -> Option<u64> {
    let mask = match r.size() {
        8 => u64::MAX,
        4 => u32::MAX as u64,
        2 => u16::MAX as u64,
        _ => return None,
    };
    Some(regs[gpr_index(r.full_register())?] & mask)
}

/// MAP_FIXED_NOREPLACE: true only when the mapping landed exactly at `addr`.
///
/// # Safety
/// Maps memory at a fixed address: the caller must own what is mapped there.
unsafe fn map_fixed(addr: u64, len: u64, prot: c_int) -> bool {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | MAP_FIXED_NOREPLACE;
    let p = libc::mmap(addr as *mut c_void, len as usize, prot, flags, -1, 0);
    if p == libc::MAP_FAILED {
        return false;
    }
    if p as u64 != addr {
        libc::munmap(p, len as usize); // an old kernel took the address as a hint
        return false;
    }
    true
}

/// A signal's saved machine context.
struct Context(*mut ucontext_t);

impl Context {
    fn greg(&self, i: c_int) -> i64 {
        // SAFETY: the kernel's ucontext for the signal being handled.
        unsafe { (*self.0).uc_mcontext.gregs[i as usize] }
    }
    fn set_greg(&mut self, i: c_int, v: i64) {
        // SAFETY: as above; sigreturn loads what is written here.
        unsafe { (*self.0).uc_mcontext.gregs[i as usize] = v }
    }
    fn rip(&self) -> u64 {
        self.greg(libc::REG_RIP) as u64
    }
    fn set_rip(&mut self, v: u64) {
        self.set_greg(libc::REG_RIP, v as i64)
    }
    fn flags(&self) -> i64 {
        self.greg(libc::REG_EFL)
    }
    fn set_flags(&mut self, v: i64) {
        self.set_greg(libc::REG_EFL, v)
    }
    fn error(&self) -> i64 {
        self.greg(libc::REG_ERR)
    }
    fn register(&self, i: usize) -> u64 {
        self.greg(GREG[i]) as u64
    }
    fn set_register(&mut self, i: usize, v: u64) {
        self.set_greg(GREG[i], v as i64)
    }
    fn registers(&self) -> [u64; 16] {
        std::array::from_fn(|i| self.register(i))
    }
    /// Leave the stencil: return from `stencilcheck_native_enter`.
    fn land(&mut self) {
        // SAFETY: WORKER_SP was written by `enter` for this run.
        let sp = unsafe { WORKER_SP };
        self.set_greg(libc::REG_RSP, sp as i64);
        self.set_rip(stencilcheck_native_landing as *const () as u64);
        self.set_flags(0x202);
    }
}

extern "C" fn on_signal(signal: c_int, info: *mut siginfo_t, uc: *mut c_void) {
    // SAFETY: the worker is single-threaded and CURRENT points at the run
    // in progress (or is null, when a signal came from the worker itself).
    let Some(run) = (unsafe { CURRENT.as_mut() }) else { exit(4) };
    let mut context = Context(uc as *mut ucontext_t);
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let info = unsafe { &*info };
    if let Err(stop) = run.on_signal(signal, info, &mut context) {
        run.end = Some(stop);
        context.land();
    }
}
