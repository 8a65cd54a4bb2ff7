/* test_bench_client.c — the pure helpers of bench/bench_client.c that
 * modelmux-bench's subcommands share: how an answer's bytes are shown in a
 * one-line message, which URL options are bad usage, and how a user's
 * --header joins the head the bench writes.
 *
 * An answer body is not NUL-terminated and may hold anything (a newline, a
 * control byte, invalid UTF-8): a message must show exactly the bytes there
 * are, on one line. A request has one Host: a user's replaces the bench's,
 * and the headers that frame the body stay the bench's. No network. The bench's sources are not in
 * a library, so the file under test is compiled in here. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../bench/bench_client.c"

static void test_printable_shows_only_the_bytes_there_are(void **state)
{
    (void)state;
    mm_buf_t m;
    mm_buf_init(&m);
    /* Bytes past n are not part of the body (a reused buffer's old
     * content, or no NUL at all): they must not be shown. */
    const char body[] = "{\"error\":\"x\"}GARBAGE";
    assert_string_equal(bc_printable(&m, body, 13, 200), "{\"error\":\"x\"}");
    assert_string_equal(bc_printable(&m, NULL, 0, 200), "");
    mm_buf_free(&m);
}

static void test_printable_keeps_a_message_on_one_line(void **state)
{
    (void)state;
    mm_buf_t m;
    mm_buf_init(&m);
    const char body[] = "a\nb\r\x01\x7f\\\xc3\xa9\x00z";
    assert_string_equal(bc_printable(&m, body, sizeof(body) - 1, 200),
                        "a\\x0ab\\x0d\\x01\\x7f\\x5c\\xc3\\xa9\\x00z");
    mm_buf_free(&m);
}

static void test_printable_cuts_at_max_and_says_so(void **state)
{
    (void)state;
    mm_buf_t m;
    mm_buf_init(&m);
    assert_string_equal(bc_printable(&m, "abcdef", 6, 4), "abcd...");
    assert_string_equal(bc_printable(&m, "abcd", 4, 4), "abcd");
    /* The cut counts input bytes, so an escaped byte is never split. */
    assert_string_equal(bc_printable(&m, "ab\ncd", 5, 3), "ab\\x0a...");
    mm_buf_free(&m);
}

static void test_arg_url_refuses_what_is_not_a_target_url(void **state)
{
    (void)state;
    char err[512];
    static const char *bad[] = {
        "ftp://127.0.0.1:21010",           /* plain HTTP only */
        "http://127.0.0.1:99999",          /* no such port */
        "http://127.0.0.1:21030/base?x=1", /* a query has no place in a base */
        "http://",                         /* no host */
        "http://[::1:8080",                /* an unclosed IPv6 literal */
        "http://a b:80/",                  /* a space in the host */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        assert_int_equal(bc_arg_url(bad[i], 0, err, sizeof(err)), -1);
        /* the message names the URL, so the user sees which one */
        assert_non_null(strstr(err, bad[i]));
    }
    /* Well-formed, whether or not the host resolves: that is for later. */
    assert_int_equal(bc_arg_url("http://127.0.0.1:21030/base", 0, err, sizeof(err)), 0);
    assert_int_equal(bc_arg_url("http://no-such-host.invalid", 0, err, sizeof(err)), 0);
    assert_int_equal(bc_arg_url("HTTP://[::1]:8080", 1, err, sizeof(err)), 0);
    /* root_only (--admin): a path is refused, a trailing slash is no path */
    assert_int_equal(bc_arg_url("http://127.0.0.1:9090/x", 1, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "root"));
    assert_int_equal(bc_arg_url("http://127.0.0.1:9090/", 1, err, sizeof(err)), 0);
}

/* The head bc_req_prepare builds for a POST of "{}" with these headers. */
static const char *head_with(const bc_headers_t *h)
{
    static bc_req_t r;
    bc_target_t t;
    char err[256];
    memset(&t, 0, sizeof(t));
    assert_int_equal(bc_parse_url("http://127.0.0.1:8080", &t.cfg, err, sizeof(err)), 0);
    bc_req_free(&r);
    bc_req_init(&r);
    assert_int_equal(
        bc_req_prepare(&r, &t, "POST", "/v1/x", 5, "{}", 2, "application/json", "id-1", h), 0);
    mm_buf_append(&r.head, "", 1);
    return r.head.p;
}

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle)) n++;
    return n;
}

static void test_head_without_user_headers(void **state)
{
    (void)state;
    assert_string_equal(head_with(NULL), "POST /v1/x HTTP/1.1\r\n"
                                         "Host: 127.0.0.1:8080\r\n"
                                         "User-Agent: modelmux-bench/" MM_VERSION "\r\n"
                                         "Content-Type: application/json\r\n"
                                         "Content-Length: 2\r\n"
                                         "X-Request-Id: id-1\r\n"
                                         "\r\n");
}

