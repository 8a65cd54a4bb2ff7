/* simulate.c — `modelmux-bench simulate`: plays the environment of a bandit
 * experiment against a live router.
 *
 * Every answer names the arm that served it (X-Modelmux-Arm) and the
 * request (X-Request-Id); the simulator draws that arm's reward from a
 * seeded generator (Bernoulli with the arm's rate, or Gaussian) and posts it
 * to TARGET/_modelmux/feedback, batched and optionally delayed like late
 * conversions, through the same client as the requests. What it measures is
 * the router's learning, not the environment's luck: regret is the expected
 * regret, sum over requests of best_rate - rate(served arm), so two runs are
 * compared on what the router chose, not on what the coin said.
 *
 * "Identified the best arm": with --admin, the first poll of
 * GET /experiments/NAME from which on every poll shows the best arm with
 * the largest share; without it, the first window of --window requests from
 * which on the best arm served more than half of every window. Both are
 * "first and stays" rules, so an early lucky streak does not count.
 *
 * Nothing blocks the loop: the CSV and SVG files are written after the loop
 * has finished. With --concurrency 1 (the default) the order of answers, and
 * so the whole run, is reproducible given --seed here and modelmux --seed. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_client.h"
#include "rng.h"

#define SIM_FB_INFLIGHT 4         /* feedback posts in flight */
#define SIM_ADMIN_KEEP  (1 << 20) /* bytes of an admin answer kept for parsing */
#define SIM_FB_KEEP     4096      /* bytes of a feedback answer kept */
#define SIM_FB_REPORTS  5         /* failed feedback posts described on stderr */
#define SIM_MAX_N       10000000ULL

typedef struct {
    char name[MM_NAME_MAX + 1];
    double mean; /* Bernoulli rate or Gaussian mean */
    double sd;   /* Gaussian only */
    int gaussian;
} sim_arm_t;

typedef struct {
    const char *target, *experiment, *compare, *admin, *admin_token, *path, *csv, *svg;
    sim_arm_t arms[MM_MAX_ARMS];
    size_t n_arms;
    size_t best;   /* index of the arm with the largest mean (the first on a tie) */
    size_t n_best; /* arms with that mean: more than one is a tie, and any of them is "best" */
    uint64_t requests, seed, concurrency, delay_ms, batch, window, timeout_ms;
    double duration_s;
    bc_headers_t headers;
    int json;
    int path_given; /* --path was given */
} sim_opts_t;

typedef struct {
    uint64_t at;    /* rows answered when the poll was sent */
    int best_leads; /* the best arm had the unique largest share */
} sim_poll_t;

/* What one run against one target produced. */
typedef struct {
    const char *url;
    size_t rows;         /* requests completed (answered or failed), in completion order */
    double *cum_regret;  /* [rows] */
    signed char *arm_of; /* [rows]: arm index (rewarded), -1 failed, not 2xx, no arm or no id,
                            -2 an arm without a rate */
    uint64_t served[MM_MAX_ARMS];
    uint64_t answered, failed, non2xx, no_arm, no_id, unrated, cancelled;
    uint64_t errors[UP_ERR__COUNT];
    double regret;
    uint64_t fb_events, fb_posts, fb_accepted, fb_unknown, fb_invalid, fb_lost;
    sim_poll_t *polls;
    size_t n_polls, polls_cap;
    uint64_t poll_errors;
    double elapsed_s;
    int stopped_early;
    int interrupted; /* Ctrl-C: the command stops after this run */
} sim_result_t;

typedef struct sim_batch_s {
    mm_buf_t body;
    uint64_t events;
    uint64_t due_us;
    struct sim_batch_s *next;
} sim_batch_t;

typedef struct {
    bc_req_t req;
    char body[64];
} sim_slot_t;

typedef struct {
    bc_req_t req;
    sim_batch_t *batch;
} sim_fb_slot_t;

typedef struct {
    uv_loop_t loop;
    const sim_opts_t *o;
    sim_result_t *res;
    mm_rng_t rng;
    bc_target_t *data, *fb, *admin;
    sim_slot_t *slots;
    sim_fb_slot_t fbs[SIM_FB_INFLIGHT];
    bc_req_t poll;
    char poll_path[256];
    const char *req_path; /* after the target's own path, if it has one */
    uint64_t poll_at, next_poll, poll_every;
    int poll_inflight, final_poll_done;
    uv_timer_t fb_timer, stop_timer;
    uv_signal_t sigint;
    uint64_t sent, inflight;
    int fb_inflight;
    sim_batch_t *cur;           /* batch being filled */
    sim_batch_t *qhead, *qtail; /* sealed batches, due in order */
    int stopping, sending_done, closed;
    int warned_unrated;
    uint64_t fb_failures;
    uint64_t t0_us;
    bc_headers_t auth; /* Authorization for --admin */
} sim_run_t;

static void run_check_end(sim_run_t *s);
static void fb_pump(sim_run_t *s);
static void send_next(sim_run_t *s, sim_slot_t *slot);

/* ---- options ---- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: modelmux-bench simulate --target URL --experiment NAME --rates arm=p,...\n"
            "                               --requests N [--gaussian arm=mean:sd,...] [--seed S]\n"
            "                               [--concurrency C] [--feedback-delay-ms D]\n"
            "                               [--feedback-batch B] [--window W] [--csv FILE]\n"
            "                               [--svg FILE] [--compare-split URL] [--admin URL]\n"
            "                               [--admin-token T] [--path /v1/...] [--header K:V]\n"
            "                               [--duration S] [--timeout-ms MS] [--json]\n"
            "  --target URL           modelmux data listener, http://host:port[/path]\n"
            "  --experiment NAME      the experiment the requests reach (reports, --admin)\n"
            "  --rates arm=p,...      Bernoulli reward rate per arm (p in [0, 1])\n"
            "  --gaussian arm=m:sd    Gaussian rewards instead, for these arms\n"
            "  --requests N           requests to send (1-10000000)\n"
            "  --seed S               reward generator seed (default 1)\n"
            "  --concurrency C        requests in flight (default 1: reproducible order)\n"
            "  --feedback-delay-ms D  post each batch D ms after it filled (default 0)\n"
            "  --feedback-batch B     events per feedback post (default 1)\n"
            "  --window W             requests per share window (default N/20)\n"
            "  --csv FILE             request, cumulative regret, best-arm share per row\n"
            "  --svg FILE             plot of regret and best-arm share against requests\n"
            "  --compare-split URL    then the same environment against URL (a 50/50 split)\n"
            "  --admin URL            admin listener: identify by GET /experiments/NAME\n"
            "  --admin-token T        bearer token for --admin\n"
            "  --path P               request path (default /, or the target URL's path)\n"
            "  --header K:V           add a header to every request (repeatable)\n"
            "  --duration S           stop sending after S seconds (default 600)\n"
            "  --timeout-ms MS        a request fails after MS ms without progress (default "
            "10000)\n"
            "  --json                 print one JSON object instead of the text report\n");
}

static int parse_arm_list(const char *v, sim_opts_t *o, int gaussian)
{
    char *copy = strdup(v);
    if (copy == NULL) return -1;
    int rc = -1;
    for (char *tok = copy, *next; tok; tok = next) {
        next = strchr(tok, ',');
        if (next) *next++ = '\0';
        if (*tok == '\0') { /* strtok would skip it: "a=0.1,,b=0.2" is a typo */
            fprintf(stderr, "simulate: %s: an empty arm=%s in '%s'\n",
                    gaussian ? "--gaussian" : "--rates", gaussian ? "mean:sd" : "p", v);
            goto out;
        }
        char *eq = strchr(tok, '=');
        if (eq == NULL) {
            fprintf(stderr, "simulate: '%s' is not arm=%s\n", tok, gaussian ? "mean:sd" : "p");
            goto out;
        }
        *eq = '\0';
        if (!mm_valid_name(tok, strlen(tok))) {
            fprintf(stderr, "simulate: '%s' is not an arm name (1-64 of [A-Za-z0-9_.-])\n", tok);
            goto out;
        }
        for (size_t i = 0; i < o->n_arms; i++) {
            if (strcmp(o->arms[i].name, tok) == 0) {
                fprintf(stderr, "simulate: arm '%s' is given twice\n", tok);
                goto out;
            }
        }
        if (o->n_arms == MM_MAX_ARMS) {
            fprintf(stderr, "simulate: at most %d arms\n", MM_MAX_ARMS);
            goto out;
        }
        sim_arm_t *a = &o->arms[o->n_arms];
        memset(a, 0, sizeof(*a));
        snprintf(a->name, sizeof(a->name), "%s", tok);
        a->gaussian = gaussian;
        if (gaussian) {
            char *colon = strchr(eq + 1, ':');
            if (colon == NULL) {
                fprintf(stderr, "simulate: --gaussian %s wants mean:sd\n", tok);
                goto out;
            }
            *colon = '\0';
            if (bc_arg_double(eq + 1, &a->mean) < 0 || bc_arg_double(colon + 1, &a->sd) < 0 ||
                a->sd < 0) {
                fprintf(stderr, "simulate: --gaussian %s: mean and sd >= 0 must be numbers\n", tok);
                goto out;
            }
        } else if (bc_arg_double(eq + 1, &a->mean) < 0 || a->mean < 0 || a->mean > 1) {
            fprintf(stderr, "simulate: --rates %s: '%s' is not a probability in [0, 1]\n", tok,
                    eq + 1);
            goto out;
        }
        o->n_arms++;
    }
    rc = 0;
