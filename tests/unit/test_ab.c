/* test_ab.c — the `ab` policy through the path the server uses: a config
 * text goes through config_parse(), and the experiment's ops decide, check
 * rewards and describe themselves over hand-made arm statistics.
 *
 * What a user relies on: the split lands within a binomial bound, a sticky
 * user keeps their arm, the operator's weights win over the config, a
 * weight-0 arm gets nothing, bad configs fail at the right line and column,
 * and GET /experiments/NAME reports a verdict only when the always-valid test
 * supports it (and keeps it: the p-value is a running minimum). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "config.h"
#include "refusal.h"
#include "policy.h"
#include "rng.h"

#define UPSTREAMS                                                                                  \
    "{\n"                                                                                          \
    "  \"upstreams\": {\n"                                                                         \
    "    \"champion\": {\"url\": \"http://127.0.0.1:7001\"},\n"                                    \
    "    \"challenger\": {\"url\": \"http://127.0.0.1:7002\"},\n"                                  \
    "    \"third\": {\"url\": \"http://127.0.0.1:7003\"}\n"                                        \
    "  },\n"                                                                                       \
    "  \"experiments\": [\n"

#define END "\n  ]\n}\n"

/* An experiment "x" on "/" with the given policy fields (the text after "policy": "ab"). */
#define EXP(fields)                                                                                \
    UPSTREAMS "    {\"name\": \"x\", \"match\": {\"path_prefix\": \"/\"}, \"policy\": \"ab\",\n"   \
              "     " fields END

typedef struct {
    config_t *c;
    const policy_ops_t *ops;
    void *p;
    arm_stats_t stats[MM_MAX_ARMS];
    exp_control_t ctl;
    mm_rng_t rng;
    policy_view_t v;
} fixture_t;

static int setup_text(fixture_t *f, const char *text)
{
    char err[512];
    memset(f, 0, sizeof(*f));
    f->c = config_parse(text, strlen(text), "ab.json", err, sizeof(err));
    if (f->c == NULL) {
        print_error("config_parse: %s\n", err);
        return -1;
    }
    f->ops = f->c->experiments[0].ops;
    f->p = f->c->experiments[0].policy;
    mm_rng_seed(&f->rng, 12345);
    f->v = (policy_view_t){.n_arms = f->c->experiments[0].n_arms,
                           .stats = f->stats,
                           .control = &f->ctl,
                           .now_ms = 1000,
                           .rng = &f->rng};
    return 0;
}

static void teardown_fixture(fixture_t *f)
{
    config_free(f->c);
}

static int choose(fixture_t *f, int has_key, uint64_t key_hash)
{
    policy_req_t req = {.method = MM_STR("POST"), .path = MM_STR("/v1/rank")};
    policy_choice_t out;
    req.has_key = has_key;
    req.key_hash = key_hash;
    memset(&out, 0xff, sizeof(out));
    f->ops->choose(f->p, &f->v, &req, &out);
    assert_int_equal(out.n_mirrors, 0);
    return out.primary;
}

/* |observed - n p| within the two-sided 99.9 % normal bound of a binomial. */
static void assert_binomial(long observed, long n, double p)
{
    double sd = sqrt((double)n * p * (1.0 - p));
    double dev = fabs((double)observed - (double)n * p);
    if (dev > 3.2905 * sd)
        fail_msg("%ld of %ld, expected %.1f ± %.1f (99.9 %%)", observed, n, n * p, 3.2905 * sd);
}

static void test_registered_with_weights_flag(void **state)
{
    (void)state;
    const policy_ops_t *ops = policy_find("ab");
    assert_non_null(ops);
    assert_string_equal(ops->name, "ab");
    assert_true(ops->flags & POLICY_ACCEPTS_WEIGHTS);
}

static void test_split_90_10_within_binomial_bound(void **state)
{
    (void)state;
    fixture_t f;
    assert_int_equal(setup_text(&f, EXP("\"arms\": {\"champion\": 90, \"challenger\": 10}}")), 0);
    assert_int_equal(f.c->experiments[0].n_arms, 2);
    /* The first arm listed is the champion (arm 0). */
    assert_int_equal(f.c->experiments[0].arms[0], config_upstream_index(f.c, "champion"));
    long n = 100000, ch = 0;
    for (long i = 0; i < n; i++) ch += choose(&f, 0, 0) == 1;
    print_message("90/10: challenger got %ld of %ld\n", ch, n);
    assert_binomial(ch, n, 0.1);
    teardown_fixture(&f);
}

