/* rig.h — a modelmux server core in the test's own loop, and a client that
 * speaks HTTP/1.1 to it over loopback: for the handlers that are reached
 * only through a connection (the admin API, feedback, fan-out, mirrors).
 *
 * The rig builds what server_start builds (memory store unless the config
 * says otherwise, router, pools that connect only when asked), but listens
 * on 127.0.0.1 port 0 — a free port the kernel picks — for the data plane
 * and the admin API, and installs no signal handlers. A request is sent
 * with "Connection: close" and read to EOF, so the whole answer is in
 * before the call returns and nothing depends on timing. The config is also
 * written to a temporary file, so POST /reload has a file to read.
 *
 * Header-only (static inline): each test_*.c is its own executable. */
#ifndef MM_TEST_RIG_H
#define MM_TEST_RIG_H

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <arpa/inet.h>

#include <jansson.h>
#include <uv.h>

#include "proxy_internal.h"

typedef struct {
    uv_loop_t loop;
    mm_server_t srv;
    int data_port, admin_port;
    char path[64]; /* the config file */
} rig_t;

static inline int rig_port(uv_tcp_t *t)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    assert_int_equal(uv_tcp_getsockname(t, (struct sockaddr *)&ss, &len), 0);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

/* The rig listens on ports the kernel picked, not on those its configs name;
 * a reload would move its listeners there (as a reload must). So once it
 * listens, what it writes names its own: each "listen" value becomes
 * 127.0.0.1 and the rig's data port, or its admin port when inside "admin"
 * (no '}' since the last "admin" key). Only the value changes, so line
 * numbers stay. */
static inline void rig_write_own_ports(rig_t *t, const char *json, FILE *f)
{
    const char *p = json, *admin = NULL, *key;
    while ((key = strstr(p, "\"listen\"")) != NULL) {
        for (const char *a = p; (a = strstr(a, "\"admin\"")) != NULL && a < key; a++) admin = a;
        const char *open = strchr(key + 8, '"'), *close = open ? strchr(open + 1, '"') : NULL;
        assert_non_null(close);
        int in_admin = admin != NULL && memchr(admin, '}', (size_t)(key - admin)) == NULL;
        fwrite(p, 1, (size_t)(open + 1 - p), f);
        fprintf(f, "127.0.0.1:%d", in_admin ? t->admin_port : t->data_port);
        p = close;
    }
    fputs(p, f);
}

static inline void rig_write_config(rig_t *t, const char *json)
{
    FILE *f = fopen(t->path, "w");
    assert_non_null(f);
    if (t->data_port)
        rig_write_own_ports(t, json, f);
    else
        assert_int_equal(fwrite(json, 1, strlen(json), f), strlen(json));
    assert_int_equal(fclose(f), 0);
}

/* The loop alone: fake model servers (below) start on it before the config
 * that names their ports exists. Then rig_serve. */
static inline void rig_init(rig_t *t)
{
    memset(t, 0, sizeof(*t));
    assert_int_equal(uv_loop_init(&t->loop), 0);
}

static inline void rig_serve(rig_t *t, const char *json)
{
    char err[512];
    snprintf(t->path, sizeof(t->path), "/tmp/mm-rig-XXXXXX");
    int fd = mkstemp(t->path);
    assert_true(fd >= 0);
    close(fd);
    rig_write_config(t, json);
    mm_server_t *s = &t->srv;
    s->loop = &t->loop;
    s->config_path = strdup(t->path);
    mm_rng_seed(&s->rng, 42);
    metrics_init(&s->metrics);
    proxy_init_parser_settings();
    signal(SIGPIPE, SIG_IGN);
    config_t *cfg = config_parse(json, strlen(json), t->path, err, sizeof(err));
    if (cfg == NULL) fail_msg("config: %s", err);
    s->store = store_create(&t->loop, &cfg->store, err, sizeof(err));
    if (s->store == NULL) fail_msg("store: %s", err);
    s->router = router_create(&t->loop, cfg, NULL, s->store, &s->metrics, NULL, err, sizeof(err));
    if (s->router == NULL) fail_msg("router: %s", err);
    leg_clock_init(&s->legs, &t->loop);
    s->listeners = (mm_listeners_t){&t->loop, proxy_on_connection, s, 0, NULL, NULL};
    mm_listen_addr_t any = {.name = "127.0.0.1:0"};
    uv_ip4_addr("127.0.0.1", 0, (struct sockaddr_in *)&any.ss);
    mm_listen_stage_t st; /* port 0 twice: two ports the kernel picks */
    if (listeners_stage(&s->listeners, &any, &any, &st, err, sizeof(err)) != 0) fail_msg("%s", err);
    listeners_commit(&s->listeners, &st);
    t->data_port = rig_port(s->listeners.data_l);
    t->admin_port = rig_port(s->listeners.admin_l);
}

