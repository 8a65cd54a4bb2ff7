/* main.c — the modelmux command line (DESIGN.md §2).
 *
 *   modelmux [-c FILE] [--check] [--workers N] [--seed N] [--version] [--help]
 *
 * With --workers N the parent forks N workers that each bind the listen
 * ports with SO_REUSEPORT and run their own event loop; the parent only
 * forwards signals and waits. Workers share experiment state through the
 * Redis store; with the memory store the parent provides a private one. */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "addr.h"
#include "keep.h"
#include "log.h"
#include "reqlog.h"
#include "scrape.h"
#include "server_main.h"

#define DEFAULT_CONFIG "config/modelmux.json"

static void usage(FILE *f)
{
    fprintf(f, "usage: modelmux [-c FILE] [--check] [--workers N] [--seed N] [--version] "
               "[--help]\n"
               "  -c FILE      configuration file (default " DEFAULT_CONFIG ")\n"
               "  --check      validate the configuration, look up its host names and open\n"
               "               its request log as startup does, and exit (0 ok, 1 with\n"
               "               FILE:LINE:COL: message)\n"
               "  --workers N  run N worker processes sharing the listen ports; they share "
               "state\n"
               "               through the redis store (with the memory store, through a "
               "private\n"
               "               redis-server that modelmux starts and stops)\n"
               "  --seed N     seed every random choice (reproducible runs)\n"
               "  --version    print the version\n"
               "  --help       this text\n"
               "  (--opt=VALUE and -cFILE work too)\n"
               "signals: SIGHUP reloads the configuration (and reopens the request log),\n"
               "         SIGUSR1 reopens the request log, SIGTERM/SIGINT drain and exit\n");
}

/* A bad command line: the reason and the usage on stderr; exit status 2. */
static int usage_error(const char *fmt, ...) MM_PRINTF(1, 2);
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "modelmux: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    usage(stderr);
    return 2;
}

/* argv[*i] is option `name` with a value: "NAME VALUE", "--name=VALUE", or
 * for a short option "-cVALUE". Returns 1 with *val (NULL when the value is
 * missing) and *i on the value's word; 0 when argv[*i] is another option. */
static int option(int argc, char **argv, int *i, const char *name, const char **val)
{
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, name, n) != 0) return 0;
    if (a[n] == '\0') {
        *val = *i + 1 < argc ? argv[++*i] : NULL;
        return 1;
    }
    int short_opt = name[1] != '-';
    if (a[n] == '=' && !short_opt) {
        *val = a + n + 1;
        return 1;
    }
    if (short_opt) {
        *val = a + n;
        return 1;
    }
    return 0;
}

/* Digits only: strtoull alone also takes leading spaces and a sign, and
 * wraps a negative number (" -18446744073709551614" would be 2). */
static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    if (!isdigit((unsigned char)s[0])) return -1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end) return -1;
    *out = v;
    return 0;
}

/* A worker's place in a --workers group: its private scrape listener
 * (bound and listening, inherited) and every worker's port. */
typedef struct {
    int n, self, fd;
    const int *ports;
} group_t;

/* reload (taken; may be NULL): a worker started in place of one that
 * crashed after the group reloaded: the config the group reloaded to, which
 * it starts from instead of cfg (see run_workers). keep: the group's
 * (keep.h), or NULL. */
