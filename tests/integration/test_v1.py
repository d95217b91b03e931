"""
test_v1.py: the versioned /v1 API: chat, SSE streaming, sessions, stats,
health, error envelope and X-Request-Id.
"""
import pytest

from helpers import (DEFAULT_MODEL, GEN_SESSION_RE, REQ_ID_RE, USAGE_KEYS, V1_TIME_RE,
                     assert_v1_error, echo, expected_input_tokens, stream_v1)


@pytest.fixture(scope="module")
def server(chatd_module):
    return chatd_module({"HEARTBEAT_INTERVAL": "1s"})


@pytest.fixture
def c(server):
    return server.client


def _usage_ok(u):
    assert set(u) == USAGE_KEYS, u
    assert all(type(v) is int for v in u.values()), u


# ----------------------------------------------------------------- /v1/chat


def test_chat_shape(c, fake):
    r = c.post("/v1/chat", json={"message": "Hello there", "session_id": "v1-chat-1"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    b = r.json()
    assert set(b) == {"id", "session_id", "model", "response", "stop_reason", "usage", "cost", "turn_count", "truncated_turns",
                      "created_at", "request_id", "content", "tool_calls", "stop_sequence"}, b
    # issue 13: the reply as canonical blocks, no tool calls, no stop sequence
    assert b["content"] == [{"type": "text", "text": b["response"]}] and b["tool_calls"] == [], b
    assert b["stop_sequence"] is None, b
    # Priced by the models table: claude-sonnet-4-6 at $3 / $15 per million tokens.
    u = b["usage"]
    micros = 3 * u["input_tokens"] + 15 * u["output_tokens"]
    assert b["cost"] == {"micros": micros, "usd": f"0.{micros:06d}"}, b["cost"]
    assert b["session_id"] == "v1-chat-1"
    assert b["model"] == DEFAULT_MODEL
    assert b["response"] == echo("Hello there")
    assert b["stop_reason"] == "end_turn"
    assert b["turn_count"] == 1
    assert V1_TIME_RE.match(b["created_at"]), b
    assert b["request_id"] == r.headers["x-request-id"]
    assert isinstance(b["id"], str) and b["id"].startswith("msg_")
    _usage_ok(b["usage"])
    up = fake.requests()
    assert len(up) == 1
    assert b["usage"]["input_tokens"] == expected_input_tokens(up[0]["body"])
    assert b["usage"]["output_tokens"] == len(b["response"].split(" "))
    # The id is the stored assistant message's id.
    msgs = c.get("/v1/sessions/v1-chat-1/messages").json()["data"]
    assert msgs[-1]["id"] == b["id"] and msgs[-1]["role"] == "assistant"

    r = c.post("/v1/chat", json={"message": "Again", "session_id": "v1-chat-1"})
    assert r.status_code == 200 and r.json()["turn_count"] == 2
    assert r.json()["id"] != b["id"]


def test_chat_generated_session_id(c):
    r = c.post("/v1/chat", json={"message": "no id"})
    assert r.status_code == 200, r.text
    sid = r.json()["session_id"]
    assert GEN_SESSION_RE.match(sid), sid
    assert r.json()["turn_count"] == 1
    r2 = c.post("/v1/chat", json={"message": "no id either"})
    assert r2.json()["session_id"] != sid
    s = c.get(f"/v1/sessions/{sid}")
    assert s.status_code == 200 and s.json()["turn_count"] == 1


def test_chat_model_and_max_tokens_override(c, fake):
    r = c.post("/v1/chat", json={"message": "m", "session_id": "v1-model-1",
                                 "model": "claude-haiku-4-5", "max_tokens": 77})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "claude-haiku-4-5"
    body = fake.requests()[-1]["body"]
    assert body["model"] == "claude-haiku-4-5"
    assert body["max_tokens"] == 77
    s = c.get("/v1/sessions/v1-model-1").json()
    assert s["model"] == "claude-haiku-4-5"
    msgs = c.get("/v1/sessions/v1-model-1/messages").json()["data"]
    assert msgs[1]["model"] == "claude-haiku-4-5"


def test_chat_stop_reason_and_usage_passthrough(c, fake):
    fake.script(default={"reply_words": 3, "stop_reason": "max_tokens",
                         "usage": {"cache_read_input_tokens": 11, "cache_creation_input_tokens": 5}})
    r = c.post("/v1/chat", json={"message": "m", "session_id": "v1-stop-1"})
    assert r.status_code == 200, r.text
    b = r.json()
    assert b["response"] == "w1 w2 w3"
    assert b["stop_reason"] == "max_tokens"
    assert b["usage"]["cache_read_input_tokens"] == 11
    assert b["usage"]["cache_creation_input_tokens"] == 5
    assert b["usage"]["output_tokens"] == 3


# ---------------------------------------------------------- /v1/chat/stream


def test_stream_headers_and_events(c, fake):
    resp, sse = stream_v1(c, {"message": "Stream me please", "session_id": "v1-stream-1"})
    assert resp.status_code == 200
    assert resp.headers["content-type"].lower().replace(" ", "") == "text/event-stream;charset=utf-8"
    assert resp.headers["cache-control"] == "no-cache"
    assert resp.headers["x-accel-buffering"] == "no"
    rid = resp.headers["x-request-id"]
    names = sse.names()
    assert names[0] == "start" and names[-1] == "done", names
    assert set(names[1:-1]) == {"delta"}, names
    start = sse.data("start")[0]
    assert start == {"session_id": "v1-stream-1", "model": DEFAULT_MODEL, "request_id": rid}
    expected = echo("Stream me please")
    assert sse.deltas_text() == expected
    assert len(sse.data("delta")) > 1
    done = sse.data("done")[0]
    assert {"id", "session_id", "model", "stop_reason", "usage", "turn_count"} <= set(done), done
    assert done["session_id"] == "v1-stream-1"
    assert done["model"] == DEFAULT_MODEL
    assert done["stop_reason"] == "end_turn"
    assert done["turn_count"] == 1
    _usage_ok(done["usage"])
    up = fake.requests()
    assert len(up) == 1
    assert done["usage"]["output_tokens"] == len(expected.split(" "))
    assert done["usage"]["input_tokens"] == expected_input_tokens(up[0]["body"])
    # done only after commit: the turn is visible right away.
    msgs = c.get("/v1/sessions/v1-stream-1/messages").json()["data"]
    assert [m["content"] for m in msgs] == ["Stream me please", expected]
    assert msgs[1]["id"] == done["id"]


def test_stream_deltas_arrive_incrementally(c, fake):
    fake.script(default={"reply_words": 5, "gap_ms": 200})
    resp, sse = stream_v1(c, {"message": "x", "session_id": "v1-stream-incr"})
    assert resp.status_code == 200
    deltas = [e for e in sse.events if e[0] == "delta"]
    assert "".join(e[1]["text"] for e in deltas) == "w1 w2 w3 w4 w5"
    assert deltas[-1][2] - deltas[0][2] > 0.5


def test_stream_utf8_split_and_crlf_upstream(c, fake):
    reply = "naïve café — 東京 🌸 ok"
    fake.script(default={"reply": reply, "split": True, "line_ending": "crlf", "ping": True})
    resp, sse = stream_v1(c, {"message": "u", "session_id": "v1-stream-utf8"})
    assert resp.status_code == 200
    assert sse.names()[-1] == "done", sse.names()
    assert sse.deltas_text() == reply
    msgs = c.get("/v1/sessions/v1-stream-utf8/messages").json()["data"]
    assert msgs[1]["content"] == reply


def test_stream_heartbeat_during_long_ttft(c, fake):
    fake.script(default={"ttft_ms": 2500, "reply_words": 2})
    resp, sse = stream_v1(c, {"message": "slow", "session_id": "v1-heartbeat-1"})
    assert resp.status_code == 200
    assert sse.names()[-1] == "done"
    first_delta_t = next(e[2] for e in sse.events if e[0] == "delta")
    pings = [t for text, t in sse.comments if text == "ping" and t < first_delta_t]
    assert len(pings) >= 2, sse.raw[:400]
    assert b"\n: ping\n" in sse.raw or sse.raw.startswith(b": ping\n")


def test_stream_generated_session_and_model(c, fake):
    resp, sse = stream_v1(c, {"message": "gen", "model": "claude-haiku-4-5", "max_tokens": 50})
    assert resp.status_code == 200
    start = sse.data("start")[0]
    assert GEN_SESSION_RE.match(start["session_id"])
    assert start["model"] == "claude-haiku-4-5"
    assert sse.data("done")[0]["session_id"] == start["session_id"]
    body = fake.requests()[-1]["body"]
    assert body["model"] == "claude-haiku-4-5" and body["max_tokens"] == 50 and body["stream"] is True


def test_stream_validation_error_is_json(c):
    resp, sse = stream_v1(c, {"session_id": "v1-stream-bad"})
    assert sse is None
    assert_v1_error(resp, 400, "invalid_request_error")


# ----------------------------------------------------------------- sessions


def test_sessions_cursor_pagination(chatd):
    s = chatd()
    ids = [f"pg-{i:02d}" for i in range(25)]
    for sid in ids:
        assert s.client.post("/v1/chat", json={"message": "hi", "session_id": sid}).status_code == 200
    expected = list(reversed(ids))  # newest first
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 10}
        if cursor is not None:
            params["cursor"] = cursor
        r = s.client.get("/v1/sessions", params=params)
        assert r.status_code == 200, r.text
        b = r.json()
        assert set(b) == {"data", "next_cursor"}
        assert len(b["data"]) <= 10
        seen += [x["id"] for x in b["data"]]
        pages += 1
        cursor = b["next_cursor"]
        if cursor is None:
            break
        assert isinstance(cursor, str) and cursor
        assert pages < 10
    assert pages == 3
    assert seen == expected
    # default limit is 20
    r = s.client.get("/v1/sessions")
    assert len(r.json()["data"]) == 20 and r.json()["next_cursor"]
    r = s.client.get("/v1/sessions", params={"limit": 100})
    assert [x["id"] for x in r.json()["data"]] == expected and r.json()["next_cursor"] is None


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 101}, {"limit": "abc"}, {"limit": -1},
                                    {"cursor": "not-a-cursor!!"}])
