/* test_feedback.c — POST /_modelmux/feedback (DESIGN.md §4, README
 * "Feedback") on a real data listener (rig.h), memory store.
 *
 * Request ids are put in the store's map as the proxy does when a request
 * ends (store_remember), so each test knows which (experiment, arm) an id
 * resolves to; then it posts feedback and checks the exact 202 counts
 * (accepted / unknown / invalid), or the 400 and its error shape, and what
 * the store and the metrics counted: rewards land on the arm the id
 * resolves to, Bernoulli rewards split into successes and failures, and a
 * rejected body changes nothing. Interleave clicks are posted against an
 * attribution put in the store as combine() leaves it. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "feedback.h"
#include "rig.h"

static const char CONFIG[] =
    "{\"listen\": \"127.0.0.1:18080\",\n"
    " \"upstreams\": {\"a\": {\"url\": \"http://127.0.0.1:17001\"},\n"
    "               \"b\": {\"url\": \"http://127.0.0.1:17002\"}},\n"
    " \"experiments\": [\n"
    "  {\"name\": \"rank\", \"match\": {\"path_prefix\": \"/v1/rank\"}, \"policy\": \"ab\",\n"
    "   \"arms\": {\"a\": 50, \"b\": 50}},\n"
    "  {\"name\": \"ts\", \"match\": {\"path_prefix\": \"/v1/ts\"}, \"policy\": \"thompson\",\n"
    "   \"arms\": [\"a\", \"b\"], \"reward\": \"bernoulli\"},\n"
    "  {\"name\": \"il\", \"match\": {\"path_prefix\": \"/v1/il\"}, \"policy\": \"interleave\",\n"
    "   \"arms\": [\"a\", \"b\"], \"list_pointer\": \"/items\"}\n"
    " ]}\n";

#define FEEDBACK "/_modelmux/feedback"

/* The longest item id (feedback.c's FB_ITEM_MAX, README). */
#define FB_ITEM_MAX_TEST 1024

static int setup(void **state)
{
    rig_t *t = calloc(1, sizeof(*t));
    rig_start(t, CONFIG);
    /* what three served requests leave behind */
    store_remember(t->srv.store, (mm_str_t){"req-a", 5}, "rank", "a", 3600);
    store_remember(t->srv.store, (mm_str_t){"req-b", 5}, "rank", "b", 3600);
    store_remember(t->srv.store, (mm_str_t){"ts-b", 4}, "ts", "b", 3600);
    *state = t;
    return 0;
}

static const arm_stats_t *stats(rig_t *t, const char *exp, int arm)
{
    return &rig_exp(t, exp)->state->merged[arm];
}

static const metrics_arm_t *marm(rig_t *t, const char *exp, int arm)
{
    return router_marm(rig_exp(t, exp), arm);
}

/* POST body; expect 202 with exactly these counts. */
static void post_counts(rig_t *t, const char *body, int accepted, int unknown, int invalid)
{
    rig_resp_t r;
    rig_call(t, t->data_port, "POST", FEEDBACK, NULL, body, &r);
    if (r.status != 202) fail_msg("status %d for %s: %s", r.status, body, r.body);
    assert_non_null(r.json);
    assert_int_equal(json_object_size(r.json), 3);
    json_int_t got[3] = {json_integer_value(json_object_get(r.json, "accepted")),
                         json_integer_value(json_object_get(r.json, "unknown")),
                         json_integer_value(json_object_get(r.json, "invalid"))};
    if (got[0] != accepted || got[1] != unknown || got[2] != invalid)
        fail_msg("%s: got %s, expected %d/%d/%d", body, r.body, accepted, unknown, invalid);
    rig_resp_free(&r);
}

/* POST body; expect the 400 error shape, its message naming `part`. */
static void post_400(rig_t *t, const char *body, const char *part)
{
    rig_resp_t r;
    rig_call(t, t->data_port, "POST", FEEDBACK, NULL, body, &r);
    rig_assert_error(&r, 400, "bad_request");
    rig_assert_message_has(&r, part);
    rig_resp_free(&r);
}

