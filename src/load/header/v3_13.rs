//! The CPython 3.13 dialect.
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
//! 3.14 value spellings (`state->instruction_starts[…]`, `operand0/1`) are
//! accepted where they are cheap; the calls that need a `jit_state`
//! (`patch_got_symbol`, trampolines, `got_symbol_address`) are not.

use super::cexpr::statement;
use super::listing::{self, code_disassembly, drop_removed_jump};
use super::scanner::Scanner;
use super::{cross_check, target, Declared, TableScan};
use crate::error::BadInput;
use crate::model::{EmitOp, Stencil, StencilSet, Term};
use crate::target::Version;
use std::collections::HashMap;
use std::path::PathBuf;

pub(super) fn parse(file: &str, text: &str) -> Result<StencilSet, BadInput> {
    let mut sc = Scanner::new(file, text);
    let mut stencils: Vec<Stencil> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut table = TableScan::default();
    while let Some((no, line)) = sc.next_line() {
        if line.starts_with("emit_") {
            let stencil = function(&mut sc, no, line)?;
            if let Some(first) = seen.insert(stencil.name.clone(), no) {
                return Err(sc.err(no, format!("emit_{} defined twice (first at line {first})", stencil.name)));
            }
            stencils.push(stencil);
            continue;
        }
        let t = line.trim();
        if t.starts_with("//") {
            continue;
        }
        table.line(&sc, no, t)?;
    }
    let table_line = table.finish(&sc)?;
    let declared: Vec<Declared<'_>> = stencils
        .iter()
        .map(|s| Declared {
            name: &s.name,
            line: s.line,
            code_size: Some(s.code_size()),
            data_size: Some(s.data_size()),
        })
        .collect();
    cross_check(&sc, &declared, &table.entries, table_line)?;
    let target = target(&sc, &stencils, Version::V3_13)?;
    Ok(StencilSet { path: PathBuf::from(file), target, stencils, symbols_map: Vec::new() })
}

/// A 3.13 statement: no `jit_state` calls or values.
fn statement_3_13(no: usize, t: &str) -> Result<Option<EmitOp>, String> {
    let op = statement(t, no)?;
    if let EmitOp::Patch(p) = &op {
        if p.func.takes_state() || matches!(p.value.term, Term::GotSymbol(_)) {
            return Err(format!("`{t}` needs CPython 3.14+'s jit_state, but this header has 3.13 signatures"));
        }
    }
    Ok(Some(op))
}

fn function<'a>(sc: &mut Scanner<'a>, start: usize, first: &'a str) -> Result<Stencil, BadInput> {
    let (name, rest) = sc.function_name(start, first)?;
    sc.signature(name, start, rest)?;

    let mut code_comments = sc.comments();
    let (code, data_comments) = if sc.peek_starts("const unsigned char code_body") {
        let code = sc.body("code_body")?.bytes;
        (code, sc.comments())
    } else {
        // No code_body: the code is empty, so its disassembly ends with the
        // padding line `0:`; whatever follows belongs to the data.
        let Some((no, _)) = sc.peek() else {
            return Err(sc.truncated(name, start));
        };
        // (No comments at all is fine too: aarch64's 3.13.5 trampoline is empty.)
        let split = match code_comments.iter().position(|(_, c)| *c == "0:") {
            Some(i) => i + 1,
            None if code_comments.is_empty() => 0,
            None => {
                return Err(
                    sc.err(no, format!("emit_{name} has no code_body and its disassembly has no `0:` end line"))
                );
            }
        };
        let data_comments = code_comments.split_off(split);
        (Vec::new(), data_comments)
    };
    let data = if sc.peek_starts("const unsigned char data_body") { sc.body("data_body")?.bytes } else { Vec::new() };
    let emit = sc.statements(name, start, statement_3_13)?;

    let code_size = code.len() as u64;
    let mut disasm = code_disassembly(sc.file, &code_comments, Version::V3_13)?;
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
    let data_comments = listing::data_comments(sc.file, &data_comments, data.len() as u64)?;
    Ok(Stencil {
        name: name.to_string(),
        line: start,
        code,
        data,
        instructions: disasm.instructions,
        relocations: disasm.relocations,
        data_comments,
        emit,
        locals,
        ordinals: Default::default(),
        trampoline_mask: Vec::new(),
        got_mask: Vec::new(),
    })
}
