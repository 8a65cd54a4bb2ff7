/* test_bandits.c — thompson, epsilon_greedy and ucb1 through their ops.
 *
 * Instances are built the way the proxy builds them, by config_parse, and
 * then driven through choose / check_reward / describe with hand-built
 * policy_view_t statistics, so the tests see exactly what the core sees.
 * Everything is seeded. Shares are asserted within a few binomial standard
 * deviations of the value the math gives; the simulations mimic the store
 * by refreshing the statistics the policy sees only every 1 000 decisions,
 * and print what they measured. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "refusal.h"
#include "policy.h"
#include "rng.h"

/* ---- building instances ---- */

#define CFG_HEAD                                                                                   \
    "{\n"                                                                                          \
    "  \"listen\": \"127.0.0.1:8080\",\n"                                                          \
    "  \"upstreams\": {\n"                                                                         \
    "    \"champion\": {\"url\": \"http://127.0.0.1:7001\"},\n"                                    \
    "    \"challenger\": {\"url\": \"http://127.0.0.1:7002\"},\n"                                  \
    "    \"third\": {\"url\": \"http://127.0.0.1:7003\"}\n"                                        \
    "  },\n"                                                                                       \
    "  \"experiments\": [\n"
#define CFG_TAIL "\n  ]\n}\n"

typedef struct {
    config_t *cfg;
    const policy_ops_t *ops;
    void *p;
    size_t n_arms;
} inst_t;

static char *config_text(const char *experiment)
{
    size_t n = strlen(CFG_HEAD) + strlen(experiment) + strlen(CFG_TAIL) + 1;
    char *t = malloc(n);
    assert_non_null(t);
    snprintf(t, n, "%s%s%s", CFG_HEAD, experiment, CFG_TAIL);
    return t;
}

/* Parse one experiment (a JSON object text); fails the test on error. */
static inst_t make(const char *experiment)
{
    char err[512] = "";
    char *text = config_text(experiment);
    config_t *cfg = config_parse(text, strlen(text), "test.json", err, sizeof err);
    free(text);
    if (cfg == NULL) fail_msg("config_parse: %s", err);
    assert_int_equal(cfg->n_experiments, 1);
    inst_t in = {cfg, cfg->experiments[0].ops, cfg->experiments[0].policy,
                 cfg->experiments[0].n_arms};
    assert_non_null(in.ops);
    assert_non_null(in.p);
    return in;
}

static void unmake(inst_t *in)
{
    config_free(in->cfg);
}

/* ---- views ---- */

typedef struct {
    arm_stats_t stats[MM_MAX_ARMS];
    exp_control_t control;
    mm_rng_t rng;
    policy_view_t v;
} view_t;

static void view_init(view_t *w, size_t n_arms, uint64_t seed)
{
    memset(w, 0, sizeof *w);
    mm_rng_seed(&w->rng, seed);
    w->v.n_arms = n_arms;
    w->v.stats = w->stats;
    w->v.control = &w->control;
    w->v.rng = &w->rng;
}

/* Bernoulli statistics: `succ` successes out of `n` rewards. */
static void set_bernoulli(arm_stats_t *s, double succ, uint64_t n)
{
    s->pulls = n;
    s->feedback = n;
    s->successes = succ;
    s->failures = (double)n - succ;
    s->reward_sum = succ;
    s->reward_sq_sum = succ;
}

/* Arbitrary statistics from n rewards with the given mean and (1/n) variance. */
static void set_moments(arm_stats_t *s, uint64_t n, double mean, double var)
{
    memset(s, 0, sizeof *s);
    s->pulls = n;
    s->feedback = n;
    s->reward_sum = mean * (double)n;
    s->reward_sq_sum = (var + mean * mean) * (double)n;
}

static int choose(const inst_t *in, view_t *w)
{
    static const policy_req_t req = {{"GET", 3}, {"/", 1}, 0, 0};
    policy_choice_t c;
    memset(&c, 0xff, sizeof c);
    in->ops->choose(in->p, &w->v, &req, &c);
    assert_int_equal(c.n_mirrors, 0);
    assert_true(c.primary >= 0 && (size_t)c.primary < w->v.n_arms);
    return c.primary;
}

/* Route `n` requests on a frozen view; counts per arm. */
static void route(const inst_t *in, view_t *w, int n, int *counts)
{
    memset(counts, 0, MM_MAX_ARMS * sizeof *counts);
    for (int i = 0; i < n; i++) counts[choose(in, w)]++;
}

/* |share - p| within k binomial standard deviations (and at least 1e-9). */
static void assert_share(int count, int n, double p, double k, const char *what)
{
    double share = (double)count / n, sd = sqrt(p * (1 - p) / n);
    if (fabs(share - p) > k * sd + 1e-9)
        fail_msg("%s: share %.5f, expected %.5f +- %.5f", what, share, p, k * sd);
}

static double num_at(const json_t *o, const char *key)
{
    const json_t *x = json_object_get(o, key);
    if (!json_is_number(x)) fail_msg("describe: \"%s\" is not a number", key);
    return json_number_value(x);
}

static const json_t *arm_at(const json_t *d, size_t i)
{
    const json_t *a = json_array_get(json_object_get(d, "arms"), i);
    assert_non_null(a);
    return a;
}

/* ---- thompson ---- */

#define EXP_TS(params)                                                                             \
    "{\"name\": \"ts\", \"match\": {\"path_prefix\": \"/\"}, \"policy\": \"thompson\", "           \
    "\"arms\": [\"champion\", \"challenger\"]" params "}"

static void test_thompson_share_follows_posterior(void **state)
{
    (void)state;
    /* Beta(1,1) prior + 40/960 and 50/950 gives Beta(41,961) vs Beta(51,951):
     * P(second is best) = 0.8584 (numerical integration). */
    inst_t in = make(EXP_TS(""));
    view_t w;
    view_init(&w, 2, 11);
    set_bernoulli(&w.stats[0], 40, 1000);
    set_bernoulli(&w.stats[1], 50, 1000);
    int counts[MM_MAX_ARMS];
    const int n = 100000;
    route(&in, &w, n, counts);
    double share = (double)counts[1] / n;
    print_message("thompson: share to Beta(51,951) over %d decisions: %.4f (expected 0.8584)\n", n,
                  share);
    assert_true(fabs(share - 0.8584) <= 0.005);

    /* describe: the posteriors, and p_best estimated to ~0.011. */
    json_t *d = in.ops->describe(in.p, &w.v);
    assert_true(json_is_object(d));
    assert_string_equal(json_string_value(json_object_get(d, "reward")), "bernoulli");
    assert_string_equal(json_string_value(json_object_get(arm_at(d, 0), "arm")), "champion");
    assert_true(num_at(arm_at(d, 0), "alpha") == 41 && num_at(arm_at(d, 0), "beta") == 961);
    assert_true(num_at(arm_at(d, 1), "alpha") == 51 && num_at(arm_at(d, 1), "beta") == 951);
    assert_true(fabs(num_at(arm_at(d, 1), "mean") - 51.0 / 1002.0) < 1e-12);
    assert_true(fabs(num_at(arm_at(d, 1), "p_best") - 0.8584) < 0.035);
    assert_true(fabs(num_at(arm_at(d, 0), "p_best") + num_at(arm_at(d, 1), "p_best") - 1) < 1e-9);
    /* Deterministic: the same statistics describe the same way. */
    json_t *d2 = in.ops->describe(in.p, &w.v);
    assert_true(json_equal(d, d2));
    json_decref(d);
    json_decref(d2);
    unmake(&in);
}