static inline void rig_start(rig_t *t, const char *json)
{
    rig_init(t);
    rig_serve(t, json);
}

/* Fake model servers must be stopped first (rig_model_stop), or the loop
 * would never run dry. Mirrors and fan-out legs still in flight end as at
 * their deadline. */
static inline void rig_stop(rig_t *t)
{
    mm_server_t *s = &t->srv;
    listeners_close(&s->listeners);
    proxy_close_all(s);
    leg_clock_expire(&s->legs);
    router_unref(s->router);
    store_destroy(s->store);
    leg_clock_close(&s->legs);
    uv_run(&t->loop, UV_RUN_DEFAULT);
    shadow_cache_free(&s->shadows);
    assert_int_equal(uv_loop_close(&t->loop), 0);
    metrics_free(&s->metrics);
    free(s->config_path);
    unlink(t->path);
}

/* The experiment called `name` in the current router. */
static inline exp_rt_t *rig_exp(rig_t *t, const char *name)
{
    router_t *r = t->srv.router;
    for (size_t i = 0; i < r->n_exps; i++)
        if (strcmp(r->exps[i].cfg->name, name) == 0) return &r->exps[i];
    fail_msg("no experiment %s", name);
    return NULL;
}

/* ---- the client ---- */

typedef struct {
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_write_t wreq;
    uv_timer_t watchdog;
    mm_buf_t req, in;
    int closed, timed_out;
    int connect_status;
} rig_client_t;

static inline void rig_c_closed(uv_handle_t *h)
{
    ((rig_client_t *)h->data)->closed = 1;
}

static inline void rig_c_close(rig_client_t *c)
{
    if (!uv_is_closing((uv_handle_t *)&c->tcp)) uv_close((uv_handle_t *)&c->tcp, rig_c_closed);
}

static inline void rig_c_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    rig_client_t *c = h->data;
    (void)hint;
    mm_buf_reserve(&c->in, 65536);
    *b = uv_buf_init(c->in.p + c->in.len, 65536);
}

static inline void rig_c_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    rig_client_t *c = s->data;
    (void)b;
    if (n > 0) c->in.len += (size_t)n;
    if (n < 0) rig_c_close(c); /* EOF: the answer is whole */
}

static inline void rig_c_written(uv_write_t *w, int status)
{
    (void)w;
    assert_int_equal(status, 0);
}

static inline void rig_c_connected(uv_connect_t *r, int status)
{
    rig_client_t *c = r->data;
    if (status != 0) { /* failed after the loop has the handles closed: no hang in teardown */
        c->connect_status = status;
        rig_c_close(c);
        return;
    }
    uv_buf_t b = uv_buf_init(c->req.p, (unsigned)c->req.len);
    assert_int_equal(uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, rig_c_written), 0);
    uv_read_start((uv_stream_t *)&c->tcp, rig_c_alloc, rig_c_read);
}

static inline void rig_c_timeout(uv_timer_t *tm)
{
    rig_client_t *c = tm->data;
    c->timed_out = 1;
    rig_c_close(c);
}

/* Send `raw` (a whole request) to port and read the answer to EOF into out
 * (NUL-terminated). Fails the test after 10 s without an EOF. */
