/* test_store.c — the memory store: what the router and the admin API rely on.
 *
 * Increments land in `merged` at once (nothing in `pending`: there is nothing
 * to write), every control change bumps the version, pause freezes what
 * policies see, reset forgets statistics and operator changes, a reload keeps
 * statistics unless the definition changed, and remembered request ids
 * resolve synchronously until their TTL or the map's cap removes them; the
 * same holds for per-request data (store_put_aux), which a rewrite replaces,
 * and store_add applies any delta, negative sums included. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "store.h"
#include "store_internal.h"

/* store_retain keeping the experiments named in a list. */
typedef struct {
    const char *const *names;
    size_t n;
} name_list_t;

static int in_list(void *arg, const char *name)
{
    const name_list_t *l = arg;
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->names[i], name) == 0) return 1;
    return 0;
}

#define RETAIN(s, names, n) store_retain((s), in_list, &(name_list_t){(names), (n)})

static const char *const ARMS[] = {"champion", "challenger"};

typedef struct {
    uv_loop_t loop;
    store_t *s;
} fixture_t;

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    uv_loop_init(&f->loop);
    cfg_store_t cfg = {.type = STORE_MEMORY};
    char err[256];
    f->s = store_create(&f->loop, &cfg, err, sizeof(err));
    if (f->s == NULL) return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    store_destroy(f->s);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    free(f);
    return 0;
}

static exp_control_t initial_weights(double a, double b)
{
    exp_control_t c;
    memset(&c, 0, sizeof(c));
    c.weights[0] = a;
    c.weights[1] = b;
    c.has_weights = 1;
    return c;
}

static exp_state_t *make_exp(store_t *s, const char *name)
{
    exp_control_t c = initial_weights(90, 10);
    exp_state_t *e = store_experiment(s, name, ARMS, 2, &c, 0);
    assert_non_null(e);
    return e;
}

static void test_kind_and_up(void **state)
{
    fixture_t *f = *state;
    assert_string_equal(store_kind(f->s), "memory");
    assert_int_equal(store_up(f->s), 1);
}

static void test_memory_control_is_known_at_once(void **state)
{
    fixture_t *f = *state;
    exp_state_t *e = make_exp(f->s, "recs");
    assert_int_equal(store_control_known(f->s, e), 1); /* nothing to wait for */
}

/* Rewards beyond +-1e100 are refused: the sums a whole fleet adds up can
 * then never overflow, where a check of one instance's view let two
 * instances each add a 1e154 (an infinite pooled sum of squares). */
static void test_a_reward_beyond_the_bound_is_refused(void **state)
{
    fixture_t *f = *state;
    exp_state_t *e = make_exp(f->s, "recs");
    assert_int_equal(store_reward(f->s, e, 0, 2.0, 0), 0);
    assert_int_equal(store_reward(f->s, e, 0, 1e300, 0), -1);
    assert_int_equal(store_reward(f->s, e, 1, 1e100, 0), 0); /* the bound itself counts */
    assert_int_equal(store_reward(f->s, e, 1, -1e100, 0), 0);
    assert_int_equal(store_reward(f->s, e, 1, 1.0000001e100, 0), -1);
    assert_int_equal(store_reward(f->s, e, 1, 1e154, 0), -1);
    assert_int_equal(store_reward(f->s, e, 1, NAN, 0), -1);
    assert_int_equal(store_reward(f->s, e, 1, -INFINITY, 0), -1);
    assert_int_equal(store_reward(f->s, e, 9, 1.0, 0), -1); /* no such arm */
    assert_int_equal(e->merged[0].feedback, 1);
    assert_true(e->merged[0].reward_sum == 2.0);
    assert_int_equal(e->merged[1].feedback, 2);
    assert_true(e->merged[1].reward_sq_sum == 2e200);
}

static void test_increments_show_in_merged_not_pending(void **state)
{
    fixture_t *f = *state;
    exp_state_t *e = make_exp(f->s, "recs");
    for (int i = 0; i < 1000; i++) store_pull(f->s, e, i % 4 == 0 ? 1 : 0);
    store_error(f->s, e, 1);
    store_error(f->s, e, 1);
    store_reward(f->s, e, 0, 1.0, 1);
    store_reward(f->s, e, 0, 0.25, 1);
    store_reward(f->s, e, 1, -2.5, 0);
    store_reward(f->s, e, 1, NAN, 0); /* not finite: ignored */
    store_pull(f->s, e, 7);           /* no such arm: ignored */

    assert_int_equal(e->merged[0].pulls, 750);
    assert_int_equal(e->merged[1].pulls, 250);
    assert_int_equal(e->merged[1].errors, 2);
    assert_int_equal(e->merged[0].feedback, 2);
    assert_true(e->merged[0].reward_sum == 1.25);
    assert_true(e->merged[0].reward_sq_sum == 1.0625);
    assert_true(e->merged[0].successes == 1.25);
    assert_true(e->merged[0].failures == 0.75);
    assert_int_equal(e->merged[1].feedback, 1);
    assert_true(e->merged[1].reward_sum == -2.5);
    assert_true(e->merged[1].successes == 0 && e->merged[1].failures == 0);
    for (int a = 0; a < 2; a++) assert_false(store_stats_nonzero(&e->pending[a]));
}

