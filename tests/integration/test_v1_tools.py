"""
test_v1_tools.py: tools, images and request options on chatd's own memory API
(POST /v1/chat, /v1/chat/stream, GET /v1/sessions/{id}/messages), issue 13.

The real chatd binary talks to the fake provider (tests/fake_llm/server.mjs),
scripted with in-band [[fake:...]] directives; what chatd sent upstream is read
back from the fake's request log. The contract is docs/API.md ("Tools, images
and options").
"""
import base64
import hashlib
import json
import os
import sqlite3
import tempfile

import pytest

from helpers import assert_v1_error, directive, stream_v1

# A valid 1x1 PNG (the fake checks the magic bytes against the media type).
PNG_1X1 = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")

WEATHER = {
    "name": "get_weather",
    "description": "The current weather of a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TIME = {
    "name": "get_time",
    "description": "The local time of a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def image_block(data=PNG_1X1, media_type="image/png"):
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def calls_directive(*calls, **extra):
    return directive({"tool_calls": [{"name": n, "input": i} for n, i in calls], **extra})


def upstream(fake):
    """The body of the last upstream request."""
    reqs = fake.requests()
    assert reqs, "no upstream request"
    return reqs[-1]["body"]


def blocks_of(msg):
    c = msg["content"]
    return [{"type": "text", "text": c}] if isinstance(c, str) else c


def history(c, sid):
    r = c.get(f"/v1/sessions/{sid}/messages")
    assert r.status_code == 200, r.text
    return r.json()["data"]


@pytest.fixture(scope="module")
def server(chatd_module):
    return chatd_module({})


@pytest.fixture
def c(server):
    return server.client


# ---------------------------------------------------------------- the tool loop


def test_tool_loop_across_restart(chatd, fake):
    srv = chatd({})
    sid = "tools-loop-1"
    r = srv.client.post("/v1/chat", json={
        "session_id": sid, "tools": [WEATHER, TIME],
        "message": "Weather in Paris? " + calls_directive(("get_weather", {"city": "Paris"}))})
    assert r.status_code == 200, r.text
    b = r.json()
    assert b["stop_reason"] == "tool_use", b
    assert len(b["tool_calls"]) == 1, b
    call = b["tool_calls"][0]
    assert call["name"] == "get_weather" and call["input"] == {"city": "Paris"}, call
    assert isinstance(call["id"], str) and call["id"], call
    uses = [x for x in b["content"] if x["type"] == "tool_use"]
    assert uses == [{"type": "tool_use", "id": call["id"], "name": "get_weather", "input": {"city": "Paris"}}], b
    assert "stop_sequence" in b and b["stop_sequence"] is None, b
    sent = upstream(fake)
    assert [t["name"] for t in sent["tools"]] == ["get_weather", "get_time"], sent
    assert sent["tools"][0]["input_schema"] == WEATHER["input_schema"], sent

    srv.restart()  # the pending tool call lives in the database, not in the process
    fake.reset()

    r = srv.client.post("/v1/chat", json={
        "session_id": sid, "tools": [WEATHER, TIME],
        "tool_results": [{"tool_call_id": call["id"], "content": "18 C and sunny"}]})
    assert r.status_code == 200, r.text
    b2 = r.json()
    assert b2["response"] == "Tool results: 18 C and sunny", b2
    assert b2["stop_reason"] == "end_turn" and b2["tool_calls"] == [], b2
    assert b2["turn_count"] == 2, b2

    # Upstream: the user turn, the assistant's tool call, the tool result, in order.
    msgs = upstream(fake)["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"], msgs
    assert any(x["type"] == "tool_use" and x["id"] == call["id"] for x in blocks_of(msgs[1])), msgs
    tr = [x for x in blocks_of(msgs[2]) if x["type"] == "tool_result"]
    assert len(tr) == 1 and tr[0]["tool_use_id"] == call["id"], msgs

    hist = history(srv.client, sid)
    assert [m["role"] for m in hist] == ["user", "assistant", "user", "assistant"], hist
    assert "blocks" not in hist[0] or all(x["type"] == "text" for x in hist[0]["blocks"]), hist[0]
    assert [x["type"] for x in hist[1]["blocks"]] == ["tool_use"], hist[1]
    assert hist[1]["blocks"][0]["id"] == call["id"], hist[1]
    assert hist[1]["stop_reason"] == "tool_use", hist[1]
    res = [x for x in hist[2]["blocks"] if x["type"] == "tool_result"]
    assert len(res) == 1 and res[0]["tool_use_id"] == call["id"], hist[2]
    assert hist[3]["content"] == "Tool results: 18 C and sunny", hist[3]

    # The seed history stays text.
    r = srv.client.get(f"/history/{sid}")
    if r.status_code == 200:
        for m in r.json()["messages"]:
            assert set(m) == {"role", "content"} and isinstance(m["content"], str), m


def test_tool_results_with_text_and_error_flag(c, fake):
    sid = "tools-text-err"
    r = c.post("/v1/chat", json={"session_id": sid, "tools": [WEATHER],
                                 "message": "x " + calls_directive(("get_weather", {"city": "Oslo"}))})
    assert r.status_code == 200, r.text
    cid = r.json()["tool_calls"][0]["id"]
    fake.reset()
    r = c.post("/v1/chat", json={"session_id": sid, "tools": [WEATHER], "message": "and be brief",
                                 "tool_results": [{"tool_call_id": cid, "content": [{"type": "text", "text": "no data"}],
                                                   "is_error": True}]})
    assert r.status_code == 200, r.text
    last = upstream(fake)["messages"][-1]
    blocks = blocks_of(last)
    assert blocks[0]["type"] == "tool_result" and blocks[0]["tool_use_id"] == cid, blocks
    assert blocks[0].get("is_error") is True, blocks
    assert blocks[-1] == {"type": "text", "text": "and be brief"}, blocks
    hist = history(c, sid)
    assert [x["type"] for x in hist[2]["blocks"]] == ["tool_result", "text"], hist[2]


def test_missing_and_unexpected_tool_results(c, fake):
    sid = "tools-missing"
    # tool results for a session whose last reply called no tool
    r = c.post("/v1/chat", json={"session_id": sid, "message": "hello"})
    assert r.status_code == 200, r.text
    r = c.post("/v1/chat", json={"session_id": sid, "tool_results": [{"tool_call_id": "toolu_x", "content": "1"}]})
    assert_v1_error(r, 400, "unexpected_tool_results")

    r = c.post("/v1/chat", json={"session_id": sid, "tools": [WEATHER, TIME],
                                 "message": "two " + calls_directive(("get_weather", {"city": "A"}),
                                                                     ("get_time", {"city": "B"}))})
    assert r.status_code == 200, r.text
    ids = [x["id"] for x in r.json()["tool_calls"]]
    assert len(ids) == 2
    fake.reset()
    # a plain message while the calls are unanswered
    r = c.post("/v1/chat", json={"session_id": sid, "message": "never mind"})
    assert_v1_error(r, 400, "tool_results_required")
    # only one of the two answered
    r = c.post("/v1/chat", json={"session_id": sid, "tool_results": [{"tool_call_id": ids[0], "content": "1"}]})
    assert_v1_error(r, 400, "tool_results_required")
    # an id that is not one of the calls
    r = c.post("/v1/chat", json={"session_id": sid, "tool_results": [
        {"tool_call_id": ids[0], "content": "1"}, {"tool_call_id": ids[1], "content": "2"},
        {"tool_call_id": "toolu_other", "content": "3"}]})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] in ("unexpected_tool_results", "tool_results_required"), r.text
    assert fake.requests() == [], "a refused turn must not reach the provider"
    # nothing was stored by the refusals; answering both works
    r = c.post("/v1/chat", json={"session_id": sid, "tool_results": [
        {"tool_call_id": ids[1], "content": "2"}, {"tool_call_id": ids[0], "content": "1"}]})
    assert r.status_code == 200, r.text
    assert len(history(c, sid)) == 6


