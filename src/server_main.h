/* server_main.h — what main.c needs from server.c. */
#ifndef MM_SERVER_MAIN_H
#define MM_SERVER_MAIN_H

#include "server.h"

/* Build everything from cfg (taking ownership of it) and start listening. */
int server_start(mm_server_t *srv, uv_loop_t *loop, const char *config_path, config_t *cfg,
                 uint64_t seed, int reuseport, char *err, size_t errlen);
/* Begin the graceful stop (what SIGTERM does). */
void server_stop(mm_server_t *srv);
/* After the loop has run dry. */
void server_free(mm_server_t *srv);

#endif