static int run_worker(const char *path, config_t *cfg, uint64_t seed, int reuseport,
                      const cfg_store_t *store_override, const group_t *grp, config_t *reload,
                      mm_keep_t *keep)
{
    uv_loop_t loop;
    mm_server_t srv;
    char err[4096];
    uv_loop_init(&loop);
    int replaced = reload != NULL;
    if (replaced) {
        /* In place of a crashed worker: serve what the siblings serve since
         * their reloads, from the start: their listen and admin addresses
         * (another process may hold the start config's by now), their
         * request log (the start config's may not open any more), their
         * upstreams (a host the start config names may no longer resolve).
         * cfg is this process's copy of the parent's start config. */
        config_free(cfg);
        cfg = reload;
    }
    if (server_start(&srv, &loop, path, cfg, seed, reuseport, store_override, err, sizeof(err)) !=
        0) {
        fprintf(stderr, "modelmux: %s\n", err);
        if (srv.router == NULL) config_free(cfg);
        server_free(&srv);
        /* What it opened closes here (the request log, the store's
         * handles), so a failed start frees everything, as a stop does. */
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_loop_close(&loop);
        return 1;
    }
    /* Handlers in place (server_start): what was blocked since the fork
     * (fork_worker) may come now. */
    server_lifecycle_signals(SIG_UNBLOCK, 0, NULL);
    srv.keep = keep;
    if (grp &&
        scrape_group_start(&srv, grp->n, grp->self, grp->fd, grp->ports, err, sizeof(err)) != 0) {
        /* Serve anyway: only /metrics loses the siblings' counters. */
        mm_log("metrics: worker %d cannot join the group's scrapes: %s", grp->self, err);
    }
    const config_t *c = server_config(&srv);
    char data[300], admin[300];
    cfg_addr_str(&c->listen, data, sizeof(data));
    if (c->has_admin)
        mm_log("listening on %s, admin on %s, store %s", data,
               cfg_addr_str(&c->admin_listen, admin, sizeof(admin)), store_kind(srv.store));
    else
        mm_log("listening on %s, store %s", data, store_kind(srv.store));
    /* Said as a reload would say it: the worker serves the config the
     * group reloaded to (logs and tests follow each worker's reloads). */
    if (replaced)
        mm_log("config reloaded from %s (the group's last reload: this worker started on it)",
               path);
    uv_run(&loop, UV_RUN_DEFAULT);
    scrape_keep_final(&srv);
    int code = srv.exit_code;
    server_free(&srv);
    /* Anything left (closing handles) gets its close callbacks here. */
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    mm_log("stopped");
    return code;
}

/* ---- descriptors ----
 *
 * Every client connection takes a descriptor, and so does every upstream
 * connection (at most `pool` per upstream). The soft RLIMIT_NOFILE is often
 * 1024 while max_connections defaults to 10000; past it accept() fails with
 * EMFILE, libuv then accepts and closes the waiting connections with no
 * answer at all (not the 503 of max_connections), and connects to model
 * servers fail as 502s of healthy upstreams. So the soft limit is raised to
 * the hard one at start, as Go's runtime and HAProxy do (the hard limit is
 * the administrator's word), and a limit still below what the config can
 * use is logged, as nginx warns when worker_connections exceed it. */
#define FD_RESERVE 256 /* listeners, Redis, the request log, admin, 503s past max_connections */

static void raise_fd_limit(const config_t *cfg)
{
    unsigned long long need = (unsigned long long)cfg->limits.max_connections + FD_RESERVE;
    for (size_t i = 0; i < cfg->n_upstreams; i++)
        need += (unsigned long long)cfg->upstreams[i].pool;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
    if (rl.rlim_cur < rl.rlim_max) {
        struct rlimit want = rl;
        want.rlim_cur = rl.rlim_max;
        /* An unlimited hard limit is still capped by fs.nr_open: then ask
         * for what the config needs. */
        if (setrlimit(RLIMIT_NOFILE, &want) != 0 && rl.rlim_cur < need) {
            want.rlim_cur = need < rl.rlim_max ? (rlim_t)need : rl.rlim_max;
            (void)setrlimit(RLIMIT_NOFILE, &want);
        }
        if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
    }
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need)
        mm_log("warning: the open file limit is %llu, but max_connections and the upstream pools "
               "can use %llu descriptors: past the limit new connections are closed without an "
               "answer (raise ulimit -n, or LimitNOFILE under systemd)",
               (unsigned long long)rl.rlim_cur, need);
}

/* ---- the private Redis behind --workers with the memory store ----
 * Workers are separate processes; for them to act as one on the zero-setup
 * memory store, the parent starts a redis-server of its own on a free
 * loopback port, without persistence (state lives as long as modelmux, as
 * with the memory store), points every worker's store at it, and stops it by
 * PID when the workers are gone. */
static pid_t private_redis_pid;
static int private_redis_port;
static uint64_t private_redis_started; /* mm_now_ms: monotonic, a clock step cannot fool it */

static int free_loopback_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static int port_accepts(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return 0;
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return ok;
}

/* fork(), the child dying with modelmux (a SIGTERM when the parent goes):
 * a worker or the private redis-server never outlives it. A parent that
 * died between the fork and the prctl would send nothing, so the child
 * checks it is still the one that forked it. */
