/* test_http.c — header spans, hop-by-hop filtering, request ids, sticky-key
 * sources, JSON escaping and the JSON error answer (src/http.c, src/buf.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <llhttp.h>

#include "buf.h"
#include "http.h"
#include "leg.h"
#include "rng.h"

static mm_str_t S(const char *s)
{
    return (mm_str_t){s, strlen(s)};
}

/* Record the header lines of `text` as llhttp would: the value without the
 * whitespace around it. */
static void head_from(http_head_t *h, const char *text)
{
    http_head_reset(h);
    const char *p = text;
    while (*p && !(p[0] == '\r' && p[1] == '\n')) {
        const char *colon = strchr(p, ':'), *eol = strstr(p, "\r\n");
        const char *v = colon + 1, *ve = eol;
        while (*v == ' ' || *v == '\t') v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
        http_head_on_field(h, (uint32_t)(p - text), (uint32_t)(colon - p));
        if (ve > v) http_head_on_value(h, (uint32_t)(v - text), (uint32_t)(ve - v));
        p = eol + 2;
    }
    http_head_index(h, text);
}

static void test_header_spans_split_across_reads_are_joined(void **state)
{
    (void)state;
    /* "X-Us" + "er-Id: " + "u1" arriving in pieces: offsets are contiguous */
    const char base[] = "X-User-Id: u1\r\nHost: h\r\n";
    http_head_t h;
    http_head_reset(&h);
    http_head_on_field(&h, 0, 4);
    http_head_on_field(&h, 4, 5);
    http_head_on_value(&h, 11, 1);
    http_head_on_value(&h, 12, 1);
    http_head_on_field(&h, 15, 4);
    http_head_on_value(&h, 21, 1);
    assert_int_equal(h.n, 2);
    mm_str_t n0 = http_hname(&h, base, 0), v0 = http_hvalue(&h, base, 0);
    assert_int_equal(n0.n, 9);
    assert_memory_equal(n0.p, "X-User-Id", 9);
    assert_memory_equal(v0.p, "u1", 2);
    assert_int_equal(http_find(&h, base, "host"), 1);
    assert_int_equal(http_find(&h, base, "x-user-id"), 0);
    assert_int_equal(http_find(&h, base, "cookie"), -1);
}

/* Parse a request head with llhttp itself, in two reads split at `split`,
 * recording spans the way src/proxy.c does; returns the head's llhttp error
 * (HPE_OK for a complete, accepted head). */
static const char *parse_base;
static int on_pfield(llhttp_t *p, const char *at, size_t n)
{
    http_head_on_field(p->data, (uint32_t)(at - parse_base), (uint32_t)n);
    return 0;
}
static int on_pvalue(llhttp_t *p, const char *at, size_t n)
{
    http_head_on_value(p->data, (uint32_t)(at - parse_base), (uint32_t)n);
    return 0;
}
static llhttp_errno_t parse_head(http_head_t *h, const char *text, size_t split)
{
    llhttp_settings_t s;
    llhttp_settings_init(&s);
    s.on_header_field = on_pfield;
    s.on_header_value = on_pvalue;
    llhttp_t p;
    llhttp_init(&p, HTTP_REQUEST, &s);
    p.data = h;
    parse_base = text;
    http_head_reset(h);
    size_t n = strlen(text);
    if (split > n) split = n;
    llhttp_errno_t e = llhttp_execute(&p, text, split);
    if (e == HPE_OK) e = llhttp_execute(&p, text + split, n - split);
    http_head_index(h, text);
    return e;
}

static void test_obs_fold_is_flagged_however_llhttp_delivers_it(void **state)
{
    (void)state;
    /* llhttp passes a folded value on as a second span that starts after the
     * CRLF, or, after an empty first line, as one span after the fold. */
    static const char *folded[] = {
        "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\nX-After: z\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\tb\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nX-A:\r\n b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nX-A:  \t\r\n \t b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n \r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nX-A:\r\n \r\nX-B: c\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n c\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\n y\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(folded) / sizeof(folded[0]); i++) {
        for (size_t split = 1; split < strlen(folded[i]); split++) {
            http_head_t h;
            assert_int_equal(parse_head(&h, folded[i], split), HPE_OK);
            if (!h.obs_fold) fail_msg("not flagged: case %zu split at %zu", i, split);
            assert_non_null(http_request_head_error(&h, folded[i], 1, 1));
        }
    }
    /* The value is never joined across the fold's CRLF. */
    http_head_t h;
    const char *t = folded[0];
    parse_head(&h, t, strlen(t));
    assert_int_equal(h.n, 3);
    mm_str_t v = http_hvalue(&h, t, 1);
    assert_null(memchr(v.p, '\n', v.n));
}

static void test_values_split_across_reads_empty_or_padded_are_not_obs_fold(void **state)
{
    (void)state;
    const char *t = "GET / HTTP/1.1\r\nHost: x\r\nX-A: abc def\r\nX-Empty:\r\n"
                    "X-Pad: \t  v \t\r\nX-Empty-Pad:  \t \r\nX-Last:\r\n\r\n";
    static const char *const values[] = {"x", "abc def", "", "v", "", ""};
    for (size_t split = 1; split < strlen(t); split++) {
        http_head_t h;
        assert_int_equal(parse_head(&h, t, split), HPE_OK);
        if (h.obs_fold) fail_msg("flagged at split %zu", split);
        assert_int_equal(h.n, 6);
        for (int i = 0; i < h.n; i++) {
            mm_str_t v = http_trim(http_hvalue(&h, t, i));
            if (v.n != strlen(values[i]) || memcmp(v.p, values[i], v.n) != 0)
                fail_msg("header %d is '%.*s' at split %zu", i, (int)v.n, v.p, split);
        }
        assert_null(http_request_head_error(&h, t, 1, 1));
    }
}

