/* upstream.c — pools of keep-alive connections to model servers, and the
 * response side of one exchange.
 *
 * Each connection owns a read buffer. The answer is parsed by llhttp with
 * pauses at the end of the head and at the end of the message, so we know
 * exactly where the body's raw bytes begin and end and can hand them to the
 * user without copying (chunked framing included: a chunked answer is passed
 * on chunked). The user calls up_resume() when it no longer needs the bytes;
 * until then the buffer is left alone, and when it is full we stop reading
 * from the socket, which pushes back on the model server through TCP.
 *
 * Lifetimes: a connection is owned by its pool; the TCP handle and the timer
 * are closed together and the memory is freed when both close callbacks ran.
 * The pool's memory goes when it has been released and its last connection
 * is gone, so a reload can drop a pool while requests still use it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "upstream.h"
#include "wio.h"

#define UC_BUF_INITIAL (16 * 1024)
#define UC_BUF_MAX     (256 * 1024) /* room for a large head; bodies stream through */
#define UP_QUEUE_MAX   4096

enum { UC_CONNECTING, UC_IDLE, UC_BUSY, UC_CLOSING };
enum { PH_HEAD, PH_BODY, PH_DONE };

struct up_pool_s {
    uv_loop_t *loop;
    cfg_upstream_t cfg;
    /* Every address the upstream's name resolves to: exchanges take them in
     * turn (rr), each with its own idle connections, as nginx picks a peer
     * and then a connection to it; with one address, as before. */
    mm_addrs_t addrs;
    unsigned rr;
    up_conn_t *idle[MM_ADDRS_MAX]; /* per address, LIFO: the most recently used is the warmest */
    /* With several addresses, outlier ejection per address too (as Envoy's
     * per host): one that fails eject.consecutive_5xx times in a row (a 5xx
     * answer, a failed connect or exchange) is skipped for base_ms times
     * its ejections, but never the last one standing. */
    struct {
        int consecutive;
        unsigned ejections;
        uint64_t until;          /* loop ms */
        uint64_t answers, fails; /* since the set last changed (up_pool_addr_stats) */
    } out[MM_ADDRS_MAX];
    int n_open, n_idle, n_waiting;
    up_user_t *qhead, *qtail;
    int refs; /* routers using the pool: a reload keeps an unchanged upstream's */
    int released;
    int draining; /* no more parking of idle connections */
    int consecutive_5xx;
    unsigned n_ejections;
    uint64_t ejected_until;
    up_pool_stats_t stats;
    /* A host name is looked up again every cfg.resolve_ms, off the loop
     * (libuv's thread pool), as Envoy's STRICT_DNS does: a model server
     * moved to a new address is followed without a reload. */
    unsigned addr_gen;    /* bumped when the address changes */
    uv_timer_t refresh;   /* unreferenced: never keeps the loop alive */
    uv_getaddrinfo_t gai; /* the lookup in flight */
    int refresh_open;     /* the timer handle is open (closed on release) */
    int gai_busy;         /* a lookup is in flight: the pool's memory stays */
    int resolve_failing;  /* the last lookup failed (logged once per streak) */
    int open_failing;     /* the last socket could not be opened (logged once per streak) */
};

struct up_conn_s {
    uv_tcp_t tcp;
    uv_connect_t connect_req;
    uv_write_t write_req;
    uv_timer_t timer;
    up_pool_t *pool;
    up_user_t *user;
    up_conn_t *next, *prev; /* idle list */
    llhttp_t parser;
    http_head_t head;
    up_resp_t resp;
    char *rbuf;
    size_t rcap, rlen, rpos;
    int state, phase;
    int paused;     /* bytes handed out, waiting for up_resume */
    int in_process; /* guards against re-entering uc_process from a callback */
    int reading;
    int writing;
    int decode;
    int kick;        /* run the parser once with no input: a zero-length body ends so */
    int eof_pending; /* EOF read while the user held bytes (see uc_eof) */
    int headers_done, msg_done;
    int interim; /* this exchange's answer came after an interim (1xx) one */
    int got_bytes;
    int req_open; /* the user has more request bytes to come (up_write's last == 0) */
    int early;    /* the answer's head came before the request was all written */
    unsigned uses;
    unsigned addr_gen; /* the pool's addr_gen when it connected */
    int ai;            /* its address: addrs.a[ai] of that generation */
    int closing_handles;
    uint64_t last_io;   /* loop time of the last read or write (response timer) */
    const char *span_p; /* decoded mode: the current body span */
    size_t span_n;
    uint64_t body_bytes; /* the answer's body bytes so far, chunk framing excluded */
};

static void uc_close(up_conn_t *c);
static void uc_process(up_conn_t *c);
static void pool_maybe_free(up_pool_t *p);
static void pool_dispatch(up_pool_t *p);

const char *up_err_name(up_err_t e)
{
    static const char *names[] = {"connect", "connect_timeout", "timeout",
                                  "reset",   "protocol",        "overflow"};
    return (unsigned)e < UP_ERR__COUNT ? names[e] : "unknown";
}

/* ---- llhttp callbacks (response parser) ---- */

static up_conn_t *parser_conn(llhttp_t *p)
{
    return (up_conn_t *)p->data;
}

static uint32_t off_of(up_conn_t *c, const char *at)
{
    return (uint32_t)(at - c->rbuf);
}

