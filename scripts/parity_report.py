"""Print our embeddings' agreement with sentence-transformers (PyTorch, float32) on a checkpoint.

    EMBEDDINGGEMMA_CHECKPOINT=/path/to/embeddinggemma-300m python scripts/parity_report.py

Uses the same >= 20-text corpus as tests/test_reference.py (multilingual, code, 300-2000+ tokens, one
over the 2048-token limit) in one mixed-length batch, for float32 and bfloat16.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from embeddinggemma import EmbeddingGemma
from tests.texts import reference_corpus


def main() -> None:
    from sentence_transformers import SentenceTransformer

    root = os.environ["EMBEDDINGGEMMA_CHECKPOINT"]
    docs = reference_corpus()
    ref = SentenceTransformer(root, device="cpu").encode_document(docs, batch_size=32)
    print(f"{len(docs)} texts, reference: sentence-transformers float32 on CPU")
    print(f"{'dtype':<10} {'max |diff|':>12} {'min cosine':>12}")
    for dtype in ("float32", "bfloat16"):
        ours = EmbeddingGemma.from_pretrained(root, dtype=dtype).encode_document(docs, batch_size=32)
        print(f"{dtype:<10} {np.abs(ours - ref).max():>12.3e} {(ours * ref).sum(-1).min():>12.8f}")


if __name__ == "__main__":
    main()
