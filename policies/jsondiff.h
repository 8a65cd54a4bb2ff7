/* jsondiff.h — structural comparison of two JSON documents.
 *
 * Used by the shadow policy to decide whether a candidate's answer matches the
 * primary's, and to say *where* they differ so that differences can be counted
 * per field. The differing paths are handed to a callback one at a time, so
 * the caller decides what to keep.
 *
 * A document is the caller's raw JSON text plus a flat "tape" of its values
 * (jsondiff_doc_t), built by jsondiff_doc_parse() into storage the document
 * keeps and reuses: comparing answers costs no allocation once the buffers
 * have grown to the size of the answers seen.
 *
 * Rules: object member order is irrelevant; arrays are compared element by
 * element (a length difference is one difference at the array, the common
 * prefix is still compared); numbers a and b match when
 * |a - b| <= tolerance * max(1, |a|, |b|), integers and reals alike; strings
 * and keys compare after unescaping; any other pair of values matches only
 * when equal. Paths are RFC 6901 JSON pointers.
 *
 * What counts as JSON, and what a document means, is exactly what
 * json_loadb(text, len, JSON_DECODE_ANY | JSON_ALLOW_NUL) of jansson 2.14
 * accepts and builds (tests/unit/test_jsondiff.c checks it differentially):
 * UTF-8 only, integers within int64, reals that do not overflow a double,
 * at most JSONDIFF_DEPTH_MAX nested values, \u0000 allowed in strings but not
 * in keys, a duplicated key keeps its first position and its last value, and
 * (a jansson lexer quirk) one NUL byte right after a number or literal is
 * skipped. */
#ifndef MM_JSONDIFF_H
#define MM_JSONDIFF_H

#include <stddef.h>
#include <stdint.h>

/* Deepest nesting accepted: a value inside JSONDIFF_DEPTH_MAX - 1 containers
 * (jansson's JSON_PARSER_MAX_DEPTH; the root is at depth 1). */
#define JSONDIFF_DEPTH_MAX 2048

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

/* One value of a document; private to jsondiff.c. */
typedef struct {
    uint32_t start; /* offset in the text (strings and keys: after the quote) */
    uint32_t len; /* scalars: bytes of text (between the quotes); arrays: elements; objects: keys */
    uint32_t next; /* the token after this value and its subtree */
    uint32_t aux;  /* strings, keys: unescaped length; indexed objects: index offset */
    uint32_t val;  /* keys: the member's value (the last of duplicates); objects: index size */
    uint32_t hash; /* keys of indexed objects */
    uint8_t type, flags;
} jsondiff_tok_t;

/* A parsed JSON text. The text is not copied: it must outlive the comparisons.
 * Initialise with jsondiff_doc_init (or zero it), parse into it as often as
 * needed, free with jsondiff_doc_free. The fields are private. */
typedef struct {
    const char *text;
    size_t len;
    int ok; /* the last parse succeeded */
    jsondiff_tok_t *tok;
    uint32_t n_tok, cap_tok;
    uint32_t *index; /* open-addressing key tables of large objects */
    size_t n_index, cap_index;
    char *num; /* room for one number's text, NUL-terminated, for strtod */
    size_t cap_num;
} jsondiff_doc_t;

void jsondiff_doc_init(jsondiff_doc_t *d);

/* Parse text[0..len) into d. Returns 0, or -1 when the text is not JSON as
 * jansson would see it (or memory ran out, or len >= 4 GiB). */
int jsondiff_doc_parse(jsondiff_doc_t *d, const char *text, size_t len);

/* Give back storage above max_bytes per buffer (d stays usable; its last parse
 * is forgotten): one huge answer should not pin its tape for ever. */
void jsondiff_doc_trim(jsondiff_doc_t *d, size_t max_bytes);

void jsondiff_doc_free(jsondiff_doc_t *d);

/* Returned by jsondiff when a document's last parse failed. */
#define JSONDIFF_NOT_JSON ((size_t)-1)

/* Compare a with b. Returns the number of differences reported (cb may be
 * NULL to only count); when cb stops the walk, the count so far. */
size_t jsondiff(const jsondiff_doc_t *a, const jsondiff_doc_t *b, const jsondiff_opts_t *o,
                jsondiff_cb cb, void *arg);

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
