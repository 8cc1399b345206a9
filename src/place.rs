//! Placement: where a stencil's code and data sit, where every symbol it
//! names lives, and what the instruction's fields hold, for one run.
//!
//! Placements are drawn from a seed so the same seed always gives the same
//! addresses; each (seed, stencil, index) triple has its own stream, so
//! `--stencil` or `--placement` filters never shift other runs.

use crate::error::BadInput;
use crate::execute::TransferClass;
use crate::model::{Section, Stencil, Symbol, Term, Value};
use crate::target::{Target, TargetInfo, Version};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::collections::BTreeMap;
use std::ops::Range;

pub const PAGE: u64 = 0x1000;

/// Which family of placement a run used (they stress different edges).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// As `_PyJIT_Compile` lays it out: data right after the trace's code,
    /// externs within reach of a relaxation (a normal process).
    Compact,
    /// Code and data anywhere their 32-bit holes allow, externs anywhere.
    Scattered,
    /// Data placed so one relative hole's displacement sits exactly on the
    /// signed 32-bit edge.
    RelativeEdge,
    /// Every extern more than 2 GiB away: relaxation must not happen.
    FarExterns,
    /// Externs exactly at the edge of relaxation reach (just in, just out).
    RelaxEdge,
    /// Code near the bottom of user space.
    Low,
    /// Code near the top of canonical user space.
    High,
}

#[derive(Clone, Debug, Serialize)]
pub struct Placement {
    pub index: u32,
    pub layout: Layout,
    pub code: u64,
    pub data: u64,
    /// 3.14+: the trace's one allocation around this stencil.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceLayout>,
    pub executor: u64,
    pub jump_target: u64,
    pub error_target: u64,
    pub top: u64,
    pub oparg: u16,
    pub operands: [u64; 2],
    pub target: u32,
    pub exit_index: u16,
    /// Address of every external symbol the stencil names.
    pub externs: BTreeMap<String, u64>,
    /// Fake interpreter state the run starts with.
    pub frame: u64,
    pub stack_pointer: u64,
    pub tstate: u64,
    /// Machine stack pointer at entry (points at the return-address slot).
    pub machine_sp: u64,
    /// Where fake heap objects live; memory contents point in here.
    pub heap: u64,
    pub heap_size: u64,
    /// Seeds the contents of memory read on demand, the values stubs return,
    /// and what was in the code/data memory before the emit function ran.
    pub contents_seed: u64,
    /// A patch function may read the memory at a symbol's address (the
    /// target's [`TargetInfo::relaxation_reads_symbols`]): mapped in the
    /// process, unknown to us. Otherwise a read outside the image is wild.
    #[serde(skip)]
    pub symbols_readable: bool,
    /// Addresses of the externs the stencil calls or jumps to: functions,
    /// whose bytes are code, never data the stencil may read or write.
    /// Empty from [`place`]: which externs are functions is the stencil's,
    /// the same for every placement, so the pipeline classifies once
    /// ([`function_externs`]) and fills this ([`Placement::with_functions`]).
    #[serde(skip)]
    pub functions: Vec<u64>,
}

/// How CPython 3.14+'s `_PyJIT_Compile` lays out the trace a stencil is
/// part of: one allocation of code | trampolines | data | GOT, the shim and
/// the other uops around this one, jump and error targets among their
/// instruction starts.
#[derive(Clone, Debug, Serialize)]
pub struct TraceLayout {
    /// The allocation: `start..end`, page-aligned.
    pub start: u64,
    pub end: u64,
    /// The trace's code: `start..code_end`; this stencil's at `code`.
    pub code: u64,
    pub code_end: u64,
    /// The trace's trampolines and the mask that sized them (the union of
    /// its stencils' `trampoline_mask`s, this one's included).
    pub trampolines: u64,
    pub trampoline_mask: Vec<u32>,
    pub trampoline_size: u64,
    /// This stencil's data, in the trace's data.
    pub data: u64,
    /// The trace's GOT and its mask (the union of its stencils' `got_mask`s).
    pub got: u64,
    pub got_mask: Vec<u32>,
}

/// Bit `n` of a CPython symbol mask.
fn mask_has(mask: &[u32], n: u32) -> bool {
    mask.get((n / 32) as usize).is_some_and(|w| w & (1 << (n % 32)) != 0)
}

/// How many ordinals below `n` a mask holds: the slot index of `n`.
fn mask_index(mask: &[u32], n: u32) -> u64 {
    let whole: u32 = mask.iter().take((n / 32) as usize).map(|w| w.count_ones()).sum();
    let part = mask.get((n / 32) as usize).map_or(0, |w| (w & ((1u32 << (n % 32)) - 1)).count_ones());
    (whole + part) as u64
}

