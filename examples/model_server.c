/* model_server.c — a tiny, fast, configurable fake model server.
 *
 * The demo, the integration tests and the benchmarks need model servers whose
 * behaviour they control: latency, jitter, error rate, the score and ranked
 * list they return, plus a few test endpoints that make a proxy's behaviour
 * observable (what headers and body arrived, status codes, large streamed
 * responses, per-server request and connection counters). One single-threaded
 * libuv loop, llhttp for request parsing.
 *
 *   model_server [--host H] [--port N] [--name NAME] [--latency-ms N]
 *                [--jitter-ms N] [--error-rate P] [--score X] [--seed N]
 *                [--list N] [--help]
 *
 * On startup it prints exactly one line, "model_server NAME listening on
 * HOST:PORT" (the real port when --port 0), and flushes stdout.
 *
 * Endpoints (routing looks at the path without the query string):
 *   /_stats       {"requests":N,"connections_accepted":M,"connections_open":K};
 *                 requests counts every parsed request except /_stats ones.
 *   /echo[/...]   what arrived: method, path (with query), version, headers in
 *                 order as [[name,value],...], body_len and the body's FNV-1a
 *                 64-bit hash as 16 hex digits (so 10 MiB bodies can be checked
 *                 without echoing them), model.
 *   /status/CODE  that status (200-599) with {"model":NAME,"status":CODE};
 *                 204 and 304 come without body and without Content-Length.
 *   /stream/BYTES 200, Transfer-Encoding: chunked, BYTES bytes where byte i is
 *                 'a' + i % 26, in chunks of up to 16 KiB; the next chunk is
 *                 written from the previous write's callback (backpressure).
 *   /sleep/MS     the default answer after MS ms (instead of --latency-ms).
 *   anything else the default answer
 *                 {"model":NAME,"score":X,"request_id":X-Request-Id or null}
 *                 and, with --list N, "items":[{"id":"item-K","score":S},...].
 * --latency-ms/--jitter-ms delay every answer except /_stats and /sleep.
 * --error-rate applies to model answers only (default and /sleep): a hit is
 * 500 {"model":NAME,"error":"injected"}; the test endpoints never fail.
 *
 * The --list scheme: the N items are the first N of a permutation of item-1 ..
 * item-2N (Fisher-Yates driven by xoshiro256** seeded with
 * splitmix64(fnv1a64(NAME) ^ seed)), ranked in that order with scores
 * (N - r) / N for rank r = 0..N-1. The list is the same for every request.
 * Two servers with different names draw from the same 2N items, so their
 * lists overlap (by N/2 items on average) without being equal; the same name
 * and seed always give the same list.
 *
 * HTTP: keep-alive, pipelining (answers strictly in request order), chunked
 * and Content-Length request bodies (read fully, never stored), HTTP/1.0,
 * "Connection: close", "Expect: 100-continue". Every answer but /stream and
 * 204/304 carries Content-Length. Malformed requests get 400 (431/414 for
 * oversized heads) and the connection is closed after a lingering read.
 *
 * Latency never blocks: each connection has one uv_timer armed for the
 * deadline (arrival + delay) of its oldest pending request. Since answers
 * leave in order anyway, this gives every pipelined request its own latency
 * measured from its arrival, at the cost of one timer per connection instead
 * of one per request. Responses are batched into one write per loop turn per
 * connection, and only one write is in flight per connection.
 *
 * Randomness (jitter, error injection, the list) comes from our own
 * xoshiro256**, never rand(); --seed N (default 1) and the name make a run
 * reproducible. SIGTERM/SIGINT close the listener and every connection and
 * exit 0. Every handle is freed in its close callback. */
#include <llhttp.h>
#include <uv.h>

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http.h" /* http_reason: the status lines modelmux itself writes */

#define READ_BUF_SIZE  65536
#define STREAM_CHUNK   16384
#define MAX_URL_BYTES  (64 * 1024)
#define MAX_HEAD_BYTES (256 * 1024) /* request line + headers */
#define MAX_HEADERS    1024
#define MAX_QUEUE      256 /* pending pipelined requests; above it we stop reading */
#define OBUF_BATCH     (256 * 1024)
#define OBUF_KEEP      (1024 * 1024) /* larger output buffers are freed after use */
#define SPARE_BUF_KEEP (64 * 1024)
#define LINGER_MS      2000
#define MAX_DELAY_MS   3600000ULL
#define MAX_LIST       1000
#define MAX_STREAM     (1ULL << 40)
#define LISTEN_BACKLOG 4096
#define NAME_MAX_LEN   64
#define FNV_OFFSET     0xcbf29ce484222325ULL
#define FNV_PRIME      0x100000001b3ULL

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* ------------------------------------------------------------------ buffers */

/* A growable byte buffer. Appends after an allocation failure are no-ops and
 * leave err set, so a response is built without checking every append. */
typedef struct {
    char *p;
    size_t len, cap;
    int err;
} buf_t;

