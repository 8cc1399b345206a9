//! x86-64: what a relocation site does (decoded with iced-x86), the register
//! convention stencils are entered with, and the Unicorn engine that runs them.
//!
//! The run loop: map code and data (read+execute, never writable), enter with
//! frame/stack_pointer/tstate in the convention's registers, and count every
//! instruction in one code hook. The hook stops the run the moment the program
//! counter leaves the code; what the last instruction inside was (call, jmp,
//! ret) says whether that was a call (stubbed: we return a made-up value and
//! resume) or an exit (recorded, run over). Memory the code reads that nobody
//! mapped is made up on demand from the placement's seed.

use super::{
    entered_by_call, CallRecord, Contents, Convention, Engine, ExitKind, Fault, RunEnd, SiteObservation,
    Trace, CALL_LIMIT,
};
use crate::model::{Effect, Stencil, StencilSet};
use crate::patch::Image;
use crate::place::{splitmix, Placement, PAGE};
use crate::target::x86_64::USER_SPACE;

/// One past the highest address a user-space page can have.
const USER_END: u64 = USER_SPACE.end;
use iced_x86::{
    ConstantOffsets, Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, Mnemonic,
    OpAccess, OpKind, Register,
};
use std::ops::Range;
use unicorn_engine::unicorn_const::{Arch, HookType, MemType, Mode, Prot};
use unicorn_engine::{RegisterX86, Unicorn};

pub use super::{DEMAND_REGION_LIMIT, RETURN_SENTINEL};

/// CPython 3.13 on x86-64 enters uops with GHC's convention (DOMAIN.md §5).
const DEFAULT_CONVENTION: Convention =
    Convention { frame: "r13", stack_pointer: "rbp", tstate: "r12", source: "default" };

/// Read the convention off the trampoline: it moves the C arguments
/// (rdi, rsi, rdx = frame, stack_pointer, tstate) into the registers uops
/// expect. Falls back to the 3.13 default when there is no trampoline.
pub fn convention(set: &StencilSet) -> Convention {
    let Some(tramp) = set.stencils.iter().find(|s| entered_by_call(s)) else {
        return DEFAULT_CONVENTION;
    };
    let mut found: [Option<&'static str>; 3] = [None; 3];
    for insn in &tramp.instructions {
        // objdump's AT&T spelling: `movq %rdi, %r13` moves rdi into r13.
        let Some(operands) = insn.text.strip_prefix("movq") else { continue };
        let Some((src, dst)) = operands.split_once(',') else { continue };
        let slot = match src.trim() {
            "%rdi" => 0,
            "%rsi" => 1,
            "%rdx" => 2,
            _ => continue,
        };
        if let Some(reg) = gpr_name(dst.trim().trim_start_matches('%')) {
            found[slot].get_or_insert(reg);
        }
    }
    match found {
        [Some(frame), Some(stack_pointer), Some(tstate)] => {
            Convention { frame, stack_pointer, tstate, source: "trampoline" }
        }
        _ => DEFAULT_CONVENTION,
    }
}

const GPRS: [(&str, RegisterX86); 16] = [
    ("rax", RegisterX86::RAX),
    ("rbx", RegisterX86::RBX),
    ("rcx", RegisterX86::RCX),
    ("rdx", RegisterX86::RDX),
    ("rsi", RegisterX86::RSI),
    ("rdi", RegisterX86::RDI),
    ("rbp", RegisterX86::RBP),
    ("rsp", RegisterX86::RSP),
    ("r8", RegisterX86::R8),
    ("r9", RegisterX86::R9),
    ("r10", RegisterX86::R10),
    ("r11", RegisterX86::R11),
    ("r12", RegisterX86::R12),
    ("r13", RegisterX86::R13),
    ("r14", RegisterX86::R14),
    ("r15", RegisterX86::R15),
];

fn gpr_name(name: &str) -> Option<&'static str> {
    GPRS.iter().find(|(n, _)| *n == name).map(|(n, _)| *n)
}

