//! The architecture-neutral Unicorn engine: every run from the same pristine state,
//! made-up memory mapped on demand, externs stubbed, budgets enforced.
//!
//! The run loop: map code and data (read+execute, never writable), enter with
//! frame/stack_pointer/tstate in the convention's registers, and count every
//! instruction in one code hook. The hook stops the run the moment the program
//! counter leaves the code; what the last instruction inside was (call, jump,
//! return) says whether that was a call (stubbed: we return a made-up value and
//! resume) or an exit (recorded, run over). Memory the code reads that nobody
//! mapped is made up on demand from the placement's seed.
//!
//! What differs between machines (registers, how a call leaves its return
//! address, how the last instruction is classified, what a relocation site
//! does) is a [`Machine`]; `x86_64.rs` and `aarch64.rs` each have one.

use super::{
    entered_by_call, CallRecord, Contents, Convention, Engine, ExitKind, Fault, Flow, RunEnd, SiteObservation,
    Steering, Trace, CALL_LIMIT, DEMAND_PAGE_LIMIT, NULL_PAGE_END,
};
use crate::model::{Effect, Stencil};
use crate::patch::Image;
use crate::place::{splitmix, Placement, PAGE};
use serde::Serialize;
use std::ops::Range;
use unicorn_engine::unicorn_const::{uc_error, Arch, HookType, MemType, Mode, Prot};
use unicorn_engine::{Context, Unicorn};

/// How leaving the code at the last instruction is to be taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transfer {
    /// A call: stub it and resume at its return address.
    Call,
    /// An exit, and whether its target was computed (not a relocation's).
    Exit(ExitKind, bool),
}

/// What one machine contributes to the engine.
pub trait Machine: 'static {
    type Reg: Copy + Into<i32>;
    /// For messages: "x86-64", "ARM64".
    const NAME: &'static str;
    const ARCH: Arch;
    const MODE: Mode;
    /// One past the highest address a user-space page can have.
    const USER_END: u64;
    /// Fills the mapped pages the image does not cover (a trap instruction).
    const GUARD: [u8; 4];
    /// The longest instruction, in bytes.
    const MAX_INSN: usize;
    /// How far before a relocated field an instruction holding it may start.
    const SITE_LOOKBACK: u64;
    const SP: Self::Reg;
    /// Where a stub's made-up return value goes.
    const RETURN_VALUE: Self::Reg;
    /// Registers that start with made-up contents, in this order.
    const GPRS: &'static [Self::Reg];
    /// The C arguments are passed on the stack instead (i686's cdecl): the
    /// first just above the return address, one [`Machine::WORD`] each.
    const ARGS_ON_STACK: bool = false;
    /// Bytes of a pointer and of a stack slot.
    const WORD: u64 = 8;
    /// Site decoding needs the instruction objdump listed at each
    /// relocation (to see a relaxation change its kind).
    const USES_ORIGINALS: bool = false;
    /// Zero bytes after the last instruction are padding (aarch64's code is
    /// padded to 8 bytes with `udf #0`), not code: a stub returning into
    /// them returned past the code.
    const ZERO_PADDING: bool = false;
    /// Call [`Machine::step`] before every instruction.
    const TRACKS_REGISTERS: bool = false;

    /// The register a convention names.
    fn register(name: &str) -> Self::Reg;
    /// Once per emulator: system registers, CPU features.
    fn init(_uc: &mut Unicorn<'_, RunState>) -> Result<(), String> {
        Ok(())
    }
    /// Set the machine stack pointer (and the return address) for a run;
    /// returns the stack pointer at entry.
    fn enter(uc: &mut Unicorn<'_, RunState>, machine_sp: u64) -> u64;
    /// At a stub's first instruction: the stack pointer and where the call returns.
    fn callee(uc: &mut Unicorn<'_, RunState>) -> Option<(u64, u64)>;
    /// Leave the stub as its return would (x86 pops the return address).
    fn finish_stub(uc: &mut Unicorn<'_, RunState>, sp: u64);
    /// The stack pointer to report for an exit of `kind` (before a `ret` popped).
    fn exit_sp(kind: ExitKind, sp: u64) -> u64;
    /// Was leaving the code for `target` after the instruction in `bytes` (at
    /// `last_pc`) a call, a jump, a return or a fall-through?
    fn classify(bytes: &[u8], last_pc: u64, target: u64, st: &RunState) -> Transfer;
    /// What the instruction in `bytes` at `addr` does with the field of
    /// relocation `relocation` at `field_addr`, read off the live registers
    /// and memory. `None`: not known (skipped); `Some(None)`: the field is no
    /// operand of it.
    fn site_effect(
        uc: &mut Unicorn<'_, RunState>,
        relocation: usize,
        addr: u64,
        bytes: &[u8],
        field_addr: u64,
    ) -> Option<Option<Effect>>;
    /// Before the instruction at code offset `offset` runs (`site`: it holds
    /// a relocated field): keep [`RunState::formed`].
    fn step(_st: &mut RunState, _offset: usize, _site: bool) {}
    /// Where control that left the code for `target` really goes: through a
    /// veneer in the image's trampolines, its destination (identity by default).
    fn resolve(_uc: &Unicorn<'_, RunState>, target: u64) -> u64 {
        target
    }
    /// Must the instruction in `bytes` at `pc` never run in a stencil
    /// (privileged, a system call, `hlt`, a trap)? Checked once per code
    /// offset, before it runs.
    fn forbidden(_bytes: &[u8], _pc: u64) -> bool {
        false
    }
    /// The emulator refused the instruction in `bytes` at `pc`: invalid, or
    /// valid code it lacks ([`Fault::Unsupported`])?
    fn invalid(_bytes: &[u8], _pc: u64) -> Fault {
        Fault::InvalidInstruction
    }
    /// A machine's own reading of an emulator error, before the common one.
    fn fault(_e: uc_error) -> Option<Fault> {
        None
    }
    /// A line of registers for `STENCILCHECK_DEBUG`.
    fn debug_registers(uc: &Unicorn<'_, RunState>) -> String;
    /// The [`RunState::reserved_mask`] bits of registers named `names`.
    fn register_mask(_names: &[&str]) -> u32 {
        0
    }
    /// The instruction just run ([`RunState::trail`]'s first) touched the
    /// NULL page: was its address made up, or a constant the code (or a
    /// hole) formed? Made up by default: a machine that cannot tell must
    /// not call the stencil wrong.
    fn null_access_source(_st: &RunState) -> AddressSource {
        AddressSource::MadeUp
    }
    /// How control goes on after the instruction in `bytes` at `pc`
    /// (`offset` in the code); `None` when it does not decode.
    fn flow(bytes: &[u8], pc: u64, offset: u32) -> Option<super::Flow>;
}

/// Where the address of a NULL-page access came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressSource {
    /// From made-up contents: a register at entry, a load from made-up
    /// memory, a stub's return value, or flags computed from them. A real
    /// type check would have kept the stencil away; the run goes on.
    MadeUp,
    /// From immediates, zeroing idioms and placed addresses alone: the
    /// stencil dereferences NULL whatever its inputs (a finding).
    Constant,
}

/// Instructions [`RunState::trail`] remembers: enough to find where a
/// register got its value in any straight-line stretch of a stencil.
pub const TRAIL_LEN: usize = 512;

/// Host memory behind every region a run maps: one allocation per engine,
/// handed out a region at a time and taken back whole between runs.
/// Unicorn's own `mem_map` asks the kernel for fresh memory every time (an
/// mmap, a page fault per page first touched, a munmap): that was a third
/// of a run's cost.
pub struct HostPool {
    base: *mut u8,
    len: usize,
    next: usize,
}

/// Bytes of [`HostPool`]: the image and made-up pages of one run, with room
/// to spare (a run needing more maps the rest through Unicorn).
const HOST_POOL_BYTES: usize = 4 << 20;

impl HostPool {
    fn new(len: usize) -> HostPool {
        let layout = std::alloc::Layout::from_size_align(len.max(PAGE as usize), PAGE as usize).expect("page layout");
        // SAFETY: a non-zero size.
        let base = unsafe { std::alloc::alloc(layout) };
        if base.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        HostPool { base, len: layout.size(), next: 0 }
    }

    /// `len` bytes (a multiple of the page size) nobody holds this run.
    fn take(&mut self, len: u64) -> Option<*mut u8> {
        let len = len as usize;
        if self.len - self.next < len {
            return None;
        }
        // SAFETY: within the allocation.
        let ptr = unsafe { self.base.add(self.next) };
        self.next += len;
        Some(ptr)
    }

    /// Every region taken is unmapped: hand them out again.
    fn reclaim(&mut self) {
        self.next = 0;
    }
}

impl Drop for HostPool {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len, PAGE as usize).expect("page layout");
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.base, layout) };
    }
}

