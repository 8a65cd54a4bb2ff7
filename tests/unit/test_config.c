/* test_config.c — config validation as `modelmux --check` reports it.
 *
 * One test per class of error, each asserting the exact "FILE:LINE:COL:
 * message" a user sees (the position is the contract: an editor jumps
 * there), plus full valid configs checked field by field, defaults included.
 * Tests that need a routing policy use the registered "ab" policy (or
 * "thompson" for list-of-arms policies) and skip when it is not registered,
 * since policies live in their own files. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "config.h"

/* Two upstreams, the usual pair. */
#define UPS                                                                                        \
    "\"upstreams\": {\"champion\": {\"url\": \"http://127.0.0.1:7001\"},"                          \
    " \"challenger\": {\"url\": \"http://127.0.0.1:7002\"}}"
/* The smallest valid config: no experiment. */
#define MINIMAL "{" UPS ", \"experiments\": []}"
#define AB_EXP                                                                                     \
    "{\"name\":\"x\",\"match\":{\"path_prefix\":\"/\"},\"policy\":\"ab\","                         \
    "\"arms\":{\"champion\":90,\"challenger\":10},\"sticky\":{\"header\":\"X-User-Id\"},"          \
    "\"salt\":\"s\"}"

static config_t *parse(const char *text, char *err, size_t errlen)
{
    return config_parse(text, strlen(text), "t.json", err, errlen);
}

static config_t *parse_ok(const char *text)
{
    char err[512];
    config_t *c = parse(text, err, sizeof(err));
    if (c == NULL) fail_msg("rejected: %s", err);
    return c;
}

/* The whole message must match: position and wording are what users see. */
static void expect_error(const char *text, const char *want)
{
    char err[512];
    config_t *c = parse(text, err, sizeof(err));
    if (c != NULL) {
        config_free(c);
        fail_msg("accepted, expected: %s", want);
    }
    assert_string_equal(err, want);
}

/* For messages a policy words itself: only the position is the core's. */
static void expect_error_prefix(const char *text, const char *prefix)
{
    char err[512];
    config_t *c = parse(text, err, sizeof(err));
    if (c != NULL) {
        config_free(c);
        fail_msg("accepted, expected: %s...", prefix);
    }
    if (strncmp(err, prefix, strlen(prefix)) != 0)
        fail_msg("got \"%s\", want \"%s...\"", err, prefix);
}

static void need_policy(const char *name)
{
    if (policy_find(name) == NULL) skip();
}

/* ---- syntax ---- */

static void test_syntax_error_has_jansson_position(void **state)
{
    expect_error("{\n  \"listen\": \"127.0.0.1:8080\",\n}\n",
                 "t.json:3:1: string or '}' expected near '}'");
}

static void test_duplicate_key_is_rejected(void **state)
{
    expect_error("{\"listen\": \"127.0.0.1:1\",\n \"listen\": \"127.0.0.1:2\"}",
                 "t.json:2:9: duplicate object key near '\"listen\"'");
}

/* jansson takes a NUL byte for the end of the text; the message must not
 * say "end of file" in the middle of a file, but where the byte is. */
static void expect_error_len(const char *text, size_t len, const char *want)
{
    char err[512];
    config_t *c = config_parse(text, len, "t.json", err, sizeof(err));
    if (c != NULL) {
        config_free(c);
        fail_msg("accepted, expected: %s", want);
    }
    assert_string_equal(err, want);
}

static void test_nul_byte_is_reported_where_it_is(void **state)
{
    static const char mid[] = "{\n  \0\"experiments\": []}";
    static const char after[] = MINIMAL "\n\n\0";
    expect_error_len(mid, sizeof(mid) - 1,
                     "t.json:2:3: a NUL byte (0x00) is not allowed in a JSON text");
    expect_error_len(after, sizeof(after) - 1,
                     "t.json:3:1: a NUL byte (0x00) is not allowed in a JSON text");
    /* right after a number jansson even accepts it (this was "1:1: out of memory") */
    static const char num[] =
        "{\"limits\": {\"max_connections\": 5\0}, " UPS ", \"experiments\": []}";
    expect_error_len(num, sizeof(num) - 1,
                     "t.json:1:33: a NUL byte (0x00) is not allowed in a JSON text");
    /* in a string, at the NUL rather than at the string */
    static const char str[] = "{\"lis\0ten\": 1}";
    expect_error_len(str, sizeof(str) - 1,
                     "t.json:1:6: a NUL byte (0x00) is not allowed in a JSON text");
}

/* A byte that cannot stand where it is: pointed at itself (jansson's
 * column is the character before it), as a NUL byte is. */
static void test_bad_bytes_are_reported_where_they_are(void **state)
{
    expect_error("{\"listen\": \xff}", "t.json:1:12: unable to decode byte 0xff");
    expect_error("{\"listen\": \"a\x01\"}", "t.json:1:14: control character 0x1 near '\"a'");
    expect_error("{\"x\":\"abc\ndef\"}", "t.json:1:10: unexpected newline near '\"abc'");
    /* a truncated and an overlong sequence: at their first byte, not the quote */
    expect_error("{\"x\":\"\xe2\x82\"}", "t.json:1:7: unable to decode byte 0xe2 near '\"'");
    expect_error("{\"x\":\"\xc0\xaf\"}", "t.json:1:7: unable to decode byte 0xc0 near '\"'");
    /* after a multi-byte character and on a later line: columns in characters */
    expect_error("{\n\"x\": \"\xe2\x82\xac\x01\"}",
                 "t.json:2:8: control character 0x1 near '\"\xe2\x82\xac'");
}

static void test_byte_order_mark_is_named(void **state)
{
    expect_error("\xEF\xBB\xBF" MINIMAL, "t.json:1:1: the file starts with a UTF-8 byte order "
                                         "mark (BOM); save it as UTF-8 without one");
}

/* A message is one line: what it quotes from the file is escaped, so an
 * escaped newline in a key does not split it, an escape sequence does not
 * reach the terminal, and a quote in a key does not end the name early. */
static void test_messages_escape_what_they_quote(void **state)
{
    expect_error("{\"lis\\nten\": 1}", "t.json:1:2: unknown key [\"lis\\nten\"] (allowed here: "
                                       "listen, admin, store, log, limits, upstreams, "
                                       "experiments)");
    expect_error("{\"a\\\"b\\\\\": 1}", "t.json:1:2: unknown key [\"a\\\"b\\\\\"] (allowed "
                                        "here: listen, admin, store, log, limits, upstreams, "
                                        "experiments)");
    expect_error("{\x1b}", "t.json:1:2: string or '}' expected near '\\u001b'");
    need_policy("thompson");
    expect_error("{" UPS ", \"experiments\": [{\"name\": \"x\", \"match\": {\"path_prefix\": "
                 "\"/\"}, \"policy\": \"thompson\", \"arms\": [\"champion\", \"c\\u001b[2J\"]}]}",
                 "t.json:1:215: experiments[0].arms[1]: unknown upstream \"c\\u001b[2J\" "
                 "(upstreams: champion, challenger)");
}

static void test_top_level_must_be_object(void **state)
{
    expect_error(" {}", "t.json:1:2: upstreams is required");
    expect_error("[]", "t.json:1:1: (top level) must be an object, got an array");
    expect_error("[1]", "t.json:1:1: (top level) must be an object, got an array");
}

/* ---- keys and types ---- */

static void test_unknown_top_level_key(void **state)
{
    expect_error("{" UPS ",\n  \"experiments\": [],\n  \"listn\": \"127.0.0.1:1\"}",
                 "t.json:3:3: unknown key listn (allowed here: listen, admin, store, log, limits, "
                 "upstreams, experiments)");
}

static void test_unknown_upstream_key(void **state)
{
    expect_error("{\"upstreams\": {\n"
                 "  \"champion\": {\"url\": \"http://127.0.0.1:7001\", \"tmeout_ms\": 5}},\n"
                 " \"experiments\": []}",
                 "t.json:2:48: unknown key upstreams.champion.tmeout_ms (allowed here: url, pool, "
                 "connect_timeout_ms, timeout_ms, eject, resolve_ms)");
}

