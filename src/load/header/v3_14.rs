//! The CPython 3.14+ dialect (3.14, 3.15, main): what differs from 3.13
//! (DOMAIN.md §3).
//!
//! - Every signature ends in `jit_state *state`; the trampoline is a `shim`.
//! - `code_body[N]` keeps its size but lists no trailing zeros; an all-zero
//!   body is left out with its `memcpy`, so sizes come from the table, and
//!   the functions are read first and finished once the footer is known.
//! - No padding line closes the code listing: without a `code_body`, the
//!   code listing is the run of instruction, relocation and label lines, the
//!   data listing what follows.
//! - Calls that take the `jit_state`: `patch_got_symbol(state, 0xN);`
//!   (ordinal N's slot in the trace's GOT), `patch_aarch64_trampoline(code +
//!   0x8, 0xN, state);` (and x86-64), values `got_symbol_address(0xN, state)`
//!   [`- 4`]. Every ordinal a stencil uses must name a symbol in
//!   `symbols_map`.
//! - Footer: `static_assert(SYMBOL_MASK_WORDS …)`, a `typedef struct`,
//!   `{emit_X, code_size, data_size, {trampoline mask}[, {got mask}]}`
//!   entries, `symbols_map[N] = { &sym, 0, [k] = &sym, … };`, and
//!   preprocessor blocks (`_Py_JIT_HAS_SHIM_CFI`) that are skipped.

use super::cexpr::{is_symbol_name, parse_number, statement};
use super::listing::{code_disassembly, data_comments, drop_removed_jump, is_code_line};
use super::scanner::{Body, Comments, Scanner};
use super::{cross_check, target, Declared, TableEntry, TableScan};
use crate::error::BadInput;
use crate::model::{EmitOp, Stencil, StencilSet, Term};
use crate::target::Version;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

/// Largest `symbols_map` we accept (CPython's has a few hundred entries).
const MAX_SYMBOLS: usize = 1 << 16;

/// A function read before the footer says its sizes.
struct Pending<'a> {
    name: &'a str,
    line: usize,
    code_comments: Comments<'a>,
    code_body: Option<Body>,
    data_comments: Comments<'a>,
    data_body: Option<Body>,
    emit: Vec<EmitOp>,
}

/// `symbols_map`: its line and entries.
struct SymbolsMap {
    line: usize,
    entries: Vec<Option<String>>,
}

pub(super) fn parse(file: &str, text: &str) -> Result<StencilSet, BadInput> {
    let mut sc = Scanner::new(file, text);
    sc.skip_preprocessor = true;
    let mut pending: Vec<Pending<'_>> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut table = TableScan::default();
    let mut symbols: Option<SymbolsMap> = None;
    while let Some((no, line)) = sc.next_line() {
        if line.starts_with("emit_") {
            let f = function(&mut sc, no, line)?;
            if let Some(first) = seen.insert(f.name.to_string(), no) {
                return Err(sc.err(no, format!("emit_{} defined twice (first at line {first})", f.name)));
            }
            pending.push(f);
            continue;
        }
        let t = line.trim();
        if t.starts_with("//") || t.starts_with('#') {
            continue;
        }
        if table.line(&sc, no, t)? {
            continue;
        }
        if t.starts_with("static") && t.contains("symbols_map[") {
            if let Some(first) = &symbols {
                return Err(sc.err(no, format!("a second symbols_map (first at line {})", first.line)));
            }
            symbols = Some(symbols_map(&mut sc, no, t)?);
        }
    }
    let table_line = table.finish(&sc)?;
    let declared: Vec<Declared<'_>> = pending
        .iter()
        .map(|f| Declared {
            name: f.name,
            line: f.line,
            code_size: f.code_body.as_ref().map(|b| b.len as u64),
            data_size: f.data_body.as_ref().map(|b| b.len as u64),
        })
        .collect();
    cross_check(&sc, &declared, &table.entries, table_line)?;
    let entries: HashMap<&str, &TableEntry> = table.entries.iter().map(|e| (e.emit.as_str(), e)).collect();
    let mut stencils = Vec::with_capacity(pending.len());
    for f in pending {
        // cross_check saw every function in the table.
        let Some(entry) = entries.get(f.name) else { continue };
        stencils.push(finish(&sc, f, entry, symbols.as_ref())?);
    }
    let target = target(&sc, &stencils, Version::V3_14)?;
    Ok(StencilSet {
        path: PathBuf::from(file),
        target,
        stencils,
        symbols_map: symbols.map(|s| s.entries).unwrap_or_default(),
    })
}