static void test_control_change_bumps_version(void **state)
{
    fixture_t *f = *state;
    exp_state_t *e = make_exp(f->s, "recs");
    uint64_t v0 = e->control.version;
    exp_control_t c = initial_weights(50, 50);
    store_set_control(f->s, e, &c);
    assert_int_equal(e->control.version, v0 + 1);
    assert_true(e->control.weights[0] == 50);
    c.state = EXP_PROMOTED;
    c.weights[0] = 0;
    c.weights[1] = 100;
    c.version = 999; /* the caller's version is ignored */
    store_set_control(f->s, e, &c);
    assert_int_equal(e->control.version, v0 + 2);
    assert_int_equal(e->control.state, EXP_PROMOTED);
    assert_int_equal(e->control_dirty, 0);
}

static void test_pause_freezes_policy_view(void **state)
{
    fixture_t *f = *state;
    exp_state_t *e = make_exp(f->s, "recs");
    for (int i = 0; i < 10; i++) store_pull(f->s, e, 0);
    exp_control_t c = e->control;
    c.state = EXP_PAUSED;
    store_set_control(f->s, e, &c);
    for (int i = 0; i < 5; i++) store_pull(f->s, e, 0);
    assert_int_equal(e->frozen[0].pulls, 10);
    assert_int_equal(e->merged[0].pulls, 15);
    /* Pausing again (a weight change while paused) keeps the first snapshot. */
    c.weights[0] = 70;
    store_set_control(f->s, e, &c);
    assert_int_equal(e->frozen[0].pulls, 10);
}

static void test_reset_forgets_statistics_and_operator_changes(void **state)
{
    fixture_t *f = *state;
    exp_state_t *e = make_exp(f->s, "recs");
    store_pull(f->s, e, 0);
    store_reward(f->s, e, 1, 1, 1);
    exp_control_t c = initial_weights(0, 100);
    c.state = EXP_PROMOTED;
    store_set_control(f->s, e, &c);
    uint64_t v = e->control.version;
    assert_int_equal(store_resets(e), 0);

    store_reset(f->s, e);
    assert_int_equal(store_resets(e), 1);
    assert_false(store_stats_nonzero(&e->merged[0]));
    assert_false(store_stats_nonzero(&e->merged[1]));
    assert_int_equal(e->control.state, EXP_RUNNING);
    assert_true(e->control.weights[0] == 90 && e->control.weights[1] == 10);
    assert_int_equal(e->control.version, v + 1);
}

static void test_reload_keeps_state_unless_redefined(void **state)
{
    fixture_t *f = *state;
    exp_state_t *e = make_exp(f->s, "recs");
    store_pull(f->s, e, 1);
    exp_control_t op = initial_weights(20, 80);
    store_set_control(f->s, e, &op);
    uint64_t v = e->control.version;

    exp_control_t init = initial_weights(90, 10);
    exp_state_t *same = store_experiment(f->s, "recs", ARMS, 2, &init, 0);
    assert_ptr_equal(same, e);
    assert_int_equal(e->merged[1].pulls, 1);
    assert_true(e->control.weights[1] == 80); /* the operator's change survives */
    assert_int_equal(e->control.version, v);

    exp_control_t init2 = initial_weights(60, 40);
    exp_state_t *re = store_experiment(f->s, "recs", ARMS, 2, &init2, 1);
    assert_ptr_equal(re, e);
    assert_int_equal(e->merged[1].pulls, 1);  /* statistics stay */
    assert_true(e->control.weights[0] == 60); /* control back to the new config */
    assert_int_equal(e->control.version, v + 1);
    assert_true(e->initial_control.weights[0] == 60);
}

static void test_new_arm_list_keeps_stats_by_name(void **state)
{
    fixture_t *f = *state;
    exp_state_t *e = make_exp(f->s, "recs");
    store_pull(f->s, e, 1);
    store_pull(f->s, e, 1);
    const char *const arms3[] = {"champion", "third", "challenger"};
    exp_control_t c = initial_weights(1, 1);
    c.weights[2] = 1;
    exp_state_t *e2 = store_experiment(f->s, "recs", arms3, 3, &c, 0);
    assert_ptr_equal(e2, e);
    assert_int_equal(e->n_arms, 3);
    assert_string_equal(e->arm_names[2], "challenger");
    assert_int_equal(e->merged[2].pulls, 2);
    assert_int_equal(e->merged[1].pulls, 0);
    assert_true(e->control.weights[2] == 1); /* other arms: control from the config */
}

/* ---- pooled answer statistics ---- */

