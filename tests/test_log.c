/*
 * test_log.c — the `urio` logger: level, handlers, the default handler's
 * line format, URIO_LOG_LEVEL (read in a fresh process), thread safety.
 */
#include "helpers.h"

#include <fcntl.h>
#include <regex.h>
#include <spawn.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* ---------------------------------------------------------------- */
/* A handler that keeps the last message                             */

struct last {
    int calls;
    int level;
    char *message;
    void *ud;
};

static void keep_last(int level, const char *message, void *ud)
{
    struct last *l = ud;
    l->calls++;
    l->level = level;
    l->ud = ud;
    free(l->message);
    l->message = strdup(message);
}

static void last_free(struct last *l)
{
    free(l->message);
    l->message = NULL;
}

/* ---------------------------------------------------------------- */
/* stderr capture: fd 2 goes to a temporary file while logging        */

struct capture {
    int saved;
    int fd;
};

static void capture_start(struct capture *c)
{
    char path[] = "/tmp/urio-test-log-XXXXXX";
    c->fd = mkstemp(path);
    assert_true(c->fd >= 0);
    unlink(path);
    c->saved = dup(STDERR_FILENO);
    assert_true(c->saved >= 0);
    assert_int_equal(dup2(c->fd, STDERR_FILENO), STDERR_FILENO);
}

/* Restores fd 2; returns what was written (malloc'd, NUL-terminated). */
static char *capture_end(struct capture *c)
{
    assert_int_equal(dup2(c->saved, STDERR_FILENO), STDERR_FILENO);
    close(c->saved);
    off_t n = lseek(c->fd, 0, SEEK_END);
    assert_true(n >= 0);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(pread(c->fd, buf, (size_t)n, 0), n);
    buf[n] = '\0';
    close(c->fd);
    return buf;
}

static bool matches(const char *pattern, const char *text)
{
    regex_t re;
    assert_int_equal(regcomp(&re, pattern, REG_EXTENDED | REG_NOSUB), 0);
    bool ok = regexec(&re, text, 0, NULL, 0) == 0;
    regfree(&re);
    return ok;
}

#define STAMP "[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}"

/* ---------------------------------------------------------------- */
/* Level                                                             */

/* First case: nothing has set the level yet (meson sets URIO_LOG_LEVEL=""). */
static void test_log_default_level_is_info(void **state)
{
    (void)state;
    const char *env = getenv("URIO_LOG_LEVEL");
    if (env != NULL && *env != '\0')
        skip();
    assert_int_equal(urio_log_get_level(), URIO_LOG_INFO);
    assert_true(urio__log_enabled(URIO_LOG_INFO));
    assert_false(urio__log_enabled(URIO_LOG_DEBUG));
}

static void test_log_set_get_level(void **state)
{
    (void)state;
    urio_log_set_level(URIO_LOG_WARNING);
    assert_int_equal(urio_log_get_level(), URIO_LOG_WARNING);
    urio_log_set_level(URIO_LOG_DEBUG);
    assert_int_equal(urio_log_get_level(), URIO_LOG_DEBUG);
    urio_log_set_level(35);
    assert_int_equal(urio_log_get_level(), 35);
    assert_true(urio__log_enabled(URIO_LOG_ERROR));
    assert_false(urio__log_enabled(URIO_LOG_WARNING));
    urio_log_set_level(URIO_LOG_INFO);
    assert_int_equal(urio_log_get_level(), URIO_LOG_INFO);
}

