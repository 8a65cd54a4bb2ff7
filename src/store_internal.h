/* store_internal.h — what store.c (the memory store and the shared
 * bookkeeping) and store_redis.c (the Redis replicator) share. Not for other
 * modules: they use store.h.
 *
 * A Redis store is the memory store plus a replicator: store.c keeps every
 * experiment's state and the request-id map exactly as the memory store does,
 * and calls into store_redis.c where a change must also reach Redis. The
 * per-experiment replication state lives next to the public state in
 * store_exp_t (exp_state_t is its first member, so container_of gets from
 * what the router holds to the rest). */
#ifndef MM_STORE_INTERNAL_H
#define MM_STORE_INTERNAL_H

#include <jansson.h>

#include "store.h"

/* Local request-id map: at most this many entries; the oldest are evicted. */
#define STORE_REQ_CAP_DEFAULT 1000000u
/* Request ids waiting to be written to Redis; more are dropped and counted. */
#define STORE_REQ_QUEUE_DEFAULT 100000u
/* Per-request data (store_put_aux): local map bounds, and the largest one. */
#define STORE_AUX_CAP_DEFAULT   1000000u
#define STORE_AUX_BYTES_DEFAULT (256u << 20)
#define STORE_AUX_MAX           (4u << 20)
/* Per-request data waiting to be written to Redis; more is dropped and counted. */
#define STORE_AUX_QUEUE_DEFAULT 100000u
#define STORE_AUX_QUEUE_BYTES   (64u << 20)
/* Longest Redis key we build: prefix (127) + {EXP} + ":seq:" + instance id. */
#define STORE_KEY_MAX 384

/* One remembered request id. Entries form a FIFO (insertion order) for
 * eviction and expiry, and a chain per hash bucket for lookup. */
typedef struct req_ent_s {
    struct req_ent_s *hnext; /* bucket chain, newest first */
    struct req_ent_s *fnext; /* FIFO: next younger entry */
    uint64_t expires_ms;     /* monotonic */
    uint64_t hash;
    uint32_t pair; /* index into store_t.pairs */
    uint8_t idlen;
    char id[];
} req_ent_t;

/* Request-id entries are freed in the order they were allocated (the FIFO
 * only ever loses its head), so they live in a queue of blocks: allocation
 * bumps the tail block, freeing counts down the head block, and an emptied
 * block is kept for reuse. No malloc per request, entries packed. */
#define REQ_BLOCK_BYTES (64u * 1024u)
typedef struct req_block_s {
    struct req_block_s *next; /* younger block */
    size_t used;              /* bytes handed out from data */
    size_t live;              /* entries not yet freed */
    _Alignas(8) char data[REQ_BLOCK_BYTES];
} req_block_t;

/* One request's data (store_put_aux). A FIFO in insertion order, doubly
 * linked because a rewrite replaces an entry in the middle. */
typedef struct aux_ent_s {
    struct aux_ent_s *hnext;         /* bucket chain */
    struct aux_ent_s *fprev, *fnext; /* FIFO: older, younger */
    uint64_t expires_ms;
    uint64_t hash;
    uint64_t gen; /* store-wide write number of this version */
    uint32_t len; /* data bytes */
    uint8_t idlen;
    uint8_t confirmed; /* Redis acknowledged this version */
    uint8_t sent;      /* some version was sent to Redis: another instance may hold it */
    char mem[];        /* id, then data */
} aux_ent_t;

/* An interned "EXP ARM" string: entries and the Redis queue refer to it by
 * index, so a remembered id costs no copy of the names. */
typedef struct {
    char text[2 * MM_NAME_MAX + 2];
    uint8_t exp_len;
    uint8_t text_len;
} req_pair_t;

/* The control hash's fields an operator's change writes (store_batch_t). */
#define CTL_F_WEIGHTS 1u
#define CTL_F_STATE   2u
#define CTL_F_STEP    4u
#define CTL_F_ALL     7u