static void test_a_user_host_replaces_the_bench_s_own(void **state)
{
    (void)state;
    bc_headers_t h;
    char err[256];
    bc_headers_init(&h);
    assert_int_equal(bc_headers_add(&h, "Host:api.example.com", err, sizeof(err)), 0);
    assert_int_equal(bc_headers_add(&h, "X-Market: KR", err, sizeof(err)), 0);
    const char *head = head_with(&h);
    assert_int_equal(count(head, "Host: "), 1);
    assert_non_null(strstr(head, "\r\nHost: api.example.com\r\n"));
    assert_non_null(strstr(head, "\r\nX-Market: KR\r\n"));
    assert_non_null(strstr(head, "\r\nUser-Agent: modelmux-bench/"));
    bc_headers_free(&h);
}

static void test_user_agent_content_type_and_request_id_replace_too(void **state)
{
    (void)state;
    bc_headers_t h;
    char err[256];
    bc_headers_init(&h);
    assert_int_equal(bc_headers_add(&h, "user-agent: probe/1", err, sizeof(err)), 0);
    assert_int_equal(bc_headers_add(&h, "CONTENT-TYPE: application/x-ndjson", err, sizeof(err)), 0);
    assert_int_equal(bc_headers_add(&h, "X-Request-Id: mine", err, sizeof(err)), 0);
    const char *head = head_with(&h);
    assert_int_equal(count(head, "ser-Agent: "), 0);
    assert_int_equal(count(head, "ser-agent: probe/1\r\n"), 1);
    assert_int_equal(count(head, "ontent-Type"), 0);
    assert_int_equal(count(head, "CONTENT-TYPE: application/x-ndjson\r\n"), 1);
    assert_int_equal(count(head, "X-Request-Id: "), 1);
    assert_non_null(strstr(head, "X-Request-Id: mine\r\n"));
    /* the framing stays the bench's */
    assert_int_equal(count(head, "Content-Length: 2\r\n"), 1);
    bc_headers_free(&h);
}

/* bc_headers_add refuses s, saying why, and adds nothing. */
static void assert_refused(bc_headers_t *h, const char *s, const char *why)
{
    char err[256] = "";
    size_t before = h->lines.len;
    assert_int_equal(bc_headers_add(h, s, err, sizeof(err)), -1);
    if (strstr(err, why) == NULL) fail_msg("'%s': '%s' does not say '%s'", s, err, why);
    assert_int_equal(h->lines.len, before);
}

static void test_headers_that_frame_the_body_are_refused(void **state)
{
    (void)state;
    bc_headers_t h;
    bc_headers_init(&h);
    assert_refused(&h, "Content-Length:5", "frames the body");
    assert_refused(&h, "content-length: 2", "frames the body");
    assert_refused(&h, "Transfer-Encoding: chunked", "frames the body");
    assert_refused(&h, "TRANSFER-ENCODING:identity", "frames the body");
    bc_headers_free(&h);
}

static void test_a_replacing_header_given_twice_is_refused(void **state)
{
    (void)state;
    bc_headers_t h;
    char err[256];
    bc_headers_init(&h);
    assert_int_equal(bc_headers_add(&h, "Host: a.example", err, sizeof(err)), 0);
    assert_refused(&h, "host: b.example", "twice");
    /* other headers may repeat, as HTTP allows */
    assert_int_equal(bc_headers_add(&h, "X-Tag: 1", err, sizeof(err)), 0);
    assert_int_equal(bc_headers_add(&h, "X-Tag: 2", err, sizeof(err)), 0);
    bc_headers_free(&h);
}

static void test_malformed_headers_are_refused(void **state)
{
    (void)state;
    bc_headers_t h;
    bc_headers_init(&h);
    assert_refused(&h, "NoColon", "not Name:value");
    assert_refused(&h, ":value", "not Name:value");
    assert_refused(&h, "Bad Name: v", "not Name:value");
    assert_refused(&h, "X(y): v", "not Name:value");
    assert_refused(&h, "X: a\rb", "not Name:value");
    assert_refused(&h, "X: a\nb", "not Name:value");
    bc_headers_free(&h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_printable_shows_only_the_bytes_there_are),
        cmocka_unit_test(test_printable_keeps_a_message_on_one_line),
        cmocka_unit_test(test_printable_cuts_at_max_and_says_so),
        cmocka_unit_test(test_arg_url_refuses_what_is_not_a_target_url),
        cmocka_unit_test(test_head_without_user_headers),
        cmocka_unit_test(test_a_user_host_replaces_the_bench_s_own),
        cmocka_unit_test(test_user_agent_content_type_and_request_id_replace_too),
        cmocka_unit_test(test_headers_that_frame_the_body_are_refused),
        cmocka_unit_test(test_a_replacing_header_given_twice_is_refused),
        cmocka_unit_test(test_malformed_headers_are_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
