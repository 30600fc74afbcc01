"""Who may talk to the daemon, and from which page (collector.server.guard).

DNS rebinding: a page on the internet rebinds its own name to the home server's address
and the browser sends that name as Host: refused with 421 before any other work, token
or not. Cross-site requests: a browser page of another origin cannot change state (403)
on any route that changes it. CORS only for configured origins.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from collector.server.guard import default_names, split_host
from tests.support.server import ClientFactory, ServerProcess, wait_until

TOKEN = "guard-test-token-51d2"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Content-Type": "application/json"}
REFUSE_BAD = ("tests.support.handlers:refuse_bad",)
EVIL = "evil.example.com"


async def queue(client: TestClient[Any, Any]) -> dict[str, Any]:
    resp = await client.get("/v1/queue", headers=AUTH)
    assert resp.status == 200
    body: dict[str, Any] = await resp.json()
    return body


async def dead_letters(client: TestClient[Any, Any]) -> list[int]:
    """Post three events, the second "bad"; answer once the bad one is a dead letter."""
    events = [{"n": n, "bad": n == 2} for n in (1, 2, 3)]
    resp = await client.post("/v1/events", data=orjson.dumps(events), headers={**AUTH, **JSON})
    assert resp.status == 202

    async def settled() -> bool:
        q = await queue(client)
        return bool(q["dead"] == 1 and q["processed_total"] == 2)

    await wait_until(settled, timeout=30, what="one dead letter")
    body = await (await client.get("/v1/dead", headers=AUTH)).json()
    return [d["seq"] for d in body["dead"]]


# -- Host -----------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/v1/events", "/v1/matches", "/v1/queue", "/", "/metrics",
                                  "/v1/dead/retry"])
async def test_a_foreign_host_is_refused_before_any_work(make_client: ClientFactory,
                                                         path: str) -> None:
    client = await make_client(server__token=TOKEN)
    method = "POST" if path in ("/v1/events", "/v1/dead/retry") else "GET"
    resp = await client.request(method, path, data=b'{"all": true}',
                                headers={**AUTH, **JSON, "Host": f"{EVIL}:8765"})
    assert resp.status == 421
    body = await resp.json()
    assert body["error"] == "misdirected_request"
    assert EVIL in body["detail"]
    assert "allowed_hosts" in body["detail"]
    # Not even the token is looked at: a wrong one still gets 421, not 401.
    resp = await client.get(path, headers={"Host": EVIL})
    assert resp.status == 421
    assert (await queue(client))["last_seq"] == 0  # nothing was queued


async def test_the_default_names_are_answered(make_client: ClientFactory) -> None:
    client = await make_client()
    hostname = socket.gethostname()
    base = hostname.split(".")[0]
    port = client.port
    for host in ("localhost", "127.0.0.1", "[::1]", "LOCALHOST.", hostname, f"{base}.local",
                 f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
        resp = await client.get("/v1/queue", headers={"Host": host})
        assert resp.status == 200, host
    for host in (EVIL, f"{base}.example.com", "127.0.0.2", "localhost.evil.example.com",
                 f"{EVIL}:{port}", "[::2]", "", "127.0.0.1.nip.io"):
        resp = await client.get("/v1/queue", headers={"Host": host})
        assert resp.status == 421, host


async def test_configured_names_replace_the_defaults(make_client: ClientFactory) -> None:
    client = await make_client(server__allowed_hosts=("homeserver.lan", "*.example.org"))
    for host, status in (("homeserver.lan", 200), ("HomeServer.lan:8765", 200),
                         ("a.example.org", 200), ("b.a.example.org", 200),
                         ("example.org.evil.com", 421), ("localhost", 421),
                         (EVIL, 421), ("127.0.0.1", 200)):  # the address it was reached at
        resp = await client.get("/v1/queue", headers={"Host": host})
        assert resp.status == status, host


async def test_healthz_answers_any_host(make_client: ClientFactory) -> None:
    client = await make_client(server__allowed_hosts=("homeserver.lan",))
    assert (await client.get("/healthz", headers={"Host": EVIL})).status == 200
    assert (await client.get("/readyz", headers={"Host": EVIL})).status == 421


async def test_a_star_turns_the_check_off_and_says_so(make_client: ClientFactory) -> None:
    client = await make_client(server__allowed_hosts=("*",))
    resp = await client.get("/v1/queue", headers={"Host": EVIL})
    assert resp.status == 200
    warnings = (await resp.json())["warnings"]
    assert len(warnings) == 1
    assert "DNS rebinding" in warnings[0]


def test_default_names() -> None:
    assert default_names("0.0.0.0", "homeserver") == {  # noqa: S104
        "localhost", "127.0.0.1", "::1", "homeserver", "homeserver.local"}
    assert default_names("192.168.1.5", "Box.fritz.box.") == {
        "localhost", "127.0.0.1", "::1", "192.168.1.5", "box.fritz.box", "box", "box.local"}


@pytest.mark.parametrize(("header", "parsed"), [
    ("Example.org:8765", ("example.org", "8765")), ("example.org", ("example.org", None)),
    ("[::1]:80", ("::1", "80")), ("[::1]", ("::1", None)), ("::1", ("::1", None)),
    ("host.:1", ("host", "1")), ("[::1", ("[::1", None)),
])
def test_split_host(header: str, parsed: tuple[str, str | None]) -> None:
    assert split_host(header) == parsed


def _local_address() -> str | None:
    """A non-loopback address of this machine, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent
        except OSError:
            return None
        address: str = sock.getsockname()[0]
    return None if address.startswith("127.") else address


