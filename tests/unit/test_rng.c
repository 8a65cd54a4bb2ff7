/* test_rng.c — the generator, its distributions, and the sticky hash.
 *
 * Every test is seeded, so a failure is reproducible, and statistical
 * tolerances are several standard errors wide (or a Kolmogorov–Smirnov
 * test at alpha = 0.001), so they do not flake when the seed changes.
 * The reference vectors pin the generator and mm_hash64 bit for bit: `--seed`
 * reproducibility and sticky assignment across versions depend on them. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "rng.h"

#define N_DRAWS 200000

static void assert_near(double got, double want, double tol, const char *what)
{
    if (fabs(got - want) > tol) fail_msg("%s: got %.6f, want %.6f +- %.6f", what, got, want, tol);
}

/* ---- reference vectors ---- */

static void test_xoshiro_matches_reference(void **state)
{
    (void)state;
    /* Output of the reference xoshiro256starstar.c from state {1, 2, 3, 4}. */
    mm_rng_t r = {{1, 2, 3, 4}};
    assert_int_equal(mm_rng_next(&r), 11520ULL);
    assert_int_equal(mm_rng_next(&r), 0ULL);
    assert_int_equal(mm_rng_next(&r), 1509978240ULL);
    assert_int_equal(mm_rng_next(&r), 1215971899390074240ULL);
}

static void test_seed_is_splitmix64(void **state)
{
    (void)state;
    /* Vigna's splitmix64 test vector for seed 1234567. */
    mm_rng_t r;
    mm_rng_seed(&r, 1234567);
    assert_int_equal(r.s[0], 6457827717110365317ULL);
    assert_int_equal(r.s[1], 3203168211198807973ULL);
    assert_int_equal(r.s[2], 9817491932198370423ULL);
    assert_int_equal(r.s[3], 4593380528125082431ULL);
}

static void test_seed_reproducible(void **state)
{
    (void)state;
    mm_rng_t a, b, c;
    mm_rng_seed(&a, 42);
    mm_rng_seed(&b, 42);
    mm_rng_seed(&c, 43);
    int differ = 0;
    for (int i = 0; i < 1000; i++) {
        uint64_t x = mm_rng_next(&a);
        assert_int_equal(x, mm_rng_next(&b));
        differ += x != mm_rng_next(&c);
    }
    assert_true(differ > 990);
    /* Pinned: --seed 42 yields the same stream in every version. */
    mm_rng_seed(&a, 42);
    assert_int_equal(mm_rng_next(&a), 0x15780b2e0c2ec716ULL);
    assert_int_equal(mm_rng_next(&a), 0x6104d9866d113a7eULL);
    assert_int_equal(mm_rng_next(&a), 0xae17533239e499a1ULL);
}

/* ---- mm_hash64: part of the sticky-assignment contract ---- */

static uint64_t h(const char *salt, const char *key)
{
    return mm_hash64(salt, strlen(salt), key, strlen(key));
}

static void test_hash_pinned(void **state)
{
    (void)state;
    /* If one of these changes, sticky users change arms on upgrade. Never
     * update these values: fix the hash instead. */
    assert_int_equal(h("", ""), 0x1bbd5c813c69a8d7ULL);
    assert_int_equal(h("ranker", "user-42"), 0xad8fa31824d1a8a3ULL);
    assert_int_equal(h("ranker", "user-43"), 0x2e1390674020186aULL);
    assert_int_equal(h("recs", "7f3a9c"), 0xa941e75da29cd9f6ULL);
    assert_int_equal(h("ab", "c"), 0x7b4209eccab7f7c3ULL);
    assert_int_equal(h("a", "bc"), 0x300bffd2a90ecf20ULL);
}

static void test_hash_separates_salt_and_key(void **state)
{
    (void)state;
    assert_int_not_equal(h("ab", "c"), h("a", "bc"));
    assert_int_not_equal(h("exp1", "u"), h("exp2", "u"));
    /* Only the given lengths count, not what follows. */
    assert_int_equal(mm_hash64("saltXX", 4, "keyYY", 3), h("salt", "key"));
}

