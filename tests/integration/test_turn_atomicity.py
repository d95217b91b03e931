"""
test_turn_atomicity.py: a turn is all or nothing. Provider failures leave the
history exactly as it was; one turn at a time per session (409); concurrent
sessions run in parallel; history survives restarts; client disconnects and
graceful shutdown.
"""
import signal
import threading
import time

import pytest

from helpers import assert_seed_detail, assert_v1_error, echo, stream_seed, stream_v1


@pytest.fixture(scope="module")
def server(chatd_module):
    return chatd_module()


@pytest.fixture
def c(server):
    return server.client


def _snapshot(c, sid):
    h = c.get(f"/history/{sid}")
    s = c.get(f"/v1/sessions/{sid}")
    m = c.get(f"/v1/sessions/{sid}/messages")
    return (h.status_code, h.json(), s.status_code, s.json(), m.status_code, m.json())


STATUS_FAILS = [("status500", {"status": 500}), ("status529", {"status": 529})]
STREAM_FAULTS = [("truncate", {"fault": "truncate", "after": 2}),
                 ("reset", {"fault": "reset", "after": 2})]
MIDSTREAM = [("midstream_error", {"fault": "midstream_error", "after": 2})]
CASES = ([("v1_stream", n, s) for n, s in STATUS_FAILS + STREAM_FAULTS + MIDSTREAM]
         + [("seed_stream", n, s) for n, s in STATUS_FAILS + STREAM_FAULTS + MIDSTREAM]
         + [("v1_chat", n, s) for n, s in STATUS_FAILS + STREAM_FAULTS]
         + [("seed_chat", n, s) for n, s in STATUS_FAILS + STREAM_FAULTS])


def _turn(c, endpoint, sid, message):
    """Runs one turn; returns (ok: bool, info) after checking the failure shape."""
    body = {"message": message, "session_id": sid}
    if endpoint == "v1_chat":
        r = c.post("/v1/chat", json=body)
        if r.status_code == 200:
            return True, r.json()
        assert r.status_code >= 500, r.text
        assert_v1_error(r, r.status_code, r.json()["error"]["type"])
        return False, r
    if endpoint == "seed_chat":
        r = c.post("/chat", json=body)
        if r.status_code == 200:
            return True, r.json()
        assert_seed_detail(r, r.status_code)
        assert r.status_code >= 500
        return False, r
    if endpoint == "v1_stream":
        resp, sse = stream_v1(c, body)
        if sse is None:
            assert resp.status_code >= 500, resp.text
            assert_v1_error(resp, resp.status_code, resp.json()["error"]["type"])
            return False, resp
        names = sse.names()
        assert names[0] == "start", names
        assert names.count("done") + names.count("error") == 1, names
        if names[-1] == "done":
            return True, sse
        assert names[-1] == "error", names
        err = sse.data("error")[0]
        assert {"type", "message", "request_id"} <= set(err), err
        return False, sse
    if endpoint == "seed_stream":
        resp, chunks = stream_seed(c, body)
        text = b"".join(ch for ch, _ in chunks).decode("utf-8", "replace")
        if resp.status_code != 200:
            assert resp.status_code >= 500
            return False, resp
        if "\nError: " in text:
            return False, text
        return True, text
    raise AssertionError(endpoint)


@pytest.mark.parametrize("endpoint,name,scenario", CASES, ids=[f"{e}-{n}" for e, n, _ in CASES])
def test_failed_turn_leaves_history_unchanged(c, fake, endpoint, name, scenario):
    sid = f"atom-{endpoint}-{name}"
    ok, _ = _turn(c, endpoint, sid, "first")
    assert ok
    before = _snapshot(c, sid)
    assert before[1]["turn_count"] == 1
    fake.reset()
    if name == "reset" and endpoint in ("v1_chat", "seed_chat"):
        # A non-streaming request whose connection dies before any response byte
        # may be resent once by libcurl itself (the stale keep-alive case, see
        # docs/API.md): fail every attempt.
        fake.script(default=scenario)
    else:
        fake.script(queue=[scenario])
    ok, info = _turn(c, endpoint, sid, "doomed")
    assert not ok, f"turn with {scenario} succeeded: {info}"
    if name in ("truncate", "reset", "midstream_error") and endpoint == "seed_stream":
        # The first deltas reached the client before the failure: the template's
        # "\nError: <message>" tail follows them.
        assert isinstance(info, str) and info.startswith("Hello! You ") and "\nError: " in info, info
    after = _snapshot(c, sid)
    assert after == before, "a failed turn changed the stored conversation"
    # The next turn works and carries no dangling user message.
    fake.reset()
    ok, _ = _turn(c, endpoint, sid, "second")
    assert ok
    h = c.get(f"/history/{sid}").json()
    assert h["turn_count"] == 2
    assert h["messages"] == [{"role": "user", "content": "first"},
                             {"role": "assistant", "content": echo("first")},
                             {"role": "user", "content": "second"},
                             {"role": "assistant", "content": echo("second")}]
    assert fake.requests()[-1]["body"]["messages"] == h["messages"][:3]


