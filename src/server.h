/* server.h — the one server context (the only global mutable state), the
 * client connection, and the hooks local handlers (admin API, feedback) use
 * to answer a request that is not proxied. */
#ifndef MM_SERVER_H
#define MM_SERVER_H

#include <llhttp.h>
#include <uv.h>

#include "buf.h"
#include "config.h"
#include "http.h"
#include "leg.h"
#include "listeners.h"
#include "metrics.h"
#include "router.h"
#include "shadow_rt.h"
#include "store.h"
#include "upstream.h"

typedef struct conn_s conn_t;
typedef struct reqlog_s reqlog_t;

/* Request log lines written and dropped, and write and open failures: the
 * server's, so that they go on across the logs a reload turns off and on
 * (reqlog.h). */
typedef struct {
    uint64_t written, dropped, errors;
} reqlog_counts_t;
typedef struct mm_keep mm_keep_t;

#define MM_MAX_WORKERS 256

/* This worker's place in a --workers group (src/scrape.c). Each worker has
 * a private listener on 127.0.0.1 that the parent bound before forking, so
 * every worker knows every sibling's port; n is 0 for a lone process. */
typedef struct {
    int n, self;
    int ports[MM_MAX_WORKERS];
    up_pool_t *pools[MM_MAX_WORKERS]; /* to each sibling; NULL for self */
    uv_tcp_t listener;
    int has_listener;
    uint64_t keep_next_us; /* the next tick's refresh of the keep, not before (scrape.c) */
} mm_group_t;

typedef struct mm_server_s {
    uv_loop_t *loop;
    char *config_path;
    router_t *router; /* current routing table; requests hold references */
    store_t *store;
    reqlog_t *reqlog;              /* NULL: no request log */
    int reqlogs_closing;           /* logs closing (turned off by a reload, or at the shutdown) */
    reqlog_counts_t reqlog_counts; /* every log's since the start */
    int store_flushed; /* the shutdown has flushed the store: logs close, then the loop ends */
    metrics_t metrics;
    mm_rng_t rng;       /* the data plane's: routing choices and request ids, in order */
    mm_rng_t admin_rng; /* admin and worker connections' request ids: polling must not move rng */
    uint64_t seed;
    mm_listeners_t listeners; /* data plane and admin API (listeners.h) */
    uv_signal_t sig_hup, sig_term, sig_int, sig_usr1;
    uv_work_t pool_start; /* starts libuv's thread pool with the signals blocked */
    int pool_warm;        /* pool_start queued (server.c, pool_warm) */
    uv_timer_t tick_timer;
    uv_timer_t drain_timer;
    leg_clock_t legs;       /* the deadlines of every mirror and fan-out leg in flight */
    shadow_cache_t shadows; /* finished shadow groups kept for reuse */
    conn_t *conns;          /* every open client connection (data and admin) */
    size_t n_conns;         /* data-plane connections, for max_connections */
    uint64_t connections_total;
    uint64_t overload_rejects;
    int draining;
    int stopping;
    int exit_code;
    /* --workers: the parent, which forwards a SIGHUP to every other worker
     * (POST /reload reloads the whole group, as SIGHUP does); 0 alone. */
    int group_parent;
    uint64_t reloads, reload_failures;
    struct server_reload_s *reloading;   /* a reload waiting for name lookups */
    struct reload_waiter_s *reload_next; /* asked for meanwhile: the reload after it */
    uint64_t stream_invalid; /* feedback stream entries acknowledged unapplied: invalid */
    uint64_t elsewhere_log_ms, elsewhere_quiet; /* feedback.c, log_elsewhere */
    uint64_t stream_unknown; /* ... and: request id never found (after 3 deliveries) */
    int has_store_override;  /* --workers with the memory store: the shared private Redis */
    cfg_store_t store_override;
    mm_group_t group; /* --workers: the siblings whose metrics a scrape gathers */
    mm_keep_t *keep;  /* --workers: the parent's, shared (keep.h); NULL when alone */
} mm_server_t;

typedef struct server_reload_s server_reload_t;

/* CONN_WORKER: a sibling worker's scrape on this worker's private listener
 * (src/scrape.c); it is an admin connection whose /metrics is this worker's
 * alone. */
enum { CONN_DATA = 0, CONN_ADMIN = 1, CONN_WORKER = 2 };

/* A request handled by modelmux itself (admin API, feedback). Valid during
 * the handler call; the body is complete and de-chunked. */
typedef struct {
    conn_t *conn;
    mm_str_t method;
    mm_str_t url;
    mm_str_t path; /* url without query */
    mm_str_t body;
    const http_head_t *head;
    const char *base;
    mm_str_t request_id;
    int worker_only; /* on the worker's private listener: answer for this worker alone */
} mm_local_req_t;

/* Handlers: return after calling conn_respond (now or later: call conn_hold
 * first to keep the connection alive, conn_release after responding). */
void admin_handle(mm_server_t *srv, const mm_local_req_t *r);
/* What the admin API refuses from a request's head alone (r->body empty):
 * 401 without the token, 403 for a change from a web page; 0 otherwise.
 * The proxy asks before reading a body, so a client without the token
 * cannot make modelmux read and hold one (up to 4 MiB per connection);
 * admin_handle asks again for bodiless requests. */
int admin_refusal(mm_server_t *srv, const mm_local_req_t *r, const char **code, const char **msg,
                  const char **extra_headers);
void feedback_handle(mm_server_t *srv, const mm_local_req_t *r);

/* Answer the local request on conn. Ignored if the client has gone away. */
void conn_respond(conn_t *c, int status, const char *content_type, const char *body, size_t len,
                  const char *extra_headers);
void conn_respond_error(conn_t *c, int status, const char *code, const char *message);
/* The same with extra header lines ("Allow: POST\r\n"). */
void conn_respond_error_hdr(conn_t *c, int status, const char *code, const char *message,
                            const char *extra_headers);
conn_t *conn_hold(conn_t *c);
void conn_release(conn_t *c);

/* Listener plumbing (proxy.c): a connection on a listener whose data is
 * the server context (listeners.h, or a --workers scrape socket). */
void proxy_on_connection(uv_stream_t *server, int status);
/* Listen on a socket bound and listening already (inherited from the
 * --workers parent) for sibling workers' scrapes (CONN_WORKER). */
int proxy_listen_fd(mm_server_t *srv, uv_tcp_t *tcp, int fd, char *err, size_t errlen);
/* Close idle keep-alive connections, stop accepting; in-flight requests go on. */
void proxy_drain(mm_server_t *srv);
/* Close every connection now (end of drain timeout). */
void proxy_close_all(mm_server_t *srv);

/* Reload the config file (SIGHUP, POST /reload): validated at once, new
 * upstream host names looked up off the loop, then swapped in. cb (may be
 * NULL) runs once with the outcome, maybe before this returns; on failure
 * the old config keeps serving and err says why (FILE:LINE:COL: message, or
 * the name that did not resolve). */
typedef void (*server_reload_cb)(void *arg, int ok, const char *err);
void server_reload(mm_server_t *srv, server_reload_cb cb, void *arg);

/* One tick of e's policy (what the server does every second): a change it
 * makes is proposed to the store. For an admin change that should act now,
 * not at the next tick (a canary resumed after a rollback starts). */
void server_tick_experiment(mm_server_t *srv, exp_rt_t *e, uint64_t now_ms);
/* 1 if cfg (a config_t) has an experiment of that name: store_retain's
 * keep after a reload. */
int server_configured(void *cfg, const char *name);

/* The server context's current limits (from the current config). */
const config_t *server_config(const mm_server_t *srv);

#endif
