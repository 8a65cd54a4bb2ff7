/* test_reqlog.c — the request log (DESIGN.md §7) as a user and a replay tool
 * see it: every line parses as JSON with exactly the documented fields,
 * client bytes are escaped (invalid UTF-8 included), bodies are base64 and
 * bounded, sampling keeps the configured fraction, a rotated file is
 * reopened on demand, and a disk that refuses writes costs counted lines,
 * never a crash. Each test drives a real libuv loop and reads the file. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "proxy_internal.h"
#include "reqlog.h"

typedef struct {
    uv_loop_t loop;
    char dir[64];
    char path[128];
    int closed;
} fx_t;

static int setup(void **state)
{
    fx_t *f = calloc(1, sizeof(*f));
    uv_loop_init(&f->loop);
    snprintf(f->dir, sizeof(f->dir), "/tmp/mm-test-reqlog.XXXXXX");
    if (mkdtemp(f->dir) == NULL) return -1;
    snprintf(f->path, sizeof(f->path), "%s/sub/dir/requests.jsonl", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx_t *f = *state;
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

static void on_closed(void *arg)
{
    ((fx_t *)arg)->closed = 1;
}

static reqlog_t *open_log(fx_t *f, const char *path, double sample, int bodies)
{
    char err[256];
    reqlog_t *l = reqlog_open(&f->loop, path, sample, bodies, 42, NULL, err, sizeof(err));
    if (l == NULL) fail_msg("reqlog_open: %s", err);
    return l;
}

static void close_log(fx_t *f, reqlog_t *l)
{
    f->closed = 0;
    reqlog_close(l, on_closed, f);
    for (int i = 0; i < 1000 && !f->closed; i++) uv_run(&f->loop, UV_RUN_ONCE);
    assert_true(f->closed);
}

/* Run the loop until `want` lines are on disk (bounded). */
static void wait_written(fx_t *f, reqlog_t *l, uint64_t want)
{
    uint64_t w = 0;
    for (int i = 0; i < 1000; i++) {
        reqlog_counters(l, &w, NULL, NULL);
        if (w >= want) return;
        uv_run(&f->loop, UV_RUN_ONCE);
    }
    fail_msg("only %llu of %llu lines written", (unsigned long long)w, (unsigned long long)want);
}

/* Every line of the file parsed; returns the count (max `cap`). */
static size_t read_lines(const char *path, json_t **out, size_t cap)
{
    FILE *fp = fopen(path, "r");
    if (fp == NULL) return 0;
    char *line = NULL;
    size_t n = 0, len = 0;
    ssize_t got;
    while ((got = getline(&line, &len, fp)) > 0) {
        assert_int_equal(line[got - 1], '\n');
        json_error_t je;
        json_t *j = json_loadb(line, (size_t)got, 0, &je);
        if (j == NULL) fail_msg("line %zu is not JSON: %s (%s)", n + 1, je.text, line);
        if (n < cap)
            out[n] = j;
        else
            json_decref(j);
        n++;
    }
    free(line);
    fclose(fp);
    return n;
}

static size_t count_lines(const char *path)
{
    FILE *fp = fopen(path, "r");
    if (fp == NULL) return 0;
    size_t n = 0;
    int ch;
    while ((ch = fgetc(fp)) != EOF) n += ch == '\n';
    fclose(fp);
    return n;
}

static void free_lines(json_t **v, size_t n)
{
    for (size_t i = 0; i < n; i++) json_decref(v[i]);
}

static reqlog_entry_t basic_entry(void)
{
    reqlog_entry_t e;
    memset(&e, 0, sizeof(e));
    e.request_id = "req-1";
    e.experiment = "ranker";
    e.arm = "challenger";
    e.method = "POST";
    e.path = "/v1/rank?user=7&x=1";
    e.path_len = strlen(e.path);
    e.status = 200;
    e.latency_us = 1234;
    e.bytes_in = 17;
    e.bytes_out = 99;
    return e;
}

static const char *jstr(const json_t *o, const char *k)
{
    const json_t *v = json_object_get(o, k);
    if (!json_is_string(v)) fail_msg("%s is not a string", k);
    return json_string_value(v);
}

static json_int_t jint(const json_t *o, const char *k)
{
    const json_t *v = json_object_get(o, k);
    if (!json_is_integer(v)) fail_msg("%s is not an integer", k);
    return json_integer_value(v);
}

