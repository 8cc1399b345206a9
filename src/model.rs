//! The small common model every stage shares: what a stencil is, what its
//! holes and relocations are, and what a run observed.
//!
//! Loaders (header today, objects later) produce [`StencilSet`]s; placement,
//! patching, execution and judging consume them. Nothing in here knows about a
//! file format or an emulator.

use serde::Serialize;
use std::fmt;
use std::path::PathBuf;

pub use crate::target::Arch;

/// Everything read from one input (a `jit_stencils.h`, later an object dir).
#[derive(Clone, Debug)]
pub struct StencilSet {
    pub path: PathBuf,
    /// Architecture × object format × CPython version: what every stage asks.
    pub target: crate::target::Target,
    /// In file order; the trampoline (or shim) is included under its own name.
    pub stencils: Vec<Stencil>,
    /// 3.14+: `symbols_map[]`, the symbol (or `None` for a `0` entry) of
    /// every ordinal trampolines and the per-trace GOT use. Empty for 3.13.
    pub symbols_map: Vec<Option<String>>,
}

impl StencilSet {
    pub fn arch(&self) -> Arch {
        self.target.arch
    }
}

/// One copy-and-patch template: code and data bytes, the holes CPython fills
/// (as `emit` operations, in their order) and the relocations objdump printed
/// (the oracle the judge checks against).
#[derive(Clone, Debug)]
pub struct Stencil {
    /// `_BINARY_OP`, `trampoline`, `shim`…: the name without `emit_`.
    pub name: String,
    /// 1-based line of the `emit_…(` line, for messages.
    pub line: usize,
    /// `code_body`, zero-extended to its declared length.
    pub code: Vec<u8>,
    /// `data_body`, zero-extended to its declared length.
    pub data: Vec<u8>,
    /// Instructions as objdump printed them (offset into code).
    pub instructions: Vec<ObjdumpInstruction>,
    /// Relocations as objdump printed them, in code: the oracle.
    pub relocations: Vec<Relocation>,
    /// The data-part comments (`18: CONTINUE`, `0: '...'`, `8: &sym+0x0`).
    pub data_comments: Vec<DataComment>,
    /// The emit function's body, in order: memcpy's and patch calls.
    pub emit: Vec<EmitOp>,
    /// Object-local symbols (`.L.str.3`, `.rodata.str1.1`) → offset in the
    /// data part. Only the object loader knows them; empty for headers.
    pub locals: std::collections::BTreeMap<String, u64>,
    /// 3.14+: the ordinals (into `symbols_map`) this stencil's holes use,
    /// with the symbol each stands for. Empty for 3.13.
    pub ordinals: std::collections::BTreeMap<u32, String>,
    /// 3.14+: the StencilGroup's `trampoline_mask` and `got_mask` (32-bit
    /// words, bit `n` for ordinal `n`). Empty for 3.13.
    pub trampoline_mask: Vec<u32>,
    pub got_mask: Vec<u32>,
}

impl Stencil {
    pub fn code_size(&self) -> u64 {
        self.code.len() as u64
    }
    pub fn data_size(&self) -> u64 {
        self.data.len() as u64
    }
    /// Patch calls, in emit order.
    pub fn holes(&self) -> impl Iterator<Item = &PatchCall> {
        self.emit.iter().filter_map(|op| match op {
            EmitOp::Patch(p) => Some(p),
            _ => None,
        })
    }
    /// Every symbol some relocation or hole names, deduplicated, in first-seen order.
    pub fn symbols(&self) -> Vec<Symbol> {
        let mut out: Vec<Symbol> = Vec::new();
        let from_relocs = self.relocations.iter().map(|r| r.symbol.clone());
        let from_holes = self.holes().filter_map(|h| match &h.value.term {
            Term::Symbol(name) => Some(Symbol::classify(name)),
            _ => None,
        });
        let from_ordinals = self.ordinals.values().map(|n| Symbol::classify(n));
        for s in from_relocs.chain(from_holes).chain(from_ordinals) {
            if !out.contains(&s) {
                out.push(s);
            }
        }
        out
    }
    /// The instruction objdump printed that contains code offset `offset`.
    pub fn instruction_at(&self, offset: u64) -> Option<&ObjdumpInstruction> {
        self.instructions.iter().find(|i| i.offset <= offset && offset < i.offset + i.bytes.len() as u64)
    }
    /// Length of the read-only data that leads the data part (strings, constants),
    /// i.e. everything before the first GOT-style slot comment.
    pub fn rodata_len(&self) -> u64 {
        self.data_comments
            .iter()
            .find(|c| !matches!(c.kind, DataCommentKind::Bytes))
            .map(|c| c.offset)
            .unwrap_or(self.data_size())
    }
}

