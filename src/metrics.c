/* metrics.c — see metrics.h. */
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
        free(e);
        e = next;
    }
    m->exps = NULL;
}

metrics_exp_t *metrics_exp(metrics_t *m, const char *name, const char *const *arm_names,
                           size_t n_arms)
{
    metrics_exp_t *e;
    for (e = m->exps; e; e = e->next)
        if (strcmp(e->name, name) == 0) break;
    if (e == NULL) {
        e = calloc(1, sizeof(*e));
        if (e == NULL) return NULL;
        snprintf(e->name, sizeof(e->name), "%s", name);
        e->next = m->exps;
        m->exps = e;
    }
    /* A reload may change the arms: counters follow the arm's name. (The
     * old counters are copied to the heap: 16 arms of histograms are too
     * much for the stack.) */
    metrics_arm_t *old = malloc(sizeof(e->arms));
    char old_names[MM_MAX_ARMS][MM_NAME_MAX + 1];
    size_t old_n = old ? e->n_arms : 0; /* out of memory: the counters start over */
    if (old) memcpy(old, e->arms, sizeof(e->arms));
    memcpy(old_names, e->arm_names, sizeof(old_names));
    memset(e->arms, 0, sizeof(e->arms));
    e->n_arms = n_arms;
    for (size_t i = 0; i < n_arms; i++) {
        snprintf(e->arm_names[i], sizeof(e->arm_names[i]), "%s", arm_names[i]);
        for (size_t j = 0; j < old_n; j++)
            if (strcmp(old_names[j], arm_names[i]) == 0) e->arms[i] = old[j];
    }
    free(old);
    e->champion = 0;
    return e;
}

void metrics_latency(metrics_arm_t *a, uint64_t latency_us)
{
    double s = (double)latency_us / 1e6;
    int i = 0;
    while (i < MM_LAT_BUCKETS && s > mm_lat_bounds[i]) i++;
    a->lat_buckets[i]++;
    a->lat_hist[lathist_index(latency_us)]++;
    a->lat_sum_s += s;
    a->lat_count++;
}
