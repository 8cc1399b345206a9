//! Where a native run must stop: one byte of flags per code offset, read off
//! the patched code before it runs.
//!
//! Natively the code runs at full speed between stops. A stop is an `int3`
//! planted at an instruction's first byte; the worker's `SIGTRAP` handler
//! then does what the Unicorn engine's code hook would have done before that
//! instruction (observe a site, classify an exit, stub a call) and resumes.
//! The stops are chosen so that the native run sees every moment Unicorn's
//! hook acts on:
//! - every instruction holding a relocated field ([`SITE`]);
//! - every control transfer that may leave the code or go backwards
//!   ([`TRANSFER`]): the worker emulates it (it never runs natively), so
//!   control never reaches bytes outside the code, and every loop holds at
//!   least one stop (what bounds a native run's instructions, see
//!   `worker::Run::count_segment`);
//! - every instruction whose native effect may differ from Unicorn's
//!   ([`REFUSE`]): the run is handed to Unicorn instead.

use crate::execute::x86_64::{decode, forbidden};
use iced_x86::{ConditionCode, CpuidFeature, FlowControl, Instruction, Mnemonic, OpKind, Register};

/// An instruction holding a relocated field starts here: observe it.
pub const SITE: u8 = 1;
/// A control transfer the worker emulates (it may leave the code, go
/// backwards, or be the code's last instruction).
pub const TRANSFER: u8 = 2;
/// An instruction whose native run may differ from Unicorn's.
pub const REFUSE: u8 = 4;
/// The code's last instruction, falling through into bytes of another image
/// region (no trap after it): single-step it.
pub const STEP: u8 = 8;
/// Inside a loop: a site here is observed again after it ran (re-planted
/// after a single step) until every field in it reached its cap.
pub const REPLANT: u8 = 16;
/// An instruction starts here.
pub const START: u8 = 32;
/// The instruction starting here holds a relocated field.
pub const FIELD: u8 = 128;

/// The flags of every code offset.
pub struct Plan {
    pub flags: Vec<u8>,
}

/// CPU features whose instructions Unicorn (QEMU's x86-64 TCG) runs exactly
/// as the host does. Anything else (AVX, x87 transcendentals, `cpuid`,
/// `rdtsc`, ...) may be missing there or answer differently. BMI1: clang
/// emits `tzcnt` (the 3.13.5 header has one), which Unicorn's CPU runs as
/// `tzcnt`, not as the `bsf` a CPU without BMI1 would.
const SAME_ON_BOTH: &[CpuidFeature] = &[
    CpuidFeature::INTEL8086,
    CpuidFeature::INTEL186,
    CpuidFeature::INTEL286,
    CpuidFeature::INTEL386,
    CpuidFeature::INTEL486,
    CpuidFeature::X64,
    CpuidFeature::CMOV,
    CpuidFeature::CX8,
    CpuidFeature::SSE,
    CpuidFeature::SSE2,
    CpuidFeature::MULTIBYTENOP,
    CpuidFeature::PAUSE,
    CpuidFeature::CET_IBT,
    CpuidFeature::BMI1,
];

/// Plan the stops of `code` (at `code_addr`), whose relocated fields are at
/// `fields` (sorted by address). `guard_after`: the byte after the code is
/// a trap (no other image region there). `Err`: the code cannot be run
/// natively at all (undecodable, or a branch into the middle of an instruction).
pub fn analyse(code: &[u8], code_addr: u64, fields: &[(usize, u64)], guard_after: bool) -> Result<Plan, &'static str> {
    let insns = decode_all(code, code_addr)?;
    let code_end = code_addr + code.len() as u64;
    let inside = |t: u64| (code_addr..code_end).contains(&t);
    let mut flags = vec![0u8; code.len()];
    let mut loops: Vec<(usize, usize)> = Vec::new();
    let mut targets: Vec<u64> = Vec::new();
    for (n, insn) in insns.iter().enumerate() {
        let offset = (insn.ip() - code_addr) as usize;
        let last = n + 1 == insns.len();
        let mut f = START;
        let first = fields.partition_point(|(_, a)| *a < insn.ip());
        if fields.get(first).is_some_and(|(_, a)| *a < insn.next_ip()) {
            f |= SITE | FIELD;
        }
        if refused(insn) {
            f |= REFUSE;
        }
        let direct = matches!(insn.op0_kind(), OpKind::NearBranch64).then(|| insn.near_branch_target());
        match (insn.flow_control(), direct) {
            (FlowControl::Next, _) if last && !guard_after => f |= STEP,
            (FlowControl::Next, _) => {}
            (FlowControl::Call, Some(t)) if inside(t) => f |= REFUSE,
            (FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch | FlowControl::Call, Some(t)) => {
                if inside(t) {
                    targets.push(t);
                }
                if !inside(t) || t <= insn.ip() || last {
                    f |= TRANSFER;
                }
                if inside(t) && t <= insn.ip() {
                    loops.push(((t - code_addr) as usize, offset));
                }
            }
            (FlowControl::IndirectBranch | FlowControl::IndirectCall | FlowControl::Return, _) => f |= TRANSFER,
            _ => f |= REFUSE,
        }
        flags[offset] = f;
    }
    if targets.iter().any(|t| flags[(t - code_addr) as usize] & START == 0) {
        return Err("a branch lands inside an instruction");
    }
    for (from, to) in loops {
        for f in &mut flags[from..=to] {
            *f |= REPLANT;
        }
    }
    Ok(Plan { flags })
}

