/* config.h — the validated configuration (DESIGN.md §3).
 *
 * config_load() reads the JSON file with jansson and checks every key; a
 * separate position index (jsonpos.c) maps JSON pointers back to line and
 * column, because jansson keeps positions only for syntax errors and users
 * need FILE:LINE:COL for semantic ones too. A config_t is immutable once
 * built: a reload builds a new one and swaps it in. */
#ifndef MM_CONFIG_H
#define MM_CONFIG_H

#include <jansson.h>
#include <stdint.h>

#include "common.h"
#include "../policies/policy.h"

typedef struct {
    char host[256]; /* numeric address or name, resolved at startup */
    int port;
} cfg_addr_t;

typedef struct {
    char name[MM_NAME_MAX + 1];
    char url[512];
    cfg_addr_t addr;
    char base_path[256];   /* path part of the url without trailing '/', may be "" */
    char host_header[300]; /* "host:port" as sent in Host: */
    /* strlen of name, base_path, host_header: heads are built per request */
    size_t name_len, base_path_len, host_header_len;
    int pool;                  /* max connections (idle + busy), default 64 */
    int connect_timeout_ms;    /* default 500 */
    int timeout_ms;            /* response timeout, default 2000 */
    int eject_consecutive_5xx; /* 0: outlier ejection off */
    int eject_base_ms;
    int resolve_ms; /* a host name is looked up again this often; 0: only at start/reload */
} cfg_upstream_t;

typedef enum { STICKY_NONE = 0, STICKY_HEADER, STICKY_COOKIE, STICKY_QUERY } cfg_sticky_kind_t;

typedef struct {
    char name[128];
    char value[512];
} cfg_header_match_t;

typedef struct {
    char name[MM_NAME_MAX + 1];
    size_t name_len;
    /* match */
    char *path_prefix;
    char *host; /* NULL: any */
    cfg_header_match_t *headers;
    size_t n_headers;
    /* policy */
    const policy_ops_t *ops;
    void *policy; /* instance made by ops->create */
    size_t n_arms;
    int arms[MM_MAX_ARMS]; /* upstream index per arm; arm 0 is the champion */
    cfg_sticky_kind_t sticky_kind;
    char sticky_name[128];
    char salt[256];
    policy_mirror_limits_t mirror;
    int feedback_ttl_s; /* default 3600 */
    char *definition;   /* canonical JSON of the experiment object: a reload that
                           changes it resets the experiment's control state */
} cfg_experiment_t;

typedef enum { STORE_MEMORY = 0, STORE_REDIS } cfg_store_type_t;

#define MM_MAX_SENTINELS 8

typedef struct {
    cfg_store_type_t type;
    char host[256];
    int port;         /* default 6379 */
    char prefix[128]; /* default "modelmux" */
    int sync_ms;      /* default 100 */
    /* Sent as AUTH [username] password before anything else when password
     * is non-empty (from "password" or the variable "password_env" names),
     * then SELECT db when db != 0. Fixed arrays: the struct is copied. */
    char username[256];
    char password[512];
    int db; /* default 0 */
    /* store.sentinel: the primary is the one these Sentinels name
     * sentinel_master (sentinel.h); host and port are then unused. */
    char sentinel_master[MM_NAME_MAX + 1];
    cfg_addr_t sentinels[MM_MAX_SENTINELS];
    int n_sentinels;             /* 0: no Sentinel, host and port are the primary */
    char sentinel_username[256]; /* AUTH to the Sentinels when sentinel_password is set */
    char sentinel_password[512];
} cfg_store_t;

typedef struct {
    char *path; /* the file it came from */
    cfg_addr_t listen;
    cfg_addr_t admin_listen;
    int has_admin;
    char *admin_token; /* NULL: no auth */
    cfg_store_t store;
    char *log_requests; /* NULL: no request log */
    double log_sample;  /* [0, 1], default 1 */
    int log_bodies;
    struct {
        int max_connections;
        int max_header_bytes;
        uint64_t max_body_bytes;
        int header_timeout_ms;
        int idle_timeout_ms;
        int drain_timeout_ms;
    } limits;
    cfg_upstream_t *upstreams;
    size_t n_upstreams;
    cfg_experiment_t *experiments;
    size_t n_experiments;
} config_t;

/* Load and validate. On failure returns NULL and writes "FILE:LINE:COL: message". */
config_t *config_load(const char *path, char *err, size_t errlen);
/* config_load, also handing over the file's text (*text, *text_len; the
 * caller frees *text, which may be NULL for an empty file) when it loads,
 * for a caller that passes the very config on (keep.h). At most 16 MiB. */
config_t *config_load_text(const char *path, char **text, size_t *text_len, char *err,
                           size_t errlen);
/* The same from memory; `name` stands for the file in messages. */
config_t *config_parse(const char *text, size_t len, const char *name, char *err, size_t errlen);
void config_free(config_t *c);

/* Experiment j can never be chosen: an earlier one (the first match wins)
 * matches every request it would. Then 1, and the warning that says so, in
 * out (n bytes); else 0. Not an error: a config that lists a catch-all
 * before a narrower experiment is valid, only not what was meant. */
int config_unreachable(const config_t *c, size_t j, char *out, size_t n);
/* Log every such warning (mm_log): at the start and at each reload. */
void config_log_warnings(const config_t *c);
/* An error found in c after it was parsed (--check's lookups, main.c), about
 * the value at JSON pointer `ptr` ("/upstreams/champion/url") of the text c
 * was parsed from (text, len: config_load_text's), written as the parse's
 * errors are: "FILE:LINE:COL: upstreams.champion.url: MESSAGE". Returns -1. */
int config_error_at(const config_t *c, const char *text, size_t len, const char *ptr, char *err,
                    size_t errlen, const char *fmt, ...) MM_PRINTF(7, 8);

/* A JSON value as an error's "got ..." shows it: -5, "abc" (cut after 44
 * bytes), true, null, an object, an array; "nothing" for NULL. Returns out
 * (64 bytes are room enough). The config's messages and the API's. */
const char *config_show_value(const json_t *v, char *out, size_t n);

/* Upstream index by name, or -1. Both are hash lookups (O(1)). */
int config_upstream_index(const config_t *c, const char *name);
/* Experiment index by name, or -1. */
int config_experiment_index(const config_t *c, const char *name);

/* Parse "host:port" / "[v6]:port" into a. Returns 0 or -1. */
int config_parse_addr(const char *s, cfg_addr_t *a);
/* "host:port", or "[v6]:port" for an IPv6 host, into buf; returns buf. */
const char *cfg_addr_str(const cfg_addr_t *a, char *buf, size_t n);

#endif
