/* jsondiff.c — structural JSON comparison with numeric tolerance (see jsondiff.h).
 *
 * A recursive walk over both documents that keeps the current JSON pointer
 * (and its "shape", array indices as "*") in fixed buffers, so reporting a
 * difference costs no allocation. Recursion depth is bounded by jansson's
 * parser depth limit (2048), which is fine for the stack. Paths longer than
 * the buffer are not truncated silently: the walk goes on, but a subtree
 * whose path does not fit reports at most one difference, at the deepest
 * path that fits — counts per field stay meaningful, precision is lost only
 * for absurdly deep documents.
 *
 * Ignore pointers are checked at every node by string comparison: O(nodes x
 * ignores), fine for the handful of pointers a config lists. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "jsondiff.h"

typedef struct {
    const jsondiff_opts_t *o;
    jsondiff_cb cb;
    void *arg;
    char path[JSONDIFF_PATH_MAX];
    size_t plen;
    char shape[JSONDIFF_PATH_MAX];
    size_t slen;
    int overflow;          /* > 0 while inside a subtree whose path did not fit */
    int overflow_reported; /* that subtree already reported its one difference */
    size_t count;
    int stop;
} walker_t;

typedef struct {
    size_t plen, slen;
    int overflowed;
} mark_t;

int jsondiff_number_eq(double a, double b, double tol)
{
    double m = 1.0;
    if (fabs(a) > m) m = fabs(a);
    if (fabs(b) > m) m = fabs(b);
    return fabs(a - b) <= tol * m;
}

const char *jsondiff_kind_name(jsondiff_kind_t k)
{
    switch (k) {
    case JSONDIFF_TYPE:
        return "type";
    case JSONDIFF_VALUE:
        return "value";
    case JSONDIFF_MISSING:
        return "missing";
    case JSONDIFF_EXTRA:
        return "extra";
    case JSONDIFF_LENGTH:
        return "length";
    }
    return "value";
}

int jsondiff_valid_pointer(const char *s)
{
    size_t n = strlen(s);
    if (n >= JSONDIFF_PATH_MAX) return 0;
    if (n == 0) return 1;
    if (s[0] != '/') return 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] == '~' && (i + 1 >= n || (s[i + 1] != '0' && s[i + 1] != '1'))) return 0;
    return 1;
}

int jsondiff_path_covers(const char *outer, const char *inner)
{
    size_t n = strlen(outer);
    if (strncmp(outer, inner, n) != 0) return 0;
    return inner[n] == '\0' || inner[n] == '/';
}

/* Append "/" + escaped key to both buffers (the shape gets "*" for indices). */
static mark_t push(walker_t *w, const char *key, size_t keylen, int is_index)
{
    mark_t m = {w->plen, w->slen, 0};
    size_t need = 1;
    for (size_t i = 0; i < keylen; i++) need += (key[i] == '~' || key[i] == '/') ? 2 : 1;
    /* The shape is never longer than the path (an index has >= 1 digit). */
    if (w->overflow > 0 || w->plen + need >= sizeof(w->path)) {
        w->overflow++;
        m.overflowed = 1;
        return m;
    }
    char *p = w->path + w->plen;
    *p++ = '/';
    for (size_t i = 0; i < keylen; i++) {
        if (key[i] == '~') {
            *p++ = '~';
            *p++ = '0';
        } else if (key[i] == '/') {
            *p++ = '~';
            *p++ = '1';
        } else {
            *p++ = key[i];
        }
    }
    *p = '\0';
    w->plen += need;
    if (is_index) {
        memcpy(w->shape + w->slen, "/*", 3);
        w->slen += 2;
    } else {
        memcpy(w->shape + w->slen, w->path + m.plen, need + 1);
        w->slen += need;
    }
    return m;
}

static void pop(walker_t *w, mark_t m)
{
    if (m.overflowed) {
        if (--w->overflow == 0) w->overflow_reported = 0;
        return;
    }
    w->plen = m.plen;
    w->slen = m.slen;
    w->path[w->plen] = '\0';
    w->shape[w->slen] = '\0';
}

static int ignored(const walker_t *w)
{
    if (w->overflow > 0) return 0;
    for (size_t i = 0; i < w->o->n_ignore; i++)
        if (strcmp(w->o->ignore[i], w->path) == 0 || strcmp(w->o->ignore[i], w->shape) == 0)
            return 1;
    return 0;
}