/* ---- format ---- */

static void test_line_has_exactly_the_documented_fields(void **state)
{
    fx_t *f = *state;
    reqlog_t *l = open_log(f, f->path, 1.0, 0); /* parent directories are created */
    reqlog_shadow_t sh[2] = {{"shadow-a", 200, 800, "match"}, {"shadow-b", 0, 0, "dropped"}};
    reqlog_entry_t e = basic_entry();
    e.shadow = sh;
    e.n_shadow = 2;
    e.ts_us = 1700000000123456ull; /* 2023-11-14T22:13:20.123456Z */
    reqlog_write(l, &e);
    close_log(f, l);

    json_t *v[4];
    assert_int_equal(read_lines(f->path, v, 4), 1);
    json_t *o = v[0];
    static const char *keys[] = {"ts",       "request_id", "experiment", "arm",
                                 "method",   "path",       "status",     "latency_us",
                                 "bytes_in", "bytes_out",  "shadow"};
    assert_int_equal(json_object_size(o), MM_ARRAY_LEN(keys));
    for (size_t i = 0; i < MM_ARRAY_LEN(keys); i++) assert_non_null(json_object_get(o, keys[i]));
    assert_string_equal(jstr(o, "ts"), "2023-11-14T22:13:20.123456Z");
    assert_string_equal(jstr(o, "request_id"), "req-1");
    assert_string_equal(jstr(o, "experiment"), "ranker");
    assert_string_equal(jstr(o, "arm"), "challenger");
    assert_string_equal(jstr(o, "method"), "POST");
    assert_string_equal(jstr(o, "path"), "/v1/rank?user=7&x=1");
    assert_int_equal(jint(o, "status"), 200);
    assert_int_equal(jint(o, "latency_us"), 1234);
    assert_int_equal(jint(o, "bytes_in"), 17);
    assert_int_equal(jint(o, "bytes_out"), 99);
    json_t *s = json_object_get(o, "shadow");
    assert_int_equal(json_array_size(s), 2);
    json_t *s0 = json_array_get(s, 0), *s1 = json_array_get(s, 1);
    assert_int_equal(json_object_size(s0), 4);
    assert_string_equal(jstr(s0, "arm"), "shadow-a");
    assert_int_equal(jint(s0, "status"), 200);
    assert_int_equal(jint(s0, "latency_us"), 800);
    assert_string_equal(jstr(s0, "outcome"), "match");
    assert_string_equal(jstr(s1, "outcome"), "dropped");
    assert_int_equal(jint(s1, "status"), 0);
    free_lines(v, 1);
}

static void test_unrouted_request_has_null_experiment_and_empty_shadow(void **state)
{
    fx_t *f = *state;
    reqlog_t *l = open_log(f, f->path, 1.0, 0);
    reqlog_entry_t e = basic_entry();
    e.experiment = NULL;
    e.arm = NULL;
    e.status = 404;
    e.latency_us = 2000000; /* ts is the arrival: now - 2 s */
    uint64_t before = reqlog_wall_us();
    reqlog_write(l, &e);
    close_log(f, l);

    json_t *v[2];
    assert_int_equal(read_lines(f->path, v, 2), 1);
    assert_true(json_is_null(json_object_get(v[0], "experiment")));
    assert_true(json_is_null(json_object_get(v[0], "arm")));
    assert_int_equal(json_array_size(json_object_get(v[0], "shadow")), 0);
    assert_true(json_is_array(json_object_get(v[0], "shadow")));
    const char *ts = jstr(v[0], "ts");
    assert_int_equal(strlen(ts), 27);
    assert_true(ts[4] == '-' && ts[10] == 'T' && ts[19] == '.' && ts[26] == 'Z');
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    assert_non_null(strptime(ts, "%Y-%m-%dT%H:%M:%S", &tm));
    int64_t sec = (int64_t)timegm(&tm);
    int64_t want = (int64_t)(before / 1000000u) - 2;
    assert_true(sec >= want - 1 && sec <= want + 1);
    free_lines(v, 1);
}

