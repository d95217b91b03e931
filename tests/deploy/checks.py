"""
checks.py: the Python half of tests/deploy/check.sh (Debian's /usr/bin/python3,
standard library plus python3-yaml).

  checks.py static BIN SRC
      Consistency of the deploy/ files with each other and with the binary:
      settings that must agree (body size, timeouts, drain vs stop timeouts,
      nginx's address vs TRUSTED_PROXIES, upstreams vs compose services), the
      Dockerfile's runtime packages vs the libraries BIN links against, its
      builder packages vs the pkg-config modules of CMakeLists.txt, and the
      image's basic contract (non-root, healthcheck, port, stop signal, volume),
      and the compose stack (postgres, redis, migrate, two chatd, nginx).

  checks.py urls SRC
      Prints DATABASE_URL and REDIS_URL of compose's chatd1 (the smoke test
      points them at its own servers).

  checks.py smoke NGINX_PORT TOKEN LOG1 LOG2
      Black-box checks through a running nginx (deploy/nginx.conf) in front of
      two chatd processes on one PostgreSQL database (a SQLite file has one
      server), whose JSON logs are LOG1 and LOG2, with RATE_LIMIT=2/minute
      shared through Redis, TRUSTED_PROXIES=127.0.0.1 and the fake provider.
      check.sh starts and stops all of them.

Exits non-zero with a message on the first failed check.
"""
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time

import yaml


def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def ok(msg):
    print("ok: " + msg, flush=True)


def check(cond, msg):
    if not cond:
        fail(msg)


# ----------------------------------------------------------------- parsing

UNITS_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "": 1}


def seconds(text):
    m = re.fullmatch(r"\s*(\d+)\s*(ms|s|m|h|)\s*", text)
    check(m, f"cannot parse duration {text!r}")
    return int(m.group(1)) * UNITS_S[m.group(2)]


def chatd_size(text):
    """chatd sizes: 512, 64k, 64KiB, 1m, 1MiB (binary multiples)."""
    m = re.fullmatch(r"(\d+)\s*(|k|kib|m|mib|g|gib)", text.strip().lower())
    check(m, f"cannot parse chatd size {text!r}")
    mult = {"": 1, "k": 1024, "kib": 1024, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30}
    return int(m.group(1)) * mult[m.group(2)]


def nginx_size(text):
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", text.strip())
    check(m, f"cannot parse nginx size {text!r}")
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]


def env_file(path):
    out = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            check("=" in line, f"{path}:{n}: not NAME=value")
            name, value = line.split("=", 1)
            check(re.fullmatch(r"[A-Z_][A-Z0-9_]*", name), f"{path}:{n}: bad name {name!r}")
            check(not value.startswith(("'", '"')) and " #" not in value,
                  f"{path}:{n}: quotes or trailing comments read differently by systemd and compose")
            out[name] = value
    return out


def help_defaults(binary):
    """NAME -> default, from `chatd --help` (the binary is the source of truth)."""
    text = subprocess.run([binary, "--help"], capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"^\s+--\S+ \S+\s+([A-Z_]+)\s+default (\S+)", text, re.M))


def nginx_directive(text, name):
    found = re.findall(r"^\s*" + name + r"\s+([^;]+);", text, re.M)
    check(len(found) == 1, f"nginx.conf: expected one {name}, found {found}")
    return found[0].strip()


def unit_value(text, name):
    found = re.findall(r"^" + name + r"=(.*)$", text, re.M)
    check(len(found) == 1, f"chatd.service: expected one {name}=, found {found}")
    return found[0].strip()


def dpkg_package(path):
    """The Debian package owning a file, trying the names usrmerge gives it."""
    tried = []
    for p in (path, os.path.realpath(path)):
        for q in (p, p[4:] if p.startswith("/usr/") else "/usr" + p):
            out = subprocess.run(["dpkg", "-S", q], capture_output=True, text=True)
            if out.returncode == 0:
                return out.stdout.split(":", 1)[0].strip()
            tried.append(q)
    fail(f"dpkg -S: no package owns {tried}")


