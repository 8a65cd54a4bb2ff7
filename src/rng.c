/* rng.c — xoshiro256** and the distributions the policies draw from.
 *
 * Everything random in modelmux goes through one of these functions with an
 * explicit mm_rng_t, so `--seed N` reproduces every decision and every policy
 * test can pin its randomness.
 *
 * Choices and trade-offs:
 *  - Seeding runs splitmix64 over the seed, as Vigna recommends, so seeds 1, 2,
 *    3 give unrelated streams and the all-zero state cannot occur.
 *  - mm_rng_normal uses the Marsaglia polar method and throws away the second
 *    variate: caching it would need a field in mm_rng_t (whose layout is
 *    shared) and the draw is cheap next to a request.
 *  - Gamma draws use Marsaglia–Tsang (one normal and one uniform, ~1.03
 *    iterations). For shape < 1 the boost Gamma(a) = Gamma(a+1)·U^(1/a) is
 *    computed in log space: U^(1/a) underflows to 0 for small a, and a Beta of
 *    two underflowed gammas would be 0/0. mm_rng_beta therefore works on the
 *    logarithms and never divides zero by zero.
 *  - Invalid shapes (<= 0 or not finite) do not abort: gamma returns 0 (the
 *    limit as the shape goes to 0); callers validate their parameters.
 *  - mm_hash64 is part of the sticky-assignment contract, see below. */
#include <math.h>
#include <stddef.h> /* rng.h uses size_t without including it */

#include "rng.h"

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void mm_rng_seed(mm_rng_t *r, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
}

uint64_t mm_rng_next(mm_rng_t *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double mm_rng_uniform(mm_rng_t *r)
{
    return (double)(mm_rng_next(r) >> 11) * 0x1.0p-53;
}

/* 64x64 -> 128-bit product, split into high and low halves. */
static inline void mul128(uint64_t a, uint64_t b, uint64_t *hi, uint64_t *lo)
{
#if defined(__SIZEOF_INT128__)
    __extension__ typedef unsigned __int128 u128;
    u128 m = (u128)a * b;
    *hi = (uint64_t)(m >> 64);
    *lo = (uint64_t)m;
#else
    uint64_t a_lo = (uint32_t)a, a_hi = a >> 32, b_lo = (uint32_t)b, b_hi = b >> 32;
    uint64_t p0 = a_lo * b_lo, p1 = a_lo * b_hi, p2 = a_hi * b_lo, p3 = a_hi * b_hi;
    uint64_t mid = (p0 >> 32) + (uint32_t)p1 + (uint32_t)p2;
    *lo = (mid << 32) | (uint32_t)p0;
    *hi = p3 + (p1 >> 32) + (p2 >> 32) + (mid >> 32);
#endif
}

/* Lemire, "Fast Random Integer Generation in an Interval" (2019): multiply
 * and keep the high word; reject only the few low words that would bias it. */
uint64_t mm_rng_below(mm_rng_t *r, uint64_t n)
{
    if (n == 0) return 0;
    uint64_t hi, lo;
    mul128(mm_rng_next(r), n, &hi, &lo);
    if (lo < n) {
        uint64_t threshold = (0 - n) % n;
        while (lo < threshold) mul128(mm_rng_next(r), n, &hi, &lo);
    }
    return hi;
}

double mm_rng_normal(mm_rng_t *r)
{
    double u, v, s;
    do {
        u = 2.0 * mm_rng_uniform(r) - 1.0;
        v = 2.0 * mm_rng_uniform(r) - 1.0;
        s = u * u + v * v;
    } while (s >= 1.0 || s == 0.0);
    return u * sqrt(-2.0 * log(s) / s);
}

/* Marsaglia & Tsang (2000) for shape >= 1. */
static double gamma_mt(mm_rng_t *r, double a)
{
    double d = a - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
    for (;;) {
        double x, v;
        do {
            x = mm_rng_normal(r);
            v = 1.0 + c * x;
        } while (v <= 0.0);
        v = v * v * v;
        double u = mm_rng_uniform(r);
        double x2 = x * x;
        if (u < 1.0 - 0.0331 * x2 * x2) return d * v;
        if (u > 0.0 && log(u) < 0.5 * x2 + d * (1.0 - v + log(v))) return d * v;
    }
}

/* log of a Gamma(a, 1) draw; -INFINITY for an invalid shape. */
static double log_gamma_draw(mm_rng_t *r, double a)
{
    if (!(a > 0.0) || !isfinite(a)) return -INFINITY;
    if (a >= 1.0) return log(gamma_mt(r, a));
    /* 1 - uniform lies in (0, 1], so the log is finite. */
    double u = 1.0 - mm_rng_uniform(r);
    return log(gamma_mt(r, a + 1.0)) + log(u) / a;
}

double mm_rng_gamma(mm_rng_t *r, double shape)
{
    if (!(shape > 0.0) || !isfinite(shape)) return 0.0;
    if (shape >= 1.0) return gamma_mt(r, shape);
    return exp(log_gamma_draw(r, shape));
}

double mm_rng_beta(mm_rng_t *r, double a, double b)
{
    int a_ok = a > 0.0 && isfinite(a), b_ok = b > 0.0 && isfinite(b);
    if (!a_ok || !b_ok) return a_ok ? 1.0 : (b_ok ? 0.0 : 0.5);
    if (a >= 1.0 && b >= 1.0) {
        double x = gamma_mt(r, a), y = gamma_mt(r, b);
        return x / (x + y);
    }
    /* X / (X + Y) = 1 / (1 + exp(log Y - log X)), safe when both underflow. */
    double lx = log_gamma_draw(r, a), ly = log_gamma_draw(r, b);
    return 1.0 / (1.0 + exp(ly - lx));
}

/* mm_hash64 — THE STICKY-ASSIGNMENT HASH. DO NOT CHANGE.
 *
 * Which arm a sticky user lands on is a function of this value, so changing
 * it silently moves users between arms across an upgrade, and instances of
 * different versions would disagree. tests/unit/test_rng.c pins its output.
 *
 * Definition: FNV-1a 64 (offset basis 0xcbf29ce484222325, prime
 * 0x100000001b3) over the salt bytes, then one 0xff byte (it cannot occur in
 * UTF-8 text, so ("ab","c") and ("a","bc") differ), then the key bytes; the
 * result goes through MurmurHash3's fmix64 finalizer so that every output bit
 * depends on every input bit — policy_pick_sticky uses the top 53 bits, which
 * plain FNV-1a mixes poorly for short keys. */
uint64_t mm_hash64(const char *salt, size_t salt_len, const char *key, size_t key_len)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    const uint64_t prime = 0x100000001b3ULL;
    for (size_t i = 0; i < salt_len; i++) {
        h ^= (unsigned char)salt[i];
        h *= prime;
    }
    h ^= 0xffu;
    h *= prime;
    for (size_t i = 0; i < key_len; i++) {
        h ^= (unsigned char)key[i];
        h *= prime;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}
