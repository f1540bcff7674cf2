"""Quantized embeddings against sentence-transformers' `quantize_embeddings` and `encode(precision=...)`,
binary search against brute force, and `encode` / `search --precision` on the command line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from sentence_transformers.util.quantization import quantize_embeddings as st_quantize

from embeddinggemma import EmbeddingGemma
from embeddinggemma.corpus.encode_job import EncodeJob
from embeddinggemma.corpus.readers import bundled_corpus
from embeddinggemma.encode.precision import binary_search, quantize_embeddings
from embeddinggemma.errors import InputError
from embeddinggemma.eval.texts import SHORT
from tests.helpers.cli import parse_hits, run_cli

PRECISIONS = ["float32", "int8", "uint8", "binary", "ubinary"]
ALLOWED = "float32, int8, uint8, binary, ubinary"


def random_embeddings(rows: int, dim: int, seed: int, dtype=np.float32) -> np.ndarray:
    """Unit rows (as the model gives), one constant dim (a zero-width range) and exact zeros (x > 0 is False)."""
    x = np.random.default_rng(seed).normal(size=(rows, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[:, 3] = 0.25
    x[::7, 5] = 0.0
    return x.astype(dtype)


# ---------------------------------------------------------------------------------------------- quantize


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("source", ["itself", "calibration", "ranges"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_quantize_equals_sentence_transformers(precision: str, source: str, dtype) -> None:
    emb = random_embeddings(300, 45, seed=0, dtype=dtype)  # 45: binary pads the last byte
    calibration = random_embeddings(150, 45, seed=1, dtype=dtype) * 0.7  # narrower: values outside are clipped
    kwargs = {
        "itself": {},
        "calibration": {"calibration_embeddings": calibration},
        "ranges": {"ranges": np.vstack([calibration.min(0), calibration.max(0)])},
    }[source]
    ours, theirs = quantize_embeddings(emb, precision, **kwargs), st_quantize(emb, precision, **kwargs)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)
    if precision.endswith("int8") and source != "itself":
        assert theirs.min() == np.iinfo(theirs.dtype).min and theirs.max() == np.iinfo(theirs.dtype).max  # clipped


def test_quantize_known_values() -> None:
    """Hand-worked: dim 0 spans [0, 255] (step 1), dim 1 has zero width (step 1 too); 9 dims pack into 2 bytes."""
    emb = np.array([[0.0, 0.5], [255.0, 0.5], [100.7, 0.5]], np.float32)
    np.testing.assert_array_equal(quantize_embeddings(emb, "uint8"), [[0, 0], [255, 0], [100, 0]])
    np.testing.assert_array_equal(quantize_embeddings(emb, "int8"), [[-128, -128], [127, -128], [-28, -128]])
    # float32 rounding: the max of [-1, 1] lands in bucket 254 (2 / (2 / 255) < 255), in the reference too
    unit = np.array([[-1.0], [1.0]], np.float32)
    np.testing.assert_array_equal(quantize_embeddings(unit, "uint8"), [[0], [254]])
    np.testing.assert_array_equal(st_quantize(unit, "uint8"), [[0], [254]])
    bits = np.array([[1, -1, 1, 1, -1, -1, -1, -1, 1]], np.float32)  # 1011 0000 | 1000 0000
    np.testing.assert_array_equal(quantize_embeddings(bits, "ubinary"), [[0b10110000, 0b10000000]])
    np.testing.assert_array_equal(quantize_embeddings(bits, "binary"), [[0b10110000 - 128, 0]])


def test_quantize_refusals_and_empty() -> None:
    one = random_embeddings(1, 8, seed=2)
    with pytest.raises(ValueError, match="single embedding"):
        quantize_embeddings(one, "int8")
    with pytest.raises(ValueError, match="single embedding"):
        st_quantize(one, "int8")  # the reference refuses it too
    with pytest.raises(ValueError, match=f"precision must be one of {ALLOWED}; got 'int4'"):
        quantize_embeddings(one, "int4")
    with pytest.raises(ValueError, match="must be float"):
        quantize_embeddings(quantize_embeddings(one, "binary"), "binary")
    with pytest.raises(ValueError, match=r"ranges must have shape \(2, 8\)"):
        quantize_embeddings(one, "uint8", ranges=np.zeros((2, 7)))
    for precision, dtype, width in [("int8", np.int8, 12), ("ubinary", np.uint8, 2), ("float32", np.float32, 12)]:
        empty = quantize_embeddings(np.zeros((0, 12), np.float32), precision)
        assert empty.shape == (0, width) and empty.dtype == dtype


def test_few_rows_warn(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="embeddinggemma.encode.precision"):
        quantize_embeddings(random_embeddings(5, 8, seed=10), "int8")
    assert "from 5 embeddings" in caplog.text


# ---------------------------------------------------------------------------------------------- encode


TEXTS = [*SHORT[:10], "", "a", "The same text twice.", "The same text twice."]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_encode_precision_equals_sentence_transformers(tiny_model: EmbeddingGemma, tiny_st, precision: str) -> None:
    ours = tiny_model.encode(TEXTS, precision=precision)
    theirs = tiny_st.encode(TEXTS, precision=precision)  # int8/uint8: ranges from all of these embeddings
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    if precision == "float32":
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
    elif precision.endswith("binary"):
        np.testing.assert_array_equal(ours, theirs)
    else:  # a float difference of 1e-6 may cross a bucket edge
        diff = np.abs(ours.astype(int) - theirs.astype(int))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.99, diff.max()


def test_quantization_comes_after_truncation(tiny_model: EmbeddingGemma, tiny_st) -> None:
    """Matryoshka first, then quantization: binary needs only the signs, int8 the re-normalized values."""
    np.testing.assert_array_equal(
        tiny_model.encode_query(TEXTS, truncate_dim=16, precision="binary"),
        tiny_st.encode_query(TEXTS, truncate_dim=16, precision="binary"),
    )
    ours = tiny_model.encode_document(TEXTS, truncate_dim=16, precision="int8")
    theirs = tiny_st.encode(TEXTS, prompt_name="document", truncate_dim=16, normalize_embeddings=True, precision="int8")
    assert ours.shape == (len(TEXTS), 16) and np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


def test_encode_precision_single_titles_and_errors(tiny_model: EmbeddingGemma) -> None:
    texts, titles = SHORT[:4], ["A", None, "C", "D"]
    floats = tiny_model.encode_document(texts, titles=titles)
    np.testing.assert_array_equal(
        tiny_model.encode_document(texts, titles=titles, precision="ubinary"), np.packbits(floats > 0, axis=-1)
    )
    one = tiny_model.encode(texts[0], precision="binary")
    assert one.shape == (tiny_model.config.embedding_dim // 8,) and one.dtype == np.int8
    np.testing.assert_array_equal(one, np.packbits(tiny_model.encode(texts[0]) > 0).view(np.int8) ^ np.int8(-128))
    with pytest.raises(ValueError, match="single embedding"):
        tiny_model.encode(texts[0], precision="uint8")
    for call in (tiny_model.encode, tiny_model.encode_query, tiny_model.encode_document):
        with pytest.raises(ValueError, match=f"precision must be one of {ALLOWED}; got 'float16'"):
            call(texts, precision="float16")
    with pytest.raises(ValueError, match="precision must be one of"):
        tiny_model.encode_document(texts, titles=titles, precision="bits")
    assert tiny_model.encode([], precision="ubinary").shape == (0, tiny_model.config.embedding_dim // 8)


# ---------------------------------------------------------------------------------------------- search


def brute_force(queries: np.ndarray, corpus: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference's rescoring over every row: float query . 0/1 sign bits, best first (stable on ties)."""
    scores = queries.astype(np.float64) @ (corpus > 0).T.astype(np.float64)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