static inline void rig_exchange(rig_t *t, int port, const char *raw, size_t len, mm_buf_t *out)
{
    rig_client_t c;
    memset(&c, 0, sizeof(c));
    mm_buf_init(&c.req);
    mm_buf_init(&c.in);
    mm_buf_append(&c.req, raw, len);
    uv_tcp_init(&t->loop, &c.tcp);
    c.tcp.data = c.creq.data = c.watchdog.data = &c;
    uv_timer_init(&t->loop, &c.watchdog);
    uv_timer_start(&c.watchdog, rig_c_timeout, 10000, 0);
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", port, &a);
    assert_int_equal(uv_tcp_connect(&c.creq, &c.tcp, (const struct sockaddr *)&a, rig_c_connected),
                     0);
    while (!c.closed) uv_run(&t->loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&c.watchdog, NULL);
    uv_run(&t->loop, UV_RUN_NOWAIT);
    if (c.connect_status != 0)
        fail_msg("connect to port %d: %s", port, uv_strerror(c.connect_status));
    assert_false(c.timed_out);
    mm_buf_free(&c.req);
    mm_buf_append(&c.in, "", 1);
    c.in.len--;
    *out = c.in;
}

/* An answer, parsed. */
typedef struct {
    int status;
    mm_buf_t raw;
    const char *head; /* status line and header lines, NUL after the blank line */
    const char *body;
    size_t body_len;
    json_t *json; /* the body as JSON, or NULL */
} rig_resp_t;

static inline void rig_resp_free(rig_resp_t *r)
{
    json_decref(r->json);
    mm_buf_free(&r->raw);
    memset(r, 0, sizeof(*r));
}

/* The value of header `name` in r (NUL-terminated copy into out), or NULL. */
static inline const char *rig_header(const rig_resp_t *r, const char *name, char *out, size_t n)
{
    size_t nl = strlen(name);
    for (const char *p = strstr(r->head, "\r\n"); p && p[2] != '\r'; p = strstr(p + 2, "\r\n")) {
        const char *line = p + 2;
        if (strncasecmp(line, name, nl) != 0 || line[nl] != ':') continue;
        const char *v = line + nl + 1;
        while (*v == ' ') v++;
        const char *e = strstr(v, "\r\n");
        snprintf(out, n, "%.*s", (int)(e - v), v);
        return out;
    }
    return NULL;
}

/* One request on a fresh connection: METHOD path, extra header lines
 * ("Name: value\r\n"...), body (may be NULL). The answer must be complete:
 * its Content-Length is the body's length. */
static inline void rig_call(rig_t *t, int port, const char *method, const char *path,
                            const char *headers, const char *body, rig_resp_t *out)
{
    mm_buf_t req;
    mm_buf_init(&req);
    size_t blen = body ? strlen(body) : 0;
    mm_buf_printf(&req, "%s %s HTTP/1.1\r\nHost: test\r\nConnection: close\r\n", method, path);
    if (body) mm_buf_printf(&req, "Content-Length: %zu\r\n", blen);
    mm_buf_printf(&req, "%s\r\n", headers ? headers : "");
    if (body) mm_buf_append(&req, body, blen);
    memset(out, 0, sizeof(*out));
    rig_exchange(t, port, req.p, req.len, &out->raw);
    mm_buf_free(&req);
    char *raw = out->raw.p;
    if (raw == NULL || strncmp(raw, "HTTP/1.1 ", 9) != 0) fail_msg("no HTTP answer: %s", raw);
    out->status = atoi(raw + 9);
    char *end = strstr(raw, "\r\n\r\n");
    assert_non_null(end);
    out->body = end + 4;
    out->body_len = out->raw.len - (size_t)(out->body - raw);
    end[2] = '\0'; /* the head keeps its last CRLF */
    out->head = raw;
    char v[64];
    if (strcmp(method, "HEAD") != 0) {
        assert_non_null(rig_header(out, "Content-Length", v, sizeof(v)));
        assert_int_equal(strtoull(v, NULL, 10), out->body_len);
    }
    if (rig_header(out, "Content-Type", v, sizeof(v)) && strstr(v, "application/json"))
        out->json = json_loadb(out->body, out->body_len, 0, NULL);
}