@pytest.mark.parametrize("endpoint", ["v1_chat", "v1_stream"])
def test_failure_after_retries_leaves_history_unchanged(chatd_module, fake, endpoint):
    s = chatd_module({"PROVIDER_MAX_RETRIES": "2"})
    c = s.client
    sid = f"atom-retries-{endpoint}"
    assert _turn(c, endpoint, sid, "first")[0]
    before = _snapshot(c, sid)
    fake.reset()
    fake.script(queue=[{"status": 500}] * 3)
    ok, _ = _turn(c, endpoint, sid, "doomed")
    assert not ok
    assert len(fake.requests()) == 3
    assert _snapshot(c, sid) == before
    fake.reset()
    assert _turn(c, endpoint, sid, "second")[0]
    assert [m["content"] for m in fake.requests()[0]["body"]["messages"]] == ["first", echo("first"), "second"]


def test_failed_first_turn_creates_no_session(c, fake):
    sid = "atom-first-fails"
    fake.script(queue=[{"status": 500}])
    assert c.post("/v1/chat", json={"message": "x", "session_id": sid}).status_code == 502
    assert c.get(f"/history/{sid}").status_code == 404
    assert c.get(f"/v1/sessions/{sid}").status_code == 404
    assert sid not in [s["session_id"] for s in c.get("/sessions").json()["sessions"]]
    r = c.post("/v1/chat", json={"message": "y", "session_id": sid})
    assert r.status_code == 200 and r.json()["turn_count"] == 1


# ------------------------------------------------------------ concurrency


def _bg(fn):
    out = {}

    def run():
        try:
            out["r"] = fn()
        except Exception as e:  # surfaced by the test
            out["e"] = e
    t = threading.Thread(target=run)
    t.start()
    return t, out


@pytest.mark.parametrize("second", ["v1_chat", "v1_stream", "seed_chat", "seed_stream"])
def test_same_session_busy_409(server, fake, second):
    c = server.client
    sid = f"atom-busy-{second}"
    fake.script(queue=[{"ttft_ms": 1500}])
    t, out = _bg(lambda: c.post("/v1/chat", json={"message": "slow", "session_id": sid}))
    reqs = fake.wait_requests(1)
    assert len(reqs) == 1, "first turn never reached the provider"
    body = {"message": "fast", "session_id": sid}
    if second == "v1_chat":
        assert_v1_error(c.post("/v1/chat", json=body), 409, "session_busy")
    elif second == "v1_stream":
        resp, sse = stream_v1(c, body)
        assert sse is None, "409 busy must be a JSON error, not a stream"
        assert_v1_error(resp, 409, "session_busy")
    elif second == "seed_chat":
        assert_seed_detail(c.post("/chat", json=body), 409)
    else:
        with c.stream("POST", "/chat-stream", json=body) as resp:
            resp.read()
        assert_seed_detail(resp, 409)
    t.join(timeout=15)
    assert "e" not in out, out.get("e")
    r = out["r"]
    assert r.status_code == 200, r.text
    assert r.json()["turn_count"] == 1
    assert len(fake.requests()) == 1
    h = c.get(f"/history/{sid}").json()
    assert [m["content"] for m in h["messages"]] == ["slow", echo("slow")]
    # The lock is released after the turn.
    assert c.post("/v1/chat", json=body).status_code == 200


def test_different_sessions_run_concurrently(server, fake):
    c = server.client
    fake.script(default={"ttft_ms": 1000})
    n = 4
    t0 = time.monotonic()
    threads = [_bg(lambda i=i: c.post("/v1/chat", json={"message": f"p{i}", "session_id": f"atom-par-{i}"}))
               for i in range(n)]
    for t, _ in threads:
        t.join(timeout=15)
    elapsed = time.monotonic() - t0
    for i, (_, out) in enumerate(threads):
        assert "e" not in out, out.get("e")
        assert out["r"].status_code == 200, out["r"].text
        assert out["r"].json()["response"] == echo(f"p{i}")
    assert elapsed < 1.9, f"{n} turns of 1 s on distinct sessions took {elapsed:.2f} s"


