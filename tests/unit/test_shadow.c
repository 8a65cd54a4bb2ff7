/* test_shadow.c — the shadow policy: mirroring decisions, comparison outcomes
 * (status, JSON tolerance and ignore, bytes, truncation, Content-Type),
 * Diffy-style noise from a secondary, statistics in describe(), and config
 * errors with line and column.
 *
 * The policy is built through config_parse() like in production; the test
 * plays the core by calling choose/compare/describe directly, with a tally
 * (src/tally.c) standing in for the store's. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "refusal.h"
#include "policy.h"
#include "rng.h"
#include "tally.h"

#define UPSTREAMS                                                                                  \
    "\"upstreams\": {\"champion\": {\"url\": \"http://127.0.0.1:7001\"},\n"                        \
    "              \"challenger\": {\"url\": \"http://127.0.0.1:7002\"},\n"                        \
    "              \"champion-b\": {\"url\": \"http://127.0.0.1:7003\"},\n"                        \
    "              \"third\": {\"url\": \"http://127.0.0.1:7004\"}},\n"

typedef struct {
    config_t *cfg;
    const cfg_experiment_t *e;
    const policy_ops_t *ops;
    void *p;
    exp_control_t ctl;
    arm_stats_t stats[MM_MAX_ARMS];
    mm_rng_t rng;
    answer_stats_t answers[MM_MAX_ARMS];
    tally_t *tally;
    policy_view_t v;
} fx_t;

static int exp_text(const char *params, char *text, size_t n)
{
    return snprintf(text, n,
                    "{" UPSTREAMS "\"experiments\": [{\"name\": \"exp\", \"match\": "
                    "{\"path_prefix\": \"/\"}, \"policy\": \"shadow\",\n%s}]}\n",
                    params);
}

static config_t *parse_exp(const char *params, char *err, size_t errlen)
{
    char text[4096];
    int n = exp_text(params, text, sizeof text);
    return config_parse(text, (size_t)n, "test.json", err, errlen);
}

static void fx_init(fx_t *f, const char *params)
{
    char err[512];
    memset(f, 0, sizeof *f);
    f->cfg = parse_exp(params, err, sizeof err);
    if (f->cfg == NULL) fail_msg("config: %s", err);
    f->e = &f->cfg->experiments[0];
    f->ops = f->e->ops;
    f->p = f->e->policy;
    assert_string_equal(f->ops->name, "shadow");
    mm_rng_seed(&f->rng, 7);
    f->ctl.state = EXP_RUNNING;
    f->v.n_arms = f->e->n_arms;
    f->v.stats = f->stats;
    f->v.control = &f->ctl;
    f->v.rng = &f->rng;
    f->v.answers = f->answers;
    f->tally = tally_new(0);
    assert_non_null(f->tally);
    f->v.tally = f->tally;
}

static void fx_free(fx_t *f)
{
    tally_free(f->tally);
    config_free(f->cfg);
}

static policy_resp_t resp(int status, const char *body)
{
    policy_resp_t r = {status, MM_STR("application/json"), {body, strlen(body)}, 0, MM_STR(""), 0};
    return r;
}

/* Outcome of one mirror (arm 1) against the primary. */
static int compare1(fx_t *f, policy_resp_t prim, policy_resp_t m)
{
    int arm = 1, out = -1;
    f->ops->compare(f->p, &f->v, &prim, &arm, &m, 1, &out);
    return out;
}

static json_t *describe(fx_t *f)
{
    return f->ops->describe(f->p, &f->v);
}

/* describe().shadows[i] */
static json_t *shadow_entry(json_t *d, size_t i)
{
    return json_array_get(json_object_get(d, "shadows"), i);
}

static json_int_t geti(json_t *o, const char *k)
{
    return json_integer_value(json_object_get(o, k));
}

#define BASE "\"primary\": \"champion\", \"shadows\": [\"challenger\"]"
#define WITH_SECONDARY                                                                             \
    "\"primary\": \"champion\", \"shadows\": [\"challenger\"], \"secondary\": \"champion-b\""

/* ---- configuration ---- */

