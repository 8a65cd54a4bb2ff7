/* reqlog.c — the request log (DESIGN.md §7): one JSON object per line.
 *
 * Lines are formatted on the loop thread straight into an in-memory buffer
 * (`fill`) with hand-rolled appends — no printf per field, one cached
 * strftime per second for the timestamp. Writing is double-buffered: when a
 * flush is due (a 200 ms timer after the first line, or 256 KiB collected)
 * the filled buffer is swapped with the idle one and handed to uv_fs_write,
 * which runs in libuv's thread pool, while new lines keep going into the
 * other buffer. So the loop never waits on the disk, and under load one
 * write carries thousands of lines.
 *
 * Trade-offs:
 *   - Memory is bounded (8 MiB in the two buffers together). Beyond that,
 *     lines are dropped and counted rather than stalling the proxy; a disk
 *     that cannot keep up costs log lines, never latency.
 *   - A failed write (full disk, file gone bad) drops the lines it carried,
 *     counts them, and is reported on stderr once per burst (until a write
 *     succeeds again); retrying would only grow memory on a disk that stays
 *     full.
 *   - The file is opened O_APPEND, so several workers may share one file and
 *     lines (each write holds whole lines) are never torn by lseek races.
 *   - reqlog_open opens synchronously: it runs at startup, where the config
 *     file is read synchronously too. reqlog_reopen (SIGHUP, rotation) runs
 *     on the thread pool after the write in flight; if the new open fails the
 *     old descriptor is kept (as nginx does), so lines keep going to the
 *     renamed file rather than nowhere. reqlog_start (a reload turning the
 *     log on) opens as a reopen does, holding the lines meanwhile; until an
 *     open succeeds there is no file, and lines are dropped (counted).
 *   - `ts` is the request's arrival (now - latency at the end), so a replay
 *     of the log reproduces the arrival process, not the completion order.
 *   - Strings that come from the client (the path) are escaped as JSON with
 *     invalid UTF-8 replaced by U+FFFD: one bad byte must not make the whole
 *     line unparsable. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "proxy_internal.h"
#include "reqlog.h"

#define RL_FLUSH_MS    200
#define RL_FLUSH_BYTES (256 * 1024)
#define RL_MAX_PENDING (8u * 1024 * 1024)

struct reqlog_s {
    uv_loop_t *loop;
    char *path;
    double sample;
    int bodies;
    mm_rng_t rng;
    uv_file fd;

    mm_buf_t fill;   /* lines being formatted (loop thread) */
    mm_buf_t flight; /* lines being written (thread pool); untouched until on_written */
    uint64_t fill_lines, flight_lines;
    size_t flight_off;
    uv_fs_t wreq;
    int writing;

    uv_timer_t timer;
    int timer_armed;
    int due; /* the timer fired while a write or reopen was in flight */

    uv_work_t reopen_req;
    int reopen_wanted, reopening;
    uv_file reopen_fd, reopen_old_fd;
    int reopen_errno;
    char *next_path;       /* a reload's new path, opened by the next reopen */
    char *reopen_old_path; /* the path in use while next_path is being opened */

    int in_error;      /* a write error was reported; cleared by the next good write */
    int drop_reported; /* a buffer-full drop was reported; cleared when a line fits again */

    int closing;
    int close_pending; /* callbacks still due before done() */
    uv_fs_t close_req;
    void (*done)(void *);
    void *done_arg;

    reqlog_counts_t own, *counts; /* counts: the caller's, else own */

    int64_t ts_sec;
    char ts_prefix[24]; /* "YYYY-MM-DDTHH:MM:SS" of ts_sec */
};

static void kick(reqlog_t *l);