static void test_request_heads_refused_with_400(void **state)
{
    (void)state;
    static const struct {
        const char *head;
        int major, minor, refused;
    } cases[] = {
        {"Host: a\r\n\r\n", 1, 1, 0},
        {"X-A: 1\r\n\r\n", 1, 1, 1}, /* HTTP/1.1 needs Host */
        {"X-A: 1\r\n\r\n", 1, 0, 0}, /* HTTP/1.0 does not */
        {"Host: a\r\nhost: b\r\n\r\n", 1, 1, 1},
        {"Host: a\r\nHOST: a\r\n\r\n", 1, 0, 1},
        {"Host: a\r\nTransfer-Encoding: chunked\r\n\r\n", 1, 1, 0},
        {"Host: a\r\nTransfer-Encoding:  CHUNKED \t\r\n\r\n", 1, 1, 0},
        {"Host: a\r\nTransfer-Encoding: gzip\r\n\r\n", 1, 1, 1},
        {"Host: a\r\nTransfer-Encoding: identity\r\n\r\n", 1, 1, 1},
        {"Host: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 1, 1, 1},
        {"Host: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 1, 1, 1},
        {"Host: a\r\nTransfer-Encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n", 1, 1, 1},
        {"Host: a\r\nTransfer-Encoding: ,chunked\r\n\r\n", 1, 1, 1},
        {"Host: a\r\nTransfer-Encoding: chunked,\r\n\r\n", 1, 1, 1},
        {"Host: a\r\nTransfer-Encoding: chunkedx\r\n\r\n", 1, 1, 1},
        {"Host: a\r\nTransfer-Encoding: x\r\n\r\n", 1, 1, 1},
        {"Host: a\r\nTransfer-Encoding: chunked\r\n\r\n", 1, 0, 1}, /* no chunked in 1.0 */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        http_head_t h;
        head_from(&h, cases[i].head);
        const char *why =
            http_request_head_error(&h, cases[i].head, cases[i].major, cases[i].minor);
        if ((why != NULL) != cases[i].refused) fail_msg("case %zu: %s", i, why ? why : "accepted");
    }
    /* an empty Transfer-Encoding value (llhttp delivers an empty span) */
    const char t[] = "Host: a\r\nTransfer-Encoding:\r\n\r\n";
    http_head_t h;
    http_head_reset(&h);
    http_head_on_field(&h, 0, 4);
    http_head_on_value(&h, 6, 1);
    http_head_on_field(&h, 9, 17);
    http_head_on_value(&h, 29, 0);
    http_head_index(&h, t);
    assert_false(h.obs_fold);
    assert_non_null(http_request_head_error(&h, t, 1, 1));
}

static void test_request_target_forms(void **state)
{
    (void)state;
    static const struct {
        const char *target;
        http_target_form_t form;
        const char *authority, *path;
    } cases[] = {
        {"/v1/echo?x=1", HT_ORIGIN, "", "/v1/echo?x=1"},
        {"*", HT_ASTERISK, "", "*"},
        {"http://api.example.com/v1/echo?x=1", HT_ABSOLUTE, "api.example.com", "/v1/echo?x=1"},
        {"HTTP://Api.Example.com:8080", HT_ABSOLUTE, "Api.Example.com:8080", ""},
        {"http://api.example.com?q=1", HT_ABSOLUTE, "api.example.com", "?q=1"},
        {"http://[::1]:8/x", HT_ABSOLUTE, "[::1]:8", "/x"},
        {"http://", HT_INVALID, "", "http://"},
        {"http:///x", HT_INVALID, "", "http:///x"},
        {"http://user@api.example.com/x", HT_INVALID, "", "http://user@api.example.com/x"},
        {"https://api.example.com/x", HT_INVALID, "", "https://api.example.com/x"},
        {"api.example.com:443", HT_INVALID, "", "api.example.com:443"},
        {"**", HT_INVALID, "", "**"},
        /* a fragment is never sent (RFC 9112 §3.2): "#" was taken as a path
         * character, and ".." after it changed the route */
        {"/echo#/../v1/rank", HT_INVALID, "", "/echo#/../v1/rank"},
        {"/echo?q=1#f", HT_INVALID, "", "/echo?q=1#f"},
        {"http://a/x#f", HT_INVALID, "", "http://a/x#f"},
        {"http://a#f", HT_INVALID, "", "http://a#f"},
        {"", HT_INVALID, "", ""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        mm_str_t a, p;
        http_target_form_t f = http_target(S(cases[i].target), &a, &p);
        if (f != cases[i].form) fail_msg("%s: form %d", cases[i].target, (int)f);
        assert_int_equal(a.n, strlen(cases[i].authority));
        assert_memory_equal(a.p, cases[i].authority, a.n);
        assert_int_equal(p.n, strlen(cases[i].path));
        assert_memory_equal(p.p, cases[i].path, p.n);
    }
}

static void test_host_values_are_uri_host_and_port(void **state)
{
    (void)state;
    static const char *valid[] = {"",          "api.example.com", "a:8080", "[::1]:80", "[v1.x]",
                                  "ex%41mple", "a_b~c",           "a,b;c",  " a ",      ":80"};
    static const char *invalid[] = {"a b", "a/b", "u@a",  "a:b:c", "[::1",  "[]",
                                    "a?b", "a#b", "a\\b", "ex%4",  "ex%zz", "a:8x"};
    for (size_t i = 0; i < sizeof(valid) / sizeof(valid[0]); i++)
        if (!http_valid_host(S(valid[i]))) fail_msg("'%s' refused", valid[i]);
    for (size_t i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++)
        if (http_valid_host(S(invalid[i]))) fail_msg("'%s' accepted", invalid[i]);
}

static void test_more_than_128_headers_are_flagged(void **state)
{
    (void)state;
    http_head_t h;
    http_head_reset(&h);
    for (uint32_t i = 0; i < HTTP_MAX_HEADERS + 1; i++) {
        http_head_on_field(&h, i * 4, 1);
        http_head_on_value(&h, i * 4 + 2, 1);
    }
    assert_int_equal(h.n, HTTP_MAX_HEADERS);
    assert_true(h.too_many);
}

static void test_hop_by_hop_headers_are_recognised(void **state)
{
    (void)state;
    const char *hop[] = {
        "Connection", "keep-alive", "TE", "Trailer", "Transfer-Encoding", "Upgrade",
        "Proxy-Connection", "Proxy-Authorization", "Proxy-Authenticate", "Expect", "X-Request-Id",
        "x-modelmux-arm", "X-Modelmux-Shadow", "X-Modelmux-Experiment",
        /* any name of ours, not only those modelmux sets */
        "X-MODELMUX-FOO", "x-modelmux-a", "X-Modelmux-Arm-Override", "X-Modelmux-"};
    for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++)
        assert_true(http_kind_is_hop(http_kind_of(S(hop[i]))));
    const char *kept[] = {"Host",       "Content-Type",    "Content-Length", "X-User-Id",
                          "Cookie",     "Accept",          "Te-Not",         "Authorization",
                          "X-Modelmux", "X-Modelmuxer-Id", "X-Model-Mux-Arm"};
    for (size_t i = 0; i < sizeof(kept) / sizeof(kept[0]); i++)
        assert_false(http_kind_is_hop(http_kind_of(S(kept[i]))));
}

static void test_headers_named_in_connection_are_hop_by_hop_whatever_their_length(void **state)
{
    (void)state;
    const char text[] = "Connection: keep-alive, X-Drop , A1, x-long-custom-header\r\n"
                        "X-Drop: 1\r\n" /* 6 characters, like "expect" */
                        "a1: 1\r\n"     /* 2 characters, like "te" */
                        "X-Long-Custom-Header: 1\r\n"
                        "X-Keep: 1\r\n"
                        "\r\n";
    http_head_t h;
    head_from(&h, text);
    assert_int_equal(h.n, 5);
    assert_true(h.dropped[1]);
    assert_true(h.dropped[2]);
    assert_true(h.dropped[3]);
    assert_false(h.dropped[4]);
}

static void test_connection_cannot_drop_content_length(void **state)
{
    (void)state;
    /* The body is forwarded raw: without its length it would be read as the
     * next request upstream, or leave an answer unframed for the client. */
    const char text[] = "Connection: Content-Length, X-Drop\r\n"
                        "Content-Length: 5\r\n"
                        "X-Drop: 1\r\n"
                        "\r\n";
    http_head_t h;
    head_from(&h, text);
    assert_int_equal(h.n, 3);
    assert_false(h.dropped[1]);
    assert_true(h.dropped[2]);
}

static void test_head_index_classifies_every_header_once(void **state)
{
    (void)state;
    const char text[] = "HOST: a\r\n"
                        "Content-TYPE: application/json\r\n"
                        "X-Forwarded-For: 10.0.0.1\r\n"
                        "Connection: keep-alive, X-A\r\n"
                        "X-A: drop me\r\n"
                        "Content-Typf: kept\r\n"
                        "x-b: dropped by the second Connection header\r\n"
                        "connection: X-B\r\n"
                        "x-forwarded-for: 10.0.0.2\r\n"
                        "Keep-Alive: timeout=5\r\n"
                        "X-Keep: 1\r\n"
                        "\r\n";
    http_head_t h;
    head_from(&h, text);
    assert_int_equal(h.n, 11);
    assert_int_equal(http_known(&h, HK_HOST), 0);
    assert_int_equal(http_known(&h, HK_CONTENT_TYPE), 1);
    assert_int_equal(http_known(&h, HK_X_FORWARDED_FOR), 2);
    assert_int_equal(http_known(&h, HK_CONNECTION), 3);
    assert_int_equal(http_known(&h, HK_CONTENT_LENGTH), -1);
    assert_int_equal(h.kind[5], HK_OTHER); /* same length as content-type */
    assert_int_equal(h.kind[8], HK_X_FORWARDED_FOR);
    const int dropped[] = {0, 0, 0, 1, 1, 0, 1, 1, 0, 1, 0};
    for (int i = 0; i < h.n; i++) assert_int_equal(h.dropped[i], dropped[i]);
}

static void test_known_names_match_in_any_case_and_near_misses_do_not(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        http_kind_t kind;
    } known[] = {{"te", HK_HOP},
                 {"host", HK_HOST},
                 {"expect", HK_EXPECT},
                 {"trailer", HK_HOP},
                 {"upgrade", HK_HOP},
                 {"connection", HK_CONNECTION},
                 {"keep-alive", HK_HOP},
                 {"content-type", HK_CONTENT_TYPE},
                 {"x-request-id", HK_X_REQUEST_ID},
                 {"content-length", HK_CONTENT_LENGTH},
                 {"x-modelmux-arm", HK_HOP},
                 {"x-forwarded-for", HK_X_FORWARDED_FOR},
                 {"x-forwarded-host", HK_X_FORWARDED_HOST},
                 {"proxy-connection", HK_HOP},
                 {"transfer-encoding", HK_TRANSFER_ENC},
                 {"x-modelmux-shadow", HK_HOP},
                 {"proxy-authenticate", HK_HOP},
                 {"proxy-authorization", HK_HOP},
                 {"x-modelmux-experiment", HK_HOP}};
    mm_rng_t rng;
    mm_rng_seed(&rng, 7);
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
        char buf[32];
        size_t n = strlen(known[i].name);
        for (int round = 0; round < 50; round++) {
            for (size_t j = 0; j < n; j++) {
                char ch = known[i].name[j];
                buf[j] = (mm_rng_next(&rng) & 1) && ch >= 'a' && ch <= 'z' ? (char)(ch - 32) : ch;
            }
            assert_int_equal(http_kind_of((mm_str_t){buf, n}), known[i].kind);
        }
        /* one character off, at every position: never the same kind (but
         * any X-Modelmux-* name is ours, whatever follows the prefix) */
        for (size_t j = 0; j < n; j++) {
            memcpy(buf, known[i].name, n);
            buf[j] = buf[j] == 'x' ? 'y' : 'x';
            int ours = j >= 11 && strncmp(known[i].name, "x-modelmux-", 11) == 0;
            assert_int_equal(http_kind_of((mm_str_t){buf, n}), ours ? HK_HOP : HK_OTHER);
        }
    }
}

