//! The `jit_stencils.h` parser (CPython 3.13 format; 3.14 spellings where
//! they are cheap to accept).
//!
//! One pass over the lines. Outside functions only the `emit_…(` lines and
//! the `StencilGroup` table matter; inside a function the layout is fixed by
//! CPython's `Tools/jit/_writer.py`:
//!
//! 1. the code disassembly as `//` comments (llvm-objdump output, then one
//!    padding line `N: [00 …]` whose end is the code size);
//! 2. `const unsigned char code_body[N] = { … };` (absent when the code is
//!    empty, e.g. `_NOP` once its trailing jump is removed);
//! 3. the data comments (`0: '…'`, a padding line, one line per GOT slot);
//! 4. `const unsigned char data_body[N] = { … };` (absent when empty);
//! 5. the statements: `memcpy`s and `patch_*` calls, then `}`.
//!
//! Everything that does not fit is [`BadInput`] naming `file:line`; nothing
//! here panics on any input.

use crate::error::BadInput;
use crate::model::{
    Arch, DataComment, DataCommentKind, EmitOp, ObjdumpInstruction, PatchCall, PatchFn, RelocKind,
    Relocation, Section, Stencil, StencilSet, Symbol, Term, Value,
};
use std::collections::HashMap;
use std::path::PathBuf;

/// Largest body length we accept (a real stencil is a few KiB).
const MAX_BODY: usize = 1 << 24;

/// Parse the text of a `jit_stencils.h`. `path_for_messages` names the file
/// in errors and becomes [`StencilSet::path`].
pub fn parse(path_for_messages: &str, text: &str) -> Result<StencilSet, BadInput> {
    Parser { file: path_for_messages, lines: text.lines().collect(), pos: 0 }.run()
}

struct Parser<'a> {
    file: &'a str,
    lines: Vec<&'a str>,
    /// Index of the next line to read (its 1-based number is `pos + 1`).
    pos: usize,
}

/// One `{emit_X, code_size, data_size}` entry of the footer.
struct TableEntry {
    emit: String,
    code_size: u64,
    data_size: u64,
    line: usize,
}

/// What the code comments held.
struct CodeDisassembly {
    instructions: Vec<ObjdumpInstruction>,
    relocations: Vec<Relocation>,
    /// Last padding line (`77:` or `194: 00 00 00 00`): line, offset, byte count.
    last_pad: Option<(usize, u64, u64)>,
}

type Comments<'a> = Vec<(usize, &'a str)>;

impl<'a> Parser<'a> {
    fn err(&self, line: usize, message: impl Into<String>) -> BadInput {
        BadInput::at_line(self.file, line, message)
    }

    /// Number of the last line: where a truncated file ended.
    fn last_line(&self) -> usize {
        self.lines.len().max(1)
    }

    fn peek(&self) -> Option<(usize, &'a str)> {
        self.lines.get(self.pos).map(|l| (self.pos + 1, *l))
    }

    fn next_line(&mut self) -> Option<(usize, &'a str)> {
        let line = self.peek();
        if line.is_some() {
            self.pos += 1;
        }
        line
    }

    fn truncated(&self, name: &str, start: usize) -> BadInput {
        self.err(
            self.last_line(),
            format!("truncated: emit_{name} (line {start}) ends without `}}`"),
        )
    }

    fn run(mut self) -> Result<StencilSet, BadInput> {
        let mut stencils: Vec<Stencil> = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut table: Vec<TableEntry> = Vec::new();
        let mut table_open: Option<usize> = None;
        let mut in_table = false;
        while let Some((no, line)) = self.next_line() {
            if line.starts_with("emit_") {
                let stencil = self.function(no, line)?;
                if let Some(first) = seen.insert(stencil.name.clone(), no) {
                    return Err(self.err(
                        no,
                        format!("emit_{} defined twice (first at line {first})", stencil.name),
                    ));
                }
                stencils.push(stencil);
                continue;
            }
            let t = line.trim();
            if t.starts_with("//") {
                continue;
            }
            if t.contains("{emit_") {
                table.push(self.table_entry(no, t)?);
            } else if t.starts_with("static const StencilGroup stencil_groups") {
                if let Some(first) = table_open {
                    return Err(
                        self.err(no, format!("a second stencil table (first at line {first})"))
                    );
                }
                table_open = Some(no);
                in_table = true;
            } else if in_table && t.starts_with('}') {
                in_table = false;
            }
        }
        let Some(table_line) = table_open else {
            return Err(self.err(self.last_line(), "truncated: no stencil table"));
        };
        if in_table {
            return Err(self.err(self.last_line(), "truncated: the stencil table is not closed"));
        }
        self.cross_check(&stencils, &table, table_line)?;
        let arch = self.arch(&stencils)?;
        Ok(StencilSet {
            path: PathBuf::from(self.file),
            target: crate::target::Target::elf(arch),
            stencils,
            symbols_map: Vec::new(),
        })
    }