/// Map `len` bytes at `addr` with `prot`, backed by the pool when it has
/// room, and fill them with `fill` (every byte is written: pool memory holds
/// the last run's bytes).
fn map_filled(
    uc: &mut Unicorn<'_, RunState>,
    addr: u64,
    len: u64,
    prot: Prot,
    fill: impl FnOnce(&mut [u8]),
) -> Result<(), uc_error> {
    match uc.get_data_mut().pool.take(len) {
        Some(ptr) => {
            // SAFETY: `len` bytes of the pool no other region holds until
            // the next `reclaim`, which comes after every region is unmapped.
            let bytes = unsafe { std::slice::from_raw_parts_mut(ptr, len as usize) };
            fill(bytes);
            // SAFETY: the pool outlives the mapping (see above; the pool is
            // dropped with the emulator, after `uc_close`).
            unsafe { uc.mem_map_ptr(addr, len, prot, ptr.cast()) }
        }
        None => {
            uc.mem_map(addr, len, prot)?;
            let mut bytes = vec![0u8; len as usize];
            fill(&mut bytes);
            uc.mem_write(addr, &bytes)
        }
    }
}

/// State the hooks share with the run loop.
pub struct RunState {
    pub code: Range<u64>,
    /// For each code offset: does an instruction starting here possibly hold a relocated field?
    maybe_site: Vec<bool>,
    /// (relocation index, field address) sorted by address.
    pub fields: Vec<(usize, u64)>,
    sites: Vec<SiteObservation>,
    instructions: u64,
    limit: u64,
    last_pc: u64,
    /// Set when the program counter left the code.
    left_to: Option<u64>,
    limit_hit: bool,
    /// Regions (address, length) mapped on demand during this run.
    demand_pages: Vec<(u64, u64)>,
    pub seed: u64,
    heap: u64,
    heap_size: u64,
    interesting: Vec<u64>,
    /// Observations per relocation are capped (loops re-run the same site).
    per_site: Vec<u16>,
    /// The stencil's data part, to tell a write into data from one into code.
    data: Range<u64>,
    /// 3.14+: the trace's trampolines (veneers to far externs), part of the image.
    pub trampolines: Range<u64>,
    /// Address of the access that faulted (write-protect, unmappable).
    fault_address: Option<u64>,
    /// The run hit [`DEMAND_PAGE_LIMIT`].
    budget_hit: bool,
    /// Wall-clock deadline of the run (a backstop: the instruction budget
    /// normally ends runs first, deterministically).
    deadline: std::time::Instant,
    time_hit: bool,
    /// One past the highest mappable address.
    user_end: u64,
    /// Registers (bit n: register n, as the machine numbers them) whose
    /// value a relocation site formed and nothing overwrote since: a jump
    /// through one goes where a relocation said. Kept by [`Machine::step`].
    pub formed: u64,
    /// aarch64: the link register holds the return address of a `bl` into
    /// the code itself (3.13's inline veneers, `movz/movk x8; br x8`), so
    /// a `br` out of the code is that call's. Kept by [`Machine::step`].
    pub linked_into_code: bool,
    /// The patched code.
    pub code_bytes: Vec<u8>,
    /// Per code offset: 0 not looked at yet, 1 may run, 2 forbidden ([`Machine::forbidden`]).
    checked: Vec<u8>,
    /// The run reached a forbidden instruction here (it did not run it).
    forbidden_at: Option<u64>,
    /// Bit n: register n (as the machine numbers them) is the platform's.
    pub reserved_mask: u32,
    /// The run reached an instruction writing a reserved register here.
    pub reserved_at: Option<u64>,
    /// Per relocation: the instruction objdump listed there (before
    /// patching), when the machine asks for it.
    pub originals: Vec<Vec<u8>>,
    /// Code offsets of the last [`TRAIL_LEN`] instructions run (a ring,
    /// indexed by the instruction count).
    trail: Vec<u32>,
    /// Addresses of the externs that are functions ([`Placement::functions`]).
    functions: Vec<u64>,
    /// What an access [`on_unmapped`] refused to make memory up for was
    /// (a constant NULL address, a function's code): the run's fault.
    refused: Option<Fault>,
    /// Host memory behind the run's regions.
    pool: HostPool,
    /// Steered runs: per code offset, is a steerable branch there ([`Flow`]).
    steerable: Vec<bool>,
    /// Steered runs: where each forced branch goes instead, by code offset.
    force: Vec<(u32, u32)>,
    /// The run was sent on at this address by a forced branch.
    redirect: Option<u64>,
    /// Steered runs: [`Trace::branches`].
    branches: Vec<(u32, u32)>,
}

