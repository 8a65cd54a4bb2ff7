/* addr.h — socket addresses of configured hosts: numeric ones as they are,
 * names looked up. One rule everywhere (upstreams, listeners, the Redis
 * store): an IPv4 address first when a name has both, as hiredis does and
 * Envoy's V4_PREFERRED, so "localhost"-like names reach a server bound to
 * 127.0.0.1 even where ::1 sorts first. */
#ifndef MM_ADDR_H
#define MM_ADDR_H

#include <uv.h>

#include "config.h"

/* A numeric host as it is, "localhost" as 127.0.0.1 (what listeners have
 * always bound): 0, with *out set; -1 for a name that needs a lookup. */
int mm_addr_literal(const cfg_addr_t *a, struct sockaddr_storage *out);
/* 1 if a's host is a name that needs a lookup (not numeric, not localhost). */
int mm_addr_is_name(const cfg_addr_t *a);
/* mm_addr_literal, else a blocking getaddrinfo: call it at startup, never
 * once serving. 0, or -1 when the name does not resolve. */
int mm_addr_resolve(const cfg_addr_t *a, struct sockaddr_storage *out);

/* Look `host` up in libuv's thread pool (any family, stream sockets): what
 * uv_getaddrinfo returns. */
int mm_addr_lookup(uv_loop_t *loop, uv_getaddrinfo_t *req, uv_getaddrinfo_cb cb, const char *host);
/* The answer's address to use (the first IPv4 one, else the first), or NULL. */
const struct addrinfo *mm_addr_pick(const struct addrinfo *res);
/* mm_addr_pick's address with `port`: 0, or -1 when there is none. */
int mm_addr_from_ai(const struct addrinfo *res, int port, struct sockaddr_storage *out);

/* Every address a name resolves to, used in turn (an upstream's: DNS round
 * robin, a Kubernetes headless Service), as Envoy's STRICT_DNS makes a
 * host of each. */
#define MM_ADDRS_MAX 16
typedef struct {
    int n; /* 1..MM_ADDRS_MAX once set */
    struct sockaddr_storage a[MM_ADDRS_MAX];
} mm_addrs_t;

/* The answer's addresses of one family (IPv4 when it has any, as
 * mm_addr_pick), with port, without duplicates, in order (so two answers
 * that list the same addresses differently are equal), the first
 * MM_ADDRS_MAX: 0, or -1 when there is none. */
int mm_addrs_from_ai(const struct addrinfo *res, int port, mm_addrs_t *out);
/* mm_addr_literal as a set of one, else a blocking getaddrinfo: call it at
 * startup, never once serving. 0, or -1 when the name does not resolve. */
int mm_addrs_resolve(const cfg_addr_t *a, mm_addrs_t *out);
/* 1 if both hold the same addresses (both in order, as mm_addrs_from_ai
 * leaves them). */
int mm_addrs_equal(const mm_addrs_t *a, const mm_addrs_t *b);
/* "10.0.0.1:80, 10.0.0.2:80" (cut short, ending in "...", if n is small). */
void mm_addrs_format(const mm_addrs_t *s, char *out, size_t n);

/* "1.2.3.4:80" or "[::1]:80". */
void mm_addr_format(const struct sockaddr_storage *ss, char *out, size_t n);
/* 1 if both are the same family, address and port (and IPv6 zone). */
int mm_addr_equal(const struct sockaddr_storage *a, const struct sockaddr_storage *b);

#endif
