//! Judge: compare what the sites did (execute's observations) with what the
//! relocations objdump printed say they must do (DOMAIN.md §6), and check the
//! run's exits, stack and memory discipline.
//!
//! The oracle is the relocation `P: TYPE S+A`, never the patch call: a
//! patch call is only named in a finding to show where the bug is.

use crate::execute::{ExitKind, Fault, RunEnd, SiteObservation, Trace};
use crate::model::{truncate, DataCommentKind, Effect, EmitOp, PatchCall, Section, Stencil, Symbol, Term};
use crate::patch::{EmitFailure, Image};
use crate::place::Placement;
use crate::target::{RelExpr, Target};
use serde::Serialize;
use std::collections::BTreeSet;

/// One thing found wrong in one run. The report merges equal findings
/// across runs (same stencil, same [`Finding::key`]).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Finding {
    pub kind: FindingKind,
    /// One line: what is wrong.
    pub message: String,
    /// The relocation (index into `stencil.relocations`) it concerns, if any.
    #[serde(skip)]
    pub relocation: Option<usize>,
    /// Code offset of the instruction that exited or faulted, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<u64>,
    pub site: Option<Site>,
    pub expected: Option<Shown>,
    pub actual: Option<Shown>,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// A relocation site transfers/loads/forms the wrong value.
    WrongValue,
    /// The relocated field is no longer an operand of the instruction there.
    MangledSite,
    /// A patch function's assertion fired at a legal placement.
    PatchAssert,
    /// A data slot does not hold what its header comment says.
    DataSlot,
    /// The run left the code for an address no relocation allows.
    BadExit,
    /// The stack pointer at exit differs from the one at entry.
    StackImbalance,
    /// A call with the stack misaligned for the C ABI.
    MisalignedCall,
    /// The code wrote into code/data, ran an invalid instruction, or touched unmappable memory.
    Fault,
    /// The run did not finish within its instruction or call budget.
    Hang,
    /// Patches and relocations do not account for each other: a hole with
    /// no relocation, a relocation no hole writes, or a patched byte outside
    /// every relocation field and data slot.
    Unaccounted,
    /// A branch lands on an instruction a relaxation rewrote together with
    /// the one before it (CPython issue 146128): the path through the
    /// branch runs half a relaxed pair.
    RelaxedBranchTarget,
}

/// Where in the stencil a finding is.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Site {
    pub section: Section,
    /// Offset of the relocated field (or data slot) in its section.
    pub offset: u64,
    pub address: u64,
    /// The instruction now at the site (patched), formatted, and its code offset.
    pub instruction: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instruction_offset: Option<u64>,
    /// The relocation line as objdump printed it, with its header line.
    pub relocation: Option<String>,
    pub relocation_line: Option<usize>,
    /// The patch call that wrote this site, with its header line.
    pub hole: Option<String>,
    pub hole_line: Option<usize>,
}

impl Site {
    /// The site at `offset` of `section`, with the hole and relocation that
    /// concern it (no instruction: the caller adds one when it has it).
    fn at(
        stencil: &Stencil,
        placement: &Placement,
        section: Section,
        offset: u64,
        hole: Option<&PatchCall>,
        relocation: Option<usize>,
    ) -> Site {
        Site {
            section,
            offset,
            address: placement.address_of(section, offset).unwrap_or(0),
            instruction: None,
            instruction_offset: None,
            relocation: relocation.map(|i| stencil.relocations[i].text.clone()),
            relocation_line: relocation.map(|i| stencil.relocations[i].line),
            hole: hole.map(PatchCall::to_string),
            hole_line: hole.map(|h| h.line),
        }
    }
}

/// A value with what it is (`_JIT_CONTINUE`, `data+0x18`…), when we know.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Shown {
    pub value: u64,
    pub label: String,
}

impl Finding {
    /// Two findings are the same bug when these match: the kind and where
    /// in the stencil (never addresses, which differ with every placement).
    pub fn key(&self) -> (FindingKind, Option<usize>, Option<u64>, Option<u64>) {
        let offset = self.site.as_ref().map(|s| s.offset);
        (self.kind, self.relocation, offset, self.at)
    }
}

/// What the judge concluded about one run.
#[derive(Clone, Debug, Default)]
pub struct Verdict {
    pub findings: Vec<Finding>,
    /// Indices (in `stencil.holes()` order) of the holes the run executed or read.
    pub covered_holes: BTreeSet<usize>,
}

