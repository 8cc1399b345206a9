//! Objects → stencils, independently of CPython's Python code.
//!
//! Each object format has a reader (`elf.rs`; Mach-O and COFF share
//! `reader.rs`) that produces a [`RawObject`]: the sections worth copying,
//! the symbols they define and the relocations against them, with explicit
//! addends (implicit ones already read from the bytes). [`build`] turns a
//! `RawObject` into a [`Stencil`] the way `_PyJIT_Compile` needs it:
//!
//! * **data part**: every read-only (non-code, allocated) section's bytes,
//!   concatenated in section order; then padding to 8; then one 8-byte slot
//!   per distinct symbol some GOT-style relocation names, in the order those
//!   relocations are first met (code sections first, in section order).
//! * **emit**: `CopyData` (left out when there is no data, as CPython's
//!   writer does), the data holes (GOT slots and relocations inside
//!   read-only data) by offset, `CopyCode` (left out when the code is
//!   empty, e.g. `_NOP`), the code holes by offset.
//! * **relocations** (the oracle): every relocation in code, exact addend.
//!
//! Deliberate transformations, the same as CPython 3.13's `Tools/jit`:
//! * x86-64: a final jump to `_JIT_CONTINUE` (ELF `jmp *…@GOTPCREL(%rip)`,
//!   `ff 25` + zeros; COFF `rex.W jmp *__imp__JIT_CONTINUE(%rip)`; Mach-O
//!   `jmp` rel32, `e9` + zeros; the very last bytes of the code) is dropped
//!   and the code shrinks by it: the next uop starts right there. The jump
//!   and its relocation leave the oracle too (as the header loader drops
//!   them from objdump's listing): nothing is left to check there.
//! * aarch64: a final ELF `b _JIT_CONTINUE` (`00 00 00 14`) is dropped
//!   likewise (CPython keeps Mach-O's), and code is padded to 8 bytes.
//! * aarch64: a `b`/`bl` (`CALL26`, `JUMP26`, `ARM64_RELOC_BRANCH26`) to a
//!   symbol that is no `_JIT_*` value gets CPython 3.13's inline veneer
//!   (`movz/movk x8` ×4, `br x8`, after padding to 8) and is rewritten to
//!   reach it; the veneer's `MOVW_UABS` relocations join the oracle (as
//!   CPython's listing has them) and the instruction listing keeps the
//!   branch's original word (as objdump printed it), so the judge sees a
//!   relocation CPython resolved in the body, like the header's. With a
//!   veneer, a final jump is not dropped (CPython only looks at the last
//!   hole, then a veneer's).
//!
//! Limit: `Stencil::locals` only holds symbols of the *data* part. A
//! relocation against a symbol defined in code other than `_JIT_ENTRY` (a
//! named static function, a `.text` section symbol; none in CPython 3.13)
//! gets the right hole (`(uintptr_t)code + offset`), but the judge cannot
//! place its S and falls back to "somewhere in the read-only data".
//!
//! Adjacent `ADR_GOT_PAGE`+`LD64_GOT_LO12_NC` holes of one slot are folded
//! into one `patch_aarch64_33rx`, as CPython's writer does.

use crate::error::BadInput;
use crate::model::{
    Arch, DataComment, DataCommentKind, EmitOp, ObjdumpInstruction, PatchCall, PatchFn, RelocKind, Relocation, Section,
    Stencil, Symbol, Term, Value,
};
use std::collections::BTreeMap;

/// What kind of bytes a section holds, as far as stencils care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawKind {
    Code,
    Data,
}

#[derive(Clone, Debug)]
pub struct RawSection {
    /// The format's own section index (relocations refer to it).
    pub index: usize,
    pub name: String,
    pub kind: RawKind,
    pub bytes: Vec<u8>,
    /// Symbols defined in this section: name → offset in the section.
    pub symbols: Vec<(String, u64)>,
    /// Mach-O: the section's address; its part is padded so that it lands
    /// at `address` − (bytes of the other part before it), as CPython lays
    /// Mach-O sections out. `None`: appended to its part.
    pub address: Option<u64>,
}

/// Where a relocation's symbol is defined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawTarget {
    /// Defined in a copied section (`index`) at `offset` in it.
    Defined { section: usize, offset: u64 },
    /// Undefined here: `_JIT_*` or an extern of CPython.
    Undefined,
}

