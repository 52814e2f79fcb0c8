/*
 * main.c — urio-bench: runs the registered benchmarks side by side against
 * their peers, and reports medians, ratios, spreads and targets.
 *
 *   urio-bench [--quick] [--runs N] [--json FILE] [--compare FILE] [SUBCOMMAND...]
 *
 * SUBCOMMAND is a group of the registry ("dispatch", "timers", ...), "all"
 * (the default) or "list".  Each benchmark runs R times per side, the two
 * sides alternating within each run so that both see the same moment of
 * the machine's noise; the ratio peer/urio is taken per run, then its
 * median, so a noisy run moves both sides of its ratio together.
 */
#include "bench.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

static const char *const PEER_NAME = "libuv";

enum { MAX_RUNS = 1000 };

/* Seconds one side's run may take before the harness calls it hung. */
enum { WATCHDOG_QUICK_S = 120, WATCHDOG_FULL_S = 900 };

/* ------------------------------------------------------------------ */
/* Command line                                                          */

typedef struct options {
    bool quick;
    unsigned runs;             /* 0: the default for the mode */
    const char *json_path;     /* NULL: no JSON */
    const char *compare_path;  /* NULL: no comparison with an earlier --json run */
    bool list;
    bool all;
    const char *groups[64];    /* the selected groups when !all */
    size_t n_groups;
} options_t;

/* Whether bench_registry[i] is the first entry of its group. */
static bool first_of_group(size_t i)
{
    for (size_t j = 0; j < i; j++)
        if (strcmp(bench_registry[j].group, bench_registry[i].group) == 0)
            return false;
    return true;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: urio-bench [--quick] [--runs N] [--json FILE] [--compare FILE] [SUBCOMMAND...]\n"
            "\n"
            "  --quick      smaller sizes: the whole default run in about two minutes\n"
            "  --runs N     runs per side and benchmark (default 5, quick 3)\n"
            "  --json FILE  also write the results, with every run, to FILE\n"
            "  --compare FILE  also print each row's change against FILE, the --json\n"
            "               output of an earlier run\n"
            "\n"
            "subcommands: all (default), list, or a group:");
    for (size_t i = 0; i < bench_registry_len; i++)
        if (first_of_group(i))
            fprintf(f, " %s", bench_registry[i].group);
    fputc('\n', f);
}

static bool is_group(const char *name)
{
    for (size_t i = 0; i < bench_registry_len; i++)
        if (strcmp(bench_registry[i].group, name) == 0)
            return true;
    return false;
}

static unsigned parse_runs(const char *s)
{
    char *end;
    unsigned long v = strtoul(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < 1 || v > MAX_RUNS) {
        fprintf(stderr, "urio-bench: --runs wants a count from 1 to %d, not '%s'\n", MAX_RUNS, s);
        exit(2);
    }
    return (unsigned)v;
}

/* The value of an option given as "--opt VALUE" or "--opt=VALUE", or NULL
 * if argv[*i] is not that option. */
static const char *option_value(int argc, char **argv, int *i, const char *opt)
{
    size_t len = strlen(opt);
    if (strncmp(argv[*i], opt, len) != 0)
        return NULL;
    if (argv[*i][len] == '=')
        return argv[*i] + len + 1;
    if (argv[*i][len] != '\0')
        return NULL;
    if (*i + 1 >= argc) {
        fprintf(stderr, "urio-bench: %s needs a value\n", opt);
        exit(2);
    }
    return argv[++*i];
}

static void add_subcommand(options_t *o, const char *arg)
{
    if (strcmp(arg, "all") == 0) {
        o->all = true;
    } else if (strcmp(arg, "list") == 0) {
        o->list = true;
    } else if (is_group(arg)) {
        if (o->n_groups == sizeof o->groups / sizeof o->groups[0])
            bench_die("too many subcommands");
        o->groups[o->n_groups++] = arg;
    } else {
        fprintf(stderr, "urio-bench: unknown subcommand '%s'\n", arg);
        usage(stderr);
        exit(2);
    }
}

