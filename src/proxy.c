/* proxy.c — client connections and the life of a proxied request.
 *
 * One request at a time per connection: a pipelined request waits, unparsed,
 * in the read buffer until the answer before it has been written, so answers
 * go out in order without any reordering machinery (nginx does the same).
 *
 * The request is parsed by llhttp with pauses at the end of the head and at
 * the end of the message. Body bytes are not parsed until the upstream
 * connection is ready; then they are forwarded raw (chunked framing included)
 * straight from the read buffer, which stays pinned until the write is done.
 * That keeps the common case — a small JSON request arriving in one read —
 * at one write of two iovecs (the rebuilt head and the untouched body), and
 * lets the request be resent as is when a reused keep-alive connection turns
 * out to have been closed by the model server.
 *
 * The answer flows the same way in reverse (see upstream.c): head rebuilt,
 * body bytes written from the upstream connection's buffer, the upstream
 * read resumed only when the client write has completed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fanout.h"
#include "log.h"
#include "proxy_internal.h"
#include "reqlog.h"
#include "shadow_rt.h"
#include "wio.h"

#define CONN_BUF_INITIAL (16 * 1024)
#define BODY_BUFFER_MAX  (64 * 1024) /* request body bytes buffered before the upstream is ready */
#define LOCAL_BODY_MAX   (4 * 1024 * 1024) /* admin and feedback request bodies */
/* Body read and dropped before an answer that keeps the connection. */
#define DISCARD_MAX  (64 * 1024)
#define NO_ROUTE_MSG "no experiment matches this request"
#define MAX_RETRIES  2

static const char continue_100[] = "HTTP/1.1 100 Continue\r\n\r\n";
static llhttp_settings_t req_settings;

static void conn_close(conn_t *c);
static void conn_deadline(conn_t *c, int ms);
static void conn_no_deadline(conn_t *c);
static void conn_process(conn_t *c);
static void pump_body(conn_t *c);
static void req_finish(conn_t *c);
static void dispatch(conn_t *c);
static void acquire(conn_t *c);
static void send_error(conn_t *c, int status, const char *code, const char *msg);
static void local_req_of(conn_t *c, mm_local_req_t *out);
static void send_no_route(conn_t *c);
static int defer_until_body_read(conn_t *c, int status, const char *code, const char *msg);
static const up_user_ops_t proxy_user_ops;

const config_t *server_config(const mm_server_t *srv)
{
    return srv->router->cfg;
}

/* ---- llhttp callbacks (request parser) ---- */

static conn_t *pconn(llhttp_t *p)
{
    return (conn_t *)p->data;
}

static int on_message_begin(llhttp_t *p)
{
    conn_t *c = pconn(p);
    http_head_reset(&c->head);
    c->method_done = c->url_done = c->headers_done = c->msg_done = 0;
    if (c->phase == C_IDLE) {
        c->phase = C_HEAD;
        /* Not the loop's time: uv_now is CLOCK_MONOTONIC_COARSE's, a tick
         * behind (4 ms at HZ=250), and a refused head's log line takes its
         * arrival from here (req_start_unread). */
        c->head_begin_us = mm_now_us();
        /* header_timeout_ms runs from the first byte to the end of the head */
        conn_deadline(c, server_config(c->srv)->limits.header_timeout_ms);
    }
    return 0;
}

static int on_method_complete(llhttp_t *p)
{
    pconn(p)->method_done = 1;
    return 0;
}

static int on_url_complete(llhttp_t *p)
{
    pconn(p)->url_done = 1;
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    conn_t *c = pconn(p);
    http_head_on_url(&c->head, (uint32_t)(at - c->rbuf), (uint32_t)n);
    return 0;
}

/* After the head, llhttp reports a chunked body's trailer fields through
 * the same callbacks. They are not headers: a recipient must not merge them
 * into the header section (RFC 9110 §6.5.1), or a trailer could stand in
 * for a header (Authorization on the admin listener). They reach a model
 * server only inside the raw chunked body. */
static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    conn_t *c = pconn(p);
    if (!c->headers_done) http_head_on_field(&c->head, (uint32_t)(at - c->rbuf), (uint32_t)n);
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    conn_t *c = pconn(p);
    if (!c->headers_done) http_head_on_value(&c->head, (uint32_t)(at - c->rbuf), (uint32_t)n);
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    conn_t *c = pconn(p);
    c->headers_done = 1;
    http_head_index(&c->head, c->rbuf);
    return HPE_PAUSED;
}

/* The most body bytes this request may have: max_body_bytes, and for a
 * request modelmux answers itself (admin, feedback) LOCAL_BODY_MAX too;
 * DISCARD_MAX for a body read only to be dropped. */
static uint64_t body_limit(const conn_t *c)
{
    uint64_t limit = server_config(c->srv)->limits.max_body_bytes;
    if (c->req.discard) return DISCARD_MAX;
    return c->req.local && limit > LOCAL_BODY_MAX ? LOCAL_BODY_MAX : limit;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    conn_t *c = pconn(p);
    req_t *r = &c->req;
    r->body_in += n;
    if (r->body_in > body_limit(c)) return -1;
    if (r->local && !r->discard) {
        mm_buf_append(&r->local_body, at, n);
    } else if (r->capture_body) {
        if (r->body_in > r->capture_limit) {
            /* Too large to mirror. The read that crossed the limit still
             * adds its bytes up to it: the request log promises the first
             * 64 KiB of a larger body, not whatever the earlier reads held. */
            mm_buf_append(&r->captured, at, (size_t)(r->capture_limit - (r->body_in - n)));
            r->capture_body = 0;
        } else {
            mm_buf_append(&r->captured, at, n);
        }
    }
    return 0;
}

/* A chunk announces its size first: a body that will be too large is
 * refused then, as nginx does, rather than after the client has sent up to
 * max_body_bytes of it (or, for a chunk larger than what it ever sends,
 * never). llhttp has put the chunk's size in content_length. */
static int on_chunk_header(llhttp_t *p)
{
    conn_t *c = pconn(p);
    uint64_t limit = body_limit(c), in = c->req.body_in;
    if (p->content_length > limit - (in < limit ? in : limit)) return -1;
    return http_chunked_on_chunk(&c->head.chunked, p->content_length);
}

/* Chunk extensions are forwarded raw with the body, but count against no
 * body limit: bounded with the trailers by max_header_bytes (http.h). */
static int on_chunk_extension(llhttp_t *p, const char *at, size_t n)
{
    conn_t *c = pconn(p);
    (void)at;
    return http_chunked_on_ext(&c->head.chunked, n,
                               (uint32_t)server_config(c->srv)->limits.max_header_bytes);
}

static int on_message_complete(llhttp_t *p)
{
    conn_t *c = pconn(p);
    c->msg_done = 1;
    return HPE_PAUSED;
}

void proxy_init_parser_settings(void)
{
    llhttp_settings_init(&req_settings);
    req_settings.on_message_begin = on_message_begin;
    req_settings.on_method_complete = on_method_complete;
    req_settings.on_url = on_url;
    req_settings.on_url_complete = on_url_complete;
    req_settings.on_header_field = on_header_field;
    req_settings.on_header_value = on_header_value;
    req_settings.on_headers_complete = on_headers_complete;
    req_settings.on_body = on_body;
    req_settings.on_chunk_header = on_chunk_header;
    req_settings.on_chunk_extension_name = on_chunk_extension;
    req_settings.on_chunk_extension_value = on_chunk_extension;
    req_settings.on_message_complete = on_message_complete;
}

/* ---- connection plumbing ---- */

static void on_conn_closed(uv_handle_t *h)
{
    conn_t *c = h->data;
    if (--c->handles > 0) return;
    c->handles = -1; /* both handles closed */
    conn_release(c);
}

conn_t *conn_hold(conn_t *c)
{
    c->refs++;
    return c;
}

void conn_release(conn_t *c)
{
    if (--c->refs > 0) return;
    req_t *r = &c->req;
    mm_buf_free(&r->up_head);
    mm_buf_free(&r->out);
    mm_buf_free(&r->local_body);
    mm_buf_free(&r->url);
    mm_buf_free(&r->captured);
    mm_buf_free(&r->fwd_lines);
    free(c->rbuf);
    free(c);
}

static void conn_unlink(conn_t *c)
{
    mm_server_t *srv = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else if (srv->conns == c)
        srv->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    c->next = c->prev = NULL;
    if (c->kind == CONN_DATA) srv->n_conns--;
}