uint64_t reqlog_wall_us(void)
{
    uv_timeval64_t tv;
    if (uv_gettimeofday(&tv) != 0) return 0;
    return (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
}

/* mkdir -p of the directory part of path. Errors surface at open(). */
static void make_parent_dirs(const char *path)
{
    size_t n = strlen(path);
    char *d = malloc(n + 1);
    if (d == NULL) return;
    memcpy(d, path, n + 1);
    for (size_t i = 1; i < n; i++) {
        if (d[i] != '/') continue;
        d[i] = '\0';
        if (mkdir(d, 0755) != 0 && errno != EEXIST) {
            free(d);
            return;
        }
        d[i] = '/';
    }
    free(d);
}

static int open_log(const char *path)
{
    make_parent_dirs(path);
    return open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
}

/* A log writing to fd (-1: none yet); NULL when out of memory. */
static reqlog_t *reqlog_new(uv_loop_t *loop, const char *path, double sample, int bodies,
                            uint64_t seed, reqlog_counts_t *counts, uv_file fd)
{
    reqlog_t *l = calloc(1, sizeof(*l));
    if (l == NULL || (l->path = strdup(path)) == NULL) {
        free(l);
        return NULL;
    }
    l->fd = fd;
    l->counts = counts ? counts : &l->own;
    l->loop = loop;
    l->sample = sample;
    l->bodies = bodies;
    l->ts_sec = -1;
    mm_rng_seed(&l->rng, seed);
    mm_buf_init(&l->fill);
    mm_buf_init(&l->flight);
    uv_timer_init(loop, &l->timer);
    l->timer.data = l;
    return l;
}

reqlog_t *reqlog_open(uv_loop_t *loop, const char *path, double sample, int bodies, uint64_t seed,
                      reqlog_counts_t *counts, char *err, size_t errlen)
{
    if (path == NULL) { /* no log: not an error, but nothing to return */
        if (errlen) err[0] = '\0';
        return NULL;
    }
    uv_file fd = open_log(path);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open request log %s: %s", path, strerror(errno));
        return NULL;
    }
    reqlog_t *l = reqlog_new(loop, path, sample, bodies, seed, counts, fd);
    if (l == NULL) {
        close(fd);
        snprintf(err, errlen, "out of memory");
    }
    return l;
}

reqlog_t *reqlog_start(uv_loop_t *loop, const char *path, double sample, int bodies, uint64_t seed,
                       reqlog_counts_t *counts)
{
    reqlog_t *l = reqlog_new(loop, path, sample, bodies, seed, counts, -1);
    if (l) reqlog_reopen(l);
    return l;
}

int reqlog_sampled(reqlog_t *l)
{
    if (l->sample >= 1.0) return 1;
    if (!(l->sample > 0.0)) return 0;
    return mm_rng_uniform(&l->rng) < l->sample;
}

int reqlog_bodies(const reqlog_t *l)
{
    return l->bodies;
}

void reqlog_counters(const reqlog_t *l, uint64_t *written, uint64_t *dropped, uint64_t *errors)
{
    if (written) *written = l->counts->written;
    if (dropped) *dropped = l->counts->dropped;
    if (errors) *errors = l->counts->errors;
}

/* ---- formatting ---- */

static void put_digits(char *p, uint64_t v, int width)
{
    for (int i = width - 1; i >= 0; i--) {
        p[i] = (char)('0' + v % 10);
        v /= 10;
    }
}

static void put_ts(reqlog_t *l, mm_buf_t *b, uint64_t us)
{
    int64_t sec = (int64_t)(us / 1000000u);
    if (sec != l->ts_sec) {
        time_t t = (time_t)sec;
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(l->ts_prefix, sizeof(l->ts_prefix), "%Y-%m-%dT%H:%M:%S", &tm);
        l->ts_sec = sec;
    }
    char frac[9];
    frac[0] = '.';
    put_digits(frac + 1, us % 1000000u, 6);
    frac[7] = 'Z';
    mm_buf_cstr(b, l->ts_prefix);
    mm_buf_append(b, frac, 8);
}

static void put_str_or_null(mm_buf_t *b, const char *s)
{
    if (s == NULL) {
        mm_buf_lit(b, "null");
        return;
    }
    mm_buf_lit(b, "\"");
    mm_buf_json_str(b, s, strlen(s));
    mm_buf_lit(b, "\"");
}

static void put_int(mm_buf_t *b, int v)
{
    if (v < 0) {
        mm_buf_lit(b, "-");
        mm_buf_u64(b, (uint64_t)(-(int64_t)v));
    } else {
        mm_buf_u64(b, (uint64_t)v);
    }
}

static void put_base64(mm_buf_t *b, const unsigned char *p, size_t n)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t out = (n + 2) / 3 * 4;
    if (mm_buf_reserve(b, out) < 0) return;
    char *o = b->p + b->len;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        *o++ = tbl[v >> 18];
        *o++ = tbl[(v >> 12) & 63];
        *o++ = tbl[(v >> 6) & 63];
        *o++ = tbl[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0);
        *o++ = tbl[v >> 18];
        *o++ = tbl[(v >> 12) & 63];
        *o++ = i + 1 < n ? tbl[(v >> 6) & 63] : '=';
        *o++ = '=';
    }
    b->len += out;
}