static void test_hash_top_bits_uniform(void **state)
{
    (void)state;
    /* policy_pick_sticky uses the top bits: sequential keys must spread
     * evenly over 16 buckets (chi-square, 15 dof, 99.9 % point 37.7). */
    int counts[16] = {0};
    char key[32];
    const int n = 160000;
    for (int i = 0; i < n; i++) {
        int len = snprintf(key, sizeof key, "user-%d", i);
        counts[mm_hash64("exp", 3, key, (size_t)len) >> 60]++;
    }
    double chi2 = 0, e = n / 16.0;
    for (int i = 0; i < 16; i++) chi2 += (counts[i] - e) * (counts[i] - e) / e;
    assert_true(chi2 < 37.7);
}

/* ---- uniform, below, normal ---- */

static void test_uniform_range_mean_variance(void **state)
{
    (void)state;
    mm_rng_t r;
    mm_rng_seed(&r, 1);
    double s = 0, s2 = 0;
    for (int i = 0; i < N_DRAWS; i++) {
        double u = mm_rng_uniform(&r);
        assert_true(u >= 0.0 && u < 1.0);
        s += u;
        s2 += u * u;
    }
    double mean = s / N_DRAWS, var = s2 / N_DRAWS - mean * mean;
    /* sd of the mean: sqrt(1/12/N) = 0.00065; sd of the variance ~0.00019. */
    assert_near(mean, 0.5, 0.004, "uniform mean");
    assert_near(var, 1.0 / 12.0, 0.0012, "uniform variance");
}

static void test_below_bounds_and_uniformity(void **state)
{
    (void)state;
    mm_rng_t r;
    mm_rng_seed(&r, 2);
    const uint64_t ns[] = {1, 2, 3, 7, 1000, (1ULL << 63) + 1, UINT64_MAX};
    for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++)
        for (int i = 0; i < 10000; i++) assert_true(mm_rng_below(&r, ns[k]) < ns[k]);
    for (int i = 0; i < 100; i++) assert_int_equal(mm_rng_below(&r, 1), 0);
    assert_int_equal(mm_rng_below(&r, 0), 0); /* defined, not a crash */

    /* 10 buckets, chi-square with 9 dof: 99.9 % point 27.9. */
    int counts[10] = {0};
    for (int i = 0; i < N_DRAWS; i++) counts[mm_rng_below(&r, 10)]++;
    double chi2 = 0, e = N_DRAWS / 10.0;
    for (int i = 0; i < 10; i++) chi2 += (counts[i] - e) * (counts[i] - e) / e;
    assert_true(chi2 < 27.9);
    /* Large n: the top half of the range must be reachable and half the time. */
    int high = 0;
    for (int i = 0; i < 10000; i++) high += mm_rng_below(&r, (1ULL << 63) + 1) >= (1ULL << 62);
    assert_true(high > 4700 && high < 5300); /* sd 50 */
}

static void test_normal_mean_variance(void **state)
{
    (void)state;
    mm_rng_t r;
    mm_rng_seed(&r, 3);
    double s = 0, s2 = 0, s4 = 0;
    for (int i = 0; i < N_DRAWS; i++) {
        double x = mm_rng_normal(&r);
        s += x;
        s2 += x * x;
        s4 += x * x * x * x;
    }
    assert_near(s / N_DRAWS, 0.0, 0.012, "normal mean");
    assert_near(s2 / N_DRAWS, 1.0, 0.016, "normal variance");
    assert_near(s4 / N_DRAWS, 3.0, 0.12, "normal fourth moment");
}

/* ---- gamma and beta ---- */