def test_sessions_bad_params(c, params):
    assert_v1_error(c.get("/v1/sessions", params=params), 400, "invalid_request_error")


def test_session_get_shape(c):
    sid = "v1-sess-get"
    c.post("/v1/chat", json={"message": "a", "session_id": sid, "system_prompt": "Sys A"})
    c.post("/v1/chat", json={"message": "b", "session_id": sid, "system_prompt": "Sys B"})
    r = c.get(f"/v1/sessions/{sid}")
    assert r.status_code == 200
    s = r.json()
    assert set(s) == {"id", "created_at", "updated_at", "turn_count", "message_count", "model",
                      "system_prompt", "usage", "cost"}, s
    assert s["id"] == sid and s["turn_count"] == 2 and s["message_count"] == 4
    assert s["model"] == DEFAULT_MODEL and s["system_prompt"] == "Sys A"
    assert V1_TIME_RE.match(s["created_at"]) and V1_TIME_RE.match(s["updated_at"])
    assert s["updated_at"] >= s["created_at"]
    _usage_ok(s["usage"])
    assert s["usage"]["output_tokens"] > 0 and s["usage"]["input_tokens"] > 0
    listed = [x for x in c.get("/v1/sessions", params={"limit": 100}).json()["data"] if x["id"] == sid]
    assert listed == [s]