const PAGE_MASK: u64 = !0xfff;

/// What a GOT pair's first half did wrong: its page holds no slot with S.
const GOT_PAGE_MISS: &str = "formed page";

/// A mismatch: (expected, actual, what the instruction did).
type Mismatch = (u64, u64, &'static str);

fn differs(expected: u64, actual: u64, what: &'static str) -> Option<Mismatch> {
    (expected != actual).then_some((expected, actual, what))
}

/// Compare one observation with its relocation, by the relocation's
/// expression (DOMAIN.md §6). `Some((expected, actual, what))` on a mismatch.
fn check_site(
    target: Target,
    stencil: &Stencil,
    placement: &Placement,
    image: &Image,
    obs: &SiteObservation,
    effect: &Effect,
) -> Option<Mismatch> {
    let reloc = &stencil.relocations[obs.relocation];
    let Ok(expr) = target.expr(reloc.kind) else {
        // The loader refuses kinds its target has no expression for.
        return Some((0, 0, "has no relocation expression for"));
    };
    let p = placement.code + reloc.offset;
    let next_pc = obs.pc + obs.len as u64;
    // The address (or target) the instruction refers to.
    let referred = match *effect {
        Effect::Transfer { target, slot: None } => Some(target),
        Effect::Transfer { slot: Some(slot), .. } => Some(slot),
        Effect::Load { address, .. } | Effect::MemoryOperand { address } => Some(address),
        Effect::Address { value, .. } | Effect::Formed { value } => Some(value),
        Effect::Immediate { .. } | Effect::Displacement { .. } => None,
    };
    let Some(s) = placement.symbol(&reloc.symbol, stencil) else {
        // An object-local symbol a header does not place: somewhere in the
        // stencil's read-only data.
        let (mut start, mut end) = (placement.data, placement.data + stencil.rodata_len());
        if matches!(expr, RelExpr::Page | RelExpr::GotPage) {
            // An `adrp` forms the page: one of the pages the data spans.
            (start, end) = (start & PAGE_MASK, (end.max(start + 1) - 1) & PAGE_MASK | 0xfff);
        }
        // An absolute field may hold it as an immediate (`push offset str`).
        let actual = match *effect {
            Effect::Immediate { value, .. } | Effect::Displacement { value, .. } => value,
            _ => referred.unwrap_or(0),
        };
        return (!(start..end).contains(&actual)).then_some((start, actual, "referred to"));
    };
    let s_plus_a = s.wrapping_add(reloc.addend as u64);
    match expr {
        // Through a GOT slot, or relaxed: the instruction uses S itself.
        RelExpr::Got | RelExpr::GotPageOffset => {
            let (actual, bits, what) = match *effect {
                Effect::Transfer { target, .. } => (target, 64, "control went to"),
                Effect::Load { value, bits, .. } => (value, bits, "loaded"),
                Effect::Address { value, bits } | Effect::Immediate { value, bits } => (value, bits, "formed"),
                Effect::Displacement { value, bits } => (value, bits, "displaced by"),
                Effect::Formed { value } => (value, 64, "formed"),
                // A store or read-modify-write through a GOT-relocated operand:
                // only its value matters and it is not ours to see.
                Effect::MemoryOperand { .. } => return None,
            };
            differs(truncate(s, bits), truncate(actual, bits), what).map(|(e, _, w)| (e, actual, w))
        }
        // The first half of a GOT pair: the page of a slot that holds S. A
        // relaxed first half (movz, ldr literal) is seen as what it formed
        // (`Effect::Formed`) and judged by the pair's end.
        RelExpr::GotPage => match *effect {
            Effect::Address { value: page, .. } => {
                let holds_s = (0..0x1000u64).step_by(8).any(|k| image.read_u64((page & PAGE_MASK) + k) == Some(s));
                (!holds_s).then_some((s, page, GOT_PAGE_MISS))
            }
            _ => None,
        },
        RelExpr::PcRelative => {
            let expected = target.info().pc_relative_referent(s_plus_a, p, obs.pc, next_pc);
            differs(expected, referred.unwrap_or(0), "referred to")
        }
        RelExpr::Branch => match *effect {
            Effect::Transfer { target, .. } => differs(s_plus_a, target, "branched to"),
            _ => Some((s_plus_a, referred.unwrap_or(0), "referred to")),
        },
        RelExpr::Page => differs(s_plus_a & PAGE_MASK, referred.unwrap_or(0), "formed page"),
        RelExpr::PageOffset => differs(s_plus_a, referred.unwrap_or(0), "referred to"),
        RelExpr::Absolute => {
            let (actual, bits) = match *effect {
                Effect::Immediate { value, bits } | Effect::Displacement { value, bits } => (value, bits),
                _ => (referred.unwrap_or(0), 64),
            };
            differs(truncate(s_plus_a, bits), truncate(actual, bits), "held").map(|(e, _, w)| (e, actual, w))
        }
        RelExpr::AbsoluteChunk(k) => {
            let shift = 16 * k as u32;
            let expected = ((s_plus_a >> shift) & 0xffff) << shift;
            match *effect {
                Effect::Immediate { value, .. } | Effect::Displacement { value, .. } => {
                    differs(expected, value, "held")
                }
                _ => Some((expected, referred.unwrap_or(0), "held")),
            }
        }
    }
}

/// Name the value if it is one of the placement's: makes swapped holes obvious.
pub fn label(stencil: &Stencil, placement: &Placement, value: u64) -> String {
    // The placement's own targets, whether or not a relocation still names
    // them (CPython drops the final `jmp _JIT_CONTINUE`).
    let own = [
        (placement.continuation(stencil), Symbol::Continue),
        (placement.jump_target, Symbol::JumpTarget),
        (placement.error_target, Symbol::ErrorTarget),
        (placement.top, Symbol::Top),
    ];
    if let Some((_, sym)) = own.iter().find(|(v, _)| *v == value) {
        return sym.to_string();
    }
    for sym in stencil.symbols() {
        if placement.symbol(&sym, stencil) == Some(value) {
            return sym.to_string();
        }
    }
    let in_range = |base: u64, len: u64| value >= base && value < base + len.max(1);
    if in_range(placement.data, stencil.data_size()) {
        return format!("data+{:#x}", value - placement.data);
    }
    if in_range(placement.code, stencil.code_size()) {
        return format!("code+{:#x}", value - placement.code);
    }
    String::new()
}

fn shown(stencil: &Stencil, placement: &Placement, value: u64) -> Shown {
    Shown { value, label: label(stencil, placement, value) }
}

/// The code hole that patches the field at `offset`, if any.
fn hole_at(stencil: &Stencil, section: Section, offset: u64) -> Option<&PatchCall> {
    stencil.holes().find(|h| h.section == section && h.offset <= offset && offset < h.offset + h.func.width())
}

fn site(stencil: &Stencil, placement: &Placement, image: &Image, relocation: usize, pc: u64, target: Target) -> Site {
    let reloc = &stencil.relocations[relocation];
    let hole = hole_at(stencil, Section::Code, reloc.offset);
    let info = target.info();
    let len = info.max_instruction_len().min((image.code_addr + image.code.len() as u64).saturating_sub(pc) as usize);
    let instruction = image.read(pc, len).map(|b| info.format_instruction(b, pc));
    Site {
        section: Section::Code,
        offset: reloc.offset,
        address: placement.code + reloc.offset,
        instruction,
        instruction_offset: Some(pc.wrapping_sub(placement.code)),
        relocation: Some(reloc.text.clone()),
        relocation_line: Some(reloc.line),
        hole: hole.map(PatchCall::to_string),
        hole_line: hole.map(|h| h.line),
    }
}

/// Judge the site observations (static or dynamic) of one placement.
pub fn judge_sites(
    target: Target,
    stencil: &Stencil,
    placement: &Placement,
    image: &Image,
    observations: &[SiteObservation],
) -> Vec<Finding> {
    let mut out = Vec::new();
    for obs in observations {
        let reloc = &stencil.relocations[obs.relocation];
        let Some(effect) = &obs.effect else {
            out.push(Finding {
                kind: FindingKind::MangledSite,
                message: format!(
                    "the field of `{}` at code+{:#x} is no longer a displacement, branch or immediate of the instruction there",
                    reloc.text, reloc.offset
                ),
                relocation: Some(obs.relocation),
                at: None,
                site: Some(site(stencil, placement, image, obs.relocation, obs.pc, target)),
                expected: None,
                actual: None,
            });
            continue;
        };
        if let Some(finding) = changed_transfer(target, stencil, placement, image, obs) {
            out.push(finding);
            continue;
        }
        if let Some((expected, actual, what)) = check_site(target, stencil, placement, image, obs, effect) {
            let exp = shown(stencil, placement, expected);
            let act = shown(stencil, placement, actual);
            let mut named = if exp.label.is_empty() { reloc.symbol.to_string() } else { exp.label.clone() };
            if what == GOT_PAGE_MISS {
                named = format!("a page with a slot holding {named}");
            }
            out.push(Finding {
                kind: FindingKind::WrongValue,
                message: format!(
                    "{} at code+{:#x} {what} {:#x}{} instead of {named} ({:#x})",
                    reloc.kind,
                    reloc.offset,
                    actual,
                    if act.label.is_empty() { String::new() } else { format!(" ({})", act.label) },
                    expected
                ),
                relocation: Some(obs.relocation),
                at: None,
                site: Some(site(stencil, placement, image, obs.relocation, obs.pc, target)),
                expected: Some(exp),
                actual: Some(act),
            });
        }
    }
    out
}

/// A call must stay a call and a jump a jump, however the patch relaxed it
/// (LLVM JITLink once relaxed `call *` into a `jmp`: right target, wrong kind).
fn changed_transfer(
    target: Target,
    stencil: &Stencil,
    placement: &Placement,
    image: &Image,
    obs: &SiteObservation,
) -> Option<Finding> {
    use crate::execute::TransferClass;
    let info = target.info();
    let reloc = &stencil.relocations[obs.relocation];
    let original = stencil.instruction_at(reloc.offset)?;
    let before = info.transfer_class(&original.bytes, placement.code + original.offset);
    let end = image.code_addr + image.code.len() as u64;
    let patched = image.read(obs.pc, (end.saturating_sub(obs.pc)).min(info.max_instruction_len() as u64) as usize)?;
    let after = info.transfer_class(patched, obs.pc);
    if before == after || (before == TransferClass::Other && after == TransferClass::Other) {
        return None;
    }
    Some(Finding {
        kind: FindingKind::MangledSite,
        message: format!(
            "the {} at code+{:#x} (`{}`) is now a {} after patching",
            class_name(before),
            original.offset,
            original.text,
            class_name(after)
        ),
        relocation: Some(obs.relocation),
        at: None,
        site: Some(site(stencil, placement, image, obs.relocation, obs.pc, target)),
        expected: None,
        actual: None,
    })
}

fn class_name(c: crate::execute::TransferClass) -> &'static str {
    match c {
        crate::execute::TransferClass::Call => "call",
        crate::execute::TransferClass::Jump => "jump",
        crate::execute::TransferClass::Other => "non-branch instruction",
    }
}