static int buf_reserve(buf_t *b, size_t extra)
{
    if (b->err) return -1;
    if (b->len + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 512;
    while (cap < b->len + extra) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->err = 1;
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static void buf_add(buf_t *b, const void *p, size_t n)
{
    if (n == 0 || buf_reserve(b, n) < 0) return;
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

static void buf_str(buf_t *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

static void buf_putc(buf_t *b, char ch)
{
    if (buf_reserve(b, 1) < 0) return;
    b->p[b->len++] = ch;
}

static void buf_u64(buf_t *b, uint64_t v)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof tmp, "%" PRIu64, v);
    buf_add(b, tmp, (size_t)n);
}

static void buf_free(buf_t *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* Length of the valid UTF-8 sequence at s (strict: no overlongs, no
 * surrogates, at most U+10FFFF), or 0 if the bytes there are not one. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    if (c >= 0xC2 && c <= 0xDF) return (n >= 2 && (s[1] & 0xC0) == 0x80) ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) return 0;
        if (c == 0xE0 && s[1] < 0xA0) return 0;
        if (c == 0xED && s[1] > 0x9F) return 0;
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80)
            return 0;
        if (c == 0xF0 && s[1] < 0x90) return 0;
        if (c == 0xF4 && s[1] > 0x8F) return 0;
        return 4;
    }
    return 0;
}

/* Appends s as a JSON string. Valid UTF-8 passes through; quotes, backslash,
 * control characters and bytes that are not valid UTF-8 (obs-text in a header
 * value) become escapes, the latter read as Latin-1 (\u00XX), so the output
 * is always valid JSON. */
static void buf_json_str(buf_t *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0;
    buf_putc(b, '"');
    while (i < n) {
        unsigned c = u[i];
        size_t k = 1;
        if (c >= 0x20 && c != '"' && c != '\\' && c < 0x7F) {
            i++;
            continue;
        }
        if (c >= 0x80 && (k = utf8_len(u + i, n - i)) > 0) {
            i += k;
            continue;
        }
        buf_add(b, s + run, i - run);
        char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
        if (c == '"' || c == '\\') {
            esc[1] = (char)c;
            buf_add(b, esc, 2);
        } else if (c == '\n' || c == '\r' || c == '\t') {
            esc[1] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't';
            buf_add(b, esc, 2);
        } else {
            buf_add(b, esc, 6);
        }
        run = ++i;
    }
    buf_add(b, s + run, n - run);
    buf_putc(b, '"');
}

/* ------------------------------------------------------------------ random */

typedef struct {
    uint64_t s[4];
} rng_t;

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void rng_seed(rng_t *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

/* xoshiro256** (Blackman & Vigna). */
static uint64_t rng_next(rng_t *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

static double rng_uniform(rng_t *r)
{
    return (double)(rng_next(r) >> 11) * 0x1.0p-53;
}

/* Uniform in [0, n), unbiased by rejection; n > 0. */
static uint64_t rng_below(rng_t *r, uint64_t n)
{
    uint64_t limit = UINT64_MAX - UINT64_MAX % n, x;
    do x = rng_next(r);
    while (x >= limit);
    return x % n;
}

static uint64_t fnv1a64(uint64_t h, const void *p, size_t n)
{
    const unsigned char *u = p;
    for (size_t i = 0; i < n; i++) h = (h ^ u[i]) * FNV_PRIME;
    return h;
}

/* ------------------------------------------------------------------ types */

typedef enum { K_DEFAULT, K_ECHO, K_STATUS, K_STREAM, K_SLEEP, K_STATS, K_BAD } kind_t;

typedef struct {
    uint32_t name_off, name_len, val_off, val_len;
} hdr_t;

/* One request, from its first byte until its answer is formatted. The URL and
 * the header names and values are copied into buf (they may arrive split
 * across reads); hdrs indexes them. */
typedef struct req_s {
    struct req_s *next;
    buf_t buf;
    hdr_t *hdrs;
    size_t nhdrs, hdr_cap;
    size_t url_len;
    size_t tok_off; /* start of the header name or value being read */
    int tok_open;
    size_t name_off, name_len;
    long reqid; /* index in hdrs of X-Request-Id, or -1 */
    kind_t kind;
    uint64_t arg; /* status code, stream bytes or sleep ms */
    int status;   /* K_BAD: 400, 414 or 431 */
    const char *errmsg;
    uint8_t method, http_major, http_minor;
    int keep_alive, inject_error, head_only;
    uint64_t body_len, body_hash;
    uint64_t deadline; /* loop time (ms) at which the answer may leave */
} req_t;

typedef struct conn_s {
    uv_tcp_t tcp;
    uv_timer_t timer; /* deadline of the oldest pending request, then linger */
    uv_write_t wr;    /* the one write in flight */
    uv_shutdown_t sd;
    llhttp_t parser;
    struct conn_s *prev, *next;
    req_t *cur;         /* being parsed */
    req_t *head, *tail; /* parsed, waiting for their answer, in order */
    size_t nqueued;
    req_t *spare; /* one recycled request: no allocation per request */
    buf_t obuf;   /* formatted answers being written */
    int handles;  /* open handles; the connection is freed when it reaches 0 */
    int err_status;
    unsigned writing : 1, closing : 1, reading : 1, read_closed : 1, read_eof : 1,
        close_after_write : 1, lingering : 1, stream_active : 1;
    uint64_t stream_left, stream_off;
    char chunk_hdr[24];
} conn_t;

/* The one server context: options, precomputed bodies, counters. */
static struct {
    uv_loop_t loop;
    uv_tcp_t listener;
    uv_signal_t sigterm, sigint;
    llhttp_settings_t settings;
    const char *host;
    unsigned port;
    const char *name;
    uint64_t latency_ms, jitter_ms, seed, list_n;
    double error_rate, score;
    rng_t rng;
    buf_t body;         /* scratch for the body being formatted */
    buf_t default_pre;  /* {"model":NAME,"score":X,"request_id": */
    buf_t default_post; /* } or ,"items":[...]} */
    buf_t error_body;   /* {"model":NAME,"error":"injected"} */
    conn_t *conns;
    uint64_t requests, accepted, open;
    int stopping;
    char readbuf[READ_BUF_SIZE];
    char pattern[STREAM_CHUNK + 26];
} srv;

static char s_crlf[] = "\r\n";
static char s_last_chunk[] = "0\r\n\r\n";
static char s_crlf_last_chunk[] = "\r\n0\r\n\r\n";
static char s_continue[] = "HTTP/1.1 100 Continue\r\n\r\n";

static void conn_process(conn_t *c);
static void conn_close(conn_t *c);

/* ------------------------------------------------------------------ requests */

static req_t *req_new(conn_t *c)
{
    req_t *r = c->spare;
    if (r) {
        c->spare = NULL;
    } else if (!(r = calloc(1, sizeof *r))) {
        return NULL;
    }
    buf_t b = r->buf;
    hdr_t *h = r->hdrs;
    size_t hcap = r->hdr_cap;
    memset(r, 0, sizeof *r);
    r->buf = b;
    r->buf.len = 0;
    r->hdrs = h;
    r->hdr_cap = hcap;
    r->reqid = -1;
    r->body_hash = FNV_OFFSET;
    return r;
}

static void req_free(req_t *r)
{
    if (!r) return;
    buf_free(&r->buf);
    free(r->hdrs);
    free(r);
}

static void req_release(conn_t *c, req_t *r)
{
    if (!c->spare && !r->buf.err && r->buf.cap <= SPARE_BUF_KEEP && r->hdr_cap <= 64) {
        c->spare = r;
        return;
    }
    req_free(r);
}

static void req_enqueue(conn_t *c, req_t *r)
{
    r->next = NULL;
    if (c->tail)
        c->tail->next = r;
    else
        c->head = r;
    c->tail = r;
    c->nqueued++;
}

static int span_eq(const char *p, size_t n, const char *lit)
{
    size_t l = strlen(lit);
    return n == l && memcmp(p, lit, l) == 0;
}

static int span_ieq(const char *p, size_t n, const char *lit)
{
    size_t l = strlen(lit);
    return n == l && strncasecmp(p, lit, l) == 0;
}

/* Parses all-digit s[0..n) into *out if it is at most max. */
static int span_u64(const char *s, size_t n, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;
    if (n == 0 || n > 20) return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10) return -1;
        v = v * 10 + d;
    }
    if (v > max) return -1;
    *out = v;
    return 0;
}