impl RunState {
    /// Code offsets of the last [`TRAIL_LEN`] instructions run, newest (the
    /// one running) first.
    pub fn trail(&self) -> impl Iterator<Item = usize> + '_ {
        let n = self.instructions as usize;
        (0..n.min(TRAIL_LEN)).map(move |back| self.trail[(n - 1 - back) % TRAIL_LEN] as usize)
    }

    /// Does the `len` bytes long instruction at code offset `offset` hold a
    /// relocated field (its value is a hole's)?
    pub fn holds_field(&self, offset: usize, len: usize) -> bool {
        let start = self.code.start + offset as u64;
        let first = self.fields.partition_point(|(_, f)| *f < start);
        self.fields.get(first).is_some_and(|(_, f)| *f < start + len as u64)
    }

    pub fn contents(&self) -> Contents<'_> {
        Contents { seed: self.seed, heap: self.heap, heap_size: self.heap_size, interesting: &self.interesting }
    }
}

pub(crate) const SITE_OBSERVATION_CAP: u16 = 8;

/// Runs one emulator makes before a new one replaces it: a new emulator per
/// run costs about 40% of the throughput, one per 16 runs a few percent,
/// and memory stays flat however many runs a stencil has.
pub const RUNS_PER_EMULATOR: u32 = 16;

/// Bytes of translated host code one emulator may hold. Unicorn's default
/// (1 GiB) costs time to set up and tear down per emulator; one run
/// translates a few KiB, and a full buffer is only flushed, never an error.
const TCG_BUFFER_SIZE: u32 = TCG_BUFFER_MIB << 20;
const TCG_BUFFER_MIB: u32 = 4;

/// `uc_ctl_set_tcg_buffer_size`, which the Rust binding lacks. Must come
/// before anything initializes the machine.
fn set_tcg_buffer_size(uc: &mut Unicorn<'static, RunState>, size: u32) -> Result<(), String> {
    use unicorn_engine::unicorn_const::{uc_ctl, ControlType};
    let control = ControlType(ControlType::TCG_BUFFER_SIZE.0 | (1 << 26) | ControlType::IO_WRITE.0);
    // SAFETY: a live handle; the control takes one uint32_t argument.
    let e = unsafe { uc_ctl(uc.get_handle(), control, size) };
    if e == uc_error::OK {
        Ok(())
    } else {
        Err(format!("TCG buffer size: {e:?}"))
    }
}

/// A Unicorn engine for one machine. One per thread; every run starts from an
/// identical emulator (see [`UnicornEngine::reset`]), mapping only what each run needs.
pub struct UnicornEngine<M: Machine> {
    uc: Unicorn<'static, RunState>,
    /// The CPU state of a new emulator.
    pristine: Context,
    /// Runs made on `uc`.
    runs: u32,
    convention: Convention,
    /// The instruction budget of a run.
    limit: u64,
    /// Regions mapped for the current run (code, data).
    fixed: Vec<(u64, u64)>,
    machine: std::marker::PhantomData<M>,
}

impl<M: Machine> UnicornEngine<M> {
    pub fn new(convention: Convention, limit: u64) -> Result<UnicornEngine<M>, String> {
        let (uc, pristine) = Self::emulator(limit, HostPool::new(HOST_POOL_BYTES))?;
        Ok(UnicornEngine {
            uc,
            pristine,
            runs: 0,
            convention,
            limit,
            fixed: Vec::new(),
            machine: std::marker::PhantomData,
        })
    }

