//! The `jit_stencils.h` parser, for CPython 3.13 and for 3.14+ (3.14, 3.15
//! and main), the dialect decided by the text itself (DOMAIN.md §2, §3).
//!
//! - `scanner.rs`: the C shape (signatures, `//` runs, `X_body[N]`
//!   initializers, statements up to `}`);
//! - `listing.rs`: the comment lines (objdump's code listing and its
//!   relocation lines, CPython's data listing);
//! - `cexpr.rs`: `memcpy`s, `patch_*` calls and their value expressions;
//! - `v3_13.rs`, `v3_14.rs`: how each version lays a function and the
//!   footer out, and what each fills in the model.
//!
//! Both dialects share the `StencilGroup` table's first three fields and
//! its consistency checks (here). Everything that does not fit is
//! [`BadInput`] naming `file:line`; nothing here panics on any input.

mod cexpr;
pub(crate) mod listing;
mod scanner;
mod v3_13;
mod v3_14;

use crate::error::BadInput;
use crate::model::{Arch, StencilSet};
use crate::target::{ObjectFormat, Target, Version};
use cexpr::parse_number;
use scanner::Scanner;
use std::collections::HashMap;

#[cfg(test)]
use crate::model::{DataComment, DataCommentKind, EmitOp, PatchCall, PatchFn, RelocKind, Section, Symbol, Term, Value};
#[cfg(test)]
use cexpr::{lex, location_of, split_addend, value_of};
#[cfg(test)]
use listing::{is_label, slot_value, split_encoding};
#[cfg(test)]
use std::path::PathBuf;

/// Parse the text of a `jit_stencils.h`. `path_for_messages` names the file
/// in errors and becomes [`StencilSet::path`].
pub fn parse(path_for_messages: &str, text: &str) -> Result<StencilSet, BadInput> {
    match dialect(text) {
        Version::V3_13 => v3_13::parse(path_for_messages, text),
        Version::V3_14 => v3_14::parse(path_for_messages, text),
    }
}

/// Which CPython wrote `text`: 3.14+ when any code line (not a comment)
/// names `jit_state` (every 3.14+ emit signature and `StencilGroup` does)
/// or an `emit_shim(` is defined; 3.13 otherwise.
pub fn dialect(text: &str) -> Version {
    let later = text.lines().any(|l| {
        let t = l.trim_start();
        !t.starts_with("//") && (t.contains("jit_state") || l.starts_with("emit_shim("))
    });
    if later {
        Version::V3_14
    } else {
        Version::V3_13
    }
}

/// The footer's stencil table as both dialects write it: the
/// `stencil_groups` array (and the `trampoline`/`shim` group lines, which
/// also hold `{emit_…}` entries).
#[derive(Default)]
struct TableScan {
    entries: Vec<TableEntry>,
    /// Line of `static const StencilGroup stencil_groups[…] = {`.
    opened_at: Option<usize>,
    inside: bool,
}

impl TableScan {
    /// Takes `t` (a trimmed line outside any function) if it belongs to the
    /// table; `Ok(false)` when it does not.
    fn line(&mut self, sc: &Scanner<'_>, no: usize, t: &str) -> Result<bool, BadInput> {
        if t.contains("{emit_") {
            self.entries.push(table_entry(sc, no, t)?);
        } else if t.starts_with("static const StencilGroup stencil_groups") {
            if let Some(first) = self.opened_at {
                return Err(sc.err(no, format!("a second stencil table (first at line {first})")));
            }
            self.opened_at = Some(no);
            self.inside = true;
        } else if self.inside && t.starts_with('}') {
            self.inside = false;
        } else {
            return Ok(false);
        }
        Ok(true)
    }

    /// The table's line, once the whole file was read: a missing or
    /// unclosed table is a truncated file.
    fn finish(&self, sc: &Scanner<'_>) -> Result<usize, BadInput> {
        let Some(line) = self.opened_at else {
            return Err(sc.err(sc.last_line(), "truncated: no stencil table"));
        };
        if self.inside {
            return Err(sc.err(sc.last_line(), "truncated: the stencil table is not closed"));
        }
        Ok(line)
    }
}

/// One `{emit_X, code_size, data_size, …}` entry of the footer.
struct TableEntry {
    emit: String,
    code_size: u64,
    data_size: u64,
    /// The text between the entry's outer braces (3.14+ reads its masks).
    inner: String,
    line: usize,
}