def test_session_delete(c):
    sid = "v1-sess-del"
    assert c.post("/v1/chat", json={"message": "a", "session_id": sid}).status_code == 200
    r = c.delete(f"/v1/sessions/{sid}")
    assert r.status_code == 204 and r.content == b""
    assert "x-request-id" in r.headers
    assert_v1_error(c.get(f"/v1/sessions/{sid}"), 404, "not_found_error")
    assert_v1_error(c.delete(f"/v1/sessions/{sid}"), 404, "not_found_error")
    assert_v1_error(c.get(f"/v1/sessions/{sid}/messages"), 404, "not_found_error")
    assert c.get(f"/history/{sid}").status_code == 404


def test_session_messages(c):
    sid = "v1-sess-msgs"
    for m in ("one", "two", "three"):
        assert c.post("/v1/chat", json={"message": m, "session_id": sid}).status_code == 200
    r = c.get(f"/v1/sessions/{sid}/messages")
    assert r.status_code == 200
    b = r.json()
    assert set(b) == {"data", "has_more"} and b["has_more"] is False
    data = b["data"]
    assert [m["seq"] for m in data] == [1, 2, 3, 4, 5, 6]
    assert [m["role"] for m in data] == ["user", "assistant"] * 3
    assert [m["content"] for m in data] == ["one", echo("one"), "two", echo("two"), "three", echo("three")]
    ids = [m["id"] for m in data]
    assert len(set(ids)) == 6 and all(isinstance(i, str) and i.startswith("msg_") for i in ids)
    for m in data:
        base = {"id", "seq", "role", "content", "status", "created_at"}
        if m["role"] == "user":
            assert base <= set(m) and not ({"usage", "stop_reason"} & {k for k in m if m[k] is not None}), m
        else:
            assert base | {"model", "stop_reason", "usage"} <= set(m), m
            assert m["model"] == DEFAULT_MODEL and m["stop_reason"] == "end_turn"
            _usage_ok(m["usage"])
        assert m["status"] == "complete"
        assert V1_TIME_RE.match(m["created_at"])
    # paging with after/limit
    p1 = c.get(f"/v1/sessions/{sid}/messages", params={"after": 0, "limit": 4}).json()
    assert [m["seq"] for m in p1["data"]] == [1, 2, 3, 4] and p1["has_more"] is True
    p2 = c.get(f"/v1/sessions/{sid}/messages", params={"after": 4, "limit": 4}).json()
    assert [m["seq"] for m in p2["data"]] == [5, 6] and p2["has_more"] is False
    assert p1["data"] + p2["data"] == data


