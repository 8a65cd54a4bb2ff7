/* shadow_rt.c — mirrors: copies of a request sent to shadow arms.
 *
 * A shadow group is created when the policy asks for mirrors. It owns copies
 * of everything the mirrors need (url, body, each mirror's request head, the
 * primary's answer), so the client's connection and request can finish and
 * go away at any time: a slow or dead shadow never delays, changes or fails
 * the primary answer and never holds the client's connection. Mirrors start
 * as soon as the request body is complete (right after the primary's
 * request is written, when that goes out at once), concurrently with the
 * primary exchange; each is a leg (leg.c) with its own timeout. Legs hold no libuv
 * handle, so a complete group is released at once.
 *
 * Bounded: max_inflight per shadow arm, max_body_bytes (larger bodies are not
 * mirrored), timeout_ms per mirror, and at most SHADOW_KEEP bytes of each
 * answer kept for comparison. Every mirror not sent is counted `dropped`,
 * every failed or late one `error`. When the primary has finished and every
 * mirror has answered or timed out, the answers are compared by the policy,
 * counted, and the request's log line is written with the shadow results.
 *
 * Finished groups are kept for the next mirrored request, buffers and all
 * (a group is half a dozen buffers that otherwise grow from nothing by
 * realloc for every request). The cache is bounded in groups and bytes, and
 * a buffer that grew past SHADOW_CACHE_BUF is freed rather than kept, so
 * memory falls back after a burst of large requests. Groups outlive requests
 * and connections, so the cache, like the legs' clock, is the server
 * context's (srv->shadows), and is freed with it. A group holds a router
 * reference only while in use. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "leg.h"
#include "proxy_internal.h"
#include "reqlog.h"
#include "shadow_rt.h"

#define SHADOW_KEEP (1024 * 1024)

#define SHADOW_CACHE_GROUPS 64
#define SHADOW_CACHE_BYTES  (1024 * 1024) /* buffer memory of all cached groups */
#define SHADOW_CACHE_BUF    (64 * 1024)   /* a larger buffer is freed, not kept */

typedef struct {
    leg_t leg;
    struct shadow_group_s *g;
    int arm;
    int outcome;
} mirror_t;

struct shadow_group_s {
    shadow_group_t *next_free; /* in the cache */
    int cap;                   /* mirrors allocated */
    size_t kept;               /* buffer bytes while cached */
    mm_server_t *srv;
    router_t *router;
    exp_rt_t *exp;
    uint64_t tally_defs; /* exp's state's when the request was mirrored */
    int pending;         /* the primary + every mirror in flight */
    char method[24];
    int head_request;
    mm_buf_t url;
    mm_buf_t body;
    int body_ok;
    int started;
    /* the primary's answer */
    int p_status, p_chunked, p_truncated;
    char p_ctype[128];
    mm_buf_t p_body;
    mm_buf_t p_headers; /* compare.headers: the primary's header block */
    /* what the request log needs once everything is done */
    char id[MM_REQID_MAX + 1];
    int status;
    uint64_t latency_us, bytes_in, bytes_out;
    uint64_t ts_us; /* wall clock at the request's arrival, for the log line */
    int logged;     /* a log was open when the primary answered: the line is due */
    int arm;
    int n;
    mirror_t m[]; /* cap allocated, n used by this request */
};

static void group_complete(shadow_group_t *g);

/* One mirror's outcome: the metric, and for a mirror not sent the pooled
 * count the policy's description reads (policy.h POLICY_TALLY_DROPPED) in
 * t (NULL: not counted there). */
static void count_outcome(const exp_rt_t *e, int arm, int outcome, policy_tally_t *t)
{
    router_marm(e, arm)->shadow[outcome]++;
    if (outcome == SHADOW_DROPPED && t != NULL && (size_t)arm < e->cfg->n_arms) {
        char name[sizeof(POLICY_TALLY_DROPPED) + MM_NAME_MAX];
        snprintf(name, sizeof(name), "%s" POLICY_TALLY_DROPPED, e->ups[arm]->name);
        policy_tally_add(t, name, 1);
    }
}