static void test_answers_count_answers_errors_and_latencies(void **state)
{
    fixture_t *f = *state;
    exp_state_t *e = make_exp(f->s, "recs");
    store_answer(f->s, e, 1, 200, 10000);
    store_answer(f->s, e, 1, 200, 10100); /* the same bucket (+-3 %) */
    store_answer(f->s, e, 1, 404, 50000); /* a 4xx is an answer, not an error */
    store_answer(f->s, e, 1, 503, 20000);
    store_answer(f->s, e, 1, 0, 2000000); /* no answer: an error without a latency */
    store_answer(f->s, e, 7, 200, 1);     /* out of range: ignored */
    store_answer(f->s, e, -1, 200, 1);
    const answer_stats_t *a = &e->answers[1];
    assert_int_equal(a->answers, 5);
    assert_int_equal(a->errors, 2);
    assert_int_equal(a->samples, 4);
    assert_int_equal(a->hist[lathist_index(10000)], 2);
    assert_int_equal(a->hist[lathist_index(20000)], 1);
    assert_int_equal(a->hist[lathist_index(2000000)], 0);
    assert_int_equal(e->answers[0].answers, 0);
    /* The memory store's counts are the global ones: nothing is local. */
    assert_int_equal(e->answers_local[1].answers, 0);
    /* Counted while paused too (the admin latency goes on; a canary skips
     * what was answered while paused itself). */
    exp_control_t c = e->control;
    c.state = EXP_PAUSED;
    store_set_control(f->s, e, &c);
    store_answer(f->s, e, 1, 200, 10000);
    assert_int_equal(e->answers[1].answers, 6);
}

static void test_run_epoch_counts_returns_to_running(void **state)
{
    fixture_t *f = *state;
    exp_state_t *e = make_exp(f->s, "recs");
    uint64_t r0 = e->run_epoch;
    exp_control_t c = e->control;
    c.weights[0] = 50; /* running -> running */
    store_set_control(f->s, e, &c);
    assert_int_equal(e->run_epoch, r0);
    c.state = EXP_PAUSED;
    store_set_control(f->s, e, &c);
    assert_int_equal(e->run_epoch, r0);
    c.state = EXP_RUNNING; /* resume */
    store_set_control(f->s, e, &c);
    assert_int_equal(e->run_epoch, r0 + 1);
    c.state = EXP_PROMOTED;
    store_set_control(f->s, e, &c);
    store_reset(f->s, e); /* back to the config's running state */
    assert_int_equal(e->run_epoch, r0 + 2);
}

static void test_reset_forgets_answers(void **state)
{
    fixture_t *f = *state;
    exp_state_t *e = make_exp(f->s, "recs");
    for (int i = 0; i < 10; i++) store_answer(f->s, e, 0, 500, 1000);
    store_reset(f->s, e);
    assert_int_equal(e->answers[0].answers, 0);
    assert_int_equal(e->answers[0].errors, 0);
    assert_int_equal(e->answers[0].samples, 0);
    assert_int_equal(e->answers[0].hist[lathist_index(1000)], 0);
    store_answer(f->s, e, 0, 200, 1000);
    assert_int_equal(e->answers[0].answers, 1);
}

static void test_new_arm_list_keeps_answers_by_name(void **state)
{
    fixture_t *f = *state;
    exp_state_t *e = make_exp(f->s, "recs");
    for (int i = 0; i < 3; i++) store_answer(f->s, e, 1, 200, 5000);
    const char *const arms3[] = {"champion", "third", "challenger"};
    exp_control_t c = initial_weights(1, 1);
    c.weights[2] = 1;
    assert_ptr_equal(store_experiment(f->s, "recs", arms3, 3, &c, 0), e);
    assert_int_equal(e->answers[2].answers, 3);
    assert_int_equal(e->answers[2].hist[lathist_index(5000)], 3);
    assert_int_equal(e->answers[1].answers, 0);
}

static void test_invalid_experiments_refused(void **state)
{
    fixture_t *f = *state;
    exp_control_t c = initial_weights(1, 1);
    const char *const bad[] = {"champion", "no spaces"};
    assert_null(store_experiment(f->s, "recs", bad, 2, &c, 0));
    assert_null(store_experiment(f->s, "", ARMS, 2, &c, 0));
    assert_null(store_experiment(f->s, "recs", ARMS, 0, &c, 0));
    assert_null(store_experiment(f->s, "recs", ARMS, MM_MAX_ARMS + 1, &c, 0));
}

static void test_retain_forgets_removed(void **state)
{
    fixture_t *f = *state;
    exp_state_t *a = make_exp(f->s, "a");
    make_exp(f->s, "b");
    store_pull(f->s, a, 0);
    const char *const keep[] = {"a"};
    RETAIN(f->s, keep, 1);
    assert_int_equal(f->s->n_exps, 1);
    exp_control_t c = initial_weights(1, 1);
    exp_state_t *b = store_experiment(f->s, "b", ARMS, 2, &c, 0);
    assert_int_equal(b->merged[0].pulls, 0); /* a fresh state */
    assert_ptr_equal(store_experiment(f->s, "a", ARMS, 2, &c, 0), a);
    assert_int_equal(a->merged[0].pulls, 1);
}

