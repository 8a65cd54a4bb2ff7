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
 * down, or refuses the writes, routing goes on with the last state, deltas
 * accumulate (counters: they need no bound) and are written when Redis
 * takes them again.
 * Answer statistics (store_answer: per arm answers, errors and a latency
 * histogram, for the canary's analysis and the admin p50/p99) are pooled the
 * same way, but kept as `answers` (snapshot) + `answers_local` (unconfirmed)
 * rather than merged in place: merging 976 buckets per arm on every round
 * and every increment would cost more than the two reads where they are
 * needed (a tick, a describe, an admin view). */
#ifndef MM_STORE_H
#define MM_STORE_H

#include <uv.h>

#include "buf.h"
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
    /* Pooled answer statistics (store_answer): the global snapshot last read
     * (the memory store counts here directly), and this instance's answers
     * the store has not confirmed yet (Redis: not sent, or in flight). A
     * policy sees the sum (policy_view_t.answers, answers_local). */
    answer_stats_t answers[MM_MAX_ARMS];
    answer_stats_t answers_local[MM_MAX_ARMS];
    uint64_t run_epoch; /* times the state became running here (policy_view_t) */
    exp_control_t control;
    exp_control_t initial_control; /* what the config says; reset/redefinition go back to it */
    unsigned control_dirty;        /* local control changes not yet written: each is a
                                      version bump (DESIGN.md §6: +1 on every change) */
    uint64_t dropped; /* increments discarded: unflushed when another instance reset the
                         experiment. An unreachable Redis, or one that refuses writes,
                         drops none: counters need no bound (docs/store.md) */
    uint32_t layout;  /* bumped when a reload changes the arm list (store_arm_index) */
    /* The policy's pooled counters (tally.h), for the definition whose
     * fingerprint is tally_fp (store_define). */
    policy_tally_t *tally;
    uint64_t tally_fp;
    uint64_t tally_defs; /* times the definition changed (store_define): a mirror started
                            before a change is not counted after it, even once the
                            definition is back to the one it started under */
} exp_state_t;

/* Index of arm `name` in e's current arm list, or MM_MAX_ARMS (out of range:
 * the increment functions ignore it) if it has none. */
int store_arm_index(const exp_state_t *e, const char *name);

/* What a feedback lookup resolves a request id to. */
typedef struct {
    char experiment[MM_NAME_MAX + 1];
    char arm[MM_NAME_MAX + 1];
} store_reqinfo_t;

typedef void (*store_lookup_cb)(void *arg, int found, const store_reqinfo_t *info);

/* Fails only on a bad config or no memory: with Redis unreachable it succeeds
 * (store_up() = 0) and keeps reconnecting. */
store_t *store_create(uv_loop_t *loop, const cfg_store_t *cfg, char *err, size_t errlen);
/* A reload's store settings. To Redis: a new sync_ms applies at once, and
 * new connection settings (host, port, sentinel, username, password, db) or
 * prefix move the store, from memory too: it connects there and carries
 * over what this instance holds (store_redis.c). To memory from Redis: kept
 * on Redis until the next start (logged), unless `group` (--workers' private
 * redis-server standing in for the memory store) is where it is. */
void store_reconfigure(store_t *s, const cfg_store_t *cfg, const cfg_store_t *group);
/* Whether the store of cfg looks host names up (libuv's thread pool): the
 * Redis host is one, or Sentinels are asked (they may name one). */
int store_has_names(const cfg_store_t *cfg);
/* Stop timers, flush what is pending (Redis: best effort within timeout_ms,
 * waiting for a reconnect if need be), close the connection, then call
 * done(arg) once. The memory store calls done before returning. Call once. */
void store_shutdown(store_t *s, int timeout_ms, void (*done)(void *), void *arg);
/* Free everything, shut down or not; lookups still waiting for Redis are
 * answered "not found". Handles close asynchronously: run the loop afterwards
 * (as for any libuv handle). Not from inside a store callback. */
void store_destroy(store_t *s);

/* Get or create the state of experiment `name` with these arms. An existing
 * state with the same arms is returned as is (reload keeps statistics); with
 * `redefined` set its control goes back to `initial`. An existing state with
 * other arms is kept (same pointer): statistics follow arm names, new arms
 * start at 0, and control goes back to `initial`. With Redis, a new state
 * adopts the control Redis holds (it survives restarts) unless `redefined`,
 * in which case `initial` is written. NULL on invalid names or arm counts. */