out:
    free(copy);
    return rc;
}

static int parse_u64_opt(const char *name, const char *v, uint64_t lo, uint64_t hi, uint64_t *out)
{
    if (bc_arg_u64(v, out) < 0 || *out < lo || *out > hi) {
        fprintf(stderr, "simulate: %s wants %llu-%llu, not '%s'\n", name, (unsigned long long)lo,
                (unsigned long long)hi, v);
        return -1;
    }
    return 0;
}

static int bad_url(const char *name, const char *v, int root_only)
{
    char err[512];
    if (bc_arg_url(v, root_only, err, sizeof(err)) < 0) {
        fprintf(stderr, "simulate: %s %s\n", name, err);
        return -1;
    }
    return 0;
}

static int parse_args(int argc, char **argv, sim_opts_t *o)
{
    o->seed = 1;
    o->concurrency = 1;
    o->batch = 1;
    o->timeout_ms = 10000;
    o->duration_s = 600;
    o->path = "/";
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        int m = 0;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            exit(0);
        }
        if (strcmp(a, "--json") == 0) {
            o->json = 1;
            continue;
        }
#define OPT(n) ((m = bc_arg_opt(argc, argv, &i, (n), &v)) != 0)
        if (OPT("--target")) {
            if (m < 0 || bad_url("--target", v, 0) < 0) goto bad;
            o->target = v;
        } else if (OPT("--experiment")) {
            if (m < 0) goto missing;
            if (!mm_valid_name(v, strlen(v))) {
                fprintf(stderr, "simulate: '%s' is not an experiment name\n", v);
                return -1;
            }
            o->experiment = v;
        } else if (OPT("--rates")) {
            if (m < 0) goto missing;
            if (parse_arm_list(v, o, 0) < 0) return -1;
        } else if (OPT("--gaussian")) {
            if (m < 0) goto missing;
            if (parse_arm_list(v, o, 1) < 0) return -1;
        } else if (OPT("--requests")) {
            if (m < 0 || parse_u64_opt(a, v, 1, SIM_MAX_N, &o->requests) < 0) goto bad;
        } else if (OPT("--seed")) {
            if (m < 0 || parse_u64_opt(a, v, 0, UINT64_MAX, &o->seed) < 0) goto bad;
        } else if (OPT("--concurrency")) {
            if (m < 0 || parse_u64_opt(a, v, 1, 4096, &o->concurrency) < 0) goto bad;
        } else if (OPT("--feedback-delay-ms")) {
            if (m < 0 || parse_u64_opt(a, v, 0, 3600000, &o->delay_ms) < 0) goto bad;
        } else if (OPT("--feedback-batch")) {
            if (m < 0 || parse_u64_opt(a, v, 1, 10000, &o->batch) < 0) goto bad;
        } else if (OPT("--window")) {
            if (m < 0 || parse_u64_opt(a, v, 1, SIM_MAX_N, &o->window) < 0) goto bad;
        } else if (OPT("--timeout-ms")) {
            if (m < 0 || parse_u64_opt(a, v, 1, 3600000, &o->timeout_ms) < 0) goto bad;
        } else if (OPT("--duration")) {
            if (m < 0) goto missing;
            if (bc_arg_double(v, &o->duration_s) < 0 || !(o->duration_s > 0) ||
                o->duration_s > 1e7) {
                fprintf(stderr, "simulate: --duration wants a positive number of seconds\n");
                return -1;
            }
        } else if (OPT("--csv")) {
            if (m < 0) goto missing;
            o->csv = v;
        } else if (OPT("--svg")) {
            if (m < 0) goto missing;
            o->svg = v;
        } else if (OPT("--compare-split")) {
            if (m < 0 || bad_url("--compare-split", v, 0) < 0) goto bad;
            o->compare = v;
        } else if (OPT("--admin")) {
            if (m < 0 || bad_url("--admin", v, 1) < 0) goto bad;
            o->admin = v;
        } else if (OPT("--admin-token")) {
            if (m < 0) goto missing;
            if (strpbrk(v, "\r\n") != NULL) {
                fprintf(stderr, "simulate: --admin-token must not contain CR or LF\n");
                return -1;
            }
            o->admin_token = v;
        } else if (OPT("--path")) {
            if (m < 0) goto missing;
            if (v[0] != '/' || strpbrk(v, " \t\r\n") != NULL) {
                fprintf(stderr, "simulate: --path must start with '/' and have no spaces\n");
                return -1;
            }
            o->path = v;
            o->path_given = 1;
        } else if (OPT("--header")) {
            if (m < 0) goto missing;
            char err[512];
            if (bc_headers_add(&o->headers, v, err, sizeof(err)) < 0) {
                fprintf(stderr, "simulate: --header %s\n", err);
                return -1;
            }
        } else {
            fprintf(stderr, "simulate: unknown argument '%s'\n", a);
            return -1;
        }
#undef OPT
        continue;
    missing:
        fprintf(stderr, "simulate: %s needs a value\n", a);
        return -1;
    bad:
        if (m < 0) fprintf(stderr, "simulate: %s needs a value\n", a);
        return -1;
    }
    if (!o->target || !o->experiment || o->n_arms == 0 || o->requests == 0) {
        fprintf(stderr,
                "simulate: --target, --experiment, --rates (or --gaussian) and --requests are "
                "required\n");
        return -1;
    }
    if (o->window == 0) o->window = o->requests >= 20 ? o->requests / 20 : 1;
    o->best = 0;
    for (size_t i = 1; i < o->n_arms; i++)
        if (o->arms[i].mean > o->arms[o->best].mean) o->best = i;
    o->n_best = 0;
    for (size_t i = 0; i < o->n_arms; i++) o->n_best += o->arms[i].mean == o->arms[o->best].mean;
    return 0;
}

/* Arm i (an index into o->arms, or a negative "no arm" code) has the best
 * mean. With tied best arms each of them is best: serving any costs no
 * regret, so the best arm's share counts them all. */
static int is_best(const sim_opts_t *o, int i)
{
    return i >= 0 && (size_t)i < o->n_arms && o->arms[i].mean == o->arms[o->best].mean;
}

/* The index of the arm called `name` (NULL: none), or -1. */
static int arm_index(const sim_opts_t *o, const char *name)
{
    for (size_t i = 0; name && i < o->n_arms; i++)
        if (strcmp(o->arms[i].name, name) == 0) return (int)i;
    return -1;
}

/* ---- feedback ---- */

static sim_batch_t *batch_new(void)
{
    sim_batch_t *b = calloc(1, sizeof(*b));
    if (b == NULL) return NULL;
    mm_buf_init(&b->body);
    mm_buf_lit(&b->body, "{\"events\":[");
    return b;
}

static void batch_free(sim_batch_t *b)
{
    mm_buf_free(&b->body);
    free(b);
}

static void batch_seal(sim_run_t *s)
{
    sim_batch_t *b = s->cur;
    if (b == NULL || b->events == 0) return;
    s->cur = NULL;
    mm_buf_lit(&b->body, "]}");
    /* After Ctrl-C nothing waits out the delay: the user asked to stop. */
    b->due_us = mm_now_us() + (s->res->interrupted ? 0 : s->o->delay_ms * 1000);
    if (s->qtail)
        s->qtail->next = b;
    else
        s->qhead = b;
    s->qtail = b;
    fb_pump(s);
}

