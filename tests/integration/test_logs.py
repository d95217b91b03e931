"""
test_logs.py: the JSON request log (one line per request, documented fields)
and that the provider API key never appears in logs or responses.
"""
import json
import re
import time

import pytest

from helpers import API_KEY, stream_seed, stream_v1

FIELDS = {"time", "request_id", "method", "path", "status", "duration_ms", "session", "provider_ms", "tokens"}
SECRET_PART = API_KEY.split("CANARY-")[1]


@pytest.fixture(scope="module")
def server(chatd_module):
    return chatd_module({"LOG_LEVEL": "debug"})


def _one_log(server, rid):
    found = server.wait_request_log(rid)
    deadline = time.monotonic() + 0.3  # a duplicate would come right after
    while time.monotonic() < deadline:
        time.sleep(0.05)
    found = [o for o in server.request_logs() if o.get("request_id") == rid]
    assert len(found) == 1, found
    line = found[0]
    assert FIELDS <= set(line), line
    assert isinstance(line["time"], str) and re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", line["time"]), line
    assert isinstance(line["duration_ms"], (int, float)) and line["duration_ms"] >= 0, line
    return line


def test_one_line_per_request_with_fields(server, fake):
    c = server.client
    fake.script(default={"ttft_ms": 150})
    cases = [
        ("GET", "/healthz", {}, 200, None),
        ("GET", "/history/log-none", {}, 404, None),
        ("GET", "/nowhere", {}, 404, None),
        ("POST", "/v1/chat", {"json": {"message": "hi", "session_id": "log-s1"}}, 200, "log-s1"),
        ("POST", "/chat", {"json": {"message": "hi", "session_id": "log-s2"}}, 200, "log-s2"),
        ("POST", "/v1/chat", {"json": {"message": 5}}, 400, None),
        ("GET", "/v1/sessions/log-s1", {}, 200, "log-s1"),
    ]
    for i, (method, path, kw, status, sid) in enumerate(cases):
        rid = f"log-req-{i}"
        r = c.request(method, path, headers={"X-Request-Id": rid}, **kw)
        assert r.status_code == status, r.text
        line = _one_log(server, rid)
        assert line["method"] == method and line["path"] == path and line["status"] == status, line
        if sid is not None:
            assert line["session"] == sid, line
        if path in ("/v1/chat", "/chat") and status == 200:
            assert isinstance(line["provider_ms"], (int, float)) and line["provider_ms"] >= 150, line
            assert line["duration_ms"] >= line["provider_ms"] - 1, line
            assert line["tokens"] not in (None, 0, {}), line


def test_stream_requests_logged_once_with_duration(server, fake):
    c = server.client
    fake.script(default={"reply_words": 4, "gap_ms": 150})
    resp, sse = stream_v1(c, {"message": "s", "session_id": "log-st1"}, headers={"X-Request-Id": "log-stream-v1"})
    assert sse.names()[-1] == "done"
    line = _one_log(server, "log-stream-v1")
    assert line["status"] == 200 and line["path"] == "/v1/chat/stream" and line["session"] == "log-st1"
    assert line["duration_ms"] >= 400, line
    with c.stream("POST", "/chat-stream", json={"message": "s", "session_id": "log-st2"},
                  headers={"X-Request-Id": "log-stream-seed"}) as r:
        r.read()
    line = _one_log(server, "log-stream-seed")
    assert line["status"] == 200 and line["path"] == "/chat-stream" and line["session"] == "log-st2"


def test_exact_count_on_fresh_server(chatd):
    s = chatd()
    n = 7
    for i in range(n):
        s.client.get("/healthz", headers={"X-Request-Id": f"cnt-{i}"})
    s.client.post("/v1/chat", json={"message": "x", "session_id": "cnt"}, headers={"X-Request-Id": "cnt-chat"})
    s.wait_request_log("cnt-chat")
    time.sleep(0.3)
    ids = [o["request_id"] for o in s.request_logs()]
    assert sorted(ids) == sorted([f"cnt-{i}" for i in range(n)] + ["cnt-chat"]), ids


def test_warn_level_has_no_request_lines_but_counts_them(chatd):
    s = chatd({"LOG_LEVEL": "warn"})
    for i in range(5):
        assert s.client.get("/healthz", headers={"X-Request-Id": f"quiet-{i}"}).status_code == 200
    r = s.client.post("/v1/chat", json={"message": "x", "session_id": "quiet"})
    assert r.status_code == 200, r.text
    text = s.client.get("/metrics").text
    m = re.search(r'chatd_http_requests_total\{route="/healthz",method="GET",status="200"\} ([0-9]+)', text)
    assert m and int(m.group(1)) == 5, text[:2000]
    time.sleep(0.3)
    assert s.request_logs() == [], s.request_logs()[:3]


def test_every_stderr_line_is_json(server):
    server.client.get("/healthz")
    lines = [ln for ln in server.log_lines() if ln.strip()]
    assert lines
    bad = []
    for ln in lines:
        try:
            obj = json.loads(ln)
            if not isinstance(obj, dict):
                bad.append(ln)
        except ValueError:
            bad.append(ln)
    assert not bad, bad[:5]


def test_api_key_never_in_logs_or_responses(server, fake):
    c = server.client
    bodies = []
    # Successful turns, streamed and not.
    bodies.append(c.post("/v1/chat", json={"message": "k1", "session_id": "log-key"}).text)
    resp, sse = stream_v1(c, {"message": "k2", "session_id": "log-key"})
    bodies.append(sse.raw.decode())
    resp, chunks = stream_seed(c, {"message": "k3", "session_id": "log-key"})
    bodies.append(b"".join(ch for ch, _ in chunks).decode())
    # Provider errors, including ones whose message echoes the key.
    for scen in ({"status": 401}, {"status": 403},
                 {"status": 401, "error_message": f"invalid x-api-key: {API_KEY}"},
                 {"status": 400, "error_message": f"bad request for key {API_KEY}"},
                 {"status": 500, "error_message": f"oops {API_KEY}"}):
        fake.script(queue=[scen])
        r = c.post("/v1/chat", json={"message": "err", "session_id": "log-key-err"})
        assert r.status_code >= 400
        bodies.append(r.text)
        fake.script(queue=[scen])
        r = c.post("/chat", json={"message": "err", "session_id": "log-key-err"})
        bodies.append(r.text)
        fake.script(queue=[scen])
        resp, sse = stream_v1(c, {"message": "err", "session_id": "log-key-err"})
        bodies.append(sse.raw.decode() if sse else resp.text)
    # Mid-stream error after deltas (the seed stream appends the error text).
    fake.script(queue=[{"fault": "midstream_error", "after": 1, "error_message": f"x {API_KEY}"}])
    resp, chunks = stream_seed(c, {"message": "err", "session_id": "log-key-err2"})
    bodies.append(b"".join(ch for ch, _ in chunks).decode())
    # Operations endpoints.
    for path in ("/v1/stats", "/stats", "/readyz", "/v1/sessions", "/v1/sessions/log-key"):
        bodies.append(c.get(path).text)
    assert len(fake.requests()) >= 10
    time.sleep(0.3)
    for b in bodies:
        assert SECRET_PART not in b, b
    leaked = [ln for ln in server.log_lines() if SECRET_PART in ln]
    assert not leaked, leaked[:3]
