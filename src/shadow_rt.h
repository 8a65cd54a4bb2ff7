/* shadow_rt.h — the mirroring runtime: sends copies of a request to shadow
 * arms, keeps the primary's answer for comparison, and reports outcomes to
 * the policy and the metrics. The primary request never waits for it. */
#ifndef MM_SHADOW_RT_H
#define MM_SHADOW_RT_H

#include "proxy_internal.h"

/* After routing: decide whether this request's body must be captured. */
void shadow_prepare(conn_t *c);
/* The request body is complete: send the mirrors. */
void shadow_start(conn_t *c);
/* The primary's answer head / body bytes / end (latency in µs). */
void shadow_on_primary_head(conn_t *c, const up_resp_t *resp);
void shadow_on_primary_body(conn_t *c, const char *p, size_t n);
void shadow_on_primary_done(conn_t *c, uint64_t latency_us);

#endif