static void test_upstream_resolve_ms(void **state)
{
    (void)state;
    config_t *c = parse_ok(MINIMAL);
    assert_int_equal(c->upstreams[0].resolve_ms, 5000); /* Envoy's dns_refresh_rate */
    config_free(c);
    c = parse_ok("{\"upstreams\": {\"a\": {\"url\": \"http://m.test:1\", \"resolve_ms\": 0}}, "
                 "\"experiments\": []}");
    assert_int_equal(c->upstreams[0].resolve_ms, 0);
    config_free(c);
    c = parse_ok("{\"upstreams\": {\"a\": {\"url\": \"http://m.test:1\", \"resolve_ms\": 100}}, "
                 "\"experiments\": []}");
    assert_int_equal(c->upstreams[0].resolve_ms, 100);
    config_free(c);
    expect_error("{\"upstreams\": {\"a\": {\"url\": \"http://m.test:1\",\n"
                 "  \"resolve_ms\": 50}}, \"experiments\": []}",
                 "t.json:2:17: upstreams.a.resolve_ms must be 0 (no re-resolution) or at least "
                 "100, got 50");
    expect_error_prefix("{\"upstreams\": {\"a\": {\"url\": \"http://m.test:1\",\n"
                        "  \"resolve_ms\": -1}}, \"experiments\": []}",
                        "t.json:2:17: ");
    expect_error_prefix("{\"upstreams\": {\"a\": {\"url\": \"http://m.test:1\",\n"
                        "  \"resolve_ms\": 1.5}}, \"experiments\": []}",
                        "t.json:2:17: ");
}

static void test_wrong_type(void **state)
{
    expect_error("{\"listen\": 8080, " UPS ", \"experiments\": []}",
                 "t.json:1:12: listen must be a string, got 8080");
    expect_error("{\"log\": {\"bodies\": \"yes\"}, " UPS ", \"experiments\": []}",
                 "t.json:1:20: log.bodies must be true or false, got \"yes\"");
    expect_error("{\"limits\": [], " UPS ", \"experiments\": []}",
                 "t.json:1:12: limits must be an object, got an array");
    expect_error("{" UPS ", \"experiments\": {}}",
                 "t.json:1:126: experiments must be an array, got an object");
}

static void test_negative_timeout(void **state)
{
    expect_error("{\n"
                 "  \"upstreams\": {\n"
                 "    \"champion\": {\"url\": \"http://127.0.0.1:7001\",\n"
                 "                 \"timeout_ms\": -5}\n"
                 "  },\n"
                 "  \"experiments\": []\n"
                 "}\n",
                 "t.json:4:32: upstreams.champion.timeout_ms must be an integer in [1, 3600000], "
                 "got -5");
}

static void test_integer_keys_reject_fractions_and_strings(void **state)
{
    expect_error("{\"upstreams\": {\"a\": {\"url\": \"http://h:1\", \"pool\": 1.5}}, "
                 "\"experiments\": []}",
                 "t.json:1:51: upstreams.a.pool must be an integer in [1, 100000], got 1.5");
    expect_error("{\"upstreams\": {\"a\": {\"url\": \"http://h:1\", \"pool\": \"8\"}}, "
                 "\"experiments\": []}",
                 "t.json:1:51: upstreams.a.pool must be an integer in [1, 100000], got \"8\"");
    /* An integral real is an integer: 3e2 == 300. */
    config_t *c = parse_ok("{\"upstreams\": {\"a\": {\"url\": \"http://h:1\", \"pool\": 3e2}}, "
                           "\"experiments\": []}");
    assert_int_equal(c->upstreams[0].pool, 300);
    config_free(c);
}

static void test_number_out_of_range(void **state)
{
    expect_error("{\"log\": {\"sample\": 1.5}, " UPS ", \"experiments\": []}",
                 "t.json:1:20: log.sample must be a number in [0, 1], got 1.5");
    expect_error("{\"limits\": {\"max_connections\": 0}, " UPS ", \"experiments\": []}",
                 "t.json:1:32: limits.max_connections must be an integer in [1, 1000000], got 0");
}

/* A value just outside a range never reads as the bound itself; an
 * integer beyond int64 (jansson refuses it while parsing) says so. */
static void test_number_just_outside_a_range_is_shown_exactly(void **state)
{
    expect_error("{\"limits\": {\"max_connections\": 99999999999999999999999}, " UPS
                 ", \"experiments\": []}",
                 "t.json:1:32: limits.max_connections: integer out of range (beyond "
                 "+-9223372036854775807); no setting takes one that large");
    /* named only when the text is otherwise sound (a duplicate key is not) */
    expect_error("{\"limits\": {\"max_connections\": -99999999999999999999999, "
                 "\"max_connections\": 1}}",
                 "t.json:1:32: integer out of range (beyond +-9223372036854775807); no setting "
                 "takes one that large");
    need_policy("ab");
    expect_error("{" UPS
                 ", \"experiments\": [{\"name\": \"e\", \"match\": {\"path_prefix\": \"/\"},"
                 " \"policy\": \"ab\", \"arms\": {\"champion\": 1000000001}}]}",
                 "t.json:1:209: experiments[0].arms.champion: weight must be in [0, 1e9], got "
                 "1000000001");
    need_policy("canary");
    const char *canary =
        "{" UPS ", \"experiments\": [{\"name\": \"e\", \"match\": {\"path_prefix\":"
        " \"/\"}, \"policy\": \"canary\", \"champion\": \"champion\", \"canary\":"
        " \"challenger\", \"steps\": [%s]}]}";
    char text[512];
    snprintf(text, sizeof(text), canary, "1, 100.0000001");
    expect_error(text, "t.json:1:253: experiments[0].steps[1]: must be in (0, 100] percent, got "
                       "100.0000001");
    snprintf(text, sizeof(text), canary, "5.000000000001, 5");
    expect_error(text, "t.json:1:266: experiments[0].steps[1]: steps must be strictly increasing "
                       "(5 after 5.000000000001)");
}

static void test_missing_required_points_at_enclosing_object(void **state)
{
    expect_error("{\"experiments\": []}", "t.json:1:1: upstreams is required");
    expect_error("{" UPS "}", "t.json:1:1: experiments is required");
    expect_error("{\"upstreams\": {\"a\": {\"pool\": 2}}, \"experiments\": []}",
                 "t.json:1:21: upstreams.a.url is required");
    expect_error("{\"upstreams\": {}, \"experiments\": []}",
                 "t.json:1:15: upstreams must name at least one upstream, as in "
                 "{\"champion\": {\"url\": \"http://127.0.0.1:7001\"}}");
}

/* ---- addresses and URLs ---- */

static void test_bad_url(void **state)
{
    expect_error("{\"upstreams\": {\"a\": {\"url\": \"https://h:1\"}}, \"experiments\": []}",
                 "t.json:1:29: upstreams.a.url: bad URL \"https://h:1\": https is not supported: "
                 "upstreams are spoken to in plain HTTP");
    expect_error("{\"upstreams\": {\"a\": {\"url\": \"h:1\"}}, \"experiments\": []}",
                 "t.json:1:29: upstreams.a.url: bad URL \"h:1\": expected "
                 "http://host[:port][/path]");
    expect_error("{\"upstreams\": {\"a\": {\"url\": \"http://h:99999\"}}, \"experiments\": []}",
                 "t.json:1:29: upstreams.a.url: bad URL \"http://h:99999\": the port must be an "
                 "integer in [1, 65535]");
    expect_error("{\"upstreams\": {\"a\": {\"url\": \"http://h/p?x=1\"}}, \"experiments\": []}",
                 "t.json:1:29: upstreams.a.url: bad URL \"http://h/p?x=1\": a query or fragment "
                 "is not allowed");
    expect_error("{\"upstreams\": {\"a\": {\"url\": \"http://\"}}, \"experiments\": []}",
                 "t.json:1:29: upstreams.a.url: bad URL \"http://\": the host is empty");
}

static void test_url_parts(void **state)
{
    config_t *c = parse_ok("{\"upstreams\": {"
                           "\"a\": {\"url\": \"http://models.internal\"},"
                           "\"b\": {\"url\": \"http://10.0.0.2:8501/v1/models/rank/\"},"
                           "\"c\": {\"url\": \"http://[::1]:7003/\"},"
                           "\"v1.2\": {\"url\": \"HTTP://[fe80::1%eth0]\"}"
                           "}, \"experiments\": []}");
    assert_int_equal(c->n_upstreams, 4);
    const cfg_upstream_t *a = &c->upstreams[0], *b = &c->upstreams[1], *u = &c->upstreams[2];
    assert_string_equal(a->addr.host, "models.internal");
    assert_int_equal(a->addr.port, 80);
    assert_string_equal(a->base_path, "");
    assert_string_equal(a->host_header, "models.internal:80");
    assert_string_equal(b->url, "http://10.0.0.2:8501/v1/models/rank/");
    assert_string_equal(b->base_path, "/v1/models/rank");
    assert_string_equal(b->host_header, "10.0.0.2:8501");
    assert_string_equal(u->addr.host, "::1");
    assert_int_equal(u->addr.port, 7003);
    assert_string_equal(u->base_path, "");
    assert_string_equal(u->host_header, "[::1]:7003");
    assert_string_equal(c->upstreams[3].addr.host, "fe80::1%eth0");
    assert_int_equal(c->upstreams[3].addr.port, 80);
    assert_int_equal(config_upstream_index(c, "v1.2"), 3);
    assert_int_equal(config_upstream_index(c, "nope"), -1);
    config_free(c);
}

