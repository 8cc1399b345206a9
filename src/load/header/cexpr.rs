//! The C the emit functions are made of: numbers, `memcpy`s, `patch_*`
//! calls, their locations (`code + 0x13`) and values (`(uintptr_t)data +
//! -0x4`, `state->instruction_starts[instruction->jump_target]`,
//! `got_symbol_address(0x2, state) - 4`…). One grammar for every version;
//! the dialects decide which forms they allow.

use crate::model::{EmitOp, PatchCall, PatchFn, Section, Term, Value};

/// `0x1f`, `31`.
pub(crate) fn parse_number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        // Digits only: `from_str_radix` would also take a sign (`0x+5`).
        Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => u64::from_str_radix(hex, 16).ok(),
        Some(_) => None,
        None if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
        None => None,
    }
}

/// `-0x4`, `+0x10`, `0x8`: wraps like `uintptr_t` arithmetic does.
pub(crate) fn parse_signed(s: &str) -> Option<i64> {
    if let Some(v) = s.strip_prefix('-') {
        parse_number(v).map(|v| (v as i64).wrapping_neg())
    } else {
        parse_number(s.strip_prefix('+').unwrap_or(s)).map(|v| v as i64)
    }
}

/// `_JIT_OPARG-0x4` → (`_JIT_OPARG`, -4); `.rodata.str1.1+0x1b`; `_Py_Dealloc` → 0.
pub(crate) fn split_addend(s: &str) -> (&str, i64) {
    if let Some(i) = s.rfind(['+', '-']) {
        if i > 0 {
            if let Some(addend) = parse_signed(&s[i..]) {
                return (&s[..i], addend);
            }
        }
    }
    (s, 0)
}

pub(crate) fn is_symbol_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '$'))
}

// ---- statements ----------------------------------------------------------------

/// One statement of an emit body; errors are messages for `file:line`.
///
/// Besides `memcpy(data|code, …)` and `patch_F(location, value);` this reads
/// the 3.14+ calls that take CPython's `jit_state`:
/// `patch_got_symbol(state, 0xN);` (the trace GOT slot of ordinal N) and
/// `patch_aarch64_trampoline(code + 0x8, 0xN, state);` (likewise x86-64).
pub(crate) fn statement(t: &str, line: usize) -> Result<EmitOp, String> {
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
    let func = PatchFn::from_name(callee).ok_or_else(|| format!("unknown patch function `{callee}`"))?;
    let args = args
        .trim_end()
        .strip_suffix(';')
        .map(str::trim_end)
        .and_then(|a| a.strip_suffix(')'))
        .ok_or_else(|| format!("expected `);` at the end of `{t}`"))?;
    if func == PatchFn::GotSymbol {
        let parts = split_args(args);
        let [state, ordinal] = parts[..] else {
            return Err(format!("expected `{callee}(state, ORDINAL)` in `{t}`"));
        };
        if state != "state" {
            return Err(format!("expected `{callee}(state, ORDINAL)` in `{t}`"));
        }
        let n = ordinal_of(ordinal)?;
        let value = Value::new(Term::Ordinal(n), 0);
        return Ok(EmitOp::Patch(PatchCall { func, section: Section::Got, offset: n as u64, value, line }));
    }
    if func.takes_state() {
        let parts = split_args(args);
        let [location, ordinal, state] = parts[..] else {
            return Err(format!("expected `{callee}(location, ORDINAL, state)` in `{t}`"));
        };
        if state != "state" {
            return Err(format!("expected `{callee}(location, ORDINAL, state)` in `{t}`"));
        }
        let (section, offset) =
            location_of(location).ok_or_else(|| format!("cannot parse patch location `{location}`"))?;
        let value = Value::new(Term::Ordinal(ordinal_of(ordinal)?), 0);
        return Ok(EmitOp::Patch(PatchCall { func, section, offset, value, line }));
    }
    let (location, value_text) = args.split_once(',').ok_or_else(|| format!("expected `location, value` in `{t}`"))?;
    let (section, offset) =
        location_of(location).ok_or_else(|| format!("cannot parse patch location `{}`", location.trim()))?;
    let value_text = value_text.trim();
    let value = lex(value_text)
        .and_then(|tokens| value_of(&tokens))
        .ok_or_else(|| format!("cannot parse patch value `{value_text}`"))?;
    Ok(EmitOp::Patch(PatchCall { func, section, offset, value, line }))
}

/// Arguments split at the commas outside parentheses, trimmed.
fn split_args(args: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut from) = (0i32, 0);
    for (i, c) in args.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' if depth == 0 => {
                out.push(args[from..i].trim());
                from = i + 1;
            }
            _ => {}
        }
    }
    out.push(args[from..].trim());
    out
}