static void test_emitted_header_lines_are_normalised_and_runs_copied(void **state)
{
    (void)state;
    const char text[] = "A: 1\r\nB:2\r\nC:  3 \r\nD: 4\r\nE: 5\r\n\r\n";
    http_head_t h;
    head_from(&h, text);
    mm_buf_t b;
    mm_buf_init(&b);
    http_run_t run = {NULL, 0};
    for (int i = 0; i < h.n; i++) http_emit_header(&b, &run, &h, text, i);
    http_emit_flush(&b, &run);
    assert_int_equal(b.len, strlen("A: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n"));
    assert_memory_equal(b.p, "A: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n", b.len);
    /* D and E were one run straight from the text */
    mm_buf_reset(&b);
    for (int i = 0; i < h.n; i++)
        if (i != 3) http_emit_header(&b, &run, &h, text, i);
    http_emit_flush(&b, &run);
    assert_memory_equal(b.p, "A: 1\r\nB: 2\r\nC: 3\r\nE: 5\r\n", b.len);
    mm_buf_free(&b);
}

static void test_token_lists(void **state)
{
    (void)state;
    assert_true(http_has_token(S("100-continue"), "100-continue"));
    assert_true(http_has_token(S("foo, 100-Continue"), "100-continue"));
    assert_false(http_has_token(S("100-continued"), "100-continue"));
    assert_true(http_has_token(S(" close "), "close"));
}

