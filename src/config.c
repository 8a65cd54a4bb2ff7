/* config.c — load and validate the JSON configuration (DESIGN.md §3).
 *
 * jansson parses (rejecting duplicate keys) and reports syntax errors with a
 * position; for every semantic error the offending value's JSON pointer is
 * looked up in a jsonpos index of the same text, so each message reads
 * "FILE:LINE:COL: what is wrong". Messages name the value by a dotted path
 * (upstreams.champion.timeout_ms, experiments[0].match.path_prefix, and
 * upstreams["a b"] for names that are not plain words) and say what is
 * allowed. Only the first error is reported: later ones are often knock-on
 * effects of the first.
 *
 * Everything a policy may not know about (names, match rules, feedback TTL)
 * is checked here; the rest of an experiment object belongs to its policy,
 * which validates it through the policy_* services at the bottom of this
 * file and declares its arms. The parsed JSON tree is kept alive with the
 * config_t (in config_priv_t), so strings a policy got from
 * policy_get_string stay valid for the policy instance's whole life. */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config.h"
#include "http.h"
#include "jsonpos.h"
#include "log.h"

/* DOTTED_MAX: a value's readable name in a message, room for a few names of
 * up to 255 bytes and keys cut at 200 (jsonpos.h), escaped; longer is cut,
 * with "...". */
#define PTR_MAX         1024 /* JSON pointers we build */
#define DOTTED_MAX      1024
#define CONFIG_FILE_MAX (16u << 20) /* a config larger than this is a mistake */
#define TIMEOUT_MAX_MS  3600000LL   /* one hour */
#define TOKEN_MAX       1024

typedef struct {
    config_t c;   /* first member: config_free gets back here with container_of */
    json_t *root; /* the parsed text, alive as long as the config */
    /* The parse's name -> index tables (cx_t), kept: config_*_index answer
     * in O(1), so a reload that pairs each experiment with the one it
     * replaces is linear in their number rather than quadratic. */
    json_t *up_index, *exp_index;
} config_priv_t;

/* One parse: where messages go, and what we know so far. */
typedef struct {
    const char *name; /* the file, as named in messages */
    json_t *root;
    jsonpos_t *pos;
    char *err;
    size_t errlen;
    int failed;
    config_t *c;
    /* Name -> index of the upstreams and experiments parsed so far, in
     * jansson's hash tables: arms and repeated experiment names are found
     * in O(1), so a config with thousands of each is not quadratic. */
    json_t *up_index, *exp_index;
} cx_t;

struct policy_parse_s {
    cx_t *cx;
    cfg_experiment_t *e;
    char base[48]; /* "/experiments/N": policy paths are relative to it */
};

/* Keys of an experiment object that the core owns. */
static const char *const core_exp_keys[] = {"name", "match", "policy", "feedback_ttl_s", NULL};

/* Every policy DESIGN.md names, probed through the registry for the
 * "known:" hint of an unknown-policy error. */
static const char *const design_policies[] = {"ab",   "canary",         "shadow",     "thompson",
                                              "ucb1", "epsilon_greedy", "interleave", NULL};

/* ---- messages ---- */

/* Line and column of `ptr` (key=1: of its key). A pointer that is not in the
 * text (a required key that is missing) falls back to its nearest present
 * ancestor, which is the object the key should have been in. */
static void locate(const cx_t *cx, const char *ptr, int key, int *line, int *col)
{
    char p[PTR_MAX];
    snprintf(p, sizeof(p), "%s", ptr);
    *line = 1;
    *col = 1;
    if (cx->pos == NULL) return;
    for (;;) {
        if (jsonpos_find(cx->pos, p, key, line, col) == 0) return;
        char *slash = strrchr(p, '/');
        if (slash == NULL) return;
        *slash = '\0';
        key = 0;
    }
}

/* Copy msg into out (n bytes, NUL-terminated), control characters written
 * as JSON escapes (\n, \u001b). Messages quote what the file holds (a key
 * with an escaped newline, the bytes near a syntax error): printed raw, they
 * would split the one-line "FILE:LINE:COL: message" in two or reach the
 * terminal as escape sequences. */
static void put_escaped(char *out, size_t n, const char *msg)
{
    size_t len = 0;
    if (n == 0) return;
    for (; *msg; msg++) {
        unsigned char ch = (unsigned char)*msg;
        char e[8] = {(char)ch, '\0'};
        if (ch == '\n' || ch == '\r' || ch == '\t')
            snprintf(e, sizeof(e), "\\%c", ch == '\n' ? 'n' : ch == '\r' ? 'r' : 't');
        else if (ch < 0x20 || ch == 0x7f)
            snprintf(e, sizeof(e), "\\u%04x", ch);
        size_t k = strlen(e);
        if (len + k >= n) break; /* whole escapes only */
        memcpy(out + len, e, k);
        len += k;
    }
    out[len] = '\0';
}

/* "FILE:LINE:COL: message" into cx->err. */
static void put_error(cx_t *cx, int line, int col, const char *msg)
{
    int n = snprintf(cx->err, cx->errlen, "%s:%d:%d: ", cx->name, line, col);
    if (n >= 0 && (size_t)n < cx->errlen) put_escaped(cx->err + n, cx->errlen - (size_t)n, msg);
}

static int verror(cx_t *cx, const char *ptr, int key, const char *fmt, va_list ap)
{
    if (cx->failed) return -1;
    cx->failed = 1;
    if (cx->errlen == 0) return -1;
    int line, col;
    char msg[2048];
    locate(cx, ptr, key, &line, &col);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    put_error(cx, line, col, msg);
    return -1;
}

/* Record an error at the value `ptr` (key=1: at its key). Returns -1. */
MM_PRINTF(4, 5) static int cerr(cx_t *cx, const char *ptr, int key, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    verror(cx, ptr, key, fmt, ap);
    va_end(ap);
    return -1;
}

/* Append s to out (n bytes, *len used). What does not fit is cut, and the
 * cut is shown: the text ends in "..." (a message must never name a key
 * shorter than the one in the file without saying so). */
static void cat(char *out, size_t n, size_t *len, const char *s)
{
    while (*s && *len + 1 < n) out[(*len)++] = *s++;
    out[*len] = '\0';
    if (*s && n > 4) memcpy(out + n - 4, "...", 4);
}

static int plain_word(const char *s)
{
    if (*s == '\0') return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || *s == '-'))
            return 0;
    return 1;
}

/* The readable name of `ptr`: "upstreams.champion.url", "experiments[0]",
 * upstreams["v1.2"]. Walks the document to tell array indexes from keys. */
static const char *dotted(const cx_t *cx, const char *ptr, char *out, size_t n)
{
    size_t len = 0;
    const json_t *cur = cx->root;
    out[0] = '\0';
    const char *p = ptr;
    while (*p == '/') {
        /* a key of up to 256 bytes whole; longer ones come cut (jsonpos.h) */
        char seg[JSONPOS_SEG_MAX + 1];
        size_t k = 0;
        int cut = 0;
        for (p++; *p && *p != '/'; p++) {
            char ch = *p;
            if (ch == '~' && p[1] == '2') cut = 1; /* a long key, shortened (jsonpos.h) */
            if (cut) continue;
            if (ch == '~' && (p[1] == '0' || p[1] == '1')) ch = *++p == '0' ? '~' : '/';
            if (k + 1 < sizeof(seg)) seg[k++] = ch;
        }
        seg[k] = '\0';
        if (json_is_array(cur)) {
            cat(out, n, &len, "[");
            cat(out, n, &len, seg);
            cat(out, n, &len, "]");
            cur = json_array_get(cur, strtoul(seg, NULL, 10));
        } else {
            if (plain_word(seg)) {
                if (len > 0) cat(out, n, &len, ".");
                cat(out, n, &len, seg);
                if (cut) cat(out, n, &len, "...");
            } else { /* as a JSON string: ["a\"b"] must not read as ["a"] */
                cat(out, n, &len, "[\"");
                for (const char *c = seg; *c; c++) {
                    char esc[3] = {'\\', *c, '\0'}; /* the character, after a backslash */
                    cat(out, n, &len, *c == '"' || *c == '\\' ? esc : esc + 1);
                }
                cat(out, n, &len, cut ? "...\"]" : "\"]");
            }
            cur = json_is_object(cur) && !cut ? json_object_get(cur, seg) : NULL;
        }
    }
    if (len == 0) cat(out, n, &len, "(top level)");
    return out;
}

/* A number as a user would write it: 2000, 0.1, 1e-06. With `exact`, all
 * the digits needed to tell it from its neighbours (a value just outside a
 * range must not print as the bound itself); bounds are shown short. */