static void add_event(sim_run_t *s, const char *request_id, double reward)
{
    if (s->cur == NULL && (s->cur = batch_new()) == NULL) {
        s->res->fb_lost++;
        return;
    }
    sim_batch_t *b = s->cur;
    if (b->events) mm_buf_lit(&b->body, ",");
    mm_buf_lit(&b->body, "{\"request_id\":\"");
    mm_buf_cstr(&b->body, request_id); /* validated: [A-Za-z0-9._-] only */
    mm_buf_printf(&b->body, "\",\"reward\":%.17g}", reward);
    b->events++;
    s->res->fb_events++;
    if (b->events >= s->o->batch) batch_seal(s);
}

static uint64_t json_count(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_integer(v) && json_integer_value(v) > 0 ? (uint64_t)json_integer_value(v) : 0;
}

static void on_fb_done(bc_req_t *r)
{
    sim_fb_slot_t *f = container_of(r, sim_fb_slot_t, req);
    sim_run_t *s = r->data;
    sim_result_t *res = s->res;
    sim_batch_t *b = f->batch;
    f->batch = NULL;
    s->fb_inflight--;
    json_t *o = NULL;
    if (r->status == 202) o = json_loadb(r->body.p ? r->body.p : "", r->body.len, 0, NULL);
    if (o != NULL && json_is_object(o)) {
        res->fb_accepted += json_count(o, "accepted");
        res->fb_unknown += json_count(o, "unknown");
        res->fb_invalid += json_count(o, "invalid");
    } else {
        res->fb_lost += b->events;
        /* The first few say why; the rest are counted as lost in the report. */
        if (++s->fb_failures <= SIM_FB_REPORTS && r->status) {
            mm_buf_t msg;
            mm_buf_init(&msg);
            fprintf(stderr, "simulate: feedback post answered %d: %s\n", r->status,
                    bc_printable(&msg, r->body.p, r->body.len, 200));
            mm_buf_free(&msg);
        } else if (s->fb_failures <= SIM_FB_REPORTS)
            fprintf(stderr, "simulate: feedback post failed: %s\n", up_err_name((up_err_t)r->err));
    }
    json_decref(o);
    batch_free(b);
    fb_pump(s);
    run_check_end(s);
}

static void on_fb_timer(uv_timer_t *t)
{
    fb_pump(t->data);
}

/* Post every due batch while a post slot is free; wake up for the next. */
static void fb_pump(sim_run_t *s)
{
    uint64_t now = mm_now_us();
    while (s->qhead && s->qhead->due_us <= now && s->fb_inflight < SIM_FB_INFLIGHT) {
        sim_fb_slot_t *f = NULL;
        for (int i = 0; i < SIM_FB_INFLIGHT; i++)
            if (s->fbs[i].batch == NULL) f = &s->fbs[i];
        sim_batch_t *b = s->qhead;
        s->qhead = b->next;
        if (s->qhead == NULL) s->qtail = NULL;
        b->next = NULL;
        static const char path[] = "/_modelmux/feedback";
        if (b->body.oom || bc_req_prepare(&f->req, s->fb, "POST", path, sizeof(path) - 1, b->body.p,
                                          b->body.len, "application/json", NULL, NULL) < 0) {
            s->res->fb_lost += b->events;
            batch_free(b);
            continue;
        }
        f->batch = b;
        f->req.done = on_fb_done;
        f->req.data = s;
        f->req.keep_body = SIM_FB_KEEP;
        s->fb_inflight++;
        s->res->fb_posts++;
        bc_req_send(&f->req);
    }
    if (s->qhead && s->qhead->due_us > now && !s->closed)
        uv_timer_start(&s->fb_timer, on_fb_timer, (s->qhead->due_us - now + 999) / 1000, 0);
}

/* ---- admin polls ---- */

static void on_poll_done(bc_req_t *r)
{
    sim_run_t *s = r->data;
    sim_result_t *res = s->res;
    s->poll_inflight = 0;
    json_t *o = NULL;
    if (r->status == 200) o = json_loadb(r->body.p ? r->body.p : "", r->body.len, 0, NULL);
    json_t *arms = o ? json_object_get(o, "arms") : NULL;
    if (!json_is_array(arms) || json_array_size(arms) == 0) {
        res->poll_errors++;
        if (res->poll_errors == 1)
            fprintf(stderr, "simulate: GET %s%s answered %d%s; polls that fail are ignored\n",
                    s->o->admin, s->poll_path, r->status, r->status ? "" : " (no answer)");
    } else {
        double top = -1;
        const char *top_name = NULL;
        int tie = 0;
        for (size_t i = 0; i < json_array_size(arms); i++) {
            json_t *a = json_array_get(arms, i);
            json_t *name = json_object_get(a, "name"), *share = json_object_get(a, "share");
            if (!json_is_string(name) || !json_is_number(share)) continue;
            double v = json_number_value(share);
            if (v > top) {
                top = v;
                top_name = json_string_value(name);
                tie = 0;
            } else if (v == top) {
                tie = 1;
            }
        }
        if (res->n_polls == res->polls_cap) {
            size_t cap = res->polls_cap ? res->polls_cap * 2 : 64;
            sim_poll_t *p = realloc(res->polls, cap * sizeof(*p));
            if (p != NULL) {
                res->polls = p;
                res->polls_cap = cap;
            }
        }
        if (res->n_polls < res->polls_cap) {
            res->polls[res->n_polls].at = s->poll_at;
            res->polls[res->n_polls].best_leads = !tie && is_best(s->o, arm_index(s->o, top_name));
            res->n_polls++;
        }
    }
    json_decref(o);
    run_check_end(s);
}

static void poll_admin(sim_run_t *s)
{
    if (s->admin == NULL || s->poll_inflight) return;
    if (bc_req_prepare(&s->poll, s->admin, "GET", s->poll_path, strlen(s->poll_path), NULL, 0, NULL,
                       NULL, &s->auth) < 0)
        return;
    s->poll.done = on_poll_done;
    s->poll.data = s;
    s->poll.keep_body = SIM_ADMIN_KEEP;
    s->poll_at = s->res->rows;
    s->poll_inflight = 1;
    bc_req_send(&s->poll);
}

/* ---- requests ---- */

static void on_answer(bc_req_t *r)
{
    sim_slot_t *slot = container_of(r, sim_slot_t, req);
    sim_run_t *s = r->data;
    const sim_opts_t *o = s->o;
    sim_result_t *res = s->res;
    s->inflight--;
    size_t k = res->rows++;
    signed char served = -1;
    if (r->status == 0) {
        res->failed++;
        if (r->err >= 0 && r->err < UP_ERR__COUNT) res->errors[r->err]++;
    } else if (r->status < 200 || r->status > 299) {
        res->answered++;
        res->non2xx++;
    } else if (r->arm[0] == '\0') {
        res->answered++;
        res->no_arm++;
    } else {
        res->answered++;
        int a = arm_index(o, r->arm);
        if (a < 0) {
            res->unrated++;
            served = -2;
            if (!s->warned_unrated++)
                fprintf(stderr,
                        "simulate: arm '%s' has no rate (--rates/--gaussian): its answers get "
                        "no reward and count in no regret\n",
                        r->arm);
        } else if (r->request_id[0] == '\0') {
            /* No id, no feedback: the router cannot learn from this answer,
             * so it is an error, not a choice to charge regret for. */
            res->no_id++;
        } else {
            const sim_arm_t *arm = &o->arms[a];
            served = (signed char)a;
            res->served[a]++;
            res->regret += o->arms[o->best].mean - arm->mean;
            double reward = arm->gaussian ? arm->mean + arm->sd * mm_rng_normal(&s->rng)
                                          : (mm_rng_uniform(&s->rng) < arm->mean ? 1.0 : 0.0);
            add_event(s, r->request_id, reward);
        }
    }
    res->arm_of[k] = served;
    res->cum_regret[k] = res->regret;
    if (s->admin && res->rows >= s->next_poll) {
        s->next_poll = res->rows + s->poll_every;
        poll_admin(s);
    }
    if (!s->stopping && s->sent < o->requests) send_next(s, slot);
    run_check_end(s);
}

