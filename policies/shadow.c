/* shadow.c — shadow traffic (DESIGN.md §3 `shadow`, §7 shadow outcomes).
 *
 * The primary answers every request; with probability `sample` the request is
 * also mirrored to every shadow arm (and to the `secondary`), and the core
 * hands all the answers to compare(). A mirror's outcome is:
 *   error    — the mirror or the primary has status 0 (transport failure or
 *              past timeout_ms): nothing to compare;
 *   mismatch — a difference: status first (a different status stops there),
 *              then, with compare.headers, each header name whose values
 *              differ (the core's header block: end-to-end headers only,
 *              no Date or Content-Length; Content-Type case-insensitively),
 *              then the body:
 *              structurally (jsondiff: tolerance, ignore list, key order
 *              irrelevant) when both bodies parse as JSON, else bytewise;
 *   match    — otherwise.
 * Truncated bodies (larger than what the core kept) cannot be parsed, so they
 * are compared bytewise and count as different only when provably so: the
 * kept prefixes differ, or a complete body is not longer than the other's
 * kept prefix. The unseen tail is given the benefit of the doubt: a shadow
 * comparison must not cry wolf on every large answer.
 *
 * Noise (Diffy): with `secondary`, a second instance of the primary that gets
 * every sampled request, compare() first diffs primary vs secondary and keeps
 * the exact paths where they differ on this request. A candidate difference
 * at a path P is noise when P lies at or below one of those paths ("" covers
 * everything; "status" covers only a status difference). A candidate is a
 * mismatch only if it differs somewhere that is not noise; a candidate whose
 * every difference is noise is a match, counted as `noisy`. When the
 * secondary gave no usable answer (error, dropped) the candidate is judged
 * strictly. More than NOISE_MAX noisy paths on one request make the whole
 * answer noise for that request: primary and secondary disagree everywhere.
 * The secondary's own outcome is its raw comparison with the primary.
 *
 * Statistics per arm: outcome counts and per field the share of compared
 * requests that differ there, counted in the experiment's tally (policy.h),
 * so they are pooled over every worker and instance like the arm
 * statistics; the mean latency comes from the pooled answer statistics.
 * Tally names: "ARM|matches", "ARM|mismatches", "ARM|errors", "ARM|noisy",
 * "ARM|differing" (any difference, noise included), "ARM|path|FIELD",
 * "ARM|other". Fields are keyed by "shape" (array indices as "*"), so
 * "/items/3/score" and "/items/7/score" count together, once per request;
 * at most PATHS_MAX fields per arm are kept (pooled: a field no instance has
 * counted yet is kept while the arm has fewer), later ones are aggregated
 * under "other". The cost is
 * one pass over each answer's text into a token tape (jsondiff.h; the primary's
 * is parsed once for all its mirrors) and a walk over both tapes, off the
 * client's path (the primary has already been answered when compare() runs).
 * The two tapes belong to the policy and are reused, so a comparison does not
 * allocate once they have grown to the answers' size; an answer that made
 * them grow beyond SCRATCH_KEEP gives the memory back afterwards. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsondiff.h"
#include "policy.h"

#define PATHS_MAX    64  /* fields kept per arm */
#define PATH_KEY_MAX 160 /* longer field keys are cut (and may then merge) */
#define TOP_PATHS    10  /* fields shown by describe() */
#define IGNORE_MAX   32  /* compare.ignore entries */
#define NOISE_MAX    256 /* noisy paths kept per request */
#define PATH_STATUS  "status"
#define PATH_CTYPE   "header:content-type"
#define PATH_HEADER  "header:" /* + the lowercase name: one pseudo-path per header */
#define SCRATCH_KEEP (1 << 20) /* bytes a parse buffer keeps between requests */

/* An arm's outcome counters in the tally: "ARM|matches" and so on. */
enum {
    T_MATCHES,
    T_MISMATCHES,
    T_ERRORS,
    T_NOISY,
    T_DIFFERING,
    T_OTHER,
    T_PATH, /* the prefix of "ARM|path|FIELD" */
    T_DROPPED,
    T__COUNT
};
static const char *const tally_kinds[T__COUNT] = {"matches",   "mismatches", "errors", "noisy",
                                                  "differing", "other",      "path|",  NULL};

