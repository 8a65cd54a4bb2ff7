/* bench_client.c — one HTTP exchange over the core's upstream pool
 * (bench_client.h).
 *
 * The pool can fail a request synchronously, inside up_acquire (a full wait
 * queue, a connect that cannot even start). A closed-loop caller issues its
 * next request from done(), so a run of such failures would recurse once per
 * request; instead completions that happen inside bc_req_send are queued and
 * delivered from an idle handle on the next loop turn. The idle handle runs
 * only while that queue is non-empty, so it never spins the loop. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "bench_client.h"
#include "http.h"

#define BC_MAX_RETRIES 2

struct bc_target_s {
    uv_loop_t *loop;
    cfg_upstream_t cfg;
    up_pool_t *pool;
    uv_idle_t idle;
    bc_req_t *dhead, *dtail; /* completions deferred to the next loop turn */
};

/* ---- targets ---- */

int bc_parse_url(const char *url, cfg_upstream_t *cfg, char *err, size_t errlen)
{
    memset(cfg, 0, sizeof(*cfg));
    if (strlen(url) >= sizeof(cfg->url)) {
        snprintf(err, errlen, "%s: the URL is too long", url);
        return -1;
    }
    if (strncasecmp(url, "http://", 7) != 0) {
        snprintf(err, errlen, "%s: expected http://host[:port][/path] (plain HTTP only)", url);
        return -1;
    }
    const char *auth = url + 7;
    if (strpbrk(auth, "?#@") != NULL) {
        snprintf(err, errlen, "%s: a query, fragment or user information is not allowed", url);
        return -1;
    }
    size_t an = strcspn(auth, "/");
    char hp[sizeof(cfg->addr.host) + 16];
    if (an == 0 || an + 4 >= sizeof(hp)) {
        snprintf(err, errlen, "%s: the host is empty or too long", url);
        return -1;
    }
    memcpy(hp, auth, an);
    hp[an] = '\0';
    const char *close = hp[0] == '[' ? strchr(hp, ']') : NULL;
    if ((close != NULL && close[1] == '\0') || (hp[0] != '[' && strchr(hp, ':') == NULL))
        strcat(hp, ":80");
    if (config_parse_addr(hp, &cfg->addr) < 0) {
        snprintf(err, errlen, "%s: bad host or port \"%s\"", url, hp);
        return -1;
    }
    const char *path = auth + an;
    size_t pn = strlen(path);
    for (size_t i = 0; i < pn; i++) {
        if ((unsigned char)path[i] <= 0x20 || (unsigned char)path[i] >= 0x7f) {
            snprintf(err, errlen, "%s: the path has a space, control or non-ASCII character", url);
            return -1;
        }
    }
    while (pn > 0 && path[pn - 1] == '/') pn--;
    if (pn >= sizeof(cfg->base_path)) {
        snprintf(err, errlen, "%s: the path is too long", url);
        return -1;
    }
    memcpy(cfg->base_path, path, pn);
    cfg->base_path[pn] = '\0';
    if (strchr(cfg->addr.host, ':') != NULL)
        snprintf(cfg->host_header, sizeof(cfg->host_header), "[%s]:%d", cfg->addr.host,
                 cfg->addr.port);
    else
        snprintf(cfg->host_header, sizeof(cfg->host_header), "%s:%d", cfg->addr.host,
                 cfg->addr.port);
    snprintf(cfg->url, sizeof(cfg->url), "%s", url);
    snprintf(cfg->name, sizeof(cfg->name), "target");
    return 0;
}

static void on_idle(uv_idle_t *h)
{
    bc_target_t *t = h->data;
    bc_req_t *r = t->dhead;
    t->dhead = t->dtail = NULL;
    uv_idle_stop(&t->idle);
    while (r) {
        bc_req_t *next = r->dnext;
        r->dnext = NULL;
        r->active = 0;
        r->done(r); /* may send again, and so defer again: a fresh list */
        r = next;
    }
}

bc_target_t *bc_target_open(uv_loop_t *loop, const char *url, int pool, int timeout_ms, char *err,
                            size_t errlen)
{
    if (pool < 1 || timeout_ms < 1) {
        snprintf(err, errlen, "%s: pool and timeout must be positive", url);
        return NULL;
    }
    bc_target_t *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (bc_parse_url(url, &t->cfg, err, errlen) < 0) {
        free(t);
        return NULL;
    }
    t->cfg.pool = pool;
    t->cfg.timeout_ms = timeout_ms;
    t->cfg.connect_timeout_ms = timeout_ms < 2000 ? timeout_ms : 2000;
    t->loop = loop;
    /* Looked up here (before the run: may block), so that the message
     * names the URL as the caller's other errors do, not an upstream. */
    mm_addrs_t addrs;
    if (mm_addrs_resolve(&t->cfg.addr, &addrs) != 0) {
        snprintf(err, errlen, "%s: cannot resolve %s", url, t->cfg.addr.host);
        free(t);
        return NULL;
    }
    t->pool = up_pool_create(loop, &t->cfg, &addrs, err, errlen);
    if (t->pool == NULL) {
        free(t);
        return NULL;
    }
    uv_idle_init(loop, &t->idle);
    t->idle.data = t;
    return t;
}

