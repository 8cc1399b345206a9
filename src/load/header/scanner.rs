//! The C shape of a `jit_stencils.h`, line by line: where a function's
//! signature ends, runs of `//` comments, `const unsigned char X_body[N] =
//! { … };` initializers and the statements up to the closing `}`. What the
//! comments and statements *mean* is for `listing.rs` and `cexpr.rs`.
//!
//! Errors name `file:line`; nothing here panics on any input.

use super::cexpr::parse_number;
use crate::error::BadInput;
use crate::model::EmitOp;

/// Largest body length we accept (a real stencil is a few KiB; see `load::MAX_BODY`).
pub(super) const MAX_BODY: usize = crate::load::MAX_BODY;

/// `(line, text after // trimmed)`.
pub(super) type Comments<'a> = Vec<(usize, &'a str)>;

/// One `const unsigned char X_body[N] = { … };`.
#[derive(Clone, Debug)]
pub(super) struct Body {
    /// The declared `N`.
    pub len: usize,
    /// The listed bytes, zero-extended to `N` (3.14+ lists no trailing zeros).
    pub bytes: Vec<u8>,
}

pub(super) struct Scanner<'a> {
    pub file: &'a str,
    pub lines: Vec<&'a str>,
    /// Index of the next line to read (its 1-based number is `pos + 1`).
    pub pos: usize,
    /// 3.14+: preprocessor lines (`#if …`, `#define …`) may sit among the
    /// comments; skip them like blank lines.
    pub skip_preprocessor: bool,
}

impl<'a> Scanner<'a> {
    pub fn new(file: &'a str, text: &'a str) -> Scanner<'a> {
        Scanner { file, lines: text.lines().collect(), pos: 0, skip_preprocessor: false }
    }

    pub fn err(&self, line: usize, message: impl Into<String>) -> BadInput {
        BadInput::at_line(self.file, line, message)
    }

    /// Number of the last line: where a truncated file ended.
    pub fn last_line(&self) -> usize {
        self.lines.len().max(1)
    }

    pub fn peek(&self) -> Option<(usize, &'a str)> {
        self.lines.get(self.pos).map(|l| (self.pos + 1, *l))
    }

    pub fn next_line(&mut self) -> Option<(usize, &'a str)> {
        let line = self.peek();
        if line.is_some() {
            self.pos += 1;
        }
        line
    }

    pub fn truncated(&self, name: &str, start: usize) -> BadInput {
        self.err(self.last_line(), format!("truncated: emit_{name} (line {start}) ends without `}}`"))
    }

    pub fn peek_starts(&self, prefix: &str) -> bool {
        self.peek().is_some_and(|(_, l)| l.trim_start().starts_with(prefix))
    }

    /// `emit_NAME(` → `NAME` (checked: letters, digits and `_`).
    pub fn function_name(&self, start: usize, first: &'a str) -> Result<(&'a str, &'a str), BadInput> {
        let after = &first["emit_".len()..];
        let paren = after.find('(').ok_or_else(|| self.err(start, "expected `emit_NAME(`"))?;
        let name = &after[..paren];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(self.err(start, format!("bad emit function name `emit_{name}`")));
        }
        Ok((name, &after[paren + 1..]))
    }

    /// Consume the parameter list up to the line holding the opening `{`;
    /// returns the parameters' text (lines joined by spaces).
    pub fn signature(&mut self, name: &str, start: usize, rest: &'a str) -> Result<String, BadInput> {
        let (mut line_no, mut text) = (start, rest);
        let mut params = String::new();
        loop {
            let t = text.trim();
            if t == "{" {
                return Ok(params);
            }
            if let Some(before) = t.strip_suffix('{') {
                if !before.contains(['{', '}', ';']) {
                    params.push_str(before);
                    return Ok(params);
                }
            }
            if t.contains(['{', '}', ';']) || t.starts_with("//") || t.starts_with("emit_") {
                return Err(self.err(line_no, format!("malformed signature of emit_{name}: expected `{{`")));
            }
            params.push_str(t);
            params.push(' ');
            let Some((n, l)) = self.next_line() else {
                return Err(self.truncated(name, start));
            };
            (line_no, text) = (n, l);
        }
    }

    /// The run of `//` lines from here on (blank lines skipped), text after
    /// `//` trimmed.
    pub fn comments(&mut self) -> Comments<'a> {
        let mut out = Vec::new();
        while let Some((no, line)) = self.peek() {
            let t = line.trim();
            let skipped = t.is_empty() || (self.skip_preprocessor && t.starts_with('#'));
            if !skipped {
                let Some(c) = t.strip_prefix("//") else { break };
                out.push((no, c.trim()));
            }
            self.pos += 1;
        }
        out
    }

    /// `const unsigned char code_body[N] = { 0x.., … };` over one or more
    /// lines; the bytes zero-extended to `N`.
    pub fn body(&mut self, which: &str) -> Result<Body, BadInput> {
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
                let byte = parse_number(item).and_then(|v| u8::try_from(v).ok()).ok_or_else(|| {
                    self.err(text_no, format!("bad byte `{item}` in {which} (initializer not closed?)"))
                })?;
                if bytes.len() == n {
                    return Err(self.err(no, format!("{which}[{n}] lists more than {n} bytes")));
                }
                bytes.push(byte);
            }
            if let Some(after) = closed {
                if after.trim() != ";" {
                    return Err(self.err(text_no, format!("expected `;` after the {which} initializer")));
                }
                break;
            }
            let Some((n2, l)) = self.next_line() else {
                return Err(
                    self.err(self.last_line(), format!("truncated: the {which} initializer (line {no}) is not closed"))
                );
            };
            (text_no, text) = (n2, l);
        }
        bytes.resize(n, 0);
        Ok(Body { len: n, bytes })
    }

    /// The statements up to the function's closing `}`, each handed to
    /// `parse` as it is read (so its errors come in file order): `Ok(None)`
    /// skips the line.
    pub fn statements(
        &mut self,
        name: &str,
        start: usize,
        mut parse: impl FnMut(usize, &str) -> Result<Option<EmitOp>, String>,
    ) -> Result<Vec<EmitOp>, BadInput> {
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
                return Err(self.err(no, format!("emit_{name} (line {start}) is not closed: expected `}}`")));
            }
            if let Some(op) = parse(no, t).map_err(|m| self.err(no, m))? {
                ops.push(op);
            }
        }
    }
}
