#!/usr/bin/env python3
"""test_interleave — the interleave policy end to end (DESIGN.md §3, §4).

Two example model servers with `--list 20` are the rankers: each answers a
fixed ranked list of 20 items drawn from the same 40, so the lists overlap
without being equal (examples/model_server.c). modelmux fans every request
out to both and answers a team-draft merge of k items.

What is asserted is what a user of interleaving relies on:
  1. merged answers: k items, no duplicate, items from both rankers, each
     item the exact object one of the rankers returned for it, everything
     else the first ranker's answer; X-Modelmux-Arm: interleave;
  2. a failing ranker (dead port, or every answer a 500) is never a client
     error: the other ranker's answer goes out unchanged and the reason is
     counted; both failing is a 502;
  3. clicks: a user who clicks what ranker B ranks highly makes B win, with
     a significant sign test in GET /experiments/NAME; duplicate clicks,
     items not shown, unknown request ids and rewards are counted as the
     contract says;
  4. with the Redis store, a click reaches the attribution through any
     instance and through the feedback stream, and the arm hashes in Redis
     hold the outcome counts.
"""
import http.client
import json
import os
import random
import signal
import sys
import threading
import time

import mmtest

HOST = "127.0.0.1"
K = 10
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


def experiment(k=K, ttl=600):
    return {"name": "search", "match": {"path_prefix": "/v1/rank"}, "policy": "interleave",
            "arms": ["ranker-a", "ranker-b"], "list_pointer": "/items", "id_field": "id",
            "k": k, "feedback_ttl_s": ttl}


def get_json(port, path):
    st, _, body = mmtest.request(port, "GET", path)
    return st, json.loads(body) if body else None


def stats(port):
    """The model server's own counters (/_stats)."""
    st, _, body = mmtest.request(port, "GET", "/_stats")
    assert st == 200, st
    return json.loads(body)


def own_list(port):
    """A ranker's own list, asked directly: [item objects]."""
    st, doc = get_json(port, "/v1/rank")
    assert st == 200, st
    return doc["items"]


def attribution(value):
    """PREFIX:il:ID: the reset mark ("EPOCH.N") and a space, then the
    policy's JSON (docs/store.md)."""
    mark, _, doc = value.partition(" ")
    epoch, dot, n = mark.partition(".")
    assert epoch.isdigit() and dot == "." and n.isdigit(), value
    return json.loads(doc)


