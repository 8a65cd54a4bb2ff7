/* http.c — see http.h. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "http.h"

void http_head_reset(http_head_t *h)
{
    h->n = 0;
    h->too_many = 0;
    h->in_value = 0;
    h->obs_fold = 0;
    h->empty_name = 0;
    h->url_off = h->url_len = 0;
    h->status_off = h->status_len = 0;
    memset(&h->chunked, 0, sizeof(h->chunked));
}

void http_head_on_url(http_head_t *h, uint32_t off, uint32_t len)
{
    if (h->url_len == 0) h->url_off = off;
    h->url_len += len; /* a span split across reads is contiguous in the buffer */
}

void http_head_on_field(http_head_t *h, uint32_t off, uint32_t len)
{
    if (h->in_value || h->n == 0) {
        if (h->n == HTTP_MAX_HEADERS) {
            h->too_many = 1;
            return;
        }
        http_hdr_t *e = &h->h[h->n++];
        e->name_off = off;
        e->name_len = len;
        e->value_off = off;
        e->value_len = 0;
        h->in_value = 0;
    } else if (!h->too_many) {
        h->h[h->n - 1].name_len += len;
    }
}

void http_head_on_value(http_head_t *h, uint32_t off, uint32_t len)
{
    if (h->too_many || h->n == 0) return;
    http_hdr_t *e = &h->h[h->n - 1];
    if (!h->in_value) {
        e->value_off = off;
        e->value_len = len;
        h->in_value = 1;
    } else if (off == e->value_off + e->value_len) {
        e->value_len += len; /* a span split across reads */
    } else {
        /* llhttp resumes a folded value after the line break, so a gap
         * between two spans of one value is obs-fold. The value is not
         * joined across the CRLF: that would end the head early in any head
         * rebuilt from it. */
        h->obs_fold = 1;
    }
}

int http_find(const http_head_t *h, const char *base, const char *lower)
{
    for (int i = 0; i < h->n; i++)
        if (mm_str_ieq(http_hname(h, base, i), lower)) return i;
    return -1;
}

void http_emit_header(mm_buf_t *b, http_run_t *run, const http_head_t *h, const char *base, int i)
{
    const http_hdr_t *e = &h->h[i];
    uint32_t name_end = e->name_off + e->name_len, value_end = e->value_off + e->value_len;
    /* The head is complete, so the CRLF after the last value is in the
     * buffer: reading base[value_end + 1] stays inside it. */
    if (e->value_len > 0 && e->value_off == name_end + 2 && base[name_end] == ':' &&
        base[name_end + 1] == ' ' && base[value_end] == '\r' && base[value_end + 1] == '\n') {
        const char *line = base + e->name_off;
        size_t len = value_end + 2 - e->name_off;
        if (run->n && run->p + run->n == line) {
            run->n += len;
            return;
        }
        http_emit_flush(b, run);
        run->p = line;
        run->n = len;
        return;
    }
    http_emit_flush(b, run);
    mm_buf_str(b, http_hname(h, base, i));
    mm_buf_lit(b, ": ");
    mm_buf_str(b, http_hvalue(h, base, i));
    mm_buf_lit(b, "\r\n");
}

mm_str_t http_trim(mm_str_t s)
{
    while (s.n && (s.p[0] == ' ' || s.p[0] == '\t')) s.p++, s.n--;
    while (s.n && (s.p[s.n - 1] == ' ' || s.p[s.n - 1] == '\t')) s.n--;
    return s;
}

int http_is_token(mm_str_t s)
{
    if (s.n == 0) return 0;
    for (size_t i = 0; i < s.n; i++) {
        unsigned char ch = (unsigned char)s.p[i];
        if (ch <= 0x20 || ch >= 0x7f || strchr("\"(),/:;<=>?@[\\]{}", ch)) return 0;
    }
    return 1;
}

