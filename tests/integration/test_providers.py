"""
test_providers.py: model routing across providers (Anthropic Messages and
OpenAI-compatible Chat Completions), the request body each provider gets as
seen at the fake, usage parsing for every OpenAI-compatible variant the fake
imitates (openai, groq, vllm, ollama, llamacpp), a stream cut before its usage
chunk (usage unknown, not zero), mid-stream errors, and model fallbacks.

The fake's "openai" and "groq" variants require a key, so the servers here set
OPENAI_API_KEY unless a test is about running without one. The stream cut
between the finish chunk and the usage chunk has no knob in the fake (its
truncate/reset faults fire before the finish chunk), so that case is served by
a small canned upstream in this file (CannedUpstream).
"""
import json
import math
import socket
import threading

import pytest

from helpers import DEFAULT_SYSTEM, assert_v1_error, echo, stream_v1
from rawhttp import read_request

OPENAI_KEY = "sk-openai-test-7c1d"
OPENAI_MODEL = "gpt-4o-mini"
ANTHROPIC_MODEL = "claude-sonnet-4-6"
VARIANTS = ["openai", "groq", "vllm", "ollama", "llamacpp"]


# --------------------------------------------------------------------------- helpers


def all_requests(fake):
    """Every provider request the fake received since its reset (both APIs), oldest first."""
    r = fake.http.get("/_fake/requests")
    assert r.status_code == 200, r.text
    return [q for q in r.json()["requests"] if q["path"].startswith("/v1/")]


def prompt_tokens(body):
    """The fake's OpenAI prompt_tokens: ceil(chars of every message content / 4)."""
    return math.ceil(sum(len(m["content"]) for m in body["messages"]) / 4)


def assistant_messages(client, sid):
    r = client.get(f"/v1/sessions/{sid}/messages")
    assert r.status_code == 200, r.text
    return [m for m in r.json()["data"] if m["role"] == "assistant"]


def write_models_file(tmp_path, doc):
    p = tmp_path / "models.json"
    p.write_text(json.dumps(doc))
    return str(p)


@pytest.fixture(scope="module")
def mixed(chatd_module, fake):
    """Anthropic (the fake) plus the openai provider pointed at the fake's /v1."""
    return chatd_module({"OPENAI_BASE_URL": fake.url + "/v1", "OPENAI_API_KEY": OPENAI_KEY})


@pytest.fixture
def c(mixed):
    return mixed.client


# --------------------------------------------------------------------------- routing and bodies


def test_openai_model_goes_to_chat_completions(c, fake):
    r = c.post("/v1/chat", json={"message": "hi there", "session_id": "rt-oa-1", "model": OPENAI_MODEL,
                                 "system_prompt": "Be brief."})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == OPENAI_MODEL
    assert body["response"] == echo("hi there")
    # The provider's own finish_reason is kept.
    assert body["stop_reason"] == "stop"
    reqs = all_requests(fake)
    assert len(reqs) == 1
    q = reqs[0]
    assert q["method"] == "POST" and q["path"] == "/v1/chat/completions"
    assert q["body"] == {
        "model": OPENAI_MODEL,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi there"}],
        "max_tokens": 1024,
        "stream": False,
    }
    assert q["headers"].get("authorization") == "Bearer " + OPENAI_KEY
    assert "x-api-key" not in q["headers"] and "anthropic-version" not in q["headers"]
    assert body["usage"]["input_tokens"] == prompt_tokens(q["body"])
    assert body["usage"]["output_tokens"] == len(echo("hi there").split())