def test_session_reset(c, fake):
    sid = "v1-sess-reset"
    for m in ("a", "b", "c"):
        assert c.post("/v1/chat", json={"message": m, "session_id": sid}).status_code == 200
    r = c.post(f"/v1/sessions/{sid}/reset")
    assert r.status_code == 200
    assert r.json() == {"session_id": sid, "previous_turns": 3}
    s = c.get(f"/v1/sessions/{sid}").json()
    assert s["turn_count"] == 0 and s["message_count"] == 0
    assert c.get(f"/v1/sessions/{sid}/messages").json() == {"data": [], "has_more": False}
    fake.reset()
    r = c.post("/v1/chat", json={"message": "after", "session_id": sid})
    assert r.json()["turn_count"] == 1
    assert fake.requests()[0]["body"]["messages"] == [{"role": "user", "content": "after"}]
    assert_v1_error(c.post("/v1/sessions/v1-none/reset"), 404, "not_found_error")


def test_stats(c):
    before = c.get("/v1/stats")
    assert before.status_code == 200
    b0 = before.json()
    assert set(b0) == {"sessions", "messages", "turns", "usage", "cost"}, b0
    _usage_ok(b0["usage"])
    r = c.post("/v1/chat", json={"message": "stats!", "session_id": "v1-stats-new"})
    assert r.status_code == 200
    u = r.json()["usage"]
    b1 = c.get("/v1/stats").json()
    assert b1["sessions"] == b0["sessions"] + 1
    assert b1["messages"] == b0["messages"] + 2
    assert b1["turns"] == b0["turns"] + 1
    for k in USAGE_KEYS:
        assert b1["usage"][k] == b0["usage"][k] + u[k], k


def test_healthz_readyz(c):
    r = c.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = c.get("/readyz")
    assert r.status_code == 200 and r.json() == {"status": "ready"}


# ------------------------------------------------- errors and X-Request-Id


def test_error_envelope_unknown_session(c):
    err = assert_v1_error(c.get("/v1/sessions/v1-unknown-xyz"), 404, "not_found_error")
    assert REQ_ID_RE.match(err["request_id"])


