/* buf.h — a growable byte buffer for building HTTP heads and JSON answers.
 *
 * Owners embed one and reuse it across requests (mm_buf_reset keeps the
 * memory), so a keep-alive connection builds its heads without allocating
 * after the first request. Appends never fail silently: on allocation failure
 * the buffer is marked `oom` and the caller checks once at the end. */
#ifndef MM_BUF_H
#define MM_BUF_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "common.h"

typedef struct {
    char *p;
    size_t len;
    size_t cap;
    int oom;
} mm_buf_t;

void mm_buf_init(mm_buf_t *b);
void mm_buf_free(mm_buf_t *b);
static inline void mm_buf_reset(mm_buf_t *b)
{
    b->len = 0;
    b->oom = 0;
}
/* Make room for n more bytes; returns 0 or -1 (and sets oom). */
int mm_buf_reserve(mm_buf_t *b, size_t n);
void mm_buf_append_slow(mm_buf_t *b, const void *p, size_t n);
/* Inline fast path: heads are built from dozens of small pieces, and a
 * call plus a capacity check per piece showed up in profiles. */
static inline void mm_buf_append(mm_buf_t *b, const void *p, size_t n)
{
    if (MM_LIKELY(b->cap - b->len >= n)) {
        memcpy(b->p + b->len, p, n);
        b->len += n;
    } else {
        mm_buf_append_slow(b, p, n);
    }
}
/* What b holds, as a string ("" for a buffer never written). */
static inline mm_str_t mm_buf_view(const mm_buf_t *b)
{
    return (mm_str_t){b->p ? b->p : "", b->len};
}
static inline void mm_buf_str(mm_buf_t *b, mm_str_t s)
{
    mm_buf_append(b, s.p, s.n);
}
#define mm_buf_lit(b, lit) mm_buf_append((b), (lit), sizeof(lit) - 1)
static inline void mm_buf_cstr(mm_buf_t *b, const char *s)
{
    mm_buf_append(b, s, strlen(s));
}
void mm_buf_u64(mm_buf_t *b, uint64_t v);
void mm_buf_printf(mm_buf_t *b, const char *fmt, ...) MM_PRINTF(2, 3);
/* Append s as the inside of a JSON string (quotes not included): escapes,
 * and U+FFFD for bytes that are not valid UTF-8, so the output is always
 * valid JSON whatever the input (paths, header values, ids). */
void mm_buf_json_str(mm_buf_t *b, const char *s, size_t n);

#endif