int http_has_token(mm_str_t value, const char *token)
{
    size_t i = 0;
    while (i < value.n) {
        size_t j = i;
        while (j < value.n && value.p[j] != ',') j++;
        if (mm_str_ieq(http_trim((mm_str_t){value.p + i, j - i}), token)) return 1;
        i = j + 1;
    }
    return 0;
}

static inline unsigned char ascii_lower(char ch)
{
    unsigned char c = (unsigned char)ch;
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c; /* no locale lookup */
}

/* Two header names (or a name and a token) equal, case-insensitively. */
static int same_name(mm_str_t a, mm_str_t b)
{
    if (a.n != b.n) return 0;
    for (size_t k = 0; k < a.n; k++)
        if (ascii_lower(a.p[k]) != ascii_lower(b.p[k])) return 0;
    return 1;
}

static inline uint64_t load64(const char *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline uint32_t load32(const char *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* name equals the lowercase literal `lit` of the same length (the caller
 * has checked the length), case-insensitively. Whole words at a time: OR-ing
 * 0x20 into every byte folds ASCII upper case; of the bytes it would also
 * change, only CR could turn into a character of our literals ('-'), and a
 * header name cannot hold CR (llhttp accepts only token characters). */
static inline int name_is(mm_str_t name, const char *lit)
{
    size_t n = name.n;
    const char *p = name.p;
    if (n >= 8) {
        size_t i = 0;
        for (; i + 8 <= n; i += 8)
            if ((load64(p + i) | 0x2020202020202020ULL) != load64(lit + i)) return 0;
        return i == n || (load64(p + n - 8) | 0x2020202020202020ULL) == load64(lit + n - 8);
    }
    if (n >= 4)
        return (load32(p) | 0x20202020u) == load32(lit) &&
               (load32(p + n - 4) | 0x20202020u) == load32(lit + n - 4);
    return mm_str_ieq(name, lit);
}

http_kind_t http_kind_of(mm_str_t name)
{
    /* Dispatch on length first: most headers are settled by one compare. */
    switch (name.n) {
    case 2:
        if (name_is(name, "te")) return HK_HOP;
        break;
    case 4:
        if (name_is(name, "host")) return HK_HOST;
        if (name_is(name, "date")) return HK_DATE;
        break;
    case 6:
        if (name_is(name, "expect")) return HK_EXPECT;
        break;
    case 7:
        if (name_is(name, "trailer") || name_is(name, "upgrade")) return HK_HOP;
        break;
    case 10:
        if (name_is(name, "connection")) return HK_CONNECTION;
        if (name_is(name, "keep-alive")) return HK_HOP;
        break;
    case 12:
        if (name_is(name, "content-type")) return HK_CONTENT_TYPE;
        if (name_is(name, "x-request-id")) return HK_X_REQUEST_ID;
        break;
    case 14:
        if (name_is(name, "content-length")) return HK_CONTENT_LENGTH;
        break;
    case 15:
        if (name_is(name, "x-forwarded-for")) return HK_X_FORWARDED_FOR;
        break;
    case 16:
        if (name_is(name, "proxy-connection")) return HK_HOP;
        if (name_is(name, "x-forwarded-host")) return HK_X_FORWARDED_HOST;
        break;
    case 17:
        if (name_is(name, "transfer-encoding")) return HK_TRANSFER_ENC;
        break;
    case 18:
        if (name_is(name, "proxy-authenticate")) return HK_HOP;
        break;
    case 19:
        if (name_is(name, "proxy-authorization")) return HK_HOP;
        break;
    default:
        break;
    }
    /* Every X-Modelmux-* name is ours (Arm, Experiment, Shadow and any to
     * come): a client's or a model server's is never passed on, as the
     * README promises, not only the names above. */
    if (name.n >= 11 && name_is((mm_str_t){name.p, 11}, "x-modelmux-")) return HK_HOP;
    return HK_OTHER;
}

void http_head_index(http_head_t *h, const char *base)
{
    for (int k = 0; k < HK_COUNT; k++) h->first[k] = -1;
    memset(h->count, 0, sizeof(h->count));
    for (int i = 0; i < h->n; i++) {
        http_kind_t k = http_kind_of(http_hname(h, base, i));
        h->kind[i] = (uint8_t)k;
        h->dropped[i] = (uint8_t)http_kind_is_hop(k);
        if (h->first[k] < 0) h->first[k] = (int16_t)i;
        h->count[k]++;
        /* A fold after an empty first line ("Name:\r\n value") reaches us
         * as one span starting after the fold, with the line break between
         * the colon and the value. Only an empty value (its span lies after
         * its own CRLF) or a gap wider than ": " is looked at, so the usual
         * "Name: value" costs one compare. */
        const http_hdr_t *e = &h->h[i];
        /* llhttp lets ": value" through with an empty name; a field name is
         * a token, one character at least (RFC 9110 §5.1), and forwarding
         * the line would pass a head on that the next hop may read
         * differently. */
        if (e->name_len == 0) h->empty_name = 1;
        uint32_t name_end = e->name_off + e->name_len;
        if (e->value_off >= name_end && (e->value_off > name_end + 2 || e->value_len == 0)) {
            int lines = 0;
            for (uint32_t j = name_end; j < e->value_off; j++) lines += base[j] == '\n';
            if (lines > (e->value_len == 0)) h->obs_fold = 1;
        }
    }
    if (h->count[HK_CONNECTION] == 0) return;
    /* Headers named in any Connection header are hop-by-hop too (RFC 9110
     * §7.6.1). Token by token, comparing names of the token's length only;
     * "keep-alive" (the usual token) names a header dropped anyway.
     * Content-Length is the exception: the body is forwarded as it came, so
     * its length goes with it. Dropped, "Connection: content-length" sent the
     * body upstream unframed, to be read as the next request (smuggling), or
     * an answer to the client with no framing on a kept-alive connection. */
    for (int c = h->first[HK_CONNECTION]; c < h->n; c++) {
        if (h->kind[c] != HK_CONNECTION) continue;
        mm_str_t list = http_hvalue(h, base, c);
        size_t i = 0;
        while (i < list.n) {
            size_t j = i;
            while (j < list.n && list.p[j] != ',') j++;
            mm_str_t t = http_trim((mm_str_t){list.p + i, j - i});
            i = j + 1;
            if (t.n == 0 || (t.n == 10 && name_is(t, "keep-alive"))) continue;
            for (int k = 0; k < h->n; k++)
                if (!h->dropped[k] && h->kind[k] != HK_CONTENT_LENGTH &&
                    same_name(t, http_hname(h, base, k)))
                    h->dropped[k] = 1;
        }
    }
}

int http_bare_lf(const char *p, size_t n)
{
    const char *end = p + n, *q = p;
    while (q < end && (q = memchr(q, '\n', (size_t)(end - q))) != NULL) {
        if (q == p || q[-1] != '\r') return 1;
        q++;
    }
    return 0;
}

int http_head_bare_lf(const char *p, size_t n)
{
    const char *lf = memchr(p, '\n', n);
    return lf == NULL || lf == p || lf[-1] != '\r' || n < 2 || p[n - 2] != '\r';
}

/* Where the trailer section's check is: off (no last chunk yet), at the
 * start of a line, inside a field line, after a field line's CR, after the
 * empty line's CR, done. */
enum { TS_OFF = 0, TS_LINE, TS_FIELD, TS_FIELD_CR, TS_END_CR, TS_DONE };

static int chunked_refuse(http_chunked_t *t, const char *why, int too_large)
{
    t->error = why;
    t->too_large = (uint8_t)too_large;
    return HPE_USER;
}

int http_chunked_on_ext(http_chunked_t *t, size_t n, uint32_t limit)
{
    /* +1: the ';' or '=' before the span. A span split across reads counts
     * it twice, which errs by a byte a read, on the safe side. */
    /* meta may be above a limit a reload lowered meanwhile */
    if (t->meta >= limit || n + 1 > (size_t)(limit - t->meta))
        return chunked_refuse(t, "chunk extensions and trailers over the size limit", 1);
    t->meta += (uint32_t)n + 1;
    return 0;
}

int http_chunked_on_chunk(http_chunked_t *t, uint64_t chunk_size)
{
    if (chunk_size != 0) return 0;
    t->at_last = 1;
    return HPE_PAUSED;
}

/* Check the trailer-section bytes p[0..n), as llhttp has just parsed them.
 * llhttp already refuses a bare LF ending a field line, and a CR without
 * its LF; what it lets through is refused here. */
static int trailer_scan(http_chunked_t *t, const char *p, size_t n, uint32_t limit)
{
    if (t->meta > limit || n > (size_t)(limit - t->meta))
        return chunked_refuse(t, "chunk extensions and trailers over the size limit", 1);
    t->meta += (uint32_t)n;
    for (size_t i = 0; i < n; i++) {
        char ch = p[i];
        switch (t->scan) {
        case TS_LINE:
            if (ch == '\r') {
                t->scan = TS_END_CR;
            } else if (ch == '\n') {
                return chunked_refuse(t, "a bare LF in a chunked body (CRLF is required)", 0);
            } else if (ch == ' ' || ch == '\t') {
                return chunked_refuse(t, "obsolete line folding in a trailer field", 0);
            } else if (ch == ':') {
                return chunked_refuse(t, "a trailer line with an empty field name", 0);
            } else {
                if (++t->lines > HTTP_MAX_HEADERS)
                    return chunked_refuse(t, "more than 128 trailer lines", 1);
                t->scan = TS_FIELD;
            }
            break;
        case TS_FIELD:
            if (ch == '\r') t->scan = TS_FIELD_CR;
            break;
        case TS_FIELD_CR:
            t->scan = TS_LINE; /* llhttp has checked that an LF follows */
            break;
        case TS_END_CR:
            t->scan = TS_DONE;
            break;
        default: /* TS_DONE: llhttp stops at the message's end */
            return 0;
        }
    }
    return 0;
}

llhttp_errno_t http_execute(llhttp_t *p, http_chunked_t *t, const char *data, size_t n,
                            uint32_t limit)
{
    const char *from = data, *end = data + n;
    llhttp_errno_t e = llhttp_execute(p, data, n);
    while (e == HPE_PAUSED && t->at_last) {
        /* Paused right after the last chunk's line: the trailer section
         * begins here. Resumed at once, so that the caller sees one parse. */
        t->at_last = 0;
        t->scan = TS_LINE;
        from = llhttp_get_error_pos(p);
        llhttp_resume(p);
        e = llhttp_execute(p, from, (size_t)(end - from));
    }
    if (t->scan == TS_OFF || t->scan == TS_DONE) return e;
    const char *stop;
    if (e == HPE_OK)
        stop = end;
    else if (e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE)
        stop = llhttp_get_error_pos(p);
    else
        return e;
    if (stop > from && trailer_scan(t, from, (size_t)(stop - from), limit) != 0) return HPE_USER;
    return e;
}

int http_te_chunked_only(const http_head_t *h, const char *base)
{
    /* The headers together form one list: two of them are two codings. */
    int codings = 0, chunked = 0;
    for (int i = h->first[HK_TRANSFER_ENC]; i >= 0 && i < h->n; i++) {
        if (h->kind[i] != HK_TRANSFER_ENC) continue;
        mm_str_t list = http_hvalue(h, base, i);
        size_t a = 0;
        do {
            size_t b = a;
            while (b < list.n && list.p[b] != ',') b++;
            mm_str_t t = http_trim((mm_str_t){list.p + a, b - a});
            codings++;
            chunked += mm_str_ieq(t, "chunked");
            a = b + 1;
        } while (a <= list.n);
    }
    return codings == 1 && chunked == 1;
}

/* RFC 3986 character classes, one table: every request's Host and path pass
 * here (a strchr per character cost some 250 instructions a request).
 * URI_UNRESERVED: ALPHA DIGIT - . _ ~ (§2.3: their percent-encoding means
 * the character itself); URI_SUB_DELIM: ! $ & ' ( ) * + , ; = (§2.2). A
 * reg-name is made of both ('%' and its two hex digits checked apart). */
enum { URI_UNRESERVED = 1, URI_SUB_DELIM = 2 };
#define U_ URI_UNRESERVED
#define S_ URI_SUB_DELIM
static const unsigned char uri_class[256] = {
    ['-'] = U_, ['.'] = U_, ['_'] = U_, ['~'] = U_, ['!'] = S_, ['$'] = S_, ['&'] = S_, ['\''] = S_,
    ['('] = S_, [')'] = S_, ['*'] = S_, ['+'] = S_, [','] = S_, [';'] = S_, ['='] = S_, ['0'] = U_,
    ['1'] = U_, ['2'] = U_, ['3'] = U_, ['4'] = U_, ['5'] = U_, ['6'] = U_, ['7'] = U_, ['8'] = U_,
    ['9'] = U_, ['A'] = U_, ['B'] = U_, ['C'] = U_, ['D'] = U_, ['E'] = U_, ['F'] = U_, ['G'] = U_,
    ['H'] = U_, ['I'] = U_, ['J'] = U_, ['K'] = U_, ['L'] = U_, ['M'] = U_, ['N'] = U_, ['O'] = U_,
    ['P'] = U_, ['Q'] = U_, ['R'] = U_, ['S'] = U_, ['T'] = U_, ['U'] = U_, ['V'] = U_, ['W'] = U_,
    ['X'] = U_, ['Y'] = U_, ['Z'] = U_, ['a'] = U_, ['b'] = U_, ['c'] = U_, ['d'] = U_, ['e'] = U_,
    ['f'] = U_, ['g'] = U_, ['h'] = U_, ['i'] = U_, ['j'] = U_, ['k'] = U_, ['l'] = U_, ['m'] = U_,
    ['n'] = U_, ['o'] = U_, ['p'] = U_, ['q'] = U_, ['r'] = U_, ['s'] = U_, ['t'] = U_, ['u'] = U_,
    ['v'] = U_, ['w'] = U_, ['x'] = U_, ['y'] = U_, ['z'] = U_,
};
#undef U_
#undef S_

static int reg_name_char(unsigned char c)
{
    return uri_class[c] != 0;
}

static int unreserved(unsigned char c)
{
    return uri_class[c] & URI_UNRESERVED;
}

int http_valid_host(mm_str_t v)
{
    v = http_trim(v);
    size_t i = 0;
    if (v.n > 0 && v.p[0] == '[') {
        /* IP-literal: IPv6address or IPvFuture, checked for its characters
         * (hex digits, ':', '.', and IPvFuture's "v" and reg-name ones) */
        for (i = 1; i < v.n && v.p[i] != ']'; i++)
            if (!reg_name_char((unsigned char)v.p[i]) && v.p[i] != ':') return 0;
        if (i == v.n || i == 1) return 0;
        i++;
    } else {
        for (; i < v.n && v.p[i] != ':'; i++) {
            unsigned char c = (unsigned char)v.p[i];
            if (c == '%') {
                if (i + 2 >= v.n || mm_hex_val((unsigned char)v.p[i + 1]) < 0 ||
                    mm_hex_val((unsigned char)v.p[i + 2]) < 0)
                    return 0;
                i += 2;
            } else if (!reg_name_char(c)) {
                return 0;
            }
        }
    }
    if (i == v.n) return 1;
    if (v.p[i] != ':') return 0;
    for (i++; i < v.n; i++)
        if (v.p[i] < '0' || v.p[i] > '9') return 0;
    return 1;
}

const char *http_request_head_error(const http_head_t *h, const char *base, int http_major,
                                    int http_minor)
{
    if (h->obs_fold) return "obsolete line folding in a header";
    if (h->empty_name) return "a header line with an empty field name";
    if (h->count[HK_HOST] > 1) return "more than one Host header";
    if (h->count[HK_HOST] == 0 && (http_major > 1 || (http_major == 1 && http_minor >= 1)))
        return "HTTP/1.1 request without a Host header";
    /* RFC 9112 §3.2: a Host with an invalid value is a 400. It is routed on
     * (match.host) and passed on as X-Forwarded-Host, where "a/b" or "a b"
     * would be a way to smuggle a path or a second value past the model
     * server's URL building. */
    if (h->count[HK_HOST] == 1 && !http_valid_host(http_hvalue(h, base, h->first[HK_HOST])))
        return "invalid Host header value";
    if (h->count[HK_TRANSFER_ENC] == 0) return NULL;
    /* RFC 9112 §6.1: HTTP/1.0 has no chunked framing; such a body cannot be
     * delimited safely (nginx answers 400 too). */
    if (http_major == 1 && http_minor == 0) return "Transfer-Encoding in an HTTP/1.0 request";
    /* Only "chunked" alone: modelmux forwards the body with chunked framing
     * and no other coding, so with any other list (llhttp lets "gzip,
     * chunked" through) the upstream would get a body it cannot decode. */
    if (!http_te_chunked_only(h, base)) return "Transfer-Encoding other than chunked";
    return NULL;
}

http_target_form_t http_target(mm_str_t target, mm_str_t *authority, mm_str_t *path)
{
    *authority = (mm_str_t){target.p, 0};
    *path = target;
    /* A fragment is the user agent's business and never sent (RFC 9112
     * §3.2: origin-form and absolute-form have none); llhttp takes one. Kept,
     * "/echo#/../v1/rank" would be matched as one path (the normaliser
     * sees "#" as a path character) and read as another upstream. */
    if (target.n > 0 && memchr(target.p, '#', target.n) != NULL) return HT_INVALID;
    if (target.n > 0 && target.p[0] == '/') return HT_ORIGIN;
    if (target.n == 1 && target.p[0] == '*') return HT_ASTERISK;
    if (target.n < 7 || !mm_str_ieq((mm_str_t){target.p, 7}, "http://")) return HT_INVALID;
    /* llhttp has checked the characters; the authority ends at the path or
     * the query (a fragment is refused above). */
    size_t a = 7, b = a;
    while (b < target.n && target.p[b] != '/' && target.p[b] != '?') b++;
    mm_str_t auth = {target.p + a, b - a};
    /* An empty host is not a valid http URI; userinfo in one is deprecated
     * and a classic phishing device (RFC 9110 §4.2.4): both refused. */
    if (auth.n == 0 || memchr(auth.p, '@', auth.n) != NULL) return HT_INVALID;
    /* It replaces Host (RFC 9112 §3.2.2), so it must be as valid as one. */
    if (!http_valid_host(auth)) return HT_INVALID;
    *authority = auth;
    *path = (mm_str_t){target.p + b, target.n - b};
    return HT_ABSOLUTE;
}

int http_valid_request_id(mm_str_t id)
{
    return mm_valid_reqid(id.p, id.n);
}

/* Every byte value as two lowercase hex digits. */
static const char hex_pairs[513] =
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
    "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f"
    "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f"
    "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"
    "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
    "c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf"
    "e0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";

void http_new_request_id(mm_rng_t *rng, char out[33])
{
    for (int half = 0; half < 2; half++) {
        uint64_t w = mm_rng_next(rng);
        for (int i = 7; i >= 0; i--, w >>= 8) /* low byte last */
            memcpy(out + 16 * half + 2 * i, hex_pairs + 2 * (w & 0xff), 2);
    }
    out[32] = '\0';
}

int http_cookie_get(mm_str_t cookie, const char *name, mm_str_t *out)
{
    size_t nlen = strlen(name), i = 0;
    while (i < cookie.n) {
        size_t j = i;
        while (j < cookie.n && cookie.p[j] != ';') j++;
        mm_str_t pair = http_trim((mm_str_t){cookie.p + i, j - i});
        if (pair.n > nlen && pair.p[nlen] == '=' && memcmp(pair.p, name, nlen) == 0) {
            out->p = pair.p + nlen + 1;
            out->n = pair.n - nlen - 1;
            if (out->n >= 2 && out->p[0] == '"' && out->p[out->n - 1] == '"') {
                out->p++;
                out->n -= 2;
            }
            /* An empty value ("uid=" or uid="") is no key: the next
             * occurrence may have one, as for a header or a query. */
            if (out->n > 0) return 1;
        }
        i = j + 1;
    }
    return 0;
}

/* application/x-www-form-urlencoded decoding of s into out (at least s.n
 * bytes): "%XX" is the byte XX, '+' a space; a '%' not followed by two hex
 * digits stays as it is. Returns the decoded length. */
static size_t form_decode(mm_str_t s, char *out)
{
    size_t w = 0;
    for (size_t i = 0; i < s.n; i++) {
        int hi, lo;
        if (s.p[i] == '%' && i + 2 < s.n && (hi = mm_hex_val((unsigned char)s.p[i + 1])) >= 0 &&
            (lo = mm_hex_val((unsigned char)s.p[i + 2])) >= 0) {
            out[w++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            out[w++] = s.p[i] == '+' ? ' ' : s.p[i];
        }
    }
    return w;
}

int http_query_get(mm_str_t url, const char *name, char *buf, size_t cap, mm_str_t *out)
{
    const char *q = memchr(url.p, '?', url.n);
    if (q == NULL) return 0;
    size_t nlen = strlen(name);
    const char *end = url.p + url.n, *p = q + 1;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        if (amp == NULL) amp = end;
        const char *eq = memchr(p, '=', (size_t)(amp - p));
        /* Names and values are compared and hashed decoded, as every web
         * framework reads them: "?u%69d=a%20b", "?uid=a+b" and "?uid=a b"
         * are one user (and the same as "X-User-Id: a b"). A parameter
         * without '=' or with an empty value is no key; the first one with
         * a value wins, as for a repeated header. */
        if (eq != NULL && eq + 1 < amp) {
            mm_str_t rn = {p, (size_t)(eq - p)}, rv = {eq + 1, (size_t)(amp - eq - 1)};
            char nb[3 * 128];
            int same = 0;
            if (rn.n <= sizeof(nb)) {
                size_t dn = form_decode(rn, nb);
                same = dn == nlen && memcmp(nb, name, nlen) == 0;
            }
            if (same) {
                if (rv.n > cap) {
                    *out = rv; /* too long to decode here: hashed as sent */
                } else {
                    out->p = buf;
                    out->n = form_decode(rv, buf);
                }
                return 1;
            }
        }
        p = amp + 1;
    }
    return 0;
}

/* Most paths need nothing done: no escape, no empty, "." or ".." segment
 * (every such segment starts as "//" or "/."). One cheap pass for those. */
static int path_is_normal(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '%') return 0;
        if (p[i] == '/' && i + 1 < n && (p[i + 1] == '/' || p[i + 1] == '.')) return 0;
    }
    return 1;
}

