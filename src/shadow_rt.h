/* shadow_rt.h — the mirroring runtime: sends copies of a request to shadow
 * arms, keeps the primary's answer for comparison, and reports outcomes to
 * the policy and the metrics. The primary request never waits for it.
 *
 * Included by server.h (the server context owns the cache of finished
 * groups), so it names the connection type without including it. */
#ifndef MM_SHADOW_RT_H
#define MM_SHADOW_RT_H

#include <stddef.h>
#include <stdint.h>

#include "upstream.h"

typedef struct conn_s conn_t;
typedef struct shadow_group_s shadow_group_t;

/* Finished shadow groups kept for reuse, buffers and all. All zero: empty.
 * Owned by the server context (mm_server_t.shadows). */
typedef struct {
    shadow_group_t *head;
    int n;
    size_t bytes; /* buffer memory of the groups in it */
    int active;   /* groups in use: a drain waits for them (their log lines) */
} shadow_cache_t;

/* Free every group in the cache (groups in use are not in it). */
void shadow_cache_free(shadow_cache_t *cache);

/* After routing: decide whether this request's body must be captured. */
void shadow_prepare(conn_t *c);
/* The request body is complete: send the mirrors. */
void shadow_start(conn_t *c);
/* The primary's answer head / body bytes / end (latency in µs). */
void shadow_on_primary_head(conn_t *c, const up_resp_t *resp);
void shadow_on_primary_body(conn_t *c, const char *p, size_t n);
void shadow_on_primary_done(conn_t *c, uint64_t latency_us);

#endif
