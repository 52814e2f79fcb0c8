#!/bin/sh
# tests/fuzz/run.sh FUZZER CORPUS SECONDS — a short libFuzzer run from the
# corpus; new inputs go to a scratch directory, never into the source tree.
set -eu
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"$1" -max_total_time="$3" -seed=1 -print_final_stats=1 "$scratch" "$2"