static options_t parse_args(int argc, char **argv)
{
    options_t o = { 0 };
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (strcmp(argv[i], "--quick") == 0) {
            o.quick = true;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            exit(0);
        } else if ((v = option_value(argc, argv, &i, "--runs"))) {
            o.runs = parse_runs(v);
        } else if ((v = option_value(argc, argv, &i, "--json"))) {
            o.json_path = v;
        } else if ((v = option_value(argc, argv, &i, "--compare"))) {
            o.compare_path = v;
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "urio-bench: unknown option '%s'\n", argv[i]);
            usage(stderr);
            exit(2);
        } else {
            add_subcommand(&o, argv[i]);
        }
    }
    if (o.n_groups == 0)
        o.all = true;
    if (o.runs == 0)
        o.runs = o.quick ? 3 : 5;
    return o;
}

static bool selected(const options_t *o, const bench_def_t *def)
{
    if (o->all)
        return true;
    for (size_t i = 0; i < o->n_groups; i++)
        if (strcmp(o->groups[i], def->group) == 0)
            return true;
    return false;
}

/* ------------------------------------------------------------------ */
/* Targets                                                               */

/* The benchmark a metric belongs to. */
static const bench_def_t *def_of(const bench_metric_t *m)
{
    for (size_t i = 0; i < bench_registry_len; i++) {
        const bench_def_t *def = &bench_registry[i];
        if (m >= def->metrics && m < def->metrics + def->n_metrics)
            return def;
    }
    bench_die("metric %s is not in the registry", m->name);
}

/* The metric a BENCH_TARGET_REF_MAX target compares with. */
static const bench_metric_t *ref_metric(const bench_metric_t *m)
{
    const bench_def_t *def = def_of(m);
    if (m->target.ref < 0 || (size_t)m->target.ref >= def->n_metrics)
        bench_die("metric %s: target refers to metric %d of %zu", m->name, m->target.ref,
                  def->n_metrics);
    return &def->metrics[m->target.ref];
}

static bool has_peer(const bench_def_t *def, const bench_metric_t *m)
{
    return def->peer != NULL && !m->urio_only;
}

/* Who the peer column of def's rows is: libuv unless the benchmark says. */
static const char *peer_name(const bench_def_t *def)
{
    return def->peer_name ? def->peer_name : PEER_NAME;
}

static void format_target(char *buf, size_t size, const bench_metric_t *m)
{
    switch (m->target.kind) {
    case BENCH_TARGET_URIO_MAX:
        snprintf(buf, size, "urio <= %g %s", m->target.value, m->unit);
        break;
    case BENCH_TARGET_RATIO_MIN:
        snprintf(buf, size, "%s/urio >= %gx", peer_name(def_of(m)), m->target.value);
        break;
    case BENCH_TARGET_REF_MAX:
        snprintf(buf, size, "urio <= %gx %s", m->target.value,
                 ref_metric(m)->name);
        break;
    case BENCH_TARGET_PEER_MAX:
        snprintf(buf, size, "urio <= %gx %s", m->target.value, peer_name(def_of(m)));
        break;
    case BENCH_TARGET_NONE:
        snprintf(buf, size, "-");
        break;
    }
}

static void format_target2(char *buf, size_t size, const bench_metric_t *m);

/* The second goal, if any, under the row's line. */
static void list_target2(const bench_metric_t *m)
{
    if (m->target2.kind == BENCH_TARGET_NONE)
        return;
    char target[96];
    format_target2(target, sizeof target, m);
    printf("%-12s %-22s %-16s %-11s %s\n", "", "", "", "", target);
}

static void list_benchmarks(void)
{
    printf("%-12s %-22s %-16s %-11s %s\n", "group", "benchmark", "unit", "peer", "target");
    for (size_t i = 0; i < bench_registry_len; i++) {
        const bench_def_t *def = &bench_registry[i];
        for (size_t m = 0; m < def->n_metrics; m++) {
            char target[96];
            format_target(target, sizeof target, &def->metrics[m]);
            printf("%-12s %-22s %-16s %-11s %s\n", def->group, def->metrics[m].name,
                   def->metrics[m].unit, has_peer(def, &def->metrics[m]) ? peer_name(def) : "-",
                   target);
            list_target2(&def->metrics[m]);
        }
    }
}

/* ------------------------------------------------------------------ */
/* Statistics                                                            */

