/* test_metrics.c — GET /metrics as Prometheus reads it.
 *
 * A real router (config, memory store, pools that never connect) with
 * counters filled by hand is rendered, then (1) checked line by line with a
 * small exposition-format checker written here (names, labels and escapes,
 * values, HELP/TYPE before samples, families contiguous, no duplicate
 * series, histogram buckets cumulative and ending at +Inf = _count), and
 * (2) searched for the exact lines the counters imply. The effective-share
 * rule (metrics_arm_shares) and the latency quantiles behind the admin
 * API's p50/p99 are tested on the same fixture. */
#include <ctype.h>
#include <inttypes.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lathist.h"
#include "metrics_render.h"
#include "server.h"

static const char CONFIG[] =
    "{\"listen\": \"127.0.0.1:18080\",\n"
    " \"upstreams\": {\"a\": {\"url\": \"http://127.0.0.1:17001\"},\n"
    "               \"b\": {\"url\": \"http://127.0.0.1:17002\"},\n"
    "               \"c\": {\"url\": \"http://127.0.0.1:17003\"}},\n"
    " \"experiments\": [\n"
    "  {\"name\": \"rank\", \"match\": {\"path_prefix\": \"/v1/rank\"}, \"policy\": \"ab\",\n"
    "   \"arms\": {\"a\": 90, \"b\": 10}},\n"
    "  {\"name\": \"can\", \"match\": {\"path_prefix\": \"/v1/can\"}, \"policy\": \"canary\",\n"
    "   \"champion\": \"a\", \"canary\": \"b\", \"steps\": [5, 25, 100], \"step_interval_s\": 60,\n"
    "   \"analysis\": {\"min_requests\": 10, \"max_error_rate\": 0.05}},\n"
    "  {\"name\": \"bandit\", \"match\": {\"path_prefix\": \"/v1/ucb\"}, \"policy\": \"ucb1\",\n"
    "   \"arms\": [\"a\", \"c\"]},\n"
    "  {\"name\": \"sh\", \"match\": {\"path_prefix\": \"/v1/sh\"}, \"policy\": \"shadow\",\n"
    "   \"primary\": \"a\", \"shadows\": [\"b\"]}\n"
    " ]}\n";

typedef struct {
    uv_loop_t loop;
    mm_server_t srv;
    mm_buf_t out;
} fx_t;

/* No canary, no shadow: families of DESIGN.md §7 must be there all the same. */
static const char CONFIG_AB_ONLY[] =
    "{\"listen\": \"127.0.0.1:18080\",\n"
    " \"upstreams\": {\"a\": {\"url\": \"http://127.0.0.1:17001\"},\n"
    "               \"b\": {\"url\": \"http://127.0.0.1:17002\"}},\n"
    " \"experiments\": [\n"
    "  {\"name\": \"rank\", \"match\": {\"path_prefix\": \"/v1/rank\"}, \"policy\": \"ab\",\n"
    "   \"arms\": {\"a\": 90, \"b\": 10}}\n"
    " ]}\n";

static int setup_with(void **state, const char *config)
{
    fx_t *f = calloc(1, sizeof(*f));
    char err[512];
    uv_loop_init(&f->loop);
    mm_server_t *s = &f->srv;
    s->loop = &f->loop;
    metrics_init(&s->metrics);
    cfg_store_t sc = {.type = STORE_MEMORY};
    s->store = store_create(&f->loop, &sc, err, sizeof(err));
    config_t *cfg = config_parse(config, strlen(config), "t.json", err, sizeof(err));
    if (s->store == NULL || cfg == NULL) {
        print_error("setup: %s\n", err);
        return -1;
    }
    s->router = router_create(&f->loop, cfg, NULL, s->store, &s->metrics, NULL, err, sizeof(err));
    if (s->router == NULL) {
        print_error("router: %s\n", err);
        return -1;
    }
    mm_buf_init(&f->out);
    *state = f;
    return 0;
}

static int setup(void **state)
{
    return setup_with(state, CONFIG);
}

static int setup_ab_only(void **state)
{
    return setup_with(state, CONFIG_AB_ONLY);
}

static int teardown(void **state)
{
    fx_t *f = *state;
    router_unref(f->srv.router);
    store_destroy(f->srv.store);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    metrics_free(&f->srv.metrics);
    mm_buf_free(&f->out);
    free(f);
    return 0;
}

static exp_rt_t *exp_named(fx_t *f, const char *name)
{
    router_t *r = f->srv.router;
    for (size_t i = 0; i < r->n_exps; i++)
        if (strcmp(r->exps[i].cfg->name, name) == 0) return &r->exps[i];
    fail_msg("no experiment %s", name);
    return NULL;
}

static const char *render(fx_t *f)
{
    mm_buf_reset(&f->out);
    metrics_render(&f->srv, &f->out);
    mm_buf_append(&f->out, "", 1); /* NUL for string searches */
    f->out.len--;
    assert_false(f->out.oom);
    return f->out.p;
}

static void assert_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; (p = strstr(p, line)) != NULL; p++)
        if ((p == text || p[-1] == '\n') && p[n] == '\n') return;
    fail_msg("missing line: %s", line);
}

static void assert_no_line_starting(const char *text, const char *prefix)
{
    for (const char *p = text; (p = strstr(p, prefix)) != NULL; p++)
        if (p == text || p[-1] == '\n') fail_msg("unexpected line starting: %s", prefix);
}

/* ---- a small exposition-format (0.0.4) checker ---- */

typedef struct {
    char name[128];
    char type[16];
    int has_help, has_type, has_samples, closed;
} fam_t;

typedef struct {
    fam_t fams[128];
    int n_fams;
    char **series;
    int n_series, cap_series;
    fam_t *current;
    /* histogram state */
    char hkey[512];
    double hlast_le, hlast_v, hinf_v;
    int hseen_inf;
    char err[512];
    int line;
} chk_t;