static void test_log_below_level_dropped(void **state)
{
    (void)state;
    struct last l = { 0 };
    urio_log_set_handler(keep_last, &l);
    urio_log_set_level(URIO_LOG_WARNING);
    urio_log(URIO_LOG_DEBUG, "debug %d", 1);
    urio_log(URIO_LOG_INFO, "info %d", 2);
    urio_log(29, "just below");
    assert_int_equal(l.calls, 0);
    urio_log(URIO_LOG_WARNING, "warning %d", 3);
    assert_int_equal(l.calls, 1);
    assert_string_equal(l.message, "warning 3");
    urio_log(URIO_LOG_CRITICAL, "critical");
    assert_int_equal(l.calls, 2);
    assert_int_equal(l.level, URIO_LOG_CRITICAL);

    /* The level filters the default handler too: nothing reaches stderr. */
    urio_log_set_handler(NULL, NULL);
    struct capture c;
    capture_start(&c);
    urio_log(URIO_LOG_INFO, "must not appear");
    char *out = capture_end(&c);
    assert_string_equal(out, "");
    free(out);

    urio_log_set_level(URIO_LOG_DEBUG);
    urio_log_set_handler(keep_last, &l);
    urio_log(URIO_LOG_DEBUG, "now visible");
    assert_int_equal(l.calls, 3);
    assert_int_equal(l.level, URIO_LOG_DEBUG);
    urio_log_set_level(URIO_LOG_INFO);
    urio_log_set_handler(NULL, NULL);
    last_free(&l);
}

/* ---------------------------------------------------------------- */
/* Handlers                                                          */

static void test_log_handler_receives_level_and_message(void **state)
{
    (void)state;
    struct last l = { 0 };
    urio_log_set_handler(keep_last, &l);
    urio_log(URIO_LOG_WARNING, "value %d of %s", 42, "answer");
    assert_int_equal(l.calls, 1);
    assert_int_equal(l.level, URIO_LOG_WARNING);
    assert_ptr_equal(l.ud, &l);
    assert_string_equal(l.message, "value 42 of answer");

    /* A trailing newline is not part of the message. */
    urio_log(URIO_LOG_ERROR, "with newline\n");
    assert_int_equal(l.level, URIO_LOG_ERROR);
    assert_string_equal(l.message, "with newline");

    /* Several lines stay several lines. */
    urio_log(URIO_LOG_INFO, "first\nsecond\nthird");
    assert_string_equal(l.message, "first\nsecond\nthird");
    urio_log(URIO_LOG_INFO, "%s", "");
    assert_int_equal(l.calls, 4);
    assert_string_equal(l.message, "");

    /* The test helpers' capture replaces this handler; it names levels. */
    test_log_capture();
    urio_log(URIO_LOG_WARNING, "to the capture");
    assert_int_equal(l.calls, 4);
    assert_log_contains("WARNING to the capture\n");
    test_log_release();
    last_free(&l);
}

static void test_log_null_handler_restores_default_format(void **state)
{
    (void)state;
    struct last l = { 0 };
    urio_log_set_handler(keep_last, &l);
    urio_log(URIO_LOG_INFO, "to the handler");
    urio_log_set_handler(NULL, &l);          /* ud is ignored with NULL */

    struct capture c;
    capture_start(&c);
    urio_log(URIO_LOG_WARNING, "hello %s", "world");
    urio_log(URIO_LOG_INFO, "trailing newline\n");
    urio_log(URIO_LOG_ERROR, "e");
    urio_log(URIO_LOG_CRITICAL, "c");
    char *out = capture_end(&c);
    assert_int_equal(l.calls, 1);            /* the old handler got nothing more */
    if (!matches("^" STAMP " WARNING urio: hello world\n"
                 STAMP " INFO urio: trailing newline\n"
                 STAMP " ERROR urio: e\n"
                 STAMP " CRITICAL urio: c\n$", out))
        fail_msg("default handler wrote:\n%s", out);
    free(out);
    last_free(&l);
}

static void test_log_default_multiline(void **state)
{
    (void)state;
    struct capture c;
    capture_start(&c);
    urio_log(URIO_LOG_ERROR, "Something failed\n  File \"a.c\", line 1, in f\n  more");
    char *out = capture_end(&c);
    if (!matches("^" STAMP " ERROR urio: Something failed\n"
                 "  File \"a\\.c\", line 1, in f\n"
                 "  more\n$", out))
        fail_msg("default handler wrote:\n%s", out);
    free(out);
}