static void test_champion_is_first_listed_not_named(void **state)
{
    (void)state;
    fixture_t f;
    assert_int_equal(setup_text(&f, EXP("\"arms\": {\"challenger\": 1, \"champion\": 0}}")), 0);
    assert_int_equal(f.c->experiments[0].arms[0], config_upstream_index(f.c, "challenger"));
    for (int i = 0; i < 1000; i++) assert_int_equal(choose(&f, 0, 0), 0);
    teardown_fixture(&f);
}

static void test_weight_zero_arm_never_chosen(void **state)
{
    (void)state;
    fixture_t f;
    assert_int_equal(
        setup_text(&f, EXP("\"arms\": {\"champion\": 1, \"challenger\": 0, \"third\": 1}}")), 0);
    long n = 100000, count[3] = {0, 0, 0};
    for (long i = 0; i < n; i++) count[choose(&f, 0, 0)]++;
    assert_int_equal(count[1], 0);
    assert_binomial(count[2], n, 0.5);
    /* Sticky keys too: no hash lands on a zero-width slot. */
    for (uint64_t k = 0; k < 10000; k++)
        assert_int_not_equal(choose(&f, 1, mm_hash64("x", 1, (const char *)&k, sizeof(k))), 1);
    teardown_fixture(&f);
}

static void test_sticky_same_key_same_arm(void **state)
{
    (void)state;
    fixture_t f;
    assert_int_equal(setup_text(&f, EXP("\"arms\": {\"champion\": 50, \"challenger\": 50},\n"
                                        "     \"sticky\": {\"header\": \"X-User-Id\"}, "
                                        "\"salt\": \"exp-2024\"}")),
                     0);
    assert_int_equal(f.c->experiments[0].sticky_kind, STICKY_HEADER);
    assert_string_equal(f.c->experiments[0].sticky_name, "X-User-Id");
    assert_string_equal(f.c->experiments[0].salt, "exp-2024");
    long users = 20000, on_b = 0;
    for (long u = 0; u < users; u++) {
        char key[32];
        int len = snprintf(key, sizeof(key), "user-%ld", u);
        uint64_t h = mm_hash64("exp-2024", 8, key, (size_t)len);
        int first = choose(&f, 1, h);
        /* The RNG moves between calls; the sticky arm must not. */
        for (int again = 0; again < 3; again++) assert_int_equal(choose(&f, 1, h), first);
        on_b += first == 1;
    }
    /* Users spread over the arms by the weights. */
    assert_binomial(on_b, users, 0.5);
    /* A request without the key is assigned at random. */
    long n = 20000, b = 0;
    for (long i = 0; i < n; i++) b += choose(&f, 0, 0) == 1;
    assert_binomial(b, n, 0.5);
    teardown_fixture(&f);
}

static void test_control_weights_override_config(void **state)
{
    (void)state;
    fixture_t f;
    assert_int_equal(setup_text(&f, EXP("\"arms\": {\"champion\": 90, \"challenger\": 10}}")), 0);
    /* PUT /experiments/x/weights {"champion": 20, "challenger": 80} */
    f.ctl.has_weights = 1;
    f.ctl.weights[0] = 20;
    f.ctl.weights[1] = 80;
    long n = 50000, b = 0;
    for (long i = 0; i < n; i++) b += choose(&f, 0, 0) == 1;
    assert_binomial(b, n, 0.8);
    /* Promote: 100 on the challenger. */
    f.ctl.state = EXP_PROMOTED;
    f.ctl.weights[0] = 0;
    f.ctl.weights[1] = 100;
    for (int i = 0; i < 1000; i++) assert_int_equal(choose(&f, 0, 0), 1);
    for (uint64_t k = 1; k < 1000; k++)
        assert_int_equal(choose(&f, 1, k * 0x9e3779b97f4a7c15ULL), 1);
    /* Rollback: everything to the champion, whatever the weights say. */
    f.ctl.state = EXP_ROLLED_BACK;
    for (int i = 0; i < 1000; i++) assert_int_equal(choose(&f, 0, 0), 0);
    /* Cleared control: the configured split again. */
    f.ctl = (exp_control_t){0};
    b = 0;
    for (long i = 0; i < n; i++) b += choose(&f, 0, 0) == 1;
    assert_binomial(b, n, 0.1);
    teardown_fixture(&f);
}

