/* test_sentinel.c — asking Redis Sentinels where the primary is
 * (src/sentinel.c), against fake Sentinels on the test's own loop.
 *
 * The first node that names an address answers, and is asked first the
 * next time; a node that refuses the connection, does not know the name
 * (nil) or stays silent past the timeout is skipped, and when every node
 * was, the answer is no address with each node's reason; the callback never
 * runs inside sentinel_ask; a question dropped by sentinel_close never
 * answers, and the client is freed (ASan) once closed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "ports.h"
#include "sentinel.h"

enum { ANSWER, NIL, SILENT };

/* A fake Sentinel: answers every question it reads as `mode` says. */
typedef struct {
    uv_tcp_t listener;
    int port, mode, questions;
    const char *password; /* non-NULL: AUTH with it first (requirepass) */
    int authed;
    uv_tcp_t *conns[8];
    int n_conns;
} fake_t;

typedef struct {
    uv_tcp_t tcp;
    fake_t *f;
    int slot; /* in f->conns, or -1 */
    char buf[512];
} fake_conn_t;

static void fake_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    fake_conn_t *c = h->data;
    (void)hint;
    *b = uv_buf_init(c->buf, sizeof(c->buf));
}

static void fake_conn_closed(uv_handle_t *h)
{
    fake_conn_t *c = h->data;
    if (c->slot >= 0) c->f->conns[c->slot] = NULL;
    free(c);
}

static void fake_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    fake_conn_t *c = s->data;
    if (n < 0) {
        if (!uv_is_closing((uv_handle_t *)s)) uv_close((uv_handle_t *)s, fake_conn_closed);
        return;
    }
    if (n == 0) return;
    if (c->f->password && memmem(b->base, (size_t)n, "AUTH", 4) != NULL) {
        int ok = memmem(b->base, (size_t)n, c->f->password, strlen(c->f->password)) != NULL;
        static char yes[] = "+OK\r\n", no[] = "-WRONGPASS invalid username-password pair\r\n";
        uv_buf_t out = ok ? uv_buf_init(yes, sizeof(yes) - 1) : uv_buf_init(no, sizeof(no) - 1);
        uv_try_write(s, &out, 1);
        c->f->authed = ok;
    }
    if (memmem(b->base, (size_t)n, "get-master-addr-by-name", 23) == NULL) return;
    c->f->questions++;
    if (c->f->password && !c->f->authed) {
        static char noauth[] = "-NOAUTH Authentication required.\r\n";
        uv_buf_t out = uv_buf_init(noauth, sizeof(noauth) - 1);
        uv_try_write(s, &out, 1);
        return;
    }
    static char answer[] = "*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n";
    static char nil[] = "*-1\r\n";
    if (c->f->mode == SILENT) return;
    uv_buf_t out = c->f->mode == ANSWER ? uv_buf_init(answer, sizeof(answer) - 1)
                                        : uv_buf_init(nil, sizeof(nil) - 1);
    uv_try_write(s, &out, 1);
}

static void fake_accept(uv_stream_t *server, int status)
{
    fake_t *f = server->data;
    assert_int_equal(status, 0);
    fake_conn_t *c = calloc(1, sizeof(*c));
    c->f = f;
    uv_tcp_init(server->loop, &c->tcp);
    c->tcp.data = c;
    assert_int_equal(uv_accept(server, (uv_stream_t *)&c->tcp), 0);
    c->slot = f->n_conns < 8 ? f->n_conns : -1;
    if (c->slot >= 0) f->conns[f->n_conns++] = &c->tcp;
    uv_read_start((uv_stream_t *)&c->tcp, fake_alloc, fake_read);
}

