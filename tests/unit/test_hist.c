/* test_hist.c — the bench's log-linear latency histogram (bench/hist.c).
 *
 * What `modelmux-bench replay` prints as p50/p90/p99/p99.9 must be the
 * nearest-rank percentile of what it measured, within the histogram's
 * documented relative error, whatever the magnitude: microseconds on
 * loopback, seconds behind a slow model. Each test compares against a
 * sorted reference or against exact arithmetic. The bench's sources are not
 * in a library, so the file under test is compiled in here. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../bench/hist.c"
#include "common.h"
#include "rng.h"

static hist_t make(int sub_bits, uint64_t max)
{
    hist_t h;
    char err[128];
    assert_int_equal(hist_init(&h, sub_bits, max, err, sizeof(err)), 0);
    return h;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest rank over a sorted array, the definition hist_percentile follows. */
static uint64_t ref_percentile(const uint64_t *sorted, size_t n, double p)
{
    if (p <= 0) return sorted[0];
    double r = ceil(p / 100.0 * (double)n - 1e-9);
    size_t rank = r < 1 ? 1 : (size_t)r;
    if (rank > n) rank = n;
    return sorted[rank - 1];
}

static void check_against_reference(hist_t *h, uint64_t *v, size_t n)
{
    static const double ps[] = {0, 0.1, 1, 10, 25, 50, 75, 90, 99, 99.9, 99.99, 100};
    qsort(v, n, sizeof(*v), cmp_u64);
    double bound = hist_rel_error(h);
    for (size_t i = 0; i < MM_ARRAY_LEN(ps); i++) {
        uint64_t want = ref_percentile(v, n, ps[i]);
        uint64_t got = hist_percentile(h, ps[i]);
        double rel = want ? fabs((double)got - (double)want) / (double)want : (double)got;
        if (rel > bound) {
            fprintf(stderr, "p%g: histogram %llu, exact %llu, relative error %g > %g\n", ps[i],
                    (unsigned long long)got, (unsigned long long)want, rel, bound);
            fail();
        }
    }
    assert_int_equal(h->total, n);
    assert_int_equal(h->min, v[0]);
    assert_int_equal(h->max, v[n - 1]);
}

static void test_values_below_the_sub_bucket_count_are_exact(void **state)
{
    (void)state;
    hist_t h = make(7, 1u << 20);
    for (uint64_t v = 0; v < 128; v++) {
        uint64_t lo, hi;
        hist_bucket_range(&h, hist_index(&h, v), &lo, &hi);
        assert_int_equal(lo, v);
        assert_int_equal(hi, v);
    }
    for (uint64_t v = 1; v <= 100; v++) hist_record(&h, v);
    assert_int_equal(hist_percentile(&h, 50), 50);
    assert_int_equal(hist_percentile(&h, 90), 90);
    assert_int_equal(hist_percentile(&h, 99), 99);
    assert_int_equal(hist_percentile(&h, 100), 100);
    assert_int_equal(hist_percentile(&h, 0), 1);
    hist_free(&h);
}

static void test_buckets_tile_the_range_and_are_narrow(void **state)
{
    (void)state;
    hist_t h = make(7, (uint64_t)1 << 40);
    uint64_t prev_hi = 0;
    for (size_t i = 0; i < h.n_buckets; i++) {
        uint64_t lo, hi;
        hist_bucket_range(&h, i, &lo, &hi);
        if (i > 0) assert_int_equal(lo, prev_hi + 1); /* no gap, no overlap */
        assert_true(hi >= lo);
        assert_int_equal(hist_index(&h, lo), i);
        assert_int_equal(hist_index(&h, hi), i);
        if (lo >= 128) assert_true((double)(hi - lo + 1) / (double)lo <= 1.0 / 128 + 1e-12);
        prev_hi = hi;
    }
    assert_true(prev_hi >= ((uint64_t)1 << 40));
    hist_free(&h);
}

static void test_percentiles_match_a_sorted_reference_across_magnitudes(void **state)
{
    (void)state;
    /* Log-uniform from 1 µs to ~11.6 days: twelve decades in one run. */
    enum { N = 200000 };
    uint64_t *v = malloc(N * sizeof(*v));
    assert_non_null(v);
    mm_rng_t r;
    mm_rng_seed(&r, 42);
    hist_t h = make(7, (uint64_t)1 << 40);
    for (size_t i = 0; i < N; i++) {
        v[i] = (uint64_t)exp(mm_rng_uniform(&r) * log(1e12));
        hist_record(&h, v[i]);
    }
    check_against_reference(&h, v, N);
    hist_free(&h);
    free(v);
}

