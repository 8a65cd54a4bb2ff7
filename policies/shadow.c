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
 * Statistics per arm: outcome counts, mean latency (from on_response), and
 * per field the share of compared requests that differ there. Fields are
 * keyed by "shape" (array indices as "*"), so "/items/3/score" and
 * "/items/7/score" count together, once per request; at most PATHS_MAX fields
 * per arm are kept, later ones are aggregated under "other". The cost is
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

typedef struct {
    char key[PATH_KEY_MAX];
    uint64_t requests; /* compared requests that differ here */
    uint64_t seq;      /* last request counted: once per request */
} pathstat_t;

typedef struct {
    uint64_t matches, mismatches, errors;
    uint64_t noisy;     /* matches whose differences were all noise */
    uint64_t differing; /* requests with any difference, noise included */
    uint64_t responses, latency_sum_us;
    pathstat_t paths[PATHS_MAX];
    size_t n_paths;
    uint64_t other, other_seq;
} armstat_t;

typedef struct {
    size_t n_arms; /* primary, shadows..., secondary last if any */
    char names[MM_MAX_ARMS][MM_NAME_MAX + 1];
    int secondary; /* arm index, -1: none */
    double sample;
    int compare_headers;
    char ignore_buf[IGNORE_MAX][JSONDIFF_PATH_MAX];
    const char *ignore[IGNORE_MAX];
    jsondiff_opts_t opts;
    uint64_t seq;    /* compared requests, to count a field once per request */
    armstat_t *arms; /* n_arms entries */
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
    armstat_t *a;
    const noise_t *noise_in; /* candidate: noise to discount, or NULL */
    noise_t *noise_out;      /* secondary: where to record noise, or NULL */
    size_t total, real;
} judge_t;

/* ---- per-field statistics ---- */

static void pathstat_count(shadow_t *s, armstat_t *a, const char *key)
{
    for (size_t i = 0; i < a->n_paths; i++) {
        pathstat_t *ps = &a->paths[i];
        if (strncmp(ps->key, key, PATH_KEY_MAX - 1) == 0) {
            if (ps->seq != s->seq) {
                ps->seq = s->seq;
                ps->requests++;
            }
            return;
        }
    }
    if (a->n_paths < PATHS_MAX) {
        pathstat_t *ps = &a->paths[a->n_paths++];
        snprintf(ps->key, sizeof ps->key, "%s", key);
        ps->seq = s->seq;
        ps->requests = 1;
        return;
    }
    if (a->other_seq != s->seq) {
        a->other_seq = s->seq;
        a->other++;
    }
}

