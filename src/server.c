/* server.c — the server context's life: start, policy ticks, reload, drain.
 *
 * Reload builds a complete new router from the new config before touching
 * anything; only when that succeeded is it swapped in. Requests in flight
 * keep a reference to the router they started on, so nothing is dropped and
 * a bad config changes nothing (its error is logged and returned).
 *
 * Shutdown (SIGTERM/SIGINT) stops accepting, lets in-flight requests and
 * mirrors finish within drain_timeout_ms, then flushes the store and the
 * request log and lets the loop run dry. Mirrors still in flight when the
 * drain timeout passes are timed out then (logged as errors). The request
 * log gets drain_timeout_ms more to finish its last write; one that never
 * returns (a stalled pipe) ends the process without it (on_reqlog_stuck). The legs'
 * clock is closed only in server_free, which also frees the shadow groups
 * kept for reuse. */
#include <signal.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "feedback.h"
#include "keep.h"
#include "log.h"
#include "proxy_internal.h"
#include "reqlog.h"
#include "scrape.h"
#include "server_main.h"

#define TICK_MS 1000

void server_tick_experiment(mm_server_t *srv, exp_rt_t *e, uint64_t now_ms)
{
    const policy_ops_t *ops = e->cfg->ops;
    /* Not before the store has read the experiment's control: with Redis,
     * a canary starting at its first step would overwrite the step,
     * promotion or rollback every instance shares (docs/store.md). */
    if (ops->on_tick == NULL || !store_control_known(srv->store, e->state) ||
        e->state->control.state != EXP_RUNNING)
        return;
    policy_view_t v;
    router_view(e, &srv->rng, now_ms, &v);
    exp_control_t ctl = e->state->control;
    if (ops->on_tick(e->cfg->policy, &v, &ctl)) store_propose_control(srv->store, e->state, &ctl);
}

static void tick_experiments(mm_server_t *srv)
{
    router_t *r = srv->router;
    uint64_t now = mm_now_ms();
    router_sync_resets(r);
    for (size_t i = 0; i < r->n_exps; i++) server_tick_experiment(srv, &r->exps[i], now);
}

static void on_tick(uv_timer_t *t)
{
    mm_server_t *srv = t->data;
    tick_experiments(srv);
    scrape_keep_tick(srv);
}

/* ---- reload ----
 *
 * A reload parses and validates the file at once, then looks up the host
 * names it needs (upstreams', and the listen and admin addresses') in libuv's
 * thread pool, so a slow resolver never stalls the event loop; only when
 * every name has resolved are the new listeners bound and the new router
 * built, and then both are swapped in. A name the running config already
 * resolves (same host and port) is not looked up again: its pool's, or its
 * listener's, current address is taken. One reload runs at a time; one asked
 * for meanwhile runs when it ends, on the file as it is then. */

typedef struct reload_waiter_s {
    server_reload_cb cb; /* NULL: nobody waits for the answer (SIGHUP) */
    void *arg;
    struct reload_waiter_s *next;
} reload_waiter_t;

struct server_reload_s {
    mm_server_t *srv;
    config_t *cfg;
    char *text; /* cfg's file text, kept for the group once loaded (keep.h); may be NULL */
    size_t text_len;
    mm_addrs_t *addrs;     /* per reload_addr of cfg (a listener takes the first) */
    uv_getaddrinfo_t *gai; /* per reload_addr: the lookups */
    int pending;           /* lookups in flight */
    int failed;
    char err[4096];
    reload_waiter_t *waiters;
};

static void reload_begin(mm_server_t *srv, reload_waiter_t *waiters);

/* The addresses a reload resolves: each upstream's (0 .. n_upstreams-1), then
 * the listen address and the admin one (NULL without an admin listener). */
#define RELOAD_ADDRS(cfg) ((cfg)->n_upstreams + 2)
static const cfg_addr_t *reload_addr(const config_t *cfg, size_t i)
{
    if (i < cfg->n_upstreams) return &cfg->upstreams[i].addr;
    if (i == cfg->n_upstreams) return &cfg->listen;
    return cfg->has_admin ? &cfg->admin_listen : NULL;
}

static void reload_answer(reload_waiter_t *w, int ok, const char *err)
{
    while (w) {
        reload_waiter_t *next = w->next;
        if (w->cb) w->cb(w->arg, ok, err);
        free(w);
        w = next;
    }
}

