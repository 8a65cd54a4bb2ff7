/* fanout.h — a request answered by every arm at once, merged by the policy
 * (interleave). The client waits for the legs; the policy's combine() builds
 * the answer. */
#ifndef MM_FANOUT_H
#define MM_FANOUT_H

#include "proxy_internal.h"

/* The request on c has been read whole (body in c->req.captured): send it to
 * every arm of its experiment and answer the client when all have answered,
 * failed or timed out. */
void fanout_start(conn_t *c);

#endif