/* The fields one mirror's answer differs in: each counted once per request. */
typedef struct {
    char keys[PATHS_MAX][PATH_KEY_MAX];
    size_t n;
    int other; /* more distinct fields than PATHS_MAX */
} reqpaths_t;

typedef struct {
    size_t n_arms; /* primary, shadows..., secondary last if any */
    char names[MM_MAX_ARMS][MM_NAME_MAX + 1];
    int secondary; /* arm index, -1: none */
    double sample;
    int compare_headers;
    char ignore_buf[IGNORE_MAX][JSONDIFF_PATH_MAX];
    const char *ignore[IGNORE_MAX];
    jsondiff_opts_t opts;
    reqpaths_t paths; /* the mirror being judged, reused */
    /* Each arm's counter names, made once: a comparison formats none. */
    char tn[MM_MAX_ARMS][T__COUNT][MM_NAME_MAX + 16];
    jsondiff_doc_t primary_doc, mirror_doc; /* parse buffers, reused */
} shadow_t;

/* Paths where primary and secondary differ on the request being compared. */
typedef struct {
    char *buf; /* NUL-separated */
    size_t len, cap, n;
    int all; /* too many (or out of memory): everything is noise */
} noise_t;

/* One lazily parsed answer. */
typedef struct {
    const policy_resp_t *r;
    jsondiff_doc_t *doc; /* where to parse it */
    int parsed, json;    /* json: it parsed as JSON */
} body_t;

/* What one comparison collects through the diff callback. */
typedef struct {
    shadow_t *s;
    const noise_t *noise_in; /* candidate: noise to discount, or NULL */
    noise_t *noise_out;      /* secondary: where to record noise, or NULL */
    size_t total, real;
} judge_t;

/* ---- per-field statistics ---- */

static void tally_arm(policy_tally_t *t, const shadow_t *s, int arm, int kind)
{
    policy_tally_add(t, s->tn[arm][kind], 1);
}

static void name_counters(shadow_t *s)
{
    for (size_t i = 0; i < s->n_arms && i < MM_MAX_ARMS; i++) {
        for (int k = 0; k < T_DROPPED; k++)
            snprintf(s->tn[i][k], sizeof(s->tn[i][k]), "%s|%s", s->names[i], tally_kinds[k]);
        /* The core's (policy.h) */
        snprintf(s->tn[i][T_DROPPED], sizeof(s->tn[i][T_DROPPED]), "%s" POLICY_TALLY_DROPPED,
                 s->names[i]);
    }
}

/* A field this mirror's answer differs in (once per request). */
static void reqpaths_add(reqpaths_t *rp, const char *key)
{
    for (size_t i = 0; i < rp->n; i++)
        if (strncmp(rp->keys[i], key, PATH_KEY_MAX - 1) == 0) return;
    if (rp->n < PATHS_MAX) {
        size_t n = strnlen(key, PATH_KEY_MAX - 1); /* longer keys are cut (and may merge) */
        memcpy(rp->keys[rp->n], key, n);
        rp->keys[rp->n++][n] = '\0';
    } else {
        rp->other = 1;
    }
}

/* Count the request's fields for `arm`: each under its own name if some
 * instance counted it already or the arm has fewer than PATHS_MAX, else
 * under "other" (once). */
static void reqpaths_count(const shadow_t *s, policy_tally_t *t, int arm, const reqpaths_t *rp)
{
    const char *prefix = s->tn[arm][T_PATH];
    size_t plen = strlen(prefix);
    char name[sizeof(s->tn[0][0]) + PATH_KEY_MAX];
    int other = rp->other;
    size_t kept = (size_t)-1; /* counted when first needed: a scan */
    memcpy(name, prefix, plen);
    for (size_t i = 0; i < rp->n; i++) {
        memcpy(name + plen, rp->keys[i], strlen(rp->keys[i]) + 1);
        if (policy_tally_bump(t, name, 1)) continue; /* a field kept already */
        if (kept == (size_t)-1) kept = policy_tally_count(t, prefix);
        if (kept >= PATHS_MAX) {
            other = 1;
            continue;
        }
        kept++;
        policy_tally_add(t, name, 1);
    }
    if (other) tally_arm(t, s, arm, T_OTHER);
}

