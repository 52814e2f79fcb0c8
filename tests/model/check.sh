#!/bin/sh
# Model-checks tests/model/inbox.pml with spin: the protocol must verify with
# no errors, and each deliberately broken variant must not (-DBROKEN: no
# re-check before sleeping, a lost wake-up; -DBROKEN_CLOSE: close does not
# wait out producers inside the wake-up, an eventfd write after close;
# -DBROKEN_PUSH: the closed check apart from the push, a call accepted after
# close and never run).
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

for variant in BROKEN BROKEN_CLOSE BROKEN_PUSH; do
    verify -D$variant
    if grep -q "errors: 0" out.txt; then
        echo "inbox.pml: the $variant variant verified: the model cannot see what it breaks"
        cat out.txt
        exit 1
    fi
    echo "$variant variant: $(grep -E 'errors:|invalid end state|assertion violated' out.txt | tr '\n' ' ')"
done