static void bad_param(req_t *r, const char *msg)
{
    r->kind = K_BAD;
    r->status = 400;
    r->errmsg = msg;
}

/* Picks the endpoint from the request target's path. */
static void route(req_t *r)
{
    const char *p = r->buf.p;
    size_t n = r->url_len;
    size_t skip = 0; /* absolute-form target: route on its path */
    if (n >= 7 && strncasecmp(p, "http://", 7) == 0)
        skip = 7;
    else if (n >= 8 && strncasecmp(p, "https://", 8) == 0)
        skip = 8;
    if (skip) {
        const char *s = memchr(p + skip, '/', n - skip);
        if (!s) {
            r->kind = K_DEFAULT;
            return;
        }
        n -= (size_t)(s - p);
        p = s;
    }
    const char *q = memchr(p, '?', n);
    if (q) n = (size_t)(q - p);

    r->kind = K_DEFAULT;
    if (span_eq(p, n, "/_stats")) {
        r->kind = K_STATS;
    } else if (span_eq(p, n, "/echo") || (n > 5 && memcmp(p, "/echo/", 6) == 0)) {
        r->kind = K_ECHO;
    } else if (n >= 8 && memcmp(p, "/status/", 8) == 0) {
        r->kind = K_STATUS;
        if (span_u64(p + 8, n - 8, 599, &r->arg) < 0 || r->arg < 200)
            bad_param(r, "status must be 200-599");
    } else if (n >= 8 && memcmp(p, "/stream/", 8) == 0) {
        r->kind = K_STREAM;
        if (span_u64(p + 8, n - 8, MAX_STREAM, &r->arg) < 0)
            bad_param(r, "stream length must be 0-2^40 bytes");
    } else if (n >= 7 && memcmp(p, "/sleep/", 7) == 0) {
        r->kind = K_SLEEP;
        if (span_u64(p + 7, n - 7, MAX_DELAY_MS, &r->arg) < 0)
            bad_param(r, "sleep must be 0-3600000 ms");
    }
}

/* ------------------------------------------------------------------ parser callbacks */

static req_t *cur_req(llhttp_t *p)
{
    return ((conn_t *)p->data)->cur;
}

static int head_limit(llhttp_t *p, req_t *r, size_t n, size_t max, int status)
{
    if (r->buf.len + n <= max) return 0;
    ((conn_t *)p->data)->err_status = status;
    return -1;
}

static int on_message_begin(llhttp_t *p)
{
    conn_t *c = p->data;
    req_free(c->cur);
    c->cur = req_new(c);
    return c->cur ? 0 : -1;
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    req_t *r = cur_req(p);
    if (head_limit(p, r, n, MAX_URL_BYTES, 414) < 0) return -1;
    buf_add(&r->buf, at, n);
    return r->buf.err ? -1 : 0;
}

static int on_url_complete(llhttp_t *p)
{
    req_t *r = cur_req(p);
    r->url_len = r->buf.len;
    return 0;
}

static int on_header_token(llhttp_t *p, const char *at, size_t n)
{
    req_t *r = cur_req(p);
    if (head_limit(p, r, n, MAX_HEAD_BYTES, 431) < 0) return -1;
    if (!r->tok_open) {
        r->tok_open = 1;
        r->tok_off = r->buf.len;
    }
    buf_add(&r->buf, at, n);
    return r->buf.err ? -1 : 0;
}

