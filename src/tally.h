/* tally.h — named counters a policy keeps, pooled over every instance.
 *
 * A policy that measures something of its own (shadow: agreement counts per
 * arm and per field) counts it here rather than in its instance, so that
 * every worker of --workers N and every instance on one Redis describes the
 * same figures (DESIGN.md §5: "every worker sees ... the same statistics").
 * The store owns one tally per experiment and replicates it as the answer
 * statistics are: each counter is `snap` (the pooled value last read from
 * the store; the memory store counts here directly) plus `local` (counted
 * here, not yet confirmed by Redis). A sync round sends a copy of the local
 * counts (tally_local_pairs), Redis adds them to the hash
 * PREFIX:{EXP}:tally (fields "FP|NAME": per definition) and answers with
 * this definition's fields; the copy is then subtracted (tally_confirm) and
 * the snapshot replaced (tally_snap_*).
 *
 * Counter names are the policy's (policies/policy.h, policy_tally_*); the
 * core adds "ARM|dropped" for mirrors it did not send. A tally holds a few
 * hundred names at most (shadow: PATHS_MAX fields per arm), so lookups are
 * a small open-addressing table and an enumeration is a scan. */
#ifndef MM_TALLY_H
#define MM_TALLY_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "../policies/policy.h"

typedef policy_tally_t tally_t;

/* NULL when out of memory. `replicated`: counts go to `local` (a Redis
 * store) rather than straight into `snap` (the memory store). */
tally_t *tally_new(int replicated);
void tally_free(tally_t *t);
void tally_set_replicated(tally_t *t, int replicated);
/* Forget every counter (a reset, a new definition). */
void tally_clear(tally_t *t);
/* Forget what was counted here and not confirmed (another instance's reset). */
void tally_clear_local(tally_t *t);
/* Counters whose local part is not zero, appended to `out` as NUL-terminated
 * name and decimal value pairs; returns how many (the buffer's oom flag
 * says if it failed). */
size_t tally_local_pairs(const tally_t *t, mm_buf_t *out);
/* The same for the pooled snapshot (what a restore writes back). */
size_t tally_snap_pairs(const tally_t *t, mm_buf_t *out);
/* Redis took `n` pairs made by tally_local_pairs: subtract them from local. */
void tally_confirm(tally_t *t, const char *pairs, size_t n);
/* A new snapshot: every snap to 0, then tally_snap_set per field read. */
void tally_snap_zero(tally_t *t);
void tally_snap_set(tally_t *t, const char *name, size_t len, uint64_t v);
/* 1 if any counter is not zero (local or snapshot). */
int tally_nonzero_local(const tally_t *t);
size_t tally_size(const tally_t *t);

/* A definition's fingerprint (config's canonical `definition` text): its
 * tally key, so a redefined experiment counts afresh and instances that run
 * different definitions during a rolling reload do not mix their counts. */
uint64_t tally_fingerprint(const char *definition);

#endif