/* A new request id. The data plane's ids come from the generator its
 * routing choices do, so that --seed replays both; admin and worker
 * connections draw from their own, so that a health check or a scrape never
 * shifts the routing stream (docs/policies-bandits.md). */
static void new_request_id(conn_t *c, char out[33])
{
    http_new_request_id(c->kind == CONN_DATA ? &c->srv->rng : &c->srv->admin_rng, out);
}

/* Make a request of one whose head was not read whole (a bad, slow or cut
 * head), so that it is answered, counted and logged like any other. */
static void req_start_unread(conn_t *c)
{
    req_t *r = &c->req;
    r->active = 1;
    /* From the head's first byte, when it had one (a 408 took
     * header_timeout_ms, a 499 as long as the client took to go away). */
    uint64_t now = mm_now_us(), begin = c->head_begin_us;
    r->t0_us = c->phase == C_HEAD && begin > 0 && begin < now ? begin : now;
    new_request_id(c, r->id);
    r->id_len = 32;
    snprintf(r->method, sizeof(r->method), "%s",
             c->method_done ? llhttp_method_name(c->parser.method) : "-");
    r->method_len = strlen(r->method);
    /* The log names the target once the request line had it, as nginx
     * does (a 408 or 431 still says what was asked for); else none.
     * Never the previous request's on this connection. */
    mm_buf_reset(&r->url);
    const http_head_t *h = &c->head;
    if (c->url_done && (size_t)h->url_off + h->url_len <= c->rlen)
        mm_buf_append(&r->url, c->rbuf + h->url_off, h->url_len);
    /* (the flag may be left from the previous request on the connection) */
    r->head_request = c->headers_done && c->parser.method == HTTP_HEAD;
    r->router = c->srv->router;
    router_ref(r->router);
}

/* The request gives up its upstream: a wait for a connection is cancelled,
 * and one it holds is closed (its exchange is unfinished). */
static void drop_upstream(req_t *r)
{
    if (r->pool && r->user.waiting_on) up_cancel(r->pool, &r->user);
    if (r->pool && r->user.pending_conn) up_cancel(r->pool, &r->user);
    if (r->up) {
        up_release(r->up, 0);
        r->up = NULL;
    }
}

/* Abandon the request in progress (client gone, or connection closing). */
static void req_abort(conn_t *c)
{
    req_t *r = &c->req;
    if (!r->active) return;
    if (r->status == 0) r->status = 499; /* nginx's "client closed request" */
    drop_upstream(r);
    r->aborted = 1;
    req_finish(c);
}

static void conn_close(conn_t *c)
{
    if (c->closing) return;
    c->closing = 1;
    /* A head begun but never finished (the client went away mid-head, or
     * the drain ended) is still a request: logged as 499, as a request
     * abandoned later is, rather than only when it lasted to its 408. */
    if (c->phase == C_HEAD && !c->req.active && c->kind == CONN_DATA) req_start_unread(c);
    c->phase = C_CLOSING;
    req_abort(c);
    conn_unlink(c);
    c->handles = 2;
    uv_close((uv_handle_t *)&c->timer, on_conn_closed);
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
    mm_server_t *srv = c->srv;
    server_maybe_drained(srv);
}

/* Closing right after an answer while the client is still sending (a body
 * we refused, a pipelined request) makes the kernel send a RST, and a RST
 * can destroy the answer in the client's receive buffer before it is read:
 * the client sees "connection reset" instead of our 413. So, as nginx's
 * lingering_close: send a FIN once the answer is out, read and drop what
 * still comes for at most LINGER_MS, and close at EOF or then. */
#define LINGER_MS 2000

static void on_linger_shutdown(uv_shutdown_t *req, int status)
{
    (void)req;
    (void)status; /* a failed shutdown: the timer or EOF closes the connection */
}

static void conn_deadline(conn_t *c, int ms);
static void start_reading(conn_t *c);

static void conn_linger(conn_t *c)
{
    c->phase = C_LINGER;
    c->rpos = c->rlen = 0;
    c->pinned = 0;
    if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, on_linger_shutdown) != 0) {
        conn_close(c);
        return;
    }
    conn_deadline(c, LINGER_MS);
    start_reading(c);
}

/* Client timeouts are deadlines checked lazily: setting one only restarts
 * the libuv timer when it must fire earlier than it is armed for, and
 * clearing one does nothing (the timer fires, finds no deadline due, and
 * re-arms or stops). A request then costs one timer operation, not three. */
static void conn_deadline(conn_t *c, int ms)
{
    uint64_t now = uv_now(c->srv->loop);
    c->deadline = now + (uint64_t)ms;
    if (!uv_is_active((uv_handle_t *)&c->timer) || c->timer_due > c->deadline) {
        c->timer_due = c->deadline;
        uv_timer_start(&c->timer, conn_on_timer, (uint64_t)ms, 0);
    }
}

static void conn_no_deadline(conn_t *c)
{
    c->deadline = 0;
}

void conn_on_timer(uv_timer_t *t)
{
    conn_t *c = t->data;
    uint64_t now = uv_now(c->srv->loop);
    if (c->deadline == 0) return;
    if (now < c->deadline) { /* armed for an earlier deadline since moved on */
        c->timer_due = c->deadline;
        uv_timer_start(&c->timer, conn_on_timer, c->deadline - now, 0);
        return;
    }
    c->deadline = 0;
    if (c->req.user.waiting_on) { /* no pooled connection came free in time */
        up_expire(c->req.user.waiting_on, &c->req.user);
        return;
    }
    switch (c->phase) {
    case C_IDLE:
        conn_close(c);
        break; /* idle keep-alive connection */
    case C_HEAD:
        c->req.keep_alive = 0;
        send_error(c, 408, "request_timeout", "request headers not received in time");
        break;
    case C_BODY:
        if (c->req.responding)
            conn_close(c);
        else
            send_error(c, 408, "request_timeout", "request body not received in time");
        break;
    case C_WAIT: /* an answer the client does not read (client_write) */
        if (c->req.responding) conn_close(c);
        break;
    case C_LINGER:
        conn_close(c);
        break;
    default:
        break;
    }
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    conn_t *c = h->data;
    const config_t *cfg = server_config(c->srv);
    if (c->rbuf == NULL) {
        c->rbuf = malloc(CONN_BUF_INITIAL);
        c->rcap = c->rbuf ? CONN_BUF_INITIAL : 0;
    }
    if (c->rlen == c->rcap && !c->pinned) {
        /* Grow for a large head (up to max_header_bytes) or to buffer up to
         * 64 KiB of body while the upstream connection is being set up.
         * Offsets, not pointers, are kept, so moving the buffer is safe. */
        size_t limit = (size_t)cfg->limits.max_header_bytes + CONN_BUF_INITIAL;
        if (c->phase == C_BODY && c->req.local)
            limit = LOCAL_BODY_MAX + CONN_BUF_INITIAL;
        else if (limit < BODY_BUFFER_MAX)
            limit = BODY_BUFFER_MAX;
        if (c->rcap < limit) {
            size_t ncap = c->rcap * 2 > limit ? limit : c->rcap * 2;
            char *nb = realloc(c->rbuf, ncap);
            if (nb) {
                c->rbuf = nb;
                c->rcap = ncap;
            }
        }
    }
    buf->base = c->rbuf + c->rlen;
    buf->len = c->rcap - c->rlen;
}

static void stop_reading(conn_t *c)
{
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = 0;
    }
}

static void start_reading(conn_t *c)
{
    if (!c->reading && !c->closing) {
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, conn_on_read);
        c->reading = 1;
    }
}

/* Whether the request in progress may have been received whole: its body
 * is read, or body bytes still wait unparsed in the buffer (they stay there
 * until the upstream connection is ready). Those are forwarded first, and
 * the read after them (EOF again after a half-close) says whether the
 * request was cut short. */
static int req_may_be_whole(const conn_t *c)
{
    return c->req.active && (c->req.body_done || (c->phase == C_BODY && c->rpos < c->rlen));
}