static void test_client_bytes_are_escaped_and_invalid_utf8_replaced(void **state)
{
    fx_t *f = *state;
    reqlog_t *l = open_log(f, f->path, 1.0, 0);
    static const char path[] = "/q?a=\"x\"&b=\\&c=\x01\n\t&d=caf\xc3\xa9&e=\xff\xfe&f=\xe2\x82";
    reqlog_entry_t e = basic_entry();
    e.path = path;
    e.path_len = sizeof(path) - 1;
    reqlog_write(l, &e);
    close_log(f, l);

    json_t *v[2];
    assert_int_equal(read_lines(f->path, v, 2), 1);
    assert_string_equal(jstr(v[0], "path"),
                        "/q?a=\"x\"&b=\\&c=\x01\n\t&d=caf\xc3\xa9&e=\xef\xbf\xbd"
                        "\xef\xbf\xbd&f=\xef\xbf\xbd\xef\xbf\xbd");
    free_lines(v, 1);
}

static void test_bodies_are_base64_and_bounded(void **state)
{
    fx_t *f = *state;
    reqlog_t *l = open_log(f, f->path, 1.0, 1);
    assert_int_equal(reqlog_bodies(l), 1);
    reqlog_entry_t e = basic_entry();
    e.body = "hello";
    e.body_len = 5;
    e.bytes_in = 5;
    reqlog_write(l, &e);

    size_t big = REQLOG_BODY_MAX + 6000;
    char *body = malloc(big);
    for (size_t i = 0; i < big; i++) body[i] = (char)(i * 7);
    e.body = body;
    e.body_len = big;
    e.bytes_in = big;
    reqlog_write(l, &e);

    e.body = NULL; /* nothing kept of a 10-byte body: logged empty, truncated */
    e.body_len = 0;
    e.bytes_in = 10;
    reqlog_write(l, &e);
    e.bytes_in = 0; /* no body at all */
    reqlog_write(l, &e);
    close_log(f, l);

    json_t *v[4];
    assert_int_equal(read_lines(f->path, v, 4), 4);
    assert_string_equal(jstr(v[0], "body_b64"), "aGVsbG8=");
    assert_null(json_object_get(v[0], "body_truncated"));

    const char *b64 = jstr(v[1], "body_b64");
    assert_int_equal(strlen(b64), (REQLOG_BODY_MAX + 2) / 3 * 4);
    assert_true(json_is_true(json_object_get(v[1], "body_truncated")));
    /* decode and compare with the first 64 KiB */
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (const char *p = b64; *p && *p != '='; p++) {
        acc = acc << 6 | (uint32_t)(strchr(tbl, *p) - tbl);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            assert_true(o < REQLOG_BODY_MAX);
            assert_int_equal((unsigned char)(acc >> bits), (unsigned char)body[o]);
            o++;
        }
    }
    assert_int_equal(o, REQLOG_BODY_MAX);

    assert_string_equal(jstr(v[2], "body_b64"), "");
    assert_true(json_is_true(json_object_get(v[2], "body_truncated")));
    assert_string_equal(jstr(v[3], "body_b64"), "");
    assert_null(json_object_get(v[3], "body_truncated"));
    free(body);
    free_lines(v, 4);
}

static void test_no_body_field_without_log_bodies(void **state)
{
    fx_t *f = *state;
    reqlog_t *l = open_log(f, f->path, 1.0, 0);
    reqlog_entry_t e = basic_entry();
    e.body = "hello";
    e.body_len = 5;
    reqlog_write(l, &e);
    close_log(f, l);
    json_t *v[1];
    assert_int_equal(read_lines(f->path, v, 1), 1);
    assert_null(json_object_get(v[0], "body_b64"));
    assert_null(json_object_get(v[0], "body_truncated"));
    free_lines(v, 1);
}

/* ---- sampling ---- */

static void test_sampling_keeps_the_configured_fraction(void **state)
{
    fx_t *f = *state;
    const int N = 200000;
    reqlog_t *l = open_log(f, f->path, 0.25, 0);
    int kept = 0;
    for (int i = 0; i < N; i++) kept += reqlog_sampled(l);
    /* Binomial(200000, 0.25): sd = 193.6; 5 sd either way. */
    assert_true(kept > 50000 - 968 && kept < 50000 + 968);
    close_log(f, l);

    reqlog_t *a = open_log(f, f->path, 0.5, 0), *b = open_log(f, f->path, 0.5, 0);
    for (int i = 0; i < 1000; i++) assert_int_equal(reqlog_sampled(a), reqlog_sampled(b));
    close_log(f, a);
    close_log(f, b);

    reqlog_t *none = open_log(f, f->path, 0.0, 0), *all = open_log(f, f->path, 1.0, 0);
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(reqlog_sampled(none), 0);
        assert_int_equal(reqlog_sampled(all), 1);
    }
    close_log(f, none);
    close_log(f, all);
}

