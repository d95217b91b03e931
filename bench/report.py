#!/usr/bin/python3
"""Report step of bench/run.sh: turns the per-phase files of one run into the
table on stdout and the JSON result (bench/results/latest.json).

Inputs in --dir, written by run.sh and bench/turns.lua:
  <phase>.json       wrk summary (turns.lua done()): statuses, latency, ...
  <phase>.meta.json  CPU seconds of chatd and of the fake, chatd RSS, upstream
                     request count, whether chatd was still alive
  <phase>.wrk.txt    wrk's own text output (cross-check of non-2xx counts)
  upstream_*.json    the last request chatd sent to the fake (shape check)
  chatd.err          chatd's log (warnings and errors are counted and quoted)

A phase with any failed turn (non-2xx, SSE error event, socket error, timeout),
a chatd that died, or a crash at shutdown makes the run invalid: it is said
loudly and the exit status is 1, so no one quotes a throughput built on errors.
"""
import argparse
import datetime
import json
import os
import re
import sys

LABELS = {
    "chat": "chatd  POST /chat",
    "direct": "direct POST /v1/messages",
    "stream": "chatd  POST /v1/chat/stream",
    "direct_stream": "direct POST /v1/messages (stream)",
}


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


def fmt(v, width, prec=1, suffix=""):
    if v is None:
        return "-".rjust(width)
    return ("%.*f%s" % (prec, v, suffix)).rjust(width)


def section(title, chatd, direct, rat, out):
    out.append(title)
    out.append("  %-36s %10s %9s %9s %9s %8s %10s" %
               ("", "turns/s", "p50 ms", "p99 ms", "p99.9 ms", "errors", "cpu ms/t"))
    for r in (chatd, direct):
        if not r:
            continue
        label = LABELS.get(r["phase"], r["phase"])
        if "latency_ms" not in r:
            out.append("  %-36s  (no result: %s)" % (label, "; ".join(r["problems"])))
            continue
        errs = r["non_2xx"] + r["bad_body"] + (r.get("stuck_at_end") or 0) + sum(
            r["socket_errors"][k] for k in ("connect", "read", "write", "timeout"))
        cpu = r.get("chatd_cpu_ms_per_turn") if r["phase"] in ("chat", "stream") else r.get("fake_cpu_ms_per_turn")
        out.append("  %-36s %10s %9s %9s %9s %8d %10s" % (
            label, fmt(r["turns_per_s"], 10), fmt(r["latency_ms"]["p50"], 9, 2), fmt(r["latency_ms"]["p99"], 9, 2),
            fmt(r["latency_ms"]["p99.9"], 9, 2), errs, fmt(cpu, 10, 3)))
    if rat:
        out.append("  %-36s %10s %9s %9s" % ("ratio chatd / direct", fmt(rat["turns_per_s"], 9, 2, "x"),
                                             fmt(rat["p50"], 8, 2, "x"), fmt(rat["p99"], 8, 2, "x")))
    out.append("")


def durability(args):
    """What an acknowledged turn survives, in words, for the table and the JSON."""
    if args.database == "postgres":
        return "fsync=on, synchronous_commit=on"
    return "synchronous=%s" % args.db_sync


