//! `stencilcheck diff HEADER OBJDIR`: CPython's interpretation of its objects
//! (the header) against stencilcheck's own (the object loader), stencil by
//! stencil: bytes, holes (patch calls, in emit order) and relocations.

use crate::model::{EmitOp, Relocation, Stencil, StencilSet};
use std::collections::BTreeMap;

/// One difference, already worded; `stencil` is empty for set-level ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    pub stencil: String,
    pub what: String,
}

fn reloc(r: &Relocation) -> String {
    format!("{:#x}: {} {}{}", r.offset, r.kind, r.symbol, crate::load::object::symbol_text("", r.addend))
}

/// Compare two sets (`header` CPython's, `objects` ours).
pub fn diff(header: &StencilSet, objects: &StencilSet) -> Vec<Difference> {
    let mut out = Vec::new();
    let ours: BTreeMap<&str, &Stencil> = objects.stencils.iter().map(|s| (s.name.as_str(), s)).collect();
    let theirs: BTreeMap<&str, &Stencil> = header.stencils.iter().map(|s| (s.name.as_str(), s)).collect();
    for (name, h) in &theirs {
        match ours.get(name) {
            // CPython writes an empty group for a trampoline the target does
            // not need (aarch64 3.13: not GHC's convention) and compiles no
            // object for it: nothing to compare, on purpose.
            None if h.code.is_empty() && h.data.is_empty() && h.holes().next().is_none() => {}
            None => out.push(Difference { stencil: name.to_string(), what: "in the header, no object".into() }),
            Some(o) => stencil(h, o, &mut out),
        }
    }
    for name in ours.keys().filter(|n| !theirs.contains_key(*n)) {
        out.push(Difference { stencil: name.to_string(), what: "an object, not in the header".into() });
    }
    out
}

fn stencil(h: &Stencil, o: &Stencil, out: &mut Vec<Difference>) {
    let mut say = |what: String| out.push(Difference { stencil: h.name.clone(), what });
    if h.code.len() != o.code.len() {
        say(format!("code size: header {:#x}, object {:#x}", h.code.len(), o.code.len()));
    }
    if let Some(i) = h.code.iter().zip(&o.code).position(|(a, b)| a != b) {
        say(format!("code bytes differ first at code+{i:#x}: header {:#04x}, object {:#04x}", h.code[i], o.code[i]));
    }
    if h.data.len() != o.data.len() {
        say(format!("data size: header {:#x}, object {:#x}", h.data.len(), o.data.len()));
    }
    if let Some(i) = h.data.iter().zip(&o.data).position(|(a, b)| a != b) {
        say(format!("data bytes differ first at data+{i:#x}: header {:#04x}, object {:#04x}", h.data[i], o.data[i]));
    }
    let ops = |s: &Stencil| -> Vec<String> {
        s.emit
            .iter()
            .map(|op| match op {
                EmitOp::CopyData { .. } => "memcpy(data)".to_string(),
                EmitOp::CopyCode { .. } => "memcpy(code)".to_string(),
                EmitOp::Patch(p) => p.to_string(),
            })
            .collect()
    };
    let (ho, oo) = (ops(h), ops(o));
    let lines = |s: &Stencil| -> Vec<usize> {
        s.emit
            .iter()
            .map(|op| match op {
                EmitOp::CopyData { line } | EmitOp::CopyCode { line } => *line,
                EmitOp::Patch(p) => p.line,
            })
            .collect()
    };
    let hl = lines(h);
    for (i, op) in ho.iter().enumerate() {
        if !oo.contains(op) {
            say(format!("hole only in the header (line {}): {op}", hl[i]));
        }
    }
    for op in oo.iter().filter(|op| !ho.contains(op)) {
        say(format!("hole only in the object: {op}"));
    }
    let common_h: Vec<&String> = ho.iter().filter(|op| oo.contains(op)).collect();
    let common_o: Vec<&String> = oo.iter().filter(|op| ho.contains(op)).collect();
    if common_h != common_o {
        say("emit order differs (same holes, another order)".to_string());
    }
    let slots = |s: &Stencil| -> Vec<(u64, String, usize)> {
        s.data_comments
            .iter()
            .filter_map(|c| match &c.kind {
                crate::model::DataCommentKind::Slot(v) => Some((c.offset, v.to_string(), c.line)),
                _ => None,
            })
            .collect()
    };
    let (hs, os) = (slots(h), slots(o));
    for (off, v, line) in &hs {
        if !os.iter().any(|(o2, v2, _)| o2 == off && v2 == v) {
            say(format!("data slot only in the header (line {line}): data+{off:#x} = {v}"));
        }
    }
    for (off, v, _) in &os {
        if !hs.iter().any(|(o2, v2, _)| o2 == off && v2 == v) {
            say(format!("data slot only in the object: data+{off:#x} = {v}"));
        }
    }
    let (hr, or): (Vec<String>, Vec<String>) =
        (h.relocations.iter().map(reloc).collect(), o.relocations.iter().map(reloc).collect());
    for (i, r) in hr.iter().enumerate() {
        if !or.contains(r) {
            say(format!("relocation only in the header (line {}): {r}", h.relocations[i].line));
        }
    }
    for r in or.iter().filter(|r| !hr.contains(r)) {
        say(format!("relocation only in the object: {r}"));
    }
}

/// The report: one line per difference, then a count.
pub fn render(header: &StencilSet, objects: &StencilSet, diffs: &[Difference]) -> String {
    let mut s = String::new();
    for d in diffs {
        s.push_str(&format!("{}: {}\n", d.stencil, d.what));
    }
    s.push_str(&format!(
        "{} header stencils, {} objects: {} difference{}\n",
        header.stencils.len(),
        objects.stencils.len(),
        diffs.len(),
        if diffs.len() == 1 { "" } else { "s" }
    ));
    s
}