fn function<'a>(sc: &mut Scanner<'a>, start: usize, first: &'a str) -> Result<Pending<'a>, BadInput> {
    let (name, rest) = sc.function_name(start, first)?;
    let params = sc.signature(name, start, rest)?;
    if !params.contains("jit_state") {
        return Err(
            sc.err(start, format!("emit_{name} has a 3.13 signature (no `jit_state *state`) in a 3.14+ header"))
        );
    }
    let code_comments = sc.comments();
    let code_body = if sc.peek_starts("const unsigned char code_body") { Some(sc.body("code_body")?) } else { None };
    // Without a code_body every comment was read above; `finish` splits them.
    let data_comments = if code_body.is_some() { sc.comments() } else { Vec::new() };
    let data_body = if sc.peek_starts("const unsigned char data_body") { Some(sc.body("data_body")?) } else { None };
    // Preprocessor blocks (`#if … #endif`) may hold C we do not model (the
    // shim's CFI): inside one, lines that are not memcpy or patch calls are
    // skipped; everywhere else they are bad input.
    let mut depth = 0usize;
    let emit = sc.statements(name, start, |no, t| {
        if let Some(directive) = t.strip_prefix('#') {
            let d = directive.trim_start();
            if d.starts_with("if") {
                depth += 1;
            } else if d.starts_with("endif") {
                depth = depth.saturating_sub(1);
            }
            return Ok(None);
        }
        if t.starts_with("//") {
            return Ok(None);
        }
        match statement(t, no) {
            Ok(op) => Ok(Some(op)),
            Err(_) if depth > 0 && !t.starts_with("patch_") && !t.starts_with("memcpy") => Ok(None),
            Err(e) => Err(e),
        }
    })?;
    Ok(Pending { name, line: start, code_comments, code_body, data_comments, data_body, emit })
}

/// A pending function, now that the table says its sizes and `symbols_map`
/// its ordinals.
fn finish(
    sc: &Scanner<'_>,
    f: Pending<'_>,
    entry: &TableEntry,
    symbols: Option<&SymbolsMap>,
) -> Result<Stencil, BadInput> {
    let name = f.name;
    let too_large = |what: &str, n: u64| sc.err(entry.line, format!("{what} {n} of emit_{name} is implausibly large"));
    let code_size = entry.code_size;
    let data_size = entry.data_size;
    if code_size > super::scanner::MAX_BODY as u64 {
        return Err(too_large("code_size", code_size));
    }
    if data_size > super::scanner::MAX_BODY as u64 {
        return Err(too_large("data_size", data_size));
    }
    let mut code_comments = f.code_comments;
    let mut data_comments_text = f.data_comments;
    if f.code_body.is_none() {
        let split = code_comments.iter().position(|(_, c)| !is_code_line(c)).unwrap_or(code_comments.len());
        data_comments_text = code_comments.split_off(split);
    }
    let code = f.code_body.as_ref().map_or_else(|| vec![0; code_size as usize], |b| b.bytes.clone());
    let data = f.data_body.as_ref().map_or_else(|| vec![0; data_size as usize], |b| b.bytes.clone());

    let mut disasm = code_disassembly(sc.file, &code_comments, Version::V3_14)?;
    if f.code_body.is_none() {
        if let Some(i) = disasm.instructions.iter().find(|i| i.bytes.iter().any(|&b| b != 0) && i.offset < code_size) {
            return Err(sc.err(
                i.line,
                format!(
                    "emit_{name} has no code_body (all {code_size} bytes zero), but its listing shows non-zero bytes at {:#x}",
                    i.offset
                ),
            ));
        }
    }
    let object_code_len = drop_removed_jump(sc.file, name, code_size, &mut disasm)?;
    let locals = crate::load::symbols::fill_implicit_addends(&code, object_code_len, &mut disasm.relocations);
    if let Some((line, offset, len)) = disasm.last_pad {
        if offset.saturating_add(len) != code_size {
            return Err(sc.err(
                line,
                format!(
                    "the disassembly of emit_{name} ends at {:#x}, but code_body has {code_size} bytes",
                    offset.saturating_add(len)
                ),
            ));
        }
    }
    let data_comments = data_comments(sc.file, &data_comments_text, data_size)?;
    let (trampoline_mask, got_mask) = masks(sc, entry)?;

    let mut ordinals = BTreeMap::new();
    for hole in f.emit.iter().filter_map(|op| match op {
        EmitOp::Patch(p) => Some(p),
        _ => None,
    }) {
        let n = match hole.value.term {
            Term::GotSymbol(n) | Term::Ordinal(n) => n,
            _ => continue,
        };
        let uses = || format!("emit_{name} uses symbol ordinal {n:#x}");
        let Some(map) = symbols else {
            return Err(sc.err(hole.line, format!("{}, but the header has no symbols_map", uses())));
        };
        match map.entries.get(n as usize) {
            Some(Some(symbol)) => {
                ordinals.insert(n, symbol.clone());
            }
            Some(None) => {
                return Err(sc.err(hole.line, format!("{}, but symbols_map[{n}] (line {}) is 0", uses(), map.line)));
            }
            None => {
                return Err(sc.err(
                    hole.line,
                    format!("{}, but symbols_map (line {}) has {} entries", uses(), map.line, map.entries.len()),
                ));
            }
        }
    }
    Ok(Stencil {
        name: name.to_string(),
        line: f.line,
        code,
        data,
        instructions: disasm.instructions,
        relocations: disasm.relocations,
        data_comments,
        emit: f.emit,
        locals,
        ordinals,
        trampoline_mask,
        got_mask,
    })
}

