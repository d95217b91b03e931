"""
test_truncation.py: fitting a conversation into the model's context window.

A MODELS_FILE defines a tiny model (context_window 120, max_output 20, so a
budget of 100 tokens with the default MAX_TOKENS) that a few turns overflow.
The expected counts are computed here exactly as the contract says chatd counts
(src/chat/context.c, src/chat/turn.c):
  - the system prompt and the new message are estimated: ceil(code points / 4);
  - an assistant message counts its reported output_tokens;
  - a user message counts this turn's reported input_tokens minus the previous
    turn's input + output (when that previous turn was sent whole), else its
    estimate (first turn, after a truncated turn, or a non-positive difference);
  - budget = context_window - min(max_tokens, max_output); exactly at the budget fits;
  - over it, the oldest whole turns are left out until it fits; the system prompt
    plus the new message alone over it is 400 context_length_exceeded.
The numbers come from the usage the responses report, so the test depends on
the fake's counting only through values it reads back.
"""
import json
import math
import os
import tempfile

import pytest

from helpers import assert_v1_error, stream_v1

MODEL = "tiny"
CONTEXT_WINDOW = 120
MAX_OUTPUT = 20
BUDGET = CONTEXT_WINDOW - MAX_OUTPUT   # MAX_TOKENS (1024) > max_output
SYSTEM = "sys"                          # 1 token


def est(text):
    return math.ceil(len(text) / 4)  # code points: every test string is ASCII


class Conversation:
    """chatd's view of a session's token counts, replayed from the responses."""

    def __init__(self):
        self.msgs = []   # {"role", "content", "tokens", "usage"}

    def plan(self, message, budget=BUDGET):
        tok = [m["tokens"] if m["tokens"] >= 0 else est(m["content"]) for m in self.msgs]
        fixed = est(SYSTEM) + est(message)
        if fixed > budget:
            return None
        first, history, dropped = 0, sum(tok), 0
        while fixed + history > budget and first + 1 < len(tok):
            history -= tok[first] + tok[first + 1]
            first += 2
            dropped += 1
        return {"first": first, "dropped": dropped, "tokens": fixed + history}

    def history_tokens(self):
        return sum(m["tokens"] if m["tokens"] >= 0 else est(m["content"]) for m in self.msgs)

    def commit(self, message, reply, usage, dropped):
        user_tokens = -1
        if self.msgs and dropped == 0:
            last = self.msgs[-1]["usage"]
            prev = last["input_tokens"] + last["output_tokens"]
            d = usage["input_tokens"] - prev
            user_tokens = d if d > 0 else -1
        self.msgs.append({"role": "user", "content": message, "tokens": user_tokens, "usage": None})
        self.msgs.append({"role": "assistant", "content": reply, "tokens": usage["output_tokens"], "usage": usage})


@pytest.fixture(scope="module")
def server(chatd_module):
    d = tempfile.mkdtemp(prefix="chatd-models-")
    path = os.path.join(d, "models.json")
    with open(path, "w") as f:
        json.dump({"models": [{"name": MODEL, "provider": "anthropic", "model_id": "tiny-model-1",
                               "context_window": CONTEXT_WINDOW, "max_output": MAX_OUTPUT,
                               "price": {"input": 1, "output": 2, "cache_write": 1, "cache_read": 1}}]}, f)
    return chatd_module({"MODELS_FILE": path, "PROMPT_CACHING": "off"})


@pytest.fixture
def c(server):
    return server.client


def chat(c, conv, sid, message, **extra):
    body = {"message": message, "session_id": sid, "model": MODEL, "system_prompt": SYSTEM, **extra}
    r = c.post("/v1/chat", json=body)
    assert r.status_code == 200, r.text
    b = r.json()
    conv.commit(message, b["response"], b["usage"], b["truncated_turns"])
    return b


def setup_two_turns(c, fake, sid):
    conv = Conversation()
    for text in ("a" * 40, "b" * 40):
        p = conv.plan(text)
        b = chat(c, conv, sid, text)
        assert b["truncated_turns"] == 0 == p["dropped"]
    fake.reset()
    return conv


def sent_messages(fake):
    reqs = fake.requests()
    assert len(reqs) == 1, len(reqs)
    return [(m["role"], m["content"] if isinstance(m["content"], str) else
             "\n".join(b["text"] for b in m["content"])) for m in reqs[0]["body"]["messages"]]


def stored(c, sid):
    r = c.get(f"/v1/sessions/{sid}/messages")
    assert r.status_code == 200, r.text
    return [(m["role"], m["content"]) for m in r.json()["data"]]


