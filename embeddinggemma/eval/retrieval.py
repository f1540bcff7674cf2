"""Retrieval evaluation the way the field measures it: exact search on the device, scored by trec_eval.

`evaluate`, `mine` and training's evaluation share this module:
* `TopK`: exact top-k of query x corpus cosine scores. The corpus arrives in chunks (a corpus of millions
  never sits on the device, or in host memory, at once); each chunk is split over every device of the mesh,
  each device keeps its own k best, and the k x devices candidates are gathered and merged into the running
  k best of each query. Scores are float32 dot products at HIGHEST precision (TPUs would otherwise round
  the operands to bfloat16). Equal scores rank the lower corpus row first, as `jax.lax.top_k`.
* `RetrievalSet`: queries, a corpus (id, title, text) and qrels, from a BEIR directory or from training rows.
* `trec_metrics`: the metrics of BEIR and MTEB, computed by `pytrec_eval` (trec_eval), not by hand.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from embeddinggemma import sharding
from embeddinggemma.corpus.readers import iter_objects, string_field
from embeddinggemma.encode import vectors
from embeddinggemma.errors import InputError

logger = logging.getLogger(__name__)

# name -> (trec_eval measure, its key in pytrec_eval's output); mrr@10 is recip_rank of the top 10 (as MTEB).
METRICS = {
    "ndcg@10": ("ndcg_cut.10", "ndcg_cut_10"),
    "map@100": ("map_cut.100", "map_cut_100"),
    "mrr@10": ("recip_rank", "recip_rank"),
    "recall@1": ("recall.1", "recall_1"),
    "recall@10": ("recall.10", "recall_10"),
    "recall@100": ("recall.100", "recall_100"),
    "precision@1": ("P.1", "P_1"),
}
DEPTH = 100  # documents retrieved per query: the deepest cutoff above


# ---------------------------------------------------------------------------------------------- search


def _search_mesh(mesh: Mesh | None) -> Mesh:
    return mesh if mesh is not None else Mesh(np.array(jax.devices()[:1]), ("data",))


@functools.cache
def _merge_step(mesh: Mesh, k: int) -> Any:
    """(queries, chunk, rows, best_scores, best_rows) -> the new k best; the chunk is split over all devices."""
    axes = mesh.axis_names

    def local(q: jax.Array, c: jax.Array, rows: jax.Array) -> tuple[jax.Array, jax.Array]:
        scores = jnp.matmul(q, c.T, precision=jax.lax.Precision.HIGHEST)
        scores = jnp.where(rows[None, :] >= 0, scores, -jnp.inf)  # padding rows are -1
        s, i = jax.lax.top_k(scores, k)
        gather = functools.partial(jax.lax.all_gather, axis_name=axes, axis=1, tiled=True)
        return gather(s), gather(rows[i])

    candidates = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(axes), P(axes)), out_specs=P(), check_vma=False)

    def step(q, c, rows, best_s, best_r):
        s, r = candidates(q, c, rows)
        s, r = jnp.concatenate([best_s, s], axis=1), jnp.concatenate([best_r, r], axis=1)
        s, i = jax.lax.top_k(s, k)  # earlier chunks first: equal scores keep the lower row
        return s, jnp.take_along_axis(r, i, axis=1)

    rep, split = NamedSharding(mesh, P()), NamedSharding(mesh, P(axes))
    return jax.jit(step, in_shardings=(rep, split, split, rep, rep), out_shardings=(rep, rep))


class TopK:
    """The k highest-scoring corpus rows of each query, fed chunk by chunk (`add`), read by `result`."""

    def __init__(
        self, queries: np.ndarray, k: int, *, mesh: Mesh | None = None, chunk: int = 32768, query_block: int = 4096
    ):
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.mesh = _search_mesh(mesh)
        self.k = k
        n_dev = self.mesh.devices.size
        self.chunk = -(-max(chunk, k * n_dev) // n_dev) * n_dev  # every device holds at least k rows
        self.queries = np.asarray(queries, np.float32)
        self.block = min(query_block, len(self.queries))
        self.scores = np.full((len(self.queries), k), -np.inf, np.float32)
        self.rows = np.full((len(self.queries), k), -1, np.int32)
        self.seen = 0

    def add(self, corpus: np.ndarray) -> None:
        """Score the next corpus rows (numbered after those already added)."""
        corpus = np.asarray(corpus, np.float32)
        if corpus.ndim != 2 or corpus.shape[1] != self.queries.shape[1]:
            raise ValueError(f"corpus chunk of shape {corpus.shape} for {self.queries.shape[1]}-d queries")
        step = _merge_step(self.mesh, self.k)
        rep, split = NamedSharding(self.mesh, P()), NamedSharding(self.mesh, P(self.mesh.axis_names))
        for start in range(0, len(corpus), self.chunk):
            part = corpus[start : start + self.chunk]
            c = np.zeros((self.chunk, corpus.shape[1]), np.float32)
            c[: len(part)] = part
            rows = np.full(self.chunk, -1, np.int32)
            rows[: len(part)] = np.arange(self.seen, self.seen + len(part))
            c_dev, rows_dev = sharding.from_host(c, split), sharding.from_host(rows, split)
            for q0 in range(0, len(self.queries), self.block):
                q = np.zeros((self.block, corpus.shape[1]), np.float32)
                n = min(self.block, len(self.queries) - q0)
                q[:n] = self.queries[q0 : q0 + n]
                best_s = np.full((self.block, self.k), -np.inf, np.float32)
                best_r = np.full((self.block, self.k), -1, np.int32)
                best_s[:n], best_r[:n] = self.scores[q0 : q0 + n], self.rows[q0 : q0 + n]
                q_dev, s_dev, r_dev = (sharding.from_host(x, rep) for x in (q, best_s, best_r))
                s, r = step(q_dev, c_dev, rows_dev, s_dev, r_dev)
                self.scores[q0 : q0 + n] = np.asarray(s.addressable_data(0))[:n]
                self.rows[q0 : q0 + n] = np.asarray(r.addressable_data(0))[:n]
            self.seen += len(part)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores), each (queries, k), best first; row -1 (score -inf) where the corpus had fewer rows."""
        return self.rows.copy(), self.scores.copy()


