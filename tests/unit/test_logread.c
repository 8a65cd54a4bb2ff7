/* test_logread.c — the request-log reader behind `modelmux-bench replay`
 * (bench/logread.c), against the format of DESIGN.md §7.
 *
 * A replay must send what was logged: method, path with its query string,
 * the body decoded from body_b64, the request id (on a looped log's later
 * passes suffixed, and still a valid id); it must read `ts` exactly
 * (the pacing depends on it); and a damaged log (a malformed line, a line
 * cut off by a crash) must cost only the damaged lines, each reported with
 * its line number. The recorded sample log in bench/ is read in full. The
 * bench's sources are not in a library, so the file under test is compiled
 * in here. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../bench/logread.c"

/* The first line of bench/sample.jsonl, shortened body. */
#define GOOD_LINE                                                                                  \
    "{\"ts\":\"2024-02-29T12:34:56.789012Z\",\"request_id\":\"15780b2e0c2ec7166104d9866d113a7e\"," \
    "\"experiment\":\"ranker\",\"arm\":\"champion\",\"method\":\"POST\",\"path\":\"/v1/rank?user=" \
    "u0241&k=20\",\"status\":200,\"latency_us\":4544,\"bytes_in\":11,\"bytes_out\":81,\"shadow\":" \
    "[],\"body_b64\":\"eyJ1c2VyIjogMX0=\"}"

static int parse(const char *line, lr_entry_t *e, char *why, size_t whylen)
{
    return lr_parse_line(line, strlen(line), e, why, whylen);
}

/* Reads text as a log named "t.jsonl"; the report goes to *report (free it). */
static int read_text(const char *text, lr_log_t *log, char **report, size_t max_reports)
{
    FILE *in = fmemopen((void *)text, strlen(text), "r");
    assert_non_null(in);
    size_t rlen = 0;
    FILE *rep = open_memstream(report, &rlen);
    assert_non_null(rep);
    char err[256];
    int rc = lr_read(in, "t.jsonl", log, rep, max_reports, err, sizeof(err));
    fclose(in);
    fclose(rep);
    return rc;
}

static void test_good_line_gives_every_replayed_field(void **state)
{
    (void)state;
    lr_entry_t e;
    char why[256];
    assert_int_equal(parse(GOOD_LINE, &e, why, sizeof(why)), 0);
    assert_string_equal(e.method, "POST");
    assert_string_equal(e.target, "/v1/rank?user=u0241&k=20");
    assert_int_equal(e.target_len, strlen("/v1/rank?user=u0241&k=20"));
    assert_string_equal(e.request_id, "15780b2e0c2ec7166104d9866d113a7e");
    assert_int_equal(e.ts_us, 1709210096789012LL);
    assert_true(e.has_body);
    assert_false(e.body_truncated);
    assert_int_equal(e.body_len, 11);
    assert_memory_equal(e.body, "{\"user\": 1}", 11);
    lr_entry_free(&e);
}

static void test_bodiless_and_empty_bodies(void **state)
{
    (void)state;
    lr_entry_t e;
    char why[256];
    /* log.bodies off: no body_b64 at all */
    assert_int_equal(parse("{\"ts\":\"2024-06-01T10:00:00Z\",\"request_id\":null,\"method\":"
                           "\"GET\",\"path\":\"/v1/rank/popular?market=KR&limit=10\"}",
                           &e, why, sizeof(why)),
                     0);
    assert_false(e.has_body);
    assert_null(e.body);
    assert_string_equal(e.request_id, "");
    assert_string_equal(e.target, "/v1/rank/popular?market=KR&limit=10");
    lr_entry_free(&e);
    /* log.bodies on, a GET: an empty body_b64 */
    assert_int_equal(parse("{\"ts\":\"2024-06-01T10:00:00Z\",\"method\":\"GET\",\"path\":\"/\","
                           "\"body_b64\":\"\"}",
                           &e, why, sizeof(why)),
                     0);
    assert_true(e.has_body);
    assert_int_equal(e.body_len, 0);
    lr_entry_free(&e);
    /* a body the log cut short */
    assert_int_equal(parse("{\"ts\":\"2024-06-01T10:00:00Z\",\"method\":\"POST\",\"path\":\"/\","
                           "\"body_b64\":\"Zm9v\",\"body_truncated\":true}",
                           &e, why, sizeof(why)),
                     0);
    assert_true(e.body_truncated);
    assert_int_equal(e.body_len, 3);
    lr_entry_free(&e);
}