def apt_installs(stage_text):
    """Package names of every `apt-get install` in one Dockerfile stage."""
    pkgs = []
    joined = stage_text.replace("\\\n", " ")
    for m in re.finditer(r"apt-get install ([^&\n]*)", joined):
        pkgs += [w for w in m.group(1).split() if not w.startswith("-")]
    return set(pkgs)


# ----------------------------------------------------------------- static


def service_env(svc):
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def depends(svc):
    """depends_on as {service: condition}, whichever form compose was given."""
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):
        return {n: "service_started" for n in deps}
    return {n: (c or {}).get("condition", "service_started") for n, c in deps.items()}


def command_of(svc):
    cmd = svc.get("command")
    return cmd.split() if isinstance(cmd, str) else list(cmd or [])


PG_URL = re.compile(r"postgres(?:ql)?://([^:@/]+):([^@]*)@([\w.-]+):(\d+)/([\w-]+)")
REDIS_URL = re.compile(r"redis://([\w.-]+):(\d+)/(\d+)")
INTERPOLATION = re.compile(r"\$\{(\w+)(?:[:?-][^}]*)?\}")


def compose_check(compose, text, env, upstream, drain, dotenv):
    """The compose file's consistency; returns (chatd server names, nginx's address)."""
    services = compose["services"]

    # Secrets: only interpolations (deploy/.env) and env_file (deploy/chatd.env).
    for name, svc in services.items():
        for k, v in service_env(svc).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|API_KEY", k):
                check(INTERPOLATION.fullmatch(v), f"compose {name}: {k} must come from deploy/.env, not a literal")
            m = re.match(r"\w+://[^:/@]+:([^@]*)@", v)
            if m:
                check(INTERPOLATION.fullmatch(m.group(1)), f"compose {name}: {k} holds a literal password")
    used = set(INTERPOLATION.findall(text.replace("$$", "")))
    check(used <= set(dotenv), f"compose uses {sorted(used - set(dotenv))}, missing from deploy/.env.example")
    check(all(not dotenv[v] for v in used if re.search(r"PASSWORD|SECRET|TOKEN", v)),
          ".env.example must not hold a password value")

    # PostgreSQL: pinned major version, healthcheck, data in a named volume.
    pg = services.get("postgres")
    check(pg and re.fullmatch(r"postgres:\d+(\.\d+)?", str(pg.get("image"))), "compose: no postgres:<major> service")
    pgenv = service_env(pg)
    check("pg_isready" in json.dumps(pg.get("healthcheck", {}).get("test")), "compose postgres: pg_isready healthcheck")
    check(INTERPOLATION.fullmatch(pgenv.get("POSTGRES_PASSWORD", "")), "compose postgres: POSTGRES_PASSWORD")
    pgvols = dict(v.split(":", 1)[::-1] for v in pg.get("volumes", []))
    pgvol = pgvols.get("/var/lib/postgresql/data")
    check(pgvol in (compose.get("volumes") or {}), "compose postgres: its data must be a named volume")
    pg_user, pg_db = pgenv.get("POSTGRES_USER", "postgres"), pgenv.get("POSTGRES_DB", pgenv.get("POSTGRES_USER"))

    # Redis: healthcheck.
    rd = services.get("redis")
    check(rd and re.fullmatch(r"redis:\d+(\.\d+)?", str(rd.get("image"))), "compose: no redis:<major> service")
    check("ping" in json.dumps(rd.get("healthcheck", {}).get("test")), "compose redis: ping healthcheck")

    def urls_ok(name, cenv):
        m = PG_URL.fullmatch(cenv.get("DATABASE_URL", ""))
        check(m, f"compose {name}: DATABASE_URL is not postgres://user:${{PASSWORD}}@host:port/db")
        check(m.group(1) == pg_user and m.group(2) == "${POSTGRES_PASSWORD}" and m.group(3) == "postgres"
              and m.group(4) == "5432" and m.group(5) == pg_db,
              f"compose {name}: DATABASE_URL does not match the postgres service ({pg_user}@postgres:5432/{pg_db})")

    # The one-shot migrate service.
    migrates = [n for n, svc in services.items() if command_of(svc)[:1] == ["migrate"]]
    check(len(migrates) == 1, f"compose: expected one `chatd migrate` service, found {migrates}")
    mig = services[migrates[0]]
    image = mig.get("image")
    urls_ok(migrates[0], service_env(mig))
    check(depends(mig).get("postgres") == "service_healthy", "compose migrate: must wait for a healthy postgres")
    check(str(mig.get("restart", "no")) == "no", "compose migrate: a one-shot must not restart")

    # The chatd servers: exactly nginx's upstreams.
    chatds = sorted(n for n, svc in services.items() if svc.get("image") == image and n not in migrates)
    hosts = sorted(re.findall(r"^\s*server\s+([\w.-]+):8000\b", upstream, re.M))
    check(len(chatds) == 2 and chatds == hosts, f"nginx upstream {hosts} != compose chatd services {chatds}")
    nginx_ip = services["nginx"]["networks"]["backend"]["ipv4_address"]
    want_deps = {"postgres": "service_healthy", "redis": "service_healthy",
                 migrates[0]: "service_completed_successfully"}
    for name in chatds:
        svc = services[name]
        cenv = dict(env, **service_env(svc))
        check(command_of(svc) in ([], ["serve"]), f"compose {name}: must run `chatd serve`")
        check(cenv.get("TRUSTED_PROXIES") == nginx_ip, f"{name}: TRUSTED_PROXIES is not nginx's {nginx_ip}")
        check(cenv.get("HOST") == "0.0.0.0", f"{name}: HOST must be 0.0.0.0 in a container")
        check(seconds(svc["stop_grace_period"]) > drain, f"{name}: stop_grace_period <= DRAIN_TIMEOUT")
        check(svc.get("env_file") == "chatd.env", f"{name}: secrets must come from env_file chatd.env")
        urls_ok(name, cenv)
        m = REDIS_URL.fullmatch(cenv.get("REDIS_URL", ""))
        check(m and m.group(1) == "redis" and m.group(2) == "6379",
              f"compose {name}: REDIS_URL must be redis://redis:6379/N, not {cenv.get('REDIS_URL')!r}")
        got = depends(svc)
        check(all(got.get(k) == v for k, v in want_deps.items()), f"compose {name}: depends_on {got}, want {want_deps}")
        check(not svc.get("volumes"), f"compose {name}: no volume needed (the store is PostgreSQL)")
    check(all(depends(services["nginx"]).get(n) == "service_healthy" for n in chatds),
          "compose nginx: must wait for healthy chatd servers")
    return chatds, nginx_ip


