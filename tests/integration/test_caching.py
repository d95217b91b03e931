"""
test_caching.py: Anthropic prompt-caching breakpoints as chatd places them
(seen in the fake's recorded request bodies), and what caching saves on a
20-turn conversation, priced by the models table.

The fake does not simulate a prompt cache (its cache counts are always 0
unless forced), so the saving is computed from the breakpoints chatd really
sent, by CacheSim below, a small model of how the Messages API bills a
request (docs/PROTOCOLS.md A4 and Anthropic's prompt caching documentation):

- A request is a sequence of blocks: the system prompt, then each message's
  content. A `cache_control` marker on a block is a breakpoint; the prefix up
  to and including that block is written to the cache when it is at least the
  model's minimum cacheable length (cache_min_tokens of the models table).
- A later request reads the longest prefix that an earlier request wrote, if it
  ends at one of its own breakpoints or at most 20 blocks before one (the API's
  lookback). Those tokens are billed at the cache_read price.
- The tokens after the cache hit up to the request's last eligible breakpoint
  are written to the cache, billed at the cache_write price.
- Everything after the last breakpoint is plain input.
- Entries live 5 minutes, refreshed on use: the turns here are milliseconds
  apart, so nothing expires.

Token counts are the fake's (ceil(characters / 4)), so the simulated total of
each request equals the fake's input_tokens for it; the test checks that.
Then the simulated counts are replayed through the fake's `usage` knob, so
chatd's own accounting prices them, and its session totals must equal the
calculator's.
"""
import hashlib
import json
import math

import pytest

from helpers import DEFAULT_SYSTEM, echo, expected_input_tokens

MODEL = "claude-sonnet-4-6"
EPHEMERAL = {"type": "ephemeral"}
LOOKBACK_BLOCKS = 20
TURNS = 20

# A system prompt of about 5,800 characters (1,450 tokens by the fake's count), above
# the 1,024-token minimum of claude-sonnet-4-6 on its own.
LONG_SYSTEM = " ".join(
    f"Rule {i}: answer questions about the Acme order desk politely, cite the order number, and never "
    f"promise a delivery date that the warehouse has not confirmed." for i in range(1, 38))


def user_text(turn):
    """A distinct message of about 660 characters (no surrounding whitespace)."""
    words = " ".join(f"item-{turn}-{k}" for k in range(60))
    return f"Turn {turn}: please check these order lines and tell me which ones shipped: {words}."


def markers(body):
    """Every cache_control marker in a request body (system, message blocks, top level)."""
    found = []
    if "cache_control" in body:
        found.append(("top", None))
    sys_ = body.get("system")
    if isinstance(sys_, list):
        found += [("system", i) for i, b in enumerate(sys_) if "cache_control" in b]
    for mi, m in enumerate(body["messages"]):
        if isinstance(m["content"], list):
            found += [("message", mi) for b in m["content"] if "cache_control" in b]
    return found


def text_of(content):
    return content if isinstance(content, str) else "\n".join(b["text"] for b in content)


def plain(body):
    """The body with markers removed: system and contents as strings."""
    out = {"system": text_of(body.get("system", "")),
           "messages": [{"role": m["role"], "content": text_of(m["content"])} for m in body["messages"]]}
    return out


# --------------------------------------------------------------------------- markers


@pytest.fixture(scope="module")
def on_server(chatd_module):
    return chatd_module({})


@pytest.fixture(scope="module")
def off_server(chatd_module):
    return chatd_module({"PROMPT_CACHING": "off"})


def run_turns(client, sid, texts, system=None, model=None):
    for i, t in enumerate(texts):
        body = {"message": t, "session_id": sid}
        if i == 0 and system is not None:
            body["system_prompt"] = system
        if i == 0 and model is not None:
            body["model"] = model
        r = client.post("/v1/chat", json=body)
        assert r.status_code == 200, r.text


def test_markers_on_system_and_previous_turn(on_server, fake):
    texts = [user_text(i) for i in range(1, 4)]
    run_turns(on_server.client, "cm-long", texts, system=LONG_SYSTEM)
    reqs = fake.requests()
    assert len(reqs) == 3
    for k, q in enumerate(reqs):
        b = q["body"]
        # The system prompt goes as one marked text block.
        assert b["system"] == [{"type": "text", "text": LONG_SYSTEM, "cache_control": EPHEMERAL}], b["system"]
        msgs = b["messages"]
        assert len(msgs) == 2 * k + 1
        assert msgs[-1] == {"role": "user", "content": texts[k]}  # the new message: plain
        if k == 0:
            assert markers(b) == [("system", 0)]
            continue
        # The end of the previous turn (its assistant reply) is marked; nothing else is.
        prev = msgs[-2]
        assert prev == {"role": "assistant", "content": [{"type": "text", "text": echo(texts[k - 1]),
                                                          "cache_control": EPHEMERAL}]}, prev
        assert markers(b) == [("system", 0), ("message", 2 * k - 1)]
        assert all(isinstance(m["content"], str) for m in msgs[:-2])
        assert len(markers(b)) <= 4