/* The write to Redis in flight (or waiting for a retry) for one experiment. */
typedef struct {
    int active;   /* sent, or failed and waiting to be sent again as is */
    int failed;   /* the last attempt failed: resend the same seq and deltas */
    uint64_t seq; /* 0: read only */
    int reset;
    /* The reset_epoch this instance had read when it counted the deltas
     * (epoch_known 0: none yet, or the place changed). Redis applies them
     * only while that is still the epoch: after another instance's reset
     * they are statistics learned before it, and are dropped, not added
     * to the emptied hashes (store_redis.c, SYNC_SCRIPT). */
    int epoch_known;
    uint64_t epoch;
    int ctl_mode; /* 0 none, 1 write if Redis has none, 2 write and bump version,
                     3 the same if Redis's version is still ctl_base */
    uint64_t ctl_base;
    unsigned ctl_changes; /* modes 2 and 3: the local changes written, the version's bump */
    unsigned ctl_fields;  /* mode 2: the fields they changed, CTL_F_* (mode 3: all) */
    exp_control_t ctl;
    size_t n_arms;
    char arm_names[MM_MAX_ARMS][MM_NAME_MAX + 1];
    arm_stats_t deltas[MM_MAX_ARMS];
    /* The answers this write adds (a copy of answers_local when prepared):
     * subtracted from answers_local once Redis confirms them, unless a reset
     * dropped answers_local meanwhile (ans_gen changed). */
    answer_stats_t ans_deltas[MM_MAX_ARMS];
    uint64_t ans_gen;
    /* The tally counts this write adds (tally_local_pairs), to the hash of
     * the definition it was prepared for, subtracted once confirmed unless
     * the tally was cleared meanwhile (tally_gen changed). */
    mm_buf_t tally_deltas;
    size_t n_tally;
    uint64_t tally_gen;
    uint64_t tally_fp;             /* the definition whose fields it writes and reads */
    int tally_clear;               /* delete that definition's fields first (it was redefined to) */
    int restore;                   /* write `base` back if Redis lost everything */
    char incarnation[24];          /* of Redis's state `base` was read from ("": none) */
    arm_stats_t base[MM_MAX_ARMS]; /* the snapshot last read, per arm */
} store_batch_t;

typedef struct store_exp_s {
    exp_state_t pub; /* first: what the router holds */
    uint64_t resets; /* store_resets() */
    /* Interned "EXP ARM" pair per arm (index + 1, 0: not yet), the last slot
     * for the interleave pseudo-arm: store_remember_key needs no lookup. */
    uint32_t pair_of[MM_MAX_ARMS + 1];
    /* Redis replication (unused by the memory store). */
    int ctl_init; /* first sight: adopt Redis's control, or seed it with ours */
    int ctl_cas;  /* the unwritten control change is a policy's: compare-and-set */
    /* The control before the first unwritten local change (what Redis had,
     * as far as this instance knew): an operator's change writes only the
     * fields it changed from it, so one made on another instance meanwhile
     * to other fields is not undone (ctl_known_valid 0: write them all). */
    exp_control_t ctl_known;
    int ctl_known_valid;
    unsigned ctl_bad;        /* Redis's control fields found unusable, as last logged (CTL_F_*) */
    uint64_t ctl_base;       /* ... on this version (what the policy decided on) */
    int reset_pending;       /* a local reset not yet written */
    int synced;              /* a snapshot has been read at least once */
    int refused;             /* Redis answered the last write with an error: the store is down */
    char partial[160];       /* the error a write applied in part last met (logged once) */
    uint64_t ans_gen;        /* bumped whenever answers_local is dropped (a reset) */
    uint64_t tally_gen;      /* bumped whenever the tally is cleared (a reset, a new definition) */
    int tally_clear_pending; /* a reload changed the definition: clear its fields in Redis */
    unsigned holds;          /* routers routing to it (store_hold) */
    /* Dropped by store_retain but not yet freed: held by a router, or a
     * write's reply on its way (store_detached_done). On s->detached. */
    int detached;
    uint64_t known_epoch;
    /* store_reset_mark: the last reset epoch other than 0 read from Redis,
     * and `resets` then (the resets since are not in Redis yet). */
    uint64_t mark_epoch, mark_resets;
    /* The store moved (store_reconfigure): the next snapshot comes from
     * another Redis or prefix, whose reset epoch is its own, not a reset. */
    int rebase;
    /* The global statistics last read from Redis (without local deltas),
     * per arm of pub: written back if Redis comes back empty. */
    arm_stats_t seen[MM_MAX_ARMS];
    char incarnation[24]; /* the control's `incarnation` when `seen` was read ("": none) */
    store_batch_t batch;
    char ctl_key[STORE_KEY_MAX];
    char seq_key[STORE_KEY_MAX];
    struct store_exp_s *detached_next;
    struct store_exp_s **detached_pprev; /* what points at it: unlinked in O(1) */
} store_exp_t;

