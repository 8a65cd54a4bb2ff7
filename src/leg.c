/* leg.c — see leg.h.
 *
 * Timeouts. A uv_timer per leg cost an init, a start, a stop and a close
 * per mirror, and the leg's owner could only be freed in the close callback.
 * Instead a leg in flight waits in a queue of legs with the same timeout_ms,
 * in which deadlines (loop time + timeout) therefore arrive in order, and one
 * timer shared by all legs, the clock's, is armed no later than the earliest
 * deadline. A leg that finishes only unlinks itself; when the timer fires
 * before the earliest remaining deadline (its leg finished) it re-arms for
 * that one — the deadline is checked lazily. In steady traffic a leg makes
 * no timer call at all, and the timer is re-armed about once per timeout
 * period.
 *
 * The clock lives as long as the loop, in the server context (legs outlive
 * the requests that start them). Its timer is unreferenced, so a loop that
 * is otherwise done is not kept alive by it: every leg in flight has an
 * upstream connection, a connect or a pool's busy connections behind it,
 * which keep the loop running until the leg is answered or its deadline
 * comes. When nothing is in flight the timer fires once more at the last
 * due time, finds nothing and stays idle: cheaper than stopping it whenever
 * the last leg finishes. */
#include <string.h>
#include <strings.h>

#include "leg.h"

#define LEG_MAX_RETRIES 2

static void on_clock(uv_timer_t *t);

void leg_clock_init(leg_clock_t *clk, uv_loop_t *loop)
{
    memset(clk, 0, sizeof(*clk));
    clk->loop = loop;
    uv_timer_init(loop, &clk->timer);
    uv_unref((uv_handle_t *)&clk->timer);
}

void leg_clock_close(leg_clock_t *clk)
{
    if (clk->loop == NULL || uv_is_closing((uv_handle_t *)&clk->timer)) return;
    clk->armed = 0;
    uv_close((uv_handle_t *)&clk->timer, NULL);
}

static void clock_arm(leg_clock_t *clk, uint64_t at)
{
    clk->armed = 1;
    clk->due = at;
    uint64_t now = uv_now(clk->loop);
    uv_timer_start(&clk->timer, on_clock, at > now ? at - now : 0, 0);
}

/* The leg with the earliest deadline, or NULL: the heads of the queues. */
static leg_t *clock_earliest(leg_clock_t *clk)
{
    leg_t *best = NULL;
    for (int i = 0; i < LEG_QUEUES; i++) {
        leg_t *h = clk->q[i].head;
        if (h && (best == NULL || h->deadline < best->deadline)) best = h;
    }
    return best;
}

static void clock_add(leg_clock_t *clk, leg_t *l, int timeout_ms)
{
    l->deadline = uv_now(clk->loop) + (uint64_t)timeout_ms;
    leg_queue_t *q = NULL, *empty = NULL;
    for (int i = 0; i < LEG_QUEUES && q == NULL; i++) {
        if (clk->q[i].head == NULL) {
            if (empty == NULL) empty = &clk->q[i];
        } else if (clk->q[i].timeout_ms == timeout_ms) {
            q = &clk->q[i];
        }
    }
    if (q == NULL && empty != NULL) {
        q = empty;
        q->timeout_ms = timeout_ms;
    }
    if (q == NULL) q = &clk->q[0]; /* more distinct timeouts than queues: share */
    leg_t *after = q->tail;        /* same timeout: the tail, at once */
    while (after && after->deadline > l->deadline) after = after->qprev;
    l->qprev = after;
    l->qnext = after ? after->qnext : q->head;
    if (l->qnext)
        l->qnext->qprev = l;
    else
        q->tail = l;
    if (after)
        after->qnext = l;
    else
        q->head = l;
    l->queue = q;
    if (!clk->armed || l->deadline < clk->due) clock_arm(clk, l->deadline);
}

static void clock_remove(leg_t *l)
{
    leg_queue_t *q = l->queue;
    if (q == NULL) return;
    if (l->qprev)
        l->qprev->qnext = l->qnext;
    else
        q->head = l->qnext;
    if (l->qnext)
        l->qnext->qprev = l->qprev;
    else
        q->tail = l->qprev;
    l->qnext = l->qprev = NULL;
    l->queue = NULL;
}

static void leg_finish(leg_t *l, int status)
{
    if (l->finished) return;
    l->finished = 1;
    l->status = status;
    l->latency_us = mm_now_us() - l->t0_us;
    clock_remove(l);
    l->done(l); /* last: the owner may free or reuse the leg */
}

static void on_timeout(leg_t *l)
{
    /* Counted in modelmux_upstream_errors_total like any failed exchange:
     * the pool's timers never see a leg's own deadline. */
    if (l->up) {
        up_abandon_timeout(l->up); /* closes it; no callback follows */
        l->up = NULL;
    } else {
        up_cancel_overdue(l->pool, &l->user);
    }
    l->timed_out = 1;
    l->err = UP_ERR_TIMEOUT;
    leg_finish(l, 0);
}