static void test_check_reward_by_model(void **state)
{
    (void)state;
    fixture_t f;
    assert_int_equal(setup_text(&f, EXP("\"arms\": {\"champion\": 1, \"challenger\": 1}}")), 0);
    /* auto: any finite reward; the store counts one that is 0 or 1 as a
     * Bernoulli outcome (successes/failures), any other only in the sums. */
    assert_int_equal(f.ops->check_reward(f.p, 1.0), 1);
    assert_int_equal(f.ops->check_reward(f.p, 0.0), 1);
    assert_int_equal(f.ops->check_reward(f.p, 0.5), 0);
    assert_int_equal(f.ops->check_reward(f.p, -3.5), 0);
    assert_int_equal(f.ops->check_reward(f.p, NAN), -1);
    assert_int_equal(f.ops->check_reward(f.p, INFINITY), -1);
    teardown_fixture(&f);
    assert_int_equal(setup_text(&f, EXP("\"arms\": {\"champion\": 1, \"challenger\": 1}, "
                                        "\"reward\": \"bernoulli\"}")),
                     0);
    assert_int_equal(f.ops->check_reward(f.p, 1.0), 1);
    assert_int_equal(f.ops->check_reward(f.p, 0.0), 1);
    assert_int_equal(f.ops->check_reward(f.p, 0.25), 1);
    assert_int_equal(f.ops->check_reward(f.p, 1.5), -1);
    assert_int_equal(f.ops->check_reward(f.p, -0.1), -1);
    teardown_fixture(&f);
    assert_int_equal(setup_text(&f, EXP("\"arms\": {\"champion\": 1, \"challenger\": 1}, "
                                        "\"reward\": \"continuous\"}")),
                     0);
    /* continuous: declared, so not even 0 and 1 are Bernoulli outcomes. */
    assert_int_equal(f.ops->check_reward(f.p, 1.0), 0);
    assert_int_equal(f.ops->check_reward(f.p, 0.0), 0);
    assert_int_equal(f.ops->check_reward(f.p, 42.0), 0);
    teardown_fixture(&f);
}

/* Arm statistics as the store would hold them after n Bernoulli rewards with
 * s successes; `counted` 0 leaves successes/failures 0, which shows that the
 * auto model decides from the sums alone. */
static void set_binary(arm_stats_t *a, uint64_t pulls, uint64_t n, uint64_t s, int counted)
{
    *a = (arm_stats_t){
        .pulls = pulls, .feedback = n, .reward_sum = (double)s, .reward_sq_sum = (double)s};
    if (counted) {
        a->successes = (double)s;
        a->failures = (double)(n - s);
    }
}

static const json_t *cmp0(const json_t *st)
{
    const json_t *cmps = json_object_get(st, "comparisons");
    assert_int_equal(json_array_size(cmps), 1);
    return json_array_get(cmps, 0);
}

static const char *verdict_of(const json_t *st)
{
    return json_string_value(json_object_get(cmp0(st), "verdict"));
}

static double av_p(const json_t *st)
{
    return json_number_value(json_object_get(json_object_get(cmp0(st), "always_valid"), "p_value"));
}