#[derive(Clone, Debug)]
pub struct RawReloc {
    /// Index of the section the relocation patches.
    pub section: usize,
    /// Offset in that section.
    pub offset: u64,
    pub kind: RelocKind,
    /// The symbol's name (a section symbol is named after its section).
    pub symbol: String,
    pub target: RawTarget,
    pub addend: i64,
    /// How llvm-objdump prints the relocation's value (`_JIT_OPARG-0x4`;
    /// Mach-O `__JIT_OPARG@GOTPCREL`, COFF `__imp__JIT_OPARG`: no addend).
    pub printed: String,
}

/// The common intermediate every object reader produces.
#[derive(Clone, Debug)]
pub struct RawObject {
    pub arch: Arch,
    pub format: crate::target::ObjectFormat,
    /// Copied sections, in section order.
    pub sections: Vec<RawSection>,
    /// Relocations against copied sections, in file order.
    pub relocs: Vec<RawReloc>,
}

/// Section index → the part it landed in and its offset there.
type Bases = BTreeMap<usize, (RawKind, u64)>;

/// Where a copied section ended up: code or data part, and at which offset.
fn layout(raw: &RawObject) -> (Vec<u8>, Vec<u8>, Bases) {
    let (mut code, mut data) = (Vec::new(), Vec::new());
    let mut base = BTreeMap::new();
    for s in &raw.sections {
        let before = (code.len() + data.len()) as u64;
        let part = if s.kind == RawKind::Code { &mut code } else { &mut data };
        if let Some(gap) = s.address.and_then(|a| a.checked_sub(before)) {
            part.resize(part.len() + gap as usize, 0);
        }
        base.insert(s.index, (s.kind, part.len() as u64));
        part.extend_from_slice(&s.bytes);
    }
    (code, data, base)
}

/// The term a `_JIT_*` name stands for (`None` for any other name).
fn jit_term(name: &str) -> Option<Term> {
    Some(match Symbol::classify(name) {
        Symbol::Continue => Term::Continue,
        Symbol::JumpTarget => Term::JumpTarget,
        Symbol::ErrorTarget => Term::ErrorTarget,
        Symbol::Top => Term::Top,
        Symbol::Executor => Term::Executor,
        Symbol::Oparg => Term::Oparg,
        Symbol::Operand(n) => Term::Operand(n),
        Symbol::OperandLo(n) => Term::OperandLo(n),
        Symbol::OperandHi(n) => Term::OperandHi(n),
        Symbol::Target => Term::Target,
        Symbol::ExitIndex => Term::ExitIndex,
        Symbol::Entry => Term::Code,
        _ => return None,
    })
}

/// What the address of `r`'s symbol is at run time, as a patch value (no addend).
fn symbol_value(r: &RawReloc, base: &Bases) -> Value {
    match &r.target {
        RawTarget::Defined { section, offset } => match base.get(section) {
            Some((RawKind::Code, b)) => Value::new(Term::Code, (b + offset) as i64),
            Some((RawKind::Data, b)) => Value::new(Term::Data, (b + offset) as i64),
            None => Value::new(Term::Symbol(r.symbol.clone()), 0),
        },
        RawTarget::Undefined => match jit_term(&r.symbol) {
            Some(t) => Value::new(t, 0),
            None => Value::new(Term::Symbol(r.symbol.clone()), 0),
        },
    }
}

/// The patch function CPython's `Tools/jit` uses for a relocation kind.
pub fn patch_fn(kind: RelocKind) -> PatchFn {
    crate::target::reloc_info(kind).patch_fn
}

/// `_JIT_CONTINUE-0x4`, `.rodata.str1.1+0x2`, `_Py_Dealloc`: how objdump prints S+A.
pub fn symbol_text(symbol: &str, addend: i64) -> String {
    match addend {
        0 => symbol.to_string(),
        a if a < 0 => format!("{symbol}-{:#x}", a.unsigned_abs()),
        a => format!("{symbol}+{a:#x}"),
    }
}

/// A relocation line as llvm-objdump prints it (`printed`: its value).
pub fn relocation_text(offset: u64, kind: RelocKind, printed: &str) -> String {
    format!("{offset:016x}:  {:<20} {printed}", kind.name())
}

