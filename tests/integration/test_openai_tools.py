"""
/v1/chat/completions on the wire, beyond what the SDKs show: the exact chunk
sequence of a streamed reply with thinking, text and several tool calls (from
Anthropic blocks, and from an OpenAI-compatible server that interleaves the
pieces of its calls), the error envelope of unknown, refused and dropped fields,
and a tool loop with server-side memory that survives a restart of chatd (the
pending calls are in the database, not in the process).
"""
import json

import pytest

OPENAI_ENV = {"OPENAI_API_KEY": "sk-test"}
CLAUDE = "claude-sonnet-4-6"
GPT = "gpt-4o-mini"
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather",
                                             "parameters": {"type": "object",
                                                            "properties": {"city": {"type": "string"}}}}}


@pytest.fixture(scope="module")
def server(chatd_module, fake):
    return chatd_module({**OPENAI_ENV, "OPENAI_BASE_URL": fake.url + "/v1"})


def upstream(fake):
    """Every provider request since the last reset (both APIs), oldest first."""
    r = fake.http.get("/_fake/requests")
    assert r.status_code == 200, r.text
    return [q for q in r.json()["requests"] if q["path"].startswith("/v1/")]


def stream(client, body, headers=None):
    """POSTs a streaming completion; returns (response, [chunk objects], raw events)."""
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}, headers=headers or {},
                       timeout=20) as r:
        raw = b"".join(r.iter_raw()).decode()
    events = [e for e in raw.split("\n\n") if e and not e.startswith(":")]
    assert r.status_code == 200, raw
    assert events[-1] == "data: [DONE]", events[-3:]
    chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
    return r, chunks, events


def deltas(chunks):
    return [c["choices"][0]["delta"] for c in chunks if c["choices"]]


def check_tool_pieces(chunks, names):
    """The tool_calls pieces: per call a first piece (index, id, type, name, empty
    arguments), then only argument pieces of that index, calls in order, whole.
    Returns [(id, name, parsed arguments)]."""
    calls = []
    for d in deltas(chunks):
        for p in d.get("tool_calls", []):
            if "id" in p:
                assert p["type"] == "function" and p["function"]["arguments"] == "", p
                assert p["index"] == len(calls), (p, calls)
                calls.append([p["id"], p["function"]["name"], ""])
            else:
                assert set(p) == {"index", "function"} and set(p["function"]) == {"arguments"}, p
                assert p["index"] == len(calls) - 1, "a piece of an earlier call after a later call began"
                calls[-1][2] += p["function"]["arguments"]
    assert [c[1] for c in calls] == names
    return [(i, n, json.loads(a)) for i, n, a in calls]


@pytest.mark.parametrize("model", [CLAUDE, GPT])
def test_stream_order_thinking_text_calls(server, fake, model):
    # Anthropic: a thinking block; OpenAI-compatible: reasoning_content (tests/fake_llm/README.md)
    fake.script(queue=[{"thinking": "First the weather.", "reply": "Checking two cities.",
                        "tool_calls": [{"name": "get_weather", "input": {"city": "Paris"}},
                                       {"name": "get_weather", "input": {"city": "Rome"}}]}])
    r, chunks, _ = stream(server.client, {"model": model, "tools": [WEATHER], "stream_options": {"include_usage": True},
                                          "messages": [{"role": "user", "content": "Weather in Paris and Rome?"}]})
    # one id, one created, one model on every chunk
    assert len({(c["id"], c["created"], c["model"], c["object"]) for c in chunks}) == 1
    ds = deltas(chunks)
    assert ds[0] == {"role": "assistant", "content": "", "refusal": None}
    kinds = []
    for d in ds[1:]:
        k = "reasoning" if "reasoning_content" in d else "text" if d.get("content") else \
            "tool" if "tool_calls" in d else "end"
        if not kinds or kinds[-1] != k:
            kinds.append(k)
    assert kinds == ["reasoning", "text", "tool", "end"], kinds
    assert "".join(d.get("reasoning_content", "") for d in ds) == "First the weather."
    assert "".join(d.get("content") or "" for d in ds) == "Checking two cities."
    calls = check_tool_pieces(chunks, ["get_weather", "get_weather"])
    assert [c[2] for c in calls] == [{"city": "Paris"}, {"city": "Rome"}]
    assert calls[0][0] != calls[1][0]
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finish) == 1 and finish[0]["choices"][0]["finish_reason"] == "tool_calls"
    assert finish[0]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert all(c["usage"] is None for c in chunks[:-1])


def test_interleaved_openai_tool_pieces_come_out_whole(server, fake):
    """An OpenAI-compatible server may interleave the pieces of several calls;
    the client still gets each call whole, in order."""
    fake.script(queue=[{"interleave_tools": True,
                        "tool_calls": [{"name": "get_weather", "input": {"city": "Oslo", "unit": "celsius"}},
                                       {"name": "get_weather", "input": {"city": "Bergen", "unit": "celsius"}},
                                       {"name": "get_weather", "input": {"city": "Tromso", "unit": "celsius"}}]}])
    _, chunks, _ = stream(server.client, {"model": GPT, "tools": [WEATHER],
                                          "messages": [{"role": "user", "content": "Three cities"}]})
    calls = check_tool_pieces(chunks, ["get_weather"] * 3)
    assert [c[2]["city"] for c in calls] == ["Oslo", "Bergen", "Tromso"]
    # the reply opened with a call: the role came with it, content null
    first = deltas(chunks)[0]
    assert first["role"] == "assistant" and first["content"] is None and first["tool_calls"][0]["index"] == 0