/// Data slots must hold what the header's data comments say (`18: CONTINUE`).
/// A second opinion beside the sites: catches a dropped or misdirected data
/// patch even when no run reaches the code that reads the slot.
pub fn judge_data_slots(stencil: &Stencil, placement: &Placement, image: &Image) -> Vec<Finding> {
    let mut out = Vec::new();
    for comment in &stencil.data_comments {
        let DataCommentKind::Slot(value) = &comment.kind else { continue };
        let address = image.data_addr + comment.offset;
        let expected = placement.value(value, stencil);
        let Some(actual) = image.read(address, 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))) else {
            continue;
        };
        if actual != expected {
            let hole = hole_at(stencil, Section::Data, comment.offset);
            out.push(Finding {
                kind: FindingKind::DataSlot,
                message: format!(
                    "data slot at data+{:#x} (`{value}`, line {}) holds {actual:#x} instead of {expected:#x}",
                    comment.offset, comment.line
                ),
                relocation: None,
                at: None,
                site: Some(Site::at(stencil, placement, Section::Data, comment.offset, hole, None)),
                expected: Some(shown(stencil, placement, expected)),
                actual: Some(shown(stencil, placement, actual)),
            });
        }
    }
    out
}

/// CPython resolved the relocation at `field` when it wrote the header: the
/// body's bytes there differ from objdump's listing of the object (3.13
/// points an aarch64 `bl` to a far extern at its own inline veneer). What
/// the resolved instruction does is judged at its site like any other.
fn resolved_in_body(stencil: &Stencil, field: &std::ops::Range<u64>) -> bool {
    stencil.instructions.iter().any(|insn| {
        let start = field.start.checked_sub(insn.offset);
        start.is_some_and(|s| {
            let (s, n) = (s as usize, (field.end - field.start) as usize);
            let listed = insn.bytes.get(s..s + n);
            let body = stencil.code.get(field.start as usize..field.end as usize);
            listed.is_some() && body.is_some() && listed != body
        })
    })
}

