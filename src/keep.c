/* keep.c — see keep.h.
 *
 * The mapping: a header (the mutex, then a record per slot) and n + 3
 * buffers of KEEP_TEXT_MAX bytes: one per worker slot, one for the retired
 * slot, one for the config and one spare. A slot names the buffer that
 * holds its text; a write goes into the spare, which is then swapped in,
 * so that a writer killed half way leaves the slot as it was. The parent
 * maps it before forking, so every worker has it at the same address. */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "keep.h"
#include "log.h"
#include "metrics_merge.h"

typedef struct {
    int buf;   /* which buffer holds the text */
    int state; /* KEEP_EMPTY, KEEP_KEPT, KEEP_TOO_LARGE */
    size_t len;
} slot_t;

typedef struct {
    pthread_mutex_t lock;
    int spare;
    slot_t slots[KEEP_MAX_WORKERS + 2]; /* [n]: the retired workers', [n + 1]: the config */
    int gone[KEEP_MAX_WORKERS];         /* a worker that exited and was not replaced */
} header_t;

struct mm_keep {
    int n;
    header_t *h;
    char *bufs;
    size_t map_len;
};

static size_t header_len(void)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    return (sizeof(header_t) + page - 1) / page * page;
}

static char *buf_of(mm_keep_t *k, int b)
{
    return k->bufs + (size_t)b * KEEP_TEXT_MAX;
}

/* A worker killed while it held the lock leaves it "owner dead": the data
 * it guards is consistent (writes go to the spare first), so go on. */
static void lock(mm_keep_t *k)
{
    if (pthread_mutex_lock(&k->h->lock) == EOWNERDEAD) pthread_mutex_consistent(&k->h->lock);
}

static void unlock(mm_keep_t *k)
{
    pthread_mutex_unlock(&k->h->lock);
}

mm_keep_t *keep_create(int n)
{
    if (n < 1 || n > KEEP_MAX_WORKERS) {
        errno = EINVAL;
        return NULL;
    }
    mm_keep_t *k = calloc(1, sizeof(*k));
    if (k == NULL) return NULL;
    k->n = n;
    k->map_len = header_len() + (size_t)(n + 3) * KEEP_TEXT_MAX;
    void *m = mmap(NULL, k->map_len, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
        free(k);
        return NULL;
    }
    k->h = m;
    k->bufs = (char *)m + header_len();
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    int rc = pthread_mutex_init(&k->h->lock, &a);
    pthread_mutexattr_destroy(&a);
    if (rc != 0) {
        munmap(m, k->map_len);
        free(k);
        errno = rc;
        return NULL;
    }
    for (int i = 0; i <= n + 1; i++) k->h->slots[i].buf = i; /* zeroed: KEEP_EMPTY */
    k->h->spare = n + 2;
    return k;
}

void keep_free(mm_keep_t *k)
{
    if (k == NULL) return;
    munmap(k->h, k->map_len);
    free(k);
}

/* Under the lock: text into the spare, swapped into slot i. */
static void write_slot(mm_keep_t *k, int i, const char *text, size_t len)
{
    slot_t *s = &k->h->slots[i];
    if (len > KEEP_TEXT_MAX) {
        s->state = KEEP_TOO_LARGE;
        s->len = 0;
        return;
    }
    int b = k->h->spare;
    memcpy(buf_of(k, b), text, len);
    k->h->spare = s->buf;
    s->buf = b;
    s->len = len;
    s->state = KEEP_KEPT;
}

void keep_put(mm_keep_t *k, int w, const char *text, size_t len)
{
    if (k == NULL || w < 0 || w >= k->n) return;
    lock(k);
    int was = k->h->slots[w].state;
    write_slot(k, w, text, len);
    unlock(k);
    if (len > KEEP_TEXT_MAX && was != KEEP_TOO_LARGE)
        mm_log("metrics: worker %d's exposition (%zu bytes) is above %u MB: its counters are not "
               "kept if it dies",
               w, len, KEEP_TEXT_MAX >> 20);
}

