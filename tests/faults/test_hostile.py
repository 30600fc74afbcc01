"""Hostile clients against a live `collector serve`.

* Fuzzing: random bytes, random JSON, NDJSON, wrong or corrupt encodings, random
  headers, chunked or not. The answer is always 2xx, 4xx, 503 or 507 (never a 500),
  errors are JSON, and the server keeps answering; its log holds no unexpected error.
* Slow clients: a body trickled byte by byte gets 408 request_timeout once
  server.read_timeout is up; a head trickled byte by byte, or nothing at all, gets the
  connection closed. Hundreds of them at once do not hold up a normal client.
* A crowd of 1,000 connections is held (or, with too few file descriptors, left waiting)
  with bounded memory, and the server still answers.
* The bearer token check compares the whole guess with the whole token through
  hmac.compare_digest (its timing figure: scripts/bench.py --only token).
"""

from __future__ import annotations

import contextlib
import gzip
import hmac
import http.client
import json
import resource
import secrets
import select
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.server.http import ApiError, _check_token
from tests.support.model import post_events, request, wait_until
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow

READ_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module, with a short read timeout."""
    base = tmp_path_factory.mktemp("hostile")
    server = ServerProcess(base / "data", env={
        "COLLECTOR_SERVER_READ_TIMEOUT": str(READ_TIMEOUT_S),
        "COLLECTOR_SERVER_MAX_BODY_BYTES": "65536",
    })
    server.start()
    yield server
    server.kill()


# -- raw HTTP ------------------------------------------------------------------------------

def build_request(body: bytes, headers: list[tuple[str, str]], *, chunked: bool,
                  path: str = "/v1/events") -> bytes:
    """A well-framed POST: Content-Length or chunked, whatever the headers say otherwise."""
    head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1"]
    head += [f"{name}: {value}" for name, value in headers]
    if chunked:
        head.append("Transfer-Encoding: chunked")
        pieces = [body[i:i + 97] for i in range(0, len(body), 97)]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    else:
        head.append(f"Content-Length: {len(body)}")
        payload = body
    return ("\r\n".join(head) + "\r\n\r\n").encode("utf-8", "surrogateescape") + payload


def exchange(port: int, raw: bytes, timeout: float = 15.0
             ) -> tuple[int, dict[str, str], bytes] | None:
    """Send `raw`, read one answer: (status, headers, body), or None if the server closed
    the connection without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        resp = http.client.HTTPResponse(sock)
        try:
            resp.begin()
        except (http.client.RemoteDisconnected, ConnectionResetError):
            return None
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


ALLOWED = "2xx, 4xx, 503 or 507"


def allowed(status: int) -> bool:
    return 200 <= status < 300 or 400 <= status < 500 or status in (503, 507)


def check_answer(answer: tuple[int, dict[str, str], bytes] | None) -> None:
    assert answer is not None, "the server closed the connection without an answer"
    status, headers, body = answer
    assert allowed(status), f"status {status} ({ALLOWED} expected): {body[:300]!r}"
    if headers.get("content-type", "").startswith("application/json"):
        parsed = json.loads(body)
        if status >= 400:
            assert set(parsed) == {"error", "detail"}, parsed
        elif status == 202:
            assert parsed["accepted"] >= 1


def collector_errors(server: ServerProcess) -> list[str]:
    """Error lines the server logged itself (aiohttp's own, about bad requests, aside)."""
    return [line for line in server.output().splitlines()
            if '"level":"error"' in line and '"logger":"aiohttp.server"' not in line]


def check_server_healthy(server: ServerProcess) -> None:
    health = request(server.port, "GET", "/healthz")
    assert (health.status, health.body) == (200, {"status": "ok"}), health
    ready = request(server.port, "GET", "/readyz")
    assert (ready.status, ready.body) == (200, {"status": "ready"}), ready
    log = server.output()
    for sign in ("request_failed", "internal_error"):  # the 500 path of the middleware
        assert sign not in log, f"{sign!r} in the server log"
    assert collector_errors(server) == []


# -- fuzzing ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                   max_size=5),
    max_leaves=25,
)
events = st.dictionaries(st.text(max_size=8), json_values, max_size=5)
deep = st.integers(1, 400).map(lambda d: ('{"a":' * d + "1" + "}" * d).encode())
bodies = st.one_of(
    st.binary(max_size=2000),
    json_values.map(lambda v: json.dumps(v).encode()),
    events.map(lambda v: json.dumps(v).encode()),
    st.lists(events, max_size=6).map(lambda v: json.dumps(v).encode()),
    st.lists(events, max_size=6).map(lambda v: b"\n".join(json.dumps(e).encode() for e in v)),
    st.text(max_size=300).map(lambda t: t.encode("utf-16")),
    deep,
    st.just(b'{"a": 1}' + b" " * 70000),  # over max_body_bytes
    st.just(gzip.compress(b"[" + b"{}," * 40000 + b"{}]")),  # inflates past the limit
)
header_text = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\r\n\x00"),
    max_size=40)
