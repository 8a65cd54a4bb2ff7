/* thompson.c — Thompson sampling (DESIGN.md §3 `thompson`).
 *
 * Every request draws one sample from each arm's posterior and goes to the
 * arm with the largest draw, so an arm gets traffic in proportion to the
 * probability that it is the best one. That is why Thompson copes well with
 * what a proxy sees: rewards arrive late and the statistics are synced in
 * batches, and a randomized rule keeps spreading traffic while the view is
 * stale, where a deterministic index (UCB) would send the whole batch to one
 * arm.
 *
 * The policy keeps no learned state: the posteriors are rebuilt from the
 * store's arm statistics (view->stats) at every decision. That costs one or
 * two gamma draws per arm (<= 16 arms), and in exchange every instance sees
 * the same posteriors, reset is the store's job, and nothing can drift.
 *
 * Models:
 *  - bernoulli: Beta(alpha + successes, beta + failures); the prior is
 *    {"alpha", "beta"}, default Beta(1, 1) (uniform).
 *  - gaussian: unknown mean and unknown noise variance. The prior on the mean
 *    is Normal(mean, 1/precision), default N(0, 100). With n >= 2 rewards the
 *    noise variance is drawn from its posterior, a scaled inverse chi-square
 *    with one pseudo-reward's worth of prior variance s0^2:
 *      sigma^2 = (SS + s0^2) / chi2(n)   (SS the sum of squared deviations),
 *    and the mean from the conjugate Normal given that variance:
 *      precision_n = precision + n / sigma^2,
 *      mean_n = (precision * mean + n * xbar / sigma^2) / precision_n.
 *    s0^2 is the pooled within-arm variance of every arm with two or more
 *    rewards (sum of SS over sum of n - 1), so it is in the rewards' own
 *    units and needs no setting; when no arm shows any spread yet, the prior
 *    variance 1/precision. Without it (the Jeffreys prior, SS / chi2(n-1))
 *    an arm whose rewards so far are all equal (two zeros) had a posterior
 *    collapsed onto that value and could never be tried again; with it such
 *    an arm is as uncertain as the noise the other arms show, and the one
 *    pseudo-reward weighs nothing once an arm has a few dozen. With a flat
 *    prior on the mean (precision -> 0) the mean's posterior is a Student-t,
 *    the textbook answer. With n < 2 there is no variance estimate and the
 *    prior variance 1/precision stands in for the noise variance, which
 *    keeps new arms wide and therefore explored.
 *
 * Errors: each error of an arm (5xx or no answer) counts as one more reward
 * of `error_reward` (default 0, a failure; null: errors are not rewards).
 * Without it an arm that only fails never gets feedback and keeps its prior
 * for ever — against a champion converting at 30 %, a Beta(1,1) arm that
 * always fails would keep ~70 % of the traffic (policy_scored_stats).
 *
 * min_share: with probability n_arms * min_share the request goes to an arm
 * chosen uniformly, else to the Thompson pick, so each arm's share is at
 * least min_share whatever the posteriors say.
 *
 * Weights are refused (flags 0: the admin API answers 409); promote and
 * rollback are applied by the router before choose() is called, and while
 * paused the view holds the statistics frozen at the pause. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"

/* Monte-Carlo draws behind p_best in describe(): the standard error of a
 * probability estimate is at most 0.5/sqrt(2000) ~ 0.011. Fixed seed so that
 * the same statistics describe the same way. */
#define TS_DESCRIBE_DRAWS 2000
#define TS_DESCRIBE_SEED  0x7468306d70736f6eULL

/* The Gaussian prior's bounds keep every posterior number finite whatever
 * the rewards (|r| <= MM_REWARD_MAX, 1e100): precision * mean <= 1e112 and
 * precision * mean^2 <= 1e212; the prior variance 1/precision <= 1e200
 * (a prior sd as wide as the largest reward), so the pooled variance plus
 * it, over a chi-square draw, stays far below DBL_MAX. A prior mean of 1e300
 * made precision * mean infinite (the means showed null and feedback had no
 * effect), and so did a subnormal precision's 1/precision. */
#define TS_PREC_MIN 1e-200
#define TS_PREC_MAX 1e12

