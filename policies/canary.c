/* canary.c — progressive delivery with automated analysis (DESIGN.md §3 `canary`).
 *
 * The canary gets control->canary_step percent of the traffic; the rest goes
 * to the champion. Every step_interval_s the interval's answers are analysed:
 *   inconclusive — fewer than min_requests canary answers (and always with
 *                  none): the step holds, failures unchanged;
 *   passed       — canary error rate <= max_error_rate, and if set, error
 *                  rate minus the champion's <= max_error_rate_delta, canary
 *                  p99 <= max_p99_ms: next step, failures reset;
 *   failed       — failures++; the step holds until failure_limit
 *                  consecutive failures, then roll back (step 0, state
 *                  rolled_back, weights champion 100 / canary 0).
 * Passing the analysis *at the last step* completes the canary: with
 * on_success "promote" the state becomes promoted (weights canary 100, step
 * 100); with "hold" the canary stays at the last step under continued
 * analysis (a later failure still rolls it back). So the canary must survive
 * a whole interval at 100 % before it is promoted, as in Flagger.
 *
 * The interval: its counts are the store's pooled answer statistics
 * (policy_view_t.answers: every instance's answers, errors being status 0 or
 * >= 500) now, minus a snapshot of them taken when the interval started. So
 * with several instances, or --workers N, every instance judges the whole
 * traffic (min_requests, error rates and p99 over all of it, as Flagger
 * analyses the whole service), not its own share; the first to conclude
 * moves the step for all (store_propose_control), and the others restart
 * their interval when they see the new step. The interval restarts after
 * every analysis and whenever the step in the control state differs from the
 * step it was started at (another instance, an operator or a reload moved
 * it), so an interval never mixes two traffic shares; when the experiment
 * runs again after a pause (or a promotion or rollback was reset), so that
 * traffic served while paused is never judged and a resumed canary gets a
 * whole fresh interval; and when the pooled counters went below the
 * snapshot (a reset on another instance, seen before our own reset call).
 * Latency p99 comes from a fixed log-linear histogram (16 sub-buckets per
 * power of two: +-3 % at the bucket midpoint) that the store keeps per arm —
 * one increment per answer, no allocation; the subtraction and merging of
 * histograms happen here, once a tick. Answers with status 0 count as errors
 * but not as latencies (a timeout's duration is the timeout). The pooled
 * view lags other instances by up to one sync interval (sync_ms), which
 * shifts an interval's edges by as much, not its length.
 *
 * Starting: the core builds the initial control state with canary_step 0, so
 * on_tick treats "running at step 0" as "start at the first step" (steps are
 * > 0, so a running canary is never legitimately at 0). Until that first tick
 * all traffic goes to the champion: none with the memory store, which ticks
 * as the server starts; up to a second after a reset; none after a resume
 * from promoted or rolled_back, which the admin API follows with a tick (as
 * it does a resume from a pause: the fresh interval starts at the resume,
 * not up to a second later). With the Redis store the
 * core ticks only once Redis's control was read (store_control_known), so a
 * restarted or added instance adopts the shared step instead of starting over
 * and publishing step 0 -> steps[0] for the whole fleet.
 *
 * Sticky assignment is monotone: with a key, the request goes to the canary
 * iff u < step/100, u from the top 53 bits of the key hash, so a user on the
 * canary at 5 % stays on it at 25 %. on_tick reads no clock (view->now_ms)
 * and draws no random number: it is a function of its inputs (the view's
 * counters) and the interval's snapshot, which is what makes every branch
 * testable. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "../src/lathist.h"
#include "policy.h"

#define STEPS_MAX   32
#define HISTORY_MAX 32
#define REASON_MAX  200

/* Requests (answers), errors, latency samples and histogram of one arm:
 * the pooled cumulative counts (answer_stats_t), or an interval's share. */
typedef answer_stats_t interval_arm_t;

typedef enum { V_STARTED = 0, V_PASSED, V_FAILED, V_INCONCLUSIVE, V_OPERATOR } verdict_t;

typedef struct {
    uint64_t t_ms;
    double from, to;
    verdict_t verdict;
    exp_run_state_t state; /* after the analysis */
    int failures;          /* after the analysis */
    uint64_t requests[2];
    double error_rate[2];
    double p99_ms[2]; /* < 0: no latency sample */
    char reason[REASON_MAX];
} analysis_t;