static void assert_untouched(rig_t *t)
{
    static const char *const exps[] = {"rank", "ts", "il"};
    for (size_t x = 0; x < MM_ARRAY_LEN(exps); x++)
        for (int a = 0; a < 2; a++) {
            const arm_stats_t *s = stats(t, exps[x], a);
            assert_int_equal(s->feedback, 0);
            assert_true(s->reward_sum == 0 && s->reward_sq_sum == 0);
            assert_true(s->successes == 0 && s->failures == 0);
            assert_int_equal(marm(t, exps[x], a)->feedback, 0);
        }
}

/* A request id is credited to the arm it resolves to, and only that one. */
static void test_reward_by_request_id_goes_to_its_arm(void **state)
{
    rig_t *t = *state;
    post_counts(t, "{\"request_id\": \"req-b\", \"reward\": 0.5}", 1, 0, 0);
    const arm_stats_t *b = stats(t, "rank", 1), *a = stats(t, "rank", 0);
    assert_int_equal(b->feedback, 1);
    assert_true(b->reward_sum == 0.5);
    assert_true(b->reward_sq_sum == 0.25);
    assert_true(b->successes == 0 && b->failures == 0); /* not a Bernoulli experiment */
    assert_int_equal(a->feedback, 0);
    assert_true(a->reward_sum == 0);
    assert_int_equal(marm(t, "rank", 1)->feedback, 1);
    assert_true(marm(t, "rank", 1)->reward_sum == 0.5);
    assert_int_equal(marm(t, "rank", 0)->feedback, 0);
    /* the same id again: feedback is not deduplicated, it counts again */
    post_counts(t, "{\"request_id\": \"req-b\", \"reward\": -2}", 1, 0, 0);
    assert_int_equal(b->feedback, 2);
    assert_true(b->reward_sum == -1.5); /* rewards may be negative */
    assert_true(b->reward_sq_sum == 4.25);
}

/* {"experiment", "arm", "reward"} names its target without a request id. */
static void test_reward_by_experiment_and_arm(void **state)
{
    rig_t *t = *state;
    post_counts(t, "{\"experiment\": \"rank\", \"arm\": \"a\", \"reward\": 3}", 1, 0, 0);
    assert_int_equal(stats(t, "rank", 0)->feedback, 1);
    assert_true(stats(t, "rank", 0)->reward_sum == 3);
    assert_int_equal(stats(t, "rank", 1)->feedback, 0);
    /* not configured: unknown, nothing counted */
    post_counts(t, "{\"experiment\": \"nope\", \"arm\": \"a\", \"reward\": 1}", 0, 1, 0);
    post_counts(t, "{\"experiment\": \"rank\", \"arm\": \"c\", \"reward\": 1}", 0, 1, 0);
    post_counts(t, "{\"request_id\": \"never-seen\", \"reward\": 1}", 0, 1, 0);
    assert_int_equal(stats(t, "rank", 0)->feedback, 1);
    assert_int_equal(stats(t, "rank", 1)->feedback, 0);
}

/* reward "bernoulli": r in [0, 1] counts successes += r, failures += 1 - r;
 * outside it the event is invalid and nothing is counted. */
static void test_bernoulli_range(void **state)
{
    rig_t *t = *state;
    const arm_stats_t *b = stats(t, "ts", 1);
    post_counts(t, "{\"request_id\": \"ts-b\", \"reward\": 0.25}", 1, 0, 0);
    assert_int_equal(b->feedback, 1);
    assert_true(b->successes == 0.25);
    assert_true(b->failures == 0.75);
    post_counts(t, "{\"request_id\": \"ts-b\", \"reward\": 1}", 1, 0, 0);
    post_counts(t, "{\"request_id\": \"ts-b\", \"reward\": 0}", 1, 0, 0);
    assert_int_equal(b->feedback, 3);
    assert_true(b->successes == 1.25);
    assert_true(b->failures == 1.75);
    post_counts(t, "{\"request_id\": \"ts-b\", \"reward\": 1.5}", 0, 0, 1);
    post_counts(t, "{\"request_id\": \"ts-b\", \"reward\": -0.1}", 0, 0, 1);
    post_counts(t, "{\"experiment\": \"ts\", \"arm\": \"a\", \"reward\": 2}", 0, 0, 1);
    assert_int_equal(b->feedback, 3);
    assert_true(b->successes == 1.25 && b->failures == 1.75);
    assert_int_equal(stats(t, "ts", 0)->feedback, 0);
    assert_int_equal(marm(t, "ts", 1)->feedback, 3);
}