typedef struct {
    size_t n_arms;
    char names[MM_MAX_ARMS][MM_NAME_MAX + 1];
    int gaussian;
    double alpha0, beta0; /* bernoulli prior */
    double mean0, prec0;  /* gaussian prior on the mean */
    double min_share;
    double error_reward; /* NaN: errors are not rewards */
} thompson_t;

/* Posterior summary of one Gaussian arm. */
typedef struct {
    uint64_t n;
    double xbar;
    double ss; /* sum of squared deviations from xbar */
} gauss_suff_t;

static gauss_suff_t gauss_suff(const arm_stats_t *s)
{
    gauss_suff_t g = {s->feedback, 0.0, 0.0};
    if (g.n == 0) return g;
    g.xbar = s->reward_sum / (double)g.n;
    g.ss = s->reward_sq_sum - (double)g.n * g.xbar * g.xbar;
    if (!(g.ss > 0.0)) g.ss = 0.0; /* cancellation, or all rewards equal */
    return g;
}

/* The conjugate update of the mean given a noise variance sigma2. */
static void gauss_posterior(const thompson_t *t, const gauss_suff_t *g, double sigma2, double *mean,
                            double *sd)
{
    /* From two rewards on, sigma2 comes from the sums, and the floor is for
     * values so extreme that they lose it (no division by zero, whatever
     * the rewards). It sits near what the sums can resolve: SS = sum(x^2) -
     * n*xbar^2 is off by about n*xbar^2*2^-52, so a variance below
     * ~xbar^2*1e-15 cannot be told from 0. (At 1e-12 the floor itself was
     * the variance of rewards with a large offset: sd 1 around 1e7 was
     * taken as sd 10.) Below two rewards sigma2 is the prior variance
     * 1/precision, exact (>= 1e-12): floored, one reward of 1e17 under the
     * default prior was taken as noise of variance 1e19, its mean as 1.0. */
    double floor = 1e-15 * fmax(1.0, g->xbar * g->xbar);
    if (g->n >= 2 && !(sigma2 > floor)) sigma2 = floor;
    double data_prec = (double)g->n / sigma2;
    double prec = t->prec0 + data_prec;
    *mean = (t->prec0 * t->mean0 + data_prec * g->xbar) / prec;
    *sd = 1.0 / sqrt(prec);
}

/* The prior noise variance s0^2 (see the top): the arms' pooled
 * within-arm variance, or 1/precision while no arm shows any spread. */
static double pooled_var(const thompson_t *t, const arm_stats_t *stats, size_t n)
{
    double ss = 0.0, df = 0.0;
    for (size_t i = 0; i < n; i++) {
        gauss_suff_t g = gauss_suff(&stats[i]);
        if (g.n < 2) continue;
        ss += g.ss;
        df += (double)(g.n - 1);
    }
    double v = df > 0.0 ? ss / df : 0.0;
    return v > 0.0 && isfinite(v) ? v : 1.0 / t->prec0;
}

/* One posterior draw of arm i's expected reward; s0sq: pooled_var() (gaussian). */
static double posterior_draw(const thompson_t *t, const arm_stats_t *s, double s0sq, mm_rng_t *rng)
{
    if (!t->gaussian) return mm_rng_beta(rng, t->alpha0 + s->successes, t->beta0 + s->failures);
    gauss_suff_t g = gauss_suff(s);
    double sigma2;
    if (g.n >= 2) /* chi2(n) = 2 * Gamma(n / 2) */
        sigma2 = (g.ss + s0sq) / (2.0 * mm_rng_gamma(rng, 0.5 * (double)g.n));
    else
        sigma2 = 1.0 / t->prec0;
    double mean, sd;
    gauss_posterior(t, &g, sigma2, &mean, &sd);
    return mean + sd * mm_rng_normal(rng);
}

/* Argmax over one draw per arm. The draws are continuous, but not their
 * doubles: a Beta with a tiny shape (a prior alpha of 1e-3) draws exactly 0
 * most of the time, so exact ties are broken uniformly (reservoir
 * sampling) — keeping the first maximum gave the first arm 61 % of the
 * traffic between two arms with the same statistics. */