static const char *fmt_num(double d, int exact, char *out, size_t n)
{
    if (d == floor(d) && fabs(d) < 1e15) {
        snprintf(out, n, "%.0f", d);
    } else {
        snprintf(out, n, "%.15g", d);
        if (exact && strtod(out, NULL) != d) snprintf(out, n, "%.17g", d);
    }
    return out;
}

const char *policy_num(double d, char *out, size_t n)
{
    return fmt_num(d, 1, out, n);
}

const char *config_show_value(const json_t *v, char *out, size_t n)
{
    if (v == NULL) {
        snprintf(out, n, "nothing");
        return out;
    }
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        snprintf(out, n, "an object");
        break;
    case JSON_ARRAY:
        snprintf(out, n, "an array");
        break;
    case JSON_INTEGER:
        snprintf(out, n, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        break;
    case JSON_REAL:
        fmt_num(json_real_value(v), 1, out, n);
        break;
    case JSON_STRING: {
        char *s = json_dumps(v, JSON_ENCODE_ANY);
        if (s == NULL) {
            snprintf(out, n, "a string");
            break;
        }
        size_t len = strlen(s);
        if (len > 48 && n > 52) {
            size_t cut = 44;
            while (cut > 0 && ((unsigned char)s[cut] & 0xC0) == 0x80) cut--; /* whole characters */
            snprintf(out, n, "%.*s...\"", (int)cut, s);
        } else {
            snprintf(out, n, "%s", s);
        }
        free(s);
        break;
    }
    case JSON_TRUE:
        snprintf(out, n, "true");
        break;
    case JSON_FALSE:
        snprintf(out, n, "false");
        break;
    case JSON_NULL:
        snprintf(out, n, "null");
        break;
    }
    return out;
}

/* ---- typed getters, shared by the core and the policy services ---- */

static void child_ptr(const char *objptr, const char *key, char *out, size_t n)
{
    snprintf(out, n, "%s", objptr);
    jsonpos_append(out, n, key);
}

static int type_error(cx_t *cx, const char *ptr, const json_t *v, const char *what)
{
    char d[DOTTED_MAX], g[64];
    return cerr(cx, ptr, 0, "%s must be %s, got %s", dotted(cx, ptr, d, sizeof(d)), what,
                config_show_value(v, g, sizeof(g)));
}

static int require_object(cx_t *cx, const json_t *obj, const char *ptr)
{
    return json_is_object(obj) ? 0 : type_error(cx, ptr, obj, "an object");
}

/* obj[key] as an object: NULL with *rc 0 when absent, *rc -1 on a wrong type. */
static const json_t *get_object(cx_t *cx, const json_t *obj, const char *objptr, const char *key,
                                int *rc)
{
    const json_t *v = json_object_get(obj, key);
    *rc = 0;
    if (v == NULL) return NULL;
    char p[PTR_MAX];
    child_ptr(objptr, key, p, sizeof(p));
    if (require_object(cx, v, p) < 0) {
        *rc = -1;
        return NULL;
    }
    return v;
}

static int missing(cx_t *cx, const char *objptr, const char *key)
{
    char p[PTR_MAX], d[DOTTED_MAX];
    child_ptr(objptr, key, p, sizeof(p));
    return cerr(cx, p, 0, "%s is required", dotted(cx, p, d, sizeof(d)));
}

static void int_range(long long lo, long long hi, char *out, size_t n)
{
    if (lo == LLONG_MIN && hi == LLONG_MAX)
        snprintf(out, n, "an integer");
    else if (hi == LLONG_MAX)
        snprintf(out, n, "an integer >= %lld", lo);
    else if (lo == LLONG_MIN)
        snprintf(out, n, "an integer <= %lld", hi);
    else
        snprintf(out, n, "an integer in [%lld, %lld]", lo, hi);
}

/* "a number in [lo, hi]", with "(" / ")" for an open end (open: POLICY_OPEN_*)
 * and "a number > lo" style when one side is unbounded. */
static void num_range(double lo, double hi, int open, char *out, size_t n)
{
    char a[40], b[40];
    int nolo = lo <= -DBL_MAX, nohi = hi >= DBL_MAX;
    const char *ge = (open & POLICY_OPEN_LO) ? ">" : ">=",
               *le = (open & POLICY_OPEN_HI) ? "<" : "<=";
    if (nolo && nohi)
        snprintf(out, n, "a number");
    else if (nohi)
        snprintf(out, n, "a number %s %s", ge, fmt_num(lo, 0, a, sizeof(a)));
    else if (nolo)
        snprintf(out, n, "a number %s %s", le, fmt_num(hi, 0, b, sizeof(b)));
    else
        snprintf(out, n, "a number in %c%s, %s%c", (open & POLICY_OPEN_LO) ? '(' : '[',
                 fmt_num(lo, 0, a, sizeof(a)), fmt_num(hi, 0, b, sizeof(b)),
                 (open & POLICY_OPEN_HI) ? ')' : ']');
}

/* Integers: JSON integers, and reals with an integral value (3e5). */
static int check_int(cx_t *cx, const json_t *v, const char *ptr, long long lo, long long hi,
                     long long *out)
{
    long long x = 0;
    int ok = 0;
    if (json_is_integer(v)) {
        x = json_integer_value(v);
        ok = 1;
    } else if (json_is_real(v)) {
        double d = json_real_value(v);
        if (isfinite(d) && d == floor(d) && d >= -9.2e18 && d <= 9.2e18) {
            x = (long long)d;
            ok = 1;
        }
    }
    if (ok && x >= lo && x <= hi) {
        *out = x;
        return 0;
    }
    char r[96];
    int_range(lo, hi, r, sizeof(r));
    return type_error(cx, ptr, v, r);
}

static int check_number(cx_t *cx, const json_t *v, const char *ptr, double lo, double hi, int open,
                        double *out)
{
    if (json_is_number(v)) {
        double d = json_number_value(v);
        if (isfinite(d) && ((open & POLICY_OPEN_LO) ? d > lo : d >= lo) &&
            ((open & POLICY_OPEN_HI) ? d < hi : d <= hi)) {
            *out = d;
            return 0;
        }
    }
    char r[96];
    num_range(lo, hi, open, r, sizeof(r));
    return type_error(cx, ptr, v, r);
}

static int get_int(cx_t *cx, const json_t *obj, const char *objptr, const char *key, long long def,
                   long long lo, long long hi, long long *out)
{
    const json_t *v = json_object_get(obj, key);
    if (v == NULL) {
        *out = def;
        return 0;
    }
    char p[PTR_MAX];
    child_ptr(objptr, key, p, sizeof(p));
    return check_int(cx, v, p, lo, hi, out);
}

/* get_int into an int field (every bound we pass fits an int). */
static int get_int_field(cx_t *cx, const json_t *obj, const char *objptr, const char *key, int def,
                         int lo, int hi, int *out)
{
    long long v;
    if (get_int(cx, obj, objptr, key, def, lo, hi, &v) < 0) return -1;
    *out = (int)v;
    return 0;
}

static int get_number(cx_t *cx, const json_t *obj, const char *objptr, const char *key, double def,
                      double lo, double hi, int open, double *out)
{
    const json_t *v = json_object_get(obj, key);
    if (v == NULL) {
        *out = def;
        return 0;
    }
    char p[PTR_MAX];
    child_ptr(objptr, key, p, sizeof(p));
    return check_number(cx, v, p, lo, hi, open, out);
}

static int get_string(cx_t *cx, const json_t *obj, const char *objptr, const char *key,
                      const char *def, const char **out)
{
    const json_t *v = json_object_get(obj, key);
    if (v == NULL) {
        *out = def;
        return 0;
    }
    char p[PTR_MAX];
    child_ptr(objptr, key, p, sizeof(p));
    if (!json_is_string(v)) return type_error(cx, p, v, "a string");
    *out = json_string_value(v);
    return 0;
}

static int get_bool(cx_t *cx, const json_t *obj, const char *objptr, const char *key, int def,
                    int *out)
{
    const json_t *v = json_object_get(obj, key);
    if (v == NULL) {
        *out = def;
        return 0;
    }
    char p[PTR_MAX];
    child_ptr(objptr, key, p, sizeof(p));
    if (!json_is_boolean(v)) return type_error(cx, p, v, "true or false");
    *out = json_is_true(v);
    return 0;
}

static int in_list(const char *const *list, const char *s)
{
    for (; list && *list; list++)
        if (strcmp(*list, s) == 0) return 1;
    return 0;
}

