/* server.c — the server context's life: start, policy ticks, reload, drain.
 *
 * Reload builds a complete new router from the new config before touching
 * anything; only when that succeeded is it swapped in. Requests in flight
 * keep a reference to the router they started on, so nothing is dropped and
 * a bad config changes nothing (its error is logged and returned).
 *
 * Shutdown (SIGTERM/SIGINT) stops accepting, lets in-flight requests finish
 * within drain_timeout_ms, then flushes the store and the request log and
 * lets the loop run dry. Mirrors still in flight then go on to their answer
 * or deadline: the legs' clock does not keep the loop alive but their
 * upstream connections do, so it is closed only in server_free, which also
 * frees the shadow groups kept for reuse. */
#include <signal.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "feedback.h"
#include "log.h"
#include "proxy_internal.h"
#include "reqlog.h"
#include "scrape.h"
#include "server_main.h"

#define TICK_MS 1000

static void tick_experiments(mm_server_t *srv)
{
    router_t *r = srv->router;
    uint64_t now = mm_now_ms();
    for (size_t i = 0; i < r->n_exps; i++) {
        exp_rt_t *e = &r->exps[i];
        const policy_ops_t *ops = e->cfg->ops;
        uint64_t resets = store_resets(e->state);
        /* A reset made on another instance (the store already dropped the
         * statistics; a reset made here was handled by the admin call). */
        if (resets != e->resets_seen) router_on_reset(e);
        /* Not before the store has read the experiment's control: with Redis,
         * a canary starting at its first step would overwrite the step,
         * promotion or rollback every instance shares (docs/store.md). */
        if (ops->on_tick == NULL || !store_control_known(srv->store, e->state) ||
            e->state->control.state != EXP_RUNNING)
            continue;
        policy_view_t v;
        router_view(e, &srv->rng, now, &v);
        exp_control_t ctl = e->state->control;
        if (ops->on_tick(e->cfg->policy, &v, &ctl))
            store_propose_control(srv->store, e->state, &ctl);
    }
}

static void on_tick(uv_timer_t *t)
{
    tick_experiments((mm_server_t *)t->data);
}

int server_reload(mm_server_t *srv, char *err, size_t errlen)
{
    config_t *cfg = config_load(srv->config_path, err, errlen);
    if (cfg == NULL) {
        srv->reload_failures++;
        mm_log("reload rejected, the previous config keeps serving: %s", err);
        return -1;
    }
    if (srv->has_store_override) cfg->store = srv->store_override;
    const config_t *old = srv->router->cfg;
    if (strcmp(old->listen.host, cfg->listen.host) != 0 || old->listen.port != cfg->listen.port)
        mm_log("reload: a new listen address takes effect at the next restart");
    if (old->store.type != cfg->store.type)
        mm_log("reload: a new store type takes effect at the next restart");
    router_t *nr =
        router_create(srv->loop, cfg, srv->router, srv->store, &srv->metrics, err, errlen);
    if (nr == NULL) {
        config_free(cfg);
        srv->reload_failures++;
        mm_log("reload rejected, the previous config keeps serving: %s", err);
        return -1;
    }
    router_t *prev = srv->router;
    srv->router = nr;
    router_unref(prev);
    const char *names[1024];
    size_t n = 0;
    for (size_t i = 0; i < nr->n_exps && n < 1024; i++) names[n++] = nr->exps[i].cfg->name;
    store_retain(srv->store, names, n);
    if (srv->reqlog) reqlog_reopen(srv->reqlog); /* SIGHUP also rotates the request log */
    srv->reloads++;
    tick_experiments(srv);
    mm_log("config reloaded from %s", srv->config_path);
    return 0;
}

static void on_sighup(uv_signal_t *s, int signum)
{
    mm_server_t *srv = s->data;
    char err[1024];
    (void)signum;
    server_reload(srv, err, sizeof(err));
}

/* ---- shutdown ---- */

