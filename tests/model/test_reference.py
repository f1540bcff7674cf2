"""Parity with sentence-transformers on the real google/embeddinggemma-300m checkpoint.

Runs when EMBEDDINGGEMMA_CHECKPOINT points at the checkpoint directory; skipped otherwise.
"""

from __future__ import annotations

import numpy as np
import pytest

from embeddinggemma import EmbeddingGemma
from embeddinggemma.eval.texts import QUERIES, SHORT, reference_corpus

pytestmark = pytest.mark.reference
MIN_COS = 0.99999


@pytest.fixture(scope="module")
def ours(reference_model):
    return reference_model


@pytest.fixture(scope="module")
def st(reference_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(reference_dir), device="cpu")


@pytest.fixture(scope="module")
def corpus_pair(ours, st):
    docs = reference_corpus()
    # Ours in one mixed-length batch (the point of the test); sentence-transformers in length-sorted batches
    # of 4, which gives the same vectors without running 20 short texts padded to 2048 tokens on torch.
    return ours.encode_document(docs, batch_size=32), st.encode_document(docs, batch_size=4)


def test_corpus_spans_the_lengths(ours):
    lengths = sorted(len(x) for x in ours.tokenizer.sp.encode(reference_corpus()))
    assert len(lengths) >= 20
    assert sum(300 <= n <= 2046 for n in lengths) >= 4 and lengths[-1] > 2048, lengths


def test_mixed_length_batch(corpus_pair):
    a, b = corpus_pair
    cos = (a * b).sum(-1)
    assert cos.min() >= MIN_COS, cos


def test_same_top1_ranking(ours, st, corpus_pair):
    a, b = corpus_pair
    qa, qb = ours.encode_query(QUERIES), st.encode_query(QUERIES)
    assert ((qa * qb).sum(-1) >= MIN_COS).all()
    np.testing.assert_array_equal((qa @ a.T).argmax(-1), (qb @ b.T).argmax(-1))


@pytest.mark.parametrize("dim", [512, 256, 128])
def test_truncate_dim(ours, st, dim):
    a = ours.encode(SHORT, prompt_name="query", truncate_dim=dim)
    b = st.encode(SHORT, prompt_name="query", truncate_dim=dim)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    assert a.shape == (len(SHORT), dim)
    assert (a * b).sum(-1).min() >= MIN_COS


def test_every_prompt_name(ours, st):
    texts = SHORT[:4]
    for name in st.prompts:
        cos = (ours.encode(texts, prompt_name=name) * st.encode(texts, prompt_name=name)).sum(-1)
        assert cos.min() >= MIN_COS, (name, cos)


def test_bfloat16(reference_dir, corpus_pair):
    model = EmbeddingGemma.from_pretrained(reference_dir, dtype="bfloat16")
    cos = (model.encode_document(reference_corpus()) * corpus_pair[1]).sum(-1)
    assert cos.min() >= 0.999, cos
