/* test_canary.c — the canary policy: every branch of the step machine,
 * traffic split and sticky monotonicity, describe(), and config errors.
 *
 * The policy is built through config_parse() like in production; the test
 * plays the core and the store: it counts answers into the view's pooled
 * answer statistics (alternately into the snapshot and the local part, so
 * the policy must read both) and calls on_tick with a hand-made clock and
 * control state, so every transition is deterministic. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "refusal.h"
#include "policy.h"
#include "rng.h"

#define UPSTREAMS                                                                                  \
    "\"upstreams\": {\"champion\": {\"url\": \"http://127.0.0.1:7001\"},\n"                        \
    "              \"challenger\": {\"url\": \"http://127.0.0.1:7002\"}},\n"

typedef struct {
    config_t *cfg;
    const policy_ops_t *ops;
    void *p;
    exp_control_t ctl;
    arm_stats_t stats[2];
    answer_stats_t ans[2], local[2]; /* the pooled answers: snapshot, local part */
    unsigned fed;
    mm_rng_t rng;
    policy_view_t v;
} fx_t;

static int exp_text(const char *params, char *text, size_t n);

/* Build a config with one canary experiment whose policy keys are `params`. */
static config_t *parse_exp(const char *params, char *err, size_t errlen)
{
    char text[4096];
    int n = exp_text(params, text, sizeof text);
    return config_parse(text, (size_t)n, "test.json", err, errlen);
}

static void fx_init(fx_t *f, const char *params)
{
    char err[512];
    memset(f, 0, sizeof *f);
    f->cfg = parse_exp(params, err, sizeof err);
    if (f->cfg == NULL) fail_msg("config: %s", err);
    assert_int_equal(f->cfg->n_experiments, 1);
    f->ops = f->cfg->experiments[0].ops;
    f->p = f->cfg->experiments[0].policy;
    assert_string_equal(f->ops->name, "canary");
    mm_rng_seed(&f->rng, 42);
    f->ctl.state = EXP_RUNNING;
    f->v.n_arms = 2;
    f->v.stats = f->stats;
    f->v.control = &f->ctl;
    f->v.rng = &f->rng;
    f->v.answers = f->ans;
    f->v.answers_local = f->local;
}

static void fx_free(fx_t *f)
{
    config_free(f->cfg);
}

static int tick(fx_t *f, uint64_t now_ms)
{
    f->v.now_ms = now_ms;
    return f->ops->on_tick(f->p, &f->v, &f->ctl);
}

/* One answer, counted as the store counts it (store_answer), alternately
 * into the snapshot and the local part of the view. */
static void answer(fx_t *f, int arm, int status, uint64_t latency_us)
{
    answer_stats_t *a = (f->fed++ & 1) ? &f->local[arm] : &f->ans[arm];
    a->answers++;
    if (status == 0 || status >= 500) a->errors++;
    if (status != 0) {
        a->hist[lathist_index(latency_us)]++;
        a->samples++;
    }
}

/* n answers from arm, of which `errors` are 503, each taking latency_ms. */
static void feed(fx_t *f, int arm, int n, int errors, double latency_ms)
{
    for (int i = 0; i < n; i++)
        answer(f, arm, i < errors ? 503 : 200, (uint64_t)(latency_ms * 1000.0));
}

static json_t *describe(fx_t *f)
{
    return f->ops->describe(f->p, &f->v);
}

static json_int_t last_canary_requests(fx_t *f)
{
    json_t *d = describe(f);
    json_int_t n =
        json_integer_value(json_object_get(json_object_get(d, "last_analysis"), "canary_requests"));
    json_decref(d);
    return n;
}

static const char *last_verdict(fx_t *f, char *buf, size_t n)
{
    json_t *d = describe(f);
    json_t *la = json_object_get(d, "last_analysis");
    snprintf(buf, n, "%s", json_string_value(json_object_get(la, "verdict")));
    json_decref(d);
    return buf;
}

#define BASE                                                                                       \
    "\"champion\": \"champion\", \"canary\": \"challenger\", \"steps\": [1, 5, 25, 50, 100],\n"    \
    "\"step_interval_s\": 10,\n"                                                                   \
    "\"analysis\": {\"min_requests\": 10, \"max_error_rate\": 0.1, \"max_p99_ms\": 500,\n"         \
    "             \"failure_limit\": 2}"

/* ---- the step machine ---- */

static void running_at_step_zero_starts_at_the_first_step(void **state)
{
    fx_t f;
    (void)state;
    fx_init(&f, BASE);
    assert_int_equal(tick(&f, 1000), 1);
    assert_true(f.ctl.canary_step == 1.0);
    assert_int_equal(f.ctl.state, EXP_RUNNING);
    assert_int_equal(f.ctl.has_weights, 0);
    fx_free(&f);
}

static void passed_interval_moves_to_the_next_step(void **state)
{
    fx_t f;
    char v[32];
    (void)state;
    fx_init(&f, BASE);
    tick(&f, 1000);
    feed(&f, 0, 100, 0, 80);
    feed(&f, 1, 20, 1, 100);              /* 5 % errors <= 10 % */
    assert_int_equal(tick(&f, 10999), 0); /* the interval has not elapsed */
    assert_true(f.ctl.canary_step == 1.0);
    assert_int_equal(tick(&f, 11000), 1);
    assert_true(f.ctl.canary_step == 5.0);
    assert_string_equal(last_verdict(&f, v, sizeof v), "passed");
    /* And on through the list. */
    feed(&f, 1, 10, 0, 100);
    assert_int_equal(tick(&f, 21000), 1);
    assert_true(f.ctl.canary_step == 25.0);
    fx_free(&f);
}

