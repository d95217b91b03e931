"""
test_seed_compat.py: the seed-compatible API (same paths and JSON shapes as the
FastAPI chat template), including the template's own tests and usage flows.
"""
import pytest

from helpers import (DEFAULT_SYSTEM, SEED_TIME_RE, assert_seed_detail, echo,
                     stream_seed)


@pytest.fixture(scope="module")
def server(chatd_module):
    return chatd_module()


@pytest.fixture
def c(server):
    return server.client


# ------------------------------------------------------------- template tests


class TemplateClient:
    """What the template's TestClient offered: .post/.get on paths."""

    def __init__(self, http):
        self._http = http

    def post(self, path, json=None):
        return self._http.post(path, json=json)

    def get(self, path):
        return self._http.get(path)


def test_chat(server):
    client = TemplateClient(server.client)
    response = client.post("/chat", json={
        "message": "Hello",
        "session_id": "test-1"
    })
    assert response.status_code == 200
    assert "response" in response.json()


def test_history(server):
    client = TemplateClient(server.client)
    # Add message first
    client.post("/chat", json={
        "message": "Test",
        "session_id": "test-2"
    })

    # Get history
    response = client.get("/history/test-2")
    assert response.status_code == 200
    assert len(response.json()["messages"]) > 0


# ------------------------------------------------------------------ endpoints


def test_root(c):
    r = c.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == {"status": "ok", "service": "chat-api"}


def test_chat_shape_and_turn_count(c, fake):
    sid = "seed-chat-shape"
    r = c.post("/chat", json={"message": "Hello! What can you do?", "session_id": sid})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"response", "session_id", "timestamp", "turn_count"}, body
    assert body["response"] == echo("Hello! What can you do?")
    assert body["session_id"] == sid
    assert isinstance(body["timestamp"], str) and SEED_TIME_RE.match(body["timestamp"]), body
    assert body["turn_count"] == 1 and type(body["turn_count"]) is int

    r = c.post("/chat", json={"message": "again", "session_id": sid, "system_prompt": None})
    assert r.status_code == 200, r.text
    assert r.json()["turn_count"] == 2
    assert r.json()["response"] == echo("again")
    assert len(fake.requests()) == 2


def test_chat_stream_plain_chunks(c, fake):
    sid = "seed-stream-1"
    # Slow deltas so that chunks must arrive as they are produced.
    fake.script(queue=[{"reply_words": 6, "gap_ms": 150}])
    resp, chunks = stream_seed(c, {"message": "stream please", "session_id": sid})
    assert resp.status_code == 200
    assert resp.headers["content-type"].lower().replace(" ", "") == "text/plain;charset=utf-8"
    assert resp.headers.get("transfer-encoding", "").lower() == "chunked"
    text = b"".join(ch for ch, _ in chunks).decode("utf-8")
    assert text == "w1 w2 w3 w4 w5 w6"
    # Streamed, not buffered: first bytes well before the last.
    assert chunks[-1][1] - chunks[0][1] > 0.4, [(ch, t - chunks[0][1]) for ch, t in chunks]
    h = c.get(f"/history/{sid}").json()
    assert h["messages"] == [{"role": "user", "content": "stream please"},
                             {"role": "assistant", "content": text}]
    assert h["turn_count"] == 1
    # A second streamed turn sees the first one.
    resp, chunks = stream_seed(c, {"message": "more", "session_id": sid})
    assert resp.status_code == 200
    assert b"".join(ch for ch, _ in chunks).decode() == echo("more")
    assert c.get(f"/history/{sid}").json()["turn_count"] == 2


def test_chat_stream_unicode_split(c, fake):
    sid = "seed-stream-utf8"
    reply = "Grüße, 世界! 🎉 done"
    fake.script(default={"reply": reply, "split": True})
    resp, chunks = stream_seed(c, {"message": "unicode", "session_id": sid})
    assert resp.status_code == 200
    assert b"".join(ch for ch, _ in chunks).decode("utf-8") == reply
    assert c.get(f"/history/{sid}").json()["messages"][1]["content"] == reply


def test_history_shape(c):
    sid = "seed-history-1"
    for m in ("first", "second"):
        assert c.post("/chat", json={"message": m, "session_id": sid}).status_code == 200
    r = c.get(f"/history/{sid}")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"session_id", "messages", "turn_count"}
    assert body["session_id"] == sid
    assert body["turn_count"] == 2
    assert body["messages"] == [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": echo("first")},
        {"role": "user", "content": "second"},
        {"role": "assistant", "content": echo("second")},
    ]


def test_history_not_found_exact(c):
    r = c.get("/history/no-such-session-xyz")
    assert r.status_code == 404
    assert r.json() == {"detail": "Session not found"}