    /// A new emulator, hooks installed, nothing mapped, and its CPU state
    /// as it starts (what every run restores).
    fn emulator(limit: u64, pool: HostPool) -> Result<(Unicorn<'static, RunState>, Context), String> {
        let state = RunState {
            code: 0..0,
            maybe_site: Vec::new(),
            fields: Vec::new(),
            sites: Vec::new(),
            instructions: 0,
            limit,
            last_pc: 0,
            left_to: None,
            limit_hit: false,
            demand_pages: Vec::new(),
            seed: 0,
            heap: 0,
            heap_size: 0,
            interesting: Vec::new(),
            per_site: Vec::new(),
            data: 0..0,
            trampolines: 0..0,
            fault_address: None,
            budget_hit: false,
            deadline: std::time::Instant::now(),
            time_hit: false,
            user_end: M::USER_END,
            formed: 0,
            code_bytes: Vec::new(),
            checked: Vec::new(),
            forbidden_at: None,
            reserved_mask: 0,
            reserved_at: None,
            trail: vec![0; TRAIL_LEN],
            functions: Vec::new(),
            linked_into_code: false,
            refused: None,
            originals: Vec::new(),
            pool,
            steerable: Vec::new(),
            force: Vec::new(),
            redirect: None,
            branches: Vec::new(),
        };
        let mut uc = Unicorn::new_with_data(M::ARCH, M::MODE, state)
            .map_err(|e| format!("cannot start Unicorn {}: {e:?}", M::NAME))?;
        set_tcg_buffer_size(&mut uc, TCG_BUFFER_SIZE)?;
        M::init(&mut uc)?;
        uc.add_code_hook(1, 0, on_instruction::<M>).map_err(|e| format!("code hook: {e:?}"))?;
        uc.add_mem_hook(HookType::MEM_READ_UNMAPPED | HookType::MEM_WRITE_UNMAPPED, 1, 0, on_unmapped::<M>)
            .map_err(|e| format!("memory hook: {e:?}"))?;
        uc.add_mem_hook(HookType::MEM_WRITE_PROT, 1, 0, |uc, _, addr, _, _| {
            uc.get_data_mut().fault_address = Some(addr);
            false
        })
        .map_err(|e| format!("memory hook: {e:?}"))?;
        let pristine = uc.context_init().map_err(|e| format!("CPU context: {e:?}"))?;
        Ok((uc, pristine))
    }

    pub fn convention(&self) -> &Convention {
        &self.convention
    }

    /// Start every run from the same state: nothing of the previous run
    /// (registers, flags, SIMD and system state, mappings, translated code,
    /// hook state) survives. Every [`RUNS_PER_EMULATOR`] runs the emulator
    /// is replaced by a new one (QEMU keeps bookkeeping for every mapping
    /// ever made, and only closing the emulator frees it); in between, the
    /// pristine CPU context is restored, everything mapped is unmapped and
    /// the translation cache and TLB are flushed.
    fn reset(&mut self) -> Result<(), String> {
        self.runs += 1;
        let pages = std::mem::take(&mut self.uc.get_data_mut().demand_pages);
        for (p, len) in pages {
            let _ = self.uc.mem_unmap(p, len);
        }
        for (a, len) in std::mem::take(&mut self.fixed) {
            let _ = self.uc.mem_unmap(a, len);
        }
        self.uc.get_data_mut().pool.reclaim();
        if self.runs > RUNS_PER_EMULATOR {
            let pool = std::mem::replace(&mut self.uc.get_data_mut().pool, HostPool::new(0));
            (self.uc, self.pristine) = Self::emulator(self.limit, pool)?;
            self.runs = 1;
            return Ok(());
        }
        self.uc.context_restore(&self.pristine).map_err(|e| format!("CPU context: {e:?}"))?;
        self.uc.ctl_flush_tb().map_err(|e| format!("flush: {e:?}"))?;
        self.uc.ctl_flush_tlb().map_err(|e| format!("flush: {e:?}"))?;
        Ok(())
    }

    /// Map code and data read+execute (CPython marks the whole allocation
    /// R-X before running it), pages shared by both once.
    fn map_image(&mut self, image: &Image) -> Result<(), String> {
        let mut pages: Vec<Range<u64>> = Vec::new();
        // One guard page of traps after the code: running off the end must
        // be seen by the code hook, not fail inside Unicorn's translator
        // (which then reports the block's start as the faulting PC).
        let code_len = image.code.len() as u64 + PAGE;
        let rest =
            image.regions().filter(|(r, _, _)| *r != crate::patch::Region::Code).map(|(_, a, b)| (a, b.len() as u64));
        for (addr, len) in std::iter::once((image.code_addr, code_len)).chain(rest) {
            if len == 0 {
                continue;
            }
            let start = addr & !(PAGE - 1);
            let end = (addr + len + PAGE - 1) & !(PAGE - 1);
            pages.push(start..end.min(M::USER_END));
        }
        pages.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<u64>> = Vec::new();
        for r in pages {
            match merged.last_mut() {
                Some(m) if r.start <= m.end => m.end = m.end.max(r.end),
                _ => merged.push(r),
            }
        }
        for r in merged {
            // Traps everywhere the image does not cover, then the image.
            let fill = |bytes: &mut [u8]| {
                for (i, b) in bytes.iter_mut().enumerate() {
                    *b = M::GUARD[i % 4];
                }
                for (_, addr, part) in image.regions() {
                    let (lo, hi) = (addr.max(r.start), (addr + part.len() as u64).min(r.end));
                    if lo < hi {
                        let at = (lo - r.start) as usize;
                        bytes[at..at + (hi - lo) as usize]
                            .copy_from_slice(&part[(lo - addr) as usize..(hi - addr) as usize]);
                    }
                }
            };
            map_filled(&mut self.uc, r.start, r.end - r.start, Prot::READ | Prot::EXEC, fill)
                .map_err(|e| format!("cannot map {:#x}..{:#x}: {e:?}", r.start, r.end))?;
            self.fixed.push((r.start, r.end - r.start));
        }
        let (s, e) = (image.code_addr & !(PAGE - 1), image.code_addr + image.code.len() as u64 + PAGE);
        let _ = self.uc.ctl_remove_cache(s, e);
        Ok(())
    }