static void test_thompson_prior_is_used(void **state)
{
    (void)state;
    /* No data: every arm starts from the same prior, so an even split. */
    inst_t in = make(EXP_TS(", \"prior\": {\"alpha\": 2, \"beta\": 50}"));
    view_t w;
    view_init(&w, 2, 12);
    int counts[MM_MAX_ARMS];
    route(&in, &w, 20000, counts);
    assert_share(counts[0], 20000, 0.5, 5, "thompson symmetric prior");
    json_t *d = in.ops->describe(in.p, &w.v);
    assert_true(num_at(arm_at(d, 0), "alpha") == 2 && num_at(arm_at(d, 0), "beta") == 50);
    json_decref(d);
    /* The prior weighs like alpha + beta pseudo-observations. Data 3/10 and
     * 30/100: with Beta(1,1), Beta(4,8) vs Beta(31,71) and P(arm 1 best) =
     * 0.4413; with Beta(2,50), Beta(5,57) vs Beta(32,120) and 0.9938
     * (numerical integration): the prior flips the preferred arm. */
    set_bernoulli(&w.stats[0], 3, 10);
    set_bernoulli(&w.stats[1], 30, 100);
    route(&in, &w, 20000, counts);
    assert_share(counts[1], 20000, 0.9938, 6, "strong prior");
    inst_t flat = make(EXP_TS(""));
    route(&flat, &w, 20000, counts);
    assert_share(counts[1], 20000, 0.4413, 6, "Beta(1,1) prior");
    unmake(&flat);
    unmake(&in);
}

static void test_thompson_min_share_floor(void **state)
{
    (void)state;
    inst_t in = make("{\"name\": \"ts\", \"match\": {\"path_prefix\": \"/\"}, \"policy\": "
                     "\"thompson\", \"arms\": [\"champion\", \"challenger\", \"third\"], "
                     "\"min_share\": 0.1}");
    view_t w;
    view_init(&w, 3, 13);
    /* Arm 2 is certainly best: Thompson alone would never pick 0 or 1. */
    set_bernoulli(&w.stats[0], 100, 1000);
    set_bernoulli(&w.stats[1], 100, 1000);
    set_bernoulli(&w.stats[2], 900, 1000);
    int counts[MM_MAX_ARMS];
    const int n = 100000;
    route(&in, &w, n, counts);
    print_message("thompson min_share 0.1: shares %.4f %.4f %.4f\n", (double)counts[0] / n,
                  (double)counts[1] / n, (double)counts[2] / n);
    assert_share(counts[0], n, 0.1, 5, "floor arm 0");
    assert_share(counts[1], n, 0.1, 5, "floor arm 1");
    assert_share(counts[2], n, 0.8, 5, "best arm");
    json_t *d = in.ops->describe(in.p, &w.v);
    assert_true(fabs(num_at(arm_at(d, 0), "expected_share") - 0.1) < 1e-9);
    json_decref(d);
    unmake(&in);

    /* min_share = 1/arms: uniform whatever the posteriors. */
    in = make(EXP_TS(", \"min_share\": 0.5"));
    view_init(&w, 2, 14);
    set_bernoulli(&w.stats[0], 10, 1000);
    set_bernoulli(&w.stats[1], 900, 1000);
    route(&in, &w, n, counts);
    assert_share(counts[0], n, 0.5, 5, "min_share 1/2");
    unmake(&in);
}

static void test_thompson_check_reward(void **state)
{
    (void)state;
    inst_t in = make(EXP_TS(""));
    const double ok[] = {0.0, 1.0, 0.5, 1e-9};
    const double bad[] = {-0.001, 1.001, 2.0, -1.0, NAN, INFINITY, -INFINITY};
    for (size_t i = 0; i < MM_ARRAY_LEN(ok); i++)
        assert_int_equal(in.ops->check_reward(in.p, ok[i]), 1);
    for (size_t i = 0; i < MM_ARRAY_LEN(bad); i++)
        assert_int_equal(in.ops->check_reward(in.p, bad[i]), -1);
    assert_int_equal(in.ops->flags & POLICY_ACCEPTS_WEIGHTS, 0);
    unmake(&in);

    in = make(EXP_TS(", \"reward\": \"gaussian\""));
    const double gok[] = {0.0, -3.5, 1e6, 1.5};
    for (size_t i = 0; i < MM_ARRAY_LEN(gok); i++)
        assert_int_equal(in.ops->check_reward(in.p, gok[i]), 0);
    assert_int_equal(in.ops->check_reward(in.p, NAN), -1);
    assert_int_equal(in.ops->check_reward(in.p, INFINITY), -1);
    unmake(&in);
}