static int on_message_begin(llhttp_t *p)
{
    up_conn_t *c = parser_conn(p);
    http_head_reset(&c->head);
    return 0;
}

static int on_status(llhttp_t *p, const char *at, size_t n)
{
    up_conn_t *c = parser_conn(p);
    if (c->head.status_len == 0) c->head.status_off = off_of(c, at);
    c->head.status_len += (uint32_t)n;
    return 0;
}

/* After the head, llhttp reports a chunked answer's trailer fields through
 * the same callbacks. They are not headers (RFC 9110 §6.5.1): the head has
 * been passed on, and the buffer may have started over since. They reach
 * the client inside the raw chunked body, checked by http_execute. */
static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    up_conn_t *c = parser_conn(p);
    if (!c->headers_done) http_head_on_field(&c->head, off_of(c, at), (uint32_t)n);
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    up_conn_t *c = parser_conn(p);
    if (!c->headers_done) http_head_on_value(&c->head, off_of(c, at), (uint32_t)n);
    return 0;
}

static int on_chunk_header(llhttp_t *p)
{
    return http_chunked_on_chunk(&parser_conn(p)->head.chunked, p->content_length);
}

/* An answer's chunk extensions and trailers may take what its head may. */
static int on_chunk_extension(llhttp_t *p, const char *at, size_t n)
{
    (void)at;
    return http_chunked_on_ext(&parser_conn(p)->head.chunked, n, UC_BUF_MAX);
}

static int on_headers_complete(llhttp_t *p)
{
    up_conn_t *c = parser_conn(p);
    /* A status outside 100-599 is no HTTP status (RFC 9110 §15): under 100
     * it is not an interim answer to skip while waiting for a final one that
     * never comes, and over 599 no client could make sense of it. */
    if (p->status_code < 100 || p->status_code > 599) return -1;
    if (p->status_code < 200) return 0; /* 1xx: interim, skipped */
    http_head_index(&c->head, c->rbuf);
    up_resp_t *r = &c->resp;
    r->status = p->status_code;
    r->http_minor = p->http_minor;
    r->chunked = (p->flags & F_CHUNKED) != 0;
    r->has_length = (p->flags & F_CONTENT_LENGTH) != 0;
    r->content_length = r->has_length ? p->content_length : 0;
    r->no_body =
        (c->user && c->user->no_body_expected) || p->status_code == 204 || p->status_code == 304;
    r->until_eof = !r->no_body && !r->chunked && !r->has_length;
    c->headers_done = 1;
    /* An answer before the whole request was written: the server may not
     * have read (and may never read) the rest, so what follows on this
     * connection is not known to start a new request. nginx's upstream
     * keepalive gives such a connection up too. */
    c->early = c->writing || c->req_open;
    if (r->no_body) return 1; /* llhttp then ends the message right away */
    return HPE_PAUSED;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    up_conn_t *c = parser_conn(p);
    c->body_bytes += n; /* llhttp reports de-chunked spans in both modes */
    if (!c->decode) return 0;
    c->span_p = at;
    c->span_n = n;
    return HPE_PAUSED;
}

static int on_message_complete(llhttp_t *p)
{
    up_conn_t *c = parser_conn(p);
    if (p->status_code < 200) {
        http_head_reset(&c->head);
        c->interim = 1;
        return 0;
    }
    c->resp.keep_alive = llhttp_should_keep_alive(p);
    c->msg_done = 1;
    return HPE_PAUSED;
}

static llhttp_settings_t resp_settings;
static int resp_settings_ready;

static void init_settings(void)
{
    if (resp_settings_ready) return;
    llhttp_settings_init(&resp_settings);
    resp_settings.on_message_begin = on_message_begin;
    resp_settings.on_status = on_status;
    resp_settings.on_header_field = on_header_field;
    resp_settings.on_header_value = on_header_value;
    resp_settings.on_headers_complete = on_headers_complete;
    resp_settings.on_body = on_body;
    resp_settings.on_chunk_header = on_chunk_header;
    resp_settings.on_chunk_extension_name = on_chunk_extension;
    resp_settings.on_chunk_extension_value = on_chunk_extension;
    resp_settings.on_message_complete = on_message_complete;
    resp_settings_ready = 1;
}

/* ---- pool ---- */

static void refresh_arm(up_pool_t *p);

up_pool_t *up_pool_create(uv_loop_t *loop, const cfg_upstream_t *cfg, const mm_addrs_t *addrs,
                          char *err, size_t errlen)
{
    init_settings();
    up_pool_t *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    p->loop = loop;
    p->cfg = *cfg;
    p->refs = 1;
    if (addrs) {
        p->addrs = *addrs; /* looked up off the loop by the caller (a reload) */
    } else if (mm_addrs_resolve(&cfg->addr, &p->addrs) != 0) {
        /* At startup, before anything is served: a blocking lookup, once. */
        snprintf(err, errlen, "upstream %s: cannot resolve %s", cfg->name, cfg->addr.host);
        free(p);
        return NULL;
    }
    if (cfg->resolve_ms > 0 && mm_addr_is_name(&cfg->addr)) {
        uv_timer_init(loop, &p->refresh);
        uv_unref((uv_handle_t *)&p->refresh);
        p->refresh.data = p;
        p->refresh_open = 1;
        refresh_arm(p);
    }
    return p;
}

const mm_addrs_t *up_pool_addrs(const up_pool_t *p)
{
    return &p->addrs;
}

