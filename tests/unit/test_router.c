/* test_router.c — experiment matching (path prefix, host, headers; first
 * match wins), the sticky key taken from a header, cookie or query parameter
 * and hashed with the salt, and the operator's state applied before the
 * policy (promoted, rolled back). A real router over a config, no network. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <netdb.h>
#include <netinet/in.h>

#include "config.h"
#include "metrics.h"
#include "router.h"
#include "store.h"
#include "upstream.h"

static const char CONFIG[] =
    "{\"listen\": \"127.0.0.1:18999\",\n"
    " \"upstreams\": {\"champion\": {\"url\": \"http://127.0.0.1:1\"},\n"
    "               \"challenger\": {\"url\": \"http://127.0.0.1:2\"}},\n"
    " \"experiments\": [\n"
    "  {\"name\": \"kr\", \"match\": {\"path_prefix\": \"/v1/rank\", \"headers\": {\"X-Market\": "
    "\"KR\"}},\n"
    "   \"policy\": \"ab\", \"arms\": {\"champion\": 1, \"challenger\": 1},\n"
    "   \"sticky\": {\"header\": \"X-User-Id\"}, \"salt\": \"s1\"},\n"
    "  {\"name\": \"api\", \"match\": {\"path_prefix\": \"/v1/rank\", \"host\": \"api.example\"},\n"
    "   \"policy\": \"ab\", \"arms\": {\"champion\": 1, \"challenger\": 1},\n"
    "   \"sticky\": {\"cookie\": \"uid\"}},\n"
    "  {\"name\": \"rank\", \"match\": {\"path_prefix\": \"/v1/rank\"},\n"
    "   \"policy\": \"ab\", \"arms\": {\"champion\": 90, \"challenger\": 10},\n"
    "   \"sticky\": {\"query\": \"user\"}},\n"
    "  {\"name\": \"other\", \"match\": {\"path_prefix\": \"/v2/\"},\n"
    "   \"policy\": \"ab\", \"arms\": {\"champion\": 1}},\n"
    "  {\"name\": \"v6\", \"match\": {\"path_prefix\": \"/v6/\", \"host\": \"[::1]\"},\n"
    "   \"policy\": \"ab\", \"arms\": {\"champion\": 1}},\n"
    "  {\"name\": \"port\", \"match\": {\"path_prefix\": \"/p/\", \"host\": \"p.example:8080\"},\n"
    "   \"policy\": \"ab\", \"arms\": {\"champion\": 1}},\n"
    "  {\"name\": \"norm\", \"match\": {\"path_prefix\": \"/n//%78/./y\"},\n"
    "   \"policy\": \"ab\", \"arms\": {\"champion\": 1}}\n"
    " ]}\n";

typedef struct {
    uv_loop_t loop;
    store_t *store;
    metrics_t metrics;
    router_t *router;
    /* a request head in a buffer, as the parser would record it */
    char buf[1024];
    size_t len;
    http_head_t head;
} fx_t;

static int setup(void **state)
{
    fx_t *f = calloc(1, sizeof(*f));
    char err[512];
    uv_loop_init(&f->loop);
    cfg_store_t sc = {.type = STORE_MEMORY};
    f->store = store_create(&f->loop, &sc, err, sizeof(err));
    assert_non_null(f->store);
    metrics_init(&f->metrics);
    config_t *cfg = config_parse(CONFIG, sizeof(CONFIG) - 1, "router.json", err, sizeof(err));
    if (cfg == NULL) fail_msg("%s", err);
    f->router = router_create(&f->loop, cfg, NULL, f->store, &f->metrics, NULL, err, sizeof(err));
    assert_non_null(f->router);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx_t *f = *state;
    router_unref(f->router);
    store_destroy(f->store);
    metrics_free(&f->metrics);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    uv_loop_close(&f->loop);
    free(f);
    return 0;
}