fn gpr(name: &str) -> RegisterX86 {
    GPRS.iter().find(|(n, _)| *n == name).map(|(_, r)| *r).unwrap_or(RegisterX86::RAX)
}

/// Caller-saved registers a C callee may leave anything in.
const CALLER_SAVED: [RegisterX86; 8] = [
    RegisterX86::RCX,
    RegisterX86::RDX,
    RegisterX86::RSI,
    RegisterX86::RDI,
    RegisterX86::R8,
    RegisterX86::R9,
    RegisterX86::R10,
    RegisterX86::R11,
];

/// The Unicorn register for an iced register (for effective addresses).
fn uc_register(r: Register) -> Option<(RegisterX86, u64)> {
    let full = r.full_register();
    let mask = match r.size() {
        8 => u64::MAX,
        4 => u32::MAX as u64,
        2 => u16::MAX as u64,
        _ => return None,
    };
    let reg = match full {
        Register::RAX => RegisterX86::RAX,
        Register::RBX => RegisterX86::RBX,
        Register::RCX => RegisterX86::RCX,
        Register::RDX => RegisterX86::RDX,
        Register::RSI => RegisterX86::RSI,
        Register::RDI => RegisterX86::RDI,
        Register::RBP => RegisterX86::RBP,
        Register::RSP => RegisterX86::RSP,
        Register::R8 => RegisterX86::R8,
        Register::R9 => RegisterX86::R9,
        Register::R10 => RegisterX86::R10,
        Register::R11 => RegisterX86::R11,
        Register::R12 => RegisterX86::R12,
        Register::R13 => RegisterX86::R13,
        Register::R14 => RegisterX86::R14,
        Register::R15 => RegisterX86::R15,
        _ => return None,
    };
    Some((reg, mask))
}

fn decode(bytes: &[u8], ip: u64) -> (Instruction, ConstantOffsets) {
    let mut decoder = Decoder::with_ip(64, bytes, ip, DecoderOptions::NONE);
    let insn = decoder.decode();
    let offsets = decoder.get_constant_offsets(&insn);
    (insn, offsets)
}

/// The target of a direct (near) branch or call.
pub fn branch_target(bytes: &[u8], ip: u64) -> Option<u64> {
    let (insn, _) = decode(bytes, ip);
    matches!(insn.op0_kind(), OpKind::NearBranch64 | OpKind::NearBranch32).then(|| insn.near_branch_target())
}

/// The instruction's mnemonic (what a relaxation changes).
pub fn mnemonic(bytes: &[u8], ip: u64) -> Mnemonic {
    decode(bytes, ip).0.mnemonic()
}

pub fn transfer_class(bytes: &[u8], ip: u64) -> super::TransferClass {
    use super::TransferClass;
    let (insn, _) = decode(bytes, ip);
    match insn.flow_control() {
        FlowControl::Call | FlowControl::IndirectCall => TransferClass::Call,
        FlowControl::UnconditionalBranch | FlowControl::IndirectBranch => TransferClass::Jump,
        _ => TransferClass::Other,
    }
}

/// Format an instruction the way reports show it (Intel syntax, like iced's default).
pub fn format_at(bytes: &[u8], ip: u64) -> String {
    use iced_x86::{Formatter, IntelFormatter};
    let (insn, _) = decode(bytes, ip);
    if insn.is_invalid() {
        return format!("(invalid) {}", hex_bytes(&bytes[..bytes.len().min(8)]));
    }
    let mut out = String::new();
    let mut f = IntelFormatter::new();
    f.options_mut().set_rip_relative_addresses(true);
    f.format(&insn, &mut out);
    out
}

fn hex_bytes(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
}

/// What evaluating a site told us.
enum Evaluation {
    Known(Effect),
    /// The field is not a displacement, branch or immediate of `insn`.
    NotAnOperand,
    /// It is, but its effect needs a register or memory we cannot read here.
    Unknown,
}

