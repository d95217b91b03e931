"""
test_retries.py: the retry matrix (PROVIDER_MAX_RETRIES=2).

Retried: connect errors, 408, 429, 500, 502, 503, 529, x-should-retry: true,
and an `event: error` before any delta reached the client. Not retried: 400,
401, 404, x-should-retry: false, an error after a delta. Waits: exponential
backoff with jitter (base 500 ms), retry-after honoured, a retry-after beyond
RETRY_MAX_WAIT answered at once with Retry-After, the whole turn capped by
TURN_TIMEOUT. Checked each time: the client's status or event, the number of
attempts the fake saw, and the `attempts` field of chatd's request log line.
"""
import socket
import time
import uuid

import pytest

from helpers import assert_v1_error, echo, stream_v1
from reliability import messages, provider_requests


@pytest.fixture(scope="module")
def server(chatd_module):
    return chatd_module({"PROVIDER_MAX_RETRIES": "2", "RETRY_MAX_WAIT": "3s"})


def _sid():
    return f"retry-{uuid.uuid4().hex[:10]}"


def _log_attempts(srv, resp):
    rid = resp.headers["x-request-id"]
    lines = srv.wait_request_log(rid)
    assert len(lines) == 1, lines
    return lines[0].get("attempts")


def _post(srv, endpoint, sid, message="go"):
    body = {"session_id": sid, "message": message}
    if endpoint == "/v1/chat":
        r = srv.client.post("/v1/chat", json=body)
        return r, None
    return stream_v1(srv.client, body)


# ------------------------------------------------------------ retried, then success

RETRYABLE = [408, 429, 500, 502, 503, 529]


# The stream endpoint shares the retry path: two statuses are enough there.
RETRY_CASES = [("/v1/chat", s) for s in RETRYABLE] + [("/v1/chat/stream", 429), ("/v1/chat/stream", 529)]


@pytest.mark.parametrize("endpoint,status", RETRY_CASES)
def test_retryable_status_then_success(server, fake, status, endpoint):
    fake.script(queue=[{"status": status}])
    sid = _sid()
    r, sse = _post(server, endpoint, sid, "again")
    assert r.status_code == 200, r.text if sse is None else sse.names()
    if sse is None:
        assert r.json()["response"] == echo("again")
    else:
        assert sse.names()[0] == "start" and sse.names()[-1] == "done" and "error" not in sse.names()
        assert sse.deltas_text() == echo("again")
    reqs = provider_requests(fake)
    assert [q["outcome"] for q in reqs] == ["error_status", "completed"], reqs
    assert reqs[0]["body"] == reqs[1]["body"]
    # Backoff before the first retry: 500 ms * [0.75, 1), plus transfer time.
    gap = reqs[1]["received_at_ms"] - reqs[0]["received_at_ms"]
    assert 350 <= gap <= 800, gap
    assert _log_attempts(server, r) == 2
    assert [m["content"] for m in messages(server.client, sid)] == ["again", echo("again")]


def test_exponential_backoff_and_exhaustion(server, fake):
    fake.script(default={"status": 500})
    sid = _sid()
    r = server.client.post("/v1/chat", json={"session_id": sid, "message": "x"})
    assert_v1_error(r, 502, "provider_error")
    reqs = provider_requests(fake)
    assert len(reqs) == 3  # 1 + PROVIDER_MAX_RETRIES
    g1 = reqs[1]["received_at_ms"] - reqs[0]["received_at_ms"]
    g2 = reqs[2]["received_at_ms"] - reqs[1]["received_at_ms"]
    assert 350 <= g1 <= 800, g1          # 500 ms * [0.75, 1)
    assert 720 <= g2 <= 1300, g2         # 1000 ms * [0.75, 1)
    assert server.client.get(f"/v1/sessions/{sid}").status_code == 404
    # The failed request's log line says how many attempts it took.
    assert _log_attempts(server, r) == 3


def test_connect_error_retried_then_502(chatd, fake):
    # A port that was just free: connection refused.
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    srv = chatd({"ANTHROPIC_BASE_URL": f"http://127.0.0.1:{port}", "PROVIDER_MAX_RETRIES": "2"})
    t0 = time.monotonic()
    r = srv.client.post("/v1/chat", json={"session_id": "conn", "message": "x"})
    took = time.monotonic() - t0
    assert_v1_error(r, 502, "provider_error")
    # Two backoff waits (~0.45 s + ~0.9 s) prove the two retries happened.
    assert 1.0 <= took <= 3.0, took
    assert _log_attempts(srv, r) == 3
    warn = [o for o in srv.logs() if o.get("msg") == "provider call failed"]
    assert warn and warn[-1]["attempts"] == 3, warn


# ------------------------------------------------------------------ not retried

NOT_RETRIED = [
    ("400", {"status": 400}, 400, "invalid_request_error"),
    ("401", {"status": 401}, 502, "provider_auth_error"),
    ("404", {"status": 404}, 400, "invalid_request_error"),
    ("529_should_retry_false", {"status": 529, "should_retry": False}, 503, "provider_overloaded"),
]


@pytest.mark.parametrize("name,scenario,status,etype", NOT_RETRIED, ids=[n for n, *_ in NOT_RETRIED])
def test_not_retried(server, fake, name, scenario, status, etype):
    fake.script(queue=[scenario])
    sid = _sid()
    r = server.client.post("/v1/chat", json={"session_id": sid, "message": "x"})
    assert_v1_error(r, status, etype)
    assert len(provider_requests(fake)) == 1
    assert _log_attempts(server, r) == 1
    assert server.client.get(f"/v1/sessions/{sid}").status_code == 404


