"""The dashboard's routes: each page at its stable path, static files only from the
package's list, the security headers, and the vendored libraries as pinned.

What the pages do in a browser is tested in tests/browser (headless Chromium).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys

import pytest

from collector.dashboard import STATIC_DIR
from tests.support.paths import REPO
from tests.support.server import ClientFactory

PAGES = {
    "/": "home", "/matches/12": "match", "/matches/1F7ED23011F1435166EBAB919DB5566D": "match",
    "/players/3": "player", "/sessions/3.12": "session", "/live": "live",
    "/live?overlay=1": "live", "/system": "system",
}
TOKEN = "pages-test-token-0a9c"


@pytest.mark.parametrize(("path", "page"), sorted(PAGES.items()))
async def test_each_page_is_the_shell_naming_itself(make_client: ClientFactory, path: str,
                                                    page: str) -> None:
    client = await make_client()
    resp = await client.get(path)
    assert resp.status == 200
    assert resp.content_type == "text/html"
    text = await resp.text()
    assert f'<body data-page="{page}"' in text
    assert "{{" not in text  # every placeholder filled
    csp = resp.headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    if page == "live":  # an overlay may be framed by a streaming tool
        assert directives["frame-ancestors"] == "*"
        assert "X-Frame-Options" not in resp.headers
    else:
        assert directives["frame-ancestors"] == "'none'"
        assert resp.headers["X-Frame-Options"] == "DENY"


async def test_pages_need_no_token_but_their_data_does(make_client: ClientFactory) -> None:
    client = await make_client(server__token=TOKEN)
    page = await client.get("/matches/1")
    assert page.status == 200  # the shell holds no data
    data = await client.get("/v1/matches/1")
    assert data.status == 401


async def test_every_file_the_shell_names_is_served_with_its_type(
        make_client: ClientFactory) -> None:
    client = await make_client()
    shell = await (await client.get("/")).text()
    assets = re.findall(r'(?:src|href)="(/static/[^"?]+)', shell)
    assert {"/static/app.css", "/static/js/main.js",
            "/static/vendor/chart.js/chart.umd.min.js"} <= set(assets)
    types = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
    for asset in assets:
        resp = await client.get(asset)
        assert resp.status == 200, asset
        assert resp.content_type == types[asset[asset.rindex("."):]], asset
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert await resp.read() == (STATIC_DIR / asset.removeprefix("/static/")).read_bytes()


@pytest.mark.parametrize("path", [
    "/static/page.html",  # the template is not a file to serve
    "/static/../__init__.py", "/static/%2e%2e/__init__.py", "/static/js/../../__init__.py",
    "/static/js/nope.js", "/static//etc/passwd",
])
async def test_only_listed_static_files_are_served(make_client: ClientFactory, path: str
                                                   ) -> None:
    client = await make_client()
    resp = await client.get(path)
    assert resp.status == 404
    assert (await resp.json())["error"] == "not_found"


async def test_a_page_with_a_post_is_a_405_in_the_json_shape(make_client: ClientFactory
                                                              ) -> None:
    client = await make_client()
    resp = await client.post("/matches/1")
    assert resp.status == 405
    assert (await resp.json())["error"] == "method_not_allowed"


def test_vendored_libraries_match_their_pins() -> None:
    manifest = json.loads((STATIC_DIR / "vendor/vendor.json").read_text())
    assert manifest, "vendor.json lists no library"
    for name, entry in manifest.items():
        files = entry["sha256"]
        assert any(f.upper().startswith("LICENSE") for f in files), f"{name}: no licence"
        for file, digest in files.items():
            data = (STATIC_DIR / "vendor" / name / file).read_bytes()
            assert hashlib.sha256(data).hexdigest() == digest, f"{name}/{file}"
    check = subprocess.run([sys.executable, str(REPO / "scripts/vendor_frontend.py"), "--check"],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr


def test_the_dashboard_names_no_other_host() -> None:
    """No file of our own loads or calls anything outside the daemon (the vendored
    library's licence header names its home page; it loads nothing from there)."""
    ours = [p for p in STATIC_DIR.rglob("*") if p.is_file() and "vendor" not in p.parts]
    assert len(ours) >= 10
    for path in ours:
        # An SVG's namespace is a name, not an address anything is loaded from.
        text = path.read_text(encoding="utf-8").replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), path
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"):
            assert sink not in text, f"{path}: {sink}"
