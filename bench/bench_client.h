/* bench_client.h — what modelmux-bench's subcommands share: a target (one
 * URL and its connection pool) and one request/answer exchange on it, plus
 * the small argument parsers of the command line.
 *
 * The exchange is a thin layer over the core's upstream pools (upstream.h):
 * the same keep-alive pool, llhttp response parsing and timeouts the proxy
 * uses towards model servers, here used towards modelmux itself, so the
 * bench adds no second HTTP client to trust. Bodies are read in decode mode
 * (de-chunked). What a caller gets back per request: status, the
 * X-Modelmux-Arm and X-Request-Id answer headers, the latency, and
 * optionally the first bytes of the body. */
#ifndef MM_BENCH_CLIENT_H
#define MM_BENCH_CLIENT_H

#include <stdint.h>
#include <uv.h>

#include "buf.h"
#include "common.h"
#include "config.h"
#include "upstream.h"

typedef struct bc_target_s bc_target_t;
typedef struct bc_req_s bc_req_t;

/* "http://host[:port][/base/path]" into cfg (addr, host_header, base_path). */
int bc_parse_url(const char *url, cfg_upstream_t *cfg, char *err, size_t errlen);

/* A target with a pool of at most `pool` keep-alive connections. Requests
 * time out after `timeout_ms` without progress (connect: min(timeout_ms,
 * 2000)). Returns NULL with err. */
bc_target_t *bc_target_open(uv_loop_t *loop, const char *url, int pool, int timeout_ms, char *err,
                            size_t errlen);
/* Closes idle connections now and busy ones as they finish; the memory goes
 * in close callbacks, so run the loop afterwards. Every request must have
 * completed or been aborted. */
void bc_target_close(bc_target_t *t);
const cfg_upstream_t *bc_target_cfg(const bc_target_t *t);

typedef void (*bc_done_fn)(bc_req_t *r);

struct bc_req_s {
    up_user_t user;
    /* set by the caller */
    bc_done_fn done; /* called exactly once per bc_req_send, never from inside it */
    void *data;
    size_t keep_body; /* keep up to this many body bytes in `body` */
    /* results, valid in done() */
    int status;                        /* 0: no answer (see err) */
    int err;                           /* -1, or the up_err_t of the transport failure */
    uint64_t t_start_us, t_end_us;     /* mm_now_us() at send and at the answer's end */
    uint64_t body_bytes;               /* decoded body bytes received */
    mm_buf_t body;                     /* the first keep_body bytes */
    char arm[MM_NAME_MAX + 1];         /* X-Modelmux-Arm, "" when absent or invalid */
    char request_id[MM_REQID_MAX + 1]; /* X-Request-Id, "" when absent or invalid */
    /* private */
    bc_target_t *target;
    up_conn_t *conn;
    mm_buf_t head;
    const void *req_body;
    size_t req_body_len;
    int retries;
    int in_send;
    int active;
    bc_req_t *dnext;
};

/* Headers a user adds to every request (--header). The bench writes Host,
 * User-Agent, Content-Type and X-Request-Id itself; a user's header of one
 * of these names replaces the bench's own instead of being a second one (a
 * second Host is a 400 at modelmux, and an experiment matched on `host`
 * needs the user's). Content-Length and Transfer-Encoding frame the body the
 * bench sends, so a user cannot give them. */
typedef struct {
    mm_buf_t lines;    /* "Name: value\r\n" each */
    unsigned replaced; /* BC_OWN_* bits: the bench's own headers left out */
} bc_headers_t;

enum {
    BC_OWN_HOST = 1,
    BC_OWN_USER_AGENT = 2,
    BC_OWN_CONTENT_TYPE = 4,
    BC_OWN_REQUEST_ID = 8,
};

void bc_headers_init(bc_headers_t *h);
void bc_headers_free(bc_headers_t *h);
/* "Name: value" or "Name:value" added to h; the name must be a token, the
 * value free of CR, LF and NUL. Returns 0, or -1 with err: malformed, a
 * header the bench frames itself, or one that replaces the bench's own
 * given twice. */
int bc_headers_add(bc_headers_t *h, const char *s, char *err, size_t errlen);

void bc_req_init(bc_req_t *r);
void bc_req_free(bc_req_t *r);
/* Builds the request head: "METHOD BASE+TARGET HTTP/1.1", Host, User-Agent,
 * Content-Type (when given and a body is sent) and Content-Length (with a
 * body, or for POST/PUT/PATCH), X-Request-Id (when non-empty), each of Host,
 * User-Agent, Content-Type and X-Request-Id left out when extra replaces it,
 * then extra's lines (extra may be NULL). The body is borrowed: it must stay
 * valid until done(). Returns 0 or -1 (out of memory). */
int bc_req_prepare(bc_req_t *r, bc_target_t *t, const char *method, const char *target,
                   size_t target_len, const void *body, size_t body_len, const char *content_type,
                   const char *request_id, const bc_headers_t *extra);
/* Sends the prepared request. A stale keep-alive connection (closed by the
 * server as it was reused, before any answer byte) is retried on another
 * connection, at most twice. */
void bc_req_send(bc_req_t *r);
/* Gives up on a request in flight: done() will not be called. */
void bc_req_abort(bc_req_t *r);
/* 1 between bc_req_send and done() (or bc_req_abort). */
int bc_req_active(const bc_req_t *r);
/* 1 while an active request still waits for a connection (nothing sent). */
int bc_req_waiting(const bc_req_t *r);

/* ---- command-line helpers ---- */

/* A whole-string finite number / non-negative integer. 0 or -1. */
int bc_arg_double(const char *s, double *out);
int bc_arg_u64(const char *s, uint64_t *out);
/* An option that takes a value, as "--name value" or "--name=value", at
 * argv[*i]: returns 1 and sets *val (advancing *i past a separate value),
 * 0 when argv[*i] is another option, -1 when the value is missing. */
int bc_arg_opt(int argc, char **argv, int *i, const char *name, const char **val);
/* A URL option's value: well-formed for bc_parse_url (and, with
 * root_only, without a path). Checked while the options are read, so that
 * a malformed URL is bad usage (exit 2), told apart from a well-formed one
 * whose host does not resolve when the target is opened (exit 1). 0, or -1
 * with err. */
int bc_arg_url(const char *url, int root_only, char *err, size_t errlen);

/* ---- messages ---- */

/* The first `max` of the n bytes at p, for a one-line message on stderr:
 * printable ASCII as it is, a backslash and every other byte (control
 * bytes, newlines, non-ASCII) as \xHH, and "..." after a cut. An answer's
 * body is not NUL-terminated and may hold anything, so it is never printed
 * with %s. Returns out's text ("" if out ran out of memory). */
const char *bc_printable(mm_buf_t *out, const void *p, size_t n, size_t max);

#endif