static void test_thompson_gaussian_posterior(void **state)
{
    (void)state;
    inst_t in = make(EXP_TS(", \"reward\": \"gaussian\", "
                            "\"prior\": {\"mean\": 0, \"precision\": 0.01}"));
    view_t w;
    view_init(&w, 2, 15);
    int counts[MM_MAX_ARMS];
    /* No data: both arms draw from the prior, an even split. */
    route(&in, &w, 20000, counts);
    assert_share(counts[0], 20000, 0.5, 5, "gaussian no data");

    /* 100 rewards each, sd 0.5, means 1.0 and 1.2: the difference of the
     * means has sd 0.5*sqrt(2/100) = 0.0707, so P(arm 1 best) = P(t_99-ish
     * > -2.83) ~ 0.997. */
    set_moments(&w.stats[0], 100, 1.0, 0.25 * 99 / 100);
    set_moments(&w.stats[1], 100, 1.2, 0.25 * 99 / 100);
    route(&in, &w, 20000, counts);
    assert_share(counts[1], 20000, 0.997, 6, "gaussian clear winner");

    /* Equal means, different spreads: still an even split. */
    set_moments(&w.stats[0], 50, 3.0, 0.01);
    set_moments(&w.stats[1], 50, 3.0, 4.0);
    route(&in, &w, 20000, counts);
    assert_share(counts[0], 20000, 0.5, 5, "gaussian equal means");

    /* describe: plug-in posterior of the mean. With precision 0.01 and
     * n/s^2 = 100/0.25 = 400: mean = 400*1.2/400.01, sd = 1/sqrt(400.01). */
    set_moments(&w.stats[0], 100, 1.0, 0.25 * 99 / 100);
    set_moments(&w.stats[1], 100, 1.2, 0.25 * 99 / 100);
    json_t *d = in.ops->describe(in.p, &w.v);
    assert_string_equal(json_string_value(json_object_get(d, "reward")), "gaussian");
    assert_true(fabs(num_at(arm_at(d, 1), "mean") - 400 * 1.2 / 400.01) < 1e-9);
    assert_true(fabs(num_at(arm_at(d, 1), "sd") - 1 / sqrt(400.01)) < 1e-9);
    assert_true(num_at(arm_at(d, 1), "p_best") > 0.98);
    json_decref(d);

    /* Constant rewards (variance 0 in every arm) must not produce NaN or
     * crash: with no spread anywhere the prior's variance 1/precision (100)
     * stands in, sigma^2 = 100 / chi2(10), so the better arm is favoured but
     * the other one is still tried. */
    set_moments(&w.stats[0], 10, 2.0, 0.0);
    set_moments(&w.stats[1], 10, 1.0, 0.0);
    route(&in, &w, 4000, counts);
    assert_true(counts[0] > 2400 && counts[0] < 3800);
    d = in.ops->describe(in.p, &w.v);
    assert_true(fabs(num_at(d, "pooled_variance") - 100.0) < 1e-9);
    json_decref(d);
    unmake(&in);
}

/* An arm whose few rewards are all equal (two zeros) next to one that
 * shows spread: its variance is drawn around the pooled variance of the
 * arms, not collapsed onto 0, so it keeps some traffic until it has more
 * rewards. (The Jeffreys prior gave it sd 0 at mean 0: never tried again
 * while the other arm's mean, 0.3, was clearly above 0.) */
/* Rewards with a large common offset: sd 1 around 1e7, means 0.44 apart,
 * 200 rewards each. The posterior sd of a mean is ~1/sqrt(200) = 0.071 and
 * the better arm is clearly best; a variance floor at 1e-12 * mean^2 (100
 * here) made it 0.71 and p_best 0.67. */
static void test_thompson_gaussian_large_offset(void **state)
{
    (void)state;
    inst_t in = make(EXP_TS(", \"reward\": \"gaussian\", "
                            "\"prior\": {\"mean\": 0, \"precision\": 1e-12}"));
    view_t w;
    view_init(&w, 2, 23);
    set_moments(&w.stats[0], 200, 1e7, 1.0);
    set_moments(&w.stats[1], 200, 1e7 + 0.44, 1.0);
    json_t *d = in.ops->describe(in.p, &w.v);
    for (size_t i = 0; i < 2; i++) {
        double sd = num_at(arm_at(d, i), "sd");
        if (!(sd > 0.05 && sd < 0.1)) fail_msg("arm %zu: posterior sd %g, want ~0.071", i, sd);
    }
    assert_true(num_at(arm_at(d, 1), "p_best") > 0.95);
    json_decref(d);
    unmake(&in);
}

/* One reward each, 1e17 against 5, under the default prior (sd 10): with
 * no variance estimate the prior's stands in, exactly, so the means are
 * r / 2 (5e16 and 2.5) and the 1e17 arm is the best. (The variance floor
 * for sums that lose the spread made it 1e19 here: mean 1.0, p_best 0.45.) */
static void test_thompson_gaussian_one_large_reward_is_not_floored(void **state)
{
    (void)state;
    inst_t in = make(EXP_TS(", \"reward\": \"gaussian\""));
    view_t w;
    view_init(&w, 2, 31);
    set_moments(&w.stats[0], 1, 1e17, 0.0);
    set_moments(&w.stats[1], 1, 5.0, 0.0);
    json_t *d = in.ops->describe(in.p, &w.v);
    assert_true(fabs(num_at(arm_at(d, 0), "mean") - 5e16) < 1e6);
    assert_true(fabs(num_at(arm_at(d, 1), "mean") - 2.5) < 1e-9);
    assert_true(num_at(arm_at(d, 0), "p_best") > 0.99);
    json_decref(d);
    unmake(&in);
}

/* The extremes a Gaussian prior may take (|mean| 1e100, precision 1e-200
 * or 1e12) with rewards at the reward bound (|r| 1e100): every number
 * describe shows is finite, and feedback moves the posterior. (A prior mean
 * of 1e300 with precision 1e12 made the means null and feedback ignored;
 * it is refused now, test_config_errors.) */
static void test_thompson_gaussian_extreme_prior_stays_finite(void **state)
{
    (void)state;
    static const char *const priors[] = {
        "{\"mean\": 1e100, \"precision\": 1e12}", "{\"mean\": -1e100, \"precision\": 1e12}",
        "{\"mean\": 1e100, \"precision\": 1e-200}", "{\"mean\": -1e100, \"precision\": 1e-200}"};
    static const double rewards[] = {1e100, -1e100, 0.0};
    for (size_t k = 0; k < MM_ARRAY_LEN(priors); k++) {
        char text[512];
        snprintf(text, sizeof text, EXP_TS(", \"reward\": \"gaussian\", \"prior\": %s"), priors[k]);
        inst_t in = make(text);
        for (size_t r = 0; r < MM_ARRAY_LEN(rewards); r++) {
            view_t w;
            view_init(&w, 2, 29);
            /* arm 0: no data, the prior; arm 1: 1000 rewards around rewards[r] */
            set_moments(&w.stats[1], 1000, rewards[r], 1e-6 * (rewards[r] * rewards[r] + 1));
            w.stats[1].errors = 5; /* error_reward 0: five more rewards of 0 */
            json_t *d = in.ops->describe(in.p, &w.v);
            if (!json_is_number(json_object_get(d, "pooled_variance")))
                fail_msg("%s, reward %g: pooled_variance not finite", priors[k], rewards[r]);
            double m[2];
            for (size_t i = 0; i < 2; i++) {
                const json_t *a = arm_at(d, i);
                if (!json_is_number(json_object_get(a, "mean")) ||
                    !json_is_number(json_object_get(a, "sd")))
                    fail_msg("%s, reward %g: arm %zu mean or sd not finite", priors[k], rewards[r],
                             i);
                m[i] = num_at(a, "mean");
            }
            /* With the weak prior the data decide: arm 1's mean is its
             * rewards' (the strong one, sd 1e-6, rightly stays put). */
            double want = rewards[r] * 1000 / 1005;
            if (strstr(priors[k], "1e-200") != NULL &&
                !(fabs(m[1] - want) <= 1e-3 * fmax(1.0, fabs(want))))
                fail_msg("%s, reward %g: arm 1 mean %g, want ~%g", priors[k], rewards[r], m[1],
                         want);
            json_decref(d);
            int counts[MM_MAX_ARMS];
            route(&in, &w, 100, counts); /* draws stay usable: no crash, a valid arm */
        }
        unmake(&in);
    }
}