class Interleave(mmtest.MMTestCase):
    def rankers(self, a_args=(), b_args=()):
        """Two model servers named like the upstreams they stand behind."""
        c = self.cluster
        self.a = c.model_server("ranker-a", "--list", 20, *a_args)
        self.b = c.model_server("ranker-b", "--list", 20, *b_args)
        return self.a.port, self.b.port

    def start(self, a_port, b_port, store=None, k=K, name="modelmux"):
        port, admin = mmtest.free_port(), mmtest.free_port()
        # A shutdown that cannot reach Redis gives up well before the
        # harness's 10 s SIGKILL.
        extra = {"store": store, "limits": {"drain_timeout_ms": 3000}} if store else {}
        cfg = mmtest.base_config(port, {"ranker-a": a_port, "ranker-b": b_port},
                                 [experiment(k)], admin_port=admin, **extra)
        proc = self.cluster.modelmux(cfg, "--seed", 11, name=name)
        self.mm = proc
        return proc

    def tearDown(self):
        procs = [p for p in self.cluster.procs if p.name.startswith("modelmux")]
        super().tearDown()
        for p in procs:
            self.assertEqual(p.p.returncode, 0, p.log())
            for m in SANITIZER_MARKERS:
                self.assertNotIn(m, p.log())

    def impressions(self, port, n, prefix="imp"):
        """n requests on one keep-alive connection: [(request_id, status,
        arm header, body dict)]."""
        conn = http.client.HTTPConnection(HOST, port, timeout=10)
        out = []
        try:
            for i in range(n):
                rid = "%s-%d" % (prefix, i)
                conn.request("POST", "/v1/rank", body='{"query": "shoes"}',
                             headers={"X-Request-Id": rid, "Content-Type": "application/json"})
                r = conn.getresponse()
                body = r.read()
                out.append((rid, r.status, r.getheader("X-Modelmux-Arm"),
                            json.loads(body) if body else None))
        finally:
            conn.close()
        return out

    def feedback(self, port, events):
        st, _, body = mmtest.request(port, "POST", "/_modelmux/feedback", {"events": events})
        self.assertEqual(st, 202, body)
        return json.loads(body)

    def policy_state(self, proc):
        st, doc = get_json(proc.admin_port, "/experiments/search")
        self.assertEqual(st, 200)
        return doc

    # ------------------------------------------------------------ 1. merging

    def test_a_request_body_larger_than_the_read_buffer_is_interleaved(self):
        # Every ranker gets the whole body, so it is read before the fan-out;
        # a body over 64 KiB once filled the read buffer and stalled until 408.
        a_port, b_port = self.rankers()
        mm = self.start(a_port, b_port)
        body = json.dumps({"query": "shoes", "context": "x" * 200000})
        for headers in ({}, {"Transfer-Encoding": "chunked"}):
            conn = http.client.HTTPConnection(HOST, mm.port, timeout=5)
            try:
                if headers:
                    chunks = (body[i:i + 1000].encode() for i in range(0, len(body), 1000))
                    conn.request("POST", "/v1/rank", body=chunks, headers=headers,
                                 encode_chunked=True)
                else:
                    conn.request("POST", "/v1/rank", body=body)
                r = conn.getresponse()
                doc = json.loads(r.read())
            finally:
                conn.close()
            self.assertEqual(r.status, 200, doc)
            self.assertEqual(r.getheader("X-Modelmux-Arm"), "interleave")
            self.assertEqual(len(doc["items"]), K)

    def test_head_is_answered_by_the_champion_alone(self):
        # A HEAD answer has no list to merge: it was a 502 "no ranker gave a
        # usable answer"; the champion (the first arm) answers it, no body.
        a_port, b_port = self.rankers()
        mm = self.start(a_port, b_port)
        before_b = stats(b_port)["requests"]
        conn = http.client.HTTPConnection(HOST, mm.port, timeout=5)
        try:
            for _ in range(2):  # the connection stays usable after it
                conn.request("HEAD", "/v1/rank")
                r = conn.getresponse()
                self.assertEqual(r.read(), b"")
                self.assertEqual((r.status, r.getheader("X-Modelmux-Arm")), (200, "ranker-a"))
            conn.request("POST", "/v1/rank", body='{"query": "shoes"}')
            r = conn.getresponse()
            self.assertEqual((r.status, r.getheader("X-Modelmux-Arm")), (200, "interleave"))
            r.read()
        finally:
            conn.close()
        self.assertEqual(stats(b_port)["requests"], before_b + 1)  # only the POST reached b
        # The metric's arm label says what X-Modelmux-Arm says: the HEADs were
        # ranker-a's answers, the merged answer is "interleave"'s.
        got = mmtest.metric_samples(mm.admin_port, "modelmux_requests_total", "experiment", "arm",
                                    "code")
        self.assertEqual({k: v for k, v in got.items() if k[0] == "search"},
                         {("search", "ranker-a", "200"): 2, ("search", "interleave", "200"): 1})
        got = mmtest.metric_samples(mm.admin_port, "modelmux_request_duration_seconds_count",
                                    "experiment", "arm")
        self.assertEqual(got[("search", "interleave")], 1)
        # Each ranker's latency in the view includes its answers to merged
        # requests: ranker-b answered only the POST's copy (it was null).
        st, doc = get_json(mm.admin_port, "/experiments/search")
        arms = {a["name"]: a for a in doc["arms"]}
        self.assertIsNotNone(arms["ranker-b"]["p50_ms"], arms)
        self.assertIsNotNone(arms["ranker-a"]["p99_ms"], arms)

    def test_merged_answers_hold_k_items_from_both_rankers(self):
        a_port, b_port = self.rankers()
        mm = self.start(a_port, b_port)
        list_a, list_b = own_list(a_port), own_list(b_port)
        objs_a = {it["id"]: it for it in list_a}
        objs_b = {it["id"]: it for it in list_b}
        self.assertTrue(set(objs_a) & set(objs_b), "the rankers' lists should overlap")
        self.assertNotEqual(list_a[0]["id"], list_b[0]["id"])
        self.assertNotEqual([it["id"] for it in list_a], [it["id"] for it in list_b])

        first = {}
        for rid, st, arm, doc in self.impressions(mm.port, 60):
            self.assertEqual(st, 200)
            self.assertEqual(arm, "interleave")
            items = doc["items"]
            ids = [it["id"] for it in items]
            self.assertEqual(len(items), K)
            self.assertEqual(len(set(ids)), K, "no item twice")
            # The frame is ranker a's answer: its model name, and its echo of
            # the request id.
            self.assertEqual(doc["model"], "ranker-a")
            self.assertEqual(doc["request_id"], rid)
            for it in items:
                # each item is the object one ranker returned for it
                self.assertTrue(it == objs_a.get(it["id"]) or it == objs_b.get(it["id"]), it)
            # Team draft: each team's first pick is its own top item (the
            # other's top may have been taken first), so a's top or b's top
            # leads, by a fair coin.
            self.assertIn(ids[0], (list_a[0]["id"], list_b[0]["id"]))
            first[ids[0]] = first.get(ids[0], 0) + 1
            # Both rankers contribute: each one's top item is always shown.
            self.assertIn(list_a[0]["id"], ids)
            self.assertIn(list_b[0]["id"], ids)
        self.assertEqual(len(first), 2, "both rankers' top items lead some impressions: %r" % first)

        state = self.policy_state(mm)["policy_state"]
        self.assertEqual(state["method"], "team_draft")
        self.assertEqual(state["this_instance"]["merged"], 60)
        self.assertEqual([a["served"] for a in state["arms"]], [60, 60])

    # ------------------------------------------------------------ 2. fallback

    def test_dead_ranker_falls_back_without_client_error(self):
        a_port, _ = self.rankers()
        dead = mmtest.free_port()  # nothing listens there
        mm = self.start(a_port, dead)
        list_a = own_list(a_port)
        for rid, st, arm, doc in self.impressions(mm.port, 20):
            self.assertEqual(st, 200)
            self.assertEqual(arm, "ranker-a")
            self.assertEqual(doc["items"], list_a)  # a's answer, unchanged: 20 items
        state = self.policy_state(mm)["policy_state"]
        self.assertEqual(state["arms"][1]["unusable"]["failed"], 20)
        self.assertEqual(state["this_instance"]["fallbacks_to"]["ranker-a"], 20)
        self.assertEqual(state["this_instance"]["merged"], 0)
        # A challenger that cannot be connected to fell back to the champion
        # (DESIGN.md §4: counted), as for a proxied request.
        fb = mmtest.metric_samples(mm.admin_port, "modelmux_fallbacks_total", "experiment",
                                   "from", "to")
        self.assertEqual(fb, {("search", "ranker-b", "ranker-a"): 20})
        # A click on a fallback answer has no attribution: unknown.
        counts = self.feedback(mm.port, [{"request_id": "imp-0", "item": list_a[0]["id"]}])
        self.assertEqual(counts, {"accepted": 0, "unknown": 1, "invalid": 0})

    def test_ejected_ranker_is_not_asked_and_falls_back(self):
        # Every answer of b is a 500: after 3 in a row it is ejected (the
        # upstream's `eject`), is no longer asked, and the champion's list
        # goes out alone, counted as a fallback.
        a_port, b_port = self.rankers(b_args=("--error-rate", 1))
        port, admin = mmtest.free_port(), mmtest.free_port()
        cfg = mmtest.base_config(port, {"ranker-a": a_port, "ranker-b": b_port},
                                 [experiment()], admin_port=admin)
        cfg["upstreams"]["ranker-b"]["eject"] = {"consecutive_5xx": 3, "base_ms": 60000}
        mm = self.cluster.modelmux(cfg, "--seed", 11)
        list_a = own_list(a_port)
        for rid, st, arm, doc in self.impressions(mm.port, 10):
            self.assertEqual((st, arm), (200, "ranker-a"))
            self.assertEqual(doc["items"], list_a)
        self.assertEqual(stats(b_port)["requests"], 3)
        fb = mmtest.metric_samples(admin, "modelmux_fallbacks_total", "experiment", "from", "to")
        self.assertEqual(fb, {("search", "ranker-b", "ranker-a"): 7})
        ej = mmtest.metric_samples(admin, "modelmux_upstream_errors_total", "upstream", "kind")
        self.assertEqual(ej[("ranker-b", "ejection")], 1)
        # its three 500s were unusable answers; not being asked is no failure
        st, _, body = mmtest.request(admin, "GET", "/experiments/search")
        unusable = json.loads(body)["policy_state"]["arms"][1]["unusable"]
        self.assertEqual({k: v for k, v in unusable.items() if v}, {"status": 3})

    def test_failing_champion_answers_are_not_shown(self):
        # Every answer of the champion is a 500: the challenger's goes out.
        a_port, b_port = self.rankers(a_args=("--error-rate", 1))
        mm = self.start(a_port, b_port)
        list_b = own_list(b_port)
        for rid, st, arm, doc in self.impressions(mm.port, 20):
            self.assertEqual(st, 200)
            self.assertEqual(arm, "ranker-b")
            self.assertEqual(doc["model"], "ranker-b")
            self.assertEqual(doc["items"], list_b)
        state = self.policy_state(mm)["policy_state"]
        self.assertEqual(state["arms"][0]["unusable"]["status"], 20)
        self.assertEqual(state["arms"][0]["errors"], 20)
        arms = {a["name"]: (a["requests"], a["errors"]) for a in self.policy_state(mm)["arms"]}
        self.assertEqual(arms, {"ranker-a": (0, 20), "ranker-b": (20, 0)})

    def test_both_rankers_down_is_a_502(self):
        mm = self.start(mmtest.free_port(), mmtest.free_port())
        st, headers, body = mmtest.request(mm.port, "GET", "/v1/rank")
        self.assertEqual(st, 502)
        self.assertEqual(json.loads(body)["error"], "upstream_unavailable")
        self.assertEqual(headers.get("x-modelmux-experiment"), "search")
        self.assertIn(headers.get("x-modelmux-arm"), ("ranker-a", "ranker-b"))
        view = self.policy_state(mm)
        self.assertEqual(view["policy_state"]["this_instance"]["no_usable_answer"], 1)
        # one failed request, one error per ranker: the arm it is accounted to
        # (one request) and the other (its list was not shown: no request)
        self.assertEqual(sorted((a["requests"], a["errors"]) for a in view["arms"]), [(0, 1), (1, 1)])

    # ------------------------------------------------------------ 3. clicks

    def test_user_who_prefers_b_makes_b_win(self):
        a_port, b_port = self.rankers()
        mm = self.start(a_port, b_port)
        # The user likes what B ranks in its top 10; A ranks some of those
        # too (then the team that placed the item gets the click).
        b_taste = [it["id"] for it in own_list(b_port)][:10]
        a_ids = {it["id"] for it in own_list(a_port)}
        self.assertTrue(a_ids & set(b_taste))
        shown = self.impressions(mm.port, 150)
        events, clicked = [], 0
        user = random.Random(5)
        for n, (rid, st, arm, doc) in enumerate(shown):
            self.assertEqual(arm, "interleave")
            if n % 5 == 4:
                continue  # some impressions get no click
            # Each shown item B ranks in its top 10 is clicked with
            # probability 1/2, any other shown item with probability 1/10.
            picks = [it["id"] for it in doc["items"]
                     if user.random() < (0.5 if it["id"] in b_taste else 0.1)]
            events += [{"request_id": rid, "item": i} for i in picks]
            clicked += 1 if picks else 0
        counts = self.feedback(mm.port, events)
        self.assertEqual(counts, {"accepted": len(events), "unknown": 0, "invalid": 0})

        doc = self.policy_state(mm)
        s = doc["policy_state"]
        sys.stderr.write("[interleave] wins a %d, wins b %d, ties %d, p %.3g, preference %.3f\n"
                         % (s["wins_a"], s["wins_b"], s["ties"], s["sign_test"]["p_value"],
                            s["preference"]))
        self.assertEqual(s["clicked_impressions"], clicked)
        self.assertEqual(s["wins_a"] + s["wins_b"] + s["ties"], clicked)
        self.assertGreater(s["wins_b"], s["wins_a"])
        self.assertEqual(s["leader"], "ranker-b")
        self.assertTrue(s["significant"])
        self.assertLess(s["sign_test"]["p_value"], 0.001)
        self.assertLess(s["preference"], 0)
        lo, hi = s["preference_ci95"]
        self.assertLess(hi, 0)
        self.assertEqual(s["arms"][0]["clicks"] + s["arms"][1]["clicks"], len(events))
        arms = {a["name"]: a for a in doc["arms"]}
        self.assertEqual(arms["ranker-b"]["feedback"], clicked)

        # The same clicks again: accepted, and nothing moves.
        counts = self.feedback(mm.port, events[:10])
        self.assertEqual(counts["accepted"], 10)
        s2 = self.policy_state(mm)["policy_state"]
        for key in ("wins_a", "wins_b", "ties", "clicked_impressions"):
            self.assertEqual(s2[key], s[key])

        # What the contract counts as unknown or invalid.
        rid = shown[0][0]
        shown_ids = {it["id"] for it in shown[0][3]["items"]}
        not_shown = next(i for i in ("item-%d" % k for k in range(1, 41)) if i not in shown_ids)
        counts = self.feedback(mm.port, [
            {"request_id": rid, "item": not_shown},          # not in that impression
            {"request_id": "never-served", "item": "item-1"},  # unknown request
            {"request_id": rid, "reward": 1},                 # rewards: not for interleave
            {"experiment": "search", "arm": "ranker-a", "reward": 1},
        ])
        self.assertEqual(counts, {"accepted": 0, "unknown": 1, "invalid": 3})
        # A malformed item: a 400 alone, counted invalid in a batch.
        st, _, _ = mmtest.request(mm.port, "POST", "/_modelmux/feedback",
                                  {"request_id": rid, "item": ""})
        self.assertEqual(st, 400)
        self.assertEqual(self.feedback(mm.port, [{"request_id": rid, "item": ""}]),
                         {"accepted": 0, "unknown": 0, "invalid": 1})

        # Reset forgets the outcome counts.
        st, _, _ = mmtest.request(mm.admin_port, "POST", "/experiments/search/reset")
        self.assertEqual(st, 200)
        s3 = self.policy_state(mm)["policy_state"]
        self.assertEqual((s3["wins_a"], s3["wins_b"], s3["clicked_impressions"]), (0, 0, 0))

    # ------------------------------------------------------------ 4. Redis

    def two_instances(self, sync_ms):
        """Rankers, a Redis, and two modelmux instances sharing it:
        (one, two, Redis client, key prefix)."""
        a_port, b_port = self.rankers()
        redis_port = self.cluster.redis()
        prefix = "mmil%d_%d" % (os.getpid(), sync_ms)
        store = {"type": "redis", "host": HOST, "port": redis_port, "prefix": prefix,
                 "sync_ms": sync_ms}
        one = self.start(a_port, b_port, store=store, name="modelmux-1")
        two = self.start(a_port, b_port, store=store, name="modelmux-2")
        return one, two, mmtest.Redis(redis_port), prefix

    # ------------------------------------------------- 3b. reset and pause

    def test_a_reset_forgets_impressions_served_before_it(self):
        # A click on an impression served before a reset would take back a
        # win the emptied statistics never had (negative counts): it is
        # unknown; one served after the reset counts as usual.
        a_port, b_port = self.rankers()
        mm = self.start(a_port, b_port)
        (old, _, _, old_doc), = self.impressions(mm.port, 1, prefix="old")
        ids = [it["id"] for it in old_doc["items"]]
        self.assertEqual(self.feedback(mm.port, [{"request_id": old, "item": ids[0]}])["accepted"], 1)
        st, _, _ = mmtest.request(mm.admin_port, "POST", "/experiments/search/reset")
        self.assertEqual(st, 200)
        self.assertEqual(self.feedback(mm.port, [{"request_id": old, "item": ids[1]}]),
                         {"accepted": 0, "unknown": 1, "invalid": 0})
        s = self.policy_state(mm)["policy_state"]
        self.assertEqual((s["wins_a"], s["wins_b"], s["ties"], s["clicked_impressions"]),
                         (0, 0, 0, 0))
        (new, _, _, new_doc), = self.impressions(mm.port, 1, prefix="new")
        item = new_doc["items"][0]["id"]
        self.assertEqual(self.feedback(mm.port, [{"request_id": new, "item": item}])["accepted"], 1)
        s = self.policy_state(mm)["policy_state"]
        self.assertEqual(s["wins_a"] + s["wins_b"], 1)
        self.assertEqual(s["clicked_impressions"], 1)

    def test_paused_interleaving_goes_on_counting_clicks_in_its_view(self):
        a_port, b_port = self.rankers()
        mm = self.start(a_port, b_port)
        st, _, _ = mmtest.request(mm.admin_port, "POST", "/experiments/search/pause")
        self.assertEqual(st, 200)
        (rid, _, arm, doc), = self.impressions(mm.port, 1)
        self.assertEqual(arm, "interleave")
        self.assertEqual(self.feedback(mm.port, [{"request_id": rid, "item": doc["items"][0]["id"]}])
                         ["accepted"], 1)
        view = self.policy_state(mm)
        s = view["policy_state"]
        self.assertEqual(view["state"], "paused")
        self.assertEqual(s["clicked_impressions"], 1)
        self.assertEqual(s["wins_a"] + s["wins_b"] + s["ties"], 1)
        self.assertEqual([a["feedback"] for a in view["arms"]], [1, 1])


    def test_clicks_through_any_instance_and_the_stream(self):
        one, two, r, prefix = self.two_instances(sync_ms=50)
        b_port = self.b.port
        try:
            shown = self.impressions(one.port, 3, prefix="redis-imp")
            b_top = own_list(b_port)[0]["id"]
            # The attribution reaches Redis, with the experiment's TTL.
            mmtest.eventually(lambda: r("EXISTS", "%s:il:redis-imp-0" % prefix) == 1, timeout=5)
            ttl = r("PTTL", "%s:il:redis-imp-0" % prefix)
            self.assertTrue(550000 < ttl <= 600000, ttl)
            mmtest.eventually(lambda: r("EXISTS", "%s:req:redis-imp-0" % prefix) == 1, timeout=5)

            # Click through the other instance: it reads the attribution from Redis.
            counts = self.feedback(two.port, [{"request_id": "redis-imp-0", "item": b_top}])
            self.assertEqual(counts, {"accepted": 1, "unknown": 0, "invalid": 0})
            # And through the stream. Its consumer may be either instance; an
            # entry that overtakes the serving instance's sync stays pending
            # until it is claimed again (docs: Feedback), far beyond this
            # test's wait: the click is sent once the impression is in Redis.
            for kind in ("il", "req"):
                mmtest.eventually(
                    lambda: r("EXISTS", "%s:%s:redis-imp-1" % (prefix, kind)) == 1, timeout=5)
            r("XADD", "%s:feedback" % prefix, "*", "request_id", "redis-imp-1", "item", b_top)

            def wins():
                h = r("HGETALL", "%s:{search}:arm:ranker-b" % prefix) or []
                d = dict(zip(h[0::2], h[1::2]))
                return float(d.get("successes", 0)) >= 2 and d
            hb = mmtest.eventually(wins, timeout=10)
            # b's top is b's first pick in every impression: both clicks are B's.
            self.assertEqual(float(hb["successes"]), 2)
            self.assertEqual(float(hb["reward_sum"]), 2)
            self.assertEqual(int(hb["feedback"]), 2)
            ha = r("HGETALL", "%s:{search}:arm:ranker-a" % prefix)
            ha = dict(zip(ha[0::2], ha[1::2]))
            self.assertEqual(int(ha["feedback"]), 2)
            self.assertEqual(float(ha.get("successes", 0)), 0)
            # Both instances see the outcome.
            for proc in (one, two):
                mmtest.eventually(
                    lambda: self.policy_state(proc)["policy_state"]["wins_b"] == 2, timeout=5)
            # The click rewrote the attribution in Redis: b_top is marked clicked.
            aux = attribution(r("GET", "%s:il:redis-imp-0" % prefix))
            pos = aux["i"].index(b_top)
            self.assertEqual(aux["t"][pos], "b")
            mmtest.eventually(
                lambda: attribution(r("GET", "%s:il:redis-imp-0" % prefix))["c"][pos] == "1",
                timeout=5)
            # Stop the instances while Redis is still there (the harness stops
            # everything at once), so their final flush has somewhere to go.
            for proc in (two, one):
                proc.signal(signal.SIGTERM)
                self.assertEqual(proc.wait(timeout=15), 0, proc.log()[-3000:])
        finally:
            r.close()

    def test_clicks_on_one_impression_at_two_instances_at_once_both_count(self):
        """Two clicks on one impression reach two instances at the same
        moment: the impression is clicked once (feedback 1, one outcome),
        with both clicks credited, and its attribution in Redis has both."""
        # A long sync interval: an instance's rewrite of the attribution
        # would reach Redis only a second later, so both instances would
        # start from the same version if the write were not atomic.
        one, two, r, prefix = self.two_instances(sync_ms=1000)
        try:
            (rid, st, arm, body), = self.impressions(one.port, 1, prefix="cas-imp")
            self.assertEqual((st, arm), (200, "interleave"))
            first, second = body["items"][0]["id"], body["items"][1]["id"]
            for kind in ("il", "req"):
                mmtest.eventually(
                    lambda: r("EXISTS", "%s:%s:%s" % (prefix, kind, rid)) == 1, timeout=5)
            results = {}

            def click(port, item):
                results[port] = self.feedback(port, [{"request_id": rid, "item": item}])
            threads = [threading.Thread(target=click, args=a)
                       for a in ((one.port, first), (two.port, second))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=15)
            for port in (one.port, two.port):
                self.assertEqual(results.get(port), {"accepted": 1, "unknown": 0, "invalid": 0})

            def arm_hash(arm):
                h = r("HGETALL", "%s:{search}:arm:%s" % (prefix, arm)) or []
                return {k: float(v) for k, v in zip(h[0::2], h[1::2])}

            def settled():
                ha, hb = arm_hash("ranker-a"), arm_hash("ranker-b")
                clicks = ha.get("reward_sum", 0) + hb.get("reward_sum", 0)
                return clicks == 2 and (ha, hb)
            ha, hb = mmtest.eventually(settled, timeout=10)
            time.sleep(2.5)  # two sync intervals: a wrong extra increment would be there
            ha, hb = arm_hash("ranker-a"), arm_hash("ranker-b")
            self.assertEqual(ha.get("feedback", 0), 1, (ha, hb))
            self.assertEqual(hb.get("feedback", 0), 1, (ha, hb))
            # One impression, one outcome: A won, B won or a tie.
            outcomes = ha.get("successes", 0) + ha.get("failures", 0) + hb.get("successes", 0)
            self.assertEqual(outcomes, 1, (ha, hb))
            self.assertEqual(ha.get("reward_sum", 0) + hb.get("reward_sum", 0), 2)
            aux = attribution(r("GET", "%s:il:%s" % (prefix, rid)))
            for item in (first, second):
                self.assertEqual(aux["c"][aux["i"].index(str(item))], "1", aux)
            for proc in (two, one):
                proc.signal(signal.SIGTERM)
                self.assertEqual(proc.wait(timeout=15), 0, proc.log()[-3000:])
        finally:
            r.close()