static void test_log_long_message_not_truncated(void **state)
{
    (void)state;
    enum { N = 10 * 1024 };
    char *big = malloc(N + 1);
    assert_non_null(big);
    for (int i = 0; i < N; i++)
        big[i] = (char)('a' + i % 26);
    big[N] = '\0';

    struct last l = { 0 };
    urio_log_set_handler(keep_last, &l);
    urio_log(URIO_LOG_WARNING, "<%s>", big);
    assert_int_equal(l.calls, 1);
    assert_int_equal(strlen(l.message), N + 2);
    assert_int_equal(l.message[0], '<');
    assert_memory_equal(l.message + 1, big, N);
    assert_int_equal(l.message[N + 1], '>');
    last_free(&l);

    /* The default handler writes it whole. */
    urio_log_set_handler(NULL, NULL);
    struct capture c;
    capture_start(&c);
    urio_log(URIO_LOG_WARNING, "<%s>", big);
    char *out = capture_end(&c);
    const char *p = strstr(out, " WARNING urio: <");
    assert_non_null(p);
    p += strlen(" WARNING urio: <");
    assert_true(strlen(p) == N + 2);
    assert_memory_equal(p, big, N);
    assert_string_equal(p + N, ">\n");
    free(out);
    free(big);
}

static void test_log_level_name(void **state)
{
    (void)state;
    assert_string_equal(urio_log_level_name(URIO_LOG_DEBUG), "DEBUG");
    assert_string_equal(urio_log_level_name(URIO_LOG_INFO), "INFO");
    assert_string_equal(urio_log_level_name(URIO_LOG_WARNING), "WARNING");
    assert_string_equal(urio_log_level_name(URIO_LOG_ERROR), "ERROR");
    assert_string_equal(urio_log_level_name(URIO_LOG_CRITICAL), "CRITICAL");
    /* include/urio/log.h: other levels are named "Level 15" style. */
    assert_string_equal(urio_log_level_name(15), "Level 15");
    assert_string_equal(urio_log_level_name(0), "Level 0");
    assert_string_equal(urio_log_level_name(99), "Level 99");
}

/* ---------------------------------------------------------------- */
/* URIO_LOG_LEVEL, read once: each value in a fresh process           */

/* Runs this program again with URIO_LOG_LEVEL=value (NULL: unset) and
 * returns the level the child read. */
static int child_level(const char *value)
{
    size_t n = 0;
    while (environ[n])
        n++;
    char **env = calloc(n + 2, sizeof *env);
    assert_non_null(env);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "URIO_LOG_LEVEL=", 15) != 0)
            env[k++] = environ[i];
    char var[64];
    if (value) {
        snprintf(var, sizeof var, "URIO_LOG_LEVEL=%s", value);
        env[k++] = var;
    }
    env[k] = NULL;

    int fds[2];
    assert_int_equal(pipe(fds), 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO);
    posix_spawn_file_actions_addclose(&fa, fds[0]);
    posix_spawn_file_actions_addclose(&fa, fds[1]);
    char *argv[] = { "test_log", "--child-level", NULL };
    pid_t pid;
    assert_int_equal(posix_spawn(&pid, "/proc/self/exe", &fa, NULL, argv, env), 0);
    posix_spawn_file_actions_destroy(&fa);
    free(env);
    close(fds[1]);
    char buf[64];
    size_t len = 0;
    ssize_t r;
    while ((r = read(fds[0], buf + len, sizeof buf - 1 - len)) > 0)
        len += (size_t)r;
    close(fds[0]);
    buf[len] = '\0';
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    int level = -1;
    assert_int_equal(sscanf(buf, "%d", &level), 1);
    return level;
}

