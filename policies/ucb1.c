/* ucb1.c — UCB1 and UCB1-Tuned (DESIGN.md §3 `ucb1`; Auer, Cesa-Bianchi &
 * Fischer 2002).
 *
 * Each request goes to the arm with the largest upper confidence bound
 *   ucb1:        mean_i + sqrt(2 ln n / n_i)
 *   ucb1_tuned:  mean_i + sqrt(ln n / n_i * min(1/4, V_i)),
 *                V_i = var_i + sqrt(2 ln n / n_i)
 * where n_i is arm i's feedback count, n the sum over arms, mean_i and var_i
 * the empirical mean and (biased, 1/n_i) variance of its rewards. Any arm with
 * n_i = 0 goes first (one never routed to before one that was, else drawn
 * uniformly among such arms); exact ties are broken uniformly too.
 *
 * An error of the arm (5xx or no answer) counts as one more reward of
 * `error_reward` (default 0; null: errors are not rewards): without it an
 * arm that only fails never gets feedback, stays "untried" and is played
 * first for ever (policy_scored_stats).
 *
 * Why feedback counts and not pulls: rewards arrive asynchronously, and the
 * bound is about how many rewards the mean rests on. Counting pulls would
 * shrink the bonus of an arm whose rewards have not come back yet.
 *
 * The bounds assume rewards in [0, 1] (the 1/4 in the tuned variant is the
 * largest variance of such a reward); larger rewards are accepted (any
 * finite value) but then the exploration bonus is too small for their scale,
 * so the policy explores less than the theory says. Scale rewards into
 * [0, 1] for the guarantee to hold.
 *
 * UCB is deterministic given the statistics: between two store syncs every
 * decision sees the same view and goes to the same arm. With batched,
 * delayed feedback that makes it lumpier than Thompson sampling; that is
 * the price of its simplicity, and why the README recommends `thompson`.
 *
 * The policy keeps no learned state (the store owns the statistics); weights
 * are refused (flags 0: 409); promote and rollback are applied by the router
 * before choose(). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"

typedef struct {
    size_t n_arms;
    char names[MM_MAX_ARMS][MM_NAME_MAX + 1];
    int tuned;
    double error_reward; /* NaN: errors are not rewards */
} ucb1_t;

static uint64_t total_feedback(const arm_stats_t *stats, size_t n)
{
    uint64_t t = 0;
    for (size_t i = 0; i < n; i++) t += stats[i].feedback;
    return t;
}

/* Exploration bonus of an arm with n_i > 0 rewards out of n. */
static double ucb_bonus(const ucb1_t *u, const arm_stats_t *s, uint64_t n)
{
    double ni = (double)s->feedback, ln_n = log((double)n);
    double b = sqrt(2.0 * ln_n / ni);
    if (!u->tuned) return b;
    double mean = s->reward_sum / ni;
    double var = s->reward_sq_sum / ni - mean * mean;
    if (!(var > 0.0)) var = 0.0;
    double v = var + b;
    return sqrt(ln_n / ni * fmin(0.25, v));
}

/* The arms UCB1 would play next, in top[]; returns how many (>= 1 when
 * n >= 1): the untried ones, else those with the largest bound (exact ties).
 * Among untried arms, those never routed to come first: UCB1 plays every
 * arm once before anything else, and while the first rewards are still on
 * their way a uniform draw sent the first K requests to fewer than K arms
 * (3 arms: D, B, D). Beyond that, pulls do not matter (the bound is about
 * rewards): once every untried arm has had a request, they share evenly. */
static size_t ucb_top(const ucb1_t *u, const arm_stats_t *stats, size_t n, int *top)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (stats[i].feedback == 0 && stats[i].pulls == 0) top[k++] = (int)i;
    if (k == 0)
        for (size_t i = 0; i < n; i++)
            if (stats[i].feedback == 0) top[k++] = (int)i;
    if (k > 0) return k;
    uint64_t total = total_feedback(stats, n);
    double best = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        const arm_stats_t *s = &stats[i];
        double idx = s->reward_sum / (double)s->feedback + ucb_bonus(u, s, total);
        if (idx > best) {
            best = idx;
            k = 0;
        }
        if (idx == best) top[k++] = (int)i;
    }
    return k;
}

/* The arm to play: one of the top arms, uniformly. */
static int ucb_pick(const ucb1_t *u, const arm_stats_t *stats, size_t n, mm_rng_t *rng)
{
    int top[MM_MAX_ARMS];
    size_t k = ucb_top(u, stats, n, top);
    if (k == 0) return 0;
    return top[k == 1 ? 0 : mm_rng_below(rng, (uint64_t)k)];
}

