/* test_listeners.c — the data-plane and admin listeners, and their moves
 * (src/listeners.c).
 *
 * Staging the addresses listened on already binds nothing; staging a swap
 * passes each listener to the other role; committing a move closes the old
 * address and keeps the new one listening; an address another socket holds
 * fails the stage with the address's name and the reason, closes what the
 * stage had bound, and leaves the listeners as they were; an admin address
 * of NULL closes the admin listener. Whether an address listens is checked
 * with a connect() (the kernel completes it from the backlog; nothing is
 * accepted). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "listeners.h"
#include "ports.h"

/* The probes' connections are not accepted (libuv then stops polling the
 * listener until one is): only closes matter here. */
static void on_connection(uv_stream_t *server, int status)
{
    (void)server;
    (void)status;
}

static mm_listen_addr_t loopback(int port)
{
    mm_listen_addr_t a;
    memset(&a, 0, sizeof(a));
    uv_ip4_addr("127.0.0.1", port, (struct sockaddr_in *)&a.ss);
    snprintf(a.name, sizeof(a.name), "127.0.0.1:%d", port);
    return a;
}

static int port_of(uv_tcp_t *t)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    assert_int_equal(uv_tcp_getsockname(t, (struct sockaddr *)&ss, &len), 0);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

/* 1 if something listens on 127.0.0.1:port. */
static int listening(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return ok;
}

typedef struct {
    uv_loop_t loop;
    mm_listeners_t l;
    int data_port, admin_port;
} fixture_t;

/* Listeners on two ports the kernel picks. */
static void start(fixture_t *f)
{
    assert_int_equal(uv_loop_init(&f->loop), 0);
    f->l = (mm_listeners_t){&f->loop, on_connection, f, 0, NULL, NULL};
    mm_listen_addr_t any = loopback(0);
    mm_listen_stage_t st;
    char err[256];
    assert_int_equal(listeners_stage(&f->l, &any, &any, &st, err, sizeof(err)), 0);
    assert_non_null(st.fresh[0]);
    assert_non_null(st.fresh[1]);
    listeners_commit(&f->l, &st);
    f->data_port = port_of(f->l.data_l);
    f->admin_port = port_of(f->l.admin_l);
    assert_int_not_equal(f->data_port, f->admin_port);
}

static void finish(fixture_t *f)
{
    listeners_close(&f->l);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0); /* every handle closed (and freed: ASan) */
}

/* Stage data_port and admin_port (-1: no admin), which must succeed. */
static void stage_ok(fixture_t *f, int data_port, int admin_port, mm_listen_stage_t *st)
{
    mm_listen_addr_t d = loopback(data_port), a = loopback(admin_port < 0 ? 0 : admin_port);
    char err[256];
    assert_int_equal(listeners_stage(&f->l, &d, admin_port < 0 ? NULL : &a, st, err, sizeof(err)),
                     0);
}

static void test_the_same_addresses_keep_their_listeners(void **state)
{
    (void)state;
    fixture_t f;
    start(&f);
    uv_tcp_t *data = f.l.data_l, *admin = f.l.admin_l;
    mm_listen_stage_t st;
    stage_ok(&f, f.data_port, f.admin_port, &st);
    assert_ptr_equal(st.data_l, data);
    assert_ptr_equal(st.admin_l, admin);
    assert_null(st.fresh[0]);
    listeners_commit(&f.l, &st);
    uv_run(&f.loop, UV_RUN_NOWAIT);
    assert_true(listening(f.data_port));
    assert_true(listening(f.admin_port));
    finish(&f);
}

static void test_a_swap_passes_each_listener_to_the_other_role(void **state)
{
    (void)state;
    fixture_t f;
    start(&f);
    uv_tcp_t *data = f.l.data_l, *admin = f.l.admin_l;
    mm_listen_stage_t st;
    stage_ok(&f, f.admin_port, f.data_port, &st);
    assert_null(st.fresh[0]);
    listeners_commit(&f.l, &st);
    assert_ptr_equal(f.l.data_l, admin);
    assert_ptr_equal(f.l.admin_l, data);
    assert_true(listeners_is_admin(&f.l, (uv_stream_t *)data));
    assert_false(listeners_is_admin(&f.l, (uv_stream_t *)admin));
    finish(&f);
}

