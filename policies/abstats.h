/* abstats.h — the statistics behind the `ab` policy, as pure functions.
 *
 * Kept apart from policies/ab.c so that every formula can be tested against
 * hand-computed values without building a policy, and so that the A/A
 * simulation in tests/unit/test_abstats.c runs exactly the code the policy
 * runs. Nothing here allocates or keeps state; the one piece of state the
 * sequential test needs (the running minimum of the p-value) is kept by the
 * caller.
 *
 * Conventions: "a" is the champion (control), "b" the challenger; a
 * difference is mean_b - mean_a, so positive means the challenger earns more
 * reward. Undefined results are NAN, never a made-up number. */
#ifndef MM_ABSTATS_H
#define MM_ABSTATS_H

#include <stddef.h>

/* ---- distributions ---- */

/* Standard normal CDF Φ(z). */
double abstats_norm_cdf(double z);
/* Φ⁻¹(p) for p in (0, 1); -INFINITY at 0, INFINITY at 1, NAN outside. */
double abstats_norm_quantile(double p);
/* Regularized upper incomplete gamma Q(a, x) = Γ(a, x) / Γ(a); a > 0, x >= 0. */
double abstats_gamma_q(double a, double x);
/* Regularized incomplete beta I_x(a, b); a, b > 0, 0 <= x <= 1. */
double abstats_beta_inc(double a, double b, double x);
/* P(X > x) for X ~ chi-square with df degrees of freedom. */
double abstats_chi2_sf(double x, double df);
/* Two-sided P(|T| > |t|) for Student's t with df degrees of freedom
 * (df = INFINITY: the normal distribution). */
double abstats_t_two_sided(double t, double df);

/* ---- one arm, summarised from the sums the store keeps ---- */

typedef struct {
    double n;      /* observations (rewards received) */
    double mean;   /* NAN when n == 0 */
    double var;    /* per-observation variance; NAN when undefined */
    int bernoulli; /* var is the Bernoulli p(1 - p), not the sample variance */
} abstats_sample_t;

/* 1 if n rewards with these sums can all be 0 or 1: sum_sq == sum (r² = r
 * holds only for 0 and 1, and a mix of other values cancelling exactly is
 * not a case worth guarding), sum a whole number in [0, n]. Sums of 0/1
 * values are exact in doubles up to 2^53, so the comparison is exact. */
int abstats_is_binary(double n, double sum, double sum_sq);

/* Bernoulli arm: mean = successes / n, var = mean (1 - mean). */
void abstats_from_bernoulli(double n, double successes, abstats_sample_t *out);
/* Any rewards: mean = sum / n, var = unbiased sample variance (n >= 2). */
void abstats_from_sums(double n, double sum, double sum_sq, abstats_sample_t *out);

/* ---- fixed-horizon comparison of two arms ---- */

typedef struct {
    double diff;    /* mean_b - mean_a */
    double se;      /* unpooled standard error of diff (for intervals) */
    double se_test; /* standard error under H0: pooled for proportions, = se for Welch */
    double z;       /* diff / se_test (a t statistic for Welch) */
    double df;      /* Welch–Satterthwaite degrees of freedom; INFINITY for the z-test */
    double p_value; /* two-sided; valid only when looked at once, at a planned n */
} abstats_diff_t;

/* Two-proportion z-test (pooled SE under H0), na, nb >= 1. Returns 0, or -1
 * when undefined (no observations). se_test == 0 (both arms all 0 or all 1)
 * gives z = 0 and p = 1: no evidence either way. */
int abstats_two_proportions(double na, double sa, double nb, double sb, abstats_diff_t *out);
/* Welch's unequal-variance t-test; both arms need n >= 2 and a variance.
 * Returns 0 or -1. Zero variance in both arms with different means gives
 * z = ±INFINITY and p = 0 (the plug-in model is certain). */
int abstats_welch(const abstats_sample_t *a, const abstats_sample_t *b, abstats_diff_t *out);

/* ---- always-valid inference (Johari, Koomen, Pekelis, Walsh 2017) ----
 * The mixture sequential probability ratio test with a normal mixture
 * N(0, tau2) over the true difference, for an estimate diff whose variance
 * is v:
 *     Λ = sqrt(v / (v + tau2)) · exp(tau2 · diff² / (2 v (v + tau2)))
 * Under H0 (no difference) Λ is a nonnegative martingale with mean 1, so by
 * Ville's inequality P(Λ ever reaches 1/α) <= α: min(1, 1/Λ), made monotone
 * by the caller with a running minimum, is a p-value that may be watched
 * continuously. */

