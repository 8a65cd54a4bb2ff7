/* abstats.c — the statistics behind the `ab` policy (see abstats.h).
 *
 * Everything is computed from the sums the store keeps per arm (count, sum,
 * sum of squares, successes), so no raw observations are ever needed and a
 * describe call is O(arms). The special functions are the classic series and
 * continued fractions (Numerical Recipes §6.2 and §6.4, Acklam's normal
 * quantile with one Halley step): about 1e-14 relative accuracy, far more
 * than a p-value needs, in a few dozen lines and without a dependency. */
#include <math.h>

#include "abstats.h"

#define CF_EPS   1e-15
#define CF_TINY  1e-300
#define CF_ITERS 1000

double abstats_norm_cdf(double z)
{
    return 0.5 * erfc(-z / M_SQRT2);
}

double abstats_norm_quantile(double p)
{
    static const double a[] = {-3.969683028665376e+01, 2.209460984245205e+02,
                               -2.759285104469687e+02, 1.383577518672690e+02,
                               -3.066479806614716e+01, 2.506628277459239e+00};
    static const double b[] = {-5.447609879822406e+01, 1.615858368580409e+02,
                               -1.556989798598866e+02, 6.680131188771972e+01,
                               -1.328068155288572e+01};
    static const double c[] = {-7.784894002430293e-03, -3.223964580411365e-01,
                               -2.400758277161838e+00, -2.549732539343734e+00,
                               4.374664141464968e+00,  2.938163982698783e+00};
    static const double d[] = {7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
                               3.754408661907416e+00};
    const double plow = 0.02425;
    double x, q, r;

    if (isnan(p) || p < 0.0 || p > 1.0) return NAN;
    if (p == 0.0) return -INFINITY;
    if (p == 1.0) return INFINITY;
    if (p < plow) {
        q = sqrt(-2.0 * log(p));
        x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1.0);
    } else if (p <= 1.0 - plow) {
        q = p - 0.5;
        r = q * q;
        x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
            (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1.0);
    } else {
        q = sqrt(-2.0 * log1p(-p));
        x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1.0);
    }
    /* Acklam's rational approximation is good to 1.15e-9; one Halley step
     * against erfc brings it to full double precision. */
    double e = 0.5 * erfc(-x / M_SQRT2) - p;
    double u = e * sqrt(2.0 * M_PI) * exp(x * x / 2.0);
    return x - u / (1.0 + x * u / 2.0);
}

/* P(a, x) by its series; converges fast for x < a + 1. */
static double gamma_p_series(double a, double x)
{
    double ap = a, del = 1.0 / a, sum = del;
    for (int i = 0; i < CF_ITERS; i++) {
        ap += 1.0;
        del *= x / ap;
        sum += del;
        if (fabs(del) < fabs(sum) * CF_EPS) break;
    }
    return sum * exp(-x + a * log(x) - lgamma(a));
}

/* Q(a, x) by its continued fraction (modified Lentz); for x >= a + 1. */
static double gamma_q_fraction(double a, double x)
{
    double b = x + 1.0 - a, c = 1.0 / CF_TINY, d = 1.0 / b, h = d;
    for (int i = 1; i <= CF_ITERS; i++) {
        double an = -i * (i - a);
        b += 2.0;
        d = an * d + b;
        if (fabs(d) < CF_TINY) d = CF_TINY;
        c = b + an / c;
        if (fabs(c) < CF_TINY) c = CF_TINY;
        d = 1.0 / d;
        double del = d * c;
        h *= del;
        if (fabs(del - 1.0) < CF_EPS) break;
    }
    return exp(-x + a * log(x) - lgamma(a)) * h;
}

double abstats_gamma_q(double a, double x)
{
    if (isnan(a) || isnan(x) || a <= 0.0 || x < 0.0) return NAN;
    if (x == 0.0) return 1.0;
    if (isinf(x)) return 0.0;
    if (x < a + 1.0) return 1.0 - gamma_p_series(a, x);
    return gamma_q_fraction(a, x);
}