/* ---- buffering, rotation, errors ---- */

static void test_every_line_is_written_once_in_order(void **state)
{
    fx_t *f = *state;
    reqlog_t *l = open_log(f, f->path, 1.0, 0);
    char id[32];
    reqlog_entry_t e = basic_entry();
    e.request_id = id;
    const int N = 20000; /* several flushes by size, several by timer */
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof(id), "r%d", i);
        reqlog_write(l, &e);
        if (i % 5000 == 0) uv_run(&f->loop, UV_RUN_NOWAIT);
    }
    close_log(f, l);
    json_t **v = calloc((size_t)N, sizeof(*v));
    assert_int_equal(read_lines(f->path, v, (size_t)N), (size_t)N);
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof(id), "r%d", i);
        assert_string_equal(jstr(v[i], "request_id"), id);
    }
    free_lines(v, (size_t)N);
    free(v);
}

static void test_memory_is_bounded_and_drops_are_counted(void **state)
{
    fx_t *f = *state;
    reqlog_t *l = open_log(f, f->path, 1.0, 0);
    static char longpath[4000];
    memset(longpath, 'p', sizeof(longpath));
    longpath[0] = '/';
    reqlog_entry_t e = basic_entry();
    e.path = longpath;
    e.path_len = sizeof(longpath);
    const uint64_t N = 5000; /* ~20 MB of lines without letting the loop run */
    for (uint64_t i = 0; i < N; i++) reqlog_write(l, &e);
    uint64_t w, d, errs;
    reqlog_counters(l, &w, &d, &errs);
    assert_true(d > 0);
    assert_true(d < N);
    wait_written(f, l, N - d);
    reqlog_counters(l, &w, &d, &errs);
    assert_int_equal(w + d, N);
    assert_int_equal(errs, 0);
    close_log(f, l);
    assert_int_equal(count_lines(f->path), w);
}

static void test_reopen_after_rename_writes_to_the_new_file(void **state)
{
    fx_t *f = *state;
    reqlog_t *l = open_log(f, f->path, 1.0, 0);
    reqlog_entry_t e = basic_entry();
    e.request_id = "before";
    for (int i = 0; i < 3; i++) reqlog_write(l, &e);
    wait_written(f, l, 3);

    char rotated[160];
    snprintf(rotated, sizeof(rotated), "%s.1", f->path);
    assert_int_equal(rename(f->path, rotated), 0);
    e.request_id = "between"; /* written before the reopen completes: goes to one of the two */
    reqlog_write(l, &e);
    reqlog_reopen(l);
    wait_written(f, l, 4);
    e.request_id = "after";
    for (int i = 0; i < 2; i++) reqlog_write(l, &e);
    close_log(f, l);

    json_t *a[8], *b[8];
    size_t na = read_lines(rotated, a, 8), nb = read_lines(f->path, b, 8);
    assert_int_equal(na + nb, 6);
    for (size_t i = 0; i < 3; i++) assert_string_equal(jstr(a[i], "request_id"), "before");
    assert_string_equal(jstr(b[nb - 1], "request_id"), "after");
    assert_string_equal(jstr(b[nb - 2], "request_id"), "after");
    free_lines(a, na);
    free_lines(b, nb);
}

static void test_failed_reopen_keeps_writing_to_the_old_file(void **state)
{
    fx_t *f = *state;
    reqlog_t *l = open_log(f, f->path, 1.0, 0);
    char moved[128], sub[128], newpath[200];
    snprintf(sub, sizeof(sub), "%s/sub", f->dir);
    snprintf(moved, sizeof(moved), "%s/moved", f->dir);
    assert_int_equal(rename(sub, moved), 0);
    FILE *blocker = fopen(sub, "w"); /* "sub" is now a file: the path cannot be opened */
    assert_non_null(blocker);
    fclose(blocker);
    reqlog_reopen(l);
    reqlog_entry_t e = basic_entry();
    reqlog_write(l, &e);
    wait_written(f, l, 1);
    uint64_t w, d, errs;
    reqlog_counters(l, &w, &d, &errs);
    assert_int_equal(errs, 1);
    assert_int_equal(d, 0);
    close_log(f, l);
    snprintf(newpath, sizeof(newpath), "%s/dir/requests.jsonl", moved);
    assert_int_equal(count_lines(newpath), 1);
}

