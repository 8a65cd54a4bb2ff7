/* test_fanout.c — a request answered by every arm at once and merged by the
 * policy (interleave, README "interleave"), between a real data listener
 * and two fake rankers in the same loop (rig.h).
 *
 * Checked: both rankers get the client's request (body, X-Request-Id, their
 * own arm); with two usable lists the client gets ranker a's JSON with the
 * list replaced by the merged top k and X-Modelmux-Arm: interleave, an
 * impression is counted for each arm, and the attribution is stored so a
 * click on a shown item is credited (through POST /_modelmux/feedback);
 * when one ranker fails the other's answer goes out unchanged, named by its
 * arm, and the failed one is charged an error; both failing is a 502, both
 * timing out a 504; HEAD goes to ranker a alone. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "rig.h"

static const char A_LIST[] = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             "Content-Length: 49\r\n\r\n"
                             "{\"items\":[{\"id\":1},{\"id\":2},{\"id\":3}],\"from\":\"a\"}";
static const char B_LIST[] = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             "Content-Length: 49\r\n\r\n"
                             "{\"items\":[{\"id\":3},{\"id\":4},{\"id\":5}],\"from\":\"b\"}";
#define A_BODY "{\"items\":[{\"id\":1},{\"id\":2},{\"id\":3}],\"from\":\"a\"}"
#define B_BODY "{\"items\":[{\"id\":3},{\"id\":4},{\"id\":5}],\"from\":\"b\"}"

typedef struct {
    rig_t t;
    rig_model_t a, b;
} fx_t;

static void fx_start(fx_t *f, int a_mode, int b_mode, int timeout_ms)
{
    rig_init(&f->t);
    rig_model_start(&f->t.loop, &f->a, a_mode, A_LIST);
    rig_model_start(&f->t.loop, &f->b, b_mode, B_LIST);
    char cfg[2048];
    snprintf(cfg, sizeof(cfg),
             "{\"listen\": \"127.0.0.1:18080\",\n"
             " \"upstreams\": {\"a\": {\"url\": \"http://127.0.0.1:%d\", \"timeout_ms\": %d},\n"
             "               \"b\": {\"url\": \"http://127.0.0.1:%d\", \"timeout_ms\": %d}},\n"
             " \"experiments\": [\n"
             "  {\"name\": \"il\", \"match\": {\"path_prefix\": \"/v1/il\"}, \"policy\": "
             "\"interleave\",\n"
             "   \"arms\": [\"a\", \"b\"], \"list_pointer\": \"/items\", \"k\": 4}\n"
             " ]}\n",
             f->a.port, timeout_ms, f->b.port, timeout_ms);
    rig_serve(&f->t, cfg);
}

static void fx_stop(fx_t *f)
{
    rig_stop_with_models(&f->t, &f->a, &f->b);
}

static const arm_stats_t *stats(fx_t *f, int arm)
{
    return &rig_exp(&f->t, "il")->state->merged[arm];
}

static void post(fx_t *f, const char *id, rig_resp_t *r)
{
    char hdr[64];
    snprintf(hdr, sizeof(hdr), "X-Request-Id: %s\r\n", id);
    rig_call(&f->t, f->t.data_port, "POST", "/v1/il/rank", hdr, "{\"user\":7}", r);
}

static void assert_has(const char *text, const char *part)
{
    if (strstr(text, part) == NULL) fail_msg("\"%s\" not in:\n%s", part, text);
}

static void assert_asked(const rig_model_t *m, const char *arm, const char *id)
{
    char line[96];
    assert_int_equal(m->requests, 1);
    assert_has(m->last.p, "POST /v1/il/rank HTTP/1.1\r\n");
    snprintf(line, sizeof(line), "\r\nX-Request-Id: %s\r\n", id);
    assert_has(m->last.p, line);
    snprintf(line, sizeof(line), "\r\nX-Modelmux-Arm: %s\r\n", arm);
    assert_has(m->last.p, line);
    assert_has(m->last.p, "\r\n\r\n{\"user\":7}");
}

typedef struct {
    int found;
} aux_seen_t;

static void on_aux(void *arg, int found, const char *data, size_t n)
{
    (void)data;
    (void)n;
    ((aux_seen_t *)arg)->found = found;
}

static int has_attribution(fx_t *f, const char *id)
{
    aux_seen_t s = {-1};
    store_get_aux(f->t.srv.store, (mm_str_t){id, strlen(id)}, on_aux, &s);
    assert_int_not_equal(s.found, -1); /* the memory store answers at once */
    return s.found;
}

