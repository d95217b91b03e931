"""
POST /v1/messages and /v1/messages/count_tokens on the wire, below what the
Anthropic SDK shows (tests/anthropic_sdk covers the SDK): the error envelope and
its headers, the anthropic-version rules, x-api-key, the exact SSE framing of a
stream (event: lines matching the data's type, ping events while the provider is
silent), and what reaches the provider.
"""
import json

from helpers import directive, echo

V = {"anthropic-version": "2023-06-01"}
V26 = {"anthropic-version": "2026-10-21"}


def body(text="hi", **kw):
    b = {"model": "claude-sonnet-4-6", "max_tokens": 50, "messages": [{"role": "user", "content": text}]}
    b.update(kw)
    return b


def assert_an_error(r, status, etype, contains=None, code=None):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers["request-id"] == r.headers["x-request-id"]
    j = r.json()
    assert j["type"] == "error", j
    assert set(j) == {"type", "error", "request_id"}, j
    assert j["request_id"] == r.headers["request-id"]
    assert j["error"]["type"] == etype, j
    assert isinstance(j["error"]["message"], str) and j["error"]["message"]
    if contains:
        assert contains in j["error"]["message"], j
    if code:
        assert j["error"]["details"]["error_code"] == code, j
    return j


def sse_events(text):
    """[(event name, data object)] of a raw Anthropic stream; asserts the framing."""
    out = []
    for block in text.split("\n\n"):
        if not block:
            continue
        lines = block.split("\n")
        if all(line.startswith(":") for line in lines):
            out.append((":comment", None))
            continue
        assert lines[0].startswith("event: ") and lines[1].startswith("data: ") and len(lines) == 2, block
        name, data = lines[0][7:], json.loads(lines[1][6:])
        assert data["type"] == name, block
        out.append((name, data))
    return out


def test_version_header_rules(chatd_module, fake):
    s = chatd_module()
    c = s.client
    assert_an_error(c.post("/v1/messages", json=body()), 400, "invalid_request_error", "anthropic-version")
    assert_an_error(c.post("/v1/messages", json=body(), headers={"anthropic-version": "2023-01-01"}), 400,
                    "invalid_request_error", "2023-01-01")
    assert_an_error(c.post("/v1/messages", json=body(temperature=0.2), headers=V26), 400,
                    "invalid_request_error", "temperature: Extra inputs are not permitted")
    assert_an_error(c.post("/v1/messages", json=body(top_k=3), headers=V26), 400,
                    "invalid_request_error", "top_k: Extra inputs are not permitted")
    cited = {"role": "user", "content": [{"type": "text", "text": "x", "citations": [{"type": "char_location"}]}]}
    assert_an_error(c.post("/v1/messages", json=body(messages=[cited]), headers=V26), 400,
                    "invalid_request_error", "citations")
    assert fake.requests() == []
    r = c.post("/v1/messages", json=body("hello", temperature=0.2), headers=V)
    assert r.status_code == 200, r.text
    assert r.json()["content"] == [{"type": "text", "text": echo("hello")}]


