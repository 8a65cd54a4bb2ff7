/* policy.h — the one interface between the proxy core and a routing policy.
 *
 * A policy is a set of pure functions over experiment state plus a seeded
 * RNG. It never touches sockets, files or the store: the core hands it a
 * read-only view (arm statistics, the operator's control state, the clock,
 * the RNG) and acts on what it returns (which arm answers, which arms get a
 * mirror, a new canary step). That is what makes every policy unit-testable
 * without a network, and lets the core stay ignorant of which policy runs.
 *
 * Adding a policy: write policies/NAME.c exporting one `policy_ops_t`, and add
 * one line to the registry in policies/registry.c. Nothing in src/ changes. */
#ifndef MM_POLICY_H
#define MM_POLICY_H

#include <jansson.h>
#include <stdint.h>

#include "../src/buf.h"
#include "../src/common.h"
#include "../src/lathist.h"
#include "../src/rng.h"

/* Weights (ab arms, PUT weights) are relative numbers in [0, MM_WEIGHT_MAX]:
 * a bound keeps their sum finite, so shares stay what the ratios say. */
#define MM_WEIGHT_MAX 1e9

/* The largest reward magnitude counted. Every instance of a fleet adds
 * to an arm's sums at once, so a check of the sums one instance sees
 * cannot keep the pooled ones finite; under this bound no number of
 * rewards can overflow them (a square is at most 1e200, DBL_MAX is 1.8e308). */
#define MM_REWARD_MAX 1e100

/* Per-arm statistics, as kept in the store (DESIGN.md §6 arm hash). The view
 * a policy sees is the shared global snapshot plus this instance's not yet
 * flushed increments, so decisions use everything known. */
typedef struct {
    uint64_t pulls;    /* requests routed to the arm */
    uint64_t feedback; /* rewards received */
    uint64_t errors;   /* upstream errors and 5xx answers */
    double reward_sum;
    double reward_sq_sum;
    double successes; /* Bernoulli rewards: += r */
    double failures;  /* Bernoulli rewards: += 1 - r */
} arm_stats_t;

/* Per-arm answer statistics, pooled over every instance through the store
 * (DESIGN.md §6 extension PREFIX:{EXP}:lat:ARM, see README): every answer
 * the core saw from the arm since the last reset, whatever the state
 * (running or paused). Cumulative: a policy that judges an interval keeps a
 * snapshot of its own and subtracts it. An answer with status 0 (no answer:
 * transport failure or timeout) counts as an answer and an error, but not
 * as a latency (its duration is the timeout's). */
typedef struct {
    uint64_t answers;               /* answers, status 0 included */
    uint64_t errors;                /* status 0 or >= 500 */
    uint64_t samples;               /* latencies counted: the sum of hist */
    uint64_t hist[LATHIST_BUCKETS]; /* latency in us, log-linear (src/lathist.h) */
} answer_stats_t;

typedef enum {
    EXP_RUNNING = 0,
    EXP_PAUSED,      /* policy frozen: no learning, no steps */
    EXP_PROMOTED,    /* all traffic to one arm (control weights say which) */
    EXP_ROLLED_BACK, /* all traffic to the champion */
} exp_run_state_t;
#define EXP_STATE_COUNT 4

/* The state's name in the admin API, the metrics and the store's control
 * hash (DESIGN.md §5, §6): "running" for a value out of range. */
const char *exp_state_name(exp_run_state_t s);
/* Its inverse over the n bytes at p: 0, or -1 (and *out untouched) for a
 * name that is none of them. */
int exp_state_parse(const char *p, size_t n, exp_run_state_t *out);

/* Operator-controlled state, shared by every instance through the store
 * (DESIGN.md §6 control hash). Weights set here override the policy's
 * configured weights while has_weights is set; promote and rollback are
 * expressed as weights (100 on one arm) plus the state. */
typedef struct {
    double weights[MM_MAX_ARMS];
    int has_weights;
    exp_run_state_t state;
    double canary_step; /* percent of traffic on the canary (canary policy only) */
    uint64_t version;   /* incremented on every change */
} exp_control_t;

