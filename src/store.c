/* store.c — experiment state: the memory store, and the bookkeeping every
 * back end shares.
 *
 * The memory store is the whole store for one process: per experiment an
 * exp_state_t whose `merged` statistics are updated in place by the hot-path
 * increments (O(1), no I/O, nothing in `pending` since there is nothing to
 * write), the control state with its version, and a map request id ->
 * (experiment, arm) with a TTL for feedback. The Redis store reuses all of it
 * and adds a replicator (store_redis.c) that ships `pending` to Redis and
 * folds the global snapshot back in; here that only means filling `pending`
 * and marking what changed.
 *
 * The request-id map is a chained hash table (SipHash with a random key: the
 * ids come from clients, so a plain hash could be flooded) plus a FIFO in
 * insertion order. Expired entries are pruned from the FIFO head a few at a
 * time on every insert (and by the Redis sync timer); the map holds at most
 * req_cap entries (1M by default, about 80 MB with 32-character ids) and
 * evicts the oldest beyond that, counting evictions. Because TTLs differ per
 * experiment the FIFO is only roughly in expiry order, so a lookup checks the
 * expiry itself; an entry with a short TTL behind one with a long TTL lingers
 * until it reaches the head, bounded by the cap. Entries are only ever freed
 * from the head, oldest first, so they are stored in a queue of 64 KiB
 * blocks (req_alloc / req_free_oldest): no malloc per remembered id.
 *
 * Per-request data (store_put_aux: interleave attribution) has a map of its
 * own, built the same way but with a doubly linked FIFO, because a click
 * rewrites an entry (the new version moves to the young end with a fresh
 * TTL). It is bounded by entries and by bytes. With Redis each entry knows
 * whether Redis has confirmed its version: until then this instance holds
 * the newest one and answers locally; after, a read asks Redis, where another
 * instance may have written a newer one. A click's rewrite (store_update_aux)
 * of a version that was ever sent goes through store_redis_update_aux's
 * compare-and-set, so two instances never both start from one version. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "log.h"
#include "store_internal.h"
#include "tally.h"

#define BUCKETS_MIN    1024u
#define PRUNE_PER_CALL 4u

/* ---- SipHash-1-3 (Aumasson & Bernstein), 64-bit output ----
 * One compression and three finalization rounds, as Rust's and CPython's
 * hash tables use for hash-flooding resistance: half the rounds of the
 * cryptographic SipHash-2-4, and plenty for a keyed table hash. */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                   \
    do {                                                                                           \
        v0 += v1;                                                                                  \
        v1 = ROTL(v1, 13);                                                                         \
        v1 ^= v0;                                                                                  \
        v0 = ROTL(v0, 32);                                                                         \
        v2 += v3;                                                                                  \
        v3 = ROTL(v3, 16);                                                                         \
        v3 ^= v2;                                                                                  \
        v0 += v3;                                                                                  \
        v3 = ROTL(v3, 21);                                                                         \
        v3 ^= v0;                                                                                  \
        v2 += v1;                                                                                  \
        v1 = ROTL(v1, 17);                                                                         \
        v1 ^= v2;                                                                                  \
        v2 = ROTL(v2, 32);                                                                         \
    } while (0)

static inline uint64_t load_le64(const unsigned char *p)
{
    uint64_t m;
    memcpy(&m, p, sizeof m); /* one load; SipHash reads words little-endian */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    m = __builtin_bswap64(m);
#endif
    return m;
}

static uint64_t siphash(const uint64_t key[2], const char *p, size_t n)
{
    uint64_t v0 = 0x736f6d6570736575ULL ^ key[0];
    uint64_t v1 = 0x646f72616e646f6dULL ^ key[1];
    uint64_t v2 = 0x6c7967656e657261ULL ^ key[0];
    uint64_t v3 = 0x7465646279746573ULL ^ key[1];
    const unsigned char *in = (const unsigned char *)p;
    size_t left = n;
    while (left >= 8) {
        uint64_t m = load_le64(in);
        v3 ^= m;
        SIPROUND;
        v0 ^= m;
        in += 8;
        left -= 8;
    }
    uint64_t b = (uint64_t)n << 56;
    for (size_t i = 0; i < left; i++) b |= (uint64_t)in[i] << (8 * i);
    v3 ^= b;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* ---- interned "EXP ARM" pairs ---- */

static uint32_t pair_hash(const char *text, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a: the names come from the config, not clients */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)text[i]) * 16777619u;
    return h;
}

static int pair_index_grow(store_t *s)
{
    uint32_t cap = s->pair_index_cap ? s->pair_index_cap * 2 : 64;
    uint32_t *idx = calloc(cap, sizeof(*idx));
    if (idx == NULL) return -1;
    for (uint32_t i = 0; i < s->n_pairs; i++) {
        const req_pair_t *p = &s->pairs[i];
        uint32_t h = pair_hash(p->text, p->text_len) & (cap - 1);
        while (idx[h] != 0) h = (h + 1) & (cap - 1);
        idx[h] = i + 1;
    }
    free(s->pair_index);
    s->pair_index = idx;
    s->pair_index_cap = cap;
    return 0;
}