/// One `// 9: 0f b7 05 00 00 00 00   movzwl (%rip), %eax` line.
#[derive(Clone, Debug)]
pub struct ObjdumpInstruction {
    pub offset: u64,
    pub bytes: Vec<u8>,
    /// The objdump text (mnemonic and operands), trailing `# …` comment removed.
    pub text: String,
    pub line: usize,
}

/// One relocation line, `// 000000000000000c:  R_X86_64_GOTPCREL    _JIT_OPARG-0x4`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relocation {
    /// Offset of the relocated field in the code (`P` minus the code address).
    pub offset: u64,
    pub kind: RelocKind,
    pub symbol: Symbol,
    pub addend: i64,
    /// Source line (header) or 0 when read from an object.
    pub line: usize,
    /// The line as objdump printed it, for reports.
    pub text: String,
}

/// Relocation types stencilcheck understands. Anything else is bad input.
/// Variants keep the ELF spelling so they grep like the objdump lines.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum RelocKind {
    X86_64_64,
    X86_64_32,
    X86_64_32S,
    X86_64_PC32,
    X86_64_PLT32,
    X86_64_GOTPCREL,
    X86_64_GOTPCRELX,
    X86_64_REX_GOTPCRELX,
    Aarch64_ABS64,
    Aarch64_ADR_GOT_PAGE,
    Aarch64_LD64_GOT_LO12_NC,
    Aarch64_ADR_PREL_PG_HI21,
    Aarch64_ADD_ABS_LO12_NC,
    Aarch64_LDST8_ABS_LO12_NC,
    Aarch64_LDST16_ABS_LO12_NC,
    Aarch64_LDST32_ABS_LO12_NC,
    Aarch64_LDST64_ABS_LO12_NC,
    Aarch64_LDST128_ABS_LO12_NC,
    Aarch64_JUMP26,
    Aarch64_CALL26,
    Aarch64_CONDBR19,
    Aarch64_MOVW_UABS_G0_NC,
    Aarch64_MOVW_UABS_G1_NC,
    Aarch64_MOVW_UABS_G2_NC,
    Aarch64_MOVW_UABS_G3,
    // Mach-O x86-64 (addends in the field).
    MachO_X86_64_BRANCH,
    MachO_X86_64_SIGNED,
    MachO_X86_64_GOT,
    MachO_X86_64_GOT_LOAD,
    MachO_X86_64_UNSIGNED,
    // COFF AMD64 (addends in the field); `_Import`: the symbol was `__imp_X`.
    Coff_AMD64_REL32,
    Coff_AMD64_REL32_Import,
    Coff_AMD64_ADDR64,
    // Mach-O arm64.
    MachO_ARM64_BRANCH26,
    MachO_ARM64_GOT_LOAD_PAGE21,
    MachO_ARM64_GOT_LOAD_PAGEOFF12,
    MachO_ARM64_PAGE21,
    MachO_ARM64_PAGEOFF12,
    MachO_ARM64_UNSIGNED,
    // COFF ARM64; `_Import`: the symbol was `__imp_X`.
    Coff_ARM64_BRANCH26,
    Coff_ARM64_BRANCH19,
    Coff_ARM64_PAGEBASE_REL21,
    Coff_ARM64_PAGEBASE_REL21_Import,
    Coff_ARM64_PAGEOFFSET_12A,
    Coff_ARM64_PAGEOFFSET_12L,
    Coff_ARM64_PAGEOFFSET_12L_Import,
    Coff_ARM64_ADDR64,
    // i686 (32-bit x86) COFF. Kept last, in a block of their own.
    I386_DIR32,
    I386_REL32,
}

