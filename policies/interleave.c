/* interleave.c — the `interleave` policy: team-draft interleaving of two
 * rankers (DESIGN.md §3 `interleave`, §4 clicks).
 *
 * An A/B test of two rankers needs many users, because the difference
 * between two lists shows up only faintly in per-user metrics. Interleaving
 * shows every user one list made of both and lets each click vote for the
 * ranker that contributed the clicked item: the same comparison needs one to
 * two orders of magnitude less traffic (Chapelle, Joachims, Radlinski and Yue
 * 2012). Team draft (Radlinski, Kurup and Joachims 2008) is the method here:
 *
 *   in each round a fair coin (view->rng) decides which team picks first;
 *   each team in turn adds its highest-ranked item not yet shown, and is
 *   credited with it. Stop at k items or when both lists are exhausted; when
 *   one is exhausted the other goes on alone. One coin per round, drawn only
 *   while both lists still have an item not yet shown.
 *
 * An item both rankers returned belongs to the team that placed it. Clicks
 * are per item and counted once (a second click on the same item changes
 * nothing), the usual click vector of the interleaving literature; this also
 * makes a retried feedback event harmless. An impression is won by the team
 * with more credited clicks, a tie when both have the same number (> 0).
 *
 * The merged answer is the first arm's (the champion's) JSON with the list at
 * list_pointer replaced: it is spliced from the original bytes, not
 * re-serialised, so every number, key order and the items themselves reach
 * the client exactly as the rankers wrote them. jansson parses both answers
 * to validate them and read the ids; a small scanner over the (then known
 * valid) text finds the byte span of the list and of each item.
 *
 * Shared state (what the store sums over every impression and every
 * instance; on_click expresses each click as deltas to it):
 *   arm a (champion): successes = impressions won by A,
 *                     failures  = ties,
 *                     feedback  = impressions with at least one click,
 *                     reward_sum = clicks credited to A,
 *                     reward_sq_sum = sum over impressions of (A's clicks)^2;
 *   arm b:            successes = impressions won by B,
 *                     failures  = 0,
 *                     feedback  = impressions with at least one click (as a),
 *                     reward_sum, reward_sq_sum = the same for B's clicks.
 * So wins_a + wins_b + ties = feedback, and reward_sum / feedback is a team's
 * clicks per clicked impression. pulls (counted by the core) are the
 * impressions each arm's list was shown in, merged or alone.
 *
 * The attribution of one impression (`aux`, kept by the store with the
 * request id) is compact JSON: {"v":1,"t":"abba…","c":"0010…","i":[ids…]}:
 * team and click flag per shown position, then the ids. An integer id is
 * kept as its decimal text, so the click {"item": 42} and {"item": "42"}
 * name the same item.
 *
 * Unusable answers fall back to the other ranker's answer unchanged and are
 * counted per arm and reason in this instance (describe shows them). The
 * trade-off: combine allocates (two jansson parses) — interleaving needs the
 * whole bodies anyway, and it is far off the streaming hot path. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"

#define IL_K_DEFAULT 10
#define IL_K_MAX     1000
/* Longest item id kept, in bytes: ids live in the attribution of every
 * impression, so a ranker answering with huge ids is refused (no_id). */
#define IL_ID_MAX 512
/* Below this many decided impressions the sign test is exact. */
#define IL_EXACT_MAX 10000
#define IL_Z95       1.959963984540054

enum {
    IL_R_FAILED = 0, /* no answer: transport failure or timeout */
    IL_R_STATUS,     /* an answer, but not 2xx */
    IL_R_TRUNCATED,  /* larger than max_body_bytes */
    IL_R_NOT_JSON,
    IL_R_NO_LIST, /* nothing, or no array, at list_pointer */
    IL_R_NO_ID,   /* an item that is not an object with a usable id_field */
    IL_R__COUNT
};

static const char *const reason_names[IL_R__COUNT] = {"failed",   "status",  "truncated",
                                                      "not_json", "no_list", "no_id"};

typedef struct {
    char names[2][MM_NAME_MAX + 1];
    const char *list_pointer; /* as configured (lives with the config) */
    char **tokens;            /* list_pointer split and unescaped (RFC 6901) */
    size_t n_tokens;
    const char *id_field;
    size_t id_field_len;
    int k;
    /* this instance's counters (describe) */
    uint64_t merged;
    uint64_t unusable[2][IL_R__COUNT]; /* arm's answer could not be used, by reason */
    uint64_t fallbacks[2];             /* the other arm's answer went out alone */
    uint64_t no_answer;                /* neither was usable */
} il_t;

