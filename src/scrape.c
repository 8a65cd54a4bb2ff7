/* scrape.c — see scrape.h.
 *
 * A scrape is a small fan-out, as interleave's (fanout.c): a leg per
 * sibling on the server's leg clock, the client connection held until the
 * last leg is done, and the answer dropped if the client went away
 * meanwhile. This worker's own exposition is rendered when the siblings
 * have answered, so the counters of all of them are of about the same
 * moment. Nothing here is on the data path: it runs once per scrape. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "leg.h"
#include "log.h"
#include "keep.h"
#include "metrics_merge.h"
#include "metrics_render.h"
#include "proxy_internal.h"
#include "scrape.h"

#define SCRAPE_KEEP (64u * 1024 * 1024) /* one sibling's exposition, at most */
_Static_assert(KEEP_MAX_WORKERS == MM_MAX_WORKERS, "a keep slot per worker");

typedef struct {
    mm_server_t *srv;
    conn_t *conn; /* a scrape's client; NULL for a sync (scrape_group_sync) */
    void (*synced)(void *);
    void *synced_arg;
    uint64_t req_serial;
    int pending; /* legs not done, plus one while the legs are started */
    int n;       /* legs */
    struct {
        leg_t leg;
        int worker;
    } legs[];
} gather_t;

int scrape_group_start(mm_server_t *srv, int n, int self, int fd, const int *ports, char *err,
                       size_t errlen)
{
    mm_group_t *g = &srv->group;
    if (n < 2 || n > MM_MAX_WORKERS) return 0;
    g->n = n;
    g->self = self;
    for (int i = 0; i < n; i++) {
        g->ports[i] = ports[i];
        if (i == self) continue;
        cfg_upstream_t u;
        memset(&u, 0, sizeof(u));
        snprintf(u.name, sizeof(u.name), "worker-%d", i);
        snprintf(u.addr.host, sizeof(u.addr.host), "127.0.0.1");
        u.addr.port = ports[i];
        snprintf(u.host_header, sizeof(u.host_header), "127.0.0.1:%d", ports[i]);
        u.pool = 2;
        u.connect_timeout_ms = 500;
        u.timeout_ms = SCRAPE_TIMEOUT_MS;
        g->pools[i] = up_pool_create(srv->loop, &u, NULL, err, errlen);
        if (g->pools[i] == NULL) goto fail;
    }
    if (proxy_listen_fd(srv, &g->listener, fd, err, errlen) != 0) goto fail;
    g->has_listener = 1;
    return 0;
fail: /* alone again: scrapes report this worker only */
    scrape_group_free(srv);
    g->n = 0;
    return -1;
}

int scrape_group_active(const mm_server_t *srv)
{
    return srv->group.n > 1;
}

void scrape_group_drain(mm_server_t *srv)
{
    mm_group_t *g = &srv->group;
    for (int i = 0; i < g->n; i++)
        if (g->pools[i]) up_pool_drain(g->pools[i]);
}

void scrape_group_free(mm_server_t *srv)
{
    mm_group_t *g = &srv->group;
    for (int i = 0; i < g->n; i++) {
        up_pool_release(g->pools[i]);
        g->pools[i] = NULL;
    }
}

void scrape_render_own(mm_server_t *srv, mm_buf_t *out)
{
    metrics_render(srv, out);
    /* Only in a group that gathers: a worker alone (its scrape sockets
     * failed) has no slot of its own to keep. */
    mm_str_t text = mm_buf_view(out);
    if (srv->keep && scrape_group_active(srv) && !out->oom)
        keep_put(srv->keep, srv->group.self, text.p, text.n);
}

static void keep_own(mm_server_t *srv)
{
    mm_buf_t b;
    mm_buf_init(&b);
    scrape_render_own(srv, &b);
    mm_buf_free(&b);
}

void scrape_keep_tick(mm_server_t *srv)
{
    mm_group_t *g = &srv->group;
    if (srv->keep == NULL || !scrape_group_active(srv)) return;
    uint64_t t0 = mm_now_us();
    if (t0 < g->keep_next_us) return;
    keep_own(srv);
    g->keep_next_us = t0 + 100 * (mm_now_us() - t0);
}

void scrape_keep_final(mm_server_t *srv)
{
    if (srv->keep != NULL && scrape_group_active(srv)) keep_own(srv);
}

/* The texts to merge, into texts: this worker's own first, then those of
 * the siblings that answered (n_full in all); then, counters only, what is
 * kept for siblings that did not answer and for dead workers. With a keep,
 * a sibling's kept text stands for its answer: it was kept before it was
 * sent, so it is that answer or newer, and a sibling that answered and
 * died since is in the retired text instead (its slot is empty), not in
 * both. Returns the number of texts; *reporting counts who answered. */
static size_t gather_texts(gather_t *g, const mm_buf_t *local, const keep_snap_t *snap,
                           mm_str_t *texts, size_t *n_full, int *reporting)
{
    size_t k = 0;
    texts[k++] = mm_buf_view(local);
    *reporting = 1;
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < g->n; i++) {
            const leg_t *l = &g->legs[i].leg;
            int w = g->legs[i].worker;
            int answered = l->status == 200 && !l->truncated;
            if (answered != (pass == 0)) continue;
            int state = snap ? snap->state[w] : KEEP_TOO_LARGE; /* no keep: as too large */
            if (state == KEEP_KEPT)
                texts[k++] = mm_buf_view(&snap->text[w]);
            else if (state == KEEP_TOO_LARGE && answered)
                texts[k++] = mm_buf_view(&l->resp);
            if (answered) {
                (*reporting)++;
                continue;
            }
            mm_log("metrics: worker %d did not answer the scrape (%s): %s", w,
                   l->status      ? "answered an error status"
                   : l->timed_out ? "no answer in time"
                                  : up_err_name(l->err),
                   state == KEEP_KEPT    ? "counted as of its last scrape"
                   : state == KEEP_EMPTY ? "nothing kept for it (a dead worker's counters are "
                                           "in the retired ones)"
                                         : "left out");
        }
        if (pass == 0) *n_full = k;
    }
    if (snap && snap->text[snap->n].len) texts[k++] = mm_buf_view(&snap->text[snap->n]);
    return k;
}

