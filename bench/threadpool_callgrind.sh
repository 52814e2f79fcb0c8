#!/bin/sh
# threadpool_callgrind.sh PROBE [WORKERS] — instructions per job of
# threadpool.throughput's workload under callgrind: the loop thread's and
# the workers' (all of them).  Two runs, 20,000 and 120,000 jobs; the
# difference over 100,000 jobs leaves out start-up, warm-up and close.
# PROBE is bench/urio-threadpool-probe of a build (release to measure).
set -eu
probe=$1
workers=${2:-6}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for n in 20000 120000; do
    valgrind --tool=callgrind --separate-threads=yes \
        --callgrind-out-file="$out/cg.$n" "$probe" --spin $n "$workers" >/dev/null 2>&1
done
# callgrind writes one file per thread: -01 is the main thread, the loop's.
sum() {
    for f in "$@"; do sed -n 's/^summary: //p' "$f"; done | awk '{s += $1} END {print s + 0}'
}
loop_a=$(sum "$out"/cg.20000-01)
loop_b=$(sum "$out"/cg.120000-01)
work_a=$(sum $(ls "$out"/cg.20000-* | grep -v -- '-01$'))
work_b=$(sum $(ls "$out"/cg.120000-* | grep -v -- '-01$'))
awk -v la="$loop_a" -v lb="$loop_b" -v wa="$work_a" -v wb="$work_b" 'BEGIN {
    printf "instructions per job: loop thread %.0f, workers %.0f\n",
           (lb - la) / 100000, (wb - wa) / 100000 }'