def test_no_markers_below_the_minimum(on_server, fake):
    run_turns(on_server.client, "cm-short", ["short one", "short two", "short three"])
    for q in fake.requests():
        assert "cache_control" not in json.dumps(q["body"]), q["body"]
        assert q["body"]["system"] == DEFAULT_SYSTEM
        assert all(isinstance(m["content"], str) for m in q["body"]["messages"])


@pytest.mark.parametrize("x,marked", [(2022, False), (2023, True)])
def test_minimum_boundary_on_the_conversation(on_server, fake, x, marked):
    """Default system (31 chars) + user (x) + reply (17 + x): 4092 chars = 1023 tokens, 4094 = 1024."""
    first = "a" * x
    assert len(DEFAULT_SYSTEM) + len(first) + len(echo(first)) == 48 + 2 * x
    run_turns(on_server.client, f"cm-edge-{x}", [first, "next"])
    q = fake.requests()[-1]["body"]
    assert q["system"] == DEFAULT_SYSTEM  # far below the minimum alone
    if marked:
        assert markers(q) == [("message", 1)]
        assert q["messages"][1]["content"] == [{"type": "text", "text": echo(first), "cache_control": EPHEMERAL}]
    else:
        assert markers(q) == []


def test_minimum_is_per_model(on_server, fake):
    """claude-haiku-4-5 caches from 4096 tokens: the 1,450-token system prompt is not marked."""
    run_turns(on_server.client, "cm-haiku", ["hello haiku"], system=LONG_SYSTEM, model="claude-haiku-4-5")
    q = fake.requests()[-1]["body"]
    assert q["model"] == "claude-haiku-4-5"
    assert q["system"] == LONG_SYSTEM and markers(q) == []


def test_prompt_caching_off(off_server, fake):
    run_turns(off_server.client, "cm-off", [user_text(i) for i in range(1, 4)], system=LONG_SYSTEM)
    reqs = fake.requests()
    assert len(reqs) == 3
    for q in reqs:
        assert "cache_control" not in json.dumps(q["body"])
        assert q["body"]["system"] == LONG_SYSTEM


def test_openai_provider_gets_no_markers(chatd, fake):
    s = chatd({"OPENAI_BASE_URL": fake.url + "/v1", "OPENAI_API_KEY": "sk-test"})
    run_turns(s.client, "cm-oa", [user_text(1), user_text(2)], system=LONG_SYSTEM, model="gpt-4o-mini")
    r = fake.http.get("/_fake/requests").json()["requests"]
    assert [q["path"] for q in r] == ["/v1/chat/completions"] * 2
    for q in r:
        assert "cache_control" not in json.dumps(q["body"])


def test_stateless_completions_history_is_marked(on_server, fake):
    """/v1/chat/completions without a session: the caller's history gets the same breakpoints."""
    u1, u2 = user_text(1), user_text(2)
    r = on_server.client.post("/v1/chat/completions", json={"model": MODEL, "messages": [
        {"role": "system", "content": LONG_SYSTEM}, {"role": "user", "content": u1},
        {"role": "assistant", "content": "An earlier answer."}, {"role": "user", "content": u2}]})
    assert r.status_code == 200, r.text
    b = fake.requests()[-1]["body"]
    assert markers(b) == [("system", 0), ("message", 1)]
    assert r.json()["usage"]["prompt_tokens"] == expected_input_tokens(plain(b))


# --------------------------------------------------------------------------- the 20-turn figure


class CacheSim:
    """Bills a sequence of Messages API requests the way prompt caching does (see the module docstring)."""

    def __init__(self, min_tokens):
        self.min_tokens = min_tokens
        self.cache = set()  # prefix digests written so far

    @staticmethod
    def blocks(body):
        """[(digest of the prefix ending here, characters up to here, marked)] for each block."""
        out, h, chars = [], hashlib.sha256(), 0

        def add(role, block):
            nonlocal chars
            h.update(json.dumps([role, block.get("type", "text"), block["text"]]).encode())
            chars += len(block["text"])
            out.append((h.copy().hexdigest(), chars, "cache_control" in block))

        sys_ = body.get("system")
        if isinstance(sys_, str) and sys_:
            add("system", {"text": sys_})
        elif isinstance(sys_, list):
            for b in sys_:
                add("system", b)
        for m in body["messages"]:
            content = m["content"]
            for b in ([{"text": content}] if isinstance(content, str) else content):
                add(m["role"], b)
        return out

    def bill(self, body):
        """-> (cache_read, cache_write, uncached input) tokens for one request; updates the cache."""
        bl = self.blocks(body)
        total = math.ceil(bl[-1][1] / 4)
        tokens = [math.ceil(c / 4) for _, c, _ in bl]
        bps = [i for i, (_, _, marked) in enumerate(bl) if marked and tokens[i] >= self.min_tokens]
        hit = -1
        for bp in bps:
            for j in range(bp, max(bp - LOOKBACK_BLOCKS, -1), -1):
                if bl[j][0] in self.cache:
                    hit = max(hit, j)
                    break
        read = tokens[hit] if hit >= 0 else 0
        write = 0
        if bps and bps[-1] > hit:
            write = tokens[bps[-1]] - read
        for bp in bps:
            self.cache.add(bl[bp][0])
        return read, write, total - read - write