/* Thousands of experiments (a config of that size is supported): each is
 * found by name, and a retain keeping every other one, named in another
 * order, keeps exactly those with their statistics; the ones it drops start
 * afresh. Correctness only: speed is measured (bench/scale.py). */
#define MANY_EXPS 3000

static void test_thousands_of_experiments_are_found_and_retained_exactly(void **state)
{
    fixture_t *f = *state;
    static char names[MANY_EXPS][16];
    static exp_state_t *e[MANY_EXPS];
    for (int i = 0; i < MANY_EXPS; i++) {
        snprintf(names[i], sizeof(names[i]), "exp-%d", i);
        e[i] = make_exp(f->s, names[i]);
        for (int k = 0; k <= i % 5; k++) store_pull(f->s, e[i], 0);
    }
    assert_int_equal(f->s->n_exps, MANY_EXPS);
    exp_control_t c = initial_weights(90, 10);
    for (int i = 0; i < MANY_EXPS; i++)
        assert_ptr_equal(store_experiment(f->s, names[i], ARMS, 2, &c, 0), e[i]);
    assert_int_equal(f->s->n_exps, MANY_EXPS);

    const char **keep = calloc(MANY_EXPS / 2, sizeof(*keep));
    assert_non_null(keep);
    for (int k = 0; k < MANY_EXPS / 2; k++) keep[k] = names[MANY_EXPS - 1 - 2 * k]; /* odd ones */
    RETAIN(f->s, keep, MANY_EXPS / 2);
    free(keep);
    assert_int_equal(f->s->n_exps, MANY_EXPS / 2);
    for (size_t j = 0; j < f->s->n_exps; j++) /* the list holds exactly the kept ones */
        assert_int_equal(atoi(f->s->exps[j]->pub.name + 4) % 2, 1);
    for (int i = 1; i < MANY_EXPS; i += 2) {
        assert_ptr_equal(store_experiment(f->s, names[i], ARMS, 2, &c, 0), e[i]);
        assert_int_equal(e[i]->merged[0].pulls, (uint64_t)(i % 5 + 1));
    }
    for (int i = 0; i < MANY_EXPS; i += 2) {
        exp_state_t *again = store_experiment(f->s, names[i], ARMS, 2, &c, 0);
        assert_non_null(again);
        assert_string_equal(again->name, names[i]);
        assert_int_equal(again->merged[0].pulls, 0);
    }
    assert_int_equal(f->s->n_exps, MANY_EXPS);
    for (int i = 1; i < MANY_EXPS; i += 2) /* moved by the retain, still found */
        assert_ptr_equal(store_experiment(f->s, names[i], ARMS, 2, &c, 0), e[i]);
}

/* A reload removed thousands of experiments while the old router still held
 * them: each stays valid until released, in whatever order the router lets
 * go, and the last release leaves nothing detached (ASan checks the frees). */
static void test_thousands_of_held_experiments_are_freed_as_released(void **state)
{
    fixture_t *f = *state;
    static exp_state_t *e[MANY_EXPS];
    for (int i = 0; i < MANY_EXPS; i++) {
        char name[16];
        snprintf(name, sizeof(name), "exp-%d", i);
        e[i] = make_exp(f->s, name);
        store_hold(e[i]);
    }
    RETAIN(f->s, NULL, 0);
    assert_int_equal(f->s->n_exps, 0);
    /* The middle third first, then the rest from both ends. */
    for (int i = MANY_EXPS / 3; i < 2 * MANY_EXPS / 3; i++) store_release(f->s, e[i]);
    for (int i = 0; i < MANY_EXPS / 3; i++) {
        store_pull(f->s, e[MANY_EXPS - 1 - i], 0); /* still valid while held */
        store_release(f->s, e[i]);
        store_release(f->s, e[MANY_EXPS - 1 - i]);
    }
    assert_null(f->s->detached);
}

/* Another arm list remaps the state in place and bumps its layout, so a
 * router built on the old layout finds its arms by name. */
static void test_new_arm_list_bumps_layout_and_arms_are_found_by_name(void **state)
{
    fixture_t *f = *state;
    exp_state_t *a = make_exp(f->s, "a");
    uint32_t before = a->layout;
    exp_control_t c = initial_weights(1, 1);
    assert_ptr_equal(store_experiment(f->s, "a", ARMS, 2, &c, 0), a);
    assert_int_equal(a->layout, before); /* same arms: nothing moved */
    const char *const swapped[] = {"challenger", "champion"};
    assert_ptr_equal(store_experiment(f->s, "a", swapped, 2, &c, 0), a);
    assert_int_not_equal(a->layout, before);
    assert_int_equal(store_arm_index(a, "champion"), 1);
    assert_int_equal(store_arm_index(a, "challenger"), 0);
    assert_int_equal(store_arm_index(a, "gone"), MM_MAX_ARMS);
    store_pull(f->s, a, MM_MAX_ARMS); /* ignored */
    assert_int_equal(a->merged[0].pulls + a->merged[1].pulls, 0);
}