/// Every byte the patches changed must be accounted for, and every
/// relocation written: a static rule over the patched image, the same on
/// every placement (a hole patched a few bytes off is a finding whether or
/// not a run reaches it).
pub fn judge_accounting(target: Target, stencil: &Stencil, placement: &Placement, image: &Image) -> Vec<Finding> {
    let info = target.info();
    let mut out = Vec::new();
    let finding =
        |section: Section, offset: u64, message: String, hole: Option<&PatchCall>, relocation: Option<usize>| Finding {
            kind: FindingKind::Unaccounted,
            message,
            relocation,
            at: None,
            site: Some(Site::at(stencil, placement, section, offset, hole, relocation)),
            expected: None,
            actual: None,
        };
    let fields: Vec<(usize, std::ops::Range<u64>)> =
        stencil.relocations.iter().enumerate().map(|(i, r)| (i, r.offset..r.offset + r.kind.width())).collect();
    let code_holes: Vec<&PatchCall> = stencil.holes().filter(|h| h.section == Section::Code).collect();
    for hole in &code_holes {
        let written = hole.offset..hole.offset + hole.func.width();
        let starts_a_field = fields.iter().any(|(_, f)| written.contains(&f.start) && f.end <= written.end);
        if !starts_a_field {
            out.push(finding(
                Section::Code,
                hole.offset,
                format!(
                    "hole {hole} (line {}) writes code+{:#x}..{:#x}, which holds no relocation's field",
                    hole.line, written.start, written.end
                ),
                Some(hole),
                None,
            ));
        }
    }
    for (i, field) in &fields {
        let written = code_holes.iter().any(|h| h.offset <= field.start && field.end <= h.offset + h.func.width());
        if !written && !resolved_in_body(stencil, field) {
            let r = &stencil.relocations[*i];
            out.push(finding(
                Section::Code,
                field.start,
                format!("relocation `{}` (line {}) is written by no hole", r.text, r.line),
                None,
                Some(*i),
            ));
        }
    }
    // Patched bytes: inside a field (or the opcode bytes its relaxation may
    // rewrite) in code; inside a slot the data comments list in data.
    let allowed_code = |off: u64| {
        stencil.relocations.iter().any(|r| {
            let before = target.expr(r.kind).map_or(0, |e| info.relaxable_bytes_before(e));
            (r.offset.saturating_sub(before)..r.offset + r.kind.width()).contains(&off)
        })
    };
    let copied = |copy: fn(&EmitOp) -> bool| stencil.emit.iter().any(copy);
    if copied(|op| matches!(op, EmitOp::CopyCode { .. })) || stencil.code.iter().all(|b| *b == 0) {
        if let Some(off) =
            (0..stencil.code.len()).find(|&k| image.code[k] != stencil.code[k] && !allowed_code(k as u64))
        {
            let hole =
                code_holes.iter().find(|h| (h.offset..h.offset + h.func.width()).contains(&(off as u64))).copied();
            out.push(finding(
                Section::Code,
                off as u64,
                format!(
                    "code+{off:#x} was patched ({:#04x} -> {:#04x}) but lies in no relocation's field",
                    stencil.code[off], image.code[off]
                ),
                hole,
                None,
            ));
        }
    }
    let slots: Vec<std::ops::Range<u64>> = stencil
        .data_comments
        .iter()
        .filter(|c| matches!(c.kind, DataCommentKind::Slot(_)))
        .map(|c| c.offset..c.offset + 8)
        .collect();
    if copied(|op| matches!(op, EmitOp::CopyData { .. })) || stencil.data.iter().all(|b| *b == 0) {
        let unlisted = (0..stencil.data.len())
            .find(|&k| image.data[k] != stencil.data[k] && !slots.iter().any(|s| s.contains(&(k as u64))));
        if let Some(off) = unlisted {
            let hole = stencil
                .holes()
                .find(|h| h.section == Section::Data && (h.offset..h.offset + h.func.width()).contains(&(off as u64)));
            out.push(finding(
                Section::Data,
                off as u64,
                format!(
                    "data+{off:#x} was patched ({:#04x} -> {:#04x}) but lies in no slot the data comments list",
                    stencil.data[off], image.data[off]
                ),
                hole,
                None,
            ));
        }
    }
    out
}