static int on_header_field_complete(llhttp_t *p)
{
    req_t *r = cur_req(p);
    r->name_off = r->tok_open ? r->tok_off : r->buf.len;
    r->name_len = r->buf.len - r->name_off;
    r->tok_open = 0;
    return 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    conn_t *c = p->data;
    req_t *r = c->cur;
    size_t voff = r->tok_open ? r->tok_off : r->buf.len;
    r->tok_open = 0;
    if (r->nhdrs == MAX_HEADERS) {
        c->err_status = 431;
        return -1;
    }
    if (r->nhdrs == r->hdr_cap) {
        size_t cap = r->hdr_cap ? r->hdr_cap * 2 : 16;
        hdr_t *h = realloc(r->hdrs, cap * sizeof *h);
        if (!h) return -1;
        r->hdrs = h;
        r->hdr_cap = cap;
    }
    hdr_t *h = &r->hdrs[r->nhdrs];
    h->name_off = (uint32_t)r->name_off;
    h->name_len = (uint32_t)r->name_len;
    h->val_off = (uint32_t)voff;
    h->val_len = (uint32_t)(r->buf.len - voff);
    if (r->reqid < 0 && span_ieq(r->buf.p + r->name_off, r->name_len, "x-request-id"))
        r->reqid = (long)r->nhdrs;
    r->nhdrs++;
    return 0;
}

static void conn_write(conn_t *c);

/* Sends "100 Continue" when the client waits for it, but only when nothing
 * else is pending on the connection (interim answers must stay in order; a
 * client that gets no 100 sends its body after its own timeout anyway). */
static void maybe_continue(conn_t *c, req_t *r)
{
    if (r->http_major != 1 || r->http_minor < 1 || c->writing || c->head || c->obuf.len) return;
    for (size_t i = 0; i < r->nhdrs; i++) {
        hdr_t *h = &r->hdrs[i];
        if (span_ieq(r->buf.p + h->name_off, h->name_len, "expect") &&
            span_ieq(r->buf.p + h->val_off, h->val_len, "100-continue")) {
            buf_add(&c->obuf, s_continue, sizeof s_continue - 1);
            conn_write(c);
            return;
        }
    }
}

static int on_headers_complete(llhttp_t *p)
{
    conn_t *c = p->data;
    req_t *r = c->cur;
    r->method = llhttp_get_method(p);
    r->http_major = llhttp_get_http_major(p);
    r->http_minor = llhttp_get_http_minor(p);
    r->head_only = r->method == HTTP_HEAD;
    route(r);
    maybe_continue(c, r);
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    req_t *r = cur_req(p);
    r->body_len += n;
    if (r->kind == K_ECHO) r->body_hash = fnv1a64(r->body_hash, at, n);
    return 0;
}

static uint64_t request_delay(req_t *r)
{
    if (r->kind == K_STATS || r->kind == K_BAD) return 0;
    if (r->kind == K_SLEEP) return r->arg;
    uint64_t d = srv.latency_ms;
    if (srv.jitter_ms) d += rng_below(&srv.rng, srv.jitter_ms + 1);
    return d;
}

static int on_message_complete(llhttp_t *p)
{
    conn_t *c = p->data;
    req_t *r = c->cur;
    c->cur = NULL;
    r->keep_alive = llhttp_should_keep_alive(p);
    if (r->kind != K_STATS) srv.requests++;
    if ((r->kind == K_DEFAULT || r->kind == K_SLEEP) && srv.error_rate > 0)
        r->inject_error = rng_uniform(&srv.rng) < srv.error_rate;
    r->deadline = uv_now(&srv.loop) + request_delay(r);
    req_enqueue(c, r);
    if (!r->keep_alive) {
        /* the last request on this connection: read no further */
        c->read_closed = 1;
        return HPE_PAUSED;
    }
    return 0;
}

/* ------------------------------------------------------------------ answers */

/* Status line and headers. clen < 0: no Content-Length (204/304, chunked). */
static void put_head(buf_t *o, req_t *r, int status, long long clen, int chunked)
{
    char tmp[160];
    int n = snprintf(tmp, sizeof tmp, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n",
                     status, http_reason(status));
    buf_add(o, tmp, (size_t)n);
    if (clen >= 0) {
        n = snprintf(tmp, sizeof tmp, "Content-Length: %lld\r\n", clen);
        buf_add(o, tmp, (size_t)n);
    }
    if (chunked) buf_str(o, "Transfer-Encoding: chunked\r\n");
    if (!r->keep_alive)
        buf_str(o, "Connection: close\r\n");
    else if (r->http_major == 1 && r->http_minor == 0)
        buf_str(o, "Connection: keep-alive\r\n");
    buf_add(o, s_crlf, 2);
}

static void put_answer(conn_t *c, req_t *r, int status, const buf_t *body)
{
    put_head(&c->obuf, r, status, (long long)body->len, 0);
    if (!r->head_only) buf_add(&c->obuf, body->p, body->len);
}

