/* metrics_merge.c — see metrics_merge.h.
 *
 * The texts are our own renderer's output, so a sample line is
 * `name{labels} value` with no timestamp: the value is after the last space
 * (label values may hold spaces, never a line feed). A sample belongs to the
 * family whose `# TYPE` line came last, as the renderer writes them.
 * Everything points into the input texts; the only memory is one array of
 * samples, one of families and an open-addressed index of sample keys, all
 * sized from the number of lines up front. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "metrics_merge.h"
#include "metrics_render.h"

enum { RULE_SUM, RULE_FIRST, RULE_MIN };

typedef struct {
    mm_str_t name;
    mm_str_t help, type; /* whole lines without the line feed; may be empty */
    int rule;
    int gauge;
    int in_full; /* named by a full text (merge_text): shown even with no samples */
    size_t n_samples;
} family_t;

typedef struct {
    mm_str_t key; /* name and labels */
    double v;
    size_t fam;
} sample_t;

typedef struct {
    family_t *fams;
    size_t n_fams;
    sample_t *samples;
    size_t n_samples;
    size_t *index; /* sample number + 1; 0: empty slot */
    size_t mask;
} merge_t;

/* Gauges whose samples each worker holds a part of. */
static const char *const summed_gauges[] = {
    "modelmux_connections", "modelmux_upstream_connections", "modelmux_upstream_waiting",
    "modelmux_request_ids", "modelmux_reward_sum",           NULL,
};

static int str_is(mm_str_t s, const char *lit)
{
    size_t n = strlen(lit);
    return s.n == n && memcmp(s.p, lit, n) == 0;
}

/* A gauge that says something about now, which a kept text (a worker that
 * did not answer, or died) cannot. modelmux_reward_sum is a gauge only
 * because rewards may be negative: a sum of what was received, it stays
 * in the group's as a counter does, or the mean reward the docs compute
 * from it and modelmux_feedback_total would go wrong when a worker dies. */
static int gauge_of_now(mm_str_t name, mm_str_t type)
{
    return str_is(type, "gauge") && !str_is(name, "modelmux_reward_sum");
}

static int rule_for(mm_str_t name, mm_str_t type)
{
    if (!str_is(type, "gauge")) return RULE_SUM; /* counter, histogram, summary, untyped */
    if (str_is(name, "modelmux_store_up")) return RULE_MIN;
    for (const char *const *g = summed_gauges; *g; g++)
        if (str_is(name, *g)) return RULE_SUM;
    return RULE_FIRST;
}

static uint64_t hash(mm_str_t s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < s.n; i++) h = (h ^ (unsigned char)s.p[i]) * 1099511628211ull;
    return h;
}

/* The family named `name`, created (at the end) when new; named by a full
 * text (merge_text) when `full`. */
static size_t family_of(merge_t *m, mm_str_t name, int full)
{
    size_t i = 0;
    while (i < m->n_fams &&
           !(m->fams[i].name.n == name.n && memcmp(m->fams[i].name.p, name.p, name.n) == 0))
        i++;
    family_t *f = &m->fams[i];
    if (i == m->n_fams) {
        memset(f, 0, sizeof(*f));
        f->name = name;
        f->rule = RULE_SUM;
        m->n_fams++;
    }
    f->in_full |= full;
    return i;
}

static void add_sample(merge_t *m, size_t fam, mm_str_t key, double v, int first_text)
{
    size_t slot = (size_t)hash(key) & m->mask;
    for (; m->index[slot]; slot = (slot + 1) & m->mask) {
        sample_t *s = &m->samples[m->index[slot] - 1];
        if (s->key.n != key.n || memcmp(s->key.p, key.p, key.n) != 0) continue;
        int rule = m->fams[s->fam].rule;
        if (rule == RULE_SUM)
            s->v += v;
        else if (rule == RULE_MIN && v < s->v)
            s->v = v;
        else if (rule == RULE_FIRST && first_text)
            s->v = v; /* a repeated line within the answering worker's text */
        return;
    }
    m->fams[fam].n_samples++;
    sample_t *s = &m->samples[m->n_samples++];
    s->key = key;
    s->v = v;
    s->fam = fam;
    m->index[slot] = m->n_samples;
}