/* ---- noise ---- */

static void noise_add(noise_t *nz, const char *path)
{
    if (nz->all) return;
    size_t n = strlen(path) + 1;
    if (nz->n >= NOISE_MAX) {
        nz->all = 1;
        return;
    }
    if (nz->len + n > nz->cap) {
        size_t cap = nz->cap ? nz->cap * 2 : 1024;
        while (cap < nz->len + n) cap *= 2;
        char *b = realloc(nz->buf, cap);
        if (b == NULL) {
            nz->all = 1;
            return;
        }
        nz->buf = b;
        nz->cap = cap;
    }
    memcpy(nz->buf + nz->len, path, n);
    nz->len += n;
    nz->n++;
}

static int noise_covers(const noise_t *nz, const char *path)
{
    if (nz->all) return 1;
    for (size_t off = 0; off < nz->len; off += strlen(nz->buf + off) + 1) {
        const char *q = nz->buf + off;
        /* Pseudo-paths ("status", "header:NAME") only cover themselves. */
        if (q[0] != '/' && q[0] != '\0') {
            if (strcmp(q, path) == 0) return 1;
        } else if (path[0] == '/' || path[0] == '\0') {
            if (jsondiff_path_covers(q, path)) return 1;
        }
    }
    return 0;
}

/* ---- comparison ---- */

static void judge_diff(judge_t *j, const char *path, const char *shape)
{
    j->total++;
    reqpaths_add(&j->s->paths, shape);
    if (j->noise_out) noise_add(j->noise_out, path);
    /* Once a real difference is known the outcome is settled: skip the scan. */
    if (j->real > 0 || !(j->noise_in && noise_covers(j->noise_in, path))) j->real++;
}

static int on_json_diff(void *arg, const jsondiff_item_t *d)
{
    judge_diff(arg, d->path, d->shape);
    return 0;
}

/* The answer's parsed document, or NULL if it is not JSON. */
static const jsondiff_doc_t *body_doc(body_t *b)
{
    if (!b->parsed) {
        b->parsed = 1;
        b->json = !b->r->truncated && b->r->body.n > 0 &&
                  jsondiff_doc_parse(b->doc, b->r->body.p, b->r->body.n) == 0;
    }
    return b->json ? b->doc : NULL;
}

/* Bytewise with truncation: 1 if the bodies are provably different. */
static int bytes_differ(const policy_resp_t *a, const policy_resp_t *b)
{
    size_t na = a->body.n, nb = b->body.n;
    size_t n = na < nb ? na : nb;
    if (n > 0 && memcmp(a->body.p, b->body.p, n) != 0) return 1;
    if (a->truncated && b->truncated) return 0;
    if (a->truncated) return !(nb > na); /* b complete: it must extend a's prefix */
    if (b->truncated) return !(na > nb);
    return na != nb;
}

/* The next byte of a media type that counts, from *i on, or -1 at the end:
 * outside a quoted string whitespace is only the optional kind around ";"
 * (RFC 9110 §8.3.1) and letters compare in any case, so
 * "application/json; charset=UTF-8" and "Application/JSON;charset=utf-8"
 * are the same type; inside quotes every byte counts. */
static int ctype_next(mm_str_t s, size_t *i, int *quoted)
{
    while (*i < s.n) {
        char ch = s.p[(*i)++];
        if (*quoted) {
            if (ch == '"') *quoted = 0;
            return (unsigned char)ch;
        }
        if (ch == ' ' || ch == '\t') continue;
        if (ch == '"') *quoted = 1;
        return ch >= 'A' && ch <= 'Z' ? ch - 'A' + 'a' : (unsigned char)ch;
    }
    return -1;
}

static int ctype_differs(mm_str_t a, mm_str_t b)
{
    size_t i = 0, k = 0;
    int qa = 0, qb = 0;
    for (;;) {
        int x = ctype_next(a, &i, &qa), y = ctype_next(b, &k, &qb);
        if (x != y) return 1;
        if (x < 0) return 0;
    }
}

/* The next run of header lines with one name in a block ("name:value\n",
 * sorted by name): *name and *lines (the run's whole lines) from *pos on. */