/* Index of "exp arm", added if new; UINT32_MAX on bad names or no memory. */
static uint32_t pair_intern(store_t *s, const char *exp, const char *arm)
{
    size_t el = strlen(exp), al = strlen(arm);
    if (!mm_valid_name(exp, el) || !mm_valid_name(arm, al)) return UINT32_MAX;
    char text[2 * MM_NAME_MAX + 2];
    memcpy(text, exp, el);
    text[el] = ' ';
    memcpy(text + el + 1, arm, al);
    size_t tl = el + 1 + al;
    text[tl] = '\0';

    uint32_t h = pair_hash(text, tl);
    if (s->pair_index_cap) {
        for (uint32_t i = h & (s->pair_index_cap - 1);; i = (i + 1) & (s->pair_index_cap - 1)) {
            uint32_t v = s->pair_index[i];
            if (v == 0) break;
            const req_pair_t *p = &s->pairs[v - 1];
            if (p->text_len == tl && memcmp(p->text, text, tl) == 0) return v - 1;
        }
    }
    if (s->n_pairs == UINT32_MAX - 1) return UINT32_MAX;
    if ((s->n_pairs + 1) * 2 > s->pair_index_cap && pair_index_grow(s) != 0) return UINT32_MAX;
    if (s->n_pairs == s->cap_pairs) {
        uint32_t cap = s->cap_pairs ? s->cap_pairs * 2 : 16;
        req_pair_t *np = realloc(s->pairs, cap * sizeof(*np));
        if (np == NULL) return UINT32_MAX;
        s->pairs = np;
        s->cap_pairs = cap;
    }
    req_pair_t *p = &s->pairs[s->n_pairs];
    memcpy(p->text, text, tl + 1);
    p->text_len = (uint8_t)tl;
    p->exp_len = (uint8_t)el;
    uint32_t i = h & (s->pair_index_cap - 1);
    while (s->pair_index[i] != 0) i = (i + 1) & (s->pair_index_cap - 1);
    s->pair_index[i] = s->n_pairs + 1;
    return s->n_pairs++;
}

const req_pair_t *store_pair(const store_t *s, uint32_t pair)
{
    return pair < s->n_pairs ? &s->pairs[pair] : NULL;
}

int store_parse_pair(const char *p, size_t n, store_reqinfo_t *info)
{
    const char *sp = memchr(p, ' ', n);
    if (sp == NULL) return -1;
    size_t el = (size_t)(sp - p), al = n - el - 1;
    if (!mm_valid_name(p, el) || !mm_valid_name(sp + 1, al)) return -1;
    memcpy(info->experiment, p, el);
    info->experiment[el] = '\0';
    memcpy(info->arm, sp + 1, al);
    info->arm[al] = '\0';
    return 0;
}

static void pair_info(const store_t *s, uint32_t pair, store_reqinfo_t *info)
{
    const req_pair_t *p = &s->pairs[pair];
    memcpy(info->experiment, p->text, p->exp_len);
    info->experiment[p->exp_len] = '\0';
    size_t al = (size_t)p->text_len - p->exp_len - 1;
    memcpy(info->arm, p->text + p->exp_len + 1, al);
    info->arm[al] = '\0';
}

/* ---- request-id map ---- */

static int valid_reqid(mm_str_t id)
{
    return mm_valid_reqid(id.p, id.n);
}

/* Room for an entry of `size` bytes at the young end, or NULL. */
static req_ent_t *req_alloc(store_t *s, size_t size)
{
    size = (size + 7) & ~(size_t)7;
    req_block_t *b = s->blk_tail;
    if (b == NULL || REQ_BLOCK_BYTES - b->used < size) {
        req_block_t *nb = s->blk_spare;
        if (nb != NULL)
            s->blk_spare = NULL;
        else if ((nb = malloc(sizeof(*nb))) == NULL)
            return NULL;
        nb->next = NULL;
        nb->used = nb->live = 0;
        if (b)
            b->next = nb;
        else
            s->blk_head = nb;
        s->blk_tail = b = nb;
    }
    req_ent_t *e = (req_ent_t *)(void *)(b->data + b->used);
    b->used += size;
    b->live++;
    return e;
}

/* The oldest entry is gone: it was in the head block. */
static void req_free_oldest(store_t *s)
{
    req_block_t *b = s->blk_head;
    if (--b->live > 0) return;
    if (b == s->blk_tail) { /* the only block: start it over */
        b->used = 0;
        return;
    }
    s->blk_head = b->next;
    if (s->blk_spare == NULL)
        s->blk_spare = b;
    else
        free(b);
}

static void req_unlink_head(store_t *s)
{
    req_ent_t *e = s->fifo_head;
    req_ent_t **pp = &s->buckets[e->hash & (s->n_buckets - 1)];
    while (*pp != e) pp = &(*pp)->hnext;
    *pp = e->hnext;
    s->fifo_head = e->fnext;
    if (s->fifo_head == NULL) s->fifo_tail = NULL;
    s->n_entries--;
    req_free_oldest(s);
}

static void req_prune_at(store_t *s, size_t max, uint64_t now)
{
    while (max-- > 0 && s->fifo_head != NULL && s->fifo_head->expires_ms <= now) req_unlink_head(s);
}

void store_req_prune(store_t *s, size_t max)
{
    req_prune_at(s, max, mm_now_ms());
}

static void req_grow(store_t *s)
{
    size_t n = s->n_buckets * 2;
    req_ent_t **nb = calloc(n, sizeof(*nb));
    if (nb == NULL) return; /* longer chains, still correct */
    /* Walk the FIFO oldest first, pushing on chain heads: newest ends first. */
    for (req_ent_t *e = s->fifo_head; e != NULL; e = e->fnext) {
        req_ent_t **b = &nb[e->hash & (n - 1)];
        e->hnext = *b;
        *b = e;
    }
    free(s->buckets);
    s->buckets = nb;
    s->n_buckets = n;
}