/* A reload removed "a" while a request on the old router still counts into
 * it: the state stays valid (and out of the list, so a new "a" starts at
 * zero) until the old router releases it. */
static void test_retain_keeps_held_experiment_until_released(void **state)
{
    fixture_t *f = *state;
    exp_state_t *a = make_exp(f->s, "a");
    store_hold(a);
    store_pull(f->s, a, 0);
    RETAIN(f->s, NULL, 0);
    assert_int_equal(f->s->n_exps, 0);
    assert_ptr_equal(f->s->detached, (store_exp_t *)a);
    store_pull(f->s, a, 1); /* the in-flight request finishes */
    assert_int_equal(a->merged[0].pulls, 1);
    assert_int_equal(a->merged[1].pulls, 1);
    exp_control_t c = initial_weights(1, 1);
    exp_state_t *again = store_experiment(f->s, "a", ARMS, 2, &c, 0);
    assert_ptr_not_equal(again, a);
    assert_int_equal(again->merged[0].pulls, 0);
    store_release(f->s, a); /* freed here: ASan's leak check would see it otherwise */
    assert_null(f->s->detached);
    store_hold(again); /* held and kept: release frees nothing */
    const char *const keep[] = {"a"};
    RETAIN(f->s, keep, 1);
    store_release(f->s, again);
    assert_int_equal(f->s->n_exps, 1);
    assert_ptr_equal(f->s->exps[0], (store_exp_t *)again);
}

typedef struct {
    int calls;
    int found;
    store_reqinfo_t info;
} lookup_result_t;

static void on_lookup(void *arg, int found, const store_reqinfo_t *info)
{
    lookup_result_t *r = arg;
    r->calls++;
    r->found = found;
    if (found) r->info = *info;
}

static lookup_result_t lookup(store_t *s, const char *id)
{
    lookup_result_t r = {0};
    store_lookup(s, (mm_str_t){id, strlen(id)}, on_lookup, &r);
    assert_int_equal(r.calls, 1); /* synchronous with the memory store */
    return r;
}

static void test_remember_then_lookup(void **state)
{
    fixture_t *f = *state;
    store_remember(f->s, MM_STR("0123456789abcdef0123456789abcdef"), "recs", "challenger", 60);
    store_remember(f->s, MM_STR("client-id.7"), "ranker", "champion", 60);
    lookup_result_t r = lookup(f->s, "0123456789abcdef0123456789abcdef");
    assert_int_equal(r.found, 1);
    assert_string_equal(r.info.experiment, "recs");
    assert_string_equal(r.info.arm, "challenger");
    r = lookup(f->s, "client-id.7");
    assert_int_equal(r.found, 1);
    assert_string_equal(r.info.experiment, "ranker");
    assert_string_equal(r.info.arm, "champion");
    assert_int_equal(lookup(f->s, "unknown").found, 0);
    assert_int_equal(lookup(f->s, "bad id").found, 0);
    assert_int_equal(lookup(f->s, "").found, 0);

    /* The same id again (a client retry): the newest mapping wins. */
    store_remember(f->s, MM_STR("client-id.7"), "ranker", "challenger", 60);
    assert_string_equal(lookup(f->s, "client-id.7").info.arm, "challenger");

    /* 128 characters is the longest valid id. */
    char id[MM_REQID_MAX + 2];
    memset(id, 'x', MM_REQID_MAX);
    id[MM_REQID_MAX] = '\0';
    store_remember(f->s, (mm_str_t){id, MM_REQID_MAX}, "recs", "champion", 60);
    assert_int_equal(lookup(f->s, id).found, 1);
    id[MM_REQID_MAX] = 'x';
    id[MM_REQID_MAX + 1] = '\0';
    store_remember(f->s, (mm_str_t){id, MM_REQID_MAX + 1}, "recs", "champion", 60);
    assert_int_equal(lookup(f->s, id).found, 0);
}

/* What the proxy does for a routed request, in one call. */
static void remember_arm(store_t *s, exp_state_t *e, int arm, mm_str_t id)
{
    store_remember_key(s, e, arm, id, store_req_key(s, id), 60);
}

static void test_remember_by_arm_index_follows_the_arm_list(void **state)
{
    fixture_t *f = *state;
    exp_state_t *e = make_exp(f->s, "recs");
    remember_arm(f->s, e, 1, MM_STR("by-index-1"));
    remember_arm(f->s, e, 0, MM_STR("by-index-0"));
    remember_arm(f->s, e, STORE_ARM_INTERLEAVE, MM_STR("merged"));
    remember_arm(f->s, e, 2, MM_STR("no-such-arm")); /* ignored */
    lookup_result_t r = lookup(f->s, "by-index-1");
    assert_string_equal(r.info.experiment, "recs");
    assert_string_equal(r.info.arm, "challenger");
    assert_string_equal(lookup(f->s, "by-index-0").info.arm, "champion");
    assert_string_equal(lookup(f->s, "merged").info.arm, "interleave");
    assert_int_equal(lookup(f->s, "no-such-arm").found, 0);
    /* A reload with another arm list: index 1 is now "third", not the
     * cached pair of the old arm 1. */
    const char *const arms3[] = {"champion", "third", "challenger"};
    exp_control_t c = initial_weights(1, 1);
    assert_ptr_equal(store_experiment(f->s, "recs", arms3, 3, &c, 0), e);
    remember_arm(f->s, e, 1, MM_STR("after-reload"));
    assert_string_equal(lookup(f->s, "after-reload").info.arm, "third");
}