/* Rotation: the request log (if on) reopens its path after the write in
 * flight; not while stopping, when it is closing. */
static void reopen_log(mm_server_t *srv)
{
    if (srv->reqlog && !srv->draining) reqlog_reopen(srv->reqlog);
}

static void reload_reject(mm_server_t *srv, reload_waiter_t *waiters, const char *err)
{
    srv->reload_failures++;
    mm_log("reload rejected, the previous config keeps serving: %s", err);
    /* A SIGHUP is also logrotate's "reopen": one that meets a config being
     * edited must still move the request log off the renamed file, or the
     * lines go on into a file about to be compressed or deleted. */
    reopen_log(srv);
    reload_answer(waiters, 0, err);
}

/* store_retain's test: the experiment is in the config (every one of
 * them keeps its state). */
int server_configured(void *cfg, const char *name)
{
    return config_experiment_index(cfg, name) >= 0;
}

static void pool_warm(mm_server_t *srv);

#define REQLOG_SEED(seed) ((seed) ^ 0x5bd1e995u) /* the request log's sampling stream */

/* The request log stops taking lines and closes once those in hand are
 * written; the shutdown waits for every log still closing (on_store_flushed). */
static void on_reqlog_closed(void *arg);
static void close_reqlog(mm_server_t *srv)
{
    srv->reqlogs_closing++;
    reqlog_close(srv->reqlog, on_reqlog_closed, srv);
    srv->reqlog = NULL;
}

/* A reload applies log.* as any other key: the log is turned on or off,
 * moved to a new path, and reopened (SIGHUP also rotates it). */
static void reload_log(mm_server_t *srv, const config_t *cfg)
{
    if (srv->reqlog && cfg->log_requests == NULL) {
        close_reqlog(srv);
        mm_log("request log: off (the lines in hand are written first)");
    } else if (srv->reqlog) {
        reqlog_configure(srv->reqlog, cfg->log_requests, cfg->log_sample, cfg->log_bodies);
        reqlog_reopen(srv->reqlog);
    } else if (cfg->log_requests) {
        pool_warm(srv); /* before its open: the pool starts with the signals blocked */
        srv->reqlog = reqlog_start(srv->loop, cfg->log_requests, cfg->log_sample, cfg->log_bodies,
                                   REQLOG_SEED(srv->seed), &srv->reqlog_counts);
        if (srv->reqlog)
            mm_log("request log: on, writing to %s", cfg->log_requests);
        else
            mm_log("request log: cannot turn it on: out of memory");
    }
}

/* Stage cfg's listeners on its listen and admin addresses, resolved in
 * data_ss and admin_ss. */
static int stage_listeners(mm_server_t *srv, const config_t *cfg,
                           const struct sockaddr_storage *data_ss,
                           const struct sockaddr_storage *admin_ss, mm_listen_stage_t *st,
                           char *err, size_t errlen)
{
    mm_listen_addr_t data = {.ss = *data_ss}, admin = {.ss = *admin_ss};
    cfg_addr_str(&cfg->listen, data.name, sizeof(data.name));
    if (cfg->has_admin) cfg_addr_str(&cfg->admin_listen, admin.name, sizeof(admin.name));
    return listeners_stage(&srv->listeners, &data, cfg->has_admin ? &admin : NULL, st, err, errlen);
}

/* The reload's listeners serve: a move is logged. */
static void commit_listeners(mm_server_t *srv, const config_t *cfg, mm_listen_stage_t *st)
{
    uv_tcp_t *data = srv->listeners.data_l, *admin = srv->listeners.admin_l;
    listeners_commit(&srv->listeners, st);
    char name[300];
    if (srv->listeners.data_l != data)
        mm_log("reload: listening on %s", cfg_addr_str(&cfg->listen, name, sizeof(name)));
    if (srv->listeners.admin_l != admin && cfg->has_admin)
        mm_log("reload: admin on %s%s", cfg_addr_str(&cfg->admin_listen, name, sizeof(name)),
               srv->group_parent && !scrape_group_active(srv)
                   ? " (this --workers group started without one: /metrics reports the worker a "
                     "scrape reaches until a restart)"
                   : "");
    else if (srv->listeners.admin_l != admin)
        mm_log("reload: the admin listener is closed (no admin in the config)");
}

