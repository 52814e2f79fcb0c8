/*
 * debug.c — stacks and names for reports.
 *
 * Capturing a stack is cheap (backtrace() walks frame records); naming it is
 * not, so symbolisation happens only when a report is printed: libdw gives
 * function, file and line where the build has it and the binary has debug
 * information; dladdr gives at least the exported symbol names.
 */
#include "common.h"

#include <dlfcn.h>
#include <execinfo.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <limits.h>
#include <time.h>
#include <sys/uio.h>
#include <unistd.h>

#if URIO_HAVE_LIBDW
#include <dwarf.h>
#include <elfutils/libdwfl.h>
#endif

/* ------------------------------------------------------------------ */
/* Ticks: a cycle counter for timing callbacks                          */

uint64_t urio__ticks_mult;

/* True if the kernel's own clock runs on the cycle counter (so it is constant and synchronised). */
static bool counter_trusted(void)
{
#if defined(__x86_64__) || defined(__aarch64__)
    FILE *f = fopen("/sys/devices/system/clocksource/clocksource0/current_clocksource", "re");
    char name[32] = "";
    if (f) {
        if (fgets(name, sizeof name, f) == NULL)
            name[0] = '\0';
        fclose(f);
    }
#if defined(__x86_64__)
    return strncmp(name, "tsc", 3) == 0;
#else
    return strncmp(name, "arch_sys_counter", 16) == 0;
#endif
#else
    return false;
#endif
}

static void calibrate(void)
{
    if (!counter_trusted())
        return;
    uint64_t mult = 0;
#if defined(__x86_64__) || defined(__aarch64__)
    /* Two readings of both, 2 ms apart: enough for the few-percent accuracy reports need. */
    urio__ticks_mult = 1;       /* ticks are the counter from here on */
    uint64_t n0 = urio__now(), c0 = urio__ticks();
    struct timespec ts = { 0, 2 * 1000000 };
    nanosleep(&ts, NULL);
    uint64_t n1 = urio__now(), c1 = urio__ticks();
    __extension__ typedef unsigned __int128 u128;
    if (c1 > c0 && n1 > n0)
        mult = (uint64_t)(((u128)(n1 - n0) << 32) / (c1 - c0));
#endif
    urio__ticks_mult = mult;    /* 0 (the clock) if the measure failed */
}

void urio__ticks_calibrate(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, calibrate);
}

int urio__parse_bool(const char *v)
{
    static const char *const on[] = { "1", "true", "yes", "on" };
    static const char *const off[] = { "0", "false", "no", "off" };
    if (v == NULL || *v == '\0')
        return -1;
    for (size_t i = 0; i < sizeof on / sizeof on[0]; i++) {
        if (strcasecmp(v, on[i]) == 0)
            return 1;
        if (strcasecmp(v, off[i]) == 0)
            return 0;
    }
    return -2;
}

bool urio__debug_default(void)
{
    const char *v = getenv("URIO_DEBUG");
    int on = urio__parse_bool(v);
    if (on == -2)
        urio__log(URIO_LOG_WARNING, "URIO_DEBUG=%s is not understood (use 1 to turn debug "
                  "mode on, 0 to turn it off): ignored", v);
    if (on >= 0)
        return on == 1;
    return URIO_DEBUG_BUILD;
}

#if URIO_ASSERTS
void urio__assert_failed(const char *cond, const char *file, int line, const char *fn)
{
    urio__log(URIO_LOG_CRITICAL, "%s:%d: %s(): internal invariant broken: %s; aborting",
              file, line, fn, cond);
    URIO_COVERAGE_FLUSH();
    abort();        /* GCOVR_EXCL_LINE: what runs after the flush is never counted */
}
#endif

/* Set by the task layer: the creation stack of the task running now, or NULL. */
const urio__backtrace_t *(*urio__backtrace_parent)(void);

_Thread_local volatile sig_atomic_t urio__tls_unwinding;

