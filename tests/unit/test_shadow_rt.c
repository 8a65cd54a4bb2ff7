/* test_shadow_rt.c — the mirroring runtime (DESIGN.md §3 shadow, §4, §7)
 * between a real data listener and two fake model servers in the same
 * loop (rig.h): the primary `a` and the shadow `b`.
 *
 * What a user relies on: the client gets the primary's answer whatever the
 * shadow does (and before a hung shadow is given up on); the mirror is the
 * client's request with the primary's X-Request-Id, its own arm and
 * X-Modelmux-Shadow: 1; and every mirror ends in exactly one outcome of
 * modelmux_shadow_total — match, mismatch (status included), error
 * (transport failure, past timeout_ms, or a primary that gave no answer to
 * compare with), dropped (max_inflight, max_body_bytes). Outcomes are read
 * from the arm's counters once no mirror is in flight; no test depends on
 * how long anything takes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "rig.h"

static const char A_ANSWER[] =
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n"
    "{\"score\":0.5}";
static const char B_SAME[] =
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n"
    "{ \"score\": 0.5 }"; /* other bytes, same JSON */
static const char B_OTHER[] =
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n"
    "{\"score\":0.7}";
static const char B_SAME_500[] =
    "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
    "Content-Length: 13\r\n\r\n{\"score\":0.5}";

typedef struct {
    rig_t t;
    rig_model_t a, b;
} fx_t;

/* Models a and b, then the config naming their ports; `opts` are the
 * shadow experiment's extra keys. */
static void fx_start(fx_t *f, int a_mode, int b_mode, const char *b_answer, const char *opts)
{
    rig_init(&f->t);
    rig_model_start(&f->t.loop, &f->a, a_mode, A_ANSWER);
    rig_model_start(&f->t.loop, &f->b, b_mode, b_answer);
    char cfg[2048];
    snprintf(cfg, sizeof(cfg),
             "{\"listen\": \"127.0.0.1:18080\",\n"
             " \"upstreams\": {\"a\": {\"url\": \"http://127.0.0.1:%d\"},\n"
             "               \"b\": {\"url\": \"http://127.0.0.1:%d\"}},\n"
             " \"experiments\": [\n"
             "  {\"name\": \"sh\", \"match\": {\"path_prefix\": \"/v1/sh\"}, \"policy\": "
             "\"shadow\",\n"
             "   \"primary\": \"a\", \"shadows\": [\"b\"]%s}\n"
             " ]}\n",
             f->a.port, f->b.port, opts);
    rig_serve(&f->t, cfg);
}

static void fx_stop(fx_t *f)
{
    rig_stop_with_models(&f->t, &f->a, &f->b);
}

/* The shadow arm's outcome counts: match, mismatch, error, dropped. */
static void assert_outcomes(fx_t *f, uint64_t match, uint64_t mismatch, uint64_t error,
                            uint64_t dropped)
{
    const metrics_arm_t *m = router_marm(rig_exp(&f->t, "sh"), 1);
    uint64_t want[SHADOW__COUNT] = {match, mismatch, error, dropped};
    for (int i = 0; i < SHADOW__COUNT; i++)
        if (m->shadow[i] != want[i])
            fail_msg("outcomes %llu/%llu/%llu/%llu, expected %llu/%llu/%llu/%llu",
                     (unsigned long long)m->shadow[0], (unsigned long long)m->shadow[1],
                     (unsigned long long)m->shadow[2], (unsigned long long)m->shadow[3],
                     (unsigned long long)match, (unsigned long long)mismatch,
                     (unsigned long long)error, (unsigned long long)dropped);
    /* the primary is never counted as a shadow */
    const metrics_arm_t *p = router_marm(rig_exp(&f->t, "sh"), 0);
    for (int i = 0; i < SHADOW__COUNT; i++) assert_int_equal(p->shadow[i], 0);
}

/* POST body to /v1/sh; the client must get a's answer. */
static void post_primary_answers(fx_t *f, const char *id, const char *body)
{
    char hdr[128];
    snprintf(hdr, sizeof(hdr), "X-Request-Id: %s\r\nContent-Type: application/json\r\n", id);
    rig_resp_t r;
    rig_call(&f->t, f->t.data_port, "POST", "/v1/sh/score", hdr, body, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, 13);
    assert_memory_equal(r.body, "{\"score\":0.5}", 13);
    char v[64];
    assert_string_equal(rig_header(&r, "X-Modelmux-Arm", v, sizeof(v)), "a");
    assert_string_equal(rig_header(&r, "X-Request-Id", v, sizeof(v)), id);
    rig_resp_free(&r);
}

static void assert_has(const char *text, const char *part)
{
    if (strstr(text, part) == NULL) fail_msg("\"%s\" not in:\n%s", part, text);
}

static void test_mirror_is_the_request_and_matches(void **state)
{
    (void)state;
    fx_t f;
    fx_start(&f, MODEL_ANSWER, MODEL_ANSWER, B_SAME, "");
    post_primary_answers(&f, "sh-1", "{\"q\":\"x\"}");
    rig_run_mirrors(&f.t);
    assert_outcomes(&f, 1, 0, 0, 0);
    assert_int_equal(f.a.requests, 1);
    assert_int_equal(f.b.requests, 1);
    const char *m = f.b.last.p;
    assert_has(m, "POST /v1/sh/score HTTP/1.1\r\n");
    assert_has(m, "\r\nX-Request-Id: sh-1\r\n");
    assert_has(m, "\r\nX-Modelmux-Arm: b\r\n");
    assert_has(m, "\r\nX-Modelmux-Shadow: 1\r\n");
    assert_has(m, "\r\nContent-Type: application/json\r\n");
    assert_has(m, "\r\nContent-Length: 9\r\n");
    assert_has(m, "\r\n\r\n{\"q\":\"x\"}");
    const char *p = f.a.last.p;
    assert_has(p, "\r\nX-Request-Id: sh-1\r\n");
    assert_has(p, "\r\nX-Modelmux-Arm: a\r\n");
    assert_null(strstr(p, "X-Modelmux-Shadow"));
    fx_stop(&f);
}

