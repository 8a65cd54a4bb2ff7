/* logread.c — the request-log reader and the replay schedule (logread.h).
 *
 * Each line is parsed with jansson on its own, so one bad line costs that
 * line only. Only what a replay needs is required (ts, method, path); the
 * other §7 fields are read when useful (request_id, body_b64,
 * body_truncated) and otherwise ignored, so that a log with extra fields
 * from a newer modelmux still replays. Reading happens before the event
 * loop runs, with plain stdio: it is startup work, like reading a config. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "logread.h"

/* ---- timestamps ---- */

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
 * days_from_civil): exact for every year, no timegm() or TZ involved. */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int is_leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* n decimal digits at s into *v; 0 or -1. */
static int digits(const char *s, size_t n, int *v)
{
    int x = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        x = x * 10 + (s[i] - '0');
    }
    *v = x;
    return 0;
}

int lr_parse_ts(const char *s, size_t n, int64_t *us)
{
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int y, mo, d, h, mi, sec;
    /* YYYY-MM-DDTHH:MM:SS is 19 characters, then fraction and zone. */
    if (n < 20 || s[4] != '-' || s[7] != '-' || s[13] != ':' || s[16] != ':') return -1;
    if (s[10] != 'T' && s[10] != 't' && s[10] != ' ') return -1;
    if (digits(s, 4, &y) || digits(s + 5, 2, &mo) || digits(s + 8, 2, &d) ||
        digits(s + 11, 2, &h) || digits(s + 14, 2, &mi) || digits(s + 17, 2, &sec))
        return -1;
    if (mo < 1 || mo > 12 || d < 1 || h > 23 || mi > 59 || sec > 60) return -1;
    int dim = mdays[mo - 1] + (mo == 2 && is_leap(y));
    if (d > dim) return -1;
    size_t i = 19;
    int64_t frac = 0;
    if (s[i] == '.') {
        size_t start = ++i;
        int kept = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            if (kept < 6) {
                frac = frac * 10 + (s[i] - '0');
                kept++;
            }
            i++;
        }
        if (i == start) return -1;
        for (; kept < 6; kept++) frac *= 10;
    }
    int64_t offset_s = 0;
    if (i < n && (s[i] == 'Z' || s[i] == 'z')) {
        i++;
    } else if (i < n && (s[i] == '+' || s[i] == '-')) {
        int oh, om;
        if (n - i != 6 || s[i + 3] != ':' || digits(s + i + 1, 2, &oh) ||
            digits(s + i + 4, 2, &om) || oh > 23 || om > 59)
            return -1;
        offset_s = (int64_t)(oh * 3600 + om * 60) * (s[i] == '+' ? 1 : -1);
        i += 6;
    } else {
        return -1;
    }
    if (i != n) return -1;
    int64_t t = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - offset_s;
    *us = t * 1000000 + frac;
    return 0;
}

/* ---- base64 ---- */

static int b64_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

int lr_b64_decode(const char *s, size_t n, unsigned char **out, size_t *outlen)
{
    *out = NULL;
    *outlen = 0;
    if (n % 4 == 0 && n >= 2 && s[n - 1] == '=') n -= s[n - 2] == '=' ? 2 : 1;
    if (n % 4 == 1) return -1; /* 6 bits cannot end a byte */
    if (n == 0) return 0;
    unsigned char *o = malloc(n / 4 * 3 + 3);
    if (o == NULL) return -1;
    size_t k = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64_val((unsigned char)s[i]);
        if (v < 0) {
            free(o);
            return -1;
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            o[k++] = (unsigned char)(acc >> bits);
        }
    }
    *out = o;
    *outlen = k;
    return 0;
}

/* ---- one line ---- */

static int is_tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* The request target: bytes that cannot appear in a request line are
 * percent-encoded. */
static char *make_target(const char *p, size_t n, size_t *outlen)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t need = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        need += (c <= 0x20 || c >= 0x7f) ? 3 : 1;
    }
    char *t = malloc(need + 1);
    if (t == NULL) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c <= 0x20 || c >= 0x7f) {
            t[k++] = '%';
            t[k++] = hex[c >> 4];
            t[k++] = hex[c & 15];
        } else {
            t[k++] = (char)c;
        }
    }
    t[k] = '\0';
    *outlen = k;
    return t;
}

void lr_entry_free(lr_entry_t *e)
{
    free(e->target);
    free(e->body);
    e->target = NULL;
    e->body = NULL;
}

