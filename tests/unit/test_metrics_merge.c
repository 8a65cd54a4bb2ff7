/* test_metrics_merge.c — several workers' expositions as one (src/metrics_merge.c).
 *
 * A scrape of a --workers group must read as one server: counters and
 * histograms add up, gauges of per-worker things add up, shared-state
 * gauges are the answering worker's, store_up is the worst, and the output
 * stays a valid exposition (each family once, its samples together). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "metrics_merge.h"

static char *merge_full(const char *const *texts, size_t n, size_t n_full)
{
    mm_str_t in[8];
    for (size_t i = 0; i < n; i++) in[i] = (mm_str_t){texts[i], strlen(texts[i])};
    mm_buf_t out;
    mm_buf_init(&out);
    metrics_merge(in, n, n_full, &out);
    assert_false(out.oom);
    char *s = strndup(out.p ? out.p : "", out.len);
    mm_buf_free(&out);
    return s;
}

static char *merge(const char *const *texts, size_t n)
{
    return merge_full(texts, n, n);
}

static void check(const char *const *texts, size_t n, const char *want)
{
    char *got = merge(texts, n);
    assert_string_equal(got, want);
    free(got);
}

static void test_one_text_is_unchanged(void **state)
{
    (void)state;
    const char *t = "# HELP modelmux_requests_total Requests.\n"
                    "# TYPE modelmux_requests_total counter\n"
                    "modelmux_requests_total{experiment=\"e\",arm=\"a\",code=\"200\"} 7\n"
                    "# HELP modelmux_arm_share Share.\n"
                    "# TYPE modelmux_arm_share gauge\n"
                    "modelmux_arm_share{experiment=\"e\",arm=\"a\"} 0.25\n"
                    "# HELP modelmux_canary_step Step.\n"
                    "# TYPE modelmux_canary_step gauge\n";
    check(&t, 1, t);
}

static void test_counters_and_owned_gauges_add_shared_gauges_are_the_first(void **state)
{
    (void)state;
    const char *a = "# HELP modelmux_requests_total R.\n"
                    "# TYPE modelmux_requests_total counter\n"
                    "modelmux_requests_total{arm=\"a\"} 7\n"
                    "# HELP modelmux_connections C.\n"
                    "# TYPE modelmux_connections gauge\n"
                    "modelmux_connections 3\n"
                    "# HELP modelmux_reward_sum R.\n"
                    "# TYPE modelmux_reward_sum gauge\n"
                    "modelmux_reward_sum{arm=\"a\"} -1.5\n"
                    "# HELP modelmux_arm_share S.\n"
                    "# TYPE modelmux_arm_share gauge\n"
                    "modelmux_arm_share{arm=\"a\"} 0.25\n"
                    "# HELP modelmux_store_up U.\n"
                    "# TYPE modelmux_store_up gauge\n"
                    "modelmux_store_up 1\n";
    const char *b = "# HELP modelmux_requests_total R.\n"
                    "# TYPE modelmux_requests_total counter\n"
                    "modelmux_requests_total{arm=\"a\"} 5\n"
                    "# HELP modelmux_connections C.\n"
                    "# TYPE modelmux_connections gauge\n"
                    "modelmux_connections 4\n"
                    "# HELP modelmux_reward_sum R.\n"
                    "# TYPE modelmux_reward_sum gauge\n"
                    "modelmux_reward_sum{arm=\"a\"} 0.25\n"
                    "# HELP modelmux_arm_share S.\n"
                    "# TYPE modelmux_arm_share gauge\n"
                    "modelmux_arm_share{arm=\"a\"} 0.5\n"
                    "# HELP modelmux_store_up U.\n"
                    "# TYPE modelmux_store_up gauge\n"
                    "modelmux_store_up 0\n";
    const char *in[] = {a, b};
    check(in, 2,
          "# HELP modelmux_requests_total R.\n"
          "# TYPE modelmux_requests_total counter\n"
          "modelmux_requests_total{arm=\"a\"} 12\n"
          "# HELP modelmux_connections C.\n"
          "# TYPE modelmux_connections gauge\n"
          "modelmux_connections 7\n"
          "# HELP modelmux_reward_sum R.\n"
          "# TYPE modelmux_reward_sum gauge\n"
          "modelmux_reward_sum{arm=\"a\"} -1.25\n"
          "# HELP modelmux_arm_share S.\n"
          "# TYPE modelmux_arm_share gauge\n"
          "modelmux_arm_share{arm=\"a\"} 0.25\n"
          "# HELP modelmux_store_up U.\n"
          "# TYPE modelmux_store_up gauge\n"
          "modelmux_store_up 0\n");
}

static void test_histograms_add_per_bucket(void **state)
{
    (void)state;
    const char *a = "# HELP d D.\n# TYPE d histogram\n"
                    "d_bucket{arm=\"a\",le=\"0.001\"} 1\n"
                    "d_bucket{arm=\"a\",le=\"+Inf\"} 2\n"
                    "d_sum{arm=\"a\"} 0.1\n"
                    "d_count{arm=\"a\"} 2\n";
    const char *b = "# HELP d D.\n# TYPE d histogram\n"
                    "d_bucket{arm=\"a\",le=\"0.001\"} 0\n"
                    "d_bucket{arm=\"a\",le=\"+Inf\"} 3\n"
                    "d_sum{arm=\"a\"} 0.2\n"
                    "d_count{arm=\"a\"} 3\n";
    const char *in[] = {a, b};
    check(in, 2,
          "# HELP d D.\n# TYPE d histogram\n"
          "d_bucket{arm=\"a\",le=\"0.001\"} 1\n"
          "d_bucket{arm=\"a\",le=\"+Inf\"} 5\n"
          "d_sum{arm=\"a\"} 0.30000000000000004\n" /* the double sum, read back exactly */
          "d_count{arm=\"a\"} 5\n");
}