static void too_few_canary_requests_hold_the_step_and_restart_the_interval(void **state)
{
    fx_t f;
    char v[32];
    (void)state;
    fx_init(&f, BASE);
    tick(&f, 0);
    feed(&f, 1, 9, 0, 100);
    assert_int_equal(tick(&f, 10000), 0);
    assert_true(f.ctl.canary_step == 1.0);
    assert_string_equal(last_verdict(&f, v, sizeof v), "inconclusive");
    /* The 9 do not carry over: 6 more are still too few. */
    feed(&f, 1, 6, 0, 100);
    assert_int_equal(tick(&f, 20000), 0);
    assert_string_equal(last_verdict(&f, v, sizeof v), "inconclusive");
    feed(&f, 1, 10, 0, 100);
    assert_int_equal(tick(&f, 30000), 1);
    assert_true(f.ctl.canary_step == 5.0);
    fx_free(&f);
}

/* An operator's promote or rollback (the admin API calls on_operator) is
 * in the history next to the analyses, without counts: the view said why
 * a canary moved only when an analysis moved it. */
static void an_operators_change_is_in_the_history(void **state)
{
    fx_t f;
    char v[32];
    (void)state;
    fx_init(&f, BASE);
    tick(&f, 0); /* started at 1 */
    exp_control_t from = f.ctl, to = f.ctl;
    to.state = EXP_ROLLED_BACK;
    to.canary_step = 0.0;
    f.ops->on_operator(f.p, "rollback", &from, &to, 5000);
    f.ctl = to;
    f.v.now_ms = 7000;
    assert_string_equal(last_verdict(&f, v, sizeof v), "operator");
    json_t *d = describe(&f);
    json_t *la = json_object_get(d, "last_analysis");
    assert_true(json_number_value(json_object_get(la, "from")) == 1.0);
    assert_true(json_number_value(json_object_get(la, "to")) == 0.0);
    assert_string_equal(json_string_value(json_object_get(la, "state")), "rolled_back");
    assert_string_equal(json_string_value(json_object_get(la, "reason")),
                        "rollback through the admin API");
    assert_true(fabs(json_number_value(json_object_get(la, "age_s")) - 2.0) < 1e-9);
    assert_null(json_object_get(la, "canary_requests"));
    assert_int_equal(json_array_size(json_object_get(d, "history")), 2);
    json_decref(d);
    assert_int_equal(tick(&f, 60000), 0); /* rolled back: no analysis follows */
    fx_free(&f);
}

/* An interval without answers from an arm has no error rate for it: the
 * analysis says null (as the interval view does), not 0.0, in
 * last_analysis and in the history entry alike. */
static void analysis_without_answers_has_null_error_rates(void **state)
{
    fx_t f;
    (void)state;
    fx_init(&f, BASE);
    tick(&f, 0);
    assert_int_equal(tick(&f, 10000), 0); /* nothing at all */
    feed(&f, 0, 20, 2, 100);              /* only the champion answers */
    assert_int_equal(tick(&f, 20000), 0);
    json_t *d = describe(&f);
    json_t *hist = json_object_get(d, "history");
    assert_true(json_array_size(hist) >= 3);
    const json_t *none = json_array_get(hist, json_array_size(hist) - 2);
    const json_t *champ = json_array_get(hist, json_array_size(hist) - 1);
    assert_true(json_equal(champ, json_object_get(d, "last_analysis")));
    assert_int_equal(json_integer_value(json_object_get(none, "canary_requests")), 0);
    assert_int_equal(json_integer_value(json_object_get(none, "champion_requests")), 0);
    assert_true(json_is_null(json_object_get(none, "canary_error_rate")));
    assert_true(json_is_null(json_object_get(none, "champion_error_rate")));
    assert_int_equal(json_integer_value(json_object_get(champ, "canary_requests")), 0);
    assert_true(json_is_null(json_object_get(champ, "canary_error_rate")));
    assert_true(fabs(json_number_value(json_object_get(champ, "champion_error_rate")) - 0.1) <
                1e-9);
    json_decref(d);
    fx_free(&f);
}

static void no_canary_answer_is_inconclusive_even_with_min_requests_zero(void **state)
{
    fx_t f;
    char v[32];
    (void)state;
    fx_init(&f, "\"champion\": \"champion\", \"canary\": \"challenger\", \"step_interval_s\": 1,"
                "\"analysis\": {\"min_requests\": 0}");
    tick(&f, 0);
    feed(&f, 0, 50, 0, 10);
    assert_int_equal(tick(&f, 1000), 0);
    assert_string_equal(last_verdict(&f, v, sizeof v), "inconclusive");
    feed(&f, 1, 1, 0, 10);
    assert_int_equal(tick(&f, 2000), 1);
    assert_true(f.ctl.canary_step == 5.0);
    fx_free(&f);
}

static void failed_interval_below_the_limit_holds(void **state)
{
    fx_t f;
    char v[32];
    (void)state;
    fx_init(&f, BASE);
    tick(&f, 0);
    feed(&f, 1, 20, 5, 100); /* 25 % errors */
    assert_int_equal(tick(&f, 10000), 0);
    assert_true(f.ctl.canary_step == 1.0);
    assert_int_equal(f.ctl.state, EXP_RUNNING);
    assert_string_equal(last_verdict(&f, v, sizeof v), "failed");
    json_t *d = describe(&f);
    assert_int_equal(json_integer_value(json_object_get(d, "failures")), 1);
    json_decref(d);
    fx_free(&f);
}

