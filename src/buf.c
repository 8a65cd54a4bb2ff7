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

void mm_buf_json_str(mm_buf_t *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t run = 0; /* bytes copied in one go between escapes */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        mm_buf_append(b, s + run, i - run);
        run = i + 1;
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
        default: {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            mm_buf_append(b, e, 6);
        }
        }
    }
    mm_buf_append(b, s + run, n - run);
}