impl TraceLayout {
    /// Ordinal `n`'s slot in the trace's GOT, when the trace has one.
    pub fn got_slot(&self, n: u32) -> Option<u64> {
        mask_has(&self.got_mask, n).then(|| self.got + 8 * mask_index(&self.got_mask, n))
    }
    /// Ordinal `n`'s trampoline, when the trace has one.
    pub fn trampoline_slot(&self, n: u32) -> Option<u64> {
        mask_has(&self.trampoline_mask, n)
            .then(|| self.trampolines + self.trampoline_size * mask_index(&self.trampoline_mask, n))
    }
    pub fn trampolines_len(&self) -> u64 {
        self.trampoline_size * self.trampoline_mask.iter().map(|w| w.count_ones() as u64).sum::<u64>()
    }
    pub fn got_len(&self) -> u64 {
        8 * self.got_mask.iter().map(|w| w.count_ones() as u64).sum::<u64>()
    }
    /// Where another uop of the trace starts (never inside this one),
    /// `align`ed as CPython pads every uop's code.
    fn instruction_start(&self, rng: &mut ChaCha8Rng, stencil: &Stencil, align: u64) -> u64 {
        let own = self.code..self.code + stencil.code_size().max(1);
        loop {
            let t = rng.gen_range(self.start..self.code_end) & !(align - 1);
            if !own.contains(&t) {
                return t;
            }
        }
    }
}

/// A 3.14+ trace around `stencil`: other uops' code before and after it
/// (the shim first), the trampolines and the GOT its masks and a few other
/// ordinals need, and other uops' data around its data.
fn lay_out_trace(
    rng: &mut ChaCha8Rng,
    sp: Space,
    layout: Layout,
    stencil: &Stencil,
    trampoline_size: u64,
    align: u64,
) -> TraceLayout {
    let code_size = stencil.code_size();
    let data_size = stencil.data_size();
    // Other uops' code: at least a shim's worth before, so targets exist on
    // both sides. RelativeEdge puts the code across a page boundary.
    let mut code_before = 64 + rng.gen_range(0..64 * 1024);
    if layout == Layout::RelativeEdge && code_size > 1 {
        let into_page = (code_before + rng.gen_range(1..code_size)) % PAGE;
        code_before += PAGE - into_page;
    }
    // Other uops' code is padded like this one's (a no-op where align is 1).
    code_before &= !(align - 1);
    let code_after = (64 + rng.gen_range(0..64 * 1024)) & !(align - 1);
    let trace_code = code_before + code_size + code_after;
    let widen = |rng: &mut ChaCha8Rng, own: &[u32]| {
        let mut mask = own.to_vec();
        mask.resize(mask.len().max(2), 0);
        for _ in 0..rng.gen_range(0..6) {
            let n = rng.gen_range(0..(mask.len() as u32 * 32));
            mask[(n / 32) as usize] |= 1 << (n % 32);
        }
        mask
    };
    let trampoline_mask = widen(rng, &stencil.trampoline_mask);
    let got_mask = widen(rng, &stencil.got_mask);
    let ones = |m: &[u32]| m.iter().map(|w| w.count_ones() as u64).sum::<u64>();
    let trampolines_len = trampoline_size * ones(&trampoline_mask);
    // Every stencil's data is a multiple of 8 bytes (CPython pads it).
    let mut data_before = 8 * rng.gen_range(0..8 * 1024);
    if layout == Layout::RelativeEdge && data_size > 8 {
        let into_page = (trace_code + trampolines_len + data_before + 8 * rng.gen_range(1..data_size / 8)) % PAGE;
        data_before += PAGE - into_page;
    }
    let data_after = 8 * rng.gen_range(0..8 * 1024);
    let got_len = 8 * ones(&got_mask);
    let total = trace_code + trampolines_len + data_before + data_size + data_after + got_len;
    let pages = total.div_ceil(PAGE) * PAGE;
    let margin = sp.margin(4 * GIB);
    let start = match layout {
        Layout::Low => sp.min + 4 * MIB + PAGE * rng.gen_range(0..16),
        Layout::High => (sp.end - pages - PAGE * rng.gen_range(1..16)) & !(PAGE - 1),
        _ => rng.gen_range(sp.min + margin..sp.end - margin - pages) & !(PAGE - 1),
    };
    let code = start + code_before;
    let trampolines = start + trace_code;
    let data = trampolines + trampolines_len + data_before;
    TraceLayout {
        start,
        end: start + pages,
        code,
        code_end: start + trace_code,
        trampolines,
        trampoline_mask,
        trampoline_size,
        data,
        got: data + data_size + data_after,
        got_mask,
    }
}