/* The §4 error shape: exactly {"error": code, "message": non-empty text,
 * "request_id": the answer's X-Request-Id}. */
static inline void rig_assert_error(const rig_resp_t *r, int status, const char *code)
{
    if (r->status != status) fail_msg("status %d, expected %d: %s", r->status, status, r->body);
    assert_non_null(r->json);
    assert_int_equal(json_object_size(r->json), 3);
    assert_string_equal(json_string_value(json_object_get(r->json, "error")), code);
    const char *msg = json_string_value(json_object_get(r->json, "message"));
    assert_non_null(msg);
    assert_true(msg[0] != '\0');
    char id[160];
    assert_non_null(rig_header(r, "X-Request-Id", id, sizeof(id)));
    assert_string_equal(json_string_value(json_object_get(r->json, "request_id")), id);
}

/* The message of an error answer contains `part`. */
static inline void rig_assert_message_has(const rig_resp_t *r, const char *part)
{
    const char *msg = json_string_value(json_object_get(r->json, "message"));
    if (msg == NULL || strstr(msg, part) == NULL)
        fail_msg("message \"%s\" lacks \"%s\"", msg ? msg : "(none)", part);
}

/* ---- a fake model server ----
 *
 * Accepts any number of connections and reads requests on each (a head, and
 * a body by Content-Length); per request it does what `mode` says: write
 * `answer` (keep-alive: the answer must frame itself), write it and close
 * the connection once it is written (`Connection: close`, or an answer cut
 * short of what it announces), close the connection without a word (a
 * transport failure for the proxy), or never answer (a hung model: the
 * connection closes when the model stops). It records how many requests
 * came and the last one, head and body. */

/* MODEL_ANSWER_EARLY answers once a request's head is in, keeps the
 * connection and never reads the request's body (nor anything after it):
 * a server that answers early and does not take the rest. */
enum { MODEL_ANSWER = 0, MODEL_ANSWER_CLOSE, MODEL_CLOSE, MODEL_HANG, MODEL_ANSWER_EARLY };

typedef struct rig_model_s rig_model_t;

typedef struct rig_mconn_s {
    uv_tcp_t tcp;
    uv_write_t wreq;
    rig_model_t *m;
    struct rig_mconn_s *next;
    mm_buf_t in;
    int closing;
    int deaf; /* MODEL_ANSWER_EARLY has answered: input is dropped */
} rig_mconn_t;

struct rig_model_s {
    uv_tcp_t listener;
    int port;
    int mode;
    const char *answer;
    int requests;
    mm_buf_t last; /* the last request, head and body, NUL-terminated */
    rig_mconn_t *conns;
};

static inline void rig_m_closed(uv_handle_t *h)
{
    rig_mconn_t *c = h->data;
    rig_mconn_t **pp = &c->m->conns;
    while (*pp != c) pp = &(*pp)->next;
    *pp = c->next;
    mm_buf_free(&c->in);
    free(c);
}

static inline void rig_m_close(rig_mconn_t *c)
{
    if (c->closing) return;
    c->closing = 1;
    uv_close((uv_handle_t *)&c->tcp, rig_m_closed);
}

static inline void rig_m_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    rig_mconn_t *c = h->data;
    (void)hint;
    mm_buf_reserve(&c->in, 65536);
    *b = uv_buf_init(c->in.p + c->in.len, 65536);
}

static inline void rig_m_written(uv_write_t *w, int status)
{
    rig_mconn_t *c = w->data;
    (void)status;
    if (c->m->mode == MODEL_ANSWER_CLOSE) rig_m_close(c);
}