/* Fail at the first key of obj not in `allowed` or `extra`. */
static int check_keys(cx_t *cx, const json_t *obj, const char *objptr, const char *const *allowed,
                      const char *const *extra)
{
    const char *k;
    const json_t *v;
    json_object_foreach((json_t *)obj, k, v)
    {
        if (in_list(allowed, k) || in_list(extra, k)) continue;
        char p[PTR_MAX], d[DOTTED_MAX], list[512];
        size_t len = 0;
        list[0] = '\0';
        for (const char *const *l = extra; l && *l; l++) {
            cat(list, sizeof(list), &len, len ? ", " : "");
            cat(list, sizeof(list), &len, *l);
        }
        for (const char *const *l = allowed; l && *l; l++) {
            cat(list, sizeof(list), &len, len ? ", " : "");
            cat(list, sizeof(list), &len, *l);
        }
        child_ptr(objptr, k, p, sizeof(p));
        return cerr(cx, p, 1, "unknown key %s (allowed here: %s)", dotted(cx, p, d, sizeof(d)),
                    len ? list : "none");
    }
    return 0;
}

static char *dup_or_oom(cx_t *cx, const char *s, const char *ptr)
{
    char *d = strdup(s);
    if (d == NULL) cerr(cx, ptr, 0, "out of memory");
    return d;
}

/* Copy into a fixed field, failing when it does not fit. */
static int copy_field(cx_t *cx, char *dst, size_t size, const char *s, const char *ptr)
{
    size_t n = strlen(s);
    if (n >= size) {
        char d[DOTTED_MAX];
        return cerr(cx, ptr, 0, "%s is too long (at most %zu bytes)", dotted(cx, ptr, d, sizeof(d)),
                    size - 1);
    }
    memcpy(dst, s, n + 1);
    return 0;
}

/* ---- addresses and URLs ---- */

static int host_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '.' || ch == '-' || ch == '_';
}

/* Parse "host:port" or "[v6]:port" (host stored without brackets). On
 * failure *why says what is wrong. */
static int parse_addr(const char *s, cfg_addr_t *a, const char **why)
{
    const char *host, *hend, *colon;
    int v6 = 0;
    if (s[0] == '[') {
        host = s + 1;
        hend = strchr(host, ']');
        if (hend == NULL) return *why = "missing ']' after the IPv6 address", -1;
        if (hend[1] != ':') return *why = "missing \":port\" after ']'", -1;
        colon = hend + 1;
        v6 = 1;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL) return *why = "missing \":port\"", -1;
        host = s;
        hend = colon;
        if (memchr(s, ':', (size_t)(colon - s)) != NULL)
            return *why = "an IPv6 address must be in brackets, as in [::1]:8080", -1;
    }
    size_t hn = (size_t)(hend - host);
    if (hn == 0) return *why = "the host is empty", -1;
    if (hn >= sizeof(a->host)) return *why = "the host is too long", -1;
    char h[sizeof(a->host)];
    memcpy(h, host, hn);
    h[hn] = '\0';
    if (v6) {
        char ip[sizeof(h)];
        struct in6_addr in6;
        snprintf(ip, sizeof(ip), "%s", h);
        char *zone = strchr(ip, '%');
        if (zone != NULL) {
            *zone++ = '\0';
            if (*zone == '\0') return *why = "empty IPv6 zone", -1;
            for (const char *z = zone; *z; z++)
                if (!host_char(*z)) return *why = "bad IPv6 zone", -1;
        }
        if (inet_pton(AF_INET6, ip, &in6) != 1) return *why = "not an IPv6 address", -1;
    } else {
        for (size_t i = 0; i < hn; i++)
            if (!host_char(h[i]))
                return *why = "the host has a character not allowed in a host", -1;
    }
    const char *p = colon + 1;
    long port = 0;
    size_t digits = 0;
    for (; *p >= '0' && *p <= '9' && digits < 6; p++, digits++) port = port * 10 + (*p - '0');
    if (digits == 0 || *p != '\0' || port < 1 || port > 65535)
        return *why = "the port must be an integer in [1, 65535]", -1;
    memcpy(a->host, h, hn + 1);
    a->port = (int)port;
    return 0;
}

int config_parse_addr(const char *s, cfg_addr_t *a)
{
    cfg_addr_t tmp;
    const char *why;
    if (s == NULL || parse_addr(s, &tmp, &why) < 0) return -1;
    *a = tmp;
    return 0;
}

/* 127.0.0.0/8, ::1 (and ::ffff:127.x.x.x), localhost. */
static int is_loopback(const char *host)
{
    struct in_addr in4;
    struct in6_addr in6;
    char ip[256];
    if (strcasecmp(host, "localhost") == 0) return 1;
    if (inet_pton(AF_INET, host, &in4) == 1) return (ntohl(in4.s_addr) >> 24) == 127;
    snprintf(ip, sizeof(ip), "%s", host);
    char *zone = strchr(ip, '%');
    if (zone != NULL) *zone = '\0';
    if (inet_pton(AF_INET6, ip, &in6) == 1) {
        if (IN6_IS_ADDR_LOOPBACK(&in6)) return 1;
        return IN6_IS_ADDR_V4MAPPED(&in6) && in6.s6_addr[12] == 127;
    }
    return 0;
}

/* The address a listener on `host` binds: "localhost" is 127.0.0.1 (see
 * mm_addr_resolve), so "localhost:P" and "127.0.0.1:P" are one socket. */
static const char *bind_host(const char *host)
{
    return strcasecmp(host, "localhost") == 0 ? "127.0.0.1" : host;
}

/* 0.0.0.0 or ::, which bind every address of their family. */
static int is_wildcard(const char *host)
{
    struct in_addr in4;
    struct in6_addr in6;
    if (inet_pton(AF_INET, host, &in4) == 1) return in4.s_addr == INADDR_ANY;
    if (inet_pton(AF_INET6, host, &in6) == 1) return IN6_IS_ADDR_UNSPECIFIED(&in6);
    return 0;
}

static int get_addr(cx_t *cx, const json_t *obj, const char *objptr, const char *key,
                    const char *def, cfg_addr_t *out)
{
    const char *s = NULL, *why = NULL; /* set on every path; -O3 cannot see it */
    if (get_string(cx, obj, objptr, key, def, &s) < 0) return -1;
    if (parse_addr(s, out, &why) == 0) return 0;
    char p[PTR_MAX], d[DOTTED_MAX], g[300];
    child_ptr(objptr, key, p, sizeof(p));
    return cerr(cx, p, 0, "%s: bad address %s: %s; expected \"host:port\" or \"[ipv6]:port\"",
                dotted(cx, p, d, sizeof(d)),
                config_show_value(json_object_get(obj, key), g, sizeof(g)), why);
}

const char *cfg_addr_str(const cfg_addr_t *a, char *buf, size_t n)
{
    snprintf(buf, n, strchr(a->host, ':') ? "[%s]:%d" : "%s:%d", a->host, a->port);
    return buf;
}

/* "http://host[:port][/base/path]" into u (url, addr, base_path, host_header). */
static int parse_url(const char *url, cfg_upstream_t *u, const char **why)
{
    if (strlen(url) >= sizeof(u->url)) return *why = "it is too long", -1;
    if (strncasecmp(url, "https://", 8) == 0)
        return *why = "https is not supported: upstreams are spoken to in plain HTTP", -1;
    if (strncasecmp(url, "http://", 7) != 0) return *why = "expected http://host[:port][/path]", -1;
    const char *auth = url + 7;
    if (strpbrk(auth, "?#") != NULL) return *why = "a query or fragment is not allowed", -1;
    size_t an = strcspn(auth, "/");
    const char *path = auth + an;
    char hp[sizeof(u->addr.host) + 16];
    if (an == 0) return *why = "the host is empty", -1;
    if (an + 4 >= sizeof(hp)) return *why = "the host is too long", -1;
    if (memchr(auth, '@', an) != NULL) return *why = "user information is not allowed", -1;
    memcpy(hp, auth, an);
    hp[an] = '\0';
    /* Without a port, default to 80. A ':' after a bracket or a plain host
     * means one is given; an unbracketed IPv6 address is caught by parse_addr. */
    const char *close = hp[0] == '[' ? strchr(hp, ']') : NULL;
    if ((hp[0] == '[' && close != NULL && close[1] == '\0') || (hp[0] != '[' && !strchr(hp, ':')))
        strcat(hp, ":80");
    if (parse_addr(hp, &u->addr, why) < 0) return -1;
    for (const char *c = path; *c; c++)
        if ((unsigned char)*c <= 0x20 || (unsigned char)*c >= 0x7f)
            return *why = "the path has a space, control or non-ASCII character", -1;
    size_t pn = strlen(path);
    while (pn > 0 && path[pn - 1] == '/') pn--;
    if (pn >= sizeof(u->base_path)) return *why = "the path is too long", -1;
    memcpy(u->base_path, path, pn);
    u->base_path[pn] = '\0';
    u->base_path_len = pn;
    if (strchr(u->addr.host, ':') != NULL)
        snprintf(u->host_header, sizeof(u->host_header), "[%s]:%d", u->addr.host, u->addr.port);
    else
        snprintf(u->host_header, sizeof(u->host_header), "%s:%d", u->addr.host, u->addr.port);
    u->host_header_len = strlen(u->host_header);
    snprintf(u->url, sizeof(u->url), "%s", url);
    return 0;
}

