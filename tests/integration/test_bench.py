#!/usr/bin/env python3
"""test_bench.py — modelmux-bench (DESIGN.md §8) against a real modelmux.

Real processes on loopback ports chosen free at run time, stopped by PID
through the mmtest harness: two example model servers, modelmux in front of
them with an A/B experiment (90/10 on /v1/rank) and a Thompson experiment
(/v1/bandit), and for the comparison a second modelmux with a plain 50/50
split. What a user of the bench relies on is asserted:

- replay sends every logged request, as logged: the model servers' request
  counters sum to the log's line count, modelmux's own request log of the
  replay has the same ids, methods, paths and bodies as bench/sample.jsonl,
  the per-arm counts the bench reports equal what each model server saw,
  and the 90/10 split is within a binomial bound;
- --speed and --rate pace (a run takes as long as the schedule says),
  --requests loops the log, the text report has every documented line;
- damaged log lines are reported with their line numbers and skipped, a log
  without a usable line exits 1, HTTP and transport errors are counted by
  kind;
- simulate with rates champion=0.02, challenger=0.10 over 2000 requests:
  well-formed JSON, every reward accepted by modelmux, regret well below a
  50/50 split's expectation (and the actual split's within its binomial
  bound), the best arm identified, CSV and SVG written (the SVG parses as
  XML);
- --compare-split compares only what both runs measured: the first n
  rewarded requests of each, partial when n is short of --requests (a split
  that rewards fewer, a Ctrl-C during it), nothing (exit 1) when a run
  rewarded nothing;
- what the audit found: overflow is not sent, a looped long id stays a valid
  id, --header Host replaces the bench's own and the framing headers are
  refused, answers without an id add no regret, a failed feedback answer is
  shown as the bytes it had, a malformed URL is bad usage (exit 2).

Where an answer modelmux does not give is needed (no id, a feedback post
that fails, a split that stops answering), a stand-in router runs in the
test (fake_router: a Python server on a free loopback port).

Every bench run is bounded by --duration and a subprocess timeout; the whole
file runs in well under a minute.
"""
import csv
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from datetime import datetime

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mmtest  # noqa: E402

SAMPLE = os.path.join(mmtest.SOURCE_DIR, "bench", "sample.jsonl")
ACCEPTED = b'{"accepted":1,"unknown":0,"invalid":0}'


def sample_lines():
    with open(SAMPLE) as f:
        return [json.loads(line) for line in f if line.strip()]