/* The continued fraction of I_x(a, b) (modified Lentz). */
static double beta_fraction(double a, double b, double x)
{
    double qab = a + b, qap = a + 1.0, qam = a - 1.0;
    double c = 1.0, d = 1.0 - qab * x / qap;
    if (fabs(d) < CF_TINY) d = CF_TINY;
    d = 1.0 / d;
    double h = d;
    for (int m = 1; m <= CF_ITERS; m++) {
        double m2 = 2.0 * m;
        double aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if (fabs(d) < CF_TINY) d = CF_TINY;
        c = 1.0 + aa / c;
        if (fabs(c) < CF_TINY) c = CF_TINY;
        d = 1.0 / d;
        h *= d * c;
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if (fabs(d) < CF_TINY) d = CF_TINY;
        c = 1.0 + aa / c;
        if (fabs(c) < CF_TINY) c = CF_TINY;
        d = 1.0 / d;
        double del = d * c;
        h *= del;
        if (fabs(del - 1.0) < CF_EPS) break;
    }
    return h;
}

double abstats_beta_inc(double a, double b, double x)
{
    if (isnan(a) || isnan(b) || isnan(x) || a <= 0.0 || b <= 0.0 || x < 0.0 || x > 1.0) return NAN;
    if (x == 0.0) return 0.0;
    if (x == 1.0) return 1.0;
    double lbt = lgamma(a + b) - lgamma(a) - lgamma(b) + a * log(x) + b * log1p(-x);
    /* The fraction converges fast on the side of the mean; use symmetry on the other. */
    if (x < (a + 1.0) / (a + b + 2.0)) return exp(lbt) * beta_fraction(a, b, x) / a;
    return 1.0 - exp(lbt) * beta_fraction(b, a, 1.0 - x) / b;
}

double abstats_chi2_sf(double x, double df)
{
    if (isnan(x) || isnan(df) || df <= 0.0) return NAN;
    if (x <= 0.0) return 1.0;
    return abstats_gamma_q(df / 2.0, x / 2.0);
}

double abstats_t_two_sided(double t, double df)
{
    if (isnan(t) || isnan(df) || df <= 0.0) return NAN;
    if (isinf(t)) return 0.0;
    if (isinf(df)) return erfc(fabs(t) / M_SQRT2);
    return abstats_beta_inc(df / 2.0, 0.5, df / (df + t * t));
}

int abstats_is_binary(double n, double sum, double sum_sq)
{
    return n > 0.0 && sum_sq == sum && sum >= 0.0 && sum <= n && floor(sum) == sum;
}

void abstats_from_bernoulli(double n, double successes, abstats_sample_t *out)
{
    out->n = n;
    out->bernoulli = 1;
    if (!(n > 0.0)) {
        out->mean = out->var = NAN;
        return;
    }
    double p = successes / n;
    if (p < 0.0) p = 0.0;
    if (p > 1.0) p = 1.0;
    out->mean = p;
    out->var = p * (1.0 - p);
}

void abstats_from_sums(double n, double sum, double sum_sq, abstats_sample_t *out)
{
    out->n = n;
    out->bernoulli = 0;
    out->mean = out->var = NAN;
    if (!(n > 0.0)) return;
    out->mean = sum / n;
    if (n < 2.0) return;
    /* The textbook one-pass formula; the sums are all the store keeps. Its
     * cancellation costs digits only when |mean| dwarfs the spread, and
     * rounding below zero is clamped. */
    double v = (sum_sq - n * out->mean * out->mean) / (n - 1.0);
    out->var = v > 0.0 ? v : 0.0;
}

int abstats_two_proportions(double na, double sa, double nb, double sb, abstats_diff_t *out)
{
    if (!(na >= 1.0 && nb >= 1.0)) return -1;
    double pa = sa / na, pb = sb / nb, pool = (sa + sb) / (na + nb);
    out->diff = pb - pa;
    out->se = sqrt(pa * (1.0 - pa) / na + pb * (1.0 - pb) / nb);
    out->se_test = sqrt(pool * (1.0 - pool) * (1.0 / na + 1.0 / nb));
    out->df = INFINITY;
    if (!(out->se_test > 0.0)) {
        out->z = 0.0;
        out->p_value = 1.0;
        return 0;
    }
    out->z = out->diff / out->se_test;
    out->p_value = erfc(fabs(out->z) / M_SQRT2);
    return 0;
}