/// Index (in `holes`) of a final continuation jump that CPython drops, if the
/// code ends with it.
fn final_continue_jump(arch: Arch, code: &[u8], relocs: &[(u64, &RawReloc)]) -> Option<(usize, u64)> {
    let (i, (off, r)) = relocs.iter().enumerate().max_by_key(|(_, (off, _))| *off)?;
    if r.target != RawTarget::Undefined || r.symbol != "_JIT_CONTINUE" {
        return None;
    }
    let (start, jump): (u64, &[u8]) = match (arch, r.kind) {
        (Arch::X86_64, RelocKind::X86_64_GOTPCRELX) if r.addend == -4 => {
            (off.checked_sub(2)?, &[0xff, 0x25, 0, 0, 0, 0])
        }
        // COFF: `jmp *__imp__JIT_CONTINUE(%rip)` with a REX.W prefix.
        (Arch::X86_64, RelocKind::Coff_AMD64_REL32_Import) if r.addend == -4 => {
            (off.checked_sub(3)?, &[0x48, 0xff, 0x25, 0, 0, 0, 0])
        }
        // Mach-O x86-64 and i686 COFF: a direct `jmp _JIT_CONTINUE`.
        (Arch::X86_64, RelocKind::MachO_X86_64_BRANCH) | (Arch::I686, RelocKind::I386_REL32) if r.addend == -4 => {
            (off.checked_sub(1)?, &[0xe9, 0, 0, 0, 0])
        }
        // (ELF only: CPython 3.13 keeps Mach-O arm64's final `b`.)
        (Arch::Aarch64, RelocKind::Aarch64_JUMP26) if r.addend == 0 => (*off, &[0, 0, 0, 0x14]),
        _ => return None,
    };
    let align = if arch == Arch::Aarch64 { 8 } else { 1 };
    (code.get(start as usize..) == Some(jump) && start % align == 0).then_some((i, start))
}

/// Build the stencil `name` from `raw`.
pub fn build(name: &str, raw: &RawObject) -> Stencil {
    let (mut code, mut data, base) = layout(raw);
    // Relocations in code and in data, with their offsets in the part.
    let mut code_relocs: Vec<(u64, &RawReloc)> = Vec::new();
    let mut data_relocs: Vec<(u64, &RawReloc)> = Vec::new();
    for r in &raw.relocs {
        match base.get(&r.section) {
            Some((RawKind::Code, b)) => code_relocs.push((b + r.offset, r)),
            Some((RawKind::Data, b)) => data_relocs.push((b + r.offset, r)),
            None => {}
        }
    }
    let mut oracle: Vec<Relocation> = code_relocs
        .iter()
        .map(|(off, r)| Relocation {
            offset: *off,
            kind: r.kind,
            symbol: oracle_symbol(r),
            addend: r.addend.wrapping_add(section_address(raw, r) as i64),
            line: 0,
            text: relocation_text(*off, r.kind, &r.printed),
        })
        .collect();
    oracle.sort_by_key(|r| r.offset);

    let mut holes_in_code = code_relocs.clone();
    // The code as objdump lists it: branches rewritten to reach a veneer
    // keep their original words there.
    let mut listing = code.clone();
    let veneers = veneers(raw.arch, &mut code, &mut holes_in_code);
    for (at, original, _) in &veneers {
        listing[*at as usize..*at as usize + 4].copy_from_slice(original);
    }
    listing.extend_from_slice(&code[listing.len()..]);
    let mut veneer_holes = Vec::new();
    for (_, _, holes) in veneers {
        for (off, kind, r) in holes {
            oracle.push(Relocation {
                offset: off,
                kind,
                symbol: oracle_symbol(r),
                addend: r.addend,
                line: 0,
                text: relocation_text(off, kind, &r.symbol),
            });
            let v = symbol_value(r, &base);
            veneer_holes.push(PatchCall {
                func: patch_fn(kind),
                section: Section::Code,
                offset: off,
                value: Value::new(v.term, v.addend + r.addend),
                line: 0,
            });
        }
    }
    oracle.sort_by_key(|r| r.offset);
    if veneer_holes.is_empty() {
        if let Some((i, start)) = final_continue_jump(raw.arch, &code, &holes_in_code) {
            code.truncate(start as usize);
            listing.truncate(start as usize);
            let dropped = holes_in_code.remove(i).0;
            oracle.retain(|r| r.offset != dropped);
        }
    }
    if raw.arch == Arch::Aarch64 {
        code.resize(code.len().next_multiple_of(8), 0);
        listing.resize(code.len(), 0);
    }
    let rodata_len = data.len();
    data.resize(data.len().next_multiple_of(8), 0);

    // One slot per distinct GOT-referenced symbol, in first-met order.
    let mut got: Vec<(String, Value)> = Vec::new();
    let got_start = data.len() as u64;
    let mut slot_of = |r: &RawReloc| -> u64 {
        let pos = got.iter().position(|(n, _)| *n == r.symbol).unwrap_or_else(|| {
            got.push((r.symbol.clone(), symbol_value(r, &base)));
            got.len() - 1
        });
        got_start + 8 * pos as u64
    };
    let mut code_holes = Vec::new();
    let mut data_holes = Vec::new();
    for (list, section, out) in
        [(&holes_in_code, Section::Code, &mut code_holes), (&data_relocs, Section::Data, &mut data_holes)]
    {
        for (off, r) in list.iter() {
            let value = if crate::target::reloc_info(r.kind).expr.is_got() {
                Value::new(Term::Data, slot_of(r) as i64 + r.addend)
            } else {
                let v = symbol_value(r, &base);
                Value::new(v.term, v.addend + r.addend)
            };
            out.push(PatchCall { func: patch_fn(r.kind), section, offset: *off, value, line: 0 });
        }
    }
    let mut data_comments = Vec::new();
    if rodata_len > 0 {
        data_comments.push(DataComment { offset: 0, kind: DataCommentKind::Bytes, line: 0 });
    }
    // A relocation inside the read-only data (a pointer table, an
    // extern's address) is a slot there, as CPython's header lists it.
    for h in &data_holes {
        data_comments.push(DataComment { offset: h.offset, kind: DataCommentKind::Slot(h.value.clone()), line: 0 });
    }
    for (i, (_, value)) in got.iter().enumerate() {
        let offset = got_start + 8 * i as u64;
        data_holes.push(PatchCall {
            func: PatchFn::P64,
            section: Section::Data,
            offset,
            value: value.clone(),
            line: 0,
        });
        data_comments.push(DataComment { offset, kind: DataCommentKind::Slot(value.clone()), line: 0 });
        data.extend_from_slice(&[0; 8]);
    }
    code_holes.extend(veneer_holes);
    data_holes.sort_by_key(|h| h.offset);
    code_holes.sort_by_key(|h| h.offset);
    let code_holes = fold_got_pairs(code_holes);
    // Like CPython's writer: no memcpy of an empty body.
    let mut emit = Vec::new();
    if !data.is_empty() {
        emit.push(EmitOp::CopyData { line: 0 });
    }
    emit.extend(data_holes.into_iter().map(EmitOp::Patch));
    if !code.is_empty() {
        emit.push(EmitOp::CopyCode { line: 0 });
    }
    emit.extend(code_holes.into_iter().map(EmitOp::Patch));

    let mut locals = BTreeMap::new();
    for s in raw.sections.iter().filter(|s| s.kind == RawKind::Data) {
        let b = base[&s.index].1;
        // A section's name stands for object address 0 where sections land
        // by address (Mach-O): see `section_address`.
        locals.insert(s.name.clone(), b.wrapping_sub(s.address.unwrap_or(0)));
        for (n, o) in &s.symbols {
            locals.insert(n.clone(), b + o);
        }
    }
    Stencil {
        name: name.to_string(),
        line: 0,
        instructions: decode(raw.arch, &listing),
        code,
        data,
        relocations: oracle,
        data_comments,
        emit,
        locals,
        ordinals: Default::default(),
        trampoline_mask: Vec::new(),
        got_mask: Vec::new(),
    }
}