exp_state_t *store_experiment(store_t *s, const char *name, const char *const *arm_names,
                              size_t n_arms, const exp_control_t *initial, int redefined);
/* The experiment's definition (tally_fingerprint of the config's canonical
 * text): a new one clears the tally here, and with Redis its counts go to
 * the fields of the new definition in PREFIX:{EXP}:tally ("FP|NAME"); with
 * `redefined` (a reload changed the experiment to it, not a start) those
 * fields are deleted first, so its counts start over for every instance on
 * it, as the control does (DESIGN.md §5). The same one changes nothing. */
void store_define(store_t *s, exp_state_t *e, uint64_t fp, int redefined);
/* e's tally if it counts for definition fp, else NULL (a request in flight
 * on a router whose definition a reload replaced counts nothing there). */
static inline policy_tally_t *store_tally(const exp_state_t *e, uint64_t fp)
{
    return e->tally_fp == fp ? e->tally : NULL;
}

/* Forget the experiments keep(arg, name) says 0 for (after a reload removed
 * them from the config). One that is still held (below) leaves the store's
 * list at once, so a later experiment of the same name starts afresh, but
 * stays allocated until its last holder releases it. */
void store_retain(store_t *s, int (*keep)(void *arg, const char *name), void *arg);
/* A router holds every experiment it routes to, and releases them when it is
 * freed: requests in flight on a router replaced by a reload go on counting
 * into its experiments' states, so store_retain must not free those under
 * them. */
void store_hold(exp_state_t *e);
void store_release(store_t *s, exp_state_t *e);

/* Hot-path increments: O(1), no I/O. Out-of-range arms are ignored;
 * store_reward returns -1 (and counts nothing) for an out-of-range arm, or
 * a reward that is not finite or beyond +-MM_REWARD_MAX. */
void store_pull(store_t *s, exp_state_t *e, int arm);
void store_error(store_t *s, exp_state_t *e, int arm);
/* One answer from `arm` for the pooled answer statistics (status 0: none,
 * a transport failure or timeout: an error without a latency; >= 500: an
 * error). One array increment; with Redis replicated as
 * PREFIX:{EXP}:lat:ARM in the sync round. Counted in every state. */
void store_answer(store_t *s, exp_state_t *e, int arm, int status, uint64_t latency_us);
int store_reward(store_t *s, exp_state_t *e, int arm, double reward, int bernoulli);

/* Operator changes: version++ (c->version is ignored), published to every
 * instance. Entering EXP_PAUSED copies `merged` into `frozen`. */
void store_set_control(store_t *s, exp_state_t *e, const exp_control_t *c);
/* A policy's own change (a canary's step, promotion or rollback): the same,
 * but with Redis it is written only if the control there is still the
 * version this instance decided on (compare-and-set). When another instance
 * (or an operator) changed it first, this change is dropped and the other
 * one adopted at the same sync round. So instances that run the same canary
 * move it once per decision, the first to conclude, rather than once each,
 * last writer winning. Operator changes are never dropped. */
void store_propose_control(store_t *s, exp_state_t *e, const exp_control_t *c);
/* 1 once e's control is the shared one: always with the memory store; with
 * Redis once a sync round has read the experiment's control hash (and
 * adopted it, or seeded it with ours when Redis had none). The core runs no
 * policy tick before that: a starting canary would otherwise publish its
 * first step over the step, promotion or rollback that Redis holds for every
 * instance. While Redis is unreachable at start it stays 0. */
int store_control_known(const store_t *s, const exp_state_t *e);
/* Forget learned statistics (admin reset) everywhere, and operator changes:
 * control goes back to initial_control (version++). See store_resets(). */
void store_reset(store_t *s, exp_state_t *e);

/* Feedback mapping (DESIGN.md §6 PREFIX:req:ID), kept for ttl_s seconds in a
 * local map (at most 1M ids, oldest evicted) and, with Redis, written there. */
void store_remember(store_t *s, mm_str_t request_id, const char *experiment, const char *arm,
                    int ttl_s);
/* The same for the hot path, in two steps. store_req_key, when the head is
 * routed: the request's key in the local map (its bucket is fetched into the
 * cache meanwhile: on a grown map that read is a cache miss per request).
 * store_remember_key, when the request ends: arm is an index of e, or
 * STORE_ARM_INTERLEAVE, and request_id must already be valid (mm_valid_reqid:
 * the proxy checked the client's or made its own). */
