/* admin.c — the admin API (DESIGN.md §5) on the admin listener.
 *
 * One entry point, admin_handle(), called by the proxy core with a complete
 * request (body read and de-chunked). Every answer is JSON except /metrics;
 * every error has the §4 shape {"error","message","request_id"}.
 *
 * Operator actions never touch routing directly: they write the
 * experiment's control state through store_set_control(), which the router
 * reads on every request (so a change applies to the very next one) and the
 * store publishes to every instance (Redis). What each action writes:
 *   PUT weights   weights as given (unlisted arms 0), state running — so a
 *                 promoted or rolled-back experiment runs again on them;
 *   promote       100 on the arm, state promoted (canary_step 100, or 0 when
 *                 the champion is promoted);
 *   rollback      100 on the champion, state rolled_back, canary_step 0;
 *   pause         state paused (the store snapshots the statistics the
 *                 policy keeps seeing); 409 on a promoted or rolled-back
 *                 experiment, which has nothing left to freeze;
 *   resume        state running (weights, if any, stay with ab; policies
 *                 that set their own shares drop promote's/rollback's;
 *                 after promote or rollback canary_step 0: a canary starts
 *                 over at its first step);
 *   reset         statistics forgotten everywhere (store_reset), the policy's
 *                 own state and the view's p50/p99 too, control back to what
 *                 the config says.
 *
 * The token is compared in constant time (the time taken does not depend on
 * how many leading bytes match). /healthz and /readyz never need it, so load
 * balancers and orchestrators can probe without a secret; everything else,
 * unknown paths included, answers 401 first, so the API's shape is not
 * disclosed to callers without the token. A change (any method but GET and
 * HEAD) that a browser sends for a web page (Origin, Sec-Fetch-Site) is
 * refused with 403 whatever the token: see from_web_page(). */
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsonpos.h"
#include "log.h"
#include "metrics_render.h"
#include "scrape.h"
#include "proxy_internal.h"

#define GET_ONLY  "Allow: GET, HEAD\r\n"
#define POST_ONLY "Allow: POST\r\n"
#define PUT_ONLY  "Allow: PUT\r\n"

/* ---- answers ---- */

static void reply_json(conn_t *c, int status, json_t *o)
{
    char *s = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(15)) : NULL;
    json_decref(o);
    if (s == NULL) {
        conn_respond_error(c, 500, "internal", "out of memory");
        return;
    }
    size_t n = strlen(s);
    char *body = realloc(s, n + 2);
    if (body == NULL) {
        free(s);
        conn_respond_error(c, 500, "internal", "out of memory");
        return;
    }
    body[n++] = '\n'; /* for curl users; parsers do not mind */
    body[n] = '\0';
    conn_respond(c, status, "application/json", body, n, NULL);
    free(body);
}

static void reply_errorf(conn_t *c, int status, const char *code, const char *fmt, ...)
    MM_PRINTF(4, 5);
static void reply_errorf(conn_t *c, int status, const char *code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    conn_respond_error(c, status, code, msg);
}

/* ---- request helpers ---- */

static int str_eq(mm_str_t s, const char *lit)
{
    size_t n = strlen(lit);
    return s.n == n && memcmp(s.p, lit, n) == 0;
}

static int is_get(const mm_local_req_t *r)
{
    return str_eq(r->method, "GET") || str_eq(r->method, "HEAD");
}

/* Constant-time in the content of both strings; the loop runs over the
 * presented value, so only its own length shows. */
static int token_matches(mm_str_t given, const char *token)
{
    size_t tn = strlen(token);
    unsigned diff = (unsigned)(given.n ^ tn);
    for (size_t i = 0; i < given.n; i++)
        diff |= (unsigned char)given.p[i] ^ (unsigned char)(tn ? token[i % tn] : 0);
    return diff == 0 && tn > 0;
}

static int authorized(mm_server_t *srv, const mm_local_req_t *r)
{
    const char *token = server_config(srv)->admin_token;
    if (token == NULL) return 1;
    int h = http_find(r->head, r->base, "authorization");
    if (h < 0) return 0;
    mm_str_t v = http_trim(http_hvalue(r->head, r->base, h));
    if (v.n < 7 || !mm_str_ieq((mm_str_t){v.p, 6}, "bearer") || (v.p[6] != ' ' && v.p[6] != '\t'))
        return 0;
    mm_str_t cred = http_trim((mm_str_t){v.p + 7, v.n - 7});
    return token_matches(cred, token);
}