static int header_run(mm_str_t block, size_t *pos, mm_str_t *name, mm_str_t *lines)
{
    if (*pos >= block.n) return 0;
    const char *start = block.p + *pos, *end = block.p + block.n;
    const char *colon = memchr(start, ':', (size_t)(end - start));
    if (colon == NULL) colon = end;
    *name = (mm_str_t){start, (size_t)(colon - start)};
    const char *p = start;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *next = nl ? nl + 1 : end;
        if (p != start &&
            !((size_t)(end - p) > name->n && p[name->n] == ':' && memcmp(p, name->p, name->n) == 0))
            break;
        p = next;
    }
    *lines = (mm_str_t){start, (size_t)(p - start)};
    *pos = (size_t)(p - block.p);
    return 1;
}

static int str_cmp(mm_str_t a, mm_str_t b)
{
    size_t n = a.n < b.n ? a.n : b.n;
    int c = n ? memcmp(a.p, b.p, n) : 0;
    return c ? c : (a.n > b.n) - (a.n < b.n);
}

static void header_diff(judge_t *j, mm_str_t name)
{
    char path[PATH_KEY_MAX];
    snprintf(path, sizeof path, PATH_HEADER "%.*s", (int)name.n, name.p);
    judge_diff(j, path, path);
}

/* compare.headers: one difference per header name whose lines differ (or
 * that only one answer has). Blocks come from the core when the policy
 * declared keep_headers; without them (both empty) the Content-Type values
 * are compared. */
static void judge_headers(judge_t *j, const policy_resp_t *a, const policy_resp_t *b)
{
    if (a->headers.n == 0 && b->headers.n == 0) {
        if (ctype_differs(a->content_type, b->content_type)) judge_diff(j, PATH_CTYPE, PATH_CTYPE);
        return;
    }
    size_t pa = 0, pb = 0;
    mm_str_t na = {0}, la = {0}, nb = {0}, lb = {0};
    int ha = header_run(a->headers, &pa, &na, &la), hb = header_run(b->headers, &pb, &nb, &lb);
    while (ha || hb) {
        int c = !ha ? 1 : !hb ? -1 : str_cmp(na, nb);
        if (c < 0) {
            header_diff(j, na); /* only the primary has it */
        } else if (c > 0) {
            header_diff(j, nb);
        } else {
            /* Media types and their parameters are case-insensitive. */
            int differs = mm_str_ieq(na, "content-type") ? ctype_differs(la, lb)
                                                         : la.n != lb.n || memcmp(la.p, lb.p, la.n);
            if (differs) header_diff(j, na);
        }
        if (c <= 0) ha = header_run(a->headers, &pa, &na, &la);
        if (c >= 0) hb = header_run(b->headers, &pb, &nb, &lb);
    }
}

static void judge_bodies(judge_t *j, body_t *prim, body_t *m)
{
    const policy_resp_t *a = prim->r, *b = m->r;
    if (a->truncated || b->truncated) {
        if (bytes_differ(a, b)) judge_diff(j, "", "");
        return;
    }
    if (a->body.n == b->body.n && (a->body.n == 0 || memcmp(a->body.p, b->body.p, a->body.n) == 0))
        return;
    const jsondiff_doc_t *da = body_doc(prim), *db = body_doc(m);
    if (da != NULL && db != NULL)
        jsondiff(da, db, &j->s->opts, on_json_diff, j);
    else
        judge_diff(j, "", ""); /* not both JSON, and the bytes differ */
}

/* Compare one mirror's answer with the primary's; counts the outcome in t. */
static int judge(shadow_t *s, policy_tally_t *t, body_t *prim, body_t *m, int arm,
                 const noise_t *noise_in, noise_t *noise_out)
{
    if (arm < 1 || (size_t)arm >= s->n_arms) return POLICY_ERROR;
    if (prim->r->status == 0 || m->r->status == 0) {
        tally_arm(t, s, arm, T_ERRORS);
        return POLICY_ERROR;
    }
    judge_t j = {s, noise_in, noise_out, 0, 0};
    s->paths.n = 0;
    s->paths.other = 0;
    if (prim->r->status != m->r->status) {
        judge_diff(&j, PATH_STATUS, PATH_STATUS);
    } else {
        if (s->compare_headers) judge_headers(&j, prim->r, m->r);
        judge_bodies(&j, prim, m);
    }
    if (j.total > 0) {
        tally_arm(t, s, arm, T_DIFFERING);
        reqpaths_count(s, t, arm, &s->paths);
    }
    if (j.real > 0) {
        tally_arm(t, s, arm, T_MISMATCHES);
        return POLICY_MISMATCH;
    }
    tally_arm(t, s, arm, T_MATCHES);
    if (j.total > 0) tally_arm(t, s, arm, T_NOISY);
    return POLICY_MATCH;
}

