"""The serializer handed to persist-queue stores JSON and never unpickles."""

from __future__ import annotations

import io
import pickle

import orjson
import pytest

from collector.serialization import OrjsonSerializer


def test_round_trip_through_a_file_keeps_values_and_order() -> None:
    values = [{"Event": "UpdateState", "Data": "{\"MatchGuid\": \"\"}"}, [1, 2.5, None], "é"]
    fp = io.BytesIO()
    for value in values:
        OrjsonSerializer.dump(value, fp)
    fp.seek(0)
    assert [OrjsonSerializer.load(fp) for _ in values] == values
    assert OrjsonSerializer.loads(OrjsonSerializer.dumps(values)) == values


def test_pickled_bytes_are_refused_not_executed() -> None:
    with pytest.raises(orjson.JSONDecodeError):
        OrjsonSerializer.loads(pickle.dumps({"a": 1}))
