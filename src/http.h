/* http.h — HTTP/1.1 pieces shared by the client side, the upstream side and
 * the admin listener: header spans recorded during parsing, hop-by-hop
 * filtering, request ids, reason phrases and the JSON error answers.
 *
 * Headers are recorded as offsets into the connection's read buffer, never
 * copied: a parse touches no allocator. Offsets (not pointers) because the
 * buffer may grow (realloc) while a large head arrives in several reads. */
#ifndef MM_HTTP_H
#define MM_HTTP_H

#include <llhttp.h>
#include <stdint.h>

#include "buf.h"
#include "common.h"
#include "rng.h"

#define HTTP_MAX_HEADERS 128

typedef struct {
    uint32_t name_off, name_len;
    uint32_t value_off, value_len;
} http_hdr_t;

/* What a header is to a proxy, from its name alone. The hop-by-hop kinds
 * (RFC 9110 §7.6.1, plus the headers modelmux sets itself) come first. */
typedef enum {
    HK_OTHER = 0,
    HK_HOP,          /* te, trailer, upgrade, keep-alive, proxy-*, x-modelmux-* ... */
    HK_CONNECTION,   /* hop-by-hop, and names more hop-by-hop headers */
    HK_TRANSFER_ENC, /* hop-by-hop: the framing is ours on each side */
    HK_EXPECT,       /* hop-by-hop: modelmux answers 100-continue itself */
    HK_X_REQUEST_ID, /* replaced by modelmux's own */
    HK_HOST,
    HK_X_FORWARDED_FOR,
    HK_X_FORWARDED_HOST, /* replaced by modelmux's own (nginx's proxy_set_header) */
    HK_CONTENT_LENGTH,
    HK_CONTENT_TYPE,
    HK_DATE,
    HK_COUNT
} http_kind_t;

static inline int http_kind_is_hop(int k)
{
    return k >= HK_HOP && k <= HK_X_REQUEST_ID;
}

/* The parts of a chunked message that are not data (RFC 9112 §7.1): chunk
 * extensions and the trailer section. llhttp 8 bounds neither, and takes a
 * bare LF as the empty line that ends the trailer section ("0\r\n\n"),
 * an obs-fold line and an empty field name in it. A proxy that forwards
 * such a body raw would hand the model server framing it may read
 * differently (the end of the body: request smuggling), or unbounded bytes
 * that count against no limit (llhttp's CVE-2024-22019). So the extension
 * bytes of all chunk lines and the trailer section's bytes are counted
 * together against one limit (max_header_bytes for a request, the answer
 * head's 256 KiB for an answer), the trailer section holds at most
 * HTTP_MAX_HEADERS lines, and its bytes are checked as they are parsed
 * (http_execute). Trailer bytes are few, so a byte loop over them is cheap;
 * a message without a chunked body never gets there. */
typedef struct {
    uint32_t meta;     /* chunk-extension and trailer-section bytes so far */
    uint16_t lines;    /* trailer field lines so far */
    uint8_t scan;      /* where the trailer section's check is (http.c) */
    uint8_t at_last;   /* the last chunk's line was just parsed (a pause) */
    uint8_t too_large; /* error is about size: 431 for a request */
    const char *error; /* why the message is refused, or NULL */
} http_chunked_t;

/* A parsed head: request line or status line plus headers, as spans. */
typedef struct {
    http_hdr_t h[HTTP_MAX_HEADERS];
    int n;
    int too_many;   /* more than HTTP_MAX_HEADERS */
    int in_value;   /* the last span callback was a header value */
    int obs_fold;   /* a value continued on a line starting with SP or HTAB */
    int empty_name; /* a field line with nothing before its colon (http_head_index) */
    uint32_t url_off, url_len;
    uint32_t status_off, status_len; /* reason phrase (responses) */
    /* Filled by http_head_index once the head is complete, so that the hot
     * path classifies each header once instead of scanning the list for
     * every header it looks for. */
    uint8_t kind[HTTP_MAX_HEADERS];    /* http_kind_t of each header */
    uint8_t dropped[HTTP_MAX_HEADERS]; /* hop-by-hop: by kind or listed in Connection */
    int16_t first[HK_COUNT];           /* index of the first header of a kind, -1 */
    uint8_t count[HK_COUNT];           /* headers of each kind */
    http_chunked_t chunked;            /* the message's chunked framing, if any */
} http_head_t;