static void send_next(sim_run_t *s, sim_slot_t *slot)
{
    uint64_t i = s->sent++;
    int n = snprintf(slot->body, sizeof(slot->body), "{\"sim_request\":%llu}",
                     (unsigned long long)(i + 1));
    slot->req.done = on_answer;
    slot->req.data = s;
    if (bc_req_prepare(&slot->req, s->data, "POST", s->req_path, strlen(s->req_path), slot->body,
                       (size_t)n, "application/json", NULL, &s->o->headers) < 0) {
        /* Out of memory for a head: count it as failed and stop sending. */
        s->res->arm_of[s->res->rows] = -1;
        s->res->cum_regret[s->res->rows] = s->res->regret;
        s->res->rows++;
        s->res->failed++;
        if (!s->stopping) fprintf(stderr, "simulate: out of memory building a request; stopping\n");
        s->stopping = 1;
        s->res->stopped_early = 1;
        return;
    }
    s->inflight++;
    bc_req_send(&slot->req);
}

/* ---- run life cycle ---- */

static void run_close(sim_run_t *s)
{
    if (s->closed) return;
    s->closed = 1;
    uv_close((uv_handle_t *)&s->fb_timer, NULL);
    uv_close((uv_handle_t *)&s->stop_timer, NULL);
    uv_close((uv_handle_t *)&s->sigint, NULL);
    bc_target_close(s->data);
    bc_target_close(s->fb);
    bc_target_close(s->admin);
}

/* The run ends when every request has been answered, every feedback batch
 * posted and answered, and (with --admin) a last poll has seen the state
 * that all the feedback made. */
static void run_check_end(sim_run_t *s)
{
    if (s->closed) return;
    if (!s->sending_done) {
        if (s->inflight > 0 || (!s->stopping && s->sent < s->o->requests)) return;
        s->sending_done = 1;
        s->res->elapsed_s = (double)(mm_now_us() - s->t0_us) / 1e6;
        batch_seal(s);
    }
    if (s->qhead || s->fb_inflight > 0 || s->poll_inflight) return;
    if (s->admin && !s->final_poll_done) {
        s->final_poll_done = 1;
        poll_admin(s);
        if (s->poll_inflight) return;
    }
    run_close(s);
}

static void run_stop(sim_run_t *s)
{
    if (s->stopping || s->closed) return;
    s->stopping = 1;
    if (s->sent < s->o->requests) s->res->stopped_early = 1;
    for (uint64_t i = 0; i < s->o->concurrency; i++) {
        bc_req_t *r = &s->slots[i].req;
        if (bc_req_waiting(r)) {
            bc_req_abort(r);
            s->inflight--;
            s->res->cancelled++;
        }
    }
    run_check_end(s);
}

static void on_stop_timer(uv_timer_t *t)
{
    sim_run_t *s = t->data;
    if (s->sent < s->o->requests)
        fprintf(stderr, "simulate: --duration %g s reached after %llu requests\n", s->o->duration_s,
                (unsigned long long)s->sent);
    run_stop(s);
}

/* Ctrl-C: stop sending, and post the feedback batches still waiting out
 * --feedback-delay-ms now (the router gets every reward, and the report does
 * not wait up to an hour for it). */
static void on_sigint(uv_signal_t *h, int sig)
{
    sim_run_t *s = h->data;
    (void)sig;
    s->res->interrupted = 1;
    for (sim_batch_t *b = s->qhead; b; b = b->next) b->due_us = 0;
    if (!s->closed) {
        uv_timer_stop(&s->fb_timer);
        fb_pump(s);
    }
    run_stop(s);
}

static void result_free(sim_result_t *r)
{
    free(r->cum_regret);
    free(r->arm_of);
    free(r->polls);
    memset(r, 0, sizeof(*r));
}

/* One run of the environment against url. Returns 0, or -1 (message printed). */
static int sim_run(const sim_opts_t *o, const char *url, const char *admin_url, sim_result_t *res)
{
    char err[512];
    memset(res, 0, sizeof(*res));
    res->url = url;
    res->cum_regret = malloc(o->requests * sizeof(*res->cum_regret));
    res->arm_of = malloc(o->requests * sizeof(*res->arm_of));
    sim_run_t *s = calloc(1, sizeof(*s));
    if (res->cum_regret == NULL || res->arm_of == NULL || s == NULL ||
        (s->slots = calloc(o->concurrency, sizeof(*s->slots))) == NULL) {
        fprintf(stderr, "simulate: out of memory for %llu requests\n",
                (unsigned long long)o->requests);
        free(s);
        return -1;
    }
    s->o = o;
    s->res = res;
    mm_rng_seed(&s->rng, o->seed);
    for (uint64_t i = 0; i < o->concurrency; i++) bc_req_init(&s->slots[i].req);
    for (int i = 0; i < SIM_FB_INFLIGHT; i++) bc_req_init(&s->fbs[i].req);
    bc_req_init(&s->poll);
    bc_headers_init(&s->auth);
    uv_loop_init(&s->loop);
    int rc = -1;
    s->data =
        bc_target_open(&s->loop, url, (int)o->concurrency, (int)o->timeout_ms, err, sizeof(err));
    if (s->data == NULL) {
        fprintf(stderr, "simulate: %s %s\n", url == o->target ? "--target" : "--compare-split",
                err);
        goto out;
    }
    /* A target with a path (http://host:port/v1/rank) is where the requests go, as with
     * any load tool (--path then follows it); feedback goes to the listener's root. */
    char root[sizeof(((cfg_upstream_t *)0)->url)];
    const char *fb_url = url;
    s->req_path = o->path;
    if (bc_target_cfg(s->data)->base_path[0]) {
        /* bc_parse_url took it: "http://" (any case), then host[:port], then the path */
        snprintf(root, sizeof(root), "%.*s", (int)(7 + strcspn(url + 7, "/")), url);
        fb_url = root;
        if (!o->path_given) s->req_path = "";
    }
    s->fb = bc_target_open(&s->loop, fb_url, SIM_FB_INFLIGHT, (int)o->timeout_ms, err, sizeof(err));
    if (s->fb == NULL) {
        fprintf(stderr, "simulate: %s %s\n", url == o->target ? "--target" : "--compare-split",
                err);
        goto out;
    }
    if (admin_url) {
        s->admin = bc_target_open(&s->loop, admin_url, 1, (int)o->timeout_ms, err, sizeof(err));
        if (s->admin == NULL) {
            fprintf(stderr, "simulate: --admin %s\n", err);
            goto out;
        }
        snprintf(s->poll_path, sizeof(s->poll_path), "/experiments/%s", o->experiment);
        if (o->admin_token) {
            mm_buf_lit(&s->auth.lines, "Authorization: Bearer ");
            mm_buf_cstr(&s->auth.lines, o->admin_token);
            mm_buf_lit(&s->auth.lines, "\r\n");
            if (s->auth.lines.oom) goto out;
        }
        s->poll_every = o->window / 10 ? o->window / 10 : 1;
        s->next_poll = s->poll_every;
    }
    uv_timer_init(&s->loop, &s->fb_timer);
    uv_timer_init(&s->loop, &s->stop_timer);
    uv_signal_init(&s->loop, &s->sigint);
    s->fb_timer.data = s->stop_timer.data = s->sigint.data = s;
    uv_signal_start(&s->sigint, on_sigint, SIGINT);
    uv_timer_start(&s->stop_timer, on_stop_timer, (uint64_t)ceil(o->duration_s * 1000), 0);
    s->t0_us = mm_now_us();
    for (uint64_t i = 0; i < o->concurrency && s->sent < o->requests; i++)
        send_next(s, &s->slots[i]);
    run_check_end(s);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    rc = 0;
out:
    if (!s->closed) {
        if (s->fb_timer.loop) { /* started: close through the life cycle */
            run_close(s);
        } else {
            bc_target_close(s->data);
            bc_target_close(s->fb);
            bc_target_close(s->admin);
        }
    }
    uv_run(&s->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&s->loop) != 0)
        fprintf(stderr, "simulate: the event loop still had open handles at exit\n");
    for (uint64_t i = 0; i < o->concurrency; i++) bc_req_free(&s->slots[i].req);
    for (int i = 0; i < SIM_FB_INFLIGHT; i++) bc_req_free(&s->fbs[i].req);
    bc_req_free(&s->poll);
    if (s->cur) batch_free(s->cur);
    while (s->qhead) {
        sim_batch_t *b = s->qhead;
        s->qhead = b->next;
        batch_free(b);
    }
    bc_headers_free(&s->auth);
    free(s->slots);
    free(s);
    return rc;
}

