/* test_upstream.c — one exchange on a pooled upstream connection, against a
 * fake model server in the same loop (rig.h's).
 *
 * The fake server reads the request, writes a canned answer (maybe only
 * part of what it announces) and may close once it is written. The test's user holds the bytes it
 * is handed for as long as a test says (no up_resume), as a slow client makes the proxy do, so what
 * the pool does with an EOF that arrives meanwhile is deterministic: no socket buffer sizes or
 * timing are involved. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <uv.h>

#include "rig.h"
#include "upstream.h"

/* ---- the user: records what the pool tells it, resumes only when told ---- */

typedef struct {
    up_user_t user;
    up_conn_t *conn;
    int hold; /* do not resume from callbacks */
    int heads, dones, errors;
    up_err_t err;
    char body[4096];
    size_t body_len;
    int held;        /* bytes handed out and not resumed */
    const char *req; /* the request's first write (a GET if NULL) */
    int req_last;    /* ... and whether it is the whole request */
} user_t;

static user_t *U(up_user_t *u)
{
    return (user_t *)u;
}

static void u_on_conn(up_user_t *u, up_conn_t *c)
{
    static const char get[] = "GET /x HTTP/1.1\r\nHost: m\r\n\r\n";
    user_t *x = U(u);
    x->conn = c;
    const char *req = x->req ? x->req : get;
    uv_buf_t b = uv_buf_init((char *)req, (unsigned)strlen(req));
    assert_int_equal(up_write(c, &b, 1, x->req ? x->req_last : 1), 0);
}

static void u_on_sent(up_user_t *u, up_conn_t *c)
{
    (void)u;
    (void)c;
}

static void u_handed(user_t *x, up_conn_t *c)
{
    if (x->hold)
        x->held = 1;
    else
        up_resume(c);
}

static void u_on_head(up_user_t *u, up_conn_t *c, const up_resp_t *r)
{
    (void)r;
    U(u)->heads++;
    u_handed(U(u), c);
}

static void u_on_body(up_user_t *u, up_conn_t *c, const char *p, size_t n)
{
    user_t *x = U(u);
    assert_true(x->body_len + n <= sizeof(x->body));
    memcpy(x->body + x->body_len, p, n);
    x->body_len += n;
    u_handed(x, c);
}

static void u_on_done(up_user_t *u, up_conn_t *c)
{
    (void)c;
    U(u)->dones++;
}

static int u_on_error(up_user_t *u, up_conn_t *c, up_err_t kind, int reused)
{
    (void)c;
    (void)reused;
    U(u)->errors++;
    U(u)->err = kind;
    U(u)->conn = NULL;
    return 0;
}

static const up_user_ops_t user_ops = {u_on_conn, u_on_sent, u_on_head,
                                       u_on_body, u_on_done, u_on_error};

/* ---- running ---- */

typedef struct {
    uv_loop_t loop;
    rig_model_t model;
    up_pool_t *pool;
    user_t user;
} ex_t;

/* close_after: the model closes each connection once its answer is written. */
static void ex_start_mode(ex_t *t, const char *answer, int mode, int hold, const char *req,
                          int req_last)
{
    memset(t, 0, sizeof(*t));
    assert_int_equal(uv_loop_init(&t->loop), 0);
    rig_model_start(&t->loop, &t->model, mode, answer);
    cfg_upstream_t cfg = {.pool = 4, .connect_timeout_ms = 2000, .timeout_ms = 5000};
    strcpy(cfg.name, "model");
    strcpy(cfg.addr.host, "127.0.0.1");
    cfg.addr.port = t->model.port;
    snprintf(cfg.host_header, sizeof(cfg.host_header), "127.0.0.1:%d", t->model.port);
    char err[256];
    t->pool = up_pool_create(&t->loop, &cfg, NULL, err, sizeof(err));
    assert_non_null(t->pool);
    t->user.user.ops = &user_ops;
    t->user.hold = hold;
    t->user.req = req;
    t->user.req_last = req_last;
    up_acquire(t->pool, &t->user.user);
}