/// Fields of `{emit_X, N, M, {…}, {…}}` split at the commas outside braces.
fn fields(inner: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut from) = (0i32, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(inner[from..i].trim());
                from = i + 1;
            }
            _ => {}
        }
    }
    let last = inner[from..].trim();
    if !last.is_empty() {
        out.push(last);
    }
    out
}

/// The entry's `trampoline_mask` and `got_mask` (each optional; `{0}` and
/// `{0x03}` and `{0x1, 0x80}` are masks of 32-bit words).
fn masks(sc: &Scanner<'_>, entry: &TableEntry) -> Result<(Vec<u32>, Vec<u32>), BadInput> {
    let f = fields(&entry.inner);
    if f.len() > 5 {
        return Err(sc.err(
            entry.line,
            format!("stencil table entry of emit_{} has {} fields (at most 5)", entry.emit, f.len()),
        ));
    }
    let mask = |text: &str| -> Result<Vec<u32>, BadInput> {
        let bad = || sc.err(entry.line, format!("malformed symbol mask `{text}` in the entry of emit_{}", entry.emit));
        let words = text.strip_prefix('{').and_then(|t| t.strip_suffix('}')).ok_or_else(bad)?;
        let mut out = Vec::new();
        for w in words.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            out.push(parse_number(w).and_then(|v| u32::try_from(v).ok()).ok_or_else(bad)?);
        }
        Ok(out)
    };
    let trampoline = f.get(3).map(|t| mask(t)).transpose()?.unwrap_or_default();
    let got = f.get(4).map(|t| mask(t)).transpose()?.unwrap_or_default();
    Ok((trampoline, got))
}

/// `static const void * const symbols_map[N] = {` … `};`: entries `&sym`,
/// `0` (or `NULL`), optionally designated `[k] = …`, over one or more lines.
fn symbols_map(sc: &mut Scanner<'_>, start: usize, first: &str) -> Result<SymbolsMap, BadInput> {
    let file = sc.file;
    let bad = |line: usize, what: String| BadInput::at_line(file, line, what);
    let after = &first[first.find("symbols_map[").map_or(0, |i| i + "symbols_map[".len())..];
    let (len, rest) = after.split_once(']').ok_or_else(|| bad(start, "malformed symbols_map declaration".into()))?;
    let n: usize = len.trim().parse().map_err(|_| bad(start, format!("bad symbols_map size `{}`", len.trim())))?;
    if n > MAX_SYMBOLS {
        return Err(bad(start, format!("symbols_map[{n}] is implausibly large")));
    }
    let mut text = rest
        .trim_start()
        .strip_prefix('=')
        .map(str::trim_start)
        .and_then(|r| r.strip_prefix('{'))
        .ok_or_else(|| bad(start, format!("expected `= {{` after symbols_map[{n}]")))?;
    let mut entries: Vec<Option<String>> = vec![None; n];
    let mut given: Vec<Option<usize>> = vec![None; n];
    let mut next = 0usize;
    let mut line = start;
    loop {
        let (items, closed) = match text.split_once('}') {
            Some((items, after)) => (items, Some(after)),
            None => (text, None),
        };
        let items = if items.trim_start().starts_with("//") { "" } else { items };
        for item in items.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (index, value) = match item.strip_prefix('[') {
                Some(d) => {
                    let (k, v) =
                        d.split_once(']').ok_or_else(|| bad(line, format!("malformed symbols_map entry `{item}`")))?;
                    let v = v
                        .trim_start()
                        .strip_prefix('=')
                        .ok_or_else(|| bad(line, format!("malformed symbols_map entry `{item}`")))?;
                    let k = parse_number(k.trim())
                        .and_then(|k| usize::try_from(k).ok())
                        .ok_or_else(|| bad(line, format!("bad symbols_map index in `{item}`")))?;
                    (k, v.trim())
                }
                None => (next, item),
            };
            let symbol = match value {
                "0" | "NULL" => None,
                v => match v.strip_prefix('&').map(str::trim) {
                    Some(s) if is_symbol_name(s) => Some(s.to_string()),
                    _ => return Err(bad(line, format!("malformed symbols_map entry `{item}`"))),
                },
            };
            if index >= n {
                return Err(bad(line, format!("symbols_map[{n}] has an entry [{index}]")));
            }
            if let Some(first) = given[index] {
                return Err(bad(line, format!("symbols_map[{index}] is given twice (first at line {first})")));
            }
            given[index] = Some(line);
            entries[index] = symbol;
            next = index + 1;
        }
        if let Some(after) = closed {
            if after.trim() != ";" {
                return Err(bad(line, "expected `;` after the symbols_map initializer".into()));
            }
            return Ok(SymbolsMap { line: start, entries });
        }
        let Some((no, l)) = sc.next_line() else {
            return Err(bad(sc.last_line(), format!("truncated: symbols_map (line {start}) is not closed")));
        };
        (line, text) = (no, l);
    }
}