const cfg_upstream_t *up_pool_cfg(const up_pool_t *p)
{
    return &p->cfg;
}

void up_pool_stats(const up_pool_t *p, up_pool_stats_t *out)
{
    *out = p->stats;
    out->open = p->n_open;
    out->idle = p->n_idle;
    out->addresses = p->addrs.n;
    out->waiting = p->n_waiting;
}

static void idle_remove(up_pool_t *p, up_conn_t *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        p->idle[c->ai] = c->next;
    if (c->next) c->next->prev = c->prev;
    c->next = c->prev = NULL;
    p->n_idle--;
}

static void idle_push(up_pool_t *p, up_conn_t *c)
{
    up_conn_t **head = &p->idle[c->ai];
    c->prev = NULL;
    c->next = *head;
    if (*head) (*head)->prev = c;
    *head = c;
    p->n_idle++;
}

static void close_idle_at(up_pool_t *p, int ai)
{
    while (p->idle[ai]) uc_close(p->idle[ai]); /* uc_close takes it off the idle list */
}

static void close_idle(up_pool_t *p)
{
    for (int i = 0; i < MM_ADDRS_MAX; i++) close_idle_at(p, i);
}

static int addr_ejected(const up_pool_t *p, int ai, uint64_t now)
{
    return p->out[ai].until > now;
}

/* The next address in turn that is not ejected. */
static int pick_ai(up_pool_t *p)
{
    uint64_t now = uv_now(p->loop);
    for (int k = 0; k < p->addrs.n; k++) {
        int ai = (int)(p->rr++ % (unsigned)p->addrs.n);
        if (!addr_ejected(p, ai, now)) return ai;
    }
    return (int)(p->rr++ % (unsigned)p->addrs.n); /* every one ejected: cannot be, see below */
}

/* The address of the next exchange: the addresses in turn. */
static inline int next_ai(up_pool_t *p)
{
    return p->addrs.n == 1 ? 0 : pick_ai(p);
}

/* c's exchange in its address's counts (modelmux_upstream_address_
 * requests_total): `answer`, an answer's head came (a 5xx included), else
 * the exchange failed (connect, timeout, reset, protocol). An answer that
 * breaks off after its head counts once each way. */
static void addr_count(up_conn_t *c, int answer)
{
    up_pool_t *p = c->pool;
    if (c->addr_gen != p->addr_gen) return; /* an address of a set since replaced */
    if (answer)
        p->out[c->ai].answers++;
    else
        p->out[c->ai].fails++;
}

/* Outlier detection of c's address, once per exchange at its end: a
 * failure (a 5xx, or an exchange that failed, also after its head came)
 * is one more in a row, a whole good answer ends the run. With one
 * address the pool's own ejection (up_pool_observe, the arm's fallback)
 * is the whole story. */
static void addr_judge(up_conn_t *c, int failed)
{
    up_pool_t *p = c->pool;
    if (c->addr_gen != p->addr_gen) return;
    int ai = c->ai;
    if (p->addrs.n < 2 || p->cfg.eject_consecutive_5xx <= 0) return;
    if (!failed) {
        p->out[ai].consecutive = 0;
        return;
    }
    if (++p->out[ai].consecutive < p->cfg.eject_consecutive_5xx) return;
    p->out[ai].consecutive = 0;
    uint64_t now = uv_now(p->loop);
    int standing = 0;
    for (int i = 0; i < p->addrs.n; i++) standing += i != ai && !addr_ejected(p, i, now);
    if (addr_ejected(p, ai, now) || standing == 0) return; /* the last one serves on */
    uint64_t ms = (uint64_t)p->cfg.eject_base_ms * ++p->out[ai].ejections;
    p->out[ai].until = now + ms;
    p->stats.address_ejections++;
    char at[80];
    mm_addr_format(&p->addrs.a[ai], at, sizeof(at));
    mm_log("upstream %s: %s ejected for %llu ms (%d failures in a row); the others serve",
           p->cfg.name, at, (unsigned long long)ms, p->cfg.eject_consecutive_5xx);
    close_idle_at(p, ai);
}

/* An idle connection to any address, looking from `from` on; NULL: none. */
static up_conn_t *any_idle(const up_pool_t *p, int from)
{
    for (int k = 0; k < p->addrs.n && p->n_idle > 0; k++) {
        up_conn_t *c = p->idle[(from + k) % p->addrs.n];
        if (c) return c;
    }
    return NULL;
}

/* No connection for u: the queue is full, or u waited too long, or the
 * pool went away. Counted, and u told. */
static void overflow(up_pool_t *p, up_user_t *u)
{
    p->stats.errors[UP_ERR_OVERFLOW]++;
    (void)u->ops->on_error(u, NULL, UP_ERR_OVERFLOW, 0);
}

static void queue_remove(up_pool_t *p, up_user_t *u)
{
    if (u->qprev)
        u->qprev->qnext = u->qnext;
    else
        p->qhead = u->qnext;
    if (u->qnext)
        u->qnext->qprev = u->qprev;
    else
        p->qtail = u->qprev;
    u->qnext = u->qprev = NULL;
    u->waiting_on = NULL;
    p->n_waiting--;
}

/* ---- re-resolution ---- */

static void on_refresh_timer(uv_timer_t *t);

static void refresh_arm(up_pool_t *p)
{
    if (p->refresh_open && !p->released && !p->draining)
        uv_timer_start(&p->refresh, on_refresh_timer, (uint64_t)p->cfg.resolve_ms, 0);
}

