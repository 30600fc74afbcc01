"""The serializer handed to persist-queue: JSON through orjson, never pickle."""

from __future__ import annotations

from typing import Any, BinaryIO

import orjson


class OrjsonSerializer:
    """persist-queue's serializer protocol (dumps/loads/dump/load) over orjson.

    Client data is stored as JSON, so reading the file back never unpickles anything.
    """

    @staticmethod
    def dumps(value: Any) -> bytes:
        """Serialize to JSON bytes."""
        return orjson.dumps(value)

    @staticmethod
    def loads(raw: bytes) -> Any:
        """Parse JSON bytes."""
        return orjson.loads(raw)

    @staticmethod
    def dump(value: Any, fp: BinaryIO) -> None:
        """Write one JSON line."""
        fp.write(orjson.dumps(value) + b"\n")

    @staticmethod
    def load(fp: BinaryIO) -> Any:
        """Read one JSON line."""
        return orjson.loads(fp.readline())
