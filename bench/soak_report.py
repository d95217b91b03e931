#!/usr/bin/python3
"""Report step of bench/soak.sh: chatd's memory over a steady load.

Inputs in --dir, written by soak.sh and bench/openloop.c:
  samples.txt        one line per sample: seconds since start, VmRSS KiB,
                     VmHWM KiB, threads, open descriptors, chatd CPU seconds
  <gen>.json         each generator's result (requests, failures, latency)
  <gen>.progress     its JSON line per interval (rate, failures, p99 then)
  chatd-1.err        chatd's log (warnings and errors are counted)

RSS slope: least squares of VmRSS (KiB) over time (minutes) on the samples
taken after --warmup-minutes and while the load ran. "Flat" (this benchmark's
own criterion, stated in the report): the fitted growth per hour is under 10 %
of the mean RSS of the window, or under 4 MiB (at 1,000 requests/s that still
catches a leak of 2 bytes per request; a 1-minute window of a short run is
noise: allocator arenas grow in steps of 100+ KiB). The run is clean when no request failed (transport
error, non-2xx, 2xx that is not a whole answer, dropped, unanswered), chatd
stayed up and exited 0 at SIGTERM.
"""
import argparse
import datetime
import json
import os
import sys

from report import chatd_log, fs_type, load_json, machine, binary_mtime  # bench/report.py


def fit(xs, ys):
    """Least-squares slope and intercept, or (None, None) with < 2 points."""
    n = len(xs)
    if n < 2:
        return None, None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None, None
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return slope, my - slope * mx