/* ---- configuration ---- */

static void il_destroy(void *p)
{
    il_t *il = p;
    if (il == NULL) return;
    for (size_t i = 0; i < il->n_tokens; i++) free(il->tokens[i]);
    free(il->tokens);
    free(il);
}

/* Split a JSON pointer into unescaped tokens; -1 if it is not one. */
static int split_pointer(il_t *il, const char *ptr)
{
    if (ptr[0] == '\0') return 0; /* the whole document */
    if (ptr[0] != '/') return -1;
    size_t n = 0;
    for (const char *c = ptr; *c; c++) n += *c == '/';
    il->tokens = calloc(n, sizeof(*il->tokens));
    if (il->tokens == NULL) return -1;
    const char *seg = ptr + 1;
    for (;;) {
        const char *end = strchr(seg, '/');
        size_t len = end ? (size_t)(end - seg) : strlen(seg);
        char *t = malloc(len + 1);
        if (t == NULL) return -1;
        il->tokens[il->n_tokens++] = t;
        size_t j = 0;
        for (size_t i = 0; i < len; i++) {
            if (seg[i] != '~') {
                t[j++] = seg[i];
                continue;
            }
            if (i + 1 >= len || (seg[i + 1] != '0' && seg[i + 1] != '1')) return -1;
            t[j++] = seg[++i] == '0' ? '~' : '/';
        }
        t[j] = '\0';
        if (end == NULL) break;
        seg = end + 1;
    }
    return 0;
}

static int parse_arms(il_t *il, const json_t *exp, policy_parse_t *pp)
{
    const json_t *arms = json_object_get(exp, "arms");
    if (arms == NULL) return policy_error(pp, "", "missing \"arms\": [champion, challenger]");
    if (!json_is_array(arms) || json_array_size(arms) != 2)
        return json_is_array(arms)
                   ? policy_error(pp, "/arms",
                                  "interleave compares exactly 2 arms: [champion, challenger], "
                                  "got %zu",
                                  json_array_size(arms))
                   : policy_error(pp, "/arms",
                                  "interleave compares exactly 2 arms: [champion, challenger], "
                                  "got no list");
    for (size_t i = 0; i < 2; i++) {
        char path[16];
        snprintf(path, sizeof path, "/arms/%zu", i);
        const json_t *a = json_array_get(arms, i);
        if (!json_is_string(a))
            return policy_error(pp, path, "must be an upstream name (a string)");
        if (policy_add_arm(pp, json_string_value(a), path) != (int)i) return -1;
        snprintf(il->names[i], sizeof il->names[i], "%s", json_string_value(a));
    }
    return 0;
}

static void *il_create(const json_t *exp, policy_parse_t *pp)
{
    static const char *const keys[] = {"arms", "list_pointer", "id_field", "k", NULL};
    long long k;
    il_t *il = calloc(1, sizeof(*il));
    if (il == NULL) {
        policy_error(pp, "", "out of memory");
        return NULL;
    }
    if (policy_check_keys(pp, exp, "", keys) < 0) goto err;
    if (parse_arms(il, exp, pp) < 0) goto err;
    if (policy_get_string(pp, exp, "", "list_pointer", NULL, &il->list_pointer) < 0) goto err;
    if (il->list_pointer == NULL) {
        policy_error(pp, "",
                     "missing \"list_pointer\": the JSON pointer of the ranked list in each "
                     "answer, e.g. \"/items\"");
        goto err;
    }
    if (split_pointer(il, il->list_pointer) < 0) {
        policy_error(pp, "/list_pointer",
                     "must be a JSON pointer (RFC 6901): \"\" or \"/items\", \"~0\" for '~' and "
                     "\"~1\" for '/', got \"%s\"",
                     il->list_pointer);
        goto err;
    }
    if (policy_get_string(pp, exp, "", "id_field", "id", &il->id_field) < 0) goto err;
    il->id_field_len = strlen(il->id_field);
    if (il->id_field_len == 0) {
        policy_error(pp, "/id_field", "must name the key holding each item's id, e.g. \"id\"");
        goto err;
    }
    if (policy_get_int(pp, exp, "", "k", IL_K_DEFAULT, 1, IL_K_MAX, &k) < 0) goto err;
    il->k = (int)k;
    return il;
err:
    il_destroy(il);
    return NULL;
}

