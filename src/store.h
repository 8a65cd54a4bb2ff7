/* store.h — experiment state shared by every modelmux instance.
 *
 * The store owns, per experiment, the arm statistics and the operator's
 * control state (DESIGN.md §6). Two back ends behind one API:
 *   memory — the zero-setup default: state lives in this process;
 *   redis  — state lives in Redis (hiredis async API on the libuv loop) so
 *            many instances act as one.
 * The hot path never waits for Redis: increments land in `pending` and in
 * `merged` at once, and a timer (sync_ms) pipelines the pending deltas as
 * atomic HINCRBY/HINCRBYFLOAT, then reads the global snapshot back and folds
 * the still-unflushed deltas into it. Policies read `merged`. If Redis is
 * down, routing goes on with the last state, deltas accumulate (bounded,
 * drops counted) and are written when Redis returns. */
#ifndef MM_STORE_H
#define MM_STORE_H

#include <uv.h>

#include "common.h"
#include "config.h"
#include "../policies/policy.h"

typedef struct store_s store_t;

/* One experiment's shared state. Owned by the store; the router holds a
 * pointer for the experiment's lifetime. */
typedef struct {
    char name[MM_NAME_MAX + 1];
    size_t n_arms;
    char arm_names[MM_MAX_ARMS][MM_NAME_MAX + 1];
    arm_stats_t merged[MM_MAX_ARMS];  /* global snapshot + local unflushed deltas */
    arm_stats_t pending[MM_MAX_ARMS]; /* local deltas not yet written to the store */
    arm_stats_t frozen[MM_MAX_ARMS];  /* snapshot taken at pause: what policies see while paused */
    exp_control_t control;
    exp_control_t initial_control; /* what the config says; reset/redefinition go back to it */
    int control_dirty;             /* control changed locally, not yet written */
    uint64_t dropped;              /* deltas dropped while the store was unreachable */
} exp_state_t;

/* What a feedback lookup resolves a request id to. */
typedef struct {
    char experiment[MM_NAME_MAX + 1];
    char arm[MM_NAME_MAX + 1];
} store_reqinfo_t;

typedef void (*store_lookup_cb)(void *arg, int found, const store_reqinfo_t *info);

store_t *store_create(uv_loop_t *loop, const cfg_store_t *cfg, char *err, size_t errlen);
/* Stop timers, flush what is pending (Redis: best effort within timeout_ms),
 * then call done(arg). */
void store_shutdown(store_t *s, int timeout_ms, void (*done)(void *), void *arg);
void store_destroy(store_t *s);

/* Get or create the state of experiment `name` with these arms. An existing
 * state with the same arms is returned as is (reload keeps statistics); with
 * `redefined` set its control goes back to `initial`. */
exp_state_t *store_experiment(store_t *s, const char *name, const char *const *arm_names,
                              size_t n_arms, const exp_control_t *initial, int redefined);
/* Forget experiments not in `names` (after a reload removed them). */
void store_retain(store_t *s, const char *const *names, size_t n);

/* Hot-path increments: O(1), no I/O. */
void store_pull(store_t *s, exp_state_t *e, int arm);
void store_error(store_t *s, exp_state_t *e, int arm);
void store_reward(store_t *s, exp_state_t *e, int arm, double reward, int bernoulli);

/* Operator changes: version++, published to every instance. */
void store_set_control(store_t *s, exp_state_t *e, const exp_control_t *c);
/* Forget learned statistics (admin reset) everywhere. */
void store_reset(store_t *s, exp_state_t *e);

/* Feedback mapping (DESIGN.md §6 PREFIX:req:ID), kept for ttl_s seconds. */
void store_remember(store_t *s, mm_str_t request_id, const char *experiment, const char *arm,
                    int ttl_s);
/* Resolve a request id: synchronously from the local map when possible,
 * else (Redis) asynchronously. cb is always called exactly once. */
void store_lookup(store_t *s, mm_str_t request_id, store_lookup_cb cb, void *arg);

/* 1 while the store is reachable (always 1 for memory). */
int store_up(const store_t *s);
const char *store_kind(const store_t *s);

#endif