typedef struct {
    char exp[MM_NAME_MAX + 1];
    char names[2][MM_NAME_MAX + 1];
    double steps[STEPS_MAX];
    size_t n_steps;
    uint64_t interval_ms;
    double interval_s;
    long long min_requests;
    double max_error_rate;
    double max_p99_ms;           /* < 0: no limit */
    double max_error_rate_delta; /* < 0: no limit */
    int failure_limit;
    int promote; /* on_success: 1 promote, 0 hold */

    /* the current interval */
    int started;
    uint64_t start_ms;
    double step;            /* the control's step when the interval started */
    uint64_t run_epoch;     /* the view's run_epoch then */
    interval_arm_t base[2]; /* the pooled counts then */
    int failures;           /* consecutive failed analyses */

    analysis_t history[HISTORY_MAX]; /* ring */
    size_t n_history;                /* total ever recorded */
} canary_t;

static const char *const verdict_names[] = {"started", "passed", "failed", "inconclusive",
                                            "operator"};

/* ---- latency histogram (src/lathist.h) ---- */

/* The 99th percentile (nearest rank) in ms, or -1 without samples. */
static double p99_ms(const interval_arm_t *a)
{
    double us = lathist_quantile_us(a->hist, a->samples, 0.99);
    return us < 0 ? -1.0 : us / 1000.0;
}

static double error_rate(const interval_arm_t *a)
{
    return a->answers ? (double)a->errors / (double)a->answers : 0.0;
}

/* The pooled cumulative counts of arms 0 and 1 from the view. */
static void pooled(const policy_view_t *v, interval_arm_t cum[2])
{
    for (size_t i = 0; i < 2; i++) policy_answers_merge(v, i, &cum[i]);
}

/* cur = the interval so far (cum - base); -1 if a counter went below the
 * snapshot (the statistics were reset): the interval must restart. */
static int interval_counts(const canary_t *c, const interval_arm_t cum[2], interval_arm_t cur[2])
{
    for (int i = 0; i < 2; i++)
        if (policy_answers_diff(&cum[i], &c->base[i], &cur[i]) < 0) return -1;
    return 0;
}

/* ---- routing ---- */

static void canary_choose(void *p, const policy_view_t *v, const policy_req_t *req,
                          policy_choice_t *out)
{
    const exp_control_t *ctl = v->control;
    MM_UNUSED(p);
    out->n_mirrors = 0;
    out->primary = 0;
    if (ctl == NULL) return;
    if (ctl->state == EXP_ROLLED_BACK) return;
    if (ctl->state == EXP_PROMOTED && ctl->has_weights) {
        size_t n = v->n_arms < 2 ? v->n_arms : 2;
        out->primary = req->has_key ? policy_pick_sticky(ctl->weights, n, req->key_hash)
                                    : policy_pick_weighted(ctl->weights, n, mm_rng_uniform(v->rng));
        return;
    }
    /* Running or paused (a paused canary keeps its share, it only stops moving). */
    double share = ctl->canary_step / 100.0;
    if (!(share > 0.0)) return;
    if (share >= 1.0) {
        out->primary = 1;
        return;
    }
    double u = req->has_key ? (double)(req->key_hash >> 11) * 0x1.0p-53 : mm_rng_uniform(v->rng);
    out->primary = u < share ? 1 : 0;
}

/* ---- analysis ---- */

/* cum: the pooled counts now (pooled()). */
static void interval_restart(canary_t *c, const policy_view_t *v, const interval_arm_t cum[2],
                             double step)
{
    c->started = 1;
    c->start_ms = v->now_ms;
    c->step = step;
    c->run_epoch = v->run_epoch;
    memcpy(c->base, cum, sizeof c->base);
}

static analysis_t *history_push(canary_t *c)
{
    analysis_t *a = &c->history[c->n_history % HISTORY_MAX];
    c->n_history++;
    memset(a, 0, sizeof *a);
    return a;
}

static void appendf(char *buf, size_t cap, const char *fmt, ...) MM_PRINTF(3, 4);
static void appendf(char *buf, size_t cap, const char *fmt, ...)
{
    size_t len = strlen(buf);
    if (len + 1 >= cap) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + len, cap - len, fmt, ap);
    va_end(ap);
}

