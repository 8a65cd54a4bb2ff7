/* epsilon_greedy.c — ε-greedy (DESIGN.md §3 `epsilon_greedy`).
 *
 * With probability ε_t the request goes to an arm drawn uniformly from all
 * arms (the greedy one included), otherwise to the arm with the best
 * empirical mean reward, reward_sum / feedback. An arm without feedback
 * counts as +inf, so every arm is tried before any is preferred; ties are
 * broken uniformly at random, so equal arms share the exploit traffic.
 * Each error of an arm (5xx or no answer) counts as a reward of
 * `error_reward` (default 0; null: errors are not rewards), so an arm that
 * fails is not "untried" forever for want of feedback (policy_scored_stats).
 *
 * Decay: with `decay` N, ε_t = ε·N/(N + t), where t is the number of
 * decisions so far. t is the sum of the arms' `pulls` in the store, not a
 * counter inside this instance: pulls are shared, so every instance (and
 * every worker) decays on the same schedule and a restart does not start the
 * schedule over; admin reset sets it back to ε together with the statistics.
 * The decay is harmonic: about ε·N·ln(1 + t/N) of the first t requests
 * explore, which keeps learning about a drifting arm, unlike a geometric
 * decay that would stop exploring for good.
 *
 * Like every bandit here the policy keeps no learned state (the store owns
 * the statistics), and weights are refused (flags 0: the admin API answers
 * 409); promote and rollback are applied by the router before choose(). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "policy.h"

typedef struct {
    size_t n_arms;
    char names[MM_MAX_ARMS][MM_NAME_MAX + 1];
    double epsilon;
    double decay;        /* 0: no decay */
    double error_reward; /* NaN: errors are not rewards */
} egreedy_t;

static uint64_t total_pulls(const arm_stats_t *stats, size_t n)
{
    uint64_t t = 0;
    for (size_t i = 0; i < n; i++) t += stats[i].pulls;
    return t;
}

/* ε_t for t decisions so far. */
static double epsilon_at(const egreedy_t *e, uint64_t t)
{
    if (e->decay <= 0.0) return e->epsilon;
    return e->epsilon * e->decay / (e->decay + (double)t);
}

/* Empirical mean; +inf without feedback so that untried arms come first. */
static double arm_mean(const arm_stats_t *s)
{
    return s->feedback ? s->reward_sum / (double)s->feedback : INFINITY;
}

/* The arms with the best mean: their count, and a uniform pick among them
 * (reservoir sampling, one pass). rng NULL: no pick, count only. */
static int greedy_pick(const arm_stats_t *stats, size_t n, mm_rng_t *rng, int *n_ties,
                       double *best_mean)
{
    int best = 0, ties = 0;
    double best_v = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        double m = arm_mean(&stats[i]);
        if (ties == 0 || m > best_v) {
            best_v = m;
            best = (int)i;
            ties = 1;
        } else if (m == best_v) {
            ties++;
            if (rng != NULL && mm_rng_below(rng, (uint64_t)ties) == 0) best = (int)i;
        }
    }
    if (n_ties) *n_ties = ties;
    if (best_mean) *best_mean = best_v;
    return best;
}

static void eg_choose(void *p, const policy_view_t *v, const policy_req_t *req,
                      policy_choice_t *out)
{
    const egreedy_t *e = p;
    size_t n = v->n_arms < e->n_arms ? v->n_arms : e->n_arms;
    MM_UNUSED(req);
    out->n_mirrors = 0;
    double eps = epsilon_at(e, total_pulls(v->stats, n));
    if (eps > 0.0 && mm_rng_uniform(v->rng) < eps) {
        out->primary = (int)mm_rng_below(v->rng, n);
    } else {
        arm_stats_t sc[MM_MAX_ARMS];
        const arm_stats_t *st = policy_scored_stats(v->stats, n, e->error_reward, sc);
        out->primary = greedy_pick(st, n, v->rng, NULL, NULL);
    }
}

static json_t *eg_describe(void *p, const policy_view_t *v)
{
    const egreedy_t *e = p;
    size_t n = v->n_arms < e->n_arms ? v->n_arms : e->n_arms;
    uint64_t t = total_pulls(v->stats, n);
    double eps = epsilon_at(e, t), best_mean;
    int ties;
    arm_stats_t sc[MM_MAX_ARMS];
    const arm_stats_t *st = policy_scored_stats(v->stats, n, e->error_reward, sc);
    greedy_pick(st, n, NULL, &ties, &best_mean);

    json_t *arms = json_array();
    for (size_t i = 0; i < n; i++) {
        const arm_stats_t *s = &st[i];
        double m = arm_mean(s);
        int greedy = (m == best_mean);
        json_t *a = policy_bandit_arm(e->names[i], &v->stats[i]);
        json_object_set_new(a, "mean", s->feedback ? json_real(m) : json_null());
        json_object_set_new(a, "greedy", json_boolean(greedy));
        json_object_set_new(a, "expected_share",
                            json_real(eps / (double)n + (greedy ? (1.0 - eps) / ties : 0.0)));
        json_array_append_new(arms, a);
    }
    json_t *o = json_object();
    json_object_set_new(o, "epsilon", json_real(e->epsilon));
    json_object_set_new(o, "decay", e->decay > 0.0 ? json_real(e->decay) : json_null());
    json_object_set_new(o, "decisions", json_integer((json_int_t)t));
    json_object_set_new(o, "epsilon_t", json_real(eps));
    json_object_set_new(o, "error_reward", policy_json_real(e->error_reward));
    json_object_set_new(o, "arms", arms);
    return o;
}

/* arms: a list of at least two upstream names. */
static int parse_arms(egreedy_t *e, const json_t *exp, policy_parse_t *pp)
{
    int n = policy_parse_arm_list(pp, exp, "arms", 2, e->names);
    if (n < 0) return -1;
    e->n_arms = (size_t)n;
    return 0;
}

static void *eg_create(const json_t *exp, policy_parse_t *pp)
{
    static const char *const keys[] = {"arms", "epsilon", "decay", "error_reward", NULL};
    egreedy_t *e = calloc(1, sizeof *e);
    if (e == NULL) {
        policy_error(pp, "", "out of memory");
        return NULL;
    }
    if (policy_check_keys(pp, exp, "", keys) < 0) goto err;
    if (parse_arms(e, exp, pp) < 0) goto err;
    if (policy_get_number(pp, exp, "", "epsilon", 0.1, 0.0, 1.0, &e->epsilon) < 0) goto err;
    /* absent: 0, a constant epsilon */
    if (policy_get_number_in(pp, exp, "", "decay", 0.0, 0.0, 1e15, POLICY_OPEN_LO, &e->decay) < 0)
        goto err;
    if (policy_parse_error_reward(pp, exp, -MM_REWARD_MAX, MM_REWARD_MAX, &e->error_reward) < 0)
        goto err;
    return e;
err:
    free(e);
    return NULL;
}

static void eg_destroy(void *p)
{
    free(p);
}

const policy_ops_t policy_epsilon_greedy_ops = {
    .name = "epsilon_greedy",
    .flags = 0,
    .create = eg_create,
    .destroy = eg_destroy,
    .choose = eg_choose,
    .describe = eg_describe,
};