static int chk_fail(chk_t *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = snprintf(c->err, sizeof(c->err), "line %d: ", c->line);
    vsnprintf(c->err + n, sizeof(c->err) - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

static fam_t *fam_get(chk_t *c, const char *name, size_t n, int create)
{
    for (int i = 0; i < c->n_fams; i++)
        if (strlen(c->fams[i].name) == n && memcmp(c->fams[i].name, name, n) == 0)
            return &c->fams[i];
    if (!create || c->n_fams == 128 || n >= sizeof(c->fams[0].name)) return NULL;
    fam_t *f = &c->fams[c->n_fams++];
    memset(f, 0, sizeof(*f));
    memcpy(f->name, name, n);
    return f;
}

static size_t name_len(const char *p, int colon_ok)
{
    size_t i = 0;
    if (!(isalpha((unsigned char)p[0]) || p[0] == '_' || (colon_ok && p[0] == ':'))) return 0;
    while (isalnum((unsigned char)p[i]) || p[i] == '_' || (colon_ok && p[i] == ':')) i++;
    return i;
}

static int parse_value(const char *s, double *v)
{
    if (strcmp(s, "+Inf") == 0 || strcmp(s, "Inf") == 0) {
        *v = INFINITY;
        return 0;
    }
    if (strcmp(s, "-Inf") == 0) {
        *v = -INFINITY;
        return 0;
    }
    if (strcmp(s, "NaN") == 0) {
        *v = NAN;
        return 0;
    }
    char *end;
    *v = strtod(s, &end);
    return *s && *end == '\0' && !isspace((unsigned char)*s) ? 0 : -1;
}

static int chk_comment(chk_t *c, const char *l)
{
    int help = strncmp(l, "# HELP ", 7) == 0, type = strncmp(l, "# TYPE ", 7) == 0;
    if (!help && !type) return 0; /* other comments are allowed */
    const char *p = l + 7;
    size_t n = name_len(p, 1);
    if (n == 0 || p[n] != ' ') return chk_fail(c, "bad metric name in %s", l);
    fam_t *f = fam_get(c, p, n, 1);
    if (f == NULL) return chk_fail(c, "too many families");
    if (f->has_samples)
        return chk_fail(c, "%s after samples of %s", help ? "HELP" : "TYPE", f->name);
    if (help) {
        if (f->has_help++) return chk_fail(c, "second HELP for %s", f->name);
        for (const char *q = p + n + 1; *q; q++)
            if (*q == '\\' && q[1] != '\\' && q[1] != 'n')
                return chk_fail(c, "bad escape in HELP");
            else if (*q == '\\')
                q++;
        return 0;
    }
    if (f->has_type++) return chk_fail(c, "second TYPE for %s", f->name);
    const char *t = p + n + 1;
    static const char *types[] = {"counter", "gauge", "histogram", "summary", "untyped"};
    for (size_t i = 0; i < 5; i++)
        if (strcmp(t, types[i]) == 0) {
            snprintf(f->type, sizeof(f->type), "%s", t);
            return 0;
        }
    return chk_fail(c, "unknown type %s", t);
}

static int chk_sample(chk_t *c, const char *l)
{
    size_t n = name_len(l, 1);
    if (n == 0) return chk_fail(c, "bad metric name: %s", l);
    char name[128];
    if (n >= sizeof(name)) return chk_fail(c, "name too long");
    memcpy(name, l, n);
    name[n] = '\0';
    /* the family: histogram suffixes belong to their base */
    fam_t *f = fam_get(c, name, n, 0);
    const char *suffix = "";
    static const char *sfx[] = {"_bucket", "_sum", "_count"};
    for (size_t i = 0; f == NULL && i < 3; i++) {
        size_t k = strlen(sfx[i]);
        if (n > k && strcmp(name + n - k, sfx[i]) == 0) {
            fam_t *b = fam_get(c, name, n - k, 0);
            if (b && strcmp(b->type, "histogram") == 0) {
                f = b;
                suffix = sfx[i];
            }
        }
    }
    if (f == NULL || !f->has_type) return chk_fail(c, "sample %s without TYPE", name);
    if (f->closed) return chk_fail(c, "family %s is not contiguous", f->name);
    if (c->current && c->current != f) c->current->closed = 1;
    c->current = f;
    f->has_samples = 1;

    /* labels */
    const char *p = l + n;
    char key[512] = "", le[64] = "";
    char labels[16][64];
    int nl = 0;
    size_t klen = 0;
    if (*p == '{') {
        p++;
        while (*p != '}') {
            size_t ln = name_len(p, 0);
            if (ln == 0 || ln >= 64 || p[ln] != '=' || p[ln + 1] != '"')
                return chk_fail(c, "bad label in %s", l);
            if (nl == 16) return chk_fail(c, "too many labels");
            memcpy(labels[nl], p, ln);
            labels[nl][ln] = '\0';
            for (int i = 0; i < nl; i++)
                if (strcmp(labels[i], labels[nl]) == 0) return chk_fail(c, "duplicate label");
            int is_le = strcmp(labels[nl], "le") == 0;
            nl++;
            const char *start = p;
            p += ln + 2;
            char val[256];
            size_t vn = 0;
            while (*p != '"') {
                if (*p == '\0' || *p == '\n') return chk_fail(c, "unterminated label value");
                if (*p == '\\') {
                    if (p[1] != '\\' && p[1] != '"' && p[1] != 'n')
                        return chk_fail(c, "bad escape in label value");
                    p++;
                }
                if (vn < sizeof(val) - 1) val[vn++] = *p;
                p++;
            }
            val[vn] = '\0';
            p++;
            if (is_le) {
                snprintf(le, sizeof(le), "%.63s", val);
            } else {
                size_t len = (size_t)(p - start);
                if (klen + len + 1 < sizeof(key)) {
                    memcpy(key + klen, start, len);
                    klen += len;
                    key[klen++] = ',';
                    key[klen] = '\0';
                }
            }
            if (*p == ',')
                p++;
            else if (*p != '}')
                return chk_fail(c, "expected , or }");
        }
        p++;
    }
    if (*p != ' ') return chk_fail(c, "expected a space before the value");
    p++;
    char vbuf[64];
    size_t vn = strcspn(p, " ");
    if (vn == 0 || vn >= sizeof(vbuf)) return chk_fail(c, "bad value");
    memcpy(vbuf, p, vn);
    vbuf[vn] = '\0';
    double v;
    if (parse_value(vbuf, &v) < 0) return chk_fail(c, "bad value %s", vbuf);
    if (p[vn] == ' ') { /* timestamp */
        char *end;
        strtoll(p + vn + 1, &end, 10);
        if (*end) return chk_fail(c, "bad timestamp");
    }
    if (strcmp(f->type, "counter") == 0 && !(v >= 0)) return chk_fail(c, "negative counter");

    /* duplicate series */
    char sid[1024];
    snprintf(sid, sizeof(sid), "%s|%s|%s", name, key, le);
    for (int i = 0; i < c->n_series; i++)
        if (strcmp(c->series[i], sid) == 0) return chk_fail(c, "duplicate series %s", sid);
    if (c->n_series == c->cap_series) {
        c->cap_series = c->cap_series ? c->cap_series * 2 : 64;
        c->series = realloc(c->series, (size_t)c->cap_series * sizeof(*c->series));
    }
    c->series[c->n_series++] = strdup(sid);

    /* histogram shape */
    if (strcmp(suffix, "_bucket") == 0) {
        if (!le[0]) return chk_fail(c, "bucket without le");
        double lev;
        if (parse_value(le, &lev) < 0) return chk_fail(c, "bad le %s", le);
        if (strcmp(key, c->hkey) != 0) {
            snprintf(c->hkey, sizeof(c->hkey), "%s", key);
            c->hlast_le = -INFINITY;
            c->hlast_v = 0;
            c->hseen_inf = 0;
        }
        if (!(lev > c->hlast_le)) return chk_fail(c, "le not increasing");
        if (v < c->hlast_v) return chk_fail(c, "buckets not cumulative");
        c->hlast_le = lev;
        c->hlast_v = v;
        if (isinf(lev)) {
            c->hseen_inf = 1;
            c->hinf_v = v;
        }
    } else if (strcmp(suffix, "_count") == 0) {
        if (strcmp(key, c->hkey) != 0 || !c->hseen_inf)
            return chk_fail(c, "_count without a +Inf bucket before it");
        if (v != c->hinf_v) return chk_fail(c, "_count differs from the +Inf bucket");
    }
    return 0;
}

/* 0 if text is valid exposition; else -1 with c->err. */
static int check_exposition(const char *text, chk_t *c)
{
    memset(c, 0, sizeof(*c));
    int rc = 0;
    const char *p = text;
    if (*p == '\0') return chk_fail(c, "empty");
    while (*p && rc == 0) {
        c->line++;
        const char *nl = strchr(p, '\n');
        if (nl == NULL) {
            rc = chk_fail(c, "last line without a line feed");
            break;
        }
        char line[2048];
        size_t n = (size_t)(nl - p);
        if (n >= sizeof(line)) {
            rc = chk_fail(c, "line too long");
            break;
        }
        memcpy(line, p, n);
        line[n] = '\0';
        if (n == 0)
            rc = chk_fail(c, "empty line");
        else if (line[0] == '#')
            rc = chk_comment(c, line);
        else
            rc = chk_sample(c, line);
        p = nl + 1;
    }
    for (int i = 0; i < c->n_series; i++) free(c->series[i]);
    free(c->series);
    return rc;
}

static void test_checker_rejects_bad_exposition(void **state)
{
    (void)state;
    chk_t c;
    static const char *bad[] = {
        "x 1\n",                                             /* no TYPE */
        "# TYPE x counter\nx{a=\"1\" 1\n",                   /* unterminated labels */
        "# TYPE x counter\nx{a=\"\\t\"} 1\n",                /* bad escape */
        "# TYPE x counter\nx 1\n# TYPE y gauge\ny 1\nx 2\n", /* not contiguous */
        "# TYPE x counter\nx{a=\"1\"} 1\nx{a=\"1\"} 2\n",    /* duplicate */
        "# TYPE x counter\nx -1\n",                          /* negative counter */
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_count 2\n", /* no +Inf */
        "# TYPE x gauge\nx one\n",
        "# TYPE x gauge\nx 1", /* no final line feed */
    };
    for (size_t i = 0; i < MM_ARRAY_LEN(bad); i++)
        if (check_exposition(bad[i], &c) == 0) fail_msg("accepted bad exposition #%zu", i);
    assert_int_equal(check_exposition("# HELP x a \\\\ b\n# TYPE x gauge\nx{a=\"q\\\"\\n\\\\\"} "
                                      "NaN\nx{a=\"r\"} +Inf 1700000000000\n",
                                      &c),
                     0);
}

/* ---- the fixture's counters ---- */

static void fill(fx_t *f)
{
    mm_server_t *s = &f->srv;
    exp_rt_t *rank = exp_named(f, "rank");
    metrics_arm_t *a = &rank->metrics->arms[0], *b = &rank->metrics->arms[1];
    for (int i = 0; i < 5; i++) metrics_status(a->by_status, 200);
    metrics_status(a->by_status, 503);
    metrics_status(b->by_status, 200);
    metrics_latency(a, 3000);     /* 0.003 s: bucket le=0.005 */
    metrics_latency(a, 3000);     /* 0.003 s */
    metrics_latency(a, 40000);    /* 0.04 s: le=0.05 */
    metrics_latency(a, 20000000); /* 20 s: +Inf */
    metrics_latency(b, 500);      /* le=0.001 */
    for (int i = 0; i < 4; i++) router_count_fallback(rank, 1);
    b->feedback = 3;
    b->reward_sum = -1.5;
    a->feedback = 2;
    a->reward_sum = 0.25;
    s->metrics.unrouted_by_status[404] = 7;
    s->metrics.unrouted_by_status[400] = 1;
    exp_rt_t *sh = exp_named(f, "sh");
    sh->metrics->arms[1].shadow[SHADOW_MATCH] = 9;
    sh->metrics->arms[1].shadow[SHADOW_DROPPED] = 2;
    exp_control_t ctl = exp_named(f, "can")->state->control;
    ctl.canary_step = 25;
    store_set_control(s->store, exp_named(f, "can")->state, &ctl);
    s->n_conns = 3;
    s->connections_total = 12;
    s->reloads = 2;
    s->reload_failures = 1;
    s->stream_invalid = 4;
    s->stream_unknown = 6;
}

/* Every family of DESIGN.md §7 has HELP and TYPE, samples or not: the names
 * are the contract, and a dashboard or alert must find them. */
static void assert_contract_families(const char *text)
{
    static const char *families[] = {
        "modelmux_requests_total counter",
        "modelmux_request_duration_seconds histogram",
        "modelmux_upstream_errors_total counter",
        "modelmux_fallbacks_total counter",
        "modelmux_shadow_total counter",
        "modelmux_feedback_total counter",
        "modelmux_reward_sum gauge",
        "modelmux_arm_share gauge",
        "modelmux_canary_step gauge",
        "modelmux_connections gauge",
        "modelmux_store_up gauge",
    };
    for (size_t i = 0; i < MM_ARRAY_LEN(families); i++) {
        char want[128];
        snprintf(want, sizeof(want), "# TYPE %s", families[i]);
        assert_line(text, want);
        char name[96];
        snprintf(name, sizeof(name), "# HELP %.*s ", (int)strcspn(families[i], " "), families[i]);
        if (strstr(text, name) == NULL) fail_msg("no %s line in\n%s", name, text);
    }
}

/* Under OpenMetrics rules (what prometheus_client's parser applies) a
 * counter's family name is its name without "_total", and a histogram owns
 * NAME_bucket, NAME_sum and NAME_count: no other family may be called so,
 * or two families fold into one with the wrong type. */
static void assert_no_openmetrics_collisions(const char *text)
{
    static const char *const suffixes[] = {"_total", "_bucket", "_sum", "_count", "_created"};
    char names[128][96];
    size_t n = 0;
    for (const char *l = text; (l = strstr(l, "# TYPE ")) != NULL && n < 128; l++) {
        l += 7;
        size_t len = strcspn(l, " ");
        assert_true(len < sizeof(names[0]));
        memcpy(names[n], l, len);
        names[n++][len] = '\0';
    }
    assert_true(n > 10);
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++)
            for (size_t k = 0; k < MM_ARRAY_LEN(suffixes); k++) {
                size_t li = strlen(names[i]), ls = strlen(suffixes[k]);
                if (i != j && li == strlen(names[j]) + ls &&
                    strncmp(names[i], names[j], strlen(names[j])) == 0 &&
                    strcmp(names[i] + strlen(names[j]), suffixes[k]) == 0)
                    fail_msg("family %s collides with family %s", names[i], names[j]);
            }
}

static void test_exposition_is_valid(void **state)
{
    fx_t *f = *state;
    chk_t c;
    if (check_exposition(render(f), &c) != 0) fail_msg("empty fixture: %s", c.err);
    assert_contract_families(render(f));
    fill(f);
    const char *text = render(f);
    if (check_exposition(text, &c) != 0) fail_msg("%s\n%s", c.err, text);
    assert_contract_families(text);
    assert_no_openmetrics_collisions(text);
}

static void test_contract_families_without_canary_or_shadow(void **state)
{
    fx_t *f = *state;
    chk_t c;
    const char *text = render(f);
    if (check_exposition(text, &c) != 0) fail_msg("%s\n%s", c.err, text);
    assert_contract_families(text);
    assert_no_line_starting(text, "modelmux_canary_step{"); /* the family, no sample */
    assert_no_line_starting(text, "modelmux_shadow_total{");
}

static void test_counters_render_exact_lines(void **state)
{
    fx_t *f = *state;
    fill(f);
    const char *t = render(f);
    assert_line(t, "modelmux_requests_total{experiment=\"rank\",arm=\"a\",code=\"200\"} 5");
    assert_line(t, "modelmux_requests_total{experiment=\"rank\",arm=\"a\",code=\"503\"} 1");
    assert_line(t, "modelmux_requests_total{experiment=\"rank\",arm=\"b\",code=\"200\"} 1");
    assert_line(t, "modelmux_requests_total{experiment=\"\",arm=\"\",code=\"404\"} 7");
    assert_line(t, "modelmux_requests_total{experiment=\"\",arm=\"\",code=\"400\"} 1");
    /* only codes that happened */
    assert_no_line_starting(t,
                            "modelmux_requests_total{experiment=\"rank\",arm=\"b\",code=\"503\"}");
    assert_no_line_starting(t, "modelmux_requests_total{experiment=\"can\"");

    const char *h = "modelmux_request_duration_seconds_bucket{experiment=\"rank\",arm=\"a\",le=";
    char line[256];
    static const struct {
        const char *le;
        int v;
    } buckets[] = {{"0.001", 0}, {"0.0025", 0}, {"0.005", 2}, {"0.01", 2}, {"0.025", 2},
                   {"0.05", 3},  {"0.1", 3},    {"0.25", 3},  {"0.5", 3},  {"1", 3},
                   {"2.5", 3},   {"5", 3},      {"7.5", 3},   {"10", 3},   {"+Inf", 4}};
    for (size_t i = 0; i < MM_ARRAY_LEN(buckets); i++) {
        snprintf(line, sizeof(line), "%s\"%s\"} %d", h, buckets[i].le, buckets[i].v);
        assert_line(t, line);
    }
    assert_line(t, "modelmux_request_duration_seconds_sum{experiment=\"rank\",arm=\"a\"} 20.046");
    assert_line(t, "modelmux_request_duration_seconds_count{experiment=\"rank\",arm=\"a\"} 4");
    assert_line(t, "modelmux_request_duration_seconds_bucket{experiment=\"rank\",arm=\"b\","
                   "le=\"0.001\"} 1");
    /* arms without traffic still have their (zero) histogram */
    assert_line(t, "modelmux_request_duration_seconds_count{experiment=\"bandit\",arm=\"c\"} 0");

    assert_line(t, "modelmux_fallbacks_total{experiment=\"rank\",from=\"b\",to=\"a\"} 4");
    assert_no_line_starting(t, "modelmux_fallbacks_total{experiment=\"rank\",from=\"a\"");
    assert_line(t, "modelmux_feedback_total{experiment=\"rank\",arm=\"b\"} 3");
    assert_line(t, "modelmux_feedback_total{experiment=\"rank\",arm=\"a\"} 2");
    assert_line(t, "modelmux_reward_sum{experiment=\"rank\",arm=\"b\"} -1.5");
    assert_line(t, "modelmux_reward_sum{experiment=\"rank\",arm=\"a\"} 0.25");

    /* shadow: every outcome of a mirroring experiment's shadow arm, zero included */
    assert_line(t, "modelmux_shadow_total{experiment=\"sh\",arm=\"b\",outcome=\"match\"} 9");
    assert_line(t, "modelmux_shadow_total{experiment=\"sh\",arm=\"b\",outcome=\"mismatch\"} 0");
    assert_line(t, "modelmux_shadow_total{experiment=\"sh\",arm=\"b\",outcome=\"error\"} 0");
    assert_line(t, "modelmux_shadow_total{experiment=\"sh\",arm=\"b\",outcome=\"dropped\"} 2");
    assert_no_line_starting(t, "modelmux_shadow_total{experiment=\"sh\",arm=\"a\"");
    assert_no_line_starting(t, "modelmux_shadow_total{experiment=\"rank\"");

    assert_line(t, "modelmux_upstream_errors_total{upstream=\"a\",kind=\"connect\"} 0");
    assert_line(t, "modelmux_upstream_errors_total{upstream=\"c\",kind=\"overflow\"} 0");
    assert_line(t, "modelmux_upstream_errors_total{upstream=\"b\",kind=\"ejection\"} 0");

    assert_line(t, "modelmux_canary_step{experiment=\"can\"} 25");
    assert_no_line_starting(t, "modelmux_canary_step{experiment=\"rank\"}");
    assert_line(t, "modelmux_arm_share{experiment=\"rank\",arm=\"a\"} 0.9");
    assert_line(t, "modelmux_arm_share{experiment=\"rank\",arm=\"b\"} 0.1");
    assert_line(t, "modelmux_arm_share{experiment=\"can\",arm=\"a\"} 0.75");
    assert_line(t, "modelmux_arm_share{experiment=\"can\",arm=\"b\"} 0.25");
    assert_line(t, "modelmux_arm_share{experiment=\"sh\",arm=\"a\"} 1");
    assert_line(t, "modelmux_arm_share{experiment=\"sh\",arm=\"b\"} 0");

    assert_line(t, "modelmux_connections 3");
    assert_line(t, "modelmux_connections_accepted_total 12");
    assert_no_line_starting(t, "modelmux_connections_total");
    assert_line(t, "modelmux_store_up 1");
    assert_line(t, "modelmux_reloads_total 2");
    assert_line(t, "modelmux_feedback_stream_total{result=\"invalid\"} 4");
    assert_line(t, "modelmux_feedback_stream_total{result=\"unknown\"} 6");
    assert_line(t, "modelmux_reload_failures_total 1");
    assert_line(t, "modelmux_experiment_state{experiment=\"rank\",state=\"running\"} 1");
    assert_line(t, "modelmux_experiment_state{experiment=\"rank\",state=\"paused\"} 0");
    assert_line(t, "modelmux_experiment_control_version{experiment=\"can\"} 1");
    assert_no_line_starting(t, "modelmux_requestlog_"); /* no request log configured */
}

static void test_retired_experiments_keep_counters_and_labels_are_escaped(void **state)
{
    fx_t *f = *state;
    const char *arms[] = {"x\\y", "q\"z\n"};
    uint16_t slot[2];
    metrics_exp_t *m = metrics_exp(&f->srv.metrics, "old\"exp", arms, 2, slot);
    m->arms[1].by_status[200] = 2;
    const char *t = render(f);
    chk_t c;
    if (check_exposition(t, &c) != 0) fail_msg("%s", c.err);
    assert_line(
        t, "modelmux_requests_total{experiment=\"old\\\"exp\",arm=\"q\\\"z\\n\",code=\"200\"} 2");
    assert_line(
        t,
        "modelmux_fallbacks_total{experiment=\"old\\\"exp\",from=\"q\\\"z\\n\",to=\"x\\\\y\"} 0");
    /* gauges exist for live experiments only */
    assert_no_line_starting(t, "modelmux_arm_share{experiment=\"old");
}

/* An interleave experiment labels its merged answers arm="interleave", as
 * X-Modelmux-Arm does. An upstream may itself be called "interleave" (names
 * are [A-Za-z0-9_.-]); its own answers (after a promote) and the merged ones
 * are then one series, not two with the same labels, which Prometheus
 * rejects as duplicates. */
static void test_arm_named_interleave_shares_the_merged_series(void **state)
{
    fx_t *f = *state;
    const char *arms[] = {"interleave", "b"};
    uint16_t slot[2];
    metrics_exp_t *m = metrics_exp(&f->srv.metrics, "il", arms, 2, slot);
    m->has_merged = 1;
    metrics_status(m->merged.by_status, 200);
    metrics_status(m->merged.by_status, 200);
    metrics_latency(&m->merged, 250000);
    metrics_latency(&m->merged, 250000);
    metrics_status(m->arms[slot[0]].by_status, 200);
    metrics_latency(&m->arms[slot[0]], 500000);
    metrics_status(m->arms[slot[1]].by_status, 200);
    metrics_latency(&m->arms[slot[1]], 500);
    const char *t = render(f);
    chk_t c;
    if (check_exposition(t, &c) != 0) fail_msg("%s", c.err);
    assert_line(t, "modelmux_requests_total{experiment=\"il\",arm=\"interleave\",code=\"200\"} 3");
    assert_line(t, "modelmux_requests_total{experiment=\"il\",arm=\"b\",code=\"200\"} 1");
    assert_line(t, "modelmux_request_duration_seconds_bucket{experiment=\"il\",arm=\"interleave\","
                   "le=\"0.25\"} 2");
    assert_line(t, "modelmux_request_duration_seconds_bucket{experiment=\"il\",arm=\"interleave\","
                   "le=\"0.5\"} 3");
    assert_line(t, "modelmux_request_duration_seconds_sum{experiment=\"il\",arm=\"interleave\"} "
                   "1");
    assert_line(t,
                "modelmux_request_duration_seconds_count{experiment=\"il\",arm=\"interleave\"} 3");
    assert_line(t, "modelmux_request_duration_seconds_count{experiment=\"il\",arm=\"b\"} 1");
}

/* ---- at scale ----
 * Thousands of experiments through a real reload (router_create with the
 * old router): each one finds its own metrics block, store state and arm
 * slots by name, however the reload reorders or removes experiments and
 * arms. Only correctness is asserted; speed is measured (bench/scale.py). */

#define SCALE_N 2000

/* SCALE_N ab experiments "e<i>" over four upstreams, arms u<i%4>, u<(i+1)%4>.
 * `reloaded`: the order reversed, every third experiment removed, and the
 * odd ones' arms swapped (their champion changes). */
static config_t *scale_config(int reloaded)
{
    mm_buf_t b;
    mm_buf_init(&b);
    mm_buf_cstr(&b, "{\"listen\": \"127.0.0.1:18080\", \"upstreams\": {");
    for (int u = 0; u < 4; u++)
        mm_buf_printf(&b, "%s\"u%d\": {\"url\": \"http://127.0.0.1:%d\"}", u ? ", " : "", u,
                      17001 + u);
    mm_buf_cstr(&b, "}, \"experiments\": [");
    int first = 1;
    for (int k = 0; k < SCALE_N; k++) {
        int i = reloaded ? SCALE_N - 1 - k : k;
        if (reloaded && i % 3 == 0) continue;
        int a = i % 4, c = (i + 1) % 4;
        if (reloaded && i % 2) {
            int t = a;
            a = c;
            c = t;
        }
        mm_buf_printf(&b,
                      "%s{\"name\": \"e%d\", \"match\": {\"path_prefix\": \"/e/%d/\"}, "
                      "\"policy\": \"ab\", \"arms\": {\"u%d\": 50, \"u%d\": 50}}",
                      first ? "" : ", ", i, i, a, c);
        first = 0;
    }
    mm_buf_cstr(&b, "]}");
    assert_false(b.oom);
    char err[512];
    config_t *cfg = config_parse(b.p, b.len, "scale.json", err, sizeof(err));
    if (cfg == NULL) fail_msg("%s", err);
    mm_buf_free(&b);
    return cfg;
}

static int setup_scale(void **state)
{
    fx_t *f = calloc(1, sizeof(*f));
    char err[512];
    uv_loop_init(&f->loop);
    metrics_init(&f->srv.metrics);
    cfg_store_t sc = {.type = STORE_MEMORY};
    f->srv.loop = &f->loop;
    f->srv.store = store_create(&f->loop, &sc, err, sizeof(err));
    if (f->srv.store == NULL) return -1;
    f->srv.router = router_create(&f->loop, scale_config(0), NULL, f->srv.store, &f->srv.metrics,
                                  NULL, err, sizeof(err));
    if (f->srv.router == NULL) {
        print_error("router: %s\n", err);
        return -1;
    }
    mm_buf_init(&f->out);
    *state = f;
    return 0;
}

/* Arm `u` of e<i> answered i * 4 + u times with 200: a count tells whose it is. */
static uint64_t scale_count(int i, int u)
{
    return (uint64_t)i * 4 + (uint64_t)u + 1;
}

static int upstream_number(const exp_rt_t *e, int arm)
{
    return e->ups[arm]->name[1] - '0';
}

static void test_thousands_of_experiments_keep_their_blocks_across_a_reload(void **state)
{
    fx_t *f = *state;
    router_t *old = f->srv.router;
    assert_int_equal(old->n_exps, SCALE_N);
    metrics_exp_t *block[SCALE_N];
    exp_state_t *st[SCALE_N];
    for (int i = 0; i < SCALE_N; i++) {
        exp_rt_t *e = &old->exps[i];
        assert_int_equal(atoi(e->cfg->name + 1), i);
        assert_string_equal(e->metrics->name, e->cfg->name);
        assert_string_equal(e->state->name, e->cfg->name);
        block[i] = e->metrics;
        st[i] = e->state;
        for (int a = 0; a < 2; a++)
            router_marm(e, a)->by_status[200] = scale_count(i, upstream_number(e, a));
        store_pull(f->srv.store, e->state, 1);
    }
    for (int i = 1; i < SCALE_N; i++) assert_ptr_not_equal(block[i], block[i - 1]);

    char err[512];
    router_t *nr = router_create(&f->loop, scale_config(1), old, f->srv.store, &f->srv.metrics,
                                 NULL, err, sizeof(err));
    if (nr == NULL) fail_msg("%s", err);
    f->srv.router = nr;
    router_unref(old);
    store_retain(f->srv.store, server_configured, (void *)nr->cfg);

    assert_int_equal(nr->n_exps, SCALE_N - (SCALE_N + 2) / 3);
    for (size_t k = 0; k < nr->n_exps; k++) {
        exp_rt_t *e = &nr->exps[k];
        int i = atoi(e->cfg->name + 1);
        assert_int_not_equal(i % 3, 0);
        assert_ptr_equal(e->metrics, block[i]);
        assert_ptr_equal(e->state, st[i]);
        for (int a = 0; a < 2; a++) {
            int u = upstream_number(e, a);
            /* The slot follows the arm's name, swapped or not. */
            assert_int_equal(router_marm(e, a)->by_status[200], scale_count(i, u));
            assert_string_equal(e->metrics->arm_names[e->mslot[a]], e->ups[a]->name);
            /* So do the store's statistics: arm 1's pull moved with it. */
            assert_int_equal(e->state->merged[a].pulls, (i % 2) == (a == 0));
        }
        assert_int_equal(e->metrics->champion, e->mslot[0]);
    }

    /* Removed experiments keep their counters in the exposition, as
     * retired ones, and the reward sum (a running sum kept as the counters
     * are), but no live gauge; kept ones have both. */
    const char *t = render(f);
    for (int i = 0; i < SCALE_N; i += 499) {
        char line[160], gauge[64];
        int u = i % 4;
        snprintf(line, sizeof(line),
                 "modelmux_requests_total{experiment=\"e%d\",arm=\"u%d\",code=\"200\"} %" PRIu64, i,
                 u, scale_count(i, u));
        assert_line(t, line);
        snprintf(line, sizeof(line), "modelmux_feedback_total{experiment=\"e%d\",arm=\"u%d\"} 0", i,
                 u);
        assert_line(t, line); /* a counter */
        snprintf(line, sizeof(line), "modelmux_reward_sum{experiment=\"e%d\",arm=\"u%d\"} 0", i, u);
        assert_line(t, line);
        snprintf(gauge, sizeof(gauge), "modelmux_arm_share{experiment=\"e%d\",", i);
        if (i % 3 == 0)
            assert_no_line_starting(t, gauge);
        else
            assert_non_null(strstr(t, gauge));
    }
}

/* ---- the share rule ---- */

static void shares(exp_rt_t *e, double *s)
{
    metrics_arm_shares(e, NULL, s);
    double sum = 0;
    for (size_t i = 0; i < e->state->n_arms; i++) sum += s[i];
    assert_true(fabs(sum - 1.0) < 1e-12);
}

/* A reload that removes or reorders arms: every arm keeps its slot and its
 * counters (Prometheus counters never go back), so a request in flight on
 * the old router still counts into the arm it was routed to. */
static void test_reload_keeps_counters_of_removed_and_reordered_arms(void **state)
{
    fx_t *f = *state;
    const char *v1[] = {"a", "b", "c"}, *v2[] = {"b", "a"};
    uint16_t s1[3], s2[2], s3[3];
    metrics_exp_t *m = metrics_exp(&f->srv.metrics, "re", v1, 3, s1);
    m->arms[s1[0]].by_status[200] = 1;
    m->arms[s1[1]].by_status[200] = 2;
    m->arms[s1[2]].by_status[200] = 3;
    for (int i = 0; i < 3; i++) metrics_fallback(m, s1[1], s1[0]); /* b fell back to a */
    metrics_fallback(m, s1[2], s1[0]);
    assert_ptr_equal(metrics_exp(&f->srv.metrics, "re", v2, 2, s2), m);
    assert_int_equal(s2[0], s1[1]);
    assert_int_equal(s2[1], s1[0]);
    assert_int_equal(m->champion, s1[1]); /* "b" is arm 0 now */
    m->arms[s1[2]].by_status[200]++;      /* "c", in flight on the old router */
    const char *t = render(f);
    chk_t c;
    if (check_exposition(t, &c) != 0) fail_msg("%s", c.err);
    assert_line(t, "modelmux_requests_total{experiment=\"re\",arm=\"a\",code=\"200\"} 1");
    assert_line(t, "modelmux_requests_total{experiment=\"re\",arm=\"b\",code=\"200\"} 2");
    assert_line(t, "modelmux_requests_total{experiment=\"re\",arm=\"c\",code=\"200\"} 4");
    /* Fallbacks keep the champion that served them: b's to a stay, though b
     * is the champion now, and a's to b start at 0 (a count relabelled "to
     * b", or gone with b's series, would not be Prometheus counters). */
    assert_line(t, "modelmux_fallbacks_total{experiment=\"re\",from=\"b\",to=\"a\"} 3");
    assert_line(t, "modelmux_fallbacks_total{experiment=\"re\",from=\"c\",to=\"a\"} 1");
    assert_line(t, "modelmux_fallbacks_total{experiment=\"re\",from=\"a\",to=\"b\"} 0");
    assert_line(t, "modelmux_fallbacks_total{experiment=\"re\",from=\"c\",to=\"b\"} 0");
    assert_null(strstr(t, "from=\"b\",to=\"b\""));
    assert_non_null(metrics_exp(&f->srv.metrics, "re", v1, 3, s3));
    assert_memory_equal(s3, s1, sizeof(s1)); /* "c" comes back to its counters */
    assert_int_equal(m->arms[s3[2]].by_status[200], 4);
}

/* A block has as many slots as its arms when made; a reload that adds arms
 * grows it (realloc), and the counts already there move with it. */
static void test_arms_added_by_a_reload_grow_the_block(void **state)
{
    fx_t *f = *state;
    const char *v1[] = {"a", "b"};
    const char *v2[] = {"a", "b", "c", "d", "e", "f", "g", "h", "i"};
    uint16_t s1[2], s2[9];
    metrics_exp_t *m = metrics_exp(&f->srv.metrics, "grow", v1, 2, s1);
    assert_non_null(m);
    assert_int_equal(m->cap, 2);
    m->arms[s1[0]].by_status[200] = 5;
    m->arms[s1[1]].by_status[503] = 7;
    metrics_latency(&m->arms[s1[1]], 1500);
    assert_ptr_equal(metrics_exp(&f->srv.metrics, "grow", v2, 9, s2), m);
    assert_true(m->cap >= 9);
    assert_int_equal(m->n_arms, 9);
    assert_int_equal(s2[0], s1[0]);
    assert_int_equal(s2[1], s1[1]);
    assert_int_equal(m->arms[s2[0]].by_status[200], 5);
    assert_int_equal(m->arms[s2[1]].by_status[503], 7);
    for (int i = 2; i < 9; i++) {
        assert_int_equal(m->arms[s2[i]].by_status[200], 0);
        assert_string_equal(m->arm_names[s2[i]], v2[i]);
    }
    const char *t = render(f);
    chk_t c;
    if (check_exposition(t, &c) != 0) fail_msg("%s", c.err);
    assert_line(t, "modelmux_requests_total{experiment=\"grow\",arm=\"b\",code=\"503\"} 7");
}

static void test_share_follows_control_then_policy_then_observation(void **state)
{
    fx_t *f = *state;
    store_t *st = f->srv.store;
    double s[MM_MAX_ARMS];

    exp_rt_t *rank = exp_named(f, "rank");
    shares(rank, s); /* configured weights, through the policy's description */
    assert_true(fabs(s[0] - 0.9) < 1e-12 && fabs(s[1] - 0.1) < 1e-12);
    exp_control_t ctl = rank->state->control;
    ctl.weights[0] = 1;
    ctl.weights[1] = 3;
    ctl.has_weights = 1;
    store_set_control(st, rank->state, &ctl); /* operator weights */
    shares(rank, s);
    assert_true(fabs(s[0] - 0.25) < 1e-12 && fabs(s[1] - 0.75) < 1e-12);
    ctl.state = EXP_ROLLED_BACK;
    ctl.weights[0] = 100;
    ctl.weights[1] = 0;
    store_set_control(st, rank->state, &ctl);
    shares(rank, s);
    assert_true(s[0] == 1.0 && s[1] == 0.0);

    /* ucb1 states its effective share: all to the arm it picks next (the
     * untried ones first, evenly), whatever the requests so far were. */
    exp_rt_t *bandit = exp_named(f, "bandit");
    shares(bandit, s);
    assert_true(s[0] == 0.5 && s[1] == 0.5); /* both untried */
    for (int i = 0; i < 30; i++) store_pull(st, bandit->state, 0);
    for (int i = 0; i < 10; i++) store_pull(st, bandit->state, 1);
    shares(bandit, s);
    assert_true(s[0] == 0.5 && s[1] == 0.5); /* pulls are not rewards */
    for (int i = 0; i < 10; i++) {
        store_reward(st, bandit->state, 0, 1.0, 1);
        store_reward(st, bandit->state, 1, 0.0, 1);
    }
    shares(bandit, s);
    assert_true(s[0] == 1.0 && s[1] == 0.0);
    ctl = bandit->state->control; /* weights on a bandit do not apply while it runs */
    ctl.weights[1] = 1;
    ctl.has_weights = 1;
    store_set_control(st, bandit->state, &ctl);
    shares(bandit, s);
    assert_true(s[0] == 1.0);
    ctl.state = EXP_PROMOTED; /* ... but do once promoted */
    store_set_control(st, bandit->state, &ctl);
    shares(bandit, s);
    assert_true(s[0] == 0.0 && s[1] == 1.0);

    exp_rt_t *can = exp_named(f, "can");
    shares(can, s);
    assert_true(s[0] == 1.0 && s[1] == 0.0); /* step 0: not started */
}

/* The admin view's p50/p99 (src/admin.c, over the store's answer
 * histograms) read src/lathist.h: within about 3 % of the sample. */
static uint64_t qhist[LATHIST_BUCKETS]; /* large: not on the stack */
static uint64_t qtotal;

static void qadd(uint64_t us)
{
    qhist[lathist_index(us)]++;
    qtotal++;
}

static double qms(double q)
{
    double us = lathist_quantile_us(qhist, qtotal, q);
    return us < 0 ? -1.0 : us / 1000.0;
}

static void qclear(void)
{
    memset(qhist, 0, sizeof(qhist));
    qtotal = 0;
}

static void test_quantiles_are_within_3_percent(void **state)
{
    (void)state;
    qclear();
    assert_true(qms(0.5) < 0);
    /* A 50 ms model: the Prometheus buckets (25, 50, 100 ms) would put its
     * median anywhere in (50, 100]; the view must say about 50. */
    for (int i = 0; i < 100; i++) qadd(50300 + (uint64_t)i * 10);
    assert_true(fabs(qms(0.5) - 50.8) / 50.8 < 0.035);
    assert_true(fabs(qms(0.99) - 51.3) / 51.3 < 0.035);
    /* Nearest rank: 90 fast answers and 10 slow ones. */
    qclear();
    for (int i = 0; i < 90; i++) qadd(800);
    for (int i = 0; i < 10; i++) qadd(120000);
    assert_true(fabs(qms(0.5) - 0.8) / 0.8 < 0.035);
    assert_true(fabs(qms(0.9) - 0.8) / 0.8 < 0.035);
    assert_true(fabs(qms(0.99) - 120.0) / 120.0 < 0.035);
    /* Sub-millisecond and very long answers keep their scale. */
    qclear();
    qadd(7);
    assert_true(fabs(qms(0.5) - 0.007) < 1e-12);
    qadd(60000000);
    assert_true(fabs(qms(0.99) - 60000.0) / 60000.0 < 0.035);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_checker_rejects_bad_exposition),
        cmocka_unit_test_setup_teardown(test_exposition_is_valid, setup, teardown),
        cmocka_unit_test_setup_teardown(test_counters_render_exact_lines, setup, teardown),
        cmocka_unit_test_setup_teardown(test_contract_families_without_canary_or_shadow,
                                        setup_ab_only, teardown),
        cmocka_unit_test_setup_teardown(
            test_retired_experiments_keep_counters_and_labels_are_escaped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_arm_named_interleave_shares_the_merged_series, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_reload_keeps_counters_of_removed_and_reordered_arms,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_thousands_of_experiments_keep_their_blocks_across_a_reload, setup_scale, teardown),
        cmocka_unit_test_setup_teardown(test_arms_added_by_a_reload_grow_the_block, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_share_follows_control_then_policy_then_observation,
                                        setup, teardown),
        cmocka_unit_test(test_quantiles_are_within_3_percent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