void http_head_reset(http_head_t *h);
/* Span callbacks (from llhttp): offsets relative to the buffer base. A value
 * continued by obs-fold (RFC 9112 §5.2) sets obs_fold; http_head_index sets
 * it too for a fold after an empty first line, which llhttp delivers as a
 * plain value. */
void http_head_on_url(http_head_t *h, uint32_t off, uint32_t len);
void http_head_on_field(http_head_t *h, uint32_t off, uint32_t len);
void http_head_on_value(http_head_t *h, uint32_t off, uint32_t len);
static inline mm_str_t http_span(const char *base, uint32_t off, uint32_t len)
{
    return (mm_str_t){base + off, len};
}
static inline mm_str_t http_hname(const http_head_t *h, const char *base, int i)
{
    return http_span(base, h->h[i].name_off, h->h[i].name_len);
}
static inline mm_str_t http_hvalue(const http_head_t *h, const char *base, int i)
{
    return http_span(base, h->h[i].value_off, h->h[i].value_len);
}
/* Index of the first header named `lower` (lowercase), or -1. */
int http_find(const http_head_t *h, const char *base, const char *lower);

/* Forwarding header lines. http_emit_header appends header i as
 * "Name: value\r\n"; when its bytes already have exactly that form in the
 * read buffer (the usual case) it only extends a run, and adjacent lines are
 * then copied with one memcpy by http_emit_flush, which the caller must call
 * once after the last header (and before appending anything else). */
typedef struct {
    const char *p;
    size_t n;
} http_run_t;
void http_emit_header(mm_buf_t *b, http_run_t *run, const http_head_t *h, const char *base, int i);
static inline void http_emit_flush(mm_buf_t *b, http_run_t *run)
{
    if (run->n) mm_buf_append(b, run->p, run->n);
    run->n = 0;
}

/* The kind of a header name (case-insensitive). */
http_kind_t http_kind_of(mm_str_t name);
/* Classify every header of a complete head: kind[], dropped[], first[]. */
void http_head_index(http_head_t *h, const char *base);
/* Index of the first header of kind k (after http_head_index), or -1. */
static inline int http_known(const http_head_t *h, http_kind_t k)
{
    return h->first[k];
}

/* Why a complete request head (after http_head_index) must be refused with
 * 400, or NULL: obs-fold; an empty field name; a Transfer-Encoding other
 * than the single coding "chunked" (the only one modelmux can frame
 * upstream); more than one Host, none in HTTP/1.1, or one whose value is no
 * uri-host[:port] (RFC 9112 §3.2). */
const char *http_request_head_error(const http_head_t *h, const char *base, int http_major,
                                    int http_minor);

/* 1 if a line of p[0..n) (a head from its request target or status line
 * on, to its empty last line) ends in a bare LF: RFC 9112 §2.2 allows a
 * recipient to accept one, but a proxy that reads lines differently from
 * the server behind it is a smuggling risk. One memchr per line. */
int http_bare_lf(const char *p, size_t n);
/* The same for one head llhttp has parsed, looking only where llhttp 8
 * takes a bare LF: ending the start line (the first LF of p[0..n)) and as
 * the empty line ending the head (p[n - 1]); it refuses one ending a field
 * line itself. Two bytes and one short memchr: for every request and
 * answer head, where http_bare_lf costs a memchr per line. */
int http_head_bare_lf(const char *p, size_t n);

/* Chunked framing checks (see http_chunked_t), from llhttp's callbacks:
 * on_chunk_extension_name and _value call http_chunked_on_ext with their
 * span's length (returns 0, or HPE_USER with h->chunked.error set once the
 * limit is passed); on_chunk_header returns http_chunked_on_chunk (HPE_PAUSED
 * at the last chunk, so that http_execute learns where the trailer section
 * begins; 0 otherwise). */
int http_chunked_on_ext(http_chunked_t *t, size_t n, uint32_t limit);
int http_chunked_on_chunk(http_chunked_t *t, uint64_t chunk_size);

/* llhttp_execute(p, data, n), with the trailer section of a chunked message
 * checked as it is parsed (at most `limit` bytes with the chunk extensions,
 * HTTP_MAX_HEADERS lines, each ending in CRLF, no obs-fold, no empty field
 * name). The pause at the last chunk is taken and resumed here; the caller
 * sees llhttp's own results, or HPE_USER with t->error set. */
llhttp_errno_t http_execute(llhttp_t *p, http_chunked_t *t, const char *data, size_t n,
                            uint32_t limit);

/* 1 if the head's Transfer-Encoding headers, as one list, are exactly the
 * coding "chunked" (any case, optional whitespace); 0 otherwise. */