static void format_echo(buf_t *b, req_t *r)
{
    char tmp[64];
    buf_str(b, "{\"method\":");
    const char *m = llhttp_method_name((llhttp_method_t)r->method);
    buf_json_str(b, m, strlen(m));
    buf_str(b, ",\"path\":");
    buf_json_str(b, r->buf.p, r->url_len);
    int n = snprintf(tmp, sizeof tmp, ",\"version\":\"%u.%u\",\"headers\":[", r->http_major,
                     r->http_minor);
    buf_add(b, tmp, (size_t)n);
    for (size_t i = 0; i < r->nhdrs; i++) {
        hdr_t *h = &r->hdrs[i];
        buf_str(b, i ? ",[" : "[");
        buf_json_str(b, r->buf.p + h->name_off, h->name_len);
        buf_putc(b, ',');
        buf_json_str(b, r->buf.p + h->val_off, h->val_len);
        buf_putc(b, ']');
    }
    n = snprintf(tmp, sizeof tmp, "],\"body_len\":%" PRIu64 ",\"body_fnv1a64\":\"%016" PRIx64 "\"",
                 r->body_len, r->body_hash);
    buf_add(b, tmp, (size_t)n);
    buf_str(b, ",\"model\":\"");
    buf_str(b, srv.name);
    buf_str(b, "\"}");
}

/* Formats r's answer into c->obuf. A /stream answer gets its head here and
 * its chunks from conn_write. */
static void build_answer(conn_t *c, req_t *r)
{
    buf_t *b = &srv.body;
    b->len = 0;
    switch (r->kind) {
    case K_DEFAULT:
    case K_SLEEP:
        if (r->inject_error) {
            put_answer(c, r, 500, &srv.error_body);
            return;
        }
        buf_add(b, srv.default_pre.p, srv.default_pre.len);
        if (r->reqid >= 0) {
            hdr_t *h = &r->hdrs[r->reqid];
            buf_json_str(b, r->buf.p + h->val_off, h->val_len);
        } else {
            buf_str(b, "null");
        }
        buf_add(b, srv.default_post.p, srv.default_post.len);
        put_answer(c, r, 200, b);
        return;
    case K_ECHO:
        format_echo(b, r);
        put_answer(c, r, 200, b);
        return;
    case K_STATUS:
        if (r->arg == 204 || r->arg == 304) {
            put_head(&c->obuf, r, (int)r->arg, -1, 0);
            return;
        }
        buf_str(b, "{\"model\":\"");
        buf_str(b, srv.name);
        buf_str(b, "\",\"status\":");
        buf_u64(b, r->arg);
        buf_putc(b, '}');
        put_answer(c, r, (int)r->arg, b);
        return;
    case K_STREAM:
        put_head(&c->obuf, r, 200, -1, 1);
        c->stream_active = !r->head_only;
        c->stream_left = r->arg;
        c->stream_off = 0;
        return;
    case K_STATS:
        buf_str(b, "{\"requests\":");
        buf_u64(b, srv.requests);
        buf_str(b, ",\"connections_accepted\":");
        buf_u64(b, srv.accepted);
        buf_str(b, ",\"connections_open\":");
        buf_u64(b, srv.open);
        buf_putc(b, '}');
        put_answer(c, r, 200, b);
        return;
    case K_BAD:
        buf_str(b, "{\"model\":\"");
        buf_str(b, srv.name);
        buf_str(b, r->status == 431   ? "\",\"error\":\"headers_too_large\",\"message\":"
                   : r->status == 414 ? "\",\"error\":\"uri_too_long\",\"message\":"
                                      : "\",\"error\":\"bad_request\",\"message\":");
        buf_json_str(b, r->errmsg, strlen(r->errmsg));
        buf_putc(b, '}');
        put_answer(c, r, r->status, b);
        return;
    }
}

/* ------------------------------------------------------------------ connection I/O */

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    /* One buffer for the whole loop: on_read parses it completely and copies
     * what it keeps, so no read buffer has to live per connection. */
    (void)h;
    (void)hint;
    *b = uv_buf_init(srv.readbuf, sizeof srv.readbuf);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b);

static void read_on(conn_t *c)
{
    if (c->reading || c->closing) return;
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0) c->reading = 1;
}

static void read_off(conn_t *c)
{
    if (!c->reading) return;
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
}

static void on_conn_closed(uv_handle_t *h)
{
    conn_t *c = h->data;
    if (--c->handles > 0) return;
    req_free(c->cur);
    req_free(c->spare);
    while (c->head) {
        req_t *r = c->head;
        c->head = r->next;
        req_free(r);
    }
    buf_free(&c->obuf);
    free(c);
}