static void close_handle(uv_handle_t *h)
{
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

static void on_reqlog_closed(void *arg)
{
    (void)arg; /* nothing left: the loop ends when the last handle closes */
}

static void on_store_flushed(void *arg)
{
    mm_server_t *srv = arg;
    if (srv->reqlog) {
        reqlog_close(srv->reqlog, on_reqlog_closed, srv);
        srv->reqlog = NULL;
    }
    close_handle((uv_handle_t *)&srv->tick_timer);
    close_handle((uv_handle_t *)&srv->drain_timer);
    close_handle((uv_handle_t *)&srv->sig_hup);
    close_handle((uv_handle_t *)&srv->sig_term);
    close_handle((uv_handle_t *)&srv->sig_int);
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
    mm_log("drain timeout: closing %s remaining connections", srv->conns ? "the" : "no");
    proxy_close_all(srv);
    server_drained(srv);
}

void server_stop(mm_server_t *srv)
{
    if (srv->draining) return;
    srv->draining = 1;
    mm_log("stopping: draining in-flight requests (at most %d ms)",
           server_config(srv)->limits.drain_timeout_ms);
    if (srv->has_listener) close_handle((uv_handle_t *)&srv->listener);
    if (srv->has_admin) close_handle((uv_handle_t *)&srv->admin_listener);
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

/* ---- start ---- */

int server_start(mm_server_t *srv, uv_loop_t *loop, const char *config_path, config_t *cfg,
                 uint64_t seed, int reuseport, const cfg_store_t *store_override, char *err,
                 size_t errlen)
{
    memset(srv, 0, sizeof(*srv));
    if (store_override) {
        srv->has_store_override = 1;
        srv->store_override = *store_override;
        cfg->store = *store_override;
    }
    srv->loop = loop;
    srv->seed = seed;
    if (reuseport) srv->group_parent = (int)getppid();
    srv->config_path = strdup(config_path);
    mm_rng_seed(&srv->rng, seed);
    metrics_init(&srv->metrics);
    proxy_init_parser_settings();
    signal(SIGPIPE, SIG_IGN); /* a peer that went away is an error value, not a signal */

    srv->store = store_create(loop, &cfg->store, err, errlen);
    if (srv->store == NULL) goto err;
    srv->router = router_create(loop, cfg, NULL, srv->store, &srv->metrics, err, errlen);
    if (srv->router == NULL) goto err;
    if (cfg->log_requests) {
        srv->reqlog = reqlog_open(loop, cfg->log_requests, cfg->log_sample, cfg->log_bodies,
                                  seed ^ 0x5bd1e995u, err, errlen);
        if (srv->reqlog == NULL) goto err;
    }
    if (proxy_listen(srv, &srv->listener, &cfg->listen, CONN_DATA, reuseport, err, errlen) != 0)
        goto err;
    srv->has_listener = 1;
    if (cfg->has_admin) {
        if (proxy_listen(srv, &srv->admin_listener, &cfg->admin_listen, CONN_ADMIN, reuseport, err,
                         errlen) != 0)
            goto err;
        srv->has_admin = 1;
    }
    uv_signal_init(loop, &srv->sig_hup);
    uv_signal_init(loop, &srv->sig_term);
    uv_signal_init(loop, &srv->sig_int);
    srv->sig_hup.data = srv->sig_term.data = srv->sig_int.data = srv;
    uv_signal_start(&srv->sig_hup, on_sighup, SIGHUP);
    uv_signal_start(&srv->sig_term, on_sigterm, SIGTERM);
    uv_signal_start(&srv->sig_int, on_sigterm, SIGINT);
    uv_timer_init(loop, &srv->tick_timer);
    uv_timer_init(loop, &srv->drain_timer);
    srv->tick_timer.data = srv->drain_timer.data = srv;
    uv_timer_start(&srv->tick_timer, on_tick, TICK_MS, TICK_MS);
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
    metrics_free(&srv->metrics);
    free(srv->config_path);
    srv->config_path = NULL;
}