/* The admin path under /experiments, segment by segment as sent. The proxy
 * normalises every request path (unreserved %XX decoded, runs of '/'
 * merged, "." and ".." removed), which is right for routing to a model
 * server, but "." and ".." are also valid experiment names (DESIGN.md §3):
 * removed, /experiments/.. would be /, /experiments/. the list and
 * /experiments/./rollback an experiment named "rollback". So below
 * /experiments the segments are taken from the request target itself, with
 * unreserved %XX decoded (%2E is '.') and empty segments (from "//" or a
 * trailing '/') skipped, and nothing removed. A longer segment than any
 * name or action is cut: it matches nothing anyway. */
typedef struct {
    int n; /* segments after "experiments": 0 the list, 1 NAME, 2 NAME/ACTION, more */
    char name[MM_NAME_MAX + 2], action[16];
    size_t name_n, action_n;
} exp_path_t;

/* Decode segment p[0..n) into out (cap bytes, cut beyond); its length. */
static size_t path_segment(const char *p, size_t n, char *out, size_t cap)
{
    size_t w = 0;
    for (size_t i = 0; i < n && w < cap; i++) {
        int hi, lo, ch = (unsigned char)p[i];
        if (ch == '%' && i + 2 < n && (hi = mm_hex_val((unsigned char)p[i + 1])) >= 0 &&
            (lo = mm_hex_val((unsigned char)p[i + 2])) >= 0) {
            int d = hi * 16 + lo;
            if ((d >= 'A' && d <= 'Z') || (d >= 'a' && d <= 'z') || (d >= '0' && d <= '9') ||
                d == '-' || d == '.' || d == '_' || d == '~') {
                ch = d;
                i += 2;
            }
        }
        out[w++] = (char)ch;
    }
    return w;
}

/* 1 if r's path, as sent, is /experiments or below (filling *ep). */
static int experiments_path(const mm_local_req_t *r, exp_path_t *ep)
{
    mm_str_t target = r->url, authority, path;
    if (r->head != NULL && r->base != NULL)
        target = http_span(r->base, r->head->url_off, r->head->url_len);
    http_target_form_t form = http_target(target, &authority, &path);
    if (form != HT_ORIGIN && form != HT_ABSOLUTE) return 0;
    path = http_url_path(path);
    memset(ep, 0, sizeof(*ep));
    int k = -1; /* segments seen after "experiments" */
    for (size_t i = 0; i < path.n;) {
        if (path.p[i] == '/') {
            i++;
            continue;
        }
        const char *seg = path.p + i;
        while (i < path.n && path.p[i] != '/') i++;
        size_t len = (size_t)(path.p + i - seg);
        if (k < 0) {
            char first[16];
            size_t fn = path_segment(seg, len, first, sizeof(first));
            if (fn != 11 || memcmp(first, "experiments", 11) != 0) return 0;
        } else if (k == 0) {
            ep->name_n = path_segment(seg, len, ep->name, sizeof(ep->name) - 1);
        } else if (k == 1) {
            ep->action_n = path_segment(seg, len, ep->action, sizeof(ep->action) - 1);
        }
        k++;
    }
    if (k < 0) return 0;
    ep->n = k;
    return 1;
}

/* /healthz or /readyz: the two endpoints that need no token. Decided on
 * the path the router will take, so no path that reaches anything else
 * (/experiments/../healthz is an experiment's action) passes as a probe:
 * under_experiments is experiments_path's answer for r. */
static int is_probe(const mm_local_req_t *r, int under_experiments)
{
    return !under_experiments && (str_eq(r->path, "/healthz") || str_eq(r->path, "/readyz"));
}

/* A change sent by a browser on behalf of a web page: cross-site request
 * forgery. Without a token (the default on a loopback listener) any page
 * the operator opens could POST /experiments/NAME/promote to 127.0.0.1 as
 * a "simple" request (text/plain, no preflight): the browser sends it and
 * only hides the answer. Browsers put Origin on every POST and PUT, and
 * Sec-Fetch-Site on every request, also after a DNS rebinding (where Host
 * and Origin agree, so comparing them would not help); curl, scripts and
 * Prometheus send neither. modelmux serves no page of its own, so no
 * legitimate change carries them. Reads (GET, HEAD) change nothing and
 * stay open to dashboards. */
