/* test_abstats.c — the statistics of the `ab` policy against hand-computed
 * values, and the property that justifies the sequential test: in A/A
 * experiments watched after every batch, the always-valid p-value declares a
 * false winner at most alpha of the time, while a classical z-test looked at
 * just as often does so many times more often.
 *
 * Reference values are worked out in the comments (and were cross-checked
 * with mpmath at 30 digits). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "abstats.h"
#include "rng.h"

#define assert_close(x, want, tol)                                                                 \
    do {                                                                                           \
        double x_ = (x), w_ = (want);                                                              \
        if (!(fabs(x_ - w_) <= (tol)))                                                             \
            fail_msg("%s = %.12g, want %.12g ± %g", #x, x_, w_, (double)(tol));                    \
    } while (0)

static void test_normal_cdf_and_quantile(void **state)
{
    (void)state;
    assert_close(abstats_norm_cdf(0.0), 0.5, 1e-15);
    /* Φ(1.959964) = 0.975 is the 95 % two-sided critical value. */
    assert_close(abstats_norm_cdf(1.959963984540054), 0.975, 1e-12);
    assert_close(abstats_norm_quantile(0.975), 1.959963984540054, 1e-12);
    assert_close(abstats_norm_quantile(0.8), 0.8416212335729142, 1e-12);
    assert_close(abstats_norm_quantile(0.5), 0.0, 1e-15);
    /* Tail branch of Acklam's approximation: Φ⁻¹(1e-10) = -6.361340902404056. */
    assert_close(abstats_norm_quantile(1e-10), -6.361340902404056, 1e-10);
    assert_close(abstats_norm_quantile(1.0 - 1e-10), 6.361340902404056, 1e-6);
    for (double p = 0.001; p < 1.0; p += 0.0137)
        assert_close(abstats_norm_cdf(abstats_norm_quantile(p)), p, 1e-13);
    assert_true(isinf(abstats_norm_quantile(0.0)) && abstats_norm_quantile(0.0) < 0);
    assert_true(isinf(abstats_norm_quantile(1.0)) && abstats_norm_quantile(1.0) > 0);
    assert_true(isnan(abstats_norm_quantile(1.5)));
}

static void test_gamma_beta_chi2_t(void **state)
{
    (void)state;
    /* Q(3, 2) = e^-2 (1 + 2 + 2²/2) = 5 e^-2 = 0.6766764161830635 (integer a:
     * the Poisson sum). Exercises the series branch (x < a + 1). */
    assert_close(abstats_gamma_q(3.0, 2.0), 5.0 * exp(-2.0), 1e-14);
    /* Q(1/2, 10) = erfc(sqrt(10)): the continued-fraction branch. */
    assert_close(abstats_gamma_q(0.5, 10.0), erfc(sqrt(10.0)), 1e-16);
    /* chi-square(1) at 3.841458820694124 is the 5 % critical value. */
    assert_close(abstats_chi2_sf(3.841458820694124, 1.0), 0.05, 1e-13);
    /* chi-square(2) survival is exp(-x/2): at 6, e^-3 = 0.049787068367864. */
    assert_close(abstats_chi2_sf(6.0, 2.0), exp(-3.0), 1e-14);
    assert_close(abstats_chi2_sf(0.0, 3.0), 1.0, 0);
    /* I_x(1, 1) = x; I_x(a, 1) = x^a. */
    assert_close(abstats_beta_inc(1.0, 1.0, 0.3), 0.3, 1e-15);
    assert_close(abstats_beta_inc(2.5, 1.0, 0.7), pow(0.7, 2.5), 1e-14);
    /* Student t, df 10, |t| > 2: 0.07338803477074037 (tables: 0.0734). */
    assert_close(abstats_t_two_sided(2.0, 10.0), 0.07338803477074037, 1e-12);
    /* Large df tends to the normal: 2 (1 - Φ(1.96)) = 0.04999579. */
    assert_close(abstats_t_two_sided(1.959963984540054, INFINITY), 0.05, 1e-13);
    assert_close(abstats_t_two_sided(1.959963984540054, 1e7), 0.05, 1e-6);
}

