"""The dashboard's answers, read without a browser: security headers on every page and
static file, the right content types, and no reference to another host in anything the
daemon serves (HTML, JS, CSS, SVG)."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.browser.conftest import Daemon
from tests.support.paths import REPO

STATIC = REPO / "collector" / "dashboard" / "static"
CONTENT_TYPES = {
    ".js": ("text/javascript", "application/javascript"),
    ".mjs": ("text/javascript", "application/javascript"),
    ".css": ("text/css",),
    ".svg": ("image/svg+xml",),
    ".png": ("image/png",),
    ".ico": ("image/x-icon", "image/vnd.microsoft.icon"),
    ".woff2": ("font/woff2",),
    ".json": ("application/json",),
    ".md": ("text/markdown", "text/plain"),
    ".txt": ("text/plain",),
    ".html": ("text/html",),
}
#: XML namespace names: identifiers that look like URLs, never fetched.
NAMESPACES = {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xhtml",
              "http://www.w3.org/1999/xlink", "http://www.w3.org/XML/1998/namespace",
              "http://www.w3.org/2000/xmlns/"}
URL = re.compile(r"""(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}[^\s"'`)<>\\]*""")
COMMENT = re.compile(r"/\*.*?\*/", re.S)


def _get(url: str) -> tuple[int, Message, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def _pages(daemon: Daemon) -> list[str]:
    match = daemon.api("/v1/matches?limit=1")["matches"][0]
    player = daemon.api("/v1/players?limit=1")["players"][0]
    session = daemon.api("/v1/sessions?limit=1")["sessions"][0]
    return ["/", f"/matches/{match['id']}", f"/players/{player['id']}",
            f"/sessions/{session['id']}", "/live", "/live?overlay=1", "/system"]


def _directives(csp: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for part in csp.split(";"):
        words = part.split()
        if words:
            out[words[0].lower()] = words[1:]
    return out


def _check_common(path: str, headers: Message) -> dict[str, list[str]]:
    csp = headers.get("Content-Security-Policy")
    assert csp, f"{path}: no Content-Security-Policy"
    policy = _directives(csp)
    script = policy.get("script-src") or policy.get("default-src")
    assert script is not None, f"{path}: the CSP limits no script source: {csp}"
    assert "'self'" in script or "'none'" in script, csp
    for word in ("'unsafe-inline'", "'unsafe-eval'", "*", "http:", "https:", "data:"):
        assert word not in script, f"{path}: script-src allows {word}: {csp}"
    for directive, sources in policy.items():
        for source in sources:
            assert not re.match(r"(https?:)?//|[a-z0-9-]+\.[a-z]", source, re.I), (
                f"{path}: {directive} allows another host {source}")
    assert headers.get("X-Content-Type-Options", "").lower() == "nosniff", path
    return policy


def test_pages_answer_html_with_the_security_headers(stats_daemon: Daemon) -> None:
    for path in _pages(stats_daemon):
        status, headers, body = _get(stats_daemon.url + path)
        assert status == 200, f"{path}: {status}"
        assert headers.get_content_type() == "text/html", (path, headers["Content-Type"])
        policy = _check_common(path, headers)
        assert headers.get("Referrer-Policy", "").lower() == "no-referrer", path
        ancestors = policy.get("frame-ancestors")
        if urlsplit(path).path == "/live":
            assert ancestors == ["*"], f"{path}: the overlay must be framable: {ancestors}"
            assert headers.get("X-Frame-Options") is None, (
                f"{path}: X-Frame-Options {headers.get('X-Frame-Options')} forbids the overlay")
        else:
            assert ancestors == ["'none'"], f"{path}: frame-ancestors {ancestors}"
            assert headers.get("X-Frame-Options", "DENY").upper() == "DENY", path
        first = urlsplit(path).path.split("/")[1]
        page = {"": "home", "matches": "match", "players": "player", "sessions": "session",
                "live": "live", "system": "system"}[first]
        assert f'data-page="{page}"'.encode() in body, f"{path}: not the {page} page"
        assert b"<script>" not in body, f"{path}: an inline script (the CSP refuses it)"
        assert b"<style" not in body, f"{path}: an inline style (the CSP refuses it)"


def _static_files() -> list[str]:
    return sorted(p.relative_to(STATIC).as_posix() for p in STATIC.rglob("*")
                  if p.is_file() and p.name != "page.html" and not p.name.endswith(".map"))


def test_static_files_have_their_types_and_the_headers(stats_daemon: Daemon) -> None:
    files = _static_files()
    assert any(f.endswith(".js") for f in files), files
    assert "app.css" in files, files
    for rel in files:
        path = f"/static/{rel}"
        status, headers, _ = _get(stats_daemon.url + path)
        assert status == 200, f"{path}: {status}"
        want = CONTENT_TYPES.get(Path(rel).suffix)
        if want is not None:
            assert headers.get_content_type() in want, (path, headers["Content-Type"])
        else:
            assert headers.get("Content-Type"), f"{path}: no Content-Type"
        _check_common(path, headers)
        assert _directives(headers["Content-Security-Policy"]).get("frame-ancestors") in (
            ["'none'"], None), path


def test_every_reference_in_a_page_resolves_on_the_daemon(stats_daemon: Daemon) -> None:
    _, _, body = _get(stats_daemon.url + "/")
    refs = re.findall(rb"""(?:src|href)=["']([^"']+)["']""", body)
    assert refs
    for ref in refs:
        target = ref.decode()
        assert target.startswith("/"), f"a page refers to {target} (not the daemon's)"
        status, _, _ = _get(stats_daemon.url + target)
        assert status == 200, f"{target}: {status}"


@pytest.mark.parametrize("path", ["/static/../pages.py", "/static/%2e%2e/pages.py",
                                  "/static/js/nope.js", "/static/page.html"])
def test_no_other_file_is_served(stats_daemon: Daemon, path: str) -> None:
    status, _, _ = _get(stats_daemon.url + path)
    assert status == 404, f"{path}: {status}"


def test_nothing_served_names_another_host(stats_daemon: Daemon) -> None:
    own = urlsplit(stats_daemon.url).netloc
    texts = {path: _get(stats_daemon.url + path)[2] for path in _pages(stats_daemon)}
    for rel in _static_files():
        if Path(rel).suffix in (".js", ".mjs", ".css", ".svg", ".html", ".json"):
            texts[f"/static/{rel}"] = _get(f"{stats_daemon.url}/static/{rel}")[2]
    found = []
    for path, raw in texts.items():
        text = raw.decode("utf-8", errors="replace")
        if path.endswith((".js", ".mjs", ".css")):
            text = COMMENT.sub("", text)  # licence banners name their project's site
        for url in URL.findall(text):
            if url.rstrip("/#") in {n.rstrip("/") for n in NAMESPACES}:
                continue
            if urlsplit(url if not url.startswith("//") else "http:" + url).netloc == own:
                continue
            found.append(f"{path}: {url}")
    assert not found, "served files name other hosts:\n" + "\n".join(found)