static void ucb_choose(void *p, const policy_view_t *v, const policy_req_t *req,
                       policy_choice_t *out)
{
    const ucb1_t *u = p;
    size_t n = v->n_arms < u->n_arms ? v->n_arms : u->n_arms;
    MM_UNUSED(req);
    out->n_mirrors = 0;
    arm_stats_t sc[MM_MAX_ARMS];
    out->primary = ucb_pick(u, policy_scored_stats(v->stats, n, u->error_reward, sc), n, v->rng);
}

/* The share of the next requests each arm gets: ucb_pick is deterministic
 * up to ties, so until the next reward it is 1 for the arm it picks (split
 * evenly among tied arms; untried arms first). This is the "effective share"
 * of the admin view; the share of requests so far is requests / total. */
static void ucb_expected_shares(const ucb1_t *u, const arm_stats_t *stats, size_t n, double *share)
{
    int top[MM_MAX_ARMS];
    size_t k = ucb_top(u, stats, n, top);
    for (size_t i = 0; i < n; i++) share[i] = 0.0;
    for (size_t i = 0; i < k; i++) share[top[i]] = 1.0 / (double)k;
}

static json_t *ucb_describe(void *p, const policy_view_t *v)
{
    const ucb1_t *u = p;
    size_t n = v->n_arms < u->n_arms ? v->n_arms : u->n_arms;
    arm_stats_t sc[MM_MAX_ARMS];
    const arm_stats_t *st = policy_scored_stats(v->stats, n, u->error_reward, sc);
    uint64_t total = total_feedback(st, n);
    double share[MM_MAX_ARMS];
    ucb_expected_shares(u, st, n, share);
    json_t *arms = json_array();
    for (size_t i = 0; i < n; i++) {
        const arm_stats_t *s = &st[i];
        json_t *a = policy_bandit_arm(u->names[i], &v->stats[i]);
        json_object_set_new(a, "expected_share", json_real(share[i]));
        if (s->feedback > 0) {
            double mean = s->reward_sum / (double)s->feedback, b = ucb_bonus(u, s, total);
            json_object_set_new(a, "mean", json_real(mean));
            json_object_set_new(a, "bonus", json_real(b));
            json_object_set_new(a, "ucb", json_real(mean + b));
        } else {
            /* Untried: its bound is +inf, which JSON cannot say. */
            json_object_set_new(a, "mean", json_null());
            json_object_set_new(a, "bonus", json_null());
            json_object_set_new(a, "ucb", json_null());
        }
        json_array_append_new(arms, a);
    }
    json_t *o = json_object();
    json_object_set_new(o, "variant", json_string(u->tuned ? "ucb1_tuned" : "ucb1"));
    /* n in ln n: the rewards the bounds rest on, scored errors included */
    json_object_set_new(o, "feedback", json_integer((json_int_t)total));
    json_object_set_new(o, "error_reward", policy_json_real(u->error_reward));
    json_object_set_new(o, "arms", arms);
    return o;
}

/* arms: a list of at least two upstream names. */
static int parse_arms(ucb1_t *u, const json_t *exp, policy_parse_t *pp)
{
    int n = policy_parse_arm_list(pp, exp, "arms", 2, u->names);
    if (n < 0) return -1;
    u->n_arms = (size_t)n;
    return 0;
}

static void *ucb_create(const json_t *exp, policy_parse_t *pp)
{
    static const char *const keys[] = {"arms", "variant", "error_reward", NULL};
    ucb1_t *u = calloc(1, sizeof *u);
    const char *variant = NULL;
    if (u == NULL) {
        policy_error(pp, "", "out of memory");
        return NULL;
    }
    if (policy_check_keys(pp, exp, "", keys) < 0) goto err;
    if (parse_arms(u, exp, pp) < 0) goto err;
    if (policy_get_string(pp, exp, "", "variant", "ucb1", &variant) < 0) goto err;
    if (strcmp(variant, "ucb1_tuned") == 0) {
        u->tuned = 1;
    } else if (strcmp(variant, "ucb1") != 0) {
        policy_error(pp, "/variant", "unknown variant \"%s\" (ucb1 or ucb1_tuned)", variant);
        goto err;
    }
    if (policy_parse_error_reward(pp, exp, -MM_REWARD_MAX, MM_REWARD_MAX, &u->error_reward) < 0)
        goto err;
    return u;
err:
    free(u);
    return NULL;
}

static void ucb_destroy(void *p)
{
    free(p);
}

const policy_ops_t policy_ucb1_ops = {
    .name = "ucb1",
    .flags = 0,
    .create = ucb_create,
    .destroy = ucb_destroy,
    .choose = ucb_choose,
    .describe = ucb_describe,
};