/* Returns 0, or -1 without memory (the id is then simply not remembered). */
static int req_insert(store_t *s, mm_str_t id, uint64_t hash, uint32_t pair, uint64_t now,
                      uint64_t expires_ms)
{
    req_prune_at(s, PRUNE_PER_CALL, now);
    while (s->n_entries >= s->req_cap && s->fifo_head != NULL) {
        req_unlink_head(s);
        s->req_evicted++;
    }
    if (s->n_entries >= s->n_buckets && s->n_buckets < s->req_cap) req_grow(s);
    req_ent_t *e = req_alloc(s, sizeof(*e) + id.n);
    if (e == NULL) return -1;
    memcpy(e->id, id.p, id.n);
    e->idlen = (uint8_t)id.n;
    e->pair = pair;
    e->expires_ms = expires_ms;
    e->hash = hash;
    req_ent_t **b = &s->buckets[e->hash & (s->n_buckets - 1)];
    e->hnext = *b;
    *b = e;
    e->fnext = NULL;
    if (s->fifo_tail)
        s->fifo_tail->fnext = e;
    else
        s->fifo_head = e;
    s->fifo_tail = e;
    s->n_entries++;
    return 0;
}

static const req_ent_t *req_find(const store_t *s, mm_str_t id)
{
    uint64_t h = siphash(s->hash_key, id.p, id.n);
    uint64_t now = mm_now_ms();
    for (const req_ent_t *e = s->buckets[h & (s->n_buckets - 1)]; e != NULL; e = e->hnext)
        if (e->hash == h && e->idlen == id.n && memcmp(e->id, id.p, id.n) == 0 &&
            e->expires_ms > now)
            return e;
    return NULL;
}

/* ---- per-request data map ---- */

static void aux_unlink(store_t *s, aux_ent_t *e)
{
    aux_ent_t **pp = &s->aux_buckets[e->hash & (s->aux_n_buckets - 1)];
    while (*pp != e) pp = &(*pp)->hnext;
    *pp = e->hnext;
    if (e->fprev)
        e->fprev->fnext = e->fnext;
    else
        s->aux_head = e->fnext;
    if (e->fnext)
        e->fnext->fprev = e->fprev;
    else
        s->aux_tail = e->fprev;
    s->aux_n--;
    s->aux_bytes -= e->len + e->idlen;
    free(e);
}

void store_aux_prune(store_t *s, size_t max)
{
    uint64_t now = mm_now_ms();
    while (max-- > 0 && s->aux_head != NULL && s->aux_head->expires_ms <= now)
        aux_unlink(s, s->aux_head);
}

static void aux_grow(store_t *s)
{
    size_t n = s->aux_n_buckets * 2;
    aux_ent_t **nb = calloc(n, sizeof(*nb));
    if (nb == NULL) return; /* longer chains, still correct */
    for (aux_ent_t *e = s->aux_head; e != NULL; e = e->fnext) {
        aux_ent_t **b = &nb[e->hash & (n - 1)];
        e->hnext = *b;
        *b = e;
    }
    free(s->aux_buckets);
    s->aux_buckets = nb;
    s->aux_n_buckets = n;
}

/* The entry for id, expired or not. */
static aux_ent_t *aux_find_any(const store_t *s, const char *id, size_t idlen)
{
    uint64_t h = siphash(s->hash_key, id, idlen);
    for (aux_ent_t *e = s->aux_buckets[h & (s->aux_n_buckets - 1)]; e != NULL; e = e->hnext)
        if (e->hash == h && e->idlen == idlen && memcmp(e->mem, id, idlen) == 0) return e;
    return NULL;
}

static aux_ent_t *aux_find(const store_t *s, mm_str_t id)
{
    aux_ent_t *e = aux_find_any(s, id.p, id.n);
    return e != NULL && e->expires_ms > mm_now_ms() ? e : NULL;
}

/* Keep a new version of id's data locally (replacing the old one), or NULL
 * when it cannot be kept. `sent` is inherited: once any version of an id has
 * been sent to Redis, another instance may hold it. */
static aux_ent_t *aux_insert(store_t *s, mm_str_t request_id, const char *data, size_t n, int ttl_s)
{
    if (ttl_s <= 0 || !valid_reqid(request_id)) return NULL;
    if (n > STORE_AUX_MAX) {
        s->aux_too_large++;
        return NULL;
    }
    store_aux_prune(s, PRUNE_PER_CALL);
    uint8_t sent = 0;
    aux_ent_t *old = aux_find_any(s, request_id.p, request_id.n);
    if (old != NULL) {
        sent = old->sent;
        aux_unlink(s, old);
    }
    size_t size = request_id.n + n;
    while (s->aux_head != NULL &&
           (s->aux_n >= s->aux_cap || s->aux_bytes + size > s->aux_bytes_max)) {
        aux_unlink(s, s->aux_head);
        s->aux_evicted++;
    }
    if (s->aux_n >= s->aux_n_buckets && s->aux_n_buckets < s->aux_cap) aux_grow(s);
    aux_ent_t *e = malloc(sizeof(*e) + size);
    if (e == NULL) return NULL;
    memcpy(e->mem, request_id.p, request_id.n);
    if (n > 0) memcpy(e->mem + request_id.n, data, n);
    e->idlen = (uint8_t)request_id.n;
    e->len = (uint32_t)n;
    e->expires_ms = mm_now_ms() + (uint64_t)ttl_s * 1000u;
    e->hash = siphash(s->hash_key, request_id.p, request_id.n);
    e->gen = ++s->aux_gen;
    e->confirmed = 0;
    e->sent = sent;
    aux_ent_t **b = &s->aux_buckets[e->hash & (s->aux_n_buckets - 1)];
    e->hnext = *b;
    *b = e;
    e->fnext = NULL;
    e->fprev = s->aux_tail;
    if (s->aux_tail)
        s->aux_tail->fnext = e;
    else
        s->aux_head = e;
    s->aux_tail = e;
    s->aux_n++;
    s->aux_bytes += size;
    return e;
}