static void on_refresh_closed(uv_handle_t *h)
{
    up_pool_t *p = h->data;
    p->refresh_open = 0;
    pool_maybe_free(p);
}

/* Where new connections go from now on. Idle connections to the old
 * addresses are closed now, busy ones when released (addr_gen), so a model
 * server that moved is left once its exchanges are done, as Envoy drains a
 * host DNS no longer returns. (Any change of the set starts every
 * connection afresh: sets change rarely, and an index stays simple.) */
static void pool_readdress(up_pool_t *p, const mm_addrs_t *set)
{
    char was[400], now[400];
    mm_addrs_format(&p->addrs, was, sizeof(was));
    mm_addrs_format(set, now, sizeof(now));
    mm_log("upstream %s: %s now resolves to %s (was %s)", p->cfg.name, p->cfg.addr.host, now, was);
    p->addrs = *set;
    p->addr_gen++;
    p->stats.readdressed++;
    memset(p->out, 0, sizeof(p->out)); /* a new set: its addresses start clean */
    close_idle(p);
}

static void on_refresh_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    up_pool_t *p = req->data;
    p->gai_busy = 0;
    mm_addrs_t set;
    int ok = status == 0 && mm_addrs_from_ai(res, p->cfg.addr.port, &set) == 0;
    if (res) uv_freeaddrinfo(res);
    if (p->released) {
        pool_maybe_free(p);
        return;
    }
    if (!ok) {
        p->stats.resolve_failures++;
        if (!p->resolve_failing) {
            char at[400];
            mm_addrs_format(&p->addrs, at, sizeof(at));
            mm_log("upstream %s: cannot resolve %s (%s); connections keep going to %s, "
                   "looked up again every %d ms",
                   p->cfg.name, p->cfg.addr.host, status ? uv_strerror(status) : "no address", at,
                   p->cfg.resolve_ms);
        }
        p->resolve_failing = 1;
    } else {
        if (p->resolve_failing)
            mm_log("upstream %s: %s resolves again", p->cfg.name, p->cfg.addr.host);
        p->resolve_failing = 0;
        if (!mm_addrs_equal(&set, &p->addrs)) pool_readdress(p, &set);
    }
    refresh_arm(p);
}

static void on_refresh_timer(uv_timer_t *t)
{
    up_pool_t *p = t->data;
    if (p->gai_busy || p->released || p->draining) return;
    p->gai.data = p;
    if (mm_addr_lookup(p->loop, &p->gai, on_refresh_resolved, p->cfg.addr.host) != 0) {
        p->stats.resolve_failures++;
        refresh_arm(p); /* the thread pool refused it: try at the next interval */
        return;
    }
    p->gai_busy = 1;
}

static void refresh_stop(up_pool_t *p)
{
    if (p->refresh_open && !uv_is_closing((uv_handle_t *)&p->refresh))
        uv_close((uv_handle_t *)&p->refresh, on_refresh_closed);
    /* A lookup not started yet is cancelled (its callback then runs with
     * UV_ECANCELED); one already running finishes, and the pool waits. */
    if (p->gai_busy) uv_cancel((uv_req_t *)&p->gai);
}

void up_pool_ref(up_pool_t *p)
{
    p->refs++;
}

int up_pool_addr_stats(const up_pool_t *p, int i, up_addr_stats_t *out)
{
    if (i < 0 || i >= p->addrs.n) return -1;
    mm_addr_format(&p->addrs.a[i], out->address, sizeof(out->address));
    out->answers = p->out[i].answers;
    out->fails = p->out[i].fails;
    out->ejected = p->addrs.n > 1 && addr_ejected(p, i, uv_now(p->loop));
    return 0;
}

void up_pool_set_addrs(up_pool_t *p, const mm_addrs_t *set)
{
    if (!mm_addrs_equal(set, &p->addrs)) pool_readdress(p, set);
}

int up_pool_same(const up_pool_t *p, const cfg_upstream_t *cfg)
{
    const cfg_upstream_t *a = &p->cfg;
    return strcmp(a->name, cfg->name) == 0 && strcmp(a->url, cfg->url) == 0 &&
           a->pool == cfg->pool && a->connect_timeout_ms == cfg->connect_timeout_ms &&
           a->timeout_ms == cfg->timeout_ms &&
           a->eject_consecutive_5xx == cfg->eject_consecutive_5xx &&
           a->eject_base_ms == cfg->eject_base_ms && a->resolve_ms == cfg->resolve_ms;
}

void up_pool_release(up_pool_t *p)
{
    if (p == NULL || --p->refs > 0) return;
    p->released = 1;
    refresh_stop(p);
    close_idle(p);
    /* Waiters of a released pool cannot be served by it any more. */
    while (p->qhead) up_expire(p, p->qhead);
    pool_maybe_free(p);
}

void up_pool_drain(up_pool_t *p)
{
    p->draining = 1;
    if (p->refresh_open) uv_timer_stop(&p->refresh);
    close_idle(p);
}

static void pool_maybe_free(up_pool_t *p)
{
    if (p->released && p->n_open == 0 && p->n_waiting == 0 && !p->refresh_open && !p->gai_busy)
        free(p);
}

/* ---- connection lifecycle ---- */

