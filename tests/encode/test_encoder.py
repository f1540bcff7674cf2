"""The user API: shapes, bucketing, and clear errors on bad input."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest

from embeddinggemma import EmbeddingGemma
from embeddinggemma.encode import batching
from embeddinggemma.encode.batching import length_buckets
from embeddinggemma.eval.texts import SHORT, long_text


def test_shapes_and_dtype(tiny_model: EmbeddingGemma):
    dim = tiny_model.config.embedding_dim
    assert tiny_model.encode("one").shape == (dim,)
    assert tiny_model.encode(["one", "two"]).shape == (2, dim)
    assert tiny_model.encode(("one", "two")).dtype == np.float32
    empty = tiny_model.encode([])
    assert empty.shape == (0, dim) and empty.dtype == np.float32
    assert tiny_model.encode([], truncate_dim=16).shape == (0, 16)


def test_similarity_is_cosine(tiny_model: EmbeddingGemma):
    q = tiny_model.encode_query("Which planet is known as the Red Planet?")
    d = tiny_model.encode_document(SHORT[:3])
    s = tiny_model.similarity(q, d)
    assert s.shape == (1, 3)
    np.testing.assert_allclose(s[0], d @ q, atol=1e-6)
    np.testing.assert_allclose(tiny_model.similarity(d, d).diagonal(), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="widths differ"):
        tiny_model.similarity(q, d[:, :5])


def test_prompts_come_from_the_checkpoint(tiny_model: EmbeddingGemma):
    assert tiny_model.prompts["query"] == "task: search result | query: "
    assert tiny_model.prompts["document"] == "title: none | text: "
    np.testing.assert_array_equal(
        tiny_model.encode("x", prompt="task: sentence similarity | query: "), tiny_model.encode("x", prompt_name="STS")
    )


@pytest.mark.parametrize(
    ("texts", "error", "match"),
    [
        (None, TypeError, "texts must be a str or a list of str, got NoneType"),
        (["ok", 3], TypeError, r"texts\[1\] must be a str, got int"),
        (["ok", None], TypeError, r"texts\[1\] must be a str, got NoneType"),
        (b"bytes", TypeError, "got bytes"),
        (42, TypeError, "got int"),
        (["ok", "a \ud800 b"], ValueError, r"texts\[1\]: not valid Unicode: lone surrogate '\\ud800' at character 2"),
        ("\udfff", ValueError, r"texts: not valid Unicode: lone surrogate '\\udfff' at character 0"),
    ],
)
def test_bad_texts(tiny_model: EmbeddingGemma, texts, error, match):
    with pytest.raises(error, match=match):
        tiny_model.encode(texts)


def test_bad_arguments(tiny_model: EmbeddingGemma):
    with pytest.raises(ValueError, match=r"unknown prompt_name 'nope'; available: \['BitextMining'"):
        tiny_model.encode("x", prompt_name="nope")
    with pytest.raises(ValueError, match="either prompt_name or prompt"):
        tiny_model.encode("x", prompt_name="query", prompt="q: ")
    for dim in (0, -1, tiny_model.config.embedding_dim + 1):
        with pytest.raises(ValueError, match=r"truncate_dim must be in 1\.\."):
            tiny_model.encode("x", truncate_dim=dim)
    with pytest.raises(TypeError, match="truncate_dim must be an int"):
        tiny_model.encode("x", truncate_dim=2.5)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        tiny_model.encode("x", batch_size=0)
    with pytest.raises(ValueError, match="got 2 texts but 1 titles"):
        tiny_model.encode_document(["a", "b"], titles=["t"])


def test_long_texts_are_truncated_with_one_warning(tiny_model: EmbeddingGemma, caplog):
    max_len = tiny_model.config.max_seq_length
    texts = [long_text(600, seed=1), "short", long_text(700, seed=2)]
    with caplog.at_level(logging.WARNING, logger="embeddinggemma"):
        emb = tiny_model.encode(texts)
    warnings = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warnings) == 1 and "2 of 3 texts exceed max_seq_length=256" in warnings[0].getMessage()
    ids = tiny_model.tokenizer.encode(texts)
    assert [len(x) for x in ids] == [max_len, len(ids[1]), max_len]
    assert ids[0][0] == tiny_model.config.bos_id and ids[0][-1] == tiny_model.config.eos_id
    assert np.isfinite(emb).all()


def test_compiled_shapes_are_bounded(tiny_dir):
    model = EmbeddingGemma.from_pretrained(tiny_dir)
    texts = [long_text(n, seed=n) for n in range(1, 200, 7)]
    for bs in (1, 3, 8):
        model.encode(texts, batch_size=bs)
    buckets = length_buckets(model.config.max_seq_length)
    assert buckets == (32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240, 256)
    assert {t for _, t in model._compiled_shapes} <= set(buckets)
    assert {b for b, _ in model._compiled_shapes} <= {1, 2, 4, 8}


def test_length_buckets_bound_padding():
    buckets = length_buckets(2048)
    assert buckets[:7] == (32, 48, 64, 80, 96, 112, 128) and buckets[-3:] == (1792, 1920, 2048)
    assert all(b % 16 == 0 for b in buckets)
    assert all(hi - lo <= max(16, lo // 8) for lo, hi in itertools.pairwise(buckets))  # waste <= 1/8 above 128
    assert length_buckets(2048, per_octave=2) == (32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
    assert length_buckets(300)[-2:] == (288, 300)  # max_seq_length is always the last bucket


def test_spare_rows_are_topped_up_with_shorter_texts(tiny_model: EmbeddingGemma):
    """Three texts in the longest bucket pad to 4 rows: the fourth row takes the next text, not padding."""
    lengths = [205, 200, 195, 100, 98, 97, 20, 20, 20]  # buckets 208 x 3, 112 x 3, 32 x 3
    batches = batching.plan(lengths, 8, tiny_model.config.max_seq_length)
    assert [list(b) for b in batches] == [[0, 1, 2, 3], [4, 5], [6, 7, 8]]
    texts = [long_text(n, seed=n) for n in lengths]
    together = tiny_model.encode(texts, batch_size=8)
    alone = np.stack([tiny_model.encode(t) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_progress_bar_only_for_large_inputs(tiny_model: EmbeddingGemma, capsys):
    tiny_model.encode(["a", "b"])
    assert "encode" not in capsys.readouterr().err
    tiny_model.encode(["a", "b"], show_progress_bar=True)
    assert "encode" in capsys.readouterr().err


def test_all_padding_rows_stay_finite(tiny_model: EmbeddingGemma):
    """A batch padded with empty rows (power-of-two batch) must not put NaN anywhere."""
    tokens, valid = tiny_model.pad_batch([[2, 5, 1], [2, 1], [2, 7, 7, 1]])
    assert tokens.shape[0] == 4 and not valid[3].any()
    out = np.asarray(tiny_model._forward(tiny_model.params, tokens, valid))
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[3], 0.0)


def test_float32_cpu_forward_compiles_without_ynnpack(tiny_model: EmbeddingGemma):
    """compiler_options turns XLA:CPU's YNNPACK dot fusions off for float32 (Eigen's GEMM is faster there)
    and leaves every other platform and dtype on XLA's defaults; the encoder's jit really gets them."""
    import jax
    import jax.numpy as jnp

    from embeddinggemma.encode.compilation import compiler_options

    assert compiler_options("tpu", "float32") is None and compiler_options("gpu", "float32") is None
    assert compiler_options("cpu", "bfloat16") is None
    options = compiler_options("cpu", "float32")
    if options is None:
        pytest.skip("this XLA has no YNNPACK fusion option")
    x = jnp.ones((64, 64), jnp.float32)
    hlo = lambda o: jax.jit(lambda a: a @ a, compiler_options=o).lower(x).compile().as_text()  # noqa: E731
    assert "__ynn_fusion" in hlo(None)  # XLA's default sends the dot to YNNPACK ...
    assert "__ynn_fusion" not in hlo(options)  # ... and the option keeps it on XLA's own GEMM
    tokens, valid = tiny_model.pad_batch([[2, 5, 1], [2, 1]])
    assert tiny_model.dtype == "float32"
    assert "__ynn_fusion" not in tiny_model._forward.lower(tiny_model.params, tokens, valid).compile().as_text()


def test_a_prompt_that_leaves_no_room_for_the_text_is_refused(tiny_model: EmbeddingGemma):
    """Otherwise every text would be truncated away and all vectors would be the prompt's."""
    room = tiny_model.config.max_seq_length
    with pytest.raises(ValueError, match=f"leaves no room for the text in {room} tokens"):
        tiny_model.encode(["a", "b"], prompt="word " * room)
    tiny_model.encode(["a"], prompt="word ")  # room left: fine
