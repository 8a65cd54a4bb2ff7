/* upstream.h — connection pools to model servers and one HTTP exchange on a
 * pooled connection.
 *
 * A pool per upstream keeps idle keep-alive connections (bounded by `pool`,
 * idle + busy), opens new ones on demand with a connect timeout, and queues
 * users when every connection is busy. A *user* (a client request, a shadow
 * mirror) acquires a connection, writes its request, and receives the
 * response as callbacks. Bytes handed to on_body point into the connection's
 * read buffer and stay valid until the user calls up_resume() — that is the
 * backpressure: a slow client stops the upstream read, and no body byte is
 * copied on its way through.
 *
 * Outlier ejection (Envoy-style) lives here too because it is a property of
 * the upstream, not of any experiment: `consecutive_5xx` answers in a row
 * eject it for base_ms × (number of ejections). */
#ifndef MM_UPSTREAM_H
#define MM_UPSTREAM_H

#include <llhttp.h>
#include <uv.h>

#include "addr.h"
#include "config.h"
#include "http.h"

typedef struct up_pool_s up_pool_t;
typedef struct up_conn_s up_conn_t;
typedef struct up_user_s up_user_t;

typedef enum {
    UP_ERR_CONNECT = 0,     /* refused, unreachable */
    UP_ERR_CONNECT_TIMEOUT, /* connect_timeout_ms passed */
    UP_ERR_TIMEOUT,         /* timeout_ms passed waiting for the answer */
    UP_ERR_RESET,           /* closed or reset mid-exchange */
    UP_ERR_PROTOCOL,        /* not a valid HTTP answer */
    UP_ERR_OVERFLOW,        /* pool exhausted: the wait queue full, or waited too long */
    UP_ERR__COUNT
} up_err_t;

const char *up_err_name(up_err_t e);

/* The answer's head, valid during on_head (spans point into the read buffer). */
typedef struct {
    int status;
    int http_minor;
    const http_head_t *head;
    const char *base; /* span base for head */
    int chunked;      /* Transfer-Encoding: chunked */
    int has_length;   /* Content-Length present */
    uint64_t content_length;
    int until_eof; /* body ends when the connection closes */
    int keep_alive;
    int no_body; /* HEAD request, 1xx/204/304 */
} up_resp_t;

typedef struct {
    /* The connection is ours: write the request with up_write(). */
    void (*on_conn)(up_user_t *u, up_conn_t *c);
    /* The request bytes passed to up_write() were written. */
    void (*on_sent)(up_user_t *u, up_conn_t *c);
    /* The answer's head. Parsing pauses until up_resume(). */
    void (*on_head)(up_user_t *u, up_conn_t *c, const up_resp_t *r);
    /* Body bytes (raw as framed on the wire, or decoded when up_set_decode was
     * called). Parsing pauses until up_resume(). */
    void (*on_body)(up_user_t *u, up_conn_t *c, const char *p, size_t n);
    /* The answer is complete. The connection is still the user's until
     * up_release(). */
    void (*on_done)(up_user_t *u, up_conn_t *c);
    /* The exchange failed; c is NULL if no connection was obtained. After
     * this call the connection is gone (closed by the pool). `reused` tells
     * whether the failure happened on a reused keep-alive connection before
     * any answer byte (safe to retry on a fresh one). Returns 1 when, so
     * told, the user sends the request again: the failure was then the
     * keep-alive race (the server closed an idle connection as we reused
     * it), not the server's, and counts in neither the error metrics nor
     * the ejection runs; else 0. */
    int (*on_error)(up_user_t *u, up_conn_t *c, up_err_t kind, int reused);
} up_user_ops_t;

struct up_user_s {
    const up_user_ops_t *ops;
    up_user_t *qnext, *qprev; /* the pool's wait queue */
    up_pool_t *waiting_on;
    up_conn_t *pending_conn; /* a connect in flight on this user's behalf */
    int no_body_expected;    /* HEAD request: the answer has no body */
};

/* A pool for cfg. `addrs`: where to connect, already looked up (a reload
 * does it off the loop); NULL: look it up now, blocking (startup only). A
 * host name is looked up again every cfg->resolve_ms in libuv's thread
 * pool. Exchanges take the addresses in turn. */
up_pool_t *up_pool_create(uv_loop_t *loop, const cfg_upstream_t *cfg, const mm_addrs_t *addrs,
                          char *err, size_t errlen);
/* Where new connections of the pool go (the last successful lookup). */
const mm_addrs_t *up_pool_addrs(const up_pool_t *p);