/* One row of the table: a metric of a benchmark, with every run. */
typedef struct row {
    const bench_def_t *def;
    const bench_metric_t *metric;
    double *urio, *peer, *ratio;   /* one per run; NAN where absent */
    double urio_med, peer_med;
    double ratio_med, ratio_min, ratio_max;
    double ref_ratio_med;          /* BENCH_TARGET_REF_MAX: median of urio/ref per run;
                                    * BENCH_TARGET_PEER_MAX: of urio/peer per run */
    bool has_target, met;
    const char *urio_missing;      /* why a side did not run, or NULL (bench_def_t) */
    const char *peer_missing;
    double ref2_ratio_med;         /* the same for metric->target2 */
    bool has_target2, met2;
} row_t;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median, min and max of the finite values of v[0..n-1]; NAN if none. */
static void summarize(const double *v, size_t n, double *med, double *min, double *max)
{
    double sorted[MAX_RUNS];
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (isfinite(v[i]))
            sorted[k++] = v[i];
    if (k == 0) {
        *med = *min = *max = NAN;
        return;
    }
    qsort(sorted, k, sizeof sorted[0], cmp_double);
    *med = k % 2 ? sorted[k / 2] : (sorted[k / 2 - 1] + sorted[k / 2]) / 2.0;
    *min = sorted[0];
    *max = sorted[k - 1];
}

/* rows: every row of r's benchmark, in metric order, already summarized. */
static void judge_target(row_t *r, const row_t *rows, unsigned runs)
{
    const bench_target_t *t = &r->metric->target;
    r->has_target = t->kind != BENCH_TARGET_NONE;
    r->ref_ratio_med = NAN;
    if (t->kind == BENCH_TARGET_URIO_MAX) {
        r->met = isfinite(r->urio_med) && r->urio_med <= t->value;
    } else if (t->kind == BENCH_TARGET_RATIO_MIN) {
        r->met = isfinite(r->ratio_med) && r->ratio_med >= t->value;
    } else if (t->kind == BENCH_TARGET_REF_MAX) {
        /* Per run, like the peer ratio: both values come from one call of
         * urio's side, taken at the same moment of the machine. */
        const row_t *ref = &rows[ref_metric(r->metric) - r->def->metrics];
        double rel[MAX_RUNS], lo, hi;
        for (unsigned i = 0; i < runs; i++)
            rel[i] = (isfinite(r->urio[i]) && ref->urio[i] > 0.0) ? r->urio[i] / ref->urio[i]
                                                                   : NAN;
        summarize(rel, runs, &r->ref_ratio_med, &lo, &hi);
        r->met = isfinite(r->ref_ratio_med) && r->ref_ratio_med <= t->value;
    } else if (t->kind == BENCH_TARGET_PEER_MAX) {
        double rel[MAX_RUNS], lo, hi;
        for (unsigned i = 0; i < runs; i++)
            rel[i] = (isfinite(r->urio[i]) && r->peer[i] > 0.0) ? r->urio[i] / r->peer[i] : NAN;
        summarize(rel, runs, &r->ref_ratio_med, &lo, &hi);
        r->met = isfinite(r->ref_ratio_med) && r->ref_ratio_med <= t->value;
    }
}

/* ------------------------------------------------------------------ */
/* A metric's second goal (bench_metric_t.target2): against a floor,    */
/* say.  Kept apart from the first goal's code, which rows of other     */
/* experiments extend.                                                  */

static const bench_metric_t *ref2_metric(const bench_metric_t *m)
{
    const bench_def_t *def = def_of(m);
    if (m->target2.ref < 0 || (size_t)m->target2.ref >= def->n_metrics)
        bench_die("metric %s: target2 refers to metric %d of %zu", m->name, m->target2.ref,
                  def->n_metrics);
    return &def->metrics[m->target2.ref];
}

static void format_target2(char *buf, size_t size, const bench_metric_t *m)
{
    const bench_target_t *t = &m->target2;
    if (t->kind == BENCH_TARGET_URIO_MAX)
        snprintf(buf, size, "urio <= %g %s", t->value, m->unit);
    else if (t->kind == BENCH_TARGET_RATIO_MIN)
        snprintf(buf, size, "%s/urio >= %gx", peer_name(def_of(m)), t->value);
    else if (t->kind == BENCH_TARGET_REF_MAX)
        snprintf(buf, size, "urio <= %gx %s", t->value, ref2_metric(m)->name);
    else
        snprintf(buf, size, "-");
}