# ---------------------------------------------------------------- streaming


def test_stream_tool_calls(c, fake):
    sid = "tools-stream"
    calls = [("get_weather", {"city": "Paris", "units": "metric"}), ("get_time", {"city": "Tokyo"})]
    resp, sse = stream_v1(c, {"session_id": sid, "tools": [WEATHER, TIME],
                              "message": "go " + directive({"reply": "Let me check.",
                                                            "tool_calls": [{"name": n, "input": i} for n, i in calls]})})
    assert resp.status_code == 200, resp.text
    names = sse.names()
    assert names[0] == "start" and names[-1] == "done", names
    assert sse.deltas_text() == "Let me check.", names
    # every tool_call comes after its deltas and before done; deltas of one call are contiguous
    tc = sse.data("tool_call")
    assert [(x["index"], x["name"], x["input"]) for x in tc] == [(0, n, i) for n, i in calls[:1]] + \
        [(1, calls[1][0], calls[1][1])], tc
    for k in (0, 1):
        pos = [i for i, (n, d, _) in enumerate(sse.events) if n == "tool_call_delta" and d["index"] == k]
        end = [i for i, (n, d, _) in enumerate(sse.events) if n == "tool_call" and d["index"] == k]
        assert pos and len(end) == 1 and max(pos) < end[0], names
        assert pos == list(range(pos[0], pos[0] + len(pos))), names
        first = sse.events[pos[0]][1]
        assert first["name"] == calls[k][0] and first["id"] == tc[k]["id"], first
        args = "".join(sse.events[i][1]["arguments_delta"] for i in pos)
        assert json.loads(args) == calls[k][1], args
    # text before the calls
    assert max(i for i, e in enumerate(sse.events) if e[0] == "delta") < \
        min(i for i, e in enumerate(sse.events) if e[0] == "tool_call_delta"), names
    done = sse.data("done")[0]
    assert done["stop_reason"] == "tool_use", done
    assert [(x["id"], x["name"], x["input"]) for x in done["tool_calls"]] == \
        [(x["id"], x["name"], x["input"]) for x in tc], done
    assert [x["type"] for x in done["content"]] == ["text", "tool_use", "tool_use"], done