/* A reward beyond +-1e100 could make the arm's sums (added up by a whole
 * fleet) infinite: invalid, not applied (README). */
static void test_reward_that_overflows_is_invalid(void **state)
{
    rig_t *t = *state;
    post_counts(t, "{\"request_id\": \"req-a\", \"reward\": 1e300}", 0, 0, 1);
    post_counts(t, "{\"request_id\": \"req-a\", \"reward\": 1e101}", 0, 0, 1);
    assert_int_equal(stats(t, "rank", 0)->feedback, 0);
    assert_true(isfinite(stats(t, "rank", 0)->reward_sq_sum));
    assert_int_equal(marm(t, "rank", 0)->feedback, 0);
}

/* In a batch every event is counted once, in its category; the good ones
 * are applied whatever the others are. */
static void test_batch_counts_each_event(void **state)
{
    rig_t *t = *state;
    post_counts(t,
                "{\"events\": ["
                "{\"request_id\": \"req-a\", \"reward\": 1},"             /* accepted */
                "{\"request_id\": \"req-a\", \"reward\": 2},"             /* accepted */
                "{\"request_id\": \"gone\", \"reward\": 1},"              /* unknown */
                "{\"experiment\": \"x\", \"arm\": \"a\", \"reward\": 1}," /* unknown */
                "{\"request_id\": \"req-b\", \"reward\": \"high\"},"      /* malformed */
                "{\"request_id\": \"req-b\"},"                            /* malformed */
                "{\"request_id\": \"req-b\", \"reward\": 1, \"x\": 1},"   /* malformed */
                "7,"                                                      /* malformed */
                "{\"request_id\": \"ts-b\", \"reward\": 3},"              /* rejected */
                "{\"request_id\": \"ts-b\", \"reward\": 1}"               /* accepted */
                "]}",
                3, 2, 5);
    assert_int_equal(stats(t, "rank", 0)->feedback, 2);
    assert_true(stats(t, "rank", 0)->reward_sum == 3);
    assert_int_equal(stats(t, "rank", 1)->feedback, 0); /* its events were all malformed */
    assert_int_equal(stats(t, "ts", 1)->feedback, 1);
    assert_true(stats(t, "ts", 1)->successes == 1 && stats(t, "ts", 1)->failures == 0);
    post_counts(t, "{\"events\": []}", 0, 0, 0);
}

/* `n` copies of `event` as a batch body; the caller frees it. */
static char *batch_of(const char *event, size_t n)
{
    mm_buf_t b;
    mm_buf_init(&b);
    mm_buf_lit(&b, "{\"events\": [");
    for (size_t i = 0; i < n; i++) {
        if (i) mm_buf_lit(&b, ",");
        mm_buf_cstr(&b, event);
    }
    mm_buf_append(&b, "]}", 3); /* with the NUL: a C string */
    assert_false(b.oom);
    return b.p;
}

/* POST body; expect 413 body_too_large and nothing applied. */
static void post_413(rig_t *t, const char *body)
{
    rig_resp_t r;
    rig_call(t, t->data_port, "POST", FEEDBACK, NULL, body, &r);
    rig_assert_error(&r, 413, "body_too_large");
    rig_assert_message_has(&r, "at most 10000 events");
    rig_resp_free(&r);
    assert_untouched(t);
}

/* A batch holds at most 10000 events. Parsed, each event costs some
 * hundreds of bytes: a 4 MiB body of empty events ("{},{},...", 1.4 million
 * of them) held 700 MB for one unauthenticated request. Larger batches,
 * and bodies with more JSON values than such a batch can hold, are refused
 * whole (413) before they are parsed; 10000 events are applied. */