/// What `insn` does with the field that starts `field` bytes into it.
/// `reg` gives register values (None: unknown, e.g. statically); `mem` reads
/// memory (None: unreadable).
fn site_effect(
    insn: &Instruction,
    offsets: &ConstantOffsets,
    field: usize,
    mut reg: impl FnMut(Register) -> Option<u64>,
    mut mem: impl FnMut(u64, usize) -> Option<u64>,
) -> Evaluation {
    use Evaluation::{Known, NotAnOperand, Unknown};
    let near_branch = matches!(insn.op0_kind(), OpKind::NearBranch64 | OpKind::NearBranch32);
    let mem_op = (0..insn.op_count()).find(|&i| insn.op_kind(i) == OpKind::Memory);
    let in_disp = offsets.has_displacement() && offsets.displacement_offset() == field;
    let in_imm = offsets.has_immediate() && offsets.immediate_offset() == field;
    if near_branch && (in_imm || in_disp || field + 4 == insn.len()) {
        return Known(Effect::Transfer { target: insn.near_branch_target(), slot: None });
    }
    if in_disp {
        let Some(op) = mem_op else { return NotAnOperand };
        let address = insn.virtual_address(op, 0, |r, _, _| match r {
            Register::ES | Register::CS | Register::SS | Register::DS => Some(0),
            _ => reg(r),
        });
        let Some(address) = address else { return Unknown };
        let flow = insn.flow_control();
        if matches!(flow, FlowControl::IndirectBranch | FlowControl::IndirectCall) {
            return match mem(address, 8) {
                Some(target) => Known(Effect::Transfer { target, slot: Some(address) }),
                None => Unknown,
            };
        }
        if insn.mnemonic() == Mnemonic::Lea {
            let bits = insn.op0_register().size() as u32 * 8;
            return Known(Effect::Address { value: truncate(address, bits), bits });
        }
        let size = insn.memory_size().size().clamp(1, 8);
        let mut info = InstructionInfoFactory::new();
        let reads = info
            .info(insn)
            .used_memory()
            .iter()
            .any(|m| matches!(m.access(), OpAccess::Read | OpAccess::CondRead));
        if reads {
            let bits = size as u32 * 8;
            return match mem(address, size) {
                Some(value) => Known(Effect::Load { address, value, bits }),
                None => Unknown,
            };
        }
        return Known(Effect::MemoryOperand { address });
    }
    if in_imm {
        let op = (0..insn.op_count()).find(|&i| {
            matches!(
                insn.op_kind(i),
                OpKind::Immediate64
                    | OpKind::Immediate32
                    | OpKind::Immediate32to64
                    | OpKind::Immediate16
                    | OpKind::Immediate8to64
                    | OpKind::Immediate8to32
            )
        });
        let Some(op) = op else { return NotAnOperand };
        let bits = match insn.op_kind(op) {
            OpKind::Immediate32 => 32,
            OpKind::Immediate16 => 16,
            _ => 64,
        };
        return Known(Effect::Immediate { value: insn.immediate(op), bits });
    }
    NotAnOperand
}

impl Evaluation {
    /// As an observation: `None` for a mangled site, skipped when unknown.
    fn observation(self) -> Option<Option<Effect>> {
        match self {
            Evaluation::Known(e) => Some(Some(e)),
            Evaluation::NotAnOperand => Some(None),
            Evaluation::Unknown => None,
        }
    }
}

fn truncate(v: u64, bits: u32) -> u64 {
    if bits >= 64 {
        v
    } else {
        v & ((1u64 << bits) - 1)
    }
}

/// Decode forward from `start` until an instruction covers `field_addr`.
fn instruction_covering(
    read: impl Fn(u64, usize) -> Option<Vec<u8>>,
    start: u64,
    field_addr: u64,
) -> Option<(Instruction, ConstantOffsets)> {
    let mut pc = start;
    for _ in 0..4 {
        let bytes = read(pc, 15)?;
        let (insn, offsets) = decode(&bytes, pc);
        if insn.is_invalid() {
            return None;
        }
        if (pc..pc + insn.len() as u64).contains(&field_addr) {
            return Some((insn, offsets));
        }
        pc += insn.len() as u64;
        if pc > field_addr {
            return None;
        }
    }
    None
}

