#!/usr/bin/env python3
"""bench/scale.py — start and reload time against the number of experiments.

Why: start and reload used to grow with the square of the experiment count
(name lookups by scanning every experiment), and a reload runs on the event
loop, so the data plane stalls for as long as it takes. This measures what a
user waits for, not a part of it: a start is timed from exec until the
listen port accepts a connection; a reload is the round trip of POST /reload
on the admin API (parse, resolve, router build, store and metrics upkeep).

    bench/scale.py 4000 16000            # `ab` experiments over 4 upstreams
    RELOADS=5 MODELMUX=build/modelmux bench/scale.py 8000
    REDIS_PORT=6379 bench/scale.py 4000  # the Redis store at that port

Each count runs: one start; RELOADS reloads of the same file (best and
median); one reload to a file with the experiments reversed and every fourth
removed (store_retain drops them, metrics slots are looked up again); one
reload back. The upstreams are never contacted. Loopback ports are chosen
free at run time; modelmux is stopped by its PID.

Measured (RelWithDebInfo, 2 shared cores, memory store), 4,000 / 16,000:
  before (8058941): start 0.79 / 9.70 s, reload 0.43 / 6.80 s, reload back 0.79 / 13.3 s
  after the name indexes (1cd0a17): start 0.43 / 1.69 s, reload 0.04 / 0.17 s,
    reload back 0.25 / 3.90 s (each new store state a 385 KB calloc, zeroed
    page by page once glibc had raised its mmap threshold)
  store state mapped, metrics blocks sized by arms: start 0.13 / 0.46 s,
    reload 0.05 / 0.19 s, reload back 0.05 / 0.27 s
"""
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

MODELMUX = os.environ.get("MODELMUX", "build/modelmux")
RELOADS = int(os.environ.get("RELOADS", "3"))
REDIS_PORT = os.environ.get("REDIS_PORT")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def config(n, port, admin, keep=None):
    ups = {"u%d" % i: {"url": "http://127.0.0.1:%d" % (9 + i)} for i in range(4)}
    idx = range(n) if keep is None else keep
    exps = [{"name": "exp-%d" % i, "match": {"path_prefix": "/e/%d/" % i}, "policy": "ab",
             "arms": {"u%d" % (i % 4): 50, "u%d" % ((i + 1) % 4): 50}} for i in idx]
    cfg = {"listen": "127.0.0.1:%d" % port, "admin": {"listen": "127.0.0.1:%d" % admin},
           "upstreams": ups, "experiments": exps}
    if REDIS_PORT:
        cfg["store"] = {"type": "redis", "url": "redis://127.0.0.1:%s" % REDIS_PORT,
                        "prefix": "mmscale%d" % os.getpid()}
    return cfg


def wait_port(port, proc, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("modelmux exited with %s" % proc.returncode)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.002)
    raise RuntimeError("nothing listening on %d after %.0fs" % (port, timeout))


def reload(admin):
    c = http.client.HTTPConnection("127.0.0.1", admin, timeout=600)
    t0 = time.monotonic()
    c.request("POST", "/reload", body=b"")
    r = c.getresponse()
    body = r.read()
    dt = time.monotonic() - t0
    c.close()
    if r.status != 200:
        raise RuntimeError("reload: %d %s" % (r.status, body[:200]))
    return dt


def run(n, tmp):
    port, admin = free_port(), free_port()
    path = os.path.join(tmp, "scale-%d.json" % n)
    with open(path, "w") as f:
        json.dump(config(n, port, admin), f)
    log = open(os.path.join(tmp, "scale-%d.log" % n), "w")
    t0 = time.monotonic()
    proc = subprocess.Popen([MODELMUX, "-c", path], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc, 600)
        start = time.monotonic() - t0
        wait_port(admin, proc, 60)
        same = [reload(admin) for _ in range(RELOADS)]
        keep = [i for i in reversed(range(n)) if i % 4 != 3]
        with open(path, "w") as f:
            json.dump(config(n, port, admin, keep), f)
        changed = reload(admin)
        with open(path, "w") as f:
            json.dump(config(n, port, admin), f)
        back = reload(admin)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    print("%6d experiments: start %.3f s  reload %.3f s (best of %d; median %.3f)"
          "  reload reversed-3/4 %.3f s  reload back %.3f s"
          % (n, start, min(same), len(same), statistics.median(same), changed, back), flush=True)


def main():
    counts = [int(a) for a in sys.argv[1:]] or [4000, 16000]
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            run(n, tmp)


if __name__ == "__main__":
    main()