impl Placement {
    /// This placement with [`Placement::functions`] the addresses of `names`.
    pub fn with_functions(mut self, names: &std::collections::BTreeSet<String>) -> Placement {
        self.functions = names.iter().filter_map(|n| self.externs.get(n)).copied().collect();
        self
    }

    /// `_JIT_CONTINUE`: the next uop starts right after this one's code.
    pub fn continuation(&self, stencil: &Stencil) -> u64 {
        self.code.wrapping_add(stencil.code_size())
    }

    /// Where `offset` of a patch call's section lies: in the code, the data,
    /// or (3.14+, `offset` being an ordinal) the trace's GOT slot.
    pub fn address_of(&self, section: Section, offset: u64) -> Option<u64> {
        match section {
            Section::Code => Some(self.code + offset),
            Section::Data => Some(self.data + offset),
            Section::Got => self.trace.as_ref().and_then(|t| t.got_slot(offset as u32)),
        }
    }

    /// The run-time value of a patch expression, as the emit function computes it.
    pub fn value(&self, value: &Value, stencil: &Stencil) -> u64 {
        self.term(&value.term, stencil).wrapping_add(value.addend as u64)
    }

    pub fn term(&self, term: &Term, stencil: &Stencil) -> u64 {
        match term {
            Term::Zero => 0,
            Term::Code => self.code,
            Term::Data => self.data,
            Term::Continue => self.continuation(stencil),
            Term::Symbol(name) => self.symbol(&Symbol::classify(name), stencil).unwrap_or(0),
            Term::Executor => self.executor,
            Term::JumpTarget => self.jump_target,
            Term::ErrorTarget => self.error_target,
            Term::Top => self.top,
            Term::Oparg => self.oparg as u64,
            Term::Operand(n) => self.operands[(*n as usize).min(1)],
            Term::OperandLo(n) => self.operands[(*n as usize).min(1)] & 0xffff_ffff,
            Term::OperandHi(n) => self.operands[(*n as usize).min(1)] >> 32,
            Term::Target => self.target as u64,
            Term::ExitIndex => self.exit_index as u64,
            Term::GotSymbol(n) => self.trace.as_ref().and_then(|t| t.got_slot(*n)).unwrap_or(0),
            Term::Ordinal(n) => match stencil.ordinals.get(n) {
                Some(name) => self.externs.get(name).copied().unwrap_or(0),
                None => 0,
            },
        }
    }

    /// What a relocation's symbol S stands for in this placement. `None` for
    /// object-local symbols the stencil has no offset for (`stencil.locals`
    /// is filled by the object loader; a header does not say where
    /// `.L.str.3` starts).
    pub fn symbol(&self, symbol: &Symbol, stencil: &Stencil) -> Option<u64> {
        Some(match symbol {
            Symbol::Entry => self.code,
            Symbol::Continue => self.continuation(stencil),
            Symbol::JumpTarget => self.jump_target,
            Symbol::ErrorTarget => self.error_target,
            Symbol::Top => self.top,
            Symbol::Executor => self.executor,
            Symbol::Oparg => self.oparg as u64,
            Symbol::Operand(n) => self.operands[(*n as usize).min(1)],
            Symbol::OperandLo(n) => self.operands[(*n as usize).min(1)] & 0xffff_ffff,
            Symbol::OperandHi(n) => self.operands[(*n as usize).min(1)] >> 32,
            Symbol::Target => self.target as u64,
            Symbol::ExitIndex => self.exit_index as u64,
            Symbol::External(name) => *self.externs.get(name)?,
            Symbol::Local(name) => self.data.wrapping_add(*stencil.locals.get(name)?),
        })
    }
}

/// The order layouts cycle through: realistic placements twice as often,
/// every edge family at least once in any eight consecutive placements.
const LAYOUT_CYCLE: [Layout; 8] = [
    Layout::Compact,
    Layout::Scattered,
    Layout::FarExterns,
    Layout::RelativeEdge,
    Layout::Compact,
    Layout::RelaxEdge,
    Layout::Low,
    Layout::High,
];

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
/// Reach of a signed 32-bit displacement (x86-64's relaxation edge).
const REACH32: i64 = 1 << 31;
/// Space reserved for the fake heap (frames, objects, the machine stack).
const HEAP_SIZE: u64 = 64 * MIB;
/// Fake objects (frame, tstate, executor, what pointers in made-up memory
/// point at) sit in the arena's first MiB.
pub const HEAP_OBJECTS: u64 = MIB;
/// How much of a 3.13 trace's code may precede a stencil (its jump and
/// error targets lie in the trace's code).
const TRACE_CODE_BEFORE: u64 = 4 * MIB;
/// Machine stack: the top of the heap arena, below a guard gap.
const MACHINE_STACK_TOP_GAP: u64 = 64 * 1024;

