/*
 * compare.c — urio-bench --compare FILE: each row of this run set against
 * the same row of an earlier run's --json output, so that a change shows
 * its before and after from the same machine.
 *
 * The reader knows only the format write_json (main.c) produces: for each
 * object of "results", its "name" and the medians that follow it.
 */
#include "bench.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct old_row {
    char name[64];
    double urio, peer, ratio;
} old_row_t;

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        bench_die("--compare: cannot read %s: %s", path, strerror(errno));
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    if (!buf)
        bench_die("out of memory");
    size_t got;
    while ((got = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += got;
        if (len + 1 == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            if (!buf)
                bench_die("out of memory");
        }
    }
    fclose(f);
    buf[len] = '\0';
    return buf;
}

/* The number after `"key": ` in [p, end), or NAN (null, or no such key). */
static double number_after(const char *p, const char *end, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    const char *k = strstr(p, pat);
    if (k == NULL || k >= end)
        return NAN;
    k += strlen(pat);
    if (strncmp(k, "null", 4) == 0)
        return NAN;
    char *stop;
    double v = strtod(k, &stop);
    return stop == k ? NAN : v;
}

/* Parses the results of an earlier run.  Returns: how many rows. */
static size_t parse_rows(char *json, old_row_t **out)
{
    size_t n = 0, cap = 64;
    old_row_t *rows = malloc(cap * sizeof *rows);
    if (!rows)
        bench_die("out of memory");
    const char *p = strstr(json, "\"results\"");
    static const char key[] = "{\"name\": \"";
    while (p && (p = strstr(p, key)) != NULL) {
        p += sizeof key - 1;
        const char *q = strchr(p, '"');
        if (q == NULL)
            break;
        const char *next = strstr(q, key);
        const char *end = next ? next : q + strlen(q);
        if (n == cap) {
            cap *= 2;
            rows = realloc(rows, cap * sizeof *rows);
            if (!rows)
                bench_die("out of memory");
        }
        old_row_t *r = &rows[n++];
        size_t len = (size_t)(q - p) < sizeof r->name - 1 ? (size_t)(q - p) : sizeof r->name - 1;
        memcpy(r->name, p, len);
        r->name[len] = '\0';
        r->urio = number_after(q, end, "urio_median");
        r->peer = number_after(q, end, "peer_median");
        r->ratio = number_after(q, end, "ratio_median");
        p = q;
    }
    *out = rows;
    return n;
}

static void cell(char *buf, size_t size, double v, int decimals, const char *suffix)
{
    if (isfinite(v))
        snprintf(buf, size, "%.*f%s", decimals, v, suffix);
    else
        snprintf(buf, size, "-");
}

void bench_compare_print(const char *path, const bench_compare_row_t *rows, size_t n)
{
    char *json = slurp(path);
    old_row_t *old;
    size_t n_old = parse_rows(json, &old);
    printf("\ncompared with %s (urio's medians; change < 0: faster now):\n\n", path);
    printf("%-22s | %-16s | %10s | %10s | %8s | %12s | %12s\n", "benchmark", "unit", "before",
           "after", "change", "libuv/urio was", "libuv/urio now");
    printf("-----------------------+------------------+------------+------------+----------+"
           "----------------+---------------\n");
    for (size_t i = 0; i < n; i++) {
        const bench_compare_row_t *r = &rows[i];
        const old_row_t *o = NULL;
        for (size_t k = 0; k < n_old && !o; k++)
            if (strcmp(old[k].name, r->name) == 0)
                o = &old[k];
        char before[32], after[32], change[32], rb[32], ra[32];
        cell(before, sizeof before, o ? o->urio : NAN, r->decimals, "");
        cell(after, sizeof after, r->urio, r->decimals, "");
        double ch = o && o->urio != 0.0 ? (r->urio / o->urio - 1.0) * 100.0 : NAN;
        if (o == NULL)
            snprintf(change, sizeof change, "new");
        else
            cell(change, sizeof change, ch, 1, "%");
        cell(rb, sizeof rb, o ? o->ratio : NAN, 2, "x");
        cell(ra, sizeof ra, r->ratio, 2, "x");
        printf("%-22s | %-16s | %10s | %10s | %8s | %14s | %14s\n", r->name, r->unit, before,
               after, change, rb, ra);
    }
    free(old);
    free(json);
}

void bench_loadavg(char *buf, size_t size)
{
    snprintf(buf, size, "?");
    FILE *f = fopen("/proc/loadavg", "r");
    if (!f)
        return;
    double a, b, c;
    if (fscanf(f, "%lf %lf %lf", &a, &b, &c) == 3)
        snprintf(buf, size, "%.2f %.2f %.2f", a, b, c);
    fclose(f);
}
