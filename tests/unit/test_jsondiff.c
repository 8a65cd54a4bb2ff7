/* test_jsondiff.c — structural JSON comparison: tolerance, ignore, paths, and
 * sameness with the jansson pipeline it replaced.
 *
 * The comparator works on raw texts (jsondiff_doc_parse + jsondiff); it must
 * give exactly what json_loadb(JSON_DECODE_ANY | JSON_ALLOW_NUL) + the walk
 * over jansson trees gave: the same texts rejected, the same differences with
 * the same paths, shapes and kinds, in the same order. Every comparison in
 * this file runs both and asserts they agree (the jansson walk is the
 * reference), then checks the exact paths the shadow policy's per-field
 * statistics and noise rules are built on. Beyond the hand-written cases, a
 * seeded generator makes thousands of document pairs: nested objects and
 * arrays, shuffled members, duplicate keys, strings escaped differently,
 * numbers near the tolerance, and byte-level corruptions. */
#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <jansson.h>

#include "jsondiff.h"
#include "rng.h"

#define MAX_DIFFS 64 /* kept in full; all of them go into `hash` */

typedef struct {
    size_t n;
    char path[MAX_DIFFS][JSONDIFF_PATH_MAX];
    char shape[MAX_DIFFS][JSONDIFF_PATH_MAX];
    jsondiff_kind_t kind[MAX_DIFFS];
    uint64_t hash;     /* of every (path, shape, kind) in order */
    size_t stop_after; /* 0: never stop */
} diffs_t;

static uint64_t fnv(uint64_t h, const void *s, size_t n)
{
    const unsigned char *p = s;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}

static int collect(void *arg, const jsondiff_item_t *d)
{
    diffs_t *ds = arg;
    if (ds->n < MAX_DIFFS) {
        snprintf(ds->path[ds->n], JSONDIFF_PATH_MAX, "%s", d->path);
        snprintf(ds->shape[ds->n], JSONDIFF_PATH_MAX, "%s", d->shape);
        ds->kind[ds->n] = d->kind;
    }
    ds->hash = fnv(ds->hash, d->path, strlen(d->path) + 1);
    ds->hash = fnv(ds->hash, d->shape, strlen(d->shape) + 1);
    ds->hash = fnv(ds->hash, &d->kind, sizeof d->kind);
    ds->n++;
    return ds->stop_after && ds->n >= ds->stop_after;
}

static void diffs_reset(diffs_t *d, size_t stop_after)
{
    d->n = 0;
    d->hash = 1469598103934665603ULL;
    d->stop_after = stop_after;
}

/* ---- the reference: jansson trees, walked by the code the tape replaced ----
 *
 * Kept verbatim (renamed) from policies/jsondiff.c as it was before the tape,
 * so that the tape is held to the old behaviour, not to a re-implementation. */

typedef struct {
    const jsondiff_opts_t *o;
    jsondiff_cb cb;
    void *arg;
    char path[JSONDIFF_PATH_MAX];
    size_t plen;
    char shape[JSONDIFF_PATH_MAX];
    size_t slen;
    int overflow;          /* > 0 while inside a subtree whose path did not fit */
    int overflow_reported; /* that subtree already reported its one difference */
    size_t count;
    int stop;
} ref_walker_t;

typedef struct {
    size_t plen, slen;
    int overflowed;
} ref_mark_t;

/* Append "/" + escaped key to both buffers (the shape gets "*" for indices). */
static ref_mark_t ref_push(ref_walker_t *w, const char *key, size_t keylen, int is_index)
{
    ref_mark_t m = {w->plen, w->slen, 0};
    size_t need = 1;
    for (size_t i = 0; i < keylen; i++) need += (key[i] == '~' || key[i] == '/') ? 2 : 1;
    /* The shape is never longer than the path (an index has >= 1 digit). */
    if (w->overflow > 0 || w->plen + need >= sizeof(w->path)) {
        w->overflow++;
        m.overflowed = 1;
        return m;
    }
    char *p = w->path + w->plen;
    *p++ = '/';
    for (size_t i = 0; i < keylen; i++) {
        if (key[i] == '~') {
            *p++ = '~';
            *p++ = '0';
        } else if (key[i] == '/') {
            *p++ = '~';
            *p++ = '1';
        } else {
            *p++ = key[i];
        }
    }
    *p = '\0';
    w->plen += need;
    if (is_index) {
        memcpy(w->shape + w->slen, "/*", 3);
        w->slen += 2;
    } else {
        memcpy(w->shape + w->slen, w->path + m.plen, need + 1);
        w->slen += need;
    }
    return m;
}

static void ref_pop(ref_walker_t *w, ref_mark_t m)
{
    if (m.overflowed) {
        if (--w->overflow == 0) w->overflow_reported = 0;
        return;
    }
    w->plen = m.plen;
    w->slen = m.slen;
    w->path[w->plen] = '\0';
    w->shape[w->slen] = '\0';
}

static int ref_ignored(const ref_walker_t *w)
{
    if (w->overflow > 0) return 0;
    for (size_t i = 0; i < w->o->n_ignore; i++)
        if (strcmp(w->o->ignore[i], w->path) == 0 || strcmp(w->o->ignore[i], w->shape) == 0)
            return 1;
    return 0;
}

static void ref_report(ref_walker_t *w, jsondiff_kind_t kind)
{
    if (w->overflow > 0) {
        if (w->overflow_reported) return;
        w->overflow_reported = 1;
    }
    w->count++;
    if (w->cb) {
        jsondiff_item_t d = {w->path, w->shape, kind};
        if (w->cb(w->arg, &d) != 0) w->stop = 1;
    }
}

/* 0 number, 1 boolean, else the jansson type (distinct from those two). */
static int ref_type_class(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_INTEGER:
    case JSON_REAL:
        return 0;
    case JSON_TRUE:
    case JSON_FALSE:
        return 1;
    default:
        return 2 + (int)json_typeof(v);
    }
}

static int ref_numbers_equal(const json_t *a, const json_t *b, double tol)
{
    if (json_is_integer(a) && json_is_integer(b)) {
        json_int_t x = json_integer_value(a), y = json_integer_value(b);
        if (x == y) return 1;
        if (tol == 0) return 0;
    }
    return jsondiff_number_eq(json_number_value(a), json_number_value(b), tol);
}

static void ref_walk(ref_walker_t *w, const json_t *a, const json_t *b);

