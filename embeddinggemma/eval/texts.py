"""The fixed texts of the parity checks (the tests, and `embeddinggemma verify`'s verification set).

They exercise the traps: several languages and scripts, code, whitespace, emoji, an empty string,
documents of roughly 300, 700, 1200, 1600 and 2000 tokens (longer than a sliding window) and one over
the 2048-token limit (truncated).
"""

from __future__ import annotations

import random

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