void store_put_aux(store_t *s, mm_str_t request_id, const char *data, size_t n, int ttl_s)
{
    aux_ent_t *e = aux_insert(s, request_id, data, n, ttl_s);
    if (e != NULL && s->redis)
        store_redis_put_aux(s->redis, request_id.p, request_id.n, data, n, e->expires_ms, e->gen);
}

void store_aux_sent(store_t *s, const char *id, size_t idlen, uint64_t gen)
{
    aux_ent_t *e = aux_find_any(s, id, idlen);
    if (e != NULL && e->gen == gen) e->sent = 1;
}

void store_aux_settled(store_t *s, mm_str_t id, const char *data, size_t n, int ttl_s)
{
    aux_ent_t *e = aux_insert(s, id, data, n, ttl_s);
    if (e != NULL) e->sent = e->confirmed = 1;
}

void store_aux_update_local(store_t *s, mm_str_t id, int ttl_s, store_aux_rewrite_cb rewrite,
                            store_aux_done_cb done, void *arg)
{
    const aux_ent_t *e = aux_find(s, id);
    if (e == NULL) {
        done(arg, STORE_AUX_NOT_FOUND);
        return;
    }
    mm_buf_t out;
    mm_buf_init(&out);
    int code = rewrite(arg, e->mem + e->idlen, e->len, &out);
    if (code == STORE_AUX_WRITE) {
        if (out.oom)
            code = STORE_AUX_NOT_FOUND;
        else
            store_put_aux(s, id, out.p, out.len, ttl_s); /* e is gone from here on */
    }
    mm_buf_free(&out);
    done(arg, code);
}

void store_update_aux(store_t *s, mm_str_t request_id, int ttl_s, store_aux_rewrite_cb rewrite,
                      store_aux_done_cb done, void *arg)
{
    if (ttl_s <= 0 || !valid_reqid(request_id)) {
        done(arg, STORE_AUX_NOT_FOUND);
        return;
    }
    const aux_ent_t *e = aux_find(s, request_id);
    if (s->redis && store_redis_up(s->redis) && (e == NULL || e->sent)) {
        store_redis_update_aux(s->redis, request_id, e ? e->mem + e->idlen : NULL, e ? e->len : 0,
                               ttl_s, rewrite, done, arg);
        return;
    }
    store_aux_update_local(s, request_id, ttl_s, rewrite, done, arg);
}

void store_aux_confirm(store_t *s, const char *id, size_t idlen, uint64_t gen)
{
    aux_ent_t *e = aux_find_any(s, id, idlen);
    if (e != NULL && e->gen == gen) e->confirmed = 1;
}

int store_aux_current(const store_t *s, const char *id, size_t idlen, uint64_t gen)
{
    const aux_ent_t *e = aux_find_any(s, id, idlen);
    return e == NULL || e->gen <= gen;
}

void store_aux_resolved(store_t *s, mm_str_t id, int found, const char *data, size_t n,
                        store_aux_cb cb, void *arg)
{
    const aux_ent_t *e = aux_find(s, id);
    if (e != NULL && (!e->confirmed || !found))
        cb(arg, 1, e->mem + e->idlen, e->len); /* newer than Redis's, or Redis lost it */
    else if (found)
        cb(arg, 1, data, n);
    else
        cb(arg, 0, NULL, 0);
}

void store_get_aux(store_t *s, mm_str_t request_id, store_aux_cb cb, void *arg)
{
    if (!valid_reqid(request_id)) {
        cb(arg, 0, NULL, 0);
        return;
    }
    const aux_ent_t *e = aux_find(s, request_id);
    if (s->redis && store_redis_up(s->redis) && (e == NULL || e->confirmed)) {
        store_redis_get_aux(s->redis, request_id, cb, arg);
        return;
    }
    if (e != NULL)
        cb(arg, 1, e->mem + e->idlen, e->len);
    else
        cb(arg, 0, NULL, 0);
}

/* ---- experiments ---- */

store_exp_t *store_exp_of(exp_state_t *e)
{
    return container_of(e, store_exp_t, pub);
}

int store_stats_nonzero(const arm_stats_t *d)
{
    return d->pulls || d->feedback || d->errors || d->reward_sum != 0 || d->reward_sq_sum != 0 ||
           d->successes != 0 || d->failures != 0;
}

static void freeze_if_paused(store_exp_t *x, exp_run_state_t before)
{
    if (x->pub.control.state == EXP_PAUSED && before != EXP_PAUSED)
        memcpy(x->pub.frozen, x->pub.merged, sizeof(x->pub.frozen));
    if (x->pub.control.state == EXP_RUNNING && before != EXP_RUNNING) x->pub.run_epoch++;
}

/* A local control change: version++, and the replicator writes it. */
static void control_change(store_t *s, store_exp_t *x, const exp_control_t *c)
{
    exp_run_state_t before = x->pub.control.state;
    uint64_t v = x->pub.control.version + 1;
    if (s->redis && x->pub.control_dirty == 0) {
        x->ctl_known = x->pub.control;
        x->ctl_known_valid = 1;
    }
    x->pub.control = *c;
    x->pub.control.version = v;
    freeze_if_paused(x, before);
    if (s->redis) x->pub.control_dirty++;
}

