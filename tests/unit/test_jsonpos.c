/* test_jsonpos.c — the position index behind FILE:LINE:COL config errors.
 *
 * Every test builds an index over a small literal and asserts the exact
 * line and column a user would see for a pointer, because those numbers are
 * what --check prints. Where jansson and the index must agree (columns count
 * code points), the test checks both. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <jansson.h>

#include "jsonpos.h"

static jsonpos_t *build(const char *text)
{
    json_error_t je;
    json_t *j = json_loadb(text, strlen(text), JSON_DECODE_ANY, &je);
    assert_non_null(j); /* the index only promises to handle what jansson accepts */
    json_decref(j);
    jsonpos_t *jp = jsonpos_build(text, strlen(text));
    assert_non_null(jp);
    return jp;
}

static void expect_pos(const jsonpos_t *jp, const char *ptr, int key, int line, int col)
{
    int l = 0, c = 0;
    assert_int_equal(jsonpos_find(jp, ptr, key, &l, &c), 0);
    assert_int_equal(l, line);
    assert_int_equal(c, col);
}

static void test_root_and_flat_object(void **state)
{
    (void)state;
    jsonpos_t *jp = build("  {\"a\": 1, \"bb\": true}");
    expect_pos(jp, "", 0, 1, 3);
    expect_pos(jp, "", 1, 1, 3); /* the root has no key: key position == value */
    expect_pos(jp, "/a", 0, 1, 9);
    expect_pos(jp, "/a", 1, 1, 4);
    expect_pos(jp, "/bb", 0, 1, 18);
    expect_pos(jp, "/bb", 1, 1, 12);
    assert_int_equal(jsonpos_count(jp), 3);
    jsonpos_free(jp);
}

static void test_nested_objects_and_arrays(void **state)
{
    (void)state;
    jsonpos_t *jp = build("{\"x\":{\"y\":[10,{\"z\":null},[true,false]]}}");
    expect_pos(jp, "/x", 0, 1, 6);
    expect_pos(jp, "/x/y", 0, 1, 11);
    expect_pos(jp, "/x/y/0", 0, 1, 12);
    expect_pos(jp, "/x/y/0", 1, 1, 12); /* array element: no key */
    expect_pos(jp, "/x/y/1", 0, 1, 15);
    expect_pos(jp, "/x/y/1/z", 0, 1, 20);
    expect_pos(jp, "/x/y/1/z", 1, 1, 16);
    expect_pos(jp, "/x/y/2", 0, 1, 26);
    expect_pos(jp, "/x/y/2/1", 0, 1, 32);
    jsonpos_free(jp);
}

static void test_multiline_positions(void **state)
{
    (void)state;
    const char *text = "{\n"
                       "  \"upstreams\": {\n"
                       "    \"champion\": {\"url\": \"http://a:1\",\n"
                       "\t\"timeout_ms\": -5}\n"
                       "  },\n"
                       "  \"list\": [\n"
                       "    1,\r\n"
                       "    2\n"
                       "  ]\n"
                       "}\n";
    jsonpos_t *jp = build(text);
    expect_pos(jp, "/upstreams", 1, 2, 3);
    expect_pos(jp, "/upstreams", 0, 2, 16);
    expect_pos(jp, "/upstreams/champion", 1, 3, 5);
    expect_pos(jp, "/upstreams/champion/url", 0, 3, 25);
    expect_pos(jp, "/upstreams/champion/timeout_ms", 1, 4, 2); /* a tab is one column */
    expect_pos(jp, "/upstreams/champion/timeout_ms", 0, 4, 16);
    expect_pos(jp, "/list/0", 0, 7, 5);
    expect_pos(jp, "/list/1", 0, 8, 5); /* "\r\n": only '\n' starts a line */
    jsonpos_free(jp);
}