static pid_t fork_child(void)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent) _exit(1);
    }
    return pid;
}

#define REDIS_NOT_RUN 127 /* the child's exit status when exec failed */

/* Run redis-server on 127.0.0.1:port and wait (up to 5 s) until it accepts;
 * its pid, or -1 with why (for a human). */
static pid_t spawn_redis(int port, char *why, size_t whylen)
{
    char portstr[16];
    snprintf(portstr, sizeof(portstr), "%d", port);
    pid_t pid = fork_child();
    if (pid < 0) {
        snprintf(why, whylen, "fork: %s", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        /* A restart comes from the workers' parent, which runs with the
         * lifecycle signals blocked: exec keeps the mask, and a redis-server
         * deaf to SIGTERM would never stop. */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        /* A process group of its own: a Ctrl-C (SIGINT to the terminal's
         * foreground group) must not stop it before the workers' drain has
         * written their last counts to it; the parent stops it after them. */
        setpgid(0, 0);
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) {
            dup2(null, STDIN_FILENO);
            dup2(null, STDOUT_FILENO);
            /* Only the copies are redis-server's; the original would stay
             * open in it for its whole life (fd 3, no CLOEXEC). */
            if (null > STDOUT_FILENO) close(null);
        }
        execlp("redis-server", "redis-server", "--port", portstr, "--bind", "127.0.0.1", "--save",
               "", "--appendonly", "no", "--dir", "/tmp", (char *)NULL);
        fprintf(stderr, "modelmux: cannot run redis-server: %s\n", strerror(errno));
        _exit(REDIS_NOT_RUN);
    }
    for (int i = 0; i < 100; i++) { /* up to 5 s */
        if (port_accepts(port)) return pid;
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            /* An installed redis-server that fails (a version that rejects an
             * option, no memory) is told apart from a missing one: its own
             * message went to its stdout, which is /dev/null. */
            if (WIFEXITED(st) && WEXITSTATUS(st) == REDIS_NOT_RUN)
                snprintf(why, whylen, "redis-server could not be run (not installed?)");
            else
                snprintf(why, whylen,
                         "redis-server %s %d at its start (to see why, run: redis-server "
                         "--port %d --bind 127.0.0.1 --save '' --appendonly no --dir /tmp)",
                         WIFSIGNALED(st) ? "was killed by signal" : "exited with status",
                         WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st), port);
            return -1;
        }
        usleep(50000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    snprintf(why, whylen, "redis-server did not accept connections on 127.0.0.1:%d within 5 s",
             port);
    return -1;
}

static int start_private_redis(cfg_store_t *out, char *why, size_t whylen)
{
    int port = free_loopback_port();
    if (port <= 0) {
        snprintf(why, whylen, "no free loopback port: %s", strerror(errno));
        return -1;
    }
    pid_t pid = spawn_redis(port, why, whylen);
    if (pid < 0) return -1;
    private_redis_pid = pid;
    private_redis_port = port;
    private_redis_started = mm_now_ms();
    memset(out, 0, sizeof(*out));
    out->type = STORE_REDIS;
    snprintf(out->host, sizeof(out->host), "127.0.0.1");
    out->port = port;
    snprintf(out->prefix, sizeof(out->prefix), "modelmux");
    out->sync_ms = 20; /* one machine: keep the workers tightly in step */
    return 0;
}

/* The private redis-server died (reaped by the workers' parent). Start a new
 * one on the same port, as a worker is replaced: the workers reconnect on
 * their own, and the first to write finds it empty and restores the last
 * snapshot it read (store_redis.c), so the group keeps what it learned but
 * the last sync interval. One that dies within a second of its start is not
 * restarted again (a crash loop: the port taken, a broken install). */
