"""Hard-negative mining with the semantics of sentence-transformers' `mine_hard_negatives` (n-tuple output).

For each distinct query, the candidates are the corpus (`--corpus` plus every positive, de-duplicated; or
only the positives). Its positives, and so any exact duplicate of them, are never chosen. Candidates are
ranked by cosine score (exact top-k on the device, retrieval.TopK); those breaking a margin or score limit
are dropped; of the `range_max` best that remain, the first `range_min` are skipped and `num_negatives` are
taken, the best (`top`) or at random (`random`, then sorted by score). A (query, positive) row is written
only when all `num_negatives` were found; `num_negatives` must fit in the corpus, and the search is never
wider than it. Queries get the query prompt, candidates the document prompt, as
`encode_query` / `encode_document` do. Embeddings go through the resumable encode job in `OUT.mining/`, so
an interrupted run re-embeds at most one shard.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from embeddinggemma.corpus.encode_job import EncodeJob, check_manifest
from embeddinggemma.corpus.readers import load_embeddings, read_records
from embeddinggemma.encode.encoder import EmbeddingGemma
from embeddinggemma.eval.retrieval import TopK
from embeddinggemma.files import check_outputs, write_atomic

OUTPUT_SUFFIXES = (".jsonl", ".ndjson", ".parquet")
MANIFEST = "mine.json"


@dataclasses.dataclass(frozen=True)
class MineOptions:
    num_negatives: int = 3
    range_min: int = 0
    range_max: int | None = None  # None: derived as sentence-transformers does
    max_score: float | None = None
    min_score: float | None = None
    absolute_margin: float | None = None
    relative_margin: float | None = None
    sampling: Literal["top", "random"] = "top"
    seed: int = 0  # random sampling

    def window(self, max_positives: int, candidates: int | None = None) -> int:
        """range_max, checked: room for `num_negatives` after `range_min` (sentence-transformers' rules), and,
        given the number of `candidates`, as many candidates besides a query's positive (before the search
        sizes its buffers by them)."""
        if self.num_negatives < 1:
            raise ValueError(f"num_negatives must be at least 1, got {self.num_negatives}")
        if self.range_min < 0:
            raise ValueError(f"range_min must be non-negative, got {self.range_min}")
        if self.sampling not in ("top", "random"):
            raise ValueError(f"sampling must be 'top' or 'random', got {self.sampling!r}")
        range_max = self.range_max
        if range_max is None:  # margins and max_score drop candidates: look 10x deeper
            filtered = (
                self.absolute_margin is not None or self.relative_margin is not None or self.max_score is not None
            )
            range_max = self.range_min + self.num_negatives * (10 if filtered else 1) + max_positives
        if self.range_min >= range_max:
            raise ValueError(f"range_min ({self.range_min}) must be smaller than range_max ({range_max})")
        if self.num_negatives > range_max - self.range_min:
            raise ValueError(
                f"cannot mine {self.num_negatives} negatives: only {range_max - self.range_min} candidates remain "
                f"after skipping range_min={self.range_min} of range_max={range_max}"
            )
        if candidates is not None and self.range_min + self.num_negatives > candidates - 1:
            skipping = f" after skipping range_min={self.range_min}" if self.range_min else ""
            raise ValueError(
                f"cannot mine {self.num_negatives:,} negatives a row: the corpus has {candidates:,} candidates, one of "
                f"them each query's positive, so at most {max(candidates - 1 - self.range_min, 0):,} remain{skipping}"
            )
        return range_max


@dataclasses.dataclass(frozen=True)
class Mined:
    """The n-tuple rows, with the scores the summary describes."""

    queries: list[str]
    positives: list[str]
    negatives: list[list[str]]
    titles: list[str | None]
    positive_scores: np.ndarray  # every (query, positive) pair, kept or not
    negative_scores: np.ndarray  # (kept rows, num_negatives)
    difference: np.ndarray  # positive minus negative score, per kept negative
    skipped: dict[str, int]  # candidates dropped by each limit
    candidates: int
    short: int  # (query, positive) rows with fewer than num_negatives negatives: not written
    none: int  # of those, rows with no negative at all
    pairs: int


def mine(
    pairs: Sequence[Any],
    query_emb: np.ndarray,
    candidate_emb: np.ndarray,
    candidates: list[str],
    options: MineOptions,
    *,
    mesh: Any = None,
) -> Mined:
    """Choose negatives. `pairs`: rows with .query, .positive, .title; the embeddings are L2-normalized, of
    the distinct queries (first-seen order) and of `candidates` (which holds every positive)."""
    index = {text: i for i, text in enumerate(candidates)}
    queries = list(dict.fromkeys(p.query for p in pairs))
    q_index = {q: i for i, q in enumerate(queries)}
    rows_per_query = np.bincount([q_index[p.query] for p in pairs], minlength=len(queries))
    positives: list[list[int]] = [[] for _ in queries]  # distinct positive rows of each query
    titles: dict[tuple[int, int], str | None] = {}
    for p in pairs:
        qi, ci = q_index[p.query], index[p.positive]
        if ci not in positives[qi]:
            positives[qi].append(ci)
            titles[qi, ci] = p.title
    range_max = options.window(int(rows_per_query.max()), len(candidates))

    search = TopK(query_emb, min(range_max + int(rows_per_query.max()), len(candidates)), mesh=mesh)
    search.add(candidate_emb)
    rows, scores = search.result()
    scores = scores.astype(np.float64)
    pos_scores = [np.array([query_emb[qi] @ candidate_emb[ci] for ci in positives[qi]]) for qi in range(len(queries))]
    for qi in range(len(queries)):
        scores[qi, np.isin(rows[qi], positives[qi])] = -np.inf
    scores[rows < 0] = -np.inf

    skipped: dict[str, int] = {}
    total = scores.size

    def drop(name: str, mask: np.ndarray) -> None:
        mask &= np.isfinite(scores)
        if mask.any():
            skipped[name] = int(mask.sum())
        scores[mask] = -np.inf

    hardest = np.array([s.min() for s in pos_scores])[:, None]  # several positives: the margin uses the lowest
    if options.absolute_margin is not None:
        drop("absolute_margin", scores + options.absolute_margin > hardest)
    if options.relative_margin is not None:
        drop("relative_margin", scores > hardest - np.abs(hardest) * options.relative_margin)
    if options.max_score is not None:
        drop("max_score", scores > options.max_score)
    if options.min_score is not None:
        drop("min_score", scores < options.min_score)

    order = np.argsort(-scores, axis=1, kind="stable")[:, options.range_min : range_max]
    rows, scores = np.take_along_axis(rows, order, 1), np.take_along_axis(scores, order, 1)
    k = options.num_negatives
    if options.sampling == "random":
        rng = random.Random(options.seed)
        options_per_query = np.maximum(np.isfinite(scores).sum(axis=1), k)
        picks = np.array([sorted(rng.sample(range(n), k)) for n in options_per_query])
        rows, scores = np.take_along_axis(rows, picks, 1), np.take_along_axis(scores, picks, 1)
    rows, scores = rows[:, :k], scores[:, :k]
    found = np.isfinite(scores).sum(axis=1)

    kept: list[tuple[int, int, float]] = []  # (query, positive, positive score) rows with k negatives
    for qi in range(len(queries)):
        if found[qi] == k:
            kept += [(qi, ci, score) for ci, score in zip(positives[qi], pos_scores[qi], strict=True)]
    chosen = np.array([qi for qi, _, _ in kept], np.int64)
    pairs_total = sum(len(p) for p in positives)
    return Mined(
        queries=[queries[qi] for qi, _, _ in kept],
        positives=[candidates[ci] for _, ci, _ in kept],
        negatives=[[candidates[r] for r in rows[qi]] for qi, _, _ in kept],
        titles=[titles[qi, ci] for qi, ci, _ in kept],
        positive_scores=np.concatenate(pos_scores),
        negative_scores=scores[chosen],
        difference=np.concatenate([score - scores[qi] for qi, _, score in kept]) if kept else np.empty(0),
        skipped=skipped,
        candidates=total,
        short=pairs_total - len(kept),
        none=sum(len(positives[qi]) for qi in np.flatnonzero(found == 0)),
        pairs=pairs_total,
    )


def summary(result: Mined, options: MineOptions) -> str:
    """sentence-transformers' table: score distributions of positives, chosen negatives and their difference."""
    columns = (result.positive_scores, result.negative_scores.ravel(), result.difference)
    lines = [f"{'Metric':<6} {'Positive':>14} {'Negative':>14} {'Difference':>14}"]
    lines.append(f"{'Count':<6} {len(columns[0]):>14,} {len(columns[1]):>14,}")
    stats: list[tuple[str, Callable[[np.ndarray], float]]] = [
        ("Mean", np.mean),
        ("Median", np.median),
        ("Std", lambda x: np.std(x, ddof=1) if len(x) > 1 else np.nan),
        ("Min", np.min),
        ("25%", lambda x: np.quantile(x, 0.25)),
        ("75%", lambda x: np.quantile(x, 0.75)),
        ("Max", np.max),
    ]
    for name, fn in stats:
        lines.append(f"{name:<6} " + " ".join(f"{fn(c) if len(c) else np.nan:>14.4f}" for c in columns))
    for name, count in result.skipped.items():
        value = getattr(options, name)
        lines.append(f"Skipped {count:,} candidates ({count / result.candidates:.2%}) due to {name} {value}.")
    if result.short:
        lines.append(
            f"Could not find enough negatives ({options.num_negatives} a row) for {result.short:,} of {result.pairs:,} "
            f"(query, positive) pairs ({result.short / result.pairs:.2%}; {result.none:,} found none at all); they "
            "are not written. Raise range_max or relax the margins / max_score to find more."
        )
    return "\n".join(lines)


