/* test_keep.c — what a --workers group keeps when a worker dies
 * (src/keep.c).
 *
 * What a worker puts is what a snapshot reads, in another process too (the
 * keep is shared across fork); a snapshot leaves out the asking worker;
 * retiring a dead worker adds its counters and histograms (not its gauges)
 * to the retired text, again on a second death, and empties its slot; a
 * text above KEEP_TEXT_MAX is marked, not kept, and retiring it keeps the
 * retired text as it was. The config slot holds the last config a worker
 * put, for the parent to read back, and none until one is put. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "keep.h"

static const char W1[] = "# HELP r R.\n# TYPE r counter\n"
                         "r{arm=\"a\"} 4\n"
                         "# HELP c C.\n# TYPE c gauge\n"
                         "c 9\n"
                         "# HELP d D.\n# TYPE d histogram\n"
                         "d_bucket{le=\"+Inf\"} 2\n"
                         "d_sum 0.25\n"
                         "d_count 2\n";

static const char W1_COUNTERS[] = "# HELP r R.\n# TYPE r counter\n"
                                  "r{arm=\"a\"} 4\n"
                                  "# HELP d D.\n# TYPE d histogram\n"
                                  "d_bucket{le=\"+Inf\"} 2\n"
                                  "d_sum 0.25\n"
                                  "d_count 2\n";

static void put(mm_keep_t *k, int w, const char *text)
{
    keep_put(k, w, text, strlen(text));
}

/* The snapshot's text for slot i, as a C string (freed by the caller). */
static char *text(const keep_snap_t *s, int i)
{
    return strndup(s->text[i].p ? s->text[i].p : "", s->text[i].len);
}

static void assert_text(const keep_snap_t *s, int i, const char *want)
{
    char *got = text(s, i);
    assert_string_equal(got, want);
    free(got);
}

static void test_put_then_snapshot_skips_the_asking_worker(void **state)
{
    (void)state;
    mm_keep_t *k = keep_create(3);
    assert_non_null(k);
    keep_snap_t s;
    assert_int_equal(keep_snapshot(k, 0, &s), 0);
    assert_int_equal(s.n, 3);
    for (int i = 0; i < 3; i++) assert_int_equal(s.state[i], KEEP_EMPTY);
    assert_int_equal(s.text[3].len, 0); /* nobody retired */
    keep_snap_free(&s);

    put(k, 0, "zero\n");
    put(k, 1, "one\n");
    put(k, 1, "one, again\n"); /* replaces */
    assert_int_equal(keep_snapshot(k, 0, &s), 0);
    assert_int_equal(s.state[0], KEEP_EMPTY); /* skipped: the asker has its own */
    assert_int_equal(s.text[0].len, 0);
    assert_int_equal(s.state[1], KEEP_KEPT);
    assert_text(&s, 1, "one, again\n");
    assert_int_equal(s.state[2], KEEP_EMPTY);
    keep_snap_free(&s);
    keep_free(k);
}

static void test_a_child_process_puts_what_the_parent_reads(void **state)
{
    (void)state;
    mm_keep_t *k = keep_create(2);
    assert_non_null(k);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        put(k, 1, W1);
        _exit(0);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    keep_snap_t s;
    assert_int_equal(keep_snapshot(k, 0, &s), 0);
    assert_int_equal(s.state[1], KEEP_KEPT);
    assert_text(&s, 1, W1);
    keep_snap_free(&s);
    keep_free(k);
}

static void test_retire_adds_counters_and_empties_the_slot(void **state)
{
    (void)state;
    mm_keep_t *k = keep_create(2);
    assert_non_null(k);
    put(k, 1, W1);
    keep_retire(k, 1);
    keep_snap_t s;
    assert_int_equal(keep_snapshot(k, 0, &s), 0);
    assert_int_equal(s.state[1], KEEP_EMPTY);
    assert_text(&s, 2, W1_COUNTERS); /* the gauge c is gone */
    keep_snap_free(&s);

    /* the worker in its place counts anew and dies too: the sums add */
    put(k, 1, "# HELP r R.\n# TYPE r counter\nr{arm=\"a\"} 1\nr{arm=\"b\"} 6\n");
    keep_retire(k, 1);
    assert_int_equal(keep_snapshot(k, 0, &s), 0);
    assert_text(&s, 2,
                "# HELP r R.\n# TYPE r counter\n"
                "r{arm=\"a\"} 5\n"
                "r{arm=\"b\"} 6\n"
                "# HELP d D.\n# TYPE d histogram\n"
                "d_bucket{le=\"+Inf\"} 2\n"
                "d_sum 0.25\n"
                "d_count 2\n");
    keep_snap_free(&s);

    /* a worker that died before any scrape asked it: nothing to add */
    keep_retire(k, 0);
    assert_int_equal(keep_snapshot(k, 1, &s), 0);
    assert_int_equal(s.state[0], KEEP_EMPTY);
    assert_true(s.text[2].len > 0);
    keep_snap_free(&s);
    keep_free(k);
}