impl RelocKind {
    /// Every kind with the name objdump (and ELF) uses for it.
    pub const ALL: &'static [(RelocKind, &'static str)] = &[
        (RelocKind::X86_64_64, "R_X86_64_64"),
        (RelocKind::X86_64_32, "R_X86_64_32"),
        (RelocKind::X86_64_32S, "R_X86_64_32S"),
        (RelocKind::X86_64_PC32, "R_X86_64_PC32"),
        (RelocKind::X86_64_PLT32, "R_X86_64_PLT32"),
        (RelocKind::X86_64_GOTPCREL, "R_X86_64_GOTPCREL"),
        (RelocKind::X86_64_GOTPCRELX, "R_X86_64_GOTPCRELX"),
        (RelocKind::X86_64_REX_GOTPCRELX, "R_X86_64_REX_GOTPCRELX"),
        (RelocKind::Aarch64_ABS64, "R_AARCH64_ABS64"),
        (RelocKind::Aarch64_ADR_GOT_PAGE, "R_AARCH64_ADR_GOT_PAGE"),
        (RelocKind::Aarch64_LD64_GOT_LO12_NC, "R_AARCH64_LD64_GOT_LO12_NC"),
        (RelocKind::Aarch64_ADR_PREL_PG_HI21, "R_AARCH64_ADR_PREL_PG_HI21"),
        (RelocKind::Aarch64_ADD_ABS_LO12_NC, "R_AARCH64_ADD_ABS_LO12_NC"),
        (RelocKind::Aarch64_LDST8_ABS_LO12_NC, "R_AARCH64_LDST8_ABS_LO12_NC"),
        (RelocKind::Aarch64_LDST16_ABS_LO12_NC, "R_AARCH64_LDST16_ABS_LO12_NC"),
        (RelocKind::Aarch64_LDST32_ABS_LO12_NC, "R_AARCH64_LDST32_ABS_LO12_NC"),
        (RelocKind::Aarch64_LDST64_ABS_LO12_NC, "R_AARCH64_LDST64_ABS_LO12_NC"),
        (RelocKind::Aarch64_LDST128_ABS_LO12_NC, "R_AARCH64_LDST128_ABS_LO12_NC"),
        (RelocKind::Aarch64_JUMP26, "R_AARCH64_JUMP26"),
        (RelocKind::Aarch64_CALL26, "R_AARCH64_CALL26"),
        (RelocKind::Aarch64_CONDBR19, "R_AARCH64_CONDBR19"),
        (RelocKind::Aarch64_MOVW_UABS_G0_NC, "R_AARCH64_MOVW_UABS_G0_NC"),
        (RelocKind::Aarch64_MOVW_UABS_G1_NC, "R_AARCH64_MOVW_UABS_G1_NC"),
        (RelocKind::Aarch64_MOVW_UABS_G2_NC, "R_AARCH64_MOVW_UABS_G2_NC"),
        (RelocKind::Aarch64_MOVW_UABS_G3, "R_AARCH64_MOVW_UABS_G3"),
        (RelocKind::MachO_X86_64_BRANCH, "X86_64_RELOC_BRANCH"),
        (RelocKind::MachO_X86_64_SIGNED, "X86_64_RELOC_SIGNED"),
        (RelocKind::MachO_X86_64_GOT, "X86_64_RELOC_GOT"),
        (RelocKind::MachO_X86_64_GOT_LOAD, "X86_64_RELOC_GOT_LOAD"),
        (RelocKind::MachO_X86_64_UNSIGNED, "X86_64_RELOC_UNSIGNED"),
        // The import variants share the name: `from_name` finds the plain one.
        (RelocKind::Coff_AMD64_REL32, "IMAGE_REL_AMD64_REL32"),
        (RelocKind::Coff_AMD64_REL32_Import, "IMAGE_REL_AMD64_REL32"),
        (RelocKind::Coff_AMD64_ADDR64, "IMAGE_REL_AMD64_ADDR64"),
        (RelocKind::MachO_ARM64_BRANCH26, "ARM64_RELOC_BRANCH26"),
        (RelocKind::MachO_ARM64_GOT_LOAD_PAGE21, "ARM64_RELOC_GOT_LOAD_PAGE21"),
        (RelocKind::MachO_ARM64_GOT_LOAD_PAGEOFF12, "ARM64_RELOC_GOT_LOAD_PAGEOFF12"),
        (RelocKind::MachO_ARM64_PAGE21, "ARM64_RELOC_PAGE21"),
        (RelocKind::MachO_ARM64_PAGEOFF12, "ARM64_RELOC_PAGEOFF12"),
        (RelocKind::MachO_ARM64_UNSIGNED, "ARM64_RELOC_UNSIGNED"),
        (RelocKind::Coff_ARM64_BRANCH26, "IMAGE_REL_ARM64_BRANCH26"),
        (RelocKind::Coff_ARM64_BRANCH19, "IMAGE_REL_ARM64_BRANCH19"),
        (RelocKind::Coff_ARM64_PAGEBASE_REL21, "IMAGE_REL_ARM64_PAGEBASE_REL21"),
        (RelocKind::Coff_ARM64_PAGEBASE_REL21_Import, "IMAGE_REL_ARM64_PAGEBASE_REL21"),
        (RelocKind::Coff_ARM64_PAGEOFFSET_12A, "IMAGE_REL_ARM64_PAGEOFFSET_12A"),
        (RelocKind::Coff_ARM64_PAGEOFFSET_12L, "IMAGE_REL_ARM64_PAGEOFFSET_12L"),
        (RelocKind::Coff_ARM64_PAGEOFFSET_12L_Import, "IMAGE_REL_ARM64_PAGEOFFSET_12L"),
        (RelocKind::Coff_ARM64_ADDR64, "IMAGE_REL_ARM64_ADDR64"),
        // i686 COFF.
        (RelocKind::I386_DIR32, "IMAGE_REL_I386_DIR32"),
        (RelocKind::I386_REL32, "IMAGE_REL_I386_REL32"),
    ];

    pub fn from_name(name: &str) -> Option<RelocKind> {
        Self::ALL.iter().find(|(_, n)| *n == name).map(|(k, _)| *k)
    }
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(k, _)| *k == self).map(|(_, n)| *n).unwrap()
    }
    /// Bytes of the relocated field (the target's table says).
    pub fn width(self) -> u64 {
        crate::target::reloc_info(self).width
    }
    /// The machine whose relocation this is (the target tables say).
    pub fn arch(self) -> Arch {
        crate::target::arch_of_reloc(self)
    }
}