static void failed_intervals_at_the_limit_roll_back(void **state)
{
    fx_t f;
    (void)state;
    fx_init(&f, BASE);
    tick(&f, 0);
    feed(&f, 1, 20, 5, 100);
    assert_int_equal(tick(&f, 10000), 0);
    feed(&f, 1, 20, 0, 900); /* p99 900 ms > 500 ms */
    assert_int_equal(tick(&f, 20000), 1);
    assert_true(f.ctl.canary_step == 0.0);
    assert_int_equal(f.ctl.state, EXP_ROLLED_BACK);
    assert_int_equal(f.ctl.has_weights, 1);
    assert_true(f.ctl.weights[0] == 100.0);
    assert_true(f.ctl.weights[1] == 0.0);
    /* Rolled back: no more steps, whatever happens. */
    feed(&f, 1, 100, 0, 10);
    assert_int_equal(tick(&f, 40000), 0);
    assert_int_equal(f.ctl.state, EXP_ROLLED_BACK);
    fx_free(&f);
}

static void a_pass_resets_the_consecutive_failures(void **state)
{
    fx_t f;
    (void)state;
    fx_init(&f, BASE);
    tick(&f, 0);
    feed(&f, 1, 20, 5, 100);
    tick(&f, 10000); /* failed 1/2 */
    feed(&f, 1, 20, 0, 100);
    assert_int_equal(tick(&f, 20000), 1); /* passed: 1 -> 5, failures 0 */
    feed(&f, 1, 20, 5, 100);
    assert_int_equal(tick(&f, 30000), 0); /* failed 1/2 again, not rolled back */
    assert_int_equal(f.ctl.state, EXP_RUNNING);
    assert_true(f.ctl.canary_step == 5.0);
    fx_free(&f);
}

static void error_rate_delta_against_the_champion_fails(void **state)
{
    fx_t f;
    char v[32];
    (void)state;
    fx_init(&f, "\"champion\": \"champion\", \"canary\": \"challenger\", \"step_interval_s\": 1,"
                "\"analysis\": {\"min_requests\": 10, \"max_error_rate\": 0.5,"
                "              \"max_error_rate_delta\": 0.02}");
    tick(&f, 0);
    feed(&f, 0, 100, 1, 10);             /* champion 1 % */
    feed(&f, 1, 100, 5, 10);             /* canary 5 %: delta 4 points > 2 */
    assert_int_equal(tick(&f, 1000), 1); /* failure_limit 1: rolled back at once */
    assert_int_equal(f.ctl.state, EXP_ROLLED_BACK);
    assert_string_equal(last_verdict(&f, v, sizeof v), "failed");
    json_t *d = describe(&f);
    const char *reason =
        json_string_value(json_object_get(json_object_get(d, "last_analysis"), "reason"));
    assert_non_null(strstr(reason, "delta 0.040 > 0.020"));
    json_decref(d);
    fx_free(&f);
}

/* At 100 % the champion answers nothing: its 0/0 error rate is no baseline,
 * so a canary as reliable as the champion (3 % errors, delta limit 1 point)
 * must not fail the delta check against a made-up 0 % and be rolled back. */
static void error_rate_delta_without_champion_answers_is_not_judged(void **state)
{
    fx_t f;
    char v[32];
    (void)state;
    fx_init(&f, "\"champion\": \"champion\", \"canary\": \"challenger\", \"steps\": [50, 100],"
                "\"step_interval_s\": 1, \"analysis\": {\"min_requests\": 10,"
                "\"max_error_rate\": 0.05, \"max_error_rate_delta\": 0.01}");
    tick(&f, 0);
    feed(&f, 0, 100, 3, 10); /* champion 3 % */
    feed(&f, 1, 100, 3, 10); /* canary 3 %: delta 0 */
    assert_int_equal(tick(&f, 1000), 1);
    assert_true(f.ctl.canary_step == 100.0);
    feed(&f, 1, 100, 3, 10); /* all traffic on the canary, still 3 % */
    assert_int_equal(tick(&f, 2000), 1);
    assert_string_equal(last_verdict(&f, v, sizeof v), "passed");
    assert_int_equal(f.ctl.state, EXP_PROMOTED);
    json_t *d = describe(&f);
    json_t *la = json_object_get(d, "last_analysis");
    assert_true(json_is_null(json_object_get(la, "champion_error_rate")));
    assert_non_null(strstr(json_string_value(json_object_get(la, "reason")), "delta n/a"));
    json_decref(d);
    fx_free(&f);
}

static void transport_failures_count_as_errors(void **state)
{
    fx_t f;
    (void)state;
    fx_init(&f, "\"champion\": \"champion\", \"canary\": \"challenger\", \"step_interval_s\": 1,"
                "\"analysis\": {\"min_requests\": 10, \"max_error_rate\": 0.1}");
    tick(&f, 0);
    for (int i = 0; i < 10; i++) answer(&f, 1, i < 2 ? 0 : 200, 5000);
    assert_int_equal(tick(&f, 1000), 1);
    assert_int_equal(f.ctl.state, EXP_ROLLED_BACK); /* 20 % > 10 % */
    fx_free(&f);
}

static void passing_at_the_last_step_promotes(void **state)
{
    fx_t f;
    (void)state;
    fx_init(&f, "\"champion\": \"champion\", \"canary\": \"challenger\", \"steps\": [50, 100],"
                "\"step_interval_s\": 1, \"analysis\": {\"min_requests\": 1}");
    assert_int_equal(tick(&f, 0), 1);
    assert_true(f.ctl.canary_step == 50.0);
    feed(&f, 1, 5, 0, 10);
    assert_int_equal(tick(&f, 1000), 1);
    assert_true(f.ctl.canary_step == 100.0);
    assert_int_equal(f.ctl.state, EXP_RUNNING); /* reaching 100 % is not yet promotion */
    feed(&f, 1, 5, 0, 10);
    assert_int_equal(tick(&f, 2000), 1);
    assert_int_equal(f.ctl.state, EXP_PROMOTED);
    assert_true(f.ctl.canary_step == 100.0);
    assert_int_equal(f.ctl.has_weights, 1);
    assert_true(f.ctl.weights[0] == 0.0);
    assert_true(f.ctl.weights[1] == 100.0);
    fx_free(&f);
}

