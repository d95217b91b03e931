"""
test_client_addr.py: the client address that per-address limits apply to,
behind trusted proxies (docs/API.md, "Client address"), black box: several
X-Forwarded-For lines sent for real on a raw socket, IPv4-mapped peers and
entries, IPv6 spellings and /64 buckets, junk entries, TRUSTED_PROXIES
validation. The walk itself is unit tested in tests/unit/test_client_addr.c.

Every test here observes buckets through RATE_LIMIT: two requests share a
bucket exactly when the second one sees the first one's consumption.
"""
import json
import socket
import subprocess

import httpx

import conftest

CHAT_BODY = {"message": "addr", "session_id": "addr-s"}


def raw_chat(port, header_lines, host="127.0.0.1", i=0):
    """POST /v1/chat on a fresh connection with the given (name, value) header
    lines sent exactly as listed (repeated names stay separate lines).
    Returns (status, headers dict with lowercase names)."""
    body = json.dumps({"message": f"addr {i}", "session_id": f"addr-{i}"}).encode()
    head = [f"POST /v1/chat HTTP/1.1", f"Host: {host}", "Content-Type: application/json",
            f"Content-Length: {len(body)}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in header_lines]
    data = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(20)
        s.connect((host, port))
        s.sendall(data)
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    head_text = buf.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    lines = head_text.split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers


def test_two_forwarded_for_lines_cannot_bypass_the_limit(chatd, fake):
    """The reported bypass: each request carries a forged first line (a new
    10.9.9.N every time) and the proxy's line (203.0.113.7). All lines are one
    list, so the rightmost untrusted entry, 203.0.113.7, is the client: the
    third request is refused."""
    s = chatd({"RATE_LIMIT": "2/minute", "TRUSTED_PROXIES": "127.0.0.1"})
    got = []
    for n in range(1, 6):
        status, h = raw_chat(s.port, [("X-Forwarded-For", f"10.9.9.{n}"), ("X-Forwarded-For", "203.0.113.7")], i=n)
        got.append(status)
        if status == 429:
            assert int(h["retry-after"]) >= 1, h
    assert got == [200, 200, 429, 429, 429], got
    # The lines are read in order: with the forged line last, each request is
    # a different client (the rightmost entry), so none is refused.
    got = [raw_chat(s.port, [("X-Forwarded-For", "203.0.113.8"), ("X-Forwarded-For", f"10.8.8.{n}")], i=10 + n)[0]
           for n in range(1, 4)]
    assert got == [200, 200, 200], got
    # One line "a, b" and two lines "a" + "b" are the same list.
    assert raw_chat(s.port, [("X-Forwarded-For", "10.7.7.1, 198.51.100.20")], i=20)[0] == 200
    assert raw_chat(s.port, [("X-Forwarded-For", "10.7.7.2"), ("X-Forwarded-For", "198.51.100.20")], i=21)[0] == 200
    assert raw_chat(s.port, [("x-forwarded-for", "10.7.7.3,"), ("X-FORWARDED-FOR", " 198.51.100.20 ")], i=22)[0] == 429


def test_ipv4_mapped_peer_and_entries_match_ipv4_trusted_proxies(chatd, fake):
    """A dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d; TRUSTED_PROXIES
    written in IPv4 must still match them, and mapped entries in the header
    are the same clients as their IPv4 form."""
    s = chatd({"HOST": "::ffff:127.0.0.1", "ALLOW_UNAUTHENTICATED": "on", "RATE_LIMIT": "1/minute",
               "TRUSTED_PROXIES": "127.0.0.1, 10.0.0.1"})
    c = s.client  # connects to 127.0.0.1: the peer is reported as ::ffff:127.0.0.1
    r = c.get("/healthz")
    assert r.status_code == 200
    logs = s.wait_request_log(r.headers["x-request-id"])
    assert logs and logs[0]["peer"] == "::ffff:127.0.0.1", logs

    def chat(xff, i):
        return c.post("/v1/chat", json={"message": "m", "session_id": f"map-{i}"},
                      headers={"X-Forwarded-For": xff}).status_code

    assert chat("198.51.100.1", 1) == 200
    assert chat("198.51.100.2", 2) == 200          # the mapped peer is trusted: its own bucket
    assert chat("::ffff:198.51.100.1", 3) == 429   # the same client, mapped spelling
    assert chat("198.51.100.3, ::ffff:10.0.0.1", 4) == 200   # a mapped trusted hop is skipped
    assert chat("198.51.100.3", 5) == 429


def test_ipv6_peer_spelled_differently_in_trusted_proxies(chatd, fake):
    """Addresses are compared as addresses: TRUSTED_PROXIES=0:0:0:0:0:0:0:1
    trusts the peer ::1."""
    s = chatd({"HOST": "::1", "RATE_LIMIT": "1/minute", "TRUSTED_PROXIES": "0:0:0:0:0:0:0:1"})
    with httpx.Client(base_url=f"http://[::1]:{s.port}", timeout=conftest.HTTP_TIMEOUT) as c:
        def chat(xff, i):
            return c.post("/v1/chat", json={"message": "m", "session_id": f"v6p-{i}"},
                          headers={"X-Forwarded-For": xff}).status_code

        assert chat("198.51.100.1", 1) == 200
        assert chat("198.51.100.2", 2) == 200
        assert chat("198.51.100.1", 3) == 429


def test_ipv6_clients_share_a_bucket_per_64(chatd, fake):
    s = chatd({"RATE_LIMIT": "1/minute", "TRUSTED_PROXIES": "127.0.0.1"})

    def chat(srv, xff, i):
        return srv.client.post("/v1/chat", json={"message": "m", "session_id": f"v6-{i}"},
                               headers={"X-Forwarded-For": xff}).status_code

    assert chat(s, "2001:db8:1:2::1", 1) == 200
    assert chat(s, "2001:db8:1:2:ffff:ffff:ffff:fffe", 2) == 429      # same /64
    assert chat(s, "[2001:0DB8:0001:0002::7]:443", 3) == 429           # same /64, other spelling, a port
    assert chat(s, "2001:db8:1:3::1", 4) == 200                        # the next /64
    # RATE_LIMIT_IPV6_PREFIX=128: every address is its own client.
    s2 = chatd({"RATE_LIMIT": "1/minute", "TRUSTED_PROXIES": "127.0.0.1", "RATE_LIMIT_IPV6_PREFIX": "128"})
    assert chat(s2, "2001:db8:1:2::1", 5) == 200
    assert chat(s2, "2001:db8:1:2::2", 6) == 200
    assert chat(s2, "2001:db8:1:2:0:0:0:1", 7) == 429


def test_junk_entries_share_one_bucket(chatd, fake):
    """Malformed entries never mint buckets: all junk arriving through one
    trusted proxy is one client ("unparsable@<proxy>")."""
    s = chatd({"RATE_LIMIT": "2/minute", "TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8"})
    c = s.client
    guard = [o for o in s.logs() if o.get("msg") == "guard"]
    assert guard and guard[0]["trusted_proxies"] == 2 and guard[0]["rate_limit_ipv6_prefix"] == 64, guard

    def chat(xff, i):
        return c.post("/v1/chat", json={"message": "m", "session_id": f"junk-{i}"},
                      headers={"X-Forwarded-For": xff}).status_code

    got = [chat(x, i) for i, x in enumerate(["junk-1", "unknown", "1.2.3.4.5, 10.0.0.2", "evil.example",
                                             "999.1.1.1"])]
    # Two junk buckets: behind 127.0.0.1 and behind the trusted hop 10.0.0.2.
    assert got == [200, 200, 200, 429, 429], got
    assert chat("198.51.100.9", 9) == 200      # a real client is not in the junk bucket
    # Junk left of the client is never read.
    assert chat("junk, 198.51.100.10", 10) == 200


def test_bad_trusted_proxies_refuse_to_start(tmp_path):
    for value, needle in (("localhost", 'entry "localhost" is not an IP address or network'),
                          ("10.0.0.1/8", "write 10.0.0.0/8")):
        env = {"PATH": "/usr/bin:/bin", "PORT": "0", "WORKERS": "1", "TRUSTED_PROXIES": value,
               "DATABASE_URL": "sqlite:///" + str(tmp_path / "x.db")}
        p = subprocess.run([conftest.CHATD_BIN, "serve"], env=env, cwd=str(tmp_path), capture_output=True,
                           text=True, timeout=20)
        assert p.returncode != 0, p
        assert "TRUSTED_PROXIES" in p.stderr and needle in p.stderr, p.stderr