/* rows: every row of r's benchmark, in metric order, already summarized. */
static void judge_target2(row_t *r, const row_t *rows, unsigned runs)
{
    const bench_target_t *t = &r->metric->target2;
    r->has_target2 = t->kind != BENCH_TARGET_NONE;
    r->ref2_ratio_med = NAN;
    if (t->kind == BENCH_TARGET_URIO_MAX) {
        r->met2 = isfinite(r->urio_med) && r->urio_med <= t->value;
    } else if (t->kind == BENCH_TARGET_RATIO_MIN) {
        r->met2 = isfinite(r->ratio_med) && r->ratio_med >= t->value;
    } else if (t->kind == BENCH_TARGET_REF_MAX) {
        /* Per run, as for the first goal. */
        const row_t *ref = &rows[ref2_metric(r->metric) - r->def->metrics];
        double rel[MAX_RUNS], lo, hi;
        for (unsigned i = 0; i < runs; i++)
            rel[i] = (isfinite(r->urio[i]) && ref->urio[i] > 0.0) ? r->urio[i] / ref->urio[i]
                                                                   : NAN;
        summarize(rel, runs, &r->ref2_ratio_med, &lo, &hi);
        r->met2 = isfinite(r->ref2_ratio_med) && r->ref2_ratio_med <= t->value;
    }
}

static void print_targets2(const row_t *rows, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const row_t *r = &rows[i];
        if (!r->has_target2)
            continue;
        char target[96], got[48];
        format_target2(target, sizeof target, r->metric);
        if (r->metric->target2.kind == BENCH_TARGET_RATIO_MIN)
            snprintf(got, sizeof got, "%.2f", r->ratio_med);
        else if (r->metric->target2.kind == BENCH_TARGET_REF_MAX)
            snprintf(got, sizeof got, "%.2fx", r->ref2_ratio_med);
        else
            snprintf(got, sizeof got, "%.*f", r->metric->decimals, r->urio_med);
        printf("  %-22s %-34s got %-10s %s\n", r->metric->name, target, got,
               r->met2 ? "MET" : "MISSED");
    }
}

/* , "target2": {...}, "met2": ... after the first goal's fields (nothing if none). */
static void json_target2(FILE *f, const row_t *r)
{
    const bench_target_t *t = &r->metric->target2;
    if (!r->has_target2)
        return;
    const char *kind = t->kind == BENCH_TARGET_URIO_MAX   ? "urio_max"
                       : t->kind == BENCH_TARGET_RATIO_MIN ? "ratio_min"
                                                           : "ref_max";
    fprintf(f, ", \"target2\": {\"kind\": \"%s\", \"value\": %.9g", kind, t->value);
    if (t->kind == BENCH_TARGET_REF_MAX) {
        fprintf(f, ", \"ref\": \"%s\", \"got\": ", ref2_metric(r->metric)->name);
        if (isfinite(r->ref2_ratio_med))
            fprintf(f, "%.9g", r->ref2_ratio_med);
        else
            fputs("null", f);
    }
    fprintf(f, "}, \"met2\": %s", r->met2 ? "true" : "false");
}

static void summarize_row(row_t *r, unsigned runs)
{
    double lo, hi;
    for (unsigned i = 0; i < runs; i++)
        r->ratio[i] = (isfinite(r->peer[i]) && r->urio[i] > 0.0) ? r->peer[i] / r->urio[i] : NAN;
    summarize(r->urio, runs, &r->urio_med, &lo, &hi);
    summarize(r->peer, runs, &r->peer_med, &lo, &hi);
    summarize(r->ratio, runs, &r->ratio_med, &r->ratio_min, &r->ratio_max);
}

/* ------------------------------------------------------------------ */
/* Running                                                               */

/*
 * The watchdog: a side whose run hangs (a lost wake-up, a stop that never
 * comes) must not hang the harness.  alarm(2) bounds each run; the handler
 * writes a message prepared beforehand (only async-signal-safe calls) and
 * exits.
 */