class RankerHeaders(mmtest.MMTestCase):
    """What goes between the client and the rankers besides the lists: the
    client's Accept-Encoding is not passed on (both answers are parsed, and
    modelmux decodes no content coding), the answer's own headers go with
    it, and when neither answer can be merged the champion's goes out as it
    came (a 400 stays a 400)."""

    def setUp(self):
        super().setUp()
        self.seen = []
        seen = self.seen

        class Ranker(mmtest.QuietHandler):
            def date_time_string(self, timestamp=None):  # the Date send_response adds
                return "Mon, 01 Jan 2001 00:00:00 GMT"

            def do_GET(self):
                name = "a" if self.server.server_address[1] == ports[0] else "b"
                seen.append((name, self.headers.get_all("Accept-Encoding")))
                if self.path.endswith("/bad") or (self.path.endswith("/bad-b") and name == "b"):
                    status, body = 400, b'{"error":"bad query: missing q"}'
                else:
                    body = json.dumps({"model": name, "items": [{"id": "%s%d" % (name, i)}
                                                                for i in range(5)]}).encode()
                    status = 200
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "max-age=60")
                self.send_header("Set-Cookie", "sess=%s" % name)
                self.send_header("ETag", '"%s-v1"' % name)
                self.send_header("X-Ranker", name)
                self.end_headers()
                self.wfile.write(body)

        ports = []
        self.ups = [mmtest.PyUpstream(Ranker), mmtest.PyUpstream(Ranker)]
        ports += [u.port for u in self.ups]
        port, admin = mmtest.free_port(), mmtest.free_port()
        cfg = mmtest.base_config(port, {"ranker-a": ports[0], "ranker-b": ports[1]},
                                 [experiment(k=4)], admin_port=admin)
        self.mm = self.cluster.modelmux(cfg, "--seed", 3)

    def tearDown(self):
        super().tearDown()
        for u in self.ups:
            u.close()

    def get(self, path):
        return mmtest.request(self.mm.port, "GET", path,
                              headers={"Accept-Encoding": "gzip, deflate, br"})

    def test_rankers_are_asked_for_identity_encoding(self):
        st, headers, body = self.get("/v1/rank")
        self.assertEqual(st, 200, body)
        self.assertEqual(headers.get("x-modelmux-arm"), "interleave")
        self.assertEqual(sorted(self.seen), [("a", ["identity"]), ("b", ["identity"])])

    def test_a_merged_answer_keeps_the_champions_headers_but_its_validators(self):
        st, headers, body = self.get("/v1/rank")
        self.assertEqual(st, 200, body)
        self.assertEqual(len(json.loads(body)["items"]), 4)
        self.assertEqual(headers.get("cache-control"), "max-age=60")
        self.assertEqual(headers.get("set-cookie"), "sess=a")
        self.assertEqual(headers.get("x-ranker"), "a")
        self.assertIsNone(headers.get("etag"))  # it described a's body, not the merge

    def test_an_answer_made_of_two_carries_one_date_of_modelmuxs(self):
        # Both rankers send a Date (of 2001, here): the answer modelmux
        # makes of them, merged or the fallback, is modelmux's and carries
        # its own Date alone. It had the champion's.
        for path in (b"/v1/rank", b"/v1/rank/bad-b"):
            with self.subTest(path=path):
                out = mmtest.raw(self.mm.port, b"GET %s HTTP/1.1\r\nHost: a\r\n"
                                 b"Connection: close\r\n\r\n" % path)
                self.assertTrue(out.startswith(b"HTTP/1.1 200"), out[:300])
                mmtest.assert_one_fresh_date(self, out)

    def test_a_fallback_answer_goes_out_with_its_headers(self):
        st, headers, body = self.get("/v1/rank/bad-b")  # b's 400 cannot be merged
        self.assertEqual(st, 200, body)
        self.assertEqual(headers.get("x-modelmux-arm"), "ranker-a")
        self.assertEqual(json.loads(body)["model"], "a")
        self.assertEqual(headers.get("etag"), '"a-v1"')
        self.assertEqual(headers.get("x-ranker"), "a")

    def test_neither_answer_mergeable_passes_the_champions_answer(self):
        st, headers, body = self.get("/v1/rank/bad")
        self.assertEqual(st, 400, body)
        self.assertEqual(json.loads(body), {"error": "bad query: missing q"})
        self.assertEqual(headers.get("x-modelmux-arm"), "ranker-a")
        self.assertEqual(headers.get("x-ranker"), "a")
        st, _, view = mmtest.request(self.mm.admin_port, "GET", "/experiments/search")
        view = json.loads(view)
        self.assertEqual(view["policy_state"]["this_instance"]["no_usable_answer"], 1)
        # a 4xx is the client's, not an error of either ranker
        self.assertEqual([(a["requests"], a["errors"]) for a in view["arms"]], [(1, 0), (0, 0)])