/// All placements `0..count` of one stencil.
pub fn placements(target: Target, stencil: &Stencil, seed: u64, count: u32) -> Result<Vec<Placement>, BadInput> {
    (0..count).map(|i| place(target, stencil, seed, i)).collect()
}

/// The addresses placements may use: the target's user space.
#[derive(Clone, Copy)]
struct Space {
    min: u64,
    end: u64,
}

impl Space {
    /// `want` bytes kept free at either end of the space, or an eighth of
    /// the space where that is smaller (i686 has 4 GiB in all: the margins
    /// that keep 47-bit placements clear of the edges would leave nothing).
    fn margin(self, want: u64) -> u64 {
        want.min((self.end - self.min) / 8)
    }
}

/// Placement number `index` of `stencil` under `seed`. Fails only when the
/// stencil's own holes cannot all be satisfied at once (bad input).
pub fn place(target: Target, stencil: &Stencil, seed: u64, index: u32) -> Result<Placement, BadInput> {
    place_within(target, &(0..u64::MAX), stencil, seed, index)
}

/// [`place`], using only addresses in `limit` as well as the target's user
/// space (a patcher that runs real C needs addresses its host can map).
pub fn place_within(
    target: Target,
    limit: &Range<u64>,
    stencil: &Stencil,
    seed: u64,
    index: u32,
) -> Result<Placement, BadInput> {
    let mut rng = ChaCha8Rng::seed_from_u64(stream_seed(seed, &stencil.name, index));
    let layout = LAYOUT_CYCLE[index as usize % LAYOUT_CYCLE.len()];
    let info = target.info();
    let user = info.user_space();
    let sp = Space { min: user.start.max(limit.start), end: user.end.min(limit.end) };
    let constraints = Constraints::of(stencil, info);
    let span = constraints.data_offsets();
    if span.is_empty() {
        return Err(BadInput::at_line(
            "stencil",
            stencil.line,
            format!(
                "impossible placement of {}: its relative data holes cannot all reach one data address",
                stencil.name
            ),
        ));
    }
    let mut taken = Taken::default();
    let (code, data, trace) = match target.version {
        Version::V3_13 => {
            // 3.13's `_PyJIT_Compile` puts all of a trace's data after all of
            // its code: data never precedes the code that uses it.
            let span = span.start.max(stencil.code_size() as i64)..span.end;
            if span.is_empty() {
                return Err(BadInput::at_line(
                    "stencil",
                    stencil.line,
                    format!(
                        "impossible placement of {}: its relative data holes cannot reach data after its code",
                        stencil.name
                    ),
                ));
            }
            let mut code = pick_code(&mut rng, sp, layout, stencil, &span);
            if data_window(sp, stencil, code, &span).is_empty() {
                // Low/High put the code where its holes' data window leaves user
                // space: fall back to anywhere the window fits.
                code = pick_code(&mut rng, sp, Layout::Scattered, stencil, &span);
            }
            // CPython pads code and data to the target's alignment, so uops and
            // their data start aligned (a no-op where it is 1).
            let align = info.code_alignment();
            code &= !(align - 1);
            let data = pick_data(&mut rng, sp, layout, stencil, code, &span) & !(align - 1);
            taken.reserve(code, stencil.code_size().max(1));
            taken.reserve(data, stencil.data_size().max(1));
            (code, data, None)
        }
        Version::V3_14 => {
            let trace = lay_out_trace(&mut rng, sp, layout, stencil, info.trampoline_size(), info.code_alignment());
            taken.reserve(trace.start, trace.end - trace.start);
            (trace.code, trace.data, Some(trace))
        }
    };

    // Page-aligned, so fake objects sit on word boundaries like malloc's.
    let heap = pick_free(&mut rng, sp, &taken, HEAP_SIZE, |r| random_user(r, sp, HEAP_SIZE) & !(PAGE - 1));
    taken.reserve(heap, HEAP_SIZE);
    let mut externs = BTreeMap::new();
    for symbol in stencil.symbols() {
        if let Symbol::External(name) = &symbol {
            let site = constraints.first_site(&symbol).unwrap_or(code);
            let reach = constraints.reach_of(&symbol);
            let addr = pick_extern(&mut rng, sp, layout, &taken, code, site, reach.clone());
            // Aligned like code (a `bl` lands on an instruction; a no-op where
            // the alignment is 1), and still in reach.
            let align = info.code_alignment();
            let mut addr = addr & !(align - 1);
            if reach.is_some_and(|r| (addr.wrapping_sub(code) as i64) < r.start) {
                addr += align;
            }
            taken.reserve(addr, 16);
            externs.insert(name.clone(), addr);
        }
    }
    let mut targets = [0u64; 3];
    let terms = [Term::JumpTarget, Term::ErrorTarget, Term::Top];
    for i in 0..targets.len() {
        // A target a relative code hole names (aarch64 3.13's `b` to
        // instruction_starts[...]) lies in that hole's reach, like the trace
        // it is part of.
        let align = info.code_alignment();
        // 3.13: the trace's code is what lies before its data (other uops'
        // code before this one, up to a few MiB of it, and after it).
        let trace_code =
            (sp.min.max(code.saturating_sub(TRACE_CODE_BEFORE)) as i64 - code as i64)..(data as i64 - code as i64);
        let window = match constraints.reach_of_term(&terms[i]) {
            Some(r) => r.start.max(trace_code.start)..r.end.min(trace_code.end),
            None => trace_code,
        };
        // Distinct targets, so a swapped jump/error hole can never look right.
        let pick = |rng: &mut ChaCha8Rng| match &trace {
            Some(trace) => trace.instruction_start(rng, stencil, align),
            None => pick_target_within(rng, sp, layout, stencil, code, &window, align),
        };
        let mut t = pick(&mut rng);
        while targets[..i].contains(&t) {
            t = pick(&mut rng);
        }
        targets[i] = t;
    }
    let [jump_target, error_target, top] = targets;
    let heap_object = |rng: &mut ChaCha8Rng| heap + rng.gen_range(0..HEAP_OBJECTS - 0x1000) / 16 * 16;
    let mut operands = [pick_operand(&mut rng, heap), pick_operand(&mut rng, heap)];
    if user.end <= 1 << 32 {
        // A 32-bit CPython's operands are 32-bit values (pointers, versions,
        // indices); one a hole adds an offset to is an address, so it lies
        // in user space (`(instruction->operand & UINT32_MAX) + 0x12` is a
        // field of the executor).
        for (n, operand) in operands.iter_mut().enumerate() {
            *operand &= 0xffff_ffff;
            let offset_from = |t: &Term| matches!(t, Term::Operand(k) | Term::OperandLo(k) if *k as usize == n);
            if stencil.holes().any(|h| offset_from(&h.value.term) && h.value.addend != 0) {
                *operand = (*operand).clamp(user.start, user.end - PAGE);
            }
        }
    }
    Ok(Placement {
        index,
        layout,
        code,
        data,
        trace,
        executor: heap_object(&mut rng),
        jump_target,
        error_target,
        top,
        oparg: pick_oparg(&mut rng),
        operands,
        target: if rng.gen_bool(0.5) { rng.gen_range(0..512) } else { rng.gen() },
        exit_index: rng.gen_range(0..64),
        frame: heap_object(&mut rng),
        stack_pointer: heap_object(&mut rng) + 0x100,
        tstate: heap_object(&mut rng),
        // Entered as if by `call`: the return-address slot is 8 mod 16.
        machine_sp: (heap + HEAP_SIZE - MACHINE_STACK_TOP_GAP) & !0xf,
        heap,
        heap_size: HEAP_SIZE,
        contents_seed: rng.gen(),
        symbols_readable: info.relaxation_reads_symbols(),
        functions: Vec::new(),
        externs,
    })
}

