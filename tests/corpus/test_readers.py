"""load_embeddings: whatever a .npy path holds, a one-line InputError that says what is wrong with it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embeddinggemma.corpus.readers import load_embeddings
from embeddinggemma.errors import InputError


def _write(path: Path, kind: str) -> None:
    good = np.ones((4, 8), np.float32)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("# not an array\n")
    elif kind == "truncated":
        np.save(path, good)
        path.write_bytes(path.read_bytes()[:150])  # the header and a little of the data
    elif kind == "objects":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:
        np.save(path, good)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("empty", r"x\.npy: not a \.npy array file \(the file is empty\)"),
        ("text", r"not a \.npy array file \(it does not start with the \.npy magic string\)"),
        ("truncated", r"not a \.npy array file \(mmap length is greater than file size\)"),
        ("objects", r"not a \.npy array file \(Array can.t be memory-mapped: Python objects in dtype"),
    ],
)
def test_a_file_that_is_not_an_array_is_named_with_the_reason(tmp_path: Path, kind: str, message: str) -> None:
    _write(tmp_path / "x.npy", kind)
    with pytest.raises(InputError, match=message):
        load_embeddings(tmp_path / "x.npy")


def test_a_good_file_loads(tmp_path: Path) -> None:
    _write(tmp_path / "x.npy", "good")
    np.testing.assert_array_equal(load_embeddings(tmp_path / "x.npy", rows=4), np.ones((4, 8), np.float32))