@pytest.mark.parametrize("precision", ["binary", "ubinary"])
def test_binary_search_against_brute_force(precision: str) -> None:
    corpus, queries = random_embeddings(500, 64, seed=3), random_embeddings(6, 64, seed=4)
    packed = st_quantize(corpus, precision)
    # every row a candidate: the rescored ranking is the brute-force one
    rows, scores = binary_search(queries, packed, precision, top_k=5, rescore_multiplier=100)
    expected_rows, expected_scores = brute_force(queries, corpus, 5)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-12)
    # no rescoring: Hamming distances of the sign bits, nearest first, ties by row; chunking changes nothing
    hamming = ((queries[:, None, :] > 0) != (corpus[None, :, :] > 0)).sum(-1)
    nearest = np.argsort(hamming, axis=1, kind="stable")[:, :20]
    for chunk_rows in (16384, 7):
        rows, distances = binary_search(queries, packed, precision, top_k=20, rescore=False, chunk_rows=chunk_rows)
        np.testing.assert_array_equal(rows, nearest)
        np.testing.assert_array_equal(distances, np.take_along_axis(hamming, nearest, axis=1))
    # rescoring reorders exactly the k x multiplier Hamming candidates
    rows, scores = binary_search(queries, packed, precision, top_k=3, rescore_multiplier=4)
    for q, candidates in enumerate(nearest[:, :12]):
        by_score = candidates[np.argsort(-(queries[q].astype(np.float64) @ (corpus[candidates] > 0).T), kind="stable")]
        np.testing.assert_array_equal(rows[q], by_score[:3])