/* Back to the control the config says (a reset, a redefinition): written
 * whole and unconditionally, whatever an operator or a policy changed. */
static void control_to_config(store_t *s, store_exp_t *x)
{
    control_change(s, x, &x->pub.initial_control);
    x->ctl_cas = 0;
    x->ctl_known_valid = 0;
}

void store_exp_adopt_control(store_exp_t *x, const exp_control_t *c)
{
    exp_run_state_t before = x->pub.control.state;
    x->pub.control = *c;
    freeze_if_paused(x, before);
}

void store_exp_remote_reset(store_exp_t *x)
{
    exp_state_t *e = &x->pub;
    for (size_t i = 0; i < e->n_arms; i++)
        e->dropped += e->pending[i].pulls + e->pending[i].feedback + e->pending[i].errors;
    memset(e->pending, 0, sizeof(e->pending));
    memset(e->frozen, 0, sizeof(e->frozen));
    for (size_t i = 0; i < e->n_arms; i++) e->dropped += e->answers_local[i].answers;
    memset(e->answers_local, 0, sizeof(e->answers_local));
    x->ans_gen++;
    tally_clear_local(e->tally);
    x->tally_gen++;
    x->resets++;
}

/* An experiment's state is large (latency histograms for MM_MAX_ARMS arms,
 * some 385 KB) and mostly zero: it is mapped, not calloc'ed. The kernel
 * then backs only the pages written (a two-arm experiment touches a small
 * part of it), and creating thousands at a start or reload does not zero
 * every page first, as calloc does once glibc has moved its mmap threshold
 * above this size (a reload that created 4,000 of them took 3.9 s, three
 * quarters of it clearing pages). */