/// Judge-ready observations of every site on the patched image, without
/// running it. Register-dependent operands cannot be evaluated and are left
/// to the runs.
pub fn static_sites(stencil: &Stencil, image: &Image) -> Vec<SiteObservation> {
    let read = |a: u64, n: usize| -> Option<Vec<u8>> {
        // The image may end within 15 bytes: read what there is.
        let avail = (image.code_addr + image.code.len() as u64).saturating_sub(a).min(n as u64) as usize;
        image.read(a, avail).map(|b| b.to_vec())
    };
    let mut out = Vec::new();
    for (i, reloc) in stencil.relocations.iter().enumerate() {
        let field_addr = image.code_addr + reloc.offset;
        let start = stencil.instruction_at(reloc.offset).map(|x| x.offset).unwrap_or(reloc.offset);
        let Some((insn, offsets)) = instruction_covering(read, image.code_addr + start, field_addr) else {
            out.push(SiteObservation { relocation: i, pc: image.code_addr + start, len: 0, effect: None });
            continue;
        };
        let field = (field_addr - insn.ip()) as usize;
        // Registers are unknown statically; memory outside the image too:
        // such sites are left to the runs.
        let evaluation = site_effect(&insn, &offsets, field, |_| None, |a, n| image.read(a, n).map(le));
        if let Some(effect) = evaluation.observation() {
            out.push(SiteObservation { relocation: i, pc: insn.ip(), len: insn.len() as u32, effect });
        }
    }
    out
}

fn le(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w[..b.len().min(8)].copy_from_slice(&b[..b.len().min(8)]);
    u64::from_le_bytes(w)
}

/// State the hooks share with the run loop.
struct RunState {
    code: Range<u64>,
    /// For each code offset: does an instruction starting here possibly hold a relocated field?
    maybe_site: Vec<bool>,
    /// (relocation index, field address) sorted by address.
    fields: Vec<(usize, u64)>,
    sites: Vec<SiteObservation>,
    instructions: u64,
    limit: u64,
    last_pc: u64,
    /// Set when the program counter left the code.
    left_to: Option<u64>,
    limit_hit: bool,
    /// Regions (address, length) mapped on demand during this run.
    demand_pages: Vec<(u64, u64)>,
    seed: u64,
    heap: u64,
    heap_size: u64,
    interesting: Vec<u64>,
    /// Observations per relocation are capped (loops re-run the same site).
    per_site: Vec<u16>,
    /// The stencil's data part, to tell a write into data from one into code.
    data: Range<u64>,
    /// Address of the access that faulted (write-protect, unmappable).
    fault_address: Option<u64>,
    /// The run hit [`DEMAND_REGION_LIMIT`].
    budget_hit: bool,
    /// Wall-clock deadline of the run (a backstop: the instruction budget
    /// normally ends runs first, deterministically).
    deadline: std::time::Instant,
    time_hit: bool,
}

impl RunState {
    fn contents(&self) -> Contents<'_> {
        Contents { seed: self.seed, heap: self.heap, heap_size: self.heap_size, interesting: &self.interesting }
    }
}

const SITE_OBSERVATION_CAP: u16 = 8;

/// The x86-64 Unicorn engine. One per thread; it reuses one emulator for
/// every run, mapping and unmapping only what each run needs.
pub struct UnicornX86 {
    uc: Unicorn<'static, RunState>,
    convention: Convention,
    /// Regions mapped for the current run (code, data).
    fixed: Vec<(u64, u64)>,
}

