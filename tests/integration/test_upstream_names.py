"""Upstream host names: looked up again every `resolve_ms` off the event loop
(a model server that moved is followed, a failed lookup keeps the last
address), and looked up off the loop at a reload (requests go on while a slow
resolver answers; a name that does not resolve rejects the reload).

modelmux runs in a private mount namespace (`unshare -m`) where a file of the
test is bind-mounted over /etc/hosts, and another over /etc/resolv.conf
pointing at a "DNS server" of the test that never answers, so lookups are as
slow as its timeout. That needs root (CI runs as root); elsewhere the tests
are skipped with the reason. `unshare` and `sh` exec, so the PID the test
holds is modelmux's own."""
import http.client
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
import unittest

import mmtest

SILENT_DNS = "127.0.0.77"  # the test's resolver: takes queries, never answers


def namespaces_usable():
    if os.geteuid() != 0:
        return "needs root (a private mount namespace over /etc/hosts)"
    try:
        rc = subprocess.run(["unshare", "-m", "--propagation", "private", "true"],
                            capture_output=True, timeout=10).returncode
    except (OSError, subprocess.TimeoutExpired) as e:
        return "unshare unavailable: %s" % e
    return None if rc == 0 else "unshare -m refused here"


class SilentDns:
    """A UDP socket on SILENT_DNS:53 that reads queries and answers none;
    `asked` is set once a query for `name` arrived."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((SILENT_DNS, 53))
        self.sock.settimeout(0.2)
        self.names = []
        self.asked = threading.Event()
        self.stopping = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stopping:
            try:
                data, _ = self.sock.recvfrom(2048)
            except socket.timeout:
                continue
            except OSError:
                return
            self.names.append(data)
            self.asked.set()

    def close(self):
        self.stopping = True
        self.thread.join(timeout=2)
        self.sock.close()


def dns_name(name):
    """name as a DNS query carries it: length-prefixed labels."""
    return b"".join(bytes([len(part)]) + part.encode() for part in name.split("."))


@unittest.skipIf(namespaces_usable() is not None, namespaces_usable() or "")
class UpstreamNames(mmtest.MMTestCase):
    def setUp(self):
        super().setUp()
        self.hosts = self.cluster.path("hosts")
        self.set_hosts({})
        self.resolv = self.cluster.path("resolv.conf")
        with open(self.resolv, "w") as f:
            f.write("nameserver %s\noptions timeout:3 attempts:1\n" % SILENT_DNS)

    def set_hosts(self, names):
        """names: {name: ip, or a list of ips (one line each: several A records)}."""
        # Rewritten in place (same inode): the bind mount shows the new text.
        with open(self.hosts, "w") as f:
            f.write("127.0.0.1 localhost\n")
            for name, ips in names.items():
                for ip in ips if isinstance(ips, list) else [ips]:
                    f.write("%s %s\n" % (ip, name))

    def start_mm(self, cfg, *args):
        path = self.cluster.write_config(cfg)
        script = "mount --bind %s /etc/hosts && mount --bind %s /etc/resolv.conf && exec %s" % (
            shlex.quote(self.hosts), shlex.quote(self.resolv),
            " ".join(shlex.quote(str(a))
                     for a in [mmtest.MM_BIN, "-c", path, "--seed", "1"] + list(args)))
        proc = self.cluster._start(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                                   "modelmux")
        proc.config_path = path
        proc.port = int(cfg["listen"].rsplit(":", 1)[1])
        proc.admin_port = int(cfg["admin"]["listen"].rsplit(":", 1)[1])
        mmtest.wait_port(proc.port, proc.p)
        mmtest.wait_port(proc.admin_port, proc.p)
        return proc

    def second_model(self, port, name, *args, log=None):
        """A model server on 127.0.0.2 at `port` (the same port as one on
        127.0.0.1: two addresses of one name)."""
        proc = self.cluster._start([mmtest.MODEL_SERVER, "--host", "127.0.0.2", "--port", str(port),
                                    "--name", name] + list(args), log or "ms-" + name)
        mmtest.wait_port(port, proc.p, host="127.0.0.2")
        return proc

    def config(self, port, admin, champion, resolve_ms=None):
        up = {"url": champion}
        if resolve_ms is not None:
            up["resolve_ms"] = resolve_ms
        return mmtest.base_config(port, {"champion": up}, [
            {"name": "split", "match": {"path_prefix": "/"}, "policy": "ab",
             "arms": {"champion": 1}}], admin_port=admin)

    def model(self, mm):
        status, _, body = mmtest.request(mm.port, "POST", "/predict", body={"x": 1})
        self.assertEqual(status, 200, body)
        return json.loads(body)["model"]

    def test_a_moved_model_server_is_followed_and_a_failed_lookup_keeps_the_address(self):
        port = mmtest.free_port()
        self.cluster.model_server("old", "--host", "127.0.0.1", port=port)
        new = self.second_model(port, "new")
        self.set_hosts({"model-a.test": "127.0.0.1"})
        dport, admin = mmtest.free_port(), mmtest.free_port()
        mm = self.start_mm(self.config(dport, admin, "http://model-a.test:%d" % port, 200))
        for _ in range(5):
            self.assertEqual(self.model(mm), "old")

        self.set_hosts({"model-a.test": "127.0.0.2"})
        mmtest.eventually(lambda: self.model(mm) == "new", timeout=15)
        # Idle connections to the old address were closed: none answers again.
        for _ in range(20):
            self.assertEqual(self.model(mm), "new")
        self.assertIn("model-a.test now resolves to 127.0.0.2:%d (was 127.0.0.1:%d)" % (port, port),
                      mm.log())
        changed = mmtest.metric_samples(admin, "modelmux_upstream_resolutions_total",
                                        "upstream", "result")
        self.assertEqual(changed[("champion", "changed")], 1)

        # The name disappears: the last address keeps serving, reported once.
        self.set_hosts({})
        mmtest.eventually(lambda: "cannot resolve model-a.test" in mm.log(), timeout=20)
        for _ in range(5):
            self.assertEqual(self.model(mm), "new")
        failed = mmtest.metric_samples(admin, "modelmux_upstream_resolutions_total",
                                       "upstream", "result")
        self.assertGreaterEqual(failed[("champion", "failed")], 1)
        self.assertIn("connections keep going to 127.0.0.2:%d" % port, mm.log())
        self.set_hosts({"model-a.test": "127.0.0.2"})
        mmtest.eventually(lambda: "model-a.test resolves again" in mm.log(), timeout=20)
        self.assertEqual(mm.log().count("cannot resolve model-a.test"), 1)

    def test_every_address_of_a_name_takes_its_turn(self):
        # A name with two addresses (DNS round robin, a headless Service):
        # requests alternate between them, as Envoy's STRICT_DNS does; when
        # the name drops one, the other takes every request.
        port = mmtest.free_port()
        self.cluster.model_server("one", "--host", "127.0.0.1", port=port)
        two = self.second_model(port, "two")
        self.set_hosts({"model-a.test": ["127.0.0.2", "127.0.0.1"]})
        dport, admin = mmtest.free_port(), mmtest.free_port()
        mm = self.start_mm(self.config(dport, admin, "http://model-a.test:%d" % port, 200))
        served = [self.model(mm) for _ in range(20)]
        self.assertEqual((served.count("one"), served.count("two")), (10, 10), served)
        two.kill()  # its address's exchanges now fail: counted against it alone
        for _ in range(4):
            mmtest.request(mm.port, "POST", "/predict", body={"x": 1})
        one_at, two_at = "127.0.0.1:%d" % port, "127.0.0.2:%d" % port
        counts = mmtest.metric_samples(admin, "modelmux_upstream_address_requests_total",
                                       "upstream", "address", "result")
        self.assertEqual(counts[("champion", one_at, "failed")], 0, counts)
        self.assertEqual(counts[("champion", two_at, "answered")], 10, counts)
        self.assertGreaterEqual(counts[("champion", two_at, "failed")], 1, counts)
        self.assertGreaterEqual(counts[("champion", one_at, "answered")], 10, counts)
        two = self.second_model(port, "two", log="ms-two-again")
        self.assertEqual(mmtest.metric_samples(admin, "modelmux_upstream_addresses", "upstream"),
                         {("champion",): 2})
        self.set_hosts({"model-a.test": "127.0.0.2"})
        mmtest.eventually(lambda: "model-a.test now resolves to 127.0.0.2:%d (was 127.0.0.1:%d, "
                          "127.0.0.2:%d)" % (port, port, port) in mm.log(), timeout=15)
        self.assertEqual({self.model(mm) for _ in range(10)}, {"two"})
        self.assertEqual(mmtest.metric_samples(admin, "modelmux_upstream_addresses", "upstream"),
                         {("champion",): 1})

    def test_an_address_that_keeps_failing_is_ejected_and_the_others_serve(self):
        # Envoy's per-host outlier detection: the failing address of a name
        # is skipped once it failed eject.consecutive_5xx times in a row
        # (those answers reach their clients, as §4 says of ejections).
        port = mmtest.free_port()
        self.cluster.model_server("good", "--host", "127.0.0.1", port=port)
        bad = self.second_model(port, "bad", "--error-rate", "1")
        self.set_hosts({"model-a.test": ["127.0.0.1", "127.0.0.2"]})
        dport, admin = mmtest.free_port(), mmtest.free_port()
        cfg = self.config(dport, admin, "http://model-a.test:%d" % port)
        cfg["upstreams"]["champion"]["eject"] = {"consecutive_5xx": 3, "base_ms": 60000}
        mm = self.start_mm(cfg)
        statuses = [mmtest.request(mm.port, "POST", "/predict", body={"x": 1})[0]
                    for _ in range(20)]
        self.assertEqual(statuses[:6], [200, 500, 200, 500, 200, 500])
        self.assertEqual(statuses[6:], [200] * 14)
        self.assertIn("upstream champion: 127.0.0.2:%d ejected for 60000 ms (3 failures in a "
                      "row); the others serve" % port, mm.log())
        self.assertEqual(mmtest.metric_samples(admin, "modelmux_upstream_address_ejections_total",
                                               "upstream"), {("champion",): 1})
        # each address's own counts, and which one is skipped
        good, bad = "127.0.0.1:%d" % port, "127.0.0.2:%d" % port
        self.assertEqual(mmtest.metric_samples(admin, "modelmux_upstream_address_requests_total",
                                               "upstream", "address", "result"),
                         {("champion", good, "answered"): 17, ("champion", good, "failed"): 0,
                          ("champion", bad, "answered"): 3, ("champion", bad, "failed"): 0})
        self.assertEqual(mmtest.metric_samples(admin, "modelmux_upstream_address_ejected",
                                               "upstream", "address"),
                         {("champion", good): 0, ("champion", bad): 1})

    def test_an_address_that_breaks_off_mid_answer_is_ejected(self):
        # A good head, then the connection closes mid-body: each time a
        # failure of the address, not an answer that ends its run.
        port = mmtest.free_port()
        self.cluster.model_server("good", "--host", "127.0.0.1", port=port)
        bad = mmtest.BreakingServer("127.0.0.2", port)
        self.addCleanup(bad.close)
        self.set_hosts({"model-a.test": ["127.0.0.1", "127.0.0.2"]})
        dport, admin = mmtest.free_port(), mmtest.free_port()
        cfg = self.config(dport, admin, "http://model-a.test:%d" % port)
        cfg["upstreams"]["champion"]["eject"] = {"consecutive_5xx": 3, "base_ms": 60000}
        mm = self.start_mm(cfg)
        outcomes = []
        for _ in range(20):
            c = http.client.HTTPConnection("127.0.0.1", mm.port, timeout=10)
            c.request("POST", "/predict", body=b'{"x": 1}')
            r = c.getresponse()
            try:
                r.read()
                outcomes.append("whole")
            except http.client.IncompleteRead:
                outcomes.append("cut")
            c.close()
        self.assertEqual(outcomes[:6], ["whole", "cut"] * 3)
        self.assertEqual(outcomes[6:], ["whole"] * 14)
        self.assertEqual(bad.answers, 3)
        self.assertIn("upstream champion: 127.0.0.2:%d ejected for 60000 ms (3 failures in a "
                      "row); the others serve" % port, mm.log())
        # a cut answer counts once each way: its head was an answer
        good, cut = "127.0.0.1:%d" % port, "127.0.0.2:%d" % port
        self.assertEqual(mmtest.metric_samples(admin, "modelmux_upstream_address_requests_total",
                                               "upstream", "address", "result"),
                         {("champion", good, "answered"): 17, ("champion", good, "failed"): 0,
                          ("champion", cut, "answered"): 3, ("champion", cut, "failed"): 3})

    def test_resolve_ms_0_looks_up_at_the_start_and_at_each_reload(self):
        port = mmtest.free_port()
        self.cluster.model_server("old", "--host", "127.0.0.1", port=port)
        new = self.second_model(port, "new")
        self.set_hosts({"model-a.test": "127.0.0.1"})
        dport, admin = mmtest.free_port(), mmtest.free_port()
        mm = self.start_mm(self.config(dport, admin, "http://model-a.test:%d" % port, 0))
        self.set_hosts({})
        # With re-resolution off, the start's answer stays: nothing is looked up.
        for _ in range(10):
            self.assertEqual(self.model(mm), "old")
        self.assertNotIn("cannot resolve", mm.log())
        self.assertEqual(mmtest.metric_samples(admin, "modelmux_upstream_resolutions_total",
                                               "upstream", "result"), {})
        # A reload looks it up again (as nginx does at a reload), also for an
        # upstream whose settings did not change: it follows the new address.
        self.set_hosts({"model-a.test": "127.0.0.2"})
        st, _, body = mmtest.request(admin, "POST", "/reload")
        self.assertEqual(st, 200, body)
        for _ in range(10):
            self.assertEqual(self.model(mm), "new")
        self.assertIn("model-a.test now resolves to 127.0.0.2:%d (was 127.0.0.1:%d)" % (port, port),
                      mm.log())

    def reload_async(self, mm, out):
        def run():
            out.append(mmtest.request(mm.admin_port, "POST", "/reload", timeout=30))
        t = threading.Thread(target=run)
        t.start()
        return t

    def test_a_reload_looks_names_up_off_the_event_loop(self):
        try:
            dns = SilentDns()
        except OSError as e:
            self.skipTest("cannot listen on %s:53: %s" % (SILENT_DNS, e))
        self.addCleanup(dns.close)
        a = self.cluster.model_server("first")
        b_port = mmtest.free_port()
        self.cluster.model_server("second", "--host", "127.0.0.1", port=b_port)
        dport, admin = mmtest.free_port(), mmtest.free_port()
        mm = self.start_mm(self.config(dport, admin, "http://127.0.0.1:%d" % a.port))
        self.assertEqual(self.model(mm), "first")

        # A name only the silent resolver could answer: the reload waits for
        # it in the thread pool, and requests are served meanwhile.
        self.cluster.write_config(self.config(dport, admin, "http://slow-model.test:%d" % b_port))
        # One list per reload: the two answers come in order, but the two
        # threads may append them in either order on a loaded machine.
        answers, answers2 = [], []
        t = self.reload_async(mm, answers)
        self.assertTrue(dns.asked.wait(20), "modelmux never looked the name up")
        for _ in range(5):
            self.assertEqual(self.model(mm), "first")
            self.assertEqual(mmtest.request(admin, "GET", "/healthz")[0], 200)
        self.assertTrue(t.is_alive(), "the reload answered before its lookup ended")
        # A second reload asked for meanwhile runs after it, on the file as it
        # is then: a name /etc/hosts knows.
        self.set_hosts({"model-b.test": "127.0.0.1"})
        self.cluster.write_config(self.config(dport, admin, "http://model-b.test:%d" % b_port))
        t2 = self.reload_async(mm, answers2)
        t.join(30)
        t2.join(30)
        self.assertEqual((len(answers), len(answers2)), (1, 1))
        first, second = answers[0], answers2[0]
        self.assertEqual(first[0], 400, first[2])
        err = json.loads(first[2])
        self.assertEqual(err["error"], "bad_request")
        self.assertIn("upstream champion: cannot resolve slow-model.test", err["message"])
        self.assertEqual(second[0], 200, second[2])
        self.assertEqual(json.loads(second[2]), {"status": "reloaded"})
        self.assertEqual(self.model(mm), "second")
        self.assertIn("reload rejected, the previous config keeps serving: upstream champion: "
                      "cannot resolve slow-model.test", mm.log())
        text = mmtest.request(admin, "GET", "/metrics")[2].decode()
        self.assertIn("modelmux_reload_failures_total 1", text)
        self.assertIn("modelmux_reloads_total 1", text)

    def test_a_stop_cancels_the_reload_lookups_still_queued(self):
        """A stop that comes while a reload waits for its lookups cancels
        those still queued in libuv's thread pool (4 threads: at most 4 run
        at once), so it exits once the running ones end, and the names
        behind them are never asked for."""
        try:
            dns = SilentDns()
        except OSError as e:
            self.skipTest("cannot listen on %s:53: %s" % (SILENT_DNS, e))
        self.addCleanup(dns.close)
        with open(self.resolv, "w") as f:  # slow enough to send the stop meanwhile
            f.write("nameserver %s\noptions timeout:6 attempts:1\n" % SILENT_DNS)
        a = self.cluster.model_server("first")
        dport, admin = mmtest.free_port(), mmtest.free_port()
        mm = self.start_mm(self.config(dport, admin, "http://127.0.0.1:%d" % a.port))
        cfg = self.config(dport, admin, "http://127.0.0.1:%d" % a.port)
        names = ["slow-%d.test" % i for i in range(8)]
        for n in names:
            cfg["upstreams"][n] = {"url": "http://%s:%d" % (n, a.port)}
        self.cluster.write_config(cfg)
        mm.signal(signal.SIGHUP)  # not POST /reload: no connection waits for the answer
        self.assertTrue(dns.asked.wait(20), "modelmux never looked a name up")
        mm.signal(signal.SIGTERM)
        self.assertEqual(mm.wait(timeout=60), 0, mm.log())
        self.assertIn("reload rejected, the previous config keeps serving: shutting down",
                      mm.log())
        asked = {n for n in names for q in dns.names if dns_name(n) in q}
        self.assertTrue(1 <= len(asked) <= 4, asked)

    def test_a_new_worker_serves_what_its_siblings_serve_after_a_rejected_reload(self):
        """--workers: a reload the workers reject because a name does not
        resolve leaves them on the config before it; a worker started in
        place of a crashed one then serves that config too, not the start
        config (nor the file, which names the host that does not resolve)."""
        first = self.cluster.model_server("first")
        second = self.cluster.model_server("second")
        self.set_hosts({"model-b.test": "127.0.0.1"})
        dport, admin = mmtest.free_port(), mmtest.free_port()
        mm = self.start_mm(self.config(dport, admin, "http://127.0.0.1:%d" % first.port),
                           "--workers", 2)
        pids = lambda: [int(p) for p in re.findall(r"modelmux\[(\d+)\]: listening on", mm.log())]
        mmtest.eventually(lambda: len(pids()) == 2, timeout=10)
        self.cluster.write_config(self.config(dport, admin, "http://model-b.test:%d" % second.port))
        mm.signal(signal.SIGHUP)
        mmtest.eventually(lambda: mm.log().count("config reloaded") == 2, timeout=20)
        # No resolver listens on SILENT_DNS here: the lookup fails at once.
        self.cluster.write_config(self.config(dport, admin, "http://gone-model.test:%d" % first.port))
        mm.signal(signal.SIGHUP)
        mmtest.eventually(lambda: mm.log().count("cannot resolve gone-model.test") == 2, timeout=20)
        time.sleep(1.1)  # a worker that dies within a second of its start is not replaced
        os.kill(pids()[0], signal.SIGKILL)
        mmtest.eventually(lambda: len(pids()) == 3, timeout=10)
        mmtest.eventually(lambda: mm.log().count("config reloaded") == 3, timeout=20)
        # fresh connections land on either worker: every one serves "second"
        self.assertEqual({self.model(mm) for _ in range(40)}, {"second"})
        self.assertEqual(mm.log().count("cannot resolve"), 2, mm.log())

    def test_a_new_worker_starts_on_the_groups_config_when_the_start_configs_host_is_gone(self):
        """--workers: the start config names a host that no longer resolves
        by the time a worker crashes, the config the group reloaded to does
        not: the worker started in its place starts on the group's config
        and serves, and the group exits 0 at the end (no failed start)."""
        first = self.cluster.model_server("first")
        second = self.cluster.model_server("second")
        self.set_hosts({"model-a.test": "127.0.0.1"})
        dport, admin = mmtest.free_port(), mmtest.free_port()
        mm = self.start_mm(self.config(dport, admin, "http://model-a.test:%d" % first.port),
                           "--workers", 2)
        pids = lambda: [int(p) for p in re.findall(r"modelmux\[(\d+)\]: listening on", mm.log())]
        mmtest.eventually(lambda: len(pids()) == 2, timeout=10)
        self.assertEqual(self.model(mm), "first")
        self.cluster.write_config(self.config(dport, admin, "http://127.0.0.1:%d" % second.port))
        mm.signal(signal.SIGHUP)
        mmtest.eventually(lambda: mm.log().count("config reloaded") == 2, timeout=20)
        self.set_hosts({})  # model-a.test is gone
        time.sleep(1.1)  # a worker that dies within a second of its start is not replaced
        os.kill(pids()[0], signal.SIGKILL)
        new = mmtest.eventually(lambda: pids()[2:], timeout=10)[0]
        mmtest.eventually(lambda: "modelmux[%d]: config reloaded" % new in mm.log(), timeout=10)
        self.assertEqual({self.model(mm) for _ in range(40)}, {"second"})
        mm.signal(signal.SIGTERM)
        self.assertEqual(mm.wait(timeout=60), 0, mm.log()[-3000:])

    def test_sighup_with_an_unresolvable_name_keeps_the_old_config(self):
        a = self.cluster.model_server("first")
        dport, admin = mmtest.free_port(), mmtest.free_port()
        mm = self.start_mm(self.config(dport, admin, "http://127.0.0.1:%d" % a.port))
        # No resolver listens on SILENT_DNS here: the lookup fails at once.
        self.cluster.write_config(self.config(dport, admin, "http://gone-model.test:%d" % a.port))
        mm.signal(signal.SIGHUP)
        mmtest.eventually(lambda: "cannot resolve gone-model.test" in mm.log(), timeout=20)
        self.assertEqual(self.model(mm), "first")
        text = mmtest.request(admin, "GET", "/metrics")[2].decode()
        self.assertIn("modelmux_reload_failures_total 1", text)
        self.assertIn("modelmux_reloads_total 0", text)


if __name__ == "__main__":
    mmtest.main()