static void shadow_compare(void *p, const policy_view_t *v, const policy_resp_t *primary,
                           const int *mirror_arms, const policy_resp_t *mirrors, size_t n,
                           int *outcomes)
{
    shadow_t *s = p;
    policy_tally_t *t = v ? v->tally : NULL;
    body_t prim = {primary, &s->primary_doc, 0, 0};
    noise_t noise = {NULL, 0, 0, 0, 0};
    int have_noise = 0;

    /* The secondary first: its differences are this request's noise. */
    for (size_t i = 0; i < n; i++) {
        if (s->secondary < 0 || mirror_arms[i] != s->secondary) continue;
        body_t m = {&mirrors[i], &s->mirror_doc, 0, 0};
        outcomes[i] = judge(s, t, &prim, &m, mirror_arms[i], NULL, &noise);
        have_noise = outcomes[i] != POLICY_ERROR;
    }
    for (size_t i = 0; i < n; i++) {
        if (s->secondary >= 0 && mirror_arms[i] == s->secondary) continue;
        body_t m = {&mirrors[i], &s->mirror_doc, 0, 0};
        outcomes[i] = judge(s, t, &prim, &m, mirror_arms[i], have_noise ? &noise : NULL, NULL);
    }
    jsondiff_doc_trim(&s->primary_doc, SCRATCH_KEEP);
    jsondiff_doc_trim(&s->mirror_doc, SCRATCH_KEEP);
    free(noise.buf);
}

/* ---- routing ---- */

static void shadow_choose(void *p, const policy_view_t *v, const policy_req_t *req,
                          policy_choice_t *out)
{
    const shadow_t *s = p;
    const exp_control_t *c = v->control;
    size_t n = v->n_arms < s->n_arms ? v->n_arms : s->n_arms;
    MM_UNUSED(req);
    out->primary = 0;
    out->n_mirrors = 0;
    if (c != NULL && c->state == EXP_PROMOTED && c->has_weights) {
        out->primary = policy_pick_weighted(c->weights, n, mm_rng_uniform(v->rng));
        return;
    }
    /* Rolled back or paused: the experiment is stopped or frozen, and the
     * shadow arms get no load. */
    if (c != NULL && c->state != EXP_RUNNING) return;
    if (s->sample <= 0.0) return;
    if (s->sample < 1.0 && !(mm_rng_uniform(v->rng) < s->sample)) return;
    for (size_t i = 1; i < n; i++) out->mirrors[out->n_mirrors++] = (int)i;
}

/* ---- describe ---- */

static json_t *rate_or_null(uint64_t num, uint64_t den)
{
    return den ? json_real((double)num / (double)den) : json_null();
}

/* The mean of arm's pooled answer latencies (the store's histogram: each
 * answer at its bucket's midpoint, within 3 %), or null before any. */
static json_t *mean_latency_ms(const policy_view_t *v, size_t arm)
{
    if (v == NULL || arm >= v->n_arms) return json_null();
    const answer_stats_t *a = v->answers ? &v->answers[arm] : NULL;
    const answer_stats_t *l = v->answers_local ? &v->answers_local[arm] : NULL;
    uint64_t n = (a ? a->samples : 0) + (l ? l->samples : 0);
    if (n == 0) return json_null();
    double sum = 0;
    for (unsigned i = 0; i < LATHIST_BUCKETS; i++) {
        uint64_t k = (a ? a->hist[i] : 0) + (l ? l->hist[i] : 0);
        if (k) sum += (double)k * lathist_mid(i);
    }
    return json_real(sum / (double)n / 1000.0);
}

/* One arm's figures, read from the tally. */
typedef struct {
    uint64_t matches, mismatches, errors, noisy, differing, other, dropped;
} armfig_t;

