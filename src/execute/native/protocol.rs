//! What the engine and its worker process say to each other over their
//! pipes: one [`Request`] per run, one [`Answer`] back. A plain
//! little-endian encoding, length-prefixed per message: both ends are this
//! same binary, so no versioning is needed.

use crate::execute::{CallRecord, ExitKind, Fault, RunEnd, SiteObservation};
use crate::model::Effect;

/// Everything the worker needs for one run of a placed, patched stencil.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// Page ranges (start, end) to map read+execute, trap-filled.
    pub pages: Vec<(u64, u64)>,
    /// Image regions (address, bytes); the first is the code.
    pub regions: Vec<(u64, Vec<u8>)>,
    /// Per code offset: `plan` flags.
    pub flags: Vec<u8>,
    /// (relocation, field address), sorted by address.
    pub fields: Vec<(u32, u64)>,
    /// Relocations of the stencil (observations are capped per relocation).
    pub relocations: u32,
    pub seed: u64,
    pub heap: u64,
    pub heap_size: u64,
    /// Extern addresses made-up memory may hold.
    pub interesting: Vec<u64>,
    /// Addresses of the externs that are functions.
    pub functions: Vec<u64>,
    /// General registers at entry (rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp, r8..r15).
    pub registers: [u64; 16],
    /// Indices (into `registers`) of the registers a stubbed callee scrambles.
    pub caller_saved: Vec<u8>,
    /// The instruction budget.
    pub limit: u64,
    /// Stops the run may make before Unicorn runs it instead.
    pub stop_limit: u64,
}

/// What a run came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Ran {
        sites: Vec<SiteObservation>,
        calls: Vec<CallRecord>,
        end: RunEnd,
    },
    /// The run cannot be reproduced natively; the reason, for the counts.
    Refused(Refusal),
}

/// Why a native run handed its placement to Unicorn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// The plan found no way to run the code natively.
    Code,
    /// A placed address collides with the worker's own memory.
    Collision,
    /// An instruction whose native effect may differ ([`super::plan::REFUSE`]).
    Instruction,
    /// A NULL-page access natively ambiguous or unmappable.
    NullPage,
    /// A memory access whose Unicorn outcome the worker cannot reproduce
    /// (across a page edge, or one it cannot decode).
    Memory,
    /// A write into the image (Unicorn's write-protection faults).
    ImageWrite,
    /// A non-canonical address whose low 52 bits (all Unicorn uses) lie
    /// in user space: Unicorn accesses memory the host cannot at that address.
    Truncated,
    /// The instruction budget might be exceeded.
    Budget,
    /// A loop: it stops natively once an iteration, which costs more than
    /// Unicorn's run.
    Loop,
    /// Control went somewhere the plan did not foresee (an indirect jump
    /// into the code, an unexpected trap or signal).
    Control,
    /// The worker died or did not answer.
    Worker,
}

impl Refusal {
    pub const ALL: [Refusal; 11] = [
        Refusal::Code,
        Refusal::Collision,
        Refusal::Instruction,
        Refusal::NullPage,
        Refusal::Memory,
        Refusal::ImageWrite,
        Refusal::Truncated,
        Refusal::Budget,
        Refusal::Loop,
        Refusal::Control,
        Refusal::Worker,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Refusal::Code => "code",
            Refusal::Collision => "collision",
            Refusal::Instruction => "instruction",
            Refusal::NullPage => "null page",
            Refusal::Memory => "memory",
            Refusal::ImageWrite => "image write",
            Refusal::Truncated => "truncated address",
            Refusal::Budget => "budget",
            Refusal::Loop => "loop",
            Refusal::Control => "control",
            Refusal::Worker => "worker",
        }
    }
}

/// Appends little-endian values.
#[derive(Default)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    pub fn u64s(&mut self, v: &[u64]) {
        self.u32(v.len() as u32);
        v.iter().for_each(|x| self.u64(*x));
    }
}

