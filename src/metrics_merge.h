/* metrics_merge.h — several processes' Prometheus text expositions as one.
 *
 * With --workers N every worker counts what it served; a scrape must show
 * the whole server, as nginx's shared-memory status does. The worker that
 * takes the scrape gathers its siblings' expositions (src/scrape.c) and
 * merges them here, sample by sample (same name and labels):
 *  - counters and histograms (`_bucket`, `_sum`, `_count`) are summed;
 *  - gauges of something each worker owns a part of (connections, pools,
 *    remembered request ids, rewards received) are summed;
 *  - modelmux_store_up is the least (0 when any worker lost Redis);
 *  - every other gauge describes shared experiment state (shares, canary
 *    step, operator state, control version) or the build, and is the first
 *    text's (the worker that answers).
 * Families keep the order of their first appearance and each family's
 * samples stay together, as the format requires. Pure: no I/O, no clock. */
#ifndef MM_METRICS_MERGE_H
#define MM_METRICS_MERGE_H

#include <stddef.h>

#include "buf.h"
#include "common.h"

/* Merge texts[0..n-1] into out (appended). The first n_full texts give all
 * their samples; the others only their counters and histograms (what a
 * worker that did not answer, or died, counted: keep.h), and a
 * family only they name is shown only with samples. Lines that are neither
 * a `# HELP`/`# TYPE` line nor a `name{labels} value` sample are left out.
 * On out of memory, out->oom is set. */
void metrics_merge(const mm_str_t *texts, size_t n, size_t n_full, mm_buf_t *out);

#endif
