#!/usr/bin/env python3
"""Build a jit_stencils.h-style header (CPython 3.13 layout) from hand-written
x86-64 assembly, for stencilcheck's test fixtures.

    python3 scripts/make-fixture.py tests/fixtures/asm -o tests/fixtures/good.h
    python3 scripts/make-fixture.py --variants tests/fixtures/good.h

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
"""

import argparse
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
                    kind = R_X86_64.get(info & 0xFFFFFFFF)
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("asm_dir", nargs="?")
    ap.add_argument("-o", "--output")
    ap.add_argument("--variants", metavar="GOOD_H", help="write the wrong copies of GOOD_H beside it")
    args = ap.parse_args()
    if args.variants:
        return variants(args.variants)
    if not (args.asm_dir and args.output):
        ap.error("need ASM_DIR and -o OUTPUT (or --variants GOOD_H)")
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