__attribute__((noinline)) void urio__backtrace_capture(urio__backtrace_t *st, int skip, bool chain)
{
    void *frames[URIO__BACKTRACE_DEPTH + 16];
    urio__tls_unwinding = 1;        /* the stall signal's handler must not unwind in here */
    int n = backtrace(frames, (int)(sizeof frames / sizeof frames[0]));
    urio__tls_unwinding = 0;
    /*
     * Find our caller's frame by its return address rather than counting:
     * sanitizers' backtrace() interceptors add frames of their own.
     */
    void *caller = __builtin_return_address(0);
    int first = 1;
    for (int i = 0; i < n; i++) {
        if (frames[i] == caller) {
            first = i;
            break;
        }
    }
    first += skip;
    st->n = 0;
    for (int i = first; i < n && st->n < URIO__BACKTRACE_DEPTH; i++)
        st->frames[st->n++] = frames[i];
    /*
     * In a task, the stack ends at the task's own first frame: what came
     * before is where the task was created.  Chain that in, so a report
     * reaches main() (or urio_run) as Python's does.
     */
    const urio__backtrace_t *parent = chain && urio__backtrace_parent ? urio__backtrace_parent()
                                                                      : NULL;
    for (int i = 0; parent != NULL && i < parent->n && st->n < URIO__BACKTRACE_DEPTH; i++)
        st->frames[st->n++] = parent->frames[i];
}

/*
 * Symbolisation: one libdw session for the process, made at the first
 * report and kept (libdw's debuginfo lookup loads libraries whose state
 * would otherwise be lost, and leaked, at each report), refreshed when an
 * address falls outside every module it knows (a library loaded since).
 * libdw is not thread-safe: the session is used under a mutex.  A child of
 * fork() whose parent was symbolising in another thread at the fork drops
 * the session, mid-use (leaked), and starts its own at its first report.
 */
static pthread_mutex_t g_sym_mu = PTHREAD_MUTEX_INITIALIZER;
#if URIO_HAVE_LIBDW
static Dwfl *g_dwfl;                 /* guarded by g_sym_mu */
#endif

#if URIO_HAVE_LIBDW
/* A session a forked child dropped (maybe mid-update): kept, never used or freed. */
static Dwfl *volatile g_dwfl_dropped;     /* volatile: written only, yet must stay */
#endif

static void sym_after_fork(bool held)
{
#if URIO_HAVE_LIBDW
    if (held) {
        g_dwfl_dropped = g_dwfl;    /* reachable: leak checkers need not flag it */
        g_dwfl = NULL;
    }
#else
    (void)held;
#endif
}

__attribute__((constructor)) static void sym_fork_lock(void)
{
    urio__fork_lock_add("symbolizer", &g_sym_mu, sym_after_fork);
}

#if URIO_HAVE_LIBDW

/* This process's modules, as a libdw session finds them (and their debug information). */
static const Dwfl_Callbacks g_proc_callbacks = {
    .find_elf = dwfl_linux_proc_find_elf,
    .find_debuginfo = dwfl_standard_find_debuginfo,
};

/* (Re)reads the modules mapped now into dwfl.  Returns: false on failure. */
static bool report_modules(Dwfl *dwfl)
{
    dwfl_report_begin(dwfl);
    return dwfl_linux_proc_report(dwfl, getpid()) == 0 && dwfl_report_end(dwfl, NULL, NULL) == 0;
}

static Dwfl *dwfl_session(bool refresh)
{
    if (g_dwfl == NULL)
        g_dwfl = dwfl_begin(&g_proc_callbacks);
    else if (!refresh)
        return g_dwfl;
    if (g_dwfl != NULL && !report_modules(g_dwfl)) {
        dwfl_end(g_dwfl);
        g_dwfl = NULL;
    }
    return g_dwfl;
}
#endif

/*
 * Unwinding a suspended stack: a libdw session of its own (a session's
 * unwinding state, once attached, belongs to one "process" for good), made
 * at the first walk and kept, with thread callbacks that describe one
 * thread whose registers are the saved ones and whose memory is ours, read
 * through process_vm_readv outside the stack so that a wild address fails
 * instead of faulting.  Used under its own mutex: the walk in progress is
 * what the callbacks read.
 */
static pthread_mutex_t g_unwind_mu = PTHREAD_MUTEX_INITIALIZER;
#if URIO_HAVE_LIBDW
typedef struct unwind_walk {
    const urio__unwind_regs_t *regs;
    urio__backtrace_t *bt;
    bool given;                  /* next_thread: the one thread handed out */
} unwind_walk_t;

static Dwfl *g_unwind_dwfl;          /* guarded by g_unwind_mu */
static unwind_walk_t *g_unwind_walk; /* guarded by g_unwind_mu: the walk in progress */
static Dwfl *volatile g_unwind_dropped;  /* a forked child's: kept reachable, never used */

