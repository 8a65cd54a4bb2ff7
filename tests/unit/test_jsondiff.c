/* test_jsondiff.c — structural JSON comparison: tolerance, ignore, paths.
 *
 * Each test parses two small documents and checks the exact list of
 * differing paths (and kinds) jsondiff reports, since the shadow policy's
 * per-field statistics and noise rules are built on those paths. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "jsondiff.h"

#define MAX_DIFFS 16

typedef struct {
    size_t n;
    char path[MAX_DIFFS][JSONDIFF_PATH_MAX];
    char shape[MAX_DIFFS][JSONDIFF_PATH_MAX];
    jsondiff_kind_t kind[MAX_DIFFS];
    size_t stop_after; /* 0: never stop */
} diffs_t;

static int collect(void *arg, const jsondiff_item_t *d)
{
    diffs_t *ds = arg;
    if (ds->n < MAX_DIFFS) {
        snprintf(ds->path[ds->n], JSONDIFF_PATH_MAX, "%s", d->path);
        snprintf(ds->shape[ds->n], JSONDIFF_PATH_MAX, "%s", d->shape);
        ds->kind[ds->n] = d->kind;
    }
    ds->n++;
    return ds->stop_after && ds->n >= ds->stop_after;
}

static json_t *parse(const char *s)
{
    json_error_t e;
    json_t *j = json_loads(s, JSON_DECODE_ANY, &e);
    if (j == NULL) fail_msg("bad test JSON %s: %s", s, e.text);
    return j;
}

/* Differences between a and b with tolerance tol and the given ignores. */
static size_t diff(const char *a, const char *b, double tol, const char *const *ignore,
                   size_t n_ignore, diffs_t *out)
{
    json_t *ja = parse(a), *jb = parse(b);
    jsondiff_opts_t o = {tol, ignore, n_ignore};
    memset(out, 0, sizeof *out);
    size_t n = jsondiff(ja, jb, &o, collect, out);
    json_decref(ja);
    json_decref(jb);
    return n;
}

static void identical_documents_have_no_difference(void **state)
{
    diffs_t d;
    (void)state;
    assert_int_equal(diff("{\"a\":[1,2,{\"b\":null}],\"c\":\"x\",\"t\":true}",
                          "{\"a\":[1,2,{\"b\":null}],\"c\":\"x\",\"t\":true}", 0, NULL, 0, &d),
                     0);
    assert_int_equal(d.n, 0);
}

static void object_key_order_is_irrelevant(void **state)
{
    diffs_t d;
    (void)state;
    assert_int_equal(diff("{\"a\":1,\"b\":{\"x\":1,\"y\":2}}", "{\"b\":{\"y\":2,\"x\":1},\"a\":1}",
                          0, NULL, 0, &d),
                     0);
}

static void tolerance_is_relative_above_one_and_absolute_below(void **state)
{
    (void)state;
    /* |a-b| <= t * max(1, |a|, |b|) */
    assert_true(jsondiff_number_eq(1000.0, 1000.9, 1e-3));  /* 0.9 <= 1.0009 */
    assert_false(jsondiff_number_eq(1000.0, 1001.5, 1e-3)); /* 1.5 > 1.0015 */
    assert_true(jsondiff_number_eq(0.0, 1e-3, 1e-3));       /* floor of 1: absolute 1e-3 */
    assert_false(jsondiff_number_eq(0.0, 1.1e-3, 1e-3));
    assert_true(jsondiff_number_eq(1e-9, -1e-9, 1e-6));      /* tiny values near 0 match */
    assert_true(jsondiff_number_eq(-2000.0, -2001.0, 5e-4)); /* uses |b| = 2001: 1 <= 1.0005 */
    assert_false(jsondiff_number_eq(-2000.0, -2002.0, 5e-4));
    assert_true(jsondiff_number_eq(3.0, 3.0, 0.0));
    assert_false(jsondiff_number_eq(3.0, 3.0000001, 0.0));
}

static void numbers_within_tolerance_match_in_documents(void **state)
{
    diffs_t d;
    (void)state;
    assert_int_equal(diff("{\"score\":0.5}", "{\"score\":0.5000001}", 1e-6, NULL, 0, &d), 0);
    assert_int_equal(diff("{\"score\":0.5}", "{\"score\":0.50001}", 1e-6, NULL, 0, &d), 1);
    assert_string_equal(d.path[0], "/score");
    assert_int_equal(d.kind[0], JSONDIFF_VALUE);
    /* Integer and real are both numbers. */
    assert_int_equal(diff("[1]", "[1.0]", 0, NULL, 0, &d), 0);
    /* Large integers compare exactly with tolerance 0. */
    assert_int_equal(diff("[9007199254740993]", "[9007199254740992]", 0, NULL, 0, &d), 1);
}

