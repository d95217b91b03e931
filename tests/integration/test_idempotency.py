"""
test_idempotency.py: Idempotency-Key on POST /v1/chat and /v1/chat/stream.

A repeated key with the same body replays the stored result (header
Idempotent-Replayed: true) without calling the provider; a different body is
a 422; a repeat while the first still runs is a 409; a failed first attempt
frees the key; a stream replays as start/delta/done; the record survives
kill -9 (it commits in the turn's transaction); a request whose client went
away before the reply was complete is not "the result" of the key.
"""
import threading
import time
import uuid

import pytest

from helpers import assert_v1_error, directive, echo, stream_v1
from reliability import (kill9, messages, provider_requests, raw_request, read_until, sse_of,
                         wait_provider)


@pytest.fixture(scope="module")
def server(chatd_module):
    return chatd_module()


def _key():
    return "idem-" + uuid.uuid4().hex


def _without_request_id(body):
    return {k: v for k, v in body.items() if k != "request_id"}


def test_repeat_replays_without_calling_the_provider(server, fake):
    key, sid = _key(), f"i-{uuid.uuid4().hex[:8]}"
    body = {"session_id": sid, "message": "once"}
    r1 = server.client.post("/v1/chat", json=body, headers={"Idempotency-Key": key})
    assert r1.status_code == 200, r1.text
    assert "idempotent-replayed" not in r1.headers
    for _ in range(2):
        r2 = server.client.post("/v1/chat", json=body, headers={"Idempotency-Key": key})
        assert r2.status_code == 200, r2.text
        assert r2.headers.get("idempotent-replayed") == "true"
        assert _without_request_id(r2.json()) == _without_request_id(r1.json())
        assert r2.json()["request_id"] == r2.headers["x-request-id"]
    assert len(provider_requests(fake)) == 1
    assert [m["content"] for m in messages(server.client, sid)] == ["once", echo("once")]
    # Without the key the same body is a new turn.
    r3 = server.client.post("/v1/chat", json=body)
    assert r3.status_code == 200 and r3.json()["turn_count"] == 2
    assert len(provider_requests(fake)) == 2


def test_different_body_is_422(server, fake):
    key, sid = _key(), f"i-{uuid.uuid4().hex[:8]}"
    assert server.client.post("/v1/chat", json={"session_id": sid, "message": "a"},
                              headers={"Idempotency-Key": key}).status_code == 200
    r = server.client.post("/v1/chat", json={"session_id": sid, "message": "b"},
                           headers={"Idempotency-Key": key})
    assert_v1_error(r, 422, "idempotency_key_reused")
    assert len(provider_requests(fake)) == 1
    assert len(messages(server.client, sid)) == 2


@pytest.mark.parametrize("second", ["/v1/chat", "/v1/chat/stream"])
def test_concurrent_repeat_is_409(server, fake, second):
    key, sid = _key(), f"i-{uuid.uuid4().hex[:8]}"
    body = {"session_id": sid, "message": "slow " + directive({"ttft_ms": 1200})}
    out = {}
    t = threading.Thread(target=lambda: out.setdefault(
        "r", server.client.post("/v1/chat", json=body, headers={"Idempotency-Key": key})))
    t.start()
    try:
        assert wait_provider(fake, lambda rs: len(rs) == 1), "the first request never reached the provider"
        if second == "/v1/chat":
            r = server.client.post("/v1/chat", json=body, headers={"Idempotency-Key": key})
        else:
            r, sse = stream_v1(server.client, body, headers={"Idempotency-Key": key})
            assert sse is None
        assert_v1_error(r, 409, "idempotency_in_progress")
        assert r.headers.get("retry-after")
    finally:
        t.join(10)
    assert out["r"].status_code == 200, out["r"].text
    # Once the first finished, the repeat replays it.
    r = server.client.post("/v1/chat", json=body, headers={"Idempotency-Key": key})
    assert r.status_code == 200 and r.headers.get("idempotent-replayed") == "true"
    assert len(provider_requests(fake)) == 1


def test_failed_first_attempt_frees_the_key(server, fake):
    key, sid = _key(), f"i-{uuid.uuid4().hex[:8]}"
    body = {"session_id": sid, "message": "retry me"}
    fake.script(queue=[{"status": 500}])
    r1 = server.client.post("/v1/chat", json=body, headers={"Idempotency-Key": key})
    assert_v1_error(r1, 502, "provider_error")
    r2 = server.client.post("/v1/chat", json=body, headers={"Idempotency-Key": key})
    assert r2.status_code == 200, r2.text
    assert "idempotent-replayed" not in r2.headers
    assert r2.json()["response"] == echo("retry me")
    assert len(provider_requests(fake)) == 2
    r3 = server.client.post("/v1/chat", json=body, headers={"Idempotency-Key": key})
    assert r3.headers.get("idempotent-replayed") == "true"
    assert len(provider_requests(fake)) == 2