    fn prepare(&mut self, stencil: &Stencil, placement: &Placement, image: &Image) {
        let code = image.code_addr..image.code_addr + image.code.len() as u64;
        let mut maybe_site = vec![false; image.code.len()];
        let mut fields: Vec<(usize, u64)> = Vec::new();
        for (i, r) in stencil.relocations.iter().enumerate() {
            fields.push((i, image.code_addr + r.offset));
            let lo = r.offset.saturating_sub(M::SITE_LOOKBACK) as usize;
            for flag in maybe_site.iter_mut().take(r.offset as usize + 1).skip(lo) {
                *flag = true;
            }
        }
        fields.sort_by_key(|f| f.1);
        // Made-up words are sometimes an extern's address (so type checks
        // pass), never a function's: a made-up object there would be its code.
        let interesting: Vec<u64> =
            placement.externs.values().copied().filter(|a| !placement.functions.contains(a)).collect();
        let originals = if M::USES_ORIGINALS {
            let listed = |offset| stencil.instruction_at(offset).map(|i| i.bytes.clone()).unwrap_or_default();
            stencil.relocations.iter().map(|r| listed(r.offset)).collect()
        } else {
            Vec::new()
        };
        let st = self.uc.get_data_mut();
        st.originals = originals;
        st.code = code;
        st.data = image.data_addr..image.data_addr + image.data.len() as u64;
        let (t, bytes) = image.bytes_of(crate::patch::Region::Trampolines);
        st.trampolines = t..t + bytes.len() as u64;
        st.fault_address = None;
        st.budget_hit = false;
        st.time_hit = false;
        st.deadline = std::time::Instant::now() + super::RUN_TIME_LIMIT;
        st.maybe_site = maybe_site;
        st.per_site = vec![0; stencil.relocations.len()];
        st.fields = fields;
        st.sites.clear();
        st.formed = 0;
        st.code_bytes = image.code.clone();
        st.checked = vec![0; image.code.len()];
        st.forbidden_at = None;
        st.reserved_at = None;
        st.reserved_mask = M::register_mask(self.convention.c_abi.reserved);
        st.refused = None;
        st.steerable.clear();
        st.force.clear();
        st.redirect = None;
        st.branches.clear();
        st.functions.clone_from(&placement.functions);
        st.linked_into_code = false;
        st.instructions = 0;
        st.last_pc = 0;
        st.left_to = None;
        st.limit_hit = false;
        st.seed = placement.contents_seed;
        st.heap = placement.heap;
        st.heap_size = placement.heap_size;
        st.interesting = interesting;
    }

    fn set_entry_registers(&mut self, stencil: &Stencil, placement: &Placement) -> (u64, bool) {
        let by_call = entered_by_call(stencil);
        // Every register starts with made-up contents; the convention's
        // three carry the fake interpreter state.
        for (i, r) in M::GPRS.iter().enumerate() {
            let v = self.uc.get_data().contents().word(placement.contents_seed ^ (i as u64 * 8));
            let _ = self.uc.reg_write(*r, v);
        }
        let conv = &self.convention;
        let values = [placement.frame, placement.stack_pointer, placement.tstate];
        // Entered as a function (trampoline, shim): the C argument registers.
        let names = if by_call { conv.c_abi.args } else { [conv.frame, conv.stack_pointer, conv.tstate] };
        let regs = names.map(M::register);
        if !(by_call && M::ARGS_ON_STACK) {
            for (r, v) in regs.iter().zip(values) {
                let _ = self.uc.reg_write(*r, v);
            }
        }
        let sp = M::enter(&mut self.uc, placement.machine_sp);
        if by_call && M::ARGS_ON_STACK {
            let word = M::WORD as usize;
            let mut args = Vec::with_capacity(3 * word);
            for v in values {
                args.extend_from_slice(&v.to_le_bytes()[..word]);
            }
            ensure_mapped(&mut self.uc, sp + M::WORD, args.len());
            let _ = self.uc.mem_write(sp + M::WORD, &args);
        }
        (sp, by_call)
    }

    /// Was leaving the code at `last_pc` a call, a jump, or a return?
    fn transfer_kind(&self, last_pc: u64, target: u64) -> Transfer {
        let st = self.uc.get_data();
        let mut bytes = [0u8; 16];
        let n = (st.code.end.saturating_sub(last_pc)).min(M::MAX_INSN as u64) as usize;
        if last_pc == 0 || self.uc.mem_read(last_pc, &mut bytes[..n]).is_err() {
            return Transfer::Exit(ExitKind::Jump, false);
        }
        M::classify(&bytes[..n], last_pc, target, st)
    }

    /// Play the callee: record the call, return a made-up value, scramble
    /// the caller-saved registers, return as the machine does.
    fn stub_return(&mut self, trace: &mut Trace, from: u64, target: u64) -> Option<u64> {
        let (sp, ret) = M::callee(&mut self.uc)?;
        let n = trace.calls.len();
        let value = self.uc.get_data().contents().return_value(n);
        trace.calls.push(CallRecord { from, target, sp, returned: value });
        let _ = self.uc.reg_write(M::RETURN_VALUE, value);
        let seed = self.uc.get_data().seed;
        for (i, r) in self.convention.c_abi.caller_saved.iter().enumerate() {
            let _ = self.uc.reg_write(M::register(r), splitmix(seed ^ (n as u64) << 8 ^ i as u64));
        }
        M::finish_stub(&mut self.uc, sp);
        Some(ret)
    }

    /// Padding at `addr`: a zero word (aarch64's `udf #0`, which CPython
    /// pads code with and no compiler places after a call that returns).
    /// Checking the word alone, not all the way to the end, matters for 3.13
    /// darwin stencils whose inline veneers follow the padding.
    fn padding_from(&self, addr: u64) -> bool {
        if !M::ZERO_PADDING {
            return false;
        }
        let mut word = [0u8; 4];
        let inside = addr.checked_add(4).is_some_and(|end| end <= self.uc.get_data().code.end);
        inside && self.uc.mem_read(addr, &mut word).is_ok() && word == [0; 4]
    }

