"""Host-side batching shared by encoding and training: length buckets, padded row counts, padding.

A compiled program has one shape per (rows, length), so sequences are padded to a few lengths
(`length_buckets`: `per_octave` evenly spaced lengths per doubling, multiples of 16, up to the maximum)
and batches to a power-of-two row count that is a multiple of the mesh's batch shards. Encoding uses 8
buckets per doubling (padding wastes at most 1/8 of a batch above 128 tokens); training uses 2, because
each length there is one more train-step compile.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

MIN_BUCKET, BUCKET_ALIGN = 32, 16
ENCODE_BUCKETS_PER_OCTAVE = 8
TRAIN_BUCKETS_PER_OCTAVE = 2


@functools.cache  # asked once per text when batching
def length_buckets(max_length: int, per_octave: int = ENCODE_BUCKETS_PER_OCTAVE) -> tuple[int, ...]:
    """Padded lengths: `per_octave` evenly spaced lengths per doubling, multiples of 16, from 32 up to
    max_length (always the last): 8 per octave gives 32, 48, ..., 128, 144, ..., 256, 288, ...; 2 gives
    32, 48, 64, 96, 128, 192, ..."""
    out, octave = [], MIN_BUCKET
    while octave < max_length:
        step = max(octave // per_octave, BUCKET_ALIGN)
        out += [n for n in range(octave, 2 * octave, step) if n < max_length]
        octave *= 2
    return (*out, max_length)


def bucket_length(length: int, max_length: int, per_octave: int = ENCODE_BUCKETS_PER_OCTAVE) -> int:
    """The padded length of a sequence of `length` tokens: the smallest bucket that holds it."""
    return next(b for b in length_buckets(max_length, per_octave) if b >= length)


def padded_rows(n: int, multiple: int = 1) -> int:
    """The row count a batch of n sequences is padded to: a power of two, rounded up to a multiple of
    `multiple` (the number of batch shards of the mesh)."""
    power = 1 << max(n - 1, 0).bit_length()
    return -(-power // multiple) * multiple


def pad(
    ids: Sequence[Sequence[int]], *, length: int, rows: int | None = None, pad_id: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, valid), both (rows, length): each sequence left-aligned, padding `pad_id` / False.
    Rows beyond len(ids) are all padding."""
    rows = len(ids) if rows is None else rows
    tokens = np.full((rows, length), pad_id, np.int32)
    valid = np.zeros((rows, length), bool)
    for r, x in enumerate(ids):
        tokens[r, : len(x)] = x
        valid[r, : len(x)] = True
    return tokens, valid


def plan(lengths: Sequence[int], batch_size: int, max_length: int, multiple: int = 1) -> list[np.ndarray]:
    """Indices of each encode batch: longest first, one length bucket per batch, at most batch_size,
    then topped up with the next (shorter) sequences to the padded row count, rows that would otherwise
    be padding."""
    order = np.argsort([-n for n in lengths], kind="stable")
    bucket = [bucket_length(lengths[i], max_length) for i in order]
    batches, i = [], 0
    while i < len(order):
        j = i + 1
        while j < len(order) and j - i < batch_size and bucket[j] == bucket[i]:
            j += 1
        j = min(i + padded_rows(j - i, multiple), len(order))
        batches.append(order[i:j])
        i = j
    return batches