static void test_paths_keep_their_query_and_unsafe_bytes_are_encoded(void **state)
{
    (void)state;
    lr_entry_t e;
    char why[256];
    /* The query string is replayed as logged, percent-escapes included. */
    assert_int_equal(parse("{\"ts\":\"2024-06-01T10:00:00Z\",\"method\":\"POST\",\"path\":"
                           "\"/v1/rank/search?q=caf%C3%A9+cr%C3%A8me&k=5#frag\"}",
                           &e, why, sizeof(why)),
                     0);
    assert_string_equal(e.target, "/v1/rank/search?q=caf%C3%A9+cr%C3%A8me&k=5#frag");
    lr_entry_free(&e);
    /* What cannot stand in a request line (a space, U+FFFD the log wrote
     * for invalid UTF-8, a control byte) is percent-encoded. */
    assert_int_equal(parse("{\"ts\":\"2024-06-01T10:00:00Z\",\"method\":\"GET\",\"path\":"
                           "\"/a b/\\ufffd?x=\\u0001\"}",
                           &e, why, sizeof(why)),
                     0);
    assert_string_equal(e.target, "/a%20b/%EF%BF%BD?x=%01");
    lr_entry_free(&e);
}

static void test_request_ids_null_or_invalid_are_dropped(void **state)
{
    (void)state;
    lr_entry_t e;
    char why[256];
    assert_int_equal(parse("{\"ts\":\"2024-06-01T10:00:00Z\",\"method\":\"GET\",\"path\":\"/\","
                           "\"request_id\":\"bad id!\"}",
                           &e, why, sizeof(why)),
                     0);
    assert_string_equal(e.request_id, "");
    lr_entry_free(&e);
    assert_int_equal(parse("{\"ts\":\"2024-06-01T10:00:00Z\",\"method\":\"GET\",\"path\":\"/\","
                           "\"request_id\":42}",
                           &e, why, sizeof(why)),
                     -1);
    assert_non_null(strstr(why, "request_id"));
}

static void test_malformed_lines_say_why(void **state)
{
    (void)state;
    static const struct {
        const char *line, *why;
    } cases[] = {
        {"not json", "not JSON"},
        {"[1,2]", "not a JSON object"},
        {"{\"method\":\"GET\",\"path\":\"/\"}", "\"ts\" is missing"},
        {"{\"ts\":\"yesterday\",\"method\":\"GET\",\"path\":\"/\"}", "RFC 3339"},
        /* quoted with JSON escapes: no control byte reaches the terminal */
        {"{\"ts\":\"2024\\u001b[2J\\n\",\"method\":\"GET\",\"path\":\"/\"}",
         "date-time: \"2024\\u001b[2J\\n\""},
        {"{\"ts\":\"2024-06-01T10:00:00Z\",\"path\":\"/\"}", "\"method\" is missing"},
        {"{\"ts\":\"2024-06-01T10:00:00Z\",\"method\":\"\",\"path\":\"/\"}", "\"method\" is empty"},
        {"{\"ts\":\"2024-06-01T10:00:00Z\",\"method\":\"G T\",\"path\":\"/\"}", "HTTP token"},
        {"{\"ts\":\"2024-06-01T10:00:00Z\",\"method\":\"GET\"}", "\"path\" is missing"},
        {"{\"ts\":\"2024-06-01T10:00:00Z\",\"method\":\"GET\",\"path\":\"v1\"}", "start with '/'"},
        {"{\"ts\":\"2024-06-01T10:00:00Z\",\"method\":\"GET\",\"path\":\"/\",\"body_b64\":\"@@\"}",
         "base64"},
    };
    for (size_t i = 0; i < MM_ARRAY_LEN(cases); i++) {
        lr_entry_t e;
        char why[256] = "";
        assert_int_equal(parse(cases[i].line, &e, why, sizeof(why)), -1);
        if (strstr(why, cases[i].why) == NULL) {
            fprintf(stderr, "line %s: reason \"%s\" lacks \"%s\"\n", cases[i].line, why,
                    cases[i].why);
            fail();
        }
    }
}