static void arm_figures(const shadow_t *s, const policy_view_t *v, size_t i, armfig_t *f)
{
    const policy_tally_t *t = v ? v->tally : NULL;
    f->matches = policy_tally_get(t, s->tn[i][T_MATCHES]);
    f->mismatches = policy_tally_get(t, s->tn[i][T_MISMATCHES]);
    f->errors = policy_tally_get(t, s->tn[i][T_ERRORS]);
    f->noisy = policy_tally_get(t, s->tn[i][T_NOISY]);
    f->differing = policy_tally_get(t, s->tn[i][T_DIFFERING]);
    f->other = policy_tally_get(t, s->tn[i][T_OTHER]);
    f->dropped = policy_tally_get(t, s->tn[i][T_DROPPED]);
}

typedef struct {
    const char *key;
    uint64_t requests;
} pathfig_t;

typedef struct {
    pathfig_t *v;
    size_t n, cap;
} pathlist_t;

static void collect_path(void *arg, const char *rest, uint64_t requests)
{
    pathlist_t *l = arg;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        pathfig_t *nv = realloc(l->v, cap * sizeof(*nv));
        if (nv == NULL) return;
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n++] = (pathfig_t){rest, requests};
}

static int by_requests_desc(const void *x, const void *y)
{
    const pathfig_t *a = x, *b = y;
    if (a->requests != b->requests) return a->requests < b->requests ? 1 : -1;
    return strcmp(a->key, b->key);
}

/* The top fields of arm i; with a secondary (noise, its figures nf) each
 * field also gets the noise rate at the same field. */
static json_t *describe_paths(const shadow_t *s, const policy_view_t *v, size_t i,
                              const armfig_t *f, int noise, const armfig_t *nf)
{
    const policy_tally_t *t = v ? v->tally : NULL;
    char name[sizeof(s->tn[0][0]) + PATH_KEY_MAX];
    uint64_t compared = f->matches + f->mismatches;
    uint64_t noise_compared = noise ? nf->matches + nf->mismatches : 0;
    size_t noise_kept = 0;
    pathlist_t l = {NULL, 0, 0};
    policy_tally_each(t, s->tn[i][T_PATH], collect_path, &l);
    if (l.n > 1) qsort(l.v, l.n, sizeof(*l.v), by_requests_desc);
    const char *nprefix = noise ? s->tn[s->secondary][T_PATH] : "";
    if (noise) noise_kept = policy_tally_count(t, nprefix);
    json_t *arr = json_array();
    for (size_t k = 0; k < l.n && k < TOP_PATHS; k++) {
        json_t *o = json_object();
        json_object_set_new(o, "path", json_string(l.v[k].key));
        json_object_set_new(o, "requests", json_integer((json_int_t)l.v[k].requests));
        json_object_set_new(o, "diff_rate", rate_or_null(l.v[k].requests, compared));
        if (noise) {
            snprintf(name, sizeof name, "%s%s", nprefix, l.v[k].key);
            uint64_t nreq = policy_tally_get(t, name);
            json_t *nr;
            if (nreq)
                nr = rate_or_null(nreq, noise_compared);
            else if (noise_kept < PATHS_MAX)
                nr = noise_compared ? json_real(0.0) : json_null();
            else
                nr = json_null(); /* the field fell into the secondary's "other" */
            json_object_set_new(o, "noise_rate", nr);
        }
        json_array_append_new(arr, o);
    }
    free(l.v);
    if (f->other > 0) {
        json_t *o = json_object();
        json_object_set_new(o, "path", json_string("other"));
        json_object_set_new(o, "requests", json_integer((json_int_t)f->other));
        json_object_set_new(o, "diff_rate", rate_or_null(f->other, compared));
        json_array_append_new(arr, o);
    }
    return arr;
}