/* Token characters (header and cookie names). */
static int is_token(const char *s)
{
    return http_is_token((mm_str_t){s, strlen(s)});
}

/* Visible ASCII only, no spaces. */
static int is_visible(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f) return 0;
    return 1;
}

/* ---- top-level sections ---- */

static int parse_admin(cx_t *cx)
{
    static const char *const keys[] = {"listen", "token", NULL};
    config_t *c = cx->c;
    int rc;
    const json_t *adm = get_object(cx, cx->root, "", "admin", &rc);
    if (adm == NULL) return rc;
    if (check_keys(cx, adm, "/admin", keys, NULL) < 0) return -1;
    c->has_admin = 1;
    if (get_addr(cx, adm, "/admin", "listen", "127.0.0.1:9090", &c->admin_listen) < 0) return -1;
    const json_t *tok = json_object_get(adm, "token");
    if (tok != NULL && !json_is_null(tok)) {
        const char *t = json_string_value(tok);
        if (t == NULL || *t == '\0' || strlen(t) > TOKEN_MAX || !is_visible(t))
            return type_error(cx, "/admin/token", tok,
                              "null or a string of 1-1024 visible ASCII characters");
        if ((c->admin_token = dup_or_oom(cx, t, "/admin/token")) == NULL) return -1;
    }
    /* With SO_REUSEPORT both sockets would bind, and connections would land
     * on either listener at random: refuse rather than misroute. */
    if (c->admin_listen.port == c->listen.port &&
        (strcasecmp(bind_host(c->admin_listen.host), bind_host(c->listen.host)) == 0 ||
         is_wildcard(c->listen.host) || is_wildcard(c->admin_listen.host))) {
        const char *a = json_string_value(json_object_get(adm, "listen"));
        const char *l = json_string_value(json_object_get(cx->root, "listen"));
        return cerr(cx, "/admin/listen", 0,
                    "admin.listen \"%s\" and listen \"%s\" overlap: they need different ports",
                    a ? a : "127.0.0.1:9090", l ? l : "127.0.0.1:8080");
    }
    if (c->admin_token == NULL && !is_loopback(c->admin_listen.host))
        return cerr(cx, "/admin/listen", 0,
                    "admin.listen \"%s\" is not a loopback address, and admin.token is not set: "
                    "anyone who can reach it could change the experiments; set a token or listen "
                    "on 127.0.0.1, ::1 or localhost",
                    c->admin_listen.host);
    return 0;
}

/* 1-255 characters of [A-Za-z0-9_], not starting with a digit: a POSIX
 * environment variable name. */
static int env_name_ok(const char *n)
{
    size_t len = strlen(n);
    if (len == 0 || len > 255 || (n[0] >= '0' && n[0] <= '9')) return 0;
    for (size_t i = 0; i < len; i++)
        if (!(isalnum((unsigned char)n[i]) || n[i] == '_')) return 0;
    return 1;
}

/* username / password / password_env of the object at ptr (store, or
 * store.sentinel), into user and pass (fixed arrays of the given sizes).
 * The password may come from the environment so that it need not sit in a
 * config file (a Kubernetes secret, a systemd credential); it is read when
 * the config is loaded, so a reload or --check sees the variable of the
 * process that loads it. */
static int parse_auth(cx_t *cx, const json_t *o, const char *ptr, char *user_out, size_t user_cap,
                      char *pass_out, size_t pass_cap)
{
    const char *user, *pass, *env;
    char up[PTR_MAX], pp[PTR_MAX], ep[PTR_MAX], d[DOTTED_MAX];
    child_ptr(ptr, "username", up, sizeof(up));
    child_ptr(ptr, "password", pp, sizeof(pp));
    child_ptr(ptr, "password_env", ep, sizeof(ep));
    if (get_string(cx, o, ptr, "username", NULL, &user) < 0 ||
        get_string(cx, o, ptr, "password", NULL, &pass) < 0 ||
        get_string(cx, o, ptr, "password_env", NULL, &env) < 0)
        return -1;
    if (pass && env)
        return cerr(cx, ep, 0, "%s: give either password or password_env, not both",
                    dotted(cx, ep, d, sizeof(d)));
    if (pass && (*pass == '\0' || strlen(pass) >= pass_cap))
        return cerr(cx, pp, 0, "%s: expected 1-%zu bytes", dotted(cx, pp, d, sizeof(d)),
                    pass_cap - 1);
    if (env) {
        if (!env_name_ok(env))
            return type_error(cx, ep, json_object_get(o, "password_env"),
                              "an environment variable name ([A-Za-z_][A-Za-z0-9_]*)");
        pass = getenv(env);
        if (pass == NULL || *pass == '\0')
            return cerr(cx, ep, 0, "%s: the environment variable %s is not set or empty",
                        dotted(cx, ep, d, sizeof(d)), env);
        if (strlen(pass) >= pass_cap)
            return cerr(cx, ep, 0, "%s: the value of %s is longer than %zu bytes",
                        dotted(cx, ep, d, sizeof(d)), env, pass_cap - 1);
    }
    if (user && (*user == '\0' || strlen(user) >= user_cap || !is_visible(user)))
        return type_error(cx, up, json_object_get(o, "username"), "1-255 visible ASCII characters");
    if (user && pass == NULL)
        return cerr(cx, up, 0, "%s: needs password or password_env (AUTH username password)",
                    dotted(cx, up, d, sizeof(d)));
    snprintf(user_out, user_cap, "%s", user ? user : "");
    snprintf(pass_out, pass_cap, "%s", pass ? pass : "");
    return 0;
}

/* store.sentinel: {"master": NAME, "nodes": ["host:port", ...]}, instead of
 * host and port. */
static int parse_sentinel(cx_t *cx, const json_t *o, cfg_store_t *st)
{
    static const char *const keys[] = {"master",   "nodes",        "username",
                                       "password", "password_env", NULL};
    int rc;
    const json_t *sn = get_object(cx, o, "/store", "sentinel", &rc);
    if (sn == NULL) return rc;
    if (json_object_get(o, "host") || json_object_get(o, "port"))
        return cerr(cx, "/store/sentinel", 1,
                    "store.sentinel: not together with store.host or store.port (the Sentinels "
                    "name the primary)");
    if (check_keys(cx, sn, "/store/sentinel", keys, NULL) < 0) return -1;
    const char *master;
    if (get_string(cx, sn, "/store/sentinel", "master", NULL, &master) < 0) return -1;
    if (master == NULL) return missing(cx, "/store/sentinel", "master");
    if (!mm_valid_name(master, strlen(master)))
        return type_error(cx, "/store/sentinel/master", json_object_get(sn, "master"),
                          "1-64 characters of [A-Za-z0-9_.-]");
    snprintf(st->sentinel_master, sizeof(st->sentinel_master), "%s", master);
    const json_t *nodes = json_object_get(sn, "nodes");
    if (nodes == NULL) return missing(cx, "/store/sentinel", "nodes");
    if (!json_is_array(nodes))
        return type_error(cx, "/store/sentinel/nodes", nodes, "an array of \"host:port\"");
    if (json_array_size(nodes) < 1 || json_array_size(nodes) > MM_MAX_SENTINELS)
        return cerr(cx, "/store/sentinel/nodes", 0,
                    "store.sentinel.nodes: expected 1-%d addresses, got %zu", MM_MAX_SENTINELS,
                    json_array_size(nodes));
    for (size_t i = 0; i < json_array_size(nodes); i++) {
        const json_t *v = json_array_get(nodes, i);
        char p[PTR_MAX], d[DOTTED_MAX], g[300];
        snprintf(p, sizeof(p), "/store/sentinel/nodes/%zu", i);
        const char *why = "not a string";
        if (!json_is_string(v) || parse_addr(json_string_value(v), &st->sentinels[i], &why) != 0)
            return cerr(cx, p, 0,
                        "%s: bad address %s: %s; expected \"host:port\" or \"[ipv6]:port\"",
                        dotted(cx, p, d, sizeof(d)), config_show_value(v, g, sizeof(g)), why);
    }
    st->n_sentinels = (int)json_array_size(nodes);
    return parse_auth(cx, sn, "/store/sentinel", st->sentinel_username,
                      sizeof(st->sentinel_username), st->sentinel_password,
                      sizeof(st->sentinel_password));
}