static void test_bad_listen_port(void **state)
{
    expect_error("{\"listen\": \"127.0.0.1:0\", " UPS ", \"experiments\": []}",
                 "t.json:1:12: listen: bad address \"127.0.0.1:0\": the port must be an integer "
                 "in [1, 65535]; expected \"host:port\" or \"[ipv6]:port\"");
    expect_error("{\"listen\": \"localhost\", " UPS ", \"experiments\": []}",
                 "t.json:1:12: listen: bad address \"localhost\": missing \":port\"; expected "
                 "\"host:port\" or \"[ipv6]:port\"");
    expect_error("{\"listen\": \"::1:8080\", " UPS ", \"experiments\": []}",
                 "t.json:1:12: listen: bad address \"::1:8080\": an IPv6 address must be in "
                 "brackets, as in [::1]:8080; expected \"host:port\" or \"[ipv6]:port\"");
}

static void test_parse_addr(void **state)
{
    cfg_addr_t a = {"unchanged", 1};
    assert_int_equal(config_parse_addr("0.0.0.0:8080", &a), 0);
    assert_string_equal(a.host, "0.0.0.0");
    assert_int_equal(a.port, 8080);
    assert_int_equal(config_parse_addr("[::]:65535", &a), 0);
    assert_string_equal(a.host, "::");
    assert_int_equal(a.port, 65535);
    assert_int_equal(config_parse_addr("example.com:1", &a), 0);
    assert_string_equal(a.host, "example.com");
    const char *bad[] = {"",       ":80",    "h:",        "h:0",     "h:65536",
                         "h:+1",   "h:80x",  "[::1]",     "[::1]80", "[zz::1]:80",
                         "a b:80", "::1:80", "h:0080000", "[]:80"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        a.port = 42;
        if (config_parse_addr(bad[i], &a) == 0) fail_msg("accepted \"%s\"", bad[i]);
        assert_int_equal(a.port, 42); /* untouched on failure */
    }
}

/* ---- admin ---- */

static void test_admin_public_without_token_fails(void **state)
{
    expect_error("{\"admin\": {\"listen\": \"0.0.0.0:9090\"}, " UPS ", \"experiments\": []}",
                 "t.json:1:22: admin.listen \"0.0.0.0\" is not a loopback address, and admin.token "
                 "is not set: anyone who can reach it could change the experiments; set a token "
                 "or listen on 127.0.0.1, ::1 or localhost");
    expect_error_prefix("{\"admin\": {\"listen\": \"[::]:9090\", \"token\": null}, " UPS
                        ", \"experiments\": []}",
                        "t.json:1:22: admin.listen \"::\" is not a loopback address");
    expect_error_prefix("{\"admin\": {\"listen\": \"admin.example.com:9090\"}, " UPS
                        ", \"experiments\": []}",
                        "t.json:1:22: admin.listen \"admin.example.com\" is not a loopback");
}

static void test_admin_public_with_token_or_loopback_is_ok(void **state)
{
    config_t *c = parse_ok("{\"admin\": {\"listen\": \"0.0.0.0:9090\", \"token\": \"s3cret\"}, " UPS
                           ", \"experiments\": []}");
    assert_int_equal(c->has_admin, 1);
    assert_string_equal(c->admin_listen.host, "0.0.0.0");
    assert_string_equal(c->admin_token, "s3cret");
    config_free(c);
    const char *loopbacks[] = {"127.0.0.1:9090", "127.1.2.3:9", "[::1]:9090",
                               "localhost:9090", "LOCALHOST:1", "[::ffff:127.0.0.1]:9"};
    for (size_t i = 0; i < sizeof(loopbacks) / sizeof(loopbacks[0]); i++) {
        char text[512];
        snprintf(text, sizeof(text),
                 "{\"admin\": {\"listen\": \"%s\"}, " UPS ", \"experiments\": []}", loopbacks[i]);
        c = parse_ok(text);
        assert_null(c->admin_token);
        config_free(c);
    }
    /* admin present without listen: the loopback default. */
    c = parse_ok("{\"admin\": {}, " UPS ", \"experiments\": []}");
    assert_int_equal(c->has_admin, 1);
    assert_string_equal(c->admin_listen.host, "127.0.0.1");
    assert_int_equal(c->admin_listen.port, 9090);
    config_free(c);
}

static void test_admin_and_data_listeners_must_not_overlap(void **state)
{
    expect_error(
        "{\"listen\": \"0.0.0.0:8080\",\n \"admin\": {\"listen\": \"127.0.0.1:8080\"}, " UPS
        ", \"experiments\": []}",
        "t.json:2:22: admin.listen \"127.0.0.1:8080\" and listen \"0.0.0.0:8080\" overlap: "
        "they need different ports");
    expect_error("{\"admin\": {\"listen\": \"127.0.0.1:8080\"}, " UPS ", \"experiments\": []}",
                 "t.json:1:22: admin.listen \"127.0.0.1:8080\" and listen \"127.0.0.1:8080\" "
                 "overlap: they need different ports");
    /* localhost is 127.0.0.1 */
    expect_error(
        "{\"listen\": \"127.0.0.1:8080\", \"admin\": {\"listen\": \"LocalHost:8080\"}, " UPS
        ", \"experiments\": []}",
        "t.json:1:50: admin.listen \"LocalHost:8080\" and listen \"127.0.0.1:8080\" "
        "overlap: they need different ports");
    /* Same port on two different specific addresses is fine. */
    config_t *c = parse_ok("{\"listen\": \"127.0.0.2:8080\", \"admin\": {\"listen\": "
                           "\"127.0.0.1:8080\"}, " UPS ", \"experiments\": []}");
    config_free(c);
}

static void test_admin_token_must_be_usable(void **state)
{
    expect_error("{\"admin\": {\"token\": \"\"}, " UPS ", \"experiments\": []}",
                 "t.json:1:21: admin.token must be null or a string of 1-1024 visible ASCII "
                 "characters, got \"\"");
    expect_error("{\"admin\": {\"token\": \"a b\"}, " UPS ", \"experiments\": []}",
                 "t.json:1:21: admin.token must be null or a string of 1-1024 visible ASCII "
                 "characters, got \"a b\"");
}

/* ---- store, log, limits ---- */

static void test_store_redis_defaults_and_errors(void **state)
{
    config_t *c = parse_ok("{\"store\": {\"type\": \"redis\"}, " UPS ", \"experiments\": []}");
    assert_int_equal(c->store.type, STORE_REDIS);
    assert_string_equal(c->store.host, "127.0.0.1");
    assert_int_equal(c->store.port, 6379);
    assert_string_equal(c->store.prefix, "modelmux");
    assert_int_equal(c->store.sync_ms, 100);
    config_free(c);
    c = parse_ok("{\"store\": {\"type\": \"redis\", \"host\": \"::1\", \"port\": 6380, "
                 "\"prefix\": \"mm:test\", \"sync_ms\": 5}, " UPS ", \"experiments\": []}");
    assert_string_equal(c->store.host, "::1");
    assert_int_equal(c->store.port, 6380);
    assert_string_equal(c->store.prefix, "mm:test");
    assert_int_equal(c->store.sync_ms, 5);
    config_free(c);
    expect_error("{\"store\": {\"type\": \"mysql\"}, " UPS ", \"experiments\": []}",
                 "t.json:1:20: store.type must be \"memory\" or \"redis\", got \"mysql\"");
    expect_error("{\"store\": {\"type\": \"memory\", \"port\": 1}, " UPS ", \"experiments\": []}",
                 "t.json:1:30: unknown key store.port (allowed here: type)");
    expect_error("{\"store\": {\"type\": \"redis\", \"port\": 0}, " UPS ", \"experiments\": []}",
                 "t.json:1:37: store.port must be an integer in [1, 65535], got 0");
    expect_error("{\"store\": {\"type\": \"redis\", \"prefix\": \"a{b}\"}, " UPS
                 ", \"experiments\": []}",
                 "t.json:1:39: store.prefix must be 1-127 characters of [A-Za-z0-9_.:-], got "
                 "\"a{b}\"");
    expect_error("{\"store\": {}, " UPS ", \"experiments\": []}",
                 "t.json:1:11: store.type is required");
}

/* store.sentinel: the master's name and 1-8 nodes, instead of host and
 * port; each error at the value (or key) it is about. */