static json_t *describe_arm(const shadow_t *s, const policy_view_t *v, size_t i, int noise,
                            const armfig_t *nf)
{
    armfig_t f;
    arm_figures(s, v, i, &f);
    uint64_t compared = f.matches + f.mismatches;
    json_t *o = json_object();
    json_object_set_new(o, "arm", json_string(s->names[i]));
    json_object_set_new(o, "compared", json_integer((json_int_t)compared));
    json_object_set_new(o, "matches", json_integer((json_int_t)f.matches));
    json_object_set_new(o, "mismatches", json_integer((json_int_t)f.mismatches));
    json_object_set_new(o, "errors", json_integer((json_int_t)f.errors));
    /* Not sent (max_inflight, max_body_bytes): counted by the core. Without
     * it the view would not say why a loaded shadow compares nothing. */
    json_object_set_new(o, "dropped", json_integer((json_int_t)f.dropped));
    if (s->secondary >= 0 && (int)i != s->secondary)
        json_object_set_new(o, "noisy", json_integer((json_int_t)f.noisy));
    json_object_set_new(o, "agreement_rate", rate_or_null(f.matches, compared));
    json_object_set_new(o, "mean_latency_ms", mean_latency_ms(v, i));
    json_object_set_new(o, "paths", describe_paths(s, v, i, &f, noise, nf));
    if ((int)i == s->secondary) /* the secondary's own comparison with the primary is the noise */
        json_object_set_new(o, "noise_rate", rate_or_null(f.differing, compared));
    return o;
}

static json_t *shadow_describe(void *p, const policy_view_t *v)
{
    const shadow_t *s = p;
    armfig_t nf = {0};
    int noise = s->secondary >= 0;
    if (noise) arm_figures(s, v, (size_t)s->secondary, &nf);
    json_t *o = json_object();
    json_object_set_new(o, "primary", json_string(s->names[0]));
    json_object_set_new(o, "secondary",
                        s->secondary >= 0 ? json_string(s->names[s->secondary]) : json_null());
    json_object_set_new(o, "sample", json_real(s->sample));
    json_object_set_new(o, "primary_mean_latency_ms", mean_latency_ms(v, 0));

    json_t *cmp = json_object(), *ign = json_array();
    for (size_t i = 0; i < s->opts.n_ignore; i++)
        json_array_append_new(ign, json_string(s->ignore[i]));
    json_object_set_new(cmp, "json_tolerance", json_real(s->opts.tolerance));
    json_object_set_new(cmp, "ignore", ign);
    json_object_set_new(cmp, "headers", json_boolean(s->compare_headers));
    json_object_set_new(o, "compare", cmp);

    json_t *arms = json_array();
    for (size_t i = 1; i < s->n_arms; i++)
        if ((int)i != s->secondary) json_array_append_new(arms, describe_arm(s, v, i, noise, &nf));
    json_object_set_new(o, "shadows", arms);
    if (noise) json_object_set_new(o, "noise", describe_arm(s, v, (size_t)s->secondary, 0, NULL));
    return o;
}

/* ---- configuration ---- */

static int add_arm(shadow_t *s, policy_parse_t *pp, const char *name, const char *path)
{
    int idx = policy_add_arm(pp, name, path);
    if (idx < 0) return -1;
    if (idx < MM_MAX_ARMS) snprintf(s->names[idx], sizeof s->names[idx], "%s", name);
    return idx;
}

static int parse_arms(shadow_t *s, const json_t *exp, policy_parse_t *pp)
{
    const char *primary = NULL, *secondary = NULL;
    if (policy_get_string(pp, exp, "", "primary", NULL, &primary) < 0) return -1;
    if (primary == NULL) return policy_error(pp, "", "missing \"primary\" (an upstream name)");
    if (add_arm(s, pp, primary, "/primary") < 0) return -1;

    const json_t *shadows = json_object_get(exp, "shadows");
    if (shadows == NULL)
        return policy_error(pp, "", "missing \"shadows\" (a list of upstream names)");
    if (!json_is_array(shadows) || json_array_size(shadows) == 0)
        return policy_error(pp, "/shadows", "must be a non-empty list of upstream names");
    size_t i;
    const json_t *a;
    json_array_foreach(shadows, i, a)
    {
        char path[32];
        snprintf(path, sizeof path, "/shadows/%zu", i);
        if (!json_is_string(a)) return policy_error(pp, path, "must be an upstream name");
        if (add_arm(s, pp, json_string_value(a), path) < 0) return -1;
    }

    s->secondary = -1;
    if (policy_get_string(pp, exp, "", "secondary", NULL, &secondary) < 0) return -1;
    if (secondary != NULL) {
        s->secondary = add_arm(s, pp, secondary, "/secondary");
        if (s->secondary < 0) return -1;
    }
    s->n_arms = (size_t)policy_arm_count(pp);
    return 0;
}