static void test_describe_reports_statistics(void **state)
{
    (void)state;
    fixture_t f;
    assert_int_equal(setup_text(&f, EXP("\"arms\": {\"champion\": 50, \"challenger\": 50}}")), 0);
    /* No data: everything undefined, nothing decided. */
    json_t *st = f.ops->describe(f.p, &f.v);
    assert_non_null(st);
    assert_string_equal(verdict_of(st), "inconclusive");
    assert_true(json_is_null(json_object_get(cmp0(st), "difference")));
    assert_false(json_is_true(json_object_get(json_object_get(st, "srm"), "srm")));
    /* no plan yet: nothing "remaining" either (0 would read as done) */
    assert_true(
        json_is_null(json_object_get(json_object_get(cmp0(st), "samples_needed"), "challenger")));
    assert_true(json_is_null(
        json_object_get(json_object_get(cmp0(st), "samples_remaining"), "challenger")));
    json_decref(st);

    /* 120/1000 vs 150/1000 (auto: detected binary): the classical p is
     * 0.0496 (test_abstats.c works it out) but the always-valid one is
     * far from 0.05 — one look at a borderline result is not a winner. */
    set_binary(&f.stats[0], 1000, 1000, 120, 0);
    set_binary(&f.stats[1], 1000, 1000, 150, 0);
    st = f.ops->describe(f.p, &f.v);
    const json_t *c = cmp0(st);
    assert_string_equal(json_string_value(json_object_get(c, "arm")), "challenger");
    assert_string_equal(json_string_value(json_object_get(c, "versus")), "champion");
    assert_string_equal(json_string_value(json_object_get(c, "test")), "two_proportions");
    assert_true(fabs(json_number_value(json_object_get(c, "difference")) - 0.03) < 1e-12);
    assert_true(fabs(json_number_value(json_object_get(c, "relative_difference")) - 0.25) < 1e-12);
    assert_true(fabs(json_number_value(json_object_get(c, "p_value_fixed_horizon")) -
                     0.04964038686536879) < 1e-9);
    assert_true(av_p(st) > 0.05 && av_p(st) <= 1.0);
    assert_string_equal(verdict_of(st), "inconclusive");
    const json_t *av = json_object_get(c, "always_valid");
    assert_true(json_is_true(json_object_get(av, "started")));
    const json_t *cs = json_object_get(av, "confidence_sequence");
    assert_int_equal(json_array_size(cs), 2);
    assert_true(json_number_value(json_array_get(cs, 0)) < 0.0);
    assert_true(json_number_value(json_array_get(cs, 1)) > 0.03);
    /* Plan for baseline 0.12, +5 %, 50/50: far more than 1000 per arm. */
    const json_t *need = json_object_get(c, "samples_needed");
    assert_true(json_integer_value(json_object_get(need, "champion")) > 40000);
    const json_t *left = json_object_get(c, "samples_remaining");
    assert_int_equal(json_integer_value(json_object_get(left, "champion")),
                     json_integer_value(json_object_get(need, "champion")) - 1000);
    /* Per-arm model and estimates. */
    const json_t *arm0 = json_array_get(json_object_get(st, "arms"), 0);
    assert_string_equal(json_string_value(json_object_get(arm0, "model")), "bernoulli");
    assert_true(fabs(json_number_value(json_object_get(arm0, "mean")) - 0.12) < 1e-12);
    assert_true(fabs(json_number_value(json_object_get(arm0, "variance")) - 0.1056) < 1e-12);
    assert_true(fabs(json_number_value(json_object_get(arm0, "share")) - 0.5) < 1e-12);
    json_decref(st);
    teardown_fixture(&f);
}

static void test_verdict_and_running_minimum(void **state)
{
    (void)state;
    fixture_t f;
    assert_int_equal(setup_text(&f, EXP("\"arms\": {\"champion\": 50, \"challenger\": 50}, "
                                        "\"reward\": \"bernoulli\"}")),
                     0);
    /* 10 000 per arm, 0.10 vs 0.13: overwhelming. */
    set_binary(&f.stats[0], 10000, 10000, 1000, 1);
    set_binary(&f.stats[1], 10000, 10000, 1300, 1);
    assert_int_equal(f.ops->on_tick(f.p, &f.v, &f.ctl), 0);
    json_t *st = f.ops->describe(f.p, &f.v);
    assert_string_equal(verdict_of(st), "challenger_better");
    double p1 = av_p(st);
    assert_true(p1 < 1e-4);
    json_decref(st);
    /* The evidence weakens later (more data, smaller gap): the always-valid
     * p-value does not go back up, and the verdict stands. */
    set_binary(&f.stats[0], 20000, 20000, 2000, 1);
    set_binary(&f.stats[1], 20000, 20000, 2030, 1);
    st = f.ops->describe(f.p, &f.v);
    assert_true(av_p(st) == p1);
    assert_true(json_number_value(json_object_get(json_object_get(cmp0(st), "always_valid"),
                                                  "p_value_now")) > 0.5);
    assert_string_equal(verdict_of(st), "challenger_better");
    json_decref(st);
    /* Admin reset forgets it. */
    f.ops->reset(f.p);
    st = f.ops->describe(f.p, &f.v);
    assert_string_equal(verdict_of(st), "inconclusive");
    json_decref(st);
    /* The champion ahead: champion_better. */
    set_binary(&f.stats[0], 10000, 10000, 1300, 1);
    set_binary(&f.stats[1], 10000, 10000, 1000, 1);
    st = f.ops->describe(f.p, &f.v);
    assert_string_equal(verdict_of(st), "champion_better");
    json_decref(st);
    /* Shared statistics reset elsewhere (counts went down): forgotten too. */
    set_binary(&f.stats[0], 100, 100, 10, 1);
    set_binary(&f.stats[1], 100, 100, 10, 1);
    st = f.ops->describe(f.p, &f.v);
    assert_string_equal(verdict_of(st), "inconclusive");
    assert_true(av_p(st) == 1.0);
    json_decref(st);
    teardown_fixture(&f);
}

