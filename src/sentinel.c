/* sentinel.c — see sentinel.h.
 *
 * One timer paces a question: started at 0 ms by sentinel_ask (so the
 * answer never comes before it returns), then as the deadline of the node
 * being asked. A node's connection is dropped on every path once it has
 * answered or failed; callbacks of a connection dropped that way find
 * s->ac no longer theirs and do nothing. A lookup cannot be taken back once
 * a resolver thread runs it: a node whose lookup outlives its deadline is
 * given up when the lookup returns. */
#include "sentinel.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "addr.h"
#include "common.h"
#include "redis_glue.h"

struct sentinel_s {
    uv_loop_t *loop;
    const cfg_store_t *cfg;
    int timeout_ms;
    uv_timer_t timer;
    uv_getaddrinfo_t gai;
    int resolving, late;   /* a lookup in flight; past its node's deadline */
    redisAsyncContext *ac; /* the node being asked, connected or connecting */
    int cur, next, tried;  /* the node asked, the one after it, how many were */
    sentinel_cb cb;        /* NULL: no question */
    void *arg;
    char why[512]; /* what the nodes asked so far answered */
    int closing, open;
    void (*closed)(void *);
    void *closed_arg;
};

static void try_next(sentinel_t *s);

static void finish(sentinel_t *s, const char *host, int port)
{
    uv_timer_stop(&s->timer);
    sentinel_cb cb = s->cb;
    s->cb = NULL;
    if (cb) cb(s->arg, host, port, host ? NULL : s->why);
}

/* The node being asked failed (why): the next one is asked. */
static void fail_node(sentinel_t *s, const char *why)
{
    char name[300];
    size_t n = strlen(s->why);
    snprintf(s->why + n, sizeof(s->why) - n, "%s%s: %s", n ? "; " : "",
             cfg_addr_str(&s->cfg->sentinels[s->cur], name, sizeof(name)), why);
    try_next(s);
}

/* Drop the node's connection (never from inside its own callbacks: those
 * disconnect instead). */
static void drop(sentinel_t *s)
{
    redisAsyncContext *ac = s->ac;
    s->ac = NULL;
    if (ac) redisAsyncFree(ac);
}

static void on_reply(redisAsyncContext *ac, void *reply_, void *priv)
{
    sentinel_t *s = ac->data;
    redisReply *reply = reply_;
    (void)priv;
    if (ac != s->ac || reply == NULL) return; /* dropped; or dying: on_disconnect says why */
    s->ac = NULL;
    redisAsyncDisconnect(ac); /* once this callback has returned */
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
        reply->element[0]->type == REDIS_REPLY_STRING &&
        reply->element[1]->type == REDIS_REPLY_STRING) {
        int port = atoi(reply->element[1]->str);
        if (reply->element[0]->len > 0 && port > 0 && port <= 65535) {
            s->next = s->cur; /* it answered: asked first next time */
            finish(s, reply->element[0]->str, port);
            return;
        }
    }
    char why[300];
    if (reply->type == REDIS_REPLY_NIL)
        snprintf(why, sizeof(why), "does not know a master named %s", s->cfg->sentinel_master);
    else if (reply->type == REDIS_REPLY_ERROR)
        snprintf(why, sizeof(why), "%s", reply->str);
    else
        snprintf(why, sizeof(why), "not an address");
    fail_node(s, why);
}

/* AUTH to a node (store.sentinel.password): refused, the node is skipped
 * with Redis's answer (it never echoes the password); the question queued
 * behind it is then answered to a connection no longer ours. */
static void on_auth(redisAsyncContext *ac, void *reply_, void *priv)
{
    sentinel_t *s = ac->data;
    redisReply *reply = reply_;
    (void)priv;
    if (ac != s->ac || reply == NULL || reply->type != REDIS_REPLY_ERROR) return;
    char why[300];
    snprintf(why, sizeof(why), "AUTH refused: %s", reply->str);
    s->ac = NULL;
    redisAsyncDisconnect(ac);
    fail_node(s, why);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    sentinel_t *s = ac->data;
    if (status == REDIS_OK || ac != s->ac) return;
    s->ac = NULL; /* hiredis frees it after this; no on_disconnect follows */
    fail_node(s, ac->errstr);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    sentinel_t *s = ac->data;
    if (ac != s->ac) return;
    s->ac = NULL;
    fail_node(s, status == REDIS_OK ? "closed the connection" : ac->errstr);
}

