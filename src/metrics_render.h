/* metrics_render.h — the Prometheus text exposition of this instance's
 * counters (GET /metrics), and the effective traffic share of each arm that
 * both /metrics (modelmux_arm_share) and GET /experiments/NAME report. */
#ifndef MM_METRICS_RENDER_H
#define MM_METRICS_RENDER_H

#include <jansson.h>

#include "server.h"

#define MM_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* Append the whole exposition (text format 0.0.4) to out. */
void metrics_render(mm_server_t *srv, mm_buf_t *out);

/* The two gauges a --workers group's merged scrape ends with (scrape.c):
 * the group's size and how many workers' counters the answer holds. */
void metrics_render_group(mm_buf_t *out, int workers, int reporting);

/* A sample value as the exposition writes it: the shortest decimal that
 * reads back as v, integers without a fraction, NaN, +Inf, -Inf. */
void metrics_put_float(mm_buf_t *b, double v);

/* The share of traffic each arm of e gets right now, in [0, 1], summing to 1
 * (share has e->state->n_arms entries). `desc` is the policy's describe()
 * output when the caller already has it, else NULL (it is then computed
 * with a private RNG, so asking never disturbs routing's random stream).
 * The rule, first that applies:
 *   1. promoted or rolled back: the control weights (the champion alone
 *      when there are none), exactly as the router routes;
 *   2. control weights set on a policy that accepts weights;
 *   3. what the policy's description says: "weights"."effective" (ab),
 *      per-arm "expected_share" or "share" in "arms" (bandits), "step" with
 *      "canary" (canary), "primary" (shadow: the primary serves everything);
 *   4. the observed share of pulls in the store's merged statistics, or
 *      equal shares before the first request.
 * Then the share of a challenger this instance has ejected goes to the
 * champion, which serves its requests until the ejection ends. */
void metrics_arm_shares(const exp_rt_t *e, const json_t *desc, double *share);

/* The policy's description of e (a new reference, or NULL), computed with a
 * private RNG. */
json_t *metrics_describe(const exp_rt_t *e);

#endif