static void test_batch_size_is_bounded(void **state)
{
    rig_t *t = *state;
    char *body = batch_of("{\"request_id\": \"req-a\", \"reward\": 1}", 10001);
    post_413(t, body);
    free(body);
    body = batch_of("{}", 4 * 1024 * 1024 / 3 - 8); /* just under the 4 MiB body limit */
    post_413(t, body);
    free(body);
    body = batch_of("0", 1000000);
    post_413(t, body);
    free(body);
    body = batch_of("{\"request_id\": \"req-a\", \"reward\": 1}", 10000);
    post_counts(t, body, 10000, 0, 0);
    free(body);
    assert_int_equal(stats(t, "rank", 0)->feedback, 10000);
    /* brackets and commas inside strings are no values: a long item id
     * full of them still makes one event */
    char item[FB_ITEM_MAX_TEST + 1];
    memset(item, ',', FB_ITEM_MAX_TEST);
    item[FB_ITEM_MAX_TEST] = '\0';
    mm_buf_t ev;
    mm_buf_init(&ev);
    mm_buf_printf(
        &ev, "{\"experiment\": \"rank\", \"arm\": \"b\", \"reward\": 1, \"item\": \"%s\"}", item);
    body = batch_of(ev.p, 200);      /* 200 * 1024 commas in strings, far over the value bound */
    post_counts(t, body, 0, 0, 200); /* 200 events, each invalid: items are for interleave */
    free(body);
    mm_buf_free(&ev);
}

/* A body that is not one event or a batch is refused whole (400, the §4
 * error shape, the reason in the message) and nothing is applied. */
static void test_malformed_body_is_400_and_applies_nothing(void **state)
{
    rig_t *t = *state;
    post_400(t, "{\"request_id\": \"req-a\", \"reward\": ", "invalid JSON");
    /* no body, and valid JSON that is no object: not "invalid JSON" */
    post_400(t, "", "a JSON object (one event, or {\"events\": [...]}) is required");
    post_400(t, " \r\n", "a JSON object (one event, or {\"events\": [...]}) is required");
    post_400(t, "null",
             "the body must be a JSON object (one event, or {\"events\": [...]}), got null");
    post_400(t, "\"x\"",
             "the body must be a JSON object (one event, or {\"events\": [...]}), got "
             "\"x\"");
    post_400(t, "[{\"request_id\": \"req-a\", \"reward\": 1}]",
             "the body must be a JSON object (one event, or {\"events\": [...]}), got an array");
    post_400(t, "nul", "invalid JSON at line 1 column 3: ");
    post_400(t, "{\"request_id\": \"req-a\", \"reward\": 1, \"reward\": 2}", "invalid JSON");
    post_400(t, "{\"request_id\": \"req-a\", \"reward\": \"1\"}", "reward must be a finite number");
    post_400(t, "{\"request_id\": \"req-a\", \"reward\": null}", "reward must be a finite number");
    post_400(t, "{\"request_id\": \"req-a\"}", "reward is missing (a click has an item instead)");
    post_400(t, "{\"request_id\": \"req-a\", \"reward\": 1, \"score\": 1}", "unknown key");
    post_400(t, "{\"reward\": 1}", "needs either request_id, or experiment and arm");
    post_400(t, "{\"experiment\": \"rank\", \"reward\": 1}", "experiment and arm");
    post_400(t,
             "{\"request_id\": \"req-a\", \"experiment\": \"rank\", \"arm\": \"a\", \"reward\": 1}",
             "has both request_id and experiment/arm: give one or the other");
    post_400(t, "{\"arm\": \"a\", \"reward\": 1}",
             "needs both experiment and arm (or a request_id instead)");
    post_400(t, "{\"request_id\": \"bad id!\", \"reward\": 1}", "request_id must be");
    post_400(t, "{\"experiment\": \"r k\", \"arm\": \"a\", \"reward\": 1}", "experiment must be");
    post_400(t, "{\"events\": {\"request_id\": \"req-a\", \"reward\": 1}}", "a batch is");
    post_400(t, "{\"events\": [], \"request_id\": \"req-a\", \"reward\": 1}", "a batch is");
    assert_untouched(t);
}

