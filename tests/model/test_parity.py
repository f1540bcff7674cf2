"""Parity with sentence-transformers (PyTorch) on a tiny random EmbeddingGemma-shaped checkpoint.

The tiny model has a sliding-window radius of 8 tokens, so every text over ~10 tokens spans several
windows and the mixed-length batches exercise padding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flax import nnx

from embeddinggemma import EmbeddingGemma
from embeddinggemma.eval.texts import SHORT, long_text

TOL = 1e-5
LONG = [long_text(n, seed=n) for n in (40, 90, 150, 230)]  # up to ~max_seq_length tokens
MIXED = [SHORT[0], LONG[3], SHORT[5], LONG[0], SHORT[9], LONG[2], SHORT[15], LONG[1]]


def _max_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a - b).max(axis=-1)


def test_window_is_exercised(tiny_model: EmbeddingGemma, tiny_st):
    assert tiny_model.config.sliding_window_radius == 8
    assert tiny_st[0].auto_model.config.sliding_window == 9  # transformers' exclusive bound
    lengths = [len(x) for x in tiny_model.tokenizer.encode(LONG)]
    assert min(lengths) > 3 * 17, lengths  # each long text spans several windows


@pytest.mark.parametrize("texts", [SHORT, LONG, MIXED], ids=["short", "long", "mixed"])
def test_encode_matches_sentence_transformers(tiny_model, tiny_st, texts):
    ours = tiny_model.encode(texts, batch_size=4)
    ref = tiny_st.encode(texts, batch_size=4, convert_to_numpy=True)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert _max_diff(ours, ref).max() <= TOL


def test_padding_does_not_change_vectors(tiny_model):
    alone = np.stack([tiny_model.encode(t) for t in MIXED[:4]])
    batched = tiny_model.encode(MIXED[:4], batch_size=4)
    assert _max_diff(alone, batched).max() <= TOL


def test_query_and_document_prompts(tiny_model, tiny_st):
    np.testing.assert_allclose(tiny_model.encode_query(MIXED), tiny_st.encode_query(MIXED), atol=TOL, rtol=0)
    np.testing.assert_allclose(tiny_model.encode_document(MIXED), tiny_st.encode_document(MIXED), atol=TOL, rtol=0)
    titles = ["Mars", None, "東京", "x", "", "code", None, "t"]
    ours = tiny_model.encode_document(MIXED, titles=titles)
    prompted = [f"title: {t if t is not None else 'none'} | text: {x}" for t, x in zip(titles, MIXED, strict=True)]
    np.testing.assert_allclose(ours, tiny_st.encode(prompted), atol=TOL, rtol=0)


def test_every_prompt_name(tiny_model, tiny_st):
    for name in tiny_model.prompts:
        ours = tiny_model.encode(SHORT[:3], prompt_name=name)
        np.testing.assert_allclose(ours, tiny_st.encode(SHORT[:3], prompt_name=name), atol=TOL, rtol=0, err_msg=name)


@pytest.mark.parametrize("dim", [48, 32, 16, 1])
def test_truncate_dim_matches_renormalized_reference(tiny_model, tiny_st, dim):
    ours = tiny_model.encode(MIXED, truncate_dim=dim)
    ref = tiny_st.encode(MIXED, truncate_dim=dim)
    ref = ref / np.linalg.norm(ref, axis=-1, keepdims=True)
    assert ours.shape == (len(MIXED), dim)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=-1), 1.0, atol=1e-6)
    assert _max_diff(ours, ref).max() <= TOL


def test_per_layer_hidden_states(tiny_model, tiny_st):
    """Each block's output against transformers', so a failure names the first layer that differs."""
    texts = [LONG[2], SHORT[0]]
    ids = tiny_model.tokenizer.encode(texts)
    tokens, valid = tiny_model.pad_batch(ids)
    module = nnx.merge(tiny_model.graphdef, tiny_model.params)
    final, hidden = module.token_embeddings(tokens, valid, return_hidden=True)

    hf = tiny_st[0].auto_model
    captured: list[np.ndarray] = []
    hooks = [
        layer.register_forward_hook(lambda m, i, o: captured.append(o[0] if isinstance(o, tuple) else o))
        for layer in hf.layers
    ]
    try:
        with torch.no_grad():
            out = hf(
                input_ids=torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(valid, dtype=torch.long)
            )
    finally:
        for h in hooks:
            h.remove()
    assert len(captured) == len(hidden) == tiny_model.config.num_layers
    real = valid[..., None]
    for layer, (ours, ref) in enumerate(zip(hidden, captured, strict=True)):
        ref = ref.numpy()
        scale = np.abs(ref * real).max()
        err = np.abs((np.asarray(ours) - ref) * real).max()
        assert err <= 1e-5 * max(scale, 1.0), f"layer {layer}: max |diff| {err} (scale {scale})"
    ref_final = out.last_hidden_state.numpy()
    assert np.abs((np.asarray(final) - ref_final) * real).max() <= 1e-5 * max(np.abs(ref_final).max(), 1.0)


def test_bfloat16_close_to_float32_reference(tiny_dir, tiny_st):
    model = EmbeddingGemma.from_pretrained(tiny_dir, dtype="bfloat16")
    assert model.dtype == "bfloat16"
    ours = model.encode(MIXED)
    ref = tiny_st.encode(MIXED)
    cos = (ours * ref).sum(-1)
    assert ours.dtype == np.float32
    assert cos.min() >= 0.999, cos