/* ---- analysis ---- */

typedef struct {
    uint64_t end, size, rated, best;
    double cum_regret;
} sim_window_t;

/* Disjoint windows of w rows; the last may be shorter. Returns the count
 * (the caller frees *out). */
static size_t windows_of(const sim_result_t *r, const sim_opts_t *o, sim_window_t **out)
{
    size_t n = (r->rows + o->window - 1) / o->window;
    *out = calloc(n ? n : 1, sizeof(**out));
    if (*out == NULL) return 0;
    for (size_t k = 0; k < r->rows; k++) {
        sim_window_t *w = &(*out)[k / o->window];
        w->size++;
        w->end = k + 1;
        w->cum_regret = r->cum_regret[k];
        if (r->arm_of[k] >= 0 || r->arm_of[k] == -2) w->rated++;
        if (is_best(o, r->arm_of[k])) w->best++;
    }
    return n;
}

/* Window rule: the end of the first full window from which on every full
 * window gave the best arm more than half of its rated requests; 0: never. */
static uint64_t identified_by_windows(const sim_window_t *w, size_t n, uint64_t size)
{
    uint64_t at = 0;
    for (size_t i = 0; i < n; i++) {
        if (w[i].size < size) continue;
        int leads = w[i].rated > 0 && 2 * w[i].best > w[i].rated;
        if (!leads)
            at = 0;
        else if (at == 0)
            at = w[i].end;
    }
    return at;
}

/* Admin rule: the first poll from which on every poll showed the best arm
 * with the largest share; 0: never (or no successful poll). */
static uint64_t identified_by_polls(const sim_result_t *r)
{
    uint64_t at = 0;
    int found = 0;
    for (size_t i = 0; i < r->n_polls; i++) {
        if (!r->polls[i].best_leads) {
            found = 0;
        } else if (!found) {
            found = 1;
            at = r->polls[i].at;
        }
    }
    return found ? at : 0; /* polls go out after >= 1 answer: at > 0 */
}

/* Best-arm share over the trailing window ending at each row. */
static double *trailing_share(const sim_result_t *r, const sim_opts_t *o)
{
    double *v = malloc((r->rows ? r->rows : 1) * sizeof(*v));
    if (v == NULL) return NULL;
    uint64_t rated = 0, best = 0;
    for (size_t k = 0; k < r->rows; k++) {
        signed char a = r->arm_of[k];
        rated += a >= 0 || a == -2;
        best += is_best(o, a);
        if (k >= o->window) {
            signed char b = r->arm_of[k - o->window];
            rated -= b >= 0 || b == -2;
            best -= is_best(o, b);
        }
        v[k] = rated ? (double)best / (double)rated : 0.0;
    }
    return v;
}

static double mean_rate(const sim_opts_t *o)
{
    double m = 0;
    for (size_t i = 0; i < o->n_arms; i++) m += o->arms[i].mean;
    return m / (double)o->n_arms;
}

static uint64_t rated_rows(const sim_result_t *r, const sim_opts_t *o)
{
    uint64_t n = 0;
    for (size_t i = 0; i < o->n_arms; i++) n += r->served[i];
    return n;
}

/* ---- comparison ---- */

/* --compare-split puts the two runs side by side only over what both
 * measured: each run's cumulative regret after its first n rewarded
 * answers, n the smaller of the two counts. The runs can differ (a target
 * slower than the other under --duration, errors, Ctrl-C during the split
 * run), and regret grows with every rewarded answer, so totals over
 * different counts would show the shorter run as the cheaper one. */
typedef struct {
    uint64_t n;           /* rewarded answers compared, the first n of each run */
    double bandit, split; /* cumulative regret after them */
    int partial;          /* n < --requests: some requests are not in the comparison */
} sim_compare_t;

/* Cumulative regret after the first n rewarded answers (arm_of >= 0: regret
 * grows with those only). */
static double regret_after(const sim_result_t *r, uint64_t n)
{
    double v = 0;
    uint64_t seen = 0;
    for (size_t k = 0; k < r->rows && seen < n; k++) {
        if (r->arm_of[k] < 0) continue;
        seen++;
        v = r->cum_regret[k];
    }
    return v;
}

/* 0 and *c, or -1 when a run rewarded nothing: nothing to compare. */
static int compare_runs(const sim_opts_t *o, const sim_result_t *a, const sim_result_t *b,
                        sim_compare_t *c)
{
    uint64_t na = rated_rows(a, o), nb = rated_rows(b, o);
    memset(c, 0, sizeof(*c));
    c->n = na < nb ? na : nb;
    if (c->n == 0) return -1;
    c->bandit = regret_after(a, c->n);
    c->split = regret_after(b, c->n);
    c->partial = c->n < o->requests;
    return 0;
}

/* A run that could reward no answer: why, on stderr. */
static void say_unrewarded(const sim_opts_t *o, const sim_result_t *r, const char *which,
                           const char *url_opt)
{
    fprintf(stderr,
            "simulate: %sno answer could be rewarded: of %llu requests, %llu failed, %llu were "
            "not 2xx, %llu had no X-Modelmux-Arm, %llu came from arms without a rate "
            "(--rates/--gaussian), %llu had no X-Request-Id; check %s, --path and the arm names "
            "against experiment %s's\n",
            which, (unsigned long long)(r->answered + r->failed), (unsigned long long)r->failed,
            (unsigned long long)r->non2xx, (unsigned long long)r->no_arm,
            (unsigned long long)r->unrated, (unsigned long long)r->no_id, url_opt, o->experiment);
}

/* ---- files ---- */

/* The output files are opened before the first request (a path that cannot
 * be written fails the command before a long run, not after it) and written
 * and closed here, after the loop; both functions close f. */
static int close_output(FILE *f, const char *opt, const char *path)
{
    int bad = ferror(f);
    if (fclose(f) != 0 || bad) {
        fprintf(stderr, "simulate: %s %s: write error\n", opt, path);
        return -1;
    }
    return 0;
}

static int write_csv(FILE *f, const char *path, const sim_opts_t *o, const sim_result_t *a,
                     const sim_result_t *b)
{
    double *sa = trailing_share(a, o), *sb = b ? trailing_share(b, o) : NULL;
    if (sa == NULL || (b && sb == NULL)) {
        fprintf(stderr, "simulate: out of memory writing %s\n", path);
        free(sa);
        free(sb);
        fclose(f);
        return -1;
    }
    fprintf(f, "request,cumulative_regret,best_arm_share_window%s\n",
            b ? ",split_cumulative_regret,split_best_arm_share_window" : "");
    size_t rows = b && b->rows > a->rows ? b->rows : a->rows;
    for (size_t k = 0; k < rows; k++) {
        fprintf(f, "%zu,", k + 1);
        if (k < a->rows)
            fprintf(f, "%.6f,%.6f", a->cum_regret[k], sa[k]);
        else
            fprintf(f, ",");
        if (b && k < b->rows)
            fprintf(f, ",%.6f,%.6f", b->cum_regret[k], sb[k]);
        else if (b)
            fprintf(f, ",,");
        fprintf(f, "\n");
    }
    free(sa);
    free(sb);
    return close_output(f, "--csv", path);
}

/* A "nice" tick step (1, 2 or 5 times a power of ten) for about n ticks. */
static double nice_step(double range, int n)
{
    if (!(range > 0)) return 1;
    double raw = range / n;
    double mag = pow(10, floor(log10(raw)));
    double f = raw / mag;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
}

typedef struct {
    double x0, x1, y0, y1; /* plot area in pixels (y0 bottom) */
    double xmax, ymax;     /* data ranges: x in [0, xmax], left y in [0, ymax] */
} svg_frame_t;

static double px_x(const svg_frame_t *fr, double x)
{
    return fr->x0 + (fr->x1 - fr->x0) * x / fr->xmax;
}

static double px_yl(const svg_frame_t *fr, double y)
{
    return fr->y0 - (fr->y0 - fr->y1) * y / fr->ymax;
}