static void arms_and_mirror_limits_are_declared(void **state)
{
    fx_t f;
    (void)state;
    fx_init(&f, WITH_SECONDARY ", \"max_inflight\": 7, \"timeout_ms\": 250,"
                               "\"max_body_bytes\": 4096");
    assert_int_equal(f.e->n_arms, 3);
    assert_int_equal(f.e->arms[0], config_upstream_index(f.cfg, "champion"));
    assert_int_equal(f.e->arms[1], config_upstream_index(f.cfg, "challenger"));
    assert_int_equal(f.e->arms[2], config_upstream_index(f.cfg, "champion-b"));
    assert_int_equal(f.e->mirror.max_inflight, 7);
    assert_int_equal(f.e->mirror.timeout_ms, 250);
    assert_int_equal(f.e->mirror.max_body_bytes, 4096);
    fx_free(&f);

    fx_init(&f, BASE);
    assert_int_equal(f.e->n_arms, 2);
    assert_int_equal(f.e->mirror.max_inflight, 100);
    assert_int_equal(f.e->mirror.timeout_ms, 1000);
    assert_int_equal(f.e->mirror.max_body_bytes, 1 << 20);
    json_t *d = describe(&f);
    json_t *cmp = json_object_get(d, "compare");
    assert_true(json_real_value(json_object_get(cmp, "json_tolerance")) == 1e-6);
    assert_true(json_is_false(json_object_get(cmp, "headers")));
    assert_true(json_real_value(json_object_get(d, "sample")) == 1.0);
    assert_true(json_is_null(json_object_get(d, "secondary")));
    json_decref(d);
    fx_free(&f);
}

static void expect_error(const char *params, const char *at, const char *what)
{
    char text[4096];
    exp_text(params, text, sizeof text);
    expect_refused_at(text, strstr(text, params), at, what);
}

static void config_errors_name_line_and_column(void **state)
{
    (void)state;
    expect_error("\"primary\": \"champion\", \"shadows\": [\"nope\"]", "\"nope\"", "nope");
    expect_error("\"primary\": \"champion\", \"shadows\": [\"challenger\", \"champion\"]",
                 "\"champion\"]", "twice");
    expect_error("\"primary\": \"champion\", \"shadows\": []", "[]", "non-empty");
    expect_error("\"primary\": \"champion\", \"shadows\": \"challenger\"", "\"challenger\"",
                 "list");
    expect_error("\"primary\": \"champion\", \"shadows\": [3]", "3]", "upstream name");
    expect_error("\"shadows\": [\"challenger\"]", "{\"name\"", "primary");
    expect_error("\"primary\": \"champion\"", "{\"name\"", "shadows");
    expect_error(BASE ", \"sample\": 1.5", "1.5", "sample");
    expect_error(BASE ", \"sample\": -0.1", "-0.1", "sample");
    expect_error(BASE ", \"max_inflight\": 0", "0", "max_inflight");
    expect_error(BASE ", \"timeout_ms\": 0", "0", "timeout_ms");
    expect_error(BASE ", \"max_body_bytes\": -1", "-1", "max_body_bytes");
    expect_error(BASE ", \"secondary\": \"ghost\"", "\"ghost\"", "ghost");
    expect_error(BASE ", \"secondary\": \"champion\"", "\"champion\"}", "twice");
    expect_error(BASE ", \"compare\": {\"json_tolerance\": -1}", "-1", "json_tolerance");
    expect_error(BASE ", \"compare\": {\"ignore\": [\"latency\"]}", "\"latency\"", "pointer");
    expect_error(BASE ", \"compare\": {\"ignore\": \"/a\"}", "\"/a\"", "list");
    expect_error(BASE ", \"compare\": {\"headers\": 1}", "1}", "true or false");
    expect_error(BASE ", \"compare\": {\"tolerance\": 1}", "\"tolerance\"", "unknown key");
    expect_error(BASE ", \"arms\": [\"champion\"]", "\"arms\"", "unknown key");
}

/* ---- routing ---- */

static void every_request_goes_to_the_primary_and_mirrors_to_all_shadows(void **state)
{
    fx_t f;
    policy_choice_t c;
    policy_req_t req = {0};
    (void)state;
    fx_init(&f, "\"primary\": \"champion\", \"shadows\": [\"challenger\", \"third\"],"
                "\"secondary\": \"champion-b\"");
    for (int i = 0; i < 100; i++) {
        f.ops->choose(f.p, &f.v, &req, &c);
        assert_int_equal(c.primary, 0);
        assert_int_equal(c.n_mirrors, 3);
        assert_int_equal(c.mirrors[0], 1);
        assert_int_equal(c.mirrors[1], 2);
        assert_int_equal(c.mirrors[2], 3); /* the secondary too */
    }
    fx_free(&f);
}