def test_stream_thinking_events(c, fake):
    sid = "tools-thinking"
    resp, sse = stream_v1(c, {"session_id": sid, "message": "hm " + directive({"thinking": "let me think",
                                                                               "reply": "ok", "shape": "2026"})})
    assert resp.status_code == 200, resp.text
    th = "".join(d["text"] for d in sse.data("thinking"))
    assert th == "let me think", sse.names()
    assert sse.deltas_text() == "ok"
    done = sse.data("done")[0]
    assert [x["type"] for x in done["content"]] == ["thinking", "text"], done
    assert done["content"][0]["thinking"] == "let me think", done
    # the 2026 shape reports the thinking tokens (usage.output_tokens_details)
    assert done["usage"].get("reasoning_tokens", 0) >= 1, done


# ---------------------------------------------------------------- images


def test_images_stored_and_shown(server, c, fake):
    content = [{"type": "text", "text": "What is in this picture?"}, image_block()]
    for sid in ("img-a", "img-b"):  # the same image in two sessions
        fake.reset()
        r = c.post("/v1/chat", json={"session_id": sid, "content": content})
        assert r.status_code == 200, r.text
        assert r.json()["response"].startswith("Hello! You said: What is in this picture?"), r.text
        last = upstream(fake)["messages"][-1]
        imgs = [x for x in blocks_of(last) if x["type"] == "image"]
        assert len(imgs) == 1 and imgs[0]["source"]["data"] == PNG_1X1, last
    for sid in ("img-a", "img-b"):
        hist = history(c, sid)
        assert hist[0]["blocks"] == content, hist[0]
        assert hist[0]["content"] == "What is in this picture?", hist[0]
    # a second turn sends the stored image again, whole
    fake.reset()
    r = c.post("/v1/chat", json={"session_id": "img-a", "message": "and now?"})
    assert r.status_code == 200, r.text
    first = upstream(fake)["messages"][0]
    assert any(x["type"] == "image" and x["source"]["data"] == PNG_1X1 for x in blocks_of(first)), first
    # the image is stored once for both sessions (SQLite: the blobs table)
    if server.env["DATABASE_URL"].startswith("sqlite:"):
        sha = hashlib.sha256(base64.b64decode(PNG_1X1)).hexdigest()
        with sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True) as db:
            assert db.execute("SELECT COUNT(*) FROM blobs WHERE sha256 = ?", (sha,)).fetchone()[0] == 1
            assert db.execute("SELECT COUNT(*) FROM message_blobs WHERE sha256 = ?", (sha,)).fetchone()[0] >= 2
    # deleting one session leaves the other's image whole
    assert c.delete("/v1/sessions/img-a").status_code == 204
    assert history(c, "img-b")[0]["blocks"] == content


