"""What the commands print: lines and JSON on stdout, tables, times, clipped values."""

from __future__ import annotations

import datetime as dt
import re
import sys
from collections.abc import Sequence
from typing import Any

import orjson


def out(text: str) -> None:
    """One line on stdout."""
    sys.stdout.write(text + "\n")


def print_json(data: Any) -> None:
    """`data` as indented JSON on stdout."""
    out(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def when(timestamp: float | None) -> str:
    """A UNIX time as `YYYY-MM-DD HH:MM:SS` in this machine's time zone ("-" for none)."""
    if timestamp is None:
        return "-"
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


#: What a terminal would act on instead of showing: C0 and C1 controls (ESC starts the
#: sequences that move the cursor, recolour, retitle the window or, in some terminals,
#: write files), DEL, and the bidirectional overrides and isolates that reorder what is
#: shown. Names come from strangers (anyone in the lobby picks one).
_TERMINAL_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def terminal_safe(text: str) -> str:
    """`text` with every character a terminal would act on shown as U+FFFD instead."""
    return _TERMINAL_UNSAFE.sub("\ufffd", text)


def clip(value: Any, width: int) -> str:
    """`value` on one line (JSON unless a string), cut to `width` with an ellipsis, with
    nothing a terminal would act on."""
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    text = terminal_safe(" ".join(text.split()))
    return text if len(text) <= width else text[: width - 1] + "…"


def cell(value: Any) -> str:
    """A table cell: "-" for None, yes/no, one decimal for floats."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """Rows under headers, columns padded; numeric columns right-aligned."""
    cells = [[cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    numeric = [all(isinstance(row[i], int | float) or row[i] is None for row in rows)
               and bool(rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w)
                 for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    return [line(list(headers)), *(line(row) for row in cells)]