static void ex_start(ex_t *t, const char *answer, int close_after, int hold)
{
    ex_start_mode(t, answer, close_after ? MODEL_ANSWER_CLOSE : MODEL_ANSWER, hold, NULL, 1);
}

static void run_until_done(ex_t *t)
{
    for (int i = 0; i < 500 && t->user.dones == 0; i++) {
        uv_run(&t->loop, UV_RUN_NOWAIT);
        uv_sleep(1);
    }
    assert_int_equal(t->user.dones, 1);
    assert_int_equal(t->user.errors, 0);
}

/* The EOF has surely been read by the pool: the model answered and closed
 * its connection, and the loop ran some more passes after that (loopback:
 * a few ms are plenty). */
static void run_past_eof(ex_t *t)
{
    for (int i = 0; i < 1000 && !(t->model.requests == 1 && t->model.conns == NULL); i++) {
        uv_run(&t->loop, UV_RUN_NOWAIT);
        uv_sleep(2);
    }
    assert_int_equal(t->model.requests, 1);
    assert_null(t->model.conns);
    for (int i = 0; i < 20; i++) {
        uv_run(&t->loop, UV_RUN_NOWAIT);
        uv_sleep(1);
    }
}

static void ex_stop(ex_t *t)
{
    if (t->user.conn) up_release(t->user.conn, 1);
    up_pool_release(t->pool);
    rig_model_stop(&t->model);
    uv_run(&t->loop, UV_RUN_DEFAULT);
    rig_model_free(&t->model);
    assert_int_equal(uv_loop_close(&t->loop), 0);
}

/* Hand out whatever the pool holds until it has nothing more to say. */
static void drain(ex_t *t)
{
    t->user.hold = 0;
    while (t->user.held && t->user.conn) {
        t->user.held = 0;
        up_resume(t->user.conn);
    }
    for (int i = 0; i < 20; i++) uv_run(&t->loop, UV_RUN_NOWAIT);
}

#define WHOLE "HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\n0123456789"

/* A whole answer and then the server's close, while the user still held
 * the head (a slow client): the EOF must not cut it off. */
static void test_eof_after_whole_answer_while_held(void **state)
{
    (void)state;
    ex_t t;
    ex_start(&t, WHOLE, 1, 1);
    run_past_eof(&t);
    assert_int_equal(t.user.heads, 1);
    assert_int_equal(t.user.errors, 0);
    drain(&t);
    assert_int_equal(t.user.errors, 0);
    assert_int_equal(t.user.dones, 1);
    assert_int_equal(t.user.body_len, 10);
    assert_memory_equal(t.user.body, "0123456789", 10);
    ex_stop(&t);
}

/* The same answer, the user taking everything as it comes: done at once,
 * and the close afterwards is no error either. */
static void test_eof_after_whole_answer_taken(void **state)
{
    (void)state;
    ex_t t;
    ex_start(&t, WHOLE, 1, 0);
    run_past_eof(&t);
    assert_int_equal(t.user.errors, 0);
    assert_int_equal(t.user.dones, 1);
    assert_int_equal(t.user.body_len, 10);
    ex_stop(&t);
}

/* An answer cut off (10 bytes announced, 4 sent, then a close) while held:
 * the 4 bytes are handed on, then the exchange fails as reset. */