/* A prior key left out takes its default (documented): alpha 1, beta 1;
 * mean 0, precision 0.01. */
static void test_thompson_missing_prior_key_takes_default(void **state)
{
    (void)state;
    static const struct {
        const char *params, *k1, *k2;
        double v1, v2;
    } cases[] = {
        {", \"prior\": {\"alpha\": 2}", "alpha", "beta", 2, 1},
        {", \"prior\": {\"beta\": 3}", "alpha", "beta", 1, 3},
        {", \"prior\": {}", "alpha", "beta", 1, 1},
        {", \"reward\": \"gaussian\", \"prior\": {\"mean\": 5}", "mean", "precision", 5, 0.01},
        {", \"reward\": \"gaussian\", \"prior\": {\"precision\": 1e-8}", "mean", "precision", 0,
         1e-8},
    };
    for (size_t k = 0; k < MM_ARRAY_LEN(cases); k++) {
        char text[512];
        snprintf(text, sizeof text, EXP_TS("%s"), cases[k].params);
        inst_t in = make(text);
        view_t w;
        view_init(&w, 2, 31);
        json_t *d = in.ops->describe(in.p, &w.v);
        const json_t *prior = json_object_get(d, "prior");
        if (num_at(prior, cases[k].k1) != cases[k].v1 || num_at(prior, cases[k].k2) != cases[k].v2)
            fail_msg("%s: prior %s %g, %s %g", cases[k].params, cases[k].k1,
                     num_at(prior, cases[k].k1), cases[k].k2, num_at(prior, cases[k].k2));
        json_decref(d);
        unmake(&in);
    }
}

static void test_thompson_gaussian_equal_rewards_do_not_collapse(void **state)
{
    (void)state;
    inst_t in = make(EXP_TS(", \"reward\": \"gaussian\""));
    view_t w;
    view_init(&w, 2, 15);
    int counts[MM_MAX_ARMS];
    set_moments(&w.stats[0], 2, 0.0, 0.0);
    set_moments(&w.stats[1], 200, 0.3, 0.21);
    json_t *d = in.ops->describe(in.p, &w.v);
    /* pooled: (0 + 0.21 * 200) / (1 + 199) */
    assert_true(fabs(num_at(d, "pooled_variance") - 0.21) < 1e-9);
    json_decref(d);
    route(&in, &w, 20000, counts);
    /* arm 0: mean ~ t-like with 2 dof around 0, scale sqrt(0.21 / 2) ~ 0.32:
     * P(draw > 0.3) is about 0.2. */
    assert_true(counts[0] > 1000 && counts[0] < 8000);

    /* Many equal rewards are evidence, though: 200 zeros against 0.3. */
    set_moments(&w.stats[0], 200, 0.0, 0.0);
    route(&in, &w, 20000, counts);
    assert_true(counts[0] < 20);
    unmake(&in);
}

/* ---- simulations: the store syncs every `sync` decisions ---- */

typedef struct {
    double last_share; /* share of the best arm over the last `tail` decisions */
    double regret;     /* pseudo-regret: sum of (best rate - chosen arm's rate) */
} sim_result_t;

static sim_result_t simulate(const inst_t *in, const double *rates, size_t n_arms, int requests,
                             int sync, int tail, uint64_t seed)
{
    view_t w;
    arm_stats_t live[MM_MAX_ARMS];
    mm_rng_t env;
    view_init(&w, n_arms, seed);
    mm_rng_seed(&env, seed ^ 0x9e3779b97f4a7c15ULL);
    memset(live, 0, sizeof live);
    size_t best = 0;
    for (size_t i = 1; i < n_arms; i++)
        if (rates[i] > rates[best]) best = i;
    sim_result_t r = {0, 0};
    int tail_best = 0;
    for (int t = 0; t < requests; t++) {
        if (t % sync == 0) memcpy(w.stats, live, sizeof live);
        int a = choose(in, &w);
        double reward = mm_rng_uniform(&env) < rates[a] ? 1.0 : 0.0;
        live[a].pulls++;
        live[a].feedback++;
        live[a].reward_sum += reward;
        live[a].reward_sq_sum += reward * reward;
        live[a].successes += reward;
        live[a].failures += 1.0 - reward;
        r.regret += rates[best] - rates[a];
        if (t >= requests - tail) tail_best += (size_t)a == best;
    }
    r.last_share = (double)tail_best / tail;
    return r;
}

static void test_thompson_converges_with_batched_stats(void **state)
{
    (void)state;
    inst_t in = make(EXP_TS(""));
    const double rates[] = {0.04, 0.05};
    int passing = 0;
    char line[512];
    size_t off = 0;
    for (uint64_t seed = 1; seed <= 10; seed++) {
        sim_result_t r = simulate(&in, rates, 2, 50000, 1000, 10000, seed);
        passing += r.last_share >= 0.80;
        off += (size_t)snprintf(line + off, sizeof line - off, " %.3f", r.last_share);
    }
    print_message("thompson 0.04 vs 0.05, 50k requests, sync 1000: best-arm share of the last "
                  "10k per seed:%s; %d/10 seeds >= 0.80\n",
                  line, passing);
    assert_true(passing >= 9);
    unmake(&in);
}

static void test_thompson_regret(void **state)
{
    (void)state;
    inst_t in = make(EXP_TS(""));
    const double rates[] = {0.04, 0.05};
    double sum = 0, worst = 0;
    char line[512];
    size_t off = 0;
    for (uint64_t seed = 1; seed <= 10; seed++) {
        sim_result_t r = simulate(&in, rates, 2, 100000, 1000, 10000, 100 + seed);
        sum += r.regret;
        if (r.regret > worst) worst = r.regret;
        off += (size_t)snprintf(line + off, sizeof line - off, " %.0f", r.regret);
    }
    print_message("thompson 0.04 vs 0.05, 100k requests, sync 1000: cumulative regret per "
                  "seed:%s; mean %.1f, max %.1f (uniform split would be 500)\n",
                  line, sum / 10, worst);
    assert_true(sum / 10 <= 150);
    unmake(&in);
}

/* ---- epsilon_greedy ---- */

#define EXP_EG(params)                                                                             \
    "{\"name\": \"eg\", \"match\": {\"path_prefix\": \"/\"}, \"policy\": \"epsilon_greedy\", "     \
    "\"arms\": [\"champion\", \"challenger\"]" params "}"

