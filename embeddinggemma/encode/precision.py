"""Quantized embeddings, as sentence-transformers' `quantize_embeddings`, and search over binary ones.

A float32 embedding of 768 dims takes 3 KB; int8/uint8 keep one byte a dim (4x smaller) and binary keeps one
bit (32x smaller, and Hamming distance is a popcount). The formulas are sentence-transformers' (6.x,
`sentence_transformers.util.quantization`), so arrays written here can be searched by code written for it
and vice versa (tests/encode/test_precision.py compares the two bit for bit):

* "int8" / "uint8": each dim's [min, max] (from `ranges`, else `calibration_embeddings`, else the embeddings
  themselves) is cut into 255 equal steps; a value becomes floor((x - min) / step), clipped to 0..255
  (minus 128 for int8). The ranges are part of the encoding: embeddings quantized with different ranges
  cannot be compared, which is why a sharded or streamed encode must fix them up front.
* "binary" / "ubinary": one bit a dim, set where x > 0, packed 8 a byte (`np.packbits`, the last byte
  zero-padded); "ubinary" is those bytes as uint8, "binary" the same bytes minus 128 as int8.

`binary_search` is sentence-transformers' `semantic_search_usearch` / `semantic_search_faiss` with an exact
Hamming index, without either library: the `top_k * rescore_multiplier` corpus rows nearest in Hamming
distance to the query's bits are rescored by the float query's dot product with their unpacked 0/1 bits,
and the best `top_k` of those are returned.
"""

from __future__ import annotations

import logging
from typing import Literal, get_args

import numpy as np

from embeddinggemma.errors import check_int

logger = logging.getLogger(__name__)