static void test_two_proportions_120_vs_150_of_1000(void **state)
{
    (void)state;
    /* pa = 0.12, pb = 0.15, diff = 0.03.
     * Pooled p = 270 / 2000 = 0.135; SE0 = sqrt(0.135 · 0.865 · (1/1000 + 1/1000))
     *   = sqrt(0.00023355) = 0.01528234;  z = 0.03 / 0.01528234 = 1.963050;
     * p = 2 (1 - Φ(1.963050)) = 0.0496404 — just significant at 5 %.
     * Unpooled SE = sqrt(0.12 · 0.88 / 1000 + 0.15 · 0.85 / 1000)
     *   = sqrt(0.0001056 + 0.0001275) = 0.01526761. */
    abstats_diff_t d;
    assert_int_equal(abstats_two_proportions(1000, 120, 1000, 150, &d), 0);
    assert_close(d.diff, 0.03, 1e-15);
    assert_close(d.se_test, 0.01528234275234004, 1e-15);
    assert_close(d.se, 0.01526761277999937, 1e-15);
    assert_close(d.z, 1.963049807622355, 1e-12);
    assert_close(d.p_value, 0.04964038686536879, 1e-12);
    assert_true(isinf(d.df));
    /* Both arms all failures: no evidence, not a division by zero. */
    assert_int_equal(abstats_two_proportions(50, 0, 60, 0, &d), 0);
    assert_close(d.p_value, 1.0, 0);
    assert_int_equal(abstats_two_proportions(0, 0, 60, 3, &d), -1);
}

static void test_welch_from_sums(void **state)
{
    (void)state;
    /* a: n 50, sum 500, sum² 5400 -> mean 10, var (5400 - 50 · 100) / 49 = 400/49
     *    = 8.163265; b: n 60, sum 660, sum² 7800 -> mean 11, var (7800 - 60 · 121)
     *    / 59 = 540/59 = 9.152542.
     * SE = sqrt(8.163265/50 + 9.152542/60) = sqrt(0.1632653 + 0.1525424)
     *    = 0.5619677; t = 1 / 0.5619677 = 1.779462;
     * df = 0.3158077² / (0.1632653²/49 + 0.1525424²/59) = 106.2833;
     * two-sided p (t, 106.28 df) = 0.0780224. */
    abstats_sample_t a, b;
    abstats_diff_t d;
    abstats_from_sums(50, 500, 5400, &a);
    abstats_from_sums(60, 660, 7800, &b);
    assert_close(a.mean, 10.0, 1e-15);
    assert_close(a.var, 400.0 / 49.0, 1e-12);
    assert_close(b.var, 540.0 / 59.0, 1e-12);
    assert_int_equal(abstats_welch(&a, &b, &d), 0);
    assert_close(d.diff, 1.0, 1e-12);
    assert_close(d.se, 0.5619676850173904, 1e-12);
    assert_close(d.z, 1.779461749600521, 1e-10);
    assert_close(d.df, 106.2832574124569, 1e-8);
    assert_close(d.p_value, 0.07802237690816891, 1e-10);
    /* One observation has no variance: no test. */
    abstats_from_sums(1, 3, 9, &b);
    assert_true(isnan(b.var));
    assert_int_equal(abstats_welch(&a, &b, &d), -1);
}

static void test_binary_detection(void **state)
{
    (void)state;
    assert_true(abstats_is_binary(10, 3, 3));   /* three 1s, seven 0s */
    assert_true(abstats_is_binary(10, 0, 0));   /* all 0 */
    assert_false(abstats_is_binary(2, 1, 0.5)); /* 0.5 + 0.5 */
    assert_false(abstats_is_binary(1, 2, 4));   /* a 2 */
    assert_false(abstats_is_binary(0, 0, 0));   /* nothing yet */
    assert_false(abstats_is_binary(3, -1, 1));  /* a -1 ... */
}