/* `# HELP name text` or `# TYPE name type`: the name, and the rest. */
static int comment_name(mm_str_t line, const char *what, mm_str_t *name, mm_str_t *rest)
{
    size_t w = strlen(what);
    if (line.n < w + 1 || memcmp(line.p, what, w) != 0) return 0;
    const char *p = line.p + w, *end = line.p + line.n;
    const char *sp = memchr(p, ' ', (size_t)(end - p));
    if (sp == NULL) sp = end;
    *name = (mm_str_t){p, (size_t)(sp - p)};
    *rest = sp < end ? (mm_str_t){sp + 1, (size_t)(end - sp - 1)} : (mm_str_t){end, 0};
    return name->n > 0;
}

/* A full text gives all its samples; one that is not (a kept text of a
 * worker that did not answer, the retired workers') only its counters,
 * histograms and reward sums: its other gauges say nothing about now. */
static void merge_text(merge_t *m, mm_str_t text, int first_text, int full)
{
    size_t fam = (size_t)-1;
    const char *p = text.p, *end = text.p + text.n;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *next = nl ? nl + 1 : end;
        mm_str_t line = {p, (size_t)((nl ? nl : end) - p)};
        p = next;
        mm_str_t name, rest;
        if (line.n == 0) continue;
        if (comment_name(line, "# HELP ", &name, &rest)) {
            fam = family_of(m, name, full);
            if (m->fams[fam].help.n == 0) m->fams[fam].help = line;
            continue;
        }
        if (comment_name(line, "# TYPE ", &name, &rest)) {
            fam = family_of(m, name, full);
            family_t *f = &m->fams[fam];
            if (f->type.n == 0) {
                f->type = line;
                f->rule = rule_for(name, rest);
                f->gauge = gauge_of_now(name, rest);
            }
            continue;
        }
        if (line.p[0] == '#') continue;
        const char *sp = line.p + line.n;
        while (sp > line.p && sp[-1] != ' ') sp--;
        if (sp <= line.p + 1) continue; /* no value */
        char num[64];
        size_t vn = (size_t)(line.p + line.n - sp);
        if (vn == 0 || vn >= sizeof(num)) continue;
        memcpy(num, sp, vn);
        num[vn] = '\0';
        char *e;
        double v = strtod(num, &e);
        if (*e != '\0') continue;
        if (fam == (size_t)-1) { /* a sample with no family before it */
            size_t k = 0;
            while (k < line.n && line.p[k] != '{' && line.p[k] != ' ') k++;
            fam = family_of(m, (mm_str_t){line.p, k}, full);
        }
        if (!full && m->fams[fam].gauge) continue;
        add_sample(m, fam, (mm_str_t){line.p, (size_t)(sp - 1 - line.p)}, v, first_text);
    }
}

void metrics_merge(const mm_str_t *texts, size_t n, size_t n_full, mm_buf_t *out)
{
    size_t lines = 1;
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < texts[i].n; k++) lines += texts[i].p[k] == '\n';
    lines += n; /* a last line without a line feed in each */
    size_t slots = 16;
    while (slots < 2 * lines) slots *= 2;
    merge_t m = {
        .fams = malloc(lines * sizeof(family_t)),
        .samples = malloc(lines * sizeof(sample_t)),
        .index = calloc(slots, sizeof(size_t)),
        .mask = slots - 1,
    };
    if (m.fams == NULL || m.samples == NULL || m.index == NULL) {
        out->oom = 1;
        goto done;
    }
    for (size_t i = 0; i < n; i++) merge_text(&m, texts[i], i == 0, i < n_full);
    for (size_t f = 0; f < m.n_fams; f++) {
        const family_t *fa = &m.fams[f];
        if (!fa->in_full && fa->n_samples == 0) continue;
        if (fa->help.n) {
            mm_buf_str(out, fa->help);
            mm_buf_lit(out, "\n");
        }
        if (fa->type.n) {
            mm_buf_str(out, fa->type);
            mm_buf_lit(out, "\n");
        }
        for (size_t s = 0; s < m.n_samples; s++) {
            if (m.samples[s].fam != f) continue;
            mm_buf_str(out, m.samples[s].key);
            mm_buf_lit(out, " ");
            metrics_put_float(out, m.samples[s].v);
            mm_buf_lit(out, "\n");
        }
    }
done:
    free(m.fams);
    free(m.samples);
    free(m.index);
}