/// A veneer built for a far call: the branch's offset, its original word,
/// and the veneer's four `movz`/`movk` holes (offset, kind, the call's relocation).
type Veneer<'a> = (u64, [u8; 4], Vec<(u64, RelocKind, &'a RawReloc)>);

/// aarch64, as CPython 3.13's `Tools/jit` does: a `b`/`bl` to a symbol that
/// is no `_JIT_*` value (an extern of CPython, out of a 26-bit branch's
/// reach in general) goes through a veneer appended to the code (padded to
/// 8 first): `movz x8; movk x8 ×3` of the symbol's address, `br x8`; the
/// branch is rewritten to reach the veneer and its hole becomes the
/// veneer's four `patch_aarch64_16a..d` holes. In relocation order.
fn veneers<'a>(arch: Arch, code: &mut Vec<u8>, holes: &mut Vec<(u64, &'a RawReloc)>) -> Vec<Veneer<'a>> {
    const VENEER: [u32; 5] = [0xd280_0008, 0xf2a0_0008, 0xf2c0_0008, 0xf2e0_0008, 0xd61f_0100];
    const CHUNKS: [RelocKind; 4] = [
        RelocKind::Aarch64_MOVW_UABS_G0_NC,
        RelocKind::Aarch64_MOVW_UABS_G1_NC,
        RelocKind::Aarch64_MOVW_UABS_G2_NC,
        RelocKind::Aarch64_MOVW_UABS_G3,
    ];
    let mut out = Vec::new();
    if arch != Arch::Aarch64 {
        return out;
    }
    let far = |r: &RawReloc| {
        matches!(r.kind, RelocKind::Aarch64_CALL26 | RelocKind::Aarch64_JUMP26 | RelocKind::MachO_ARM64_BRANCH26)
            && jit_term(&r.symbol).is_none_or(|t| t == Term::Code)
    };
    let mut kept = Vec::with_capacity(holes.len());
    for (off, r) in holes.drain(..) {
        let at = off as usize;
        let Some(word) = code.get(at..at + 4).and_then(|w| <[u8; 4]>::try_from(w).ok()) else {
            kept.push((off, r));
            continue;
        };
        if !far(r) {
            kept.push((off, r));
            continue;
        }
        code.resize(code.len().next_multiple_of(8), 0);
        let base = code.len() as u64;
        let branch = (u32::from_le_bytes(word) & 0xfc00_0000) | (((base - off) >> 2) as u32 & 0x03ff_ffff);
        code[at..at + 4].copy_from_slice(&branch.to_le_bytes());
        for w in VENEER {
            code.extend_from_slice(&w.to_le_bytes());
        }
        out.push((off, word, CHUNKS.iter().enumerate().map(|(k, kind)| (base + 4 * k as u64, *kind, r)).collect()));
    }
    *holes = kept;
    out
}

