/* replay.c — `modelmux-bench replay`: sends the requests of a request log
 * (DESIGN.md §7) to a target and measures what comes back.
 *
 * Pacing: --speed X replays the recorded arrival times X times faster,
 * --rate R sends R requests per second, both open loop (a request is sent on
 * schedule whether or not earlier ones have been answered, the way users
 * arrive); --max keeps --concurrency requests in flight (closed loop). The
 * schedule is computed up front by lr_schedule() and driven by one timer
 * that sends everything due at each tick, so a millisecond timer serves any
 * rate.
 *
 * Measurement: latency runs from the moment a request is handed to the
 * connection pool to the end of its answer, so time spent waiting for a
 * free connection counts (in open loop the pool's wait queue is where a slow
 * target makes requests pile up; not counting it would be the coordinated
 * omission that makes closed-loop tools flatter the slow case). How far the
 * bench itself fell behind its schedule is reported separately as the lag.
 * Latencies go into a log-linear histogram (hist.h), never a sorted array. */
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_client.h"
#include "hist.h"
#include "logread.h"

#define RP_QUEUE_EXTRA  4096 /* open loop: requests beyond the pool may wait this deep */
#define RP_MAX_ARMS     64   /* distinct X-Modelmux-Arm values tracked by name */
#define RP_MAX_REPORTS  100  /* skipped log lines shown on stderr */
#define RP_HIST_MAX_US  ((uint64_t)1 << 40)
#define RP_HIST_SUBBITS 7

typedef struct {
    const char *log_path;
    const char *target;
    lr_pace_t pace;
    int pace_given;
    uint64_t concurrency;
    uint64_t requests; /* 0: one pass over the log */
    double duration_s; /* 0: none */
    uint64_t timeout_ms;
    int json;
} rp_opts_t;

typedef struct rp_slot_s {
    bc_req_t req;
    char id[MM_REQID_MAX + 1];
    struct rp_slot_s *next_free;
} rp_slot_t;

typedef struct {
    char name[MM_NAME_MAX + 1];
    uint64_t n;
} rp_arm_t;

typedef struct {
    uv_loop_t loop;
    rp_opts_t o;
    lr_log_t log;
    uint64_t *sched;
    size_t total;
    bc_target_t *target;
    uv_timer_t pace_timer, stop_timer;
    uv_signal_t sigint;
    rp_slot_t *slots;
    size_t n_slots, slots_used;
    rp_slot_t *free_slots;
    size_t next; /* next request to send */
    size_t inflight;
    int stopping, finished;
    uint64_t t0_us, t_last_us;
    /* results */
    hist_t lat;
    uint64_t answered, failed, cancelled;
    uint64_t overflow;    /* due, but no connection nor room in the queue: never sent */
    uint64_t by_class[6]; /* 1xx .. 5xx by first digit */
    uint64_t errors[UP_ERR__COUNT];
    uint64_t body_bytes;
    rp_arm_t arms[RP_MAX_ARMS];
    size_t n_arms;
    uint64_t other_arms, no_arm;
    uint64_t lag_max_us;
    double lag_sum_us;
    uint64_t lag_n;
} replay_t;

static void rp_finish(replay_t *rp);
static void rp_send(replay_t *rp, size_t i);

static const char *mode_name(const lr_pace_t *p)
{
    return p->mode == LR_PACE_MAX ? "max" : p->mode == LR_PACE_RATE ? "rate" : "speed";
}

static void usage(FILE *f)
{
    fprintf(f, "usage: modelmux-bench replay LOG --target URL [--speed X | --rate R | --max]\n"
               "                             [--concurrency C] [--requests N] [--duration S]\n"
               "                             [--timeout-ms MS] [--json]\n"
               "  LOG              request log (DESIGN.md section 7: one JSON object a line)\n"
               "  --target URL     http://host:port[/base] the requests go to\n"
               "  --speed X        X times the recorded pacing (default: --speed 1)\n"
               "  --rate R         R requests/s, evenly spaced (open loop)\n"
               "  --max            closed loop: C requests in flight\n"
               "  --concurrency C  connections (and requests in flight with --max); default 16\n"
               "  --requests N     send N requests, looping over the log (default: one pass)\n"
               "  --duration S     stop sending after S seconds\n"
               "  --timeout-ms MS  a request fails after MS ms without progress (default 10000)\n"
               "  --json           print one JSON object instead of the text report\n");
}

