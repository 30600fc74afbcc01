#!/usr/bin/env python3
"""Vendor the dashboard's front-end libraries from the npm registry, pinned and checked.

The dashboard loads nothing from any other host, so the libraries it uses are files in
the package (collector/dashboard/static/vendor/<name>/), each with its licence beside it.
``vendor.json`` there pins each one: version, the registry's sha512 integrity of the
tarball, and the sha256 of every file taken from it.

    scripts/vendor_frontend.py --check            # the files match vendor.json (offline)
    scripts/vendor_frontend.py                    # fetch the pinned versions again
    scripts/vendor_frontend.py --set chart.js=4.6.2   # move a pin, fetch, rewrite vendor.json

Fetching needs only the npm registry (no Node.js): the tarball's integrity is checked
against the registry's own record before anything is written.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

VENDOR_DIR = Path(__file__).resolve().parent.parent / "collector/dashboard/static/vendor"
MANIFEST = VENDOR_DIR / "vendor.json"
REGISTRY = "https://registry.npmjs.org"


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 - a fixed https URL
        data: bytes = resp.read()
        return data


def _integrity_ok(data: bytes, integrity: str) -> bool:
    algo, _, digest = integrity.partition("-")
    if algo != "sha512":
        raise SystemExit(f"vendor: unexpected integrity algorithm {algo!r}")
    return base64.b64encode(hashlib.sha512(data).digest()).decode() == digest


def fetch(name: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Download ``name@version``, check it, write its files; the manifest entry back."""
    version = entry["version"]
    meta = json.loads(_get(f"{REGISTRY}/{name}/{version}"))
    integrity = meta["dist"]["integrity"]
    tarball = _get(meta["dist"]["tarball"])
    if not _integrity_ok(tarball, integrity):
        raise SystemExit(f"vendor: {name}@{version}: tarball does not match the registry's "
                         "integrity")
    target = VENDOR_DIR / name
    target.mkdir(parents=True, exist_ok=True)
    hashes = {}
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        for src in entry["files"]:
            member = tar.extractfile(f"package/{src}")
            if member is None:
                raise SystemExit(f"vendor: {name}@{version} has no {src}")
            data = member.read()
            out = target / Path(src).name
            out.write_bytes(data)
            hashes[Path(src).name] = hashlib.sha256(data).hexdigest()
    return {**entry, "integrity": integrity, "sha256": hashes}


def check(manifest: dict[str, Any]) -> list[str]:
    """What does not match the manifest (empty: all good)."""
    problems = []
    for name, entry in manifest.items():
        for file, digest in entry["sha256"].items():
            path = VENDOR_DIR / name / file
            if not path.is_file():
                problems.append(f"{name}: {file} is missing")
            elif hashlib.sha256(path.read_bytes()).hexdigest() != digest:
                problems.append(f"{name}: {file} differs from vendor.json")
        if not any(Path(f).name.upper().startswith("LICENSE") for f in entry["files"]):
            problems.append(f"{name}: no licence file is vendored")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare files to vendor.json")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VERSION",
                        help="pin NAME to VERSION, then fetch")
    args = parser.parse_args(argv)
    manifest: dict[str, Any] = json.loads(MANIFEST.read_text())
    if args.check:
        problems = check(manifest)
        for line in problems:
            print(line, file=sys.stderr)
        return 1 if problems else 0
    for pin in args.set:
        name, sep, version = pin.partition("=")
        if not sep or name not in manifest:
            parser.error(f"--set {pin}: NAME=VERSION with NAME one of {', '.join(manifest)}")
        manifest[name]["version"] = version
    for name in manifest:
        manifest[name] = fetch(name, manifest[name])
        print(f"{name}@{manifest[name]['version']}: {', '.join(manifest[name]['sha256'])}")
    MANIFEST.write_text(json.dumps(manifest, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
