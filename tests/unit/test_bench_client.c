/* test_bench_client.c — the pure helpers of bench/bench_client.c that
 * modelmux-bench's subcommands share: how an answer's bytes are shown in a
 * one-line message, and which URL options are bad usage.
 *
 * An answer body is not NUL-terminated and may hold anything (a newline, a
 * control byte, invalid UTF-8): a message must show exactly the bytes there
 * are, on one line. No network. The bench's sources are not in a library, so
 * the file under test is compiled in here. */
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_printable_shows_only_the_bytes_there_are),
        cmocka_unit_test(test_printable_keeps_a_message_on_one_line),
        cmocka_unit_test(test_printable_cuts_at_max_and_says_so),
        cmocka_unit_test(test_arg_url_refuses_what_is_not_a_target_url),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