def test_binary_search_finds_the_float_top1() -> None:
    """30 queries, each a noisy copy of a document (cosine about 0.45): by Hamming distance alone a few top-1s
    are wrong; rescoring the 4 nearest with the float query finds every float32 top-1."""
    rng = np.random.default_rng(11)
    docs = rng.normal(size=(300, 256))
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    source = np.arange(0, 300, 10)
    queries = docs[source] + rng.normal(size=(len(source), 256)) / 8
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    docs, queries = docs.astype(np.float32), queries.astype(np.float32)
    np.testing.assert_array_equal(np.argmax(queries @ docs.T, axis=1), source)  # the float32 top-1
    for precision in ("binary", "ubinary"):
        packed = quantize_embeddings(docs, precision)
        by_hamming, _ = binary_search(queries, packed, precision, top_k=1, rescore=False)
        assert 0 < (by_hamming[:, 0] != source).sum() <= 5
        rescored, _ = binary_search(queries, packed, precision, top_k=1, rescore_multiplier=4)
        np.testing.assert_array_equal(rescored[:, 0], source)


def test_binary_search_refusals() -> None:
    corpus, queries = random_embeddings(20, 16, seed=5), random_embeddings(2, 16, seed=6)
    with pytest.raises(ValueError, match="binary embeddings are int8, got uint8"):
        binary_search(queries, st_quantize(corpus, "ubinary"), "binary")
    with pytest.raises(ValueError, match="rescoring needs float query embeddings"):
        binary_search(st_quantize(queries, "binary"), st_quantize(corpus, "binary"), "binary")
    with pytest.raises(ValueError, match="queries pack into 1 bytes but the corpus rows are 2"):
        binary_search(queries[:, :8], st_quantize(corpus, "binary"), "binary")
    with pytest.raises(ValueError, match="precision must be one of binary, ubinary; got 'int8'"):
        binary_search(queries, st_quantize(corpus, "int8"), "int8")
    rows, _ = binary_search(st_quantize(queries, "binary"), st_quantize(corpus, "binary"), "binary", rescore=False)
    assert rows.shape == (2, 10)


# ---------------------------------------------------------------------------------------------- command line