static void test_different_json_is_a_mismatch(void **state)
{
    (void)state;
    fx_t f;
    fx_start(&f, MODEL_ANSWER, MODEL_ANSWER, B_OTHER, "");
    post_primary_answers(&f, "sh-2", "{}");
    rig_run_mirrors(&f.t);
    assert_outcomes(&f, 0, 1, 0, 0);
    fx_stop(&f);
}

/* "mismatch (any difference, status included)": the same body with a 500. */
static void test_different_status_is_a_mismatch(void **state)
{
    (void)state;
    fx_t f;
    fx_start(&f, MODEL_ANSWER, MODEL_ANSWER, B_SAME_500, "");
    post_primary_answers(&f, "sh-3", "{}");
    rig_run_mirrors(&f.t);
    assert_outcomes(&f, 0, 1, 0, 0);
    fx_stop(&f);
}

static void test_shadow_transport_failure_is_an_error(void **state)
{
    (void)state;
    fx_t f;
    fx_start(&f, MODEL_ANSWER, MODEL_CLOSE, NULL, "");
    post_primary_answers(&f, "sh-4", "{}");
    rig_run_mirrors(&f.t);
    assert_outcomes(&f, 0, 0, 1, 0);
    assert_int_equal(f.b.requests, 1);
    fx_stop(&f);
}

/* A shadow that never answers: the client has its answer while the mirror
 * is still in flight; with max_inflight 1 the next request's mirror is not
 * sent (dropped); the hung one ends as an error at timeout_ms. */
static void test_hung_shadow_delays_nothing_and_bounds_inflight(void **state)
{
    (void)state;
    fx_t f;
    fx_start(&f, MODEL_ANSWER, MODEL_HANG, NULL, ", \"max_inflight\": 1, \"timeout_ms\": 200");
    post_primary_answers(&f, "sh-5", "{}");
    assert_int_equal(f.t.srv.shadows.active, 1); /* answered, the mirror still out */
    post_primary_answers(&f, "sh-6", "{}");
    rig_run_mirrors(&f.t);
    assert_outcomes(&f, 0, 0, 1, 1);
    assert_int_equal(f.a.requests, 2);
    assert_int_equal(f.b.requests, 1);
    fx_stop(&f);
}

/* max_body_bytes: a body at the limit is mirrored, one byte more is not. */
static void test_body_over_the_limit_is_dropped(void **state)
{
    (void)state;
    fx_t f;
    fx_start(&f, MODEL_ANSWER, MODEL_ANSWER, B_SAME, ", \"max_body_bytes\": 8");
    post_primary_answers(&f, "sh-7", "12345678");
    rig_run_mirrors(&f.t);
    assert_outcomes(&f, 1, 0, 0, 0);
    post_primary_answers(&f, "sh-8", "123456789");
    rig_run_mirrors(&f.t);
    assert_outcomes(&f, 1, 0, 0, 1);
    assert_int_equal(f.b.requests, 1);
    assert_int_equal(f.a.requests, 2);
    fx_stop(&f);
}

static void test_sample_zero_mirrors_nothing(void **state)
{
    (void)state;
    fx_t f;
    fx_start(&f, MODEL_ANSWER, MODEL_ANSWER, B_SAME, ", \"sample\": 0");
    for (int i = 0; i < 3; i++) post_primary_answers(&f, "sh-9", "{}");
    rig_run_mirrors(&f.t);
    assert_outcomes(&f, 0, 0, 0, 0);
    assert_int_equal(f.b.requests, 0);
    fx_stop(&f);
}

/* The primary gave no answer (the client gets a 502): the shadow's answer
 * has nothing to be compared with — an error, not a mismatch. */
static void test_failed_primary_makes_the_mirror_an_error(void **state)
{
    (void)state;
    fx_t f;
    fx_start(&f, MODEL_CLOSE, MODEL_ANSWER, B_SAME, "");
    rig_resp_t r;
    rig_call(&f.t, f.t.data_port, "POST", "/v1/sh/score", "X-Request-Id: sh-10\r\n", "{}", &r);
    rig_assert_error(&r, 502, "upstream_unavailable");
    rig_resp_free(&r);
    rig_run_mirrors(&f.t);
    assert_outcomes(&f, 0, 0, 1, 0);
    assert_int_equal(f.b.requests, 1);
    fx_stop(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mirror_is_the_request_and_matches),
        cmocka_unit_test(test_different_json_is_a_mismatch),
        cmocka_unit_test(test_different_status_is_a_mismatch),
        cmocka_unit_test(test_shadow_transport_failure_is_an_error),
        cmocka_unit_test(test_hung_shadow_delays_nothing_and_bounds_inflight),
        cmocka_unit_test(test_body_over_the_limit_is_dropped),
        cmocka_unit_test(test_sample_zero_mirrors_nothing),
        cmocka_unit_test(test_failed_primary_makes_the_mirror_an_error),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
