"""The `embeddinggemma` command line: convert, encode, search, similarity, info, train, aot.

Every command takes the checkpoint from --model (default: $EMBEDDINGGEMMA_CHECKPOINT, else the Hub id
google/embeddinggemma-300m). Bad input ends the command with exit status 1 and one line on stderr, never a
traceback; usage errors exit with status 2 (argparse's convention).
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

from embeddinggemma import corpus
from embeddinggemma.encoder import EmbeddingGemma

HUB_ID = "google/embeddinggemma-300m"
PROG = "embeddinggemma"


def default_model() -> str:
    return os.environ.get("EMBEDDINGGEMMA_CHECKPOINT") or HUB_ID


# ---------------------------------------------------------------------------------------------- commands


def cmd_convert(args: argparse.Namespace) -> None:
    from embeddinggemma.checkpoint import convert, is_native

    direction = "native -> sentence-transformers" if is_native(args.src) else "sentence-transformers -> native"
    print(f"{convert(args.src, args.dst)}  ({direction})")


def cmd_encode(args: argparse.Namespace) -> None:
    job = corpus.EncodeJob.prepare(args.input, args.output, text_field=args.text_field, shard_size=args.shard_size)
    model = load_model(args)
    emb = job.run(
        model,
        model_id=args.model,
        prompt_name=args.prompt_name,
        prompt=args.prompt,
        truncate_dim=args.truncate_dim,
        batch_size=args.batch_size,
        ids_out=args.ids_output,
        progress=not args.no_progress,
        log=lambda msg: print(msg, file=sys.stderr),
    )
    print(f"wrote {args.output}: {emb.shape[0]} x {emb.shape[1]} float32")


def cmd_search(args: argparse.Namespace) -> None:
    source = Path(args.corpus) if args.corpus else corpus.bundled_corpus()
    if source.suffix == ".npy":
        records = corpus.read_records(args.texts, text_field=args.text_field) if args.texts else None
        corpus_emb = corpus.load_embeddings(source, rows=len(records) if records else None)
        model = load_model(args)
    else:
        records = corpus.read_records(source, text_field=args.text_field)
        model = load_model(args)
        corpus_emb = model.encode_document([r.text for r in records], batch_size=args.batch_size)
    for query, hits in zip(args.query, corpus.search(model, args.query, corpus_emb, args.k), strict=True):
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


def cmd_info(args: argparse.Namespace) -> None:
    import jax

    from embeddinggemma.attention import resolve

    model = load_model(args)
    cfg = model.config
    n_full = sum(t == "full_attention" for t in cfg.layer_types)
    params = sum(x.size for x in jax.tree.leaves(model.params))
    devices = jax.devices()
    rows = {
        "model": args.model,
        "layers": f"{cfg.num_layers} ({n_full} global, {cfg.num_layers - n_full} sliding with radius "
        f"{cfg.sliding_window_radius})",
        "hidden": f"{cfg.hidden_size}, MLP {cfg.intermediate_size}, heads {cfg.num_heads} query / "
        f"{cfg.num_kv_heads} key-value x {cfg.head_dim}",
        "vocabulary": cfg.vocab_size,
        "max tokens": cfg.max_seq_length,
        "embedding": f"{cfg.embedding_dim}-d (dense head {' -> '.join(map(str, cfg.dense_features))})",
        "prompts": ", ".join(model.prompts) or "(none)",
        "parameters": f"{params:,} ({model.dtype})",
        "devices": f"{len(devices)} x {devices[0].platform} ({devices[0].device_kind})",
        "mesh": args.mesh or "none (one device)",
        "attention": f"sliding {resolve(args.attention, cfg.sliding_window_radius)}, global "
        f"{resolve(args.attention, None)} (requested {args.attention!r})",
    }
    for key, value in rows.items():
        print(f"{key:<11} {value}")


def cmd_script(script: str) -> Callable[[argparse.Namespace], None]:
    """A command that runs scripts/<script> of the source tree with the command's other arguments."""

    def run(args: argparse.Namespace) -> None:
        import runpy

        path = Path(__file__).resolve().parent.parent / "scripts" / script
        if not path.is_file():
            raise corpus.InputError(f"{path} not found: this command needs a source checkout of embeddinggemma-jax")
        sys.argv = [str(path), *args.rest]
        runpy.run_path(str(path), run_name="__main__")

    return run


# ---------------------------------------------------------------------------------------------- helpers


