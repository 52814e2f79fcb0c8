#!/usr/bin/env bash
# test_io_examples.sh — the I/O examples, run and their output checked:
#   test_io_examples.sh echo ECHO_SERVER ECHO_CLIENT
#       echo_server on port 0 with two loops, then a Unix socket; echo_client's
#       lines come back; connections are spread over both loops (SO_REUSEPORT);
#       SIGTERM ends the server with status 0.
#   test_io_examples.sh cat CAT FILE
#       cat FILE is FILE; cat of two files is both; a missing file fails.
set -euo pipefail

fail() { echo "test_io_examples: $*" >&2; exit 1; }

pid= tmp=
cleanup() {
    [[ -n $pid ]] && kill -9 "$pid" 2>/dev/null
    [[ -n $tmp ]] && rm -rf "$tmp"
    return 0
}
trap cleanup EXIT

# start_server OUT ARGS...: runs the server (its stderr in OUT.err), waits for its one
# line; sets pid.
start_server() {
    local out=$1; shift
    "$server" "$@" >"$out" 2>"$out.err" &
    pid=$!
    for _ in $(seq 200); do
        (($(wc -l <"$out") > 0)) && return 0
        kill -0 $pid 2>/dev/null || fail "echo_server $* exited before listening"
        sleep 0.05
    done
    fail "echo_server $* printed nothing"
}

stop_server() {
    local status=0
    kill -TERM $pid
    wait $pid || status=$?
    pid=
    ((status == 0)) || fail "echo_server exited with status $status on SIGTERM"
}

check_client() {
    local got want
    got=$("$client" "$@" hello "two words" ""; echo "status $?")
    want=$(printf 'hello\ntwo words\n\n3 lines echoed\nstatus 0')
    [[ $got == "$want" ]] || fail "echo_client $* printed:
$got
--- expected:
$want"
}

echo_example() {
    server=$1 client=$2
    tmp=$(mktemp -d)
    start_server "$tmp/out" --host 127.0.0.1 --port 0 --loops 2 --stats 1
    local line
    line=$(head -n 1 "$tmp/out")
    [[ $line =~ ^listening\ on\ 127\.0\.0\.1:([0-9]+)$ ]] || fail "echo_server printed '$line'"
    local port=${BASH_REMATCH[1]}
    # The kernel hands each connection to one of the two listening sockets
    # (SO_REUSEPORT) by a hash of its addresses and ports: each client's
    # port differs, so each connection lands on either loop about evenly.
    # All 40 on one loop would be a chance of 2 in 2^40: both must serve.
    local n=40
    for _ in $(seq $n); do
        check_client --port "$port"
    done
    stop_server
    (($(wc -l <"$tmp/out") == 1)) || fail "echo_server printed more than one line"
    local loops
    loops=$(grep -E '^loop [01]: [0-9]+ connections$' "$tmp/out.err") ||
        fail "echo_server --stats 1 wrote: $(cat "$tmp/out.err")"
    local c0 c1
    c0=$(sed -n 's/^loop 0: \([0-9]*\) connections$/\1/p' <<<"$loops")
    c1=$(sed -n 's/^loop 1: \([0-9]*\) connections$/\1/p' <<<"$loops")
    [[ -n $c0 && -n $c1 ]] || fail "echo_server --stats 1 wrote: $(cat "$tmp/out.err")"
    ((c0 + c1 == n)) || fail "the loops served $c0 + $c1 connections, not $n"
    ((c0 > 0 && c1 > 0)) || fail "connections not spread over both loops: $c0 and $c1"

    start_server "$tmp/out2" --unix "$tmp/sock"
    [[ $(head -n 1 "$tmp/out2") == "listening on unix:$tmp/sock" ]] || fail "unix line"
    check_client --unix "$tmp/sock"
    stop_server
    [[ ! -e $tmp/sock ]] || fail "the unix socket file was left behind"

    # Refused: a clear message naming the address, and a failure status.
    local err
    if err=$("$client" --port 1 x 2>&1); then fail "echo_client to port 1 succeeded"; fi
    [[ $err == *"connection to 127.0.0.1:1 (127.0.0.1:1) refused"* ]] || fail "refused: '$err'"
}

cat_example() {
    local cat=$1 file=$2 got
    tmp=$(mktemp -d)
    cmp <("$cat" "$file") "$file" || fail "cat $file differs"
    cmp <("$cat" "$file" "$file") <(cat "$file" "$file") || fail "cat of two files differs"
    head -c $((300 * 1024 + 17)) /dev/urandom >"$tmp/big"
    cmp <("$cat" "$tmp/big") "$tmp/big" || fail "cat of a 300 KiB file differs"
    cmp <(printf 'from stdin' | "$cat" -) <(printf 'from stdin') || fail "cat - differs"
    "$cat" "$tmp/big" >"$tmp/copy"     # a regular file as stdout
    cmp "$tmp/copy" "$tmp/big" || fail "cat into a file differs"
    if got=$("$cat" "$tmp/missing" 2>&1); then fail "cat of a missing file succeeded"; fi
    [[ $got == "cat: $tmp/missing: No such file or directory" ]] || fail "missing: '$got'"
    if got=$("$cat" "$tmp" 2>&1); then fail "cat of a directory succeeded"; fi
    [[ $got == "cat: $tmp: Is a directory" ]] || fail "directory: '$got'"
}

case ${1:-} in
    echo) echo_example "$2" "$3" ;;
    cat) cat_example "$2" "$3" ;;
    *) fail "usage: test_io_examples.sh echo SERVER CLIENT | cat CAT FILE" ;;
esac
echo "test_io_examples: $1 ok"
