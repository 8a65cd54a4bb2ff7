/* test_simulate.c — the --compare-split rule of `modelmux-bench simulate`
 * (bench/simulate.c): what the bandit run and the split run are compared
 * over.
 *
 * Regret grows with every rewarded answer, so two runs are compared only
 * over what both measured: each run's cumulative regret after its first n
 * rewarded answers, n the smaller of the two counts. A run cut short (a
 * slower target under --duration, errors, Ctrl-C) must not look cheaper for
 * having measured less, and a run that rewarded nothing leaves nothing to
 * compare. Runs are built by hand here: no network. The bench's sources are
 * not in a library, so the files under test are compiled in here. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../bench/bench_client.c"
#include "../../bench/simulate.c"

/* Doubles within 1e-12 (cmocka's float assert rounds to float). */
#define assert_near(a, b) assert_true(fabs((a) - (b)) < 1e-12)

/* Two arms: "bad" (p 0.02) and "good" (p 0.10, the best): serving bad
 * costs 0.08. */
static sim_opts_t opts(uint64_t requests)
{
    sim_opts_t o;
    memset(&o, 0, sizeof(o));
    snprintf(o.arms[0].name, sizeof(o.arms[0].name), "bad");
    o.arms[0].mean = 0.02;
    snprintf(o.arms[1].name, sizeof(o.arms[1].name), "good");
    o.arms[1].mean = 0.10;
    o.n_arms = 2;
    o.best = 1;
    o.requests = requests;
    return o;
}

/* A run from its rows, one character each: 'b' bad served, 'g' good served,
 * 'f' failed or not rewarded (-1), 'u' an arm without a rate (-2). */
static sim_result_t run_of(const sim_opts_t *o, const char *rows)
{
    sim_result_t r;
    memset(&r, 0, sizeof(r));
    r.rows = strlen(rows);
    r.cum_regret = calloc(r.rows + 1, sizeof(double));
    r.arm_of = calloc(r.rows + 1, 1);
    assert_non_null(r.cum_regret);
    assert_non_null(r.arm_of);
    for (size_t k = 0; k < r.rows; k++) {
        signed char a = rows[k] == 'b' ? 0 : rows[k] == 'g' ? 1 : rows[k] == 'u' ? -2 : -1;
        if (a >= 0) {
            r.served[a]++;
            r.regret += o->arms[o->best].mean - o->arms[a].mean;
        }
        r.arm_of[k] = a;
        r.cum_regret[k] = r.regret;
    }
    return r;
}

/* compare_runs over a bandit run and a split run given by their rows. */
static int compare_rows(uint64_t requests, const char *bandit, const char *split, sim_compare_t *c)
{
    sim_opts_t o = opts(requests);
    sim_result_t a = run_of(&o, bandit), b = run_of(&o, split);
    int rc = compare_runs(&o, &a, &b, c);
    result_free(&a);
    result_free(&b);
    return rc;
}

/* The runs compare over their first n rewarded answers, with these
 * regrets. */
static void assert_compared(uint64_t requests, const char *bandit, const char *split, uint64_t n,
                            double bandit_regret, double split_regret)
{
    sim_compare_t c;
    assert_int_equal(compare_rows(requests, bandit, split, &c), 0);
    assert_int_equal(c.n, n);
    assert_int_equal(c.partial, n < requests);
    assert_near(c.bandit, bandit_regret);
    assert_near(c.split, split_regret);
}

static void test_equal_runs_compare_their_totals(void **state)
{
    (void)state;
    assert_compared(6, "bggggg", "bgbgbg", 6, 0.08, 3 * 0.08);
}

static void test_a_shorter_run_is_compared_at_its_own_length(void **state)
{
    (void)state;
    /* The bandit run measured 3 answers (a slow target under --duration),
     * the split 8: their totals (0.16 vs 0.32) would call the bandit twice
     * as good; over the first 3 of each it was no better. */
    assert_compared(8, "bbg", "bbgbgbgb", 3, 0.16, 0.16);
    /* and the other way round: an interrupted split run */
    assert_compared(8, "gbgbgbgb", "bbg", 3, 0.08, 0.16);
}

static void test_unrewarded_rows_are_not_counted(void **state)
{
    (void)state;
    /* Errors and unrated arms neither count towards n nor add regret: the
     * n-th rewarded answer of a run is found past them. */
    assert_compared(6, "ffbufg", "bbbfff", 2, 0.08, 0.16);
}

static void test_a_run_that_rewarded_nothing_leaves_nothing_to_compare(void **state)
{
    (void)state;
    sim_compare_t c;
    assert_int_equal(compare_rows(4, "bggg", "ffff", &c), -1); /* the split target unreachable */
    assert_int_equal(compare_rows(4, "ffuf", "bggg", &c), -1); /* the bandit's, wrong arms */
    assert_int_equal(compare_rows(4, "bggg", "", &c), -1);     /* Ctrl-C before its first answer */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_equal_runs_compare_their_totals),
        cmocka_unit_test(test_a_shorter_run_is_compared_at_its_own_length),
        cmocka_unit_test(test_unrewarded_rows_are_not_counted),
        cmocka_unit_test(test_a_run_that_rewarded_nothing_leaves_nothing_to_compare),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
