"""test_config_reload — a reload with a bad file loses nothing.

For each way a config file can be wrong (syntax, encoding, types, ranges,
keys, names, addresses, the file itself), with modelmux serving a good one:
  - `POST /reload` answers 400 `bad_request` whose message is exactly what
    `modelmux --check` prints for the same file (FILE:LINE:COL: ...);
  - SIGHUP logs `reload rejected, the previous config keeps serving: ` and
    the same message;
  - the old config keeps serving: the same experiment answers after each;
  - putting the good file back and reloading works.
One modelmux serves the whole sequence, so a reload that half-applied a bad
file would show up in a later case. And a reload of a config with more
than 1024 experiments keeps every one's state.
"""
import json
import os
import shutil
import signal
import subprocess

import mmtest

UPS = '"upstreams": {"champion": {"url": "http://127.0.0.1:%d"}, ' \
      '"challenger": {"url": "http://127.0.0.1:%d"}}'


class BadReload(mmtest.MMTestCase):
    def setUp(self):
        super().setUp()
        self.champion = self.cluster.model_server("champion")
        self.challenger = self.cluster.model_server("challenger")
        self.port, self.admin = mmtest.free_port(), mmtest.free_port()
        self.good = json.dumps(mmtest.base_config(
            self.port, {"champion": self.champion.port, "challenger": self.challenger.port},
            [{"name": "ranker", "match": {"path_prefix": "/v1/"}, "policy": "ab",
              "arms": {"champion": 100, "challenger": 0}}],
            admin_port=self.admin), indent=2) + "\n"
        self.path = self.cluster.path("modelmux.json")
        with open(self.path, "w") as f:
            f.write(self.good)
        self.mm = self.cluster.modelmux(self.path)

    def ups(self):
        return UPS % (self.champion.port, self.challenger.port)

    def cases(self):
        g = self.good
        exp = '"experiments": [{"name": "ranker", "match": {"path_prefix": "/v1/"}, ' \
              '"policy": "ab", "arms": {"champion": 1}}]'
        head = '{"listen": "127.0.0.1:%d", "admin": {"listen": "127.0.0.1:%d"}, ' % (
            self.port, self.admin)
        return [
            ("trailing comma", g.replace('"challenger": 0', '"challenger": 0,')),
            ("truncated", g[:len(g) // 2]),
            ("empty", ""),
            ("byte order mark", "\ufeff" + g),
            ("NUL byte", g[:40] + "\0" + g[40:]),
            ("comment", "// modelmux\n" + g),
            ("wrong type", g.replace('"champion": 100', '"champion": "100"')),
            ("negative weight", g.replace('"champion": 100', '"champion": -1')),
            ("all weights 0", g.replace('"champion": 100', '"champion": 0')),
            ("overflowing number", g.replace('"champion": 100', '"champion": 1e400')),
            ("unknown key", g.replace('"policy"', '"polcy": 1, "policy"')),
            ("duplicate key", g.replace('"policy": "ab"', '"policy": "ab", "policy": "ab"')),
            ("missing upstream", g.replace('"challenger": 0', '"challengr": 0')),
            ("duplicate experiment", head + self.ups() + ', "experiments": [' +
             exp[16:-1] + ", " + exp[16:-1] + "]}"),
            ("https upstream", g.replace('"url": "http://', '"url": "https://', 1)),
            ("port 0", g.replace('127.0.0.1:%d"' % self.champion.port, '127.0.0.1:0"')),
            ("listeners overlap", g.replace(":%d" % self.admin, ":%d" % self.port)),
            ("escaped newline in a key", g.replace('"policy"', '"pol\\nicy": 1, "policy"')),
            ("invalid UTF-8", g.replace('"ranker"', '"rank\xff"').encode("latin-1")),
        ]

    def write(self, content):
        if os.path.isdir(self.path):
            os.rmdir(self.path)
        with open(self.path, "wb") as f:
            f.write(content if isinstance(content, bytes) else content.encode("utf-8"))

    def check_says(self):
        r = subprocess.run([mmtest.MM_BIN, "--check", "-c", self.path], capture_output=True,
                           text=True, timeout=20)
        self.assertEqual(r.returncode, 1, r.stdout)
        lines = r.stderr.splitlines()
        self.assertEqual(len(lines), 1, r.stderr)
        return lines[0]

    def serves(self):
        st, h, body = mmtest.request(self.port, "GET", "/v1/rank")
        self.assertEqual((st, h.get("x-modelmux-experiment"), h.get("x-modelmux-arm")),
                         (200, "ranker", "champion"), body)

    def rejected(self, what):
        """The file at self.path is bad: both kinds of reload refuse it with
        --check's message, and the old config goes on serving."""
        want = self.check_says()
        if what not in ("file missing", "a directory", "larger than 16 MiB"):
            self.assertRegex(want, r"^%s:\d+:\d+: \S" % self.path)
        st, _, body = mmtest.request(self.admin, "POST", "/reload")
        self.assertEqual(st, 400, body)
        err = json.loads(body)
        self.assertEqual((err["error"], err["message"]), ("bad_request", want))
        self.serves()
        before = self.mm.log().count("reload rejected")
        self.mm.signal(signal.SIGHUP)
        line = "reload rejected, the previous config keeps serving: " + want
        mmtest.eventually(lambda: self.mm.log().count("reload rejected") > before, timeout=5)
        self.assertIn(line + "\n", self.mm.log())
        self.serves()

    def test_every_bad_file_is_refused_and_the_old_config_serves(self):
        self.serves()
        for what, text in self.cases():
            with self.subTest(case=what):
                self.write(text)
                self.rejected(what)
        with self.subTest(case="file missing"):
            os.unlink(self.path)
            self.rejected("file missing")
        with self.subTest(case="a directory"):
            os.mkdir(self.path)
            self.rejected("a directory")
        with self.subTest(case="larger than 16 MiB"):
            self.write(self.good + " " * (16 << 20))
            self.rejected("larger than 16 MiB")
        # the good file again: reloads, and serves
        self.write(self.good)
        st, _, body = mmtest.request(self.admin, "POST", "/reload")
        self.assertEqual((st, json.loads(body)), (200, {"status": "reloaded"}))
        self.serves()
        self.assertTrue(self.mm.alive())
        metrics = mmtest.request(self.admin, "GET", "/metrics")[2].decode()
        self.assertIn("\nmodelmux_reload_failures_total %d\n" % (2 * (len(self.cases()) + 3)),
                      metrics)

    def tearDown(self):
        if os.path.isdir(self.path):
            shutil.rmtree(self.path)
        super().tearDown()


class LargeReload(mmtest.MMTestCase):
    def test_a_removed_experiments_counters_and_reward_sum_stay_exported(self):
        """Counters of an experiment a reload removed keep being exported
        (no spurious resets), and so does modelmux_reward_sum, so that the
        mean reward (reward_sum / feedback_total) keeps its numerator; the
        live gauges (arm_share) go."""
        ups = {"champion": self.cluster.model_server("champion").port}
        port, admin = mmtest.free_port(), mmtest.free_port()
        exps = [{"name": n, "match": {"path_prefix": "/%s/" % n}, "policy": "ab",
                 "arms": {"champion": 1}} for n in ("kept", "gone")]
        path = self.cluster.path("removal.json")
        with open(path, "w") as f:
            json.dump(mmtest.base_config(port, ups, exps, admin_port=admin), f)
        self.cluster.modelmux(path)
        st, h, _ = mmtest.request(port, "GET", "/gone/x")
        self.assertEqual(st, 200)
        st, _, body = mmtest.request(port, "POST", "/_modelmux/feedback",
                                     body={"request_id": h["x-request-id"], "reward": -2.5})
        self.assertEqual(json.loads(body)["accepted"], 1)
        with open(path, "w") as f:
            json.dump(mmtest.base_config(port, ups, exps[:1], admin_port=admin), f)
        st, _, body = mmtest.request(admin, "POST", "/reload")
        self.assertEqual(st, 200, body)
        samples = lambda name: mmtest.metric_samples(admin, name, "experiment", "arm")
        self.assertEqual(samples("modelmux_feedback_total")[("gone", "champion")], 1)
        self.assertEqual(samples("modelmux_reward_sum")[("gone", "champion")], -2.5)
        self.assertNotIn(("gone", "champion"), samples("modelmux_arm_share"))
        self.assertIn(("kept", "champion"), samples("modelmux_arm_share"))

    def test_reload_keeps_what_the_operator_set_on_every_experiment(self):
        """DESIGN.md §5: a change made through the API lasts until a reload
        changes that experiment's definition. With more than 1024
        experiments, a reload used to forget the state of all past the
        1024th."""
        champion = self.cluster.model_server("champion")
        challenger = self.cluster.model_server("challenger")
        port, admin = mmtest.free_port(), mmtest.free_port()
        n = 1100
        exps = [{"name": "e%d" % i, "match": {"path_prefix": "/e%d/" % i}, "policy": "ab",
                 "arms": {"champion": 100, "challenger": 0}} for i in range(n)]
        self.cluster.modelmux(mmtest.base_config(
            port, {"champion": champion.port, "challenger": challenger.port}, exps,
            admin_port=admin))
        for name in ("e0", "e%d" % (n - 1)):
            st, _, body = mmtest.request(admin, "PUT", "/experiments/%s/weights" % name,
                                         body=b'{"champion": 0, "challenger": 100}')
            self.assertEqual(st, 200, body)
        for _ in range(2):
            st, _, body = mmtest.request(admin, "POST", "/reload", timeout=30)
            self.assertEqual(st, 200, body)
        for name in ("e0", "e%d" % (n - 1)):
            st, h, body = mmtest.request(port, "GET", "/%s/x" % name)
            self.assertEqual((st, h.get("x-modelmux-arm")), (200, "challenger"), name)
            view = json.loads(mmtest.request(admin, "GET", "/experiments/" + name)[2])
            self.assertEqual(view["weights"], {"champion": 0, "challenger": 100}, name)


if __name__ == "__main__":
    mmtest.main()