/* One more router uses p (a reload keeps an unchanged upstream's pool: its
 * connections, counters and outlier ejection go on); each up_pool_release
 * one fewer. */
void up_pool_ref(up_pool_t *p);
/* A kept pool's addresses, as a reload looked its name up again
 * (resolve_ms 0): a changed set is taken as a re-resolution's is. */
void up_pool_set_addrs(up_pool_t *p, const mm_addrs_t *set);
/* Whether p was made for an upstream configured as cfg is (name, url, pool
 * size, timeouts, eject, resolve_ms). */
int up_pool_same(const up_pool_t *p, const cfg_upstream_t *cfg);
/* Drop the pool once no router uses it: idle connections close now, busy
 * ones when released. The pool's memory goes when its last connection has
 * closed. */
void up_pool_release(up_pool_t *p);
const cfg_upstream_t *up_pool_cfg(const up_pool_t *p);
/* Shutting down: close idle connections now, and every busy one when it is
 * released, so the event loop can run dry. */
void up_pool_drain(up_pool_t *p);

/* Get a connection: on_conn (maybe before return) or on_error. */
void up_acquire(up_pool_t *p, up_user_t *u);
/* Withdraw a user still waiting in the queue or for a connect. */
void up_cancel(up_pool_t *p, up_user_t *u);
/* A user that waited in the queue as long as it will: withdrawn, counted as
 * an overflow and told so by on_error(UP_ERR_OVERFLOW). No-op if not queued. */
void up_expire(up_pool_t *p, up_user_t *u);

/* Write request bytes (at most 4 buffers; they must stay valid until
 * on_sent). One write at a time. on_sent may run before up_write returns
 * (the kernel took everything at once). `last`: the request ends with these
 * bytes. Until it has, timeout_ms does not run while every byte given is
 * written and no answer byte has come (the server is waiting for the rest). */
int up_write(up_conn_t *c, const uv_buf_t *bufs, unsigned n, int last);
/* Deliver decoded body spans instead of raw bytes (set before up_resume after on_head). */
void up_set_decode(up_conn_t *c, int decode);
/* The current answer's body bytes parsed so far, de-chunked whether or not
 * on_body gets them decoded: what the request log calls bytes_out (a chunked
 * answer passed on chunked hands on_body its framing too). */
uint64_t up_body_bytes(const up_conn_t *c);
/* Continue parsing after on_head/on_body. */
void up_resume(up_conn_t *c);
/* Give the connection back: reusable if the exchange completed cleanly. */
void up_release(up_conn_t *c, int reusable);
/* The user's own deadline passed (a mirror's or a ranker's timeout_ms,
 * which the pool's timers do not know): give up on the exchange and count
 * it in the pool's errors as the pool would its own — `timeout` (and a
 * failed exchange of the address) with a connection, `overflow` (no
 * connection came in time) while still waiting. No callback follows. */
void up_abandon_timeout(up_conn_t *c);
void up_cancel_overdue(up_pool_t *p, up_user_t *u);
/* 1 if this exchange runs on a connection that served an earlier one. */
int up_conn_reused(const up_conn_t *c);

/* Outlier detection. */
void up_pool_observe(up_pool_t *p, int status, uint64_t now_ms);
int up_pool_ejected(up_pool_t *p, uint64_t now_ms);

/* Counters for metrics. */
typedef struct {
    uint64_t errors[UP_ERR__COUNT];
    uint64_t ejections;
    uint64_t connects;
    uint64_t resolve_failures; /* re-resolutions that failed (the address is kept) */
    uint64_t readdressed;      /* re-resolutions that moved the pool to new addresses */
    int open, idle, waiting;
    int addresses;              /* the addresses exchanges take in turn */
    uint64_t address_ejections; /* one of several addresses ejected (see upstream.c) */
} up_pool_stats_t;
void up_pool_stats(const up_pool_t *p, up_pool_stats_t *out);

/* One of the addresses exchanges take in turn, since the set last changed
 * (a re-resolution, a reload's lookup): answers (a head came, 5xx included)
 * and failed exchanges (connect, timeout, reset, protocol), and whether
 * outlier ejection skips it now (several addresses only). */
typedef struct {
    char address[64]; /* "IP:PORT", IPv6 in brackets */
    uint64_t answers, fails;
    int ejected;
} up_addr_stats_t;
/* Address i (0 .. up_pool_stats' addresses - 1): 0, or -1 past the end. */
int up_pool_addr_stats(const up_pool_t *p, int i, up_addr_stats_t *out);

#endif