static pid_t unwind_next_thread(Dwfl *dwfl, void *arg, void **thread_argp)
{
    (void)dwfl;
    (void)arg;
    if (g_unwind_walk->given)
        return 0;
    g_unwind_walk->given = true;
    *thread_argp = g_unwind_walk;
    return getpid();
}

static bool unwind_memory_read(Dwfl *dwfl, Dwarf_Addr addr, Dwarf_Word *result, void *arg)
{
    (void)dwfl;
    (void)arg;
    const urio__unwind_regs_t *r = g_unwind_walk->regs;
    if (addr >= r->lo && addr + sizeof *result <= r->hi) {
        memcpy(result, (const void *)(uintptr_t)addr, sizeof *result);
        return true;
    }
    /* Elsewhere (CFI expressions may read module data): checked by the kernel. */
    struct iovec local = { result, sizeof *result };
    struct iovec remote = { (void *)(uintptr_t)addr, sizeof *result };
    return process_vm_readv(getpid(), &local, 1, &remote, 1, 0) == (ssize_t)sizeof *result;
}

static bool unwind_set_initial_registers(Dwfl_Thread *thread, void *arg)
{
    const unwind_walk_t *w = arg;
    for (int i = 0; i < w->regs->n; i++) {
        Dwarf_Word v = w->regs->reg[i].value;
        if (!dwfl_thread_state_registers(thread, (int)w->regs->reg[i].regno, 1, &v))
            return false;
    }
    dwfl_thread_state_register_pc(thread, w->regs->pc);
    return true;
}

static int unwind_frame(Dwfl_Frame *frame, void *arg)
{
    unwind_walk_t *w = arg;
    Dwarf_Addr pc;
    if (!dwfl_frame_pc(frame, &pc, NULL) || pc == 0)
        return DWARF_CB_ABORT;
    w->bt->frames[w->bt->n++] = (void *)(uintptr_t)pc;
    return w->bt->n < URIO__BACKTRACE_DEPTH ? DWARF_CB_OK : DWARF_CB_ABORT;
}

static Dwfl *unwind_session(void)
{
    static const Dwfl_Thread_Callbacks thread_callbacks = {
        .next_thread = unwind_next_thread,
        .memory_read = unwind_memory_read,
        .set_initial_registers = unwind_set_initial_registers,
    };
    if (g_unwind_dwfl != NULL)
        return g_unwind_dwfl;
    Dwfl *dwfl = dwfl_begin(&g_proc_callbacks);
    if (dwfl == NULL)
        return NULL;
    if (!report_modules(dwfl) || !dwfl_attach_state(dwfl, NULL, getpid(), &thread_callbacks, NULL)) {
        dwfl_end(dwfl);
        return NULL;
    }
    return g_unwind_dwfl = dwfl;
}
#endif

static void unwind_after_fork(bool held)
{
#if URIO_HAVE_LIBDW
    /* The session names the parent's pid: the child makes its own, held or not. */
    if (held)
        g_unwind_dropped = g_unwind_dwfl;
    else if (g_unwind_dwfl != NULL)
        dwfl_end(g_unwind_dwfl);
    g_unwind_dwfl = NULL;
#else
    (void)held;
#endif
}

__attribute__((constructor)) static void unwind_fork_lock(void)
{
    urio__fork_lock_add("unwinder", &g_unwind_mu, unwind_after_fork);
}

int urio__backtrace_unwind(urio__backtrace_t *bt, const urio__unwind_regs_t *regs)
{
    bt->n = 0;
#if URIO_HAVE_LIBDW
    pthread_mutex_lock(&g_unwind_mu);
    Dwfl *dwfl = unwind_session();
    int ret = -EIO;
    if (dwfl != NULL) {
        unwind_walk_t w = { .regs = regs, .bt = bt };
        g_unwind_walk = &w;
        /* Ends at the stack's first frame (no return address) or at DEPTH. */
        (void)dwfl_getthread_frames(dwfl, getpid(), unwind_frame, &w);
        g_unwind_walk = NULL;
        ret = bt->n;
    }
    pthread_mutex_unlock(&g_unwind_mu);
    return ret;
#else
    (void)regs;
    return -ENOTSUP;
#endif
}