static void test_request_ids_are_validated(void **state)
{
    (void)state;
    char id128[129], id129[130];
    memset(id128, 'a', 128);
    id128[128] = '\0';
    memset(id129, 'a', 129);
    id129[129] = '\0';
    assert_true(http_valid_request_id(S("abc.DEF_123-x")));
    assert_true(http_valid_request_id(S(id128)));
    assert_false(http_valid_request_id(S(id129)));
    assert_false(http_valid_request_id(S("")));
    assert_false(http_valid_request_id(S("has space")));
    assert_false(http_valid_request_id(S("semi;colon")));
    assert_false(http_valid_request_id(S("caf\xc3\xa9")));
}

static void test_generated_request_ids_are_32_lowercase_hex_and_seeded(void **state)
{
    (void)state;
    mm_rng_t a, b;
    mm_rng_seed(&a, 7);
    mm_rng_seed(&b, 7);
    char x[33], y[33], z[33];
    http_new_request_id(&a, x);
    http_new_request_id(&b, y);
    http_new_request_id(&a, z);
    assert_int_equal(strlen(x), 32);
    for (int i = 0; i < 32; i++)
        assert_true((x[i] >= '0' && x[i] <= '9') || (x[i] >= 'a' && x[i] <= 'f'));
    assert_string_equal(x, y);     /* same seed, same id */
    assert_string_not_equal(x, z); /* next draw differs */
    assert_true(http_valid_request_id(S(x)));
}