static void test_msprt_by_hand(void **state)
{
    (void)state;
    /* diff 0.004, V 4e-6, τ² 1e-5:
     * Λ = sqrt(4e-6 / 1.4e-5) · exp(1e-5 · 1.6e-5 / (2 · 4e-6 · 1.4e-5))
     *   = 0.5345225 · exp(1.6e-10 / 1.12e-10) = 0.5345225 · exp(1.4285714)
     *   = 0.5345225 · 4.1727 = 2.230420;  p = 1 / Λ = 0.448346.
     * Confidence sequence at α = 0.05: half-width
     *   sqrt(2 · 4e-6 · 1.4e-5 / 1e-5 · log(sqrt(3.5) / 0.05))
     *   = sqrt(1.12e-5 · log(37.4166)) = sqrt(1.12e-5 · 3.622113) = 0.00636928,
     * so [-0.00236928, 0.01036928]: 0 inside, consistent with p > α. */
    assert_close(abstats_msprt_log_lambda(0.004, 4e-6, 1e-5), 0.8021899443237446, 1e-12);
    assert_close(abstats_msprt_p(0.004, 4e-6, 1e-5), 0.4483460353752007, 1e-12);
    double lo, hi;
    assert_int_equal(abstats_msprt_cs(0.004, 4e-6, 1e-5, 0.05, &lo, &hi), 0);
    assert_close(lo, -0.002369275789866440, 1e-12);
    assert_close(hi, 0.01036927578986644, 1e-12);
    /* A large effect: log Λ = 12.09453, p = 5.58998e-6; computed in logs, no overflow. */
    assert_close(abstats_msprt_p(0.03, 2e-5, 2.5e-5), 5.589979758118006e-06, 1e-15);
    assert_close(abstats_msprt_p(1.0, 1e-8, 1e-4), 0.0, 1e-300);
    /* No evidence at all: Λ < 1, p = 1. */
    assert_close(abstats_msprt_p(0.0, 1e-4, 1e-4), 1.0, 0);
    assert_true(isnan(abstats_msprt_p(0.1, 0.0, 1e-4)));
    assert_int_equal(abstats_msprt_cs(0.1, 1e-4, 0.0, 0.05, &lo, &hi), -1);
}

static void test_sample_size_textbook(void **state)
{
    (void)state;
    /* p1 = 0.10, 5 % relative -> p2 = 0.105, δ = 0.005; α 0.05, power 0.8:
     * z = 1.959964, 0.841621; p̄ = 0.1025;
     * n = (1.959964 sqrt(2 · 0.1025 · 0.8975) + 0.841621 sqrt(0.09 + 0.093975))² / 0.005²
     *   = (1.959964 · 0.4289371 + 0.841621 · 0.4289231)² / 2.5e-5
     *   = (0.8407012 + 0.3609908)² / 2.5e-5 = 1.2016920² / 2.5e-5 = 57762.65 per arm.
     * (The simpler (z_a + z_b)² (p1 q1 + p2 q2) / δ² gives 57759.9.) */
    double na, nb;
    assert_int_equal(abstats_n_proportions(0.1, 0.05, 0.05, 0.8, 1.0, &na, &nb), 0);
    assert_close(na, 57762.65145412937, 1e-6);
    assert_close(nb, na, 0);
    /* A 90/10 split (k = 1/9): p̄ = (0.1 + 0.105/9) / (10/9) = 0.1005;
     * na = (1.959964 sqrt(0.1005 · 0.8995 · 10) + 0.841621 sqrt(0.09 + 9 · 0.093975))²
     *   / 2.5e-5 = 286793.7, nb = na / 9 = 31865.97. */
    assert_int_equal(abstats_n_proportions(0.1, 0.05, 0.05, 0.8, 1.0 / 9.0, &na, &nb), 0);
    assert_close(na, 286793.6901134376, 1e-5);
    assert_close(nb, 31865.96556815973, 1e-5);
    /* Means, σ² = 4 both arms, δ = 0.5: (2.801585)² · 8 / 0.25 = 251.1642. */
    assert_int_equal(abstats_n_means(4, 4, 0.5, 0.05, 0.8, 1.0, &na, &nb), 0);
    assert_close(na, 251.1641514991708, 1e-9);
    assert_int_equal(abstats_n_proportions(0.0, 0.05, 0.05, 0.8, 1.0, &na, &nb), -1);
    assert_int_equal(abstats_n_means(4, 4, 0.0, 0.05, 0.8, 1.0, &na, &nb), -1);
}

