"""The `embeddinggemma` command line: encode, search, similarity, evaluate, mine, serve, info, convert, train,
aot, benchmark, benchmark-serve, benchmark-train, benchmark-compile, verify, mteb.

Every command takes the checkpoint from --model (default: $EMBEDDINGGEMMA_CHECKPOINT, else the Hub id
google/embeddinggemma-300m). Bad input ends the command with exit status 1 and one line on stderr, never a
traceback (EMBEDDINGGEMMA_DEBUG=1 shows it); usage errors exit with status 2 (argparse's convention).
Commands that run the model keep JAX's compiled programs in a persistent cache, so a second run does not
compile again.

Each command is a module of this package with `register(subparsers)`, which adds its parser, and
`run(args)`, which turns the parsed options into typed arguments of a library function. This module
alone configures logging and turns errors into exit statuses.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence

from embeddinggemma.checkpoint.native import ORBAX_LOGGERS
from embeddinggemma.cli import (
    aot,
    benchmark,
    benchmark_compile,
    benchmark_serve,
    benchmark_train,
    common,
    convert,
    encode,
    evaluate,
    info,
    mine,
    mteb,
    search,
    serve,
    similarity,
    train,
    verify,
)
from embeddinggemma.encode import compilation
from embeddinggemma.serve.metrics import access_logger

PROG = common.PROG
COMMANDS = (
    encode,
    search,
    similarity,
    evaluate,
    mine,
    serve,
    info,
    convert,
    train,
    aot,
    benchmark,
    benchmark_serve,
    benchmark_train,
    benchmark_compile,
    verify,
    mteb,
)
LOGS_PROGRESS = ("train", "serve")  # long-running commands that log at INFO what they are doing
# A failure the user can cause (a bad file, option or value, a missing optional dependency, a diverged run).
USER_ERRORS = (ValueError, OSError, ImportError, FloatingPointError)
OUT_OF_MEMORY = (
    "out of device memory: lower --batch-size (training: global_batch_size, or set grad_cache_chunk), "
    "use --dtype bfloat16, or spread the work over more devices with --mesh"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0] + "\n\nexample:\n  embeddinggemma search --query 'Which planet is red?'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def configure_logging(command: str) -> None:
    """INFO records with a timestamp for the long-running commands; the server's access log as bare JSON lines."""
    if command not in LOGS_PROGRESS:
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    if not os.environ.get("EMBEDDINGGEMMA_DEBUG"):
        logging.getLogger("absl").setLevel(logging.WARNING)  # orbax's INFO: ~20 lines of internals per checkpoint
    if command == "serve":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access_logger.addHandler(handler)
        access_logger.propagate = False


def mute_aftermath() -> None:
    """After a one-line error, the process ends: what orbax and TensorStore's worker threads still report of a
    failed read or write as they wind down (logs, unraisable exceptions, never-awaited coroutines) is muted."""
    for name in ORBAX_LOGGERS:
        logging.getLogger(name).disabled = True
    sys.unraisablehook = lambda unraisable: None
    warnings.filterwarnings("ignore", r"coroutine '.*' was never awaited", RuntimeWarning)


def main(argv: Sequence[str] | None = None, *, process_ends: bool | None = None) -> int:
    """Run one command; its exit status. `process_ends` (default: when `argv` is None, i.e. the console script)
    says the process exits right after, so the stragglers of a failure may be muted."""
    args = build_parser().parse_args(argv)
    configure_logging(args.command)
    if getattr(args, "compilation_cache", None) and not args.no_compilation_cache:
        compilation.enable_compilation_cache(args.compilation_cache)
    debug = bool(os.environ.get("EMBEDDINGGEMMA_DEBUG"))
    try:
        return args.func(args) or 0
    except USER_ERRORS as e:
        if debug:
            raise
        print(f"{PROG} {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
    except RuntimeError as e:  # XLA's out-of-memory is a JaxRuntimeError; the user's settings cause it
        if debug or "RESOURCE_EXHAUSTED" not in str(e):
            raise
        print(f"{PROG} {args.command}: error: {OUT_OF_MEMORY} ({str(e).splitlines()[0]})", file=sys.stderr)
    except KeyboardInterrupt:
        resume = "; rerun the same command to resume from the last finished shard" if args.command == "encode" else ""
        print(f"{PROG} {args.command}: interrupted{resume}", file=sys.stderr)
        return 130
    if argv is None if process_ends is None else process_ends:
        mute_aftermath()
    return 1


def run_command(name: str) -> None:
    """`embeddinggemma NAME ARGS` with this process's arguments (the scripts/ wrappers)."""
    sys.exit(main([name, *sys.argv[1:]], process_ends=True))