/* A sample or family only one worker has (an arm that one worker has seen
 * a status code for, a request log only one opened) joins its family, and
 * the family's samples stay together. */
static void test_new_samples_join_their_family(void **state)
{
    (void)state;
    const char *a = "# HELP r R.\n# TYPE r counter\n"
                    "r{code=\"200\"} 1\n"
                    "# HELP g G.\n# TYPE g gauge\n"
                    "g 1\n";
    const char *b = "# HELP r R.\n# TYPE r counter\n"
                    "r{code=\"502\"} 4\n"
                    "r{code=\"200\"} 2\n"
                    "# HELP g G.\n# TYPE g gauge\n"
                    "g 9\n"
                    "# HELP x X.\n# TYPE x counter\n"
                    "x 3\n";
    const char *in[] = {a, b};
    check(in, 2,
          "# HELP r R.\n# TYPE r counter\n"
          "r{code=\"200\"} 3\n"
          "r{code=\"502\"} 4\n"
          "# HELP g G.\n# TYPE g gauge\n"
          "g 1\n"
          "# HELP x X.\n# TYPE x counter\n"
          "x 3\n");
}

/* Label values may hold spaces and escaped quotes: the value is after the
 * last space. Lines that are not samples are left out; a last line without
 * a line feed still counts. */
static void test_label_values_with_spaces_and_junk_lines(void **state)
{
    (void)state;
    const char *a = "# HELP m M.\n# TYPE m counter\n"
                    "m{v=\"a b \\\"c\\\"\"} 1\n"
                    "# a comment\n"
                    "no_value\n"
                    "m{v=\"z\"} notanumber\n"
                    "\n";
    const char *b = "# HELP m M.\n# TYPE m counter\n"
                    "m{v=\"a b \\\"c\\\"\"} 2";
    const char *in[] = {a, b};
    check(in, 2,
          "# HELP m M.\n# TYPE m counter\n"
          "m{v=\"a b \\\"c\\\"\"} 3\n");
}

static void test_empty_inputs(void **state)
{
    (void)state;
    const char *in[] = {"", ""};
    check(in, 2, "");
    check(in, 0, "");
}

/* Texts past n_full (a silent worker's kept exposition, the dead workers')
 * add their counters and histograms only: their gauges (connections open
 * then, a share) say nothing about now, and a family only they name is
 * shown only if it has samples. */