/* A group with room for `want` mirrors: from the cache when its first group
 * is large enough (experiments mirror to a fixed set of arms). */
static shadow_group_t *group_get(shadow_cache_t *cache, int want)
{
    shadow_group_t *g = cache->head;
    if (g != NULL && g->cap >= want) {
        cache->head = g->next_free;
        cache->n--;
        cache->bytes -= g->kept;
        return g;
    }
    g = calloc(1, sizeof(*g) + (size_t)want * sizeof(mirror_t)); /* legs and buffers zeroed */
    if (g != NULL) g->cap = want;
    return g;
}

static void group_free(shadow_group_t *g)
{
    mm_buf_free(&g->url);
    mm_buf_free(&g->body);
    mm_buf_free(&g->p_body);
    mm_buf_free(&g->p_headers);
    for (int i = 0; i < g->cap; i++) leg_free(&g->m[i].leg);
    free(g);
}

void shadow_cache_free(shadow_cache_t *cache)
{
    shadow_group_t *g;
    while ((g = cache->head) != NULL) {
        cache->head = g->next_free;
        group_free(g);
    }
    cache->n = 0;
    cache->bytes = 0;
}

static size_t buf_keep(mm_buf_t *b)
{
    if (b->cap > SHADOW_CACHE_BUF)
        mm_buf_free(b);
    else
        mm_buf_reset(b);
    return b->cap;
}

/* The group is finished (its legs done or never started): drop the router
 * reference and keep it for reuse, or free it when the cache is full. */
static void group_release(shadow_group_t *g)
{
    shadow_cache_t *cache = &g->srv->shadows;
    cache->active--;
    router_unref(g->router);
    g->router = NULL;
    size_t kept =
        buf_keep(&g->url) + buf_keep(&g->body) + buf_keep(&g->p_body) + buf_keep(&g->p_headers);
    for (int i = 0; i < g->n; i++) leg_reuse(&g->m[i].leg, SHADOW_CACHE_BUF);
    for (int i = 0; i < g->cap; i++)
        kept += g->m[i].leg.head.cap + g->m[i].leg.resp.cap + g->m[i].leg.headers.cap;
    if (cache->n >= SHADOW_CACHE_GROUPS || cache->bytes + kept > SHADOW_CACHE_BYTES) {
        group_free(g);
        return;
    }
    g->kept = kept;
    g->next_free = cache->head;
    cache->head = g;
    cache->n++;
    cache->bytes += kept;
}