static void test_two_lists_are_merged(void **state)
{
    (void)state;
    fx_t f;
    fx_start(&f, MODEL_ANSWER, MODEL_ANSWER, 2000);
    rig_resp_t r;
    post(&f, "il-1", &r);
    assert_int_equal(r.status, 200);
    char v[64];
    assert_string_equal(rig_header(&r, "X-Modelmux-Arm", v, sizeof(v)), "interleave");
    assert_string_equal(rig_header(&r, "X-Modelmux-Experiment", v, sizeof(v)), "il");
    assert_non_null(r.json);
    assert_string_equal(json_string_value(json_object_get(r.json, "from")), "a"); /* a's frame */
    const json_t *items = json_object_get(r.json, "items");
    assert_int_equal(json_array_size(items), 4); /* k */
    int seen[6] = {0};
    for (size_t i = 0; i < 4; i++) {
        json_int_t id = json_integer_value(json_object_get(json_array_get(items, i), "id"));
        assert_true(id >= 1 && id <= 5);
        assert_int_equal(seen[id]++, 0); /* each item once */
    }
    assert_true(seen[1] && seen[3]); /* each team's first pick: both tops */
    rig_resp_free(&r);
    assert_asked(&f.a, "a", "il-1");
    assert_asked(&f.b, "b", "il-1");
    assert_int_equal(stats(&f, 0)->pulls, 1); /* an impression for each list */
    assert_int_equal(stats(&f, 1)->pulls, 1);
    assert_int_equal(stats(&f, 0)->errors + stats(&f, 1)->errors, 0);
    assert_true(has_attribution(&f, "il-1"));

    /* a click on a's top item, which only a ranked: a's win */
    rig_call(&f.t, f.t.data_port, "POST", "/_modelmux/feedback", NULL,
             "{\"request_id\": \"il-1\", \"item\": 1}", &r);
    assert_int_equal(r.status, 202);
    assert_int_equal(json_integer_value(json_object_get(r.json, "accepted")), 1);
    rig_resp_free(&r);
    assert_true(stats(&f, 0)->reward_sum == 1 && stats(&f, 1)->reward_sum == 0);
    assert_true(stats(&f, 0)->successes == 1);
    fx_stop(&f);
}

/* One ranker fails: the other's answer goes out as it came, named by its
 * arm; the failed one gets an error and no impression. */
static void test_one_failing_ranker_passes_the_other_through(void **state)
{
    (void)state;
    for (int failing = 0; failing < 2; failing++) {
        fx_t f;
        fx_start(&f, failing == 0 ? MODEL_CLOSE : MODEL_ANSWER,
                 failing == 1 ? MODEL_CLOSE : MODEL_ANSWER, 2000);
        int ok = 1 - failing;
        rig_resp_t r;
        post(&f, "il-2", &r);
        assert_int_equal(r.status, 200);
        const char *want = ok == 0 ? A_BODY : B_BODY;
        assert_int_equal(r.body_len, strlen(want));
        assert_memory_equal(r.body, want, strlen(want));
        char v[64];
        assert_string_equal(rig_header(&r, "X-Modelmux-Arm", v, sizeof(v)), ok == 0 ? "a" : "b");
        rig_resp_free(&r);
        assert_int_equal(stats(&f, failing)->errors, 1);
        assert_int_equal(stats(&f, failing)->pulls, 0);
        assert_int_equal(stats(&f, ok)->errors, 0);
        assert_int_equal(stats(&f, ok)->pulls, 1);
        assert_false(has_attribution(&f, "il-2")); /* nothing merged: no click to credit */
        fx_stop(&f);
    }
}

static void test_both_failing_is_502(void **state)
{
    (void)state;
    fx_t f;
    fx_start(&f, MODEL_CLOSE, MODEL_CLOSE, 2000);
    rig_resp_t r;
    post(&f, "il-3", &r);
    rig_assert_error(&r, 502, "upstream_unavailable");
    assert_string_equal(json_string_value(json_object_get(r.json, "request_id")), "il-3");
    rig_resp_free(&r);
    assert_int_equal(stats(&f, 0)->errors + stats(&f, 1)->errors, 2);
    fx_stop(&f);
}

static void test_both_timing_out_is_504(void **state)
{
    (void)state;
    fx_t f;
    fx_start(&f, MODEL_HANG, MODEL_HANG, 100);
    rig_resp_t r;
    post(&f, "il-4", &r);
    rig_assert_error(&r, 504, "upstream_timeout");
    rig_resp_free(&r);
    assert_int_equal(f.a.requests, 1);
    assert_int_equal(f.b.requests, 1);
    fx_stop(&f);
}

/* A HEAD answer has no list to merge: ranker a answers it alone. */
static void test_head_goes_to_ranker_a_alone(void **state)
{
    (void)state;
    fx_t f;
    fx_start(&f, MODEL_ANSWER, MODEL_ANSWER, 2000);
    rig_resp_t r;
    rig_call(&f.t, f.t.data_port, "HEAD", "/v1/il/rank", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, 0);
    char v[64];
    assert_string_equal(rig_header(&r, "X-Modelmux-Arm", v, sizeof(v)), "a");
    rig_resp_free(&r);
    assert_int_equal(f.a.requests, 1);
    assert_int_equal(f.b.requests, 0);
    fx_stop(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_two_lists_are_merged),
        cmocka_unit_test(test_one_failing_ranker_passes_the_other_through),
        cmocka_unit_test(test_both_failing_is_502),
        cmocka_unit_test(test_both_timing_out_is_504),
        cmocka_unit_test(test_head_goes_to_ranker_a_alone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