static void reload_finish(server_reload_t *rl)
{
    mm_server_t *srv = rl->srv;
    config_t *cfg = rl->cfg;
    srv->reloading = NULL;
    router_t *nr = NULL;
    mm_listen_stage_t st;
    if (!rl->failed && srv->draining) {
        rl->failed = 1;
        snprintf(rl->err, sizeof(rl->err), "shutting down");
    }
    /* Bound before the router is built, so that a port another process
     * holds fails the reload with nothing changed. */
    if (!rl->failed &&
        stage_listeners(srv, cfg, &rl->addrs[cfg->n_upstreams].a[0],
                        &rl->addrs[cfg->n_upstreams + 1].a[0], &st, rl->err, sizeof(rl->err)) != 0)
        rl->failed = 1;
    if (!rl->failed) {
        /* The store first, so that the experiments the router redefines
         * write the config's control where the store now is (DESIGN.md §5).
         * Past the listeners, only running out of memory fails the reload:
         * the store then stays where it moved. */
        if (store_has_names(&cfg->store)) pool_warm(srv); /* before the store's lookups */
        store_reconfigure(srv->store, &cfg->store,
                          srv->has_store_override ? &srv->store_override : NULL);
        nr = router_create(srv->loop, cfg, srv->router, srv->store, &srv->metrics, rl->addrs,
                           rl->err, sizeof(rl->err));
        if (nr == NULL) {
            rl->failed = 1;
            listeners_abort(&st);
        }
    }
    if (rl->failed) {
        config_free(cfg);
        reload_reject(srv, rl->waiters, rl->err);
    } else {
        router_t *prev = srv->router;
        srv->router = nr;
        router_unref(prev);
        commit_listeners(srv, cfg, &st);
        store_retain(srv->store, server_configured, (void *)nr->cfg);
        reload_log(srv, cfg);
        config_log_warnings(cfg);
        /* What a worker started in place of a crashed one starts on. */
        if (rl->text) keep_put_config(srv->keep, rl->text, rl->text_len);
        srv->reloads++;
        tick_experiments(srv);
        mm_log("config reloaded from %s", srv->config_path);
        reload_answer(rl->waiters, 1, NULL);
    }
    free(rl->addrs);
    free(rl->gai);
    free(rl->text);
    free(rl);
    if (srv->reload_next) {
        reload_waiter_t *w = srv->reload_next;
        srv->reload_next = NULL;
        if (srv->draining)
            reload_reject(srv, w, "shutting down");
        else
            reload_begin(srv, w);
    }
}

/* The reload has failed (why: its reason, unless it failed already): the
 * lookups still queued in the thread pool are cancelled (their callbacks
 * come with UV_EAI_CANCELED), so the answer, or the exit of a stop, waits
 * only for those a resolver thread is running. A lookup in flight has
 * req.data set (on_reload_resolved clears it). */
static void reload_give_up(server_reload_t *rl, const char *why)
{
    if (rl->failed) return;
    rl->failed = 1;
    snprintf(rl->err, sizeof(rl->err), "%s", why);
    for (size_t i = 0; i < RELOAD_ADDRS(rl->cfg); i++)
        if (rl->gai[i].data) uv_cancel((uv_req_t *)&rl->gai[i]);
}

/* reload_addr i's name did not resolve (status: libuv's error, 0 for an
 * answer without an address): the reload fails with the first such name. */
static void lookup_failed(server_reload_t *rl, size_t i, int status)
{
    const config_t *cfg = rl->cfg;
    char what[MM_NAME_MAX + 16], why[sizeof(rl->err)];
    if (i < cfg->n_upstreams)
        snprintf(what, sizeof(what), "upstream %s", cfg->upstreams[i].name);
    else
        snprintf(what, sizeof(what), "%s", i == cfg->n_upstreams ? "listen" : "admin.listen");
    snprintf(why, sizeof(why), "%s: cannot resolve %s (%s)", what, reload_addr(cfg, i)->host,
             status ? uv_strerror(status) : "no address");
    reload_give_up(rl, why);
}

static void on_reload_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    server_reload_t *rl = req->data;
    size_t i = (size_t)(req - rl->gai);
    req->data = NULL;
    if (status != 0 || mm_addrs_from_ai(res, reload_addr(rl->cfg, i)->port, &rl->addrs[i]) != 0)
        lookup_failed(rl, i, status);
    if (res) uv_freeaddrinfo(res);
    if (--rl->pending == 0) reload_finish(rl);
}

