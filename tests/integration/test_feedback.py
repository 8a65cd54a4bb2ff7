"""Feedback over HTTP (DESIGN.md §4): POST /_modelmux/feedback with the memory
store — single events, batches, explicit (experiment, arm), the 202 counts,
the 400s that apply nothing, malformed events in a batch counted invalid,
and several posts on one keep-alive connection.
The effect is read back from the admin API (per-arm feedback and reward)."""
import http.client
import json

import mmtest


class Feedback(mmtest.MMTestCase):
    def setUp(self):
        super().setUp()
        c = self.cluster
        self.champion = c.model_server("champion")
        self.challenger = c.model_server("challenger")
        self.port, self.admin = mmtest.free_port(), mmtest.free_port()
        cfg = mmtest.base_config(
            self.port, {"champion": self.champion.port, "challenger": self.challenger.port},
            [{"name": "recs", "match": {"path_prefix": "/v1/recs"}, "policy": "thompson",
              "arms": ["champion", "challenger"], "reward": "bernoulli"},
             {"name": "rank", "match": {"path_prefix": "/v1/rank"}, "policy": "ab",
              "arms": {"champion": 50, "challenger": 50}}],
            admin_port=self.admin)
        c.modelmux(cfg, "--seed", 3)

    def served(self, path, n):
        """n requests; returns [(request_id, arm)]."""
        out = []
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        for _ in range(n):
            conn.request("POST", path, body="{}")
            r = conn.getresponse()
            r.read()
            self.assertEqual(r.status, 200)
            out.append((r.getheader("X-Request-Id"), r.getheader("X-Modelmux-Arm")))
        conn.close()
        return out

    def post(self, body, conn=None):
        raw = body if isinstance(body, (bytes, str)) else json.dumps(body)
        if conn is None:
            return mmtest.request(self.port, "POST", "/_modelmux/feedback", raw)
        conn.request("POST", "/_modelmux/feedback", body=raw)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()

    def arms(self, exp):
        st, _, body = mmtest.request(self.admin, "GET", "/experiments/" + exp)
        self.assertEqual(st, 200)
        return {a["name"]: a for a in json.loads(body)["arms"]}

    def assertCounts(self, resp, accepted, unknown, invalid):
        st, _, body = resp
        self.assertEqual(st, 202, body)
        self.assertEqual(json.loads(body), {"accepted": accepted, "unknown": unknown,
                                            "invalid": invalid})

    def assertBadRequest(self, resp):
        st, _, body = resp
        self.assertEqual(st, 400, body)
        doc = json.loads(body)
        self.assertEqual(doc["error"], "bad_request")
        self.assertTrue(doc["message"])
        self.assertTrue(doc["request_id"])

    def test_single_event_by_request_id_is_credited_to_the_arm_that_served_it(self):
        (rid, arm), = self.served("/v1/recs", 1)
        self.assertCounts(self.post({"request_id": rid, "reward": 1}), 1, 0, 0)
        a = self.arms("recs")[arm]
        self.assertEqual((a["feedback"], a["reward_mean"]), (1, 1.0))

    def test_batch_counts_accepted_unknown_and_invalid(self):
        served = self.served("/v1/recs", 3)
        events = [{"request_id": rid, "reward": 0} for rid, _ in served]
        events.append({"request_id": "never-served", "reward": 1})
        events.append({"request_id": served[0][0], "reward": 2})  # bernoulli: outside [0, 1]
        self.assertCounts(self.post({"events": events}), 3, 1, 1)
        total = sum(a["feedback"] for a in self.arms("recs").values())
        self.assertEqual(total, 3)

    def test_explicit_experiment_and_arm(self):
        self.assertCounts(self.post({"experiment": "rank", "arm": "challenger", "reward": 0.25}),
                          1, 0, 0)
        self.assertCounts(self.post({"experiment": "rank", "arm": "nope", "reward": 1}), 0, 1, 0)
        self.assertCounts(self.post({"experiment": "nope", "arm": "champion", "reward": 1}), 0, 1, 0)
        a = self.arms("rank")["challenger"]
        self.assertEqual((a["feedback"], a["reward_mean"]), (1, 0.25))

    def test_a_reward_beyond_the_bound_is_invalid(self):
        # Beyond +-1e100 the arm's sums, which a whole fleet adds up at once,
        # could overflow; once infinite, the arm's mean stayed NaN (shown as
        # null) until a reset.
        self.assertCounts(self.post({"experiment": "rank", "arm": "challenger", "reward": 2}),
                          1, 0, 0)
        self.assertCounts(self.post({"experiment": "rank", "arm": "challenger", "reward": 1e300}),
                          0, 0, 1)
        self.assertCounts(self.post({"events": [
            {"experiment": "rank", "arm": "champion", "reward": 1.5e308},
            {"experiment": "rank", "arm": "champion", "reward": 1e154},
            {"experiment": "rank", "arm": "champion", "reward": -1e100},
            {"experiment": "rank", "arm": "champion", "reward": 1e100}]}), 2, 0, 2)
        a = self.arms("rank")
        self.assertEqual((a["challenger"]["feedback"], a["challenger"]["reward_mean"]), (1, 2.0))
        self.assertEqual((a["champion"]["feedback"], a["champion"]["reward_mean"]), (2, 0.0))

    def test_malformed_bodies_and_single_events_are_400_and_apply_nothing(self):
        (rid, _), = self.served("/v1/rank", 1)
        for bad in ('{"events": [', "[]", '{"events": {}}', '{"events": [], "x": 1}',
                    {"request_id": rid},
                    {"request_id": rid, "reward": "1"},
                    {"request_id": rid, "reward": 1, "x": 1},
                    {"request_id": "has space", "reward": 1},
                    {"reward": 1},
                    {"experiment": "rank", "reward": 1},
                    '{"request_id": "%s", "reward": 1e999}' % rid):
            self.assertBadRequest(self.post(bad))
        self.assertEqual(sum(a["feedback"] for a in self.arms("rank").values()), 0)

    def test_malformed_events_in_a_batch_are_invalid_and_the_rest_applied(self):
        served = self.served("/v1/rank", 2)
        good = [{"request_id": rid, "reward": 1} for rid, _ in served]
        bad = [{"request_id": served[0][0]}, {"request_id": served[0][0], "reward": "1"},
               {"request_id": served[0][0], "reward": 1, "x": 1}, {"reward": 1}, 7,
               {"request_id": "has space", "reward": 1}, {"experiment": "rank", "reward": 1}]
        self.assertCounts(self.post({"events": [good[0]] + bad + [good[1]]}), 2, 0, len(bad))
        self.assertEqual(sum(a["feedback"] for a in self.arms("rank").values()), 2)

    def test_click_on_a_non_interleave_experiment_is_invalid(self):
        (rid, _), = self.served("/v1/rank", 1)
        self.assertCounts(self.post({"request_id": rid, "item": "item-3"}), 0, 0, 1)

    def test_several_posts_on_one_keepalive_connection(self):
        served = self.served("/v1/rank", 5)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        for rid, _ in served:
            self.assertCounts(self.post({"request_id": rid, "reward": 1}, conn=conn), 1, 0, 0)
        conn.close()
        self.assertEqual(sum(a["feedback"] for a in self.arms("rank").values()), 5)

    def test_get_is_405(self):
        st, headers, body = mmtest.request(self.port, "GET", "/_modelmux/feedback")
        self.assertEqual(st, 405)
        self.assertEqual(headers["allow"], "POST")
        self.assertEqual(json.loads(body)["error"], "method_not_allowed")


if __name__ == "__main__":
    mmtest.main()