static char watchdog_msg[256];
static size_t watchdog_len;

static void watchdog_fired(int sig)
{
    (void)sig;
    ssize_t r = write(STDERR_FILENO, watchdog_msg, watchdog_len);
    (void)r;
    _exit(3);
}

static void watchdog_install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = watchdog_fired;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGALRM, &sa, NULL) != 0)
        bench_die("sigaction: %s", strerror(errno));
}

static void run_side(const char *side, bench_fn fn, const bench_config_t *cfg,
                     const bench_def_t *def, unsigned run, unsigned runs, double *out)
{
    unsigned limit = cfg->quick ? WATCHDOG_QUICK_S : WATCHDOG_FULL_S;
    int len = snprintf(watchdog_msg, sizeof watchdog_msg,
                       "\nurio-bench: %s run %u/%u %s still running after %u s: hung, "
                       "giving up\n", def->name, run + 1, runs, side, limit);
    watchdog_len = len < 0 ? 0 : (size_t)len < sizeof watchdog_msg ? (size_t)len
                                                                    : sizeof watchdog_msg - 1;
    fprintf(stderr, "  %-16s run %u/%u %-5s ...", def->name, run + 1, runs, side);
    fflush(stderr);
    alarm(limit);
    uint64_t t0 = bench_now_ns();
    fn(cfg, out);
    uint64_t t1 = bench_now_ns();
    alarm(0);
    fprintf(stderr, " %.2f s\n", (double)(t1 - t0) / 1e9);
}

/* Runs one benchmark `runs` times per side and fills its rows.  Even runs
 * start with urio, odd runs with the peer: neither side always gets the
 * warmer (or colder) caches and CPU clocks. */
static void run_benchmark(const bench_def_t *def, const bench_config_t *cfg,
                          unsigned runs, row_t *rows)
{
    /* A side whose program is missing is skipped, and said so. */
    const char *urio_missing = def->urio_missing ? def->urio_missing() : NULL;
    const char *peer_missing = def->peer && def->peer_missing ? def->peer_missing() : NULL;
    bench_fn urio = urio_missing ? NULL : def->urio;
    bench_fn peer = peer_missing ? NULL : def->peer;
    if (urio_missing)
        fprintf(stderr, "  %-16s urio skipped: %s\n", def->name, urio_missing);
    if (peer_missing)
        fprintf(stderr, "  %-16s %s skipped: %s\n", def->name, peer_name(def), peer_missing);
    for (unsigned run = 0; run < runs; run++) {
        double u[BENCH_MAX_METRICS], p[BENCH_MAX_METRICS];
        for (size_t m = 0; m < BENCH_MAX_METRICS; m++)
            u[m] = p[m] = NAN;
        bool urio_first = run % 2 == 0;
        if (urio_first && urio)
            run_side("urio", urio, cfg, def, run, runs, u);
        if (peer)
            run_side(peer_name(def), peer, cfg, def, run, runs, p);
        if (!urio_first && urio)
            run_side("urio", urio, cfg, def, run, runs, u);
        for (size_t m = 0; m < def->n_metrics; m++) {
            rows[m].urio[run] = u[m];
            rows[m].peer[run] = p[m];
        }
    }
    for (size_t m = 0; m < def->n_metrics; m++) {
        rows[m].urio_missing = urio_missing;
        rows[m].peer_missing = peer_missing;
        summarize_row(&rows[m], runs);
    }
    for (size_t m = 0; m < def->n_metrics; m++)
        judge_target(&rows[m], rows, runs);
    for (size_t m = 0; m < def->n_metrics; m++)
        judge_target2(&rows[m], rows, runs);
}

static row_t *alloc_rows(const options_t *o, size_t *n_rows)
{
    size_t n = 0;
    for (size_t i = 0; i < bench_registry_len; i++)
        if (selected(o, &bench_registry[i]))
            n += bench_registry[i].n_metrics;

    row_t *rows = calloc(n ? n : 1, sizeof *rows);
    if (!rows)
        bench_die("out of memory");
    size_t k = 0;
    for (size_t i = 0; i < bench_registry_len; i++) {
        const bench_def_t *def = &bench_registry[i];
        if (!selected(o, def))
            continue;
        for (size_t m = 0; m < def->n_metrics; m++, k++) {
            rows[k].def = def;
            rows[k].metric = &def->metrics[m];
            rows[k].urio = calloc(o->runs, sizeof(double));
            rows[k].peer = calloc(o->runs, sizeof(double));
            rows[k].ratio = calloc(o->runs, sizeof(double));
            if (!rows[k].urio || !rows[k].peer || !rows[k].ratio)
                bench_die("out of memory");
        }
    }
    *n_rows = n;
    return rows;
}

