/* metrics.c — see metrics.h. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"

const double mm_lat_bounds[MM_LAT_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                              0.25,  0.5,    1.0,   2.5,  5.0,   7.5,  10.0};

void metrics_init(metrics_t *m)
{
    memset(m, 0, sizeof(*m));
}

void metrics_free(metrics_t *m)
{
    metrics_exp_t *e = m->exps;
    while (e) {
        metrics_exp_t *next = e->next;
        for (size_t a = 0; a < e->n_arms; a++) free(e->arms[a].fallbacks);
        free(e->arms);
        free(e->arm_names);
        free(e);
        e = next;
    }
    m->exps = NULL;
    json_decref(m->index);
    m->index = NULL;
}

/* Slot of arm `name`, or a new one; -1 out of memory. O(slots): once per
 * arm per reload. */
static int slot_for(metrics_exp_t *e, const char *name, const char *const *live, size_t n_live)
{
    for (size_t j = 0; j < e->n_arms; j++)
        if (strcmp(e->arm_names[j], name) == 0) return (int)j;
    size_t j = e->n_arms;
    if (j == e->cap && e->cap < MM_METRICS_MAX_SLOTS) {
        size_t cap = e->cap * 2 < MM_METRICS_MAX_SLOTS ? e->cap * 2 : MM_METRICS_MAX_SLOTS;
        metrics_arm_t *arms = realloc(e->arms, cap * sizeof(*arms));
        if (arms == NULL) return -1;
        e->arms = arms;
        char(*names)[MM_NAME_MAX + 1] = realloc(e->arm_names, cap * sizeof(*names));
        if (names == NULL) return -1;
        e->arm_names = names;
        e->cap = cap;
    }
    if (j == e->cap) { /* full: reuse the slot of an arm no longer configured */
        for (j = 0; j < e->n_arms; j++) {
            size_t k = 0;
            while (k < n_live && strcmp(live[k], e->arm_names[j]) != 0) k++;
            if (k == n_live) break;
        }
        /* The old arm's counts go, and so do the fallback pairs naming it. */
        free(e->arms[j].fallbacks);
        for (size_t a = 0; a < e->n_arms; a++) {
            metrics_arm_t *x = &e->arms[a];
            uint16_t k = 0;
            for (uint16_t i = 0; i < x->n_fallbacks; i++)
                if (x->fallbacks[i].to != j) x->fallbacks[k++] = x->fallbacks[i];
            x->n_fallbacks = k;
        }
    } else {
        e->n_arms++;
    }
    memset(&e->arms[j], 0, sizeof(e->arms[j]));
    snprintf(e->arm_names[j], sizeof(e->arm_names[j]), "%s", name);
    return (int)j;
}

metrics_exp_t *metrics_exp(metrics_t *m, const char *name, const char *const *arm_names,
                           size_t n_arms, uint16_t *slot_of)
{
    /* jansson holds no pointers: the block's address is kept as an integer
     * (json_int_t has 64 bits, enough for any pointer). */
    if (m->index == NULL && (m->index = json_object()) == NULL) return NULL;
    const json_t *ix = json_object_get(m->index, name);
    metrics_exp_t *e = ix ? (metrics_exp_t *)(intptr_t)json_integer_value(ix) : NULL;
    if (e == NULL) {
        e = calloc(1, sizeof(*e));
        if (e == NULL) return NULL;
        /* As many slots as arms now (5 KB each, histograms included);
         * slot_for grows them when a reload adds arms. MM_MAX_ARMS slots
         * for every experiment made 80 KB of zeroed, resident memory
         * each: 84 MB with 1,000 experiments. */
        e->cap = n_arms > 0 ? n_arms : 1;
        e->arms = calloc(e->cap, sizeof(*e->arms));
        e->arm_names = calloc(e->cap, sizeof(*e->arm_names));
        snprintf(e->name, sizeof(e->name), "%s", name);
        if (e->arms == NULL || e->arm_names == NULL ||
            json_object_set_new_nocheck(m->index, e->name, json_integer((json_int_t)(intptr_t)e)) <
                0)
            goto err;
        e->next = m->exps;
        m->exps = e;
    }
    for (size_t i = 0; i < n_arms; i++) {
        int j = slot_for(e, arm_names[i], arm_names, n_arms);
        if (j < 0) return NULL;
        slot_of[i] = (uint16_t)j;
    }
    e->champion = n_arms ? slot_of[0] : 0;
    return e;
err:
    free(e->arms);
    free(e->arm_names);
    free(e);
    return NULL;
}

void metrics_fallback(metrics_exp_t *e, int from, int to)
{
    metrics_arm_t *a = &e->arms[from];
    for (uint16_t i = 0; i < a->n_fallbacks; i++)
        if (a->fallbacks[i].to == to) {
            a->fallbacks[i].n++;
            return;
        }
    if (a->n_fallbacks == UINT16_MAX) return;
    metrics_fallback_t *f = realloc(a->fallbacks, (a->n_fallbacks + 1u) * sizeof(*f));
    if (f == NULL) return;
    f[a->n_fallbacks++] = (metrics_fallback_t){.to = (uint16_t)to, .n = 1};
    a->fallbacks = f;
}

void metrics_latency(metrics_arm_t *a, uint64_t latency_us)
{
    double s = (double)latency_us / 1e6;
    int i = 0;
    while (i < MM_LAT_BUCKETS && s > mm_lat_bounds[i]) i++;
    a->lat_buckets[i]++;
    a->lat_sum_s += s;
    a->lat_count++;
}