/// Every branch target inside a stencil is a possible entry: a relaxation
/// that rewrote a pair's second instruction into something that depends on
/// the first (`patch_aarch64_33rx`: `ldr` → `nop`/`movk`) is wrong where a
/// branch lands on that second instruction, skipping the first.
pub fn judge_relaxed_pairs(target: Target, stencil: &Stencil, placement: &Placement, image: &Image) -> Vec<Finding> {
    let info = target.info();
    let mut out = Vec::new();
    let pairs = stencil.holes().filter(|h| h.section == Section::Code && h.func.patches_pair());
    for pair in pairs {
        let second = pair.offset + 4;
        let Some(original) = stencil.code.get(second as usize..second as usize + 4) else { continue };
        let Some(patched) = image.read(placement.code + second, 4) else { continue };
        if !info.relaxed(original, patched) {
            continue;
        }
        for branch in &stencil.instructions {
            let at = placement.code + branch.offset;
            if info.branch_target(&branch.bytes, at) != Some(placement.code + second) {
                continue;
            }
            let relocation = stencil.relocations.iter().position(|r| r.offset == second);
            out.push(Finding {
                kind: FindingKind::RelaxedBranchTarget,
                message: format!(
                    "the branch at code+{:#x} (`{}`) lands on code+{second:#x}, the second half of the pair {pair} relaxed into `{}`: that path skips the first half",
                    branch.offset,
                    branch.text,
                    info.format_instruction(patched, placement.code + second)
                ),
                relocation,
                at: Some(branch.offset),
                site: Some(Site {
                    instruction: Some(info.format_instruction(patched, placement.code + second)),
                    instruction_offset: Some(second),
                    ..Site::at(stencil, placement, Section::Code, second, Some(pair), relocation)
                }),
                expected: None,
                actual: None,
            });
        }
    }
    out
}

