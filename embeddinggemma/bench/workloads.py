"""The texts the benchmarks send: deterministic word salads over a small multilingual vocabulary (the parity
checks keep their own fixed texts in `eval.texts`)."""

from __future__ import annotations

import bisect
import random
from pathlib import Path

WORDS = (
    "the model encodes text into dense vectors for search retrieval and clustering while a sliding window "
    "attention layer sees nearby tokens and global layers see everything results show that training with "
    "hard negatives improves recall on multilingual benchmarks der die das und la le les de 東京 北京 "
    "Москва код функция return value planet orbit 42 3.14 (x + y) * z"
).split()
# The encode benchmark's workloads: count, min tokens, max tokens (with <bos>/<eos>).
ENCODE_WORKLOADS = {"short": (256, 30, 120), "long": (16, 1500, 2048)}


def documents(checkpoint: str | Path, scale: int = 1, seed: int = 0) -> dict[str, list[str]]:
    """Per encode workload, count x `scale` documents cut to a random token count in its range."""
    from embeddinggemma.model.config import ModelConfig
    from embeddinggemma.model.tokenizer import Tokenizer

    tok = Tokenizer(Path(checkpoint) / "tokenizer.model", ModelConfig.from_checkpoint_dir(checkpoint))
    rng = random.Random(seed)
    out: dict[str, list[str]] = {}
    for name, (count, lo, hi) in ENCODE_WORKLOADS.items():
        texts = []
        for _ in range(count * scale):
            target = rng.randint(lo, hi)
            words = [rng.choice(WORDS) for _ in range(target)]  # >= 1 token per word: long enough
            n_tokens = lambda n, words=words: len(tok.sp.encode(" ".join(words[:n]))) + 2  # noqa: E731 (+ bos, eos)
            keep = bisect.bisect_right(range(target + 1), target, key=n_tokens) - 1  # most words within target
            texts.append(" ".join(words[:keep]))
        out[name] = texts
    return out


def word_salads(workload: str, count: int, seed: int, long_words: tuple[int, int]) -> list[str]:
    """`count` texts of the serve benchmark's workload: short (20-80 words) or long (`long_words` words)."""
    lo, hi = (20, 80) if workload == "short" else long_words
    rng = random.Random(f"{seed}-{workload}")
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) for _ in range(count)]
