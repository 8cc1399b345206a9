//! The `//` comment lines of an emit function: llvm-objdump's listing of the
//! code (instructions `4: 90000008  adrp x8, …`, relocations
//! `0000000000000004:  R_AARCH64_ADR_GOT_PAGE sym`, labels, padding lines)
//! and CPython's listing of the data (`0: 'str'`, `18: CONTINUE`,
//! `8: &sym+0x0`).
//!
//! [`relocation_line`] is the one parser of a relocation line; the
//! `--cross-check-objdump` reader of `llvm-objdump -r` output uses it too.

use super::cexpr::{is_symbol_name, parse_signed, split_addend};
use super::scanner::Comments;
use crate::error::{BadInput, Refusal};
use crate::model::{DataComment, DataCommentKind, ObjdumpInstruction, RelocKind, Relocation, Symbol, Term, Value};
use crate::target::{Arch, ObjectFormat, Target, Version};

/// The fields of a relocation line, as printed: `OFFSET: TYPE TARGET` in a
/// header listing (`--disassemble --reloc`), `OFFSET TYPE TARGET` in
/// `llvm-objdump -r`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelocLine<'a> {
    pub offset: u64,
    /// The relocation type's name (`R_X86_64_PLT32`, `IMAGE_REL_AMD64_REL32`…).
    pub kind: &'a str,
    /// `symbol`, `symbol+0x8`, `symbol-0x4`: as printed.
    pub target: &'a str,
}

impl RelocLine<'_> {
    /// The target split into symbol name and addend.
    pub fn symbol_and_addend(&self) -> (&str, i64) {
        split_addend(self.target)
    }
}

/// `0000000000000004:  R_AARCH64_ADR_GOT_PAGE  sym` or
/// `0000000000000004 R_X86_64_PLT32 sym-0x4`: 1 to 16 hex digits, an
/// optional `:`, then exactly two fields. `None` for anything else.
pub fn relocation_line(line: &str) -> Option<RelocLine<'_>> {
    let line = line.trim();
    let end = line.find(|c: char| c == ':' || c.is_whitespace()).unwrap_or(line.len());
    let head = &line[..end];
    if head.is_empty() || head.len() > 16 || !head.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let rest = line[end..].strip_prefix(':').unwrap_or(&line[end..]);
    let mut fields = rest.split_whitespace();
    let (Some(kind), Some(target), None) = (fields.next(), fields.next(), fields.next()) else {
        return None;
    };
    Some(RelocLine { offset: u64::from_str_radix(head, 16).ok()?, kind, target })
}

/// Relocation types of the object formats stencilcheck does not read yet:
/// name prefix, machine (when it is one we know), format, for messages.
const FOREIGN: &[(&str, Option<Arch>, &str, ObjectFormat)] = &[
    ("X86_64_RELOC_", Some(Arch::X86_64), "x86_64", ObjectFormat::MachO),
    ("ARM64_RELOC_", Some(Arch::Aarch64), "aarch64", ObjectFormat::MachO),
    ("IMAGE_REL_AMD64_", Some(Arch::X86_64), "x86_64", ObjectFormat::Coff),
    ("IMAGE_REL_ARM64_", Some(Arch::Aarch64), "aarch64", ObjectFormat::Coff),
];

/// Why a relocation type name is refused: a typed "not supported" (exit 3)
/// for the Mach-O and COFF families, bad input ("unknown") for anything else.
fn refuse_kind(file: &str, line: usize, kind: &str, version: Version) -> BadInput {
    let unsupported =
        |message: String| BadInput { kind: Refusal::Unsupported, ..BadInput::at_line(file, line, message) };
    match FOREIGN.iter().find(|(prefix, ..)| kind.starts_with(prefix)) {
        Some((_, Some(arch), _, format)) => {
            unsupported(Target::new(*arch, *format, version).unsupported(format!("relocation {kind}")).to_string())
        }
        Some((_, None, machine, format)) => unsupported(format!(
            "relocation {kind} is not supported: {machine} {format} is not a target stencilcheck has"
        )),
        None => BadInput::at_line(file, line, format!("unknown relocation type `{kind}`")),
    }
}

