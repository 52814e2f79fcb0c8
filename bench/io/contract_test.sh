#!/usr/bin/env bash
# contract_test.sh — checks that a program keeps the contract the I/O
# benchmarks start it with (docs/benchmarks.md, "I/O rows"), so that a
# broken peer or urio program fails a test rather than a benchmark run.
#
#   contract_test.sh echo LOADGEN SERVER
#       SERVER --host 127.0.0.1 --port 0 --loops 1 prints
#       "listening on <host>:<port>", echoes (the load generator checks every
#       byte, closed loop then open loop), and exits 0 on SIGTERM.
#   contract_test.sh fileread READER
#       READER --file F --block 4096 --depth D --seconds S [--odirect]
#       prints "iops <N> cpu_ns_per_op <X>" and exits 0.
set -euo pipefail

fail() { echo "contract_test: $*" >&2; exit 1; }

# What the exit trap cleans up (globals: the trap runs after the functions).
pid= tmp=
cleanup() {
    [[ -n $pid ]] && kill -9 "$pid" 2>/dev/null
    [[ -n $tmp ]] && rm -rf "$tmp"
    return 0
}
trap cleanup EXIT

echo_contract() {
    local loadgen=$1 server=$2 out line port status
    tmp=$(mktemp)
    out=$tmp
    "$server" --host 127.0.0.1 --port 0 --loops 1 >"$out" &
    pid=$!
    for _ in $(seq 200); do
        (($(wc -l <"$out") > 0)) && break
        kill -0 $pid 2>/dev/null || fail "$server exited before listening"
        sleep 0.05
    done
    line=$(head -n 1 "$out")
    [[ $line =~ ^listening\ on\ (.+):([0-9]+)$ ]] || fail "$server printed '$line'"
    port=${BASH_REMATCH[2]}
    "$loadgen" --port "$port" --conns 8 --warmup 0.05 --seconds 0.2 --pid $pid
    "$loadgen" --port "$port" --conns 8 --warmup 0.05 --seconds 0.2 --rate 2000
    kill -TERM $pid
    status=0
    wait $pid || status=$?
    pid=
    ((status == 0)) || fail "$server exited with status $status on SIGTERM"
}

fileread_contract() {
    local reader=$1 file out
    tmp=$(mktemp -d "${URIO_BENCH_FILE_DIR:-/var/tmp}/urio-contract-XXXXXX")
    file=$tmp/read.dat
    head -c $((8 << 20)) /dev/urandom >"$file"
    for args in "--depth 1" "--depth 8" "--depth 8 --odirect"; do
        # shellcheck disable=SC2086
        out=$("$reader" --file "$file" --block 4096 $args --seconds 0.1)
        [[ $out =~ ^iops\ [0-9]+\ cpu_ns_per_op\ [0-9.]+$ ]] || fail "$reader $args printed '$out'"
    done
}

case ${1:-} in
    echo) echo_contract "$2" "$3" ;;
    fileread) fileread_contract "$2" ;;
    *) fail "usage: contract_test.sh echo LOADGEN SERVER | fileread READER" ;;
esac
echo "contract_test: $1 ok"