@pytest.mark.parametrize("method,path,kw", [
    ("GET", "/", {}), ("GET", "/healthz", {}), ("GET", "/readyz", {}), ("GET", "/stats", {}),
    ("GET", "/sessions", {}), ("GET", "/v1/stats", {}), ("GET", "/v1/sessions", {}),
    ("GET", "/history/none-here", {}), ("GET", "/v1/sessions/none-here", {}),
    ("GET", "/nope/nothing", {}), ("POST", "/v1/chat", {"json": {}}), ("POST", "/chat", {"json": {}}),
    ("POST", "/v1/chat", {"json": {"message": "rid", "session_id": "v1-rid-1"}}),
    ("POST", "/chat", {"json": {"message": "rid", "session_id": "v1-rid-2"}}),
    ("DELETE", "/history/none-here", {}), ("POST", "/reset/none-here", {}),
])
def test_request_id_on_every_response(c, method, path, kw):
    r = c.request(method, path, **kw)
    rid = r.headers.get("x-request-id")
    assert rid and REQ_ID_RE.match(rid), (r.status_code, dict(r.headers))
    # Another request gets another id.
    assert c.request(method, path, **kw).headers["x-request-id"] != rid


def test_request_id_on_streams(c):
    resp, sse = stream_v1(c, {"message": "s", "session_id": "v1-rid-stream"})
    assert REQ_ID_RE.match(resp.headers["x-request-id"])
    with c.stream("POST", "/chat-stream", json={"message": "s", "session_id": "v1-rid-stream2"}) as r:
        r.read()
        assert REQ_ID_RE.match(r.headers["x-request-id"])


def test_client_request_id_echoed(c):
    mine = "client-Req_1.2:3"
    r = c.get("/v1/sessions/v1-unknown-abc", headers={"X-Request-Id": mine})
    assert r.headers["x-request-id"] == mine
    assert r.json()["error"]["request_id"] == mine
    r = c.post("/v1/chat", json={"message": "e", "session_id": "v1-rid-echo"},
               headers={"X-Request-Id": mine + "x"})
    assert r.status_code == 200
    assert r.headers["x-request-id"] == mine + "x" and r.json()["request_id"] == mine + "x"
    resp, sse = stream_v1(c, {"message": "e"}, headers={"X-Request-Id": "strm-1"})
    assert resp.headers["x-request-id"] == "strm-1"
    assert sse.data("start")[0]["request_id"] == "strm-1"
    long_ok = "a" * 128
    assert c.get("/healthz", headers={"X-Request-Id": long_ok}).headers["x-request-id"] == long_ok


@pytest.mark.parametrize("bad", ["a" * 129, "has space", "semi;colon", "quote\"d", "slash/x"])
def test_client_request_id_invalid_replaced(c, bad):
    r = c.get("/healthz", headers={"X-Request-Id": bad})
    assert r.status_code == 200
    assert REQ_ID_RE.match(r.headers["x-request-id"]), r.headers["x-request-id"]


@pytest.mark.parametrize("body", [
    {"session_id": "v1-val"}, {"message": "", "session_id": "v1-val"}, {"message": 5},
    {"message": None}, {"message": "x", "session_id": 7}, {"message": "x", "session_id": ""},
    {"message": "x", "session_id": "bad id"}, {"message": "x", "session_id": "x" * 129},
    {"message": "x", "model": 5}, {"message": "x", "max_tokens": "ten"},
    {"message": "x", "max_tokens": 1.5}, {"message": "x", "system_prompt": 3}, ["message"], "str",
])
def test_v1_chat_validation(c, fake, body):
    assert_v1_error(c.post("/v1/chat", json=body), 400, "invalid_request_error")
    assert fake.requests() == []


def test_v1_chat_invalid_json(c, fake):
    r = c.post("/v1/chat", content=b"{not json", headers={"content-type": "application/json"})
    assert_v1_error(r, 400, "invalid_request_error")
    r = c.post("/v1/chat", content=b"", headers={"content-type": "application/json"})
    assert_v1_error(r, 400, "invalid_request_error")
    assert fake.requests() == []
