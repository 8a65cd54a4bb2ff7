#!/usr/bin/env python3
"""bench/soak.py — a bounded soak: does a long-running modelmux stay bounded?

Starts on free loopback ports a redis-server (with --store redis), three
example model servers (champion, challenger, and a slow shadow) and one
modelmux with one experiment per policy (matched by path prefix), then drives
it for --duration seconds with mixed load — keep-alive and one-request
connections, clients that vanish mid-request, feedback over HTTP and over the
Redis stream — plus optional chaos (--chaos: SIGHUP, POST /reload, admin
weights/pause/resume/reset, the challenger killed and restarted, Redis killed
and restarted, the request log renamed). Every --every seconds it prints
modelmux's RSS, open fds, sockets, and a few gauges from /metrics and Redis.
At the end it sends SIGTERM and reports the exit status. Every process it
starts is stopped by PID.

    bench/soak.py --duration 60                      # memory store, no chaos
    bench/soak.py --store redis --chaos --ttl 2 --duration 120
    MODELMUX=build-asan/modelmux bench/soak.py --duration 30

Nothing is asserted: read the columns (RSS and fds should level off).
"""
import argparse
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELMUX = os.environ.get("MODELMUX", os.path.join(ROOT, "build/modelmux"))
MODEL_SERVER = os.environ.get("MODEL_SERVER", os.path.join(ROOT, "build/model_server"))
REDIS_SERVER = os.environ.get("REDIS_SERVER", shutil.which("redis-server") or "redis-server")


# The integration tests' loopback helpers and RESP client (no redis-py).
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from mmtest import Redis, RedisError, free_port  # noqa: E402
from mmtest import wait_port as mmtest_wait_port  # noqa: E402


def wait_port(port, timeout=10.0):
    try:
        mmtest_wait_port(port, timeout=timeout)
        return True
    except RuntimeError:
        return False


def resp(port, *args, timeout=1.0):
    """One Redis command: the reply, or None while Redis is away or refuses it."""
    r = Redis(port, timeout=timeout)
    try:
        return r(*args)
    except (OSError, RedisError):
        return None
    finally:
        r.close()


class Procs:
    def __init__(self, tmp):
        self.tmp = tmp
        self.procs = {}

    def start(self, name, argv):
        log = open(os.path.join(self.tmp, name + ".log"), "a")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        self.procs[name] = p
        return p

    def stop(self, name, sig=signal.SIGTERM, timeout=15.0):
        p = self.procs.get(name)
        if p is None or p.poll() is not None:
            return None if p is None else p.returncode
        os.kill(p.pid, sig)
        try:
            return p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            return p.wait(timeout=5)

    def stop_all(self):
        for name in reversed(list(self.procs)):
            self.stop(name)


