"""The layers under `lax.scan`: the layer pattern, scanned == unrolled, and one block of each type compiled."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from embeddinggemma import EmbeddingGemma
from embeddinggemma.eval.texts import SHORT, long_text
from embeddinggemma.model.config import FULL, SLIDING, ModelConfig
from embeddinggemma.model.modeling import EmbeddingGemmaModule

TEXTS = [*SHORT[:6], long_text(150, 1), long_text(400, 2)]  # one longer than the sliding window


def test_layer_pattern_and_stack_positions():
    cfg = ModelConfig()
    assert cfg.layer_pattern == (((SLIDING, 5), (FULL, 1)), 4)
    assert cfg.stack_types == (SLIDING, FULL)
    assert [cfg.stack_position(i) for i in (0, 4, 5, 6, 23)] == [
        (SLIDING, 0),
        (SLIDING, 4),
        (FULL, 0),
        (SLIDING, 5),
        (FULL, 3),
    ]
    assert all(cfg.stack_layer(*cfg.stack_position(i)) == i for i in range(cfg.num_layers))
    odd = ModelConfig(num_layers=5, layer_types=(SLIDING, SLIDING, FULL, SLIDING, FULL))  # no repeat
    assert odd.layer_pattern == (((SLIDING, 2), (FULL, 1), (SLIDING, 1), (FULL, 1)), 1)


@pytest.mark.parametrize("attention", ["blocked", "dense"])
def test_scanned_and_unrolled_layers_give_the_same_vectors(tiny_dir, attention):
    scanned = EmbeddingGemma.from_pretrained(tiny_dir, attention_impl=attention)
    unrolled = EmbeddingGemma.from_pretrained(tiny_dir, attention_impl=attention, scan_layers=False)
    np.testing.assert_allclose(scanned.encode(TEXTS), unrolled.encode(TEXTS), atol=1e-6)


def test_a_pattern_without_repeats_scans_run_by_run():
    """Random weights, layer types that do not repeat (runs of 2, 1, 1, 1): scanned equals unrolled."""
    cfg = ModelConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=5, num_heads=2, num_kv_heads=1, head_dim=16,
        query_pre_attn_scalar=16, sliding_window_radius=4, layer_types=(SLIDING, SLIDING, FULL, SLIDING, FULL),
        dense_features=(48, 32), max_position_embeddings=64, max_seq_length=64,
    )  # fmt: skip
    ids = jax.random.randint(jax.random.key(1), (3, 24), 0, 64)
    valid = jnp.arange(24)[None, :] < jnp.array([[24], [13], [5]])
    out = {}
    for scan in (True, False):  # the same random weights (same seed), both layouts
        module = EmbeddingGemmaModule(cfg, rngs=nnx.Rngs(0), attention_impl="dense", scan_layers=scan)
        graphdef, state = nnx.split(module)
        out[scan] = jax.jit(lambda s, graphdef=graphdef: nnx.merge(graphdef, s)(ids, valid))(state)
    np.testing.assert_allclose(out[True], out[False], atol=1e-6)


def test_the_scanned_program_holds_one_block_of_each_type(tiny_dir):
    """The tiny model has 4 layers of 2 types: its scanned encode step holds half the unrolled one's block matmuls."""
    dots = {}
    for scan in (True, False):
        model = EmbeddingGemma.from_pretrained(tiny_dir, attention_impl="dense", scan_layers=scan)
        tokens, valid = model.pad_batch(model.tokenizer.encode(TEXTS[:2]))
        dots[scan] = len(
            re.findall(r"stablehlo\.dot_general", model._forward.lower(model.params, tokens, valid).as_text())
        )
    head = 2  # the Dense layers
    assert dots[False] - head == 2 * (dots[True] - head) > 0
