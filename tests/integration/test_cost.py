"""
test_cost.py: cost accounting. Every expected value here is computed by hand
(the arithmetic is in the comments) from the list prices of config/models.json:
a turn costs sum(tokens x dollars per million tokens) micro-dollars, rounded
half up once per turn; sessions, keys and /v1/stats keep sums of those
integers, so totals are exact.

Usage numbers are forced with the fake's `usage` knob (control queue, so the
message text and thus the request stay as they are).
"""
import json
import subprocess
from pathlib import Path

import pytest

from conftest import CHATD_BIN, REPO
from helpers import assert_v1_error, echo, stream_v1

OPENAI_KEY = "sk-openai-test-cost"
ADMIN = "admin-token-for-cost-tests"

# Dollars per million tokens == micro-dollars per token. (input, output, cache_write, cache_read)
PRICE = {
    "claude-sonnet-4-6": (3.00, 15.00, 3.75, 0.30),
    "claude-opus-4-5": (5.00, 25.00, 6.25, 0.50),
    "claude-haiku-4-5": (1.00, 5.00, 1.25, 0.10),
    "gpt-4o": (2.50, 10.00, 2.50, 1.25),
    "gpt-4o-mini": (0.15, 0.60, 0.15, 0.075),
    "llama-3.3-70b-versatile": (0.59, 0.79, 0.59, 0.59),
}

