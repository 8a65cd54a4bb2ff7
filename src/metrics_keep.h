/* metrics_keep.h — a --workers group's counters outlive the worker that
 * counted them.
 *
 * Each worker counts in its own memory, so a worker that crashes takes its
 * counters along, and the group's merged counters would go down: Prometheus
 * reads a drop as a counter reset and counts the survivors' whole totals as
 * new. The keep is memory the parent maps (shared) before it forks the
 * workers:
 *  - a slot per worker, where the worker puts every exposition it renders
 *    for a scrape, before the scrape sees it;
 *  - a retired slot: the counters and histograms of workers that died,
 *    which the parent folds in (keep_retire) before it starts another
 *    worker in the dead one's place.
 * A scrape merges what the slots hold rather than what the siblings sent,
 * so every number a scrape ever showed stays in the sum: in a worker's slot
 * while it lives, in the retired slot after. What a crashed worker counted
 * after the last scrape it answered is lost (nothing is written on the data
 * path); the group's counters never go down.
 *
 * One process-shared, robust mutex guards the keep; it is held to copy text
 * in or out, never to merge. A worker killed while it writes leaves its
 * previous text in place: it writes into the spare buffer and swaps it in. */
#ifndef MM_METRICS_KEEP_H
#define MM_METRICS_KEEP_H

#include <stddef.h>

#include "buf.h"

/* One exposition kept, at most; a worker whose text is larger is scraped
 * as without a keep (what it sent, or nothing) and logged. */
#define KEEP_TEXT_MAX (16u * 1024 * 1024)

#define KEEP_MAX_WORKERS 256 /* as MM_MAX_WORKERS (server.h) */

typedef struct mm_keep mm_keep_t;

enum { KEEP_EMPTY, KEEP_KEPT, KEEP_TOO_LARGE };

/* The parent, before forking: a keep for n workers. Address space only
 * (MAP_NORESERVE); memory is used as texts are written. NULL with errno. */
mm_keep_t *keep_create(int n);
void keep_free(mm_keep_t *k);

/* Worker w keeps its exposition (replacing the previous one). */
void keep_put(mm_keep_t *k, int w, const char *text, size_t len);

/* What is kept, copied out at one moment: for every worker but `skip`,
 * state[w] and text[w] (kept texts only); text[n] the retired workers'
 * counters (empty when none died). Unused entries are left empty. */
typedef struct {
    int n;
    int state[KEEP_MAX_WORKERS];
    mm_buf_t text[KEEP_MAX_WORKERS + 1];
} keep_snap_t;
/* 0, or -1 when out of memory (snap is then freed). */
int keep_snapshot(mm_keep_t *k, int skip, keep_snap_t *snap);
void keep_snap_free(keep_snap_t *snap);

/* The parent, once worker w has died and before it starts another in its
 * place: fold w's kept counters and histograms into the retired slot, and
 * empty w's slot. Logs what could not be kept. */
void keep_retire(mm_keep_t *k, int w);

#endif