/* ---- deciding ---- */

static void il_choose(void *p, const policy_view_t *v, const policy_req_t *req,
                      policy_choice_t *out)
{
    MM_UNUSED(p);
    MM_UNUSED(v);
    MM_UNUSED(req);
    out->primary = 0;
    out->n_mirrors = 0;
    out->fanout = 1;
}

/* Rewards have no meaning here: feedback is clicks ({"item": …}). */
static int il_check_reward(void *p, double reward)
{
    MM_UNUSED(p);
    MM_UNUSED(reward);
    return -1;
}

/* ---- a byte scanner over JSON that jansson has accepted ---- */

static size_t skip_ws(const char *s, size_t n, size_t i)
{
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
    return i;
}

/* s[i] is '"': the index after the closing quote. */
static size_t skip_string(const char *s, size_t n, size_t i)
{
    for (i++; i < n; i++) {
        if (s[i] == '\\')
            i++;
        else if (s[i] == '"')
            return i + 1;
    }
    return n;
}

/* The index just after the value starting at s[i]. */
static size_t skip_value(const char *s, size_t n, size_t i)
{
    if (i >= n) return n;
    if (s[i] == '"') return skip_string(s, n, i);
    if (s[i] != '{' && s[i] != '[') {
        while (i < n && s[i] != ',' && s[i] != ']' && s[i] != '}' && s[i] != ' ' && s[i] != '\t' &&
               s[i] != '\n' && s[i] != '\r')
            i++;
        return i;
    }
    int depth = 0;
    while (i < n) {
        char c = s[i];
        if (c == '"') {
            i = skip_string(s, n, i);
            continue;
        }
        if (c == '{' || c == '[') depth++;
        if (c == '}' || c == ']') {
            if (--depth == 0) return i + 1;
        }
        i++;
    }
    return n;
}

/* Does the key s[b..e) (quotes included) spell tok? */
static int key_is(const char *s, size_t b, size_t e, const char *tok)
{
    size_t tl = strlen(tok);
    if (memchr(s + b, '\\', e - b) == NULL)
        return e - b - 2 == tl && memcmp(s + b + 1, tok, tl) == 0;
    json_t *k = json_loadb(s + b, e - b, JSON_DECODE_ANY, NULL); /* escapes: rare */
    int eq = json_is_string(k) && json_string_length(k) == tl &&
             memcmp(json_string_value(k), tok, tl) == 0;
    json_decref(k);
    return eq;
}

/* Index token of an array, as jansson's pointer semantics: digits, no
 * leading zero. -1 if it is not one. */
static long long array_index(const char *tok)
{
    if (tok[0] == '\0' || (tok[0] == '0' && tok[1] != '\0') || strlen(tok) > 9) return -1;
    long long v = 0;
    for (const char *c = tok; *c; c++) {
        if (*c < '0' || *c > '9') return -1;
        v = v * 10 + (*c - '0');
    }
    return v;
}

/* Start of the value at the pointer's tokens, or (size_t)-1. Objects take
 * the last member of a name, as jansson does. */
static size_t scan_pointer(const il_t *il, const char *s, size_t n)
{
    size_t i = skip_ws(s, n, 0);
    for (size_t t = 0; t < il->n_tokens; t++) {
        const char *tok = il->tokens[t];
        if (i >= n) return (size_t)-1;
        if (s[i] == '{') {
            size_t found = (size_t)-1;
            i = skip_ws(s, n, i + 1);
            while (i < n && s[i] == '"') {
                size_t kb = i, ke = skip_string(s, n, i);
                i = skip_ws(s, n, ke);
                i = skip_ws(s, n, i + 1); /* ':' */
                if (key_is(s, kb, ke, tok)) found = i;
                i = skip_ws(s, n, skip_value(s, n, i));
                if (i < n && s[i] == ',') i = skip_ws(s, n, i + 1);
            }
            if (found == (size_t)-1) return found;
            i = found;
        } else if (s[i] == '[') {
            long long want = array_index(tok), at = 0;
            if (want < 0) return (size_t)-1;
            i = skip_ws(s, n, i + 1);
            while (i < n && s[i] != ']' && at < want) {
                i = skip_ws(s, n, skip_value(s, n, i));
                if (i < n && s[i] == ',') i = skip_ws(s, n, i + 1);
                at++;
            }
            if (i >= n || s[i] == ']') return (size_t)-1;
        } else {
            return (size_t)-1;
        }
    }
    return i;
}