static void test_a_move_listens_on_the_new_address_and_closes_the_old(void **state)
{
    (void)state;
    fixture_t f;
    start(&f);
    uv_tcp_t *admin = f.l.admin_l;
    int moved = test_free_port();
    mm_listen_stage_t st;
    stage_ok(&f, moved, f.admin_port, &st);
    assert_non_null(st.fresh[0]);
    assert_null(st.fresh[1]);
    assert_true(listening(moved)); /* bound before the commit */
    assert_true(listening(f.data_port));
    listeners_commit(&f.l, &st);
    uv_run(&f.loop, UV_RUN_NOWAIT); /* the old listener's close */
    assert_false(listening(f.data_port));
    assert_true(listening(moved));
    assert_int_equal(port_of(f.l.data_l), moved);
    assert_ptr_equal(f.l.admin_l, admin);
    finish(&f);
}

static void test_a_port_held_elsewhere_fails_the_stage_and_changes_nothing(void **state)
{
    (void)state;
    fixture_t f;
    start(&f);
    uv_tcp_t *data = f.l.data_l, *admin = f.l.admin_l;
    int held_fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in h = {.sin_family = AF_INET};
    h.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(h);
    assert_int_equal(bind(held_fd, (struct sockaddr *)&h, sizeof(h)), 0);
    assert_int_equal(listen(held_fd, 1), 0);
    assert_int_equal(getsockname(held_fd, (struct sockaddr *)&h, &len), 0);
    int held = ntohs(h.sin_port), moved = test_free_port();
    /* The data address binds, then the admin one fails: the first is closed again. */
    mm_listen_addr_t d = loopback(moved), a = loopback(held);
    mm_listen_stage_t st;
    char err[256], want[256];
    assert_int_equal(listeners_stage(&f.l, &d, &a, &st, err, sizeof(err)), -1);
    snprintf(want, sizeof(want), "cannot listen on 127.0.0.1:%d: address already in use", held);
    assert_string_equal(err, want);
    uv_run(&f.loop, UV_RUN_NOWAIT);
    assert_false(listening(moved));
    assert_ptr_equal(f.l.data_l, data);
    assert_ptr_equal(f.l.admin_l, admin);
    assert_true(listening(f.data_port));
    assert_true(listening(f.admin_port));
    close(held_fd);
    finish(&f);
}

static void test_an_abort_closes_what_the_stage_bound(void **state)
{
    (void)state;
    fixture_t f;
    start(&f);
    int moved = test_free_port();
    mm_listen_stage_t st;
    stage_ok(&f, f.data_port, moved, &st);
    assert_true(listening(moved));
    listeners_abort(&st);
    uv_run(&f.loop, UV_RUN_NOWAIT);
    assert_false(listening(moved));
    assert_true(listening(f.admin_port));
    finish(&f);
}

static void test_no_admin_address_closes_the_admin_listener(void **state)
{
    (void)state;
    fixture_t f;
    start(&f);
    mm_listen_stage_t st;
    stage_ok(&f, f.data_port, -1, &st);
    listeners_commit(&f.l, &st);
    assert_null(f.l.admin_l);
    uv_run(&f.loop, UV_RUN_NOWAIT);
    assert_false(listening(f.admin_port));
    assert_true(listening(f.data_port));
    finish(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_the_same_addresses_keep_their_listeners),
        cmocka_unit_test(test_a_swap_passes_each_listener_to_the_other_role),
        cmocka_unit_test(test_a_move_listens_on_the_new_address_and_closes_the_old),
        cmocka_unit_test(test_a_port_held_elsewhere_fails_the_stage_and_changes_nothing),
        cmocka_unit_test(test_an_abort_closes_what_the_stage_bound),
        cmocka_unit_test(test_no_admin_address_closes_the_admin_listener),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