static void test_cookie_and_query_sticky_keys(void **state)
{
    (void)state;
    mm_str_t v;
    assert_true(http_cookie_get(S("a=1; uid=u-42; b=2"), "uid", &v));
    assert_int_equal(v.n, 4);
    assert_memory_equal(v.p, "u-42", 4);
    assert_true(http_cookie_get(S("uid=\"quoted\""), "uid", &v));
    assert_memory_equal(v.p, "quoted", 6);
    assert_false(http_cookie_get(S("xuid=1; uidx=2"), "uid", &v));
    assert_false(http_cookie_get(S("uid="), "uid", &v));
    char qb[64];
    assert_true(http_query_get(S("/v1/rank?x=1&user=bob&y"), "user", qb, sizeof qb, &v));
    assert_memory_equal(v.p, "bob", 3);
    assert_false(http_query_get(S("/v1/rank?username=bob"), "user", qb, sizeof qb, &v));
    assert_false(http_query_get(S("/v1/rank"), "user", qb, sizeof qb, &v));
    mm_str_t p = http_url_path(S("/v1/rank?user=bob"));
    assert_int_equal(p.n, 8);
}

/* Was: "uid=" ended the search, and a later "uid=u-7" in the same header
 * was never seen. */
static void test_an_empty_cookie_does_not_hide_a_later_one(void **state)
{
    (void)state;
    mm_str_t v;
    assert_true(http_cookie_get(S("uid=; a=1; uid=u-7"), "uid", &v));
    assert_int_equal(v.n, 3);
    assert_memory_equal(v.p, "u-7", 3);
    assert_true(http_cookie_get(S("uid=\"\";uid=u-8"), "uid", &v));
    assert_memory_equal(v.p, "u-8", 3);
    assert_true(http_cookie_get(S("uid=first; uid=second"), "uid", &v)); /* first wins */
    assert_int_equal(v.n, 5);
    assert_false(http_cookie_get(S("UID=x"), "uid", &v)); /* names are case-sensitive */
}

static int qget(const char *url, const char *name, const char *want)
{
    char qb[64];
    mm_str_t v;
    if (!http_query_get((mm_str_t){url, strlen(url)}, name, qb, sizeof qb, &v)) return want == NULL;
    return want != NULL && v.n == strlen(want) && memcmp(v.p, want, v.n) == 0;
}

/* Was: names and values were compared and hashed raw, so "?uid=a%20b" and
 * "?uid=a+b" were two users, "?u%69d=1" no key at all, and "?uid=&uid=5"
 * stopped at the empty value. */
static void test_query_keys_are_form_decoded(void **state)
{
    (void)state;
    assert_true(qget("/r?uid=a%20b", "uid", "a b"));
    assert_true(qget("/r?uid=a+b", "uid", "a b"));
    assert_true(qget("/r?x=1&u%69d=al%40x.com", "uid", "al@x.com"));
    assert_true(qget("/r?uid=%zz", "uid", "%zz")); /* not an escape: as sent */
    assert_true(qget("/r?uid=&uid=5", "uid", "5"));
    assert_true(qget("/r?uid=1&uid=2", "uid", "1"));
    assert_true(qget("/r?uid", "uid", NULL));
    assert_true(qget("/r?uid=", "uid", NULL));
    assert_true(qget("/r?uidx=1&xuid=2", "uid", NULL));
    /* a value longer than the buffer is returned as sent */
    char long_url[200] = "/r?uid=";
    memset(long_url + 7, 'a', 100);
    char qb[16];
    mm_str_t v;
    assert_true(http_query_get((mm_str_t){long_url, strlen(long_url)}, "uid", qb, sizeof qb, &v));
    assert_int_equal(v.n, 100);
}

static int norm(const char *in, const char *want)
{
    char b[256];
    size_t n = strlen(in);
    memcpy(b, in, n);
    n = http_normalize_path(b, n);
    if (n == strlen(want) && memcmp(b, want, n) == 0) return 1;
    print_error("normalize(%s) = %.*s, want %s\n", in, (int)n, b, want);
    return 0;
}

static void test_paths_are_normalised_like_nginx_and_envoy(void **state)
{
    (void)state;
    assert_true(norm("/v1/rank", "/v1/rank"));
    assert_true(norm("/v1/%72ank", "/v1/rank"));
    assert_true(norm("/v1//rank", "/v1/rank"));
    assert_true(norm("//v1///rank//", "/v1/rank/"));
    assert_true(norm("/v1/./rank", "/v1/rank"));
    assert_true(norm("/v1/rank/../../admin", "/admin"));
    assert_true(norm("/v1/%2e%2E/admin", "/admin"));
    assert_true(norm("/../v1/rank", "/v1/rank"));
    assert_true(norm("/a/..", "/"));
    assert_true(norm("/a/.", "/a/"));
    assert_true(norm("/", "/"));
    assert_true(norm("/a/..b/.c", "/a/..b/.c"));
    assert_true(norm("/a%2fb/%2F..", "/a%2Fb/%2F.."));
    assert_true(norm("/a%zz%4", "/a%zz%4"));
    assert_true(norm("*", "*"));
}

/* Parse `text` (a request or an answer, by `type`) with llhttp through
 * http_execute, in reads of `step` bytes, wired as src/proxy.c and
 * src/upstream.c wire it; stops at the message's end. Returns the result:
 * HPE_OK for a complete message, else the error (t->error says ours). */
