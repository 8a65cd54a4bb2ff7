/* test_bench_client.c — the pure helpers of bench/bench_client.c that
 * modelmux-bench's subcommands share: how an answer's bytes are shown in a
 * one-line message.
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_printable_shows_only_the_bytes_there_are),
        cmocka_unit_test(test_printable_keeps_a_message_on_one_line),
        cmocka_unit_test(test_printable_cuts_at_max_and_says_so),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