impl UnicornX86 {
    pub fn new(convention: Convention, limit: u64) -> Result<UnicornX86, String> {
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
            fault_address: None,
            budget_hit: false,
            deadline: std::time::Instant::now(),
            time_hit: false,
        };
        let mut uc = Unicorn::new_with_data(Arch::X86, Mode::MODE_64, state)
            .map_err(|e| format!("cannot start Unicorn x86-64: {e:?}"))?;
        uc.add_code_hook(1, 0, on_instruction).map_err(|e| format!("code hook: {e:?}"))?;
        uc.add_mem_hook(HookType::MEM_READ_UNMAPPED | HookType::MEM_WRITE_UNMAPPED, 1, 0, on_unmapped)
            .map_err(|e| format!("memory hook: {e:?}"))?;
        uc.add_mem_hook(HookType::MEM_WRITE_PROT, 1, 0, |uc, _, addr, _, _| {
            uc.get_data_mut().fault_address = Some(addr);
            false
        })
        .map_err(|e| format!("memory hook: {e:?}"))?;
        Ok(UnicornX86 { uc, convention, fixed: Vec::new() })
    }

    pub fn convention(&self) -> &Convention {
        &self.convention
    }

    /// Unmap everything the previous run mapped.
    fn reset(&mut self) {
        let pages = std::mem::take(&mut self.uc.get_data_mut().demand_pages);
        for (p, len) in pages {
            let _ = self.uc.mem_unmap(p, len);
        }
        for (a, len) in std::mem::take(&mut self.fixed) {
            let _ = self.uc.mem_unmap(a, len);
        }
    }

    /// Map code and data read+execute (CPython marks the whole allocation
    /// R-X before running it), pages shared by both once.
    fn map_image(&mut self, image: &Image) -> Result<(), String> {
        let mut pages: Vec<Range<u64>> = Vec::new();
        // One guard page of int3 after the code: running off the end must be
        // seen by the code hook, not fail inside Unicorn's translator (which
        // then reports the block's start as the faulting PC).
        let code_len = image.code.len() as u64 + PAGE;
        let rest = image.regions().filter(|(r, _, _)| *r != crate::patch::Region::Code).map(|(_, a, b)| (a, b.len() as u64));
        for (addr, len) in std::iter::once((image.code_addr, code_len)).chain(rest) {
            if len == 0 {
                continue;
            }
            let start = addr & !(PAGE - 1);
            let end = (addr + len + PAGE - 1) & !(PAGE - 1);
            pages.push(start..end.min(USER_END));
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
            self.uc
                .mem_map(r.start, r.end - r.start, Prot::READ | Prot::EXEC)
                .map_err(|e| format!("cannot map {:#x}..{:#x}: {e:?}", r.start, r.end))?;
            // int3 everywhere the image does not cover.
            self.uc.mem_write(r.start, &vec![0xcc; (r.end - r.start) as usize]).ok();
            self.fixed.push((r.start, r.end - r.start));
        }
        for (region, addr, bytes) in image.regions() {
            self.uc.mem_write(addr, bytes).map_err(|e| format!("write {region:?}: {e:?}"))?;
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
            let lo = r.offset.saturating_sub(14) as usize;
            for flag in maybe_site.iter_mut().take(r.offset as usize + 1).skip(lo) {
                *flag = true;
            }
        }
        fields.sort_by_key(|f| f.1);
        let interesting: Vec<u64> = placement.externs.values().copied().collect();
        let st = self.uc.get_data_mut();
        st.code = code;
        st.data = image.data_addr..image.data_addr + image.data.len() as u64;
        st.fault_address = None;
        st.budget_hit = false;
        st.time_hit = false;
        st.deadline = std::time::Instant::now() + super::RUN_TIME_LIMIT;
        st.maybe_site = maybe_site;
        st.per_site = vec![0; stencil.relocations.len()];
        st.fields = fields;
        st.sites.clear();
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
        for (i, (_, r)) in GPRS.iter().enumerate() {
            let v = self.uc.get_data().contents().word(placement.contents_seed ^ (i as u64 * 8));
            let _ = self.uc.reg_write(*r, v);
        }
        let conv = &self.convention;
        let (f, s, t) = if by_call {
            (RegisterX86::RDI, RegisterX86::RSI, RegisterX86::RDX)
        } else {
            (gpr(conv.frame), gpr(conv.stack_pointer), gpr(conv.tstate))
        };
        let _ = self.uc.reg_write(f, placement.frame);
        let _ = self.uc.reg_write(s, placement.stack_pointer);
        let _ = self.uc.reg_write(t, placement.tstate);
        let sp = placement.machine_sp - 8;
        let _ = self.uc.reg_write(RegisterX86::RSP, sp);
        let _ = self.uc.reg_write(RegisterX86::EFLAGS, 0x202);
        // The return-address slot: the sentinel for a function entry,
        // made-up garbage for a uop (it must never return).
        ensure_mapped(&mut self.uc, sp, 8);
        let _ = self.uc.mem_write(sp, &RETURN_SENTINEL.to_le_bytes());
        (sp, by_call)
    }
}