/* The error's request_id is the client's X-Request-Id when it sent one. */
static void test_error_carries_the_clients_request_id(void **state)
{
    rig_t *t = *state;
    rig_resp_t r;
    rig_call(t, t->data_port, "POST", FEEDBACK, "X-Request-Id: fb-err-1\r\n", "{}", &r);
    rig_assert_error(&r, 400, "bad_request");
    assert_string_equal(json_string_value(json_object_get(r.json, "request_id")), "fb-err-1");
    rig_resp_free(&r);
}

/* Feedback takes POST only: 405 with Allow. */
static void test_get_is_405(void **state)
{
    rig_t *t = *state;
    rig_resp_t r;
    rig_call(t, t->data_port, "GET", FEEDBACK, NULL, NULL, &r);
    rig_assert_error(&r, 405, "method_not_allowed");
    char v[64];
    assert_non_null(rig_header(&r, "Allow", v, sizeof(v)));
    assert_string_equal(v, "POST");
    rig_resp_free(&r);
}

/* While an experiment is paused, feedback is still answered and counted
 * (README: learned from only after resume; the policy sees `frozen`). */
static void test_paused_experiment_still_counts_feedback(void **state)
{
    rig_t *t = *state;
    exp_state_t *st = rig_exp(t, "rank")->state;
    exp_control_t ctl = st->control;
    ctl.state = EXP_PAUSED;
    store_set_control(t->srv.store, st, &ctl);
    post_counts(t, "{\"request_id\": \"req-a\", \"reward\": 1}", 1, 0, 0);
    assert_int_equal(st->merged[0].feedback, 1);
    assert_int_equal(st->frozen[0].feedback, 0);
}

/* ---- interleave clicks ---- */

/* The attribution combine() leaves for a merged answer: positions 0 and 2
 * from team a (items 7 and 9), 1 from team b (item 8), nothing clicked. */
static const char AUX[] = "{\"v\":1,\"t\":\"aba\",\"c\":\"000\",\"i\":[\"7\",\"8\",\"9\"]}";

/* As the core keeps it: after the reset mark of the statistics the
 * impression was counted in (feedback_aux_begin). */
static void put_impression(rig_t *t, const char *id)
{
    mm_str_t rid = {id, strlen(id)};
    mm_buf_t kept;
    mm_buf_init(&kept);
    feedback_aux_begin(&kept, rig_exp(t, "il")->state);
    mm_buf_cstr(&kept, AUX);
    store_remember(t->srv.store, rid, "il", "interleave", 3600);
    store_put_aux(t->srv.store, rid, kept.p, kept.len, 3600);
    mm_buf_free(&kept);
}

typedef struct {
    int found;
    char data[256];
} aux_got_t;

static void on_aux(void *arg, int found, const char *data, size_t n)
{
    aux_got_t *g = arg;
    g->found = found;
    snprintf(g->data, sizeof(g->data), "%.*s", (int)n, data);
}

static void assert_aux(rig_t *t, const char *id, const char *want)
{
    aux_got_t g = {0};
    store_get_aux(t->srv.store, (mm_str_t){id, strlen(id)}, on_aux, &g);
    assert_true(g.found);
    assert_string_equal(g.data, want);
}

/* A click credits the team that placed the item: the impression turns from
 * no click to a win for that team (feedback on both arms, reward_sum and a
 * success on the winner), and the attribution records the click. */
static void test_click_credits_the_team_that_placed_the_item(void **state)
{
    rig_t *t = *state;
    put_impression(t, "imp-1");
    post_counts(t, "{\"request_id\": \"imp-1\", \"item\": 8}", 1, 0, 0); /* integer id = "8" */
    const arm_stats_t *a = stats(t, "il", 0), *b = stats(t, "il", 1);
    assert_int_equal(a->feedback, 1);
    assert_int_equal(b->feedback, 1);
    assert_true(b->reward_sum == 1 && a->reward_sum == 0);
    assert_true(b->successes == 1 && a->successes == 0); /* a win for B */
    assert_int_equal(marm(t, "il", 1)->feedback, 1);
    assert_int_equal(marm(t, "il", 0)->feedback, 0);
    assert_aux(t, "imp-1", "0.0 {\"v\":1,\"t\":\"aba\",\"c\":\"010\",\"i\":[\"7\",\"8\",\"9\"]}");
}