impl fmt::Display for RelocKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a symbol name in a relocation stands for (DOMAIN.md §4).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "name")]
pub enum Symbol {
    /// `_JIT_ENTRY`: this stencil's own code address.
    Entry,
    /// `_JIT_CONTINUE`: `code + code_size`.
    Continue,
    JumpTarget,
    ErrorTarget,
    /// `_JIT_TOP`: `instruction_starts[1]`.
    Top,
    Executor,
    Oparg,
    /// `_JIT_OPERAND` (3.13) is operand 0; `_JIT_OPERAND0/1` in 3.14+.
    Operand(u8),
    /// 32-bit targets: the low and high 32 bits of an operand
    /// (`_JIT_OPERAND_LO`, `_JIT_OPERAND0_HI`…), since one 32-bit field
    /// cannot hold the 64-bit `operand`.
    OperandLo(u8),
    OperandHi(u8),
    Target,
    ExitIndex,
    /// A symbol local to the object (`.L.str.3`, `.rodata`…): lives in the stencil's data part.
    Local(String),
    /// Any other name: a C symbol of CPython (function or data).
    External(String),
}

impl Symbol {
    pub fn classify(name: &str) -> Symbol {
        match name {
            "_JIT_ENTRY" | "_ENTRY" => Symbol::Entry,
            "_JIT_CONTINUE" => Symbol::Continue,
            "_JIT_JUMP_TARGET" => Symbol::JumpTarget,
            "_JIT_ERROR_TARGET" => Symbol::ErrorTarget,
            "_JIT_TOP" => Symbol::Top,
            "_JIT_EXECUTOR" => Symbol::Executor,
            "_JIT_OPARG" => Symbol::Oparg,
            "_JIT_OPERAND" | "_JIT_OPERAND0" => Symbol::Operand(0),
            "_JIT_OPERAND1" => Symbol::Operand(1),
            "_JIT_OPERAND_LO" | "_JIT_OPERAND0_LO" => Symbol::OperandLo(0),
            "_JIT_OPERAND1_LO" => Symbol::OperandLo(1),
            "_JIT_OPERAND_HI" | "_JIT_OPERAND0_HI" => Symbol::OperandHi(0),
            "_JIT_OPERAND1_HI" => Symbol::OperandHi(1),
            "_JIT_TARGET" => Symbol::Target,
            "_JIT_EXIT_INDEX" => Symbol::ExitIndex,
            // COFF: the `.rdata` section symbol, and MSVC's mangled names of
            // string literals (`??_C@_0BN@…`), which the object defines itself.
            n if n.starts_with(".L")
                || n.starts_with(".rodata")
                || n.starts_with(".text")
                || n.starts_with(".rdata")
                || n.starts_with("??_C@") =>
            {
                Symbol::Local(n.to_string())
            }
            n => Symbol::External(n.to_string()),
        }
    }
    /// True for symbols whose placed value is an address control may go to.
    pub fn is_control_target(&self) -> bool {
        matches!(self, Symbol::Continue | Symbol::JumpTarget | Symbol::ErrorTarget | Symbol::Top | Symbol::External(_))
    }
}

