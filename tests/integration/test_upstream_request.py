"""
test_upstream_request.py: the exact request chatd sends to the Anthropic
Messages API (body fields, message order, headers), as seen by the fake.
"""
import pytest

from helpers import API_KEY, DEFAULT_MODEL, DEFAULT_SYSTEM, echo, stream_seed, stream_v1


@pytest.fixture(scope="module")
def server(chatd_module):
    return chatd_module()


@pytest.fixture
def c(server):
    return server.client


NONSTREAM_KEYS = {"model", "max_tokens", "system", "messages"}


def _check_body(body, *, stream, model=DEFAULT_MODEL, max_tokens=1024, system=DEFAULT_SYSTEM):
    keys = set(body)
    if stream:
        assert keys == NONSTREAM_KEYS | {"stream"}, body
        assert body["stream"] is True
    else:
        # A non-streaming endpoint may still use the provider's streaming mode.
        assert keys in (NONSTREAM_KEYS, NONSTREAM_KEYS | {"stream"}), body
    assert body["model"] == model
    assert body["max_tokens"] == max_tokens and type(body["max_tokens"]) is int
    assert body["system"] == system


def _check_headers(h):
    assert h.get("x-api-key") == API_KEY
    assert h.get("anthropic-version") == "2023-06-01"
    assert h.get("content-type", "").split(";")[0].strip() == "application/json"
    # The key goes in x-api-key only.
    assert API_KEY not in (h.get("authorization") or "")


def test_first_turn_body_and_headers(c, fake):
    r = c.post("/v1/chat", json={"message": "Hello", "session_id": "up-1"})
    assert r.status_code == 200, r.text
    reqs = fake.requests()
    assert len(reqs) == 1
    q = reqs[0]
    assert q["method"] == "POST" and q["path"] == "/v1/messages"
    _check_body(q["body"], stream=False)
    assert q["body"]["messages"] == [{"role": "user", "content": "Hello"}]
    _check_headers(q["headers"])


def test_prior_turns_alternate_in_order(c, fake):
    sid = "up-multi"
    texts = ["first message", "second message", "third message"]
    for t in texts:
        assert c.post("/v1/chat", json={"message": t, "session_id": sid}).status_code == 200
    reqs = fake.requests()
    assert len(reqs) == 3
    for i, q in enumerate(reqs):
        expected = []
        for t in texts[:i]:
            expected += [{"role": "user", "content": t}, {"role": "assistant", "content": echo(t)}]
        expected.append({"role": "user", "content": texts[i]})
        assert q["body"]["messages"] == expected, (i, q["body"]["messages"])
        _check_body(q["body"], stream=False)


@pytest.mark.parametrize("endpoint", ["v1", "seed"])
def test_streaming_sends_stream_true(c, fake, endpoint):
    sid = f"up-stream-{endpoint}"
    for t in ("one", "two"):
        if endpoint == "v1":
            resp, sse = stream_v1(c, {"message": t, "session_id": sid})
            assert sse.names()[-1] == "done"
        else:
            resp, _ = stream_seed(c, {"message": t, "session_id": sid})
        assert resp.status_code == 200
    reqs = fake.requests()
    assert len(reqs) == 2
    for q in reqs:
        _check_body(q["body"], stream=True)
        _check_headers(q["headers"])
    assert reqs[1]["body"]["messages"] == [
        {"role": "user", "content": "one"}, {"role": "assistant", "content": echo("one")},
        {"role": "user", "content": "two"}]


def test_seed_chat_body(c, fake):
    r = c.post("/chat", json={"message": "seed hi", "session_id": "up-seed", "system_prompt": "Terse."})
    assert r.status_code == 200
    q = fake.requests()[0]
    _check_body(q["body"], stream=False, system="Terse.")
    assert q["body"]["messages"] == [{"role": "user", "content": "seed hi"}]


def test_model_max_tokens_system_from_request(c, fake):
    r = c.post("/v1/chat", json={"message": "x", "session_id": "up-params", "model": "claude-haiku-4-5",
                                 "max_tokens": 321, "system_prompt": "Custom system."})
    assert r.status_code == 200
    _check_body(fake.requests()[0]["body"], stream=False, model="claude-haiku-4-5", max_tokens=321,
                system="Custom system.")


def test_message_text_passed_verbatim(c, fake):
    text = 'Quotes " and \\ backslash\nnewline\ttab, unicode é 中文 🎉, <html>&amp;'
    r = c.post("/v1/chat", json={"message": text, "session_id": "up-verbatim"})
    assert r.status_code == 200
    assert fake.requests()[0]["body"]["messages"] == [{"role": "user", "content": text}]
    assert r.json()["response"] == echo(text)


def test_configured_defaults(chatd, fake):
    s = chatd({"CHAT_MODEL": "claude-haiku-4-5", "MAX_TOKENS": "2048",
               "DEFAULT_SYSTEM_PROMPT": "Configured prompt.", "ANTHROPIC_VERSION": "2026-10-21"})
    r = s.client.post("/v1/chat", json={"message": "x", "session_id": "up-cfg"})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "claude-haiku-4-5"
    q = fake.requests()[0]
    _check_body(q["body"], stream=False, model="claude-haiku-4-5", max_tokens=2048,
                system="Configured prompt.")
    assert q["headers"]["anthropic-version"] == "2026-10-21"