static void conn_close(conn_t *c)
{
    if (c->closing) return;
    c->closing = 1;
    c->reading = 0;
    if (c->prev)
        c->prev->next = c->next;
    else
        srv.conns = c->next;
    if (c->next) c->next->prev = c->prev;
    srv.open--;
    uv_close((uv_handle_t *)&c->timer, on_conn_closed);
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

static void on_linger_timeout(uv_timer_t *t)
{
    conn_close(container_of(t, conn_t, timer));
}

static void on_shutdown(uv_shutdown_t *sd, int status)
{
    conn_t *c = container_of(sd, conn_t, sd);
    if (c->closing) return;
    if (status < 0 || c->read_eof) {
        conn_close(c);
        return;
    }
    /* Read (and drop) what the client still sends until it closes, so that
     * unread bytes do not make the kernel reset the connection before the
     * client has read our last answer. Bounded by LINGER_MS. */
    read_on(c);
    uv_timer_start(&c->timer, on_linger_timeout, LINGER_MS, 0);
}

static void conn_linger(conn_t *c)
{
    c->lingering = 1;
    uv_timer_stop(&c->timer);
    if (uv_shutdown(&c->sd, (uv_stream_t *)&c->tcp, on_shutdown) < 0) conn_close(c);
}

static void on_write(uv_write_t *w, int status)
{
    conn_t *c = container_of(w, conn_t, wr);
    c->writing = 0;
    if (c->closing) return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    c->obuf.len = 0;
    if (c->obuf.cap > OBUF_KEEP) buf_free(&c->obuf);
    if (c->stream_active) {
        conn_write(c);
        return;
    }
    if (c->close_after_write) {
        conn_linger(c);
        return;
    }
    conn_process(c);
}

/* The next piece of a /stream answer: one chunk (size line, pattern bytes,
 * CRLF), the last one followed by the terminating chunk. The bytes point into
 * the static pattern, so a 10 MiB stream copies nothing. */
static unsigned stream_piece(conn_t *c, uv_buf_t *b)
{
    if (c->stream_left == 0) {
        c->stream_active = 0;
        b[0] = uv_buf_init(s_last_chunk, sizeof s_last_chunk - 1);
        return 1;
    }
    size_t n = c->stream_left < STREAM_CHUNK ? (size_t)c->stream_left : STREAM_CHUNK;
    int hl = snprintf(c->chunk_hdr, sizeof c->chunk_hdr, "%zx\r\n", n);
    b[0] = uv_buf_init(c->chunk_hdr, (unsigned)hl);
    b[1] = uv_buf_init(srv.pattern + c->stream_off % 26, (unsigned)n);
    c->stream_left -= n;
    c->stream_off += n;
    if (c->stream_left == 0) {
        c->stream_active = 0;
        b[2] = uv_buf_init(s_crlf_last_chunk, sizeof s_crlf_last_chunk - 1);
    } else {
        b[2] = uv_buf_init(s_crlf, 2);
    }
    return 3;
}

/* Writes c->obuf and, while a /stream answer is active, its next piece. */
static void conn_write(conn_t *c)
{
    uv_buf_t bufs[4];
    unsigned n = 0;
    if (c->obuf.len) bufs[n++] = uv_buf_init(c->obuf.p, (unsigned)c->obuf.len);
    if (c->stream_active) n += stream_piece(c, bufs + n);
    if (n == 0) return;
    c->writing = 1;
    if (uv_write(&c->wr, (uv_stream_t *)&c->tcp, bufs, n, on_write) < 0) {
        c->writing = 0;
        conn_close(c);
    }
}

static void on_deadline(uv_timer_t *t)
{
    conn_process(container_of(t, conn_t, timer));
}

/* Answers every pending request whose deadline has passed, in order, in one
 * write; arms the timer for the first one that is not due yet. */
static void conn_process(conn_t *c)
{
    if (c->closing || c->writing || c->lingering || c->close_after_write) return;
    uint64_t now = uv_now(&srv.loop);
    while (c->head && c->obuf.len < OBUF_BATCH) {
        req_t *r = c->head;
        if (r->deadline > now) {
            if (c->obuf.len == 0) uv_timer_start(&c->timer, on_deadline, r->deadline - now, 0);
            break;
        }
        c->head = r->next;
        if (!c->head) c->tail = NULL;
        c->nqueued--;
        build_answer(c, r);
        if (!r->keep_alive) c->close_after_write = 1;
        req_release(c, r);
        if (c->close_after_write || c->stream_active) break;
    }
    if (c->obuf.err || srv.body.err) {
        srv.body.err = 0;
        buf_free(&srv.body);
        conn_close(c);
        return;
    }
    if (!c->reading && !c->read_closed && !c->read_eof && c->nqueued < MAX_QUEUE / 2) read_on(c);
    if (c->obuf.len || c->stream_active) {
        conn_write(c);
    } else if (c->read_eof && !c->head) {
        conn_close(c);
    }
}

/* A request we cannot parse: queue a 400 (431/414) after the answers still
 * due, read nothing more, close after writing it. */
static void bad_request(conn_t *c, const char *why)
{
    req_t *r = c->cur;
    c->cur = NULL;
    if (!r && !(r = req_new(c))) {
        conn_close(c);
        return;
    }
    r->kind = K_BAD;
    r->status = c->err_status ? c->err_status : 400;
    r->errmsg = c->err_status == 431   ? "request headers too large"
                : c->err_status == 414 ? "request target too long"
                                       : why;
    r->keep_alive = 0;
    r->head_only = 0;
    r->http_major = 1;
    r->http_minor = 1;
    r->deadline = 0;
    req_enqueue(c, r);
    c->read_closed = 1;
    read_off(c);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    conn_t *c = s->data;
    if (c->closing || nread == 0) return;
    if (nread < 0) {
        if (nread != UV_EOF || c->lingering) {
            conn_close(c);
            return;
        }
        /* The client finished sending: answer what is complete, then close. */
        c->read_eof = 1;
        read_off(c);
        req_free(c->cur);
        c->cur = NULL;
        conn_process(c);
        return;
    }
    if (c->lingering || c->read_closed) return; /* dropped */
    llhttp_errno_t e = llhttp_execute(&c->parser, b->base, (size_t)nread);
    if (e == HPE_PAUSED_UPGRADE) {
        /* Upgrade/CONNECT: answer the request as HTTP, then close. */
        if (c->cur || !c->tail) {
            bad_request(c, "upgrade not supported");
        } else {
            c->tail->keep_alive = 0;
            c->read_closed = 1;
        }
    } else if (e != HPE_OK && e != HPE_PAUSED) {
        const char *why = llhttp_get_error_reason(&c->parser);
        bad_request(c, why ? why : "malformed request");
    }
    if (c->read_closed || c->nqueued >= MAX_QUEUE) read_off(c);
    conn_process(c);
}

static void on_connection(uv_stream_t *server, int status)
{
    if (status < 0) return;
    conn_t *c = calloc(1, sizeof *c);
    if (!c) return;
    uv_tcp_init(&srv.loop, &c->tcp);
    c->tcp.data = c;
    c->handles = 1;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
        uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
        return;
    }
    uv_timer_init(&srv.loop, &c->timer);
    c->timer.data = c;
    c->handles = 2;
    uv_tcp_nodelay(&c->tcp, 1);
    llhttp_init(&c->parser, HTTP_REQUEST, &srv.settings);
    c->parser.data = c;
    c->next = srv.conns;
    if (srv.conns) srv.conns->prev = c;
    srv.conns = c;
    srv.accepted++;
    srv.open++;
    read_on(c);
    if (!c->reading) conn_close(c);
}