/* Record header "name: value" pairs (NULL-terminated list) into f->head. */
static void headers(fx_t *f, const char *const *kv)
{
    http_head_reset(&f->head);
    f->len = 0;
    for (size_t i = 0; kv[i]; i += 2) {
        size_t nl = strlen(kv[i]), vl = strlen(kv[i + 1]);
        memcpy(f->buf + f->len, kv[i], nl);
        http_head_on_field(&f->head, (uint32_t)f->len, (uint32_t)nl);
        f->len += nl;
        memcpy(f->buf + f->len, kv[i + 1], vl);
        http_head_on_value(&f->head, (uint32_t)f->len, (uint32_t)vl);
        f->len += vl;
    }
}

static const char *match(fx_t *f, const char *url, const char *host, const char *const *kv)
{
    headers(f, kv);
    exp_rt_t *e = router_match(f->router, (mm_str_t){url, strlen(url)},
                               (mm_str_t){host, strlen(host)}, &f->head, f->buf);
    return e ? e->cfg->name : NULL;
}

static void test_first_matching_experiment_wins(void **state)
{
    fx_t *f = *state;
    const char *none[] = {NULL};
    const char *kr[] = {"x-market", "KR", NULL};
    const char *us[] = {"X-Market", "US", NULL};
    assert_string_equal(match(f, "/v1/rank", "h", kr), "kr"); /* header names case-insensitive */
    assert_string_equal(match(f, "/v1/rank", "h", us), "rank");
    assert_string_equal(match(f, "/v1/rank?q=1", "api.example:8080", none), "api");
    assert_string_equal(match(f, "/v1/rank", "API.Example", none), "api");
    assert_string_equal(match(f, "/v1/ranking/x", "other.example", none), "rank"); /* a prefix */
    assert_string_equal(match(f, "/v2/x", "h", kr), "other");
    assert_null(match(f, "/v1/ran", "h", none));
    assert_null(match(f, "/", "h", none));
    assert_null(match(f, "/x/v1/rank", "h", none));
}

/* Was: "[::1]:8080" kept its port (the colons of an IPv6 literal hid it)
 * and the fully qualified "api.example." was another host. */
static void test_host_matching_ignores_port_case_and_a_trailing_dot(void **state)
{
    fx_t *f = *state;
    const char *none[] = {NULL};
    assert_string_equal(match(f, "/v1/rank", "API.example.:8080", none), "api");
    assert_string_equal(match(f, "/v1/rank", "api.example.", none), "api");
    assert_string_equal(match(f, "/v1/rank", "api.example..", none), "rank");
    assert_string_equal(match(f, "/v1/rank", "api.examplex", none), "rank");
    assert_string_equal(match(f, "/v6/x", "[::1]:8080", none), "v6");
    assert_string_equal(match(f, "/v6/x", "[::1]", none), "v6");
    assert_null(match(f, "/v6/x", "[::2]:8080", none));
    /* a rule with a port wants that port */
    assert_string_equal(match(f, "/p/x", "P.example:8080", none), "port");
    assert_null(match(f, "/p/x", "p.example:8081", none));
    assert_null(match(f, "/p/x", "p.example", none));
}

/* Header conditions: names case-insensitive, values exact (case-sensitive,
 * as Envoy's exact_match), every condition required, and any one line of a
 * repeated header may satisfy a condition. */
static void test_header_conditions_are_exact_and_all_required(void **state)
{
    fx_t *f = *state;
    const char *lower[] = {"X-MARKET", "kr", NULL};
    const char *rep[] = {"X-Market", "US", "x-market", " KR ", NULL};
    const char *list[] = {"X-Market", "US, KR", NULL};
    assert_string_equal(match(f, "/v1/rank", "h", lower), "rank");
    assert_string_equal(match(f, "/v1/rank", "h", rep), "kr");
    assert_string_equal(match(f, "/v1/rank", "h", list), "rank");
}

