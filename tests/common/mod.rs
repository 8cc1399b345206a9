//! Builders shared by the stage tests: stencils are made by hand, field by
//! field, the way a loader would fill the model.
#![allow(dead_code)]

use iced_x86::{Decoder, DecoderOptions, Formatter, GasFormatter};
use stencilcheck::model::{
    DataComment, DataCommentKind, EmitOp, ObjdumpInstruction, PatchCall, PatchFn, RelocKind, Relocation, Section,
    Symbol, Term, Value,
};

/// A relocation line as objdump spells it (`_JIT_CONTINUE-0x4`), from header line `line`.
pub fn reloc_at(offset: u64, kind: RelocKind, symbol: &str, addend: i64, line: usize) -> Relocation {
    Relocation {
        offset,
        kind,
        symbol: Symbol::classify(symbol),
        addend,
        line,
        text: format!(
            "{offset:016x}:  {kind} {symbol}{}{:#x}",
            if addend < 0 { "-" } else { "+" },
            addend.unsigned_abs()
        ),
    }
}

pub fn reloc(offset: u64, kind: RelocKind, symbol: &str, addend: i64) -> Relocation {
    reloc_at(offset, kind, symbol, addend, 0)
}

pub fn hole_at(func: PatchFn, section: Section, offset: u64, term: Term, addend: i64, line: usize) -> EmitOp {
    EmitOp::Patch(PatchCall { func, section, offset, value: Value::new(term, addend), line })
}

pub fn hole(func: PatchFn, section: Section, offset: u64, term: Term, addend: i64) -> EmitOp {
    hole_at(func, section, offset, term, addend, 0)
}

pub fn slot_at(offset: u64, term: Term, line: usize) -> DataComment {
    DataComment { offset, kind: DataCommentKind::Slot(Value::new(term, 0)), line }
}

pub fn slot(offset: u64, term: Term) -> DataComment {
    slot_at(offset, term, 0)
}

/// The objdump listing of `code`, as the header would print it.
pub fn listing(code: &[u8]) -> Vec<ObjdumpInstruction> {
    let mut out = Vec::new();
    let mut d = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut f = GasFormatter::new();
    while d.can_decode() {
        let insn = d.decode();
        let at = insn.ip() as usize;
        let mut text = String::new();
        f.format(&insn, &mut text);
        out.push(ObjdumpInstruction { offset: at as u64, bytes: code[at..at + insn.len()].to_vec(), text, line: 0 });
    }
    out
}

/// CPython 3.13 x86-64 ELF: the target every hand-made stencil here is for.
pub const X86: stencilcheck::target::Target = stencilcheck::target::Target {
    arch: stencilcheck::target::Arch::X86_64,
    format: stencilcheck::target::ObjectFormat::Elf,
    version: stencilcheck::target::Version::V3_13,
};

/// `place::place` for [`X86`].
pub fn place(
    s: &stencilcheck::model::Stencil,
    seed: u64,
    index: u32,
) -> Result<stencilcheck::place::Placement, stencilcheck::error::BadInput> {
    stencilcheck::place::place(X86, s, seed, index)
}

/// `place::placements` for [`X86`].
pub fn placements(
    s: &stencilcheck::model::Stencil,
    seed: u64,
    count: u32,
) -> Result<Vec<stencilcheck::place::Placement>, stencilcheck::error::BadInput> {
    stencilcheck::place::placements(X86, s, seed, count)
}

/// Site observations on the patched image, without running ([`X86`]).
pub fn static_sites(
    s: &stencilcheck::model::Stencil,
    image: &stencilcheck::patch::Image,
) -> Vec<stencilcheck::execute::SiteObservation> {
    X86.info().static_sites(s, image)
}

pub const USER_MIN: u64 = stencilcheck::target::x86_64::USER_SPACE.start;
pub const USER_END: u64 = stencilcheck::target::x86_64::USER_SPACE.end;

/// Raw code, no holes: falls through to the continuation when it ends.
pub fn raw(name: &str, code: Vec<u8>) -> stencilcheck::model::Stencil {
    stencilcheck::model::Stencil {
        locals: Default::default(),
        ordinals: Default::default(),
        trampoline_mask: Vec::new(),
        got_mask: Vec::new(),
        name: name.into(),
        line: 1,
        instructions: listing(&code),
        code,
        data: vec![0; 8],
        relocations: vec![],
        data_comments: vec![],
        emit: vec![
            stencilcheck::model::EmitOp::CopyData { line: 0 },
            stencilcheck::model::EmitOp::CopyCode { line: 0 },
        ],
    }
}

/// A test that needs data this machine lacks (CPython's stencils or
/// source, a C compiler) says so instead of passing quietly: with
/// `STENCILCHECK_REQUIRE_REAL_DATA` set (`scripts/test.sh` sets it in CI,
/// after building that data) it fails; otherwise it prints `SKIPPED: why`
/// and, when `STENCILCHECK_SKIP_LOG` names a file, adds the line there
/// (`scripts/test.sh` prints the list after the tests).
pub fn skip(why: &str) {
    if std::env::var_os("STENCILCHECK_REQUIRE_REAL_DATA").is_some() {
        panic!("required data missing: {why}");
    }
    eprintln!("SKIPPED: {why}");
    if let Some(log) = std::env::var_os("STENCILCHECK_SKIP_LOG") {
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
            let _ = writeln!(f, "{}: {why}", std::thread::current().name().unwrap_or("?"));
        }
    }
}