static void test_percentiles_of_latency_like_distributions(void **state)
{
    (void)state;
    enum { N = 50000 };
    uint64_t *v = malloc(N * sizeof(*v));
    assert_non_null(v);
    mm_rng_t r;
    mm_rng_seed(&r, 7);
    /* A fast mode around 300 µs and a slow 1 % tail around 2 s, as a model
     * server with a cold cache looks. */
    for (int sub_bits = 3; sub_bits <= 12; sub_bits += 3) {
        hist_t h = make(sub_bits, (uint64_t)1 << 40);
        for (size_t i = 0; i < N; i++) {
            double base = mm_rng_uniform(&r) < 0.99 ? 300.0 : 2e6;
            v[i] = (uint64_t)(base * exp(0.3 * mm_rng_normal(&r)));
            hist_record(&h, v[i]);
        }
        check_against_reference(&h, v, N);
        hist_free(&h);
    }
    free(v);
}

static void test_nearest_rank_at_the_edges(void **state)
{
    (void)state;
    hist_t h = make(7, 1u << 20);
    for (uint64_t v = 1; v <= 1000; v++) hist_record(&h, v * 1000);
    double bound = hist_rel_error(&h);
    /* p99.9 of 1000 samples is the 999th, not the 1000th. */
    assert_true(fabs((double)hist_percentile(&h, 99.9) - 999000.0) <= 999000.0 * bound);
    assert_int_equal(hist_percentile(&h, 100), 1000000);
    assert_int_equal(hist_percentile(&h, 0), 1000);
    hist_free(&h);
}

static void test_constant_values_report_exactly(void **state)
{
    (void)state;
    hist_t h = make(7, (uint64_t)1 << 40);
    for (int i = 0; i < 1000; i++) hist_record(&h, 123456789);
    /* Clamped to the observed min and max, so exact despite a wide bucket. */
    assert_int_equal(hist_percentile(&h, 50), 123456789);
    assert_int_equal(hist_percentile(&h, 99.9), 123456789);
    assert_true(fabs(hist_mean(&h) - 123456789.0) < 1e-3);
    hist_free(&h);
}

static void test_values_above_max_are_clamped_and_counted(void **state)
{
    (void)state;
    hist_t h = make(7, 1u << 20);
    hist_record(&h, 5);
    hist_record(&h, (uint64_t)1 << 30);
    assert_int_equal(h.clamped, 1);
    assert_int_equal(h.total, 2);
    assert_int_equal(hist_percentile(&h, 100), 1u << 20);
    hist_free(&h);
}

static void test_empty_histogram_reports_zero(void **state)
{
    (void)state;
    hist_t h = make(7, 1u << 20);
    assert_int_equal(hist_percentile(&h, 50), 0);
    assert_true(hist_mean(&h) == 0.0);
    hist_free(&h);
}

static void test_merge_equals_recording_into_one(void **state)
{
    (void)state;
    hist_t a = make(7, 1u << 30), b = make(7, 1u << 30), all = make(7, 1u << 30);
    mm_rng_t r;
    mm_rng_seed(&r, 3);
    for (int i = 0; i < 10000; i++) {
        uint64_t v = mm_rng_below(&r, 1u << 25);
        hist_record(i % 3 ? &a : &b, v);
        hist_record(&all, v);
    }
    assert_int_equal(hist_merge(&a, &b), 0);
    assert_int_equal(a.total, all.total);
    assert_int_equal(a.min, all.min);
    assert_int_equal(a.max, all.max);
    assert_memory_equal(a.counts, all.counts, all.n_buckets * sizeof(*all.counts));
    hist_t other = make(6, 1u << 30);
    assert_int_equal(hist_merge(&a, &other), -1);
    hist_free(&a);
    hist_free(&b);
    hist_free(&all);
    hist_free(&other);
}

static void test_reset_forgets_everything(void **state)
{
    (void)state;
    hist_t h = make(7, 1u << 20);
    hist_record(&h, 77);
    hist_reset(&h);
    assert_int_equal(h.total, 0);
    hist_record(&h, 5);
    assert_int_equal(hist_percentile(&h, 50), 5);
    assert_int_equal(h.min, 5);
    hist_free(&h);
}

static void test_init_rejects_bad_parameters(void **state)
{
    (void)state;
    hist_t h;
    char err[128];
    assert_int_equal(hist_init(&h, 0, 1000, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "sub_bits"));
    assert_int_equal(hist_init(&h, 17, 1u << 20, err, sizeof(err)), -1);
    assert_int_equal(hist_init(&h, 7, 100, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "max_value"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_values_below_the_sub_bucket_count_are_exact),
        cmocka_unit_test(test_buckets_tile_the_range_and_are_narrow),
        cmocka_unit_test(test_percentiles_match_a_sorted_reference_across_magnitudes),
        cmocka_unit_test(test_percentiles_of_latency_like_distributions),
        cmocka_unit_test(test_nearest_rank_at_the_edges),
        cmocka_unit_test(test_constant_values_report_exactly),
        cmocka_unit_test(test_values_above_max_are_clamped_and_counted),
        cmocka_unit_test(test_empty_histogram_reports_zero),
        cmocka_unit_test(test_merge_equals_recording_into_one),
        cmocka_unit_test(test_reset_forgets_everything),
        cmocka_unit_test(test_init_rejects_bad_parameters),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
