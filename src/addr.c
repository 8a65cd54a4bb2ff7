/* addr.c — see addr.h. */
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
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
    return x->sin6_port == y->sin6_port && x->sin6_scope_id == y->sin6_scope_id &&
           memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
}

/* Order of a set: family, then address bytes, then port. */
static int addr_cmp(const void *x, const void *y)
{
    const struct sockaddr_storage *a = x, *b = y;
    if (a->ss_family != b->ss_family) return a->ss_family < b->ss_family ? -1 : 1;
    int c;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *p = x, *q = y;
        c = memcmp(&p->sin_addr, &q->sin_addr, sizeof(p->sin_addr));
        return c ? c : (int)ntohs(p->sin_port) - (int)ntohs(q->sin_port);
    }
    const struct sockaddr_in6 *p = x, *q = y;
    c = memcmp(&p->sin6_addr, &q->sin6_addr, sizeof(p->sin6_addr));
    return c ? c : (int)ntohs(p->sin6_port) - (int)ntohs(q->sin6_port);
}

int mm_addrs_from_ai(const struct addrinfo *res, int port, mm_addrs_t *out)
{
    const struct addrinfo *first = mm_addr_pick(res);
    out->n = 0;
    if (first == NULL) return -1;
    struct sockaddr_storage all[4 * MM_ADDRS_MAX];
    int n = 0;
    for (const struct addrinfo *ai = res; ai && n < (int)(sizeof(all) / sizeof(all[0]));
         ai = ai->ai_next) {
        if (ai->ai_family != first->ai_family) continue;
        /* mm_addr_from_ai on a list of one: the family, the port, the size check */
        struct addrinfo one = *ai;
        one.ai_next = NULL;
        if (mm_addr_from_ai(&one, port, &all[n]) == 0) n++;
    }
    qsort(all, (size_t)n, sizeof(all[0]), addr_cmp);
    for (int i = 0; i < n && out->n < MM_ADDRS_MAX; i++)
        if (out->n == 0 || addr_cmp(&all[i], &out->a[out->n - 1]) != 0) out->a[out->n++] = all[i];
    return out->n > 0 ? 0 : -1;
}

int mm_addrs_resolve(const cfg_addr_t *a, mm_addrs_t *out)
{
    if (mm_addr_literal(a, &out->a[0]) == 0) {
        out->n = 1;
        return 0;
    }
    struct addrinfo *res = NULL;
    out->n = 0;
    if (getaddrinfo(a->host, NULL, &lookup_hints, &res) != 0) return -1;
    int rc = mm_addrs_from_ai(res, a->port, out);
    freeaddrinfo(res);
    return rc;
}

int mm_addrs_equal(const mm_addrs_t *a, const mm_addrs_t *b)
{
    if (a->n != b->n) return 0;
    for (int i = 0; i < a->n; i++)
        if (!mm_addr_equal(&a->a[i], &b->a[i])) return 0;
    return 1;
}

void mm_addrs_format(const mm_addrs_t *s, char *out, size_t n)
{
    size_t len = 0;
    out[0] = '\0';
    for (int i = 0; i < s->n; i++) {
        char one[80];
        mm_addr_format(&s->a[i], one, sizeof(one));
        int w = snprintf(out + len, n - len, "%s%s", i ? ", " : "", one);
        if (w < 0 || (size_t)w >= n - len) {
            if (n >= 4) snprintf(out + n - 4, 4, "...");
            return;
        }
        len += (size_t)w;
    }
}
