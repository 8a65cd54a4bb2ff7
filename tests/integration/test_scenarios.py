#!/usr/bin/env python3
"""test_scenarios — policies over time, as an ML team runs them, black box.

Each test is a short story against the built binary: real model servers
(examples/model_server), traffic, feedback, admin calls and config reloads,
checked by what the team sees (the admin view, the metrics, where requests
went).

  1. An A/B split ramped by editing the config (90/10 after 50/50) and
     reloading: the sample-ratio check counts the pulls made under the new
     weights, not every pull since the start against them (it cried `srm`
     on a correct split); an unchanged reload keeps counting.
  2. A failing canary whose config is reloaded unchanged in the middle of
     its analysis: the failures counted towards `failure_limit`, the
     history and the last analysis survive the reload (they were wiped, so
     a rollback's reason vanished and reloads postponed the rollback); a
     rolled-back canary shows no interval in progress.
  3. A shadow experiment reloaded unchanged keeps its agreement counts in
     the view, in step with modelmux_shadow_total.

Real processes on loopback ports chosen free at run time, stopped by PID;
every loop is bounded in count and time.
"""
import http.client
import json
import time

import mmtest


def view(admin, name):
    st, _, body = mmtest.request(admin, "GET", "/experiments/" + name)
    assert st == 200, body
    return json.loads(body)


def reload(admin):
    st, _, body = mmtest.request(admin, "POST", "/reload")
    assert (st, json.loads(body)) == (200, {"status": "reloaded"}), body


