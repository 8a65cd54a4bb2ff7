/* test_store_redis.c — the Redis store against a real redis-server.
 *
 * Each test starts from its own key prefix on one redis-server started here
 * (MM_REDIS_SERVER or redis-server from PATH, a free loopback port, no
 * persistence) and stopped by PID at the end; the tests that kill Redis or
 * start with it absent run their own server. The uv loop runs inside the test
 * until a condition holds or a deadline passes, and what Redis holds is read
 * back with a synchronous hiredis connection: the assertions are the exact
 * counters and fields a user (or another instance) would see, per-request
 * data (PREFIX:il:ID) included. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <unistd.h>

#include <cmocka.h>
#include <hiredis/hiredis.h>
#include <jansson.h>

#include "store.h"
#include "store_internal.h"
#include "tally.h"

/* store_retain keeping the experiment "recs" only. */
static int only_recs(void *arg, const char *name)
{
    (void)arg;
    return strcmp(name, "recs") == 0;
}

static const char *const ARMS[] = {"champion", "challenger"};

/* ---- redis-server processes ---- */

typedef struct {
    pid_t pid;
    int port;
    char dir[64]; /* non-empty: AOF persistence in this directory */
} redis_proc_t;

static redis_proc_t g_redis;

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        if (fd >= 0) close(fd);
        return -1;
    }
    close(fd);
    return ntohs(a.sin_port);
}

static redisContext *sync_ctx(int port)
{
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (c != NULL && c->err) {
        redisFree(c);
        return NULL;
    }
    return c;
}