static void test_continuous_rewards_use_welch(void **state)
{
    (void)state;
    fixture_t f;
    assert_int_equal(setup_text(&f, EXP("\"arms\": {\"champion\": 1, \"challenger\": 1}}")), 0);
    /* Revenue-like rewards: a: n 50, mean 10, var 400/49; b: n 60, mean 11. */
    f.stats[0] =
        (arm_stats_t){.pulls = 50, .feedback = 50, .reward_sum = 500, .reward_sq_sum = 5400};
    f.stats[1] =
        (arm_stats_t){.pulls = 60, .feedback = 60, .reward_sum = 660, .reward_sq_sum = 7800};
    json_t *st = f.ops->describe(f.p, &f.v);
    const json_t *c = cmp0(st);
    assert_string_equal(json_string_value(json_object_get(c, "test")), "welch");
    assert_true(fabs(json_number_value(json_object_get(c, "p_value_fixed_horizon")) -
                     0.07802237690816891) < 1e-9);
    assert_true(fabs(json_number_value(json_object_get(c, "df")) - 106.2832574124569) < 1e-6);
    const json_t *arm0 = json_array_get(json_object_get(st, "arms"), 0);
    assert_string_equal(json_string_value(json_object_get(arm0, "model")), "continuous");
    json_decref(st);
    teardown_fixture(&f);
}

static void test_srm_flags_broken_split(void **state)
{
    (void)state;
    fixture_t f;
    assert_int_equal(setup_text(&f, EXP("\"arms\": {\"champion\": 90, \"challenger\": 10}}")), 0);
    /* 9000 / 1100 of 10100 against 90/10: p = 0.0028, not below 0.001. */
    f.stats[0].pulls = 9000;
    f.stats[1].pulls = 1100;
    json_t *st = f.ops->describe(f.p, &f.v);
    const json_t *srm = json_object_get(st, "srm");
    assert_true(fabs(json_number_value(json_object_get(srm, "p_value")) - 0.002834749080259404) <
                1e-9);
    assert_false(json_is_true(json_object_get(srm, "srm")));
    json_decref(st);
    /* 9000 / 1300: chi2 = 100²/9270 + 270²/1030... p far below 0.001. */
    f.stats[1].pulls = 1300;
    st = f.ops->describe(f.p, &f.v);
    assert_true(json_is_true(json_object_get(json_object_get(st, "srm"), "srm")));
    /* Weights are reported as configured and effective. */
    const json_t *w = json_object_get(st, "weights");
    assert_true(json_number_value(json_object_get(json_object_get(w, "configured"), "champion")) ==
                90.0);
    assert_string_equal(json_string_value(json_object_get(w, "source")), "config");
    json_decref(st);
    teardown_fixture(&f);
}

/* After the operator changes the weights, the check counts the pulls made
 * under the new shares only: the old split is no mismatch. */
static void test_srm_counts_from_a_weights_change(void **state)
{
    (void)state;
    fixture_t f;
    assert_int_equal(setup_text(&f, EXP("\"arms\": {\"champion\": 90, \"challenger\": 10}}")), 0);
    f.stats[0].pulls = 9000;
    f.stats[1].pulls = 1000;
    f.ctl.version = 1;
    json_t *st = f.ops->describe(f.p, &f.v);
    const json_t *srm = json_object_get(st, "srm");
    assert_false(json_is_true(json_object_get(srm, "srm")));
    assert_int_equal(json_integer_value(json_object_get(srm, "since_control_version")), 0);
    json_decref(st);
    /* PUT weights 80/20 at version 2, then 8000 / 2000 more pulls. */
    f.ctl.has_weights = 1;
    f.ctl.weights[0] = 80;
    f.ctl.weights[1] = 20;
    f.ctl.version = 2;
    assert_int_equal(f.ops->on_tick(f.p, &f.v, &f.ctl), 0);
    f.stats[0].pulls += 8000;
    f.stats[1].pulls += 2000;
    st = f.ops->describe(f.p, &f.v);
    srm = json_object_get(st, "srm");
    /* All 20000 pulls against 80/20 would be chi2 = 625, p ~ 1e-137. */
    assert_true(fabs(json_number_value(json_object_get(srm, "chi2"))) < 1e-9);
    assert_false(json_is_true(json_object_get(srm, "srm")));
    assert_int_equal(json_integer_value(json_object_get(srm, "since_control_version")), 2);
    json_decref(st);
    /* A reset (pulls below the baseline) counts from there again. */
    f.stats[0].pulls = 10;
    f.stats[1].pulls = 0;
    st = f.ops->describe(f.p, &f.v);
    srm = json_object_get(st, "srm");
    assert_true(json_is_null(json_object_get(srm, "chi2")) ||
                fabs(json_number_value(json_object_get(srm, "chi2"))) < 1e-9);
    json_decref(st);
    teardown_fixture(&f);
}