static void format_line(reqlog_t *l, mm_buf_t *b, const reqlog_entry_t *e)
{
    uint64_t ts = e->ts_us;
    if (ts == 0) {
        ts = reqlog_wall_us();
        ts = ts > e->latency_us ? ts - e->latency_us : 0;
    }
    mm_buf_lit(b, "{\"ts\":\"");
    put_ts(l, b, ts);
    mm_buf_lit(b, "\",\"request_id\":");
    put_str_or_null(b, e->request_id && e->request_id[0] ? e->request_id : NULL);
    mm_buf_lit(b, ",\"experiment\":");
    put_str_or_null(b, e->experiment);
    mm_buf_lit(b, ",\"arm\":");
    put_str_or_null(b, e->arm);
    mm_buf_lit(b, ",\"method\":");
    put_str_or_null(b, e->method ? e->method : "");
    mm_buf_lit(b, ",\"path\":\"");
    if (e->path) mm_buf_json_str(b, e->path, e->path_len);
    mm_buf_lit(b, "\",\"status\":");
    put_int(b, e->status);
    mm_buf_lit(b, ",\"latency_us\":");
    mm_buf_u64(b, e->latency_us);
    mm_buf_lit(b, ",\"bytes_in\":");
    mm_buf_u64(b, e->bytes_in);
    mm_buf_lit(b, ",\"bytes_out\":");
    mm_buf_u64(b, e->bytes_out);
    mm_buf_lit(b, ",\"shadow\":[");
    for (size_t i = 0; i < e->n_shadow; i++) {
        const reqlog_shadow_t *s = &e->shadow[i];
        if (i) mm_buf_lit(b, ",");
        mm_buf_lit(b, "{\"arm\":");
        put_str_or_null(b, s->arm);
        mm_buf_lit(b, ",\"status\":");
        put_int(b, s->status);
        mm_buf_lit(b, ",\"latency_us\":");
        mm_buf_u64(b, s->latency_us);
        mm_buf_lit(b, ",\"outcome\":");
        put_str_or_null(b, s->outcome);
        mm_buf_lit(b, "}");
    }
    mm_buf_lit(b, "]");
    if (l->bodies) {
        size_t n = e->body ? e->body_len : 0;
        if (n > REQLOG_BODY_MAX) n = REQLOG_BODY_MAX;
        mm_buf_lit(b, ",\"body_b64\":\"");
        put_base64(b, (const unsigned char *)e->body, n);
        mm_buf_lit(b, "\"");
        if ((uint64_t)n < e->bytes_in) mm_buf_lit(b, ",\"body_truncated\":true");
    }
    mm_buf_lit(b, "}\n");
}

/* ---- writing ---- */

static void on_timer(uv_timer_t *t)
{
    reqlog_t *l = t->data;
    l->timer_armed = 0;
    l->due = 1;
    kick(l);
}

static void on_written(uv_fs_t *req);

static void write_flight(reqlog_t *l)
{
    uv_buf_t buf =
        uv_buf_init(l->flight.p + l->flight_off, (unsigned)(l->flight.len - l->flight_off));
    l->writing = 1;
    int rc = uv_fs_write(l->loop, &l->wreq, l->fd, &buf, 1, -1, on_written);
    if (rc < 0) { /* not even queued: treat as a failed write */
        l->wreq.result = rc;
        on_written(&l->wreq);
    }
}

static void start_write(reqlog_t *l)
{
    mm_buf_t tmp = l->flight; /* swap: no copy */
    l->flight = l->fill;
    l->fill = tmp;
    mm_buf_reset(&l->fill);
    l->flight_lines = l->fill_lines;
    l->fill_lines = 0;
    l->flight_off = 0;
    l->due = 0;
    if (l->timer_armed) {
        uv_timer_stop(&l->timer);
        l->timer_armed = 0;
    }
    write_flight(l);
}