static void ignored_pointers_and_their_subtrees_are_skipped(void **state)
{
    static const char *const ign[] = {"/latency_ms", "/meta"};
    diffs_t d;
    (void)state;
    assert_int_equal(diff("{\"latency_ms\":3,\"meta\":{\"host\":\"a\"},\"y\":1}",
                          "{\"latency_ms\":9,\"meta\":{\"host\":\"b\",\"new\":1},\"y\":1}", 0, ign,
                          2, &d),
                     0);
    /* Ignored members may also be missing on one side. */
    assert_int_equal(diff("{\"latency_ms\":3,\"y\":1}", "{\"y\":1}", 0, ign, 2, &d), 0);
    assert_int_equal(diff("{\"latency_ms\":3,\"y\":1}", "{\"y\":2}", 0, ign, 2, &d), 1);
    assert_string_equal(d.path[0], "/y");
}

static void star_in_ignore_matches_any_array_index(void **state)
{
    static const char *const ign[] = {"/items/*/ts"};
    diffs_t d;
    (void)state;
    assert_int_equal(diff("{\"items\":[{\"id\":1,\"ts\":1},{\"id\":2,\"ts\":2}]}",
                          "{\"items\":[{\"id\":1,\"ts\":7},{\"id\":3,\"ts\":8}]}", 0, ign, 1, &d),
                     1);
    assert_string_equal(d.path[0], "/items/1/id");
    assert_string_equal(d.shape[0], "/items/*/id");
}

static void nested_arrays_compare_element_wise(void **state)
{
    diffs_t d;
    (void)state;
    assert_int_equal(diff("{\"m\":[[1,2],[3,4]]}", "{\"m\":[[1,2],[3,5]]}", 0, NULL, 0, &d), 1);
    assert_string_equal(d.path[0], "/m/1/1");
    assert_string_equal(d.shape[0], "/m/*/*");
    /* Order matters in arrays. */
    assert_int_equal(diff("[1,2]", "[2,1]", 0, NULL, 0, &d), 2);
    assert_string_equal(d.path[0], "/0");
    assert_string_equal(d.path[1], "/1");
}

static void array_length_difference_is_one_difference_plus_common_prefix(void **state)
{
    diffs_t d;
    (void)state;
    assert_int_equal(diff("{\"a\":[1,2,3,4]}", "{\"a\":[1,9]}", 0, NULL, 0, &d), 2);
    assert_string_equal(d.path[0], "/a");
    assert_int_equal(d.kind[0], JSONDIFF_LENGTH);
    assert_string_equal(d.path[1], "/a/1");
    assert_int_equal(d.kind[1], JSONDIFF_VALUE);
}

static void type_mismatch_is_reported_at_the_value(void **state)
{
    diffs_t d;
    (void)state;
    assert_int_equal(diff("{\"a\":{\"b\":1}}", "{\"a\":[1]}", 0, NULL, 0, &d), 1);
    assert_string_equal(d.path[0], "/a");
    assert_int_equal(d.kind[0], JSONDIFF_TYPE);
    assert_int_equal(diff("{\"a\":\"1\"}", "{\"a\":1}", 0, NULL, 0, &d), 1);
    assert_int_equal(d.kind[0], JSONDIFF_TYPE);
    assert_int_equal(diff("{\"a\":null}", "{\"a\":false}", 0, NULL, 0, &d), 1);
    assert_int_equal(d.kind[0], JSONDIFF_TYPE);
    /* true vs false is a value difference of one type. */
    assert_int_equal(diff("{\"a\":true}", "{\"a\":false}", 0, NULL, 0, &d), 1);
    assert_int_equal(d.kind[0], JSONDIFF_VALUE);
    /* At the root. */
    assert_int_equal(diff("[1]", "{}", 0, NULL, 0, &d), 1);
    assert_string_equal(d.path[0], "");
}

static void missing_and_extra_members(void **state)
{
    diffs_t d;
    (void)state;
    assert_int_equal(diff("{\"a\":1,\"b\":2}", "{\"b\":2,\"c\":3}", 0, NULL, 0, &d), 2);
    assert_string_equal(d.path[0], "/a");
    assert_int_equal(d.kind[0], JSONDIFF_MISSING);
    assert_string_equal(d.path[1], "/c");
    assert_int_equal(d.kind[1], JSONDIFF_EXTRA);
}