/* Named counters of the policy's own, pooled over every instance through
 * the store (src/tally.h; Redis hash PREFIX:{EXP}:tally): what a policy
 * measures beyond the arm statistics (shadow: agreement counts per arm and
 * per field), so that every worker and every instance describes the same
 * figures. A counter reads as the pooled value last synced plus what this
 * instance counted since (the pooled part lags by sync_ms). Kept per
 * definition of the experiment: a reload that changes it starts them at 0,
 * as does a reset (everywhere). A NULL tally counts and reads nothing. */
typedef struct tally_s policy_tally_t;
void policy_tally_add(policy_tally_t *t, const char *name, uint64_t n);
uint64_t policy_tally_get(const policy_tally_t *t, const char *name);
/* Add n to counter `name` if it is above 0 already and return 1; else count
 * nothing and return 0 (one lookup where get-then-add takes two). */
int policy_tally_bump(policy_tally_t *t, const char *name, uint64_t n);
/* Counters above 0 whose name starts with `prefix`. A scan: not per request. */
size_t policy_tally_count(const policy_tally_t *t, const char *prefix);
typedef void (*policy_tally_cb)(void *arg, const char *rest, uint64_t v);
/* cb(arg, name after the prefix, value) for each counter above 0 whose name
 * starts with `prefix`, in the order they were first counted. */
void policy_tally_each(const policy_tally_t *t, const char *prefix, policy_tally_cb cb, void *arg);
/* The core counts each mirror it did not send (max_inflight,
 * max_body_bytes) as "ARM|dropped" in a mirroring policy's tally: in the
 * arm's own names (arm names have no '|'), which the policy leaves it. */
#define POLICY_TALLY_DROPPED "|dropped"

/* What a policy may look at when it decides. */
typedef struct {
    size_t n_arms;
    const arm_stats_t *stats; /* n_arms entries; frozen while paused */
    const exp_control_t *control;
    uint64_t now_ms; /* monotonic */
    mm_rng_t *rng;
    /* Pooled answer statistics, n_arms entries each (NULL: none). Arm i's
     * figures are answers[i] (the global snapshot last read) plus
     * answers_local[i] (what this instance counted that the store has not
     * confirmed yet): lathist_quantile2_us reads the two histograms as one,
     * policy_answers_merge adds them up. Not frozen while paused. Merging is
     * 976 additions per arm: do it in on_tick or describe, not in choose. */
    const answer_stats_t *answers;
    const answer_stats_t *answers_local;
    /* Incremented each time this instance saw the experiment's state become
     * running again (resume, or a reset after a promotion or rollback): a
     * policy measuring an interval restarts it when this changes. */
    uint64_t run_epoch;
    /* The experiment's pooled counters (NULL: none, as for a request still
     * in flight on a router whose definition a reload replaced). Mutable:
     * compare() counts into it. */
    policy_tally_t *tally;
} policy_view_t;

/* out = arm's pooled answer statistics from v (zero without any). */
static inline void policy_answers_merge(const policy_view_t *v, size_t arm, answer_stats_t *out)
{
    const answer_stats_t *a = v->answers && arm < v->n_arms ? &v->answers[arm] : NULL;
    const answer_stats_t *l = v->answers_local && arm < v->n_arms ? &v->answers_local[arm] : NULL;
    if (a == NULL && l == NULL) {
        *out = (answer_stats_t){0};
        return;
    }
    if (a == NULL || l == NULL) {
        *out = a ? *a : *l;
        return;
    }
    out->answers = a->answers + l->answers;
    out->errors = a->errors + l->errors;
    out->samples = a->samples + l->samples;
    for (unsigned i = 0; i < LATHIST_BUCKETS; i++) out->hist[i] = a->hist[i] + l->hist[i];
}

/* out = a - b, counter by counter (out may be a: a -= b). Returns -1 if a
 * counter of b exceeds a's (the statistics were reset between the two
 * readings; out then holds wrapped values), else 0. */
static inline int policy_answers_diff(const answer_stats_t *a, const answer_stats_t *b,
                                      answer_stats_t *out)
{
    int under = a->answers < b->answers || a->errors < b->errors || a->samples < b->samples;
    out->answers = a->answers - b->answers;
    out->errors = a->errors - b->errors;
    out->samples = a->samples - b->samples;
    for (unsigned i = 0; i < LATHIST_BUCKETS; i++) {
        under |= a->hist[i] < b->hist[i];
        out->hist[i] = a->hist[i] - b->hist[i];
    }
    return under ? -1 : 0;
}

