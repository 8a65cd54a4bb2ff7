/* test_pacing.c — the replay schedule (lr_schedule in bench/logread.c): from
 * the logged arrival times and the pacing options to the send time of each
 * request.
 *
 * --speed X must reproduce the recorded gaps X times faster (and a looped log
 * must go on at the same average rate, not burst at the seam), --rate R must
 * space requests exactly 1/R apart, --max sends without waiting, and options
 * that cannot make a schedule are errors with a message. Pure arithmetic, no
 * network. The bench's sources are not in a library, so the file under test
 * is compiled in here. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../bench/logread.c"

/* Arrival times of a real log: µs since the epoch, so large numbers. */
#define T0 1717236000000000LL

static const int64_t ts4[] = {T0, T0 + 1000, T0 + 1500, T0 + 4000};

static void schedule_ok(const int64_t *ts, size_t n_log, size_t n_total, lr_pace_t pace,
                        uint64_t *out)
{
    char err[256] = "";
    if (lr_schedule(ts, n_log, n_total, &pace, out, err, sizeof(err)) != 0) {
        fprintf(stderr, "lr_schedule failed: %s\n", err);
        fail();
    }
}

static void test_speed_one_reproduces_the_recorded_gaps(void **state)
{
    (void)state;
    uint64_t out[4];
    schedule_ok(ts4, 4, 4, (lr_pace_t){.mode = LR_PACE_SPEED, .speed = 1}, out);
    assert_int_equal(out[0], 0);
    assert_int_equal(out[1], 1000);
    assert_int_equal(out[2], 1500);
    assert_int_equal(out[3], 4000);
}

static void test_speed_x_divides_every_offset(void **state)
{
    (void)state;
    uint64_t out[4];
    schedule_ok(ts4, 4, 4, (lr_pace_t){.mode = LR_PACE_SPEED, .speed = 4}, out);
    assert_int_equal(out[1], 250);
    assert_int_equal(out[2], 375);
    assert_int_equal(out[3], 1000);
    schedule_ok(ts4, 4, 4, (lr_pace_t){.mode = LR_PACE_SPEED, .speed = 0.5}, out);
    assert_int_equal(out[1], 2000);
    assert_int_equal(out[3], 8000);
}

static void test_a_looped_log_keeps_its_average_rate(void **state)
{
    (void)state;
    /* span 4000 µs over 3 gaps: mean gap 1333.33, period 5333.33 µs */
    uint64_t out[10];
    schedule_ok(ts4, 4, 10, (lr_pace_t){.mode = LR_PACE_SPEED, .speed = 1}, out);
    assert_int_equal(out[3], 4000);
    assert_int_equal(out[4], 5333);
    assert_int_equal(out[5], 6333);
    assert_int_equal(out[7], 9333);
    assert_int_equal(out[8], 10667);
    assert_int_equal(out[9], 11667);
    for (size_t i = 1; i < 10; i++) assert_true(out[i] >= out[i - 1]);
    /* and faster with speed 2 */
    schedule_ok(ts4, 4, 10, (lr_pace_t){.mode = LR_PACE_SPEED, .speed = 2}, out);
    assert_int_equal(out[4], 2667);
}

static void test_out_of_order_timestamps_never_go_back(void **state)
{
    (void)state;
    const int64_t ts[] = {T0, T0 + 2000, T0 + 1000, T0 + 3000};
    uint64_t out[4];
    schedule_ok(ts, 4, 4, (lr_pace_t){.mode = LR_PACE_SPEED, .speed = 1}, out);
    assert_int_equal(out[1], 2000);
    assert_int_equal(out[2], 2000);
    assert_int_equal(out[3], 3000);
}