static uint32_t chunked_limit = 64;
static int on_xchunk(llhttp_t *p)
{
    return http_chunked_on_chunk(p->data, p->content_length);
}
static int on_xext(llhttp_t *p, const char *at, size_t n)
{
    (void)at;
    return http_chunked_on_ext(p->data, n, chunked_limit);
}
static int on_xdone(llhttp_t *p)
{
    (void)p;
    return HPE_PAUSED;
}
static llhttp_errno_t parse_chunked(int type, const char *text, size_t step, http_chunked_t *t,
                                    size_t *consumed)
{
    llhttp_settings_t s;
    llhttp_settings_init(&s);
    s.on_chunk_header = on_xchunk;
    s.on_chunk_extension_name = on_xext;
    s.on_chunk_extension_value = on_xext;
    s.on_message_complete = on_xdone;
    llhttp_t p;
    llhttp_init(&p, (llhttp_type_t)type, &s);
    memset(t, 0, sizeof(*t));
    p.data = t;
    size_t n = strlen(text), off = 0;
    while (off < n) {
        size_t len = n - off < step ? n - off : step;
        llhttp_errno_t e = http_execute(&p, t, text + off, len, chunked_limit);
        if (e == HPE_PAUSED) { /* the message's end */
            *consumed = off + (size_t)(llhttp_get_error_pos(&p) - (text + off));
            return HPE_OK;
        }
        if (e != HPE_OK) return e;
        off += len;
    }
    *consumed = n;
    return HPE_INTERNAL; /* not complete */
}

/* check() finds a bare LF in each of bare[] and none in crlf[]. */
static void expect_bare_lf(int (*check)(const char *, size_t), const char *const *bare, size_t nb,
                           const char *const *crlf, size_t nc)
{
    for (size_t i = 0; i < nb; i++)
        if (!check(bare[i], strlen(bare[i]))) fail_msg("not found: case %zu", i);
    for (size_t i = 0; i < nc; i++)
        if (check(crlf[i], strlen(crlf[i])) != 0) fail_msg("found in CRLF case %zu", i);
}

static void test_bare_lf_ends_no_line_of_a_head(void **state)
{
    (void)state;
    static const char *bare[] = {"/x HTTP/1.1\nHost: a\r\n\r\n",
                                 "/x HTTP/1.1\r\nHost: a\r\n\n",
                                 "/x HTTP/1.1\r\n\n",
                                 "/x HTTP/1.1\n\n",
                                 "\n",
                                 "200 OK\r\nA: b\n\r\n"};
    static const char *crlf[] = {"/x HTTP/1.1\r\nHost: a\r\n\r\n", "/x HTTP/1.1\r\n\r\n", "", "\r"};
    expect_bare_lf(http_bare_lf, bare, MM_ARRAY_LEN(bare), crlf, MM_ARRAY_LEN(crlf));
    /* the head is looked at only up to where it ends: a byte before it is
     * never read (a '\n' first in the range is bare) */
    const char two[] = "\r\n";
    assert_int_equal(http_bare_lf(two + 1, 1), 1);
}

/* The check of one parsed head looks where llhttp takes a bare LF: the
 * start line's end (from the target's end on, for a request) and the
 * head's empty last line. */
static void test_bare_lf_after_the_start_line_or_ending_the_head(void **state)
{
    (void)state;
    static const char *bare[] = {" HTTP/1.1\nHost: a\r\n\r\n",
                                 " HTTP/1.1\r\nHost: a\r\n\n",
                                 " HTTP/1.1\r\n\n",
                                 " HTTP/1.1\n\n",
                                 " HTTP/1.1\n\r\n",
                                 "\n\r\n",
                                 "HTTP/1.1 200\nA: b\r\n\r\n",
                                 "HTTP/1.1 200 OK\r\nA: b\r\n\n",
                                 "\n",
                                 ""};
    static const char *crlf[] = {" HTTP/1.1\r\nHost: a\r\n\r\n", " HTTP/1.1\r\n\r\n",
                                 "HTTP/1.1 200 OK\r\nA: b\r\nC: d\r\n\r\n"};
    expect_bare_lf(http_head_bare_lf, bare, MM_ARRAY_LEN(bare), crlf, MM_ARRAY_LEN(crlf));
    /* a byte before the range is never read: an LF first in it is bare */
    const char two[] = "\r\n\r\n";
    assert_int_equal(http_head_bare_lf(two + 1, 3), 1);
}

/* The limit is read anew for every call (a reload may lower it in the
 * middle of a message): bytes counted under a larger one that are above
 * the new one refuse the next extension or trailer byte, not wrap the
 * budget around to some 4 GiB. */
static void test_chunked_limit_lowered_mid_message_still_holds(void **state)
{
    (void)state;
    http_chunked_t t;
    memset(&t, 0, sizeof(t));
    assert_int_equal(http_chunked_on_ext(&t, 60000, 65536), 0);
    assert_int_not_equal(http_chunked_on_ext(&t, 10, 1024), 0);
    assert_non_null(t.error);
    assert_int_equal(t.too_large, 1);
    /* exactly at the limit: one byte more is over it */
    memset(&t, 0, sizeof(t));
    assert_int_equal(http_chunked_on_ext(&t, 1023, 1024), 0);
    assert_int_not_equal(http_chunked_on_ext(&t, 0, 1024), 0);
}