void shadow_prepare(conn_t *c)
{
    req_t *r = &c->req;
    if (r->choice.n_mirrors <= 0) return;
    int want = r->choice.n_mirrors < MM_MAX_ARMS ? r->choice.n_mirrors : MM_MAX_ARMS;
    shadow_group_t *g = group_get(&c->srv->shadows, want);
    if (g == NULL) {
        policy_tally_t *t = store_tally(r->exp->state, r->exp->fp);
        for (int i = 0; i < r->choice.n_mirrors; i++)
            count_outcome(r->exp, r->choice.mirrors[i], SHADOW_DROPPED, t);
        return;
    }
    g->srv = c->srv;
    g->srv->shadows.active++;
    g->router = r->router;
    router_ref(g->router);
    g->exp = r->exp;
    g->tally_defs = r->exp->state->tally_defs;
    g->pending = 1;
    _Static_assert(sizeof(g->method) == sizeof(r->method), "method buffers differ");
    memcpy(g->method, r->method, sizeof(g->method)); /* NUL-terminated within */
    g->head_request = r->head_request;
    g->body_ok = g->started = 0;
    g->p_status = g->p_chunked = g->p_truncated = 0;
    g->p_ctype[0] = '\0';
    mm_buf_append(&g->url, r->url.p, r->url.len);
    memcpy(g->id, r->id, r->id_len + 1);
    g->n = 0;
    for (int i = 0; i < r->choice.n_mirrors && g->n < want; i++) {
        int arm = r->choice.mirrors[i];
        if (arm < 0 || (size_t)arm >= g->exp->state->n_arms || arm == r->arm) continue;
        mirror_t *m = &g->m[g->n++];
        m->leg.owner = m;
        m->g = g;
        m->arm = arm;
        m->outcome = SHADOW_DROPPED;
    }
    const policy_mirror_limits_t *lim = &g->exp->cfg->mirror;
    uint64_t clen = (c->parser.flags & F_CONTENT_LENGTH) ? c->parser.content_length : 0;
    /* Capture what the mirrors need (the whole body, up to max_body_bytes)
     * and, with log.bodies, what the log line writes (its first 64 KiB)
     * even of a body too large to mirror; shadow_start mirrors only a whole
     * body within the limit. */
    int fits = clen <= lim->max_body_bytes;
    int log_bodies = c->srv->reqlog && reqlog_bodies(c->srv->reqlog);
    uint64_t limit = fits ? lim->max_body_bytes : 0;
    if (log_bodies && limit < REQLOG_BODY_MAX) limit = REQLOG_BODY_MAX;
    r->capture_limit = limit;
    r->capture_body = fits || log_bodies;
    mm_buf_reset(&r->captured);
    r->shadow = g;
}

static void on_mirror_done(leg_t *l)
{
    mirror_t *m = l->owner;
    shadow_group_t *g = m->g;
    m->outcome = l->status == 0 ? SHADOW_ERROR : SHADOW_MATCH; /* refined by the comparison */
    router_marm(g->exp, m->arm)->mirrors_inflight--;
    if (--g->pending == 0) group_complete(g);
}

void shadow_start(conn_t *c)
{
    req_t *r = &c->req;
    shadow_group_t *g = r->shadow;
    if (g == NULL || g->started) return;
    g->started = 1;
    const policy_mirror_limits_t *lim = &g->exp->cfg->mirror;
    g->body_ok = r->capture_body && !r->captured.oom && r->body_in <= lim->max_body_bytes;
    /* Take the captured body (no copy); the request gets our empty buffer,
     * whose memory its next body can use. */
    mm_buf_t tmp = g->body;
    g->body = r->captured;
    r->captured = tmp;
    /* The header lines as forwarded to the primary, still the request's:
     * the mirrors' heads are built from them once, dropping Content-Length
     * (a mirror frames the captured, de-chunked body itself). */
    mm_str_t lines = {r->fwd_lines.p, r->fwd_lines.len};
    for (int i = 0; i < g->n; i++) {
        mirror_t *m = &g->m[i];
        if (!g->body_ok || r->fwd_lines.oom ||
            router_marm(g->exp, m->arm)->mirrors_inflight >= lim->max_inflight)
            continue;
        leg_t *l = &m->leg;
        leg_build_head(&l->head, g->method, g->exp->ups[m->arm], (mm_str_t){g->url.p, g->url.len},
                       lines, 1, g->body.len, g->id, "X-Modelmux-Shadow: 1\r\n");
        if (l->head.oom) continue;
        l->body = g->body.p;
        l->body_len = g->body.len;
        l->keep_max = SHADOW_KEEP;
        l->keep_headers = lim->keep_headers;
        l->done = on_mirror_done;
        l->owner = m;
        router_marm(g->exp, m->arm)->mirrors_inflight++;
        g->pending++;
        leg_start(l, &g->srv->legs, g->exp->pools[m->arm], lim->timeout_ms, g->head_request);
    }
}