static void ref_walk_object(ref_walker_t *w, const json_t *a, const json_t *b)
{
    const char *key;
    size_t keylen;
    json_t *va;
    json_object_keylen_foreach((json_t *)a, key, keylen, va)
    {
        if (w->stop) return;
        ref_mark_t m = ref_push(w, key, keylen, 0);
        if (!ref_ignored(w)) {
            const json_t *vb = json_object_getn(b, key, keylen);
            if (vb == NULL)
                ref_report(w, JSONDIFF_MISSING);
            else
                ref_walk(w, va, vb);
        }
        ref_pop(w, m);
    }
    json_t *vb;
    json_object_keylen_foreach((json_t *)b, key, keylen, vb)
    {
        if (w->stop) return;
        if (json_object_getn(a, key, keylen) != NULL) continue;
        ref_mark_t m = ref_push(w, key, keylen, 0);
        if (!ref_ignored(w)) ref_report(w, JSONDIFF_EXTRA);
        ref_pop(w, m);
    }
}

static void ref_walk_array(ref_walker_t *w, const json_t *a, const json_t *b)
{
    size_t na = json_array_size(a), nb = json_array_size(b);
    if (na != nb) ref_report(w, JSONDIFF_LENGTH);
    size_t n = na < nb ? na : nb;
    for (size_t i = 0; i < n && !w->stop; i++) {
        char idx[24];
        int len = snprintf(idx, sizeof(idx), "%zu", i);
        ref_mark_t m = ref_push(w, idx, (size_t)len, 1);
        if (!ref_ignored(w)) ref_walk(w, json_array_get(a, i), json_array_get(b, i));
        ref_pop(w, m);
    }
}

static void ref_walk(ref_walker_t *w, const json_t *a, const json_t *b)
{
    if (w->stop) return;
    int ca = ref_type_class(a), cb = ref_type_class(b);
    if (ca != cb) {
        ref_report(w, JSONDIFF_TYPE);
        return;
    }
    switch (json_typeof(a)) {
    case JSON_OBJECT:
        ref_walk_object(w, a, b);
        break;
    case JSON_ARRAY:
        ref_walk_array(w, a, b);
        break;
    case JSON_STRING:
        if (json_string_length(a) != json_string_length(b) ||
            memcmp(json_string_value(a), json_string_value(b), json_string_length(a)) != 0)
            ref_report(w, JSONDIFF_VALUE);
        break;
    case JSON_INTEGER:
    case JSON_REAL:
        if (!ref_numbers_equal(a, b, w->o->tolerance)) ref_report(w, JSONDIFF_VALUE);
        break;
    case JSON_TRUE:
    case JSON_FALSE:
        if (json_typeof(a) != json_typeof(b)) ref_report(w, JSONDIFF_VALUE);
        break;
    case JSON_NULL:
        break;
    }
}

static size_t ref_jsondiff(const json_t *a, const json_t *b, const jsondiff_opts_t *o,
                           jsondiff_cb cb, void *arg)
{
    static const jsondiff_opts_t none = {0, NULL, 0};
    ref_walker_t w;
    w.o = o ? o : &none;
    w.cb = cb;
    w.arg = arg;
    w.path[0] = w.shape[0] = '\0';
    w.plen = w.slen = 0;
    w.overflow = w.overflow_reported = 0;
    w.count = 0;
    w.stop = 0;
    if (!ref_ignored(&w)) ref_walk(&w, a, b);
    return w.count;
}

/* ---- the two pipelines ---- */

static json_t *jansson_load(const char *s, size_t n)
{
    return json_loadb(s, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
}

/* What shadow did before: parse with jansson, walk the trees. */
static size_t reference(const char *a, size_t na, const char *b, size_t nb,
                        const jsondiff_opts_t *o, diffs_t *out)
{
    json_t *ja = jansson_load(a, na), *jb = jansson_load(b, nb);
    size_t n = JSONDIFF_NOT_JSON;
    if (ja != NULL && jb != NULL) n = ref_jsondiff(ja, jb, o, collect, out);
    json_decref(ja);
    json_decref(jb);
    return n;
}

/* Reused like the shadow policy reuses its documents. */
static jsondiff_doc_t doc_a, doc_b;

static size_t tape(const char *a, size_t na, const char *b, size_t nb, const jsondiff_opts_t *o,
                   diffs_t *out)
{
    jsondiff_doc_parse(&doc_a, a, na);
    jsondiff_doc_parse(&doc_b, b, nb);
    return jsondiff(&doc_a, &doc_b, o, collect, out);
}

/* A printable excerpt of a text for failure messages. */
static const char *show(const char *s, size_t n)
{
    static char buf[2][200];
    static int which;
    char *o = buf[which ^= 1];
    size_t k = 0;
    for (size_t i = 0; i < n && k + 8 < sizeof buf[0]; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f)
            o[k++] = (char)c;
        else
            k += (size_t)snprintf(o + k, 5, "\\x%02x", c);
    }
    o[k] = '\0';
    return o;
}

static diffs_t ref_d, tape_d;

static const char *item(const diffs_t *d, size_t i, int what)
{
    static char kind[2][16];
    if (i >= d->n || i >= MAX_DIFFS) return "-";
    if (what == 0) return d->path[i];
    if (what == 1) return d->shape[i];
    snprintf(kind[d == &ref_d], sizeof kind[0], "%s", jsondiff_kind_name(d->kind[i]));
    return kind[d == &ref_d];
}

/* Both pipelines on (a, b); fails unless they agree in every detail. Returns
 * the count (JSONDIFF_NOT_JSON when either text is not JSON); `out`, when
 * given, gets the differences. */
static size_t same(const char *a, size_t na, const char *b, size_t nb, const jsondiff_opts_t *o,
                   size_t stop_after, diffs_t *out)
{
    diffs_reset(&ref_d, stop_after);
    diffs_reset(&tape_d, stop_after);
    size_t nr = reference(a, na, b, nb, o, &ref_d);
    size_t nt = tape(a, na, b, nb, o, &tape_d);
    if (nr != nt || ref_d.n != tape_d.n || ref_d.hash != tape_d.hash) {
        size_t i = 0;
        while (i < ref_d.n && i < tape_d.n && i < MAX_DIFFS &&
               strcmp(ref_d.path[i], tape_d.path[i]) == 0 &&
               strcmp(ref_d.shape[i], tape_d.shape[i]) == 0 && ref_d.kind[i] == tape_d.kind[i])
            i++;
        fail_msg("jansson and tape disagree on\n  a = %s\n  b = %s\n  count %zu vs %zu; "
                 "first difference #%zu: jansson %s %s %s, tape %s %s %s",
                 show(a, na), show(b, nb), nr, nt, i, item(&ref_d, i, 0), item(&ref_d, i, 1),
                 item(&ref_d, i, 2), item(&tape_d, i, 0), item(&tape_d, i, 1), item(&tape_d, i, 2));
    }
    if (out) *out = tape_d;
    return nt;
}