    /// `static const StencilGroup trampoline = {emit_trampoline, 112, 24};`
    /// or `[_BINARY_OP] = {emit__BINARY_OP, 119, 40},` (3.14 adds more fields
    /// after the sizes; they are ignored).
    fn table_entry(&self, no: usize, t: &str) -> Result<TableEntry, BadInput> {
        let bad = || self.err(no, format!("malformed stencil table entry `{t}`"));
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
            return Err(self.err(no, format!("table entry `{key}` points at emit_{emit}")));
        }
        Ok(TableEntry { emit: emit.to_string(), code_size, data_size, line: no })
    }

    fn cross_check(
        &self,
        stencils: &[Stencil],
        table: &[TableEntry],
        table_line: usize,
    ) -> Result<(), BadInput> {
        let by_name: HashMap<&str, &Stencil> =
            stencils.iter().map(|s| (s.name.as_str(), s)).collect();
        let mut listed: HashMap<&str, usize> = HashMap::new();
        for entry in table {
            if let Some(first) = listed.insert(entry.emit.as_str(), entry.line) {
                return Err(self.err(
                    entry.line,
                    format!(
                        "emit_{} is listed twice in the stencil table (first at line {first})",
                        entry.emit
                    ),
                ));
            }
            let Some(stencil) = by_name.get(entry.emit.as_str()) else {
                return Err(self.err(
                    entry.line,
                    format!(
                        "table entry names emit_{}, but the header has no such function",
                        entry.emit
                    ),
                ));
            };
            if entry.code_size != stencil.code_size() || entry.data_size != stencil.data_size() {
                return Err(self.err(
                    entry.line,
                    format!(
                        "table says emit_{} has code_size {} and data_size {}, but its bodies (line {}) declare {} and {}",
                        entry.emit,
                        entry.code_size,
                        entry.data_size,
                        stencil.line,
                        stencil.code_size(),
                        stencil.data_size()
                    ),
                ));
            }
        }
        for stencil in stencils {
            if !listed.contains_key(stencil.name.as_str()) {
                return Err(self.err(
                    table_line,
                    format!(
                        "emit_{} (line {}) is missing from the stencil table",
                        stencil.name, stencil.line
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The machine, from relocation types and patch functions; x86-64 when
    /// nothing says otherwise.
    fn arch(&self, stencils: &[Stencil]) -> Result<Arch, BadInput> {
        let mut first: Option<(Arch, usize, String)> = None;
        for stencil in stencils {
            let from_relocs =
                stencil.relocations.iter().map(|r| (r.kind.arch(), r.line, r.kind.name()));
            let from_holes =
                stencil.holes().filter_map(|h| h.func.arch().map(|a| (a, h.line, h.func.name())));
            for (arch, line, what) in from_relocs.chain(from_holes) {
                match &first {
                    None => first = Some((arch, line, what.to_string())),
                    Some((a, l, w)) if *a != arch => {
                        return Err(self.err(
                            line,
                            format!(
                                "mixed architectures: {what} is {arch}, but {w} (line {l}) is {a}"
                            ),
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(first.map(|(a, _, _)| a).unwrap_or(Arch::X86_64))
    }

    // ---- one emit function -------------------------------------------------

    fn function(&mut self, start: usize, first: &'a str) -> Result<Stencil, BadInput> {
        let after = &first["emit_".len()..];
        let paren = after.find('(').ok_or_else(|| self.err(start, "expected `emit_NAME(`"))?;
        let name = &after[..paren];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(self.err(start, format!("bad emit function name `emit_{name}`")));
        }
        self.signature(name, start, &after[paren + 1..])?;

        let mut code_comments = self.comments();
        let (code, data_comments) = if self.peek_starts("const unsigned char code_body") {
            let (code, _) = self.body("code_body")?;
            (code, self.comments())
        } else {
            // No code_body: the code is empty, so its disassembly ends with the
            // padding line `0:`; whatever follows belongs to the data.
            let Some((no, _)) = self.peek() else {
                return Err(self.truncated(name, start));
            };
            // (No comments at all is fine too: aarch64's 3.13.5 trampoline is empty.)
            let split = match code_comments.iter().position(|(_, c)| *c == "0:") {
                Some(i) => i + 1,
                None if code_comments.is_empty() => 0,
                None => {
                    return Err(self.err(
                        no,
                        format!(
                            "emit_{name} has no code_body and its disassembly has no `0:` end line"
                        ),
                    ));
                }
            };
            let data_comments = code_comments.split_off(split);
            (Vec::new(), data_comments)
        };
        let data = if self.peek_starts("const unsigned char data_body") {
            self.body("data_body")?.0
        } else {
            Vec::new()
        };
        let emit = self.statements(name, start)?;

        let code_size = code.len() as u64;
        let mut disasm = self.code_disassembly(&code_comments)?;
        self.drop_removed_jump(name, code_size, &mut disasm)?;
        if let Some((line, offset, len)) = disasm.last_pad {
            if offset.saturating_add(len) != code_size {
                return Err(self.err(
                    line,
                    format!(
                        "the disassembly of emit_{name} ends at {:#x}, but code_body has {code_size} bytes",
                        offset.saturating_add(len)
                    ),
                ));
            }
        }
        let data_comments = self.data_comments(&data_comments, data.len() as u64)?;
        Ok(Stencil {
            name: name.to_string(),
            line: start,
            code,
            data,
            instructions: disasm.instructions,
            relocations: disasm.relocations,
            data_comments,
            emit,
            locals: Default::default(),
            ordinals: Default::default(),
            trampoline_mask: Vec::new(),
            got_mask: Vec::new(),
        })
    }

    /// Consume the parameter list up to the line holding the opening `{`.
    fn signature(&mut self, name: &str, start: usize, rest: &str) -> Result<(), BadInput> {
        let (mut line_no, mut text) = (start, rest);
        loop {
            let t = text.trim();
            if t == "{" {
                return Ok(());
            }
            if let Some(before) = t.strip_suffix('{') {
                if !before.contains(['{', '}', ';']) {
                    return Ok(());
                }
            }
            if t.contains(['{', '}', ';']) || t.starts_with("//") || t.starts_with("emit_") {
                return Err(
                    self.err(line_no, format!("malformed signature of emit_{name}: expected `{{`"))
                );
            }
            let Some((n, l)) = self.next_line() else {
                return Err(self.truncated(name, start));
            };
            (line_no, text) = (n, l);
        }
    }

    fn peek_starts(&self, prefix: &str) -> bool {
        self.peek().is_some_and(|(_, l)| l.trim_start().starts_with(prefix))
    }

    /// The run of `//` lines from here on (blank lines skipped), text after
    /// `//` trimmed.
    fn comments(&mut self) -> Comments<'a> {
        let mut out = Vec::new();
        while let Some((no, line)) = self.peek() {
            let t = line.trim();
            if !t.is_empty() {
                let Some(c) = t.strip_prefix("//") else { break };
                out.push((no, c.trim()));
            }
            self.pos += 1;
        }
        out
    }

    /// `const unsigned char code_body[N] = { 0x.., … };` over one or more
    /// lines; the bytes zero-extended to `N`.
    fn body(&mut self, which: &str) -> Result<(Vec<u8>, usize), BadInput> {
        let Some((no, line)) = self.next_line() else {
            return Err(self.err(self.last_line(), format!("truncated before {which}")));
        };
        let bad = || self.err(no, format!("malformed {which} declaration"));
        let rest = line
            .trim()
            .strip_prefix("const unsigned char")
            .map(str::trim_start)
            .and_then(|r| r.strip_prefix(which))
            .map(str::trim_start)
            .and_then(|r| r.strip_prefix('['))
            .ok_or_else(bad)?;
        let (len, rest) = rest.split_once(']').ok_or_else(bad)?;
        let n: usize = len.trim().parse().map_err(|_| bad())?;
        if n > MAX_BODY {
            return Err(self.err(no, format!("{which}[{n}] is implausibly large")));
        }
        let mut text = rest
            .trim_start()
            .strip_prefix('=')
            .map(str::trim_start)
            .and_then(|r| r.strip_prefix('{'))
            .ok_or_else(|| self.err(no, format!("expected `= {{` after {which}[{n}]")))?;
        let mut text_no = no;
        let mut bytes = Vec::with_capacity(n);
        loop {
            let (items, closed) = match text.split_once('}') {
                Some((items, after)) => (items, Some(after)),
                None => (text, None),
            };
            for item in items.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                let byte =
                    parse_number(item).and_then(|v| u8::try_from(v).ok()).ok_or_else(|| {
                        self.err(
                            text_no,
                            format!("bad byte `{item}` in {which} (initializer not closed?)"),
                        )
                    })?;
                if bytes.len() == n {
                    return Err(self.err(no, format!("{which}[{n}] lists more than {n} bytes")));
                }
                bytes.push(byte);
            }
            if let Some(after) = closed {
                if after.trim() != ";" {
                    return Err(
                        self.err(text_no, format!("expected `;` after the {which} initializer"))
                    );
                }
                break;
            }
            let Some((n2, l)) = self.next_line() else {
                return Err(self.err(
                    self.last_line(),
                    format!("truncated: the {which} initializer (line {no}) is not closed"),
                ));
            };
            (text_no, text) = (n2, l);
        }
        bytes.resize(n, 0);
        Ok((bytes, no))
    }

    /// The statements up to the function's closing `}`.
    fn statements(&mut self, name: &str, start: usize) -> Result<Vec<EmitOp>, BadInput> {
        let mut ops = Vec::new();
        loop {
            let Some((no, line)) = self.next_line() else {
                return Err(self.truncated(name, start));
            };
            let t = line.trim();
            if t.is_empty() {
                continue;
            }
            if t == "}" {
                return Ok(ops);
            }
            if line.starts_with("emit_") || t == "void" {
                return Err(self
                    .err(no, format!("emit_{name} (line {start}) is not closed: expected `}}`")));
            }
            ops.push(statement(t, no).map_err(|m| self.err(no, m))?);
        }
    }

    // ---- comments ------------------------------------------------------------

    fn code_disassembly(&self, comments: &[(usize, &str)]) -> Result<CodeDisassembly, BadInput> {
        let mut out =
            CodeDisassembly { instructions: Vec::new(), relocations: Vec::new(), last_pad: None };
        for &(no, c) in comments {
            if c.is_empty()
                || c.starts_with("Disassembly of section")
                || c.contains("file format")
                || is_label(c)
            {
                continue;
            }
            let unrecognized = || self.err(no, format!("unrecognized disassembly line `{c}`"));
            let (head, tail) = c.split_once(':').ok_or_else(unrecognized)?;
            if head.is_empty() || head.len() > 16 || !head.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(unrecognized());
            }
            let offset = u64::from_str_radix(head, 16).map_err(|_| unrecognized())?;
            if head.len() == 16 {
                out.relocations.push(self.relocation(no, c, offset, tail)?);
                continue;
            }
            let (bytes, words, text) = split_encoding(tail);
            if text.is_empty() {
                // A padding line from CPython's `pad()`: zero bytes, no mnemonic.
                if bytes.iter().any(|&b| b != 0) {
                    return Err(self.err(
                        no,
                        format!("hex bytes without a mnemonic in `{c}` (wrapped objdump output is not supported)"),
                    ));
                }
                out.last_pad = Some((no, offset, bytes.len() as u64));
                continue;
            }
            if bytes.is_empty() {
                return Err(unrecognized());
            }
            // x86 AT&T comments start with `#`; aarch64 uses `#` for immediates
            // and `//` for comments.
            let cut = if words { text.find("//") } else { text.find('#') };
            let text = cut.map_or(text, |i| &text[..i]);
            let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
            out.instructions.push(ObjdumpInstruction { offset, bytes, text, line: no });
        }
        Ok(out)
    }

    /// `000000000000000c:  R_X86_64_GOTPCREL    _JIT_OPARG-0x4`
    fn relocation(
        &self,
        no: usize,
        c: &str,
        offset: u64,
        tail: &str,
    ) -> Result<Relocation, BadInput> {
        let mut fields = tail.split_whitespace();
        let (Some(kind), Some(target), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(self.err(no, format!("malformed relocation line `{c}`")));
        };
        let kind = RelocKind::from_name(kind)
            .ok_or_else(|| self.err(no, format!("unknown relocation type `{kind}`")))?;
        let (name, addend) = split_addend(target);
        if name.is_empty() {
            return Err(self.err(no, format!("relocation without a symbol: `{c}`")));
        }
        Ok(Relocation {
            offset,
            kind,
            symbol: Symbol::classify(name),
            addend,
            line: no,
            text: c.to_string(),
        })
    }

    /// CPython cuts a final `jmp _JIT_CONTINUE` off the code (falling off the
    /// end is the continuation) but leaves it in the disassembly. Drop that
    /// instruction and its relocation; anything else outside the code is bad.
    fn drop_removed_jump(
        &self,
        name: &str,
        size: u64,
        d: &mut CodeDisassembly,
    ) -> Result<(), BadInput> {
        let beyond: Vec<usize> = d
            .instructions
            .iter()
            .enumerate()
            .filter(|(_, i)| i.offset >= size)
            .map(|(k, _)| k)
            .collect();
        let mut removed: Option<(u64, u64)> = None;
        if let [k] = beyond[..] {
            let insn = &d.instructions[k];
            let end = insn.offset.saturating_add(insn.bytes.len() as u64);
            let inside = |r: &&Relocation| r.offset >= insn.offset && r.offset < end;
            let relocs: Vec<&Relocation> = d.relocations.iter().filter(inside).collect();
            if insn.offset == size
                && !relocs.is_empty()
                && relocs.iter().all(|r| r.symbol == Symbol::Continue)
            {
                removed = Some((insn.offset, end));
                d.instructions.remove(k);
            }
        }
        if let Some(insn) =
            d.instructions.iter().find(|i| i.offset.saturating_add(i.bytes.len() as u64) > size)
        {
            return Err(self.err(
                insn.line,
                format!(
                    "instruction at {:#x} lies outside code_body of emit_{name} ({size} bytes)",
                    insn.offset
                ),
            ));
        }
        if let Some((from, to)) = removed {
            d.relocations.retain(|r| !(r.offset >= from && r.offset < to));
        }
        if let Some(r) =
            d.relocations.iter().find(|r| r.offset.saturating_add(r.kind.width()) > size)
        {
            return Err(self.err(
                r.line,
                format!(
                    "{} relocation at {:#x} lies outside code_body of emit_{name} ({size} bytes)",
                    r.kind, r.offset
                ),
            ));
        }
        Ok(())
    }

    /// `0:`, `0: '…'`, `25: 00 00 00`, `18: CONTINUE`, `8: &_PyEval_BinaryOps+0x0`.
    fn data_comments(
        &self,
        comments: &[(usize, &str)],
        size: u64,
    ) -> Result<Vec<DataComment>, BadInput> {
        let mut out = Vec::new();
        for &(no, c) in comments {
            if c.is_empty() {
                continue;
            }
            let unrecognized = || self.err(no, format!("unrecognized data comment `{c}`"));
            let (head, tail) = c.split_once(':').ok_or_else(unrecognized)?;
            if head.is_empty() || head.len() > 16 || !head.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(unrecognized());
            }
            let offset = u64::from_str_radix(head, 16).map_err(|_| unrecognized())?;
            let tail = tail.trim();
            let is_hex_bytes = tail
                .split_whitespace()
                .all(|t| t.len() == 2 && t.bytes().all(|b| b.is_ascii_hexdigit()));
            let kind = if tail.starts_with('\'') || tail.starts_with('"') || is_hex_bytes {
                DataCommentKind::Bytes
            } else {
                DataCommentKind::Slot(
                    slot_value(tail)
                        .ok_or_else(|| self.err(no, format!("cannot parse data slot `{tail}`")))?,
                )
            };
            let need = if matches!(kind, DataCommentKind::Slot(_)) { 8 } else { 0 };
            if offset.saturating_add(need) > size {
                return Err(self.err(
                    no,
                    format!("data comment at {offset:#x} lies outside data_body ({size} bytes)"),
                ));
            }
            out.push(DataComment { offset, kind, line: no });
        }
        Ok(out)
    }
}

/// `0000000000000000 <_JIT_ENTRY>:`
fn is_label(c: &str) -> bool {
    let Some(body) = c.strip_suffix(">:") else { return false };
    let Some((addr, _)) = body.split_once(" <") else { return false };
    !addr.is_empty() && addr.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Split an objdump instruction's tail into its encoding and the rest:
/// x86 prints bytes (`0f b7 05`), aarch64 little-endian 32-bit words
/// (`a9bb7bfd`). Returns (bytes, words?, text after the encoding).
fn split_encoding(tail: &str) -> (Vec<u8>, bool, &str) {
    let mut bytes = Vec::new();
    let mut words = false;
    let mut rest = tail.trim_start();
    loop {
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let token = &rest[..end];
        let hex = !token.is_empty() && token.bytes().all(|b| b.is_ascii_hexdigit());
        match (hex, token.len()) {
            (true, 2) => match u8::from_str_radix(token, 16) {
                Ok(b) => bytes.push(b),
                Err(_) => break,
            },
            (true, 8) => match u32::from_str_radix(token, 16) {
                Ok(w) => {
                    words = true;
                    bytes.extend_from_slice(&w.to_le_bytes());
                }
                Err(_) => break,
            },
            _ => break,
        }
        rest = rest[end..].trim_start();
    }
    (bytes, words, rest)
}

/// `0x1f`, `31`.
fn parse_number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) if !hex.is_empty() => u64::from_str_radix(hex, 16).ok(),
        Some(_) => None,
        None if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
        None => None,
    }
}

/// `-0x4`, `+0x10`, `0x8`: wraps like `uintptr_t` arithmetic does.
fn parse_signed(s: &str) -> Option<i64> {
    if let Some(v) = s.strip_prefix('-') {
        parse_number(v).map(|v| (v as i64).wrapping_neg())
    } else {
        parse_number(s.strip_prefix('+').unwrap_or(s)).map(|v| v as i64)
    }
}

/// `_JIT_OPARG-0x4` → (`_JIT_OPARG`, -4); `.rodata.str1.1+0x1b`; `_Py_Dealloc` → 0.
fn split_addend(s: &str) -> (&str, i64) {
    if let Some(i) = s.rfind(['+', '-']) {
        if i > 0 {
            if let Some(addend) = parse_signed(&s[i..]) {
                return (&s[..i], addend);
            }
        }
    }
    (s, 0)
}

fn is_symbol_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '$'))
}

/// A GOT slot comment: `CONTINUE`, `OPARG`, `&_PyEval_BinaryOps+0x0`, and the
/// other spellings `_stencils.py` can produce (`DATA+0x10`, `0x8`).
fn slot_value(s: &str) -> Option<Value> {
    if let Some(sym) = s.strip_prefix('&') {
        let (name, addend) = split_addend(sym);
        return is_symbol_name(name).then(|| Value::new(Term::Symbol(name.to_string()), addend));
    }
    if s.starts_with(|c: char| c.is_ascii_uppercase()) {
        let end = s
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(s.len());
        let term = match &s[..end] {
            "CODE" => Term::Code,
            "DATA" => Term::Data,
            "CONTINUE" => Term::Continue,
            "EXECUTOR" => Term::Executor,
            "OPARG" => Term::Oparg,
            "OPERAND" | "OPERAND0" => Term::Operand(0),
            "OPERAND1" => Term::Operand(1),
            "TARGET" => Term::Target,
            "JUMP_TARGET" => Term::JumpTarget,
            "ERROR_TARGET" => Term::ErrorTarget,
            "EXIT_INDEX" => Term::ExitIndex,
            "TOP" => Term::Top,
            _ => return None,
        };
        let rest = &s[end..];
        let addend = if rest.is_empty() { 0 } else { parse_signed(rest.strip_prefix('+')?)? };
        return Some(Value::new(term, addend));
    }
    parse_signed(s).map(|a| Value::new(Term::Zero, a))
}

// ---- statements ----------------------------------------------------------------

/// One statement of an emit body; errors are messages for `file:line`.
fn statement(t: &str, line: usize) -> Result<EmitOp, String> {
    let compact: String = t.chars().filter(|c| !c.is_whitespace()).collect();
    match compact.as_str() {
        "memcpy(data,data_body,sizeof(data_body));" => return Ok(EmitOp::CopyData { line }),
        "memcpy(code,code_body,sizeof(code_body));" => return Ok(EmitOp::CopyCode { line }),
        _ => {}
    }
    let unexpected = || format!("unexpected statement `{t}`");
    let (callee, args) = t.split_once('(').ok_or_else(unexpected)?;
    let callee = callee.trim();
    if !callee.starts_with("patch_") {
        return Err(unexpected());
    }
    let func =
        PatchFn::from_name(callee).ok_or_else(|| format!("unknown patch function `{callee}`"))?;
    let args = args
        .trim_end()
        .strip_suffix(';')
        .map(str::trim_end)
        .and_then(|a| a.strip_suffix(')'))
        .ok_or_else(|| format!("expected `);` at the end of `{t}`"))?;
    let (location, value_text) =
        args.split_once(',').ok_or_else(|| format!("expected `location, value` in `{t}`"))?;
    let (section, offset) = location_of(location)
        .ok_or_else(|| format!("cannot parse patch location `{}`", location.trim()))?;
    let value_text = value_text.trim();
    let value = lex(value_text)
        .and_then(|tokens| value_of(&tokens))
        .ok_or_else(|| format!("cannot parse patch value `{value_text}`"))?;
    Ok(EmitOp::Patch(PatchCall { func, section, offset, value, line }))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok<'a> {
    Ident(&'a str),
    Num(u64),
    Arrow,
    Punct(char),
}

/// Tokens of a C expression; `None` on a character we never expect.
fn lex(s: &str) -> Option<Vec<Tok<'_>>> {
    let mut out = Vec::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Ident(&s[start..i]));
        } else if c.is_ascii_digit() {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Num(parse_number(&s[start..i])?));
        } else if c == b'-' && bytes.get(i + 1) == Some(&b'>') {
            out.push(Tok::Arrow);
            i += 2;
        } else if b"()[]&+-,*".contains(&c) {
            out.push(Tok::Punct(c as char));
            i += 1;
        } else {
            return None;
        }
    }
    Some(out)
}