Precision = Literal["float32", "int8", "uint8", "binary", "ubinary"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
BINARY_PRECISIONS = ("binary", "ubinary")
STEPS = 255  # int8/uint8 buckets a dim's range is cut into (sentence-transformers' value)
MIN_CALIBRATION_ROWS = 100  # fewer rows give noisy ranges; sentence-transformers warns below this too


def check_precision(precision: str, allowed: tuple[str, ...] = PRECISIONS) -> str:
    """`precision` if it is one of `allowed`; else a ValueError that lists them."""
    if not isinstance(precision, str) or precision not in allowed:
        raise ValueError(f"precision must be one of {', '.join(allowed)}; got {precision!r}")
    return precision


def output_dtype(precision: Precision) -> np.dtype:
    """The dtype `quantize_embeddings` returns for `precision`."""
    return np.dtype({"float32": np.float32, "uint8": np.uint8, "ubinary": np.uint8}.get(precision, np.int8))


def output_width(precision: Precision, dim: int) -> int:
    """Columns of a `dim`-wide embedding quantized to `precision`: binary packs 8 dims a byte."""
    return -(-dim // 8) if precision in BINARY_PRECISIONS else dim


def quantization_ranges(
    embeddings: np.ndarray, precision: str = "int8", calibration_embeddings: np.ndarray | None = None
) -> np.ndarray:
    """(2, dim): each dim's min and max over `calibration_embeddings`, else over `embeddings`.

    One embedding has no spread to cut into buckets, so ranges from a single row are refused (as
    sentence-transformers does); fewer than 100 rows work but give noisy buckets, so they log a warning.
    """
    source = embeddings if calibration_embeddings is None else np.asarray(calibration_embeddings)
    if calibration_embeddings is None:
        if source.ndim == 1 or source.shape[0] == 1:
            raise ValueError(
                f"cannot compute {precision} quantization ranges from a single embedding; pass ranges or "
                "calibration_embeddings from a representative set of embeddings"
            )
        if source.shape[0] < MIN_CALIBRATION_ROWS:
            logger.warning(
                "computing %s quantization ranges from %d embeddings; ranges from more embeddings "
                "(calibration_embeddings) give steadier buckets",
                precision,
                source.shape[0],
            )
    if source.ndim != 2 or source.shape[0] == 0:
        raise ValueError(f"calibration embeddings must be a non-empty (rows, dim) array, got shape {source.shape}")
    return np.vstack((np.min(source, axis=0), np.max(source, axis=0)))


def quantize_embeddings(
    embeddings: np.ndarray,
    precision: Precision,
    ranges: np.ndarray | None = None,
    calibration_embeddings: np.ndarray | None = None,
) -> np.ndarray:
    """Float embeddings ((dim,) or (n, dim)) as `precision`: float32, int8, uint8, binary or ubinary.

    int8/uint8 take their per-dim [min, max] from `ranges` ((2, dim)), else from `calibration_embeddings`,
    else from `embeddings` themselves (then at least two rows are needed). Use the same ranges for every
    array that will be compared with another, e.g. queries and corpus. binary/ubinary ignore both and
    return (n, ceil(dim / 8)) bytes. The results equal sentence-transformers' `quantize_embeddings`.
    """
    precision = check_precision(precision)
    embeddings = np.asarray(embeddings)
    if embeddings.dtype in (np.int8, np.uint8):
        raise ValueError(f"embeddings to quantize must be float, got {embeddings.dtype} (already quantized?)")
    if embeddings.ndim not in (1, 2):
        raise ValueError(f"embeddings must be (dim,) or (n, dim), got shape {embeddings.shape}")
    dim = embeddings.shape[-1]

    if embeddings.ndim == 2 and embeddings.shape[0] == 0:  # nothing to calibrate or pack
        return np.zeros((0, output_width(precision, dim)), output_dtype(precision))

    if precision == "float32":
        return embeddings.astype(np.float32)

    if precision in ("int8", "uint8"):
        if calibration_embeddings is not None and np.shape(calibration_embeddings)[-1:] != (dim,):
            raise ValueError(
                f"calibration embeddings are {np.shape(calibration_embeddings)[-1]}-d but the embeddings {dim}-d"
            )
        if ranges is None:
            ranges = quantization_ranges(embeddings, precision, calibration_embeddings)
        ranges = np.asarray(ranges)
        if ranges.shape != (2, dim):
            raise ValueError(f"ranges must have shape (2, {dim}) (min and max of each dim), got {ranges.shape}")
        # The exact expression of sentence-transformers: float32 ranges, zero-width dims get step 1.
        ranges = ranges.astype(np.float32, copy=False)
        starts = ranges[0, :]
        steps = (ranges[1, :] - starts) / STEPS
        steps = np.where(steps == 0, 1, steps)
        buckets = np.clip(np.floor((embeddings - starts) / steps), 0, STEPS)
        if precision == "uint8":
            return buckets.astype(np.uint8)
        return (buckets - 128).astype(np.int8)

    packed = np.packbits(embeddings > 0, axis=-1)
    if precision == "ubinary":
        return packed
    return (packed - 128).astype(np.int8)  # uint8 arithmetic wraps: the same bytes with the top bit flipped


# ---------------------------------------------------------------------------------------------- search


def _packed_bits(embeddings: np.ndarray, precision: Literal["binary", "ubinary"]) -> np.ndarray:
    """The raw `np.packbits` bytes (uint8) of binary or ubinary embeddings, checking their dtype."""
    expected = output_dtype(precision)
    if embeddings.dtype != expected:
        raise ValueError(f"{precision} embeddings are {expected}, got {embeddings.dtype}")
    # binary = packbits - 128 wraps around in 8 bits, which is flipping each byte's top bit
    return embeddings.view(np.uint8) ^ 0x80 if precision == "binary" else embeddings


def _nearest_by_hamming(query_bits: np.ndarray, corpus_bits: np.ndarray, n: int, chunk_rows: int) -> np.ndarray:
    """(queries, n) corpus rows with the smallest Hamming distances, nearest first, equal distances by row.

    Distances come from one matrix product per corpus chunk: |a xor b| = |a| + |b| - 2 a.b on 0/1 bit
    vectors, exact in float32 (every partial sum is an integer far below 2^24). Only the running n best
    per query are kept, so memory stays at a chunk, whatever the corpus size.
    """
    rows = len(corpus_bits)
    q = np.unpackbits(query_bits, axis=-1).astype(np.float32)
    q_count = q.sum(axis=1, keepdims=True)
    best_key = np.zeros((len(q), 0), np.int64)
    for start in range(0, rows, chunk_rows):
        c = np.unpackbits(corpus_bits[start : start + chunk_rows], axis=-1).astype(np.float32)
        distance = q_count + c.sum(axis=1)[None, :] - 2 * (q @ c.T)
        # one int64 key orders by distance, then row: unique, so partitioning never splits a tie unfairly
        key = distance.astype(np.int64) * rows + np.arange(start, start + len(c))[None, :]
        key = np.concatenate([best_key, key], axis=1)
        if key.shape[1] > n:
            key = np.take_along_axis(key, np.argpartition(key, n - 1, axis=1)[:, :n], axis=1)
        best_key = key
    return np.sort(best_key, axis=1) % rows


def binary_search(
    query_embeddings: np.ndarray,
    corpus_embeddings: np.ndarray,
    precision: Literal["binary", "ubinary"],
    *,
    top_k: int = 10,
    rescore: bool = True,
    rescore_multiplier: int = 4,
    chunk_rows: int = 16384,
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, scores), each (queries, min(top_k, corpus rows)), best first, for float queries against a
    binary or ubinary corpus, the way sentence-transformers' semantic_search_usearch / _faiss search one.

    The queries are binarized and the `top_k * rescore_multiplier` corpus rows nearest in Hamming distance
    are taken (exact search); with `rescore` those are scored by the float query's dot product with their
    unpacked 0/1 bits (sentence-transformers' rescoring: the bits are not mapped to +-1, which would only
    shift each query's scores by a constant) and the best `top_k` kept, equal scores by lower row. Without
    `rescore` the scores are the Hamming distances (lower is nearer), as sentence-transformers reports
    them. Queries may already be packed (same precision) only without rescoring.
    """
    precision = check_precision(precision, BINARY_PRECISIONS)
    top_k, rescore_multiplier = check_int(top_k, "top_k"), check_int(rescore_multiplier, "rescore_multiplier")
    corpus_embeddings = np.asarray(corpus_embeddings)
    if corpus_embeddings.ndim != 2 or len(corpus_embeddings) == 0:
        raise ValueError(f"the corpus must be a non-empty (rows, bytes) array, got shape {corpus_embeddings.shape}")
    corpus_bits = _packed_bits(corpus_embeddings, precision)
    queries = np.atleast_2d(np.asarray(query_embeddings))
    packed_query = queries.dtype in (np.int8, np.uint8)
    if packed_query:
        if rescore:
            raise ValueError("rescoring needs float query embeddings; pass those, or rescore=False")
        query_bits = _packed_bits(queries, precision)
    else:
        query_bits = quantize_embeddings(queries, "ubinary")
    if query_bits.shape[1] != corpus_bits.shape[1]:
        raise ValueError(
            f"the queries pack into {query_bits.shape[1]} bytes but the corpus rows are {corpus_bits.shape[1]}"
        )

    rows = len(corpus_bits)
    n = min(top_k * rescore_multiplier if rescore else top_k, rows)
    candidates = _nearest_by_hamming(query_bits, corpus_bits, n, chunk_rows)
    if not rescore:
        distances = np.unpackbits(query_bits[:, None, :] ^ corpus_bits[candidates], axis=-1).sum(axis=-1)
        return candidates, distances

    # sentence-transformers: unpackbits, trim the byte padding, int, einsum with the float query (float64)
    bits = np.unpackbits(corpus_bits[candidates], axis=-1)[..., : queries.shape[1]].astype(np.float64)
    scores = np.einsum("ij,ikj->ik", queries.astype(np.float64), bits)
    order = np.lexsort((candidates, -scores), axis=-1)[:, :top_k]
    return np.take_along_axis(candidates, order, axis=1), np.take_along_axis(scores, order, axis=1)
