"""
test_metrics.py: GET /metrics, parsed with a real Prometheus text parser
(prometheus_client, Debian's python3-prometheus-client), and its values moving
as requests are made: requests by route and status, latency histograms, tokens
and cost equal to what the responses reported, provider errors and retries,
rate-limited requests, cancelled turns, active streams, database operations.

Every test starts its own server, so counters start at zero; the assertions
still work on differences between two scrapes. A request is counted when its
response has been sent, possibly a moment after the client read it on another
worker, so each expectation is polled briefly and then asserted exactly.
"""
import math
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import directive, stream_v1

POLL_S = 3.0


class Scrape:
    """One /metrics scrape: families by name and sample values by (name, labels)."""

    def __init__(self, text):
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = {}
        for fam in self.families.values():
            for s in fam.samples:
                key = (s.name, frozenset(s.labels.items()))
                assert key not in self.samples, f"duplicate sample {key}"
                self.samples[key] = s.value

    def get(self, name, **labels):
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def sum(self, name, **labels):
        """Sum over every sample of name whose labels include labels."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= ls)


def scrape(c):
    r = c.get("/metrics")
    assert r.status_code == 200, r.text
    ct = r.headers["content-type"]
    assert ct.startswith("text/plain") and "version=0.0.4" in ct, ct
    return Scrape(r.text)


def wait_for(c, check, timeout=POLL_S):
    """Scrapes until check(scrape) holds (returns that scrape) or the deadline; then asserts it."""
    deadline = time.monotonic() + timeout
    while True:
        s = scrape(c)
        if check(s) or time.monotonic() > deadline:
            return s
        time.sleep(0.02)


def assert_delta(c, before, expected, timeout=POLL_S):
    """expected: {(name, labels_dict_as_tuple_items): delta}. Waits, then asserts exact deltas."""
    def ok(s):
        return all(s.get(n, **dict(ls)) - before.get(n, **dict(ls)) == d for (n, ls), d in expected.items())
    after = wait_for(c, ok, timeout)
    got = {k: after.get(k[0], **dict(k[1])) - before.get(k[0], **dict(k[1])) for k in expected}
    assert got == expected, got
    return after


def K(name, **labels):
    return (name, tuple(sorted(labels.items())))


@pytest.fixture
def server(chatd):
    return chatd({"PROVIDER_MAX_RETRIES": "1", "HEARTBEAT_INTERVAL": "1s"})


# ------------------------------------------------------------------ format


def test_exposition_parses_with_types_and_help(server):
    c = server.client
    assert c.post("/v1/chat", json={"message": "fmt", "session_id": "m-fmt"}).status_code == 200
    text = c.get("/metrics").text
    s = Scrape(text)
    kinds = {name: f.type for name, f in s.families.items()}
    expected = {
        "chatd_build_info": "gauge",
        "chatd_http_requests": "counter",
        "chatd_http_request_duration_seconds": "histogram",
        "chatd_provider_request_duration_seconds": "histogram",
        "chatd_provider_ttft_seconds": "histogram",
        "chatd_provider_errors": "counter",
        "chatd_provider_retries": "counter",
        "chatd_tokens": "counter",
        "chatd_cost_microdollars": "counter",
        "chatd_active_streams": "gauge",
        "chatd_db_operation_duration_seconds": "histogram",
        "chatd_rate_limited": "counter",
        "chatd_turns_cancelled": "counter",
        "chatd_turns": "counter",
    }
    for name, kind in expected.items():
        assert kinds.get(name) == kind, (name, kinds.get(name))
        assert s.families[name].documentation, f"{name} has no HELP text"
    assert s.sum("chatd_build_info") == 1
    # Histograms: cumulative buckets ending with +Inf == _count, for every child.
    for fam in s.families.values():
        if fam.type != "histogram":
            continue
        children = {}
        for smp in fam.samples:
            labels = {k: v for k, v in smp.labels.items() if k != "le"}
            key = frozenset(labels.items())
            ch = children.setdefault(key, {"buckets": [], "count": None, "sum": None})
            if smp.name.endswith("_bucket"):
                ch["buckets"].append((float(smp.labels["le"]), smp.value))
            elif smp.name.endswith("_count"):
                ch["count"] = smp.value
            elif smp.name.endswith("_sum"):
                ch["sum"] = smp.value
        assert children, fam.name
        for key, ch in children.items():
            b = sorted(ch["buckets"])
            assert b and math.isinf(b[-1][0]), (fam.name, key)
            assert all(b[i][1] <= b[i + 1][1] for i in range(len(b) - 1)), (fam.name, key, b)
            assert b[-1][1] == ch["count"], (fam.name, key)
            assert ch["sum"] is not None and ch["sum"] >= 0
    # The closed label sets are present from the start (at zero if unused).
    for outcome in ("ok", "error", "cancelled"):
        assert ("chatd_turns_total", frozenset({("outcome", outcome)})) in s.samples
    for kind in ("requests", "tokens"):
        assert ("chatd_rate_limited_total", frozenset({("kind", kind)})) in s.samples


# ------------------------------------------------------------- http requests


def test_http_requests_by_route_and_status(server, fake):
    c = server.client
    before = scrape(c)
    for _ in range(3):
        assert c.get("/v1/sessions").status_code == 200
    for _ in range(2):
        assert c.get("/v1/sessions/m-none").status_code == 404
    assert c.post("/v1/chat", json={"message": "a", "session_id": "m-http"}).status_code == 200
    assert c.post("/v1/chat", json={"message": ""}).status_code == 400
    assert c.put("/v1/chat").status_code == 405
    assert c.get("/history/m-http").status_code == 200
    assert c.get("/healthz").status_code == 200
    R = "chatd_http_requests_total"
    after = assert_delta(c, before, {
        K(R, route="/v1/sessions", method="GET", status="200"): 3,
        K(R, route="/v1/sessions/{}", method="GET", status="404"): 2,
        K(R, route="/v1/chat", method="POST", status="200"): 1,
        K(R, route="/v1/chat", method="POST", status="400"): 1,
        K(R, route="/history/{}", method="GET", status="200"): 1,
        K(R, route="/healthz", method="GET", status="200"): 1,
        K("chatd_http_request_duration_seconds_count", route="/v1/sessions"): 3,
        K("chatd_http_request_duration_seconds_count", route="/v1/sessions/{}"): 2,
        K("chatd_http_request_duration_seconds_count", route="/history/{}"): 1,
    })
    # The 405 is counted once, under some route label, with its status.
    assert after.sum(R, status="405") - before.sum(R, status="405") == 1
    # Nothing else moved except the scrapes themselves.
    moved = after.sum(R) - before.sum(R)
    scrapes = after.sum(R, route="/metrics") - before.sum(R, route="/metrics")
    assert moved - scrapes == 10, (moved, scrapes)
    # Unknown paths share one label value (bounded cardinality), whatever the path.
    b2 = scrape(c)
    for i in range(5):
        assert c.get(f"/no/such/path/{i}").status_code == 404
    a2 = wait_for(c, lambda s: s.sum(R, status="404") - b2.sum(R, status="404") == 5)
    assert a2.sum(R, status="404") - b2.sum(R, status="404") == 5
    routes = {dict(ls).get("route") for (n, ls) in a2.samples if n == R}
    assert not any(r and r.startswith("/no/such") for r in routes), routes


def test_request_latency_histogram_sees_slow_request(server, fake):
    c = server.client
    before = scrape(c)
    r = c.post("/v1/chat", json={"message": "slow " + directive({"ttft_ms": 300}), "session_id": "m-slow"})
    assert r.status_code == 200
    H = "chatd_http_request_duration_seconds"
    after = assert_delta(c, before, {K(H + "_count", route="/v1/chat"): 1})
    dsum = after.get(H + "_sum", route="/v1/chat") - before.get(H + "_sum", route="/v1/chat")
    assert 0.3 <= dsum < 5, dsum
    # The request landed in the buckets above 0.25 s only.
    le025 = after.get(H + "_bucket", route="/v1/chat", le="0.25") - before.get(H + "_bucket", route="/v1/chat", le="0.25")
    assert le025 == 0
    P = "chatd_provider_ttft_seconds"
    assert after.get(P + "_count", provider="anthropic") - before.get(P + "_count", provider="anthropic") == 1
    tsum = after.get(P + "_sum", provider="anthropic") - before.get(P + "_sum", provider="anthropic")
    assert 0.3 <= tsum < 5, tsum
    D = "chatd_provider_request_duration_seconds"
    assert after.get(D + "_count", provider="anthropic") - before.get(D + "_count", provider="anthropic") == 1
    assert after.get(D + "_sum", provider="anthropic") - before.get(D + "_sum", provider="anthropic") >= 0.3


# ----------------------------------------------------------- tokens and cost


def test_tokens_and_cost_equal_what_responses_reported(server, fake):
    c = server.client
    before = scrape(c)
    tot = {"input": 0, "output": 0, "cache_read": 0, "cache_write": 0}
    cost = 0

    def add_usage(u):
        tot["input"] += u["input_tokens"]
        tot["output"] += u["output_tokens"]
        tot["cache_read"] += u["cache_read_input_tokens"]
        tot["cache_write"] += u["cache_creation_input_tokens"]

    for i, msg in enumerate(["one", "two words", "a somewhat longer message " * 5]):
        r = c.post("/v1/chat", json={"message": msg, "session_id": "m-tok"})
        assert r.status_code == 200, r.text
        add_usage(r.json()["usage"])
        cost += r.json()["cost"]["micros"]
    cache = directive({"usage": {"cache_read_input_tokens": 70, "cache_creation_input_tokens": 50}})
    r = c.post("/v1/chat", json={"message": "cached " + cache, "session_id": "m-tok2"})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["cache_read_input_tokens"] == 70
    add_usage(r.json()["usage"])
    cost += r.json()["cost"]["micros"]
    resp, sse = stream_v1(c, {"message": "streamed reply please", "session_id": "m-tok3"})
    done = sse.data("done")[0]
    add_usage(done["usage"])
    cost += done["cost"]["micros"]
    r = c.post("/v1/chat/completions", json={"model": "claude-sonnet-4-6",
                                             "messages": [{"role": "user", "content": "openai shaped"}]})
    assert r.status_code == 200, r.text
    ou = r.json()["usage"]
    tot["input"] += ou["prompt_tokens"]
    tot["output"] += ou["completion_tokens"]
    cost += 3 * ou["prompt_tokens"] + 15 * ou["completion_tokens"]  # claude-sonnet-4-6: $3 / $15 per Mtok
    # A failed turn adds no cost and no tokens.
    assert c.post("/v1/chat", json={"message": "x " + directive({"status": 400}), "session_id": "m-tok4"}).status_code == 400
    assert cost > 0 and all(v > 0 for v in tot.values()), (cost, tot)
    T = "chatd_tokens_total"
    assert_delta(c, before, {
        K(T, direction="input"): tot["input"],
        K(T, direction="output"): tot["output"],
        K(T, direction="cache_read"): tot["cache_read"],
        K(T, direction="cache_write"): tot["cache_write"],
        K("chatd_cost_microdollars_total"): cost,
        K("chatd_turns_total", outcome="ok"): 6,
        K("chatd_turns_total", outcome="error"): 1,
    })
    # The totals agree with /v1/stats too (usage of stored turns; the stateless completion is not stored).
    st = c.get("/v1/stats").json()
    assert st["usage"]["input_tokens"] == tot["input"] - ou["prompt_tokens"]
    assert st["usage"]["output_tokens"] == tot["output"] - ou["completion_tokens"]


# --------------------------------------------------- provider errors, retries


def test_provider_errors_and_retries(server, fake):
    c = server.client
    before = scrape(c)
    # Retried once (PROVIDER_MAX_RETRIES=1), then a success: a retry, no error.
    fake.script(queue=[{"status": 529, "retry_after_ms": 10}])
    r = c.post("/v1/chat", json={"message": "after one 529", "session_id": "m-retry"})
    assert r.status_code == 200, r.text
    assert len(fake.requests()) == 2
    after = assert_delta(c, before, {
        K("chatd_provider_retries_total", provider="anthropic"): 1,
        K("chatd_turns_total", outcome="ok"): 1,
        K("chatd_turns_total", outcome="error"): 0,
    })
    assert after.sum("chatd_provider_errors_total") == before.sum("chatd_provider_errors_total")
    # 529 on every attempt: one failed call (its error counted once, by type), one retry, an error turn.
    before = after
    r = c.post("/v1/chat", json={"message": "x " + directive({"status": 529, "retry_after_ms": 10}),
                                 "session_id": "m-err"})
    assert r.status_code == 503, r.text
    after = assert_delta(c, before, {
        K("chatd_provider_errors_total", provider="anthropic", type="overloaded_error"): 1,
        K("chatd_provider_retries_total", provider="anthropic"): 1,
        K("chatd_turns_total", outcome="error"): 1,
        K("chatd_http_requests_total", route="/v1/chat", method="POST", status="503"): 1,
    })
    # A non-retryable error: counted, not retried.
    before = after
    r = c.post("/v1/chat", json={"message": "x " + directive({"status": 400}), "session_id": "m-err2"})
    assert r.status_code == 400
    after = assert_delta(c, before, {
        K("chatd_provider_errors_total", provider="anthropic", type="invalid_request_error"): 1,
        K("chatd_provider_retries_total", provider="anthropic"): 0,
        K("chatd_turns_total", outcome="error"): 1,
    })


# ------------------------------------------------------------- rate limits


def test_rate_limited_total_by_kind(chatd, fake):
    s = chatd({"RATE_LIMIT": "2/minute", "TOKEN_LIMIT": "20/minute"})
    c = s.client
    before = scrape(c)
    assert c.post("/v1/chat", json={"message": "m" * 100, "session_id": "m-rl"}).status_code == 200
    assert c.post("/v1/chat", json={"message": "x", "session_id": "m-rl"}).status_code == 429  # tokens
    assert c.post("/v1/chat", json={"message": "x", "session_id": "m-rl"}).status_code == 429  # requests
    assert c.post("/chat", json={"message": "x", "session_id": "m-rl"}).status_code == 429     # requests
    assert_delta(c, before, {
        K("chatd_rate_limited_total", kind="tokens"): 1,
        K("chatd_rate_limited_total", kind="requests"): 2,
        K("chatd_http_requests_total", route="/v1/chat", method="POST", status="429"): 2,
        K("chatd_http_requests_total", route="/chat", method="POST", status="429"): 1,
        K("chatd_turns_total", outcome="ok"): 1,
        K("chatd_turns_total", outcome="error"): 0,
    })


# ------------------------------------------------- streams and cancellation


def test_active_streams_and_cancelled_turns(server, fake):
    c = server.client
    before = scrape(c)
    body = {"message": "long " + directive({"ttft_ms": 300, "reply_words": 200, "gap_ms": 50}),
            "session_id": "m-cancel"}
    with c.stream("POST", "/v1/chat/stream", json=body) as resp:
        assert resp.status_code == 200
        # Headers are in, nothing read yet: the stream is open and counted.
        mid = wait_for(c, lambda s: s.get("chatd_active_streams") == 1)
        assert mid.get("chatd_active_streams") == 1
        got = b""
        for chunk in resp.iter_raw():
            got += chunk
            if b"event: delta" in got:
                break  # leaving iter_raw early makes httpx close the connection
    # Closed mid-reply: the provider call is aborted and the turn counted as cancelled.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and fake.stats()["client_closed"] < 1:
        time.sleep(0.02)
    assert fake.stats()["client_closed"] == 1
    assert_delta(c, before, {
        K("chatd_turns_cancelled_total", reason="client_disconnect"): 1,
        K("chatd_turns_total", outcome="cancelled"): 1,
        K("chatd_turns_total", outcome="ok"): 0,
        K("chatd_active_streams"): 0,
    })
    # Several streams at once, all finished: back to 0.
    results = []

    def one(i):
        results.append(stream_v1(c, {"message": f"par {i} " + directive({"ttft_ms": 600}), "session_id": f"m-par{i}"}))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    peak = wait_for(c, lambda s: s.get("chatd_active_streams") == 3, timeout=2)
    assert peak.get("chatd_active_streams") == 3
    for t in threads:
        t.join(10)
    assert all(sse is not None and sse.names()[-1] == "done" for _, sse in results)
    end = wait_for(c, lambda s: s.get("chatd_active_streams") == 0)
    assert end.get("chatd_active_streams") == 0


# ------------------------------------------------------------- database


def test_db_operation_durations(server, fake):
    c = server.client
    before = scrape(c)
    for i in range(3):
        assert c.post("/v1/chat", json={"message": f"db {i}", "session_id": "m-db"}).status_code == 200
    H = "chatd_db_operation_duration_seconds_count"
    after = assert_delta(c, before, {
        K(H, op="turn_commit"): 3,
        K(H, op="lock_acquire"): 3,
        K(H, op="history_load"): 2,   # the first turn had no session to load
    })
    assert after.sum(H) - before.sum(H) >= 8


def test_history_cache_reads_and_bytes(server, fake):
    # A session's first turn has no history to read; the second reads it from
    # the file (a miss, which fills the cache), every later one from the
    # history cache, which then holds the session's messages.
    c = server.client
    before = scrape(c)
    for i in range(5):
        assert c.post("/v1/chat", json={"message": f"cache {i}", "session_id": "m-hc"}).status_code == 200
    R = "chatd_history_cache_reads_total"
    after = assert_delta(c, before, {K(R, result="miss"): 1, K(R, result="hit"): 3})
    assert after.get("chatd_history_cache_bytes") > before.get("chatd_history_cache_bytes")
    msgs = c.get("/v1/sessions/m-hc/messages").json()["data"]
    assert [m["content"] for m in msgs if m["role"] == "user"] == [f"cache {i}" for i in range(5)]