static void test_chunked_framing_llhttp_lets_through_is_refused(void **state)
{
    (void)state;
    const char *req = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    const char *ans = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    static const struct {
        const char *body;
        const char *why; /* NULL: accepted */
        int too_large;
    } cases[] = {
        {"5\r\nhello\r\n0\r\n\r\n", NULL, 0},
        {"5;a=b\r\nhello\r\n0\r\nX-A: 1\r\nX-B: 2\r\n\r\n", NULL, 0},
        {"0\r\n\r\n", NULL, 0},
        /* llhttp takes a bare LF as the trailer section's end */
        {"5\r\nhello\r\n0\r\n\n", "bare LF", 0},
        {"5\r\nhello\r\n0\r\nX-A: 1\r\n\n", "bare LF", 0},
        /* and folds and empty names in it */
        {"5\r\nhello\r\n0\r\nX-A: 1\r\n  more\r\n\r\n", "folding", 0},
        {"5\r\nhello\r\n0\r\nX-A:\r\n\tmore\r\n\r\n", "folding", 0},
        {"5\r\nhello\r\n0\r\n: x\r\n\r\n", "empty field name", 0},
        /* 64 bytes of extensions and trailers here (chunked_limit) */
        {"1;aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa=1\r\nx\r\n0\r\n\r\n",
         "size limit", 1},
        {"1;aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\nx\r\n1;"
         "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\r\nx\r\n0\r\n\r\n",
         "size limit", 1},
        {"1;aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\nx\r\n0\r\nX-A: bbbbbbbbbbbbbbbbbbbbbbbbbbbbb\r\n\r\n",
         "size limit", 1},
        {"0\r\nA:1\r\nB:1\r\nC:1\r\nD:1\r\nE:1\r\nF:1\r\nG:1\r\nH:1\r\nI:1\r\nJ:1\r\nK:1\r\n"
         "L:1\r\nM:1\r\n\r\n",
         "size limit", 1},
    };
    char text[512];
    for (int side = 0; side < 2; side++) {
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
            const char *head = side ? ans : req;
            snprintf(text, sizeof(text), "%s%sNEXT", head, cases[i].body);
            size_t whole = strlen(head) + strlen(cases[i].body);
            /* in one read, and in reads of every size down to one byte */
            for (size_t step = strlen(text); step >= 1; step--) {
                http_chunked_t t;
                size_t used = 0;
                llhttp_errno_t e =
                    parse_chunked(side ? HTTP_RESPONSE : HTTP_REQUEST, text, step, &t, &used);
                if (cases[i].why == NULL) {
                    if (e != HPE_OK || used != whole || t.error)
                        fail_msg("case %zu side %d step %zu: %d %s", i, side, step, (int)e,
                                 t.error ? t.error : "");
                    continue;
                }
                if (e == HPE_OK || t.error == NULL || strstr(t.error, cases[i].why) == NULL ||
                    t.too_large != cases[i].too_large)
                    fail_msg("case %zu side %d step %zu: not refused (%d, %s)", i, side, step,
                             (int)e, t.error ? t.error : "-");
            }
        }
    }
    /* 128 trailer lines are taken (as 128 header lines), one more is not */
    static char many[2048];
    for (int lines = 128; lines <= 129; lines++) {
        int n = snprintf(many, sizeof(many), "%s0\r\n", req);
        for (int k = 0; k < lines; k++)
            n += snprintf(many + n, sizeof(many) - (size_t)n, "A:1\r\n");
        snprintf(many + n, sizeof(many) - (size_t)n, "\r\n");
        chunked_limit = 100000;
        http_chunked_t t;
        size_t used = 0;
        llhttp_errno_t e = parse_chunked(HTTP_REQUEST, many, 7, &t, &used);
        chunked_limit = 64;
        if (lines == 128) {
            assert_int_equal(e, HPE_OK);
            assert_int_equal(used, strlen(many));
        } else {
            assert_int_not_equal(e, HPE_OK);
            assert_string_equal(t.error, "more than 128 trailer lines");
            assert_int_equal(t.too_large, 1);
        }
    }
}

static void test_trim(void **state)
{
    (void)state;
    mm_str_t t = http_trim(S(" \t v a \t"));
    assert_int_equal(t.n, 3);
    assert_memory_equal(t.p, "v a", 3);
    assert_int_equal(http_trim(S("   ")).n, 0);
}

