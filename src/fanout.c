/* fanout.c — see fanout.h.
 *
 * Every arm gets the same request (the body was read whole and de-chunked,
 * bounded by max_body_bytes) as a leg with the arm's own timeout_ms. When all
 * legs are done the policy merges the answers (or picks one to pass through
 * when the other is unusable); the attribution it returns is stored with the
 * request id so a later click can be credited (store_put_aux). The fan-out
 * holds a reference to the connection and to the router: if the client goes
 * away meanwhile, the answers are dropped when they arrive. */
#include <stdlib.h>
#include <string.h>

#include "fanout.h"
#include "feedback.h"
#include "leg.h"
#include "reqlog.h"

typedef struct {
    conn_t *conn;
    router_t *router;
    exp_rt_t *exp;
    uint64_t req_serial;          /* the request this fan-out belongs to */
    int n, pending;               /* legs not done, plus one while fanout_start runs */
    uint8_t ejected[MM_MAX_ARMS]; /* a challenger ejected (outlier): its leg never started */
    mm_buf_t body;
    leg_t legs[MM_MAX_ARMS];
} fanout_t;

static void fanout_free(fanout_t *f)
{
    mm_buf_free(&f->body);
    router_unref(f->router);
    conn_release(f->conn);
    free(f);
}

/* The champion's list went out alone: a challenger that was ejected or
 * could not be connected to fell back to it, counted as for a proxied
 * request (DESIGN.md §4, modelmux_fallbacks_total). One that answered
 * something unusable (a 5xx, no list) or too late is no fallback: it was
 * reached, and interleave's own counters say why. */
static void count_fallbacks(const fanout_t *f)
{
    for (int i = 1; i < f->n; i++) {
        const leg_t *l = &f->legs[i];
        int unreachable =
            l->status == 0 && (l->err == UP_ERR_CONNECT || l->err == UP_ERR_CONNECT_TIMEOUT);
        if (f->ejected[i] || unreachable) router_count_fallback(f->exp, i);
    }
}

static void answer(fanout_t *f)
{
    conn_t *c = f->conn;
    req_t *r = &c->req;
    mm_server_t *srv = c->srv;
    /* Each ranker's own answer, for the pooled answer statistics (the
     * admin view's p50/p99), whether or not the client still waits. */
    uint64_t now = uv_now(srv->loop);
    for (int i = 0; i < f->n; i++) {
        if (f->ejected[i]) continue;
        router_answer(srv->store, f->exp, i, f->legs[i].status, f->legs[i].latency_us, now);
        /* Outlier detection is the upstream's, whoever asked it. */
        if (f->legs[i].err != UP_ERR_OVERFLOW || f->legs[i].status != 0)
            up_pool_observe(f->exp->pools[i], f->legs[i].status, now);
    }
    if (!conn_awaits(c, f->req_serial)) return; /* client gone */
    /* Rankers that answered after a reload that left the experiment as it
     * was: the new router's policy instance took the counters over (adopt),
     * so the merge is counted there, not by the replaced instance that
     * nothing describes any more. Same definition: same arms, same order. */
    exp_rt_t *live = router_successor(srv->router, f->router, f->exp);
    const cfg_experiment_t *ce = live->cfg;
    policy_resp_t answers[MM_MAX_ARMS];
    int all_timeouts = 1;
    for (int i = 0; i < f->n; i++) {
        const leg_t *l = &f->legs[i];
        answers[i] = (policy_resp_t){.status = l->status,
                                     .content_type = {l->ctype, strlen(l->ctype)},
                                     .body = mm_buf_view(&l->resp),
                                     .truncated = l->truncated,
                                     .skipped = f->ejected[i]};
        if (l->status != 0 || !l->timed_out) all_timeouts = 0;
    }
    policy_view_t v;
    router_view(live, &srv->rng, mm_now_ms(), &v);
    mm_buf_t out, aux;
    mm_buf_init(&out);
    mm_buf_init(&aux);
    int merged = 0;
    int arm = ce->ops->combine(ce->policy, &v, answers, (size_t)f->n, &out, &aux, &merged);
    int usable = arm >= 0 && arm < f->n && answers[arm].status != 0;
    if (usable) r->arm = arm;
    /* One error per failed leg. The arm the request is accounted to (r->arm)
     * gets its error from req_finish, by the final status; a leg that failed
     * beside it gets one here and no pull (its list was not shown). */
    for (int i = 0; i < f->n; i++)
        if (i != r->arm && !f->ejected[i] && (answers[i].status == 0 || answers[i].status >= 500))
            store_error(srv->store, f->exp->state, router_sarm(f->exp, i));
    if (!usable) {
        r->up_errors++;
        if (all_timeouts)
            conn_respond_error(c, 504, "upstream_timeout", "no ranker answered in time");
        else
            conn_respond_error(c, 502, "upstream_unavailable", "no ranker gave a usable answer");
        goto done;
    }
    r->merged = merged;
    if (!merged && arm == 0) count_fallbacks(f);
    if (merged) {
        f->exp->metrics->has_merged = 1; /* the "interleave" series exist from now on */
        /* Every arm contributed: an impression for each. The client's
         * latency goes to "interleave"; each ranker's own answer time was
         * recorded as its answer (store_answer) when it came. */
        for (int i = 0; i < f->n; i++)
            if (i != arm) store_pull(srv->store, f->exp->state, router_sarm(f->exp, i));
    }
    if (aux.len) { /* the attribution a later click is credited by */
        mm_buf_t kept;
        mm_buf_init(&kept);
        feedback_aux_begin(&kept, f->exp->state);
        mm_buf_append(&kept, aux.p, aux.len);
        if (!kept.oom)
            store_put_aux(srv->store, (mm_str_t){r->id, r->id_len}, kept.p, kept.len,
                          ce->feedback_ttl_s);
        mm_buf_free(&kept);
    }
    const leg_t *l = &f->legs[arm];
    const char *body = merged ? out.p : l->resp.p;
    size_t len = merged ? out.len : l->resp.len;
    mm_buf_t extra;
    mm_buf_init(&extra);
    /* The answer's own headers go with it (caching, cookies...); a merged
     * body is no longer the one a validator or digest of a's described. */
    size_t own = merged ? l->headers_body_at : l->headers.len;
    if (own) mm_buf_append(&extra, l->headers.p, own);
    mm_buf_lit(&extra, "X-Modelmux-Experiment: ");
    mm_buf_cstr(&extra, ce->name);
    mm_buf_lit(&extra, "\r\nX-Modelmux-Arm: ");
    mm_buf_cstr(&extra, merged ? "interleave" : f->exp->ups[arm]->name);
    mm_buf_lit(&extra, "\r\n");
    mm_buf_append(&extra, "", 1); /* NUL: conn_respond takes a C string */
    /* No r->bytes_out here: conn_respond holds the whole answer in r->out,
     * whose body the request log counts (counting len too logged it twice). */
    conn_respond(c, answers[arm].status, l->ctype[0] ? l->ctype : "application/json",
                 body ? body : "", len, extra.oom ? NULL : extra.p);
    mm_buf_free(&extra);
done:
    mm_buf_free(&out);
    mm_buf_free(&aux);
}