static int parse_store(cx_t *cx)
{
    static const char *const memory_keys[] = {"type", NULL};
    static const char *const redis_keys[] = {"type",    "host",     "port",     "prefix",
                                             "sync_ms", "username", "password", "password_env",
                                             "db",      "sentinel", NULL};
    cfg_store_t *st = &cx->c->store;
    st->type = STORE_MEMORY;
    snprintf(st->host, sizeof(st->host), "127.0.0.1");
    st->port = 6379;
    snprintf(st->prefix, sizeof(st->prefix), "modelmux");
    st->sync_ms = 100;
    int rc;
    const json_t *o = get_object(cx, cx->root, "", "store", &rc);
    if (o == NULL) return rc;
    const char *type;
    if (get_string(cx, o, "/store", "type", NULL, &type) < 0) return -1;
    if (type == NULL) return missing(cx, "/store", "type");
    if (strcmp(type, "memory") == 0) return check_keys(cx, o, "/store", memory_keys, NULL);
    if (strcmp(type, "redis") != 0)
        return type_error(cx, "/store/type", json_object_get(o, "type"), "\"memory\" or \"redis\"");
    st->type = STORE_REDIS;
    if (check_keys(cx, o, "/store", redis_keys, NULL) < 0) return -1;
    const char *host, *prefix;
    if (get_string(cx, o, "/store", "host", "127.0.0.1", &host) < 0) return -1;
    if (*host == '\0' || strlen(host) >= sizeof(st->host) || strpbrk(host, "[]") ||
        !is_visible(host))
        return type_error(cx, "/store/host", json_object_get(o, "host"),
                          "a host name or IP address (IPv6 without brackets, as in \"::1\")");
    snprintf(st->host, sizeof(st->host), "%s", host);
    if (get_int_field(cx, o, "/store", "port", 6379, 1, 65535, &st->port) < 0) return -1;
    if (get_string(cx, o, "/store", "prefix", "modelmux", &prefix) < 0) return -1;
    size_t pn = strlen(prefix);
    int ok = pn >= 1 && pn < sizeof(st->prefix);
    for (size_t i = 0; ok && i < pn; i++) ok = host_char(prefix[i]) || prefix[i] == ':';
    if (!ok)
        return type_error(cx, "/store/prefix", json_object_get(o, "prefix"),
                          "1-127 characters of [A-Za-z0-9_.:-]");
    snprintf(st->prefix, sizeof(st->prefix), "%s", prefix);
    if (get_int_field(cx, o, "/store", "sync_ms", 100, 1, 60000, &st->sync_ms) < 0) return -1;
    if (get_int_field(cx, o, "/store", "db", 0, 0, INT_MAX, &st->db) < 0) return -1;
    if (parse_sentinel(cx, o, st) < 0) return -1;
    return parse_auth(cx, o, "/store", st->username, sizeof(st->username), st->password,
                      sizeof(st->password));
}

static int parse_log(cx_t *cx)
{
    static const char *const keys[] = {"requests", "sample", "bodies", NULL};
    config_t *c = cx->c;
    c->log_sample = 1.0;
    int rc;
    const json_t *o = get_object(cx, cx->root, "", "log", &rc);
    if (o == NULL) return rc;
    if (check_keys(cx, o, "/log", keys, NULL) < 0) return -1;
    const json_t *req = json_object_get(o, "requests");
    if (req != NULL && !json_is_null(req)) {
        const char *path = json_string_value(req);
        if (path == NULL || *path == '\0')
            return type_error(cx, "/log/requests", req, "a file path or null");
        if ((c->log_requests = dup_or_oom(cx, path, "/log/requests")) == NULL) return -1;
    }
    if (get_number(cx, o, "/log", "sample", 1.0, 0.0, 1.0, 0, &c->log_sample) < 0) return -1;
    return get_bool(cx, o, "/log", "bodies", 0, &c->log_bodies);
}

static int parse_limits(cx_t *cx)
{
    static const char *const keys[] = {"max_connections",
                                       "max_header_bytes",
                                       "max_body_bytes",
                                       "header_timeout_ms",
                                       "idle_timeout_ms",
                                       "drain_timeout_ms",
                                       NULL};
    config_t *c = cx->c;
    int rc;
    const json_t *o = get_object(cx, cx->root, "", "limits", &rc);
    if (rc < 0) return -1;
    if (o != NULL && check_keys(cx, o, "/limits", keys, NULL) < 0) return -1;
    long long body;
    if (get_int_field(cx, o, "/limits", "max_connections", 10000, 1, 1000000,
                      &c->limits.max_connections) < 0 ||
        get_int_field(cx, o, "/limits", "max_header_bytes", 16384, 1024, 1048576,
                      &c->limits.max_header_bytes) < 0 ||
        get_int(cx, o, "/limits", "max_body_bytes", 10485760, 1, 1LL << 40, &body) < 0 ||
        get_int_field(cx, o, "/limits", "header_timeout_ms", 10000, 1, TIMEOUT_MAX_MS,
                      &c->limits.header_timeout_ms) < 0 ||
        get_int_field(cx, o, "/limits", "idle_timeout_ms", 60000, 1, TIMEOUT_MAX_MS,
                      &c->limits.idle_timeout_ms) < 0 ||
        get_int_field(cx, o, "/limits", "drain_timeout_ms", 10000, 1, TIMEOUT_MAX_MS,
                      &c->limits.drain_timeout_ms) < 0)
        return -1;
    c->limits.max_body_bytes = (uint64_t)body;
    return 0;
}

static int parse_upstream(cx_t *cx, const char *name, const json_t *o, cfg_upstream_t *u)
{
    static const char *const keys[] = {
        "url", "pool", "connect_timeout_ms", "timeout_ms", "eject", "resolve_ms", NULL};
    static const char *const eject_keys[] = {"consecutive_5xx", "base_ms", NULL};
    char p[PTR_MAX], ep[PTR_MAX], d[DOTTED_MAX], g[300];
    child_ptr("/upstreams", name, p, sizeof(p));
    if (!mm_valid_name(name, strlen(name)))
        return cerr(cx, p, 1, "%s: bad upstream name; names are 1-64 characters of [A-Za-z0-9_.-]",
                    dotted(cx, p, d, sizeof(d)));
    snprintf(u->name, sizeof(u->name), "%s", name);
    u->name_len = strlen(u->name);
    if (require_object(cx, o, p) < 0) return -1;
    if (check_keys(cx, o, p, keys, NULL) < 0) return -1;
    const char *url, *why;
    if (get_string(cx, o, p, "url", NULL, &url) < 0) return -1;
    if (url == NULL) return missing(cx, p, "url");
    if (parse_url(url, u, &why) < 0) {
        child_ptr(p, "url", ep, sizeof(ep));
        return cerr(cx, ep, 0, "%s: bad URL %s: %s", dotted(cx, ep, d, sizeof(d)),
                    config_show_value(json_object_get(o, "url"), g, sizeof(g)), why);
    }
    if (get_int_field(cx, o, p, "pool", 64, 1, 100000, &u->pool) < 0 ||
        get_int_field(cx, o, p, "connect_timeout_ms", 500, 1, TIMEOUT_MAX_MS,
                      &u->connect_timeout_ms) < 0 ||
        get_int_field(cx, o, p, "timeout_ms", 2000, 1, TIMEOUT_MAX_MS, &u->timeout_ms) < 0 ||
        get_int_field(cx, o, p, "resolve_ms", 5000, 0, 86400000, &u->resolve_ms) < 0)
        return -1;
    if (u->resolve_ms > 0 && u->resolve_ms < 100) {
        /* A lookup every few ms would keep a thread-pool thread busy for nothing. */
        child_ptr(p, "resolve_ms", ep, sizeof(ep));
        return cerr(cx, ep, 0, "%s must be 0 (no re-resolution) or at least 100, got %d",
                    dotted(cx, ep, d, sizeof(d)), u->resolve_ms);
    }
    int rc;
    const json_t *ej = get_object(cx, o, p, "eject", &rc);
    if (ej == NULL) return rc; /* absent: ejection off (eject_* stay 0) */
    child_ptr(p, "eject", ep, sizeof(ep));
    if (check_keys(cx, ej, ep, eject_keys, NULL) < 0) return -1;
    if (get_int_field(cx, ej, ep, "consecutive_5xx", 5, 1, 1000, &u->eject_consecutive_5xx) < 0)
        return -1;
    return get_int_field(cx, ej, ep, "base_ms", 30000, 1, 86400000, &u->eject_base_ms);
}