static void ask_node(sentinel_t *s, const struct sockaddr_storage *ss)
{
    char ip[64] = "";
    uv_ip_name((const struct sockaddr *)ss, ip, sizeof(ip)); /* numeric: hiredis looks up nothing */
    redisAsyncContext *ac = redisAsyncConnect(ip, s->cfg->sentinels[s->cur].port);
    if (ac == NULL || ac->err) {
        char why[256];
        snprintf(why, sizeof(why), "%s", ac ? ac->errstr : "out of memory");
        if (ac) redisAsyncFree(ac);
        fail_node(s, why);
        return;
    }
    ac->data = s;
    if (redis_glue_attach(ac, s->loop) != 0) {
        redisAsyncFree(ac);
        fail_node(s, "cannot attach to the event loop");
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    s->ac = ac;
    const cfg_store_t *c = s->cfg;
    int rc = REDIS_OK;
    if (c->sentinel_password[0] && c->sentinel_username[0])
        rc = redisAsyncCommand(ac, on_auth, NULL, "AUTH %s %s", c->sentinel_username,
                               c->sentinel_password);
    else if (c->sentinel_password[0])
        rc = redisAsyncCommand(ac, on_auth, NULL, "AUTH %s", c->sentinel_password);
    if (rc == REDIS_OK)
        rc = redisAsyncCommand(ac, on_reply, NULL, "SENTINEL get-master-addr-by-name %s",
                               c->sentinel_master);
    if (rc != REDIS_OK) {
        drop(s);
        fail_node(s, "cannot send the question");
    }
}

static void release(sentinel_t *s)
{
    if (--s->open > 0) return;
    void (*closed)(void *) = s->closed;
    void *arg = s->closed_arg;
    free(s);
    if (closed) closed(arg);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    sentinel_t *s = container_of(req, sentinel_t, gai);
    struct sockaddr_storage ss;
    int ok = status == 0 && mm_addr_from_ai(res, s->cfg->sentinels[s->cur].port, &ss) == 0;
    if (res) uv_freeaddrinfo(res);
    s->resolving = 0;
    if (s->closing) {
        release(s);
        return;
    }
    s->open--; /* not the last: the timer is open while not closing */
    if (s->late || status == UV_ECANCELED) {
        char why[64];
        snprintf(why, sizeof(why), "no address within %d ms", s->timeout_ms);
        fail_node(s, why);
    } else if (!ok) {
        fail_node(s, status ? uv_strerror(status) : "no address");
    } else {
        ask_node(s, &ss);
    }
}

static void on_timer(uv_timer_t *t)
{
    sentinel_t *s = t->data;
    if (s->resolving) { /* past the deadline: given up when the lookup returns */
        s->late = 1;
        uv_cancel((uv_req_t *)&s->gai);
        return;
    }
    if (s->ac) {
        char why[64];
        snprintf(why, sizeof(why), "no answer within %d ms", s->timeout_ms);
        drop(s);
        fail_node(s, why);
        return;
    }
    try_next(s); /* sentinel_ask's start */
}

static void try_next(sentinel_t *s)
{
    int n = s->cfg->n_sentinels;
    if (s->tried == n) {
        finish(s, NULL, 0);
        return;
    }
    s->cur = s->next;
    s->next = (s->next + 1) % n;
    s->tried++;
    uv_timer_start(&s->timer, on_timer, (uint64_t)s->timeout_ms, 0);
    const cfg_addr_t *node = &s->cfg->sentinels[s->cur];
    struct sockaddr_storage ss;
    if (mm_addr_literal(node, &ss) == 0) {
        ask_node(s, &ss);
        return;
    }
    s->late = 0;
    int rc = mm_addr_lookup(s->loop, &s->gai, on_resolved, node->host);
    if (rc != 0) {
        fail_node(s, uv_strerror(rc));
        return;
    }
    s->resolving = 1;
    s->open++;
}

sentinel_t *sentinel_new(uv_loop_t *loop, const cfg_store_t *cfg, int timeout_ms)
{
    sentinel_t *s = calloc(1, sizeof(*s));
    if (s == NULL) return NULL;
    s->loop = loop;
    s->cfg = cfg;
    s->timeout_ms = timeout_ms;
    uv_timer_init(loop, &s->timer);
    s->timer.data = s;
    s->open = 1;
    return s;
}

void sentinel_ask(sentinel_t *s, sentinel_cb cb, void *arg)
{
    s->cb = cb;
    s->arg = arg;
    s->tried = 0;
    s->why[0] = '\0';
    uv_timer_start(&s->timer, on_timer, 0, 0);
}

static void on_timer_closed(uv_handle_t *h)
{
    release(h->data);
}

void sentinel_close(sentinel_t *s, void (*closed)(void *), void *arg)
{
    s->closing = 1;
    s->cb = NULL;
    s->closed = closed;
    s->closed_arg = arg;
    drop(s);
    if (s->resolving) uv_cancel((uv_req_t *)&s->gai);
    uv_close((uv_handle_t *)&s->timer, on_timer_closed);
}