static const pathstat_t *pathstat_find(const armstat_t *a, const char *key)
{
    for (size_t i = 0; i < a->n_paths; i++)
        if (strcmp(a->paths[i].key, key) == 0) return &a->paths[i];
    return NULL;
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
    pathstat_count(j->s, j->a, shape);
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

/* Compare one mirror's answer with the primary's; updates the arm's counts. */
static int judge(shadow_t *s, body_t *prim, body_t *m, int arm, const noise_t *noise_in,
                 noise_t *noise_out)
{
    if (arm < 1 || (size_t)arm >= s->n_arms) return POLICY_ERROR;
    armstat_t *a = &s->arms[arm];
    if (prim->r->status == 0 || m->r->status == 0) {
        a->errors++;
        return POLICY_ERROR;
    }
    judge_t j = {s, a, noise_in, noise_out, 0, 0};
    if (prim->r->status != m->r->status) {
        judge_diff(&j, PATH_STATUS, PATH_STATUS);
    } else {
        if (s->compare_headers) judge_headers(&j, prim->r, m->r);
        judge_bodies(&j, prim, m);
    }
    if (j.total > 0) a->differing++;
    if (j.real > 0) {
        a->mismatches++;
        return POLICY_MISMATCH;
    }
    a->matches++;
    if (j.total > 0) a->noisy++;
    return POLICY_MATCH;
}

static void shadow_compare(void *p, const policy_resp_t *primary, const int *mirror_arms,
                           const policy_resp_t *mirrors, size_t n, int *outcomes)
{
    shadow_t *s = p;
    body_t prim = {primary, &s->primary_doc, 0, 0};
    noise_t noise = {NULL, 0, 0, 0, 0};
    int have_noise = 0;
    s->seq++;

    /* The secondary first: its differences are this request's noise. */
    for (size_t i = 0; i < n; i++) {
        if (s->secondary < 0 || mirror_arms[i] != s->secondary) continue;
        body_t m = {&mirrors[i], &s->mirror_doc, 0, 0};
        outcomes[i] = judge(s, &prim, &m, mirror_arms[i], NULL, &noise);
        have_noise = outcomes[i] != POLICY_ERROR;
    }
    for (size_t i = 0; i < n; i++) {
        if (s->secondary >= 0 && mirror_arms[i] == s->secondary) continue;
        body_t m = {&mirrors[i], &s->mirror_doc, 0, 0};
        outcomes[i] = judge(s, &prim, &m, mirror_arms[i], have_noise ? &noise : NULL, NULL);
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

static void shadow_on_response(void *p, int arm, int status, uint64_t latency_us, uint64_t now_ms)
{
    shadow_t *s = p;
    MM_UNUSED(now_ms);
    if (arm < 0 || (size_t)arm >= s->n_arms || status == 0) return;
    s->arms[arm].responses++;
    s->arms[arm].latency_sum_us += latency_us;
}

static void shadow_reset(void *p)
{
    shadow_t *s = p;
    memset(s->arms, 0, s->n_arms * sizeof *s->arms);
    s->seq = 0;
}

/* A reload with the experiment unchanged keeps the agreement counts (the
 * core keeps the `dropped` baseline with them); a changed one (other
 * shadows, tolerance, ignore list) starts counting anew. Mirrors still in
 * flight across the reload are compared by the new instance when the
 * experiment is unchanged (shadow_rt.c), else by the old one, and are then
 * not in these counts (modelmux_shadow_total has them). */
static void shadow_adopt(void *p, const void *old, int same_definition)
{
    shadow_t *s = p;
    const shadow_t *o = old;
    if (o == NULL || !same_definition || o->n_arms != s->n_arms) return;
    memcpy(s->arms, o->arms, s->n_arms * sizeof *s->arms);
    s->seq = o->seq;
}

/* ---- describe ---- */

static json_t *rate_or_null(uint64_t num, uint64_t den)
{
    return den ? json_real((double)num / (double)den) : json_null();
}

static json_t *mean_latency_ms(const armstat_t *a)
{
    return a->responses ? json_real((double)a->latency_sum_us / (double)a->responses / 1000.0)
                        : json_null();
}

static int by_requests_desc(const void *x, const void *y)
{
    const pathstat_t *a = *(const pathstat_t *const *)x, *b = *(const pathstat_t *const *)y;
    if (a->requests != b->requests) return a->requests < b->requests ? 1 : -1;
    return strcmp(a->key, b->key);
}

/* The top fields of arm `a`; with `noise` (the secondary's stats) each field
 * also gets the noise rate at the same field. */
static json_t *describe_paths(const armstat_t *a, const armstat_t *noise)
{
    const pathstat_t *sorted[PATHS_MAX];
    uint64_t compared = a->matches + a->mismatches;
    uint64_t noise_compared = noise ? noise->matches + noise->mismatches : 0;
    for (size_t i = 0; i < a->n_paths; i++) sorted[i] = &a->paths[i];
    qsort(sorted, a->n_paths, sizeof sorted[0], by_requests_desc);
    json_t *arr = json_array();
    for (size_t i = 0; i < a->n_paths && i < TOP_PATHS; i++) {
        const pathstat_t *ps = sorted[i];
        json_t *o = json_object();
        json_object_set_new(o, "path", json_string(ps->key));
        json_object_set_new(o, "requests", json_integer((json_int_t)ps->requests));
        json_object_set_new(o, "diff_rate", rate_or_null(ps->requests, compared));
        if (noise) {
            const pathstat_t *np = pathstat_find(noise, ps->key);
            json_t *nr;
            if (np)
                nr = rate_or_null(np->requests, noise_compared);
            else if (noise->n_paths < PATHS_MAX)
                nr = noise_compared ? json_real(0.0) : json_null();
            else
                nr = json_null(); /* the field fell into the secondary's "other" */
            json_object_set_new(o, "noise_rate", nr);
        }
        json_array_append_new(arr, o);
    }
    if (a->other > 0) {
        json_t *o = json_object();
        json_object_set_new(o, "path", json_string("other"));
        json_object_set_new(o, "requests", json_integer((json_int_t)a->other));
        json_object_set_new(o, "diff_rate", rate_or_null(a->other, compared));
        json_array_append_new(arr, o);
    }
    return arr;
}

static json_t *describe_arm(const shadow_t *s, const policy_view_t *v, size_t i,
                            const armstat_t *noise)
{
    const armstat_t *a = &s->arms[i];
    uint64_t compared = a->matches + a->mismatches;
    json_t *o = json_object();
    json_object_set_new(o, "arm", json_string(s->names[i]));
    json_object_set_new(o, "compared", json_integer((json_int_t)compared));
    json_object_set_new(o, "matches", json_integer((json_int_t)a->matches));
    json_object_set_new(o, "mismatches", json_integer((json_int_t)a->mismatches));
    json_object_set_new(o, "errors", json_integer((json_int_t)a->errors));
    /* Not sent (max_inflight, max_body_bytes): counted by the core. Without
     * it the view would not say why a loaded shadow compares nothing. */
    uint64_t dropped = v && v->mirror_dropped && i < v->n_arms ? v->mirror_dropped[i] : 0;
    json_object_set_new(o, "dropped", json_integer((json_int_t)dropped));
    if (s->secondary >= 0 && (int)i != s->secondary)
        json_object_set_new(o, "noisy", json_integer((json_int_t)a->noisy));
    json_object_set_new(o, "agreement_rate", rate_or_null(a->matches, compared));
    json_object_set_new(o, "mean_latency_ms", mean_latency_ms(a));
    json_object_set_new(o, "paths", describe_paths(a, noise));
    return o;
}

static json_t *shadow_describe(void *p, const policy_view_t *v)
{
    const shadow_t *s = p;
    const armstat_t *noise = s->secondary >= 0 ? &s->arms[s->secondary] : NULL;
    json_t *o = json_object();
    json_object_set_new(o, "primary", json_string(s->names[0]));
    json_object_set_new(o, "secondary",
                        s->secondary >= 0 ? json_string(s->names[s->secondary]) : json_null());
    json_object_set_new(o, "sample", json_real(s->sample));
    json_object_set_new(o, "primary_mean_latency_ms", mean_latency_ms(&s->arms[0]));

    json_t *cmp = json_object(), *ign = json_array();
    for (size_t i = 0; i < s->opts.n_ignore; i++)
        json_array_append_new(ign, json_string(s->ignore[i]));
    json_object_set_new(cmp, "json_tolerance", json_real(s->opts.tolerance));
    json_object_set_new(cmp, "ignore", ign);
    json_object_set_new(cmp, "headers", json_boolean(s->compare_headers));
    json_object_set_new(o, "compare", cmp);

    json_t *arms = json_array();
    for (size_t i = 1; i < s->n_arms; i++)
        if ((int)i != s->secondary) json_array_append_new(arms, describe_arm(s, v, i, noise));
    json_object_set_new(o, "shadows", arms);
    if (noise) {
        /* The secondary's own comparison with the primary is the noise. */
        json_t *nz = describe_arm(s, v, (size_t)s->secondary, NULL);
        json_object_set_new(nz, "noise_rate",
                            rate_or_null(noise->differing, noise->matches + noise->mismatches));
        json_object_set_new(o, "noise", nz);
    }
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
    s->arms = calloc(s->n_arms, sizeof *s->arms);
    if (s->arms == NULL) {
        policy_error(pp, "", "out of memory");
        goto err;
    }
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
    free(s->arms);
    free(s);
}

const policy_ops_t policy_shadow_ops = {
    .name = "shadow",
    .flags = 0,
    .create = shadow_create,
    .destroy = shadow_destroy,
    .choose = shadow_choose,
    .on_response = shadow_on_response,
    .compare = shadow_compare,
    .reset = shadow_reset,
    .adopt = shadow_adopt,
    .describe = shadow_describe,
};
