"""Split a byte stream of back-to-back JSON objects, whatever the chunking.

The game's Stats API writes JSON objects to its socket with no delimiter between them,
and TCP cuts that stream anywhere: inside a string, an escape, a multi-byte UTF-8
character. :class:`JsonStreamSplitter` works on bytes (every byte that matters to JSON's
structure is ASCII, and no byte of a multi-byte UTF-8 character is), tracks string and
escape state and the nesting depth, and hands out each complete top-level object as the
exact bytes received, once it parsed as a JSON object.

Garbage does not derail it for long. A byte that cannot appear where it is (text at the
top level, a letter outside a string, a raw control character inside one), an object
nested deeper than ``max_depth`` or larger than ``max_object_bytes``, or a complete object
that is not valid JSON: each starts a resynchronisation. The splitter then tries each
``{`` that follows the point of failure and accepts a candidate only when it is a valid
object followed by another ``{`` or by the end of the stream — so the inner objects of a
message cut in half are never mistaken for messages. The memory it holds is bounded by
``max_object_bytes`` plus one chunk.
"""

from __future__ import annotations

import re
from typing import Final

import orjson

#: Anything that is not whitespace, a comma, a colon or part of a number or literal:
#: outside strings it is structure (``{}[]"``) or garbage.
_OUTSIDE: Final = re.compile(rb'[^ \t\r\n,:0-9.+\-eEtrufalsn]')
#: Inside strings: the closing quote, an escape, or a raw control character (invalid).
_INSIDE: Final = re.compile(rb'["\\\x00-\x1f]')
_NOT_SPACE: Final = re.compile(rb"[^ \t\r\n]")

_QUOTE: Final = ord('"')
_BACKSLASH: Final = ord("\\")
_OPENERS: Final = frozenset(b"{[")
_CLOSERS: Final = frozenset(b"}]")
_BRACE: Final = ord("{")

_MORE: Final = 0  # the object goes on past the buffered bytes
_DONE: Final = 1  # the object ends at self._pos
_BAD: Final = 2  # the bytes cannot be a JSON object

DEFAULT_MAX_OBJECT_BYTES: Final = 1 << 20
DEFAULT_MAX_DEPTH: Final = 64


def _is_object(raw: bytes) -> bool:
    try:
        return isinstance(orjson.loads(raw), dict)
    except orjson.JSONDecodeError:
        return False


