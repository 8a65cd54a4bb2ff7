/* feedback.h — reward feedback: the HTTP handler is declared in server.h;
 * this starts the Redis stream consumer. */
#ifndef MM_FEEDBACK_H
#define MM_FEEDBACK_H

#include "server.h"

/* Subscribe to PREFIX:feedback when the store is Redis (no-op for memory). */
int feedback_start(mm_server_t *srv);

#endif
