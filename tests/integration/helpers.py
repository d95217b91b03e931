"""
helpers.py: shared assertions and protocol helpers for the integration suite
(SSE parsing, error envelope checks, what the fake provider is expected to reply).
"""
import json
import math
import re
import time

# Distinctive so that test_logs can search for it anywhere in the logs.
API_KEY = "sk-ant-test-CANARY-9f2c1e7d5b3a"
REQ_ID_RE = re.compile(r"^req_[0-9a-fA-F]{24}$")
GEN_SESSION_RE = re.compile(r"^s_[0-9a-fA-F]{24}$")
SEED_TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?$")
V1_TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
USAGE_KEYS = {"input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"}
DEFAULT_MODEL = "claude-sonnet-4-6"
DEFAULT_SYSTEM = "You are a helpful AI assistant."


def echo(text):
    """The fake's default reply to a last user message `text` (no directive in it)."""
    return "Hello! You said: " + text


def expected_input_tokens(body):
    """The fake's usage.input_tokens for a request body: ceil(chars of system + messages / 4)."""
    n = 0
    system = body.get("system")
    if isinstance(system, str):
        n += len(system)
    for m in body["messages"]:
        n += len(m["content"]) if isinstance(m["content"], str) else sum(
            len(b.get("text", "")) for b in m["content"])
    return math.ceil(n / 4)


def assert_v1_error(resp, status, etype, message_contains=None):
    """Checks a /v1 error envelope and that error.request_id matches X-Request-Id."""
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert {"type", "message", "request_id"} <= set(err), err
    assert err["type"] == etype, err
    assert isinstance(err["message"], str) and err["message"], err
    rid = resp.headers.get("x-request-id")
    assert rid and err["request_id"] == rid, (rid, err)
    if message_contains is not None:
        assert message_contains in err["message"], err
    return err


def assert_seed_detail(resp, status):
    """Checks a seed error body {"detail": "<message>"} (a string, not a list)."""
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert set(body) == {"detail"}, body
    assert isinstance(body["detail"], str) and body["detail"], body
    return body["detail"]


class SSE:
    """A parsed text/event-stream response."""

    def __init__(self):
        self.events = []      # (event_name, data_dict_or_str, t_monotonic)
        self.comments = []    # (comment_text, t_monotonic)
        self.raw = b""

    def names(self):
        return [e[0] for e in self.events]

    def data(self, name):
        return [e[1] for e in self.events if e[0] == name]

    def deltas_text(self):
        return "".join(d["text"] for d in self.data("delta"))


def read_sse(resp):
    """Consumes a streaming httpx response and parses its SSE events (WHATWG rules)."""
    sse = SSE()
    buf = ""
    ev_name, data_lines = None, []
    decoder_buf = b""
    for chunk in resp.iter_raw():
        now = time.monotonic()
        sse.raw += chunk
        decoder_buf += chunk
        try:
            text = decoder_buf.decode("utf-8")
            decoder_buf = b""
        except UnicodeDecodeError:
            # A split multi-byte character: wait for the rest.
            continue
        buf += text
        while True:
            idx = min([i for i in (buf.find("\r"), buf.find("\n")) if i >= 0], default=-1)
            if idx < 0:
                break
            line = buf[:idx]
            if buf[idx] == "\r" and buf[idx + 1:idx + 2] == "\n":
                buf = buf[idx + 2:]
            else:
                buf = buf[idx + 1:]
            if line == "":
                if data_lines:
                    raw = "\n".join(data_lines)
                    try:
                        data = json.loads(raw)
                    except ValueError:
                        data = raw
                    sse.events.append((ev_name or "message", data, now))
                ev_name, data_lines = None, []
            elif line.startswith(":"):
                sse.comments.append((line[1:].lstrip(" "), now))
            else:
                field, _, value = line.partition(":")
                if value.startswith(" "):
                    value = value[1:]
                if field == "event":
                    ev_name = value
                elif field == "data":
                    data_lines.append(value)
    return sse


def stream_v1(client, body, headers=None):
    """POSTs /v1/chat/stream; returns (response, SSE or None). Non-SSE bodies are read."""
    with client.stream("POST", "/v1/chat/stream", json=body, headers=headers or {}) as resp:
        if resp.headers.get("content-type", "").startswith("text/event-stream"):
            return resp, read_sse(resp)
        resp.read()
        return resp, None


def stream_seed(client, body):
    """POSTs /chat-stream; returns (response, [(bytes, t_monotonic), ...])."""
    chunks = []
    with client.stream("POST", "/chat-stream", json=body) as resp:
        for c in resp.iter_raw():
            chunks.append((c, time.monotonic()))
    return resp, chunks


def directive(scenario):
    """An in-band scenario for the fake, to put in the last user message."""
    return "[[fake:" + json.dumps(scenario, separators=(",", ":")) + "]]"
