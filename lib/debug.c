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
#include <unistd.h>

#if URIO_HAVE_LIBDW
#include <elfutils/libdwfl.h>
#endif

bool urio__debug_default(void)
{
    const char *v = getenv("URIO_DEBUG");
    return (v != NULL && *v != '\0' && strcmp(v, "0") != 0) || URIO_DEBUG_BUILD;
}

#if URIO_DEBUG_CHECKS
void urio__assert_failed(const char *cond, const char *file, int line, const char *fn)
{
    urio__log(URIO_LOG_CRITICAL, "%s:%d: %s(): internal invariant broken: %s; aborting",
              file, line, fn, cond);
    abort();
}
#endif

__attribute__((noinline)) void urio__backtrace_capture(urio__backtrace_t *st, int skip)
{
    void *frames[URIO__BACKTRACE_DEPTH + 16];
    int n = backtrace(frames, (int)(sizeof frames / sizeof frames[0]));
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
}

typedef struct symbolizer {
#if URIO_HAVE_LIBDW
    Dwfl *dwfl;
#endif
    int unused;
} symbolizer_t;

static void sym_open(symbolizer_t *s)
{
    memset(s, 0, sizeof *s);
#if URIO_HAVE_LIBDW
    static const Dwfl_Callbacks callbacks = {
        .find_elf = dwfl_linux_proc_find_elf,
        .find_debuginfo = dwfl_standard_find_debuginfo,
    };
    s->dwfl = dwfl_begin(&callbacks);
    if (s->dwfl) {
        if (dwfl_linux_proc_report(s->dwfl, getpid()) != 0 ||
            dwfl_report_end(s->dwfl, NULL, NULL) != 0) {
            dwfl_end(s->dwfl);
            s->dwfl = NULL;
        }
    }
#endif
}

static void sym_close(symbolizer_t *s)
{
#if URIO_HAVE_LIBDW
    if (s->dwfl)
        dwfl_end(s->dwfl);
#endif
    (void)s;
}

/* Names addr: function into fn, source file and line if known.  Returns: true if named. */
static bool sym_lookup(symbolizer_t *s, uintptr_t addr, const char **fn, const char **file,
                       int *line)
{
    *fn = NULL;
    *file = NULL;
    *line = 0;
#if URIO_HAVE_LIBDW
    if (s->dwfl) {
        Dwfl_Module *m = dwfl_addrmodule(s->dwfl, addr);
        if (m) {
            *fn = dwfl_module_addrname(m, addr);
            Dwfl_Line *l = dwfl_module_getsrc(m, addr);
            if (l)
                *file = dwfl_lineinfo(l, NULL, line, NULL, NULL, NULL);
        }
    }
#endif
    if (*fn == NULL) {
        Dl_info info;
        if (dladdr((void *)addr, &info) && info.dli_sname)
            *fn = info.dli_sname;
    }
    return *fn != NULL || *file != NULL;
}

/* The C runtime's own frames below main() or a thread's function: noise in a report. */
static bool runtime_frame(const char *fn)
{
    static const char *const names[] = { "_start", "__libc_start_main", "__libc_start_call_main",
                                         "start_thread", "clone", "clone3" };
    if (fn == NULL)
        return false;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        size_t n = strlen(names[i]);
        if (strncmp(fn, names[i], n) == 0 && (fn[n] == '\0' || fn[n] == '@'))
            return true;
    }
    return false;
}

char *urio__backtrace_format(const urio__backtrace_t *st, const char *header)
{
    symbolizer_t sym;
    sym_open(&sym);
    size_t cap = 256 + (size_t)st->n * 256, len = 0;
    char *out = urio__malloc(cap);
    if (out == NULL) {
        sym_close(&sym);
        return NULL;
    }
    len += (size_t)snprintf(out, cap, "%s", header);
    /* Most recent call last, as Python prints it. */
    for (int i = st->n - 1; i >= 0; i--) {
        /* A return address points after the call: look up the call itself. */
        uintptr_t pc = (uintptr_t)st->frames[i] - 1;
        const char *fn, *file;
        int line;
        sym_lookup(&sym, pc, &fn, &file, &line);
        if (runtime_frame(fn))
            continue;
        int w;
        if (file)
            w = snprintf(out + len, cap - len, "\n  File \"%s\", line %d, in %s", file, line,
                         fn ? fn : "??");
        else
            w = snprintf(out + len, cap - len, "\n  File \"??\", in %s [%p]", fn ? fn : "??",
                         st->frames[i]);
        if (w < 0 || (size_t)w >= cap - len)
            break;
        len += (size_t)w;
    }
    sym_close(&sym);
    return out;
}

const char *urio__describe_callback(void (*fn)(void), const urio_site_t *site,
                                    char *buf, size_t n)
{
    if (site && site->name) {
        snprintf(buf, n, "%s() at %s:%d", site->name, site->file, site->line);
        return buf;
    }
    symbolizer_t sym;
    sym_open(&sym);
    const char *name, *file;
    int line;
    uintptr_t addr;
    memcpy(&addr, &fn, sizeof addr);
    sym_lookup(&sym, addr, &name, &file, &line);
    if (name && file)
        snprintf(buf, n, "%s() at %s:%d", name, file, line);
    else if (name)
        snprintf(buf, n, "%s()", name);
    else
        snprintf(buf, n, "%p()", (void *)addr);
    sym_close(&sym);
    return buf;
}
