"""Content-defined chunking: the fast path equals the byte-at-a-time definition."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.bundle.chunking import (
    ChunkParams,
    chunk_file,
    chunk_stream,
    cut_points,
    cut_points_reference,
)

SMALL = ChunkParams(min_size=64, avg_size=256, max_size=1024)


@settings(max_examples=40, deadline=None)
@given(data=st.binary(min_size=0, max_size=6000), block=st.integers(1, 2000))
def test_streamed_cuts_equal_the_reference_definition(data: bytes, block: int) -> None:
    expected = cut_points_reference(data, SMALL)
    assert cut_points(data, SMALL) == expected
    chunks = list(chunk_stream(io.BytesIO(data), SMALL, block=block))
    assert [c.offset + c.length for c in chunks] == expected
    assert b"".join(data[c.offset : c.offset + c.length] for c in chunks) == data


def test_chunks_respect_the_size_bounds_and_center_on_the_average() -> None:
    data = os.urandom(400_000)
    cuts = cut_points(data, SMALL)
    sizes = [b - a for a, b in zip([0, *cuts], cuts, strict=False)]
    assert all(SMALL.min_size <= s <= SMALL.max_size for s in sizes[:-1])
    assert 0.5 * SMALL.avg_size < sum(sizes) / len(sizes) < 2.5 * SMALL.avg_size


def test_an_insertion_changes_only_the_chunks_around_it() -> None:
    data = os.urandom(300_000)
    edited = data[:100_000] + b"inserted bytes" + data[100_000:]
    before = {c.sha256 for c in chunk_stream(io.BytesIO(data), SMALL)}
    after = list(chunk_stream(io.BytesIO(edited), SMALL))
    new = [c for c in after if c.sha256 not in before]
    assert sum(c.length for c in new) <= 3 * SMALL.max_size
    assert len(new) < len(after) // 20


def test_chunk_file_lists_sha256_and_length_covering_the_file(tmp_path: Path) -> None:
    import hashlib

    data = os.urandom(50_000)
    (tmp_path / "f").write_bytes(data)
    listed = chunk_file(tmp_path / "f", SMALL)
    assert sum(n for _, n in listed) == len(data)
    offset = 0
    for sha, n in listed:
        assert hashlib.sha256(data[offset : offset + n]).hexdigest() == sha
        offset += n


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"avg_size": 300}, "power of two"),
        ({"min_size": 16, "avg_size": 64, "max_size": 128}, "need 32 <= min_size"),
        ({"min_size": 512, "avg_size": 256, "max_size": 1024}, "min_size <= avg_size"),
    ],
)
def test_bad_parameters_are_refused(kwargs: dict[str, int], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        ChunkParams(**kwargs)
