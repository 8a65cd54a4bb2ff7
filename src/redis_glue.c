/* redis_glue.c — see redis_glue.h. */
#include "redis_glue.h"

#include <stdlib.h>

typedef struct {
    redisAsyncContext *ac; /* NULL once hiredis let go */
    uv_poll_t poll;
    int events;
} glue_t;

static void glue_on_poll(uv_poll_t *h, int status, int events)
{
    glue_t *g = h->data;
    if (status < 0) {
        /* POLLERR: reading makes hiredis see the socket error (or the
         * failed connect) and disconnect. */
        if (g->ac) redisAsyncHandleRead(g->ac);
        return;
    }
    if (g->ac && (events & UV_READABLE)) redisAsyncHandleRead(g->ac);
    if (g->ac && (events & UV_WRITABLE)) redisAsyncHandleWrite(g->ac);
}

static void glue_update(glue_t *g)
{
    if (g->events)
        uv_poll_start(&g->poll, g->events, glue_on_poll);
    else
        uv_poll_stop(&g->poll);
}

static void glue_add_read(void *p)
{
    glue_t *g = p;
    g->events |= UV_READABLE;
    glue_update(g);
}

static void glue_del_read(void *p)
{
    glue_t *g = p;
    g->events &= ~UV_READABLE;
    glue_update(g);
}

static void glue_add_write(void *p)
{
    glue_t *g = p;
    g->events |= UV_WRITABLE;
    glue_update(g);
}

static void glue_del_write(void *p)
{
    glue_t *g = p;
    g->events &= ~UV_WRITABLE;
    glue_update(g);
}

static void glue_closed(uv_handle_t *h)
{
    free(h->data);
}

static void glue_cleanup(void *p)
{
    glue_t *g = p;
    g->ac = NULL;
    uv_close((uv_handle_t *)&g->poll, glue_closed);
}

int redis_glue_attach(redisAsyncContext *ac, uv_loop_t *loop)
{
    glue_t *g = calloc(1, sizeof(*g));
    if (g == NULL) return -1;
    if (uv_poll_init(loop, &g->poll, ac->c.fd) != 0) {
        free(g);
        return -1;
    }
    g->ac = ac;
    g->poll.data = g;
    ac->ev.data = g;
    ac->ev.addRead = glue_add_read;
    ac->ev.delRead = glue_del_read;
    ac->ev.addWrite = glue_add_write;
    ac->ev.delWrite = glue_del_write;
    ac->ev.cleanup = glue_cleanup;
    return 0;
}
