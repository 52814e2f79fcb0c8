/*
 * examples/debug/resources.c — what debug mode reports that was never
 * closed, and a state-machine mistake it refuses: a future completed twice.
 * Run with URIO_DEBUG=1.
 */
#include <errno.h>
#include <urio.h>

int main(void)
{
    urio_loop_t *loop;
    urio_executor_t *pool;
    urio_loop_new(&loop, NULL);                 /* never closed */
    urio_thread_pool_new(&pool, 2);             /* never shut down */

    urio_future_t *f;
    urio_future_new(&f, loop);
    urio_future_set_result(f, NULL);
    urio_future_set_error(f, -EIO, "too late"); /* refused: it is done already */
    urio_future_unref(f);
    return 0;                                   /* the warnings come at exit */
}