/* Was: a prefix written unnormalised ("/n//%78/./y") could never match the
 * normalised path a request is matched on. */
static void test_a_path_prefix_is_normalised_like_the_request_path(void **state)
{
    fx_t *f = *state;
    const char *none[] = {NULL};
    assert_string_equal(match(f, "/n/x/y/z", "h", none), "norm");
}

static policy_req_t view(fx_t *f, const char *exp, const char *url, const char *const *kv)
{
    headers(f, kv);
    policy_req_t pr;
    for (size_t i = 0; i < f->router->n_exps; i++)
        if (strcmp(f->router->exps[i].cfg->name, exp) == 0)
            router_request_view(&f->router->exps[i], (mm_str_t){"GET", 3},
                                (mm_str_t){url, strlen(url)}, &f->head, f->buf, &pr);
    return pr;
}

static void test_sticky_key_from_header_cookie_and_query_is_hashed_with_the_salt(void **state)
{
    fx_t *f = *state;
    const char *h[] = {"X-User-Id", " u-42 ", NULL};
    policy_req_t a = view(f, "kr", "/v1/rank", h);
    assert_true(a.has_key);
    assert_true(a.key_hash == mm_hash64("s1", 2, "u-42", 4)); /* trimmed, salted */
    const char *c[] = {"Cookie", "x=1; uid=u-42", NULL};
    policy_req_t b = view(f, "api", "/v1/rank", c);
    assert_true(b.has_key);
    assert_true(b.key_hash == mm_hash64("api", 3, "u-42", 4)); /* salt defaults to the name */
    const char *none[] = {NULL};
    policy_req_t q = view(f, "rank", "/v1/rank?user=u-42&x=1", none);
    assert_true(q.has_key);
    assert_true(q.key_hash == mm_hash64("rank", 4, "u-42", 4));
    policy_req_t miss = view(f, "rank", "/v1/rank?x=1", none);
    assert_false(miss.has_key);
}

static void test_sticky_requests_keep_their_arm(void **state)
{
    fx_t *f = *state;
    exp_rt_t *e = &f->router->exps[2]; /* rank, 90/10 */
    mm_rng_t rng;
    mm_rng_seed(&rng, 1);
    const char *none[] = {NULL};
    policy_req_t pr = view(f, "rank", "/v1/rank?user=alice", none);
    policy_choice_t c0, c;
    router_choose(e, &pr, &rng, 0, &c0);
    for (int i = 0; i < 100; i++) {
        router_choose(e, &pr, &rng, 0, &c);
        assert_int_equal(c.primary, c0.primary);
    }
}

static void test_promoted_and_rolled_back_experiments_route_by_control_weights(void **state)
{
    fx_t *f = *state;
    exp_rt_t *e = &f->router->exps[2];
    mm_rng_t rng;
    mm_rng_seed(&rng, 2);
    policy_req_t pr = {.method = {"GET", 3}, .path = {"/", 1}};
    exp_control_t ctl = e->state->control;
    ctl.state = EXP_PROMOTED;
    ctl.has_weights = 1;
    ctl.weights[0] = 0;
    ctl.weights[1] = 100;
    store_set_control(f->store, e->state, &ctl);
    policy_choice_t c;
    for (int i = 0; i < 200; i++) {
        router_choose(e, &pr, &rng, 0, &c);
        assert_int_equal(c.primary, 1);
        assert_int_equal(c.n_mirrors, 0);
        assert_int_equal(c.fanout, 0);
    }
    ctl.state = EXP_ROLLED_BACK;
    ctl.weights[0] = 100;
    ctl.weights[1] = 0;
    store_set_control(f->store, e->state, &ctl);
    for (int i = 0; i < 200; i++) {
        router_choose(e, &pr, &rng, 0, &c);
        assert_int_equal(c.primary, 0);
    }
}