static void sample_fraction_of_requests_is_mirrored(void **state)
{
    fx_t f;
    policy_choice_t c;
    policy_req_t req = {0};
    (void)state;
    fx_init(&f, BASE ", \"sample\": 0.3");
    int n = 20000, mirrored = 0;
    for (int i = 0; i < n; i++) {
        f.ops->choose(f.p, &f.v, &req, &c);
        assert_int_equal(c.primary, 0);
        mirrored += c.n_mirrors;
    }
    double sd = sqrt(n * 0.3 * 0.7); /* ~65 */
    assert_true(fabs(mirrored - n * 0.3) <= 5 * sd);
    fx_free(&f);

    fx_init(&f, BASE ", \"sample\": 0");
    for (int i = 0; i < 1000; i++) {
        f.ops->choose(f.p, &f.v, &req, &c);
        assert_int_equal(c.n_mirrors, 0);
    }
    fx_free(&f);
}

static void no_mirrors_unless_running_and_promote_moves_the_primary(void **state)
{
    fx_t f;
    policy_choice_t c;
    policy_req_t req = {0};
    (void)state;
    fx_init(&f, BASE);
    f.ctl.state = EXP_PAUSED;
    f.ops->choose(f.p, &f.v, &req, &c);
    assert_int_equal(c.primary, 0);
    assert_int_equal(c.n_mirrors, 0);
    f.ctl.state = EXP_ROLLED_BACK;
    f.ops->choose(f.p, &f.v, &req, &c);
    assert_int_equal(c.primary, 0);
    assert_int_equal(c.n_mirrors, 0);
    f.ctl.state = EXP_PROMOTED;
    f.ctl.has_weights = 1;
    f.ctl.weights[1] = 100;
    f.ops->choose(f.p, &f.v, &req, &c);
    assert_int_equal(c.primary, 1);
    assert_int_equal(c.n_mirrors, 0);
    fx_free(&f);
}

/* ---- comparison ---- */

static void outcomes_without_secondary(void **state)
{
    fx_t f;
    (void)state;
    fx_init(&f, BASE ", \"compare\": {\"json_tolerance\": 0.001, \"ignore\": [\"/latency_ms\"]}");
    const char *p = "{\"score\": 0.5, \"items\": [1, 2], \"latency_ms\": 3}";
    /* Identical bytes. */
    assert_int_equal(compare1(&f, resp(200, p), resp(200, p)), POLICY_MATCH);
    /* Key order, tolerance, ignored field. */
    assert_int_equal(compare1(&f, resp(200, p),
                              resp(200, "{\"latency_ms\": 90, \"items\": [1, 2],"
                                        " \"score\": 0.5004}")),
                     POLICY_MATCH);
    /* Beyond tolerance. */
    assert_int_equal(compare1(&f, resp(200, p), resp(200, "{\"score\": 0.502, \"items\": [1, 2]}")),
                     POLICY_MISMATCH);
    /* Status first. */
    assert_int_equal(compare1(&f, resp(200, p), resp(503, p)), POLICY_MISMATCH);
    /* Transport failure or timeout, either side. */
    assert_int_equal(compare1(&f, resp(200, p), resp(0, "")), POLICY_ERROR);
    assert_int_equal(compare1(&f, resp(0, ""), resp(200, p)), POLICY_ERROR);
    /* Not JSON: bytes. */
    assert_int_equal(compare1(&f, resp(200, "hello"), resp(200, "hello")), POLICY_MATCH);
    assert_int_equal(compare1(&f, resp(200, "hello"), resp(200, "hellO")), POLICY_MISMATCH);
    assert_int_equal(compare1(&f, resp(200, p), resp(200, "<html>")), POLICY_MISMATCH);
    assert_int_equal(compare1(&f, resp(204, ""), resp(204, "")), POLICY_MATCH);

    json_t *d = describe(&f);
    json_t *s = shadow_entry(d, 0);
    assert_string_equal(json_string_value(json_object_get(s, "arm")), "challenger");
    assert_int_equal(geti(s, "matches"), 4);
    assert_int_equal(geti(s, "mismatches"), 4);
    assert_int_equal(geti(s, "errors"), 2);
    assert_int_equal(geti(s, "compared"), 8);
    assert_true(json_real_value(json_object_get(s, "agreement_rate")) == 0.5);
    json_decref(d);
    fx_free(&f);
}