static void test_bad_lines_are_reported_with_line_numbers_and_skipped(void **state)
{
    (void)state;
    const char *text = GOOD_LINE "\n"               /* 1 */
                                 "{\"ts\": oops}\n" /* 2 malformed */
                                 "\n"               /* 3 blank */
                                 "{\"ts\":\"2024-06-01T10:00:00Z\",\"path\":\"/\"}\n" /* 4 */
                                 "{\"ts\":\"2024-06-01T10:00:01Z\",\"method\":\"GET\","
                                 "\"path\":\"/ok\"}\r\n"                    /* 5 CRLF */
                                 "{\"ts\":\"2024-06-01T10:00:02Z\",\"meth"; /* 6 truncated */
    lr_log_t log;
    char *report = NULL;
    assert_int_equal(read_text(text, &log, &report, 100), 0);
    assert_int_equal(log.lines, 6);
    assert_int_equal(log.n, 2);
    assert_int_equal(log.skipped, 3);
    assert_int_equal(log.v[0].line, 1);
    assert_int_equal(log.v[1].line, 5);
    assert_string_equal(log.v[1].target, "/ok");
    assert_non_null(strstr(report, "t.jsonl:2: skipped: not JSON"));
    assert_non_null(strstr(report, "t.jsonl:4: skipped: \"method\" is missing"));
    assert_non_null(strstr(report, "t.jsonl:6: skipped: truncated (the file ends mid-line)"));
    assert_null(strstr(report, "t.jsonl:3:")); /* a blank line is not an error */
    assert_null(strstr(report, "t.jsonl:5:"));
    free(report);
    lr_free(&log);
}

static void test_a_complete_last_line_without_newline_is_kept(void **state)
{
    (void)state;
    lr_log_t log;
    char *report = NULL;
    assert_int_equal(read_text(GOOD_LINE, &log, &report, 100), 0);
    assert_int_equal(log.n, 1);
    assert_int_equal(log.skipped, 0);
    assert_string_equal(report, "");
    free(report);
    lr_free(&log);
}

static void test_reports_are_capped_with_a_summary(void **state)
{
    (void)state;
    char text[4096] = "";
    for (int i = 0; i < 30; i++) strcat(text, "garbage\n");
    lr_log_t log;
    char *report = NULL;
    assert_int_equal(read_text(text, &log, &report, 5), 0);
    assert_int_equal(log.n, 0);
    assert_int_equal(log.skipped, 30);
    assert_non_null(strstr(report, "t.jsonl:5: skipped"));
    assert_null(strstr(report, "t.jsonl:6: skipped"));
    assert_non_null(strstr(report, "25 more skipped lines not shown (30 skipped in all)"));
    free(report);
    lr_free(&log);
}

static void test_timestamps(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        int64_t us;
    } ok[] = {
        {"1970-01-01T00:00:00Z", 0},
        {"1970-01-01T00:00:00.000001Z", 1},
        {"1969-12-31T23:59:59.5Z", -500000},
        {"2024-02-29T12:34:56.789012Z", 1709210096789012LL},
        {"2024-02-29T12:34:56.7890129Z", 1709210096789012LL}, /* beyond µs: cut */
        {"2024-02-29t12:34:56.789012z", 1709210096789012LL},
        {"2024-06-01T12:00:00+02:00", 1717236000000000LL},
        {"2024-06-01T07:30:00-02:30", 1717236000000000LL},
        {"2024-06-01 10:00:00Z", 1717236000000000LL},
        {"2000-03-01T00:00:00Z", 951868800000000LL},
    };
    for (size_t i = 0; i < MM_ARRAY_LEN(ok); i++) {
        int64_t us = 12345;
        if (lr_parse_ts(ok[i].s, strlen(ok[i].s), &us) != 0 || us != ok[i].us) {
            fprintf(stderr, "%s: got %lld, want %lld\n", ok[i].s, (long long)us,
                    (long long)ok[i].us);
            fail();
        }
    }
    static const char *bad[] = {
        "2023-02-29T00:00:00Z", /* not a leap year */
        "1900-02-29T00:00:00Z", /* nor is 1900 */
        "2024-13-01T00:00:00Z",  "2024-04-31T00:00:00Z",     "2024-06-01T24:00:00Z",
        "2024-06-01T10:00:00", /* no zone */
        "2024-06-01T10:00:00.Z", "2024-06-01T10:00:00+0200", "2024-06-01X10:00:00Z",
        "2024-6-01T10:00:00Z",   "2024-06-01T10:00:00Zjunk", "",
    };
    for (size_t i = 0; i < MM_ARRAY_LEN(bad); i++) {
        int64_t us;
        if (lr_parse_ts(bad[i], strlen(bad[i]), &us) == 0) {
            fprintf(stderr, "accepted bad timestamp \"%s\"\n", bad[i]);
            fail();
        }
    }
}

