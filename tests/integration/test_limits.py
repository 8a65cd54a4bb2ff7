"""test_limits — modelmux at and beyond its configured limits.

What an operator who puts it in front of production relies on: a request
that cannot get an upstream connection waits a bounded time in the pool's
queue and then gets 503 `overloaded` (never a 408 that blames the client,
never an unbounded wait), as Envoy's pending requests are bounded by the
route timeout. And one whose soft open file limit is low still serves
max_connections: modelmux raises it to the hard limit at start, and says
so when even that is too low.
"""
import json
import os
import resource
import sys
import threading
import time

import mmtest
from test_proxy import TestCluster, ab, up

TRICKLE_S = 4.0  # how long a /trickle answer keeps its upstream connection busy


class Trickle(mmtest.QuietHandler):
    """/trickle: an answer that keeps coming, a byte every 0.2 s, so the
    connection is busy for TRICKLE_S without ever being idle long enough
    for timeout_ms. Anything else: a short answer at once."""

    def answer(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        if self.path == "/trickle":
            steps = int(TRICKLE_S / 0.2)
            self.send_response(200)
            self.send_header("Content-Length", str(steps))
            self.end_headers()
            for _ in range(steps):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.2)
            return
        body = b'{"score":0.5}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = answer


class PoolQueue(TestCluster):
    def test_a_request_waiting_for_a_pooled_connection_gets_503_after_timeout_ms(self):
        srv = mmtest.PyUpstream(Trickle)
        self.addCleanup(srv.close)
        port, admin = mmtest.free_port(), mmtest.free_port()
        # pool 1: the trickling answer holds the only connection. idle_timeout_ms
        # under timeout_ms: the queued body must not be a 408 at idle_timeout_ms.
        self.cluster.modelmux(mmtest.base_config(
            port, {"champion": up(srv.port, pool=1, timeout_ms=1500)}, [ab("ab", "/", {"champion": 1})],
            admin_port=admin, limits={"idle_timeout_ms": 500, "drain_timeout_ms": 2000}))
        busy = self.raw(port, timeout=10)
        busy.send(b"GET /trickle HTTP/1.1\r\nHost: t\r\n\r\n")
        mmtest.eventually(lambda: mmtest.metric_samples(admin, "modelmux_upstream_connections", "state")
                          .get(("open",)) == 1, timeout=5)
        got = {}

        def ask(name, req):
            c = self.raw(port, timeout=10)
            c.send(req)
            got[name] = c.response()

        waiters = [threading.Thread(target=ask, args=a) for a in (
            ("get", b"GET /v1/rank HTTP/1.1\r\nHost: t\r\n\r\n"),
            ("post", b"POST /v1/rank HTTP/1.1\r\nHost: t\r\nContent-Length: 7\r\n\r\n{\"a\":1}"))]
        for t in waiters:
            t.start()
        for t in waiters:
            t.join()
        for name in ("get", "post"):
            self.assertJsonError(got[name], 503, "overloaded")
            self.assertIn("retry-after", got[name].headers)
        self.assertEqual(busy.response().status, 200)  # the answer holding the pool was not cut
        errs = mmtest.metric_samples(admin, "modelmux_upstream_errors_total", "kind")
        self.assertEqual(errs[("overflow",)], 2)
        # Nobody is left waiting: the freed connection serves the next request.
        self.assertEqual(mmtest.request(port, "GET", "/v1/rank")[0], 200)
        self.assertEqual(mmtest.metric_samples(admin, "modelmux_upstream_waiting", "upstream"),
                         {("champion",): 0})


def start_with_fd_limit(cluster, cfg, soft, hard):
    """modelmux started with RLIMIT_NOFILE (soft, hard), as a shell's
    ulimit -n or systemd's LimitNOFILE would leave it."""
    path = cluster.write_config(cfg)
    setlimit = ("import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (%d, %d)); "
                "os.execv(sys.argv[1], sys.argv[1:])" % (soft, hard))
    proc = cluster._start([sys.executable, "-c", setlimit, mmtest.MM_BIN, "-c", path], "modelmux")
    proc.port = int(cfg["listen"].rsplit(":", 1)[1])
    mmtest.wait_port(proc.port, proc.p)
    return proc