impl Engine for UnicornX86 {
    fn run(&mut self, stencil: &Stencil, placement: &Placement, image: &Image) -> Trace {
        self.reset();
        let mut trace = Trace { entry: image.code_addr, ..Trace::default() };
        if let Err(e) = self.map_image(image) {
            trace.end = Some(RunEnd::Fault { fault: Fault::Other, pc: image.code_addr, address: 0 });
            eprintln!("note: {e}");
            return trace;
        }
        self.prepare(stencil, placement, image);
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
            if st.limit_hit {
                break RunEnd::InstructionLimit { limit: st.limit, pc: here };
            }
            if st.time_hit {
                break RunEnd::TimeLimit { pc: here };
            }
            let left_to = match (st.left_to, &result) {
                (Some(t), _) => t,
                // Fetching from unmapped/non-executable memory: control left the code.
                (None, Err(e)) if is_fetch_error(*e) => here,
                (None, Err(e)) => break self.classify_fault(*e, here),
                (None, Ok(())) => here,
            };
            let last_pc = st.last_pc;
            match self.transfer_kind(stencil, last_pc, left_to) {
                Transfer::Call => {
                    if trace.calls.len() >= CALL_LIMIT {
                        break RunEnd::CallLimit { pc: left_to };
                    }
                    match self.stub_return(&mut trace, last_pc, left_to) {
                        Some(ret) if self.uc.get_data().code.contains(&ret) => pc = ret,
                        Some(ret) => {
                            let sp = self.uc.reg_read(RegisterX86::RSP).unwrap_or(0);
                            let kind = ExitKind::AfterNoReturnCall;
                            break RunEnd::Exit { kind, from: last_pc, target: ret, sp, computed: false };
                        }
                        None => break RunEnd::Fault { fault: Fault::Unmappable, pc: left_to, address: 0 },
                    }
                    let st = self.uc.get_data_mut();
                    st.left_to = None;
                }
                Transfer::Exit(kind, computed) => {
                    let sp = self.uc.reg_read(RegisterX86::RSP).unwrap_or(0);
                    // Report the stack pointer as it was before `ret` popped.
                    let sp = if kind == ExitKind::Return { sp.wrapping_sub(8) } else { sp };
                    break RunEnd::Exit { kind, from: last_pc, target: left_to, sp, computed };
                }
            }
        };
        let st = self.uc.get_data_mut();
        trace.sites = std::mem::take(&mut st.sites);
        trace.instructions = st.instructions;
        trace.end = Some(end);
        trace
    }
}

enum Transfer {
    Call,
    /// An exit, and whether its target was computed (not a relocation's).
    Exit(ExitKind, bool),
}

fn is_fetch_error(e: unicorn_engine::unicorn_const::uc_error) -> bool {
    use unicorn_engine::unicorn_const::uc_error;
    matches!(e, uc_error::FETCH_UNMAPPED | uc_error::FETCH_PROT)
}