void shadow_on_primary_head(conn_t *c, const up_resp_t *resp)
{
    shadow_group_t *g = c->req.shadow;
    if (g == NULL) return;
    g->p_status = resp->status;
    g->p_chunked = resp->chunked;
    leg_content_type(resp, g->p_ctype, sizeof(g->p_ctype));
    if (g->exp->cfg->mirror.keep_headers) leg_header_block(resp, &g->p_headers);
}

void shadow_on_primary_body(conn_t *c, const char *p, size_t n)
{
    shadow_group_t *g = c->req.shadow;
    if (g == NULL) return;
    if (g->p_body.len + n > SHADOW_KEEP) {
        g->p_truncated = 1;
        n = SHADOW_KEEP - g->p_body.len;
    }
    mm_buf_append(&g->p_body, p, n);
}

void shadow_on_primary_done(conn_t *c, uint64_t latency_us)
{
    req_t *r = &c->req;
    shadow_group_t *g = r->shadow;
    if (g == NULL) return;
    r->shadow = NULL;
    g->status = r->status;
    g->arm = r->arm;
    g->latency_us = latency_us;
    /* The wall clock only for a log line. No log now: none for this
     * request later either, also if a reload opens one before the mirrors
     * end (its line would lack the arrival time and byte counts). */
    g->logged = g->srv->reqlog != NULL;
    g->ts_us = g->logged ? reqlog_wall_us() - latency_us : 0;
    /* Byte counts as any request's line has them (also for the log only):
     * modelmux's own answer (502, 504, 408) counts its JSON body, which
     * r->bytes_out does not. */
    if (g->logged) {
        reqlog_entry_t e;
        reqlog_entry_from_req(c, latency_us, &e);
        g->bytes_in = e.bytes_in;
        g->bytes_out = e.bytes_out;
    }
    /* No whole answer from the primary (it failed, broke off mid-body, or
     * the client left before it ended): nothing to compare against. */
    if (!r->up_done) g->p_status = 0;
    if (--g->pending == 0) group_complete(g);
}

/* The primary's body was kept as framed on the wire: undo chunking in place. */
static void dechunk(mm_buf_t *b)
{
    size_t in = 0, out = 0;
    while (in < b->len) {
        size_t size = 0;
        int digits = 0;
        while (in < b->len) {
            int v = mm_hex_val((unsigned char)b->p[in]);
            if (v < 0) break;
            size = size * 16 + (size_t)v;
            digits++;
            in++;
        }
        while (in < b->len && b->p[in] != '\n') in++; /* extensions, CR */
        in++;
        if (!digits || size == 0 || in > b->len) break;
        if (size > b->len - in) size = b->len - in;
        memmove(b->p + out, b->p + in, size);
        out += size;
        in += size + 2; /* CRLF after the data */
    }
    b->len = out;
}

static void write_log(shadow_group_t *g)
{
    reqlog_t *log = g->srv->reqlog;
    if (log == NULL || !g->logged || !reqlog_sampled(log)) return;
    static const char *names[] = {"match", "mismatch", "error", "dropped"};
    reqlog_shadow_t sh[MM_MAX_ARMS];
    for (int i = 0; i < g->n; i++) {
        const mirror_t *m = &g->m[i];
        sh[i] = (reqlog_shadow_t){g->exp->ups[m->arm]->name, m->leg.started ? m->leg.status : 0,
                                  m->leg.started ? m->leg.latency_us : 0, names[m->outcome]};
    }
    reqlog_entry_t e = {
        .request_id = g->id,
        .experiment = g->exp->cfg->name,
        .arm = g->exp->ups[g->arm]->name,
        .method = g->method,
        .path = g->url.p ? g->url.p : "",
        .path_len = g->url.len,
        .status = g->status,
        .latency_us = g->latency_us,
        .bytes_in = g->bytes_in,
        .bytes_out = g->bytes_out,
        .shadow = sh,
        .n_shadow = (size_t)g->n,
        .body = reqlog_bodies(log) ? g->body.p : NULL,
        .body_len = reqlog_bodies(log) ? g->body.len : 0,
        .ts_us = g->ts_us,
    };
    reqlog_write(log, &e);
}