static void test_egreedy_explore_share(void **state)
{
    (void)state;
    inst_t in = make(EXP_EG(", \"epsilon\": 0.2"));
    view_t w;
    view_init(&w, 2, 21);
    set_bernoulli(&w.stats[0], 40, 1000);
    set_bernoulli(&w.stats[1], 50, 1000);
    int counts[MM_MAX_ARMS];
    const int n = 100000;
    route(&in, &w, n, counts);
    print_message("epsilon_greedy eps 0.2: best-arm share %.4f (expected 0.9)\n",
                  (double)counts[1] / n);
    assert_share(counts[1], n, 0.9, 5, "epsilon 0.2");
    json_t *d = in.ops->describe(in.p, &w.v);
    assert_true(fabs(num_at(d, "epsilon_t") - 0.2) < 1e-12);
    assert_true(json_is_true(json_object_get(arm_at(d, 1), "greedy")));
    assert_true(json_is_false(json_object_get(arm_at(d, 0), "greedy")));
    assert_true(fabs(num_at(arm_at(d, 1), "expected_share") - 0.9) < 1e-12);
    json_decref(d);
    /* No declared reward model: any finite reward; 0 and 1 are Bernoulli
     * outcomes, counted in successes/failures. */
    assert_int_equal(policy_check_reward(in.ops, in.p, -7.5), 0);
    assert_int_equal(policy_check_reward(in.ops, in.p, 0.5), 0);
    assert_int_equal(policy_check_reward(in.ops, in.p, 1.0), 1);
    assert_int_equal(policy_check_reward(in.ops, in.p, 0.0), 1);
    assert_int_equal(policy_check_reward(in.ops, in.p, NAN), -1);
    assert_int_equal(in.ops->flags & POLICY_ACCEPTS_WEIGHTS, 0);
    unmake(&in);

    /* Default epsilon is 0.1. */
    in = make(EXP_EG(""));
    route(&in, &w, n, counts);
    assert_share(counts[1], n, 0.95, 5, "default epsilon");
    unmake(&in);
}

static void test_egreedy_decay_follows_formula(void **state)
{
    (void)state;
    /* eps_t = 0.5 * 1000 / (1000 + t), t = sum of pulls. */
    inst_t in = make(EXP_EG(", \"epsilon\": 0.5, \"decay\": 1000"));
    view_t w;
    view_init(&w, 2, 22);
    const uint64_t ts[] = {0, 3000, 99000};
    int counts[MM_MAX_ARMS];
    const int n = 100000;
    for (size_t k = 0; k < MM_ARRAY_LEN(ts); k++) {
        /* Both arms tried (means 0.3 and 0.6); t decisions so far. */
        set_moments(&w.stats[0], 10, 0.3, 0.21);
        set_moments(&w.stats[1], 10, 0.6, 0.24);
        w.stats[0].pulls = w.stats[1].pulls = ts[k] / 2;
        double eps = 0.5 * 1000.0 / (1000.0 + (double)ts[k]);
        route(&in, &w, n, counts);
        print_message("epsilon_greedy decay: t=%llu eps_t=%.4f best share %.4f (expected %.4f)\n",
                      (unsigned long long)ts[k], eps, (double)counts[1] / n, 1 - eps / 2);
        assert_share(counts[1], n, 1 - eps / 2, 5, "decayed epsilon");
        json_t *d = in.ops->describe(in.p, &w.v);
        assert_true(fabs(num_at(d, "epsilon_t") - eps) < 1e-12);
        assert_true(num_at(d, "decisions") == (double)ts[k]);
        json_decref(d);
    }
    unmake(&in);
}

static void test_egreedy_untried_first_and_ties(void **state)
{
    (void)state;
    inst_t in = make("{\"name\": \"eg\", \"match\": {\"path_prefix\": \"/\"}, \"policy\": "
                     "\"epsilon_greedy\", \"arms\": [\"champion\", \"challenger\", \"third\"], "
                     "\"epsilon\": 0}");
    view_t w;
    view_init(&w, 3, 23);
    int counts[MM_MAX_ARMS];
    /* Arm 0 has a great mean, arms 1 and 2 no feedback: they go first,
     * shared evenly. */
    set_bernoulli(&w.stats[0], 90, 100);
    route(&in, &w, 20000, counts);
    assert_int_equal(counts[0], 0);
    assert_share(counts[1], 20000, 0.5, 5, "untried tie");
    /* All tried; arms 0 and 2 tie on the best mean; arm 1 never. */
    set_bernoulli(&w.stats[1], 10, 100);
    set_bernoulli(&w.stats[2], 45, 50);
    route(&in, &w, 20000, counts);
    assert_int_equal(counts[1], 0);
    assert_share(counts[0], 20000, 0.5, 5, "best-mean tie");
    unmake(&in);
}

/* ---- ucb1 ---- */

#define EXP_UCB(params)                                                                            \
    "{\"name\": \"ucb\", \"match\": {\"path_prefix\": \"/\"}, \"policy\": \"ucb1\", "              \
    "\"arms\": [\"champion\", \"challenger\"]" params "}"

static void test_ucb1_hand_computed(void **state)
{
    (void)state;
    inst_t in = make(EXP_UCB(""));
    view_t w;
    view_init(&w, 2, 31);
    /* n = 1050, ln n = 6.95655, 2 ln n = 13.9131.
     * arm 0: 1000 rewards, mean 0.7: 0.7 + sqrt(13.9131/1000) = 0.81795
     * arm 1:   50 rewards, mean 0.6: 0.6 + sqrt(13.9131/50)   = 1.12750 -> arm 1 */
    set_moments(&w.stats[0], 1000, 0.7, 0.21);
    set_moments(&w.stats[1], 50, 0.6, 0.24);
    for (int i = 0; i < 100; i++) assert_int_equal(choose(&in, &w), 1);
    json_t *d = in.ops->describe(in.p, &w.v);
    assert_string_equal(json_string_value(json_object_get(d, "variant")), "ucb1");
    assert_true(fabs(num_at(arm_at(d, 0), "ucb") - 0.81795) < 1e-5);
    assert_true(fabs(num_at(arm_at(d, 1), "ucb") - 1.12750) < 1e-5);
    /* the effective share: every request goes to arm 1 until the next reward */
    assert_true(num_at(arm_at(d, 0), "expected_share") == 0.0);
    assert_true(num_at(arm_at(d, 1), "expected_share") == 1.0);
    json_decref(d);
    /* n = 1500, 2 ln n = 14.6264.
     * arm 0: 0.7 + sqrt(14.6264/1000) = 0.82094
     * arm 1: 0.6 + sqrt(14.6264/500)  = 0.77103 -> arm 0 */
    set_moments(&w.stats[1], 500, 0.6, 0.24);
    for (int i = 0; i < 100; i++) assert_int_equal(choose(&in, &w), 0);
    d = in.ops->describe(in.p, &w.v);
    assert_true(fabs(num_at(arm_at(d, 0), "ucb") - 0.82094) < 1e-5);
    assert_true(fabs(num_at(arm_at(d, 1), "ucb") - 0.77103) < 1e-5);
    json_decref(d);
    assert_int_equal(policy_check_reward(in.ops, in.p, 42.0), 0);
    assert_int_equal(policy_check_reward(in.ops, in.p, 1.0), 1);
    assert_int_equal(policy_check_reward(in.ops, in.p, -0.0), 1);
    assert_int_equal(policy_check_reward(in.ops, in.p, INFINITY), -1);
    assert_int_equal(in.ops->flags & POLICY_ACCEPTS_WEIGHTS, 0);
    unmake(&in);
}

