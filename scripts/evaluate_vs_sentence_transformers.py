"""`embeddinggemma evaluate` next to sentence-transformers + trec_eval on the same BEIR directory, in one run.

    python scripts/evaluate_vs_sentence_transformers.py --model DIR --data BEIR_DIR [--split test] [--dims 768,128]

The reference embeds with `SentenceTransformer` (CPU, float32) using the same prompt strings, scores every
query against every document in numpy and gives the full run to pytrec_eval; ours is `retrieval.evaluate`
(device top-100 search). Prints both tables and the largest difference per metric.
"""

from __future__ import annotations

import argparse

from embeddinggemma import EmbeddingGemma
from embeddinggemma.encode import vectors
from embeddinggemma.encode.prompts import Prompts
from embeddinggemma.eval import retrieval


def reference(model_dir: str, data: retrieval.RetrievalSet, dims: list[int], prompts: Prompts) -> dict:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(model_dir, device="cpu")
    query_ids = list(data.queries)
    q = st.encode([prompts.format_query(data.queries[i]) for i in query_ids], prompt="", show_progress_bar=True)
    docs = [prompts.format_document(t, title) for t, title in zip(data.texts, data.titles, strict=True)]
    c = st.encode(docs, prompt="", show_progress_bar=True)
    out = {}
    for dim in dims:
        scores = vectors.truncate(q, dim) @ vectors.truncate(c, dim).T
        run = {
            qid: dict(zip(data.doc_ids, map(float, row), strict=True))
            for qid, row in zip(query_ids, scores, strict=True)
        }
        out[dim] = retrieval.trec_metrics(run, data.qrels)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--dims", default="768,512,256,128")
    args = p.parse_args()
    dims = [int(d) for d in args.dims.split(",")]
    data = retrieval.RetrievalSet.from_beir(args.data, args.split)
    model = EmbeddingGemma.from_pretrained(args.model)
    prompts = Prompts.for_model(model.config, None, None, "title: {title} | text: ")
    ours = retrieval.evaluate(model, data, dims, prompts, progress=True)
    theirs = reference(args.model, data, dims, prompts)
    names = list(retrieval.METRICS)
    print(f"{len(data.queries)} queries, {len(data.texts)} documents")
    print(f"{'dim':>5} {'side':<22} " + " ".join(f"{n:>11}" for n in names))
    for dim in dims:
        for side, results in (("embeddinggemma-jax", ours), ("sentence-transformers", theirs)):
            print(f"{dim:>5} {side:<22} " + " ".join(f"{results[dim][n]:>11.4f}" for n in names))
    diff = max(abs(ours[d][n] - theirs[d][n]) for d in dims for n in names)
    print(f"largest |difference| over dims and metrics: {diff:.2e}")


if __name__ == "__main__":
    main()
