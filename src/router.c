/* router.c — see router.h. Matching is a linear scan in config order
 * ("first match wins"): experiments number in the tens, and a scan over a
 * few prefixes costs less than building anything cleverer. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "router.h"
#include "tally.h"

/* The replaced router's experiment of that name, or NULL. Its exps[] are
 * its config's experiments in order, so the config's name index finds it:
 * a reload of thousands of experiments is not quadratic. */
static const exp_rt_t *previous(const router_t *old, const char *name)
{
    int i = old != NULL ? config_experiment_index(old->cfg, name) : -1;
    return i >= 0 && (size_t)i < old->n_exps ? &old->exps[i] : NULL;
}

static int redefined(const exp_rt_t *prev, const cfg_experiment_t *ce)
{
    return prev != NULL && strcmp(prev->cfg->definition, ce->definition) != 0;
}

/* The policy starts from here (created or reset): the store's reset count
 * it has seen. */
static void mark_baseline(exp_rt_t *e)
{
    e->resets_seen = store_resets(e->state);
}

router_t *router_create(uv_loop_t *loop, config_t *cfg, const router_t *old, store_t *store,
                        metrics_t *metrics, const mm_addrs_t *addrs, char *err, size_t errlen)
{
    router_t *r = calloc(1, sizeof(*r));
    if (r == NULL) goto oom;
    r->cfg = cfg;
    r->store = store;
    r->refs = 1;
    r->pools = calloc(cfg->n_upstreams ? cfg->n_upstreams : 1, sizeof(*r->pools));
    r->exps = calloc(cfg->n_experiments ? cfg->n_experiments : 1, sizeof(*r->exps));
    if (r->pools == NULL || r->exps == NULL) goto oom;
    for (size_t i = 0; i < cfg->n_upstreams; i++) {
        /* An upstream the reload leaves as it was keeps its pool, as Envoy
         * keeps an unchanged cluster: its warm connections, its counters,
         * and its outlier ejection (an ejected upstream stays ejected). */
        int k = old ? config_upstream_index(old->cfg, cfg->upstreams[i].name) : -1;
        if (k >= 0 && up_pool_same(old->pools[k], &cfg->upstreams[i])) {
            up_pool_ref(old->pools[k]);
            r->pools[i] = old->pools[k];
            /* Not re-resolved while running: the reload's lookup is its news. */
            if (addrs && cfg->upstreams[i].resolve_ms == 0)
                up_pool_set_addrs(r->pools[i], &addrs[i]);
            continue;
        }
        r->pools[i] =
            up_pool_create(loop, &cfg->upstreams[i], addrs ? &addrs[i] : NULL, err, errlen);
        if (r->pools[i] == NULL) goto err;
    }
    for (size_t i = 0; i < cfg->n_experiments; i++) {
        cfg_experiment_t *ce = &cfg->experiments[i];
        exp_rt_t *e = &r->exps[i];
        const char *names[MM_MAX_ARMS];
        e->cfg = ce;
        for (size_t a = 0; a < ce->n_arms; a++) {
            e->pools[a] = r->pools[ce->arms[a]];
            e->ups[a] = &cfg->upstreams[ce->arms[a]];
            names[a] = e->ups[a]->name;
        }
        const exp_rt_t *prev = previous(old, ce->name);
        exp_control_t initial;
        memset(&initial, 0, sizeof(initial));
        initial.state = EXP_RUNNING;
        e->state =
            store_experiment(store, ce->name, names, ce->n_arms, &initial, redefined(prev, ce));
        e->metrics = metrics_exp(metrics, ce->name, names, ce->n_arms, e->mslot);
        if (e->state) {
            store_hold(e->state);
            e->layout = e->state->layout;
            /* A new definition counts its pooled figures afresh. */
            e->fp = tally_fingerprint(ce->definition);
            store_define(store, e->state, e->fp, redefined(prev, ce));
        }
        if (e->state == NULL || e->metrics == NULL) goto oom;
        e->salt_len = strlen(ce->salt);
        mark_baseline(e);
        if (prev != NULL && ce->ops->adopt) {
            /* The policy goes on from the replaced instance (what it keeps
             * is its own business: policy.h). A reset another instance made that the old router had
             * not acted on yet is then still to be acted on: the next tick resets the new instance
             * (reload_finish runs one at once). */
            int same = !redefined(prev, ce);
            ce->ops->adopt(ce->policy, prev->cfg->ops == ce->ops ? prev->cfg->policy : NULL, same);
            if (same) e->resets_seen = prev->resets_seen;
        }
    }
    r->n_exps = cfg->n_experiments;
    return r;
oom:
    snprintf(err, errlen, "out of memory");
err:
    if (r) {
        r->cfg = NULL; /* the caller still owns cfg on failure */
        for (size_t i = 0; r->exps && i < cfg->n_experiments; i++)
            if (r->exps[i].state) store_release(store, r->exps[i].state);
        if (r->pools)
            for (size_t i = 0; i < cfg->n_upstreams; i++) up_pool_release(r->pools[i]);
        free(r->pools);
        free(r->exps);
        free(r);
    }
    return NULL;
}