static void on_handle_closed(uv_handle_t *h)
{
    up_conn_t *c = h->data;
    if (--c->closing_handles > 0) return;
    up_pool_t *p = c->pool;
    free(c->rbuf);
    free(c);
    p->n_open--;
    if (!p->released) pool_dispatch(p); /* a slot freed up: a waiter may connect */
    pool_maybe_free(p);
}

static void uc_close(up_conn_t *c)
{
    if (c->state == UC_CLOSING) return;
    if (c->state == UC_IDLE) idle_remove(c->pool, c);
    c->state = UC_CLOSING;
    c->user = NULL;
    c->closing_handles = 2;
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}

/* A failed exchange on c: the pool's error count of its kind, and a
 * failure of c's address (for per-address ejection and metrics). */
static void count_failure(up_conn_t *c, up_err_t kind)
{
    c->pool->stats.errors[kind]++;
    addr_count(c, 0);
    addr_judge(c, 1);
}

/* The answer is whole: its address's run of failures ends, and the user
 * is told. */
static void uc_done(up_conn_t *c)
{
    c->phase = PH_DONE;
    addr_judge(c, c->resp.status >= 500);
    c->user->ops->on_done(c->user, c);
}

/* Fail the current exchange: tell the user, close the connection. */
static void uc_fail(up_conn_t *c, up_err_t kind)
{
    up_user_t *u = c->user;
    /* "Reused" tells the user the request may be sent again: only when the
     * model server closed a kept-alive connection under us before answering
     * (a reset or EOF). A timeout is not that: the server may still be
     * working on it, and sending it again would double the wait and the
     * work. */
    int reused = kind == UP_ERR_RESET && c->uses > 1 && !c->got_bytes;
    uc_close(c);
    int resent = u ? u->ops->on_error(u, c, kind, reused) : 0;
    /* After the user's call, which tells whether this was the keep-alive
     * race it sends again; c is freed only once its handles have closed,
     * on a later turn of the loop. */
    if (!(reused && resent)) count_failure(c, kind);
}

static void on_timer(uv_timer_t *t)
{
    up_conn_t *c = t->data;
    if (c->state == UC_CONNECTING) {
        /* The connect callback will still run (with UV_ECANCELED) after the
         * close; it must see the connection as closing and do nothing. */
        up_user_t *u = c->user;
        count_failure(c, UP_ERR_CONNECT_TIMEOUT);
        uc_close(c);
        if (u) {
            u->pending_conn = NULL;
            (void)u->ops->on_error(u, NULL, UP_ERR_CONNECT_TIMEOUT, 0);
        }
    } else if (c->state == UC_BUSY) {
        /* Everything the client sent so far is written, more is to come and
         * no answer byte has arrived: the model server waits for us, not we
         * for it. Blaming it (504, an ejection signal) for a client that
         * stalls mid-body would be wrong; the client's own timer decides
         * (408). The timer lapses here; the next write or read re-arms it. */
        if (c->req_open && !c->writing && !c->got_bytes) return;
        /* The user holds answer bytes: a client slow to read them, not the
         * model server, is who we wait for (the client's own send deadline
         * bounds that). Cutting the answer here blamed the model server
         * with a timeout. The timer lapses; up_resume re-arms it. */
        if (c->paused) return;
        uint64_t idle = uv_now(c->pool->loop) - c->last_io;
        uint64_t limit = (uint64_t)c->pool->cfg.timeout_ms;
        if (idle < limit) {
            uv_timer_start(&c->timer, on_timer, limit - idle, 0);
            return;
        }
        uc_fail(c, UP_ERR_TIMEOUT);
    }
}

/* The response timer is an inactivity timer refreshed by every read and
 * write. Restarting a libuv timer per I/O costs two heap operations, so we
 * only note the time; when the timer fires early it re-arms for the rest,
 * and on an idle connection it lapses. */
static void arm_response_timer(up_conn_t *c)
{
    c->last_io = uv_now(c->pool->loop);
    if (!uv_is_active((uv_handle_t *)&c->timer))
        uv_timer_start(&c->timer, on_timer, (uint64_t)c->pool->cfg.timeout_ms, 0);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    up_conn_t *c = h->data;
    if (c->rbuf == NULL) {
        c->rbuf = malloc(UC_BUF_INITIAL);
        c->rcap = c->rbuf ? UC_BUF_INITIAL : 0;
    }
    if (c->rlen == c->rcap && c->phase == PH_HEAD && c->rcap < UC_BUF_MAX) {
        /* A head larger than the buffer: grow (offsets stay valid). */
        char *nb = realloc(c->rbuf, c->rcap * 2);
        if (nb) {
            c->rbuf = nb;
            c->rcap *= 2;
        }
    }
    buf->base = c->rbuf + c->rlen;
    buf->len = c->rcap - c->rlen;
}

static void stop_reading(up_conn_t *c)
{
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = 0;
    }
}

static void start_reading(up_conn_t *c);

/* The model server closed its side during an exchange. What it sent
 * before the EOF counts first: bytes the user still holds, or bytes read
 * ahead while it held them (a slow client), are passed on before the EOF
 * is acted on. Failing at once would cut off a whole answer sent just
 * before a `Connection: close`. Then: an answer already whole only means
 * the connection is not reused; a close-delimited body ends here; anything
 * else was cut off. */