/// The externs `stencil` calls or jumps to: a branch relocation, a direct
/// `call`/`jmp` holding the field, or a `call *`/`jmp *` through the GOT
/// slot of the symbol. (A `call *table(,%eax,4)` calls what the table
/// holds: the table is data.) An extern only loaded from or whose address
/// is only formed may be either (a function pointer passed on, a type
/// object compared), so is neither.
pub fn function_externs(target: Target, stencil: &Stencil) -> std::collections::BTreeSet<String> {
    let info = target.info();
    let instruction_at = |offset: u64| {
        stencil.instructions.iter().find(|i| i.offset <= offset && offset < i.offset + i.bytes.len() as u64)
    };
    stencil
        .relocations
        .iter()
        .filter_map(|r| {
            let Symbol::External(name) = &r.symbol else { return None };
            let expr = target.expr(r.kind).ok()?;
            let transfer = instruction_at(r.offset).map(|i| {
                let class = info.transfer_class(&i.bytes, 0);
                (matches!(class, TransferClass::Call | TransferClass::Jump), info.branch_target(&i.bytes, 0).is_some())
            });
            let called = match (expr, transfer) {
                (crate::target::RelExpr::Branch, _) => true,
                (_, Some((true, direct))) => direct || expr.is_got(),
                _ => false,
            };
            called.then(|| name.clone())
        })
        .collect()
}