/* A reload that ramps the split in the file (50/50 -> 90/10) builds a new
 * instance over the same pulls: adopt() tells it so, and the check counts
 * from the reload instead of taking the new weights to hold since the start
 * (10000 pulls at 50/50 against 90/10 would be chi2 ~ 17778). An unchanged
 * reload goes on counting where the old instance was. */
static void test_srm_after_a_reload(void **state)
{
    (void)state;
    fixture_t old, ramped, same;
    assert_int_equal(setup_text(&old, EXP("\"arms\": {\"champion\": 50, \"challenger\": 50}}")), 0);
    assert_int_equal(setup_text(&ramped, EXP("\"arms\": {\"champion\": 90, \"challenger\": 10}}")),
                     0);
    assert_int_equal(setup_text(&same, EXP("\"arms\": {\"champion\": 50, \"challenger\": 50}}")),
                     0);
    assert_non_null(ramped.ops->adopt);
    old.stats[0].pulls = old.stats[1].pulls = 5000;
    assert_int_equal(old.ops->on_tick(old.p, &old.v, &old.ctl), 0);

    /* the redefinition: the store wrote the config's control (version 1) */
    memcpy(ramped.stats, old.stats, sizeof(ramped.stats));
    ramped.ctl.version = 1;
    ramped.ops->adopt(ramped.p, old.p, 0);
    assert_int_equal(ramped.ops->on_tick(ramped.p, &ramped.v, &ramped.ctl), 0);
    ramped.stats[0].pulls += 900;
    ramped.stats[1].pulls += 100;
    json_t *st = ramped.ops->describe(ramped.p, &ramped.v);
    const json_t *srm = json_object_get(st, "srm");
    assert_true(fabs(json_number_value(json_object_get(srm, "chi2"))) < 1e-9);
    assert_false(json_is_true(json_object_get(srm, "srm")));
    assert_int_equal(json_integer_value(json_object_get(srm, "since_control_version")), 1);
    json_decref(st);

    /* an unchanged reload: 1000 more pulls at 50/50 count with the 10000 */
    memcpy(same.stats, old.stats, sizeof(same.stats));
    same.ops->adopt(same.p, old.p, 1);
    same.stats[0].pulls += 600;
    same.stats[1].pulls += 400;
    st = same.ops->describe(same.p, &same.v);
    srm = json_object_get(st, "srm");
    /* (5600 - 5500)^2 / 5500 * 2 */
    assert_true(fabs(json_number_value(json_object_get(srm, "chi2")) - 20000.0 / 5500.0) < 1e-9);
    assert_int_equal(json_integer_value(json_object_get(srm, "since_control_version")), 0);
    json_decref(st);

    /* built after another policy ran the experiment: from now, too */
    teardown_fixture(&ramped);
    assert_int_equal(setup_text(&ramped, EXP("\"arms\": {\"champion\": 90, \"challenger\": 10}}")),
                     0);
    memcpy(ramped.stats, old.stats, sizeof(ramped.stats));
    ramped.ops->adopt(ramped.p, NULL, 0);
    st = ramped.ops->describe(ramped.p, &ramped.v);
    assert_true(json_is_null(json_object_get(json_object_get(st, "srm"), "chi2")));
    json_decref(st);
    teardown_fixture(&old);
    teardown_fixture(&ramped);
    teardown_fixture(&same);
}

static void test_three_arms_bonferroni(void **state)
{
    (void)state;
    fixture_t f;
    assert_int_equal(setup_text(&f, EXP("\"arms\": {\"champion\": 1, \"challenger\": 1, "
                                        "\"third\": 1}, \"alpha\": 0.1}")),
                     0);
    json_t *st = f.ops->describe(f.p, &f.v);
    assert_true(fabs(json_number_value(json_object_get(st, "alpha_per_comparison")) - 0.05) <
                1e-15);
    assert_int_equal(json_array_size(json_object_get(st, "comparisons")), 2);
    json_decref(st);
    teardown_fixture(&f);
}

/* Watch an A/A experiment through the policy itself, as an operator would:
 * a tick after every batch of rewards. The verdict must stay inconclusive in
 * at least 95 % of runs. */