static int redis_start(redis_proc_t *p)
{
    char port[16];
    snprintf(port, sizeof(port), "%d", p->port);
    const char *bin = getenv("MM_REDIS_SERVER") ? getenv("MM_REDIS_SERVER") : "redis-server";
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        dup2(null, 1);
        dup2(null, 2);
        if (p->dir[0])
            execlp(bin, bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly",
                   "yes", "--appendfsync", "always", "--dir", p->dir, "--daemonize", "no",
                   (char *)NULL);
        else
            execlp(bin, bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly",
                   "no", "--daemonize", "no", (char *)NULL);
        _exit(127);
    }
    p->pid = pid;
    for (int i = 0; i < 500; i++) { /* up to 5 s */
        redisContext *c = sync_ctx(p->port);
        if (c != NULL) {
            redisReply *r = redisCommand(c, "PING");
            int ok = r != NULL && r->type == REDIS_REPLY_STATUS;
            freeReplyObject(r);
            redisFree(c);
            if (ok) return 0;
        }
        if (waitpid(pid, NULL, WNOHANG) == pid) {
            p->pid = 0;
            return -1;
        }
        usleep(10000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    p->pid = 0;
    return -1;
}

static void redis_kill(redis_proc_t *p, int sig)
{
    if (p->pid <= 0) return;
    kill(p->pid, sig);
    waitpid(p->pid, NULL, 0);
    p->pid = 0;
}

static int group_setup(void **state)
{
    (void)state;
    g_redis.port = free_port();
    if (g_redis.port <= 0 || redis_start(&g_redis) != 0) {
        fprintf(stderr, "test_store_redis: cannot start redis-server; tests skipped\n");
        g_redis.pid = 0;
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    redis_kill(&g_redis, SIGTERM);
    return 0;
}

/* ---- fixture: a loop, up to three stores, a sync connection ---- */

typedef struct {
    uv_loop_t loop;
    uv_timer_t tick; /* wakes the loop so deadlines are checked */
    store_t *st[3];
    redisContext *rc;
    char prefix[64];
    int port;
    redis_proc_t own; /* a test's private server: killed in teardown, even after a failure */
} fx_t;

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

static int setup(void **state)
{
    if (g_redis.pid <= 0) skip();
    fx_t *f = calloc(1, sizeof(*f));
    uv_loop_init(&f->loop);
    uv_timer_init(&f->loop, &f->tick);
    uv_timer_start(&f->tick, on_tick, 5, 5);
    f->port = g_redis.port;
    f->rc = sync_ctx(f->port);
    assert_non_null(f->rc);
    static int n;
    snprintf(f->prefix, sizeof(f->prefix), "mmtest%d-%ld", ++n, (long)getpid());
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx_t *f = *state;
    if (f == NULL) return 0;
    for (int i = 0; i < 3; i++) store_destroy(f->st[i]);
    uv_close((uv_handle_t *)&f->tick, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    if (f->rc) redisFree(f->rc);
    redis_kill(&f->own, SIGKILL);
    if (f->own.dir[0]) {
        char rm[128];
        snprintf(rm, sizeof(rm), "rm -rf %s", f->own.dir);
        if (system(rm) != 0) fprintf(stderr, "cannot remove %s\n", f->own.dir);
    }
    free(f);
    return 0;
}

/* The test's own redis-server (f->own, killed in teardown): its port. */
static int own_redis(fx_t *f)
{
    f->own.port = free_port();
    assert_int_equal(redis_start(&f->own), 0);
    return f->own.port;
}

#define RUN_UNTIL(f, cond, ms)                                                                     \
    do {                                                                                           \
        uint64_t dl_ = mm_now_ms() + (ms);                                                         \
        while (!(cond) && mm_now_ms() < dl_) uv_run(&(f)->loop, UV_RUN_ONCE);                      \
    } while (0)

/* The bound for a condition that should come true: ample, since it only
 * costs time when the test fails (ASan builds on a loaded 2-core box are
 * slow). */
#define WAIT_MS 10000

static void run_for(fx_t *f, int ms)
{
    RUN_UNTIL(f, 0, ms);
}

static store_t *mk_store(fx_t *f, int port, int sync_ms)
{
    cfg_store_t cfg = {.type = STORE_REDIS, .port = port, .sync_ms = sync_ms};
    snprintf(cfg.host, sizeof(cfg.host), "127.0.0.1");
    snprintf(cfg.prefix, sizeof(cfg.prefix), "%s", f->prefix);
    char err[256];
    store_t *s = store_create(&f->loop, &cfg, err, sizeof(err));
    assert_non_null(s);
    assert_string_equal(store_kind(s), "redis");
    return s;
}

static exp_control_t weights(double a, double b)
{
    exp_control_t c;
    memset(&c, 0, sizeof(c));
    c.weights[0] = a;
    c.weights[1] = b;
    c.has_weights = 1;
    return c;
}

static exp_state_t *mk_exp(store_t *s, const char *name)
{
    exp_control_t c = weights(90, 10);
    exp_state_t *e = store_experiment(s, name, ARMS, 2, &c, 0);
    assert_non_null(e);
    return e;
}

static uint64_t syncs(const store_t *s)
{
    store_stats_t st;
    store_get_stats(s, &st);
    return st.syncs;
}

/* Everything counted before `since` was taken is in Redis and read back. */
static int settled(const store_t *s, exp_state_t *e, uint64_t since)
{
    store_exp_t *x = store_exp_of(e);
    if (syncs(s) < since + 2 || x->batch.active || !x->synced || x->ctl_init || e->control_dirty ||
        x->reset_pending)
        return 0;
    for (size_t i = 0; i < e->n_arms; i++)
        if (store_stats_nonzero(&e->pending[i]) || e->answers_local[i].answers) return 0;
    return !tally_nonzero_local(e->tally);
}

#define SETTLE(f, s, e)                                                                            \
    do {                                                                                           \
        uint64_t s0_ = syncs(s);                                                                   \
        RUN_UNTIL(f, settled(s, e, s0_), 3000);                                                    \
        assert_true(settled(s, e, s0_));                                                           \
    } while (0)

static redisReply *cmd(fx_t *f, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(f->rc, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    return r;
}

/* HGET of an arm field as a number (0 when absent). */
static double arm_field(fx_t *f, const char *exp, const char *arm, const char *field)
{
    redisReply *r = cmd(f, "HGET %s:{%s}:arm:%s %s", f->prefix, exp, arm, field);
    double v = r->type == REDIS_REPLY_STRING ? strtod(r->str, NULL) : 0;
    freeReplyObject(r);
    return v;
}

static int ctl_field(fx_t *f, const char *exp, const char *field, char *out, size_t n)
{
    redisReply *r = cmd(f, "HGET %s:{%s}:control %s", f->prefix, exp, field);
    int ok = r->type == REDIS_REPLY_STRING;
    if (ok) snprintf(out, n, "%s", r->str);
    freeReplyObject(r);
    return ok;
}

/* The control hash's weights of exp in Redis are exactly `want` (JSON text). */
static void assert_weights(fx_t *f, const char *exp, const char *want)
{
    char buf[128];
    assert_true(ctl_field(f, exp, "weights", buf, sizeof(buf)));
    assert_string_equal(buf, want);
}

static long long integer(fx_t *f, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(f->rc, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    long long v = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    freeReplyObject(r);
    return v;
}

/* HGET of a field of an arm's answer hash PREFIX:{EXP}:lat:ARM (0 when absent). */
static long long lat_field(fx_t *f, const char *exp, const char *arm, const char *field)
{
    redisReply *r = cmd(f, "HGET %s:{%s}:lat:%s %s", f->prefix, exp, arm, field);
    long long v = r->type == REDIS_REPLY_STRING ? strtoll(r->str, NULL, 10) : 0;
    freeReplyObject(r);
    return v;
}

static long long lat_bucket(fx_t *f, const char *exp, const char *arm, uint64_t us)
{
    char field[16];
    snprintf(field, sizeof(field), "%u", lathist_index(us));
    return lat_field(f, exp, arm, field);
}

/* An arm's answers as a policy sees them (snapshot + local). */
static uint64_t view_answers(const exp_state_t *e, int arm)
{
    return e->answers[arm].answers + e->answers_local[arm].answers;
}

static uint64_t view_bucket(const exp_state_t *e, int arm, uint64_t us)
{
    unsigned k = lathist_index(us);
    return e->answers[arm].hist[k] + e->answers_local[arm].hist[k];
}

/* HGET of definition fp's counter in the tally hash PREFIX:{EXP}:tally
 * (field "FP|NAME"; 0 when absent). */
static long long tally_field(fx_t *f, const char *exp, uint64_t fp, const char *name)
{
    redisReply *r =
        cmd(f, "HGET %s:{%s}:tally %016llx|%s", f->prefix, exp, (unsigned long long)fp, name);
    long long v = r->type == REDIS_REPLY_STRING ? strtoll(r->str, NULL, 10) : 0;
    freeReplyObject(r);
    return v;
}

static void count(exp_state_t *e, const char *name, uint64_t n)
{
    policy_tally_add(store_tally(e, e->tally_fp), name, n);
}

static uint64_t tally_of(const exp_state_t *e, const char *name)
{
    return policy_tally_get(store_tally(e, e->tally_fp), name);
}

/* ---- tests ---- */

static void test_counters_are_exact_in_redis_after_a_flush(void **state)
{
    fx_t *f = *state;
    store_t *s = f->st[0] = mk_store(f, f->port, 20);
    exp_state_t *e = mk_exp(s, "recs");
    RUN_UNTIL(f, store_up(s), 2000);
    assert_int_equal(store_up(s), 1);
    for (int i = 0; i < 1000; i++) store_pull(s, e, 0);
    for (int i = 0; i < 300; i++) store_pull(s, e, 1);
    for (int i = 0; i < 7; i++) store_error(s, e, 1);
    for (int i = 0; i < 4; i++) store_reward(s, e, 0, 0.25, 1);
    store_reward(s, e, 1, -1.5, 0);
    store_reward(s, e, 1, 2.0, 0);
    SETTLE(f, s, e);

    assert_true(arm_field(f, "recs", "champion", "pulls") == 1000);
    assert_true(arm_field(f, "recs", "challenger", "pulls") == 300);
    assert_true(arm_field(f, "recs", "challenger", "errors") == 7);
    assert_true(arm_field(f, "recs", "champion", "feedback") == 4);
    assert_true(arm_field(f, "recs", "champion", "reward_sum") == 1.0);
    assert_true(arm_field(f, "recs", "champion", "reward_sq_sum") == 0.25);
    assert_true(arm_field(f, "recs", "champion", "successes") == 1.0);
    assert_true(arm_field(f, "recs", "champion", "failures") == 3.0);
    assert_true(arm_field(f, "recs", "challenger", "feedback") == 2);
    assert_true(arm_field(f, "recs", "challenger", "reward_sum") == 0.5);
    assert_true(arm_field(f, "recs", "challenger", "reward_sq_sum") == 6.25);
    /* Fields never incremented are not written. */
    assert_int_equal(integer(f, "HEXISTS %s:{recs}:arm:champion errors", f->prefix), 0);
    /* The merged view is the global snapshot. */
    assert_int_equal(e->merged[0].pulls, 1000);
    assert_true(e->merged[1].reward_sq_sum == 6.25);

    /* The control hash was seeded from the config. */
    char buf[256];
    assert_true(ctl_field(f, "recs", "version", buf, sizeof(buf)));
    assert_string_equal(buf, "1");
    assert_int_equal(e->control.version, 1);
    assert_true(ctl_field(f, "recs", "state", buf, sizeof(buf)));
    assert_string_equal(buf, "running");
    assert_true(ctl_field(f, "recs", "weights", buf, sizeof(buf)));
    assert_string_equal(buf, "{\"champion\":90,\"challenger\":10}");
    assert_true(ctl_field(f, "recs", "canary_step", buf, sizeof(buf)));
    assert_string_equal(buf, "0");
}

static void test_two_instances_see_each_others_increments(void **state)
{
    fx_t *f = *state;
    store_t *a = f->st[0] = mk_store(f, f->port, 20);
    store_t *b = f->st[1] = mk_store(f, f->port, 20);
    exp_state_t *ea = mk_exp(a, "recs"), *eb = mk_exp(b, "recs");
    RUN_UNTIL(f, store_up(a) && store_up(b), 2000);
    for (int i = 0; i < 10; i++) store_pull(a, ea, 0);
    for (int i = 0; i < 20; i++) store_pull(b, eb, 0);
    for (int i = 0; i < 5; i++) store_reward(b, eb, 1, 1, 1);
    uint64_t t0 = mm_now_ms();
    RUN_UNTIL(f,
              ea->merged[0].pulls == 30 && eb->merged[0].pulls == 30 &&
                  ea->merged[1].successes == 5 && eb->merged[1].successes == 5,
              2000);
    uint64_t dt = mm_now_ms() - t0;
    assert_int_equal(ea->merged[0].pulls, 30);
    assert_int_equal(eb->merged[0].pulls, 30);
    assert_true(ea->merged[1].successes == 5);
    print_message("      converged in %llu ms (sync_ms 20)\n", (unsigned long long)dt);
    /* Local increments show at once, on top of the shared view. */
    store_pull(a, ea, 0);
    assert_int_equal(ea->merged[0].pulls, 31);
}

/* Every change is a version (DESIGN.md §6), also several made within one
 * sync interval and written together: three changes, version + 3, and the
 * instance's version then is Redis's, never lower than it answered. */
static void test_each_control_change_bumps_the_version(void **state)
{
    fx_t *f = *state;
    store_t *a = f->st[0] = mk_store(f, f->port, 20);
    exp_state_t *ea = mk_exp(a, "recs");
    RUN_UNTIL(f, store_exp_of(ea)->synced, 2000);
    SETTLE(f, a, ea);
    assert_int_equal(ea->control.version, 1);
    exp_control_t c = weights(11, 89);
    store_set_control(a, ea, &c);
    c = weights(12, 88);
    store_set_control(a, ea, &c);
    c.state = EXP_PAUSED;
    store_set_control(a, ea, &c);
    assert_int_equal(ea->control.version, 4);
    assert_int_equal(ea->control_dirty, 3);
    RUN_UNTIL(f, !ea->control_dirty, 2000);
    SETTLE(f, a, ea);
    char buf[256];
    assert_true(ctl_field(f, "recs", "version", buf, sizeof(buf)));
    assert_string_equal(buf, "4");
    assert_int_equal(ea->control.version, 4);
    assert_int_equal(ea->control.state, EXP_PAUSED);
}

static void test_control_change_reaches_the_other_instance(void **state)
{
    fx_t *f = *state;
    store_t *a = f->st[0] = mk_store(f, f->port, 20);
    store_t *b = f->st[1] = mk_store(f, f->port, 20);
    exp_state_t *ea = mk_exp(a, "recs"), *eb = mk_exp(b, "recs");
    for (int i = 0; i < 3; i++) store_pull(a, ea, 0);
    RUN_UNTIL(f, eb->merged[0].pulls == 3 && store_exp_of(ea)->synced, 2000);
    assert_int_equal(eb->merged[0].pulls, 3);

    exp_control_t c = weights(20, 80);
    c.state = EXP_PAUSED;
    store_set_control(a, ea, &c);
    assert_int_equal(ea->control_dirty, 1);
    RUN_UNTIL(f, eb->control.state == EXP_PAUSED && !ea->control_dirty, 2000);
    assert_int_equal(eb->control.state, EXP_PAUSED);
    assert_true(eb->control.weights[0] == 20 && eb->control.weights[1] == 80);
    assert_int_equal(eb->control.has_weights, 1);
    SETTLE(f, a, ea);
    assert_int_equal(ea->control.version, eb->control.version);
    assert_int_equal(eb->control.version, 2); /* seeded (1), then changed (2) */
    char buf[256];
    assert_true(ctl_field(f, "recs", "version", buf, sizeof(buf)));
    assert_string_equal(buf, "2");
    assert_true(ctl_field(f, "recs", "state", buf, sizeof(buf)));
    assert_string_equal(buf, "paused");
    /* Paused: B's policies see the statistics as they were when it learned of it. */
    assert_int_equal(eb->frozen[0].pulls, 3);
    store_pull(a, ea, 0);
    RUN_UNTIL(f, eb->merged[0].pulls == 4, 2000);
    assert_int_equal(eb->frozen[0].pulls, 3);
}

/* Two instances (f->st[0], f->st[1]) on the fixture's Redis, each with
 * experiment `name`, both synced at the same control version: returned. */
static uint64_t two_settled(fx_t *f, const char *name, exp_state_t **ea, exp_state_t **eb)
{
    store_t *a = f->st[0] = mk_store(f, f->port, 20);
    store_t *b = f->st[1] = mk_store(f, f->port, 20);
    *ea = mk_exp(a, name);
    *eb = mk_exp(b, name);
    SETTLE(f, a, *ea);
    SETTLE(f, b, *eb);
    assert_int_equal((*eb)->control.version, (*ea)->control.version);
    return (*ea)->control.version;
}

/* Two instances running the same canary decide from the same version: the
 * first write lands, the other is dropped and the first adopted, so the
 * fleet moves once (version + 1, not + 2). An operator's change is never
 * dropped, whatever a policy proposed meanwhile. */
static void test_policy_changes_are_compare_and_set(void **state)
{
    fx_t *f = *state;
    exp_state_t *ea, *eb;
    uint64_t v0 = two_settled(f, "can", &ea, &eb);
    store_t *a = f->st[0], *b = f->st[1];

    exp_control_t ca = ea->control, cb = eb->control;
    ca.canary_step = 10;
    cb.canary_step = 25;
    store_propose_control(a, ea, &ca); /* both before either is written */
    store_propose_control(b, eb, &cb);
    SETTLE(f, a, ea);
    SETTLE(f, b, eb);
    SETTLE(f, a, ea);
    char buf[64];
    assert_true(ctl_field(f, "can", "version", buf, sizeof(buf)));
    assert_int_equal(strtoull(buf, NULL, 10), v0 + 1);
    assert_true(ctl_field(f, "can", "canary_step", buf, sizeof(buf)));
    double won = strtod(buf, NULL);
    assert_true(won == 10 || won == 25);
    assert_true(ea->control.canary_step == won && eb->control.canary_step == won);
    assert_int_equal(ea->control.version, v0 + 1);
    assert_int_equal(eb->control.version, v0 + 1);

    /* a policy's change racing an operator's: the operator's stands */
    exp_control_t op = weights(0, 100);
    op.state = EXP_PROMOTED;
    op.canary_step = 100;
    ca = ea->control;
    ca.canary_step = 50;
    store_propose_control(a, ea, &ca);
    store_set_control(b, eb, &op);
    SETTLE(f, a, ea);
    SETTLE(f, b, eb);
    SETTLE(f, a, ea);
    assert_int_equal(ea->control.state, EXP_PROMOTED);
    assert_int_equal(eb->control.state, EXP_PROMOTED);
    assert_true(ea->control.canary_step == 100 && eb->control.canary_step == 100);
    assert_true(ctl_field(f, "can", "state", buf, sizeof(buf)));
    assert_string_equal(buf, "promoted");
    assert_int_equal(ea->control.version, eb->control.version);

    /* alone, a proposal is written like any change */
    ca = ea->control;
    ca.canary_step = 75;
    uint64_t v1 = ea->control.version;
    store_propose_control(a, ea, &ca);
    SETTLE(f, a, ea);
    RUN_UNTIL(f, eb->control.canary_step == 75, 2000);
    assert_true(eb->control.canary_step == 75);
    assert_int_equal(ea->control.version, v1 + 1);
}

static int g_done;
static void on_done(void *arg)
{
    (void)arg;
    g_done++;
}

/* An operator's change writes only the fields it changed: weights set on A
 * and a pause on B, each made before the instance heard of the other's,
 * both stand, in whichever order they reach Redis. Each wrote its whole
 * control, so the one written last undid the other, which its instance had
 * already acknowledged. */
static void test_an_operator_change_keeps_the_fields_it_did_not_change(void **state)
{
    fx_t *f = *state;
    exp_state_t *ea, *eb;
    uint64_t v0 = two_settled(f, "recs", &ea, &eb);
    store_t *a = f->st[0], *b = f->st[1];

    exp_control_t ca = weights(20, 80), cb = eb->control;
    cb.state = EXP_PAUSED;
    store_set_control(a, ea, &ca); /* both before either is written */
    store_set_control(b, eb, &cb);
    g_done = 0;
    store_flush(a, on_done, NULL);
    store_flush(b, on_done, NULL);
    RUN_UNTIL(f, g_done == 2, 3000);
    assert_int_equal(g_done, 2);
    char buf[256];
    assert_true(ctl_field(f, "recs", "state", buf, sizeof(buf)));
    assert_string_equal(buf, "paused");
    assert_true(ctl_field(f, "recs", "version", buf, sizeof(buf)));
    assert_int_equal(strtoull(buf, NULL, 10), v0 + 2);
    /* both instances end with the two changes */
    RUN_UNTIL(f, ea->control.version == v0 + 2 && eb->control.version == v0 + 2, 3000);
    exp_state_t *both[] = {ea, eb};
    for (int i = 0; i < 2; i++) {
        assert_int_equal(both[i]->control.version, v0 + 2);
        assert_int_equal(both[i]->control.state, EXP_PAUSED);
        assert_true(both[i]->control.has_weights && both[i]->control.weights[0] == 20 &&
                    both[i]->control.weights[1] == 80);
    }
}

static void test_control_survives_a_restart_unless_redefined(void **state)
{
    fx_t *f = *state;
    store_t *a = f->st[0] = mk_store(f, f->port, 20);
    exp_state_t *ea = mk_exp(a, "recs");
    RUN_UNTIL(f, store_exp_of(ea)->synced, 2000);
    exp_control_t c = weights(0, 100);
    c.state = EXP_PROMOTED;
    store_set_control(a, ea, &c);
    g_done = 0;
    store_shutdown(a, 2000, on_done, NULL);
    RUN_UNTIL(f, g_done == 1, 3000);
    assert_int_equal(g_done, 1);
    store_destroy(a);
    f->st[0] = NULL;

    /* A new process with the same config: Redis's control wins. */
    store_t *b = f->st[1] = mk_store(f, f->port, 20);
    exp_state_t *eb = mk_exp(b, "recs");
    assert_true(eb->control.weights[0] == 90); /* the config until the first sync */
    SETTLE(f, b, eb);
    assert_int_equal(eb->control.state, EXP_PROMOTED);
    assert_true(eb->control.weights[0] == 0 && eb->control.weights[1] == 100);
    assert_int_equal(eb->control.version, 2);

    /* A process whose config changed the experiment: its control wins. */
    store_t *d = f->st[2] = mk_store(f, f->port, 20);
    exp_control_t c2 = weights(60, 40);
    exp_state_t *ed = store_experiment(d, "recs", ARMS, 2, &c2, 1);
    SETTLE(f, d, ed);
    assert_int_equal(ed->control.state, EXP_RUNNING);
    assert_true(ed->control.weights[0] == 60);
    assert_int_equal(ed->control.version, 3);
    RUN_UNTIL(f, eb->control.version == 3, 2000);
    assert_true(eb->control.weights[0] == 60 && eb->control.state == EXP_RUNNING);
}

static void test_reset_reaches_every_instance(void **state)
{
    fx_t *f = *state;
    store_t *a = f->st[0] = mk_store(f, f->port, 20);
    store_t *b = f->st[1] = mk_store(f, f->port, 20);
    exp_state_t *ea = mk_exp(a, "recs"), *eb = mk_exp(b, "recs");
    for (int i = 0; i < 5; i++) store_pull(a, ea, 0), store_pull(b, eb, 1);
    exp_control_t c = weights(50, 50);
    store_set_control(b, eb, &c);
    RUN_UNTIL(f,
              ea->merged[1].pulls == 5 && eb->merged[0].pulls == 5 && ea->control.weights[0] == 50,
              2000);
    assert_int_equal(ea->merged[1].pulls, 5);

    store_reset(a, ea);
    assert_int_equal(store_resets(ea), 1);
    RUN_UNTIL(f, store_resets(eb) == 1 && eb->merged[0].pulls == 0 && eb->merged[1].pulls == 0,
              2000);
    assert_int_equal(store_resets(eb), 1);
    assert_int_equal(eb->merged[0].pulls, 0);
    assert_true(eb->control.weights[0] == 90); /* back to the config */
    SETTLE(f, a, ea);
    assert_int_equal(eb->control.version, ea->control.version);
    assert_int_equal(integer(f, "EXISTS %s:{recs}:arm:champion", f->prefix), 0);
    char buf[64];
    assert_true(ctl_field(f, "recs", "reset_epoch", buf, sizeof(buf)));
    unsigned long long epoch1 = strtoull(buf, NULL, 10);
    assert_true(epoch1 > 0);
    assert_int_equal(strspn(buf, "0123456789"), strlen(buf)); /* an integer, written whole */

    /* Counting starts again from zero everywhere. */
    store_pull(a, ea, 0), store_pull(a, ea, 0), store_pull(b, eb, 0);
    RUN_UNTIL(f, ea->merged[0].pulls == 3 && eb->merged[0].pulls == 3, 2000);
    assert_int_equal(eb->merged[0].pulls, 3);
    assert_int_equal(ea->merged[0].pulls, 3);

    /* Every reset names a new epoch, above the one before. */
    store_reset(b, eb);
    RUN_UNTIL(f, store_resets(ea) == 2, WAIT_MS);
    assert_true(ctl_field(f, "recs", "reset_epoch", buf, sizeof(buf)));
    assert_true(strtoull(buf, NULL, 10) > epoch1);
}

/* Increments an instance counted before another instance's reset reached
 * Redis, but sends after it, are statistics learned before the reset: its
 * write must not add them to the emptied hashes (it carries the epoch it
 * counted them under), and they are counted as dropped. The other
 * instance's reset is written here by hand, as its script writes it, so
 * that it lands between a's counting and a's write. */
static void test_increments_counted_before_another_reset_are_dropped(void **state)
{
    fx_t *f = *state;
    store_t *a = f->st[0] = mk_store(f, f->port, 20);
    exp_state_t *ea = mk_exp(a, "recs");
    store_pull(a, ea, 0);
    SETTLE(f, a, ea);
    assert_int_equal(ea->merged[0].pulls, 1);

    for (int i = 0; i < 3; i++) store_pull(a, ea, 0);
    assert_int_equal(store_reward(a, ea, 1, 0.5, 0), 0);
    char key[256];
    snprintf(key, sizeof(key), "%s:{recs}:arm:champion", f->prefix);
    freeReplyObject(cmd(f, "DEL %s", key));
    freeReplyObject(cmd(f, "HINCRBY %s:{recs}:control reset_epoch 1", f->prefix));
    freeReplyObject(cmd(f, "HINCRBY %s:{recs}:control version 1", f->prefix));

    RUN_UNTIL(f, store_resets(ea) == 1, WAIT_MS);
    assert_int_equal(store_resets(ea), 1);
    SETTLE(f, a, ea);
    assert_int_equal(integer(f, "EXISTS %s", key), 0);
    assert_int_equal(integer(f, "HEXISTS %s:{recs}:arm:challenger feedback", f->prefix), 0);
    assert_int_equal(ea->merged[0].pulls, 0);
    assert_int_equal(ea->merged[1].feedback, 0);
    assert_int_equal(ea->dropped, 4); /* 3 pulls, 1 reward */

    /* Counting goes on from zero, under the new epoch. */
    store_pull(a, ea, 0);
    SETTLE(f, a, ea);
    redisReply *r = cmd(f, "HGET %s pulls", key);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_string_equal(r->str, "1");
    freeReplyObject(r);
    assert_int_equal(ea->merged[0].pulls, 1);
}

/* Redis lost its data (restarted empty, flushed) and then another
 * instance reset the experiment. The epoch must be one no instance knows:
 * counted again from 0 it was 1 again, which a's write, counted before
 * that reset and carrying epoch 1 from before the loss, passed for its
 * own, adding those increments to the emptied hashes, and a never noticed
 * the reset. b runs on a loop of its own, so that its reset is written
 * before a's next write, whatever their timers do. */
static void test_an_epoch_never_comes_back_after_redis_lost_its_data(void **state)
{
    fx_t *f = *state;
    uv_loop_t lb;
    assert_int_equal(uv_loop_init(&lb), 0);
    cfg_store_t cfg = {.type = STORE_REDIS, .port = f->port, .sync_ms = 20};
    snprintf(cfg.host, sizeof(cfg.host), "127.0.0.1");
    snprintf(cfg.prefix, sizeof(cfg.prefix), "%s", f->prefix);
    char err[256];
    store_t *b = store_create(&lb, &cfg, err, sizeof(err));
    assert_non_null(b);
    exp_state_t *eb = mk_exp(b, "recs");
#define RUN_B_UNTIL(cond)                                                                          \
    do {                                                                                           \
        uint64_t dl_ = mm_now_ms() + WAIT_MS;                                                      \
        while (!(cond) && mm_now_ms() < dl_) uv_run(&lb, UV_RUN_ONCE);                             \
    } while (0)
    char key[256], buf[64];
    snprintf(key, sizeof(key), "%s:{recs}:arm:champion", f->prefix);

    store_t *a = f->st[0] = mk_store(f, f->port, 20);
    exp_state_t *ea = mk_exp(a, "recs");
    store_pull(a, ea, 0);
    SETTLE(f, a, ea);
    RUN_B_UNTIL(store_exp_of(eb)->synced);
    store_reset(b, eb); /* a first reset, which a learns */
    RUN_B_UNTIL(ctl_field(f, "recs", "reset_epoch", buf, sizeof(buf)));
    RUN_UNTIL(f, store_resets(ea) == 1, WAIT_MS);
    assert_int_equal(store_resets(ea), 1);
    SETTLE(f, a, ea);

    freeReplyObject(cmd(f, "FLUSHALL"));
    for (int i = 0; i < 3; i++) store_pull(a, ea, 0); /* counted before b's reset */
    store_reset(b, eb);
    RUN_B_UNTIL(!store_exp_of(eb)->reset_pending && !store_exp_of(eb)->batch.active &&
                ctl_field(f, "recs", "reset_epoch", buf, sizeof(buf)));
    assert_true(ctl_field(f, "recs", "reset_epoch", buf, sizeof(buf)));

    RUN_UNTIL(f, store_resets(ea) == 2, WAIT_MS);
    assert_int_equal(store_resets(ea), 2);
    SETTLE(f, a, ea);
    assert_int_equal(integer(f, "HEXISTS %s pulls", key), 0);
    assert_int_equal(ea->merged[0].pulls, 0);
    assert_int_equal(ea->dropped, 3);
#undef RUN_B_UNTIL
    store_destroy(b);
    uv_run(&lb, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&lb), 0);
}

typedef struct {
    int calls, found;
    store_reqinfo_t info;
} lookup_result_t;

static void on_lookup(void *arg, int found, const store_reqinfo_t *info)
{
    lookup_result_t *r = arg;
    r->calls++;
    r->found = found;
    if (found) r->info = *info;
}

static void test_lookup_of_an_id_remembered_by_the_other_instance(void **state)
{
    fx_t *f = *state;
    store_t *a = f->st[0] = mk_store(f, f->port, 20);
    store_t *b = f->st[1] = mk_store(f, f->port, 20);
    exp_state_t *ea = mk_exp(a, "recs");
    RUN_UNTIL(f, store_up(a) && store_up(b), 2000);
    store_remember(a, MM_STR("req-0001"), "recs", "challenger", 30);
    SETTLE(f, a, ea);
    store_stats_t st;
    store_get_stats(a, &st);
    assert_int_equal(st.req_queued, 0);
    long long pttl = integer(f, "PTTL %s:req:req-0001", f->prefix);
    assert_true(pttl > 25000 && pttl <= 30000);

    lookup_result_t r = {0};
    store_lookup(b, MM_STR("req-0001"), on_lookup, &r);
    assert_int_equal(r.calls, 0); /* not local: asks Redis */
    RUN_UNTIL(f, r.calls == 1, 2000);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.found, 1);
    assert_string_equal(r.info.experiment, "recs");
    assert_string_equal(r.info.arm, "challenger");

    lookup_result_t u = {0};
    store_lookup(b, MM_STR("req-none"), on_lookup, &u);
    RUN_UNTIL(f, u.calls == 1, 2000);
    assert_int_equal(u.calls, 1);
    assert_int_equal(u.found, 0);

    /* Destroying the store answers lookups still in flight. */
    lookup_result_t d = {0};
    store_lookup(b, MM_STR("req-0001"), on_lookup, &d);
    store_destroy(b);
    f->st[1] = NULL;
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.found, 0);
}

/* A Redis that stops answering but keeps its socket open (SIGSTOP) is
 * dropped only after 5 s; a lookup for feedback must not wait that long. */
static void test_lookup_is_answered_within_a_second_while_redis_hangs(void **state)
{
    fx_t *f = *state;
    redis_proc_t *p = &f->own;
    own_redis(f);
    store_t *a = f->st[0] = mk_store(f, p->port, 20);
    store_t *b = f->st[1] = mk_store(f, p->port, 20);
    exp_state_t *ea = mk_exp(a, "recs");
    RUN_UNTIL(f, store_up(a) && store_up(b), 2000);
    store_remember(a, MM_STR("hang-1"), "recs", "challenger", 30);
    SETTLE(f, a, ea);

    kill(p->pid, SIGSTOP);
    lookup_result_t r = {0};
    uint64_t t0 = mm_now_ms();
    store_lookup(b, MM_STR("hang-1"), on_lookup, &r);
    RUN_UNTIL(f, r.calls == 1, 3000);
    uint64_t waited = mm_now_ms() - t0;
    print_message("      lookup answered after %llu ms with Redis stopped\n",
                  (unsigned long long)waited);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.found, 0);
    assert_true(waited < 1500);
    /* the next ones do not wait for the deadline again */
    lookup_result_t r2 = {0};
    store_lookup(b, MM_STR("hang-1"), on_lookup, &r2);
    assert_int_equal(r2.calls, 1);
    assert_int_equal(r2.found, 0);
    /* ids remembered locally still resolve at once */
    lookup_result_t r3 = {0};
    store_lookup(a, MM_STR("hang-1"), on_lookup, &r3);
    assert_int_equal(r3.calls, 1);
    assert_int_equal(r3.found, 1);

    kill(p->pid, SIGCONT); /* the late reply arrives: answered already, only freed */
    lookup_result_t r4 = {0};
    for (int i = 0; i < 80 && !r4.found; i++) { /* Redis answers again: found */
        memset(&r4, 0, sizeof(r4));
        store_lookup(b, MM_STR("hang-1"), on_lookup, &r4);
        RUN_UNTIL(f, r4.calls == 1, 2000);
        if (!r4.found) run_for(f, 100);
    }
    assert_int_equal(r4.found, 1);
    assert_int_equal(r.calls, 1);
}

/* ---- the feedback stream ---- */

typedef struct {
    store_t *s;
    int delivered;
    int applied;
    unsigned max_deliveries_seen;
    store_msg_t *deferred; /* answered later, as after an async lookup */
} stream_rx_t;

static void on_msg(void *arg, store_msg_t *m)
{
    stream_rx_t *rx = arg;
    rx->delivered++;
    if (store_msg_deliveries(m) > rx->max_deliveries_seen)
        rx->max_deliveries_seen = store_msg_deliveries(m);
    const char *reward = store_msg_field(m, "reward");
    const char *id = store_msg_field(m, "request_id");
    assert_non_null(id);
    if (strcmp(id, "later") == 0 && rx->deferred == NULL) {
        rx->deferred = m;
        return;
    }
    int ok = reward != NULL && strcmp(reward, "bad") != 0;
    if (ok) rx->applied++;
    store_msg_done(rx->s, m, ok);
}

static long long pending_count(fx_t *f)
{
    redisReply *r = cmd(f, "XPENDING %s:feedback modelmux", f->prefix);
    long long n = r->type == REDIS_REPLY_ARRAY && r->elements > 0 ? r->element[0]->integer : -1;
    freeReplyObject(r);
    return n;
}

static void xadd(fx_t *f, const char *id, const char *reward)
{
    redisReply *r = cmd(f, "XADD %s:feedback * request_id %s reward %s", f->prefix, id, reward);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    freeReplyObject(r);
}

static void test_stream_entries_delivered_and_only_applied_ones_acked(void **state)
{
    fx_t *f = *state;
    /* Written before any instance runs: the group starts at 0, so they count. */
    xadd(f, "r1", "1");
    xadd(f, "r2", "0.5");
    store_t *s = f->st[0] = mk_store(f, f->port, 20);
    stream_rx_t rx = {.s = s};
    store_stream_opts_t o = {.claim_idle_ms = 300, .max_deliveries = 3};
    assert_int_equal(store_stream_subscribe(s, on_msg, &rx, &o), 0);
    assert_int_equal(store_stream_subscribe(s, on_msg, &rx, &o), -1);
    RUN_UNTIL(f, rx.delivered == 2, 2000);
    xadd(f, "r3", "0");
    xadd(f, "r4", "bad");
    xadd(f, "r5", "bad");
    xadd(f, "later", "1");
    RUN_UNTIL(f, rx.delivered == 6, 2000);
    assert_int_equal(rx.delivered, 6);
    assert_int_equal(rx.applied, 3);
    assert_non_null(rx.deferred);
    store_stats_t st;
    RUN_UNTIL(f, (store_get_stats(s, &st), st.stream_acked == 3), 2000);
    assert_int_equal(st.stream_acked, 3);
    /* Not applied (and not yet answered) entries stay pending. */
    assert_int_equal(pending_count(f), 3);

    store_msg_done(s, rx.deferred, 1);
    RUN_UNTIL(f, (store_get_stats(s, &st), st.stream_acked == 4), 2000);
    assert_int_equal(pending_count(f), 2);

    /* The two bad ones are claimed again after 300 ms idle, and after the
     * third delivery acked unapplied, so they do not circulate forever. */
    RUN_UNTIL(f, (store_get_stats(s, &st), st.stream_dead == 2), 5000);
    assert_int_equal(st.stream_dead, 2);
    assert_int_equal(rx.max_deliveries_seen, 3);
    assert_int_equal(pending_count(f), 0);
    assert_int_equal(st.stream_delivered, 6 + 4);
    assert_int_equal(st.stream_acked, 4 + 2); /* dead ones are acknowledged too */
}

static long long stream_len(fx_t *f)
{
    redisReply *r = cmd(f, "XLEN %s:feedback", f->prefix);
    long long n = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    freeReplyObject(r);
    return n;
}

/* The id of the n-th entry (from 0) of the stream. */
static void entry_id(fx_t *f, int n, char *out, size_t outlen)
{
    redisReply *r = cmd(f, "XRANGE %s:feedback - + COUNT %d", f->prefix, n + 1);
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    assert_true(r->elements == (size_t)n + 1);
    snprintf(out, outlen, "%s", r->element[n]->element[0]->str);
    freeReplyObject(r);
}

static void test_entries_every_group_is_done_with_are_trimmed(void **state)
{
    fx_t *f = *state;
    /* Another application's group on the same stream, that reads later. */
    freeReplyObject(cmd(f, "XGROUP CREATE %s:feedback other 0 MKSTREAM", f->prefix));
    const char *ids[] = {"r1", "r2", "r3", "later", "r5"};
    char eid[5][64];
    for (int i = 0; i < 5; i++) xadd(f, ids[i], "1");
    for (int i = 0; i < 5; i++) entry_id(f, i, eid[i], sizeof(eid[i]));
    store_t *s = f->st[0] = mk_store(f, f->port, 20);
    stream_rx_t rx = {.s = s};
    store_stream_opts_t o = {.claim_idle_ms = 300, .max_deliveries = 3}; /* trims every 150 ms */
    assert_int_equal(store_stream_subscribe(s, on_msg, &rx, &o), 0);
    store_stats_t st;
    RUN_UNTIL(f, (store_get_stats(s, &st), st.stream_acked == 4), WAIT_MS);
    assert_int_equal(st.stream_acked, 4);
    run_for(f, 400);
    assert_int_equal(stream_len(f), 5); /* "other" has read nothing */

    /* "other" reads three and acknowledges the first: the second is pending. */
    freeReplyObject(cmd(f, "XREADGROUP GROUP other c COUNT 3 STREAMS %s:feedback >", f->prefix));
    freeReplyObject(cmd(f, "XACK %s:feedback other %s", f->prefix, eid[0]));
    RUN_UNTIL(f, (store_get_stats(s, &st), st.stream_trimmed == 1), WAIT_MS);
    run_for(f, 400);
    assert_int_equal(stream_len(f), 4);

    /* Without "other", our own pending entry ("later") is the oldest needed. */
    freeReplyObject(cmd(f, "XGROUP DESTROY %s:feedback other", f->prefix));
    RUN_UNTIL(f, stream_len(f) == 2, WAIT_MS);
    run_for(f, 400);
    assert_int_equal(stream_len(f), 2);
    char first[64];
    entry_id(f, 0, first, sizeof(first));
    assert_string_equal(first, eid[3]);

    /* Once it is acknowledged, only the last delivered entry is left. */
    store_msg_done(s, rx.deferred, 1);
    RUN_UNTIL(f, stream_len(f) == 1, WAIT_MS);
    assert_int_equal(stream_len(f), 1);
    /* The trim is done in Redis before its reply (which counts it) reaches
     * the loop: the length can be 1 while the count is still 3. */
    RUN_UNTIL(f, (store_get_stats(s, &st), st.stream_trimmed == 4), WAIT_MS);
    assert_int_equal(st.stream_trimmed, 4);
}

static void test_pending_entries_are_claimed_page_after_page(void **state)
{
    fx_t *f = *state;
    /* 20 entries a dead instance took and never acknowledged, all at once. */
    freeReplyObject(cmd(f, "XGROUP CREATE %s:feedback modelmux 0 MKSTREAM", f->prefix));
    for (int i = 0; i < 20; i++) xadd(f, "r", "1");
    freeReplyObject(
        cmd(f, "XREADGROUP GROUP modelmux dead COUNT 100 STREAMS %s:feedback >", f->prefix));
    assert_int_equal(pending_count(f), 20);
    store_t *s = f->st[0] = mk_store(f, f->port, 20);
    stream_rx_t rx = {.s = s};
    /* Two per page, a pass every 2 s: one page per pass would take 2 of
     * them every 2 s. */
    store_stream_opts_t o = {.count = 2, .claim_idle_ms = 4000, .max_deliveries = 3};
    assert_int_equal(store_stream_subscribe(s, on_msg, &rx, &o), 0);
    RUN_UNTIL(f, rx.delivered > 0, 8000); /* idle 4 s: the first page is claimed */
    assert_true(rx.delivered > 0);
    run_for(f, 1000); /* half a pass: the other pages follow round by round */
    assert_int_equal(rx.delivered, 20);
    assert_int_equal(rx.applied, 20);
    assert_int_equal(rx.max_deliveries_seen, 2);
    RUN_UNTIL(f, pending_count(f) == 0, 2000);
    assert_int_equal(pending_count(f), 0);
}

/* Entries applied as rewards; the most ever delivered and not acknowledged. */
typedef struct {
    store_t *s;
    exp_state_t *e;
    int delivered;
    size_t max_unacked;
} flood_rx_t;

static void on_flood(void *arg, store_msg_t *m)
{
    flood_rx_t *rx = arg;
    store_stats_t st;
    store_get_stats(rx->s, &st);
    size_t unacked = (size_t)(st.stream_delivered - st.stream_acked);
    if (unacked > rx->max_unacked) rx->max_unacked = unacked;
    rx->delivered++;
    store_reward(rx->s, rx->e, 0, 1.0, 1);
    store_msg_done(rx->s, m, 1);
}

/* A backlog is read page after page as long as there is room, and the next
 * round (which acknowledges what this one applied, after writing it) starts
 * at once: one page per round capped an instance at count / sync_ms (1 000
 * entries a second at the defaults). Here 3 000 entries, pages of 20 and at
 * most 200 unacknowledged, at one round a second: a page per round would
 * take 150 s; some 15 back-to-back rounds take a fraction of one. */
static void test_stream_backlog_is_read_without_waiting_for_the_tick(void **state)
{
    fx_t *f = *state;
    enum { N = 3000 };
    for (int i = 0; i < N; i++)
        redisAppendCommand(f->rc, "XADD %s:feedback * request_id r%d reward 1", f->prefix, i);
    for (int i = 0; i < N; i++) {
        redisReply *r = NULL;
        assert_int_equal(redisGetReply(f->rc, (void **)&r), REDIS_OK);
        freeReplyObject(r);
    }
    store_t *s = f->st[0] = mk_store(f, f->port, 1000);
    flood_rx_t rx = {.s = s, .e = mk_exp(s, "recs")};
    store_stream_opts_t o = {.count = 20, .max_inflight = 200};
    assert_int_equal(store_stream_subscribe(s, on_flood, &rx, &o), 0);
    store_stats_t st;
    RUN_UNTIL(f, (store_get_stats(s, &st), st.stream_acked == N), WAIT_MS);
    assert_int_equal(st.stream_acked, N);
    assert_int_equal(rx.delivered, N);
    assert_true(rx.max_unacked <= 200);
    assert_int_equal(pending_count(f), 0);
    assert_true(st.syncs < 40); /* N / max_inflight = 15 rounds, and a few */
    assert_true(arm_field(f, "recs", "champion", "feedback") == N);
}

static void test_lost_reply_is_retried_without_double_counting(void **state)
{
    fx_t *f = *state;
    store_t *s = f->st[0] = mk_store(f, f->port, 20);
    exp_state_t *e = mk_exp(s, "recs");
    RUN_UNTIL(f, store_exp_of(e)->synced, 2000);
    for (int i = 0; i < 100; i++) store_pull(s, e, 0);
    store_reward(s, e, 1, 0.5, 1);
    /* The next reply is "lost" after Redis applied the write. */
    store_redis_debug_lose_replies(s, 1);
    RUN_UNTIL(f, store_exp_of(e)->batch.failed, 2000);
    assert_true(store_exp_of(e)->batch.failed);
    for (int i = 0; i < 10; i++) store_pull(s, e, 0); /* during the retry */
    SETTLE(f, s, e);
    assert_true(arm_field(f, "recs", "champion", "pulls") == 110);
    assert_true(arm_field(f, "recs", "challenger", "successes") == 0.5);
    assert_int_equal(e->merged[0].pulls, 110);
    store_stats_t st;
    store_get_stats(s, &st);
    assert_true(st.sync_errors >= 1);
}

static void test_answers_are_pooled_in_the_lat_hashes(void **state)
{
    fx_t *f = *state;
    store_t *a = f->st[0] = mk_store(f, f->port, 20);
    store_t *b = f->st[1] = mk_store(f, f->port, 20);
    exp_state_t *ea = mk_exp(a, "recs"), *eb = mk_exp(b, "recs");
    RUN_UNTIL(f, store_up(a) && store_up(b), 2000);
    for (int i = 0; i < 30; i++) store_answer(a, ea, 0, 200, 10000);
    for (int i = 0; i < 5; i++) store_answer(a, ea, 0, 503, 20000);
    for (int i = 0; i < 2; i++) store_answer(a, ea, 0, 0, 2000000);
    for (int i = 0; i < 10; i++) store_answer(b, eb, 0, 200, 10000);
    for (int i = 0; i < 20; i++) store_answer(b, eb, 1, 200, 40000);
    /* Local at once, before any round: a policy sees its own answers. */
    assert_int_equal(view_answers(ea, 0), 37);
    SETTLE(f, a, ea);
    SETTLE(f, b, eb);
    SETTLE(f, a, ea);

    assert_int_equal(lat_field(f, "recs", "champion", "n"), 47);
    assert_int_equal(lat_field(f, "recs", "champion", "e"), 7);
    assert_int_equal(lat_bucket(f, "recs", "champion", 10000), 40);
    assert_int_equal(lat_bucket(f, "recs", "champion", 20000), 5);
    /* Sparse: n, e and the two buckets in use; no "e" where none failed. */
    assert_int_equal(integer(f, "HLEN %s:{recs}:lat:champion", f->prefix), 4);
    assert_int_equal(lat_field(f, "recs", "challenger", "n"), 20);
    assert_int_equal(integer(f, "HEXISTS %s:{recs}:lat:challenger e", f->prefix), 0);
    assert_int_equal(integer(f, "HLEN %s:{recs}:lat:challenger", f->prefix), 2);
    /* Both instances see every answer, all of it confirmed. */
    for (int k = 0; k < 2; k++) {
        const exp_state_t *e = k ? eb : ea;
        assert_int_equal(view_answers(e, 0), 47);
        assert_int_equal(e->answers[0].errors, 7);
        assert_int_equal(e->answers[0].samples, 45);
        assert_int_equal(view_bucket(e, 0, 10000), 40);
        assert_int_equal(view_answers(e, 1), 20);
        assert_int_equal(e->answers_local[0].answers, 0);
        double p99 = lathist_quantile2_us(e->answers[1].hist, e->answers_local[1].hist,
                                          e->answers[1].samples, 0.99);
        assert_true(fabs(p99 - 40000) < 40000 * 0.04);
    }
}

/* The policy's tally: each instance's counts reach Redis once (a lost reply
 * included), both see the sum; a reload to another definition counts in
 * that definition's fields from zero (deleting what they held: a reload
 * back to an earlier definition does not bring its old counts back), and a
 * reset deletes every definition's counts everywhere. */
static void test_tally_is_pooled_per_definition(void **state)
{
    fx_t *f = *state;
    store_t *a = f->st[0] = mk_store(f, f->port, 20);
    store_t *b = f->st[1] = mk_store(f, f->port, 20);
    exp_state_t *ea = mk_exp(a, "recs"), *eb = mk_exp(b, "recs");
    store_define(a, ea, 42, 0);
    store_define(b, eb, 42, 0);
    RUN_UNTIL(f, store_exp_of(ea)->synced && store_exp_of(eb)->synced, 2000);
    count(ea, "challenger|matches", 7);
    count(eb, "challenger|matches", 5);
    count(eb, "challenger|path|/score", 2);
    assert_int_equal(tally_of(ea, "challenger|matches"), 7); /* its own at once */
    store_redis_debug_lose_replies(a, 1);
    RUN_UNTIL(f, store_exp_of(ea)->batch.failed, 2000);
    count(ea, "challenger|matches", 1); /* during the retry */
    RUN_UNTIL(f,
              tally_of(ea, "challenger|matches") == 13 && tally_of(eb, "challenger|matches") == 13,
              3000);
    SETTLE(f, a, ea);
    SETTLE(f, b, eb);
    assert_int_equal(tally_field(f, "recs", 42, "challenger|matches"), 13);
    assert_int_equal(tally_field(f, "recs", 42, "challenger|path|/score"), 2);
    assert_int_equal(tally_of(ea, "challenger|matches"), 13);
    assert_int_equal(tally_of(ea, "challenger|path|/score"), 2);

    /* a is reloaded to another definition: from zero; b's stay. */
    store_define(a, ea, 43, 1);
    assert_int_equal(tally_of(ea, "challenger|matches"), 0);
    count(ea, "challenger|matches", 3);
    SETTLE(f, a, ea);
    SETTLE(f, b, eb);
    assert_int_equal(tally_field(f, "recs", 43, "challenger|matches"), 3);
    assert_int_equal(tally_field(f, "recs", 42, "challenger|matches"), 13);
    assert_int_equal(tally_of(ea, "challenger|matches"), 3);
    assert_int_equal(tally_of(eb, "challenger|matches"), 13);
    /* b follows: a arrived first and started the counts over; b adds to
     * them (a fleet's rolling reload, a --workers group's reload). */
    store_define(b, eb, 43, 1);
    assert_int_equal(tally_of(eb, "challenger|matches"), 0);
    SETTLE(f, b, eb);
    assert_int_equal(tally_of(eb, "challenger|matches"), 3);
    assert_int_equal(tally_field(f, "recs", 43, "challenger|matches"), 3);
    count(ea, "challenger|matches", 2);
    count(eb, "challenger|matches", 1);
    RUN_UNTIL(f, tally_of(ea, "challenger|matches") == 6 && tally_of(eb, "challenger|matches") == 6,
              2000);
    assert_int_equal(tally_of(eb, "challenger|matches"), 6);
    /* A reload back to the first definition starts it from zero too: the
     * experiment moved to another one since it was started over. */
    store_define(a, ea, 42, 1);
    assert_int_equal(tally_of(ea, "challenger|matches"), 0);
    SETTLE(f, a, ea);
    assert_int_equal(tally_of(ea, "challenger|matches"), 0);
    assert_int_equal(tally_field(f, "recs", 42, "challenger|matches"), 0);
    assert_int_equal(tally_field(f, "recs", 43, "challenger|matches"), 6);
    count(ea, "challenger|matches", 4);
    SETTLE(f, a, ea);
    store_define(b, eb, 42, 1); /* b arrives second: it keeps a's 4 */
    SETTLE(f, b, eb);
    assert_int_equal(tally_of(eb, "challenger|matches"), 4);
    assert_int_equal(tally_field(f, "recs", 42, "challenger|matches"), 4);

    /* A reset deletes the hash: every definition's counts, everywhere. */
    store_reset(b, eb);
    assert_int_equal(tally_of(eb, "challenger|matches"), 0);
    RUN_UNTIL(f, store_resets(ea) == 1 && tally_of(ea, "challenger|matches") == 0, 2000);
    assert_int_equal(tally_of(ea, "challenger|matches"), 0);
    SETTLE(f, b, eb);
    SETTLE(f, a, ea);
    assert_int_equal(integer(f, "EXISTS %s:{recs}:tally", f->prefix), 0);
}

static void test_reset_deletes_the_lat_hashes_everywhere(void **state)
{
    fx_t *f = *state;
    store_t *a = f->st[0] = mk_store(f, f->port, 20);
    store_t *b = f->st[1] = mk_store(f, f->port, 20);
    exp_state_t *ea = mk_exp(a, "recs"), *eb = mk_exp(b, "recs");
    for (int i = 0; i < 8; i++)
        store_answer(a, ea, 1, 500, 3000), store_answer(b, eb, 1, 200, 3000);
    RUN_UNTIL(f, view_answers(ea, 1) == 16 && view_answers(eb, 1) == 16, 2000);
    assert_int_equal(view_answers(eb, 1), 16);

    store_reset(b, eb);
    assert_int_equal(view_answers(eb, 1), 0);
    RUN_UNTIL(f, store_resets(ea) == 1 && view_answers(ea, 1) == 0, 2000);
    assert_int_equal(view_answers(ea, 1), 0);
    SETTLE(f, b, eb);
    assert_int_equal(integer(f, "EXISTS %s:{recs}:lat:challenger", f->prefix), 0);

    /* Counting starts again from zero everywhere. */
    store_answer(a, ea, 1, 200, 3000), store_answer(b, eb, 1, 503, 3000);
    RUN_UNTIL(f, view_answers(ea, 1) == 2 && view_answers(eb, 1) == 2, 2000);
    SETTLE(f, a, ea);
    SETTLE(f, b, eb);
    assert_int_equal(lat_field(f, "recs", "challenger", "n"), 2);
    assert_int_equal(lat_field(f, "recs", "challenger", "e"), 1);
    assert_int_equal(ea->answers[1].errors, 1);
}

static void test_lost_reply_counts_answers_once(void **state)
{
    fx_t *f = *state;
    store_t *s = f->st[0] = mk_store(f, f->port, 20);
    exp_state_t *e = mk_exp(s, "recs");
    RUN_UNTIL(f, store_exp_of(e)->synced, 2000);
    for (int i = 0; i < 100; i++) store_answer(s, e, 1, 200, 7000);
    store_redis_debug_lose_replies(s, 1);
    RUN_UNTIL(f, store_exp_of(e)->batch.failed, 2000);
    assert_true(store_exp_of(e)->batch.failed);
    /* The write in doubt is still part of the view, never counted twice. */
    assert_int_equal(view_answers(e, 1), 100);
    for (int i = 0; i < 10; i++) store_answer(s, e, 1, 503, 7000); /* during the retry */
    assert_int_equal(view_answers(e, 1), 110);
    SETTLE(f, s, e);
    assert_int_equal(lat_field(f, "recs", "challenger", "n"), 110);
    assert_int_equal(lat_field(f, "recs", "challenger", "e"), 10);
    assert_int_equal(lat_bucket(f, "recs", "challenger", 7000), 110);
    assert_int_equal(view_answers(e, 1), 110);
    assert_int_equal(e->answers[1].answers, 110);
    assert_int_equal(e->answers_local[1].answers, 0);
    assert_int_equal(view_bucket(e, 1, 7000), 110);
}

static void test_shutdown_flushes_what_is_pending(void **state)
{
    fx_t *f = *state;
    store_t *s = f->st[0] = mk_store(f, f->port, 60000); /* no timer round in this test */
    exp_state_t *e = mk_exp(s, "recs");
    RUN_UNTIL(f, store_exp_of(e)->synced, 2000); /* the round right after connecting */
    for (int i = 0; i < 42; i++) store_pull(s, e, 1);
    store_remember(s, MM_STR("flushed-at-exit"), "recs", "champion", 60);
    exp_control_t c = weights(1, 2);
    store_set_control(s, e, &c);
    g_done = 0;
    store_shutdown(s, 2000, on_done, NULL);
    RUN_UNTIL(f, g_done == 1, 3000);
    assert_int_equal(g_done, 1);
    assert_true(arm_field(f, "recs", "challenger", "pulls") == 42);
    assert_int_equal(integer(f, "EXISTS %s:req:flushed-at-exit", f->prefix), 1);
    char buf[64];
    assert_true(ctl_field(f, "recs", "version", buf, sizeof(buf)));
    assert_string_equal(buf, "2");
}

static void test_redis_absent_at_start_then_everything_is_written(void **state)
{
    fx_t *f = *state;
    redis_proc_t *p = &f->own;
    p->port = free_port();
    store_t *s = f->st[0] = mk_store(f, p->port, 20); /* nothing listens there */
    exp_state_t *e = mk_exp(s, "recs");
    assert_int_equal(store_up(s), 0);
    for (int i = 0; i < 50; i++) store_pull(s, e, 0);
    store_remember(s, MM_STR("early"), "recs", "challenger", 60);
    run_for(f, 300);
    assert_int_equal(store_up(s), 0);
    assert_int_equal(e->merged[0].pulls, 50); /* routing goes on with local state */
    lookup_result_t r = {0};
    store_lookup(s, MM_STR("early"), on_lookup, &r); /* the local map still answers */
    assert_int_equal(r.found, 1);

    assert_int_equal(redis_start(p), 0);
    redisContext *rc = sync_ctx(p->port);
    assert_non_null(rc);
    RUN_UNTIL(f, store_up(s), 3000);
    assert_int_equal(store_up(s), 1);
    SETTLE(f, s, e);
    redisReply *rep = redisCommand(rc, "HGET %s:{recs}:arm:champion pulls", f->prefix);
    assert_non_null(rep);
    assert_string_equal(rep->str, "50");
    freeReplyObject(rep);
    rep = redisCommand(rc, "GET %s:req:early", f->prefix);
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    assert_string_equal(rep->str, "recs challenger");
    freeReplyObject(rep);
    redisFree(rc);

    /* Shutdown while Redis is gone gives up at the deadline. */
    redis_kill(p, SIGKILL);
    store_pull(s, e, 0);
    RUN_UNTIL(f, !store_up(s), 3000);
    g_done = 0;
    uint64_t t0 = mm_now_ms();
    store_shutdown(s, 200, on_done, NULL);
    RUN_UNTIL(f, g_done == 1, 2000);
    assert_int_equal(g_done, 1);
    assert_true(mm_now_ms() - t0 < 1000);
}

/* The core ticks policies only once the control is known: a canary must not
 * publish its first step before Redis's control (say, promoted) was read. */
static void test_control_known_only_once_redis_was_read(void **state)
{
    fx_t *f = *state;
    redis_proc_t *p = &f->own;
    p->port = free_port();
    store_t *s = f->st[0] = mk_store(f, p->port, 20); /* nothing listens there yet */
    exp_state_t *e = mk_exp(s, "can");
    assert_int_equal(store_control_known(s, e), 0);
    run_for(f, 200);
    assert_int_equal(store_control_known(s, e), 0);

    assert_int_equal(redis_start(p), 0);
    redisContext *rc = sync_ctx(p->port);
    assert_non_null(rc);
    redisReply *rep =
        redisCommand(rc,
                     "HSET %s:{can}:control weights {\"challenger\":100} state promoted "
                     "canary_step 100 version 7",
                     f->prefix);
    assert_non_null(rep);
    freeReplyObject(rep);
    RUN_UNTIL(f, store_control_known(s, e), 3000);
    assert_int_equal(store_control_known(s, e), 1);
    assert_int_equal(e->control.state, EXP_PROMOTED); /* adopted in the same round */
    assert_true(e->control.canary_step == 100);
    assert_true(e->control.weights[0] == 0 && e->control.weights[1] == 100);
    assert_int_equal(e->control.version, 7);
    char v[32];
    run_for(f, 100);
    rep = redisCommand(rc, "HGET %s:{can}:control version", f->prefix);
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    snprintf(v, sizeof(v), "%s", rep->str);
    freeReplyObject(rep);
    assert_string_equal(v, "7"); /* nothing written over it */
    redisFree(rc);

    /* An experiment added later is known after its own first round. */
    exp_state_t *e2 = mk_exp(s, "later");
    assert_int_equal(store_control_known(s, e2), 0);
    RUN_UNTIL(f, store_control_known(s, e2), 3000);
    assert_int_equal(store_control_known(s, e2), 1);
}

/* canary_step as a deployment tool may write it (docs/store.md) is a
 * percent: a value outside [0, 100], or not a number, is ignored like bad
 * weights (the step stays where it was), so the view, the gauge and the
 * router never act on a step of 250, -3 or NaN. */
static void test_a_canary_step_outside_0_to_100_is_ignored(void **state)
{
    fx_t *f = *state;
    store_t *s = f->st[0] = mk_store(f, f->port, 20);
    exp_state_t *e = mk_exp(s, "can");
    RUN_UNTIL(f, store_control_known(s, e), 3000);
    redisContext *rc = sync_ctx(f->port);
    assert_non_null(rc);
    static const char *const steps[] = {"25", "250", "-3", "nan", "inf", "12abc", ""};
    uint64_t version = e->control.version;
    for (size_t i = 0; i < sizeof steps / sizeof *steps; i++) {
        char v[32];
        snprintf(v, sizeof v, "%llu", (unsigned long long)(version += 10));
        redisReply *rep = redisCommand(rc, "HSET %s:{can}:control canary_step %s version %s",
                                       f->prefix, steps[i], v);
        assert_non_null(rep);
        freeReplyObject(rep);
        RUN_UNTIL(f, e->control.version == version, 3000);
        assert_int_equal(e->control.version, version);
        if (e->control.canary_step != 25.0)
            fail_msg("canary_step \"%s\" read as %g", steps[i], e->control.canary_step);
    }
    redisFree(rc);
}

typedef struct {
    store_t *s;
    exp_state_t *e;
    uint64_t total;
} pump_t;

static void on_pump(uv_timer_t *t)
{
    pump_t *p = t->data;
    for (int i = 0; i < 3; i++, p->total++) store_pull(p->s, p->e, (int)(p->total % 2));
    if (p->total % 30 == 0) store_reward(p->s, p->e, 0, 1, 1);
}

static void test_redis_killed_and_restarted_loses_no_increment(void **state)
{
    fx_t *f = *state;
    redis_proc_t *p = &f->own;
    p->port = free_port();
    snprintf(p->dir, sizeof(p->dir), "/tmp/mm-store-aof-XXXXXX");
    assert_non_null(mkdtemp(p->dir));
    assert_int_equal(redis_start(p), 0);

    store_t *s = f->st[0] = mk_store(f, p->port, 10);
    exp_state_t *e = mk_exp(s, "recs");
    RUN_UNTIL(f, store_up(s), 2000);
    pump_t pump = {.s = s, .e = e};
    uv_timer_t pt;
    uv_timer_init(&f->loop, &pt);
    pt.data = &pump;
    uv_timer_start(&pt, on_pump, 1, 1);

    run_for(f, 300);
    redis_kill(p, SIGKILL); /* mid-run: a round may be in flight */
    RUN_UNTIL(f, !store_up(s), 3000);
    assert_int_equal(store_up(s), 0);
    store_remember(s, MM_STR("during-outage"), "recs", "champion", 60);
    run_for(f, 300);
    assert_int_equal(redis_start(p), 0); /* same port, same AOF */
    RUN_UNTIL(f, store_up(s), 6000);
    assert_int_equal(store_up(s), 1);
    run_for(f, 300);
    uv_timer_stop(&pt);
    uv_close((uv_handle_t *)&pt, NULL);
    SETTLE(f, s, e);

    redisContext *rc = sync_ctx(p->port);
    assert_non_null(rc);
    redisContext *keep = f->rc;
    f->rc = rc;
    double got =
        arm_field(f, "recs", "champion", "pulls") + arm_field(f, "recs", "challenger", "pulls");
    double fb = arm_field(f, "recs", "champion", "feedback");
    assert_int_equal(integer(f, "EXISTS %s:req:during-outage", f->prefix), 1);
    f->rc = keep;
    redisFree(rc);
    print_message("      %llu increments, %.0f in Redis after a kill and restart\n",
                  (unsigned long long)pump.total, got);
    assert_true(got == (double)pump.total);
    assert_true(fb == (double)(pump.total / 30));
    assert_int_equal(e->merged[0].pulls + e->merged[1].pulls, pump.total);
    store_stats_t st;
    store_get_stats(s, &st);
    assert_true(st.reconnects >= 1);
}

/* Redis restarted without its data: the statistics every instance had read
 * are written back once (by whichever instance writes first), not lost and
 * not counted twice; increments made meanwhile are added on top. */
static void test_redis_restarted_empty_gets_the_statistics_back(void **state)
{
    fx_t *f = *state;
    redis_proc_t *p = &f->own;
    own_redis(f); /* no persistence */
    store_t *a = f->st[0] = mk_store(f, p->port, 20);
    store_t *b = f->st[1] = mk_store(f, p->port, 20);
    exp_state_t *ea = mk_exp(a, "recs"), *eb = mk_exp(b, "recs");
    store_define(a, ea, 9, 0);
    store_define(b, eb, 9, 0);
    count(ea, "challenger|mismatches", 4);
    count(eb, "challenger|mismatches", 2);
    for (int i = 0; i < 40; i++) store_pull(a, ea, 0), store_pull(b, eb, 1);
    for (int i = 0; i < 10; i++) store_reward(a, ea, 0, 0.5, 1), store_reward(b, eb, 1, 1, 1);
    for (int i = 0; i < 12; i++) store_answer(a, ea, 0, 200, 9000), store_answer(b, eb, 1, 0, 9000);
    exp_control_t c = weights(30, 70);
    store_set_control(a, ea, &c);
    RUN_UNTIL(f, ea->merged[1].pulls == 40 && eb->merged[0].pulls == 40 && eb->control.version == 2,
              2000);
    SETTLE(f, a, ea);
    SETTLE(f, b, eb);

    /* 2, or 1 when a's change reached Redis before b's seed of the config
     * (the seed then finds a control and writes none) */
    char ver[64];
    redisContext *keep = f->rc;
    f->rc = sync_ctx(p->port);
    assert_non_null(f->rc);
    assert_true(ctl_field(f, "recs", "version", ver, sizeof(ver)));
    redisFree(f->rc);
    f->rc = keep;
    unsigned long long v0 = strtoull(ver, NULL, 10);
    assert_true(v0 == 1 || v0 == 2);
    assert_int_equal(ea->control.version, v0);
    assert_int_equal(eb->control.version, v0);

    redis_kill(p, SIGKILL);
    RUN_UNTIL(f, !store_up(a) && !store_up(b), 3000);
    for (int i = 0; i < 5; i++) store_pull(a, ea, 0), store_pull(b, eb, 0);
    for (int i = 0; i < 3; i++) store_answer(a, ea, 0, 200, 9000);
    count(eb, "challenger|mismatches", 1);
    assert_int_equal(redis_start(p), 0); /* same port, empty */
    RUN_UNTIL(f, store_up(a) && store_up(b), 6000);
    SETTLE(f, a, ea);
    SETTLE(f, b, eb);

    f->rc = sync_ctx(p->port);
    assert_non_null(f->rc);
    assert_true(arm_field(f, "recs", "champion", "pulls") == 50);
    assert_true(arm_field(f, "recs", "challenger", "pulls") == 40);
    assert_true(arm_field(f, "recs", "champion", "feedback") == 10);
    assert_true(arm_field(f, "recs", "champion", "reward_sum") == 5);
    assert_true(arm_field(f, "recs", "champion", "failures") == 5);
    assert_true(arm_field(f, "recs", "challenger", "successes") == 10);
    assert_weights(f, "recs", "{\"champion\":30,\"challenger\":70}");
    /* The control's version goes on from the one the instances knew: it
     * started over at 1, older than what everyone had seen. */
    assert_true(ctl_field(f, "recs", "version", ver, sizeof(ver)));
    assert_int_equal(strtoull(ver, NULL, 10), v0 + 1);
    assert_int_equal(ea->control.version, v0 + 1);
    assert_int_equal(eb->control.version, v0 + 1);
    /* The answer hashes too: the snapshot back once, the new answers on top. */
    assert_int_equal(lat_field(f, "recs", "champion", "n"), 15);
    assert_int_equal(lat_bucket(f, "recs", "champion", 9000), 15);
    assert_int_equal(lat_field(f, "recs", "challenger", "n"), 12);
    assert_int_equal(lat_field(f, "recs", "challenger", "e"), 12);
    assert_int_equal(tally_field(f, "recs", 9, "challenger|mismatches"), 7); /* and the tally */
    for (int k = 0; k < 2; k++) {
        exp_state_t *e = k ? eb : ea;
        assert_int_equal(tally_of(e, "challenger|mismatches"), 7);
        assert_int_equal(view_answers(e, 0), 15);
        assert_int_equal(view_answers(e, 1), 12);
        assert_int_equal(e->merged[0].pulls, 50);
        assert_int_equal(e->merged[1].pulls, 40);
        assert_true(e->merged[1].successes == 10);
        assert_true(e->control.weights[1] == 70);
        assert_int_equal(store_resets(e), 0);
    }

    /* Only the control hash gone (the arm hashes are there): re-seeded, and
     * nothing is written back on top of the statistics. */
    freeReplyObject(cmd(f, "DEL %s:{recs}:control", f->prefix));
    char buf[64];
    RUN_UNTIL(f, ctl_field(f, "recs", "version", buf, sizeof(buf)), 2000);
    SETTLE(f, a, ea);
    SETTLE(f, b, eb);
    assert_true(arm_field(f, "recs", "champion", "pulls") == 50);
    assert_true(arm_field(f, "recs", "challenger", "successes") == 10);
    assert_int_equal(ea->merged[0].pulls, 50);
    assert_true(ctl_field(f, "recs", "version", buf, sizeof(buf)));
    /* re-seeded above the version known (v0 + 1), not at 1 */
    assert_int_equal(strtoull(buf, NULL, 10), v0 + 2);
    RUN_UNTIL(f, ea->control.version == v0 + 2 && eb->control.version == v0 + 2, 2000);
    assert_int_equal(ea->control.version, v0 + 2);
    assert_int_equal(eb->control.version, v0 + 2);
    redisFree(f->rc);
    f->rc = keep;
}

/* A reload's settings for store s (as mk_store made it): at port, prefix. */
static void move_store(store_t *s, int port, const char *prefix, int sync_ms)
{
    cfg_store_t cfg = {.type = STORE_REDIS, .port = port, .sync_ms = sync_ms};
    snprintf(cfg.host, sizeof(cfg.host), "127.0.0.1");
    snprintf(cfg.prefix, sizeof(cfg.prefix), "%s", prefix);
    store_reconfigure(s, &cfg, NULL);
}

/* A reload that points the store at another Redis: what this instance
 * learned is written there (the new Redis has none of it), increments
 * counted during the move included, and the old one is left alone. */
static void test_reload_moves_the_store_with_what_it_learned(void **state)
{
    fx_t *f = *state;
    int other = own_redis(f);
    store_t *a = f->st[0] = mk_store(f, f->port, 20);
    exp_state_t *ea = mk_exp(a, "recs");
    for (int i = 0; i < 40; i++) store_pull(a, ea, 0);
    for (int i = 0; i < 10; i++) store_reward(a, ea, 1, 1, 1);
    for (int i = 0; i < 12; i++) store_answer(a, ea, 0, 200, 9000);
    exp_control_t c = weights(30, 70);
    store_set_control(a, ea, &c);
    RUN_UNTIL(f, store_up(a) && ea->control.version == 2, WAIT_MS);
    SETTLE(f, a, ea);

    move_store(a, other, f->prefix, 20);
    for (int i = 0; i < 5; i++) store_pull(a, ea, 0);
    RUN_UNTIL(f, store_up(a), WAIT_MS);
    SETTLE(f, a, ea);

    assert_true(arm_field(f, "recs", "champion", "pulls") == 40); /* the old Redis: as it was */
    redisContext *keep = f->rc;
    f->rc = sync_ctx(other);
    assert_non_null(f->rc);
    assert_true(arm_field(f, "recs", "champion", "pulls") == 45);
    assert_true(arm_field(f, "recs", "challenger", "successes") == 10);
    assert_int_equal(lat_field(f, "recs", "champion", "n"), 12);
    assert_weights(f, "recs", "{\"champion\":30,\"challenger\":70}");
    assert_int_equal(ea->merged[0].pulls, 45);
    assert_int_equal(view_answers(ea, 0), 12);
    assert_true(ea->control.weights[1] == 70);
    assert_int_equal(store_resets(ea), 0);
    assert_int_equal(ea->dropped, 0);
    redisFree(f->rc);
    f->rc = keep;
}

/* A reload to a prefix that already holds the experiment, reset there once
 * (its reset epoch 1, ours 0): the instance adopts that state and adds its
 * new increments to it. The other epoch is the place's own, not a reset,
 * so nothing local is dropped; and the new prefix is where it writes. */
static void test_reload_to_a_prefix_with_state_adopts_it(void **state)
{
    fx_t *f = *state;
    char other[sizeof(f->prefix)];
    snprintf(other, sizeof(other), "%.50s-other", f->prefix);
    cfg_store_t cfg = {.type = STORE_REDIS, .port = f->port, .sync_ms = 20};
    snprintf(cfg.host, sizeof(cfg.host), "127.0.0.1");
    snprintf(cfg.prefix, sizeof(cfg.prefix), "%s", other);
    char err[256];
    store_t *b = f->st[1] = store_create(&f->loop, &cfg, err, sizeof(err));
    assert_non_null(b);
    exp_state_t *eb = mk_exp(b, "recs");
    for (int i = 0; i < 7; i++) store_pull(b, eb, 1);
    RUN_UNTIL(f, store_up(b), WAIT_MS);
    SETTLE(f, b, eb);
    store_reset(b, eb);
    for (int i = 0; i < 3; i++) store_pull(b, eb, 1);
    SETTLE(f, b, eb);

    store_t *a = f->st[0] = mk_store(f, f->port, 20);
    exp_state_t *ea = mk_exp(a, "recs");
    for (int i = 0; i < 40; i++) store_pull(a, ea, 0);
    RUN_UNTIL(f, store_up(a), WAIT_MS);
    SETTLE(f, a, ea);

    move_store(a, f->port, other, 20);
    for (int i = 0; i < 2; i++) store_pull(a, ea, 0);
    SETTLE(f, a, ea);
    assert_int_equal(ea->merged[0].pulls, 2);
    assert_int_equal(ea->merged[1].pulls, 3);
    assert_int_equal(store_resets(ea), 0);
    assert_int_equal(ea->dropped, 0);
    assert_true(arm_field(f, "recs", "champion", "pulls") == 40); /* the old prefix */
    char keep[sizeof(f->prefix)];
    snprintf(keep, sizeof(keep), "%s", f->prefix);
    snprintf(f->prefix, sizeof(f->prefix), "%s", other);
    assert_true(arm_field(f, "recs", "champion", "pulls") == 2);
    assert_true(arm_field(f, "recs", "challenger", "pulls") == 3);
    snprintf(f->prefix, sizeof(f->prefix), "%s", keep);
    SETTLE(f, b, eb);
    assert_int_equal(eb->merged[0].pulls, 2); /* the other instance sees them */
}

/* A reload's sync_ms applies at once; the same settings do not reconnect. */
static void test_reload_changes_sync_ms_and_keeps_the_connection(void **state)
{
    fx_t *f = *state;
    store_t *a = f->st[0] = mk_store(f, f->port, 5000);
    exp_state_t *ea = mk_exp(a, "recs");
    RUN_UNTIL(f, store_up(a) && store_exp_of(ea)->synced, WAIT_MS);
    store_stats_t st0;
    store_get_stats(a, &st0);
    move_store(a, f->port, f->prefix, 10);
    uint64_t s0 = syncs(a);
    RUN_UNTIL(f, syncs(a) >= s0 + 5, WAIT_MS); /* a 5 s interval would take 25 s */
    assert_true(syncs(a) >= s0 + 5);
    store_stats_t st1;
    store_get_stats(a, &st1);
    assert_int_equal(st1.reconnects, st0.reconnects);
    assert_true(store_up(a));
}

static store_t *mk_memory_store(fx_t *f)
{
    cfg_store_t cfg = {.type = STORE_MEMORY};
    char err[256];
    store_t *s = store_create(&f->loop, &cfg, err, sizeof(err));
    assert_non_null(s);
    return s;
}

/* Instances a and b of "recs" on f's own Redis (no persistence; f->rc
 * talks to it from now on), with what they counted written and read back
 * by both: 40 + 40 pulls, 10 + 10 rewards, 12 + 12 answers, 6 tally counts
 * and the weights 30/70. */
static void two_synced_instances(fx_t *f, exp_state_t **ea, exp_state_t **eb)
{
    own_redis(f);
    redisFree(f->rc);
    f->rc = sync_ctx(f->own.port);
    assert_non_null(f->rc);
    store_t *a = f->st[0] = mk_store(f, f->own.port, 20);
    store_t *b = f->st[1] = mk_store(f, f->own.port, 20);
    *ea = mk_exp(a, "recs");
    *eb = mk_exp(b, "recs");
    store_define(a, *ea, 9, 0);
    store_define(b, *eb, 9, 0);
    count(*ea, "challenger|mismatches", 4);
    count(*eb, "challenger|mismatches", 2);
    for (int i = 0; i < 40; i++) store_pull(a, *ea, 0), store_pull(b, *eb, 1);
    for (int i = 0; i < 10; i++) store_reward(a, *ea, 0, 0.5, 1), store_reward(b, *eb, 1, 1, 1);
    for (int i = 0; i < 12; i++)
        store_answer(a, *ea, 0, 200, 9000), store_answer(b, *eb, 1, 0, 9000);
    exp_control_t c = weights(30, 70);
    store_set_control(a, *ea, &c);
    RUN_UNTIL(f,
              (*ea)->merged[1].pulls == 40 && (*eb)->merged[0].pulls == 40 &&
                  (*eb)->control.version == 2,
              WAIT_MS);
    SETTLE(f, a, *ea);
    SETTLE(f, b, *eb);
}

/* Holds the rounds of store s (a reload to the same place with a long
 * sync_ms), or lets them run again. */
static void hold_rounds(fx_t *f, store_t *s, int hold)
{
    move_store(s, f->own.port, f->prefix, hold ? 600000 : 20);
    if (hold) run_for(f, 100); /* a round already started ends */
}

/* Redis loses its data (FLUSHALL), and a new instance c of "recs" (the
 * config's weights, 90/10) writes first, with `pulls` pulls of the
 * champion. */
static exp_state_t *loss_then_new_instance(fx_t *f, int pulls)
{
    freeReplyObject(cmd(f, "FLUSHALL"));
    store_t *c = f->st[2] = mk_store(f, f->own.port, 20);
    exp_state_t *ec = mk_exp(c, "recs");
    store_define(c, ec, 9, 0);
    for (int i = 0; i < pulls; i++) store_pull(c, ec, 0);
    RUN_UNTIL(f, store_up(c), WAIT_MS);
    SETTLE(f, c, ec);
    assert_true(arm_field(f, "recs", "champion", "pulls") == pulls);
    assert_weights(f, "recs", "{\"champion\":90,\"challenger\":10}");
    return ec;
}

/* Redis lost its data and a new instance, started meanwhile with no
 * snapshot, writes first: it seeds its configured control and its own
 * counts. The instances that held the fleet's state then write it back
 * anyway (once: the best snapshot wins, one as old as the one restored or
 * older adds nothing), and its control too, which no operator changed
 * since the loss. */
static void test_redis_restarted_empty_a_new_instance_first_loses_nothing(void **state)
{
    fx_t *f = *state;
    exp_state_t *ea, *eb;
    two_synced_instances(f, &ea, &eb);
    store_t *a = f->st[0], *b = f->st[1];
    /* b stops syncing: its snapshot gets old while a counts on */
    hold_rounds(f, b, 1);
    for (int i = 0; i < 5; i++) store_pull(a, ea, 1);
    SETTLE(f, a, ea);
    hold_rounds(f, a, 1);

    exp_state_t *ec = loss_then_new_instance(f, 3);
    store_t *c = f->st[2];

    /* the old snapshot first, then the newer one: each adds what it has
     * beyond the one restored before it */
    store_pull(b, eb, 0);
    hold_rounds(f, b, 0);
    SETTLE(f, b, eb);
    assert_true(arm_field(f, "recs", "champion", "pulls") == 44);
    assert_true(arm_field(f, "recs", "challenger", "pulls") == 40);
    hold_rounds(f, a, 0);
    SETTLE(f, a, ea);
    SETTLE(f, b, eb);
    SETTLE(f, c, ec);
    assert_true(arm_field(f, "recs", "champion", "pulls") == 44);
    assert_true(arm_field(f, "recs", "challenger", "pulls") == 45);
    assert_true(arm_field(f, "recs", "champion", "feedback") == 10);
    assert_true(arm_field(f, "recs", "champion", "reward_sum") == 5);
    assert_true(arm_field(f, "recs", "challenger", "successes") == 10);
    assert_int_equal(lat_field(f, "recs", "champion", "n"), 12);
    assert_int_equal(lat_bucket(f, "recs", "champion", 9000), 12);
    assert_int_equal(lat_field(f, "recs", "challenger", "e"), 12);
    assert_int_equal(tally_field(f, "recs", 9, "challenger|mismatches"), 6);
    assert_weights(f, "recs", "{\"champion\":30,\"challenger\":70}");
    for (int k = 0; k < 3; k++) {
        exp_state_t *e = k == 0 ? ea : k == 1 ? eb : ec;
        assert_int_equal(e->merged[0].pulls, 44);
        assert_int_equal(e->merged[1].pulls, 45);
        assert_int_equal(view_answers(e, 1), 12);
        assert_int_equal(tally_of(e, "challenger|mismatches"), 6);
        assert_true(e->control.weights[1] == 70);
    }
    /* and from now on the instances only add */
    store_pull(b, eb, 0);
    SETTLE(f, b, eb);
    SETTLE(f, a, ea);
    assert_true(arm_field(f, "recs", "champion", "pulls") == 45);
}

/* An operator's change made after the loss (here on the instance that
 * seeded) is not undone by the snapshot restored after it: the statistics
 * come back, the control stays the operator's. */
static void test_redis_restarted_empty_keeps_a_control_changed_since(void **state)
{
    fx_t *f = *state;
    exp_state_t *ea, *eb;
    two_synced_instances(f, &ea, &eb);
    store_t *a = f->st[0], *b = f->st[1];
    hold_rounds(f, a, 1);
    hold_rounds(f, b, 1);
    exp_state_t *ec = loss_then_new_instance(f, 0);
    store_t *c = f->st[2];
    exp_control_t w = weights(50, 50);
    store_set_control(c, ec, &w);
    SETTLE(f, c, ec);
    hold_rounds(f, a, 0);
    hold_rounds(f, b, 0);
    SETTLE(f, a, ea);
    SETTLE(f, b, eb);
    SETTLE(f, c, ec);
    assert_true(arm_field(f, "recs", "champion", "pulls") == 40);
    assert_true(arm_field(f, "recs", "challenger", "pulls") == 40);
    assert_weights(f, "recs", "{\"champion\":50,\"challenger\":50}");
    assert_true(ea->control.weights[0] == 50 && eb->control.weights[0] == 50);
}

/* Another instance (f->st[1]) on f's Redis and prefix that routed `pulls`
 * requests to the challenger of "recs" and set its weights, all written. */
static exp_state_t *other_instance(fx_t *f, int pulls, exp_control_t c)
{
    store_t *b = f->st[1] = mk_store(f, f->port, 20);
    exp_state_t *eb = mk_exp(b, "recs");
    for (int i = 0; i < pulls; i++) store_pull(b, eb, 1);
    store_set_control(b, eb, &c);
    RUN_UNTIL(f, store_up(b), WAIT_MS);
    SETTLE(f, b, eb);
    return eb;
}

/* A reload from the memory store to Redis: what the process learned (the
 * statistics, the answers, the operator's weights) is written to Redis,
 * and the store goes on there. */
static void test_reload_from_memory_to_redis_carries_the_state(void **state)
{
    fx_t *f = *state;
    store_t *a = f->st[0] = mk_memory_store(f);
    exp_state_t *ea = mk_exp(a, "recs");
    store_define(a, ea, 5, 0);
    for (int i = 0; i < 30; i++) store_pull(a, ea, 0);
    for (int i = 0; i < 8; i++) store_reward(a, ea, 1, 1, 1);
    for (int i = 0; i < 6; i++) store_answer(a, ea, 1, 503, 2000);
    count(ea, "challenger|errors", 6);
    exp_control_t c = weights(30, 70);
    store_set_control(a, ea, &c);

    move_store(a, f->port, f->prefix, 20);
    assert_string_equal(store_kind(a), "redis");
    store_pull(a, ea, 0);
    count(ea, "challenger|errors", 1);
    RUN_UNTIL(f, store_up(a), WAIT_MS);
    SETTLE(f, a, ea);
    assert_true(arm_field(f, "recs", "champion", "pulls") == 31);
    assert_true(arm_field(f, "recs", "challenger", "successes") == 8);
    assert_true(arm_field(f, "recs", "challenger", "feedback") == 8);
    assert_int_equal(lat_field(f, "recs", "challenger", "n"), 6);
    assert_int_equal(lat_field(f, "recs", "challenger", "e"), 6);
    assert_int_equal(tally_field(f, "recs", 5, "challenger|errors"), 7);
    assert_int_equal(tally_of(ea, "challenger|errors"), 7);
    assert_weights(f, "recs", "{\"champion\":30,\"challenger\":70}");
    assert_int_equal(ea->merged[0].pulls, 31);
    assert_int_equal(view_answers(ea, 1), 6);
    assert_true(ea->control.weights[1] == 70);
    assert_int_equal(store_resets(ea), 0);
}

/* From memory to a Redis that has the experiment (another instance's):
 * its state is adopted, as a new instance adopts it. */
static void test_reload_from_memory_to_a_redis_with_state_adopts_it(void **state)
{
    fx_t *f = *state;
    other_instance(f, 9, weights(50, 50));
    store_t *a = f->st[0] = mk_memory_store(f);
    exp_state_t *ea = mk_exp(a, "recs");
    for (int i = 0; i < 30; i++) store_pull(a, ea, 0);
    move_store(a, f->port, f->prefix, 20);
    store_pull(a, ea, 0);
    RUN_UNTIL(f, store_up(a), WAIT_MS);
    SETTLE(f, a, ea);
    assert_int_equal(ea->merged[0].pulls, 1);
    assert_int_equal(ea->merged[1].pulls, 9);
    assert_true(ea->control.weights[0] == 50);
    assert_true(arm_field(f, "recs", "champion", "pulls") == 1);
    assert_int_equal(store_resets(ea), 0);
}

/* From memory to a Redis with the operator's weights, in a reload that
 * also redefined the experiment: the config's control wins there, as a
 * redefinition on Redis does (DESIGN.md §5); it was Redis's that stayed.
 * A reload moves the store before it redefines (server.c), as here. And
 * the feedback stream subscribed while in memory is consumed once there. */
static void test_reload_from_memory_with_a_redefinition_writes_the_config_control(void **state)
{
    fx_t *f = *state;
    exp_state_t *eb = other_instance(f, 0, weights(10, 90));
    store_t *b = f->st[1];
    store_t *a = f->st[0] = mk_memory_store(f);
    exp_state_t *ea = mk_exp(a, "recs");
    stream_rx_t rx = {.s = a};
    assert_int_equal(store_stream_subscribe(a, on_msg, &rx, NULL), 0);
    move_store(a, f->port, f->prefix, 20);
    exp_control_t cfg = weights(60, 40);
    assert_ptr_equal(store_experiment(a, "recs", ARMS, 2, &cfg, 1), ea);
    freeReplyObject(cmd(f, "XADD %s:feedback * request_id r1 reward 1", f->prefix));
    RUN_UNTIL(f, rx.applied == 1 && pending_count(f) == 0, WAIT_MS);
    assert_int_equal(rx.delivered, 1);
    assert_int_equal(rx.applied, 1);
    assert_int_equal(pending_count(f), 0);
    RUN_UNTIL(f, store_up(a), WAIT_MS);
    SETTLE(f, a, ea);
    assert_weights(f, "recs", "{\"champion\":60,\"challenger\":40}");
    assert_true(ea->control.weights[0] == 60);
    SETTLE(f, b, eb);
    assert_true(eb->control.weights[0] == 60);
}

/* A reload from Redis to the memory store takes a restart: the store stays
 * on Redis and goes on writing there. */
static void test_reload_from_redis_to_memory_stays_on_redis(void **state)
{
    fx_t *f = *state;
    store_t *a = f->st[0] = mk_store(f, f->port, 20);
    exp_state_t *ea = mk_exp(a, "recs");
    RUN_UNTIL(f, store_up(a), WAIT_MS);
    cfg_store_t mem = {.type = STORE_MEMORY};
    store_reconfigure(a, &mem, NULL);
    assert_string_equal(store_kind(a), "redis");
    for (int i = 0; i < 4; i++) store_pull(a, ea, 1);
    SETTLE(f, a, ea);
    assert_true(arm_field(f, "recs", "challenger", "pulls") == 4);
}

static void test_hung_redis_is_dropped_and_nothing_counts_twice(void **state)
{
    fx_t *f = *state;
    redis_proc_t *p = &f->own;
    own_redis(f);
    store_t *s = f->st[0] = mk_store(f, p->port, 20);
    exp_state_t *e = mk_exp(s, "recs");
    RUN_UNTIL(f, store_up(s), 2000);
    for (int i = 0; i < 100; i++) store_pull(s, e, 0);
    SETTLE(f, s, e);

    /* Stopped, not dead: the socket stays open, replies never come. The
     * round sent now reaches Redis and is applied when it resumes, after we
     * gave up on it: the retry must be recognised as a duplicate. */
    kill(p->pid, SIGSTOP);
    for (int i = 0; i < 50; i++) store_pull(s, e, 0);
    uint64_t t0 = mm_now_ms();
    RUN_UNTIL(f, !store_up(s), 8000);
    assert_int_equal(store_up(s), 0);
    print_message("      hung Redis detected after %llu ms\n",
                  (unsigned long long)(mm_now_ms() - t0));
    for (int i = 0; i < 25; i++) store_pull(s, e, 0);
    kill(p->pid, SIGCONT);
    RUN_UNTIL(f, store_up(s), 8000);
    assert_int_equal(store_up(s), 1);
    SETTLE(f, s, e);
    redisContext *rc = sync_ctx(p->port);
    assert_non_null(rc);
    redisReply *rep = redisCommand(rc, "HGET %s:{recs}:arm:champion pulls", f->prefix);
    assert_non_null(rep);
    assert_string_equal(rep->str, "175");
    freeReplyObject(rep);
    redisFree(rc);
    assert_int_equal(e->merged[0].pulls, 175);
}

/* The pull on arm 0 is sent and its reply not yet in. */
static int in_flight(exp_state_t *e)
{
    const store_batch_t *b = &store_exp_of(e)->batch;
    return b->active && !b->failed && b->deltas[0].pulls == 1;
}

static void test_experiment_removed_while_its_write_is_in_flight(void **state)
{
    fx_t *f = *state;
    store_t *s = f->st[0] = mk_store(f, f->port, 20);
    exp_state_t *keep = mk_exp(s, "recs");
    exp_state_t *gone = mk_exp(s, "gone");
    RUN_UNTIL(f, store_up(s), 2000);
    store_pull(s, gone, 0);
    RUN_UNTIL(f, in_flight(gone), 2000);
    assert_true(in_flight(gone));
    store_retain(s, only_recs, NULL); /* its reply is still on the way */
    assert_non_null(s->detached);
    store_pull(s, keep, 1);
    SETTLE(f, s, keep);
    assert_null(s->detached); /* freed when the reply came */
    assert_true(arm_field(f, "gone", "champion", "pulls") == 1);

    /* And once more, destroying the store with the reply outstanding. */
    gone = mk_exp(s, "gone");
    store_pull(s, gone, 0);
    RUN_UNTIL(f, in_flight(gone), 2000);
    store_retain(s, only_recs, NULL);
    store_destroy(s);
    f->st[0] = NULL;
}

/* ---- per-request data (PREFIX:il:ID) and arbitrary deltas ---- */

typedef struct {
    int calls, found;
    char data[128];
} aux_result_t;

static void on_aux(void *arg, int found, const char *data, size_t n)
{
    aux_result_t *r = arg;
    r->calls++;
    r->found = found;
    r->data[0] = '\0';
    if (found) snprintf(r->data, sizeof(r->data), "%.*s", (int)n, data);
}

static void put_aux(store_t *s, const char *id, const char *data, int ttl_s)
{
    store_put_aux(s, (mm_str_t){id, strlen(id)}, data, strlen(data), ttl_s);
}

static uint64_t aux_queued(const store_t *s)
{
    store_stats_t st;
    store_get_stats(s, &st);
    return st.aux_queued;
}

/* Everything put so far is written and confirmed. */
#define AUX_SETTLE(f, s)                                                                           \
    do {                                                                                           \
        uint64_t s0_ = syncs(s);                                                                   \
        RUN_UNTIL(f, aux_queued(s) == 0 && syncs(s) >= s0_ + 2, 3000);                             \
        assert_int_equal(aux_queued(s), 0);                                                        \
    } while (0)

/* Read as a click would; `sync` says whether the answer must come at once. */
static aux_result_t get_aux(fx_t *f, store_t *s, const char *id, int sync)
{
    aux_result_t r = {0};
    store_get_aux(s, (mm_str_t){id, strlen(id)}, on_aux, &r);
    assert_int_equal(r.calls, sync ? 1 : 0);
    RUN_UNTIL(f, r.calls == 1, 2000);
    assert_int_equal(r.calls, 1);
    return r;
}

static void redis_str(fx_t *f, const char *key_suffix, char *out, size_t n)
{
    redisReply *r = cmd(f, "GET %s:%s", f->prefix, key_suffix);
    snprintf(out, n, "%s", r->type == REDIS_REPLY_STRING ? r->str : "(nil)");
    freeReplyObject(r);
}

static void test_add_writes_negative_and_integer_deltas(void **state)
{
    fx_t *f = *state;
    store_t *s = f->st[0] = mk_store(f, f->port, 20);
    exp_state_t *e = mk_exp(s, "il");
    RUN_UNTIL(f, store_up(s), 2000);
    /* An impression's first click, won by the champion ... */
    arm_stats_t first = {.feedback = 1, .reward_sum = 1, .reward_sq_sum = 1, .successes = 1};
    arm_stats_t also = {.feedback = 1};
    store_add(s, e, 0, &first);
    store_add(s, e, 1, &also);
    SETTLE(f, s, e);
    assert_true(arm_field(f, "il", "champion", "successes") == 1);
    /* ... then a click for the challenger makes it a tie. */
    arm_stats_t tie = {.successes = -1, .failures = 1};
    arm_stats_t b_click = {.reward_sum = 1, .reward_sq_sum = 1, .pulls = 2, .errors = 1};
    store_add(s, e, 0, &tie);
    store_add(s, e, 1, &b_click);
    SETTLE(f, s, e);
    assert_true(arm_field(f, "il", "champion", "successes") == 0);
    assert_true(arm_field(f, "il", "champion", "failures") == 1);
    assert_true(arm_field(f, "il", "champion", "feedback") == 1);
    assert_true(arm_field(f, "il", "champion", "reward_sum") == 1);
    assert_true(arm_field(f, "il", "challenger", "feedback") == 1);
    assert_true(arm_field(f, "il", "challenger", "reward_sum") == 1);
    assert_true(arm_field(f, "il", "challenger", "pulls") == 2);
    assert_true(arm_field(f, "il", "challenger", "errors") == 1);
    assert_true(e->merged[0].successes == 0 && e->merged[0].failures == 1);
}

static void test_aux_written_and_read_by_every_instance(void **state)
{
    fx_t *f = *state;
    store_t *a = f->st[0] = mk_store(f, f->port, 20);
    store_t *b = f->st[1] = mk_store(f, f->port, 20);
    RUN_UNTIL(f, store_up(a) && store_up(b), 2000);
    char buf[128];

    /* Not yet confirmed by Redis: the writer answers from its own map. */
    put_aux(a, "imp-1", "v1", 30);
    assert_string_equal(get_aux(f, a, "imp-1", 1).data, "v1");
    AUX_SETTLE(f, a);
    redis_str(f, "il:imp-1", buf, sizeof(buf));
    assert_string_equal(buf, "v1");
    long long pttl = integer(f, "PTTL %s:il:imp-1", f->prefix);
    assert_true(pttl > 25000 && pttl <= 30000);

    /* Another instance reads it from Redis. */
    aux_result_t r = get_aux(f, b, "imp-1", 0);
    assert_int_equal(r.found, 1);
    assert_string_equal(r.data, "v1");
    assert_int_equal(get_aux(f, b, "imp-none", 0).found, 0);

    /* Once confirmed, the writer asks Redis too: a newer version written
     * by another instance wins over its own copy. */
    put_aux(b, "imp-1", "v2 from b", 30);
    AUX_SETTLE(f, b);
    r = get_aux(f, a, "imp-1", 0);
    assert_string_equal(r.data, "v2 from b");

    /* A local rewrite not yet written is newer than anything in Redis. */
    put_aux(a, "imp-1", "v3", 30);
    assert_string_equal(get_aux(f, a, "imp-1", 1).data, "v3");
    AUX_SETTLE(f, a);
    redis_str(f, "il:imp-1", buf, sizeof(buf));
    assert_string_equal(buf, "v3");

    /* Redis lost it (flushed, evicted): the local copy still answers. */
    freeReplyObject(cmd(f, "DEL %s:il:imp-1", f->prefix));
    r = get_aux(f, a, "imp-1", 0);
    assert_int_equal(r.found, 1);
    assert_string_equal(r.data, "v3");

    /* A read still in flight when the store goes is answered. */
    aux_result_t d = {0};
    store_get_aux(b, MM_STR("imp-1"), on_aux, &d);
    assert_int_equal(d.calls, 0);
    store_destroy(b);
    f->st[1] = NULL;
    assert_int_equal(d.calls, 1);
}

/* A click as feedback.c makes one: append `add` to the version seen, unless
 * it is already there (then code 7: nothing to write). */
typedef struct {
    const char *add;
    int rewrites, dones, code;
    char last_seen[128];
} upd_t;

static int upd_rewrite(void *arg, const char *data, size_t n, mm_buf_t *out)
{
    upd_t *u = arg;
    u->rewrites++;
    snprintf(u->last_seen, sizeof(u->last_seen), "%.*s", (int)n, data);
    if (strstr(u->last_seen, u->add) != NULL) return 7;
    mm_buf_append(out, data, n);
    mm_buf_cstr(out, u->add);
    return STORE_AUX_WRITE;
}

static void upd_done(void *arg, int code)
{
    upd_t *u = arg;
    u->dones++;
    u->code = code;
}

static void update(store_t *s, const char *id, upd_t *u)
{
    store_update_aux(s, (mm_str_t){id, strlen(id)}, 30, upd_rewrite, upd_done, u);
}

static void test_aux_updates_at_two_instances_both_count(void **state)
{
    fx_t *f = *state;
    store_t *a = f->st[0] = mk_store(f, f->port, 20);
    store_t *b = f->st[1] = mk_store(f, f->port, 20);
    RUN_UNTIL(f, store_up(a) && store_up(b), 2000);
    char buf[128];

    /* A version only this instance has (not sent yet) changes at once. */
    put_aux(a, "imp-1", "v", 30);
    upd_t u0 = {.add = "+0"};
    update(a, "imp-1", &u0);
    assert_int_equal(u0.dones, 1);
    assert_int_equal(u0.code, STORE_AUX_WRITE);
    AUX_SETTLE(f, a);
    redis_str(f, "il:imp-1", buf, sizeof(buf));
    assert_string_equal(buf, "v+0");

    /* Both instances change it at the same moment (a from its own copy, b
     * from a GET): whichever order Redis sees, neither change is lost. */
    aux_result_t r = get_aux(f, b, "imp-1", 0);
    assert_string_equal(r.data, "v+0");
    upd_t ua = {.add = "+a"}, ub = {.add = "+b"};
    update(a, "imp-1", &ua);
    update(b, "imp-1", &ub);
    RUN_UNTIL(f, ua.dones == 1 && ub.dones == 1, 2000);
    assert_int_equal(ua.code, STORE_AUX_WRITE);
    assert_int_equal(ub.code, STORE_AUX_WRITE);
    redis_str(f, "il:imp-1", buf, sizeof(buf));
    assert_true(strcmp(buf, "v+0+a+b") == 0 || strcmp(buf, "v+0+b+a") == 0);
    long long pttl = integer(f, "PTTL %s:il:imp-1", f->prefix);
    assert_true(pttl > 25000 && pttl <= 30000);

    /* The instance that wrote first holds a stale copy now: its
     * compare-and-set fails and runs again on Redis's version (2 rewrites);
     * a click already made changes nothing. */
    upd_t again = {.add = "+a"};
    update(b, "imp-1", &again);
    RUN_UNTIL(f, again.dones == 1, 2000);
    assert_int_equal(again.code, 7);
    upd_t more = {.add = "+c"};
    update(strcmp(buf, "v+0+a+b") == 0 ? a : b, "imp-1", &more); /* the stale one */
    RUN_UNTIL(f, more.dones == 1, 2000);
    assert_int_equal(more.code, STORE_AUX_WRITE);
    assert_int_equal(more.rewrites, 2);
    redis_str(f, "il:imp-1", buf, sizeof(buf));
    assert_true(strstr(buf, "+a") && strstr(buf, "+b") && strstr(buf, "+c"));

    /* Nothing anywhere: not found, nothing written. */
    upd_t none = {.add = "+x"};
    update(b, "imp-none", &none);
    RUN_UNTIL(f, none.dones == 1, 2000);
    assert_int_equal(none.code, STORE_AUX_NOT_FOUND);
    assert_int_equal(none.rewrites, 0);
    assert_int_equal(integer(f, "EXISTS %s:il:imp-none", f->prefix), 0);

    /* Redis lost it, but this instance holds a version: it is written back. */
    freeReplyObject(cmd(f, "DEL %s:il:imp-1", f->prefix));
    upd_t back = {.add = "+d"};
    update(a, "imp-1", &back);
    RUN_UNTIL(f, back.dones == 1, 2000);
    assert_int_equal(back.code, STORE_AUX_WRITE);
    redis_str(f, "il:imp-1", buf, sizeof(buf));
    assert_non_null(strstr(buf, "+d"));

    /* An update in flight when the store goes is answered. */
    upd_t gone = {.add = "+e"};
    update(b, "imp-1", &gone);
    assert_int_equal(gone.dones, 0);
    store_destroy(b);
    f->st[1] = NULL;
    assert_int_equal(gone.dones, 1);
    assert_int_equal(gone.code, STORE_AUX_NOT_FOUND);
}

static void test_aux_versions_reach_redis_in_order(void **state)
{
    fx_t *f = *state;
    store_t *s = f->st[0] = mk_store(f, f->port, 20);
    RUN_UNTIL(f, store_up(s), 2000);
    char id[32], data[32], buf[128];
    /* Several rewrites of each id within one round, interleaved. */
    for (int v = 1; v <= 5; v++)
        for (int i = 0; i < 50; i++) {
            snprintf(id, sizeof(id), "imp-%d", i);
            snprintf(data, sizeof(data), "%d:v%d", i, v);
            put_aux(s, id, data, 60);
        }
    AUX_SETTLE(f, s);
    for (int i = 0; i < 50; i++) {
        snprintf(id, sizeof(id), "il:imp-%d", i);
        snprintf(data, sizeof(data), "%d:v5", i);
        redis_str(f, id, buf, sizeof(buf));
        assert_string_equal(buf, data);
    }
}

static void test_aux_waits_for_redis_and_its_queue_is_bounded(void **state)
{
    fx_t *f = *state;
    redis_proc_t *p = &f->own;
    p->port = free_port();
    store_t *s = f->st[0] = mk_store(f, p->port, 20); /* nothing listens there */
    char id[32];
    for (unsigned i = 0; i < STORE_AUX_QUEUE_DEFAULT + 5; i++) {
        snprintf(id, sizeof(id), "imp-%u", i);
        put_aux(s, id, id, 60);
    }
    store_stats_t st;
    store_get_stats(s, &st);
    assert_int_equal(st.aux_queued, STORE_AUX_QUEUE_DEFAULT);
    assert_int_equal(st.aux_dropped, 5);
    /* Redis is down: the local map answers at once, the dropped ones too. */
    assert_string_equal(get_aux(f, s, "imp-7", 1).data, "imp-7");
    snprintf(id, sizeof(id), "imp-%u", STORE_AUX_QUEUE_DEFAULT + 4);
    assert_string_equal(get_aux(f, s, id, 1).data, id);

    assert_int_equal(redis_start(p), 0);
    RUN_UNTIL(f, store_up(s), 3000);
    assert_int_equal(store_up(s), 1);
    RUN_UNTIL(f, aux_queued(s) == 0, 10000);
    assert_int_equal(aux_queued(s), 0);
    redisContext *rc = sync_ctx(p->port);
    assert_non_null(rc);
    redisReply *rep = redisCommand(rc, "DBSIZE");
    assert_int_equal(rep->integer, STORE_AUX_QUEUE_DEFAULT);
    freeReplyObject(rep);
    rep = redisCommand(rc, "GET %s:il:imp-99999", f->prefix);
    assert_string_equal(rep->str, "imp-99999");
    freeReplyObject(rep);
    redisFree(rc);
}

static void test_aux_refused_writes_are_sent_again_in_order(void **state)
{
    fx_t *f = *state;
    redis_proc_t *p = &f->own;
    own_redis(f);
    redisContext *rc = sync_ctx(p->port);
    assert_non_null(rc);
    store_t *s = f->st[0] = mk_store(f, p->port, 20);
    RUN_UNTIL(f, store_up(s), 2000);
    /* Redis refuses every write (OOM) for a while. */
    freeReplyObject(redisCommand(rc, "CONFIG SET maxmemory-policy noeviction"));
    freeReplyObject(redisCommand(rc, "CONFIG SET maxmemory 1"));
    put_aux(s, "imp-a", "a1", 60);
    put_aux(s, "imp-b", "b1", 60);
    put_aux(s, "imp-a", "a2", 60);
    uint64_t s0 = syncs(s);
    RUN_UNTIL(f, syncs(s) >= s0 + 3, 2000);
    assert_int_equal(aux_queued(s), 2); /* a1 was superseded by a2 before it was sent */
    /* Not confirmed: the local versions answer at once. */
    assert_string_equal(get_aux(f, s, "imp-a", 1).data, "a2");
    put_aux(s, "imp-b", "b2", 60);
    freeReplyObject(redisCommand(rc, "CONFIG SET maxmemory 0"));
    AUX_SETTLE(f, s);
    redisReply *rep = redisCommand(rc, "MGET %s:il:imp-a %s:il:imp-b", f->prefix, f->prefix);
    assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
    assert_string_equal(rep->element[0]->str, "a2");
    assert_string_equal(rep->element[1]->str, "b2");
    freeReplyObject(rep);
    redisFree(rc);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    if (getenv("MM_TEST_FILTER")) cmocka_set_test_filter(getenv("MM_TEST_FILTER"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_counters_are_exact_in_redis_after_a_flush, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_two_instances_see_each_others_increments, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_policy_changes_are_compare_and_set, setup, teardown),
        cmocka_unit_test_setup_teardown(test_each_control_change_bumps_the_version, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_control_change_reaches_the_other_instance, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_an_operator_change_keeps_the_fields_it_did_not_change,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_control_survives_a_restart_unless_redefined, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_reset_reaches_every_instance, setup, teardown),
        cmocka_unit_test_setup_teardown(test_increments_counted_before_another_reset_are_dropped,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_an_epoch_never_comes_back_after_redis_lost_its_data,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_lookup_of_an_id_remembered_by_the_other_instance,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_lookup_is_answered_within_a_second_while_redis_hangs,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_entries_delivered_and_only_applied_ones_acked,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_entries_every_group_is_done_with_are_trimmed, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_pending_entries_are_claimed_page_after_page, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_stream_backlog_is_read_without_waiting_for_the_tick,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_lost_reply_is_retried_without_double_counting, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_answers_are_pooled_in_the_lat_hashes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tally_is_pooled_per_definition, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reset_deletes_the_lat_hashes_everywhere, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_lost_reply_counts_answers_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shutdown_flushes_what_is_pending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_control_known_only_once_redis_was_read, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_a_canary_step_outside_0_to_100_is_ignored, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_redis_absent_at_start_then_everything_is_written,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_killed_and_restarted_loses_no_increment, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_redis_restarted_empty_a_new_instance_first_loses_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_restarted_empty_keeps_a_control_changed_since,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_restarted_empty_gets_the_statistics_back, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_reload_moves_the_store_with_what_it_learned, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_reload_to_a_prefix_with_state_adopts_it, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_reload_changes_sync_ms_and_keeps_the_connection, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_reload_from_memory_to_redis_carries_the_state, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_reload_from_memory_to_a_redis_with_state_adopts_it,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_reload_from_memory_with_a_redefinition_writes_the_config_control, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reload_from_redis_to_memory_stays_on_redis, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_hung_redis_is_dropped_and_nothing_counts_twice, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_experiment_removed_while_its_write_is_in_flight, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_add_writes_negative_and_integer_deltas, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_aux_written_and_read_by_every_instance, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_aux_updates_at_two_instances_both_count, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_aux_versions_reach_redis_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_aux_refused_writes_are_sent_again_in_order, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_aux_waits_for_redis_and_its_queue_is_bounded, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