size_t http_normalize_path(char *p, size_t n)
{
    if (n == 0 || p[0] != '/') return n; /* not a path: nothing to do */
    if (path_is_normal(p, n)) return n;
    /* 1. Percent-decode unreserved characters ("%72" is 'r', "%2e" is '.'),
     *    and write the hex digits of the other escapes in uppercase
     *    (RFC 3986 §6.2.2.1-2). "%2F" stays encoded: it is data, not a
     *    separator (Envoy's default; a model server that decodes it into a
     *    '/' before resolving "..", would be broken on its own). */
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        int hi, lo;
        if (p[i] == '%' && i + 2 < n && (hi = mm_hex_val((unsigned char)p[i + 1])) >= 0 &&
            (lo = mm_hex_val((unsigned char)p[i + 2])) >= 0) {
            int c = hi * 16 + lo;
            if (unreserved(c)) {
                p[w++] = (char)c;
            } else {
                static const char hex[] = "0123456789ABCDEF";
                p[w++] = '%';
                p[w++] = hex[hi];
                p[w++] = hex[lo];
            }
            i += 2;
        } else {
            p[w++] = p[i];
        }
    }
    n = w;
    /* 2. Merge runs of '/' (nginx's merge_slashes) and remove "." and ".."
     *    segments (RFC 3986 §5.2.4; ".." at the root stays at the root).
     *    In place: the output never overtakes the input. */
    size_t i = 0;
    w = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && p[j] == '/') j++;
        size_t k = j;
        while (k < n && p[k] != '/') k++;
        size_t len = k - j;
        if (len == 1 && p[j] == '.') {
            if (k == n) p[w++] = '/';
        } else if (len == 2 && p[j] == '.' && p[j + 1] == '.') {
            while (w > 0 && p[w - 1] != '/') w--;
            if (w > 0) w--;
            if (k == n) p[w++] = '/';
        } else {
            p[w++] = '/';
            memmove(p + w, p + j, len);
            w += len;
        }
        i = k;
    }
    if (w == 0) p[w++] = '/';
    return w;
}