static void test_store_redis_sentinel(void **state)
{
    (void)state;
    config_t *c = parse_ok("{\"store\": {\"type\": \"redis\", \"sentinel\": {\"master\": \"mm\", "
                           "\"nodes\": [\"10.0.0.1:26379\", \"sentinel.internal:26380\", "
                           "\"[::1]:26381\"]}}, " UPS ", \"experiments\": []}");
    assert_string_equal(c->store.sentinel_master, "mm");
    assert_int_equal(c->store.n_sentinels, 3);
    assert_string_equal(c->store.sentinels[0].host, "10.0.0.1");
    assert_int_equal(c->store.sentinels[0].port, 26379);
    assert_string_equal(c->store.sentinels[1].host, "sentinel.internal");
    assert_string_equal(c->store.sentinels[2].host, "::1");
    assert_int_equal(c->store.sentinels[2].port, 26381);
    config_free(c);
    c = parse_ok("{\"store\": {\"type\": \"redis\"}, " UPS ", \"experiments\": []}");
    assert_int_equal(c->store.n_sentinels, 0);
    config_free(c);
    expect_error("{\"store\": {\"type\": \"redis\", \"port\": 6380, \"sentinel\": {\"master\": "
                 "\"mm\", \"nodes\": [\"127.0.0.1:26379\"]}}, " UPS ", \"experiments\": []}",
                 "t.json:1:43: store.sentinel: not together with store.host or store.port (the "
                 "Sentinels name the primary)");
    expect_error(
        "{\"store\": {\"type\": \"redis\", \"sentinel\": {\"nodes\": [\"127.0.0.1:1\"]}}, " UPS
        ", \"experiments\": []}",
        "t.json:1:41: store.sentinel.master is required");
    expect_error("{\"store\": {\"type\": \"redis\", \"sentinel\": {\"master\": \"m m\", \"nodes\": "
                 "[\"127.0.0.1:1\"]}}, " UPS ", \"experiments\": []}",
                 "t.json:1:52: store.sentinel.master must be 1-64 characters of [A-Za-z0-9_.-], "
                 "got \"m m\"");
    expect_error(
        "{\"store\": {\"type\": \"redis\", \"sentinel\": {\"master\": \"mm\", \"nodes\": []}}, " UPS
        ", \"experiments\": []}",
        "t.json:1:67: store.sentinel.nodes: expected 1-8 addresses, got 0");
    expect_error("{\"store\": {\"type\": \"redis\", \"sentinel\": {\"master\": \"mm\", \"nodes\": "
                 "[\"127.0.0.1:1\", \"nohost\"]}}, " UPS ", \"experiments\": []}",
                 "t.json:1:83: store.sentinel.nodes[1]: bad address \"nohost\": missing \":port\"; "
                 "expected \"host:port\" or \"[ipv6]:port\"");
    expect_error("{\"store\": {\"type\": \"redis\", \"sentinel\": {\"master\": \"mm\", \"nodes\": "
                 "[\"127.0.0.1:1\"], \"quorum\": 2}}, " UPS ", \"experiments\": []}",
                 "t.json:1:84: unknown key store.sentinel.quorum (allowed here: master, nodes, "
                 "username, password, password_env)");
    /* the Sentinels' own AUTH: as the store's, at store.sentinel */
    setenv("MM_TEST_SENTINEL_PW", "s3nt", 1);
    c = parse_ok(
        "{\"store\": {\"type\": \"redis\", \"password\": \"p\", \"sentinel\": {\"master\": "
        "\"mm\", \"nodes\": [\"127.0.0.1:1\"], \"password_env\": \"MM_TEST_SENTINEL_PW\"}}, " UPS
        ", \"experiments\": []}");
    assert_string_equal(c->store.sentinel_password, "s3nt");
    assert_string_equal(c->store.sentinel_username, "");
    assert_string_equal(c->store.password, "p");
    config_free(c);
    unsetenv("MM_TEST_SENTINEL_PW");
    expect_error("{\"store\": {\"type\": \"redis\", \"sentinel\": {\"master\": \"mm\", \"nodes\": "
                 "[\"127.0.0.1:1\"], \"username\": \"u\"}}, " UPS ", \"experiments\": []}",
                 "t.json:1:96: store.sentinel.username: needs password or password_env (AUTH "
                 "username password)");
}

static void test_store_redis_auth(void **state)
{
    (void)state;
    config_t *c = parse_ok("{\"store\": {\"type\": \"redis\"}, " UPS ", \"experiments\": []}");
    assert_string_equal(c->store.username, "");
    assert_string_equal(c->store.password, "");
    assert_int_equal(c->store.db, 0);
    config_free(c);
    c = parse_ok("{\"store\": {\"type\": \"redis\", \"username\": \"mm\", \"password\": "
                 "\"s3 cr\\\"et\", \"db\": 3}, " UPS ", \"experiments\": []}");
    assert_string_equal(c->store.username, "mm");
    assert_string_equal(c->store.password, "s3 cr\"et");
    assert_int_equal(c->store.db, 3);
    config_free(c);

    setenv("MM_TEST_REDIS_PW", "from-env", 1);
    c = parse_ok("{\"store\": {\"type\": \"redis\", \"password_env\": \"MM_TEST_REDIS_PW\"}, " UPS
                 ", \"experiments\": []}");
    assert_string_equal(c->store.password, "from-env");
    config_free(c);
    expect_error("{\"store\": {\"type\": \"redis\", \"password\": \"a\", \"password_env\": "
                 "\"MM_TEST_REDIS_PW\"}, " UPS ", \"experiments\": []}",
                 "t.json:1:62: store.password_env: give either password or password_env, not both");
    unsetenv("MM_TEST_REDIS_PW");
    expect_error(
        "{\"store\": {\"type\": \"redis\", \"password_env\": \"MM_TEST_REDIS_PW\"}, " UPS
        ", \"experiments\": []}",
        "t.json:1:45: store.password_env: the environment variable MM_TEST_REDIS_PW is not "
        "set or empty");
    expect_error("{\"store\": {\"type\": \"redis\", \"password_env\": \"1X\"}, " UPS
                 ", \"experiments\": []}",
                 "t.json:1:45: store.password_env must be an environment variable name "
                 "([A-Za-z_][A-Za-z0-9_]*), got \"1X\"");
    expect_error("{\"store\": {\"type\": \"redis\", \"password\": \"\"}, " UPS
                 ", \"experiments\": []}",
                 "t.json:1:41: store.password: expected 1-511 bytes");
    expect_error("{\"store\": {\"type\": \"redis\", \"username\": \"mm\"}, " UPS
                 ", \"experiments\": []}",
                 "t.json:1:41: store.username: needs password or password_env (AUTH username "
                 "password)");
    expect_error("{\"store\": {\"type\": \"redis\", \"db\": -1}, " UPS ", \"experiments\": []}",
                 "t.json:1:35: store.db must be an integer in [0, 2147483647], got -1");
    expect_error("{\"store\": {\"type\": \"memory\", \"password\": \"x\"}, " UPS
                 ", \"experiments\": []}",
                 "t.json:1:30: unknown key store.password (allowed here: type)");
}

static void test_defaults(void **state)
{
    config_t *c = parse_ok(MINIMAL);
    assert_string_equal(c->path, "t.json");
    assert_string_equal(c->listen.host, "127.0.0.1");
    assert_int_equal(c->listen.port, 8080);
    assert_int_equal(c->has_admin, 0);
    assert_null(c->admin_token);
    assert_int_equal(c->store.type, STORE_MEMORY);
    assert_null(c->log_requests);
    assert_true(c->log_sample == 1.0);
    assert_int_equal(c->log_bodies, 0);
    assert_int_equal(c->limits.max_connections, 10000);
    assert_int_equal(c->limits.max_header_bytes, 16384);
    assert_int_equal(c->limits.max_body_bytes, 10485760);
    assert_int_equal(c->limits.header_timeout_ms, 10000);
    assert_int_equal(c->limits.idle_timeout_ms, 60000);
    assert_int_equal(c->limits.drain_timeout_ms, 10000);
    assert_int_equal(c->n_upstreams, 2);
    const cfg_upstream_t *u = &c->upstreams[0];
    assert_string_equal(u->name, "champion");
    assert_string_equal(c->upstreams[1].name, "challenger"); /* document order */
    assert_int_equal(u->pool, 64);
    assert_int_equal(u->connect_timeout_ms, 500);
    assert_int_equal(u->timeout_ms, 2000);
    assert_int_equal(u->eject_consecutive_5xx, 0); /* no eject object: off */
    assert_int_equal(c->n_experiments, 0);
    config_free(c);

    /* eject present but empty: on, with its defaults. */
    c = parse_ok("{\"upstreams\": {\"a\": {\"url\": \"http://h:1\", \"eject\": {}}}, "
                 "\"experiments\": []}");
    assert_int_equal(c->upstreams[0].eject_consecutive_5xx, 5);
    assert_int_equal(c->upstreams[0].eject_base_ms, 30000);
    config_free(c);
}