static double px_yr(const svg_frame_t *fr, double share)
{
    return fr->y0 - (fr->y0 - fr->y1) * share;
}

/* A polyline of at most ~1500 points (every step-th row, the last kept). */
static void svg_series(FILE *f, const svg_frame_t *fr, const double *v, size_t n, int right,
                       const char *style)
{
    if (n == 0) return;
    size_t step = n > 1500 ? (n + 1499) / 1500 : 1;
    fprintf(f, "<polyline fill=\"none\" %s points=\"%.1f,%.1f", style, px_x(fr, 0),
            right ? px_yr(fr, v[0]) : px_yl(fr, 0));
    for (size_t k = 0; k < n; k += step) {
        double y = right ? px_yr(fr, v[k]) : px_yl(fr, v[k]);
        fprintf(f, " %.1f,%.1f", px_x(fr, (double)(k + 1)), y);
    }
    if ((n - 1) % step != 0) {
        double y = right ? px_yr(fr, v[n - 1]) : px_yl(fr, v[n - 1]);
        fprintf(f, " %.1f,%.1f", px_x(fr, (double)n), y);
    }
    fprintf(f, "\"/>\n");
}

static int write_svg(FILE *f, const char *path, const sim_opts_t *o, const sim_result_t *a,
                     const sim_result_t *b, uint64_t identified)
{
    double *sa = trailing_share(a, o), *sb = b ? trailing_share(b, o) : NULL;
    if (sa == NULL || (b && sb == NULL)) {
        fprintf(stderr, "simulate: out of memory writing %s\n", path);
        fclose(f);
        free(sa);
        free(sb);
        return -1;
    }
    const double W = 900, H = 560;
    svg_frame_t fr = {80, 810, 440, 60, 1, 1};
    size_t rows = b && b->rows > a->rows ? b->rows : a->rows;
    fr.xmax = rows ? (double)rows : 1;
    double gap = o->arms[o->best].mean - mean_rate(o);
    double uniform_end = gap * fr.xmax;
    double ymax = uniform_end;
    if (a->regret > ymax) ymax = a->regret;
    if (b && b->regret > ymax) ymax = b->regret;
    double ystep = nice_step(ymax > 0 ? ymax : 1, 5);
    fr.ymax = ceil((ymax > 0 ? ymax : 1) / ystep) * ystep;
    double xstep = nice_step(fr.xmax, 8);
    const char *best = o->arms[o->best].name;

    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    fprintf(f,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
            "viewBox=\"0 0 %.0f %.0f\" font-family=\"sans-serif\" font-size=\"12\">\n",
            W, H, W, H);
    fprintf(f, "<title>modelmux-bench simulate: %s</title>\n", o->experiment);
    fprintf(f, "<rect x=\"0\" y=\"0\" width=\"%.0f\" height=\"%.0f\" fill=\"white\"/>\n", W, H);
    fprintf(f,
            "<text x=\"%.0f\" y=\"28\" text-anchor=\"middle\" font-size=\"16\">Experiment %s: "
            "cumulative regret and share of the best arm (%s)</text>\n",
            W / 2, o->experiment, best);
    /* grid and left axis */
    for (double y = 0; y <= fr.ymax + ystep / 2; y += ystep) {
        double py = px_yl(&fr, y);
        fprintf(f,
                "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e5e5e5\"/>\n"
                "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>\n"
                "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n",
                fr.x0, py, fr.x1, py, fr.x0 - 5, py, fr.x0, py, fr.x0 - 8, py + 4, y);
    }
    /* right axis: share in percent */
    for (int p = 0; p <= 100; p += 20) {
        double py = px_yr(&fr, p / 100.0);
        fprintf(f,
                "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>\n"
                "<text x=\"%.1f\" y=\"%.1f\">%d %%</text>\n",
                fr.x1, py, fr.x1 + 5, py, fr.x1 + 8, py + 4, p);
    }
    /* x axis */
    for (double x = 0; x <= fr.xmax + xstep / 2; x += xstep) {
        double px = px_x(&fr, x);
        fprintf(f,
                "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>\n"
                "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%g</text>\n",
                px, fr.y0, px, fr.y0 + 5, px, fr.y0 + 20, x);
    }
    fprintf(f,
            "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" "
            "stroke=\"black\"/>\n",
            fr.x0, fr.y1, fr.x1 - fr.x0, fr.y0 - fr.y1);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">requests</text>\n",
            (fr.x0 + fr.x1) / 2, fr.y0 + 42);
    fprintf(f,
            "<text transform=\"translate(22 %.1f) rotate(-90)\" text-anchor=\"middle\">"
            "cumulative regret (expected)</text>\n",
            (fr.y0 + fr.y1) / 2);
    fprintf(f,
            "<text transform=\"translate(%.1f %.1f) rotate(90)\" text-anchor=\"middle\">"
            "share of %s, trailing %llu requests</text>\n",
            W - 22, (fr.y0 + fr.y1) / 2, best, (unsigned long long)o->window);
    /* 50 % line, uniform expectation, identification marker */
    fprintf(f,
            "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#2ca02c\" "
            "stroke-opacity=\"0.5\" stroke-dasharray=\"2,4\"/>\n",
            fr.x0, px_yr(&fr, 0.5), fr.x1, px_yr(&fr, 0.5));
    fprintf(f,
            "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#7f7f7f\" "
            "stroke-width=\"1.5\" stroke-dasharray=\"6,4\"/>\n",
            px_x(&fr, 0), px_yl(&fr, 0), px_x(&fr, fr.xmax), px_yl(&fr, uniform_end));
    if (identified) {
        double px = px_x(&fr, (double)identified);
        fprintf(f,
                "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#d62728\" "
                "stroke-dasharray=\"3,3\"/>\n"
                "<text transform=\"translate(%.1f %.1f) rotate(-90)\" fill=\"#d62728\">best "
                "arm identified at request %llu</text>\n",
                px, fr.y1, px, fr.y0, px + 14, fr.y0 - 40, (unsigned long long)identified);
    }
    /* series */
    svg_series(f, &fr, a->cum_regret, a->rows, 0, "stroke=\"#1f77b4\" stroke-width=\"2\"");
    svg_series(f, &fr, sa, a->rows, 1, "stroke=\"#2ca02c\" stroke-width=\"1.5\"");
    if (b) {
        svg_series(f, &fr, b->cum_regret, b->rows, 0, "stroke=\"#ff7f0e\" stroke-width=\"2\"");
        svg_series(f, &fr, sb, b->rows, 1,
                   "stroke=\"#bcbd22\" stroke-width=\"1.5\" stroke-dasharray=\"5,3\"");
    }
    /* legend */
    struct {
        const char *color, *dash, *label;
    } items[] = {
        {"#1f77b4", "", "regret, bandit"},
        {"#2ca02c", "", "share of the best arm, bandit"},
        {"#7f7f7f", "6,4", "regret expected from a uniform split"},
        {"#ff7f0e", "", "regret, 50/50 split"},
        {"#bcbd22", "5,3", "share of the best arm, 50/50 split"},
    };
    /* below the plot, in two columns, so that it hides no data */
    size_t n_items = b ? 5 : 3;
    for (size_t i = 0; i < n_items; i++) {
        double lx = fr.x0 + (i % 2 ? 370 : 0);
        double y = fr.y0 + 66 + 18.0 * (double)(i / 2);
        fprintf(f,
                "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" "
                "stroke-width=\"2\"%s%s%s/>\n"
                "<text x=\"%.1f\" y=\"%.1f\">%s</text>\n",
                lx, y, lx + 28, y, items[i].color, items[i].dash[0] ? " stroke-dasharray=\"" : "",
                items[i].dash, items[i].dash[0] ? "\"" : "", lx + 36, y + 4, items[i].label);
    }
    fprintf(f, "</svg>\n");
    free(sa);
    free(sb);
    return close_output(f, "--svg", path);
}

/* ---- report ---- */