/* Decimals to print a latency with: whole milliseconds from 10 ms up, two
 * below, so a 0.4 ms p99 against a 0.5 ms limit does not read "0 ms > 0 ms"
 * (and a 2.5 ms limit not "2 ms"). */
static int ms_digits(double ms)
{
    return ms < 10.0 ? 2 : 0;
}

/* Judge the interval `cur`; fills a->reason with the checks. */
static verdict_t judge(const canary_t *c, const interval_arm_t cur[2], analysis_t *a)
{
    const interval_arm_t *ch = &cur[0], *ca = &cur[1];
    for (int i = 0; i < 2; i++) {
        a->requests[i] = cur[i].answers;
        a->error_rate[i] = error_rate(&cur[i]);
        a->p99_ms[i] = p99_ms(&cur[i]);
    }
    if (ca->answers == 0 || ca->answers < (uint64_t)c->min_requests) {
        snprintf(a->reason, sizeof a->reason, "%llu canary requests < %lld",
                 (unsigned long long)ca->answers, c->min_requests > 0 ? c->min_requests : 1);
        return V_INCONCLUSIVE;
    }
    int ok = 1;
    double er = a->error_rate[1];
    a->reason[0] = '\0';
    int pass = er <= c->max_error_rate;
    ok &= pass;
    appendf(a->reason, sizeof a->reason, "error_rate %.3f %s %.3f", er, pass ? "<=" : ">",
            c->max_error_rate);
    if (c->max_error_rate_delta >= 0) {
        if (ch->answers == 0) {
            /* No champion answer in the interval (the canary carries all the
             * traffic): 0/0 is no baseline, so the delta cannot be judged. */
            appendf(a->reason, sizeof a->reason, ", delta n/a");
        } else {
            double d = er - error_rate(ch);
            pass = d <= c->max_error_rate_delta;
            ok &= pass;
            appendf(a->reason, sizeof a->reason, ", delta %.3f %s %.3f", d, pass ? "<=" : ">",
                    c->max_error_rate_delta);
        }
    }
    if (c->max_p99_ms >= 0) {
        if (a->p99_ms[1] < 0) {
            appendf(a->reason, sizeof a->reason, ", p99 n/a");
        } else {
            pass = a->p99_ms[1] <= c->max_p99_ms;
            ok &= pass;
            appendf(a->reason, sizeof a->reason, ", p99 %.*f ms %s %.*f ms",
                    ms_digits(a->p99_ms[1]), a->p99_ms[1], pass ? "<=" : ">",
                    ms_digits(c->max_p99_ms), c->max_p99_ms);
        }
    }
    return ok ? V_PASSED : V_FAILED;
}

static void log_line(const canary_t *c, const analysis_t *a)
{
    if (a->verdict == V_STARTED) {
        mm_log("canary %s: step 0 -> %g (started)", c->exp, a->to);
    } else if (a->state == EXP_PROMOTED) {
        mm_log("canary %s: step %g -> promoted (%s: %s)", c->exp, a->from,
               verdict_names[a->verdict], a->reason);
    } else if (a->state == EXP_ROLLED_BACK) {
        mm_log("canary %s: step %g -> 0 rolled back (failed %d/%d: %s)", c->exp, a->from,
               a->failures, c->failure_limit, a->reason);
    } else if (a->from != a->to) {
        mm_log("canary %s: step %g -> %g (%s: %s)", c->exp, a->from, a->to,
               verdict_names[a->verdict], a->reason);
    } else if (a->verdict == V_FAILED) {
        mm_log("canary %s: step %g held (failed %d/%d: %s)", c->exp, a->from, a->failures,
               c->failure_limit, a->reason);
    } else {
        mm_log("canary %s: step %g held (%s: %s)", c->exp, a->from, verdict_names[a->verdict],
               a->reason);
    }
}

/* The step after `step`, or -1 when `step` is the last one (or beyond). */
static double next_step(const canary_t *c, double step)
{
    for (size_t i = 0; i < c->n_steps; i++)
        if (c->steps[i] > step) return c->steps[i];
    return -1.0;
}

/* The admin API logs the action itself; here it joins the history, so
 * that the view tells why a canary stopped or moved without an analysis. */