#define STORE_ARM_INTERLEAVE (-1)
uint64_t store_req_key(const store_t *s, mm_str_t request_id);
void store_remember_key(store_t *s, exp_state_t *e, int arm, mm_str_t request_id, uint64_t key,
                        int ttl_s);
/* Resolve a request id: synchronously from the local map when possible,
 * else (Redis) asynchronously. cb is always called exactly once, synchronously
 * with "not found" when Redis is down. */
void store_lookup(store_t *s, mm_str_t request_id, store_lookup_cb cb, void *arg);

/* Arbitrary deltas for one arm (interleave clicks: an impression's outcome
 * moves from one arm's wins to a tie, say). Every field of `delta` is added
 * to `merged` and, with Redis, to `pending`, and written like the other
 * increments: pulls, feedback and errors as integers, the four sums as
 * floats, where negative deltas are allowed. Out-of-range arms and non-finite
 * deltas are ignored. */
void store_add(store_t *s, exp_state_t *e, int arm, const arm_stats_t *delta);

/* Per-request data for feedback (DESIGN.md §6 extension PREFIX:il:ID, see
 * docs/store.md): opaque bytes a policy's combine() produced for a request
 * (which team showed which item), kept ttl_s seconds in a local map (at most
 * 1M entries and 256 MiB, oldest evicted and counted) and, with Redis,
 * written there in the next sync round as SET PREFIX:il:ID … PX (queued,
 * bounded, drops counted). Putting data for an id again replaces it. */
void store_put_aux(store_t *s, mm_str_t request_id, const char *data, size_t n, int ttl_s);
/* Get what was put for a request id. cb is called exactly once, with data
 * valid only during the call: synchronously from the local map when this
 * instance holds the newest version (it wrote it and Redis has not confirmed
 * it yet, or there is no Redis, or Redis is down), else after a GET, so that
 * what another instance wrote is seen; when Redis has nothing, the local copy
 * answers. */
typedef void (*store_aux_cb)(void *arg, int found, const char *data, size_t n);
void store_get_aux(store_t *s, mm_str_t request_id, store_aux_cb cb, void *arg);
/* Rewrite what was put for a request id (a click), atomically across
 * instances. rewrite(arg, data, n, out) sees the current version and returns
 * STORE_AUX_WRITE with the new version appended to `out` (given empty), or a
 * positive code of the caller's: then nothing is written. done(arg, code) is
 * called exactly once, perhaps synchronously: STORE_AUX_WRITE once the new
 * version is in place (it replaces the one rewrite saw and gets a fresh
 * ttl_s), the rewrite's code, or STORE_AUX_NOT_FOUND (nothing kept for the
 * id, or another instance kept changing it).
 * With Redis, a version another instance may see is changed in Redis by
 * compare-and-set (a small Lua script): if another instance wrote a newer
 * version since, rewrite is called again with that one, at most
 * STORE_AUX_TRIES times in all. So two clicks on one impression handled by
 * two instances at the same moment both count, and each sees the other's.
 * A version no other instance can have seen (put here, not yet sent), or
 * Redis down or lost while asking, is changed locally and written in the next
 * round, as store_put_aux. */
#define STORE_AUX_WRITE     0
#define STORE_AUX_NOT_FOUND (-1)
#define STORE_AUX_TRIES     8
typedef int (*store_aux_rewrite_cb)(void *arg, const char *data, size_t n, mm_buf_t *out);
typedef void (*store_aux_done_cb)(void *arg, int code);
void store_update_aux(store_t *s, mm_str_t request_id, int ttl_s, store_aux_rewrite_cb rewrite,
                      store_aux_done_cb done, void *arg);

/* Call cb(arg) once a sync round that starts after this call is done: what
 * this instance changed is written and the global view read back. At once
 * for the memory store, and while Redis is down or the store shuts down (a
 * flush never waits for a reconnect). May call cb before returning. */
void store_flush(store_t *s, void (*cb)(void *), void *arg);

/* 1 while the store is reachable and takes this instance's writes (always 1
 * for memory): 0 while Redis is down, and while it refuses a write (OOM, a
 * read-only replica...), which is kept and sent again. */
int store_up(const store_t *s);
const char *store_kind(const store_t *s);

/* ---- additions by the store module ---- */

/* Resets applied to this experiment so far, whether made here (store_reset)
 * or by another instance and seen through Redis. The core keeps the value it
 * last saw and calls the policy's reset when it changes, so policy-internal
 * state is forgotten on every instance, not only the one that took the call. */
uint64_t store_resets(const exp_state_t *e);

