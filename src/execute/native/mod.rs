//! The native engine (`--engine native`): x86-64 stencils run on the host
//! CPU, at their placed addresses, in a worker process, with the verdicts
//! of the Unicorn engine.
//!
//! Why it agrees with Unicorn: the run stops ([`plan`]) wherever Unicorn's
//! code hook acts (sites, leaving the code), and there does exactly what
//! the hook does, with the same shared functions (`observe_site`,
//! `classify_exit`, `null_access_source`, `Contents`); made-up memory is
//! mapped by the same rules (a page at a time, budget, NULL page). Whatever a native
//! run cannot reproduce exactly ([`protocol::Refusal`]) is run again on an
//! internal [`UnicornX86`], whose trace is returned: verdicts are
//! identical by construction, and [`NativeEngine::stats`] counts how many
//! runs took that path.
//!
//! Containment: the worker is a forked process (a wild write, a fault in
//! the handler or a hang can only end it); the engine waits for its
//! answer at most [`WATCHDOG`], then kills it, starts a fresh one and runs
//! the placement on Unicorn. System calls from stencil code never reach
//! the kernel ([`seccomp`]).
//!
//! Differences from the design first proposed, and why:
//! - Calls, jumps and returns that may leave the code are *emulated* at a
//!   planted `int3` rather than left to fault on instruction fetch: the
//!   fault says where control went but not from which instruction, and
//!   Unicorn's classification needs that instruction. It also keeps
//!   control from ever running bytes outside the code (a target inside a
//!   shared data page would run natively).
//! - The instruction budget: the host has no instruction counter (no PMU
//!   in this VM) and a CPU timer says nothing exact, so backward branches
//!   are stops too; between two stops the code only runs forward, and the
//!   longest forward path between them bounds what ran. A run whose bound
//!   passes Unicorn's budget is refused, so a native answer never hides an
//!   `InstructionLimit`. Loops stop once an iteration, which costs more
//!   than Unicorn's iteration: after [`STOP_LIMIT`] stops Unicorn runs it.
//! - The NULL page: Unicorn decides made-up against constant from its
//!   trail of the last instructions run; natively every trail the code
//!   allows is explored back from the access (the decision reads only a
//!   few instructions), and the run is refused when they disagree. It is
//!   mapped natively only where the kernel lets the worker
//!   (`vm.mmap_min_addr`, or CAP_SYS_RAWIO); elsewhere those runs go to
//!   Unicorn.
//! - Unicorn drops an address's top 12 bits (no paging: linear is
//!   physical, 52 bits): a non-canonical access faults natively but is an
//!   ordinary one there. The worker reruns it on the truncated address (its
//!   base register moved, single-stepped, restored), as Unicorn accesses it.
//! - A worker answers one run at a time over pipes (no shared memory): a
//!   request is a few KiB, and the round trip costs little next to mapping
//!   the image.
//!
//! Known residual differences (none seen on the corpus, the fixtures or
//! the 3.13.5 header): a wild access that lands in the worker's own memory
//! reads or writes it instead of made-up memory (the chance is the
//! worker's mapped size over 2^47 per access); stencil code reading its
//! own bytes through a register sees the planted `int3`s; flags an
//! instruction leaves undefined may differ from QEMU's.
//!
//! [`Trace::instructions`] is 0 for a native run: it is not counted.

mod plan;
mod protocol;
mod seccomp;
mod worker;

pub use protocol::Refusal;

use super::x86_64::UnicornX86;
use super::{entered_by_call, Contents, Convention, Engine, NativeStats, Trace};
use crate::model::Stencil;
use crate::patch::{Image, Region};
use crate::place::{Placement, PAGE};
use protocol::{Answer, Request};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::{Duration, Instant};

/// Stops a run may make before Unicorn runs it instead: a stop costs the
/// host what Unicorn spends on a few hundred instructions, and loops stop
/// once an iteration (the 3.13.5 x86-64 runs stop 5 times in the median).
pub const STOP_LIMIT: u64 = 256;

/// How long the engine waits for a worker's answer before it kills it.
pub const WATCHDOG: Duration = Duration::from_secs(10);

/// A running worker process and its pipes.
struct Worker {
    pid: libc::pid_t,
    requests: std::fs::File,
    answers: std::fs::File,
}