void conn_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    conn_t *c = s->data;
    if (nread == 0) return;
    if (nread == UV_ENOBUFS) {
        stop_reading(c);
        if (c->phase == C_HEAD || c->phase == C_IDLE)
            send_error(c, 431, "headers_too_large", "request head exceeds max_header_bytes");
        return;
    }
    if (c->phase == C_LINGER) { /* dropped; EOF or an error ends it */
        if (nread < 0)
            conn_close(c);
        else
            c->rlen = 0;
        return;
    }
    if (nread < 0) {
        /* EOF right after a whole request is a half-close (shutdown(SHUT_WR),
         * `nc -N`): that request, and any pipelined before the EOF, are still
         * answered (as HAProxy does), then the connection closes. EOF in the
         * middle of a request, or an error, abandons it; an idle connection
         * just closes. */
        if (nread == UV_EOF && req_may_be_whole(c)) {
            c->peer_eof = 1;
            stop_reading(c);
            return;
        }
        conn_close(c);
        return;
    }
    c->rlen += (size_t)nread;
    /* A request waiting for a pooled connection runs the queue's clock
     * (acquire), not the body's: the wait is ours, not the client's. */
    if (c->phase == C_BODY && !c->req.responding && !c->req.user.waiting_on)
        conn_deadline(c, server_config(c->srv)->limits.idle_timeout_ms);
    conn_process(c);
    if (!c->closing && c->rlen == c->rcap && (c->pinned || c->phase == C_WAIT)) stop_reading(c);
}

static void client_write(conn_t *c, uv_buf_t *bufs, unsigned n);

static void on_client_written(uv_write_t *w, int status)
{
    conn_t *c = container_of(w, conn_t, wreq);
    c->writing = 0;
    if (c->closing) return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    req_t *r = &c->req;
    if (r->final_write) {
        req_finish(c);
        return;
    }
    conn_no_deadline(c);                        /* the client took it all (see client_write) */
    if (r->up && !r->up_done) up_resume(r->up); /* more answer bytes may come now */
}

/* Answer bytes to the client. A final write (the request finishes when it
 * completes) always goes through uv_write, so that finishing a request never
 * recurses into the next pipelined one from here. Other writes are tried at
 * once: when the kernel takes everything, the upstream read resumes without
 * a write request (see wio.h). */
static void client_write(conn_t *c, uv_buf_t *bufs, unsigned n)
{
    req_t *r = &c->req;
    if (!r->final_write) {
        int done = mm_try_write((uv_stream_t *)&c->tcp, bufs, &n);
        if (done < 0) {
            conn_close(c);
            return;
        }
        if (done == 1) {
            if (r->up && !r->up_done) up_resume(r->up); /* more answer bytes may come now */
            return;
        }
    }
    c->writing = 1;
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, bufs, n, on_client_written) != 0) {
        c->writing = 0;
        conn_close(c);
        return;
    }
    /* Bytes the kernel would not take: the client is slow to read. It gets
     * idle_timeout_ms to take more (nginx's send_timeout), or the connection
     * closes; the upstream exchange waits for it meanwhile, and its
     * timeout_ms does not run (the wait is not the model server's). */
    if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) > 0)
        conn_deadline(c, server_config(c->srv)->limits.idle_timeout_ms);
}

static void on_continue_written(uv_write_t *w, int status)
{
    (void)w;
    (void)status;
}

/* Write a complete answer held in r->out and finish the request after it.
 * Every answer modelmux makes itself (errors, admin, feedback) passes here,
 * so this is where a HEAD request loses the body: the head keeps the
 * Content-Length a GET would get (RFC 9110 §9.3.2), and body bytes would be
 * read by the client as the start of the next pipelined answer. */
static void write_out_final(conn_t *c)
{
    req_t *r = &c->req;
    if (r->out.oom) {
        conn_close(c);
        return;
    }
    if (r->head_request) {
        const char *end = memmem(r->out.p, r->out.len, "\r\n\r\n", 4);
        if (end) r->out.len = (size_t)(end + 4 - r->out.p);
    }
    r->responding = 1;
    r->final_write = 1;
    uv_buf_t b = uv_buf_init(r->out.p, (unsigned)r->out.len);
    client_write(c, &b, 1);
}

/* Whether the request went to an arm: also one whose upstream error waits
 * for the rest of its body (defer_until_body_read), not a local answer. */
static int routed(const req_t *r)
{
    return r->exp != NULL && (!r->local || r->discard);
}

/* What an answer, proxied or modelmux's own, says of the connection
 * (http.h): an HTTP/1.0 client keeps it only when told. */
static int keep_mode(const req_t *r)
{
    if (!r->keep_alive) return HTTP_CLOSE;
    return r->http_minor == 0 ? HTTP_KEEP_ALIVE_10 : HTTP_KEEP_ALIVE;
}

/* X-Modelmux-Experiment and X-Modelmux-Arm for an error answer to a routed
 * request, as a proxied answer has them: the arm is the one the request was
 * last sent to, which is also what its metrics and log line name. NULL before
 * routing (400, 404, 413/431 from the head, 503 overloaded), when only
 * X-Request-Id can be said. Names are at most 64 bytes, so buf never cuts. */
static const char *route_headers(const req_t *r, char *buf, size_t n)
{
    if (!routed(r)) return NULL;
    int len = snprintf(buf, n, "X-Modelmux-Experiment: %s\r\nX-Modelmux-Arm: %s\r\n",
                       r->exp->cfg->name, r->exp->ups[r->arm]->name);
    return len > 0 && (size_t)len < n ? buf : NULL;
}

static void send_error_hdr(conn_t *c, int status, const char *code, const char *msg,
                           const char *extra_headers)
{
    req_t *r = &c->req;
    if (c->closing || r->responding) {
        conn_close(c);
        return;
    }
    if (!r->active) req_start_unread(c); /* an error before a request was recognised */
    if (defer_until_body_read(c, status, code, msg)) return; /* routed only: no extra headers */
    stop_reading(c);
    conn_no_deadline(c);
    /* Nothing more of this connection is parsed until the answer is out:
     * conn_process must not take the rest of an unread body for a new head. */
    c->phase = C_WAIT;
    r->status = status;
    /* The connection stays usable only if the request was read entirely. */
    if (!c->msg_done || status == 408 || status == 400 || status == 431) r->keep_alive = 0;
    drop_upstream(r);
    mm_buf_reset(&r->out);
    char route[192];
    http_error_response(&r->out, status, code, msg, (mm_str_t){r->id, r->id_len}, keep_mode(r),
                        extra_headers ? extra_headers : route_headers(r, route, sizeof(route)));
    write_out_final(c);
}

static void send_error(conn_t *c, int status, const char *code, const char *msg)
{
    send_error_hdr(c, status, code, msg, NULL);
}

static void send_no_route(conn_t *c)
{
    send_error(c, 404, "no_route", NO_ROUTE_MSG);
}

/* Answer once the body is read and dropped: the answer then keeps the
 * connection. One that turns out larger than DISCARD_MAX gets it at once,
 * closing (parse_step). */
static void discard_then(conn_t *c, int status, const char *code, const char *msg)
{
    req_t *r = &c->req;
    r->local = r->discard = 1;
    r->discard_status = status;
    r->discard_code = code;
    r->discard_msg = msg;
}

static void send_discarded(conn_t *c)
{
    send_error(c, c->req.discard_status, c->req.discard_code, c->req.discard_msg);
}

/* An upstream's error (502, 503, 504) for a request whose body is still on
 * its way (a dead model server refuses the connection before the body is
 * read) keeps the connection, as nginx discards the rest of a body: with at
 * most DISCARD_MAX of body all told, the rest is read and dropped, then the
 * error goes out, and a request pipelined behind it is served. Returns 0
 * when the error is to go out now (closing, since the body is unread). */
static int defer_until_body_read(conn_t *c, int status, const char *code, const char *msg)
{
    req_t *r = &c->req;
    uint64_t total =
        r->body_in + ((c->parser.flags & F_CONTENT_LENGTH) ? c->parser.content_length : 0);
    if (c->phase != C_BODY || c->msg_done || r->local || r->fanout || !r->keep_alive ||
        status < 500 || c->srv->draining || total > DISCARD_MAX)
        return 0;
    drop_upstream(r);
    r->queued = 0;
    c->pinned = 0;
    discard_then(c, status, code, msg);
    conn_deadline(c, server_config(c->srv)->limits.idle_timeout_ms);
    if (!c->peer_eof) start_reading(c);
    /* Body bytes may wait in the buffer, unparsed; from an upstream callback
     * they are parsed now, inside conn_process it goes on with them itself. */
    if (!c->processing) conn_process(c);
    return 1;
}

