/*
 * examples/debug/never_awaited.c — the asyncio page's never-awaited
 * coroutine, in C.  Python:
 *
 *     async def test():
 *         print("never scheduled")
 *
 *     async def main():
 *         test()
 *
 *     asyncio.run(main())
 *
 * Run it plainly, then with URIO_DEBUG=1 to see where the coroutine was made.
 */
#include <stdio.h>
#include <urio.h>

static int test(void *arg, void **result)
{
    (void)arg;
    (void)result;
    printf("never scheduled\n");
    return 0;
}

static int main_task(void *arg, void **result)
{
    (void)arg;
    (void)result;
    URIO_CORO(test, NULL);      /* made, never awaited: the mistake */
    return 0;
}

int main(void)
{
    return urio_run(URIO_CORO(main_task, NULL), NULL, NULL) < 0;
}