/* Whole requests at the front of c->in: record and serve each. */
static inline void rig_m_serve(rig_mconn_t *c)
{
    rig_model_t *m = c->m;
    for (;;) {
        if (c->deaf) {
            c->in.len = 0;
            return;
        }
        const char *end = c->in.len ? memmem(c->in.p, c->in.len, "\r\n\r\n", 4) : NULL;
        if (end == NULL) return;
        size_t head = (size_t)(end + 4 - c->in.p), body = 0;
        for (const char *p = c->in.p; p < end; p++)
            if ((p == c->in.p || p[-1] == '\n') && strncasecmp(p, "content-length:", 15) == 0)
                body = strtoull(p + 15, NULL, 10);
        if (m->mode == MODEL_ANSWER_EARLY) {
            c->deaf = 1;
            body = c->in.len - head; /* what came with the head; the rest is dropped */
        }
        if (c->in.len < head + body) return;
        m->requests++;
        mm_buf_reset(&m->last);
        mm_buf_append(&m->last, c->in.p, head + body);
        mm_buf_append(&m->last, "", 1);
        m->last.len--;
        memmove(c->in.p, c->in.p + head + body, c->in.len - head - body);
        c->in.len -= head + body;
        if (m->mode == MODEL_CLOSE) {
            rig_m_close(c);
            return;
        }
        if (m->mode == MODEL_HANG) continue;
        size_t n = strlen(m->answer);
        const char *end_head = strstr(m->answer, "\r\n\r\n");
        if (strncmp(m->last.p, "HEAD ", 5) == 0 && end_head) /* the head alone */
            n = (size_t)(end_head + 4 - m->answer);
        uv_buf_t b = uv_buf_init((char *)m->answer, (unsigned)n);
        c->wreq.data = c;
        uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, rig_m_written);
        if (m->mode == MODEL_ANSWER_CLOSE) return;
    }
}

static inline void rig_m_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    rig_mconn_t *c = s->data;
    (void)b;
    if (n < 0) {
        rig_m_close(c);
        return;
    }
    c->in.len += (size_t)n;
    rig_m_serve(c);
}

static inline void rig_m_accept(uv_stream_t *l, int status)
{
    rig_model_t *m = l->data;
    assert_int_equal(status, 0);
    rig_mconn_t *c = calloc(1, sizeof(*c));
    c->m = m;
    mm_buf_init(&c->in);
    uv_tcp_init(l->loop, &c->tcp);
    c->tcp.data = c;
    c->next = m->conns;
    m->conns = c;
    assert_int_equal(uv_accept(l, (uv_stream_t *)&c->tcp), 0);
    uv_read_start((uv_stream_t *)&c->tcp, rig_m_alloc, rig_m_read);
}

/* Listen on 127.0.0.1, a free port (m->port), before the config that
 * names it is built. */
static inline void rig_model_start(uv_loop_t *loop, rig_model_t *m, int mode, const char *answer)
{
    memset(m, 0, sizeof(*m));
    m->mode = mode;
    m->answer = answer;
    mm_buf_init(&m->last);
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    uv_tcp_init(loop, &m->listener);
    m->listener.data = m;
    assert_int_equal(uv_tcp_bind(&m->listener, (const struct sockaddr *)&a, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&m->listener, 64, rig_m_accept), 0);
    m->port = rig_port(&m->listener);
}

/* Close the listener and every connection (before rig_stop). */
static inline void rig_model_stop(rig_model_t *m)
{
    uv_close((uv_handle_t *)&m->listener, NULL);
    for (rig_mconn_t *c = m->conns; c; c = c->next) rig_m_close(c);
}

static inline void rig_model_free(rig_model_t *m)
{
    assert_null(m->conns); /* the loop has run since rig_model_stop */
    mm_buf_free(&m->last);
}

/* Stop two fake model servers and the server core, then free the models. */
static inline void rig_stop_with_models(rig_t *t, rig_model_t *a, rig_model_t *b)
{
    rig_model_stop(a);
    rig_model_stop(b);
    rig_stop(t);
    rig_model_free(a);
    rig_model_free(b);
}

/* A cmocka group teardown for a rig allocated by the group's setup. */
static inline int rig_teardown(void **state)
{
    rig_t *t = *state;
    rig_stop(t);
    free(t);
    return 0;
}

/* Run the loop until no mirror is in flight (each ends by its timeout at
 * the latest). */
static inline void rig_run_mirrors(rig_t *t)
{
    while (t->srv.shadows.active > 0) uv_run(&t->loop, UV_RUN_ONCE);
}

#endif
