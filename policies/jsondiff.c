/* jsondiff.c — structural JSON comparison with numeric tolerance (see jsondiff.h).
 *
 * Two halves. The parser validates a text as jansson 2.14's json_loadb would
 * and writes one token per value, and one per object key, in document order
 * into the document's tape; a container's token knows where its subtree ends,
 * so siblings are one hop apart. Nothing is copied or converted: strings stay
 * escaped in the text (with their unescaped length noted), numbers stay text.
 * Why not jansson: its tree costs an allocation per value and a strtod per
 * real, a third of the cost of a mirrored request, while the comparison needs
 * neither — strings equal byte for byte are equal escaped or not, numbers with
 * the same text are equal, and only differing ones are unescaped or
 * converted. The tape is one array reused from parse to parse.
 *
 * jansson's meaning is kept where it is not obvious: a key given twice keeps
 * its first position with its last value (resolved when the object closes;
 * later occurrences are skipped by the walk), reals are converted exactly
 * like strtod (Clinger's fast path when mantissa and power of ten are both
 * exact doubles — one correctly rounded operation, the same double as
 * strtod's — else strtod itself), and even a lexer quirk of jansson's (one NUL
 * byte after a number or literal is skipped) is reproduced, so that exactly
 * the same texts count as JSON.
 *
 * Objects of more than SMALL_OBJECT members get an open-addressing table of
 * their keys (built at parse, in the document's index buffer), so looking a
 * member up is O(1) and a 10 000-member object is not quadratic; smaller ones
 * are scanned, cheaper than hashing. Every lookup first tries the member at
 * the same position, so objects in the same order cost one key comparison a
 * member, and b is searched for extra members only when some of them were
 * not found from a.
 *
 * The walk keeps the current JSON pointer (and its "shape", array indices as
 * "*") in fixed buffers, so reporting a difference costs no allocation.
 * Recursion depth is bounded by JSONDIFF_DEPTH_MAX (2048), fine for the stack.
 * Paths longer than the buffer are not truncated silently: the walk goes on,
 * but a subtree whose path does not fit reports at most one difference, at the
 * deepest path that fits — counts per field stay meaningful, precision is lost
 * only for absurdly deep documents.
 *
 * Ignore pointers are checked at every node by string comparison: O(nodes x
 * ignores), fine for the handful of pointers a config lists. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../src/common.h"
#include "jsondiff.h"

/* Token types. Keys are tokens of their own, each followed by its value. */
enum { T_OBJECT = 1, T_ARRAY, T_STRING, T_INT, T_REAL, T_TRUE, T_FALSE, T_NULL, T_KEY };

enum {
    F_ESC = 1,      /* string or key: contains a backslash escape */
    F_SHADOWED = 2, /* key: a later duplicate, its value moved to the first occurrence */
    F_INDEXED = 4,  /* object: has a key table (aux: offset, val: size) */
    F_HASHED = 8,   /* key: `hash` is set */
};

#define SMALL_OBJECT 8          /* members scanned linearly up to this many */
#define NO_KEY       0          /* token 0 is the root, never a key */
#define EMPTY_SLOT   UINT32_MAX /* free entry of a key table */