/* ---- one ranker's answer ---- */

typedef struct {
    json_t *doc;
    const char *body;
    size_t body_len;
    size_t list_b, list_e; /* the list's bytes, brackets included */
    size_t n;              /* items */
    const char **ids;
    size_t *id_len;
    size_t *item_b, *item_e; /* each item's bytes */
    char *num_ids;           /* integer ids as text */
} ranked_t;

static void ranked_free(ranked_t *r)
{
    json_decref(r->doc);
    free(r->ids);
    free(r->id_len);
    free(r->item_b);
    free(r->item_e);
    free(r->num_ids);
    memset(r, 0, sizeof(*r));
}

static json_t *json_at(const il_t *il, json_t *doc)
{
    json_t *cur = doc;
    for (size_t t = 0; t < il->n_tokens && cur != NULL; t++) {
        if (json_is_object(cur)) {
            cur = json_object_get(cur, il->tokens[t]);
        } else if (json_is_array(cur)) {
            long long i = array_index(il->tokens[t]);
            cur = i < 0 ? NULL : json_array_get(cur, (size_t)i);
        } else {
            cur = NULL;
        }
    }
    return cur;
}

/* Returns -1 (usable) or the reason it is not. */
static int ranked_read(const il_t *il, const policy_resp_t *a, ranked_t *r)
{
    memset(r, 0, sizeof(*r));
    if (a->status == 0) return IL_R_FAILED;
    if (a->status < 200 || a->status > 299) return IL_R_STATUS;
    if (a->truncated) return IL_R_TRUNCATED;
    r->body = a->body.p;
    r->body_len = a->body.n;
    r->doc = r->body ? json_loadb(r->body, r->body_len, JSON_DECODE_ANY, NULL) : NULL;
    if (r->doc == NULL) return IL_R_NOT_JSON;
    json_t *list = json_at(il, r->doc);
    if (!json_is_array(list)) return IL_R_NO_LIST;
    size_t n = json_array_size(list);
    r->list_b = scan_pointer(il, r->body, r->body_len);
    if (r->list_b >= r->body_len || r->body[r->list_b] != '[') return IL_R_NO_LIST;
    r->list_e = skip_value(r->body, r->body_len, r->list_b);
    r->n = n;
    size_t m = n ? n : 1;
    r->ids = malloc(m * sizeof(*r->ids));
    r->id_len = malloc(m * sizeof(*r->id_len));
    r->item_b = malloc(m * sizeof(*r->item_b));
    r->item_e = malloc(m * sizeof(*r->item_e));
    r->num_ids = malloc(m * 24);
    if (!r->ids || !r->id_len || !r->item_b || !r->item_e || !r->num_ids) return IL_R_NOT_JSON;
    for (size_t i = 0; i < n; i++) {
        const json_t *it = json_array_get(list, i);
        const json_t *id = json_is_object(it) ? json_object_get(it, il->id_field) : NULL;
        if (json_is_string(id)) {
            r->ids[i] = json_string_value(id);
            r->id_len[i] = json_string_length(id);
            if (r->id_len[i] == 0 || r->id_len[i] > IL_ID_MAX ||
                memchr(r->ids[i], '\0', r->id_len[i]) != NULL)
                return IL_R_NO_ID;
        } else if (json_is_integer(id)) {
            char *t = r->num_ids + 24 * i;
            r->id_len[i] = (size_t)snprintf(t, 24, "%" JSON_INTEGER_FORMAT, json_integer_value(id));
            r->ids[i] = t;
        } else {
            return IL_R_NO_ID;
        }
    }
    /* The items' byte spans, in order. */
    const char *s = r->body;
    size_t len = r->body_len, i = skip_ws(s, len, r->list_b + 1), got = 0;
    while (i < len && s[i] != ']' && got < n) {
        r->item_b[got] = i;
        r->item_e[got] = skip_value(s, len, i);
        i = skip_ws(s, len, r->item_e[got]);
        if (i < len && s[i] == ',') i = skip_ws(s, len, i + 1);
        got++;
    }
    return got == n ? -1 : IL_R_NOT_JSON;
}