/* ------------------------------------------------------------------ startup and shutdown */

static void on_plain_closed(uv_handle_t *h)
{
    (void)h;
}

static void on_signal(uv_signal_t *sig, int signum)
{
    (void)sig;
    (void)signum;
    if (srv.stopping) return;
    srv.stopping = 1;
    uv_close((uv_handle_t *)&srv.listener, on_plain_closed);
    uv_close((uv_handle_t *)&srv.sigterm, on_plain_closed);
    uv_close((uv_handle_t *)&srv.sigint, on_plain_closed);
    while (srv.conns) conn_close(srv.conns);
}

/* Shortest "%.*g" that reads back as the same double (0.73, not 0.7299...). */
static void format_double(char *out, size_t n, double v)
{
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(out, n, "%.*g", prec, v);
        if (strtod(out, NULL) == v) return;
    }
}

static int build_bodies(void)
{
    char num[40];
    buf_str(&srv.default_pre, "{\"model\":\"");
    buf_str(&srv.default_pre, srv.name);
    buf_str(&srv.default_pre, "\",\"score\":");
    format_double(num, sizeof num, srv.score);
    buf_str(&srv.default_pre, num);
    buf_str(&srv.default_pre, ",\"request_id\":");

    if (srv.list_n > 0) {
        uint64_t m = 2 * srv.list_n;
        uint32_t *perm = malloc(m * sizeof *perm);
        if (!perm) return -1;
        for (uint64_t i = 0; i < m; i++) perm[i] = (uint32_t)(i + 1);
        rng_t lr;
        rng_seed(&lr, fnv1a64(FNV_OFFSET, srv.name, strlen(srv.name)) ^ srv.seed);
        for (uint64_t i = m - 1; i > 0; i--) {
            uint64_t j = rng_below(&lr, i + 1);
            uint32_t t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
        buf_str(&srv.default_post, ",\"items\":[");
        for (uint64_t r = 0; r < srv.list_n; r++) {
            buf_str(&srv.default_post, r ? ",{\"id\":\"item-" : "{\"id\":\"item-");
            buf_u64(&srv.default_post, perm[r]);
            format_double(num, sizeof num, (double)(srv.list_n - r) / (double)srv.list_n);
            buf_str(&srv.default_post, "\",\"score\":");
            buf_str(&srv.default_post, num);
            buf_putc(&srv.default_post, '}');
        }
        buf_putc(&srv.default_post, ']');
        free(perm);
    }
    buf_putc(&srv.default_post, '}');

    buf_str(&srv.error_body, "{\"model\":\"");
    buf_str(&srv.error_body, srv.name);
    buf_str(&srv.error_body, "\",\"error\":\"injected\"}");

    for (size_t i = 0; i < sizeof srv.pattern; i++) srv.pattern[i] = (char)('a' + i % 26);
    return srv.default_pre.err || srv.default_post.err || srv.error_body.err ? -1 : 0;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: model_server [options]\n"
            "  --host H          listen address (default 127.0.0.1)\n"
            "  --port N          listen port, 0 = ephemeral (default 0)\n"
            "  --name NAME       model name, 1-64 of [A-Za-z0-9_.-] (default model)\n"
            "  --latency-ms N    delay every answer by N ms (default 0)\n"
            "  --jitter-ms N     plus a uniform extra delay of 0..N ms (default 0)\n"
            "  --error-rate P    answer 500 with probability P in [0,1] (default 0)\n"
            "  --score X         score in the default answer (default 0.5)\n"
            "  --seed N          seed of the random generator (default 1)\n"
            "  --list N          add a ranked list of N items, 0-%d (default 0)\n"
            "  --help            this text\n"
            "endpoints: /_stats /echo /status/CODE /stream/BYTES /sleep/MS, else the model "
            "answer\n",
            MAX_LIST);
}

static int opt_u64(const char *v, uint64_t max, uint64_t *out)
{
    return span_u64(v, strlen(v), max, out);
}

static int opt_double(const char *v, double *out)
{
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (errno || end == v || *end || !isfinite(d)) return -1;
    *out = d;
    return 0;
}

static int valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > NAME_MAX_LEN) return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '.' || ch == '-'))
            return 0;
    }
    return 1;
}

/* Accepts "--opt value" and "--opt=value". Returns 0, or -1 after printing
 * what is wrong. */