static void test_ucb1_tuned_hand_computed(void **state)
{
    (void)state;
    inst_t tuned = make(EXP_UCB(", \"variant\": \"ucb1_tuned\""));
    inst_t plain = make(EXP_UCB(", \"variant\": \"ucb1\""));
    view_t w;
    view_init(&w, 2, 32);
    /* n = 1150, ln n = 7.04752, 2 ln n = 14.0950.
     * ucb1:  arm 0 0.7 + sqrt(14.0950/1000) = 0.81872
     *        arm 1 0.6 + sqrt(14.0950/150)  = 0.90654 -> arm 1
     * tuned: V0 = 0.21 + 0.11872 > 1/4, V1 = 0.24 + 0.30654 > 1/4:
     *        arm 0 0.7 + sqrt(7.04752/1000 * 0.25) = 0.74197
     *        arm 1 0.6 + sqrt(7.04752/150 * 0.25)  = 0.70838 -> arm 0 */
    set_moments(&w.stats[0], 1000, 0.7, 0.21);
    set_moments(&w.stats[1], 150, 0.6, 0.24);
    for (int i = 0; i < 100; i++) {
        assert_int_equal(choose(&plain, &w), 1);
        assert_int_equal(choose(&tuned, &w), 0);
    }
    json_t *d = tuned.ops->describe(tuned.p, &w.v);
    assert_string_equal(json_string_value(json_object_get(d, "variant")), "ucb1_tuned");
    assert_true(fabs(num_at(arm_at(d, 0), "ucb") - 0.74197) < 1e-5);
    assert_true(fabs(num_at(arm_at(d, 1), "ucb") - 0.70838) < 1e-5);
    json_decref(d);
    /* Below the 1/4 cap: constant rewards of 0.5 (variance 0), n = 2000,
     * ln n = 7.60090: V0 = 0 + sqrt(15.2018/1000) = 0.12330,
     * bonus = sqrt(7.60090/1000 * 0.12330) = 0.030613. */
    set_moments(&w.stats[0], 1000, 0.5, 0.0);
    set_moments(&w.stats[1], 1000, 0.5, 0.0);
    d = tuned.ops->describe(tuned.p, &w.v);
    assert_true(fabs(num_at(arm_at(d, 0), "bonus") - 0.030613) < 1e-6);
    json_decref(d);
    unmake(&tuned);
    unmake(&plain);
}

static void test_ucb1_untried_first_and_ties(void **state)
{
    (void)state;
    inst_t in = make("{\"name\": \"ucb\", \"match\": {\"path_prefix\": \"/\"}, \"policy\": "
                     "\"ucb1\", \"arms\": [\"champion\", \"challenger\", \"third\"]}");
    view_t w;
    view_init(&w, 3, 33);
    int counts[MM_MAX_ARMS];
    /* Arm 1 untried, however good the others look. */
    set_moments(&w.stats[0], 1000, 0.99, 0.0);
    set_moments(&w.stats[2], 1000, 0.99, 0.0);
    route(&in, &w, 1000, counts);
    assert_int_equal(counts[1], 1000);
    /* Two untried: uniform between them. */
    memset(&w.stats[2], 0, sizeof w.stats[2]);
    route(&in, &w, 20000, counts);
    assert_int_equal(counts[0], 0);
    assert_share(counts[1], 20000, 0.5, 5, "untried pair");
    json_t *d = in.ops->describe(in.p, &w.v);
    assert_true(num_at(arm_at(d, 0), "expected_share") == 0.0);
    assert_true(num_at(arm_at(d, 1), "expected_share") == 0.5);
    assert_true(num_at(arm_at(d, 2), "expected_share") == 0.5);
    json_decref(d);
    /* Identical statistics: an exact tie, broken uniformly. */
    set_moments(&w.stats[0], 100, 0.5, 0.25);
    set_moments(&w.stats[1], 100, 0.5, 0.25);
    set_moments(&w.stats[2], 100, 0.5, 0.25);
    route(&in, &w, 30000, counts);
    assert_share(counts[2], 30000, 1.0 / 3, 5, "three-way tie");
    d = in.ops->describe(in.p, &w.v);
    assert_true(fabs(num_at(arm_at(d, 2), "expected_share") - 1.0 / 3) < 1e-12);
    json_decref(d);
    unmake(&in);
}

/* Was: a uniform draw among the arms without feedback, so the first three
 * requests of a fresh 3-arm experiment (rewards not back yet) could go to
 * two arms, one twice. UCB1 plays every arm once first. */
static void test_ucb1_tries_every_arm_before_repeating_one(void **state)
{
    (void)state;
    inst_t in = make("{\"name\": \"ucb\", \"match\": {\"path_prefix\": \"/\"}, \"policy\": "
                     "\"ucb1\", \"arms\": [\"champion\", \"challenger\", \"third\"]}");
    for (uint64_t seed = 1; seed <= 50; seed++) {
        view_t w;
        view_init(&w, 3, seed);
        int seen[3] = {0, 0, 0};
        for (int r = 0; r < 3; r++) {
            policy_choice_t c;
            memset(&c, 0, sizeof c);
            in.ops->choose(in.p, &w.v, NULL, &c);
            assert_in_range(c.primary, 0, 2);
            seen[c.primary]++;
            w.stats[c.primary].pulls++; /* routed, no reward yet */
        }
        assert_int_equal(seen[0], 1);
        assert_int_equal(seen[1], 1);
        assert_int_equal(seen[2], 1);
    }
    unmake(&in);
}

/* ---- paused: choose() goes on over the frozen statistics ---- */

