/* test_tally.c — the pooled counters policies keep (src/tally.c): counting
 * and reading, enumeration by prefix, the pairs a sync round sends and
 * confirms, snapshots read back, clearing, and names another tool wrote. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "tally.h"

typedef struct {
    char seen[512];
    uint64_t sum;
} each_t;

static void on_each(void *arg, const char *rest, uint64_t v)
{
    each_t *e = arg;
    size_t n = strlen(e->seen);
    snprintf(e->seen + n, sizeof(e->seen) - n, "%s=%llu;", rest, (unsigned long long)v);
    e->sum += v;
}

static void counts_read_and_enumerate(void **state)
{
    (void)state;
    tally_t *t = tally_new(0);
    assert_non_null(t);
    policy_tally_add(t, "a|matches", 2);
    policy_tally_add(t, "a|path|/x", 1);
    policy_tally_add(t, "a|path|/y", 3);
    policy_tally_add(t, "a|path|/x", 1);
    policy_tally_add(t, "b|path|/x", 9);
    policy_tally_add(t, "a|zero", 0); /* adds nothing, makes nothing */
    assert_int_equal(policy_tally_get(t, "a|matches"), 2);
    assert_int_equal(policy_tally_get(t, "a|path|/x"), 2);
    assert_int_equal(policy_tally_get(t, "missing"), 0);
    assert_int_equal(tally_size(t), 4);
    assert_int_equal(policy_tally_count(t, "a|path|"), 2);
    assert_int_equal(policy_tally_count(t, ""), 4);
    each_t e = {"", 0};
    policy_tally_each(t, "a|path|", on_each, &e);
    assert_string_equal(e.seen, "/x=2;/y=3;"); /* first counted first */
    /* The memory store's counts are the pooled value: nothing to send. */
    assert_false(tally_nonzero_local(t));
    /* Many names: the table grows and finds every one. */
    char name[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(name, sizeof name, "n%d", i);
        policy_tally_add(t, name, (uint64_t)i + 1);
    }
    for (int i = 0; i < 1000; i++) {
        snprintf(name, sizeof name, "n%d", i);
        assert_int_equal(policy_tally_get(t, name), (uint64_t)i + 1);
    }
    tally_clear(t);
    assert_int_equal(tally_size(t), 0);
    assert_int_equal(policy_tally_get(t, "a|matches"), 0);
    policy_tally_add(t, "a|matches", 1);
    assert_int_equal(policy_tally_get(t, "a|matches"), 1);
    tally_free(t);
    /* No tally: nothing counted, nothing read. */
    policy_tally_add(NULL, "x", 1);
    assert_int_equal(policy_tally_get(NULL, "x"), 0);
    assert_int_equal(policy_tally_count(NULL, ""), 0);
}

static void pairs_confirm_and_snapshots(void **state)
{
    (void)state;
    tally_t *t = tally_new(1);
    policy_tally_add(t, "a|matches", 5);
    policy_tally_add(t, "a|errors", 1);
    mm_buf_t sent;
    mm_buf_init(&sent);
    size_t n = tally_local_pairs(t, &sent);
    assert_int_equal(n, 2);
    assert_memory_equal(sent.p,
                        "a|matches\0"
                        "5\0"
                        "a|errors\0"
                        "1\0",
                        sent.len);
    /* Counted while the write is in flight: still local after the confirm. */
    policy_tally_add(t, "a|matches", 2);
    /* Redis answers with the pooled hash (another instance's 10 in it). */
    tally_confirm(t, sent.p, n);
    tally_snap_zero(t);
    tally_snap_set(t, "a|matches", 9, 15);
    tally_snap_set(t, "a|errors", 8, 1);
    tally_snap_set(t, "other|x", 7, 4);
    assert_int_equal(policy_tally_get(t, "a|matches"), 17);
    assert_int_equal(policy_tally_get(t, "a|errors"), 1);
    assert_int_equal(policy_tally_get(t, "other|x"), 4);
    mm_buf_reset(&sent);
    assert_int_equal(tally_local_pairs(t, &sent), 1);
    assert_memory_equal(sent.p,
                        "a|matches\0"
                        "2\0",
                        sent.len);
    mm_buf_reset(&sent);
    assert_int_equal(tally_snap_pairs(t, &sent), 3);
    /* Names with a NUL byte (another tool's) are not taken. */
    tally_snap_set(t, "bad\0name", 8, 3);
    assert_int_equal(policy_tally_count(t, "bad"), 0);
    /* Another instance's reset: what was not confirmed is gone. */
    tally_clear_local(t);
    assert_false(tally_nonzero_local(t));
    assert_int_equal(policy_tally_get(t, "a|matches"), 15);
    mm_buf_free(&sent);
    tally_free(t);
}

static void fingerprints_tell_definitions_apart(void **state)
{
    (void)state;
    assert_true(tally_fingerprint("{\"a\":1}") == tally_fingerprint("{\"a\":1}"));
    assert_true(tally_fingerprint("{\"a\":1}") != tally_fingerprint("{\"a\":2}"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(counts_read_and_enumerate),
        cmocka_unit_test(pairs_confirm_and_snapshots),
        cmocka_unit_test(fingerprints_tell_definitions_apart),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