/* In one batch, in order: a click on an item of team a makes the
 * impression a tie, the same click again changes nothing (accepted, counted
 * once), an item not shown is invalid. */
static void test_clicks_in_one_batch_apply_in_order(void **state)
{
    rig_t *t = *state;
    put_impression(t, "imp-2");
    post_counts(t,
                "{\"events\": [{\"request_id\": \"imp-2\", \"item\": \"8\"},"
                "{\"request_id\": \"imp-2\", \"item\": \"7\"},"
                "{\"request_id\": \"imp-2\", \"item\": \"7\"},"
                "{\"request_id\": \"imp-2\", \"item\": \"42\"}]}",
                3, 0, 1);
    const arm_stats_t *a = stats(t, "il", 0), *b = stats(t, "il", 1);
    assert_int_equal(a->feedback, 1); /* one clicked impression */
    assert_int_equal(b->feedback, 1);
    assert_true(a->reward_sum == 1 && b->reward_sum == 1);
    assert_true(a->successes == 0 && b->successes == 0); /* the win for B became a tie */
    assert_true(a->failures == 1);                       /* ties are counted on arm a */
    assert_aux(t, "imp-2", "0.0 {\"v\":1,\"t\":\"aba\",\"c\":\"110\",\"i\":[\"7\",\"8\",\"9\"]}");
}

/* Clicks need an interleave attribution; rewards are not for interleave. */
static void test_click_and_reward_targets(void **state)
{
    rig_t *t = *state;
    store_remember(t->srv.store, (mm_str_t){"imp-none", 8}, "il", "interleave", 3600);
    post_counts(t, "{\"request_id\": \"imp-none\", \"item\": 7}", 0, 1, 0); /* no attribution */
    post_counts(t, "{\"request_id\": \"nowhere\", \"item\": 7}", 0, 1, 0);  /* no such id */
    post_counts(t, "{\"request_id\": \"req-a\", \"item\": 7}", 0, 0, 1);    /* an ab request */
    post_counts(t, "{\"experiment\": \"il\", \"arm\": \"a\", \"item\": 7}", 0, 0, 1);
    /* an item for an experiment that is not an interleaving, reward or not */
    post_counts(t, "{\"experiment\": \"rank\", \"arm\": \"a\", \"reward\": 1, \"item\": 7}", 0, 0,
                1);
    post_counts(t, "{\"request_id\": \"req-a\", \"reward\": 1, \"item\": 7}", 0, 0, 1);
    put_impression(t, "imp-3");
    post_counts(t, "{\"request_id\": \"imp-3\", \"reward\": 1}", 0, 0, 1);
    post_counts(t, "{\"experiment\": \"il\", \"arm\": \"a\", \"reward\": 1}", 0, 0, 1);
    post_400(t, "{\"request_id\": \"imp-3\", \"item\": 1.5}", "item must be");
    post_400(t, "{\"request_id\": \"imp-3\", \"item\": \"\"}", "item must be");
    assert_untouched(t);
    assert_aux(t, "imp-3", "0.0 {\"v\":1,\"t\":\"aba\",\"c\":\"000\",\"i\":[\"7\",\"8\",\"9\"]}");
}

/* A reset forgets the impressions served before it: their earlier clicks
 * were counted in statistics that are gone, so a click on one now is
 * unknown (crediting it would take a win back from emptied counters), and
 * an impression served after the reset takes clicks as before. */
static void test_a_reset_forgets_open_impressions(void **state)
{
    rig_t *t = *state;
    put_impression(t, "imp-old");
    post_counts(t, "{\"request_id\": \"imp-old\", \"item\": 7}", 1, 0, 0); /* a win for A */
    store_reset(t->srv.store, rig_exp(t, "il")->state);
    post_counts(t, "{\"request_id\": \"imp-old\", \"item\": 8}", 0, 1, 0);
    const arm_stats_t *a = stats(t, "il", 0), *b = stats(t, "il", 1);
    assert_true(a->successes == 0 && a->failures == 0 && a->feedback == 0);
    assert_true(b->successes == 0 && b->reward_sum == 0 && b->feedback == 0);
    put_impression(t, "imp-new");
    post_counts(t, "{\"request_id\": \"imp-new\", \"item\": 8}", 1, 0, 0);
    assert_true(b->successes == 1 && b->feedback == 1 && a->feedback == 1);
    assert_aux(t, "imp-new", "0.1 {\"v\":1,\"t\":\"aba\",\"c\":\"010\",\"i\":[\"7\",\"8\",\"9\"]}");
}