static store_exp_t *store_exp_alloc(void)
{
    void *p =
        mmap(NULL, sizeof(store_exp_t), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

void store_exp_free(store_exp_t *x)
{
    if (x == NULL) return;
    tally_free(x->pub.tally);
    mm_buf_free(&x->batch.tally_deltas);
    munmap(x, sizeof(*x));
}

/* O(1) through s->index: a start or reload looks up every experiment. */
static store_exp_t *exp_find(const store_t *s, const char *name)
{
    const json_t *i = json_object_get(s->index, name);
    return i ? s->exps[json_integer_value(i)] : NULL;
}

static int same_arms(const exp_state_t *e, const char *const *arm_names, size_t n_arms)
{
    if (e->n_arms != n_arms) return 0;
    for (size_t i = 0; i < n_arms; i++)
        if (strcmp(e->arm_names[i], arm_names[i]) != 0) return 0;
    return 1;
}

/* New arm list for an existing experiment: statistics follow the arm names;
 * new arms start at zero. The answer statistics (some 250 KB) are moved
 * through a heap copy, the rest through the stack; a reload is rare. */
static void remap_arms(exp_state_t *e, const char *const *arm_names, size_t n_arms)
{
    size_t n_old = e->n_arms;
    char old_names[MM_MAX_ARMS][MM_NAME_MAX + 1];
    arm_stats_t merged[MM_MAX_ARMS], pending[MM_MAX_ARMS], frozen[MM_MAX_ARMS];
    memcpy(old_names, e->arm_names, sizeof(old_names));
    memcpy(merged, e->merged, sizeof(merged));
    memcpy(pending, e->pending, sizeof(pending));
    memcpy(frozen, e->frozen, sizeof(frozen));
    answer_stats_t *ans = malloc(2 * n_old * sizeof(*ans)); /* NULL: the answers start over */
    if (ans != NULL) {
        memcpy(ans, e->answers, n_old * sizeof(*ans));
        memcpy(ans + n_old, e->answers_local, n_old * sizeof(*ans));
    }
    memset(e->merged, 0, sizeof(e->merged));
    memset(e->pending, 0, sizeof(e->pending));
    memset(e->frozen, 0, sizeof(e->frozen));
    memset(e->answers, 0, sizeof(e->answers));
    memset(e->answers_local, 0, sizeof(e->answers_local));
    for (size_t i = 0; i < n_arms; i++) {
        for (size_t j = 0; j < n_old; j++)
            if (strcmp(old_names[j], arm_names[i]) == 0) {
                e->merged[i] = merged[j];
                e->pending[i] = pending[j];
                e->frozen[i] = frozen[j];
                if (ans != NULL) {
                    e->answers[i] = ans[j];
                    e->answers_local[i] = ans[n_old + j];
                }
            }
        snprintf(e->arm_names[i], sizeof(e->arm_names[i]), "%s", arm_names[i]);
    }
    free(ans);
    e->n_arms = n_arms;
    e->layout++;
}

void store_define(store_t *s, exp_state_t *e, uint64_t fp, int redefined)
{
    if (e->tally_fp == fp) return;
    store_exp_t *x = store_exp_of(e);
    tally_clear(e->tally);
    x->tally_gen++;
    x->tally_clear_pending = s->redis != NULL && redefined;
    e->tally_fp = fp;
    e->tally_defs++;
}

int store_arm_index(const exp_state_t *e, const char *name)
{
    for (size_t i = 0; i < e->n_arms; i++)
        if (strcmp(e->arm_names[i], name) == 0) return (int)i;
    return MM_MAX_ARMS;
}

exp_state_t *store_experiment(store_t *s, const char *name, const char *const *arm_names,
                              size_t n_arms, const exp_control_t *initial, int redefined)
{
    if (!mm_valid_name(name, strlen(name)) || n_arms == 0 || n_arms > MM_MAX_ARMS) return NULL;
    for (size_t i = 0; i < n_arms; i++)
        if (!mm_valid_name(arm_names[i], strlen(arm_names[i]))) return NULL;

    store_exp_t *x = exp_find(s, name);
    if (x != NULL) {
        x->pub.initial_control = *initial;
        if (!same_arms(&x->pub, arm_names, n_arms)) {
            remap_arms(&x->pub, arm_names, n_arms);
            memset(x->seen, 0, sizeof(x->seen)); /* read again next round */
            memset(x->pair_of, 0, sizeof(x->pair_of));
            redefined = 1; /* other arms: the old control cannot apply */
        }
        if (redefined) control_to_config(s, x);
        return &x->pub;
    }

    if (s->n_exps == s->cap_exps) {
        size_t cap = s->cap_exps ? s->cap_exps * 2 : 8;
        store_exp_t **ne = realloc(s->exps, cap * sizeof(*ne));
        if (ne == NULL) return NULL;
        s->exps = ne;
        s->cap_exps = cap;
    }
    x = store_exp_alloc();
    if (x == NULL) return NULL;
    x->pub.tally = tally_new(s->redis != NULL);
    if (x->pub.tally == NULL) {
        store_exp_free(x);
        return NULL;
    }
    snprintf(x->pub.name, sizeof(x->pub.name), "%s", name);
    x->pub.n_arms = n_arms;
    for (size_t i = 0; i < n_arms; i++)
        snprintf(x->pub.arm_names[i], sizeof(x->pub.arm_names[i]), "%s", arm_names[i]);
    x->pub.control = *initial;
    x->pub.initial_control = *initial;
    if (x->pub.control.state == EXP_PAUSED) freeze_if_paused(x, EXP_RUNNING);
    if (json_object_set_new_nocheck(s->index, name, json_integer((json_int_t)s->n_exps)) < 0) {
        store_exp_free(x);
        return NULL;
    }
    s->exps[s->n_exps++] = x;
    if (s->redis) store_redis_exp_added(s->redis, x, redefined);
    return &x->pub;
}

/* O(1): a reload that removes thousands of experiments while the old
 * router is still held detaches them all, and each is unlinked when the
 * router lets go; a scan of the list per experiment would be quadratic. */
void store_detached_done(store_t *s, store_exp_t *x)
{
    (void)s;
    /* A write sent and not failed still has its reply to come (the
     * replicator sends nothing more for an experiment off s->exps). */
    if (!x->detached || x->holds > 0 || (x->batch.active && !x->batch.failed)) return;
    *x->detached_pprev = x->detached_next;
    if (x->detached_next) x->detached_next->detached_pprev = x->detached_pprev;
    store_exp_free(x);
}

/* One keep() per experiment: the caller answers from its config's name
 * index, so a reload is linear in the experiments and allocates nothing. */
void store_retain(store_t *s, int (*keep)(void *arg, const char *name), void *arg)
{
    size_t i = 0;
    while (i < s->n_exps) {
        store_exp_t *x = s->exps[i];
        if (keep(arg, x->pub.name)) {
            i++;
            continue;
        }
        /* The last experiment moves into the hole: its index entry is
         * updated in place (no allocation, so it cannot fail). */
        json_object_del(s->index, x->pub.name);
        s->exps[i] = s->exps[--s->n_exps];
        if (i < s->n_exps)
            json_integer_set(json_object_get(s->index, s->exps[i]->pub.name), (json_int_t)i);
        x->detached = 1;
        x->detached_next = s->detached;
        if (s->detached) s->detached->detached_pprev = &x->detached_next;
        x->detached_pprev = &s->detached;
        s->detached = x;
        store_detached_done(s, x);
    }
}

void store_hold(exp_state_t *e)
{
    ((store_exp_t *)e)->holds++;
}

void store_release(store_t *s, exp_state_t *e)
{
    store_exp_t *x = (store_exp_t *)e;
    if (x->holds == 0 || --x->holds > 0) return;
    store_detached_done(s, x);
}

/* ---- hot path ---- */

void store_pull(store_t *s, exp_state_t *e, int arm)
{
    if ((unsigned)arm >= e->n_arms) return;
    e->merged[arm].pulls++;
    if (s->redis) e->pending[arm].pulls++;
}

void store_error(store_t *s, exp_state_t *e, int arm)
{
    if ((unsigned)arm >= e->n_arms) return;
    e->merged[arm].errors++;
    if (s->redis) e->pending[arm].errors++;
}

void store_answer(store_t *s, exp_state_t *e, int arm, int status, uint64_t latency_us)
{
    if ((unsigned)arm >= e->n_arms) return;
    answer_stats_t *a = s->redis ? &e->answers_local[arm] : &e->answers[arm];
    a->answers++;
    if (status == 0 || status >= 500) a->errors++;
    if (status != 0) {
        a->hist[lathist_index(latency_us)]++;
        a->samples++;
    }
}

void store_answers_sub(answer_stats_t *a, const answer_stats_t *b)
{
    if (b->answers != 0) policy_answers_diff(a, b, a); /* none: skip the 976 buckets */
}

static void add_reward(arm_stats_t *a, double r, int bernoulli)
{
    a->feedback++;
    a->reward_sum += r;
    a->reward_sq_sum += r * r;
    if (bernoulli) {
        a->successes += r;
        a->failures += 1.0 - r;
    }
}

int store_reward(store_t *s, exp_state_t *e, int arm, double reward, int bernoulli)
{
    /* fabs(NaN) <= x is false: NaN and the infinities are refused too. Once
     * infinite, an arm's mean and variance would stay NaN until a reset. */
    if ((unsigned)arm >= e->n_arms || !(fabs(reward) <= MM_REWARD_MAX)) return -1;
    add_reward(&e->merged[arm], reward, bernoulli);
    if (s->redis) add_reward(&e->pending[arm], reward, bernoulli);
    return 0;
}

static void add_delta(arm_stats_t *a, const arm_stats_t *d)
{
    a->pulls += d->pulls;
    a->feedback += d->feedback;
    a->errors += d->errors;
    a->reward_sum += d->reward_sum;
    a->reward_sq_sum += d->reward_sq_sum;
    a->successes += d->successes;
    a->failures += d->failures;
}

void store_add(store_t *s, exp_state_t *e, int arm, const arm_stats_t *delta)
{
    if ((unsigned)arm >= e->n_arms || delta == NULL) return;
    if (!isfinite(delta->reward_sum) || !isfinite(delta->reward_sq_sum) ||
        !isfinite(delta->successes) || !isfinite(delta->failures))
        return;
    add_delta(&e->merged[arm], delta);
    if (s->redis) add_delta(&e->pending[arm], delta);
}

/* ---- operator changes ---- */

void store_set_control(store_t *s, exp_state_t *e, const exp_control_t *c)
{
    store_exp_t *x = store_exp_of(e);
    control_change(s, x, c);
    x->ctl_cas = 0; /* an operator's change is written whatever Redis holds */
}

void store_propose_control(store_t *s, exp_state_t *e, const exp_control_t *c)
{
    store_exp_t *x = store_exp_of(e);
    /* On top of an operator change not written yet, the write stays
     * unconditional (it carries the operator's change too); on top of
     * another proposal, it is still conditional on the first one's base. */
    if (!e->control_dirty) {
        x->ctl_cas = 1;
        x->ctl_base = e->control.version;
    }
    control_change(s, x, c);
}

int store_control_known(const store_t *s, const exp_state_t *e)
{
    return s->redis == NULL || container_of(e, const store_exp_t, pub)->synced;
}

void store_reset(store_t *s, exp_state_t *e)
{
    store_exp_t *x = store_exp_of(e);
    memset(e->merged, 0, sizeof(e->merged));
    memset(e->pending, 0, sizeof(e->pending));
    memset(e->frozen, 0, sizeof(e->frozen));
    memset(x->seen, 0, sizeof(x->seen));
    memset(e->answers, 0, sizeof(e->answers));
    memset(e->answers_local, 0, sizeof(e->answers_local));
    x->ans_gen++;
    tally_clear(e->tally);
    x->tally_gen++;
    control_to_config(s, x);
    x->resets++;
    if (s->redis) x->reset_pending = 1;
}

uint64_t store_resets(const exp_state_t *e)
{
    return container_of(e, const store_exp_t, pub)->resets;
}

size_t store_reset_mark(const exp_state_t *e, char *out)
{
    const store_exp_t *x = container_of(e, const store_exp_t, pub);
    int n = snprintf(out, STORE_MARK_MAX, "%" PRIu64 ".%" PRIu64, x->mark_epoch,
                     x->resets - x->mark_resets);
    return n > 0 ? (size_t)n : 0;
}

/* ---- feedback mapping ---- */

static void remember_pair(store_t *s, mm_str_t request_id, uint64_t hash, uint32_t pair, int ttl_s)
{
    /* The loop's clock (read once per iteration): a TTL of seconds does not
     * need a clock read per request. */
    uint64_t now = uv_now(s->loop);
    uint64_t expires = now + (uint64_t)ttl_s * 1000u;
    req_insert(s, request_id, hash, pair, now, expires);
    if (s->redis) store_redis_remember(s->redis, request_id.p, request_id.n, pair, expires);
}

void store_remember(store_t *s, mm_str_t request_id, const char *experiment, const char *arm,
                    int ttl_s)
{
    if (ttl_s <= 0 || !valid_reqid(request_id)) return;
    uint32_t pair = pair_intern(s, experiment, arm);
    if (pair != UINT32_MAX)
        remember_pair(s, request_id, siphash(s->hash_key, request_id.p, request_id.n), pair, ttl_s);
}

uint64_t store_req_key(const store_t *s, mm_str_t request_id)
{
    uint64_t h = siphash(s->hash_key, request_id.p, request_id.n);
    __builtin_prefetch(&s->buckets[h & (s->n_buckets - 1)], 1);
    return h;
}

void store_remember_key(store_t *s, exp_state_t *e, int arm, mm_str_t request_id, uint64_t key,
                        int ttl_s)
{
    store_exp_t *x = container_of(e, store_exp_t, pub);
    size_t slot = arm == STORE_ARM_INTERLEAVE ? MM_MAX_ARMS : (size_t)arm;
    if (ttl_s <= 0 || request_id.n == 0 || request_id.n > MM_REQID_MAX) return;
    if (arm != STORE_ARM_INTERLEAVE && (arm < 0 || (size_t)arm >= e->n_arms)) return;
    if (x->pair_of[slot] == 0) {
        uint32_t pair =
            pair_intern(s, e->name, arm == STORE_ARM_INTERLEAVE ? "interleave" : e->arm_names[arm]);
        if (pair == UINT32_MAX) return;
        x->pair_of[slot] = pair + 1;
    }
    remember_pair(s, request_id, key, x->pair_of[slot] - 1, ttl_s);
}

void store_lookup(store_t *s, mm_str_t request_id, store_lookup_cb cb, void *arg)
{
    if (!valid_reqid(request_id)) {
        cb(arg, 0, NULL);
        return;
    }
    const req_ent_t *e = req_find(s, request_id);
    if (e != NULL) {
        store_reqinfo_t info;
        pair_info(s, e->pair, &info);
        cb(arg, 1, &info);
        return;
    }
    if (s->redis)
        store_redis_lookup(s->redis, request_id, cb, arg);
    else
        cb(arg, 0, NULL);
}

/* ---- lifetime ---- */

store_t *store_create(uv_loop_t *loop, const cfg_store_t *cfg, char *err, size_t errlen)
{
    store_t *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        snprintf(err, errlen, "store: out of memory");
        return NULL;
    }
    s->loop = loop;
    s->cfg = *cfg;
    s->req_cap = STORE_REQ_CAP_DEFAULT;
    s->n_buckets = BUCKETS_MIN;
    s->buckets = calloc(s->n_buckets, sizeof(*s->buckets));
    s->aux_cap = STORE_AUX_CAP_DEFAULT;
    s->aux_bytes_max = STORE_AUX_BYTES_DEFAULT;
    s->aux_n_buckets = BUCKETS_MIN;
    s->aux_buckets = calloc(s->aux_n_buckets, sizeof(*s->aux_buckets));
    s->index = json_object();
    if (s->buckets == NULL || s->aux_buckets == NULL || s->index == NULL) {
        snprintf(err, errlen, "store: out of memory");
        goto err;
    }
    if (uv_random(NULL, NULL, s->hash_key, sizeof(s->hash_key), 0, NULL) != 0) {
        /* No entropy source: fall back to the clock and an address. */
        s->hash_key[0] = mm_now_us() ^ (uint64_t)(uintptr_t)s;
        s->hash_key[1] = ~s->hash_key[0] * 0x9e3779b97f4a7c15ULL;
    }
    if (cfg->type == STORE_REDIS) {
        s->redis = store_redis_create(s, err, errlen);
        if (s->redis == NULL) goto err;
    }
    return s;
err:
    free(s->buckets);
    free(s->aux_buckets);
    json_decref(s->index);
    free(s);
    return NULL;
}

void store_reconfigure(store_t *s, const cfg_store_t *cfg, const cfg_store_t *group)
{
    if (cfg->type == STORE_REDIS) {
        if (s->redis)
            store_redis_reconfigure(s->redis, cfg);
        else
            store_redis_from_memory(s, cfg);
        return;
    }
    if (s->redis == NULL || (group != NULL && store_redis_at(s->redis, group))) return;
    mm_log("reload: the store stays on Redis: a move to the memory store takes effect at the "
           "next restart");
}

void store_shutdown(store_t *s, int timeout_ms, void (*done)(void *), void *arg)
{
    if (s->redis)
        store_redis_shutdown(s->redis, timeout_ms, done, arg);
    else
        done(arg); /* nothing to flush */
}

void store_flush(store_t *s, void (*cb)(void *), void *arg)
{
    if (s->redis)
        store_redis_flush(s->redis, cb, arg);
    else
        cb(arg); /* the memory store is always in step with itself */
}

void store_free_final(store_t *s)
{
    for (size_t i = 0; i < s->n_exps; i++) store_exp_free(s->exps[i]);
    free(s->exps);
    json_decref(s->index);
    while (s->detached) {
        store_exp_t *z = s->detached;
        s->detached = z->detached_next;
        store_exp_free(z);
    }
    while (s->blk_head) {
        req_block_t *b = s->blk_head;
        s->blk_head = b->next;
        free(b);
    }
    free(s->blk_spare);
    free(s->buckets);
    while (s->aux_head) {
        aux_ent_t *e = s->aux_head;
        s->aux_head = e->fnext;
        free(e);
    }
    free(s->aux_buckets);
    free(s->pairs);
    free(s->pair_index);
    free(s);
}

void store_destroy(store_t *s)
{
    if (s == NULL) return;
    if (s->redis)
        store_redis_destroy(s->redis);
    else
        store_free_final(s);
}

int store_up(const store_t *s)
{
    return s->redis ? store_redis_writable(s->redis) : 1;
}

const char *store_kind(const store_t *s)
{
    return s->redis ? "redis" : "memory";
}

void store_get_stats(const store_t *s, store_stats_t *out)
{
    memset(out, 0, sizeof(*out));
    out->req_entries = s->n_entries;
    out->req_evicted = s->req_evicted;
    out->aux_entries = s->aux_n;
    out->aux_bytes = s->aux_bytes;
    out->aux_evicted = s->aux_evicted;
    out->aux_dropped = s->aux_too_large;
    if (s->redis) store_redis_stats(s->redis, out);
}

int store_stream_subscribe(store_t *s, store_stream_cb cb, void *arg,
                           const store_stream_opts_t *opts)
{
    if (s->stream_cb != NULL || cb == NULL) return -1;
    s->stream_cb = cb;
    s->stream_arg = arg;
    if (opts) s->stream_opts = *opts;
    return s->redis ? store_redis_subscribe(s->redis, cb, arg, &s->stream_opts) : 0;
}

void store_msg_done(store_t *s, store_msg_t *m, int ack)
{
    if (s->redis) store_redis_msg_done(s->redis, m, ack);
}
