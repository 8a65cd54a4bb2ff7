/* feedback.c — reward feedback (DESIGN.md §4), from two doors:
 *   POST /_modelmux/feedback on the data listener, and
 *   the Redis stream PREFIX:feedback (through the store's consumer group).
 * Both end in fb_apply(): resolve the request id to (experiment, arm), let
 * the policy validate the reward, and count it in the store.
 *
 * A body that is not JSON, or not one event or {"events": [...]}, is a 400
 * and nothing is applied; so is a single event ({"request_id", "reward"})
 * without a target or with a reward that is not a finite number: the client
 * gets the reason. In a batch, such an event is counted `invalid` and the
 * others are applied, so one bad event does not cost the good ones. The 202
 * answer counts `unknown` (request id not found or expired, experiment or
 * arm not configured) and `invalid` (malformed in a batch, or a value the
 * policy rejects, e.g. a Bernoulli reward outside [0, 1]). Request ids
 * resolve from the local map at once or, with Redis, asynchronously; the
 * answer is sent when every event of the batch has been resolved.
 *
 * Clicks ({"request_id", "item"}, no reward) are for policies with on_click
 * (interleave): the policy credits the click in the attribution combine()
 * left with the request id, through store_update_aux (with Redis a
 * compare-and-set, so clicks on one impression at two instances both count,
 * each seeing the other), and once the rewritten attribution is in place the
 * store adds the policy's deltas to each arm. No attribution: unknown; an
 * item that was not shown, or a click for any other policy: invalid. Events are applied one after
 * the other, in batch order, each waiting for its attribution if need be, so two clicks on one
 * impression in one batch both count. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "feedback.h"
#include "jsonpos.h"
#include "log.h"
#include "proxy_internal.h"

typedef struct {
    char request_id[MM_REQID_MAX + 1];
    char experiment[MM_NAME_MAX + 1];
    char arm[MM_NAME_MAX + 1];
    double reward;
    int has_reward;
    int has_item;
    char *item;          /* the clicked item's id as text (an integer id in decimal) */
    int state;           /* 0 pending lookup, 1 resolved, -1 unknown */
    int malformed;       /* in a batch: counted invalid, never applied */
    const char *refused; /* why it was counted invalid once resolved (a stream entry's log) */
} fb_event_t;

/* Longest item id a click may name, in bytes. */
#define FB_ITEM_MAX 1024

/* Most events in one batch, and most JSON values in one body. A body is
 * parsed into a tree before its events are counted, and each event takes
 * an fb_event_t of some 300 bytes: unbounded, a 4 MiB body of 1.4 million
 * empty events ("{},{},...") held 700 MB for one unauthenticated request.
 * An event has at most 9 brackets and separators (4 keys), so a body with
 * more than FB_VALUES_MAX cannot be a batch of FB_BATCH_MAX events that are
 * all well-formed; it is refused before jansson builds anything. */
#define FB_BATCH_MAX  10000
#define FB_VALUES_MAX (FB_BATCH_MAX * 10 + 16)
/* What the body must be, for the 400s of an empty or non-object body. */
#define FB_BODY_WANTED "a JSON object (one event, or {\"events\": [...]})"
#define FB_BATCH_TOO_LONG                                                                          \
    "a feedback batch holds at most 10000 events (and at most 100016 JSON values in all)"

typedef struct {
    mm_server_t *srv;
    conn_t *conn;     /* HTTP: held until we answer */
    store_msg_t *msg; /* stream: answered with store_msg_done */
    size_t n;
    int pending;
    size_t next;  /* applying: the next event */
    int stepping; /* inside batch_step */
    int waiting;  /* a click's attribution is being read */
    int accepted, unknown, invalid;
    int elsewhere;                  /* of `unknown`: the experiment or arm is not configured here */
    arm_stats_t click[MM_MAX_ARMS]; /* the deltas of the click being applied */
    fb_event_t ev[];
} fb_batch_t;

/* FB_ELSEWHERE: an experiment or arm this instance's config does not have;
 * over HTTP it is `unknown`, a stream entry stays pending for an instance
 * that has it (below, batch_answer). */
enum { FB_ACCEPTED = 0, FB_UNKNOWN, FB_INVALID, FB_ELSEWHERE };