/* Joins a source path to the directory it was compiled in and drops "." and ".." steps. */
static void absolute_path(const char *dir, const char *file, char *out, size_t n)
{
    char joined[PATH_MAX];
    if (file[0] == '/' || dir == NULL)
        snprintf(joined, sizeof joined, "%s", file);
    else
        snprintf(joined, sizeof joined, "%s/%s", dir, file);
    /* Components onto a stack; ".." pops. */
    const char *parts[256];
    size_t lens[256], np = 0;
    for (const char *p = joined; *p;) {
        while (*p == '/')
            p++;
        const char *q = p;
        while (*q && *q != '/')
            q++;
        size_t len = (size_t)(q - p);
        if (len == 0 || (len == 1 && p[0] == '.')) {
            /* nothing */
        } else if (len == 2 && p[0] == '.' && p[1] == '.') {
            if (np > 0)
                np--;
        } else if (np < 256) {
            parts[np] = p;
            lens[np++] = len;
        }
        p = q;
    }
    size_t at = 0;
    for (size_t i = 0; i < np && at + 1 < n; i++) {
        int w = snprintf(out + at, n - at, "/%.*s", (int)lens[i], parts[i]);
        if (w < 0)
            break;
        at += (size_t)w;
    }
    if (at == 0)
        snprintf(out, n, "%s", file);
}

typedef struct frame_info {
    const char *fn;
    char fnbuf[160];             /* fn without a compiler's clone suffix */
    char file[PATH_MAX];
    int line;
} frame_info_t;

/* "crunch.constprop.0", "f.isra.0", "g.part.1", "h.cold": the function as written. */
static void strip_clone_suffix(frame_info_t *fi)
{
    const char *dot = fi->fn ? strchr(fi->fn, '.') : NULL;
    if (dot == NULL || dot == fi->fn)
        return;
    snprintf(fi->fnbuf, sizeof fi->fnbuf, "%.*s", (int)(dot - fi->fn), fi->fn);
    fi->fn = fi->fnbuf;
}

/* Names addr (under g_sym_mu).  Returns: true if it found a name or a file. */
static bool sym_lookup(uintptr_t addr, frame_info_t *fi)
{
    fi->fn = NULL;
    fi->file[0] = '\0';
    fi->line = 0;
#if URIO_HAVE_LIBDW
    Dwfl *dwfl = dwfl_session(false);
    Dwfl_Module *m = dwfl ? dwfl_addrmodule(dwfl, addr) : NULL;
    if (dwfl && m == NULL && (dwfl = dwfl_session(true)) != NULL)
        m = dwfl_addrmodule(dwfl, addr);
    if (m) {
        fi->fn = dwfl_module_addrname(m, addr);
        /*
         * Only a compile unit that covers addr may name its line: for code
         * built without debug information (a program compiled without -g
         * linked with urio), libdw would give the nearest line of another unit.
         */
        Dwarf_Addr bias;
        Dwfl_Line *l = dwfl_module_addrdie(m, addr, &bias) ? dwfl_module_getsrc(m, addr) : NULL;
        const char *file = l ? dwfl_lineinfo(l, NULL, &fi->line, NULL, NULL, NULL) : NULL;
        if (file)
            absolute_path(dwfl_line_comp_dir(l), file, fi->file, sizeof fi->file);
    }
#endif
    if (fi->fn == NULL) {
        Dl_info info;
        if (dladdr((void *)addr, &info) && info.dli_sname)
            fi->fn = info.dli_sname;
    }
    strip_clone_suffix(fi);
    return fi->fn != NULL || fi->file[0] != '\0';
}

/* The C runtime's and urio's own plumbing below a program's frames: noise in a report. */
static bool plumbing_frame(const char *fn)
{
    static const char *const names[] = { "_start", "__libc_start_main", "__libc_start_call_main",
                                         "start_thread", "clone", "clone3", "task_entry",
                                         "urio__ctx_trampoline" };
    if (fn == NULL)
        return false;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        size_t n = strlen(names[i]);
        if (strncmp(fn, names[i], n) == 0 && (fn[n] == '\0' || fn[n] == '@' || fn[n] == '.'))
            return true;
    }
    return false;
}