/// A stream per (seed, stencil, index): FNV-1a over the name, mixed with splitmix.
fn stream_seed(seed: u64, name: &str, index: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    splitmix(seed ^ splitmix(h ^ ((index as u64) << 32)))
}

pub fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// What the stencil's relative holes demand of a placement.
struct Constraints<'a> {
    stencil: &'a Stencil,
    info: &'static dyn TargetInfo,
}

impl<'a> Constraints<'a> {
    fn of(stencil: &'a Stencil, info: &'static dyn TargetInfo) -> Self {
        Constraints { stencil, info }
    }

    /// Relative code holes: (offset of the location, value, reach).
    fn relative_holes(&self) -> impl Iterator<Item = (u64, &'a Value, Range<i64>)> + 'a {
        let info = self.info;
        self.stencil
            .holes()
            .filter(|h| h.section == Section::Code)
            .filter_map(move |h| info.reach(h.func).map(|r| (h.offset, &h.value, r)))
    }

    /// Offsets `data - code` at which every relative hole on `data` reaches.
    fn data_offsets(&self) -> Range<i64> {
        let stencil = self.stencil;
        let mut lo = i64::MIN;
        let mut hi = i64::MAX;
        for (offset, value, r) in self.relative_holes() {
            if value.term == Term::Data {
                // data + addend - (code + offset) in r  ⇔  data - code in r + offset - addend
                lo = lo.max(r.start + offset as i64 - value.addend);
                hi = hi.min(r.end + offset as i64 - value.addend);
            }
        }
        // Data must also fit beside the code without overlapping it: some
        // legal offset must be at or before -data_size or at or after code_size.
        let before = -(stencil.data_size() as i64);
        let after = stencil.code_size() as i64;
        if hi <= after && lo > before {
            return 0..0;
        }
        lo..hi
    }

    /// Reach an extern must keep from the code when a relative code hole names it.
    fn reach_of(&self, symbol: &Symbol) -> Option<Range<i64>> {
        self.reach_of_term(&Term::Symbol(symbol.to_string()))
    }

    /// Reach a value must keep from the code when a relative code hole names its term.
    fn reach_of_term(&self, term: &Term) -> Option<Range<i64>> {
        self.relative_holes()
            .filter(|(_, v, _)| &v.term == term)
            .map(|(off, v, r)| (r.start + off as i64 - v.addend)..(r.end + off as i64 - v.addend))
            .reduce(|a, b| a.start.max(b.start)..a.end.min(b.end))
    }

    /// Code offset of the first relocation naming `symbol`.
    fn first_site(&self, symbol: &Symbol) -> Option<u64> {
        self.stencil.relocations.iter().find(|r| &r.symbol == symbol).map(|r| r.offset)
    }
}

/// Address ranges already used by this placement (byte-precise, page-padded).
#[derive(Default)]
struct Taken(Vec<Range<u64>>);

impl Taken {
    fn reserve(&mut self, addr: u64, len: u64) {
        let start = addr & !(PAGE - 1);
        let end = (addr.saturating_add(len) + PAGE - 1) & !(PAGE - 1);
        self.0.push(start.saturating_sub(PAGE)..end.saturating_add(PAGE));
    }
    fn clashes(&self, addr: u64, len: u64) -> bool {
        let end = addr.saturating_add(len);
        self.0.iter().any(|r| addr < r.end && r.start < end)
    }
}

fn random_user(rng: &mut ChaCha8Rng, sp: Space, len: u64) -> u64 {
    rng.gen_range(sp.min..sp.end - len - PAGE)
}

/// Draw until the candidate clashes with nothing taken (bounded; the user
/// space is vast compared with what one stencil reserves).
fn pick_free(
    rng: &mut ChaCha8Rng,
    sp: Space,
    taken: &Taken,
    len: u64,
    mut draw: impl FnMut(&mut ChaCha8Rng) -> u64,
) -> u64 {
    for _ in 0..64 {
        let a = draw(rng);
        if !taken.clashes(a, len) && a >= sp.min && a.saturating_add(len) < sp.end {
            return a;
        }
    }
    loop {
        let a = random_user(rng, sp, len);
        if !taken.clashes(a, len) {
            return a;
        }
    }
}

fn pick_code(rng: &mut ChaCha8Rng, sp: Space, layout: Layout, stencil: &Stencil, span: &Range<i64>) -> u64 {
    let size = stencil.code_size() + stencil.data_size();
    // Leave room for data on the side the holes demand.
    let want = span.start.unsigned_abs().min(4 * GIB).max(span.end.unsigned_abs().min(4 * GIB));
    let margin = sp.margin(want);
    match layout {
        // Near zero, but above the reach of a small made-up integer plus a
        // 16-bit offset (a stray pointer must not land on the code).
        // Low, but above what a loop walking made-up memory up from a small
        // made-up integer can reach (a run maps at most 24 made-up 64 KiB
        // chunks): a stray write there is the run's, not the stencil's.
        Layout::Low => 4 * MIB + rng.gen_range(0..4 * PAGE) + rng.gen_range(0..16),
        Layout::High => sp.end - PAGE * rng.gen_range(2..8) - size - rng.gen_range(0..16),
        Layout::Compact => {
            // A page-aligned allocation plus the code of earlier uops in the trace.
            let margin = sp.margin(8 * GIB);
            let base = rng.gen_range(sp.min + margin..sp.end - margin) & !(PAGE - 1);
            base + rng.gen_range(0..16 * 1024)
        }
        _ => rng.gen_range(sp.min + margin..sp.end - margin - size),
    }
}

/// Legal offsets `data - code` for code at `code`, clipped to user space.
fn data_window(sp: Space, stencil: &Stencil, code: u64, span: &Range<i64>) -> Range<i64> {
    let lo = span.start.max(sp.min as i64 - code as i64);
    let hi = span.end.min((sp.end - stencil.data_size() - PAGE) as i64 - code as i64);
    lo..hi
}

fn pick_data(rng: &mut ChaCha8Rng, sp: Space, layout: Layout, stencil: &Stencil, code: u64, span: &Range<i64>) -> u64 {
    let code_end = code + stencil.code_size();
    let data_len = stencil.data_size();
    let Range { start: lo, end: hi } = data_window(sp, stencil, code, span);
    let fits = |d: i64| {
        let a = code.wrapping_add(d as u64);
        d >= lo && d < hi && (a >= code_end || a + data_len <= code)
    };
    let candidate = match layout {
        // CPython puts data after all of the trace's code.
        Layout::Compact | Layout::Low | Layout::High => stencil.code_size() as i64 + rng.gen_range(0..64 * 1024),
        // Data after the code: the displacements' upper edge is the one a
        // 3.13 trace can reach (the lower one only when a hole sets it).
        Layout::RelativeEdge => {
            if hi < i64::MAX / 2 && (lo <= stencil.code_size() as i64 || rng.gen_bool(0.5)) {
                hi - 1
            } else {
                lo
            }
        }
        _ if lo < hi => rng.gen_range(lo..hi),
        _ => lo,
    };
    if fits(candidate) {
        return code.wrapping_add(candidate as u64);
    }
    // Either edge, then anything legal after the code, then before it.
    for d in [lo, hi - 1, stencil.code_size() as i64, -(data_len as i64)] {
        if fits(d) {
            return code.wrapping_add(d as u64);
        }
    }
    for _ in 0..if lo < hi { 256 } else { 0 } {
        let d = rng.gen_range(lo..hi);
        if fits(d) {
            return code.wrapping_add(d as u64);
        }
    }
    code_end
}

fn pick_extern(
    rng: &mut ChaCha8Rng,
    sp: Space,
    layout: Layout,
    taken: &Taken,
    code: u64,
    site_offset: u64,
    reach: Option<Range<i64>>,
) -> u64 {
    let site = code + site_offset;
    if let Some(r) = reach {
        // A relative hole names it directly: it must stay within that reach.
        let lo = (code as i64 + r.start).max(sp.min as i64) as u64;
        let hi = (code as i64 + r.end).min(sp.end as i64) as u64;
        return pick_free(rng, sp, taken, 16, |g| g.gen_range(lo..hi.max(lo + 1)));
    }
    pick_free(rng, sp, taken, 16, |g| match layout {
        Layout::Compact => near(g, code, 64 * 1024, GIB),
        Layout::FarExterns => far(g, sp, code),
        Layout::RelaxEdge => relax_edge(g, sp, site),
        Layout::Low => g.gen_range(sp.min..sp.min + sp.margin(4 * GIB)),
        Layout::High => sp.end - g.gen_range(PAGE..sp.margin(4 * GIB)),
        _ => random_user(g, sp, PAGE),
    })
}

/// An address `min..max` bytes from `base`, either side.
fn near(rng: &mut ChaCha8Rng, base: u64, min: u64, max: u64) -> u64 {
    let d = rng.gen_range(min..max);
    if rng.gen_bool(0.5) {
        base.wrapping_add(d)
    } else {
        base.wrapping_sub(d)
    }
}

/// More than 2 GiB away from `base` (relaxation out of reach).
/// In a 4 GiB space only code near either end has anything that far:
/// elsewhere, anywhere.
fn far(rng: &mut ChaCha8Rng, sp: Space, base: u64) -> u64 {
    let below = base > sp.min + 2 * GIB + PAGE;
    let above = base + 2 * GIB + 2 * PAGE < sp.end;
    match (below, above) {
        (_, true) if !below || rng.gen_bool(0.5) => rng.gen_range(base + 2 * GIB + PAGE..sp.end - PAGE),
        (true, _) => rng.gen_range(sp.min..base - 2 * GIB - PAGE),
        _ => random_user(rng, sp, PAGE),
    }
}

/// Right on the edge of `patch_x86_64_32rx`'s relaxation test for a GOT load
/// at `site`: S − 4 − site ∈ [−2^31, 2^31 − 1) relaxes; one byte further does not.
fn relax_edge(rng: &mut ChaCha8Rng, sp: Space, site: u64) -> u64 {
    let edges: [i64; 4] = [-REACH32 + 4, -REACH32 + 3, REACH32 + 2, REACH32 + 3];
    let d = edges[rng.gen_range(0..edges.len())];
    let a = (site as i64).wrapping_add(d);
    if a >= sp.min as i64 && (a as u64) < sp.end {
        a as u64
    } else {
        far(rng, sp, site)
    }
}

/// A jump/error target: in a realistic trace, just before or after this
/// A jump/error target within `reach` of the code (offsets from `code`),
/// `align`ed, outside the stencil's own code: near it, at either edge of the
/// reach (RelativeEdge), or anywhere in reach.
fn pick_target_within(
    rng: &mut ChaCha8Rng,
    sp: Space,
    layout: Layout,
    stencil: &Stencil,
    code: u64,
    reach: &Range<i64>,
    align: u64,
) -> u64 {
    let lo = (code as i64).saturating_add(reach.start).max(sp.min as i64) as u64;
    let hi = (code as i64).saturating_add(reach.end).min(sp.end as i64) as u64;
    let own = code..code + stencil.code_size().max(1);
    let lo_aligned = (lo + align - 1) & !(align - 1);
    // Often right next to the code: a neighbouring uop's start.
    let adjacent = match rng.gen_range(0..4) {
        0 => code.wrapping_sub(rng.gen_range(1..16)),
        1 => own.end + rng.gen_range(1..16),
        _ => 0,
    } & !(align - 1);
    if adjacent != 0 && (lo..hi).contains(&adjacent) && !own.contains(&adjacent) {
        return adjacent;
    }
    for _ in 0..256 {
        let t = match layout {
            Layout::RelativeEdge if rng.gen_bool(0.5) => lo_aligned,
            Layout::RelativeEdge => hi.saturating_sub(1) & !(align - 1),
            Layout::Compact | Layout::Low | Layout::High => near(rng, code, 2 * PAGE, 4 * MIB) & !(align - 1),
            _ => rng.gen_range(lo..hi.max(lo + 1)) & !(align - 1),
        };
        if (lo..hi).contains(&t) && !own.contains(&t) {
            return t;
        }
    }
    own.end.next_multiple_of(align)
}

fn pick_oparg(rng: &mut ChaCha8Rng) -> u16 {
    match rng.gen_range(0..10) {
        0..=5 => rng.gen_range(0..8),
        6 => [0, 1, 0x7fff, 0x8000, 0xffff][rng.gen_range(0..5)],
        _ => rng.gen_range(0..256),
    }
}

fn pick_operand(rng: &mut ChaCha8Rng, heap: u64) -> u64 {
    match rng.gen_range(0..10) {
        0..=3 => heap + rng.gen_range(0..HEAP_OBJECTS) / 8 * 8,
        4 | 5 => rng.gen_range(0..64),
        6 => [0, u64::MAX, 1 << 63, 0xffff_ffff, 0x8000_0000][rng.gen_range(0..5)],
        _ => rng.gen(),
    }
}