static void canary_on_operator(void *p, const char *action, const exp_control_t *from,
                               const exp_control_t *to, uint64_t now_ms)
{
    canary_t *c = p;
    analysis_t *a = history_push(c);
    a->t_ms = now_ms;
    a->verdict = V_OPERATOR;
    a->from = from->canary_step;
    a->to = to->canary_step;
    a->state = to->state;
    a->failures = c->failures;
    snprintf(a->reason, sizeof a->reason, "%s through the admin API", action);
}

static int canary_on_tick(void *p, const policy_view_t *v, exp_control_t *ctl)
{
    canary_t *c = p;
    uint64_t now = v->now_ms;
    interval_arm_t cum[2], cur[2]; /* some 16 KB of stack, once a second */
    if (ctl->state != EXP_RUNNING) return 0;
    pooled(v, cum);

    if (!(ctl->canary_step > 0.0)) {
        analysis_t *a = history_push(c);
        a->t_ms = now;
        a->verdict = V_STARTED;
        a->from = 0;
        a->to = ctl->canary_step = c->steps[0];
        a->state = EXP_RUNNING;
        snprintf(a->reason, sizeof a->reason, "started at the first step");
        c->failures = 0;
        interval_restart(c, v, cum, ctl->canary_step);
        log_line(c, a);
        return 1;
    }
    if (!c->started || ctl->canary_step != c->step || v->run_epoch != c->run_epoch ||
        interval_counts(c, cum, cur) < 0) {
        interval_restart(c, v, cum, ctl->canary_step);
        return 0;
    }
    if (now < c->start_ms || now - c->start_ms < c->interval_ms) return 0;

    analysis_t *a = history_push(c);
    a->t_ms = now;
    a->from = a->to = ctl->canary_step;
    a->verdict = judge(c, cur, a);
    int changed = 0;
    if (a->verdict == V_PASSED) {
        c->failures = 0;
        double next = next_step(c, ctl->canary_step);
        if (next > 0) {
            ctl->canary_step = next;
            changed = 1;
        } else if (c->promote) {
            ctl->canary_step = 100.0;
            ctl->state = EXP_PROMOTED;
            memset(ctl->weights, 0, sizeof ctl->weights);
            ctl->weights[1] = 100.0;
            ctl->has_weights = 1;
            changed = 1;
        } else {
            appendf(a->reason, sizeof a->reason, "; last step, on_success hold");
        }
    } else if (a->verdict == V_FAILED) {
        c->failures++;
        if (c->failures >= c->failure_limit) {
            ctl->canary_step = 0.0;
            ctl->state = EXP_ROLLED_BACK;
            memset(ctl->weights, 0, sizeof ctl->weights);
            ctl->weights[0] = 100.0;
            ctl->has_weights = 1;
            changed = 1;
        }
    }
    a->to = ctl->canary_step;
    a->state = ctl->state;
    a->failures = c->failures;
    interval_restart(c, v, cum, ctl->canary_step);
    log_line(c, a);
    return changed;
}

/* A reload with the experiment unchanged goes on where the old instance
 * was: the interval in progress, the count of consecutive failures and the
 * history. Otherwise every reload (a new experiment elsewhere in the file, a
 * log setting) would restart the interval — reloads more frequent than
 * step_interval_s would hold the canary forever — forget failures counted
 * towards failure_limit, and drop the last analysis (why it was rolled
 * back) from the view. A changed definition starts over: the store resets
 * the control to step 0. */
static void canary_adopt(void *p, const void *old, int same_definition)
{
    canary_t *c = p;
    const canary_t *o = old;
    if (o == NULL || !same_definition) return;
    c->started = o->started;
    c->start_ms = o->start_ms;
    c->step = o->step;
    c->run_epoch = o->run_epoch;
    memcpy(c->base, o->base, sizeof c->base);
    c->failures = o->failures;
    memcpy(c->history, o->history, sizeof c->history);
    c->n_history = o->n_history;
}

static void canary_reset(void *p)
{
    canary_t *c = p;
    c->started = 0;
    c->failures = 0;
    c->n_history = 0;
    memset(c->base, 0, sizeof c->base);
    memset(c->history, 0, sizeof c->history);
}

/* ---- describe ---- */

static json_t *ms_or_null(double ms)
{
    return ms < 0 ? json_null() : json_real(ms);
}