class KeepAlive(mmtest.MMTestCase):
    """The decision of one request never carries over to the next one on the
    same keep-alive connection (a fan-out used to, and crashed modelmux)."""

    def test_fanout_does_not_leak_to_the_next_request(self):
        c = self.cluster
        a = c.model_server("ranker-a", "--list", 20)
        b = c.model_server("ranker-b", "--list", 20)
        port, admin = mmtest.free_port(), mmtest.free_port()
        cfg = mmtest.base_config(
            port, {"ranker-a": a.port, "ranker-b": b.port},
            [{"name": "search", "match": {"path_prefix": "/v1/rank"}, "policy": "interleave",
              "arms": ["ranker-a", "ranker-b"], "list_pointer": "/items", "k": 10},
             {"name": "other", "match": {"path_prefix": "/v1/other"}, "policy": "ab",
              "arms": {"ranker-a": 50, "ranker-b": 50}}], admin_port=admin)
        mm = c.modelmux(cfg, "--seed", 1)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        seen = []
        for path in ["/v1/rank", "/v1/other", "/v1/other", "/v1/rank"]:
            conn.request("GET", path)
            r = conn.getresponse()
            r.read()
            seen.append((path, r.status, r.getheader("X-Modelmux-Arm")))
        self.assertEqual([s[1] for s in seen], [200] * 4, seen)
        self.assertEqual(seen[0][2], "interleave")
        self.assertIn(seen[1][2], ("ranker-a", "ranker-b"))
        # promoted: one ranker alone, also on a connection that just interleaved
        st, _, _ = mmtest.request(admin, "POST", "/experiments/search/promote", {"arm": "ranker-b"})
        self.assertEqual(st, 200)
        conn.request("GET", "/v1/rank")
        r = conn.getresponse()
        r.read()
        self.assertEqual(r.getheader("X-Modelmux-Arm"), "ranker-b")
        conn.close()
        self.assertTrue(mm.alive(), mm.log())


if __name__ == "__main__":
    mmtest.main()