def test_openai_model_streaming_body_and_events(c, fake):
    resp, sse = stream_v1(c, {"message": "stream me please", "session_id": "rt-oa-2", "model": OPENAI_MODEL})
    assert resp.status_code == 200 and sse is not None, resp.text
    assert sse.names()[0] == "start" and sse.names()[-1] == "done", sse.names()
    assert sse.data("start")[0]["model"] == OPENAI_MODEL
    assert sse.deltas_text() == echo("stream me please")
    done = sse.data("done")[0]
    assert done["model"] == OPENAI_MODEL and done["stop_reason"] == "stop"
    (q,) = all_requests(fake)
    assert q["path"] == "/v1/chat/completions"
    assert q["body"]["stream"] is True
    assert q["body"]["stream_options"] == {"include_usage": True}
    assert q["body"]["messages"][0] == {"role": "system", "content": DEFAULT_SYSTEM}
    assert "system" not in q["body"] and "max_tokens" in q["body"]
    assert done["usage"]["input_tokens"] == prompt_tokens(q["body"])
    assert done["usage"]["output_tokens"] == len(echo("stream me please").split())


def test_anthropic_model_goes_to_messages(c, fake):
    r = c.post("/v1/chat", json={"message": "hello", "session_id": "rt-an-1", "model": ANTHROPIC_MODEL})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == ANTHROPIC_MODEL
    (q,) = all_requests(fake)
    assert q["path"] == "/v1/messages"
    assert q["body"]["model"] == ANTHROPIC_MODEL
    assert q["body"]["system"] == DEFAULT_SYSTEM
    assert "authorization" not in q["headers"]


def test_session_remembers_its_model(c, fake):
    sid = "rt-remember"
    assert c.post("/v1/chat", json={"message": "one", "session_id": sid, "model": OPENAI_MODEL}).status_code == 200
    r = c.post("/v1/chat", json={"message": "two", "session_id": sid})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == OPENAI_MODEL
    resp, sse = stream_v1(c, {"message": "three", "session_id": sid})
    assert sse.data("done")[0]["model"] == OPENAI_MODEL
    reqs = all_requests(fake)
    assert [q["path"] for q in reqs] == ["/v1/chat/completions"] * 3
    assert reqs[1]["body"]["messages"] == [
        {"role": "system", "content": DEFAULT_SYSTEM},
        {"role": "user", "content": "one"}, {"role": "assistant", "content": echo("one")},
        {"role": "user", "content": "two"}]
    s = c.get(f"/v1/sessions/{sid}").json()
    assert s["model"] == OPENAI_MODEL
    assert [m["model"] for m in assistant_messages(c, sid)] == [OPENAI_MODEL] * 3
    # Naming another model switches the session; the history goes along.
    r = c.post("/v1/chat", json={"message": "four", "session_id": sid, "model": ANTHROPIC_MODEL})
    assert r.status_code == 200 and r.json()["model"] == ANTHROPIC_MODEL
    q = all_requests(fake)[-1]
    assert q["path"] == "/v1/messages" and len(q["body"]["messages"]) == 7
    assert c.get(f"/v1/sessions/{sid}").json()["model"] == ANTHROPIC_MODEL


@pytest.mark.parametrize("path", ["/v1/chat", "/v1/chat/stream"])
def test_unknown_model_is_400(c, fake, path):
    r = c.post(path, json={"message": "x", "session_id": "rt-unknown", "model": "gpt-17-ultra"})
    assert_v1_error(r, 400, "invalid_request_error", "gpt-17-ultra")
    assert all_requests(fake) == []
    assert c.get("/v1/sessions/rt-unknown").status_code == 404


def test_provider_without_key_is_503_naming_the_variable(chatd, fake):
    # Default OPENAI_BASE_URL (api.openai.com) and no key: not configured.
    s = chatd({"OPENAI_API_KEY": None, "OPENAI_BASE_URL": None, "GROQ_API_KEY": None})
    for model, var in ((OPENAI_MODEL, "OPENAI_API_KEY"), ("llama-3.3-70b-versatile", "GROQ_API_KEY")):
        r = s.client.post("/v1/chat", json={"message": "x", "session_id": "nokey", "model": model})
        assert_v1_error(r, 503, "provider_not_configured", var)
        r = s.client.post("/v1/chat/stream", json={"message": "x", "session_id": "nokey", "model": model})
        assert_v1_error(r, 503, "provider_not_configured", var)
    models = {m["id"]: m for m in s.client.get("/v1/models").json()["data"]}
    assert models[OPENAI_MODEL]["available"] is False
    assert models["llama-3.3-70b-versatile"]["available"] is False
    assert models[ANTHROPIC_MODEL]["available"] is True
    assert all_requests(fake) == []
    # Without the Anthropic key the default model is the one missing.
    s2 = chatd({"ANTHROPIC_API_KEY": None})
    r = s2.client.post("/v1/chat", json={"message": "x", "session_id": "nokey2"})
    assert_v1_error(r, 503, "provider_not_configured", "ANTHROPIC_API_KEY")


