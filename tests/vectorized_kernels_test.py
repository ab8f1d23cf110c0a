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

It also counts each clone's moves of vector registers to and from the stack: a change that
makes the compiler keep a loop's vectors in memory (lambdas holding vectors, copied instead of
built in place) keeps the packed arithmetic and every value, and ran BatchNorm's inference on
(4096, 768) ten times as long; its dense kernels' clones went from 0 to 30-88 such moves
(AVX-512) and from 28 to 72 (AVX2 apply_columns_from_input). A clone with more than 1.5 times
its recorded count plus 16 fails. Both counts only change where a kernel changes: record them
again with --update after checking the benchmarks.

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
# Vector registers moved to or from the stack (spills, vectors kept in memory).
STACK = {clone: re.compile(rf"%{reg}\d+.*\(%rsp\)|\(%rsp\).*%{reg}\d+")
         for clone, reg in CLONES.items()}
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


def clone_counts(found, patterns):
    """{"clone/kernel<args>": instructions of each kernel clone that match its clone's pattern}."""
    counts = {}
    for symbol, lines in found.items():
        match = KERNEL.search(symbol)
        if not match:
            continue
        for clone, pattern in patterns.items():
            if symbol.endswith(f"[clone .{clone}]"):
                key = f"{clone}/{match.group(1)}<{match.group(2)}>"
                counts[key] = counts.get(key, 0) + sum(1 for l in lines if pattern.search(l))
    return counts


def packed_counts(found):
    """{"clone/kernel<args>": packed float arithmetic instructions on the clone's registers}."""
    return clone_counts(found, PACKED)


def stack_counts(found):
    """{"clone/kernel<args>": moves of the clone's vector registers to or from the stack}."""
    return clone_counts(found, STACK)


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


def compare_stack(recorded, counts):
    """The failures of the stack moves, one line each."""
    failures = []
    for key, expected in sorted(recorded.items()):
        if key in counts and counts[key] > 1.5 * expected + 16:
            failures.append(f"{key}: {counts[key]} moves of vector registers to or from the "
                            f"stack, recorded {expected}: its vectors are kept in memory")
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
    found = functions(disassembly)
    counts, stack = packed_counts(found), stack_counts(found)
    if args.update:
        with open(RECORD, "w") as fh:
            json.dump({"compiler": args.compiler, "packed_float_instructions": counts,
                       "stack_vector_moves": stack}, fh, indent=1, sort_keys=True)
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
    failures = compare(recorded, counts) + compare_stack(record.get("stack_vector_moves", {}),
                                                         stack)
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