static void truncated_bodies_differ_only_when_provably_different(void **state)
{
    fx_t f;
    (void)state;
    fx_init(&f, BASE);
    policy_resp_t a = resp(200, "{\"items\": [1, 2, 3"), b = resp(200, "{\"items\": [1, 2, 3");
    a.truncated = b.truncated = 1;
    assert_int_equal(compare1(&f, a, b), POLICY_MATCH); /* same kept prefix */
    b = resp(200, "{\"items\": [1, 2, 4");
    b.truncated = 1;
    assert_int_equal(compare1(&f, a, b), POLICY_MISMATCH);
    /* A complete body no longer than the other's kept prefix cannot be equal. */
    assert_int_equal(compare1(&f, a, resp(200, "{\"items\": [1, 2, 3")), POLICY_MISMATCH);
    assert_int_equal(compare1(&f, a, resp(200, "{\"items\": [1]}")), POLICY_MISMATCH);
    /* A complete body that extends the kept prefix may be equal. */
    assert_int_equal(compare1(&f, a, resp(200, "{\"items\": [1, 2, 3, 4]}")), POLICY_MATCH);
    fx_free(&f);
}

static void content_type_counts_only_with_compare_headers(void **state)
{
    fx_t f;
    (void)state;
    policy_resp_t a = resp(200, "{}"), b = resp(200, "{}");
    b.content_type = MM_STR("text/plain");
    fx_init(&f, BASE);
    assert_int_equal(compare1(&f, a, b), POLICY_MATCH);
    fx_free(&f);
    fx_init(&f, BASE ", \"compare\": {\"headers\": true}");
    assert_int_equal(compare1(&f, a, b), POLICY_MISMATCH);
    b.content_type = MM_STR("Application/JSON");
    assert_int_equal(compare1(&f, a, b), POLICY_MATCH);
    /* Parameters: optional whitespace around ";" and letter case do not
     * count; a different value, or anything inside quotes, does. */
    a.content_type = MM_STR("application/json; charset=utf-8");
    b.content_type = MM_STR("Application/JSON;Charset=UTF-8");
    assert_int_equal(compare1(&f, a, b), POLICY_MATCH);
    b.content_type = MM_STR("application/json; charset=latin1");
    assert_int_equal(compare1(&f, a, b), POLICY_MISMATCH);
    a.content_type = MM_STR("text/plain; x=\"A B\"");
    b.content_type = MM_STR("text/plain;x=\"A B\"");
    assert_int_equal(compare1(&f, a, b), POLICY_MATCH);
    b.content_type = MM_STR("text/plain; x=\"a b\"");
    assert_int_equal(compare1(&f, a, b), POLICY_MISMATCH);
    fx_free(&f);
}

/* With the core's header blocks (compare.headers): one difference per header
 * name whose lines differ or that one answer lacks, Content-Type
 * case-insensitively, a name's repeated lines in order. */
static policy_resp_t with_headers(const char *block)
{
    policy_resp_t r = resp(200, "{}");
    r.headers = (mm_str_t){block, strlen(block)};
    return r;
}