static void test_log_and_limits_values(void **state)
{
    config_t *c = parse_ok("{\"log\": {\"requests\": \"logs/r.jsonl\", \"sample\": 0.25, "
                           "\"bodies\": true},"
                           " \"limits\": {\"max_connections\": 5, \"max_header_bytes\": 1024,"
                           " \"max_body_bytes\": 1099511627776, \"header_timeout_ms\": 1,"
                           " \"idle_timeout_ms\": 2, \"drain_timeout_ms\": 3600000}, " UPS
                           ", \"experiments\": []}");
    assert_string_equal(c->log_requests, "logs/r.jsonl");
    assert_true(c->log_sample == 0.25);
    assert_int_equal(c->log_bodies, 1);
    assert_int_equal(c->limits.max_connections, 5);
    assert_int_equal(c->limits.max_header_bytes, 1024);
    assert_true(c->limits.max_body_bytes == 1099511627776ULL);
    assert_int_equal(c->limits.header_timeout_ms, 1);
    assert_int_equal(c->limits.idle_timeout_ms, 2);
    assert_int_equal(c->limits.drain_timeout_ms, 3600000);
    config_free(c);
    c = parse_ok("{\"log\": {\"requests\": null}, " UPS ", \"experiments\": []}");
    assert_null(c->log_requests);
    config_free(c);
    expect_error("{\"log\": {\"requests\": \"\"}, " UPS ", \"experiments\": []}",
                 "t.json:1:22: log.requests must be a file path or null, got \"\"");
}

/* ---- upstream and experiment names ---- */

static void test_bad_upstream_name(void **state)
{
    expect_error("{\"upstreams\": {\"a b\": {\"url\": \"http://h:1\"}}, \"experiments\": []}",
                 "t.json:1:16: upstreams[\"a b\"]: bad upstream name; names are 1-64 characters "
                 "of [A-Za-z0-9_.-]");
}

static void test_bad_experiment_name(void **state)
{
    expect_error(
        "{" UPS ", \"experiments\": [\n"
        "  {\"name\": \"my exp\", \"match\": {\"path_prefix\": \"/\"}, \"policy\": \"ab\"}]}",
        "t.json:2:12: experiments[0].name must be a name of 1-64 characters of "
        "[A-Za-z0-9_.-], got \"my exp\"");
}

static void test_missing_path_prefix(void **state)
{
    expect_error("{" UPS ", \"experiments\": [\n"
                 "  {\"name\": \"e\", \"match\": {\"host\": \"h\"}, \"policy\": \"ab\"}]}",
                 "t.json:2:26: experiments[0].match.path_prefix is required");
    expect_error("{" UPS ", \"experiments\": [\n"
                 "  {\"name\": \"e\", \"match\": {\"path_prefix\": \"v1\"}, \"policy\": \"ab\"}]}",
                 "t.json:2:42: experiments[0].match.path_prefix must be a path starting with '/' "
                 "(visible ASCII characters only: no spaces, control or non-ASCII characters), "
                 "got \"v1\"");
    /* non-ASCII, escaped or raw: the message names it (the README's rule) */
    expect_error("{" UPS ", \"experiments\": [\n"
                 "  {\"name\": \"e\", \"match\": {\"path_prefix\": \"/v1/\\u00e9\"}, \"policy\": "
                 "\"ab\"}]}",
                 "t.json:2:42: experiments[0].match.path_prefix must be a path starting with '/' "
                 "(visible ASCII characters only: no spaces, control or non-ASCII characters), "
                 "got \"/v1/\xc3\xa9\"");
    expect_error("{" UPS ", \"experiments\": [\n"
                 "  {\"name\": \"e\", \"match\": {\"path_prefix\": \"/v1/\xc3\xa9\"}, \"policy\": "
                 "\"ab\"}]}",
                 "t.json:2:42: experiments[0].match.path_prefix must be a path starting with '/' "
                 "(visible ASCII characters only: no spaces, control or non-ASCII characters), "
                 "got \"/v1/\xc3\xa9\"");
    expect_error("{" UPS ", \"experiments\": [\n"
                 "  {\"name\": \"e\", \"policy\": \"ab\"}]}",
                 "t.json:2:3: experiments[0].match is required");
}

static void test_match_headers(void **state)
{
    expect_error("{" UPS ", \"experiments\": [\n"
                 "  {\"name\": \"e\", \"match\": {\"path_prefix\": \"/\", \"headers\": "
                 "{\"X-Market\": 1}}}]}",
                 "t.json:2:71: experiments[0].match.headers.X-Market must be a string (the header "
                 "value to match), got 1");
    expect_error("{" UPS ", \"experiments\": [\n"
                 "  {\"name\": \"e\", \"match\": {\"path_prefix\": \"/\", \"headers\": "
                 "{\"X Market\": \"KR\"}}}]}",
                 "t.json:2:59: experiments[0].match.headers[\"X Market\"]: bad header name; "
                 "expected 1-127 token characters");
    /* a string, but no header line can carry it: the message says why */
    expect_error("{" UPS ", \"experiments\": [\n"
                 "  {\"name\": \"e\", \"match\": {\"path_prefix\": \"/\", \"headers\": "
                 "{\"X-Market\": \"K\\nR\"}}}]}",
                 "t.json:2:71: experiments[0].match.headers.X-Market: a header value holds no CR "
                 "or LF");
    /* spaces and tabs around a value go, as around a request's value (which
     * is compared without them): " KR " would otherwise never match */
    config_t *c = parse_ok("{" UPS ", \"experiments\": [\n"
                           "  {\"name\": \"e\", \"match\": {\"path_prefix\": \"/\", \"headers\": "
                           "{\"X-Market\": \" K R\\t\", \"X-Tier\": \"  \"}}, \"policy\": \"ab\", "
                           "\"arms\": {\"champion\": 1}}]}");
    assert_string_equal(c->experiments[0].headers[0].value, "K R");
    assert_string_equal(c->experiments[0].headers[1].value, "");
    config_free(c);
}

static void test_unknown_policy(void **state)
{
    char want[512];
    expect_error_prefix("{" UPS ", \"experiments\": [\n"
                        "  {\"name\": \"e\", \"match\": {\"path_prefix\": \"/\"},\n"
                        "   \"policy\": \"abtest\"}]}",
                        "t.json:3:14: experiments[0].policy: unknown policy \"abtest\" (known: ");
    /* The hint lists what the registry has. */
    if (policy_find("ab") != NULL) {
        char err[512];
        config_t *c = parse("{" UPS ", \"experiments\": [{\"name\": \"e\", \"match\": "
                            "{\"path_prefix\": \"/\"}, \"policy\": \"x\"}]}",
                            err, sizeof(err));
        assert_null(c);
        snprintf(want, sizeof(want), "(known: ab");
        assert_non_null(strstr(err, want));
    }
    expect_error("{" UPS ", \"experiments\": [\n"
                 "  {\"name\": \"e\", \"match\": {\"path_prefix\": \"/\"}}]}",
                 "t.json:2:3: experiments[0].policy is required");
}

static void test_feedback_ttl_range(void **state)
{
    expect_error(
        "{" UPS ", \"experiments\": [\n"
        "  {\"name\": \"e\", \"match\": {\"path_prefix\": \"/\"}, \"feedback_ttl_s\": 0}]}",
        "t.json:2:66: experiments[0].feedback_ttl_s must be an integer in [1, 2592000], "
        "got 0");
}

/* ---- with a policy ---- */