    fn classify_fault(&self, e: uc_error, pc: u64) -> RunEnd {
        let st = self.uc.get_data();
        let address = st.fault_address.unwrap_or(0);
        if let Some(fault) = M::fault(e) {
            return RunEnd::Fault { fault, pc, address };
        }
        let fault = match e {
            // Code and data are mapped read+execute only: any write there is the stencil's.
            uc_error::WRITE_PROT if st.data.contains(&address) => Fault::WriteIntoData,
            uc_error::WRITE_PROT if st.code.contains(&address) => Fault::WriteIntoCode,
            // Padding beside the image: a made-up pointer strayed there.
            uc_error::WRITE_PROT => Fault::Unmappable,
            uc_error::INSN_INVALID => {
                let off = pc.wrapping_sub(st.code.start) as usize;
                let bytes = st.code_bytes.get(off..).unwrap_or_default();
                M::invalid(&bytes[..bytes.len().min(M::MAX_INSN)], pc)
            }
            uc_error::READ_UNMAPPED | uc_error::WRITE_UNMAPPED if st.refused.is_some() => st.refused.unwrap(),
            uc_error::READ_UNMAPPED | uc_error::WRITE_UNMAPPED if st.budget_hit => Fault::MemoryBudget,
            uc_error::READ_UNMAPPED | uc_error::WRITE_UNMAPPED | uc_error::MAP => Fault::Unmappable,
            _ => Fault::Other,
        };
        RunEnd::Fault { fault, pc, address }
    }
}

/// One run's starting state, for a driver outside stencilcheck
/// (`bench --export-runs`, read by `scripts/baseline.py`): the placed,
/// patched image and every register and byte the run starts with, so that
/// driver runs exactly the instructions this engine runs.
#[derive(Clone, Debug, Serialize)]
pub struct ExportedRun {
    pub stencil: String,
    pub placement: u32,
    /// Unicorn's architecture and mode numbers.
    pub arch: i32,
    pub mode: i32,
    /// Every image region: address and bytes (`48 8b 05`), mapped read+execute.
    pub regions: Vec<(u64, String)>,
    /// The code: where leaving it is a call or an exit.
    pub code: (u64, u64),
    /// Unicorn register number and value at entry.
    pub registers: Vec<(i32, u64)>,
    /// Bytes put into made-up memory before entry (the return address).
    pub writes: Vec<(u64, String)>,
    /// What made-up memory and stub return values are made from ([`Contents`]).
    pub seed: u64,
    pub heap: u64,
    pub interesting: Vec<u64>,
    /// The C registers a stub scrambles, the one it returns in, the stack pointer.
    pub caller_saved: Vec<i32>,
    pub return_register: i32,
    pub stack_register: i32,
    pub instruction_limit: u64,
}

impl<M: Machine> UnicornEngine<M> {
    /// The state [`Engine::run`] would start `stencil` in at `placement`.
    pub fn export(&mut self, stencil: &Stencil, placement: &Placement, image: &Image) -> Result<ExportedRun, String> {
        self.reset()?;
        self.map_image(image)?;
        self.prepare(stencil, placement, image);
        let (sp, _) = self.set_entry_registers(stencil, placement);
        let mut registers: Vec<(i32, u64)> = Vec::new();
        for r in M::GPRS.iter().chain([&M::SP]) {
            registers.push(((*r).into(), self.uc.reg_read(*r).map_err(|e| format!("{e:?}"))?));
        }
        let mut word = vec![0u8; M::WORD as usize];
        self.uc.mem_read(sp, &mut word).map_err(|e| format!("{e:?}"))?;
        let st = self.uc.get_data();
        Ok(ExportedRun {
            stencil: stencil.name.clone(),
            placement: placement.index,
            arch: M::ARCH as i32,
            mode: M::MODE.0 as i32,
            regions: image
                .regions()
                .map(|(_, a, b)| (a, crate::model::hex_bytes(b)))
                .filter(|(_, b)| !b.is_empty())
                .collect(),
            code: (st.code.start, st.code.end),
            registers,
            writes: vec![(sp, crate::model::hex_bytes(&word))],
            seed: st.seed,
            heap: st.heap,
            interesting: st.interesting.clone(),
            caller_saved: self.convention.c_abi.caller_saved.iter().map(|r| M::register(r).into()).collect(),
            return_register: M::RETURN_VALUE.into(),
            stack_register: M::SP.into(),
            instruction_limit: self.limit,
        })
    }
}

impl<M: Machine> Engine for UnicornEngine<M> {
    fn run(&mut self, stencil: &Stencil, placement: &Placement, image: &Image) -> Trace {
        self.run_with(stencil, placement, image, None)
    }

    fn run_steered(
        &mut self,
        stencil: &Stencil,
        placement: &Placement,
        image: &Image,
        steering: &Steering,
    ) -> Option<Trace> {
        Some(self.run_with(stencil, placement, image, Some(steering)))
    }

    fn flows(&self, image: &Image) -> Option<Vec<Flow>> {
        Some(code_flows::<M>(&image.code, image.code_addr))
    }
}

/// The code's instructions from offset 0 on, each with its [`Flow`]
/// (bytes that do not decode are stepped over one at a time).
fn code_flows<M: Machine>(code: &[u8], base: u64) -> Vec<Flow> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < code.len() {
        let end = (offset + M::MAX_INSN).min(code.len());
        match M::flow(&code[offset..end], base + offset as u64, offset as u32) {
            Some(flow) if flow.len > 0 => {
                offset += flow.len as usize;
                out.push(flow);
            }
            _ => offset += 1,
        }
    }
    out
}