/* Differences between a and b with tolerance tol and the given ignores. */
static size_t diff(const char *a, const char *b, double tol, const char *const *ignore,
                   size_t n_ignore, diffs_t *out)
{
    jsondiff_opts_t o = {tol, ignore, n_ignore};
    size_t n = same(a, strlen(a), b, strlen(b), &o, 0, out);
    if (n == JSONDIFF_NOT_JSON) fail_msg("bad test JSON: %s or %s", a, b);
    return n;
}

/* 1 if the text is JSON (and jansson agrees). */
static int is_json(const char *s, size_t n)
{
    json_t *j = jansson_load(s, n);
    int ref = j != NULL;
    json_decref(j);
    int ok = jsondiff_doc_parse(&doc_a, s, n) == 0;
    if (ok != ref)
        fail_msg("jansson says %s, tape says %s: %s", ref ? "JSON" : "not JSON",
                 ok ? "JSON" : "not JSON", show(s, n));
    return ok;
}

#define IS_JSON(lit) is_json(lit, sizeof(lit) - 1)

/* ---- behaviour ---- */

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
    /* Large integers compare exactly with tolerance 0... */
    assert_int_equal(diff("[9007199254740993]", "[9007199254740992]", 0, NULL, 0, &d), 1);
    /* ...and as doubles (the same double here) with any other. */
    assert_int_equal(diff("[9007199254740993]", "[9007199254740992]", 1e-300, NULL, 0, &d), 0);
    /* The same value written differently. */
    assert_int_equal(diff("[-0, 0.5, 100, 1e-999]", "[0, 5e-1, 1E2, 0]", 0, NULL, 0, &d), 0);
    /* Reals too long for the fast conversion go through strtod. */
    char a[400], b[400];
    memset(a, '3', 300);
    memcpy(a, "[0.", 3);
    memcpy(a + 300, "e-280]", 7);
    memcpy(b, a, sizeof a);
    b[299] = '4';
    assert_int_equal(diff(a, b, 0, NULL, 0, &d), 0); /* the same double */
    b[10] = '4';
    assert_int_equal(diff(a, b, 0, NULL, 0, &d), 1);
    assert_int_equal(diff(a, b, 1e-6, NULL, 0, &d), 0);
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
    /* The key is unescaped first: "\/" is "/", and non-ASCII stays UTF-8. */
    assert_int_equal(
        diff("{\"a\\/b\":1,\"\\u00e9\":1}", "{\"a/b\":2,\"\xc3\xa9\":2}", 0, NULL, 0, &d), 2);
    assert_string_equal(d.path[0], "/a~1b");
    assert_string_equal(d.path[1], "/\xc3\xa9");
}

static void strings_and_keys_compare_unescaped(void **state)
{
    diffs_t d;
    (void)state;
    assert_int_equal(diff("[\"a\", \"\\u00e9\", \"\\ud834\\udd1e\", \"\\/\\n\"]",
                          "[\"\\u0061\", \"\xc3\xa9\", \"\xf0\x9d\x84\x9e\", \"/\\u000A\"]", 0,
                          NULL, 0, &d),
                     0);
    assert_int_equal(diff("{\"\\u0061\":1}", "{\"a\":1}", 0, NULL, 0, &d), 0);
    assert_int_equal(diff("[\"a\\u0000\"]", "[\"a\"]", 0, NULL, 0, &d), 1);
}

static void strings_with_nul_compare_by_length(void **state)
{
    diffs_t d;
    (void)state;
    assert_int_equal(diff("\"ab\\u0000c\"", "\"ab\\u0000d\"", 0, NULL, 0, &d), 1);
    assert_int_equal(diff("\"ab\\u0000c\"", "\"ab\\u0000c\"", 0, NULL, 0, &d), 0);
}

static void duplicate_keys_keep_the_first_place_and_the_last_value(void **state)
{
    diffs_t d;
    (void)state;
    assert_int_equal(diff("{\"a\":1,\"b\":2,\"a\":3}", "{\"b\":2,\"a\":3}", 0, NULL, 0, &d), 0);
    assert_int_equal(diff("{\"a\":1,\"a\":2}", "{\"a\":1}", 0, NULL, 0, &d), 1);
    assert_string_equal(d.path[0], "/a");
    /* Order of the differences: "b" is first in a, though its value is last. */
    assert_int_equal(
        diff("{\"b\":1,\"a\":1,\"b\":2}", "{\"a\":2,\"b\":3,\"c\":1,\"c\":2}", 0, NULL, 0, &d), 3);
    assert_string_equal(d.path[0], "/b");
    assert_string_equal(d.path[1], "/a");
    assert_string_equal(d.path[2], "/c");
    assert_int_equal(d.kind[2], JSONDIFF_EXTRA);
}