static void test_full_valid_config(void **state)
{
    need_policy("ab");
    const char *text =
        "{\n"
        "  \"listen\": \"0.0.0.0:8000\",\n"
        "  \"admin\": {\"listen\": \"[::1]:9191\", \"token\": \"t0k\"},\n"
        "  \"store\": {\"type\": \"redis\", \"host\": \"redis.local\", \"port\": 6390,\n"
        "            \"prefix\": \"mm\", \"sync_ms\": 250},\n"
        "  \"log\": {\"requests\": \"/var/log/mm.jsonl\", \"sample\": 0.5, \"bodies\": true},\n"
        "  \"limits\": {\"max_connections\": 100, \"max_header_bytes\": 8192,\n"
        "             \"max_body_bytes\": 1048576, \"header_timeout_ms\": 5000,\n"
        "             \"idle_timeout_ms\": 30000, \"drain_timeout_ms\": 2000},\n"
        "  \"upstreams\": {\n"
        "    \"champion\": {\"url\": \"http://127.0.0.1:7001/api/\", \"pool\": 8,\n"
        "                 \"connect_timeout_ms\": 100, \"timeout_ms\": 900},\n"
        "    \"challenger\": {\"url\": \"http://127.0.0.1:7002\",\n"
        "                   \"eject\": {\"consecutive_5xx\": 3, \"base_ms\": 1000}},\n"
        "    \"spare\": {\"url\": \"http://127.0.0.1:7003\"}\n"
        "  },\n"
        "  \"experiments\": [\n"
        "    {\"name\": \"ranker\", \"match\": {\"path_prefix\": \"/v1/rank\", \"host\": \"api\",\n"
        "      \"headers\": {\"X-Market\": \"KR\", \"X-Tier\": \"gold\"}},\n"
        "     \"policy\": \"ab\", \"arms\": {\"challenger\": 10, \"champion\": 90},\n"
        "     \"sticky\": {\"cookie\": \"uid\"}, \"salt\": \"pepper\", \"feedback_ttl_s\": 60},\n"
        "    {\"name\": \"search\", \"match\": {\"path_prefix\": \"/v1/search\"},\n"
        "     \"policy\": \"ab\", \"arms\": {\"spare\": 1}}\n"
        "  ]\n"
        "}\n";
    config_t *c = parse_ok(text);
    assert_string_equal(c->listen.host, "0.0.0.0");
    assert_int_equal(c->listen.port, 8000);
    assert_int_equal(c->has_admin, 1);
    assert_string_equal(c->admin_listen.host, "::1");
    assert_int_equal(c->admin_listen.port, 9191);
    assert_string_equal(c->admin_token, "t0k");
    assert_int_equal(c->store.type, STORE_REDIS);
    assert_string_equal(c->store.host, "redis.local");
    assert_int_equal(c->store.port, 6390);
    assert_string_equal(c->store.prefix, "mm");
    assert_int_equal(c->store.sync_ms, 250);
    assert_string_equal(c->log_requests, "/var/log/mm.jsonl");
    assert_true(c->log_sample == 0.5);
    assert_int_equal(c->log_bodies, 1);
    assert_int_equal(c->limits.max_connections, 100);
    assert_int_equal(c->limits.max_header_bytes, 8192);
    assert_int_equal(c->limits.max_body_bytes, 1048576);
    assert_int_equal(c->limits.header_timeout_ms, 5000);
    assert_int_equal(c->limits.idle_timeout_ms, 30000);
    assert_int_equal(c->limits.drain_timeout_ms, 2000);

    assert_int_equal(c->n_upstreams, 3);
    const cfg_upstream_t *ch = &c->upstreams[0], *cl = &c->upstreams[1];
    assert_string_equal(ch->name, "champion");
    assert_string_equal(ch->url, "http://127.0.0.1:7001/api/");
    assert_string_equal(ch->addr.host, "127.0.0.1");
    assert_int_equal(ch->addr.port, 7001);
    assert_string_equal(ch->base_path, "/api");
    assert_string_equal(ch->host_header, "127.0.0.1:7001");
    assert_int_equal(ch->pool, 8);
    assert_int_equal(ch->connect_timeout_ms, 100);
    assert_int_equal(ch->timeout_ms, 900);
    assert_int_equal(ch->eject_consecutive_5xx, 0);
    assert_string_equal(cl->name, "challenger");
    assert_int_equal(cl->eject_consecutive_5xx, 3);
    assert_int_equal(cl->eject_base_ms, 1000);
    assert_int_equal(cl->pool, 64);

    assert_int_equal(c->n_experiments, 2);
    const cfg_experiment_t *e = &c->experiments[0];
    assert_string_equal(e->name, "ranker");
    assert_string_equal(e->path_prefix, "/v1/rank");
    assert_string_equal(e->host, "api");
    assert_int_equal(e->n_headers, 2);
    assert_string_equal(e->headers[0].name, "X-Market");
    assert_string_equal(e->headers[0].value, "KR");
    assert_string_equal(e->headers[1].name, "X-Tier");
    assert_string_equal(e->headers[1].value, "gold");
    assert_ptr_equal(e->ops, policy_find("ab"));
    assert_non_null(e->policy);
    assert_int_equal(e->n_arms, 2);
    assert_int_equal(e->arms[0], 1); /* challenger listed first: arm 0 */
    assert_int_equal(e->arms[1], 0);
    assert_int_equal(e->sticky_kind, STICKY_COOKIE);
    assert_string_equal(e->sticky_name, "uid");
    assert_string_equal(e->salt, "pepper");
    assert_int_equal(e->feedback_ttl_s, 60);
    /* Canonical: compact, sorted keys, so reformatting the file is not a change. */
    assert_string_equal(e->definition,
                        "{\"arms\":{\"challenger\":10,\"champion\":90},\"feedback_ttl_s\":60,"
                        "\"match\":{\"headers\":{\"X-Market\":\"KR\",\"X-Tier\":\"gold\"},"
                        "\"host\":\"api\",\"path_prefix\":\"/v1/rank\"},\"name\":\"ranker\","
                        "\"policy\":\"ab\",\"salt\":\"pepper\",\"sticky\":{\"cookie\":\"uid\"}}");

    const cfg_experiment_t *s = &c->experiments[1];
    assert_null(s->host);
    assert_int_equal(s->n_headers, 0);
    assert_int_equal(s->n_arms, 1);
    assert_int_equal(s->arms[0], 2);
    assert_int_equal(s->sticky_kind, STICKY_NONE);
    assert_string_equal(s->salt, "search"); /* default salt: the experiment's name */
    assert_int_equal(s->feedback_ttl_s, 3600);
    assert_int_equal(config_experiment_index(c, "search"), 1);
    assert_int_equal(config_experiment_index(c, "nope"), -1);
    config_free(c);
}

static void test_ab_brief_example(void **state)
{
    need_policy("ab");
    config_t *c = parse_ok("{" UPS ", \"experiments\": [" AB_EXP "]}");
    const cfg_experiment_t *e = &c->experiments[0];
    assert_int_equal(e->n_arms, 2);
    assert_int_equal(e->arms[0], 0);
    assert_int_equal(e->arms[1], 1);
    assert_int_equal(e->sticky_kind, STICKY_HEADER);
    assert_string_equal(e->sticky_name, "X-User-Id");
    assert_string_equal(e->salt, "s");
    config_free(c);
}

static void test_duplicate_experiment(void **state)
{
    need_policy("ab");
    expect_error("{" UPS ", \"experiments\": [" AB_EXP ",\n"
                 "  {\"name\": \"x\", \"match\": {\"path_prefix\": \"/b\"}, \"policy\": \"ab\", "
                 "\"arms\": {\"champion\": 1}}]}",
                 "t.json:2:12: experiments[1].name: experiment name \"x\" is already used by "
                 "experiments[0]");
}

static void test_policy_errors_are_positioned(void **state)
{
    need_policy("ab");
    /* Unknown upstream as an arm: policy_add_arm's message, at its name. */
    expect_error("{" UPS ", \"experiments\": [\n"
                 "  {\"name\": \"e\", \"match\": {\"path_prefix\": \"/\"}, \"policy\": \"ab\",\n"
                 "   \"arms\": {\"champion\": 1, \"champ\": 1}}]}",
                 "t.json:3:28: experiments[0].arms.champ: unknown upstream \"champ\" (upstreams: "
                 "champion, challenger)");
    /* Unknown key in the experiment object: the core's keys are allowed too. */
    expect_error_prefix(
        "{" UPS ", \"experiments\": [\n"
        "  {\"name\": \"e\", \"match\": {\"path_prefix\": \"/\"}, \"policy\": \"ab\",\n"
        "   \"arms\": {\"champion\": 1}, \"stiky\": {}}]}",
        "t.json:3:29: unknown key experiments[0].stiky (allowed here: name, match, "
        "policy, feedback_ttl_s, arms, ");
    /* A negative weight: ab's own message, at the weight. */
    expect_error_prefix(
        "{" UPS ", \"experiments\": [\n"
        "  {\"name\": \"e\", \"match\": {\"path_prefix\": \"/\"}, \"policy\": \"ab\",\n"
        "   \"arms\": {\"champion\": 1, \"challenger\": -1}}]}",
        "t.json:3:42: ");
    /* All weights zero. */
    expect_error_prefix(
        "{" UPS ", \"experiments\": [\n"
        "  {\"name\": \"e\", \"match\": {\"path_prefix\": \"/\"}, \"policy\": \"ab\",\n"
        "   \"arms\": {\"champion\": 0}}]}",
        "t.json:3:12: ");
    /* Sticky with two kinds. */
    expect_error(
        "{" UPS ", \"experiments\": [\n"
        "  {\"name\": \"e\", \"match\": {\"path_prefix\": \"/\"}, \"policy\": \"ab\",\n"
        "   \"arms\": {\"champion\": 1}, \"sticky\": {\"header\": \"a\", \"query\": \"b\"}}]}",
        "t.json:3:39: experiments[0].sticky must have exactly one of \"header\", "
        "\"cookie\" or \"query\", as in {\"header\": \"X-User-Id\"}");
    /* Sticky on a name that is not a header name. */
    expect_error("{" UPS ", \"experiments\": [\n"
                 "  {\"name\": \"e\", \"match\": {\"path_prefix\": \"/\"}, \"policy\": \"ab\",\n"
                 "   \"arms\": {\"champion\": 1}, \"sticky\": {\"header\": \"\"}}]}",
                 "t.json:3:50: experiments[0].sticky.header must be a header or cookie name "
                 "(1-127 token characters), got \"\"");
    expect_error("{" UPS ", \"experiments\": [\n"
                 "  {\"name\": \"e\", \"match\": {\"path_prefix\": \"/\"}, \"policy\": \"ab\",\n"
                 "   \"arms\": {\"champion\": 1}, \"sticky\": {\"user\": \"a\"}}]}",
                 "t.json:3:40: unknown key experiments[0].sticky.user (allowed here: header, "
                 "cookie, query)");
}