/* ---- the set of shown ids: open addressing, sized for k ---- */

typedef struct {
    const char *id;
    size_t len;
} slot_t;

typedef struct {
    slot_t *slots;
    size_t mask;
} idset_t;

static uint64_t id_hash(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a: ids come from our own rankers */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 1099511628211ULL;
    return h;
}

static int idset_init(idset_t *s, size_t k)
{
    size_t cap = 16;
    while (cap < 2 * k) cap *= 2;
    s->slots = calloc(cap, sizeof(*s->slots));
    s->mask = cap - 1;
    return s->slots ? 0 : -1;
}

/* 1 if the id was already there; else adds it and returns 0. */
static int idset_add(idset_t *s, const char *id, size_t len)
{
    for (size_t i = id_hash(id, len) & s->mask;; i = (i + 1) & s->mask) {
        slot_t *sl = &s->slots[i];
        if (sl->id == NULL) {
            sl->id = id;
            sl->len = len;
            return 0;
        }
        if (sl->len == len && memcmp(sl->id, id, len) == 0) return 1;
    }
}

static int idset_has(const idset_t *s, const char *id, size_t len)
{
    for (size_t i = id_hash(id, len) & s->mask;; i = (i + 1) & s->mask) {
        const slot_t *sl = &s->slots[i];
        if (sl->id == NULL) return 0;
        if (sl->len == len && memcmp(sl->id, id, len) == 0) return 1;
    }
}

/* ---- the attribution (aux) ---- */

static void aux_write(mm_buf_t *aux, const char *teams, const char *clicks, size_t n,
                      const char *const *ids, const size_t *id_len)
{
    mm_buf_reset(aux);
    mm_buf_lit(aux, "{\"v\":1,\"t\":\"");
    mm_buf_append(aux, teams, n);
    mm_buf_lit(aux, "\",\"c\":\"");
    mm_buf_append(aux, clicks, n);
    mm_buf_lit(aux, "\",\"i\":[");
    for (size_t i = 0; i < n; i++) {
        if (i) mm_buf_lit(aux, ",");
        mm_buf_lit(aux, "\"");
        mm_buf_json_str(aux, ids[i], id_len[i]);
        mm_buf_lit(aux, "\"");
    }
    mm_buf_lit(aux, "]}");
}

/* ---- combine ---- */

/* Team-draft merge of a and b into at most k positions: team[j] is 0 or 1,
 * idx[j] the item's index in that team's list. Returns the count, or -1
 * without memory. */
static int team_draft(const il_t *il, mm_rng_t *rng, const ranked_t *r, int *team, size_t *idx)
{
    idset_t shown;
    size_t next[2] = {0, 0};
    int n = 0;
    if (idset_init(&shown, (size_t)il->k) < 0) return -1;
    for (;;) {
        int has[2];
        for (int t = 0; t < 2; t++) {
            while (next[t] < r[t].n && idset_has(&shown, r[t].ids[next[t]], r[t].id_len[next[t]]))
                next[t]++;
            has[t] = next[t] < r[t].n;
        }
        if (n >= il->k || (!has[0] && !has[1])) break;
        int first = (has[0] && has[1]) ? (mm_rng_uniform(rng) < 0.5 ? 0 : 1) : (has[0] ? 0 : 1);
        for (int j = 0; j < 2 && n < il->k; j++) {
            int t = j == 0 ? first : 1 - first;
            while (next[t] < r[t].n && idset_has(&shown, r[t].ids[next[t]], r[t].id_len[next[t]]))
                next[t]++;
            if (next[t] >= r[t].n) continue;
            idset_add(&shown, r[t].ids[next[t]], r[t].id_len[next[t]]);
            team[n] = t;
            idx[n] = next[t]++;
            n++;
        }
    }
    free(shown.slots);
    return n;
}

