/* common.h — small definitions every modelmux module shares.
 *
 * Kept deliberately tiny: a string slice (so parsed HTTP fields can point into
 * the read buffer instead of being copied), container_of (to get from an
 * embedded libuv handle back to its owner), and the project-wide limits. */
#ifndef MM_COMMON_H
#define MM_COMMON_H

#include <stddef.h>
#include <stdint.h>

#define MM_VERSION "0.1.0"

/* Names of upstreams, experiments and arms: 1-64 chars of [A-Za-z0-9_.-]. */
#define MM_NAME_MAX 64
/* Arms per experiment. Policies keep per-arm arrays of this size on the stack. */
#define MM_MAX_ARMS 16
/* Request ids: 1-128 chars of [A-Za-z0-9._-]; generated ones are 32 hex digits. */
#define MM_REQID_MAX 128

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))
#define MM_ARRAY_LEN(a)                 (sizeof(a) / sizeof((a)[0]))
#define MM_UNUSED(x)                    ((void)(x))

#if defined(__GNUC__)
#define MM_LIKELY(x)    __builtin_expect(!!(x), 1)
#define MM_UNLIKELY(x)  __builtin_expect(!!(x), 0)
#define MM_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define MM_LIKELY(x)   (x)
#define MM_UNLIKELY(x) (x)
#define MM_PRINTF(a, b)
#endif

/* A byte range that does not own its memory. */
typedef struct {
    const char *p;
    size_t n;
} mm_str_t;

#define MM_STR(lit) ((mm_str_t){(lit), sizeof(lit) - 1})

/* 1 if s is a valid upstream/experiment/arm name. */
int mm_valid_name(const char *s, size_t n);
/* Request ids (DESIGN.md §4): 1-128 characters of the same set. */
int mm_valid_reqid(const char *s, size_t n);

/* Case-insensitive comparison of an HTTP token (a header name: llhttp has
 * checked it holds only token characters) with a NUL-terminated lowercase
 * literal. OR-ing 0x20 folds ASCII letters to lower case; for the other
 * token characters a match through the fold is impossible, so no ctype call
 * is needed. */
static inline int mm_str_ieq(mm_str_t s, const char *lower)
{
    size_t i = 0;
    for (; i < s.n; i++)
        if (lower[i] == '\0' || ((unsigned char)s.p[i] | 0x20) != (unsigned char)lower[i]) return 0;
    return lower[i] == '\0';
}

/* The value of the hex digit c (either case), or -1. */
static inline int mm_hex_val(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Monotonic clock in milliseconds / microseconds (CLOCK_MONOTONIC). */
uint64_t mm_now_ms(void);
uint64_t mm_now_us(void);

#endif