def exact_fit_length(conv, budget=BUDGET):
    """Length of a new message that brings the whole conversation exactly to the budget."""
    n = budget - est(SYSTEM) - conv.history_tokens()
    assert n > 1, n
    return 4 * n


# --------------------------------------------------------------- boundaries


def test_user_tokens_come_from_provider_usage(c, fake):
    """Sanity of the model above: the second user message counts the provider-derived
    difference, which here differs from its estimate (so the boundaries below tell them apart)."""
    conv = setup_two_turns(c, fake, "tr-model")
    u2 = conv.msgs[2]
    assert u2["tokens"] > 0 and u2["tokens"] != est(u2["content"]), conv.msgs
    assert conv.msgs[1]["tokens"] != est(conv.msgs[1]["content"]), conv.msgs


def test_exactly_at_budget_keeps_everything(c, fake):
    conv = setup_two_turns(c, fake, "tr-exact")
    msg = "c" * exact_fit_length(conv)
    assert conv.plan(msg) == {"first": 0, "dropped": 0, "tokens": BUDGET}
    b = chat(c, conv, "tr-exact", msg)
    assert b["truncated_turns"] == 0
    assert [r for r, _ in sent_messages(fake)] == ["user", "assistant", "user", "assistant", "user"]


def test_one_token_over_drops_the_oldest_turn(c, fake):
    conv = setup_two_turns(c, fake, "tr-over")
    before = stored(c, "tr-over")
    msg = "c" * (exact_fit_length(conv) + 1)
    p = conv.plan(msg)
    assert p["dropped"] == 1 and p["tokens"] <= BUDGET
    b = chat(c, conv, "tr-over", msg)
    assert b["truncated_turns"] == 1
    sent = sent_messages(fake)
    assert sent[0][0] == "user"
    assert sent == before[2:] + [("user", msg)], sent
    # The stored history keeps every turn.
    assert stored(c, "tr-over") == before + [("user", msg), ("assistant", b["response"])]
    assert c.get("/v1/sessions/tr-over").json()["turn_count"] == 3
    # The next turn is planned on the stored history again (all of it, then trimmed).
    fake.reset()
    nxt = "d" * 8
    p = conv.plan(nxt)
    b = chat(c, conv, "tr-over", nxt)
    assert b["truncated_turns"] == p["dropped"], (b, p)
    assert len(sent_messages(fake)) == 7 - 2 * p["dropped"]


def test_streaming_done_event_reports_truncated_turns(c, fake):
    # Exactly at the budget once the oldest turn is left out: one turn dropped.
    conv = setup_two_turns(c, fake, "tr-sse1")
    first_turn = conv.history_tokens() - conv.msgs[2]["tokens"] - conv.msgs[3]["tokens"]
    msg = "c" * (exact_fit_length(conv) + 4 * first_turn)
    assert conv.plan(msg) == {"first": 2, "dropped": 1, "tokens": BUDGET}
    resp, sse = stream_v1(c, {"message": msg, "session_id": "tr-sse1", "model": MODEL})
    assert sse is not None, resp.text
    done = sse.data("done")
    assert done and done[0]["truncated_turns"] == 1, sse.events
    assert [r for r, _ in sent_messages(fake)] == ["user", "assistant", "user"]
    # One token more: both old turns go, the new message is sent alone.
    conv = setup_two_turns(c, fake, "tr-sse2")
    msg = "c" * (exact_fit_length(conv) + 4 * first_turn + 1)
    assert conv.plan(msg)["dropped"] == 2
    resp, sse = stream_v1(c, {"message": msg, "session_id": "tr-sse2", "model": MODEL})
    assert sse.data("done")[0]["truncated_turns"] == 2, sse.events
    assert sent_messages(fake) == [("user", msg)]
    assert len(stored(c, "tr-sse2")) == 6


def test_reject_policy(c, fake):
    conv = setup_two_turns(c, fake, "tr-reject")
    before = stored(c, "tr-reject")
    session_before = c.get("/v1/sessions/tr-reject").json()
    over = "c" * (exact_fit_length(conv) + 1)
    r = c.post("/v1/chat", json={"message": over, "session_id": "tr-reject", "model": MODEL, "truncation": "reject"})
    err = assert_v1_error(r, 400, "context_length_exceeded")
    assert MODEL in err["message"], err
    resp, sse = stream_v1(c, {"message": over, "session_id": "tr-reject", "model": MODEL, "truncation": "reject"})
    assert sse is None
    assert_v1_error(resp, 400, "context_length_exceeded")
    assert fake.requests() == []
    assert stored(c, "tr-reject") == before
    after = c.get("/v1/sessions/tr-reject").json()
    assert after["turn_count"] == session_before["turn_count"] == 2
    # At the budget there is nothing to leave out: reject lets it through.
    exact = "c" * exact_fit_length(conv)
    b = chat(c, conv, "tr-reject", exact, truncation="reject")
    assert b["truncated_turns"] == 0
    # "auto" is the default and can be named; anything else is a validation error.
    r = c.post("/v1/chat", json={"message": "x", "session_id": "tr-reject", "model": MODEL, "truncation": "never"})
    assert_v1_error(r, 400, "invalid_request_error")
    r = c.post("/v1/chat", json={"message": "x", "session_id": "tr-reject", "model": MODEL, "truncation": 1})
    assert_v1_error(r, 400, "invalid_request_error")