static int il_combine(void *p, const policy_view_t *v, const policy_resp_t *answers, size_t n,
                      mm_buf_t *out, mm_buf_t *aux, int *merged)
{
    il_t *il = p;
    ranked_t r[2];
    int why[2] = {IL_R_FAILED, IL_R_FAILED};
    int ret = -1;
    int *team = NULL;
    size_t *idx = NULL;
    const char **ids = NULL;
    size_t *id_len = NULL;
    char *teams = NULL;

    *merged = 0;
    memset(r, 0, sizeof(r));
    for (size_t i = 0; i < 2; i++)
        if (i < n) why[i] = ranked_read(il, &answers[i], &r[i]);

    if (why[0] >= 0 || why[1] >= 0) {
        for (int i = 0; i < 2; i++)
            if (why[i] >= 0 && !answers[i].skipped) il->unusable[i][why[i]]++;
        if (why[0] >= 0 && why[1] >= 0) {
            il->no_answer++;
            /* Nothing to merge, but a's answer, when whole, goes out as
             * the champion's would without interleaving (a 400 for a bad
             * query is the client's to see, not a 502). */
            if (n > 0 && answers[0].status != 0 && !answers[0].truncated) ret = 0;
            goto done;
        }
        ret = why[0] < 0 ? 0 : 1; /* the usable one, unchanged */
        il->fallbacks[ret]++;
        goto done;
    }

    size_t k = (size_t)il->k;
    team = malloc(k * sizeof(*team));
    idx = malloc(k * sizeof(*idx));
    ids = malloc(k * sizeof(*ids));
    id_len = malloc(k * sizeof(*id_len));
    teams = malloc(2 * k + 1);
    int m = (team && idx && ids && id_len && teams) ? team_draft(il, v->rng, r, team, idx) : -1;
    if (m < 0) {
        ret = 0; /* no memory: the champion's answer as is */
        goto done;
    }

    /* The champion's body with its list replaced by the merged items. */
    const ranked_t *a = &r[0];
    mm_buf_reset(out);
    if (a->list_b > 0) mm_buf_append(out, a->body, a->list_b);
    mm_buf_lit(out, "[");
    for (int j = 0; j < m; j++) {
        const ranked_t *src = &r[team[j]];
        if (j) mm_buf_lit(out, ",");
        mm_buf_append(out, src->body + src->item_b[idx[j]],
                      src->item_e[idx[j]] - src->item_b[idx[j]]);
        ids[j] = src->ids[idx[j]];
        id_len[j] = src->id_len[idx[j]];
        teams[j] = team[j] ? 'b' : 'a';
        teams[k + (size_t)j] = '0';
    }
    mm_buf_lit(out, "]");
    mm_buf_append(out, a->body + a->list_e, a->body_len - a->list_e);
    aux_write(aux, teams, teams + k, (size_t)m, ids, id_len);
    if (out->oom || aux->oom) {
        mm_buf_reset(aux);
        ret = 0;
        goto done;
    }
    il->merged++;
    *merged = 1;
    ret = 0;
done:
    free(team);
    free(idx);
    free(ids);
    free(id_len);
    free(teams);
    ranked_free(&r[0]);
    ranked_free(&r[1]);
    return ret;
}

/* ---- clicks ---- */

/* +1: A won, -1: B won, 0: tie, 2: no click yet. */
static int outcome(int ca, int cb)
{
    if (ca == 0 && cb == 0) return 2;
    return ca > cb ? 1 : ca < cb ? -1 : 0;
}

static void count_outcome(arm_stats_t *d, int o, double sign)
{
    if (o == 1) d[0].successes += sign;
    if (o == -1) d[1].successes += sign;
    if (o == 0) d[0].failures += sign;
}