static void on_clock(uv_timer_t *t)
{
    leg_clock_t *clk = container_of(t, leg_clock_t, timer);
    clk->armed = 0;
    uint64_t now = uv_now(clk->loop);
    leg_t *l;
    /* One at a time: a done() callback may finish or start other legs. */
    while ((l = clock_earliest(clk)) != NULL && l->deadline <= now) on_timeout(l);
    if (l != NULL && (!clk->armed || l->deadline < clk->due)) clock_arm(clk, l->deadline);
}

void leg_clock_expire(leg_clock_t *clk)
{
    leg_t *l;
    /* One at a time, as on_clock does: a done() callback may finish others. */
    while ((l = clock_earliest(clk)) != NULL) on_timeout(l);
}

static void on_conn(up_user_t *u, up_conn_t *uc)
{
    leg_t *l = container_of(u, leg_t, user);
    l->up = uc;
    uv_buf_t bufs[2] = {uv_buf_init(l->head.p, (unsigned)l->head.len),
                        uv_buf_init((char *)l->body, (unsigned)l->body_len)};
    if (up_write(uc, bufs, l->body_len ? 2 : 1, 1) != 0) {
        up_release(uc, 0);
        l->up = NULL;
        l->err = UP_ERR_RESET;
        leg_finish(l, 0);
    }
}

static void on_sent(up_user_t *u, up_conn_t *uc)
{
    (void)u;
    (void)uc;
}

void leg_content_type(const up_resp_t *resp, char *out, size_t size)
{
    int i = http_known(resp->head, HK_CONTENT_TYPE); /* the head is indexed (upstream.c) */
    mm_str_t v = i >= 0 ? http_hvalue(resp->head, resp->base, i) : (mm_str_t){"", 0};
    size_t n = v.n < size - 1 ? v.n : size - 1;
    memcpy(out, v.p, n);
    out[n] = '\0';
}

/* Header i's name sorts before header k's (case-insensitively; ties keep
 * their order, the caller's sort is stable). */
static int name_before(const up_resp_t *resp, int i, int k)
{
    mm_str_t a = http_hname(resp->head, resp->base, i), b = http_hname(resp->head, resp->base, k);
    size_t n = a.n < b.n ? a.n : b.n;
    int c = strncasecmp(a.p, b.p, n);
    return c < 0 || (c == 0 && a.n < b.n);
}

void leg_header_block(const up_resp_t *resp, mm_buf_t *out)
{
    const http_head_t *h = resp->head;
    int idx[HTTP_MAX_HEADERS], n = 0;
    for (int i = 0; i < h->n && i < HTTP_MAX_HEADERS; i++) {
        /* hop-by-hop kinds include every X-Modelmux-* (ours) */
        if (http_kind_is_hop(h->kind[i]) || h->dropped[i] || h->kind[i] == HK_CONTENT_LENGTH ||
            h->kind[i] == HK_DATE)
            continue;
        int at = n++; /* insertion sort: a head has a handful of headers */
        while (at > 0 && name_before(resp, i, idx[at - 1])) {
            idx[at] = idx[at - 1];
            at--;
        }
        idx[at] = i;
    }
    for (int k = 0; k < n; k++) {
        mm_str_t name = http_hname(h, resp->base, idx[k]);
        size_t start = out->len;
        mm_buf_append(out, name.p, name.n);
        if (out->oom) return;
        for (size_t c = start; c < out->len; c++)
            if (out->p[c] >= 'A' && out->p[c] <= 'Z') out->p[c] = (char)(out->p[c] - 'A' + 'a');
        mm_buf_lit(out, ":");
        mm_buf_str(out, http_trim(http_hvalue(h, resp->base, idx[k])));
        mm_buf_lit(out, "\n");
    }
}

static void on_head(up_user_t *u, up_conn_t *uc, const up_resp_t *resp)
{
    leg_t *l = container_of(u, leg_t, user);
    l->status = resp->status;
    leg_content_type(resp, l->ctype, sizeof(l->ctype));
    if (l->keep_headers == LEG_HEADERS_COMPARE) leg_header_block(resp, &l->headers);
    if (l->keep_headers == LEG_HEADERS_RELAY)
        l->headers_body_at = leg_relay_lines(resp, &l->headers);
    up_set_decode(uc, 1); /* keep the de-chunked body */
    up_resume(uc);
}

static void on_body(up_user_t *u, up_conn_t *uc, const char *p, size_t n)
{
    leg_t *l = container_of(u, leg_t, user);
    if (l->resp.len + n > l->keep_max) {
        l->truncated = 1;
        n = l->keep_max - l->resp.len;
    }
    mm_buf_append(&l->resp, p, n);
    up_resume(uc);
}

static void on_done(up_user_t *u, up_conn_t *uc)
{
    leg_t *l = container_of(u, leg_t, user);
    l->up = NULL;
    up_release(uc, 1);
    leg_finish(l, l->status);
}