static void test_base64(void **state)
{
    (void)state;
    static const struct {
        const char *in, *out;
    } vec[] = {
        {"", ""},
        {"Zg==", "f"},
        {"Zm8=", "fo"},
        {"Zm9v", "foo"},
        {"Zm9vYg==", "foob"},
        {"Zm9vYmE=", "fooba"},
        {"Zm9vYmFy", "foobar"},
        {"Zm9vYg", "foob"},
    };
    for (size_t i = 0; i < MM_ARRAY_LEN(vec); i++) {
        unsigned char *out;
        size_t n;
        assert_int_equal(lr_b64_decode(vec[i].in, strlen(vec[i].in), &out, &n), 0);
        assert_int_equal(n, strlen(vec[i].out));
        if (n) assert_memory_equal(out, vec[i].out, n);
        free(out);
    }
    unsigned char *out;
    size_t n;
    static const unsigned char bin[] = {0, 255, 16, 128, 1};
    assert_int_equal(lr_b64_decode("AP8QgAE=", 8, &out, &n), 0);
    assert_int_equal(n, sizeof(bin));
    assert_memory_equal(out, bin, sizeof(bin));
    free(out);
    assert_int_equal(lr_b64_decode("Zm9v!", 5, &out, &n), -1);
    assert_int_equal(lr_b64_decode("Z", 1, &out, &n), -1);
    assert_int_equal(lr_b64_decode("Zm9vY", 5, &out, &n), -1);
    assert_int_equal(lr_b64_decode("Zm=v", 4, &out, &n), -1);
}

static void test_sort_by_ts_is_stable(void **state)
{
    (void)state;
    /* Completion order: the slow request (arrived first) is logged last. */
    const char *text = "{\"ts\":\"2024-06-01T10:00:00.200Z\",\"method\":\"GET\",\"path\":\"/b\"}\n"
                       "{\"ts\":\"2024-06-01T10:00:00.300Z\",\"method\":\"GET\",\"path\":\"/c\"}\n"
                       "{\"ts\":\"2024-06-01T10:00:00.200Z\",\"method\":\"GET\",\"path\":\"/b2\"}\n"
                       "{\"ts\":\"2024-06-01T10:00:00.100Z\",\"method\":\"GET\",\"path\":\"/a\"}\n";
    lr_log_t log;
    char *report = NULL;
    assert_int_equal(read_text(text, &log, &report, 100), 0);
    lr_sort_by_ts(&log);
    assert_string_equal(log.v[0].target, "/a");
    assert_string_equal(log.v[1].target, "/b");
    assert_string_equal(log.v[2].target, "/b2");
    assert_string_equal(log.v[3].target, "/c");
    free(report);
    lr_free(&log);
}