impl fmt::Display for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Symbol::Entry => f.write_str("_JIT_ENTRY"),
            Symbol::Continue => f.write_str("_JIT_CONTINUE"),
            Symbol::JumpTarget => f.write_str("_JIT_JUMP_TARGET"),
            Symbol::ErrorTarget => f.write_str("_JIT_ERROR_TARGET"),
            Symbol::Top => f.write_str("_JIT_TOP"),
            Symbol::Executor => f.write_str("_JIT_EXECUTOR"),
            Symbol::Oparg => f.write_str("_JIT_OPARG"),
            Symbol::Operand(0) => f.write_str("_JIT_OPERAND"),
            Symbol::Operand(n) => write!(f, "_JIT_OPERAND{n}"),
            Symbol::OperandLo(0) => f.write_str("_JIT_OPERAND_LO"),
            Symbol::OperandLo(n) => write!(f, "_JIT_OPERAND{n}_LO"),
            Symbol::OperandHi(0) => f.write_str("_JIT_OPERAND_HI"),
            Symbol::OperandHi(n) => write!(f, "_JIT_OPERAND{n}_HI"),
            Symbol::Target => f.write_str("_JIT_TARGET"),
            Symbol::ExitIndex => f.write_str("_JIT_EXIT_INDEX"),
            Symbol::Local(n) | Symbol::External(n) => f.write_str(n),
        }
    }
}

/// A data-part comment: `// 18: CONTINUE`, `// 8: &_PyEval_BinaryOps+0x0`, `// 0: '...'`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataComment {
    pub offset: u64,
    pub kind: DataCommentKind,
    pub line: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataCommentKind {
    /// Read-only data copied in (a string, hex bytes, or nothing).
    Bytes,
    /// A slot CPython fills with a value (`CONTINUE`, `OPARG`, `&sym+0x10`…).
    Slot(Value),
}

/// One statement of an `emit_*` body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EmitOp {
    /// `memcpy(data, data_body, sizeof(data_body));`
    CopyData {
        line: usize,
    },
    /// `memcpy(code, code_body, sizeof(code_body));`
    CopyCode {
        line: usize,
    },
    Patch(PatchCall),
}

/// `patch_x86_64_32rx(code + 0x13, (uintptr_t)data + 0x4);`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatchCall {
    pub func: PatchFn,
    pub section: Section,
    pub offset: u64,
    pub value: Value,
    pub line: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Section {
    Code,
    Data,
    /// 3.14+: the trace's GOT. A patch call's `offset` there is the symbol's
    /// ordinal (`patch_got_symbol(state, 0x2)`); the slot's address is the
    /// placement's (`Placement::got_slot`), as the trace's GOT mask decides.
    Got,
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Section::Code => "code",
            Section::Data => "data",
            Section::Got => "state",
        })
    }
}

/// The patch functions of CPython's `Python/jit.c` (3.13 and later).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum PatchFn {
    P64,
    P32,
    P32r,
    X86_64_32rx,
    Aarch64_12,
    Aarch64_12x,
    Aarch64_16a,
    Aarch64_16b,
    Aarch64_16c,
    Aarch64_16d,
    Aarch64_21r,
    Aarch64_21rx,
    Aarch64_19r,
    Aarch64_26r,
    Aarch64_33rx,
    /// 3.14+ `patch_aarch64_trampoline(location, ordinal, state)`: a direct
    /// branch when in reach, else a veneer in the trace's trampolines.
    Aarch64_Trampoline,
    /// 3.14+ `patch_x86_64_trampoline(location, ordinal, state)` (Mach-O).
    X86_64_Trampoline,
    /// 3.14+ `patch_got_symbol(state, ordinal)`: the trace GOT slot of the
    /// ordinal gets the symbol's address.
    GotSymbol,
}