/* log Λ (computed in logs: Λ overflows a double long before the evidence
 * stops mattering). v > 0, tau2 > 0; NAN otherwise. */
double abstats_msprt_log_lambda(double diff, double v, double tau2);
/* min(1, 1/Λ). */
double abstats_msprt_p(double diff, double v, double tau2);
/* The confidence sequence at level 1 - alpha: the differences θ for which
 * the mSPRT of H0: Δ = θ has not rejected, diff ± sqrt((2 v (v + tau2) /
 * tau2) · log(sqrt((v + tau2) / v) / alpha)). Returns 0 or -1. */
int abstats_msprt_cs(double diff, double v, double tau2, double alpha, double *lo, double *hi);

/* ---- fixed-horizon sample sizes ----
 * Observations per arm for a two-sided test at `alpha` to detect a
 * difference with probability `power`, with nb = k · na (k from the traffic
 * split). Return 0 or -1 (no valid design, e.g. a zero baseline). */

/* Proportions (Fleiss, without continuity correction): baseline p1, effect
 * delta = mde · p1 (towards 1 if p1 (1 + mde) <= 1, else towards 0),
 *   na = (z_{1-α/2} sqrt(p̄ q̄ (1 + 1/k)) + z_power sqrt(p1 q1 + p2 q2 / k))² / delta²
 * with p̄ = (p1 + k p2) / (1 + k). */
int abstats_n_proportions(double p1, double mde, double alpha, double power, double k, double *na,
                          double *nb);
/* Means: na = (z_{1-α/2} + z_power)² (var_a + var_b / k) / delta². */
int abstats_n_means(double var_a, double var_b, double delta, double alpha, double power, double k,
                    double *na, double *nb);

/* ---- sample ratio mismatch ----
 * Pearson's chi-square of observed counts against expected shares (any
 * nonnegative weights; normalised here). Arms with share 0 are left out of
 * the sum, but an observation on one makes chi2 infinite and p 0. df = arms
 * with a positive share - 1. Returns 0, or -1 with nothing observed or no
 * positive share. */
int abstats_srm(const double *observed, const double *shares, size_t n, double *chi2, double *df,
                double *p);

/* ---- everything the `ab` policy reports for one challenger ---- */

enum { ABSTATS_TEST_NONE = 0, ABSTATS_TEST_TWO_PROPORTIONS, ABSTATS_TEST_WELCH };

typedef struct {
    double alpha; /* significance level of this comparison */
    double mde;   /* relative minimum detectable effect */
    double power; /* for the fixed-horizon plan */
    double tau2;  /* mixture variance; <= 0: automatic, see abstats_compare */
    double k;     /* traffic ratio share_b / share_a; <= 0 or NAN: unknown */
    double min_n; /* observations each arm needs before the sequential test runs */
} abstats_opts_t;

typedef struct {
    int test;         /* ABSTATS_TEST_*; NONE: too little data for any test */
    abstats_diff_t d; /* the fixed-horizon comparison */
    int sequential;   /* the always-valid fields below are set */
    double tau2;      /* the mixture variance used */
    double p_seq;     /* current mSPRT p-value (the caller keeps the running min) */
    double cs_lo, cs_hi;
    double need_a, need_b; /* fixed-horizon observations per arm; NAN when unknown */
} abstats_cmp_t;

/* Compare challenger b with champion a. Proportions when both arms are
 * Bernoulli, else Welch. The sequential p-value uses the variance under H0
 * (pooled for proportions) and the confidence sequence the unpooled one, as
 * the classical z-test and its interval do. Automatic tau2: (mde · mean_a)²,
 * the squared minimum effect worth detecting, so the mixture puts its weight
 * on effects of the size the operator cares about; mde² · var_a when the
 * baseline mean is 0. Returns 0 (with out->test possibly NONE). */
int abstats_compare(const abstats_sample_t *a, const abstats_sample_t *b, const abstats_opts_t *o,
                    abstats_cmp_t *out);

#endif