/* A reward is any finite number, and JSON bounds no integer's digits: one
 * beyond 64 bits is a number, not a syntax error that costs the batch. */
static void test_integers_beyond_64_bits_are_numbers(void **state)
{
    rig_t *t = *state;
    post_counts(t, "{\"experiment\": \"rank\", \"arm\": \"a\", \"reward\": 100000000000000000000}",
                1, 0, 0);
    assert_true(stats(t, "rank", 0)->reward_sum == 1e20);
    post_counts(t,
                "{\"events\": [{\"experiment\": \"rank\", \"arm\": \"b\", \"reward\": 1},"
                "{\"experiment\": \"rank\", \"arm\": \"b\", \"reward\": -18446744073709551616}]}",
                2, 0, 0);
    assert_int_equal(stats(t, "rank", 1)->feedback, 2);
    assert_true(stats(t, "rank", 1)->reward_sum == 1 - 18446744073709551616.0);
    /* beyond the reward bound (1e100) written out in digits: invalid, not 400 */
    char big[160];
    snprintf(big, sizeof(big), "{\"experiment\": \"rank\", \"arm\": \"a\", \"reward\": 1%0101d}",
             0);
    post_counts(t, big, 0, 0, 1);
    /* an item id in such a body is still the id it was */
    put_impression(t, "imp-1");
    post_counts(t,
                "{\"events\": [{\"request_id\": \"imp-1\", \"item\": 8},"
                "{\"experiment\": \"rank\", \"arm\": \"a\", \"reward\": 100000000000000000000}]}",
                2, 0, 0);
    assert_true(stats(t, "il", 1)->successes == 1); /* item 8: team b's, as in the test below */
}

/* \u0000 in a value is refused in that event alone: the batch's other
 * events are applied, and no field is read as its part before the NUL. */
static void test_a_nul_in_a_value_costs_its_event_only(void **state)
{
    rig_t *t = *state;
    post_counts(t,
                "{\"events\": [{\"experiment\": \"rank\", \"arm\": \"a\", \"reward\": 1},"
                "{\"experiment\": \"rank\", \"arm\": \"a\\u0000x\", \"reward\": 1},"
                "{\"experiment\": \"ra\\u0000nk\", \"arm\": \"a\", \"reward\": 1},"
                "{\"request_id\": \"req-a\\u0000x\", \"reward\": 1},"
                "{\"request_id\": \"req-b\", \"reward\": 1}]}",
                2, 0, 3);
    assert_int_equal(stats(t, "rank", 0)->feedback, 1);
    assert_int_equal(stats(t, "rank", 1)->feedback, 1);
    post_400(t, "{\"request_id\": \"req-a\\u0000\", \"reward\": 1}",
             "event.request_id must be 1-128 characters");
    assert_int_equal(stats(t, "rank", 0)->feedback, 1);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, rig_teardown)
    const struct CMUnitTest tests[] = {
        T(test_reward_by_request_id_goes_to_its_arm),
        T(test_reward_by_experiment_and_arm),
        T(test_bernoulli_range),
        T(test_reward_that_overflows_is_invalid),
        T(test_batch_counts_each_event),
        T(test_batch_size_is_bounded),
        T(test_malformed_body_is_400_and_applies_nothing),
        T(test_error_carries_the_clients_request_id),
        T(test_get_is_405),
        T(test_paused_experiment_still_counts_feedback),
        T(test_click_credits_the_team_that_placed_the_item),
        T(test_clicks_in_one_batch_apply_in_order),
        T(test_click_and_reward_targets),
        T(test_a_reset_forgets_open_impressions),
        T(test_integers_beyond_64_bits_are_numbers),
        T(test_a_nul_in_a_value_costs_its_event_only),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
