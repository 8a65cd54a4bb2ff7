/* jsonpos.h — line and column of every value and key in a JSON text.
 *
 * jansson reports positions for syntax errors only, but a user fixing a
 * semantic error ("timeout_ms must be > 0") needs FILE:LINE:COL as well. This
 * index scans the raw text once more and records, for every value and every
 * object key, its JSON pointer (RFC 6901) and 1-based line and column, so the
 * config checker can turn "/upstreams/champion/timeout_ms" into 12:22.
 *
 * Lines and columns follow jansson's convention so that syntax and semantic
 * errors agree: lines are split on '\n' only, columns count Unicode code
 * points (not bytes), a tab is one column. */
#ifndef MM_JSONPOS_H
#define MM_JSONPOS_H

#include <stddef.h>

#include <jansson.h>

typedef struct jsonpos_s jsonpos_t;

/* Index `text` (len bytes; need not be NUL-terminated). The text must be
 * JSON that jansson accepted; anything else returns NULL, as does running out
 * of memory. */
jsonpos_t *jsonpos_build(const char *text, size_t len);
void jsonpos_free(jsonpos_t *jp);

/* Position of the value at `pointer` ("" is the root), or with key=1 of the
 * object key that names it (for an array element or the root, the key
 * position is the value position). Returns 0, or -1 if the pointer does not
 * occur in the text. */
int jsonpos_find(const jsonpos_t *jp, const char *pointer, int key, int *line, int *col);

/* Line and column of byte `off` of `text` (len bytes), in the same
 * convention (jansson's), for a place no value starts at (a stray byte). */
void jsonpos_at(const char *text, size_t len, size_t off, int *line, int *col);

/* Where a syntax error jansson reported in text (len bytes) is: its line
 * and column, at least 1 (jansson says column 0 for an empty text), except
 * that a byte no JSON text may hold where it is (bad UTF-8, a raw control
 * character or line break in a string) is pointed at itself, where
 * jansson's column is the character before it. */
void jsonpos_error_at(const char *text, size_t len, const json_error_t *je, int *line, int *col);

/* Whether text holds nothing but JSON whitespace (space, tab, CR, LF): an
 * API body that is absent, not invalid JSON. */
int jsonpos_blank(const char *text, size_t len);

/* "invalid JSON at line L column C: WHAT" for a body jansson refused (an
 * API request's), placed as jsonpos_error_at does. */
void jsonpos_syntax_error(const char *text, size_t len, const json_error_t *je, char *out,
                          size_t n);

/* The pointer of the value that starts at line, col, copied to out (n
 * bytes). Returns 0, or -1 if no value starts there (or it did not fit). */
int jsonpos_pointer_at(const jsonpos_t *jp, int line, int col, char *out, size_t n);

/* Number of values recorded (the root included). */
size_t jsonpos_count(const jsonpos_t *jp);

/* A key may be as long as the text, but pointers are built in fixed
 * buffers. So every pointer this module records, builds or looks up has
 * each segment whose escaped form is longer than JSONPOS_SEG_MAX bytes
 * shortened: its first characters (at most 200 bytes), then "~2" and a hash
 * of the whole segment in 16 hex digits. "~2" is no RFC 6901 escape: a
 * reader of pointers (an error message's dotted name) stops the segment
 * there. A shortened segment is at most 218 bytes. */
#define JSONPOS_SEG_MAX 256

/* Append "/" and `segment` escaped per RFC 6901 ('~' -> "~0", '/' -> "~1"),
 * shortened if long, to the NUL-terminated pointer in buf. Returns 0, or -1
 * (buf unchanged) if the result would not fit in buflen bytes. */
int jsonpos_append(char *buf, size_t buflen, const char *segment);

/* Copy the (escaped) pointer to out (n bytes) with its long segments
 * shortened; the result is never longer than the pointer. Returns 0, or -1
 * if it did not fit (out then holds the whole segments that did). */
int jsonpos_canon(const char *pointer, char *out, size_t n);

#endif