static void test_remembered_ids_expire(void **state)
{
    fixture_t *f = *state;
    store_remember(f->s, MM_STR("short"), "recs", "champion", 1);
    store_remember(f->s, MM_STR("long"), "recs", "champion", 60);
    assert_int_equal(lookup(f->s, "short").found, 1);
    usleep(1100 * 1000);
    uv_update_time(&f->loop); /* as the next loop iteration would */
    assert_int_equal(lookup(f->s, "short").found, 0);
    assert_int_equal(lookup(f->s, "long").found, 1);
    /* The next insert prunes the expired head. */
    store_remember(f->s, MM_STR("new"), "recs", "champion", 60);
    store_stats_t st;
    store_get_stats(f->s, &st);
    assert_int_equal(st.req_entries, 2);
}

static void test_map_cap_evicts_oldest(void **state)
{
    fixture_t *f = *state;
    f->s->req_cap = 1000;
    char id[32];
    for (int i = 0; i < 1500; i++) {
        snprintf(id, sizeof(id), "id-%d", i);
        store_remember(f->s, (mm_str_t){id, strlen(id)}, "recs", i % 2 ? "champion" : "b", 60);
    }
    store_stats_t st;
    store_get_stats(f->s, &st);
    assert_int_equal(st.req_entries, 1000);
    assert_int_equal(st.req_evicted, 500);
    assert_int_equal(lookup(f->s, "id-499").found, 0);
    lookup_result_t r = lookup(f->s, "id-500");
    assert_int_equal(r.found, 1);
    assert_string_equal(r.info.arm, "b");
    assert_string_equal(lookup(f->s, "id-1499").info.arm, "champion");
}

/* Entries live in a queue of blocks (store_internal.h): evicting the oldest
 * while adding must recycle blocks, keep every live id findable with its own
 * arm, and keep the storage bounded by what is live. */
static void test_evictions_recycle_entry_blocks(void **state)
{
    fixture_t *f = *state;
    const size_t cap = 5000;
    f->s->req_cap = cap;
    char id[MM_REQID_MAX + 1];
    const int n = 200000;
    for (int i = 0; i < n; i++) {
        int len = snprintf(id, sizeof(id), "%d-", i);
        int want = 1 + (i * 37) % MM_REQID_MAX; /* 1 to 128 characters */
        while (len < want) id[len++] = 'a' + (char)(i % 26);
        id[want < len ? len : want] = '\0';
        store_remember(f->s, (mm_str_t){id, strlen(id)}, "recs", i % 3 ? "champion" : "b", 60);
    }
    store_stats_t st;
    store_get_stats(f->s, &st);
    assert_int_equal(st.req_entries, cap);
    size_t blocks = 0;
    for (const req_block_t *b = f->s->blk_head; b != NULL; b = b->next) blocks++;
    /* live entries take at most cap * (header + 128) bytes, plus a partly used block at each end */
    assert_true(blocks <= cap * (sizeof(req_ent_t) + MM_REQID_MAX + 8) / REQ_BLOCK_BYTES + 2);
    for (int i = n - (int)cap - 3; i < n; i++) {
        int len = snprintf(id, sizeof(id), "%d-", i);
        int want = 1 + (i * 37) % MM_REQID_MAX;
        while (len < want) id[len++] = 'a' + (char)(i % 26);
        id[want < len ? len : want] = '\0';
        lookup_result_t r = lookup(f->s, id);
        assert_int_equal(r.found, i >= n - (int)cap);
        if (r.found) assert_string_equal(r.info.arm, i % 3 ? "champion" : "b");
    }
}

static void test_many_ids_grow_the_table(void **state)
{
    fixture_t *f = *state;
    char id[40];
    for (int i = 0; i < 100000; i++) {
        snprintf(id, sizeof(id), "%032x", i * 2654435761u);
        store_remember(f->s, (mm_str_t){id, strlen(id)}, "recs", "champion", 60);
    }
    assert_true(f->s->n_buckets >= 65536);
    for (int i = 0; i < 100000; i += 997) {
        snprintf(id, sizeof(id), "%032x", i * 2654435761u);
        assert_int_equal(lookup(f->s, id).found, 1);
    }
}

static void on_done(void *arg)
{
    (*(int *)arg)++;
}

static void test_shutdown_calls_done(void **state)
{
    fixture_t *f = *state;
    int done = 0;
    store_shutdown(f->s, 100, on_done, &done);
    assert_int_equal(done, 1);
}

