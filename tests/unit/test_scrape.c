/* test_scrape.c — a --workers group's GET /metrics and admin syncs
 * (scrape.h), with this process as worker 0 of two and a fake sibling
 * (rig.h's model server) as worker 1 on its private port.
 *
 * The sibling answers with an exposition rendered by this very server, so
 * what the merge must give is known exactly: counters summed
 * (modelmux_reloads_total 3 + 3), modelmux_workers 2 and
 * modelmux_workers_reporting 2; a sibling that fails is left out (1
 * reporting, our 3 alone) and the scrape still answers 200. An admin change
 * in a group is answered after the sibling was asked to sync. The private
 * listener itself (CONN_WORKER, admin.c) serves only /metrics — this
 * worker's alone — and the sync path, with the token.
 *
 * With the parent's keep (keep.h), the test plays the sibling's
 * and the parent's part in it: the sibling's counters are what it kept
 * (a silent sibling counts as of its last scrape, without its gauges), a
 * dead worker's are in the retired text and counted once, and this worker
 * keeps what it shows. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "keep.h"
#include "metrics_render.h"
#include "rig.h"
#include "scrape.h"

#define AUTH "Authorization: Bearer tok\r\n"

typedef struct {
    rig_t t;
    rig_model_t sibling;
    int private_port;
    mm_buf_t answer; /* the sibling's canned answer */
    mm_keep_t *keep;
} fx_t;

static int private_listener(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(fd, 16), 0);
    socklen_t len = sizeof(a);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    *port = ntohs(a.sin_port);
    return fd;
}

static void fx_start_keep(fx_t *f, int sibling_mode, mm_keep_t *keep)
{
    memset(f, 0, sizeof(*f));
    rig_init(&f->t);
    rig_model_start(&f->t.loop, &f->sibling, sibling_mode, NULL);
    rig_serve(&f->t,
              "{\"listen\": \"127.0.0.1:18080\",\n"
              " \"admin\": {\"listen\": \"127.0.0.1:19090\", \"token\": \"tok\"},\n"
              " \"upstreams\": {\"a\": {\"url\": \"http://127.0.0.1:17001\"},\n"
              "               \"b\": {\"url\": \"http://127.0.0.1:17002\"}},\n"
              " \"experiments\": [\n"
              "  {\"name\": \"rank\", \"match\": {\"path_prefix\": \"/v1/rank\"}, \"policy\": "
              "\"ab\",\n"
              "   \"arms\": {\"a\": 90, \"b\": 10}}\n ]}\n");
    mm_server_t *s = &f->t.srv;
    s->reloads = 3;
    mm_buf_t body;
    mm_buf_init(&body);
    metrics_render(s, &body);
    mm_buf_init(&f->answer);
    mm_buf_printf(&f->answer,
                  "HTTP/1.1 200 OK\r\nContent-Type: " MM_METRICS_CONTENT_TYPE
                  "\r\nContent-Length: %zu\r\n\r\n",
                  body.len);
    mm_buf_append(&f->answer, body.p, body.len);
    mm_buf_append(&f->answer, "", 1);
    mm_buf_free(&body);
    f->sibling.answer = f->answer.p;
    int fd = private_listener(&f->private_port);
    int ports[2] = {f->private_port, f->sibling.port};
    char err[256];
    f->keep = keep;
    s->keep = keep;
    if (scrape_group_start(s, 2, 0, fd, ports, err, sizeof(err)) != 0) fail_msg("%s", err);
    assert_true(scrape_group_active(s));
}

static void fx_start(fx_t *f, int sibling_mode)
{
    fx_start_keep(f, sibling_mode, NULL);
}

static void fx_stop(fx_t *f)
{
    mm_server_t *s = &f->t.srv;
    uv_close((uv_handle_t *)&s->group.listener, NULL);
    scrape_group_free(s);
    rig_model_stop(&f->sibling);
    rig_stop(&f->t);
    rig_model_free(&f->sibling);
    mm_buf_free(&f->answer);
    keep_free(f->keep);
}

static void assert_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; (p = strstr(p, line)) != NULL; p++)
        if ((p == text || p[-1] == '\n') && p[n] == '\n') return;
    fail_msg("missing line: %s", line);
}

static void assert_no_line(const char *text, const char *prefix)
{
    for (const char *p = text; (p = strstr(p, prefix)) != NULL; p++)
        if (p == text || p[-1] == '\n') fail_msg("unexpected line: %s", prefix);
}