@pytest.mark.parametrize("model", [CLAUDE, GPT])
def test_non_streaming_message_shape(server, fake, model):
    fake.script(queue=[{"tool_calls": [{"name": "get_weather", "input": {"city": "Lima"}}]}])
    r = server.client.post("/v1/chat/completions", json={
        "model": model, "tools": [WEATHER], "messages": [{"role": "user", "content": "Lima?"}]})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    msg = choice["message"]
    assert set(msg) == {"role", "content", "refusal", "tool_calls"}, msg
    assert msg["content"] is None and msg["refusal"] is None
    [call] = msg["tool_calls"]
    assert set(call) == {"id", "type", "function"} and call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Lima"}'}
    assert choice["finish_reason"] == "tool_calls" and choice["logprobs"] is None


def test_error_envelopes(server, fake):
    c = server.client
    m = [{"role": "user", "content": "x"}]
    r = c.post("/v1/chat/completions", json={"model": CLAUDE, "messages": m, "temprature": 0.1})
    assert r.status_code == 400
    assert r.json() == {"error": {"message": r.json()["error"]["message"], "type": "invalid_request_error",
                                  "param": None, "code": "unknown_parameter"}}
    assert "Unrecognized request argument supplied: temprature" in r.json()["error"]["message"]
    r = c.post("/v1/chat/completions", json={"model": CLAUDE, "messages": m, "prediction": {"type": "content",
                                                                                           "content": "x"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prediction"
    assert r.json()["error"]["code"] == "unsupported_parameter"
    r = c.post("/v1/chat/completions", json={"model": CLAUDE, "messages": m, "seed": 1})
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "seed" and err["code"] == "unsupported_parameter", err
    assert CLAUDE in err["message"]
    r = c.post("/v1/chat/completions", json={"model": CLAUDE, "messages": m, "temperature": 3})
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "temperature" and err["code"] == "invalid_value", err
    assert upstream(fake) == []


def test_dropped_params_header_and_log(chatd, fake):
    s = chatd({**OPENAI_ENV, "OPENAI_BASE_URL": fake.url + "/v1", "DROP_UNSUPPORTED_PARAMS": "on"})
    r = s.client.post("/v1/chat/completions", json={"model": CLAUDE, "seed": 7, "web_search_options": {},
                                                    "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200, r.text
    # one header line names every dropped field: those no provider takes, then those the model refuses
    assert r.headers.get_list("x-chatd-dropped-params") == ["web_search_options,seed"], r.headers
    [q] = upstream(fake)
    assert "seed" not in q["body"]
    log = s.wait_request_log(r.headers["x-request-id"])
    assert log and log[0].get("dropped_params") == "web_search_options,seed", log
    # a field the model takes is not dropped
    r = s.client.post("/v1/chat/completions", json={"model": GPT, "seed": 7,
                                                    "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200 and "x-chatd-dropped-params" not in r.headers


@pytest.mark.parametrize("model", [CLAUDE, GPT])
def test_memory_tool_loop_over_a_restart(chatd, fake, model):
    s = chatd({**OPENAI_ENV, "OPENAI_BASE_URL": fake.url + "/v1"})
    h = {"X-Session-Id": f"oa-restart-{model}"}
    fake.script(queue=[{"tool_calls": [{"name": "get_weather", "input": {"city": "Kyiv"}}]}])
    r = s.client.post("/v1/chat/completions", headers=h, json={
        "model": model, "tools": [WEATHER], "messages": [{"role": "user", "content": "Kyiv?"}]})
    assert r.status_code == 200, r.text
    [call] = r.json()["choices"][0]["message"]["tool_calls"]
    s.restart()
    # a plain message while the call is pending is refused
    r = s.client.post("/v1/chat/completions", headers=h, json={
        "model": model, "tools": [WEATHER], "messages": [{"role": "user", "content": "never mind"}]})
    assert r.status_code == 400, r.text
    # the result continues the session, streamed this time
    _, chunks, _ = stream(s.client, {"model": model, "tools": [WEATHER], "messages": [
        {"role": "tool", "tool_call_id": call["id"], "content": "windy"}]}, headers=h)
    assert "".join(d.get("content") or "" for d in deltas(chunks)) == "Tool results: windy"
    # the history holds the call and its result
    r = s.client.get(f"/v1/sessions/{h['X-Session-Id']}/messages")
    assert r.status_code == 200, r.text
    msgs = r.json()["data"] if "data" in r.json() else r.json()["messages"]
    assert len(msgs) == 4, msgs
    blob = json.dumps(msgs)
    assert call["id"] in blob and "windy" in blob


@pytest.mark.parametrize("model", [CLAUDE, GPT])
def test_stop_sequence_streamed(server, fake, model):
    fake.script(queue=[{"reply": "one two STOP three"}])
    _, chunks, _ = stream(server.client, {"model": model, "stop": "STOP",
                                          "messages": [{"role": "user", "content": "count"}]})
    assert "".join(d.get("content") or "" for d in deltas(chunks)) == "one two "
    [finish] = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finish["finish_reason"] == "stop"
    # Anthropic says which sequence matched (reported as vLLM does); OpenAI does not
    assert finish.get("stop_reason") == ("STOP" if model == CLAUDE else None)
    [q] = upstream(fake)
    assert (q["body"]["stop_sequences"] if model == CLAUDE else q["body"]["stop"]) == ["STOP"]
