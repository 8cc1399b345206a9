//! Placement: where a stencil's code and data sit, where every symbol it
//! names lives, and what the instruction's fields hold, for one run.
//!
//! Placements are drawn from a seed so the same seed always gives the same
//! addresses; each (seed, stencil, index) triple has its own stream, so
//! `--stencil` or `--placement` filters never shift other runs.

use crate::model::{Stencil, Symbol, Term, Value};
use serde::Serialize;
use std::collections::BTreeMap;

/// Lowest address we place anything at: the first 64 KiB stay unmapped, like
/// Linux's `vm.mmap_min_addr`, so NULL-ish pointers fault.
pub const USER_MIN: u64 = 0x1_0000;
/// One past the highest canonical user-space address on x86-64 (47 bits).
pub const USER_END: u64 = 0x0000_8000_0000_0000;
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
}

impl Placement {
    /// `_JIT_CONTINUE`: the next uop starts right after this one's code.
    pub fn continuation(&self, stencil: &Stencil) -> u64 {
        self.code.wrapping_add(stencil.code_size())
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
            Term::Target => self.target as u64,
            Term::ExitIndex => self.exit_index as u64,
        }
    }

    /// What a relocation's symbol S stands for in this placement. `None` for
    /// object-local symbols, whose place in the data part only the object knows.
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
            Symbol::Target => self.target as u64,
            Symbol::ExitIndex => self.exit_index as u64,
            Symbol::External(name) => *self.externs.get(name)?,
            Symbol::Local(_) => return None,
        })
    }
}