static json_t *describe_interval_arm(const canary_t *c, const interval_arm_t *a, int i)
{
    json_t *o = json_object();
    json_object_set_new(o, "arm", json_string(c->names[i]));
    json_object_set_new(o, "requests", json_integer((json_int_t)a->answers));
    json_object_set_new(o, "errors", json_integer((json_int_t)a->errors));
    json_object_set_new(o, "error_rate", a->answers ? json_real(error_rate(a)) : json_null());
    json_object_set_new(o, "p99_ms", ms_or_null(p99_ms(a)));
    return o;
}

static json_t *describe_analysis(const analysis_t *a, uint64_t now_ms)
{
    json_t *o = json_object();
    json_object_set_new(o, "age_s",
                        json_real(now_ms >= a->t_ms ? (double)(now_ms - a->t_ms) / 1000.0 : 0.0));
    json_object_set_new(o, "verdict", json_string(verdict_names[a->verdict]));
    json_object_set_new(o, "from", json_real(a->from));
    json_object_set_new(o, "to", json_real(a->to));
    json_object_set_new(o, "state", json_string(exp_state_name(a->state)));
    json_object_set_new(o, "failures", json_integer(a->failures));
    if (a->verdict != V_STARTED && a->verdict != V_OPERATOR) {
        json_object_set_new(o, "canary_requests", json_integer((json_int_t)a->requests[1]));
        json_object_set_new(o, "champion_requests", json_integer((json_int_t)a->requests[0]));
        /* no answers, no rate: null, as the interval view says (not 0.0,
         * which reads as a clean canary) */
        json_object_set_new(o, "canary_error_rate",
                            a->requests[1] ? json_real(a->error_rate[1]) : json_null());
        json_object_set_new(o, "champion_error_rate",
                            a->requests[0] ? json_real(a->error_rate[0]) : json_null());
        json_object_set_new(o, "canary_p99_ms", ms_or_null(a->p99_ms[1]));
        json_object_set_new(o, "champion_p99_ms", ms_or_null(a->p99_ms[0]));
    }
    json_object_set_new(o, "reason", json_string(a->reason));
    return o;
}

static json_t *canary_describe(void *p, const policy_view_t *v)
{
    const canary_t *c = p;
    const exp_control_t *ctl = v->control;
    json_t *o = json_object();
    json_object_set_new(o, "champion", json_string(c->names[0]));
    json_object_set_new(o, "canary", json_string(c->names[1]));
    json_object_set_new(o, "step", json_real(ctl ? ctl->canary_step : 0.0));
    json_object_set_new(o, "state", json_string(exp_state_name(ctl ? ctl->state : EXP_RUNNING)));
    json_t *steps = json_array();
    for (size_t i = 0; i < c->n_steps; i++) json_array_append_new(steps, json_real(c->steps[i]));
    json_object_set_new(o, "steps", steps);
    json_object_set_new(o, "step_interval_s", json_real(c->interval_s));
    json_object_set_new(o, "on_success", json_string(c->promote ? "promote" : "hold"));

    json_t *an = json_object();
    json_object_set_new(an, "min_requests", json_integer(c->min_requests));
    json_object_set_new(an, "max_error_rate", json_real(c->max_error_rate));
    json_object_set_new(an, "max_p99_ms", ms_or_null(c->max_p99_ms));
    json_object_set_new(an, "max_error_rate_delta",
                        c->max_error_rate_delta < 0 ? json_null()
                                                    : json_real(c->max_error_rate_delta));
    json_object_set_new(an, "failure_limit", json_integer(c->failure_limit));
    json_object_set_new(o, "analysis", an);
    json_object_set_new(o, "failures", json_integer(c->failures));

    /* Only a running canary has an interval in progress: a paused one gets
     * a fresh interval when it resumes, a promoted or rolled-back one none,
     * and one at step 0 (reset, or a rolled-back one resumed) none until
     * the tick that starts it. */
    if (c->started && ctl != NULL && ctl->state == EXP_RUNNING && ctl->canary_step > 0.0) {
        json_t *iv = json_object();
        /* Resumed, or moved to another step, since the interval began: the
         * next tick starts a fresh one, and that is the one in progress. */
        int fresh = v->run_epoch != c->run_epoch || ctl->canary_step != c->step;
        double elapsed =
            !fresh && v->now_ms >= c->start_ms ? (double)(v->now_ms - c->start_ms) / 1000.0 : 0;
        double remaining = c->interval_s - elapsed;
        json_object_set_new(iv, "step", json_real(fresh ? ctl->canary_step : c->step));
        json_object_set_new(iv, "elapsed_s", json_real(elapsed));
        json_object_set_new(iv, "remaining_s", json_real(remaining > 0 ? remaining : 0));
        /* The interval so far, as the next analysis would see it (zero if
         * the counters were reset under it: the next tick restarts it). */
        interval_arm_t *cum = malloc(4 * sizeof(*cum)), *cur = cum ? cum + 2 : NULL;
        if (cum != NULL) {
            pooled(v, cum);
            if (fresh || interval_counts(c, cum, cur) < 0) memset(cur, 0, 2 * sizeof(*cur));
            json_object_set_new(iv, "champion", describe_interval_arm(c, &cur[0], 0));
            json_object_set_new(iv, "canary", describe_interval_arm(c, &cur[1], 1));
        }
        free(cum);
        json_object_set_new(o, "interval", iv);
    } else {
        json_object_set_new(o, "interval", json_null());
    }

    json_t *hist = json_array();
    size_t n = c->n_history < HISTORY_MAX ? c->n_history : HISTORY_MAX;
    for (size_t i = 0; i < n; i++) {
        const analysis_t *a = &c->history[(c->n_history - n + i) % HISTORY_MAX];
        json_array_append_new(hist, describe_analysis(a, v->now_ms));
    }
    json_object_set_new(
        o, "last_analysis",
        n ? describe_analysis(&c->history[(c->n_history - 1) % HISTORY_MAX], v->now_ms)
          : json_null());
    json_object_set_new(o, "history", hist);
    return o;
}