def open_files(pid):
    """The process's (soft, hard) open file limit, from /proc."""
    with open("/proc/%d/limits" % pid) as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)


class FdLimit(TestCluster):
    def config(self, ms, max_connections):
        port = mmtest.free_port()
        return mmtest.base_config(port, {"champion": up(ms.port, pool=4)}, [ab("ab", "/", {"champion": 1})],
                                  limits={"max_connections": max_connections, "drain_timeout_ms": 2000})

    def test_a_low_soft_limit_is_raised_so_max_connections_are_served(self):
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        if hard != resource.RLIM_INFINITY and hard < 512:
            self.skipTest("hard open file limit %d" % hard)
        ms = self.cluster.model_server("champion")
        # Room for 160: the start's probe connection may still count when
        # the 150 arrive on a loaded machine (the 151st would be a 503).
        mm = start_with_fd_limit(self.cluster, self.config(ms, 160), 64, 512)
        self.assertEqual(open_files(mm.pid), (512, 512))
        held = [self.raw(mm.port) for _ in range(150)]  # beyond 64 descriptors
        for c in held:
            c.send(b"GET /v1/rank HTTP/1.1\r\nHost: t\r\n\r\n")
        for c in held:
            self.assertEqual(c.response().status, 200)
        self.assertNotIn("warning: the open file limit", mm.log())

    def test_a_hard_limit_below_what_the_config_needs_is_logged(self):
        ms = self.cluster.model_server("champion")
        mm = start_with_fd_limit(self.cluster, self.config(ms, 1000), 64, 128)
        self.assertEqual(open_files(mm.pid), (128, 128))
        self.assertIn("warning: the open file limit is 128, but max_connections and the upstream "
                      "pools can use 1260 descriptors", mm.log())

    def test_out_of_descriptors_an_upstream_connect_is_a_logged_502(self):
        # Past the hard limit the kernel refuses sockets: clients accepted
        # before get a 502 (the model server is fine), and the log says why.
        ms = self.cluster.model_server("champion")
        mm = start_with_fd_limit(self.cluster, self.config(ms, 1000), 40, 40)
        def fds():  # what modelmux's descriptors are open on
            d, out = "/proc/%d/fd" % mm.pid, []
            for f in os.listdir(d):
                try:
                    out.append(os.readlink(d + "/" + f))
                except FileNotFoundError:  # closed meanwhile
                    pass
            return out
        def backlog():  # connections the kernel holds for modelmux to accept
            with open("/proc/net/tcp") as f:
                for line in f.readlines()[1:]:
                    col = line.split()
                    if col[1].endswith(":%04X" % mm.port) and col[3] == "0A":
                        return int(col[4].split(":")[1], 16)
        # The start's probe connection (wait_port) must be accepted and
        # closed first: closed after the accepts below, it would leave a
        # descriptor free.
        mmtest.eventually(lambda: backlog() == 0 and
                          sum(f.startswith("socket:") for f in fds()) == 1)
        conns = [self.raw(mm.port) for _ in range(40)]
        # Send only once modelmux has taken every descriptor it can: were
        # the first request in before the last accepts, its upstream
        # connect would find one free, and pooled, it would serve them all.
        mmtest.eventually(lambda: len(fds()) >= 40, timeout=10)
        statuses = []
        for c in conns:
            try:
                c.send(b"GET /v1/rank HTTP/1.1\r\nHost: t\r\n\r\n")
                statuses.append(c.response().status)
            except (OSError, EOFError):
                statuses.append(None)  # accepted and closed by libuv at EMFILE
        self.assertIn(502, statuses)
        mmtest.eventually(lambda: "upstream champion: cannot open a connection: too many open files"
                          in mm.log(), timeout=5)
        self.assertEqual(mm.log().count("cannot open a connection"), 1)  # once per streak
        for c in conns:
            c.close()
        mmtest.eventually(lambda: mmtest.request(mm.port, "GET", "/v1/rank")[0] == 200, timeout=5)
        mmtest.eventually(lambda: "upstream champion: connections open again" in mm.log(), timeout=5)


if __name__ == "__main__":
    mmtest.main()