def test_non_default_base_url_needs_no_key(chatd, fake):
    s = chatd({"OPENAI_BASE_URL": fake.url + "/v1", "OPENAI_API_KEY": None})
    models = {m["id"]: m for m in s.client.get("/v1/models").json()["data"]}
    assert models[OPENAI_MODEL]["available"] is True
    fake.script(default={"variant": "vllm"})  # vLLM runs without a key
    r = s.client.post("/v1/chat", json={"message": "local", "session_id": "nokey-local", "model": OPENAI_MODEL})
    assert r.status_code == 200, r.text
    (q,) = all_requests(fake)
    assert "authorization" not in q["headers"]


def test_custom_provider_from_models_file(chatd, fake, tmp_path):
    mf = write_models_file(tmp_path, {
        "providers": {"mine": {"type": "openai", "base_url": fake.url + "/v1/", "api_key_env": "MINE_KEY",
                               "max_tokens_field": "max_completion_tokens"}},
        "models": [{"name": "my-model", "provider": "mine", "model_id": "upstream-id-7",
                    "context_window": 8192, "max_output": 512,
                    "price": {"input": 1, "output": 2, "cache_write": 1, "cache_read": 0.5}}],
    })
    s = chatd({"MODELS_FILE": mf, "MINE_KEY": "sk-mine-42"})
    r = s.client.post("/v1/chat", json={"message": "custom", "session_id": "custom-1", "model": "my-model"})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "my-model"
    resp, sse = stream_v1(s.client, {"message": "custom again", "session_id": "custom-1"})
    assert sse.data("done")[0]["model"] == "my-model"
    reqs = all_requests(fake)
    assert len(reqs) == 2
    for q in reqs:
        assert q["path"] == "/v1/chat/completions"
        b = q["body"]
        assert b["model"] == "upstream-id-7"
        # MAX_TOKENS 1024 capped to the model's max_output, under the provider's field name.
        assert b["max_completion_tokens"] == 512 and "max_tokens" not in b, b
        assert q["headers"]["authorization"] == "Bearer sk-mine-42"
    m = {x["id"]: x for x in s.client.get("/v1/models").json()["data"]}["my-model"]
    assert m["provider"] == "mine" and m["model_id"] == "upstream-id-7" and m["available"] is True


# --------------------------------------------------------------------------- usage per variant


def _expected_usage(variant, prompt, completion, cached):
    """chatd's usage (Anthropic meaning: input = uncached) for what the fake reports."""
    if variant == "openai":
        return {"input_tokens": prompt - cached, "output_tokens": completion,
                "cache_read_input_tokens": cached, "cache_creation_input_tokens": None}
    # The others report no prompt_tokens_details: cache reads unknown.
    return {"input_tokens": prompt, "output_tokens": completion,
            "cache_read_input_tokens": None, "cache_creation_input_tokens": None}