static int parse_args(int argc, char **argv)
{
    srv.host = "127.0.0.1";
    srv.name = "model";
    srv.score = 0.5;
    srv.seed = 1;
    for (int i = 1; i < argc; i++) {
        char *a = argv[i], *v = NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            exit(0);
        }
        if (strncmp(a, "--", 2) != 0) {
            fprintf(stderr, "model_server: unexpected argument '%s'\n", a);
            return -1;
        }
        char *eq = strchr(a, '=');
        size_t alen = eq ? (size_t)(eq - a) : strlen(a);
        static const char *const known[] = {"--host",       "--port",      "--name",
                                            "--latency-ms", "--jitter-ms", "--error-rate",
                                            "--score",      "--seed",      "--list"};
        size_t k = 0;
        while (k < sizeof known / sizeof known[0] && !span_eq(a, alen, known[k])) k++;
        if (k == sizeof known / sizeof known[0]) {
            fprintf(stderr, "model_server: unknown option '%.*s'\n", (int)alen, a);
            return -1;
        }
        if (eq) {
            v = eq + 1;
        } else if (i + 1 < argc) {
            v = argv[++i];
        } else {
            fprintf(stderr, "model_server: %s needs a value\n", a);
            return -1;
        }
        uint64_t u = 0;
        int bad = 0;
        if (span_eq(a, alen, "--host")) {
            srv.host = v;
        } else if (span_eq(a, alen, "--port")) {
            bad = opt_u64(v, 65535, &u);
            srv.port = (unsigned)u;
        } else if (span_eq(a, alen, "--name")) {
            bad = !valid_name(v);
            srv.name = v;
        } else if (span_eq(a, alen, "--latency-ms")) {
            bad = opt_u64(v, MAX_DELAY_MS, &srv.latency_ms);
        } else if (span_eq(a, alen, "--jitter-ms")) {
            bad = opt_u64(v, MAX_DELAY_MS, &srv.jitter_ms);
        } else if (span_eq(a, alen, "--error-rate")) {
            bad = opt_double(v, &srv.error_rate) || srv.error_rate < 0 || srv.error_rate > 1;
        } else if (span_eq(a, alen, "--score")) {
            bad = opt_double(v, &srv.score);
        } else if (span_eq(a, alen, "--seed")) {
            bad = opt_u64(v, UINT64_MAX, &srv.seed);
        } else { /* --list */
            bad = opt_u64(v, MAX_LIST, &srv.list_n);
        }
        if (bad) {
            fprintf(stderr, "model_server: bad value for %.*s: '%s'\n", (int)alen, a, v);
            return -1;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    union {
        struct sockaddr sa;
        struct sockaddr_in in4;
        struct sockaddr_in6 in6;
        struct sockaddr_storage ss;
    } addr;
    int rc = 1, namelen = sizeof addr, err;

    if (parse_args(argc, argv) < 0) {
        usage(stderr);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    rng_seed(&srv.rng,
             fnv1a64(FNV_OFFSET, srv.name, strlen(srv.name)) ^ srv.seed ^ 0x6a09e667f3bcc908ULL);
    llhttp_settings_init(&srv.settings);
    srv.settings.on_message_begin = on_message_begin;
    srv.settings.on_url = on_url;
    srv.settings.on_url_complete = on_url_complete;
    srv.settings.on_header_field = on_header_token;
    srv.settings.on_header_field_complete = on_header_field_complete;
    srv.settings.on_header_value = on_header_token;
    srv.settings.on_header_value_complete = on_header_value_complete;
    srv.settings.on_headers_complete = on_headers_complete;
    srv.settings.on_body = on_body;
    srv.settings.on_message_complete = on_message_complete;
    if (build_bodies() < 0) {
        fprintf(stderr, "model_server: out of memory\n");
        goto out;
    }

    if (uv_ip4_addr(srv.host, (int)srv.port, &addr.in4) != 0 &&
        uv_ip6_addr(srv.host, (int)srv.port, &addr.in6) != 0) {
        fprintf(stderr, "model_server: --host must be an IPv4 or IPv6 address: '%s'\n", srv.host);
        usage(stderr);
        rc = 2;
        goto out;
    }
    uv_loop_init(&srv.loop);
    uv_tcp_init(&srv.loop, &srv.listener);
    uv_signal_init(&srv.loop, &srv.sigterm);
    uv_signal_init(&srv.loop, &srv.sigint);
    if ((err = uv_tcp_bind(&srv.listener, &addr.sa, 0)) < 0 ||
        (err = uv_listen((uv_stream_t *)&srv.listener, LISTEN_BACKLOG, on_connection)) < 0 ||
        (err = uv_tcp_getsockname(&srv.listener, &addr.sa, &namelen)) < 0) {
        fprintf(stderr, "model_server: cannot listen on %s:%u: %s\n", srv.host, srv.port,
                uv_strerror(err));
        on_signal(NULL, 0);
        uv_run(&srv.loop, UV_RUN_DEFAULT);
        uv_loop_close(&srv.loop);
        goto out;
    }
    unsigned port = ntohs(addr.sa.sa_family == AF_INET6 ? addr.in6.sin6_port : addr.in4.sin_port);
    uv_signal_start(&srv.sigterm, on_signal, SIGTERM);
    uv_signal_start(&srv.sigint, on_signal, SIGINT);

    if (strchr(srv.host, ':'))
        printf("model_server %s listening on [%s]:%u\n", srv.name, srv.host, port);
    else
        printf("model_server %s listening on %s:%u\n", srv.name, srv.host, port);
    fflush(stdout);

    uv_run(&srv.loop, UV_RUN_DEFAULT);
    rc = uv_loop_close(&srv.loop) == 0 ? 0 : 1;
out:
    buf_free(&srv.body);
    buf_free(&srv.default_pre);
    buf_free(&srv.default_post);
    buf_free(&srv.error_body);
    return rc;
}