impl<M: Machine> UnicornEngine<M> {
    /// One run; steered (branches recorded, some forced) when `steering` is given.
    fn run_with(
        &mut self,
        stencil: &Stencil,
        placement: &Placement,
        image: &Image,
        steering: Option<&Steering>,
    ) -> Trace {
        let mut trace = Trace { entry: image.code_addr, ..Trace::default() };
        if let Err(e) = self.reset().and_then(|()| self.map_image(image)) {
            trace.end = Some(RunEnd::Fault { fault: Fault::Other, pc: image.code_addr, address: 0 });
            eprintln!("note: {e}");
            return trace;
        }
        self.prepare(stencil, placement, image);
        if let Some(steering) = steering {
            let st = self.uc.get_data_mut();
            st.steerable = vec![false; image.code.len()];
            for flow in code_flows::<M>(&image.code, image.code_addr).into_iter().filter(|f| f.steerable) {
                st.steerable[flow.offset as usize] = true;
            }
            st.force.clone_from(&steering.force);
        }
        let (entry_sp, by_call) = self.set_entry_registers(stencil, placement);
        trace.entry_sp = entry_sp;
        trace.entered_by_call = by_call;
        let mut pc = image.code_addr;
        if debug_trace() {
            for r in self.uc.mem_regions().unwrap_or_default() {
                eprintln!("region {:#x}..={:#x} {:?}", r.begin, r.end, r.perms);
            }
        }
        let end = loop {
            let result = self.uc.emu_start(pc, u64::MAX, 0, 0);
            let st = self.uc.get_data();
            let here = self.uc.pc_read().unwrap_or(0);
            if debug_trace() {
                eprintln!("emu_start -> {result:?} pc={here:#x} left_to={:?}", st.left_to);
            }
            if let Some(pc) = st.reserved_at {
                break RunEnd::Fault { fault: Fault::ReservedRegister, pc, address: 0 };
            }
            if let Some(pc) = st.forbidden_at {
                break RunEnd::Fault { fault: Fault::Forbidden, pc, address: 0 };
            }
            if st.limit_hit {
                break RunEnd::InstructionLimit { limit: st.limit, pc: here };
            }
            if st.time_hit {
                break RunEnd::TimeLimit { pc: here };
            }
            if let Some(to) = self.uc.get_data_mut().redirect.take() {
                pc = to;
                continue;
            }
            let st = self.uc.get_data();
            let left_to = match (st.left_to, &result) {
                (Some(t), _) => t,
                // Fetching from unmapped/non-executable memory: control left the code.
                (None, Err(e)) if is_fetch_error(*e) => here,
                (None, Err(e)) => break self.classify_fault(*e, here),
                (None, Ok(())) => here,
            };
            let last_pc = st.last_pc;
            match self.transfer_kind(last_pc, left_to) {
                Transfer::Call => {
                    if trace.calls.len() >= CALL_LIMIT {
                        break RunEnd::CallLimit { pc: left_to };
                    }
                    let callee = M::resolve(&self.uc, left_to);
                    match self.stub_return(&mut trace, last_pc, callee) {
                        Some(ret) if self.uc.get_data().code.contains(&ret) && !self.padding_from(ret) => pc = ret,
                        Some(ret) => {
                            let sp = self.uc.reg_read(M::SP).unwrap_or(0);
                            let kind = ExitKind::AfterNoReturnCall;
                            break RunEnd::Exit { kind, from: last_pc, target: ret, sp, computed: false };
                        }
                        None => break RunEnd::Fault { fault: Fault::Unmappable, pc: left_to, address: 0 },
                    }
                    let st = self.uc.get_data_mut();
                    st.left_to = None;
                }
                Transfer::Exit(kind, computed) => {
                    let sp = M::exit_sp(kind, self.uc.reg_read(M::SP).unwrap_or(0));
                    let target = M::resolve(&self.uc, left_to);
                    break RunEnd::Exit { kind, from: last_pc, target, sp, computed };
                }
            }
        };
        let st = self.uc.get_data_mut();
        trace.sites = std::mem::take(&mut st.sites);
        trace.branches = std::mem::take(&mut st.branches);
        trace.instructions = st.instructions;
        trace.end = Some(end);
        trace
    }
}

fn is_fetch_error(e: uc_error) -> bool {
    matches!(e, uc_error::FETCH_UNMAPPED | uc_error::FETCH_PROT)
}

/// `STENCILCHECK_DEBUG=1` prints every emulated instruction (read once).
pub fn debug_trace() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("STENCILCHECK_DEBUG").is_some())
}

/// The code hook: count, stop on leaving the code, observe relocation sites.
fn on_instruction<M: Machine>(uc: &mut Unicorn<'_, RunState>, addr: u64, size: u32) {
    let st = uc.get_data_mut();
    if !st.code.contains(&addr) {
        if !st.steerable.is_empty() {
            record_branch(st, st.last_pc, LEFT_THE_CODE);
        }
        st.left_to = Some(addr);
        let _ = uc.emu_stop();
        return;
    }
    st.instructions += 1;
    if st.instructions > st.limit {
        st.limit_hit = true;
        let _ = uc.emu_stop();
        return;
    }
    if st.instructions % 4096 == 0 && std::time::Instant::now() > st.deadline {
        st.time_hit = true;
        let _ = uc.emu_stop();
        return;
    }
    let offset = (addr - st.code.start) as usize;
    if st.checked[offset] == 0 {
        let end = st.code_bytes.len().min(offset + M::MAX_INSN);
        st.checked[offset] = if M::forbidden(&st.code_bytes[offset..end], addr) { 2 } else { 1 };
    }
    if st.checked[offset] == 2 {
        st.forbidden_at = Some(addr);
        let _ = uc.emu_stop();
        return;
    }
    let previous = st.last_pc;
    st.last_pc = addr;
    st.trail[(st.instructions as usize - 1) % TRAIL_LEN] = offset as u32;
    if !st.steerable.is_empty() {
        record_branch(st, previous, offset as u32);
    }
    if debug_trace() {
        eprintln!("{addr:#x} {}", M::debug_registers(uc));
    }
    let st = uc.get_data_mut();
    let offset = (addr - st.code.start) as usize;
    if M::TRACKS_REGISTERS {
        let site = st.maybe_site[offset];
        M::step(st, offset, site);
        if st.reserved_at.is_some() {
            let _ = uc.emu_stop();
            return;
        }
    }
    if st.maybe_site[offset] {
        observe::<M>(uc, addr, size);
    }
    let st = uc.get_data_mut();
    if st.steerable.get(offset) == Some(&true) {
        if let Some(&(_, to)) = st.force.iter().find(|(at, _)| *at as usize == offset) {
            // The branch does not run: the run goes on where it was sent.
            st.redirect = Some(st.code.start + to as u64);
            let _ = uc.emu_stop();
        }
    }
}

