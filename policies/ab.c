/* ab.c — the `ab` policy: a fixed weighted split with honest statistics
 * (DESIGN.md §3 `ab`, §5 policy_state).
 *
 * Routing is one weighted pick per request (policy_util.c): the configured
 * weights, or the operator's weights from PUT /experiments/NAME/weights,
 * with optional sticky assignment so that a user keeps their arm. Nothing is
 * learned on the hot path and nothing is allocated there.
 *
 * The interesting part is describe(): every challenger is compared with the
 * champion (the first arm listed) on mean reward, with
 *  - the classical fixed-horizon test (two-proportion z or Welch's t) and
 *    the sample size such a test needs for the configured mde and power;
 *  - an always-valid p-value and confidence sequence (the mixture SPRT of
 *    Johari, Koomen, Pekelis and Walsh), which — unlike the classical
 *    p-value — stays valid however often the operator refreshes the page and
 *    stops the moment it looks good. The verdict is based on it alone;
 *  - a sample-ratio-mismatch check of the observed pulls against the split.
 * The formulas live in abstats.c; this file decides which to apply and keeps
 * the one piece of state the sequential test needs.
 *
 * That state: the always-valid p-value is the running minimum of the
 * current one (and the confidence sequence the running intersection). The
 * store keeps only sums, so the minimum is kept here, per policy instance
 * (per process), updated on every tick (about once a second) and on every
 * describe. It is forgotten on reset, on a reload that changes the
 * experiment's definition (an unchanged one hands it to the new instance:
 * adopt), and when the arm counts go down (another instance reset the
 * shared statistics). With several workers
 * each keeps its own minimum over the same shared sums, so they agree to
 * within a tick.
 *
 * Reward model ("reward"): "bernoulli" makes the store count successes and
 * failures (rewards must lie in [0, 1]); "continuous" takes any finite
 * reward; "auto" (default) decides from the data: an arm whose rewards so far
 * were all 0 or 1 (sum of squares == sum, see abstats_is_binary) is
 * Bernoulli. A pair of Bernoulli arms is compared as two proportions,
 * anything else with Welch's test. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "abstats.h"
#include "policy.h"

/* Rewards each arm needs before the sequential test starts: the mSPRT plugs
 * in estimated variances, and from fewer observations they are too noisy to
 * trust (the A/A tests in test_abstats.c look from here on). */
#define AB_MIN_FEEDBACK 30
/* p-value below which the split is reported as a sample ratio mismatch;
 * deliberately strict, because the check is watched continuously too. */
#define AB_SRM_P 0.001

typedef enum { AB_REWARD_AUTO = 0, AB_REWARD_BERNOULLI, AB_REWARD_CONTINUOUS } ab_reward_t;

static const char *const reward_names[] = {"auto", "bernoulli", "continuous"};

/* The running state of one challenger's sequential test. */
typedef struct {
    double p_min; /* running minimum of the mSPRT p-value; 1 until evidence */
    int sign;     /* sign of the difference where p_min was reached */
    int has_cs;
    double cs_lo, cs_hi; /* running intersection of the confidence sequence */
} ab_run_t;

typedef struct {
    size_t n_arms;
    char names[MM_MAX_ARMS][MM_NAME_MAX + 1];
    double weights[MM_MAX_ARMS]; /* as configured */
    int sticky;
    ab_reward_t reward;
    double alpha, mde, power;
    double tau2;                /* mixture variance; 0: automatic */
    ab_run_t run[MM_MAX_ARMS];  /* index 0 (the champion) unused */
    uint64_t seen[MM_MAX_ARMS]; /* feedback counts at the last update */
    /* The sample-ratio check counts pulls from the moment the shares they
     * were routed by took effect: pulls made under other weights (before a
     * PUT weights, a promote, a rollback) would be a mismatch by design. */
    int srm_init;
    double srm_share[MM_MAX_ARMS];  /* the effective shares counted under */
    uint64_t srm_base[MM_MAX_ARMS]; /* pulls when they took effect */
    uint64_t srm_since_version;     /* control version then; 0: from the start */
    /* Built by a reload after another policy ran the experiment: the pulls
     * so far were not routed by these weights, so counting starts now. */
    int srm_not_from_start;
} ab_t;