static void test_list_policies_add_arms_in_order(void **state)
{
    need_policy("thompson");
    config_t *c = parse_ok("{" UPS ", \"experiments\": [{\"name\": \"b\", \"match\": "
                           "{\"path_prefix\": \"/\"}, \"policy\": \"thompson\", "
                           "\"arms\": [\"challenger\", \"champion\"]}]}");
    assert_int_equal(c->experiments[0].n_arms, 2);
    assert_int_equal(c->experiments[0].arms[0], 1);
    assert_int_equal(c->experiments[0].arms[1], 0);
    assert_int_equal(c->experiments[0].sticky_kind, STICKY_NONE);
    config_free(c);
    expect_error(
        "{" UPS ", \"experiments\": [\n"
        "  {\"name\": \"b\", \"match\": {\"path_prefix\": \"/\"}, \"policy\": \"thompson\",\n"
        "   \"arms\": [\"champion\", \"champion\"]}]}",
        "t.json:3:25: experiments[0].arms[1]: arm \"champion\" is listed twice");
    expect_error(
        "{" UPS ", \"experiments\": [\n"
        "  {\"name\": \"b\", \"match\": {\"path_prefix\": \"/\"}, \"policy\": \"thompson\",\n"
        "   \"arms\": [\"champion\", \"challenger\"], \"min_share\": 0.75}]}",
        "t.json:3:53: experiments[0].min_share must be a number in [0, 0.5], got 0.75");
}

static void test_too_many_arms(void **state)
{
    need_policy("thompson");
    char text[8192];
    size_t n = 0;
    n += (size_t)snprintf(text + n, sizeof(text) - n, "{\"upstreams\": {");
    for (int i = 0; i <= MM_MAX_ARMS; i++)
        n += (size_t)snprintf(text + n, sizeof(text) - n, "%s\"u%d\": {\"url\": \"http://h:%d\"}",
                              i ? ", " : "", i, 1000 + i);
    n += (size_t)snprintf(text + n, sizeof(text) - n,
                          "}, \"experiments\": [{\"name\": \"b\", \"match\": {\"path_prefix\": "
                          "\"/\"}, \"policy\": \"thompson\", \"arms\": [");
    for (int i = 0; i <= MM_MAX_ARMS; i++)
        n += (size_t)snprintf(text + n, sizeof(text) - n, "%s\"u%d\"", i ? ", " : "", i);
    snprintf(text + n, sizeof(text) - n, "]}]}");
    char err[512];
    config_t *c = parse(text, err, sizeof(err));
    assert_null(c);
    assert_non_null(strstr(err, "experiments[0].arms[16]: too many arms (at most 16)"));
}

/* ---- size ---- */

/* n upstreams and n ab experiments, each experiment on two of them. */
static char *big_config(int n)
{
    size_t cap = (size_t)n * 200 + 64, len = 0;
    char *t = malloc(cap);
    assert_non_null(t);
    len += (size_t)snprintf(t + len, cap - len, "{\"upstreams\": {");
    for (int i = 0; i < n; i++)
        len += (size_t)snprintf(t + len, cap - len, "%s\"u%d\": {\"url\": \"http://127.0.0.1:%d\"}",
                                i ? ", " : "", i, 1000 + i % 60000);
    len += (size_t)snprintf(t + len, cap - len, "}, \"experiments\": [");
    for (int i = 0; i < n; i++)
        len += (size_t)snprintf(t + len, cap - len,
                                "%s{\"name\": \"e%d\", \"match\": {\"path_prefix\": \"/\"}, "
                                "\"policy\": \"ab\", \"arms\": {\"u%d\": 1, \"u%d\": 1}}",
                                i ? ", " : "", i, (i + n - 1) % n, i);
    snprintf(t + len, cap - len, "]}");
    return t;
}

/* Arms and experiment names are looked up by hash while parsing, not by a
 * scan of what came before (16,000 of each took 2.5 s to check; 0.24 s
 * now, measured by hand: speed is not asserted in tests). What a test can
 * hold is that the tables answer right at that size: every arm found, and
 * a duplicate name or unknown arm at the very end still caught. */
static void test_large_config_names_are_checked(void **state)
{
    need_policy("ab");
    enum { N = 12000 };
    char *t = big_config(N), err[512];
    config_t *c = parse(t, err, sizeof(err));
    if (c == NULL) fail_msg("rejected: %s", err);
    assert_int_equal(c->n_experiments, (size_t)N);
    config_free(c);

    /* the last experiment takes the first one's name */
    char *last = strstr(t, "\"name\": \"e11999\"");
    assert_non_null(last);
    memcpy(last, "\"name\": \"e0\"    ", strlen("\"name\": \"e0\"    "));
    assert_null(parse(t, err, sizeof(err)));
    if (strstr(err, "experiments[11999].name: experiment name \"e0\" is already used by "
                    "experiments[0]") == NULL)
        fail_msg("%s", err);

    /* ... and an arm no upstream has */
    memcpy(last, "\"name\": \"e11999\"", strlen("\"name\": \"e11999\""));
    char *arm = strstr(last, "\"u11999\": 1");
    assert_non_null(arm);
    arm[2] = 'x'; /* "ux1999" */
    assert_null(parse(t, err, sizeof(err)));
    if (strstr(err, "experiments[11999].arms") == NULL ||
        strstr(err, "unknown upstream \"ux1999\"") == NULL)
        fail_msg("%s", err);
    free(t);
}

/* ---- files ---- */

/* One number written three ways is one definition (a reload that
 * rewrites 90 as 90.0 keeps the operator's changes); another value is not. */
static void test_definition_compares_numbers_by_value(void **state)
{
    (void)state;
    const char *ways[] = {"90", "90.0", "9e1", "90.00000"};
    char text[1024], first[512] = "";
    for (size_t i = 0; i < 5; i++) {
        snprintf(text, sizeof text,
                 "{" UPS ", \"experiments\": [{\"name\":\"x\",\"match\":{\"path_prefix\":\"/\"},"
                 "\"policy\":\"ab\",\"arms\":{\"champion\":%s,\"challenger\":10}}]}",
                 i < 4 ? ways[i] : "90.5");
        config_t *c = parse_ok(text);
        const char *d = c->experiments[0].definition;
        if (i == 0) snprintf(first, sizeof first, "%s", d);
        if (i < 4)
            assert_string_equal(d, first);
        else
            assert_string_not_equal(d, first);
        config_free(c);
    }
    assert_non_null(strstr(first, "\"champion\":90}"));
}

static void test_load_missing_file(void **state)
{
    char err[512];
    assert_null(config_load("/nonexistent/modelmux.json", err, sizeof(err)));
    assert_string_equal(err, "/nonexistent/modelmux.json: cannot open: No such file or directory");
}

/* README: "Files larger than 16 MiB are refused": a file of exactly 16 MiB
 * is not larger, and loads. */
static void write_padded(const char *path, const char *text, size_t size)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    size_t n = strlen(text);
    assert_true(fwrite(text, 1, n, f) == n);
    for (size_t i = n; i < size; i++) assert_true(fputc(' ', f) == ' ');
    assert_int_equal(fclose(f), 0);
}

