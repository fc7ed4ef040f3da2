"""merge_core.methods.chunks: row chunks cover a tensor exactly within CHUNK elements; scratch buffers are reused."""

from __future__ import annotations

import math

import pytest
import torch

from merge_core.methods import chunks


@pytest.mark.parametrize("shape", [(), (0, 4), (7,), (37, 11), (5, 3, 4)])
def test_row_chunks_cover_every_row_once(shape, monkeypatch) -> None:
    monkeypatch.setattr(chunks, "CHUNK", 30)
    slices = chunks.row_chunks(shape)
    if not shape:
        assert slices == [slice(None)]
        return
    rows = [i for s in slices for i in range(*s.indices(shape[0]))]
    assert rows == list(range(shape[0]))
    per_row = max(1, math.prod(shape[1:]))
    assert all((s.stop - s.start) * per_row <= max(30, per_row) for s in slices)


def test_a_row_bigger_than_a_chunk_is_one_chunk(monkeypatch) -> None:
    monkeypatch.setattr(chunks, "CHUNK", 4)
    assert chunks.row_chunks((3, 10)) == [slice(0, 1), slice(1, 2), slice(2, 3)]


def test_scratch_reuses_one_buffer_per_tag_device_dtype() -> None:
    a = chunks.scratch("test-a", (4, 5), torch.device("cpu"))
    b = chunks.scratch("test-a", (2, 3), torch.device("cpu"))
    assert a.shape == (4, 5) and b.shape == (2, 3) and a.data_ptr() == b.data_ptr()
    c = chunks.scratch("test-a", (2, 3), torch.device("cpu"), torch.bool)
    assert c.dtype == torch.bool and c.data_ptr() != a.data_ptr()
    d = chunks.scratch("test-b", (2, 3), torch.device("cpu"))
    assert d.data_ptr() != a.data_ptr()
