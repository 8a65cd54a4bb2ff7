/* test_addr.c — socket addresses of configured hosts (addr.h).
 *
 * What the rest of modelmux relies on: numeric hosts are taken as they are
 * (no lookup), "localhost" is 127.0.0.1 whatever the resolver says, an
 * answer with both families gives its IPv4 address (Envoy's V4_PREFERRED),
 * the configured port is put in network order, and two addresses compare
 * equal only with the same family, address and port. No name is looked up
 * through DNS: the answers mm_addr_pick sees are built by hand. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <arpa/inet.h>
#include <netdb.h>

#include <cmocka.h>

#include "addr.h"

static cfg_addr_t addr(const char *host, int port)
{
    cfg_addr_t a;
    memset(&a, 0, sizeof(a));
    snprintf(a.host, sizeof(a.host), "%s", host);
    a.port = port;
    return a;
}

static void assert_formats(const struct sockaddr_storage *ss, const char *want)
{
    char out[80];
    mm_addr_format(ss, out, sizeof(out));
    assert_string_equal(out, want);
}

static void test_numeric_hosts_are_literal(void **state)
{
    (void)state;
    struct sockaddr_storage ss;
    cfg_addr_t a = addr("10.1.2.3", 8080);
    assert_int_equal(mm_addr_literal(&a, &ss), 0);
    assert_int_equal(ss.ss_family, AF_INET);
    const struct sockaddr_in *in = (const void *)&ss;
    assert_int_equal(in->sin_port, htons(8080));
    assert_int_equal(in->sin_addr.s_addr, htonl(0x0a010203));
    assert_formats(&ss, "10.1.2.3:8080");
    assert_false(mm_addr_is_name(&a));

    a = addr("::1", 9090);
    assert_int_equal(mm_addr_literal(&a, &ss), 0);
    assert_int_equal(ss.ss_family, AF_INET6);
    assert_int_equal(((const struct sockaddr_in6 *)&ss)->sin6_port, htons(9090));
    assert_formats(&ss, "[::1]:9090");
    assert_false(mm_addr_is_name(&a));
}

/* "localhost" (any case) is 127.0.0.1: listeners have always bound it, and
 * it must not become ::1 where the resolver sorts that first. */
static void test_localhost_is_ipv4_loopback(void **state)
{
    (void)state;
    struct sockaddr_storage ss;
    const char *names[] = {"localhost", "LocalHost"};
    for (size_t i = 0; i < 2; i++) {
        cfg_addr_t a = addr(names[i], 6379);
        assert_int_equal(mm_addr_literal(&a, &ss), 0);
        assert_formats(&ss, "127.0.0.1:6379");
        assert_false(mm_addr_is_name(&a));
        assert_int_equal(mm_addr_resolve(&a, &ss), 0);
        assert_formats(&ss, "127.0.0.1:6379");
    }
}

static void test_names_need_a_lookup(void **state)
{
    (void)state;
    struct sockaddr_storage ss;
    /* only full dotted quads and IPv6 literals are numeric */
    const char *names[] = {"model.internal", "localhost.", "127.0.0.1.", "1.2.3", "[::1]", ""};
    for (size_t i = 0; i < MM_ARRAY_LEN(names); i++) {
        cfg_addr_t a = addr(names[i], 80);
        assert_int_equal(mm_addr_literal(&a, &ss), -1);
        assert_true(mm_addr_is_name(&a));
    }
}

/* Hand-built getaddrinfo answers. */
typedef struct {
    struct addrinfo ai[3];
    struct sockaddr_in v4;
    struct sockaddr_in6 v6;
} answer_t;

static struct addrinfo *answer(answer_t *x, const char *order)
{
    memset(x, 0, sizeof(*x));
    uv_ip4_addr("192.0.2.7", 0, &x->v4);
    uv_ip6_addr("2001:db8::7", 0, &x->v6);
    size_t n = strlen(order);
    for (size_t i = 0; i < n; i++) {
        struct addrinfo *a = &x->ai[i];
        if (order[i] == '4') {
            a->ai_family = AF_INET;
            a->ai_addr = (struct sockaddr *)&x->v4;
            a->ai_addrlen = sizeof(x->v4);
        } else {
            a->ai_family = AF_INET6;
            a->ai_addr = (struct sockaddr *)&x->v6;
            a->ai_addrlen = sizeof(x->v6);
        }
        a->ai_next = i + 1 < n ? &x->ai[i + 1] : NULL;
    }
    return n ? &x->ai[0] : NULL;
}

static void test_pick_prefers_ipv4(void **state)
{
    (void)state;
    answer_t x;
    struct addrinfo *res = answer(&x, "664");
    assert_ptr_equal(mm_addr_pick(res), &x.ai[2]);
    res = answer(&x, "46");
    assert_ptr_equal(mm_addr_pick(res), &x.ai[0]);
    res = answer(&x, "66");
    assert_ptr_equal(mm_addr_pick(res), &x.ai[0]); /* no IPv4: the first */
    assert_null(mm_addr_pick(NULL));
}

static void test_from_ai_sets_the_port(void **state)
{
    (void)state;
    answer_t x;
    struct sockaddr_storage ss;
    assert_int_equal(mm_addr_from_ai(answer(&x, "64"), 7001, &ss), 0);
    assert_formats(&ss, "192.0.2.7:7001");
    assert_int_equal(mm_addr_from_ai(answer(&x, "6"), 7002, &ss), 0);
    assert_formats(&ss, "[2001:db8::7]:7002");
    assert_int_equal(mm_addr_from_ai(NULL, 80, &ss), -1);
    /* a family that is neither: refused, not used with a wrong port */
    struct addrinfo *res = answer(&x, "4");
    x.v4.sin_family = AF_UNIX;
    assert_int_equal(mm_addr_from_ai(res, 80, &ss), -1);
}