impl PatchFn {
    pub const ALL: &'static [(PatchFn, &'static str)] = &[
        (PatchFn::P64, "patch_64"),
        (PatchFn::P32, "patch_32"),
        (PatchFn::P32r, "patch_32r"),
        (PatchFn::X86_64_32rx, "patch_x86_64_32rx"),
        (PatchFn::Aarch64_12, "patch_aarch64_12"),
        (PatchFn::Aarch64_12x, "patch_aarch64_12x"),
        (PatchFn::Aarch64_16a, "patch_aarch64_16a"),
        (PatchFn::Aarch64_16b, "patch_aarch64_16b"),
        (PatchFn::Aarch64_16c, "patch_aarch64_16c"),
        (PatchFn::Aarch64_16d, "patch_aarch64_16d"),
        (PatchFn::Aarch64_21r, "patch_aarch64_21r"),
        (PatchFn::Aarch64_21rx, "patch_aarch64_21rx"),
        (PatchFn::Aarch64_19r, "patch_aarch64_19r"),
        (PatchFn::Aarch64_26r, "patch_aarch64_26r"),
        (PatchFn::Aarch64_33rx, "patch_aarch64_33rx"),
        (PatchFn::Aarch64_Trampoline, "patch_aarch64_trampoline"),
        (PatchFn::X86_64_Trampoline, "patch_x86_64_trampoline"),
        (PatchFn::GotSymbol, "patch_got_symbol"),
    ];
    pub fn from_name(name: &str) -> Option<PatchFn> {
        Self::ALL.iter().find(|(_, n)| *n == name).map(|(k, _)| *k)
    }
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(k, _)| *k == self).map(|(_, n)| *n).unwrap()
    }
    /// The machine a patch function belongs to; `None` for the portable ones
    /// (`patch_64`, `patch_32`). The target tables say.
    pub fn arch(self) -> Option<Arch> {
        crate::target::arch_of_patch_fn(self)
    }
    /// Bytes of the location the function may write (33rx writes two instructions).
    pub fn width(self) -> u64 {
        match self {
            PatchFn::P64 | PatchFn::Aarch64_33rx | PatchFn::GotSymbol => 8,
            _ => 4,
        }
    }
    /// Patches two instructions as one (and may relax them together).
    pub fn patches_pair(self) -> bool {
        self == PatchFn::Aarch64_33rx
    }
    /// Takes CPython's `jit_state *state` (3.14+): trampolines and the GOT.
    pub fn takes_state(self) -> bool {
        matches!(self, PatchFn::Aarch64_Trampoline | PatchFn::X86_64_Trampoline | PatchFn::GotSymbol)
    }
}

impl fmt::Display for PatchFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for PatchCall {
    /// As the header spells the call: `patch_32r(code + 0xc, (uintptr_t)data + -0x4)`,
    /// `patch_aarch64_trampoline(code + 0x8, 0x1, state)`, `patch_got_symbol(state, 0x2)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.func, self.section) {
            (_, Section::Got) => write!(f, "{}(state, {:#x})", self.func, self.offset),
            (func, section) if func.takes_state() => {
                write!(f, "{}({} + {:#x}, {}, state)", func, section, self.offset, self.value)
            }
            (func, section) => write!(f, "{}({} + {:#x}, {})", func, section, self.offset, self.value),
        }
    }
}

/// A patch value: a term plus a constant, e.g. `(uintptr_t)data + -0x4`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Value {
    pub term: Term,
    pub addend: i64,
}

impl Value {
    pub fn new(term: Term, addend: i64) -> Value {
        Value { term, addend }
    }
}