/* Under the lock: slot i's text appended to out. */
static void copy_slot(mm_keep_t *k, int i, mm_buf_t *out)
{
    const slot_t *s = &k->h->slots[i];
    if (s->state == KEEP_KEPT) mm_buf_append(out, buf_of(k, s->buf), s->len);
}

int keep_snapshot(mm_keep_t *k, int skip, keep_snap_t *snap)
{
    memset(snap, 0, sizeof(*snap));
    snap->n = k->n;
    for (int i = 0; i <= k->n; i++) mm_buf_init(&snap->text[i]);
    int oom = 0;
    lock(k);
    for (int i = 0; i <= k->n; i++) {
        if (i == skip) continue;
        if (i < k->n) snap->state[i] = k->h->slots[i].state;
        copy_slot(k, i, &snap->text[i]);
        oom |= snap->text[i].oom;
    }
    unlock(k);
    if (!oom) return 0;
    keep_snap_free(snap);
    return -1;
}

void keep_snap_free(keep_snap_t *snap)
{
    for (int i = 0; i <= snap->n; i++) mm_buf_free(&snap->text[i]);
    snap->n = 0;
}

void keep_retire(mm_keep_t *k, int w)
{
    if (k == NULL || w < 0 || w >= k->n) return;
    /* Copy out, merge without the lock (the workers' scrapes wait on it),
     * then swap in. Nobody writes w's slot meanwhile: its worker is dead
     * and the next is not started yet; a scrape in between still reads w's
     * slot and the old retired text, and so counts w once. */
    mm_buf_t old, dead, out;
    mm_buf_init(&old);
    mm_buf_init(&dead);
    mm_buf_init(&out);
    lock(k);
    int state = k->h->slots[w].state;
    copy_slot(k, w, &dead);
    copy_slot(k, k->n, &old);
    unlock(k);
    const char *lost = NULL;
    if (state == KEEP_KEPT) {
        mm_str_t texts[2] = {mm_buf_view(&old), mm_buf_view(&dead)};
        metrics_merge(texts, 2, 0, &out);
        if (old.oom || dead.oom || out.oom)
            lost = "out of memory";
        else if (out.len > KEEP_TEXT_MAX)
            lost = "the retired counters would exceed the keep";
    } else if (state == KEEP_TOO_LARGE) {
        lost = "its exposition was too large to keep";
    }
    lock(k);
    mm_str_t kept = mm_buf_view(&out);
    if (state == KEEP_KEPT && lost == NULL) write_slot(k, k->n, kept.p, kept.n);
    k->h->slots[w].state = KEEP_EMPTY;
    k->h->slots[w].len = 0;
    unlock(k);
    if (lost)
        mm_log("metrics: the counters of worker %d are not kept after its death (%s): the "
               "group's counters go down",
               w, lost);
    mm_buf_free(&old);
    mm_buf_free(&dead);
    mm_buf_free(&out);
}

void keep_put_config(mm_keep_t *k, const char *text, size_t len)
{
    if (k == NULL) return;
    lock(k);
    write_slot(k, k->n + 1, text, len);
    unlock(k);
}

int keep_config(mm_keep_t *k, mm_buf_t *out)
{
    if (k == NULL) return 0;
    lock(k);
    int kept = k->h->slots[k->n + 1].state == KEEP_KEPT;
    copy_slot(k, k->n + 1, out);
    unlock(k);
    if (out->oom) return -1;
    return kept;
}

/* One int each, written by the parent only: atomic loads and stores, no
 * lock (a scrape reads every one). */
void keep_set_gone(mm_keep_t *k, int w)
{
    if (k && w >= 0 && w < k->n) __atomic_store_n(&k->h->gone[w], 1, __ATOMIC_RELEASE);
}

int keep_gone(const mm_keep_t *k, int w)
{
    return k && w >= 0 && w < k->n && __atomic_load_n(&k->h->gone[w], __ATOMIC_ACQUIRE);
}
