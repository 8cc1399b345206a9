#!/usr/bin/env python3
"""A straightforward Python + Unicorn stencil driver: the baseline that
stencilcheck's own Unicorn engine is measured against (issue 10).

It runs exactly the placements stencilcheck runs: `stencilcheck bench
--export-runs FILE` writes, for every stencil and placement, the patched
image and the registers and stack the run starts with (one JSON object a
line). This script maps each image read+execute, makes unmapped memory up
on demand with the same contents function stencilcheck uses (so both take
the same paths through the stencil), stubs calls the same way (the same
made-up return values, caller-saved registers scrambled), stops when
control leaves the code, and unmaps everything before the next run.

It judges nothing; it is what a person would write in an afternoon to "just
run the stencils in Unicorn". `stencilcheck bench --baseline
scripts/baseline.py` runs it beside the Rust engine and prints the ratio.

    pip install unicorn==2.1.1 numpy
    python3 scripts/baseline.py runs.jsonl [--repeat N]

Prints `runs/s: <rate>` (best of --repeat) and a tally of how runs ended.
"""

import argparse
import json
import sys
import time

import numpy as np
from unicorn import (
    UC_ERR_FETCH_PROT,
    UC_ERR_FETCH_UNMAPPED,
    UC_HOOK_BLOCK,
    UC_HOOK_MEM_READ_UNMAPPED,
    UC_HOOK_MEM_WRITE_UNMAPPED,
    UC_PROT_EXEC,
    UC_PROT_READ,
    UC_PROT_WRITE,
    Uc,
    UcError,
)
from unicorn.x86_const import UC_X86_REG_RIP

PAGE = 4096
MASK = (1 << 64) - 1
HEAP_OBJECTS = 1 << 20
# Made-up pages one run may map (stencilcheck: 24 regions of 16 pages).
PAGE_BUDGET = 24 * 16
CALL_LIMIT = 4096
U64 = np.uint64
WORD_OFFSETS = np.arange(PAGE // 8, dtype=U64) * U64(8)


def splitmix(x):
    x = (x + 0x9E3779B97F4A7C15) & MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def splitmix_np(x):
    x = x + U64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> U64(30))) * U64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> U64(27))) * U64(0x94D049BB133111EB)
    return x ^ (x >> U64(31))