/* What a policy may know about one request. The core extracts the sticky
 * key (header, cookie or query parameter, as declared at parse time) and
 * hashes it with the salt, so a policy never parses HTTP. */
typedef struct {
    mm_str_t method;
    mm_str_t path; /* with the query string */
    int has_key;   /* the request carried the sticky key */
    uint64_t key_hash;
} policy_req_t;

/* The decision for one request. */
typedef struct {
    int primary;   /* arm index whose answer the client gets */
    int n_mirrors; /* arms that get a copy of the request (shadow) */
    int mirrors[MM_MAX_ARMS];
    int fanout; /* 1: send the request to every arm at once and build the
                   client's answer with ops->combine (interleave) */
} policy_choice_t;

/* One answer, for comparison (shadow). status 0: transport failure or timeout. */
typedef struct {
    int status;
    mm_str_t content_type;
    mm_str_t body;
    int truncated; /* body was larger than what was kept */
    /* Only when the policy declared keep_headers (else empty): the answer's
     * end-to-end header lines as "name:value\n", names lowercased, values
     * without surrounding whitespace, sorted by name (the order of a name's
     * repeated lines kept). Left out: hop-by-hop headers, X-Modelmux-*,
     * X-Request-Id, Content-Length (framing) and Date (the clock). */
    mm_str_t headers;
    int skipped; /* not asked (its upstream is ejected): status 0, but no failure of its own */
} policy_resp_t;

enum { POLICY_MATCH = 0, POLICY_MISMATCH = 1, POLICY_ERROR = 2 };

/* Flags describing a policy to the core: what the operator may do with its
 * experiments, and how its view is kept. */
enum {
    POLICY_ACCEPTS_WEIGHTS = 1 << 0, /* PUT /experiments/NAME/weights applies (else 409) */
    /* Its view's stats stay live while paused (else they are the snapshot
     * taken at the pause): for a policy whose decisions do not learn from
     * them, which only counts (interleave goes on counting clicks). */
    POLICY_LIVE_WHILE_PAUSED = 1 << 1,
};

/* Mechanics the core enforces for mirrors; declared by the policy at parse time. */
typedef struct {
    int max_inflight; /* per shadow arm */
    int timeout_ms;
    uint64_t max_body_bytes; /* larger request bodies are not mirrored */
    int keep_headers;        /* compare() gets each answer's header lines */
} policy_mirror_limits_t;

/* The parse context, owned by config.c. It knows the upstream names, maps a
 * JSON pointer to a line and column, and collects what the policy declares. */
typedef struct policy_parse_s policy_parse_t;

