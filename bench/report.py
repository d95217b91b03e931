#!/usr/bin/python3
"""Report step of bench/run.sh: turns the files of one run into the result
(markdown on stdout, JSON in --out, and with --record BASE also BASE.md and
BASE.json, the files committed under bench/results/).

Inputs in --dir, written by run.sh, bench/turns.lua, streams.mjs and
long_session.py:
  <phase>.json        wrk summary (turns.lua done()): statuses, latency, ...
  <phase>.meta.json   CPU seconds of the server under test, chatd, the fake,
                      nginx and the whole machine; chatd RSS; upstream calls
  <phase>.wrk.txt     wrk's own text output (cross-check of non-2xx counts)
  sys_<phase>.strace  strace -c -f summary of chatd during a short run
  streams_<x>.json    the streams phase against chatd or nginx
  long_session.json   the long-session phase
  lat_<kind>_<target>.json  bench/openloop.c at half of the maximum rate
                      (kind: stateless or chat; target: chatd, direct, nginx),
                      with .meta.json (server CPU) and .err beside it
  round_<target>.<r>  the interleaved rounds (target: nginx, chat,
                      stateless), files as for a throughput phase
  upstream_*.json     the last request chatd sent to the fake (shape check)
  chatd-N.err         the logs of the chatd processes (warnings and errors are
                      counted and quoted)

A throughput phase with any failed turn (non-2xx, SSE error event, socket
error, timeout), a chatd that died, or a crash at shutdown makes the run
invalid: it is said loudly and the exit status is 1, so no one quotes a
throughput built on errors. Streams that are not whole, or a long session that
stopped early, fail their goal (and are listed) without voiding the
throughput rows.
"""
import argparse
import datetime
import glob
import json
import os
import re
import statistics
import subprocess
import sys

def load_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def phase_result(d, name):
    """Numbers and problems of one phase."""
    summ = load_json(os.path.join(d, name + ".json"))
    meta = load_json(os.path.join(d, name + ".meta.json"), {})
    try:
        with open(os.path.join(d, name + ".wrk.txt")) as f:
            wrk_text = f.read()
    except OSError:
        wrk_text = ""
    problems = []
    if meta.get("wrk_exit", 0) != 0:
        problems.append("wrk exited with status %s" % meta.get("wrk_exit"))
    if not meta.get("chatd_alive", 1):
        problems.append("chatd was not running at the end of the phase")
    m = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", wrk_text)
    wrk_non2xx = int(m.group(1)) if m else 0
    if summ is None:
        problems.append("no wrk summary (wrk failed?)")
        return {"phase": name, "valid": False, "problems": problems, "wrk_non2xx": wrk_non2xx, **meta}

    secs = summ["duration_us"] / 1e6
    codes = {int(k): v for k, v in summ["status_codes"].items()}
    non2xx = sum(v for k, v in codes.items() if not 200 <= k < 300)
    sock = summ["errors"]
    sock_total = sock["connect"] + sock["read"] + sock["write"] + sock["timeout"]
    if non2xx or wrk_non2xx:
        problems.append("%d non-2xx responses (wrk: %d), statuses %s"
                        % (non2xx, wrk_non2xx, json.dumps({str(k): v for k, v in sorted(codes.items())})))
    if summ["bad_body"]:
        problems.append("%d 2xx responses were not a complete turn (error event or cut body)" % summ["bad_body"])
    if sock_total:
        problems.append("socket errors: %s" % json.dumps(sock))
    if summ["responses"] == 0:
        problems.append("no response at all")
    if summ.get("stuck_at_end"):
        problems.append("%d turns got no response at all for more than %.1f s (longer than any completed turn; "
                        "oldest %.1f s): lost by the server" % (summ["stuck_at_end"], summ["stuck_after_us"] / 1e6,
                                                                summ["oldest_in_flight_us"] / 1e6))
    if summ["latency_us"]["samples"] < summ["ok"]:
        problems.append("only %d latency samples for %d turns" % (summ["latency_us"]["samples"], summ["ok"]))
    lat = summ["latency_us"]
    pct = lat["percentiles"]
    ok = summ["ok"]
    res = {
        "phase": name,
        "mode": summ["mode"],
        "valid": not problems,
        "problems": problems,
        "duration_s": round(secs, 3),
        "responses": summ["responses"],
        "ok_turns": ok,
        "turns_per_s": round(ok / secs, 1) if secs > 0 else 0.0,
        "non_2xx": non2xx,
        "wrk_non2xx": wrk_non2xx,
        "bad_body": summ["bad_body"],
        "socket_errors": sock,
        "status_codes": {str(k): v for k, v in sorted(codes.items())},
        "latency_ms": {
            "p50": pct["50"] / 1000.0,
            "p75": pct["75"] / 1000.0,
            "p90": pct["90"] / 1000.0,
            "p99": pct["99"] / 1000.0,
            "p99.9": pct["99.9"] / 1000.0,
            "mean": round(lat["mean"] / 1000.0, 3),
            "max": lat["max"] / 1000.0,
            "samples": lat["samples"],
        },
        # wrk's own histogram after its coordinated-omission correction (see
        # turns.lua): kept for reference, not the result.
        "wrk_corrected_latency_ms": {k: v / 1000.0 for k, v in summ["wrk_corrected_latency_us"]["percentiles"].items()},
        # Little's law: turns/s x mean latency = connections busy on average.
        # Close to the connection count in a closed-loop run; far above it
        # would mean the latencies are wrong, far below that wrk starved.
        "busy_connections": round(ok / secs * lat["mean"] / 1e6, 1) if secs > 0 else None,
        # chatd's own measure of what a request cost it (X-Chatd-Overhead-Ms).
        "overhead_header_ms": summ.get("overhead_header_ms"),
        "sessions_used": summ["sessions_minted"],
        "max_turns_per_session": summ["max_turns_seen"],
        "lost_session_id": summ["lost_session_id"],
        "in_flight_at_end": summ.get("in_flight_at_end"),
        "stuck_at_end": summ.get("stuck_at_end"),
        "oldest_in_flight_s": summ.get("oldest_in_flight_us", 0) / 1e6,
        "bytes_read": summ["bytes"],
        "upstream_requests": meta.get("upstream_requests"),
        "chatd_cpu_s": meta.get("chatd_cpu_s"),
        "fake_cpu_s": meta.get("fake_cpu_s"),
        "chatd_vmrss_kb_after": meta.get("vmrss_kb"),
        "chatd_vmhwm_kb_after": meta.get("vmhwm_kb"),
    }
    if ok:
        res["chatd_cpu_ms_per_turn"] = round(1000.0 * (meta.get("chatd_cpu_s") or 0) / ok, 3)
        res["fake_cpu_ms_per_turn"] = round(1000.0 * (meta.get("fake_cpu_s") or 0) / ok, 3)
    return res


def read_numbers(path):
    try:
        with open(path) as f:
            return [float(x) for x in f.read().split()]
    except (OSError, ValueError):
        return None