static void test_the_recorded_sample_log_reads_in_full(void **state)
{
    (void)state;
    const char *dir = getenv("MM_SOURCE_DIR");
    char path[1024];
    snprintf(path, sizeof(path), "%s/bench/sample.jsonl", dir ? dir : ".");
    lr_log_t log;
    char err[256];
    assert_int_equal(lr_load(path, &log, stderr, 100, err, sizeof(err)), 0);
    assert_true(log.n >= 150);
    assert_int_equal(log.skipped, 0);
    assert_int_equal(log.n, log.lines);
    int posts = 0, queries = 0;
    for (size_t i = 0; i < log.n; i++) {
        const lr_entry_t *e = &log.v[i];
        assert_true(e->has_body); /* recorded with log.bodies */
        assert_int_equal(strlen(e->request_id), 32);
        if (strcmp(e->method, "POST") == 0) {
            posts++;
            assert_true(e->body_len > 0);
            assert_int_equal(e->body[0], '{');
        }
        queries += strchr(e->target, '?') != NULL;
        if (i > 0) assert_true(e->ts_us >= log.v[i - 1].ts_us); /* written in arrival order */
    }
    assert_true(posts > 0);
    assert_true(queries > 0);
    lr_free(&log);
}

static void test_unreadable_file_is_an_error(void **state)
{
    (void)state;
    lr_log_t log;
    char err[256];
    assert_int_equal(lr_load("/nonexistent/requests.jsonl", &log, stderr, 1, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "cannot open /nonexistent/requests.jsonl"));
}

/* A valid X-Request-Id for modelmux (DESIGN.md §4): 1-128 of [A-Za-z0-9._-]. */
static int valid_id(const char *s)
{
    return http_valid_request_id((mm_str_t){s, strlen(s)});
}

static void test_looped_ids_get_the_pass_and_stay_valid(void **state)
{
    (void)state;
    char out[MM_REQID_MAX + 1];
    lr_pass_id("req-7", 0, out);
    assert_string_equal(out, "req-7");
    lr_pass_id("req-7", 1, out);
    assert_string_equal(out, "req-7.2");
    lr_pass_id("req-7", 9, out);
    assert_string_equal(out, "req-7.10");
    lr_pass_id("", 3, out); /* no logged id: none sent */
    assert_string_equal(out, "");
    /* Long ids: the first characters make room for the suffix, so the id
     * stays within modelmux's limit (a longer one would be replaced, and the
     * join to the original lost). */
    char id[MM_REQID_MAX + 1];
    for (size_t n = 120; n <= MM_REQID_MAX; n++) {
        for (size_t k = 0; k < n; k++) id[k] = "abcdefghij"[k % 10];
        id[n] = '\0';
        lr_pass_id(id, 0, out);
        assert_string_equal(out, id); /* the first pass: as logged */
        for (size_t pass = 1; pass < 10000000; pass = pass * 10 + 3) {
            char sfx[24];
            snprintf(sfx, sizeof(sfx), ".%zu", pass + 1);
            size_t sn = strlen(sfx);
            lr_pass_id(id, pass, out);
            assert_true(valid_id(out));
            size_t len = strlen(out);
            assert_int_equal(len, n + sn <= MM_REQID_MAX ? n + sn : MM_REQID_MAX);
            assert_string_equal(out + len - sn, sfx);
            /* what is left of the id is its end */
            assert_memory_equal(out, id + n - (len - sn), len - sn);
        }
    }
    /* 127 characters, the second pass: 126 of them and ".2" */
    memset(id, 'x', 127);
    id[0] = 'A';
    id[127] = '\0';
    lr_pass_id(id, 1, out);
    assert_int_equal(strlen(out), 128);
    assert_int_equal(out[0], 'x');
    assert_string_equal(out + 126, ".2");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_line_gives_every_replayed_field),
        cmocka_unit_test(test_bodiless_and_empty_bodies),
        cmocka_unit_test(test_paths_keep_their_query_and_unsafe_bytes_are_encoded),
        cmocka_unit_test(test_request_ids_null_or_invalid_are_dropped),
        cmocka_unit_test(test_malformed_lines_say_why),
        cmocka_unit_test(test_bad_lines_are_reported_with_line_numbers_and_skipped),
        cmocka_unit_test(test_a_complete_last_line_without_newline_is_kept),
        cmocka_unit_test(test_reports_are_capped_with_a_summary),
        cmocka_unit_test(test_timestamps),
        cmocka_unit_test(test_base64),
        cmocka_unit_test(test_sort_by_ts_is_stable),
        cmocka_unit_test(test_the_recorded_sample_log_reads_in_full),
        cmocka_unit_test(test_unreadable_file_is_an_error),
        cmocka_unit_test(test_looped_ids_get_the_pass_and_stay_valid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