/// Every instruction of `code`, in order; `Err` when some bytes decode to
/// nothing (or the last instruction runs past the end).
fn decode_all(code: &[u8], code_addr: u64) -> Result<Vec<Instruction>, &'static str> {
    let mut decoder = iced_x86::Decoder::with_ip(64, code, code_addr, iced_x86::DecoderOptions::NONE);
    let mut out = Vec::with_capacity(code.len() / 4);
    while decoder.can_decode() {
        let insn = decoder.decode();
        if insn.is_invalid() {
            return Err("undecodable code");
        }
        out.push(insn);
    }
    Ok(out)
}

/// Must Unicorn run this instruction (its native effect may differ, or
/// Unicorn's verdict on it is a fault the native run would not see)?
fn refused(insn: &Instruction) -> bool {
    forbidden(insn)
        || !insn.cpuid_features().iter().all(|f| SAME_ON_BOTH.contains(f))
        || matches!(insn.mnemonic(), Mnemonic::Ud0 | Mnemonic::Ud1 | Mnemonic::Ud2)
        // fs/gs: the worker's thread pointer, not Unicorn's zero base.
        || matches!(insn.segment_prefix(), Register::FS | Register::GS)
        || (0..insn.op_count()).any(|i| insn.op_kind(i) == OpKind::Register && insn.op_register(i).is_segment_register())
        // Unicorn counts each iteration of a repeated string instruction.
        || (insn.is_string_instruction() && (insn.has_rep_prefix() || insn.has_repne_prefix()))
        // `loop`, `jrcxz`: conditions the worker does not evaluate.
        || (insn.flow_control() == FlowControl::ConditionalBranch && insn.condition_code() == ConditionCode::None)
}

/// Is a conditional branch with condition `cc` taken under `rflags`?
pub fn taken(cc: ConditionCode, rflags: u64) -> bool {
    let flag = |bit: u32| rflags >> bit & 1 == 1;
    let (cf, pf, zf, sf, of) = (flag(0), flag(2), flag(6), flag(7), flag(11));
    match cc {
        ConditionCode::o => of,
        ConditionCode::no => !of,
        ConditionCode::b => cf,
        ConditionCode::ae => !cf,
        ConditionCode::e => zf,
        ConditionCode::ne => !zf,
        ConditionCode::be => cf || zf,
        ConditionCode::a => !cf && !zf,
        ConditionCode::s => sf,
        ConditionCode::ns => !sf,
        ConditionCode::p => pf,
        ConditionCode::np => !pf,
        ConditionCode::l => sf != of,
        ConditionCode::ge => sf == of,
        ConditionCode::le => zf || sf != of,
        ConditionCode::g => !zf && sf == of,
        ConditionCode::None => false,
    }
}

/// The instruction at code offset `offset` (decoded from the original bytes).
pub fn instruction_at(code: &[u8], code_addr: u64, offset: usize) -> Instruction {
    let end = code.len().min(offset + 15);
    decode(&code[offset..end], code_addr + offset as u64, 64).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backward_branch_is_a_stop_and_its_loop_replants() {
        // 0: add rbp, 8 (field at 3); 4: dec ecx; 6: jnz 0; 8: ret
        let code = [0x48, 0x83, 0xc5, 0x08, 0xff, 0xc9, 0x75, 0xf8, 0xc3];
        let plan = analyse(&code, 0x1000, &[(0, 0x1003)], true).unwrap();
        assert_eq!(plan.flags.iter().filter(|f| *f & START != 0).count(), 4);
        assert_eq!(plan.flags[0] & (SITE | REPLANT), SITE | REPLANT);
        assert_eq!(plan.flags[6] & TRANSFER, TRANSFER);
        assert_eq!(plan.flags[8] & (TRANSFER | REPLANT), TRANSFER);
        assert_eq!(plan.flags[4] & (TRANSFER | SITE), 0);
    }

    #[test]
    fn a_branch_into_an_instruction_is_refused() {
        // 0: jmp 1 (into its own displacement)
        assert!(analyse(&[0xeb, 0xff, 0xc3], 0x1000, &[], true).is_err());
    }

    #[test]
    fn system_calls_avx_and_fs_loads_are_refused() {
        for code in [&[0x0f, 0x05][..], &[0xc5, 0xfc, 0x77], &[0x64, 0x48, 0x8b, 0x04, 0x25, 0, 0, 0, 0]] {
            let plan = analyse(code, 0x1000, &[], true).unwrap();
            assert_eq!(plan.flags[0] & REFUSE, REFUSE, "{code:x?}");
        }
    }

    #[test]
    fn conditions_read_the_flags() {
        assert!(taken(ConditionCode::e, 1 << 6));
        assert!(!taken(ConditionCode::ne, 1 << 6));
        assert!(taken(ConditionCode::l, 1 << 7));
        assert!(!taken(ConditionCode::l, (1 << 7) | (1 << 11)));
        assert!(taken(ConditionCode::be, 1));
    }
}