static void test_log_env_level(void **state)
{
    (void)state;
    test_needs_exec_self();
    static const struct { const char *value; int level; } cases[] = {
        { NULL, URIO_LOG_INFO },
        { "", URIO_LOG_INFO },
        { "debug", URIO_LOG_DEBUG },
        { "info", URIO_LOG_INFO },
        { "warning", URIO_LOG_WARNING },
        { "WARNING", URIO_LOG_WARNING },
        { "Error", URIO_LOG_ERROR },
        { "error", URIO_LOG_ERROR },
        { "critical", URIO_LOG_CRITICAL },
        { "25", 25 },
        { "0", 0 },
        { "10", URIO_LOG_DEBUG },
        { "garbage", URIO_LOG_INFO },
        { "25x", URIO_LOG_INFO },
        { "-5", URIO_LOG_INFO },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int got = child_level(cases[i].value);
        if (got != cases[i].level)
            fail_msg("URIO_LOG_LEVEL=%s gives %d, expected %d",
                     cases[i].value ? cases[i].value : "(unset)", got, cases[i].level);
    }
}

/* The env var is read once: changing it later changes nothing. */
static void test_log_env_read_once(void **state)
{
    (void)state;
    struct last l = { 0 };
    urio_log_set_handler(keep_last, &l);
    int before = urio_log_get_level();
    setenv("URIO_LOG_LEVEL", "critical", 1);
    assert_int_equal(urio_log_get_level(), before);
    urio_log(URIO_LOG_ERROR, "x");          /* a message does not reread it either */
    assert_int_equal(l.calls, 1);
    assert_int_equal(urio_log_get_level(), before);
    setenv("URIO_LOG_LEVEL", "", 1);
    urio_log_set_handler(NULL, NULL);
    last_free(&l);
}

/* ---------------------------------------------------------------- */
/* Threads                                                           */

enum { THREADS = 4, PER_THREAD = 10000 };

struct counting {
    atomic_int total;
    atomic_int bad;
    int next[THREADS];          /* next expected sequence number per thread */
    pthread_mutex_t mu;
};

static void counting_handler(int level, const char *message, void *ud)
{
    struct counting *c = ud;
    int t, i;
    if (level != URIO_LOG_WARNING || sscanf(message, "thread %d message %d", &t, &i) != 2 ||
        t < 0 || t >= THREADS) {
        atomic_fetch_add(&c->bad, 1);
        return;
    }
    pthread_mutex_lock(&c->mu);
    if (c->next[t] != i)
        atomic_fetch_add(&c->bad, 1);
    c->next[t] = i + 1;
    pthread_mutex_unlock(&c->mu);
    atomic_fetch_add(&c->total, 1);
}

static void *log_thread(void *arg)
{
    int t = (int)(intptr_t)arg;
    for (int i = 0; i < PER_THREAD; i++)
        urio_log(URIO_LOG_WARNING, "thread %d message %d", t, i);
    return NULL;
}

static void run_log_threads(void)
{
    pthread_t th[THREADS];
    for (int t = 0; t < THREADS; t++)
        assert_int_equal(pthread_create(&th[t], NULL, log_thread, (void *)(intptr_t)t), 0);
    for (int t = 0; t < THREADS; t++)
        assert_int_equal(pthread_join(th[t], NULL), 0);
}

static void test_log_threads_counting_handler(void **state)
{
    (void)state;
    struct counting c = { .mu = PTHREAD_MUTEX_INITIALIZER };
    urio_log_set_handler(counting_handler, &c);
    run_log_threads();
    urio_log_set_handler(NULL, NULL);
    assert_int_equal(atomic_load(&c.bad), 0);
    assert_int_equal(atomic_load(&c.total), THREADS * PER_THREAD);
    for (int t = 0; t < THREADS; t++)
        assert_int_equal(c.next[t], PER_THREAD);
}

/* The pipe's reader: collects everything until EOF. */
struct drain {
    int fd;
    char *buf;
    size_t len, cap;
};

