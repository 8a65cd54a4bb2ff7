/* router.h — the live routing table built from one config: experiments with
 * their match rules, policy instance, shared state (from the store), metrics
 * block, and one upstream pool per upstream.
 *
 * A router is immutable once built and reference-counted: a reload builds a
 * new one and swaps it in, while requests that started on the old one finish
 * on it (they hold a reference). */
#ifndef MM_ROUTER_H
#define MM_ROUTER_H

#include <string.h>
#include <uv.h>

#include "config.h"
#include "http.h"
#include "metrics.h"
#include "store.h"
#include "upstream.h"

typedef struct {
    const cfg_experiment_t *cfg;
    exp_state_t *state;          /* owned by the store */
    metrics_exp_t *metrics;      /* owned by the metrics registry */
    uint16_t mslot[MM_MAX_ARMS]; /* metrics slot of each arm */
    uint32_t layout;             /* state->layout when this router was built */
    up_pool_t *pools[MM_MAX_ARMS];
    const cfg_upstream_t *ups[MM_MAX_ARMS];
    size_t salt_len;
    uint64_t resets_seen; /* store_resets() when the policy was last reset */
    uint64_t fp;          /* tally_fingerprint of the definition: its tally (store_tally) */
} exp_rt_t;

/* The store's index of this router's arm `arm`. A reload that changes an
 * experiment's arms remaps its store state in place, so a request still in
 * flight on the old router looks its arm up by name (MM_MAX_ARMS, which the
 * store ignores, if the arm is gone). Negative values (STORE_ARM_INTERLEAVE)
 * pass through. */
static inline int router_sarm(const exp_rt_t *e, int arm)
{
    if (arm < 0 || e->state->layout == e->layout) return arm;
    if ((size_t)arm >= e->cfg->n_arms) return MM_MAX_ARMS;
    return store_arm_index(e->state, e->ups[arm]->name);
}

/* The counters of arm `arm` (an index into this router's arm list). */
static inline metrics_arm_t *router_marm(const exp_rt_t *e, int arm)
{
    return &e->metrics->arms[e->mslot[arm]];
}

/* A request chosen for `arm` that this router's champion (arm 0) served. */
static inline void router_count_fallback(const exp_rt_t *e, int arm)
{
    metrics_fallback(e->metrics, e->mslot[arm], e->mslot[0]);
}

/* A challenger ejected by outlier detection (its upstream's `eject`):
 * requests for it go to the champion (arm 0), which is never routed around
 * (DESIGN.md §4). */
static inline int router_arm_ejected(const exp_rt_t *e, int arm, uint64_t now_ms)
{
    return arm != 0 && up_pool_ejected(e->pools[arm], now_ms);
}

/* A canary experiment: the only policy whose control's canary_step means
 * anything (metrics, the admin log). */
static inline int router_is_canary(const exp_rt_t *e)
{
    return strcmp(e->cfg->ops->name, "canary") == 0;
}

typedef struct router_s {
    config_t *cfg;     /* owned */
    up_pool_t **pools; /* per upstream, owned */
    exp_rt_t *exps;
    size_t n_exps;
    store_t *store; /* holds every exps[i].state */
    int refs;
} router_t;

/* `old` (may be NULL) is the router being replaced: an experiment whose
 * definition changed gets its control state reset (DESIGN.md §5), and each
 * experiment it had is handed to the new policy instance (ops->adopt), so an
 * unchanged one goes on with what its policy measured. `addrs`:
 * each upstream's addresses, looked up already (a reload); NULL: looked up
 * now, blocking (startup). */
router_t *router_create(uv_loop_t *loop, config_t *cfg, const router_t *old, store_t *store,
                        metrics_t *metrics, const mm_addrs_t *addrs, char *err, size_t errlen);
void router_ref(router_t *r);
void router_unref(router_t *r);

/* First experiment whose match rules accept the request, or NULL. `url` is
 * the request target; `host` the Host header value (may be empty). */
exp_rt_t *router_match(router_t *r, mm_str_t url, mm_str_t host, const http_head_t *head,
                       const char *base);

/* The policy's request view for a request: the sticky key, if any, hashed. */
void router_request_view(const exp_rt_t *e, mm_str_t method, mm_str_t url, const http_head_t *head,
                         const char *base, policy_req_t *out);

/* Decide one request, honouring the operator's state: promoted / rolled back
 * route by the control weights; paused shows the policy frozen statistics. */
void router_choose(exp_rt_t *e, const policy_req_t *req, mm_rng_t *rng, uint64_t now_ms,
                   policy_choice_t *out);

/* A reset of the experiment (POST reset here, or another instance's seen
 * through the store): the policy forgets what it keeps itself (the store
 * has forgotten the statistics, answer latencies included). */
void router_on_reset(exp_rt_t *e);
/* Catch up with the resets made elsewhere (another instance's, seen
 * through the store) on every experiment of r: the tick does it once a
 * second, and an admin answer first, so that a view never shows the
 * policy's own state from before a reset next to the statistics after it. */
void router_sync_resets(router_t *r);

/* One answer from arm `arm` (this router's index; status 0: none, a
 * transport failure or timeout): counted in the store's pooled answer
 * statistics (always), and given to the policy's on_response while the
 * experiment runs. Every place an arm answers (a request, a mirror, a
 * ranker) reports through here, so the two never disagree. */
void router_answer(store_t *s, exp_rt_t *e, int arm, int status, uint64_t latency_us,
                   uint64_t now_ms);

/* The experiment that goes on for `e` (of router `was`, which a reload may
 * have replaced) in `now`, the router serving: `e` itself when now is was;
 * else the one of the same name and definition (so the same arms in the
 * same order, and a policy instance that took over e's, adopt), or `e`
 * when there is none. */
exp_rt_t *router_successor(router_t *now, const router_t *was, exp_rt_t *e);

/* The view a policy sees right now (for ticks and descriptions). */
void router_view(const exp_rt_t *e, mm_rng_t *rng, uint64_t now_ms, policy_view_t *v);

#endif