static void test_degenerate_logs_still_loop_at_a_finite_rate(void **state)
{
    (void)state;
    uint64_t out[3];
    /* one line: once a second */
    schedule_ok(ts4, 1, 3, (lr_pace_t){.mode = LR_PACE_SPEED, .speed = 1}, out);
    assert_int_equal(out[0], 0);
    assert_int_equal(out[1], 1000000);
    assert_int_equal(out[2], 2000000);
    /* every line at the same instant: the passes 1 ms apart */
    const int64_t same[] = {T0, T0, T0};
    uint64_t out6[6];
    schedule_ok(same, 3, 6, (lr_pace_t){.mode = LR_PACE_SPEED, .speed = 1}, out6);
    assert_int_equal(out6[2], 0);
    assert_int_equal(out6[3], 1000);
    assert_int_equal(out6[5], 1000);
}

static void test_rate_spaces_requests_evenly(void **state)
{
    (void)state;
    uint64_t out[5];
    schedule_ok(ts4, 4, 5, (lr_pace_t){.mode = LR_PACE_RATE, .rate = 1000}, out);
    for (size_t i = 0; i < 5; i++) assert_int_equal(out[i], i * 1000);
    /* 3 per second: rounded to the nearest µs, never drifting */
    uint64_t out3[4];
    schedule_ok(ts4, 4, 4, (lr_pace_t){.mode = LR_PACE_RATE, .rate = 3}, out3);
    assert_int_equal(out3[1], 333333);
    assert_int_equal(out3[2], 666667);
    assert_int_equal(out3[3], 1000000);
    /* the recorded timestamps do not matter */
    const int64_t other[] = {T0, T0 + 999999, T0 + 5, T0 + 7};
    uint64_t out4[4];
    schedule_ok(other, 4, 4, (lr_pace_t){.mode = LR_PACE_RATE, .rate = 3}, out4);
    assert_memory_equal(out3, out4, sizeof(out3));
}

static void test_max_sends_everything_at_once(void **state)
{
    (void)state;
    uint64_t out[6];
    memset(out, 0xff, sizeof(out));
    schedule_ok(ts4, 4, 6, (lr_pace_t){.mode = LR_PACE_MAX}, out);
    for (size_t i = 0; i < 6; i++) assert_int_equal(out[i], 0);
}

static void test_bad_options_are_errors_with_a_message(void **state)
{
    (void)state;
    uint64_t out[4];
    char err[256];
    static const lr_pace_t bad[] = {
        {.mode = LR_PACE_SPEED, .speed = 0},     {.mode = LR_PACE_SPEED, .speed = -1},
        {.mode = LR_PACE_SPEED, .speed = NAN},   {.mode = LR_PACE_SPEED, .speed = INFINITY},
        {.mode = LR_PACE_RATE, .rate = 0},       {.mode = LR_PACE_RATE, .rate = NAN},
        {.mode = (lr_pace_mode_t)7, .speed = 1},
    };
    for (size_t i = 0; i < MM_ARRAY_LEN(bad); i++) {
        err[0] = '\0';
        assert_int_equal(lr_schedule(ts4, 4, 4, &bad[i], out, err, sizeof(err)), -1);
        assert_non_null(strstr(err, "schedule:"));
    }
    lr_pace_t one = {.mode = LR_PACE_SPEED, .speed = 1};
    assert_int_equal(lr_schedule(ts4, 0, 4, &one, out, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "empty"));
    /* a day-long log at a billionth of its speed would start after 2^63 µs */
    const int64_t day[] = {T0, T0 + 86400000000LL};
    lr_pace_t slow = {.mode = LR_PACE_SPEED, .speed = 1e-9};
    assert_int_equal(lr_schedule(day, 2, 2, &slow, out, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "2^63"));
    /* nothing to send is not an error */
    assert_int_equal(lr_schedule(ts4, 4, 0, &one, out, err, sizeof(err)), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_speed_one_reproduces_the_recorded_gaps),
        cmocka_unit_test(test_speed_x_divides_every_offset),
        cmocka_unit_test(test_a_looped_log_keeps_its_average_rate),
        cmocka_unit_test(test_out_of_order_timestamps_never_go_back),
        cmocka_unit_test(test_degenerate_logs_still_loop_at_a_finite_rate),
        cmocka_unit_test(test_rate_spaces_requests_evenly),
        cmocka_unit_test(test_max_sends_everything_at_once),
        cmocka_unit_test(test_bad_options_are_errors_with_a_message),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