/* Names the statistics of e that this instance counts into now: it changes
 * with every reset, whether made here or by another instance, and is the
 * same on every instance once each has read the reset from Redis (text
 * "EPOCH.N": Redis's reset epoch, 0 without Redis; N, the resets made or
 * seen here since it was read). Per-request data put under another mark
 * belongs to statistics a reset has forgotten. Writes at most
 * STORE_MARK_MAX bytes with the NUL; returns the length. */
#define STORE_MARK_MAX 48
size_t store_reset_mark(const exp_state_t *e, char *out);

/* Counters for /metrics and the logs. */
typedef struct {
    uint64_t req_entries;      /* request ids in the local map now */
    uint64_t req_evicted;      /* removed before expiry because the map was full */
    uint64_t req_queued;       /* waiting to be written to Redis */
    uint64_t req_dropped;      /* never written to Redis: the write queue was full */
    uint64_t syncs;            /* sync rounds completed (Redis) */
    uint64_t sync_errors;      /* experiment writes that failed and will be retried */
    uint64_t reconnects;       /* successful connections after the first */
    uint64_t stream_delivered; /* feedback stream entries handed to the callback */
    uint64_t stream_acked;     /* entries acknowledged (XACK) */
    uint64_t stream_dead;      /* entries acked unapplied after max_deliveries attempts */
    uint64_t stream_trimmed;   /* entries deleted once every consumer group was done */
    uint64_t aux_entries;      /* per-request data entries in the local map now */
    uint64_t aux_bytes;        /* their size */
    uint64_t aux_evicted;      /* removed before expiry: the map was full */
    uint64_t aux_queued;       /* waiting to be written to Redis */
    uint64_t aux_dropped;      /* never written to Redis: queue full, or larger than 4 MiB */
} store_stats_t;
void store_get_stats(const store_t *s, store_stats_t *out);

/* ---- the Redis feedback stream PREFIX:feedback (DESIGN.md §4) ----
 * The store reads the stream through the consumer group "modelmux" (created
 * from id 0 with MKSTREAM) as consumer HOSTNAME-PID, once per sync round
 * (XREADGROUP ... COUNT n, never BLOCK: the connection is shared). Each entry
 * goes to the callback as a store_msg_t; the receiver answers exactly once
 * with store_msg_done: ack=1 when the event was applied, or can never be
 * (invalid), so it is acknowledged (XACK, sent in the next sync round, retried
 * until Redis confirms); ack=0 leaves it pending. Entries pending longer than
 * claim_idle_ms, whoever holds them (a dead instance, or this one after
 * ack=0), are claimed (XPENDING IDLE + XCLAIM, Redis >= 6.2) and delivered
 * again; one delivered max_deliveries times is acked unapplied and counted
 * (stream_dead). The callback may call store_lookup and answer later; it must
 * not destroy the store. */
typedef struct store_msg_s store_msg_t;
typedef void (*store_stream_cb)(void *arg, store_msg_t *m);
typedef struct {
    int count;          /* entries per read, default 100 (0 in any field: the default) */
    int claim_idle_ms;  /* default 30000 */
    int max_deliveries; /* default 10 */
    int max_inflight;   /* delivered and not yet acked; reading pauses above it, default 1000 */
} store_stream_opts_t;
/* Start consuming (opts may be NULL); with the memory store, once a reload
 * moves it to Redis (store_reconfigure). -1 when already subscribed. */
int store_stream_subscribe(store_t *s, store_stream_cb cb, void *arg,
                           const store_stream_opts_t *opts);
const char *store_msg_id(const store_msg_t *m);
/* The value of field `name`, or NULL. Valid until store_msg_done. */
const char *store_msg_field(const store_msg_t *m, const char *name);
/* How many times field `name` appears in the entry (a stream entry may
 * repeat a field; which value was meant cannot be known then). */
size_t store_msg_field_count(const store_msg_t *m, const char *name);
/* 1 if a field's name or value held a NUL byte: store_msg_field would give
 * only its part before the NUL ("1\0junk" read as 1, a request id cut
 * short), so such an entry is not to be applied. */
int store_msg_has_nul(const store_msg_t *m);
/* 1 on the first delivery, more after a claim. */
unsigned store_msg_deliveries(const store_msg_t *m);
/* Exactly once per message; m is invalid afterwards. Messages not answered
 * when the store is destroyed are freed with it. */
void store_msg_done(store_t *s, store_msg_t *m, int ack);

#endif
