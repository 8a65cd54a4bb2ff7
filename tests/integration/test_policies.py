"""Policies end to end with real processes: a failing canary rolls itself
back, a healthy one is promoted, shadow comparison counts a real
difference as a mismatch, and an A/B experiment's description reports
significance once feedback arrives."""
import http.client
import json
import random
import socket
import threading
import time

import mmtest


def get_json(port, path):
    st, _, body = mmtest.request(port, "GET", path)
    assert st == 200, (st, body)
    return json.loads(body)


class Canary(mmtest.MMTestCase):
    def start(self, challenger_args, analysis, on_success="promote", challenger_timeout_ms=None,
              dead_challenger=False, challenger_port=None):
        champion = self.cluster.model_server("champion")
        # a dead challenger: a free loopback port nothing listens on
        if challenger_port is None:
            challenger_port = (mmtest.free_port() if dead_challenger else
                               self.cluster.model_server("challenger", *challenger_args).port)
        self.port, self.admin = mmtest.free_port(), mmtest.free_port()
        up = {"url": "http://127.0.0.1:%d" % challenger_port}
        if challenger_timeout_ms:
            up["timeout_ms"] = challenger_timeout_ms
        cfg = mmtest.base_config(
            self.port, {"champion": champion.port, "challenger": up},
            [{"name": "can", "match": {"path_prefix": "/"}, "policy": "canary",
              "champion": "champion", "canary": "challenger", "steps": [20, 50, 100],
              "step_interval_s": 0.4, "analysis": analysis, "on_success": on_success}],
            admin_port=self.admin)
        self.cluster.modelmux(cfg, "--seed", 11)

    def drive(self, until, timeout=15.0):
        """Send traffic until until(experiment) holds; returns the arms that answered."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        arms = []
        deadline = time.time() + timeout
        while time.time() < deadline:
            for _ in range(20):
                conn.request("GET", "/predict")
                r = conn.getresponse()
                r.read()
                arms.append((r.status, r.getheader("X-Modelmux-Arm")))
            exp = get_json(self.admin, "/experiments/can")
            if until(exp):
                conn.close()
                return exp, arms
        conn.close()
        self.fail("condition not reached; last state %s" % json.dumps(exp)[:800])

    def test_failing_canary_rolls_back_and_champion_takes_all_traffic(self):
        self.start(["--error-rate", "1"], {"min_requests": 5, "max_error_rate": 0.05,
                                            "failure_limit": 2})
        exp, _ = self.drive(lambda e: e["state"] == "rolled_back")
        self.assertEqual(exp["policy_state"]["step"], 0)
        after = []
        for _ in range(100):
            st, h, _ = mmtest.request(self.port, "GET", "/predict")
            after.append((st, h.get("x-modelmux-arm")))
        self.assertEqual(set(after), {(200, "champion")})

    def test_timeouts_are_errors_not_latencies(self):
        # Every canary answer times out (300 ms model, 100 ms timeout): with
        # errors tolerated, the p99 check has no latency sample and is skipped
        # (a timeout's duration is the timeout, not the model's latency), so
        # the canary is promoted rather than rolled back for "p99 100 ms".
        self.start(["--latency-ms", "300"], {"min_requests": 3, "max_error_rate": 1,
                                              "max_p99_ms": 50}, challenger_timeout_ms=100)
        exp, _ = self.drive(lambda e: e["state"] in ("promoted", "rolled_back"), timeout=30)
        self.assertEqual(exp["state"], "promoted", json.dumps(exp["policy_state"])[:600])

    def test_healthy_canary_steps_up_and_is_promoted(self):
        self.start([], {"min_requests": 5, "max_error_rate": 0.05})
        exp, _ = self.drive(lambda e: e["state"] == "promoted")
        after = [mmtest.request(self.port, "GET", "/predict")[1].get("x-modelmux-arm")
                 for _ in range(50)]
        self.assertEqual(set(after), {"challenger"})


    def test_a_dead_canary_rolls_back_and_no_client_sees_an_error(self):
        # Refused connections fall back to the champion (DESIGN.md section 4)
        # but count as canary errors: a dead canary must not pass its
        # analysis by hiding behind the fallback.
        self.start([], {"min_requests": 5, "max_error_rate": 0.05}, dead_challenger=True)
        exp, arms = self.drive(lambda e: e["state"] == "rolled_back")
        self.assertEqual(set(arms), {(200, "champion")})
        last = exp["policy_state"]["last_analysis"]
        self.assertEqual((last["verdict"], last["from"], last["to"]), ("failed", 20, 0))
        self.assertEqual(last["canary_error_rate"], 1.0)
        self.assertGreaterEqual(last["canary_requests"], 5)
        fallbacks = mmtest.metric_samples(self.admin, "modelmux_fallbacks_total", "from", "to")
        self.assertGreaterEqual(fallbacks[("challenger", "champion")], 5)

    def test_a_canary_that_breaks_off_mid_answer_rolls_back(self):
        # Its answers start as 200s and then the connection closes: errors
        # for the analysis, though the clients were sent a 200.
        challenger = mmtest.BreakingServer()
        self.addCleanup(challenger.close)
        self.start([], {"min_requests": 5, "max_error_rate": 0.05},
                   challenger_port=challenger.port)
        cut = 0
        deadline = time.time() + 15
        while time.time() < deadline:
            for _ in range(20):
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/predict")
                r = conn.getresponse()
                try:
                    r.read()
                except http.client.IncompleteRead:
                    cut += 1
                conn.close()
            exp = get_json(self.admin, "/experiments/can")
            if exp["state"] != "running":
                break
        self.assertEqual(exp["state"], "rolled_back", json.dumps(exp)[:800])
        last = exp["policy_state"]["last_analysis"]
        self.assertEqual((last["verdict"], last["canary_error_rate"]), ("failed", 1.0))
        self.assertEqual(challenger.answers, cut)

    def test_a_canary_slower_than_max_p99_rolls_back(self):
        self.start(["--latency-ms", "40"], {"min_requests": 5, "max_error_rate": 0.05,
                                             "max_p99_ms": 10})
        exp, _ = self.drive(lambda e: e["state"] == "rolled_back", timeout=30)
        last = exp["policy_state"]["last_analysis"]
        self.assertEqual((last["verdict"], last["canary_error_rate"]), ("failed", 0.0))
        # the histogram's midpoint is within 3 % of the 40 ms the model waits
        self.assertGreater(last["canary_p99_ms"], 35)
        self.assertIn("p99", last["reason"])

    def test_without_traffic_the_step_holds_as_inconclusive(self):
        # Documented choice (docs/policies-shadow-canary.md): no canary answer
        # is no evidence either way; Flagger would count a failed check.
        self.start([], {"min_requests": 0})
        ps = mmtest.eventually(
            lambda: (lambda p: p if p["last_analysis"] and
                     p["last_analysis"]["verdict"] == "inconclusive" else None)(
                get_json(self.admin, "/experiments/can")["policy_state"]), timeout=10)
        self.assertEqual((ps["state"], ps["step"], ps["failures"]), ("running", 20, 0))
        self.assertEqual(ps["last_analysis"]["canary_requests"], 0)


class CanarySplit(mmtest.MMTestCase):
    N = 1500

    def test_each_step_serves_its_share_of_the_traffic(self):
        champion = self.cluster.model_server("champion")
        challenger = self.cluster.model_server("challenger")
        port, admin = mmtest.free_port(), mmtest.free_port()

        def exp(name, step):
            # one step and an interval of an hour: the canary stays at `step`
            return {"name": name, "match": {"path_prefix": "/" + name}, "policy": "canary",
                    "champion": "champion", "canary": "challenger", "steps": [step],
                    "step_interval_s": 3600}

        cfg = mmtest.base_config(port, {"champion": champion.port, "challenger": challenger.port},
                                 [exp("ten", 10), exp("forty", 40)], admin_port=admin)
        self.cluster.modelmux(cfg, "--seed", 5)
        for name, step in (("ten", 10), ("forty", 40)):
            mmtest.eventually(lambda: get_json(admin, "/experiments/" + name)
                              ["policy_state"]["step"] == step, timeout=10)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            n_canary = 0
            for i in range(self.N):
                conn.request("GET", "/%s/%d" % (name, i))
                r = conn.getresponse()
                r.read()
                self.assertEqual(r.status, 200)
                n_canary += r.getheader("X-Modelmux-Arm") == "challenger"
            conn.close()
            p = step / 100.0
            bound = 5 * (p * (1 - p) / self.N) ** 0.5  # five standard deviations
            self.assertLess(abs(n_canary / self.N - p), bound, (name, n_canary))
            shares = {a["name"]: a["share"] for a in get_json(admin, "/experiments/" + name)["arms"]}
            self.assertEqual(shares, {"champion": 1 - p, "challenger": p})


class ShadowComparison(mmtest.MMTestCase):
    def test_a_different_score_is_a_mismatch_and_an_ignored_field_is_not(self):
        c = self.cluster
        champion = c.model_server("champion", "--score", "0.7")
        same = c.model_server("same", "--score", "0.7")
        other = c.model_server("other", "--score", "0.2", "--latency-ms", "30")
        port, admin = mmtest.free_port(), mmtest.free_port()
        cfg = mmtest.base_config(
            port, {"champion": champion.port, "same": same.port, "other": other.port},
            [{"name": "mir", "match": {"path_prefix": "/"}, "policy": "shadow",
              "primary": "champion", "shadows": ["same", "other"], "timeout_ms": 2000,
              # the model name and the echoed request id differ by design
              "compare": {"ignore": ["/model"]}}],
            admin_port=admin)
        c.modelmux(cfg, "--seed", 2)
        for _ in range(20):
            st, h, body = mmtest.request(port, "POST", "/predict", {"x": 1})
            self.assertEqual((st, h["x-modelmux-arm"], json.loads(body)["score"]),
                             (200, "champion", 0.7))

        def outcomes():
            got = mmtest.metric_samples(admin, "modelmux_shadow_total", "arm", "outcome")
            done = sum(v for (a, o), v in got.items() if o != "dropped")
            return got if done >= 40 else None

        got = mmtest.eventually(outcomes, timeout=10)
        self.assertEqual(got[("same", "match")], 20)
        self.assertEqual(got[("other", "mismatch")], 20)
        self.assertEqual(got.get(("same", "mismatch"), 0) + got.get(("other", "match"), 0), 0)
        # The view: a shadow arm answers no request; its p50/p99 are those of
        # its mirrored answers (they were null before).
        arms = {a["name"]: a for a in get_json(admin, "/experiments/mir")["arms"]}
        self.assertEqual(arms["other"]["requests"], 0)
        self.assertTrue(25 <= arms["other"]["p50_ms"] <= 200, arms["other"])
        self.assertLess(arms["same"]["p50_ms"], 25, arms["same"])


class HeaderUpstream(mmtest.PyUpstream):
    """A model server answering one JSON body with the header lines it was
    given (and a Date of its own clock, which must never count)."""

    def __init__(self, headers):
        extra = headers

        class Handler(mmtest.QuietHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = b'{"score": 0.5}'
                self.send_response(200)  # adds Server and Date
                for name, value in extra:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler)


class ShadowHeaders(mmtest.MMTestCase):
    """compare.headers compares every end-to-end header (one difference per
    header name), not only Content-Type; Date, Content-Length and hop-by-hop
    headers never count; with a secondary, a header the primary's own twin
    also changes is noise."""

    def test_header_differences_count_only_with_compare_headers(self):
        base = [("Content-Type", "application/json; charset=utf-8"), ("X-Model-Version", "7"),
                ("Cache-Control", "no-store"), ("Connection", "keep-alive")]
        ups = {
            "champion": HeaderUpstream(base),
            "twin": HeaderUpstream([("Content-Type", "Application/JSON; Charset=UTF-8")] +
                                   base[1:]),
            "newver": HeaderUpstream(base[:1] + [("X-Model-Version", "8")] + base[2:]),
            "extra": HeaderUpstream(base + [("X-Debug", "1")]),
        }
        for u in ups.values():
            self.addCleanup(u.close)
        port, admin = mmtest.free_port(), mmtest.free_port()

        def exp(name, prefix, headers):
            return {"name": name, "match": {"path_prefix": prefix}, "policy": "shadow",
                    "primary": "champion", "shadows": ["twin", "newver", "extra"],
                    "timeout_ms": 2000, "compare": {"headers": headers}}

        cfg = mmtest.base_config(port, {n: u.port for n, u in ups.items()},
                                 [exp("hdr", "/hdr", True), exp("body", "/body", False)],
                                 admin_port=admin)
        self.cluster.modelmux(cfg, "--seed", 3)
        for i in range(10):
            for prefix in ("/hdr", "/body"):
                st, _, _ = mmtest.request(port, "POST", "%s/%d" % (prefix, i), {"x": i})
                self.assertEqual(st, 200)

        def outcomes():
            got = mmtest.metric_samples(admin, "modelmux_shadow_total", "experiment", "arm",
                                        "outcome")
            return got if sum(got.values()) >= 60 else None

        got = mmtest.eventually(outcomes, timeout=10)
        want = {("hdr", "twin", "match"): 10, ("hdr", "newver", "mismatch"): 10,
                ("hdr", "extra", "mismatch"): 10, ("body", "twin", "match"): 10,
                ("body", "newver", "match"): 10, ("body", "extra", "match"): 10}
        self.assertEqual({k: v for k, v in got.items() if v}, want)
        st, _, body = mmtest.request(admin, "GET", "/experiments/hdr")
        self.assertEqual(st, 200)
        paths = {sh["arm"]: {p["path"] for p in sh["paths"]}
                 for sh in json.loads(body)["policy_state"]["shadows"]}
        fields = {a: paths[a] for a in ("newver", "extra")}
        self.assertEqual(fields, {"newver": {"header:x-model-version"},
                                  "extra": {"header:x-debug"}})

    def test_a_header_the_secondary_also_changes_is_noise(self):
        ups = {
            "champion": HeaderUpstream([("X-Served-By", "a")]),
            "secondary": HeaderUpstream([("X-Served-By", "b")]),
            "cand": HeaderUpstream([("X-Served-By", "c")]),
            "cand2": HeaderUpstream([("X-Served-By", "a"), ("X-New", "1")]),
        }
        for u in ups.values():
            self.addCleanup(u.close)
        port, admin = mmtest.free_port(), mmtest.free_port()
        cfg = mmtest.base_config(port, {n: u.port for n, u in ups.items()}, [
            {"name": "nz", "match": {"path_prefix": "/"}, "policy": "shadow",
             "primary": "champion", "shadows": ["cand", "cand2"], "secondary": "secondary",
             "timeout_ms": 2000, "compare": {"headers": True}}], admin_port=admin)
        self.cluster.modelmux(cfg, "--seed", 4)
        for i in range(8):
            self.assertEqual(mmtest.request(port, "POST", "/p", {"x": i})[0], 200)
        got = mmtest.eventually(lambda: (lambda g: g if sum(g.values()) >= 24 else None)(
            mmtest.metric_samples(admin, "modelmux_shadow_total", "arm", "outcome")), timeout=10)
        self.assertEqual(got[("cand", "match")], 8)      # x-served-by: noise
        self.assertEqual(got[("cand2", "mismatch")], 8)  # x-new: the secondary has none
        self.assertEqual(got[("secondary", "mismatch")], 8)


class ABSignificance(mmtest.MMTestCase):
    def test_description_reports_a_significant_difference(self):
        c = self.cluster
        champion = c.model_server("champion")
        challenger = c.model_server("challenger")
        port, admin = mmtest.free_port(), mmtest.free_port()
        cfg = mmtest.base_config(
            port, {"champion": champion.port, "challenger": challenger.port},
            [{"name": "ab", "match": {"path_prefix": "/"}, "policy": "ab",
              "arms": {"champion": 50, "challenger": 50}, "reward": "bernoulli"}],
            admin_port=admin)
        c.modelmux(cfg, "--seed", 5)
        rng = random.Random(1)
        rate = {"champion": 0.1, "challenger": 0.3}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        events = []
        for _ in range(3000):
            conn.request("GET", "/predict")
            r = conn.getresponse()
            r.read()
            arm = r.getheader("X-Modelmux-Arm")
            events.append({"request_id": r.getheader("X-Request-Id"),
                           "reward": 1 if rng.random() < rate[arm] else 0})
            if len(events) == 200:
                conn.request("POST", "/_modelmux/feedback", body=json.dumps({"events": events}))
                r = conn.getresponse()
                self.assertEqual(json.loads(r.read())["accepted"], 200)
                events = []
        conn.close()
        exp = get_json(admin, "/experiments/ab")
        text = json.dumps(exp["policy_state"])
        self.assertIn("challenger_better", text, text[:2000])


class BanditErrors(mmtest.MMTestCase):
    """A bandit arm that answers every request with a 5xx never gets
    feedback (the application has nothing to reward): its errors must count
    against it (error_reward, default 0), or it stays "untried" and keeps the
    traffic. And while an arm is ejected, its share is the champion's."""

    def start(self, extra, eject=None):
        champion = self.cluster.model_server("champion")
        challenger = self.cluster.model_server("challenger", "--error-rate", 1)
        self.port, self.admin = mmtest.free_port(), mmtest.free_port()
        up = {"url": "http://127.0.0.1:%d" % challenger.port}
        if eject:
            up["eject"] = eject
        exp = {"name": "bandit", "match": {"path_prefix": "/"}, "policy": "thompson",
               "arms": ["champion", "challenger"]}
        exp.update(extra)
        cfg = mmtest.base_config(self.port, {"champion": champion.port, "challenger": up}, [exp],
                                 admin_port=self.admin)
        self.cluster.modelmux(cfg, "--seed", 3)

    def drive(self, n):
        """n requests; a 200 earns a reward with probability 0.3, a 5xx nothing."""
        rng = random.Random(2)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        served = []
        for _ in range(n):
            conn.request("GET", "/predict")
            r = conn.getresponse()
            r.read()
            served.append((r.status, r.getheader("X-Modelmux-Arm")))
            if r.status == 200:
                body = {"request_id": r.getheader("X-Request-Id"),
                        "reward": 1 if rng.random() < 0.3 else 0}
                conn.request("POST", "/_modelmux/feedback", body=json.dumps(body))
                fb = conn.getresponse()
                self.assertEqual(json.loads(fb.read())["accepted"], 1)
        conn.close()
        return served

    def test_a_failing_arm_loses_the_traffic(self):
        self.start({})
        served = self.drive(300)
        failed = served.count((500, "challenger"))
        # Beta(1, 1 + errors) against the champion's ~Beta(1 + 0.3n, 1 + 0.7n):
        # a few dozen tries at most; without the errors counted it kept ~70 %.
        self.assertLess(failed, 60, served)
        exp = get_json(self.admin, "/experiments/bandit")
        arm = exp["policy_state"]["arms"][1]
        self.assertEqual(arm["errors"], failed)
        self.assertEqual(arm["feedback"], 0)
        self.assertEqual(arm["beta"], 1 + failed)
        self.assertLess(exp["arms"][1]["share"], 0.2)

    def test_an_ejected_arms_share_is_the_champions(self):
        # error_reward null: the policy goes on choosing the failing arm, and
        # only ejection keeps its requests from it.
        self.start({"error_reward": None}, eject={"consecutive_5xx": 3, "base_ms": 60000})
        served = self.drive(60)
        self.assertEqual(served.count((500, "challenger")), 3)
        exp = get_json(self.admin, "/experiments/bandit")
        self.assertIsNone(exp["policy_state"]["error_reward"])
        self.assertGreater(exp["policy_state"]["arms"][1]["expected_share"], 0.5)
        self.assertEqual([a["share"] for a in exp["arms"]], [1.0, 0.0])
        shares = mmtest.metric_samples(self.admin, "modelmux_arm_share", "experiment", "arm")
        self.assertEqual(shares[("bandit", "champion")], 1.0)
        self.assertEqual(shares[("bandit", "challenger")], 0.0)