/// Reads what a [`Writer`] wrote; `None` once the message runs short.
pub struct Reader<'a>(pub &'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    pub fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    }
    pub fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    }
    pub fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.u32()? as usize;
        self.take(n).map(|b| b.to_vec())
    }
    pub fn u64s(&mut self) -> Option<Vec<u64>> {
        let n = self.u32()? as usize;
        (0..n).map(|_| self.u64()).collect()
    }
    fn count(&mut self) -> Option<usize> {
        self.u32().map(|n| n as usize)
    }
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u32(self.pages.len() as u32);
        for (a, b) in &self.pages {
            w.u64(*a);
            w.u64(*b);
        }
        w.u32(self.regions.len() as u32);
        for (a, bytes) in &self.regions {
            w.u64(*a);
            w.bytes(bytes);
        }
        w.bytes(&self.flags);
        w.u32(self.fields.len() as u32);
        for (r, a) in &self.fields {
            w.u32(*r);
            w.u64(*a);
        }
        w.u32(self.relocations);
        for v in [self.seed, self.heap, self.heap_size] {
            w.u64(v);
        }
        w.u64s(&self.interesting);
        w.u64s(&self.functions);
        self.registers.iter().for_each(|r| w.u64(*r));
        w.bytes(&self.caller_saved);
        w.u64(self.limit);
        w.u64(self.stop_limit);
        w.0
    }

    pub fn decode(bytes: &[u8]) -> Option<Request> {
        let mut r = Reader(bytes);
        let pages = (0..r.count()?).map(|_| Some((r.u64()?, r.u64()?))).collect::<Option<_>>()?;
        let regions = (0..r.count()?).map(|_| Some((r.u64()?, r.bytes()?))).collect::<Option<_>>()?;
        let flags = r.bytes()?;
        let fields = (0..r.count()?).map(|_| Some((r.u32()?, r.u64()?))).collect::<Option<_>>()?;
        let relocations = r.u32()?;
        let (seed, heap, heap_size) = (r.u64()?, r.u64()?, r.u64()?);
        let interesting = r.u64s()?;
        let functions = r.u64s()?;
        let mut registers = [0u64; 16];
        for reg in &mut registers {
            *reg = r.u64()?;
        }
        let caller_saved = r.bytes()?;
        let limit = r.u64()?;
        let stop_limit = r.u64()?;
        Some(Request {
            pages,
            regions,
            flags,
            fields,
            relocations,
            seed,
            heap,
            heap_size,
            interesting,
            functions,
            registers,
            caller_saved,
            limit,
            stop_limit,
        })
    }
}

fn put_effect(w: &mut Writer, effect: &Option<Effect>) {
    let Some(effect) = effect else { return w.u8(0) };
    match *effect {
        Effect::Transfer { target, slot } => {
            w.u8(1);
            w.u64(target);
            w.u8(slot.is_some() as u8);
            w.u64(slot.unwrap_or(0));
        }
        Effect::Load { address, value, bits } => {
            w.u8(2);
            w.u64(address);
            w.u64(value);
            w.u32(bits);
        }
        Effect::Address { value, bits } => put_value(w, 3, value, bits),
        Effect::Immediate { value, bits } => put_value(w, 4, value, bits),
        Effect::Displacement { value, bits } => put_value(w, 5, value, bits),
        Effect::MemoryOperand { address } => {
            w.u8(6);
            w.u64(address);
        }
        Effect::Formed { value } => {
            w.u8(7);
            w.u64(value);
        }
    }
}

fn put_value(w: &mut Writer, tag: u8, value: u64, bits: u32) {
    w.u8(tag);
    w.u64(value);
    w.u32(bits);
}

fn get_effect(r: &mut Reader) -> Option<Option<Effect>> {
    Some(Some(match r.u8()? {
        0 => return Some(None),
        1 => {
            let target = r.u64()?;
            let has_slot = r.u8()? == 1;
            let slot = r.u64()?;
            Effect::Transfer { target, slot: has_slot.then_some(slot) }
        }
        2 => Effect::Load { address: r.u64()?, value: r.u64()?, bits: r.u32()? },
        3 => Effect::Address { value: r.u64()?, bits: r.u32()? },
        4 => Effect::Immediate { value: r.u64()?, bits: r.u32()? },
        5 => Effect::Displacement { value: r.u64()?, bits: r.u32()? },
        6 => Effect::MemoryOperand { address: r.u64()? },
        7 => Effect::Formed { value: r.u64()? },
        _ => return None,
    }))
}

const EXIT_KINDS: [ExitKind; 4] =
    [ExitKind::Jump, ExitKind::Return, ExitKind::FallThrough, ExitKind::AfterNoReturnCall];
const FAULTS: [Fault; 11] = [
    Fault::WriteIntoCode,
    Fault::WriteIntoData,
    Fault::Unmappable,
    Fault::MemoryBudget,
    Fault::NullConstant,
    Fault::InvalidInstruction,
    Fault::Forbidden,
    Fault::Unsupported,
    Fault::FunctionAsData,
    Fault::ReservedRegister,
    Fault::Other,
];