/// A patch function's assert fired (or it read outside the image).
pub fn judge_emit_failure(stencil: &Stencil, placement: &Placement, failure: &EmitFailure) -> Finding {
    let call = &failure.call;
    let relocation = stencil.relocations.iter().position(|r| r.offset == call.offset && call.section == Section::Code);
    Finding {
        kind: FindingKind::PatchAssert,
        message: format!("{} (line {}): {}", call, call.line, failure.assert.message),
        relocation,
        at: None,
        site: Some(Site::at(stencil, placement, call.section, call.offset, Some(call), relocation)),
        expected: None,
        actual: None,
    }
}

/// Addresses control may leave the code for: every control-target symbol a
/// relocation names, and the continuation.
fn allowed_exits(target: Target, stencil: &Stencil, placement: &Placement) -> Vec<(u64, String)> {
    use crate::execute::TransferClass;
    let mut out = vec![(placement.continuation(stencil), Symbol::Continue.to_string())];
    // An extern is a place to go only where a jump or call names it (a data
    // extern such as `_PyRuntime` never is); the trace's own targets always are.
    let transfers = |offset: u64| {
        stencil
            .instruction_at(offset)
            .is_some_and(|i| target.info().transfer_class(&i.bytes, placement.code + i.offset) != TransferClass::Other)
    };
    for r in &stencil.relocations {
        let extern_transfer = matches!(r.symbol, Symbol::External(_)) && transfers(r.offset);
        if r.symbol.is_control_target() && (extern_transfer || !matches!(r.symbol, Symbol::External(_))) {
            if let Some(v) = placement.symbol(&r.symbol, stencil) {
                out.push((v, r.symbol.to_string()));
            }
        }
    }
    out
}

/// How a run went, judged.
#[derive(Clone, Debug, Default)]
pub struct RunJudgement {
    pub findings: Vec<Finding>,
    /// Why the run says nothing either way: it ran out of budget or touched
    /// an address no process could map, both from made-up memory. (Bad
    /// relocations are caught at their sites before such effects.)
    pub inconclusive: Option<String>,
}