static int from_web_page(const mm_local_req_t *r)
{
    if (is_get(r)) return 0;
    return http_find(r->head, r->base, "origin") >= 0 ||
           http_find(r->head, r->base, "sec-fetch-site") >= 0;
}

int admin_refusal(mm_server_t *srv, const mm_local_req_t *r, const char **code, const char **msg,
                  const char **extra_headers)
{
    *extra_headers = NULL;
    exp_path_t ep;
    if (is_probe(r, experiments_path(r, &ep))) return 0;
    if (!authorized(srv, r)) {
        *code = "unauthorized";
        *msg = "missing or wrong bearer token";
        *extra_headers = "WWW-Authenticate: Bearer realm=\"modelmux\"\r\n";
        return 401;
    }
    if (from_web_page(r)) {
        *code = "forbidden";
        *msg = "the admin API takes no changes from web pages (Origin or Sec-Fetch-Site on a "
               "request that is not a GET)";
        return 403;
    }
    return 0;
}

/* The request body as JSON. Empty (or blank) bodies give *out = NULL and 0
 * when `optional`; else an error is answered and -1 returned. */
static int parse_body(const mm_local_req_t *r, int optional, json_t **out)
{
    *out = NULL;
    if (jsonpos_blank(r->body.p, r->body.n)) {
        if (optional) return 0;
        conn_respond_error(r->conn, 400, "bad_request", "a JSON object body is required");
        return -1;
    }
    json_error_t je;
    /* Any JSON value is read, so that valid JSON that is no object (null,
     * "x", 3) is told apart from invalid JSON below. */
    json_t *j = json_loadb(r->body.p, r->body.n, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
    if (j == NULL) {
        char why[300];
        jsonpos_syntax_error(r->body.p, r->body.n, &je, why, sizeof(why));
        conn_respond_error(r->conn, 400, "bad_request", why);
        return -1;
    }
    if (!json_is_object(j)) {
        char got[64];
        reply_errorf(r->conn, 400, "bad_request", "the body must be a JSON object, got %s",
                     config_show_value(j, got, sizeof(got)));
        json_decref(j);
        return -1;
    }
    *out = j;
    return 0;
}

/* For actions that take no parameters: nothing, or an empty object. */
static int expect_no_params(const mm_local_req_t *r)
{
    json_t *j;
    if (parse_body(r, 1, &j) < 0) return -1;
    if (j && json_object_size(j) > 0) {
        const char *key = json_object_iter_key(json_object_iter(j));
        reply_errorf(r->conn, 400, "bad_request", "unknown key \"%s\": this action takes none",
                     key);
        json_decref(j);
        return -1;
    }
    json_decref(j);
    return 0;
}

static exp_rt_t *find_experiment(mm_server_t *srv, mm_str_t name)
{
    router_t *rt = srv->router;
    for (size_t i = 0; i < rt->n_exps; i++)
        if (str_eq(name, rt->exps[i].cfg->name)) return &rt->exps[i];
    return NULL;
}

static int arm_index(const exp_rt_t *e, const char *name)
{
    for (size_t i = 0; i < e->state->n_arms; i++)
        if (strcmp(e->ups[i]->name, name) == 0) return (int)i;
    return -1;
}

/* ---- views ---- */

/* The q-quantile of arm i's answer latencies over every instance (the
 * store's pooled histogram: snapshot plus local), in ms; -1 without any. */
static double answer_quantile_ms(const exp_state_t *st, size_t i, double q)
{
    const answer_stats_t *a = &st->answers[i], *l = &st->answers_local[i];
    double us = lathist_quantile2_us(a->hist, l->hist, a->samples + l->samples, q);
    return us < 0 ? -1.0 : us / 1000.0;
}

static json_t *experiment_view(const exp_rt_t *e)
{
    const exp_state_t *st = e->state;
    const exp_control_t *ctl = &st->control;
    json_t *desc = metrics_describe(e);
    double share[MM_MAX_ARMS];
    metrics_arm_shares(e, desc, share);

    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(e->cfg->name));
    json_object_set_new(o, "policy", json_string(e->cfg->ops->name));
    json_object_set_new(o, "state", json_string(exp_state_name(ctl->state)));
    json_object_set_new(o, "version", json_integer((json_int_t)ctl->version));
    json_object_set_new(o, "champion", json_string(e->ups[0]->name));
    json_t *w = json_null();
    if (ctl->has_weights) {
        w = json_object();
        for (size_t i = 0; i < st->n_arms; i++)
            json_object_set_new(w, e->ups[i]->name, json_real(ctl->weights[i]));
    }
    json_object_set_new(o, "weights", w);
    json_t *arms = json_array();
    for (size_t i = 0; i < st->n_arms; i++) {
        const arm_stats_t *s = &st->merged[i];
        double p50 = answer_quantile_ms(st, i, 0.5), p99 = answer_quantile_ms(st, i, 0.99);
        json_t *a = json_object();
        json_object_set_new(a, "name", json_string(e->ups[i]->name));
        json_object_set_new(a, "share", json_real(share[i]));
        json_object_set_new(a, "requests", json_integer((json_int_t)s->pulls));
        json_object_set_new(a, "errors", json_integer((json_int_t)s->errors));
        json_object_set_new(a, "p50_ms", p50 >= 0 ? json_real(p50) : json_null());
        json_object_set_new(a, "p99_ms", p99 >= 0 ? json_real(p99) : json_null());
        json_object_set_new(a, "feedback", json_integer((json_int_t)s->feedback));
        json_object_set_new(a, "reward_mean",
                            s->feedback ? policy_json_real(s->reward_sum / (double)s->feedback)
                                        : json_null());
        json_array_append_new(arms, a);
    }
    json_object_set_new(o, "arms", arms);
    json_object_set_new(o, "policy_state", desc ? desc : json_null());
    return o;
}

