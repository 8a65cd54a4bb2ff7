/* test_wio.c — mm_try_write: write now what the kernel takes, and leave
 * bufs/n describing exactly the rest, ready for uv_write.
 *
 * A connected AF_UNIX socket pair stands in for a client connection: what
 * one end writes is in the other end's receive queue at once, so how much
 * the kernel took is known without timing, and a peer that does not read
 * fills the socket (EAGAIN) deterministically. The check that matters: the
 * bytes the peer receives, followed by the bytes the returned bufs still
 * describe, are the original bytes in order, none lost, none twice. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "wio.h"

typedef struct {
    uv_loop_t loop;
    uv_pipe_t pipe;
    int peer; /* the other end (non-blocking: reads take what is there) */
} pair_t;

static void pair_open(pair_t *p)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(uv_loop_init(&p->loop), 0);
    assert_int_equal(uv_pipe_init(&p->loop, &p->pipe, 0), 0);
    assert_int_equal(uv_pipe_open(&p->pipe, sv[0]), 0); /* made non-blocking */
    p->peer = sv[1];
    fcntl(p->peer, F_SETFL, fcntl(p->peer, F_GETFL) | O_NONBLOCK);
}

static void pair_close(pair_t *p)
{
    if (p->peer >= 0) close(p->peer);
    uv_close((uv_handle_t *)&p->pipe, NULL);
    uv_run(&p->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&p->loop), 0);
}

/* Everything the peer has received so far, appended to out. */
static size_t peer_read_all(pair_t *p, char *out, size_t cap)
{
    size_t n = 0;
    while (n < cap) {
        ssize_t r = read(p->peer, out + n, cap - n);
        if (r > 0) {
            n += (size_t)r;
            continue;
        }
        assert_true(r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
        return n;
    }
    char extra;
    assert_int_equal(read(p->peer, &extra, 1), -1); /* never more than was sent */
    return n;
}

static void test_everything_written_at_once(void **state)
{
    (void)state;
    pair_t p;
    pair_open(&p);
    char h[] = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b[] = "hello";
    uv_buf_t bufs[3] = {uv_buf_init(h, sizeof(h) - 1), uv_buf_init(b, 0),
                        uv_buf_init(b, sizeof(b) - 1)};
    unsigned n = 3;
    assert_int_equal(mm_try_write((uv_stream_t *)&p.pipe, bufs, &n), 1);
    char got[256];
    size_t len = peer_read_all(&p, got, sizeof(got));
    assert_int_equal(len, sizeof(h) - 1 + sizeof(b) - 1);
    assert_memory_equal(got, h, sizeof(h) - 1);
    assert_memory_equal(got + sizeof(h) - 1, b, sizeof(b) - 1);
    pair_close(&p);
}

#define PART (1u << 20)

/* More than the socket holds: 0, and bufs describe the rest exactly. Then
 * with the socket full: 0 again with nothing changed. Then, as the peer
 * reads, the rest goes out through further calls, and the peer has every
 * byte once, in order. */
static void test_partial_write_leaves_the_exact_rest(void **state)
{
    (void)state;
    pair_t p;
    pair_open(&p);
    size_t total = 3 * (size_t)PART;
    char *data = malloc(total);
    char *got = malloc(total);
    for (size_t i = 0; i < total; i++) data[i] = (char)(i * 7 + i / 251);
    uv_buf_t bufs[3];
    for (int i = 0; i < 3; i++) bufs[i] = uv_buf_init(data + (size_t)i * PART, PART);
    unsigned n = 3;
    assert_int_equal(mm_try_write((uv_stream_t *)&p.pipe, bufs, &n), 0);
    assert_true(n >= 1 && n <= 3);
    size_t left = 0;
    for (unsigned i = 0; i < n; i++) left += bufs[i].len;
    assert_true(left > 0 && left < total);
    /* the rest is contiguous and ends where the data ends */
    assert_ptr_equal(bufs[0].base, data + (total - left));
    for (unsigned i = 1; i < n; i++)
        assert_ptr_equal(bufs[i].base, bufs[i - 1].base + bufs[i - 1].len);
    assert_ptr_equal(bufs[n - 1].base + bufs[n - 1].len, data + total);

    /* full: EAGAIN is "nothing written", not an error */
    uv_buf_t before[3];
    memcpy(before, bufs, sizeof(before));
    unsigned n_before = n;
    assert_int_equal(mm_try_write((uv_stream_t *)&p.pipe, bufs, &n), 0);
    assert_int_equal(n, n_before);
    assert_memory_equal(bufs, before, n * sizeof(*bufs));

    size_t received = peer_read_all(&p, got, total);
    assert_int_equal(received, total - left);
    int rc = 0;
    for (int rounds = 0; rc == 0 && rounds < 100000; rounds++) {
        rc = mm_try_write((uv_stream_t *)&p.pipe, bufs, &n);
        assert_true(rc >= 0);
        received += peer_read_all(&p, got + received, total - received);
    }
    assert_int_equal(rc, 1);
    received += peer_read_all(&p, got + received, total - received);
    assert_int_equal(received, total);
    assert_memory_equal(got, data, total);
    free(data);
    free(got);
    pair_close(&p);
}

/* The peer has gone: a negative libuv error, bufs untouched. */
static void test_peer_gone_is_an_error(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    pair_t p;
    pair_open(&p);
    close(p.peer);
    p.peer = -1;
    char b[] = "late";
    uv_buf_t bufs[1] = {uv_buf_init(b, 4)};
    unsigned n = 1;
    int rc = mm_try_write((uv_stream_t *)&p.pipe, bufs, &n);
    assert_true(rc < 0);
    assert_true(rc == UV_EPIPE || rc == UV_ECONNRESET);
    assert_int_equal(n, 1);
    assert_ptr_equal(bufs[0].base, b);
    assert_int_equal(bufs[0].len, 4);
    pair_close(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_everything_written_at_once),
        cmocka_unit_test(test_partial_write_leaves_the_exact_rest),
        cmocka_unit_test(test_peer_gone_is_an_error),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
