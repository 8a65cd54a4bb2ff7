/* jsonpos.c — a position index over a JSON text (see jsonpos.h).
 *
 * A recursive-descent scanner that validates nothing beyond what it needs:
 * the text has already been parsed by jansson, so this pass only walks the
 * structure, decodes object keys (escapes and \u surrogate pairs to UTF-8)
 * to build each value's JSON pointer, and notes where every value and key
 * starts. Recursion depth is bounded by jansson's own nesting limit (2048).
 *
 * All pointers live in one growing arena and entries refer to them by
 * offset, so building costs a few reallocations rather than one malloc per
 * value. Lookup is a linear scan: O(N) per call, which is fine because the
 * config checker only looks positions up on its error path, once. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "jsonpos.h"

typedef struct {
    size_t off, len; /* pointer text in the arena */
    int vline, vcol; /* the value's first character */
    int kline, kcol; /* the key naming it (== value for array elements, root) */
} jp_entry_t;

struct jsonpos_s {
    jp_entry_t *entries;
    size_t n, cap;
    char *arena;
    size_t arena_len, arena_cap;
};

/* Growable byte buffer: the current pointer while scanning, decoded keys. */
typedef struct {
    char *p;
    size_t n, cap;
} jp_buf_t;

typedef struct {
    const char *s;
    size_t len, i;
    int line, col; /* of s[i] */
    jsonpos_t *jp;
    jp_buf_t path; /* pointer of the value being scanned */
    jp_buf_t key;  /* scratch: the decoded key */
} jp_scan_t;