exp_rt_t *router_successor(router_t *now, const router_t *was, exp_rt_t *e)
{
    if (now == was) return e; /* no reload since: the common case, no lookup */
    int i = now != NULL ? config_experiment_index(now->cfg, e->cfg->name) : -1;
    if (i < 0 || (size_t)i >= now->n_exps) return e;
    exp_rt_t *n = &now->exps[i];
    return redefined(e, n->cfg) ? e : n; /* as create's adopt decides it */
}

void router_on_reset(exp_rt_t *e)
{
    mark_baseline(e);
    if (e->cfg->ops->reset) e->cfg->ops->reset(e->cfg->policy);
}

void router_sync_resets(router_t *r)
{
    for (size_t i = 0; r && i < r->n_exps; i++) {
        exp_rt_t *e = &r->exps[i];
        /* a reset made here was handled by the admin call itself */
        if (store_resets(e->state) != e->resets_seen) router_on_reset(e);
    }
}

void router_answer(store_t *s, exp_rt_t *e, int arm, int status, uint64_t latency_us,
                   uint64_t now_ms)
{
    store_answer(s, e->state, router_sarm(e, arm), status, latency_us);
    const policy_ops_t *ops = e->cfg->ops;
    if (ops->on_response && e->state->control.state == EXP_RUNNING)
        ops->on_response(e->cfg->policy, arm, status, latency_us, now_ms);
}

void router_ref(router_t *r)
{
    r->refs++;
}

void router_unref(router_t *r)
{
    if (r == NULL || --r->refs > 0) return;
    for (size_t i = 0; i < r->n_exps; i++) store_release(r->store, r->exps[i].state);
    for (size_t i = 0; i < r->cfg->n_upstreams; i++) up_pool_release(r->pools[i]);
    free(r->pools);
    free(r->exps);
    config_free(r->cfg);
    free(r);
}

/* Split a host[:port] into the name (without one trailing dot: "a.b." is
 * the fully qualified "a.b", as nginx takes it) and the port ("" if none).
 * An IPv6 literal keeps its brackets; its colons are not a port. */
static void host_split(mm_str_t h, mm_str_t *name, mm_str_t *port)
{
    const char *colon = NULL;
    if (h.n && h.p[0] == '[') {
        const char *rb = memchr(h.p, ']', h.n);
        if (rb && rb + 1 < h.p + h.n && rb[1] == ':') colon = rb + 1;
    } else {
        colon = memchr(h.p, ':', h.n);
    }
    *name = h;
    *port = (mm_str_t){h.p + h.n, 0};
    if (colon) {
        name->n = (size_t)(colon - h.p);
        *port = (mm_str_t){colon + 1, h.n - name->n - 1};
    }
    if (name->n > 1 && name->p[name->n - 1] == '.') name->n--;
}

static int host_matches(mm_str_t host, const char *want)
{
    /* Names compare case-insensitively; the port only when the rule names
     * one (as nginx's server_name, which never looks at the port). */
    mm_str_t hn, hp, wn, wp;
    host_split(host, &hn, &hp);
    host_split((mm_str_t){want, strlen(want)}, &wn, &wp);
    if (hn.n != wn.n || strncasecmp(hn.p, wn.p, wn.n) != 0) return 0;
    return wp.n == 0 || (hp.n == wp.n && memcmp(hp.p, wp.p, wp.n) == 0);
}