/// `code + 0x13`, `data + 0x0`, `code`, `data`.
fn location_of(s: &str) -> Option<(Section, u64)> {
    let tokens = lex(s)?;
    let section = match tokens.first()? {
        Tok::Ident("code") => Section::Code,
        Tok::Ident("data") => Section::Data,
        _ => return None,
    };
    match tokens[1..] {
        [] => Some((section, 0)),
        [Tok::Punct('+'), Tok::Num(n)] => Some((section, n)),
        _ => None,
    }
}

/// A patch value: terms joined by `+`, at most one of them non-constant.
fn value_of(tokens: &[Tok<'_>]) -> Option<Value> {
    let mut base: Option<Term> = None;
    let mut sizeof_code = false;
    let mut addend: i64 = 0;
    let mut rest = tokens;
    while !rest.is_empty() {
        let (term, after): (Option<Term>, &[Tok<'_>]) = match rest {
            [Tok::Punct('('), Tok::Ident("uintptr_t"), Tok::Punct(')'), Tok::Punct('&'), Tok::Ident(sym), r @ ..] => {
                (Some(Term::Symbol((*sym).to_string())), r)
            }
            [Tok::Punct('('), Tok::Ident("uintptr_t"), Tok::Punct(')'), Tok::Ident(name), r @ ..] =>
            {
                let term = match *name {
                    "code" => Term::Code,
                    "data" => Term::Data,
                    "executor" => Term::Executor,
                    _ => return None,
                };
                (Some(term), r)
            }
            [Tok::Ident("sizeof"), Tok::Punct('('), Tok::Ident("code_body"), Tok::Punct(')'), r @ ..] =>
            {
                if sizeof_code {
                    return None;
                }
                sizeof_code = true;
                (None, r)
            }
            [Tok::Ident("instruction"), Tok::Arrow, Tok::Ident(field), r @ ..] => {
                let term = match *field {
                    "oparg" => Term::Oparg,
                    "operand" | "operand0" => Term::Operand(0),
                    "operand1" => Term::Operand(1),
                    "target" => Term::Target,
                    "exit_index" => Term::ExitIndex,
                    _ => return None,
                };
                (Some(term), r)
            }
            [Tok::Ident("state"), Tok::Arrow, Tok::Ident("instruction_starts"), Tok::Punct('['), r @ ..]
            | [Tok::Ident("instruction_starts"), Tok::Punct('['), r @ ..] => {
                let (term, r) = match r {
                    [Tok::Ident("instruction"), Tok::Arrow, Tok::Ident("jump_target"), Tok::Punct(']'), r @ ..] => {
                        (Term::JumpTarget, r)
                    }
                    [Tok::Ident("instruction"), Tok::Arrow, Tok::Ident("error_target"), Tok::Punct(']'), r @ ..] => {
                        (Term::ErrorTarget, r)
                    }
                    [Tok::Num(1), Tok::Punct(']'), r @ ..] => (Term::Top, r),
                    _ => return None,
                };
                (Some(term), r)
            }
            [Tok::Num(n), r @ ..] => {
                addend = addend.wrapping_add(*n as i64);
                (None, r)
            }
            [Tok::Punct('-'), Tok::Num(n), r @ ..] => {
                addend = addend.wrapping_sub(*n as i64);
                (None, r)
            }
            _ => return None,
        };
        if let Some(term) = term {
            if base.replace(term).is_some() {
                return None;
            }
        }
        rest = match after {
            [] => after,
            [Tok::Punct('+'), r @ ..] if !r.is_empty() => r,
            _ => return None,
        };
    }
    let term = match (base, sizeof_code) {
        (Some(Term::Code), true) => Term::Continue,
        (_, true) => return None,
        (Some(term), false) => term,
        // `_stencils.py` writes nothing at all for a zero value.
        (None, false) => Term::Zero,
    };
    Some(Value::new(term, addend))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Instant;

    /// A hand-written two-stencil header in the 3.13 shape (not CPython's text).
    pub(crate) const FIXTURE: &str = r#"// fixture: made up for stencilcheck's loader tests
// $ written by hand

void
emit__FIX_ADD(
    unsigned char *code, unsigned char *data, _PyExecutorObject *executor,
    const _PyUOpInstruction *instruction, uintptr_t instruction_starts[])
{
    // 
    // fix_add.o:   file format elf64-x86-64
    // 
    // Disassembly of section .text:
    // 
    // 0000000000000000 <_JIT_ENTRY>:
    // 0: 48 8b 05 00 00 00 00          movq    (%rip), %rax            # 0x7 <_JIT_ENTRY+0x7>
    // 0000000000000003:  R_X86_64_REX_GOTPCRELX       _JIT_OPARG-0x4
    // 7: 48 01 c3                      addq    %rax, %rbx
    // a: ff 15 00 00 00 00             callq   *(%rip)                 # 0x10 <_JIT_ENTRY+0x10>
    // 000000000000000c:  R_X86_64_GOTPCRELX   PyFix_Helper-0x4
    // 10: 48 85 c0                      testq   %rax, %rax
    // 13: 0f 84 00 00 00 00             je      0x19 <_JIT_ENTRY+0x19>
    // 0000000000000015:  R_X86_64_PC32        _JIT_ERROR_TARGET-0x4
    // 19: 48 8d 05 00 00 00 00          leaq    (%rip), %rax            # 0x20 <_JIT_ENTRY+0x20>
    // 000000000000001c:  R_X86_64_PC32        .rodata.str1.1+0x2
    // 20: ff 25 00 00 00 00             jmpq    *(%rip)                 # 0x26 <_JIT_ENTRY+0x26>
    // 0000000000000022:  R_X86_64_GOTPCRELX   _JIT_CONTINUE-0x4
    // 26: 
    const unsigned char code_body[38] = {
        0x48, 0x8b, 0x05, 0x00, 0x00, 0x00, 0x00, 0x48,
        0x01, 0xc3, 0xff, 0x15, 0x00, 0x00, 0x00, 0x00,
        0x48, 0x85, 0xc0, 0x0f, 0x84, 0x00, 0x00, 0x00,
        0x00, 0x48, 0x8d, 0x05, 0x00, 0x00, 0x00, 0x00,
        0xff, 0x25, 0x00, 0x00, 0x00, 0x00,
    };
    // 0: 'hi\x00'
    // 3: 00 00 00 00 00
    // 8: OPARG
    // 10: &PyFix_Helper+0x0
    // 18: CONTINUE
    const unsigned char data_body[32] = {
        0x68, 0x69, 0x00,
    };
    memcpy(data, data_body, sizeof(data_body));
    patch_64(data + 0x8, instruction->oparg);
    patch_64(data + 0x10, (uintptr_t)&PyFix_Helper);
    patch_64(data + 0x18, (uintptr_t)code + sizeof(code_body));
    memcpy(code, code_body, sizeof(code_body));
    patch_x86_64_32rx(code + 0x3, (uintptr_t)data + 0x4);
    patch_x86_64_32rx(code + 0xc, (uintptr_t)data + 0xc);
    patch_32r(code + 0x15, instruction_starts[instruction->error_target] + -0x4);
    patch_32r(code + 0x1c, (uintptr_t)data + -0x2);
    patch_x86_64_32rx(code + 0x22, (uintptr_t)data + 0x14);
}

void
emit_trampoline(
    unsigned char *code, unsigned char *data, _PyExecutorObject *executor,
    const _PyUOpInstruction *instruction, uintptr_t instruction_starts[])
{
    // 
    // trampoline.o:   file format elf64-x86-64
    // 
    // Disassembly of section .text:
    // 
    // 0000000000000000 <_ENTRY>:
    // 0: 55                            pushq   %rbp
    // 1: ff 25 00 00 00 00             jmpq    *(%rip)                 # 0x7 <_ENTRY+0x7>
    // 0000000000000003:  R_X86_64_GOTPCRELX   _JIT_CONTINUE-0x4
    // 1: 
    const unsigned char code_body[1] = {
        0x55,
    };
    // 0: 
    memcpy(code, code_body, sizeof(code_body));
}

typedef struct { void *emit; size_t code_size; size_t data_size; } StencilGroup;

static const StencilGroup trampoline = {emit_trampoline, 1, 0};

static const StencilGroup stencil_groups[MAX_UOP_ID + 1] = {
    [_FIX_ADD] = {emit__FIX_ADD, 38, 32},
};
"#;

    const PATH: &str = "fix/jit_stencils.h";

    /// 1-based line of the first line containing `needle`.
    fn line_of(text: &str, needle: &str) -> usize {
        text.lines().position(|l| l.contains(needle)).map(|i| i + 1).expect("needle in fixture")
    }

    fn with(from: &str, to: &str) -> String {
        assert!(FIXTURE.contains(from), "fixture lacks `{from}`");
        FIXTURE.replacen(from, to, 1)
    }

    fn parse_err(text: &str) -> BadInput {
        match parse(PATH, text) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        }
    }

    fn assert_err_at(text: &str, line: usize, message_part: &str) {
        let e = parse_err(text);
        let shown = e.to_string();
        assert!(shown.starts_with(&format!("{PATH}:{line}: ")), "wrong location: {shown}");
        assert!(shown.contains(message_part), "`{shown}` lacks `{message_part}`");
        assert!(!shown.contains('\n'));
    }

    fn v(term: Term, addend: i64) -> Value {
        Value::new(term, addend)
    }

    #[test]
    fn load_fixture_field_by_field() {
        let set = parse(PATH, FIXTURE).expect("fixture parses");
        assert_eq!(set.arch(), Arch::X86_64);
        assert_eq!(set.path, PathBuf::from(PATH));
        let names: Vec<&str> = set.stencils.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["_FIX_ADD", "trampoline"]);

        let add = &set.stencils[0];
        assert_eq!(add.line, line_of(FIXTURE, "emit__FIX_ADD("));
        assert_eq!(add.code.len(), 38);
        assert_eq!(&add.code[..3], &[0x48, 0x8b, 0x05]);
        assert_eq!(&add.code[32..], &[0xff, 0x25, 0, 0, 0, 0]);
        assert_eq!(add.data.len(), 32, "zero-extended to the declared length");
        assert_eq!(&add.data[..4], b"hi\0\0");
        assert!(add.data[3..].iter().all(|&b| b == 0));

        // Instructions: offsets, bytes, text without the `# …` comment.
        let offsets: Vec<u64> = add.instructions.iter().map(|i| i.offset).collect();
        assert_eq!(offsets, [0x0, 0x7, 0xa, 0x10, 0x13, 0x19, 0x20]);
        let first = &add.instructions[0];
        assert_eq!(first.bytes, [0x48, 0x8b, 0x05, 0, 0, 0, 0]);
        assert_eq!(first.text, "movq (%rip), %rax");
        assert_eq!(first.line, line_of(FIXTURE, "// 0: 48 8b 05"));
        assert_eq!(add.instructions[4].text, "je 0x19 <_JIT_ENTRY+0x19>");
        assert_eq!(add.instructions[6].text, "jmpq *(%rip)");
        assert_eq!(add.instruction_at(0xd).map(|i| i.offset), Some(0xa));

        // Relocations.
        let r: Vec<(u64, RelocKind, Symbol, i64)> = add
            .relocations
            .iter()
            .map(|r| (r.offset, r.kind, r.symbol.clone(), r.addend))
            .collect();
        assert_eq!(
            r,
            [
                (0x3, RelocKind::X86_64_REX_GOTPCRELX, Symbol::Oparg, -4),
                (0xc, RelocKind::X86_64_GOTPCRELX, Symbol::External("PyFix_Helper".into()), -4),
                (0x15, RelocKind::X86_64_PC32, Symbol::ErrorTarget, -4),
                (0x1c, RelocKind::X86_64_PC32, Symbol::Local(".rodata.str1.1".into()), 2),
                (0x22, RelocKind::X86_64_GOTPCRELX, Symbol::Continue, -4),
            ]
        );
        assert_eq!(
            add.relocations[0].text,
            "0000000000000003:  R_X86_64_REX_GOTPCRELX       _JIT_OPARG-0x4"
        );
        assert_eq!(add.relocations[3].line, line_of(FIXTURE, ".rodata.str1.1+0x2"));

        // Data comments.
        let d: Vec<(u64, DataCommentKind)> =
            add.data_comments.iter().map(|c| (c.offset, c.kind.clone())).collect();
        assert_eq!(
            d,
            [
                (0x0, DataCommentKind::Bytes),
                (0x3, DataCommentKind::Bytes),
                (0x8, DataCommentKind::Slot(v(Term::Oparg, 0))),
                (0x10, DataCommentKind::Slot(v(Term::Symbol("PyFix_Helper".into()), 0))),
                (0x18, DataCommentKind::Slot(v(Term::Continue, 0))),
            ]
        );
        assert_eq!(add.rodata_len(), 8);

        // Emit order: data first, then code.
        let l = |needle: &str| line_of(FIXTURE, needle);
        let patch = |func, section, offset, value, needle: &str| {
            EmitOp::Patch(PatchCall { func, section, offset, value, line: l(needle) })
        };
        assert_eq!(
            add.emit,
            [
                EmitOp::CopyData { line: l("memcpy(data") },
                patch(PatchFn::P64, Section::Data, 0x8, v(Term::Oparg, 0), "data + 0x8,"),
                patch(
                    PatchFn::P64,
                    Section::Data,
                    0x10,
                    v(Term::Symbol("PyFix_Helper".into()), 0),
                    "data + 0x10,"
                ),
                patch(PatchFn::P64, Section::Data, 0x18, v(Term::Continue, 0), "data + 0x18,"),
                EmitOp::CopyCode { line: l("memcpy(code, code_body, sizeof(code_body));") },
                patch(PatchFn::X86_64_32rx, Section::Code, 0x3, v(Term::Data, 4), "code + 0x3,"),
                patch(PatchFn::X86_64_32rx, Section::Code, 0xc, v(Term::Data, 0xc), "code + 0xc,"),
                patch(PatchFn::P32r, Section::Code, 0x15, v(Term::ErrorTarget, -4), "code + 0x15,"),
                patch(PatchFn::P32r, Section::Code, 0x1c, v(Term::Data, -2), "code + 0x1c,"),
                patch(
                    PatchFn::X86_64_32rx,
                    Section::Code,
                    0x22,
                    v(Term::Data, 0x14),
                    "code + 0x22,"
                ),
            ]
        );

        // The trampoline: its final jump to _JIT_CONTINUE was cut off the code,
        // so that instruction and its relocation are dropped.
        let t = &set.stencils[1];
        assert_eq!(t.line, line_of(FIXTURE, "emit_trampoline("));
        assert_eq!(t.code, [0x55]);
        assert!(t.data.is_empty());
        assert_eq!(t.instructions.len(), 1);
        assert_eq!(t.instructions[0].text, "pushq %rbp");
        assert!(t.relocations.is_empty());
        let after = |needle: &str| {
            FIXTURE
                .lines()
                .enumerate()
                .skip(t.line)
                .find(|(_, l)| l.trim() == needle)
                .map(|(i, _)| i + 1)
        };
        let data_line = after("// 0:").expect("data comment");
        assert_eq!(
            t.data_comments,
            [DataComment { offset: 0, kind: DataCommentKind::Bytes, line: data_line }]
        );
        assert_eq!(t.emit, [EmitOp::CopyCode { line: data_line + 1 }]);
    }

    #[test]
    fn load_error_truncated_mid_function() {
        let cut = line_of(FIXTURE, "patch_64(data + 0x10");
        let text: String = FIXTURE.lines().take(cut).map(|l| format!("{l}\n")).collect();
        assert_err_at(&text, cut, "truncated: emit__FIX_ADD (line 5) ends without `}`");
        // Inside a body initializer.
        let cut = line_of(FIXTURE, "0x01, 0xc3");
        let text: String = FIXTURE.lines().take(cut).map(|l| format!("{l}\n")).collect();
        assert_err_at(&text, cut, "code_body initializer");
        // Inside the comments.
        let cut = line_of(FIXTURE, "// 13: 0f 84");
        let text: String = FIXTURE.lines().take(cut).map(|l| format!("{l}\n")).collect();
        assert_err_at(&text, cut, "truncated");
    }

    #[test]
    fn load_error_missing_closing_brace() {
        // The first function's `}` is lost: the next `void` line is where it fails.
        let text = with(
            "    patch_x86_64_32rx(code + 0x22, (uintptr_t)data + 0x14);\n}\n",
            "    patch_x86_64_32rx(code + 0x22, (uintptr_t)data + 0x14);\n",
        );
        let second_void =
            text.lines().enumerate().filter(|(_, l)| *l == "void").nth(1).map(|(i, _)| i + 1);
        assert_err_at(
            &text,
            second_void.expect("two functions"),
            "emit__FIX_ADD (line 5) is not closed",
        );
    }

    #[test]
    fn load_error_truncated_before_table() {
        let cut = line_of(FIXTURE, "typedef struct");
        let text: String = FIXTURE.lines().take(cut - 1).map(|l| format!("{l}\n")).collect();
        assert_err_at(&text, cut - 1, "truncated: no stencil table");
        // Table opened but not closed.
        let cut = line_of(FIXTURE, "[_FIX_ADD]");
        let text: String = FIXTURE.lines().take(cut).map(|l| format!("{l}\n")).collect();
        assert_err_at(&text, cut, "not closed");
    }

    #[test]
    fn load_error_unknown_patch_function() {
        let text = with("patch_32r(code + 0x1c", "patch_foo(code + 0x1c");
        assert_err_at(&text, line_of(&text, "patch_foo"), "unknown patch function `patch_foo`");
    }

    #[test]
    fn load_error_garbage_value() {
        for garbage in [
            "(uintptr_t)data * 2",
            "instruction->nope",
            "(uintptr_t)data + (uintptr_t)code",
            "1 +",
            "data",
        ] {
            let text = with("(uintptr_t)data + -0x2)", &format!("{garbage})"));
            assert_err_at(
                &text,
                line_of(FIXTURE, "code + 0x1c"),
                &format!("cannot parse patch value `{garbage}`"),
            );
        }
        let text = with("code + 0x1c,", "code + zz,");
        assert_err_at(
            &text,
            line_of(FIXTURE, "code + 0x1c"),
            "cannot parse patch location `code + zz`",
        );
        let text = with("memcpy(data, data_body", "memmove(data, data_body");
        assert_err_at(&text, line_of(FIXTURE, "memcpy(data"), "unexpected statement");
    }

    #[test]
    fn load_error_unknown_relocation_type() {
        let text = with("R_X86_64_PC32        .rodata", "R_X86_64_BOGUS       .rodata");
        assert_err_at(
            &text,
            line_of(FIXTURE, ".rodata.str1.1+0x2"),
            "unknown relocation type `R_X86_64_BOGUS`",
        );
    }

    #[test]
    fn load_error_body_longer_than_declared() {
        let text = with("data_body[32]", "data_body[2]");
        assert_err_at(
            &text,
            line_of(FIXTURE, "data_body[32]"),
            "data_body[2] lists more than 2 bytes",
        );
        let text = with("0x68, 0x69, 0x00,", "0x68, 0x169, 0x00,");
        assert_err_at(&text, line_of(FIXTURE, "0x68, 0x69"), "bad byte `0x169`");
    }

    #[test]
    fn load_error_table_mismatches() {
        let text = with("{emit__FIX_ADD, 38, 32}", "{emit__FIX_ADD, 38, 40}");
        assert_err_at(&text, line_of(FIXTURE, "[_FIX_ADD]"), "data_size 40");
        let text = with("    [_FIX_ADD] = {emit__FIX_ADD, 38, 32},\n", "");
        assert_err_at(
            &text,
            line_of(FIXTURE, "stencil_groups["),
            "emit__FIX_ADD (line 5) is missing from the stencil table",
        );
        let text = with(
            "    [_FIX_ADD] = {emit__FIX_ADD, 38, 32},\n",
            "    [_FIX_ADD] = {emit__FIX_ADD, 38, 32},\n    [_GONE] = {emit__GONE, 1, 0},\n",
        );
        assert_err_at(&text, line_of(FIXTURE, "[_FIX_ADD]") + 1, "no such function");
        let text = with("[_FIX_ADD] = {emit__FIX_ADD,", "[_FIX_SUB] = {emit__FIX_ADD,");
        assert_err_at(&text, line_of(FIXTURE, "[_FIX_ADD]"), "points at emit__FIX_ADD");
    }

    #[test]
    fn load_error_relocation_outside_code() {
        let text =
            with("0000000000000022:  R_X86_64_GOTPCRELX", "0000000000000024:  R_X86_64_GOTPCRELX");
        assert_err_at(&text, line_of(FIXTURE, "0000000000000022:"), "lies outside code_body");
        // The trampoline's dropped jump must name _JIT_CONTINUE.
        let text = FIXTURE.replace(
            "0000000000000003:  R_X86_64_GOTPCRELX   _JIT_CONTINUE-0x4\n    // 1: ",
            "0000000000000003:  R_X86_64_GOTPCRELX   _JIT_TOP-0x4\n    // 1: ",
        );
        assert_ne!(text, FIXTURE);
        assert_err_at(
            &text,
            line_of(FIXTURE, "// 1: ff 25"),
            "instruction at 0x1 lies outside code_body",
        );
        // The end line must agree with the declared size.
        let text = with("    // 26: \n", "    // 25: \n");
        assert_err_at(&text, line_of(FIXTURE, "// 26: "), "ends at 0x25");
        // Data slots must fit in data_body.
        let text = with("// 18: CONTINUE", "// 1c: CONTINUE");
        assert_err_at(&text, line_of(FIXTURE, "// 18: CONTINUE"), "outside data_body");
    }

    #[test]
    fn load_error_bad_comments() {
        let text = with("// 18: CONTINUE", "// 18: GOT+0x8");
        assert_err_at(
            &text,
            line_of(FIXTURE, "// 18: CONTINUE"),
            "cannot parse data slot `GOT+0x8`",
        );
        let text =
            with("// 10: 48 85 c0                      testq   %rax, %rax", "// 10: 48 85 c1 4f");
        assert_err_at(&text, line_of(FIXTURE, "// 10: 48 85 c0"), "wrapped objdump output");
        let text = with("// Disassembly of section .text:", "// something else");
        assert_err_at(
            &text,
            line_of(FIXTURE, "// Disassembly of section .text:"),
            "unrecognized disassembly line",
        );
    }

    #[test]
    fn load_error_duplicate_and_names() {
        let text = with("emit_trampoline(", "emit__FIX_ADD(");
        assert_err_at(&text, line_of(FIXTURE, "emit_trampoline("), "defined twice");
        let text = with("emit_trampoline(", "emit_tram-poline(");
        assert_err_at(&text, line_of(FIXTURE, "emit_trampoline("), "bad emit function name");
    }

    /// Truncating the fixture anywhere (every line, every character) gives a
    /// result or an error, never a panic; only the complete text parses.
    #[test]
    fn load_every_prefix_parses_or_errs() {
        let lines: Vec<&str> = FIXTURE.lines().collect();
        for n in 0..=lines.len() {
            let text: String = lines[..n].iter().map(|l| format!("{l}\n")).collect();
            let result = std::panic::catch_unwind(|| parse(PATH, &text));
            let result = result.unwrap_or_else(|_| panic!("panicked on the first {n} lines"));
            if let Err(e) = &result {
                let line: usize =
                    e.location.rsplit(':').next().and_then(|l| l.parse().ok()).expect("file:line");
                assert!(
                    line >= 1 && line <= n.max(1),
                    "line {line} out of range for {n} lines: {e}"
                );
            }
            // The table's closing line is the last one: every shorter prefix fails.
            assert_eq!(result.is_ok(), n == lines.len(), "prefix of {n} lines");
        }
        for (cut, _) in FIXTURE.char_indices() {
            let text = &FIXTURE[..cut];
            let result = std::panic::catch_unwind(|| parse(PATH, text));
            assert!(result.is_ok(), "panicked at byte {cut}");
        }
    }

    /// Random line edits (drop, duplicate, swap, mangle) never panic either.
    #[test]
    fn load_mutations_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let lines: Vec<&str> = FIXTURE.lines().collect();
        for _ in 0..2000 {
            let mut m: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
            for _ in 0..rng.gen_range(1..4) {
                let i = rng.gen_range(0..m.len());
                match rng.gen_range(0..5) {
                    0 => {
                        m.remove(i);
                    }
                    1 => {
                        let l = m[i].clone();
                        m.insert(i, l);
                    }
                    2 => {
                        let j = rng.gen_range(0..m.len());
                        m.swap(i, j);
                    }
                    3 => {
                        let l = &mut m[i];
                        if !l.is_empty() {
                            let k = rng.gen_range(0..l.len());
                            if l.is_char_boundary(k) {
                                l.truncate(k);
                            }
                        }
                    }
                    _ => {
                        let chars =
                            ['}', '{', ';', ',', '0', 'x', '(', ')', '-', '+', ':', ' ', 'f'];
                        let l = &mut m[i];
                        let k = rng.gen_range(0..=l.len());
                        if l.is_char_boundary(k) {
                            l.insert(k, chars[rng.gen_range(0..chars.len())]);
                        }
                    }
                }
                if m.is_empty() {
                    break;
                }
            }
            let text = m.join("\n");
            let r = std::panic::catch_unwind(|| parse(PATH, &text));
            assert!(r.is_ok(), "panicked on:\n{text}");
        }
    }

    #[test]
    fn load_patch_value_forms() {
        let cases: &[(&str, Value)] = &[
            ("(uintptr_t)data + 0x4", v(Term::Data, 4)),
            ("(uintptr_t)data + -0x4", v(Term::Data, -4)),
            ("(uintptr_t)data", v(Term::Data, 0)),
            ("(uintptr_t)code", v(Term::Code, 0)),
            ("(uintptr_t)code + 0x10", v(Term::Code, 0x10)),
            ("(uintptr_t)code + sizeof(code_body)", v(Term::Continue, 0)),
            ("(uintptr_t)code + sizeof(code_body) + 0x8", v(Term::Continue, 8)),
            ("(uintptr_t)&_PyEval_BinaryOps", v(Term::Symbol("_PyEval_BinaryOps".into()), 0)),
            ("(uintptr_t)&PyLong_Type + 0x8", v(Term::Symbol("PyLong_Type".into()), 8)),
            ("(uintptr_t)executor", v(Term::Executor, 0)),
            ("instruction_starts[instruction->jump_target]", v(Term::JumpTarget, 0)),
            ("instruction_starts[instruction->error_target]", v(Term::ErrorTarget, 0)),
            ("instruction_starts[1]", v(Term::Top, 0)),
            ("state->instruction_starts[instruction->jump_target]", v(Term::JumpTarget, 0)),
            (
                "state->instruction_starts[instruction->error_target] + -0x4",
                v(Term::ErrorTarget, -4),
            ),
            ("state->instruction_starts[1]", v(Term::Top, 0)),
            ("instruction->oparg", v(Term::Oparg, 0)),
            ("instruction->operand", v(Term::Operand(0), 0)),
            ("instruction->operand0", v(Term::Operand(0), 0)),
            ("instruction->operand1", v(Term::Operand(1), 0)),
            ("instruction->target", v(Term::Target, 0)),
            ("instruction->exit_index", v(Term::ExitIndex, 0)),
            ("0x10", v(Term::Zero, 0x10)),
            ("16", v(Term::Zero, 16)),
            ("-0x4", v(Term::Zero, -4)),
            ("0xfffffffffffffffc", v(Term::Zero, -4)),
            ("", v(Term::Zero, 0)),
        ];
        for (text, want) in cases {
            let got = lex(text).and_then(|t| value_of(&t));
            assert_eq!(got.as_ref(), Some(want), "`{text}`");
            // Display (model.rs) round-trips through the parser.
            if !text.is_empty() {
                let shown = want.to_string();
                assert_eq!(
                    lex(&shown).and_then(|t| value_of(&t)).as_ref(),
                    Some(want),
                    "`{shown}`"
                );
            }
        }
        for bad in [
            "(uintptr_t)data +",
            "+ 0x4",
            "sizeof(code_body)",
            "(uintptr_t)data + sizeof(code_body)",
            "(uintptr_t)code + sizeof(code_body) + sizeof(code_body)",
            "instruction_starts[2]",
            "instruction_starts[instruction->oparg]",
            "(instruction->operand >> 32)",
            "instruction->oparg + instruction->target",
            "(uintptr_t)&",
            "(int)data",
            "0x",
            "0x1g",
        ] {
            assert_eq!(lex(bad).and_then(|t| value_of(&t)), None, "`{bad}` should not parse");
        }
        assert_eq!(location_of("code"), Some((Section::Code, 0)));
        assert_eq!(location_of(" data + 0x18 "), Some((Section::Data, 0x18)));
        assert_eq!(location_of("code + 12"), Some((Section::Code, 12)));
        assert_eq!(location_of("code - 4"), None);
        assert_eq!(location_of("stack + 4"), None);
    }

    #[test]
    fn load_data_slot_forms() {
        let cases: &[(&str, Value)] = &[
            ("CONTINUE", v(Term::Continue, 0)),
            ("ERROR_TARGET", v(Term::ErrorTarget, 0)),
            ("JUMP_TARGET", v(Term::JumpTarget, 0)),
            ("OPARG", v(Term::Oparg, 0)),
            ("OPERAND", v(Term::Operand(0), 0)),
            ("OPERAND0", v(Term::Operand(0), 0)),
            ("OPERAND1", v(Term::Operand(1), 0)),
            ("EXECUTOR", v(Term::Executor, 0)),
            ("TOP", v(Term::Top, 0)),
            ("TARGET", v(Term::Target, 0)),
            ("EXIT_INDEX", v(Term::ExitIndex, 0)),
            ("&_PyEval_BinaryOps+0x0", v(Term::Symbol("_PyEval_BinaryOps".into()), 0)),
            ("&PyLong_Type+0x10", v(Term::Symbol("PyLong_Type".into()), 0x10)),
            ("&.rodata.str1.1-0x4", v(Term::Symbol(".rodata.str1.1".into()), -4)),
            ("DATA+0x20", v(Term::Data, 0x20)),
            ("CODE+-0x4", v(Term::Code, -4)),
            ("0x8", v(Term::Zero, 8)),
            ("-0x8", v(Term::Zero, -8)),
        ];
        for (text, want) in cases {
            assert_eq!(slot_value(text).as_ref(), Some(want), "`{text}`");
        }
        for bad in [
            "GOT",
            "OPERAND_HI",
            "CONTINUE+&foo+0x0",
            "&",
            "&a b",
            "CONTINUE-0x4",
            "continue",
            "DATA+",
        ] {
            assert_eq!(slot_value(bad), None, "`{bad}` should not parse");
        }
    }

    #[test]
    fn load_small_helpers() {
        assert_eq!(split_addend("_JIT_OPARG-0x4"), ("_JIT_OPARG", -4));
        assert_eq!(split_addend(".rodata.str1.1+0x1b"), (".rodata.str1.1", 0x1b));
        assert_eq!(split_addend("_Py_Dealloc"), ("_Py_Dealloc", 0));
        assert_eq!(split_addend("odd-name"), ("odd-name", 0));
        assert_eq!(split_addend("-0x4"), ("-0x4", 0));
        let (bytes, words, text) =
            split_encoding(" 48 ba 00 00 00 00 00 00 00 80 movabsq $-0x8000000000000000, %rdx");
        assert_eq!((bytes.len(), words, text), (10, false, "movabsq $-0x8000000000000000, %rdx"));
        let (bytes, words, text) = split_encoding(" a9bb7bfd      stp     x29, x30, [sp, #-0x50]!");
        assert_eq!(
            (bytes, words, text),
            (vec![0xfd, 0x7b, 0xbb, 0xa9], true, "stp     x29, x30, [sp, #-0x50]!")
        );
        assert!(is_label("0000000000000000 <_JIT_ENTRY>:"));
        assert!(!is_label("0: 48 8b"));
    }

    /// `_NOP`-like: no code_body, no data_body, only the dropped final jump.
    #[test]
    fn load_empty_code_and_data() {
        let nop = "void\nemit__FIX_NOP(\n    unsigned char *code, unsigned char *data, _PyExecutorObject *executor,\n    const _PyUOpInstruction *instruction, uintptr_t instruction_starts[])\n{\n    // \n    // nop.o:   file format elf64-x86-64\n    // \n    // Disassembly of section .text:\n    // \n    // 0000000000000000 <_JIT_ENTRY>:\n    // 0: ff 25 00 00 00 00             jmpq    *(%rip)                 # 0x6 <_JIT_ENTRY+0x6>\n    // 0000000000000002:  R_X86_64_GOTPCRELX   _JIT_CONTINUE-0x4\n    // 0: \n    // 0: \n}\n\n";
        let text = FIXTURE.replacen("void\nemit_trampoline(", &format!("{nop}void\nemit_trampoline("), 1).replacen(
            "    [_FIX_ADD] = {emit__FIX_ADD, 38, 32},\n",
            "    [_FIX_ADD] = {emit__FIX_ADD, 38, 32},\n    [_FIX_NOP] = {emit__FIX_NOP, 0, 0},\n",
            1,
        );
        let set = parse(PATH, &text).expect("parses");
        let s = set.stencils.iter().find(|s| s.name == "_FIX_NOP").expect("nop");
        assert!(s.code.is_empty() && s.data.is_empty() && s.emit.is_empty());
        assert!(s.instructions.is_empty() && s.relocations.is_empty());
        assert_eq!(s.data_comments.len(), 1);
        assert_eq!(s.data_comments[0].line, s.line + 13, "the second `0:` is the data's");
        // Table says otherwise → error at the table line.
        let bad = text.replace("{emit__FIX_NOP, 0, 0}", "{emit__FIX_NOP, 6, 0}");
        assert_err_at(&bad, line_of(&bad, "[_FIX_NOP]"), "code_size 6");
    }

    const AARCH64: &str = "void\nemit__FIX_ARM(\n    unsigned char *code, unsigned char *data, _PyExecutorObject *executor,\n    const _PyUOpInstruction *instruction, jit_state *state)\n{\n    // 0000000000000000 <_JIT_ENTRY>:\n    // 0: 90000008      adrp    x8, 0x0 <_JIT_ENTRY>\n    // 0000000000000000:  R_AARCH64_ADR_GOT_PAGE       _JIT_OPARG\n    // 4: f9400108      ldr     x8, [x8]\n    // 0000000000000004:  R_AARCH64_LD64_GOT_LO12_NC   _JIT_OPARG\n    // 8: 52800021      mov     w1, #0x1                // =1\n    // c: 14000000      b       0xc <_JIT_ENTRY+0xc>\n    // 000000000000000c:  R_AARCH64_JUMP26     _JIT_JUMP_TARGET\n    // 10: 14000000      b       0x10 <_JIT_ENTRY+0x10>\n    // 0000000000000010:  R_AARCH64_JUMP26     _JIT_CONTINUE\n    // 10: 00 00 00 00\n    const unsigned char code_body[20] = {\n        0x08, 0x00, 0x00, 0x90, 0x08, 0x01, 0x40, 0xf9,\n        0x21, 0x00, 0x80, 0x52, 0x00, 0x00, 0x00, 0x14,\n    };\n    // 0: \n    // 0: OPERAND0\n    const unsigned char data_body[8] = {\n    };\n    memcpy(data, data_body, sizeof(data_body));\n    patch_64(data + 0x0, instruction->operand0);\n    memcpy(code, code_body, sizeof(code_body));\n    patch_aarch64_33rx(code + 0x0, (uintptr_t)data);\n    patch_aarch64_26r(code + 0xc, state->instruction_starts[instruction->jump_target]);\n}\n\nstatic const StencilGroup stencil_groups[MAX_UOP_ID + 1] = {\n    [_FIX_ARM] = {emit__FIX_ARM, 20, 8, {0x1, 0x0}},\n};\n";

    #[test]
    fn load_aarch64_words_and_later_spellings() {
        let set = parse(PATH, AARCH64).expect("parses");
        assert_eq!(set.arch(), Arch::Aarch64);
        let s = &set.stencils[0];
        assert_eq!(s.code.len(), 20);
        assert_eq!(&s.code[..4], &[0x08, 0x00, 0x00, 0x90]);
        assert_eq!(s.data, [0; 8]);
        assert_eq!(s.instructions[0].bytes, [0x08, 0x00, 0x00, 0x90]);
        assert_eq!(s.instructions[2].text, "mov w1, #0x1");
        assert_eq!(s.instructions.len(), 5, "the `b` at 0x10 is kept: the code still holds it");
        let kinds: Vec<(u64, RelocKind, i64)> =
            s.relocations.iter().map(|r| (r.offset, r.kind, r.addend)).collect();
        assert_eq!(
            kinds,
            [
                (0x0, RelocKind::Aarch64_ADR_GOT_PAGE, 0),
                (0x4, RelocKind::Aarch64_LD64_GOT_LO12_NC, 0),
                (0xc, RelocKind::Aarch64_JUMP26, 0),
                (0x10, RelocKind::Aarch64_JUMP26, 0),
            ]
        );
        assert_eq!(s.data_comments[1].kind, DataCommentKind::Slot(v(Term::Operand(0), 0)));
        let holes: Vec<&PatchCall> = s.holes().collect();
        assert_eq!(holes[0].value, v(Term::Operand(0), 0));
        assert_eq!(holes[1].func, PatchFn::Aarch64_33rx);
        assert_eq!(holes[2].value, v(Term::JumpTarget, 0));

        // An x86 patch function in an aarch64 header is mixed input.
        let mixed =
            AARCH64.replace("patch_aarch64_33rx(code + 0x0", "patch_x86_64_32rx(code + 0x0");
        assert_err_at(&mixed, line_of(&mixed, "patch_x86_64_32rx"), "mixed architectures");
    }

    // ---- the real header, when present -----------------------------------------

    const REAL: &[&str] = &[
        "/tmp/cpython-stencils/3.13.5/x86_64-unknown-linux-gnu/jit_stencils.h",
        "/tmp/cpython-stencils/3.13.5/aarch64-unknown-linux-gnu/jit_stencils.h",
    ];

    #[test]
    fn load_real_headers_if_present() {
        for path in REAL {
            let Ok(text) = std::fs::read_to_string(path) else {
                println!("note: {path} is absent; skipping");
                continue;
            };
            let start = Instant::now();
            let set = match crate::load::load_path(std::path::Path::new(path)) {
                Ok(set) => set,
                Err(e) => panic!("{e}"),
            };
            println!("loaded {path}: {} stencils in {:?}", set.stencils.len(), start.elapsed());
            assert_eq!(
                set.arch(),
                if path.contains("aarch64") { Arch::Aarch64 } else { Arch::X86_64 }
            );
            assert_eq!(set.stencils.len(), 235);
            assert!(set.stencils.iter().any(|s| s.name == "trampoline"));

            // Footer sizes, re-read independently of the parser.
            let mut table = 0;
            for line in text.lines() {
                let Some((_, rhs)) = line.split_once("= {emit_") else { continue };
                let f: Vec<&str> = rhs.trim_end_matches(['}', ',', ';']).split(", ").collect();
                let s = set
                    .stencils
                    .iter()
                    .find(|s| s.name == f[0])
                    .expect("table entry has a stencil");
                assert_eq!(s.code_size().to_string(), f[1], "{}", s.name);
                assert_eq!(s.data_size().to_string(), f[2], "{}", s.name);
                table += 1;
            }
            assert_eq!(table, 235);

            // Every patch call and every relocation line became model entries.
            let patch_lines = text.lines().filter(|l| l.trim_start().starts_with("patch_")).count();
            let holes: usize = set.stencils.iter().map(|s| s.holes().count()).sum();
            assert_eq!(holes, patch_lines);
            let reloc_lines = text
                .lines()
                .filter(|l| l.trim_start().strip_prefix("// ").is_some_and(|c| c.contains(":  R_")))
                .count();
            let relocs: usize = set.stencils.iter().map(|s| s.relocations.len()).sum();
            let dropped = reloc_lines - relocs;
            println!(
                "{relocs} relocations ({dropped} on removed final jumps), {holes} patch calls"
            );
            for s in &set.stencils {
                for r in &s.relocations {
                    assert!(!r.symbol.to_string().is_empty());
                    assert!(r.offset + r.kind.width() <= s.code_size());
                }
                // The printed encodings are the code bytes (no trampolines here).
                for i in &s.instructions {
                    let at = i.offset as usize;
                    assert_eq!(
                        s.code.get(at..at + i.bytes.len()),
                        Some(&i.bytes[..]),
                        "{}",
                        s.name
                    );
                }
                // Self-consistency: every code hole sits on a printed relocation.
                for h in s.holes().filter(|h| h.section == Section::Code) {
                    assert!(
                        s.relocations.iter().any(|r| r.offset == h.offset),
                        "{}: {} at code+{:#x} has no relocation",
                        s.name,
                        h.func,
                        h.offset
                    );
                }
                for h in s.holes().filter(|h| h.section == Section::Data) {
                    assert!(h.offset + h.func.width() <= s.data_size(), "{}", s.name);
                }
            }
            let nop = set.stencils.iter().find(|s| s.name == "_NOP").expect("_NOP");
            assert!(nop.code.is_empty() && nop.emit.is_empty());
        }
    }
}