static void test_write_errors_are_counted_not_fatal(void **state)
{
    fx_t *f = *state;
    if (access("/dev/full", W_OK) != 0) skip();
    reqlog_t *l = open_log(f, "/dev/full", 1.0, 0); /* every write: ENOSPC */
    reqlog_entry_t e = basic_entry();
    for (int i = 0; i < 10; i++) reqlog_write(l, &e);
    uint64_t w = 0, d = 0, errs = 0;
    for (int i = 0; i < 1000 && d < 10; i++) {
        uv_run(&f->loop, UV_RUN_ONCE);
        reqlog_counters(l, &w, &d, &errs);
    }
    assert_int_equal(w, 0);
    assert_int_equal(d, 10);
    assert_true(errs >= 1);
    for (int i = 0; i < 5; i++) reqlog_write(l, &e); /* still accepted, still counted */
    close_log(f, l);
}

static void test_unopenable_path_is_an_error_at_open(void **state)
{
    fx_t *f = *state;
    char blocker[128], path[200], err[256] = "";
    snprintf(blocker, sizeof(blocker), "%s/file", f->dir);
    FILE *fp = fopen(blocker, "w");
    assert_non_null(fp);
    fclose(fp);
    snprintf(path, sizeof(path), "%s/log.jsonl", blocker);
    reqlog_t *l = reqlog_open(&f->loop, path, 1.0, 0, 1, NULL, err, sizeof(err));
    assert_null(l);
    assert_non_null(strstr(err, path));
}

/* A reload turning the log on: the lines written before its open (in the
 * thread pool) completes are kept and written, and the counts are the
 * caller's, shared with the log before it. */
static void test_a_started_log_opens_off_the_loop_and_keeps_the_lines_meanwhile(void **state)
{
    fx_t *f = *state;
    reqlog_counts_t counts = {.written = 7, .dropped = 1, .errors = 0}; /* an earlier log's */
    reqlog_t *l = reqlog_start(&f->loop, f->path, 1.0, 0, 1, &counts);
    assert_non_null(l);
    reqlog_entry_t e = basic_entry();
    for (int i = 0; i < 3; i++) reqlog_write(l, &e);
    wait_written(f, l, 7 + 3);
    json_t *lines[4];
    assert_int_equal(read_lines(f->path, lines, 4), 3);
    for (int i = 0; i < 3; i++) json_decref(lines[i]);
    close_log(f, l);
    assert_int_equal(counts.written, 10);
    assert_int_equal(counts.dropped, 1);
}

/* A path that cannot be opened: lines are dropped and counted until a
 * reopen (the next reload) opens one. */
static void test_a_started_log_that_cannot_open_drops_lines_until_a_reopen(void **state)
{
    fx_t *f = *state;
    char blocker[128], path[200];
    snprintf(blocker, sizeof(blocker), "%s/file", f->dir);
    FILE *fp = fopen(blocker, "w");
    assert_non_null(fp);
    fclose(fp);
    snprintf(path, sizeof(path), "%s/log.jsonl", blocker);
    reqlog_counts_t counts = {0};
    reqlog_t *l = reqlog_start(&f->loop, path, 1.0, 0, 1, &counts);
    assert_non_null(l);
    reqlog_entry_t e = basic_entry();
    reqlog_write(l, &e);
    reqlog_write(l, &e);
    for (int i = 0; i < 1000 && counts.dropped < 2; i++) uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(counts.dropped, 2);
    assert_int_equal(counts.errors, 1);
    assert_int_equal(counts.written, 0);
    reqlog_configure(l, f->path, 1.0, 0);
    reqlog_reopen(l);
    reqlog_write(l, &e);
    wait_written(f, l, 1);
    json_t *lines[2];
    assert_int_equal(read_lines(f->path, lines, 2), 1);
    json_decref(lines[0]);
    close_log(f, l);
    assert_int_equal(counts.dropped, 2);
}

/* ---- the proxy hook ---- */

typedef struct {
    mm_server_t srv;
    conn_t c;
    cfg_experiment_t ce;
    cfg_upstream_t up[2];
    exp_rt_t exp;
} fake_t;