/// Judge how a run went: its exit, stack discipline, calls and faults. With
/// `strict`, inconclusive runs are findings too.
pub fn judge_run(on: Target, stencil: &Stencil, placement: &Placement, trace: &Trace, strict: bool) -> RunJudgement {
    let abi = on.info().abi();
    let mut out = RunJudgement::default();
    let offset = |pc: u64| pc.wrapping_sub(placement.code);
    let plain = |kind, pc: Option<u64>, message: String| Finding {
        kind,
        message,
        relocation: None,
        at: pc.map(offset),
        site: None,
        expected: None,
        actual: None,
    };
    let at = |pc: u64| format!("code+{:#x}", offset(pc));
    // The instruction at `pc` as the stencil has it (a forbidden or
    // unsupported one is no relocation site: patching left it alone).
    let instruction = |pc: u64| {
        let off = offset(pc) as usize;
        let info = on.info();
        match stencil.code.get(off..) {
            Some(rest) if !rest.is_empty() => {
                info.format_instruction(&rest[..rest.len().min(info.max_instruction_len())], pc)
            }
            _ => format!("{pc:#x}"),
        }
    };
    for call in &trace.calls {
        // At a C callee's first instruction the stack pointer must be as the
        // ABI aligns it (SysV x86-64: the return address on 16 + 8).
        if call.sp % abi.call_sp_align != abi.call_sp_residue {
            out.findings.push(plain(
                FindingKind::MisalignedCall,
                Some(call.from),
                format!(
                    "call at {} entered {:#x} with {} = {:#x} (not {} mod {})",
                    at(call.from),
                    call.target,
                    abi.stack_pointer,
                    call.sp,
                    abi.call_sp_residue,
                    abi.call_sp_align
                ),
            ));
        }
    }
    let Some(end) = &trace.end else { return out };
    let mut inconclusive = |kind, message: String| {
        if strict {
            out.findings.push(plain(kind, None, message));
        } else {
            out.inconclusive = Some(message);
        }
    };
    match end {
        RunEnd::Exit { kind, from, target, sp, computed } => {
            let allowed = match kind {
                // Back to whoever entered the trace (the trampoline's caller,
                // or the trampoline for a uop that leaves the JIT).
                ExitKind::Return => *target == crate::execute::RETURN_SENTINEL,
                ExitKind::AfterNoReturnCall => true,
                _ => *computed || allowed_exits(on, stencil, placement).iter().any(|(v, _)| v == target),
            };
            // A computed target no code can be at: outside user space
            // (non-canonical included) or in the NULL page. Made-up memory
            // leads there too (the 3.13.5 headers do), so it says nothing
            // about the stencil; a relocation's target there is a BadExit.
            let user = on.info().user_space();
            let nowhere = *target >= user.end || *target < crate::execute::NULL_PAGE_END;
            if allowed && *computed && *kind == ExitKind::Jump && nowhere {
                let why = format!(
                    "{kind:?} at {} left for {target:#x}, where no code can be (a computed target: made-up memory may have led there)",
                    at(*from)
                );
                if strict {
                    out.findings.push(plain(FindingKind::BadExit, Some(*from), why));
                } else {
                    out.inconclusive = Some(why);
                }
            }
            if !allowed {
                let l = label(stencil, placement, *target);
                let named = if l.is_empty() { String::new() } else { format!(" ({l})") };
                out.findings.push(plain(
                    FindingKind::BadExit,
                    Some(*from),
                    format!(
                        "{kind:?} at {} left for {target:#x}{named}, not an address any relocation allows",
                        at(*from)
                    ),
                ));
            }
            if *sp != trace.entry_sp && *kind != ExitKind::AfterNoReturnCall {
                out.findings.push(plain(
                    FindingKind::StackImbalance,
                    Some(*from),
                    format!(
                        "exit at {} with {} {:+} bytes from entry",
                        at(*from),
                        abi.stack_pointer,
                        sp.wrapping_sub(trace.entry_sp) as i64
                    ),
                ));
            }
        }
        RunEnd::Fault { fault: Fault::Unmappable, pc, address } => {
            inconclusive(FindingKind::Fault, format!("at {} touched unmappable address {address:#x}", at(*pc)));
        }
        RunEnd::Fault { fault: Fault::MemoryBudget, pc, address } => {
            inconclusive(
                FindingKind::Hang,
                format!(
                    "at {} wanted made-up memory at {address:#x} beyond the {} pages a run may have",
                    at(*pc),
                    crate::execute::DEMAND_PAGE_LIMIT
                ),
            );
        }
        RunEnd::Fault { fault: Fault::Unsupported, pc, .. } => {
            inconclusive(
                FindingKind::Fault,
                format!("Unicorn cannot run `{}` (at {}): valid code the emulator lacks", instruction(*pc), at(*pc)),
            );
        }
        RunEnd::Fault { fault, pc, address } => {
            let what = match fault {
                Fault::WriteIntoCode => format!("wrote into code at {address:#x}"),
                Fault::WriteIntoData => {
                    format!("wrote into its data at data+{:#x}", address.wrapping_sub(placement.data))
                }
                Fault::InvalidInstruction => "ran an invalid instruction".to_string(),
                Fault::FunctionAsData => {
                    let function = placement
                        .externs
                        .iter()
                        .filter(|(_, a)| placement.functions.contains(a) && **a <= *address)
                        .max_by_key(|(_, a)| **a)
                        .map_or(String::new(), |(n, a)| format!(" ({n}+{:#x})", address - a));
                    format!(
                        "`{}` touched {address:#x}{function}, the code of a function the stencil calls: a function used as data",
                        instruction(*pc)
                    )
                }
                Fault::ReservedRegister => format!(
                    "reached `{}`, which writes a register the platform reserves (x18 on Darwin and Windows on Arm)",
                    instruction(*pc)
                ),
                Fault::NullConstant => format!(
                    "`{}` touched {address:#x} in the NULL page through an address no made-up input produced \
                     (a constant or a patched value): it faults whatever the stencil is given",
                    instruction(*pc)
                ),
                Fault::Forbidden => format!(
                    "reached `{}`, which no stencil may execute (privileged, a system call, a halt or a trap)",
                    instruction(*pc)
                ),
                Fault::Unmappable | Fault::MemoryBudget | Fault::Other | Fault::Unsupported => {
                    "faulted in the emulator".to_string()
                }
            };
            out.findings.push(plain(FindingKind::Fault, Some(*pc), format!("at {} {what}", at(*pc))));
        }
        RunEnd::InstructionLimit { limit, pc } => {
            inconclusive(FindingKind::Hang, format!("still running after {limit} instructions (at {})", at(*pc)));
        }
        RunEnd::TimeLimit { pc } => {
            let limit = crate::execute::RUN_TIME_LIMIT.as_secs();
            inconclusive(FindingKind::Hang, format!("still running after {limit} s (at {})", at(*pc)));
        }
        RunEnd::CallLimit { pc } => {
            inconclusive(
                FindingKind::Hang,
                format!("made more than {} calls (at {})", crate::execute::CALL_LIMIT, at(*pc)),
            );
        }
    }
    out
}

