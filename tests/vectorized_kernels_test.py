#!/usr/bin/env python3
"""Checks, in the library as built, that the kernels' float loops are still vectorized.

Every float kernel of normlab::kernels::rows is compiled for AVX2 and AVX-512
(NORMLAB_ISA_CLONES). A change that turns its loop scalar (an aliasing question the compiler
answers by giving up, a vector type replaced by a plain float) keeps every value and every other
test, and shows only in the benchmarks. So this counts the packed single-precision arithmetic
instructions (ymm in the AVX2 clone, zmm in the AVX-512 one) of each kernel clone and compares
them with the counts recorded in tests/data/vectorized_kernels.json for the same compiler: a
clone with less than half its recorded count fails, as does a recorded kernel that is gone.
Counting a whole function rather than its loop is deliberate: the scalar heads and tails around
a vector loop are of similar size, and GCC vectorizes a scalar fallback partly by itself, so no
ratio of packed to scalar instructions tells the two apart, while the count of a loop made
scalar drops to a fraction (affine_columns' AVX2 clone from 126 to 18 with its vector loops
removed).

Usage: vectorized_kernels_test.py LIBRARY COMPILER_ID_AND_VERSION [--update] [--objdump PATH]
Exits 77 (skipped) when the recorded counts are for another compiler; --update records them.
"""
import argparse
import json
import os
import re
import subprocess
import sys

RECORD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                      "vectorized_kernels.json")
CLONES = {"avx2": "ymm", "avx512f": "zmm"}
# Packed float arithmetic on each clone's registers (not loads, stores or shuffles, which a
# scalar loop also issues).
PACKED = {clone: re.compile(rf"\bv(?:add|sub|mul|div|max|min|sqrt|fmadd\w*)ps\b.*%{reg}\d")
          for clone, reg in CLONES.items()}
KERNEL = re.compile(r"normlab::kernels::rows::(\w+)<(float[^(]*)>\(")
SKIPPED = 77


def functions(disassembly):
    """{symbol: [instruction lines]} from `objdump -d -C` output."""
    found, current = {}, None
    for line in disassembly.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if header:
            current = header.group(1)
            found.setdefault(current, [])
        elif current is not None and "\t" in line:
            found[current].append(line)
    return found


def packed_counts(found):
    """{"clone/kernel<args>": packed float arithmetic instructions on the clone's registers}."""
    counts = {}
    for symbol, lines in found.items():
        match = KERNEL.search(symbol)
        if not match:
            continue
        for clone, packed in PACKED.items():
            if symbol.endswith(f"[clone .{clone}]"):
                key = f"{clone}/{match.group(1)}<{match.group(2)}>"
                counts[key] = counts.get(key, 0) + sum(1 for l in lines if packed.search(l))
    return counts


def compare(recorded, counts):
    """The failures, one line each."""
    failures = []
    for key, expected in sorted(recorded.items()):
        if key not in counts:
            failures.append(f"{key}: no such clone in the library (recorded {expected} packed "
                            "float instructions)")
        elif 2 * counts[key] < expected:
            failures.append(f"{key}: {counts[key]} packed float instructions, recorded "
                            f"{expected}: its loop is no longer vectorized as it was")
    return failures


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("library")
    parser.add_argument("compiler", help="the compiler's id and version, as CMake gives them")
    parser.add_argument("--objdump", default="objdump")
    parser.add_argument("--update", action="store_true", help="record this build's counts")
    args = parser.parse_args(argv[1:])
    disassembly = subprocess.run([args.objdump, "-d", "-C", "--no-show-raw-insn", args.library],
                                 check=True, capture_output=True, text=True).stdout
    counts = packed_counts(functions(disassembly))
    if args.update:
        with open(RECORD, "w") as fh:
            json.dump({"compiler": args.compiler, "packed_float_instructions": counts}, fh,
                      indent=1, sort_keys=True)
            fh.write("\n")
        print(f"recorded {len(counts)} kernel clones for {args.compiler} in {RECORD}")
        return 0
    with open(RECORD) as fh:
        record = json.load(fh)
    if record["compiler"] != args.compiler:
        print(f"skipped: the counts are recorded for {record['compiler']}, this build uses "
              f"{args.compiler} (run with --update to record them for it)")
        return SKIPPED
    recorded = record["packed_float_instructions"]
    failures = compare(recorded, counts)
    if not counts:
        failures.append("no float kernel clones found: is the library built with "
                        "NORMLAB_ISA_CLONES?")
    for failure in failures:
        print("FAIL", failure)
    print(f"{len(counts)} kernel clones of {args.library}, {len(recorded)} recorded: "
          f"{len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