static int parse_upstreams(cx_t *cx)
{
    config_t *c = cx->c;
    const json_t *ups = json_object_get(cx->root, "upstreams");
    if (ups == NULL) return missing(cx, "", "upstreams");
    if (require_object(cx, ups, "/upstreams") < 0) return -1;
    size_t n = json_object_size(ups);
    if (n == 0)
        return cerr(cx, "/upstreams", 0,
                    "upstreams must name at least one upstream, as in "
                    "{\"champion\": {\"url\": \"http://127.0.0.1:7001\"}}");
    c->upstreams = calloc(n, sizeof(*c->upstreams));
    if (c->upstreams == NULL) return cerr(cx, "/upstreams", 0, "out of memory");
    const char *k;
    const json_t *v;
    json_object_foreach((json_t *)ups, k, v)
    {
        if (parse_upstream(cx, k, v, &c->upstreams[c->n_upstreams]) < 0) return -1;
        if (json_object_set_new(cx->up_index, k, json_integer((json_int_t)c->n_upstreams)) < 0)
            return cerr(cx, "/upstreams", 0, "out of memory");
        c->n_upstreams++;
    }
    return 0;
}

/* ---- experiments ---- */

static int parse_match(cx_t *cx, const json_t *exp, const char *base, cfg_experiment_t *e)
{
    static const char *const keys[] = {"path_prefix", "host", "headers", NULL};
    char p[PTR_MAX], hp[PTR_MAX], vp[PTR_MAX], d[DOTTED_MAX];
    int rc;
    const json_t *m = get_object(cx, exp, base, "match", &rc);
    if (m == NULL) return rc < 0 ? -1 : missing(cx, base, "match");
    child_ptr(base, "match", p, sizeof(p));
    if (check_keys(cx, m, p, keys, NULL) < 0) return -1;

    const char *prefix, *host;
    if (get_string(cx, m, p, "path_prefix", NULL, &prefix) < 0) return -1;
    if (prefix == NULL) return missing(cx, p, "path_prefix");
    child_ptr(p, "path_prefix", vp, sizeof(vp));
    if (prefix[0] != '/' || !is_visible(prefix))
        return type_error(cx, vp, json_object_get(m, "path_prefix"),
                          "a path starting with '/' (visible ASCII characters only: no spaces, "
                          "control or non-ASCII characters)");
    if ((e->path_prefix = dup_or_oom(cx, prefix, vp)) == NULL) return -1;
    /* Requests are matched on their normalised path (router.c): the prefix
     * is normalised the same way, so "/v1//%72ank" still means /v1/rank. */
    e->path_prefix[http_normalize_path(e->path_prefix, strlen(e->path_prefix))] = '\0';

    if (get_string(cx, m, p, "host", NULL, &host) < 0) return -1;
    if (host != NULL) {
        child_ptr(p, "host", vp, sizeof(vp));
        if (*host == '\0' || !is_visible(host))
            return type_error(cx, vp, json_object_get(m, "host"), "a non-empty host name");
        if ((e->host = dup_or_oom(cx, host, vp)) == NULL) return -1;
    }

    const json_t *hs = get_object(cx, m, p, "headers", &rc);
    if (hs == NULL) return rc;
    child_ptr(p, "headers", hp, sizeof(hp));
    size_t n = json_object_size(hs);
    if (n == 0) return 0;
    e->headers = calloc(n, sizeof(*e->headers));
    if (e->headers == NULL) return cerr(cx, hp, 0, "out of memory");
    const char *k;
    const json_t *v;
    json_object_foreach((json_t *)hs, k, v)
    {
        cfg_header_match_t *h = &e->headers[e->n_headers];
        child_ptr(hp, k, vp, sizeof(vp));
        if (!is_token(k) || strlen(k) >= sizeof(h->name))
            return cerr(cx, vp, 1, "%s: bad header name; expected 1-127 token characters",
                        dotted(cx, vp, d, sizeof(d)));
        const char *val = json_string_value(v);
        if (val == NULL) return type_error(cx, vp, v, "a string (the header value to match)");
        if (strpbrk(val, "\r\n") != NULL)
            return cerr(cx, vp, 0, "%s: a header value holds no CR or LF",
                        dotted(cx, vp, d, sizeof(d)));
        if (copy_field(cx, h->value, sizeof(h->value), val, vp) < 0) return -1;
        /* spaces and tabs around it go: a request's value is compared without them */
        mm_str_t t = http_trim((mm_str_t){h->value, strlen(h->value)});
        memmove(h->value, t.p, t.n);
        h->value[t.n] = '\0';
        snprintf(h->name, sizeof(h->name), "%s", k);
        e->n_headers++;
    }
    return 0;
}

/* "ab, canary" from what the registry has, for an unknown-policy hint. */
static void known_policies(char *out, size_t n)
{
    size_t len = 0;
    out[0] = '\0';
    for (const char *const *p = design_policies; *p; p++) {
        if (policy_find(*p) == NULL) continue;
        cat(out, n, &len, len ? ", " : "");
        cat(out, n, &len, *p);
    }
    if (len == 0) cat(out, n, &len, "none are registered");
}

/* The definition compares numbers by value, as the config reads them:
 * 90, 90.0 and 9e1 are one weight (jansson keeps 90 an integer and the
 * others reals, so their dumps differ), and writing a number another way
 * must not count as a redefinition that wipes the operator's changes. An
 * integral real in int64's range becomes that integer, exactly. */
static json_t *integral_real_as_integer(const json_t *m)
{
    double x = json_is_real(m) ? json_real_value(m) : 0.5;
    return x == floor(x) && x >= -0x1p63 && x < 0x1p63 ? json_integer((json_int_t)x) : NULL;
}

static void integral_reals_as_integers(json_t *v)
{
    json_t *m, *n;
    if (json_is_object(v)) {
        const char *k;
        json_object_foreach(v, k, m)
        {
            if ((n = integral_real_as_integer(m)) != NULL)
                json_object_set_new(v, k, n); /* replaces in place: the walk goes on */
            else
                integral_reals_as_integers(m);
        }
    } else if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++) {
            if ((n = integral_real_as_integer(m = json_array_get(v, i))) != NULL)
                json_array_set_new(v, i, n);
            else
                integral_reals_as_integers(m);
        }
    }
}

static int parse_experiment(cx_t *cx, size_t i, const json_t *exp)
{
    config_t *c = cx->c;
    cfg_experiment_t *e = &c->experiments[i];
    policy_parse_t pp = {.cx = cx, .e = e};
    char *base = pp.base, vp[PTR_MAX], d[DOTTED_MAX], g[300];
    snprintf(pp.base, sizeof(pp.base), "/experiments/%zu", i);
    if (require_object(cx, exp, base) < 0) return -1;

    const char *name, *policy;
    if (get_string(cx, exp, base, "name", NULL, &name) < 0) return -1;
    if (name == NULL) return missing(cx, base, "name");
    child_ptr(base, "name", vp, sizeof(vp));
    if (!mm_valid_name(name, strlen(name)))
        return type_error(cx, vp, json_object_get(exp, "name"),
                          "a name of 1-64 characters of [A-Za-z0-9_.-]");
    const json_t *seen = json_object_get(cx->exp_index, name);
    if (seen != NULL)
        return cerr(
            cx, vp, 0,
            "%s: experiment name \"%s\" is already used by experiments[%" JSON_INTEGER_FORMAT "]",
            dotted(cx, vp, d, sizeof(d)), name, json_integer_value(seen));
    if (json_object_set_new(cx->exp_index, name, json_integer((json_int_t)i)) < 0)
        return cerr(cx, base, 0, "out of memory");
    snprintf(e->name, sizeof(e->name), "%s", name);
    e->name_len = strlen(e->name);
    snprintf(e->salt, sizeof(e->salt), "%s", name);

    if (parse_match(cx, exp, base, e) < 0) return -1;
    if (get_int_field(cx, exp, base, "feedback_ttl_s", 3600, 1, 2592000, &e->feedback_ttl_s) < 0)
        return -1;

    if (get_string(cx, exp, base, "policy", NULL, &policy) < 0) return -1;
    if (policy == NULL) return missing(cx, base, "policy");
    child_ptr(base, "policy", vp, sizeof(vp));
    e->ops = policy_find(policy);
    if (e->ops == NULL) {
        char known[256];
        known_policies(known, sizeof(known));
        return cerr(cx, vp, 0, "%s: unknown policy %s (known: %s)", dotted(cx, vp, d, sizeof(d)),
                    config_show_value(json_object_get(exp, "policy"), g, sizeof(g)), known);
    }

    e->policy = e->ops->create(exp, &pp);
    if (cx->failed) return -1; /* config_free destroys an instance it returned anyway */
    if (e->policy == NULL)
        return cerr(cx, base, 0, "%s: policy \"%s\" rejected the experiment",
                    dotted(cx, base, d, sizeof(d)), policy);
    if (e->n_arms == 0)
        return cerr(cx, base, 0, "%s declares no arms; an experiment needs at least one",
                    dotted(cx, base, d, sizeof(d)));
    json_t *canon = json_deep_copy(exp);
    if (canon != NULL) {
        integral_reals_as_integers(canon);
        e->definition = json_dumps(canon, JSON_COMPACT | JSON_SORT_KEYS);
        json_decref(canon);
    }
    if (e->definition == NULL) return cerr(cx, base, 0, "out of memory");
    return 0;
}

