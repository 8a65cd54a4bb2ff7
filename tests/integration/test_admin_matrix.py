#!/usr/bin/env python3
"""test_admin_matrix.py — the admin API of DESIGN.md §5 against every policy,
and the letter of the request log and metrics of §7.

One modelmux with one experiment per policy (shadow, canary, ab, thompson,
epsilon_greedy, ucb1, interleave), each chosen by an X-Exp header, in front
of two example model servers that answer a ranked list (for interleave).
Every action is checked by what a user sees: the JSON view, the metrics,
and where the next real requests go (X-Modelmux-Arm).

Real processes on loopback ports chosen free at run time, stopped by PID;
every wait is a bounded loop.
"""
import base64
import json
import math
import re
import subprocess
import time
import unittest

import mmtest
from test_admin import parse_prometheus, metric

POLICIES = {"sh": "shadow", "ca": "canary", "ab": "ab", "th": "thompson",
            "eg": "epsilon_greedy", "uc": "ucb1", "il": "interleave"}
BANDITS = ("th", "eg", "uc")
ARMS = ["champion", "challenger"]
TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def experiments():
    def m(name):
        return {"path_prefix": "/", "headers": {"X-Exp": name}}
    return [
        {"name": "sh", "match": m("sh"), "policy": "shadow", "primary": "champion",
         "shadows": ["challenger"], "timeout_ms": 2000},
        {"name": "ca", "match": m("ca"), "policy": "canary", "champion": "champion",
         "canary": "challenger", "steps": [10, 50, 100], "step_interval_s": 3600,
         "analysis": {"min_requests": 5, "max_error_rate": 0.5}},
        {"name": "ab", "match": m("ab"), "policy": "ab", "arms": {"champion": 50, "challenger": 50}},
        {"name": "th", "match": m("th"), "policy": "thompson", "arms": ARMS},
        {"name": "eg", "match": m("eg"), "policy": "epsilon_greedy", "arms": ARMS,
         "epsilon": 0.2},
        {"name": "uc", "match": m("uc"), "policy": "ucb1", "arms": ARMS},
        {"name": "il", "match": m("il"), "policy": "interleave", "arms": ARMS,
         "list_pointer": "/items", "id_field": "id", "k": 10},
    ]