def per_minute(samples):
    """[minute, median VmRSS KiB of the samples in that minute] for the whole run."""
    by = {}
    for s in samples:
        by.setdefault(int(s["t_s"] // 60), []).append(s["rss_kb"])
    out = []
    for m in sorted(by):
        v = sorted(by[m])
        out.append([m, v[len(v) // 2]])
    return out


def main():
    ap = argparse.ArgumentParser()
    for a in ("dir", "out", "binary", "build-type", "mix", "sha", "load-before", "load-after", "db-dir"):
        ap.add_argument("--" + a, required=True)
    ap.add_argument("--generators", default="")
    ap.add_argument("--session-gap", type=int, default=1)
    ap.add_argument("--db-bytes", type=int, default=0)
    ap.add_argument("--record", default=None)
    for a in ("workers", "minutes", "warmup-minutes", "rate", "session-turns", "sample-seconds", "alive",
              "exit-status", "end-rss-kb", "dirty"):
        ap.add_argument("--" + a, type=int, required=True)
    args = ap.parse_args()

    samples = []
    try:
        with open(os.path.join(args.dir, "samples.txt")) as f:
            for line in f:
                p = line.split()
                if len(p) == 6 and int(p[1]) > 0:
                    samples.append({"t_s": float(p[0]), "rss_kb": int(p[1]), "hwm_kb": int(p[2]),
                                    "threads": int(p[3]), "fds": int(p[4]), "cpu_s": float(p[5])})
    except OSError:
        pass
    warm_s = args.warmup_minutes * 60
    load_s = args.minutes * 60
    # The window: after the warm-up and while the load runs (the last sample,
    # taken after the generators stopped, is reported apart: RSS at rest).
    win = [s for s in samples if warm_s <= s["t_s"] <= load_s + 1]
    after = [s for s in samples if s["t_s"] > load_s + 1]
    xs = [s["t_s"] / 60 for s in win]
    slope, icpt = fit(xs, [s["rss_kb"] for s in win])
    fd_slope, _ = fit(xs, [s["fds"] for s in win])
    mem = {"samples": len(samples), "window_samples": len(win), "window_start_min": args.warmup_minutes}
    problems = []
    if win:
        mean_rss = sum(s["rss_kb"] for s in win) / len(win)
        mem.update({
            "rss_start_kb": win[0]["rss_kb"], "rss_end_kb": win[-1]["rss_kb"],
            "rss_max_kb": max(s["rss_kb"] for s in win), "rss_min_kb": min(s["rss_kb"] for s in win),
            "rss_mean_kb": round(mean_rss), "hwm_end_kb": win[-1]["hwm_kb"],
            "rss_before_warmup_end_kb": samples[0]["rss_kb"] if samples else None,
            "fds_start": win[0]["fds"], "fds_end": win[-1]["fds"], "threads_end": win[-1]["threads"],
            "window_minutes": round((win[-1]["t_s"] - win[0]["t_s"]) / 60, 2),
            "rss_after_load_kb": after[-1]["rss_kb"] if after else None,
            "fds_after_load": after[-1]["fds"] if after else None,
        })
        if win[-1]["t_s"] > win[0]["t_s"]:
            mem["chatd_cpu_cores"] = round((win[-1]["cpu_s"] - win[0]["cpu_s"]) / (win[-1]["t_s"] - win[0]["t_s"]), 3)
    if slope is not None:
        mem["rss_slope_kib_per_min"] = round(slope, 2)
        mem["rss_fitted_growth_per_hour_kib"] = round(slope * 60, 1)
        mem["fds_slope_per_min"] = round(fd_slope, 3) if fd_slope is not None else None
        mem["rss_growth_bytes_per_request"] = round(slope * 1024 / (args.rate * 60), 3) if args.rate else None
        limit = max(4096.0, 0.10 * mem["rss_mean_kb"])
        mem["flat"] = slope * 60 < limit
        mem["flat_criterion"] = "fitted growth per hour < max(4 MiB, 10 %% of the window's mean RSS) = %.0f KiB" % limit
    else:
        mem["flat"] = None
        problems.append("fewer than 2 RSS samples after the warm-up: no slope")

    gens = {}
    for name in args.generators.split():
        r = load_json(os.path.join(args.dir, name + ".json"))
        prog = []
        try:
            with open(os.path.join(args.dir, name + ".progress")) as f:
                for line in f:
                    try:
                        prog.append(json.loads(line))
                    except ValueError:
                        pass
        except OSError:
            pass
        if r is None:
            gens[name] = {"problems": ["no result (the generator failed)"], "progress": prog}
            problems.append("%s: no result" % name)
            continue
        failed = {k: r.get(k, 0) for k in ("errors", "non_2xx", "bad_body", "dropped", "unfinished") if r.get(k)}
        if failed:
            problems.append("%s: %s (statuses %s)" % (name, json.dumps(failed), json.dumps(r.get("status_codes"))))
        r["progress"] = prog
        gens[name] = r
    if not args.alive:
        problems.append("chatd died during the soak")
    elif args.exit_status != 0:
        problems.append("chatd exit status at SIGTERM was %d (0 expected)" % args.exit_status)
    log = chatd_log(os.path.join(args.dir, "chatd-1.err"))

    res = {
        "kind": "soak",
        "clean": not problems,
        "problems": problems,
        "time": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": args.sha, "tree_dirty": bool(args.dirty),
        "machine": machine(),
        "load": {"cores_busy_before": args.load_before, "cores_busy_after": args.load_after},
        "config": {"binary": args.binary, "build_type": args.build_type, "binary_mtime": binary_mtime(args.binary),
                   "workers": args.workers, "minutes": args.minutes, "warmup_minutes": args.warmup_minutes,
                   "rate": args.rate, "mix": args.mix, "session_turns": args.session_turns,
                   "session_gap_s": args.session_gap,
                   "sample_seconds": args.sample_seconds, "database_dir": args.db_dir,
                   "database_fs": fs_type(args.db_dir)},
        "memory": mem,
        "generators": gens,
        "chatd_exit_status": args.exit_status if args.alive else None,
        "database_bytes_at_end": args.db_bytes,
        "chatd_log": log,
        "rss_samples": [[s["t_s"], s["rss_kb"], s["fds"]] for s in samples],
        "rss_per_minute_kb": per_minute(samples),
    }
    text = json.dumps(res, indent=2) + "\n"
    with open(args.out, "w") as f:
        f.write(text)
    md = markdown(res)
    if args.record:
        with open(args.record + ".json", "w") as f:
            f.write(text)
        with open(args.record + ".md", "w") as f:
            f.write(md)
    print(md)
    print("JSON: %s%s" % (args.out, (", recorded as %s.{md,json}" % args.record) if args.record else ""))
    if problems:
        print("bench: soak NOT clean (%d problems), see above" % len(problems), file=sys.stderr)
    return 0 if not problems else 1


def markdown(res):
    m, cfg, mem, out = res["machine"], res["config"], res["memory"], []
    mib = lambda kb: "-" if kb is None else "%.1f MiB" % (kb / 1024)
    out.append("# chatd soak, %s, commit %s%s" % (res["time"], res["commit"],
                                                 " (working tree with uncommitted changes)" if res["tree_dirty"] else ""))
    out.append("")
    if res["problems"]:
        out.append("**NOT CLEAN:**")
        out += ["- " + p for p in res["problems"]]
        out.append("")
    out.append("Machine: %d CPUs (%s), %.1f GiB RAM, kernel %s; other load %s cores busy before, %s after." % (
        m["nproc"], m["cpu_model"], m["memory_mib"] / 1024, m["kernel"], res["load"]["cores_busy_before"],
        res["load"]["cores_busy_after"]))
    out.append("chatd: `%s` (%s, built %s), WORKERS=%d, SQLite synchronous=full in %s (%s)." % (
        cfg["binary"], cfg["build_type"], cfg["binary_mtime"], cfg["workers"], cfg["database_dir"], cfg["database_fs"]))
    out.append("Load: %d requests/s open loop (`bench/openloop.c`), mix %s, /chat sessions of %d turns %d s "
               "apart, for %d minutes; RSS sampled every %d s, the first %d minutes dropped." % (
                   cfg["rate"], cfg["mix"], cfg["session_turns"], cfg["session_gap_s"], cfg["minutes"],
                   cfg["sample_seconds"], cfg["warmup_minutes"]))
    out.append("")
    out.append("## Memory")
    out.append("")
    if mem.get("rss_slope_kib_per_min") is not None:
        out.append("**RSS slope: %s KiB/min** (least squares over %d samples, %s min), fitted growth %s KiB per "
                   "hour, %s bytes per request: %s (%s)." % (
                       "%.2f" % mem["rss_slope_kib_per_min"], mem["window_samples"], mem["window_minutes"],
                       "%.0f" % mem["rss_fitted_growth_per_hour_kib"], mem["rss_growth_bytes_per_request"],
                       "**flat**" if mem["flat"] else "**growing**", mem["flat_criterion"]))
        out.append("")
        out.append("| RSS at start of window | at end | min | max | mean | VmHWM at end | after the load | "
                   "descriptors start / end (slope /min) | threads | chatd CPU (cores) |")
        out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        out.append("| %s | %s | %s | %s | %s | %s | %s | %d / %d (%s) | %d | %s |" % (
            mib(mem["rss_start_kb"]), mib(mem["rss_end_kb"]), mib(mem["rss_min_kb"]), mib(mem["rss_max_kb"]),
            mib(mem["rss_mean_kb"]), mib(mem["hwm_end_kb"]), mib(mem.get("rss_after_load_kb")),
            mem["fds_start"], mem["fds_end"], mem.get("fds_slope_per_min"), mem["threads_end"],
            mem.get("chatd_cpu_cores", "-")))
        out.append("")
        out.append("RSS per minute (median of its samples, MiB): " + ", ".join(
            "%d: %.1f" % (m, kb / 1024) for m, kb in res["rss_per_minute_kb"]))
    else:
        out.append("No slope (too few samples after the warm-up).")
    out.append("")
    out.append("## Requests")
    out.append("")
    out.append("| generator | rate | scheduled | ok | failed | statuses | p50 | p99 | p99.9 | max | "
               "worst interval p99 | generator lag p99 |")
    out.append("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for name, r in res["generators"].items():
        if "latency_ms" not in r:
            out.append("| %s | %s |" % (name, "; ".join(r.get("problems", []))))
            continue
        lm = r["latency_ms"]
        failed = sum(r.get(k, 0) for k in ("errors", "non_2xx", "bad_body", "dropped", "unfinished"))
        worst = max((p.get("interval_p99_ms", -1) for p in r.get("progress", [])), default=-1)
        f = lambda v: "-" if v is None else "%.2f ms" % v
        out.append("| %s | %.0f/s | %d | %d | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            name, r["rate"], r["scheduled"], r["ok"], "**%d**" % failed if failed else "0",
            json.dumps(r.get("status_codes")), f(lm.get("p50")), f(lm.get("p99")), f(lm.get("p99.9")),
            f(lm.get("max")), f(worst if worst >= 0 else None), f((r.get("send_lag_ms") or {}).get("p99"))))
    out.append("")
    out.append("Latency runs from each request's scheduled time to the end of its response (open loop); worst "
               "interval p99 is the largest p99 of one %d s interval." % cfg["sample_seconds"])
    if res["chatd_log"]["counts"]:
        out.append("")
        out.append("chatd logged: " + "; ".join("%s x%d" % (k, v) for k, v in sorted(res["chatd_log"]["counts"].items())))
    out.append("")
    out.append("chatd exit status at SIGTERM: %s; SQLite database at the end: %.1f MiB (it grows with every turn, "
               "as in production)." % (res["chatd_exit_status"], res["database_bytes_at_end"] / 1048576))
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