static int parse_experiments(cx_t *cx)
{
    config_t *c = cx->c;
    const json_t *exps = json_object_get(cx->root, "experiments");
    if (exps == NULL) return missing(cx, "", "experiments");
    if (!json_is_array(exps)) return type_error(cx, "/experiments", exps, "an array");
    size_t n = json_array_size(exps);
    if (n == 0) return 0;
    c->experiments = calloc(n, sizeof(*c->experiments));
    if (c->experiments == NULL) return cerr(cx, "/experiments", 0, "out of memory");
    c->n_experiments = n; /* zeroed entries are safe to free */
    for (size_t i = 0; i < n; i++)
        if (parse_experiment(cx, i, json_array_get(exps, i)) < 0) return -1;
    return 0;
}

/* ---- public API ---- */

/* jansson's message, where it would mislead, said plainly. It takes a NUL
 * byte for the end of the text: most often it then says "end of file
 * expected near end of file", and right after a number it even accepts the
 * text (je NULL here), so a NUL is reported itself, where it is, whenever
 * jansson got as far as it. A byte order mark shows as an invisible "near
 * ''", and a \u0000 escape gets a message naming jansson's own flag. */
static void syntax_error(cx_t *cx, const char *text, size_t len, const json_error_t *je)
{
    int line = 1, col = 1;
    char named[2200];
    const char *msg = "a NUL byte (0x00) is not allowed in a JSON text";
    const char *nul = memchr(text, '\0', len);
    if (nul != NULL && (je == NULL || (size_t)je->position >= (size_t)(nul - text))) {
        jsonpos_at(text, len, (size_t)(nul - text), &line, &col);
    } else if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0) {
        msg = "the file starts with a UTF-8 byte order mark (BOM); save it as UTF-8 without one";
    } else if (strncmp(je->text, "too big", 7) == 0) {
        /* jansson's "too big (negative) integer", beyond int64, at the
         * number's last digit: pointed at its first, as for other values */
        size_t at = (size_t)je->position < len ? (size_t)je->position : len;
        while (at > 0 && (isdigit((unsigned char)text[at - 1]) || text[at - 1] == '-')) at--;
        jsonpos_at(text, len, at, &line, &col);
        msg = "integer out of range (beyond +-9223372036854775807); no setting takes one that "
              "large";
        /* Which setting: read as reals the text parses (if nothing else is
         * wrong with it), and the value that starts there has a name. */
        cx->root = json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_DECODE_INT_AS_REAL, NULL);
        jsonpos_t *jp = cx->root ? jsonpos_build(text, len) : NULL;
        char ptr[1024], d[1024];
        if (jp && jsonpos_pointer_at(jp, line, col, ptr, sizeof(ptr)) == 0 && ptr[0]) {
            snprintf(named, sizeof(named), "%s: %s", dotted(cx, ptr, d, sizeof(d)), msg);
            msg = named;
        }
        jsonpos_free(jp);
        json_decref(cx->root);
        cx->root = NULL;
    } else {
        jsonpos_error_at(text, len, je, &line, &col);
        msg = strstr(je->text, "JSON_ALLOW_NUL") ? "\\u0000 (NUL) is not allowed in a string"
                                                 : je->text;
    }
    put_error(cx, line, col, msg);
}

/* Every request experiment b matches, a matches too (router_match's
 * rules; conservative: a host is compared as written, without the port
 * forms host_matches allows). */
static int match_covers(const cfg_experiment_t *a, const cfg_experiment_t *b)
{
    if (strncmp(a->path_prefix, b->path_prefix, strlen(a->path_prefix)) != 0) return 0;
    if (a->host && (b->host == NULL || strcasecmp(a->host, b->host) != 0)) return 0;
    for (size_t i = 0; i < a->n_headers; i++) {
        size_t k = 0;
        while (k < b->n_headers && (strcasecmp(a->headers[i].name, b->headers[k].name) != 0 ||
                                    strcmp(a->headers[i].value, b->headers[k].value) != 0))
            k++;
        if (k == b->n_headers) return 0;
    }
    return 1;
}

int config_unreachable(const config_t *c, size_t j, char *out, size_t n)
{
    for (size_t i = 0; i < j && j < c->n_experiments; i++) {
        if (!match_covers(&c->experiments[i], &c->experiments[j])) continue;
        snprintf(out, n,
                 "warning: experiment \"%s\" can never be chosen: experiment \"%s\", listed "
                 "before it, matches every request it would (the first match wins)",
                 c->experiments[j].name, c->experiments[i].name);
        return 1;
    }
    return 0;
}

void config_log_warnings(const config_t *c)
{
    char why[512];
    for (size_t j = 0; j < c->n_experiments; j++)
        if (config_unreachable(c, j, why, sizeof(why))) mm_log("%s", why);
}

config_t *config_parse(const char *text, size_t len, const char *name, char *err, size_t errlen)
{
    static const char *const top_keys[] = {"listen", "admin",     "store",       "log",
                                           "limits", "upstreams", "experiments", NULL};
    cx_t cx = {.name = name ? name : "<config>", .err = err, .errlen = errlen};
    config_priv_t *cp = NULL;
    json_error_t je;
    if (errlen > 0) err[0] = '\0';

    cx.root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (cx.root == NULL || memchr(text, '\0', len) != NULL) {
        if (errlen > 0) syntax_error(&cx, text, len, cx.root ? NULL : &je);
        json_decref(cx.root);
        return NULL;
    }
    cp = calloc(1, sizeof(*cp));
    if (cp == NULL) {
        json_decref(cx.root);
        cerr(&cx, "", 0, "out of memory");
        return NULL;
    }
    cp->root = cx.root; /* from here on config_free releases it */
    cx.c = &cp->c;
    cx.pos = jsonpos_build(text, len);
    cx.up_index = cp->up_index = json_object();
    cx.exp_index = cp->exp_index = json_object();
    if (cx.pos == NULL || cx.up_index == NULL || cx.exp_index == NULL) {
        cerr(&cx, "", 0, "out of memory");
        goto err;
    }
    if ((cx.c->path = dup_or_oom(&cx, cx.name, "")) == NULL) goto err;
    if (!json_is_object(cx.root)) {
        type_error(&cx, "", cx.root, "an object");
        goto err;
    }
    if (check_keys(&cx, cx.root, "", top_keys, NULL) < 0) goto err;
    if (get_addr(&cx, cx.root, "", "listen", "127.0.0.1:8080", &cx.c->listen) < 0) goto err;
    if (parse_admin(&cx) < 0 || parse_store(&cx) < 0 || parse_log(&cx) < 0 ||
        parse_limits(&cx) < 0 || parse_upstreams(&cx) < 0 || parse_experiments(&cx) < 0)
        goto err;
    jsonpos_free(cx.pos);
    return cx.c;
err:
    jsonpos_free(cx.pos);
    config_free(cx.c);
    return NULL;
}

config_t *config_load(const char *path, char *err, size_t errlen)
{
    return config_load_text(path, NULL, NULL, err, errlen);
}

config_t *config_load_text(const char *path, char **text, size_t *text_len, char *err,
                           size_t errlen)
{
    config_t *c = NULL;
    char *buf = NULL;
    size_t len = 0, cap = 0;
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    for (;;) {
        if (len == cap) {
            /* The buffer grows to one byte past the limit, so a file of
             * exactly CONFIG_FILE_MAX bytes is read whole and accepted. */
            if (cap > CONFIG_FILE_MAX) {
                snprintf(err, errlen, "%s: larger than %u MiB: not a config file", path,
                         CONFIG_FILE_MAX >> 20);
                goto err;
            }
            cap = cap ? cap * 2 : 8192;
            if (cap > CONFIG_FILE_MAX) cap = CONFIG_FILE_MAX + 1;
            char *nb = realloc(buf, cap);
            if (nb == NULL) {
                snprintf(err, errlen, "%s: out of memory", path);
                goto err;
            }
            buf = nb;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0) break;
    }
    if (ferror(f)) {
        snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
        goto err;
    }
    c = config_parse(buf ? buf : "", len, path, err, errlen);
    if (c && text) {
        *text = buf;
        *text_len = len;
        buf = NULL;
    }
err:
    fclose(f);
    free(buf);
    return c;
}

int config_error_at(const config_t *c, const char *text, size_t len, const char *ptr, char *err,
                    size_t errlen, const char *fmt, ...)
{
    /* The parse's context again, for its messages: the tree is the config's
     * own, the position index is built anew (this runs once, on an error). */
    config_priv_t *cp = container_of(c, config_priv_t, c);
    cx_t cx = {.name = c->path, .root = cp->root, .err = err, .errlen = errlen};
    char name[DOTTED_MAX], msg[1536];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    cx.pos = jsonpos_build(text ? text : "", text ? len : 0);
    cerr(&cx, ptr, 0, "%s: %s", dotted(&cx, ptr, name, sizeof(name)), msg);
    jsonpos_free(cx.pos);
    return -1;
}

