"""Loss parity with sentence-transformers: MatryoshkaLoss(MultipleNegativesRankingLoss) and its options.

The batch has queries, positives and 2 hard negatives each, so candidate order (all positives, then
each negative column) matters; the parameter gradients are compared tensor by tensor with PyTorch's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss, MultipleNegativesRankingLoss

from embeddinggemma.checkpoint import hf
from embeddinggemma.model.config import ModelConfig
from embeddinggemma.train import losses, step
from embeddinggemma.train.data import Collator
from tests.helpers.train import EXAMPLES, TINY_DIMS, collate, tiny_config, tiny_params

LOSS_TOL = 1e-5
GRAD_RTOL = 1e-4


def _columns(collator: Collator) -> list[list[str]]:
    docs = [collator.documents(ex) for ex in EXAMPLES]
    queries = [collator.prompts.format_query(ex.query) for ex in EXAMPLES]
    return [queries, *[[row[j] for row in docs] for j in range(3)]]


@pytest.fixture(scope="module")
def reference(tiny_dir):
    """ST loss and parameter gradients {hf key: grad} on the same batch."""
    torch.manual_seed(0)
    model = SentenceTransformer(str(tiny_dir), device="cpu")
    loss_fn = MatryoshkaLoss(model, MultipleNegativesRankingLoss(model), list(TINY_DIMS))
    from tests.helpers.train import Prompts  # the same prompts our collator uses

    cfg = ModelConfig.from_checkpoint_dir(tiny_dir)
    collator = Collator(
        tiny_dir / "tokenizer.model",
        cfg,
        Prompts.for_model(cfg, None, None, tiny_config().title_prompt),
        num_negatives=2,
    )
    features = [model.tokenize(col) for col in _columns(collator)]
    loss = loss_fn(features, None)
    loss.backward()
    loss = loss.detach()
    grads = {n: p.grad.numpy() for n, p in model[0].auto_model.named_parameters()}
    grads["dense.0.linear.weight"] = model[2].linear.weight.grad.numpy()
    grads["dense.1.linear.weight"] = model[3].linear.weight.grad.numpy()
    return float(loss), grads


def test_matryoshka_infonce_loss_and_grads_match_sentence_transformers(tiny_dir, reference):
    cfg = tiny_config()
    graphdef, frozen, params = tiny_params(tiny_dir, cfg)
    batch = collate(tiny_dir, cfg)
    assert batch["d_ids"].shape[:2] == (len(EXAMPLES), 3)
    run = jax.jit(lambda p, b: step.loss_and_grads(cfg, step.embed_fn(graphdef, frozen), p, b))
    loss, _, grads = run(params, batch)
    ref_loss, ref_grads = reference
    # End to end from tokens the two fp32 forwards differ by ~5e-7 per embedding coordinate, which the
    # scale-20 logits and the sum over four Matryoshka terms (loss ~41 on this random model) turn into
    # ~1.5e-5 absolute; the loss *function* is compared exactly in the next test.
    assert abs(float(loss) - ref_loss) <= LOSS_TOL * abs(ref_loss) / 10, (float(loss), ref_loss)

    flat = hf.tensors(grads, ModelConfig.from_checkpoint_dir(tiny_dir))
    assert set(flat) == set(ref_grads)
    worst = 0.0
    for name, ref in ref_grads.items():
        rel = np.linalg.norm(flat[name] - ref) / np.linalg.norm(ref)
        worst = max(worst, rel)
        assert rel <= GRAD_RTOL, (name, rel)
    print(f"loss |ours - ST| = {abs(float(loss) - ref_loss):.2e}; worst per-tensor gradient rel. error {worst:.2e}")


def test_matryoshka_loss_function_matches_sentence_transformers(tiny_dir, tiny_st, monkeypatch):
    """ST's MatryoshkaLoss(MNRL) and ours on the *same* embeddings (our model's), within 1e-5."""
    cfg = tiny_config()
    graphdef, frozen, params = tiny_params(tiny_dir, cfg)
    batch = collate(tiny_dir, cfg)
    embed = step.embed_fn(graphdef, frozen)
    q = embed(params, batch["q_ids"], batch["q_valid"])
    b, k1, t = batch["d_ids"].shape
    d = embed(params, batch["d_ids"].reshape(b * k1, t), batch["d_valid"].reshape(b * k1, t)).reshape(b, k1, -1)
    ours = float(step.batch_loss(cfg, q, d, batch)[0])

    # ST's own model, whose forward returns our embeddings column by column: the loss sees a real
    # SentenceTransformer (its dimension, its hooks) and exactly our vectors.
    columns = [np.asarray(q), *np.swapaxes(np.asarray(d), 0, 1)]
    monkeypatch.setattr(
        tiny_st,
        "forward",
        lambda features: {"sentence_embedding": torch.from_numpy(columns[features["column"]].copy())},
    )
    assert tiny_st.get_embedding_dimension() == TINY_DIMS[0]
    loss = MatryoshkaLoss(tiny_st, MultipleNegativesRankingLoss(tiny_st), list(TINY_DIMS))
    ref = float(loss([{"column": c} for c in range(k1 + 1)], None))
    assert abs(ours - ref) <= LOSS_TOL, (ours, ref)


def _random_embeddings(b: int = 6, k: int = 2, d: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(b, d)).astype(np.float32)
    docs = rng.normal(size=(1 + k, b, d)).astype(np.float32)
    docs[0] += 1.5 * q  # positives correlate with their query
    return q, docs


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ({"hardness_alpha": 5.0}, {"hardness_mode": "hard_negatives", "hardness_strength": 5.0}),
        ({"symmetric": True}, {"directions": ("query_to_doc", "doc_to_query"), "partition_mode": "per_direction"}),
        ({"scale": 50.0}, {"scale": 50.0}),
    ],
    ids=["hard-negative-weighting", "symmetric", "scale"],
)
def test_loss_options_match_sentence_transformers(tiny_st, ours, theirs):
    q, docs = _random_embeddings()
    ref = MultipleNegativesRankingLoss(tiny_st, **theirs).compute_loss_from_embeddings(
        [torch.from_numpy(q), *map(torch.from_numpy, docs)], None
    )
    assert abs(float(losses.info_nce(jnp.asarray(q), jnp.asarray(docs), **ours)) - float(ref)) <= LOSS_TOL


def test_false_negative_mask_drops_duplicates_and_missing():
    q, docs = _random_embeddings(b=4, k=1)
    docs[1, 2] = docs[0, 0]  # example 2's negative is example 0's positive: a false negative for query 0
    keys = np.arange(8, dtype=np.int32).reshape(2, 4)
    keys[1, 2] = keys[0, 0]
    keys[1, 3] = losses.MISSING
    masked = float(losses.info_nce(q, docs, doc_keys=keys))
    # The same loss by hand: query 0 without candidate (1, 2), nobody sees candidate (1, 3).
    sim = 20 * np.einsum(
        "nd,md->nm",
        q / np.linalg.norm(q, axis=1, keepdims=True),
        (c := docs.reshape(8, -1)) / np.linalg.norm(c, axis=1, keepdims=True),
    )
    sim[0, 6] = -np.inf
    sim[:, 7] = -np.inf
    expected = np.mean([np.log(np.exp(row[np.isfinite(row)]).sum()) - row[i] for i, row in enumerate(sim)])
    assert abs(masked - expected) <= LOSS_TOL
    assert masked < float(losses.info_nce(q, docs)) - 1e-3


def test_spread_out_is_zero_for_orthogonal_and_positive_for_collapsed():
    assert float(losses.spread_out(jnp.eye(8))) == pytest.approx(0.0, abs=1e-7)
    assert float(losses.spread_out(jnp.ones((8, 8)))) > 0.9