static void uc_eof(up_conn_t *c)
{
    c->resp.keep_alive = 0;
    if (c->paused || c->rpos < c->rlen) {
        c->eof_pending = 1; /* acted on when up_resume has passed the rest on */
        stop_reading(c);
        return;
    }
    if (c->phase == PH_DONE) {
        stop_reading(c);
        return;
    }
    if (c->phase == PH_BODY && c->resp.until_eof) {
        llhttp_finish(&c->parser);
        c->msg_done = 1;
        uc_done(c);
        return;
    }
    uc_fail(c, UP_ERR_RESET);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    up_conn_t *c = s->data;
    if (nread == 0) return;
    if (nread == UV_ENOBUFS) {
        /* The buffer cannot grow past UC_BUF_MAX, and a head must fit in
         * it whole (its fields are offsets into it): a larger one never
         * completes. Waiting would end in a 504 after timeout_ms, blaming
         * a slow model server for one that said too much; nginx answers
         * 502 at once ("upstream sent too big header"), and so do we. */
        if (c->state == UC_BUSY && c->phase == PH_HEAD) {
            uc_fail(c, UP_ERR_PROTOCOL);
            return;
        }
        stop_reading(c); /* buffer full: resume when the user has drained it */
        return;
    }
    if (nread < 0) {
        if (c->state == UC_IDLE) { /* the server closed an idle connection */
            uc_close(c);
            return;
        }
        if (c->state != UC_BUSY) return;
        if (nread == UV_EOF) {
            uc_eof(c);
            return;
        }
        uc_fail(c, UP_ERR_RESET);
        return;
    }
    if (c->state != UC_BUSY) { /* bytes nobody asked for: not HTTP we can trust */
        uc_close(c);
        return;
    }
    c->rlen += (size_t)nread;
    c->got_bytes = 1;
    arm_response_timer(c); /* an inactivity timer: refreshed by every read and write */
    uc_process(c);
    if (c->state == UC_BUSY && c->rlen == c->rcap && c->paused) stop_reading(c);
}

static void start_reading(up_conn_t *c)
{
    if (!c->reading && c->state != UC_CLOSING) {
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
        c->reading = 1;
    }
}

static void begin_exchange(up_conn_t *c, up_user_t *u)
{
    c->state = UC_BUSY;
    c->user = u;
    c->phase = PH_HEAD;
    c->paused = 0;
    c->decode = 0;
    c->kick = 0;
    c->eof_pending = 0;
    c->headers_done = c->msg_done = 0;
    c->interim = 0;
    c->got_bytes = 0;
    c->req_open = 0;
    c->early = 0;
    c->body_bytes = 0;
    c->uses++;
    memset(&c->resp, 0, sizeof(c->resp));
    llhttp_init(&c->parser, HTTP_RESPONSE, &resp_settings);
    c->parser.data = c;
    http_head_reset(&c->head);
    u->pending_conn = NULL;
    arm_response_timer(c); /* still running from an earlier exchange: only notes the time */
    start_reading(c);
    u->ops->on_conn(u, c);
}

static void on_connect(uv_connect_t *req, int status)
{
    up_conn_t *c = req->data;
    if (c->state == UC_CLOSING) return; /* timed out or pool released meanwhile */
    uv_timer_stop(&c->timer);
    if (status != 0) {
        up_user_t *u = c->user;
        count_failure(c, UP_ERR_CONNECT);
        uc_close(c);
        if (u) {
            u->pending_conn = NULL;
            (void)u->ops->on_error(u, NULL, UP_ERR_CONNECT, 0);
        }
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    up_user_t *u = c->user;
    if (u == NULL && (c->pool->draining || c->addr_gen != c->pool->addr_gen)) {
        uc_close(c);
        return;
    }
    if (u == NULL) { /* its user gave up: serve a waiter or park it */
        c->state = UC_IDLE;
        idle_push(c->pool, c);
        start_reading(c);
        pool_dispatch(c->pool);
        return;
    }
    begin_exchange(c, u);
}

static int open_conn(up_pool_t *p, up_user_t *u, int ai)
{
    up_conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL) return -1;
    c->pool = p;
    c->user = u;
    c->addr_gen = p->addr_gen;
    c->ai = ai;
    c->state = UC_CONNECTING;
    uv_tcp_init(p->loop, &c->tcp);
    uv_timer_init(p->loop, &c->timer);
    c->tcp.data = c->timer.data = c->connect_req.data = c;
    p->n_open++;
    p->stats.connects++;
    int rc = uv_tcp_connect(&c->connect_req, &c->tcp, (const struct sockaddr *)&p->addrs.a[ai],
                            on_connect);
    if (rc != 0) {
        /* Refused here, before any packet left: this process is out of
         * descriptors (EMFILE) or local ports, not the model server's
         * fault. Said once per streak, or its 502s have no visible cause. */
        if (!p->open_failing)
            mm_log("upstream %s: cannot open a connection: %s", p->cfg.name, uv_strerror(rc));
        p->open_failing = 1;
        c->user = NULL;
        uc_close(c);
        return -1;
    }
    if (p->open_failing) mm_log("upstream %s: connections open again", p->cfg.name);
    p->open_failing = 0;
    u->pending_conn = c;
    uv_timer_start(&c->timer, on_timer, (uint64_t)p->cfg.connect_timeout_ms, 0);
    return 0;
}

