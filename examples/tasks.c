/*
 * tasks.c — tasks on their own stacks: spawn, await, sleep, a blocking job
 * in the thread pool, a task group whose first failure cancels the rest.
 *
 * Prints (tests/meson.build checks it):
 *   fetch a: done
 *   fetch b: done
 *   results: a b
 *   hash of 'urio' computed off the loop: 447
 *   group: child 'fetch' (created at ...) failed: ENOENT (No such file or directory): no such name: ''
 *   slow sibling: cancelled
 */
#include <stdio.h>
#include <string.h>
#include <urio.h>

#define MS 1000000ull

static int fetch(void *arg, void **result)
{
    const char *name = arg;
    int err = urio_sleep((strlen(name) + 1) * MS);  /* cancelled: -ECANCELED */
    if (err < 0)
        return err;
    if (*name == '\0')
        return urio_task_fail(-ENOENT, "no such name: '%s'", name);
    printf("fetch %s: done\n", name);
    *result = (void *)name;
    return 0;
}

static void *hash(void *arg)    /* blocking work: runs on a worker thread */
{
    unsigned h = 0;
    for (const char *p = arg; *p; p++)
        h += (unsigned char)*p;
    return (void *)(uintptr_t)h;
}

static int slow(void *arg, void **result)
{
    (void)result;
    int err = urio_sleep(10000 * MS);
    *(int *)arg = err;
    return err;
}

static int main_task(void *arg, void **result)
{
    (void)arg;
    (void)result;
    urio_loop_t *loop = urio_loop_current();

    urio_future_t *t[2] = { urio_spawn(loop, fetch, "a"), urio_spawn(loop, fetch, "b") };
    void *r[2];
    if (urio_gather(t, 2, r, NULL) == 0)
        printf("results: %s %s\n", (char *)r[0], (char *)r[1]);
    urio_future_unref(t[0]);
    urio_future_unref(t[1]);

    urio_future_t *job = urio_run_in_executor(loop, NULL, hash, "urio");
    void *h;
    if (urio_await(job, &h) == 0)
        printf("hash of 'urio' computed off the loop: %u\n", (unsigned)(uintptr_t)h);
    urio_future_unref(job);

    int slow_ret = 0;
    urio_task_group_t *g;
    urio_task_group_new(&g);
    urio_task_group_spawn(g, URIO_CORO(slow, &slow_ret));
    urio_task_group_spawn(g, URIO_CORO(fetch, ""));
    if (urio_task_group_wait(g) < 0) {
        /* The message names the file and line; print it without them. */
        const char *msg = urio_task_group_error_message(g);
        const char *tail = strstr(msg, ") failed:");
        printf("group: child 'fetch' (created at ...%s\n", tail ? tail : msg);
    }
    urio_task_group_free(g);
    printf("slow sibling: %s\n", slow_ret == -ECANCELED ? "cancelled" : "not cancelled");
    return 0;
}

int main(void)
{
    int err = urio_run(URIO_CORO(main_task, NULL), NULL, NULL);
    if (err < 0)
        fprintf(stderr, "urio_run: %s\n", urio_strerror(err));
    return err < 0;
}