/// Mach-O: a relocation against a section (`r_extern = 0`) names a place by
/// its object address, so the oracle's addend is that address (less the PC
/// bias) and the section's name stands for object address 0 in
/// `Stencil::locals`, as the header loader reads the same relocation line:
/// the two agree, and S + A is the same place as the hole's section offset.
/// 0 for every other relocation.
fn section_address(raw: &RawObject, r: &RawReloc) -> u64 {
    let RawTarget::Defined { section, .. } = r.target else { return 0 };
    raw.sections.iter().find(|s| s.index == section && s.name == r.symbol).and_then(|s| s.address).unwrap_or(0)
}

/// aarch64: an `adrp` (`patch_aarch64_21rx`) directly followed by the `ldr`
/// (`patch_aarch64_12x`) of the same GOT slot is one `patch_aarch64_33rx`,
/// which may relax the pair as a whole (as CPython's writer emits it).
fn fold_got_pairs(holes: Vec<PatchCall>) -> Vec<PatchCall> {
    let mut out: Vec<PatchCall> = Vec::with_capacity(holes.len());
    let mut it = holes.into_iter().peekable();
    while let Some(mut h) = it.next() {
        if let Some(next) = it.peek() {
            if h.func == PatchFn::Aarch64_21rx
                && next.func == PatchFn::Aarch64_12x
                && next.offset == h.offset + 4
                && next.value == h.value
            {
                h.func = PatchFn::Aarch64_33rx;
                it.next();
            }
        }
        out.push(h);
    }
    out
}

/// The oracle's symbol: `Symbol::classify`, except that a name defined in the
/// object's read-only data is local whatever it is called.
fn oracle_symbol(r: &RawReloc) -> Symbol {
    let s = Symbol::classify(&r.symbol);
    match (&r.target, s) {
        (RawTarget::Defined { .. }, Symbol::External(n)) if n != "_JIT_ENTRY" => Symbol::Local(n),
        (_, s) => s,
    }
}

/// Instructions of `code` (x86: iced-x86, AT&T like objdump; aarch64: one per 4 bytes).
pub fn decode(arch: Arch, code: &[u8]) -> Vec<ObjdumpInstruction> {
    match arch {
        Arch::X86_64 | Arch::I686 => {
            use iced_x86::{Decoder, DecoderOptions, Formatter, GasFormatter};
            let bits = if arch == Arch::I686 { 32 } else { 64 };
            let mut decoder = Decoder::with_ip(bits, code, 0, DecoderOptions::NONE);
            let mut fmt = GasFormatter::new();
            fmt.options_mut().set_gas_show_mnemonic_size_suffix(true);
            fmt.options_mut().set_space_after_operand_separator(true);
            fmt.options_mut().set_rip_relative_addresses(true);
            let mut out = Vec::new();
            while decoder.can_decode() {
                let insn = decoder.decode();
                let offset = insn.ip();
                let end = (offset as usize + insn.len()).min(code.len());
                let mut text = String::new();
                fmt.format(&insn, &mut text);
                out.push(ObjdumpInstruction { offset, bytes: code[offset as usize..end].to_vec(), text, line: 0 });
            }
            out
        }
        Arch::Aarch64 => code
            .chunks(4)
            .enumerate()
            .map(|(i, b)| ObjdumpInstruction { offset: 4 * i as u64, bytes: b.to_vec(), text: String::new(), line: 0 })
            .collect(),
    }
}