static void test_a_choice_never_carries_over_between_requests(void **state)
{
    fx_t *f = *state;
    exp_rt_t *e = &f->router->exps[2];
    mm_rng_t rng;
    mm_rng_seed(&rng, 3);
    policy_req_t pr = {.method = {"GET", 3}, .path = {"/", 1}};
    policy_choice_t c;
    memset(&c, 0xff, sizeof(c)); /* garbage from an earlier request */
    router_choose(e, &pr, &rng, 0, &c);
    assert_int_equal(c.fanout, 0);
    assert_int_equal(c.n_mirrors, 0);
    assert_true(c.primary == 0 || c.primary == 1);
}

/* Which upstream hosts need a lookup, and how an answer becomes an address. */
static void test_upstream_addresses(void **state)
{
    (void)state;
    cfg_addr_t a = {.port = 7001};
    const char *names[] = {"model-a.test", "ranker", "localhost.example", NULL};
    const char *not_names[] = {"127.0.0.1", "::1", "LocalHost", "10.1.2.3", NULL};
    for (int i = 0; names[i]; i++) {
        snprintf(a.host, sizeof(a.host), "%s", names[i]);
        assert_true(mm_addr_is_name(&a));
    }
    for (int i = 0; not_names[i]; i++) {
        snprintf(a.host, sizeof(a.host), "%s", not_names[i]);
        assert_false(mm_addr_is_name(&a));
    }
    /* A getaddrinfo answer carries no port (no service asked): ours is set. */
    struct sockaddr_in sin = {.sin_family = AF_INET};
    sin.sin_addr.s_addr = htonl(0x7f000002);
    struct addrinfo ai = {
        .ai_family = AF_INET, .ai_addrlen = sizeof(sin), .ai_addr = (struct sockaddr *)&sin};
    struct sockaddr_storage ss;
    char txt[80];
    assert_int_equal(mm_addr_from_ai(&ai, 7001, &ss), 0);
    mm_addr_format(&ss, txt, sizeof(txt));
    assert_string_equal(txt, "127.0.0.2:7001");
    struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6};
    sin6.sin6_addr.s6_addr[15] = 1;
    struct addrinfo ai6 = {
        .ai_family = AF_INET6, .ai_addrlen = sizeof(sin6), .ai_addr = (struct sockaddr *)&sin6};
    assert_int_equal(mm_addr_from_ai(&ai6, 80, &ss), 0);
    mm_addr_format(&ss, txt, sizeof(txt));
    assert_string_equal(txt, "[::1]:80");
    assert_int_equal(mm_addr_from_ai(NULL, 80, &ss), -1);
    /* A name with both families: IPv4 first, wherever it sorts (addr.h). */
    ai6.ai_next = &ai;
    assert_ptr_equal(mm_addr_pick(&ai6), &ai);
    assert_int_equal(mm_addr_from_ai(&ai6, 80, &ss), 0);
    mm_addr_format(&ss, txt, sizeof(txt));
    assert_string_equal(txt, "127.0.0.2:80");
    ai6.ai_next = NULL;
    assert_ptr_equal(mm_addr_pick(&ai6), &ai6);
    /* Numeric hosts and localhost resolve without a lookup. */
    snprintf(a.host, sizeof(a.host), "localhost");
    assert_int_equal(mm_addr_resolve(&a, &ss), 0);
    mm_addr_format(&ss, txt, sizeof(txt));
    assert_string_equal(txt, "127.0.0.1:7001");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_upstream_addresses),
        cmocka_unit_test_setup_teardown(test_first_matching_experiment_wins, setup, teardown),
        cmocka_unit_test_setup_teardown(test_host_matching_ignores_port_case_and_a_trailing_dot,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_header_conditions_are_exact_and_all_required, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_a_path_prefix_is_normalised_like_the_request_path,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_sticky_key_from_header_cookie_and_query_is_hashed_with_the_salt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sticky_requests_keep_their_arm, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_promoted_and_rolled_back_experiments_route_by_control_weights, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_choice_never_carries_over_between_requests, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