static void header_blocks_differ_per_header_name(void **state)
{
    fx_t f;
    (void)state;
    fx_init(&f, BASE ", \"compare\": {\"headers\": true}");
    assert_int_equal(f.e->mirror.keep_headers, 1);
    const char *base = "cache-control:no-store\ncontent-type:application/json\nx-v:7\n";
    assert_int_equal(compare1(&f, with_headers(base), with_headers(base)), POLICY_MATCH);
    assert_int_equal(
        compare1(&f, with_headers(base),
                 with_headers("cache-control:no-store\ncontent-type:Application/JSON\nx-v:7\n")),
        POLICY_MATCH);
    assert_int_equal(
        compare1(&f, with_headers(base),
                 with_headers("cache-control:no-store\ncontent-type:application/json\nx-v:8\n")),
        POLICY_MISMATCH);
    assert_int_equal(compare1(&f, with_headers(base),
                              with_headers("cache-control:no-store\ncontent-type:application/"
                                           "json\nx-a:1\nx-v:7\n")),
                     POLICY_MISMATCH); /* a header only the mirror has */
    assert_int_equal(
        compare1(&f, with_headers(base), with_headers("content-type:application/json\nx-v:7\n")),
        POLICY_MISMATCH); /* one only the primary has */
    assert_int_equal(
        compare1(&f, with_headers("link:a\nlink:b\n"), with_headers("link:a\nlink:b\n")),
        POLICY_MATCH);
    assert_int_equal(
        compare1(&f, with_headers("link:a\nlink:b\n"), with_headers("link:b\nlink:a\n")),
        POLICY_MISMATCH);
    /* "x-v" and "x-vv" are different names, though one is a prefix */
    assert_int_equal(compare1(&f, with_headers("x-v:1\nx-vv:1\n"), with_headers("x-v:1\nx-vv:1\n")),
                     POLICY_MATCH);
    json_t *d = describe(&f);
    json_t *paths = json_object_get(shadow_entry(d, 0), "paths");
    const char *want[] = {"header:x-v", "header:x-a", "header:cache-control", "header:link"};
    assert_int_equal(json_array_size(paths), 4);
    for (size_t i = 0; i < 4; i++) {
        int found = 0;
        for (size_t k = 0; k < 4; k++)
            found |= strcmp(json_string_value(json_object_get(json_array_get(paths, k), "path")),
                            want[i]) == 0;
        assert_true(found);
    }
    json_decref(d);
    fx_free(&f);
    /* without compare.headers, blocks are not even asked for, and not compared */
    fx_init(&f, BASE);
    assert_int_equal(f.e->mirror.keep_headers, 0);
    assert_int_equal(compare1(&f, with_headers(base), with_headers("x-v:8\n")), POLICY_MATCH);
    fx_free(&f);
}

static void json_bodies_compare_by_meaning_at_any_size(void **state)
{
    fx_t f;
    (void)state;
    fx_init(&f, BASE);
    /* Escapes and duplicate keys are read as JSON means them. */
    assert_int_equal(compare1(&f, resp(200, "{\"name\": \"caf\\u00e9\", \"n\": 1, \"n\": 2}"),
                              resp(200, "{\"n\": 2, \"n\\u0061me\": \"caf\xc3\xa9\"}")),
                     POLICY_MATCH);
    /* Not JSON (a real that overflows): different bytes are one difference at "". */
    assert_int_equal(compare1(&f, resp(200, "[1e999]"), resp(200, "[1e999 ]")), POLICY_MISMATCH);
    /* An answer of 200 000 numbers, larger than the parse buffers keep. */
    size_t n = 200000;
    char *a = malloc(n * 2 + 2), *b;
    a[0] = '[';
    for (size_t i = 0; i < n; i++) memcpy(a + 1 + 2 * i, i + 1 < n ? "7," : "7]", 2);
    a[2 * n + 1] = '\0';
    b = strdup(a);
    assert_int_equal(compare1(&f, resp(200, a), resp(200, b)), POLICY_MATCH);
    b[2 * n - 1] = '8';
    assert_int_equal(compare1(&f, resp(200, a), resp(200, b)), POLICY_MISMATCH);
    assert_int_equal(compare1(&f, resp(200, "{\"a\": 1}"), resp(200, "{\"a\": 1.0}")),
                     POLICY_MATCH);
    free(a);
    free(b);

    json_t *d = describe(&f);
    json_t *sh = shadow_entry(d, 0), *paths = json_object_get(sh, "paths");
    assert_int_equal(geti(sh, "matches"), 3);
    assert_int_equal(geti(sh, "mismatches"), 2);
    assert_int_equal(json_array_size(paths), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(paths, 0), "path")), "");
    assert_string_equal(json_string_value(json_object_get(json_array_get(paths, 1), "path")), "/*");
    json_decref(d);
    fx_free(&f);
}