static void run_clear(ab_t *ab)
{
    for (size_t i = 0; i < MM_MAX_ARMS; i++) {
        ab->run[i] = (ab_run_t){.p_min = 1.0};
        ab->seen[i] = 0;
    }
}

/* JSON pointer of arms[key]: RFC 6901 escapes '~' and '/'. Allocates: parse
 * time only. */
static char *arm_pointer(const char *key)
{
    size_t n = strlen(key), j = 0;
    char *s = malloc(sizeof("/arms/") + 2 * n);
    if (s == NULL) return NULL;
    memcpy(s, "/arms/", 6);
    j = 6;
    for (size_t i = 0; i < n; i++) {
        if (key[i] == '~' || key[i] == '/') {
            s[j++] = '~';
            s[j++] = key[i] == '~' ? '0' : '1';
        } else {
            s[j++] = key[i];
        }
    }
    s[j] = '\0';
    return s;
}

static int parse_arms(ab_t *ab, const json_t *exp, policy_parse_t *pp)
{
    json_t *arms = json_object_get(exp, "arms");
    const char *key;
    json_t *val;
    double sum = 0.0;

    if (arms == NULL) return policy_error(pp, "", "policy \"ab\" needs \"arms\": {arm: weight}");
    if (!json_is_object(arms)) return policy_error(pp, "/arms", "must be an object {arm: weight}");
    if (json_object_size(arms) == 0)
        return policy_error(pp, "/arms", "is empty; list at least the champion");
    /* jansson (>= 2.8) keeps keys in document order: the first is the champion. */
    json_object_foreach(arms, key, val)
    {
        char *ptr = arm_pointer(key);
        if (ptr == NULL) return policy_error(pp, "/arms", "out of memory");
        int idx = policy_add_arm(pp, key, ptr);
        int rc = 0;
        if (idx < 0) {
            rc = -1;
        } else if (idx >= MM_MAX_ARMS || (size_t)idx != ab->n_arms) {
            rc = policy_error(pp, ptr, "arm \"%s\" declared twice", key);
        } else if (!json_is_number(val)) {
            rc = policy_error(pp, ptr, "weight must be a number in [0, 1e9]");
        } else {
            double w = json_number_value(val);
            char g[40];
            if (!(w >= 0.0) || !(w <= MM_WEIGHT_MAX))
                rc = policy_error(pp, ptr, "weight must be in [0, 1e9], got %s",
                                  policy_num(w, g, sizeof(g)));
            else {
                snprintf(ab->names[idx], sizeof(ab->names[idx]), "%s", key);
                ab->weights[idx] = w;
                ab->n_arms++;
                sum += w;
            }
        }
        free(ptr);
        if (rc < 0) return -1;
    }
    if (!(sum > 0.0))
        return policy_error(pp, "/arms", "all weights are 0; at least one arm needs traffic");
    return 0;
}