static void test_load_size_limit_is_16_mib(void **state)
{
    char path[] = "/tmp/mmtest-config-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    char err[512], want[600];
    write_padded(path, MINIMAL, (size_t)16 << 20);
    config_t *c = config_load(path, err, sizeof(err));
    if (c == NULL) fail_msg("a file of exactly 16 MiB was refused: %s", err);
    config_free(c);
    write_padded(path, MINIMAL, ((size_t)16 << 20) + 1);
    assert_null(config_load(path, err, sizeof(err)));
    snprintf(want, sizeof(want), "%s: larger than 16 MiB: not a config file", path);
    assert_string_equal(err, want);
    unlink(path);
}

static void test_default_config_file_is_valid(void **state)
{
    need_policy("ab");
    const char *src = getenv("MM_SOURCE_DIR");
    char path[1024], err[512];
    snprintf(path, sizeof(path), "%s/config/modelmux.json", src ? src : ".");
    config_t *c = config_load(path, err, sizeof(err));
    if (c == NULL) fail_msg("%s", err);
    assert_string_equal(c->listen.host, "127.0.0.1");
    assert_int_equal(c->listen.port, 8080);
    assert_int_equal(c->has_admin, 1);
    assert_int_equal(c->admin_listen.port, 9090);
    assert_null(c->admin_token);
    assert_int_equal(c->store.type, STORE_MEMORY);
    assert_string_equal(c->log_requests, "logs/requests.jsonl");
    assert_int_equal(c->n_upstreams, 2);
    assert_int_equal(c->upstreams[config_upstream_index(c, "challenger")].eject_consecutive_5xx, 5);
    assert_int_equal(c->n_experiments, 1);
    assert_string_equal(c->experiments[0].name, "ranker");
    assert_string_equal(c->experiments[0].path_prefix, "/v1/");
    assert_int_equal(c->experiments[0].sticky_kind, STICKY_HEADER);
    assert_string_equal(c->experiments[0].sticky_name, "X-User-Id");
    config_free(c);
}

/* A key of any length is reported at itself, not at an enclosing object,
 * and named whole up to 256 bytes (255: the longest upstream name, after
 * `experiments[0].arms.`, once made the message cut it short without a
 * mark), longer ones cut (first 200 bytes, then "..."). 1022 and 1023
 * characters straddle the limit of the pointer buffers, 1024 and 5000 go
 * well past it. */
static void test_long_keys_are_reported_where_they_are(void **state)
{
    /* Each case: the config with the key (%s), and the message with the
     * key as shown (%s); prefix: the message goes on (a list of names). */
    static const struct {
        const char *text, *want;
        int prefix;
    } cases[] = {
        {"{" UPS ", \"experiments\": [], \"%s\": 1}",
         "t.json:1:130: unknown key %s (allowed here: listen, admin, store, log, limits, "
         "upstreams, experiments)",
         0},
        {"{\"upstreams\": {\"%s\": {\"url\": \"http://127.0.0.1:1\"}},\n\"experiments\": []}",
         "t.json:1:16: upstreams.%s: bad upstream name; names are 1-64 characters of "
         "[A-Za-z0-9_.-]",
         0},
        {"{" UPS ", \"experiments\": [\n"
         "  {\"name\": \"e\", \"match\": {\"path_prefix\": \"/\", \"headers\": "
         "{\"%s\": \"KR\"}}}]}",
         "t.json:2:59: experiments[0].match.headers.%s: bad header name; expected 1-127 "
         "token characters",
         0},
        /* a policy's own path to a long key (ab's "/arms/NAME") */
        {"{" UPS ", \"experiments\": [\n"
         "  {\"name\": \"e\", \"match\": {\"path_prefix\": \"/\"}, \"policy\": \"ab\", "
         "\"arms\": {\"champion\": 1, \"%s\": 1}}]}",
         "t.json:2:88: experiments[0].arms.%s: unknown upstream", 1},
    };
    static const size_t lens[] = {255, 256, 257, 300, 1022, 1023, 1024, 1100, 5000};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        size_t n = lens[i];
        char *k = malloc(n + 1), *text = malloc(n + 512), want[1024], shown[260];
        assert_non_null(k);
        assert_non_null(text);
        memset(k, 'k', n);
        k[n] = '\0';
        snprintf(shown, sizeof(shown), n <= 256 ? "%s" : "%.200s...", k);
        for (size_t j = 0; j < sizeof(cases) / sizeof(cases[0]); j++) {
            snprintf(text, n + 512, cases[j].text, k);
            snprintf(want, sizeof(want), cases[j].want, shown);
            if (cases[j].prefix)
                expect_error_prefix(text, want);
            else
                expect_error(text, want);
        }
        free(k);
        free(text);
    }
}

/* "sticky": null is no object, for every policy that takes sticky (the
 * README: null stands for "absent" only where a key says so). */
static void test_sticky_null_is_refused_by_every_policy(void **state)
{
    need_policy("ab");
    need_policy("canary");
    expect_error("{" UPS ", \"experiments\": [\n"
                 "  {\"name\": \"e\", \"match\": {\"path_prefix\": \"/\"}, \"policy\": \"ab\", "
                 "\"arms\": {\"champion\": 1, \"challenger\": 1}, \"sticky\": null}]}",
                 "t.json:2:116: experiments[0].sticky must be an object, got null");
    expect_error("{" UPS ", \"experiments\": [\n"
                 "  {\"name\": \"e\", \"match\": {\"path_prefix\": \"/\"}, \"policy\": \"canary\", "
                 "\"champion\": \"champion\", \"canary\": \"challenger\", \"sticky\": null}]}",
                 "t.json:2:126: experiments[0].sticky must be an object, got null");
}

static void test_error_with_small_buffer_is_truncated_safely(void **state)
{
    char err[8];
    assert_null(parse("{\"listen\": 1}", err, sizeof(err)));
    assert_string_equal(err, "t.json:");
    assert_null(parse("{\"listen\": 1}", NULL, 0));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_syntax_error_has_jansson_position),
        cmocka_unit_test(test_definition_compares_numbers_by_value),
        cmocka_unit_test(test_duplicate_key_is_rejected),
        cmocka_unit_test(test_nul_byte_is_reported_where_it_is),
        cmocka_unit_test(test_bad_bytes_are_reported_where_they_are),
        cmocka_unit_test(test_byte_order_mark_is_named),
        cmocka_unit_test(test_messages_escape_what_they_quote),
        cmocka_unit_test(test_top_level_must_be_object),
        cmocka_unit_test(test_unknown_top_level_key),
        cmocka_unit_test(test_unknown_upstream_key),
        cmocka_unit_test(test_upstream_resolve_ms),
        cmocka_unit_test(test_wrong_type),
        cmocka_unit_test(test_negative_timeout),
        cmocka_unit_test(test_integer_keys_reject_fractions_and_strings),
        cmocka_unit_test(test_number_out_of_range),
        cmocka_unit_test(test_missing_required_points_at_enclosing_object),
        cmocka_unit_test(test_bad_url),
        cmocka_unit_test(test_url_parts),
        cmocka_unit_test(test_bad_listen_port),
        cmocka_unit_test(test_parse_addr),
        cmocka_unit_test(test_admin_public_without_token_fails),
        cmocka_unit_test(test_admin_public_with_token_or_loopback_is_ok),
        cmocka_unit_test(test_admin_and_data_listeners_must_not_overlap),
        cmocka_unit_test(test_admin_token_must_be_usable),
        cmocka_unit_test(test_store_redis_defaults_and_errors),
        cmocka_unit_test(test_store_redis_auth),
        cmocka_unit_test(test_store_redis_sentinel),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_log_and_limits_values),
        cmocka_unit_test(test_bad_upstream_name),
        cmocka_unit_test(test_bad_experiment_name),
        cmocka_unit_test(test_missing_path_prefix),
        cmocka_unit_test(test_match_headers),
        cmocka_unit_test(test_unknown_policy),
        cmocka_unit_test(test_feedback_ttl_range),
        cmocka_unit_test(test_full_valid_config),
        cmocka_unit_test(test_ab_brief_example),
        cmocka_unit_test(test_duplicate_experiment),
        cmocka_unit_test(test_policy_errors_are_positioned),
        cmocka_unit_test(test_list_policies_add_arms_in_order),
        cmocka_unit_test(test_too_many_arms),
        cmocka_unit_test(test_large_config_names_are_checked),
        cmocka_unit_test(test_load_missing_file),
        cmocka_unit_test(test_load_size_limit_is_16_mib),
        cmocka_unit_test(test_default_config_file_is_valid),
        cmocka_unit_test(test_number_just_outside_a_range_is_shown_exactly),
        cmocka_unit_test(test_error_with_small_buffer_is_truncated_safely),
        cmocka_unit_test(test_long_keys_are_reported_where_they_are),
        cmocka_unit_test(test_sticky_null_is_refused_by_every_policy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