/* Header and cookie names (config, modelmux-bench --header). */
static void test_tokens(void **state)
{
    (void)state;
    assert_true(http_is_token(S("X-Market")));
    assert_true(http_is_token(S("!#$%&'*+-.^_`|~09azAZ")));
    assert_false(http_is_token(S("")));
    static const char *bad[] = {"X Market", "X\tY", "X:Y", "X(y)", "a\"b",
                                "a/b",      "a@b",  "a{b", "\x7f", "\xc3\xa9"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_false(http_is_token((mm_str_t){bad[i], strlen(bad[i])}));
    assert_false(http_is_token((mm_str_t){"a\0b", 3})); /* by length, not to a NUL */
}

static void test_json_escaping_is_always_valid_utf8_json(void **state)
{
    (void)state;
    mm_buf_t b;
    mm_buf_init(&b);
    const char in[] = "q\"b\\n\n\x01 caf\xc3\xa9 bad\xff end";
    mm_buf_json_str(&b, in, sizeof(in) - 1);
    mm_buf_append(&b, "", 1);
    assert_string_equal(b.p, "q\\\"b\\\\n\\n\\u0001 caf\xc3\xa9 bad\\ufffd end");
    mm_buf_free(&b);
}

static void test_error_answer_is_the_contract_shape(void **state)
{
    (void)state;
    mm_buf_t b;
    mm_buf_init(&b);
    http_error_response(&b, 503, "overloaded", "too \"many\"", S("rid-1"), 0, NULL);
    mm_buf_append(&b, "", 1);
    assert_non_null(strstr(b.p, "HTTP/1.1 503 Service Unavailable\r\n"));
    assert_non_null(strstr(b.p, "Retry-After: 1\r\n"));
    assert_non_null(strstr(b.p, "Connection: close\r\n"));
    assert_non_null(strstr(b.p, "X-Request-Id: rid-1\r\n"));
    const char *body = strstr(b.p, "\r\n\r\n") + 4;
    assert_string_equal(
        body,
        "{\"error\":\"overloaded\",\"message\":\"too \\\"many\\\"\",\"request_id\":\"rid-1\"}");
    char len[64];
    snprintf(len, sizeof(len), "Content-Length: %zu\r\n", strlen(body));
    assert_non_null(strstr(b.p, len));
    mm_buf_free(&b);
}

/* The header block shadow's compare.headers reads (leg_header_block): what
 * the model said, sorted by name; framing, hop-by-hop, our own headers and
 * the clock left out. */
static void test_header_block_keeps_end_to_end_headers_sorted(void **state)
{
    (void)state;
    static const char text[] = "Date: Mon, 23 Nov 2026 04:00:00 GMT\r\n"
                               "X-Model: B \r\n"
                               "Content-Type: application/json\r\n"
                               "Content-Length: 12\r\n"
                               "Connection: keep-alive, X-Hop\r\n"
                               "X-Hop: 1\r\n"
                               "Keep-Alive: timeout=5\r\n"
                               "Transfer-Encoding: chunked\r\n"
                               "X-Modelmux-Arm: challenger\r\n"
                               "x-modelmux-model-build: 7\r\n"
                               "X-Request-Id: abc\r\n"
                               "link: <a>\r\n"
                               "Link: <b>\r\n"
                               "Cache-Control: no-store\r\n\r\n";
    http_head_t h;
    head_from(&h, text);
    up_resp_t r = {.status = 200, .head = &h, .base = text};
    mm_buf_t b;
    mm_buf_init(&b);
    leg_header_block(&r, &b);
    mm_buf_append(&b, "", 1);
    assert_string_equal(b.p, "cache-control:no-store\ncontent-type:application/json\n"
                             "link:<a>\nlink:<b>\nx-model:B\n");
    mm_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header_spans_split_across_reads_are_joined),
        cmocka_unit_test(test_obs_fold_is_flagged_however_llhttp_delivers_it),
        cmocka_unit_test(test_values_split_across_reads_empty_or_padded_are_not_obs_fold),
        cmocka_unit_test(test_request_heads_refused_with_400),
        cmocka_unit_test(test_request_target_forms),
        cmocka_unit_test(test_bare_lf_ends_no_line_of_a_head),
        cmocka_unit_test(test_bare_lf_after_the_start_line_or_ending_the_head),
        cmocka_unit_test(test_chunked_framing_llhttp_lets_through_is_refused),
        cmocka_unit_test(test_chunked_limit_lowered_mid_message_still_holds),
        cmocka_unit_test(test_more_than_128_headers_are_flagged),
        cmocka_unit_test(test_hop_by_hop_headers_are_recognised),
        cmocka_unit_test(test_headers_named_in_connection_are_hop_by_hop_whatever_their_length),
        cmocka_unit_test(test_connection_cannot_drop_content_length),
        cmocka_unit_test(test_head_index_classifies_every_header_once),
        cmocka_unit_test(test_known_names_match_in_any_case_and_near_misses_do_not),
        cmocka_unit_test(test_emitted_header_lines_are_normalised_and_runs_copied),
        cmocka_unit_test(test_header_block_keeps_end_to_end_headers_sorted),
        cmocka_unit_test(test_token_lists),
        cmocka_unit_test(test_request_ids_are_validated),
        cmocka_unit_test(test_generated_request_ids_are_32_lowercase_hex_and_seeded),
        cmocka_unit_test(test_cookie_and_query_sticky_keys),
        cmocka_unit_test(test_an_empty_cookie_does_not_hide_a_later_one),
        cmocka_unit_test(test_query_keys_are_form_decoded),
        cmocka_unit_test(test_paths_are_normalised_like_nginx_and_envoy),
        cmocka_unit_test(test_trim),
        cmocka_unit_test(test_tokens),
        cmocka_unit_test(test_host_values_are_uri_host_and_port),
        cmocka_unit_test(test_json_escaping_is_always_valid_utf8_json),
        cmocka_unit_test(test_error_answer_is_the_contract_shape),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