/* Serve waiters from idle connections, or open connections for them. */
static void pool_dispatch(up_pool_t *p)
{
    while (p->qhead) {
        up_user_t *u = p->qhead;
        up_conn_t *c = any_idle(p, (int)(p->rr % (unsigned)p->addrs.n));
        if (c) {
            idle_remove(p, c);
            queue_remove(p, u);
            begin_exchange(c, u);
        } else if (p->n_open < p->cfg.pool) {
            queue_remove(p, u);
            if (open_conn(p, u, next_ai(p)) < 0) {
                p->stats.errors[UP_ERR_CONNECT]++;
                (void)u->ops->on_error(u, NULL, UP_ERR_CONNECT, 0);
            }
        } else {
            break;
        }
    }
}

void up_acquire(up_pool_t *p, up_user_t *u)
{
    u->qnext = u->qprev = NULL;
    u->waiting_on = NULL;
    u->pending_conn = NULL;
    /* This exchange's address; an idle connection to it, else a new one, or
     * (the pool is full) an idle connection to another. */
    int ai = next_ai(p);
    up_conn_t *c = p->idle[ai];
    if (c == NULL && p->n_open >= p->cfg.pool) c = any_idle(p, ai);
    if (c) {
        idle_remove(p, c);
        begin_exchange(c, u);
        return;
    }
    if (p->n_open < p->cfg.pool) {
        if (open_conn(p, u, ai) < 0) {
            p->stats.errors[UP_ERR_CONNECT]++;
            (void)u->ops->on_error(u, NULL, UP_ERR_CONNECT, 0);
        }
        return;
    }
    if (p->n_waiting >= UP_QUEUE_MAX) {
        overflow(p, u);
        return;
    }
    u->qprev = p->qtail;
    if (p->qtail)
        p->qtail->qnext = u;
    else
        p->qhead = u;
    p->qtail = u;
    u->waiting_on = p;
    p->n_waiting++;
}

void up_cancel(up_pool_t *p, up_user_t *u)
{
    if (u->waiting_on == p) {
        queue_remove(p, u);
        pool_maybe_free(p);
        return;
    }
    /* A connect in flight for this user: the connection, once up, goes to
     * the next waiter or the idle list. */
    if (u->pending_conn) {
        u->pending_conn->user = NULL;
        u->pending_conn = NULL;
    }
}

void up_expire(up_pool_t *p, up_user_t *u)
{
    if (u->waiting_on != p) return;
    queue_remove(p, u);
    overflow(p, u);
}

static void on_written(uv_write_t *w, int status)
{
    up_conn_t *c = w->data;
    c->writing = 0;
    if (c->state != UC_BUSY) return;
    if (status != 0) {
        uc_fail(c, UP_ERR_RESET);
        return;
    }
    arm_response_timer(c);
    up_user_t *u = c->user;
    u->ops->on_sent(u, c);
}

int up_write(up_conn_t *c, const uv_buf_t *bufs, unsigned n, int last)
{
    if (c->state != UC_BUSY || c->writing || n > 4) return -1;
    c->req_open = !last;
    /* The timer may have lapsed while we waited for the client: the wait
     * does not count, and a write the server does not take must time out. */
    if (!uv_is_active((uv_handle_t *)&c->timer)) arm_response_timer(c);
    uv_buf_t rest[4];
    for (unsigned i = 0; i < n; i++) rest[i] = bufs[i];
    int done = mm_try_write((uv_stream_t *)&c->tcp, rest, &n);
    if (done == 1) { /* all taken by the kernel: no write request needed */
        arm_response_timer(c);
        c->user->ops->on_sent(c->user, c);
        return 0;
    }
    if (done < 0) return -1;
    c->writing = 1;
    c->write_req.data = c;
    if (uv_write(&c->write_req, (uv_stream_t *)&c->tcp, rest, n, on_written) != 0) {
        c->writing = 0;
        return -1;
    }
    return 0;
}

void up_set_decode(up_conn_t *c, int decode)
{
    c->decode = decode;
}

uint64_t up_body_bytes(const up_conn_t *c)
{
    return c->body_bytes;
}

int up_conn_reused(const up_conn_t *c)
{
    return c->uses > 1;
}