static void batch_free(fb_batch_t *b)
{
    for (size_t i = 0; i < b->n; i++) free(b->ev[i].item);
    free(b);
}

static exp_rt_t *find_exp(mm_server_t *srv, const char *name)
{
    router_t *r = srv->router;
    int i = config_experiment_index(r->cfg, name); /* O(1): r->exps follows the config */
    return i >= 0 ? &r->exps[i] : NULL;
}

static int delta_nonzero(const arm_stats_t *d)
{
    return d->pulls || d->feedback || d->errors || d->reward_sum != 0 || d->reward_sq_sum != 0 ||
           d->successes != 0 || d->failures != 0;
}

static int is_click(const fb_event_t *e)
{
    return e->has_item && !e->has_reward;
}

/* Count e invalid, saying why. */
static int refuse(fb_event_t *e, const char *why)
{
    e->refused = why;
    return FB_INVALID;
}

/* The experiment a click is for, or NULL with the outcome in *why. */
static exp_rt_t *click_target(mm_server_t *srv, fb_event_t *e, int *why)
{
    exp_rt_t *x = e->state < 0 ? NULL : find_exp(srv, e->experiment);
    *why = e->state < 0 ? FB_UNKNOWN : FB_ELSEWHERE;
    if (x == NULL) return NULL;
    /* clicks name a request, and need a policy that takes them */
    if (x->cfg->ops->on_click == NULL) {
        *why = refuse(e, "an item (a click) is for an interleave experiment");
        return NULL;
    }
    if (e->request_id[0] == '\0') {
        *why = refuse(e, "a click names the request its list was shown for (request_id)");
        return NULL;
    }
    return x;
}

/* A click's rewrite of its impression's attribution (store_update_aux):
 * the policy credits the click on the version the store has, and the deltas
 * wait in the batch until the store says the new version is in place. It may
 * run again on a newer version another instance wrote meanwhile. */
enum { CLICK_SAME = FB_ELSEWHERE + 1 }; /* already clicked: nothing changes */

void feedback_aux_begin(mm_buf_t *b, const exp_state_t *e)
{
    char mark[STORE_MARK_MAX];
    mm_buf_append(b, mark, store_reset_mark(e, mark));
    mm_buf_lit(b, " ");
}

static int click_rewrite(void *arg, const char *data, size_t n, mm_buf_t *out)
{
    fb_batch_t *b = arg;
    fb_event_t *e = &b->ev[b->next - 1];
    int why;
    exp_rt_t *x = click_target(b->srv, e, &why); /* again: a reload may have happened */
    if (x == NULL) return why;
    feedback_aux_begin(out, x->state);
    if (out->oom) return FB_UNKNOWN;
    size_t mark = out->len; /* the current mark and its space */
    if (n < mark || memcmp(data, out->p, mark) != 0) return FB_UNKNOWN; /* before a reset */
    mm_buf_t policy_aux; /* the policy's bytes, rewritten by on_click */
    mm_buf_init(&policy_aux);
    mm_buf_append(&policy_aux, data + mark, n - mark);
    memset(b->click, 0, sizeof(b->click));
    int oom = policy_aux.oom, rc = -1;
    if (!oom) rc = x->cfg->ops->on_click(x->cfg->policy, &policy_aux, e->item, b->click);
    if (rc == 0) mm_buf_append(out, policy_aux.p, policy_aux.len);
    oom = oom || policy_aux.oom || out->oom;
    mm_buf_free(&policy_aux);
    if (oom) return FB_UNKNOWN;
    if (rc != 0) return refuse(e, "the item is not in the list this request was shown");
    for (size_t a = 0; a < x->state->n_arms; a++)
        if (delta_nonzero(&b->click[a])) return STORE_AUX_WRITE;
    return CLICK_SAME;
}

/* The click's outcome; a written one adds its deltas to each arm. */
static int click_outcome(mm_server_t *srv, fb_event_t *e, int code, const arm_stats_t *d)
{
    if (code == CLICK_SAME) return FB_ACCEPTED;
    if (code != STORE_AUX_WRITE) return code == STORE_AUX_NOT_FOUND ? FB_UNKNOWN : code;
    int why;
    exp_rt_t *x = click_target(srv, e, &why);
    if (x == NULL) return why;
    for (size_t a = 0; a < x->state->n_arms; a++) {
        if (!delta_nonzero(&d[a])) continue;
        store_add(srv->store, x->state, (int)a, &d[a]);
        if (d[a].reward_sum > 0) { /* the arm credited with the click */
            metrics_arm_t *m = router_marm(x, (int)a);
            m->feedback++;
            m->reward_sum += d[a].reward_sum;
        }
    }
    return FB_ACCEPTED;
}