static void on_written(uv_fs_t *req)
{
    reqlog_t *l = container_of(req, reqlog_t, wreq);
    ssize_t res = req->result;
    size_t remaining = l->flight.len - l->flight_off;
    uv_fs_req_cleanup(req);
    if (res > 0 && (size_t)res < remaining) {
        l->flight_off += (size_t)res; /* short write: the rest goes next */
        write_flight(l);
        return;
    }
    if (res <= 0 && remaining > 0) {
        l->counts->errors++;
        l->counts->dropped += l->flight_lines;
        if (!l->in_error) {
            mm_log("request log %s: write failed: %s (%llu lines dropped; further errors are "
                   "counted silently until a write succeeds)",
                   l->path, res < 0 ? uv_strerror((int)res) : "no progress",
                   (unsigned long long)l->flight_lines);
            l->in_error = 1;
        }
    } else {
        l->counts->written += l->flight_lines;
        if (l->in_error) mm_log("request log %s: writing again", l->path);
        l->in_error = 0;
    }
    l->flight_lines = 0;
    l->flight_off = 0;
    mm_buf_reset(&l->flight);
    l->writing = 0;
    kick(l);
}

/* Runs on the thread pool: nothing else touches the descriptors meanwhile
 * (no write is in flight while a reopen is). */
static void reopen_work(uv_work_t *w)
{
    reqlog_t *l = container_of(w, reqlog_t, reopen_req);
    l->reopen_fd = open_log(l->path);
    l->reopen_errno = l->reopen_fd < 0 ? errno : 0;
    if (l->reopen_fd >= 0 && l->reopen_old_fd >= 0) close(l->reopen_old_fd);
}

static void reopen_done(uv_work_t *w, int status)
{
    reqlog_t *l = container_of(w, reqlog_t, reopen_req);
    l->reopening = 0;
    if (status == 0 && l->reopen_fd >= 0) {
        l->fd = l->reopen_fd;
        free(l->reopen_old_path);
        l->reopen_old_path = NULL;
    } else {
        l->counts->errors++;
        mm_log(l->fd >= 0 ? "request log %s: reopen failed: %s; still writing to the previous file"
                          : "request log %s: cannot open: %s; its lines are dropped (counted) "
                            "until a reload opens it",
               l->path, status != 0 ? uv_strerror(status) : strerror(l->reopen_errno));
        if (l->reopen_old_path) { /* the new path is tried again at the next reopen */
            if (l->next_path == NULL)
                l->next_path = l->path;
            else
                free(l->path);
            l->path = l->reopen_old_path;
            l->reopen_old_path = NULL;
        }
    }
    kick(l);
}

static void on_close_step(reqlog_t *l)
{
    if (--l->close_pending > 0) return;
    void (*done)(void *) = l->done;
    void *arg = l->done_arg;
    mm_buf_free(&l->fill);
    mm_buf_free(&l->flight);
    free(l->path);
    free(l->next_path);
    free(l);
    if (done) done(arg);
}

static void on_fd_closed(uv_fs_t *req)
{
    reqlog_t *l = container_of(req, reqlog_t, close_req);
    uv_fs_req_cleanup(req);
    on_close_step(l);
}

static void on_timer_closed(uv_handle_t *h)
{
    on_close_step((reqlog_t *)h->data);
}

static void finish_close(reqlog_t *l)
{
    l->close_pending = 2;
    uv_close((uv_handle_t *)&l->timer, on_timer_closed);
    if (l->fd < 0 || uv_fs_close(l->loop, &l->close_req, l->fd, on_fd_closed) < 0) on_close_step(l);
}

/* The one place that decides what happens next. */
static void kick(reqlog_t *l)
{
    if (l->writing || l->reopening || l->close_pending) return;
    if (l->reopen_wanted) {
        l->reopen_wanted = 0;
        l->reopening = 1;
        l->reopen_old_fd = l->fd;
        if (l->next_path) { /* only here: reopen_work reads l->path off the loop */
            l->reopen_old_path = l->path;
            l->path = l->next_path;
            l->next_path = NULL;
        }
        int rc = uv_queue_work(l->loop, &l->reopen_req, reopen_work, reopen_done);
        if (rc != 0) reopen_done(&l->reopen_req, rc); /* never queued: a failed reopen */
        return;
    }
    if (l->fd < 0) { /* no file (its open failed): nowhere to write */
        l->counts->dropped += l->fill_lines;
        l->fill_lines = 0;
        mm_buf_reset(&l->fill);
    }
    if (l->fill.len == 0) {
        if (l->closing) finish_close(l);
        return;
    }
    if (l->closing || l->due || l->fill.len >= RL_FLUSH_BYTES) {
        start_write(l);
        return;
    }
    if (!l->timer_armed) {
        uv_timer_start(&l->timer, on_timer, RL_FLUSH_MS, 0);
        l->timer_armed = 1;
    }
}