/* Line `line` of file, stripped, into out ("" if it cannot be read). */
static void source_line(const char *file, int line, char *out, size_t n)
{
    out[0] = '\0';
    FILE *f = line > 0 ? fopen(file, "re") : NULL;
    if (f == NULL)
        return;
    char buf[512];
    for (int k = 1; fgets(buf, sizeof buf, f) != NULL; k++) {
        size_t len = strlen(buf);
        bool whole = len > 0 && buf[len - 1] == '\n';
        if (k == line) {
            char *p = buf;
            while (*p == ' ' || *p == '\t')
                p++;
            len = strlen(p);
            while (len > 0 && (p[len - 1] == '\n' || p[len - 1] == '\r' || p[len - 1] == ' '))
                p[--len] = '\0';
            snprintf(out, n, "%s", p);
            break;
        }
        while (!whole && fgets(buf, sizeof buf, f) != NULL) {   /* the rest of a long line */
            len = strlen(buf);
            whole = len > 0 && buf[len - 1] == '\n';
        }
    }
    fclose(f);
}

/* A growing string for a report. */
typedef struct text {
    char *s;
    size_t len, cap;
    bool failed;
} text_t;

static void text_add(text_t *t, const char *fmt, ...) URIO_PRINTF(2, 3);
static void text_add(text_t *t, const char *fmt, ...)
{
    if (t->failed)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int w = vsnprintf(t->s ? t->s + t->len : NULL, t->s ? t->cap - t->len : 0, fmt, ap);
        va_end(ap);
        if (w < 0) {
            t->failed = true;
            return;
        }
        if (t->s && (size_t)w < t->cap - t->len) {
            t->len += (size_t)w;
            return;
        }
        size_t cap = (t->cap + (size_t)w + 1) * 2;
        char *s = urio__realloc(t->s, cap);
        if (s == NULL) {
            t->failed = true;
            return;
        }
        t->s = s;
        t->cap = cap;
    }
}

static char *text_done(text_t *t)
{
    if (t->failed) {
        urio__free(t->s);
        return NULL;
    }
    return t->s;
}

/* One frame, Python's way: File "...", line N, in fn / the source line. */
static void add_frame(text_t *t, const char *fn, const char *file, int line, const void *pc)
{
    if (file[0] == '\0') {
        text_add(t, "\n  File \"??\", in %s [%p]", fn ? fn : "??", pc);
        return;
    }
    text_add(t, "\n  File \"%s\", line %d, in %s", file, line, fn ? fn : "??");
    char src[256];
    source_line(file, line, src, sizeof src);
    if (src[0])
        text_add(t, "\n    %s", src);
}

static bool site_path(const urio_site_t *site, char *out, size_t n);

char *urio__backtrace_format_site(const urio__backtrace_t *st, const urio_site_t *site,
                                  const char *header)
{
    text_t t = { 0 };
    text_add(&t, "%s", header);
    const char *last_fn = NULL;
    pthread_mutex_lock(&g_sym_mu);
    /* Most recent call last, as Python prints it. */
    for (int i = st->n - 1; i >= 0; i--) {
        /* A return address points after the call: look up the call itself. */
        uintptr_t pc = (uintptr_t)st->frames[i] - 1;
        frame_info_t fi;
        sym_lookup(pc, &fi);
        if (plumbing_frame(fi.fn))
            continue;
        add_frame(&t, fi.fn, fi.file, fi.line, st->frames[i]);
        last_fn = fi.fn;
    }
    pthread_mutex_unlock(&g_sym_mu);
    /*
     * The call's own site is the innermost frame; a stack can lack it when
     * the call was a tail call (`return urio_task_fail(...)`).
     */
    if (site != NULL && site->name != NULL && (last_fn == NULL || strcmp(last_fn, site->name))) {
        char path[PATH_MAX];
        site_path(site, path, sizeof path);
        add_frame(&t, site->name, path, site->line, NULL);
    }
    return text_done(&t);
}

char *urio__backtrace_format(const urio__backtrace_t *st, const char *header)
{
    return urio__backtrace_format_site(st, NULL, header);
}

/*
 * A site's file as a path to show: absolute if the compiler's path (relative
 * to where it ran) names a file from here, else as given.  Returns: true if
 * the file is there.
 */
#if URIO_HAVE_LIBDW
/*
 * The directories the process's code was compiled in (DW_AT_comp_dir of
 * every unit with debug information), collected once: a relative __FILE__
 * is relative to one of them, whatever the program's working directory.
 */
#define MAX_COMP_DIRS 16
static char *g_comp_dirs[MAX_COMP_DIRS];    /* guarded by g_sym_mu */
static int g_ncomp_dirs = -1;               /* -1: not collected yet */