typedef struct policy_ops_s {
    const char *name; /* the "policy" value in the config */
    unsigned flags;

    /* Validate the experiment object `exp` (the whole object: the keys name,
     * match, policy and feedback_ttl_s belong to the core and are allowed)
     * and build an instance. Must declare its arms with policy_add_arm, the
     * champion first. On error: call policy_error and return NULL. */
    void *(*create)(const json_t *exp, policy_parse_t *pp);
    void (*destroy)(void *p);

    /* Decide one request. Called on the hot path: no allocation. */
    void (*choose)(void *p, const policy_view_t *v, const policy_req_t *req, policy_choice_t *out);

    /* Optional. A reward for the arm arrived: -1 if the value is invalid for
     * this policy (it is then counted as invalid and not applied), 1 if it is
     * a Bernoulli reward (the store also counts successes/failures), else 0.
     * Absent: policy_check_undeclared_reward. */
    int (*check_reward)(void *p, double reward);

    /* Optional. An answer from `arm` (status 0: transport failure/timeout),
     * while the experiment runs. (The store counts every answer for every
     * policy as well: policy_view_t.answers.) */
    void (*on_response)(void *p, int arm, int status, uint64_t latency_us, uint64_t now_ms);

    /* Optional. Called about once a second while running (not while paused).
     * May change `ctl` (canary step, state, weights); returns 1 if it did, and
     * the core then publishes the change through the store. */
    int (*on_tick)(void *p, const policy_view_t *v, exp_control_t *ctl);

    /* Optional (mirroring policies). All answers to one mirrored request:
     * the primary's and each mirror's (mirror_arms[i] answered mirrors[i]).
     * Fills outcomes[i] with POLICY_MATCH / POLICY_MISMATCH / POLICY_ERROR.
     * What it counts goes to v->tally (the view of the experiment's state;
     * its stats and answers are not to be relied on here). */
    void (*compare)(void *p, const policy_view_t *v, const policy_resp_t *primary,
                    const int *mirror_arms, const policy_resp_t *mirrors, size_t n, int *outcomes);

    /* Optional (fanout policies). answers[i] is arm i's answer to the same
     * request (status 0: failed or timed out; body de-chunked). Either merge
     * them: write the client's body into `out`, set *merged = 1 and return
     * the arm whose status and content type the client gets; or pass one
     * answer through unchanged: *merged = 0 and return its arm (counting the
     * reason yourself). Return -1 when no answer can be passed on (the core
     * answers 502, or 504 if every failure was a timeout). `aux` receives what must
     * be remembered for this request's feedback (e.g. which team showed
     * which item); the core keeps it with the request id for feedback_ttl_s. */
    int (*combine)(void *p, const policy_view_t *v, const policy_resp_t *answers, size_t n,
                   mm_buf_t *out, mm_buf_t *aux, int *merged);

    /* Optional (fanout policies). A click on `item` (feedback with "item")
     * for a request this policy combined; `aux` is what combine stored and
     * may be rewritten (it is stored back). Fill deltas[arm] with what to add
     * to each arm's statistics (all zero: nothing). Returns 0 when applied,
     * -1 when invalid (e.g. the item was not shown). */
    int (*on_click)(void *p, mm_buf_t *aux, const char *item, arm_stats_t *deltas);

    /* Optional. An operator changed the control through this instance's
     * admin API (`action`: "weights", "promote", "rollback", "pause" or
     * "resume"), from `from` to `to`: for a policy that keeps a history of
     * its own transitions (canary), so that the operator's are in it too. */
    void (*on_operator)(void *p, const char *action, const exp_control_t *from,
                        const exp_control_t *to, uint64_t now_ms);

    /* Optional. Forget learned statistics (admin reset). */
    void (*reset)(void *p);

    /* Optional. A reload built this instance for an experiment the replaced
     * config had too; `old` is that config's instance (NULL when it ran
     * another policy). same_definition: the experiment's definition is
     * unchanged, so what `old` measured carries over (a canary's interval,
     * failure count and history; an A/B test's running p-value; shadow
     * agreement counts), as it would have without the reload; 0: it changed
     * (the store keeps the arm statistics, but the weights or steps they
     * were gathered under may no longer hold). Called before the new router
     * serves anything; `old` is not changed. */
    void (*adopt)(void *p, const void *old, int same_definition);

    /* The policy's own state as JSON for GET /experiments/NAME ("policy_state"). */
    json_t *(*describe)(void *p, const policy_view_t *v);
} policy_ops_t;

/* ---- registry (policies/registry.c) ---- */
const policy_ops_t *policy_find(const char *name);

/* ---- parse-time services offered by config.c ----
 * `path` arguments are JSON pointers relative to the experiment object
 * ("/arms/champion", "/analysis/max_error_rate"); the error message is
 * prefixed with the file, line and column of that value. */

/* Record an error; always returns -1. */
int policy_error(policy_parse_t *pp, const char *path, const char *fmt, ...) MM_PRINTF(3, 4);
/* d as text for an error ("got ..."), with every digit needed to tell it
 * from its neighbours: a value just outside a range never reads as the
 * bound (1000000001, not 1e+09). Returns out. */
const char *policy_num(double d, char *out, size_t n);
/* Declare an arm (an upstream name). Returns the arm index, or -1 after
 * recording an error (unknown upstream, duplicate arm, too many arms). */
int policy_add_arm(policy_parse_t *pp, const char *name, const char *path);
/* Number of arms declared so far. */
int policy_arm_count(const policy_parse_t *pp);
/* Fail (with the offending key's position) on any key of obj not listed in
 * `allowed` (NULL-terminated). For the experiment object itself pass
 * path "" and the core's keys are allowed implicitly. */
int policy_check_keys(policy_parse_t *pp, const json_t *obj, const char *path,
                      const char *const *allowed);
/* Read number obj[key] into *out (def when absent); fail unless lo <= v <= hi. */
int policy_get_number(policy_parse_t *pp, const json_t *obj, const char *path, const char *key,
                      double def, double lo, double hi, double *out);
