"""What the command line shows while it works: a status line rewritten in place, and a
progress bar drawn on it. Used by the bridge, `replay` and the admin commands alike."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from typing import Final, TextIO

_REDRAW_EVERY_S: Final = 0.1
_BAR_WIDTH: Final = 24


class StatusLine:
    """One line rewritten in place with \\r on a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._width = 0

    def show(self, text: str) -> None:
        """Replace the line with `text` (cut to the terminal's width: a wrapped line
        could not be rewritten)."""
        text = text[: max(20, shutil.get_terminal_size().columns - 1)]
        pad = " " * max(0, self._width - len(text))
        self._stream.write("\r" + text + pad)
        self._stream.flush()
        self._width = len(text)

    def clear(self) -> None:
        """Blank the line (before a log line is written)."""
        if self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._width = 0

    def done(self) -> None:
        """Leave the last text on screen and move to the next line."""
        if self._width:
            self._stream.write("\n")
            self._stream.flush()
            self._width = 0


def status_line_filter(status: StatusLine) -> Callable[[object], bool]:
    """A logging filter that blanks the status line before each record is written."""

    def _filter(record: object) -> bool:
        status.clear()
        return True

    return _filter


class ProgressBar:
    """`LABEL [#########---------]  45% | NOTE` on a status line, redrawn at most 10 times
    a second; nothing at all when `line` is None (not a terminal)."""

    def __init__(self, line: StatusLine | None, label: str, total: int) -> None:
        self._line = line
        self._label = label
        self.total = total
        self._drawn = 0.0

    def update(self, done: int, note: str = "", *, force: bool = False) -> None:
        """Show `done` of `total` (and `note`); skipped if drawn less than 0.1 s ago."""
        self._draw(done, note, force=force, final=False)

    def _draw(self, done: int, note: str, *, force: bool, final: bool) -> None:
        now = time.monotonic()
        if self._line is None or (not force and now - self._drawn < _REDRAW_EVERY_S):
            return
        self._drawn = now
        total = max(self.total, done)
        # Nothing to do is all done only at the end: an unknown total is not 100 %.
        share = done / total if total else (1.0 if final else 0.0)
        filled = round(_BAR_WIDTH * share)
        bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
        tail = f" | {note}" if note else ""
        self._line.show(f"{self._label} [{bar}] {share:6.1%}{tail}")

    def done(self, done: int, note: str = "") -> None:
        """The last drawing, left on screen."""
        self._draw(done, note, force=True, final=True)
        if self._line is not None:
            self._line.done()