# ---------------------------------------------------------------------------------------------- data


@dataclasses.dataclass
class RetrievalSet:
    """Queries, a corpus and graded relevance judgements (qrels), all keyed by string ids."""

    queries: dict[str, str]  # only queries with judgements, as BEIR evaluates
    doc_ids: list[str]
    titles: list[str | None]  # None: no title (the document prompt says "none")
    texts: list[str]
    qrels: dict[str, dict[str, int]]

    def __post_init__(self) -> None:
        unknown = len({d for rel in self.qrels.values() for d in rel} - set(self.doc_ids))
        if unknown:
            logger.warning("%d judged document ids are not in the corpus (they count as never retrieved)", unknown)

    @classmethod
    def from_beir(cls, directory: str | Path, split: str = "test") -> RetrievalSet:
        """A BEIR directory: corpus.jsonl (_id, title, text), queries.jsonl (_id, text), qrels/<split>.tsv."""
        root = Path(directory)
        if not root.is_dir():
            raise InputError(f"{root}: not a directory (expected BEIR's corpus.jsonl, queries.jsonl, qrels/)")
        qrels = _read_qrels(root / "qrels" / f"{split}.tsv")
        all_queries = {row["_id"]: row["text"] for row in _read_jsonl(root / "queries.jsonl")}
        missing = [q for q in qrels if q not in all_queries]
        if missing:
            where = root / "qrels" / f"{split}.tsv"
            raise InputError(f"{where}: query id {missing[0]!r} is not in queries.jsonl")
        doc_ids, titles, texts = [], [], []
        for row in _read_jsonl(root / "corpus.jsonl"):
            doc_ids.append(row["_id"])
            titles.append(row.get("title") or None)
            texts.append(row["text"])
        return cls({q: all_queries[q] for q in qrels}, doc_ids, titles, texts, qrels)

    @classmethod
    def from_examples(cls, examples: Iterable[Any]) -> RetrievalSet:
        """Training rows (query, positive, negatives, title): each query is relevant to its positives; the
        corpus is every distinct positive and negative."""
        corpus: dict[tuple[str, str | None], str] = {}
        queries: dict[str, str] = {}
        qrels: dict[str, dict[str, int]] = {}

        def doc_id(text: str, title: str | None = None) -> str:
            return corpus.setdefault((text, title), f"d{len(corpus)}")

        for ex in examples:
            pos = doc_id(ex.positive, ex.title)
            for negative in ex.negatives:
                doc_id(negative)
            qid = queries.setdefault(ex.query, f"q{len(queries)}")
            qrels.setdefault(qid, {})[pos] = 1
        texts, titles = zip(*corpus, strict=True) if corpus else ((), ())
        return cls({qid: q for q, qid in queries.items()}, list(corpus.values()), list(titles), list(texts), qrels)

    def write_beir(self, directory: str | Path, split: str = "test") -> None:
        """This set as a BEIR directory (what `evaluate --data` and other BEIR tools read)."""
        root = Path(directory)
        (root / "qrels").mkdir(parents=True, exist_ok=True)
        with open(root / "corpus.jsonl", "w", encoding="utf-8") as f:
            for doc_id, title, text in zip(self.doc_ids, self.titles, self.texts, strict=True):
                f.write(json.dumps({"_id": doc_id, "title": title or "", "text": text}, ensure_ascii=False) + "\n")
        with open(root / "queries.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"_id": q, "text": t}, ensure_ascii=False) + "\n" for q, t in self.queries.items())
        with open(root / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            f.writelines(f"{q}\t{d}\t{s}\n" for q, docs in self.qrels.items() for d, s in docs.items())


def beir_split(spec: str) -> tuple[Path, str] | None:
    """(directory, split) when `spec` names a BEIR directory (`DIR` or `DIR:split`), else None."""
    path, sep, split = spec.rpartition(":")
    directory, split = (Path(path), split) if sep and "/" not in split else (Path(spec), "test")
    beir = all((directory / name).is_file() for name in ("corpus.jsonl", "queries.jsonl"))
    return (directory, split) if beir else None


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """BEIR rows: a non-empty `_id` (numbers allowed) and a `text`; an optional title, when a string, is checked too."""
    for number, row in iter_objects(path):
        row["_id"] = str(row.get("_id", ""))
        if not row["_id"]:
            raise InputError(f"{path}:{number}: no string field '_id'")
        string_field(path, number, row, "text")
        if isinstance(row.get("title"), str):
            string_field(path, number, row, "title")
        yield row


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """`query-id corpus-id score` rows after a header line, tab-separated."""
    if not path.is_file():
        splits = sorted(p.stem for p in path.parent.glob("*.tsv"))
        raise InputError(f"{path}: no such file" + (f" (splits here: {', '.join(splits)})" if splits else ""))
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        for number, row in enumerate(csv.reader(f, delimiter="\t"), start=1):
            if number == 1 or not row:
                continue
            try:
                qid, did, score = row
                qrels.setdefault(qid, {})[did] = int(score)
            except ValueError as e:
                raise InputError(f"{path}:{number}: expected query-id, corpus-id, integer score") from e
    if not qrels:
        raise InputError(f"{path}: no judgements")
    return qrels


# ---------------------------------------------------------------------------------------------- metrics


def trec_metrics(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    """METRICS averaged over the judged queries of `run` ({query id: {doc id: score}}), by pytrec_eval."""
    import pytrec_eval

    measures = {measure for name, (measure, _) in METRICS.items() if name != "mrr@10"}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    top10 = {q: dict(sorted(docs.items(), key=lambda d: (d[1], d[0]), reverse=True)[:10]) for q, docs in run.items()}
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)  # trec_eval's order: score, then id
    out = {}
    for name, (_, key) in METRICS.items():
        values = [v["recip_rank"] for v in rr.values()] if name == "mrr@10" else [v[key] for v in per_query.values()]
        out[name] = float(np.mean(values)) if values else math.nan
    return out


def run_of(
    rows: np.ndarray,
    scores: np.ndarray,
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    *,
    ignore_identical_ids: bool = False,
) -> dict[str, dict[str, float]]:
    """A trec run from `TopK.result()`: the top DEPTH documents of each query (its own id left out, if asked)."""
    run = {}
    for qid, row, score in zip(query_ids, rows, scores, strict=True):
        docs = ((doc_ids[r], float(s)) for r, s in zip(row, score, strict=True) if r >= 0)
        if ignore_identical_ids:
            docs = (d for d in docs if d[0] != qid)
        run[qid] = dict(list(docs)[:DEPTH])
    return run


def evaluate(
    model: Any,
    data: RetrievalSet,
    dims: Sequence[int],
    prompts: Any,
    *,
    batch_size: int = 32,
    chunk: int = 16384,
    ignore_identical_ids: bool = False,
    progress: bool = False,
) -> dict[int, dict[str, float]]:
    """{dim: {metric: value}}: queries and corpus embedded once, searched exactly at each Matryoshka dim.

    The corpus is embedded and searched `chunk` documents at a time, so only the running top DEPTH of each
    query is kept. `prompts` formats queries and documents (train.data.Prompts: the title prompt when a
    document has a title, else the document prompt)."""
    query_ids = list(data.queries)
    queries = model.encode([prompts.format_query(data.queries[q]) for q in query_ids], prompt="", batch_size=batch_size)
    k = DEPTH + int(ignore_identical_ids)
    searches = {dim: TopK(vectors.truncate(queries, dim), k, mesh=model.mesh, chunk=chunk) for dim in dims}
    n = len(data.texts)
    with tqdm(total=n, unit="doc", desc="corpus", disable=not progress) as bar:
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            docs = [prompts.format_document(data.texts[i], data.titles[i]) for i in range(start, stop)]
            emb = model.encode(docs, prompt="", batch_size=batch_size, show_progress_bar=False)
            for dim, search in searches.items():
                search.add(vectors.truncate(emb, dim))
            bar.update(stop - start)
    out = {}
    for dim, search in searches.items():
        run = run_of(*search.result(), query_ids, data.doc_ids, ignore_identical_ids=ignore_identical_ids)
        out[dim] = trec_metrics(run, data.qrels)
    return out
