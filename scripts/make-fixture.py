#!/usr/bin/env python3
"""Build a jit_stencils.h-style header (CPython 3.13 or 3.14+ layout) from
hand-written assembly, for stencilcheck's test fixtures.

    python3 scripts/make-fixture.py tests/fixtures/asm -o tests/fixtures/good.h
    python3 scripts/make-fixture.py --variants tests/fixtures/good.h
    python3 scripts/make-fixture.py --layout 3.14 --triple x86_64-unknown-linux-gnu \
        tests/fixtures/asm-3.14/x86_64 -o tests/fixtures/3.14-x86_64/good.h
    python3 scripts/make-fixture.py --layout 3.14 --variants tests/fixtures/3.14-x86_64/good.h

The second form rewrites the deliberately wrong (and malformed) copies of
good.h next to it: each is good.h with ONE edit, named by a `// BUG:` line at
the top (see VARIANTS).

Every `NAME.s` in the directory becomes one stencil `emit_NAME` (`trampoline.s`
becomes the trampoline). Each file is assembled with llvm-mc, its relocations
and bytes are read straight out of the ELF object (a small reader below), and
llvm-objdump's `--disassemble --reloc` listing is pasted in as comments, so
bytes, offsets and comments always agree.

How the object turns into an emit function (the rules CPython 3.13 follows,
re-implemented here from their description, not from CPython's code):

* code = `.text`; if its last instruction is `jmp *_JIT_CONTINUE@GOTPCREL`,
  that jump is cut off (falling off the end is the continuation); its listing
  stays in the comments, the closing `N:` line gives the new size.
* data = the object's read-only sections (strings), padded to 8 bytes, then
  one 8-byte GOT slot per symbol that a GOT relocation names, in the order the
  code first names them.
* holes: GOTPCREL -> patch_32r, GOTPCRELX / REX_GOTPCRELX ->
  patch_x86_64_32rx, both on `(uintptr_t)data + slot + addend`; PC32 to a
  local read-only symbol -> patch_32r on `(uintptr_t)data + offset + addend`.
* the emit body copies data and patches its slots first, then copies code and
  patches its holes (relaxation reads the slots).

The 3.14+ layout (`--layout 3.14`, x86-64 or aarch64 ELF; see 3.14 RULES
below) differs: `jit_state *state` signatures, a `shim` instead of the
trampoline, a per-trace GOT for CPython symbols (`got_symbol_address` /
`patch_got_symbol` by ordinal), trampolines for aarch64 calls to externs,
masks in the StencilGroup table, `symbols_map`, trimmed and omitted bodies.
"""

import argparse
import hashlib
import os
import struct
import subprocess
import sys
import tempfile

MC = os.environ.get("LLVM_MC", "llvm-mc-19")
OBJDUMP = os.environ.get("LLVM_OBJDUMP", "llvm-objdump-19")
TRIPLE = "x86_64-unknown-linux-gnu"

R_X86_64 = {1: "R_X86_64_64", 2: "R_X86_64_PC32", 4: "R_X86_64_PLT32",
            9: "R_X86_64_GOTPCREL", 41: "R_X86_64_GOTPCRELX",
            42: "R_X86_64_REX_GOTPCRELX"}
GOT_KINDS = {"R_X86_64_GOTPCREL": "patch_32r",
             "R_X86_64_GOTPCRELX": "patch_x86_64_32rx",
             "R_X86_64_REX_GOTPCRELX": "patch_x86_64_32rx"}

# _JIT_* symbol -> (data comment, patch_64 value)
SPECIAL = {
    "_JIT_CONTINUE": ("CONTINUE", "(uintptr_t)code + sizeof(code_body)"),
    "_JIT_OPARG": ("OPARG", "instruction->oparg"),
    "_JIT_OPERAND": ("OPERAND", "instruction->operand"),
    "_JIT_TARGET": ("TARGET", "instruction->target"),
    "_JIT_EXECUTOR": ("EXECUTOR", "(uintptr_t)executor"),
    "_JIT_JUMP_TARGET": ("JUMP_TARGET", "instruction_starts[instruction->jump_target]"),
    "_JIT_ERROR_TARGET": ("ERROR_TARGET", "instruction_starts[instruction->error_target]"),
    "_JIT_TOP": ("TOP", "instruction_starts[1]"),
}

R_AARCH64 = {257: "R_AARCH64_ABS64", 264: "R_AARCH64_MOVW_UABS_G0_NC",
             266: "R_AARCH64_MOVW_UABS_G1_NC", 268: "R_AARCH64_MOVW_UABS_G2_NC",
             269: "R_AARCH64_MOVW_UABS_G3", 275: "R_AARCH64_ADR_PREL_PG_HI21",
             277: "R_AARCH64_ADD_ABS_LO12_NC", 280: "R_AARCH64_CONDBR19",
             282: "R_AARCH64_JUMP26", 283: "R_AARCH64_CALL26",
             311: "R_AARCH64_ADR_GOT_PAGE", 312: "R_AARCH64_LD64_GOT_LO12_NC"}