def test_image_in_tool_result(c, fake):
    sid = "img-tool"
    r = c.post("/v1/chat", json={"session_id": sid, "tools": [WEATHER],
                                 "message": "map " + calls_directive(("get_weather", {"city": "Rome"}))})
    cid = r.json()["tool_calls"][0]["id"]
    r = c.post("/v1/chat", json={"session_id": sid, "tool_results": [
        {"tool_call_id": cid, "content": [{"type": "text", "text": "radar"}, image_block()]}]})
    assert r.status_code == 200, r.text
    hist = history(c, sid)
    assert hist[2]["blocks"][0]["content"][1]["source"]["data"] == PNG_1X1, hist[2]


def test_image_limits(chatd, fake):
    srv = chatd({"MAX_IMAGE_SIZE": "1KiB"})
    big = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 2048).decode()
    r = srv.client.post("/v1/chat", json={"content": [{"type": "text", "text": "hi"}, image_block(big)]})
    err = assert_v1_error(r, 413, "request_too_large")
    assert "content[1].source.data" in err["message"] and "MAX_IMAGE_SIZE" in err["message"], err
    r = srv.client.post("/v1/chat", json={"content": [
        {"type": "image", "source": {"type": "url", "url": "http://example.com/a.png"}}]})
    err = assert_v1_error(r, 400, "invalid_request_error")
    assert "content[0].source.url" in err["message"], err
    r = srv.client.post("/v1/chat", json={"content": [image_block("not base64!")]})
    err = assert_v1_error(r, 400, "invalid_request_error")
    assert "content[0].source.data" in err["message"], err
    assert fake.requests() == []


# ---------------------------------------------------------------- options


def test_options_reach_upstream(c, fake):
    r = c.post("/v1/chat", json={
        "session_id": "opts-1", "message": "Hi", "temperature": 0.25, "top_k": 40, "stop": ["ZZZ"],
        "user": "end-user-7", "tools": [WEATHER], "tool_choice": {"type": "auto"}, "parallel_tool_calls": False})
    assert r.status_code == 200, r.text
    sent = upstream(fake)
    assert sent["temperature"] == 0.25, sent
    assert sent["top_k"] == 40, sent
    assert sent["stop_sequences"] == ["ZZZ"], sent
    assert sent.get("metadata", {}).get("user_id") == "end-user-7", sent
    assert sent["tool_choice"]["type"] == "auto", sent
    assert sent["tool_choice"].get("disable_parallel_tool_use") is True, sent
    assert [t["name"] for t in sent["tools"]] == ["get_weather"], sent