content_types = st.one_of(
    st.none(),
    st.sampled_from(["application/json", "application/x-ndjson", "text/plain",
                     "application/json; charset=utf-16", "application/xml",
                     "multipart/form-data; boundary=x", "application/vnd.x+json", ""]),
    header_text,
)
encodings = st.sampled_from(["none", "gzip", "deflate", "corrupt-gzip", "corrupt-deflate",
                             "gzip-unlabelled", "br", "garbage"])
extra_headers = st.lists(
    st.tuples(st.sampled_from(["X-Sequence", "X-Source", "Idempotency-Key", "Authorization",
                               "Content-Encoding", "Expect", "X-Whatever"]),
              st.one_of(header_text, st.integers(-(2**70), 2**70).map(str))),
    max_size=4)


def encode(body: bytes, how: str) -> tuple[bytes, list[tuple[str, str]]]:
    if how == "gzip":
        return gzip.compress(body), [("Content-Encoding", "gzip")]
    if how == "deflate":
        return zlib.compress(body), [("Content-Encoding", "deflate")]
    if how == "corrupt-gzip":
        return gzip.compress(body)[:-6] + b"junk!!", [("Content-Encoding", "gzip")]
    if how == "corrupt-deflate":
        return b"\x78\x9c" + body, [("Content-Encoding", "deflate")]
    if how == "gzip-unlabelled":
        return gzip.compress(body), []
    if how == "br":
        return body, [("Content-Encoding", "br")]
    if how == "garbage":
        return body, [("Content-Encoding", "x-\u00e9t\u00e9")]
    return body, []


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          database=None)
@given(body=bodies, how=encodings, ctype=content_types, headers=extra_headers,
       chunked=st.booleans())
def test_fuzzed_posts_never_get_a_500(live: ServerProcess, body: bytes, how: str,
                                      ctype: str | None, headers: list[tuple[str, str]],
                                      chunked: bool) -> None:
    payload, coding = encode(body, how)
    all_headers = coding + headers + ([("Content-Type", ctype)] if ctype is not None else [])
    if any(name == "Expect" for name, _ in all_headers):
        all_headers = [(n, v) for n, v in all_headers if n != "Expect"]
        all_headers.append(("Expect", "100-continue"))
    check_answer(exchange(live.port, build_request(payload, all_headers, chunked=chunked)))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          database=None)
@given(junk=st.binary(min_size=1, max_size=600))
def test_bytes_that_are_not_http_get_a_4xx_or_a_closed_connection(live: ServerProcess,
                                                                  junk: bytes) -> None:
    answer = exchange(live.port, junk.replace(b"\r\n\r\n", b"") + b"\r\n\r\n")
    if answer is not None:
        status, _, body = answer
        assert allowed(status), f"status {status} for junk: {body[:200]!r}"


def test_the_server_kept_answering_after_the_fuzzing(live: ServerProcess) -> None:
    assert post_events(live.port, {"id": "after-fuzz"}).status == 202
    check_server_healthy(live)


def test_a_malformed_request_is_not_an_error_in_the_log(live: ServerProcess) -> None:
    before = len(live.output().splitlines())
    answer = exchange(live.port, b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                 b"X-Bad: \x01\x02\r\nContent-Length: 2\r\n\r\n{}")
    assert answer is not None
    assert answer[0] == 400
    wait_until(lambda: len(live.output().splitlines()) > before, "the server logs the request")
    new_lines = live.output().splitlines()[before:]
    assert not [line for line in new_lines if '"level":"error"' in line], new_lines


# -- slow clients ------------------------------------------------------------------------------