def test_refusals_in_anthropic_shape(chatd_module, fake):
    s = chatd_module()
    c = s.client
    assert_an_error(c.post("/v1/messages", json=body(model="nope"), headers=V), 404, "not_found_error", "nope")
    assert_an_error(c.post("/v1/messages", json={"model": "claude-sonnet-4-6", "messages": []}, headers=V), 400,
                    "invalid_request_error", "max_tokens")
    assert_an_error(c.post("/v1/messages", json=body(frobnicate=1), headers=V), 400, "invalid_request_error",
                    "frobnicate: Extra inputs are not permitted")
    assert_an_error(c.post("/v1/messages", json=body(tools=[{"type": "web_search_20250305", "name": "web_search"}]),
                           headers=V), 400, "invalid_request_error", "server tool", code="unsupported_parameter")
    prefill = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert_an_error(c.post("/v1/messages", json=body(messages=prefill), headers=V), 400, "invalid_request_error",
                    "prefill", code="unsupported_parameter")
    bad_image = {"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                          "data": "***"}}]}
    assert_an_error(c.post("/v1/messages", json=body(messages=[bad_image]), headers=V), 400, "invalid_request_error",
                    "messages.0.content[0].source.data")
    doc = {"role": "user", "content": [{"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                                                       "data": "a doc"}}, {"type": "text", "text": "?"}]}
    assert_an_error(c.post("/v1/messages", json=body(model="gpt-4o-mini", messages=[doc]), headers=V), 400,
                    "invalid_request_error", "document blocks", code="unsupported_parameter")
    assert_an_error(c.post("/v1/messages", content=b"{not json", headers=V), 400, "invalid_request_error")
    r = c.get("/v1/messages", headers=V)
    assert_an_error(r, 405, "invalid_request_error")
    assert r.headers["allow"] == "POST"
    # Paths of Anthropic's API that chatd does not serve: 404 in Anthropic's shape.
    assert_an_error(c.post("/v1/messages/batches", headers=V, json={}), 404, "not_found_error", "no route")
    assert fake.requests() == []


def test_keys_from_x_api_key_or_bearer(chatd_module):
    s = chatd_module({"API_TOKEN": "tok-an-1"})
    c = s.client
    j = assert_an_error(c.post("/v1/messages", json=body(), headers=V), 401, "authentication_error", "x-api-key")
    assert j["error"]["details"]["error_code"] == "authentication_error"
    assert_an_error(c.post("/v1/messages", json=body(), headers={**V, "x-api-key": "wrong"}), 401,
                    "authentication_error")
    assert c.post("/v1/messages", json=body(), headers={**V, "x-api-key": "tok-an-1"}).status_code == 200
    assert c.post("/v1/messages", json=body(), headers={**V, "authorization": "Bearer tok-an-1"}).status_code == 200
    # x-api-key is Anthropic's header: the other APIs keep to Authorization.
    assert c.get("/v1/sessions", headers={"x-api-key": "tok-an-1"}).status_code == 401


def test_stream_framing_and_ping_events(chatd_module, fake):
    s = chatd_module({"HEARTBEAT_INTERVAL": "1s", "IDLE_TIMEOUT": "4s"})
    text = directive({"ttft_ms": 2600}) + " slow one"
    with s.client.stream("POST", "/v1/messages", json=body(text, stream=True), headers=V, timeout=20) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["request-id"] == r.headers["x-request-id"]
        raw = b"".join(r.iter_raw()).decode()
    ev = sse_events(raw)
    names = [n for n, _ in ev]
    assert names[0] == "message_start", names
    start = ev[0][1]["message"]
    assert start["id"] == "msg_" + r.headers["x-request-id"]
    assert start["content"] == [] and start["role"] == "assistant" and start["model"] == "claude-sonnet-4-6"
    first_block = names.index("content_block_start")
    assert "ping" in names[1:first_block], names
    core = [n for n in names if n not in ("ping", ":comment")]
    assert core[1] == "content_block_start"
    assert core[-3:] == ["content_block_stop", "message_delta", "message_stop"], core
    assert set(core[2:-3]) == {"content_block_delta"}, core
    deltas = "".join(d["delta"]["text"] for n, d in ev if n == "content_block_delta")
    assert deltas == echo("slow one")
    md = next(d for n, d in ev if n == "message_delta")
    assert md["delta"]["stop_reason"] == "end_turn" and md["delta"]["stop_sequence"] is None
    assert md["usage"]["output_tokens"] > 0 and md["usage"]["input_tokens"] > 0


def test_error_after_start_is_an_error_event(chatd_module, fake):
    s = chatd_module()
    fake.script(queue=[{"reply_words": 5, "fault": "midstream_error", "after": 2}])
    with s.client.stream("POST", "/v1/messages", json=body("x", stream=True), headers=V, timeout=20) as r:
        assert r.status_code == 200
        raw = b"".join(r.iter_raw()).decode()
    ev = sse_events(raw)
    assert ev[-1][0] == "error", ev
    err = ev[-1][1]
    assert err["error"]["type"] in ("overloaded_error", "api_error"), err
    assert "message_stop" not in [n for n, _ in ev]


def test_early_failure_keeps_its_status(chatd_module, fake):
    s = chatd_module()
    fake.script(queue=[{"status": 529}])
    r = s.client.post("/v1/messages", json=body("x", stream=True), headers=V)
    assert_an_error(r, 503, "overloaded_error", code="provider_overloaded")


def test_count_tokens(chatd_module, fake):
    s = chatd_module()
    req = {"system": "abcd", "messages": [{"role": "user", "content": "abcdefgh"}]}
    # An OpenAI-compatible model: chatd's estimate, the provider is not asked.
    r = s.client.post("/v1/messages/count_tokens", headers=V, json={"model": "gpt-4o-mini", **req})
    assert r.status_code == 200, r.text
    assert r.json() == {"input_tokens": 3}
    assert r.headers["x-chatd-token-count"] == "estimate"
    assert r.headers["request-id"]
    assert fake.requests() == []
    # An Anthropic model: forwarded to the provider's count_tokens.
    r = s.client.post("/v1/messages/count_tokens", headers=V, json={"model": "claude-sonnet-4-6", "max_tokens": 9, **req})
    assert r.status_code == 200, r.text
    assert r.json() == {"input_tokens": 3}
    assert r.headers["x-chatd-token-count"] == "provider"
    [q] = fake.requests()
    assert q["path"] == "/v1/messages/count_tokens"
    assert q["body"] == {"model": "claude-sonnet-4-6", "system": "abcd",
                         "messages": [{"role": "user", "content": "abcdefgh"}]}
    assert q["headers"]["anthropic-version"]
    assert q["headers"]["x-api-key"]


def test_count_tokens_provider_down(chatd_module):
    s = chatd_module({"ANTHROPIC_BASE_URL": "http://127.0.0.1:9", "PROVIDER_CONNECT_TIMEOUT": "1s"})
    r = s.client.post("/v1/messages/count_tokens", headers=V, json={
        "model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": "x"}]})
    assert_an_error(r, 502, "api_error", "count_tokens", code="provider_error")


def test_stateless_history_and_system_reach_the_provider(chatd_module, fake):
    s = chatd_module()
    msgs = [{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"},
            {"role": "user", "content": [{"type": "text", "text": "three"}]}]
    r = s.client.post("/v1/messages", headers=V, json=body(messages=msgs, system=[{"type": "text", "text": "sys"}],
                                                            metadata={"user_id": "u-1"}))
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["content"][0]["text"] == echo("three")
    assert "session_id" not in j
    [q] = fake.requests()
    assert q["body"]["system"] == "sys" or q["body"]["system"][0]["text"] == "sys"
    texts = json.dumps(q["body"]["messages"])
    assert "one" in texts and "two" in texts and "three" in texts
    # Stateless: nothing stored.
    assert s.client.get("/v1/sessions").json()["data"] == []


def test_stream_thinking_text_and_tool_blocks(chatd_module, fake):
    s = chatd_module()
    tools = [{"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    text = directive({"reply": "Let me check.", "thinking": "hmm let me see",
                      "tool_calls": [{"name": "get_weather", "input": {"city": "Paris"}}]}) + " go"
    with s.client.stream("POST", "/v1/messages", headers=V, timeout=20,
                         json=body(text, stream=True, tools=tools)) as r:
        assert r.status_code == 200
        ev = [e for e in sse_events(b"".join(r.iter_raw()).decode()) if e[0] != "ping"]
    starts = [d["content_block"]["type"] for n, d in ev if n == "content_block_start"]
    assert starts == ["thinking", "text", "tool_use"], starts
    # Blocks never interleave; a thinking block's signature comes just before its stop.
    seq = [(n, d.get("index"), (d.get("delta") or {}).get("type")) for n, d in ev]
    stop0 = seq.index(("content_block_stop", 0, None))
    assert seq[stop0 - 1] == ("content_block_delta", 0, "signature_delta"), seq
    assert seq.index(("content_block_start", 1, None)) == stop0 + 1
    args = "".join(d["delta"]["partial_json"] for n, d in ev
                   if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta")
    assert json.loads(args) == {"city": "Paris"}
    md = next(d for n, d in ev if n == "message_delta")
    assert md["delta"]["stop_reason"] == "tool_use"


def test_stream_replay_of_a_session_turn(chatd_module, fake):
    s = chatd_module()
    text = directive({"reply": "Sure.", "thinking": "ok"}) + " go"
    h = {**V, "X-Session-Id": "an-replay", "Idempotency-Key": "k-1"}
    streams = []
    for _ in range(2):
        with s.client.stream("POST", "/v1/messages", headers=h, timeout=20, json=body(text, stream=True)) as r:
            assert r.status_code == 200
            streams.append((r.headers.get("idempotent-replayed"), sse_events(b"".join(r.iter_raw()).decode())))
    assert streams[0][0] is None and streams[1][0] == "true"
    assert len(fake.requests()) == 1

    def final(ev):
        blocks, sigs = {}, {}
        for n, d in ev:
            if n == "content_block_start":
                blocks[d["index"]] = dict(d["content_block"])
            elif n == "content_block_delta":
                dl, b = d["delta"], blocks[d["index"]]
                if dl["type"] == "text_delta":
                    b["text"] += dl["text"]
                elif dl["type"] == "thinking_delta":
                    b["thinking"] += dl["thinking"]
                elif dl["type"] == "signature_delta":
                    sigs[d["index"]] = dl["signature"]
        for i, sig in sigs.items():
            blocks[i]["signature"] = sig
        return [blocks[i] for i in sorted(blocks)]
    first, again = final(streams[0][1]), final(streams[1][1])
    assert first == again, (first, again)
    assert first[0]["type"] == "thinking" and first[0]["thinking"] == "ok" and first[0]["signature"]
    assert first[1] == {"type": "text", "text": "Sure."}


def test_fallback_before_the_first_byte(chatd_module, fake, tmp_path):
    mf = tmp_path / "models.json"
    mf.write_text(json.dumps({"models": [
        {"name": "primary-a", "provider": "anthropic", "model_id": "claude-a", "context_window": 200000,
         "max_output": 4096, "fallbacks": ["backup-b"],
         "price": {"input": 3, "output": 15, "cache_write": 3.75, "cache_read": 0.3}},
        {"name": "backup-b", "provider": "openai", "model_id": "gpt-b", "context_window": 128000,
         "max_output": 4096, "price": {"input": 0.15, "output": 0.6, "cache_write": 0.15, "cache_read": 0.075}}]}))
    s = chatd_module({"MODELS_FILE": str(mf), "OPENAI_BASE_URL": fake.url + "/v1", "OPENAI_API_KEY": "sk-oa-1"})
    for stream in (False, True):
        fake.reset()
        fake.script(queue=[{"status": 529}])
        with s.client.stream("POST", "/v1/messages", headers=V, timeout=20,
                             json=body("help", model="primary-a", stream=stream)) as r:
            assert r.status_code == 200
            raw = b"".join(r.iter_raw()).decode()
        if stream:
            ev = sse_events(raw)
            assert "".join(d["delta"]["text"] for n, d in ev if n == "content_block_delta") == echo("help")
            assert ev[-1][0] == "message_stop"
            # message_start names the model that answers, not the one that failed.
            assert ev[0][0] == "message_start" and ev[0][1]["message"]["model"] == "backup-b", ev[0]
        else:
            j = json.loads(raw)
            assert j["model"] == "backup-b", j
            assert j["content"][0]["text"] == echo("help")
        log = fake.http.get("/_fake/requests").json()["requests"]
        assert [(q["path"], q["body"]["model"]) for q in log] == [("/v1/messages", "claude-a"),
                                                                  ("/v1/chat/completions", "gpt-b")]


def test_access_log_and_metrics(chatd_module, fake):
    s = chatd_module()
    r = s.client.post("/v1/messages", headers=V, json=body("log me"))
    assert r.status_code == 200
    [line] = s.wait_request_log(r.headers["x-request-id"])
    assert line["path"] == "/v1/messages" and line["status"] == 200, line
    assert line["model"] == "claude-sonnet-4-6"
    assert line["tokens"]["input_tokens"] > 0 and line["cost_micros"] > 0, line
    r = s.client.post("/v1/messages", headers=V, json=body(model="nope"))
    [line] = s.wait_request_log(r.headers["x-request-id"])
    assert line["status"] == 404 and line["error_type"] == "not_found_error", line
    text = s.client.get("/metrics").text
    assert 'route="/v1/messages"' in text


def test_unsupported_option_refused_or_dropped(chatd_module, fake):
    b = body("hi", model="gpt-4o-mini", thinking={"type": "enabled", "budget_tokens": 1024})
    oa = {"OPENAI_BASE_URL": fake.url + "/v1", "OPENAI_API_KEY": "sk-oa-1"}
    s = chatd_module(oa)
    r = s.client.post("/v1/messages", headers=V, json=b)
    j = assert_an_error(r, 400, "invalid_request_error", "gpt-4o-mini", code="unsupported_parameter")
    assert "thinking" in j["error"]["message"]
    assert fake.requests() == [] and fake.http.get("/_fake/requests").json()["requests"] == []
    s = chatd_module({**oa, "DROP_UNSUPPORTED_PARAMS": "on"})
    r = s.client.post("/v1/messages", headers=V, json=b)
    assert r.status_code == 200, r.text
    assert "thinking" in r.headers["x-chatd-dropped-params"]
    assert r.json()["content"][0]["text"] == echo("hi")


def test_token_limit(chatd_module, fake):
    s = chatd_module({"TOKEN_LIMIT": "20/minute"})
    r = s.client.post("/v1/messages", headers=V, json=body("a message long enough to spend the twenty tokens " * 2))
    assert r.status_code == 200, r.text
    r = s.client.post("/v1/messages", headers=V, json=body("again"))
    assert_an_error(r, 429, "rate_limit_error", "TOKEN_LIMIT", code="rate_limited")
    assert int(r.headers["retry-after"]) >= 1
    assert len(fake.requests()) == 1


def test_api_keys_through_x_api_key(chatd):
    import re
    import subprocess
    import conftest
    s = chatd({"AUTH_MODE": "keys", "API_TOKEN": "admin-tok-an", "AUTH_FAILURE_LIMIT": "off"})

    def create(name):
        p = subprocess.run([conftest.CHATD_BIN, "keys", "create", "--name", name], env=s.env, capture_output=True,
                           text=True, timeout=20)
        assert p.returncode == 0, p
        return re.search(r"secret:\s*(chatd_[0-9a-f]{48})", p.stdout).group(1)
    alice, bob = create("alice-an"), create("bob-an")
    c = s.client
    h = {**V, "X-Session-Id": "an-owned"}
    assert c.post("/v1/messages", headers={**h, "x-api-key": alice}, json=body("mine")).status_code == 200
    # Another key's session looks absent, through either header.
    r = c.post("/v1/messages", headers={**h, "x-api-key": bob}, json=body("theirs"))
    assert_an_error(r, 404, "not_found_error")
    r = c.post("/v1/messages", headers={**h, "authorization": "Bearer " + bob}, json=body("theirs"))
    assert_an_error(r, 404, "not_found_error")
    assert_an_error(c.post("/v1/messages", headers={**V, "x-api-key": "chatd_" + "0" * 48}, json=body()), 401,
                    "authentication_error")
    # The session is alice's: her own listing shows it.
    got = c.get("/v1/sessions", headers={"Authorization": "Bearer " + alice}).json()["data"]
    assert [x["id"] for x in got] == ["an-owned"]


def test_document_blocks_reach_an_anthropic_model_intact(chatd_module, fake):
    s = chatd_module()
    doc = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "the doc"},
           "title": "T", "context": "c", "citations": {"enabled": True}, "cache_control": {"type": "ephemeral"}}
    for headers in (V, {**V, "X-Session-Id": "an-doc"}):
        fake.reset()
        r = s.client.post("/v1/messages", headers=headers,
                          json=body(messages=[{"role": "user", "content": [doc, {"type": "text", "text": "sum"}]}]))
        assert r.status_code == 200, r.text
        [q] = fake.requests()
        last = q["body"]["messages"][-1]["content"]
        assert last[0] == doc, last
        assert last[1]["type"] == "text" and last[1]["text"] == "sum"