/// `static const StencilGroup trampoline = {emit_trampoline, 112, 24};`
/// or `[_BINARY_OP] = {emit__BINARY_OP, 119, 40},` (3.14+ adds masks after
/// the sizes; the dialect reads them from `inner`).
fn table_entry(sc: &Scanner<'_>, no: usize, t: &str) -> Result<TableEntry, BadInput> {
    let bad = || sc.err(no, format!("malformed stencil table entry `{t}`"));
    let (lhs, rhs) = t.split_once('=').ok_or_else(bad)?;
    let lhs = lhs.trim();
    let key = match lhs.strip_prefix('[').and_then(|k| k.strip_suffix(']')) {
        Some(k) => k.trim(),
        None => lhs.strip_prefix("static const StencilGroup").map(str::trim).ok_or_else(bad)?,
    };
    let rhs = rhs.trim();
    if !(rhs.ends_with("},") || rhs.ends_with("};")) {
        return Err(bad());
    }
    let inner = rhs.strip_prefix('{').ok_or_else(bad)?;
    let mut fields = inner.split(',').map(|f| f.trim().trim_end_matches(['}', ';']).trim());
    let emit = fields.next().and_then(|f| f.strip_prefix("emit_")).ok_or_else(bad)?;
    let code_size = fields.next().and_then(parse_number).ok_or_else(bad)?;
    let data_size = fields.next().and_then(parse_number).ok_or_else(bad)?;
    if key != emit {
        return Err(sc.err(no, format!("table entry `{key}` points at emit_{emit}")));
    }
    let inner = inner[..inner.len() - 2].to_string();
    Ok(TableEntry { emit: emit.to_string(), code_size, data_size, inner, line: no })
}

/// What a function declared, for the table check: sizes of the bodies it
/// has (a 3.14+ function without a body takes the table's size).
struct Declared<'a> {
    name: &'a str,
    line: usize,
    code_size: Option<u64>,
    data_size: Option<u64>,
}

/// Every table entry names a function whose bodies have its sizes, and
/// every function is in the table exactly once.
fn cross_check(
    sc: &Scanner<'_>,
    functions: &[Declared<'_>],
    table: &[TableEntry],
    table_line: usize,
) -> Result<(), BadInput> {
    let by_name: HashMap<&str, &Declared<'_>> = functions.iter().map(|s| (s.name, s)).collect();
    let mut listed: HashMap<&str, usize> = HashMap::new();
    for entry in table {
        if let Some(first) = listed.insert(entry.emit.as_str(), entry.line) {
            return Err(sc.err(
                entry.line,
                format!("emit_{} is listed twice in the stencil table (first at line {first})", entry.emit),
            ));
        }
        let Some(f) = by_name.get(entry.emit.as_str()) else {
            return Err(sc.err(
                entry.line,
                format!("table entry names emit_{}, but the header has no such function", entry.emit),
            ));
        };
        let code = f.code_size.unwrap_or(entry.code_size);
        let data = f.data_size.unwrap_or(entry.data_size);
        if entry.code_size != code || entry.data_size != data {
            return Err(sc.err(
                entry.line,
                format!(
                    "table says emit_{} has code_size {} and data_size {}, but its bodies (line {}) declare {} and {}",
                    entry.emit, entry.code_size, entry.data_size, f.line, code, data
                ),
            ));
        }
    }
    for f in functions {
        if !listed.contains_key(f.name) {
            return Err(
                sc.err(table_line, format!("emit_{} (line {}) is missing from the stencil table", f.name, f.line))
            );
        }
    }
    Ok(())
}

/// The target, from relocation types (machine and object format: all must
/// agree) and patch functions (every one must be the target's: i686 borrows
/// x86-64's `patch_x86_64_32rx`); x86-64 ELF when nothing says otherwise.
fn target(sc: &Scanner<'_>, stencils: &[crate::model::Stencil], version: Version) -> Result<Target, BadInput> {
    let mut arch: Option<(Arch, usize, &str)> = None;
    let mut format: Option<(ObjectFormat, usize, &str)> = None;
    for r in stencils.iter().flat_map(|s| &s.relocations) {
        let what = r.kind.name();
        match arch {
            None => arch = Some((r.kind.arch(), r.line, what)),
            Some((a, l, w)) if a != r.kind.arch() => {
                let b = r.kind.arch();
                return Err(sc.err(r.line, format!("mixed architectures: {what} is {b}, but {w} (line {l}) is {a}")));
            }
            Some(_) => {}
        }
        match (format, crate::target::format_of_reloc(r.kind)) {
            (None, Some(f)) => format = Some((f, r.line, what)),
            (Some((f, l, w)), Some(g)) if f != g => {
                return Err(sc.err(r.line, format!("mixed object formats: {what} is {g}, but {w} (line {l}) is {f}")));
            }
            _ => {}
        }
    }
    let format = format.map_or(ObjectFormat::Elf, |(f, _, _)| f);
    let mut target = arch.map(|(a, _, _)| Target::new(a, format, version));
    let mut first_hole: Option<(usize, String)> = None;
    for h in stencils.iter().flat_map(|s| s.holes()) {
        let Some(func_arch) = h.func.arch() else { continue };
        match target {
            // No relocation says: the first machine-specific patch function does.
            None => {
                target = Some(Target::new(func_arch, format, version));
                first_hole = Some((h.line, h.func.to_string()));
            }
            Some(t) if !t.has_patch_fn(h.func) => {
                let (l, w) = match (&first_hole, arch) {
                    (Some((l, w)), _) => (*l, w.clone()),
                    (None, Some((_, l, w))) => (l, w.to_string()),
                    (None, None) => (0, String::new()),
                };
                return Err(sc.err(
                    h.line,
                    format!("mixed architectures: {} is {func_arch}, but {w} (line {l}) is {}", h.func, t.arch),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(target.unwrap_or(Target::new(Arch::X86_64, ObjectFormat::Elf, version)))
}

#[cfg(test)]
pub(crate) mod tests;