def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setblocking(False)
    return sock


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the server has closed the connection (after any answer it sent)."""
    try:
        data = sock.recv(65536)
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    return data == b""


def answer_to_trickle(sock: socket.socket, data: bytes, *, interval: float,
                      limit_s: float = 20.0) -> bytes:
    """Send `data` one byte per `interval` until the server answers or closes (at most
    `limit_s` seconds); what it sent (b"" when it just closed)."""
    deadline = time.monotonic() + limit_s
    for byte in data:
        readable, _, _ = select.select([sock], [], [], interval)
        if readable or time.monotonic() > deadline:
            break
        try:
            sock.send(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return b""
    return read_answer(sock, deadline)


def read_answer(sock: socket.socket, deadline: float) -> bytes:
    """What the server sends until its answer is complete (the head and Content-Length
    bytes of body) or it closes the connection; a test failure if neither happens by
    `deadline` (time.monotonic())."""
    data = b""
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            lengths = [int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")]
            if lengths and len(body) >= lengths[0]:
                return data
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"neither a whole answer nor a close by the deadline: {data!r}")
        readable, _, _ = select.select([sock], [], [], left)
        if not readable:
            continue
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


BODY_HEAD = (b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
             b"Content-Length: 200\r\n\r\n")


def test_a_body_trickled_byte_by_byte_gets_408_then_the_connection_closes(
    live: ServerProcess
) -> None:
    sock = connect(live.port)
    try:
        sock.sendall(BODY_HEAD)
        received = answer_to_trickle(sock, b"[" + b" " * 198 + b"]", interval=0.2)
        assert received.startswith(b"HTTP/1.1 408"), received[:200]
        assert b'"error":"request_timeout"' in received
        assert b"Connection: close" in received
        # The rest of the body in one go: the server (which reads what is left of a body
        # for up to aiohttp's 10 s lingering time) then closes at once.
        with contextlib.suppress(OSError):
            sock.send(b" " * 200)
        wait_until(lambda: closed_by_peer(sock), "the connection closes after the 408")
    finally:
        sock.close()
    assert post_events(live.port, {"id": "after-408"}).status == 202


def test_a_head_trickled_byte_by_byte_is_cut_off(live: ServerProcess) -> None:
    sock = connect(live.port)
    try:
        head = b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 500 + b"\r\n\r\n"
        received = answer_to_trickle(sock, head, interval=0.1)
        # Cut off before the head was complete (it would take 50 s to send): closed
        # without an answer.
        assert received == b"", received[:200]
        wait_until(lambda: closed_by_peer(sock), "the server closed the connection")
    finally:
        sock.close()


def test_a_silent_connection_is_closed(live: ServerProcess) -> None:
    sock = connect(live.port)
    try:
        wait_until(lambda: closed_by_peer(sock), "the server closes a silent connection")
    finally:
        sock.close()


def test_hundreds_of_slow_clients_do_not_starve_a_normal_one(live: ServerProcess) -> None:
    slow = [connect(live.port) for _ in range(300)]
    for n, sock in enumerate(slow):
        if n % 2:
            sock.sendall(BODY_HEAD)  # these trickle a body, the others a head
    stop = threading.Event()

    def drip() -> None:
        while not stop.is_set():
            for sock in slow:
                with contextlib.suppress(OSError):  # closed by the server: the point
                    sock.send(b" ")
            stop.wait(0.1)

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    heard: dict[int, bytes] = {}

    def settled(sock: socket.socket) -> bool:
        """Closed (a head trickler), or answered 408 (a body trickler)."""
        if heard.get(sock.fileno(), b"").startswith(b"HTTP/1.1 408"):
            return True
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return False
        except ConnectionResetError:
            return True
        heard[sock.fileno()] = heard.get(sock.fileno(), b"") + data
        return data == b"" or heard[sock.fileno()].startswith(b"HTTP/1.1 408")

    try:
        for n in range(30):
            answer = post_events(live.port, {"id": f"normal-{n}"}, timeout=5)
            assert answer.status == 202, answer
        # Every slow client is cut off in the end, whichever phase it was trickling.
        wait_until(lambda: all(settled(s) for s in slow),
                   "every slow connection was closed or answered 408", timeout=30)
    finally:
        stop.set()
        dripper.join(10)
        for sock in slow:
            sock.close()
    check_server_healthy(live)


# -- a crowd ---------------------------------------------------------------------------------

def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


@pytest.fixture
def crowd_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server that keeps connections for a while, able to open 1,000+ of them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if wanted < 2200:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below what 1,000 connections need")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))  # inherited
    server = ServerProcess(tmp_path / "data", env={"COLLECTOR_SERVER_READ_TIMEOUT": "60"})
    server.start()
    try:
        yield server
    finally:
        server.kill()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def open_crowd(port: int, count: int) -> list[socket.socket]:
    """`count` connections; every other one sends half a request head and stops."""
    crowd = []
    for n in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        crowd.append(sock)
        if n % 2:
            select.select([], [sock], [], 5)
            with contextlib.suppress(OSError):
                sock.send(b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    return crowd


def test_a_thousand_connections_are_held_with_bounded_memory(crowd_server: ServerProcess
                                                             ) -> None:
    assert crowd_server.proc is not None
    pid = crowd_server.proc.pid
    for n in range(20):  # warm up: imports, caches, the first commits
        assert post_events(crowd_server.port, {"id": f"warm-{n}"}).status == 202
    before_rss, before_fds = rss_kib(pid), open_fds(pid)
    crowd = open_crowd(crowd_server.port, 1000)
    try:
        wait_until(lambda: open_fds(pid) >= before_fds + 990,
                   "the server accepted the crowd", timeout=30)
        assert post_events(crowd_server.port, {"id": "in-the-crowd"}, timeout=10).status == 202
        assert request(crowd_server.port, "GET", "/healthz", timeout=10).status == 200
        grown_mib = (rss_kib(pid) - before_rss) / 1024
    finally:
        for sock in crowd:
            sock.close()
    # aiohttp keeps a few tens of KiB per connection; 1,000 of them fit well under this.
    assert grown_mib < 150, f"RSS grew {grown_mib:.0f} MiB for 1,000 idle connections"
    wait_until(lambda: open_fds(pid) <= before_fds + 10, "the crowd's sockets are released")
    assert post_events(crowd_server.port, {"id": "after-the-crowd"}).status == 202


def test_a_crowd_beyond_the_fd_limit_waits_and_the_server_survives(
    crowd_server: ServerProcess
) -> None:
    assert crowd_server.proc is not None
    pid = crowd_server.proc.pid
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (256, 256))
    crowd = open_crowd(crowd_server.port, 1000)
    try:
        wait_until(lambda: open_fds(pid) >= 240, "the server took what it could", timeout=30)
        assert crowd_server.proc.poll() is None, "the server died of too many connections"
    finally:
        for sock in crowd:
            sock.close()
    wait_until(lambda: _answers(crowd_server.port), "the server answers again", timeout=30)
    assert post_events(crowd_server.port, {"id": "after"}).status == 202
    assert crowd_server.proc.poll() is None


def _answers(port: int) -> bool:
    try:
        return request(port, "GET", "/healthz", timeout=2).status == 200
    except OSError:
        return False


# -- the token check -------------------------------------------------------------------------

def _guesses(token: str) -> tuple[str, str]:
    """Same length as the token: one wrong only in its last character, one in its first."""
    flip = {"0": "1"}
    nearly = token[:-1] + flip.get(token[-1], "0")
    wrong = flip.get(token[0], "0") + token[1:]
    return nearly, wrong


def test_the_token_check_compares_the_whole_token_in_constant_time(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """Constant time by construction: every guess, of every length and wrong anywhere,
    is compared whole with the whole token, as bytes, by one hmac.compare_digest call
    (whose time does not depend on where they differ), whatever the scheme; and that
    call alone decides the answer. (The timing figure itself is measured by
    `scripts/bench.py --only token`, beside a plain == in the same run.)"""
    token = secrets.token_hex(8)
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest
    verdict: list[bool] = []  # when set, what the patched compare_digest answers

    def recording(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return verdict[0] if verdict else real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)

    def check(header: str) -> int:
        """The status _check_token gives this Authorization header (200: let through)."""
        calls.clear()
        try:
            _check_token(make_mocked_request("POST", "/v1/events",
                                             headers={"Authorization": header}), token)
        except ApiError as exc:
            return exc.status
        return 200

    nearly, wrong = _guesses(token)
    guesses = {token[:n] for n in range(len(token))}  # every shorter length, prefixes
    guesses |= {token[:n] + "x" * (len(token) - n) for n in range(len(token))}  # wrong at n
    guesses |= {token + "0", token + token, nearly, wrong, "x" * len(token)}
    assert sorted({len(g) for g in guesses}) == [*range(len(token) + 2), 2 * len(token)]
    for guess in sorted(guesses):
        assert check(f"Bearer {guess}") == 401, guess
        assert calls == [(guess.encode(), token.encode())], guess
    for header in (f"Bearer {token}", f"bearer {token}", f"BEARER  {token} "):
        assert check(header) == 200, header
        assert calls == [(token.encode(), token.encode())], header
    for header in (f"Basic {token}", token, f"Token {token}"):  # compared all the same
        assert check(header) == 401, header
        assert len(calls) == 1, header
    # No other comparison decides: compare_digest's answer is the verdict.
    verdict.append(True)
    assert check(f"Bearer {wrong}") == 200
    verdict[0] = False
    assert check(f"Bearer {token}") == 401
