/* feedback.h — reward feedback: the HTTP handler is declared in server.h;
 * this starts the Redis stream consumer. */
#ifndef MM_FEEDBACK_H
#define MM_FEEDBACK_H

#include "server.h"

/* Per-request data for clicks (store_put_aux) starts with the reset mark of
 * the statistics its impression was counted in (store_reset_mark) and a
 * space; the policy's own bytes follow. A click on an impression a reset
 * has since forgotten is `unknown`: its earlier clicks were counted in
 * statistics that are gone, and crediting it against the new ones would
 * take back what they never had. feedback_aux_begin appends the prefix. */
void feedback_aux_begin(mm_buf_t *b, const exp_state_t *e);

/* Subscribe to PREFIX:feedback when the store is Redis (no-op for memory). */
int feedback_start(mm_server_t *srv);

#endif