static void test_srm_chi_square(void **state)
{
    (void)state;
    double chi2, df, p;
    /* 50/50 configured, 5100 vs 4900 observed: (100² + 100²) / 5000 = 4.0,
     * df 1, p = 0.0455003: noticeable but far from the 0.001 alarm. */
    const double o1[] = {5100, 4900}, s1[] = {50, 50};
    assert_int_equal(abstats_srm(o1, s1, 2, &chi2, &df, &p), 0);
    assert_close(chi2, 4.0, 1e-12);
    assert_close(df, 1.0, 0);
    assert_close(p, 0.04550026389635842, 1e-12);
    /* 90/10, 9000 vs 1100 of 10100: expected 9090 / 1010;
     * 90²/9090 + 90²/1010 = 0.891089 + 8.019802 = 8.910891, p = 0.00283475. */
    const double o2[] = {9000, 1100}, s2[] = {90, 10};
    assert_int_equal(abstats_srm(o2, s2, 2, &chi2, &df, &p), 0);
    assert_close(chi2, 8.910891089108911, 1e-10);
    assert_close(p, 0.002834749080259404, 1e-12);
    /* Three arms 40/30/30 over 1000: (0 + 30² / 300 + 30² / 300) = 6, df 2, p = e^-3. */
    const double o3[] = {400, 330, 270}, s3[] = {4, 3, 3};
    assert_int_equal(abstats_srm(o3, s3, 3, &chi2, &df, &p), 0);
    assert_close(chi2, 6.0, 1e-12);
    assert_close(p, exp(-3.0), 1e-14);
    /* Traffic on a weight-0 arm is a mismatch whatever the numbers. */
    const double o4[] = {100, 1}, s4[] = {1, 0};
    assert_int_equal(abstats_srm(o4, s4, 2, &chi2, &df, &p), 0);
    assert_true(isinf(chi2));
    assert_close(p, 0.0, 0);
    const double o5[] = {0, 0};
    assert_int_equal(abstats_srm(o5, s1, 2, &chi2, &df, &p), -1);
}

/* Bernoulli draws: successes among n trials with probability p. */
static double draw_successes(mm_rng_t *r, int n, double p)
{
    int s = 0;
    for (int i = 0; i < n; i++) s += mm_rng_uniform(r) < p;
    return s;
}

typedef struct {
    int runs;
    double pa, pb;
    int batch, max_n;
    int av_wins, naive_wins;
    int av_challenger_wins; /* of av_wins, with the challenger ahead */
    double av_n_sum;        /* sum over av_wins of the per-arm n at detection */
} sim_t;

/* Run `runs` experiments, each looked at after every batch per arm, as an
 * operator refreshing GET /experiments/NAME would: the always-valid test
 * keeps the running minimum of its p-value (as the policy does); the naive
 * test uses the fixed-horizon p-value of that moment. */
