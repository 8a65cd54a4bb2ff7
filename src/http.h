/* http.h — HTTP/1.1 pieces shared by the client side, the upstream side and
 * the admin listener: header spans recorded during parsing, hop-by-hop
 * filtering, request ids, reason phrases and the JSON error answers.
 *
 * Headers are recorded as offsets into the connection's read buffer, never
 * copied: a parse touches no allocator. Offsets (not pointers) because the
 * buffer may grow (realloc) while a large head arrives in several reads. */
#ifndef MM_HTTP_H
#define MM_HTTP_H

#include <stdint.h>

#include "buf.h"
#include "common.h"
#include "rng.h"

#define HTTP_MAX_HEADERS 128

typedef struct {
    uint32_t name_off, name_len;
    uint32_t value_off, value_len;
} http_hdr_t;

/* A parsed head: request line or status line plus headers, as spans. */
typedef struct {
    http_hdr_t h[HTTP_MAX_HEADERS];
    int n;
    int too_many; /* more than HTTP_MAX_HEADERS */
    int in_value; /* the last span callback was a header value */
    uint32_t url_off, url_len;
    uint32_t status_off, status_len; /* reason phrase (responses) */
} http_head_t;

void http_head_reset(http_head_t *h);
/* Span callbacks (from llhttp): offsets relative to the buffer base. */
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

/* Headers a proxy must not forward (RFC 9110 §7.6.1) plus the ones modelmux
 * sets itself. `connection` is the value of the Connection header (tokens
 * listed there are hop-by-hop too); may be empty. */
int http_is_hop_by_hop(mm_str_t name, mm_str_t connection);
/* 1 if the comma-separated header value contains `token` (lowercase). */
int http_has_token(mm_str_t value, const char *token);

/* Strip optional whitespace around a header value. */
mm_str_t http_trim(mm_str_t s);

/* Request ids: 1-128 chars of [A-Za-z0-9._-]. */
int http_valid_request_id(mm_str_t id);
/* 32 lowercase hex digits + NUL. */
void http_new_request_id(mm_rng_t *rng, char out[33]);

/* Sticky-key sources. Return 1 and set *out if found. */
int http_cookie_get(mm_str_t cookie_header, const char *name, mm_str_t *out);
int http_query_get(mm_str_t url, const char *name, mm_str_t *out);
/* The path of a request target (up to '?'). */
mm_str_t http_url_path(mm_str_t url);

const char *http_reason(int status);

/* A complete JSON error answer (DESIGN.md §4):
 * {"error": CODE, "message": TEXT, "request_id": ID}. With `keep_alive` 0 it
 * says Connection: close. 503 carries Retry-After. `extra_headers` (may be
 * NULL) are appended verbatim ("Name: value\r\n" lines). */
void http_error_response(mm_buf_t *b, int status, const char *code, const char *message,
                         mm_str_t request_id, int keep_alive, const char *extra_headers);
/* A complete JSON answer with the given body. */
void http_json_response(mm_buf_t *b, int status, const char *body, size_t body_len,
                        mm_str_t request_id, int keep_alive, const char *extra_headers);

#endif