void conn_respond(conn_t *c, int status, const char *content_type, const char *body, size_t len,
                  const char *extra_headers)
{
    req_t *r = &c->req;
    if (c->closing || !r->active || r->responding) return;
    r->status = status;
    mm_buf_reset(&r->out);
    /* 204 and 304 have no body (RFC 9110 §15.3.5, §15.4.5): nothing to
     * frame (a ranker's answer passed on may be one). */
    int bodiless = status == 204 || status == 304;
    if (bodiless) len = 0;
    mm_buf_printf(&r->out, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n", status, http_reason(status),
                  content_type);
    if (!bodiless) mm_buf_printf(&r->out, "Content-Length: %zu\r\n", len);
    http_date_line(&r->out);
    mm_buf_lit(&r->out, "X-Request-Id: ");
    mm_buf_append(&r->out, r->id, r->id_len);
    mm_buf_lit(&r->out, "\r\n");
    http_connection_line(&r->out, keep_mode(r));
    if (extra_headers) mm_buf_cstr(&r->out, extra_headers);
    mm_buf_lit(&r->out, "\r\n");
    if (!r->head_request) mm_buf_append(&r->out, body, len);
    write_out_final(c);
}

void conn_respond_error(conn_t *c, int status, const char *code, const char *message)
{
    conn_respond_error_hdr(c, status, code, message, NULL);
}

void conn_respond_error_hdr(conn_t *c, int status, const char *code, const char *message,
                            const char *extra_headers)
{
    req_t *r = &c->req;
    if (c->closing || !r->active || r->responding) return;
    r->status = status;
    mm_buf_reset(&r->out);
    char route[192];
    /* extra_headers come with local answers (Allow, WWW-Authenticate), which
     * are routed nowhere: there are no routing headers to add then. */
    http_error_response(&r->out, status, code, message, (mm_str_t){r->id, r->id_len}, keep_mode(r),
                        extra_headers ? extra_headers : route_headers(r, route, sizeof(route)));
    write_out_final(c);
}

/* A request line of a version other than 1.0 or 1.1 (on_request_head) or of
 * none, HTTP/0.9 (parse_step): 505, as nginx answers (RFC 9110 §15.6.6);
 * the framing of what follows is unknown, so the connection closes. */
static void refuse_version(conn_t *c)
{
    c->req.keep_alive = 0;
    send_error(c, 505, "http_version_not_supported", "only HTTP/1.0 and HTTP/1.1 are served");
}

/* ---- request head ---- */

void proxy_forward_headers(mm_buf_t *b, const http_head_t *h, const char *base, const char *peer,
                           mm_str_t host, int fanout)
{
    http_run_t run = {NULL, 0};
    for (int i = 0; i < h->n; i++) {
        int k = h->kind[i];
        /* Host, X-Forwarded-For and X-Forwarded-Host are ours (below); a
         * client's X-Forwarded-Host passed on next to ours would be two
         * lines, and a model server reading the first would take the
         * client's word for the host (nginx's proxy_set_header replaces). */
        if (h->dropped[i] || k == HK_HOST || k == HK_X_FORWARDED_FOR || k == HK_X_FORWARDED_HOST)
            continue;
        if (fanout &&
            (k == HK_CONTENT_LENGTH || mm_str_ieq(http_hname(h, base, i), "accept-encoding")))
            continue;
        http_emit_header(b, &run, h, base, i);
    }
    http_emit_flush(b, &run);
    if (fanout) mm_buf_lit(b, "Accept-Encoding: identity\r\n");
    /* Repeated X-Forwarded-For headers form one list, in order; our hop last. */
    mm_buf_lit(b, "X-Forwarded-For: ");
    int xff = 0;
    for (int i = http_known(h, HK_X_FORWARDED_FOR); i >= 0 && i < h->n; i++) {
        if (h->kind[i] != HK_X_FORWARDED_FOR || h->dropped[i]) continue;
        mm_str_t v = http_trim(http_hvalue(h, base, i));
        if (v.n == 0) continue;
        if (xff++) mm_buf_lit(b, ", ");
        mm_buf_str(b, v);
    }
    if (xff) mm_buf_lit(b, ", ");
    mm_buf_cstr(b, peer);
    mm_buf_lit(b, "\r\n");
    if (host.n) {
        mm_buf_lit(b, "X-Forwarded-Host: ");
        mm_buf_str(b, host);
        mm_buf_lit(b, "\r\n");
    }
}

/* The head sent upstream: request line for the arm's base path, Host of the
 * upstream, the client's end-to-end headers, and ours. */
static void build_upstream_head(conn_t *c)
{
    req_t *r = &c->req;
    const cfg_upstream_t *up = r->exp->ups[r->arm];
    mm_buf_t *b = &r->up_head;
    mm_buf_reset(b);
    mm_buf_append(b, r->method, r->method_len);
    mm_buf_lit(b, " ");
    mm_buf_append(b, up->base_path, up->base_path_len);
    mm_buf_append(b, r->url.p, r->url.len);
    mm_buf_lit(b, " HTTP/1.1\r\nHost: ");
    mm_buf_append(b, up->host_header, up->host_header_len);
    mm_buf_lit(b, "\r\n");
    mm_buf_append(b, r->fwd_lines.p, r->fwd_lines.len);
    if (r->req_chunked) mm_buf_lit(b, "Transfer-Encoding: chunked\r\n");
    mm_buf_lit(b, "X-Request-Id: ");
    mm_buf_append(b, r->id, r->id_len);
    mm_buf_lit(b, "\r\nX-Modelmux-Arm: ");
    mm_buf_append(b, up->name, up->name_len);
    mm_buf_lit(b, "\r\n\r\n");
}

/* A routed request: the policy chooses its arm (and mirrors), and what
 * goes upstream is prepared. */
static void choose_arm(conn_t *c, mm_str_t url, mm_str_t fwd_host)
{
    mm_server_t *srv = c->srv;
    const config_t *cfg = server_config(srv);
    req_t *r = &c->req;
    const http_head_t *h = &c->head;
    const char *base = c->rbuf;
    r->id_key = store_req_key(srv->store, (mm_str_t){r->id, r->id_len});
    policy_req_t preq;
    mm_str_t method = {r->method, r->method_len};
    router_request_view(r->exp, method, url, h, base, &preq);
    /* Millisecond decisions use the loop's clock: no clock read. */
    uint64_t now_ms = uv_now(srv->loop);
    router_choose(r->exp, &preq, &srv->rng, now_ms, &r->choice);
    r->chosen = r->arm = r->choice.primary;
    if (router_arm_ejected(r->exp, r->arm, now_ms)) {
        router_count_fallback(r->exp, r->arm);
        r->arm = 0; /* an ejected challenger: the champion answers */
    }
    /* A HEAD answer has no list to merge: the champion (primary) answers
     * it alone, as a plain proxy would. */
    r->fanout = r->choice.fanout && r->exp->cfg->ops->combine != NULL && !r->head_request;
    /* Header lines are copied now: the head's bytes may be overwritten
     * while a large body streams, and a fallback rebuilds the head later. */
    proxy_forward_headers(&r->fwd_lines, h, base, c->peer, fwd_host, r->fanout);
    if (r->fanout) {
        /* every arm gets the whole body: read it first (bounded) */
        mm_buf_reset(&r->captured);
        r->capture_body = 1;
        r->capture_limit = cfg->limits.max_body_bytes;
    } else {
        shadow_prepare(c);
    }
}