def test_delete_history(c):
    sid = "seed-delete-1"
    assert c.post("/chat", json={"message": "x", "session_id": sid}).status_code == 200
    r = c.delete(f"/history/{sid}")
    assert r.status_code == 200
    assert r.json() == {"status": "cleared", "session_id": sid}
    assert c.get(f"/history/{sid}").status_code == 404
    r = c.delete(f"/history/{sid}")
    assert r.status_code == 200
    assert r.json() == {"status": "not_found", "session_id": sid}
    # The id can be used again: a fresh conversation.
    r = c.post("/chat", json={"message": "y", "session_id": sid})
    assert r.status_code == 200 and r.json()["turn_count"] == 1


def test_sessions_listing(c):
    sid = "seed-sessions-1"
    for m in ("a", "b", "c"):
        assert c.post("/chat", json={"message": m, "session_id": sid}).status_code == 200
    r = c.get("/sessions")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"sessions"}
    assert isinstance(body["sessions"], list)
    for s in body["sessions"]:
        assert set(s) == {"session_id", "turns", "created_at"}, s
        assert SEED_TIME_RE.match(s["created_at"]), s
    mine = [s for s in body["sessions"] if s["session_id"] == sid]
    assert len(mine) == 1 and mine[0]["turns"] == 3
    ids = [s["session_id"] for s in body["sessions"]]
    assert len(ids) == len(set(ids))


def test_reset(c, fake):
    sid = "seed-reset-1"
    for m in ("a", "b"):
        assert c.post("/chat", json={"message": m, "session_id": sid,
                                     "system_prompt": "Be brief."}).status_code == 200
    r = c.post(f"/reset/{sid}")
    assert r.status_code == 200
    assert r.json() == {"status": "reset", "session_id": sid, "previous_turns": 2}
    h = c.get(f"/history/{sid}")
    assert h.status_code == 200
    assert h.json() == {"session_id": sid, "messages": [], "turn_count": 0}
    listed = [s for s in c.get("/sessions").json()["sessions"] if s["session_id"] == sid]
    assert listed and listed[0]["turns"] == 0
    # After a reset the conversation starts over, keeping the session's system prompt.
    fake.reset()
    r = c.post("/chat", json={"message": "fresh", "session_id": sid})
    assert r.status_code == 200 and r.json()["turn_count"] == 1
    up = fake.requests()[-1]["body"]
    assert up["messages"] == [{"role": "user", "content": "fresh"}]
    assert up["system"] == "Be brief."
    r = c.post(f"/reset/{sid}")
    assert r.json() == {"status": "reset", "session_id": sid, "previous_turns": 1}


def test_reset_not_found(c):
    r = c.post("/reset/seed-reset-none")
    assert r.status_code == 200
    assert r.json() == {"status": "not_found", "session_id": "seed-reset-none"}


def test_stats_fresh_server(chatd):
    s = chatd()
    r = s.client.get("/stats")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"total_sessions", "total_messages", "avg_messages_per_session"}
    assert body["total_sessions"] == 0 and body["total_messages"] == 0
    assert body["avg_messages_per_session"] == 0
    for sid, n in (("st-a", 1), ("st-b", 2)):
        for i in range(n):
            assert s.client.post("/chat", json={"message": f"m{i}", "session_id": sid}).status_code == 200
    body = s.client.get("/stats").json()
    assert body["total_sessions"] == 2
    assert body["total_messages"] == 6
    assert body["avg_messages_per_session"] == pytest.approx(3.0)
    s.client.delete("/history/st-a")
    body = s.client.get("/stats").json()
    assert body == {"total_sessions": 1, "total_messages": 4, "avg_messages_per_session": 4.0}


# ------------------------------------------------------------- usage flows


def test_system_prompt_fixed_by_first_turn(c, fake):
    sid = "seed-sys-1"
    assert c.post("/chat", json={"message": "one", "session_id": sid,
                                 "system_prompt": "You are terse."}).status_code == 200
    assert c.post("/chat", json={"message": "two", "session_id": sid,
                                 "system_prompt": "You are verbose."}).status_code == 200
    resp, _ = stream_seed(c, {"message": "three", "session_id": sid, "system_prompt": "Other"})
    assert resp.status_code == 200
    reqs = fake.requests()
    assert [q["body"]["system"] for q in reqs] == ["You are terse."] * 3


def test_default_system_prompt(c, fake):
    assert c.post("/chat", json={"message": "hi", "session_id": "seed-sys-default"}).status_code == 200
    assert c.post("/chat", json={"message": "hi", "session_id": "seed-sys-null",
                                 "system_prompt": None}).status_code == 200
    # The template uses `msg.system_prompt or default`: an empty prompt means the default.
    assert c.post("/chat", json={"message": "hi", "session_id": "seed-sys-empty",
                                 "system_prompt": ""}).status_code == 200
    assert [q["body"]["system"] for q in fake.requests()] == [DEFAULT_SYSTEM] * 3