/* ---- actions ---- */

/* The experiments as JSON: one (`name`), or {"experiments": [...]} when
 * name is NULL. */
static void render_views(mm_server_t *srv, conn_t *c, const char *name)
{
    if (name) {
        exp_rt_t *e = find_experiment(srv, (mm_str_t){name, strlen(name)});
        if (e == NULL) /* a reload removed it meanwhile */
            reply_errorf(c, 404, "not_found", "no experiment named \"%s\"", name);
        else
            reply_json(c, 200, experiment_view(e));
        return;
    }
    json_t *list = json_array();
    for (size_t i = 0; i < srv->router->n_exps; i++)
        json_array_append_new(list, experiment_view(&srv->router->exps[i]));
    json_t *o = json_object();
    json_object_set_new(o, "experiments", list);
    reply_json(c, 200, o);
}

/* An answer showing experiment state, held in a --workers group until the
 * workers agree: this one writes what it counted and changed (a store
 * round), every sibling then runs a round (writes its counts, adopts the
 * change), and this one reads the result (another round). So a change is in
 * force on every worker when its answer arrives, and a view counts every
 * worker's requests, as with one process (DESIGN.md §5). A reset first has
 * every worker write what it counted before it, so that nothing counted
 * before the reset lands after it. A few ms per admin call; nothing on the
 * data path waits. */
typedef struct {
    mm_server_t *srv;
    conn_t *conn;
    uint64_t req_serial;
    int step; /* STEP_* next */
    int one;  /* name is set; else every experiment */
    char name[MM_NAME_MAX + 1];
} view_wait_t;

enum { STEP_PRE_SYNC, STEP_RESET, STEP_SYNC, STEP_READ, STEP_ANSWER };

static void do_reset(mm_server_t *srv, exp_rt_t *e)
{
    store_reset(srv->store, e->state);
    router_on_reset(e); /* here now, so the answer shows it; elsewhere at their next tick */
}

