#!/bin/sh
# Model-checks tests/model/inbox.pml with spin: the protocol must verify with
# no errors, and the deliberately broken variant (-DBROKEN) must not.
set -eu
model=$(realpath "$1")
cc=${CC:-cc}
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
cd "$d"

verify() {
    rm -f pan pan.* ./*.trail
    spin "$@" -a "$model" >/dev/null
    "$cc" -O2 -w -o pan pan.c
    ./pan -m1000000 -c1 > out.txt 2>&1 || true
}

verify
if ! grep -q "errors: 0" out.txt; then
    echo "inbox.pml: the protocol fails verification:"
    cat out.txt
    spin -t -p "$model" 2>/dev/null | tail -40 || true
    exit 1
fi
grep -E "errors:|states, stored" out.txt

verify -DBROKEN
if grep -q "errors: 0" out.txt; then
    echo "inbox.pml: the broken variant verified: the model cannot see a lost wake-up"
    cat out.txt
    exit 1
fi
echo "broken variant: $(grep -E 'errors:|invalid end state' out.txt | tr '\n' ' ')"