static void private_redis_died(int status)
{
    int quick = mm_now_ms() - private_redis_started < 1000;
    private_redis_pid = 0;
    mm_log("private redis-server on 127.0.0.1:%d %s %d", private_redis_port,
           WIFSIGNALED(status) ? "killed by signal" : "exited with status",
           WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
    if (quick) {
        mm_log("private redis-server died within a second of its start: not restarted; the "
               "workers route on their last state until modelmux is restarted");
        return;
    }
    char why[512];
    pid_t pid = spawn_redis(private_redis_port, why, sizeof(why));
    if (pid < 0) {
        mm_log("private redis-server: cannot restart it on 127.0.0.1:%d (%s); the workers route "
               "on their last state until modelmux is restarted",
               private_redis_port, why);
        return;
    }
    private_redis_pid = pid;
    private_redis_started = mm_now_ms();
    mm_log("private redis-server restarted on 127.0.0.1:%d (pid %d)", private_redis_port, (int)pid);
}

static void stop_private_redis(void)
{
    if (private_redis_pid <= 0) return;
    kill(private_redis_pid, SIGTERM);
    waitpid(private_redis_pid, NULL, 0);
    private_redis_pid = 0;
}

/* Signals to forward, noted by the handler; the parent's loop runs with
 * them blocked and waits in sigsuspend, so none is noticed late or lost. */
static volatile sig_atomic_t pending_hup, pending_usr1, pending_stop, hup_sender;
static void on_parent_signal(int sig, siginfo_t *info, void *ctx)
{
    (void)ctx;
    if (sig == SIGHUP) {
        sig_atomic_t from = info ? (sig_atomic_t)info->si_pid : 0;
        /* Two reloads before the loop ran: from two senders, every worker. */
        hup_sender = pending_hup && hup_sender != from ? 0 : from;
        pending_hup = 1;
    } else if (sig == SIGUSR1) {
        pending_usr1 = 1;
    } else {
        pending_stop = sig;
    }
}

static void on_child_exit(int sig)
{
    (void)sig; /* only wakes sigsuspend */
}

/* The --workers parent's handlers, installed before it does anything (reads
 * the config, starts the private redis-server, forks the workers): a signal
 * that comes meanwhile is noted and forwarded once the workers run (each
 * has them blocked until its own handlers are in place, see fork_worker),
 * never the default action. */
static void parent_signals_install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_parent_signal;
    sa.sa_flags = SA_SIGINFO | SA_RESTART; /* a config read from a FIFO is not cut short */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGCHLD, on_child_exit);
}

/* Whether execlp would find `prog`: an executable regular file in a
 * directory of PATH (unset: execlp's default, /bin:/usr/bin). */
static int in_path(const char *prog)
{
    const char *path = getenv("PATH");
    if (path == NULL) path = "/bin:/usr/bin";
    for (const char *p = path;; p++) {
        const char *end = strchr(p, ':');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        char file[4096];
        struct stat st;
        /* an empty entry is the current directory, as for execlp */
        if (snprintf(file, sizeof(file), "%.*s%s%s", (int)n, p, n ? "/" : "", prog) <
                (int)sizeof(file) &&
            stat(file, &st) == 0 && S_ISREG(st.st_mode) && access(file, X_OK) == 0)
            return 1;
        if (end == NULL) return 0;
        p = end;
    }
}

/* --check's look past the file, as nginx -t's: what startup would trip over
 * that the parse cannot see. Each name the listeners and upstreams use is
 * looked up as startup looks it up (mm_addr_resolve, mm_addrs_resolve: the
 * same blocking getaddrinfo, fine here since nothing is served yet), and the
 * request log is opened for appending by reqlog_open, startup's own open —
 * which creates it (and its directories) if need be, as nginx -t creates its
 * logs. Not checked: whether the ports are free (a reload's --check would
 * find them held by the running instance), whether upstreams or the store
 * answer. With --workers N > 1 on the memory store, that the private
 * redis-server startup runs is installed (at `store`, or the top level when
 * the file has none). 0, or -1 with "FILE:LINE:COL: NAME: message" at the
 * value. */
