/* leg.h — one buffered exchange with an upstream: send a head and a body
 * held by the owner, keep the (de-chunked) answer up to a bound, give up
 * after a timeout. A keep-alive connection found closed by the server before
 * any answer byte is retried on another one, as the proxied request is. Mirrors (shadow_rt.c) and
 * fan-out requests (fanout.c) are made of legs; the client's own request streams instead (proxy.c).
 *
 * A leg owns no libuv handle: its timeout is a deadline checked by the
 * clock (leg_clock_t) it was started on, one timer shared by every leg in
 * flight (see leg.c), so a leg's memory may be freed or reused as soon as
 * done() has been called, and a leg can be started again after leg_reuse()
 * with the capacity of its buffers kept. The server context owns the clock.
 */
#ifndef MM_LEG_H
#define MM_LEG_H

#include <uv.h>

#include "buf.h"
#include "upstream.h"

typedef struct leg_s leg_t;

/* What a leg keeps of its answer's headers (leg_t.keep_headers). */
enum {
    LEG_HEADERS_NONE = 0,
    LEG_HEADERS_COMPARE = 1, /* leg_header_block: for a comparison (shadow) */
    LEG_HEADERS_RELAY = 2,   /* leg_relay_lines: to answer a client with (fan-out) */
};

/* Distinct timeouts in flight with a queue each (mirror timeout_ms of each
 * experiment, upstream timeout_ms of each fan-out arm). More share a queue,
 * kept in order by insertion (a walk from the tail). */
#define LEG_QUEUES 8

typedef struct leg_queue_s {
    int timeout_ms;
    leg_t *head, *tail; /* by deadline, earliest first; empty: free for any timeout */
} leg_queue_t;

/* The deadlines of every leg started on one loop. Its timer is unreferenced:
 * it never keeps the loop alive by itself (a leg in flight has an upstream
 * connection, a connect or a busy pool behind it, which do). */
typedef struct {
    uv_loop_t *loop;
    uv_timer_t timer;
    int armed;    /* due is set: the timer fires then */
    uint64_t due; /* loop time (ms) */
    leg_queue_t q[LEG_QUEUES];
} leg_clock_t;

/* Open the clock on loop (its timer is initialised, unreferenced, idle). */
void leg_clock_init(leg_clock_t *clk, uv_loop_t *loop);
/* Close the clock's timer; the memory must stay until the loop has run the
 * close callback. Call when no leg is in flight any more (the loop has run
 * dry). A clock never opened (all zero) is left alone. */
void leg_clock_close(leg_clock_t *clk);
/* Time out every leg in flight now (the drain timeout has passed): each one's
 * done() runs with status 0 and timed_out set, as at its own deadline. */
void leg_clock_expire(leg_clock_t *clk);

struct leg_s {
    /* set by the owner before leg_start */
    mm_buf_t head;    /* the request head, complete */
    const char *body; /* request body (owner keeps it alive), may be NULL */
    size_t body_len;
    size_t keep_max;        /* answer bytes kept; beyond: truncated */
    int keep_headers;       /* fill `headers`: LEG_HEADERS_COMPARE or LEG_HEADERS_RELAY */
    void (*done)(leg_t *l); /* called once: answered, failed or timed out */
    void *owner;
    /* results */
    int status; /* 0: transport failure or timeout */
    int timed_out;
    up_err_t err;
    char ctype[128];
    mm_buf_t resp;
    mm_buf_t headers;       /* with keep_headers: the answer's header block or lines */
    size_t headers_body_at; /* LEG_HEADERS_RELAY: where its lines true of this body begin */
    int truncated;
    uint64_t latency_us;
    int started, finished;
    /* private */
    up_user_t user;
    up_pool_t *pool;
    up_conn_t *up;
    uint64_t t0_us;
    uint64_t deadline; /* loop time (ms) the leg times out */
    leg_t *qnext, *qprev;
    leg_queue_t *queue; /* the deadline queue it waits in while in flight */
    int retries;        /* resends after a stale keep-alive connection */
};

void leg_init(leg_t *l);
/* Acquire a connection from pool and run the exchange, timed out by clk
 * (on the pool's loop) after timeout_ms; done() follows, possibly before
 * leg_start returns. */
void leg_start(leg_t *l, leg_clock_t *clk, up_pool_t *pool, int timeout_ms, int head_request);
/* After done() (or if never started): make the leg ready for another
 * leg_start. Results are cleared and the buffers emptied; their memory is
 * kept unless larger than keep_cap bytes. owner/done/keep_max are cleared too. */
void leg_reuse(leg_t *l, size_t keep_cap);
/* After done() (or if never started): free the leg's buffers. The leg's
 * memory itself is the owner's and may go right away. */
void leg_free(leg_t *l);

/* The answer's end-to-end header lines as a comparison block, appended to
 * out: "name:value\n" per header, names lowercased, values trimmed, sorted
 * by name (stable). Hop-by-hop headers (and those named in Connection),
 * X-Modelmux-*, X-Request-Id, Content-Length and Date are left out: framing,
 * our own headers and the clock are not the model's answer. */
void leg_header_block(const up_resp_t *resp, mm_buf_t *out);
/* The answer's header lines a client gets when the answer is passed on:
 * "Name: value\r\n" as received, appended to out. Left out: hop-by-hop
 * headers (and those named in Connection), X-Modelmux-*, X-Request-Id,
 * Content-Length and Content-Type (the answer is re-framed and its
 * Content-Type written by whoever sends it). The lines true only of this
 * body (ETag, Content-MD5, the digests, Content-Range) come last: returns
 * out's length where they begin, so that a changed body goes out without. */
size_t leg_relay_lines(const up_resp_t *resp, mm_buf_t *out);
/* Copy an answer's Content-Type value into out (NUL-terminated, cut to
 * size - 1 bytes; empty when there is none), from the head's index. */
void leg_content_type(const up_resp_t *resp, char *out, size_t size);

/* The request head for a leg: METHOD base_path+url HTTP/1.1, Host, the
 * forwarded header lines, Content-Length (when there is a body or the
 * method carries one), X-Request-Id, X-Modelmux-Arm, then `extra` lines.
 * drop_length: header_lines may hold the client's Content-Length line(s),
 * which are left out (the leg frames its body itself). */
void leg_build_head(mm_buf_t *b, const char *method, const cfg_upstream_t *up, mm_str_t url,
                    mm_str_t header_lines, int drop_length, size_t body_len, const char *request_id,
                    const char *extra);

#endif