/// The variable part of a patch value (every form DOMAIN.md §2 lists).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Term {
    /// A plain number (`0x0` or an addend on its own).
    Zero,
    /// `(uintptr_t)code`
    Code,
    /// `(uintptr_t)data`
    Data,
    /// `(uintptr_t)code + sizeof(code_body)`: the continuation.
    Continue,
    /// `(uintptr_t)&SYMBOL`
    Symbol(String),
    /// `(uintptr_t)executor`
    Executor,
    /// `instruction_starts[instruction->jump_target]`
    JumpTarget,
    /// `instruction_starts[instruction->error_target]`
    ErrorTarget,
    /// `instruction_starts[1]`
    Top,
    /// `instruction->oparg`
    Oparg,
    /// `instruction->operand` (3.13) / `operand0`, `operand1`
    Operand(u8),
    /// `(instruction->operand & UINT32_MAX)`: 32-bit targets' low half.
    OperandLo(u8),
    /// `(instruction->operand >> 32)`: 32-bit targets' high half.
    OperandHi(u8),
    /// `instruction->target`
    Target,
    /// `instruction->exit_index`
    ExitIndex,
    /// 3.14+ `got_symbol_address(0xN, state)`: the address of ordinal N's
    /// slot in the trace's GOT.
    GotSymbol(u32),
    /// 3.14+: ordinal N of `symbols_map` as a patch argument (`0xN`); its
    /// value is the address of the symbol it stands for.
    Ordinal(u32),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.term {
            Term::Zero => return write!(f, "{}", hex_signed(self.addend)),
            Term::Code => f.write_str("(uintptr_t)code")?,
            Term::Data => f.write_str("(uintptr_t)data")?,
            Term::Continue => f.write_str("(uintptr_t)code + sizeof(code_body)")?,
            Term::Symbol(s) => write!(f, "(uintptr_t)&{s}")?,
            Term::Executor => f.write_str("(uintptr_t)executor")?,
            Term::JumpTarget => f.write_str("instruction_starts[instruction->jump_target]")?,
            Term::ErrorTarget => f.write_str("instruction_starts[instruction->error_target]")?,
            Term::Top => f.write_str("instruction_starts[1]")?,
            Term::Oparg => f.write_str("instruction->oparg")?,
            Term::Operand(0) => f.write_str("instruction->operand")?,
            Term::Operand(n) => write!(f, "instruction->operand{n}")?,
            Term::OperandLo(0) => f.write_str("(instruction->operand & UINT32_MAX)")?,
            Term::OperandLo(n) => write!(f, "(instruction->operand{n} & UINT32_MAX)")?,
            Term::OperandHi(0) => f.write_str("(instruction->operand >> 32)")?,
            Term::OperandHi(n) => write!(f, "(instruction->operand{n} >> 32)")?,
            Term::Target => f.write_str("instruction->target")?,
            Term::ExitIndex => f.write_str("instruction->exit_index")?,
            Term::GotSymbol(n) => write!(f, "got_symbol_address({n:#x}, state)")?,
            Term::Ordinal(n) => write!(f, "{n:#x}")?,
        }
        if self.addend != 0 {
            write!(f, " + {}", hex_signed(self.addend))?;
        }
        Ok(())
    }
}

/// `0x10`, `-0x4`: how CPython's header prints addends.
pub fn hex_signed(v: i64) -> String {
    if v < 0 {
        format!("-{:#x}", v.unsigned_abs())
    } else {
        format!("{v:#x}")
    }
}

/// The low `bits` bits of `v`: what an instruction that takes a field of
/// that width keeps of a value.
/// Bytes as objdump prints them: `48 8b 05`.
pub fn hex_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

pub fn truncate(v: u64, bits: u32) -> u64 {
    if bits >= 64 {
        v
    } else {
        v & ((1u64 << bits) - 1)
    }
}

/// What an instruction at a relocation site did with the relocated field,
/// as seen on the patched bytes (statically or while running).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Effect {
    /// Control went (or would go) to `target`: direct branch, or indirect
    /// through memory at `slot` (then `slot` is where the pointer was read).
    Transfer { target: u64, slot: Option<u64> },
    /// A value of `bits` bits was read from memory at `address`.
    Load { address: u64, value: u64, bits: u32 },
    /// An address was formed into a register (`lea`, `adrp`+`add`).
    Address { value: u64, bits: u32 },
    /// An immediate operand carried the value (`movabs`, `mov $imm32`).
    Immediate { value: u64, bits: u32 },
    /// The field is the displacement of a memory operand that also adds
    /// registers (`call [eax*4 + table]`): the relocation only says what the
    /// displacement holds; the registers are the run's.
    Displacement { value: u64, bits: u32 },
    /// Memory at `address` was the operand (a store or a read-modify-write):
    /// only the address can be judged.
    MemoryOperand { address: u64 },
    /// A relaxation rewrote the instruction into another kind (aarch64's
    /// `patch_aarch64_33rx`: `ldr` → `nop`/`movk`, `adrp` → `movz`/`ldr`
    /// literal): `value` is what the register the original instruction
    /// wrote holds after the new one ran. Judged as the pair's result.
    Formed { value: u64 },
}
