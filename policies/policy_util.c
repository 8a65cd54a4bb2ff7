/* policy_util.c — weighted picks and the bandits' error scoring, shared by
 * the policies (declared in policy.h).
 *
 * Both picks are one cumulative-weight walk over at most MM_MAX_ARMS entries:
 * O(n) with n <= 16, cheaper than building an alias table per decision, and
 * weights may change between any two requests (admin API), so nothing is
 * precomputed.
 *
 * Robustness: weights that are negative, NaN or infinite count as 0, and an
 * arm of weight 0 is never returned while some arm has weight > 0 (a rounding
 * overshoot at the end of the walk lands on the last positive arm, not on a
 * trailing zero). With no positive weight at all, arm 0 (the champion) is
 * returned: routing must go on, and the champion is the safe answer.
 *
 * Sticky: the top 53 bits of the key hash become u in [0, 1) and take the
 * same walk, so for fixed weights a key always gets the same arm, and with two
 * arms a key moves only from arm 0 to arm 1 as arm 1's weight grows
 * (u < w0 / (w0 + w1) picks arm 0) — a ramp-up never sends a user back. */
#include <math.h>

#include <stdio.h>
#include <string.h>

#include "policy.h"

static inline double clean_weight(double w)
{
    return (w > 0.0 && isfinite(w)) ? w : 0.0;
}

int policy_pick_weighted(const double *weights, size_t n, double u)
{
    double sum = 0.0;
    int last = -1;
    for (size_t i = 0; i < n; i++) {
        double w = clean_weight(weights[i]);
        if (w > 0.0) {
            sum += w;
            last = (int)i;
        }
    }
    if (last < 0) return 0;
    if (!(u >= 0.0)) u = 0.0; /* also catches NaN */
    if (u >= 1.0) return last;
    double target = u * sum, cum = 0.0;
    for (size_t i = 0; i < n; i++) {
        double w = clean_weight(weights[i]);
        if (w == 0.0) continue;
        cum += w;
        if (target < cum) return (int)i;
    }
    return last;
}

int policy_pick_sticky(const double *weights, size_t n, uint64_t key_hash)
{
    double u = (double)(key_hash >> 11) * 0x1.0p-53;
    return policy_pick_weighted(weights, n, u);
}

int policy_parse_arm_list(policy_parse_t *pp, const json_t *exp, const char *key, int min,
                          char names[][MM_NAME_MAX + 1])
{
    char where[80];
    snprintf(where, sizeof where, "/%s", key);
    const json_t *arms = json_object_get(exp, key);
    if (arms == NULL) return policy_error(pp, "", "missing \"%s\" (a list of upstream names)", key);
    if (!json_is_array(arms)) return policy_error(pp, where, "must be a list of upstream names");
    if (json_array_size(arms) < (size_t)min)
        return policy_error(pp, where, "needs at least %d arms", min);
    size_t i;
    const json_t *a;
    json_array_foreach(arms, i, a)
    {
        char path[128];
        snprintf(path, sizeof path, "%s/%zu", where, i);
        if (!json_is_string(a))
            return policy_error(pp, path, "must be an upstream name (a string)");
        int idx = policy_add_arm(pp, json_string_value(a), path);
        if (idx < 0) return -1;
        if (idx < MM_MAX_ARMS) snprintf(names[idx], MM_NAME_MAX + 1, "%s", json_string_value(a));
    }
    return policy_arm_count(pp);
}

static const char *const exp_state_names[EXP_STATE_COUNT] = {
    [EXP_RUNNING] = "running",
    [EXP_PAUSED] = "paused",
    [EXP_PROMOTED] = "promoted",
    [EXP_ROLLED_BACK] = "rolled_back",
};

const char *exp_state_name(exp_run_state_t s)
{
    return (unsigned)s < EXP_STATE_COUNT ? exp_state_names[s] : exp_state_names[EXP_RUNNING];
}

int exp_state_parse(const char *p, size_t n, exp_run_state_t *out)
{
    for (int i = 0; i < EXP_STATE_COUNT; i++)
        if (strlen(exp_state_names[i]) == n && memcmp(exp_state_names[i], p, n) == 0) {
            *out = (exp_run_state_t)i;
            return 0;
        }
    return -1;
}

int policy_check_undeclared_reward(double reward)
{
    if (!isfinite(reward)) return -1;
    return reward == 0.0 || reward == 1.0;
}

const arm_stats_t *policy_scored_stats(const arm_stats_t *in, size_t n, double r, arm_stats_t *out)
{
    int any = 0;
    for (size_t i = 0; i < n && !any; i++) any = in[i].errors > 0;
    if (isnan(r) || !any) return in;
    for (size_t i = 0; i < n; i++) {
        double k = (double)in[i].errors;
        out[i] = in[i];
        out[i].feedback += in[i].errors;
        out[i].reward_sum += k * r;
        out[i].reward_sq_sum += k * r * r;
        out[i].successes += k * r;
        out[i].failures += k * (1.0 - r);
    }
    return out;
}

int policy_parse_error_reward(policy_parse_t *pp, const json_t *exp, double lo, double hi,
                              double *out)
{
    if (json_is_null(json_object_get(exp, "error_reward"))) {
        *out = NAN;
        return 0;
    }
    return policy_get_number(pp, exp, "", "error_reward", 0.0, lo, hi, out);
}

json_t *policy_json_real(double d)
{
    return isfinite(d) ? json_real(d) : json_null();
}

json_t *policy_bandit_arm(const char *name, const arm_stats_t *raw)
{
    json_t *a = json_object();
    json_object_set_new(a, "arm", json_string(name));
    json_object_set_new(a, "feedback", json_integer((json_int_t)raw->feedback));
    json_object_set_new(a, "errors", json_integer((json_int_t)raw->errors));
    return a;
}