/* A leg is done (or fanout_start has started them all): after the last,
 * answer and free everything. Legs hold no handle, so this is at once. */
static void settle(fanout_t *f)
{
    if (--f->pending > 0) return;
    answer(f);
    for (int i = 0; i < f->n; i++) leg_free(&f->legs[i]);
    fanout_free(f);
}

static void on_leg_done(leg_t *l)
{
    settle(l->owner);
}

void fanout_start(conn_t *c)
{
    req_t *r = &c->req;
    exp_rt_t *e = r->exp;
    fanout_t *f = calloc(1, sizeof(*f));
    if (f == NULL) {
        conn_respond_error(c, 503, "overloaded", "out of memory");
        return;
    }
    f->conn = conn_hold(c);
    f->router = r->router;
    router_ref(f->router);
    f->exp = e;
    f->req_serial = r->serial;
    f->n = (int)e->state->n_arms;
    f->body = r->captured; /* take the body: no copy */
    mm_buf_init(&r->captured);
    /* With log.bodies the request's log line needs the body too, after f
     * is gone: keep a copy of what the log writes (at most its first
     * 64 KiB), as a proxied request's capture keeps. */
    if (c->srv->reqlog && reqlog_bodies(c->srv->reqlog) && f->body.len > 0)
        mm_buf_append(&r->captured, f->body.p,
                      f->body.len < REQLOG_BODY_MAX ? f->body.len : REQLOG_BODY_MAX);
    uint64_t keep = server_config(c->srv)->limits.max_body_bytes;
    for (int i = 0; i < f->n; i++) {
        leg_t *l = &f->legs[i];
        leg_init(l);
        l->owner = f;
        leg_build_head(&l->head, r->method, e->ups[i], (mm_str_t){r->url.p, r->url.len},
                       (mm_str_t){r->fwd_lines.p, r->fwd_lines.len}, 0, f->body.len, r->id, NULL);
        l->body = f->body.p;
        l->body_len = f->body.len;
        l->keep_max = keep;
        l->keep_headers = LEG_HEADERS_RELAY;
        l->done = on_leg_done;
    }
    /* A leg may be done before leg_start returns (no connection to be had):
     * the extra count keeps f until every leg has been started. */
    f->pending = f->n + 1;
    uint64_t now_ms = uv_now(c->srv->loop);
    for (int i = 0; i < f->n; i++) {
        /* An ejected challenger is not asked, as a proxied request would
         * not be (the champion is asked whatever its state). */
        if (router_arm_ejected(e, i, now_ms)) {
            f->ejected[i] = 1; /* its leg stays as leg_init left it: no answer */
            f->pending--;
            continue;
        }
        leg_start(&f->legs[i], &c->srv->legs, e->pools[i], e->ups[i]->timeout_ms, r->head_request);
    }
    settle(f);
}