static int fb_apply(mm_server_t *srv, fb_event_t *e)
{
    if (e->state < 0) return FB_UNKNOWN;
    exp_rt_t *x = find_exp(srv, e->experiment);
    if (x == NULL) return FB_ELSEWHERE;
    /* A policy that takes clicks takes nothing else; its merged answers
     * resolve to the arm "interleave", which is no arm. */
    if (x->cfg->ops->on_click != NULL)
        return refuse(e, "an interleave experiment takes clicks: an item without a reward");
    int arm = -1;
    for (size_t a = 0; a < x->state->n_arms; a++)
        if (strcmp(x->state->arm_names[a], e->arm) == 0) arm = (int)a;
    if (arm < 0) return FB_ELSEWHERE;
    if (e->has_item) return refuse(e, "an item (a click) is for an interleave experiment");
    const policy_ops_t *ops = x->cfg->ops;
    int kind = policy_check_reward(ops, x->cfg->policy, e->reward);
    if (kind < 0)
        return refuse(e,
                      "the reward is not one its policy takes (a Bernoulli reward is in [0, 1])");
    if (store_reward(srv->store, x->state, arm, e->reward, kind == 1) != 0)
        return refuse(e, "the reward is beyond what the store sums (|reward| <= 1e100)");
    metrics_arm_t *m = router_marm(x, arm);
    m->feedback++;
    m->reward_sum += e->reward;
    return FB_ACCEPTED;
}

static void batch_count(fb_batch_t *b, int outcome)
{
    if (outcome == FB_ELSEWHERE) b->elsewhere++;
    if (outcome == FB_ACCEPTED)
        b->accepted++;
    else if (outcome == FB_UNKNOWN || outcome == FB_ELSEWHERE)
        b->unknown++;
    else
        b->invalid++;
}

/* At most one line per ELSEWHERE_LOG_MS: a rolling deploy can hand old
 * instances a stream of such entries, one line each would flood the log. */
#define ELSEWHERE_LOG_MS 10000

static void log_elsewhere(mm_server_t *srv, store_msg_t *m)
{
    uint64_t now = mm_now_ms();
    if (srv->elsewhere_log_ms != 0 && now - srv->elsewhere_log_ms < ELSEWHERE_LOG_MS) {
        srv->elsewhere_quiet++;
        return;
    }
    mm_log("feedback stream entry %s names an experiment or arm not configured here: left "
           "pending for an instance that has it (%llu more since the last such line)",
           store_msg_id(m), (unsigned long long)srv->elsewhere_quiet);
    srv->elsewhere_log_ms = now;
    srv->elsewhere_quiet = 0;
}

static void batch_answer(fb_batch_t *b)
{
    if (b->conn) {
        char body[160];
        int n = snprintf(body, sizeof(body), "{\"accepted\":%d,\"unknown\":%d,\"invalid\":%d}",
                         b->accepted, b->unknown, b->invalid);
        conn_respond(b->conn, 202, "application/json", body, (size_t)n, NULL);
        conn_release(b->conn);
    } else if (b->msg) {
        /* Acknowledged only once applied (DESIGN.md §4), or when it never
         * can be. A request id not yet synced by the instance that served
         * it may appear shortly: pending for a later delivery, given up
         * (acked, counted unknown) on the third. An experiment or arm not
         * configured here may be configured on another instance (a rolling
         * deploy that adds it): pending, so that the store's claim of idle
         * entries delivers it again, to whichever instance claims it, until
         * one applies it or the store acks it dead after max_deliveries. */
        int ack = !b->elsewhere && !(b->unknown && store_msg_deliveries(b->msg) < 3);
        if (b->invalid) {
            b->srv->stream_invalid++;
            mm_log("feedback stream entry %s for experiment %s dropped: %s", store_msg_id(b->msg),
                   b->ev[0].experiment, b->ev[0].refused ? b->ev[0].refused : "invalid");
        }
        if (ack && b->unknown) b->srv->stream_unknown++;
        if (b->elsewhere && store_msg_deliveries(b->msg) == 1) log_elsewhere(b->srv, b->msg);
        store_msg_done(b->srv->store, b->msg, ack);
    }
    batch_free(b);
}