static void *ab_create(const json_t *exp, policy_parse_t *pp)
{
    static const char *const keys[] = {
        "arms", "sticky", "salt", "reward", "alpha", "mde", "power", "mixture_variance", NULL};
    const char *reward = NULL, *salt = NULL;
    ab_t *ab = calloc(1, sizeof(*ab));
    if (ab == NULL) {
        policy_error(pp, "", "out of memory");
        return NULL;
    }
    run_clear(ab);
    if (policy_check_keys(pp, exp, "", keys) < 0) goto err;
    if (parse_arms(ab, exp, pp) < 0) goto err;

    if (policy_get_string(pp, exp, "", "reward", "auto", &reward) < 0) goto err;
    if (strcmp(reward, "auto") == 0) {
        ab->reward = AB_REWARD_AUTO;
    } else if (strcmp(reward, "bernoulli") == 0) {
        ab->reward = AB_REWARD_BERNOULLI;
    } else if (strcmp(reward, "continuous") == 0) {
        ab->reward = AB_REWARD_CONTINUOUS;
    } else {
        policy_error(pp, "/reward", "must be \"auto\", \"bernoulli\" or \"continuous\", got \"%s\"",
                     reward);
        goto err;
    }

    if (policy_get_number_in(pp, exp, "", "alpha", 0.05, 0.0, 0.5, POLICY_OPEN_LO, &ab->alpha) < 0)
        goto err;
    /* mde is a relative effect */
    if (policy_get_number_in(pp, exp, "", "mde", 0.05, 0.0, 1.0, POLICY_OPEN_LO, &ab->mde) < 0)
        goto err;
    if (policy_get_number_in(pp, exp, "", "power", 0.8, 0.5, 1.0, POLICY_OPEN_HI, &ab->power) < 0)
        goto err;
    /* absent: 0, chosen automatically */
    if (policy_get_number_in(pp, exp, "", "mixture_variance", 0.0, 0.0, DBL_MAX, POLICY_OPEN_LO,
                             &ab->tau2) < 0)
        goto err;

    if (policy_get_string(pp, exp, "", "salt", NULL, &salt) < 0) goto err;
    json_t *sticky = json_object_get(exp, "sticky");
    if (sticky != NULL) { /* null is no object: refused, as canary refuses it */
        if (policy_set_sticky(pp, sticky, "/sticky", salt) < 0) goto err;
        ab->sticky = 1;
    } else if (salt != NULL) {
        /* A salt only changes which users land where; without sticky it
         * would be silently ignored, which is never what was meant. */
        policy_error(pp, "/salt",
                     "has no effect without sticky (add \"sticky\": {\"header\": NAME})");
        goto err;
    }
    return ab;
err:
    free(ab);
    return NULL;
}

static void ab_destroy(void *p)
{
    free(p);
}

/* The weights in force: the operator's when set (and not all zero), else the
 * configured ones. Rollback sends everything to the champion whatever the
 * weights say. Returns the weights; *source names where they came from. */
static const double *effective_weights(const ab_t *ab, const exp_control_t *c, size_t n,
                                       const char **source)
{
    static const double champion_only[MM_MAX_ARMS] = {1.0};
    if (c != NULL && c->state == EXP_ROLLED_BACK) {
        *source = "rollback";
        return champion_only;
    }
    if (c != NULL && c->has_weights) {
        for (size_t i = 0; i < n; i++) {
            if (c->weights[i] > 0.0 && isfinite(c->weights[i])) {
                *source = "control";
                return c->weights;
            }
        }
    }
    *source = "config";
    return ab->weights;
}

static void ab_choose(void *p, const policy_view_t *v, const policy_req_t *req,
                      policy_choice_t *out)
{
    const ab_t *ab = p;
    size_t n = v->n_arms < ab->n_arms ? v->n_arms : ab->n_arms;
    const char *source;
    const double *w = effective_weights(ab, v->control, n, &source);

    out->n_mirrors = 0;
    if (n == 0) {
        out->primary = 0;
        return;
    }
    if (ab->sticky && req != NULL && req->has_key)
        out->primary = policy_pick_sticky(w, n, req->key_hash);
    else
        out->primary = policy_pick_weighted(w, n, mm_rng_uniform(v->rng));
}

static int ab_check_reward(void *p, double reward)
{
    const ab_t *ab = p;
    if (!isfinite(reward)) return -1;
    if (ab->reward == AB_REWARD_BERNOULLI) return (reward >= 0.0 && reward <= 1.0) ? 1 : -1;
    if (ab->reward == AB_REWARD_CONTINUOUS) return 0;
    return policy_check_undeclared_reward(reward);
}