class Matrix(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = mmtest.Cluster()
        try:
            a = cls.cluster.model_server("champion", "--list", 20)
            b = cls.cluster.model_server("challenger", "--list", 20, "--seed", 2)
            cls.port, cls.admin_port = mmtest.free_port(), mmtest.free_port()
            cls.log_path = cls.cluster.path("requests.jsonl")
            cls.cfg = mmtest.base_config(
                cls.port, {"champion": a.port, "challenger": b.port}, experiments(),
                admin_port=cls.admin_port,
                log={"requests": cls.log_path, "sample": 1.0, "bodies": True})
            cls.mm = cls.cluster.modelmux(cls.cfg, "--seed", 3)
        except Exception:
            cls.cluster.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.cluster.stop()

    def setUp(self):
        for name in POLICIES:
            self.call("POST", "/experiments/%s/reset" % name)

    # helpers

    def call(self, method, path, body=None, expect=200):
        st, hdrs, data = mmtest.request(self.admin_port, method, path, body)
        self.assertEqual(st, expect, data)
        self.assertTrue(hdrs["content-type"].startswith("application/json"), hdrs)
        return json.loads(data)

    def assert_error(self, method, path, body, status, code):
        st, hdrs, data = mmtest.request(self.admin_port, method, path, body)
        self.assertEqual(st, status, data)
        err = json.loads(data)
        self.assertEqual(set(err), {"error", "message", "request_id"})
        self.assertEqual((err["error"], err["request_id"]), (code, hdrs["x-request-id"]))
        return err

    def view(self, name):
        return self.call("GET", "/experiments/" + name)

    def send(self, exp, n=1, path="/rank", rid=None, body=None):
        """n requests; the list of X-Modelmux-Arm answers (all must be 200)."""
        arms = []
        for i in range(n):
            h = {"X-Exp": exp}
            if rid:
                h["X-Request-Id"] = "%s-%d" % (rid, i)
            st, hdrs, data = mmtest.request(self.port, "POST" if body else "GET", path, body, h)
            self.assertEqual(st, 200, data)
            arms.append(hdrs["x-modelmux-arm"])
        return arms

    def feedback(self, body):
        st, _, data = mmtest.request(self.port, "POST", "/_modelmux/feedback", body)
        return st, json.loads(data)

    def metrics(self):
        st, _, data = mmtest.request(self.admin_port, "GET", "/metrics")
        self.assertEqual(st, 200)
        return data.decode()

    def logged(self, rid):
        def find():
            try:
                with open(self.log_path) as f:
                    for line in f:
                        if '"%s"' % rid in line:
                            return json.loads(line)
            except (OSError, ValueError):
                return None
        return mmtest.eventually(find, timeout=5)

    # -- the view, per policy

    def test_every_view_has_the_documented_fields(self):
        for name, policy in POLICIES.items():
            self.send(name, 3)
            with self.subTest(policy=policy):
                v = self.view(name)
                self.assertEqual((v["name"], v["policy"], v["state"]), (name, policy, "running"))
                self.assertEqual([a["name"] for a in v["arms"]], ARMS)
                for a in v["arms"]:
                    self.assertEqual(set(a), {"name", "share", "requests", "errors", "p50_ms",
                                              "p99_ms", "feedback", "reward_mean"})
                    self.assertTrue(0.0 <= a["share"] <= 1.0)
                    for k in ("requests", "errors", "feedback"):
                        self.assertIsInstance(a[k], int)
                self.assertAlmostEqual(sum(a["share"] for a in v["arms"]), 1.0, places=6)
                self.assertIsInstance(v["policy_state"], dict)
        listing = self.call("GET", "/experiments")["experiments"]
        self.assertEqual([e["name"] for e in listing], list(POLICIES))

    # -- PUT weights: only where the operator sets the split

    def test_weights_apply_to_ab_only_and_409_elsewhere(self):
        for name, policy in POLICIES.items():
            with self.subTest(policy=policy):
                if name == "ab":
                    v = self.call("PUT", "/experiments/ab/weights", {"champion": 0, "challenger": 1})
                    self.assertEqual(v["state"], "running")
                    self.assertEqual(set(self.send("ab", 10)), {"challenger"})
                else:
                    before = self.view(name)["version"]
                    err = self.assert_error("PUT", "/experiments/%s/weights" % name,
                                            {"champion": 1}, 409, "conflict")
                    self.assertIn(policy, err["message"])
                    self.assertEqual(self.view(name)["version"], before)

    def test_bad_weights_are_400_and_unknown_arms_404(self):
        for body in ({"champion": -1}, {"champion": 0}, {"champion": "NaN"},
                     '{"champion": NaN}', '{"champion": Infinity}', "[]", "null", "1", "",
                     {"champion": 2e9}):
            self.assert_error("PUT", "/experiments/ab/weights", body, 400, "bad_request")
        self.assert_error("PUT", "/experiments/ab/weights", {"nobody": 1}, 404, "not_found")
        self.assert_error("PUT", "/experiments/nope/weights", {"champion": 1}, 404, "not_found")

    # -- promote and rollback: every policy, checked by real traffic

    def test_promote_sends_every_request_to_the_arm_for_every_policy(self):
        for name, policy in POLICIES.items():
            with self.subTest(policy=policy):
                v = self.call("POST", "/experiments/%s/promote" % name, {"arm": "challenger"})
                self.assertEqual(v["state"], "promoted")
                self.assertEqual({a["name"]: a["share"] for a in v["arms"]},
                                 {"champion": 0.0, "challenger": 1.0})
                self.assertEqual(set(self.send(name, 12)), {"challenger"})
                self.assert_error("POST", "/experiments/%s/promote" % name, {"arm": "zz"}, 404,
                                  "not_found")
                # without "arm" there is nothing to promote (documented: 400)
                self.assert_error("POST", "/experiments/%s/promote" % name, None, 400,
                                  "bad_request")
        s = parse_prometheus(self.metrics())
        self.assertEqual(metric(s, "modelmux_canary_step", experiment="ca"), 100)
        for name in POLICIES:
            self.assertEqual(metric(s, "modelmux_experiment_state", experiment=name,
                                    state="promoted"), 1)

    def test_rollback_sends_everything_to_the_champion_and_stops_a_canary(self):
        for name, policy in POLICIES.items():
            with self.subTest(policy=policy):
                self.call("POST", "/experiments/%s/promote" % name, {"arm": "challenger"})
                v = self.call("POST", "/experiments/%s/rollback" % name)
                self.assertEqual(v["state"], "rolled_back")
                self.assertEqual(self.send(name, 12), ["champion"] * 12)
        self.assertEqual(self.view("ca")["policy_state"]["step"], 0)
        s = parse_prometheus(self.metrics())
        self.assertEqual(metric(s, "modelmux_canary_step", experiment="ca"), 0)
        # a rolled-back shadow mirrors nothing
        before = sum(v for (n, lab), v in s.items() if n == "modelmux_shadow_total")
        self.send("sh", 5)
        time.sleep(0.3)
        after = sum(v for (n, lab), v in parse_prometheus(self.metrics()).items()
                    if n == "modelmux_shadow_total")
        self.assertEqual(after, before)

    # -- pause: no learning, no steps

    def test_pause_freezes_bandit_shares_while_feedback_is_accepted(self):
        for name in BANDITS:
            with self.subTest(policy=POLICIES[name]):
                self.send(name, 4)
                for arm in ARMS:  # both tried (a bandit explores an untried arm first)
                    for _ in range(3):
                        self.feedback({"experiment": name, "arm": arm, "reward": 0})
                self.call("POST", "/experiments/%s/pause" % name)
                frozen = self.view(name)
                for _ in range(30):
                    st, body = self.feedback({"experiment": name, "arm": "challenger",
                                              "reward": 1})
                    self.assertEqual((st, body["accepted"]), (202, 1))
                self.send(name, 10)  # still routed and counted
                paused = self.view(name)
                self.assertEqual(paused["state"], "paused")
                self.assertEqual([a["share"] for a in paused["arms"]],
                                 [a["share"] for a in frozen["arms"]])
                self.assertEqual(paused["policy_state"], frozen["policy_state"])
                arms = {a["name"]: a for a in paused["arms"]}
                self.assertEqual(arms["challenger"]["feedback"], 33)  # counted all the same
                self.assertEqual(sum(a["requests"] for a in paused["arms"]), 14)
                self.assertEqual([a["feedback"] for a in paused["policy_state"]["arms"]], [3, 3])
                # resumed, the policy learns what came in meanwhile
                running = self.call("POST", "/experiments/%s/resume" % name)
                self.assertEqual([a["feedback"] for a in running["policy_state"]["arms"]],
                                 [3, 33])

    def test_pause_holds_the_canary_step_and_stops_mirroring(self):
        v = mmtest.eventually(lambda: (lambda v: v if v["policy_state"]["step"] == 10 else None)(
            self.view("ca")), timeout=5)
        self.call("POST", "/experiments/ca/pause")
        time.sleep(1.2)  # a tick would run here
        self.assertEqual(self.view("ca")["policy_state"]["step"], v["policy_state"]["step"])
        # resumed, its fresh interval starts at the resume: the answers served
        # at once are in it (it started at the next tick, up to a second
        # later, and they were judged in no interval)
        self.call("POST", "/experiments/ca/resume")
        served = self.send("ca", 20)
        iv = self.view("ca")["policy_state"]["interval"]
        self.assertEqual((iv["champion"]["requests"], iv["canary"]["requests"]),
                         (served.count("champion"), served.count("challenger")), iv)
        self.call("POST", "/experiments/sh/pause")
        before = metric(parse_prometheus(self.metrics()), "modelmux_shadow_total",
                        experiment="sh", arm="challenger", outcome="mismatch")
        self.assertEqual(self.send("sh", 5), ["champion"] * 5)
        time.sleep(0.3)
        self.assertEqual(metric(parse_prometheus(self.metrics()), "modelmux_shadow_total",
                                experiment="sh", arm="challenger", outcome="mismatch"), before)

    # -- reset: statistics forgotten, in the view too

    def test_reset_forgets_the_views_latency_quantiles(self):
        """p50_ms/p99_ms are statistics like requests: after a reset a view
        with requests 0 must not go on reporting the old latencies (the old
        code kept them until the process restarted)."""
        for name in ("th", "sh", "il"):
            self.send(name, 6)
        mmtest.eventually(lambda: self.view("sh")["arms"][1]["p50_ms"] is not None, timeout=5)
        counts = parse_prometheus(self.metrics())
        for name in ("th", "sh", "il"):
            with self.subTest(policy=POLICIES[name]):
                self.assertTrue(any(a["p50_ms"] is not None for a in self.view(name)["arms"]))
                v = self.call("POST", "/experiments/%s/reset" % name)
                for a in v["arms"]:
                    self.assertEqual((a["requests"], a["feedback"], a["p50_ms"], a["p99_ms"]),
                                     (0, 0, None, None), a)
                self.send(name, 2)
                self.assertTrue(any(a["p50_ms"] is not None for a in self.view(name)["arms"]))
        # Prometheus counters never go down: the duration histogram keeps counting
        after = parse_prometheus(self.metrics())
        self.assertEqual(metric(after, "modelmux_request_duration_seconds_count",
                                experiment="sh", arm="champion"),
                         metric(counts, "modelmux_request_duration_seconds_count",
                                experiment="sh", arm="champion") + 2)

    def test_reset_forgets_learning_and_operator_changes(self):
        for _ in range(20):
            self.feedback({"experiment": "th", "arm": "challenger", "reward": 1})
        self.call("POST", "/experiments/th/promote", {"arm": "challenger"})
        v = self.call("POST", "/experiments/th/reset")
        self.assertEqual((v["state"], v["weights"]), ("running", None))
        self.assertEqual([a["feedback"] for a in v["arms"]], [0, 0])
        self.assertEqual([a["alpha"] for a in v["policy_state"]["arms"]], [1.0, 1.0])
        s = parse_prometheus(self.metrics())
        self.assertAlmostEqual(metric(s, "modelmux_arm_share", experiment="th", arm="challenger"),
                               v["arms"][1]["share"])

    # -- reload keeps what the API changed unless the definition changed

    def test_reload_drops_api_changes_only_of_redefined_experiments(self):
        self.call("PUT", "/experiments/ab/weights", {"challenger": 1})
        self.call("POST", "/experiments/th/promote", {"arm": "challenger"})
        self.call("POST", "/experiments/eg/pause")
        self.assertEqual(self.call("POST", "/reload"), {"status": "reloaded"})
        self.assertEqual(self.view("ab")["weights"], {"champion": 0.0, "challenger": 1.0})
        self.assertEqual(self.view("th")["state"], "promoted")
        self.assertEqual(self.view("eg")["state"], "paused")
        cfg = json.loads(json.dumps(self.cfg))
        cfg["experiments"][2]["arms"] = {"champion": 70, "challenger": 30}  # ab redefined
        cfg["upstreams"]["challenger"]["timeout_ms"] = 4321  # no experiment's definition
        try:
            self.cluster.write_config(cfg, "modelmux.json")
            self.assertEqual(self.call("POST", "/reload"), {"status": "reloaded"})
            ab = self.view("ab")
            self.assertEqual((ab["state"], ab["weights"]), ("running", None))
            self.assertEqual([a["share"] for a in ab["arms"]], [0.7, 0.3])
            self.assertEqual(self.view("th")["state"], "promoted")
            self.assertEqual(set(self.send("th", 5)), {"challenger"})
            self.assertEqual(self.view("eg")["state"], "paused")
        finally:
            self.cluster.write_config(self.cfg, "modelmux.json")
            self.call("POST", "/reload")

    # -- the request log

    def test_chunked_answer_logs_its_body_bytes_not_its_framing(self):
        """bytes_out is body bytes (DESIGN §7); the old code counted a
        chunked answer's framing (chunk sizes and CRLFs) as well."""
        h = {"X-Exp": "ab", "X-Request-Id": "chunky-1"}
        st, hdrs, data = mmtest.request(self.port, "GET", "/stream/100000", headers=h)
        self.assertEqual((st, hdrs.get("transfer-encoding"), len(data)), (200, "chunked", 100000))
        self.assertEqual(self.logged("chunky-1")["bytes_out"], 100000)
        # the request side too: a chunked body counts de-chunked
        raw = (b"POST /echo HTTP/1.1\r\nHost: x\r\nX-Exp: ab\r\nX-Request-Id: chunky-2\r\n"
               b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
               b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        self.assertTrue(mmtest.raw(self.port, raw).startswith(b"HTTP/1.1 200"))
        line = self.logged("chunky-2")
        self.assertEqual(line["bytes_in"], 11)
        self.assertEqual(base64.b64decode(line["body_b64"]), b"hello world")

    def test_bytes_out_is_the_body_the_client_got_for_every_policy(self):
        """The old code logged an interleaved (merged) answer's body twice:
        once as bytes_out and once more as the local answer it is."""
        for name, policy in POLICIES.items():
            with self.subTest(policy=policy):
                rid = "bout-" + name
                st, hdrs, data = mmtest.request(self.port, "GET", "/rank",
                                                headers={"X-Exp": name, "X-Request-Id": rid})
                self.assertEqual(st, 200)
                line = self.logged(rid)
                self.assertEqual((line["arm"], line["bytes_out"]),
                                 (hdrs["x-modelmux-arm"], len(data)))
                st, hdrs, data = mmtest.request(self.port, "HEAD", "/rank",
                                                headers={"X-Exp": name, "X-Request-Id": rid + "h"})
                self.assertEqual((st, data), (200, b""))
                self.assertEqual(self.logged(rid + "h")["bytes_out"], 0)

    def test_every_kind_of_line_has_every_field_with_its_type(self):
        self.send("ab", 1, path="/rank?q=1&r=%22x%22", rid="kind-routed")
        self.send("sh", 1, rid="kind-shadow", body=b'{"q":1}')
        self.send("il", 1, rid="kind-il")
        mmtest.request(self.port, "GET", "/nowhere?x=1", headers={"X-Request-Id": "kind-404"})
        mmtest.request(self.port, "POST", "/_modelmux/feedback", {"request_id": "kind-routed-0",
                                                                  "reward": 1},
                       {"X-Request-Id": "kind-fb"})
        big = b"POST /big HTTP/1.1\r\nHost: x\r\nX-Exp: ab\r\nX-Request-Id: kind-413\r\n" \
              b"Content-Length: 99999999999\r\n\r\n"
        self.assertTrue(mmtest.raw(self.port, big).startswith(b"HTTP/1.1 413"))
        want = {"kind-routed-0": ("ab", None, "/rank?q=1&r=%22x%22", 200),
                "kind-shadow-0": ("sh", "champion", "/rank", 200),
                "kind-il-0": ("il", "interleave", "/rank", 200),
                "kind-404": (None, None, "/nowhere?x=1", 404),
                "kind-fb": (None, None, "/_modelmux/feedback", 202),
                "kind-413": (None, None, "/big", 413)}
        for rid, (exp, arm, path, status) in want.items():
            with self.subTest(line=rid):
                line = self.logged(rid)
                self.assertEqual(set(line), {"ts", "request_id", "experiment", "arm", "method",
                                             "path", "status", "latency_us", "bytes_in",
                                             "bytes_out", "shadow", "body_b64"})
                self.assertRegex(line["ts"], TS_RE)
                self.assertEqual((line["experiment"], line["path"], line["status"]),
                                 (exp, path, status))
                if arm:
                    self.assertEqual(line["arm"], arm)
                if exp is None:
                    self.assertIsNone(line["arm"])
                for k in ("status", "latency_us", "bytes_in", "bytes_out"):
                    self.assertIsInstance(line[k], int)
                    self.assertGreaterEqual(line[k], 0)
                self.assertIsInstance(line["shadow"], list)
        sh = self.logged("kind-shadow-0")["shadow"]
        self.assertEqual(len(sh), 1)
        self.assertEqual(set(sh[0]), {"arm", "status", "latency_us", "outcome"})
        self.assertEqual((sh[0]["arm"], sh[0]["status"]), ("challenger", 200))
        self.assertIn(sh[0]["outcome"], ("match", "mismatch", "error", "dropped"))
        self.assertEqual(base64.b64decode(self.logged("kind-shadow-0")["body_b64"]), b'{"q":1}')

    def test_zz_bench_replay_reads_every_kind_of_line(self):
        """Runs last (names sort): the log then holds every kind of line this
        suite made — routed, mirrored, interleaved, 404, feedback, 413, HEAD —
        plus a refused head whose method was not read, which alone has no
        path to replay."""
        bad = b"G\x01T /x HTTP/1.1\r\nHost: x\r\n\r\n"
        self.assertTrue(mmtest.raw(self.port, bad).startswith(b"HTTP/1.1 400"))
        mmtest.eventually(lambda: '"path":""' in open(self.log_path).read(), timeout=5)
        with open(self.log_path) as f:
            lines = [json.loads(x) for x in f]
        no_path = sum(1 for x in lines if x["path"] == "")
        self.assertGreaterEqual(no_path, 1)
        for k in ("sh", "il", None):
            self.assertTrue(any(x["experiment"] == k for x in lines), k)
        out = subprocess.run([mmtest.BENCH_BIN, "replay", self.log_path, "--target",
                              "http://127.0.0.1:%d" % self.port, "--max"],
                             capture_output=True, text=True, timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr)
        m = re.search(r"log:\s+(\d+) lines, (\d+) usable, (\d+) skipped", out.stdout)
        self.assertTrue(m, out.stdout)
        self.assertEqual(tuple(map(int, m.groups())),
                         (len(lines), len(lines) - no_path, no_path), out.stderr)

    # -- the metrics letter

    def test_metric_families_labels_and_histograms(self):
        for name in POLICIES:
            self.send(name, 2)
        text = self.metrics()
        s = parse_prometheus(text)
        contract = {"modelmux_requests_total": ("counter", {"experiment", "arm", "code"}),
                    "modelmux_request_duration_seconds": ("histogram", {"experiment", "arm"}),
                    "modelmux_upstream_errors_total": ("counter", {"upstream", "kind"}),
                    "modelmux_fallbacks_total": ("counter", {"experiment", "from", "to"}),
                    "modelmux_shadow_total": ("counter", {"experiment", "arm", "outcome"}),
                    "modelmux_feedback_total": ("counter", {"experiment", "arm"}),
                    "modelmux_reward_sum": ("gauge", {"experiment", "arm"}),
                    "modelmux_arm_share": ("gauge", {"experiment", "arm"}),
                    "modelmux_canary_step": ("gauge", {"experiment"}),
                    "modelmux_connections": ("gauge", set()),
                    "modelmux_store_up": ("gauge", set())}
        for fam, (typ, labels) in contract.items():
            with self.subTest(family=fam):
                self.assertIn("# TYPE %s %s\n" % (fam, typ), text)
                self.assertIn("# HELP %s " % fam, text)
                names = {fam + sfx for sfx in ("_bucket", "_sum", "_count")} \
                    if typ == "histogram" else {fam}
                series = [dict(lab) for (n, lab) in s if n in names]
                self.assertTrue(series, fam)
                for lab in series:
                    self.assertEqual(set(lab) - {"le"}, labels, lab)
        # histograms: every live arm, buckets with le, +Inf equal to _count
        for name in POLICIES:
            for arm in ARMS:
                inf = metric(s, "modelmux_request_duration_seconds_bucket", experiment=name,
                             arm=arm, le="+Inf")
                self.assertEqual(inf, metric(s, "modelmux_request_duration_seconds_count",
                                             experiment=name, arm=arm))
        self.assertGreaterEqual(metric(s, "modelmux_request_duration_seconds_count",
                                       experiment="il", arm="interleave"), 2)
        # canary_step: canaries only; shadow outcomes: exactly the four
        self.assertEqual([dict(lab)["experiment"] for (n, lab) in s
                          if n == "modelmux_canary_step"], ["ca"])
        self.assertEqual(sorted(dict(lab)["outcome"] for (n, lab) in s
                                if n == "modelmux_shadow_total"),
                         ["dropped", "error", "match", "mismatch"])
        self.assertEqual(metric(s, "modelmux_store_up"), 1)
        for v in (v for (n, _), v in s.items() if n == "modelmux_arm_share"):
            self.assertTrue(0.0 <= v <= 1.0 and not math.isnan(v))


class LogSample(unittest.TestCase):
    """log.sample 0 writes nothing; 0.5 writes about half (binomial bound)."""

    def run_sample(self, sample, n):
        cluster = mmtest.Cluster()
        try:
            a = cluster.model_server("champion")
            port = mmtest.free_port()
            log_path = cluster.path("requests.jsonl")
            cfg = mmtest.base_config(port, {"champion": a.port},
                                     [{"name": "e", "match": {"path_prefix": "/"},
                                       "policy": "ab", "arms": {"champion": 1}}],
                                     admin_port=mmtest.free_port(),
                                     log={"requests": log_path, "sample": sample})
            mm = cluster.modelmux(cfg, "--seed", 5)
            for i in range(n):
                self.assertEqual(mmtest.request(port, "GET", "/x")[0], 200)
            admin = mm.admin_port
            mmtest.eventually(lambda: metric(parse_prometheus(mmtest.request(
                admin, "GET", "/metrics")[2].decode()), "modelmux_connections") == 0, timeout=5)
            time.sleep(0.6)  # the log's flush timer runs 200 ms after a line waits
            written = metric(parse_prometheus(mmtest.request(admin, "GET", "/metrics")[2]
                                              .decode()), "modelmux_requestlog_written_total")
            with open(log_path) as f:
                return len(f.read().splitlines()), written
        finally:
            cluster.stop()

    def test_sample_zero_writes_no_line(self):
        self.assertEqual(self.run_sample(0, 20), (0, 0))

    def test_sample_half_writes_about_half(self):
        lines, written = self.run_sample(0.5, 400)
        self.assertEqual(lines, written)
        self.assertLess(abs(lines - 200), 4 * math.sqrt(400 * 0.25))  # 4 sigma


if __name__ == "__main__":
    unittest.main(verbosity=2)
