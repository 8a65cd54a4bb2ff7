/* keep.h — what a --workers group keeps when one of its workers dies:
 * the counters it counted, and the config the workers run.
 *
 * Each worker counts in its own memory, so a worker that crashes takes its
 * counters along, and the group's merged counters would go down: Prometheus
 * reads a drop as a counter reset and counts the survivors' whole totals as
 * new. And the worker the parent starts in its place must run the config
 * its siblings run, which is neither the start config (the group may have
 * reloaded since) nor the file as it is now (it may have been broken since,
 * or name a host that no longer resolves). The keep is memory the parent
 * maps (shared) before it forks the workers:
 *  - a slot per worker, where the worker puts every exposition it renders
 *    for a scrape, before the scrape sees it, and one a second between
 *    scrapes (scrape_keep_tick);
 *  - a retired slot: the counters and histograms of workers that died,
 *    which the parent folds in (keep_retire) before it starts another
 *    worker in the dead one's place;
 *  - a config slot: the text of the config file the last successful reload
 *    of any worker loaded, which the new worker starts on (keep_config).
 * A scrape merges what the slots hold rather than what the siblings sent,
 * so every number a scrape ever showed stays in the sum: in a worker's slot
 * while it lives, in the retired slot after. What a crashed worker counted
 * since it last put its slot (about a second) is lost (nothing is written
 * on the data path); the group's counters never go down.
 *
 * One process-shared, robust mutex guards the keep; it is held to copy text
 * in or out, never to merge. A worker killed while it writes leaves its
 * previous text in place: it writes into the spare buffer and swaps it in. */
#ifndef MM_KEEP_H
#define MM_KEEP_H

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

/* The parent: worker w exited and no worker takes its place. A gone
 * worker is no longer asked by scrapes and syncs, nor counted in the
 * group's size (modelmux_workers); its counters are in the retired slot. */
void keep_set_gone(mm_keep_t *k, int w);
int keep_gone(const mm_keep_t *k, int w);

/* A worker's reload succeeded: text is the config file it loaded (at most
 * KEEP_TEXT_MAX bytes, as config files are). */
void keep_put_config(mm_keep_t *k, const char *text, size_t len);
/* The parent: the kept config copied into out (appended); 1 when there is
 * one (a reload succeeded since the start), 0 when not, -1 out of memory. */
int keep_config(mm_keep_t *k, mm_buf_t *out);

#endif