/// What the code comments held.
pub(super) struct CodeDisassembly {
    pub instructions: Vec<ObjdumpInstruction>,
    pub relocations: Vec<Relocation>,
    /// Last padding line (`77:` or `194: 00 00 00 00`): line, offset, byte count.
    pub last_pad: Option<(usize, u64, u64)>,
}

/// True for the lines of objdump's preamble (`Disassembly of section`,
/// `file format`, blank) and labels: nothing to record.
fn is_preamble(c: &str) -> bool {
    c.is_empty() || c.starts_with("Disassembly of section") || c.contains("file format") || is_label(c)
}

/// `N:` heads: hex offset, up to 16 digits. Relocation lines have 16 (8 on
/// 32-bit targets); instruction and padding lines print the bare offset.
fn head_of(c: &str) -> Option<(&str, &str)> {
    let (head, tail) = c.split_once(':')?;
    (!head.is_empty() && head.len() <= 16 && head.bytes().all(|b| b.is_ascii_hexdigit())).then_some((head, tail))
}

/// True for a line of objdump's code listing that says something about the
/// code: an instruction (encoding and mnemonic), a relocation, a label or
/// preamble. Padding lines (`13: 00 00`) are not: they may be the data's.
pub(super) fn is_code_line(c: &str) -> bool {
    if is_preamble(c) {
        return true;
    }
    let Some((head, tail)) = head_of(c) else { return false };
    if head.len() == 16 || head.len() == 8 {
        return relocation_line(c).is_some();
    }
    let (bytes, _, text) = split_encoding(tail);
    !bytes.is_empty() && !text.is_empty()
}