static void simulate(sim_t *s, uint64_t seed)
{
    abstats_opts_t o = {.alpha = 0.05, .mde = 0.05, .power = 0.8, .tau2 = 0, .k = 1, .min_n = 30};
    mm_rng_t r;
    s->av_wins = s->naive_wins = s->av_challenger_wins = 0;
    s->av_n_sum = 0;
    for (int run = 0; run < s->runs; run++) {
        mm_rng_seed(&r, seed + (uint64_t)run);
        double sa = 0, sb = 0, pmin = 1.0;
        int av = 0, naive = 0, sign = 0;
        for (int n = s->batch; n <= s->max_n; n += s->batch) {
            sa += draw_successes(&r, s->batch, s->pa);
            sb += draw_successes(&r, s->batch, s->pb);
            abstats_sample_t a, b;
            abstats_cmp_t c;
            abstats_from_bernoulli(n, sa, &a);
            abstats_from_bernoulli(n, sb, &b);
            assert_int_equal(abstats_compare(&a, &b, &o, &c), 0);
            if (c.test != ABSTATS_TEST_NONE && c.d.p_value < o.alpha) naive = 1;
            if (c.sequential && c.p_seq < pmin) {
                pmin = c.p_seq;
                sign = c.d.diff > 0;
            }
            if (pmin < o.alpha && !av) {
                av = 1;
                s->av_n_sum += n;
                if (sign) s->av_challenger_wins++;
            }
        }
        s->av_wins += av;
        s->naive_wins += naive;
    }
}

static void test_aa_always_valid_holds_alpha_naive_does_not(void **state)
{
    (void)state;
    /* 1000 A/A experiments, p = 0.1 on both arms, looked at after every 100
     * observations per arm up to 10 000 (100 looks). Ville's inequality
     * bounds the always-valid rate by α = 5 % for continuous monitoring; the
     * classical test at each look has no such bound. */
    sim_t s = {.runs = 1000, .pa = 0.1, .pb = 0.1, .batch = 100, .max_n = 10000};
    simulate(&s, 1000);
    double av = (double)s.av_wins / s.runs, naive = (double)s.naive_wins / s.runs;
    print_message("A/A, %d runs x 100 looks: always-valid false winners %.1f %%, naive z-test "
                  "%.1f %%\n",
                  s.runs, 100 * av, 100 * naive);
    assert_true(av <= 0.05);
    assert_true(naive >= 0.2);
    assert_true(naive >= 4 * av);
}

static void test_aa_fine_looks_from_burn_in(void **state)
{
    (void)state;
    /* The same with a look after every 10 observations from the 30-sample
     * burn-in on: plug-in variances are noisiest early, so this is where a
     * badly chosen burn-in would show. */
    sim_t s = {.runs = 400, .pa = 0.1, .pb = 0.1, .batch = 10, .max_n = 5000};
    simulate(&s, 777);
    double av = (double)s.av_wins / s.runs, naive = (double)s.naive_wins / s.runs;
    print_message("A/A, %d runs x 500 looks: always-valid false winners %.1f %%, naive z-test "
                  "%.1f %%\n",
                  s.runs, 100 * av, 100 * naive);
    assert_true(av <= 0.05);
    assert_true(naive >= 4 * av);
}

static void test_msprt_detects_real_difference(void **state)
{
    (void)state;
    /* p 0.10 vs 0.13 (30 % relative): at 10 000 per arm z ≈ 6.6. The
     * always-valid test must find it in nearly every run, and say the
     * challenger is the better one. */
    sim_t s = {.runs = 100, .pa = 0.10, .pb = 0.13, .batch = 100, .max_n = 10000};
    simulate(&s, 42);
    print_message("p 0.10 vs 0.13: always-valid detected in %d of %d runs, on average after "
                  "%.0f per arm (fixed horizon for this effect: 1 774 per arm)\n",
                  s.av_wins, s.runs, s.av_wins ? s.av_n_sum / s.av_wins : 0.0);
    assert_true(s.av_wins >= 95);
    assert_int_equal(s.av_challenger_wins, s.av_wins);
}

