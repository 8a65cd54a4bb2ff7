/* reqlog.h — the request log (DESIGN.md §7): one JSON object per line,
 * formatted on the loop into a memory buffer and written by a timer through
 * libuv's thread pool (uv_fs_write), so the loop never blocks on the disk. */
#ifndef MM_REQLOG_H
#define MM_REQLOG_H

#include <uv.h>

#include "server.h"

typedef struct {
    const char *arm;
    int status;
    uint64_t latency_us;
    const char *outcome;
} reqlog_shadow_t;

typedef struct {
    const char *request_id;
    const char *experiment; /* NULL: none matched */
    const char *arm;        /* NULL: none */
    const char *method;
    const char *path;
    size_t path_len;
    int status;
    uint64_t latency_us;
    uint64_t bytes_in, bytes_out;
    const reqlog_shadow_t *shadow;
    size_t n_shadow;
    const char *body; /* with log.bodies: the request body (NULL otherwise) */
    size_t body_len;
    uint64_t ts_us; /* wall clock (reqlog_wall_us) at the request's arrival; 0: now - latency_us */
} reqlog_entry_t;

/* Bodies longer than this are logged truncated ("body_truncated": true), as
 * are bodies of which fewer bytes than bytes_in were kept. */
#define REQLOG_BODY_MAX (64 * 1024)

/* path NULL → no log. Returns NULL on error with err filled. counts: where
 * the log counts (NULL: its own). */
reqlog_t *reqlog_open(uv_loop_t *loop, const char *path, double sample, int bodies, uint64_t seed,
                      reqlog_counts_t *counts, char *err, size_t errlen);
/* The same for a reload that turns the log on: the file is opened in the
 * thread pool (the loop never waits for a disk), and lines written meanwhile
 * wait for it. If it cannot be opened, that is logged and lines are dropped
 * (counted) until a reqlog_reopen succeeds. NULL: out of memory. */
reqlog_t *reqlog_start(uv_loop_t *loop, const char *path, double sample, int bodies, uint64_t seed,
                       reqlog_counts_t *counts);
/* Sampling decision for one request (consumes the log's own RNG). */
int reqlog_sampled(reqlog_t *l);
int reqlog_bodies(const reqlog_t *l);
void reqlog_write(reqlog_t *l, const reqlog_entry_t *e);
/* Reopen the file (SIGHUP, log rotation). */
void reqlog_reopen(reqlog_t *l);
/* A reload's log settings: sample and bodies from the next request on; a
 * new path from the next reqlog_reopen (kept as the previous one, and tried
 * again at the next reopen, if it cannot be opened). */
void reqlog_configure(reqlog_t *l, const char *path, double sample, int bodies);
/* Flush and close; done(arg) when the last write is on disk. */
void reqlog_close(reqlog_t *l, void (*done)(void *), void *arg);
/* Lines dropped (buffer full, write errors) and write errors, for metrics. */
void reqlog_counters(const reqlog_t *l, uint64_t *written, uint64_t *dropped, uint64_t *errors);

/* proxy.c's hook: log the finished request on c (sampling applied here).
 * Requests on the admin listener are not logged. While c->req.shadow is set
 * the shadow runtime owns the line (it writes it once the mirrors are done),
 * so nothing is written here. */
void reqlog_request(mm_server_t *srv, conn_t *c, uint64_t latency_us);

/* The entry for the request on c as it stands when it finishes: a borrowed
 * view (pointers into c->req and the router), valid until req_finish
 * returns; copy what must outlive it. With log.bodies the body comes from
 * the local body (admin, feedback) or the captured body (mirrors). */
void reqlog_entry_from_req(conn_t *c, uint64_t latency_us, reqlog_entry_t *out);

/* Wall-clock time in microseconds since the Unix epoch. */
uint64_t reqlog_wall_us(void);

#endif