/* The running pool for the same host and port, whose address can be taken. */
static const up_pool_t *resolved_pool(const router_t *r, const cfg_addr_t *a)
{
    for (size_t i = 0; i < r->cfg->n_upstreams; i++) {
        const cfg_addr_t *o = &r->cfg->upstreams[i].addr;
        if (o->port == a->port && strcasecmp(o->host, a->host) == 0) return r->pools[i];
    }
    return NULL;
}

static int same_cfg_addr(const cfg_addr_t *a, const cfg_addr_t *b)
{
    return a->port == b->port && strcasecmp(a->host, b->host) == 0;
}

/* The address of the running listener the running config names a for (its
 * listen or admin address, written the same): 0, or -1 for none. */
static int running_listener_addr(const mm_server_t *srv, const cfg_addr_t *a,
                                 struct sockaddr_storage *out)
{
    const config_t *old = server_config(srv);
    uv_tcp_t *t = same_cfg_addr(&old->listen, a)                           ? srv->listeners.data_l
                  : old->has_admin && same_cfg_addr(&old->admin_listen, a) ? srv->listeners.admin_l
                                                                           : NULL;
    int len = sizeof(*out);
    return t && uv_tcp_getsockname(t, (struct sockaddr *)out, &len) == 0 ? 0 : -1;
}

static void reload_with(mm_server_t *srv, config_t *cfg, char *text, size_t text_len,
                        reload_waiter_t *waiters);
static int config_has_names(const config_t *cfg);

static void reload_begin(mm_server_t *srv, reload_waiter_t *waiters)
{
    char err[4096];
    char *text = NULL;
    size_t len = 0;
    config_t *cfg =
        config_load_text(srv->config_path, srv->keep ? &text : NULL, &len, err, sizeof(err));
    if (cfg == NULL) {
        reload_reject(srv, waiters, err);
        return;
    }
    reload_with(srv, cfg, text, len, waiters);
}

/* The reload of a config already loaded (cfg and its file's text, taken):
 * its names looked up, then swapped in by reload_finish. */
static void reload_with(mm_server_t *srv, config_t *cfg, char *text, size_t text_len,
                        reload_waiter_t *waiters)
{
    size_t n = RELOAD_ADDRS(cfg);
    server_reload_t *rl = calloc(1, sizeof(*rl));
    if (rl) {
        rl->addrs = calloc(n, sizeof(*rl->addrs));
        rl->gai = calloc(n, sizeof(*rl->gai));
    }
    if (rl == NULL || rl->addrs == NULL || rl->gai == NULL) {
        if (rl) {
            free(rl->addrs);
            free(rl->gai);
        }
        free(rl);
        free(text);
        config_free(cfg);
        reload_reject(srv, waiters, "out of memory");
        return;
    }
    rl->srv = srv;
    rl->cfg = cfg;
    rl->text = text;
    rl->text_len = text_len;
    rl->waiters = waiters;
    srv->reloading = rl;
    rl->pending = 1; /* held until every lookup has started */
    for (size_t i = 0; i < n && !rl->failed; i++) {
        const cfg_addr_t *a = reload_addr(cfg, i);
        rl->addrs[i].n = 1; /* a literal, or a running listener's address */
        if (a == NULL || mm_addr_literal(a, &rl->addrs[i].a[0]) == 0)
            continue; /* numeric, localhost */
        if (i < cfg->n_upstreams) {
            /* A name the running config resolves is taken from it, unless
             * the upstream is not looked up again while running
             * (resolve_ms 0): then a reload is when it is, as in nginx. */
            const up_pool_t *same =
                cfg->upstreams[i].resolve_ms > 0 ? resolved_pool(srv->router, a) : NULL;
            if (same) {
                rl->addrs[i] = *up_pool_addrs(same);
                continue;
            }
        } else if (running_listener_addr(srv, a, &rl->addrs[i].a[0]) == 0) {
            continue;
        }
        pool_warm(srv); /* before the first lookup: it starts the pool unblocked */
        rl->gai[i].data = rl;
        int rc = mm_addr_lookup(srv->loop, &rl->gai[i], on_reload_resolved, a->host);
        if (rc != 0) {
            rl->gai[i].data = NULL; /* never queued: nothing to cancel */
            lookup_failed(rl, i, rc);
        } else {
            rl->pending++;
        }
    }
    if (--rl->pending == 0) reload_finish(rl);
}