static void fake_init(fake_t *k, reqlog_t *l)
{
    memset(k, 0, sizeof(*k));
    k->srv.reqlog = l;
    k->c.srv = &k->srv;
    k->c.kind = CONN_DATA;
    k->c.req.conn = &k->c;
    snprintf(k->ce.name, sizeof(k->ce.name), "ranker");
    snprintf(k->up[0].name, sizeof(k->up[0].name), "champion");
    snprintf(k->up[1].name, sizeof(k->up[1].name), "challenger");
    k->exp.cfg = &k->ce;
    k->exp.ups[0] = &k->up[0];
    k->exp.ups[1] = &k->up[1];
    req_t *r = &k->c.req;
    snprintf(r->id, sizeof(r->id), "abc");
    r->id_len = 3;
    snprintf(r->method, sizeof(r->method), "GET");
    mm_buf_append(&r->url, "/v1/rank?q=1", 12);
}

static void fake_free(fake_t *k)
{
    mm_buf_free(&k->c.req.url);
    mm_buf_free(&k->c.req.out);
    mm_buf_free(&k->c.req.local_body);
    mm_buf_free(&k->c.req.captured);
}

static void test_request_hook_logs_data_plane_requests_only(void **state)
{
    fx_t *f = *state;
    reqlog_t *l = open_log(f, f->path, 1.0, 1);
    fake_t k;
    fake_init(&k, l);
    req_t *r = &k.c.req;

    /* 1: routed, answered by the challenger, body captured whole */
    r->exp = &k.exp;
    r->arm = 1;
    r->status = 200;
    r->body_in = 3;
    r->bytes_out = 40;
    r->capture_body = 1;
    mm_buf_append(&r->captured, "xyz", 3);
    reqlog_request(&k.srv, &k.c, 500);

    /* 2: mirrored: the shadow runtime writes it later */
    r->shadow = (shadow_group_t *)&k;
    reqlog_request(&k.srv, &k.c, 500);
    r->shadow = NULL;

    /* 3: a local answer (feedback) on the data listener: body bytes from r->out */
    r->exp = NULL;
    r->local = 1;
    r->capture_body = 0;
    r->status = 202;
    r->bytes_out = 0;
    r->responding = 1;
    mm_buf_append(&r->local_body, "{\"r\":1}", 7);
    r->body_in = 7;
    mm_buf_cstr(&r->out, "HTTP/1.1 202 Accepted\r\nContent-Length: 5\r\n\r\nhello");
    reqlog_request(&k.srv, &k.c, 700);

    /* 4: the admin listener is never logged */
    k.c.kind = CONN_ADMIN;
    reqlog_request(&k.srv, &k.c, 700);
    close_log(f, l);
    fake_free(&k);

    json_t *v[4];
    assert_int_equal(read_lines(f->path, v, 4), 2);
    assert_string_equal(jstr(v[0], "experiment"), "ranker");
    assert_string_equal(jstr(v[0], "arm"), "challenger");
    assert_string_equal(jstr(v[0], "path"), "/v1/rank?q=1");
    assert_string_equal(jstr(v[0], "body_b64"), "eHl6");
    assert_int_equal(jint(v[0], "bytes_out"), 40);
    assert_true(json_is_null(json_object_get(v[1], "experiment")));
    assert_int_equal(jint(v[1], "status"), 202);
    assert_int_equal(jint(v[1], "bytes_out"), 5);
    assert_int_equal(jint(v[1], "latency_us"), 700);
    assert_string_equal(jstr(v[1], "body_b64"), "eyJyIjoxfQ==");
    free_lines(v, 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_line_has_exactly_the_documented_fields, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_unrouted_request_has_null_experiment_and_empty_shadow,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_bytes_are_escaped_and_invalid_utf8_replaced,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_bodies_are_base64_and_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_body_field_without_log_bodies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sampling_keeps_the_configured_fraction, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_every_line_is_written_once_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_memory_is_bounded_and_drops_are_counted, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_reopen_after_rename_writes_to_the_new_file, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_failed_reopen_keeps_writing_to_the_old_file, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_write_errors_are_counted_not_fatal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unopenable_path_is_an_error_at_open, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_a_started_log_opens_off_the_loop_and_keeps_the_lines_meanwhile, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_a_started_log_that_cannot_open_drops_lines_until_a_reopen, setup, teardown),
        cmocka_unit_test_setup_teardown(test_request_hook_logs_data_plane_requests_only, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