impl UnicornX86 {
    /// Was leaving the code at `last_pc` a call, a jump, or a return?
    fn transfer_kind(&self, stencil: &Stencil, last_pc: u64, target: u64) -> Transfer {
        let code = self.uc.get_data().code.clone();
        let mut bytes = [0u8; 15];
        let n = (code.end.saturating_sub(last_pc)).min(15) as usize;
        if last_pc == 0 || self.uc.mem_read(last_pc, &mut bytes[..n]).is_err() {
            return Transfer::Exit(ExitKind::Jump, false);
        }
        let (insn, _) = decode(&bytes[..n], last_pc);
        let end = last_pc + insn.len() as u64;
        let at_site = stencil.relocations.iter().any(|r| (last_pc..end).contains(&(code.start + r.offset)));
        match insn.flow_control() {
            FlowControl::Call | FlowControl::IndirectCall => Transfer::Call,
            FlowControl::Return => Transfer::Exit(ExitKind::Return, false),
            // Running on past the last instruction, a not-taken branch included.
            FlowControl::Next | FlowControl::ConditionalBranch if target == insn.next_ip() => {
                Transfer::Exit(ExitKind::FallThrough, false)
            }
            FlowControl::IndirectBranch => Transfer::Exit(ExitKind::Jump, !at_site),
            _ => Transfer::Exit(ExitKind::Jump, false),
        }
    }

    /// Play the callee: record the call, return a made-up value in rax,
    /// scramble the caller-saved registers, pop the return address.
    fn stub_return(&mut self, trace: &mut Trace, from: u64, target: u64) -> Option<u64> {
        let sp = self.uc.reg_read(RegisterX86::RSP).ok()?;
        let mut ret = [0u8; 8];
        self.uc.mem_read(sp, &mut ret).ok()?;
        let ret = u64::from_le_bytes(ret);
        let n = trace.calls.len();
        let value = self.uc.get_data().contents().return_value(n);
        trace.calls.push(CallRecord { from, target, sp, returned: value });
        let _ = self.uc.reg_write(RegisterX86::RAX, value);
        let seed = self.uc.get_data().seed;
        for (i, r) in CALLER_SAVED.iter().enumerate() {
            let _ = self.uc.reg_write(*r, splitmix(seed ^ (n as u64) << 8 ^ i as u64));
        }
        let _ = self.uc.reg_write(RegisterX86::RSP, sp + 8);
        Some(ret)
    }

    fn classify_fault(&self, e: unicorn_engine::unicorn_const::uc_error, pc: u64) -> RunEnd {
        use unicorn_engine::unicorn_const::uc_error;
        let st = self.uc.get_data();
        let address = st.fault_address.unwrap_or(0);
        let fault = match e {
            // Code and data are mapped read+execute only: any write there is the stencil's.
            uc_error::WRITE_PROT if st.data.contains(&address) => Fault::WriteIntoData,
            uc_error::WRITE_PROT if st.code.contains(&address) => Fault::WriteIntoCode,
            // Padding beside the image: a made-up pointer strayed there.
            uc_error::WRITE_PROT => Fault::Unmappable,
            uc_error::INSN_INVALID => Fault::InvalidInstruction,
            uc_error::READ_UNMAPPED | uc_error::WRITE_UNMAPPED if st.budget_hit => Fault::MemoryBudget,
            uc_error::READ_UNMAPPED | uc_error::WRITE_UNMAPPED | uc_error::MAP => Fault::Unmappable,
            _ => Fault::Other,
        };
        RunEnd::Fault { fault, pc, address }
    }
}

/// `STENCILCHECK_DEBUG=1` prints every emulated instruction (read once).
fn debug_trace() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("STENCILCHECK_DEBUG").is_some())
}