def send(port, n, path="/v1/rank", body=None):
    """n requests on one keep-alive connection; the arms that answered."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    arms = []
    try:
        for _ in range(n):
            conn.request("POST" if body is not None else "GET", path, body=body)
            r = conn.getresponse()
            r.read()
            arms.append(r.getheader("X-Modelmux-Arm"))
    finally:
        conn.close()
    return arms


class ABRamp(mmtest.MMTestCase):
    def start(self, weights):
        c = self.cluster
        champion, challenger = c.model_server("champion"), c.model_server("challenger")
        self.port, self.admin = mmtest.free_port(), mmtest.free_port()
        self.cfg = mmtest.base_config(
            self.port, {"champion": champion.port, "challenger": challenger.port},
            [{"name": "ranker", "match": {"path_prefix": "/v1/"}, "policy": "ab",
              "arms": weights}], admin_port=self.admin)
        c.modelmux(self.cfg, "--seed", 5)

    def srm(self):
        return view(self.admin, "ranker")["policy_state"]["srm"]

    def test_a_reload_with_new_weights_restarts_the_sample_ratio_check(self):
        self.start({"champion": 50, "challenger": 50})
        send(self.port, 400)
        first = self.srm()
        self.assertEqual((first["srm"], first["since_control_version"]), (False, 0))
        # The team ramps the challenger up in the file (GitOps), not by PUT.
        self.cfg["experiments"][0]["arms"] = {"champion": 10, "challenger": 90}
        self.cluster.write_config(self.cfg)
        reload(self.admin)
        arms = send(self.port, 400)
        self.assertGreater(arms.count("challenger"), 300)  # the new split is in force
        srm = self.srm()
        # All 800 pulls against 10/90 would be chi2 ~ 1000: a false alarm.
        self.assertIsNotNone(srm["chi2"], srm)
        self.assertFalse(srm["srm"], srm)
        self.assertLess(srm["chi2"], 15, srm)
        self.assertGreaterEqual(srm["since_control_version"], 1, srm)

    def test_an_unchanged_reload_keeps_counting_the_sample_ratio(self):
        self.start({"champion": 50, "challenger": 50})
        st, _, body = mmtest.request(self.admin, "PUT", "/experiments/ranker/weights",
                                     {"champion": 80, "challenger": 20})
        self.assertEqual(st, 200, body)
        send(self.port, 300)
        before = self.srm()
        self.assertIsNotNone(before["chi2"], before)
        reload(self.admin)  # the same file: nothing about the experiment changed
        after = self.srm()
        self.assertEqual(after, before)  # the 300 pulls since the PUT still count


class CanaryReload(mmtest.MMTestCase):
    def test_an_unchanged_reload_keeps_the_failures_history_and_last_analysis(self):
        c = self.cluster
        champion = c.model_server("champion")
        challenger = c.model_server("challenger", "--error-rate", "1")
        port, admin = mmtest.free_port(), mmtest.free_port()
        cfg = mmtest.base_config(
            port, {"champion": champion.port, "challenger": challenger.port},
            [{"name": "can", "match": {"path_prefix": "/"}, "policy": "canary",
              "champion": "champion", "canary": "challenger", "steps": [50, 100],
              "step_interval_s": 1,
              "analysis": {"min_requests": 3, "max_error_rate": 0.05, "failure_limit": 3}}],
            admin_port=admin)
        c.modelmux(cfg, "--seed", 7)

        def drive(until, timeout=20.0):
            deadline = time.time() + timeout
            while time.time() < deadline:
                send(port, 20, path="/predict")
                v = view(admin, "can")
                if until(v["policy_state"]):
                    return v
            self.fail("not reached: %s" % json.dumps(v["policy_state"])[:600])

        ps = drive(lambda p: p["failures"] >= 1)["policy_state"]
        self.assertEqual(ps["step"], 50)
        reload(admin)
        ps = view(admin, "can")["policy_state"]
        failed = [h for h in ps["history"] if h["verdict"] == "failed"]
        self.assertGreaterEqual(ps["failures"], 1, ps)
        self.assertEqual(len(failed), ps["failures"], ps["history"])
        self.assertEqual(ps["last_analysis"]["verdict"], "failed", ps)

        v = drive(lambda p: p["state"] == "rolled_back")
        ps = v["policy_state"]
        # Three consecutive failures in all, before and after the reload; one
        # start: the history went on rather than starting over.
        self.assertEqual(ps["last_analysis"]["failures"], 3, ps["last_analysis"])
        self.assertEqual([h["verdict"] for h in ps["history"]],
                         ["started", "failed", "failed", "failed"])
        self.assertEqual((v["state"], ps["step"]), ("rolled_back", 0))
        self.assertIsNone(ps["interval"])  # nothing is being analysed any more
        self.assertEqual(set(send(port, 20, path="/predict")), {"champion"})
        self.assertEqual(mmtest.metric_samples(admin, "modelmux_canary_step", "experiment"),
                         {("can",): 0.0})


class ShadowReload(mmtest.MMTestCase):
    def test_an_unchanged_reload_keeps_the_agreement_counts(self):
        c = self.cluster
        primary = c.model_server("champion", "--score", "0.7")
        cand = c.model_server("challenger", "--score", "0.2")
        port, admin = mmtest.free_port(), mmtest.free_port()
        cfg = mmtest.base_config(
            port, {"champion": primary.port, "challenger": cand.port},
            [{"name": "sh", "match": {"path_prefix": "/"}, "policy": "shadow",
              "primary": "champion", "shadows": ["challenger"], "timeout_ms": 2000,
              "max_body_bytes": 100, "compare": {"ignore": ["/model"]}}],
            admin_port=admin)
        c.modelmux(cfg, "--seed", 3)

        def outcomes(total):
            got = mmtest.metric_samples(admin, "modelmux_shadow_total", "arm", "outcome")
            return got if sum(got.values()) >= total else None

        def round_of_requests(total):
            send(port, 6, body='{"x":1}')
            send(port, 2, body="x" * 200)  # too large to mirror: dropped
            return mmtest.eventually(lambda: outcomes(total), timeout=10)

        round_of_requests(8)
        reload(admin)
        got = round_of_requests(16)
        self.assertEqual(got[("challenger", "mismatch")], 12)
        self.assertEqual(got[("challenger", "dropped")], 4)
        sh = view(admin, "sh")["policy_state"]["shadows"][0]
        self.assertEqual((sh["compared"], sh["mismatches"], sh["dropped"]), (12, 12, 4), sh)


if __name__ == "__main__":
    mmtest.main()