class Contents:
    """What unmapped memory holds: every word a function of (seed, address)."""

    def __init__(self, run):
        self.seed = run["seed"]
        self.heap = run["heap"]
        self.interesting = np.array(run["interesting"] or [0], dtype=U64)
        self.has_interesting = bool(run["interesting"])

    def page(self, base):
        addrs = U64(base) + WORD_OFFSETS
        h = splitmix_np(U64(self.seed) ^ (addrs * U64(0x9E3779B9)))
        pick = h % U64(100)
        r = h >> U64(8)
        out = r % U64(0x7FFF_FFFF_0000)
        out = np.where((pick >= 90) & (pick < 95), U64(0xFFFF_FFFF), out)
        if self.has_interesting:
            chosen = self.interesting[(r % U64(len(self.interesting))).astype(np.int64)]
            out = np.where((pick >= 80) & (pick < 90), chosen, out)
        out = np.where(pick < 80, U64(0), out)
        out = np.where(pick < 70, r % U64(8), out)
        out = np.where(pick < 40, U64(self.heap) + (r % U64(HEAP_OBJECTS)) // U64(16) * U64(16), out)
        return out.astype("<u8").tobytes()

    def return_value(self, n):
        h = splitmix(self.seed ^ 0x5EED0000 ^ n)
        pick, r = h % 10, h >> 8
        if pick <= 2:
            return 0
        if pick <= 6:
            return self.heap + (r % HEAP_OBJECTS) // 16 * 16
        if pick == 7:
            return [1, 0, 2][r % 3]
        if self.has_interesting:
            return int(self.interesting[r % len(self.interesting)])
        return 1


def pages_of(addr, length):
    start = addr & ~(PAGE - 1)
    end = (addr + length + PAGE - 1) & ~(PAGE - 1)
    return start, end


def run_one(uc, run, tally):
    code_start, code_end = run["code"]
    contents = Contents(run)
    mapped = []
    state = {"left_to": None, "made_up": 0}

    # The image, read+execute, with one page of int3 after the code.
    spans = [pages_of(code_start, code_end - code_start + PAGE)]
    spans += [pages_of(addr, len(bytes.fromhex(data))) for addr, data in run["regions"]]
    spans.sort()
    merged = []
    for s, e in spans:
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    for s, e in merged:
        uc.mem_map(s, e - s, UC_PROT_READ | UC_PROT_EXEC)
        uc.mem_write(s, b"\xcc" * (e - s))
        mapped.append((s, e - s))
    for addr, data in run["regions"]:
        uc.mem_write(addr, bytes.fromhex(data))

    def make_up(uc, _access, address, _size, _value, _user):
        if state["made_up"] >= PAGE_BUDGET:
            return False
        page = address & ~(PAGE - 1)
        try:
            uc.mem_map(page, PAGE, UC_PROT_READ | UC_PROT_WRITE)
        except UcError:
            return False
        uc.mem_write(page, contents.page(page))
        mapped.append((page, PAGE))
        state["made_up"] += 1
        return True

    def on_block(uc, address, _size, _user):
        if not code_start <= address < code_end:
            state["left_to"] = address
            uc.emu_stop()

    hooks = [
        uc.hook_add(UC_HOOK_MEM_READ_UNMAPPED | UC_HOOK_MEM_WRITE_UNMAPPED, make_up),
        uc.hook_add(UC_HOOK_BLOCK, on_block),
    ]
    try:
        for reg, value in run["registers"]:
            uc.reg_write(reg, value)
        for addr, data in run["writes"]:
            make_up(uc, 0, addr, 0, 0, None)
            uc.mem_write(addr, bytes.fromhex(data))
        end = drive(uc, run, contents, state)
        key = "fault" if end.startswith("fault") else end
        tally[key] = tally.get(key, 0) + 1
    finally:
        for h in hooks:
            uc.hook_del(h)
        for addr, size in mapped:
            uc.mem_unmap(addr, size)


def drive(uc, run, contents, state):
    """Run until control leaves the code for good; stub every call."""
    sp_reg, ret_reg = run["stack_register"], run["return_register"]
    code_start, code_end = run["code"]
    pc, calls = code_start, 0
    while True:
        state["left_to"] = None
        try:
            uc.emu_start(pc, 0, count=run["instruction_limit"])
        except UcError as e:
            pc = uc.reg_read(UC_X86_REG_RIP)
            # Fetching from where nothing executable is: control left the code.
            if e.errno in (UC_ERR_FETCH_UNMAPPED, UC_ERR_FETCH_PROT):
                state["left_to"] = pc
            # Ran on into the int3 page after the code (a block hook does not
            # see that: the block goes on past the last instruction).
            elif not code_start <= pc - 1 < code_end:
                state["left_to"] = pc - 1
            elif state["left_to"] is None:
                return "fault: %s" % e
        target = state["left_to"]
        if target is None:
            return "instruction limit"
        # A call leaves its return address, inside the code, on the stack.
        sp = uc.reg_read(sp_reg)
        try:
            ret = int.from_bytes(uc.mem_read(sp, 8), "little")
        except UcError:
            return "exit"
        if not code_start <= ret < code_end or calls >= CALL_LIMIT:
            return "exit"
        uc.reg_write(ret_reg, contents.return_value(calls))
        for i, reg in enumerate(run["caller_saved"]):
            uc.reg_write(reg, splitmix(contents.seed ^ (calls << 8) ^ i))
        uc.reg_write(sp_reg, sp + 8)
        calls += 1
        pc = ret


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", help="JSON lines from `stencilcheck bench --export-runs`")
    parser.add_argument("--repeat", type=int, default=1, help="repetitions; the best is reported")
    args = parser.parse_args()
    with open(args.runs) as f:
        runs = [json.loads(line) for line in f if line.strip()]
    if not runs:
        sys.exit("baseline.py: %s holds no runs" % args.runs)
    uc = Uc(runs[0]["arch"], runs[0]["mode"])
    best, tally = None, {}
    for _ in range(max(1, args.repeat)):
        tally = {}
        start = time.perf_counter()
        for run in runs:
            try:
                run_one(uc, run, tally)
            except UcError as e:
                tally["fault"] = tally.get("fault", 0) + 1
                print("note: %s/%d: %s" % (run["stencil"], run["placement"], e), file=sys.stderr)
        elapsed = time.perf_counter() - start
        best = elapsed if best is None else min(best, elapsed)
    print("runs: %d in %.3f s" % (len(runs), best))
    print("runs/s: %.1f" % (len(runs) / best))
    print("ends: " + ", ".join("%s %d" % kv for kv in sorted(tally.items()) if kv[1]))


if __name__ == "__main__":
    main()
