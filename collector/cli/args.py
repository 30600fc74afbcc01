"""Argument types shared by every sub-command: one rule for each kind of number."""

from __future__ import annotations

import argparse
import os
import ssl
from collections.abc import Callable
from pathlib import Path


def positive_int(text: str) -> int:
    """An integer of at least 1 (a seq, a row count)."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def count(text: str) -> int:
    """An integer of at least 0 (an offset)."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def positive_float(text: str) -> float:
    """A number above 0 (seconds, a rate, a speed)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value


def port(text: str) -> int:
    """A TCP port number, 0 to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    return value


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """An integer from `low` to `high`."""

    def parse(text: str) -> int:
        try:
            value = _integer(text)
        except argparse.ArgumentTypeError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"not a number from {low} to {high}: {text!r}")
        return value

    return parse


def output_problem(path: Path | str) -> str | None:
    """Why `path` cannot be a new output file (`record -o`, `export -o`), or None.

    Checked before any work, so that a typo does not cost a match or a long export. An
    output file is never overwritten. The file is not created here; whoever creates it
    must still expect an OSError (a full or read-only disk, a race).
    """
    path = Path(path)
    try:
        if path.is_dir():
            return f"{path} is a folder; name a file in it"
        if path.exists() or path.is_symlink():
            return f"{path} exists; choose another file"
        parent = path.absolute().parent
        if not parent.exists():
            return f"cannot create {path}: no such folder {parent}"
        if not parent.is_dir():
            return f"cannot create {path}: {parent} is not a folder"
    except OSError as exc:  # a folder on the way that may not be searched
        return f"cannot create {path}: {_strerror(exc)}"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create {path}: no permission to write in {parent}"
    return None


def _strerror(exc: OSError) -> str:
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]


def _integer(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def http_url(text: str) -> str:
    """An http:// or https:// URL with a host (the daemon's address)."""
    from yarl import URL

    try:
        url = URL(text)
        port = url.port
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a valid URL: {text!r}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise argparse.ArgumentTypeError(
            f"not an http(s) URL with a host: {text!r} (like http://127.0.0.1:8765)")
    del port
    return text


def ca_file(text: str) -> ssl.SSLContext:
    """`--ca-file`: a PEM file of certificates to trust for https:// (a private CA, or a
    self-signed certificate itself), loaded at once into the client's SSLContext, so that
    a missing, unreadable or non-PEM file is a usage error before any work."""
    from collector.bridge.poster import client_ssl

    try:
        return client_ssl(Path(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