static void fake_start(uv_loop_t *loop, fake_t *f, int mode)
{
    memset(f, 0, sizeof(*f));
    f->mode = mode;
    uv_tcp_init(loop, &f->listener);
    f->listener.data = f;
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    assert_int_equal(uv_tcp_bind(&f->listener, (struct sockaddr *)&a, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&f->listener, 16, fake_accept), 0);
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    uv_tcp_getsockname(&f->listener, (struct sockaddr *)&ss, &len);
    f->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void fake_stop(fake_t *f)
{
    uv_close((uv_handle_t *)&f->listener, NULL);
    for (int i = 0; i < f->n_conns; i++)
        if (f->conns[i] && !uv_is_closing((uv_handle_t *)f->conns[i]))
            uv_close((uv_handle_t *)f->conns[i], fake_conn_closed);
}

typedef struct {
    int calls, port, closed;
    char host[64], why[512];
} answer_t;

static void on_answer(void *arg, const char *host, int port, const char *why)
{
    answer_t *a = arg;
    a->calls++;
    a->port = port;
    snprintf(a->host, sizeof(a->host), "%s", host ? host : "");
    snprintf(a->why, sizeof(a->why), "%s", why ? why : "");
}

static void on_closed(void *arg)
{
    ((answer_t *)arg)->closed = 1;
}

/* Sentinel settings for master "mm" and no nodes yet. */
static cfg_store_t *master_mm(cfg_store_t *c)
{
    memset(c, 0, sizeof(*c));
    snprintf(c->sentinel_master, sizeof(c->sentinel_master), "mm");
    return c;
}

static void node(cfg_store_t *c, int port)
{
    snprintf(c->sentinels[c->n_sentinels].host, sizeof(c->sentinels[0].host), "127.0.0.1");
    c->sentinels[c->n_sentinels++].port = port;
}

static void run_until(uv_loop_t *loop, const int *flag)
{
    for (int i = 0; i < 100000 && !*flag; i++) uv_run(loop, UV_RUN_ONCE);
    assert_true(*flag);
}

static void close_and_finish(uv_loop_t *loop, sentinel_t *s, answer_t *a, fake_t *fakes, int n)
{
    sentinel_close(s, on_closed, a);
    for (int i = 0; i < n; i++) fake_stop(&fakes[i]);
    uv_run(loop, UV_RUN_DEFAULT);
    assert_true(a->closed);
    assert_int_equal(uv_loop_close(loop), 0);
}

static void test_the_first_node_that_names_an_address_answers(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    fake_t fakes[2];
    fake_start(&loop, &fakes[0], NIL);
    fake_start(&loop, &fakes[1], ANSWER);
    static cfg_store_t c;
    master_mm(&c);
    node(&c, test_free_port());
    node(&c, fakes[0].port);
    node(&c, fakes[1].port);
    sentinel_t *s = sentinel_new(&loop, &c, 2000);
    answer_t a = {0};
    sentinel_ask(s, on_answer, &a);
    assert_int_equal(a.calls, 0); /* never inside sentinel_ask */
    run_until(&loop, &a.calls);
    assert_int_equal(a.calls, 1);
    assert_string_equal(a.host, "127.0.0.1");
    assert_int_equal(a.port, 6380);
    assert_int_equal(fakes[0].questions, 1);
    assert_int_equal(fakes[1].questions, 1);
    /* Asked again: the node that answered is asked first. */
    sentinel_ask(s, on_answer, &a);
    for (int i = 0; i < 100000 && a.calls < 2; i++) uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(a.calls, 2);
    assert_int_equal(fakes[0].questions, 1);
    assert_int_equal(fakes[1].questions, 2);
    close_and_finish(&loop, s, &a, fakes, 2);
}

static void test_every_node_failing_is_no_address_with_each_reason(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    fake_t fakes[2];
    fake_start(&loop, &fakes[0], NIL);
    fake_start(&loop, &fakes[1], SILENT);
    static cfg_store_t c;
    master_mm(&c);
    int refused = test_free_port();
    node(&c, refused);
    node(&c, fakes[0].port);
    node(&c, fakes[1].port);
    sentinel_t *s = sentinel_new(&loop, &c, 200);
    answer_t a = {0};
    sentinel_ask(s, on_answer, &a);
    run_until(&loop, &a.calls);
    assert_string_equal(a.host, "");
    char want[512];
    snprintf(want, sizeof(want),
             "127.0.0.1:%d: Connection refused; 127.0.0.1:%d: does not know a master named mm; "
             "127.0.0.1:%d: no answer within 200 ms",
             refused, fakes[0].port, fakes[1].port);
    assert_string_equal(a.why, want);
    close_and_finish(&loop, s, &a, fakes, 2);
}

static void test_a_closed_client_never_answers(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    fake_t fakes[1];
    fake_start(&loop, &fakes[0], SILENT);
    static cfg_store_t c;
    master_mm(&c);
    node(&c, fakes[0].port);
    sentinel_t *s = sentinel_new(&loop, &c, 2000);
    answer_t a = {0};
    sentinel_ask(s, on_answer, &a);
    for (int i = 0; i < 100000 && fakes[0].questions == 0; i++) /* asked, waiting */
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(fakes[0].questions, 1);
    close_and_finish(&loop, s, &a, fakes, 1);
    assert_int_equal(a.calls, 0);
}

/* store.sentinel.password: AUTH first; a node that refuses it is skipped
 * with its answer, one that takes it answers. */
static void test_auth_is_sent_first_and_a_refusal_skips_the_node(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    fake_t fakes[2];
    fake_start(&loop, &fakes[0], ANSWER);
    fake_start(&loop, &fakes[1], ANSWER);
    fakes[0].password = "other";
    fakes[1].password = "s3nt";
    static cfg_store_t c;
    master_mm(&c);
    snprintf(c.sentinel_password, sizeof(c.sentinel_password), "s3nt");
    node(&c, fakes[0].port);
    node(&c, fakes[1].port);
    sentinel_t *s = sentinel_new(&loop, &c, 2000);
    answer_t a = {0};
    sentinel_ask(s, on_answer, &a);
    run_until(&loop, &a.calls);
    assert_string_equal(a.host, "127.0.0.1");
    assert_int_equal(a.port, 6380);
    assert_true(fakes[1].authed);
    /* the first node's refusal was not an answer; asked alone, it is the reason */
    static cfg_store_t alone;
    alone = c;
    alone.n_sentinels = 1;
    sentinel_t *s1 = sentinel_new(&loop, &alone, 2000);
    answer_t b = {0};
    sentinel_ask(s1, on_answer, &b);
    run_until(&loop, &b.calls);
    char want[256];
    snprintf(want, sizeof(want),
             "127.0.0.1:%d: AUTH refused: WRONGPASS invalid username-password pair", fakes[0].port);
    assert_string_equal(b.why, want);
    sentinel_close(s1, on_closed, &b);
    close_and_finish(&loop, s, &a, fakes, 2);
    assert_true(b.closed);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_the_first_node_that_names_an_address_answers),
        cmocka_unit_test(test_every_node_failing_is_no_address_with_each_reason),
        cmocka_unit_test(test_a_closed_client_never_answers),
        cmocka_unit_test(test_auth_is_sent_first_and_a_refusal_skips_the_node),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