/// The "offset run next" of a branch that left the code ([`Trace::branches`]).
pub const LEFT_THE_CODE: u32 = u32::MAX;

/// Branch outcomes one steered run keeps (a loop re-runs the same few).
const BRANCH_RECORD_CAP: usize = 4096;

/// The instruction at `offset` runs after the one at `previous`: when that
/// was a steerable branch, remember which way it went.
fn record_branch(st: &mut RunState, previous: u64, offset: u32) {
    if !st.code.contains(&previous) {
        return;
    }
    let from = (previous - st.code.start) as u32;
    if st.steerable[from as usize] && st.branches.len() < BRANCH_RECORD_CAP && !st.branches.contains(&(from, offset)) {
        st.branches.push((from, offset));
    }
}

fn observe<M: Machine>(uc: &mut Unicorn<'_, RunState>, addr: u64, size: u32) {
    let end = addr + size as u64;
    let hits: Vec<(usize, u64)> = {
        let st = uc.get_data();
        st.fields.iter().filter(|(_, f)| (addr..end).contains(f)).copied().collect()
    };
    if hits.is_empty() {
        return;
    }
    let mut bytes = vec![0u8; size as usize];
    if uc.mem_read(addr, &mut bytes).is_err() {
        return;
    }
    for (i, field_addr) in hits {
        if uc.get_data().per_site[i] >= SITE_OBSERVATION_CAP {
            continue;
        }
        // Unreadable (unmappable) memory: the run's end will say so.
        let Some(effect) = M::site_effect(uc, i, addr, &bytes, field_addr) else { continue };
        let st = uc.get_data_mut();
        st.per_site[i] += 1;
        st.sites.push(SiteObservation { relocation: i, pc: addr, len: size, effect });
    }
}

/// Map (with made-up contents) any page of `addr..addr+len` not mapped yet.
pub fn ensure_mapped(uc: &mut Unicorn<'_, RunState>, addr: u64, len: usize) {
    // Never a function's first bytes: the access itself is to fault there
    // and be judged ([`on_unmapped`]).
    if touches_function(uc.get_data(), addr, len) {
        return;
    }
    let first = addr & !(PAGE - 1);
    let last = addr.saturating_add(len.max(1) as u64 - 1) & !(PAGE - 1);
    let mut page = first;
    loop {
        let mut probe = [0u8; 1];
        if uc.mem_read(page, &mut probe).is_err() {
            map_demand_page(uc, page);
        }
        if page >= last {
            break;
        }
        page += PAGE;
    }
}

/// Does `addr..addr+len` overlap a function extern's first bytes?
fn touches_function(st: &RunState, addr: u64, len: usize) -> bool {
    let end = addr.saturating_add(len.max(1) as u64);
    st.functions.iter().any(|&f| addr < f.saturating_add(FUNCTION_BYTES) && f < end)
}

/// Bytes at a function extern's address that count as its code (an
/// instruction or two: enough to catch a read of it as a pointer).
pub(crate) const FUNCTION_BYTES: u64 = 16;

fn map_demand_page(uc: &mut Unicorn<'_, RunState>, page: u64) -> bool {
    // Made-up integers are dereferenced as often as made-up pointers (a
    // stencil cannot tell them apart without a type check we may fail), so
    // the low pages are made up too: refusing them would end most runs early.
    if uc.get_data().demand_pages.len() >= DEMAND_PAGE_LIMIT {
        uc.get_data_mut().budget_hit = true;
        return false;
    }
    if page >= uc.get_data().user_end {
        return false;
    }
    // A page at a time: filling made-up contents costs per page, and with
    // pool memory a mapping is cheap (a chunk of 16 pages, most never read,
    // made the contents a third of the run).
    let st = uc.get_data();
    let interesting = st.interesting.clone();
    let contents = Contents { seed: st.seed, heap: st.heap, heap_size: st.heap_size, interesting: &interesting };
    let fill = |bytes: &mut [u8]| contents.fill(page, bytes);
    if map_filled(uc, page, PAGE, Prot::READ | Prot::WRITE, fill).is_err() {
        return false;
    }
    uc.get_data_mut().demand_pages.push((page, PAGE));
    true
}

/// Unmapped read or write: make the page up (never for fetches: code only
/// ever runs from the image) -- unless it is the NULL page and the address
/// is no made-up value.
fn on_unmapped<M: Machine>(
    uc: &mut Unicorn<'_, RunState>,
    _kind: MemType,
    addr: u64,
    size: usize,
    _value: i64,
) -> bool {
    // A function extern's first bytes are code: no stencil reads or writes
    // them (a data relocation pointed at a function, or a GOT slot lost).
    let refused = if touches_function(uc.get_data(), addr, size) {
        Some(Fault::FunctionAsData)
    } else if addr < NULL_PAGE_END && M::null_access_source(uc.get_data()) == AddressSource::Constant {
        Some(Fault::NullConstant)
    } else {
        None
    };
    if refused.is_some() {
        let st = uc.get_data_mut();
        st.refused = refused;
        st.fault_address = Some(addr);
        return false;
    }
    let mapped = map_demand_page(uc, addr & !(PAGE - 1));
    if !mapped {
        uc.get_data_mut().fault_address = Some(addr);
    }
    mapped
}

/// Little-endian value of up to 8 bytes.
pub fn le(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w[..b.len().min(8)].copy_from_slice(&b[..b.len().min(8)]);
    u64::from_le_bytes(w)
}
