"""Request matching and sticky assignment as a user of nginx or Envoy
expects them, end to end: the path is normalised before it is matched and
the model server gets that same path (a crafted "/v1/rank/../../admin" can
not be matched as one path and served as another); host and header rules;
sticky keys from a query string decoded as a web framework reads them, so
the same user lands on the same arm however the URL spells the key."""
import http.client
import json

import mmtest


class Routing(mmtest.MMTestCase):
    def setUp(self):
        super().setUp()
        self.a = self.cluster.model_server("A")
        self.b = self.cluster.model_server("B")
        self.port = mmtest.free_port()
        cfg = mmtest.base_config(self.port, {"A": self.a.port, "B": self.b.port}, [
            {"name": "rank", "match": {"path_prefix": "/v1/rank"}, "policy": "ab",
             "arms": {"A": 1}},
            {"name": "admin", "match": {"path_prefix": "/admin"}, "policy": "ab",
             "arms": {"B": 1}},
            {"name": "echo", "match": {"path_prefix": "/echo"}, "policy": "ab",
             "arms": {"A": 1}},
            {"name": "sticky", "match": {"path_prefix": "/s"}, "policy": "ab",
             "arms": {"A": 1, "B": 1}, "sticky": {"query": "uid"}},
        ])
        self.cluster.modelmux(cfg, "--seed", 5)

    def exp_of(self, path):
        st, h, body = mmtest.request(self.port, "GET", path)
        if st == 404:
            self.assertEqual(json.loads(body)["error"], "no_route")
            return None
        self.assertEqual(st, 200, body)
        return h.get("x-modelmux-experiment")

    def test_a_path_is_matched_normalised(self):
        # Was: matched raw, so "/v1/rank/../../admin" went to the ranker
        # (whose server may resolve it to /admin) and "/v1/%72ank" was a 404.
        cases = {
            "/v1/rank?x=1": "rank",
            "/v1/%72ank": "rank",
            "/v1//rank": "rank",
            "/v1/./rank": "rank",
            "/v1/rank/../../admin": "admin",
            "/v1/%2e%2e/admin": "admin",
            "/admin/../v1/rank": "rank",
            "/../v1/rank": "rank",
            "/v1/../nothing": None,
        }
        got = {p: self.exp_of(p) for p in cases}
        self.assertEqual(got, cases)

    def test_the_model_server_gets_the_path_that_was_matched(self):
        st, _, body = mmtest.request(self.port, "GET", "/v1/../echo//x/%7Ey/./z?q=%2e.&a=1")
        self.assertEqual(st, 200, body)
        self.assertIn('"path":"/echo/x/~y/z?q=%2e.&a=1"', body.decode())

    def test_a_query_key_is_the_same_user_however_it_is_encoded(self):
        # Was: compared and hashed raw: three spellings, up to three arms.
        for uid in range(40):
            name = "user %d@x" % uid
            forms = ["/s?uid=" + name.replace(" ", "+").replace("@", "%40"),
                     "/s?x=1&u%69d=" + name.replace(" ", "%20"),
                     "/s?uid=&uid=" + name.replace(" ", "+")]
            arms = {mmtest.request(self.port, "GET", f)[1]["x-modelmux-arm"] for f in forms}
            self.assertEqual(len(arms), 1, (name, arms))

class Seeded(mmtest.MMTestCase):
    """--seed makes the routing stream and the request ids reproducible, and
    an admin call (a health check, a scrape, a view, a 404) does not shift
    them: admin answers carry ids of their own generator."""

    def routed(self, up, poll):
        port, admin = mmtest.free_port(), mmtest.free_port()
        cfg = mmtest.base_config(port, up, [
            {"name": "ab3", "match": {"path_prefix": "/"}, "policy": "ab",
             "arms": {"A": 1, "B": 1}}], admin_port=admin)
        proc = self.cluster.modelmux(cfg, "--seed", 42, name="mm-%d" % port)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        seen = []
        for i in range(40):
            if poll and i == 20:
                for path in ("/healthz", "/metrics", "/experiments/ab3", "/experiments/nope"):
                    st, h, _ = mmtest.request(admin, "GET", path)
                    self.assertEqual(len(h.get("x-request-id", "")), 32, (path, st))
            conn.request("POST", "/predict", body=b"{}")
            r = conn.getresponse()
            r.read()
            self.assertEqual(r.status, 200)
            seen.append((r.getheader("X-Request-Id"), r.getheader("X-Modelmux-Arm")))
        conn.close()
        proc.kill()
        return seen

    def test_admin_calls_do_not_shift_the_seeded_stream(self):
        up = {"A": self.cluster.model_server("A").port, "B": self.cluster.model_server("B").port}
        quiet = self.routed(up, False)
        self.assertEqual({arm for _, arm in quiet}, {"A", "B"})
        self.assertEqual(self.routed(up, False), quiet)
        self.assertEqual(self.routed(up, True), quiet)


if __name__ == "__main__":
    mmtest.main()