static void batch_step(fb_batch_t *b);

static void on_click_done(void *arg, int code)
{
    fb_batch_t *b = arg;
    batch_count(b, click_outcome(b->srv, &b->ev[b->next - 1], code, b->click));
    b->waiting = 0;
    if (!b->stepping) batch_step(b); /* answered later: go on from here */
}

/* Apply the events in order; a click may wait for its attribution, and the
 * walk resumes from on_click_done. */
static void batch_step(fb_batch_t *b)
{
    b->stepping = 1;
    while (b->next < b->n) {
        fb_event_t *e = &b->ev[b->next++];
        int why;
        if (e->malformed) {
            batch_count(b, FB_INVALID);
        } else if (!is_click(e)) {
            batch_count(b, fb_apply(b->srv, e));
        } else if (click_target(b->srv, e, &why) == NULL) {
            batch_count(b, why);
        } else {
            b->waiting = 1;
            store_update_aux(b->srv->store, (mm_str_t){e->request_id, strlen(e->request_id)},
                             click_target(b->srv, e, &why)->cfg->feedback_ttl_s, click_rewrite,
                             on_click_done, b);
            if (b->waiting) {
                b->stepping = 0;
                return;
            }
        }
    }
    b->stepping = 0;
    batch_answer(b);
}

static void batch_finish(fb_batch_t *b)
{
    b->next = 0;
    batch_step(b);
}

static void resolve(fb_event_t *e, int found, const store_reqinfo_t *info)
{
    if (found) {
        snprintf(e->experiment, sizeof(e->experiment), "%s", info->experiment);
        snprintf(e->arm, sizeof(e->arm), "%s", info->arm);
        e->state = 1;
    } else {
        e->state = -1;
    }
}

typedef struct {
    fb_batch_t *b;
    fb_event_t *e;
    int retried;
    uv_timer_t timer; /* the delayed second lookup */
} fb_lookup_t;

static void lookup_issue(fb_lookup_t *l);

static void on_retry_closed(uv_handle_t *h)
{
    lookup_issue(h->data);
}

static void on_retry_due(uv_timer_t *t)
{
    uv_close((uv_handle_t *)t, on_retry_closed); /* the lookup runs once it has closed */
}

static void on_lookup_done(void *arg, int found, const store_reqinfo_t *info)
{
    fb_lookup_t *l = arg;
    fb_batch_t *b = l->b;
    mm_server_t *srv = b->srv;
    if (!found && !l->retried && (b->conn || !srv->draining) &&
        strcmp(store_kind(srv->store), "redis") == 0) {
        /* The instance that served the request writes its id to Redis in
         * its next sync round: feedback that overtook it is looked up once
         * more, two sync intervals (at most a second) later. A stream entry
         * too (it stays pending meanwhile, at most max_inflight of them):
         * left to the claim of idle entries, a reward written right after
         * its request reached the policy 30-45 s late. Not once stopping: a
         * stream entry is not waited for (an HTTP one holds its connection,
         * which the drain waits for). */
        l->retried = 1;
        int sync = server_config(srv)->store.sync_ms;
        uint64_t wait = sync >= 500 ? 1000 : (uint64_t)sync * 2;
        uv_timer_init(srv->loop, &l->timer);
        l->timer.data = l;
        uv_timer_start(&l->timer, on_retry_due, wait, 0);
        return;
    }
    resolve(l->e, found, info);
    free(l);
    if (--b->pending == 0) batch_finish(b);
}

static void lookup_issue(fb_lookup_t *l)
{
    store_lookup(l->b->srv->store, (mm_str_t){l->e->request_id, strlen(l->e->request_id)},
                 on_lookup_done, l);
}

/* Resolve every event's target, then apply (possibly later, with Redis). */
static void batch_run(fb_batch_t *b)
{
    b->pending = 1; /* held while lookups are issued: some answer at once */
    for (size_t i = 0; i < b->n; i++) {
        fb_event_t *e = &b->ev[i];
        if (e->request_id[0] == '\0' || e->malformed) {
            e->state = 1;
            continue;
        }
        fb_lookup_t *l = malloc(sizeof(*l));
        if (l == NULL) {
            e->state = -1;
            continue;
        }
        l->b = b;
        l->e = e;
        l->retried = 0;
        b->pending++;
        lookup_issue(l);
    }
    if (--b->pending == 0) batch_finish(b);
}

