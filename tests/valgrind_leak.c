/*
 * valgrind_leak.c — the `valgrind` suite's check on itself: this program
 * leaks urio blocks (a future never unreferenced, and through it its loop's
 * memory), and memcheck must say so (valgrind_leak.sh checks its exit status
 * and the leak record).  It
 * shows that with URIO_MALLOC=libc urio's blocks are memcheck's to see; with
 * jemalloc's own API they would not be, and a leak would pass unnoticed.
 */
#include <stdio.h>
#include <urio.h>

int main(void)
{
    urio_loop_t *loop;
    int err = urio_loop_new(&loop, NULL);
    if (err == URIO_ENOURING)
        return 77;      /* no io_uring here: skipped */
    urio_future_t *forgotten;
    if (err != 0 || urio_future_new(&forgotten, loop) != 0)
        return 1;       /* not the leak: valgrind_leak.sh says so */
    urio_loop_close(loop);
    forgotten = NULL;   /* the last pointer to it: definitely lost */
    printf("leaked a future\n");
    return 0;
}
