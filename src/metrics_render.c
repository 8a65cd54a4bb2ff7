/* metrics_render.c — GET /metrics: this instance's counters in the Prometheus
 * text exposition format 0.0.4 (DESIGN.md §7 names the families).
 *
 * Rendering walks the metrics registry (which outlives reloads, so counters
 * never go backwards when the config changes) and the current router (for
 * what only exists there: gauges of live experiments, upstream pools). It
 * allocates nothing but the output buffer and, per experiment, the policy's
 * JSON description that the share gauge needs; a scrape every few seconds
 * makes that cheap enough, and it keeps the share rule in one place for
 * /metrics and the admin API alike.
 *
 * Every family gets # HELP and # TYPE and all its samples together, as the
 * format requires. The families DESIGN.md §7 names are always there, with no
 * samples where there is nothing to report (no canary, no shadow arm), so
 * dashboards and alerts can rely on the names. Counters of experiments removed by a reload keep
 * being exported (they would otherwise vanish and reappear as resets); gauges are exported for live
 * experiments only. Upstream counters come from the pools of the current router, which a reload
 * rebuilds, so they restart from zero after a reload — Prometheus' rate() treats that as an
 * ordinary counter reset. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics_render.h"
#include "reqlog.h"

/* A private RNG for descriptions: the same seed every time, so a scrape is a
 * function of the state and never advances the server's routing stream. */
#define DESCRIBE_SEED 0x6d6d6d6574726963ull

/* ---- number and label formatting ---- */