/* One arm as the reward model sees it. */
static void arm_sample(const ab_t *ab, const arm_stats_t *s, abstats_sample_t *out)
{
    double n = (double)s->feedback;
    switch (ab->reward) {
    case AB_REWARD_BERNOULLI:
        abstats_from_bernoulli(n, s->successes, out);
        break;
    case AB_REWARD_CONTINUOUS:
        abstats_from_sums(n, s->reward_sum, s->reward_sq_sum, out);
        break;
    default:
        if (abstats_is_binary(n, s->reward_sum, s->reward_sq_sum))
            abstats_from_bernoulli(n, s->reward_sum, out);
        else
            abstats_from_sums(n, s->reward_sum, s->reward_sq_sum, out);
        break;
    }
}

/* Each challenger against the champion is one of n_arms - 1 comparisons;
 * Bonferroni keeps the chance of any false winner at alpha. */
static double alpha_per_comparison(const ab_t *ab, size_t n)
{
    return n > 2 ? ab->alpha / (double)(n - 1) : ab->alpha;
}

/* Compare arm i with the champion. */
static void compare_arm(const ab_t *ab, const policy_view_t *v, const double *w, size_t n, size_t i,
                        abstats_cmp_t *out)
{
    abstats_sample_t a, b;
    arm_sample(ab, &v->stats[0], &a);
    arm_sample(ab, &v->stats[i], &b);
    /* In auto mode a pair is compared as proportions only if both arms are. */
    if (ab->reward == AB_REWARD_AUTO && a.bernoulli != b.bernoulli) {
        abstats_from_sums(a.n, v->stats[0].reward_sum, v->stats[0].reward_sq_sum, &a);
        abstats_from_sums(b.n, v->stats[i].reward_sum, v->stats[i].reward_sq_sum, &b);
    }
    abstats_opts_t o = {
        .alpha = alpha_per_comparison(ab, n),
        .mde = ab->mde,
        .power = ab->power,
        .tau2 = ab->tau2,
        .k = (w[0] > 0.0 && w[i] > 0.0) ? w[i] / w[0] : NAN,
        .min_n = AB_MIN_FEEDBACK,
    };
    abstats_compare(&a, &b, &o, out);
}

/* Start counting pulls for the sample-ratio check anew when the effective
 * shares changed (or the statistics were reset). The configured weights hold
 * from the start, so they count every pull; weights found already changed
 * (an instance started after a PUT) count from now, their history unknown.
 * Each instance notices a change at its next tick or view, and pulls made
 * before it noticed are left out, never counted under the wrong shares. */
static void srm_track(ab_t *ab, const policy_view_t *v, size_t n, const double *w, int from_config)
{
    double share[MM_MAX_ARMS], sum = 0.0;
    for (size_t i = 0; i < n; i++) sum += w[i] > 0.0 && isfinite(w[i]) ? w[i] : 0.0;
    for (size_t i = 0; i < n; i++)
        share[i] = sum > 0.0 && w[i] > 0.0 && isfinite(w[i]) ? w[i] / sum : 0.0;
    int changed = !ab->srm_init;
    for (size_t i = 0; i < n; i++)
        if (share[i] != ab->srm_share[i] || v->stats[i].pulls < ab->srm_base[i]) changed = 1;
    if (!changed) return;
    int from_start = !ab->srm_init && from_config && !ab->srm_not_from_start;
    ab->srm_init = 1;
    for (size_t i = 0; i < n; i++) {
        ab->srm_share[i] = share[i];
        ab->srm_base[i] = from_start ? 0 : v->stats[i].pulls;
    }
    ab->srm_since_version = from_start || v->control == NULL ? 0 : v->control->version;
}

/* Fold the current statistics into the running state of every sequential
 * test; fills cmp[i] for i >= 1 when cmp is not NULL. */