def main():
    ap = argparse.ArgumentParser()
    for a in ("dir", "out", "binary", "build-type", "phases", "chatd-exit", "db-dir"):
        ap.add_argument("--" + a, required=True)
    for a in ("workers", "connections", "threads", "seconds", "warmup", "sessions", "max-turns",
              "idle-rss-kb", "final-hwm-kb", "final-rss-kb", "db-bytes"):
        ap.add_argument("--" + a, type=int, required=True)
    ap.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--db-sync", default="full")
    args = ap.parse_args()

    phases = {n: phase_result(args.dir, n) for n in args.phases.split()}
    chat, direct = phases.get("chat"), phases.get("direct")
    stream, direct_stream = phases.get("stream"), phases.get("direct_stream")
    up_chat = upstream_shape(os.path.join(args.dir, "upstream_chat.json"))
    up_stream = upstream_shape(os.path.join(args.dir, "upstream_stream.json"))
    log = chatd_log(os.path.join(args.dir, "chatd.err"))

    problems = []
    for name in ("chat", "direct", "stream", "direct_stream"):
        r = phases.get(name)
        if r is None:
            problems.append("%s: phase not run (chatd died before it?)" % name)
        else:
            problems += ["%s: %s" % (name, p) for p in r["problems"]]
    chatd_exit = int(args.chatd_exit) if args.chatd_exit.lstrip("-").isdigit() else -1
    if chatd_exit != 0:
        problems.append("chatd exit status at SIGTERM was %d (0 expected; >128 = killed by signal %d)"
                        % (chatd_exit, chatd_exit - 128 if chatd_exit > 128 else 0))
    valid = not problems

    result = {
        "valid": valid,
        "problems": problems,
        "time": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpus": os.cpu_count(), "note": "load generator, fake provider and chatd share these CPUs"},
        "config": {
            "binary": args.binary, "build_type": args.build_type, "workers": args.workers,
            "wrk_threads": args.threads, "connections": args.connections, "seconds": args.seconds,
            "warmup_seconds": args.warmup, "sessions_in_rotation": args.sessions,
            "max_turns_per_session": args.max_turns,
            "database": args.database, "database_durability": durability(args),
            "database_dir": args.db_dir, "database_fs": fs_type(args.db_dir),
        },
        "non_streaming": {"chatd": chat, "direct": direct, "ratio_chatd_over_direct": ratios(chat, direct)},
        "streaming": {"chatd": stream, "direct": direct_stream,
                      "ratio_chatd_over_direct": ratios(stream, direct_stream)},
        "memory": {
            "chatd_idle_rss_kb": args.idle_rss_kb,
            "chatd_peak_rss_kb": args.final_hwm_kb,
            "chatd_final_rss_kb": args.final_rss_kb,
        },
        "database_bytes": args.db_bytes,
        "upstream_request_seen": {"chat": up_chat, "stream": up_stream},
        "chatd_exit_status": chatd_exit,
        "chatd_log": log,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")

    out = []
    out.append("chatd benchmark: %s (%s), %s, WORKERS=%d, wrk %d threads x %d connections, %d s per phase, "
               "%d CPUs" % (args.binary, args.build_type, "PostgreSQL" if args.database == "postgres" else "SQLite",
                            args.workers, args.threads, args.connections, args.seconds, os.cpu_count()))
    out.append("")
    section("Non-streaming (latency = whole turn)", chat, direct, result["non_streaming"]["ratio_chatd_over_direct"],
            out)
    section("Streaming SSE (latency = time to completion)", stream, direct_stream,
            result["streaming"]["ratio_chatd_over_direct"], out)
    out.append("chatd memory: idle RSS %.1f MiB, peak RSS (VmHWM) %.1f MiB, RSS at end %.1f MiB"
               % (args.idle_rss_kb / 1024, args.final_hwm_kb / 1024, args.final_rss_kb / 1024))
    out.append("database: %s in %s (%s; %s), %.1f MiB at the end"
               % ("PostgreSQL" if args.database == "postgres" else "SQLite", args.db_dir,
                  result["config"]["database_fs"], durability(args), args.db_bytes / 1048576))
    for name, up in (("/chat", up_chat), ("/v1/chat/stream", up_stream)):
        if up:
            out.append("upstream request of chatd for %s: stream=%s, %d messages, %d bytes, keys %s"
                       % (name, str(up["stream"]).lower(), up["messages"], up["body_bytes"], ",".join(up["keys"])))
    if log["counts"]:
        out.append("chatd logged: " + "; ".join("%s x%d" % (k, v) for k, v in sorted(log["counts"].items())))
    out.append("errors = non-2xx + incomplete 2xx bodies + socket errors/timeouts + turns never answered (stuck)")
    out.append("cpu ms/t = CPU time of chatd (chatd rows) or of the fake (direct rows) per completed turn")
    out.append("JSON: %s" % args.out)
    if not valid:
        banner = "!" * 78
        out.append("")
        out.append(banner)
        out.append("!!! INVALID RUN: the numbers above include failures and are NOT a result")
        out += ["!!!   " + p for p in problems]
        if log["first_lines"]:
            out.append("!!! first warnings/errors of chatd:")
            out += ["!!!   " + line for line in log["first_lines"]]
        out.append(banner)
    print("\n".join(out))
    if not valid:
        print("bench: INVALID RUN (%d problems), see above" % len(problems), file=sys.stderr)
    return 0 if valid else 1


if __name__ == "__main__":
    sys.exit(main())