@pytest.mark.parametrize("streaming", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_usage_parsed_for_each_variant(c, fake, variant, streaming):
    sid = f"usage-{variant}-{int(streaming)}"
    prompt, completion, cached = 4321, 77, 321
    forced = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if variant == "openai":
        forced["prompt_tokens_details"] = {"cached_tokens": cached}
    fake.script(default={"variant": variant, "usage": forced})
    body = {"message": "count me", "session_id": sid, "model": OPENAI_MODEL}
    if streaming:
        resp, sse = stream_v1(c, body)
        assert sse is not None and sse.names()[-1] == "done", (resp.status_code, resp.text if sse is None else sse.names())
        assert sse.deltas_text() == echo("count me")
        got = sse.data("done")[0]["usage"]
    else:
        r = c.post("/v1/chat", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["response"] == echo("count me")
        got = r.json()["usage"]
    want = _expected_usage(variant, prompt, completion, cached)
    assert got == want, (variant, got)
    (stored,) = assistant_messages(c, sid)
    assert stored["usage"] == want
    # gpt-4o-mini: $0.15 input, $0.60 output, $0.075 cache read per Mtok (micro-dollars per token).
    reads = cached if variant == "openai" else 0
    micros = (want["input_tokens"] * 150000 + completion * 600000 + reads * 75000 + 500000) // 1000000
    assert stored["cost"]["micros"] == micros
    (q,) = all_requests(fake)
    assert q["body"]["stream"] is streaming


@pytest.mark.parametrize("variant", VARIANTS)
def test_default_usage_counts_each_variant(c, fake, variant):
    """Without forced numbers: the fake's own counts arrive intact."""
    fake.script(default={"variant": variant})
    resp, sse = stream_v1(c, {"message": "natural counts here", "session_id": f"nat-{variant}",
                              "model": OPENAI_MODEL})
    assert sse is not None and sse.names()[-1] == "done", sse and sse.names()
    (q,) = all_requests(fake)
    u = sse.data("done")[0]["usage"]
    assert u["input_tokens"] == prompt_tokens(q["body"])
    assert u["output_tokens"] == len(echo("natural counts here").split())


# --------------------------------------------------------------------------- a stream cut before its usage chunk


class CannedUpstream:
    """A one-route OpenAI-compatible upstream with hand-written streams.

    Serves POST /v1/chat/completions with the bytes of `self.mode`, then closes
    the connection. Raw sockets so that the exact end of the response is ours.
    """

    FINISHED_NO_USAGE = "finished_no_usage"        # finish chunk, terminal chunk, no usage, no [DONE]
    FINISHED_THEN_CLOSE = "finished_then_close"    # finish chunk, then the socket closes inside a chunk
    EVENT_ERROR = "event_error"                    # `event: error` form of an in-stream error
    GROQ_X_USAGE = "groq_x_usage"                  # usage only in the finish chunk's x_groq.usage, then [DONE]

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.mode = self.FINISHED_NO_USAGE
        self.bodies = []
        self.stop_flag = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @staticmethod
    def _chunk(delta, finish=None, **extra):
        o = {"id": "chatcmpl-canned", "object": "chat.completion.chunk", "created": 1, "model": "canned",
             "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}
        return "data: " + json.dumps(o) + "\n\n"

    def _events(self, stream):
        if not stream:
            return None
        ev = [self._chunk({"role": "assistant", "content": ""}), self._chunk({"content": "Partial "}),
              self._chunk({"content": "answer"})]
        if self.mode == self.EVENT_ERROR:
            ev.append('event: error\ndata: {"error":{"message":"upstream exploded","type":"server_error"}}\n\n')
        elif self.mode == self.GROQ_X_USAGE:
            ev.append(self._chunk({}, "stop", x_groq={"id": "req_canned", "usage": {
                "queue_time": 0.01, "prompt_tokens": 812, "prompt_time": 0.001, "completion_tokens": 34,
                "completion_time": 0.01, "total_tokens": 846, "total_time": 0.011}}))
            ev.append("data: [DONE]\n\n")
        else:
            ev.append(self._chunk({}, "stop"))
        return ev

    def _serve(self):
        while not self.stop_flag:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    self._handle(conn)
                except OSError:
                    pass

    def _handle(self, conn):
        req = read_request(conn)
        if req is None:
            return
        body = json.loads(req[1])
        self.bodies.append(body)
        events = self._events(body.get("stream") is True)
        if events is None:
            payload = json.dumps({"id": "x", "object": "chat.completion", "created": 1, "model": "canned",
                                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                               "finish_reason": "stop"}]}).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                         b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        for e in events:
            b = e.encode()
            conn.sendall(b"%x\r\n%s\r\n" % (len(b), b))
        if self.mode == self.FINISHED_THEN_CLOSE:
            conn.sendall(b"40\r\nda")  # a chunk that never completes
            return
        conn.sendall(b"0\r\n\r\n")

    def close(self):
        self.stop_flag = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() of the serving thread
        except OSError:
            pass
        self.sock.close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def canned():
    u = CannedUpstream()
    yield u
    u.close()


@pytest.fixture(scope="module")
def canned_server(chatd_module, canned):
    return chatd_module({"OPENAI_BASE_URL": canned.url, "OPENAI_API_KEY": None})


@pytest.mark.parametrize("mode", [CannedUpstream.FINISHED_NO_USAGE, CannedUpstream.FINISHED_THEN_CLOSE])
def test_stream_cut_before_usage_chunk_records_unknown_usage(canned_server, canned, mode):
    canned.mode = mode
    sid = f"cut-{mode}"
    c = canned_server.client
    resp, sse = stream_v1(c, {"message": "cut me", "session_id": sid, "model": OPENAI_MODEL})
    assert resp.status_code == 200
    assert sse is not None and sse.names()[-1] == "done", sse and sse.events
    assert sse.deltas_text() == "Partial answer"
    assert canned.bodies[-1]["stream_options"] == {"include_usage": True}
    unknown = {"input_tokens": None, "output_tokens": None, "cache_read_input_tokens": None,
               "cache_creation_input_tokens": None}
    done = sse.data("done")[0]
    assert done["usage"] == unknown, done
    assert done["cost"]["micros"] == 0
    (stored,) = assistant_messages(c, sid)
    assert stored["content"] == "Partial answer" and stored["status"] == "complete"
    assert stored["usage"] == unknown, stored


def test_groq_usage_in_x_groq_only(canned_server, canned):
    canned.mode = CannedUpstream.GROQ_X_USAGE
    c = canned_server.client
    resp, sse = stream_v1(c, {"message": "groq", "session_id": "cut-groq", "model": OPENAI_MODEL})
    assert sse is not None and sse.names()[-1] == "done", sse and sse.events
    want = {"input_tokens": 812, "output_tokens": 34, "cache_read_input_tokens": None,
            "cache_creation_input_tokens": None}
    assert sse.data("done")[0]["usage"] == want
    (stored,) = assistant_messages(c, "cut-groq")
    assert stored["usage"] == want


def test_event_error_form_maps_to_sse_error(canned_server, canned):
    canned.mode = CannedUpstream.EVENT_ERROR
    c = canned_server.client
    resp, sse = stream_v1(c, {"message": "explode", "session_id": "cut-event-error", "model": OPENAI_MODEL})
    assert sse is not None and sse.names()[-1] == "error", sse and sse.events
    assert sse.names().count("done") == 0
    assert sse.deltas_text() == "Partial answer"
    err = sse.data("error")[0]
    assert err["type"] == "provider_error" and "upstream exploded" in err["message"], err


# --------------------------------------------------------------------------- mid-stream errors


@pytest.mark.parametrize("variant", VARIANTS)
def test_midstream_error_each_variant(c, fake, variant):
    sid = f"mid-{variant}"
    fake.script(default={"variant": variant, "reply_words": 5, "fault": "midstream_error", "after": 2,
                         "error_message": f"boom from {variant}"})
    resp, sse = stream_v1(c, {"message": "go", "session_id": sid, "model": OPENAI_MODEL})
    assert resp.status_code == 200 and sse is not None
    names = sse.names()
    assert names[0] == "start" and names[-1] == "error" and "done" not in names, names
    assert sse.deltas_text() == "w1 w2 "
    err = sse.data("error")[0]
    assert err["type"] == "provider_error", err
    assert err["request_id"] == resp.headers["x-request-id"]
    if variant != "ollama":  # Ollama loses the error text (an empty chunk, then EOF)
        assert f"boom from {variant}" in err["message"], err
    assert len(all_requests(fake)) == 1


def test_midstream_overloaded_maps_to_provider_overloaded(c, fake):
    fake.script(default={"variant": "openai", "reply_words": 4, "fault": "midstream_error", "after": 1,
                         "error_type": "overloaded_error", "error_message": "Overloaded"})
    resp, sse = stream_v1(c, {"message": "go", "session_id": "mid-overloaded", "model": OPENAI_MODEL})
    assert sse.names()[-1] == "error"
    assert sse.data("error")[0]["type"] == "provider_overloaded"


@pytest.mark.parametrize("fault", ["truncate", "reset"])
def test_stream_without_finish_chunk_is_an_error(c, fake, fault):
    """Cut before the finish chunk: a truncated reply, never a success."""
    fake.script(default={"variant": "openai", "reply_words": 4, "fault": fault, "after": 4})
    resp, sse = stream_v1(c, {"message": "go", "session_id": f"nofinish-{fault}", "model": OPENAI_MODEL})
    assert sse is not None and sse.names()[-1] == "error", sse and sse.names()
    assert sse.data("error")[0]["type"] == "provider_error"
    assert c.get(f"/v1/sessions/nofinish-{fault}").status_code == 404


@pytest.mark.parametrize("variant", ["openai", "vllm", "llamacpp"])
def test_http_error_bodies_each_variant(c, fake, variant):
    fake.script(default={"variant": variant, "status": 503, "error_message": f"down for {variant}"})
    r = c.post("/v1/chat", json={"message": "x", "session_id": f"httperr-{variant}", "model": OPENAI_MODEL})
    assert_v1_error(r, 503, "provider_overloaded", f"down for {variant}")
    fake.script(default={"variant": variant, "status": 400, "error_message": f"bad for {variant}"})
    r = c.post("/v1/chat", json={"message": "x", "session_id": f"httperr-{variant}", "model": OPENAI_MODEL})
    assert_v1_error(r, 400, "invalid_request_error", f"bad for {variant}")


# --------------------------------------------------------------------------- fallbacks


@pytest.fixture(scope="module")
def fb_server(chatd_module, fake, tmp_path_factory):
    mf = write_models_file(tmp_path_factory.mktemp("fb"), {
        "models": [
            {"name": "primary-a", "provider": "anthropic", "model_id": "claude-a", "context_window": 200000,
             "max_output": 4096, "fallbacks": ["backup-b"],
             "price": {"input": 3, "output": 15, "cache_write": 3.75, "cache_read": 0.3}},
            {"name": "backup-b", "provider": "openai", "model_id": "gpt-b", "context_window": 128000,
             "max_output": 4096, "price": {"input": 0.15, "output": 0.6, "cache_write": 0.15, "cache_read": 0.075}},
        ]})
    return chatd_module({"MODELS_FILE": mf, "OPENAI_BASE_URL": fake.url + "/v1", "OPENAI_API_KEY": OPENAI_KEY,
                         "PROVIDER_MAX_RETRIES": "0"})


def test_models_list_shows_fallbacks(fb_server):
    m = {x["id"]: x for x in fb_server.client.get("/v1/models").json()["data"]}
    assert m["primary-a"]["fallbacks"] == ["backup-b"]
    assert m["backup-b"]["fallbacks"] == []


def test_fallback_after_529_json(fb_server, fake):
    c = fb_server.client
    sid = "fb-json"
    fake.script(queue=[{"status": 529}])
    r = c.post("/v1/chat", json={"message": "help", "session_id": sid, "model": "primary-a"})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "backup-b"
    assert r.json()["response"] == echo("help")
    reqs = all_requests(fake)
    assert [(q["path"], q["body"]["model"]) for q in reqs] == [
        ("/v1/messages", "claude-a"), ("/v1/chat/completions", "gpt-b")]
    assert reqs[0]["outcome"] == "error_status"
    (stored,) = assistant_messages(c, sid)
    assert stored["model"] == "backup-b"
    # Priced at the model that answered: gpt-b prices.
    u = r.json()["usage"]
    assert r.json()["cost"]["micros"] == (u["input_tokens"] * 150000 + u["output_tokens"] * 600000 + 500000) // 1000000


def test_fallback_after_529_stream(fb_server, fake):
    c = fb_server.client
    sid = "fb-sse"
    fake.script(queue=[{"status": 529}])
    resp, sse = stream_v1(c, {"message": "help me", "session_id": sid, "model": "primary-a"})
    assert sse is not None and sse.names()[-1] == "done", sse and sse.events
    assert sse.deltas_text() == echo("help me")
    assert sse.data("done")[0]["model"] == "backup-b"
    assert [q["path"] for q in all_requests(fake)] == ["/v1/messages", "/v1/chat/completions"]
    (stored,) = assistant_messages(c, sid)
    assert stored["model"] == "backup-b"


def test_fallback_names_the_answering_model_in_openai_chunks(fb_server, fake):
    fake.script(queue=[{"status": 529}])
    body = {"model": "primary-a", "stream": True, "messages": [{"role": "user", "content": "help"}]}
    with fb_server.client.stream("POST", "/v1/chat/completions", json=body, timeout=20) as r:
        assert r.status_code == 200
        raw = b"".join(r.iter_raw()).decode()
    chunks = [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: {")]
    assert chunks and {c["model"] for c in chunks} == {"backup-b"}, [c["model"] for c in chunks]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == echo("help")


def test_no_fallback_after_a_delta(fb_server, fake):
    fake.script(queue=[{"reply_words": 6, "fault": "midstream_error", "after": 2}])
    resp, sse = stream_v1(fb_server.client, {"message": "x", "session_id": "fb-delta", "model": "primary-a"})
    assert sse is not None and sse.names()[-1] == "error", sse and sse.names()
    assert sse.deltas_text() == "w1 w2 "
    assert sse.data("error")[0]["type"] == "provider_overloaded"
    assert [q["path"] for q in all_requests(fake)] == ["/v1/messages"]


def test_no_fallback_on_400(fb_server, fake):
    fake.script(queue=[{"status": 400, "error_message": "prompt is malformed"}])
    r = fb_server.client.post("/v1/chat", json={"message": "x", "session_id": "fb-400", "model": "primary-a"})
    assert_v1_error(r, 400, "invalid_request_error", "prompt is malformed")
    assert [q["path"] for q in all_requests(fake)] == ["/v1/messages"]
    # Streaming: the start event may already be out, so the error is an SSE event.
    fake.reset()
    fake.script(queue=[{"status": 400, "error_message": "prompt is malformed"}])
    resp, sse = stream_v1(fb_server.client, {"message": "x", "session_id": "fb-400", "model": "primary-a"})
    if sse is None:
        assert_v1_error(resp, 400, "invalid_request_error", "prompt is malformed")
    else:
        assert sse.names()[-1] == "error" and "done" not in sse.names(), sse.names()
        err = sse.data("error")[0]
        assert err["type"] == "invalid_request_error" and "prompt is malformed" in err["message"], err
    assert [q["path"] for q in all_requests(fake)] == ["/v1/messages"]


def test_fallback_also_failing_reports_the_last_error(fb_server, fake):
    fake.script(queue=[{"status": 529}, {"status": 500}])
    r = fb_server.client.post("/v1/chat", json={"message": "x", "session_id": "fb-both", "model": "primary-a"})
    assert_v1_error(r, 502, "provider_error")
    assert [q["path"] for q in all_requests(fake)] == ["/v1/messages", "/v1/chat/completions"]
    assert fb_server.client.get("/v1/sessions/fb-both").status_code == 404


def test_fallback_does_not_change_the_sessions_model(fb_server, fake):
    """A fallback answers one turn; the session keeps the model it chose (the next turn tries A again)."""
    c = fb_server.client
    sid = "fb-remember"
    fake.script(queue=[{"status": 529}])
    r = c.post("/v1/chat", json={"message": "one", "session_id": sid, "model": "primary-a"})
    assert r.status_code == 200 and r.json()["model"] == "backup-b", r.text
    r = c.post("/v1/chat", json={"message": "two", "session_id": sid})
    assert r.status_code == 200, r.text
    assert [q["path"] for q in all_requests(fake)][-1] == "/v1/messages", "the primary model was not tried again"
    assert r.json()["model"] == "primary-a"
    assert c.get(f"/v1/sessions/{sid}").json()["model"] == "primary-a"
