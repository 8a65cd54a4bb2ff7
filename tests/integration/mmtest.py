"""mmtest — the harness every integration test uses.

Starts real processes (modelmux, examples/model_server, redis-server) on
loopback ports chosen free at run time, and stops them by PID (never by
name). Everything a test starts is registered with a Cluster, and
Cluster.stop() (called from tearDown / atexit) kills exactly those PIDs.

Binaries come from the environment ctest sets: MM_BIN, MM_MODEL_SERVER,
MM_BENCH_BIN, MM_SOURCE_DIR; redis from MM_REDIS_PORT (scripts/test starts a
private server) or MM_REDIS_SERVER to start one here.
"""
import http.client
import http.server
import email.utils
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

MM_BIN = os.environ.get("MM_BIN", "build/modelmux")
MODEL_SERVER = os.environ.get("MM_MODEL_SERVER", "build/model_server")
BENCH_BIN = os.environ.get("MM_BENCH_BIN", "build/modelmux-bench")
SOURCE_DIR = os.environ.get("MM_SOURCE_DIR", os.getcwd())


_handed_out = set()


def free_port():
    """A loopback port nothing listens on. The kernel may offer the same
    port again right after it was closed, so ports already handed out by
    this process are never returned twice (two of them in one config would
    collide)."""
    for _ in range(1000):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no free port found")