static int parse_args(int argc, char **argv, rp_opts_t *o)
{
    memset(o, 0, sizeof(*o));
    o->pace.mode = LR_PACE_SPEED;
    o->pace.speed = 1;
    o->concurrency = 16;
    o->timeout_ms = 10000;
    int modes = 0;
    for (int i = 0; i < argc; i++) {
        const char *v = NULL;
        const char *a = argv[i];
        int m;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            exit(0);
        }
        if (strcmp(a, "--max") == 0) {
            o->pace.mode = LR_PACE_MAX;
            modes++;
            continue;
        }
        if (strcmp(a, "--json") == 0) {
            o->json = 1;
            continue;
        }
        if ((m = bc_arg_opt(argc, argv, &i, "--target", &v)) != 0) {
            if (m < 0) goto missing;
            char err[512];
            if (bc_arg_url(v, 0, err, sizeof(err)) < 0) {
                fprintf(stderr, "replay: --target %s\n", err);
                return -1;
            }
            o->target = v;
            continue;
        }
        if ((m = bc_arg_opt(argc, argv, &i, "--speed", &v)) != 0) {
            if (m < 0) goto missing;
            if (bc_arg_double(v, &o->pace.speed) < 0 || !(o->pace.speed > 0)) {
                fprintf(stderr, "replay: --speed wants a positive factor, not '%s'\n", v);
                return -1;
            }
            o->pace.mode = LR_PACE_SPEED;
            modes++;
            continue;
        }
        if ((m = bc_arg_opt(argc, argv, &i, "--rate", &v)) != 0) {
            if (m < 0) goto missing;
            if (bc_arg_double(v, &o->pace.rate) < 0 || !(o->pace.rate > 0)) {
                fprintf(stderr, "replay: --rate wants a positive number of requests/s, not '%s'\n",
                        v);
                return -1;
            }
            o->pace.mode = LR_PACE_RATE;
            modes++;
            continue;
        }
        if ((m = bc_arg_opt(argc, argv, &i, "--concurrency", &v)) != 0) {
            if (m < 0) goto missing;
            if (bc_arg_u64(v, &o->concurrency) < 0 || o->concurrency < 1 ||
                o->concurrency > 10000) {
                fprintf(stderr, "replay: --concurrency wants 1-10000, not '%s'\n", v);
                return -1;
            }
            continue;
        }
        if ((m = bc_arg_opt(argc, argv, &i, "--requests", &v)) != 0) {
            if (m < 0) goto missing;
            if (bc_arg_u64(v, &o->requests) < 0 || o->requests < 1 || o->requests > 10000000) {
                fprintf(stderr, "replay: --requests wants 1-10000000, not '%s'\n", v);
                return -1;
            }
            continue;
        }
        if ((m = bc_arg_opt(argc, argv, &i, "--duration", &v)) != 0) {
            if (m < 0) goto missing;
            if (bc_arg_double(v, &o->duration_s) < 0 || !(o->duration_s > 0) ||
                o->duration_s > 1e7) {
                fprintf(stderr,
                        "replay: --duration wants a positive number of seconds, not "
                        "'%s'\n",
                        v);
                return -1;
            }
            continue;
        }
        if ((m = bc_arg_opt(argc, argv, &i, "--timeout-ms", &v)) != 0) {
            if (m < 0) goto missing;
            if (bc_arg_u64(v, &o->timeout_ms) < 0 || o->timeout_ms < 1 || o->timeout_ms > 3600000) {
                fprintf(stderr, "replay: --timeout-ms wants 1-3600000, not '%s'\n", v);
                return -1;
            }
            continue;
        }
        if (a[0] == '-' && a[1] != '\0') {
            fprintf(stderr, "replay: unknown option '%s'\n", a);
            return -1;
        }
        if (o->log_path != NULL) {
            fprintf(stderr, "replay: one log only ('%s' and '%s')\n", o->log_path, a);
            return -1;
        }
        o->log_path = a;
        continue;
    missing:
        fprintf(stderr, "replay: %s needs a value\n", a);
        return -1;
    }
    if (o->log_path == NULL || o->target == NULL) {
        fprintf(stderr, "replay: a LOG and --target URL are required\n");
        return -1;
    }
    if (modes > 1) {
        fprintf(stderr, "replay: --speed, --rate and --max exclude each other\n");
        return -1;
    }
    return 0;
}