void reqlog_write(reqlog_t *l, const reqlog_entry_t *e)
{
    if (l->fill.len + l->flight.len >= RL_MAX_PENDING) {
        l->counts->dropped++;
        if (!l->drop_reported) {
            mm_log("request log %s: %u bytes waiting for the disk; dropping lines (counted)",
                   l->path, RL_MAX_PENDING);
            l->drop_reported = 1;
        }
        return;
    }
    l->drop_reported = 0;
    size_t before = l->fill.len;
    format_line(l, &l->fill, e);
    if (l->fill.oom) {
        l->fill.len = before; /* keep the lines already there */
        l->fill.oom = 0;
        l->counts->dropped++;
        return;
    }
    l->fill_lines++;
    kick(l);
}

void reqlog_reopen(reqlog_t *l)
{
    l->reopen_wanted = 1;
    kick(l);
}

/* A reload's settings. Sampling and bodies apply to the next request; a
 * new path is switched to by the reopen that follows (as a rotation is,
 * after the write in flight), so the loop never waits for an open. */
void reqlog_configure(reqlog_t *l, const char *path, double sample, int bodies)
{
    l->sample = sample;
    l->bodies = bodies;
    free(l->next_path); /* l->path: in use, or being opened by the reopen in flight */
    l->next_path = strcmp(path, l->path) != 0 ? strdup(path) : NULL;
}

void reqlog_close(reqlog_t *l, void (*done)(void *), void *arg)
{
    l->closing = 1;
    l->done = done;
    l->done_arg = arg;
    kick(l);
}

/* ---- the proxy's hook ---- */

/* Body bytes of the answer held whole in r->out (local answers, errors):
 * what follows the head. A proxied answer's r->out is its head only. */
static uint64_t local_answer_bytes(const req_t *r)
{
    if (!r->responding || r->out.len < 4) return 0;
    const char *end = memmem(r->out.p, r->out.len, "\r\n\r\n", 4);
    if (end == NULL) return 0;
    return (uint64_t)(r->out.len - (size_t)(end + 4 - r->out.p));
}

void reqlog_entry_from_req(conn_t *c, uint64_t latency_us, reqlog_entry_t *out)
{
    req_t *r = &c->req;
    memset(out, 0, sizeof(*out));
    out->request_id = r->id_len ? r->id : NULL;
    if (r->exp) {
        out->experiment = r->exp->cfg->name;
        out->arm = r->merged ? "interleave" : r->exp->ups[r->arm]->name;
    }
    out->method = r->method;
    out->path = r->url.p ? r->url.p : "";
    out->path_len = r->url.len;
    out->status = r->status;
    out->latency_us = latency_us;
    out->bytes_in = r->body_in;
    out->bytes_out = r->bytes_out + local_answer_bytes(r);
    const reqlog_t *l = c->srv->reqlog;
    if (l && l->bodies) {
        const mm_buf_t *b = NULL;
        if (r->local && !r->discard) /* a discarded body is captured as a routed one */
            b = &r->local_body;
        else if (r->capture_body && r->captured.len == r->body_in)
            b = &r->captured; /* captured whole */
        else if (r->capture_limit > 0 && r->captured.len > 0 &&
                 r->captured.len <= r->capture_limit && r->captured.len < r->body_in)
            b = &r->captured; /* capture stopped at its limit: a prefix */
        if (b && b->len && !b->oom) {
            out->body = b->p;
            out->body_len = b->len < r->body_in ? b->len : (size_t)r->body_in;
        }
    }
}

void reqlog_request(mm_server_t *srv, conn_t *c, uint64_t latency_us)
{
    reqlog_t *l = srv->reqlog;
    if (l == NULL || c->kind != CONN_DATA) return;
    if (c->req.shadow != NULL) return; /* written by the shadow runtime when its mirrors are done */
    if (!reqlog_sampled(l)) return;
    reqlog_entry_t e;
    reqlog_entry_from_req(c, latency_us, &e);
    reqlog_write(l, &e);
}