# (name, model, fake scenario, expected usage as chatd reports it, expected micro-dollars)
CASES = [
    # 1234567*3 + 89*15 + 1000*0.30 + 2000*3.75 = 3703701 + 1335 + 300 + 7500 = 3712836
    ("sonnet-mix", "claude-sonnet-4-6",
     {"usage": {"input_tokens": 1234567, "output_tokens": 89, "cache_read_input_tokens": 1000,
                "cache_creation_input_tokens": 2000}},
     {"input_tokens": 1234567, "output_tokens": 89, "cache_read_input_tokens": 1000,
      "cache_creation_input_tokens": 2000}, 3712836),
    # 1001*1 + 333*5 + 12345*0.10 + 777*1.25 = 1001 + 1665 + 1234.5 + 971.25 = 4871.75 -> 4872
    ("haiku-mix", "claude-haiku-4-5",
     {"usage": {"input_tokens": 1001, "output_tokens": 333, "cache_read_input_tokens": 12345,
                "cache_creation_input_tokens": 777}},
     {"input_tokens": 1001, "output_tokens": 333, "cache_read_input_tokens": 12345,
      "cache_creation_input_tokens": 777}, 4872),
    # 3*5 + 1*25 + 1*0.5 + 1*6.25 = 46.75 -> 47
    ("opus-small", "claude-opus-4-5",
     {"usage": {"input_tokens": 3, "output_tokens": 1, "cache_read_input_tokens": 1,
                "cache_creation_input_tokens": 1}},
     {"input_tokens": 3, "output_tokens": 1, "cache_read_input_tokens": 1, "cache_creation_input_tokens": 1}, 47),
    # zero tokens cost nothing
    ("sonnet-zero", "claude-sonnet-4-6",
     {"usage": {"input_tokens": 0, "output_tokens": 0}},
     {"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}, 0),
    # OpenAI: prompt 1010 of which 10 cached -> uncached 1000*0.15 = 150, cached 10*0.075 = 0.75,
    # output 7*0.6 = 4.2: 154.95 -> 155
    ("mini-cached", "gpt-4o-mini",
     {"variant": "openai", "usage": {"prompt_tokens": 1010, "completion_tokens": 7, "total_tokens": 1017,
                                     "prompt_tokens_details": {"cached_tokens": 10}}},
     {"input_tokens": 1000, "output_tokens": 7, "cache_read_input_tokens": 10,
      "cache_creation_input_tokens": None}, 155),
    # 3*2.5 = 7.5 -> 8 (half up)
    ("gpt4o-half-up", "gpt-4o",
     {"variant": "openai", "usage": {"prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3}},
     {"input_tokens": 3, "output_tokens": 0, "cache_read_input_tokens": 0, "cache_creation_input_tokens": None}, 8),
    # 3*0.15 = 0.45 -> 0
    ("mini-rounds-down", "gpt-4o-mini",
     {"variant": "openai", "usage": {"prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3}},
     {"input_tokens": 3, "output_tokens": 0, "cache_read_input_tokens": 0, "cache_creation_input_tokens": None}, 0),
    # Groq (provider from the built-in table, base URL overridden): 100*0.59 + 100*0.79 = 59 + 79 = 138
    ("groq-llama", "llama-3.3-70b-versatile",
     {"variant": "groq", "usage": {"prompt_tokens": 100, "completion_tokens": 100, "total_tokens": 200}},
     {"input_tokens": 100, "output_tokens": 100, "cache_read_input_tokens": None,
      "cache_creation_input_tokens": None}, 138),
    # MODELS_FILE prices with six decimals: 1000001*1.234567 + 3*7.654321
    # = 1234568.234567 + 22.962963 = 1234591.19753 -> 1234591
    ("odd-price", "odd-price",
     {"usage": {"input_tokens": 1000001, "output_tokens": 3}},
     {"input_tokens": 1000001, "output_tokens": 3, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0},
     1234591),
]


def usd(micros):
    return f"{micros // 1000000}.{micros % 1000000:06d}"


def models_file(tmp_dir, fake):
    p = Path(tmp_dir) / "models.json"
    p.write_text(json.dumps({
        "providers": {"groq": {"type": "openai", "base_url": fake.url + "/v1", "api_key_env": "GROQ_API_KEY"}},
        "models": [{"name": "odd-price", "provider": "anthropic", "model_id": "claude-odd",
                    "context_window": 200000, "max_output": 8192,
                    "price": {"input": 1.234567, "output": 7.654321, "cache_write": 0, "cache_read": 0}}],
    }))
    return str(p)


def env_for(fake, tmp_dir, **extra):
    env = {"OPENAI_BASE_URL": fake.url + "/v1", "OPENAI_API_KEY": OPENAI_KEY, "GROQ_API_KEY": "gsk-test",
           "MODELS_FILE": models_file(tmp_dir, fake)}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def server(chatd_module, fake, tmp_path_factory):
    return chatd_module(env_for(fake, tmp_path_factory.mktemp("cost")))


def exact_cost(model, usage):
    """The table's arithmetic in integers: micro-dollars, half up. Cross-checks the hand values."""
    per_mtok = [round(p * 1000000) for p in PRICE.get(model, (1.234567, 7.654321, 0, 0))]
    counts = [usage["input_tokens"], usage["output_tokens"], usage["cache_creation_input_tokens"],
              usage["cache_read_input_tokens"]]
    total = sum((n or 0) * p for n, p in zip(counts, per_mtok))
    return (total + 500000) // 1000000


@pytest.mark.parametrize("name,model,scenario,usage,micros", CASES, ids=[c[0] for c in CASES])
def test_turn_cost(server, fake, name, model, scenario, usage, micros):
    assert exact_cost(model, usage) == micros, "hand value and integer arithmetic disagree"
    c = server.client
    sid = f"cost-{name}"
    fake.script(queue=[scenario, scenario])
    r = c.post("/v1/chat", json={"message": "price this", "session_id": sid, "model": model})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == model
    assert body["usage"] == usage
    assert body["cost"] == {"micros": micros, "usd": usd(micros)}
    resp, sse = stream_v1(c, {"message": "and this", "session_id": sid})
    assert sse is not None and sse.names()[-1] == "done", sse and sse.events
    done = sse.data("done")[0]
    assert done["usage"] == usage
    assert done["cost"] == {"micros": micros, "usd": usd(micros)}
    msgs = c.get(f"/v1/sessions/{sid}/messages").json()["data"]
    costs = [m.get("cost") for m in msgs if m["role"] == "assistant"]
    assert costs == [{"micros": micros, "usd": usd(micros)}] * 2
    s = c.get(f"/v1/sessions/{sid}").json()
    assert s["cost"] == {"micros": 2 * micros, "usd": usd(2 * micros)}
    assert s["usage"] == {k: 2 * (v or 0) for k, v in usage.items()}


def test_default_usage_priced(server, fake):
    """No forced numbers: the fake's own counts, priced at sonnet rates."""
    r = server.client.post("/v1/chat", json={"message": "plain", "session_id": "cost-plain"})
    assert r.status_code == 200, r.text
    u = r.json()["usage"]
    assert u["input_tokens"] > 0 and u["output_tokens"] == len(echo("plain").split())
    assert r.json()["cost"]["micros"] == (u["input_tokens"] * 3000000 + u["output_tokens"] * 15000000
                                          + 500000) // 1000000


def _keys_create(env, name):
    out = subprocess.run([CHATD_BIN, "keys", "create", "--name", name], env=env, capture_output=True, text=True,
                         timeout=20)
    assert out.returncode == 0, out.stderr
    fields = dict(line.split(":", 1) for line in out.stdout.splitlines() if ":" in line)
    return fields["id"].strip(), fields["secret"].strip()


def _keys_list(env):
    out = subprocess.run([CHATD_BIN, "keys", "list"], env=env, capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    rows = {}
    for line in out.stdout.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 7 and parts[0].startswith("key_"):
            rows[parts[0]] = {"name": parts[1], "turns": int(parts[-2]), "cost_usd": parts[-1]}
    return rows


def test_totals_after_many_turns(chatd, fake, tmp_path):
    s = chatd(env_for(fake, tmp_path, AUTH_MODE="keys", API_TOKEN=ADMIN))
    ka, sa = _keys_create(s.env, "cost-a")
    kb, sb = _keys_create(s.env, "cost-b")
    ha = {"Authorization": "Bearer " + sa}
    hb = {"Authorization": "Bearer " + sb}
    c = s.client

    # (headers, endpoint, session, model or None, scenario case name)
    by_name = {x[0]: x for x in CASES}
    plan = []
    for i in range(6):
        plan.append((ha, "json" if i % 2 else "sse", "tot-a1", "claude-sonnet-4-6" if i == 0 else None,
                     ["sonnet-mix", "haiku-mix", "opus-small"][i % 3]))
    for i in range(5):
        plan.append((ha, "sse" if i % 2 else "json", "tot-a2", "gpt-4o-mini",
                     ["mini-cached", "mini-rounds-down"][i % 2]))
    for i in range(4):
        plan.append((hb, "json", "tot-b1", "odd-price" if i % 2 else "gpt-4o",
                     "odd-price" if i % 2 else "gpt4o-half-up"))
    for i in range(3):
        plan.append((hb, "completions", "tot-b2", "llama-3.3-70b-versatile", "groq-llama"))
    fake.script(queue=[by_name[p[4]][2] for p in plan])

    # A case's price depends on the model that runs it, not on the case's own model.
    expected = {"a": 0, "b": 0}
    per_session = {}
    turns = {"a": 0, "b": 0}
    session_model = {}
    tokens = {"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
    for headers, endpoint, sid, model, case in plan:
        if model:
            session_model[sid] = model
        model_used = session_model[sid]
        usage = by_name[case][3]
        want = exact_cost(model_used, usage)
        body = {"message": f"turn of {case}", "session_id": sid}
        if model:
            body["model"] = model
        if endpoint == "json":
            r = c.post("/v1/chat", json=body, headers=headers)
            assert r.status_code == 200, r.text
            assert r.json()["cost"]["micros"] == want and r.json()["model"] == model_used
        elif endpoint == "sse":
            resp, sse = stream_v1(c, body, headers=headers)
            assert sse is not None and sse.names()[-1] == "done", sse and sse.events
            assert sse.data("done")[0]["cost"]["micros"] == want
        else:
            r = c.post("/v1/chat/completions", headers={**headers, "X-Session-Id": sid},
                       json={"model": model_used, "messages": [{"role": "user", "content": body["message"]}]})
            assert r.status_code == 200, r.text
            assert r.json()["usage"]["prompt_tokens"] == (usage["input_tokens"] or 0) + (
                usage["cache_read_input_tokens"] or 0)
        who = "a" if headers is ha else "b"
        expected[who] += want
        turns[who] += 1
        per_session[sid] = per_session.get(sid, 0) + want
        for k in tokens:
            tokens[k] += usage[k] or 0

    for sid, micros in per_session.items():
        h = ha if sid.startswith("tot-a") else hb
        got = c.get(f"/v1/sessions/{sid}", headers=h).json()
        assert got["cost"] == {"micros": micros, "usd": usd(micros)}, sid
        msgs = c.get(f"/v1/sessions/{sid}/messages", headers=h).json()["data"]
        assert sum(m["cost"]["micros"] for m in msgs if m["role"] == "assistant") == micros

    st = c.get("/v1/stats", headers={"Authorization": "Bearer " + ADMIN})
    assert st.status_code == 200, st.text
    total = expected["a"] + expected["b"]
    assert st.json()["cost"] == {"micros": total, "usd": usd(total)}
    assert st.json()["usage"] == tokens
    assert st.json()["turns"] == len(plan)

    rows = _keys_list(s.env)
    assert rows[ka] == {"name": "cost-a", "turns": turns["a"], "cost_usd": usd(expected["a"])}, rows
    assert rows[kb] == {"name": "cost-b", "turns": turns["b"], "cost_usd": usd(expected["b"])}, rows
    # The hand-checked sums. tot-a1 runs on sonnet (named once, then remembered), so the
    # haiku and opus usage mixes are priced at sonnet rates there:
    #   haiku-mix: 1001*3 + 333*15 + 12345*0.30 + 777*3.75 = 3003 + 4995 + 3703.5 + 2913.75 = 14615.25 -> 14615
    #   opus-small: 3*3 + 1*15 + 1*0.30 + 1*3.75 = 28.05 -> 28
    #   a = 2*(3712836 + 14615 + 28) + 3*155 + 2*0 = 7454958 + 465
    #   b = 2*8 + 2*1234591 + 3*138 = 16 + 2469182 + 414
    assert expected["a"] == 7455423 and expected["b"] == 2469612


# --------------------------------------------------------------------------- estimate and models


# usage {input 1234567, output 89, cache_read 1000, cache_write 2000} on every built-in model:
ESTIMATE = {
    "claude-sonnet-4-6": 3712836,        # 3703701 + 1335 + 7500 + 300
    "claude-opus-4-5": 6188060,          # 6172835 + 2225 + 12500 + 500
    "claude-haiku-4-5": 1237612,         # 1234567 + 445 + 2500 + 100
    "gpt-4o": 3093558,                   # 3086417.5 + 890 + 5000 + 1250 = 3093557.5 -> half up
    "gpt-4o-mini": 185613,               # 185185.05 + 53.4 + 300 + 75 = 185613.45
    "llama-3.3-70b-versatile": 730235,   # 728394.53 + 70.31 + 1180 + 590 = 730234.84
    "odd-price": 1524837,                # 1524155.677489 + 681.234569 = 1524836.912058 (no cache prices)
}


def test_estimate_every_model(server):
    u = {"input_tokens": 1234567, "output_tokens": 89, "cache_read_input_tokens": 1000,
         "cache_creation_input_tokens": 2000}
    r = server.client.post("/v1/estimate", json=u)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["usage"] == u
    got = {d["model"]: d for d in body["data"]}
    ids = [m["id"] for m in server.client.get("/v1/models").json()["data"]]
    assert sorted(got) == sorted(ids)
    for model, micros in ESTIMATE.items():
        assert got[model]["cost"] == {"micros": micros, "usd": usd(micros)}, model
        assert exact_cost(model, u) == micros, model
    assert got["gpt-4o"]["provider"] == "openai" and got["llama-3.3-70b-versatile"]["provider"] == "groq"


def test_estimate_filter_and_defaults(server):
    r = server.client.post("/v1/estimate", json={"output_tokens": 1000, "models": ["gpt-4o", "no-such-model"]})
    assert r.status_code == 200, r.text
    assert r.json()["usage"] == {"input_tokens": 0, "output_tokens": 1000, "cache_read_input_tokens": 0,
                                 "cache_creation_input_tokens": 0}
    assert r.json()["data"] == [{"model": "gpt-4o", "provider": "openai", "cost": {"micros": 10000,
                                                                                     "usd": "0.010000"}}]


@pytest.mark.parametrize("bad", [{"input_tokens": -1}, {"input_tokens": 1.5}, {"output_tokens": "9"},
                                 {"models": "gpt-4o"}, [1, 2]])
def test_estimate_rejects_bad_input(server, bad):
    assert_v1_error(server.client.post("/v1/estimate", json=bad), 400, "invalid_request_error")


def test_models_shape(chatd, fake):
    s = chatd({"OPENAI_API_KEY": None, "OPENAI_BASE_URL": None, "GROQ_API_KEY": None})
    r = s.client.get("/v1/models")
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"data", "default"} and body["default"] == "claude-sonnet-4-6"
    table = json.loads((REPO / "config" / "models.json").read_text())
    want = {m["name"]: m for m in table["models"]}
    got = {m["id"]: m for m in body["data"]}
    assert set(got) == set(want)
    assert [m["id"] for m in body["data"] if m["default"]] == ["claude-sonnet-4-6"]
    for name, m in got.items():
        assert set(m) == {"id", "provider", "model_id", "context_window", "max_output", "available", "default",
                          "fallbacks", "pricing", "features", "temperature_max", "rejects"}, m
        w = want[name]
        assert sorted(m["features"]) == sorted(w.get("features", [])), name
        assert m["temperature_max"] == w.get("temperature_max", 1 if w["provider"] == "anthropic" else 2), name
        assert set(w.get("rejects", [])) <= set(m["rejects"]), name
        assert m["provider"] == w["provider"] and m["model_id"] == w["model_id"]
        assert m["context_window"] == w["context_window"] and m["max_output"] == w["max_output"]
        assert m["fallbacks"] == w.get("fallbacks", [])
        assert m["pricing"] == {"currency": "USD", "input_per_mtok": w["price"]["input"],
                                "output_per_mtok": w["price"]["output"],
                                "cache_write_per_mtok": w["price"]["cache_write"],
                                "cache_read_per_mtok": w["price"]["cache_read"]}, name
        assert m["available"] is (w["provider"] == "anthropic"), name
        assert PRICE[name] == (w["price"]["input"], w["price"]["output"], w["price"]["cache_write"],
                               w["price"]["cache_read"]), "the hand prices of this file are out of date"


def test_models_file_merges_by_name(chatd, fake, tmp_path):
    p = tmp_path / "m.json"
    p.write_text(json.dumps({"models": [
        {"name": "claude-sonnet-4-6", "provider": "anthropic", "model_id": "claude-sonnet-4-6-20990101",
         "context_window": 100000, "max_output": 1000, "price": {"input": 1, "output": 2}}]}))
    s = chatd({"MODELS_FILE": str(p)})
    models = {m["id"]: m for m in s.client.get("/v1/models").json()["data"]}
    m = models["claude-sonnet-4-6"]
    assert m["model_id"] == "claude-sonnet-4-6-20990101" and m["context_window"] == 100000
    assert m["pricing"]["input_per_mtok"] == 1 and m["pricing"]["cache_read_per_mtok"] == 0
    assert "claude-haiku-4-5" in models  # the others stay
    fake.script(queue=[{"usage": {"input_tokens": 1000, "output_tokens": 1000}}])
    r = s.client.post("/v1/chat", json={"message": "x", "session_id": "merged"})
    assert r.status_code == 200, r.text
    assert r.json()["cost"]["micros"] == 3000  # 1000*1 + 1000*2
    assert fake.requests()[0]["body"]["model"] == "claude-sonnet-4-6-20990101"