static void test_escaped_keys_use_rfc6901(void **state)
{
    (void)state;
    jsonpos_t *jp = build("{\"a/b\":1,\"m~n\":2,\"q\\\"t\":3,\"s\\/l\":4,\"~1\":5}");
    expect_pos(jp, "/a~1b", 0, 1, 8);
    expect_pos(jp, "/m~0n", 0, 1, 16);
    expect_pos(jp, "/q\"t", 0, 1, 25);
    expect_pos(jp, "/s~1l", 0, 1, 34); /* "\/" decodes to '/', escaped as ~1 */
    expect_pos(jp, "/~01", 1, 1, 36);
    int l, c;
    assert_int_equal(jsonpos_find(jp, "/a/b", 0, &l, &c), -1);
    assert_int_equal(jsonpos_find(jp, "/nope", 0, &l, &c), -1);
    jsonpos_free(jp);
}

static void test_unicode_escapes_in_keys(void **state)
{
    (void)state;
    /* \u00e9 is é; \ud83d\ude00 is U+1F600 as a surrogate pair. */
    jsonpos_t *jp = build("{\"caf\\u00e9\":1,\"\\ud83d\\ude00\":[2],\"\\u0041\\n\":3}");
    expect_pos(jp, "/caf\xc3\xa9", 0, 1, 14);
    expect_pos(jp, "/\xf0\x9f\x98\x80/0", 0, 1, 32);
    expect_pos(jp, "/A\n", 0, 1, 46);
    jsonpos_free(jp);
}

static void test_columns_count_code_points_like_jansson(void **state)
{
    (void)state;
    /* Two-byte é and a four-byte emoji before the value: columns must count
     * characters, the way jansson does for its syntax errors. */
    const char *text = "{\"\xc3\xa9\": \"\xf0\x9f\x98\x80\", \"k\": 1}";
    jsonpos_t *jp = build(text);
    expect_pos(jp, "/\xc3\xa9", 0, 1, 7);
    expect_pos(jp, "/k", 1, 1, 12);
    expect_pos(jp, "/k", 0, 1, 17);
    jsonpos_free(jp);

    /* Same text with an error where "k"'s value is: jansson's column agrees. */
    const char *bad = "{\"\xc3\xa9\": \"\xf0\x9f\x98\x80\", \"k\": x}";
    json_error_t je;
    assert_null(json_loads(bad, 0, &je));
    assert_int_equal(je.column, 17);
}

static void test_strings_with_tricky_content_are_skipped(void **state)
{
    (void)state;
    jsonpos_t *jp = build("{\"a\":\"}]{[\\\"\\\\\",\"b\":\"\\u005b\",\"c\":-1.5e+3}");
    expect_pos(jp, "/b", 0, 1, 21);
    expect_pos(jp, "/c", 0, 1, 34);
    jsonpos_free(jp);
}

static void test_empty_containers_and_scalars(void **state)
{
    (void)state;
    jsonpos_t *jp = build("{\"o\":{},\"a\":[],\"e\":\"\"}");
    expect_pos(jp, "/o", 0, 1, 6);
    expect_pos(jp, "/a", 0, 1, 13);
    expect_pos(jp, "/e", 0, 1, 20);
    assert_int_equal(jsonpos_count(jp), 4);
    jsonpos_free(jp);

    jp = build("[ 7 ]");
    expect_pos(jp, "/0", 0, 1, 3);
    jsonpos_free(jp);

    /* Only the root: its pointer is "", so nothing was ever put in the
     * pointer arena ("{}" is a config a user writes; --check then reports
     * the missing keys at the root). */
    jp = build(" {}");
    expect_pos(jp, "", 0, 1, 2);
    assert_int_equal(jsonpos_find(jp, "/upstreams", 0, &(int){0}, &(int){0}), -1);
    jsonpos_free(jp);
}

static void test_rejects_truncated_text(void **state)
{
    (void)state;
    assert_null(jsonpos_build("{\"a\": [1, 2", 11));
    assert_null(jsonpos_build("", 0));
    assert_null(jsonpos_build("{} x", 4));
}