static json_t *run_json(const sim_opts_t *o, const sim_result_t *r, const sim_window_t *w,
                        size_t nw, uint64_t by_windows, uint64_t by_polls, int with_windows)
{
    json_t *j = json_object();
    json_object_set_new(j, "target", json_string(r->url));
    json_object_set_new(j, "requests", json_integer((json_int_t)r->rows));
    json_object_set_new(j, "answered", json_integer((json_int_t)r->answered));
    json_object_set_new(j, "failed", json_integer((json_int_t)r->failed));
    json_object_set_new(j, "cancelled", json_integer((json_int_t)r->cancelled));
    json_object_set_new(j, "stopped_early", json_boolean(r->stopped_early));
    json_object_set_new(j, "elapsed_s", json_real(r->elapsed_s));
    json_t *er = json_object();
    for (int k = 0; k < UP_ERR__COUNT; k++)
        json_object_set_new(er, up_err_name((up_err_t)k), json_integer((json_int_t)r->errors[k]));
    json_object_set_new(er, "http_non_2xx", json_integer((json_int_t)r->non2xx));
    json_object_set_new(er, "no_arm_header", json_integer((json_int_t)r->no_arm));
    json_object_set_new(er, "no_request_id", json_integer((json_int_t)r->no_id));
    json_object_set_new(er, "unrated_arm", json_integer((json_int_t)r->unrated));
    json_object_set_new(j, "errors", er);
    json_t *arms = json_object();
    uint64_t rated = rated_rows(r, o);
    for (size_t i = 0; i < o->n_arms; i++) {
        json_t *a = json_object();
        json_object_set_new(a, o->arms[i].gaussian ? "mean" : "rate", json_real(o->arms[i].mean));
        if (o->arms[i].gaussian) json_object_set_new(a, "sd", json_real(o->arms[i].sd));
        json_object_set_new(a, "served", json_integer((json_int_t)r->served[i]));
        json_object_set_new(a, "share",
                            json_real(rated ? (double)r->served[i] / (double)rated : 0.0));
        json_object_set_new(arms, o->arms[i].name, a);
    }
    json_object_set_new(j, "arms", arms);
    json_t *fb = json_object();
    json_object_set_new(fb, "events", json_integer((json_int_t)r->fb_events));
    json_object_set_new(fb, "posts", json_integer((json_int_t)r->fb_posts));
    json_object_set_new(fb, "accepted", json_integer((json_int_t)r->fb_accepted));
    json_object_set_new(fb, "unknown", json_integer((json_int_t)r->fb_unknown));
    json_object_set_new(fb, "invalid", json_integer((json_int_t)r->fb_invalid));
    json_object_set_new(fb, "lost", json_integer((json_int_t)r->fb_lost));
    json_object_set_new(j, "feedback", fb);
    json_t *rg = json_object();
    double gap = o->arms[o->best].mean - mean_rate(o);
    json_object_set_new(rg, "cumulative", json_real(r->regret));
    json_object_set_new(rg, "per_request", json_real(rated ? r->regret / (double)rated : 0.0));
    json_object_set_new(rg, "uniform_split_expected", json_real(gap * (double)rated));
    json_object_set_new(j, "regret", rg);
    json_t *id = json_object();
    json_object_set_new(id, "by_windows",
                        by_windows ? json_integer((json_int_t)by_windows) : json_null());
    if (o->admin && with_windows) {
        json_object_set_new(id, "by_admin",
                            by_polls ? json_integer((json_int_t)by_polls) : json_null());
        json_object_set_new(id, "admin_polls", json_integer((json_int_t)r->n_polls));
        json_object_set_new(id, "admin_poll_errors", json_integer((json_int_t)r->poll_errors));
    }
    json_object_set_new(j, "identified_at", id);
    if (with_windows) {
        json_t *ws = json_array();
        for (size_t i = 0; i < nw; i++) {
            json_t *x = json_object();
            json_object_set_new(x, "first", json_integer((json_int_t)(w[i].end - w[i].size + 1)));
            json_object_set_new(x, "last", json_integer((json_int_t)w[i].end));
            json_object_set_new(
                x, "best_share",
                json_real(w[i].rated ? (double)w[i].best / (double)w[i].rated : 0.0));
            json_object_set_new(x, "cumulative_regret", json_real(w[i].cum_regret));
            json_array_append_new(ws, x);
        }
        json_object_set_new(j, "windows", ws);
    }
    return j;
}

static void print_run_text(const sim_opts_t *o, const sim_result_t *r, const char *label)
{
    uint64_t rated = rated_rows(r, o);
    printf("%-12s %llu requests to %s: %llu answered, %llu failed, %llu cancelled in %.2f s\n",
           label, (unsigned long long)r->rows, r->url, (unsigned long long)r->answered,
           (unsigned long long)r->failed, (unsigned long long)r->cancelled, r->elapsed_s);
    printf("%-12s", "served:");
    for (size_t i = 0; i < o->n_arms; i++)
        printf("%s %s %llu (%.1f %%)", i ? "," : "", o->arms[i].name,
               (unsigned long long)r->served[i],
               rated ? 100.0 * (double)r->served[i] / (double)rated : 0.0);
    printf("\n");
    uint64_t problems = r->non2xx + r->no_arm + r->no_id + r->unrated;
    for (int k = 0; k < UP_ERR__COUNT; k++) problems += r->errors[k];
    if (problems) {
        printf("%-12s", "errors:");
        for (int k = 0; k < UP_ERR__COUNT; k++)
            if (r->errors[k])
                printf(" %s %llu", up_err_name((up_err_t)k), (unsigned long long)r->errors[k]);
        if (r->non2xx) printf(" non-2xx %llu", (unsigned long long)r->non2xx);
        if (r->no_arm) printf(" no-arm-header %llu", (unsigned long long)r->no_arm);
        if (r->no_id) printf(" no-request-id %llu", (unsigned long long)r->no_id);
        if (r->unrated) printf(" unrated-arm %llu", (unsigned long long)r->unrated);
        printf("\n");
    }
    printf("%-12s %llu events in %llu posts (batch %llu, delay %llu ms): %llu accepted, "
           "%llu unknown, %llu invalid, %llu lost\n",
           "feedback:", (unsigned long long)r->fb_events, (unsigned long long)r->fb_posts,
           (unsigned long long)o->batch, (unsigned long long)o->delay_ms,
           (unsigned long long)r->fb_accepted, (unsigned long long)r->fb_unknown,
           (unsigned long long)r->fb_invalid, (unsigned long long)r->fb_lost);
    double gap = o->arms[o->best].mean - mean_rate(o);
    printf("%-12s %.2f cumulative (%.4f per request); a uniform split (1/%zu each) expects "
           "%.2f\n",
           "regret:", r->regret, rated ? r->regret / (double)rated : 0.0, o->n_arms,
           gap * (double)rated);
}

static void fmt_at(char *out, size_t cap, uint64_t at)
{
    if (at)
        snprintf(out, cap, "request %llu", (unsigned long long)at);
    else
        snprintf(out, cap, "never");
}

static json_t *compare_json(const sim_compare_t *c)
{
    json_t *j = json_object();
    json_object_set_new(j, "rewarded", json_integer((json_int_t)c->n));
    json_object_set_new(j, "bandit_regret", json_real(c->bandit));
    json_object_set_new(j, "split_regret", json_real(c->split));
    json_object_set_new(j, "partial", json_boolean(c->partial));
    return j;
}

/* c NULL: a run rewarded nothing (stderr said which). */
static void print_compare_text(const sim_opts_t *o, const sim_result_t *a, const sim_result_t *b,
                               const sim_compare_t *c)
{
    if (c == NULL) {
        int none_a = rated_rows(a, o) == 0, none_b = rated_rows(b, o) == 0;
        printf("%-12s none: %s\n", "compare:",
               none_a && none_b ? "neither run rewarded an answer"
               : none_a         ? "the bandit run rewarded no answer"
                                : "the split run rewarded no answer");
        return;
    }
    double saved = c->split - c->bandit;
    printf("%-12s bandit %.2f vs split %.2f after %llu rewarded requests each: bandit saved %.2f "
           "regret (%.1f %%)\n",
           "compare:", c->bandit, c->split, (unsigned long long)c->n, saved,
           c->split > 0 ? 100.0 * saved / c->split : 0.0);
    if (c->partial)
        printf("%-12s partial: of %llu requests the bandit run rewarded %llu, the split run "
               "%llu%s; only the first %llu of each are compared\n",
               "", (unsigned long long)o->requests, (unsigned long long)rated_rows(a, o),
               (unsigned long long)rated_rows(b, o), b->interrupted ? " (interrupted)" : "",
               (unsigned long long)c->n);
}