/// Holes this run executed (code) or read through (data).
pub fn coverage(stencil: &Stencil, placement: &Placement, trace: &Trace) -> BTreeSet<usize> {
    let mut covered = BTreeSet::new();
    for (i, hole) in stencil.holes().enumerate() {
        let hit = match hole.section {
            Section::Code => {
                let at = placement.code + hole.offset;
                trace.sites.iter().any(|o| o.pc <= at && at < o.pc + o.len as u64)
            }
            Section::Data | Section::Got => {
                let at = placement.address_of(hole.section, hole.offset).unwrap_or(0);
                let slot = at..at + 8;
                let read = trace.sites.iter().any(|o| match o.effect {
                    Some(Effect::Load { address, .. }) | Some(Effect::Transfer { slot: Some(address), .. }) => {
                        slot.contains(&address)
                    }
                    _ => false,
                });
                // A relaxed site (`lea`, `jmp rel32`, `movz`) no longer reads
                // the slot: its value went into the instruction at patch time.
                // The slot counts as used when such a site that names it ran.
                let used_by_relaxed_site = || {
                    stencil.holes().any(|h| {
                        let names_slot = match (&h.value.term, hole.section) {
                            // GOT holes point at the slot, less x86's 4-byte displacement bias.
                            (Term::Data, Section::Data) => {
                                (hole.offset as i64 - 4..=hole.offset as i64).contains(&h.value.addend)
                            }
                            (Term::GotSymbol(n), Section::Got) => *n as u64 == hole.offset,
                            _ => false,
                        };
                        let at = placement.code + h.offset;
                        h.section == Section::Code
                            && names_slot
                            && trace.sites.iter().any(|o| o.pc <= at && at < o.pc + o.len as u64)
                    })
                };
                read || used_by_relaxed_site()
            }
        };
        if hit {
            covered.insert(i);
        }
    }
    covered
}
