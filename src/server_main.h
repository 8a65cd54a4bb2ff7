/* server_main.h — what main.c needs from server.c. */
#ifndef MM_SERVER_MAIN_H
#define MM_SERVER_MAIN_H

#include <signal.h>

#include "server.h"

/* Build everything from cfg (taking ownership of it) and start listening.
 * store_override (may be NULL) replaces the config's store, now and on every
 * reload (workers sharing the private Redis that stands in for the memory
 * store). */
int server_start(mm_server_t *srv, uv_loop_t *loop, const char *config_path, config_t *cfg,
                 uint64_t seed, int reuseport, const cfg_store_t *store_override, char *err,
                 size_t errlen);
/* Block or unblock (how: SIG_BLOCK, SIG_UNBLOCK) SIGHUP, SIGTERM and SIGINT
 * in the calling thread, and SIGCHLD too when `chld`; old: the previous
 * mask, may be NULL. */
void server_lifecycle_signals(int how, int chld, sigset_t *old);
/* Begin the graceful stop (what SIGTERM does). */
void server_stop(mm_server_t *srv);
/* After the loop has run dry. */
void server_free(mm_server_t *srv);

#endif