static void free_rows(row_t *rows, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(rows[i].urio);
        free(rows[i].peer);
        free(rows[i].ratio);
    }
    free(rows);
}

/* ------------------------------------------------------------------ */
/* The table                                                             */

static void format_value(char *buf, size_t size, double v, int decimals)
{
    if (isfinite(v))
        snprintf(buf, size, "%.*f", decimals, v);
    else
        snprintf(buf, size, "-");
}

static void print_row(const row_t *r)
{
    char u[32], p[32], ratio[32], spread[48];
    int d = r->metric->decimals;
    format_value(u, sizeof u, r->urio_med, d);
    format_value(p, sizeof p, r->peer_med, d);
    if (isfinite(r->ratio_med)) {
        snprintf(ratio, sizeof ratio, "%.2fx", r->ratio_med);
        snprintf(spread, sizeof spread, "%.2f-%.2f", r->ratio_min, r->ratio_max);
    } else {
        snprintf(ratio, sizeof ratio, "-");
        snprintf(spread, sizeof spread, "-");
    }
    printf("%-22s | %-16s | %10s | %10s | %10s | %s\n", r->metric->name, r->metric->unit,
           u, p, ratio, spread);
}

static void print_table(const row_t *rows, size_t n, const options_t *o)
{
    printf("\nurio-bench%s: median of %u runs per side; %s/urio > 1 means urio is faster;\n"
           "spread is the min-max of the per-run ratio.\n\n",
           o->quick ? " --quick" : "", o->runs, PEER_NAME);
    printf("%-22s | %-16s | %10s | %10s | %10s | %s\n", "benchmark", "unit", "urio",
           PEER_NAME, "libuv/urio", "spread");
    printf("-----------------------+------------------+------------+------------+------------+"
           "-----------\n");
    for (size_t i = 0; i < n; i++)
        print_row(&rows[i]);
    for (size_t i = 0; i < n; i++)
        if (has_peer(rows[i].def, rows[i].metric) && rows[i].def->peer_name)
            printf("  %s: the %s column is %s\n", rows[i].metric->name, PEER_NAME,
                   rows[i].def->peer_name);
    /* Once per benchmark: why a column of its rows is empty. */
    for (size_t i = 0; i < n; i += rows[i].def->n_metrics) {
        if (rows[i].urio_missing)
            printf("  %s: %s\n", rows[i].def->name, rows[i].urio_missing);
        if (rows[i].peer_missing)
            printf("  %s: %s not measured: %s\n", rows[i].def->name, peer_name(rows[i].def),
                   rows[i].peer_missing);
    }
}

static void print_targets(const row_t *rows, size_t n)
{
    printf("\ntargets (reported, not enforced):\n");
    for (size_t i = 0; i < n; i++) {
        const row_t *r = &rows[i];
        if (!r->has_target)
            continue;
        char target[96], got[48];
        format_target(target, sizeof target, r->metric);
        /* Every target needs urio's numbers; these two also the peer's. */
        bool needs_peer = r->metric->target.kind == BENCH_TARGET_RATIO_MIN ||
                          r->metric->target.kind == BENCH_TARGET_PEER_MAX;
        const char *missing = r->urio_missing ? r->urio_missing
                              : needs_peer    ? r->peer_missing
                                              : NULL;
        if (missing) {
            printf("  %-22s %-34s not measured: %s\n", r->metric->name, target, missing);
            continue;
        }
        if (r->metric->target.kind == BENCH_TARGET_RATIO_MIN) {
            format_value(got, sizeof got, r->ratio_med, 2);
        } else if (r->metric->target.kind == BENCH_TARGET_REF_MAX ||
                   r->metric->target.kind == BENCH_TARGET_PEER_MAX) {
            format_value(got, sizeof got - 1, r->ref_ratio_med, 2);
            if (isfinite(r->ref_ratio_med))
                strcat(got, "x");
        } else {
            format_value(got, sizeof got, r->urio_med, r->metric->decimals);
        }
        printf("  %-22s %-34s got %-10s %s\n", r->metric->name, target, got,
               r->met ? "MET" : "MISSED");
    }
}