class BenchTest(mmtest.MMTestCase):
    def setUp(self):
        super().setUp()
        if not os.path.exists(mmtest.BENCH_BIN):
            self.skipTest("modelmux-bench not built at %s" % mmtest.BENCH_BIN)
        c = self.cluster
        self.champion = c.model_server("champion")
        self.challenger = c.model_server("challenger")
        self.port, self.admin_port = mmtest.free_port(), mmtest.free_port()
        self.log_path = c.path("requests.jsonl")
        cfg = mmtest.base_config(
            self.port, {"champion": self.champion.port, "challenger": self.challenger.port},
            [{"name": "ranker", "match": {"path_prefix": "/v1/rank"}, "policy": "ab",
              "arms": {"champion": 90, "challenger": 10}},
             {"name": "bandit", "match": {"path_prefix": "/v1/bandit"}, "policy": "thompson",
              "arms": ["champion", "challenger"], "reward": "bernoulli", "min_share": 0.05},
             {"name": "segment", "match": {"path_prefix": "/v1/seg", "headers": {"X-Market": "KR"}},
              "policy": "thompson", "arms": ["champion", "challenger"], "reward": "bernoulli"},
             {"name": "hosted", "match": {"path_prefix": "/v1/hosted", "host": "api.example.com"},
              "policy": "thompson", "arms": ["champion", "challenger"], "reward": "bernoulli"}],
            admin_port=self.admin_port,
            log={"requests": self.log_path, "sample": 1.0, "bodies": True})
        self.mm = c.modelmux(cfg, "--seed", "1")
        self.target = "http://127.0.0.1:%d" % self.port

    # ---- helpers ----

    def start_split(self):
        """A second modelmux with the "bandit" experiment as a plain 50/50
        split over the same model servers (--compare-split's target): its port."""
        port = mmtest.free_port()
        cfg = mmtest.base_config(
            port, {"champion": self.champion.port, "challenger": self.challenger.port},
            [{"name": "bandit", "match": {"path_prefix": "/v1/bandit"}, "policy": "ab",
              "arms": {"champion": 50, "challenger": 50}}])
        self.cluster.modelmux(cfg, "--seed", "1", name="split")
        return port

    def bench(self, *args, timeout=45):
        # errors="replace": a stray byte in the output fails an assertion,
        # not the decoding
        p = subprocess.run([mmtest.BENCH_BIN] + [str(a) for a in args], capture_output=True,
                           text=True, errors="replace", timeout=timeout)
        return p.returncode, p.stdout, p.stderr

    def bench_interrupted(self, args, until):
        """Runs the bench with args, sends it SIGINT once until() is true,
        and returns (returncode, stdout, stderr)."""
        p = subprocess.Popen([mmtest.BENCH_BIN] + [str(a) for a in args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            mmtest.eventually(until, timeout=20)
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=20)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        return p.returncode, out, err

    def fake_router(self, arms=("champion",), ids=True, feedback=((202, ACCEPTED),),
                    answer_2xx=None, delay=0.0, counts=None):
        """A stand-in for modelmux, for answers it does not give: the i-th
        request gets 200 with X-Modelmux-Arm arms[i % len] and X-Request-Id
        "sim-i" (none if ids is False, or a function of i that says no), or
        503 once answer_2xx requests have been answered, after `delay`
        seconds; the i-th feedback post gets feedback[i] (the last one
        repeats). Its URL; `counts` (a dict), if given, gets the requests
        ("req") and feedback posts ("fb") received so far."""
        lock, count = threading.Lock(), counts if counts is not None else {}
        count.update(req=0, fb=0)

        class Handler(mmtest.QuietHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                kind = "fb" if self.path == "/_modelmux/feedback" else "req"
                with lock:
                    i = count[kind]
                    count[kind] += 1
                headers = []
                if kind == "fb":
                    status, body = feedback[min(i, len(feedback) - 1)]
                elif answer_2xx is not None and i >= answer_2xx:
                    status, body = 503, b"{}"
                else:
                    time.sleep(delay)
                    status, body = 200, b"{}"
                    headers.append(("X-Modelmux-Arm", arms[i % len(arms)]))
                    if ids is True or (ids and ids(i)):
                        headers.append(("X-Request-Id", "sim-%d" % i))
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        up = mmtest.PyUpstream(Handler)
        self.addCleanup(up.close)
        return "http://127.0.0.1:%d" % up.port

    def bench_json(self, *args):
        rc, out, err = self.bench(*args, "--json")
        self.assertEqual(rc, 0, "modelmux-bench failed: %s" % err)
        return json.loads(out), err

    def served(self, ms):
        status, _, body = mmtest.request(ms.port, "GET", "/_stats")
        self.assertEqual(status, 200)
        return json.loads(body)["requests"]

    def write_log(self, name, lines):
        path = self.cluster.path(name)
        with open(path, "w") as f:
            f.write(lines)
        return path

    # ---- replay ----

    def test_replay_max_sends_every_logged_request_as_logged(self):
        lines = sample_lines()
        r, err = self.bench_json("replay", SAMPLE, "--target", self.target, "--max",
                                 "--concurrency", 8, "--duration", 30)
        n = len(lines)
        self.assertEqual(r["log_lines"], n)
        self.assertEqual(r["usable_lines"], n)
        self.assertEqual(r["skipped_lines"], 0)
        self.assertEqual(r["sent"], n)
        self.assertEqual(r["answered"], n)
        self.assertEqual(r["errors"]["total"], 0, r["errors"])
        self.assertEqual(r["status"]["2xx"], n)
        self.assertGreater(r["throughput_rps"], 0)
        lat = r["latency_ms"]
        self.assertEqual(lat["count"], n)
        self.assertTrue(0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99_9"] <= lat["max"])
        # Every request reached a model server, and the bench's per-arm
        # counts are exactly what each server saw.
        champ, chall = self.served(self.champion), self.served(self.challenger)
        self.assertEqual(champ + chall, n)
        self.assertEqual(r["arms"]["champion"]["requests"], champ)
        self.assertEqual(r["arms"]["challenger"]["requests"], chall)
        self.assertEqual(r["no_arm"], 0)
        # 90/10 within 4.5 standard deviations of a binomial.
        share = r["arms"]["champion"]["share"]
        self.assertLess(abs(share - 0.9), 4.5 * math.sqrt(0.9 * 0.1 / n), share)
        # modelmux logged the replay: same ids, methods, paths and bodies.
        def key(e):
            return (e["request_id"], e["method"], e["path"], e.get("body_b64", ""))

        def replayed():
            try:
                with open(self.log_path) as f:
                    got = [json.loads(x) for x in f if x.strip()]
            except OSError:
                return None
            return got if len(got) >= n else None

        got = mmtest.eventually(replayed, timeout=10)
        self.assertEqual(sorted(map(key, got)), sorted(map(key, lines)))

    def test_replay_speed_follows_the_recorded_pacing(self):
        lines = sample_lines()
        ts = [datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp() for e in lines]
        span = max(ts) - min(ts)
        self.assertGreater(span, 0.5, "the sample log should span some time")
        r, _ = self.bench_json("replay", SAMPLE, "--target", self.target, "--speed", 4,
                               "--duration", 30)
        self.assertEqual(r["mode"], "speed")
        self.assertEqual(r["answered"], len(lines))
        self.assertEqual(r["errors"]["total"], 0)
        # The last request leaves at span / 4; it cannot be done earlier.
        self.assertGreaterEqual(r["elapsed_s"], span / 4 * 0.98)
        self.assertLess(r["elapsed_s"], span / 4 + 1.5)
        self.assertIn("schedule_lag_ms", r)

    def test_replay_rate_loops_the_log_and_prints_a_text_report(self):
        before = self.served(self.champion) + self.served(self.challenger)
        rc, out, err = self.bench("replay", SAMPLE, "--target", self.target, "--rate", 500,
                                  "--requests", 300, "--concurrency", 4, "--duration", 30)
        self.assertEqual(rc, 0, err)
        after = self.served(self.champion) + self.served(self.challenger)
        self.assertEqual(after - before, 300)
        for needle in ("pacing:      rate 500 req/s",
                       "300 sent, 300 answered, 0 failed, 0 overflow, 0 cancelled in ",
                       "throughput:", "p50 ", "p90 ", "p99 ", "p99.9 ",
                       "errors:      0 (connect 0, connect_timeout 0, timeout 0, reset 0, "
                       "protocol 0, overflow 0, http_4xx 0, http_5xx 0)",
                       "arms:        champion "):
            self.assertIn(needle, out)
        # 299 gaps of 2 ms: about 0.6 s.
        secs = float(out.split(" cancelled in ")[1].split(" s")[0])
        self.assertGreaterEqual(secs, 0.59)
        self.assertLess(secs, 3.0)

    def test_replay_looped_ids_stay_within_modelmux_s_limit(self):
        # On the K-th pass over the log the id is suffixed ".K"; a long id
        # loses its first characters instead of growing past 128, where
        # modelmux would replace it and the join to the original be lost.
        long_id = "A" + "b" * 125 + "Z"  # 127 characters
        line = dict(sample_lines()[0])
        line["request_id"] = long_id
        log = self.write_log("long-id.jsonl", json.dumps(line) + "\n")
        r, _ = self.bench_json("replay", log, "--target", self.target, "--max",
                               "--concurrency", 1, "--requests", 3, "--duration", 30)
        self.assertEqual(r["answered"], 3)
        cut = long_id[1:]  # 126 characters, then ".K"

        def logged():
            try:
                with open(self.log_path) as f:
                    got = [json.loads(x)["request_id"] for x in f if x.strip()]
            except OSError:
                return None
            return got if len(got) >= 3 else None

        got = mmtest.eventually(logged, timeout=10)
        self.assertEqual(sorted(got), sorted([long_id, cut + ".2", cut + ".3"]))
        self.assertEqual(max(map(len, got)), 128)

    def test_replay_overflow_is_not_sent(self):
        # One connection to a server that takes 300 ms an answer, 5000
        # requests due within 1.25 s: the pool's queue (4096) fills, and the
        # rest overflow. `sent` counts only requests that went to a
        # connection, and sent + overflow + cancelled = the requests due.
        slow = self.cluster.model_server("slow", "--latency-ms", 300)
        r, _ = self.bench_json("replay", SAMPLE, "--target", "http://127.0.0.1:%d" % slow.port,
                               "--rate", 4000, "--requests", 5000, "--concurrency", 1,
                               "--duration", 2, "--timeout-ms", 10000)
        self.assertGreater(r["overflow"], 0, r)
        self.assertEqual(r["errors"]["overflow"], r["overflow"])
        self.assertEqual(r["sent"], r["answered"] + r["failed"])
        self.assertEqual(r["sent"] + r["overflow"] + r["cancelled"], 5000)
        # What the server saw is what was sent.
        self.assertEqual(self.served(slow), r["sent"])
        self.assertEqual(r["failed"], 0)

    def test_replay_reports_damaged_lines_and_skips_them(self):
        with open(SAMPLE) as f:
            good = [x for x in f.read().splitlines() if x.strip()][:3]
        log = self.write_log("damaged.jsonl", "\n".join([
            good[0],
            "{this is not json",
            good[1],
            '{"ts":"2024-06-01T10:00:00Z","path":"/v1/rank"}',
            good[2],
            good[0][:40],  # cut off mid-line by a crash
        ]))
        r, err = self.bench_json("replay", log, "--target", self.target, "--max",
                                 "--duration", 30)
        self.assertEqual(r["usable_lines"], 3)
        self.assertEqual(r["skipped_lines"], 3)
        self.assertEqual(r["answered"], 3)
        self.assertIn(log + ":2: skipped: not JSON", err)
        self.assertIn(log + ":4: skipped: \"method\" is missing", err)
        self.assertIn(log + ":6: skipped: truncated", err)
        self.assertEqual(self.served(self.champion) + self.served(self.challenger), 3)

    def test_replay_without_a_usable_line_exits_1(self):
        log = self.write_log("bad.jsonl", "garbage\n{\"ts\":1}\n")
        rc, out, err = self.bench("replay", log, "--target", self.target, "--max")
        self.assertEqual(rc, 1)
        self.assertIn("no usable line", err)
        self.assertIn(log + ":1: skipped", err)
        rc, _, err = self.bench("replay", self.cluster.path("missing.jsonl"), "--target",
                                self.target)
        self.assertEqual(rc, 1)
        self.assertIn("cannot open", err)
        rc, _, err = self.bench("replay", SAMPLE)  # no --target
        self.assertEqual(rc, 2)

    def test_a_malformed_target_url_is_bad_usage(self):
        # Exit 2 with the usage text and the option named, as for every
        # other malformed option; 1 stays for a well-formed URL whose host
        # does not resolve (a run that could not happen).
        sim = ["simulate", "--experiment", "bandit", "--rates", "champion=0.1,challenger=0.2",
               "--requests", 5, "--duration", 10]
        for bad in ("ftp://127.0.0.1:21010", "http://127.0.0.1:99999",
                    "http://127.0.0.1:21030/base?x=1"):
            for args, opt in ((["replay", SAMPLE, "--target", bad], "--target"),
                              (sim + ["--target", bad], "--target"),
                              (sim + ["--target", self.target, "--compare-split", bad],
                               "--compare-split"),
                              (sim + ["--target", self.target, "--admin", bad], "--admin")):
                rc, out, err = self.bench(*args)
                self.assertEqual(rc, 2, (args, err))
                self.assertIn(opt + " " + bad + ": ", err)
                self.assertIn("usage: modelmux-bench", err)
                self.assertEqual(out, "")
        rc, _, err = self.bench(*sim, "--target", self.target, "--admin",
                                "http://127.0.0.1:%d/x" % self.admin_port)
        self.assertEqual(rc, 2, err)
        self.assertIn("give the listener's root", err)
        # Nothing was sent by any of them.
        self.assertEqual(self.served(self.champion) + self.served(self.challenger), 0)
        unresolvable = "http://no-such-host.invalid:8080"
        rc, _, err = self.bench("replay", SAMPLE, "--target", unresolvable, "--max")
        self.assertEqual(rc, 1, err)
        self.assertNotIn("usage:", err)
        self.assertEqual(err, "replay: --target %s: cannot resolve no-such-host.invalid\n"
                         % unresolvable)
        rc, _, err = self.bench(*sim, "--target", unresolvable)
        self.assertEqual(rc, 1, err)
        self.assertNotIn("usage:", err)
        self.assertIn("--target %s: cannot resolve no-such-host.invalid\n" % unresolvable, err)
        # an empty element of a list is a typo, not a list one arm shorter
        for rates in ("champion=0.1,,challenger=0.2", "champion=0.1,challenger=0.2,"):
            args = [a if a != "champion=0.1,challenger=0.2" else rates for a in sim]
            rc, out, err = self.bench(*args, "--target", self.target)
            self.assertEqual(rc, 2, err)
            self.assertIn("simulate: --rates: an empty arm=p in '%s'" % rates, err)
            self.assertEqual(out, "")

    def test_replay_counts_errors_by_kind(self):
        line = ('{"ts":"2024-06-01T10:00:0%dZ","request_id":null,"experiment":null,"arm":null,'
                '"method":"GET","path":"/nothing/here","status":404,"latency_us":10,'
                '"bytes_in":0,"bytes_out":0,"shadow":[]}')
        log = self.write_log("404.jsonl", "\n".join(line % i for i in range(5)) + "\n")
        r, _ = self.bench_json("replay", log, "--target", self.target, "--max", "--duration", 30)
        self.assertEqual(r["answered"], 5)
        self.assertEqual(r["errors"]["http_4xx"], 5)
        self.assertEqual(r["errors"]["total"], 5)
        self.assertEqual(r["no_arm"], 5)
        # Nothing listens there: transport errors, by kind.
        dead = "http://127.0.0.1:%d" % mmtest.free_port()
        r, _ = self.bench_json("replay", log, "--target", dead, "--max", "--duration", 30)
        self.assertEqual(r["answered"], 0)
        self.assertEqual(r["failed"], 5)
        self.assertEqual(r["errors"]["connect"], 5)
        # no answer, no latency: null (n/a), not 0 ms
        lat = r["latency_ms"]
        self.assertEqual(lat["count"], 0)
        for k in ("p50", "p90", "p99", "p99_9", "max", "mean"):
            self.assertIsNone(lat[k], k)
        rc, out, err = self.bench("replay", log, "--target", dead, "--max", "--duration", 30)
        self.assertIn("latency ms:  n/a (no answers)", out, err)

    # ---- simulate ----

    def test_simulate_thompson_has_less_regret_than_a_split(self):
        split_port = self.start_split()
        csv_path, svg_path = self.cluster.path("sim.csv"), self.cluster.path("sim.svg")
        n = 2000
        r, err = self.bench_json(
            "simulate", "--target", self.target, "--experiment", "bandit",
            "--rates", "champion=0.02,challenger=0.10", "--requests", n, "--seed", 7,
            "--path", "/v1/bandit/predict", "--admin", "http://127.0.0.1:%d" % self.admin_port,
            "--csv", csv_path, "--svg", svg_path,
            "--compare-split", "http://127.0.0.1:%d" % split_port, "--duration", 40)
        self.assertEqual(r["best_arm"], "challenger")
        b, s = r["bandit"], r["split"]
        for run in (b, s):
            self.assertEqual(run["requests"], n)
            self.assertEqual(run["answered"], n)
            self.assertEqual(run["failed"], 0)
            fb = run["feedback"]
            self.assertEqual(fb["events"], n)
            self.assertEqual(fb["accepted"], n, fb)
            self.assertEqual(fb["unknown"] + fb["invalid"] + fb["lost"], 0)
            served = run["arms"]["champion"]["served"] + run["arms"]["challenger"]["served"]
            self.assertEqual(served, n)
            self.assertAlmostEqual(run["regret"]["cumulative"],
                                   0.08 * run["arms"]["champion"]["served"], places=6)
        expected_split = b["regret"]["uniform_split_expected"]
        self.assertAlmostEqual(expected_split, 0.04 * n, places=6)
        # The bandit learns: well under half the regret of a split...
        self.assertLess(b["regret"]["cumulative"], 0.5 * expected_split, b["regret"])
        # ...while the split's regret is what a 50/50 coin gives (4.5 sd).
        self.assertLess(abs(s["regret"]["cumulative"] - expected_split),
                        4.5 * 0.08 * math.sqrt(n * 0.25))
        self.assertAlmostEqual(r["regret_saved"],
                               s["regret"]["cumulative"] - b["regret"]["cumulative"], places=6)
        self.assertGreater(r["regret_saved"], 0)
        # Identified, by the router's state and by traffic, and it stayed.
        self.assertEqual(r["identification_rule"], "admin")
        self.assertIsNotNone(r["identified_at"])
        self.assertLessEqual(r["identified_at"], n)
        self.assertGreater(b["identified_at"]["admin_polls"], 10)
        self.assertIsNotNone(b["identified_at"]["by_windows"])
        self.assertEqual(len(b["windows"]), 20)
        self.assertGreater(b["windows"][-1]["best_share"], 0.5)
        # modelmux counted the same rewards.
        status, _, body = mmtest.request(self.admin_port, "GET", "/experiments/bandit")
        self.assertEqual(status, 200)
        arms = {a["name"]: a for a in json.loads(body)["arms"]}
        self.assertEqual(arms["champion"]["feedback"] + arms["challenger"]["feedback"], n)
        # CSV: one row per request, ending at the reported regret.
        with open(csv_path) as f:
            rows = list(csv.DictReader(f))
        self.assertEqual(len(rows), n)
        self.assertEqual([int(x["request"]) for x in rows[:3]], [1, 2, 3])
        self.assertAlmostEqual(float(rows[-1]["cumulative_regret"]), b["regret"]["cumulative"],
                               places=4)
        self.assertAlmostEqual(float(rows[-1]["split_cumulative_regret"]),
                               s["regret"]["cumulative"], places=4)
        for x in rows:
            self.assertTrue(0.0 <= float(x["best_arm_share_window"]) <= 1.0)
        # SVG: a real, self-contained plot.
        root = ET.parse(svg_path).getroot()
        self.assertEqual(root.tag, "{http://www.w3.org/2000/svg}svg")
        ns = {"s": "http://www.w3.org/2000/svg"}
        self.assertGreaterEqual(len(root.findall("s:polyline", ns)), 4)
        texts = " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
        for needle in ("requests", "cumulative regret", "regret, bandit", "50/50 split", "100 %"):
            self.assertIn(needle, texts)
        self.assertNotIn("href", open(svg_path).read())

    def test_simulate_text_report_with_batched_late_feedback(self):
        # A header-matched experiment: --header makes the requests match it.
        rc, out, err = self.bench(
            "simulate", "--target", self.target, "--experiment", "segment",
            "--rates", "champion=0.02,challenger=0.10", "--requests", 200, "--seed", 3,
            "--path", "/v1/seg/x", "--header", "X-Market: KR", "--feedback-batch", 10,
            "--feedback-delay-ms", 30, "--concurrency", 4, "--duration", 30)
        self.assertEqual(rc, 0, err)
        for needle in ("environment: champion p=0.02, challenger p=0.1 (best)",
                       "200 requests to " + self.target + ": 200 answered, 0 failed",
                       "feedback:    200 events in 20 posts (batch 10, delay 30 ms): "
                       "200 accepted, 0 unknown, 0 invalid, 0 lost",
                       "regret:", "a uniform split (1/2 each) expects 8.00",
                       "identified:", "windows:", "1-10 "):
            self.assertIn(needle, out)
        status, _, body = mmtest.request(self.admin_port, "GET", "/experiments/segment")
        arms = json.loads(body)["arms"]
        self.assertEqual(sum(a["requests"] for a in arms), 200)
        self.assertEqual(sum(a["feedback"] for a in arms), 200)
        # Without the header nothing matches: answers, but no arm to reward:
        # the report says what came back, and the run failed.
        rc, out, err = self.bench(
            "simulate", "--target", self.target, "--experiment", "segment",
            "--rates", "champion=0.02,challenger=0.10", "--requests", 20, "--path", "/v1/seg/x",
            "--duration", 30, "--json")
        self.assertEqual(rc, 1, err)
        self.assertIn("no answer could be rewarded", err)
        r = json.loads(out)
        self.assertEqual(r["bandit"]["errors"]["http_non_2xx"], 20)
        self.assertEqual(r["bandit"]["feedback"]["events"], 0)

    def test_simulate_with_tied_best_arms_counts_each_as_best(self):
        # Equal rates: serving either costs nothing, so each is "best", the
        # best-arm share is 100 % whatever the split, and there is nothing
        # to identify. The ranker sends 90 % to the champion.
        rc, out, err = self.bench(
            "simulate", "--target", self.target, "--experiment", "ranker", "--path", "/v1/rank",
            "--rates", "champion=0.5,challenger=0.5", "--requests", 40, "--window", 20,
            "--duration", 30)
        self.assertEqual(rc, 0, err)
        self.assertIn("environment: champion p=0.5 (best), challenger p=0.5 (best)", out)
        self.assertIn("identified:  n/a: 2 arms tie for the best rate", out)
        self.assertNotIn("never", out)
        self.assertIn("1-20           100.0 %", out)
        rc, out, err = self.bench(
            "simulate", "--target", self.target, "--experiment", "ranker", "--path", "/v1/rank",
            "--rates", "champion=0.5,challenger=0.5", "--requests", 40, "--window", 20,
            "--duration", 30, "--json")
        self.assertEqual(rc, 0, err)
        r = json.loads(out)
        self.assertEqual(r["best_arms"], ["champion", "challenger"])
        self.assertIsNone(r["identified_at"])
        self.assertEqual([w["best_share"] for w in r["bandit"]["windows"]], [1.0, 1.0])

    def test_simulate_header_host_replaces_the_bench_s_own(self):
        # An experiment matched on host: the user's Host is the request's
        # only one (two would be a 400 at modelmux).
        rc, out, err = self.bench(
            "simulate", "--target", self.target, "--experiment", "hosted",
            "--rates", "champion=0.02,challenger=0.10", "--requests", 20,
            "--path", "/v1/hosted/x", "--header", "Host:api.example.com", "--duration", 30)
        self.assertEqual(rc, 0, err)
        self.assertIn("20 requests to " + self.target + ": 20 answered, 0 failed", out)
        self.assertIn("20 accepted, 0 unknown, 0 invalid, 0 lost", out)
        self.assertNotIn("errors:", out)
        status, _, body = mmtest.request(self.admin_port, "GET", "/experiments/hosted")
        arms = json.loads(body)["arms"]
        self.assertEqual(sum(a["requests"] for a in arms), 20)
        self.assertEqual(sum(a["feedback"] for a in arms), 20)
        # The headers that frame the body are the bench's: bad usage.
        for h in ("Content-Length:5", "transfer-encoding: chunked"):
            rc, out, err = self.bench(
                "simulate", "--target", self.target, "--experiment", "hosted",
                "--rates", "champion=0.02,challenger=0.10", "--requests", 5,
                "--path", "/v1/hosted/x", "--header", h, "--duration", 30)
            self.assertEqual(rc, 2, err)
            self.assertIn("simulate: --header " + h.split(":")[0] + " is the bench's to send", err)
            self.assertIn("usage:", err)
            self.assertEqual(out, "")
        self.assertEqual(self.served(self.champion) + self.served(self.challenger), 20)

    def test_simulate_ctrl_c_skips_the_comparison_and_posts_late_feedback_at_once(self):
        # Ctrl-C during the bandit run: its report is printed, the
        # --compare-split run is not started, and the batches waiting out
        # --feedback-delay-ms are posted at once instead of a minute later.
        split_port = self.start_split()
        rc, out, err = self.bench_interrupted(
            ["simulate", "--target", self.target, "--experiment", "bandit",
             "--rates", "champion=0.02,challenger=0.10", "--requests", "1000000",
             "--path", "/v1/bandit/predict", "--feedback-batch", "10",
             "--feedback-delay-ms", "600000", "--compare-split",
             "http://127.0.0.1:%d" % split_port, "--duration", "60", "--json"],
            lambda: self.served(self.champion) + self.served(self.challenger) >= 50)
        self.assertEqual(rc, 0, err)
        r = json.loads(out)
        b = r["bandit"]
        self.assertTrue(b["stopped_early"])
        self.assertGreaterEqual(b["answered"], 50)
        fb = b["feedback"]
        self.assertEqual(fb["events"], b["answered"])
        self.assertEqual(fb["accepted"], fb["events"], fb)
        self.assertIsNone(r["split"])
        self.assertIsNone(r["regret_saved"])
        self.assertIn("--compare-split", err)
        got = mmtest.metric_samples(self.admin_port, "modelmux_feedback_total", "experiment", "arm")
        self.assertEqual(sum(v for (e, _), v in got.items() if e == "bandit"), fb["accepted"])
        # Nothing reached the split's router.
        self.assertEqual(self.served(self.champion) + self.served(self.challenger), b["answered"])

    def test_simulate_shows_a_failed_feedback_answer_as_the_bytes_it_had(self):
        # The body of an answer is not a C string: a message shows the bytes
        # that came (a longer earlier answer's bytes are not appended), on
        # one line (a newline or control byte in it is escaped), cut at 200.
        target = self.fake_router(feedback=(
            (202, b"A" * 300), (500, b'{"error":"x"}\n\x01second line')))
        rc, out, err = self.bench(
            "simulate", "--target", target, "--experiment", "e",
            "--rates", "champion=0.02,challenger=0.10", "--requests", 3, "--duration", 30)
        self.assertEqual(rc, 0, err)
        self.assertIn("3 events in 3 posts (batch 1, delay 0 ms): 0 accepted, 0 unknown, "
                      "0 invalid, 3 lost", out)
        # (up to four posts are in flight: in any order)
        lines = [x for x in err.splitlines() if x.startswith("simulate: feedback post")]
        self.assertEqual(sorted(lines), [
            "simulate: feedback post answered 202: " + "A" * 200 + "...",
            'simulate: feedback post answered 500: {"error":"x"}\\x0a\\x01second line',
            'simulate: feedback post answered 500: {"error":"x"}\\x0a\\x01second line',
        ], err)

    def test_simulate_answers_without_an_id_add_no_regret(self):
        # An answer without X-Request-Id cannot be rewarded (no feedback can
        # name it): counted under errors, and nothing in the regret or in
        # the uniform split's expectation.
        target = self.fake_router(ids=lambda i: i % 2 == 0)
        r, err = self.bench_json("simulate", "--target", target, "--experiment", "e",
                                 "--rates", "champion=0.02,challenger=0.10", "--requests", 10,
                                 "--duration", 30)
        b = r["bandit"]
        self.assertEqual(b["answered"], 10)
        self.assertEqual(b["errors"]["no_request_id"], 5)
        self.assertEqual(b["arms"]["champion"]["served"], 5)
        self.assertEqual(b["feedback"]["events"], 5)
        self.assertAlmostEqual(b["regret"]["cumulative"], 5 * 0.08, places=6)
        self.assertAlmostEqual(b["regret"]["uniform_split_expected"], 5 * 0.04, places=6)
        self.assertAlmostEqual(b["regret"]["per_request"], 0.08, places=6)
        # None with an id: nothing measured, and the run failed.
        target = self.fake_router(ids=False)
        rc, out, err = self.bench("simulate", "--target", target, "--experiment", "e",
                                  "--rates", "champion=0.02,challenger=0.10", "--requests", 10,
                                  "--duration", 30)
        self.assertEqual(rc, 1, out)
        self.assertIn("errors:      no-request-id 10", out)
        self.assertIn("regret:      0.00 cumulative (0.0000 per request); a uniform split "
                      "(1/2 each) expects 0.00", out)
        self.assertIn("no answer could be rewarded: of 10 requests, 0 failed, 0 were not 2xx, "
                      "0 had no X-Modelmux-Arm, 0 came from arms without a rate "
                      "(--rates/--gaussian), 10 had no X-Request-Id", err)

    def test_compare_split_with_an_unreachable_split_measured_nothing(self):
        # The split run that measured nothing is a failed run, as the bandit
        # run that measured nothing is: stderr says why, exit 1, no "saved".
        dead = "http://127.0.0.1:%d" % mmtest.free_port()
        args = ["simulate", "--target", self.target, "--experiment", "bandit",
                "--rates", "champion=0.02,challenger=0.10", "--requests", 20,
                "--path", "/v1/bandit/predict", "--compare-split", dead, "--duration", 30]
        rc, out, err = self.bench(*args)
        self.assertEqual(rc, 1, out)
        self.assertIn("split:       20 requests to %s: 0 answered, 20 failed" % dead, out)
        self.assertIn("compare:     none: the split run rewarded no answer", out)
        self.assertNotIn("saved", out)
        self.assertIn("simulate: the --compare-split run: no answer could be rewarded: of 20 "
                      "requests, 20 failed", err)
        self.assertIn("check --compare-split", err)
        rc, out, err = self.bench(*args, "--json")
        self.assertEqual(rc, 1, err)
        r = json.loads(out)
        self.assertEqual(r["split"]["failed"], 20)
        self.assertIsNone(r["comparison"])
        self.assertIsNone(r["regret_saved"])

    def test_compare_split_compares_the_same_number_of_rewarded_requests(self):
        # The split answers 10 requests, then 503s: its total regret is over
        # 10 rewarded requests, the bandit's over 40. Only the first 10 of
        # each are compared, and the report says the comparison is partial.
        split = self.fake_router(arms=("champion",), answer_2xx=10)
        csv_path = self.cluster.path("sim.csv")
        r, err = self.bench_json(
            "simulate", "--target", self.target, "--experiment", "bandit",
            "--rates", "champion=0.02,challenger=0.10", "--requests", 40,
            "--path", "/v1/bandit/predict", "--compare-split", split, "--csv", csv_path,
            "--duration", 30)
        self.assertEqual(r["bandit"]["answered"], 40)
        self.assertEqual(r["bandit"]["errors"]["http_non_2xx"], 0)
        self.assertEqual(r["split"]["errors"]["http_non_2xx"], 30)
        c = r["comparison"]
        self.assertEqual(c["rewarded"], 10)
        self.assertTrue(c["partial"])
        self.assertAlmostEqual(c["split_regret"], 10 * 0.08, places=6)
        with open(csv_path) as f:
            rows = list(csv.DictReader(f))
        self.assertAlmostEqual(c["bandit_regret"], float(rows[9]["cumulative_regret"]), places=5)
        self.assertAlmostEqual(r["regret_saved"], c["split_regret"] - c["bandit_regret"],
                               places=6)
        # The text report says so too.
        split = self.fake_router(arms=("champion",), answer_2xx=10)
        rc, out, err = self.bench(
            "simulate", "--target", self.target, "--experiment", "bandit",
            "--rates", "champion=0.02,challenger=0.10", "--requests", 40,
            "--path", "/v1/bandit/predict", "--compare-split", split, "--duration", 30)
        self.assertEqual(rc, 0, err)
        self.assertIn(" vs split 0.80 after 10 rewarded requests each: bandit saved ", out)
        self.assertIn("partial: of 40 requests the bandit run rewarded 40, the split run 10; "
                      "only the first 10 of each are compared", out)

    def test_compare_split_interrupted_is_a_partial_comparison(self):
        # Ctrl-C during the split run (a slow stand-in, 40 ms an answer):
        # the comparison covers the rewarded requests both runs have, and
        # says it is partial.
        counts = {}
        split = self.fake_router(arms=("champion",), delay=0.04, counts=counts)
        csv_path = self.cluster.path("sim.csv")
        rc, out, err = self.bench_interrupted(
            ["simulate", "--target", self.target, "--experiment", "bandit",
             "--rates", "champion=0.02,challenger=0.10", "--requests", 300,
             "--path", "/v1/bandit/predict", "--compare-split", split, "--csv", csv_path,
             "--duration", 60, "--json"],
            lambda: counts["req"] >= 10)
        self.assertEqual(rc, 0, err)
        r = json.loads(out)
        self.assertEqual(r["bandit"]["answered"], 300)
        self.assertTrue(r["split"]["stopped_early"])
        n = r["split"]["answered"]
        self.assertLess(n, 300)
        c = r["comparison"]
        self.assertEqual(c["rewarded"], n)
        self.assertTrue(c["partial"])
        self.assertAlmostEqual(c["split_regret"], n * 0.08, places=6)
        with open(csv_path) as f:
            rows = list(csv.DictReader(f))
        self.assertAlmostEqual(c["bandit_regret"], float(rows[n - 1]["cumulative_regret"]),
                               places=5)
        self.assertAlmostEqual(r["regret_saved"], c["split_regret"] - c["bandit_regret"],
                               places=6)

    def test_simulate_unwritable_output_file_fails_before_sending(self):
        missing_dir = self.cluster.path("no-such-dir")
        for opt in ("--csv", "--svg"):
            rc, out, err = self.bench(
                "simulate", "--target", self.target, "--experiment", "bandit",
                "--rates", "champion=0.02,challenger=0.10", "--requests", 50,
                "--path", "/v1/bandit/predict", opt, os.path.join(missing_dir, "x"),
                "--duration", 30)
            self.assertEqual(rc, 1, out)
            self.assertIn(opt + " " + os.path.join(missing_dir, "x"), err)
            self.assertEqual(out, "")
        # The run that would have been lost never started.
        self.assertEqual(self.served(self.champion) + self.served(self.challenger), 0)

    def test_simulate_target_url_with_a_path_sends_there(self):
        # DESIGN §8: --target URL. A URL with a path is where the requests go
        # (as with any load tool); feedback still goes to the listener's root.
        status, _, _ = mmtest.request(self.admin_port, "POST", "/experiments/segment/reset")
        self.assertEqual(status, 200)
        rc, out, err = self.bench(
            "simulate", "--target", self.target + "/v1/seg/x", "--experiment", "segment",
            "--rates", "champion=0.02,challenger=0.10", "--requests", 20,
            "--header", "X-Market: KR", "--duration", 30)
        self.assertEqual(rc, 0, err)
        self.assertIn("20 requests to " + self.target + "/v1/seg/x: 20 answered, 0 failed", out)
        self.assertIn("20 accepted, 0 unknown, 0 invalid, 0 lost", out)
        status, _, body = mmtest.request(self.admin_port, "GET", "/experiments/segment")
        arms = json.loads(body)["arms"]
        self.assertEqual(sum(a["requests"] for a in arms), 20)
        self.assertEqual(sum(a["feedback"] for a in arms), 20)

    def test_simulate_rejects_bad_arguments(self):
        rc, _, err = self.bench("simulate", "--target", self.target, "--experiment", "bandit",
                                "--rates", "champion=1.5", "--requests", 10)
        self.assertEqual(rc, 2)
        self.assertIn("not a probability", err)
        rc, _, err = self.bench("simulate", "--target", self.target, "--rates", "a=0.1",
                                "--requests", 10)
        self.assertEqual(rc, 2)
        self.assertIn("required", err)
        # arms the experiment does not have, or a path it does not match:
        # no answer can be rewarded, the report says so, and the run failed
        for rates, path, why in (("nope=0.5,other=0.2", "/v1/bandit/p", "0 were not 2xx, 0 had "
                                  "no X-Modelmux-Arm, 10 came from arms without a rate"),
                                 ("champion=0.5,challenger=0.2", "/nowhere", "10 were not 2xx, "
                                  "0 had no X-Modelmux-Arm, 0 came from arms without a rate")):
            rc, out, err = self.bench("simulate", "--target", self.target, "--experiment",
                                      "bandit", "--rates", rates, "--requests", 10, "--path", path)
            self.assertEqual(rc, 1, out)
            self.assertIn("no answer could be rewarded: of 10 requests, 0 failed, " + why +
                          " (--rates/--gaussian), 0 had no X-Request-Id; check --target, --path "
                          "and the arm names against experiment bandit's", err)
            self.assertIn("served:", out)


if __name__ == "__main__":
    mmtest.main()
