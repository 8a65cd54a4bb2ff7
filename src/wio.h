/* wio.h — writing to a libuv stream without a syscall's worth of overhead.
 *
 * libuv 1.44 re-arms the epoll watcher (an epoll_ctl) after every completed
 * uv_write, even when nothing changed; on a proxy that is two extra syscalls
 * per request. Writing with uv_try_write first and queueing a uv_write only
 * for what the kernel did not take avoids them in the common case (the
 * socket buffer has room), and costs nothing when it does not. */
#ifndef MM_WIO_H
#define MM_WIO_H

#include <uv.h>

/* Try to write bufs[0..*n) now. Returns 1 if everything was written, 0 if
 * some is left (bufs and *n then describe the rest, ready for uv_write), or
 * a negative libuv error. bufs is modified in place. */
int mm_try_write(uv_stream_t *s, uv_buf_t *bufs, unsigned *n);

#endif
