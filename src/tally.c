/* tally.c — see tally.h. */
#include <stdlib.h>
#include <string.h>

#include "tally.h"

#define TALLY_NAME_MAX 512   /* longer names (only foreign ones: Redis) are ignored */
#define TALLY_MAX      65536 /* counters; beyond, new names are not counted */

typedef struct {
    char *name;
    size_t len;
    uint64_t hash;
    uint64_t snap, local;
} tally_ent_t;

struct tally_s {
    tally_ent_t *ents; /* in order of first use */
    size_t n, cap;
    uint32_t *slots; /* open addressing: entry index + 1, 0 empty */
    size_t n_slots;  /* a power of two, at least twice n */
    int replicated;
};

/* FNV-1a over 8-byte words (names are ours or the store's, not an
 * attacker's choice): a comparison counts a few names, so a byte at a time
 * showed in profiles. */
static uint64_t name_hash(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603ull, w;
    for (; n >= 8; p += 8, n -= 8) {
        memcpy(&w, p, 8);
        h = (h ^ w) * 1099511628211ull;
        h ^= h >> 29;
    }
    w = 0;
    memcpy(&w, p, n);
    h = (h ^ w ^ ((uint64_t)n << 56)) * 1099511628211ull;
    return h ^ (h >> 32);
}

tally_t *tally_new(int replicated)
{
    tally_t *t = calloc(1, sizeof(*t));
    if (t != NULL) t->replicated = replicated;
    return t;
}

void tally_set_replicated(tally_t *t, int replicated)
{
    t->replicated = replicated;
}

void tally_clear(tally_t *t)
{
    for (size_t i = 0; i < t->n; i++) free(t->ents[i].name);
    t->n = 0;
    if (t->slots) memset(t->slots, 0, t->n_slots * sizeof(*t->slots));
}

void tally_free(tally_t *t)
{
    if (t == NULL) return;
    tally_clear(t);
    free(t->ents);
    free(t->slots);
    free(t);
}

void tally_clear_local(tally_t *t)
{
    for (size_t i = 0; i < t->n; i++) t->ents[i].local = 0;
}

static tally_ent_t *find(const tally_t *t, const char *name, size_t len, uint64_t h)
{
    if (t->n_slots == 0) return NULL;
    for (size_t i = h & (t->n_slots - 1);; i = (i + 1) & (t->n_slots - 1)) {
        uint32_t s = t->slots[i];
        if (s == 0) return NULL;
        tally_ent_t *e = &t->ents[s - 1];
        if (e->hash == h && e->len == len && memcmp(e->name, name, len) == 0) return e;
    }
}

static int grow_slots(tally_t *t)
{
    size_t n = t->n_slots ? t->n_slots * 2 : 64;
    uint32_t *s = calloc(n, sizeof(*s));
    if (s == NULL) return -1;
    for (size_t k = 0; k < t->n; k++) {
        size_t i = t->ents[k].hash & (n - 1);
        while (s[i] != 0) i = (i + 1) & (n - 1);
        s[i] = (uint32_t)(k + 1);
    }
    free(t->slots);
    t->slots = s;
    t->n_slots = n;
    return 0;
}

/* The counter `name`, made if need be; NULL if it cannot be. */
static tally_ent_t *get(tally_t *t, const char *name, size_t len)
{
    uint64_t h = name_hash(name, len);
    tally_ent_t *e = find(t, name, len, h);
    if (e != NULL) return e;
    if (len > TALLY_NAME_MAX || t->n >= TALLY_MAX) return NULL;
    if (2 * (t->n + 1) > t->n_slots && grow_slots(t) < 0) return NULL;
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 32;
        tally_ent_t *ne = realloc(t->ents, cap * sizeof(*ne));
        if (ne == NULL) return NULL;
        t->ents = ne;
        t->cap = cap;
    }
    char *copy = malloc(len + 1);
    if (copy == NULL) return NULL;
    memcpy(copy, name, len);
    copy[len] = '\0';
    e = &t->ents[t->n++];
    *e = (tally_ent_t){copy, len, h, 0, 0};
    size_t i = h & (t->n_slots - 1);
    while (t->slots[i] != 0) i = (i + 1) & (t->n_slots - 1);
    t->slots[i] = (uint32_t)t->n;
    return e;
}