/* The same with open ends: lo < v (POLICY_OPEN_LO), v < hi (POLICY_OPEN_HI). */
#define POLICY_OPEN_LO 1
#define POLICY_OPEN_HI 2
int policy_get_number_in(policy_parse_t *pp, const json_t *obj, const char *path, const char *key,
                         double def, double lo, double hi, int open, double *out);
/* The same for integers. */
int policy_get_int(policy_parse_t *pp, const json_t *obj, const char *path, const char *key,
                   long long def, long long lo, long long hi, long long *out);
/* Read string obj[key] (def when absent, may be NULL); the result lives as long as obj. */
int policy_get_string(policy_parse_t *pp, const json_t *obj, const char *path, const char *key,
                      const char *def, const char **out);
/* Declare sticky assignment from the value of `sticky` ({"header"|"cookie"|"query": NAME});
 * salt NULL means the experiment name. Pass the value as found: NULL (the key
 * is absent) sets only the salt, anything but an object, JSON null included,
 * is an error ("must be an object, got null"). */
int policy_set_sticky(policy_parse_t *pp, const json_t *sticky, const char *path, const char *salt);
/* Declare mirror mechanics (mirroring policies only). */
void policy_set_mirror_limits(policy_parse_t *pp, const policy_mirror_limits_t *lim);
/* The experiment's name. */
const char *policy_experiment_name(const policy_parse_t *pp);

/* ---- helpers shared by several policies (policies/policy_util.c) ---- */
/* Declare the arms listed in exp[key] (a JSON list of upstream names, at
 * least `min` of them), copying each name into names[i]. Returns the number
 * of arms, or -1 after policy_error (missing, not a list, too short, not a
 * string, unknown or repeated upstream). */
int policy_parse_arm_list(policy_parse_t *pp, const json_t *exp, const char *key, int min,
                          char names[][MM_NAME_MAX + 1]);

/* check_reward for a policy whose rewards have no declared model (ab's
 * "auto"; epsilon_greedy, ucb1, canary and shadow, which leave check_reward
 * NULL): any finite reward, and one that is exactly 0 or 1 is a Bernoulli
 * outcome, so the arm's successes and failures (DESIGN.md §6) count the
 * binary rewards of every policy but those declared continuous or Gaussian. */
int policy_check_undeclared_reward(double reward);

/* What a policy says of a reward (check_reward, or the default above). */
static inline int policy_check_reward(const policy_ops_t *ops, void *p, double reward)
{
    return ops->check_reward ? ops->check_reward(p, reward)
                             : policy_check_undeclared_reward(reward);
}

/* What a bandit learns from when its arms fail: each of an arm's errors
 * (arm_stats_t.errors: a 5xx answer, or no answer at all) counts as one
 * more reward of value r (`error_reward`) — r successes and 1 - r failures
 * for Bernoulli rewards — so an arm that fails earns less than one that
 * answers, though the application sends no feedback for a failed request.
 * Returns `in` itself when there is nothing to add (r is NaN: the
 * experiment's error_reward is null, errors are not rewards; or no arm has
 * an error), else fills out[0..n) and returns out. */
const arm_stats_t *policy_scored_stats(const arm_stats_t *in, size_t n, double r, arm_stats_t *out);
/* Read exp["error_reward"] into *out: absent 0, null NaN (errors are not
 * rewards), else a number in [lo, hi]. */
int policy_parse_error_reward(policy_parse_t *pp, const json_t *exp, double lo, double hi,
                              double *out);
/* A bandit's per-arm entry of describe(), begun: {"arm": name,
 * "feedback", "errors"} from the arm's statistics as the store has them
 * (not scored: what came back, apart). */
json_t *policy_bandit_arm(const char *name, const arm_stats_t *raw);
/* json_real(d), or JSON null when d is not finite (json_real refuses NaN
 * and infinities, and a key set to NULL would silently go missing). */
json_t *policy_json_real(double d);
/* Index drawn with probability weights[i] / sum(weights); weights >= 0, sum > 0. */
int policy_pick_weighted(const double *weights, size_t n, double u);
/* Sticky variant: the same key_hash always maps to the same arm for fixed weights. */
int policy_pick_sticky(const double *weights, size_t n, uint64_t key_hash);

#endif
