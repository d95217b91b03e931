"""
When /v1/chat/completions (stream: true) opens its SSE stream: at the first
token, so that an early provider failure keeps its HTTP status; or, when the
provider is silent for a heartbeat interval, at once, with ": ping" heartbeats,
so that proxies do not cut the connection.
"""
import json

from helpers import directive


def _raw_stream(c, body):
    with c.stream("POST", "/v1/chat/completions", json=body, timeout=20) as r:
        return r.status_code, r.headers, b"".join(r.iter_raw()).decode()


def test_silent_provider_starts_the_stream_with_heartbeats(chatd_module):
    s = chatd_module({"HEARTBEAT_INTERVAL": "1s", "IDLE_TIMEOUT": "3s"})
    msg = directive({"ttft_ms": 2600}) + " slow"
    status, headers, text = _raw_stream(s.client, {"messages": [{"role": "user", "content": msg}], "stream": True})
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    events = [e for e in text.split("\n\n") if e]
    # The role chunk, then at least one heartbeat, before any content.
    first = json.loads(events[0][len("data: "):])
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}, events[0]
    first_content = next(i for i, e in enumerate(events) if e.startswith("data: {") and '"content":"Hello' in e)
    assert any(e.startswith(": ping") for e in events[1:first_content]), events[:first_content + 1]
    assert events[-1] == "data: [DONE]"


def test_early_failure_keeps_its_status(chatd_module, fake):
    s = chatd_module({"HEARTBEAT_INTERVAL": "1s", "IDLE_TIMEOUT": "3s"})
    fake.script(queue=[{"status": 529}])
    status, headers, text = _raw_stream(s.client, {"messages": [{"role": "user", "content": "x"}], "stream": True})
    assert status == 503, text
    err = json.loads(text)["error"]
    assert err["code"] == "provider_overloaded" and err["type"] == "server_error", err
