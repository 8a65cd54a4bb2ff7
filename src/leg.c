/* leg.c — see leg.h. */
#include <string.h>

#include "leg.h"

#define LEG_MAX_RETRIES 2

void leg_init(leg_t *l)
{
    memset(l, 0, sizeof(*l));
}

static void leg_finish(leg_t *l, int status)
{
    if (l->finished) return;
    l->finished = 1;
    l->status = status;
    l->latency_us = mm_now_us() - l->t0_us;
    uv_timer_stop(&l->timer);
    l->done(l);
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

static void on_head(up_user_t *u, up_conn_t *uc, const up_resp_t *resp)
{
    leg_t *l = container_of(u, leg_t, user);
    l->status = resp->status;
    int ct = http_find(resp->head, resp->base, "content-type");
    if (ct >= 0) {
        mm_str_t v = http_hvalue(resp->head, resp->base, ct);
        size_t n = v.n < sizeof(l->ctype) - 1 ? v.n : sizeof(l->ctype) - 1;
        memcpy(l->ctype, v.p, n);
        l->ctype[n] = '\0';
    }
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

static void on_error(up_user_t *u, up_conn_t *uc, up_err_t kind, int reused)
{
    leg_t *l = container_of(u, leg_t, user);
    (void)uc;
    l->up = NULL;
    if (reused && l->retries < LEG_MAX_RETRIES) {
        /* The model server closed a keep-alive connection as we reused it:
         * nothing was answered, and we still hold head and body, so send
         * again on another connection (the leg's timer keeps running). */
        l->retries++;
        up_acquire(l->pool, &l->user);
        return;
    }
    l->err = kind;
    l->timed_out = kind == UP_ERR_TIMEOUT || kind == UP_ERR_CONNECT_TIMEOUT;
    leg_finish(l, 0);
}

static const up_user_ops_t leg_ops = {
    .on_conn = on_conn,
    .on_sent = on_sent,
    .on_head = on_head,
    .on_body = on_body,
    .on_done = on_done,
    .on_error = on_error,
};

static void on_timeout(uv_timer_t *t)
{
    leg_t *l = t->data;
    if (l->finished) return;
    if (l->up) {
        up_release(l->up, 0); /* closes it; no callback follows */
        l->up = NULL;
    } else {
        up_cancel(l->pool, &l->user);
    }
    l->timed_out = 1;
    l->err = UP_ERR_TIMEOUT;
    leg_finish(l, 0);
}

void leg_start(leg_t *l, uv_loop_t *loop, up_pool_t *pool, int timeout_ms, int head_request)
{
    l->started = 1;
    l->t0_us = mm_now_us();
    l->user.ops = &leg_ops;
    l->user.no_body_expected = head_request;
    l->pool = pool;
    uv_timer_init(loop, &l->timer);
    l->timer.data = l;
    uv_timer_start(&l->timer, on_timeout, (uint64_t)timeout_ms, 0);
    up_acquire(pool, &l->user);
}

static void on_timer_closed(uv_handle_t *h)
{
    leg_t *l = h->data;
    mm_buf_free(&l->head);
    mm_buf_free(&l->resp);
    l->closed(l);
}

void leg_close(leg_t *l, void (*closed)(leg_t *l))
{
    l->closed = closed;
    if (!l->started) {
        mm_buf_free(&l->head);
        mm_buf_free(&l->resp);
        closed(l);
        return;
    }
    uv_close((uv_handle_t *)&l->timer, on_timer_closed);
}

void leg_build_head(mm_buf_t *b, const char *method, const cfg_upstream_t *up, mm_str_t url,
                    mm_str_t header_lines, size_t body_len, const char *request_id,
                    const char *extra)
{
    mm_buf_cstr(b, method);
    mm_buf_lit(b, " ");
    mm_buf_cstr(b, up->base_path);
    mm_buf_str(b, url);
    mm_buf_lit(b, " HTTP/1.1\r\nHost: ");
    mm_buf_cstr(b, up->host_header);
    mm_buf_lit(b, "\r\n");
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