def nearest_rank(sorted_vals, p):
    if not sorted_vals:
        return None
    return sorted_vals[max(0, int(-(-len(sorted_vals) * p // 100)) - 1)]


COUNTS = ("scheduled", "sent", "completed", "ok", "non_2xx", "bad_body", "errors", "dropped", "unfinished")


def latency_result(d, base, names):
    """The rounds of one open-loop target (bench/openloop.c's JSON, and its raw
    latencies in NAME.lat / NAME.ovh), merged: counts summed, percentiles over
    every round's samples, generator lag p99 the worst round's."""
    runs, metas, problems = [], [], []
    lat, ovh = [], []
    for name in names:
        res = load_json(os.path.join(d, name + ".json"))
        meta = load_json(os.path.join(d, name + ".meta.json"), {}) or {}
        metas.append(meta)
        if res is None:
            problems.append("%s: no result (openloop failed, exit %s)" % (name, meta.get("exit")))
            continue
        if not meta.get("chatd_alive", 1):
            problems.append("%s: chatd was not running at the end" % name)
        runs.append(res)
        raw = read_numbers(os.path.join(d, name + ".lat"))
        if raw is None:
            problems.append("%s: no raw latencies" % name)
        else:
            lat += raw
        ovh += read_numbers(os.path.join(d, name + ".ovh")) or []
    if not runs:
        return {"phase": base, "problems": problems, "rounds": len(names)}
    m = {k: sum(r.get(k, 0) for r in runs) for k in COUNTS}
    for k in COUNTS[4:]:
        if m[k]:
            problems.append("%d %s" % (m[k], k.replace("_", " ")))
    if m["sent"] < m["scheduled"]:
        problems.append("only %d of %d scheduled requests sent" % (m["sent"], m["scheduled"]))
    codes = {}
    for r in runs:
        for c, n in (r.get("status_codes") or {}).items():
            codes[c] = codes.get(c, 0) + n
    lat.sort()
    ovh.sort()
    pcts = (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9))
    lm = {"samples": len(lat)}
    if lat:
        lm.update({k: round(nearest_rank(lat, p) / 1000.0, 3) for k, p in pcts})
        lm.update({"max": lat[-1] / 1000.0, "min": lat[0] / 1000.0, "mean": round(sum(lat) / len(lat) / 1000.0, 4)})
    om = {"samples": len(ovh)}
    if ovh:
        om.update({k: nearest_rank(ovh, p) for k, p in pcts})
        om["max"] = ovh[-1]
    server_cpu = sum(x.get("server_cpu_s") or 0 for x in metas)
    res = dict(m)
    res.update({
        "phase": base, "rounds": len(names), "runs": runs, "problems": problems, "status_codes": codes,
        "rate": runs[0].get("rate"), "duration_s": sum(r.get("duration_s", 0) for r in runs),
        "latency_ms": lm, "overhead_header_ms": om,
        "send_lag_ms": {"p99": max((r.get("send_lag_ms") or {}).get("p99", 0) for r in runs)},
        "connections_opened": max(r.get("connections_opened", 0) for r in runs),
        "little": [r.get("little") for r in runs],
        "server_cpu_s": round(server_cpu, 3),
        "generator_cpu_s": round(sum(r.get("generator_cpu_s", 0) for r in runs), 3),
        "machine_busy_cores": [x.get("machine_busy_cores") for x in metas],
    })
    if m["completed"]:
        res["server_cpu_ms_per_request"] = round(1000.0 * server_cpu / m["completed"], 4)
    return res


def latency_section(d, names):
    """{kind: {target: merged result}} and the added latency of chatd per kind.
    Names are lat_<kind>_<target>.<round>."""
    groups = {}
    for name in names:
        groups.setdefault(name.split(".")[0], []).append(name)
    out = {}
    for base, members in groups.items():
        parts = base.split("_")  # lat_<kind>_<target>
        if len(parts) != 3:
            continue
        out.setdefault(parts[1], {})[parts[2]] = latency_result(d, base, members)
    added = {}
    for kind, t in out.items():
        c, di, ng = t.get("chatd"), t.get("direct"), t.get("nginx")
        lat = lambda r, p: ((r or {}).get("latency_ms") or {}).get(p)
        e = {"rate": (c or di or {}).get("rate")}
        if lat(c, "p99") is not None and lat(di, "p99") is not None:
            e["added_p99_ms"] = round(lat(c, "p99") - lat(di, "p99"), 3)
            e["added_p50_ms"] = round(lat(c, "p50") - lat(di, "p50"), 3)
        if lat(c, "p99") is not None and lat(ng, "p99") is not None:
            e["added_p99_vs_nginx_ms"] = round(lat(c, "p99") - lat(ng, "p99"), 3)
        oh = (c or {}).get("overhead_header_ms") or {}
        e["overhead_header_p99_ms"] = oh.get("p99") if oh.get("samples") else None
        e["problems"] = ["%s: %s" % (tgt, p) for tgt, r in sorted(t.items()) for p in r.get("problems", [])]
        e["max_generator_lag_p99_ms"] = max(((r.get("send_lag_ms") or {}).get("p99") or 0) for r in t.values())
        added[kind] = e
    return out, added


def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def ratios(chatd, direct):
    if not chatd or not direct or "latency_ms" not in chatd or "latency_ms" not in direct:
        return None
    return {
        "turns_per_s": ratio(chatd["turns_per_s"], direct["turns_per_s"]),
        "p50": ratio(chatd["latency_ms"]["p50"], direct["latency_ms"]["p50"]),
        "p99": ratio(chatd["latency_ms"]["p99"], direct["latency_ms"]["p99"]),
    }


def ratio_rounds(d, names):
    """The interleaved rounds of run.sh (round_<target>.<r>: nginx, chat,
    stateless): per round the turns/s of each and the ratios to that round's
    nginx, then the median and range of each ratio over the rounds. A round
    with a failed phase gives no ratio (and its problems void the run)."""
    by_round, problems = {}, []
    for n in names:
        target, _, r = n[len("round_"):].partition(".")
        res = phase_result(d, n)
        meta = load_phase_meta(d, n)
        problems += ["%s: %s" % (n, p) for p in res["problems"]]
        by_round.setdefault(int(r), {})[target] = {
            "turns_per_s": res.get("turns_per_s") if res.get("valid") else None,
            "server_cpu_ms_per_request": cpu_per_request(res, meta) if res.get("valid") else None,
            "machine_busy_cores": meta.get("machine_busy_cores"),
        }
    rounds = []
    for r in sorted(by_round):
        x = by_round[r]
        ng = (x.get("nginx") or {}).get("turns_per_s")
        row = {"round": r, **{t: x.get(t) for t in ("nginx", "chat", "stateless")}}
        for t in ("chat", "stateless"):
            row[t + "_vs_nginx"] = ratio((x.get(t) or {}).get("turns_per_s"), ng)
        rounds.append(row)
    summary = {}
    for t in ("chat", "stateless"):
        vals = [r[t + "_vs_nginx"] for r in rounds if r[t + "_vs_nginx"] is not None]
        cpu = [r[t]["server_cpu_ms_per_request"] for r in rounds
               if r.get(t) and r[t]["server_cpu_ms_per_request"] is not None]
        summary[t] = {"vs_nginx_median": round(statistics.median(vals), 3) if vals else None,
                      "vs_nginx_min": min(vals) if vals else None, "vs_nginx_max": max(vals) if vals else None,
                      "rounds": len(vals),
                      "cpu_ms_per_request_median": round(statistics.median(cpu), 4) if cpu else None}
    return {"rounds": rounds, "summary": summary, "problems": problems}


def upstream_shape(path):
    """What chatd really sent the fake: proves the direct phases send its twin."""
    data = load_json(path, {}) or {}
    reqs = data.get("requests") or []
    if not reqs or not isinstance(reqs[-1].get("body"), dict):
        return None
    b = reqs[-1]["body"]
    return {
        "keys": sorted(b.keys()),
        "model": b.get("model"),
        "max_tokens": b.get("max_tokens"),
        "stream": bool(b.get("stream")),
        "messages": len(b.get("messages") or []),
        "system_type": type(b.get("system")).__name__,
        "body_bytes": len(json.dumps(b, separators=(",", ":"))),
    }


def chatd_log(path):
    """Warnings and errors chatd logged during the run."""
    counts, first = {}, []
    try:
        with open(path, errors="replace") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                    level, msg = rec.get("level", "?"), rec.get("msg", "")
                except ValueError:
                    level, msg = "raw", line.strip()
                if level in ("debug", "info"):
                    continue
                key = "%s: %s" % (level, msg)
                counts[key] = counts.get(key, 0) + 1
                if len(first) < 5:
                    first.append(line.strip()[:400])
    except OSError:
        pass
    return {"counts": counts, "first_lines": first}


def fs_type(path):
    """File system holding path (tmpfs makes SQLite's fsyncs free: say so)."""
    best, fs = "", "?"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mnt = parts[1]
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, fs = mnt, parts[2]
    except OSError:
        pass
    return fs


def durability(args):
    """What an acknowledged turn survives, in words, for the table and the JSON."""
    if args.database == "postgres":
        return "fsync=on, synchronous_commit=on"
    return "synchronous=%s" % args.db_sync


def load_phase_meta(d, name):
    return load_json(os.path.join(d, name + ".meta.json"), {}) or {}


def cpu_per_request(r, meta):
    """Server CPU per completed request, in ms: the process(es) under test."""
    if not r or not r.get("ok_turns"):
        return None
    return round(1000.0 * (meta.get("server_cpu_s") or 0) / r["ok_turns"], 4)


def parse_strace(path):
    """{syscall: calls} and the total from an `strace -c` summary."""
    calls, total = {}, None
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None, None
    for line in lines:
        parts = line.split()
        if len(parts) < 5 or parts[0].startswith("%") or parts[0].startswith("-"):
            continue
        name = parts[-1]
        try:
            n = int(parts[3])
        except ValueError:
            continue
        if name == "total":
            total = n
        else:
            calls[name] = n
    if total is None and calls:
        total = sum(calls.values())
    return calls, total


def binary_mtime(path):
    """When the measured binary was built (it may predate the commit named in the report)."""
    try:
        return datetime.datetime.fromtimestamp(os.stat(path).st_mtime, datetime.timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%SZ")
    except OSError:
        return None


def machine():
    """What the numbers were measured on."""
    def sh(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    cpu_model, mem_kb = "", 0
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_kb = int(line.split()[1])
                    break
    except OSError:
        pass
    debian = ""
    try:
        with open("/etc/debian_version") as f:
            debian = f.read().strip()
    except OSError:
        pass
    pkgs = {}
    for p in ("nginx", "wrk", "strace", "libsqlite3-0", "libevent-2.1-7", "libcurl4", "libjansson4", "nodejs"):
        v = sh(["dpkg-query", "-W", "-f", "${Version}", p])
        if v:
            pkgs[p] = v
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model or sh(["uname", "-m"]),
        "memory_mib": mem_kb // 1024,
        "kernel": sh(["uname", "-r"]),
        "debian": debian,
        "packages": pkgs,
        "node": sh(["node", "--version"]),
        "python": sys.version.split()[0],
        "note": "load generator, fake provider, nginx and chatd share these CPUs",
    }


def fnum(v, prec=1, suffix=""):
    if v is None:
        return "-"
    if isinstance(v, float) and prec == 1 and abs(v) >= 1000:
        return "{:,.0f}{}".format(v, suffix)
    return "%.*f%s" % (prec, v, suffix)


# The rows of issue 15's table, in its order: (phase, label, reference phase for "vs nginx").
ROWS = [
    ("direct", "fake provider directly", "nginx"),
    ("nginx", "nginx as a plain proxy to the fake", "nginx"),
    ("healthz", "chatd `GET /healthz`", "nginx"),
    ("stateless", "chatd `/v1/chat/completions`, stateless", "nginx"),
    ("chat", "chatd `/chat` (SQLite, synchronous=FULL)", "nginx"),
    ("chat_normal", "chatd `/chat`, `?synchronous=normal`", "nginx"),
    ("chat_w1", "chatd `/chat`, `WORKERS=1`", "nginx"),
    ("stream", "chatd `/v1/chat/stream`", "nginx_stream"),
    ("direct_stream", "fake provider directly, streaming", "nginx_stream"),
    ("nginx_stream", "nginx -> fake, streaming", "nginx_stream"),
    ("portkey", "a TypeScript gateway (Portkey) -> fake", "nginx"),
]
PORTKEY_LABEL = "a TypeScript gateway (Portkey) -> fake"
# Rows of issue 15's table this benchmark cannot produce on this machine, and why.
TEMPLATE_NOT_MEASURED = (
    "the template (FastAPI) `/chat`",
    "no PyPI on this machine; Debian 12 has FastAPI and uvicorn but not the `anthropic` Python SDK the template "
    "needs")


def portkey_upstream_check(chat_path, portkey_path):
    """Did the Portkey gateway send the fake the request chatd sends? Compares
    the last request the fake received in the Portkey phase with chatd's /chat
    upstream request: path, model, max_tokens, system, stream, and the shape of
    the messages (roles, content type). None when either is missing."""
    def last(path):
        reqs = (load_json(path, {}) or {}).get("requests") or []
        return reqs[-1] if reqs and isinstance(reqs[-1].get("body"), dict) else None
    a, b = last(chat_path), last(portkey_path)
    if a is None or b is None:
        return None
    diffs = []
    if a.get("path") != b.get("path"):
        diffs.append("path %s vs %s" % (a.get("path"), b.get("path")))
    ba, bb = a["body"], b["body"]
    for k in sorted(set(ba) | set(bb)):
        if k == "messages":
            continue
        if ba.get(k) != bb.get(k):
            diffs.append("%s %s vs %s" % (k, json.dumps(ba.get(k)), json.dumps(bb.get(k))))

    def shape(msgs):
        return [(m.get("role"), type(m.get("content")).__name__) for m in msgs or []]
    # A fresh session's first turn on both sides (BENCH_MAX_TURNS=1): one user message.
    if shape(ba.get("messages"))[-1:] != shape(bb.get("messages"))[-1:]:
        diffs.append("messages %s vs %s" % (shape(ba.get("messages")), shape(bb.get("messages"))))
    return {"path": b.get("path"), "same_as_chatd": not diffs, "differences": diffs,
            "extra_headers": sorted(set(b.get("headers") or {}) - set(a.get("headers") or {}))}


def main():
    ap = argparse.ArgumentParser()
    for a in ("dir", "out", "binary", "build-type", "phases", "chatd-exit", "db-dir"):
        ap.add_argument("--" + a, required=True)
    for a in ("workers", "connections", "threads", "seconds", "warmup", "sessions", "max-turns",
              "idle-rss-kb", "final-hwm-kb", "final-rss-kb", "db-bytes"):
        ap.add_argument("--" + a, type=int, required=True)
    ap.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--db-sync", default="full")
    ap.add_argument("--record", default=None)
    ap.add_argument("--main-alive", type=int, default=1)
    ap.add_argument("--sys-phases", default="")
    ap.add_argument("--stream-phases", default="")
    for a in ("streams", "stream-hold", "stream-deltas", "long", "long-turns", "nofile", "nginx-workers",
              "dirty", "run-seconds", "sys-conns", "sys-seconds"):
        ap.add_argument("--" + a, type=int, default=0)
    for a in ("sha", "load-before", "load-after", "loadavg-before", "loadavg-after"):
        ap.add_argument("--" + a, default="")
    ap.add_argument("--lat-phases", default="")
    ap.add_argument("--lat-seconds", type=int, default=0)
    ap.add_argument("--lat-max-connections", type=int, default=0)
    ap.add_argument("--lat-rounds", type=int, default=1)
    ap.add_argument("--portkey", type=int, default=0)
    ap.add_argument("--round-phases", default="")
    ap.add_argument("--ratio-seconds", type=int, default=0)
    args = ap.parse_args()

    names = args.phases.split()
    phases = {n: phase_result(args.dir, n) for n in names}
    metas = {n: load_phase_meta(args.dir, n) for n in names}
    for n, r in phases.items():
        r["target"] = metas[n].get("target")
        r["server_cpu_ms_per_request"] = cpu_per_request(r, metas[n])
        r["nginx_cpu_s"] = metas[n].get("nginx_cpu_s")
        r["machine_busy_cores"] = metas[n].get("machine_busy_cores")
    chat, direct, nginx = phases.get("chat"), phases.get("direct"), phases.get("nginx")
    stream, direct_stream, nginx_stream = phases.get("stream"), phases.get("direct_stream"), phases.get("nginx_stream")
    fsync_probe = load_json(os.path.join(args.dir, "fsync_probe.json"))
    up_chat = upstream_shape(os.path.join(args.dir, "upstream_chat.json"))
    up_stream = upstream_shape(os.path.join(args.dir, "upstream_stream.json"))
    log = {"counts": {}, "first_lines": []}
    for path in sorted(glob.glob(os.path.join(args.dir, "chatd-*.err"))):
        one = chatd_log(path)
        for k, v in one["counts"].items():
            log["counts"][k] = log["counts"].get(k, 0) + v
        log["first_lines"] += one["first_lines"][:5 - len(log["first_lines"])]

    problems = []
    for name in ("chat", "direct", "stream", "direct_stream") + tuple(n for n in names if n not in (
            "chat", "direct", "stream", "direct_stream")):
        r = phases.get(name)
        if r is None:
            problems.append("%s: phase not run (chatd died before it?)" % name)
        else:
            problems += ["%s: %s" % (name, p) for p in r["problems"]]
    exits = [int(x) if x.lstrip("-").isdigit() else -1 for x in args.chatd_exit.split()]
    for i, e in enumerate(exits):
        if e != 0:
            problems.append("chatd #%d exit status at SIGTERM was %d (0 expected; >128 = killed by signal %d)"
                            % (i + 1, e, e - 128 if e > 128 else 0))
    if not args.main_alive:
        problems.append("the main chatd was not running at the end")
    portkey_gw = load_json(os.path.join(args.dir, "portkey_gateway.json"), None) if args.portkey else None
    if portkey_gw is not None and not portkey_gw.get("alive_at_end"):
        problems.append("portkey: the gateway was not running at the end of its phase")
    rounds = ratio_rounds(args.dir, args.round_phases.split()) if args.round_phases.split() else None
    if rounds:
        problems += rounds["problems"]
    valid = not problems

    # Syscalls per turn.
    syscalls = {}
    for name in args.sys_phases.split():
        r = phase_result(args.dir, name)
        calls, total = parse_strace(os.path.join(args.dir, name + ".strace"))
        ok = r.get("ok_turns") or 0
        entry = {"turns": ok, "total_calls": total, "connections": args.sys_conns, "seconds": args.sys_seconds,
                 "problems": r.get("problems")}
        if calls and ok:
            entry["per_turn"] = round(total / ok, 1)
            top = sorted(calls.items(), key=lambda kv: -kv[1])
            entry["per_turn_by_call"] = {k: round(v / ok, 2) for k, v in top}
        else:
            entry["per_turn"] = None
            entry["note"] = "no strace summary (ptrace not permitted?)" if not calls else "no completed turn"
        syscalls[name.replace("sys_", "")] = entry

    # Streams.
    streams = {}
    for name in args.stream_phases.split():
        d = load_json(os.path.join(args.dir, name + ".json"))
        key = name.replace("streams_", "")
        if d is None:
            streams[key] = {"problems": ["no result (the client failed; see the run's stderr)"]}
            continue
        streams[key] = d
    long = load_json(os.path.join(args.dir, "long_session.json")) if args.long else None
    latency, added = latency_section(args.dir, args.lat_phases.split())

    # The table of the issue.
    rows = []
    for phase, label, ref in ROWS:
        if phase == "portkey" and portkey_gw:
            label = "a TypeScript gateway (Portkey %s) -> fake" % portkey_gw.get("version")
        if phase == "chat":
            label = "chatd `/chat` (%s, %s)" % ("PostgreSQL" if args.database == "postgres" else "SQLite",
                                               durability(args))
        r = phases.get(phase)
        if r is None or "latency_ms" not in r:
            continue
        refr = phases.get(ref)
        rows.append({
            "phase": phase, "label": label,
            "turns_per_s": r["turns_per_s"], "p50_ms": r["latency_ms"]["p50"], "p99_ms": r["latency_ms"]["p99"],
            "server_cpu_ms_per_request": r.get("server_cpu_ms_per_request"),
            "server": r.get("target"),
            "vs_nginx": ratio(r["turns_per_s"], refr["turns_per_s"]) if refr and "latency_ms" in refr else None,
            "reference": ref,
            "machine_busy_cores": r.get("machine_busy_cores"),
            "overhead_header_p99_ms": ((r.get("overhead_header_ms") or {}).get("percentiles") or {}).get("99")
            if (r.get("overhead_header_ms") or {}).get("samples") else None,
            "errors": len(r["problems"]),
        })
    byphase = {x["phase"]: x for x in rows}
    not_measured = []
    if "portkey" not in byphase:
        not_measured.append({"label": PORTKEY_LABEL, "reason": "BENCH_PORTKEY=0 (it installs the gateway from npm)"
                             if not args.portkey else "no result (see the problems)"})
    not_measured.append(dict(zip(("label", "reason"), TEMPLATE_NOT_MEASURED)))
    portkey_up = (portkey_upstream_check(os.path.join(args.dir, "upstream_chat.json"),
                                         os.path.join(args.dir, "upstream_portkey.json"))
                  if "portkey" in byphase else None)

    def goal(name, target, measured, met, note=""):
        return {"goal": name, "target": target, "measured": measured, "met": met, "note": note}

    goals = []
    c, s_ = byphase.get("chat"), byphase.get("stateless")
    def vs_nginx_goal(kind, label, row, target):
        rs = (rounds or {}).get("summary", {}).get(kind) or {}
        if rs.get("rounds"):
            med = rs["vs_nginx_median"]
            goals.append(goal(label, ">= %sx" % target, med, med >= target,
                              "median of %d interleaved rounds of %d s (range %s-%s); the %d s phase above: %s" % (
                                  rs["rounds"], args.ratio_seconds, fnum(rs["vs_nginx_min"], 2),
                                  fnum(rs["vs_nginx_max"], 2), args.seconds, fnum(row["vs_nginx"], 2, "x"))))
        else:
            goals.append(goal(label, ">= %sx" % target, row["vs_nginx"],
                              row["vs_nginx"] is not None and row["vs_nginx"] >= target))

    if c:
        vs_nginx_goal("chat", "/chat turns/s vs nginx->fake (%s)" % durability(args), c, 0.5)
        goals.append(goal("/chat chatd CPU per turn", "<= 0.1 ms", c["server_cpu_ms_per_request"],
                          c["server_cpu_ms_per_request"] is not None and c["server_cpu_ms_per_request"] <= 0.1))
    if s_:
        vs_nginx_goal("stateless", "stateless /v1/chat/completions turns/s vs nginx->fake", s_, 0.8)
    if long:
        rr = long.get("ratio_last_over_first")
        goals.append(goal("long session: median turn %s vs turns %s" % (long.get("last_window"),
                                                                         long.get("first_window")),
                          "<= 1.3x", rr, rr is not None and rr <= 1.3 and not long.get("error")
                          and long.get("turns_done") == long.get("turns_requested"),
                          long.get("error") or ""))
        cc = long.get("chatd_cpu_ms")
        if cc:
            rc = cc.get("ratio_last_over_first")
            goals.append(goal("long session, chatd's own share: its CPU per turn, turns %s vs %s"
                              % (long.get("last_window"), long.get("first_window")),
                              "<= 1.3x", rc, rc is not None and rc <= 1.3 and not long.get("error"),
                              "%s -> %s ms" % (cc.get("median_first"), cc.get("median_last"))))
    sc = streams.get("chatd")
    if sc and "n" in sc:
        n = sc["n"]
        at10k = n >= 10000
        goals.append(goal("concurrent streams all whole", "10,000 streams, all whole", "%d/%d whole" %
                          (sc["whole"], n), sc["whole"] == n and at10k,
                          "" if at10k else "measured at N=%d; the goal is 10,000 (BENCH_STREAMS=10000)" % n))
        kib = sc.get("kib_per_open_stream")
        goals.append(goal("chatd RSS per open stream", "<= 16 KiB", kib, kib is not None and kib <= 16,
                          "%d streams open at that sample" % sc.get("most_open_at_a_sample", 0)))
        ret = sc.get("returned")
        goals.append(goal("memory returned after the burst", "(peak - after) / (peak - before) >= 0.9", ret,
                          ret is not None and ret >= 0.9,
                          "RSS %s KiB after %ss of rest" % (sc["rss_kb"]["after"], sc.get("settle_s"))))
    ov = (c or {}).get("overhead_header_p99_ms")
    for kind, label in (("stateless", "stateless /v1/chat/completions"), ("chat", "/chat")):
        e = added.get(kind)
        if not e or e.get("added_p99_ms") is None:
            continue
        oh = e.get("overhead_header_p99_ms")
        met = e["added_p99_ms"] <= 1.0 and oh is not None and oh <= 1.0 and not e["problems"]
        notes = ["%s/s open loop; X-Chatd-Overhead-Ms p99 %s ms" % (
            fnum(e["rate"], 0), "-" if oh is None else fnum(float(oh), 2))]
        if e["added_p99_ms"] < -1.0 and not e["problems"]:
            # The fake alone had a worse tail than chatd in front of it: noise
            # larger than the goal, nothing to conclude.
            met = None
            notes.append("undecided: the fake's own p99 was more than 1 ms above chatd's (machine noise larger "
                         "than the goal; rerun longer or on a quieter machine)")
        if (e.get("max_generator_lag_p99_ms") or 0) > 1.0:
            notes.append("generator lag p99 up to %.1f ms: the machine was busy" % e["max_generator_lag_p99_ms"])
        if kind == "chat" and fsync_probe:
            notes.append("the database disk's own fdatasync p99 %s ms (p50 %s), under every durable turn" % (
                fnum(fsync_probe["p99_ms"], 2), fnum(fsync_probe["p50_ms"], 2)))
        notes += e["problems"]
        goals.append(goal("added latency p99 at half of the maximum rate, %s" % label,
                          "<= 1 ms (chatd p99 - fake p99, same rate; and X-Chatd-Overhead-Ms p99)",
                          "%.2f ms" % e["added_p99_ms"], met, "; ".join(notes)))
    if not added:
        goals.append(goal("added latency p99 at half of the maximum rate", "<= 1 ms", None, None,
                          "not measured (BENCH_LATENCY=0); at full load (closed loop) /chat's X-Chatd-Overhead-Ms "
                          "p99 was %s ms" % ("-" if ov is None else fnum(float(ov), 2))))

    mach = machine()
    result = {
        "valid": valid,
        "problems": problems,
        "time": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": args.sha, "tree_dirty": bool(args.dirty),
        "machine": mach,
        "load": {"cores_busy_before": args.load_before, "cores_busy_after": args.load_after,
                 "loadavg_before": args.loadavg_before, "loadavg_after": args.loadavg_after,
                 "note": "cores busy machine-wide over 2 s before the servers started and after they stopped: "
                         "other users of the machine"},
        "run_seconds": args.run_seconds,
        "config": {
            "binary": args.binary, "build_type": args.build_type, "workers": args.workers,
            "binary_mtime": binary_mtime(args.binary),
            "wrk_threads": args.threads, "connections": args.connections, "seconds": args.seconds,
            "warmup_seconds": args.warmup, "sessions_in_rotation": args.sessions,
            "max_turns_per_session": args.max_turns,
            "database": args.database, "database_durability": durability(args),
            "database_dir": args.db_dir, "database_fs": fs_type(args.db_dir),
            "nofile_soft_limit": args.nofile, "nginx_workers": args.nginx_workers,
        },
        "table": rows,
        "not_measured": not_measured,
        "goals": goals,
        "non_streaming": {"chatd": chat, "direct": direct, "nginx": nginx,
                          "ratio_chatd_over_direct": ratios(chat, direct),
                          "ratio_chatd_over_nginx": ratios(chat, nginx)},
        "streaming": {"chatd": stream, "direct": direct_stream, "nginx": nginx_stream,
                      "ratio_chatd_over_direct": ratios(stream, direct_stream),
                      "ratio_chatd_over_nginx": ratios(stream, nginx_stream)},
        "phases": phases,
        "ratio_rounds": None if not rounds else {"seconds": args.ratio_seconds, **rounds},
        "syscalls_per_turn": syscalls,
        "streams": streams,
        "streams_config": {"n": args.streams, "hold_s": args.stream_hold, "deltas": args.stream_deltas},
        "long_session": long,
        "latency_half_rate": {"seconds": args.lat_seconds, "max_connections": args.lat_max_connections,
                              "rounds": args.lat_rounds,
                              "runs": latency, "added": added},
        "memory": {
            "chatd_idle_rss_kb": args.idle_rss_kb,
            "chatd_peak_rss_kb": args.final_hwm_kb,
            "chatd_final_rss_kb": args.final_rss_kb,
        },
        "database_bytes": args.db_bytes,
        "database_disk_fdatasync": fsync_probe,
        "upstream_request_seen": {"chat": up_chat, "stream": up_stream},
        "portkey": dict(portkey_gw or {}, route="POST /v1/messages (Anthropic shape) with x-portkey-provider: "
                        "anthropic and x-portkey-custom-host: <fake>/v1", upstream=portkey_up)
        if "portkey" in byphase else None,
        "chatd_exit_status": exits,
        "chatd_log": log,
    }
    text = json.dumps(result, indent=2) + "\n"
    with open(args.out, "w") as f:
        f.write(text)

    md = markdown(result, args)
    if args.record:
        with open(args.record + ".json", "w") as f:
            f.write(text)
        with open(args.record + ".md", "w") as f:
            f.write(md)
    print(md)
    print("JSON: %s%s" % (args.out, (", recorded as %s.{md,json}" % args.record) if args.record else ""))
    if not valid:
        print("bench: INVALID RUN (%d problems), see above" % len(problems), file=sys.stderr)
    return 0 if valid else 1


def markdown(res, args):
    m, cfg, out = res["machine"], res["config"], []
    out.append("# chatd benchmark, %s, commit %s%s" % (res["time"], res["commit"],
                                                      " (working tree with uncommitted changes)"
                                                      if res["tree_dirty"] else ""))
    out.append("")
    if not res["valid"]:
        out.append("**INVALID RUN: the numbers below include failures and are NOT a result.**")
        out += ["- " + p for p in res["problems"]]
        if res["chatd_log"]["first_lines"]:
            out.append("- first warnings/errors of chatd:")
            out += ["  - `%s`" % line.replace("`", "'") for line in res["chatd_log"]["first_lines"]]
        out.append("")
    pk = m["packages"]
    out.append("Machine: %d CPUs (%s), %.1f GiB RAM, kernel %s, Debian %s; nginx %s, wrk %s, node %s, strace %s, "
               "SQLite %s, libevent %s, libcurl %s." % (
                   m["nproc"], m["cpu_model"], m["memory_mib"] / 1024, m["kernel"], m["debian"],
                   pk.get("nginx", "-"), pk.get("wrk", "-"), m["node"], pk.get("strace", "-"),
                   pk.get("libsqlite3-0", "-"), pk.get("libevent-2.1-7", "-"), pk.get("libcurl4", "-")))
    ld = res["load"]
    out.append("Other load on the machine: %s cores busy before the run, %s after (load average %s before, %s "
               "after); the run took %d s." % (ld["cores_busy_before"], ld["cores_busy_after"],
                                               ld["loadavg_before"], ld["loadavg_after"], res["run_seconds"]))
    out.append("chatd: `%s` (%s, built %s), WORKERS=%d, %s in %s (%s, %s); nginx %d workers; soft RLIMIT_NOFILE %d." % (
        cfg["binary"], cfg["build_type"], cfg["binary_mtime"], cfg["workers"], "PostgreSQL" if cfg["database"] == "postgres" else "SQLite",
        cfg["database_dir"], cfg["database_fs"], cfg["database_durability"], cfg["nginx_workers"],
        cfg["nofile_soft_limit"]))
    out.append("Load: `wrk -t%d -c%d -d%ds`, %s, %d s warm-up before each chatd phase; every target gets the same "
               "no-delay fake provider (replies `Hello! You said: <message>`, one streamed word per delta)." % (
                   cfg["wrk_threads"], cfg["connections"], cfg["seconds"],
                   "a fresh session per request" if cfg["max_turns_per_session"] == 1 else
                   "sessions of up to %d turns" % cfg["max_turns_per_session"], cfg["warmup_seconds"]))
    out.append("")
    out.append("## Throughput and latency")
    out.append("")
    out.append("| target | turns/s | p50 | p99 | server CPU per request | vs nginx | overhead p99 | busy cores |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in res["table"]:
        out.append("| %s%s | %s | %s ms | %s ms | %s ms | %s | %s | %s |" % (
            r["label"], " (**errors**)" if r["errors"] else "", fnum(r["turns_per_s"]), fnum(r["p50_ms"], 2),
            fnum(r["p99_ms"], 2), fnum(r["server_cpu_ms_per_request"], 3), fnum(r["vs_nginx"], 2, "x"),
            "-" if r["overhead_header_p99_ms"] is None else "%s ms" % fnum(float(r["overhead_header_p99_ms"]), 2),
            fnum(r["machine_busy_cores"], 2)))
    for nm in res["not_measured"]:
        out.append("| %s | not measured: %s | | | | | | |" % (nm["label"], nm["reason"]))
    out.append("")
    out.append("Latency is the whole turn (streams: to the end of the body), measured in `bench/turns.lua`; server "
               "CPU is the process under test (the fake for the fake row, nginx's master and workers for the nginx "
               "rows, the gateway's node process for the Portkey row, chatd otherwise) from /proc/PID/stat. \"vs nginx\" is turns/s over the nginx row of the same "
               "kind (streaming rows over nginx streaming). \"overhead p99\" is chatd's own `X-Chatd-Overhead-Ms` header "
               "(what the request cost chatd, without the provider). \"busy cores\" is the whole machine during the phase "
               "(load generator, fake, server and anything else running).")
    out.append("")
    out.append("## Goals of issue 15")
    out.append("")
    out.append("| goal | target | measured | met |")
    out.append("|---|---|---|---|")
    for g in res["goals"]:
        meas = g["measured"]
        if isinstance(meas, float):
            meas = "%.3g" % meas
        out.append("| %s | %s | %s%s | %s |" % (g["goal"], g["target"], "-" if meas is None else meas,
                                                ("; " + g["note"]) if g["note"] else "",
                                                "-" if g["met"] is None else "yes" if g["met"] else "**no**"))
    out.append("")
    rr = res.get("ratio_rounds")
    if rr and rr["rounds"]:
        out.append("## /chat and stateless against nginx, in interleaved rounds (%d s each)" % rr["seconds"])
        out.append("")
        out.append("| round | nginx turns/s | `/chat` turns/s | vs nginx | `/chat` CPU per turn | stateless turns/s "
                   "| vs nginx | busy cores (nginx, /chat, stateless) |")
        out.append("|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in rr["rounds"]:
            def g(t, k):
                return (r.get(t) or {}).get(k)
            out.append("| %d | %s | %s | %s | %s ms | %s | %s | %s |" % (
                r["round"], fnum(g("nginx", "turns_per_s")), fnum(g("chat", "turns_per_s")),
                fnum(r["chat_vs_nginx"], 2, "x"), fnum(g("chat", "server_cpu_ms_per_request"), 3),
                fnum(g("stateless", "turns_per_s")), fnum(r["stateless_vs_nginx"], 2, "x"),
                ", ".join(fnum(g(t, "machine_busy_cores"), 2) for t in ("nginx", "chat", "stateless"))))
        sm = rr["summary"]
        out.append("")
        out.append("Median over the rounds: `/chat` %s of nginx (range %s-%s), stateless %s (range %s-%s). Each "
                   "round runs nginx, `/chat` and stateless back to back (the order reversed every other round), "
                   "so a round's three targets see the same machine; the throughput table above runs them about "
                   "a minute apart." % (
                       fnum(sm["chat"]["vs_nginx_median"], 2, "x"), fnum(sm["chat"]["vs_nginx_min"], 2),
                       fnum(sm["chat"]["vs_nginx_max"], 2), fnum(sm["stateless"]["vs_nginx_median"], 2, "x"),
                       fnum(sm["stateless"]["vs_nginx_min"], 2), fnum(sm["stateless"]["vs_nginx_max"], 2)))
        out.append("")
    if res["syscalls_per_turn"]:
        out.append("## Syscalls per turn (chatd, strace -c -f, %d connections for %d s each)" %
                   (args.sys_conns, args.sys_seconds))
        out.append("")
        out.append("| endpoint | turns | syscalls per turn | the largest, per turn |")
        out.append("|---|---:|---:|---|")
        for k, e in res["syscalls_per_turn"].items():
            top = ", ".join("%s %s" % (n, fnum(v, 1)) for n, v in list((e.get("per_turn_by_call") or {}).items())[:10])
            out.append("| %s | %d | %s | %s |" % (k, e["turns"], fnum(e["per_turn"]), top or e.get("note", "")))
        out.append("")
        out.append("strace slows chatd down many times: these runs count calls, their speed means nothing. Counts "
                   "include every thread (workers, libcurl's resolver, timers).")
        out.append("")
    if res["streams"]:
        sc = res["streams_config"]
        out.append("## Concurrent streams (%d streams, slow provider: ~%d s each, %d deltas)" %
                   (sc["n"], sc["hold_s"], sc["deltas"]))
        out.append("")
        out.append("| server | whole | max open | RSS before | at most open | peak | after | KiB per open stream | "
                   "returned | first byte p50 / p99 | stream p50 / max |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for k, d in res["streams"].items():
            if "rss_kb" not in d:
                out.append("| %s | no result: %s |" % (k, "; ".join(d.get("problems", []))))
                continue
            rk = d["rss_kb"]
            mib = lambda v: "-" if v is None else "%.1f MiB" % (v / 1024)
            out.append("| %s | %d/%d%s | %d | %s | %s (%d open) | %s | %s | %s | %s | %s / %s s | %s / %s s |" % (
                "chatd `/v1/chat/stream`" if k == "chatd" else "nginx -> fake" if k == "nginx" else k,
                d["whole"], d["n"], (" (failures: %s)" % json.dumps(d["failures"])) if d["failures"] else "",
                d["max_open"], mib(rk["before"]), mib(rk.get("at_most_open")), d.get("most_open_at_a_sample", 0),
                mib(rk["peak"]), mib(rk["after"]), fnum(d.get("kib_per_open_stream")), fnum(d["returned"], 2),
                fnum((d["ttfb_ms"]["p50"] or 0) / 1000, 2), fnum((d["ttfb_ms"]["p99"] or 0) / 1000, 2),
                fnum((d["duration_ms"]["p50"] or 0) / 1000, 1), fnum((d["duration_ms"]["max"] or 0) / 1000, 1)))
        out.append("")
        out.append("Open = response headers received, body not ended; RSS sampled every 100 ms. KiB per open stream = "
                   "(RSS at the sample with the most streams open - RSS before) / streams open then; returned = "
                   "(peak - after) / (peak - before), after = RSS %s s after the last stream ended. nginx's RSS is "
                   "its master and workers together. A stream is whole when its status is 200 and its body ends "
                   "with the final event (`done` / `message_stop`) and has no `error` event."
                   % next((d.get("settle_s") for d in res["streams"].values() if "settle_s" in d), "-"))
        out.append("")
    lh = res["latency_half_rate"]
    if lh["runs"]:
        out.append("## Added latency at half of the maximum rate (open loop, %d s per target in %d rounds)"
                   % (lh["seconds"], lh.get("rounds", 1)))
        out.append("")
        out.append("| endpoint | rate | target | completed | failed | p50 | p90 | p99 | p99.9 | max | "
                   "X-Chatd-Overhead-Ms p99 | server CPU per request | generator lag p99 |")
        out.append("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        tnames = {"chatd": "chatd", "direct": "fake directly", "nginx": "nginx -> fake"}
        for kind, label in (("stateless", "`/v1/chat/completions`"), ("chat", "`/chat`")):
            for tgt in ("chatd", "direct", "nginx"):
                r = lh["runs"].get(kind, {}).get(tgt)
                if not r:
                    continue
                if "latency_ms" not in r:
                    out.append("| %s | | %s | %s |" % (label, tnames[tgt], "; ".join(r.get("problems", []))))
                    continue
                lm, oh = r["latency_ms"], r.get("overhead_header_ms") or {}
                failed = sum(r.get(k, 0) for k in ("errors", "non_2xx", "bad_body", "dropped", "unfinished"))
                out.append("| %s | %s/s | %s | %d/%d | %s | %s ms | %s ms | %s ms | %s ms | %s ms | %s | %s ms | %s ms |" % (
                    label, fnum(r["rate"], 0), tnames[tgt], r.get("ok", 0), r.get("scheduled", 0),
                    "**%d**" % failed if failed else "0", fnum(lm.get("p50"), 2), fnum(lm.get("p90"), 2),
                    fnum(lm.get("p99"), 2), fnum(lm.get("p99.9"), 2), fnum(lm.get("max"), 2),
                    ("%s ms" % fnum(oh["p99"], 2)) if oh.get("samples") else "-",
                    fnum(r.get("server_cpu_ms_per_request"), 3),
                    fnum((r.get("send_lag_ms") or {}).get("p99"), 2)))
            e = lh["added"].get(kind)
            if e and e.get("added_p99_ms") is not None:
                out.append("| %s | | **added by chatd** (chatd - fake) | | | %s ms | | **%s ms** | | | | | |" % (
                    label, fnum(e.get("added_p50_ms"), 2), fnum(e["added_p99_ms"], 2)))
        out.append("")
        out.append("Open loop (`bench/openloop.c`): request i is due at t0 + i / rate whatever the earlier ones did, "
                   "and its latency runs from that scheduled time to the end of the response, so a stall is charged "
                   "to every request it delayed (wrk, closed-loop, hides it). The rate is half of the turns/s of the "
                   "same run's throughput phase for that endpoint; the fake and nginx get chatd's upstream request "
                   "at the same rate, in rounds that alternate the targets (the order reversed every other round); "
                   "percentiles over all rounds' requests, generator lag the worst round's. Up to %d keep-alive connections (16 primed before t0), 0.5 s warm-up not "
                   "counted. Failed = transport errors, non-2xx, 2xx not a whole answer, requests dropped or "
                   "unanswered at the end. Generator lag: how late the generator's loop saw requests due (part of "
                   "the latency, the same for every target; large values mean the machine starved the generator). "
                   "X-Chatd-Overhead-Ms has microsecond resolution (src/http/server.c); its clock starts once the "
                   "request was read, and it counts as the provider's the whole LLM call up to its completion "
                   "callback, so a loop that was busy when the answer arrived hides there (the open-loop figure "
                   "does not)."
                   % lh["max_connections"])
        out.append("")
    lg = res["long_session"]
    if lg:
        out.append("## Long session (one session, %d turns of ~%d bytes, `POST /chat`)" %
                   (lg["turns_requested"], lg["message_bytes"]))
        out.append("")
        out.append("Median turn %s: %s ms; turns %s: %s ms; ratio **%s** (goal <= 1.3x). %d turns done in %.1f s%s." % (
            lg["first_window"], fnum(lg["median_first_ms"], 2), lg["last_window"], fnum(lg["median_last_ms"], 2),
            fnum(lg["ratio_last_over_first"], 2, "x"), lg["turns_done"], lg["wall_s"],
            ("; stopped: " + lg["error"]) if lg.get("error") else ""))
        out.append("")
        out.append("Median per 50 turns: " + ", ".join("%s: %s ms" % (x["turns"], fnum(x["median_ms"], 2))
                                                        for x in lg["median_per_50_turns"]))
        out.append("")
        shares = [(label, lg.get(key)) for label, key in (("chatd's CPU per turn", "chatd_cpu_ms"),
                                                          ("the fake's (the provider's) CPU per turn", "fake_cpu_ms"),
                                                          ("X-Chatd-Overhead-Ms", "overhead_ms"))]
        shares = [(label, v) for label, v in shares if v]
        if shares:
            out.append("Whose cost grows (medians, turns %s -> %s): " % (lg["first_window"], lg["last_window"])
                       + "; ".join("%s %s -> %s ms (%s)" % (label, fnum(v["median_first"], 3),
                                                           fnum(v["median_last"], 3),
                                                           fnum(v["ratio_last_over_first"], 2, "x"))
                                   for label, v in shares)
                       + ". While the history fits the context window every turn sends all of it upstream, so "
                         "the provider's work grows with the session whatever chatd does; chatd's own CPU is its "
                         "share (threads' schedstat around each turn, turns one at a time).")
            out.append("")
    out.append("## Other figures")
    out.append("")
    mem = res["memory"]
    out.append("- main chatd memory: idle RSS %.1f MiB, peak (VmHWM) %.1f MiB, RSS at the end %.1f MiB; database "
               "%.1f MiB at the end." % (mem["chatd_idle_rss_kb"] / 1024, mem["chatd_peak_rss_kb"] / 1024,
                                        mem["chatd_final_rss_kb"] / 1024, res["database_bytes"] / 1048576))
    fp = res.get("database_disk_fdatasync")
    if fp:
        out.append("- the database disk (bench/fsync_probe.py, %d writes of %d bytes, each followed by fdatasync, "
                   "before the phases): fdatasync p50 %s ms, p90 %s, p99 %s, p99.9 %s, max %s. A turn under "
                   "synchronous=full is acknowledged only after its group's fdatasync: this is a floor under "
                   "/chat's latency." % (fp["samples"], fp["bytes"], fnum(fp["p50_ms"], 3), fnum(fp["p90_ms"], 3),
                                         fnum(fp["p99_ms"], 3), fnum(fp["p999_ms"], 3), fnum(fp["max_ms"], 3)))
    for name, up in (("/chat", res["upstream_request_seen"]["chat"]),
                     ("/v1/chat/stream", res["upstream_request_seen"]["stream"])):
        if up:
            out.append("- upstream request of chatd for %s: stream=%s, %d messages, %d bytes, keys %s"
                       % (name, str(up["stream"]).lower(), up["messages"], up["body_bytes"], ",".join(up["keys"])))
    pk = res.get("portkey")
    if pk:
        up = pk.get("upstream")
        out.append("- Portkey gateway %s (npm `@portkey-ai/gateway`, one node process, %s s warm-up; its CPU is the "
                   "row's server CPU): %s; the fake received %s" % (
                       pk.get("version"), pk.get("warmup_s", "?"), pk["route"],
                       "no request to compare" if not up else
                       "`POST %s`, the same request as chatd's for /chat (model, max_tokens, system, messages)%s"
                       % (up["path"], "" if not up["extra_headers"] else
                          ", plus headers %s" % ", ".join("`%s`" % h for h in up["extra_headers"]))
                       if up["same_as_chatd"] else
                       "**a different request** than chatd's for /chat: %s" % "; ".join(up["differences"])))
    rat = res["non_streaming"]["ratio_chatd_over_direct"]
    if rat:
        out.append("- /chat over the fake directly: turns/s %sx, p50 %sx, p99 %sx" % (
            fnum(rat["turns_per_s"], 2), fnum(rat["p50"], 2), fnum(rat["p99"], 2)))
    if res["chatd_log"]["counts"]:
        out.append("- chatd logged: " + "; ".join("%s x%d" % (k, v) for k, v in sorted(res["chatd_log"]["counts"].items())))
    out.append("- chatd exit status at SIGTERM: %s" % " ".join(str(e) for e in res["chatd_exit_status"]))
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
