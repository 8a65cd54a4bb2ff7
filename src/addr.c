/* addr.c — see addr.h. */
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "addr.h"

int mm_addr_literal(const cfg_addr_t *a, struct sockaddr_storage *out)
{
    memset(out, 0, sizeof(*out));
    if (uv_ip4_addr(a->host, a->port, (struct sockaddr_in *)out) == 0 ||
        uv_ip6_addr(a->host, a->port, (struct sockaddr_in6 *)out) == 0)
        return 0;
    if (strcasecmp(a->host, "localhost") == 0)
        return uv_ip4_addr("127.0.0.1", a->port, (struct sockaddr_in *)out) == 0 ? 0 : -1;
    return -1;
}

int mm_addr_is_name(const cfg_addr_t *a)
{
    struct sockaddr_storage ss;
    return mm_addr_literal(a, &ss) != 0;
}

static const struct addrinfo lookup_hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};

int mm_addr_resolve(const cfg_addr_t *a, struct sockaddr_storage *out)
{
    if (mm_addr_literal(a, out) == 0) return 0;
    struct addrinfo *res = NULL;
    if (getaddrinfo(a->host, NULL, &lookup_hints, &res) != 0) return -1;
    int rc = mm_addr_from_ai(res, a->port, out);
    freeaddrinfo(res);
    return rc;
}

int mm_addr_lookup(uv_loop_t *loop, uv_getaddrinfo_t *req, uv_getaddrinfo_cb cb, const char *host)
{
    return uv_getaddrinfo(loop, req, cb, host, NULL, &lookup_hints);
}

const struct addrinfo *mm_addr_pick(const struct addrinfo *res)
{
    const struct addrinfo *pick = NULL;
    for (const struct addrinfo *a = res; a; a = a->ai_next)
        if (pick == NULL || (a->ai_family == AF_INET && pick->ai_family != AF_INET)) pick = a;
    return pick;
}

int mm_addr_from_ai(const struct addrinfo *res, int port, struct sockaddr_storage *out)
{
    const struct addrinfo *ai = mm_addr_pick(res);
    if (ai == NULL || ai->ai_addrlen > sizeof(*out)) return -1;
    memset(out, 0, sizeof(*out));
    memcpy(out, ai->ai_addr, ai->ai_addrlen);
    if (out->ss_family == AF_INET)
        ((struct sockaddr_in *)out)->sin_port = htons((uint16_t)port);
    else if (out->ss_family == AF_INET6)
        ((struct sockaddr_in6 *)out)->sin6_port = htons((uint16_t)port);
    else
        return -1;
    return 0;
}

void mm_addr_format(const struct sockaddr_storage *ss, char *out, size_t n)
{
    char ip[64] = "?";
    if (ss->ss_family == AF_INET6) {
        uv_ip6_name((const struct sockaddr_in6 *)ss, ip, sizeof(ip));
        snprintf(out, n, "[%s]:%d", ip, ntohs(((const struct sockaddr_in6 *)ss)->sin6_port));
    } else {
        uv_ip4_name((const struct sockaddr_in *)ss, ip, sizeof(ip));
        snprintf(out, n, "%s:%d", ip, ntohs(((const struct sockaddr_in *)ss)->sin_port));
    }
}

int mm_addr_equal(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family) return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
    return x->sin6_port == y->sin6_port &&
           memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
}