static void answer(gather_t *g)
{
    conn_t *c = g->conn;
    if (!conn_awaits(c, g->req_serial)) return; /* client gone */
    mm_server_t *srv = g->srv;
    mm_buf_t local, out;
    mm_buf_init(&local);
    mm_buf_init(&out);
    scrape_render_own(srv, &local);
    keep_snap_t *snap = NULL;
    int oom = local.oom;
    if (srv->keep) {
        snap = malloc(sizeof(*snap));
        if (snap == NULL || keep_snapshot(srv->keep, srv->group.self, snap) != 0) {
            free(snap);
            snap = NULL;
            oom = 1; /* without the kept texts the sum could go down: no answer */
        }
    }
    if (!oom) {
        mm_str_t texts[MM_MAX_WORKERS + 1];
        size_t n_full = 0;
        int reporting = 0;
        size_t k = gather_texts(g, &local, snap, texts, &n_full, &reporting);
        metrics_merge(texts, k, n_full, &out);
        metrics_render_group(&out, g->n + 1, reporting);
        oom = out.oom;
    }
    if (oom)
        conn_respond_error(c, 500, "internal", "out of memory");
    else
        conn_respond(c, 200, MM_METRICS_CONTENT_TYPE, out.p ? out.p : "", out.len, NULL);
    if (snap) {
        keep_snap_free(snap);
        free(snap);
    }
    mm_buf_free(&local);
    mm_buf_free(&out);
}

/* A leg is done (or scrape_gather has started them all): after the last,
 * answer and free everything. Legs hold no handle, so this is at once. */
static void settle(gather_t *g)
{
    if (--g->pending > 0) return;
    for (int i = 0; i < g->n; i++)
        if (g->conn == NULL && g->legs[i].leg.status != 200)
            mm_log("admin: worker %d did not confirm a sync: %s", g->legs[i].worker,
                   g->legs[i].leg.status      ? "answered an error status"
                   : g->legs[i].leg.timed_out ? "no answer in time"
                                              : up_err_name(g->legs[i].leg.err));
    if (g->conn) {
        answer(g);
        conn_release(g->conn);
    }
    for (int i = 0; i < g->n; i++) leg_free(&g->legs[i].leg);
    void (*synced)(void *) = g->synced;
    void *synced_arg = g->synced_arg;
    free(g);
    if (synced) synced(synced_arg);
}

static void on_leg_done(leg_t *l)
{
    settle(l->owner);
}

/* One request to every sibling on its private listener; settle() runs
 * when all are done (answered, failed or timed out). */
static void fan_out(gather_t *g, const char *request_line)
{
    mm_server_t *srv = g->srv;
    mm_group_t *grp = &srv->group;
    const char *token = server_config(srv)->admin_token;
    for (int w = 0; w < grp->n; w++) {
        if (w == grp->self || keep_gone(srv->keep, w)) continue;
        leg_t *l = &g->legs[g->n].leg;
        g->legs[g->n++].worker = w;
        leg_init(l);
        l->owner = g;
        l->done = on_leg_done;
        l->keep_max = SCRAPE_KEEP;
        mm_buf_cstr(&l->head, request_line);
        mm_buf_lit(&l->head, " HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        if (g->conn == NULL) mm_buf_lit(&l->head, "Content-Length: 0\r\n"); /* a POST */
        if (token) {
            mm_buf_lit(&l->head, "Authorization: Bearer ");
            mm_buf_cstr(&l->head, token);
            mm_buf_lit(&l->head, "\r\n");
        }
        mm_buf_lit(&l->head, "\r\n");
    }
    /* A leg may be done before leg_start returns (the sibling is gone):
     * the extra count keeps g until every leg has been started. */
    g->pending = g->n + 1;
    for (int i = 0; i < g->n; i++) {
        leg_t *l = &g->legs[i].leg;
        if (l->head.oom) {
            g->pending--; /* never started: status 0, left out */
            continue;
        }
        leg_start(l, &srv->legs, grp->pools[g->legs[i].worker], SCRAPE_TIMEOUT_MS, 0);
    }
    settle(g);
}

static gather_t *gather_new(mm_server_t *srv)
{
    gather_t *g = calloc(1, sizeof(*g) + (size_t)(srv->group.n - 1) * sizeof(g->legs[0]));
    if (g) g->srv = srv;
    return g;
}

void scrape_gather(mm_server_t *srv, conn_t *c)
{
    gather_t *g = gather_new(srv);
    if (g == NULL) {
        conn_respond_error(c, 500, "internal", "out of memory");
        return;
    }
    g->conn = conn_hold(c);
    g->req_serial = c->req.serial;
    fan_out(g, "GET /metrics");
}

void scrape_group_sync(mm_server_t *srv, void (*done)(void *), void *arg)
{
    gather_t *g = scrape_group_active(srv) ? gather_new(srv) : NULL;
    if (g == NULL) {
        done(arg); /* alone, or no memory: go on with what is known */
        return;
    }
    g->synced = done;
    g->synced_arg = arg;
    fan_out(g, "POST " SCRAPE_SYNC_PATH);
}
