"""`embeddinggemma parity`: our embeddings against sentence-transformers (PyTorch, float32, CPU) on a checkpoint.

The corpus is fixed and exercises the traps: several languages and scripts, code, whitespace, emoji, an
empty string, documents of roughly 300, 700, 1200, 1600 and 2000 tokens (longer than a sliding window)
and one over the 2048-token limit (truncated), all in one mixed-length batch. The real-checkpoint tests
(tests/test_reference.py) use the same corpus. Needs torch and sentence-transformers.
"""

from __future__ import annotations

import argparse
import random

import numpy as np

SHORT = [
    "Which planet is known as the Red Planet?",
    "Mars, known for its reddish appearance, is often referred to as the Red Planet.",
    "Venus is often called Earth's twin because of its similar size and proximity.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Le chat est assis sur le tapis près de la fenêtre.",
    "東京は日本の首都です。人口は約1400万人です。",
    "北京是中华人民共和国的首都。",
    "Москва — столица России.",
    "القاهرة هي عاصمة مصر.",
    "def add(a: int, b: int) -> int:\n    return a + b  # sum",
    "SELECT name, COUNT(*) FROM users GROUP BY name HAVING COUNT(*) > 1;",
    "I love pizza 🍕🍕 and sushi 🍣! 👍🏽",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\n\nand   runs of   spaces",
    "Numbers: 3.14159, 2,718, 1e-6, 42%",
    "",
]

_WORDS = (
    "the model encodes text into dense vectors for search retrieval and clustering while a sliding window "
    "attention layer sees nearby tokens and global layers see everything der die das und la le les de "
    "東京 北京 Москва код функция return value planet orbit 42 3.14 ✓ — (x + y) * z"
).split()


def long_text(n_words: int, seed: int) -> str:
    """A deterministic document of n_words words drawn from a small multilingual vocabulary."""
    rng = random.Random(seed)
    words = [rng.choice(_WORDS) for _ in range(n_words)]
    for i in range(12, n_words, 13):
        words[i] += "."
    return " ".join(words)


def reference_corpus() -> list[str]:
    """>= 20 texts for the real-checkpoint parity check: the short set plus documents of roughly
    300, 700, 1200, 1600 and 2000 tokens and one over 2048 tokens (truncated)."""
    return [*SHORT, *(long_text(n, seed=n) for n in (180, 420, 700, 950, 1180)), long_text(2000, seed=1)]


QUERIES = [
    "Which planet is known as the Red Planet?",
    "What is the capital of Japan?",
    "How do I add two integers in Python?",
    "SQL query to find duplicate names",
]


def report(model: str, dtypes: tuple[str, ...] = ("float32", "bfloat16")) -> list[tuple[str, float, float]]:
    """(dtype, max |diff|, min cosine) of ours vs sentence-transformers float32 on `reference_corpus()`."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise ImportError(
            "the parity report needs sentence-transformers and torch: pip install torch sentence-transformers"
        ) from e
    from embeddinggemma import EmbeddingGemma
    from embeddinggemma.checkpoint import locate

    root = str(locate(model))
    docs = reference_corpus()
    ref = SentenceTransformer(root, device="cpu").encode_document(docs, batch_size=4)  # length-sorted: little padding
    rows = []
    for dtype in dtypes:
        ours = EmbeddingGemma.from_pretrained(root, dtype=dtype).encode_document(docs, batch_size=32)
        rows.append((dtype, float(np.abs(ours - ref).max()), float((ours * ref).sum(-1).min())))
    return rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", action="append", choices=["float32", "bfloat16"], help="default: both")


def run(args: argparse.Namespace) -> int:
    rows = report(args.model, tuple(args.dtype or ("float32", "bfloat16")))
    print(f"{len(reference_corpus())} texts, reference: sentence-transformers float32 on CPU")
    print(f"{'dtype':<10} {'max |diff|':>12} {'min cosine':>12}")
    for dtype, diff, cos in rows:
        print(f"{dtype:<10} {diff:>12.3e} {cos:>12.8f}")
    return 0