static void on_view_step(void *arg)
{
    view_wait_t *w = arg;
    switch (w->step++) {
    case STEP_PRE_SYNC:
        scrape_group_sync(w->srv, on_view_step, w);
        return;
    case STEP_RESET: {
        exp_rt_t *e = find_experiment(w->srv, (mm_str_t){w->name, strlen(w->name)});
        if (e) do_reset(w->srv, e); /* else a reload removed it: render says 404 */
        store_flush(w->srv->store, on_view_step, w);
        return;
    }
    case STEP_SYNC:
        scrape_group_sync(w->srv, on_view_step, w);
        return;
    case STEP_READ:
        store_flush(w->srv->store, on_view_step, w);
        return;
    default:
        break;
    }
    if (conn_awaits(w->conn, w->req_serial)) render_views(w->srv, w->conn, w->one ? w->name : NULL);
    conn_release(w->conn);
    free(w);
}

enum { AFTER_NOTHING, AFTER_CHANGE, AFTER_RESET };

/* Answer with the view of e (NULL: every experiment), after `after`: a
 * control change made just now, or a reset done first. Alone, a view is
 * this process's truth at once; a change or reset waits for the store round
 * that writes it (at once with the memory store; with Redis a round starts
 * now, not at the next sync tick): so changes made on several instances
 * reach Redis in the order their answers came, the last answered wins, and
 * the answer's version is Redis's. Redis down: answered at once, the change
 * is written when it returns (docs/store.md). */
static void reply_views_after(mm_server_t *srv, conn_t *c, exp_rt_t *e, int after)
{
    int group = scrape_group_active(srv);
    view_wait_t *w = group || after != AFTER_NOTHING ? calloc(1, sizeof(*w)) : NULL;
    if (w == NULL) { /* a view alone (or no memory): this process is the whole truth */
        if (after == AFTER_RESET) do_reset(srv, e);
        render_views(srv, c, e ? e->cfg->name : NULL);
        return;
    }
    w->srv = srv;
    w->conn = conn_hold(c);
    w->req_serial = c->req.serial;
    if (group) {
        w->step = after == AFTER_RESET ? STEP_PRE_SYNC : STEP_SYNC;
    } else {
        if (after == AFTER_RESET) do_reset(srv, e);
        w->step = STEP_ANSWER;
    }
    if (e) {
        w->one = 1;
        snprintf(w->name, sizeof(w->name), "%s", e->cfg->name);
    }
    store_flush(srv->store, on_view_step, w);
}

static void reply_views(mm_server_t *srv, conn_t *c, exp_rt_t *e)
{
    reply_views_after(srv, c, e, AFTER_NOTHING);
}

/* An operator's change, on stderr (an audit trail, as every canary step
 * and rollback is there) and to a policy that keeps a history of its own. */
static void log_operator(const mm_local_req_t *r, exp_rt_t *e, const char *action,
                         const exp_control_t *to)
{
    const exp_control_t *from = &e->state->control;
    char step[64] = "";
    /* Promote and rollback set every policy's control step (100, 0), but
     * only a canary's means a share of traffic. */
    if (router_is_canary(e) && from->canary_step != to->canary_step)
        snprintf(step, sizeof(step), ", canary step %g -> %g", from->canary_step, to->canary_step);
    char weights[256] = "";
    if (to->has_weights) {
        size_t n = 0;
        for (size_t i = 0; i < e->state->n_arms && n + 1 < sizeof(weights); i++) {
            int k = snprintf(weights + n, sizeof(weights) - n, "%s%s %g", i ? ", " : ", weights ",
                             e->ups[i]->name, to->weights[i]);
            if (k < 0) break;
            n += (size_t)k;
        }
        if (n >= sizeof(weights)) n = sizeof(weights) - 1;
        weights[n] = '\0';
    }
    mm_log("admin %s: experiment %s %s: state %s -> %s%s%s", r->conn->peer, e->cfg->name, action,
           exp_state_name(from->state), exp_state_name(to->state), step, weights);
    if (e->cfg->ops->on_operator)
        e->cfg->ops->on_operator(e->cfg->policy, action, from, to, mm_now_ms());
}

static void set_control(mm_server_t *srv, const mm_local_req_t *r, exp_rt_t *e, const char *action,
                        const exp_control_t *ctl)
{
    log_operator(r, e, action, ctl);
    store_set_control(srv->store, e->state, ctl);
    reply_views_after(srv, r->conn, e, AFTER_CHANGE);
}