static void test_gamma_mean_variance(void **state)
{
    (void)state;
    const double shapes[] = {0.05, 0.3, 1.0, 2.5, 40.0};
    mm_rng_t r;
    mm_rng_seed(&r, 4);
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        double a = shapes[k], s = 0, s2 = 0;
        for (int i = 0; i < N_DRAWS; i++) {
            double x = mm_rng_gamma(&r, a);
            assert_true(x >= 0.0 && isfinite(x));
            s += x;
            s2 += x * x;
        }
        double mean = s / N_DRAWS, var = s2 / N_DRAWS - mean * mean;
        /* Mean a, variance a: 6 standard errors of the mean. */
        assert_near(mean, a, 6.0 * sqrt(a / N_DRAWS), "gamma mean");
        assert_near(var / a, 1.0, a < 0.1 ? 0.25 : 0.06, "gamma variance / shape");
    }
    assert_true(mm_rng_gamma(&r, 0.0) == 0.0);
    assert_true(mm_rng_gamma(&r, -1.0) == 0.0);
    assert_true(mm_rng_gamma(&r, NAN) == 0.0);
}

static void test_beta_mean_variance(void **state)
{
    (void)state;
    const double ab[][2] = {{2, 5}, {1, 1}, {0.5, 0.5}, {0.3, 2}, {41, 961}, {0.02, 0.05}};
    mm_rng_t r;
    mm_rng_seed(&r, 5);
    for (size_t k = 0; k < sizeof ab / sizeof ab[0]; k++) {
        double a = ab[k][0], b = ab[k][1], s = 0, s2 = 0;
        double want_mean = a / (a + b), want_var = a * b / ((a + b) * (a + b) * (a + b + 1));
        for (int i = 0; i < N_DRAWS; i++) {
            double x = mm_rng_beta(&r, a, b);
            if (!(x >= 0.0 && x <= 1.0)) fail_msg("Beta(%g,%g) draw %g outside [0,1]", a, b, x);
            s += x;
            s2 += x * x;
        }
        double mean = s / N_DRAWS, var = s2 / N_DRAWS - mean * mean;
        assert_near(mean, want_mean, 6.0 * sqrt(want_var / N_DRAWS), "beta mean");
        assert_near(var / want_var, 1.0, 0.04, "beta variance ratio");
    }
}

/* Regularized incomplete beta I_x(a, b) by the continued fraction (modified
 * Lentz), as in Numerical Recipes §6.4: the reference CDF for the KS test. */
static double betacf(double a, double b, double x)
{
    const double tiny = 1e-300;
    double c = 1.0, d = 1.0 - (a + b) * x / (a + 1.0);
    if (fabs(d) < tiny) d = tiny;
    d = 1.0 / d;
    double f = d;
    for (int m = 1; m <= 300; m++) {
        double m2 = 2.0 * m;
        double num = m * (b - m) * x / ((a + m2 - 1.0) * (a + m2));
        d = 1.0 + num * d;
        if (fabs(d) < tiny) d = tiny;
        c = 1.0 + num / c;
        if (fabs(c) < tiny) c = tiny;
        d = 1.0 / d;
        f *= d * c;
        num = -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0));
        d = 1.0 + num * d;
        if (fabs(d) < tiny) d = tiny;
        c = 1.0 + num / c;
        if (fabs(c) < tiny) c = tiny;
        d = 1.0 / d;
        double delta = d * c;
        f *= delta;
        if (fabs(delta - 1.0) < 1e-15) break;
    }
    return f;
}