static void last_step_below_100_promotes_to_100(void **state)
{
    fx_t f;
    (void)state;
    fx_init(&f, "\"champion\": \"champion\", \"canary\": \"challenger\", \"steps\": [10],"
                "\"step_interval_s\": 1, \"analysis\": {\"min_requests\": 1}");
    tick(&f, 0);
    feed(&f, 1, 5, 0, 10);
    assert_int_equal(tick(&f, 1000), 1);
    assert_int_equal(f.ctl.state, EXP_PROMOTED);
    assert_true(f.ctl.canary_step == 100.0);
    fx_free(&f);
}

static void on_success_hold_stays_at_the_last_step_under_analysis(void **state)
{
    fx_t f;
    char v[32];
    (void)state;
    fx_init(&f, "\"champion\": \"champion\", \"canary\": \"challenger\", \"steps\": [100],"
                "\"step_interval_s\": 1, \"analysis\": {\"min_requests\": 1},"
                "\"on_success\": \"hold\"");
    tick(&f, 0);
    feed(&f, 1, 5, 0, 10);
    assert_int_equal(tick(&f, 1000), 0);
    assert_int_equal(f.ctl.state, EXP_RUNNING);
    assert_true(f.ctl.canary_step == 100.0);
    assert_string_equal(last_verdict(&f, v, sizeof v), "passed");
    /* Still analysed: a failure rolls it back. */
    feed(&f, 1, 5, 5, 10);
    assert_int_equal(tick(&f, 2000), 1);
    assert_int_equal(f.ctl.state, EXP_ROLLED_BACK);
    fx_free(&f);
}

static void a_step_moved_elsewhere_restarts_the_interval(void **state)
{
    fx_t f;
    (void)state;
    fx_init(&f, BASE);
    tick(&f, 0);
    feed(&f, 1, 50, 0, 10);
    f.ctl.canary_step = 25; /* another instance or the operator moved it */
    assert_int_equal(tick(&f, 10000), 0);
    assert_true(f.ctl.canary_step == 25.0);
    json_t *d = describe(&f);
    json_t *iv = json_object_get(d, "interval");
    assert_true(json_real_value(json_object_get(iv, "step")) == 25.0);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(iv, "canary"), "requests")),
                     0);
    json_decref(d);
    fx_free(&f);
}

static void on_tick_is_a_function_of_its_inputs(void **state)
{
    fx_t a, b;
    (void)state;
    fx_init(&a, BASE);
    fx_init(&b, BASE);
    tick(&a, 500);
    tick(&b, 500);
    feed(&a, 1, 30, 2, 120);
    feed(&b, 1, 30, 2, 120);
    /* Not paused by the core? Defensive anyway: a non-running state is left alone. */
    static const exp_run_state_t frozen[] = {EXP_PAUSED, EXP_PROMOTED, EXP_ROLLED_BACK};
    for (size_t i = 0; i < MM_ARRAY_LEN(frozen); i++) {
        exp_control_t before = a.ctl;
        a.ctl.state = frozen[i];
        before.state = frozen[i];
        assert_int_equal(tick(&a, 1000000), 0);
        assert_memory_equal(&a.ctl, &before, sizeof before);
        a.ctl.state = EXP_RUNNING;
    }
    /* Before the interval ends: nothing changes, however often it is called. */
    exp_control_t before = a.ctl;
    for (int i = 0; i < 5; i++) assert_int_equal(tick(&a, 5000), 0);
    assert_memory_equal(&a.ctl, &before, sizeof before);
    /* The same history and inputs give the same output. */
    assert_int_equal(tick(&a, 10500), tick(&b, 10500));
    assert_memory_equal(&a.ctl, &b.ctl, sizeof a.ctl);
    assert_true(a.ctl.canary_step == 5.0);
    fx_free(&a);
    fx_free(&b);
}

static void reset_forgets_the_interval_and_the_history(void **state)
{
    fx_t f;
    (void)state;
    fx_init(&f, BASE);
    tick(&f, 0);
    feed(&f, 1, 20, 0, 10);
    tick(&f, 10000);
    f.ops->reset(f.p);
    json_t *d = describe(&f);
    assert_int_equal(json_array_size(json_object_get(d, "history")), 0);
    assert_true(json_is_null(json_object_get(d, "interval")));
    assert_true(json_is_null(json_object_get(d, "last_analysis")));
    json_decref(d);
    /* The core puts the initial control back: the canary starts over. */
    memset(&f.ctl, 0, sizeof f.ctl);
    assert_int_equal(tick(&f, 20000), 1);
    assert_true(f.ctl.canary_step == 1.0);
    fx_free(&f);
}

/* A reload of an unchanged config builds a new instance: adopt() hands it
 * the interval in progress, the consecutive failures and the history, so
 * the third failure still rolls back (it was the first again) and the view
 * still says why. A changed definition starts over (the store puts the
 * control back to step 0). */