impl Worker {
    /// Fork a worker. The child keeps only its two pipe ends.
    fn spawn() -> Result<Worker, String> {
        let (req_read, req_write) = pipe()?;
        let (ans_read, ans_write) = pipe()?;
        // SAFETY: the child runs only `worker::serve` (async-signal-safe
        // enough: glibc's fork leaves malloc usable; it never touches
        // stdio) and ends with `_exit`.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err("fork failed".into());
        }
        if pid == 0 {
            close_all_but(&[req_read, ans_write]);
            worker::serve(req_read, ans_write);
        }
        // SAFETY: the parent's ends, owned from here on; the child's are closed here.
        unsafe {
            libc::close(req_read);
            libc::close(ans_write);
            Ok(Worker {
                pid,
                requests: std::fs::File::from_raw_fd(req_write),
                answers: std::fs::File::from_raw_fd(ans_read),
            })
        }
    }

    /// Send `request`, wait (at most [`WATCHDOG`]) for the answer. `None`:
    /// the worker died or hung (the caller kills it).
    fn ask(&mut self, request: &[u8]) -> Option<Answer> {
        let mut message = (request.len() as u32).to_le_bytes().to_vec();
        message.extend_from_slice(request);
        self.requests.write_all(&message).ok()?;
        let deadline = Instant::now() + WATCHDOG;
        let mut len = [0u8; 4];
        self.read_by(&mut len, deadline)?;
        let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
        self.read_by(&mut body, deadline)?;
        Answer::decode(&body)
    }

    fn read_by(&mut self, buf: &mut [u8], deadline: Instant) -> Option<()> {
        let mut got = 0;
        while got < buf.len() {
            let left = deadline.checked_duration_since(Instant::now())?;
            let mut fd = libc::pollfd { fd: self.answers.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut fd, 1, left.as_millis().min(i32::MAX as u128) as i32 + 1) };
            if ready < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            if ready <= 0 {
                return None;
            }
            match self.answers.read(&mut buf[got..]) {
                Ok(0) | Err(_) => return None,
                Ok(n) => got += n,
            }
        }
        Some(())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // SAFETY: our own child; reaped here so it never lingers as a zombie.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

fn pipe() -> Result<(i32, i32), String> {
    let mut fds = [0; 2];
    // SAFETY: two ints for the new descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err("pipe failed".into());
    }
    Ok((fds[0], fds[1]))
}

/// In the child: close every descriptor but `keep` (other workers' pipes
/// included, so their ends see end-of-file when their engine goes).
fn close_all_but(keep: &[i32]) {
    let mut from = 0;
    let mut sorted = keep.to_vec();
    sorted.sort();
    for k in sorted.into_iter().chain([i32::MAX]) {
        if from < k {
            // SAFETY: closes descriptors of this (child) process only.
            let done = unsafe { libc::syscall(libc::SYS_close_range, from as u32, (k - 1) as u32, 0) } == 0;
            if !done {
                for fd in from..k.min(65536) {
                    // SAFETY: as above.
                    unsafe { libc::close(fd) };
                }
            }
        }
        from = k.saturating_add(1);
    }
}

/// The native x86-64 engine. One per thread, like every engine.
pub struct NativeEngine {
    worker: Option<Worker>,
    /// Runs the placements the worker refuses.
    unicorn: UnicornX86,
    convention: Convention,
    limit: u64,
    stop_limit: u64,
    stats: NativeStats,
}

/// Can this host run x86-64 stencils natively?
pub fn host_supported() -> bool {
    cfg!(all(target_arch = "x86_64", target_os = "linux"))
}

impl NativeEngine {
    pub fn new(convention: Convention, limit: u64) -> Result<NativeEngine, String> {
        if !host_supported() {
            return Err("the native engine on a host other than x86-64 Linux".into());
        }
        let unicorn = UnicornX86::new(convention.clone(), limit)?;
        Ok(NativeEngine {
            worker: None,
            unicorn,
            convention,
            limit,
            stop_limit: STOP_LIMIT,
            stats: NativeStats::default(),
        })
    }

    /// Let runs stop `n` times before Unicorn runs them instead (see [`STOP_LIMIT`]).
    pub fn set_stop_limit(&mut self, n: u64) {
        self.stop_limit = n;
    }

    pub fn stats(&self) -> &NativeStats {
        &self.stats
    }

    /// The worker's process id (spawned if there is none yet).
    pub fn worker_pid(&mut self) -> Option<libc::pid_t> {
        self.worker().map(|w| w.pid)
    }

    fn worker(&mut self) -> Option<&mut Worker> {
        if self.worker.is_none() {
            self.worker = Worker::spawn().ok();
            self.stats.workers += self.worker.is_some() as u64;
        }
        self.worker.as_mut()
    }