def load_model(args: argparse.Namespace) -> EmbeddingGemma:
    kwargs = {"dtype": args.dtype, "attention_impl": args.attention}
    if args.mesh:
        kwargs["mesh"] = args.mesh
    return EmbeddingGemma.from_pretrained(args.model, **kwargs)


def _clip(text: str, width: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


# ---------------------------------------------------------------------------------------------- parser


def _add_model_args(p: argparse.ArgumentParser, *, batch: bool = True) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        "-m",
        default=default_model(),
        help="checkpoint: HF/sentence-transformers directory, native checkpoint, or Hub id "
        "(default: $EMBEDDINGGEMMA_CHECKPOINT, else %(default)s)",
    )
    g.add_argument("--dtype", default="float32", help="float32 (default) or bfloat16; float16 overflows this model")
    g.add_argument("--mesh", help="device mesh spec, e.g. data=8 (default: one device)")
    g.add_argument("--attention", default="auto", help="attention backend (default: auto, chosen by platform)")
    if batch:
        g.add_argument("--batch-size", type=_positive_int, default=32, help="texts per forward pass (default: 32)")


def _add_prompt_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prompt-name", help="a prompt of the model, e.g. query, document, STS, Clustering")
    g.add_argument("--prompt", help="a literal prefix, e.g. 'task: search result | query: '")
    p.add_argument(
        "--truncate-dim", type=_positive_int, help="Matryoshka: keep the first D dims (768, 512, 256 or 128)"
    )


def _subparser(
    sub: argparse._SubParsersAction, name: str, summary: str, example: str, note: str = "", add_help: bool = True
) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=summary,
        add_help=add_help,
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
        "convert",
        "Convert a sentence-transformers directory or Hub id to a native checkpoint, or back.",
        "embeddinggemma convert google/embeddinggemma-300m ckpt/native\nembeddinggemma convert ckpt/native ckpt/st",
    )
    p.add_argument("src", help="HF/ST directory, Hub id, or native checkpoint (the direction follows it)")
    p.add_argument("dst", help="output directory; must not exist (written atomically)")
    p.set_defaults(func=cmd_convert)

    p = _subparser(
        sub,
        "encode",
        "Embed a text file (one text a line) or JSONL (a text field) into a .npy, in resumable shards.",
        "embeddinggemma encode --input docs.jsonl --output docs.npy --prompt-name document --ids-output docs.ids.jsonl",
        "An interrupted run resumes from its last finished shard when rerun with the same arguments.",
    )
    p.add_argument("--input", "-i", required=True, help="a .txt file (one text a line) or .jsonl file")
    p.add_argument("--output", "-o", required=True, help="the .npy to write (float32, one row per text)")
    p.add_argument("--ids-output", help="also write a JSONL with each row's id (JSONL id field, else line number)")
    p.add_argument("--text-field", default="text", help="JSONL field holding the text (default: text)")
    p.add_argument("--shard-size", type=_positive_int, default=2048, help="texts per resumable shard (default: 2048)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_prompt_args(p)
    _add_model_args(p)
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
    p.add_argument("-k", type=_positive_int, default=10, help="results per query (default: 10)")
    _add_model_args(p)
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
    p.set_defaults(func=cmd_similarity)

    p = _subparser(
        sub,
        "info",
        "Print the model's configuration, parameter count, devices and attention backend.",
        "embeddinggemma info --model ~/models/embeddinggemma-300m",
    )
    _add_model_args(p, batch=False)
    p.set_defaults(func=cmd_info)

    # Pass-through commands: every argument, --help included, goes to the script's own parser.
    for name, script, summary, example in (
        (
            "train",
            "train.py",
            "Fine-tune with the contrastive Matryoshka loss (scripts/train.py).",
            "embeddinggemma train --config configs/train_tiny.json --set steps=100",
        ),
        (
            "aot",
            "aot_compile.py",
            "Compile encode and train steps for a TPU slice without a TPU (scripts/aot_compile.py).",
            "embeddinggemma aot --topology v5e:2x4",
        ),
    ):
        p = _subparser(sub, name, summary, example, f"`{PROG} {name} --help` lists its options.", add_help=False)
        p.set_defaults(func=cmd_script(script), passthrough=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, args.rest = parser.parse_known_args(argv)
    if args.rest and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(args.rest)}")
    try:
        args.func(args)
    except (ValueError, OSError) as e:  # CheckpointError and corpus.InputError are ValueErrors
        print(f"{PROG} {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        resume = "; rerun the same command to resume from the last finished shard" if args.command == "encode" else ""
        print(f"{PROG} {args.command}: interrupted{resume}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