/* compare() with the primary, the candidate (arm 1) and the secondary (arm 2). */
static void compare3(fx_t *f, const char *prim, const char *cand, int sec_status, const char *sec,
                     int *cand_out, int *sec_out)
{
    policy_resp_t p = resp(200, prim), m[2] = {resp(200, cand), resp(sec_status, sec)};
    int arms[2] = {1, 2}, out[2] = {-1, -1};
    f->ops->compare(f->p, &f->v, &p, arms, m, 2, out);
    *cand_out = out[0];
    *sec_out = out[1];
}

static void differences_where_primary_and_secondary_differ_are_noise(void **state)
{
    fx_t f;
    int c, s;
    (void)state;
    fx_init(&f, WITH_SECONDARY);
    /* /ts differs between the two primaries: the candidate's /ts is noise. */
    compare3(&f, "{\"ts\": 1, \"score\": 0.5}", "{\"ts\": 3, \"score\": 0.5}", 200,
             "{\"ts\": 2, \"score\": 0.5}", &c, &s);
    assert_int_equal(c, POLICY_MATCH);
    assert_int_equal(s, POLICY_MISMATCH); /* the secondary's raw outcome */
    /* /score: primary and secondary agreed, so it is a real difference. */
    compare3(&f, "{\"ts\": 1, \"score\": 0.5}", "{\"ts\": 3, \"score\": 0.7}", 200,
             "{\"ts\": 2, \"score\": 0.5}", &c, &s);
    assert_int_equal(c, POLICY_MISMATCH);
    /* A noisy array covers its elements. */
    compare3(&f, "{\"items\": [1, 2, 3]}", "{\"items\": [1, 5, 3]}", 200, "{\"items\": [1, 2]}", &c,
             &s);
    assert_int_equal(c, POLICY_MATCH);
    /* Noise below a path does not cover a difference of the whole value. */
    compare3(&f, "{\"a\": {\"x\": 1, \"y\": 1}}", "{\"a\": \"gone\"}", 200,
             "{\"a\": {\"x\": 2, \"y\": 1}}", &c, &s);
    assert_int_equal(c, POLICY_MISMATCH);
    /* No usable secondary answer: the candidate is judged strictly. */
    compare3(&f, "{\"ts\": 1}", "{\"ts\": 3}", 0, "", &c, &s);
    assert_int_equal(c, POLICY_MISMATCH);
    assert_int_equal(s, POLICY_ERROR);
    /* The secondary answered a different status: only a status difference is noise. */
    compare3(&f, "{\"ts\": 1}", "{\"ts\": 3}", 503, "{\"ts\": 1}", &c, &s);
    assert_int_equal(c, POLICY_MISMATCH);
    assert_int_equal(s, POLICY_MISMATCH);
    policy_resp_t p = resp(200, "{}"), m[2] = {resp(500, "{}"), resp(503, "{}")};
    int arms[2] = {2, 1}, out[2]; /* any order */
    f.ops->compare(f.p, &f.v, &p, arms, m, 2, out);
    assert_int_equal(out[0], POLICY_MISMATCH); /* the secondary */
    assert_int_equal(out[1], POLICY_MATCH);    /* status noise */
    /* Identical answers everywhere. */
    compare3(&f, "{\"ts\": 1}", "{\"ts\": 1}", 200, "{\"ts\": 1}", &c, &s);
    assert_int_equal(c, POLICY_MATCH);
    assert_int_equal(s, POLICY_MATCH);

    json_t *d = describe(&f);
    json_t *cand = shadow_entry(d, 0), *noise = json_object_get(d, "noise");
    assert_int_equal(json_array_size(json_object_get(d, "shadows")), 1);
    assert_int_equal(geti(cand, "matches"), 4);
    assert_int_equal(geti(cand, "mismatches"), 4);
    assert_int_equal(geti(cand, "noisy"), 3);
    assert_string_equal(json_string_value(json_object_get(noise, "arm")), "champion-b");
    assert_int_equal(geti(noise, "errors"), 1);
    assert_int_equal(geti(noise, "compared"), 7);
    assert_true(fabs(json_real_value(json_object_get(noise, "noise_rate")) - 6.0 / 7) < 1e-12);
    /* /ts: the candidate differed on 4 of 8 compared requests, the secondary on 2 of 7. */
    json_t *paths = json_object_get(cand, "paths"), *ts = NULL;
    for (size_t i = 0; i < json_array_size(paths); i++) {
        json_t *e = json_array_get(paths, i);
        if (strcmp(json_string_value(json_object_get(e, "path")), "/ts") == 0) ts = e;
    }
    assert_non_null(ts);
    assert_int_equal(geti(ts, "requests"), 4);
    assert_true(json_real_value(json_object_get(ts, "diff_rate")) == 0.5);
    assert_true(fabs(json_real_value(json_object_get(ts, "noise_rate")) - 2.0 / 7) < 1e-12);
    json_decref(d);
    fx_free(&f);
}

