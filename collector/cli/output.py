"""What the commands print: lines and JSON on stdout, tables, times, clipped values."""

from __future__ import annotations

import datetime as dt
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


def clip(value: Any, width: int) -> str:
    """`value` on one line (JSON unless a string), cut to `width` with an ellipsis."""
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    text = " ".join(text.split())
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