static void an_unchanged_reload_goes_on_with_the_analysis(void **state)
{
    fx_t f, g, h;
    char v[32];
    (void)state;
    fx_init(&f, BASE); /* failure_limit 2 */
    tick(&f, 0);
    feed(&f, 1, 20, 10, 10);
    tick(&f, 10000); /* failed 1/2 */
    feed(&f, 1, 20, 10, 10);
    fx_init(&g, BASE);
    memcpy(g.ans, f.ans, sizeof g.ans);
    memcpy(g.local, f.local, sizeof g.local);
    g.ctl = f.ctl;
    assert_non_null(g.ops->adopt);
    g.ops->adopt(g.p, f.p, 1);
    assert_string_equal(last_verdict(&g, v, sizeof v), "failed");
    assert_int_equal(tick(&g, 15000), 0); /* the same interval: not over yet */
    assert_int_equal(tick(&g, 20000), 1); /* failed 2/2, with the answers from before */
    assert_int_equal(g.ctl.state, EXP_ROLLED_BACK);
    assert_int_equal(last_canary_requests(&g), 20);
    json_t *d = describe(&g);
    assert_int_equal(json_array_size(json_object_get(d, "history")), 3);
    json_decref(d);

    fx_init(&h, BASE);
    h.ops->adopt(h.p, f.p, 0);
    d = describe(&h);
    assert_int_equal(json_array_size(json_object_get(d, "history")), 0);
    assert_int_equal(json_integer_value(json_object_get(d, "failures")), 0);
    json_decref(d);
    fx_free(&f);
    fx_free(&g);
    fx_free(&h);
}

/* Only a running canary has an interval in progress. */
static void no_interval_unless_running(void **state)
{
    fx_t f;
    (void)state;
    fx_init(&f, BASE);
    tick(&f, 0);
    json_t *d = describe(&f);
    assert_true(json_is_object(json_object_get(d, "interval")));
    json_decref(d);
    static const exp_run_state_t others[] = {EXP_PAUSED, EXP_PROMOTED, EXP_ROLLED_BACK};
    for (size_t i = 0; i < 3; i++) {
        f.ctl.state = others[i];
        d = describe(&f);
        assert_true(json_is_null(json_object_get(d, "interval")));
        json_decref(d);
    }
    /* A rolled-back canary resumed: running at step 0, not started until
     * the next tick, so no interval yet (there was one at 0 % here). */
    f.ctl.state = EXP_RUNNING;
    f.ctl.canary_step = 0;
    f.v.run_epoch++;
    d = describe(&f);
    assert_true(json_is_null(json_object_get(d, "interval")));
    json_decref(d);
    tick(&f, 0);
    d = describe(&f);
    assert_true(json_is_object(json_object_get(d, "interval")));
    json_decref(d);
    fx_free(&f);
}

/* Sub-10 ms latencies and limits keep two decimals in the reason. */
static void the_reason_shows_small_latencies(void **state)
{
    fx_t f;
    (void)state;
    fx_init(&f, "\"champion\": \"champion\", \"canary\": \"challenger\", \"step_interval_s\": 1,"
                "\"analysis\": {\"min_requests\": 10, \"max_p99_ms\": 2.5}");
    tick(&f, 0);
    feed(&f, 1, 20, 0, 0.4);
    tick(&f, 1000);
    json_t *d = describe(&f);
    const char *reason =
        json_string_value(json_object_get(json_object_get(d, "last_analysis"), "reason"));
    assert_non_null(strstr(reason, "p99 0.4"));
    assert_non_null(strstr(reason, "ms <= 2.50 ms"));
    json_decref(d);
    feed(&f, 1, 20, 0, 120);
    tick(&f, 2000);
    d = describe(&f);
    reason = json_string_value(json_object_get(json_object_get(d, "last_analysis"), "reason"));
    const char *p99 = strstr(reason, "p99 ");
    assert_non_null(p99);
    assert_non_null(strstr(reason, " ms > 2.50 ms"));
    assert_int_equal(strspn(p99 + 4, "0123456789"), 3); /* about 120: whole ms */
    assert_string_equal(strstr(p99 + 4, " "), " ms > 2.50 ms");
    json_decref(d);
    fx_free(&f);
}

/* ---- pooled counters (every instance's answers) ---- */

static void the_interval_judges_every_instance_s_answers(void **state)
{
    fx_t f;
    char v[32];
    (void)state;
    fx_init(&f, BASE); /* min_requests 10 */
    tick(&f, 0);
    /* 4 answers seen here, 8 that other instances counted into the store:
     * neither share reaches min_requests, the pool does. */
    feed(&f, 1, 4, 0, 100);
    f.ans[1].answers += 8;
    f.ans[1].samples += 8;
    f.ans[1].hist[lathist_index(100000)] += 8;
    assert_int_equal(tick(&f, 10000), 1);
    assert_string_equal(last_verdict(&f, v, sizeof v), "passed");
    assert_int_equal(last_canary_requests(&f), 12);
    assert_true(f.ctl.canary_step == 5.0);
    fx_free(&f);
}

static void answers_before_the_interval_are_not_judged(void **state)
{
    fx_t f;
    char v[32];
    (void)state;
    fx_init(&f, BASE);
    /* Cumulative counters from before the canary started: all errors, slow. */
    feed(&f, 1, 500, 500, 900);
    feed(&f, 0, 300, 0, 50);
    tick(&f, 0);
    feed(&f, 1, 20, 1, 100); /* the interval: 5 % errors, p99 100 ms */
    assert_int_equal(tick(&f, 10000), 1);
    assert_string_equal(last_verdict(&f, v, sizeof v), "passed");
    assert_int_equal(last_canary_requests(&f), 20);
    json_t *d = describe(&f);
    json_t *la = json_object_get(d, "last_analysis");
    assert_int_equal(json_integer_value(json_object_get(la, "champion_requests")), 0);
    assert_true(fabs(json_real_value(json_object_get(la, "canary_error_rate")) - 0.05) < 1e-9);
    assert_true(fabs(json_real_value(json_object_get(la, "canary_p99_ms")) - 100.0) < 4.0);
    json_decref(d);
    fx_free(&f);
}