static void group_complete(shadow_group_t *g)
{
    /* Mirrors in flight across a reload that left the experiment as it was:
     * the new router's policy instance took the agreement counts over
     * (adopt), so the comparison and the answers go there, not to the
     * replaced instance that nothing describes any more. */
    exp_rt_t *live = router_successor(g->srv->router, g->router, g->exp);
    const cfg_experiment_t *ce = live->cfg;
    if (g->p_chunked) dechunk(&g->p_body);
    policy_resp_t primary = {.status = g->p_status,
                             .content_type = {g->p_ctype, strlen(g->p_ctype)},
                             .body = mm_buf_view(&g->p_body),
                             .truncated = g->p_truncated,
                             .headers = mm_buf_view(&g->p_headers)};
    policy_resp_t answers[MM_MAX_ARMS];
    int arms[MM_MAX_ARMS], outcomes[MM_MAX_ARMS], idx[MM_MAX_ARMS];
    size_t k = 0;
    for (int i = 0; i < g->n; i++) {
        const leg_t *l = &g->m[i].leg;
        if (!l->started) continue;
        answers[k] = (policy_resp_t){.status = l->status,
                                     .content_type = {l->ctype, strlen(l->ctype)},
                                     .body = mm_buf_view(&l->resp),
                                     .truncated = l->truncated,
                                     .headers = mm_buf_view(&l->headers)};
        arms[k] = g->m[i].arm;
        outcomes[k] = l->status == 0 ? POLICY_ERROR : POLICY_MATCH;
        idx[k++] = i;
    }
    /* Also when the primary failed (status 0): the policy counts that as an
     * error (nothing to compare against, DESIGN.md §7), so its view and the
     * metrics below agree. */
    /* Pooled counts only under the definition the request was mirrored
     * under, unchanged since (a reload there and back starts them over). */
    policy_tally_t *t =
        g->tally_defs == live->state->tally_defs ? store_tally(live->state, live->fp) : NULL;
    if (k > 0 && ce->ops->compare) {
        policy_view_t v;
        router_view(live, NULL, mm_now_ms(), &v);
        v.tally = t;
        ce->ops->compare(ce->policy, &v, &primary, arms, answers, k, outcomes);
    }
    for (size_t j = 0; j < k; j++) {
        mirror_t *m = &g->m[idx[j]];
        m->outcome = outcomes[j] == POLICY_ERROR      ? SHADOW_ERROR
                     : outcomes[j] == POLICY_MISMATCH ? SHADOW_MISMATCH
                                                      : SHADOW_MATCH;
        /* A primary that failed or timed out gave no answer: the mirror's
         * answer cannot be compared, whatever it was (not a mismatch: the
         * candidate is not to blame for the primary's failure). */
        if (g->p_status == 0) m->outcome = SHADOW_ERROR;
        router_answer(g->srv->store, live, m->arm, m->leg.status, m->leg.latency_us, mm_now_ms());
        /* The arm's own failure (a 5xx, a transport error, past timeout_ms)
         * is its error (DESIGN.md §6), as an interleave leg's is: a shadow
         * arm serves no request, so its errors come without requests. Not
         * the primary's failure, which the mirror is not to blame for. */
        if (m->leg.status == 0 || m->leg.status >= 500)
            store_error(g->srv->store, live->state, router_sarm(live, m->arm));
    }
    for (int i = 0; i < g->n; i++) count_outcome(g->exp, g->m[i].arm, g->m[i].outcome, t);
    write_log(g);
    mm_server_t *srv = g->srv;
    group_release(g);
    /* Stopping waits for mirrors in flight (each bounded by its timeout_ms,
     * all by drain_timeout_ms): their outcomes and log lines are part of
     * the requests it lets finish. */
    server_maybe_drained(srv);
}
