-- post.lua — wrk script for bench/peers.sh: POST a small JSON "inference request".
-- Only static fields are set (no request()/response() hooks), so wrk builds the
-- request once and stays on its fast path: the load generator costs the same
-- per request as a plain GET run.
wrk.method = "POST"
wrk.body   = '{"inputs":{"user":"u-1234","features":[0.12,3.4,5.6,0.78,9.1]}}'
wrk.headers["Content-Type"] = "application/json"