static void on_request_head(conn_t *c)
{
    mm_server_t *srv = c->srv;
    const config_t *cfg = server_config(srv);
    req_t *r = &c->req;
    const http_head_t *h = &c->head;
    const char *base = c->rbuf;

    conn_no_deadline(c);
    r->active = 1;
    r->serial++;
    r->t0_us = mm_now_us();
    r->router = srv->router;
    router_ref(r->router);
    const char *mname = llhttp_method_name(c->parser.method);
    size_t mlen = strlen(mname);
    if (mlen >= sizeof(r->method)) mlen = sizeof(r->method) - 1;
    memcpy(r->method, mname, mlen);
    r->method[mlen] = '\0';
    r->method_len = mlen;
    r->head_request = c->parser.method == HTTP_HEAD;
    r->http_minor = c->parser.http_minor;
    /* A `close` option wins over `keep-alive` (RFC 9112 §9.3), which
     * llhttp's answer for HTTP/1.0 overlooks when both are listed. */
    r->keep_alive = llhttp_should_keep_alive(&c->parser) &&
                    !(c->parser.flags & F_CONNECTION_CLOSE) && !srv->draining;
    /* r->url is the target in origin form: what routing, the request log and
     * the upstream see. An absolute-form target's authority replaces Host
     * (RFC 9112 §3.2.2). */
    mm_str_t authority, target;
    http_target_form_t form =
        http_target(http_span(base, h->url_off, h->url_len), &authority, &target);
    mm_buf_reset(&r->url);
    if (form == HT_ABSOLUTE && (target.n == 0 || target.p[0] == '?')) mm_buf_lit(&r->url, "/");
    mm_buf_str(&r->url, target);
    if ((form == HT_ORIGIN || form == HT_ABSOLUTE) && !r->url.oom) {
        /* Routing decides on the normalised path, and the model server gets
         * that same path (as Envoy's normalize_path + merge_slashes): a
         * "/v1/rank/../../admin" or "/v1/%72ank" cannot be matched as one
         * path and served as another. The query string is left as sent. */
        mm_str_t raw = http_url_path((mm_str_t){r->url.p, r->url.len});
        size_t pn = http_normalize_path(r->url.p, raw.n);
        memmove(r->url.p + pn, r->url.p + raw.n, r->url.len - raw.n);
        r->url.len -= raw.n - pn;
    }
    mm_buf_reset(&r->fwd_lines);
    r->req_chunked = (c->parser.flags & F_CHUNKED) != 0;
    uint64_t clen = (c->parser.flags & F_CONTENT_LENGTH) ? c->parser.content_length : 0;
    r->has_body = r->req_chunked || clen > 0;
    if (!r->has_body) {
        /* A bodiless request ends with its head: let the parser say so now,
         * so that an early error answer can keep the connection. */
        llhttp_execute(&c->parser, c->rbuf + c->rpos, 0);
        if (llhttp_get_errno(&c->parser) == HPE_PAUSED) llhttp_resume(&c->parser);
        r->body_done = 1;
    }

    int idh = http_known(h, HK_X_REQUEST_ID);
    mm_str_t cid = idh >= 0 ? http_trim(http_hvalue(h, base, idh)) : (mm_str_t){NULL, 0};
    if (cid.n && http_valid_request_id(cid)) {
        memcpy(r->id, cid.p, cid.n);
        r->id_len = cid.n;
    } else {
        new_request_id(c, r->id);
        r->id_len = 32;
    }
    r->id[r->id_len] = '\0';

    if (h->too_many) {
        send_error(c, 431, "headers_too_large", "more than 128 request headers");
        return;
    }
    /* HTTP/1.0 and 1.1 only. llhttp also takes "HTTP/2.0" in a request line
     * and a bare "GET /path" (HTTP/0.9) followed by header lines; both were
     * served as if HTTP/1.x, with an HTTP/1.1 answer a 0.9 client cannot
     * read. (A 0.9 line alone is refused as it ends, in parse_step.) */
    if (c->parser.http_major != 1) {
        refuse_version(c);
        return;
    }
    /* Refused before anything is routed or sent upstream; a 400 closes the
     * connection, so nothing after this head is read as a request. */
    /* llhttp takes a bare LF after the request line and as the head's empty
     * last line; the target holds none, so the head is looked at from its end. */
    uint32_t after_url = h->url_off + h->url_len;
    const char *bad =
        http_head_bare_lf(base + after_url, c->rpos - after_url)
            ? "a line of the head ends in a bare LF (CRLF is required)"
            : http_request_head_error(h, base, c->parser.http_major, c->parser.http_minor);
    if (bad == NULL && form == HT_INVALID)
        bad = memchr(base + h->url_off, '#', h->url_len) != NULL
                  ? "a request target has no fragment (#)"
                  : "request target is not /path or http://host/path";
    if (bad == NULL && form == HT_ASTERISK && c->parser.method != HTTP_OPTIONS)
        bad = "request target * is for OPTIONS only";
    if (bad) {
        send_error(c, 400, "bad_request", bad);
        return;
    }
    if (clen > cfg->limits.max_body_bytes) {
        send_error(c, 413, "body_too_large", "request body exceeds max_body_bytes");
        return;
    }
    int exh = http_known(h, HK_EXPECT);
    /* An HTTP/1.0 (or 0.9) client does not know 100 Continue (RFC 9110 §10.1.1). */
    int expect = c->parser.http_major == 1 && c->parser.http_minor >= 1 && exh >= 0 &&
                 http_has_token(http_hvalue(h, base, exh), "100-continue");

    mm_str_t url = {r->url.p, r->url.len};
    mm_str_t path = http_url_path(url);
    if (c->kind != CONN_DATA || (path.n == 19 && memcmp(path.p, "/_modelmux/feedback", 19) == 0)) {
        r->local = 1;
        mm_buf_reset(&r->local_body);
        if (c->kind == CONN_ADMIN && r->has_body) {
            /* Refused on its head (no token): the body is never read. */
            mm_local_req_t lr;
            const char *code, *msg, *extra;
            local_req_of(c, &lr);
            int refused = admin_refusal(srv, &lr, &code, &msg, &extra);
            if (refused) {
                send_error_hdr(c, refused, code, msg, extra);
                return;
            }
        }
        if (clen > LOCAL_BODY_MAX) {
            send_error(c, 413, "body_too_large", "request body exceeds 4 MiB");
            return;
        }
    } else {
        mm_str_t host = authority; /* empty unless absolute-form, where it overrides Host */
        int hh = http_known(h, HK_HOST);
        if (form != HT_ABSOLUTE && hh >= 0) host = http_trim(http_hvalue(h, base, hh));
        r->exp = router_match(r->router, url, host, h, base);
        if (r->exp != NULL) {
            /* A Host named in Connection is not passed on, not even as X-Forwarded-Host. */
            mm_str_t fwd_host =
                form != HT_ABSOLUTE && hh >= 0 && h->dropped[hh] ? (mm_str_t){"", 0} : host;
            choose_arm(c, url, fwd_host);
        } else if (!r->has_body || expect || clen > DISCARD_MAX) {
            send_no_route(c);
            return;
        } else {
            /* A small body is read and dropped first, as nginx discards
             * it: the 404 then keeps the connection, and a request
             * pipelined behind it is served. One larger than DISCARD_MAX,
             * or not sent yet (100-continue), was refused at once above. */
            discard_then(c, 404, "no_route", NO_ROUTE_MSG);
        }
        if (!r->fanout && r->shadow == NULL && srv->reqlog && reqlog_bodies(srv->reqlog)) {
            /* log.bodies: keep the request body (bounded) for its log line */
            mm_buf_reset(&r->captured);
            r->capture_body = 1;
            r->capture_limit = REQLOG_BODY_MAX;
        }
    }
    if (expect && r->has_body) {
        uv_buf_t b = uv_buf_init((char *)continue_100, sizeof(continue_100) - 1);
        uv_write(&c->wreq_continue, (uv_stream_t *)&c->tcp, &b, 1, on_continue_written);
    }
    r->body_off = c->rpos; /* a local or fan-out body is parsed from here */
    if (!r->has_body) {
        r->body_done = 1;
        c->phase = C_WAIT;
    } else {
        c->phase = C_BODY;
        conn_deadline(c, cfg->limits.idle_timeout_ms);
    }
    if (!r->local && !r->fanout) dispatch(c);
    /* Mirrors after the primary: with a pooled connection at hand the
     * user's request is written first, and a server that both arms share
     * takes it before the copy. */
    if (r->body_done) shadow_start(c);
}

/* ---- talking to the upstream ---- */

static void dispatch(conn_t *c)
{
    req_t *r = &c->req;
    r->up_head_written = 0;
    r->replayable = 1;
    r->user.ops = &proxy_user_ops;
    r->user.no_body_expected = r->head_request;
    r->pool = r->exp->pools[r->arm];
    build_upstream_head(c);
    if (r->up_head.oom) {
        send_error(c, 503, "overloaded", "out of memory");
        return;
    }
    acquire(c);
}

/* Ask the arm's pool for a connection. With all `pool` connections busy
 * the request waits in the pool's queue, for at most the upstream's
 * timeout_ms (Envoy's route timeout bounds a pending request the same
 * way): then it is a 503 overloaded (conn_on_timer), safe to retry since
 * no model server saw it. Unbounded, it waited as long as the queue ahead
 * of it took to drain; and a body's idle_timeout_ms ran meanwhile, so the
 * client got a 408 for our wait. */