static void test_a_text_too_large_is_marked_not_kept(void **state)
{
    (void)state;
    mm_keep_t *k = keep_create(2);
    assert_non_null(k);
    put(k, 0, W1);
    keep_retire(k, 0);
    size_t big = (size_t)KEEP_TEXT_MAX + 1;
    char *t = malloc(big);
    assert_non_null(t);
    memset(t, '#', big);
    put(k, 1, "r 1\n");
    keep_put(k, 1, t, big); /* replaces the small one: that is no longer the truth */
    free(t);
    keep_snap_t s;
    assert_int_equal(keep_snapshot(k, 0, &s), 0);
    assert_int_equal(s.state[1], KEEP_TOO_LARGE);
    assert_int_equal(s.text[1].len, 0);
    keep_snap_free(&s);
    keep_retire(k, 1); /* logged; the retired text stays as it was */
    assert_int_equal(keep_snapshot(k, 0, &s), 0);
    assert_int_equal(s.state[1], KEEP_EMPTY);
    assert_text(&s, 2, W1_COUNTERS);
    keep_snap_free(&s);
    keep_free(k);
}

static void test_bad_sizes_are_refused(void **state)
{
    (void)state;
    assert_null(keep_create(0));
    assert_null(keep_create(KEEP_MAX_WORKERS + 1));
    mm_keep_t *k = keep_create(1);
    assert_non_null(k);
    keep_put(k, 1, "x", 1); /* no such worker: ignored */
    keep_retire(k, -1);
    keep_snap_t s;
    assert_int_equal(keep_snapshot(k, -1, &s), 0);
    assert_int_equal(s.state[0], KEEP_EMPTY);
    keep_snap_free(&s);
    keep_free(k);
    keep_free(NULL);
}

static void test_the_config_a_worker_put_is_what_the_parent_reads(void **state)
{
    (void)state;
    mm_keep_t *k = keep_create(2);
    assert_non_null(k);
    mm_buf_t b;
    mm_buf_init(&b);
    assert_int_equal(keep_config(k, &b), 0); /* no reload yet */
    assert_int_equal(b.len, 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) { /* a worker whose reloads succeeded */
        keep_put_config(k, "{\"old\": 1}", 10);
        keep_put_config(k, "{\"new\": 2}", 10);
        _exit(0);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_int_equal(keep_config(k, &b), 1);
    assert_int_equal(b.len, 10);
    assert_memory_equal(b.p, "{\"new\": 2}", 10);
    /* the worker slots and the retired one are apart from it */
    put(k, 1, W1);
    keep_retire(k, 1);
    mm_buf_reset(&b);
    assert_int_equal(keep_config(k, &b), 1);
    assert_memory_equal(b.p, "{\"new\": 2}", 10);
    keep_snap_t s;
    assert_int_equal(keep_snapshot(k, 0, &s), 0);
    assert_text(&s, 2, W1_COUNTERS);
    keep_snap_free(&s);
    mm_buf_free(&b);
    keep_free(k);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_then_snapshot_skips_the_asking_worker),
        cmocka_unit_test(test_a_child_process_puts_what_the_parent_reads),
        cmocka_unit_test(test_retire_adds_counters_and_empties_the_slot),
        cmocka_unit_test(test_a_text_too_large_is_marked_not_kept),
        cmocka_unit_test(test_bad_sizes_are_refused),
        cmocka_unit_test(test_the_config_a_worker_put_is_what_the_parent_reads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