/* ---- slots ---- */

static rp_slot_t *slot_get(replay_t *rp)
{
    rp_slot_t *s = rp->free_slots;
    if (s != NULL) {
        rp->free_slots = s->next_free;
        return s;
    }
    if (rp->slots_used == rp->n_slots) return NULL;
    s = &rp->slots[rp->slots_used++];
    bc_req_init(&s->req);
    return s;
}

static void slot_put(replay_t *rp, rp_slot_t *s)
{
    s->next_free = rp->free_slots;
    rp->free_slots = s;
}

/* ---- results ---- */

static void count_arm(replay_t *rp, const char *arm)
{
    if (arm[0] == '\0') {
        rp->no_arm++;
        return;
    }
    for (size_t i = 0; i < rp->n_arms; i++) {
        if (strcmp(rp->arms[i].name, arm) == 0) {
            rp->arms[i].n++;
            return;
        }
    }
    if (rp->n_arms == RP_MAX_ARMS) {
        rp->other_arms++;
        return;
    }
    snprintf(rp->arms[rp->n_arms].name, sizeof(rp->arms[0].name), "%s", arm);
    rp->arms[rp->n_arms++].n = 1;
}

static void on_done(bc_req_t *r)
{
    rp_slot_t *s = container_of(r, rp_slot_t, req);
    replay_t *rp = r->data;
    rp->inflight--;
    rp->t_last_us = r->t_end_us;
    if (r->status > 0) {
        rp->answered++;
        hist_record(&rp->lat, r->t_end_us - r->t_start_us);
        int cls = r->status / 100;
        if (cls >= 1 && cls <= 5) rp->by_class[cls]++;
        rp->body_bytes += r->body_bytes;
        count_arm(rp, r->arm);
    } else {
        /* The pool's own overflow never reached a connection either. */
        if (r->err == UP_ERR_OVERFLOW)
            rp->overflow++;
        else
            rp->failed++;
        if (r->err >= 0 && r->err < UP_ERR__COUNT) rp->errors[r->err]++;
    }
    slot_put(rp, s);
    if (rp->o.pace.mode == LR_PACE_MAX && !rp->stopping && rp->next < rp->total)
        rp_send(rp, rp->next++);
    if ((rp->stopping || rp->next == rp->total) && rp->inflight == 0) rp_finish(rp);
}

static void rp_send(replay_t *rp, size_t i)
{
    rp_slot_t *s = slot_get(rp);
    if (s == NULL) { /* open loop beyond pool + queue: what the pool itself would answer */
        rp->overflow++;
        rp->errors[UP_ERR_OVERFLOW]++;
        return;
    }
    const lr_entry_t *e = &rp->log.v[i % rp->log.n];
    lr_pass_id(e->request_id, i / rp->log.n, s->id);
    s->req.done = on_done;
    s->req.data = rp;
    if (bc_req_prepare(&s->req, rp->target, e->method, e->target, e->target_len, e->body,
                       e->body_len, "application/json", s->id, NULL) < 0) {
        rp->overflow++; /* no memory for its head: not sent either */
        rp->errors[UP_ERR_OVERFLOW]++;
        slot_put(rp, s);
        return;
    }
    rp->inflight++;
    bc_req_send(&s->req);
}