int abstats_welch(const abstats_sample_t *a, const abstats_sample_t *b, abstats_diff_t *out)
{
    if (!(a->n >= 2.0 && b->n >= 2.0) || isnan(a->var) || isnan(b->var)) return -1;
    double va = a->var / a->n, vb = b->var / b->n, v = va + vb;
    out->diff = b->mean - a->mean;
    out->se = out->se_test = sqrt(v);
    if (!(v > 0.0)) {
        out->df = INFINITY;
        out->z = out->diff == 0.0 ? 0.0 : copysign(INFINITY, out->diff);
        out->p_value = out->diff == 0.0 ? 1.0 : 0.0;
        return 0;
    }
    out->df = v * v / (va * va / (a->n - 1.0) + vb * vb / (b->n - 1.0));
    out->z = out->diff / out->se;
    out->p_value = abstats_t_two_sided(out->z, out->df);
    return 0;
}

double abstats_msprt_log_lambda(double diff, double v, double tau2)
{
    if (!(v > 0.0 && tau2 > 0.0) || !isfinite(diff) || !isfinite(v) || !isfinite(tau2)) return NAN;
    return 0.5 * log(v / (v + tau2)) + tau2 * diff * diff / (2.0 * v * (v + tau2));
}

double abstats_msprt_p(double diff, double v, double tau2)
{
    double ll = abstats_msprt_log_lambda(diff, v, tau2);
    if (isnan(ll)) return NAN;
    return ll <= 0.0 ? 1.0 : exp(-ll);
}

int abstats_msprt_cs(double diff, double v, double tau2, double alpha, double *lo, double *hi)
{
    if (!(v > 0.0 && tau2 > 0.0 && alpha > 0.0 && alpha < 1.0) || !isfinite(diff) || !isfinite(v) ||
        !isfinite(tau2))
        return -1;
    /* Λ(θ) < 1/α  <=>  (diff - θ)² < (2 v (v + τ²) / τ²) · log(sqrt((v + τ²) / v) / α);
     * the log is positive because both factors inside exceed 1. */
    double w = sqrt(2.0 * v * (v + tau2) / tau2 * (0.5 * log((v + tau2) / v) - log(alpha)));
    *lo = diff - w;
    *hi = diff + w;
    return 0;
}

int abstats_n_proportions(double p1, double mde, double alpha, double power, double k, double *na,
                          double *nb)
{
    if (!(p1 > 0.0 && p1 < 1.0 && mde > 0.0 && alpha > 0.0 && alpha < 1.0 && power > 0.0 &&
          power < 1.0 && k > 0.0 && isfinite(k)))
        return -1;
    double delta = mde * p1;
    double p2 = p1 + delta <= 1.0 ? p1 + delta : p1 - delta;
    if (!(p2 > 0.0 && p2 < 1.0)) return -1;
    double za = abstats_norm_quantile(1.0 - alpha / 2.0), zb = abstats_norm_quantile(power);
    double pbar = (p1 + k * p2) / (1.0 + k);
    double s = za * sqrt(pbar * (1.0 - pbar) * (1.0 + 1.0 / k)) +
               zb * sqrt(p1 * (1.0 - p1) + p2 * (1.0 - p2) / k);
    *na = s * s / (delta * delta);
    *nb = k * *na;
    return 0;
}

int abstats_n_means(double var_a, double var_b, double delta, double alpha, double power, double k,
                    double *na, double *nb)
{
    if (!(var_a >= 0.0 && var_b >= 0.0 && var_a + var_b > 0.0 && delta != 0.0 && isfinite(delta) &&
          alpha > 0.0 && alpha < 1.0 && power > 0.0 && power < 1.0 && k > 0.0 && isfinite(k)))
        return -1;
    double z = abstats_norm_quantile(1.0 - alpha / 2.0) + abstats_norm_quantile(power);
    *na = z * z * (var_a + var_b / k) / (delta * delta);
    *nb = k * *na;
    return 0;
}