def test_stop_sequence_reported(c, fake):
    r = c.post("/v1/chat", json={"session_id": "opts-stop", "message": "one two STOP three", "stop": "STOP"})
    assert r.status_code == 200, r.text
    b = r.json()
    assert b["stop_reason"] == "stop_sequence" and b["stop_sequence"] == "STOP", b
    assert upstream(fake)["stop_sequences"] == ["STOP"]


def test_thinking_option(c, fake):
    r = c.post("/v1/chat", json={"session_id": "opts-think", "message": "ponder", "max_tokens": 4000,
                                 "thinking": {"type": "enabled", "budget_tokens": 2048}})
    assert r.status_code == 200, r.text
    assert upstream(fake)["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    b = r.json()
    assert [x["type"] for x in b["content"]][0] == "thinking", b


def test_unsupported_option(c, fake):
    r = c.post("/v1/chat", json={"session_id": "opts-bad", "message": "Hi", "presence_penalty": 0.5})
    err = assert_v1_error(r, 400, "unsupported_parameter")
    assert "presence_penalty" in err["message"] and "claude-sonnet-4-6" in err["message"], err
    assert fake.requests() == []


def test_dropped_options_header(chatd, fake):
    srv = chatd({"DROP_UNSUPPORTED_PARAMS": "on"})
    r = srv.client.post("/v1/chat", json={"message": "Hi", "presence_penalty": 0.5, "temperature": 0.5})
    assert r.status_code == 200, r.text
    assert "presence_penalty" in r.headers.get("x-chatd-dropped-params", ""), r.headers
    sent = upstream(fake)
    assert "presence_penalty" not in sent and sent["temperature"] == 0.5, sent
    fake.reset()
    resp, sse = stream_v1(srv.client, {"message": "Hi", "seed": 7})
    assert resp.status_code == 200
    assert "seed" in resp.headers.get("x-chatd-dropped-params", ""), resp.headers


@pytest.mark.parametrize("extra,field", [
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": -1}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": 0}, "top_k"),
    ({"top_k": 2.5}, "top_k"),
    ({"stop": []}, "stop"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"seed": "x"}, "seed"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"frequency_penalty": -2.5}, "frequency_penalty"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"42": 101}}, "logit_bias"),
    ({"logprobs": "yes"}, "logprobs"),
    ({"top_logprobs": 21}, "top_logprobs"),
    ({"n": 0}, "n"),
    ({"user": 5}, "user"),
    ({"tools": []}, "tools"),
    ({"tools": [{"name": "bad name!"}]}, "tools[0].name"),
    ({"tools": [WEATHER, WEATHER]}, "tools[1].name"),
    ({"tools": [{"name": "f", "input_schema": "x"}]}, "tools[0].input_schema"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "nope"}}, "tool_choice.name"),
    ({"tool_choice": {"type": "any"}}, "tool_choice"),
    ({"parallel_tool_calls": 1}, "parallel_tool_calls"),
    ({"response_format": {"type": "yaml"}}, "response_format"),
    ({"response_format": {"type": "json_schema"}}, "response_format.schema"),
    ({"thinking": {"type": "enabled"}}, "thinking"),
    ({"reasoning_effort": "extreme"}, "reasoning_effort"),
    ({"content": [{"type": "text", "text": "x"}]}, "content"),  # with message: not both
])
def test_option_validation(c, fake, extra, field):
    r = c.post("/v1/chat", json={"message": "Hi", **extra})
    err = assert_v1_error(r, 400, "invalid_request_error")
    assert field in err["message"], (field, err)
    assert fake.requests() == []