static void on_pace(uv_timer_t *t)
{
    replay_t *rp = t->data;
    if (rp->stopping) return;
    uint64_t now = mm_now_us() - rp->t0_us;
    while (rp->next < rp->total && rp->sched[rp->next] <= now) {
        uint64_t lag = now - rp->sched[rp->next];
        if (lag > rp->lag_max_us) rp->lag_max_us = lag;
        rp->lag_sum_us += (double)lag;
        rp->lag_n++;
        rp_send(rp, rp->next++);
        if (rp->stopping) return;
    }
    if (rp->next < rp->total) {
        uint64_t wait_us = rp->sched[rp->next] - now;
        uv_timer_start(&rp->pace_timer, on_pace, (wait_us + 999) / 1000, 0);
    } else if (rp->inflight == 0) {
        rp_finish(rp);
    }
}

/* Stop sending: requests still waiting for a connection are withdrawn
 * (counted as cancelled); those on the wire finish, bounded by the timeout. */
static void rp_stop(replay_t *rp)
{
    if (rp->stopping) return;
    rp->stopping = 1;
    uv_timer_stop(&rp->pace_timer);
    for (size_t i = 0; i < rp->slots_used; i++) {
        bc_req_t *r = &rp->slots[i].req;
        if (bc_req_waiting(r)) {
            bc_req_abort(r);
            rp->inflight--;
            rp->cancelled++;
            slot_put(rp, &rp->slots[i]);
        }
    }
    if (rp->inflight == 0) rp_finish(rp);
}

static void on_stop_timer(uv_timer_t *t)
{
    rp_stop(t->data);
}

static void on_sigint(uv_signal_t *h, int sig)
{
    (void)sig;
    rp_stop(h->data);
}

static void rp_finish(replay_t *rp)
{
    if (rp->finished) return;
    rp->finished = 1;
    if (rp->t_last_us == 0) rp->t_last_us = mm_now_us();
    uv_timer_stop(&rp->pace_timer);
    uv_close((uv_handle_t *)&rp->pace_timer, NULL);
    uv_close((uv_handle_t *)&rp->stop_timer, NULL);
    uv_close((uv_handle_t *)&rp->sigint, NULL);
    bc_target_close(rp->target);
    rp->target = NULL;
}

/* ---- report ---- */

static double ms(uint64_t us)
{
    return (double)us / 1000.0;
}

/* Requests that went to a connection: each came due and was neither an
 * overflow nor cancelled while it waited; each ends answered or failed. */
static uint64_t sent(const replay_t *rp)
{
    return (uint64_t)rp->next - rp->overflow - rp->cancelled;
}

static uint64_t total_errors(const replay_t *rp)
{
    uint64_t n = rp->by_class[4] + rp->by_class[5];
    for (int k = 0; k < UP_ERR__COUNT; k++) n += rp->errors[k];
    return n;
}