static void counters_below_the_snapshot_restart_the_interval(void **state)
{
    fx_t f;
    (void)state;
    fx_init(&f, BASE);
    feed(&f, 1, 50, 0, 10);
    tick(&f, 0); /* snapshot: 50 */
    /* A reset elsewhere zeroed the store's counters; 12 answers since. */
    memset(f.ans, 0, sizeof f.ans);
    memset(f.local, 0, sizeof f.local);
    feed(&f, 1, 12, 12, 10);
    size_t before = 0;
    json_t *d = describe(&f);
    before = json_array_size(json_object_get(d, "history"));
    json_decref(d);
    /* No analysis of a negative interval: it restarts from the new counts. */
    assert_int_equal(tick(&f, 10000), 0);
    d = describe(&f);
    assert_int_equal(json_array_size(json_object_get(d, "history")), before);
    json_t *iv = json_object_get(d, "interval");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(iv, "canary"), "requests")),
                     0);
    json_decref(d);
    feed(&f, 1, 10, 0, 10);
    assert_int_equal(tick(&f, 20000), 1); /* a whole interval after the restart */
    assert_int_equal(last_canary_requests(&f), 10);
    assert_true(f.ctl.canary_step == 5.0);
    fx_free(&f);
}

static void traffic_while_paused_is_not_judged(void **state)
{
    fx_t f;
    char v[32];
    (void)state;
    fx_init(&f, BASE);
    tick(&f, 0);
    feed(&f, 1, 5, 0, 10);
    /* Paused (the core does not tick), traffic goes on: all errors. */
    feed(&f, 1, 40, 40, 10);
    f.v.run_epoch++; /* resumed */
    /* Before the next tick, the view already shows the fresh interval the
     * tick will start: nothing of the paused time or answers. */
    f.v.now_ms = 59000;
    json_t *d = describe(&f);
    json_t *iv = json_object_get(d, "interval");
    assert_true(json_real_value(json_object_get(iv, "elapsed_s")) == 0.0);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(iv, "canary"), "requests")),
                     0);
    assert_true(json_real_value(json_object_get(iv, "step")) == 1.0);
    json_decref(d);
    /* The interval restarts at resume: the paused answers are not judged,
     * nor is the time spent paused. */
    assert_int_equal(tick(&f, 60000), 0);
    assert_int_equal(f.ctl.state, EXP_RUNNING);
    assert_true(f.ctl.canary_step == 1.0);
    feed(&f, 1, 10, 0, 10);
    assert_int_equal(tick(&f, 69999), 0);
    assert_int_equal(tick(&f, 70000), 1);
    assert_string_equal(last_verdict(&f, v, sizeof v), "passed");
    assert_int_equal(last_canary_requests(&f), 10);
    fx_free(&f);
}

static void history_is_bounded_and_describes_every_analysis(void **state)
{
    fx_t f;
    (void)state;
    fx_init(&f, BASE);
    tick(&f, 0);
    for (int i = 1; i <= 40; i++) tick(&f, (uint64_t)i * 10000); /* 40 inconclusive */
    json_t *d = describe(&f);
    json_t *h = json_object_get(d, "history");
    assert_int_equal(json_array_size(h), 32);
    json_t *last = json_array_get(h, 31);
    assert_string_equal(json_string_value(json_object_get(last, "verdict")), "inconclusive");
    assert_true(json_equal(last, json_object_get(d, "last_analysis")));
    assert_non_null(json_object_get(last, "canary_requests"));
    assert_non_null(json_object_get(last, "champion_error_rate"));
    assert_non_null(json_object_get(last, "canary_p99_ms"));
    assert_true(json_real_value(json_object_get(d, "step")) == 1.0);
    assert_string_equal(json_string_value(json_object_get(d, "state")), "running");
    json_decref(d);
    fx_free(&f);
}

static void each_analysis_prints_one_log_line(void **state)
{
    fx_t f;
    char buf[1024] = {0};
    (void)state;
    fx_init(&f, BASE);
    tick(&f, 0);
    feed(&f, 1, 100, 1, 100);
    FILE *tmp = tmpfile();
    assert_non_null(tmp);
    fflush(stderr);
    int saved = dup(2);
    dup2(fileno(tmp), 2);
    tick(&f, 10000);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    rewind(tmp);
    size_t n = fread(buf, 1, sizeof buf - 1, tmp);
    fclose(tmp);
    buf[n] = '\0';
    /* one line as modelmux's others: time, process id, then the analysis */
    const char *want = "canary exp: step 1 -> 5 (passed: error_rate 0.010 <= 0.100, "
                       "p99 100 ms <= 500 ms)\n";
    char prefix[64];
    snprintf(prefix, sizeof(prefix), "Z modelmux[%ld]: ", (long)getpid());
    assert_non_null(strstr(buf, prefix));
    assert_string_equal(strstr(buf, prefix) + strlen(prefix), want);
    assert_int_equal(strchr(buf, '\n') - buf, (long)strlen(buf) - 1);
    fx_free(&f);
}

/* ---- routing ---- */

static void unkeyed_requests_split_by_the_step(void **state)
{
    fx_t f;
    policy_choice_t c;
    policy_req_t req = {0};
    (void)state;
    fx_init(&f, BASE);
    f.ctl.canary_step = 25;
    int canary = 0, n = 20000;
    for (int i = 0; i < n; i++) {
        f.ops->choose(f.p, &f.v, &req, &c);
        assert_int_equal(c.n_mirrors, 0);
        canary += c.primary;
    }
    /* 25 % within 5 standard deviations (sd = sqrt(n p (1-p)) ~ 61). */
    assert_in_range(canary, 5000 - 306, 5000 + 306);
    f.ctl.canary_step = 0;
    f.ops->choose(f.p, &f.v, &req, &c);
    assert_int_equal(c.primary, 0);
    f.ctl.canary_step = 100;
    f.ops->choose(f.p, &f.v, &req, &c);
    assert_int_equal(c.primary, 1);
    fx_free(&f);
}