void server_reload(mm_server_t *srv, server_reload_cb cb, void *arg)
{
    reload_waiter_t *w = calloc(1, sizeof(*w));
    if (w == NULL) {
        if (cb) cb(arg, 0, "out of memory");
        return;
    }
    w->cb = cb;
    w->arg = arg;
    if (srv->draining) { /* stopping: the drain goes on with the config it has (README) */
        reload_reject(srv, w, "shutting down");
        return;
    }
    if (srv->reloading) { /* after the one in flight, on the file as it is then */
        w->next = srv->reload_next;
        srv->reload_next = w;
        return;
    }
    reload_begin(srv, w);
}

static void on_sighup(uv_signal_t *s, int signum)
{
    (void)signum;
    server_reload((mm_server_t *)s->data, NULL, NULL);
}

/* SIGUSR1: reopen the request log at its path and nothing else (nginx's
 * "reopen"), for a rotation that should not also re-read the config. */
static void on_sigusr1(uv_signal_t *s, int signum)
{
    (void)signum;
    reopen_log((mm_server_t *)s->data);
}

void server_lifecycle_signals(int how, int chld, sigset_t *old)
{
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGHUP);
    sigaddset(&s, SIGUSR1);
    sigaddset(&s, SIGTERM);
    sigaddset(&s, SIGINT);
    if (chld) sigaddset(&s, SIGCHLD);
    pthread_sigmask(how, &s, old);
}

/* ---- shutdown ---- */