typedef struct store_redis_s store_redis_t;

struct store_s {
    uv_loop_t *loop;
    cfg_store_t cfg;
    store_exp_t **exps;
    size_t n_exps, cap_exps;
    /* Name -> position in exps, in a jansson object used as a hash table
     * (as config.c indexes names): a start or reload of n experiments costs
     * O(n) lookups, not O(n^2) string compares. Names were checked
     * (mm_valid_name), so the keys skip jansson's UTF-8 check. */
    json_t *index;
    store_exp_t *detached; /* removed, still held or awaiting a reply */
    /* The feedback stream's consumer (store_stream_subscribe), kept by the
     * memory store too: a reload that moves it to Redis starts consuming. */
    store_stream_cb stream_cb;
    void *stream_arg;
    store_stream_opts_t stream_opts;

    /* request-id map */
    req_ent_t **buckets;
    size_t n_buckets;
    size_t n_entries;
    size_t req_cap;
    req_ent_t *fifo_head, *fifo_tail;
    req_block_t *blk_head, *blk_tail; /* entry storage, oldest block first */
    req_block_t *blk_spare;           /* one emptied block kept for reuse */
    uint64_t req_evicted;
    uint64_t hash_key[2]; /* SipHash key: ids come from clients */

    req_pair_t *pairs;
    uint32_t n_pairs, cap_pairs;
    uint32_t *pair_index; /* open addressing, index + 1, 0 empty */
    uint32_t pair_index_cap;

    /* per-request data map (store_put_aux) */
    aux_ent_t **aux_buckets;
    size_t aux_n_buckets;
    size_t aux_n;
    size_t aux_bytes, aux_bytes_max;
    size_t aux_cap;
    aux_ent_t *aux_head, *aux_tail;
    uint64_t aux_evicted;
    uint64_t aux_too_large;
    uint64_t aux_gen;

    store_redis_t *redis; /* NULL: memory store */
};

/* ---- store.c services for the replicator ---- */
store_exp_t *store_exp_of(exp_state_t *e);
/* Take `c` as the current control (version included), as read from Redis. */
void store_exp_adopt_control(store_exp_t *x, const exp_control_t *c);
/* A reset made by another instance: local unflushed deltas are dropped. */
void store_exp_remote_reset(store_exp_t *x);
void store_exp_free(store_exp_t *x);
/* Drop expired request ids from the FIFO head, at most `max`. */
void store_req_prune(store_t *s, size_t max);
const req_pair_t *store_pair(const store_t *s, uint32_t pair);
/* Parse "EXP ARM" into info; 0 on success. */
int store_parse_pair(const char *p, size_t n, store_reqinfo_t *info);
/* Drop expired per-request data from the FIFO head, at most `max`. */
void store_aux_prune(store_t *s, size_t max);
/* Redis confirmed the write `gen` of id's data. */
void store_aux_confirm(store_t *s, const char *id, size_t idlen, uint64_t gen);
/* The write `gen` of id's data is on its way to Redis. */
void store_aux_sent(store_t *s, const char *id, size_t idlen, uint64_t gen);
/* Redis holds this version of id's data now (a compare-and-set of
 * store_update_aux succeeded): keep it as the local one, confirmed. */