class JsonStreamSplitter:
    """Incremental splitter: feed it chunks, get back complete JSON objects as bytes."""

    def __init__(
        self,
        *,
        max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        if max_object_bytes < 2 or max_depth < 1:
            raise ValueError("max_object_bytes must be >= 2 and max_depth >= 1")
        self._max_bytes = max_object_bytes
        self._max_depth = max_depth
        self._buf = bytearray()
        self._pos = 0  # where scanning resumes
        self._start = -1  # start of the object being scanned, -1 between objects
        self._depth = 0
        self._in_string = False
        self._resync = False  # after garbage: candidates need a boundary behind them
        self._garbage_from = 0  # start of the bytes being skipped (while resyncing)
        self._held: tuple[int, int] | None = None  # a candidate waiting for its boundary
        self._closed = False
        #: Objects handed out so far.
        self.objects = 0
        #: Bytes skipped while resynchronising (garbage, broken or oversized objects).
        self.dropped_bytes = 0
        #: How many times garbage started a resynchronisation.
        self.resyncs = 0

    @property
    def buffered(self) -> int:
        """Bytes held in memory (a partial object, or bytes still being resynchronised)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Take the next chunk; return the objects it completed, in order."""
        if self._closed:
            raise ValueError("the splitter is closed")
        self._buf += data
        out: list[bytes] = []
        self._scan(out)
        self._compact()
        return out

    def close(self) -> list[bytes]:
        """End of stream: release an object still waiting for a boundary; drop the rest."""
        out: list[bytes] = []
        buf = self._buf
        tail = len(buf)
        if self._held is not None:
            start, end = self._held
            self._accept_held(start, end, out)
            tail = end
        elif self._resync:
            tail = self._garbage_from
        elif self._start >= 0:
            tail = self._start
        self.dropped_bytes += len(bytes(buf[tail:]).strip(b" \t\r\n"))
        self._buf = bytearray()
        self._pos, self._start, self._held, self._resync = 0, -1, None, False
        self._closed = True
        return out

    # -- scanning ------------------------------------------------------------------------

    def _scan(self, out: list[bytes]) -> None:
        buf = self._buf
        while True:
            if self._start >= 0:
                state = self._scan_object()
                if state == _MORE:
                    if len(buf) - self._start > self._max_bytes:
                        self._fail()
                        continue
                    return
                if state == _BAD:
                    self._fail()
                    continue
                raw = bytes(buf[self._start : self._pos])
                if not _is_object(raw):
                    self._fail()
                    continue
                if self._resync:
                    self._held = (self._start, self._pos)
                else:
                    out.append(raw)
                    self.objects += 1
                self._start = -1
                continue
            match = _NOT_SPACE.search(buf, self._pos)
            if match is None:
                if self._held is not None:
                    del buf[self._held[1] :]  # only whitespace behind the held object
                self._pos = len(buf)
                return
            first = match.start()
            if self._held is not None:
                start, end = self._held
                if buf[first] != _BRACE:
                    # Followed by a comma, a bracket…: it was an inner object. Look further.
                    self._held = None
                    self._pos = start + 1
                    continue
                self._accept_held(start, end, out)
            if self._resync:
                candidate = buf.find(b"{", self._pos)
                if candidate < 0:
                    self._pos = len(buf)
                    return
                self._begin(candidate)
            elif buf[first] == _BRACE:
                self._begin(first)
            else:
                self._resync = True
                self._garbage_from = first
                self.resyncs += 1
                self._pos = first

    def _scan_object(self) -> int:
        """Advance through the current object; _DONE leaves self._pos just past its end."""
        buf = self._buf
        pos = self._pos
        while True:
            if self._in_string:
                match = _INSIDE.search(buf, pos)
                if match is None:
                    self._pos = len(buf)
                    return _MORE
                at = match.start()
                byte = buf[at]
                if byte == _QUOTE:
                    self._in_string = False
                    pos = at + 1
                elif byte == _BACKSLASH:
                    if at + 1 >= len(buf):
                        self._pos = at  # the escaped byte is in the next chunk
                        return _MORE
                    pos = at + 2
                else:
                    return _BAD
            else:
                match = _OUTSIDE.search(buf, pos)
                if match is None:
                    self._pos = len(buf)
                    return _MORE
                at = match.start()
                byte = buf[at]
                pos = at + 1
                if byte == _QUOTE:
                    self._in_string = True
                elif byte in _OPENERS:
                    self._depth += 1
                    if self._depth > self._max_depth:
                        return _BAD
                elif byte in _CLOSERS:
                    self._depth -= 1
                    if self._depth == 0:
                        self._pos = pos
                        return _DONE
                else:
                    return _BAD

    def _begin(self, start: int) -> None:
        self._start = start
        self._pos = start + 1
        self._depth = 1
        self._in_string = False

    def _fail(self) -> None:
        """The object at self._start is no good: resynchronise from the byte after its `{`."""
        if not self._resync:
            self._resync = True
            self._garbage_from = self._start
            self.resyncs += 1
        self._pos = self._start + 1
        self._start = -1

    def _accept_held(self, start: int, end: int, out: list[bytes]) -> None:
        self.dropped_bytes += max(0, start - self._garbage_from)
        out.append(bytes(self._buf[start:end]))
        self.objects += 1
        self._held = None
        self._resync = False

    def _compact(self) -> None:
        """Forget the bytes nothing will look at again."""
        cut = self._pos
        if self._start >= 0:
            cut = min(cut, self._start)
        if self._held is not None:
            cut = min(cut, self._held[0])
        if cut <= 0:
            return
        if self._resync:
            skipped = cut - self._garbage_from
            if skipped > 0:
                self.dropped_bytes += skipped
            self._garbage_from = max(0, self._garbage_from - cut)
        del self._buf[:cut]
        self._pos -= cut
        if self._start >= 0:
            self._start -= cut
        if self._held is not None:
            self._held = (self._held[0] - cut, self._held[1] - cut)