static void per_field_statistics_use_shapes_and_are_bounded(void **state)
{
    fx_t f;
    char a[64], b[64];
    (void)state;
    fx_init(&f, BASE);
    /* Two array elements differ in one request: "/items/<any>/score" counts once. */
    assert_int_equal(compare1(&f, resp(200, "{\"items\": [{\"score\": 1}, {\"score\": 2}]}"),
                              resp(200, "{\"items\": [{\"score\": 3}, {\"score\": 4}]}")),
                     POLICY_MISMATCH);
    for (int i = 0; i < 100; i++) {
        snprintf(a, sizeof a, "{\"k%d\": 1}", i);
        snprintf(b, sizeof b, "{\"k%d\": 2}", i);
        compare1(&f, resp(200, a), resp(200, b));
    }
    json_t *d = describe(&f);
    json_t *s = shadow_entry(d, 0), *paths = json_object_get(s, "paths");
    json_t *top = json_array_get(paths, 0);
    assert_string_equal(json_string_value(json_object_get(top, "path")), "/items/*/score");
    assert_int_equal(geti(top, "requests"), 1);
    /* 10 shown, then the aggregate: 101 fields seen, 64 kept, 37 under "other". */
    assert_int_equal(json_array_size(paths), 11);
    json_t *other = json_array_get(paths, 10);
    assert_string_equal(json_string_value(json_object_get(other, "path")), "other");
    assert_int_equal(geti(other, "requests"), 37);
    json_decref(d);
    fx_free(&f);
}

/* One answer of `arm` taking `us`, as the store counts it. */
static void answer(fx_t *f, int arm, uint64_t us)
{
    answer_stats_t *a = &f->answers[arm];
    a->answers++;
    a->samples++;
    a->hist[lathist_index(us)]++;
}

static void latency_from_pooled_answers_and_reset(void **state)
{
    fx_t f;
    (void)state;
    fx_init(&f, BASE);
    answer(&f, 0, 10000);
    answer(&f, 1, 20000);
    answer(&f, 1, 40000);
    f.answers[1].answers++; /* a timeout: an answer and an error, not a latency */
    f.answers[1].errors++;
    compare1(&f, resp(200, "1"), resp(200, "2"));
    json_t *d = describe(&f);
    /* Bucket midpoints: within 1/32 of the true means (10 and 30 ms). */
    double p = json_real_value(json_object_get(d, "primary_mean_latency_ms"));
    double m = json_real_value(json_object_get(shadow_entry(d, 0), "mean_latency_ms"));
    assert_true(fabs(p - 10.0) <= 10.0 / 32 && fabs(m - 30.0) <= 30.0 / 32);
    json_decref(d);
    /* A reset clears the tally (the store does it, on every instance). */
    tally_clear(f.tally);
    memset(f.answers, 0, sizeof f.answers);
    d = describe(&f);
    json_t *s = shadow_entry(d, 0);
    assert_int_equal(geti(s, "compared"), 0);
    assert_true(json_is_null(json_object_get(s, "agreement_rate")));
    assert_true(json_is_null(json_object_get(s, "mean_latency_ms")));
    assert_int_equal(json_array_size(json_object_get(s, "paths")), 0);
    json_decref(d);
    fx_free(&f);
}

/* Counts are the tally's: what other instances counted (the pooled
 * snapshot) adds to this one's, a field another instance kept counts
 * against the bound, and without a tally nothing is counted. */