static void put_weights(mm_server_t *srv, const mm_local_req_t *r, exp_rt_t *e)
{
    if (!(e->cfg->ops->flags & POLICY_ACCEPTS_WEIGHTS)) {
        reply_errorf(r->conn, 409, "conflict",
                     "policy %s does not take weights (it sets its own shares); use promote or "
                     "rollback",
                     e->cfg->ops->name);
        return;
    }
    json_t *j;
    if (parse_body(r, 0, &j) < 0) return;
    exp_control_t ctl = e->state->control;
    double w[MM_MAX_ARMS] = {0};
    double sum = 0.0;
    const char *key;
    json_t *val;
    json_object_foreach(j, key, val)
    {
        int i = arm_index(e, key);
        if (i < 0) {
            reply_errorf(r->conn, 404, "not_found", "experiment %s has no arm \"%s\"", e->cfg->name,
                         key);
            goto out;
        }
        if (!json_is_number(val)) {
            reply_errorf(r->conn, 400, "bad_request", "the weight of arm %s must be a number", key);
            goto out;
        }
        double x = json_number_value(val);
        if (!(x >= 0.0 && x <= MM_WEIGHT_MAX)) {
            reply_errorf(r->conn, 400, "bad_request", "the weight of arm %s must be in [0, 1e9]",
                         key);
            goto out;
        }
        w[i] = x;
        sum += x;
    }
    if (!(sum > 0.0) || !isfinite(sum)) {
        conn_respond_error(r->conn, 400, "bad_request", "weights must not all be zero");
        goto out;
    }
    memcpy(ctl.weights, w, sizeof(ctl.weights));
    ctl.has_weights = 1;
    ctl.state = EXP_RUNNING;
    set_control(srv, r, e, "weights", &ctl);
out:
    json_decref(j);
}

static void promote(mm_server_t *srv, const mm_local_req_t *r, exp_rt_t *e)
{
    json_t *j;
    if (parse_body(r, 0, &j) < 0) return;
    const char *key;
    json_t *val;
    json_object_foreach(j, key, val)
    {
        if (strcmp(key, "arm") != 0) {
            reply_errorf(r->conn, 400, "bad_request", "unknown key \"%s\" (expected \"arm\")", key);
            goto out;
        }
    }
    const json_t *arm = json_object_get(j, "arm");
    if (!json_is_string(arm)) {
        conn_respond_error(r->conn, 400, "bad_request", "\"arm\" must name an arm");
        goto out;
    }
    int i = arm_index(e, json_string_value(arm));
    if (i < 0) {
        reply_errorf(r->conn, 404, "not_found", "experiment %s has no arm \"%s\"", e->cfg->name,
                     json_string_value(arm));
        goto out;
    }
    exp_control_t ctl = e->state->control;
    memset(ctl.weights, 0, sizeof(ctl.weights));
    ctl.weights[i] = 100.0;
    ctl.has_weights = 1;
    ctl.state = EXP_PROMOTED;
    ctl.canary_step = i == 0 ? 0.0 : 100.0;
    set_control(srv, r, e, "promote", &ctl);
out:
    json_decref(j);
}

static void rollback(mm_server_t *srv, const mm_local_req_t *r, exp_rt_t *e)
{
    if (expect_no_params(r) < 0) return;
    exp_control_t ctl = e->state->control;
    memset(ctl.weights, 0, sizeof(ctl.weights));
    ctl.weights[0] = 100.0;
    ctl.has_weights = 1;
    ctl.state = EXP_ROLLED_BACK;
    ctl.canary_step = 0.0;
    set_control(srv, r, e, "rollback", &ctl);
}

