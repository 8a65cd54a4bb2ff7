#!/usr/bin/env python3
"""test_admin.py — the admin API, /metrics and the request log, end to end.

Real processes on loopback ports chosen free at run time: modelmux (MM_BIN)
in front of two example model servers (MM_MODEL_SERVER), each stopped by its
PID. What a user relies on is asserted: every endpoint of DESIGN.md §5 and
its errors (with the §4 JSON shape), auth with and without a token, a weight
change visible in the very next requests' X-Modelmux-Arm, /metrics parsed as
valid Prometheus text with exact values after a known sequence of requests,
request-log lines matching what was sent, the log reopened after a rename
plus SIGHUP, and (with MM_REDIS_PORT) a change on one instance seen by
another through Redis within a few sync intervals.

Python standard library only; every wait is a bounded loop.
"""
import http.client
import json
import math
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

MM_BIN = os.environ.get("MM_BIN", "")
MM_MODEL_SERVER = os.environ.get("MM_MODEL_SERVER", "")
HOST = "127.0.0.1"
TOKEN = "s3cret-token"


from mmtest import free_port, recv_head  # free_port never hands out the same port twice


def request(port, method, path, body=None, headers=None, timeout=5.0):
    """One request on a fresh connection: (status, headers lowercased, body bytes)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        data = body
        if isinstance(body, (dict, list)):
            data = json.dumps(body)
        if isinstance(data, str):
            data = data.encode()
        conn.request(method, path, body=data, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def wait_until(pred, timeout=5.0, step=0.02):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            return v
        time.sleep(step)


def read_text(path):
    """The file's text, or "" while it does not exist."""
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def stop_pid(proc, sig=signal.SIGTERM, timeout=10.0):
    if proc.poll() is not None:
        return proc.returncode
    os.kill(proc.pid, sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        return proc.wait(timeout=timeout)


class ModelServer:
    """examples/model_server on a port it picks; ready once it printed its line."""

    def __init__(self, name):
        self.name = name
        self.proc = subprocess.Popen(
            [MM_MODEL_SERVER, "--host", HOST, "--port", "0", "--name", name],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        line = b""
        deadline = time.monotonic() + 10
        while not line.endswith(b"\n") and time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                ch = os.read(self.proc.stdout.fileno(), 1)
                if not ch:
                    break
                line += ch
        m = re.match(rb"model_server (\S+) listening on ([\d.]+):(\d+)", line)
        if not m:
            self.stop()
            raise RuntimeError("model_server did not start: %r" % line)
        self.port = int(m.group(3))

    def stop(self):
        stop_pid(self.proc)
        self.proc.stdout.close()


class Modelmux:
    """modelmux with a config written into its own temp dir."""

    def __init__(self, tmp, config, tag="mm"):
        self.tmp = tmp
        self.config = config
        self.port = config["_port"]
        self.admin_port = config["_admin_port"]
        self.path = os.path.join(tmp, tag + ".json")
        self.write_config(config)
        self.errlog = open(os.path.join(tmp, tag + ".stderr"), "wb")
        self.proc = subprocess.Popen([MM_BIN, "-c", self.path, "--seed", "7"],
                                     stdout=self.errlog, stderr=self.errlog, cwd=tmp)
        ok = wait_until(self._ready, timeout=10)
        if not ok:
            self.stop()
            with open(os.path.join(tmp, tag + ".stderr")) as f:
                raise RuntimeError("modelmux did not start:\n" + f.read())

    def write_config(self, config):
        c = {k: v for k, v in config.items() if not k.startswith("_")}
        with open(self.path, "w") as f:
            json.dump(c, f, indent=1)

    def _ready(self):
        if self.proc.poll() is not None:
            return False
        try:
            return request(self.admin_port, "GET", "/healthz", timeout=1)[0] == 200
        except OSError:
            return False

    def admin(self, method, path, body=None, token=None, headers=None):
        h = dict(headers or {})
        if token:
            h["Authorization"] = "Bearer " + token
        status, hdrs, data = request(self.admin_port, method, path, body, h)
        return status, hdrs, data

    def stop(self):
        rc = stop_pid(self.proc)
        self.errlog.close()
        return rc


def make_config(champ_port, chall_port, log_path, token=None, store=None):
    port, admin_port = free_port(), free_port()
    while admin_port == port:
        admin_port = free_port()

    def by_header(name):
        return {"path_prefix": "/", "headers": {"X-Exp": name}}

    return {
        "_port": port, "_admin_port": admin_port,
        "listen": "%s:%d" % (HOST, port),
        "admin": {"listen": "%s:%d" % (HOST, admin_port), "token": token},
        "store": store or {"type": "memory"},
        "log": {"requests": log_path, "sample": 1.0, "bodies": False},
        "upstreams": {
            "champion": {"url": "http://%s:%d" % (HOST, champ_port), "timeout_ms": 3000},
            "challenger": {"url": "http://%s:%d" % (HOST, chall_port), "timeout_ms": 3000},
        },
        "experiments": [
            {"name": "ranker", "match": by_header("ranker"), "policy": "ab",
             "arms": {"champion": 50, "challenger": 50}},
            {"name": "bandit", "match": by_header("bandit"), "policy": "thompson",
             "arms": ["champion", "challenger"]},
            {"name": "can", "match": by_header("canary"), "policy": "canary",
             "champion": "champion", "canary": "challenger", "steps": [10, 50, 100],
             "step_interval_s": 3600, "analysis": {"min_requests": 10, "max_error_rate": 0.05}},
            {"name": "mirror", "match": by_header("mirror"), "policy": "shadow",
             "primary": "champion", "shadows": ["challenger"], "timeout_ms": 2000,
             "compare": {"ignore": ["/model"]}},
        ],
    }


# ---- a Prometheus text-format (0.0.4) parser that insists on validity ----

NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')


def parse_prometheus(text):
    """{(name, frozenset(labels)): value}; raises AssertionError on any violation."""
    assert text.endswith("\n"), "exposition must end with a line feed"
    types, helps, samples, closed = {}, set(), {}, set()
    current = None
    for n, line in enumerate(text.split("\n")[:-1], 1):
        assert line, "empty line %d" % n
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                assert NAME_RE.fullmatch(name), "bad name on line %d" % n
                assert name not in closed and name != current, "HELP/TYPE after samples: %d" % n
                if parts[1] == "TYPE":
                    assert name not in types, "second TYPE for " + name
                    assert parts[3] in ("counter", "gauge", "histogram", "summary", "untyped")
                    types[name] = parts[3]
                else:
                    assert name not in helps, "second HELP for " + name
                    helps.add(name)
            continue
        m = NAME_RE.match(line)
        assert m, "bad sample line %d: %s" % (n, line)
        name, rest = m.group(0), line[m.end():]
        labels = {}
        if rest.startswith("{"):
            end = 1
            while rest[end] != "}":
                lm = LABEL_RE.match(rest, end)
                assert lm, "bad labels on line %d: %s" % (n, line)
                assert lm.group(1) not in labels, "duplicate label on line %d" % n
                labels[lm.group(1)] = (lm.group(2).replace("\\n", "\n").replace('\\"', '"')
                                       .replace("\\\\", "\\"))
                end = lm.end()
                if rest[end] == ",":
                    end += 1
            rest = rest[end + 1:]
        assert rest.startswith(" "), "no space before value on line %d" % n
        fields = rest[1:].split(" ")
        assert len(fields) in (1, 2), "bad value on line %d" % n
        v = fields[0]
        value = {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}.get(v)
        if value is None:
            value = float(v)
        family = name
        for sfx in ("_bucket", "_sum", "_count"):
            if name.endswith(sfx) and types.get(name[:-len(sfx)]) == "histogram":
                family = name[:-len(sfx)]
        assert family in types, "sample without TYPE: " + name
        assert family not in closed, "family not contiguous: " + family
        if current is not None and current != family:
            closed.add(current)
        current = family
        if types[family] == "counter":
            assert value >= 0, "negative counter " + name
        key = (name, frozenset(labels.items()))
        assert key not in samples, "duplicate series %r" % (key,)
        samples[key] = value
    # histograms: cumulative buckets ending in +Inf == _count
    for fam, t in types.items():
        if t != "histogram":
            continue
        series = {}
        for (name, labels), v in samples.items():
            if name == fam + "_bucket":
                d = dict(labels)
                le = d.pop("le")
                series.setdefault(frozenset(d.items()), []).append((float(le), v))
        for key, buckets in series.items():
            buckets.sort()
            assert buckets[-1][0] == math.inf, "no +Inf bucket"
            vals = [b[1] for b in buckets]
            assert vals == sorted(vals), "buckets not cumulative"
            assert samples[(fam + "_count", key)] == vals[-1], "_count != +Inf bucket"
    return samples


def metric(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


class Base(unittest.TestCase):
    token = None
    store = None
    extra_experiments = []  # appended to make_config's

    @classmethod
    def setUpClass(cls):
        if not MM_BIN or not MM_MODEL_SERVER:
            raise unittest.SkipTest("MM_BIN and MM_MODEL_SERVER are needed")
        cls.tmp = tempfile.mkdtemp(prefix="mm-admin-test.")
        cls.servers = []
        cls.mm = None
        try:
            cls.champion = ModelServer("champion")
            cls.servers.append(cls.champion)
            cls.challenger = ModelServer("challenger")
            cls.servers.append(cls.challenger)
            cls.log_path = os.path.join(cls.tmp, "logs", "requests.jsonl")
            cls.config = make_config(cls.champion.port, cls.challenger.port, cls.log_path,
                                     cls.token, cls.store)
            cls.config["experiments"] += cls.extra_experiments
            cls.mm = Modelmux(cls.tmp, cls.config)
        except Exception:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.mm:
            cls.mm.stop()
        for s in cls.servers:
            s.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    # helpers
    def admin(self, method, path, body=None, token=None, headers=None):
        return self.mm.admin(method, path, body, token or self.token, headers)

    def admin_json(self, method, path, body=None, expect=200):
        status, hdrs, data = self.admin(method, path, body)
        self.assertEqual(status, expect, data)
        self.assertTrue(hdrs["content-type"].startswith("application/json"))
        return json.loads(data)

    def assert_error(self, resp, status, code):
        st, hdrs, data = resp
        self.assertEqual(st, status, data)
        body = json.loads(data)
        self.assertEqual(set(body), {"error", "message", "request_id"})
        self.assertEqual(body["error"], code)
        self.assertTrue(body["message"])
        self.assertEqual(body["request_id"], hdrs["x-request-id"])
        return body, hdrs

    def send(self, exp, path="/echo", n=1, method="GET", body=None, rid=None):
        arms = []
        for i in range(n):
            h = {"X-Exp": exp} if exp else {}
            if rid:
                h["X-Request-Id"] = "%s-%d" % (rid, i)
            st, hdrs, _ = request(self.mm.port, method, path, body, h)
            arms.append((st, hdrs.get("x-modelmux-arm"), hdrs.get("x-request-id")))
        return arms

    def metrics(self):
        st, hdrs, data = self.admin("GET", "/metrics")
        self.assertEqual(st, 200)
        self.assertEqual(hdrs["content-type"].split(";")[0], "text/plain")
        self.assertIn("version=0.0.4", hdrs["content-type"])
        return parse_prometheus(data.decode())


class TestAdminAPI(Base):
    """Every endpoint and error, no token."""

    def setUp(self):
        for name in ("ranker", "bandit", "can", "mirror"):
            self.admin_json("POST", "/experiments/%s/reset" % name)

    def test_health_and_readiness_need_nothing(self):
        self.assertEqual(self.admin_json("GET", "/healthz"), {"status": "ok", "store": "up"})
        self.assertEqual(self.admin_json("GET", "/readyz"), {"status": "ok", "store": "up"})
        st, _, body = self.admin("HEAD", "/healthz")
        self.assertEqual((st, body), (200, b""))

    def test_wrong_method_is_405_with_allow(self):
        for method, path, allow in (("POST", "/healthz", "GET"), ("DELETE", "/metrics", "GET"),
                                    ("POST", "/experiments", "GET"),
                                    ("GET", "/experiments/ranker/weights", "PUT"),
                                    ("POST", "/experiments/ranker/weights", "PUT"),
                                    ("GET", "/experiments/ranker/promote", "POST"),
                                    ("PUT", "/experiments/ranker", "GET"), ("GET", "/reload", "POST")):
            _, hdrs = self.assert_error(self.admin(method, path), 405, "method_not_allowed")
            self.assertIn(allow, hdrs["allow"])

    def test_unknown_paths_and_experiments_are_404(self):
        for method, path in (("GET", "/nope"), ("GET", "/experiments/zzz"),
                             ("POST", "/experiments/zzz/pause"),
                             ("PUT", "/experiments/zzz/weights"),
                             ("GET", "/experiments/ranker/frobnicate"), ("GET", "/")):
            self.assert_error(self.admin(method, path), 404, "not_found")

    def test_experiment_list_and_view(self):
        listing = self.admin_json("GET", "/experiments")
        self.assertEqual([e["name"] for e in listing["experiments"]],
                         ["ranker", "bandit", "can", "mirror"])
        one = self.admin_json("GET", "/experiments/ranker")
        self.assertEqual(listing["experiments"][0]["arms"], one["arms"])
        for key in ("name", "policy", "state", "version", "arms", "policy_state"):
            self.assertIn(key, one)
        self.assertEqual((one["name"], one["policy"], one["state"]), ("ranker", "ab", "running"))
        self.assertEqual([a["name"] for a in one["arms"]], ["champion", "challenger"])
        for a in one["arms"]:
            self.assertEqual(set(a), {"name", "share", "requests", "errors", "p50_ms", "p99_ms",
                                      "feedback", "reward_mean"})
            self.assertAlmostEqual(a["share"], 0.5)
        self.assertIsInstance(one["policy_state"], dict)
        self.assertEqual(self.admin_json("GET", "/experiments/bandit")["policy"], "thompson")

    def test_view_counts_requests_and_latency(self):
        self.admin_json("PUT", "/experiments/ranker/weights", {"challenger": 1})
        self.send("ranker", "/status/500", n=2)
        self.send("ranker", "/echo", n=3)
        arms = {a["name"]: a for a in self.admin_json("GET", "/experiments/ranker")["arms"]}
        self.assertEqual(arms["challenger"]["requests"], 5)
        self.assertEqual(arms["challenger"]["errors"], 2)
        self.assertEqual(arms["champion"]["requests"], 0)
        self.assertGreater(arms["challenger"]["p50_ms"], 0)
        self.assertGreaterEqual(arms["challenger"]["p99_ms"], arms["challenger"]["p50_ms"])
        self.assertIsNone(arms["challenger"]["reward_mean"])
        rid = self.send("ranker", "/echo")[0][2]
        st, _, data = request(self.mm.port, "POST", "/_modelmux/feedback",
                              {"request_id": rid, "reward": 0.5})
        self.assertEqual(st, 202, data)
        arms = {a["name"]: a for a in self.admin_json("GET", "/experiments/ranker")["arms"]}
        self.assertEqual(arms["challenger"]["feedback"], 1)
        self.assertAlmostEqual(arms["challenger"]["reward_mean"], 0.5)

    def test_weight_change_applies_to_the_very_next_request(self):
        v0 = self.admin_json("GET", "/experiments/ranker")["version"]
        view = self.admin_json("PUT", "/experiments/ranker/weights",
                               {"champion": 0, "challenger": 3})
        self.assertEqual(view["version"], v0 + 1)
        self.assertEqual(view["state"], "running")
        self.assertEqual({a["name"]: a["share"] for a in view["arms"]},
                         {"champion": 0.0, "challenger": 1.0})
        self.assertEqual({a for _, a, _ in self.send("ranker", n=20)}, {"challenger"})
        self.admin_json("PUT", "/experiments/ranker/weights", {"champion": 2})  # challenger: 0
        self.assertEqual({a for _, a, _ in self.send("ranker", n=20)}, {"champion"})
        self.admin_json("PUT", "/experiments/ranker/weights", {"champion": 1, "challenger": 1})
        seen = {a for _, a, _ in self.send("ranker", n=60)}
        self.assertEqual(seen, {"champion", "challenger"})

    def test_bad_weights_are_rejected(self):
        before = self.admin_json("GET", "/experiments/ranker")["version"]
        for body in ("{not json", "[1, 2]", '"x"', "", {}, {"champion": -1},
                     {"champion": 0, "challenger": 0}, {"champion": "10"},
                     {"champion": True}, {"champion": None}, '{"champion": 1, "champion": 2}',
                     {"champion": 1e308, "challenger": 1e308}):
            self.assert_error(self.admin("PUT", "/experiments/ranker/weights", body), 400,
                              "bad_request")
        self.assert_error(self.admin("PUT", "/experiments/ranker/weights",
                                     {"champion": 1, "nobody": 1}), 404, "not_found")
        body, _ = self.assert_error(self.admin("PUT", "/experiments/bandit/weights",
                                               {"champion": 1}), 409, "conflict")
        self.assertIn("thompson", body["message"])
        self.assert_error(self.admin("PUT", "/experiments/can/weights", {"champion": 1}), 409,
                          "conflict")
        self.assertEqual(self.admin_json("GET", "/experiments/ranker")["version"], before)

    def test_promote_and_rollback_route_everything(self):
        view = self.admin_json("POST", "/experiments/ranker/promote", {"arm": "challenger"})
        self.assertEqual(view["state"], "promoted")
        self.assertEqual({a for _, a, _ in self.send("ranker", n=20)}, {"challenger"})
        view = self.admin_json("POST", "/experiments/ranker/rollback")
        self.assertEqual(view["state"], "rolled_back")
        self.assertEqual({a for _, a, _ in self.send("ranker", n=20)}, {"champion"})
        # a bandit can be promoted too: the operator overrides the policy
        self.admin_json("POST", "/experiments/bandit/promote", {"arm": "challenger"})
        self.assertEqual({a for _, a, _ in self.send("bandit", n=20)}, {"challenger"})
        # PUT weights runs a promoted experiment again
        view = self.admin_json("PUT", "/experiments/ranker/weights", {"challenger": 1})
        self.assertEqual(view["state"], "running")

    def test_promote_errors(self):
        self.assert_error(self.admin("POST", "/experiments/ranker/promote", {"arm": "zz"}), 404,
                          "not_found")
        for body in ("", {}, {"arm": 3}, {"arm": "challenger", "extra": 1}, "[]", "{"):
            self.assert_error(self.admin("POST", "/experiments/ranker/promote", body), 400,
                              "bad_request")
        for path in ("rollback", "pause", "resume", "reset"):
            self.assert_error(self.admin("POST", "/experiments/ranker/" + path, {"x": 1}), 400,
                              "bad_request")
            self.assert_error(self.admin("POST", "/experiments/ranker/" + path, "{bad"), 400,
                              "bad_request")

    def test_pause_resume_reset(self):
        v = self.admin_json("GET", "/experiments/bandit")["version"]
        view = self.admin_json("POST", "/experiments/bandit/pause", {})
        self.assertEqual((view["state"], view["version"]), ("paused", v + 1))
        view = self.admin_json("POST", "/experiments/bandit/pause")  # idempotent
        self.assertEqual((view["state"], view["version"]), ("paused", v + 1))
        self.send("bandit", n=5)  # still routed while paused
        view = self.admin_json("POST", "/experiments/bandit/resume")
        self.assertEqual((view["state"], view["version"]), ("running", v + 2))
        self.assertEqual(sum(a["requests"] for a in view["arms"]), 5)
        # nothing to freeze in a rolled-back experiment
        self.admin_json("POST", "/experiments/bandit/rollback")
        self.assert_error(self.admin("POST", "/experiments/bandit/pause"), 409, "conflict")
        view = self.admin_json("POST", "/experiments/bandit/reset")
        self.assertEqual(view["state"], "running")
        self.assertEqual(sum(a["requests"] for a in view["arms"]), 0)
        self.assertIsNone(view["weights"])
        # resume after promote: a bandit routes again, and its view says so
        self.admin_json("POST", "/experiments/bandit/promote", {"arm": "challenger"})
        view = self.admin_json("POST", "/experiments/bandit/resume")
        self.assertEqual(view["state"], "running")
        self.assertIsNone(view["weights"])
        # ab keeps the promoted weights when resumed (they are its routing)
        self.admin_json("POST", "/experiments/ranker/promote", {"arm": "challenger"})
        view = self.admin_json("POST", "/experiments/ranker/resume")
        self.assertEqual((view["state"], view["weights"]), ("running", {"champion": 0,
                                                                        "challenger": 100}))
        self.assertEqual({a for _, a, _ in self.send("ranker", n=10)}, {"challenger"})
        # an A/B experiment's audit lines speak of no canary step (its
        # control's step moves on promote, but means nothing for ab)
        with open(os.path.join(self.tmp, "mm.stderr")) as f:
            log = f.read()
        self.assertIn("experiment ranker promote: state running -> promoted, weights champion 0, "
                      "challenger 100\n", log)
        self.assertIn("experiment ranker resume: state promoted -> running, weights champion 0, "
                      "challenger 100\n", log)

    def test_canary_rollback_stops_it(self):
        view = wait_until(lambda: (lambda v: v if v["policy_state"]["step"] == 10 else None)(
            self.admin_json("GET", "/experiments/can")), timeout=5)
        self.assertTrue(view, "the canary did not start at its first step")
        self.assertAlmostEqual({a["name"]: a["share"] for a in view["arms"]}["challenger"], 0.1)
        self.assertEqual(metric(self.metrics(), "modelmux_canary_step", experiment="can"), 10)
        view = self.admin_json("POST", "/experiments/can/rollback")
        self.assertEqual(view["state"], "rolled_back")
        # The operator's transition is in the history and on stderr, as an
        # analysis's is (README "canary"); it was in neither.
        last = view["policy_state"]["last_analysis"]
        self.assertEqual({k: last[k] for k in ("verdict", "from", "to", "state", "reason")},
                         {"verdict": "operator", "from": 10, "to": 0, "state": "rolled_back",
                          "reason": "rollback through the admin API"}, last)
        self.assertNotIn("canary_requests", last)
        with open(os.path.join(self.tmp, "mm.stderr")) as f:
            self.assertRegex(f.read(), r"admin 127\.0\.0\.1: experiment can rollback: state "
                             r"running -> rolled_back, canary step 10 -> 0, weights champion 100, "
                             r"challenger 0\n")
        s = self.metrics()
        self.assertEqual(metric(s, "modelmux_canary_step", experiment="can"), 0)
        self.assertEqual(metric(s, "modelmux_experiment_state", experiment="can",
                                state="rolled_back"), 1)
        self.assertEqual({a for _, a, _ in self.send("canary", n=20)}, {"champion"})
        # resumed, it starts over at its first step at once: in the answer,
        # and for the very next requests (not at step 0 until the next tick)
        view = self.admin_json("POST", "/experiments/can/resume")
        self.assertEqual((view["state"], view["policy_state"]["step"]), ("running", 10))
        self.assertEqual([(h["verdict"], h["from"], h["to"], h["state"])
                          for h in view["policy_state"]["history"][-3:]],
                         [("operator", 10, 0, "rolled_back"), ("operator", 0, 0, "running"),
                          ("started", 0, 10, "running")])
        self.assertAlmostEqual({a["name"]: a["share"] for a in view["arms"]}["challenger"], 0.1)
        self.assertIn("challenger", {a for _, a, _ in self.send("canary", n=100)})

    def test_reload(self):
        before = self.metrics()
        self.assertEqual(self.admin_json("POST", "/reload"), {"status": "reloaded"})
        with open(self.mm.path) as f:
            good = f.read()
        try:
            with open(self.mm.path, "w") as f:
                f.write(good.replace('"policy": "ab"', '"policy": "nope"', 1))
            body, _ = self.assert_error(self.admin("POST", "/reload"), 400, "bad_request")
            self.assertRegex(body["message"], re.escape(self.mm.path) + r":\d+:\d+: ")
        finally:
            with open(self.mm.path, "w") as f:
                f.write(good)
        self.assertEqual(self.admin_json("POST", "/reload"), {"status": "reloaded"})
        after = self.metrics()
        self.assertEqual(metric(after, "modelmux_reloads_total"),
                         metric(before, "modelmux_reloads_total") + 2)
        self.assertEqual(metric(after, "modelmux_reload_failures_total"),
                         metric(before, "modelmux_reload_failures_total") + 1)
        self.assertEqual(self.send("ranker")[0][0], 200)


class TestDotNames(Base):
    """Experiments named "." and ".." (DESIGN.md §3 allows them) are reached
    by their literal path segment: no dot-segment removal below /experiments."""
    token = "dots-token"
    extra_experiments = [
        {"name": n, "match": {"path_prefix": "/", "headers": {"X-Exp": "dot%d" % len(n)}},
         "policy": "ab", "arms": {"champion": 1, "challenger": 1}} for n in ("..", ".")]

    def test_dot_names_are_reachable(self):
        for path, name in (("/experiments/..", ".."), ("/experiments/.", "."),
                           ("/experiments/%2E%2E", ".."), ("/experiments/%2e/", "."),
                           ("//experiments//ranker/", "ranker")):
            self.assertEqual(self.admin_json("GET", path)["name"], name, path)
        view = self.admin_json("POST", "/experiments/./rollback")
        self.assertEqual((view["name"], view["state"]), (".", "rolled_back"))
        self.assertEqual(self.admin_json("GET", "/experiments/..")["state"], "running")
        view = self.admin_json("POST", "/experiments/../pause")
        self.assertEqual((view["name"], view["state"]), ("..", "paused"))
        self.assertEqual(self.admin_json("GET", "/experiments/ranker")["state"], "running")
        for n in (".", ".."):
            self.admin_json("POST", "/experiments/%s/reset" % n)
        # the list is /experiments itself; a dot-segment leads nowhere else
        self.assertIsInstance(self.admin_json("GET", "/experiments/"), (list, dict))
        self.assertNotIn("name", self.admin_json("GET", "/experiments/"))
        self.assert_error(self.admin("GET", "/experiments/../metrics"), 404, "not_found")
        st, _, _ = self.mm.admin("GET", "/experiments/../healthz", None, None, None)
        self.assertEqual(st, 401)


class TestAuth(Base):
    """admin.token set: everything but /healthz and /readyz needs it."""
    token = TOKEN

    def test_probes_need_no_token(self):
        for path in ("/healthz", "/readyz"):
            self.assertEqual(self.mm.admin("GET", path)[0], 200)

    def test_missing_or_wrong_token_is_401(self):
        for token, extra in ((None, None), ("wrong", None), (TOKEN + "x", None),
                             (TOKEN[:-1], None), (None, {"Authorization": "Basic " + TOKEN}),
                             (None, {"Authorization": TOKEN})):
            for method, path in (("GET", "/metrics"), ("GET", "/experiments"),
                                 ("GET", "/experiments/ranker"), ("GET", "/nope"),
                                 ("PUT", "/experiments/ranker/weights"), ("POST", "/reload")):
                _, hdrs = self.assert_error(self.mm.admin(method, path, token=token,
                                                          headers=extra), 401, "unauthorized")
                self.assertIn("Bearer", hdrs["www-authenticate"])

    def head_only(self, head):
        """Send a request head announcing a 4 MB body, and none of the body:
        the answer must come from the head alone."""
        with socket.create_connection((HOST, self.mm.admin_port), timeout=5) as s:
            s.sendall(head.encode())
            s.settimeout(5)
            data = recv_head(s)
        return data.decode("latin-1")

    def test_a_body_is_not_read_before_the_token_is_checked(self):
        # Otherwise a client without the token could make modelmux read and
        # hold up to 4 MiB per connection (admin connections are not counted
        # in max_connections); the old code waited for the body.
        for extra in ("", "Expect: 100-continue\r\n",
                      "Authorization: Bearer wrong\r\n"):
            got = self.head_only("POST /reload HTTP/1.1\r\nHost: x\r\n%s"
                                 "Content-Length: 4000000\r\n\r\n" % extra)
            self.assertTrue(got.startswith("HTTP/1.1 401 "), got)
            self.assertIn("Bearer", got)
            self.assertIn("Connection: close", got)
        # A change from a web page, with the token: 403 on the head too.
        got = self.head_only("PUT /experiments/ranker/weights HTTP/1.1\r\nHost: x\r\n"
                             "Authorization: Bearer %s\r\nOrigin: http://evil.example\r\n"
                             "Content-Length: 4000000\r\n\r\n" % TOKEN)
        self.assertTrue(got.startswith("HTTP/1.1 403 "), got)
        # With the token, the body is waited for and read as before.
        st, _, _ = self.mm.admin("PUT", "/experiments/ranker/weights", {"champion": 1},
                                 token=TOKEN)
        self.assertEqual(st, 200)

    def test_right_token_is_accepted(self):
        self.assertEqual(self.mm.admin("GET", "/metrics", token=TOKEN)[0], 200)
        st, _, _ = self.mm.admin("GET", "/experiments", headers={
            "Authorization": "bearer   " + TOKEN})
        self.assertEqual(st, 200)
        st, _, _ = self.mm.admin("PUT", "/experiments/ranker/weights", {"champion": 1},
                                 token=TOKEN)
        self.assertEqual(st, 200)
        self.assertEqual({a for _, a, _ in self.send("ranker", n=10)}, {"champion"})


class TestMetricsAndLog(Base):
    """A fresh instance, a known sequence of requests, exact numbers."""

    def test_metrics_and_request_log_after_a_known_sequence(self):
        self.admin_json("PUT", "/experiments/ranker/weights", {"champion": 1})
        sent = []
        sent += [("ranker", "GET", "/echo?i=%d" % i, 200, "champion") for i in range(5)]
        sent += [("ranker", "GET", "/status/503", 503, "champion") for _ in range(2)]
        for i, (exp, method, path, _, _) in enumerate(sent):
            st, arm, _ = self.send(exp, path, method=method, rid="seq%d" % i)[0]
        self.admin_json("PUT", "/experiments/ranker/weights", {"challenger": 1})
        tail = [("ranker", "POST", "/echo/x?q=%22a%22", 200, "challenger") for _ in range(3)]
        tail += [(None, "GET", "/unrouted", 404, None) for _ in range(2)]
        for j, (exp, method, path, _, _) in enumerate(tail):
            self.send(exp, path, method=method, body=b'{"k":1}' if method == "POST" else None,
                      rid="seq%d" % (len(sent) + j))
        sent += tail
        st, _, data = request(self.mm.port, "POST", "/_modelmux/feedback",
                              {"request_id": "seq7-0", "reward": 2.5},
                              {"X-Request-Id": "fb-1"})
        self.assertEqual((st, json.loads(data)["accepted"]), (202, 1))
        total_lines = len(sent) + 1

        # the log is flushed by a timer; connections close after the answers
        def settled():
            s = self.metrics()
            ok = metric(s, "modelmux_requestlog_written_total") == total_lines and \
                metric(s, "modelmux_connections") == 0
            return s if ok else None
        s = wait_until(settled, timeout=10, step=0.05)
        if not s:
            s = self.metrics()
            self.fail("did not settle: %d lines written of %d, %d connections" % (
                metric(s, "modelmux_requestlog_written_total"), total_lines,
                metric(s, "modelmux_connections")))

        def req(exp, arm, code):
            return metric(s, "modelmux_requests_total", experiment=exp, arm=arm, code=code)
        self.assertEqual(req("ranker", "champion", "200"), 5)
        self.assertEqual(req("ranker", "champion", "503"), 2)
        self.assertEqual(req("ranker", "challenger", "200"), 3)
        self.assertIsNone(req("ranker", "challenger", "503"))
        self.assertEqual(req("", "", "404"), 2)
        self.assertEqual(sum(v for (n, _), v in s.items() if n == "modelmux_requests_total"), 12)
        dur = "modelmux_request_duration_seconds"
        self.assertEqual(metric(s, dur + "_count", experiment="ranker", arm="champion"), 7)
        self.assertEqual(metric(s, dur + "_count", experiment="ranker", arm="challenger"), 3)
        self.assertEqual(metric(s, dur + "_bucket", experiment="ranker", arm="champion",
                                le="+Inf"), 7)
        self.assertGreater(metric(s, dur + "_sum", experiment="ranker", arm="champion"), 0)
        self.assertEqual(metric(s, dur + "_count", experiment="bandit", arm="champion"), 0)
        for o in ("match", "mismatch", "error", "dropped"):
            self.assertEqual(metric(s, "modelmux_shadow_total", experiment="mirror",
                                    arm="challenger", outcome=o), 0)
        self.assertEqual(metric(s, "modelmux_feedback_total", experiment="ranker",
                                arm="challenger"), 1)
        self.assertEqual(metric(s, "modelmux_feedback_total", experiment="ranker",
                                arm="champion"), 0)
        self.assertEqual(metric(s, "modelmux_reward_sum", experiment="ranker",
                                arm="challenger"), 2.5)
        self.assertEqual(metric(s, "modelmux_arm_share", experiment="ranker", arm="challenger"), 1)
        self.assertEqual(metric(s, "modelmux_arm_share", experiment="ranker", arm="champion"), 0)
        self.assertEqual(metric(s, "modelmux_arm_share", experiment="mirror", arm="champion"), 1)
        self.assertEqual(metric(s, "modelmux_canary_step", experiment="can"), 10)
        self.assertEqual(metric(s, "modelmux_fallbacks_total", experiment="ranker",
                                **{"from": "challenger", "to": "champion"}), 0)
        for up in ("champion", "challenger"):
            for kind in ("connect", "connect_timeout", "timeout", "reset", "protocol",
                         "overflow", "ejection"):
                self.assertEqual(metric(s, "modelmux_upstream_errors_total", upstream=up,
                                        kind=kind), 0)
        self.assertEqual(metric(s, "modelmux_store_up"), 1)
        self.assertEqual(metric(s, "modelmux_requestlog_dropped_total"), 0)
        self.assertEqual(metric(s, "modelmux_experiment_control_version", experiment="ranker"),
                         2)

        # the request log: one line per data-plane request, none for admin calls
        with open(self.log_path) as f:
            lines = [json.loads(line) for line in f]
        self.assertEqual(len(lines), total_lines)
        by_id = {line["request_id"]: line for line in lines}
        keys = {"ts", "request_id", "experiment", "arm", "method", "path", "status",
                "latency_us", "bytes_in", "bytes_out", "shadow"}
        for i, (exp, method, path, status, arm) in enumerate(sent):
            line = by_id["seq%d-0" % i]
            self.assertEqual(set(line), keys)
            self.assertEqual((line["experiment"], line["arm"], line["method"], line["path"],
                              line["status"]), (exp, arm, method, path, status), line)
            self.assertRegex(line["ts"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
            self.assertGreater(line["latency_us"], 0)
            self.assertEqual(line["bytes_in"], 7 if method == "POST" else 0)
            self.assertEqual(line["shadow"], [])
            if status == 404:
                self.assertGreater(line["bytes_out"], 0)  # the JSON error body
        fb = by_id["fb-1"]
        self.assertEqual((fb["experiment"], fb["path"], fb["status"]),
                         (None, "/_modelmux/feedback", 202))
        ts = [line["ts"] for line in lines]
        self.assertEqual(len(set(line["request_id"] for line in lines)), total_lines)
        self.assertTrue(ts[0] <= ts[-1])

    def test_shadow_outcomes_in_metrics_and_log(self):
        """Runs after the exact-count test (names sort): counts are deltas."""
        def shadow(s, outcome):
            return metric(s, "modelmux_shadow_total", experiment="mirror", arm="challenger",
                          outcome=outcome)
        before = self.metrics()
        self.send("mirror", "/status/200", n=2, rid="mir")  # both answer 200: match
        self.send("mirror", "/status/404", n=1, rid="mis")  # the same 404 from both: match
        want = {"match": 3, "mismatch": 0, "error": 0, "dropped": 0}

        def done():
            s = self.metrics()
            return s if sum(shadow(s, o) - shadow(before, o) for o in want) == 3 else None
        s = wait_until(done, timeout=10, step=0.05)
        self.assertTrue(s, "mirrors did not finish")
        self.assertEqual({o: shadow(s, o) - shadow(before, o) for o in want}, want)
        self.assertEqual(metric(s, "modelmux_requests_total", experiment="mirror",
                                arm="champion", code="200") -
                         (metric(before, "modelmux_requests_total", experiment="mirror",
                                 arm="champion", code="200") or 0), 2)
        def logged():
            found = [json.loads(x) for x in read_text(self.log_path).splitlines()
                     if '"mir-' in x or '"mis-' in x]
            return found if len(found) == 3 else None
        lines = {x["request_id"]: x for x in wait_until(logged, timeout=5) or []}
        self.assertEqual(set(lines), {"mir-0", "mir-1", "mis-0"})
        for rid, status in (("mir-0", 200), ("mir-1", 200), ("mis-0", 404)):
            line = lines[rid]
            self.assertEqual((line["experiment"], line["arm"], line["status"]),
                             ("mirror", "champion", status))
            self.assertEqual(len(line["shadow"]), 1)
            sh = line["shadow"][0]
            self.assertEqual(set(sh), {"arm", "status", "latency_us", "outcome"})
            self.assertEqual((sh["arm"], sh["status"], sh["outcome"]),
                             ("challenger", status, "match"))

    def test_zz_log_reopens_after_rename_and_sighup(self):
        self.send("ranker", rid="pre")
        self.assertTrue(wait_until(lambda: '"pre-0"' in read_text(self.log_path), timeout=5))
        rotated = self.log_path + ".1"
        os.rename(self.log_path, rotated)
        reloads = metric(self.metrics(), "modelmux_reloads_total")
        os.kill(self.mm.proc.pid, signal.SIGHUP)
        self.assertTrue(wait_until(lambda: metric(self.metrics(), "modelmux_reloads_total") ==
                                   reloads + 1, timeout=5))
        self.send("ranker", n=3, rid="post")
        ok = wait_until(lambda: read_text(self.log_path).count('"post-') == 3, timeout=5)
        self.assertTrue(ok, "no new lines in the reopened file")
        old = read_text(rotated)
        self.assertIn('"pre-0"', old)
        self.assertNotIn('"post-', old)


@unittest.skipUnless(os.environ.get("MM_REDIS_PORT"), "MM_REDIS_PORT not set")
class TestSharedThroughRedis(unittest.TestCase):
    """A change on instance A is seen by instance B through Redis."""
    SYNC_MS = 50

    @classmethod
    def setUpClass(cls):
        if not MM_BIN or not MM_MODEL_SERVER:
            raise unittest.SkipTest("MM_BIN and MM_MODEL_SERVER are needed")
        cls.tmp = tempfile.mkdtemp(prefix="mm-admin-redis.")
        cls.procs = []
        try:
            cls.champion = ModelServer("champion")
            cls.procs.append(cls.champion)
            cls.challenger = ModelServer("challenger")
            cls.procs.append(cls.challenger)
            store = {"type": "redis", "host": HOST, "port": int(os.environ["MM_REDIS_PORT"]),
                     "prefix": "mmtest-admin-%d-%d" % (os.getpid(), time.time_ns()),
                     "sync_ms": cls.SYNC_MS}
            cls.a = Modelmux(cls.tmp, make_config(cls.champion.port, cls.challenger.port,
                                                  os.path.join(cls.tmp, "a.jsonl"),
                                                  store=store), "a")
            cls.procs.append(cls.a)
            cls.b = Modelmux(cls.tmp, make_config(cls.champion.port, cls.challenger.port,
                                                  os.path.join(cls.tmp, "b.jsonl"),
                                                  store=store), "b")
            cls.procs.append(cls.b)
        except Exception:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        for p in reversed(cls.procs):
            p.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def view(self, mm, name):
        st, _, data = mm.admin("GET", "/experiments/" + name)
        self.assertEqual(st, 200)
        return json.loads(data)

    def test_weight_change_on_a_is_seen_on_b(self):
        self.assertEqual(json.loads(self.b.admin("GET", "/readyz")[2])["store"], "up")
        st, _, data = self.a.admin("PUT", "/experiments/ranker/weights", {"challenger": 1})
        self.assertEqual(st, 200, data)
        version = json.loads(data)["version"]
        t0 = time.monotonic()
        seen = wait_until(lambda: self.view(self.b, "ranker")["version"] >= version,
                          timeout=5, step=0.01)
        elapsed = time.monotonic() - t0
        self.assertTrue(seen, "B never saw the change")
        self.assertLess(elapsed, 10 * self.SYNC_MS / 1000.0 + 0.2)
        view = self.view(self.b, "ranker")
        self.assertEqual(view["weights"], {"champion": 0.0, "challenger": 1.0})
        arms = set()
        for _ in range(20):
            st, hdrs, _ = request(self.b.port, "GET", "/echo", headers={"X-Exp": "ranker"})
            arms.add(hdrs["x-modelmux-arm"])
        self.assertEqual(arms, {"challenger"})
        # and back, the other way round
        st, _, data = self.b.admin("POST", "/experiments/ranker/rollback")
        version = json.loads(data)["version"]
        self.assertTrue(wait_until(lambda: self.view(self.a, "ranker")["state"] == "rolled_back",
                                   timeout=5, step=0.01))
        self.assertGreaterEqual(self.view(self.a, "ranker")["version"], version)


if __name__ == "__main__":
    unittest.main(verbosity=2)