void config_free(config_t *c)
{
    if (c == NULL) return;
    config_priv_t *cp = container_of(c, config_priv_t, c);
    for (size_t i = 0; i < c->n_experiments; i++) {
        cfg_experiment_t *e = &c->experiments[i];
        if (e->ops != NULL && e->policy != NULL && e->ops->destroy != NULL)
            e->ops->destroy(e->policy);
        free(e->path_prefix);
        free(e->host);
        free(e->headers);
        free(e->definition);
    }
    free(c->experiments);
    free(c->upstreams);
    free(c->admin_token);
    free(c->log_requests);
    free(c->path);
    json_decref(cp->root);
    json_decref(cp->up_index);
    json_decref(cp->exp_index);
    free(cp);
}

static int index_of(const json_t *index, const char *name)
{
    const json_t *i = json_object_get(index, name);
    return i ? (int)json_integer_value(i) : -1;
}

int config_upstream_index(const config_t *c, const char *name)
{
    return index_of(container_of(c, config_priv_t, c)->up_index, name);
}

int config_experiment_index(const config_t *c, const char *name)
{
    return index_of(container_of(c, config_priv_t, c)->exp_index, name);
}

/* ---- parse-time services for policies (policies/policy.h) ---- */

/* The absolute pointer of a path relative to the experiment object. */
static void exp_ptr(const policy_parse_t *pp, const char *path, char *out, size_t n)
{
    /* a policy's path may hold a key of any length: shortened as jsonpos
     * records it, the pointer fits and is found */
    int b = snprintf(out, n, "%s", pp->base);
    if (b >= 0 && (size_t)b < n) jsonpos_canon(path ? path : "", out + b, n - (size_t)b);
}

/* The policy's message gets the value's position and dotted path in front,
 * so it reads like the core's own: "experiments[0].arms: ...". */
int policy_error(policy_parse_t *pp, const char *path, const char *fmt, ...)
{
    char p[PTR_MAX], d[DOTTED_MAX], msg[512];
    exp_ptr(pp, path, p, sizeof(p));
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return cerr(pp->cx, p, 0, "%s: %s", dotted(pp->cx, p, d, sizeof(d)), msg);
}

int policy_add_arm(policy_parse_t *pp, const char *name, const char *path)
{
    cx_t *cx = pp->cx;
    cfg_experiment_t *e = pp->e;
    char p[PTR_MAX], d[DOTTED_MAX];
    exp_ptr(pp, path, p, sizeof(p));
    const json_t *ix = name ? json_object_get(cx->up_index, name) : NULL;
    int up = ix ? (int)json_integer_value(ix) : -1;
    /* Point at the name: the key in {"arm": weight}, else the value. */
    const char *last = strrchr(p, '/');
    char named[PTR_MAX] = ""; /* "/" and the name as a pointer segment */
    int at_key = name != NULL && last != NULL && jsonpos_append(named, sizeof(named), name) == 0 &&
                 strcmp(last, named) == 0;
    if (up < 0) {
        char known[512];
        size_t len = 0;
        known[0] = '\0';
        for (size_t i = 0; i < cx->c->n_upstreams; i++) {
            if (len + MM_NAME_MAX + 8 > sizeof(known)) { /* whole names, then ", ..." */
                cat(known, sizeof(known), &len, ", ...");
                break;
            }
            cat(known, sizeof(known), &len, i ? ", " : "");
            cat(known, sizeof(known), &len, cx->c->upstreams[i].name);
        }
        return cerr(cx, p, at_key, "%s: unknown upstream \"%s\" (upstreams: %s)",
                    dotted(cx, p, d, sizeof(d)), name ? name : "", known);
    }
    for (size_t i = 0; i < e->n_arms; i++)
        if (e->arms[i] == up)
            return cerr(cx, p, at_key, "%s: arm \"%s\" is listed twice",
                        dotted(cx, p, d, sizeof(d)), name);
    if (e->n_arms >= MM_MAX_ARMS)
        return cerr(cx, p, 0, "%s: too many arms (at most %d)", dotted(cx, p, d, sizeof(d)),
                    MM_MAX_ARMS);
    e->arms[e->n_arms] = up;
    return (int)e->n_arms++;
}

int policy_arm_count(const policy_parse_t *pp)
{
    return (int)pp->e->n_arms;
}

int policy_check_keys(policy_parse_t *pp, const json_t *obj, const char *path,
                      const char *const *allowed)
{
    char p[PTR_MAX];
    exp_ptr(pp, path, p, sizeof(p));
    if (require_object(pp->cx, obj, p) < 0) return -1;
    int root = path == NULL || path[0] == '\0';
    return check_keys(pp->cx, obj, p, allowed, root ? core_exp_keys : NULL);
}

/* obj may be NULL (an optional sub-object that is absent): every key is then
 * absent and gets its default. */
static int policy_obj(policy_parse_t *pp, const json_t *obj, const char *path, char *p, size_t n)
{
    exp_ptr(pp, path, p, n);
    if (obj == NULL) return 0;
    return require_object(pp->cx, obj, p);
}

int policy_get_number(policy_parse_t *pp, const json_t *obj, const char *path, const char *key,
                      double def, double lo, double hi, double *out)
{
    return policy_get_number_in(pp, obj, path, key, def, lo, hi, 0, out);
}

int policy_get_number_in(policy_parse_t *pp, const json_t *obj, const char *path, const char *key,
                         double def, double lo, double hi, int open, double *out)
{
    char p[PTR_MAX];
    if (policy_obj(pp, obj, path, p, sizeof(p)) < 0) return -1;
    return get_number(pp->cx, obj, p, key, def, lo, hi, open, out);
}

int policy_get_int(policy_parse_t *pp, const json_t *obj, const char *path, const char *key,
                   long long def, long long lo, long long hi, long long *out)
{
    char p[PTR_MAX];
    if (policy_obj(pp, obj, path, p, sizeof(p)) < 0) return -1;
    return get_int(pp->cx, obj, p, key, def, lo, hi, out);
}

int policy_get_string(policy_parse_t *pp, const json_t *obj, const char *path, const char *key,
                      const char *def, const char **out)
{
    char p[PTR_MAX];
    if (policy_obj(pp, obj, path, p, sizeof(p)) < 0) return -1;
    return get_string(pp->cx, obj, p, key, def, out);
}

int policy_set_sticky(policy_parse_t *pp, const json_t *sticky, const char *path, const char *salt)
{
    static const char *const keys[] = {"header", "cookie", "query", NULL};
    cx_t *cx = pp->cx;
    cfg_experiment_t *e = pp->e;
    char p[PTR_MAX], vp[PTR_MAX], d[DOTTED_MAX];
    if (salt != NULL) {
        exp_ptr(pp, "/salt", p, sizeof(p));
        if (copy_field(cx, e->salt, sizeof(e->salt), salt, p) < 0) return -1;
    }
    if (sticky == NULL) return 0;
    exp_ptr(pp, path, p, sizeof(p));
    if (require_object(cx, sticky, p) < 0) return -1;
    if (check_keys(cx, sticky, p, keys, NULL) < 0) return -1;
    if (json_object_size(sticky) != 1)
        return cerr(cx, p, 0,
                    "%s must have exactly one of \"header\", \"cookie\" or \"query\", as in "
                    "{\"header\": \"X-User-Id\"}",
                    dotted(cx, p, d, sizeof(d)));
    const char *kind = json_object_iter_key(json_object_iter((json_t *)sticky));
    const json_t *v = json_object_get(sticky, kind);
    const char *s = json_string_value(v);
    child_ptr(p, kind, vp, sizeof(vp));
    int query = strcmp(kind, "query") == 0;
    int ok = s != NULL && strlen(s) < sizeof(e->sticky_name) &&
             (query ? *s != '\0' && is_visible(s) && !strpbrk(s, "&=#") : is_token(s));
    if (!ok)
        return type_error(cx, vp, v,
                          query ? "a query parameter name (1-127 visible characters, no & = #)"
                                : "a header or cookie name (1-127 token characters)");
    e->sticky_kind = query                         ? STICKY_QUERY
                     : strcmp(kind, "cookie") == 0 ? STICKY_COOKIE
                                                   : STICKY_HEADER;
    snprintf(e->sticky_name, sizeof(e->sticky_name), "%s", s);
    return 0;
}

void policy_set_mirror_limits(policy_parse_t *pp, const policy_mirror_limits_t *lim)
{
    pp->e->mirror = *lim;
}

const char *policy_experiment_name(const policy_parse_t *pp)
{
    return pp->e->name;
}