static void keys_are_escaped_in_paths(void **state)
{
    diffs_t d;
    (void)state;
    assert_int_equal(diff("{\"a/b\":{\"m~n\":1}}", "{\"a/b\":{\"m~n\":2}}", 0, NULL, 0, &d), 1);
    assert_string_equal(d.path[0], "/a~1b/m~0n");
    static const char *const ign[] = {"/a~1b/m~0n"};
    assert_int_equal(diff("{\"a/b\":{\"m~n\":1}}", "{\"a/b\":{\"m~n\":2}}", 0, ign, 1, &d), 0);
}

static void strings_with_nul_compare_by_length(void **state)
{
    diffs_t d;
    (void)state;
    json_t *a = json_stringn("ab\0c", 4), *b = json_stringn("ab\0d", 4);
    jsondiff_opts_t o = {0, NULL, 0};
    memset(&d, 0, sizeof d);
    assert_int_equal(jsondiff(a, b, &o, collect, &d), 1);
    json_decref(a);
    json_decref(b);
}

static void callback_can_stop_the_walk(void **state)
{
    diffs_t d;
    (void)state;
    json_t *a = parse("[1,2,3,4,5]"), *b = parse("[6,7,8,9,10]");
    memset(&d, 0, sizeof d);
    d.stop_after = 2;
    assert_int_equal(jsondiff(a, b, NULL, collect, &d), 2);
    assert_int_equal(jsondiff(a, b, NULL, NULL, NULL), 5);
    json_decref(a);
    json_decref(b);
}

static void too_deep_paths_report_once_at_the_deepest_fitting_path(void **state)
{
    diffs_t d;
    (void)state;
    /* 200 nested arrays: "/0" x 200 = 400 bytes > JSONDIFF_PATH_MAX. */
    char a[1024], b[1024];
    size_t n = 0;
    for (int i = 0; i < 200; i++) a[n++] = '[';
    memcpy(a + n, "1,2", 3);
    n += 3;
    for (int i = 0; i < 200; i++) a[n++] = ']';
    a[n] = '\0';
    memcpy(b, a, n + 1);
    b[200] = '5';
    b[202] = '6'; /* two differences, deep down */
    assert_int_equal(diff(a, b, 0, NULL, 0, &d), 1);
    assert_true(strlen(d.path[0]) < JSONDIFF_PATH_MAX);
    assert_true(strlen(d.path[0]) > 200);
}

static void pointer_validation_and_coverage(void **state)
{
    (void)state;
    assert_true(jsondiff_valid_pointer(""));
    assert_true(jsondiff_valid_pointer("/a/0/~0~1"));
    assert_false(jsondiff_valid_pointer("a"));
    assert_false(jsondiff_valid_pointer("/a~2"));
    assert_false(jsondiff_valid_pointer("/a~"));
    assert_true(jsondiff_path_covers("", "/x/y"));
    assert_true(jsondiff_path_covers("/x", "/x/y"));
    assert_true(jsondiff_path_covers("/x", "/x"));
    assert_false(jsondiff_path_covers("/x", "/xy"));
    assert_false(jsondiff_path_covers("/x/y", "/x"));
    assert_string_equal(jsondiff_kind_name(JSONDIFF_LENGTH), "length");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(identical_documents_have_no_difference),
        cmocka_unit_test(object_key_order_is_irrelevant),
        cmocka_unit_test(tolerance_is_relative_above_one_and_absolute_below),
        cmocka_unit_test(numbers_within_tolerance_match_in_documents),
        cmocka_unit_test(ignored_pointers_and_their_subtrees_are_skipped),
        cmocka_unit_test(star_in_ignore_matches_any_array_index),
        cmocka_unit_test(nested_arrays_compare_element_wise),
        cmocka_unit_test(array_length_difference_is_one_difference_plus_common_prefix),
        cmocka_unit_test(type_mismatch_is_reported_at_the_value),
        cmocka_unit_test(missing_and_extra_members),
        cmocka_unit_test(keys_are_escaped_in_paths),
        cmocka_unit_test(strings_with_nul_compare_by_length),
        cmocka_unit_test(callback_can_stop_the_walk),
        cmocka_unit_test(too_deep_paths_report_once_at_the_deepest_fitting_path),
        cmocka_unit_test(pointer_validation_and_coverage),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
