"""
Edge cases found in review: text streams during long provider silence, another
key's session while its owner's turn runs, error messages that a byte-limited
buffer would cut inside a UTF-8 character, HTTP/1.0 keep-alive streams, and a
fallback list whose first entry is not configured.
"""
import json
import os
import socket
import tempfile
import threading
import time

from helpers import directive, echo
from test_guard import bearer, create_key
import pytest


@pytest.fixture(scope="module")
def c(chatd_module):
    return chatd_module({}).client


def test_text_stream_survives_provider_silence_longer_than_idle_timeout(chatd_module):
    s = chatd_module({"IDLE_TIMEOUT": "2s", "HEARTBEAT_INTERVAL": "1s"})
    body = {"message": directive({"reply_words": 3, "gap_ms": 3000}) + " slow", "session_id": "edge-text"}
    with s.client.stream("POST", "/chat-stream", json=body, timeout=20) as r:
        text = b"".join(r.iter_raw()).decode()
    assert r.status_code == 200
    assert text == "w1 w2 w3", text
    assert s.client.get("/history/edge-text").json()["turn_count"] == 1


def test_foreign_key_gets_404_not_409_while_the_owner_turn_runs(chatd, fake):
    s = chatd({"AUTH_MODE": "keys"})
    _, owner = create_key(s, "owner")
    _, other = create_key(s, "other")
    assert s.client.post("/v1/chat", json={"message": "one", "session_id": "edge-own"},
                         headers=bearer(owner)).status_code == 200
    out = {}
    slow = directive({"ttft_ms": 1500}) + " two"
    t = threading.Thread(target=lambda: out.setdefault("r", s.client.post(
        "/v1/chat", json={"message": slow, "session_id": "edge-own"}, headers=bearer(owner), timeout=20)))
    t.start()
    time.sleep(0.4)
    for _ in range(5):
        r = s.client.post("/v1/chat", json={"message": "x", "session_id": "edge-own"}, headers=bearer(other))
        assert r.status_code == 404, r.text
    t.join(20)
    assert out["r"].status_code == 200, out["r"].text  # the owner's turn was not disturbed
    assert out["r"].json()["turn_count"] == 2


def test_long_non_ascii_error_messages_stay_json(c):
    model = "a" + "\u00e9" * 600
    r = c.post("/v1/chat", json={"message": "x", "model": model})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and "unknown model" in err["message"]
    r = c.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["message"]


def test_http10_keep_alive_stream_is_framed_by_connection_close(c):
    port = int(c.base_url.port)
    body = json.dumps({"message": "old client", "session_id": "edge-http10"}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/stream HTTP/1.0\r\nConnection: keep-alive\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        raw = b""
        while True:
            d = sock.recv(65536)
            if not d:
                break
            raw += d
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"Content-Length: 0" not in head, head
    assert b"event: done" in rest, raw[-300:]


def test_fallback_skips_an_unconfigured_model(chatd, fake):
    tmp = tempfile.mkdtemp(prefix="chatd-edge-")
    path = os.path.join(tmp, "models.json")
    with open(path, "w") as f:
        json.dump({"models": [{"name": "primary", "provider": "anthropic", "model_id": "p-1",
                               "context_window": 200000, "max_output": 4096,
                               "fallbacks": ["gpt-4o", "claude-haiku-4-5"]}]}, f)
    s = chatd({"MODELS_FILE": path, "CHAT_MODEL": "primary"})  # gpt-4o: no OPENAI_API_KEY
    fake.script(queue=[{"status": 529}])
    r = s.client.post("/v1/chat", json={"message": "hello", "session_id": "edge-fb"})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "claude-haiku-4-5"
    assert r.json()["response"] == echo("hello")
    assert [q["body"]["model"] for q in fake.requests()] == ["p-1", "claude-haiku-4-5"]
