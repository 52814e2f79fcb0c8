#!/bin/sh
# Runs a program and compares its standard output with an expected file.
set -eu
out=$("$1")
expected=$(cat "$2")
if [ "$out" != "$expected" ]; then
    printf 'output differs\n--- expected\n%s\n--- got\n%s\n' "$expected" "$out" >&2
    exit 1
fi