int lr_parse_line(const char *line, size_t len, lr_entry_t *out, char *why, size_t whylen)
{
    memset(out, 0, sizeof(*out));
    json_error_t je;
    json_t *o = json_loadb(line, len, 0, &je);
    int rc = -1;
    if (o == NULL) {
        snprintf(why, whylen, "not JSON: %s (column %d)", je.text, je.column);
        return -1;
    }
    if (!json_is_object(o)) {
        snprintf(why, whylen, "not a JSON object");
        goto out;
    }
    json_t *ts = json_object_get(o, "ts");
    if (!json_is_string(ts)) {
        snprintf(why, whylen, "\"ts\" is missing or not a string");
        goto out;
    }
    if (lr_parse_ts(json_string_value(ts), json_string_length(ts), &out->ts_us) < 0) {
        /* quoted as the log writes it (JSON escapes): a control byte in
         * it must not reach the terminal, nor a newline split the report */
        size_t n = json_string_length(ts);
        mm_buf_t q;
        mm_buf_init(&q);
        mm_buf_json_str(&q, json_string_value(ts), n < 40 ? n : 40);
        snprintf(why, whylen, "\"ts\" is not an RFC 3339 date-time: \"%.*s\"",
                 q.oom ? 0 : (int)q.len, q.oom ? "" : q.p);
        mm_buf_free(&q);
        goto out;
    }
    json_t *m = json_object_get(o, "method");
    if (!json_is_string(m)) {
        snprintf(why, whylen, "\"method\" is missing or not a string");
        goto out;
    }
    const char *ms = json_string_value(m);
    size_t mn = json_string_length(m);
    if (mn == 0) {
        snprintf(why, whylen, "\"method\" is empty (the request was rejected before its method)");
        goto out;
    }
    if (mn > LR_METHOD_MAX) {
        snprintf(why, whylen, "\"method\" is longer than %d characters", LR_METHOD_MAX);
        goto out;
    }
    for (size_t i = 0; i < mn; i++) {
        if (!is_tchar((unsigned char)ms[i])) {
            snprintf(why, whylen, "\"method\" is not an HTTP token");
            goto out;
        }
    }
    memcpy(out->method, ms, mn + 1);
    json_t *p = json_object_get(o, "path");
    if (!json_is_string(p)) {
        snprintf(why, whylen, "\"path\" is missing or not a string");
        goto out;
    }
    if (json_string_length(p) == 0 || json_string_value(p)[0] != '/') {
        snprintf(why, whylen, "\"path\" does not start with '/'");
        goto out;
    }
    out->target = make_target(json_string_value(p), json_string_length(p), &out->target_len);
    if (out->target == NULL) {
        snprintf(why, whylen, "out of memory");
        goto out;
    }
    json_t *id = json_object_get(o, "request_id");
    if (json_is_string(id)) {
        mm_str_t s = {json_string_value(id), json_string_length(id)};
        if (http_valid_request_id(s)) memcpy(out->request_id, s.p, s.n + 1);
    } else if (id != NULL && !json_is_null(id)) {
        snprintf(why, whylen, "\"request_id\" is neither a string nor null");
        goto out;
    }
    json_t *b = json_object_get(o, "body_b64");
    if (b != NULL) {
        if (!json_is_string(b) || lr_b64_decode(json_string_value(b), json_string_length(b),
                                                &out->body, &out->body_len) < 0) {
            snprintf(why, whylen, "\"body_b64\" is not valid base64");
            goto out;
        }
        out->has_body = 1;
        out->body_truncated = json_is_true(json_object_get(o, "body_truncated"));
    }
    rc = 0;
out:
    json_decref(o);
    if (rc < 0) lr_entry_free(out);
    return rc;
}

/* ---- a whole log ---- */

static int push(lr_log_t *log, const lr_entry_t *e)
{
    if (log->n == log->cap) {
        size_t cap = log->cap ? log->cap * 2 : 256;
        lr_entry_t *v = realloc(log->v, cap * sizeof(*v));
        if (v == NULL) return -1;
        log->v = v;
        log->cap = cap;
    }
    log->v[log->n++] = *e;
    return 0;
}

int lr_read(FILE *f, const char *name, lr_log_t *log, FILE *report, size_t max_reports, char *err,
            size_t errlen)
{
    memset(log, 0, sizeof(*log));
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    int rc = 0;
    errno = 0;
    while ((got = getline(&line, &cap, f)) >= 0) {
        size_t n = (size_t)got;
        int had_newline = n > 0 && line[n - 1] == '\n';
        if (had_newline) n--;
        if (n > 0 && line[n - 1] == '\r') n--;
        log->lines++;
        size_t i = 0;
        while (i < n && (line[i] == ' ' || line[i] == '\t')) i++;
        if (i == n) continue; /* blank: nothing to replay, nothing wrong */
        lr_entry_t e;
        char why[256];
        if (lr_parse_line(line, n, &e, why, sizeof(why)) == 0) {
            e.line = log->lines;
            if (e.body_truncated) log->truncated_bodies++;
            if (push(log, &e) < 0) {
                lr_entry_free(&e);
                snprintf(err, errlen, "%s: out of memory at line %zu", name, log->lines);
                rc = -1;
                break;
            }
            continue;
        }
        log->skipped++;
        if (report && log->skipped <= max_reports) {
            if (!had_newline)
                fprintf(report, "%s:%zu: skipped: truncated (the file ends mid-line): %s\n", name,
                        log->lines, why);
            else
                fprintf(report, "%s:%zu: skipped: %s\n", name, log->lines, why);
        }
    }
    if (rc == 0 && ferror(f)) {
        snprintf(err, errlen, "%s: read error: %s", name, strerror(errno ? errno : EIO));
        rc = -1;
    }
    if (report && log->skipped > max_reports)
        fprintf(report, "%s: %zu more skipped lines not shown (%zu skipped in all)\n", name,
                log->skipped - max_reports, log->skipped);
    free(line);
    if (rc < 0) lr_free(log);
    return rc;
}