static void sticky_assignment_is_monotone_across_steps(void **state)
{
    fx_t f;
    policy_choice_t c;
    policy_req_t req = {0};
    static const double steps[] = {1, 5, 25, 50, 100};
    enum { USERS = 10000 };
    static unsigned char on[USERS];
    (void)state;
    fx_init(&f, BASE ", \"sticky\": {\"header\": \"X-User-Id\"}");
    assert_int_equal(f.cfg->experiments[0].sticky_kind, STICKY_HEADER);
    memset(on, 0, sizeof on);
    req.has_key = 1;
    for (size_t s = 0; s < MM_ARRAY_LEN(steps); s++) {
        f.ctl.canary_step = steps[s];
        int count = 0;
        for (int u = 0; u < USERS; u++) {
            char key[16];
            int kn = snprintf(key, sizeof key, "user%d", u);
            req.key_hash = mm_hash64("exp", 3, key, (size_t)kn);
            f.ops->choose(f.p, &f.v, &req, &c);
            /* Once on the canary, always on it. */
            if (on[u]) assert_int_equal(c.primary, 1);
            on[u] = (unsigned char)c.primary;
            count += c.primary;
            /* The same key twice: the same arm. */
            policy_choice_t again;
            f.ops->choose(f.p, &f.v, &req, &again);
            assert_int_equal(again.primary, c.primary);
        }
        double p = steps[s] / 100.0, sd = sqrt(USERS * p * (1 - p));
        assert_true(fabs(count - USERS * p) <= 5 * sd + 1);
    }
    fx_free(&f);
}

/* salt as for ab: it reaches the experiment's key hash, and needs sticky. */
static void salt_is_accepted_with_sticky(void **state)
{
    fx_t f;
    (void)state;
    fx_init(&f, BASE ", \"sticky\": {\"cookie\": \"uid\"}, \"salt\": \"can-2024\"");
    assert_int_equal(f.cfg->experiments[0].sticky_kind, STICKY_COOKIE);
    assert_string_equal(f.cfg->experiments[0].salt, "can-2024");
    fx_free(&f);
    fx_init(&f, BASE ", \"sticky\": {\"cookie\": \"uid\"}");
    assert_string_equal(f.cfg->experiments[0].salt, "exp"); /* default: the name */
    fx_free(&f);
}

static void promoted_and_rolled_back_follow_the_control(void **state)
{
    fx_t f;
    policy_choice_t c;
    policy_req_t req = {0};
    (void)state;
    fx_init(&f, BASE);
    f.ctl.canary_step = 50;
    f.ctl.state = EXP_ROLLED_BACK;
    for (int i = 0; i < 100; i++) {
        f.ops->choose(f.p, &f.v, &req, &c);
        assert_int_equal(c.primary, 0);
    }
    f.ctl.state = EXP_PROMOTED;
    f.ctl.has_weights = 1;
    f.ctl.weights[0] = 0;
    f.ctl.weights[1] = 100;
    for (int i = 0; i < 100; i++) {
        f.ops->choose(f.p, &f.v, &req, &c);
        assert_int_equal(c.primary, 1);
    }
    /* Paused keeps the current share. */
    f.ctl.state = EXP_PAUSED;
    f.ctl.has_weights = 0;
    f.ctl.canary_step = 100;
    f.ops->choose(f.p, &f.v, &req, &c);
    assert_int_equal(c.primary, 1);
    fx_free(&f);
}

/* ---- configuration ---- */

static void defaults_are_the_documented_ones(void **state)
{
    fx_t f;
    (void)state;
    fx_init(&f, "\"champion\": \"champion\", \"canary\": \"challenger\"");
    assert_int_equal(f.cfg->experiments[0].n_arms, 2);
    assert_int_equal(f.cfg->experiments[0].arms[0], config_upstream_index(f.cfg, "champion"));
    json_t *d = describe(&f);
    json_t *want = json_pack("[f,f,f,f,f]", 1.0, 5.0, 25.0, 50.0, 100.0);
    assert_true(json_equal(json_object_get(d, "steps"), want));
    assert_true(json_real_value(json_object_get(d, "step_interval_s")) == 60.0);
    assert_string_equal(json_string_value(json_object_get(d, "on_success")), "promote");
    json_t *an = json_object_get(d, "analysis");
    assert_int_equal(json_integer_value(json_object_get(an, "min_requests")), 100);
    assert_true(json_real_value(json_object_get(an, "max_error_rate")) == 0.05);
    assert_true(json_is_null(json_object_get(an, "max_p99_ms")));
    assert_true(json_is_null(json_object_get(an, "max_error_rate_delta")));
    assert_int_equal(json_integer_value(json_object_get(an, "failure_limit")), 1);
    json_decref(want);
    json_decref(d);
    fx_free(&f);
}

/* The text parse_exp() builds around `params`. */
static int exp_text(const char *params, char *text, size_t n)
{
    return snprintf(text, n,
                    "{" UPSTREAMS "\"experiments\": [{\"name\": \"exp\", \"match\": "
                    "{\"path_prefix\": \"/\"}, \"policy\": \"canary\",\n%s}]}\n",
                    params);
}