static void test_aa_continuous_rewards(void **state)
{
    (void)state;
    /* Gaussian rewards N(1, 1) on both arms, so the Welch path runs; looks
     * every 100 up to 5000. */
    abstats_opts_t o = {.alpha = 0.05, .mde = 0.05, .power = 0.8, .tau2 = 0, .k = 1, .min_n = 30};
    int runs = 300, av_wins = 0, naive_wins = 0;
    mm_rng_t r;
    for (int run = 0; run < runs; run++) {
        mm_rng_seed(&r, 5000 + (uint64_t)run);
        double n = 0, s[2] = {0, 0}, q[2] = {0, 0}, pmin = 1;
        int av = 0, naive = 0;
        for (int look = 0; look < 50; look++) {
            for (int i = 0; i < 100; i++)
                for (int arm = 0; arm < 2; arm++) {
                    double x = 1.0 + mm_rng_normal(&r);
                    s[arm] += x;
                    q[arm] += x * x;
                }
            n += 100;
            abstats_sample_t a, b;
            abstats_cmp_t c;
            abstats_from_sums(n, s[0], q[0], &a);
            abstats_from_sums(n, s[1], q[1], &b);
            assert_int_equal(abstats_compare(&a, &b, &o, &c), 0);
            assert_int_equal(c.test, ABSTATS_TEST_WELCH);
            if (c.d.p_value < o.alpha) naive = 1;
            if (c.sequential && c.p_seq < pmin) pmin = c.p_seq;
            if (pmin < o.alpha) av = 1;
        }
        av_wins += av;
        naive_wins += naive;
    }
    print_message("A/A Gaussian, %d runs x 50 looks: always-valid %.1f %%, naive %.1f %%\n", runs,
                  100.0 * av_wins / runs, 100.0 * naive_wins / runs);
    assert_true(av_wins <= 0.05 * runs);
    assert_true(naive_wins >= 4 * av_wins);
}

static void test_compare_plan_and_burn_in(void **state)
{
    (void)state;
    abstats_opts_t o = {.alpha = 0.05, .mde = 0.05, .power = 0.8, .tau2 = 0, .k = 1, .min_n = 30};
    abstats_sample_t a, b;
    abstats_cmp_t c;
    /* Below the burn-in: the fixed test runs, the sequential one waits. */
    abstats_from_bernoulli(20, 2, &a);
    abstats_from_bernoulli(20, 5, &b);
    assert_int_equal(abstats_compare(&a, &b, &o, &c), 0);
    assert_int_equal(c.test, ABSTATS_TEST_TWO_PROPORTIONS);
    assert_false(c.sequential);
    assert_true(isnan(c.p_seq));
    /* At 1000 each, 100 vs 100: the plan for baseline 0.1 is the textbook
     * 57762.65 per arm; automatic τ² = (0.05 · 0.1)² = 2.5e-5. */
    abstats_from_bernoulli(1000, 100, &a);
    abstats_from_bernoulli(1000, 100, &b);
    assert_int_equal(abstats_compare(&a, &b, &o, &c), 0);
    assert_true(c.sequential);
    assert_close(c.tau2, 2.5e-5, 1e-18);
    assert_close(c.p_seq, 1.0, 0);
    assert_close(c.need_a, 57762.65145412937, 1e-6);
    assert_true(c.cs_lo < 0 && c.cs_hi > 0);
    /* An explicit τ² is used as given. */
    o.tau2 = 1e-3;
    assert_int_equal(abstats_compare(&a, &b, &o, &c), 0);
    assert_close(c.tau2, 1e-3, 0);
    /* Mixed binary / continuous arms compare with Welch. */
    abstats_from_sums(100, 50, 60, &b);
    assert_int_equal(abstats_compare(&a, &b, &o, &c), 0);
    assert_int_equal(c.test, ABSTATS_TEST_WELCH);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_normal_cdf_and_quantile),
        cmocka_unit_test(test_gamma_beta_chi2_t),
        cmocka_unit_test(test_two_proportions_120_vs_150_of_1000),
        cmocka_unit_test(test_welch_from_sums),
        cmocka_unit_test(test_binary_detection),
        cmocka_unit_test(test_msprt_by_hand),
        cmocka_unit_test(test_sample_size_textbook),
        cmocka_unit_test(test_srm_chi_square),
        cmocka_unit_test(test_compare_plan_and_burn_in),
        cmocka_unit_test(test_aa_always_valid_holds_alpha_naive_does_not),
        cmocka_unit_test(test_aa_fine_looks_from_burn_in),
        cmocka_unit_test(test_msprt_detects_real_difference),
        cmocka_unit_test(test_aa_continuous_rewards),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