fn put_end(w: &mut Writer, end: &RunEnd) {
    match *end {
        RunEnd::Exit { kind, from, target, sp, computed } => {
            w.u8(0);
            w.u8(EXIT_KINDS.iter().position(|k| *k == kind).unwrap_or(0) as u8);
            for v in [from, target, sp] {
                w.u64(v);
            }
            w.u8(computed as u8);
        }
        RunEnd::Fault { fault, pc, address } => {
            w.u8(1);
            w.u8(FAULTS.iter().position(|f| *f == fault).unwrap_or(10) as u8);
            w.u64(pc);
            w.u64(address);
        }
        RunEnd::InstructionLimit { limit, pc } => {
            w.u8(2);
            w.u64(limit);
            w.u64(pc);
        }
        RunEnd::CallLimit { pc } => {
            w.u8(3);
            w.u64(pc);
        }
        RunEnd::TimeLimit { pc } => {
            w.u8(4);
            w.u64(pc);
        }
    }
}

fn get_end(r: &mut Reader) -> Option<RunEnd> {
    Some(match r.u8()? {
        0 => {
            let kind = *EXIT_KINDS.get(r.u8()? as usize)?;
            let (from, target, sp) = (r.u64()?, r.u64()?, r.u64()?);
            RunEnd::Exit { kind, from, target, sp, computed: r.u8()? == 1 }
        }
        1 => RunEnd::Fault { fault: *FAULTS.get(r.u8()? as usize)?, pc: r.u64()?, address: r.u64()? },
        2 => RunEnd::InstructionLimit { limit: r.u64()?, pc: r.u64()? },
        3 => RunEnd::CallLimit { pc: r.u64()? },
        4 => RunEnd::TimeLimit { pc: r.u64()? },
        _ => return None,
    })
}

impl Answer {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            Answer::Refused(why) => {
                w.u8(0);
                w.u8(Refusal::ALL.iter().position(|r| r == why).unwrap_or(0) as u8);
            }
            Answer::Ran { sites, calls, end } => {
                w.u8(1);
                w.u32(sites.len() as u32);
                for s in sites {
                    w.u32(s.relocation as u32);
                    w.u64(s.pc);
                    w.u32(s.len);
                    put_effect(&mut w, &s.effect);
                }
                w.u32(calls.len() as u32);
                for c in calls {
                    for v in [c.from, c.target, c.sp, c.returned] {
                        w.u64(v);
                    }
                }
                put_end(&mut w, end);
            }
        }
        w.0
    }

    pub fn decode(bytes: &[u8]) -> Option<Answer> {
        let mut r = Reader(bytes);
        if r.u8()? == 0 {
            return Some(Answer::Refused(*Refusal::ALL.get(r.u8()? as usize)?));
        }
        let sites = (0..r.count()?)
            .map(|_| {
                let (relocation, pc, len) = (r.u32()? as usize, r.u64()?, r.u32()?);
                Some(SiteObservation { relocation, pc, len, effect: get_effect(&mut r)? })
            })
            .collect::<Option<_>>()?;
        let calls = (0..r.count()?)
            .map(|_| Some(CallRecord { from: r.u64()?, target: r.u64()?, sp: r.u64()?, returned: r.u64()? }))
            .collect::<Option<_>>()?;
        Some(Answer::Ran { sites, calls, end: get_end(&mut r)? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_survive_the_wire() {
        let request = Request {
            pages: vec![(0x1000, 0x3000)],
            regions: vec![(0x1010, vec![0xc3, 0x90]), (0x2000, vec![1; 9])],
            flags: vec![3, 0],
            fields: vec![(0, 0x1011)],
            relocations: 1,
            seed: 7,
            heap: 0x10_0000,
            heap_size: 0x4000_0000,
            interesting: vec![5, 6],
            functions: vec![9],
            registers: [11; 16],
            caller_saved: vec![2, 3],
            limit: 1000,
            stop_limit: 12,
        };
        assert_eq!(Request::decode(&request.encode()), Some(request));
        let answer = Answer::Ran {
            sites: vec![
                SiteObservation {
                    relocation: 1,
                    pc: 2,
                    len: 3,
                    effect: Some(Effect::Transfer { target: 4, slot: Some(5) }),
                },
                SiteObservation { relocation: 0, pc: 2, len: 3, effect: None },
                SiteObservation {
                    relocation: 0,
                    pc: 2,
                    len: 3,
                    effect: Some(Effect::Load { address: 1, value: 2, bits: 32 }),
                },
            ],
            calls: vec![CallRecord { from: 1, target: 2, sp: 3, returned: 4 }],
            end: RunEnd::Exit { kind: ExitKind::FallThrough, from: 1, target: 2, sp: 3, computed: true },
        };
        assert_eq!(Answer::decode(&answer.encode()), Some(answer));
        let fault = Answer::Ran {
            sites: vec![],
            calls: vec![],
            end: RunEnd::Fault { fault: Fault::NullConstant, pc: 1, address: 8 },
        };
        assert_eq!(Answer::decode(&fault.encode()), Some(fault));
        assert_eq!(Answer::decode(&Answer::Refused(Refusal::Budget).encode()), Some(Answer::Refused(Refusal::Budget)));
    }
}