/* Run the parser over buffered bytes until the user must act. */
static void uc_process(up_conn_t *c)
{
    if (c->in_process) return;
    c->in_process = 1;
    while (c->state == UC_BUSY && !c->paused && c->phase != PH_DONE) {
        size_t avail = c->rlen - c->rpos;
        int kick = c->phase == PH_BODY && c->kick;
        if (avail == 0 && !kick) break;
        if (kick) c->kick = 0;
        const char *start = c->rbuf ? c->rbuf + c->rpos : "";
        c->span_n = 0;
        int was_msg_done = c->msg_done;
        llhttp_errno_t e = http_execute(&c->parser, &c->head.chunked, start, avail, UC_BUF_MAX);
        size_t used = avail;
        if (e == HPE_PAUSED) {
            used = (size_t)(llhttp_get_error_pos(&c->parser) - start);
            llhttp_resume(&c->parser);
        } else if (e != HPE_OK) {
            c->in_process = 0;
            uc_fail(c, UP_ERR_PROTOCOL);
            return;
        }
        up_user_t *u = c->user;
        if (c->phase == PH_HEAD) {
            c->rpos += used;
            if (!c->headers_done) continue;
            /* A folded header line (RFC 9112 §5.2), or a line with an
             * empty field name (RFC 9110 §5.1): a proxy answers 502 rather
             * than pass on a head it cannot forward faithfully. So is a
             * transfer coding other than chunked ("gzip, chunked"; "gzip",
             * read until EOF): Transfer-Encoding is hop-by-hop,
             * modelmux frames the answer itself, chunked at most, and the
             * client would get the coded bytes with nothing saying so.
             * So is a line ending in a bare LF (llhttp takes one after the
             * status line and as the empty last line): the buffer holds
             * this exchange's heads from its start, interim ones too, and
             * with them each line is looked at. */
            if (c->head.too_many || c->head.obs_fold || c->head.empty_name ||
                (c->head.count[HK_TRANSFER_ENC] && !http_te_chunked_only(&c->head, c->rbuf)) ||
                (c->interim ? http_bare_lf(c->rbuf, c->rpos)
                            : http_head_bare_lf(c->rbuf, c->rpos))) {
                c->in_process = 0;
                uc_fail(c, UP_ERR_PROTOCOL);
                return;
            }
            c->phase = PH_BODY;
            c->paused = 1;
            c->kick = 1; /* a bodiless or zero-length answer ends without input */
            c->resp.head = &c->head;
            c->resp.base = c->rbuf;
            addr_count(c, 1);
            u->ops->on_head(u, c, &c->resp);
            if (c->state == UC_BUSY && c->msg_done && c->phase == PH_BODY) uc_done(c);
            continue;
        }
        /* body */
        const char *p = c->decode ? c->span_p : start;
        size_t n = c->decode ? c->span_n : used;
        c->rpos += used;
        if (n > 0) {
            c->paused = 1;
            /* Paused inside on_body (decode mode): the message may end with
             * no further input, so run the parser once more even then. */
            if (c->decode && !c->msg_done) c->kick = 1;
            u->ops->on_body(u, c, p, n);
            if (c->state != UC_BUSY) break;
        }
        if (c->msg_done && !was_msg_done) {
            uc_done(c);
            break;
        }
    }
    /* Everything parsed and nothing held by the user: the buffer can start
     * over (never during a head, whose fields are offsets into it). */
    if (c->state == UC_BUSY && !c->paused && c->phase != PH_HEAD && c->rpos == c->rlen)
        c->rpos = c->rlen = 0;
    c->in_process = 0;
}

void up_resume(up_conn_t *c)
{
    if (c->state != UC_BUSY) return;
    c->paused = 0;
    /* The time the bytes were held is not the model server's: its
     * inactivity count starts now, and a timer that lapsed meanwhile runs
     * again (no clock read, and no timer operation while it is armed). */
    arm_response_timer(c);
    if (c->rpos == c->rlen && !c->in_process) c->rpos = c->rlen = 0;
    uc_process(c);
    if (c->state != UC_BUSY || c->paused) return;
    if (c->eof_pending) {
        /* Nested in uc_process (the user resumed from its callback): the
         * outer run passes the rest on, and the next resume acts. */
        if (c->in_process || c->rpos < c->rlen) return;
        c->eof_pending = 0;
        uc_eof(c);
        return;
    }
    if (c->phase != PH_DONE) start_reading(c);
}

void up_abandon_timeout(up_conn_t *c)
{
    if (c->state != UC_BUSY) return;
    count_failure(c, UP_ERR_TIMEOUT); /* as the connection's own timer counts it */
    up_release(c, 0);
}

void up_cancel_overdue(up_pool_t *p, up_user_t *u)
{
    p->stats.errors[UP_ERR_OVERFLOW]++; /* as overflow() counts a waiter timed out */
    up_cancel(p, u);
}

void up_release(up_conn_t *c, int reusable)
{
    if (c->state != UC_BUSY) return;
    up_pool_t *p = c->pool;
    int ok = reusable && c->phase == PH_DONE && c->resp.keep_alive && !c->writing && !c->early &&
             c->rpos == c->rlen && !p->released && !p->draining && c->addr_gen == p->addr_gen &&
             (p->addrs.n == 1 || !addr_ejected(p, c->ai, uv_now(p->loop)));
    c->user = NULL;
    if (!ok) {
        uc_close(c);
        return;
    }
    /* The response timer stays armed: on an idle connection it fires once
     * and does nothing, which is cheaper than a stop and a start per request. */
    c->rpos = c->rlen = 0;
    c->state = UC_IDLE;
    idle_push(p, c);
    start_reading(c); /* notice when the server closes it */
    pool_dispatch(p);
}

void up_pool_observe(up_pool_t *p, int status, uint64_t now_ms)
{
    if (p->cfg.eject_consecutive_5xx <= 0) return;
    if (status >= 500 || status == 0) {
        if (++p->consecutive_5xx >= p->cfg.eject_consecutive_5xx && p->ejected_until <= now_ms) {
            p->n_ejections++;
            p->stats.ejections++;
            uint64_t ms = (uint64_t)p->cfg.eject_base_ms * p->n_ejections;
            p->ejected_until = now_ms + ms;
            p->consecutive_5xx = 0;
            /* rare (the penalty grows with each), and what an operator looks for */
            mm_log("upstream %s ejected for %llu ms (%d 5xx answers or failures in a row); "
                   "where it is a challenger, its requests go to the champion (a champion is "
                   "always asked)",
                   p->cfg.name, (unsigned long long)ms, p->cfg.eject_consecutive_5xx);
        }
    } else {
        p->consecutive_5xx = 0;
    }
}

int up_pool_ejected(up_pool_t *p, uint64_t now_ms)
{
    return p->ejected_until > now_ms;
}
