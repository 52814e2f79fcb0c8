/*
 * examples/debug/never_retrieved.c — the asyncio page's never-retrieved
 * exception, in C.  Python:
 *
 *     async def bug():
 *         raise Exception("not consumed")
 *
 *     async def main():
 *         asyncio.create_task(bug())
 *
 *     asyncio.run(main())
 *
 * The task's reference is dropped on the floor, as C programmers write a
 * fire-and-forget task; the loop reports it when it closes.  Run it with
 * URIO_DEBUG=1 to see where the task was created too.
 */
#include <urio.h>

static int bug(void *arg, void **result)
{
    (void)arg;
    (void)result;
    return urio_task_fail(-EIO, "not consumed");
}

static int main_task(void *arg, void **result)
{
    (void)arg;
    (void)result;
    urio_spawn(NULL, bug, NULL);    /* NULL: the running loop; the result is dropped */
    return 0;
}

int main(void)
{
    return urio_run(URIO_CORO(main_task, NULL), NULL, NULL) < 0;
}