/* ------------------------------------------------------------------ */
/* JSON                                                                  */

static void json_number(FILE *f, double v)
{
    if (isfinite(v))
        fprintf(f, "%.9g", v);
    else
        fputs("null", f);
}

/* The names and units are our own literals: no escaping needed. */
static void json_array(FILE *f, const double *v, unsigned n)
{
    fputc('[', f);
    for (unsigned i = 0; i < n; i++) {
        if (i)
            fputs(", ", f);
        json_number(f, v[i]);
    }
    fputc(']', f);
}

static void json_target(FILE *f, const row_t *r)
{
    const bench_target_t *t = &r->metric->target;
    if (!r->has_target) {
        fputs("\"target\": null, \"met\": null", f);
        return;
    }
    const char *kind = t->kind == BENCH_TARGET_URIO_MAX   ? "urio_max"
                       : t->kind == BENCH_TARGET_RATIO_MIN ? "ratio_min"
                       : t->kind == BENCH_TARGET_PEER_MAX  ? "peer_max"
                                                           : "ref_max";
    fprintf(f, "\"target\": {\"kind\": \"%s\", \"value\": ", kind);
    json_number(f, t->value);
    if (t->kind == BENCH_TARGET_REF_MAX) {
        fprintf(f, ", \"ref\": \"%s\", \"got\": ", ref_metric(r->metric)->name);
        json_number(f, r->ref_ratio_med);
    } else if (t->kind == BENCH_TARGET_PEER_MAX) {
        fputs(", \"got\": ", f);
        json_number(f, r->ref_ratio_med);
    }
    fprintf(f, "}, \"met\": %s", r->met ? "true" : "false");
}

static void json_row(FILE *f, const row_t *r, unsigned runs)
{
    bool peer = has_peer(r->def, r->metric);
    fprintf(f, "    {\"name\": \"%s\", \"group\": \"%s\", \"unit\": \"%s\", \"peer\": ",
            r->metric->name, r->def->group, r->metric->unit);
    fprintf(f, peer ? "\"%s\",\n" : "null,\n", peer_name(r->def));
    fputs("     \"urio_median\": ", f);
    json_number(f, r->urio_med);
    fputs(", \"peer_median\": ", f);
    json_number(f, r->peer_med);
    fputs(", \"ratio_median\": ", f);
    json_number(f, r->ratio_med);
    fputs(", \"ratio_min\": ", f);
    json_number(f, r->ratio_min);
    fputs(", \"ratio_max\": ", f);
    json_number(f, r->ratio_max);
    fputs(",\n     ", f);
    json_target(f, r);
    json_target2(f, r);
    fputs(",\n     \"runs\": {\"urio\": ", f);
    json_array(f, r->urio, runs);
    fputs(", \"peer\": ", f);
    json_array(f, r->peer, runs);
    fputs(", \"ratio\": ", f);
    json_array(f, r->ratio, runs);
    fputs("}}", f);
}

