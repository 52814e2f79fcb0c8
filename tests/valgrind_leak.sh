#!/bin/sh
# tests/valgrind_leak.sh VALGRIND PROGRAM ARGS... — the `valgrind` suite's
# check on itself: PROGRAM (valgrind_leak.c) leaks a future, and memcheck,
# run with the suite's own arguments (ARGS), must report it: its leak exit
# code (42 here, nothing else) and a "definitely lost" record whose stack
# names urio_future_new.  Any other outcome (the program failing on its own,
# memcheck seeing nothing) fails; 77 (no io_uring) skips.
valgrind=$1
prog=$2
shift 2
out=$("$valgrind" "$@" --error-exitcode=42 "$prog" 2>&1)
status=$?
[ "$status" = 77 ] && exit 77
if [ "$status" != 42 ]; then
    echo "memcheck's exit status was $status, not 42 (a leak seen); it wrote:"; echo "$out"
    exit 1
fi
case $out in
    *"definitely lost"*urio_future_new*) exit 0 ;;
esac
echo "no 'definitely lost' record naming urio_future_new; memcheck wrote:"; echo "$out"
exit 1
