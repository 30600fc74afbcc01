"""The incremental splitter on the real Stats API recording, in any chunking, and on garbage."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.bridge.jsonstream import JsonStreamSplitter
from tests.support.paths import CAPTURE_JSONL, CAPTURE_STREAM

STREAM = CAPTURE_STREAM.read_bytes()
LINES = CAPTURE_JSONL.read_bytes().splitlines()
#: The same messages as the documentation shows them: Data an object, not a string.
DECODED = [
    orjson.dumps({**orjson.loads(line), "Data": orjson.loads(orjson.loads(line)["Data"])})
    for line in LINES
]

chunk_sizes = st.lists(st.integers(min_value=1, max_value=3000), min_size=1, max_size=40)


def split_all(data: bytes, sizes: Iterable[int], **kwargs: int) -> tuple[list[bytes],
                                                                         JsonStreamSplitter]:
    """Feed `data` in chunks of the given sizes (cycled), then close."""
    splitter = JsonStreamSplitter(**kwargs)
    out: list[bytes] = []
    pos = 0
    for size in itertools.cycle(sizes):
        if pos >= len(data):
            break
        out += splitter.feed(data[pos : pos + size])
        pos += size
    out += splitter.close()
    return out, splitter


def test_the_recording_in_one_piece_gives_the_438_messages() -> None:
    out, splitter = split_all(STREAM, [len(STREAM)])
    assert len(LINES) == 438
    assert out == LINES
    assert splitter.dropped_bytes == 0
    assert splitter.resyncs == 0


@settings(max_examples=15, deadline=None)
@given(sizes=chunk_sizes)
def test_the_recording_in_random_chunks_gives_the_438_messages(sizes: list[int]) -> None:
    out, splitter = split_all(STREAM, sizes)
    assert out == LINES
    assert splitter.objects == 438
    assert splitter.dropped_bytes == 0


@settings(max_examples=5, deadline=None)
@given(sizes=chunk_sizes)
def test_json_lines_split_the_same_way(sizes: list[int]) -> None:
    out, splitter = split_all(CAPTURE_JSONL.read_bytes(), sizes)
    assert out == LINES
    assert splitter.resyncs == 0


def test_every_two_way_cut_of_the_first_messages() -> None:
    head = b"".join(LINES[:2])
    for cut in range(len(head) + 1):
        splitter = JsonStreamSplitter()
        out = splitter.feed(head[:cut]) + splitter.feed(head[cut:]) + splitter.close()
        assert out == LINES[:2], cut


json_text = st.text(
    alphabet=st.characters(codec="utf-8")
    | st.sampled_from(['"', "\\", "{", "}", "[", "]", "é", "🚀", "\n", "\x00"]),
    max_size=20,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False) | json_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(json_text, inner, max_size=4),
    max_leaves=6,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    objects=st.lists(st.dictionaries(json_text, json_values, max_size=4), min_size=1,
                     max_size=5),
    separators=st.lists(st.sampled_from(["", " ", "\n", "\r\n", "\t  "]), min_size=1),
    sizes=st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=10),
)
def test_utf8_escapes_and_braces_in_strings_survive_any_chunking(
    objects: list[dict[str, object]], separators: list[str], sizes: list[int]
) -> None:
    encoded = [orjson.dumps(obj) for obj in objects]
    data = b"".join(raw + sep.encode() for raw, sep in zip(encoded, itertools.cycle(separators)))
    out, splitter = split_all(data, sizes)
    assert out == encoded
    assert [orjson.loads(raw) for raw in out] == objects
    assert splitter.resyncs == 0


def _messages_from(cut: int, messages: list[bytes]) -> list[bytes]:
    """What a reader that joins the stream at byte `cut` must get."""
    starts = list(itertools.accumulate((len(m) for m in messages), initial=0))
    return [m for m, start in zip(messages, starts, strict=False) if start >= cut]


@settings(max_examples=15, deadline=None)
@given(data=st.data(), sizes=chunk_sizes)
def test_joining_mid_message_resyncs_on_the_next_whole_message(
    data: st.DataObject, sizes: list[int]
) -> None:
    cut = data.draw(st.integers(min_value=0, max_value=len(STREAM) - 1))
    out, _ = split_all(STREAM[cut:], sizes)
    assert out == _messages_from(cut, LINES)


@settings(max_examples=15, deadline=None)
@given(data=st.data(), sizes=chunk_sizes)
def test_joining_mid_message_never_yields_an_inner_object(
    data: st.DataObject, sizes: list[int]
) -> None:
    """With Data as an object, a cut lands among nested objects: none of them is taken."""
    stream = b"".join(DECODED)
    cut = data.draw(st.integers(min_value=0, max_value=len(stream) - 1))
    out, _ = split_all(stream[cut:], sizes)
    expected = _messages_from(cut, DECODED)
    starts = set(itertools.accumulate((len(m) for m in DECODED), initial=0))
    if stream[cut] == ord("{") and cut not in starts:
        # A stream that begins with "{" is taken to begin with a message: that inner
        # object is handed out, and what follows it starts a resync.
        assert out[1:] == expected
        assert out[0] == stream[cut : cut + len(out[0])]
    else:
        assert out == expected


def feed_all(*chunks: bytes, **kwargs: int) -> tuple[list[bytes], JsonStreamSplitter]:
    splitter = JsonStreamSplitter(**kwargs)
    out: list[bytes] = []
    for chunk in chunks:
        out += splitter.feed(chunk)
    return out + splitter.close(), splitter


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        pytest.param([b'hello {"a": 1}{"b": 2}'], [b'{"a": 1}', b'{"b": 2}'], id="leading-text"),
        pytest.param([b'{"a": 1}xyz{"b": 2}'], [b'{"a": 1}', b'{"b": 2}'], id="text-between"),
        pytest.param([b'{"a": 1}\x00\xff\xfe{"b": 2}'], [b'{"a": 1}', b'{"b": 2}'],
                     id="binary-between"),
        pytest.param([b'[1, 2]{"a": 1}{"c": 3} 17 "s" {"b": 2}'],
                     [b'{"a": 1}', b'{"c": 3}', b'{"b": 2}'], id="not-objects"),
        # Garbage on both sides: nothing tells it from an inner object of a cut message.
        pytest.param([b'xx{"a": 1}yy{"b": 2}'], [b'{"b": 2}'], id="object-between-garbage"),
        pytest.param([b'{"a":"bc', b'{"Event":"x"}{"Event":"y"}'],
                     [b'{"Event":"x"}', b'{"Event":"y"}'], id="truncated-then-whole"),
        pytest.param([b'{"a": "\xff\xfe"}{"b": 2}'], [b'{"b": 2}'], id="invalid-utf8"),
        pytest.param([b'{"a": "x\ny"}{"b": 2}'], [b'{"b": 2}'], id="raw-newline-in-string"),
        pytest.param([b'{"a": tru}{"b": 2}'], [b'{"b": 2}'], id="bad-literal"),
        pytest.param([b'{"a": 1]{"b": 2}'], [b'{"b": 2}'], id="mismatched-bracket"),
        pytest.param([b'{"a": 1}}}}{"b": 2}'], [b'{"a": 1}', b'{"b": 2}'], id="extra-braces"),
        pytest.param([b'{"a": {"b": 1}, "c": [{"d": 2}]}'],
                     [b'{"a": {"b": 1}, "c": [{"d": 2}]}'], id="nested"),
        pytest.param([b'"Data":{"x":1},"y":[{"z":2}]}{"a": 1}'], [b'{"a": 1}'],
                     id="inner-objects-of-a-cut-message"),
        pytest.param([b"\xef\xbb\xbf", b'{"a": 1}'], [b'{"a": 1}'], id="bom-then-object"),
        pytest.param([b'junk {"a": 1}'], [b'{"a": 1}'], id="object-after-garbage-at-eof"),
    ],
)
def test_garbage_is_skipped_and_the_stream_resyncs(chunks: list[bytes],
                                                   expected: list[bytes]) -> None:
    out, _ = feed_all(*chunks)
    assert out == expected
    # The same bytes one at a time.
    out, _ = feed_all(*[bytes([b]) for b in b"".join(chunks)])
    assert out == expected


def test_dropped_bytes_and_resyncs_are_counted() -> None:
    out, splitter = feed_all(b'{"a": 1}garbage{"b": 2}{"c": ')
    assert out == [b'{"a": 1}', b'{"b": 2}']
    assert splitter.resyncs == 1
    assert splitter.dropped_bytes == len(b"garbage") + len(b'{"c":')


def test_an_object_after_garbage_waits_for_a_boundary() -> None:
    splitter = JsonStreamSplitter()
    assert splitter.feed(b'xx{"a": 1}') == []  # could still be an inner object
    assert splitter.feed(b' {"b": 2}') == [b'{"a": 1}', b'{"b": 2}']


def test_whitespace_behind_a_held_object_is_not_kept() -> None:
    splitter = JsonStreamSplitter(max_object_bytes=100)
    assert splitter.feed(b'xx{"a": 1}') == []
    for _ in range(50):
        assert splitter.feed(b" " * 1000) == []
        assert splitter.buffered <= 100
    assert splitter.feed(b'{"b": 2}') == [b'{"a": 1}', b'{"b": 2}']


def test_a_complete_object_is_handed_out_at_once() -> None:
    splitter = JsonStreamSplitter()
    assert splitter.feed(b'{"a": 1}') == [b'{"a": 1}']
    assert splitter.feed(b'{"b": "}{"') == []
    assert splitter.feed(b"}") == [b'{"b": "}{"}']


def test_an_oversized_object_is_dropped_and_the_next_one_kept() -> None:
    big = orjson.dumps({"x": "y" * 5000})
    small = orjson.dumps({"Event": "BallHit"})
    chunks = [big[i : i + 700] for i in range(0, len(big), 700)] + [small, small]
    out, splitter = feed_all(*chunks, max_object_bytes=2000)
    assert out == [small, small]
    assert splitter.dropped_bytes >= len(big)
    assert splitter.resyncs == 1


def test_too_deep_an_object_is_dropped() -> None:
    deep = b'{"a":' * 10 + b"1" + b"}" * 10
    out, _ = feed_all(deep + b'{"b": 2}{"c": 3}', max_depth=5)
    assert out == [b'{"b": 2}', b'{"c": 3}']
    out, _ = feed_all(deep, max_depth=10)
    assert out == [deep]


def test_memory_stays_bounded_on_an_endless_string() -> None:
    splitter = JsonStreamSplitter(max_object_bytes=10_000)
    chunk = b"z" * 4096
    assert splitter.feed(b'{"a": "') == []
    for _ in range(100):
        assert splitter.feed(chunk) == []
        assert splitter.buffered <= 10_000 + len(chunk)
    assert splitter.feed(b'"}{"b": 1}{"c": 2}') == [b'{"b": 1}', b'{"c": 2}']


def test_close_drops_a_truncated_tail_and_the_splitter_is_done() -> None:
    splitter = JsonStreamSplitter()
    assert splitter.feed(b'{"a": 1}{"b": "uncomple') == [b'{"a": 1}']
    assert splitter.close() == []
    assert splitter.dropped_bytes == len(b'{"b": "uncomple')
    with pytest.raises(ValueError, match="closed"):
        splitter.feed(b"{}")


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="max_object_bytes"):
        JsonStreamSplitter(max_object_bytes=1)