/* The config must fail with "test.json:LINE:COL: ..." mentioning `what`,
 * where LINE:COL is the first occurrence of `at` in params (or, failing
 * that, in the whole text). */
static void expect_error(const char *params, const char *at, const char *what)
{
    char text[4096];
    exp_text(params, text, sizeof text);
    expect_refused_at(text, strstr(text, params), at, what);
}

#define ARMS "\"champion\": \"champion\", \"canary\": \"challenger\",\n"

static void config_errors_name_line_and_column(void **state)
{
    (void)state;
    expect_error("\"champion\": \"champion\", \"canary\": \"nope\"", "\"nope\"", "nope");
    expect_error("\"champion\": \"champion\", \"canary\": \"champion\"", "\"champion\"}", "twice");
    expect_error("\"champion\": \"champion\"", "{\"name\"", "canary");
    expect_error(ARMS "\"steps\": [1, 5, 5]", "5]", "increasing");
    expect_error(ARMS "\"steps\": [0, 5]", "0,", "(0, 100]");
    expect_error(ARMS "\"steps\": [5, 101]", "101", "(0, 100]");
    expect_error(ARMS "\"steps\": []", "[]", "non-empty");
    expect_error(ARMS "\"steps\": [5, \"25\"]", "\"25\"", "number");
    expect_error(ARMS "\"step_interval_s\": 0", "0", "in (0, 1000000000], got 0");
    expect_error(ARMS "\"analysis\": {\"max_error_rate\": 1.5}", "1.5", "max_error_rate");
    expect_error(ARMS "\"analysis\": {\"failure_limit\": 0}", "0}", "failure_limit");
    expect_error(ARMS "\"analysis\": {\"min_requests\": -1}", "-1", "min_requests");
    expect_error(ARMS "\"analysis\": {\"max_p99_ms\": 0}", "0}", "in (0, 1000000000], got 0");
    expect_error(ARMS "\"analysis\": {\"max_error_rate_delta\": 2}", "2}", "max_error_rate_delta");
    expect_error(ARMS "\"analysis\": {\"max_p99\": 100}", "\"max_p99\"", "unknown key");
    expect_error(ARMS "\"analysis\": [1]", "[1]", "object");
    expect_error(ARMS "\"on_success\": \"rollout\"", "\"rollout\"", "promote");
    expect_error(ARMS "\"sticky\": {\"body\": \"x\"}", "\"body\"", "unknown key");
    expect_error(ARMS "\"weights\": {}", "\"weights\"", "unknown key");
    expect_error(ARMS "\"salt\": \"s\"", "\"s\"", "no effect without sticky");
    expect_error(ARMS "\"sticky\": {\"header\": \"U\"}, \"salt\": 7", "7", "string");
}

static void example_config_is_valid(void **state)
{
    char path[1024], err[512];
    const char *dir = getenv("MM_SOURCE_DIR");
    (void)state;
    if (dir == NULL) skip();
    snprintf(path, sizeof path, "%s/config/canary.json", dir);
    config_t *c = config_load(path, err, sizeof err);
    if (c == NULL) fail_msg("%s", err);
    assert_int_equal(c->n_experiments, 1);
    assert_string_equal(c->experiments[0].ops->name, "canary");
    config_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(running_at_step_zero_starts_at_the_first_step),
        cmocka_unit_test(passed_interval_moves_to_the_next_step),
        cmocka_unit_test(analysis_without_answers_has_null_error_rates),
        cmocka_unit_test(error_rate_delta_without_champion_answers_is_not_judged),
        cmocka_unit_test(too_few_canary_requests_hold_the_step_and_restart_the_interval),
        cmocka_unit_test(no_canary_answer_is_inconclusive_even_with_min_requests_zero),
        cmocka_unit_test(failed_interval_below_the_limit_holds),
        cmocka_unit_test(failed_intervals_at_the_limit_roll_back),
        cmocka_unit_test(a_pass_resets_the_consecutive_failures),
        cmocka_unit_test(error_rate_delta_against_the_champion_fails),
        cmocka_unit_test(transport_failures_count_as_errors),
        cmocka_unit_test(passing_at_the_last_step_promotes),
        cmocka_unit_test(last_step_below_100_promotes_to_100),
        cmocka_unit_test(on_success_hold_stays_at_the_last_step_under_analysis),
        cmocka_unit_test(a_step_moved_elsewhere_restarts_the_interval),
        cmocka_unit_test(on_tick_is_a_function_of_its_inputs),
        cmocka_unit_test(reset_forgets_the_interval_and_the_history),
        cmocka_unit_test(an_unchanged_reload_goes_on_with_the_analysis),
        cmocka_unit_test(no_interval_unless_running),
        cmocka_unit_test(the_reason_shows_small_latencies),
        cmocka_unit_test(the_interval_judges_every_instance_s_answers),
        cmocka_unit_test(answers_before_the_interval_are_not_judged),
        cmocka_unit_test(counters_below_the_snapshot_restart_the_interval),
        cmocka_unit_test(traffic_while_paused_is_not_judged),
        cmocka_unit_test(history_is_bounded_and_describes_every_analysis),
        cmocka_unit_test(an_operators_change_is_in_the_history),
        cmocka_unit_test(each_analysis_prints_one_log_line),
        cmocka_unit_test(unkeyed_requests_split_by_the_step),
        cmocka_unit_test(sticky_assignment_is_monotone_across_steps),
        cmocka_unit_test(salt_is_accepted_with_sticky),
        cmocka_unit_test(promoted_and_rolled_back_follow_the_control),
        cmocka_unit_test(defaults_are_the_documented_ones),
        cmocka_unit_test(config_errors_name_line_and_column),
        cmocka_unit_test(example_config_is_valid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