static int buf_reserve(jp_buf_t *b, size_t extra)
{
    if (b->n + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->n + extra) cap *= 2;
    char *p = realloc(b->p, cap);
    if (p == NULL) return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int buf_put(jp_buf_t *b, const char *s, size_t n)
{
    if (n == 0) return 0;
    if (buf_reserve(b, n) < 0) return -1;
    memcpy(b->p + b->n, s, n);
    b->n += n;
    return 0;
}

/* Advance one byte, keeping line and column in jansson's convention. */
static void adv(jp_scan_t *sc)
{
    unsigned char c = (unsigned char)sc->s[sc->i++];
    if (c == '\n') {
        sc->line++;
        sc->col = 1;
    } else if (sc->i < sc->len && ((unsigned char)sc->s[sc->i] & 0xC0) == 0x80) {
        /* the next byte continues this code point: same column */
    } else {
        sc->col++;
    }
}

void jsonpos_at(const char *text, size_t len, size_t off, int *line, int *col)
{
    jp_scan_t sc = {.s = text, .len = len, .line = 1, .col = 1};
    while (sc.i < off && sc.i < len) adv(&sc);
    *line = sc.line;
    *col = sc.col;
}

static int peek(const jp_scan_t *sc)
{
    return sc->i < sc->len ? (unsigned char)sc->s[sc->i] : -1;
}

static void skip_ws(jp_scan_t *sc)
{
    for (;;) {
        int c = peek(sc);
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') return;
        adv(sc);
    }
}

static int record(jp_scan_t *sc, int vline, int vcol, int kline, int kcol)
{
    jsonpos_t *jp = sc->jp;
    if (jp->n == jp->cap) {
        size_t cap = jp->cap ? jp->cap * 2 : 64;
        jp_entry_t *e = realloc(jp->entries, cap * sizeof(*e));
        if (e == NULL) return -1;
        jp->entries = e;
        jp->cap = cap;
    }
    jp_buf_t arena = {jp->arena, jp->arena_len, jp->arena_cap};
    if (buf_put(&arena, sc->path.p ? sc->path.p : "", sc->path.n) < 0) return -1;
    jp->arena = arena.p;
    jp->arena_cap = arena.cap;
    jp->entries[jp->n++] = (jp_entry_t){jp->arena_len, sc->path.n, vline, vcol, kline, kcol};
    jp->arena_len = arena.n;
    return 0;
}

static int read_u4(jp_scan_t *sc, uint32_t *out)
{
    uint32_t v = 0;
    for (int k = 0; k < 4; k++) {
        int h = mm_hex_val((unsigned char)peek(sc));
        if (h < 0) return -1;
        v = v << 4 | (uint32_t)h;
        adv(sc);
    }
    *out = v;
    return 0;
}

static int put_utf8(jp_buf_t *b, uint32_t cp)
{
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xC0 | cp >> 6);
        u[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | cp >> 12);
        u[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        u[0] = (char)(0xF0 | cp >> 18);
        u[1] = (char)(0x80 | (cp >> 12 & 0x3F));
        u[2] = (char)(0x80 | (cp >> 6 & 0x3F));
        u[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    return buf_put(b, u, n);
}

/* Scan a string starting at its opening quote. With out != NULL the decoded
 * bytes are appended to it (keys); values are only skipped. */
static int scan_string(jp_scan_t *sc, jp_buf_t *out)
{
    adv(sc); /* opening quote */
    for (;;) {
        int c = peek(sc);
        if (c < 0) return -1;
        if (c == '"') {
            adv(sc);
            return 0;
        }
        if (c != '\\') {
            if (out && buf_put(out, sc->s + sc->i, 1) < 0) return -1;
            adv(sc);
            continue;
        }
        adv(sc);
        c = peek(sc);
        if (c < 0) return -1;
        adv(sc);
        char ch;
        switch (c) {
        case '"':
            ch = '"';
            break;
        case '\\':
            ch = '\\';
            break;
        case '/':
            ch = '/';
            break;
        case 'b':
            ch = '\b';
            break;
        case 'f':
            ch = '\f';
            break;
        case 'n':
            ch = '\n';
            break;
        case 'r':
            ch = '\r';
            break;
        case 't':
            ch = '\t';
            break;
        case 'u': {
            uint32_t cp, lo;
            if (read_u4(sc, &cp) < 0) return -1;
            if (cp >= 0xD800 && cp <= 0xDBFF) { /* high surrogate: a low one follows */
                if (peek(sc) != '\\') return -1;
                adv(sc);
                if (peek(sc) != 'u') return -1;
                adv(sc);
                if (read_u4(sc, &lo) < 0 || lo < 0xDC00 || lo > 0xDFFF) return -1;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            if (out && put_utf8(out, cp) < 0) return -1;
            continue;
        }
        default:
            return -1;
        }
        if (out && buf_put(out, &ch, 1) < 0) return -1;
    }
}

/* ---- long segments ----
 * A key may be as long as the file. Pointers are built by callers in
 * fixed buffers (the config checker's, on its error path), so a segment
 * whose escaped form is longer than JSONPOS_SEG_MAX bytes is shortened the
 * same way wherever a pointer is made: here when recording, in
 * jsonpos_append and jsonpos_canon when building, in jsonpos_find when
 * looking up. The short form is the first whole characters of the escaped
 * segment (at most SEG_KEEP bytes), "~2" (no escape of RFC 6901, so it
 * never equals a segment of its own) and a 64-bit FNV-1a hash of the whole
 * escaped segment: two long keys of one object that share the kept prefix
 * still get different pointers, short of a hash collision, which would only
 * misplace an error message. */
#define SEG_KEEP      200
#define SEG_SHORT_MAX (SEG_KEEP + 2 + 16)

/* The escaped form of s[0..n): with `escape`, s is a decoded key ('~' and
 * '/' are escaped); without, it is already escaped. */
static size_t esc_len(const char *s, size_t n, int escape)
{
    size_t len = n;
    if (escape)
        for (size_t i = 0; i < n; i++) len += s[i] == '~' || s[i] == '/';
    return len;
}

/* Escaped byte j of s, walked in order through *i and *half. */
static char esc_next(const char *s, size_t *i, int *half, int escape)
{
    char c = s[*i];
    if (escape && (c == '~' || c == '/')) {
        if (!*half) {
            *half = 1;
            return '~';
        }
        *half = 0;
        (*i)++;
        return c == '~' ? '0' : '1';
    }
    (*i)++;
    return c;
}

/* Write the pointer form of segment s[0..n) to out (room for SEG_MAX + 1
 * bytes is enough whatever n is): escaped, and shortened when long. Returns
 * its length. */
static size_t seg_form(const char *s, size_t n, int escape, char *out)
{
    size_t len = esc_len(s, n, escape), i = 0, w = 0;
    int half = 0;
    if (len <= JSONPOS_SEG_MAX) {
        while (i < n) out[w++] = esc_next(s, &i, &half, escape);
        return w;
    }
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t j = 0; j < len; j++) {
        char c = esc_next(s, &i, &half, escape);
        if (j < SEG_KEEP) out[w++] = c;
        if (j == SEG_KEEP && ((unsigned char)c & 0xC0) == 0x80) {
            /* c continues a character: drop the part of it that was kept */
            while (w > 0 && ((unsigned char)out[w - 1] & 0xC0) == 0x80) w--;
            if (w > 0 && (unsigned char)out[w - 1] >= 0xC0) w--;
        }
        h = (h ^ (unsigned char)c) * 0x100000001b3ULL;
    }
    if (out[w - 1] == '~') w--; /* half an escape ("~0" cut after '~') */
    w += (size_t)snprintf(out + w, SEG_SHORT_MAX + 1 - w, "~2%016llx", (unsigned long long)h);
    return w;
}

/* Append "/" + the pointer form of the decoded key to the current path. */
static int push_key(jp_buf_t *path, const char *k, size_t n)
{
    char seg[JSONPOS_SEG_MAX + 1];
    size_t len = seg_form(k, n, 1, seg);
    if (buf_put(path, "/", 1) < 0) return -1;
    return buf_put(path, seg, len);
}

static int scan_value(jp_scan_t *sc, int kline, int kcol);

/* Characters of numbers and of true, false, null. */
static int is_literal_char(int c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || c == '+' || c == '-' || c == '.' ||
           c == 'E';
}

static int scan_object(jp_scan_t *sc)
{
    size_t base = sc->path.n;
    adv(sc); /* '{' */
    skip_ws(sc);
    if (peek(sc) == '}') {
        adv(sc);
        return 0;
    }
    for (;;) {
        skip_ws(sc);
        if (peek(sc) != '"') return -1;
        int kline = sc->line, kcol = sc->col;
        sc->key.n = 0;
        if (scan_string(sc, &sc->key) < 0) return -1;
        if (push_key(&sc->path, sc->key.p, sc->key.n) < 0) return -1;
        skip_ws(sc);
        if (peek(sc) != ':') return -1;
        adv(sc);
        skip_ws(sc);
        if (scan_value(sc, kline, kcol) < 0) return -1;
        sc->path.n = base;
        skip_ws(sc);
        int c = peek(sc);
        adv(sc);
        if (c == '}') return 0;
        if (c != ',') return -1;
    }
}

static int scan_array(jp_scan_t *sc)
{
    size_t base = sc->path.n;
    adv(sc); /* '[' */
    skip_ws(sc);
    if (peek(sc) == ']') {
        adv(sc);
        return 0;
    }
    for (size_t idx = 0;; idx++) {
        char num[24];
        int n = snprintf(num, sizeof(num), "/%zu", idx);
        if (buf_put(&sc->path, num, (size_t)n) < 0) return -1;
        skip_ws(sc);
        if (scan_value(sc, 0, 0) < 0) return -1;
        sc->path.n = base;
        skip_ws(sc);
        int c = peek(sc);
        adv(sc);
        if (c == ']') return 0;
        if (c != ',') return -1;
    }
}

/* Scan the value at the current position; its pointer is sc->path. kline 0
 * means the value has no key of its own (array element, root). */
static int scan_value(jp_scan_t *sc, int kline, int kcol)
{
    int vline = sc->line, vcol = sc->col;
    if (kline == 0) {
        kline = vline;
        kcol = vcol;
    }
    if (record(sc, vline, vcol, kline, kcol) < 0) return -1;
    int c = peek(sc);
    if (c == '{') return scan_object(sc);
    if (c == '[') return scan_array(sc);
    if (c == '"') return scan_string(sc, NULL);
    /* number, true, false, null */
    size_t start = sc->i;
    while (is_literal_char(peek(sc))) adv(sc);
    return sc->i > start ? 0 : -1;
}

jsonpos_t *jsonpos_build(const char *text, size_t len)
{
    jp_scan_t sc = {.s = text, .len = len, .line = 1, .col = 1};
    sc.jp = calloc(1, sizeof(*sc.jp));
    if (sc.jp == NULL) goto err;
    skip_ws(&sc);
    if (peek(&sc) < 0) goto err;
    if (scan_value(&sc, 0, 0) < 0) goto err;
    skip_ws(&sc);
    if (sc.i != sc.len) goto err;
    free(sc.path.p);
    free(sc.key.p);
    return sc.jp;
err:
    free(sc.path.p);
    free(sc.key.p);
    jsonpos_free(sc.jp);
    return NULL;
}

void jsonpos_free(jsonpos_t *jp)
{
    if (jp == NULL) return;
    free(jp->entries);
    free(jp->arena);
    free(jp);
}

int jsonpos_find(const jsonpos_t *jp, const char *pointer, int key, int *line, int *col)
{
    size_t n = strlen(pointer);
    char *canon = malloc(n + 1); /* the pointer form never grows */
    if (canon == NULL) return -1;
    jsonpos_canon(pointer, canon, n + 1);
    n = strlen(canon);
    int rc = -1;
    for (size_t i = 0; i < jp->n; i++) {
        const jp_entry_t *e = &jp->entries[i];
        /* n == 0: the root, and the arena may still be NULL (memcmp's
         * arguments must not be, even for no bytes) */
        if (e->len != n || (n > 0 && memcmp(jp->arena + e->off, canon, n) != 0)) continue;
        *line = key ? e->kline : e->vline;
        *col = key ? e->kcol : e->vcol;
        rc = 0;
        break;
    }
    free(canon);
    return rc;
}

int jsonpos_pointer_at(const jsonpos_t *jp, int line, int col, char *out, size_t n)
{
    for (size_t i = 0; i < jp->n; i++) {
        const jp_entry_t *e = &jp->entries[i];
        if (e->vline != line || e->vcol != col) continue;
        if (e->len >= n) return -1;
        if (e->len > 0) memcpy(out, jp->arena + e->off, e->len);
        out[e->len] = '\0';
        return 0;
    }
    return -1;
}

size_t jsonpos_count(const jsonpos_t *jp)
{
    return jp->n;
}

int jsonpos_append(char *buf, size_t buflen, const char *segment)
{
    char seg[JSONPOS_SEG_MAX + 1];
    size_t n = strlen(buf), len = seg_form(segment, strlen(segment), 1, seg);
    if (n + 1 + len >= buflen) return -1;
    buf[n] = '/';
    memcpy(buf + n + 1, seg, len);
    buf[n + 1 + len] = '\0';
    return 0;
}

int jsonpos_canon(const char *pointer, char *out, size_t n)
{
    size_t w = 0;
    int rc = 0;
    if (n == 0) return -1;
    for (const char *p = pointer; *p == '/';) {
        const char *end = strchr(p + 1, '/');
        if (end == NULL) end = p + strlen(p);
        char seg[JSONPOS_SEG_MAX + 1];
        size_t len = seg_form(p + 1, (size_t)(end - p - 1), 0, seg);
        if (w + 1 + len >= n) {
            rc = -1;
            break;
        }
        out[w++] = '/';
        memcpy(out + w, seg, len);
        w += len;
        p = end;
    }
    out[w] = '\0';
    return rc;
}

void jsonpos_error_at(const char *text, size_t len, const json_error_t *je, int *line, int *col)
{
    if (strncmp(je->text, "unable to decode byte", 21) == 0 ||
        strncmp(je->text, "control character", 17) == 0 ||
        strncmp(je->text, "unexpected newline", 18) == 0) {
        size_t at = je->position < 0 ? 0 : (size_t)je->position;
        if (at > len) at = len;
        jsonpos_at(text, len, at, line, col);
        return;
    }
    *line = je->line < 1 ? 1 : je->line;
    *col = je->column < 1 ? 1 : je->column;
}

void jsonpos_syntax_error(const char *text, size_t len, const json_error_t *je, char *out, size_t n)
{
    int line, col;
    jsonpos_error_at(text, len, je, &line, &col);
    snprintf(out, n, "invalid JSON at line %d column %d: %s", line, col, je->text);
}

int jsonpos_blank(const char *text, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (text[i] != ' ' && text[i] != '\t' && text[i] != '\r' && text[i] != '\n') return 0;
    return 1;
}