int lr_load(const char *path, lr_log_t *log, FILE *report, size_t max_reports, char *err,
            size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    int rc = lr_read(f, path, log, report, max_reports, err, errlen);
    fclose(f);
    return rc;
}

/* Merge sort (stable, O(n log n), no recursion depth worth a thought). */
void lr_sort_by_ts(lr_log_t *log)
{
    size_t n = log->n;
    if (n < 2) return;
    lr_entry_t *tmp = malloc(n * sizeof(*tmp));
    if (tmp == NULL) {
        /* Insertion sort in place: slower, but never wrong. */
        for (size_t i = 1; i < n; i++) {
            lr_entry_t e = log->v[i];
            size_t j = i;
            while (j > 0 && log->v[j - 1].ts_us > e.ts_us) {
                log->v[j] = log->v[j - 1];
                j--;
            }
            log->v[j] = e;
        }
        return;
    }
    lr_entry_t *a = log->v, *b = tmp;
    for (size_t w = 1; w < n; w *= 2) {
        for (size_t lo = 0; lo < n; lo += 2 * w) {
            size_t mid = lo + w < n ? lo + w : n;
            size_t hi = lo + 2 * w < n ? lo + 2 * w : n;
            size_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi) b[k++] = a[j].ts_us < a[i].ts_us ? a[j++] : a[i++];
            while (i < mid) b[k++] = a[i++];
            while (j < hi) b[k++] = a[j++];
        }
        lr_entry_t *t = a;
        a = b;
        b = t;
    }
    if (a != log->v) memcpy(log->v, a, n * sizeof(*a));
    free(tmp);
}

void lr_free(lr_log_t *log)
{
    for (size_t i = 0; i < log->n; i++) lr_entry_free(&log->v[i]);
    free(log->v);
    memset(log, 0, sizeof(*log));
}

void lr_pass_id(const char *id, size_t pass, char *out)
{
    size_t n = strlen(id);
    char sfx[24] = "";
    if (pass > 0 && n > 0) snprintf(sfx, sizeof(sfx), ".%zu", pass + 1);
    size_t sn = strlen(sfx);
    size_t keep = n + sn <= MM_REQID_MAX ? n : MM_REQID_MAX - sn;
    memcpy(out, id + (n - keep), keep);
    memcpy(out + keep, sfx, sn + 1);
}

/* ---- pacing ---- */

int lr_schedule(const int64_t *ts_us, size_t n_log, size_t n_total, const lr_pace_t *pace,
                uint64_t *out, char *err, size_t errlen)
{
    const double limit = 9.2e18; /* below 2^63 µs */
    if (n_total == 0) return 0;
    if (n_log == 0) {
        snprintf(err, errlen, "schedule: the log is empty");
        return -1;
    }
    switch (pace->mode) {
    case LR_PACE_MAX:
        memset(out, 0, n_total * sizeof(*out));
        return 0;
    case LR_PACE_RATE:
        if (!(pace->rate > 0) || !isfinite(pace->rate)) {
            snprintf(err, errlen, "schedule: rate must be a positive number of requests/s");
            return -1;
        }
        for (size_t i = 0; i < n_total; i++) {
            double t = (double)i * 1e6 / pace->rate;
            if (t > limit) {
                snprintf(err, errlen, "schedule: request %zu would start after 2^63 µs", i + 1);
                return -1;
            }
            out[i] = (uint64_t)llround(t);
        }
        return 0;
    case LR_PACE_SPEED:
        break;
    default:
        snprintf(err, errlen, "schedule: unknown pacing mode %d", (int)pace->mode);
        return -1;
    }
    if (!(pace->speed > 0) || !isfinite(pace->speed)) {
        snprintf(err, errlen, "schedule: speed must be a positive factor");
        return -1;
    }
    /* Offsets within one pass, made monotonic. */
    double span = 0, prev = 0;
    for (size_t i = 1; i < n_log; i++) {
        double d = (double)(ts_us[i] - ts_us[0]);
        if (d < prev) d = prev;
        prev = d;
    }
    span = prev;
    double gap = n_log > 1 ? span / (double)(n_log - 1) : 1e6;
    if (n_log > 1 && span == 0) gap = 1000;
    double period = span + gap;
    prev = 0;
    for (size_t i = 0; i < n_total; i++) {
        size_t k = i % n_log;
        double d = k == 0 ? 0 : (double)(ts_us[k] - ts_us[0]);
        if (k == 0) prev = 0;
        if (d < prev) d = prev;
        prev = d;
        double t = ((double)(i / n_log) * period + d) / pace->speed;
        if (t > limit) {
            snprintf(err, errlen, "schedule: request %zu would start after 2^63 µs", i + 1);
            return -1;
        }
        out[i] = (uint64_t)llround(t);
    }
    return 0;
}