def write(result: Mined, path: Path) -> None:
    """JSONL in our training schema (query, positive, negatives, title), or Parquet with sentence-transformers'
    n-tuple columns (query, positive, negative_1..K), atomically."""
    if path.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = {"query": result.queries, "positive": result.positives}
        for j in range(result.negative_scores.shape[1]):
            columns[f"negative_{j + 1}"] = [n[j] for n in result.negatives]
        write_atomic(path, lambda f: pq.write_table(pa.table(columns), f))
        return

    def rows() -> Iterable[bytes]:
        for query, positive, negatives, title in zip(
            result.queries, result.positives, result.negatives, result.titles, strict=True
        ):
            row = {"query": query, "positive": positive, "negatives": negatives} | ({"title": title} if title else {})
            yield (json.dumps(row, ensure_ascii=False) + "\n").encode()

    write_atomic(path, lambda f: f.writelines(rows()))


class MineJob:
    """Outputs checked and inputs read before a model loads; embeddings resumable in `OUT.mining/`."""

    def __init__(
        self,
        pairs: Sequence[Any],
        output: str | Path,
        *,
        corpus: str | Path | None = None,
        inputs: Sequence[str | Path] = (),
        text_field: str = "text",
        overwrite: bool = False,
    ):
        self.output = Path(output)
        if self.output.suffix.lower() not in OUTPUT_SUFFIXES:
            raise ValueError(f"--output {self.output}: give a .jsonl or .parquet file name")
        check_outputs({"--output": self.output}, [*inputs, *([corpus] if corpus else [])], overwrite=overwrite)
        if self.output.suffix.lower() == ".parquet":  # known before the embedding work, not after
            try:
                import pyarrow  # noqa: F401
            except ImportError as e:
                raise ImportError("Parquet output needs pyarrow: pip install 'embeddinggemma-jax[data]'") from e
        if not pairs:
            raise ValueError("the input has no (query, positive) rows")
        self.pairs = pairs
        extra = [r.text for r in read_records(corpus, text_field=text_field)] if corpus else []
        self.candidates = list(dict.fromkeys([*extra, *(p.positive for p in pairs)]))
        self.queries = list(dict.fromkeys(p.query for p in pairs))
        self.work = self.output.with_name(self.output.name + ".mining")

    def embed(
        self,
        model: EmbeddingGemma,
        *,
        model_id: str,
        query_prompt: str,
        document_prompt: str,
        shard_size: int = 2048,
        **run: Any,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(queries, candidates) embeddings, through the resumable encode job (finished files are reused)."""
        manifest = {"model": model_id, "dtype": model.dtype, "query_prompt": query_prompt}
        manifest["document_prompt"] = document_prompt
        self.work.mkdir(parents=True, exist_ok=True)
        check_manifest(self.work / MANIFEST, manifest)
        out = []
        for name, texts, prompt in (
            ("candidates", self.candidates, document_prompt),
            ("queries", self.queries, query_prompt),
        ):
            src, emb = self.work / f"{name}.jsonl", self.work / f"{name}.npy"
            if not emb.is_file():  # the texts are written again identically, so a partial encode resumes
                lines = (json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts)
                write_atomic(src, lambda f, lines=lines: f.writelines(line.encode() for line in lines))
                EncodeJob.prepare(src, emb, shard_size=shard_size).run(model, model_id=model_id, prompt=prompt, **run)
            out.append(load_embeddings(emb, rows=len(texts)))
        return out[1], out[0]

    def finish(self, result: Mined) -> None:
        """Write the rows and remove the embeddings; with no row to write, an error (the embeddings stay, so a
        rerun with other limits reuses them)."""
        if not result.queries:
            raise ValueError(
                f"no (query, positive) pair got enough negatives ({result.none:,} of {result.pairs:,} got none); "
                f"nothing written to {self.output}. Relax the margins / max_score or raise range_max, and rerun: "
                f"the embeddings in {self.work} are reused"
            )
        write(result, self.output)
        shutil.rmtree(self.work)
