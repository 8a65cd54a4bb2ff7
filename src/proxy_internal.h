/* proxy_internal.h — the client connection and the request it carries.
 * Shared by proxy.c (the request life cycle), shadow_rt.c (mirrors hang off a
 * request) and the local handlers' plumbing; nothing else includes it. */
#ifndef MM_PROXY_INTERNAL_H
#define MM_PROXY_INTERNAL_H

#include "server.h"

/* C_LINGER: answered and closing; what the client still sends is read and
 * dropped for a while first (see conn_linger in proxy.c). */
enum { C_IDLE = 0, C_HEAD, C_BODY, C_WAIT, C_LINGER, C_CLOSING };

typedef struct shadow_group_s shadow_group_t;

/* One request; embedded in its connection (one request at a time). */
typedef struct {
    conn_t *conn;
    router_t *router; /* referenced for the request's lifetime */
    exp_rt_t *exp;    /* NULL: unrouted or local */
    up_user_t user;   /* our side of the upstream exchange */
    up_pool_t *pool;
    up_conn_t *up;
    policy_choice_t choice;
    int arm;          /* the arm whose answer the client gets */
    int chosen;       /* the arm the policy chose (differs after a fallback) */
    mm_buf_t up_head; /* the head sent upstream */
    mm_buf_t out;     /* the head (or whole answer) sent to the client */
    mm_buf_t local_body;
    mm_buf_t url;       /* request target, copied: outlives the read buffer */
    mm_buf_t fwd_lines; /* the client's headers as forwarded (copied at head time) */
    mm_buf_t captured;  /* request body kept for mirrors */
    uint64_t capture_limit;
    shadow_group_t *shadow;
    char id[MM_REQID_MAX + 1];
    size_t id_len;
    uint64_t id_key; /* store_req_key of id, once routed */
    char method[24];
    size_t method_len;
    int http_minor;
    int keep_alive;
    int head_request;
    int req_chunked;
    int has_body;
    int local, dispatched;
    int discard;        /* answered once its body is read and dropped (proxy.c, discard_then): the
                           connection stays */
    int discard_status; /* that answer: a 404, or an upstream error met mid-body */
    const char *discard_code, *discard_msg;
    int fanout;      /* answered by every arm at once (fanout.c) */
    int merged;      /* the answer was merged from several arms (interleave) */
    uint64_t serial; /* distinguishes successive requests on the connection */
    int active;
    int body_done; /* the whole request body was read */
    int up_head_written;
    int replayable;  /* every body byte forwarded so far is still in the buffer */
    size_t body_off; /* where the raw body starts in the read buffer */
    int retry, retries;
    int queued;     /* waited in a pool's queue (acquire): pu_on_conn restores the client's clock */
    int responding; /* the answer to the client has started */
    int answered;   /* the arm's answer head arrived (not one of our errors) */
    int cut;        /* the arm's answer broke off after its head was passed on */
    int head_pending; /* the answer's head is built but not yet written */
    int final_write;  /* the request finishes when the pending write completes */
    int up_done;
    int aborted;
    int capture_body;
    int up_errors, last_err;
    int chosen_failed; /* the chosen arm failed before answering; the champion took over */
    int status;
    uint64_t body_in;   /* request body bytes (de-chunked) */
    uint64_t bytes_out; /* answer body bytes */
    uint64_t t0_us;
} req_t;

struct conn_s {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t wreq;
    uv_write_t wreq_continue;
    uv_shutdown_t shutdown_req; /* the FIN of a lingering close */
    mm_server_t *srv;
    int kind;
    conn_t *next, *prev;
    llhttp_t parser;
    http_head_t head;
    char *rbuf;
    size_t rcap, rlen, rpos;
    int phase;
    int reading, writing;
    int processing; /* inside conn_process: it goes on with what changed */
    int pinned;     /* a write references bytes in rbuf: do not move or reuse it */
    int closing;
    int peer_eof; /* the client half-closed after a whole request: answer, then close */
    int handles;
    int refs;
    int method_done; /* the request line's method was read (logged even if the head is refused) */
    int url_done;    /* ... and its target (c->head's url span) */
    int headers_done, msg_done;
    uint64_t head_begin_us; /* mm_now_us() at the current head's first byte */
    uint64_t deadline;      /* loop time the current timeout expires; 0: none */
    uint64_t timer_due;     /* loop time the libuv timer is armed for */
    char peer[64];
    req_t req;
};

/* A request answered later (a fan-out, a group scrape) holds the connection
 * and remembers req.serial: 1 while the client still waits for that very
 * request (not gone, not closing, not on to another). */
static inline int conn_awaits(const conn_t *c, uint64_t serial)
{
    return !c->closing && c->req.active && c->req.serial == serial;
}

void proxy_init_parser_settings(void);
/* Append the client's end-to-end headers as forwarded upstream (hop-by-hop
 * and modelmux's own removed, X-Forwarded-For appended, `host` — the Host
 * header's value, or an absolute-form target's authority — sent as
 * X-Forwarded-Host). fanout: each leg re-frames the body, so Content-Length
 * is dropped; and both answers are parsed to be merged, which a compressed
 * one cannot be, so the client's Accept-Encoding is replaced by `identity`. */
void proxy_forward_headers(mm_buf_t *b, const http_head_t *h, const char *base, const char *peer,
                           mm_str_t host, int fanout);
void conn_on_timer(uv_timer_t *t);
void conn_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
/* Called by proxy.c when draining and the last connection closed. */
void server_drained(mm_server_t *srv);
/* server_drained() once draining, with no connection and no mirror left. */
void server_maybe_drained(mm_server_t *srv);

#endif
