"""What the commands share: the model, compilation-cache and prompt options, `load_model`, and argument types."""

from __future__ import annotations

import argparse
import os
import textwrap
from pathlib import Path

from embeddinggemma.checkpoint import DEFAULT_MODEL
from embeddinggemma.encode.compilation import default_cache_dir
from embeddinggemma.encode.encoder import EmbeddingGemma
from embeddinggemma.model import quantized

PROG = "embeddinggemma"


def default_model() -> str:
    return os.environ.get("EMBEDDINGGEMMA_CHECKPOINT") or DEFAULT_MODEL


def positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def choice_list(allowed: tuple[str, ...]):
    """An argparse type: a comma-separated list of some of `allowed`, in the order given."""

    def parse(value: str) -> list[str]:
        chosen = [s.strip() for s in value.split(",") if s.strip()]
        if not chosen or set(chosen) - set(allowed):
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(allowed)}, got {value!r}")
        return chosen

    return parse


def clip(text: str, width: int = 90) -> str:
    """One line of at most `width` characters (whitespace collapsed, an ellipsis where cut)."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def subparser(
    sub: argparse._SubParsersAction, name: str, summary: str, example: str, note: str = ""
) -> argparse.ArgumentParser:
    """A command's parser: its one-line summary, a note, and an example in the description."""
    return sub.add_parser(
        name,
        help=summary,
        description=f"{summary} {note}\n\nexample:\n{textwrap.indent(example.strip(), '  ')}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_model_option(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        "-m",
        default=default_model(),
        help="checkpoint: HF/sentence-transformers directory, native checkpoint, or Hub id "
        "(default: $EMBEDDINGGEMMA_CHECKPOINT, else %(default)s)",
    )
    return g


def add_model_args(p: argparse.ArgumentParser, *, batch: bool = True) -> None:
    """--model and how to load it (`load_model`); with `batch`, --batch-size."""
    g = add_model_option(p)
    g.add_argument("--dtype", default="float32", help="float32 (default) or bfloat16; float16 overflows this model")
    g.add_argument("--mesh", help="device mesh spec, e.g. data=8 (default: one device)")
    g.add_argument("--attention", default="auto", help="attention backend (default: auto, chosen by platform)")
    g.add_argument(
        "--quantization",
        choices=quantized.MODES,
        help="store the weights quantized: int8 (per channel), int4 (blocks of 32) or mixed (the model card's "
        "int4 embeddings/MLP/Dense, int8 attention); needs the quant extra (default: float weights)",
    )
    if batch:
        g.add_argument("--batch-size", type=positive_int, default=32, help="texts per forward pass (default: 32)")


def add_layers_option(p: argparse.ArgumentParser) -> None:
    """--layers for the benchmarks: our model with its layers scanned and/or unrolled, a row each."""
    p.add_argument(
        "--layers",
        default="scanned",
        help="our layers: scanned (lax.scan; the default), unrolled, or both comma-separated (a row each)",
    )


def add_cache_args(p: argparse.ArgumentParser) -> None:
    """--compilation-cache / --no-compilation-cache: `main` turns JAX's persistent cache on from them."""
    g = p.add_argument_group("compilation cache")
    g.add_argument(
        "--compilation-cache",
        type=Path,
        default=default_cache_dir(),
        metavar="DIR",
        help="JAX's persistent compilation cache (default: $EMBEDDINGGEMMA_COMPILATION_CACHE, else %(default)s)",
    )
    g.add_argument("--no-compilation-cache", action="store_true", help="compile everything afresh, store nothing")


def add_prompt_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prompt-name", help="a prompt of the model, e.g. query, document, STS, Clustering")
    g.add_argument("--prompt", help="a literal prefix, e.g. 'task: search result | query: '")
    p.add_argument("--truncate-dim", type=positive_int, help="Matryoshka: keep the first D dims (768, 512, 256 or 128)")


def load_model(args: argparse.Namespace) -> EmbeddingGemma:
    """The model named by the options of `add_model_args`."""
    kwargs = {"dtype": args.dtype, "attention_impl": args.attention, "quantization": args.quantization}
    if args.mesh:
        kwargs["mesh"] = args.mesh
    return EmbeddingGemma.from_pretrained(args.model, **kwargs)