static void on_target_closed(uv_handle_t *h)
{
    free(h->data);
}

/* Closing idle connections one by one through the public API: acquiring a
 * connection while one is idle hands it over synchronously, and releasing
 * it as not reusable closes it. up_pool_drain() and up_pool_release() would
 * do this themselves, but they unlink each idle connection and then call a
 * close that unlinks it a second time, which empties the list after the
 * first one: the others would stay open until the server's idle timeout and
 * keep the loop alive that long. With the list already empty they are
 * safe, and still needed (draining closes connects that finish later). */
static void closer_on_conn(up_user_t *u, up_conn_t *c)
{
    (void)u;
    up_release(c, 0);
}

static int closer_on_error(up_user_t *u, up_conn_t *c, up_err_t kind, int reused)
{
    (void)u;
    (void)c;
    (void)kind;
    (void)reused;
    return 0;
}

static const up_user_ops_t closer_ops = {.on_conn = closer_on_conn, .on_error = closer_on_error};

static void close_idle(up_pool_t *p)
{
    up_pool_stats_t st;
    for (up_pool_stats(p, &st); st.idle > 0; up_pool_stats(p, &st)) {
        int before = st.idle;
        up_user_t closer;
        memset(&closer, 0, sizeof(closer));
        closer.ops = &closer_ops;
        up_acquire(p, &closer);
        up_pool_stats(p, &st);
        if (st.idle >= before) { /* not handed over synchronously: stop trying */
            up_cancel(p, &closer);
            break;
        }
    }
}

void bc_target_close(bc_target_t *t)
{
    if (t == NULL) return;
    close_idle(t->pool);
    up_pool_drain(t->pool);
    up_pool_release(t->pool);
    t->pool = NULL;
    uv_close((uv_handle_t *)&t->idle, on_target_closed);
}

const cfg_upstream_t *bc_target_cfg(const bc_target_t *t)
{
    return &t->cfg;
}

/* ---- one exchange ---- */

static void finish(bc_req_t *r)
{
    r->t_end_us = mm_now_us();
    r->conn = NULL;
    if (r->in_send) {
        bc_target_t *t = r->target;
        r->dnext = NULL;
        if (t->dtail)
            t->dtail->dnext = r;
        else
            t->dhead = r;
        t->dtail = r;
        uv_idle_start(&t->idle, on_idle);
        return;
    }
    r->active = 0;
    r->done(r);
}

static void copy_header(const up_resp_t *resp, const char *lower, char *out, size_t cap)
{
    out[0] = '\0';
    int i = http_find(resp->head, resp->base, lower);
    if (i < 0) return;
    mm_str_t v = http_trim(http_hvalue(resp->head, resp->base, i));
    if (v.n == 0 || v.n >= cap) return;
    for (size_t k = 0; k < v.n; k++) {
        unsigned char c = (unsigned char)v.p[k];
        if (c <= 0x20 || c >= 0x7f) return; /* names and ids are visible ASCII */
    }
    memcpy(out, v.p, v.n);
    out[v.n] = '\0';
}

static void on_conn(up_user_t *u, up_conn_t *c)
{
    bc_req_t *r = container_of(u, bc_req_t, user);
    r->conn = c;
    uv_buf_t bufs[2] = {uv_buf_init(r->head.p, (unsigned)r->head.len),
                        uv_buf_init((char *)r->req_body, (unsigned)r->req_body_len)};
    if (up_write(c, bufs, r->req_body_len ? 2 : 1, 1) != 0) {
        up_release(c, 0);
        r->err = UP_ERR_RESET;
        finish(r);
    }
}

static void on_sent(up_user_t *u, up_conn_t *c)
{
    (void)u;
    (void)c;
}

static void on_head(up_user_t *u, up_conn_t *c, const up_resp_t *resp)
{
    bc_req_t *r = container_of(u, bc_req_t, user);
    r->status = resp->status;
    copy_header(resp, "x-modelmux-arm", r->arm, sizeof(r->arm));
    copy_header(resp, "x-request-id", r->request_id, sizeof(r->request_id));
    if (r->request_id[0] &&
        !http_valid_request_id((mm_str_t){r->request_id, strlen(r->request_id)}))
        r->request_id[0] = '\0';
    up_set_decode(c, 1);
    up_resume(c);
}