static void acquire(conn_t *c)
{
    req_t *r = &c->req;
    up_acquire(r->pool, &r->user);
    if (r->user.waiting_on) {
        r->queued = 1;
        conn_deadline(c, up_pool_cfg(r->pool)->timeout_ms);
    }
}

/* A request line that ends right after its target has no version: HTTP/0.9.
 * llhttp reads on for header lines (and reports the target complete only a
 * byte after the line's end), so a 0.9 client, which sends its one line and
 * waits, got a 408 after header_timeout_ms instead of the 505 due at once.
 * The target's span ends at the byte after it: a space before a version. */
static int request_line_lacks_version(const conn_t *c)
{
    const http_head_t *h = &c->head;
    size_t end = (size_t)h->url_off + h->url_len;
    return h->url_len > 0 && end < c->rlen && (c->rbuf[end] == '\r' || c->rbuf[end] == '\n');
}

/* Run the request parser over the bytes not yet parsed; it stops at the
 * end of a head or of a message (pauses). Advances rpos and returns the
 * number of bytes consumed; on malformed input answers 400 (413 for a body
 * over the limit) and returns -1. */
static ssize_t parse_step(conn_t *c)
{
    const char *p = c->rbuf + c->rpos;
    size_t avail = c->rlen - c->rpos;
    http_chunked_t *ch = &c->head.chunked;
    llhttp_errno_t e = http_execute(&c->parser, ch, p, avail,
                                    (uint32_t)server_config(c->srv)->limits.max_header_bytes);
    size_t used = avail;
    if (e == HPE_PAUSED) {
        used = (size_t)(llhttp_get_error_pos(&c->parser) - p);
        llhttp_resume(&c->parser);
    } else if (e == HPE_PAUSED_UPGRADE) {
        /* After a request with "Connection: upgrade" and Upgrade, llhttp
         * stops past the message's end: what follows would be the new
         * protocol. modelmux switches to none (Upgrade is hop-by-hop and
         * never forwarded, the answer is an ordinary one), so the bytes
         * after it are the next HTTP/1.1 request (RFC 9110 §7.8): go on
         * parsing them as such, or that request got a 400. */
        used = (size_t)(llhttp_get_error_pos(&c->parser) - p);
        llhttp_resume_after_upgrade(&c->parser);
        c->rpos += used;
        ssize_t more = parse_step(c);
        return more < 0 ? -1 : (ssize_t)used + more;
    } else if (ch->error) { /* chunk extensions or trailers (http_execute) */
        c->req.keep_alive = 0;
        if (ch->too_large)
            send_error(c, 431, "headers_too_large", ch->error);
        else
            send_error(c, 400, "bad_request", ch->error);
        return -1;
    } else if (e == HPE_USER || e == HPE_CB_CHUNK_HEADER) { /* on_body, on_chunk_header */
        if (c->req.discard) /* more than is worth reading: answer now, and close */
            send_discarded(c);
        else
            send_error(c, 413, "body_too_large", "request body exceeds max_body_bytes");
        return -1;
    } else if (e == HPE_OK && !c->headers_done && request_line_lacks_version(c)) {
        refuse_version(c);
        return -1;
    } else if (e != HPE_OK) {
        c->req.keep_alive = 0;
        send_error(c, 400, "bad_request",
                   e == HPE_PAUSED_H2_UPGRADE
                       ? "HTTP/2 is not supported: speak HTTP/1.1" /* the PRI preface */
                       : llhttp_get_error_reason(&c->parser));
        return -1;
    }
    c->rpos += used;
    return (ssize_t)used;
}

static void pump_body(conn_t *c)
{
    req_t *r = &c->req;
    if (r->up == NULL || c->pinned || c->closing) return;
    uv_buf_t bufs[2];
    unsigned nb = 0;
    if (!r->up_head_written) {
        bufs[nb++] = uv_buf_init(r->up_head.p, (unsigned)r->up_head.len);
        r->body_off = c->rpos;
    }
    size_t start = c->rpos, used = 0;
    int complete = 0; /* this step completed the body */
    if (!r->body_done && c->rpos < c->rlen) {
        ssize_t n = parse_step(c);
        if (n < 0) return;
        used = (size_t)n;
        if (c->msg_done) {
            r->body_done = complete = 1;
            c->phase = C_WAIT;
            conn_no_deadline(c);
        }
    }
    if (used > 0) bufs[nb++] = uv_buf_init(c->rbuf + start, (unsigned)used);
    if (nb == 0) return;
    r->up_head_written = 1;
    c->pinned = used > 0;
    if (up_write(r->up, bufs, nb, r->body_done) != 0) c->pinned = 0;
    if (complete) shadow_start(c); /* after the primary's bytes, as above */
}

static void pu_on_conn(up_user_t *u, up_conn_t *uc)
{
    req_t *r = container_of(u, req_t, user);
    conn_t *c = r->conn;
    r->up = uc;
    if (r->queued) { /* out of the queue: the client's clock again */
        r->queued = 0;
        if (c->phase == C_BODY)
            conn_deadline(c, server_config(c->srv)->limits.idle_timeout_ms);
        else
            conn_no_deadline(c);
    }
    if (r->retry) {
        /* Resend what the failed exchange was sent: the head and the body
         * bytes forwarded so far (still in the buffer); the rest follows. */
        r->retry = 0;
        uv_buf_t bufs[2] = {uv_buf_init(r->up_head.p, (unsigned)r->up_head.len),
                            uv_buf_init(c->rbuf + r->body_off, (unsigned)(c->rpos - r->body_off))};
        c->pinned = bufs[1].len > 0;
        if (up_write(uc, bufs, bufs[1].len ? 2 : 1, r->body_done) != 0) c->pinned = 0;
        return;
    }
    pump_body(c);
}

static void pu_on_sent(up_user_t *u, up_conn_t *uc)
{
    req_t *r = container_of(u, req_t, user);
    conn_t *c = r->conn;
    c->pinned = 0;
    if (r->body_done) return;
    if (c->rpos == c->rlen) {                         /* all forwarded: reuse the buffer */
        if (c->rpos > r->body_off) r->replayable = 0; /* forwarded body bytes are gone */
        r->body_off = 0;
        c->rpos = c->rlen = 0;
    }
    start_reading(c);
    pump_body(c);
}

static void pu_on_head(up_user_t *u, up_conn_t *uc, const up_resp_t *resp)
{
    req_t *r = container_of(u, req_t, user);
    conn_t *c = r->conn;
    const exp_rt_t *e = r->exp;
    r->status = resp->status;
    r->responding = r->answered = 1;
    conn_no_deadline(c);

    int client_11 = r->http_minor >= 1;
    int decode = resp->chunked && !client_11; /* HTTP/1.0 clients cannot take chunked */
    if (decode || resp->until_eof || !r->body_done) r->keep_alive = 0;
    up_set_decode(uc, decode);

    mm_buf_t *b = &r->out;
    mm_buf_reset(b);
    char sl[13] = "HTTP/1.1 000 ";
    int st = resp->status;
    sl[9] = (char)('0' + st / 100 % 10);
    sl[10] = (char)('0' + st / 10 % 10);
    sl[11] = (char)('0' + st % 10);
    mm_buf_append(b, sl, sizeof(sl));
    if (resp->head->status_len)
        mm_buf_append(b, resp->base + resp->head->status_off, resp->head->status_len);
    else
        mm_buf_cstr(b, http_reason(resp->status));
    mm_buf_lit(b, "\r\n");
    const http_head_t *h = resp->head;
    /* A 204 has no body and no framing: a server MUST NOT send it
     * Content-Length or Transfer-Encoding (RFC 9110 §8.6, RFC 9112 §6.1),
     * and a client could wait for the bytes a stray Content-Length
     * announces. A 304 keeps its Content-Length (the selected
     * representation's length), and so does a HEAD answer. */
    int unframed = decode || st == 204;
    http_run_t run = {NULL, 0};
    for (int i = 0; i < h->n; i++)
        if (!h->dropped[i] && !(unframed && h->kind[i] == HK_CONTENT_LENGTH))
            http_emit_header(b, &run, h, resp->base, i);
    http_emit_flush(b, &run);
    if (resp->chunked && !unframed) mm_buf_lit(b, "Transfer-Encoding: chunked\r\n");
    /* An answer without Date gets ours (RFC 9110 §6.6.1); one with it keeps
     * the model server's, as Envoy passes it on. */
    int date = http_known(h, HK_DATE);
    if (date < 0 || h->dropped[date]) http_date_line(b);
    mm_buf_lit(b, "X-Request-Id: ");
    mm_buf_append(b, r->id, r->id_len);
    mm_buf_lit(b, "\r\nX-Modelmux-Experiment: ");
    mm_buf_append(b, e->cfg->name, e->cfg->name_len);
    mm_buf_lit(b, "\r\nX-Modelmux-Arm: ");
    mm_buf_append(b, e->ups[r->arm]->name, e->ups[r->arm]->name_len);
    mm_buf_lit(b, "\r\n");
    http_connection_line(b, keep_mode(r));
    mm_buf_lit(b, "\r\n");
    r->head_pending = 1;
    shadow_on_primary_head(c, resp);
    up_resume(uc);
}