static void pause_resume(mm_server_t *srv, const mm_local_req_t *r, exp_rt_t *e, int pause)
{
    if (expect_no_params(r) < 0) return;
    exp_control_t ctl = e->state->control;
    exp_run_state_t want = pause ? EXP_PAUSED : EXP_RUNNING;
    int finished = ctl.state == EXP_PROMOTED || ctl.state == EXP_ROLLED_BACK;
    if (pause && finished) {
        reply_errorf(r->conn, 409, "conflict",
                     "experiment %s is %s: nothing is learning; resume or reset it first",
                     e->cfg->name, exp_state_name(ctl.state));
        return;
    }
    if (ctl.state == want) { /* already there: no new version */
        reply_views(srv, r->conn, e);
        return;
    }
    ctl.state = want; /* pausing: the store snapshots merged into frozen */
    if (!pause && !(e->cfg->ops->flags & POLICY_ACCEPTS_WEIGHTS)) {
        /* Weights on a policy that sets its own shares came from promote or
         * rollback; running again, the policy routes, so the view must not
         * go on showing them. */
        ctl.has_weights = 0;
        memset(ctl.weights, 0, sizeof(ctl.weights));
    }
    /* Running again after a promotion or rollback starts a canary over at its
     * first step (step 0 is "not started"), as after a rollback: left at
     * promote's 100 it ran outside its steps, holding "at the last step". */
    if (finished) ctl.canary_step = 0.0; /* here only when resuming */
    log_operator(r, e, pause ? "pause" : "resume", &ctl);
    store_set_control(srv->store, e->state, &ctl);
    /* ... and it starts now: the answer, and the next request, see its
     * first step, not step 0 until the next tick. A canary resumed from a
     * pause starts its fresh interval now too: at the next tick, the answers
     * served in between were in no interval, never judged. */
    if (!pause) server_tick_experiment(srv, e, mm_now_ms());
    reply_views_after(srv, r->conn, e, AFTER_CHANGE);
}

static void reset(mm_server_t *srv, const mm_local_req_t *r, exp_rt_t *e)
{
    if (expect_no_params(r) < 0) return;
    mm_log("admin %s: experiment %s reset: statistics forgotten, control as the config says",
           r->conn->peer, e->cfg->name);
    reply_views_after(srv, r->conn, e, AFTER_RESET);
}

static void reload_answered(void *arg, int ok, const char *err)
{
    conn_t *c = arg;
    if (ok) {
        json_t *o = json_object();
        json_object_set_new(o, "status", json_string("reloaded"));
        reply_json(c, 200, o);
    } else {
        conn_respond_error(c, 400, "bad_request", err);
    }
    conn_release(c);
}

static void reload(mm_server_t *srv, const mm_local_req_t *r)
{
    if (expect_no_params(r) < 0) return;
    /* In a --workers group the parent passes the reload on to the other
     * workers, which reload while this one does. The answer waits for new
     * upstream names to be looked up (off the loop). */
    if (srv->group_parent > 1) kill(srv->group_parent, SIGHUP);
    server_reload(srv, reload_answered, conn_hold(r->conn));
}

/* A sibling's view or change waits for this worker's store round
 * (reply_views): answer once it is done. */
typedef struct {
    conn_t *conn;
    uint64_t req_serial;
} sync_wait_t;

static void on_synced_for_sibling(void *arg)
{
    sync_wait_t *w = arg;
    if (conn_awaits(w->conn, w->req_serial)) {
        json_t *o = json_object();
        json_object_set_new(o, "status", json_string("synced"));
        reply_json(w->conn, 200, o);
    }
    conn_release(w->conn);
    free(w);
}

static void sync_for_sibling(mm_server_t *srv, conn_t *c)
{
    sync_wait_t *w = malloc(sizeof(*w));
    if (w == NULL) {
        conn_respond_error(c, 500, "internal", "out of memory");
        return;
    }
    w->conn = conn_hold(c);
    w->req_serial = c->req.serial;
    store_flush(srv->store, on_synced_for_sibling, w);
}

/* ---- routing ---- */

static void experiment_routes(mm_server_t *srv, const mm_local_req_t *r, const exp_path_t *ep)
{
    mm_str_t name = {ep->name, ep->name_n};
    mm_str_t action = {ep->action, ep->action_n};
    exp_rt_t *e = find_experiment(srv, name);
    if (e == NULL) {
        reply_errorf(r->conn, 404, "not_found", "no experiment named \"%.*s\"",
                     (int)(name.n > 64 ? 64 : name.n), name.p);
        return;
    }
    int post = str_eq(r->method, "POST");
    if (ep->n > 2) {
        conn_respond_error(r->conn, 404, "not_found", "no such admin endpoint");
    } else if (ep->n == 1) {
        if (!is_get(r)) {
            conn_respond_error_hdr(r->conn, 405, "method_not_allowed", "use GET", GET_ONLY);
            return;
        }
        reply_views(srv, r->conn, e);
    } else if (str_eq(action, "weights")) {
        if (!str_eq(r->method, "PUT")) {
            conn_respond_error_hdr(r->conn, 405, "method_not_allowed", "use PUT", PUT_ONLY);
            return;
        }
        put_weights(srv, r, e);
    } else if (str_eq(action, "promote") || str_eq(action, "rollback") || str_eq(action, "pause") ||
               str_eq(action, "resume") || str_eq(action, "reset")) {
        if (!post) {
            conn_respond_error_hdr(r->conn, 405, "method_not_allowed", "use POST", POST_ONLY);
            return;
        }
        if (str_eq(action, "promote"))
            promote(srv, r, e);
        else if (str_eq(action, "rollback"))
            rollback(srv, r, e);
        else if (str_eq(action, "pause"))
            pause_resume(srv, r, e, 1);
        else if (str_eq(action, "resume"))
            pause_resume(srv, r, e, 0);
        else
            reset(srv, r, e);
    } else {
        conn_respond_error(r->conn, 404, "not_found", "no such admin endpoint");
    }
}