/* ---- what policies call (policy.h) ---- */

void policy_tally_add(policy_tally_t *t, const char *name, uint64_t n)
{
    if (t == NULL || n == 0) return;
    tally_ent_t *e = get(t, name, strlen(name));
    if (e == NULL) return;
    if (t->replicated)
        e->local += n;
    else
        e->snap += n;
}

uint64_t policy_tally_get(const policy_tally_t *t, const char *name)
{
    if (t == NULL) return 0;
    size_t len = strlen(name);
    const tally_ent_t *e = find(t, name, len, name_hash(name, len));
    return e ? e->snap + e->local : 0;
}

int policy_tally_bump(policy_tally_t *t, const char *name, uint64_t n)
{
    if (t == NULL) return 0;
    size_t len = strlen(name);
    tally_ent_t *e = find(t, name, len, name_hash(name, len));
    if (e == NULL || e->snap + e->local == 0) return 0;
    if (t->replicated)
        e->local += n;
    else
        e->snap += n;
    return 1;
}

size_t policy_tally_count(const policy_tally_t *t, const char *prefix)
{
    size_t k = 0, n = strlen(prefix);
    for (size_t i = 0; t != NULL && i < t->n; i++) {
        const tally_ent_t *e = &t->ents[i];
        k += e->len >= n && memcmp(e->name, prefix, n) == 0 && e->snap + e->local > 0;
    }
    return k;
}

void policy_tally_each(const policy_tally_t *t, const char *prefix, policy_tally_cb cb, void *arg)
{
    size_t n = strlen(prefix);
    for (size_t i = 0; t != NULL && i < t->n; i++) {
        const tally_ent_t *e = &t->ents[i];
        if (e->len >= n && memcmp(e->name, prefix, n) == 0 && e->snap + e->local > 0)
            cb(arg, e->name + n, e->snap + e->local);
    }
}

/* ---- what the store calls ---- */

static size_t pairs(const tally_t *t, int local, mm_buf_t *out)
{
    size_t k = 0;
    for (size_t i = 0; i < t->n; i++) {
        const tally_ent_t *e = &t->ents[i];
        uint64_t v = local ? e->local : e->snap;
        if (v == 0) continue;
        mm_buf_append(out, e->name, e->len + 1);
        mm_buf_u64(out, v);
        mm_buf_append(out, "", 1);
        k++;
    }
    return k;
}

size_t tally_local_pairs(const tally_t *t, mm_buf_t *out)
{
    return pairs(t, 1, out);
}

size_t tally_snap_pairs(const tally_t *t, mm_buf_t *out)
{
    return pairs(t, 0, out);
}

void tally_confirm(tally_t *t, const char *p, size_t n)
{
    for (size_t k = 0; k < n; k++) {
        size_t len = strlen(p);
        const char *v = p + len + 1;
        tally_ent_t *e = find(t, p, len, name_hash(p, len));
        uint64_t d = strtoull(v, NULL, 10);
        /* A clear since (a reset, a new definition) dropped it already. */
        if (e != NULL) e->local = e->local >= d ? e->local - d : 0;
        p = v + strlen(v) + 1;
    }
}

void tally_snap_zero(tally_t *t)
{
    for (size_t i = 0; i < t->n; i++) t->ents[i].snap = 0;
}

void tally_snap_set(tally_t *t, const char *name, size_t len, uint64_t v)
{
    /* A name with a NUL byte is no name of ours (another tool's field). */
    tally_ent_t *e = v && memchr(name, '\0', len) == NULL ? get(t, name, len) : NULL;
    if (e != NULL) e->snap = v;
}

int tally_nonzero_local(const tally_t *t)
{
    for (size_t i = 0; t != NULL && i < t->n; i++)
        if (t->ents[i].local) return 1;
    return 0;
}

size_t tally_size(const tally_t *t)
{
    return t ? t->n : 0;
}

uint64_t tally_fingerprint(const char *definition)
{
    return name_hash(definition, strlen(definition));
}