def per_mtok(usd):
    """Dollars per million tokens -> integer micro-dollars per million tokens (as chatd keeps prices)."""
    return round(usd * 1000000)


def round_turn(e6):
    """A turn's cost from tokens x micro-dollars per Mtok (units of 1e-6 micro-dollar), half up."""
    return (e6 + 500000) // 1000000


def test_twenty_turn_cost_with_and_without_caching(on_server, off_server, fake):
    texts = [user_text(i) for i in range(1, TURNS + 1)]
    prices = {m["id"]: m["pricing"] for m in on_server.client.get("/v1/models").json()["data"]}[MODEL]
    # Cross-check with the models table as documented: sonnet $3 / $15 / $3.75 write / $0.30 read per Mtok.
    assert (prices["input_per_mtok"], prices["output_per_mtok"], prices["cache_write_per_mtok"],
            prices["cache_read_per_mtok"]) == (3.0, 15.0, 3.75, 0.3)
    p_in, p_out = per_mtok(prices["input_per_mtok"]), per_mtok(prices["output_per_mtok"])
    p_w, p_r = per_mtok(prices["cache_write_per_mtok"]), per_mtok(prices["cache_read_per_mtok"])

    # 1. Caching on: the bodies chatd sends, and what the API would bill for them.
    run_turns(on_server.client, "fig-on-probe", texts, system=LONG_SYSTEM)
    on_bodies = [q["body"] for q in fake.requests()]
    assert len(on_bodies) == TURNS
    for b in on_bodies:
        assert len(markers(b)) <= 4
    sim = CacheSim(min_tokens=1024)
    billed = [sim.bill(b) for b in on_bodies]
    for b, (r, w, u) in zip(on_bodies, billed):
        assert r + w + u == expected_input_tokens(plain(b))
    # From turn 3 on, each turn reads everything up to the reply before last.
    assert all(r > 0 for r, _, _ in billed[1:]), billed
    outputs = [len(echo(t).split()) for t in texts]

    # 2. The same 20 turns, the fake reporting those cache counts: chatd's own pricing.
    fake.reset()
    fake.script(queue=[{"usage": {"input_tokens": u, "cache_read_input_tokens": r,
                                  "cache_creation_input_tokens": w}} for r, w, u in billed])
    run_turns(on_server.client, "fig-on", texts, system=LONG_SYSTEM)
    assert [q["body"] for q in fake.requests()] == on_bodies
    on_session = on_server.client.get("/v1/sessions/fig-on").json()
    assert on_session["usage"] == {"input_tokens": sum(u for _, _, u in billed), "output_tokens": sum(outputs),
                                   "cache_read_input_tokens": sum(r for r, _, _ in billed),
                                   "cache_creation_input_tokens": sum(w for _, w, _ in billed)}

    # 3. Caching off: every input token at the input price.
    fake.reset()
    run_turns(off_server.client, "fig-off", texts, system=LONG_SYSTEM)
    off_bodies = [q["body"] for q in fake.requests()]
    assert [plain(b) for b in off_bodies] == [plain(b) for b in on_bodies]
    assert all(markers(b) == [] for b in off_bodies)
    off_inputs = [expected_input_tokens(plain(b)) for b in off_bodies]
    off_session = off_server.client.get("/v1/sessions/fig-off").json()
    assert off_session["usage"]["input_tokens"] == sum(off_inputs)

    # Input-token cost (what caching changes), exact: tokens x micro-dollars per Mtok.
    on_e6 = [r * p_r + w * p_w + u * p_in for r, w, u in billed]
    off_e6 = [n * p_in for n in off_inputs]
    on_input, off_input = sum(on_e6), sum(off_e6)
    # chatd's totals (input + output, rounded once per turn) must agree with the table's arithmetic.
    out_e6 = [n * p_out for n in outputs]
    assert on_session["cost"]["micros"] == sum(round_turn(i + o) for i, o in zip(on_e6, out_e6))
    assert off_session["cost"]["micros"] == sum(round_turn(i + o) for i, o in zip(off_e6, out_e6))

    ratio = on_input / off_input
    print(f"\n[prompt caching, {TURNS}-turn conversation on {MODEL}: system {len(LONG_SYSTEM)} chars, "
          f"messages ~{len(texts[0])} chars, replies ~{len(echo(texts[0]))} chars]\n"
          f"  input tokens: off {sum(off_inputs)}; on {sum(u for _, _, u in billed)} uncached + "
          f"{sum(w for _, w, _ in billed)} cache writes + {sum(r for r, _, _ in billed)} cache reads\n"
          f"  input-token cost: caching on ${on_input / 1e12:.6f}, off ${off_input / 1e12:.6f}, "
          f"ratio {ratio:.3f} (saves {100 * (1 - ratio):.1f}%)\n"
          f"  chatd session totals (input + output): on ${on_session['cost']['usd']}, "
          f"off ${off_session['cost']['usd']}")
    assert on_input < off_input
    assert on_session["cost"]["micros"] < off_session["cost"]["micros"]