static void test_paused_bandits_keep_choosing(void **state)
{
    (void)state;
    /* The router applies promote and rollback itself; while paused it hands
     * the policy the statistics frozen at the pause, and the policy must
     * keep routing on them (no learning, no stop). */
    const char *exps[] = {EXP_TS(""), EXP_EG(""), EXP_UCB("")};
    for (size_t k = 0; k < MM_ARRAY_LEN(exps); k++) {
        inst_t in = make(exps[k]);
        view_t w;
        view_init(&w, 2, 41);
        w.control.state = EXP_PAUSED;
        set_bernoulli(&w.stats[0], 100, 1000);
        set_bernoulli(&w.stats[1], 900, 1000);
        int counts[MM_MAX_ARMS];
        route(&in, &w, 1000, counts);
        assert_true(counts[1] > 850);
        json_t *d = in.ops->describe(in.p, &w.v);
        assert_true(json_is_object(d));
        assert_int_equal(json_array_size(json_object_get(d, "arms")), 2);
        json_decref(d);
        unmake(&in);
    }
}

/* ---- configuration errors, with their line and column ---- */

/* Line and column (1-based) of the first occurrence of `needle` in text. */
/* The experiment must be rejected with "test.json:LINE:COL: " pointing at
 * `needle` (the offending value or key) and a message containing `words`. */
static void expect_error(const char *experiment, const char *needle, const char *words)
{
    char *text = config_text(experiment);
    expect_refused_at(text, strstr(text, "\"experiments\""), needle, words);
    free(text);
}

#define EXP_HEAD "{\"name\": \"x\", \"match\": {\"path_prefix\": \"/\"},\n     "

/* ---- errors as rewards ---- */

/* Arm 0 answers and converts at 30 %; arm 1 answers every request with a
 * 5xx, so the application never sends feedback for it. Each policy must
 * move the traffic to arm 0 once the errors count (error_reward, default
 * 0), and behaves as before with "error_reward": null. */
static void failing_arm_view(view_t *w, uint64_t seed)
{
    view_init(w, 2, seed);
    set_bernoulli(&w->stats[0], 60, 200);
    w->stats[1].pulls = 200;
    w->stats[1].errors = 200;
}

static void test_errors_count_as_rewards(void **state)
{
    (void)state;
    static const char *const policies[] = {
        "\"policy\": \"thompson\", \"arms\": [\"champion\", \"challenger\"]",
        "\"policy\": \"epsilon_greedy\", \"arms\": [\"champion\", \"challenger\"]",
        "\"policy\": \"ucb1\", \"arms\": [\"champion\", \"challenger\"]",
        "\"policy\": \"ucb1\", \"variant\": \"ucb1_tuned\", \"arms\": [\"champion\", "
        "\"challenger\"]",
    };
    for (size_t k = 0; k < sizeof policies / sizeof *policies; k++) {
        char text[512];
        int counts[MM_MAX_ARMS];
        view_t w;
        snprintf(text, sizeof text, EXP_HEAD "%s}", policies[k]);
        inst_t in = make(text);
        failing_arm_view(&w, 5 + k);
        route(&in, &w, 2000, counts);
        /* epsilon_greedy explores 10 % uniformly: 5 % to arm 1 */
        if (counts[1] > 150) fail_msg("%s: %d of 2000 to the failing arm", policies[k], counts[1]);
        json_t *d = in.ops->describe(in.p, &w.v);
        assert_int_equal(num_at(arm_at(d, 1), "errors"), 200);
        assert_int_equal(num_at(arm_at(d, 1), "feedback"), 0);
        assert_true(num_at(d, "error_reward") == 0.0);
        json_decref(d);
        unmake(&in);

        /* null: errors are not rewards — the failing arm is "untried" */
        snprintf(text, sizeof text, EXP_HEAD "%s, \"error_reward\": null}", policies[k]);
        in = make(text);
        failing_arm_view(&w, 5 + k);
        route(&in, &w, 2000, counts);
        if (counts[1] < 1000) fail_msg("%s, null: %d of 2000", policies[k], counts[1]);
        d = in.ops->describe(in.p, &w.v);
        assert_true(json_is_null(json_object_get(d, "error_reward")));
        json_decref(d);
        unmake(&in);
    }
}

/* error_reward r: each error is a reward r, so an arm whose 100 errors
 * score 0.5 looks exactly like one with 100 rewards of 0.5. */
static void test_error_reward_value(void **state)
{
    (void)state;
    inst_t in = make(EXP_TS(", \"error_reward\": 0.25"));
    view_t w;
    view_init(&w, 2, 3);
    set_bernoulli(&w.stats[0], 10, 40);
    w.stats[1].errors = 100;
    json_t *d = in.ops->describe(in.p, &w.v);
    /* Beta(1 + 25, 1 + 75) */
    assert_true(num_at(arm_at(d, 1), "alpha") == 26 && num_at(arm_at(d, 1), "beta") == 76);
    assert_true(num_at(arm_at(d, 0), "alpha") == 11 && num_at(arm_at(d, 0), "beta") == 31);
    json_decref(d);
    unmake(&in);

    in = make(EXP_HEAD "\"policy\": \"epsilon_greedy\", \"arms\": [\"champion\", "
                       "\"challenger\"], \"error_reward\": -2}");
    view_init(&w, 2, 3);
    set_moments(&w.stats[0], 10, 1.0, 0.0);
    w.stats[0].errors = 10; /* mean (10 * 1 + 10 * -2) / 20 = -0.5 */
    d = in.ops->describe(in.p, &w.v);
    assert_true(num_at(arm_at(d, 0), "mean") == -0.5);
    assert_true(json_is_null(json_object_get(arm_at(d, 1), "mean")));
    json_decref(d);
    unmake(&in);
}

/* Two arms with the same statistics share the traffic, also when the
 * prior's shapes are so small that most Beta draws are exactly 0 (a tie
 * the first arm used to win: 61 % with alpha 1e-3, 77 % with 1e-300). */
static void test_thompson_exact_ties_are_shared(void **state)
{
    (void)state;
    static const char *const priors[] = {"{\"alpha\": 0.001, \"beta\": 1}",
                                         "{\"alpha\": 1e-300, \"beta\": 1e-300}"};
    for (size_t k = 0; k < 2; k++) {
        char text[512];
        snprintf(text, sizeof text, EXP_TS(", \"prior\": %s"), priors[k]);
        inst_t in = make(text);
        view_t w;
        view_init(&w, 2, 17);
        int counts[MM_MAX_ARMS];
        route(&in, &w, 10000, counts);
        assert_share(counts[0], 10000, 0.5, 5, priors[k]);
        /* describe: a moment it cannot compute is null, not missing */
        json_t *d = in.ops->describe(in.p, &w.v);
        for (size_t i = 0; i < 2; i++) {
            const json_t *a = arm_at(d, i);
            const char *keys[] = {"alpha", "beta", "mean", "sd", "p_best", "expected_share"};
            for (size_t j = 0; j < 6; j++)
                if (json_object_get(a, keys[j]) == NULL) fail_msg("%s: no %s", priors[k], keys[j]);
        }
        json_decref(d);
        unmake(&in);
    }
}

