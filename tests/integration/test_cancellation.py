"""
test_cancellation.py: a client that goes away aborts the provider call at once.

Matrix: endpoint (/v1/chat/stream, /chat-stream, /v1/chat, /chat) x phase
(before the first token, mid-stream, during a non-streaming call) x
CANCEL_POLICY (keep, drop). The client is a raw socket, so the instant it closes
is known; the fake provider stamps when it saw chatd close the upstream
connection (outcome client_closed, finished_at_ms). Checked for every case:
- the provider transfer was aborted within 100 ms of the client closing
  (the latencies are collected and their max/median printed at the end);
- the turn lock is released: an immediate next turn on the session is a 200;
- the history is well-formed: keep + mid-stream stores the user message and the
  partial reply marked "incomplete"; before the first token, or with drop,
  nothing is stored; the next turn sends alternating history upstream.
"""
import json
import time
import uuid

import pytest

from helpers import directive, echo
from reliability import (assert_alternating_upstream, assert_well_formed, close_now, dechunk,
                         fake_clock_offset, messages, provider_requests, raw_request, read_until,
                         report, split_head, sse_of, summary, wait_provider)

CANCEL_LIMIT_MS = 100.0
REPLY_WORDS = 60
FULL_REPLY = " ".join(f"w{i}" for i in range(1, REPLY_WORDS + 1))

_latencies = []


@pytest.fixture(scope="module", autouse=True)
def _latency_report(request):
    yield
    report(request, summary("cancellation latency (client close -> provider abort seen at the fake)",
                            _latencies))


@pytest.fixture(scope="module")
def servers(chatd_module):
    # keep is the default: the keep server does not set CANCEL_POLICY at all.
    return {"keep": chatd_module(), "drop": chatd_module({"CANCEL_POLICY": "drop"})}


ENDPOINTS = {
    "v1_stream": "/v1/chat/stream",
    "seed_stream": "/chat-stream",
    "v1_chat": "/v1/chat",
    "seed_chat": "/chat",
}
CASES = [(ep, ph) for ep in ("v1_stream", "seed_stream") for ph in ("before_first_token", "mid_stream")] + \
        [(ep, "during_call") for ep in ("v1_chat", "seed_chat")]


def _find(reqs, marker):
    return [q for q in reqs if marker in json.dumps(q["body"]["messages"][-1]["content"])]


def _received_text(endpoint, raw):
    """What the client got of the reply before it closed."""
    if not raw:
        return ""
    if endpoint == "v1_stream":
        return sse_of(raw).deltas_text()
    _, _, body = split_head(raw)
    data, _ = dechunk(body)
    return data.decode("utf-8", "replace")


