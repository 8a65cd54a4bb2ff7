#!/usr/bin/env python3
"""test_hostile_input — client-controlled values at every sink they reach,
black box (README "Data plane", "Feedback", "Admin API, metrics, request log").

  1. An X-Request-Id that is no valid id (quotes, backslashes, spaces, 129
     characters, bytes over 0x7f) is never echoed: the client, the model
     server and the request log see a fresh 32-hex id instead.
  2. A target with quotes, backslashes and escapes reaches the model server
     as sent (the path's escapes normalised) and is logged as one line of
     strict JSON whose path round-trips; one with bytes over 0x7f is a 400,
     logged as a line too.
  3. Error answers that quote a client's value (an admin 404 naming a path
     segment, cut at 64 bytes; a feedback 400 naming an unknown key) are
     strict JSON with the value escaped.
  4. Client headers named X-Modelmux-* never reach the model server, nor do
     they replace modelmux's own X-Modelmux-Arm / X-Request-Id there.
"""
import json
import socket
import threading

import mmtest


class Recorder(mmtest.QuietHandler):
    seen = []
    lock = threading.Lock()

    def do_GET(self):
        with Recorder.lock:
            Recorder.seen.append((self.path, self.headers.items()))
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def raw_request(port, head):
    """Send one raw request head (bytes), return (status, headers dict, body)."""
    out = mmtest.raw(port, head, timeout=5.0)
    head_part, _, body = out.partition(b"\r\n\r\n")
    lines = head_part.split(b"\r\n")
    status = int(lines[0].split()[1])
    hdrs = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        hdrs[k.strip().lower().decode()] = v.strip()
    return status, hdrs, body


class HostileInput(mmtest.MMTestCase):
    def setUp(self):
        super().setUp()
        Recorder.seen = []
        self.up = mmtest.PyUpstream(Recorder)
        self.addCleanup(self.up.close)
        self.port, self.admin = mmtest.free_port(), mmtest.free_port()
        self.log = self.cluster.path("requests.jsonl")
        cfg = mmtest.base_config(
            self.port, {"champion": self.up.port},
            [{"name": "rank", "match": {"path_prefix": "/v1/"}, "policy": "ab",
              "arms": {"champion": 1}}],
            admin_port=self.admin, log={"requests": self.log})
        self.cluster.modelmux(cfg)

    def log_lines(self, n):
        def read():
            try:
                with open(self.log, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                return None
            lines = data.splitlines()
            return lines if len(lines) >= n else None
        # strict: every line is UTF-8 and one JSON object
        return [json.loads(line.decode("utf-8")) for line in mmtest.eventually(read)]

    def test_invalid_request_ids_are_replaced_not_echoed(self):
        bad = [b'a"b', b"a\\b", b"a b", b"x" * 129, b"caf\xc3\xa9", b"../../etc"]  # (DEL is a 400)
        for rid in bad:
            st, hdrs, _ = raw_request(
                self.port, b"GET /v1/r HTTP/1.1\r\nHost: h\r\nConnection: close\r\n"
                           b"X-Request-Id: " + rid + b"\r\n\r\n")
            self.assertEqual(st, 200, rid)
            got = hdrs["x-request-id"]
            self.assertRegex(got.decode(), r"^[0-9a-f]{32}$", rid)
        ups = [dict((k.lower(), v) for k, v in h) for _, h in Recorder.seen]
        self.assertEqual(len(ups), len(bad))
        for h in ups:
            self.assertRegex(h["x-request-id"], r"^[0-9a-f]{32}$")
        for line in self.log_lines(len(bad)):
            self.assertRegex(line["request_id"], r"^[0-9a-f]{32}$")

    def test_hostile_path_is_one_strict_json_log_line(self):
        target = b'/v1/q"\\%0d%0a%22{}|^`?a="b\\"&c=%00%ff'
        st, hdrs, _ = raw_request(
            self.port, b"GET " + target + b" HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        self.assertEqual(st, 200)
        # the path's escapes in uppercase (normalised); the query as sent
        want = '/v1/q"\\%0D%0A%22{}|^`?a="b\\"&c=%00%ff'
        self.assertEqual([p for p, _ in Recorder.seen], [want])
        # bytes over 0x7f in a target are a 400 (llhttp), logged as one line too
        st, _, _ = raw_request(
            self.port, b"GET /v1/\xff\xc3\xa9 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        self.assertEqual(st, 400)
        lines = self.log_lines(2)
        self.assertEqual(len(lines), 2)
        self.assertEqual(lines[0]["path"], want)
        self.assertEqual(lines[1]["status"], 400)
        for k, v in hdrs.items():
            self.assertNotIn(b'"', v, k)
        self.assertEqual(len(Recorder.seen), 1)

    def test_errors_quoting_client_values_are_strict_json(self):
        name = 'a"b\\c' + "x" * 70
        st, _, body = raw_request(
            self.admin, b"GET /experiments/" + name.encode() + b" HTTP/1.1\r\nHost: h\r\n"
                        b"Connection: close\r\n\r\n")
        self.assertEqual(st, 404)
        err = json.loads(body.decode("utf-8"))
        self.assertEqual(err["error"], "not_found")
        self.assertEqual(err["message"], 'no experiment named "%s"' % name[:64])
        st, _, body = mmtest.request(self.port, "POST", "/_modelmux/feedback",
                                     b'{"request_id": "x", "reward": 1, "k\\"\\u00e9\\n": 1}')
        self.assertEqual(st, 400)
        err = json.loads(body.decode("utf-8"))
        self.assertIn('unknown key "k"é\n"', err["message"])
        # a request_id that is no valid id (quotes, newline) is refused, not stored
        st, _, body = mmtest.request(self.port, "POST", "/_modelmux/feedback",
                                     b'{"request_id": "a\\"\\nb", "reward": 1}')
        self.assertEqual(st, 400)
        self.assertIn("request_id must be", json.loads(body.decode("utf-8"))["message"])

    def test_client_modelmux_headers_never_reach_the_model_server(self):
        st, _, _ = raw_request(
            self.port, b"GET /v1/r HTTP/1.1\r\nHost: h\r\nConnection: close\r\n"
                       b"X-Request-Id: mine-1\r\nX-Modelmux-Arm: challenger\r\n"
                       b"X-Modelmux-Shadow: 1\r\nX-Modelmux-Experiment: other\r\n\r\n")
        self.assertEqual(st, 200)
        self.assertEqual(len(Recorder.seen), 1)
        h = Recorder.seen[0][1]
        arms = [v for k, v in h if k.lower() == "x-modelmux-arm"]
        self.assertEqual(arms, ["champion"])
        self.assertEqual([v for k, v in h if k.lower() == "x-request-id"], ["mine-1"])
        self.assertEqual([k for k, _ in h if k.lower() in ("x-modelmux-shadow",
                                                          "x-modelmux-experiment")], [])


if __name__ == "__main__":
    mmtest.main()
