#!/usr/bin/python3
"""The database disk's own commit latency, for bench/run.sh.

    fsync_probe.py DIR OUT [--samples N] [--bytes B]

Writes B bytes (default 40 KiB, about one group commit of a few /chat turns:
WAL frames of ten pages) at a rotating offset of a scratch file in DIR and
calls fdatasync after each write, N times (default 2,000), timing each
fdatasync on the monotonic clock. Under synchronous=FULL a turn is
acknowledged only after its group's fdatasync returned, so the disk's p99
here is a floor under /chat's added latency that no server can go below
(the benchmark's "added latency" goal is 1 ms). The scratch file is removed.
Output: one JSON object in OUT (milliseconds).
"""
import argparse
import json
import os
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("out")
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--bytes", type=int, default=40960)
    a = ap.parse_args()
    path = os.path.join(a.dir, "fsync-probe-%d.bin" % os.getpid())
    buf = os.urandom(a.bytes)
    lat = []
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for i in range(a.samples):
            os.pwrite(fd, buf, (i % 64) * a.bytes)
            t0 = time.monotonic()
            os.fdatasync(fd)
            lat.append((time.monotonic() - t0) * 1000.0)
    finally:
        os.close(fd)
        os.unlink(path)
    lat.sort()

    def q(p):
        return round(lat[min(len(lat) - 1, int(p * len(lat)))], 3)

    res = {"samples": len(lat), "bytes": a.bytes, "p50_ms": q(0.50), "p90_ms": q(0.90), "p99_ms": q(0.99),
           "p999_ms": q(0.999), "max_ms": round(lat[-1], 3)}
    with open(a.out, "w") as f:
        json.dump(res, f)


if __name__ == "__main__":
    main()