def test_auto_named_explicitly(c, fake):
    conv = setup_two_turns(c, fake, "tr-auto")
    over = "c" * (exact_fit_length(conv) + 1)
    b = chat(c, conv, "tr-auto", over, truncation="auto")
    assert b["truncated_turns"] == 1


def test_single_message_larger_than_budget(c, fake):
    # New session: the system prompt and the message alone.
    fits = "e" * (4 * (BUDGET - est(SYSTEM)))            # exactly the budget
    too_big = "e" * (4 * (BUDGET - est(SYSTEM)) + 1)     # one token over
    r = c.post("/v1/chat", json={"message": too_big, "session_id": "tr-big", "model": MODEL, "system_prompt": SYSTEM})
    err = assert_v1_error(r, 400, "context_length_exceeded")
    assert str(CONTEXT_WINDOW) in err["message"], err
    assert fake.requests() == []
    assert c.get("/v1/sessions/tr-big").status_code == 404
    resp, sse = stream_v1(c, {"message": too_big, "session_id": "tr-big", "model": MODEL, "system_prompt": SYSTEM})
    assert sse is None
    assert_v1_error(resp, 400, "context_length_exceeded")
    conv = Conversation()
    b = chat(c, conv, "tr-big", fits)
    assert b["truncated_turns"] == 0
    # In an existing conversation too, even with truncation allowed: no history can make room.
    conv = setup_two_turns(c, fake, "tr-big2")
    before = stored(c, "tr-big2")
    r = c.post("/v1/chat", json={"message": too_big, "session_id": "tr-big2", "model": MODEL})
    assert_v1_error(r, 400, "context_length_exceeded")
    assert fake.requests() == []
    assert stored(c, "tr-big2") == before


def test_max_tokens_sets_the_budget(c, fake):
    # max_tokens below max_output reserves less for the reply: a larger budget.
    budget = CONTEXT_WINDOW - 5
    fits = "f" * (4 * (budget - est(SYSTEM)))
    r = c.post("/v1/chat", json={"message": fits, "session_id": "tr-mt", "model": MODEL,
                                 "system_prompt": SYSTEM, "max_tokens": 5})
    assert r.status_code == 200, r.text
    assert fake.requests()[0]["body"]["max_tokens"] == 5
    r = c.post("/v1/chat", json={"message": fits + "f", "session_id": "tr-mt2", "model": MODEL,
                                 "system_prompt": SYSTEM, "max_tokens": 5})
    assert_v1_error(r, 400, "context_length_exceeded")
    # Without max_tokens the same message is over the default budget.
    r = c.post("/v1/chat", json={"message": fits, "session_id": "tr-mt3", "model": MODEL, "system_prompt": SYSTEM})
    assert_v1_error(r, 400, "context_length_exceeded")


def test_stateless_completions_truncate_estimated_history(c, fake):
    """/v1/chat/completions without a session: the whole history comes in the
    request and is estimated (nothing was measured), oldest turns dropped first."""
    hist = [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": "a" * 40}, {"role": "assistant", "content": "x" * 40},
            {"role": "user", "content": "b" * 40}, {"role": "assistant", "content": "y" * 40}]
    room = BUDGET - est(SYSTEM) - 4 * 10

    def send(n):
        fake.reset()
        msgs = hist + [{"role": "user", "content": "c" * n}]
        r = c.post("/v1/chat/completions", json={"model": MODEL, "messages": msgs})
        assert r.status_code == 200, r.text
        return [m["content"] for m in fake.requests()[0]["body"]["messages"]]

    assert send(4 * room) == ["a" * 40, "x" * 40, "b" * 40, "y" * 40, "c" * (4 * room)]
    assert send(4 * room + 1) == ["b" * 40, "y" * 40, "c" * (4 * room + 1)]
    fake.reset()
    r = c.post("/v1/chat/completions", json={"model": MODEL, "messages": hist + [
        {"role": "user", "content": "c" * (4 * (BUDGET - est(SYSTEM)) + 1)}]})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "context_length_exceeded", r.json()
    assert fake.requests() == []