static int check_outside(const config_t *cfg, uint64_t workers, const char *text, size_t len,
                         char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    if (mm_addr_resolve(&cfg->listen, &ss) != 0)
        return config_error_at(cfg, text, len, "/listen", err, errlen, "cannot resolve %s",
                               cfg->listen.host);
    if (cfg->has_admin && mm_addr_resolve(&cfg->admin_listen, &ss) != 0)
        return config_error_at(cfg, text, len, "/admin/listen", err, errlen, "cannot resolve %s",
                               cfg->admin_listen.host);
    for (size_t i = 0; i < cfg->n_upstreams; i++) {
        const cfg_upstream_t *u = &cfg->upstreams[i];
        mm_addrs_t addrs;
        char ptr[MM_NAME_MAX + 32];
        if (mm_addrs_resolve(&u->addr, &addrs) == 0) continue;
        snprintf(ptr, sizeof(ptr), "/upstreams/%s/url", u->name); /* names need no ~ escapes */
        return config_error_at(cfg, text, len, ptr, err, errlen, "cannot resolve %s", u->addr.host);
    }
    if (cfg->log_requests) {
        /* reqlog_open wants a loop (the log's flush timer): a private one,
         * run only to close what it opened. */
        uv_loop_t loop;
        char why[1024];
        if (uv_loop_init(&loop) != 0) {
            snprintf(err, errlen, "%s: out of memory", cfg->path);
            return -1;
        }
        reqlog_t *l = reqlog_open(&loop, cfg->log_requests, 1.0, 0, 0, NULL, why, sizeof(why));
        if (l) reqlog_close(l, NULL, NULL);
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_loop_close(&loop);
        if (l == NULL)
            return config_error_at(cfg, text, len, "/log/requests", err, errlen, "%s", why);
    }
    if (workers > 1 && cfg->store.type == STORE_MEMORY && !in_path("redis-server"))
        return config_error_at(cfg, text, len, "/store", err, errlen,
                               "--workers %llu with the memory store needs a private "
                               "redis-server (apt-get install redis-server) to share state "
                               "between workers, or a \"redis\" store: redis-server is not "
                               "in PATH",
                               (unsigned long long)workers);
    return 0;
}

/* Workers bind with SO_REUSEPORT, which would let a second group share the
 * ports of a running one and split its traffic between two states. A bind
 * without it fails on a port anybody listens on: try that once, up front. */
static int probe_listen(const cfg_addr_t *a)
{
    char name[300];
    struct sockaddr_storage ss;
    cfg_addr_str(a, name, sizeof(name));
    if (mm_addr_resolve(a, &ss) != 0) {
        fprintf(stderr, "modelmux: cannot listen on %s: the name does not resolve\n", name);
        return -1;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1, e = 0;
    if (fd < 0) {
        e = errno;
    } else {
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)); /* as libuv binds */
        socklen_t len =
            ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
        if (bind(fd, (struct sockaddr *)&ss, len) != 0) e = errno;
        close(fd);
    }
    if (e == 0) return 0;
    fprintf(stderr, "modelmux: cannot listen on %s: %s\n", name,
            uv_strerror(uv_translate_sys_error(e)));
    return -1;
}

/* A listening socket on 127.0.0.1 at a port the kernel picks: a worker's
 * private scrape listener, made before the fork so that every worker knows
 * every sibling's port. -1 on failure (the group then scrapes per worker). */
static int scrape_socket(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(fd, 128) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        close(fd);
        return -1;
    }
    *port = ntohs(a.sin_port);
    return fd;
}

/* What the parent holds for the group's life and every worker inherits.
 * The scrape sockets: a worker started in place of a crashed one listens on
 * the same port its siblings know. The keep (keep.h): what outlives a
 * worker, the counters it showed scrapes and the config the group reloaded
 * to. */
typedef struct {
    int grouped;     /* 0: no scrape sockets (no admin listener, or they failed) */
    mm_keep_t *keep; /* NULL: none (could not be mapped; logged) */
    int fds[256], ports[256];
} group_inherit_t;

static pid_t fork_worker(const char *path, config_t *cfg, uint64_t seed,
                         const cfg_store_t *store_override, config_t *reload,
                         const group_inherit_t *gi, int n, int slot)
{
    /* The parent runs with the lifecycle signals blocked (run_workers), and
     * the worker starts so: a signal forwarded while it is still starting (a
     * POST /reload answered by a sibling, a SIGTERM) would find the default
     * action and kill it. run_worker unblocks them once its handlers are in
     * place, and a pending one is then handled as it should be. SIGCHLD is
     * the parent's business only. */
    pid_t pid = fork_child();
    if (pid == 0) {
        signal(SIGCHLD, SIG_DFL); /* the parent's, inherited */
        sigset_t chld;
        sigemptyset(&chld);
        sigaddset(&chld, SIGCHLD);
        sigprocmask(SIG_UNBLOCK, &chld, NULL);
        group_t grp = {n, slot, gi->grouped ? gi->fds[slot] : -1, gi->ports};
        for (int j = 0; j < n && gi->grouped; j++)
            if (j != slot && gi->fds[j] >= 0) close(gi->fds[j]);
        exit(run_worker(path, cfg, seed, 1, store_override, gi->grouped ? &grp : NULL, reload,
                        gi->keep));
    }
    return pid;
}