static void test_aa_through_policy(void **state)
{
    (void)state;
    fixture_t f;
    assert_int_equal(setup_text(&f, EXP("\"arms\": {\"champion\": 50, \"challenger\": 50}, "
                                        "\"reward\": \"bernoulli\"}")),
                     0);
    int runs = 200, wins = 0;
    mm_rng_t r;
    for (int run = 0; run < runs; run++) {
        mm_rng_seed(&r, 9000 + (uint64_t)run);
        f.ops->reset(f.p);
        memset(f.stats, 0, sizeof(f.stats));
        for (int look = 0; look < 50; look++) {
            for (int i = 0; i < 200; i++) {
                int arm = choose(&f, 0, 0);
                double rew = mm_rng_uniform(&r) < 0.1;
                f.stats[arm].pulls++;
                f.stats[arm].feedback++;
                f.stats[arm].reward_sum += rew;
                f.stats[arm].reward_sq_sum += rew;
                f.stats[arm].successes += rew;
                f.stats[arm].failures += 1 - rew;
            }
            f.ops->on_tick(f.p, &f.v, &f.ctl);
        }
        json_t *st = f.ops->describe(f.p, &f.v);
        wins += strcmp(verdict_of(st), "inconclusive") != 0;
        json_decref(st);
    }
    print_message("A/A through the policy, %d runs x 50 ticks: %d false verdicts\n", runs, wins);
    assert_true(wins <= runs / 20);
    teardown_fixture(&f);
}

/* ---- configuration errors, with FILE:LINE:COL ---- */

/* Parse `text`; it must fail with a message that names the position of the
 * first occurrence of `at` after the first occurrence of `after` (1-based
 * line and column) and contains `msg`. */
static void assert_config_error(const char *text, const char *after, const char *at,
                                const char *msg)
{
    const char *from = after != NULL ? strstr(text, after) : text;
    assert_non_null(from);
    assert_non_null(strstr(from, at)); /* no falling back to the whole text */
    expect_refused_at(text, from, at, msg);
}

static void test_config_errors_with_position(void **state)
{
    (void)state;
    /* Weights: at the offending value (/arms/NAME). */
    assert_config_error(EXP("\"arms\": {\"champion\": 90, \"challenger\": -1}}"), "\"arms\"", "-1",
                        "must be in [0, 1e9], got -1");
    assert_config_error(EXP("\"arms\": {\"champion\": 1e308, \"challenger\": 1e308}}"), "\"arms\"",
                        "1e308", "must be in [0, 1e9], got 1e+308");
    assert_config_error(EXP("\"arms\": {\"champion\": 90, \"challenger\": \"ten\"}}"), "\"arms\"",
                        "\"ten\"", "must be a number");
    /* All zero, empty, not an object: at /arms. */
    assert_config_error(EXP("\"arms\": {\"champion\": 0, \"challenger\": 0}}"), "\"arms\"", "{",
                        "all weights are 0");
    assert_config_error(EXP("\"arms\": {}}"), "\"arms\"", "{}", "empty");
    assert_config_error(EXP("\"arms\": [\"champion\"]}"), "\"arms\"", "[", "object");
    /* An arm that is no upstream: at its name. */
    assert_config_error(EXP("\"arms\": {\"champion\": 90, \"nosuch\": 10}}"), "\"arms\"",
                        "\"nosuch\"", "unknown upstream");
    /* Missing arms: at the experiment. */
    assert_config_error(EXP("\"sticky\": {\"header\": \"U\"}}"), "\"experiments\"", "{", "arms");
    /* Unknown keys, here and inside sticky. */
    assert_config_error(EXP("\"arms\": {\"champion\": 1}, \"weights\": 3}"), "\"arms\"",
                        "\"weights\"", "weights");
    assert_config_error(EXP("\"arms\": {\"champion\": 1}, \"sticky\": {\"ip\": \"U\"}}"),
                        "\"sticky\"", "\"ip\"", "ip");
    /* Salt: a string, and only with sticky. */
    assert_config_error(EXP("\"arms\": {\"champion\": 1}, \"sticky\": {\"header\": \"U\"}, "
                            "\"salt\": 7}"),
                        "\"salt\"", "7", "string");
    assert_config_error(EXP("\"arms\": {\"champion\": 1}, \"salt\": \"s\"}"), "\"salt\"", "\"s\"",
                        "without sticky");
    /* Statistics parameters and their ranges. */
    assert_config_error(EXP("\"arms\": {\"champion\": 1}, \"reward\": \"gaussian\"}"), "\"reward\"",
                        "\"gaussian\"", "\"continuous\"");
    /* (The message names the range with its open ends, whichever end failed.) */
    assert_config_error(EXP("\"arms\": {\"champion\": 1}, \"alpha\": 0}"), "\"alpha\"", "0",
                        "alpha must be a number in (0, 0.5], got 0");
    assert_config_error(EXP("\"arms\": {\"champion\": 1}, \"alpha\": 0.7}"), "\"alpha\"", "0.7",
                        "alpha must be a number in (0, 0.5], got 0.7");
    assert_config_error(EXP("\"arms\": {\"champion\": 1}, \"power\": 1}"), "\"power\"", "1",
                        "power must be a number in [0.5, 1), got 1");
    assert_config_error(EXP("\"arms\": {\"champion\": 1}, \"mde\": 0}"), "\"mde\"", "0",
                        "mde must be a number in (0, 1], got 0");
    assert_config_error(EXP("\"arms\": {\"champion\": 1}, \"mixture_variance\": 0}"),
                        "\"mixture_variance\"", "0", "mixture_variance must be a number > 0");
}