/* ---- parsing ---- */

/* An integer read as a real (see feedback_parse) that is still exactly
 * the integer written: within 2^53, a double holds every integer. */
static int integral_id(double d)
{
    return d == floor(d) && fabs(d) <= 9007199254740992.0;
}

/* ints_as_reals: the body was read with every integer as a real (it held
 * one beyond 64 bits): an integral item id within 2^53 is still an id. */
static int parse_event(json_t *o, fb_event_t *e, char *err, size_t errlen, const char *where,
                       int ints_as_reals)
{
    if (!json_is_object(o)) {
        snprintf(err, errlen, "%s must be a JSON object", where);
        return -1;
    }
    memset(e, 0, sizeof(*e));
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v)
    {
        /* Strings are measured by their JSON length: the body is read with
         * \u0000 allowed, so that one such value costs only its event. */
        if (strcmp(key, "request_id") == 0) {
            const char *s = json_string_value(v);
            if (s == NULL || !http_valid_request_id((mm_str_t){s, json_string_length(v)})) {
                snprintf(err, errlen, "%s.request_id must be 1-128 characters of [A-Za-z0-9._-]",
                         where);
                return -1;
            }
            snprintf(e->request_id, sizeof(e->request_id), "%s", s);
        } else if (strcmp(key, "experiment") == 0 || strcmp(key, "arm") == 0) {
            const char *s = json_string_value(v);
            if (s == NULL || !mm_valid_name(s, json_string_length(v))) {
                snprintf(err, errlen, "%s.%s must be a name of 1-64 characters of [A-Za-z0-9_.-]",
                         where, key);
                return -1;
            }
            if (key[0] == 'e')
                snprintf(e->experiment, sizeof(e->experiment), "%s", s);
            else
                snprintf(e->arm, sizeof(e->arm), "%s", s);
        } else if (strcmp(key, "reward") == 0) {
            if (!json_is_number(v) || !isfinite(json_number_value(v))) {
                snprintf(err, errlen, "%s.reward must be a finite number", where);
                return -1;
            }
            e->reward = json_number_value(v);
            e->has_reward = 1;
        } else if (strcmp(key, "item") == 0) {
            char num[24];
            const char *id = num;
            size_t len;
            if (json_is_integer(v)) {
                len = (size_t)snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT,
                                       json_integer_value(v));
            } else if (json_is_real(v) && ints_as_reals && integral_id(json_real_value(v))) {
                len = (size_t)snprintf(num, sizeof(num), "%.0f", json_real_value(v));
            } else if (json_is_string(v)) {
                id = json_string_value(v);
                len = json_string_length(v);
            } else {
                id = NULL;
                len = 0;
            }
            if (id == NULL || len == 0 || len > FB_ITEM_MAX || memchr(id, '\0', len) != NULL) {
                snprintf(err, errlen,
                         "%s.item must be an integer or a string of 1-%d bytes (the item's id)",
                         where, FB_ITEM_MAX);
                return -1;
            }
            free(e->item);
            e->item = malloc(len + 1);
            if (e->item == NULL) {
                snprintf(err, errlen, "%s: out of memory", where);
                return -1;
            }
            memcpy(e->item, id, len);
            e->item[len] = '\0';
            e->has_item = 1;
        } else {
            snprintf(err, errlen, "%s: unknown key \"%s\"", where, key);
            return -1;
        }
    }
    int by_id = e->request_id[0] != '\0';
    int by_name = e->experiment[0] != '\0' || e->arm[0] != '\0';
    if (by_id && by_name) {
        snprintf(err, errlen, "%s has both request_id and experiment/arm: give one or the other",
                 where);
        return -1;
    }
    if (by_name && (!e->experiment[0] || !e->arm[0])) {
        snprintf(err, errlen, "%s needs both experiment and arm (or a request_id instead)", where);
        return -1;
    }
    if (!by_id && !by_name) {
        snprintf(err, errlen, "%s needs either request_id, or experiment and arm", where);
        return -1;
    }
    if (!e->has_reward && !e->has_item) {
        snprintf(err, errlen, "%s.reward is missing (a click has an item instead)", where);
        return -1;
    }
    return 0;
}

