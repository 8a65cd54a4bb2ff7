/* metrics.h — this instance's counters, kept per experiment and arm.
 *
 * Counters are plain integers bumped on the loop thread (one owner, no
 * atomics). They live in a registry keyed by experiment name that outlives
 * reloads, so Prometheus counters do not reset when the config is reloaded.
 * Rendering to the Prometheus text format is in metrics.c. */
#ifndef MM_METRICS_H
#define MM_METRICS_H

#include <stdint.h>

#include "buf.h"
#include "common.h"

/* Upper bounds (seconds) of modelmux_request_duration_seconds buckets:
 * 1 ms to 10 s, the range model servers answer in. */
#define MM_LAT_BUCKETS 14
extern const double mm_lat_bounds[MM_LAT_BUCKETS];

enum { SHADOW_MATCH = 0, SHADOW_MISMATCH, SHADOW_ERROR, SHADOW_DROPPED, SHADOW__COUNT };

/* Fallbacks of one arm to one champion (a slot): an arm has one such
 * pair per champion it fell back to, usually one; a reload that makes
 * another arm the champion starts a new pair rather than relabel the old
 * count. */
typedef struct {
    uint16_t to;
    uint64_t n;
} metrics_fallback_t;

typedef struct {
    uint64_t by_status[600];                  /* requests by status code; 0 = no answer */
    uint64_t lat_buckets[MM_LAT_BUCKETS + 1]; /* last: +Inf */
    double lat_sum_s;
    uint64_t lat_count;
    metrics_fallback_t *fallbacks; /* requests chosen for this arm that a champion served */
    uint16_t n_fallbacks;
    uint64_t shadow[SHADOW__COUNT];
    uint64_t feedback;
    double reward_sum;
    /* Not exported: the mirrors in flight to this arm (shadow max_inflight).
     * Kept here, per arm name for the life of the process, so that the
     * mirrors a replaced router still has in flight count against the
     * limit after a reload too (a per-router count started again at 0). */
    int mirrors_inflight;
} metrics_arm_t;

/* An arm keeps its slot, and so its counters, for the life of the process:
 * a reload that removes an arm (or reorders the arms) resets none of its
 * counters, and a request still in flight on the old router counts into the
 * arm it was routed to. Slots grow with the arm names an experiment has had,
 * up to MM_METRICS_MAX_SLOTS; past that a removed arm's slot is reused. */
#define MM_METRICS_MAX_SLOTS 256

typedef struct metrics_exp_s {
    char name[MM_NAME_MAX + 1];
    size_t n_arms; /* slots in use: the live arms and the removed ones */
    size_t cap;
    char (*arm_names)[MM_NAME_MAX + 1];
    int champion;        /* slot the fallbacks go to */
    metrics_arm_t *arms; /* per slot */
    /* Answers merged from every arm (interleave): the client got no one
     * arm's answer, and X-Modelmux-Arm says "interleave"; so do the
     * requests_total and request_duration_seconds labels, once there was one. */
    metrics_arm_t merged;
    int has_merged;
    struct metrics_exp_s *next;
} metrics_exp_t;

typedef struct {
    metrics_exp_t *exps; /* newest first */
    /* Name -> block, so that a start or reload of n experiments costs O(n)
     * (a jansson object used as a hash table, as config.c indexes names;
     * made by the first metrics_exp). */
    struct json_t *index;
    uint64_t unrouted_by_status[600]; /* requests that matched no experiment */
} metrics_t;

void metrics_init(metrics_t *m);
void metrics_free(metrics_t *m);
/* Get or create the block for an experiment and give each arm a slot:
 * slot_of[i] for arm_names[i] (arm 0, the champion, gets the fallbacks). */
metrics_exp_t *metrics_exp(metrics_t *m, const char *name, const char *const *arm_names,
                           size_t n_arms, uint16_t *slot_of);

static inline void metrics_status(uint64_t *by_status, int status)
{
    by_status[(status >= 100 && status < 600) ? status : 0]++;
}
void metrics_latency(metrics_arm_t *a, uint64_t latency_us);
/* Slot `from` of e was chosen and slot `to`, its champion, served the
 * request. Off the hot path (a failure's); a count that finds no memory is
 * dropped. */
void metrics_fallback(metrics_exp_t *e, int from, int to);

#endif