/* An answer of several addresses: one family (IPv4 first), each once, in
 * order, with the port; a set of one for a literal. */
static void test_sets_hold_every_address_of_one_family_once_in_order(void **state)
{
    (void)state;
    const char *ips[] = {"192.0.2.9", "2001:db8::1", "192.0.2.3", "192.0.2.9", "192.0.2.5"};
    struct addrinfo ai[5];
    struct sockaddr_storage ss[5];
    memset(ai, 0, sizeof(ai));
    for (int i = 0; i < 5; i++) {
        memset(&ss[i], 0, sizeof(ss[i]));
        int v6 = strchr(ips[i], ':') != NULL;
        if (v6)
            uv_ip6_addr(ips[i], 0, (struct sockaddr_in6 *)&ss[i]);
        else
            uv_ip4_addr(ips[i], 0, (struct sockaddr_in *)&ss[i]);
        ai[i].ai_family = v6 ? AF_INET6 : AF_INET;
        ai[i].ai_addr = (struct sockaddr *)&ss[i];
        ai[i].ai_addrlen = v6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
        ai[i].ai_next = i < 4 ? &ai[i + 1] : NULL;
    }
    mm_addrs_t set;
    assert_int_equal(mm_addrs_from_ai(ai, 7001, &set), 0);
    char text[256];
    mm_addrs_format(&set, text, sizeof(text));
    assert_string_equal(text, "192.0.2.3:7001, 192.0.2.5:7001, 192.0.2.9:7001");
    /* the same addresses in another order: an equal set */
    mm_addrs_t again;
    ai[0].ai_next = &ai[1];
    struct addrinfo *reversed = &ai[2];
    ai[4].ai_next = &ai[0];
    ai[1].ai_next = NULL;
    assert_int_equal(mm_addrs_from_ai(reversed, 7001, &again), 0);
    assert_true(mm_addrs_equal(&set, &again));
    assert_int_equal(mm_addrs_from_ai(reversed, 7002, &again), 0);
    assert_false(mm_addrs_equal(&set, &again));
    /* cut short in a small buffer */
    mm_addrs_format(&set, text, 20);
    assert_string_equal(text, "192.0.2.3:7001, ...");
    assert_int_equal(mm_addrs_from_ai(NULL, 80, &set), -1);
    /* a literal: a set of one, without a lookup */
    cfg_addr_t lit = {.host = "10.1.2.3", .port = 80};
    assert_int_equal(mm_addrs_resolve(&lit, &set), 0);
    assert_int_equal(set.n, 1);
    mm_addrs_format(&set, text, sizeof(text));
    assert_string_equal(text, "10.1.2.3:80");
}

static void test_equal_needs_family_address_and_port(void **state)
{
    (void)state;
    struct sockaddr_storage a, b;
    cfg_addr_t x = addr("127.0.0.1", 80), y = addr("127.0.0.1", 80);
    mm_addr_literal(&x, &a);
    mm_addr_literal(&y, &b);
    assert_true(mm_addr_equal(&a, &b));
    y = addr("127.0.0.1", 81);
    mm_addr_literal(&y, &b);
    assert_false(mm_addr_equal(&a, &b));
    y = addr("127.0.0.2", 80);
    mm_addr_literal(&y, &b);
    assert_false(mm_addr_equal(&a, &b));
    y = addr("::ffff:127.0.0.1", 80); /* the same host, another family */
    mm_addr_literal(&y, &b);
    assert_false(mm_addr_equal(&a, &b));
    x = addr("::1", 80);
    y = addr("::1", 80);
    mm_addr_literal(&x, &a);
    mm_addr_literal(&y, &b);
    assert_true(mm_addr_equal(&a, &b));
    y = addr("::2", 80);
    mm_addr_literal(&y, &b);
    assert_false(mm_addr_equal(&a, &b));
    /* link-local: the same address on another interface is another host */
    mm_addr_literal(&x, &a);
    b = a;
    ((struct sockaddr_in6 *)&b)->sin6_scope_id = ((struct sockaddr_in6 *)&a)->sin6_scope_id + 1;
    assert_false(mm_addr_equal(&a, &b));
}

/* The lookup off the loop gives what mm_addr_from_ai turns into the
 * address to connect to (a numeric host: no DNS involved). */
typedef struct {
    int status, done;
    struct sockaddr_storage ss;
    int rc;
} lookup_t;

static void on_lookup(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    lookup_t *l = req->data;
    l->status = status;
    l->rc = mm_addr_from_ai(res, 7003, &l->ss);
    l->done = 1;
    uv_freeaddrinfo(res);
}

static void test_lookup_in_the_thread_pool(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    uv_getaddrinfo_t req;
    lookup_t l = {0};
    req.data = &l;
    assert_int_equal(mm_addr_lookup(&loop, &req, on_lookup, "127.0.0.1"), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_true(l.done);
    assert_int_equal(l.status, 0);
    assert_int_equal(l.rc, 0);
    assert_formats(&l.ss, "127.0.0.1:7003");
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_numeric_hosts_are_literal),
        cmocka_unit_test(test_localhost_is_ipv4_loopback),
        cmocka_unit_test(test_names_need_a_lookup),
        cmocka_unit_test(test_pick_prefers_ipv4),
        cmocka_unit_test(test_from_ai_sets_the_port),
        cmocka_unit_test(test_sets_hold_every_address_of_one_family_once_in_order),
        cmocka_unit_test(test_equal_needs_family_address_and_port),
        cmocka_unit_test(test_lookup_in_the_thread_pool),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
