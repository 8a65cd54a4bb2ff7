/* sentinel.h — where a Redis primary is, asked of its Sentinels
 * (store.sentinel), as Sentinel clients do: SENTINEL get-master-addr-by-name
 * to the nodes in turn, starting with the one that answered last, each on a
 * connection of its own that is closed after the answer. A node that cannot
 * be reached or looked up, does not know the name, or does not answer within
 * the timeout, or refuses its AUTH (store.sentinel.password), is skipped;
 * the question fails once every node was. Host names are looked up in
 * libuv's thread pool, never on the loop. */
#ifndef MM_SENTINEL_H
#define MM_SENTINEL_H

#include <uv.h>

#include "config.h"

typedef struct sentinel_s sentinel_t;

/* The answer: host and port of the primary, or host NULL and why (each
 * node's failure, for the log). */
typedef void (*sentinel_cb)(void *arg, const char *host, int port, const char *why);

/* A client for cfg's Sentinels (cfg->n_sentinels > 0); NULL: out of memory. */
sentinel_t *sentinel_new(uv_loop_t *loop, const cfg_store_t *cfg, int timeout_ms);
/* Ask; cb runs once, never before this returns. One question at a time. */
void sentinel_ask(sentinel_t *s, sentinel_cb cb, void *arg);
/* Drop the question in flight (its cb never runs) and free s once its
 * handles have closed; then closed(arg). */
void sentinel_close(sentinel_t *s, void (*closed)(void *), void *arg);

#endif