static int il_on_click(void *p, mm_buf_t *aux, const char *item, arm_stats_t *deltas)
{
    MM_UNUSED(p);
    int rc = -1;
    const char **ids = NULL;
    size_t *id_len = NULL;
    char *clicks = NULL;
    memset(deltas, 0, 2 * sizeof(*deltas));
    json_t *o = json_loadb(aux->p, aux->len, 0, NULL);
    const json_t *t = json_object_get(o, "t"), *c = json_object_get(o, "c"),
                 *list = json_object_get(o, "i");
    if (!json_is_string(t) || !json_is_string(c) || !json_is_array(list) ||
        json_integer_value(json_object_get(o, "v")) != 1)
        goto done;
    size_t n = json_array_size(list);
    const char *teams = json_string_value(t);
    if (json_string_length(t) != n || json_string_length(c) != n) goto done;

    size_t item_len = strlen(item), hit = n;
    int ca = 0, cb = 0;
    clicks = malloc(n + 1);
    ids = malloc((n ? n : 1) * sizeof(*ids));
    id_len = malloc((n ? n : 1) * sizeof(*id_len));
    if (clicks == NULL || ids == NULL || id_len == NULL) goto done;
    memcpy(clicks, json_string_value(c), n + 1);
    for (size_t i = 0; i < n; i++) {
        const json_t *id = json_array_get(list, i);
        if (!json_is_string(id) || (teams[i] != 'a' && teams[i] != 'b') ||
            (clicks[i] != '0' && clicks[i] != '1'))
            goto done;
        ids[i] = json_string_value(id);
        id_len[i] = json_string_length(id);
        if (hit == n && id_len[i] == item_len && memcmp(ids[i], item, item_len) == 0) hit = i;
        if (clicks[i] == '1') *(teams[i] == 'a' ? &ca : &cb) += 1;
    }
    if (hit == n) goto done; /* not shown in this impression */
    rc = 0;
    if (clicks[hit] == '1') goto done; /* counted once */

    int ta = teams[hit] == 'a' ? 0 : 1;
    int before = outcome(ca, cb);
    int own = ta == 0 ? ca : cb;
    if (ta == 0)
        ca++;
    else
        cb++;
    int after = outcome(ca, cb);
    clicks[hit] = '1';
    deltas[ta].reward_sum = 1;
    deltas[ta].reward_sq_sum = 2.0 * own + 1.0; /* (own+1)^2 - own^2 */
    if (before == 2) deltas[0].feedback = deltas[1].feedback = 1;
    if (before != after) {
        if (before != 2) count_outcome(deltas, before, -1);
        count_outcome(deltas, after, +1);
    }
    aux_write(aux, teams, clicks, n, ids, id_len);
done:
    free(clicks);
    free(ids);
    free(id_len);
    json_decref(o);
    return rc;
}

static void il_reset(void *p)
{
    il_t *il = p;
    il->merged = il->no_answer = 0;
    memset(il->unusable, 0, sizeof(il->unusable));
    memset(il->fallbacks, 0, sizeof(il->fallbacks));
}

/* A reload with the experiment unchanged keeps this instance's counters. */
static void il_adopt(void *p, const void *old, int same_definition)
{
    il_t *il = p;
    const il_t *o = old;
    if (o == NULL || !same_definition) return;
    il->merged = o->merged;
    il->no_answer = o->no_answer;
    memcpy(il->unusable, o->unusable, sizeof(il->unusable));
    memcpy(il->fallbacks, o->fallbacks, sizeof(il->fallbacks));
}

/* ---- describe ---- */

/* Two-sided sign test of a against b (ties dropped): exact binomial up to
 * IL_EXACT_MAX decided impressions, else the normal approximation with a
 * continuity correction. */
static double sign_test(double wa, double wb, int *exact)
{
    double nn = wa + wb;
    *exact = nn <= IL_EXACT_MAX;
    if (!(nn > 0.0)) return 1.0;
    double lo = wa < wb ? wa : wb;
    if (*exact) {
        double sum = 0.0, lgn = lgamma(nn + 1.0), ln2 = nn * log(2.0);
        for (double i = 0; i <= lo; i += 1.0)
            sum += exp(lgn - lgamma(i + 1.0) - lgamma(nn - i + 1.0) - ln2);
        double p = 2.0 * sum;
        return p > 1.0 ? 1.0 : p;
    }
    double z = (fabs(wa - wb) - 1.0) / sqrt(nn);
    if (z < 0.0) z = 0.0;
    return erfc(z / sqrt(2.0));
}

static json_t *jcount(double x)
{
    return json_integer((json_int_t)llround(x > 0.0 ? x : 0.0));
}