static int sample_argmax(const thompson_t *t, const arm_stats_t *stats, size_t n, mm_rng_t *rng)
{
    double s0sq = t->gaussian ? pooled_var(t, stats, n) : 0.0;
    int best = 0;
    uint64_t ties = 1;
    double best_v = posterior_draw(t, &stats[0], s0sq, rng);
    for (size_t i = 1; i < n; i++) {
        double x = posterior_draw(t, &stats[i], s0sq, rng);
        if (x > best_v) {
            best_v = x;
            best = (int)i;
            ties = 1;
        } else if (x == best_v && mm_rng_below(rng, ++ties) == 0) {
            best = (int)i;
        }
    }
    return best;
}

static void ts_choose(void *p, const policy_view_t *v, const policy_req_t *req,
                      policy_choice_t *out)
{
    const thompson_t *t = p;
    size_t n = v->n_arms < t->n_arms ? v->n_arms : t->n_arms;
    MM_UNUSED(req);
    out->n_mirrors = 0;
    if (t->min_share > 0.0 && mm_rng_uniform(v->rng) < (double)n * t->min_share) {
        out->primary = (int)mm_rng_below(v->rng, n);
    } else {
        arm_stats_t sc[MM_MAX_ARMS];
        const arm_stats_t *st = policy_scored_stats(v->stats, n, t->error_reward, sc);
        out->primary = sample_argmax(t, st, n, v->rng);
    }
}

static int ts_check_reward(void *p, double reward)
{
    const thompson_t *t = p;
    if (!isfinite(reward)) return -1;
    if (t->gaussian) return 0;
    return (reward >= 0.0 && reward <= 1.0) ? 1 : -1;
}

static json_t *ts_describe(void *p, const policy_view_t *v)
{
    const thompson_t *t = p;
    size_t n = v->n_arms < t->n_arms ? v->n_arms : t->n_arms;
    uint64_t wins[MM_MAX_ARMS] = {0};
    mm_rng_t rng;
    mm_rng_seed(&rng, TS_DESCRIBE_SEED);
    arm_stats_t sc[MM_MAX_ARMS];
    const arm_stats_t *st = policy_scored_stats(v->stats, n, t->error_reward, sc);
    for (int d = 0; d < TS_DESCRIBE_DRAWS; d++) wins[sample_argmax(t, st, n, &rng)]++;

    json_t *arms = json_array();
    double explore = (double)n * t->min_share;
    double s0sq = t->gaussian ? pooled_var(t, st, n) : 0.0;
    for (size_t i = 0; i < n; i++) {
        const arm_stats_t *s = &st[i];
        double p_best = (double)wins[i] / TS_DESCRIBE_DRAWS;
        json_t *a = policy_bandit_arm(t->names[i], &v->stats[i]);
        if (!t->gaussian) {
            double al = t->alpha0 + s->successes, be = t->beta0 + s->failures;
            json_object_set_new(a, "alpha", policy_json_real(al));
            json_object_set_new(a, "beta", policy_json_real(be));
            json_object_set_new(a, "mean", policy_json_real(al / (al + be)));
            json_object_set_new(
                a, "sd", policy_json_real(sqrt(al * be / ((al + be) * (al + be) * (al + be + 1)))));
        } else {
            /* The variance's posterior scale plugged in: the centre of the
             * drawn ones. */
            gauss_suff_t g = gauss_suff(s);
            double sigma2 = g.n >= 2 ? (g.ss + s0sq) / (double)g.n : 1.0 / t->prec0;
            double mean, sd;
            gauss_posterior(t, &g, sigma2, &mean, &sd);
            json_object_set_new(a, "mean", policy_json_real(mean));
            json_object_set_new(a, "sd", policy_json_real(sd));
        }
        json_object_set_new(a, "p_best", json_real(p_best));
        /* Thompson routes to arm i with probability P(i is best). */
        json_object_set_new(a, "expected_share",
                            json_real(explore / (double)n + (1.0 - explore) * p_best));
        json_array_append_new(arms, a);
    }

    json_t *o = json_object();
    json_object_set_new(o, "reward", json_string(t->gaussian ? "gaussian" : "bernoulli"));
    json_t *prior = json_object();
    if (!t->gaussian) {
        json_object_set_new(prior, "alpha", json_real(t->alpha0));
        json_object_set_new(prior, "beta", json_real(t->beta0));
    } else {
        json_object_set_new(prior, "mean", json_real(t->mean0));
        json_object_set_new(prior, "precision", json_real(t->prec0));
        /* s0^2, the prior noise variance every arm's variance draw starts from */
        json_object_set_new(o, "pooled_variance", policy_json_real(s0sq));
    }
    json_object_set_new(o, "prior", prior);
    json_object_set_new(o, "min_share", json_real(t->min_share));
    json_object_set_new(o, "error_reward", policy_json_real(t->error_reward));
    json_object_set_new(o, "p_best_draws", json_integer(TS_DESCRIBE_DRAWS));
    json_object_set_new(o, "arms", arms);
    return o;
}