mm_str_t http_url_path(mm_str_t url)
{
    const char *q = memchr(url.p, '?', url.n);
    return q ? (mm_str_t){url.p, (size_t)(q - url.p)} : url;
}

const char *http_reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 206:
        return "Partial Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 304:
        return "Not Modified";
    case 307:
        return "Temporary Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}

void http_date_line(mm_buf_t *b)
{
    static const char days[] = "SunMonTueWedThuFriSat";
    static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    static _Thread_local time_t at = -1;
    static _Thread_local char line[40];
    static _Thread_local size_t len;
    time_t now = time(NULL);
    if (now != at) {
        struct tm tm;
        if (gmtime_r(&now, &tm) == NULL) return;
        int n = snprintf(line, sizeof(line), "Date: %.3s, %02d %.3s %04d %02d:%02d:%02d GMT\r\n",
                         days + 3 * tm.tm_wday, tm.tm_mday, months + 3 * tm.tm_mon,
                         tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
        if (n <= 0 || (size_t)n >= sizeof(line)) return;
        len = (size_t)n;
        at = now;
    }
    mm_buf_append(b, line, len);
}

void http_json_response(mm_buf_t *b, int status, const char *body, size_t body_len,
                        mm_str_t request_id, int keep_alive, const char *extra_headers)
{
    mm_buf_printf(b, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n",
                  status, http_reason(status), body_len);
    http_date_line(b);
    if (request_id.n) {
        mm_buf_lit(b, "X-Request-Id: ");
        mm_buf_str(b, request_id);
        mm_buf_lit(b, "\r\n");
    }
    http_connection_line(b, keep_alive);
    if (extra_headers) mm_buf_cstr(b, extra_headers);
    mm_buf_lit(b, "\r\n");
    mm_buf_append(b, body, body_len);
}

void http_error_response(mm_buf_t *b, int status, const char *code, const char *message,
                         mm_str_t request_id, int keep_alive, const char *extra_headers)
{
    mm_buf_t body;
    mm_buf_init(&body);
    mm_buf_lit(&body, "{\"error\":\"");
    mm_buf_cstr(&body, code);
    mm_buf_lit(&body, "\",\"message\":\"");
    mm_buf_json_str(&body, message, strlen(message));
    mm_buf_lit(&body, "\",\"request_id\":");
    if (request_id.n) {
        mm_buf_lit(&body, "\"");
        mm_buf_json_str(&body, request_id.p, request_id.n);
        mm_buf_lit(&body, "\"}");
    } else {
        mm_buf_lit(&body, "null}");
    }
    char extra[256] = "";
    if (status == 503)
        snprintf(extra, sizeof(extra), "Retry-After: 1\r\n%s", extra_headers ? extra_headers : "");
    else if (extra_headers)
        snprintf(extra, sizeof(extra), "%s", extra_headers);
    http_json_response(b, status, body.p ? body.p : "", body.len, request_id, keep_alive, extra);
    mm_buf_free(&body);
}
