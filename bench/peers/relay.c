/* relay.c — the floor of userspace proxying, for bench/peers.sh.
 *
 * A single-threaded epoll TCP relay that pairs each client connection with one
 * upstream connection and copies bytes both ways, parsing nothing. Whatever an
 * HTTP proxy spends above this per request is its own overhead. peers.sh
 * compiles it with plain gcc; it is not part of the CMake build (it lives in
 * bench/peers/ because every C file directly in bench/ is linked into
 * modelmux-bench).
 * Loopback only. Usage: relay LISTEN_PORT UPSTREAM_PORT */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_FD 65536

static int peer[MAX_FD]; /* the other end of each relayed fd, -1 when closed */

static int set_nonblock(int fd)
{
    return fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static int parse_port(const char *s)
{
    char *end;
    long v = strtol(s, &end, 10);
    return (*s && !*end && v > 0 && v < 65536) ? (int)v : -1;
}

static void close_pair(int fd)
{
    int p = peer[fd];
    peer[fd] = -1;
    close(fd);
    if (p >= 0) {
        peer[p] = -1;
        close(p);
    }
}

int main(int argc, char **argv)
{
    int lp, up, one = 1;
    if (argc != 3 || (lp = parse_port(argv[1])) < 0 || (up = parse_port(argv[2])) < 0) {
        fprintf(stderr, "usage: relay LISTEN_PORT UPSTREAM_PORT\n");
        return 2;
    }
    for (int i = 0; i < MAX_FD; i++) peer[i] = -1;
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)lp)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 4096)) {
        perror("relay: listen");
        return 1;
    }
    set_nonblock(ls);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls}, evs[256];
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    struct sockaddr_in u = {.sin_family = AF_INET, .sin_port = htons((uint16_t)up)};
    inet_pton(AF_INET, "127.0.0.1", &u.sin_addr);
    static char buf[65536];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("relay: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                int c;
                while ((c = accept(ls, NULL, NULL)) >= 0) {
                    /* a blocking connect: on loopback it completes at once */
                    int s = socket(AF_INET, SOCK_STREAM, 0);
                    if (c >= MAX_FD || s < 0 || s >= MAX_FD ||
                        connect(s, (struct sockaddr *)&u, sizeof u)) {
                        close(c);
                        if (s >= 0) close(s);
                        continue;
                    }
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    set_nonblock(c);
                    set_nonblock(s);
                    peer[c] = s;
                    peer[s] = c;
                    ev.data.fd = c;
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
                    ev.data.fd = s;
                    epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev);
                }
                continue;
            }
            if (peer[fd] < 0) continue; /* closed earlier in this batch */
            ssize_t r = read(fd, buf, sizeof buf);
            if (r > 0) {
                ssize_t w = 0;
                while (w < r) { /* small messages: spinning on EAGAIN is fine for a floor */
                    ssize_t k = write(peer[fd], buf + w, (size_t)(r - w));
                    if (k > 0)
                        w += k;
                    else if (k < 0 && errno != EAGAIN && errno != EINTR)
                        break;
                }
            } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                close_pair(fd);
            }
        }
    }
}
