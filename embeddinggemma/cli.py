"""The `embeddinggemma` command line: encode, search, similarity, evaluate, mine, serve, info, convert, train,
aot, benchmark, benchmark-serve, benchmark-train, parity, mteb.

Every command takes the checkpoint from --model (default: $EMBEDDINGGEMMA_CHECKPOINT, else the Hub id
google/embeddinggemma-300m). Bad input ends the command with exit status 1 and one line on stderr, never a
traceback (EMBEDDINGGEMMA_DEBUG=1 shows it); usage errors exit with status 2 (argparse's convention).
Commands that run the model keep JAX's compiled programs in a persistent cache, so a second run does not
compile again.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from embeddinggemma import (
    aot,
    benchmark,
    benchmark_serve,
    corpus,
    mteb,
    quantization,
    serve,
    verify,
    weight_quantization,
)
from embeddinggemma.checkpoint import DEFAULT_MODEL
from embeddinggemma.encoder import EmbeddingGemma
from embeddinggemma.files import cache_dir, check_outputs, write_atomic
from embeddinggemma.train import benchmark as train_benchmark

PROG = "embeddinggemma"
# A failure the user can cause (a bad file, option or value, a missing optional dependency, a diverged run).
USER_ERRORS = (ValueError, OSError, ImportError, FloatingPointError)
OUT_OF_MEMORY = (
    "out of device memory: lower --batch-size (training: global_batch_size, or set grad_cache_chunk), "
    "use --dtype bfloat16, or spread the work over more devices with --mesh"
)
PREEMPTED = 143  # `train` after SIGTERM, once its checkpoint is saved: rerun with --resume


def default_model() -> str:
    return os.environ.get("EMBEDDINGGEMMA_CHECKPOINT") or DEFAULT_MODEL


def default_cache_dir() -> Path:
    """$EMBEDDINGGEMMA_COMPILATION_CACHE, else embeddinggemma/jax under the user's cache directory."""
    return cache_dir("jax", "EMBEDDINGGEMMA_COMPILATION_CACHE")


def enable_compilation_cache(directory: Path) -> None:
    """JAX's persistent compilation cache in `directory`: every compiled program is written there and a
    later process with the same program, jax version and devices loads it instead of compiling."""
    import jax

    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# ---------------------------------------------------------------------------------------------- commands


def cmd_convert(args: argparse.Namespace) -> None:
    from embeddinggemma.checkpoint import convert

    source = convert(args.src, args.dst)
    target = "native" if source.format == "sentence-transformers" else "sentence-transformers"
    print(f"{args.dst}  ({source.format} -> {target})")


def cmd_encode(args: argparse.Namespace) -> None:
    job = corpus.EncodeJob.prepare(
        args.input,
        args.output,
        ids_out=args.ids_output,
        text_field=args.text_field,
        shard_size=args.shard_size,
        overwrite=args.overwrite,
        precision=args.precision,
        calibration=args.calibration,
    )
    model = load_model(args)
    emb = job.run(
        model,
        model_id=args.model,
        prompt_name=args.prompt_name,
        prompt=args.prompt,
        truncate_dim=args.truncate_dim,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        log=lambda msg: print(msg, file=sys.stderr),
    )
    packed = f" ({args.precision}: 8 dims a byte)" if args.precision in quantization.BINARY_PRECISIONS else ""
    print(f"wrote {args.output}: {emb.shape[0]} x {emb.shape[1]} {emb.dtype}{packed}")