static void statistics_are_pooled_through_the_tally(void **state)
{
    fx_t f;
    char a[64];
    (void)state;
    fx_init(&f, BASE);
    tally_set_replicated(f.tally, 1);
    /* Another instance: 5 matches, 3 mismatches at /score, 60 other fields. */
    tally_snap_set(f.tally, "challenger|matches", 18, 5);
    tally_snap_set(f.tally, "challenger|mismatches", 21, 3);
    tally_snap_set(f.tally, "challenger|differing", 20, 3);
    tally_snap_set(f.tally, "challenger|path|/score", 22, 3);
    for (int i = 0; i < 63; i++) {
        snprintf(a, sizeof a, "challenger|path|/f%d", i);
        tally_snap_set(f.tally, a, strlen(a), 1);
    }
    tally_snap_set(f.tally, "challenger|dropped", 18, 4);
    assert_int_equal(compare1(&f, resp(200, "{\"score\": 1}"), resp(200, "{\"score\": 2}")),
                     POLICY_MISMATCH);
    assert_int_equal(compare1(&f, resp(200, "{\"x\": 1}"), resp(200, "{\"x\": 1}")), POLICY_MATCH);
    /* A new field: the arm already has 64 (pooled), so it goes to "other". */
    assert_int_equal(compare1(&f, resp(200, "{\"new\": 1}"), resp(200, "{\"new\": 2}")),
                     POLICY_MISMATCH);
    json_t *d = describe(&f);
    json_t *s = shadow_entry(d, 0);
    assert_int_equal(geti(s, "compared"), 11);
    assert_int_equal(geti(s, "matches"), 6);
    assert_int_equal(geti(s, "mismatches"), 5);
    assert_int_equal(geti(s, "dropped"), 4);
    json_t *paths = json_object_get(s, "paths"), *top = json_array_get(paths, 0);
    assert_string_equal(json_string_value(json_object_get(top, "path")), "/score");
    assert_int_equal(geti(top, "requests"), 4);
    json_t *other = json_array_get(paths, json_array_size(paths) - 1);
    assert_string_equal(json_string_value(json_object_get(other, "path")), "other");
    assert_int_equal(geti(other, "requests"), 1);
    json_decref(d);
    /* This instance's part is what a sync round sends. */
    mm_buf_t out;
    mm_buf_init(&out);
    /* matches, mismatches, differing, path|/score, other */
    assert_int_equal(tally_local_pairs(f.tally, &out), 5);
    mm_buf_free(&out);

    /* No tally (a request on a router a reload redefined): outcomes only. */
    f.v.tally = NULL;
    assert_int_equal(compare1(&f, resp(200, "1"), resp(200, "2")), POLICY_MISMATCH);
    f.v.tally = f.tally;
    d = describe(&f);
    assert_int_equal(geti(shadow_entry(d, 0), "mismatches"), 5);
    json_decref(d);
    fx_free(&f);
}

static void example_config_is_valid(void **state)
{
    char path[1024], err[512];
    const char *dir = getenv("MM_SOURCE_DIR");
    (void)state;
    if (dir == NULL) skip();
    snprintf(path, sizeof path, "%s/config/shadow.json", dir);
    config_t *c = config_load(path, err, sizeof err);
    if (c == NULL) fail_msg("%s", err);
    assert_int_equal(c->n_experiments, 1);
    assert_string_equal(c->experiments[0].ops->name, "shadow");
    config_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(arms_and_mirror_limits_are_declared),
        cmocka_unit_test(config_errors_name_line_and_column),
        cmocka_unit_test(example_config_is_valid),
        cmocka_unit_test(every_request_goes_to_the_primary_and_mirrors_to_all_shadows),
        cmocka_unit_test(sample_fraction_of_requests_is_mirrored),
        cmocka_unit_test(no_mirrors_unless_running_and_promote_moves_the_primary),
        cmocka_unit_test(outcomes_without_secondary),
        cmocka_unit_test(truncated_bodies_differ_only_when_provably_different),
        cmocka_unit_test(content_type_counts_only_with_compare_headers),
        cmocka_unit_test(header_blocks_differ_per_header_name),
        cmocka_unit_test(json_bodies_compare_by_meaning_at_any_size),
        cmocka_unit_test(differences_where_primary_and_secondary_differ_are_noise),
        cmocka_unit_test(per_field_statistics_use_shapes_and_are_bounded),
        cmocka_unit_test(latency_from_pooled_answers_and_reset),
        cmocka_unit_test(statistics_are_pooled_through_the_tally),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