def test_on_every_interface_the_address_connected_to_is_answered(
        server_process: Callable[..., ServerProcess]) -> None:
    """A daemon on 0.0.0.0 answers to the address a client reached it at (any interface),
    and still refuses names it does not have."""
    import http.client

    address = _local_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    server = server_process(args=["--host", "0.0.0.0"])  # noqa: S104
    server.start()
    port = server.port
    for host, connect, status in ((address, address, 200), ("127.0.0.1", "127.0.0.1", 200),
                                  (address, "127.0.0.1", 421), (EVIL, address, 421)):
        conn = http.client.HTTPConnection(connect, port, timeout=10)
        conn.request("GET", "/v1/queue", headers={"Host": f"{host}:{port}"})
        assert conn.getresponse().status == status, (host, connect)
        conn.close()
    # The commands on this machine find it at loopback, not at the wildcard (no name).
    record = json.loads((server.data_dir / "daemon.json").read_text())
    assert record["urls"] == [f"http://127.0.0.1:{port}"]
    asked = subprocess.run([sys.executable, "-m", "collector", "status", "--data-dir",
                            str(server.data_dir), "--json"],
                           capture_output=True, text=True, timeout=60, check=False)
    assert asked.returncode == 0, asked.stderr
    assert "421" not in asked.stdout


# -- Origin ---------------------------------------------------------------------------------

Call = Callable[[TestClient[Any, Any], dict[str, str], int], Awaitable[int]]


async def post_events(client: TestClient[Any, Any], headers: dict[str, str], seq: int) -> int:
    resp = await client.post("/v1/events", data=b'{"n": 9}', headers={**AUTH, **JSON, **headers})
    return resp.status


async def retry_one(client: TestClient[Any, Any], headers: dict[str, str], seq: int) -> int:
    return (await client.post(f"/v1/dead/{seq}/retry", headers={**AUTH, **headers})).status


async def drop_one(client: TestClient[Any, Any], headers: dict[str, str], seq: int) -> int:
    return (await client.delete(f"/v1/dead/{seq}", headers={**AUTH, **headers})).status


async def retry_all(client: TestClient[Any, Any], headers: dict[str, str], seq: int) -> int:
    return (await client.post("/v1/dead/retry", data=b'{"all": true}',
                              headers={**AUTH, **JSON, **headers})).status


async def drop_all(client: TestClient[Any, Any], headers: dict[str, str], seq: int) -> int:
    return (await client.post("/v1/dead/drop", data=b'{"all": true}',
                              headers={**AUTH, **JSON, **headers})).status


CHANGES: list[Call] = [post_events, retry_one, drop_one, retry_all, drop_all]


@pytest.mark.parametrize("change", CHANGES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("origin", ["https://evil.example.com", "null",
                                    "http://127.0.0.1:1", "http://localhost"])
async def test_a_foreign_origin_cannot_change_state(make_client: ClientFactory, change: Call,
                                                    origin: str) -> None:
    client = await make_client(server__token=TOKEN, worker__handlers=REFUSE_BAD)
    (seq,) = await dead_letters(client)
    before = await queue(client)
    status = await change(client, {"Origin": origin}, seq)
    assert status == 403
    after = await queue(client)
    assert (after["dead"], after["last_seq"]) == (before["dead"], before["last_seq"])
    # The same request from the daemon's own page, and from a client with no Origin, works.
    own = f"http://127.0.0.1:{client.port}"
    assert await change(client, {"Origin": own}, seq) in (200, 202)


async def test_a_refusal_names_the_origin_and_the_setting(make_client: ClientFactory) -> None:
    client = await make_client()
    resp = await client.post("/v1/events", data=b"{}",
                             headers={**JSON, "Origin": "https://evil.example.com"})
    assert resp.status == 403
    body = await resp.json()
    assert body["error"] == "forbidden_origin"
    assert "https://evil.example.com" in body["detail"]
    assert "cors_origins" in body["detail"]


async def test_reading_from_a_foreign_page_gets_no_cors_header(make_client: ClientFactory
                                                               ) -> None:
    client = await make_client()
    resp = await client.get("/v1/matches", headers={"Origin": "https://evil.example.com"})
    assert resp.status == 200  # a browser keeps the answer from the page: no CORS header
    assert "Access-Control-Allow-Origin" not in resp.headers
    resp = await client.options("/v1/events", headers={
        "Origin": "https://evil.example.com", "Access-Control-Request-Method": "POST"})
    assert resp.status == 405
    assert "Access-Control-Allow-Origin" not in resp.headers


# -- CORS -----------------------------------------------------------------------------------

OVERLAY = "http://obs.lan:8080"


async def test_a_configured_origin_gets_cors(make_client: ClientFactory) -> None:
    client = await make_client(server__token=TOKEN, server__cors_origins=(OVERLAY,))
    pre = await client.options("/v1/events", headers={
        "Origin": OVERLAY, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert pre.status == 204
    assert pre.headers["Access-Control-Allow-Origin"] == OVERLAY
    assert "POST" in pre.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in pre.headers["Access-Control-Allow-Headers"]
    assert await post_events(client, {"Origin": OVERLAY}, 0) == 202
    resp = await client.get("/v1/matches", headers={**AUTH, "Origin": OVERLAY})
    assert resp.headers["Access-Control-Allow-Origin"] == OVERLAY
    assert "Origin" in resp.headers.getall("Vary")
    # The live stream too (its headers go out before the first frame).
    async with client.get("/v1/live", headers={**AUTH, "Origin": OVERLAY}) as live:
        assert live.status == 200
        assert live.headers["Access-Control-Allow-Origin"] == OVERLAY
        await asyncio.wait_for(live.content.readline(), 10)
    # Another origin still gets nothing.
    other = await client.get("/v1/matches", headers={**AUTH, "Origin": "http://other.lan"})
    assert "Access-Control-Allow-Origin" not in other.headers