int simulate_main(int argc, char **argv)
{
    sim_opts_t o;
    memset(&o, 0, sizeof(o));
    bc_headers_init(&o.headers);
    if (parse_args(argc, argv, &o) < 0) {
        usage(stderr);
        bc_headers_free(&o.headers);
        return 2;
    }
    sim_result_t a, b;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    sim_window_t *wa = NULL, *wb = NULL;
    size_t nwa = 0, nwb = 0;
    int rc = 1, files_ok = 1, split_run = 0;
    FILE *fcsv = NULL, *fsvg = NULL;
    if (o.csv && (fcsv = fopen(o.csv, "w")) == NULL) {
        fprintf(stderr, "simulate: --csv %s: %s\n", o.csv, strerror(errno));
        goto out;
    }
    if (o.svg && (fsvg = fopen(o.svg, "w")) == NULL) {
        fprintf(stderr, "simulate: --svg %s: %s\n", o.svg, strerror(errno));
        goto out;
    }
    if (sim_run(&o, o.target, o.admin, &a) < 0) goto out;
    /* A run that rewarded nothing measured nothing: the report follows, but
     * the command failed. */
    int measured = rated_rows(&a, &o) > 0;
    if (!measured) say_unrewarded(&o, &a, "", "--target");
    const char *split_skipped = NULL; /* why --compare-split did not run */
    if (o.compare && a.interrupted) {
        fprintf(stderr,
                "simulate: interrupted: the --compare-split run against %s is not "
                "started\n",
                o.compare);
        split_skipped = "interrupted";
    } else if (o.compare && sim_run(&o, o.compare, NULL, &b) < 0) {
        split_skipped = "could not start: see stderr"; /* and it measured nothing */
        measured = 0;
    } else if (o.compare) {
        split_run = 1;
        if (rated_rows(&b, &o) == 0) {
            say_unrewarded(&o, &b, "the --compare-split run: ", "--compare-split");
            measured = 0;
        }
    }
    sim_compare_t cmp;
    int compared = split_run && compare_runs(&o, &a, &b, &cmp) == 0;
    nwa = windows_of(&a, &o, &wa);
    nwb = split_run ? windows_of(&b, &o, &wb) : 0;
    if (wa == NULL || (split_run && wb == NULL)) {
        fprintf(stderr, "simulate: out of memory\n");
        goto out;
    }
    /* with tied best arms there is nothing to identify: 0, "never" */
    int tied = o.n_best > 1;
    uint64_t id_win = tied ? 0 : identified_by_windows(wa, nwa, o.window);
    uint64_t id_poll = tied ? 0 : identified_by_polls(&a);
    uint64_t identified = o.admin ? id_poll : id_win;
    /* A file that cannot be written costs the file, not the report. */
    if (fcsv && write_csv(fcsv, o.csv, &o, &a, split_run ? &b : NULL) < 0) files_ok = 0;
    fcsv = NULL;
    if (fsvg && write_svg(fsvg, o.svg, &o, &a, split_run ? &b : NULL, identified) < 0) files_ok = 0;
    fsvg = NULL;
    if (o.json) {
        json_t *root = json_object();
        json_object_set_new(root, "experiment", json_string(o.experiment));
        json_object_set_new(root, "seed", json_integer((json_int_t)o.seed));
        json_object_set_new(root, "concurrency", json_integer((json_int_t)o.concurrency));
        json_object_set_new(root, "feedback_batch", json_integer((json_int_t)o.batch));
        json_object_set_new(root, "feedback_delay_ms", json_integer((json_int_t)o.delay_ms));
        json_object_set_new(root, "window", json_integer((json_int_t)o.window));
        json_object_set_new(root, "best_arm", json_string(o.arms[o.best].name));
        json_object_set_new(root, "best_rate", json_real(o.arms[o.best].mean));
        json_t *bests = json_array();
        for (size_t i = 0; i < o.n_arms; i++)
            if (is_best(&o, (int)i)) json_array_append_new(bests, json_string(o.arms[i].name));
        json_object_set_new(root, "best_arms", bests);
        json_object_set_new(root, "identification_rule",
                            json_string(o.admin ? "admin" : "windows"));
        json_object_set_new(root, "identified_at",
                            identified ? json_integer((json_int_t)identified) : json_null());
        json_object_set_new(root, "bandit", run_json(&o, &a, wa, nwa, id_win, id_poll, 1));
        if (split_run) {
            uint64_t id_b = tied ? 0 : identified_by_windows(wb, nwb, o.window);
            json_object_set_new(root, "split", run_json(&o, &b, wb, nwb, id_b, 0, 0));
        } else if (o.compare) {
            json_object_set_new(root, "split", json_null());
        }
        if (o.compare) {
            json_object_set_new(root, "comparison", compared ? compare_json(&cmp) : json_null());
            json_object_set_new(root, "regret_saved",
                                compared ? json_real(cmp.split - cmp.bandit) : json_null());
        }
        if (o.csv) json_object_set_new(root, "csv", json_string(o.csv));
        if (o.svg) json_object_set_new(root, "svg", json_string(o.svg));
        char *s = json_dumps(root, JSON_INDENT(2) | JSON_REAL_PRECISION(9));
        json_decref(root);
        if (s == NULL) {
            fprintf(stderr, "simulate: cannot format the JSON report (out of memory)\n");
            goto out;
        }
        printf("%s\n", s);
        free(s);
    } else {
        printf("modelmux-bench simulate: experiment %s, seed %llu, concurrency %llu\n",
               o.experiment, (unsigned long long)o.seed, (unsigned long long)o.concurrency);
        printf("%-12s", "environment:");
        for (size_t i = 0; i < o.n_arms; i++) {
            if (o.arms[i].gaussian)
                printf("%s %s ~ N(%g, %g)", i ? "," : "", o.arms[i].name, o.arms[i].mean,
                       o.arms[i].sd);
            else
                printf("%s %s p=%g", i ? "," : "", o.arms[i].name, o.arms[i].mean);
            if (is_best(&o, (int)i)) printf(" (best)");
        }
        printf("\n");
        print_run_text(&o, &a, "bandit:");
        char at[48];
        if (tied) {
            /* which of equal arms the router settles on says nothing */
            printf("%-12s n/a: %zu arms tie for the best %s\n", "identified:", o.n_best,
                   o.arms[o.best].gaussian ? "mean" : "rate");
        } else if (o.admin) {
            fmt_at(at, sizeof(at), id_poll);
            printf("%-12s %s by the router's state (%s has the largest share in GET "
                   "/experiments/%s from then on; %zu polls)\n",
                   "identified:", at, o.arms[o.best].name, o.experiment, a.n_polls);
        }
        if (!tied) {
            fmt_at(at, sizeof(at), id_win);
            printf("%-12s %s by traffic (%s served > 50 %% of every %llu-request window from "
                   "then on)\n",
                   o.admin ? "" : "identified:", at, o.arms[o.best].name,
                   (unsigned long long)o.window);
        }
        printf("%-12s %-14s %-12s %s\n", "windows:", "requests", "best share", "cum regret");
        for (size_t i = 0; i < nwa; i++) {
            char range[48];
            snprintf(range, sizeof(range), "%llu-%llu",
                     (unsigned long long)(wa[i].end - wa[i].size + 1),
                     (unsigned long long)wa[i].end);
            printf("%-12s %-14s %5.1f %%      %.2f\n", "", range,
                   wa[i].rated ? 100.0 * (double)wa[i].best / (double)wa[i].rated : 0.0,
                   wa[i].cum_regret);
        }
        if (split_skipped) {
            printf("%-12s not run (%s)\n", "split:", split_skipped);
        } else if (split_run) {
            print_run_text(&o, &b, "split:");
            print_compare_text(&o, &a, &b, compared ? &cmp : NULL);
        }
        if (o.csv) printf("%-12s %s\n", "csv:", o.csv);
        if (o.svg) printf("%-12s %s\n", "svg:", o.svg);
    }
    rc = files_ok && measured ? 0 : 1;
out:
    /* Still open: the run failed before they were written; remove them
     * rather than leave empty files behind. */
    if (fcsv) {
        fclose(fcsv);
        remove(o.csv);
    }
    if (fsvg) {
        fclose(fsvg);
        remove(o.svg);
    }
    free(wa);
    free(wb);
    result_free(&a);
    result_free(&b);
    bc_headers_free(&o.headers);
    return rc;
}