/// `0x2` as an ordinal of `symbols_map`.
fn ordinal_of(s: &str) -> Result<u32, String> {
    parse_number(s.trim())
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| format!("bad symbol ordinal `{}`", s.trim()))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tok<'a> {
    Ident(&'a str),
    Num(u64),
    Arrow,
    /// `>>`
    Shr,
    Punct(char),
}

/// Tokens of a C expression; `None` on a character we never expect.
pub(crate) fn lex(s: &str) -> Option<Vec<Tok<'_>>> {
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
        } else if c == b'>' && bytes.get(i + 1) == Some(&b'>') {
            out.push(Tok::Shr);
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
pub(crate) fn location_of(s: &str) -> Option<(Section, u64)> {
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

/// `operand`/`operand0` → 0, `operand1` → 1.
fn operand_index(field: &str) -> Option<u8> {
    match field {
        "operand" | "operand0" => Some(0),
        "operand1" => Some(1),
        _ => None,
    }
}

/// A patch value: terms joined by `+` (or `- N`), at most one of them
/// non-constant.
pub(crate) fn value_of(tokens: &[Tok<'_>]) -> Option<Value> {
    // An empty argument (`patch_64(code, )`) is no value, not zero.
    if tokens.is_empty() {
        return None;
    }
    let mut base: Option<Term> = None;
    let mut sizeof_code = false;
    let mut addend: i64 = 0;
    let mut rest = tokens;
    while !rest.is_empty() {
        let (term, after): (Option<Term>, &[Tok<'_>]) = match rest {
            [Tok::Punct('('), Tok::Ident("uintptr_t"), Tok::Punct(')'), Tok::Punct('&'), Tok::Ident(sym), r @ ..] => {
                (Some(Term::Symbol((*sym).to_string())), r)
            }
            [Tok::Punct('('), Tok::Ident("uintptr_t"), Tok::Punct(')'), Tok::Ident(name), r @ ..] => {
                let term = match *name {
                    "code" => Term::Code,
                    "data" => Term::Data,
                    "executor" => Term::Executor,
                    _ => return None,
                };
                (Some(term), r)
            }
            [Tok::Ident("sizeof"), Tok::Punct('('), Tok::Ident("code_body"), Tok::Punct(')'), r @ ..] => {
                if sizeof_code {
                    return None;
                }
                sizeof_code = true;
                (None, r)
            }
            // 32-bit targets split the 64-bit operand into two 32-bit holes:
            // `(instruction->operand & UINT32_MAX)`, `(instruction->operand >> 32)`.
            [Tok::Punct('('), Tok::Ident("instruction"), Tok::Arrow, Tok::Ident(field), Tok::Punct('&'), Tok::Ident("UINT32_MAX"), Tok::Punct(')'), r @ ..] => {
                (Some(Term::OperandLo(operand_index(field)?)), r)
            }
            [Tok::Punct('('), Tok::Ident("instruction"), Tok::Arrow, Tok::Ident(field), Tok::Shr, Tok::Num(32), Tok::Punct(')'), r @ ..] => {
                (Some(Term::OperandHi(operand_index(field)?)), r)
            }
            [Tok::Ident("instruction"), Tok::Arrow, Tok::Ident(field), r @ ..] => {
                let term = match *field {
                    "oparg" => Term::Oparg,
                    "operand" | "operand0" | "operand1" => Term::Operand(operand_index(field)?),
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
            // 3.14+: the trace GOT slot of an ordinal.
            [Tok::Ident("got_symbol_address"), Tok::Punct('('), Tok::Num(n), Tok::Punct(','), Tok::Ident("state"), Tok::Punct(')'), r @ ..] => {
                (Some(Term::GotSymbol(u32::try_from(*n).ok()?)), r)
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
            // `got_symbol_address(0x1, state) - 4`: the `- N` is the next term.
            [Tok::Punct('-'), Tok::Num(_), ..] => after,
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
mod tests {
    use super::{parse_number, split_args};

    #[test]
    fn arguments_split_only_at_top_level_commas() {
        assert_eq!(
            split_args("code + 0x2, (uintptr_t)&f(a, b) + 4, x[1, 2]"),
            ["code + 0x2", "(uintptr_t)&f(a, b) + 4", "x[1, 2]"]
        );
        // After a nested group closes, commas split again.
        assert_eq!(split_args("(a, b), c, (d)"), ["(a, b)", "c", "(d)"]);
    }

    #[test]
    fn a_number_is_hex_after_0x_or_plain_digits_and_nothing_else() {
        assert_eq!(parse_number("0x1f"), Some(31));
        assert_eq!(parse_number("0X1F"), Some(31));
        assert_eq!(parse_number("31"), Some(31));
        // What Rust's own parsers would take but C's literals are not.
        for bad in ["", "0x", "+5", "+0x5", "0x+5", "5 ", "-5", "1_000"] {
            assert_eq!(parse_number(bad), None, "{bad:?}");
        }
    }
}