static int parse_compare(shadow_t *s, const json_t *exp, policy_parse_t *pp)
{
    static const char *const keys[] = {"json_tolerance", "ignore", "headers", NULL};
    const json_t *cmp = json_object_get(exp, "compare");
    s->opts.tolerance = 1e-6;
    s->opts.ignore = s->ignore;
    s->opts.n_ignore = 0;
    if (cmp == NULL) return 0;
    if (!json_is_object(cmp)) return policy_error(pp, "/compare", "must be an object");
    if (policy_check_keys(pp, cmp, "/compare", keys) < 0) return -1;
    if (policy_get_number(pp, cmp, "/compare", "json_tolerance", 1e-6, 0.0, 1e300,
                          &s->opts.tolerance) < 0)
        return -1;

    const json_t *h = json_object_get(cmp, "headers");
    if (h != NULL) {
        if (!json_is_boolean(h))
            return policy_error(pp, "/compare/headers", "must be true or false");
        s->compare_headers = json_is_true(h);
    }

    const json_t *ign = json_object_get(cmp, "ignore");
    if (ign == NULL) return 0;
    if (!json_is_array(ign))
        return policy_error(pp, "/compare/ignore", "must be a list of JSON pointers");
    if (json_array_size(ign) > IGNORE_MAX)
        return policy_error(pp, "/compare/ignore", "at most %d ignore pointers", IGNORE_MAX);
    size_t i;
    const json_t *e;
    json_array_foreach(ign, i, e)
    {
        char path[48];
        snprintf(path, sizeof path, "/compare/ignore/%zu", i);
        if (!json_is_string(e) || !jsondiff_valid_pointer(json_string_value(e)))
            return policy_error(pp, path,
                                "not a JSON pointer (\"\" or \"/a/b\", ~0 and ~1 escapes, < %d "
                                "bytes)",
                                JSONDIFF_PATH_MAX);
        snprintf(s->ignore_buf[i], sizeof s->ignore_buf[i], "%s", json_string_value(e));
        s->ignore[i] = s->ignore_buf[i];
        s->opts.n_ignore = i + 1;
    }
    return 0;
}

static void *shadow_create(const json_t *exp, policy_parse_t *pp)
{
    static const char *const keys[] = {"primary",        "shadows",      "secondary",
                                       "sample",         "max_inflight", "timeout_ms",
                                       "max_body_bytes", "compare",      NULL};
    long long max_inflight, timeout_ms, max_body;
    shadow_t *s = calloc(1, sizeof *s);
    if (s == NULL) {
        policy_error(pp, "", "out of memory");
        return NULL;
    }
    if (policy_check_keys(pp, exp, "", keys) < 0) goto err;
    if (parse_arms(s, exp, pp) < 0) goto err;
    if (policy_get_number(pp, exp, "", "sample", 1.0, 0.0, 1.0, &s->sample) < 0) goto err;
    if (policy_get_int(pp, exp, "", "max_inflight", 100, 1, 1000000, &max_inflight) < 0) goto err;
    if (policy_get_int(pp, exp, "", "timeout_ms", 1000, 1, 3600000, &timeout_ms) < 0) goto err;
    if (policy_get_int(pp, exp, "", "max_body_bytes", 1 << 20, 0, 1LL << 30, &max_body) < 0)
        goto err;
    if (parse_compare(s, exp, pp) < 0) goto err;
    name_counters(s);
    policy_mirror_limits_t lim = {(int)max_inflight, (int)timeout_ms, (uint64_t)max_body,
                                  s->compare_headers};
    policy_set_mirror_limits(pp, &lim);
    return s;
err:
    free(s);
    return NULL;
}

static void shadow_destroy(void *p)
{
    shadow_t *s = p;
    if (s == NULL) return;
    jsondiff_doc_free(&s->primary_doc);
    jsondiff_doc_free(&s->mirror_doc);
    free(s);
}

const policy_ops_t policy_shadow_ops = {
    .name = "shadow",
    .flags = 0,
    .create = shadow_create,
    .destroy = shadow_destroy,
    .choose = shadow_choose,
    .compare = shadow_compare,
    .describe = shadow_describe,
};