/* The config the group's workers last reloaded to, parsed from the text
 * they keep (keep.h): what a worker started in place of a crashed one
 * starts on. Not the file as it is now: it may have been broken
 * since, or name a host that no longer resolves (a reload the workers
 * rejected), and the new worker would then serve the start config, unlike
 * its siblings. NULL: no reload succeeded since the start. */
static config_t *kept_config(mm_keep_t *keep, const char *path)
{
    mm_buf_t text;
    mm_buf_init(&text);
    int kept = keep_config(keep, &text);
    config_t *c = NULL;
    char err[4096];
    mm_str_t t = mm_buf_view(&text);
    if (kept > 0 && (c = config_parse(t.p, t.n, path, err, sizeof(err))) == NULL)
        mm_log("--workers: the group's config does not load again (%s): the new worker serves "
               "the start config",
               err);
    if (kept < 0)
        mm_log("--workers: out of memory reading the group's config: the new worker serves the "
               "start config");
    mm_buf_free(&text);
    return c;
}

/* The parent keeps the start config (each fork gets its own copy) to start a
 * worker again in place of one killed by a signal (a crash, the OOM killer),
 * as an NGINX master does: otherwise the group would serve on with fewer
 * workers, silently. A worker that exits with a status (a start failure) is
 * not started again; nor is one that dies within a second of its start, so a
 * worker that crashes at once cannot make the parent fork in a loop. A new
 * worker gets a seed no worker had (request ids come from it). */