void store_aux_settled(store_t *s, mm_str_t id, const char *data, size_t n, int ttl_s);
/* store_update_aux on the local version alone (no Redis, Redis down, or
 * Redis lost while asking): changed here, written in the next round. */
void store_aux_update_local(store_t *s, mm_str_t id, int ttl_s, store_aux_rewrite_cb rewrite,
                            store_aux_done_cb done, void *arg);
/* 0 if a newer local version than `gen` exists (the write is superseded). */
int store_aux_current(const store_t *s, const char *id, size_t idlen, uint64_t gen);
/* A GET of id's data answered (found: data/n from Redis; else nothing there,
 * or no answer): answer cb, preferring a local version Redis has not seen. */
void store_aux_resolved(store_t *s, mm_str_t id, int found, const char *data, size_t n,
                        store_aux_cb cb, void *arg);
/* Free everything; the replicator calls it once its handles are closed. */
void store_free_final(store_t *s);
/* 1 if any field of d is non-zero. */
int store_stats_nonzero(const arm_stats_t *d);
/* a -= b, counter by counter (Redis confirmed b). */
void store_answers_sub(answer_stats_t *a, const answer_stats_t *b);
/* A detached experiment may go once nothing holds it and no reply about it
 * is on its way: then it is unlinked from s->detached and freed. */
void store_detached_done(store_t *s, store_exp_t *x);

/* ---- store_redis.c ---- */
store_redis_t *store_redis_create(store_t *s, char *err, size_t errlen);
void store_redis_shutdown(store_redis_t *r, int timeout_ms, void (*done)(void *), void *arg);
/* Closes everything; store_free_final(s) runs now or from a close callback. */
void store_redis_destroy(store_redis_t *r);
void store_redis_flush(store_redis_t *r, void (*cb)(void *), void *arg);
void store_redis_exp_added(store_redis_t *r, store_exp_t *x, int redefined);
void store_redis_reconfigure(store_redis_t *r, const cfg_store_t *cfg);
/* Turn the memory store s into a Redis one at cfg, carrying its state
 * (store_reconfigure); -1, logged, if it cannot be created. */
int store_redis_from_memory(store_t *s, const cfg_store_t *cfg);
/* Whether r is where cfg says (same address, database, prefix, user). */
int store_redis_at(const store_redis_t *r, const cfg_store_t *cfg);
void store_redis_remember(store_redis_t *r, const char *id, size_t idlen, uint32_t pair,
                          uint64_t expires_ms);
void store_redis_lookup(store_redis_t *r, mm_str_t id, store_lookup_cb cb, void *arg);
void store_redis_put_aux(store_redis_t *r, const char *id, size_t idlen, const char *data, size_t n,
                         uint64_t expires_ms, uint64_t gen);
/* store_update_aux's compare-and-set; `local` is this instance's version
 * (NULL: none, read it from Redis first). */
void store_redis_update_aux(store_redis_t *r, mm_str_t id, const char *local, size_t local_n,
                            int ttl_s, store_aux_rewrite_cb rewrite, store_aux_done_cb done,
                            void *arg);
void store_redis_get_aux(store_redis_t *r, mm_str_t id, store_aux_cb cb, void *arg);
/* Connected (PING answered): GETs may be sent. */
int store_redis_up(const store_redis_t *r);
/* Connected, and no experiment's write refused (store_up()). */
int store_redis_writable(const store_redis_t *r);
void store_redis_stats(const store_redis_t *r, store_stats_t *out);
int store_redis_subscribe(store_redis_t *r, store_stream_cb cb, void *arg,
                          const store_stream_opts_t *opts);
void store_redis_msg_done(store_redis_t *r, store_msg_t *m, int ack);

/* Fault injection for tests: the next n experiment replies are treated as
 * lost after Redis applied them (as when the connection drops between the
 * write and its reply), to prove a retry does not count twice. */
void store_redis_debug_lose_replies(store_t *s, int n);

#endif