static void pu_on_body(up_user_t *u, up_conn_t *uc, const char *p, size_t n)
{
    req_t *r = container_of(u, req_t, user);
    conn_t *c = r->conn;
    uv_buf_t bufs[2];
    unsigned nb = 0;
    if (r->head_pending) {
        bufs[nb++] = uv_buf_init(r->out.p, (unsigned)r->out.len);
        r->head_pending = 0;
    }
    bufs[nb++] = uv_buf_init((char *)p, (unsigned)n);
    r->bytes_out = up_body_bytes(uc); /* body bytes: not n, which has any chunk framing */
    shadow_on_primary_body(c, p, n);
    if (r->out.oom) {
        conn_close(c);
        return;
    }
    client_write(c, bufs, nb);
}

static void pu_on_done(up_user_t *u, up_conn_t *uc)
{
    req_t *r = container_of(u, req_t, user);
    conn_t *c = r->conn;
    r->up_done = 1;
    /* Outlier detection judges an exchange once, at its end: an answer
     * that breaks off after its head is a failure (pu_on_error), not the
     * status it began with. */
    up_pool_observe(r->pool, r->status, uv_now(c->srv->loop));
    if (c->writing) {
        r->final_write = 1; /* finish when the last body write completes */
        return;
    }
    if (r->head_pending) { /* no body: the head is the whole answer */
        r->head_pending = 0;
        r->final_write = 1;
        uv_buf_t b = uv_buf_init(r->out.p, (unsigned)r->out.len);
        client_write(c, &b, 1);
        return;
    }
    req_finish(c);
}

static int pu_on_error(up_user_t *u, up_conn_t *uc, up_err_t kind, int reused)
{
    req_t *r = container_of(u, req_t, user);
    conn_t *c = r->conn;
    r->up = NULL;
    c->pinned = 0;
    if (reused && r->replayable && r->retries < MAX_RETRIES) {
        /* The model server closed a keep-alive connection as we reused it
         * (nothing of an answer came): the keep-alive race, no failure of
         * the server's, so no error and no step towards an ejection. */
        r->retries++;
        r->retry = r->up_head_written;
        acquire(c);
        return 1;
    }
    r->up_errors++;
    r->last_err = (int)kind;
    if (kind != UP_ERR_OVERFLOW) up_pool_observe(r->pool, 0, uv_now(c->srv->loop));
    if (r->responding && !r->head_pending) {
        /* The answer was cut off: the client must see a broken connection.
         * It keeps the status it was sent, but for the arm it is an error
         * (req_finish), as a refused connection is: a server that always
         * dies mid-answer must not look healthy to the canary analysis. */
        r->cut = 1;
        conn_close(c);
        return 0;
    }
    /* Only the head had come (say, then a malformed chunk size), and none of
     * it was passed on: the client can still be told, as if nothing had
     * been answered. */
    r->responding = r->answered = r->head_pending = 0;
    /* The arm's error is counted once, when the request ends (req_finish):
     * a fallback may still succeed, and a 502/504 answer counts as a 5xx. */
    /* A challenger that failed before answering (refused, reset, died): the
     * champion answers, when we still hold every byte sent so far. Model
     * requests are predictions, safe to repeat; a timeout is not replayed
     * (the challenger may still be working on it). */
    if (r->arm != 0 && r->replayable && kind != UP_ERR_TIMEOUT && kind != UP_ERR_OVERFLOW) {
        router_count_fallback(r->exp, r->arm);
        r->chosen_failed = 1;
        r->arm = 0;
        r->retry = r->up_head_written;
        build_upstream_head(c);
        r->pool = r->exp->pools[0];
        acquire(c);
        return 0;
    }
    switch (kind) {
    case UP_ERR_TIMEOUT:
        send_error(c, 504, "upstream_timeout", "the model server did not answer in time");
        break;
    case UP_ERR_OVERFLOW:
        send_error(c, 503, "overloaded", "upstream connection pool exhausted");
        break;
    case UP_ERR_PROTOCOL:
        send_error(c, 502, "upstream_unavailable", "the model server's answer is not valid HTTP");
        break;
    case UP_ERR_RESET:
        send_error(c, 502, "upstream_unavailable",
                   "the model server closed the connection before answering in full");
        break;
    default:
        send_error(c, 502, "upstream_unavailable", "the model server could not be reached");
        break;
    }
    return 0;
}

static const up_user_ops_t proxy_user_ops = {
    .on_conn = pu_on_conn,
    .on_sent = pu_on_sent,
    .on_head = pu_on_head,
    .on_body = pu_on_body,
    .on_done = pu_on_done,
    .on_error = pu_on_error,
};

/* ---- finishing a request ---- */

static void req_finish(conn_t *c)
{
    mm_server_t *srv = c->srv;
    req_t *r = &c->req;
    if (!r->active) return;
    uint64_t now_us = mm_now_us();
    uint64_t latency = now_us - r->t0_us;
    if (r->up) {
        up_release(r->up, r->body_done && r->up_done && !r->aborted);
        r->up = NULL;
    }
    if (routed(r)) {
        metrics_arm_t *ma = r->merged ? &r->exp->metrics->merged : router_marm(r->exp, r->arm);
        metrics_status(ma->by_status, r->status);
        metrics_latency(ma, latency);
        /* One failed request is one error. A chosen arm that could not be
         * reached gets its error here but no pull: the champion's answer is
         * the champion's request. */
        int sarm = router_sarm(r->exp, r->arm);
        if (r->chosen_failed)
            store_error(srv->store, r->exp->state, router_sarm(r->exp, r->chosen));
        /* A request routed to the arm is a pull (DESIGN.md §6), also one
         * the client abandoned (499: gone, or cut by the drain), as the
         * metrics count it; only an answered one can get feedback. */
        if (r->status != 0) store_pull(srv->store, r->exp->state, sarm);
        /* Its error: a 5xx, or an upstream error held until the body was
         * read (r->discard: routed requests discard only for one), also
         * when the client's own overtook it (a stalled body's 408, a bad
         * chunk's 400, a 499), or an answer that broke off (r->cut). */
        if (r->status != 0 && (r->status >= 500 || r->discard || r->cut))
            store_error(srv->store, r->exp->state, sarm);
        if (r->status != 0 && r->status != 499) {
            store_remember_key(srv->store, r->exp->state, r->merged ? STORE_ARM_INTERLEAVE : sarm,
                               (mm_str_t){r->id, r->id_len}, r->id_key,
                               r->exp->cfg->feedback_ttl_s);
        }
        /* The chosen arm failed us (unreachable, ejected): it must count as
         * an error for its analysis, not hide behind the fallback. No answer
         * from the arm (our 502/504): an error, and its duration is the
         * timeout's, not a latency of the arm. A fan-out's answers are each
         * ranker's, counted by fanout.c. */
        if (!r->fanout) {
            int st = r->status;
            if ((r->up_errors && !r->answered) || r->cut) st = 0;
            uint64_t now = uv_now(srv->loop);
            /* A request in flight across a reload that left its experiment
             * as it was: the new policy instance took over (adopt) and is
             * the one described, so the answer goes there. */
            exp_rt_t *live = router_successor(srv->router, r->router, r->exp);
            if (r->chosen != r->arm) router_answer(srv->store, live, r->chosen, 0, latency, now);
            router_answer(srv->store, live, r->arm, st, latency, now);
        }
    } else if (c->kind == CONN_DATA && (!r->local || r->discard)) {
        /* Admin (and worker) listener requests are not counted, also those
         * refused before they were understood (docs/admin-metrics-log.md). */
        metrics_status(srv->metrics.unrouted_by_status, r->status);
    }
    reqlog_request(srv, c, latency); /* skipped while mirrors run: they log it */
    shadow_on_primary_done(c, latency);
    router_unref(r->router);
    r->router = NULL;

    int aborted = r->aborted;
    int keep = r->keep_alive && r->body_done && !aborted && !c->closing && !srv->draining;
    r->active = 0;
    r->exp = NULL;
    r->pool = NULL;
    r->local = r->discard = 0;
    r->fanout = r->merged = r->dispatched = 0;
    r->responding = r->final_write = r->head_pending = 0;
    r->body_done = r->up_done = r->retry = r->retries = r->queued = 0;
    r->up_head_written = r->replayable = 0;
    r->status = 0;
    r->body_in = r->bytes_out = 0;
    r->up_errors = r->chosen_failed = r->answered = r->cut = 0;
    r->aborted = 0;
    r->capture_body = 0;
    r->capture_limit = 0;
    c->pinned = 0;
    if (c->closing) return;
    if (!keep) {
        /* The client is still there (not aborted): let it read the answer.
         * While draining too: a client that pipelined its next request
         * behind this one would otherwise get a RST for it, and the RST
         * destroys this answer before the client reads it. The drain
         * waits for the linger (at most LINGER_MS, and drain_timeout_ms). */
        if (!aborted && !c->peer_eof)
            conn_linger(c);
        else
            conn_close(c);
        return;
    }
    c->phase = C_IDLE;
    c->method_done = c->url_done = c->msg_done = c->headers_done = 0;
    conn_deadline(c, server_config(srv)->limits.idle_timeout_ms);
    if (!c->peer_eof) start_reading(c);
    if (c->rpos < c->rlen) conn_process(c); /* a pipelined request is waiting */
    /* After a half-close nothing more will come: close once no whole
     * request is left to answer. */
    if (c->peer_eof && !c->closing && !req_may_be_whole(c)) conn_close(c);
}