class StaleKeepAliveServer:
    """An upstream that answers the first request on each connection
    (keep-alive), then reads the next one and closes without answering: a
    server closing a pooled connection just as the proxy reuses it."""

    BODY = b'{"model":"stale","score":0.5}'

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.answered = 0
        self.dropped = 0
        self.stop = False
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while not self.stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def read_request(self, c):
        data = b""
        while b"\r\n\r\n" not in data:
            d = c.recv(65536)
            if not d:
                return None
            data += d
        head, rest = data.split(b"\r\n\r\n", 1)
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                n = int(line.split(b":")[1])
                while len(rest) < n:
                    d = c.recv(65536)
                    if not d:
                        return None
                    rest += d
        return head

    def serve(self, c):
        with c:
            if self.read_request(c) is None:
                return
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(self.BODY), self.BODY))
            self.answered += 1
            if self.read_request(c) is not None:
                self.dropped += 1  # close without an answer

    def close(self):
        self.stop = True
        self.sock.close()


class StaleConnections(mmtest.MMTestCase):
    def test_requests_and_mirrors_are_resent_when_a_reused_connection_is_dead(self):
        stale = StaleKeepAliveServer()
        self.addCleanup(stale.close)
        champion = self.cluster.model_server("champion")
        port, admin = mmtest.free_port(), mmtest.free_port()
        cfg = mmtest.base_config(
            port, {"champion": champion.port, "stale": stale.port},
            [{"name": "direct", "match": {"path_prefix": "/direct"}, "policy": "ab",
              "arms": {"stale": 1}},
             {"name": "mir", "match": {"path_prefix": "/mirror"}, "policy": "shadow",
              "primary": "champion", "shadows": ["stale"], "timeout_ms": 2000}],
            admin_port=admin)
        self.cluster.modelmux(cfg, "--seed", 1)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        for _ in range(10):  # one at a time: each reuses the pooled connection
            conn.request("GET", "/direct")
            r = conn.getresponse()
            self.assertEqual((r.status, r.read()), (200, StaleKeepAliveServer.BODY))
        for _ in range(10):
            conn.request("GET", "/mirror")
            r = conn.getresponse()
            r.read()
            self.assertEqual(r.status, 200)
            time.sleep(0.02)  # let the mirror finish and its connection go back to the pool
        conn.close()
        self.assertGreater(stale.dropped, 0)  # the stale case really happened

        def outcomes():
            text = mmtest.request(admin, "GET", "/metrics")[2].decode()
            got = {}
            for line in text.splitlines():
                if line.startswith('modelmux_shadow_total{experiment="mir"'):
                    got[line.split('outcome="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
            return got if sum(got.values()) >= 10 else None

        got = mmtest.eventually(outcomes, timeout=10)
        self.assertEqual(got.get("error", 0), 0, got)  # never blamed on the shadow
        self.assertEqual(got.get("mismatch", 0), 10, got)  # a different model answered


if __name__ == "__main__":
    mmtest.main()