int abstats_srm(const double *observed, const double *shares, size_t n, double *chi2, double *df,
                double *p)
{
    double total = 0.0, wsum = 0.0;
    int positive = 0, impossible = 0;
    for (size_t i = 0; i < n; i++) {
        total += observed[i];
        if (shares[i] > 0.0 && isfinite(shares[i])) {
            wsum += shares[i];
            positive++;
        } else if (observed[i] > 0.0) {
            impossible = 1;
        }
    }
    if (!(total > 0.0) || positive == 0) return -1;
    *df = positive - 1;
    if (impossible) {
        *chi2 = INFINITY;
        *p = 0.0;
        return 0;
    }
    double x = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (!(shares[i] > 0.0 && isfinite(shares[i]))) continue;
        double e = total * shares[i] / wsum, o = observed[i] - e;
        x += o * o / e;
    }
    *chi2 = x;
    *p = positive > 1 ? abstats_chi2_sf(x, *df) : 1.0;
    return 0;
}

/* The automatic mixture variance: see abstats_compare in abstats.h. */
static double auto_tau2(const abstats_sample_t *a, double mde)
{
    double t = mde * a->mean;
    if (t != 0.0 && isfinite(t)) return t * t;
    if (a->var > 0.0 && isfinite(a->var)) return mde * mde * a->var;
    return NAN;
}

int abstats_compare(const abstats_sample_t *a, const abstats_sample_t *b, const abstats_opts_t *o,
                    abstats_cmp_t *out)
{
    double v_test, v_cs;

    out->test = ABSTATS_TEST_NONE;
    out->sequential = 0;
    out->tau2 = out->p_seq = out->cs_lo = out->cs_hi = NAN;
    out->need_a = out->need_b = NAN;
    out->d.diff = out->d.se = out->d.se_test = out->d.z = out->d.df = out->d.p_value = NAN;

    int prop = a->bernoulli && b->bernoulli;
    if (prop) {
        if (abstats_two_proportions(a->n, a->mean * a->n, b->n, b->mean * b->n, &out->d) == 0)
            out->test = ABSTATS_TEST_TWO_PROPORTIONS;
    } else if (abstats_welch(a, b, &out->d) == 0) {
        out->test = ABSTATS_TEST_WELCH;
    }

    /* The plan: how many observations a fixed-horizon test would need. */
    double k = o->k;
    if (a->n > 0.0 && k > 0.0 && isfinite(k)) {
        if (prop) {
            abstats_n_proportions(a->mean, o->mde, o->alpha, o->power, k, &out->need_a,
                                  &out->need_b);
        } else if (a->var >= 0.0) {
            double vb = b->n >= 2.0 && b->var >= 0.0 ? b->var : a->var;
            abstats_n_means(a->var, vb, o->mde * a->mean, o->alpha, o->power, k, &out->need_a,
                            &out->need_b);
        }
    }

    if (out->test == ABSTATS_TEST_NONE || a->n < o->min_n || b->n < o->min_n) return 0;
    out->tau2 = o->tau2 > 0.0 ? o->tau2 : auto_tau2(a, o->mde);
    v_test = out->d.se_test * out->d.se_test;
    v_cs = out->d.se * out->d.se;
    if (!(out->tau2 > 0.0) || !(v_test > 0.0) || !isfinite(v_test)) return 0;
    out->p_seq = abstats_msprt_p(out->d.diff, v_test, out->tau2);
    if (abstats_msprt_cs(out->d.diff, v_cs > 0.0 ? v_cs : v_test, out->tau2, o->alpha, &out->cs_lo,
                         &out->cs_hi) != 0)
        out->cs_lo = out->cs_hi = NAN;
    out->sequential = 1;
    return 0;
}