/* ---- parsing loop ---- */

/* The local request c holds, as a handler sees it (the body as read so
 * far: none before it is read). */
static void local_req_of(conn_t *c, mm_local_req_t *out)
{
    req_t *r = &c->req;
    out->conn = c;
    out->method = (mm_str_t){r->method, r->method_len};
    out->url = (mm_str_t){r->url.p, r->url.len};
    out->path = http_url_path(out->url);
    out->body = mm_buf_view(&r->local_body);
    out->head = &c->head;
    out->base = c->rbuf;
    out->request_id = (mm_str_t){r->id, r->id_len};
    out->worker_only = c->kind == CONN_WORKER;
}

static void local_dispatch(conn_t *c)
{
    mm_local_req_t lr;
    local_req_of(c, &lr);
    conn_hold(c);
    if (c->kind != CONN_DATA)
        admin_handle(c->srv, &lr);
    else
        feedback_handle(c->srv, &lr);
    conn_release(c);
}

static void process_loop(conn_t *c)
{
    const config_t *cfg = server_config(c->srv);
    while (!c->closing) {
        if (c->phase == C_IDLE || c->phase == C_HEAD) {
            if (c->phase == C_IDLE && c->rpos > 0) {
                /* Between requests nothing points into the buffer: compact. */
                memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
                c->rlen -= c->rpos;
                c->rpos = 0;
            }
            size_t avail = c->rlen - c->rpos;
            if (avail == 0) return;
            if (parse_step(c) < 0) return;
            if (c->rpos > (size_t)cfg->limits.max_header_bytes) {
                send_error(c, 431, "headers_too_large", "request head exceeds max_header_bytes");
                return;
            }
            if (!c->headers_done) return; /* the rest of the head is still to come */
            on_request_head(c);
            continue;
        }
        if (c->phase == C_BODY && (c->req.local || c->req.fanout)) {
            size_t avail = c->rlen - c->rpos;
            if (avail == 0) return;
            if (parse_step(c) < 0) return;
            if (!c->msg_done) {
                /* The bytes parsed are copied (local_body, captured): drop
                 * them, or a body larger than the read buffer would stall
                 * it. The head stays, since local answers read it. */
                if (c->rpos == c->rlen) c->rpos = c->rlen = c->req.body_off;
                return;
            }
            c->req.body_done = 1;
            c->phase = C_WAIT;
            conn_no_deadline(c);
            continue;
        }
        if (c->phase == C_BODY) {
            pump_body(c);
            return;
        }
        if (c->phase == C_WAIT && (c->req.local || c->req.fanout) && c->req.active &&
            !c->req.dispatched) {
            c->req.dispatched = 1;
            if (c->req.discard) {
                shadow_start(c); /* mirrors of a failed primary: the body is read now */
                send_discarded(c);
            } else if (c->req.local)
                local_dispatch(c);
            else
                fanout_start(c);
        }
        return;
    }
}

static void conn_process(conn_t *c)
{
    c->processing++;
    process_loop(c);
    c->processing--;
}

/* ---- accepting ---- */

void proxy_on_connection(uv_stream_t *server, int status)
{
    mm_server_t *srv = server->data;
    int kind = listeners_is_admin(&srv->listeners, server)  ? CONN_ADMIN
               : (uv_tcp_t *)server == &srv->group.listener ? CONN_WORKER
                                                            : CONN_DATA;
    if (status < 0) return;
    conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL) return;
    c->srv = srv;
    c->kind = kind;
    c->refs = 1;
    c->req.conn = c;
    uv_tcp_init(srv->loop, &c->tcp);
    uv_timer_init(srv->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        c->handles = 2;
        uv_close((uv_handle_t *)&c->timer, on_conn_closed);
        uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    struct sockaddr_storage ss;
    int sl = sizeof(ss);
    c->peer[0] = '\0';
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET6)
            uv_ip6_name((struct sockaddr_in6 *)&ss, c->peer, sizeof(c->peer));
        else
            uv_ip4_name((struct sockaddr_in *)&ss, c->peer, sizeof(c->peer));
    }
    c->next = srv->conns;
    if (srv->conns) srv->conns->prev = c;
    srv->conns = c;
    if (kind == CONN_DATA) {
        srv->n_conns++;
        srv->connections_total++;
    }
    llhttp_init(&c->parser, HTTP_REQUEST, &req_settings);
    c->parser.data = c;
    c->phase = C_IDLE;
    const config_t *cfg = server_config(srv);
    if (kind == CONN_DATA && srv->n_conns > (size_t)cfg->limits.max_connections) {
        /* Over the limit: answer 503 at once rather than leave it hanging. */
        srv->overload_rejects++;
        c->req.active = 1;
        c->req.t0_us = mm_now_us();
        c->req.router = srv->router;
        router_ref(srv->router);
        new_request_id(c, c->req.id);
        c->req.id_len = 32;
        c->req.keep_alive = 0;
        c->msg_done = 0;
        snprintf(c->req.method, sizeof(c->req.method), "-");
        send_error(c, 503, "overloaded", "too many connections");
        return;
    }
    conn_deadline(c, cfg->limits.idle_timeout_ms);
    start_reading(c);
}

int proxy_listen_fd(mm_server_t *srv, uv_tcp_t *tcp, int fd, char *err, size_t errlen)
{
    uv_tcp_init(srv->loop, tcp);
    tcp->data = srv;
    int rc = uv_tcp_open(tcp, (uv_os_sock_t)fd);
    if (rc == 0) rc = uv_listen((uv_stream_t *)tcp, 128, proxy_on_connection);
    if (rc != 0) {
        snprintf(err, errlen, "cannot listen on the inherited socket %d: %s", fd, uv_strerror(rc));
        uv_close((uv_handle_t *)tcp, NULL);
        return -1;
    }
    return 0;
}

void proxy_drain(mm_server_t *srv)
{
    conn_t *c = srv->conns;
    while (c) {
        conn_t *next = c->next;
        if (c->phase == C_IDLE && c->rpos == c->rlen)
            conn_close(c);
        else
            c->req.keep_alive = 0; /* answer what is in flight, then close */
        c = next;
    }
}

void proxy_close_all(mm_server_t *srv)
{
    while (srv->conns) conn_close(srv->conns);
}