def test_should_retry_true_on_400_is_retried(server, fake):
    fake.script(queue=[{"status": 400, "should_retry": True}])
    r = server.client.post("/v1/chat", json={"session_id": _sid(), "message": "x"})
    assert r.status_code == 200, r.text
    assert [q["outcome"] for q in provider_requests(fake)] == ["error_status", "completed"]
    assert _log_attempts(server, r) == 2


# ------------------------------------------------------------- in-stream errors


def test_error_event_before_any_delta_is_retried(server, fake):
    fake.script(queue=[{"fault": "midstream_error", "after": 0}])
    sid = _sid()
    resp, sse = stream_v1(server.client, {"session_id": sid, "message": "abc"})
    assert sse.names()[-1] == "done" and "error" not in sse.names(), sse.names()
    assert sse.deltas_text() == echo("abc")
    assert [q["outcome"] for q in provider_requests(fake)] == ["fault:midstream_error", "completed"]
    assert _log_attempts(server, resp) == 2
    assert [m["content"] for m in messages(server.client, sid)] == ["abc", echo("abc")]


@pytest.mark.parametrize("endpoint", ["/v1/chat/stream", "/chat-stream"])
def test_error_event_after_a_delta_is_not_retried(server, fake, endpoint):
    fake.script(default={"fault": "midstream_error", "after": 2})
    sid = _sid()
    if endpoint == "/v1/chat/stream":
        resp, sse = stream_v1(server.client, {"session_id": sid, "message": "a b c"})
        names = sse.names()
        assert names == ["start", "delta", "delta", "error"], names
        assert sse.data("error")[0]["type"] == "provider_overloaded"
    else:
        with server.client.stream("POST", endpoint, json={"session_id": sid, "message": "a b c"}) as resp:
            text = resp.read().decode()
        assert resp.status_code == 200
        assert text.startswith("Hello! You ") and "\nError: " in text, text
    assert len(provider_requests(fake)) == 1
    assert _log_attempts(server, resp) in (1, None)
    assert server.client.get(f"/v1/sessions/{sid}").status_code == 404


# ------------------------------------------------------------------ retry-after


@pytest.mark.parametrize("header", ["retry_after", "retry_after_ms"])
def test_retry_after_honoured(server, fake, header):
    value = "1" if header == "retry_after" else 1000
    fake.script(queue=[{"status": 529, header: value}])
    r = server.client.post("/v1/chat", json={"session_id": _sid(), "message": "x"})
    assert r.status_code == 200, r.text
    reqs = provider_requests(fake)
    assert len(reqs) == 2
    gap = reqs[1]["received_at_ms"] - reqs[0]["received_at_ms"]
    assert 950 <= gap <= 1600, gap   # the hint, not the 375-500 ms backoff


@pytest.mark.parametrize("status,etype,client_status", [(429, "rate_limit_error", 429),
                                                         (529, "provider_overloaded", 503),
                                                         (503, "provider_overloaded", 503)])
def test_retry_after_beyond_max_wait_fails_fast(server, fake, status, etype, client_status):
    fake.script(queue=[{"status": status, "retry_after": "3600"}])
    sid = _sid()
    t0 = time.monotonic()
    r = server.client.post("/v1/chat", json={"session_id": sid, "message": "x"})
    took = time.monotonic() - t0
    assert_v1_error(r, client_status, etype)
    assert r.headers.get("retry-after") == "3600", r.headers
    assert took < 0.5, took
    assert len(provider_requests(fake)) == 1
    assert server.client.get(f"/v1/sessions/{sid}").status_code == 404


def test_retry_after_beyond_max_wait_in_stream_endpoint(server, fake):
    fake.script(queue=[{"status": 429, "retry_after": "3600"}])
    resp, sse = stream_v1(server.client, {"session_id": _sid(), "message": "x"})
    if sse is None:
        assert_v1_error(resp, 429, "rate_limit_error")
        assert resp.headers.get("retry-after") == "3600"
    else:
        assert sse.names() == ["start", "error"], sse.names()
        assert sse.data("error")[0]["type"] == "rate_limit_error"
    assert len(provider_requests(fake)) == 1


def test_total_retry_time_capped_by_turn_timeout(chatd, fake):
    srv = chatd({"PROVIDER_MAX_RETRIES": "10", "TURN_TIMEOUT": "1500ms"})
    fake.script(default={"status": 529})
    t0 = time.monotonic()
    r = srv.client.post("/v1/chat", json={"session_id": "cap", "message": "x"})
    took = time.monotonic() - t0
    assert_v1_error(r, 503, "provider_overloaded")
    assert took <= 2.0, took
    n = len(provider_requests(fake))
    assert 2 <= n <= 3, n  # 0 ms, ~0.45 s, ~1.35 s: no attempt may start past the deadline


def test_retries_counted_in_metrics(server, fake):
    def retries(text):
        return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
                   if l.startswith("chatd_provider_retries_total"))
    before = retries(server.client.get("/metrics").text)
    fake.script(queue=[{"status": 529, "retry_after_ms": 10}, {"status": 529, "retry_after_ms": 10}])
    assert server.client.post("/v1/chat", json={"session_id": _sid(), "message": "x"}).status_code == 200
    assert retries(server.client.get("/metrics").text) == before + 2