@pytest.mark.parametrize("body,field", [
    ({"content": []}, "content"),
    ({"content": "text"}, "content"),
    ({"content": [{"type": "tool_use", "id": "a", "name": "b", "input": {}}]}, "content[0].type"),
    ({"content": [{"type": "text", "text": ""}]}, "content[0].text"),
    ({"content": [{"type": "text", "text": " \n "}, image_block()]}, "content[0].text"),
    ({"tool_results": [{"tool_call_id": "a", "content": [{"type": "text", "text": "  "}]}]},
     "tool_results[0].content[0].text"),
    ({"content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}, "content[0].source.type"),
    ({"message": None}, "message"),
    ({"content": [{"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": PNG_1X1}}]},
     "content[0].source.media_type"),
    ({"tool_results": []}, "tool_results"),
    ({"tool_results": [{"content": "x"}]}, "tool_results[0].tool_call_id"),
    ({"tool_results": [{"tool_call_id": "a", "content": 5}]}, "tool_results[0].content"),
    ({"tool_results": [{"tool_call_id": "a", "content": "x", "is_error": "no"}]}, "tool_results[0].is_error"),
    ({"tool_results": [{"tool_call_id": "a"}, {"tool_call_id": "a"}]}, "tool_results[1]"),
])
def test_content_validation(c, fake, body, field):
    r = c.post("/v1/chat", json=body)
    err = assert_v1_error(r, 400, "invalid_request_error")
    assert field in err["message"], (field, err)


def test_seed_endpoints_unchanged(c, fake):
    # The seed ignores the /v1 fields as it always ignored unknown fields ...
    r = c.post("/chat", json={"session_id": "seed-tools", "message": "Hi", "tools": [WEATHER], "temperature": 9})
    assert r.status_code == 200, r.text
    sent = upstream(fake)
    assert "tools" not in sent and "temperature" not in sent, sent
    # ... and still requires a string message (content does not stand for it there).
    r = c.post("/chat", json={"session_id": "seed-tools", "content": [{"type": "text", "text": "x"}]})
    assert r.status_code == 422, r.text
    assert isinstance(r.json()["detail"], list)


# ---------------------------------------------------------------- idempotency


def test_idempotent_replay_of_tool_call(c, fake):
    body = {"session_id": "idem-tools", "tools": [WEATHER],
            "message": "w " + calls_directive(("get_weather", {"city": "Lima"}))}
    h = {"Idempotency-Key": "tools-key-1"}
    r1 = c.post("/v1/chat", json=body, headers=h)
    assert r1.status_code == 200, r1.text
    r2 = c.post("/v1/chat", json=body, headers=h)
    assert r2.status_code == 200, r2.text
    assert r2.headers.get("idempotent-replayed") == "true"
    a, b = r1.json(), r2.json()
    assert b["tool_calls"] == a["tool_calls"] and len(a["tool_calls"]) == 1, (a, b)
    assert b["content"] == a["content"] and b["stop_reason"] == "tool_use", b
    assert len(fake.requests()) == 1

    # the stream endpoint replays the calls as events
    h = {"Idempotency-Key": "tools-key-2"}
    body2 = {"session_id": "idem-tools-2", "tools": [WEATHER],
             "message": "w " + calls_directive(("get_weather", {"city": "Quito"}))}
    resp1, s1 = stream_v1(c, body2, h)
    resp2, s2 = stream_v1(c, body2, h)
    assert resp2.headers.get("idempotent-replayed") == "true"
    assert [(d["id"], d["input"]) for d in s2.data("tool_call")] == \
        [(d["id"], d["input"]) for d in s1.data("tool_call")] != [], (s1.names(), s2.names())
    assert s2.data("done")[0]["tool_calls"] == s1.data("done")[0]["tool_calls"]


# ---------------------------------------------------------------- truncation


@pytest.fixture(scope="module")
def tiny(chatd_module):
    fd, path = tempfile.mkstemp(prefix="chatd-models-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump({"models": [{"name": "tiny-tools", "provider": "anthropic", "model_id": "tiny-tools-1",
                               "features": ["tools", "vision"],
                               "context_window": 400, "max_output": 20,
                               "price": {"input": 1, "output": 2, "cache_write": 1, "cache_read": 1}}]}, f)
    return chatd_module({"MODELS_FILE": path, "PROMPT_CACHING": "off"})


