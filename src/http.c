/* http.c — see http.h. */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "http.h"

void http_head_reset(http_head_t *h)
{
    h->n = 0;
    h->too_many = 0;
    h->in_value = 0;
    h->url_off = h->url_len = 0;
    h->status_off = h->status_len = 0;
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
    } else {
        e->value_len += len;
    }
}

int http_find(const http_head_t *h, const char *base, const char *lower)
{
    for (int i = 0; i < h->n; i++)
        if (mm_str_ieq(http_hname(h, base, i), lower)) return i;
    return -1;
}

mm_str_t http_trim(mm_str_t s)
{
    while (s.n && (s.p[0] == ' ' || s.p[0] == '\t')) s.p++, s.n--;
    while (s.n && (s.p[s.n - 1] == ' ' || s.p[s.n - 1] == '\t')) s.n--;
    return s;
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

static int token_listed(mm_str_t list, mm_str_t name)
{
    size_t i = 0;
    while (i < list.n) {
        size_t j = i;
        while (j < list.n && list.p[j] != ',') j++;
        mm_str_t t = http_trim((mm_str_t){list.p + i, j - i});
        if (t.n == name.n && t.n > 0) {
            size_t k = 0;
            while (k < t.n && tolower((unsigned char)t.p[k]) == tolower((unsigned char)name.p[k]))
                k++;
            if (k == t.n) return 1;
        }
        i = j + 1;
    }
    return 0;
}

int http_is_hop_by_hop(mm_str_t name, mm_str_t connection)
{
    /* Dispatch on length first: most headers are rejected by one compare. */
    switch (name.n) {
    case 2:
        if (mm_str_ieq(name, "te")) return 1;
        break;
    case 6:
        if (mm_str_ieq(name, "expect")) return 1;
        break;
    case 7:
        if (mm_str_ieq(name, "trailer") || mm_str_ieq(name, "upgrade")) return 1;
        break;
    case 10:
        if (mm_str_ieq(name, "connection") || mm_str_ieq(name, "keep-alive")) return 1;
        break;
    case 12:
        if (mm_str_ieq(name, "x-request-id")) return 1;
        break;
    case 14:
        if (mm_str_ieq(name, "x-modelmux-arm")) return 1;
        break;
    case 16:
        if (mm_str_ieq(name, "proxy-connection")) return 1;
        break;
    case 17:
        if (mm_str_ieq(name, "transfer-encoding") || mm_str_ieq(name, "x-modelmux-shadow"))
            return 1;
        break;
    case 18:
        if (mm_str_ieq(name, "proxy-authenticate")) return 1;
        break;
    case 19:
        if (mm_str_ieq(name, "proxy-authorization")) return 1;
        break;
    case 21:
        if (mm_str_ieq(name, "x-modelmux-experiment")) return 1;
        break;
    default:
        break;
    }
    return connection.n > 0 && token_listed(connection, name);
}

int http_valid_request_id(mm_str_t id)
{
    if (id.n == 0 || id.n > MM_REQID_MAX) return 0;
    for (size_t i = 0; i < id.n; i++) {
        unsigned char c = (unsigned char)id.p[i];
        if (!(isalnum(c) || c == '.' || c == '_' || c == '-')) return 0;
    }
    return 1;
}

void http_new_request_id(mm_rng_t *rng, char out[33])
{
    static const char hex[] = "0123456789abcdef";
    uint64_t a = mm_rng_next(rng), b = mm_rng_next(rng);
    for (int i = 0; i < 16; i++) {
        out[i] = hex[(a >> (60 - 4 * i)) & 15];
        out[16 + i] = hex[(b >> (60 - 4 * i)) & 15];
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
            return out->n > 0;
        }
        i = j + 1;
    }
    return 0;
}

int http_query_get(mm_str_t url, const char *name, mm_str_t *out)
{
    const char *q = memchr(url.p, '?', url.n);
    if (q == NULL) return 0;
    size_t nlen = strlen(name);
    const char *end = url.p + url.n, *p = q + 1;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        if (amp == NULL) amp = end;
        if ((size_t)(amp - p) > nlen && p[nlen] == '=' && memcmp(p, name, nlen) == 0) {
            out->p = p + nlen + 1;
            out->n = (size_t)(amp - out->p);
            return out->n > 0;
        }
        p = amp + 1;
    }
    return 0;
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
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 304:
        return "Not Modified";
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
    default:
        return "Unknown";
    }
}

void http_json_response(mm_buf_t *b, int status, const char *body, size_t body_len,
                        mm_str_t request_id, int keep_alive, const char *extra_headers)
{
    mm_buf_printf(b, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n",
                  status, http_reason(status), body_len);
    if (request_id.n) {
        mm_buf_lit(b, "X-Request-Id: ");
        mm_buf_str(b, request_id);
        mm_buf_lit(b, "\r\n");
    }
    if (!keep_alive) mm_buf_lit(b, "Connection: close\r\n");
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