static void test_scrape_merges_the_sibling(void **state)
{
    (void)state;
    fx_t f;
    fx_start(&f, MODEL_ANSWER);
    rig_resp_t r;
    rig_call(&f.t, f.t.admin_port, "GET", "/metrics", AUTH, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_line(r.body, "modelmux_reloads_total 6");
    assert_line(r.body, "modelmux_workers 2");
    assert_line(r.body, "modelmux_workers_reporting 2");
    rig_resp_free(&r);
    /* asked on its private listener, with the token */
    assert_int_equal(f.sibling.requests, 1);
    assert_true(strncmp(f.sibling.last.p, "GET /metrics HTTP/1.1\r\n", 23) == 0);
    assert_non_null(strstr(f.sibling.last.p, "\r\nAuthorization: Bearer tok\r\n"));
    fx_stop(&f);
}

static void test_a_failing_sibling_is_left_out(void **state)
{
    (void)state;
    fx_t f;
    fx_start(&f, MODEL_CLOSE);
    rig_resp_t r;
    rig_call(&f.t, f.t.admin_port, "GET", "/metrics", AUTH, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_line(r.body, "modelmux_reloads_total 3");
    assert_line(r.body, "modelmux_workers 2");
    assert_line(r.body, "modelmux_workers_reporting 1");
    rig_resp_free(&r);
    fx_stop(&f);
}

/* A change in a group: the sibling is asked to sync before the answer. */
static void test_admin_change_syncs_the_sibling(void **state)
{
    (void)state;
    fx_t f;
    fx_start(&f, MODEL_ANSWER);
    rig_resp_t r;
    rig_call(&f.t, f.t.admin_port, "PUT", "/experiments/rank/weights", AUTH,
             "{\"a\": 50, \"b\": 50}", &r);
    assert_int_equal(r.status, 200);
    rig_resp_free(&r);
    assert_int_equal(f.sibling.requests, 1);
    assert_true(strncmp(f.sibling.last.p, "POST " SCRAPE_SYNC_PATH " HTTP/1.1\r\n", 27) == 0);
    assert_true(rig_exp(&f.t, "rank")->state->control.weights[1] == 50);
    fx_stop(&f);
}

/* This worker's private listener: /metrics (its own) and the sync path,
 * with the token; nothing else. */
static void test_private_listener_serves_siblings_only(void **state)
{
    (void)state;
    fx_t f;
    fx_start(&f, MODEL_ANSWER);
    rig_resp_t r;
    rig_call(&f.t, f.private_port, "GET", "/metrics", AUTH, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_line(r.body, "modelmux_reloads_total 3");
    assert_no_line(r.body, "modelmux_workers"); /* not a gathered answer */
    rig_resp_free(&r);
    assert_int_equal(f.sibling.requests, 0); /* and no sibling was asked */

    rig_call(&f.t, f.private_port, "POST", SCRAPE_SYNC_PATH, AUTH, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(json_string_value(json_object_get(r.json, "status")), "synced");
    rig_resp_free(&r);

    rig_call(&f.t, f.private_port, "GET", "/metrics", NULL, NULL, &r);
    rig_assert_error(&r, 401, "unauthorized");
    rig_resp_free(&r);
    rig_call(&f.t, f.private_port, "GET", "/experiments", AUTH, NULL, &r);
    rig_assert_error(&r, 404, "not_found");
    rig_resp_free(&r);
    rig_call(&f.t, f.private_port, "GET", SCRAPE_SYNC_PATH, AUTH, NULL, &r);
    rig_assert_error(&r, 405, "method_not_allowed");
    rig_resp_free(&r);
    /* the sync path is for siblings only, not on the admin listener */
    rig_call(&f.t, f.t.admin_port, "POST", SCRAPE_SYNC_PATH, AUTH, NULL, &r);
    rig_assert_error(&r, 404, "not_found");
    rig_resp_free(&r);
    fx_stop(&f);
}

/* A kept exposition of worker 1 (the sibling) with `reloads` reloads and a
 * gauge no merge may add from a kept text. */
static void keep_sibling(mm_keep_t *k, int reloads)
{
    char t[512];
    int n = snprintf(t, sizeof(t),
                     "# HELP modelmux_reloads_total Reloads.\n"
                     "# TYPE modelmux_reloads_total counter\n"
                     "modelmux_reloads_total %d\n"
                     "# HELP modelmux_connections Connections.\n"
                     "# TYPE modelmux_connections gauge\n"
                     "modelmux_connections 5000\n",
                     reloads);
    keep_put(k, 1, t, (size_t)n);
}

static double sample(const char *text, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = text; (p = strstr(p, name)) != NULL; p++)
        if ((p == text || p[-1] == '\n') && p[n] == ' ') return strtod(p + n + 1, NULL);
    fail_msg("no sample %s", name);
    return 0;
}

/* gauges: whether the sibling's kept gauge is in the sum (it answered, so
 * what it kept is as fresh as its answer) or not (it did not, or it is dead). */
static void scrape(fx_t *f, const char *reloads, const char *reporting, int gauges)
{
    rig_resp_t r;
    rig_call(&f->t, f->t.admin_port, "GET", "/metrics", AUTH, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_line(r.body, reloads);
    assert_line(r.body, reporting);
    double conns = sample(r.body, "modelmux_connections");
    if (gauges)
        assert_true(conns >= 5000);
    else
        assert_true(conns < 5000); /* ours alone */
    rig_resp_free(&r);
}

/* What this worker (slot 0) has kept holds the line `line`. */
static void assert_kept(mm_keep_t *k, const char *line)
{
    keep_snap_t s;
    assert_int_equal(keep_snapshot(k, 1, &s), 0);
    assert_int_equal(s.state[0], KEEP_KEPT);
    char *mine = strndup(s.text[0].p, s.text[0].len);
    assert_line(mine, line);
    free(mine);
    keep_snap_free(&s);
}

static void test_with_a_keep_a_silent_sibling_counts_as_of_its_last_scrape(void **state)
{
    (void)state;
    fx_t f;
    fx_start_keep(&f, MODEL_CLOSE, keep_create(2));
    keep_sibling(f.keep, 4);
    scrape(&f, "modelmux_reloads_total 7", "modelmux_workers_reporting 1", 0);
    /* and this worker kept what it showed, for the day it dies */
    assert_kept(f.keep, "modelmux_reloads_total 3");
    fx_stop(&f);
}

/* The sibling answers (its canned answer says 3 reloads): what it kept
 * stands for the answer, as it is that answer or newer; once it died and
 * was retired, what it kept counts once, from the retired text. */
static void test_with_a_keep_an_answering_sibling_counts_what_it_kept(void **state)
{
    (void)state;
    fx_t f;
    fx_start_keep(&f, MODEL_ANSWER, keep_create(2));
    keep_sibling(f.keep, 4);
    scrape(&f, "modelmux_reloads_total 7", "modelmux_workers_reporting 2", 1);
    keep_retire(f.keep, 1); /* died after it answered */
    scrape(&f, "modelmux_reloads_total 7", "modelmux_workers_reporting 2", 0);
    keep_sibling(f.keep, 1); /* the worker in its place */
    scrape(&f, "modelmux_reloads_total 8", "modelmux_workers_reporting 2", 1);
    fx_stop(&f);
}

static void test_with_a_keep_dead_workers_count_while_their_slot_is_empty(void **state)
{
    (void)state;
    fx_t f;
    fx_start_keep(&f, MODEL_CLOSE, keep_create(2));
    keep_sibling(f.keep, 4);
    keep_retire(f.keep, 1);
    scrape(&f, "modelmux_reloads_total 7", "modelmux_workers_reporting 1", 0);
    fx_stop(&f);
}

/* The tick keeps this worker's exposition with no scrape at all; the next
 * tick does again once its pause (100 times the rendering) has passed. */
static void test_the_tick_keeps_the_exposition_between_scrapes(void **state)
{
    (void)state;
    fx_t f;
    fx_start_keep(&f, MODEL_CLOSE, keep_create(2));
    keep_snap_t s;
    assert_int_equal(keep_snapshot(f.keep, 1, &s), 0);
    assert_int_not_equal(s.state[0], KEEP_KEPT); /* nothing yet */
    keep_snap_free(&s);
    scrape_keep_tick(&f.t.srv);
    assert_true(f.t.srv.group.keep_next_us > 0);
    assert_kept(f.keep, "modelmux_reloads_total 3");
    f.t.srv.reloads = 5;            /* counted since */
    f.t.srv.group.keep_next_us = 0; /* its pause is over */
    scrape_keep_tick(&f.t.srv);
    assert_kept(f.keep, "modelmux_reloads_total 5");
    fx_stop(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scrape_merges_the_sibling),
        cmocka_unit_test(test_a_failing_sibling_is_left_out),
        cmocka_unit_test(test_with_a_keep_a_silent_sibling_counts_as_of_its_last_scrape),
        cmocka_unit_test(test_with_a_keep_an_answering_sibling_counts_what_it_kept),
        cmocka_unit_test(test_with_a_keep_dead_workers_count_while_their_slot_is_empty),
        cmocka_unit_test(test_the_tick_keeps_the_exposition_between_scrapes),
        cmocka_unit_test(test_admin_change_syncs_the_sibling),
        cmocka_unit_test(test_private_listener_serves_siblings_only),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