def test_truncation_keeps_tool_pairs(tiny, fake):
    c = tiny.client
    sid = "trunc-tools"
    base = {"session_id": sid, "model": "tiny-tools", "tools": [WEATHER]}
    r = c.post("/v1/chat", json={**base, "message": "w " + calls_directive(("get_weather", {"city": "Bern"}))})
    assert r.status_code == 200, r.text
    cid = r.json()["tool_calls"][0]["id"]
    r = c.post("/v1/chat", json={**base, "tool_results": [{"tool_call_id": cid, "content": "cold " * 60}]})
    assert r.status_code == 200, r.text
    truncated = 0
    for i in range(6):
        fake.reset()
        r = c.post("/v1/chat", json={**base, "message": f"turn {i} " + "x" * 300})
        assert r.status_code == 200, r.text
        truncated = max(truncated, r.json()["truncated_turns"])
        msgs = upstream(fake)["messages"]
        # the first message sent is never a tool result cut from its call
        assert msgs[0]["role"] == "user", msgs
        assert not any(x["type"] == "tool_result" for x in blocks_of(msgs[0])), msgs[0]
        for k, m in enumerate(msgs):
            for x in blocks_of(m):
                if x["type"] == "tool_use":
                    nxt = blocks_of(msgs[k + 1])
                    assert any(y["type"] == "tool_result" and y["tool_use_id"] == x["id"] for y in nxt), msgs
    assert truncated >= 1, "the conversation never overflowed the tiny window"


# ---------------------------------------------------------------- an OpenAI-compatible model


def openai_requests(fake):
    r = fake.http.get("/_fake/requests")
    return [q for q in r.json()["requests"] if q.get("path", "").endswith("/chat/completions")]


def test_memory_api_on_an_openai_model(chatd, fake):
    """The same memory API in front of an OpenAI-compatible provider: options and
    tools mapped to its wire format, the tool loop carried across turns."""
    srv = chatd({"OPENAI_BASE_URL": fake.url + "/v1", "OPENAI_API_KEY": "sk-test"})
    c = srv.client
    sid = "oa-tools"
    base = {"session_id": sid, "model": "gpt-4o", "tools": [WEATHER]}
    r = c.post("/v1/chat", json={**base, "seed": 42, "presence_penalty": 0.5, "temperature": 1.5,
                                 "response_format": {"type": "json_object"},
                                 "message": "w " + calls_directive(("get_weather", {"city": "Kyiv"}))})
    assert r.status_code == 200, r.text
    b = r.json()
    # stop_reason is the provider's own word (OpenAI: tool_calls); tool_calls is the same on every provider
    assert b["stop_reason"] == "tool_calls" and b["tool_calls"][0]["input"] == {"city": "Kyiv"}, b
    assert [x["type"] for x in b["content"]] == ["tool_use"], b
    sent = openai_requests(fake)[-1]["body"]
    assert sent["seed"] == 42 and sent["presence_penalty"] == 0.5 and sent["temperature"] == 1.5, sent
    assert sent["response_format"] == {"type": "json_object"}, sent
    assert sent["tools"][0]["function"]["name"] == "get_weather", sent
    cid = b["tool_calls"][0]["id"]
    r = c.post("/v1/chat", json={**base, "tool_results": [{"tool_call_id": cid, "content": "-2 C"}]})
    assert r.status_code == 200, r.text
    assert r.json()["response"] == "Tool results: -2 C", r.text
    msgs = openai_requests(fake)[-1]["body"]["messages"]
    roles = [m["role"] for m in msgs]
    assert roles[-3:] == ["user", "assistant", "tool"], roles
    assert msgs[-2]["tool_calls"][0]["id"] == cid and msgs[-1]["tool_call_id"] == cid, msgs
