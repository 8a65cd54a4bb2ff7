/* listeners.h — the data-plane and admin listening sockets, opened at the
 * start and moved when a reload names other addresses (as an nginx reload
 * does).
 *
 * A move is staged, then committed or aborted, so a reload stays all or
 * nothing: staging binds every new address before anything changes (a port
 * taken by another process fails the reload, and the old listeners go on);
 * committing closes the listeners no longer named. An address a listener has
 * already keeps that listener, also when it passes between the data plane
 * and the admin API, so two addresses can swap. Connections accepted before
 * a move are served on; only new ones go to the new address. */
#ifndef MM_LISTENERS_H
#define MM_LISTENERS_H

#include <sys/socket.h>
#include <uv.h>

/* An address to listen on, and its name for messages ("127.0.0.1:8080"). */
typedef struct {
    struct sockaddr_storage ss;
    char name[300];
} mm_listen_addr_t;

typedef struct {
    uv_loop_t *loop;
    uv_connection_cb on_connection;
    void *data;                 /* every listener's handle data */
    int reuseport;              /* --workers: siblings share the ports (SO_REUSEPORT) */
    uv_tcp_t *data_l, *admin_l; /* NULL: none */
} mm_listeners_t;

typedef struct {
    uv_tcp_t *data_l, *admin_l; /* what listens once committed */
    uv_tcp_t *fresh[2];         /* bound by this stage: closed if it is aborted */
} mm_listen_stage_t;

/* Stage listeners on data and, unless NULL, admin. -1 with err ("cannot
 * listen on NAME: reason") when an address cannot be bound; nothing has
 * changed then, and st needs no abort. */
int listeners_stage(mm_listeners_t *l, const mm_listen_addr_t *data, const mm_listen_addr_t *admin,
                    mm_listen_stage_t *st, char *err, size_t errlen);
/* The staged listeners serve; those no longer named are closed. */
void listeners_commit(mm_listeners_t *l, mm_listen_stage_t *st);
/* The stage is dropped: what it bound is closed, the listeners stay. */
void listeners_abort(mm_listen_stage_t *st);
/* Stop accepting (shutdown): every listener is closed. */
void listeners_close(mm_listeners_t *l);
/* 1 if h is the admin API's listener (a connection's kind). */
static inline int listeners_is_admin(const mm_listeners_t *l, const uv_stream_t *h)
{
    return l->admin_l != NULL && (const uv_stream_t *)l->admin_l == h;
}

#endif
