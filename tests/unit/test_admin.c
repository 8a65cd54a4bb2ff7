/* test_admin.c — the admin API (DESIGN.md §5, README "Admin API") on a real
 * admin listener (rig.h), memory store, admin.token set.
 *
 * Each action is checked for what it writes to the experiment's control in
 * the store (state, weights, canary_step, a new version — the router reads
 * exactly that for the next request) and for what its 200 answer shows; each
 * refusal for its status, the §4 error shape and an unchanged control
 * (same version). Token checks: /healthz and /readyz never need it,
 * everything else — unknown paths included — is 401 without it. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "rig.h"

#define UPSTREAMS                                                                                  \
    " \"upstreams\": {\"a\": {\"url\": \"http://127.0.0.1:17001\"},\n"                             \
    "               \"b\": {\"url\": \"http://127.0.0.1:17002\"},\n"                               \
    "               \"c\": {\"url\": \"http://127.0.0.1:17003\"}},\n"
#define EXPERIMENTS                                                                                \
    "  {\"name\": \"rank\", \"match\": {\"path_prefix\": \"/v1/rank\"}, \"policy\": \"ab\",\n"     \
    "   \"arms\": {\"a\": 90, \"b\": 10}},\n"                                                      \
    "  {\"name\": \"can\", \"match\": {\"path_prefix\": \"/v1/can\"}, \"policy\": \"canary\",\n"   \
    "   \"champion\": \"a\", \"canary\": \"b\", \"steps\": [5, 25, 100], \"step_interval_s\": "    \
    "60,\n"                                                                                        \
    "   \"analysis\": {\"min_requests\": 10, \"max_error_rate\": 0.05}},\n"                        \
    "  {\"name\": \"ucb\", \"match\": {\"path_prefix\": \"/v1/ucb\"}, \"policy\": \"ucb1\",\n"     \
    "   \"arms\": [\"a\", \"c\"]}"

static const char CONFIG[] =
    "{\"listen\": \"127.0.0.1:18080\",\n"
    " \"admin\": {\"listen\": \"127.0.0.1:19090\", \"token\": \"s3cret\"},\n" UPSTREAMS
    " \"experiments\": [\n" EXPERIMENTS "\n ]}\n";

/* The same with one more experiment: what a reload reads. */
static const char CONFIG_MORE[] =
    "{\"listen\": \"127.0.0.1:18080\",\n"
    " \"admin\": {\"listen\": \"127.0.0.1:19090\", \"token\": \"s3cret\"},\n" UPSTREAMS
    " \"experiments\": [\n" EXPERIMENTS ",\n"
    "  {\"name\": \"more\", \"match\": {\"path_prefix\": \"/v1/more\"}, \"policy\": \"ab\",\n"
    "   \"arms\": {\"a\": 1, \"c\": 1}}\n ]}\n";

static const char CONFIG_NO_TOKEN[] = "{\"listen\": \"127.0.0.1:18080\",\n"
                                      " \"admin\": {\"listen\": \"127.0.0.1:19090\"},\n" UPSTREAMS
                                      " \"experiments\": [\n" EXPERIMENTS "\n ]}\n";

/* Experiments named "." and "..", which DESIGN.md §3 allows. */
static const char CONFIG_DOTS[] =
    "{\"listen\": \"127.0.0.1:18080\",\n"
    " \"admin\": {\"listen\": \"127.0.0.1:19090\", \"token\": \"s3cret\"},\n" UPSTREAMS
    " \"experiments\": [\n"
    "  {\"name\": \"..\", \"match\": {\"path_prefix\": \"/v1/up\"}, \"policy\": \"ab\",\n"
    "   \"arms\": {\"a\": 1, \"b\": 1}},\n"
    "  {\"name\": \".\", \"match\": {\"path_prefix\": \"/v1/here\"}, \"policy\": \"ab\",\n"
    "   \"arms\": {\"a\": 1, \"b\": 1}},\n"
    "  {\"name\": \"rank\", \"match\": {\"path_prefix\": \"/v1/rank\"}, \"policy\": \"ab\",\n"
    "   \"arms\": {\"a\": 1, \"b\": 1}}\n ]}\n";

#define AUTH "Authorization: Bearer s3cret\r\n"

static int setup(void **state)
{
    rig_t *t = calloc(1, sizeof(*t));
    rig_start(t, CONFIG);
    *state = t;
    return 0;
}

static void call(rig_t *t, const char *method, const char *path, const char *body, rig_resp_t *r)
{
    rig_call(t, t->admin_port, method, path, AUTH, body, r);
}

static const exp_control_t *control(rig_t *t, const char *exp)
{
    return &rig_exp(t, exp)->state->control;
}