static int on_error(up_user_t *u, up_conn_t *uc, up_err_t kind, int reused)
{
    leg_t *l = container_of(u, leg_t, user);
    (void)uc;
    l->up = NULL;
    if (reused && l->retries < LEG_MAX_RETRIES) {
        /* The model server closed a keep-alive connection as we reused it:
         * nothing was answered, and we still hold head and body, so send
         * again on another connection (the leg's deadline stays). */
        l->retries++;
        up_acquire(l->pool, &l->user);
        return 1;
    }
    l->err = kind;
    l->timed_out = kind == UP_ERR_TIMEOUT || kind == UP_ERR_CONNECT_TIMEOUT;
    leg_finish(l, 0);
    return 0;
}

static const up_user_ops_t leg_ops = {
    .on_conn = on_conn,
    .on_sent = on_sent,
    .on_head = on_head,
    .on_body = on_body,
    .on_done = on_done,
    .on_error = on_error,
};

void leg_init(leg_t *l)
{
    memset(l, 0, sizeof(*l));
}

void leg_start(leg_t *l, leg_clock_t *clk, up_pool_t *pool, int timeout_ms, int head_request)
{
    l->started = 1;
    l->t0_us = mm_now_us();
    l->user.ops = &leg_ops;
    l->user.no_body_expected = head_request;
    l->pool = pool;
    clock_add(clk, l, timeout_ms); /* before up_acquire: done() may come from it */
    up_acquire(pool, &l->user);
}

static void buf_keep(mm_buf_t *b, size_t keep_cap)
{
    if (b->cap > keep_cap)
        mm_buf_free(b);
    else
        mm_buf_reset(b);
}

void leg_reuse(leg_t *l, size_t keep_cap)
{
    mm_buf_t head = l->head, resp = l->resp, headers = l->headers;
    buf_keep(&head, keep_cap);
    buf_keep(&resp, keep_cap);
    buf_keep(&headers, keep_cap);
    memset(l, 0, sizeof(*l));
    l->head = head;
    l->resp = resp;
    l->headers = headers;
}

void leg_free(leg_t *l)
{
    mm_buf_free(&l->head);
    mm_buf_free(&l->resp);
    mm_buf_free(&l->headers);
}

/* Validators and digests of the body as received (RFC 9110 §8.8, RFC 9530),
 * and its range: true of no other body. */
static int describes_body(mm_str_t name)
{
    static const char *const names[] = {"etag",           "content-md5", "digest",
                                        "content-digest", "repr-digest", "content-range"};
    for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++)
        if (mm_str_ieq(name, names[k])) return 1;
    return 0;
}

size_t leg_relay_lines(const up_resp_t *resp, mm_buf_t *out)
{
    const http_head_t *h = resp->head;
    http_run_t run = {NULL, 0};
    size_t body_at = 0;
    /* Two passes: the lines true of any body, then those true of this one
     * (the order of different field names carries no meaning). */
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < h->n; i++)
            if (!h->dropped[i] && h->kind[i] != HK_CONTENT_LENGTH &&
                h->kind[i] != HK_CONTENT_TYPE && h->kind[i] != HK_DATE &&
                describes_body(http_hname(h, resp->base, i)) == pass)
                http_emit_header(out, &run, h, resp->base, i);
        http_emit_flush(out, &run);
        if (pass == 0) body_at = out->len;
    }
    return body_at;
}

/* Header lines without Content-Length: runs of other lines are copied whole.
 * Lines are "Name: value\r\n" as proxy_forward_headers writes them; a line
 * beginning with a name is a header (a continuation would begin with
 * whitespace). */
static void append_lines_without_length(mm_buf_t *b, mm_str_t lines)
{
    const char *p = lines.p, *end = lines.p + lines.n, *run = p;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *next = nl ? nl + 1 : end;
        if (next - p > 15 && p[14] == ':' && mm_str_ieq((mm_str_t){p, 14}, "content-length")) {
            if (p > run) mm_buf_append(b, run, (size_t)(p - run));
            run = next;
        }
        p = next;
    }
    if (end > run) mm_buf_append(b, run, (size_t)(end - run));
}

void leg_build_head(mm_buf_t *b, const char *method, const cfg_upstream_t *up, mm_str_t url,
                    mm_str_t header_lines, int drop_length, size_t body_len, const char *request_id,
                    const char *extra)
{
    mm_buf_cstr(b, method);
    mm_buf_lit(b, " ");
    mm_buf_cstr(b, up->base_path);
    mm_buf_str(b, url);
    mm_buf_lit(b, " HTTP/1.1\r\nHost: ");
    mm_buf_cstr(b, up->host_header);
    mm_buf_lit(b, "\r\n");
    if (drop_length)
        append_lines_without_length(b, header_lines);
    else
        mm_buf_str(b, header_lines);
    if (body_len || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 ||
        strcmp(method, "PATCH") == 0) {
        mm_buf_lit(b, "Content-Length: ");
        mm_buf_u64(b, body_len);
        mm_buf_lit(b, "\r\n");
    }
    mm_buf_lit(b, "X-Request-Id: ");
    mm_buf_cstr(b, request_id);
    mm_buf_lit(b, "\r\nX-Modelmux-Arm: ");
    mm_buf_cstr(b, up->name);
    mm_buf_lit(b, "\r\n");
    if (extra) mm_buf_cstr(b, extra);
    mm_buf_lit(b, "\r\n");
}