static void test_add_applies_arbitrary_deltas(void **state)
{
    fixture_t *f = *state;
    exp_state_t *e = make_exp(f->s, "recs");
    arm_stats_t d = {.pulls = 2,
                     .feedback = 1,
                     .errors = 3,
                     .reward_sum = 1.5,
                     .reward_sq_sum = 2.25,
                     .successes = 1,
                     .failures = 0};
    store_add(f->s, e, 1, &d);
    /* An interleaved impression's outcome moving from a win to a tie. */
    arm_stats_t move = {.successes = -1, .failures = 1};
    store_add(f->s, e, 1, &move);
    assert_int_equal(e->merged[1].pulls, 2);
    assert_int_equal(e->merged[1].feedback, 1);
    assert_int_equal(e->merged[1].errors, 3);
    assert_true(e->merged[1].reward_sum == 1.5);
    assert_true(e->merged[1].reward_sq_sum == 2.25);
    assert_true(e->merged[1].successes == 0);
    assert_true(e->merged[1].failures == 1);
    assert_false(store_stats_nonzero(&e->merged[0]));
    assert_false(store_stats_nonzero(&e->pending[1])); /* nothing to write */
    /* Out-of-range arms and non-finite deltas are ignored. */
    store_add(f->s, e, 2, &d);
    store_add(f->s, e, -1, &d);
    arm_stats_t bad = {.pulls = 5, .reward_sum = NAN};
    store_add(f->s, e, 0, &bad);
    store_add(f->s, e, 0, NULL);
    assert_false(store_stats_nonzero(&e->merged[0]));
}

typedef struct {
    int calls;
    int found;
    char data[256];
    size_t n;
} aux_result_t;

static void on_aux(void *arg, int found, const char *data, size_t n)
{
    aux_result_t *r = arg;
    r->calls++;
    r->found = found;
    r->n = n;
    if (found) {
        assert_true(n < sizeof(r->data));
        memcpy(r->data, data, n);
        r->data[n] = '\0';
    }
}

static aux_result_t get_aux(store_t *s, const char *id)
{
    aux_result_t r = {0};
    store_get_aux(s, (mm_str_t){id, strlen(id)}, on_aux, &r);
    assert_int_equal(r.calls, 1); /* synchronous with the memory store */
    return r;
}

static void put_aux(store_t *s, const char *id, const char *data, int ttl_s)
{
    store_put_aux(s, (mm_str_t){id, strlen(id)}, data, strlen(data), ttl_s);
}

static void test_aux_put_get_replace(void **state)
{
    fixture_t *f = *state;
    put_aux(f->s, "req-1", "{\"t\":\"ab\"}", 60);
    put_aux(f->s, "req-2", "", 60); /* empty data is data */
    aux_result_t r = get_aux(f->s, "req-1");
    assert_int_equal(r.found, 1);
    assert_string_equal(r.data, "{\"t\":\"ab\"}");
    r = get_aux(f->s, "req-2");
    assert_int_equal(r.found, 1);
    assert_int_equal(r.n, 0);
    assert_int_equal(get_aux(f->s, "req-3").found, 0);
    assert_int_equal(get_aux(f->s, "bad id").found, 0);

    /* A rewrite (a click) replaces the data. */
    put_aux(f->s, "req-1", "{\"t\":\"ab\",\"c\":\"01\"}", 60);
    assert_string_equal(get_aux(f->s, "req-1").data, "{\"t\":\"ab\",\"c\":\"01\"}");
    store_stats_t st;
    store_get_stats(f->s, &st);
    assert_int_equal(st.aux_entries, 2);
    assert_int_equal(st.aux_bytes, strlen("req-1{\"t\":\"ab\",\"c\":\"01\"}") + strlen("req-2"));

    /* Invalid ids, no TTL and oversized data are not kept. */
    put_aux(f->s, "bad id", "x", 60);
    put_aux(f->s, "req-4", "x", 0);
    char *big = malloc(STORE_AUX_MAX + 1);
    memset(big, 'x', STORE_AUX_MAX + 1);
    store_put_aux(f->s, MM_STR("req-5"), big, STORE_AUX_MAX + 1, 60);
    free(big);
    store_get_stats(f->s, &st);
    assert_int_equal(st.aux_entries, 2);
    assert_int_equal(st.aux_dropped, 1);
    assert_int_equal(get_aux(f->s, "req-5").found, 0);
}

static void test_aux_expires(void **state)
{
    fixture_t *f = *state;
    put_aux(f->s, "short", "s", 1);
    put_aux(f->s, "long", "l", 60);
    assert_int_equal(get_aux(f->s, "short").found, 1);
    usleep(1100 * 1000);
    assert_int_equal(get_aux(f->s, "short").found, 0);
    assert_int_equal(get_aux(f->s, "long").found, 1);
    put_aux(f->s, "new", "n", 60); /* prunes the expired head */
    store_stats_t st;
    store_get_stats(f->s, &st);
    assert_int_equal(st.aux_entries, 2);
    /* A rewrite moves the entry to the young end with a fresh TTL. */
    put_aux(f->s, "long", "l2", 1);
    usleep(1100 * 1000);
    assert_int_equal(get_aux(f->s, "long").found, 0);
    assert_int_equal(get_aux(f->s, "new").found, 1);
}