static int run_workers(const char *path, config_t *cfg, uint64_t seed, int n,
                       const cfg_store_t *store_override)
{
    pid_t pids[256];
    static group_inherit_t gi; /* 2 KiB: not on the stack of the waiting parent */
    /* Only with an admin listener: a group configured without one gets no
     * listener it did not ask for (a reload that adds one says so). */
    gi.grouped = cfg->has_admin;
    for (int i = 0; i < n && gi.grouped; i++) {
        gi.fds[i] = scrape_socket(&gi.ports[i]);
        if (gi.fds[i] < 0) {
            mm_log("metrics: no private scrape sockets (%s): each scrape reports one worker",
                   strerror(errno));
            for (int j = 0; j < i; j++) close(gi.fds[j]);
            gi.grouped = 0;
        }
    }
    if ((gi.keep = keep_create(n)) == NULL)
        mm_log("--workers: no memory shared with the workers (%s): a worker started in place of "
               "a crashed one serves the start config, and the group's counters go down when a "
               "worker dies",
               strerror(errno));
    sigset_t waitmask; /* blocked from here on; sigsuspend waits with waitmask */
    server_lifecycle_signals(SIG_BLOCK, 1, &waitmask);
    uint64_t started[256]; /* mm_now_ms (monotonic) */
    uint64_t next_seed = seed + (uint64_t)n;
    int stopping = 0;
    for (int i = 0; i < n; i++) {
        pid_t pid = fork_worker(path, cfg, seed + (uint64_t)i, store_override, NULL, &gi, n, i);
        if (pid < 0) {
            perror("modelmux: fork");
            for (int j = 0; j < i; j++) kill(pids[j], SIGTERM);
            config_free(cfg);
            return 1;
        }
        pids[i] = pid;
        started[i] = mm_now_ms();
    }
    int alive = n, code = 0;
    while (alive > 0) {
        /* Signals are blocked here: the flags are stable while read. */
        if (pending_stop) {
            int sig = pending_stop;
            pending_stop = 0;
            stopping = 1;
            for (int i = 0; i < n; i++)
                if (pids[i] > 0) kill(pids[i], sig);
        }
        if (pending_hup) {
            pid_t from = (pid_t)hup_sender;
            pending_hup = 0;
            /* A worker's POST /reload sends SIGHUP here: it reloads itself. */
            for (int i = 0; i < n; i++)
                if (pids[i] > 0 && pids[i] != from) kill(pids[i], SIGHUP);
        }
        if (pending_usr1) { /* reopen the request log: every worker writes its own */
            pending_usr1 = 0;
            if (!stopping)
                for (int i = 0; i < n; i++)
                    if (pids[i] > 0) kill(pids[i], SIGUSR1);
        }
        int st;
        pid_t pid = waitpid(-1, &st, WNOHANG);
        if (pid < 0 && errno == ECHILD) break;
        if (pid <= 0) {
            sigsuspend(&waitmask); /* until a signal or a child's exit */
            continue;
        }
        if (pid == private_redis_pid) {
            if (stopping)
                private_redis_pid = 0; /* the group is stopping: not restarted */
            else
                private_redis_died(st);
            continue;
        }
        int slot = -1;
        for (int i = 0; i < n; i++)
            if (pids[i] == pid) slot = i;
        if (slot < 0) continue;
        pids[slot] = 0;
        /* Its counters stay in the group's, before another takes its slot. */
        if (!stopping) keep_retire(gi.keep, slot);
        if (!stopping && WIFSIGNALED(st) && mm_now_ms() - started[slot] >= 1000) {
            config_t *reload = kept_config(gi.keep, path);
            pid_t np = fork_worker(path, cfg, next_seed++, store_override, reload, &gi, n, slot);
            if (reload) config_free(reload); /* the new worker has its copy */
            if (np > 0) {
                mm_log("worker %d killed by signal %d; started worker %d in its place", (int)pid,
                       WTERMSIG(st), (int)np);
                pids[slot] = np;
                started[slot] = mm_now_ms();
                continue;
            }
        }
        if (!stopping)
            mm_log("worker %d %s %d; %d workers left", (int)pid,
                   WIFSIGNALED(st) ? "killed by signal" : "exited with status",
                   WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st), alive - 1);
        /* Not replaced. One that exited 0 (a SIGTERM sent to it alone) left
         * the group on purpose: scrapes and syncs stop asking it, and the
         * group's size (modelmux_workers) no longer counts it. One that
         * failed still counts, so that modelmux_workers_reporting falls
         * short of it (the alert the docs suggest). Its scrape port refuses
         * either way, so a scrape leaves it out at once instead of waiting. */
        if (!stopping && WIFEXITED(st) && WEXITSTATUS(st) == 0) keep_set_gone(gi.keep, slot);
        if (gi.grouped && gi.fds[slot] >= 0) {
            close(gi.fds[slot]);
            gi.fds[slot] = -1;
        }
        alive--;
        /* A worker that was closing its last handles when the stop signal we
         * forwarded came finds the default action again (libuv restores it
         * with the signal handle's close) and dies of it: that is the stop
         * it was asked for, not a failure. */
        int clean = WIFEXITED(st) ? WEXITSTATUS(st) == 0
                                  : stopping && (WTERMSIG(st) == SIGTERM || WTERMSIG(st) == SIGINT);
        if (!clean) code = 1;
    }
    sigprocmask(SIG_SETMASK, &waitmask, NULL);
    for (int i = 0; i < n && gi.grouped; i++)
        if (gi.fds[i] >= 0) close(gi.fds[i]);
    keep_free(gi.keep);
    config_free(cfg);
    return code;
}