    /// The request for one run, or why the code cannot run natively at all.
    fn request(&self, stencil: &Stencil, placement: &Placement, image: &Image) -> Result<Request, Refusal> {
        let mut fields: Vec<(u32, u64)> =
            stencil.relocations.iter().enumerate().map(|(i, r)| (i as u32, image.code_addr + r.offset)).collect();
        fields.sort_by_key(|f| f.1);
        let code_end = image.code_addr + image.code.len() as u64;
        let guard_after = image.locate(code_end).is_none();
        let sorted: Vec<(usize, u64)> = fields.iter().map(|(r, a)| (*r as usize, *a)).collect();
        let plan = plan::analyse(&image.code, image.code_addr, &sorted, guard_after).map_err(|_| Refusal::Code)?;
        let interesting: Vec<u64> =
            placement.externs.values().copied().filter(|a| !placement.functions.contains(a)).collect();
        let contents = Contents {
            seed: placement.contents_seed,
            heap: placement.heap,
            heap_size: placement.heap_size,
            interesting: &interesting,
        };
        let mut registers: [u64; 16] = std::array::from_fn(|i| contents.word(placement.contents_seed ^ (i as u64 * 8)));
        let by_call = entered_by_call(stencil);
        let conv = &self.convention;
        let names = if by_call { conv.c_abi.args } else { [conv.frame, conv.stack_pointer, conv.tstate] };
        for (name, value) in names.iter().zip([placement.frame, placement.stack_pointer, placement.tstate]) {
            registers[gpr_index(name).ok_or(Refusal::Code)?] = value;
        }
        registers[7] = placement.machine_sp - 8;
        let caller_saved =
            conv.c_abi.caller_saved.iter().map(|n| gpr_index(n).map(|i| i as u8)).collect::<Option<Vec<u8>>>();
        let mut regions = vec![(image.code_addr, image.code.clone())];
        regions.extend(image.regions().filter(|(r, _, _)| *r != Region::Code).map(|(_, a, b)| (a, b.to_vec())));
        Ok(Request {
            pages: image_pages(image),
            regions,
            flags: plan.flags,
            fields,
            relocations: stencil.relocations.len() as u32,
            seed: placement.contents_seed,
            heap: placement.heap,
            heap_size: placement.heap_size,
            interesting,
            functions: placement.functions.clone(),
            registers,
            caller_saved: caller_saved.ok_or(Refusal::Code)?,
            limit: self.limit,
            stop_limit: self.stop_limit,
        })
    }

    /// One native run: the trace, or why Unicorn must make it.
    fn run_natively(&mut self, stencil: &Stencil, placement: &Placement, image: &Image) -> Result<Trace, Refusal> {
        let request = self.request(stencil, placement, image)?;
        let encoded = request.encode();
        let Some(worker) = self.worker() else { return Err(Refusal::Worker) };
        let Some(answer) = worker.ask(&encoded) else {
            self.worker = None; // killed and reaped by Drop; a fresh one next run
            return Err(Refusal::Worker);
        };
        match answer {
            Answer::Refused(why) => Err(why),
            Answer::Ran { sites, calls, end } => Ok(Trace {
                branches: Vec::new(),
                sites,
                calls,
                end: Some(end),
                instructions: 0,
                entry_sp: placement.machine_sp - 8,
                entry: image.code_addr,
                entered_by_call: entered_by_call(stencil),
            }),
        }
    }
}

impl Engine for NativeEngine {
    /// Steered runs are Unicorn's (a native run records no branches).
    fn run_steered(
        &mut self,
        stencil: &Stencil,
        placement: &Placement,
        image: &Image,
        steering: &crate::execute::Steering,
    ) -> Option<Trace> {
        self.unicorn.run_steered(stencil, placement, image, steering)
    }

    fn flows(&self, image: &Image) -> Option<Vec<crate::execute::Flow>> {
        self.unicorn.flows(image)
    }

    fn run(&mut self, stencil: &Stencil, placement: &Placement, image: &Image) -> Trace {
        self.stats.runs += 1;
        match self.run_natively(stencil, placement, image) {
            Ok(trace) => trace,
            Err(why) => {
                *self.stats.refused.entry(why.name()).or_default() += 1;
                self.unicorn.run(stencil, placement, image)
            }
        }
    }

    fn native_stats(&self) -> Option<NativeStats> {
        Some(self.stats.clone())
    }
}

/// The general register a convention names, as [`Request::registers`] orders them.
fn gpr_index(name: &str) -> Option<usize> {
    const NAMES: [&str; 16] =
        ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"];
    NAMES.iter().position(|n| *n == name)
}

/// The image's pages, merged, as Unicorn's engine maps them: the code with
/// one page of traps after it, and every other region.
fn image_pages(image: &Image) -> Vec<(u64, u64)> {
    let code_len = image.code.len() as u64 + PAGE;
    let rest = image.regions().filter(|(r, _, _)| *r != Region::Code).map(|(_, a, b)| (a, b.len() as u64));
    let mut pages: Vec<(u64, u64)> = std::iter::once((image.code_addr, code_len))
        .chain(rest)
        .filter(|(_, len)| *len > 0)
        .map(|(addr, len)| {
            let end = (addr + len + PAGE - 1) & !(PAGE - 1);
            (addr & !(PAGE - 1), end.min(crate::target::x86_64::USER_SPACE.end))
        })
        .collect();
    pages.sort();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s, e) in pages {
        match merged.last_mut() {
            Some(m) if s <= m.1 => m.1 = m.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
}