static void test_eof_cuts_answer_while_held(void **state)
{
    (void)state;
    ex_t t;
    ex_start(&t, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123", 1, 1);
    run_past_eof(&t);
    assert_int_equal(t.user.errors, 0); /* not before the held bytes went on */
    drain(&t);
    assert_int_equal(t.user.dones, 0);
    assert_int_equal(t.user.errors, 1);
    assert_int_equal(t.user.err, UP_ERR_RESET);
    assert_int_equal(t.user.body_len, 4);
    ex_stop(&t);
}

/* A body delimited by the close, held meanwhile: complete after resuming. */
static void test_eof_ends_close_delimited_body_while_held(void **state)
{
    (void)state;
    ex_t t;
    ex_start(&t, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabcdef", 1, 1);
    run_past_eof(&t);
    assert_int_equal(t.user.errors, 0);
    drain(&t);
    assert_int_equal(t.user.errors, 0);
    assert_int_equal(t.user.dones, 1);
    assert_int_equal(t.user.body_len, 6);
    assert_memory_equal(t.user.body, "abcdef", 6);
    ex_stop(&t);
}

/* A chunked answer, whole, then a close while held. */
static void test_eof_after_whole_chunked_answer_while_held(void **state)
{
    (void)state;
    ex_t t;
    ex_start(&t, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 1,
             1);
    run_past_eof(&t);
    assert_int_equal(t.user.errors, 0);
    drain(&t);
    assert_int_equal(t.user.errors, 0);
    assert_int_equal(t.user.dones, 1);
    ex_stop(&t);
}

/* A keep-alive answer and no close: done, and the connection goes back to
 * the pool idle (the control case for the tests above). */
static void test_keep_alive_answer_is_pooled(void **state)
{
    (void)state;
    ex_t t;
    ex_start(&t, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 0, 0);
    run_until_done(&t);
    up_release(t.user.conn, 1);
    t.user.conn = NULL;
    up_pool_stats_t st;
    up_pool_stats(t.pool, &st);
    assert_int_equal(st.idle, 1);
    ex_stop(&t);
}

/* A keep-alive answer to a request whose body was still to come (the
 * server answered from the head, as with a 413 or a 503): whether the
 * server will ever read the rest is unknown, so once the rest is written
 * the connection is closed, not pooled; the next request on it could wait
 * behind an unread body. nginx's upstream keepalive gives such a
 * connection up too. */
static void test_answer_before_the_whole_request_is_not_pooled(void **state)
{
    (void)state;
    ex_t t;
    ex_start_mode(&t, "HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy", MODEL_ANSWER_EARLY, 0,
                  "POST /x HTTP/1.1\r\nHost: m\r\nContent-Length: 6\r\n\r\n", 0);
    run_until_done(&t);
    uv_buf_t rest = uv_buf_init("abcdef", 6);
    assert_int_equal(up_write(t.user.conn, &rest, 1, 1), 0);
    up_release(t.user.conn, 1);
    t.user.conn = NULL;
    for (int i = 0; i < 20; i++) uv_run(&t.loop, UV_RUN_NOWAIT); /* the close completes */
    up_pool_stats_t st;
    up_pool_stats(t.pool, &st);
    assert_int_equal(st.idle, 0);
    assert_int_equal(st.open, 0);
    ex_stop(&t);
}

/* The number of rig connections a model holds open. */
static int model_conns(const rig_model_t *m)
{
    int n = 0;
    for (const rig_mconn_t *c = m->conns; c; c = c->next) n++;
    return n;
}

/* A pool over two addresses (a name's two A records; two ports of
 * 127.0.0.1 here): exchanges take them in turn, each address's connection
 * kept alive and reused for its turns. */
/* Two models on two addresses of one pool (ports of 127.0.0.1 stand for a
 * name's A records), answering answer_a and answer_b. */
typedef struct {
    uv_loop_t loop;
    rig_model_t a, b;
    up_pool_t *pool;
} pair_t;

static void pair_start(pair_t *t, const char *answer_a, const char *answer_b, int eject)
{
    assert_int_equal(uv_loop_init(&t->loop), 0);
    rig_model_start(&t->loop, &t->a, MODEL_ANSWER, answer_a);
    rig_model_start(&t->loop, &t->b, MODEL_ANSWER, answer_b);
    cfg_upstream_t cfg = {.pool = 4,
                          .connect_timeout_ms = 2000,
                          .timeout_ms = 5000,
                          .eject_consecutive_5xx = eject,
                          .eject_base_ms = 60000};
    strcpy(cfg.name, "model");
    strcpy(cfg.addr.host, "model.internal");
    mm_addrs_t addrs = {.n = 2};
    uv_ip4_addr("127.0.0.1", t->a.port, (struct sockaddr_in *)&addrs.a[0]);
    uv_ip4_addr("127.0.0.1", t->b.port, (struct sockaddr_in *)&addrs.a[1]);
    char err[256];
    t->pool = up_pool_create(&t->loop, &cfg, &addrs, err, sizeof(err));
    assert_non_null(t->pool);
}

/* One whole exchange, the connection given back. */
static void pair_exchange(pair_t *t)
{
    user_t u;
    memset(&u, 0, sizeof(u));
    u.user.ops = &user_ops;
    up_acquire(t->pool, &u.user);
    for (int k = 0; k < 500 && u.dones == 0; k++) {
        uv_run(&t->loop, UV_RUN_NOWAIT);
        uv_sleep(1);
    }
    assert_int_equal(u.dones, 1);
    up_release(u.conn, 1);
}

static void pair_stop(pair_t *t)
{
    up_pool_release(t->pool);
    rig_model_stop(&t->a);
    rig_model_stop(&t->b);
    uv_run(&t->loop, UV_RUN_DEFAULT);
    rig_model_free(&t->a);
    rig_model_free(&t->b);
    assert_int_equal(uv_loop_close(&t->loop), 0);
}

#define OK200  "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
#define ERR503 "HTTP/1.1 503 Busy\r\nContent-Length: 2\r\n\r\nno"

/* Exchanges take the addresses in turn, each address's connection kept
 * alive and reused for its turns. */
static void test_exchanges_take_the_addresses_in_turn(void **state)
{
    (void)state;
    pair_t t;
    pair_start(&t, OK200, OK200, 0);
    up_pool_stats_t st;
    up_pool_stats(t.pool, &st);
    assert_int_equal(st.addresses, 2);
    for (int i = 0; i < 6; i++) pair_exchange(&t);
    assert_int_equal(t.a.requests, 3);
    assert_int_equal(t.b.requests, 3);
    assert_int_equal(model_conns(&t.a), 1);
    assert_int_equal(model_conns(&t.b), 1);
    up_pool_stats(t.pool, &st);
    assert_int_equal(st.connects, 2);
    assert_int_equal(st.idle, 2);
    pair_stop(&t);
}

/* An address that fails eject.consecutive_5xx times in a row is skipped:
 * the other takes every exchange; when both fail, the last standing is
 * never ejected. */
static void test_an_address_that_keeps_failing_is_ejected_alone(void **state)
{
    (void)state;
    pair_t t;
    pair_start(&t, ERR503, OK200, 2);
    for (int i = 0; i < 10; i++) pair_exchange(&t);
    assert_int_equal(t.a.requests, 2); /* its turns 1 and 3: ejected after the second */
    assert_int_equal(t.b.requests, 8);
    up_pool_stats_t st;
    up_pool_stats(t.pool, &st);
    assert_int_equal(st.address_ejections, 1);
    assert_int_equal(model_conns(&t.a), 0); /* its idle connection closed */
    pair_stop(&t);

    pair_start(&t, ERR503, ERR503, 2);
    for (int i = 0; i < 10; i++) pair_exchange(&t);
    up_pool_stats(t.pool, &st);
    assert_int_equal(st.address_ejections, 1);
    assert_int_equal(t.a.requests + t.b.requests, 10);
    pair_stop(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_eof_after_whole_answer_while_held),
        cmocka_unit_test(test_eof_after_whole_answer_taken),
        cmocka_unit_test(test_eof_cuts_answer_while_held),
        cmocka_unit_test(test_eof_ends_close_delimited_body_while_held),
        cmocka_unit_test(test_eof_after_whole_chunked_answer_while_held),
        cmocka_unit_test(test_keep_alive_answer_is_pooled),
        cmocka_unit_test(test_answer_before_the_whole_request_is_not_pooled),
        cmocka_unit_test(test_exchanges_take_the_addresses_in_turn),
        cmocka_unit_test(test_an_address_that_keeps_failing_is_ejected_alone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