/* A refusal: status, code, and the experiment's control untouched. */
static void refused(rig_t *t, const char *method, const char *path, const char *body, int status,
                    const char *code, const char *exp)
{
    exp_control_t before = *control(t, exp);
    rig_resp_t r;
    call(t, method, path, body, &r);
    rig_assert_error(&r, status, code);
    rig_resp_free(&r);
    const exp_control_t *after = control(t, exp);
    assert_int_equal(after->version, before.version);
    assert_int_equal(after->state, before.state);
    assert_int_equal(after->has_weights, before.has_weights);
    assert_memory_equal(after->weights, before.weights, sizeof(before.weights));
}

/* An action that is taken: 200 with the experiment's view, returned. */
static json_t *ok_view(rig_t *t, const char *method, const char *path, const char *body)
{
    rig_resp_t r;
    call(t, method, path, body, &r);
    if (r.status != 200) fail_msg("%s %s: %d %s", method, path, r.status, r.body);
    assert_non_null(r.json);
    json_t *j = json_incref(r.json);
    rig_resp_free(&r);
    return j;
}

static double view_weight(const json_t *view, const char *arm)
{
    const json_t *w = json_object_get(json_object_get(view, "weights"), arm);
    assert_true(json_is_number(w));
    return json_number_value(w);
}

static const char *view_state(const json_t *view)
{
    return json_string_value(json_object_get(view, "state"));
}

/* ---- health and the token ---- */

static void test_health_and_readiness_need_no_token(void **state)
{
    rig_t *t = *state;
    rig_resp_t r;
    rig_call(t, t->admin_port, "GET", "/healthz", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_object_size(r.json), 2);
    assert_string_equal(json_string_value(json_object_get(r.json, "status")), "ok");
    assert_string_equal(json_string_value(json_object_get(r.json, "store")), "up");
    size_t get_len = r.body_len;
    rig_resp_free(&r);
    rig_call(t, t->admin_port, "GET", "/readyz", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_object_size(r.json), 2);
    assert_string_equal(json_string_value(json_object_get(r.json, "status")), "ok");
    assert_string_equal(json_string_value(json_object_get(r.json, "store")), "up");
    rig_resp_free(&r);
    /* HEAD: the GET's head, no body */
    rig_call(t, t->admin_port, "HEAD", "/healthz", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, 0);
    char v[32];
    assert_non_null(rig_header(&r, "Content-Length", v, sizeof(v)));
    assert_int_equal(strtoull(v, NULL, 10), get_len);
    rig_resp_free(&r);
    rig_call(t, t->admin_port, "POST", "/healthz", NULL, "{}", &r);
    rig_assert_error(&r, 405, "method_not_allowed");
    assert_string_equal(rig_header(&r, "Allow", v, sizeof(v)), "GET, HEAD");
    rig_resp_free(&r);
}

static void assert_401(rig_t *t, const char *method, const char *path, const char *headers)
{
    rig_resp_t r;
    rig_call(t, t->admin_port, method, path, headers, NULL, &r);
    rig_assert_error(&r, 401, "unauthorized");
    char v[64];
    assert_non_null(rig_header(&r, "WWW-Authenticate", v, sizeof(v)));
    assert_non_null(strstr(v, "Bearer"));
    rig_resp_free(&r);
}

static void test_token_is_required_everywhere_else(void **state)
{
    rig_t *t = *state;
    uint64_t v0 = control(t, "rank")->version;
    assert_401(t, "GET", "/experiments", NULL);
    assert_401(t, "GET", "/metrics", NULL);
    assert_401(t, "GET", "/no/such/path", NULL); /* 401 first: the API's shape stays hidden */
    assert_401(t, "POST", "/experiments/rank/rollback", NULL);
    assert_401(t, "GET", "/experiments", "Authorization: Bearer s3cre\r\n");
    assert_401(t, "GET", "/experiments", "Authorization: Bearer s3crets3cret\r\n");
    assert_401(t, "GET", "/experiments", "Authorization: Bearer S3CRET\r\n");
    assert_401(t, "GET", "/experiments", "Authorization: Basic s3cret\r\n");
    assert_401(t, "GET", "/experiments", "Authorization: Bearer\r\n");
    assert_401(t, "GET", "/experiments", "Authorization: Bearers3cret\r\n");
    assert_int_equal(control(t, "rank")->version, v0); /* the rollback was not taken */
    assert_int_equal(control(t, "rank")->state, EXP_RUNNING);
    /* the scheme is case-insensitive, blanks around the credentials are not part of it */
    rig_resp_t r;
    rig_call(t, t->admin_port, "GET", "/experiments", "Authorization: bearer\ts3cret \r\n", NULL,
             &r);
    assert_int_equal(r.status, 200);
    rig_resp_free(&r);
    call(t, "GET", "/no/such/path", NULL, &r);
    rig_assert_error(&r, 404, "not_found");
    rig_resp_free(&r);
}

