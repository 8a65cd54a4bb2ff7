/* ports.h — loopback ports for tests that open sockets. Header-only: each
 * test_*.c is its own executable. */
#ifndef MM_TEST_PORTS_H
#define MM_TEST_PORTS_H

#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

/* A port on 127.0.0.1 that nothing listens on (bound by the kernel's
 * choice, then closed): a connect to it is refused. */
static inline int test_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

#endif