static void close_handle(uv_handle_t *h)
{
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

static void on_reqlog_closed(void *arg)
{
    mm_server_t *srv = arg;
    /* Once the store is flushed, the drain timer is the last handle: the
     * loop ends when it has closed. */
    if (--srv->reqlogs_closing == 0 && srv->store_flushed)
        close_handle((uv_handle_t *)&srv->drain_timer);
}

/* The request log's last write has not returned within drain_timeout_ms:
 * the file is a pipe whose reader stopped reading, or a hung network disk.
 * The write sits in libuv's thread pool and cannot be cancelled, and libuv
 * joins its pool's threads at exit, so neither the loop nor exit() would
 * ever return. The store is flushed; only these log lines are lost. */
static void on_reqlog_stuck(uv_timer_t *t)
{
    mm_server_t *srv = t->data;
    mm_log("request log: a write has not returned for %d ms (a stalled pipe or disk); exiting "
           "without it, its lines are lost",
           server_config(srv)->limits.drain_timeout_ms);
    _exit(srv->exit_code);
}

static void on_store_flushed(void *arg)
{
    mm_server_t *srv = arg;
    srv->store_flushed = 1;
    if (srv->reqlog) close_reqlog(srv);
    if (srv->reqlogs_closing) /* also one a reload turned off, still writing */
        uv_timer_start(&srv->drain_timer, on_reqlog_stuck,
                       (uint64_t)server_config(srv)->limits.drain_timeout_ms, 0);
    else
        close_handle((uv_handle_t *)&srv->drain_timer);
    close_handle((uv_handle_t *)&srv->tick_timer);
    /* Closing the last signal handle gives the signal its default action back, so a
     * second stop signal now (a supervisor repeating itself) would kill us while the
     * request log closes: exit by signal, not the 0 §2 promises (a late SIGHUP too). We
     * are stopping already, as a second signal while draining says: ignore them. They
     * are blocked from before the handles close until they are ignored: one that came
     * in between (after uv_close restored SIG_DFL) killed us; held pending, it is
     * discarded by SIG_IGN instead. The thread pool's threads block them always
     * (on_pool_start), so none can take one meanwhile. */
    sigset_t old_mask;
    server_lifecycle_signals(SIG_BLOCK, 0, &old_mask);
    close_handle((uv_handle_t *)&srv->sig_hup);
    close_handle((uv_handle_t *)&srv->sig_usr1);
    close_handle((uv_handle_t *)&srv->sig_term);
    close_handle((uv_handle_t *)&srv->sig_int);
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    signal(SIGUSR1, SIG_IGN);
    pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
}

void server_drained(mm_server_t *srv)
{
    if (srv->stopping) return;
    srv->stopping = 1;
    for (size_t i = 0; i < srv->router->cfg->n_upstreams; i++) up_pool_drain(srv->router->pools[i]);
    scrape_group_drain(srv);
    uv_timer_stop(&srv->drain_timer);
    uv_timer_stop(&srv->tick_timer);
    store_shutdown(srv->store, server_config(srv)->limits.drain_timeout_ms, on_store_flushed, srv);
}

void server_maybe_drained(mm_server_t *srv)
{
    if (srv->draining && srv->conns == NULL && srv->shadows.active == 0) server_drained(srv);
}

static void on_drain_timeout(uv_timer_t *t)
{
    mm_server_t *srv = t->data;
    mm_log("drain timeout: closing %s remaining connections%s", srv->conns ? "the" : "no",
           srv->shadows.active ? ", mirrors still in flight end as errors" : "");
    proxy_close_all(srv);
    /* Mirrors still waiting for an answer end now, as at their own deadline
     * (outcome error), so their requests are counted and logged while the
     * request log is still open; it closes once the store has flushed. */
    leg_clock_expire(&srv->legs);
    server_drained(srv);
}

void server_stop(mm_server_t *srv)
{
    if (srv->draining) return;
    srv->draining = 1;
    mm_log("stopping: draining in-flight requests (at most %d ms)",
           server_config(srv)->limits.drain_timeout_ms);
    listeners_close(&srv->listeners);
    if (srv->group.has_listener) {
        /* The parent holds this socket too (it binds it before forking), so
         * closing our descriptor would leave it listening: a sibling's
         * scrape would connect and wait its whole timeout for an answer
         * while we drain. shutdown() stops the socket itself listening, so
         * the scrape is refused at once and leaves this worker out. */
        uv_os_fd_t fd;
        if (uv_fileno((uv_handle_t *)&srv->group.listener, &fd) == 0) shutdown(fd, SHUT_RD);
        close_handle((uv_handle_t *)&srv->group.listener);
    }
    if (srv->reloading) reload_give_up(srv->reloading, "shutting down");
    proxy_drain(srv);
    if (srv->conns == NULL && srv->shadows.active == 0) {
        server_drained(srv);
        return;
    }
    uv_timer_start(&srv->drain_timer, on_drain_timeout,
                   (uint64_t)server_config(srv)->limits.drain_timeout_ms, 0);
}

static void on_sigterm(uv_signal_t *s, int signum)
{
    (void)signum;
    server_stop((mm_server_t *)s->data);
}

/* libuv's thread pool starts with its first work item, and its threads
 * keep the signal mask of the thread that started them. Started with the
 * lifecycle signals blocked, they block them for good, so those signals
 * only ever reach the loop thread; and then on_store_flushed, blocking them
 * there, holds them off entirely around the moment their handles close
 * (else a pool thread — the request log's writes — took one then, with
 * SIG_DFL back, and the process died of it). The pool is started so only
 * when it will be used (a request log, upstream host names to look up): a
 * process with a second thread pays for it in every system call (glibc's
 * cancellation points take their slow path, some 100 instructions each),
 * which a config with neither need not. */
static void on_pool_start(uv_work_t *w)
{
    (void)w;
}

static void on_pool_started(uv_work_t *w, int status)
{
    (void)w;
    (void)status;
}

static void pool_warm(mm_server_t *srv)
{
    if (srv->pool_warm) return;
    sigset_t old_mask;
    server_lifecycle_signals(SIG_BLOCK, 0, &old_mask);
    if (uv_queue_work(srv->loop, &srv->pool_start, on_pool_start, on_pool_started) == 0)
        srv->pool_warm = 1;
    pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
}

/* Some upstream of cfg is a host name (looked up in the thread pool), or
 * the store looks one up (store_has_names): a Redis host name, or
 * Sentinels, whose first question comes once the signals are unblocked. */
static int config_has_names(const config_t *cfg)
{
    for (size_t i = 0; i < cfg->n_upstreams; i++)
        if (mm_addr_is_name(&cfg->upstreams[i].addr)) return 1;
    return store_has_names(&cfg->store);
}

/* ---- start ---- */

int server_start(mm_server_t *srv, uv_loop_t *loop, const char *config_path, config_t *cfg,
                 uint64_t seed, int reuseport, const cfg_store_t *store_override, char *err,
                 size_t errlen)
{
    memset(srv, 0, sizeof(*srv));
    if (store_override) {
        /* The group's private redis-server stands in for the memory store;
         * a worker replaced after the group moved to a configured Redis
         * (a reload) starts there, and keeps the override for its reloads
         * (store_reconfigure: back to memory means back to the group's). */
        srv->has_store_override = 1;
        srv->store_override = *store_override;
        if (cfg->store.type == STORE_MEMORY) cfg->store = *store_override;
    }
    srv->loop = loop;
    srv->seed = seed;
    if (reuseport) srv->group_parent = (int)getppid();
    srv->config_path = strdup(config_path);
    mm_rng_seed(&srv->rng, seed);
    mm_rng_seed(&srv->admin_rng, ~seed);
    metrics_init(&srv->metrics);
    proxy_init_parser_settings();
    signal(SIGPIPE, SIG_IGN); /* a peer that went away is an error value, not a signal */

    srv->store = store_create(loop, &cfg->store, err, errlen);
    if (srv->store == NULL) goto err;
    srv->router = router_create(loop, cfg, NULL, srv->store, &srv->metrics, NULL, err, errlen);
    if (srv->router == NULL) goto err;
    if (cfg->log_requests) {
        srv->reqlog = reqlog_open(loop, cfg->log_requests, cfg->log_sample, cfg->log_bodies,
                                  REQLOG_SEED(seed), &srv->reqlog_counts, err, errlen);
        if (srv->reqlog == NULL) goto err;
    }
    srv->listeners = (mm_listeners_t){loop, proxy_on_connection, srv, reuseport, NULL, NULL};
    struct sockaddr_storage ss[2] = {0};
    const cfg_addr_t *unresolved =
        mm_addr_resolve(&cfg->listen, &ss[0]) != 0                           ? &cfg->listen
        : cfg->has_admin && mm_addr_resolve(&cfg->admin_listen, &ss[1]) != 0 ? &cfg->admin_listen
                                                                             : NULL;
    if (unresolved) {
        char name[300];
        snprintf(err, errlen, "cannot listen on %s: the name does not resolve",
                 cfg_addr_str(unresolved, name, sizeof(name)));
        goto err;
    }
    mm_listen_stage_t st;
    if (stage_listeners(srv, cfg, &ss[0], &ss[1], &st, err, errlen) != 0) goto err;
    listeners_commit(&srv->listeners, &st);
    uv_signal_init(loop, &srv->sig_hup);
    uv_signal_init(loop, &srv->sig_usr1);
    uv_signal_init(loop, &srv->sig_term);
    uv_signal_init(loop, &srv->sig_int);
    srv->sig_hup.data = srv->sig_usr1.data = srv->sig_term.data = srv->sig_int.data = srv;
    uv_signal_start(&srv->sig_hup, on_sighup, SIGHUP);
    uv_signal_start(&srv->sig_usr1, on_sigusr1, SIGUSR1);
    uv_signal_start(&srv->sig_term, on_sigterm, SIGTERM);
    uv_signal_start(&srv->sig_int, on_sigterm, SIGINT);
    uv_timer_init(loop, &srv->tick_timer);
    uv_timer_init(loop, &srv->drain_timer);
    srv->tick_timer.data = srv->drain_timer.data = srv;
    uv_timer_start(&srv->tick_timer, on_tick, TICK_MS, TICK_MS);
    if (srv->reqlog || config_has_names(cfg)) pool_warm(srv);
    leg_clock_init(&srv->legs, loop);
    if (feedback_start(srv) != 0) mm_log("cannot consume the Redis feedback stream");
    tick_experiments(srv); /* memory store: a canary starts at its first step at once */
    return 0;
err:
    return -1;
}

void server_free(mm_server_t *srv)
{
    leg_clock_close(&srv->legs); /* its close callback comes with the loop's last run */
    shadow_cache_free(&srv->shadows);
    scrape_group_free(srv);
    if (srv->router) router_unref(srv->router);
    srv->router = NULL;
    if (srv->store) store_destroy(srv->store);
    srv->store = NULL;
    /* Still open only after a start that failed past opening it (a stop
     * closes it while draining): it closes as the loop runs on. */
    if (srv->reqlog) reqlog_close(srv->reqlog, NULL, NULL);
    srv->reqlog = NULL;
    metrics_free(&srv->metrics);
    free(srv->config_path);
    srv->config_path = NULL;
}