static void on_body(up_user_t *u, up_conn_t *c, const char *p, size_t n)
{
    bc_req_t *r = container_of(u, bc_req_t, user);
    r->body_bytes += n;
    if (r->body.len < r->keep_body) {
        size_t room = r->keep_body - r->body.len;
        mm_buf_append(&r->body, p, n < room ? n : room);
    }
    up_resume(c);
}

static void on_done(up_user_t *u, up_conn_t *c)
{
    bc_req_t *r = container_of(u, bc_req_t, user);
    up_release(c, 1);
    finish(r);
}

static int on_error(up_user_t *u, up_conn_t *c, up_err_t kind, int reused)
{
    bc_req_t *r = container_of(u, bc_req_t, user);
    (void)c;
    r->conn = NULL;
    if (reused && r->retries < BC_MAX_RETRIES) {
        /* The server closed a keep-alive connection as we reused it: nothing
         * was answered, so sending again is safe. */
        r->retries++;
        r->status = 0;
        r->arm[0] = r->request_id[0] = '\0';
        r->body_bytes = 0;
        mm_buf_reset(&r->body);
        int outer = r->in_send;
        r->in_send = 1;
        up_acquire(r->target->pool, &r->user);
        r->in_send = outer;
        return 1;
    }
    r->status = 0;
    r->err = (int)kind;
    finish(r);
    return 0;
}

static const up_user_ops_t bc_ops = {
    .on_conn = on_conn,
    .on_sent = on_sent,
    .on_head = on_head,
    .on_body = on_body,
    .on_done = on_done,
    .on_error = on_error,
};

void bc_req_init(bc_req_t *r)
{
    memset(r, 0, sizeof(*r));
    mm_buf_init(&r->head);
    mm_buf_init(&r->body);
    r->err = -1;
}

void bc_req_free(bc_req_t *r)
{
    mm_buf_free(&r->head);
    mm_buf_free(&r->body);
}

void bc_headers_init(bc_headers_t *h)
{
    mm_buf_init(&h->lines);
    h->replaced = 0;
}

void bc_headers_free(bc_headers_t *h)
{
    mm_buf_free(&h->lines);
}

/* The headers bc_req_prepare writes itself: `own` is the bit of one a user
 * may replace, 0 for one that frames the body (the bench must write it to
 * match the bytes it sends). */
static const struct {
    const char *lower;
    unsigned own;
} bench_headers[] = {
    {"host", BC_OWN_HOST},
    {"user-agent", BC_OWN_USER_AGENT},
    {"content-type", BC_OWN_CONTENT_TYPE},
    {"x-request-id", BC_OWN_REQUEST_ID},
    {"content-length", 0},
    {"transfer-encoding", 0},
};

int bc_headers_add(bc_headers_t *h, const char *s, char *err, size_t errlen)
{
    const char *colon = strchr(s, ':');
    const char *v = colon ? colon + 1 : NULL;
    if (colon == NULL) goto malformed;
    mm_str_t name = {s, (size_t)(colon - s)};
    if (!http_is_token(name)) goto malformed;
    while (*v == ' ' || *v == '\t') v++;
    if (strpbrk(v, "\r\n") != NULL) goto malformed;
    for (size_t i = 0; i < sizeof(bench_headers) / sizeof(bench_headers[0]); i++) {
        if (!mm_str_ieq(name, bench_headers[i].lower)) continue;
        if (bench_headers[i].own == 0) {
            snprintf(err, errlen,
                     "%.*s is the bench's to send: it frames the body it sends (Content-Length "
                     "and Transfer-Encoding cannot be given)",
                     (int)name.n, name.p);
            return -1;
        }
        if (h->replaced & bench_headers[i].own) {
            snprintf(err, errlen, "%.*s is given twice (a request has one)", (int)name.n, name.p);
            return -1;
        }
        h->replaced |= bench_headers[i].own;
    }
    mm_buf_str(&h->lines, name);
    mm_buf_lit(&h->lines, ": ");
    mm_buf_cstr(&h->lines, v);
    mm_buf_lit(&h->lines, "\r\n");
    if (h->lines.oom) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
malformed:
    snprintf(err, errlen, "'%s' is not Name:value (a token, then a value without CR or LF)", s);
    return -1;
}