static double beta_cdf(double x, double a, double b)
{
    if (x <= 0.0) return 0.0;
    if (x >= 1.0) return 1.0;
    double lbt = lgamma(a + b) - lgamma(a) - lgamma(b) + a * log(x) + b * log1p(-x);
    if (x < (a + 1.0) / (a + b + 2.0)) return exp(lbt) * betacf(a, b, x) / a;
    return 1.0 - exp(lbt) * betacf(b, a, 1.0 - x) / b;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void test_beta_cdf_reference_is_right(void **state)
{
    (void)state;
    /* Closed form for Beta(2, 5): I_x = 1 - (1-x)^6 - 6x(1-x)^5. */
    for (double x = 0.01; x < 1.0; x += 0.07) {
        double want = 1.0 - pow(1 - x, 6) - 6 * x * pow(1 - x, 5);
        assert_near(beta_cdf(x, 2, 5), want, 1e-12, "Beta(2,5) CDF");
    }
    assert_near(beta_cdf(0.5, 0.5, 0.5), 0.5, 1e-12, "arcsine CDF at 1/2");
    assert_near(beta_cdf(0.25, 0.5, 0.5), 2.0 / M_PI * asin(0.5), 1e-12, "arcsine CDF");
}

/* KS statistic of n sorted draws against the Beta(a, b) CDF. */
static double ks_beta(double *x, int n, double a, double b)
{
    qsort(x, (size_t)n, sizeof *x, cmp_double);
    double dmax = 0.0;
    for (int i = 0; i < n; i++) {
        double f = beta_cdf(x[i], a, b);
        double d1 = (i + 1.0) / n - f, d2 = f - (double)i / n;
        if (d1 > dmax) dmax = d1;
        if (d2 > dmax) dmax = d2;
    }
    return dmax;
}

static void test_beta_ks(void **state)
{
    (void)state;
    const int n = 100000;
    /* Asymptotic KS critical value at alpha = 0.001: 1.9495 / sqrt(n). */
    const double crit = 1.9495 / sqrt((double)n);
    const double ab[][2] = {{2, 5}, {0.4, 0.7}};
    double *x = malloc((size_t)n * sizeof *x);
    assert_non_null(x);
    mm_rng_t r;
    mm_rng_seed(&r, 6);
    for (size_t k = 0; k < sizeof ab / sizeof ab[0]; k++) {
        for (int i = 0; i < n; i++) x[i] = mm_rng_beta(&r, ab[k][0], ab[k][1]);
        double d = ks_beta(x, n, ab[k][0], ab[k][1]);
        if (d >= crit) fail_msg("Beta(%g,%g): KS D = %.5f >= %.5f", ab[k][0], ab[k][1], d, crit);
    }
    /* The test has power: Beta(2.1, 5) draws are rejected against Beta(2, 5). */
    for (int i = 0; i < n; i++) x[i] = mm_rng_beta(&r, 2.1, 5);
    assert_true(ks_beta(x, n, 2, 5) >= crit);
    free(x);
}

static void test_beta_tiny_shapes_no_nan(void **state)
{
    (void)state;
    /* Both gammas underflow to 0 for shapes this small; the log-space
     * ratio must still give a value in [0, 1], about half of them near 1. */
    mm_rng_t r;
    mm_rng_seed(&r, 7);
    int high = 0;
    for (int i = 0; i < 20000; i++) {
        double x = mm_rng_beta(&r, 0.001, 0.001);
        assert_true(x >= 0.0 && x <= 1.0);
        high += x > 0.5;
    }
    assert_true(high > 9500 && high < 10500);
    assert_true(mm_rng_beta(&r, 0.0, 1.0) == 0.0);
    assert_true(mm_rng_beta(&r, 1.0, 0.0) == 1.0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_xoshiro_matches_reference),
        cmocka_unit_test(test_seed_is_splitmix64),
        cmocka_unit_test(test_seed_reproducible),
        cmocka_unit_test(test_hash_pinned),
        cmocka_unit_test(test_hash_separates_salt_and_key),
        cmocka_unit_test(test_hash_top_bits_uniform),
        cmocka_unit_test(test_uniform_range_mean_variance),
        cmocka_unit_test(test_below_bounds_and_uniformity),
        cmocka_unit_test(test_normal_mean_variance),
        cmocka_unit_test(test_gamma_mean_variance),
        cmocka_unit_test(test_beta_mean_variance),
        cmocka_unit_test(test_beta_cdf_reference_is_right),
        cmocka_unit_test(test_beta_ks),
        cmocka_unit_test(test_beta_tiny_shapes_no_nan),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