static void callback_can_stop_the_walk(void **state)
{
    diffs_t d;
    jsondiff_opts_t o = {0, NULL, 0};
    (void)state;
    assert_int_equal(same("[1,2,3,4,5]", 11, "[6,7,8,9,10]", 12, &o, 2, &d), 2);
    assert_int_equal(d.n, 2);
    assert_int_equal(same("[1,2,3,4,5]", 11, "[6,7,8,9,10]", 12, &o, 0, &d), 5);
    jsondiff_doc_parse(&doc_a, "[1,2,3,4,5]", 11);
    jsondiff_doc_parse(&doc_b, "[6,7,8,9,10]", 12);
    assert_int_equal(jsondiff(&doc_a, &doc_b, NULL, NULL, NULL), 5);
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

static void long_keys_overflow_the_path_like_deep_ones(void **state)
{
    char a[2048], b[2048], key[400];
    (void)state;
    memset(key, 'k', 299);
    key[299] = '\0';
    /* A raw key of 299 bytes, a shorter one with escapes, one that fits. */
    snprintf(a, sizeof a, "{\"x\":{\"%s\":1,\"%s~\\/\":[1],\"y\":1}}", key, key + 200);
    snprintf(b, sizeof b, "{\"x\":{\"%s\":2,\"%s~/\":[2],\"y\":2}}", key, key + 200);
    assert_int_equal(diff(a, b, 0, NULL, 0, NULL), 3);
    snprintf(a, sizeof a, "{\"x\":{\"%s\\u00e9\":1}}", key);
    snprintf(b, sizeof b, "{\"x\":{\"%s\xc3\xa9\":2}}", key);
    assert_int_equal(diff(a, b, 0, NULL, 0, NULL), 1);
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

/* ---- what counts as JSON ---- */

static void grammar_is_jansson_s(void **state)
{
    (void)state;
    assert_true(IS_JSON(" {\"a\" : [1, 2.5e-3, true, false, null, \"x\"]}\r\n\t"));
    assert_true(IS_JSON("1"));
    assert_true(IS_JSON("\"only a string\""));
    assert_true(IS_JSON("[]"));
    assert_true(IS_JSON("{ }"));
    assert_false(IS_JSON(""));
    assert_false(IS_JSON("  "));
    assert_false(IS_JSON("1 2"));
    assert_false(IS_JSON("{} x"));
    assert_false(IS_JSON("[1]]"));
    assert_false(IS_JSON("[1,]"));
    assert_false(IS_JSON("[,1]"));
    assert_false(IS_JSON("{\"a\":1,}"));
    assert_false(IS_JSON("{\"a\" 1}"));
    assert_false(IS_JSON("{1:2}"));
    assert_false(IS_JSON("{\"a\"}"));
    assert_false(IS_JSON("[1,2"));
    assert_false(IS_JSON("{\"a\":1"));
    assert_false(IS_JSON("nul"));
    assert_false(IS_JSON("truex"));
    assert_false(IS_JSON("True"));
    assert_false(IS_JSON("[true1]"));
    assert_false(IS_JSON("NaN"));
    assert_false(IS_JSON("Infinity"));
    assert_false(IS_JSON("\xef\xbb\xbf{}")); /* a BOM */
    assert_false(IS_JSON("[1]\0"));
    assert_false(IS_JSON("\f1"));
}

/* A jansson quirk the tape keeps: one NUL byte right after a number or a
 * literal is skipped (its lexer puts the byte back, and a NUL put back is lost). */
static void a_nul_after_a_number_or_literal_is_skipped_like_jansson(void **state)
{
    (void)state;
    assert_true(IS_JSON("1\0"));
    assert_true(IS_JSON("[1\0]"));
    assert_true(IS_JSON("[1.5e3\0 ]"));
    assert_true(IS_JSON("[true\0,null\0,false\0]"));
    assert_true(IS_JSON("{\"a\":1\0}"));
    assert_false(IS_JSON("[1\0\0]"));
    assert_false(IS_JSON("[\"a\"\0]"));
    assert_false(IS_JSON("[]\0"));
    assert_false(IS_JSON("[\0 1]"));
    assert_false(IS_JSON("-\0"));
    assert_int_equal(same("[1,true]", 8, "[1\0,true]", 9, NULL, 0, NULL), 0);
}

static void numbers_are_jansson_s(void **state)
{
    (void)state;
    assert_true(IS_JSON("-0"));
    assert_true(IS_JSON("-0.0e-0"));
    assert_true(IS_JSON("1E5"));
    assert_true(IS_JSON("1.5e+3"));
    assert_true(IS_JSON("0e0"));
    assert_false(IS_JSON("01"));
    assert_false(IS_JSON("-01"));
    assert_false(IS_JSON("00"));
    assert_false(IS_JSON("-"));
    assert_false(IS_JSON("-a"));
    assert_false(IS_JSON("1."));
    assert_false(IS_JSON("1.e5"));
    assert_false(IS_JSON("1e"));
    assert_false(IS_JSON("1e+"));
    assert_false(IS_JSON(".5"));
    assert_false(IS_JSON("+1"));
    assert_false(IS_JSON("0x10"));
    /* Integers are int64 ("too big integer"). */
    assert_true(IS_JSON("9223372036854775807"));
    assert_false(IS_JSON("9223372036854775808"));
    assert_true(IS_JSON("-9223372036854775808"));
    assert_false(IS_JSON("-9223372036854775809"));
    assert_false(IS_JSON("12345678901234567890"));
    assert_true(IS_JSON("1234567890123456789"));
    assert_true(IS_JSON("9223372036854775808.0")); /* a real */
    /* Reals must not overflow a double ("real number overflow"); underflow is fine. */
    assert_false(IS_JSON("1e999"));
    assert_false(IS_JSON("[-1e999]"));
    assert_false(IS_JSON("1e309"));
    assert_false(IS_JSON("10e308"));
    assert_false(IS_JSON("1.7976931348623159e308"));
    assert_false(IS_JSON("1e99999999999999999999999"));
    assert_true(IS_JSON("1.7976931348623157e308"));
    assert_true(IS_JSON("1.7976931348623158e308")); /* rounds down to DBL_MAX */
    assert_true(IS_JSON("0.1e309"));
    assert_true(IS_JSON("0.00000000000000000001e328"));
    assert_true(IS_JSON("0e99999"));
    assert_true(IS_JSON("0.000e999999999999999999"));
    assert_true(IS_JSON("1e-999"));
    assert_true(IS_JSON("1e-99999999999999999999999"));
    assert_true(IS_JSON("4.9e-324"));
    char big[400];
    memset(big, '9', 309);
    assert_false(is_json(big, 309)); /* an integer */
    big[308] = '.';
    big[309] = '9';
    assert_true(is_json(big, 310)); /* 99..9.99 < DBL_MAX */
    memset(big, '9', 310);
    big[309] = '.';
    big[310] = '5';
    assert_false(is_json(big, 311));
}

static void strings_are_jansson_s(void **state)
{
    (void)state;
    assert_true(IS_JSON("\"\x7f\""));
    assert_true(IS_JSON("\"\xc3\xa9\xe2\x82\xac\xf0\x9d\x84\x9e\"")); /* é € 𝄞 */
    assert_true(IS_JSON("\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00E9\\uD834\\uDD1E\""));
    assert_true(IS_JSON("\"\\u0000\""));
    assert_true(IS_JSON("{\"a\":\"\\u0000\"}"));
    assert_false(IS_JSON("{\"\\u0000\":1}")); /* NUL byte in object key */
    assert_false(IS_JSON("{\"a\\u0000b\":1}"));
    assert_false(IS_JSON("\"abc"));
    assert_false(IS_JSON("\"a\nb\""));
    assert_false(IS_JSON("\"\t\""));
    assert_false(IS_JSON("\"\x1f\""));
    assert_false(is_json("\"a\0b\"", 5));
    assert_false(IS_JSON("\"\\x\""));
    assert_false(IS_JSON("\"\\'\""));
    assert_false(IS_JSON("\"\\u12\""));
    assert_false(IS_JSON("\"\\u12G4\""));
    assert_false(IS_JSON("\"\\"));
    assert_false(IS_JSON("\"\\ud800\""));        /* lone high surrogate */
    assert_false(IS_JSON("\"\\udc00\""));        /* lone low surrogate */
    assert_false(IS_JSON("\"\\ud800\\n\""));     /* not followed by \u */
    assert_false(IS_JSON("\"\\ud800\\ud800\"")); /* followed by another high one */
    assert_false(IS_JSON("\"\\ud800\\u0041\""));
    assert_false(IS_JSON("\"\\ud800x\\udc00\""));
    assert_true(IS_JSON("\"\\udbff\\udfff\""));
    /* Invalid UTF-8: continuation first, overlong, surrogate, > U+10FFFF, cut short. */
    assert_false(IS_JSON("\"\x80\""));
    assert_false(IS_JSON("\"\xc0\x80\""));
    assert_false(IS_JSON("\"\xc1\xbf\""));
    assert_false(IS_JSON("\"\xe0\x80\x80\""));
    assert_false(IS_JSON("\"\xe0\x9f\xbf\""));
    assert_false(IS_JSON("\"\xed\xa0\x80\""));
    assert_false(IS_JSON("\"\xf0\x8f\xbf\xbf\""));
    assert_false(IS_JSON("\"\xf4\x90\x80\x80\""));
    assert_false(IS_JSON("\"\xf5\x80\x80\x80\""));
    assert_false(IS_JSON("\"\xff\""));
    assert_false(IS_JSON("\"\xe2\x82\""));
    assert_false(is_json("\"\xe2\x82", 3));
    assert_false(IS_JSON("\xc3\xa9"));
    assert_true(
        IS_JSON("\"\xe0\xa0\x80\xed\x9f\xbf\xee\x80\x80\xf0\x90\x80\x80\xf4\x8f\xbf\xbf\""));
}

/* n nested containers, `open` and `close` each, around `inner`. */
static char *nest(size_t n, const char *open, const char *close, const char *inner)
{
    size_t lo = strlen(open), lc = strlen(close), li = strlen(inner);
    char *s = malloc(n * (lo + lc) + li + 1), *p = s;
    for (size_t i = 0; i < n; i++, p += lo) memcpy(p, open, lo);
    memcpy(p, inner, li);
    p += li;
    for (size_t i = 0; i < n; i++, p += lc) memcpy(p, close, lc);
    *p = '\0';
    return s;
}

static void depth_limit_is_jansson_s(void **state)
{
    static const struct {
        size_t n;
        const char *open, *close, *inner;
        int ok;
    } cases[] = {
        {JSONDIFF_DEPTH_MAX, "[", "]", "", 1},             /* the innermost array at 2048 */
        {JSONDIFF_DEPTH_MAX + 1, "[", "]", "", 0},         /* ... at 2049 */
        {JSONDIFF_DEPTH_MAX - 1, "[", "]", "1", 1},        /* a scalar at 2048 */
        {JSONDIFF_DEPTH_MAX, "[", "]", "1", 0},            /* ... at 2049 */
        {JSONDIFF_DEPTH_MAX, "{\"a\":", "}", "{}", 0},     /* {} at 2049 */
        {JSONDIFF_DEPTH_MAX - 1, "{\"a\":", "}", "{}", 1}, /* {} at 2048 */
        {JSONDIFF_DEPTH_MAX / 2, "{\"a\":[", "]}", "", 1}, /* two levels a step */
        {JSONDIFF_DEPTH_MAX / 2, "{\"a\":[", "]}", "1", 0},
    };
    (void)state;
    assert_int_equal(JSONDIFF_DEPTH_MAX, JSON_PARSER_MAX_DEPTH);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *s = nest(cases[i].n, cases[i].open, cases[i].close, cases[i].inner);
        assert_int_equal(is_json(s, strlen(s)), cases[i].ok);
        /* Deep documents compare like shallow ones. */
        if (cases[i].ok) {
            char *t = nest(cases[i].n - 1, cases[i].open, cases[i].close,
                           cases[i].inner[0] == '1' ? "[2]" : "[]");
            same(s, strlen(s), t, strlen(t), NULL, 0, NULL);
            free(t);
        }
        free(s);
    }
}

static void texts_that_are_not_json_are_reported_as_such(void **state)
{
    jsondiff_opts_t o = {0, NULL, 0};
    (void)state;
    assert_true(same("{\"a\":1}", 7, "{\"a\":1", 6, &o, 0, NULL) == JSONDIFF_NOT_JSON);
    assert_true(same("1e999", 5, "1", 1, &o, 0, NULL) == JSONDIFF_NOT_JSON);
    assert_true(same("", 0, "", 0, &o, 0, NULL) == JSONDIFF_NOT_JSON);
}

/* ---- objects of any size ---- */

/* {"k<i>": i*mul, ...}, n members in the order i = j*step mod n, plus two
 * duplicates of earlier keys when `dup`. */
static char *big_object(size_t n, size_t step, int mul, int dup)
{
    char *s = malloc(n * 40 + 64), *p = s;
    *p++ = '{';
    for (size_t j = 0; j < n; j++) {
        size_t k = (j * step) % n;
        p += sprintf(p, "%s\"k%zu\":%d", j ? "," : "", k, (int)k * mul);
    }
    if (dup) p += sprintf(p, ",\"k%zu\":-1,\"k%zu\":-2", n / 2, n / 3);
    *p++ = '}';
    *p = '\0';
    return s;
}

static void large_objects_compare_by_key(void **state)
{
    diffs_t d;
    jsondiff_opts_t o = {0, NULL, 0};
    (void)state;
    /* 20 011 is prime: every step is a permutation. */
    char *a = big_object(20011, 1, 1, 0), *b = big_object(20011, 7919, 1, 0);
    assert_int_equal(same(a, strlen(a), b, strlen(b), &o, 0, NULL), 0);
    free(b);
    b = big_object(20011, 7919, 2, 1);
    assert_int_equal(same(a, strlen(a), b, strlen(b), &o, 0, &d), 20010);
    free(b);
    /* Objects around the linear-scan size, with and without duplicates. */
    for (size_t n = 1; n < 40; n++) {
        char *x = big_object(n, 1, 1, n % 2), *y = big_object(n + n % 3, 5, 1, n % 3 == 0);
        same(x, strlen(x), y, strlen(y), &o, 0, NULL);
        same(y, strlen(y), x, strlen(x), &o, 0, NULL);
        free(x);
        free(y);
    }
    free(a);
}

static void trimmed_documents_are_reusable(void **state)
{
    jsondiff_opts_t o = {0, NULL, 0};
    (void)state;
    char *a = big_object(5000, 1, 1, 1), *b = big_object(5000, 3, 1, 0);
    assert_int_equal(same(a, strlen(a), b, strlen(b), &o, 0, NULL), 2);
    jsondiff_doc_trim(&doc_a, 1024);
    jsondiff_doc_trim(&doc_b, 1 << 30);
    assert_null(doc_a.tok);
    assert_non_null(doc_b.tok);
    assert_true(jsondiff(&doc_a, &doc_b, &o, NULL, NULL) == JSONDIFF_NOT_JSON);
    assert_int_equal(same(b, strlen(b), a, strlen(a), &o, 0, NULL), 2);
    free(a);
    free(b);
}

/* ---- random documents ---- */

typedef struct node {
    int type; /* 'o' object, 'a' array, 's' string, 'n' number, 't', 'f', 'z' (null) */
    char *s;  /* string: UTF-8 bytes (may hold NUL); number: its text */
    size_t len;
    struct node **kids;
    char **keys; /* objects: UTF-8, no NUL */
    size_t n;
} node_t;

typedef struct {
    char *p;
    size_t n, cap;
} buf_t;

static void put(buf_t *b, const void *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        while (b->n + n + 1 > b->cap) b->cap = b->cap ? b->cap * 2 : 256;
        b->p = realloc(b->p, b->cap);
    }
    if (n > 0) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void put_str(buf_t *b, const char *s)
{
    put(b, s, strlen(s));
}

static mm_rng_t rng;

static size_t below(size_t n)
{
    return (size_t)mm_rng_below(&rng, n);
}

static int chance(double p)
{
    return mm_rng_uniform(&rng) < p;
}

static char *dupn(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

/* Keys that collide on purpose: short, with "/" and "~", non-ASCII, empty. */
static const char *const key_pool[] = {"a",  "b",  "id",       "score",        "x/y", "m~n", "~1",
                                       "/",  "",   "\xc3\xa9", "\xe6\x97\xa5", "ts",  "k0",  "k1",
                                       "k2", "k3", "k4",       "k5",           "k6",  "k7",  "a b",
                                       "\"", "\\", "\t",       "\x7f"};

static const char *const ignore_pool[] = {
    "",     "/a",   "/items/*/ts", "/x~1y",  "/m~0n",     "/items", "/0",   "/*",
    "/b/*", "/*/a", "/score",      "/a/0/b", "/\xc3\xa9", "/~01",   "/a/a", "/*/*"};

static char *random_key(void)
{
    if (chance(0.9)) return strdup(key_pool[below(sizeof key_pool / sizeof key_pool[0])]);
    char k[64];
    size_t n = below(3) == 0 ? 40 + below(20) : 1 + below(6);
    for (size_t i = 0; i < n; i++) k[i] = (char)('a' + below(3));
    k[n] = '\0';
    return strdup(k);
}

/* A number's text: ints and reals, near the edges too. */
static char *random_number(void)
{
    static const char *const fixed[] = {
        "0",
        "-0",
        "0.0",
        "-0.0",
        "9223372036854775807",
        "-9223372036854775808",
        "9007199254740993",
        "9007199254740992",
        "1e308",
        "1.7976931348623157e308",
        "1e-400",
        "4.9e-324",
        "2.2250738585072014e-308",
        "123456789012345678901234567890.5",
        "0.000000000000000000000001",
        "1e22",
        "1e23",
        "9007199254740993.0",
        "0.1",
        "0.30000000000000004",
        "1E+2",
        "100e-2",
    };
    char t[64];
    switch (below(6)) {
    case 0:
        return strdup(fixed[below(sizeof fixed / sizeof fixed[0])]);
    case 1:
    case 2:
        snprintf(t, sizeof t, "%lld", (long long)below(2001) - 1000);
        return strdup(t);
    case 3: {
        uint64_t bits = mm_rng_next(&rng);
        snprintf(t, sizeof t, "%lld", (long long)(bits >> (1 + below(63))));
        return strdup(t);
    }
    default: {
        double u = mm_rng_uniform(&rng) - 0.5; /* one draw per statement: same pairs anywhere */
        double x = u * pow(10, (double)below(40) - 20);
        int prec = 1 + (int)below(17);
        snprintf(t, sizeof t, below(2) ? "%.*g" : "%.*e", prec, x);
        if (!strpbrk(t, ".eE")) strcat(t, below(2) ? ".0" : "e0");
        return strdup(t);
    }
    }
}

static size_t utf8_put(uint32_t cp, unsigned char *u)
{
    if (cp < 0x80) {
        u[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        u[0] = (unsigned char)(0xC0 | (cp >> 6));
        u[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        u[0] = (unsigned char)(0xE0 | (cp >> 12));
        u[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    u[0] = (unsigned char)(0xF0 | (cp >> 18));
    u[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    u[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    u[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Random code points as UTF-8, NUL and controls included. */
static void random_string(node_t *n)
{
    static const uint32_t cps[] = {'a',  'b',    'z',    ' ',     '"',      '\\',  '/',   '\b',
                                   '\f', '\n',   '\r',   '\t',    0,        1,     0x1f,  0x7f,
                                   0xe9, 0x20ac, 0xfeff, 0x1d11e, 0x10ffff, 0x800, 0x7ff, 0xffff};
    buf_t b = {NULL, 0, 0};
    put(&b, "", 0);
    size_t len = below(4) == 0 ? below(40) : below(5);
    for (size_t i = 0; i < len; i++) {
        uint32_t cp =
            chance(0.5) ? (uint32_t)('a' + below(4)) : cps[below(sizeof cps / sizeof cps[0])];
        unsigned char u[4];
        put(&b, u, utf8_put(cp, u));
    }
    n->s = b.p;
    n->len = b.n;
}

static node_t *random_node(int depth)
{
    node_t *n = calloc(1, sizeof *n);
    size_t r = depth <= 0 ? 3 + below(6) : below(9);
    switch (r) {
    case 0:
    case 1:
        n->type = 'o';
        break;
    case 2:
        n->type = 'a';
        break;
    case 3:
    case 4:
        n->type = 's';
        random_string(n);
        return n;
    case 5:
    case 6:
        n->type = 'n';
        n->s = random_number();
        n->len = strlen(n->s);
        return n;
    default:
        n->type = "tfz"[below(3)];
        return n;
    }
    n->n = below(4) == 0 ? below(14) : below(5);
    n->kids = calloc(n->n + 1, sizeof *n->kids);
    if (n->type == 'o') n->keys = calloc(n->n + 1, sizeof *n->keys);
    for (size_t i = 0; i < n->n; i++) {
        n->kids[i] = random_node(depth - 1 - (int)below(2));
        if (n->keys) n->keys[i] = random_key();
    }
    return n;
}

static void free_node(node_t *n)
{
    if (n == NULL) return;
    for (size_t i = 0; i < n->n; i++) {
        free_node(n->kids[i]);
        if (n->keys) free(n->keys[i]);
    }
    free(n->kids);
    free(n->keys);
    free(n->s);
    free(n);
}

/* A number near `text`: the same value written otherwise, an integer off by
 * one, or a real just inside, at or outside the tolerance. */
static char *nearby_number(const char *text, double tol)
{
    static const double f[] = {0.0, 0.5, 0.999, 1.0, 1.001, 2.0, -1.0, 1e3};
    char t[64];
    double x = strtod(text, NULL);
    if (!isfinite(x)) return strdup(text);
    switch (below(4)) {
    case 0:
        snprintf(t, sizeof t, "%.17g", x);
        if (!strpbrk(t, ".eE") && below(2)) strcat(t, ".0");
        return strdup(t);
    case 1:
        if (!strpbrk(text, ".eE")) {
            long long v = strtoll(text, NULL, 10);
            snprintf(t, sizeof t, "%lld", v < LLONG_MAX ? v + 1 : v - 1);
            return strdup(t);
        }
        /* fall through */
    default: {
        double m = fabs(x) > 1 ? fabs(x) : 1;
        double y = x + f[below(sizeof f / sizeof f[0])] * (tol > 0 ? tol : 1e-9) * m;
        if (!isfinite(y)) return strdup(text);
        snprintf(t, sizeof t, "%.*g", (int)(10 + below(8)), y);
        if (!strpbrk(t, ".eE")) strcat(t, ".0");
        return strdup(t);
    }
    }
}

/* A copy of n with random changes of every kind the comparison reports. */
static node_t *mutate(const node_t *n, double p, double tol)
{
    if (chance(p / 4)) return random_node((int)below(3)); /* another value altogether */
    node_t *m = calloc(1, sizeof *m);
    m->type = n->type;
    m->len = n->len;
    m->s = n->s ? dupn(n->s, n->len) : NULL;
    if (n->type == 's' && chance(p)) {
        free(m->s);
        random_string(m);
    } else if (n->type == 'n' && chance(2 * p)) {
        free(m->s);
        m->s = nearby_number(n->s, tol);
        m->len = strlen(m->s);
    } else if ((n->type == 't' || n->type == 'f') && chance(p)) {
        m->type = n->type == 't' ? 'f' : 't';
    }
    if (n->type != 'o' && n->type != 'a') return m;
    /* Children: copied, some dropped, some added, object members shuffled. */
    m->kids = calloc(n->n + 4, sizeof *m->kids);
    if (n->keys) m->keys = calloc(n->n + 4, sizeof *m->keys);
    for (size_t i = 0; i < n->n; i++) {
        if (chance(p / 2)) continue;
        m->kids[m->n] = mutate(n->kids[i], p, tol);
        if (m->keys) m->keys[m->n] = strdup(chance(p / 4) ? key_pool[below(8)] : n->keys[i]);
        m->n++;
    }
    for (int k = 0; k < 3 && chance(p / 2); k++) {
        m->kids[m->n] = random_node(1);
        if (m->keys) m->keys[m->n] = random_key();
        m->n++;
    }
    if (m->keys && m->n > 1 && chance(0.7)) {
        for (size_t i = m->n - 1; i > 0; i--) {
            size_t j = below(i + 1);
            node_t *t = m->kids[i];
            m->kids[i] = m->kids[j];
            m->kids[j] = t;
            char *k = m->keys[i];
            m->keys[i] = m->keys[j];
            m->keys[j] = k;
        }
    }
    return m;
}

static void ws(buf_t *b)
{
    static const char *const w[] = {" ", "\n", "\t", "\r", "  \n  "};
    if (chance(0.15)) put_str(b, w[below(5)]);
}

/* The letter of a two-character escape for cp, or 0. */
static char short_escape(uint32_t cp)
{
    switch (cp) {
    case '"':
    case '\\':
    case '/':
        return (char)cp;
    case '\b':
        return 'b';
    case '\f':
        return 'f';
    case '\n':
        return 'n';
    case '\r':
        return 'r';
    case '\t':
        return 't';
    }
    return 0;
}

/* Write UTF-8 bytes s[0..n) as a JSON string, each character escaped or not at random. */
static void write_string(buf_t *b, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s, *e = p + n;
    put(b, "\"", 1);
    while (p < e) {
        size_t k = *p < 0x80 ? 1 : *p < 0xE0 ? 2 : *p < 0xF0 ? 3 : 4;
        uint32_t cp = k == 1 ? *p : k == 2 ? (*p & 0x1Fu) : k == 3 ? (*p & 0x0Fu) : (*p & 0x07u);
        for (size_t i = 1; i < k; i++) cp = (cp << 6) | (p[i] & 0x3Fu);
        int must = cp < 0x20 || cp == '"' || cp == '\\';
        char t[16];
        if (!must && chance(0.7)) {
            put(b, p, k);
        } else if (short_escape(cp) && chance(0.8)) {
            t[0] = '\\';
            t[1] = short_escape(cp);
            put(b, t, 2);
        } else if (cp < 0x10000) {
            snprintf(t, sizeof t, chance(0.5) ? "\\u%04x" : "\\u%04X", (unsigned)cp);
            put_str(b, t);
        } else {
            uint32_t v = cp - 0x10000;
            snprintf(t, sizeof t, "\\u%04x\\u%04X", (unsigned)(0xD800 + (v >> 10)),
                     (unsigned)(0xDC00 + (v & 0x3FF)));
            put_str(b, t);
        }
        p += k;
    }
    put(b, "\"", 1);
}

static void write_node(buf_t *b, const node_t *n)
{
    ws(b);
    switch (n->type) {
    case 'o':
    case 'a':
        put(b, n->type == 'o' ? "{" : "[", 1);
        for (size_t i = 0; i < n->n; i++) {
            if (i) put(b, ",", 1);
            if (n->keys) {
                ws(b);
                write_string(b, n->keys[i], strlen(n->keys[i]));
                ws(b);
                put(b, ":", 1);
            }
            write_node(b, n->kids[i]);
        }
        ws(b);
        put(b, n->type == 'o' ? "}" : "]", 1);
        break;
    case 's':
        write_string(b, n->s, n->len);
        break;
    case 'n':
        put(b, n->s, n->len);
        break;
    default:
        put_str(b, n->type == 't' ? "true" : n->type == 'f' ? "false" : "null");
        break;
    }
    ws(b);
}

/* Byte-level damage: most of it makes the text invalid, some of it not. */
static void corrupt(buf_t *b)
{
    static const char bytes[] = {'\0', '\x01', '\x80', '\xc3', '\xed', '\xff', '"', '\\', ',',
                                 ']',  '}',    '{',    '[',    ':',    '0',    '-', 'e',  ' '};
    if (b->n == 0) return;
    size_t at = below(b->n);
    char c = bytes[below(sizeof bytes)];
    switch (below(4)) {
    case 0: /* replace */
        b->p[at] = c;
        break;
    case 1: /* insert */
        put(b, "", 1);
        memmove(b->p + at + 1, b->p + at, b->n - at - 1);
        b->p[at] = c;
        break;
    case 2: /* delete */
        memmove(b->p + at, b->p + at + 1, b->n - at - 1);
        b->n--;
        break;
    default: /* cut */
        b->n = at;
        break;
    }
}

static void random_pairs_agree_with_jansson(void **state)
{
    static const double tols[] = {0, 0, 1e-6, 1e-6, 1e-3, 0.5, 1e-300, -1, NAN};
    const char *ign[4];
    buf_t a = {NULL, 0, 0}, b = {NULL, 0, 0};
    size_t pairs = 0, json_pairs = 0, with_diffs = 0, diffs = 0;
    clock_t t0 = clock();
    (void)state;
    /* JSONDIFF_SEED=n explores other pairs; the default keeps runs repeatable. */
    const char *seed = getenv("JSONDIFF_SEED");
    mm_rng_seed(&rng, seed ? strtoull(seed, NULL, 10) : 20240611);
    put(&a, "", 0);
    put(&b, "", 0);
    /* Bounded by count and by time (sanitizer builds are slower). */
    for (; pairs < 100000 && (double)(clock() - t0) / CLOCKS_PER_SEC < 20; pairs++) {
        double tol = tols[below(sizeof tols / sizeof tols[0])];
        node_t *na = random_node((int)below(6));
        node_t *nb =
            chance(0.1) ? random_node((int)below(6)) : mutate(na, chance(0.3) ? 0.02 : 0.2, tol);
        a.n = b.n = 0;
        write_node(&a, na);
        write_node(&b, chance(0.05) ? na : nb);
        if (chance(0.05)) corrupt(chance(0.5) ? &a : &b);
        jsondiff_opts_t o = {tol, ign, below(3) == 0 ? 1 + below(4) : 0};
        for (size_t i = 0; i < o.n_ignore; i++)
            ign[i] = ignore_pool[below(sizeof ignore_pool / sizeof ignore_pool[0])];
        size_t stop = below(8) == 0 ? 1 + below(3) : 0;
        size_t n = same(a.p, a.n, b.p, b.n, &o, stop, NULL);
        if (n != JSONDIFF_NOT_JSON) {
            json_pairs++;
            with_diffs += n > 0;
            diffs += n;
        }
        /* A text against itself. */
        if (chance(0.05)) same(a.p, a.n, a.p, a.n, &o, 0, NULL);
        free_node(na);
        free_node(nb);
    }
    print_message("%zu random pairs, %zu both JSON, %zu of those differ (%zu differences)\n", pairs,
                  json_pairs, with_diffs, diffs);
    /* The generator must exercise both outcomes, or it proves little. */
    assert_true(pairs >= 2000);
    assert_true(json_pairs > pairs / 2 && json_pairs < pairs);
    assert_true(with_diffs > json_pairs / 4 && with_diffs < json_pairs);
    free(a.p);
    free(b.p);
}

static int teardown(void **state)
{
    (void)state;
    jsondiff_doc_free(&doc_a);
    jsondiff_doc_free(&doc_b);
    return 0;
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
        cmocka_unit_test(strings_and_keys_compare_unescaped),
        cmocka_unit_test(strings_with_nul_compare_by_length),
        cmocka_unit_test(duplicate_keys_keep_the_first_place_and_the_last_value),
        cmocka_unit_test(callback_can_stop_the_walk),
        cmocka_unit_test(too_deep_paths_report_once_at_the_deepest_fitting_path),
        cmocka_unit_test(long_keys_overflow_the_path_like_deep_ones),
        cmocka_unit_test(pointer_validation_and_coverage),
        cmocka_unit_test(grammar_is_jansson_s),
        cmocka_unit_test(a_nul_after_a_number_or_literal_is_skipped_like_jansson),
        cmocka_unit_test(numbers_are_jansson_s),
        cmocka_unit_test(strings_are_jansson_s),
        cmocka_unit_test(depth_limit_is_jansson_s),
        cmocka_unit_test(texts_that_are_not_json_are_reported_as_such),
        cmocka_unit_test(large_objects_compare_by_key),
        cmocka_unit_test(trimmed_documents_are_reusable),
        cmocka_unit_test(random_pairs_agree_with_jansson),
    };
    return cmocka_run_group_tests(tests, NULL, teardown);
}
