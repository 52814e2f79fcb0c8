#!/usr/bin/env python3
"""tests/check_guide.py GUIDE BUILDROOT SRCROOT — the guide cannot drift from the code.

Every output block of GUIDE (docs/developing.md) follows a marker

    <!-- output: PROGRAM [NAME=VALUE ...] -->

and is the output (stderr and stdout, as a terminal shows them) of
BUILDROOT/examples/PROGRAM run from BUILDROOT (where its __FILE__ paths
resolve) with those environment variables.  A block whose output changes
from run to run (times, counts) is marked "<!-- output (lines, in order): ...":
each of its lines must appear in the output, in that order, numbers aside.  This runs each one and
compares, after normalising what changes from run to run or machine to
machine: the log's timestamps, durations, where the source tree is, and the
line numbers inside urio's own files (frames of urio itself are shown as
"  ..." in the guide, as Python's docs elide asyncio's).
"""
import os
import re
import subprocess
import sys

MARKER = re.compile(r"<!-- output( \(lines, in order\))?: (\S+)((?: \w+=\S*)*) -->\n```[a-z]*\n(.*?)```",
                    re.S)


def normalise(text, srcroot):
    text = text.replace(srcroot.rstrip("/") + "/", "")
    text = re.sub(r"(\.\./)+(examples|lib|tests)/", r"\2/", text)
    text = re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} ", "", text, flags=re.M)
    text = re.sub(r"took \d+\.\d+ seconds", "took 0.0XX seconds", text)
    text = re.sub(r"0x[0-9a-f]+", "0x...", text)
    # A frame in urio's own code, with its source line: "  ..." (consecutive ones once).
    out = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if re.match(r'  File "lib/[^"]+", line \d+, in ', line):
            i += 1
            if i < len(lines) and lines[i].startswith("    "):
                i += 1
            if not out or out[-1] != "  ...":
                out.append("  ...")
            continue
        out.append(line)
        i += 1
    return "\n".join(out).strip("\n") + "\n"


def lines_in_order(want, got):
    """Every line of want (numbers aside) appears in got, in order."""
    digits = re.compile(r"\d+")
    have = [digits.sub("N", line) for line in got.split("\n")]
    at = 0
    for line in want.strip("\n").split("\n"):
        line = digits.sub("N", line)
        while at < len(have) and have[at] != line:
            at += 1
        if at == len(have):
            return False
        at += 1
    return True


def main():
    guide, buildroot, srcroot = sys.argv[1:4]
    text = open(guide, encoding="utf-8").read()
    blocks = MARKER.findall(text)
    if not blocks:
        print(f"{guide}: no output blocks found")
        return 1
    failed = 0
    for loose, program, env_text, expected in blocks:
        env = dict(os.environ)
        for pair in env_text.split():
            name, _, value = pair.partition("=")
            env[name] = value
        run = subprocess.run([os.path.join(buildroot, "examples", program)], env=env, cwd=buildroot,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        got = normalise(run.stdout.decode(errors="replace"), srcroot)
        want = normalise(expected, srcroot)
        if loose:
            same = lines_in_order(want, got)
        else:
            same = got == want
        if not same:
            failed += 1
            print(f"--- {program}{env_text}: the guide shows\n{want}--- the program printed\n{got}")
    print(f"guide: {len(blocks)} outputs checked, {failed} differ")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