/* Whether the JSON text p holds more than max values. Every value but the
 * top one follows a '[', ',' or ':' outside a string, so counting those
 * (and '{') bounds the values from above, in one pass without a parse. */
static int json_values_exceed(const char *p, size_t n, size_t max)
{
    size_t values = 1;
    int in_str = 0;
    for (size_t i = 0; i < n; i++) {
        char ch = p[i];
        if (in_str) {
            if (ch == '\\')
                i++;
            else if (ch == '"')
                in_str = 0;
        } else if (ch == '"') {
            in_str = 1;
        } else if (ch == '{' || ch == '[' || ch == ',' || ch == ':') {
            if (++values > max) return 1;
        }
    }
    return 0;
}

/* A feedback body as JSON. A reward is any finite number, and JSON puts
 * no bound on an integer's digits, but jansson refuses one beyond 64 bits
 * ("too big integer"): such a body is read again with every integer as a
 * real (*ints_as_reals). \u0000 is allowed, so that it costs one event of
 * a batch rather than the body (parse_event refuses it in every field). */
static json_t *feedback_parse(const char *p, size_t n, json_error_t *je, int *ints_as_reals)
{
    /* Any JSON value: valid JSON that is no object is told apart from
     * invalid JSON by the caller. */
    size_t flags = JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL | JSON_DECODE_ANY;
    json_t *root = json_loadb(p, n, flags, je);
    *ints_as_reals = root == NULL && strncmp(je->text, "too big", 7) == 0;
    if (*ints_as_reals) root = json_loadb(p, n, flags | JSON_DECODE_INT_AS_REAL, je);
    return root;
}

void feedback_handle(mm_server_t *srv, const mm_local_req_t *r)
{
    char err[256];
    if (!(r->method.n == 4 && memcmp(r->method.p, "POST", 4) == 0)) {
        conn_respond_error_hdr(r->conn, 405, "method_not_allowed", "feedback takes POST",
                               "Allow: POST\r\n");
        return;
    }
    if (json_values_exceed(r->body.p, r->body.n, FB_VALUES_MAX)) {
        conn_respond_error(r->conn, 413, "body_too_large", FB_BATCH_TOO_LONG);
        return;
    }
    json_error_t je;
    int ints_as_reals = 0;
    if (jsonpos_blank(r->body.p, r->body.n)) {
        conn_respond_error(r->conn, 400, "bad_request", FB_BODY_WANTED " is required");
        return;
    }
    json_t *root = feedback_parse(r->body.p, r->body.n, &je, &ints_as_reals);
    if (root == NULL) {
        jsonpos_syntax_error(r->body.p, r->body.n, &je, err, sizeof(err));
        conn_respond_error(r->conn, 400, "bad_request", err);
        return;
    }
    if (!json_is_object(root)) {
        char got[64];
        snprintf(err, sizeof(err), "the body must be " FB_BODY_WANTED ", got %s",
                 config_show_value(root, got, sizeof(got)));
        conn_respond_error(r->conn, 400, "bad_request", err);
        json_decref(root);
        return;
    }
    json_t *events = json_object_get(root, "events");
    size_t n = 1;
    if (events) {
        if (!json_is_array(events) || json_object_size(root) != 1) {
            conn_respond_error(r->conn, 400, "bad_request",
                               "a batch is {\"events\": [...]} and nothing else");
            json_decref(root);
            return;
        }
        n = json_array_size(events);
        if (n > FB_BATCH_MAX) {
            conn_respond_error(r->conn, 413, "body_too_large", FB_BATCH_TOO_LONG);
            json_decref(root);
            return;
        }
    }
    fb_batch_t *b = calloc(1, sizeof(*b) + n * sizeof(fb_event_t));
    if (b == NULL) {
        conn_respond_error(r->conn, 503, "overloaded", "out of memory");
        json_decref(root);
        return;
    }
    b->srv = srv;
    b->n = n;
    for (size_t i = 0; i < n; i++) {
        char where[32];
        json_t *o = root;
        if (events) {
            snprintf(where, sizeof(where), "events[%zu]", i);
            o = json_array_get(events, i);
        } else {
            snprintf(where, sizeof(where), "event");
        }
        if (parse_event(o, &b->ev[i], err, sizeof(err), where, ints_as_reals) != 0) {
            if (events) { /* one bad event in a batch: counted, the rest go on */
                b->ev[i].malformed = 1;
                continue;
            }
            conn_respond_error(r->conn, 400, "bad_request", err);
            json_decref(root);
            batch_free(b);
            return;
        }
    }
    json_decref(root);
    b->conn = conn_hold(r->conn);
    batch_run(b);
}