static void test_append_escapes_segments(void **state)
{
    (void)state;
    char buf[16] = "/experiments";
    assert_int_equal(jsonpos_append(buf, sizeof(buf), "0"), 0);
    assert_string_equal(buf, "/experiments/0");
    char b2[32] = "";
    assert_int_equal(jsonpos_append(b2, sizeof(b2), "a/b~c"), 0);
    assert_string_equal(b2, "/a~1b~0c");
    /* Too long: buf is left as it was. */
    char b3[8] = "/ab";
    assert_int_equal(jsonpos_append(b3, sizeof(b3), "cdef"), -1);
    assert_string_equal(b3, "/ab");
    assert_int_equal(jsonpos_append(b3, sizeof(b3), "cde"), 0);
    assert_string_equal(b3, "/ab/cde");
}

/* A key longer than any pointer buffer: its pointer, built by
 * jsonpos_append or written out whole, still finds the key itself. */
static void test_long_keys_keep_their_positions(void **state)
{
    (void)state;
    for (size_t klen = 255; klen <= 5000; klen = klen < 1030 ? klen + 1 : klen * 2) {
        if (klen == 260) klen = 1020; /* around the old 1024-byte limit */
        char *key = malloc(klen + 1), *text = malloc(klen + 64), *full = malloc(klen + 16);
        assert_non_null(key);
        memset(key, 'k', klen);
        key[klen] = '\0';
        snprintf(text, klen + 64, "{\"a\": 1,\n \"%s\": {\"b\": [true]}}", key);
        jsonpos_t *jp = build(text);
        char ptr[512] = "";
        assert_int_equal(jsonpos_append(ptr, sizeof(ptr), key), 0);
        assert_true(strlen(ptr) <= 1 + JSONPOS_SEG_MAX);
        expect_pos(jp, ptr, 1, 2, 2);
        expect_pos(jp, ptr, 0, 2, (int)klen + 6);
        assert_int_equal(jsonpos_append(ptr, sizeof(ptr), "b"), 0);
        expect_pos(jp, ptr, 1, 2, (int)klen + 7);
        snprintf(full, klen + 16, "/%s/b/0", key); /* the pointer written out whole */
        expect_pos(jp, full, 0, 2, (int)klen + 13);
        jsonpos_free(jp);
        free(key);
        free(text);
        free(full);
    }
}

/* The escaped pointer of one key (as a policy writes "/arms/NAME"). */
static void escaped_pointer(const char *key, char *out)
{
    size_t w = 0;
    out[w++] = '/';
    for (const char *p = key; *p; p++) {
        if (*p == '~' || *p == '/') {
            out[w++] = '~';
            out[w++] = *p == '~' ? '0' : '1';
        } else {
            out[w++] = *p;
        }
    }
    out[w] = '\0';
}

/* Long keys that differ only past the kept prefix still name different
 * keys; the cut keeps whole characters and whole escapes; jsonpos_canon
 * gives an escaped pointer the same form. */