def test_streams_on_different_sessions_concurrent(server, fake):
    c = server.client
    fake.script(default={"reply_words": 5, "gap_ms": 200})
    t0 = time.monotonic()
    threads = [_bg(lambda i=i: stream_v1(c, {"message": "x", "session_id": f"atom-spar-{i}"})) for i in range(3)]
    for t, _ in threads:
        t.join(timeout=15)
    elapsed = time.monotonic() - t0
    for _, out in threads:
        assert "e" not in out, out.get("e")
        resp, sse = out["r"]
        assert sse.names()[-1] == "done" and sse.deltas_text() == "w1 w2 w3 w4 w5"
    assert elapsed < 1.8, elapsed


# ------------------------------------------------------- restart, disconnect


def test_history_survives_restart(chatd, fake):
    s = chatd()
    sid = "atom-restart"
    for m in ("one", "two"):
        assert s.client.post("/chat", json={"message": m, "session_id": sid}).status_code == 200
    before = _snapshot(s.client, sid)
    stats_before = s.client.get("/v1/stats").json()
    s.restart()
    assert _snapshot(s.client, sid) == before
    assert s.client.get("/v1/stats").json() == stats_before
    fake.reset()
    r = s.client.post("/chat", json={"message": "three", "session_id": sid})
    assert r.status_code == 200 and r.json()["turn_count"] == 3
    assert [m["content"] for m in fake.requests()[0]["body"]["messages"]] == [
        "one", echo("one"), "two", echo("two"), "three"]
    s.restart()
    assert s.client.get(f"/history/{sid}").json()["turn_count"] == 3


def test_client_disconnect_aborts_provider_and_releases_lock(server, fake):
    c = server.client
    sid = "atom-disconnect"
    fake.script(queue=[{"reply_words": 40, "gap_ms": 150}])
    full = " ".join(f"w{i}" for i in range(1, 41))
    got = ""
    with c.stream("POST", "/v1/chat/stream", json={"message": "long", "session_id": sid}) as resp:
        assert resp.status_code == 200
        for chunk in resp.iter_raw():
            got += chunk.decode()
            if got.count("event: delta") >= 2:
                break
    # Closing the response closed the connection; the provider call must stop.
    deadline = time.monotonic() + 3
    outcome = None
    while time.monotonic() < deadline:
        reqs = fake.requests()
        outcome = reqs[0].get("outcome") if reqs else None
        if outcome == "client_closed":
            break
        time.sleep(0.05)
    assert outcome == "client_closed", fake.requests()
    # The session's lock is released: a new turn goes through.
    deadline = time.monotonic() + 3
    while True:
        r = c.post("/v1/chat", json={"message": "next", "session_id": sid})
        if r.status_code != 409 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert r.status_code == 200, r.text
    msgs = c.get(f"/v1/sessions/{sid}/messages").json()["data"]
    # Default CANCEL_POLICY=keep: the partial reply is stored, marked incomplete.
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"], msgs
    assert msgs[0]["content"] == "long"
    partial = msgs[1]
    assert partial["status"] == "incomplete"
    assert partial["content"].startswith("w1 w2") and full.startswith(partial["content"])
    assert partial["content"] != full
    assert msgs[3]["status"] == "complete"


def test_graceful_shutdown_drains_running_stream(chatd, fake):
    s = chatd()
    c = s.client
    sid = "atom-drain"
    fake.script(queue=[{"ttft_ms": 1200, "reply_words": 3}])
    t, out = _bg(lambda: stream_v1(c, {"message": "drain", "session_id": sid}))
    assert len(fake.wait_requests(1)) == 1
    s.proc.send_signal(signal.SIGTERM)
    t.join(timeout=15)
    assert "e" not in out, out.get("e")
    resp, sse = out["r"]
    assert sse.names()[-1] == "done", sse.raw
    assert sse.deltas_text() == "w1 w2 w3"
    assert s.wait_exit() == 0
    s.start()
    assert s.client.get(f"/history/{sid}").json()["turn_count"] == 1