/* ---- the Redis stream ---- */

/* A stream entry's reward is text: held to a JSON number's syntax
 * (RFC 8259 §6), as a reward over HTTP is, so that "0x10", " 1" or "1e"
 * are refused alike rather than whatever strtod makes of them. */
static int json_number_text(const char *p)
{
    if (*p == '-') p++;
    if (*p == '0')
        p++;
    else if (*p >= '1' && *p <= '9')
        while (*p >= '0' && *p <= '9') p++;
    else
        return 0;
    if (*p == '.') {
        p++;
        if (!(*p >= '0' && *p <= '9')) return 0;
        while (*p >= '0' && *p <= '9') p++;
    }
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-') p++;
        if (!(*p >= '0' && *p <= '9')) return 0;
        while (*p >= '0' && *p <= '9') p++;
    }
    return *p == '\0';
}

/* A stream entry that can never be applied: logged, counted, acknowledged. */
static void stream_drop(mm_server_t *srv, store_msg_t *m, const char *why)
{
    mm_log("feedback stream entry %s dropped: %s", store_msg_id(m), why);
    srv->stream_invalid++;
    store_msg_done(srv->store, m, 1);
}

static void on_stream(void *arg, store_msg_t *m)
{
    mm_server_t *srv = arg;
    static const char *const read_fields[] = {"request_id", "experiment", "arm", "item", "reward"};
    char err[256] = "";
    if (store_msg_has_nul(m)) snprintf(err, sizeof(err), "a field holds a NUL byte");
    /* A field given twice is ambiguous, as a key repeated in a JSON object
     * is over HTTP (a syntax error there): nothing of it is applied. */
    for (size_t i = 0; !err[0] && i < MM_ARRAY_LEN(read_fields); i++)
        if (store_msg_field_count(m, read_fields[i]) > 1)
            snprintf(err, sizeof(err),
                     "field %s is repeated (which value was meant cannot be known)",
                     read_fields[i]);
    if (err[0]) {
        stream_drop(srv, m, err);
        return;
    }
    fb_batch_t *b = calloc(1, sizeof(*b) + sizeof(fb_event_t));
    if (b == NULL) {
        store_msg_done(srv->store, m, 0);
        return;
    }
    b->srv = srv;
    b->msg = m;
    b->n = 1;
    json_t *o = json_object();
    int ok = 1;
    for (size_t i = 0; ok && i < MM_ARRAY_LEN(read_fields) - 1; i++) { /* reward: below */
        const char *v = store_msg_field(m, read_fields[i]);
        json_t *sv = v ? json_string(v) : NULL;
        /* json_string refuses bytes that are not UTF-8: the field would go
         * missing and the entry be dropped for the wrong reason */
        if (v && sv == NULL) {
            snprintf(err, sizeof(err), "stream entry.%s is not valid UTF-8", read_fields[i]);
            ok = 0;
        }
        if (sv) json_object_set_new(o, read_fields[i], sv);
    }
    const char *rw = store_msg_field(m, "reward");
    if (ok && rw) {
        /* JSON number syntax is strtod's whole input: no end to check */
        double d = json_number_text(rw) ? strtod(rw, NULL) : NAN;
        if (!isfinite(d)) {
            snprintf(err, sizeof(err), "stream entry: reward must be a finite number");
            ok = 0;
        } else {
            json_object_set_new(o, "reward", json_real(d));
        }
    }
    if (!ok || parse_event(o, &b->ev[0], err, sizeof(err), "stream entry", 0) != 0) {
        json_decref(o);
        batch_free(b);
        stream_drop(srv, m, err);
        return;
    }
    json_decref(o);
    batch_run(b);
}

int feedback_start(mm_server_t *srv)
{
    return store_stream_subscribe(srv->store, on_stream, srv, NULL);
}