static void update_running(ab_t *ab, const policy_view_t *v, size_t n, abstats_cmp_t *cmp)
{
    const char *source;
    const double *w = effective_weights(ab, v->control, n, &source);
    srm_track(ab, v, n, w, strcmp(source, "config") == 0);

    for (size_t i = 0; i < n; i++) {
        if (v->stats[i].feedback < ab->seen[i]) {
            run_clear(ab); /* the shared statistics were reset */
            break;
        }
    }
    for (size_t i = 0; i < n; i++) ab->seen[i] = v->stats[i].feedback;

    for (size_t i = 1; i < n; i++) {
        abstats_cmp_t c;
        ab_run_t *r = &ab->run[i];
        compare_arm(ab, v, w, n, i, &c);
        if (cmp != NULL) cmp[i] = c;
        if (!c.sequential) continue;
        if (c.p_seq < r->p_min) {
            r->p_min = c.p_seq;
            r->sign = c.d.diff > 0.0 ? 1 : (c.d.diff < 0.0 ? -1 : 0);
        }
        if (isfinite(c.cs_lo) && isfinite(c.cs_hi)) {
            double lo = r->has_cs && r->cs_lo > c.cs_lo ? r->cs_lo : c.cs_lo;
            double hi = r->has_cs && r->cs_hi < c.cs_hi ? r->cs_hi : c.cs_hi;
            /* An empty intersection can only come from a model violation
             * (e.g. the arms' rewards drifting); start over from now. */
            if (lo > hi) {
                lo = c.cs_lo;
                hi = c.cs_hi;
            }
            r->cs_lo = lo;
            r->cs_hi = hi;
            r->has_cs = 1;
        }
    }
}

static int ab_on_tick(void *p, const policy_view_t *v, exp_control_t *ctl)
{
    ab_t *ab = p;
    size_t n = v->n_arms < ab->n_arms ? v->n_arms : ab->n_arms;
    MM_UNUSED(ctl);
    update_running(ab, v, n, NULL);
    return 0;
}

static void ab_reset(void *p)
{
    run_clear(p);
}

/* A reload: the sample-ratio count carries over whatever changed, since
 * srm_track restarts it at the next tick (reload_finish runs one at once)
 * if the effective shares are not those it counted under, and goes on
 * otherwise; without that, the configured weights would be taken to hold
 * "from the start" and every pull routed under the old weights would count
 * as a mismatch of the new ones. Other arms (the store moved their
 * statistics by name) count from now. The sequential tests carry over only
 * with an unchanged definition (alpha, mde, reward model the same). */
static int same_arms(const ab_t *a, const ab_t *b)
{
    if (a->n_arms != b->n_arms) return 0;
    for (size_t i = 0; i < a->n_arms; i++)
        if (strcmp(a->names[i], b->names[i]) != 0) return 0;
    return 1;
}

static void ab_adopt(void *p, const void *old, int same_definition)
{
    ab_t *ab = p;
    const ab_t *o = old;
    if (o == NULL || !same_arms(ab, o)) {
        ab->srm_not_from_start = 1;
        return;
    }
    ab->srm_init = o->srm_init;
    ab->srm_not_from_start = o->srm_not_from_start || !same_definition;
    memcpy(ab->srm_share, o->srm_share, sizeof(ab->srm_share));
    memcpy(ab->srm_base, o->srm_base, sizeof(ab->srm_base));
    ab->srm_since_version = o->srm_since_version;
    if (!same_definition) return;
    memcpy(ab->run, o->run, sizeof(ab->run));
    memcpy(ab->seen, o->seen, sizeof(ab->seen));
}

/* Samples still to collect; NAN (null) while the plan itself is undefined
 * (fmax would turn that into 0, which reads as "done"). */
static double remaining(double need, uint64_t got)
{
    return isfinite(need) ? fmax(0.0, ceil(need) - (double)got) : NAN;
}

static json_t *jcount(double x)
{
    return isfinite(x) && x >= 0.0 ? json_integer((json_int_t)ceil(x)) : json_null();
}

static json_t *weights_json(const ab_t *ab, const double *w, size_t n)
{
    json_t *o = json_object();
    for (size_t i = 0; i < n; i++) json_object_set_new(o, ab->names[i], json_real(w[i]));
    return o;
}