static void *drain_thread(void *arg)
{
    struct drain *d = arg;
    for (;;) {
        if (d->cap - d->len < 65536) {
            d->cap = d->cap * 2 + 65536;
            d->buf = realloc(d->buf, d->cap);
            if (d->buf == NULL)
                abort();
        }
        ssize_t r = read(d->fd, d->buf + d->len, d->cap - d->len - 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        d->len += (size_t)r;
    }
    d->buf[d->len] = '\0';
    return NULL;
}

static void test_log_threads_default_handler_lines_intact(void **state)
{
    (void)state;
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    struct drain d = { .fd = fds[0] };
    pthread_t reader;
    assert_int_equal(pthread_create(&reader, NULL, drain_thread, &d), 0);
    int saved = dup(STDERR_FILENO);
    assert_true(saved >= 0);
    assert_int_equal(dup2(fds[1], STDERR_FILENO), STDERR_FILENO);
    close(fds[1]);

    urio_log_set_handler(NULL, NULL);
    run_log_threads();

    /* Restoring fd 2 closes the pipe's last write end: the reader sees EOF. */
    assert_int_equal(dup2(saved, STDERR_FILENO), STDERR_FILENO);
    close(saved);
    assert_int_equal(pthread_join(reader, NULL), 0);
    close(fds[0]);

    regex_t re;
    assert_int_equal(regcomp(&re, "^" STAMP " WARNING urio: thread ([0-9]) message ([0-9]+)$",
                             REG_EXTENDED), 0);
    int next[THREADS] = { 0 };
    int lines = 0;
    char *save = NULL;
    for (char *line = strtok_r(d.buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        regmatch_t m[3];
        if (regexec(&re, line, 3, m, 0) != 0)
            fail_msg("mangled line %d: \"%s\"", lines, line);
        int t = atoi(line + m[1].rm_so);
        int i = atoi(line + m[2].rm_so);
        assert_true(t < THREADS);
        assert_int_equal(i, next[t]);
        next[t] = i + 1;
        lines++;
    }
    regfree(&re);
    assert_int_equal(lines, THREADS * PER_THREAD);
    for (int t = 0; t < THREADS; t++)
        assert_int_equal(next[t], PER_THREAD);
    free(d.buf);
}

/* A handler may log (and change the handler) without deadlocking. */
static int reentrant_depth;
static struct last reentrant_last;
static void reentrant_handler(int level, const char *message, void *ud)
{
    (void)ud;
    if (reentrant_depth++ == 0) {
        urio_log(level, "nested: %s", message);
        urio_log_set_handler(keep_last, &reentrant_last);
    }
}

static void test_log_handler_may_log(void **state)
{
    (void)state;
    reentrant_depth = 0;
    reentrant_last = (struct last){ 0 };
    urio_log_set_handler(reentrant_handler, NULL);
    urio_log(URIO_LOG_WARNING, "outer");
    assert_int_equal(reentrant_depth, 2);
    urio_log(URIO_LOG_WARNING, "after");
    assert_int_equal(reentrant_last.calls, 1);
    assert_string_equal(reentrant_last.message, "after");
    urio_log_set_handler(NULL, NULL);
    last_free(&reentrant_last);
}

int main(int argc, char **argv)
{
    /* The child of test_log_env_level: report the level read from the env. */
    if (argc > 1 && strcmp(argv[1], "--child-level") == 0) {
        printf("%d\n", urio_log_get_level());
        return 0;
    }
    const struct CMUnitTest tests[] = {
        URIO_TEST(test_log_default_level_is_info),     /* first: before any set_level */
        URIO_TEST(test_log_set_get_level),
        URIO_TEST(test_log_below_level_dropped),
        URIO_TEST(test_log_handler_receives_level_and_message),
        URIO_TEST(test_log_null_handler_restores_default_format),
        URIO_TEST(test_log_default_multiline),
        URIO_TEST(test_log_long_message_not_truncated),
        URIO_TEST(test_log_level_name),
        URIO_TEST(test_log_env_level),
        URIO_TEST(test_log_env_read_once),
        URIO_TEST(test_log_threads_counting_handler),
        URIO_TEST(test_log_threads_default_handler_lines_intact),
        URIO_TEST(test_log_handler_may_log),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