void admin_handle(mm_server_t *srv, const mm_local_req_t *r)
{
    mm_str_t path = r->path;
    conn_t *c = r->conn;
    exp_path_t ep;
    int under_experiments = experiments_path(r, &ep);
    if (r->worker_only &&
        (under_experiments || (!str_eq(path, "/metrics") && !str_eq(path, SCRAPE_SYNC_PATH)))) {
        /* a sibling's scrape or sync, nothing else */
        conn_respond_error(c, 404, "not_found",
                           "this worker's private listener serves /metrics and " SCRAPE_SYNC_PATH);
        return;
    }
    if (is_probe(r, under_experiments)) {
        if (!is_get(r)) {
            conn_respond_error_hdr(r->conn, 405, "method_not_allowed", "use GET", GET_ONLY);
            return;
        }
        json_t *o = json_object();
        json_object_set_new(o, "status", json_string("ok"));
        /* both carry the store's state: §5 gives the one body for the /healthz and /readyz
         * row; liveness stays 200 either way */
        json_object_set_new(o, "store", json_string(store_up(srv->store) ? "up" : "down"));
        reply_json(c, 200, o);
        return;
    }
    const char *code, *msg, *extra;
    int refused = admin_refusal(srv, r, &code, &msg, &extra);
    if (refused) {
        conn_respond_error_hdr(r->conn, refused, code, msg, extra);
        return;
    }
    router_sync_resets(srv->router); /* what the answer shows is after every reset */
    if (r->worker_only && str_eq(path, SCRAPE_SYNC_PATH)) {
        if (!str_eq(r->method, "POST")) {
            conn_respond_error_hdr(r->conn, 405, "method_not_allowed", "use POST", POST_ONLY);
            return;
        }
        sync_for_sibling(srv, c);
        return;
    }
    if (under_experiments && ep.n > 0) {
        experiment_routes(srv, r, &ep);
    } else if (under_experiments) {
        if (!is_get(r)) {
            conn_respond_error_hdr(r->conn, 405, "method_not_allowed", "use GET", GET_ONLY);
            return;
        }
        reply_views(srv, c, NULL);
    } else if (str_eq(path, "/metrics")) {
        if (!is_get(r)) {
            conn_respond_error_hdr(r->conn, 405, "method_not_allowed", "use GET", GET_ONLY);
            return;
        }
        /* In a --workers group the scrape reached one worker: it answers
         * for all of them, unless a sibling is asking for its part. */
        if (!r->worker_only && scrape_group_active(srv)) {
            scrape_gather(srv, c);
            return;
        }
        mm_buf_t b;
        mm_buf_init(&b);
        scrape_render_own(srv, &b);
        if (b.oom)
            conn_respond_error(c, 500, "internal", "out of memory");
        else
            conn_respond(c, 200, MM_METRICS_CONTENT_TYPE, b.p ? b.p : "", b.len, NULL);
        mm_buf_free(&b);
    } else if (str_eq(path, "/reload")) {
        if (!str_eq(r->method, "POST")) {
            conn_respond_error_hdr(r->conn, 405, "method_not_allowed", "use POST", POST_ONLY);
            return;
        }
        reload(srv, r);
    } else {
        conn_respond_error(c, 404, "not_found", "no such admin endpoint");
    }
}
