/* rng.h — the seeded pseudo-random generator every random choice goes through.
 *
 * xoshiro256** (Blackman & Vigna): fast, 256 bits of state, passes BigCrush.
 * One generator per server context; `--seed N` makes every choice
 * reproducible. Never rand(): it is global, slow and weak. */
#ifndef MM_RNG_H
#define MM_RNG_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t s[4];
} mm_rng_t;

/* Seeds through splitmix64 so that nearby seeds give unrelated streams. */
void mm_rng_seed(mm_rng_t *r, uint64_t seed);
uint64_t mm_rng_next(mm_rng_t *r);
/* Uniform in [0, 1), 53 bits. */
double mm_rng_uniform(mm_rng_t *r);
/* Uniform integer in [0, n), unbiased (Lemire's method); n > 0. */
uint64_t mm_rng_below(mm_rng_t *r, uint64_t n);
/* Standard normal (Marsaglia polar method). */
double mm_rng_normal(mm_rng_t *r);
/* Gamma(shape, 1) by Marsaglia–Tsang; shape > 0 (shape < 1 via the boost U^(1/a)). */
double mm_rng_gamma(mm_rng_t *r, double shape);
/* Beta(a, b) as X/(X+Y) with X~Gamma(a), Y~Gamma(b). */
double mm_rng_beta(mm_rng_t *r, double a, double b);

/* 64-bit hash of salt and key (used for sticky assignment): stable across
 * versions and machines, so a user keeps their arm across restarts. */
uint64_t mm_hash64(const char *salt, size_t salt_len, const char *key, size_t key_len);

#endif