/// Errors share one shape: `path: section+offset: message`.
pub fn bad(path: &str, section: &str, offset: u64, msg: impl Into<String>) -> BadInput {
    BadInput::at_offset(path, section, offset, msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{elf, load_objects};
    use std::path::{Path, PathBuf};

    fn corpus_file(triple: &str, name: &str) -> (PathBuf, Vec<u8>) {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(triple).join(format!("{name}.o"));
        let bytes = std::fs::read(&p).expect("corpus object");
        (p, bytes)
    }

    fn x86(name: &str) -> Stencil {
        let (p, bytes) = corpus_file("x86_64-unknown-linux-gnu", name);
        load_objects(&p, &[(p.clone(), bytes)]).expect("loads").stencils.remove(0)
    }

    fn patch(func: PatchFn, section: Section, offset: u64, term: Term, addend: i64) -> EmitOp {
        EmitOp::Patch(PatchCall { func, section, offset, value: Value::new(term, addend), line: 0 })
    }

    #[test]
    fn object_load_oparg_drops_the_final_jump_and_gets_one_slot() {
        let s = x86("load_oparg");
        assert_eq!(s.name, "load_oparg");
        // movzwl (7) + movq (4) + addq (4); the 6-byte `jmp *_JIT_CONTINUE@GOTPCREL` is cut.
        assert_eq!(s.code.len(), 15);
        assert_eq!(s.data, vec![0; 8]);
        assert_eq!(
            s.emit,
            vec![
                EmitOp::CopyData { line: 0 },
                patch(PatchFn::P64, Section::Data, 0, Term::Oparg, 0),
                EmitOp::CopyCode { line: 0 },
                patch(PatchFn::P32r, Section::Code, 3, Term::Data, -4),
            ]
        );
        assert_eq!(s.relocations.len(), 1, "the cut jump's relocation goes with it");
        assert_eq!(s.relocations[0].kind, RelocKind::X86_64_GOTPCREL);
        assert_eq!(s.relocations[0].symbol, Symbol::Oparg);
        assert_eq!(s.relocations[0].addend, -4);
        assert_eq!(s.relocations[0].text, "0000000000000003:  R_X86_64_GOTPCREL    _JIT_OPARG-0x4");
        assert_eq!(s.instructions.len(), 3);
        assert_eq!(s.instructions[0].text, "movzwl (%rip), %eax");
        assert!(s.locals.is_empty());
        assert_eq!(s.rodata_len(), 0);
    }

    #[test]
    fn object_local_string_goes_first_then_slots_in_first_use_order() {
        let s = x86("pc32_string");
        let string = b"stencilcheck: a local string\0";
        assert_eq!(&s.data[..string.len()], string);
        assert_eq!(s.locals.get(".L.str"), Some(&0));
        // 29 bytes of string, padded to 32, then ext_message, _JIT_CONTINUE, _JIT_ERROR_TARGET.
        assert_eq!(s.data.len(), 32 + 3 * 8);
        assert_eq!(s.rodata_len(), 32);
        let data_patches: Vec<_> =
            s.holes().filter(|h| h.section == Section::Data).map(|h| (h.offset, h.value.term.clone())).collect();
        assert_eq!(
            data_patches,
            vec![(32, Term::Symbol("ext_message".into())), (40, Term::Continue), (48, Term::ErrorTarget)]
        );
        let lea = s.holes().find(|h| h.offset == 8).expect("hole at the lea");
        assert_eq!((lea.func, lea.value.clone()), (PatchFn::P32r, Value::new(Term::Data, -4)));
        let call = s.holes().find(|h| h.offset == 0xe).expect("hole at the call");
        assert_eq!((call.func, call.value.clone()), (PatchFn::X86_64_32rx, Value::new(Term::Data, 32 - 4)));
        assert_eq!(s.relocations[0].symbol, Symbol::Local(".L.str".into()));
        // The final jump goes to the error target, not the continuation: nothing is cut.
        assert_eq!(s.relocations.len(), 4);
        assert_eq!(s.code.len(), 0x25);
    }

    #[test]
    fn object_medium_model_absolute_holes_and_no_data() {
        let s = x86("medium_movabs");
        assert!(s.data.is_empty());
        assert_eq!(
            s.emit,
            vec![
                EmitOp::CopyCode { line: 0 },
                patch(PatchFn::P64, Section::Code, 2, Term::Oparg, 0),
                patch(PatchFn::P64, Section::Code, 0xf, Term::Symbol("ext_table".into()), 0),
                patch(PatchFn::P32r, Section::Code, 0x25, Term::Continue, -4),
            ]
        );
        assert_eq!(
            s.code.len(),
            0x29,
            "a jmp rel32 to _JIT_CONTINUE is not cut (CPython only cuts the GOT jump on ELF)"
        );
    }

    #[test]
    fn object_plt32_call_patches_the_extern_directly() {
        let s = x86("plt_call");
        let call = s.holes().find(|h| h.offset == 0xd).expect("hole at the call");
        assert_eq!((call.func, call.value.clone()), (PatchFn::P32r, Value::new(Term::Symbol("ext_hidden".into()), -4)));
        assert_eq!(s.relocations.iter().find(|r| r.offset == 0xd).map(|r| r.kind), Some(RelocKind::X86_64_PLT32));
    }

    #[test]
    fn object_local_symbols_resolve_in_placements() {
        let s = x86("pc32_string");
        let p = crate::place::place(crate::target::Target::elf(Arch::X86_64), &s, 7, 0).expect("placement");
        assert_eq!(p.symbol(&Symbol::Local(".L.str".into()), &s), Some(p.data));
        assert_eq!(p.symbol(&Symbol::Local(".L.nope".into()), &s), None);
    }

    #[test]
    fn object_aarch64_loads_with_got_pairs_and_page_relocations() {
        let (p, bytes) = corpus_file("aarch64-unknown-linux-gnu", "pc32_string");
        let set = load_objects(&p, &[(p.clone(), bytes)]).expect("aarch64 object loads");
        assert_eq!(set.arch(), Arch::Aarch64);
        let s = &set.stencils[0];
        assert_eq!(s.code.len() % 8, 0, "aarch64 code is padded to 8");
        let funcs: Vec<PatchFn> = s.holes().filter(|h| h.section == Section::Code).map(|h| h.func).collect();
        for f in [
            PatchFn::Aarch64_21rx,
            PatchFn::Aarch64_12x,
            PatchFn::Aarch64_21r,
            PatchFn::Aarch64_12,
            PatchFn::Aarch64_26r,
        ] {
            assert!(funcs.contains(&f), "{f} missing from {funcs:?}");
        }
        assert_eq!(s.locals.get(".rodata.str1.1"), Some(&0));
        let page = s.holes().find(|h| h.func == PatchFn::Aarch64_21r).expect("adrp of the string");
        assert_eq!(page.value, Value::new(Term::Data, 0));
    }

    #[test]
    fn object_aarch64_adjacent_got_pair_folds_into_33rx() {
        let (p, bytes) = corpus_file("aarch64-unknown-linux-gnu", "load_oparg");
        let s = load_objects(&p, &[(p.clone(), bytes)]).expect("loads").stencils.remove(0);
        let code: Vec<(PatchFn, u64)> =
            s.holes().filter(|h| h.section == Section::Code).map(|h| (h.func, h.offset)).collect();
        assert_eq!(code[0], (PatchFn::Aarch64_33rx, 0), "{code:?}");
        assert!(!code.iter().any(|(f, _)| *f == PatchFn::Aarch64_12x), "{code:?}");
        assert_eq!(s.relocations.len(), 2, "the oracle keeps both relocations");
        // Interleaved pairs (adrp, adrp, ldr, ldr) stay unfolded.
        let (p, bytes) = corpus_file("aarch64-unknown-linux-gnu", "medium_movabs");
        let s = load_objects(&p, &[(p.clone(), bytes)]).expect("loads").stencils.remove(0);
        assert!(!s.holes().any(|h| h.func == PatchFn::Aarch64_33rx));
    }

    /// Byte offset in the file of relocation `k` of `.rela.text`.
    fn rela_entry(bytes: &[u8], k: usize) -> usize {
        use object::{Object, ObjectSection};
        let file = object::File::parse(bytes).expect("parse");
        let rela = file.section_by_name(".rela.text").expect(".rela.text");
        rela.file_range().expect("in file").0 as usize + 24 * k
    }

    fn read(bytes: &[u8]) -> Result<RawObject, crate::error::BadInput> {
        elf::read("t.o", bytes)
    }

    #[test]
    fn object_bad_inputs_are_located_errors_not_panics() {
        let (_, good) = corpus_file("x86_64-unknown-linux-gnu", "load_oparg");
        assert!(read(&good).is_ok());

        let mut unknown = good.clone();
        let at = rela_entry(&unknown, 0) + 8; // r_info: low 32 bits are the type
        unknown[at..at + 4].copy_from_slice(&250u32.to_le_bytes());
        let e = read(&unknown).unwrap_err();
        assert_eq!(e.to_string(), "t.o: .text+0x3: unknown relocation type 250");

        let mut outside = good.clone();
        let at = rela_entry(&outside, 1);
        outside[at..at + 8].copy_from_slice(&0x1000u64.to_le_bytes());
        let e = read(&outside).unwrap_err();
        assert_eq!(e.to_string(), "t.o: .text+0x1000: R_X86_64_GOTPCRELX outside its section (0x15 bytes)");

        for cut in [10, 64, 200, good.len() / 2, good.len() - 1] {
            // Any prefix fails cleanly (or, if what is left still parses, loads).
            let _ = read(&good[..cut]);
        }
        let e = read(&good[..good.len() / 2]).unwrap_err();
        assert!(e.location.starts_with("t.o"), "{e}");
        let e = read(&good[..40]).unwrap_err();
        assert!(e.message.starts_with("bad ELF object"), "{e}");
    }

    /// The same object with its `.rela.text` rewritten as `SHT_REL`: each
    /// addend moved into the relocated field.
    fn as_rel(rela: &[u8]) -> Vec<u8> {
        use object::{Object, ObjectSection};
        let u16_at = |b: &[u8], o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap()) as usize;
        let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let file = object::File::parse(rela).unwrap();
        let text_off = file.section_by_name(".text").unwrap().file_range().unwrap().0 as usize;
        let sec = file.section_by_name(".rela.text").unwrap();
        let (start, size) = sec.file_range().unwrap();
        let shdr = u64_at(rela, 0x28) as usize + sec.index().0 * u16_at(rela, 0x3a);
        let mut b = rela.to_vec();
        let n = size as usize / 24;
        for k in 0..n {
            let e = start as usize + 24 * k;
            let (off, info, addend) = (u64_at(rela, e), u64_at(rela, e + 8), u64_at(rela, e + 16) as i64);
            let field = text_off + off as usize;
            if info as u32 == object::elf::R_X86_64_64 {
                b[field..field + 8].copy_from_slice(&addend.to_le_bytes());
            } else {
                b[field..field + 4].copy_from_slice(&(addend as i32).to_le_bytes());
            }
            let r = start as usize + 16 * k;
            b[r..r + 8].copy_from_slice(&off.to_le_bytes());
            b[r + 8..r + 16].copy_from_slice(&info.to_le_bytes());
        }
        b[shdr + 4..shdr + 8].copy_from_slice(&object::elf::SHT_REL.to_le_bytes());
        b[shdr + 32..shdr + 40].copy_from_slice(&(16 * n as u64).to_le_bytes());
        b[shdr + 56..shdr + 64].copy_from_slice(&16u64.to_le_bytes());
        b
    }

    #[test]
    fn object_implicit_addends_of_rel_sections_are_read_from_the_bytes() {
        for name in ["load_oparg", "pc32_string", "medium_movabs", "plt_call"] {
            let (_, rela) = corpus_file("x86_64-unknown-linux-gnu", name);
            let rel = as_rel(&rela);
            let (a, b) = (read(&rela).unwrap(), read(&rel).unwrap());
            let key = |o: &RawObject| -> Vec<(u64, RelocKind, String, i64)> {
                o.relocs.iter().map(|r| (r.offset, r.kind, r.symbol.clone(), r.addend)).collect()
            };
            assert!(!key(&a).is_empty());
            assert_eq!(key(&a), key(&b), "{name}");
            assert!(a.relocs.iter().any(|r| r.addend != 0), "{name}: a non-zero addend to move");
            let holes = |o: &RawObject| build(name, o).holes().cloned().collect::<Vec<_>>();
            assert_eq!(holes(&a), holes(&b), "{name}");
            assert_eq!(
                build(name, &a).code,
                build(name, &b).code,
                "{name}: implicit addends are cleared from the code"
            );
        }
    }

    /// Damaged objects never panic: every single-byte change of every corpus
    /// object either loads or is a located error.
    #[test]
    fn object_damaged_bytes_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        for triple in ["x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu"] {
            for name in ["load_oparg", "pc32_string", "medium_movabs", "trampoline"] {
                let (_, good) = corpus_file(triple, name);
                for _ in 0..1500 {
                    let mut b = good.clone();
                    let i = rng.gen_range(0..b.len());
                    b[i] = rng.gen();
                    if let Ok(raw) = read(&b) {
                        let _ = build(name, &raw);
                    }
                }
            }
        }
    }

    #[test]
    fn object_relocation_text_matches_objdump_spelling() {
        assert_eq!(symbol_text("_JIT_OPARG", -4), "_JIT_OPARG-0x4");
        assert_eq!(symbol_text(".rodata.str1.1", 0x1b), ".rodata.str1.1+0x1b");
        assert_eq!(symbol_text("_Py_Dealloc", 0), "_Py_Dealloc");
    }
}