static void test_config_errors(void **state)
{
    (void)state;
    expect_error(EXP_HEAD "\"policy\": \"epsilon_greedy\", \"arms\": [\"champion\", "
                          "\"challenger\"],\n     \"epsilon\": 1.5}",
                 "1.5", "epsilon");
    expect_error(EXP_HEAD "\"policy\": \"epsilon_greedy\", \"arms\": [\"champion\", "
                          "\"challenger\"], \"decay\": 0}",
                 "0}", "decay");
    expect_error(EXP_HEAD "\"policy\": \"thompson\", \"arms\": [\"champion\", \"challenger\"], "
                          "\"min_share\": 0.6}",
                 "0.6", "min_share");
    expect_error(EXP_HEAD "\"policy\": \"thompson\", \"arms\": [\"champion\", \"challenger\"], "
                          "\"reward\": \"poisson\"}",
                 "\"poisson\"", "reward");
    expect_error(EXP_HEAD "\"policy\": \"thompson\", \"arms\": [\"champion\", \"challenger\"], "
                          "\"prior\": {\"alpha\": 0, \"beta\": 1}}",
                 "0,", "alpha");
    expect_error(EXP_HEAD "\"policy\": \"thompson\", \"arms\": [\"champion\", \"challenger\"], "
                          "\"prior\": {\"mean\": 0, \"precision\": 1}}",
                 "\"mean\"", "mean");
    /* A Gaussian prior keeps the posterior finite: |mean| <= 1e100 (the
     * reward bound; 1e300 * precision 1e12 overflowed the posterior mean)
     * and precision >= 1e-200 (1/precision, the prior variance, overflowed
     * for a subnormal precision, and feedback then had no effect). */
    expect_error(
        EXP_HEAD
        "\"policy\": \"thompson\", \"arms\": [\"champion\", \"challenger\"], "
        "\"reward\": \"gaussian\",\n     \"prior\": {\"mean\": 1e300, \"precision\": 1e12}}",
        "1e300", "mean");
    expect_error(EXP_HEAD "\"policy\": \"thompson\", \"arms\": [\"champion\", \"challenger\"], "
                          "\"reward\": \"gaussian\",\n     \"prior\": {\"mean\": -1.5e100}}",
                 "-1.5e100", "mean");
    expect_error(EXP_HEAD "\"policy\": \"thompson\", \"arms\": [\"champion\", \"challenger\"], "
                          "\"reward\": \"gaussian\",\n     \"prior\": {\"precision\": 1e-310}}",
                 "1e-310", "precision");
    expect_error(EXP_HEAD "\"policy\": \"thompson\", \"arms\": [\"champion\", \"challenger\"], "
                          "\"reward\": \"gaussian\",\n     \"prior\": {\"precision\": 2e12}}",
                 "2e12", "precision");
    expect_error(EXP_HEAD "\"policy\": \"ucb1\", \"arms\": [\"champion\", \"challenger\"],\n"
                          "     \"variant\": \"ucb2\"}",
                 "\"ucb2\"", "variant");
    expect_error(EXP_HEAD "\"policy\": \"ucb1\", \"arms\": [\"champion\", \"challenger\"],\n"
                          "     \"epsilon\": 0.1}",
                 "\"epsilon\"", "epsilon");
    expect_error(EXP_HEAD "\"policy\": \"thompson\", \"arms\": [\"champion\"]}", "[\"champion\"]",
                 "2 arms");
    expect_error(EXP_HEAD "\"policy\": \"ucb1\", \"arms\": [\"champion\", \"nowhere\"]}",
                 "\"nowhere\"", "nowhere");
    expect_error(EXP_HEAD "\"policy\": \"epsilon_greedy\", \"arms\": [\"champion\", 7]}", "7]",
                 "arm");
    /* A Bernoulli error reward is a success share; other rewards any number. */
    expect_error(EXP_HEAD "\"policy\": \"thompson\", \"arms\": [\"champion\", \"challenger\"],\n"
                          "     \"error_reward\": 1.5}",
                 "1.5", "error_reward");
    expect_error(EXP_HEAD "\"policy\": \"ucb1\", \"arms\": [\"champion\", \"challenger\"],\n"
                          "     \"error_reward\": \"low\"}",
                 "\"low\"", "error_reward");
    expect_error(EXP_HEAD "\"policy\": \"epsilon_greedy\", \"arms\": [\"champion\", "
                          "\"challenger\"],\n     \"error_reward\": 1e101}",
                 "1e101", "error_reward");
}

/* The example configs shipped in config/ parse and name the right policy. */
static void test_example_configs_parse(void **state)
{
    (void)state;
    const char *dir = getenv("MM_SOURCE_DIR");
    const char *names[] = {"thompson", "epsilon_greedy", "ucb1"};
    if (dir == NULL) skip();
    for (size_t i = 0; i < MM_ARRAY_LEN(names); i++) {
        char path[1024], err[512] = "";
        snprintf(path, sizeof path, "%s/config/%s.json", dir, names[i]);
        config_t *c = config_load(path, err, sizeof err);
        if (c == NULL) fail_msg("%s", err);
        assert_int_equal(c->n_experiments, 1);
        assert_string_equal(c->experiments[0].ops->name, names[i]);
        assert_int_equal(c->experiments[0].n_arms, 2);
        config_free(c);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_thompson_share_follows_posterior),
        cmocka_unit_test(test_thompson_prior_is_used),
        cmocka_unit_test(test_thompson_min_share_floor),
        cmocka_unit_test(test_thompson_check_reward),
        cmocka_unit_test(test_thompson_gaussian_posterior),
        cmocka_unit_test(test_thompson_gaussian_equal_rewards_do_not_collapse),
        cmocka_unit_test(test_thompson_gaussian_large_offset),
        cmocka_unit_test(test_thompson_gaussian_one_large_reward_is_not_floored),
        cmocka_unit_test(test_thompson_gaussian_extreme_prior_stays_finite),
        cmocka_unit_test(test_thompson_missing_prior_key_takes_default),
        cmocka_unit_test(test_thompson_converges_with_batched_stats),
        cmocka_unit_test(test_thompson_regret),
        cmocka_unit_test(test_egreedy_explore_share),
        cmocka_unit_test(test_egreedy_decay_follows_formula),
        cmocka_unit_test(test_egreedy_untried_first_and_ties),
        cmocka_unit_test(test_ucb1_hand_computed),
        cmocka_unit_test(test_ucb1_tuned_hand_computed),
        cmocka_unit_test(test_ucb1_untried_first_and_ties),
        cmocka_unit_test(test_ucb1_tries_every_arm_before_repeating_one),
        cmocka_unit_test(test_paused_bandits_keep_choosing),
        cmocka_unit_test(test_errors_count_as_rewards),
        cmocka_unit_test(test_error_reward_value),
        cmocka_unit_test(test_thompson_exact_ties_are_shared),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_example_configs_parse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