static void test_texts_past_n_full_give_counters_and_histograms_only(void **state)
{
    (void)state;
    const char *live = "# HELP r R.\n# TYPE r counter\n"
                       "r{arm=\"a\"} 1\n"
                       "# HELP c C.\n# TYPE c gauge\n"
                       "c 2\n";
    const char *kept = "# HELP r R.\n# TYPE r counter\n"
                       "r{arm=\"a\"} 10\n"
                       "r{arm=\"b\"} 3\n"
                       "# HELP c C.\n# TYPE c gauge\n"
                       "c 40\n"
                       "# HELP d D.\n# TYPE d histogram\n"
                       "d_bucket{le=\"+Inf\"} 4\n"
                       "d_sum 0.5\n"
                       "d_count 4\n"
                       "# HELP only_gauge G.\n# TYPE only_gauge gauge\n"
                       "only_gauge 7\n"
                       "# HELP empty E.\n# TYPE empty counter\n";
    const char *in[] = {live, kept};
    char *got = merge_full(in, 2, 1);
    assert_string_equal(got, "# HELP r R.\n# TYPE r counter\n"
                             "r{arm=\"a\"} 11\n"
                             "r{arm=\"b\"} 3\n"
                             "# HELP c C.\n# TYPE c gauge\n"
                             "c 2\n"
                             "# HELP d D.\n# TYPE d histogram\n"
                             "d_bucket{le=\"+Inf\"} 4\n"
                             "d_sum 0.5\n"
                             "d_count 4\n");
    free(got);
    /* none full (the parent folding a dead worker into the retired text) */
    got = merge_full(in, 2, 0);
    assert_string_equal(got, "# HELP r R.\n# TYPE r counter\n"
                             "r{arm=\"a\"} 11\n"
                             "r{arm=\"b\"} 3\n"
                             "# HELP d D.\n# TYPE d histogram\n"
                             "d_bucket{le=\"+Inf\"} 4\n"
                             "d_sum 0.5\n"
                             "d_count 4\n");
    free(got);
}

/* modelmux_reward_sum is a gauge (rewards may be negative) but a sum of
 * what was received: a kept or retired text's stays in the group's, as
 * modelmux_feedback_total's does, so their ratio (the mean reward) holds
 * when a worker dies or is slow to answer. */
static void test_kept_reward_sums_stay(void **state)
{
    (void)state;
    const char *live = "# HELP modelmux_reward_sum S.\n# TYPE modelmux_reward_sum gauge\n"
                       "modelmux_reward_sum{experiment=\"e\",arm=\"a\"} 1.5\n";
    const char *kept = "# HELP modelmux_reward_sum S.\n# TYPE modelmux_reward_sum gauge\n"
                       "modelmux_reward_sum{experiment=\"e\",arm=\"a\"} -4\n"
                       "modelmux_reward_sum{experiment=\"e\",arm=\"b\"} 2\n";
    const char *in[] = {live, kept};
    for (size_t n_full = 0; n_full < 2; n_full++) { /* 0: folded into the retired text */
        char *got = merge_full(in, 2, n_full);
        assert_string_equal(got, "# HELP modelmux_reward_sum S.\n# TYPE modelmux_reward_sum gauge\n"
                                 "modelmux_reward_sum{experiment=\"e\",arm=\"a\"} -2.5\n"
                                 "modelmux_reward_sum{experiment=\"e\",arm=\"b\"} 2\n");
        free(got);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_text_is_unchanged),
        cmocka_unit_test(test_counters_and_owned_gauges_add_shared_gauges_are_the_first),
        cmocka_unit_test(test_histograms_add_per_bucket),
        cmocka_unit_test(test_new_samples_join_their_family),
        cmocka_unit_test(test_label_values_with_spaces_and_junk_lines),
        cmocka_unit_test(test_empty_inputs),
        cmocka_unit_test(test_texts_past_n_full_give_counters_and_histograms_only),
        cmocka_unit_test(test_kept_reward_sums_stay),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