static json_t *arm_json(const ab_t *ab, const arm_stats_t *s, size_t i, double share)
{
    abstats_sample_t x;
    arm_sample(ab, s, &x);
    json_t *a = json_object();
    json_object_set_new(a, "name", json_string(ab->names[i]));
    json_object_set_new(a, "role", json_string(i == 0 ? "champion" : "challenger"));
    json_object_set_new(a, "share", policy_json_real(share));
    json_object_set_new(a, "pulls", json_integer((json_int_t)s->pulls));
    json_object_set_new(a, "feedback", json_integer((json_int_t)s->feedback));
    json_object_set_new(a, "model", json_string(x.bernoulli ? "bernoulli" : "continuous"));
    json_object_set_new(a, "mean", policy_json_real(x.mean));
    json_object_set_new(a, "variance", policy_json_real(x.var));
    json_object_set_new(a, "std_error", policy_json_real(x.n > 0.0 ? sqrt(x.var / x.n) : NAN));
    return a;
}

static const char *verdict(const ab_run_t *r, double alpha)
{
    if (!(r->p_min < alpha)) return "inconclusive";
    if (r->sign > 0) return "challenger_better";
    if (r->sign < 0) return "champion_better";
    return "inconclusive";
}

static json_t *comparison_json(const ab_t *ab, const policy_view_t *v, size_t n, size_t i,
                               const abstats_cmp_t *c)
{
    const ab_run_t *r = &ab->run[i];
    double alpha = alpha_per_comparison(ab, n);
    json_t *o = json_object();
    json_object_set_new(o, "arm", json_string(ab->names[i]));
    json_object_set_new(o, "versus", json_string(ab->names[0]));
    json_object_set_new(o, "test",
                        c->test == ABSTATS_TEST_TWO_PROPORTIONS ? json_string("two_proportions")
                        : c->test == ABSTATS_TEST_WELCH         ? json_string("welch")
                                                                : json_null());
    json_object_set_new(o, "difference", policy_json_real(c->d.diff));
    abstats_sample_t a;
    arm_sample(ab, &v->stats[0], &a);
    json_object_set_new(o, "relative_difference",
                        policy_json_real(a.mean != 0.0 ? c->d.diff / fabs(a.mean) : NAN));
    json_object_set_new(o, "std_error", policy_json_real(c->d.se));
    json_object_set_new(o, "z", policy_json_real(c->d.z));
    json_object_set_new(o, "df", policy_json_real(c->d.df));
    json_object_set_new(o, "p_value_fixed_horizon", policy_json_real(c->d.p_value));

    json_t *av = json_object();
    json_object_set_new(av, "started", json_boolean(c->sequential || r->p_min < 1.0 || r->has_cs));
    json_object_set_new(av, "p_value", json_real(r->p_min));
    json_object_set_new(av, "p_value_now", policy_json_real(c->p_seq));
    if (r->has_cs) {
        json_t *cs = json_array();
        json_array_append_new(cs, json_real(r->cs_lo));
        json_array_append_new(cs, json_real(r->cs_hi));
        json_object_set_new(av, "confidence_sequence", cs);
    } else {
        json_object_set_new(av, "confidence_sequence", json_null());
    }
    json_object_set_new(av, "mixture_variance", policy_json_real(c->tau2));
    json_object_set_new(o, "always_valid", av);

    json_t *need = json_object(), *left = json_object();
    json_object_set_new(need, ab->names[0], jcount(c->need_a));
    json_object_set_new(need, ab->names[i], jcount(c->need_b));
    json_object_set_new(left, ab->names[0], jcount(remaining(c->need_a, v->stats[0].feedback)));
    json_object_set_new(left, ab->names[i], jcount(remaining(c->need_b, v->stats[i].feedback)));
    json_object_set_new(o, "samples_needed", need);
    json_object_set_new(o, "samples_remaining", left);
    json_object_set_new(o, "verdict", json_string(verdict(r, alpha)));
    return o;
}