EM_X86_64, EM_AARCH64 = 62, 183

SHF_ALLOC, SHF_EXECINSTR = 0x2, 0x4
SHT_PROGBITS, SHT_SYMTAB, SHT_RELA = 1, 2, 4


def hexs(v):
    return f"-{-v:#x}" if v < 0 else f"{v:#x}"


class Elf:
    """Just enough of an ELF64 little-endian relocatable object."""

    def __init__(self, blob):
        if blob[:4] != b"\x7fELF" or blob[4] != 2 or blob[5] != 1:
            raise SystemExit("not an ELF64 little-endian object")
        self.blob = blob
        self.machine, = struct.unpack_from("<H", blob, 0x12)
        self.kinds = {EM_X86_64: R_X86_64, EM_AARCH64: R_AARCH64}.get(self.machine)
        if self.kinds is None:
            raise SystemExit(f"ELF machine {self.machine} not supported")
        shoff, = struct.unpack_from("<Q", blob, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", blob, 0x3A)
        self.sections = []
        for i in range(shnum):
            f = struct.unpack_from("<IIQQQQIIQQ", blob, shoff + i * shentsize)
            self.sections.append(dict(name_off=f[0], type=f[1], flags=f[2], offset=f[4],
                                      size=f[5], link=f[6], info=f[7], align=f[8], entsize=f[9]))
        names = self.sections[shstrndx]
        for s in self.sections:
            s["name"] = self.cstr(names["offset"] + s["name_off"])
        symtab = next(s for s in self.sections if s["type"] == SHT_SYMTAB)
        strtab = self.sections[symtab["link"]]
        self.symbols = []
        for i in range(symtab["size"] // 24):
            name, info, _other, shndx, value, _size = struct.unpack_from(
                "<IBBHQQ", blob, symtab["offset"] + i * 24)
            sym_name = self.cstr(strtab["offset"] + name)
            if info & 0xF == 3:  # STT_SECTION
                sym_name = self.sections[shndx]["name"]
            self.symbols.append(dict(name=sym_name, shndx=shndx, value=value))

    def cstr(self, at):
        return self.blob[at:self.blob.index(b"\0", at)].decode()

    def index(self, name):
        return next(i for i, s in enumerate(self.sections) if s["name"] == name)

    def data(self, i):
        s = self.sections[i]
        return self.blob[s["offset"]:s["offset"] + s["size"]]

    def relocations(self, target):
        out = []
        for s in self.sections:
            if s["type"] == SHT_RELA and s["info"] == target:
                for i in range(s["size"] // 24):
                    off, info, addend = struct.unpack_from("<QQq", self.blob, s["offset"] + i * 24)
                    kind = self.kinds.get(info & 0xFFFFFFFF)
                    if kind is None:
                        raise SystemExit(f"relocation type {info & 0xFFFFFFFF} not supported")
                    out.append((off, kind, self.symbols[info >> 32], addend))
        return sorted(out, key=lambda r: r[0])


def body(name, blob):
    lines = [f"    const unsigned char {name}[{len(blob)}] = {{"]
    for i in range(0, len(blob), 8):
        lines.append("        " + " ".join(f"0x{b:02x}," for b in blob[i:i + 8]))
    lines.append("    };")
    return lines


def stencil(name, asm, workdir):
    obj = os.path.join(workdir, f"{name}.o")
    subprocess.run([MC, f"--triple={TRIPLE}", "--filetype=obj", asm, "-o", obj], check=True)
    listing = subprocess.run([OBJDUMP, "--disassemble", "--reloc", f"{name}.o"], cwd=workdir,
                             check=True, capture_output=True, text=True).stdout
    elf = Elf(open(obj, "rb").read())
    text = elf.index(".text")
    code = bytearray(elf.data(text))
    relocs = elf.relocations(text)

    # The trailing jump to the continuation goes: falling off the end is the same.
    if (len(code) >= 6 and code[-6:-4] == b"\xff\x25" and relocs
            and relocs[-1][0] == len(code) - 4 and relocs[-1][2]["name"] == "_JIT_CONTINUE"
            and relocs[-1][3] == -4):
        del code[-6:]
        relocs = relocs[:-1]

    # Read-only data first, each section at its alignment.
    data = bytearray()
    data_comments = []
    where = {}
    for i, s in enumerate(elf.sections):
        if i == text or not s["flags"] & SHF_ALLOC or s["flags"] & SHF_EXECINSTR:
            continue
        if s["type"] != SHT_PROGBITS:
            raise SystemExit(f"{asm}: section {s['name']} not supported")
        data.extend(b"\0" * (-len(data) % max(s["align"], 1)))
        where[i] = len(data)
        data_comments.append(f"{len(data):x}: {repr(bytes(elf.data(i)))[1:]}")
        data.extend(elf.data(i))
    if not data:
        data_comments.append("0: ")
    elif len(data) % 8:
        pad = -len(data) % 8
        data_comments.append(f"{len(data):x}: " + " ".join(["00"] * pad))
        data.extend(b"\0" * pad)

    slots = {}  # symbol name -> data offset
    data_patches = []
    code_patches = []
    for off, kind, sym, addend in relocs:
        if kind in GOT_KINDS:
            if sym["name"] not in slots:
                slots[sym["name"]] = len(data)
                comment, value = SPECIAL.get(sym["name"], (f"&{sym['name']}+0x0",
                                                           f"(uintptr_t)&{sym['name']}"))
                data_comments.append(f"{len(data):x}: {comment}")
                data_patches.append(f"    patch_64(data + {len(data):#x}, {value});")
                data.extend(b"\0" * 8)
            func, at = GOT_KINDS[kind], slots[sym["name"]]
        elif kind == "R_X86_64_PC32" and sym["shndx"] in where:
            func, at = "patch_32r", where[sym["shndx"]] + sym["value"]
        else:
            raise SystemExit(f"{asm}: {kind} {sym['name']} not supported by this script")
        code_patches.append(f"    {func}(code + {off:#x}, (uintptr_t)data + {hexs(at + addend)});")

    out = [
        "void",
        f"emit_{name}(",
        "    unsigned char *code, unsigned char *data, _PyExecutorObject *executor,",
        "    const _PyUOpInstruction *instruction, uintptr_t instruction_starts[])",
        "{",
    ]
    out += [f"    // {line.expandtabs().strip()}" for line in listing.rstrip("\n").split("\n")]
    out.append(f"    // {len(code):x}: ")
    out += body("code_body", code)
    out += [f"    // {c}" for c in data_comments]
    if data:
        out += body("data_body", data)
        out.append("    memcpy(data, data_body, sizeof(data_body));")
    out += data_patches
    out.append("    memcpy(code, code_body, sizeof(code_body));")
    out += code_patches
    out.append("}")
    return out, len(code), len(data)


FOOTER = """typedef struct {
    void (*emit)(
        unsigned char *code, unsigned char *data, _PyExecutorObject *executor,
        const _PyUOpInstruction *instruction, uintptr_t instruction_starts[]);
    size_t code_size;
    size_t data_size;
} StencilGroup;
"""


# ---- the wrong copies of good.h --------------------------------------------


def function_span(text, name):
    """(start, end) of `emit_NAME(` ... its closing `}` line in `text`."""
    start = text.index(f"\nemit_{name}(\n") + 1
    end = text.index("\n}\n", start) + 3
    return start, end


def replace_in(name, old, new):
    def edit(text):
        a, b = function_span(text, name)
        fn = text[a:b]
        if fn.count(old) != 1:
            raise SystemExit(f"emit_{name}: `{old}` found {fn.count(old)} times")
        return text[:a] + fn.replace(old, new) + text[b:]
    return edit


def code_before_data(name):
    """Move memcpy(code) and the code patches in front of memcpy(data)."""
    def edit(text):
        a, b = function_span(text, name)
        fn = text[a:b]
        lines = fn.split("\n")
        d = lines.index("    memcpy(data, data_body, sizeof(data_body));")
        c = lines.index("    memcpy(code, code_body, sizeof(code_body));")
        close = lines.index("}")
        lines = lines[:d] + lines[c:close] + lines[d:c] + lines[close:]
        return text[:a] + "\n".join(lines) + text[b:]
    return edit


def truncate_after(name, needle):
    def edit(text):
        a, b = function_span(text, name)
        at = text.index(needle, a)
        return text[:text.index("\n", at) + 1]
    return edit


VARIANTS = [
    ("wrong-addend.h",
     "BUG: _FX_CALL_HELPER's call hole (code+0xe) has addend 0xc, not 0x4: it reads the CONTINUE slot (data+0x10) instead of &PyFx_Helper (data+0x8)",
     replace_in("_FX_CALL_HELPER", "patch_x86_64_32rx(code + 0xe, (uintptr_t)data + 0x4);",
                "patch_x86_64_32rx(code + 0xe, (uintptr_t)data + 0xc);")),
    ("swapped-targets.h",
     "BUG: _FX_GUARD_TYPE's JUMP_TARGET slot (data+0x20) gets error_target and its ERROR_TARGET slot (data+0x28) gets jump_target",
     replace_in("_FX_GUARD_TYPE",
                "patch_64(data + 0x20, instruction_starts[instruction->jump_target]);\n"
                "    patch_64(data + 0x28, instruction_starts[instruction->error_target]);",
                "patch_64(data + 0x20, instruction_starts[instruction->error_target]);\n"
                "    patch_64(data + 0x28, instruction_starts[instruction->jump_target]);")),
    ("code-before-data.h",
     "BUG: _FX_GUARD_TYPE copies and patches its code before its data, so patch_x86_64_32rx relaxes against stale GOT slots",
     code_before_data("_FX_GUARD_TYPE")),
    ("wrong-patch-function.h",
     "BUG: _FX_PUSH_ARGS patches its OPARG hole (code+0x4, R_X86_64_GOTPCREL) with patch_64 instead of patch_32r: an absolute 8-byte write into a 4-byte PC-relative field",
     replace_in("_FX_PUSH_ARGS", "patch_32r(code + 0x4, (uintptr_t)data + -0x4);",
                "patch_64(code + 0x4, (uintptr_t)data + -0x4);")),
    ("dropped-data-patch.h",
     "BUG: _FX_CALL_HELPER never fills its &PyFx_Helper slot (data+0x8): its patch_64 line is missing",
     replace_in("_FX_CALL_HELPER", "    patch_64(data + 0x8, (uintptr_t)&PyFx_Helper);\n", "")),
    ("wrong-offset.h",
     "BUG: _FX_PUSH_ARGS patches its OPERAND hole at code+0xc instead of code+0xb (one byte too far)",
     replace_in("_FX_PUSH_ARGS", "patch_x86_64_32rx(code + 0xb, (uintptr_t)data + 0x4);",
                "patch_x86_64_32rx(code + 0xc, (uintptr_t)data + 0x4);")),
    ("equivalent-rewrite.h",
     "NOT A BUG: _FX_FORMAT_ERROR patches its PyExc_FxError GOT load (code+0xf) with patch_32r instead of patch_x86_64_32rx: same slot, just never relaxed; still correct",
     replace_in("_FX_FORMAT_ERROR", "patch_x86_64_32rx(code + 0xf, (uintptr_t)data + 0x14);",
                "patch_32r(code + 0xf, (uintptr_t)data + 0x14);")),
    ("malformed-truncated.h",
     "BUG (bad input): the file ends in the middle of emit__FX_GUARD_TYPE, after its first code patch",
     truncate_after("_FX_GUARD_TYPE", "patch_x86_64_32rx(code + 0xc,")),
    ("malformed-unknown-patch.h",
     "BUG (bad input): _FX_GUARD_TYPE calls patch_x86_64_32rz, which jit.c does not have",
     replace_in("_FX_GUARD_TYPE", "patch_x86_64_32rx(code + 0x22,", "patch_x86_64_32rz(code + 0x22,")),
    ("malformed-garbage-expr.h",
     "BUG (bad input): a data patch value of _FX_GUARD_TYPE is not an expression the header format has (`>> 3`)",
     replace_in("_FX_GUARD_TYPE", "patch_64(data + 0x10, (uintptr_t)&PyFx_Check);",
                "patch_64(data + 0x10, (uintptr_t)&PyFx_Check >> 3);")),
]


def variants(good):
    text = open(good).read()
    for filename, bug, edit in VARIANTS:
        out = f"// {bug}\n" + edit(text)
        if out[len(bug) + 4:] == text:
            raise SystemExit(f"{filename}: the edit changed nothing")
        with open(os.path.join(os.path.dirname(good), filename), "w") as f:
            f.write(out)


# ---- the 3.14+ layout ---------------------------------------------------------
#
# 3.14 RULES (CPython 3.14+'s header as DOMAIN.md §3 describes it, written
# here from that description, not from CPython's code):
#
# * signatures end in `jit_state *state`; `shim.s` becomes `emit_shim` and
#   the `shim` StencilGroup; targets are `state->instruction_starts[...]`.
# * code = `.text`; a final jump to `_JIT_CONTINUE` (x86 `jmp rel32`/`jmp
#   *GOT`, aarch64 `b`) is cut off, and its listing lines with it. The
#   listing keeps labels, instructions and relocations (no preamble, no
#   closing `N:` line).
# * data = read-only sections, padded to 8 (a padding line only when there
#   is padding), then one 8-byte slot per `_JIT_*` symbol a GOT relocation
#   names (`N: OPARG`...), patched with `patch_64(data + N, value)`.
# * a GOT relocation to any other symbol (a CPython symbol) uses the trace's
#   GOT: the symbol gets an ordinal (first use across the file, stencils in
#   name order), the hole's value is `got_symbol_address(0xN, state)` (`- 4`
#   on x86), the data side gets `patch_got_symbol(state, 0xN);` and the
#   StencilGroup's got_mask bit N.
# * aarch64 CALL26/JUMP26 to a CPython symbol: `patch_aarch64_trampoline(
#   code + X, 0xN, state);` and trampoline_mask bit N.
# * other holes: `_JIT_*` values directly (`patch_64(code + X,
#   instruction->operand1)`, `patch_32r(code + X, state->...[...] + -0x4)`,
#   `patch_aarch64_16a..16d`, `_19r`, `_26r`); PC32 to read-only data on
#   `(uintptr_t)data + offset`.
# * aarch64 `adrp`+`ldr` pairs of one register with the same value fold into
#   `patch_aarch64_33rx`.
# * code holes sorted by offset; data first (`patch_got_symbol` calls, then
#   slots), then code. A body lists no trailing zero bytes; an all-zero body
#   is left out with its memcpy (sizes are in the table).

TRIPLES = {"x86_64-unknown-linux-gnu": EM_X86_64, "aarch64-unknown-linux-gnu": EM_AARCH64}

SPECIAL_314 = {
    "_JIT_CONTINUE": ("CONTINUE", "(uintptr_t)code + sizeof(code_body)"),
    "_JIT_OPARG": ("OPARG", "instruction->oparg"),
    "_JIT_OPERAND0": ("OPERAND0", "instruction->operand0"),
    "_JIT_OPERAND1": ("OPERAND1", "instruction->operand1"),
    "_JIT_TARGET": ("TARGET", "instruction->target"),
    "_JIT_EXECUTOR": ("EXECUTOR", "(uintptr_t)executor"),
    "_JIT_JUMP_TARGET": ("JUMP_TARGET", "state->instruction_starts[instruction->jump_target]"),
    "_JIT_ERROR_TARGET": ("ERROR_TARGET", "state->instruction_starts[instruction->error_target]"),
    "_JIT_TOP": ("TOP", "state->instruction_starts[1]"),
}

PATCH_314 = {
    "R_X86_64_64": "patch_64", "R_X86_64_PC32": "patch_32r", "R_X86_64_PLT32": "patch_32r",
    "R_X86_64_GOTPCREL": "patch_32r", "R_X86_64_GOTPCRELX": "patch_x86_64_32rx",
    "R_X86_64_REX_GOTPCRELX": "patch_x86_64_32rx",
    "R_AARCH64_ABS64": "patch_64", "R_AARCH64_ADR_GOT_PAGE": "patch_aarch64_21rx",
    "R_AARCH64_LD64_GOT_LO12_NC": "patch_aarch64_12x",
    "R_AARCH64_ADR_PREL_PG_HI21": "patch_aarch64_21r",
    "R_AARCH64_ADD_ABS_LO12_NC": "patch_aarch64_12", "R_AARCH64_CALL26": "patch_aarch64_26r",
    "R_AARCH64_JUMP26": "patch_aarch64_26r", "R_AARCH64_CONDBR19": "patch_aarch64_19r",
    "R_AARCH64_MOVW_UABS_G0_NC": "patch_aarch64_16a", "R_AARCH64_MOVW_UABS_G1_NC": "patch_aarch64_16b",
    "R_AARCH64_MOVW_UABS_G2_NC": "patch_aarch64_16c", "R_AARCH64_MOVW_UABS_G3": "patch_aarch64_16d",
}
GOT_314 = {"R_X86_64_GOTPCREL", "R_X86_64_GOTPCRELX", "R_X86_64_REX_GOTPCRELX",
           "R_AARCH64_ADR_GOT_PAGE", "R_AARCH64_LD64_GOT_LO12_NC"}

SIGNATURE_314 = [
    "    unsigned char *code, unsigned char *data, _PyExecutorObject *executor,",
    "    const _PyUOpInstruction *instruction, jit_state *state)",
]


def body_314(name, blob):
    """The initializer of a 3.14+ body: its full size, no trailing zeros."""
    stripped = bytes(blob).rstrip(b"\0")
    lines = [f"    const unsigned char {name}[{len(blob)}] = {{"]
    for i in range(0, len(stripped), 8):
        lines.append("        " + " ".join(f"0x{b:02x}," for b in stripped[i:i + 8]))
    lines.append("    };")
    return lines


def listing_314(listing, code_size):
    """objdump's listing without its preamble, cut at the code's end."""
    out = []
    for line in listing.rstrip("\n").split("\n"):
        line = line.expandtabs().strip()
        if not line or "file format" in line or line.startswith("Disassembly of section"):
            continue
        head = line.split(":", 1)[0]
        if head and all(c in "0123456789abcdef" for c in head) and int(head, 16) >= code_size:
            continue  # the removed jump and its relocation
        out.append(line)
    return out


def mask(ordinals):
    bits = sum(1 << n for n in ordinals)
    words = []
    while bits:
        words.append(f"{bits & 0xFFFFFFFF:#04x}")
        bits >>= 32
    return "{" + (", ".join(words) or "0") + "}"


def value_314(sym, addend):
    value = SPECIAL_314[sym][1]
    return f"{value} + {hexs(addend)}" if addend else value


def stencil_314(name, asm, workdir, triple, ordinals):
    """One emit function; `ordinals` (symbol -> ordinal) grows as symbols are met."""
    obj = os.path.join(workdir, f"{name}.o")
    subprocess.run([MC, f"--triple={triple}", "--filetype=obj", asm, "-o", obj], check=True)
    listing = subprocess.run([OBJDUMP, "--disassemble", "--reloc", f"{name}.o"], cwd=workdir,
                             check=True, capture_output=True, text=True).stdout
    elf = Elf(open(obj, "rb").read())
    if elf.machine != TRIPLES[triple]:
        raise SystemExit(f"{asm}: assembled for machine {elf.machine}")
    x86 = elf.machine == EM_X86_64
    text = elf.index(".text")
    code = bytearray(elf.data(text))
    relocs = elf.relocations(text)

    if relocs and relocs[-1][2]["name"] == "_JIT_CONTINUE":
        off, kind, _, addend = relocs[-1]
        for start, jump, k, a in [(off - 1, b"\xe9\0\0\0\0", "R_X86_64_PLT32", -4),
                                  (off - 2, b"\xff\x25\0\0\0\0", "R_X86_64_GOTPCRELX", -4),
                                  (off, b"\0\0\0\x14", "R_AARCH64_JUMP26", 0)]:
            if kind == k and addend == a and bytes(code[start:]) == jump:
                del code[start:]
                relocs = relocs[:-1]
                break

    data = bytearray()
    data_comments = []
    where = {}
    for i, sec in enumerate(elf.sections):
        if i == text or not sec["flags"] & SHF_ALLOC or sec["flags"] & SHF_EXECINSTR:
            continue
        if sec["type"] != SHT_PROGBITS:
            raise SystemExit(f"{asm}: section {sec['name']} not supported")
        data.extend(b"\0" * (-len(data) % max(sec["align"], 1)))
        where[i] = len(data)
        data_comments.append(f"{len(data):x}: {repr(bytes(elf.data(i)))[1:]}")
        data.extend(elf.data(i))
    if len(data) % 8:
        pad = -len(data) % 8
        data_comments.append(f"{len(data):x}: " + " ".join(["00"] * pad))
        data.extend(b"\0" * pad)

    slots = {}          # _JIT_* symbol -> data offset
    slot_patches = []
    got = []            # ordinals of this stencil's trace-GOT entries, first use first
    trampolines = set()
    holes = []          # (offset, func, value)
    for off, kind, sym, addend in relocs:
        s = sym["name"]
        func = PATCH_314[kind]
        if kind in GOT_314 and s in SPECIAL_314:
            if s not in slots:
                slots[s] = len(data)
                data_comments.append(f"{len(data):x}: {SPECIAL_314[s][0]}")
                slot_patches.append(f"    patch_64(data + {len(data):#x}, {SPECIAL_314[s][1]});")
                data.extend(b"\0" * 8)
            value = f"(uintptr_t)data + {hexs(slots[s] + addend)}" if slots[s] + addend else "(uintptr_t)data"
        elif kind in GOT_314:
            n = ordinals.setdefault(s, len(ordinals))
            if n not in got:
                got.append(n)
            if x86:
                if addend != -4:
                    raise SystemExit(f"{asm}: {kind} {s}{hexs(addend)}: x86 GOT addends are -4")
                value = f"got_symbol_address({n:#x}, state) - 4"
            else:
                value = f"got_symbol_address({n:#x}, state)"
        elif kind in ("R_AARCH64_CALL26", "R_AARCH64_JUMP26") and s not in SPECIAL_314:
            n = ordinals.setdefault(s, len(ordinals))
            trampolines.add(n)
            holes.append((off, "patch_aarch64_trampoline", f"{n:#x}", True))
            continue
        elif s in SPECIAL_314:
            value = value_314(s, addend)
        elif kind in ("R_X86_64_PC32", "R_X86_64_PLT32") and sym["shndx"] in where:
            value = f"(uintptr_t)data + {hexs(where[sym['shndx']] + sym['value'] + addend)}"
        else:
            raise SystemExit(f"{asm}: {kind} {s} not supported by this script")
        holes.append((off, func, value, False))

    # adrp+ldr of one register, same value: one patch_aarch64_33rx.
    folded = []
    i = 0
    while i < len(holes):
        off, func, value, state = holes[i]
        if (i + 1 < len(holes) and func == "patch_aarch64_21rx" and holes[i + 1][1] == "patch_aarch64_12x"
                and holes[i + 1][0] == off + 4 and holes[i + 1][2] == value):
            a = int.from_bytes(code[off:off + 4], "little")
            b = int.from_bytes(code[off + 4:off + 8], "little")
            if a & 31 == b & 31 == (b >> 5) & 31:
                folded.append((off, "patch_aarch64_33rx", value, False))
                i += 2
                continue
        folded.append(holes[i])
        i += 1

    out = ["void", f"emit_{name}("] + SIGNATURE_314 + ["{"]
    out += [f"    // {line}" for line in listing_314(listing, len(code))]
    if any(code):
        out += body_314("code_body", code)
    out += [f"    // {c}" for c in data_comments]
    if any(data):
        out += body_314("data_body", data)
        out.append("    memcpy(data, data_body, sizeof(data_body));")
    out += [f"    patch_got_symbol(state, {n:#x});" for n in got]
    out += slot_patches
    if any(code):
        out.append("    memcpy(code, code_body, sizeof(code_body));")
    for off, func, value, state in sorted(folded):
        out.append(f"    {func}(code + {off:#x}, {value}, state);" if state else f"    {func}(code + {off:#x}, {value});")
    out.append("}")
    return out, len(code), len(data), trampolines, set(got)


FOOTER_314 = """static_assert(SYMBOL_MASK_WORDS >= {words}, "SYMBOL_MASK_WORDS too small");

typedef struct {{
    void (*emit)(
        unsigned char *code, unsigned char *data, _PyExecutorObject *executor,
        const _PyUOpInstruction *instruction, jit_state *state);
    size_t code_size;
    size_t data_size;
    symbol_mask trampoline_mask;
    symbol_mask got_mask;
}} StencilGroup;
"""

# After symbols_map, a preprocessor block around made-up shim data, shaped
# like the `_Py_JIT_HAS_SHIM_CFI` block of newer headers (which readers skip).
CFI_BLOCK = """#define _Py_JIT_HAS_SHIM_CFI 1
#if _Py_JIT_HAS_SHIM_CFI
static const unsigned char shim_cfi[] = {
    0x10, 0x00, 0x00, 0x00,
};
#endif
"""


def build_314(asm_dir, output, triple):
    names = sorted(f[:-2] for f in os.listdir(asm_dir) if f.endswith(".s"))
    uops = [n for n in names if n != "shim"]
    if "shim" not in names:
        raise SystemExit(f"{asm_dir}: no shim.s")
    x86 = TRIPLES[triple] == EM_X86_64
    ordinals = {}
    functions, groups = [], {}
    with tempfile.TemporaryDirectory() as work:
        for n in ["shim"] + uops:
            fn, code_size, data_size, tramp, got = stencil_314(n, os.path.join(asm_dir, n + ".s"), work,
                                                               triple, ordinals)
            functions += fn + [""]
            groups[n] = f"{code_size}, {data_size}, {mask(tramp)}, {mask(got)}"
    sources = b"".join(open(os.path.join(asm_dir, n + ".s"), "rb").read() for n in names)
    lines = [
        f"// {hashlib.sha256(sources).hexdigest()}",
        f"// stencilcheck test fixture: hand-written stencils in the CPython 3.14+ jit_stencils.h layout ({triple}).",
        f"// $ python3 scripts/make-fixture.py --layout 3.14 --triple {triple} {asm_dir} -o {output}",
        "",
    ] + functions
    lines.append(FOOTER_314.format(words=max((len(ordinals) + 31) // 32, 1)))
    lines.append(f"static const StencilGroup shim = {{emit_shim, {groups['shim']}}};")
    lines.append("")
    lines.append("static const StencilGroup stencil_groups[MAX_UOP_ID + 1] = {")
    for n in uops:
        lines.append(f"    [{n}] = {{emit_{n}, {groups[n]}}},")
    lines.append("};")
    lines.append("")
    # x86-64 writes designated entries, aarch64 a plain list: both are C.
    lines.append(f"static const void * const symbols_map[{max(len(ordinals), 1)}] = {{")
    by_ordinal = sorted((n, s) for s, n in ordinals.items())
    if not by_ordinal:
        lines.append("    0")
    for n, sym in by_ordinal:
        lines.append(f"    [{n}] = &{sym}," if x86 else f"    &{sym},")
    lines.append("};")
    lines.append("")
    if x86:
        lines.append(CFI_BLOCK)
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    with open(output, "w") as f:
        f.write("\n".join(lines).rstrip("\n") + "\n")


def symbols_map_entry(old, new):
    """Edit one symbols_map entry (the line holding `old`)."""
    def edit(text):
        a = text.index("static const void * const symbols_map[")
        b = text.index("};", a)
        part = text[a:b]
        if part.count(old) != 1:
            raise SystemExit(f"symbols_map: `{old}` found {part.count(old)} times")
        return text[:a] + part.replace(old, new) + text[b:]
    return edit


def swap(name, a, b):
    """Swap every `a` and `b` in emit_NAME's statements."""
    def edit(text):
        start, end = function_span(text, name)
        fn = text[start:end]
        if a not in fn or b not in fn:
            raise SystemExit(f"emit_{name}: `{a}` or `{b}` missing")
        fn = fn.replace(a, "\0").replace(b, a).replace("\0", b)
        return text[:start] + fn + text[end:]
    return edit


VARIANTS_314 = {
    "x86_64": [
        ("wrong-got-ordinal.h",
         "BUG: _FX_CALL_GLOBAL's call through the trace GOT (code+0x1c) uses ordinal 0x0 (PyFx_Type's slot) instead of 0x1 (PyFx_Lookup's): it calls PyFx_Type",
         replace_in("_FX_CALL_GLOBAL", "patch_x86_64_32rx(code + 0x1c, got_symbol_address(0x1, state) - 4);",
                    "patch_x86_64_32rx(code + 0x1c, got_symbol_address(0x0, state) - 4);")),
        ("wrong-symbols-map.h",
         "BUG: symbols_map[1] is &PyFx_Other, not &PyFx_Lookup: patch_got_symbol(state, 0x1) fills _FX_CALL_GLOBAL's call slot with the wrong function",
         symbols_map_entry("[1] = &PyFx_Lookup,", "[1] = &PyFx_Other,")),
        ("missing-got-patch.h",
         "BUG: _FX_CALL_GLOBAL never calls patch_got_symbol(state, 0x1): the trace GOT slot its call reads (PyFx_Lookup's) keeps stale bytes",
         replace_in("_FX_CALL_GLOBAL", "    patch_got_symbol(state, 0x1);\n", "")),
        ("swapped-targets.h",
         "BUG: _FX_GUARD's jne (code+0x11) goes to the error target and its jl (code+0x1c) to the jump target",
         swap("_FX_GUARD", "instruction->jump_target", "instruction->error_target")),
    ],
    "aarch64": [
        ("wrong-got-ordinal.h",
         "BUG: _FX_CALL_GLOBAL's adrp+ldr of the function to call (code+0x1c) uses ordinal 0x0 (PyFx_Type's trace GOT slot) instead of 0x1 (PyFx_Lookup's)",
         replace_in("_FX_CALL_GLOBAL", "patch_aarch64_33rx(code + 0x1c, got_symbol_address(0x1, state));",
                    "patch_aarch64_33rx(code + 0x1c, got_symbol_address(0x0, state));")),
        ("trampoline-wrong-ordinal.h",
         "BUG: _FX_CALL_HELPER's first bl (code+0x1c) is patched through ordinal 0x3 (PyFx_Fallback) instead of 0x2 (PyFx_Helper)",
         replace_in("_FX_CALL_HELPER", "patch_aarch64_trampoline(code + 0x1c, 0x2, state);",
                    "patch_aarch64_trampoline(code + 0x1c, 0x3, state);")),
        ("trampoline-wrong-symbols-map.h",
         "BUG: symbols_map[2] is &PyFx_Other, not &PyFx_Helper: _FX_CALL_HELPER's first bl (code+0x1c) goes to the wrong function",
         symbols_map_entry("    &PyFx_Helper,", "    &PyFx_Other,")),
        ("missing-got-patch.h",
         "BUG: _FX_CALL_GLOBAL never calls patch_got_symbol(state, 0x1): the trace GOT slot its adrp+ldr (code+0x1c) reads keeps stale bytes",
         replace_in("_FX_CALL_GLOBAL", "    patch_got_symbol(state, 0x1);\n", "")),
        ("swapped-targets.h",
         "BUG: _FX_CALL_HELPER's cbnz (code+0x2c) goes to the error target and its final b (code+0x38) to the jump target",
         swap("_FX_CALL_HELPER", "instruction->jump_target", "instruction->error_target")),
    ],
}


def variants_314(good):
    text = open(good).read()
    arch = "aarch64" if "aarch64-unknown-linux-gnu" in text.split("\n", 3)[1] else "x86_64"
    for filename, bug, edit in VARIANTS_314[arch]:
        out = f"// {bug}\n" + edit(text)
        if out[len(bug) + 4:] == text:
            raise SystemExit(f"{filename}: the edit changed nothing")
        with open(os.path.join(os.path.dirname(good), filename), "w") as f:
            f.write(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("asm_dir", nargs="?")
    ap.add_argument("-o", "--output")
    ap.add_argument("--variants", metavar="GOOD_H", help="write the wrong copies of GOOD_H beside it")
    ap.add_argument("--layout", choices=["3.13", "3.14"], default="3.13",
                    help="the CPython header layout to write (default 3.13)")
    ap.add_argument("--triple", choices=sorted(TRIPLES), default=TRIPLE,
                    help="target of the assembly (3.14 layout; 3.13 is x86-64 only)")
    args = ap.parse_args()
    if args.variants:
        return variants_314(args.variants) if args.layout == "3.14" else variants(args.variants)
    if not (args.asm_dir and args.output):
        ap.error("need ASM_DIR and -o OUTPUT (or --variants GOOD_H)")
    if args.layout == "3.14":
        return build_314(args.asm_dir, args.output, args.triple)
    if args.triple != TRIPLE:
        ap.error("the 3.13 layout is written for x86-64 only")
    names = sorted(f[:-2] for f in os.listdir(args.asm_dir) if f.endswith(".s"))
    uops = [n for n in names if n != "trampoline"]
    lines = [
        "// stencilcheck test fixture: hand-written stencils in the CPython 3.13 jit_stencils.h layout.",
        f"// $ python3 scripts/make-fixture.py {args.asm_dir} -o {args.output}",
        "",
    ]
    sizes = {}
    with tempfile.TemporaryDirectory() as work:
        for n in uops + (["trampoline"] if "trampoline" in names else []):
            fn, code_size, data_size = stencil(n, os.path.join(args.asm_dir, n + ".s"), work)
            sizes[n] = (code_size, data_size)
            lines += fn + [""]
    lines.append(FOOTER)
    if "trampoline" in sizes:
        lines.append("static const StencilGroup trampoline = {emit_trampoline, %d, %d};" % sizes["trampoline"])
        lines.append("")
    lines.append("static const StencilGroup stencil_groups[MAX_UOP_ID + 1] = {")
    for n in uops:
        lines.append(f"    [{n}] = {{emit_{n}, {sizes[n][0]}, {sizes[n][1]}}},")
    lines.append("};")
    with open(args.output, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