static void test_aux_map_is_bounded(void **state)
{
    fixture_t *f = *state;
    f->s->aux_cap = 100;
    char id[32], data[64];
    for (int i = 0; i < 150; i++) {
        snprintf(id, sizeof(id), "id-%d", i);
        snprintf(data, sizeof(data), "data-%d", i);
        put_aux(f->s, id, data, 60);
    }
    store_stats_t st;
    store_get_stats(f->s, &st);
    assert_int_equal(st.aux_entries, 100);
    assert_int_equal(st.aux_evicted, 50);
    assert_int_equal(get_aux(f->s, "id-49").found, 0);
    assert_string_equal(get_aux(f->s, "id-50").data, "data-50");
    /* Rewriting the oldest makes it the youngest: id-51 goes first now. */
    put_aux(f->s, "id-50", "again", 60);
    put_aux(f->s, "id-150", "x", 60);
    assert_string_equal(get_aux(f->s, "id-50").data, "again");
    assert_int_equal(get_aux(f->s, "id-51").found, 0);

    /* The byte bound: each entry here is 5 + 100 bytes. */
    f->s->aux_cap = 1000000;
    f->s->aux_bytes_max = 10 * 105;
    char payload[101];
    memset(payload, 'p', 100);
    payload[100] = '\0';
    for (int i = 0; i < 20; i++) {
        snprintf(id, sizeof(id), "b-%03d", i);
        put_aux(f->s, id, payload, 60);
    }
    store_get_stats(f->s, &st);
    assert_int_equal(st.aux_entries, 10);
    assert_true(st.aux_bytes <= 10 * 105);
    assert_int_equal(get_aux(f->s, "b-009").found, 0);
    assert_int_equal(get_aux(f->s, "b-010").found, 1);
}

static void test_aux_many_entries_grow_the_table(void **state)
{
    fixture_t *f = *state;
    char id[40];
    for (int i = 0; i < 50000; i++) {
        snprintf(id, sizeof(id), "%032x", i * 2654435761u);
        put_aux(f->s, id, id, 60);
    }
    assert_true(f->s->aux_n_buckets >= 32768);
    for (int i = 0; i < 50000; i += 997) {
        snprintf(id, sizeof(id), "%032x", i * 2654435761u);
        assert_string_equal(get_aux(f->s, id).data, id);
    }
}

static void on_msg(void *arg, store_msg_t *m)
{
    (void)arg;
    (void)m;
}

/* The memory store keeps the subscription for a reload that moves it to
 * Redis (test_store_redis); a second one is refused, as with Redis. */
static void test_stream_waits_for_redis(void **state)
{
    fixture_t *f = *state;
    assert_int_equal(store_stream_subscribe(f->s, on_msg, NULL, NULL), 0);
    assert_int_equal(store_stream_subscribe(f->s, on_msg, NULL, NULL), -1);
    assert_int_equal(store_stream_subscribe(f->s, NULL, NULL, NULL), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_kind_and_up, setup, teardown),
        cmocka_unit_test_setup_teardown(test_memory_control_is_known_at_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_reward_beyond_the_bound_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_increments_show_in_merged_not_pending, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_control_change_bumps_version, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pause_freezes_policy_view, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reset_forgets_statistics_and_operator_changes, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_reload_keeps_state_unless_redefined, setup, teardown),
        cmocka_unit_test_setup_teardown(test_new_arm_list_keeps_stats_by_name, setup, teardown),
        cmocka_unit_test_setup_teardown(test_answers_count_answers_errors_and_latencies, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_run_epoch_counts_returns_to_running, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reset_forgets_answers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_new_arm_list_keeps_answers_by_name, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invalid_experiments_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retain_forgets_removed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_new_arm_list_bumps_layout_and_arms_are_found_by_name,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_thousands_of_experiments_are_found_and_retained_exactly, setup, teardown),
        cmocka_unit_test_setup_teardown(test_thousands_of_held_experiments_are_freed_as_released,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_retain_keeps_held_experiment_until_released, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_remember_then_lookup, setup, teardown),
        cmocka_unit_test_setup_teardown(test_remember_by_arm_index_follows_the_arm_list, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_remembered_ids_expire, setup, teardown),
        cmocka_unit_test_setup_teardown(test_map_cap_evicts_oldest, setup, teardown),
        cmocka_unit_test_setup_teardown(test_evictions_recycle_entry_blocks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_ids_grow_the_table, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shutdown_calls_done, setup, teardown),
        cmocka_unit_test_setup_teardown(test_add_applies_arbitrary_deltas, setup, teardown),
        cmocka_unit_test_setup_teardown(test_aux_put_get_replace, setup, teardown),
        cmocka_unit_test_setup_teardown(test_aux_expires, setup, teardown),
        cmocka_unit_test_setup_teardown(test_aux_map_is_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_aux_many_entries_grow_the_table, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_waits_for_redis, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