/* arms: a list of at least two upstream names. */
static int parse_arms(thompson_t *t, const json_t *exp, policy_parse_t *pp)
{
    int n = policy_parse_arm_list(pp, exp, "arms", 2, t->names);
    if (n < 0) return -1;
    t->n_arms = (size_t)n;
    return 0;
}

static int parse_prior(thompson_t *t, const json_t *exp, policy_parse_t *pp)
{
    static const char *const bern_keys[] = {"alpha", "beta", NULL};
    static const char *const gauss_keys[] = {"mean", "precision", NULL};
    const json_t *prior = json_object_get(exp, "prior");
    t->alpha0 = t->beta0 = 1.0;
    t->mean0 = 0.0;
    t->prec0 = 0.01;
    if (prior == NULL) return 0;
    if (!json_is_object(prior))
        return policy_error(pp, "/prior", "must be an object: %s",
                            t->gaussian ? "{\"mean\", \"precision\"}" : "{\"alpha\", \"beta\"}");
    if (policy_check_keys(pp, prior, "/prior", t->gaussian ? gauss_keys : bern_keys) < 0) return -1;
    if (!t->gaussian) {
        if (policy_get_number_in(pp, prior, "/prior", "alpha", 1.0, 0.0, 1e9, POLICY_OPEN_LO,
                                 &t->alpha0) < 0 ||
            policy_get_number_in(pp, prior, "/prior", "beta", 1.0, 0.0, 1e9, POLICY_OPEN_LO,
                                 &t->beta0) < 0)
            return -1;
    } else {
        if (policy_get_number(pp, prior, "/prior", "mean", 0.0, -MM_REWARD_MAX, MM_REWARD_MAX,
                              &t->mean0) < 0 ||
            policy_get_number(pp, prior, "/prior", "precision", 0.01, TS_PREC_MIN, TS_PREC_MAX,
                              &t->prec0) < 0)
            return -1;
    }
    return 0;
}

static void *ts_create(const json_t *exp, policy_parse_t *pp)
{
    static const char *const keys[] = {"arms",      "reward",       "prior",
                                       "min_share", "error_reward", NULL};
    thompson_t *t = calloc(1, sizeof *t);
    const char *reward = NULL;
    if (t == NULL) {
        policy_error(pp, "", "out of memory");
        return NULL;
    }
    if (policy_check_keys(pp, exp, "", keys) < 0) goto err;
    if (parse_arms(t, exp, pp) < 0) goto err;
    if (policy_get_string(pp, exp, "", "reward", "bernoulli", &reward) < 0) goto err;
    if (strcmp(reward, "gaussian") == 0) {
        t->gaussian = 1;
    } else if (strcmp(reward, "bernoulli") != 0) {
        policy_error(pp, "/reward", "unknown reward \"%s\" (bernoulli or gaussian)", reward);
        goto err;
    }
    if (parse_prior(t, exp, pp) < 0) goto err;
    if (policy_get_number(pp, exp, "", "min_share", 0.0, 0.0, 1.0 / (double)t->n_arms,
                          &t->min_share) < 0)
        goto err;
    /* A Bernoulli error reward counts successes and failures: in [0, 1]. */
    if (policy_parse_error_reward(pp, exp, t->gaussian ? -MM_REWARD_MAX : 0.0,
                                  t->gaussian ? MM_REWARD_MAX : 1.0, &t->error_reward) < 0)
        goto err;
    return t;
err:
    free(t);
    return NULL;
}

static void ts_destroy(void *p)
{
    free(p);
}

const policy_ops_t policy_thompson_ops = {
    .name = "thompson",
    .flags = 0,
    .create = ts_create,
    .destroy = ts_destroy,
    .choose = ts_choose,
    .check_reward = ts_check_reward,
    .describe = ts_describe,
};