def test_turn_count_flow_mixed_stream_and_chat(c):
    sid = "seed-flow-1"
    assert c.post("/chat", json={"message": "1", "session_id": sid}).json()["turn_count"] == 1
    resp, _ = stream_seed(c, {"message": "2", "session_id": sid})
    assert resp.status_code == 200
    assert c.post("/chat", json={"message": "3", "session_id": sid}).json()["turn_count"] == 3
    h = c.get(f"/history/{sid}").json()
    assert h["turn_count"] == 3 and len(h["messages"]) == 6
    assert [m["role"] for m in h["messages"]] == ["user", "assistant"] * 3


# ------------------------------------------------------------------ 422 bodies


def _one_error(r, etype, loc):
    assert r.status_code == 422, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], list), body
    errs = [e for e in body["detail"] if e.get("loc") == loc]
    assert len(errs) == 1, body
    e = errs[0]
    assert {"type", "loc", "msg", "input"} <= set(e) <= {"type", "loc", "msg", "input", "ctx"}, e
    assert e["type"] == etype, e
    return e


@pytest.mark.parametrize("path", ["/chat", "/chat-stream"])
def test_422_invalid_json(c, path):
    r = c.post(path, content=b'{"message": "hi", "session_id": ', headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    body = r.json()
    assert set(body) == {"detail"} and len(body["detail"]) == 1, body
    e = body["detail"][0]
    assert e["type"] == "json_invalid"
    assert e["loc"][0] == "body" and isinstance(e["loc"][1], int) and len(e["loc"]) == 2, e
    assert e["msg"] == "JSON decode error"
    assert e["input"] == {}
    assert isinstance(e["ctx"]["error"], str) and e["ctx"]["error"]


@pytest.mark.parametrize("path", ["/chat", "/chat-stream"])
def test_422_missing_message(c, path, fake):
    body = {"session_id": "seed-422"}
    e = _one_error(c.post(path, json=body), "missing", ["body", "message"])
    assert e["msg"] == "Field required"
    assert e["input"] == body
    assert fake.requests() == []


def test_422_missing_session_id(c):
    body = {"message": "hi"}
    e = _one_error(c.post("/chat", json=body), "missing", ["body", "session_id"])
    assert e["msg"] == "Field required" and e["input"] == body


def test_422_both_missing(c):
    r = c.post("/chat", json={})
    assert r.status_code == 422
    locs = [e["loc"] for e in r.json()["detail"]]
    assert locs == [["body", "message"], ["body", "session_id"]]


@pytest.mark.parametrize("field,value", [
    ("message", 123), ("message", None), ("message", ["a"]), ("session_id", 5),
    ("session_id", None), ("system_prompt", 7), ("system_prompt", {"a": 1}),
])
def test_422_wrong_types(c, fake, field, value):
    body = {"message": "hi", "session_id": "seed-422-types"}
    body[field] = value
    e = _one_error(c.post("/chat", json=body), "string_type", ["body", field])
    assert e["msg"] == "Input should be a valid string"
    assert e["input"] == value
    assert fake.requests() == []


@pytest.mark.parametrize("path", ["/chat", "/chat-stream"])
def test_422_body_not_an_object(c, path):
    r = c.post(path, json=["message", "hi"])
    assert r.status_code == 422
    assert isinstance(r.json()["detail"], list) and r.json()["detail"]


@pytest.mark.parametrize("sid", ["bad id", "x" * 129, "semi;colon", "slash/inside", "", "ünïcode"])
def test_422_bad_session_id_in_body(c, fake, sid):
    r = c.post("/chat", json={"message": "hi", "session_id": sid})
    assert r.status_code == 422, r.text
    assert isinstance(r.json()["detail"], list) and r.json()["detail"]
    assert fake.requests() == []


@pytest.mark.parametrize("method,path", [
    ("GET", "/history/bad!id"), ("GET", "/history/" + "x" * 129), ("GET", "/history/a%2Fb"),
    ("DELETE", "/history/a%20b"), ("POST", "/reset/bad!id"),
])
def test_422_bad_session_id_in_path(c, method, path):
    r = c.request(method, path)
    assert r.status_code == 422, (r.status_code, r.text)
    assert "detail" in r.json()


def test_valid_session_id_charset_and_max_length(c):
    for sid in ("A-z_0.9:x", "y" * 128):
        r = c.post("/chat", json={"message": "ok", "session_id": sid})
        assert r.status_code == 200, r.text
        assert r.json()["session_id"] == sid
        assert c.get(f"/history/{sid}").json()["turn_count"] == 1