static int collect_comp_dirs(Dwfl_Module *m, void **ud, const char *name, Dwarf_Addr start,
                             void *arg)
{
    (void)ud;
    (void)name;
    (void)start;
    (void)arg;
    Dwarf_Addr bias;
    Dwarf *dw = dwfl_module_getdwarf(m, &bias);
    Dwarf_Off off = 0, next;
    size_t hsize;
    while (dw != NULL && g_ncomp_dirs < MAX_COMP_DIRS &&
           dwarf_nextcu(dw, off, &next, &hsize, NULL, NULL, NULL) == 0) {
        Dwarf_Die cu;
        Dwarf_Attribute at;
        const char *dir = dwarf_offdie(dw, off + hsize, &cu) ? dwarf_formstring(
            dwarf_attr(&cu, DW_AT_comp_dir, &at)) : NULL;
        off = next;
        bool known = dir == NULL;
        for (int i = 0; !known && i < g_ncomp_dirs; i++)
            known = strcmp(g_comp_dirs[i], dir) == 0;
        if (!known && (g_comp_dirs[g_ncomp_dirs] = strdup(dir)) != NULL)
            g_ncomp_dirs++;
    }
    return g_ncomp_dirs < MAX_COMP_DIRS ? DWARF_CB_OK : DWARF_CB_ABORT;
}
#endif

/* A relative file found under a compile directory, into out; false if none has it. */
static bool comp_dir_path(const char *file, char *out, size_t n)
{
    bool found = false;
#if URIO_HAVE_LIBDW
    pthread_mutex_lock(&g_sym_mu);
    if (g_ncomp_dirs < 0) {
        g_ncomp_dirs = 0;
        Dwfl *dwfl = dwfl_session(false);
        if (dwfl != NULL)
            dwfl_getmodules(dwfl, collect_comp_dirs, NULL, 0);
    }
    for (int i = 0; !found && i < g_ncomp_dirs; i++) {
        absolute_path(g_comp_dirs[i], file, out, n);
        found = access(out, R_OK) == 0;
    }
    pthread_mutex_unlock(&g_sym_mu);
#else
    (void)file;
    (void)out;
    (void)n;
#endif
    return found;
}

static bool site_path(const urio_site_t *site, char *out, size_t n)
{
    char cwd[PATH_MAX];
    absolute_path(site->file[0] == '/' || getcwd(cwd, sizeof cwd) == NULL ? NULL : cwd,
                  site->file, out, n);
    if (access(out, R_OK) == 0)
        return true;
    /* Relative to where the compiler ran, which need not be here. */
    if (site->file[0] != '/' && comp_dir_path(site->file, out, n))
        return true;
    snprintf(out, n, "%s", site->file);
    return false;
}

char *urio__site_format(const urio_site_t *site, const char *header)
{
    text_t t = { 0 };
    text_add(&t, "%s", header);
    char path[PATH_MAX];
    site_path(site, path, sizeof path);
    add_frame(&t, site->name, path, site->line, NULL);
    return text_done(&t);
}

const char *urio__site_source(const urio_site_t *site, char *buf, size_t n)
{
    char path[PATH_MAX];
    buf[0] = '\0';
    if (site != NULL && site->file != NULL && site_path(site, path, sizeof path))
        source_line(path, site->line, buf, n);
    return buf;
}

const char *urio__describe_callback(void (*fn)(void), const urio_site_t *site,
                                    char *buf, size_t n)
{
    if (site && site->name) {
        snprintf(buf, n, "%s() at %s:%d", site->name, site->file, site->line);
        return buf;
    }
    uintptr_t addr;
    memcpy(&addr, &fn, sizeof addr);
    return urio__describe_pc(addr, buf, n);
}

const char *urio__describe_pc(uintptr_t addr, char *buf, size_t n)
{
    frame_info_t fi;
    pthread_mutex_lock(&g_sym_mu);
    sym_lookup(addr, &fi);
    pthread_mutex_unlock(&g_sym_mu);
    const char *file = strrchr(fi.file, '/') ? strrchr(fi.file, '/') + 1 : fi.file;
    if (fi.fn && file[0])
        snprintf(buf, n, "%s() at %s:%d", fi.fn, file, fi.line);
    else if (fi.fn)
        snprintf(buf, n, "%s()", fi.fn);
    else
        snprintf(buf, n, "%p()", (void *)addr);
    return buf;
}
