/* logread.h — reading the request log (DESIGN.md §7) for replay, and the
 * replay's send schedule.
 *
 * A log is read whole before the event loop starts (a replay needs every
 * timestamp up front to pace itself); a line that cannot be replayed is
 * reported with its line number and skipped, never fatal, because a log cut
 * off by a crash or a rotation is the normal case, not an exception. The
 * schedule is a pure function of the timestamps and the pacing options, so
 * it is unit-tested without a network. */
#ifndef MM_BENCH_LOGREAD_H
#define MM_BENCH_LOGREAD_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common.h"

#define LR_METHOD_MAX 32

typedef struct {
    int64_t ts_us; /* arrival, µs since the Unix epoch (UTC) */
    char method[LR_METHOD_MAX + 1];
    char *target; /* path with the query, ready for a request line (see lr_parse_line) */
    size_t target_len;
    unsigned char *body; /* decoded body_b64; NULL when none or empty */
    size_t body_len;
    int has_body;                      /* the line carries body_b64 (log.bodies was on) */
    int body_truncated;                /* the log kept only a prefix of the body */
    char request_id[MM_REQID_MAX + 1]; /* "" when null, absent or invalid */
    size_t line;                       /* 1-based line number in the file */
} lr_entry_t;

typedef struct {
    lr_entry_t *v;
    size_t n, cap;
    size_t lines;            /* lines read, blank ones included */
    size_t skipped;          /* malformed or truncated lines */
    size_t truncated_bodies; /* usable lines whose body the log cut short */
} lr_log_t;

/* One line (without its newline). Returns 0 and fills out (free with
 * lr_entry_free), or -1 with the reason in why. The target is the logged
 * path with every byte outside visible ASCII percent-encoded, so that a path
 * the log escaped (U+FFFD for invalid UTF-8) still makes a valid request
 * line; it must be in origin form (start with '/'). */
int lr_parse_line(const char *line, size_t len, lr_entry_t *out, char *why, size_t whylen);
void lr_entry_free(lr_entry_t *e);

/* Reads every line of f into log. Skipped lines are reported on `report`
 * as "NAME:LINE: skipped: REASON", at most max_reports of them followed by
 * one summary line. A last line without its newline that does not parse is
 * reported as truncated. Returns 0, or -1 with err on a read error (a log
 * without usable lines is not an error here: check log->n). */
int lr_read(FILE *f, const char *name, lr_log_t *log, FILE *report, size_t max_reports, char *err,
            size_t errlen);
int lr_load(const char *path, lr_log_t *log, FILE *report, size_t max_reports, char *err,
            size_t errlen);
/* Stable sort by ts: the log is written in completion order, but `ts` is the
 * arrival, and a replay reproduces arrivals. */
void lr_sort_by_ts(lr_log_t *log);
void lr_free(lr_log_t *log);

/* The X-Request-Id a replay sends for a logged id on pass `pass` (0 the
 * first) over the log: on the first pass the id as logged, so that the
 * replay's own log lines join the original's; on the K-th pass (K = pass +
 * 1 >= 2) the id followed by ".K", with as many of the id's *first*
 * characters dropped as it takes to stay within MM_REQID_MAX. modelmux
 * replaces a longer client id with one of its own (DESIGN.md §4), which
 * would lose the join; the end of an id is kept because that is where ids
 * of one source usually differ (counters, the random part of a ULID). An
 * empty id stays empty. out has room for MM_REQID_MAX + 1 bytes. */
void lr_pass_id(const char *id, size_t pass, char *out);

/* RFC 3339 date-time ("2024-06-01T12:00:00.123456Z", any number of fraction
 * digits, Z or a ±HH:MM offset) to µs since the epoch. Returns 0 or -1. */
int lr_parse_ts(const char *s, size_t n, int64_t *us);
/* Standard base64 (padding optional). *out is malloc'd (NULL when n is 0).
 * Returns 0 or -1 on a character outside the alphabet or a bad length. */
int lr_b64_decode(const char *s, size_t n, unsigned char **out, size_t *outlen);

/* ---- pacing ---- */

typedef enum {
    LR_PACE_SPEED = 0, /* the recorded pacing, `speed` times faster */
    LR_PACE_RATE,      /* `rate` requests per second, evenly spaced (open loop) */
    LR_PACE_MAX        /* as fast as completions allow (closed loop): all offsets 0 */
} lr_pace_mode_t;

typedef struct {
    lr_pace_mode_t mode;
    double speed; /* > 0 */
    double rate;  /* > 0, requests per second */
} lr_pace_t;

/* Send offsets in µs from the start for n_total requests over a log whose
 * n_log entries arrived at ts_us[] (in replay order); request i replays
 * entry i % n_log.
 *   speed: out[i] = (pass * period + ts[i % n_log] - ts[0]) / speed, where
 *          pass = i / n_log and period = the log's span plus its mean gap
 *          (span / (n_log - 1); 1 ms when the span is 0, 1 s for a single
 *          line), so a looped log goes on at the same average rate. A
 *          timestamp earlier than its predecessor is taken as the
 *          predecessor's: offsets never decrease.
 *   rate:  out[i] = i * 1e6 / rate.
 *   max:   out[i] = 0.
 * Returns 0, or -1 with err (bad speed or rate, an offset beyond 2^63 µs). */
int lr_schedule(const int64_t *ts_us, size_t n_log, size_t n_total, const lr_pace_t *pace,
                uint64_t *out, char *err, size_t errlen);

#endif