/// The code hook: count, stop on leaving the code, observe relocation sites.
fn on_instruction(uc: &mut Unicorn<'_, RunState>, addr: u64, size: u32) {
    let st = uc.get_data_mut();
    if !st.code.contains(&addr) {
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
    st.last_pc = addr;
    if debug_trace() {
        let r = |r| uc.reg_read(r).unwrap_or(0);
        eprintln!("{addr:#x} rax={:#x} rbx={:#x} rcx={:#x} r15={:#x} rbp={:#x} rsp={:#x}", r(RegisterX86::RAX), r(RegisterX86::RBX), r(RegisterX86::RCX), r(RegisterX86::R15), r(RegisterX86::RBP), r(RegisterX86::RSP));
    }
    let st = uc.get_data_mut();
    let offset = (addr - st.code.start) as usize;
    if st.maybe_site[offset] {
        observe(uc, addr, size);
    }
}

fn observe(uc: &mut Unicorn<'_, RunState>, addr: u64, size: u32) {
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
    let (insn, offsets) = decode(&bytes, addr);
    for (i, field_addr) in hits {
        if uc.get_data().per_site[i] >= SITE_OBSERVATION_CAP {
            continue;
        }
        let field = (field_addr - addr) as usize;
        let effect = {
            let regs = |r: Register| uc_register(r).and_then(|(reg, mask)| uc.reg_read(reg).ok().map(|v| v & mask));
            // Reading memory the instruction is about to read: make it exist first.
            let mut reads: Vec<(u64, usize)> = Vec::new();
            let _ = site_effect(&insn, &offsets, field, regs, |a, n| {
                reads.push((a, n));
                None
            });
            for (a, n) in reads {
                ensure_mapped(uc, a, n);
            }
            let regs = |r: Register| uc_register(r).and_then(|(reg, mask)| uc.reg_read(reg).ok().map(|v| v & mask));
            site_effect(&insn, &offsets, field, regs, |a, n| {
                let mut b = vec![0u8; n];
                uc.mem_read(a, &mut b).ok().map(|_| le(&b))
            })
        };
        // Unreadable (unmappable) memory: the run's end will say so.
        let Some(effect) = effect.observation() else { continue };
        let st = uc.get_data_mut();
        st.per_site[i] += 1;
        st.sites.push(SiteObservation { relocation: i, pc: addr, len: size, effect });
    }
}

/// Map (with made-up contents) any page of `addr..addr+len` not mapped yet.
fn ensure_mapped(uc: &mut Unicorn<'_, RunState>, addr: u64, len: usize) {
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

/// Made-up memory is mapped a chunk at a time: Unicorn's cost per mapping
/// grows with the number of regions, so few large ones beat many pages.
const DEMAND_CHUNK: u64 = 64 * 1024;

fn map_demand_page(uc: &mut Unicorn<'_, RunState>, page: u64) -> bool {
    // Made-up integers are dereferenced as often as made-up pointers (a
    // stencil cannot tell them apart without a type check we may fail), so
    // the low pages are made up too: refusing them would end most runs early.
    if uc.get_data().demand_pages.len() >= DEMAND_REGION_LIMIT {
        uc.get_data_mut().budget_hit = true;
        return false;
    }
    if page >= USER_END {
        return false;
    }
    let chunk = page & !(DEMAND_CHUNK - 1);
    // The chunk may overlap the image or the stack: then just the page.
    for (start, len) in [(chunk, DEMAND_CHUNK), (page, PAGE)] {
        if uc.mem_map(start, len, Prot::READ | Prot::WRITE).is_ok() {
            let mut bytes = Vec::with_capacity(len as usize);
            let contents = uc.get_data().contents();
            for p in (start..start + len).step_by(PAGE as usize) {
                bytes.extend_from_slice(&contents.page(p));
            }
            let _ = uc.mem_write(start, &bytes);
            uc.get_data_mut().demand_pages.push((start, len));
            return true;
        }
    }
    false
}

/// Unmapped read or write: make the page up (never for fetches: code only
/// ever runs from the image).
fn on_unmapped(uc: &mut Unicorn<'_, RunState>, _kind: MemType, addr: u64, _size: usize, _value: i64) -> bool {
    let mapped = map_demand_page(uc, addr & !(PAGE - 1));
    if !mapped {
        uc.get_data_mut().fault_address = Some(addr);
    }
    mapped
}
