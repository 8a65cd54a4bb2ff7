/* lathist.h — a log-linear latency histogram: the bucket arithmetic.
 *
 * Latencies in microseconds: below 16 us a bucket each; above, every power of
 * two is split into 16 equal buckets, so a bucket is never wider than 1/16 of
 * its lowest value and its midpoint is within about 3 % of any sample in it.
 * Counting is one clz and one increment (no search over bounds), so the hot
 * path can afford it. Used for the canary's interval p99 and for the p50/p99
 * of the admin view (Prometheus keeps its coarse, fixed buckets). */
#ifndef MM_LATHIST_H
#define MM_LATHIST_H

#include <math.h>
#include <stdint.h>

/* 16 exact + 60 powers of two x 16: every uint64_t microsecond value. */
#define LATHIST_BUCKETS 976

static inline unsigned lathist_index(uint64_t us)
{
    if (us < 16) return (unsigned)us;
    unsigned msb = 63u - (unsigned)__builtin_clzll(us);
    unsigned sub = (unsigned)(us >> (msb - 4)) & 15u;
    return 16u + (msb - 4u) * 16u + sub;
}

/* Midpoint of a bucket, in microseconds. */
static inline double lathist_mid(unsigned idx)
{
    if (idx < 16) return (double)idx;
    unsigned m = (idx - 16u) / 16u + 4u, sub = (idx - 16u) % 16u;
    double width = ldexp(1.0, (int)m - 4);
    return (16.0 + sub) * width + (width - 1.0) / 2.0;
}

/* The q-quantile (0 < q <= 1, nearest rank) of the `total` samples counted
 * in hist[LATHIST_BUCKETS] and, when not NULL, in more[LATHIST_BUCKETS] (two
 * histograms read as one), in microseconds (a bucket midpoint); -1 if empty. */
static inline double lathist_quantile2_us(const uint64_t *hist, const uint64_t *more,
                                          uint64_t total, double q)
{
    if (total == 0) return -1.0;
    uint64_t rank = (uint64_t)ceil(q * (double)total), cum = 0;
    if (rank == 0) rank = 1;
    for (unsigned i = 0; i < LATHIST_BUCKETS; i++) {
        cum += hist[i] + (more ? more[i] : 0);
        if (cum >= rank) return lathist_mid(i);
    }
    return lathist_mid(LATHIST_BUCKETS - 1);
}

static inline double lathist_quantile_us(const uint64_t *hist, uint64_t total, double q)
{
    return lathist_quantile2_us(hist, NULL, total, q);
}

#endif