static void test_no_token_configured_means_open(void **state)
{
    (void)state;
    rig_t t;
    rig_start(&t, CONFIG_NO_TOKEN);
    rig_resp_t r;
    rig_call(&t, t.admin_port, "GET", "/experiments", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    rig_resp_free(&r);
    rig_stop(&t);
}

/* The token counts only as a bearer credential in Authorization: not in
 * the query string (it would end up in access logs), not empty, not as a
 * long value that merely starts with it, not twice in one header. */
static void test_token_only_in_the_authorization_header(void **state)
{
    rig_t *t = *state;
    assert_401(t, "GET", "/experiments?token=s3cret", NULL);
    assert_401(t, "GET", "/experiments?access_token=s3cret", NULL);
    assert_401(t, "GET", "/metrics?authorization=Bearer%20s3cret", NULL);
    assert_401(t, "GET", "/experiments", "Authorization: Bearer \r\n");
    assert_401(t, "GET", "/experiments", "Authorization: \r\n");
    assert_401(t, "GET", "/experiments", "Authorization: Bearer s3cret s3cret\r\n");
    assert_401(t, "GET", "/experiments", "X-Authorization: Bearer s3cret\r\n");
    /* far longer than the token: compared over its whole length, no overrun */
    char big[8192 + 64];
    int n = snprintf(big, sizeof(big), "Authorization: Bearer s3cret");
    memset(big + n, 't', 8192);
    memcpy(big + n + 8192, "\r\n", 3);
    assert_401(t, "GET", "/experiments", big);
}

/* A change sent by a browser for a web page (cross-site request forgery,
 * or a page on a rebound DNS name) is refused, token or not: without a
 * token any page the operator opens could POST to a loopback admin
 * listener. Browsers mark such requests with Origin and Sec-Fetch-Site;
 * reads stay open to dashboards. */
static void test_changes_from_web_pages_are_403(void **state)
{
    (void)state;
    rig_t t;
    rig_start(&t, CONFIG_NO_TOKEN);
    static const char *const from_page[] = {
        "Origin: http://evil.example\r\nContent-Type: text/plain\r\n",
        "Origin: null\r\n",
        "Origin: http://127.0.0.1:19090\r\n", /* same origin: a DNS rebinding */
        "Sec-Fetch-Site: cross-site\r\n",
        "Sec-Fetch-Site: same-origin\r\n",
    };
    const exp_control_t before = *control(&t, "rank");
    rig_resp_t r;
    for (size_t i = 0; i < MM_ARRAY_LEN(from_page); i++) {
        rig_call(&t, t.admin_port, "POST", "/experiments/rank/promote", from_page[i],
                 "{\"arm\": \"b\"}", &r);
        rig_assert_error(&r, 403, "forbidden");
        rig_resp_free(&r);
        rig_call(&t, t.admin_port, "PUT", "/experiments/rank/weights", from_page[i],
                 "{\"a\": 0, \"b\": 1}", &r);
        rig_assert_error(&r, 403, "forbidden");
        rig_resp_free(&r);
        rig_call(&t, t.admin_port, "POST", "/reload", from_page[i], NULL, &r);
        rig_assert_error(&r, 403, "forbidden");
        rig_resp_free(&r);
    }
    assert_int_equal(control(&t, "rank")->version, before.version);
    assert_int_equal(control(&t, "rank")->state, EXP_RUNNING);
    assert_int_equal(control(&t, "rank")->has_weights, before.has_weights);
    /* reads are answered */
    rig_call(&t, t.admin_port, "GET", "/experiments/rank", from_page[0], NULL, &r);
    assert_int_equal(r.status, 200);
    rig_resp_free(&r);
    /* and a change from curl or a script goes through */
    rig_call(&t, t.admin_port, "POST", "/experiments/rank/promote", NULL, "{\"arm\": \"b\"}", &r);
    assert_int_equal(r.status, 200);
    rig_resp_free(&r);
    assert_int_equal(control(&t, "rank")->state, EXP_PROMOTED);
    rig_stop(&t);
}

/* ---- views ---- */

static void test_views_show_state_and_arm_counts(void **state)
{
    rig_t *t = *state;
    exp_rt_t *e = rig_exp(t, "rank");
    for (int i = 0; i < 3; i++) store_pull(t->srv.store, e->state, 1);
    store_pull(t->srv.store, e->state, 0);
    store_error(t->srv.store, e->state, 1);
    store_reward(t->srv.store, e->state, 1, 1.0, 0);
    store_reward(t->srv.store, e->state, 1, 0.0, 0);
    json_t *v = ok_view(t, "GET", "/experiments/rank", NULL);
    assert_string_equal(json_string_value(json_object_get(v, "name")), "rank");
    assert_string_equal(json_string_value(json_object_get(v, "policy")), "ab");
    assert_string_equal(view_state(v), "running");
    assert_string_equal(json_string_value(json_object_get(v, "champion")), "a");
    const json_t *arms = json_object_get(v, "arms");
    assert_int_equal(json_array_size(arms), 2);
    const json_t *b = json_array_get(arms, 1);
    assert_string_equal(json_string_value(json_object_get(b, "name")), "b");
    assert_int_equal(json_integer_value(json_object_get(b, "requests")), 3);
    assert_int_equal(json_integer_value(json_object_get(b, "errors")), 1);
    assert_int_equal(json_integer_value(json_object_get(b, "feedback")), 2);
    assert_true(json_number_value(json_object_get(b, "reward_mean")) == 0.5);
    assert_true(json_is_null(json_object_get(b, "p50_ms"))); /* no answer measured yet */
    const json_t *a = json_array_get(arms, 0);
    assert_int_equal(json_integer_value(json_object_get(a, "requests")), 1);
    assert_true(json_is_null(json_object_get(a, "reward_mean")));
    assert_true(fabs(json_number_value(json_object_get(a, "share")) - 0.9) < 1e-9);
    assert_true(json_is_object(json_object_get(v, "policy_state")));
    json_decref(v);

    v = ok_view(t, "GET", "/experiments", NULL);
    const json_t *list = json_object_get(v, "experiments");
    assert_int_equal(json_array_size(list), 3);
    const char *names[] = {"rank", "can", "ucb"}, *policies[] = {"ab", "canary", "ucb1"};
    for (size_t i = 0; i < 3; i++) {
        const json_t *x = json_array_get(list, i);
        assert_string_equal(json_string_value(json_object_get(x, "name")), names[i]);
        assert_string_equal(json_string_value(json_object_get(x, "policy")), policies[i]);
    }
    json_decref(v);

    refused(t, "GET", "/experiments/nope", NULL, 404, "not_found", "rank");
    refused(t, "GET", "/experiments/rank/frobnicate", NULL, 404, "not_found", "rank");
    refused(t, "GET", "/experiments/rank/weights/x", NULL, 404, "not_found", "rank");
    /* one trailing slash is allowed, as for /experiments/ */
    json_t *slashed = ok_view(t, "GET", "/experiments/rank/", NULL);
    assert_string_equal(json_string_value(json_object_get(slashed, "name")), "rank");
    json_decref(slashed);
    refused(t, "DELETE", "/experiments/rank", NULL, 405, "method_not_allowed", "rank");
    refused(t, "POST", "/experiments", "{}", 405, "method_not_allowed", "rank");
}

/* ---- weights ---- */

static void test_put_weights_sets_the_split(void **state)
{
    rig_t *t = *state;
    uint64_t v0 = control(t, "rank")->version;
    json_t *v = ok_view(t, "PUT", "/experiments/rank/weights", "{\"a\": 80, \"b\": 20}");
    assert_string_equal(view_state(v), "running");
    assert_true(view_weight(v, "a") == 80 && view_weight(v, "b") == 20);
    const json_t *arms = json_object_get(v, "arms");
    assert_true(fabs(json_number_value(json_object_get(json_array_get(arms, 1), "share")) - 0.2) <
                1e-9);
    json_decref(v);
    const exp_control_t *c = control(t, "rank");
    assert_int_equal(c->version, v0 + 1);
    assert_true(c->has_weights);
    assert_true(c->weights[0] == 80 && c->weights[1] == 20);
    /* arms not listed get 0 */
    v = ok_view(t, "PUT", "/experiments/rank/weights", "{\"b\": 3}");
    assert_true(view_weight(v, "a") == 0 && view_weight(v, "b") == 3);
    json_decref(v);
    assert_int_equal(c->version, v0 + 2);
    assert_true(c->weights[0] == 0 && c->weights[1] == 3);
}

/* Valid JSON that is no object is named for what it is, not called
 * invalid JSON; invalid JSON says where. */
static void test_a_body_that_is_no_object_is_named(void **state)
{
    rig_t *t = *state;
    static const struct {
        const char *body, *message;
    } cases[] = {
        {"null", "the body must be a JSON object, got null"},
        {"\"x\"", "the body must be a JSON object, got \"x\""},
        {"3", "the body must be a JSON object, got 3"},
        {"[80, 20]", "the body must be a JSON object, got an array"},
        {" ", "a JSON object body is required"},
        {"nul", "invalid JSON at line 1 column 3: invalid token near 'nul'"},
    };
    for (size_t i = 0; i < MM_ARRAY_LEN(cases); i++) {
        rig_resp_t r;
        call(t, "PUT", "/experiments/rank/weights", cases[i].body, &r);
        rig_assert_error(&r, 400, "bad_request");
        assert_string_equal(json_string_value(json_object_get(r.json, "message")),
                            cases[i].message);
        rig_resp_free(&r);
    }
}

static void test_put_weights_refusals(void **state)
{
    rig_t *t = *state;
    const char *w = "/experiments/rank/weights";
    refused(t, "PUT", w, "{\"a\": 50, \"z\": 50}", 404, "not_found", "rank");
    refused(t, "PUT", w, "{\"a\": \"80\"}", 400, "bad_request", "rank");
    refused(t, "PUT", w, "{\"a\": -1, \"b\": 5}", 400, "bad_request", "rank");
    refused(t, "PUT", w, "{\"a\": 2e9}", 400, "bad_request", "rank");
    refused(t, "PUT", w, "{\"a\": 0, \"b\": 0}", 400, "bad_request", "rank");
    refused(t, "PUT", w, "{}", 400, "bad_request", "rank");
    refused(t, "PUT", w, "", 400, "bad_request", "rank");
    refused(t, "PUT", w, "[80, 20]", 400, "bad_request", "rank");
    refused(t, "PUT", w, "{\"a\": 80,", 400, "bad_request", "rank");
    refused(t, "PUT", w, "{\"a\": 1, \"a\": 2}", 400, "bad_request", "rank");
    refused(t, "POST", w, "{\"a\": 1}", 405, "method_not_allowed", "rank");
    refused(t, "PUT", "/experiments/nope/weights", "{\"a\": 1}", 404, "not_found", "rank");
    /* policies that set their own shares: 409, whatever the body */
    refused(t, "PUT", "/experiments/ucb/weights", "{\"a\": 1}", 409, "conflict", "ucb");
    refused(t, "PUT", "/experiments/can/weights", "{\"a\": 1}", 409, "conflict", "can");
    rig_resp_t r;
    call(t, "POST", w, "{}", &r);
    char v[32];
    assert_string_equal(rig_header(&r, "Allow", v, sizeof(v)), "PUT");
    rig_resp_free(&r);
}

/* ---- promote, rollback ---- */

static void test_promote_sends_everything_to_the_arm(void **state)
{
    rig_t *t = *state;
    uint64_t v0 = control(t, "can")->version;
    json_t *v = ok_view(t, "POST", "/experiments/can/promote", "{\"arm\": \"b\"}");
    assert_string_equal(view_state(v), "promoted");
    assert_true(view_weight(v, "a") == 0 && view_weight(v, "b") == 100);
    json_decref(v);
    const exp_control_t *c = control(t, "can");
    assert_int_equal(c->version, v0 + 1);
    assert_int_equal(c->state, EXP_PROMOTED);
    assert_true(c->canary_step == 100);
    /* promoting the champion: canary_step 0 */
    v = ok_view(t, "POST", "/experiments/rank/promote", "{\"arm\": \"a\"}");
    json_decref(v);
    c = control(t, "rank");
    assert_int_equal(c->state, EXP_PROMOTED);
    assert_true(c->weights[0] == 100 && c->weights[1] == 0);
    assert_true(c->canary_step == 0);
}

static void test_promote_refusals(void **state)
{
    rig_t *t = *state;
    const char *p = "/experiments/can/promote";
    refused(t, "POST", p, "", 400, "bad_request", "can"); /* never guesses a winner */
    refused(t, "POST", p, "{}", 400, "bad_request", "can");
    refused(t, "POST", p, "{\"arm\": 1}", 400, "bad_request", "can");
    refused(t, "POST", p, "{\"arm\": \"b\", \"force\": true}", 400, "bad_request", "can");
    refused(t, "POST", p, "{\"arm\": \"c\"}", 404, "not_found", "can"); /* c is not one of can's */
    refused(t, "PUT", p, "{\"arm\": \"b\"}", 405, "method_not_allowed", "can");
    rig_resp_t r;
    call(t, "GET", p, NULL, &r);
    char v[32];
    assert_string_equal(rig_header(&r, "Allow", v, sizeof(v)), "POST");
    rig_resp_free(&r);
}

static void test_rollback_returns_to_the_champion(void **state)
{
    rig_t *t = *state;
    json_decref(ok_view(t, "POST", "/experiments/can/promote", "{\"arm\": \"b\"}"));
    uint64_t v0 = control(t, "can")->version;
    refused(t, "POST", "/experiments/can/rollback", "{\"arm\": \"a\"}", 400, "bad_request", "can");
    json_t *v = ok_view(t, "POST", "/experiments/can/rollback", "{}");
    assert_string_equal(view_state(v), "rolled_back");
    assert_true(view_weight(v, "a") == 100 && view_weight(v, "b") == 0);
    json_decref(v);
    const exp_control_t *c = control(t, "can");
    assert_int_equal(c->version, v0 + 1);
    assert_int_equal(c->state, EXP_ROLLED_BACK);
    assert_true(c->canary_step == 0);
    /* an empty body is as good as {} */
    json_decref(ok_view(t, "POST", "/experiments/ucb/rollback", NULL));
    assert_int_equal(control(t, "ucb")->state, EXP_ROLLED_BACK);
}

/* ---- pause, resume ---- */

static void test_pause_freezes_and_resume_runs(void **state)
{
    rig_t *t = *state;
    exp_state_t *st = rig_exp(t, "rank")->state;
    store_pull(t->srv.store, st, 1);
    uint64_t v0 = st->control.version;
    json_t *v = ok_view(t, "POST", "/experiments/rank/pause", NULL);
    assert_string_equal(view_state(v), "paused");
    json_decref(v);
    assert_int_equal(st->control.state, EXP_PAUSED);
    assert_int_equal(st->control.version, v0 + 1);
    assert_int_equal(st->frozen[1].pulls, 1); /* what the policy sees while paused */
    store_pull(t->srv.store, st, 1);
    assert_int_equal(st->frozen[1].pulls, 1);
    assert_int_equal(st->merged[1].pulls, 2);
    /* pausing again changes nothing: no new version */
    json_decref(ok_view(t, "POST", "/experiments/rank/pause", "{}"));
    assert_int_equal(st->control.version, v0 + 1);
    refused(t, "POST", "/experiments/rank/pause", "{\"now\": 1}", 400, "bad_request", "rank");
    v = ok_view(t, "POST", "/experiments/rank/resume", NULL);
    assert_string_equal(view_state(v), "running");
    json_decref(v);
    assert_int_equal(st->control.state, EXP_RUNNING);
    assert_int_equal(st->control.version, v0 + 2);
}

/* Nothing learns once promoted or rolled back: pause is 409 there. */
static void test_pause_after_promote_is_409(void **state)
{
    rig_t *t = *state;
    json_decref(ok_view(t, "POST", "/experiments/ucb/promote", "{\"arm\": \"c\"}"));
    refused(t, "POST", "/experiments/ucb/pause", NULL, 409, "conflict", "ucb");
    json_decref(ok_view(t, "POST", "/experiments/rank/rollback", NULL));
    refused(t, "POST", "/experiments/rank/pause", NULL, 409, "conflict", "rank");
    assert_int_equal(control(t, "ucb")->state, EXP_PROMOTED);
}

/* Resume after promote: a policy that sets its own shares routes by itself
 * again (promote's weights dropped); ab keeps the weights it was given. */
static void test_resume_drops_weights_only_where_the_policy_routes(void **state)
{
    rig_t *t = *state;
    json_decref(ok_view(t, "POST", "/experiments/ucb/promote", "{\"arm\": \"c\"}"));
    json_t *v = ok_view(t, "POST", "/experiments/ucb/resume", NULL);
    assert_string_equal(view_state(v), "running");
    assert_true(json_is_null(json_object_get(v, "weights")));
    json_decref(v);
    assert_false(control(t, "ucb")->has_weights);

    json_decref(ok_view(t, "PUT", "/experiments/rank/weights", "{\"a\": 70, \"b\": 30}"));
    json_decref(ok_view(t, "POST", "/experiments/rank/pause", NULL));
    v = ok_view(t, "POST", "/experiments/rank/resume", NULL);
    assert_true(view_weight(v, "a") == 70 && view_weight(v, "b") == 30);
    json_decref(v);
    assert_true(control(t, "rank")->has_weights);
}

/* A canary promoted by the operator and then resumed starts over at its
 * first step, at once (the resume ticks it: not step 0 until the next
 * tick); it used to run on at promote's 100 %, outside its steps. */
static void test_resume_after_promote_starts_a_canary_over(void **state)
{
    rig_t *t = *state;
    json_decref(ok_view(t, "POST", "/experiments/can/promote", "{\"arm\": \"b\"}"));
    assert_true(control(t, "can")->canary_step == 100.0);
    json_t *v = ok_view(t, "POST", "/experiments/can/resume", NULL);
    assert_string_equal(view_state(v), "running");
    json_decref(v);
    assert_true(control(t, "can")->canary_step == 5.0); /* steps [5, 25, 100] */
    assert_false(control(t, "can")->has_weights);
}

/* ---- reset ---- */

static void test_reset_forgets_statistics_and_operator_changes(void **state)
{
    rig_t *t = *state;
    exp_rt_t *e = rig_exp(t, "rank");
    exp_state_t *st = e->state;
    exp_control_t initial = st->control;
    store_pull(t->srv.store, st, 0);
    store_pull(t->srv.store, st, 1);
    store_error(t->srv.store, st, 1);
    store_reward(t->srv.store, st, 1, 2.0, 0);
    json_decref(ok_view(t, "PUT", "/experiments/rank/weights", "{\"a\": 1, \"b\": 1}"));
    uint64_t v0 = st->control.version;
    uint64_t resets = store_resets(st);
    refused(t, "POST", "/experiments/rank/reset", "{\"all\": true}", 400, "bad_request", "rank");
    json_t *v = ok_view(t, "POST", "/experiments/rank/reset", NULL);
    const json_t *b = json_array_get(json_object_get(v, "arms"), 1);
    assert_int_equal(json_integer_value(json_object_get(b, "requests")), 0);
    assert_int_equal(json_integer_value(json_object_get(b, "feedback")), 0);
    assert_string_equal(view_state(v), "running");
    json_decref(v);
    for (int a = 0; a < 2; a++) {
        assert_int_equal(st->merged[a].pulls, 0);
        assert_int_equal(st->merged[a].errors, 0);
        assert_int_equal(st->merged[a].feedback, 0);
        assert_true(st->merged[a].reward_sum == 0);
    }
    assert_int_equal(store_resets(st), resets + 1);
    assert_true(st->control.version > v0);
    assert_int_equal(st->control.state, initial.state);
    assert_int_equal(st->control.has_weights, initial.has_weights);
    assert_memory_equal(st->control.weights, initial.weights, sizeof(initial.weights));
    /* the other experiments keep theirs */
    store_pull(t->srv.store, rig_exp(t, "ucb")->state, 1);
    json_decref(ok_view(t, "POST", "/experiments/rank/reset", NULL));
    assert_int_equal(rig_exp(t, "ucb")->state->merged[1].pulls, 1);
}

/* `n` answered requests per arm of "rank", arm i converting at rate[i]. */
static void feed(rig_t *t, exp_state_t *st, int n, const double *rate)
{
    for (int a = 0; a < 2; a++)
        for (int i = 0; i < n; i++) {
            store_pull(t->srv.store, st, a);
            store_reward(t->srv.store, st, a, i < (int)(rate[a] * n) ? 1.0 : 0.0, 0);
        }
}

static const char *rank_verdict(rig_t *t, json_t **hold)
{
    *hold = ok_view(t, "GET", "/experiments/rank", NULL);
    const json_t *c =
        json_array_get(json_object_get(json_object_get(*hold, "policy_state"), "comparisons"), 0);
    const char *v = json_string_value(json_object_get(c, "verdict"));
    assert_non_null(v);
    return v;
}

/* A reset made on another instance reaches this one as the store's
 * statistics going back to 0 (store_reset without the admin call). The
 * next view must already show the policy's own state forgotten — here the
 * A/B test's running minimum of the always-valid p-value — not a verdict
 * from before the reset next to counts from after it until the next tick.
 * The counts grow past the old ones before the view, so the policy cannot
 * see the reset from the counts going down. */
static void test_a_reset_made_elsewhere_shows_in_the_next_view(void **state)
{
    rig_t *t = *state;
    exp_state_t *st = rig_exp(t, "rank")->state;
    json_t *hold;
    feed(t, st, 1000, (const double[]){0.1, 0.3});
    assert_string_equal(rank_verdict(t, &hold), "challenger_better");
    json_decref(hold);
    store_reset(t->srv.store, st);
    feed(t, st, 1100, (const double[]){0.1, 0.1});
    const char *v = rank_verdict(t, &hold);
    if (strcmp(v, "challenger_better") == 0) fail_msg("verdict from before the reset: %s", v);
    json_decref(hold);
}

/* ---- metrics, reload ---- */

static void test_metrics_is_prometheus_text(void **state)
{
    rig_t *t = *state;
    rig_resp_t r;
    call(t, "GET", "/metrics", NULL, &r);
    assert_int_equal(r.status, 200);
    char v[128];
    assert_non_null(rig_header(&r, "Content-Type", v, sizeof(v)));
    assert_non_null(strstr(v, "text/plain"));
    assert_non_null(strstr(v, "version=0.0.4"));
    assert_non_null(strstr(r.body, "\nmodelmux_store_up 1\n"));
    rig_resp_free(&r);
    refused(t, "POST", "/metrics", "{}", 405, "method_not_allowed", "rank");
}

static void test_reload_swaps_the_config_or_keeps_the_old(void **state)
{
    rig_t *t = *state;
    router_t *before = t->srv.router;
    rig_write_config(t, CONFIG_MORE);
    rig_resp_t r;
    call(t, "POST", "/reload", NULL, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(json_string_value(json_object_get(r.json, "status")), "reloaded");
    rig_resp_free(&r);
    assert_ptr_not_equal(t->srv.router, before);
    assert_int_equal(t->srv.router->n_exps, 4);
    assert_non_null(rig_exp(t, "more"));
    assert_int_equal(t->srv.reloads, 1);

    /* a config with an error: 400 naming FILE:LINE:COL, the running one stays */
    router_t *good = t->srv.router;
    rig_write_config(t, "{\"listen\": \"127.0.0.1:18080\",\n \"upstreams\": 5}\n");
    call(t, "POST", "/reload", "{}", &r);
    rig_assert_error(&r, 400, "bad_request");
    char where[128];
    snprintf(where, sizeof(where), "%s:2:", t->path);
    rig_assert_message_has(&r, where);
    rig_resp_free(&r);
    assert_ptr_equal(t->srv.router, good);
    assert_int_equal(t->srv.reload_failures, 1);
    refused(t, "POST", "/reload", "{\"now\": true}", 400, "bad_request", "rank");
    refused(t, "GET", "/reload", NULL, 405, "method_not_allowed", "rank");
    assert_int_equal(t->srv.reloads, 1);
}

/* ---- paths ---- */

static void assert_view_named(rig_t *t, const char *method, const char *path, const char *name)
{
    json_t *v = ok_view(t, method, path, NULL);
    if (!json_is_string(json_object_get(v, "name")))
        fail_msg("%s %s: not one experiment's view", method, path);
    assert_string_equal(json_string_value(json_object_get(v, "name")), name);
    json_decref(v);
}

/* Below /experiments the path is taken segment by segment as sent: "." and
 * ".." are names (not removed as dot-segments), %2E is '.', runs of '/' and
 * a trailing '/' do not count. */
static void test_experiment_names_dot_and_dotdot_are_reachable(void **state)
{
    (void)state;
    rig_t t;
    rig_start(&t, CONFIG_DOTS);
    assert_view_named(&t, "GET", "/experiments/..", "..");
    assert_view_named(&t, "GET", "/experiments/.", ".");
    assert_view_named(&t, "GET", "/experiments/%2E%2e", "..");
    assert_view_named(&t, "GET", "/experiments/%2e/", ".");
    assert_view_named(&t, "GET", "//experiments//rank/", "rank");
    assert_view_named(&t, "GET", "/%65xperiments/r%61nk", "rank");

    json_t *v = ok_view(&t, "POST", "/experiments/./rollback", NULL);
    assert_string_equal(json_string_value(json_object_get(v, "name")), ".");
    assert_string_equal(view_state(v), "rolled_back");
    json_decref(v);
    assert_int_equal(control(&t, ".")->state, EXP_ROLLED_BACK);
    assert_int_equal(control(&t, "..")->state, EXP_RUNNING);
    v = ok_view(&t, "POST", "/experiments/../pause/", NULL);
    assert_string_equal(json_string_value(json_object_get(v, "name")), "..");
    json_decref(v);
    assert_int_equal(control(&t, "..")->state, EXP_PAUSED);
    assert_int_equal(control(&t, "rank")->state, EXP_RUNNING);
    v = ok_view(&t, "POST", "/experiments/%2E%2E/resume", NULL);
    json_decref(v);
    assert_int_equal(control(&t, "..")->state, EXP_RUNNING);

    /* the list: exactly /experiments, with or without '/' */
    rig_resp_t r;
    call(&t, "GET", "/experiments/", NULL, &r);
    assert_int_equal(r.status, 200);
    assert_null(json_object_get(r.json, "name"));
    rig_resp_free(&r);
    /* a dot-segment does not lead out of /experiments: no probe without the
     * token, no other endpoint */
    assert_401(&t, "GET", "/experiments/../healthz", NULL);
    call(&t, "GET", "/experiments/../metrics", NULL, &r);
    rig_assert_error(&r, 404, "not_found");
    rig_resp_free(&r);
    call(&t, "POST", "/experiments/./rollback/x", NULL, &r);
    rig_assert_error(&r, 404, "not_found");
    rig_resp_free(&r);
    call(&t, "GET", "/experiments/...", NULL, &r);
    rig_assert_error(&r, 404, "not_found");
    rig_resp_free(&r);
    rig_stop(&t);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, rig_teardown)
    const struct CMUnitTest tests[] = {
        T(test_health_and_readiness_need_no_token),
        T(test_token_is_required_everywhere_else),
        cmocka_unit_test(test_no_token_configured_means_open),
        T(test_token_only_in_the_authorization_header),
        cmocka_unit_test(test_changes_from_web_pages_are_403),
        T(test_views_show_state_and_arm_counts),
        T(test_put_weights_sets_the_split),
        T(test_put_weights_refusals),
        T(test_a_body_that_is_no_object_is_named),
        T(test_promote_sends_everything_to_the_arm),
        T(test_promote_refusals),
        T(test_rollback_returns_to_the_champion),
        T(test_pause_freezes_and_resume_runs),
        T(test_pause_after_promote_is_409),
        T(test_resume_drops_weights_only_where_the_policy_routes),
        T(test_resume_after_promote_starts_a_canary_over),
        T(test_reset_forgets_statistics_and_operator_changes),
        T(test_a_reset_made_elsewhere_shows_in_the_next_view),
        T(test_metrics_is_prometheus_text),
        T(test_reload_swaps_the_config_or_keeps_the_old),
        cmocka_unit_test(test_experiment_names_dot_and_dotdot_are_reachable),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
