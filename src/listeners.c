/* listeners.c — see listeners.h. */
#include "listeners.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>

#include "addr.h"

#define BACKLOG 4096

static void free_handle(uv_handle_t *h)
{
    free(h);
}

static void close_listener(uv_tcp_t *t)
{
    if (t && !uv_is_closing((uv_handle_t *)t)) uv_close((uv_handle_t *)t, free_handle);
}

/* The listener of l (data or admin) bound to a, if any. */
static uv_tcp_t *listening_on(const mm_listeners_t *l, const struct sockaddr_storage *a)
{
    uv_tcp_t *have[2] = {l->data_l, l->admin_l};
    for (int i = 0; i < 2; i++) {
        struct sockaddr_storage ss;
        int len = sizeof(ss);
        if (have[i] && uv_tcp_getsockname(have[i], (struct sockaddr *)&ss, &len) == 0 &&
            mm_addr_equal(&ss, a))
            return have[i];
    }
    return NULL;
}

static uv_tcp_t *bind_new(mm_listeners_t *l, const mm_listen_addr_t *a, char *err, size_t errlen)
{
    uv_tcp_t *t = malloc(sizeof(*t));
    if (t == NULL) {
        snprintf(err, errlen, "cannot listen on %s: out of memory", a->name);
        return NULL;
    }
    int rc = uv_tcp_init_ex(l->loop, t, a->ss.ss_family);
    if (rc != 0) {
        free(t);
        snprintf(err, errlen, "cannot listen on %s: %s", a->name, uv_strerror(rc));
        return NULL;
    }
    t->data = l->data;
    if (l->reuseport) {
        uv_os_fd_t fd;
        int one = 1;
        if (uv_fileno((uv_handle_t *)t, &fd) == 0)
            setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    }
    rc = uv_tcp_bind(t, (const struct sockaddr *)&a->ss, 0);
    if (rc == 0) rc = uv_listen((uv_stream_t *)t, BACKLOG, l->on_connection);
    if (rc != 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", a->name, uv_strerror(rc));
        close_listener(t);
        return NULL;
    }
    return t;
}

/* The listener for a: the one bound there already, else a new one. */
static uv_tcp_t *stage_one(mm_listeners_t *l, const mm_listen_addr_t *a, mm_listen_stage_t *st,
                           char *err, size_t errlen)
{
    uv_tcp_t *t = listening_on(l, &a->ss);
    if (t) return t;
    t = bind_new(l, a, err, errlen);
    if (t) st->fresh[st->fresh[0] ? 1 : 0] = t;
    return t;
}

int listeners_stage(mm_listeners_t *l, const mm_listen_addr_t *data, const mm_listen_addr_t *admin,
                    mm_listen_stage_t *st, char *err, size_t errlen)
{
    memset(st, 0, sizeof(*st));
    st->data_l = stage_one(l, data, st, err, errlen);
    if (st->data_l && admin) st->admin_l = stage_one(l, admin, st, err, errlen);
    if (st->data_l == NULL || (admin && st->admin_l == NULL)) {
        listeners_abort(st);
        return -1;
    }
    return 0;
}

void listeners_commit(mm_listeners_t *l, mm_listen_stage_t *st)
{
    uv_tcp_t *had[2] = {l->data_l, l->admin_l};
    for (int i = 0; i < 2; i++)
        if (had[i] != st->data_l && had[i] != st->admin_l) close_listener(had[i]);
    l->data_l = st->data_l;
    l->admin_l = st->admin_l;
    memset(st, 0, sizeof(*st));
}

void listeners_abort(mm_listen_stage_t *st)
{
    close_listener(st->fresh[0]);
    close_listener(st->fresh[1]);
    memset(st, 0, sizeof(*st));
}

void listeners_close(mm_listeners_t *l)
{
    close_listener(l->data_l);
    close_listener(l->admin_l);
    l->data_l = l->admin_l = NULL;
}