static int header_matches(const http_head_t *head, const char *base, const cfg_header_match_t *m)
{
    size_t nlen = strlen(m->name), vlen = strlen(m->value);
    for (int i = 0; i < head->n; i++) {
        mm_str_t name = http_hname(head, base, i);
        if (name.n != nlen || strncasecmp(name.p, m->name, nlen) != 0) continue;
        mm_str_t v = http_trim(http_hvalue(head, base, i));
        if (v.n == vlen && memcmp(v.p, m->value, vlen) == 0) return 1;
    }
    return 0;
}

exp_rt_t *router_match(router_t *r, mm_str_t url, mm_str_t host, const http_head_t *head,
                       const char *base)
{
    mm_str_t path = http_url_path(url);
    for (size_t i = 0; i < r->n_exps; i++) {
        exp_rt_t *e = &r->exps[i];
        const cfg_experiment_t *c = e->cfg;
        size_t plen = strlen(c->path_prefix);
        if (path.n < plen || memcmp(path.p, c->path_prefix, plen) != 0) continue;
        if (c->host && !host_matches(host, c->host)) continue;
        size_t h = 0;
        while (h < c->n_headers && header_matches(head, base, &c->headers[h])) h++;
        if (h < c->n_headers) continue;
        return e;
    }
    return NULL;
}

void router_request_view(const exp_rt_t *e, mm_str_t method, mm_str_t url, const http_head_t *head,
                         const char *base, policy_req_t *out)
{
    const cfg_experiment_t *c = e->cfg;
    out->method = method;
    out->path = url;
    out->has_key = 0;
    out->key_hash = 0;
    mm_str_t key = {NULL, 0};
    char qbuf[1024]; /* a query key, decoded */
    int found = 0;
    switch (c->sticky_kind) {
    case STICKY_NONE:
        return;
    case STICKY_HEADER: {
        for (int i = 0; i < head->n && !found; i++) {
            mm_str_t name = http_hname(head, base, i);
            if (name.n == strlen(c->sticky_name) &&
                strncasecmp(name.p, c->sticky_name, name.n) == 0) {
                key = http_trim(http_hvalue(head, base, i));
                found = key.n > 0;
            }
        }
        break;
    }
    case STICKY_COOKIE:
        for (int i = 0; i < head->n && !found; i++)
            if (mm_str_ieq(http_hname(head, base, i), "cookie"))
                found = http_cookie_get(http_hvalue(head, base, i), c->sticky_name, &key);
        break;
    case STICKY_QUERY:
        found = http_query_get(url, c->sticky_name, qbuf, sizeof(qbuf), &key);
        break;
    }
    if (found) {
        out->has_key = 1;
        out->key_hash = mm_hash64(c->salt, e->salt_len, key.p, key.n);
    }
}

void router_view(const exp_rt_t *e, mm_rng_t *rng, uint64_t now_ms, policy_view_t *v)
{
    const exp_state_t *s = e->state;
    v->n_arms = s->n_arms;
    int frozen = s->control.state == EXP_PAUSED && !(e->cfg->ops->flags & POLICY_LIVE_WHILE_PAUSED);
    v->stats = frozen ? s->frozen : s->merged;
    v->control = &s->control;
    v->now_ms = now_ms;
    v->rng = rng;
    v->answers = s->answers;
    v->answers_local = s->answers_local;
    v->run_epoch = s->run_epoch;
    v->tally = store_tally(s, e->fp);
}

void router_choose(exp_rt_t *e, const policy_req_t *req, mm_rng_t *rng, uint64_t now_ms,
                   policy_choice_t *out)
{
    const exp_control_t *ctl = &e->state->control;
    /* Every field starts clear: the choice is reused across requests, and a
     * policy sets only what it decides (a fan-out or mirrors must never
     * carry over from the previous request). */
    memset(out, 0, sizeof(*out));
    if (ctl->state == EXP_PROMOTED || ctl->state == EXP_ROLLED_BACK) {
        /* The operator (or the canary's own analysis) decided: weights say where. */
        size_t n = e->state->n_arms;
        if (!ctl->has_weights) {
            out->primary = 0;
        } else if (req->has_key) {
            out->primary = policy_pick_sticky(ctl->weights, n, req->key_hash);
        } else {
            out->primary = policy_pick_weighted(ctl->weights, n, mm_rng_uniform(rng));
        }
        return;
    }
    policy_view_t v;
    router_view(e, rng, now_ms, &v);
    e->cfg->ops->choose(e->cfg->policy, &v, req, out);
    if (out->primary < 0 || (size_t)out->primary >= e->state->n_arms) out->primary = 0;
}