int main(int argc, char **argv)
{
#if defined(MM_LLHTTP_SSE42) && (defined(__x86_64__) || defined(__i386__))
    /* The HTTP parser was built for SSE4.2 (CMake MM_LLHTTP_SSE42): say so
     * rather than die of SIGILL in the first request. */
    if (!__builtin_cpu_supports("sse4.2")) {
        fprintf(stderr, "modelmux: built with SSE4.2 but this CPU lacks it; "
                        "rebuild with cmake -DMM_LLHTTP_SSE42=off\n");
        return 1;
    }
#endif
    const char *path = DEFAULT_CONFIG;
    int check = 0, have_seed = 0, version = 0, help = 0;
    uint64_t seed = 0, workers = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (option(argc, argv, &i, "-c", &v) || option(argc, argv, &i, "--config", &v)) {
            /* An empty FILE ("-c ''", an unset variable in a unit file) is
             * a usage error too, not a file that cannot be opened. */
            if (v == NULL || *v == '\0')
                return usage_error("option '%s' needs a FILE argument",
                                   strncmp(a, "--config", 8) == 0 ? "--config" : "-c");
            path = v;
        } else if (strcmp(a, "--check") == 0) {
            check = 1;
        } else if (option(argc, argv, &i, "--workers", &v)) {
            if (v == NULL || parse_u64(v, &workers) != 0 || workers < 1 || workers > 256) {
                fprintf(stderr, "modelmux: --workers takes a number from 1 to 256\n");
                return 2;
            }
        } else if (option(argc, argv, &i, "--seed", &v)) {
            if (v == NULL || parse_u64(v, &seed) != 0) {
                fprintf(stderr, "modelmux: --seed takes a non-negative integer\n");
                return 2;
            }
            have_seed = 1;
        } else if (strcmp(a, "--version") == 0) {
            version = 1;
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            help = 1;
        } else if (a[0] != '-' || a[1] == '\0') {
            /* a config path given without -c, say */
            return usage_error("unexpected argument '%s'", a);
        } else {
            return usage_error("unknown option '%s'", a);
        }
    }
    /* After the whole command line is read: a bad option beside --help or
     * --version is still exit 2, wherever it stands. */
    if (help) {
        usage(stdout);
        return 0;
    }
    if (version) {
        printf("modelmux %s\n", MM_VERSION);
        return 0;
    }
    /* A single process blocks its lifecycle signals before it reads the
     * config, as a forked worker starts (fork_worker): a SIGHUP or SIGTERM
     * from a supervisor while the config is read (a large file, a slow
     * disk, a FIFO) would otherwise find the default action and kill it.
     * Held pending, it is handled once run_worker has its handlers in
     * place: a reload, or a drain and exit 0 (§2). */
    if (!check && workers == 1) server_lifecycle_signals(SIG_BLOCK, 0, NULL);
    /* The --workers parent notes them from here on (its handlers restart
     * the config's reads), and acts once the workers run. */
    if (!check && workers > 1) parent_signals_install();
    char err[4096];
    char *text = NULL;
    size_t text_len = 0;
    config_t *cfg = config_load_text(path, check ? &text : NULL, &text_len, err, sizeof(err));
    if (cfg == NULL) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    if (check) {
        int bad = check_outside(cfg, workers, text, text_len, err, sizeof(err));
        free(text);
        if (bad) {
            fprintf(stderr, "%s\n", err);
            config_free(cfg);
            return 1;
        }
        for (size_t j = 0; j < cfg->n_experiments; j++)
            if (config_unreachable(cfg, j, err, sizeof(err)))
                fprintf(stderr, "%s: %s\n", path, err);
        printf("%s: ok (%zu upstream%s, %zu experiment%s)\n", path, cfg->n_upstreams,
               cfg->n_upstreams == 1 ? "" : "s", cfg->n_experiments,
               cfg->n_experiments == 1 ? "" : "s");
        config_free(cfg);
        return 0;
    }
    config_log_warnings(cfg);
    if (workers > 1 && (probe_listen(&cfg->listen) != 0 ||
                        (cfg->has_admin && probe_listen(&cfg->admin_listen) != 0))) {
        config_free(cfg);
        return 1;
    }
    cfg_store_t shared;
    const cfg_store_t *override = NULL;
    raise_fd_limit(cfg); /* before --workers forks: every worker inherits it */
    if (workers > 1 && cfg->store.type == STORE_MEMORY) {
        char why[512];
        if (start_private_redis(&shared, why, sizeof(why)) != 0) {
            fprintf(stderr,
                    "modelmux: --workers %llu with the memory store needs a private "
                    "redis-server (apt-get install redis-server) to share state between "
                    "workers, or a \"redis\" store in the config: %s\n",
                    (unsigned long long)workers, why);
            config_free(cfg);
            return 1;
        }
        override = &shared;
        mm_log("memory store shared by %llu workers through a private redis-server on "
               "127.0.0.1:%d (pid %d)",
               (unsigned long long)workers, shared.port, (int)private_redis_pid);
    }
    if (!have_seed) {
        if (uv_random(NULL, NULL, &seed, sizeof(seed), 0, NULL) != 0)
            seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    }
    if (workers > 1) {
        int code = run_workers(path, cfg, seed, (int)workers, override);
        stop_private_redis();
        return code;
    }
    /* Still blocked (above): server_start listens before it installs its
     * handlers, and a SIGTERM sent as soon as the port answers would
     * otherwise find the default action. run_worker unblocks them once the
     * handlers are in place. */
    return run_worker(path, cfg, seed, 0, NULL, NULL, NULL, NULL);
}