def compose_urls(src):
    """DATABASE_URL and REDIS_URL of the first chatd server, one per line (the smoke test's template)."""
    compose = yaml.safe_load(open(os.path.join(src, "deploy", "docker-compose.yml")))
    svc = compose["services"]["chatd1"]
    env = service_env(svc)
    print(env["DATABASE_URL"])
    print(env["REDIS_URL"])



def static(binary, src):
    deploy = os.path.join(src, "deploy")
    env = env_file(os.path.join(deploy, "chatd.env.example"))
    defaults = help_defaults(binary)
    check("MAX_BODY_SIZE" in defaults and "DRAIN_TIMEOUT" in defaults, "chatd --help: defaults not found")

    def setting(name):
        return env.get(name, defaults[name])

    nginx = open(os.path.join(deploy, "nginx.conf")).read()
    unit = open(os.path.join(deploy, "chatd.service")).read()
    compose_text = open(os.path.join(deploy, "docker-compose.yml")).read()
    compose = yaml.safe_load(compose_text)
    dockerfile = open(os.path.join(deploy, "Dockerfile")).read()

    # Sizes and timeouts that must agree.
    body = chatd_size(setting("MAX_BODY_SIZE"))
    check(nginx_size(nginx_directive(nginx, "client_max_body_size")) == body,
          "nginx client_max_body_size differs from MAX_BODY_SIZE")
    read_to = seconds(nginx_directive(nginx, "proxy_read_timeout"))
    check(read_to > seconds(setting("HEARTBEAT_INTERVAL")), "proxy_read_timeout <= HEARTBEAT_INTERVAL")
    check(read_to > seconds(setting("TURN_TIMEOUT")),
          "proxy_read_timeout <= TURN_TIMEOUT: a long non-streamed turn would get 504 from nginx")
    upstream = re.search(r"upstream chatd \{(.*?)\n    \}", nginx, re.S)
    check(upstream, "nginx.conf: no upstream chatd block")
    ka = re.search(r"keepalive_timeout\s+(\S+);", upstream.group(1))
    check(ka and seconds(ka.group(1)) < seconds(setting("IDLE_TIMEOUT")),
          "upstream keepalive_timeout must be below chatd's IDLE_TIMEOUT")
    check(nginx_directive(nginx, "proxy_buffering") == "off", "proxy_buffering must be off")
    check(nginx_directive(nginx, "proxy_http_version") == "1.1", "proxy_http_version must be 1.1")
    check("$proxy_add_x_forwarded_for" in nginx_directive(nginx, "proxy_set_header X-Forwarded-For"),
          "X-Forwarded-For must append ($proxy_add_x_forwarded_for)")
    drain = seconds(setting("DRAIN_TIMEOUT"))
    check(seconds(unit_value(unit, "TimeoutStopSec")) > drain, "TimeoutStopSec <= DRAIN_TIMEOUT")
    check(unit_value(unit, "KillSignal") == "SIGTERM", "KillSignal must be SIGTERM")
    ok(f"sizes and timeouts agree (body {body} B, read timeout {read_to}s, drain {drain}s)")

    # Compose: postgres, redis, a one-shot migrate, two chatd servers (nginx's
    # upstreams) on that database and Redis, nginx.
    chatds, nginx_ip = compose_check(compose, compose_text, env, upstream.group(1), drain,
                                     env_file(os.path.join(deploy, ".env.example")))
    ok(f"compose: postgres, redis, migrate, {chatds} (postgres:// + redis://, after migrate) "
       f"+ nginx ({nginx_ip} = TRUSTED_PROXIES); no secret literals")

    # Dockerfile stages.
    stages = re.split(r"^FROM ", dockerfile, flags=re.M)[1:]
    check(len(stages) == 2 and re.match(r"\S+ AS builder\b", stages[0]), "Dockerfile: expected builder + runtime")
    build, runtime = stages
    check("COPY --from=builder" in runtime, "runtime stage must copy the binary from the builder")
    users = re.findall(r"^USER (\S+)", runtime, re.M)
    check(users and users[-1].split(":")[0] not in ("root", "0"), "runtime stage must run as a non-root USER")
    check(re.search(r"^HEALTHCHECK .*\n?.*/healthz", runtime, re.M), "HEALTHCHECK must probe /healthz")
    check(re.search(r"^EXPOSE 8000$", runtime, re.M), "EXPOSE 8000")
    check(re.search(r"^STOPSIGNAL SIGTERM$", runtime, re.M), "STOPSIGNAL SIGTERM")
    check(re.search(r"HOST=0\.0\.0\.0", runtime), "ENV HOST=0.0.0.0")
    m = re.search(r"DATABASE_URL=sqlite:///(/\S+)", runtime)
    check(m and re.search(r'^VOLUME \["' + re.escape(os.path.dirname(m.group(1))) + '"]', runtime, re.M),
          "the image's database directory must be a VOLUME")

    # Builder packages: the -dev package of every pkg-config module CMake requires.
    def modules_of(text):
        mods = []
        for m in re.finditer(r"pkg_check_modules\(\w+ REQUIRED IMPORTED_TARGET([^)]*)\)", text):
            mods += [re.split(r"[<>=]", w)[0] for w in m.group(1).split()]
        return mods

    engine_modules = modules_of(open(os.path.join(src, "CMakeLists.txt")).read())
    modules = list(engine_modules)
    check(len(engine_modules) >= 6, f"pkg_check_modules not parsed: {modules}")
    dev, runtime_of_modules = set(), set()
    for mod in modules:
        pc = subprocess.run(["pkg-config", "--path", mod], capture_output=True, text=True)
        check(pc.returncode == 0, f"pkg-config --path {mod}")
        dev.add(dpkg_package(pc.stdout.strip()))
    for mod in engine_modules:
        libdir = subprocess.run(["pkg-config", "--variable=libdir", mod], capture_output=True, text=True,
                                check=True).stdout.strip()
        flags = subprocess.run(["pkg-config", "--libs-only-l", mod], capture_output=True, text=True,
                               check=True).stdout.split()
        for flag in flags:
            so = os.path.join(libdir, "lib" + flag[2:] + ".so")
            if not os.path.exists(so):  # some .pc files name a wrong libdir: ask the compiler
                so = subprocess.run(["cc", "-print-file-name=" + os.path.basename(so)], capture_output=True,
                                    text=True, check=True).stdout.strip()
            if os.path.isabs(so) and os.path.exists(so):
                runtime_of_modules.add(dpkg_package(os.path.realpath(so)))
    bhave = apt_installs(build)
    check(dev <= bhave, f"builder stage lacks {sorted(dev - bhave)}")
    check({"cmake", "pkg-config"} <= bhave, "builder stage lacks cmake/pkg-config")
    # ... and nothing of the test suite: the image builds what `scripts/deps.sh
    # build` installs, with the tests switched off (no cmocka needed).
    build_pkgs = set(subprocess.run([os.path.join(src, "scripts/deps.sh"), "list-build"], capture_output=True,
                                    text=True, check=True).stdout.split())
    check(bhave <= build_pkgs, f"builder stage installs packages beyond scripts/deps.sh build: "
                               f"{sorted(bhave - build_pkgs)}")
    check(re.search(r"^RUN cmake [^\n]*-DCHATD_TESTS=OFF", build, re.M),
          "the builder's cmake command must pass -DCHATD_TESTS=OFF")
    ok(f"builder packages cover the pkg-config modules {modules}, all from scripts/deps.sh build, tests off")

    # Runtime packages: every library the binary links against, and nothing but
    # the runtime packages of CMake's modules (a module the linker dropped with
    # --as-needed is allowed), ca-certificates and the healthcheck's curl.
    dyn = subprocess.run(["readelf", "-d", binary], capture_output=True, text=True, check=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", dyn)
    # A sanitizer build (scripts/test.sh runs one) also needs libasan/libubsan,
    # which the Release image does not.
    needed = [n for n in needed if not re.match(r"lib(a|ub|l|t|hwa)san\.so", n)]
    ldconfig = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
    want = set()
    for lib in needed:
        m = re.search(r"^\s*" + re.escape(lib) + r" \(libc6[^)]*\) => (\S+)$", ldconfig, re.M)
        check(m, f"ldconfig -p: {lib} not found")
        want.add(dpkg_package(m.group(1)))
    want.discard("libc6")  # in every Debian image
    have = apt_installs(runtime)
    check(want <= have, f"runtime stage lacks {sorted(want - have)} (binary needs {sorted(want)})")
    extra = have - want - runtime_of_modules - {"ca-certificates", "curl"}
    check(not extra, f"runtime stage installs packages chatd does not need: {sorted(extra)}")
    unused = sorted(have & runtime_of_modules - want)
    ok(f"runtime packages cover the binary's libraries: {sorted(want)} (+ ca-certificates, curl"
       + (f"; {unused} not linked by this binary" if unused else "") + ")")


# ----------------------------------------------------------------- smoke


class Nginx:
    def __init__(self, port, token, logs):
        self.port, self.token, self.logs = port, token, logs

    def request(self, method, path, body=None, xff=None, timeout=20, raw=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        headers = {"Authorization": "Bearer " + self.token}
        if xff:
            headers["X-Forwarded-For"] = xff
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
        conn.close()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, payload

    def instance(self, request_id, deadline_s=3.0):
        """1 or 2: which chatd logged this request id (its log line may lag the response)."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            for i, log in enumerate(self.logs, 1):
                with open(log, errors="replace") as f:
                    for line in f:
                        if request_id in line and '"msg":"request"' in line:
                            return i
            time.sleep(0.05)
        fail(f"request {request_id} is in neither chatd log")


def fake(scenario):
    return "[[fake:" + json.dumps(scenario) + "]]"


def smoke(port, token, log1, log2):
    ng = Nginx(int(port), token, [log1, log2])

    # 1. A conversation started on one instance continues on the other.
    sid, xff = "deploy-continue", "198.51.100.10"
    st, h, body = ng.request("POST", "/v1/chat", {"message": "first", "session_id": sid}, xff)
    check(st == 200, f"turn 1: {st} {body[:300]!r}")
    first = ng.instance(h["x-request-id"])
    check(json.loads(body)["turn_count"] == 1, "turn 1: turn_count")
    turn, other = 1, None
    while other is None and turn < 4:
        turn += 1
        st, h, body = ng.request("POST", "/v1/chat", {"message": f"turn {turn}", "session_id": sid}, xff)
        check(st == 200, f"turn {turn}: {st} {body[:300]!r}")
        check(json.loads(body)["turn_count"] == turn, f"turn {turn}: turn_count {json.loads(body)['turn_count']}")
        if ng.instance(h["x-request-id"]) != first:
            other = turn
    check(other is not None, f"nginx sent every turn to instance {first}: not load balancing")
    st, _, body = ng.request("GET", f"/v1/sessions/{sid}/messages")
    check(st == 200, f"messages: {st}")
    msgs = [(m["role"], m["content"]) for m in json.loads(body)["data"]]
    expect = []
    for i in range(1, turn + 1):
        text = "first" if i == 1 else f"turn {i}"
        expect += [("user", text), ("assistant", "Hello! You said: " + text)]
    check(msgs == expect, f"history through nginx: {msgs}")
    ok(f"conversation started on chatd{first} continued on chatd{3 - first} (turn {other}); history complete")

    # 2. An SSE stream arrives incrementally through nginx.
    conn = http.client.HTTPConnection("127.0.0.1", ng.port, timeout=20)
    conn.request("POST", "/v1/chat/stream",
                 body=json.dumps({"message": "stream " + fake({"reply_words": 6, "gap_ms": 300}),
                                  "session_id": "deploy-stream"}),
                 headers={"Authorization": "Bearer " + token, "Content-Type": "application/json",
                          "X-Forwarded-For": "198.51.100.20", "Accept-Encoding": "gzip, deflate, br"})
    resp = conn.getresponse()
    if resp.status != 200:
        fail(f"stream: {resp.status} {resp.read()[:300]!r}")
    check(resp.getheader("Content-Type", "").startswith("text/event-stream"), "stream: content type")
    # A browser asks for compression; a compressed stream is a buffered stream.
    check(resp.getheader("Content-Encoding") is None, f"stream compressed: {resp.getheader('Content-Encoding')}")
    t0 = time.monotonic()
    events, raw = [], []
    while True:
        line = resp.readline()
        if not line:
            break
        raw.append(line)
        if line.startswith(b"event: "):
            events.append((line[7:].strip().decode(), time.monotonic() - t0))
    conn.close()
    names = [e for e, _ in events]
    check(names == ["start"] + ["delta"] * 6 + ["done"], f"stream events: {names}, body {b''.join(raw)[:400]!r}")
    deltas = [t for e, t in events if e == "delta"]
    done_t = events[-1][1]
    # Six deltas 300 ms apart: buffered, they would all arrive with `done`.
    check(done_t - deltas[0] >= 1.0, f"stream not incremental: first delta {deltas[0]:.2f}s, done {done_t:.2f}s")
    spread = [b - a for a, b in zip(deltas, deltas[1:])]
    check(sum(1 for s in spread if s >= 0.15) >= 4, f"deltas bunched together: gaps {spread}")
    ok(f"SSE through nginx is incremental: first delta at {deltas[0]:.2f}s, done at {done_t:.2f}s")

    # 3. Two concurrent turns on one session, on both instances: one 200, one 409.
    results = []
    barrier = threading.Barrier(2)

    def turn_busy(i):
        barrier.wait()
        results.append(ng.request("POST", "/v1/chat",
                                  {"message": f"busy {i} " + fake({"header_delay_ms": 1500}),
                                   "session_id": "deploy-busy"}, "198.51.100.30"))

    threads = [threading.Thread(target=turn_busy, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(st for st, _, _ in results)
    check(statuses == [200, 409], f"concurrent turns: {statuses} {[b[:200] for _, _, b in results]}")
    busy = next(b for st, _, b in results if st == 409)
    check(json.loads(busy)["error"]["type"] == "session_busy", f"409 body: {busy!r}")
    served = {st: ng.instance(h["x-request-id"]) for st, h, _ in results}
    check(served[200] != served[409], f"both concurrent turns went to chatd{served[200]}: lock not crossed")
    ok(f"concurrent turns: 200 on chatd{served[200]}, 409 session_busy on chatd{served[409]}")

    # 4. X-Forwarded-For reaches chatd (TRUSTED_PROXIES=127.0.0.1), and
    #    RATE_LIMIT=2/minute holds for one client across both instances
    #    (REDIS_URL).
    got, where = [], set()
    for i in range(5):
        st, h, body = ng.request("POST", "/v1/chat", {"message": f"limit {i}", "session_id": "deploy-limit"},
                                 "198.51.100.40")
        got.append(st)
        where.add(ng.instance(h["x-request-id"]))
        if st == 429:
            check("retry-after" in h, "429 without Retry-After")
    check(where == {1, 2}, f"the rate-limited requests all went to chatd{where}: sharing not exercised")
    check(got == [200] * 2 + [429] * 3,
          f"RATE_LIMIT=2/minute across two instances sharing Redis: {got} (expected 2 x 200, then 429)")
    st, _, body = ng.request("POST", "/v1/chat", {"message": "other client", "session_id": "deploy-limit-2"},
                             "198.51.100.50")
    check(st == 200, f"a different forwarded client was limited too ({st}): X-Forwarded-For not honoured")
    ok("X-Forwarded-For honoured; 2/minute through two instances allows 2 (shared through Redis)")

    # 5. client_max_body_size matches MAX_BODY_SIZE (1 MiB): just over is refused
    #    by nginx, just under reaches chatd (which answers with X-Request-Id).
    def sized(n):
        pad = n - len(json.dumps({"message": "", "session_id": "deploy-size"}).encode())
        return json.dumps({"message": "x" * pad, "session_id": "deploy-size"}).encode()

    st, h, _ = ng.request("POST", "/v1/chat", raw=sized((1 << 20) + 1), xff="198.51.100.60")
    check(st == 413 and "x-request-id" not in h, f"1 MiB + 1 body: {st}, chatd answered: {'x-request-id' in h}")
    st, h, _ = ng.request("POST", "/v1/chat", raw=sized((1 << 20) - 64), xff="198.51.100.61")
    check("x-request-id" in h, f"1 MiB - 64 body did not reach chatd ({st})")
    ok(f"body limit: 1 MiB + 1 -> 413 from nginx; 1 MiB - 64 reached chatd ({st})")

    counts = []
    for log in (log1, log2):
        with open(log, errors="replace") as f:
            counts.append(sum(1 for line in f if '"msg":"request"' in line))
    check(all(counts), f"request log lines per instance: {counts}")
    ok(f"both instances served requests (chatd1 {counts[0]}, chatd2 {counts[1]})")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "static":
        static(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "urls":
        compose_urls(sys.argv[2])
    elif len(sys.argv) == 6 and sys.argv[1] == "smoke":
        smoke(*sys.argv[2:])
    else:
        fail("usage: checks.py static BIN SRC | urls SRC | smoke NGINX_PORT TOKEN LOG1 LOG2")