/* ---- configuration ---- */

static int parse_steps(canary_t *c, const json_t *exp, policy_parse_t *pp)
{
    static const double defaults[] = {1, 5, 25, 50, 100};
    const json_t *steps = json_object_get(exp, "steps");
    if (steps == NULL) {
        memcpy(c->steps, defaults, sizeof defaults);
        c->n_steps = MM_ARRAY_LEN(defaults);
        return 0;
    }
    if (!json_is_array(steps) || json_array_size(steps) == 0)
        return policy_error(pp, "/steps",
                            "must be a non-empty list of percentages, as in [1, 5, 25, 50, 100]");
    if (json_array_size(steps) > STEPS_MAX)
        return policy_error(pp, "/steps", "at most %d steps", STEPS_MAX);
    size_t i;
    const json_t *s;
    json_array_foreach(steps, i, s)
    {
        char path[32];
        snprintf(path, sizeof path, "/steps/%zu", i);
        if (!json_is_number(s)) return policy_error(pp, path, "must be a number (percent)");
        double x = json_number_value(s);
        char g[40], h[40];
        if (!(x > 0.0 && x <= 100.0))
            return policy_error(pp, path, "must be in (0, 100] percent, got %s",
                                policy_num(x, g, sizeof(g)));
        if (i > 0 && !(x > c->steps[i - 1]))
            return policy_error(pp, path, "steps must be strictly increasing (%s after %s)",
                                policy_num(x, g, sizeof(g)),
                                policy_num(c->steps[i - 1], h, sizeof(h)));
        c->steps[i] = x;
    }
    c->n_steps = json_array_size(steps);
    return 0;
}

/* An optional limit: absent or null means none (-1). */
static int optional_limit(policy_parse_t *pp, const json_t *obj, const char *key, double hi,
                          int positive, double *out)
{
    const json_t *v = json_object_get(obj, key);
    *out = -1.0;
    if (v == NULL || json_is_null(v)) return 0;
    return policy_get_number_in(pp, obj, "/analysis", key, 0.0, 0.0, hi,
                                positive ? POLICY_OPEN_LO : 0, out);
}

