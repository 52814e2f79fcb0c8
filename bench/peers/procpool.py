#!/usr/bin/python3
"""bench/peers/procpool.py — the peer of urio-bench's procpool rows: Python's
ProcessPoolExecutor driven from asyncio, as a Python service would use it.

    procpool.py run N DEPTH LEN WORKERS

Runs N echo jobs of LEN bytes with DEPTH in flight on a pool of WORKERS
processes (after a warm-up of 2 jobs per worker, so every worker has started),
and prints the wall nanoseconds per job.  Interpreter and pool start-up are
not timed.
"""
import asyncio
import concurrent.futures
import sys
import time


def echo(data):
    return data


async def main(n, depth, length, workers):
    loop = asyncio.get_running_loop()
    payload = bytes((i * 13 + 1) & 0xFF for i in range(min(length, 256))) * (length // 256 + 1)
    payload = payload[:length]
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as ex:
        await asyncio.gather(*(loop.run_in_executor(ex, echo, payload)
                               for _ in range(2 * workers)))
        done = 0
        submitted = 0

        async def lane():
            nonlocal done, submitted
            while submitted < n:
                submitted += 1
                out = await loop.run_in_executor(ex, echo, payload)
                if len(out) != length or (length and (out[0] != payload[0] or out[-1] != payload[-1])):
                    raise SystemExit("a job returned the wrong bytes")
                done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(depth)))
        t1 = time.perf_counter()
    assert done == n
    print(f"{(t1 - t0) * 1e9 / n:.1f}")


if __name__ == "__main__":
    mode, n, depth, length, workers = sys.argv[1], *map(int, sys.argv[2:6])
    if mode != "run":
        raise SystemExit(f"unknown mode {mode}")
    asyncio.run(main(n, depth, length, workers))
