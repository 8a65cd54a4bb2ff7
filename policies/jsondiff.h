/* jsondiff.h — structural comparison of two JSON documents.
 *
 * Used by the shadow policy to decide whether a candidate's answer matches the
 * primary's, and to say *where* they differ so that differences can be counted
 * per field. Pure: no allocation, no I/O; the differing paths are handed to a
 * callback one at a time, so the caller decides what to keep.
 *
 * Rules: object member order is irrelevant; arrays are compared element by
 * element (a length difference is one difference at the array, the common
 * prefix is still compared); numbers a and b match when
 * |a - b| <= tolerance * max(1, |a|, |b|), integers and reals alike; any other
 * pair of values matches only when equal. Paths are RFC 6901 JSON pointers. */
#ifndef MM_JSONDIFF_H
#define MM_JSONDIFF_H

#include <jansson.h>
#include <stddef.h>

/* Longest path reported, NUL included. Differences deeper than this are
 * reported once at the deepest enclosing path that fits. */
#define JSONDIFF_PATH_MAX 256

typedef enum {
    JSONDIFF_TYPE = 0, /* different JSON types (number vs string, object vs array...) */
    JSONDIFF_VALUE,    /* same type, different value */
    JSONDIFF_MISSING,  /* object member present in a only */
    JSONDIFF_EXTRA,    /* object member present in b only */
    JSONDIFF_LENGTH,   /* arrays of different lengths */
} jsondiff_kind_t;

typedef struct {
    const char *path;  /* JSON pointer of the differing value ("" is the root) */
    const char *shape; /* the same with every array index replaced by "*" */
    jsondiff_kind_t kind;
} jsondiff_item_t;

/* Called once per difference; a nonzero return stops the comparison. */
typedef int (*jsondiff_cb)(void *arg, const jsondiff_item_t *d);

typedef struct {
    double tolerance; /* >= 0 */
    /* JSON pointers whose values (and subtrees) are not compared. A pointer
     * matches the exact path or the shape path, in which a "*" segment stands
     * for any array index: one pointer can skip a member of every element. */
    const char *const *ignore;
    size_t n_ignore;
} jsondiff_opts_t;

/* Compare a with b. Returns the number of differences reported (cb may be
 * NULL to only count); when cb stops the walk, the count so far. */
size_t jsondiff(const json_t *a, const json_t *b, const jsondiff_opts_t *o, jsondiff_cb cb,
                void *arg);

/* 1 if |a - b| <= tol * max(1, |a|, |b|). */
int jsondiff_number_eq(double a, double b, double tol);

/* 1 if s is a syntactically valid JSON pointer ("" or "/..." with only ~0 and
 * ~1 escapes) shorter than JSONDIFF_PATH_MAX. */
int jsondiff_valid_pointer(const char *s);

/* 1 if pointer `outer` is `inner` or one of its ancestors ("" covers all). */
int jsondiff_path_covers(const char *outer, const char *inner);

/* "type", "value", "missing", "extra", "length". */
const char *jsondiff_kind_name(jsondiff_kind_t k);

#endif