def cmd_search(args: argparse.Namespace) -> None:
    source = Path(args.corpus) if args.corpus else corpus.bundled_corpus()
    if source.suffix == ".npy":
        records = corpus.read_records(args.texts, text_field=args.text_field) if args.texts else None
        corpus_emb = corpus.load_embeddings(source, rows=len(records) if records else None, precision=args.precision)
        model = load_model(args)
    else:
        records = corpus.read_records(source, text_field=args.text_field)
        model = load_model(args)
        # a text corpus is embedded here and searched at the requested precision, e.g. to compare with float32
        corpus_emb = model.encode_document([r.text for r in records], batch_size=args.batch_size)
        corpus_emb = quantization.quantize_embeddings(corpus_emb, args.precision)
    results = corpus.search(
        model, args.query, corpus_emb, args.k, precision=args.precision, rescore_multiplier=args.rescore_multiplier
    )
    for query, hits in zip(args.query, results, strict=True):
        print(query)
        for rank, (row, score) in enumerate(hits, start=1):
            label = f"{records[row].id}  {_clip(records[row].text)}" if records else f"row {row}"
            print(f"{rank:4d}  {score:.3f}  {label}")


def cmd_similarity(args: argparse.Namespace) -> None:
    texts_b = args.b or args.a
    model = load_model(args)
    kwargs = {"prompt_name": args.prompt_name, "prompt": args.prompt, "truncate_dim": args.truncate_dim}
    scores = model.similarity(model.encode(args.a, **kwargs), model.encode(texts_b, **kwargs))
    width = max(len(_clip(t, 30)) for t in args.a)
    print(" " * width + "".join(f"  [{j}]  " for j in range(len(texts_b))))
    for text, row in zip(args.a, scores, strict=True):
        print(_clip(text, 30).ljust(width) + "".join(f"  {s:.3f}" for s in row))
    for j, text in enumerate(texts_b):
        print(f"[{j}] {_clip(text)}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from embeddinggemma import retrieval
    from embeddinggemma.train.data import Prompts

    if args.output:
        check_outputs({"--output": args.output}, [], overwrite=args.overwrite)
    data = retrieval.RetrievalSet.from_beir(args.data, args.split)
    model = load_model(args)
    dims = _dims(args.dims, model.config.embedding_dim)
    prompts = Prompts.for_model(model.config, args.query_prompt, args.document_prompt, args.title_prompt)
    print(f"{args.data} ({args.split}): {len(data.queries):,} queries, {len(data.texts):,} documents", file=sys.stderr)
    results = retrieval.evaluate(
        model,
        data,
        dims,
        prompts,
        batch_size=args.batch_size,
        chunk=args.chunk,
        ignore_identical_ids=args.ignore_identical_ids,
        progress=not args.no_progress,
    )
    names = list(retrieval.METRICS)
    print(f"{'dim':>5} " + " ".join(f"{n:>11}" for n in names))
    for dim, values in results.items():
        print(f"{dim:>5} " + " ".join(f"{values[n]:>11.4f}" for n in names))
    if args.output:
        text = json.dumps({str(dim): values for dim, values in results.items()}, indent=2) + "\n"
        write_atomic(args.output, lambda f: f.write(text.encode()))


def cmd_mine(args: argparse.Namespace) -> None:
    from embeddinggemma import mining
    from embeddinggemma.train.sources import Columns, examples, open_rows

    options = mining.MineOptions(
        num_negatives=args.num_negatives,
        range_min=args.range_min,
        range_max=args.range_max,
        max_score=args.max_score,
        min_score=args.min_score,
        absolute_margin=args.absolute_margin,
        relative_margin=args.relative_margin,
        sampling=args.sampling,
        seed=args.seed,
    )
    options.window(1)  # bad options fail before anything is read
    try:
        columns = Columns.from_config(json.loads(args.columns)) if args.columns else None
    except json.JSONDecodeError as e:
        raise ValueError(f"--columns {args.columns!r}: not JSON ({e.msg})") from None
    inputs = [args.input] if Path(args.input).exists() else []
    pairs = list(examples(open_rows(args.input, columns)))
    job = mining.MineJob(
        pairs, args.output, corpus=args.corpus, inputs=inputs, text_field=args.text_field, overwrite=args.overwrite
    )
    print(f"{len(pairs):,} pairs, {len(job.queries):,} distinct queries, {len(job.candidates):,} candidates")
    model = load_model(args)
    query_emb, candidate_emb = job.embed(
        model,
        model_id=args.model,
        query_prompt=model.prompt_prefix(None if args.query_prompt is not None else "query", args.query_prompt),
        document_prompt=model.prompt_prefix(
            None if args.document_prompt is not None else "document", args.document_prompt
        ),
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        progress=not args.no_progress,
        log=lambda msg: print(msg, file=sys.stderr),
    )
    result = mining.mine(pairs, query_emb, candidate_emb, job.candidates, options, mesh=model.mesh)
    print(mining.summary(result, options))
    job.finish(result)
    print(f"wrote {args.output}: {len(result.queries):,} rows, {options.num_negatives} negatives a row")


def cmd_info(args: argparse.Namespace) -> None:
    import jax

    from embeddinggemma.attention import backend_for

    model = load_model(args)
    cfg = model.config
    params = weight_quantization.parameter_count(model.params)
    devices = jax.devices()
    rows = {
        "model": args.model,
        "layers": f"{cfg.num_layers} ({cfg.num_global_layers} global, {cfg.num_layers - cfg.num_global_layers} "
        f"sliding with radius {cfg.sliding_window_radius})",
        "hidden": f"{cfg.hidden_size}, MLP {cfg.intermediate_size}, heads {cfg.num_heads} query / "
        f"{cfg.num_kv_heads} key-value x {cfg.head_dim}",
        "vocabulary": cfg.vocab_size,
        "max tokens": cfg.max_seq_length,
        "embedding": f"{cfg.embedding_dim}-d (dense head {' -> '.join(map(str, cfg.dense_features))})",
        "prompts": ", ".join(model.prompts) or "(none)",
        "parameters": f"{params:,} ({model.dtype})",
        "weights": f"{args.quantization or 'not quantized'}, "
        f"{weight_quantization.parameter_bytes(model.params) / 2**20:,.1f} MiB"
        + (" (int4 two a byte, as stored on TPU)" if "int4" in model.quantized.values() else ""),
        "devices": f"{len(devices)} x {devices[0].platform} ({devices[0].device_kind})",
        "mesh": args.mesh or "none (one device)",
        "attention": f"sliding {backend_for(args.attention, cfg.sliding_window_radius)}, global "
        f"{backend_for(args.attention, None)} (requested {args.attention!r})",
    }
    for key, value in rows.items():
        print(f"{key:<11} {value}")


def cmd_train(args: argparse.Namespace) -> int:
    from embeddinggemma.train import TrainConfig, train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = TrainConfig.from_file(args.config, **dict(args.set))
    result = train(cfg, resume=args.resume, overwrite=args.overwrite)
    print(json.dumps(result, indent=2))
    return PREEMPTED if result["status"] == "preempted" else 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    return benchmark.run(args)


# ---------------------------------------------------------------------------------------------- helpers


def load_model(args: argparse.Namespace) -> EmbeddingGemma:
    kwargs = {"dtype": args.dtype, "attention_impl": args.attention, "quantization": args.quantization}
    if args.mesh:
        kwargs["mesh"] = args.mesh
    return EmbeddingGemma.from_pretrained(args.model, **kwargs)


def _dims(spec: str | None, full: int) -> list[int]:
    """--dims "768,512": each 1..full; default: the model's Matryoshka widths that fit (else the full width)."""
    if spec is None:
        return [d for d in (768, 512, 256, 128) if d <= full] or [full]
    try:
        dims = [int(d) for d in spec.split(",")]
    except ValueError:
        raise ValueError(f"--dims {spec!r}: expected comma-separated integers, e.g. 768,512,256,128") from None
    bad = [d for d in dims if not 1 <= d <= full]
    if bad:
        raise ValueError(f"--dims {spec!r}: {bad[0]} is outside 1..{full}, this model's embedding width")
    return dims


def _clip(text: str, width: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def _override(item: str) -> tuple[str, object]:
    """--set KEY=VALUE: VALUE is JSON (numbers, true, null, lists), else a bare string."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {item!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


# ---------------------------------------------------------------------------------------------- parser


def _add_model_option(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        "-m",
        default=default_model(),
        help="checkpoint: HF/sentence-transformers directory, native checkpoint, or Hub id "
        "(default: $EMBEDDINGGEMMA_CHECKPOINT, else %(default)s)",
    )
    return g


def _add_model_args(p: argparse.ArgumentParser, *, batch: bool = True) -> None:
    g = _add_model_option(p)
    g.add_argument("--dtype", default="float32", help="float32 (default) or bfloat16; float16 overflows this model")
    g.add_argument("--mesh", help="device mesh spec, e.g. data=8 (default: one device)")
    g.add_argument("--attention", default="auto", help="attention backend (default: auto, chosen by platform)")
    g.add_argument(
        "--quantization",
        choices=weight_quantization.MODES,
        help="store the weights quantized: int8 (per channel), int4 (blocks of 32) or mixed (the model card's "
        "int4 embeddings/MLP/Dense, int8 attention); needs the quant extra (default: float weights)",
    )
    if batch:
        g.add_argument("--batch-size", type=positive_int, default=32, help="texts per forward pass (default: 32)")


def _add_cache_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("compilation cache")
    g.add_argument(
        "--compilation-cache",
        type=Path,
        default=default_cache_dir(),
        metavar="DIR",
        help="JAX's persistent compilation cache (default: $EMBEDDINGGEMMA_COMPILATION_CACHE, else %(default)s)",
    )
    g.add_argument("--no-compilation-cache", action="store_true", help="compile everything afresh, store nothing")


def _add_prompt_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prompt-name", help="a prompt of the model, e.g. query, document, STS, Clustering")
    g.add_argument("--prompt", help="a literal prefix, e.g. 'task: search result | query: '")
    p.add_argument("--truncate-dim", type=positive_int, help="Matryoshka: keep the first D dims (768, 512, 256 or 128)")


def _subparser(
    sub: argparse._SubParsersAction, name: str, summary: str, example: str, note: str = ""
) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=summary,
        description=f"{summary} {note}\n\nexample:\n{textwrap.indent(example.strip(), '  ')}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0] + "\n\nexample:\n  embeddinggemma search --query 'Which planet is red?'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _subparser(
        sub,
        "encode",
        "Embed a text file (one text a line) or JSONL (a text field) into a .npy, in resumable shards.",
        "embeddinggemma encode --input docs.jsonl --output docs.npy --prompt-name document --ids-output docs.ids.jsonl",
        "An interrupted run resumes from its last finished shard when rerun with the same arguments.",
    )
    p.add_argument("--input", "-i", required=True, help="a .txt file (one text a line) or .jsonl file")
    p.add_argument(
        "--output", "-o", required=True, help="the .npy to write (a row per text; float32 or --precision's dtype)"
    )
    p.add_argument("--ids-output", help="also write a JSONL with each row's id (JSONL id field, else line number)")
    p.add_argument("--overwrite", action="store_true", help="replace --output / --ids-output if they exist")
    p.add_argument("--text-field", default="text", help="JSONL field holding the text (default: text)")
    p.add_argument("--shard-size", type=positive_int, default=2048, help="texts per resumable shard (default: 2048)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--precision",
        choices=quantization.PRECISIONS,
        default="float32",
        help="quantize as sentence-transformers' quantize_embeddings: int8/uint8 (one byte a dim, needs "
        "--calibration), binary/ubinary (one bit a dim, packed into int8/uint8 bytes) (default: float32)",
    )
    p.add_argument(
        "--calibration",
        metavar="FILE",
        help="int8/uint8: a .npy of float embeddings (e.g. a float32 encode of a sample) whose per-dim min and "
        "max set the 255 buckets of every shard",
    )
    _add_prompt_args(p)
    _add_model_args(p)
    _add_cache_args(p)
    p.set_defaults(func=cmd_encode)

    p = _subparser(
        sub,
        "search",
        "Top-k semantic search of a corpus (a text/JSONL file, or embeddings saved by `encode`).",
        "embeddinggemma search --query 'Which planet is known as the Red Planet?' -k 3\n"
        "embeddinggemma search --corpus docs.npy --texts docs.jsonl --query 'red planet'",
    )
    p.add_argument("--query", "-q", action="append", required=True, help="a query (repeat for several)")
    p.add_argument(
        "--corpus",
        "-c",
        help="a .txt/.jsonl file (embedded with the document prompt) or a .npy from `encode` "
        "(default: the bundled demo corpus)",
    )
    p.add_argument("--texts", help="with a .npy corpus: the file it was encoded from, to print the texts")
    p.add_argument("--text-field", default="text", help="JSONL field holding the text (default: text)")
    p.add_argument("-k", type=positive_int, default=10, help="results per query (default: 10)")
    p.add_argument(
        "--precision",
        choices=("float32", *quantization.BINARY_PRECISIONS),
        default="float32",
        help="the corpus embeddings' precision: binary/ubinary (from encode --precision; a text corpus is "
        "quantized to it) are searched by Hamming distance and the candidates rescored with the float query "
        "(default: float32, cosine)",
    )
    p.add_argument(
        "--rescore-multiplier",
        type=positive_int,
        default=4,
        metavar="M",
        help="binary/ubinary: rescore the k x M nearest by Hamming distance (default: 4)",
    )
    _add_model_args(p)
    _add_cache_args(p)
    p.set_defaults(func=cmd_search)

    p = _subparser(
        sub,
        "similarity",
        "Cosine similarity between two lists of texts (or within one).",
        "embeddinggemma similarity --prompt-name STS -a 'The cat sits.' 'A dog runs.' -b 'A kitten is sitting.'",
    )
    p.add_argument("-a", nargs="+", required=True, metavar="TEXT", help="the first list (table rows)")
    p.add_argument("-b", nargs="+", metavar="TEXT", help="the second list (table columns; default: the first)")
    _add_prompt_args(p)
    _add_model_args(p, batch=False)
    _add_cache_args(p)
    p.set_defaults(func=cmd_similarity)

    p = _subparser(
        sub,
        "evaluate",
        "Retrieval metrics (trec_eval: nDCG@10, MAP@100, MRR@10, recall, precision) on a BEIR directory.",
        "embeddinggemma evaluate --data scifact --split test --dims 768,256 --output results.json",
        "Documents get the title prompt (title: none when untitled), queries the query prompt.",
    )
    p.add_argument("--data", required=True, help="BEIR directory: corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv")
    p.add_argument("--split", default="test", help="qrels split (default: test)")
    p.add_argument("--dims", help="Matryoshka widths, comma-separated (default: 768,512,256,128)")
    p.add_argument("--output", "-o", help="write {dim: {metric: value}} as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.add_argument("--query-prompt", help="literal query prefix (default: the model's query prompt)")
    p.add_argument("--document-prompt", help="literal prefix of untitled documents (default: the model's)")
    p.add_argument("--title-prompt", default="title: {title} | text: ", help="prefix of titled documents")
    p.add_argument("--ignore-identical-ids", action="store_true", help="never count a document with the query's id")
    p.add_argument("--chunk", type=positive_int, default=16384, help="documents embedded and searched at once")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_model_args(p)
    _add_cache_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = _subparser(
        sub,
        "mine",
        "Mine hard negatives for (query, positive) pairs, as sentence-transformers' mine_hard_negatives.",
        "embeddinggemma mine --input pairs.jsonl --output mined.jsonl --num-negatives 5 --relative-margin 0.05",
        "The output is a training input: JSONL (negatives list) or Parquet (negative_1..K). Rerun to resume.",
    )
    p.add_argument("--input", "-i", required=True, help="pairs in any training input format (JSONL, Parquet, ...)")
    p.add_argument("--output", "-o", required=True, help="a .jsonl or .parquet file")
    p.add_argument("--corpus", help="more candidates: a .txt (one a line) or .jsonl file (default: the positives)")
    p.add_argument("--text-field", default="text", help="the --corpus JSONL's text field (default: text)")
    p.add_argument("--columns", help='JSON column mapping, e.g. \'{"query": "question", "positive": "answer"}\'')
    p.add_argument("--num-negatives", type=positive_int, default=3, help="negatives per row (default: 3)")
    p.add_argument("--range-min", type=int, default=0, help="skip the N best candidates (default: 0)")
    p.add_argument("--range-max", type=positive_int, help="consider only the N best (default: derived)")
    p.add_argument("--max-score", type=float, help="drop candidates scoring above this")
    p.add_argument("--min-score", type=float, help="drop candidates scoring below this")
    p.add_argument("--absolute-margin", type=float, help="drop candidates within this of the positive's score")
    p.add_argument("--relative-margin", type=float, help="drop candidates above (1 - m) x the positive's score")
    p.add_argument("--sampling", choices=("top", "random"), default="top", help="the best, or random (default: top)")
    p.add_argument("--seed", type=int, default=0, help="for --sampling random (default: 0)")
    p.add_argument("--shard-size", type=positive_int, default=2048, help="texts per resumable embedding shard")
    p.add_argument("--query-prompt", help="literal query prefix (default: the model's query prompt)")
    p.add_argument("--document-prompt", help="literal candidate prefix (default: the model's document prompt)")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_model_args(p)
    _add_cache_args(p)
    p.set_defaults(func=cmd_mine)

    p = _subparser(
        sub,
        "serve",
        "Serve embeddings over HTTP: OpenAI's /v1/embeddings and text-embeddings-inference's /embed, batched.",
        "embeddinggemma serve --model ~/models/embeddinggemma-300m --port 8080",
        f"Needs the serve extra ({serve.INSTALL_HINT}). /health answers 200 once every batch shape is "
        "compiled; SIGTERM finishes the requests in flight and exits with status 0.",
    )
    _add_model_args(p, batch=False)
    serve.add_arguments(p)
    _add_cache_args(p)
    p.set_defaults(func=serve.run)

    p = _subparser(
        sub,
        "info",
        "Print the model's configuration, parameter count, devices and attention backend.",
        "embeddinggemma info --model ~/models/embeddinggemma-300m",
    )
    _add_model_args(p, batch=False)
    _add_cache_args(p)
    p.set_defaults(func=cmd_info)

    p = _subparser(
        sub,
        "convert",
        "Convert a sentence-transformers directory or Hub id to a native checkpoint, or back.",
        "embeddinggemma convert google/embeddinggemma-300m ckpt/native\nembeddinggemma convert ckpt/native ckpt/st",
    )
    p.add_argument("src", help="HF/ST directory, Hub id, or native checkpoint (the direction follows it)")
    p.add_argument("dst", help="output directory; must not exist (written atomically)")
    p.set_defaults(func=cmd_convert)

    p = _subparser(
        sub,
        "train",
        "Fine-tune with the contrastive Matryoshka loss.",
        "embeddinggemma train --config train_v5e-8 --set model=~/models/embeddinggemma-300m "
        "--set train_file=data/train.jsonl",
        f"Exit status {PREEMPTED} after SIGTERM (a checkpoint is saved): rerun with --resume.",
    )
    p.add_argument("--config", required=True, help="a JSON TrainConfig file, or a bundled one: train_tiny, ...")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output_dir")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in output_dir (and its export)")
    p.add_argument(
        "--set",
        type=_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field (JSON value), e.g. --set steps=100 --set output_dir=runs/x",
    )
    _add_cache_args(p)
    p.set_defaults(func=cmd_train)

    p = _subparser(
        sub,
        "aot",
        "Compile the encode and train steps for a TPU slice without a TPU and report memory and FLOPs per chip.",
        "embeddinggemma aot --topology v5e:2x4 --steps encode",
        "Needs the tpu extra.",
    )
    aot.add_arguments(p)
    p.set_defaults(func=aot.run)

    p = _subparser(
        sub,
        "benchmark",
        "Throughput of this encoder vs sentence-transformers on the same texts, in one run.",
        "embeddinggemma benchmark --model ~/models/embeddinggemma-300m --dtype bfloat16",
        "Needs torch and sentence-transformers.",
    )
    _add_model_option(p)
    benchmark.add_arguments(p)
    p.set_defaults(func=cmd_benchmark)

    p = _subparser(
        sub,
        "benchmark-serve",
        "Load-test an OpenAI-compatible embedding server: texts/s, tokens/s, p50/p99 latency, errors per level.",
        "embeddinggemma benchmark-serve --url http://127.0.0.1:8080 --concurrency 1,8,32 --workloads short,long",
        "Works against any server with /v1/embeddings (this one, infinity-emb, text-embeddings-inference).",
    )
    benchmark_serve.add_arguments(p)
    p.set_defaults(func=benchmark_serve.run)

    p = _subparser(
        sub,
        "benchmark-train",
        "Fine-tuning speed of this trainer vs sentence-transformers' trainer on the same data and settings.",
        "embeddinggemma benchmark-train --model ~/models/embeddinggemma-300m --steps 12",
        "Needs torch and sentence-transformers.",
    )
    _add_model_option(p)
    train_benchmark.add_arguments(p)
    p.set_defaults(func=train_benchmark.run)

    p = _subparser(
        sub,
        "verify",
        "Check that this machine gives the reference vectors: every backend and dtype, against golden vectors.",
        "embeddinggemma verify --model ~/models/embeddinggemma-300m --attention all --dtype float32,bfloat16\n"
        "embeddinggemma verify --model runs/ft/export --reference sentence-transformers",
        "--dtype and --attention take comma-separated lists (--attention all: every backend of this platform). "
        "Exit status 0 only if every row passes. Paste the report into bug reports.",
    )
    _add_model_args(p)
    verify.add_arguments(p)
    _add_cache_args(p)
    p.set_defaults(func=verify.run)

    p = _subparser(
        sub,
        "mteb",
        "Run MTEB tasks on this encoder with the prompts of mteb's google/embeddinggemma-300m entry.",
        "embeddinggemma mteb --tasks SciFact,STS12 --output results/mteb --dtype bfloat16",
        "Needs the mteb extra; downloads the tasks' data.",
    )
    _add_model_args(p)
    mteb.add_arguments(p)
    _add_cache_args(p)
    p.set_defaults(func=mteb.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "compilation_cache", None) and not args.no_compilation_cache:
        enable_compilation_cache(args.compilation_cache)
    try:
        return args.func(args) or 0
    except USER_ERRORS as e:
        if os.environ.get("EMBEDDINGGEMMA_DEBUG"):
            raise
        print(f"{PROG} {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except RuntimeError as e:  # XLA's out-of-memory is a JaxRuntimeError; the user's settings cause it
        if os.environ.get("EMBEDDINGGEMMA_DEBUG") or "RESOURCE_EXHAUSTED" not in str(e):
            raise
        print(f"{PROG} {args.command}: error: {OUT_OF_MEMORY} ({str(e).splitlines()[0]})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        resume = "; rerun the same command to resume from the last finished shard" if args.command == "encode" else ""
        print(f"{PROG} {args.command}: interrupted{resume}", file=sys.stderr)
        return 130


def run_command(name: str) -> None:
    """`embeddinggemma NAME ARGS` with this process's arguments (the scripts/ wrappers)."""
    sys.exit(main([name, *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