int http_te_chunked_only(const http_head_t *h, const char *base);

/* 1 if `v` (trimmed) is a valid Host value or authority without userinfo:
 * empty, or uri-host [":" port] (RFC 9110 §7.2, RFC 3986 §3.2.2). */
int http_valid_host(mm_str_t v);

/* The form of a request target (RFC 9112 §3.2). */
typedef enum {
    HT_ORIGIN,   /* "/path?query" */
    HT_ABSOLUTE, /* "http://authority/path?query" */
    HT_ASTERISK, /* "*" (OPTIONS only) */
    HT_INVALID,  /* anything else: authority-form, other schemes, userinfo, a '#' */
} http_target_form_t;
/* Classify `target`. For the absolute form, *authority is the authority and
 * *path the path and query after it, which may be empty or start with '?'
 * (the origin form then needs a '/' in front); otherwise *path = target and
 * *authority is empty. An authority that is no valid host makes it
 * HT_INVALID. */
http_target_form_t http_target(mm_str_t target, mm_str_t *authority, mm_str_t *path);

/* 1 if the comma-separated header value contains `token` (lowercase). */
int http_has_token(mm_str_t value, const char *token);

/* Strip optional whitespace around a header value. */
mm_str_t http_trim(mm_str_t s);

/* 1 if s is an RFC 9110 token (a header or cookie name): one or more
 * visible ASCII characters, none of the delimiters. */
int http_is_token(mm_str_t s);

/* Request ids: 1-128 chars of [A-Za-z0-9._-]. */
int http_valid_request_id(mm_str_t id);
/* 32 lowercase hex digits + NUL. */
void http_new_request_id(mm_rng_t *rng, char out[33]);

/* Sticky-key sources. Return 1 and set *out if found. */
/* Cookie: the first non-empty value of cookie `name` (case-sensitive, as
 * cookie names are), surrounding double quotes removed; not decoded. */
int http_cookie_get(mm_str_t cookie_header, const char *name, mm_str_t *out);
/* Query: the first non-empty value of parameter `name`, names and values
 * form-decoded ("%XX", '+' as a space). The decoded value is written to buf
 * (cap bytes); a value longer than cap is returned as sent. */
int http_query_get(mm_str_t url, const char *name, char *buf, size_t cap, mm_str_t *out);
/* The path of a request target (up to '?'). */
mm_str_t http_url_path(mm_str_t url);
/* Normalise the path p[0..n) (starting with '/') in place, as nginx and
 * Envoy do before matching: unreserved characters percent-decoded, runs of
 * '/' merged, "." and ".." segments removed. Returns the new length (<= n). */
size_t http_normalize_path(char *p, size_t n);

const char *http_reason(int status);

/* How an answer speaks of its connection: HTTP_CLOSE says Connection: close;
 * HTTP_KEEP_ALIVE_10 says Connection: keep-alive, which an HTTP/1.0 client
 * needs to hear to keep it (RFC 9112 Appendix C.2.2); 1 says nothing. */
enum { HTTP_CLOSE = 0, HTTP_KEEP_ALIVE = 1, HTTP_KEEP_ALIVE_10 = 2 };
/* Append the Connection line `mode` calls for, if any. */
static inline void http_connection_line(mm_buf_t *b, int mode)
{
    if (mode == HTTP_CLOSE) mm_buf_lit(b, "Connection: close\r\n");
    if (mode == HTTP_KEEP_ALIVE_10) mm_buf_lit(b, "Connection: keep-alive\r\n");
}

/* "Date: <IMF-fixdate>\r\n" for now (RFC 9110 §6.6.1: an origin server with
 * a clock sends one, and a proxy adds one to an answer that came without).
 * Formatted once a second per thread, without the locale. */
void http_date_line(mm_buf_t *b);

/* A complete JSON error answer (DESIGN.md §4):
 * {"error": CODE, "message": TEXT, "request_id": ID}. `keep_alive` is one of
 * the above. 503 carries Retry-After. `extra_headers` (may be
 * NULL) are appended verbatim ("Name: value\r\n" lines). */
void http_error_response(mm_buf_t *b, int status, const char *code, const char *message,
                         mm_str_t request_id, int keep_alive, const char *extra_headers);
/* A complete JSON answer with the given body. */
void http_json_response(mm_buf_t *b, int status, const char *body, size_t body_len,
                        mm_str_t request_id, int keep_alive, const char *extra_headers);

#endif