static void json_config(FILE *f, const bench_config_t *c)
{
    fprintf(f,
            "  \"config\": {\"chain_n\": %llu, \"fanout_n\": %llu, \"fanout_round\": %llu, "
            "\"allocs_warmup\": %llu, \"allocs_n\": %llu, \"timer_n\": %llu, "
            "\"timer_span_ns\": %llu, \"timer_lead_ns\": %llu, \"seed\": %llu,\n"
            "             \"xthread_n\": %llu, \"wakeup_n\": %llu, \"wakeup_warmup\": %llu, "
            "\"wakeup_gap_ns\": %llu, \"pool_rtt_n\": %llu, \"pool_n\": %llu, "
            "\"pool_inflight\": %llu, \"pool_warmup\": %llu, \"pool_workers\": %u, "
            "\"switch_n\": %llu,\n"
            "             \"sparse_n\": %llu, \"sparse_span_ns\": %llu, "
            "\"sparse_lead_ns\": %llu, \"idle_ticks\": %llu},\n",
            (unsigned long long)c->chain_n, (unsigned long long)c->fanout_n,
            (unsigned long long)c->fanout_round, (unsigned long long)c->allocs_warmup,
            (unsigned long long)c->allocs_n, (unsigned long long)c->timer_n,
            (unsigned long long)c->timer_span_ns, (unsigned long long)c->timer_lead_ns,
            (unsigned long long)c->seed, (unsigned long long)c->xthread_n,
            (unsigned long long)c->wakeup_n, (unsigned long long)c->wakeup_warmup,
            (unsigned long long)c->wakeup_gap_ns, (unsigned long long)c->pool_rtt_n,
            (unsigned long long)c->pool_n, (unsigned long long)c->pool_inflight,
            (unsigned long long)c->pool_warmup, c->pool_workers,
            (unsigned long long)c->switch_n, (unsigned long long)c->sparse_n,
            (unsigned long long)c->sparse_span_ns, (unsigned long long)c->sparse_lead_ns,
            (unsigned long long)c->idle_ticks);
}

static void write_json(const char *path, const row_t *rows, size_t n, const options_t *o,
                       const bench_config_t *cfg, const char *load0, const char *load1)
{
    FILE *f = fopen(path, "w");
    if (!f)
        bench_die("cannot write %s: %s", path, strerror(errno));
    fprintf(f, "{\n  \"quick\": %s, \"runs\": %u, \"cpus\": %ld, \"peer\": \"%s\", "
               "\"peer_version\": \"%s\",\n"
               "  \"loadavg_start\": \"%s\", \"loadavg_end\": \"%s\",\n",
            o->quick ? "true" : "false", o->runs, sysconf(_SC_NPROCESSORS_ONLN), PEER_NAME,
            uv_version_string(), load0, load1);
    json_config(f, cfg);
    fputs("  \"results\": [\n", f);
    for (size_t i = 0; i < n; i++) {
        json_row(f, &rows[i], o->runs);
        fputs(i + 1 < n ? ",\n" : "\n", f);
    }
    fputs("  ]\n}\n", f);
    if (fclose(f) != 0)
        bench_die("error writing %s: %s", path, strerror(errno));
}

/* --compare: this run's medians beside an earlier --json file's (compare.c). */
static void compare_rows(const char *path, const row_t *rows, size_t n)
{
    bench_compare_row_t *cmp = calloc(n ? n : 1, sizeof *cmp);
    if (!cmp)
        bench_die("out of memory");
    for (size_t i = 0; i < n; i++)
        cmp[i] = (bench_compare_row_t){ rows[i].metric->name, rows[i].metric->unit,
                                        rows[i].metric->decimals, rows[i].urio_med,
                                        rows[i].peer_med, rows[i].ratio_med };
    bench_compare_print(path, cmp, n);
    free(cmp);
}

/* ------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    bench_procpool_init();      /* first: it forks while the harness has one thread */
    options_t o = parse_args(argc, argv);
    if (o.list) {
        list_benchmarks();
        return 0;
    }

    bench_config_t cfg;
    bench_config_init(&cfg, o.quick);
    watchdog_install();

    char load0[64], load1[64];
    bench_loadavg(load0, sizeof load0);
    size_t n_rows;
    row_t *rows = alloc_rows(&o, &n_rows);
    for (size_t i = 0; i < n_rows; i += rows[i].def->n_metrics) {
        run_benchmark(rows[i].def, &cfg, o.runs, &rows[i]);
    }

    bench_loadavg(load1, sizeof load1);
    print_table(rows, n_rows, &o);
    printf("load average (1, 5, 15 min) at the start: %s; at the end: %s\n", load0, load1);
    print_targets(rows, n_rows);
    print_targets2(rows, n_rows);
    if (o.compare_path)
        compare_rows(o.compare_path, rows, n_rows);
    if (o.json_path)
        write_json(o.json_path, rows, n_rows, &o, &cfg, load0, load1);

    free_rows(rows, n_rows);
    /* Targets are reported, not enforced: a missed one is not a failure. */
    return 0;
}