static json_t *il_describe(void *p, const policy_view_t *v)
{
    il_t *il = p;
    arm_stats_t zero[2];
    memset(zero, 0, sizeof(zero));
    const arm_stats_t *s = v->n_arms >= 2 ? v->stats : zero;
    double wa = s[0].successes, wb = s[1].successes, ties = s[0].failures;
    double clicked = (double)s[0].feedback;

    json_t *o = json_object();
    json_object_set_new(o, "method", json_string("team_draft"));
    json_object_set_new(o, "list_pointer", json_string(il->list_pointer));
    json_object_set_new(o, "id_field", json_string(il->id_field));
    json_object_set_new(o, "k", json_integer(il->k));

    json_t *arms = json_array();
    for (int i = 0; i < 2; i++) {
        json_t *a = json_object();
        json_object_set_new(a, "arm", json_string(il->names[i]));
        json_object_set_new(a, "team", json_string(i == 0 ? "a" : "b"));
        json_object_set_new(a, "served", json_integer((json_int_t)s[i].pulls));
        json_object_set_new(a, "errors", json_integer((json_int_t)s[i].errors));
        json_object_set_new(a, "wins", jcount(s[i].successes));
        json_object_set_new(a, "clicks", jcount(s[i].reward_sum));
        json_object_set_new(a, "clicks_per_clicked_impression",
                            clicked > 0 ? policy_json_real(s[i].reward_sum / clicked)
                                        : json_null());
        json_t *fb = json_object();
        for (int r = 0; r < IL_R__COUNT; r++)
            json_object_set_new(fb, reason_names[r], json_integer((json_int_t)il->unusable[i][r]));
        json_object_set_new(a, "unusable", fb);
        json_array_append_new(arms, a);
    }
    json_object_set_new(o, "arms", arms);

    json_object_set_new(o, "wins_a", jcount(wa));
    json_object_set_new(o, "wins_b", jcount(wb));
    json_object_set_new(o, "ties", jcount(ties));
    json_object_set_new(o, "clicked_impressions", jcount(clicked));

    /* Preference for A: the mean of the per-impression score (+1 A won,
     * -1 B won, 0 tie) over clicked impressions; the interval is the normal
     * approximation with the sample variance of that score. */
    double pref = clicked > 0 ? (wa - wb) / clicked : NAN;
    json_object_set_new(o, "preference", policy_json_real(pref));
    json_t *ci = json_null();
    if (clicked >= 2) {
        double m2 = (wa + wb) / clicked;
        double var = (m2 - pref * pref) * clicked / (clicked - 1.0);
        double se = sqrt(var > 0.0 ? var / clicked : 0.0);
        double lo = pref - IL_Z95 * se, hi = pref + IL_Z95 * se;
        ci = json_array();
        json_array_append_new(ci, json_real(lo < -1.0 ? -1.0 : lo));
        json_array_append_new(ci, json_real(hi > 1.0 ? 1.0 : hi));
    }
    json_object_set_new(o, "preference_ci95", ci);
    json_object_set_new(o, "ci_method", json_string("normal approximation, per-impression score"));

    int exact;
    double pv = sign_test(wa, wb, &exact);
    json_t *st = json_object();
    json_object_set_new(st, "n", jcount(wa + wb));
    json_object_set_new(st, "p_value", policy_json_real(pv));
    json_object_set_new(st, "method",
                        json_string(exact ? "exact binomial" : "normal approximation"));
    json_object_set_new(o, "sign_test", st);
    const char *leader = wa > wb ? il->names[0] : wb > wa ? il->names[1] : NULL;
    json_object_set_new(o, "leader", leader ? json_string(leader) : json_null());
    json_object_set_new(o, "significant", json_boolean(pv < 0.05));

    json_t *inst = json_object();
    json_object_set_new(inst, "merged", json_integer((json_int_t)il->merged));
    json_t *fb = json_object();
    for (int i = 0; i < 2; i++)
        json_object_set_new(fb, il->names[i], json_integer((json_int_t)il->fallbacks[i]));
    json_object_set_new(inst, "fallbacks_to", fb);
    json_object_set_new(inst, "no_usable_answer", json_integer((json_int_t)il->no_answer));
    json_object_set_new(o, "this_instance", inst);
    return o;
}

const policy_ops_t policy_interleave_ops = {
    .name = "interleave",
    .flags = POLICY_LIVE_WHILE_PAUSED,
    .create = il_create,
    .destroy = il_destroy,
    .choose = il_choose,
    .check_reward = il_check_reward,
    .combine = il_combine,
    .on_click = il_on_click,
    .reset = il_reset,
    .adopt = il_adopt,
    .describe = il_describe,
};