static void print_text(const replay_t *rp, double elapsed)
{
    const rp_opts_t *o = &rp->o;
    printf("modelmux-bench replay: %s -> %s\n", o->log_path, o->target);
    if (o->pace.mode == LR_PACE_SPEED)
        printf("pacing:      speed %g x recorded, %llu connections\n", o->pace.speed,
               (unsigned long long)o->concurrency);
    else if (o->pace.mode == LR_PACE_RATE)
        printf("pacing:      rate %g req/s, %llu connections\n", o->pace.rate,
               (unsigned long long)o->concurrency);
    else
        printf("pacing:      max, %llu requests in flight\n", (unsigned long long)o->concurrency);
    printf("log:         %zu lines, %zu usable, %zu skipped", rp->log.lines, rp->log.n,
           rp->log.skipped);
    if (rp->log.truncated_bodies)
        printf(", %zu with truncated bodies (sent as logged)", rp->log.truncated_bodies);
    printf("\n");
    printf("requests:    %llu sent, %llu answered, %llu failed, %llu overflow, %llu cancelled in "
           "%.3f s\n",
           (unsigned long long)sent(rp), (unsigned long long)rp->answered,
           (unsigned long long)rp->failed, (unsigned long long)rp->overflow,
           (unsigned long long)rp->cancelled, elapsed);
    printf("throughput:  %.1f req/s, %.2f MB/s of answer bodies\n",
           elapsed > 0 ? (double)rp->answered / elapsed : 0.0,
           elapsed > 0 ? (double)rp->body_bytes / elapsed / 1e6 : 0.0);
    const hist_t *h = &rp->lat;
    if (h->total == 0) /* no answer, no latency: not a latency of 0 */
        printf("latency ms:  n/a (no answers)\n");
    else
        printf("latency ms:  p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  mean %.3f"
               "  (%llu answers, histogram error <= %.2f %%)\n",
               ms(hist_percentile(h, 50)), ms(hist_percentile(h, 90)), ms(hist_percentile(h, 99)),
               ms(hist_percentile(h, 99.9)), ms(h->max), hist_mean(h) / 1000.0,
               (unsigned long long)h->total, hist_rel_error(h) * 100);
    if (o->pace.mode != LR_PACE_MAX && rp->lag_n)
        printf("schedule:    sends were late by %.3f ms at most, %.3f ms on average\n",
               ms(rp->lag_max_us), rp->lag_sum_us / (double)rp->lag_n / 1000.0);
    printf("status:      2xx %llu  3xx %llu  4xx %llu  5xx %llu\n",
           (unsigned long long)rp->by_class[2], (unsigned long long)rp->by_class[3],
           (unsigned long long)rp->by_class[4], (unsigned long long)rp->by_class[5]);
    printf("errors:      %llu (", (unsigned long long)total_errors(rp));
    for (int k = 0; k < UP_ERR__COUNT; k++)
        printf("%s %llu, ", up_err_name((up_err_t)k), (unsigned long long)rp->errors[k]);
    printf("http_4xx %llu, http_5xx %llu)\n", (unsigned long long)rp->by_class[4],
           (unsigned long long)rp->by_class[5]);
    uint64_t with_arm = rp->other_arms;
    for (size_t i = 0; i < rp->n_arms; i++) with_arm += rp->arms[i].n;
    printf("arms:        ");
    if (with_arm == 0) printf("none (no X-Modelmux-Arm in any answer)");
    for (size_t i = 0; i < rp->n_arms; i++)
        printf("%s%s %llu (%.1f %%)", i ? ", " : "", rp->arms[i].name,
               (unsigned long long)rp->arms[i].n, 100.0 * (double)rp->arms[i].n / (double)with_arm);
    if (rp->other_arms) printf(", other %llu", (unsigned long long)rp->other_arms);
    if (rp->no_arm) printf("; %llu answers without an arm", (unsigned long long)rp->no_arm);
    printf("\n");
}