@pytest.mark.parametrize("policy", ["keep", "drop"])
@pytest.mark.parametrize("endpoint,phase", CASES)
def test_disconnect(servers, fake, endpoint, phase, policy):
    srv = servers[policy]
    c = srv.client
    sid = f"cancel-{endpoint}-{phase}-{policy}-{uuid.uuid4().hex[:8]}"

    # One complete turn first, so the history is not empty and must stay intact.
    first = c.post("/v1/chat", json={"session_id": sid, "message": "first"})
    assert first.status_code == 200, first.text

    offset = fake_clock_offset(fake)
    marker = uuid.uuid4().hex
    if phase == "mid_stream":
        scen = {"reply_words": REPLY_WORDS, "gap_ms": 150}
    else:
        scen = {"ttft_ms": 8000, "reply_words": REPLY_WORDS}
    msg = f"cancel me {marker} {directive(scen)}"
    sock = raw_request(srv.port, "POST", ENDPOINTS[endpoint], {"session_id": sid, "message": msg})
    raw = b""
    try:
        reqs = wait_provider(fake, lambda rs: _find(rs, marker), timeout=5)
        assert _find(reqs, marker), "the provider call never started"
        if phase == "mid_stream":
            if endpoint == "v1_stream":
                raw = read_until(sock, lambda b: sse_of(b).names().count("delta") >= 3 if b"\r\n\r\n" in b
                                 else False)
            else:
                raw = read_until(sock, lambda b: b"\r\n\r\n" in b and
                                 dechunk(split_head(b)[2])[0].count(b" ") >= 3)
        elif endpoint == "v1_stream":
            # The start event is sent before the first token; then the provider is silent.
            raw = read_until(sock, lambda b: b"event: start" in b)
            time.sleep(0.1)
        else:
            time.sleep(0.15)  # well inside the provider's 8 s wait
    finally:
        t_close = close_now(sock)

    reqs = wait_provider(fake, lambda rs: _find(rs, marker) and _find(rs, marker)[0]["outcome"] is not None,
                         timeout=3)
    up = _find(reqs, marker)[0]
    assert up["outcome"] == "client_closed", up
    latency = up["finished_at_ms"] - offset - t_close
    _latencies.append(latency)
    assert -5.0 <= latency <= CANCEL_LIMIT_MS, f"provider abort seen {latency:.1f} ms after the client closed"

    # The lock is released: the next turn runs at once.
    nxt = c.post("/v1/chat", json={"session_id": sid, "message": "after the cancel"})
    assert nxt.status_code == 200, nxt.text
    assert nxt.json()["response"] == echo("after the cancel")

    msgs = assert_well_formed(c, sid)
    contents = [(m["role"], m["content"], m["status"]) for m in msgs]
    received = _received_text(endpoint, raw)
    if policy == "keep" and phase == "mid_stream":
        assert len(msgs) == 6, contents
        assert msgs[2]["role"] == "user" and msgs[2]["content"] == msg, contents
        partial = msgs[3]
        assert partial["role"] == "assistant" and partial["status"] == "incomplete", partial
        # What the client saw is a prefix of what was stored, which is a prefix of the reply.
        assert partial["content"].startswith(received), (partial["content"], received)
        assert FULL_REPLY.startswith(partial["content"]), partial["content"]
        assert len(received) >= len("w1 w2 w3"), received
        assert msgs[4]["status"] == "complete" and msgs[5]["status"] == "complete"
    else:
        # Nothing of the cancelled turn is stored.
        assert [m["content"] for m in msgs] == ["first", echo("first"), "after the cancel",
                                                echo("after the cancel")], contents
    assert [m["status"] for m in msgs if m["role"] == "user"] == ["complete"] * (len(msgs) // 2)

    # The turn after the cancel sent well-formed alternating history upstream.
    last = [q for q in provider_requests(fake) if "after the cancel" in json.dumps(q["body"]["messages"][-1])]
    assert len(last) == 1, last
    body = last[0]["body"]
    assert_alternating_upstream(body)
    texts = [m["content"] if isinstance(m["content"], str) else "".join(b["text"] for b in m["content"])
             for m in body["messages"]]
    if policy == "keep" and phase == "mid_stream":
        assert texts == ["first", echo("first"), msg, msgs[3]["content"], "after the cancel"], texts
    else:
        assert texts == ["first", echo("first"), "after the cancel"], texts


@pytest.mark.parametrize("endpoint", ["v1_stream", "v1_chat"])
def test_disconnect_on_new_session_leaves_no_session(servers, fake, endpoint):
    """A cancelled first turn (before any token) does not create the session."""
    srv = servers["keep"]
    sid = f"cancel-new-{endpoint}-{uuid.uuid4().hex[:8]}"
    marker = uuid.uuid4().hex
    sock = raw_request(srv.port, "POST", ENDPOINTS[endpoint],
                       {"session_id": sid, "message": f"{marker} {directive({'ttft_ms': 8000})}"})
    try:
        assert _find(wait_provider(fake, lambda rs: _find(rs, marker)), marker)
        time.sleep(0.1)
    finally:
        close_now(sock)
    reqs = wait_provider(fake, lambda rs: _find(rs, marker)[0]["outcome"] is not None, timeout=3)
    assert _find(reqs, marker)[0]["outcome"] == "client_closed"
    r = srv.client.post("/v1/chat", json={"session_id": sid, "message": "hello"})
    assert r.status_code == 200, r.text
    assert r.json()["turn_count"] == 1, r.json()
    assert [m["content"] for m in messages(srv.client, sid)] == ["hello", echo("hello")]


def test_cancellations_counted_in_metrics(servers, fake):
    """The metrics tell cancellations apart (chatd_turns_cancelled_total)."""
    srv = servers["drop"]
    before = srv.client.get("/metrics").text
    marker = uuid.uuid4().hex
    sock = raw_request(srv.port, "POST", "/v1/chat",
                       {"session_id": f"m-{marker}", "message": f"{marker} {directive({'ttft_ms': 8000})}"})
    try:
        assert _find(wait_provider(fake, lambda rs: _find(rs, marker)), marker)
    finally:
        close_now(sock)
    wait_provider(fake, lambda rs: _find(rs, marker)[0]["outcome"] is not None, timeout=3)

    def count(text):
        n = 0.0
        for line in text.splitlines():
            if line.startswith("chatd_turns_cancelled_total"):
                n += float(line.rsplit(" ", 1)[1])
        return n

    deadline = time.monotonic() + 2
    while count(srv.client.get("/metrics").text) < count(before) + 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert count(srv.client.get("/metrics").text) == count(before) + 1