def test_cli_encode_and_search_quantized(tiny_dir: Path, tiny_model: EmbeddingGemma, tmp_path: Path) -> None:
    src = bundled_corpus()
    base = ["encode", "-i", src, "--prompt-name", "document", "--shard-size", 8, "--batch-size", 8, "--no-progress"]
    run_cli(tiny_dir, *base, "-o", tmp_path / "f.npy")
    floats = np.load(tmp_path / "f.npy")
    calibration = tmp_path / "calibration.npy"
    np.save(calibration, floats[:10])  # fewer rows than the corpus: some values fall outside and are clipped
    dim = tiny_model.config.embedding_dim
    for precision, extra, width in [("binary", [], dim // 8), ("int8", ["--calibration", calibration], dim)]:
        out = tmp_path / f"{precision}.npy"
        proc = run_cli(tiny_dir, *base, "-o", out, "--precision", precision, *extra)
        result = np.load(out)
        expected = st_quantize(floats, precision, calibration_embeddings=floats[:10] if extra else None)
        assert result.dtype == np.int8 and result.shape == (len(floats), width) == expected.shape
        np.testing.assert_array_equal(result, expected)  # the same floats, quantized with one set of ranges
        assert f"wrote {out}: {len(floats)} x {width} int8" in proc.stdout

    query = "Which planet is known as the Red Planet?"
    found = parse_hits(
        run_cli(
            tiny_dir, "search", "--corpus", tmp_path / "binary.npy", "--texts", src, "--precision", "binary",
            "-q", query, "-k", 3, "--rescore-multiplier", 10,  # 30 candidates: the whole corpus is rescored
        ).stdout
    )  # fmt: skip
    ids = [json.loads(line)["id"] for line in src.read_text(encoding="utf-8").splitlines()]
    rows, scores = brute_force(tiny_model.encode_query([query]), floats, 3)
    assert [h[0] for h in found] == [ids[i] for i in rows[0]]
    np.testing.assert_allclose([h[1] for h in found], scores[0], atol=2e-3)


class FailsAfter:
    """The model, except that `encode_ids` raises after `n` calls (an interrupted run)."""

    def __init__(self, model: EmbeddingGemma, n: int):
        self._model, self._left = model, n

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def encode_ids(self, *args, **kwargs):
        if self._left == 0:
            raise KeyboardInterrupt
        self._left -= 1
        return self._model.encode_ids(*args, **kwargs)


def test_resume_with_another_precision_is_refused(tiny_dir: Path, tiny_model: EmbeddingGemma, tmp_path: Path) -> None:
    src, out = bundled_corpus(), tmp_path / "u.npy"
    run = {"model_id": str(tiny_dir), "prompt_name": "document", "batch_size": 8, "progress": False}
    with pytest.raises(KeyboardInterrupt):
        EncodeJob.prepare(src, out, shard_size=8, precision="ubinary").run(FailsAfter(tiny_model, 1), **run)
    work = tmp_path / "u.npy.partial"
    assert [p.name for p in work.glob("shard-*.npy")] == ["shard-000000.npy"]
    assert json.loads((work / "manifest.json").read_text())["precision"] == "ubinary"

    base = ["encode", "-i", src, "-o", out, "--prompt-name", "document", "--shard-size", 8, "--batch-size", 8]
    proc = run_cli(tiny_dir, *base, "--precision", "binary", ok=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "unfinished run with different precision (was 'ubinary', now 'binary')" in proc.stderr
    proc = run_cli(tiny_dir, *base, ok=False)  # float32, the default
    assert "different precision (was 'ubinary', now 'float32')" in proc.stderr
    assert [p.name for p in work.glob("shard-*.npy")] == ["shard-000000.npy"], "a refused run changes nothing"

    resumed = run_cli(tiny_dir, *base, "--precision", "ubinary")
    assert "resuming: 1 of 4 shards already done" in resumed.stderr
    texts = [json.loads(line)["text"] for line in src.read_text(encoding="utf-8").splitlines()]
    expected = st_quantize(tiny_model.encode_document(texts), "ubinary")
    np.testing.assert_array_equal(np.load(out), expected)

    # int8: the calibration is part of the encoding too (in-process: refused before anything is embedded)
    calibration = [tmp_path / "c1.npy", tmp_path / "c2.npy"]
    np.save(calibration[0], random_embeddings(50, 48, seed=7))
    np.save(calibration[1], random_embeddings(50, 48, seed=8))
    out = tmp_path / "i.npy"
    with pytest.raises(KeyboardInterrupt):
        job = EncodeJob.prepare(src, out, shard_size=8, precision="int8", calibration=calibration[0])
        job.run(FailsAfter(tiny_model, 1), **run)
    with pytest.raises(InputError, match="different ranges_sha256"):
        EncodeJob.prepare(src, out, shard_size=8, precision="int8", calibration=calibration[1]).run(tiny_model, **run)


def test_cli_precision_mistakes_are_one_line(tiny_dir: Path, tmp_path: Path) -> None:
    src = bundled_corpus()
    proc = run_cli(tiny_dir, "encode", "-i", src, "-o", tmp_path / "x.npy", "--precision", "int4", ok=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        "embeddinggemma encode: error: argument --precision: invalid choice: 'int4' "
        "(choose from 'float32', 'int8', 'uint8', 'binary', 'ubinary')"
    )
    proc = run_cli(tiny_dir, "search", "-q", "x", "--precision", "int8", ok=False)
    assert proc.returncode == 2 and "choose from 'float32', 'binary', 'ubinary'" in proc.stderr.splitlines()[-1]
    floats = tmp_path / "f.npy"
    np.save(floats, random_embeddings(4, 48, seed=9))
    encode = ["encode", "-i", src, "-o", tmp_path / "x.npy"]
    mistakes = [
        ([*encode, "--precision", "uint8"], "precision uint8 needs calibration"),
        ([*encode, "--calibration", floats], "precision float32 uses none"),
        ([*encode, "--precision", "binary", "--truncate-dim", 20], "multiple of 8"),
        (
            [*encode, "--precision", "int8", "--calibration", floats, "--truncate-dim", 16],
            "the calibration embeddings are 48-d but this encode writes 16-d ones",
        ),
        (["search", "-c", floats, "-q", "x", "--precision", "ubinary"], "expected a non-empty (rows, dim) uint8"),
    ]
    np.save(tmp_path / "b.npy", quantize_embeddings(np.load(floats), "binary"))
    mistakes.append((["search", "-c", tmp_path / "b.npy", "-q", "x"], "need their precision (--precision binary"))
    for args, message in mistakes:
        proc = run_cli(tiny_dir, *args, ok=False)
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith(f"embeddinggemma {args[0]}: error: ") and message in proc.stderr, proc.stderr
    assert not (tmp_path / "x.npy").exists() and not (tmp_path / "x.npy.partial").exists()
