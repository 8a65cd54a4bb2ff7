/* scrape.h — GET /metrics for a --workers group: every worker's counters.
 *
 * Workers share the admin port (SO_REUSEPORT), so a scrape reaches one of
 * them at random. That worker asks each sibling for its own exposition on
 * the sibling's private listener (127.0.0.1, a port the parent bound before
 * forking, with the admin token when one is set), waits for all of them
 * (at most SCRAPE_TIMEOUT_MS), and answers with the merge (metrics_merge.h)
 * plus two gauges: modelmux_workers (the group's size) and
 * modelmux_workers_reporting (how many answered). With the parent's keep
 * (keep.h) the counters are those the workers kept: a sibling that
 * does not answer counts with the counters of its last scrape, and dead
 * workers with theirs, so the group's counters never go down. Without one,
 * a sibling that does not answer is left out. Either way it is logged and
 * the scrape still answers, as Prometheus wants, rather than fail whole. */
#ifndef MM_SCRAPE_H
#define MM_SCRAPE_H

#include "server.h"

#define SCRAPE_TIMEOUT_MS 2000

/* Join the group: listen on the inherited, already listening socket fd for
 * siblings' scrapes, and make a small pool to each sibling. ports[i] is
 * worker i's private port; self is this worker. srv->keep, when set, holds
 * the counters (keep.h). 0, or -1 with err. */
int scrape_group_start(mm_server_t *srv, int n, int self, int fd, const int *ports, char *err,
                       size_t errlen);
/* 1 when this process is one of a group (a scrape gathers siblings). */
int scrape_group_active(const mm_server_t *srv);
/* Answer GET /metrics on c, now or when every sibling has answered. */
void scrape_gather(mm_server_t *srv, conn_t *c);
/* This worker's own exposition (a sibling's scrape asks for it), kept
 * before anyone sees it. */
void scrape_render_own(mm_server_t *srv, mm_buf_t *out);
/* The server's 1 s tick: what this worker keeps is rendered again, so that
 * a crash between scrapes loses about a second of its counts, not all since
 * the last scrape. Rendering takes loop time in proportion to the
 * exposition, so it is skipped until 100 times its last duration has
 * passed: at most 1 % of the loop, a large exposition refreshed less often. */
void scrape_keep_tick(mm_server_t *srv);
/* A worker that has stopped (its drain is over): keeps what it counted to
 * the end, which the parent folds into the retired counters when it exits;
 * the requests it finished while draining are in the group's too. */
void scrape_keep_final(mm_server_t *srv);
/* The private listener's path that makes a worker run a store sync round
 * and answer once it is done (scrape_group_sync). */
#define SCRAPE_SYNC_PATH "/_modelmux/sync"
/* Ask every sibling to run a store sync round now, and call done(arg) once
 * all have answered (or failed, or SCRAPE_TIMEOUT_MS passed). An admin view
 * or change is answered after this, so that every worker has written what it
 * counted and adopted the change: the workers behave as one instance
 * (DESIGN.md §5). At once when not in a group. */
void scrape_group_sync(mm_server_t *srv, void (*done)(void *), void *arg);
/* Shutting down (the listener is closed with the others, server_stop):
 * close idle connections to siblings. */
void scrape_group_drain(mm_server_t *srv);
/* Drop the pools (connections still busy close when their leg is done). */
void scrape_group_free(mm_server_t *srv);

#endif