def test_stream_replay_delivers_start_delta_done(server, fake):
    key, sid = _key(), f"i-{uuid.uuid4().hex[:8]}"
    body = {"session_id": sid, "message": "stream me please"}
    resp1, sse1 = stream_v1(server.client, body, headers={"Idempotency-Key": key})
    assert sse1.names()[-1] == "done"
    resp2, sse2 = stream_v1(server.client, body, headers={"Idempotency-Key": key})
    assert resp2.status_code == 200
    assert resp2.headers.get("idempotent-replayed") == "true"
    assert resp2.headers["content-type"].startswith("text/event-stream")
    assert sse2.names()[0] == "start" and sse2.names()[-1] == "done" and "error" not in sse2.names()
    assert sse2.deltas_text() == sse1.deltas_text() == echo("stream me please")
    d1, d2 = sse1.data("done")[0], sse2.data("done")[0]
    assert _without_request_id(d1) == _without_request_id(d2)
    assert len(provider_requests(fake)) == 1
    assert len(messages(server.client, sid)) == 2


def test_replay_survives_kill_9(chatd, fake):
    srv = chatd()
    key, sid = _key(), "crash-idem"
    body = {"session_id": sid, "message": "durable"}
    r1 = srv.client.post("/v1/chat", json=body, headers={"Idempotency-Key": key})
    assert r1.status_code == 200, r1.text
    kill9(srv)  # right after the 200
    srv.start()
    r2 = srv.client.post("/v1/chat", json=body, headers={"Idempotency-Key": key})
    assert r2.status_code == 200, r2.text
    assert r2.headers.get("idempotent-replayed") == "true"
    assert _without_request_id(r2.json()) == _without_request_id(r1.json())
    assert len(provider_requests(fake)) == 1
    assert [m["content"] for m in messages(srv.client, sid)] == ["durable", echo("durable")]


def test_key_of_a_running_turn_killed_by_kill_9_is_usable_after_restart(chatd, fake):
    """A record left 'running' by a dead process does not block the key forever:
    it expires with the turn lock (LOCK_TTL)."""
    srv = chatd({"TURN_TIMEOUT": "1s", "LOCK_TTL": "2s"})
    key, sid = _key(), "crash-idem-running"
    body = {"session_id": sid, "message": "x"}
    fake.script(queue=[{"ttft_ms": 5000}])  # only the first call is slow
    sock = raw_request(srv.port, "POST", "/v1/chat", body, headers={"Idempotency-Key": key})
    try:
        assert wait_provider(fake, lambda rs: len(rs) == 1)
        kill9(srv)
    finally:
        sock.close()
    srv.start()
    r = srv.client.post("/v1/chat", json=body, headers={"Idempotency-Key": key})
    assert_v1_error(r, 409, "idempotency_in_progress")
    time.sleep(2.2)
    r = srv.client.post("/v1/chat", json=body, headers={"Idempotency-Key": key})
    assert r.status_code == 200, r.text
    assert "idempotent-replayed" not in r.headers
    assert r.json()["response"] == echo("x")
    assert len(provider_requests(fake)) == 2


@pytest.mark.parametrize("endpoint", ["/v1/chat/stream", "/v1/chat"])
def test_disconnected_request_is_not_replayed_as_a_result(server, fake, endpoint):
    """The client went away mid-reply and retries with the same key: it must get
    a complete reply, not a replay of the partial text as if it had succeeded."""
    key, sid = _key(), f"i-{uuid.uuid4().hex[:8]}"
    body = {"session_id": sid, "message": "long " + directive({"reply_words": 40, "gap_ms": 50})}
    sock = raw_request(server.port, "POST", endpoint, body, headers={"Idempotency-Key": key})
    try:
        if endpoint == "/v1/chat/stream":
            read_until(sock, lambda b: b"\r\n\r\n" in b and sse_of(b).names().count("delta") >= 3)
        else:
            assert wait_provider(fake, lambda rs: len(rs) == 1)
            time.sleep(0.3)
    finally:
        sock.close()
    wait_provider(fake, lambda rs: rs and rs[0]["outcome"] is not None)
    fake.script(default={"reply_words": 40})
    r = server.client.post("/v1/chat", json=body, headers={"Idempotency-Key": key})
    assert r.status_code == 200, r.text
    assert r.json()["response"] == " ".join(f"w{i}" for i in range(1, 41)), r.json()
    assert r.json()["stop_reason"] == "end_turn"
    msgs = messages(server.client, sid)
    assert msgs[-1]["status"] == "complete" and msgs[-1]["content"] == r.json()["response"]