def wait_port(port, proc=None, timeout=10.0, host="127.0.0.1"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("process exited with %s before listening on %d" % (proc.returncode, port))
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("nothing listening on %d after %.0fs" % (port, timeout))


class Proc:
    def __init__(self, popen, name, log_path):
        self.p = popen
        self.name = name
        self.log_path = log_path

    @property
    def pid(self):
        return self.p.pid

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def alive(self):
        return self.p.poll() is None

    def signal(self, sig):
        if self.alive():
            os.kill(self.p.pid, sig)

    def wait(self, timeout=10.0):
        return self.p.wait(timeout=timeout)

    def kill(self):
        if self.alive():
            os.kill(self.p.pid, signal.SIGKILL)
            self.p.wait(timeout=5)


class Cluster:
    """Processes of one test; stop() ends them all by PID."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="mmtest.")
        self.procs = []

    def path(self, name):
        return os.path.join(self.dir, name)

    def _start(self, argv, name):
        log_path = self.path(name + ".log")
        log = open(log_path, "w")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        proc = Proc(p, name, log_path)
        self.procs.append(proc)
        return proc

    def model_server(self, name, *args, port=None):
        port = port or free_port()
        proc = self._start([MODEL_SERVER, "--port", str(port), "--name", name] + [str(a) for a in args],
                           "ms-" + name + "-" + str(port))
        wait_port(port, proc.p)
        proc.port = port
        return proc

    def write_config(self, cfg, name="modelmux.json"):
        path = self.path(name)
        with open(path, "w") as f:
            json.dump(cfg, f, indent=2)
        return path

    def modelmux(self, cfg, *args, name="modelmux", wait=True):
        """cfg: a dict (written to a file) or a path. Returns the Proc with
        .port (data) and .admin_port when the config has them."""
        path = cfg if isinstance(cfg, str) else self.write_config(cfg, name + ".json")
        proc = self._start([MM_BIN, "-c", path] + [str(a) for a in args], name)
        proc.config_path = path
        if wait:
            with open(path) as f:
                c = json.load(f)
            proc.port = int(c.get("listen", "127.0.0.1:8080").rsplit(":", 1)[1])
            wait_port(proc.port, proc.p)
            if "admin" in c:
                proc.admin_port = int(c["admin"].get("listen", "127.0.0.1:9090").rsplit(":", 1)[1])
                wait_port(proc.admin_port, proc.p)
        return proc

    def redis(self):
        """A redis port: the suite's private server, or one started here."""
        env_port = os.environ.get("MM_REDIS_PORT")
        if env_port:
            return int(env_port)
        server = os.environ.get("MM_REDIS_SERVER", "redis-server")
        port = free_port()
        proc = self._start([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                            "--appendonly", "no", "--dir", self.dir], "redis-" + str(port))
        wait_port(port, proc.p)
        return port

    def stop(self):
        for proc in reversed(self.procs):
            if proc.alive():
                proc.signal(signal.SIGTERM)
        deadline = time.time() + 10
        for proc in self.procs:
            try:
                proc.p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
        # Its files (configs, logs, sockets) go with it, or every test run
        # leaves a directory in /tmp; MM_KEEP_TMP=1 keeps them to look at.
        if not os.environ.get("MM_KEEP_TMP"):
            shutil.rmtree(self.dir, ignore_errors=True)


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """Base for a test's own upstream handler: HTTP/1.1 keep-alive, no
    access log on stderr."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass


class PyUpstream:
    """A threaded Python HTTP server on a free loopback port, for answers
    examples/model_server cannot give (crafted bodies, headers, hangs).
    `handler` is a QuietHandler subclass; close() stops it."""

    class Server(http.server.ThreadingHTTPServer):
        # Python's default backlog of 5 can overflow while a busy machine
        # starves the accepting thread; a SYN dropped then is retried only
        # after a second, past modelmux's 500 ms connect timeout.
        request_queue_size = 128

    def __init__(self, handler):
        self.server = self.Server(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True  # a hanging answer never holds close()
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class BreakingServer:
    """A model server that sends each answer's head and the first 10 of the
    100 body bytes it announces, then closes the connection: an answer cut
    off mid-body. `answers` counts them; close() stops it."""

    HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"

    def __init__(self, host="127.0.0.1", port=0):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.answers = 0
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopping:
            try:
                s, _ = self.sock.accept()
            except OSError:
                continue
            with s:
                s.settimeout(5)
                head = b""
                try:
                    while b"\r\n\r\n" not in head:
                        chunk = s.recv(65536)
                        if not chunk:
                            break
                        head += chunk
                    end = head.find(b"\r\n\r\n") + 4
                    length = 0
                    for line in head[:end].split(b"\r\n")[1:]:
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    while len(head) - end < length:  # all of it, or closing sends a RST
                        chunk = s.recv(65536)
                        if not chunk:
                            break
                        head += chunk
                    if end >= 4:
                        s.sendall(self.HEAD + b'{"model": ')
                        self.answers += 1
                except OSError:
                    pass

    def close(self):
        self.stopping = True
        self.thread.join(timeout=2)
        self.sock.close()


# ---------------------------------------------------------------- RESP client

class RedisError(Exception):
    pass


class Redis:
    """A minimal RESP2 client (no redis-py): r("HGETALL", key) -> reply. Error replies are
    raised at top level and returned as RedisError objects inside arrays."""

    def __init__(self, port, host="127.0.0.1", timeout=5.0):
        self.addr = (host, port)
        self.timeout = timeout
        self.sock = None
        self.buf = b""

    def close(self):
        if self.sock is not None:
            self.sock.close()
        self.sock = None
        self.buf = b""

    def __call__(self, *args):
        if self.sock is None:
            self.sock = socket.create_connection(self.addr, timeout=self.timeout)
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            if not isinstance(a, bytes):
                a = str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        try:
            self.sock.sendall(b"".join(out))
            reply = self._read()
        except OSError:
            self.close()
            raise
        if isinstance(reply, RedisError):
            raise reply
        return reply

    def _fill(self):
        d = self.sock.recv(65536)
        if not d:
            raise ConnectionError("redis closed the connection")
        self.buf += d

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _read(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RedisError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self._fill()
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data.decode("utf-8", "replace")
        if kind == b"*":
            n = int(rest)
            if n < 0:
                return None
            return [self._read() for _ in range(n)]
        raise RedisError("unexpected RESP type %r" % line)

    def hgetall(self, key):
        flat = self("HGETALL", key)
        return dict(zip(flat[0::2], flat[1::2]))


def wait_redis(port, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        r = Redis(port, timeout=1.0)
        try:
            if r("PING") == "PONG":
                return
        except (OSError, RedisError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        finally:
            r.close()


def base_config(port, upstreams, experiments, admin_port=None, **extra):
    cfg = {"listen": "127.0.0.1:%d" % port,
           "upstreams": {name: ({"url": "http://127.0.0.1:%d" % up} if isinstance(up, int) else up)
                         for name, up in upstreams.items()},
           "experiments": experiments}
    if admin_port:
        cfg["admin"] = {"listen": "127.0.0.1:%d" % admin_port}
    cfg.update(extra)
    return cfg


def recv_head(sock, bufsize=65536):
    """Read from sock until a blank line ends a head (or the peer closes):
    the bytes read, the whole head in them unless the peer closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(bufsize)
        if not chunk:
            break
        data += chunk
    return data


def request(port, method, path, body=None, headers=None, timeout=10.0):
    """One request on a fresh connection: (status, headers dict lowercased, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        conn.close()


def arms_served(port, path, n):
    """The arms (X-Modelmux-Arm) that answered n GETs of path/0 .. path/n-1,
    each on a connection of its own (with --workers, the kernel spreads
    them); every answer must be a 200."""
    out = set()
    for i in range(n):
        st, headers, _ = request(port, "GET", "%s/%d" % (path, i))
        if st != 200:
            raise AssertionError("GET %s/%d: %d" % (path, i, st))
        out.add(headers["x-modelmux-arm"])
    return out


def metric_samples(admin_port, name, *labels):
    """Samples of Prometheus metric `name` from /metrics: {(values of `labels`,
    in that order): float}."""
    text = request(admin_port, "GET", "/metrics")[2].decode()
    got = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            head, value = line.rsplit(" ", 1)
            got[tuple(head.split(k + '="', 1)[1].split('"', 1)[0] for k in labels)] = float(value)
    return got


def raw(port, data, timeout=3.0, shutdown=False):
    """Send raw bytes, read until close or timeout; returns bytes."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        if shutdown:
            s.shutdown(socket.SHUT_WR)
        out = b""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                d = s.recv(65536)
            except socket.timeout:
                break
            if not d:
                break
            out += d
        return out
    finally:
        s.close()


def date_lines(answer):
    """The Date lines of a raw answer's head."""
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    return [line.split(":", 1)[1].strip() for line in head.split("\r\n")[1:]
            if line.split(":", 1)[0].strip().lower() == "date"]


def assert_one_fresh_date(test, answer):
    """One Date line, an IMF-fixdate (RFC 9110 §5.6.7) of about now."""
    dates = date_lines(answer)
    test.assertEqual(len(dates), 1, answer[:300])
    test.assertRegex(dates[0], r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|"
                     r"Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d GMT$")
    test.assertLess(abs(email.utils.parsedate_to_datetime(dates[0]).timestamp() - time.time()), 30,
                    dates[0])


def eventually(fn, timeout=10.0, interval=0.05):
    """Poll fn() until it returns a truthy value; return it or raise."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError("condition not met within %.1fs (last: %r)" % (timeout, last))


class MMTestCase(unittest.TestCase):
    """A TestCase with a fresh Cluster per test, stopped in tearDown."""

    def setUp(self):
        self.cluster = Cluster()

    def tearDown(self):
        self.cluster.stop()


def main():
    unittest.main(verbosity=2)