static void test_long_keys_sharing_a_prefix_stay_apart(void **state)
{
    (void)state;
    char a[400], b[400], c[400], d[400], text[1800];
    memset(a, 'x', 300);
    strcpy(a + 300, "A");
    memset(b, 'x', 300);
    strcpy(b + 300, "B");
    /* c: "y" then 3-byte characters, one straddling byte 200 */
    size_t n = (size_t)snprintf(c, sizeof(c), "y");
    for (int i = 0; i < 67; i++) n += (size_t)snprintf(c + n, sizeof(c) - n, "\xe2\x82\xac");
    memset(c + n, 'y', 120);
    c[n + 120] = '\0';
    /* d: a '/' (escaped "~1") straddling byte 200 */
    memset(d, 'z', 199);
    d[199] = '/';
    memset(d + 200, 'z', 100);
    d[300] = '\0';
    snprintf(text, sizeof(text), "{\"%s\": 1,\n\"%s\": 2,\n\"%s\": 3,\n\"%s\": 4}", a, b, c, d);
    jsonpos_t *jp = build(text);
    char pa[512] = "", pb[512] = "", pc[512] = "", pd[512] = "";
    assert_int_equal(jsonpos_append(pa, sizeof(pa), a), 0);
    assert_int_equal(jsonpos_append(pb, sizeof(pb), b), 0);
    assert_int_equal(jsonpos_append(pc, sizeof(pc), c), 0);
    assert_int_equal(jsonpos_append(pd, sizeof(pd), d), 0);
    assert_string_not_equal(pa, pb);
    expect_pos(jp, pa, 1, 1, 2);
    expect_pos(jp, pb, 1, 2, 1);
    expect_pos(jp, pc, 1, 3, 1);
    expect_pos(jp, pd, 1, 4, 1);
    const char *mark = strstr(pc, "~2");
    assert_non_null(mark);
    assert_int_equal(mark - pc - 1, 1 + 66 * 3); /* the cut "€" is left out whole */
    mark = strstr(pd, "~2");
    assert_non_null(mark);
    assert_int_equal(mark - pd - 1, 199); /* so is the cut "~1" */
    char esc[1024], canon[1024];
    const char *keys[] = {a, c, d};
    const char *forms[] = {pa, pc, pd};
    for (int i = 0; i < 3; i++) {
        escaped_pointer(keys[i], esc);
        assert_int_equal(jsonpos_canon(esc, canon, sizeof(canon)), 0);
        assert_string_equal(canon, forms[i]);
        expect_pos(jp, esc, 1, i == 0 ? 1 : i + 2, i == 0 ? 2 : 1); /* found whole, too */
    }
    assert_int_equal(jsonpos_canon("/short/a~1b", canon, sizeof(canon)), 0);
    assert_string_equal(canon, "/short/a~1b");
    jsonpos_free(jp);
}

/* An API body's syntax error: at the token for a token, at the byte for a
 * byte that cannot be there (jansson says the character before it). */
static void syntax_error_of(const char *text, char *out, size_t n)
{
    json_error_t je;
    assert_null(json_loadb(text, strlen(text), JSON_REJECT_DUPLICATES, &je));
    jsonpos_syntax_error(text, strlen(text), &je, out, n);
}

static void test_syntax_errors_point_at_a_bad_byte(void **state)
{
    (void)state;
    char m[300];
    syntax_error_of("{\"reward\": \xff}", m, sizeof(m));
    assert_string_equal(m, "invalid JSON at line 1 column 12: unable to decode byte 0xff");
    syntax_error_of("{\n\"id\": \"a\x02\"}", m, sizeof(m));
    assert_string_equal(m, "invalid JSON at line 2 column 9: control character 0x2 near '\"a'");
    syntax_error_of("{\"id\": \"a\nb\"}", m, sizeof(m));
    assert_string_equal(m, "invalid JSON at line 1 column 10: unexpected newline near '\"a'");
    syntax_error_of("", m, sizeof(m)); /* jansson says column 0 */
    assert_string_equal(m, "invalid JSON at line 1 column 1: '[' or '{' expected near end of file");
    syntax_error_of("{\"a\": tru}", m, sizeof(m)); /* a token: where the parser stopped */
    assert_string_equal(m, "invalid JSON at line 1 column 9: invalid token near 'tru'");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_root_and_flat_object),
        cmocka_unit_test(test_nested_objects_and_arrays),
        cmocka_unit_test(test_multiline_positions),
        cmocka_unit_test(test_escaped_keys_use_rfc6901),
        cmocka_unit_test(test_unicode_escapes_in_keys),
        cmocka_unit_test(test_columns_count_code_points_like_jansson),
        cmocka_unit_test(test_strings_with_tricky_content_are_skipped),
        cmocka_unit_test(test_empty_containers_and_scalars),
        cmocka_unit_test(test_rejects_truncated_text),
        cmocka_unit_test(test_append_escapes_segments),
        cmocka_unit_test(test_long_keys_keep_their_positions),
        cmocka_unit_test(test_long_keys_sharing_a_prefix_stay_apart),
        cmocka_unit_test(test_syntax_errors_point_at_a_bad_byte),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