static int parse_analysis(canary_t *c, const json_t *exp, policy_parse_t *pp)
{
    static const char *const keys[] = {"min_requests",         "max_error_rate", "max_p99_ms",
                                       "max_error_rate_delta", "failure_limit",  NULL};
    const json_t *an = json_object_get(exp, "analysis");
    json_t *tmp = NULL;
    long long limit;
    int rc = -1;
    if (an == NULL) an = tmp = json_object();
    if (an == NULL) return policy_error(pp, "", "out of memory");
    if (!json_is_object(an)) return policy_error(pp, "/analysis", "must be an object");
    if (policy_check_keys(pp, an, "/analysis", keys) < 0) goto out;
    if (policy_get_int(pp, an, "/analysis", "min_requests", 100, 0, 1000000000000LL,
                       &c->min_requests) < 0)
        goto out;
    if (policy_get_number(pp, an, "/analysis", "max_error_rate", 0.05, 0.0, 1.0,
                          &c->max_error_rate) < 0)
        goto out;
    if (optional_limit(pp, an, "max_p99_ms", 1e9, 1, &c->max_p99_ms) < 0) goto out;
    if (optional_limit(pp, an, "max_error_rate_delta", 1.0, 0, &c->max_error_rate_delta) < 0)
        goto out;
    if (policy_get_int(pp, an, "/analysis", "failure_limit", 1, 1, 1000000, &limit) < 0) goto out;
    c->failure_limit = (int)limit;
    rc = 0;
out:
    json_decref(tmp);
    return rc;
}

static int add_arm(canary_t *c, policy_parse_t *pp, const json_t *exp, const char *key)
{
    const char *name = NULL;
    char path[32];
    snprintf(path, sizeof path, "/%s", key);
    if (policy_get_string(pp, exp, "", key, NULL, &name) < 0) return -1;
    if (name == NULL) return policy_error(pp, "", "missing \"%s\" (an upstream name)", key);
    int idx = policy_add_arm(pp, name, path);
    if (idx < 0) return -1;
    if (idx < 2) snprintf(c->names[idx], sizeof c->names[idx], "%s", name);
    return idx;
}

static void *canary_create(const json_t *exp, policy_parse_t *pp)
{
    static const char *const keys[] = {"champion",        "canary",   "steps",
                                       "step_interval_s", "analysis", "on_success",
                                       "sticky",          "salt",     NULL};
    const char *on_success = NULL, *salt = NULL;
    canary_t *c = calloc(1, sizeof *c);
    if (c == NULL) {
        policy_error(pp, "", "out of memory");
        return NULL;
    }
    snprintf(c->exp, sizeof c->exp, "%s", policy_experiment_name(pp));
    if (policy_check_keys(pp, exp, "", keys) < 0) goto err;
    if (add_arm(c, pp, exp, "champion") < 0 || add_arm(c, pp, exp, "canary") < 0) goto err;
    if (parse_steps(c, exp, pp) < 0) goto err;
    if (policy_get_number_in(pp, exp, "", "step_interval_s", 60.0, 0.0, 1e9, POLICY_OPEN_LO,
                             &c->interval_s) < 0)
        goto err;
    c->interval_ms = (uint64_t)llround(c->interval_s * 1000.0);
    if (c->interval_ms == 0) c->interval_ms = 1;
    if (parse_analysis(c, exp, pp) < 0) goto err;
    if (policy_get_string(pp, exp, "", "on_success", "promote", &on_success) < 0) goto err;
    if (strcmp(on_success, "promote") == 0) {
        c->promote = 1;
    } else if (strcmp(on_success, "hold") == 0) {
        c->promote = 0;
    } else {
        policy_error(pp, "/on_success", "must be \"promote\" or \"hold\"");
        goto err;
    }
    /* salt as for ab: mixed into the sticky key's hash (default: the
     * experiment's name), and an error without sticky, where it would do
     * nothing. */
    if (policy_get_string(pp, exp, "", "salt", NULL, &salt) < 0) goto err;
    const json_t *sticky = json_object_get(exp, "sticky");
    if (sticky != NULL) {
        if (policy_set_sticky(pp, sticky, "/sticky", salt) < 0) goto err;
    } else if (salt != NULL) {
        policy_error(pp, "/salt",
                     "has no effect without sticky (add \"sticky\": {\"header\": NAME})");
        goto err;
    }
    return c;
err:
    free(c);
    return NULL;
}

static void canary_destroy(void *p)
{
    free(p);
}

const policy_ops_t policy_canary_ops = {
    .name = "canary",
    .flags = 0,
    .create = canary_create,
    .destroy = canary_destroy,
    .choose = canary_choose,
    .on_tick = canary_on_tick,
    .on_operator = canary_on_operator,
    .reset = canary_reset,
    .adopt = canary_adopt,
    .describe = canary_describe,
};