int bc_req_prepare(bc_req_t *r, bc_target_t *t, const char *method, const char *target,
                   size_t target_len, const void *body, size_t body_len, const char *content_type,
                   const char *request_id, const bc_headers_t *extra)
{
    unsigned replaced = extra ? extra->replaced : 0;
    mm_buf_t *b = &r->head;
    mm_buf_reset(b);
    r->target = t;
    r->req_body = body;
    r->req_body_len = body_len;
    r->user.no_body_expected = strcmp(method, "HEAD") == 0;
    mm_buf_cstr(b, method);
    mm_buf_lit(b, " ");
    mm_buf_cstr(b, t->cfg.base_path);
    mm_buf_append(b, target, target_len);
    mm_buf_lit(b, " HTTP/1.1\r\n");
    if (!(replaced & BC_OWN_HOST)) {
        mm_buf_lit(b, "Host: ");
        mm_buf_cstr(b, t->cfg.host_header);
        mm_buf_lit(b, "\r\n");
    }
    if (!(replaced & BC_OWN_USER_AGENT))
        mm_buf_lit(b, "User-Agent: modelmux-bench/" MM_VERSION "\r\n");
    if (body_len > 0 && content_type != NULL && !(replaced & BC_OWN_CONTENT_TYPE)) {
        mm_buf_lit(b, "Content-Type: ");
        mm_buf_cstr(b, content_type);
        mm_buf_lit(b, "\r\n");
    }
    if (body_len > 0 || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 ||
        strcmp(method, "PATCH") == 0) {
        mm_buf_lit(b, "Content-Length: ");
        mm_buf_u64(b, body_len);
        mm_buf_lit(b, "\r\n");
    }
    if (request_id != NULL && request_id[0] && !(replaced & BC_OWN_REQUEST_ID)) {
        mm_buf_lit(b, "X-Request-Id: ");
        mm_buf_cstr(b, request_id);
        mm_buf_lit(b, "\r\n");
    }
    if (extra != NULL && extra->lines.len) mm_buf_append(b, extra->lines.p, extra->lines.len);
    mm_buf_lit(b, "\r\n");
    return b->oom ? -1 : 0;
}

void bc_req_send(bc_req_t *r)
{
    r->user.ops = &bc_ops;
    r->status = 0;
    r->err = -1;
    r->retries = 0;
    r->body_bytes = 0;
    r->arm[0] = r->request_id[0] = '\0';
    mm_buf_reset(&r->body);
    r->conn = NULL;
    r->active = 1;
    r->t_start_us = mm_now_us();
    r->in_send = 1;
    up_acquire(r->target->pool, &r->user);
    r->in_send = 0;
}

void bc_req_abort(bc_req_t *r)
{
    if (!r->active) return;
    bc_target_t *t = r->target;
    /* A completion already queued for the next loop turn: unlink it. */
    for (bc_req_t **pp = &t->dhead, *prev = NULL; *pp; prev = *pp, pp = &(*pp)->dnext) {
        if (*pp != r) continue;
        *pp = r->dnext;
        if (t->dtail == r) t->dtail = prev;
        r->dnext = NULL;
        r->active = 0;
        return;
    }
    if (r->conn) {
        up_release(r->conn, 0); /* closes it; no callback follows */
        r->conn = NULL;
    } else {
        up_cancel(t->pool, &r->user);
    }
    r->active = 0;
}

int bc_req_active(const bc_req_t *r)
{
    return r->active;
}

int bc_req_waiting(const bc_req_t *r)
{
    return r->active && r->conn == NULL && r->dnext == NULL && r->target->dtail != r;
}

/* ---- command-line helpers ---- */

int bc_arg_double(const char *s, double *out)
{
    if (s == NULL || *s == '\0') return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || *end != '\0' || !isfinite(v)) return -1;
    *out = v;
    return 0;
}

int bc_arg_u64(const char *s, uint64_t *out)
{
    if (s == NULL || *s < '0' || *s > '9') return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0') return -1;
    *out = (uint64_t)v;
    return 0;
}

int bc_arg_opt(int argc, char **argv, int *i, const char *name, const char **val)
{
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, name, n) != 0) return 0;
    if (a[n] == '=') {
        *val = a + n + 1;
        return 1;
    }
    if (a[n] != '\0') return 0;
    if (*i + 1 >= argc) return -1;
    *val = argv[++*i];
    return 1;
}

int bc_arg_url(const char *url, int root_only, char *err, size_t errlen)
{
    cfg_upstream_t cfg;
    if (bc_parse_url(url, &cfg, err, errlen) < 0) return -1;
    if (root_only && cfg.base_path[0]) {
        snprintf(err, errlen, "%s: give the listener's root, without a path", url);
        return -1;
    }
    return 0;
}

/* ---- messages ---- */

const char *bc_printable(mm_buf_t *out, const void *p, size_t n, size_t max)
{
    const unsigned char *s = p;
    size_t k = n < max ? n : max;
    mm_buf_reset(out);
    for (size_t i = 0; i < k; i++) {
        if (s[i] >= 0x20 && s[i] < 0x7f && s[i] != '\\')
            mm_buf_append(out, &s[i], 1);
        else
            mm_buf_printf(out, "\\x%02x", s[i]);
    }
    if (n > max) mm_buf_lit(out, "...");
    mm_buf_append(out, "", 1);
    return out->oom ? "" : out->p;
}
