/* redis_glue.h — a hiredis async context on a libuv loop.
 *
 * Our own, not hiredis/adapters/libuv.h: libuv reports POLLERR (a refused
 * connect, a reset connection) as a poll error and stops the handle; the
 * stock 0.14 adapter ignores such events, so hiredis never learns that the
 * connection failed and every failure turns into a timeout. Ours hands the
 * socket to hiredis, which finds the error itself. The poll handle belongs
 * to the glue: hiredis's cleanup closes it, and its close callback frees it. */
#ifndef MM_REDIS_GLUE_H
#define MM_REDIS_GLUE_H

#include <hiredis/async.h>
#include <uv.h>

/* 0, or -1 (out of memory, or the socket cannot be polled). */
int redis_glue_attach(redisAsyncContext *ac, uv_loop_t *loop);

#endif
