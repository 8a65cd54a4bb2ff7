/* buf.c — see buf.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"

void mm_buf_init(mm_buf_t *b)
{
    memset(b, 0, sizeof(*b));
}

void mm_buf_free(mm_buf_t *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

int mm_buf_reserve(mm_buf_t *b, size_t n)
{
    if (b->oom) return -1;
    if (b->cap - b->len >= n) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < n) cap *= 2;
    char *p = realloc(b->p, cap);
    if (p == NULL) {
        b->oom = 1;
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

void mm_buf_append_slow(mm_buf_t *b, const void *p, size_t n)
{
    if (n == 0 || mm_buf_reserve(b, n) < 0) return;
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

void mm_buf_u64(mm_buf_t *b, uint64_t v)
{
    char tmp[24];
    size_t i = sizeof(tmp);
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    mm_buf_append(b, tmp + i, sizeof(tmp) - i);
}

void mm_buf_printf(mm_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n > 0 && mm_buf_reserve(b, (size_t)n + 1) == 0) {
        vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap2);
        b->len += (size_t)n;
    }
    va_end(ap2);
}

/* Length of the valid UTF-8 sequence at s (n bytes available), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    uint32_t cp;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1fu;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        cp = c & 0x0fu;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07u;
    } else {
        return 0;
    }
    if (n < len) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3fu);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff))) return 0;
    if (cp >= 0xd800 && cp <= 0xdfff) return 0; /* surrogates are not characters */
    return len;
}

/* The inside of a JSON string: escapes, and U+FFFD for invalid UTF-8. Runs
 * of plain bytes are copied in one append. */
void mm_buf_json_str(mm_buf_t *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    size_t run = 0, i = 0;
    while (i < n) {
        unsigned char c = u[i];
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
            i++;
            continue;
        }
        if (c >= 0x80) {
            size_t k = utf8_len(u + i, n - i);
            if (k > 0) {
                i += k;
                continue;
            }
        }
        mm_buf_append(b, s + run, i - run);
        switch (c) {
        case '"':
            mm_buf_lit(b, "\\\"");
            break;
        case '\\':
            mm_buf_lit(b, "\\\\");
            break;
        case '\n':
            mm_buf_lit(b, "\\n");
            break;
        case '\r':
            mm_buf_lit(b, "\\r");
            break;
        case '\t':
            mm_buf_lit(b, "\\t");
            break;
        default:
            if (c >= 0x80) {
                mm_buf_lit(b, "\\ufffd");
            } else {
                char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
                mm_buf_append(b, e, 6);
            }
        }
        i++;
        run = i;
    }
    mm_buf_append(b, s + run, n - run);
}
