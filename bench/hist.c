/* hist.c — the log-linear histogram of hist.h.
 *
 * Index of v with S = 2^sub_bits: v itself below S; above, with k the
 * position of v's highest bit and shift = k - sub_bits, the top sub_bits+1
 * bits of v (`top`, in [S, 2S)) select the bucket: shift * S + top. The two
 * ranges meet without a gap, so the index is continuous and monotonic in v,
 * and a bucket covers [top << shift, ((top + 1) << shift) - 1]. Recording is
 * a count-leading-zeros and an increment: cheap enough to sit on the bench's
 * completion path. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hist.h"

static int msb(uint64_t v)
{
    return 63 - __builtin_clzll(v);
}

size_t hist_index(const hist_t *h, uint64_t v)
{
    uint64_t s = (uint64_t)1 << h->sub_bits;
    if (v < s) return (size_t)v;
    int shift = msb(v) - h->sub_bits;
    uint64_t top = v >> shift;
    return (size_t)((uint64_t)shift * s + top);
}

void hist_bucket_range(const hist_t *h, size_t idx, uint64_t *lo, uint64_t *hi)
{
    uint64_t s = (uint64_t)1 << h->sub_bits;
    if (idx < s) {
        *lo = *hi = idx;
        return;
    }
    int shift = (int)(idx / s) - 1;
    uint64_t top = s + idx % s;
    *lo = top << shift;
    *hi = *lo + (((uint64_t)1 << shift) - 1);
}

int hist_init(hist_t *h, int sub_bits, uint64_t max_value, char *err, size_t errlen)
{
    memset(h, 0, sizeof(*h));
    if (sub_bits < 1 || sub_bits > 16) {
        snprintf(err, errlen, "histogram: sub_bits %d is outside [1, 16]", sub_bits);
        return -1;
    }
    if (max_value < ((uint64_t)1 << sub_bits) || max_value > ((uint64_t)1 << 62)) {
        snprintf(err, errlen, "histogram: max_value %llu is outside [2^%d, 2^62]",
                 (unsigned long long)max_value, sub_bits);
        return -1;
    }
    h->sub_bits = sub_bits;
    h->max_value = max_value;
    h->n_buckets = hist_index(h, max_value) + 1;
    h->counts = calloc(h->n_buckets, sizeof(*h->counts));
    if (h->counts == NULL) {
        snprintf(err, errlen, "histogram: out of memory for %zu buckets", h->n_buckets);
        return -1;
    }
    h->min = UINT64_MAX;
    return 0;
}

void hist_free(hist_t *h)
{
    free(h->counts);
    h->counts = NULL;
}

void hist_reset(hist_t *h)
{
    memset(h->counts, 0, h->n_buckets * sizeof(*h->counts));
    h->total = h->clamped = 0;
    h->min = UINT64_MAX;
    h->max = 0;
    h->sum = 0;
}

void hist_record(hist_t *h, uint64_t v)
{
    if (v > h->max_value) {
        v = h->max_value;
        h->clamped++;
    }
    h->counts[hist_index(h, v)]++;
    h->total++;
    h->sum += (double)v;
    if (v < h->min) h->min = v;
    if (v > h->max) h->max = v;
}

int hist_merge(hist_t *dst, const hist_t *src)
{
    if (dst->sub_bits != src->sub_bits || dst->max_value != src->max_value) return -1;
    for (size_t i = 0; i < dst->n_buckets; i++) dst->counts[i] += src->counts[i];
    dst->total += src->total;
    dst->clamped += src->clamped;
    dst->sum += src->sum;
    if (src->total) {
        if (src->min < dst->min) dst->min = src->min;
        if (src->max > dst->max) dst->max = src->max;
    }
    return 0;
}

uint64_t hist_percentile(const hist_t *h, double p)
{
    if (h->total == 0) return 0;
    if (!(p > 0)) return h->min;
    if (p >= 100) return h->max;
    /* Nearest rank; the epsilon keeps 99.9 % of 1000 at rank 999 despite
     * binary rounding of p / 100. */
    double r = ceil(p / 100.0 * (double)h->total - 1e-9);
    uint64_t rank = r < 1 ? 1 : (uint64_t)r;
    if (rank > h->total) rank = h->total;
    uint64_t cum = 0;
    for (size_t i = 0; i < h->n_buckets; i++) {
        cum += h->counts[i];
        if (cum < rank) continue;
        uint64_t lo, hi;
        hist_bucket_range(h, i, &lo, &hi);
        uint64_t mid = lo + (hi - lo) / 2;
        if (mid < h->min) mid = h->min;
        if (mid > h->max) mid = h->max;
        return mid;
    }
    return h->max;
}

double hist_mean(const hist_t *h)
{
    return h->total ? h->sum / (double)h->total : 0.0;
}

double hist_rel_error(const hist_t *h)
{
    return ldexp(1.0, -(h->sub_bits + 1));
}