/* The shortest decimal that reads back as v; integers without a fraction. */
void metrics_put_float(mm_buf_t *b, double v)
{
    char tmp[40];
    if (isnan(v)) {
        mm_buf_lit(b, "NaN");
        return;
    }
    if (isinf(v)) {
        mm_buf_cstr(b, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    if (v == floor(v) && fabs(v) < 1e15) {
        snprintf(tmp, sizeof(tmp), "%.0f", v);
        mm_buf_cstr(b, strcmp(tmp, "-0") == 0 ? "0" : tmp);
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof(tmp), "%.*g", prec, v);
        if (strtod(tmp, NULL) == v) break;
    }
    mm_buf_cstr(b, tmp);
}

/* Label values: backslash, double quote and line feed are escaped. */
static void put_label_value(mm_buf_t *b, const char *s)
{
    const char *run = s;
    for (; *s; s++) {
        const char *esc = *s == '\\' ? "\\\\" : *s == '"' ? "\\\"" : *s == '\n' ? "\\n" : NULL;
        if (esc == NULL) continue;
        mm_buf_append(b, run, (size_t)(s - run));
        mm_buf_cstr(b, esc);
        run = s + 1;
    }
    mm_buf_append(b, run, (size_t)(s - run));
}

static void family(mm_buf_t *b, const char *name, const char *type, const char *help)
{
    mm_buf_lit(b, "# HELP ");
    mm_buf_cstr(b, name);
    mm_buf_lit(b, " ");
    mm_buf_cstr(b, help); /* our own text: no backslashes or line feeds */
    mm_buf_lit(b, "\n# TYPE ");
    mm_buf_cstr(b, name);
    mm_buf_lit(b, " ");
    mm_buf_cstr(b, type);
    mm_buf_lit(b, "\n");
}

/* name{k1="v1",k2="v2",...} — labels given as a NULL-terminated k, v list. */
static void sample_start(mm_buf_t *b, const char *name, const char *const *kv)
{
    mm_buf_cstr(b, name);
    for (size_t i = 0; kv && kv[i]; i += 2) {
        mm_buf_cstr(b, i ? "," : "{");
        mm_buf_cstr(b, kv[i]);
        mm_buf_lit(b, "=\"");
        put_label_value(b, kv[i + 1]);
        mm_buf_lit(b, "\"");
    }
    if (kv && kv[0]) mm_buf_lit(b, "}");
    mm_buf_lit(b, " ");
}

static void sample_u64(mm_buf_t *b, const char *name, const char *const *kv, uint64_t v)
{
    sample_start(b, name, kv);
    mm_buf_u64(b, v);
    mm_buf_lit(b, "\n");
}

static void sample_f(mm_buf_t *b, const char *name, const char *const *kv, double v)
{
    sample_start(b, name, kv);
    metrics_put_float(b, v);
    mm_buf_lit(b, "\n");
}

/* ---- shares, quantiles, descriptions ---- */

json_t *metrics_describe(const exp_rt_t *e)
{
    const policy_ops_t *ops = e->cfg->ops;
    if (ops->describe == NULL) return NULL;
    mm_rng_t rng;
    mm_rng_seed(&rng, DESCRIBE_SEED);
    policy_view_t v;
    router_view(e, &rng, mm_now_ms(), &v);
    return ops->describe(e->cfg->policy, &v);
}

/* share[i] = w[i] / sum over the finite positive weights; 0 if none. */
static int normalize(const double *w, size_t n, double *share)
{
    double sum = 0.0;
    for (size_t i = 0; i < n; i++)
        if (isfinite(w[i]) && w[i] > 0.0) sum += w[i];
    if (!(sum > 0.0) || !isfinite(sum)) return 0;
    for (size_t i = 0; i < n; i++) share[i] = isfinite(w[i]) && w[i] > 0.0 ? w[i] / sum : 0.0;
    return 1;
}

static int arm_index(const exp_rt_t *e, const char *name)
{
    for (size_t i = 0; name && i < e->state->n_arms; i++)
        if (strcmp(e->ups[i]->name, name) == 0) return (int)i;
    return -1;
}

static int shares_from_description(const exp_rt_t *e, const json_t *d, double *share)
{
    size_t n = e->state->n_arms;
    double w[MM_MAX_ARMS] = {0};
    if (!json_is_object(d)) return 0;

    const json_t *eff = json_object_get(json_object_get(d, "weights"), "effective");
    if (json_is_object(eff)) {
        for (size_t i = 0; i < n; i++) {
            const json_t *x = json_object_get(eff, e->ups[i]->name);
            w[i] = json_is_number(x) ? json_number_value(x) : 0.0;
        }
        if (normalize(w, n, share)) return 1;
    }

    const json_t *arms = json_object_get(d, "arms");
    if (json_is_array(arms)) {
        size_t k;
        const json_t *a;
        int found = 0;
        json_array_foreach(arms, k, a)
        {
            const json_t *nm = json_object_get(a, "arm");
            if (!json_is_string(nm)) nm = json_object_get(a, "name");
            const json_t *sh = json_object_get(a, "expected_share");
            if (!json_is_number(sh)) sh = json_object_get(a, "share");
            int i = arm_index(e, json_string_value(nm));
            if (i < 0 || !json_is_number(sh)) continue;
            w[i] = json_number_value(sh);
            found = 1;
        }
        if (found && normalize(w, n, share)) return 1;
    }

    const json_t *step = json_object_get(d, "step");
    int canary = arm_index(e, json_string_value(json_object_get(d, "canary")));
    if (json_is_number(step) && canary > 0) {
        double s = json_number_value(step) / 100.0;
        s = s < 0.0 ? 0.0 : s > 1.0 ? 1.0 : s;
        memset(share, 0, n * sizeof(*share));
        share[canary] = s;
        share[0] += 1.0 - s;
        return 1;
    }

    int primary = arm_index(e, json_string_value(json_object_get(d, "primary")));
    if (primary >= 0) {
        memset(share, 0, n * sizeof(*share));
        share[primary] = 1.0;
        return 1;
    }
    return 0;
}

static void policy_shares(const exp_rt_t *e, const json_t *desc, double *share)
{
    size_t n = e->state->n_arms;
    const exp_control_t *ctl = &e->state->control;
    if (n == 0) return;
    if (ctl->state == EXP_PROMOTED || ctl->state == EXP_ROLLED_BACK) {
        if (!(ctl->has_weights && normalize(ctl->weights, n, share))) {
            memset(share, 0, n * sizeof(*share));
            share[0] = 1.0;
        }
        return;
    }
    if (ctl->has_weights && (e->cfg->ops->flags & POLICY_ACCEPTS_WEIGHTS) &&
        normalize(ctl->weights, n, share))
        return;
    json_t *own = NULL;
    if (desc == NULL) desc = own = metrics_describe(e);
    int ok = shares_from_description(e, desc, share);
    json_decref(own);
    if (ok) return;
    double pulls[MM_MAX_ARMS];
    for (size_t i = 0; i < n; i++) pulls[i] = (double)e->state->merged[i].pulls;
    if (normalize(pulls, n, share)) return;
    for (size_t i = 0; i < n; i++) share[i] = 1.0 / (double)n;
}

void metrics_arm_shares(const exp_rt_t *e, const json_t *desc, double *share)
{
    policy_shares(e, desc, share);
    /* An ejected challenger's requests are served by the champion (the
     * router's fallback) until its ejection ends: the traffic it would get
     * is the champion's now. */
    uint64_t now = mm_now_ms();
    for (size_t i = 1; i < e->state->n_arms; i++)
        if (router_arm_ejected(e, (int)i, now)) {
            share[0] += share[i];
            share[i] = 0.0;
        }
}

/* ---- the exposition ---- */

typedef struct {
    metrics_exp_t *m;
    const exp_rt_t *rt; /* NULL: removed by a reload, counters only */
} exp_ref_t;

static const char *const shadow_outcomes[SHADOW__COUNT] = {"match", "mismatch", "error", "dropped"};

/* Live experiments in config order, then the ones a reload removed. A
 * block is live when the router's experiment of its name holds it: one
 * index lookup each, so a scrape is linear in the experiments. */
static exp_ref_t *collect(mm_server_t *srv, size_t *count)
{
    router_t *r = srv->router;
    size_t n = 0;
    for (metrics_exp_t *m = srv->metrics.exps; m; m = m->next) n++;
    exp_ref_t *v = calloc(n + (r ? r->n_exps : 0) + 1, sizeof(*v));
    if (v == NULL) return NULL;
    size_t k = 0;
    for (size_t i = 0; r && i < r->n_exps; i++)
        v[k++] = (exp_ref_t){r->exps[i].metrics, &r->exps[i]};
    for (metrics_exp_t *m = srv->metrics.exps; m; m = m->next) {
        int i = r ? config_experiment_index(r->cfg, m->name) : -1;
        if (i < 0 || r->exps[i].metrics != m) v[k++] = (exp_ref_t){m, NULL};
    }
    *count = k;
    return v;
}

/* The slot of the arm named "interleave", or -1. */
static int interleave_slot(const metrics_exp_t *m)
{
    for (size_t a = 0; a < m->n_arms; a++)
        if (strcmp(m->arm_names[a], "interleave") == 0) return (int)a;
    return -1;
}

/* Arm a of m's request series, a == n_arms being the merged answers
 * (interleave), which exist only once there was one; else NULL. The merged
 * answers are labelled arm="interleave", as X-Modelmux-Arm says; an arm
 * whose upstream is itself called "interleave" has that label too, so its
 * series and the merged one are one series, their sum (in *tmp) — two
 * series with the same labels would be a duplicate that Prometheus
 * rejects, and X-Modelmux-Arm does not tell them apart either. */
static const metrics_arm_t *arm_or_merged(const metrics_exp_t *m, size_t a, metrics_arm_t *tmp)
{
    int folded = m->has_merged ? interleave_slot(m) : -1;
    if (a == m->n_arms) return m->has_merged && folded < 0 ? &m->merged : NULL;
    if ((int)a != folded) return &m->arms[a];
    *tmp = m->arms[a];
    for (int s = 0; s < 600; s++) tmp->by_status[s] += m->merged.by_status[s];
    for (int i = 0; i <= MM_LAT_BUCKETS; i++) tmp->lat_buckets[i] += m->merged.lat_buckets[i];
    tmp->lat_sum_s += m->merged.lat_sum_s;
    tmp->lat_count += m->merged.lat_count;
    return tmp;
}

static const char *arm_label(const metrics_exp_t *m, size_t a)
{
    return a < m->n_arms ? m->arm_names[a] : "interleave";
}

static void render_requests(mm_buf_t *b, const exp_ref_t *v, size_t n, const metrics_t *mt)
{
    family(b, "modelmux_requests_total", "counter",
           "Requests answered, by experiment, arm and HTTP status code (code 0: no status; "
           "experiment and arm empty: no experiment matched).");
    char code[8];
    metrics_arm_t tmp;
    for (size_t k = 0; k < n; k++) {
        const metrics_exp_t *m = v[k].m;
        for (size_t a = 0; a <= m->n_arms; a++) {
            const metrics_arm_t *ma = arm_or_merged(m, a, &tmp);
            if (ma == NULL) continue;
            for (int s = 0; s < 600; s++) {
                if (ma->by_status[s] == 0) continue;
                snprintf(code, sizeof(code), "%d", s);
                const char *kv[] = {"experiment", m->name, "arm", arm_label(m, a),
                                    "code",       code,    NULL};
                sample_u64(b, "modelmux_requests_total", kv, ma->by_status[s]);
            }
        }
    }
    for (int s = 0; s < 600; s++) {
        if (mt->unrouted_by_status[s] == 0) continue;
        snprintf(code, sizeof(code), "%d", s);
        const char *kv[] = {"experiment", "", "arm", "", "code", code, NULL};
        sample_u64(b, "modelmux_requests_total", kv, mt->unrouted_by_status[s]);
    }
}

static void render_durations(mm_buf_t *b, const exp_ref_t *v, size_t n)
{
    family(b, "modelmux_request_duration_seconds", "histogram",
           "Time from the end of the request head to the end of the answer, by experiment and "
           "arm.");
    char le[32];
    metrics_arm_t tmp;
    for (size_t k = 0; k < n; k++) {
        const metrics_exp_t *m = v[k].m;
        for (size_t a = 0; a <= m->n_arms; a++) {
            const metrics_arm_t *ma = arm_or_merged(m, a, &tmp);
            if (ma == NULL) continue;
            uint64_t cum = 0;
            for (int i = 0; i <= MM_LAT_BUCKETS; i++) {
                cum += ma->lat_buckets[i];
                if (i < MM_LAT_BUCKETS) {
                    mm_buf_t t = {le, 0, sizeof(le), 0};
                    metrics_put_float(&t, mm_lat_bounds[i]);
                    le[t.len < sizeof(le) ? t.len : sizeof(le) - 1] = '\0';
                } else {
                    snprintf(le, sizeof(le), "+Inf");
                }
                const char *kv[] = {"experiment", m->name, "arm", arm_label(m, a), "le", le, NULL};
                sample_u64(b, "modelmux_request_duration_seconds_bucket", kv, cum);
            }
            const char *kv[] = {"experiment", m->name, "arm", arm_label(m, a), NULL};
            sample_f(b, "modelmux_request_duration_seconds_sum", kv, ma->lat_sum_s);
            sample_u64(b, "modelmux_request_duration_seconds_count", kv, cum);
        }
    }
}

/* Per address of the upstreams given by host name (an address upstream's
 * one address is the upstream itself, above). */
static void render_addresses(mm_buf_t *b, const router_t *r)
{
    size_t n = r ? r->cfg->n_upstreams : 0;
    up_addr_stats_t as;
    family(b, "modelmux_upstream_address_requests_total", "counter",
           "Exchanges with each address of an upstream given by host name: answered (an answer "
           "came, 5xx included) or failed (connect, timeout, reset, protocol). Since the "
           "upstream's set of addresses last changed.");
    for (size_t i = 0; i < n; i++) {
        if (!mm_addr_is_name(&r->cfg->upstreams[i].addr)) continue;
        for (int a = 0; up_pool_addr_stats(r->pools[i], a, &as) == 0; a++) {
            const char *kva[] = {
                "upstream", r->cfg->upstreams[i].name, "address", as.address, "result", "answered",
                NULL};
            sample_u64(b, "modelmux_upstream_address_requests_total", kva, as.answers);
            const char *kvf[] = {
                "upstream", r->cfg->upstreams[i].name, "address", as.address, "result", "failed",
                NULL};
            sample_u64(b, "modelmux_upstream_address_requests_total", kvf, as.fails);
        }
    }
    family(b, "modelmux_upstream_address_ejected", "gauge",
           "1 while outlier ejection skips this address of an upstream given by host name (the "
           "others serve), else 0. With --workers N: the workers that skip it.");
    for (size_t i = 0; i < n; i++) {
        if (!mm_addr_is_name(&r->cfg->upstreams[i].addr)) continue;
        for (int a = 0; up_pool_addr_stats(r->pools[i], a, &as) == 0; a++) {
            const char *kv[] = {"upstream", r->cfg->upstreams[i].name, "address", as.address, NULL};
            sample_u64(b, "modelmux_upstream_address_ejected", kv, (uint64_t)as.ejected);
        }
    }
}

static void render_upstreams(mm_buf_t *b, const router_t *r)
{
    size_t n = r ? r->cfg->n_upstreams : 0;
    up_pool_stats_t *st = calloc(n + 1, sizeof(*st));
    if (st == NULL) return;
    for (size_t i = 0; i < n; i++) up_pool_stats(r->pools[i], &st[i]);

    family(b, "modelmux_upstream_errors_total", "counter",
           "Failed exchanges with an upstream by kind (connect, connect_timeout, timeout, reset, "
           "protocol, overflow), and outlier ejections as kind ejection. Since the start, or the "
           "reload that last changed the upstream.");
    for (size_t i = 0; i < n; i++) {
        const char *name = r->cfg->upstreams[i].name;
        for (int k = 0; k < UP_ERR__COUNT; k++) {
            const char *kv[] = {"upstream", name, "kind", up_err_name((up_err_t)k), NULL};
            sample_u64(b, "modelmux_upstream_errors_total", kv, st[i].errors[k]);
        }
        const char *kv[] = {"upstream", name, "kind", "ejection", NULL};
        sample_u64(b, "modelmux_upstream_errors_total", kv, st[i].ejections);
    }
    family(
        b, "modelmux_upstream_connects_total", "counter",
        "Connections opened to an upstream since the start, or the reload that last changed it.");
    for (size_t i = 0; i < n; i++) {
        const char *kv[] = {"upstream", r->cfg->upstreams[i].name, NULL};
        sample_u64(b, "modelmux_upstream_connects_total", kv, st[i].connects);
    }
    family(b, "modelmux_upstream_resolutions_total", "counter",
           "Re-resolutions of an upstream's host name (every resolve_ms) that moved it to a new "
           "address (result changed) or failed, the last address kept (result failed). Since the "
           "start, or the reload that last changed the upstream.");
    for (size_t i = 0; i < n; i++) {
        if (r->cfg->upstreams[i].resolve_ms == 0 || !mm_addr_is_name(&r->cfg->upstreams[i].addr))
            continue;
        const char *kvc[] = {"upstream", r->cfg->upstreams[i].name, "result", "changed", NULL};
        sample_u64(b, "modelmux_upstream_resolutions_total", kvc, st[i].readdressed);
        const char *kvf[] = {"upstream", r->cfg->upstreams[i].name, "result", "failed", NULL};
        sample_u64(b, "modelmux_upstream_resolutions_total", kvf, st[i].resolve_failures);
    }
    family(b, "modelmux_upstream_connections", "gauge",
           "Connections to an upstream: open (idle and busy) and idle.");
    for (size_t i = 0; i < n; i++) {
        const char *kvo[] = {"upstream", r->cfg->upstreams[i].name, "state", "open", NULL};
        sample_u64(b, "modelmux_upstream_connections", kvo, (uint64_t)st[i].open);
        const char *kvi[] = {"upstream", r->cfg->upstreams[i].name, "state", "idle", NULL};
        sample_u64(b, "modelmux_upstream_connections", kvi, (uint64_t)st[i].idle);
    }
    family(b, "modelmux_upstream_waiting", "gauge",
           "Requests waiting for a connection to an upstream (pool exhausted).");
    for (size_t i = 0; i < n; i++) {
        const char *kv[] = {"upstream", r->cfg->upstreams[i].name, NULL};
        sample_u64(b, "modelmux_upstream_waiting", kv, (uint64_t)st[i].waiting);
    }
    family(b, "modelmux_upstream_address_ejections_total", "counter",
           "Outlier ejections of one of an upstream's several addresses (its other addresses "
           "serve meanwhile). Since the start, or the reload that last changed the upstream.");
    for (size_t i = 0; i < n; i++) {
        const char *kv[] = {"upstream", r->cfg->upstreams[i].name, NULL};
        sample_u64(b, "modelmux_upstream_address_ejections_total", kv, st[i].address_ejections);
    }
    family(b, "modelmux_upstream_addresses", "gauge",
           "Addresses an upstream's exchanges take in turn: every one its host name resolves to "
           "(up to 16), 1 for an address.");
    for (size_t i = 0; i < n; i++) {
        const char *kv[] = {"upstream", r->cfg->upstreams[i].name, NULL};
        sample_u64(b, "modelmux_upstream_addresses", kv, (uint64_t)st[i].addresses);
    }
    render_addresses(b, r);
    free(st);
}

static void render_arm_counters(mm_buf_t *b, const exp_ref_t *v, size_t n)
{
    family(b, "modelmux_fallbacks_total", "counter",
           "Requests chosen for an arm (from) that the champion (to) served because the arm was "
           "unreachable or ejected.");
    for (size_t k = 0; k < n; k++) {
        const metrics_exp_t *m = v[k].m;
        for (size_t a = 0; a < m->n_arms; a++) {
            /* Every pair counted so far (an arm that is the champion now
             * may have fallen back to another before a reload), and a zero
             * series to the current champion from each other arm. */
            const metrics_arm_t *ma = &m->arms[a];
            int to_champion = (int)a == m->champion;
            for (uint16_t i = 0; i < ma->n_fallbacks; i++) {
                const char *kv[] = {"experiment", m->name,
                                    "from",       m->arm_names[a],
                                    "to",         m->arm_names[ma->fallbacks[i].to],
                                    NULL};
                sample_u64(b, "modelmux_fallbacks_total", kv, ma->fallbacks[i].n);
                if (ma->fallbacks[i].to == m->champion) to_champion = 1;
            }
            if (to_champion) continue;
            const char *kv[] = {
                "experiment", m->name, "from", m->arm_names[a], "to", m->arm_names[m->champion],
                NULL};
            sample_u64(b, "modelmux_fallbacks_total", kv, 0);
        }
    }

    family(b, "modelmux_shadow_total", "counter",
           "Mirrored requests by shadow arm and outcome (match, mismatch, error, dropped).");
    for (size_t k = 0; k < n; k++) {
        const metrics_exp_t *m = v[k].m;
        int mirroring = v[k].rt && v[k].rt->cfg->ops->compare != NULL;
        for (size_t a = 0; a < m->n_arms; a++)
            for (int o = 0; o < SHADOW__COUNT; o++) {
                uint64_t x = m->arms[a].shadow[o];
                if (x == 0 && !(mirroring && (int)a != m->champion)) continue;
                const char *kv[] = {"experiment",       m->name, "arm", m->arm_names[a], "outcome",
                                    shadow_outcomes[o], NULL};
                sample_u64(b, "modelmux_shadow_total", kv, x);
            }
    }

    family(b, "modelmux_feedback_total", "counter",
           "Rewards received by this instance, by experiment and arm.");
    for (size_t k = 0; k < n; k++) {
        const metrics_exp_t *m = v[k].m;
        for (size_t a = 0; a < m->n_arms; a++) {
            const char *kv[] = {"experiment", m->name, "arm", m->arm_names[a], NULL};
            sample_u64(b, "modelmux_feedback_total", kv, m->arms[a].feedback);
        }
    }

    /* A gauge only because rewards may be negative: a running sum, kept
     * as the counters are (also for experiments and arms a reload
     * removed), so that its ratio to modelmux_feedback_total, the mean
     * reward, has its numerator wherever it has its denominator. */
    family(b, "modelmux_reward_sum", "gauge",
           "Sum of the rewards received by this instance (a gauge: rewards may be negative).");
    for (size_t k = 0; k < n; k++) {
        const metrics_exp_t *m = v[k].m;
        for (size_t a = 0; a < m->n_arms; a++) {
            const char *kv[] = {"experiment", m->name, "arm", m->arm_names[a], NULL};
            sample_f(b, "modelmux_reward_sum", kv, m->arms[a].reward_sum);
        }
    }
}

static void render_experiments(mm_buf_t *b, const router_t *r)
{
    size_t n = r ? r->n_exps : 0;
    family(b, "modelmux_arm_share", "gauge",
           "Effective share of traffic an arm gets now (operator weights, policy weights or "
           "posterior, canary step, else observed).");
    for (size_t k = 0; k < n; k++) {
        const exp_rt_t *e = &r->exps[k];
        double share[MM_MAX_ARMS];
        metrics_arm_shares(e, NULL, share);
        for (size_t a = 0; a < e->state->n_arms; a++) {
            const char *kv[] = {"experiment", e->cfg->name, "arm", e->ups[a]->name, NULL};
            sample_f(b, "modelmux_arm_share", kv, share[a]);
        }
    }

    /* A contract family (DESIGN.md §7): HELP and TYPE even with no canary. */
    family(b, "modelmux_canary_step", "gauge",
           "Percent of traffic on the canary (canary experiments).");
    for (size_t k = 0; k < n; k++) {
        if (!router_is_canary(&r->exps[k])) continue;
        const char *kv[] = {"experiment", r->exps[k].cfg->name, NULL};
        sample_f(b, "modelmux_canary_step", kv, r->exps[k].state->control.canary_step);
    }

    family(b, "modelmux_experiment_state", "gauge",
           "1 for the experiment's current operator state (running, paused, promoted, "
           "rolled_back), 0 for the others.");
    for (size_t k = 0; k < n; k++) {
        const exp_rt_t *e = &r->exps[k];
        for (int s = 0; s < EXP_STATE_COUNT; s++) {
            const char *kv[] = {"experiment", e->cfg->name, "state",
                                exp_state_name((exp_run_state_t)s), NULL};
            sample_u64(b, "modelmux_experiment_state", kv, (int)e->state->control.state == s);
        }
    }

    family(b, "modelmux_experiment_control_version", "gauge",
           "Version of the experiment's control state (incremented on every operator or policy "
           "change, shared through the store).");
    for (size_t k = 0; k < n; k++) {
        const char *kv[] = {"experiment", r->exps[k].cfg->name, NULL};
        sample_u64(b, "modelmux_experiment_control_version", kv, r->exps[k].state->control.version);
    }

    family(b, "modelmux_store_dropped_total", "counter",
           "Statistics increments dropped: counted before another instance's reset reached "
           "this one.");
    for (size_t k = 0; k < n; k++) {
        const char *kv[] = {"experiment", r->exps[k].cfg->name, NULL};
        sample_u64(b, "modelmux_store_dropped_total", kv, r->exps[k].state->dropped);
    }
}

static void render_process(mm_server_t *srv, mm_buf_t *b)
{
    family(b, "modelmux_connections", "gauge", "Open client connections on the data listener.");
    sample_u64(b, "modelmux_connections", NULL, (uint64_t)srv->n_conns);
    /* Not "modelmux_connections_total": OpenMetrics parsers (prometheus_client)
     * strip _total and would fold it into the modelmux_connections gauge. */
    family(b, "modelmux_connections_accepted_total", "counter",
           "Client connections accepted on the data listener.");
    sample_u64(b, "modelmux_connections_accepted_total", NULL, srv->connections_total);
    family(b, "modelmux_overload_rejects_total", "counter",
           "Connections answered 503 because max_connections was reached.");
    sample_u64(b, "modelmux_overload_rejects_total", NULL, srv->overload_rejects);

    family(b, "modelmux_store_up", "gauge",
           "1 while the store is reachable and takes this instance's writes (always 1 for the "
           "memory store).");
    sample_u64(b, "modelmux_store_up", NULL,
               srv->store ? (uint64_t)(store_up(srv->store) != 0) : 0);
    if (srv->store) {
        store_stats_t ss;
        store_get_stats(srv->store, &ss);
        family(b, "modelmux_store_syncs_total", "counter", "Sync rounds with Redis completed.");
        sample_u64(b, "modelmux_store_syncs_total", NULL, ss.syncs);
        family(b, "modelmux_store_sync_errors_total", "counter",
               "Experiment writes to Redis that failed (retried).");
        sample_u64(b, "modelmux_store_sync_errors_total", NULL, ss.sync_errors);
        family(b, "modelmux_store_reconnects_total", "counter",
               "Successful reconnections to Redis after the first connection.");
        sample_u64(b, "modelmux_store_reconnects_total", NULL, ss.reconnects);
        family(b, "modelmux_request_ids", "gauge", "Request ids remembered locally for feedback.");
        sample_u64(b, "modelmux_request_ids", NULL, ss.req_entries);
        family(b, "modelmux_request_ids_dropped_total", "counter",
               "Request ids forgotten early (local map full) or never written to Redis.");
        sample_u64(b, "modelmux_request_ids_dropped_total", NULL, ss.req_evicted + ss.req_dropped);
        family(b, "modelmux_feedback_stream_total", "counter",
               "Entries of the Redis feedback stream: delivered, acknowledged, dead (given up "
               "after max deliveries, e.g. an experiment no instance has), invalid "
               "(acknowledged unapplied: malformed, or a value the policy rejects), unknown "
               "(acknowledged unapplied: a request id still not found on its third delivery).");
        const char *kd[] = {"result", "delivered", NULL};
        sample_u64(b, "modelmux_feedback_stream_total", kd, ss.stream_delivered);
        const char *ka[] = {"result", "acked", NULL};
        sample_u64(b, "modelmux_feedback_stream_total", ka, ss.stream_acked);
        const char *kx[] = {"result", "dead", NULL};
        sample_u64(b, "modelmux_feedback_stream_total", kx, ss.stream_dead);
        const char *ki[] = {"result", "invalid", NULL};
        sample_u64(b, "modelmux_feedback_stream_total", ki, srv->stream_invalid);
        const char *ku[] = {"result", "unknown", NULL};
        sample_u64(b, "modelmux_feedback_stream_total", ku, srv->stream_unknown);
    }

    family(b, "modelmux_reloads_total", "counter", "Configuration reloads applied.");
    sample_u64(b, "modelmux_reloads_total", NULL, srv->reloads);
    family(b, "modelmux_reload_failures_total", "counter",
           "Configuration reloads rejected (the previous configuration kept serving).");
    sample_u64(b, "modelmux_reload_failures_total", NULL, srv->reload_failures);

    if (srv->reqlog || srv->reqlog_counts.written || srv->reqlog_counts.dropped ||
        srv->reqlog_counts.errors) { /* on, or on once since the start */
        uint64_t w = srv->reqlog_counts.written, d = srv->reqlog_counts.dropped,
                 e = srv->reqlog_counts.errors;
        family(b, "modelmux_requestlog_written_total", "counter",
               "Request log lines written to the file.");
        sample_u64(b, "modelmux_requestlog_written_total", NULL, w);
        family(b, "modelmux_requestlog_dropped_total", "counter",
               "Request log lines dropped (buffer full or write failed).");
        sample_u64(b, "modelmux_requestlog_dropped_total", NULL, d);
        family(b, "modelmux_requestlog_errors_total", "counter",
               "Request log write and reopen failures.");
        sample_u64(b, "modelmux_requestlog_errors_total", NULL, e);
    }

    family(b, "modelmux_build_info", "gauge", "Always 1; the version is in the label.");
    const char *kv[] = {"version", MM_VERSION, NULL};
    sample_u64(b, "modelmux_build_info", kv, 1);
}

void metrics_render_group(mm_buf_t *out, int workers, int reporting)
{
    family(out, "modelmux_workers", "gauge", "Worker processes in the group (--workers).");
    sample_u64(out, "modelmux_workers", NULL, (uint64_t)workers);
    family(out, "modelmux_workers_reporting", "gauge",
           "Workers whose counters this scrape holds (a sibling that did not answer is left "
           "out).");
    sample_u64(out, "modelmux_workers_reporting", NULL, (uint64_t)reporting);
}

void metrics_render(mm_server_t *srv, mm_buf_t *out)
{
    size_t n = 0;
    exp_ref_t *v = collect(srv, &n);
    if (v == NULL) {
        out->oom = 1;
        return;
    }
    render_requests(out, v, n, &srv->metrics);
    render_durations(out, v, n);
    render_upstreams(out, srv->router);
    render_arm_counters(out, v, n);
    render_experiments(out, srv->router);
    render_process(srv, out);
    free(v);
}