static void report(walker_t *w, jsondiff_kind_t kind)
{
    if (w->overflow > 0) {
        if (w->overflow_reported) return;
        w->overflow_reported = 1;
    }
    w->count++;
    if (w->cb) {
        jsondiff_item_t d = {w->path, w->shape, kind};
        if (w->cb(w->arg, &d) != 0) w->stop = 1;
    }
}

/* 0 number, 1 boolean, else the jansson type (distinct from those two). */
static int type_class(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_INTEGER:
    case JSON_REAL:
        return 0;
    case JSON_TRUE:
    case JSON_FALSE:
        return 1;
    default:
        return 2 + (int)json_typeof(v);
    }
}

static int numbers_equal(const json_t *a, const json_t *b, double tol)
{
    if (json_is_integer(a) && json_is_integer(b)) {
        json_int_t x = json_integer_value(a), y = json_integer_value(b);
        if (x == y) return 1;
        if (tol == 0) return 0;
    }
    return jsondiff_number_eq(json_number_value(a), json_number_value(b), tol);
}

static void walk(walker_t *w, const json_t *a, const json_t *b);

static void walk_object(walker_t *w, const json_t *a, const json_t *b)
{
    const char *key;
    size_t keylen;
    json_t *va;
    json_object_keylen_foreach((json_t *)a, key, keylen, va)
    {
        if (w->stop) return;
        mark_t m = push(w, key, keylen, 0);
        if (!ignored(w)) {
            const json_t *vb = json_object_getn(b, key, keylen);
            if (vb == NULL)
                report(w, JSONDIFF_MISSING);
            else
                walk(w, va, vb);
        }
        pop(w, m);
    }
    json_t *vb;
    json_object_keylen_foreach((json_t *)b, key, keylen, vb)
    {
        if (w->stop) return;
        if (json_object_getn(a, key, keylen) != NULL) continue;
        mark_t m = push(w, key, keylen, 0);
        if (!ignored(w)) report(w, JSONDIFF_EXTRA);
        pop(w, m);
    }
}

static void walk_array(walker_t *w, const json_t *a, const json_t *b)
{
    size_t na = json_array_size(a), nb = json_array_size(b);
    if (na != nb) report(w, JSONDIFF_LENGTH);
    size_t n = na < nb ? na : nb;
    for (size_t i = 0; i < n && !w->stop; i++) {
        char idx[24];
        int len = snprintf(idx, sizeof(idx), "%zu", i);
        mark_t m = push(w, idx, (size_t)len, 1);
        if (!ignored(w)) walk(w, json_array_get(a, i), json_array_get(b, i));
        pop(w, m);
    }
}

static void walk(walker_t *w, const json_t *a, const json_t *b)
{
    if (w->stop) return;
    int ca = type_class(a), cb = type_class(b);
    if (ca != cb) {
        report(w, JSONDIFF_TYPE);
        return;
    }
    switch (json_typeof(a)) {
    case JSON_OBJECT:
        walk_object(w, a, b);
        break;
    case JSON_ARRAY:
        walk_array(w, a, b);
        break;
    case JSON_STRING:
        if (json_string_length(a) != json_string_length(b) ||
            memcmp(json_string_value(a), json_string_value(b), json_string_length(a)) != 0)
            report(w, JSONDIFF_VALUE);
        break;
    case JSON_INTEGER:
    case JSON_REAL:
        if (!numbers_equal(a, b, w->o->tolerance)) report(w, JSONDIFF_VALUE);
        break;
    case JSON_TRUE:
    case JSON_FALSE:
        if (json_typeof(a) != json_typeof(b)) report(w, JSONDIFF_VALUE);
        break;
    case JSON_NULL:
        break;
    }
}

size_t jsondiff(const json_t *a, const json_t *b, const jsondiff_opts_t *o, jsondiff_cb cb,
                void *arg)
{
    static const jsondiff_opts_t none = {0, NULL, 0};
    walker_t w;
    w.o = o ? o : &none;
    w.cb = cb;
    w.arg = arg;
    w.path[0] = w.shape[0] = '\0';
    w.plen = w.slen = 0;
    w.overflow = w.overflow_reported = 0;
    w.count = 0;
    w.stop = 0;
    if (!ignored(&w)) walk(&w, a, b);
    return w.count;
}