static json_t *srm_json(const ab_t *ab, const policy_view_t *v, const double *w, size_t n)
{
    double obs[MM_MAX_ARMS], chi2, df, p;
    for (size_t i = 0; i < n; i++)
        obs[i] = (double)(v->stats[i].pulls >= ab->srm_base[i] ? v->stats[i].pulls - ab->srm_base[i]
                                                               : 0);
    json_t *o = json_object();
    if (abstats_srm(obs, w, n, &chi2, &df, &p) < 0) {
        json_object_set_new(o, "chi2", json_null());
        json_object_set_new(o, "df", json_null());
        json_object_set_new(o, "p_value", json_null());
        json_object_set_new(o, "srm", json_false());
    } else {
        json_object_set_new(o, "chi2", policy_json_real(chi2));
        json_object_set_new(o, "df", json_integer((json_int_t)df));
        json_object_set_new(o, "p_value", json_real(p));
        json_object_set_new(o, "srm", json_boolean(p < AB_SRM_P));
    }
    json_object_set_new(o, "threshold", json_real(AB_SRM_P));
    json_object_set_new(o, "since_control_version",
                        json_integer((json_int_t)ab->srm_since_version));
    return o;
}

static json_t *ab_describe(void *p, const policy_view_t *v)
{
    ab_t *ab = p;
    size_t n = v->n_arms < ab->n_arms ? v->n_arms : ab->n_arms;
    abstats_cmp_t cmp[MM_MAX_ARMS];
    const char *source;
    const double *w = effective_weights(ab, v->control, n, &source);
    double wsum = 0.0;

    update_running(ab, v, n, cmp);
    for (size_t i = 0; i < n; i++) wsum += w[i] > 0.0 && isfinite(w[i]) ? w[i] : 0.0;

    json_t *o = json_object();
    if (o == NULL) return NULL;
    json_object_set_new(o, "reward", json_string(reward_names[ab->reward]));
    json_object_set_new(o, "alpha", json_real(ab->alpha));
    json_object_set_new(o, "alpha_per_comparison", json_real(alpha_per_comparison(ab, n)));
    json_object_set_new(o, "mde", json_real(ab->mde));
    json_object_set_new(o, "power", json_real(ab->power));
    json_object_set_new(o, "mixture_variance",
                        ab->tau2 > 0.0 ? json_real(ab->tau2) : json_string("auto"));
    json_object_set_new(o, "sticky", json_boolean(ab->sticky));

    json_t *weights = json_object();
    json_object_set_new(weights, "configured", weights_json(ab, ab->weights, n));
    json_object_set_new(weights, "effective", weights_json(ab, w, n));
    json_object_set_new(weights, "source", json_string(source));
    json_object_set_new(o, "weights", weights);

    json_t *arms = json_array();
    for (size_t i = 0; i < n; i++) {
        double wi = w[i] > 0.0 && isfinite(w[i]) ? w[i] : 0.0;
        json_array_append_new(arms, arm_json(ab, &v->stats[i], i, wsum > 0.0 ? wi / wsum : NAN));
    }
    json_object_set_new(o, "arms", arms);

    json_t *cmps = json_array();
    for (size_t i = 1; i < n; i++)
        json_array_append_new(cmps, comparison_json(ab, v, n, i, &cmp[i]));
    json_object_set_new(o, "comparisons", cmps);
    json_object_set_new(o, "srm", srm_json(ab, v, w, n));
    return o;
}

const policy_ops_t policy_ab_ops = {
    .name = "ab",
    .flags = POLICY_ACCEPTS_WEIGHTS,
    .create = ab_create,
    .destroy = ab_destroy,
    .choose = ab_choose,
    .check_reward = ab_check_reward,
    .on_tick = ab_on_tick,
    .reset = ab_reset,
    .adopt = ab_adopt,
    .describe = ab_describe,
};