def http_req(port, method, path, body=None, headers=None, timeout=5.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, r.getheader("X-Request-Id"), r.read()
    except (OSError, http.client.HTTPException):
        return 0, None, b""
    finally:
        c.close()


def metrics(admin):
    st, _, body = http_req(admin, "GET", "/metrics")
    out = {}
    if st != 200:
        return out
    for line in body.decode().splitlines():
        if line.startswith("#") or " " not in line:
            continue
        head, v = line.rsplit(" ", 1)
        name = head.split("{", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(v)
        except ValueError:
            pass
    return out


def proc_stats(pid):
    rss = fds = socks = 0
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        for fd in os.listdir("/proc/%d/fd" % pid):
            fds += 1
            try:
                if os.readlink("/proc/%d/fd/%s" % (pid, fd)).startswith("socket:"):
                    socks += 1
            except OSError:
                pass
    except OSError:
        pass
    return rss, fds, socks


PATHS = ["/shadow/x", "/ab/x", "/canary/x", "/ts/x", "/eg/x", "/ucb/x", "/il/x"]


def config(a, ports, tmp):
    ttl = a.ttl
    up = lambda p, **kw: dict({"url": "http://127.0.0.1:%d" % p, "pool": 16, "connect_timeout_ms": 200,
                               "timeout_ms": 1000}, **kw)
    exps = [
        {"name": "shadow", "match": {"path_prefix": "/shadow"}, "policy": "shadow", "primary": "champion",
         "shadows": ["challenger", "slow"], "sample": 1.0, "max_inflight": 8, "timeout_ms": 100,
         "feedback_ttl_s": ttl},
        {"name": "ab", "match": {"path_prefix": "/ab"}, "policy": "ab",
         "arms": {"champion": 50, "challenger": 50}, "sticky": {"header": "X-User-Id"}, "feedback_ttl_s": ttl},
        {"name": "canary", "match": {"path_prefix": "/canary"}, "policy": "canary", "champion": "champion",
         "canary": "challenger", "steps": [5, 25, 50, 100], "step_interval_s": 3,
         "analysis": {"min_requests": 5, "max_error_rate": 0.5}, "on_success": "hold", "feedback_ttl_s": ttl},
        {"name": "ts", "match": {"path_prefix": "/ts"}, "policy": "thompson", "arms": ["champion", "challenger"],
         "reward": "bernoulli", "feedback_ttl_s": ttl},
        {"name": "eg", "match": {"path_prefix": "/eg"}, "policy": "epsilon_greedy",
         "arms": ["champion", "challenger"], "epsilon": 0.2, "feedback_ttl_s": ttl},
        {"name": "ucb", "match": {"path_prefix": "/ucb"}, "policy": "ucb1", "arms": ["champion", "challenger"],
         "feedback_ttl_s": ttl},
        {"name": "il", "match": {"path_prefix": "/il"}, "policy": "interleave", "arms": ["champion", "challenger"],
         "list_pointer": "/items", "id_field": "id", "k": 10, "feedback_ttl_s": ttl},
    ]
    cfg = {"listen": "127.0.0.1:%d" % ports["mm"], "admin": {"listen": "127.0.0.1:%d" % ports["admin"]},
           "limits": {"idle_timeout_ms": 5000, "header_timeout_ms": 2000, "drain_timeout_ms": 3000},
           "upstreams": {"champion": up(ports["champion"]),
                         "challenger": up(ports["challenger"], eject={"consecutive_5xx": 5, "base_ms": 1000}),
                         "slow": up(ports["slow"])},
           "experiments": exps}
    if a.store == "redis":
        cfg["store"] = {"type": "redis", "host": "127.0.0.1", "port": ports["redis"], "prefix": "soak",
                        "sync_ms": 100}
    if a.log:
        cfg["log"] = {"requests": os.path.join(tmp, "requests.jsonl"), "sample": 1.0, "bodies": True}
    return cfg


class Load:
    def __init__(self, a, ports, stop):
        self.a, self.ports, self.stop = a, ports, stop
        self.count = {"req": 0, "err": 0, "fb": 0, "xadd": 0, "vanish": 0}
        self.lock = threading.Lock()
        self.ids = []

    def bump(self, k, n=1):
        with self.lock:
            self.count[k] += n

    def keepalive(self, seed):
        rnd = random.Random(seed)
        c = None
        while not self.stop.is_set():
            if c is None:
                c = http.client.HTTPConnection("127.0.0.1", self.ports["mm"], timeout=5)
            path = rnd.choice(PATHS)
            body = json.dumps({"x": rnd.random(), "pad": "p" * rnd.randint(0, 2000)})
            try:
                c.request("POST", path, body=body, headers={"X-User-Id": str(rnd.randint(1, 1000))})
                r = c.getresponse()
                r.read()
                self.bump("req")
                rid = r.getheader("X-Request-Id")
                if rid and rnd.random() < 0.5:
                    with self.lock:
                        self.ids.append((path, rid))
                        if len(self.ids) > 5000:
                            del self.ids[:2500]
                if r.getheader("Connection", "").lower() == "close":
                    c.close()
                    c = None
            except (OSError, http.client.HTTPException):
                self.bump("err")
                c.close()
                c = None
                time.sleep(0.01)
        if c:
            c.close()

    def short(self, seed):
        rnd = random.Random(seed)
        while not self.stop.is_set():
            st, _, _ = http_req(self.ports["mm"], "GET", rnd.choice(PATHS), headers={"Connection": "close"})
            self.bump("req" if st else "err")

    def vanish(self, seed):
        """Clients that go away: half a head, a head with half a body, or a
        full request and close before the answer."""
        rnd = random.Random(seed)
        while not self.stop.is_set():
            try:
                s = socket.create_connection(("127.0.0.1", self.ports["mm"]), timeout=2)
                path = rnd.choice(PATHS)
                kind = rnd.randint(0, 2)
                if kind == 0:
                    s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Le" % path.encode())
                elif kind == 1:
                    s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"a\":" % path.encode())
                else:
                    s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
                time.sleep(rnd.random() * 0.05)
                if rnd.random() < 0.5:  # RST instead of FIN
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                s.close()
                self.bump("vanish")
            except OSError:
                pass
            time.sleep(0.005)

    def feedback(self, seed):
        rnd = random.Random(seed)
        while not self.stop.is_set():
            with self.lock:
                batch = [self.ids[rnd.randrange(len(self.ids))] for _ in range(min(20, len(self.ids)))]
            if not batch:
                time.sleep(0.05)
                continue
            events = []
            for path, rid in batch:
                if path.startswith("/il"):
                    events.append({"request_id": rid, "item": "item-%d" % rnd.randint(0, 5)})
                else:
                    events.append({"request_id": rid, "reward": rnd.choice([0, 1])})
            half = len(events) // 2
            st, _, _ = http_req(self.ports["mm"], "POST", "/_modelmux/feedback",
                                body=json.dumps({"events": events[:half]}))
            if st:
                self.bump("fb", half)
            if self.a.store == "redis":
                for e in events[half:]:
                    args = ["XADD", "soak:feedback", "*"]
                    for k, v in e.items():
                        args += [k, v]
                    if resp(self.ports["redis"], *args) is not None:
                        self.bump("xadd")
            time.sleep(0.02)


def chaos(a, ports, procs, stop, tmp, ms_argv, redis_argv, log):
    rnd = random.Random(7)
    step = 0
    while not stop.wait(a.chaos_every):
        step += 1
        what = rnd.choice(["hup", "reload", "weights", "pause", "reset", "kill_up", "kill_redis", "rotate"])
        if what == "hup":
            os.kill(procs.procs["modelmux"].pid, signal.SIGHUP)
        elif what == "reload":
            http_req(ports["admin"], "POST", "/reload")
        elif what == "weights":
            http_req(ports["admin"], "PUT", "/experiments/ab/weights",
                     body=json.dumps({"champion": rnd.randint(1, 99), "challenger": rnd.randint(1, 99)}))
        elif what == "pause":
            e = rnd.choice(["ts", "eg", "ucb", "canary"])
            http_req(ports["admin"], "POST", "/experiments/%s/pause" % e)
            time.sleep(0.5)
            http_req(ports["admin"], "POST", "/experiments/%s/resume" % e)
        elif what == "reset":
            http_req(ports["admin"], "POST", "/experiments/%s/reset" % rnd.choice(["ts", "eg", "ucb", "ab"]))
        elif what == "kill_up":
            procs.stop("challenger", signal.SIGKILL)
            time.sleep(2)
            procs.start("challenger", ms_argv["challenger"])
        elif what == "kill_redis" and a.store == "redis":
            procs.stop("redis", signal.SIGKILL)
            time.sleep(3)
            procs.start("redis", redis_argv)
        elif what == "rotate" and a.log:
            p = os.path.join(tmp, "requests.jsonl")
            if os.path.exists(p):
                os.replace(p, p + ".1")
                os.kill(procs.procs["modelmux"].pid, signal.SIGHUP)
        log("chaos %d: %s" % (step, what))


def outage(spec, procs, stop, argvs, log):
    name, start, length = spec.split(":")
    if stop.wait(float(start)) or name not in procs.procs:
        return
    procs.stop(name, signal.SIGKILL)
    log("outage: %s killed" % name)
    if float(length) > 0 and not stop.wait(float(length)):
        procs.start(name, argvs[name])
        log("outage: %s restarted" % name)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--every", type=float, default=5)
    ap.add_argument("--store", choices=["memory", "redis"], default="memory")
    ap.add_argument("--ttl", type=int, default=2, help="feedback_ttl_s of every experiment")
    ap.add_argument("--keepalive", type=int, default=4)
    ap.add_argument("--short", type=int, default=2)
    ap.add_argument("--vanish", type=int, default=1)
    ap.add_argument("--feedback", type=int, default=1)
    ap.add_argument("--chaos", action="store_true")
    ap.add_argument("--chaos-every", type=float, default=4)
    ap.add_argument("--log", action="store_true", help="request log with bodies in the temp dir")
    ap.add_argument("--outage", action="append", default=[], metavar="NAME:START:LEN",
                    help="SIGKILL NAME (redis, champion, challenger, slow) START s into the run, "
                         "restart it LEN s later (LEN 0: never)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    a = ap.parse_args()
    if not 1 <= a.duration <= 1800:
        ap.error("--duration must be in [1, 1800]")

    tmp = tempfile.mkdtemp(prefix="mm-soak.")
    procs = Procs(tmp)
    ports = {k: free_port() for k in ["mm", "admin", "champion", "challenger", "slow", "redis"]}
    t0 = time.time()

    def log(msg):
        print("%6.1f %s" % (time.time() - t0, msg), flush=True)

    ms_argv = {
        "champion": [MODEL_SERVER, "--port", str(ports["champion"]), "--name", "champion", "--list", "20"],
        "challenger": [MODEL_SERVER, "--port", str(ports["challenger"]), "--name", "challenger", "--list", "20",
                       "--score", "0.6", "--error-rate", "0.02", "--seed", "2"],
        "slow": [MODEL_SERVER, "--port", str(ports["slow"]), "--name", "slow", "--latency-ms", "50",
                 "--jitter-ms", "200"],
    }
    redis_argv = [REDIS_SERVER, "--port", str(ports["redis"]), "--bind", "127.0.0.1", "--save", "",
                  "--appendonly", "no", "--dir", tmp]
    stop = threading.Event()
    threads = []
    rc = None
    try:
        for name, argv in ms_argv.items():
            procs.start(name, argv)
            wait_port(ports[name])
        if a.store == "redis":
            procs.start("redis", redis_argv)
            wait_port(ports["redis"])
        cfgpath = os.path.join(tmp, "mm.json")
        with open(cfgpath, "w") as f:
            json.dump(config(a, ports, tmp), f, indent=1)
        mm = procs.start("modelmux", [MODELMUX, "-c", cfgpath, "--seed", "1"])
        if not wait_port(ports["mm"]) or not wait_port(ports["admin"]):
            sys.exit("modelmux did not start; see %s" % tmp)
        load = Load(a, ports, stop)
        for i in range(a.keepalive):
            threads.append(threading.Thread(target=load.keepalive, args=(i,)))
        for i in range(a.short):
            threads.append(threading.Thread(target=load.short, args=(100 + i,)))
        for i in range(a.vanish):
            threads.append(threading.Thread(target=load.vanish, args=(200 + i,)))
        for i in range(a.feedback):
            threads.append(threading.Thread(target=load.feedback, args=(300 + i,)))
        if a.chaos:
            threads.append(threading.Thread(target=chaos, args=(a, ports, procs, stop, tmp, ms_argv, redis_argv,
                                                                log)))
        for spec in a.outage:
            threads.append(threading.Thread(target=outage, args=(spec, procs, stop, dict(ms_argv, redis=redis_argv),
                                                                 log)))
        for t in threads:
            t.start()
        cols = ["modelmux_connections", "modelmux_upstream_connections", "modelmux_request_ids",
                "modelmux_request_ids_dropped_total", "modelmux_store_dropped_total",
                "modelmux_requestlog_dropped_total"]
        log("RSS_kB fds socks reqs errs fb xadd | conns upconns req_ids ids_dropped store_dropped "
            "log_dropped | redis_keys redis_mem stream_len/pending")
        end = t0 + a.duration
        while time.time() < end and mm.poll() is None:
            time.sleep(min(a.every, max(0.0, end - time.time())))
            rss, fds, socks = proc_stats(mm.pid)
            m = metrics(ports["admin"])
            rk = rm = xl = "-"
            if a.store == "redis":
                rk = resp(ports["redis"], "DBSIZE")
                xl = resp(ports["redis"], "XLEN", "soak:feedback")
                pend = resp(ports["redis"], "XPENDING", "soak:feedback", "modelmux")
                xl = "%s/%s" % (xl, pend[0] if isinstance(pend, list) and pend else "-")
                info = resp(ports["redis"], "INFO", "memory") or ""
                for line in str(info).splitlines():
                    if line.startswith("used_memory:"):
                        rm = line.split(":")[1]
            with load.lock:
                c = dict(load.count)
            log("%6d %4d %4d %7d %5d %6d %6d | %s | %s %s %s" % (
                rss, fds, socks, c["req"], c["err"], c["fb"], c["xadd"],
                " ".join("%g" % m.get(k, -1) for k in cols), rk, rm, xl))
        stop.set()
        for t in threads:
            t.join(timeout=20)
        time.sleep(1)
        rss, fds, socks = proc_stats(mm.pid)
        log("idle: RSS %d kB, fds %d, sockets %d" % (rss, fds, socks))
        rc = procs.stop("modelmux", timeout=30)
        log("modelmux exit status %s (alive before SIGTERM: %s); log %s" % (rc, rc is not None, tmp))
    finally:
        stop.set()
        procs.stop_all()
        if not a.keep and rc == 0:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
