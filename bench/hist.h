/* hist.h — an HDR-style log-linear histogram of non-negative integers
 * (latencies in microseconds).
 *
 * Percentiles of millions of samples without keeping or sorting them: values
 * below 2^sub_bits have a bucket each; above, every power of two is split
 * into 2^sub_bits equal buckets, so a bucket is never wider than 1/2^sub_bits
 * of its lowest value. A percentile is reported as the middle of its bucket,
 * which is within hist_rel_error() of the true sample value (and clamped to
 * the smallest and largest value seen). Memory is fixed at init: with
 * sub_bits 7 and values up to 2^40 (~12 days in µs) it is 35 KiB. */
#ifndef MM_BENCH_HIST_H
#define MM_BENCH_HIST_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int sub_bits;       /* 2^sub_bits buckets per power of two */
    uint64_t max_value; /* larger values are recorded as max_value (and counted) */
    size_t n_buckets;
    uint64_t *counts;
    uint64_t total;
    uint64_t clamped;  /* values above max_value */
    uint64_t min, max; /* exact, of the recorded (clamped) values */
    double sum;
} hist_t;

/* sub_bits in [1, 16], max_value >= 2^sub_bits. Returns 0, or -1 with err. */
int hist_init(hist_t *h, int sub_bits, uint64_t max_value, char *err, size_t errlen);
void hist_free(hist_t *h);
void hist_reset(hist_t *h);
void hist_record(hist_t *h, uint64_t v);
/* Adds src's counts to dst; both must have the same sub_bits and max_value. */
int hist_merge(hist_t *dst, const hist_t *src);
/* The value at percentile p (0..100) by the nearest-rank rule: the smallest
 * sample with at least p % of the samples at or below it. 0 when empty. */
uint64_t hist_percentile(const hist_t *h, double p);
double hist_mean(const hist_t *h);
/* Bound on |reported - exact| / exact for a percentile: 2^-(sub_bits+1). */
double hist_rel_error(const hist_t *h);

/* Bucket arithmetic, exposed for tests. */
size_t hist_index(const hist_t *h, uint64_t v);
void hist_bucket_range(const hist_t *h, size_t idx, uint64_t *lo, uint64_t *hi);

#endif