static void test_config_accepts_all_parameters(void **state)
{
    (void)state;
    fixture_t f;
    assert_int_equal(
        setup_text(&f, EXP("\"arms\": {\"champion\": 80, \"challenger\": 20},\n"
                           "     \"sticky\": {\"cookie\": \"uid\"}, \"salt\": \"s1\", "
                           "\"reward\": \"continuous\", \"alpha\": 0.01, \"mde\": 0.1, "
                           "\"power\": 0.9, \"mixture_variance\": 0.25, \"feedback_ttl_s\": 60}")),
        0);
    json_t *st = f.ops->describe(f.p, &f.v);
    assert_string_equal(json_string_value(json_object_get(st, "reward")), "continuous");
    assert_true(json_number_value(json_object_get(st, "alpha")) == 0.01);
    assert_true(json_number_value(json_object_get(st, "mixture_variance")) == 0.25);
    assert_true(json_is_true(json_object_get(st, "sticky")));
    json_decref(st);
    teardown_fixture(&f);
}

/* The control state's names are the contract of the admin API, the metrics
 * and the store's control hash: each parses back to its state; a prefix, a
 * longer name or another case is none of them. */
static void test_state_names_round_trip(void **st)
{
    (void)st;
    const char *want[EXP_STATE_COUNT] = {"running", "paused", "promoted", "rolled_back"};
    for (int i = 0; i < EXP_STATE_COUNT; i++) {
        const char *name = exp_state_name((exp_run_state_t)i);
        assert_string_equal(name, want[i]);
        exp_run_state_t back = EXP_STATE_COUNT;
        assert_int_equal(exp_state_parse(name, strlen(name), &back), 0);
        assert_int_equal(back, i);
    }
    assert_string_equal(exp_state_name((exp_run_state_t)EXP_STATE_COUNT), "running");
    const char *bad[] = {"", "run", "runnings", "Paused", "rolled-back"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        exp_run_state_t out = EXP_PROMOTED;
        assert_int_equal(exp_state_parse(bad[i], strlen(bad[i]), &out), -1);
        assert_int_equal(out, EXP_PROMOTED);
    }
    /* length-bounded: the bytes after n are not read */
    exp_run_state_t out = EXP_RUNNING;
    assert_int_equal(exp_state_parse("pausedXYZ", 6, &out), 0);
    assert_int_equal(out, EXP_PAUSED);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registered_with_weights_flag),
        cmocka_unit_test(test_state_names_round_trip),
        cmocka_unit_test(test_split_90_10_within_binomial_bound),
        cmocka_unit_test(test_champion_is_first_listed_not_named),
        cmocka_unit_test(test_weight_zero_arm_never_chosen),
        cmocka_unit_test(test_sticky_same_key_same_arm),
        cmocka_unit_test(test_control_weights_override_config),
        cmocka_unit_test(test_check_reward_by_model),
        cmocka_unit_test(test_describe_reports_statistics),
        cmocka_unit_test(test_verdict_and_running_minimum),
        cmocka_unit_test(test_continuous_rewards_use_welch),
        cmocka_unit_test(test_srm_flags_broken_split),
        cmocka_unit_test(test_srm_counts_from_a_weights_change),
        cmocka_unit_test(test_srm_after_a_reload),
        cmocka_unit_test(test_three_arms_bonferroni),
        cmocka_unit_test(test_aa_through_policy),
        cmocka_unit_test(test_config_errors_with_position),
        cmocka_unit_test(test_config_accepts_all_parameters),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