/* Arms by requests, most first (then by name), for a stable report. */
static int arm_cmp(const void *a, const void *b)
{
    const rp_arm_t *x = a, *y = b;
    if (x->n != y->n) return x->n > y->n ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int print_json(const replay_t *rp, double elapsed)
{
    const rp_opts_t *o = &rp->o;
    const hist_t *h = &rp->lat;
    json_t *root = json_object();
    json_object_set_new(root, "log", json_string(o->log_path));
    json_object_set_new(root, "target", json_string(o->target));
    json_object_set_new(root, "mode", json_string(mode_name(&o->pace)));
    if (o->pace.mode == LR_PACE_SPEED) json_object_set_new(root, "speed", json_real(o->pace.speed));
    if (o->pace.mode == LR_PACE_RATE) json_object_set_new(root, "rate", json_real(o->pace.rate));
    json_object_set_new(root, "concurrency", json_integer((json_int_t)o->concurrency));
    json_object_set_new(root, "log_lines", json_integer((json_int_t)rp->log.lines));
    json_object_set_new(root, "usable_lines", json_integer((json_int_t)rp->log.n));
    json_object_set_new(root, "skipped_lines", json_integer((json_int_t)rp->log.skipped));
    json_object_set_new(root, "truncated_bodies",
                        json_integer((json_int_t)rp->log.truncated_bodies));
    json_object_set_new(root, "sent", json_integer((json_int_t)sent(rp)));
    json_object_set_new(root, "answered", json_integer((json_int_t)rp->answered));
    json_object_set_new(root, "failed", json_integer((json_int_t)rp->failed));
    json_object_set_new(root, "overflow", json_integer((json_int_t)rp->overflow));
    json_object_set_new(root, "cancelled", json_integer((json_int_t)rp->cancelled));
    json_object_set_new(root, "elapsed_s", json_real(elapsed));
    json_object_set_new(root, "throughput_rps",
                        json_real(elapsed > 0 ? (double)rp->answered / elapsed : 0.0));
    json_object_set_new(root, "body_bytes", json_integer((json_int_t)rp->body_bytes));
    json_t *lat = json_object();
    /* With no answer every figure is null, as a canary's p99 without samples */
    int none = h->total == 0;
    json_object_set_new(lat, "p50", none ? json_null() : json_real(ms(hist_percentile(h, 50))));
    json_object_set_new(lat, "p90", none ? json_null() : json_real(ms(hist_percentile(h, 90))));
    json_object_set_new(lat, "p99", none ? json_null() : json_real(ms(hist_percentile(h, 99))));
    json_object_set_new(lat, "p99_9", none ? json_null() : json_real(ms(hist_percentile(h, 99.9))));
    json_object_set_new(lat, "max", none ? json_null() : json_real(ms(h->max)));
    json_object_set_new(lat, "mean", none ? json_null() : json_real(hist_mean(h) / 1000.0));
    json_object_set_new(lat, "count", json_integer((json_int_t)h->total));
    json_object_set_new(lat, "relative_error", json_real(hist_rel_error(h)));
    json_object_set_new(root, "latency_ms", lat);
    if (o->pace.mode != LR_PACE_MAX) {
        json_t *lag = json_object();
        json_object_set_new(lag, "max", json_real(ms(rp->lag_max_us)));
        json_object_set_new(lag, "mean",
                            json_real(rp->lag_n ? rp->lag_sum_us / (double)rp->lag_n / 1000 : 0));
        json_object_set_new(root, "schedule_lag_ms", lag);
    }
    json_t *st = json_object();
    static const char *cls[] = {NULL, "1xx", "2xx", "3xx", "4xx", "5xx"};
    for (int c = 1; c <= 5; c++)
        json_object_set_new(st, cls[c], json_integer((json_int_t)rp->by_class[c]));
    json_object_set_new(root, "status", st);
    json_t *er = json_object();
    for (int k = 0; k < UP_ERR__COUNT; k++)
        json_object_set_new(er, up_err_name((up_err_t)k), json_integer((json_int_t)rp->errors[k]));
    json_object_set_new(er, "http_4xx", json_integer((json_int_t)rp->by_class[4]));
    json_object_set_new(er, "http_5xx", json_integer((json_int_t)rp->by_class[5]));
    json_object_set_new(er, "total", json_integer((json_int_t)total_errors(rp)));
    json_object_set_new(root, "errors", er);
    uint64_t with_arm = rp->other_arms;
    for (size_t i = 0; i < rp->n_arms; i++) with_arm += rp->arms[i].n;
    json_t *arms = json_object();
    for (size_t i = 0; i < rp->n_arms; i++) {
        json_t *a = json_object();
        json_object_set_new(a, "requests", json_integer((json_int_t)rp->arms[i].n));
        json_object_set_new(a, "share", json_real((double)rp->arms[i].n / (double)with_arm));
        json_object_set_new(arms, rp->arms[i].name, a);
    }
    json_object_set_new(root, "arms", arms);
    json_object_set_new(root, "other_arms", json_integer((json_int_t)rp->other_arms));
    json_object_set_new(root, "no_arm", json_integer((json_int_t)rp->no_arm));
    char *s = json_dumps(root, JSON_INDENT(2) | JSON_REAL_PRECISION(9));
    json_decref(root);
    if (s == NULL) {
        fprintf(stderr, "replay: cannot format the JSON report (out of memory)\n");
        return -1;
    }
    printf("%s\n", s);
    free(s);
    return 0;
}

/* ---- entry point ---- */

int replay_main(int argc, char **argv)
{
    replay_t *rp = calloc(1, sizeof(*rp));
    char err[512];
    int rc = 1;
    if (rp == NULL) {
        fprintf(stderr, "replay: out of memory\n");
        return 1;
    }
    if (parse_args(argc, argv, &rp->o) < 0) {
        usage(stderr);
        free(rp);
        return 2;
    }
    rp_opts_t *o = &rp->o;
    if (lr_load(o->log_path, &rp->log, stderr, RP_MAX_REPORTS, err, sizeof(err)) < 0) {
        fprintf(stderr, "replay: %s\n", err);
        free(rp);
        return 1;
    }
    if (rp->log.n == 0) {
        fprintf(stderr, "replay: %s: no usable line (%zu lines, %zu skipped)\n", o->log_path,
                rp->log.lines, rp->log.skipped);
        lr_free(&rp->log);
        free(rp);
        return 1;
    }
    lr_sort_by_ts(&rp->log);
    rp->total = o->requests ? (size_t)o->requests : rp->log.n;
    int64_t *ts = malloc(rp->log.n * sizeof(*ts));
    rp->sched = malloc(rp->total * sizeof(*rp->sched));
    rp->n_slots = (size_t)o->concurrency + (o->pace.mode == LR_PACE_MAX ? 0 : RP_QUEUE_EXTRA);
    rp->slots = calloc(rp->n_slots, sizeof(*rp->slots));
    int loop_ok = 0;
    if (ts == NULL || rp->sched == NULL || rp->slots == NULL) {
        fprintf(stderr, "replay: out of memory for %zu requests\n", rp->total);
        goto out;
    }
    for (size_t i = 0; i < rp->log.n; i++) ts[i] = rp->log.v[i].ts_us;
    if (lr_schedule(ts, rp->log.n, rp->total, &o->pace, rp->sched, err, sizeof(err)) < 0) {
        fprintf(stderr, "replay: %s\n", err);
        goto out;
    }
    if (hist_init(&rp->lat, RP_HIST_SUBBITS, RP_HIST_MAX_US, err, sizeof(err)) < 0) {
        fprintf(stderr, "replay: %s\n", err);
        goto out;
    }
    uv_loop_init(&rp->loop);
    loop_ok = 1;
    rp->target = bc_target_open(&rp->loop, o->target, (int)o->concurrency, (int)o->timeout_ms, err,
                                sizeof(err));
    if (rp->target == NULL) {
        fprintf(stderr, "replay: --target %s\n", err);
        goto out;
    }
    uv_timer_init(&rp->loop, &rp->pace_timer);
    uv_timer_init(&rp->loop, &rp->stop_timer);
    uv_signal_init(&rp->loop, &rp->sigint);
    rp->pace_timer.data = rp->stop_timer.data = rp->sigint.data = rp;
    uv_signal_start(&rp->sigint, on_sigint, SIGINT);
    if (o->duration_s > 0)
        uv_timer_start(&rp->stop_timer, on_stop_timer, (uint64_t)ceil(o->duration_s * 1000), 0);
    rp->t0_us = mm_now_us();
    if (o->pace.mode == LR_PACE_MAX) {
        while (rp->next < rp->total && rp->next < o->concurrency) rp_send(rp, rp->next++);
    } else {
        uv_timer_start(&rp->pace_timer, on_pace, 0, 0);
    }
    uv_run(&rp->loop, UV_RUN_DEFAULT);
    qsort(rp->arms, rp->n_arms, sizeof(rp->arms[0]), arm_cmp);
    double elapsed = (double)(rp->t_last_us - rp->t0_us) / 1e6;
    if (o->json)
        rc = print_json(rp, elapsed) < 0 ? 1 : 0;
    else {
        print_text(rp, elapsed);
        rc = 0;
    }
out:
    if (loop_ok) {
        if (rp->target) { /* setup failed after the loop started: close what is open */
            bc_target_close(rp->target);
        }
        uv_run(&rp->loop, UV_RUN_DEFAULT);
        if (uv_loop_close(&rp->loop) != 0)
            fprintf(stderr, "replay: the event loop still had open handles at exit\n");
    }
    for (size_t i = 0; i < rp->slots_used; i++) bc_req_free(&rp->slots[i].req);
    free(rp->slots);
    free(rp->sched);
    free(ts);
    hist_free(&rp->lat);
    lr_free(&rp->log);
    free(rp);
    return rc;
}