typedef struct {
    const jsondiff_opts_t *o;
    jsondiff_cb cb;
    void *arg;
    const jsondiff_doc_t *a, *b; /* the documents compared */
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

/* ---- parsing ---- */

/* 1 for the bytes that stand for themselves in a string: ASCII from 0x20, but
 * '"' and '\\'. Anything else needs a look (end, escape, UTF-8, control). */
static const unsigned char plain[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
};

static int is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static const unsigned char *skip_ws(const unsigned char *p, const unsigned char *end)
{
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++;
    return p;
}

/* The value of 4 hex digits at p, -1 if one is not a hex digit. */
static long hex4(const unsigned char *p)
{
    long v = 0;
    for (int i = 0; i < 4; i++) {
        int c = mm_hex_val(p[i]);
        if (c < 0) return -1;
        v = v * 16 + c;
    }
    return v;
}

static unsigned utf8_encode(uint32_t cp, unsigned char *out)
{
    if (cp < 0x80) {
        out[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (unsigned char)(0xC0 | (cp >> 6));
        out[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (unsigned char)(0xE0 | (cp >> 12));
        out[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (unsigned char)(0xF0 | (cp >> 18));
    out[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Length of the UTF-8 sequence at p (lead byte >= 0x80), 0 when jansson
 * rejects it: overlong, a surrogate, beyond U+10FFFF, or cut short. */
static size_t utf8_len(const unsigned char *p, const unsigned char *end)
{
    unsigned c = p[0];
    size_t n;
    uint32_t v;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
        v = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        v = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        v = c & 0x07;
    } else {
        return 0;
    }
    if ((size_t)(end - p) < n) return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (p[i] & 0x3F);
    }
    if (v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    if ((n == 3 && v < 0x800) || (n == 4 && v < 0x10000)) return 0;
    return n;
}

/* p is just past a backslash. Returns the end of the escape, or NULL if it is
 * invalid; adds to *shrink how many bytes shorter it is once decoded. */
static const unsigned char *scan_escape(const unsigned char *p, const unsigned char *end,
                                        int is_key, uint32_t *shrink)
{
    if (p == end) return NULL;
    switch (*p) {
    case '"':
    case '\\':
    case '/':
    case 'b':
    case 'f':
    case 'n':
    case 'r':
    case 't':
        *shrink += 1;
        return p + 1;
    case 'u':
        break;
    default:
        return NULL;
    }
    if (end - p < 5) return NULL;
    long v = hex4(p + 1);
    if (v < 0) return NULL;
    p += 5;
    if (v >= 0xD800 && v <= 0xDBFF) {
        /* A high surrogate must be followed by an escaped low one. */
        if (end - p < 6 || p[0] != '\\' || p[1] != 'u') return NULL;
        long lo = hex4(p + 2);
        if (lo < 0xDC00 || lo > 0xDFFF) return NULL;
        *shrink += 12 - 4;
        return p + 6;
    }
    if (v >= 0xDC00 && v <= 0xDFFF) return NULL;
    if (v == 0 && is_key) return NULL; /* jansson: "NUL byte in object key not supported" */
    *shrink += 6 - (v < 0x80 ? 1 : v < 0x800 ? 2 : 3);
    return p;
}

/* p is just past the opening quote. Sets t's len, aux (unescaped length) and
 * F_ESC; returns the byte after the closing quote, or NULL if invalid. */
static const unsigned char *scan_string(jsondiff_tok_t *t, const unsigned char *p,
                                        const unsigned char *end, int is_key)
{
    const unsigned char *s = p;
    uint32_t shrink = 0;
    for (;;) {
        while (p < end && plain[*p]) p++;
        if (p == end) return NULL;
        if (*p == '"') break;
        if (*p == '\\') {
            t->flags |= F_ESC;
            p = scan_escape(p + 1, end, is_key, &shrink);
            if (p == NULL) return NULL;
        } else if (*p >= 0x80) {
            size_t n = utf8_len(p, end);
            if (n == 0) return NULL;
            p += n;
        } else {
            return NULL; /* control character */
        }
    }
    t->len = (uint32_t)(p - s);
    t->aux = t->len - shrink;
    return p + 1;
}

static int reserve_num(jsondiff_doc_t *d, size_t need)
{
    if (need <= d->cap_num) return 0;
    size_t cap = d->cap_num ? d->cap_num : 64;
    while (cap < need) cap *= 2;
    char *b = realloc(d->num, cap);
    if (b == NULL) return -1;
    d->num = b;
    d->cap_num = cap;
    return 0;
}

/* The number text s[0..n) as strtod sees it (n < d->cap_num). */
static double strtod_copy(const jsondiff_doc_t *d, const char *s, size_t n, int *overflow)
{
    /* d->num is scratch owned by the document, written even through a const
     * document: the bytes after a number in the caller's text may be the end
     * of its buffer, so strtod gets a terminated copy. */
    memcpy(d->num, s, n);
    d->num[n] = '\0';
    errno = 0;
    double v = strtod(d->num, NULL);
    if (overflow) *overflow = (v == HUGE_VAL || v == -HUGE_VAL) && errno == ERANGE;
    return v;
}

/* 1 if the real s[0..n) overflows a double (jansson: "real number overflow").
 * Decided from the decimal exponent of its first significant digit; only at
 * 10^308 <= |x| < 10^309 does strtod have to say. */
static int real_overflows(const jsondiff_doc_t *d, const unsigned char *s, size_t n,
                          const unsigned char *digits, size_t nint, const unsigned char *frac,
                          size_t nfrac, const unsigned char *exp)
{
    long long e10 = 0, lead;
    if (exp != NULL) {
        /* Saturates far beyond any lead exponent (|lead| < 2^32). */
        for (const unsigned char *q = exp; q < s + n; q++)
            if (e10 < 1000000000000000LL) e10 = e10 * 10 + (*q - '0');
        if (exp[-1] == '-') e10 = -e10;
    }
    size_t i = 0;
    while (i < nint && digits[i] == '0') i++;
    if (i < nint) {
        lead = (long long)(nint - i) - 1;
    } else {
        size_t j = 0;
        while (j < nfrac && frac[j] == '0') j++;
        if (j == nfrac) return 0; /* zero */
        lead = -(long long)j - 1;
    }
    long long e = lead + e10;
    if (e <= 307) return 0;
    if (e >= 309) return 1;
    int overflow;
    strtod_copy(d, (const char *)s, n, &overflow);
    return overflow;
}

/* p is at '-' or a digit. Sets t's type and len; returns the end of the
 * number, or NULL if it is invalid or out of jansson's range. */
static const unsigned char *scan_number(jsondiff_doc_t *d, jsondiff_tok_t *t,
                                        const unsigned char *p, const unsigned char *end)
{
    const unsigned char *s = p, *frac = NULL, *fend = NULL, *exp = NULL;
    int neg = *p == '-';
    if (neg) p++;
    const unsigned char *digits = p;
    if (p == end || !is_digit(*p)) return NULL;
    if (*p == '0')
        p++;
    else
        while (p < end && is_digit(*p)) p++;
    size_t nint = (size_t)(p - digits);
    if (p < end && is_digit(*p)) return NULL; /* a leading zero */
    if (p < end && *p == '.') {
        frac = ++p;
        if (p == end || !is_digit(*p)) return NULL;
        while (p < end && is_digit(*p)) p++;
        fend = p;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        exp = p;
        if (p == end || !is_digit(*p)) return NULL;
        while (p < end && is_digit(*p)) p++;
    }
    t->len = (uint32_t)(p - s);
    if (frac == NULL && exp == NULL) {
        /* An integer must fit json_int_t (int64): at most 19 digits. */
        t->type = T_INT;
        if (nint < 19) return p;
        if (nint > 19 ||
            memcmp(digits, neg ? "9223372036854775808" : "9223372036854775807", 19) > 0)
            return NULL;
        return p;
    }
    t->type = T_REAL;
    /* Room to hand this real to strtod later (the comparison cannot fail). */
    if (reserve_num(d, (size_t)t->len + 1) < 0) return NULL;
    if (exp == NULL && nint <= 308) return p;
    if (real_overflows(d, s, t->len, digits, nint, frac, frac ? (size_t)(fend - frac) : 0, exp))
        return NULL;
    return p;
}

/* Unescapes a string or key token byte by byte (the token was validated). */
typedef struct {
    const unsigned char *p, *end;
    unsigned char buf[4];
    unsigned n, i;
} unesc_t;

static void unesc_init(unesc_t *u, const jsondiff_doc_t *d, const jsondiff_tok_t *t)
{
    u->p = (const unsigned char *)d->text + t->start;
    u->end = u->p + t->len;
    u->n = u->i = 0;
}

/* The next unescaped byte, -1 at the end. */
static int unesc_next(unesc_t *u)
{
    if (u->i < u->n) return u->buf[u->i++];
    if (u->p == u->end) return -1;
    int c = *u->p++;
    if (c != '\\') return c;
    c = *u->p++;
    switch (c) {
    case 'b':
        return '\b';
    case 'f':
        return '\f';
    case 'n':
        return '\n';
    case 'r':
        return '\r';
    case 't':
        return '\t';
    case 'u':
        break;
    default:
        return c; /* '"', '\\', '/' */
    }
    uint32_t v = (uint32_t)hex4(u->p);
    u->p += 4;
    if (v >= 0xD800 && v <= 0xDBFF) {
        v = 0x10000 + ((v - 0xD800) << 10) + ((uint32_t)hex4(u->p + 2) - 0xDC00);
        u->p += 6;
    }
    u->n = utf8_encode(v, u->buf);
    u->i = 1;
    return u->buf[0];
}

/* memcmp(a, b, n) == 0, without a call for the short keys and values most
 * answers are made of. */
static inline int bytes_eq(const char *a, const char *b, size_t n)
{
    if (n > 16) return memcmp(a, b, n) == 0;
    for (size_t i = 0; i < n; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

/* 1 if two string or key tokens (of documents x and y) unescape to the same bytes. */
static int text_eq(const jsondiff_doc_t *x, const jsondiff_tok_t *a, const jsondiff_doc_t *y,
                   const jsondiff_tok_t *b)
{
    const char *pa = x->text + a->start, *pb = y->text + b->start;
    if (a->aux != b->aux) return 0;
    if (a->len == b->len && bytes_eq(pa, pb, a->len)) return 1;
    if (!((a->flags | b->flags) & F_ESC)) return 0;
    unesc_t ua, ub;
    unesc_init(&ua, x, a);
    unesc_init(&ub, y, b);
    for (;;) {
        int ca = unesc_next(&ua), cb = unesc_next(&ub);
        if (ca != cb) return 0;
        if (ca < 0) return 1;
    }
}

/* FNV-1a of the unescaped key. */
static uint32_t key_hash(const jsondiff_doc_t *d, const jsondiff_tok_t *k)
{
    if (k->flags & F_HASHED) return k->hash;
    uint32_t h = 2166136261u;
    if (!(k->flags & F_ESC)) {
        const unsigned char *p = (const unsigned char *)d->text + k->start;
        for (uint32_t i = 0; i < k->len; i++) h = (h ^ p[i]) * 16777619u;
        return h;
    }
    unesc_t u;
    unesc_init(&u, d, k);
    for (int c; (c = unesc_next(&u)) >= 0;) h = (h ^ (uint32_t)c) * 16777619u;
    return h;
}

static int reserve_index(jsondiff_doc_t *d, size_t need)
{
    if (need > UINT32_MAX) return -1;
    if (need <= d->cap_index) return 0;
    size_t cap = d->cap_index ? d->cap_index : 256;
    while (cap < need) cap *= 2;
    uint32_t *ix = realloc(d->index, cap * sizeof *ix);
    if (ix == NULL) return -1;
    d->index = ix;
    d->cap_index = cap;
    return 0;
}

/* Mark key k a later duplicate of key j: j keeps its place, takes k's value. */
static void shadow_key(jsondiff_tok_t *tok, uint32_t obj, uint32_t j, uint32_t k)
{
    tok[k].flags |= F_SHADOWED;
    tok[j].val = k + 1;
    tok[obj].len--;
}

/* The object `obj` has closed: resolve duplicate keys as jansson does (the
 * first occurrence keeps its place and takes the last value; later ones are
 * marked F_SHADOWED and no longer counted in len) and, for a large object,
 * build its key table. */
static int finish_object(jsondiff_doc_t *d, uint32_t obj)
{
    jsondiff_tok_t *tok = d->tok;
    uint32_t end = tok[obj].next, n = tok[obj].len;
    tok[obj].aux = tok[obj].val = 0;
    if (n < 2) return 0;
    if (n <= SMALL_OBJECT) {
        for (uint32_t k = obj + 1; k < end; k = tok[k].next)
            for (uint32_t j = obj + 1; j < k; j = tok[j].next)
                if (!(tok[j].flags & F_SHADOWED) && text_eq(d, &tok[j], d, &tok[k])) {
                    shadow_key(tok, obj, j, k);
                    break;
                }
        return 0;
    }
    size_t size = 16;
    while (size < 2 * (size_t)n) size *= 2;
    if (reserve_index(d, d->n_index + size) < 0) return -1;
    uint32_t *tab = d->index + d->n_index, mask = (uint32_t)size - 1;
    memset(tab, 0xff, size * sizeof *tab);
    tok[obj].aux = (uint32_t)d->n_index;
    tok[obj].val = (uint32_t)size;
    tok[obj].flags |= F_INDEXED;
    d->n_index += size;
    for (uint32_t k = obj + 1; k < end; k = tok[k].next) {
        uint32_t h = key_hash(d, &tok[k]);
        tok[k].hash = h;
        tok[k].flags |= F_HASHED;
        for (uint32_t i = h & mask;; i = (i + 1) & mask) {
            uint32_t j = tab[i];
            if (j == EMPTY_SLOT) {
                tab[i] = k;
                break;
            }
            if (tok[j].hash == h && text_eq(d, &tok[j], d, &tok[k])) {
                shadow_key(tok, obj, j, k);
                break;
            }
        }
    }
    return 0;
}

static int grow_tok(jsondiff_doc_t *d)
{
    uint32_t cap = d->cap_tok ? d->cap_tok * 2 : 64;
    if (cap <= d->cap_tok) return -1;
    jsondiff_tok_t *t = realloc(d->tok, (size_t)cap * sizeof *t);
    if (t == NULL) return -1;
    d->tok = t;
    d->cap_tok = cap;
    return 0;
}

/* A new token at text offset `start`; EMPTY_SLOT when out of memory. */
static inline uint32_t new_tok(jsondiff_doc_t *d, uint32_t start)
{
    if (d->n_tok == d->cap_tok && grow_tok(d) < 0) return EMPTY_SLOT;
    jsondiff_tok_t *t = &d->tok[d->n_tok];
    t->start = start;
    t->flags = 0;
    return d->n_tok++;
}

void jsondiff_doc_init(jsondiff_doc_t *d)
{
    memset(d, 0, sizeof *d);
}

/* One pass, no recursion: `stack` holds the open containers; an open object's
 * token keeps its current key in `val` until finish_object. A value may start
 * only inside fewer than JSONDIFF_DEPTH_MAX containers (jansson counts the
 * depth of every value, scalars included, root = 1). */
int jsondiff_doc_parse(jsondiff_doc_t *d, const char *text, size_t len)
{
    enum { WANT_VALUE, WANT_KEY, AFTER_VALUE } state = WANT_VALUE;
    uint32_t stack[JSONDIFF_DEPTH_MAX];
    uint32_t sp = 0;
    const unsigned char *base = (const unsigned char *)text, *p = base, *end;
    d->text = text;
    d->len = len;
    d->ok = 0;
    d->n_tok = 0;
    d->n_index = 0;
    if (len == 0 || len >= UINT32_MAX || text == NULL) return -1;
    end = base + len;
    for (;;) {
        p = skip_ws(p, end);
        if (state == AFTER_VALUE) {
            if (sp == 0) break;
            uint32_t top = stack[sp - 1];
            if (p == end) return -1;
            d->tok[top].len++;
            if (d->tok[top].type == T_OBJECT) {
                d->tok[d->tok[top].val].next = d->n_tok; /* the member ends here */
                if (*p == ',') {
                    p++;
                    state = WANT_KEY;
                    continue;
                }
                if (*p != '}') return -1;
                d->tok[top].next = d->n_tok;
                if (finish_object(d, top) < 0) return -1;
            } else {
                if (*p == ',') {
                    p++;
                    state = WANT_VALUE;
                    continue;
                }
                if (*p != ']') return -1;
                d->tok[top].next = d->n_tok;
            }
            p++;
            sp--;
            continue;
        }
        if (state == WANT_KEY) {
            if (p == end || *p != '"') return -1;
            uint32_t k = new_tok(d, (uint32_t)(p + 1 - base));
            if (k == EMPTY_SLOT) return -1;
            d->tok[k].type = T_KEY;
            d->tok[k].val = k + 1;
            p = scan_string(&d->tok[k], p + 1, end, 1);
            if (p == NULL) return -1;
            d->tok[stack[sp - 1]].val = k;
            p = skip_ws(p, end);
            if (p == end || *p != ':') return -1;
            p++;
            state = WANT_VALUE;
            continue;
        }
        /* WANT_VALUE */
        if (p == end || sp >= JSONDIFF_DEPTH_MAX) return -1;
        uint32_t i = new_tok(d, (uint32_t)(p - base));
        if (i == EMPTY_SLOT) return -1;
        jsondiff_tok_t *t = &d->tok[i];
        t->next = i + 1;
        state = AFTER_VALUE;
        switch (*p) {
        case '{':
        case '[':
            t->type = *p == '{' ? T_OBJECT : T_ARRAY;
            t->len = t->aux = t->val = 0;
            p = skip_ws(p + 1, end);
            if (p < end && *p == (t->type == T_OBJECT ? '}' : ']')) {
                p++; /* empty: complete already */
                break;
            }
            stack[sp++] = i;
            state = t->type == T_OBJECT ? WANT_KEY : WANT_VALUE;
            break;
        case '"':
            t->type = T_STRING;
            t->start++; /* past the quote */
            p = scan_string(t, p + 1, end, 0);
            break;
        case 't':
            t->type = T_TRUE;
            t->len = 4;
            p = end - p >= 4 && memcmp(p, "true", 4) == 0 ? p + 4 : NULL;
            break;
        case 'f':
            t->type = T_FALSE;
            t->len = 5;
            p = end - p >= 5 && memcmp(p, "false", 5) == 0 ? p + 5 : NULL;
            break;
        case 'n':
            t->type = T_NULL;
            t->len = 4;
            p = end - p >= 4 && memcmp(p, "null", 4) == 0 ? p + 4 : NULL;
            break;
        default:
            p = *p == '-' || is_digit(*p) ? scan_number(d, t, p, end) : NULL;
            break;
        }
        if (p == NULL) return -1;
        /* jansson quirk, kept so that the same texts count as JSON: its lexer
         * reads one byte past a number or literal and puts it back, and a NUL
         * put back is lost — "[1\0]" loads as [1]. One NUL, only there. */
        if (t->type >= T_INT && t->type <= T_NULL && p < end && *p == '\0') p++;
    }
    if (p != end) return -1; /* trailing garbage */
    d->ok = 1;
    return 0;
}

void jsondiff_doc_trim(jsondiff_doc_t *d, size_t max_bytes)
{
    d->ok = 0;
    d->n_tok = 0;
    d->n_index = 0;
    if ((size_t)d->cap_tok * sizeof *d->tok > max_bytes) {
        free(d->tok);
        d->tok = NULL;
        d->cap_tok = 0;
    }
    if (d->cap_index * sizeof *d->index > max_bytes) {
        free(d->index);
        d->index = NULL;
        d->cap_index = 0;
    }
    if (d->cap_num > max_bytes) {
        free(d->num);
        d->num = NULL;
        d->cap_num = 0;
    }
}

void jsondiff_doc_free(jsondiff_doc_t *d)
{
    free(d->tok);
    free(d->index);
    free(d->num);
    jsondiff_doc_init(d);
}

/* ---- paths ---- */

static mark_t push_overflow(walker_t *w)
{
    mark_t m = {w->plen, w->slen, 1};
    w->overflow++;
    return m;
}

/* Append "/" + escaped key to both buffers (the shape gets "*" for indices). */
static mark_t push(walker_t *w, const char *key, size_t keylen, int is_index)
{
    mark_t m = {w->plen, w->slen, 0};
    if (w->overflow > 0 || w->plen + 1 + keylen >= sizeof(w->path)) return push_overflow(w);
    /* The key goes to the shape too (an index as "*"); the shape is never
     * longer than the path (an index has >= 1 digit), so only the path's end
     * needs checking. */
    char *p = w->path + w->plen, *last = w->path + sizeof(w->path) - 1; /* for the NUL */
    char *q = w->shape + w->slen;
    *p++ = *q++ = '/';
    for (size_t i = 0; i < keylen; i++) {
        char c = key[i];
        if (c != '~' && c != '/') {
            if (p == last) goto overflow;
            *p++ = *q++ = c;
        } else {
            if (last - p < 2) goto overflow;
            *p++ = *q++ = '~';
            *p++ = *q++ = c == '~' ? '0' : '1';
        }
    }
    if (is_index) {
        q = w->shape + w->slen + 1;
        *q++ = '*';
    }
    *p = *q = '\0';
    w->plen = (size_t)(p - w->path);
    w->slen = (size_t)(q - w->shape);
    return m;
overflow:
    w->path[w->plen] = w->shape[w->slen] = '\0';
    return push_overflow(w);
}

static mark_t push_index(walker_t *w, size_t i)
{
    char idx[24], *p = idx + sizeof idx;
    do {
        *--p = (char)('0' + i % 10);
        i /= 10;
    } while (i > 0);
    return push(w, p, (size_t)(idx + sizeof idx - p), 1);
}

/* Push key token k of document d, unescaped. */
static mark_t push_key(walker_t *w, const jsondiff_doc_t *d, const jsondiff_tok_t *k)
{
    if (!(k->flags & F_ESC)) return push(w, d->text + k->start, k->len, 0);
    char buf[JSONDIFF_PATH_MAX];
    if (k->aux >= sizeof buf) return push_overflow(w); /* "/" + key cannot fit */
    unesc_t u;
    unesc_init(&u, d, k);
    size_t n = 0;
    for (int c; (c = unesc_next(&u)) >= 0;) buf[n++] = (char)c;
    return push(w, buf, n, 0);
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

static void walker_init(walker_t *w, const jsondiff_opts_t *o, jsondiff_cb cb, void *arg)
{
    static const jsondiff_opts_t none = {0, NULL, 0};
    w->o = o ? o : &none;
    w->cb = cb;
    w->arg = arg;
    w->a = w->b = NULL;
    w->path[0] = w->shape[0] = '\0';
    w->plen = w->slen = 0;
    w->overflow = w->overflow_reported = 0;
    w->count = 0;
    w->stop = 0;
}

/* ---- the walk over two tapes ---- */

/* 0 number, 1 boolean, else distinct per type. */
static int tok_class(int type)
{
    switch (type) {
    case T_INT:
    case T_REAL:
        return 0;
    case T_TRUE:
    case T_FALSE:
        return 1;
    default:
        return 2 + type;
    }
}

static int64_t int_value(const char *p, size_t n)
{
    int neg = *p == '-';
    uint64_t v = 0;
    for (size_t i = (size_t)neg; i < n; i++) v = v * 10 + (uint64_t)(p[i] - '0');
    if (!neg) return (int64_t)v;
    return v == 0 ? 0 : -(int64_t)(v - 1) - 1; /* -2^63 fits, its negation does not */
}

/* Powers of ten that are exact doubles. */
static const double pow10_exact[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                     1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                     1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* The double strtod would make of a real token. */
static double real_value(const jsondiff_doc_t *d, const jsondiff_tok_t *t)
{
    const char *s = d->text + t->start, *e = s + t->len, *p = s;
    int neg = *p == '-', exact = 1, nd = 0;
    uint64_t m = 0;
    long long e10 = 0;
    if (neg) p++;
    for (; p < e && is_digit((unsigned char)*p); p++) {
        if (nd >= 19) {
            exact = 0;
            continue;
        }
        m = m * 10 + (uint64_t)(*p - '0');
        nd += m != 0;
    }
    if (p < e && *p == '.') {
        for (p++; p < e && is_digit((unsigned char)*p); p++) {
            if (nd >= 19) {
                exact = 0;
                continue;
            }
            m = m * 10 + (uint64_t)(*p - '0');
            nd += m != 0;
            e10--;
        }
    }
    if (p < e) { /* exponent */
        int eneg = 0;
        long long x = 0;
        p++;
        if (*p == '+' || *p == '-') eneg = *p++ == '-';
        for (; p < e; p++)
            if (x < 100000) x = x * 10 + (*p - '0');
        e10 += eneg ? -x : x;
    }
    /* Clinger: m and 10^|e10| are exact, so one operation rounds once. */
    if (exact && m <= (1ULL << 53) && e10 >= -22 && e10 <= 22) {
        double v = (double)m;
        v = e10 < 0 ? v / pow10_exact[-e10] : v * pow10_exact[e10];
        return neg ? -v : v;
    }
    return strtod_copy(d, s, t->len, NULL);
}

static double number_value(const jsondiff_doc_t *d, const jsondiff_tok_t *t)
{
    if (t->type == T_INT) return (double)int_value(d->text + t->start, t->len);
    return real_value(d, t);
}

static int numbers_equal(const walker_t *w, const jsondiff_tok_t *a, const jsondiff_tok_t *b)
{
    double tol = w->o->tolerance;
    const char *pa = w->a->text + a->start, *pb = w->b->text + b->start;
    /* The same text is the same value, equal to itself for any tol >= 0. */
    if (a->len == b->len && memcmp(pa, pb, a->len) == 0 && (a->type == T_INT || tol >= 0)) return 1;
    if (a->type == T_INT && b->type == T_INT) {
        int64_t x = int_value(pa, a->len), y = int_value(pb, b->len);
        if (x == y) return 1;
        if (tol == 0) return 0;
        return jsondiff_number_eq((double)x, (double)y, tol);
    }
    return jsondiff_number_eq(number_value(w->a, a), number_value(w->b, b), tol);
}

/* The key of object `obj` in d equal to key k of document kd (its first
 * occurrence), or NO_KEY. The key at `hint` is tried first. */
static uint32_t find_key(const jsondiff_doc_t *d, uint32_t obj, uint32_t hint,
                         const jsondiff_doc_t *kd, const jsondiff_tok_t *k)
{
    const jsondiff_tok_t *tok = d->tok, *o = &tok[obj];
    if (hint < o->next && !(tok[hint].flags & F_SHADOWED) && text_eq(d, &tok[hint], kd, k))
        return hint;
    if (o->flags & F_INDEXED) {
        const uint32_t *tab = d->index + o->aux;
        uint32_t mask = o->val - 1, h = key_hash(kd, k);
        for (uint32_t i = h & mask;; i = (i + 1) & mask) {
            uint32_t j = tab[i];
            if (j == EMPTY_SLOT) return NO_KEY;
            if (tok[j].hash == h && text_eq(d, &tok[j], kd, k)) return j;
        }
    }
    for (uint32_t j = obj + 1; j < o->next; j = tok[j].next)
        if (!(tok[j].flags & F_SHADOWED) && text_eq(d, &tok[j], kd, k)) return j;
    return NO_KEY;
}

static void walk_tape(walker_t *w, uint32_t ia, uint32_t ib);

/* Members of a in a's order, then b's extra members in b's order. */
static void walk_tape_object(walker_t *w, uint32_t ia, uint32_t ib)
{
    const jsondiff_tok_t *ta = w->a->tok, *tb = w->b->tok;
    uint32_t hint = ib + 1, found = 0;
    for (uint32_t ka = ia + 1; ka < ta[ia].next; ka = ta[ka].next) {
        if (w->stop) return;
        uint32_t h = hint;
        if (hint < tb[ib].next) hint = tb[hint].next;
        if (ta[ka].flags & F_SHADOWED) continue;
        mark_t m = push_key(w, w->a, &ta[ka]);
        if (!ignored(w)) {
            uint32_t kb = find_key(w->b, ib, h, w->a, &ta[ka]);
            if (kb == NO_KEY) {
                report(w, JSONDIFF_MISSING);
            } else {
                found++;
                walk_tape(w, ta[ka].val, tb[kb].val);
            }
        }
        pop(w, m);
    }
    /* Every member of b was found from a: no extra one to look for. */
    if (found == tb[ib].len) return;
    hint = ia + 1;
    for (uint32_t kb = ib + 1; kb < tb[ib].next; kb = tb[kb].next) {
        if (w->stop) return;
        uint32_t h = hint;
        if (hint < ta[ia].next) hint = ta[hint].next;
        if (tb[kb].flags & F_SHADOWED) continue;
        if (find_key(w->a, ia, h, w->b, &tb[kb]) != NO_KEY) continue;
        mark_t m = push_key(w, w->b, &tb[kb]);
        if (!ignored(w)) report(w, JSONDIFF_EXTRA);
        pop(w, m);
    }
}

static void walk_tape_array(walker_t *w, uint32_t ia, uint32_t ib)
{
    const jsondiff_tok_t *ta = w->a->tok, *tb = w->b->tok;
    uint32_t na = ta[ia].len, nb = tb[ib].len;
    if (na != nb) report(w, JSONDIFF_LENGTH);
    uint32_t n = na < nb ? na : nb, ea = ia + 1, eb = ib + 1;
    for (uint32_t i = 0; i < n && !w->stop; i++) {
        mark_t m = push_index(w, i);
        if (!ignored(w)) walk_tape(w, ea, eb);
        pop(w, m);
        ea = ta[ea].next;
        eb = tb[eb].next;
    }
}

static void walk_tape(walker_t *w, uint32_t ia, uint32_t ib)
{
    if (w->stop) return;
    const jsondiff_tok_t *a = &w->a->tok[ia], *b = &w->b->tok[ib];
    if (tok_class(a->type) != tok_class(b->type)) {
        report(w, JSONDIFF_TYPE);
        return;
    }
    switch (a->type) {
    case T_OBJECT:
        walk_tape_object(w, ia, ib);
        break;
    case T_ARRAY:
        walk_tape_array(w, ia, ib);
        break;
    case T_STRING:
        if (!text_eq(w->a, a, w->b, b)) report(w, JSONDIFF_VALUE);
        break;
    case T_INT:
    case T_REAL:
        if (!numbers_equal(w, a, b)) report(w, JSONDIFF_VALUE);
        break;
    case T_TRUE:
    case T_FALSE:
        if (a->type != b->type) report(w, JSONDIFF_VALUE);
        break;
    default: /* null */
        break;
    }
}

size_t jsondiff(const jsondiff_doc_t *a, const jsondiff_doc_t *b, const jsondiff_opts_t *o,
                jsondiff_cb cb, void *arg)
{
    walker_t w;
    if (!a->ok || !b->ok) return JSONDIFF_NOT_JSON;
    walker_init(&w, o, cb, arg);
    w.a = a;
    w.b = b;
    if (!ignored(&w)) walk_tape(&w, 0, 0);
    return w.count;
}
