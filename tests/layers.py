#!/usr/bin/env python3
"""tests/layers.py LIBURIO_A — the layer rule, checked on the built objects.

Each object file of lib/ belongs to a layer (docs/architecture.md).  An
object may use symbols defined by its own layer or a layer below it, never
one above, and never a sibling layer's: the loop's core knows nothing of
futures, tasks or executors; tasks and executors know nothing of each other.
"""
import subprocess
import sys
from collections import defaultdict

# layer -> the layers it may use (besides itself)
LAYERS = {
    "base": [],
    "core": ["base"],
    "future": ["base", "core"],
    "task": ["base", "core", "future"],
    "exec": ["base", "core", "future"],
    # io resolves names with getaddrinfo in the default executor, as asyncio does
    "io": ["base", "core", "future", "task", "exec"],
    "procpool": ["base", "core", "future", "exec"],
    # urio_run (asyncio.run): over tasks and executors (it shuts the default one down)
    "runner": ["base", "core", "future", "task", "exec"],
}
FILES = {
    "alloc": "base", "log": "base", "error": "base", "debug": "base", "fork": "base",
    "ring": "core", "ready": "core", "timer": "core", "inbox": "core", "loop": "core",
    "watchdog": "core",
    "future": "future", "exception": "future", "combine": "future",
    "stack": "task", "coro": "task", "task": "task", "group": "task", "run": "task", "dump": "task",
    "executor": "exec", "thread_pool": "exec",
    "process_frame": "procpool", "process_worker": "procpool", "process_spawn": "procpool",
    "process_pool": "procpool",
    "runner": "runner",
    "io": "io",
    "arch_": "task",
}


def layer_of(member):
    stem = member.rsplit("/", 1)[-1].split(".")[0]
    for prefix, layer in FILES.items():
        if stem == prefix:
            return layer
    for prefix, layer in FILES.items():
        if stem.startswith(prefix):
            return layer
    return None


def main():
    archive = sys.argv[1]
    out = subprocess.run(["nm", "-A", archive], capture_output=True, text=True, check=True).stdout
    defined = {}
    used = defaultdict(set)
    for line in out.splitlines():
        # "archive:member.o:<address or blanks> <kind> <symbol>"
        _, member, rest = line.split(":", 2)
        fields = rest.split()
        if len(fields) < 2 or not fields[-1].startswith("urio"):
            continue
        kind, sym = fields[-2], fields[-1]
        if kind == "U":
            used[member].add(sym)
        elif kind in "TDBRVW":
            defined[sym] = member
    errors = []
    unknown = set()
    for member, syms in sorted(used.items()):
        mine = layer_of(member)
        if mine is None:
            unknown.add(member)
            continue
        allowed = set(LAYERS[mine]) | {mine}
        for sym in sorted(syms):
            owner = defined.get(sym)
            if owner is None:
                continue
            theirs = layer_of(owner)
            if theirs is None:
                unknown.add(owner)
                continue
            if theirs not in allowed:
                errors.append(f"{member} ({mine}) uses {sym} from {owner} ({theirs})")
    for m in sorted(unknown):
        errors.append(f"{m}: no layer assigned in tests/layers.py")
    if errors:
        print("layer rule broken:")
        print("\n".join("  " + e for e in errors))
        return 1
    print(f"layers: {len(used)} objects, every use goes down or sideways within its layer")
    return 0


if __name__ == "__main__":
    sys.exit(main())