pub(super) fn code_disassembly(
    file: &str,
    comments: &[(usize, &str)],
    version: Version,
) -> Result<CodeDisassembly, BadInput> {
    let err = |line: usize, m: String| BadInput::at_line(file, line, m);
    let mut out = CodeDisassembly { instructions: Vec::new(), relocations: Vec::new(), last_pad: None };
    for &(no, c) in comments {
        if is_preamble(c) {
            continue;
        }
        let unrecognized = || err(no, format!("unrecognized disassembly line `{c}`"));
        let (head, tail) = head_of(c).ok_or_else(unrecognized)?;
        let offset = u64::from_str_radix(head, 16).map_err(|_| unrecognized())?;
        // 16 digits on 64-bit targets; 8 on 32-bit ones (never an
        // instruction's offset: stencils are a few KiB).
        if head.len() == 16 || head.len() == 8 {
            out.relocations.push(relocation(file, no, c, version)?);
            continue;
        }
        let (bytes, words, text) = split_encoding(tail);
        if text.is_empty() {
            // A padding line from CPython's `pad()`: zero bytes, no mnemonic.
            if bytes.iter().any(|&b| b != 0) {
                return Err(err(
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

/// `000000000000000c:  R_X86_64_GOTPCREL    _JIT_OPARG-0x4` → a relocation.
fn relocation(file: &str, no: usize, c: &str, version: Version) -> Result<Relocation, BadInput> {
    let err = |m: String| BadInput::at_line(file, no, m);
    let r = relocation_line(c).ok_or_else(|| err(format!("malformed relocation line `{c}`")))?;
    let kind = RelocKind::from_name(r.kind).ok_or_else(|| refuse_kind(file, no, r.kind, version))?;
    let (name, addend) = r.symbol_and_addend();
    if name.is_empty() {
        return Err(err(format!("relocation without a symbol: `{c}`")));
    }
    let (kind, symbol) = crate::load::symbols::resolve(kind, name);
    Ok(Relocation { offset: r.offset, kind, symbol, addend, line: no, text: c.to_string() })
}

/// CPython cuts a final `jmp _JIT_CONTINUE` off the code (falling off the
/// end is the continuation) but 3.13 leaves it in the disassembly. Drop that
/// instruction and its relocation; anything else outside the code is bad.
/// Returns the code's size in the object (with the jump).
pub(super) fn drop_removed_jump(file: &str, name: &str, size: u64, d: &mut CodeDisassembly) -> Result<u64, BadInput> {
    let beyond: Vec<usize> =
        d.instructions.iter().enumerate().filter(|(_, i)| i.offset >= size).map(|(k, _)| k).collect();
    let mut removed: Option<(u64, u64)> = None;
    if let [k] = beyond[..] {
        let insn = &d.instructions[k];
        let end = insn.offset.saturating_add(insn.bytes.len() as u64);
        let inside = |r: &&Relocation| r.offset >= insn.offset && r.offset < end;
        let relocs: Vec<&Relocation> = d.relocations.iter().filter(inside).collect();
        if insn.offset == size && !relocs.is_empty() && relocs.iter().all(|r| r.symbol == Symbol::Continue) {
            removed = Some((insn.offset, end));
            d.instructions.remove(k);
        }
    }
    if let Some(insn) = d.instructions.iter().find(|i| i.offset.saturating_add(i.bytes.len() as u64) > size) {
        return Err(BadInput::at_line(
            file,
            insn.line,
            format!("instruction at {:#x} lies outside code_body of emit_{name} ({size} bytes)", insn.offset),
        ));
    }
    let mut object_size = size;
    if let Some((from, to)) = removed {
        d.relocations.retain(|r| !(r.offset >= from && r.offset < to));
        object_size = to;
    }
    if let Some(r) = d.relocations.iter().find(|r| r.offset.saturating_add(r.kind.width()) > size) {
        return Err(BadInput::at_line(
            file,
            r.line,
            format!("{} relocation at {:#x} lies outside code_body of emit_{name} ({size} bytes)", r.kind, r.offset),
        ));
    }
    Ok(object_size)
}

/// `0:`, `0: '…'`, `25: 00 00 00`, `18: CONTINUE`, `8: &_PyEval_BinaryOps+0x0`.
pub(super) fn data_comments(file: &str, comments: &Comments<'_>, size: u64) -> Result<Vec<DataComment>, BadInput> {
    let err = |line: usize, m: String| BadInput::at_line(file, line, m);
    let mut out = Vec::new();
    for &(no, c) in comments {
        if c.is_empty() {
            continue;
        }
        let unrecognized = || err(no, format!("unrecognized data comment `{c}`"));
        let (head, tail) = head_of(c).ok_or_else(unrecognized)?;
        let offset = u64::from_str_radix(head, 16).map_err(|_| unrecognized())?;
        let tail = tail.trim();
        let is_hex_bytes = tail.split_whitespace().all(|t| t.len() == 2 && t.bytes().all(|b| b.is_ascii_hexdigit()));
        let kind = if tail.starts_with('\'') || tail.starts_with('"') || is_hex_bytes {
            DataCommentKind::Bytes
        } else {
            DataCommentKind::Slot(slot_value(tail).ok_or_else(|| err(no, format!("cannot parse data slot `{tail}`")))?)
        };
        let need = if matches!(kind, DataCommentKind::Slot(_)) { 8 } else { 0 };
        if offset.saturating_add(need) > size {
            return Err(err(no, format!("data comment at {offset:#x} lies outside data_body ({size} bytes)")));
        }
        out.push(DataComment { offset, kind, line: no });
    }
    Ok(out)
}

/// `0000000000000000 <_JIT_ENTRY>:`
pub(crate) fn is_label(c: &str) -> bool {
    let Some(body) = c.strip_suffix(">:") else { return false };
    let Some((addr, _)) = body.split_once(" <") else { return false };
    !addr.is_empty() && addr.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Split an objdump instruction's tail into its encoding and the rest:
/// x86 prints bytes (`0f b7 05`), aarch64 little-endian 32-bit words
/// (`a9bb7bfd`). Returns (bytes, words?, text after the encoding).
pub(crate) fn split_encoding(tail: &str) -> (Vec<u8>, bool, &str) {
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

/// A GOT slot comment: `CONTINUE`, `OPARG`, `&_PyEval_BinaryOps+0x0`, and the
/// other spellings `_stencils.py` can produce (`DATA+0x10`, `0x8`).
pub(crate) fn slot_value(s: &str) -> Option<Value> {
    if let Some(sym) = s.strip_prefix('&') {
        let (name, addend) = split_addend(sym);
        return is_symbol_name(name).then(|| Value::new(Term::Symbol(name.to_string()), addend));
    }
    if s.starts_with(|c: char| c.is_ascii_uppercase()) {
        let end = s.find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')).unwrap_or(s.len());
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
