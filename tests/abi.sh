#!/bin/sh
# tests/abi.sh LIB MAP — liburio.so exports exactly the symbols lib/urio.map
# lists: a new public function must be added to the map (an ABI review), and
# the map may not name a symbol the library lost.
set -eu
lib=$1 map=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
nm -D --defined-only "$lib" | awk '$3 ~ /^urio_/ { sub(/@.*/, "", $3); print $3 }' | sort -u > "$tmp/exported"
sed -n 's/^[[:space:]]*\(urio_[A-Za-z0-9_]*\);.*/\1/p' "$map" | sort -u > "$tmp/listed"
status=0
if [ -s "$tmp/exported" ] && comm -23 "$tmp/exported" "$tmp/listed" | grep -q .; then
    echo "exported but not in $map (add them under a version node):"
    comm -23 "$tmp/exported" "$tmp/listed"
    status=1
fi
if comm -13 "$tmp/exported" "$tmp/listed" | grep -q .; then
    echo "listed in $map but not exported:"
    comm -13 "$tmp/exported" "$tmp/listed"
    status=1
fi
[ $status -eq 0 ] && echo "abi: $(wc -l < "$tmp/exported") symbols, all listed"
exit $status
