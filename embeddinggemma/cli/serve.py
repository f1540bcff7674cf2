"""`embeddinggemma serve`: the OpenAI / TEI embedding server (`serve.server`)."""

from __future__ import annotations

import argparse
import math
import os
import sys

from embeddinggemma.cli.common import PROG, add_cache_args, add_model_args, load_model, positive_int, subparser
from embeddinggemma.serve.server import INSTALL_HINT, ServerConfig, WarmUpFailed, serve


def port(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {value!r}") from None
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port in 0..65535, got {n}")
    return n


def seconds(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if not (x > 0 and math.isfinite(x)):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value}")
    return x


def register(sub: argparse._SubParsersAction) -> None:
    p = subparser(
        sub,
        "serve",
        "Serve embeddings over HTTP: OpenAI's /v1/embeddings and text-embeddings-inference's /embed, batched.",
        "embeddinggemma serve --model ~/models/embeddinggemma-300m --port 8080",
        f"Needs the serve extra ({INSTALL_HINT}). /health answers 200 once every batch shape is "
        "compiled; SIGTERM finishes the requests in flight and exits with status 0.",
    )
    add_model_args(p, batch=False)
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s; 0.0.0.0: all)")
    g.add_argument("--port", type=port, default=8080, help="port (default: %(default)s; 0: any free port, logged)")
    g.add_argument("--served-model-name", help="the `model` clients send (default: the checkpoint directory's name)")
    g.add_argument(
        "--api-key",
        default=os.environ.get("EMBEDDINGGEMMA_API_KEY"),
        help="require 'Authorization: Bearer KEY' on the API endpoints (default: $EMBEDDINGGEMMA_API_KEY; "
        "/health and /metrics stay open)",
    )
    g = p.add_argument_group("batching")
    g.add_argument(
        "--max-batch-tokens",
        type=positive_int,
        help="padded tokens per device batch, rows x length (default: 1024 on CPU, 16384 on an accelerator); "
        "each length bucket's largest row count is the largest power of two within it, and smaller batches run "
        "at smaller powers of two (every one on CPU, every 4th on an accelerator)",
    )
    g.add_argument("--max-batch-size", type=positive_int, default=256, help="rows per device batch (default: 256)")
    g.add_argument("--max-queue", type=positive_int, default=4096, help="texts waiting, beyond which requests get 429")
    g.add_argument(
        "--batch-timeout-ms",
        type=float,
        default=2.0,
        help="how long a partial batch waits for more texts while the device is idle (default: 2)",
    )
    g.add_argument(
        "--warmup-threads",
        type=positive_int,
        default=1,
        help="batch shapes compiled at a time while warming up (default: 1; XLA:CPU already compiles one "
        "program on every core, so more helped nothing on 2 cores; try more on a many-core accelerator host)",
    )
    g = p.add_argument_group("request limits")
    g.add_argument(
        "--max-input-tokens",
        type=positive_int,
        help="longest input in tokens, with <bos>/<eos> and the prompt (default: the model's max_seq_length); "
        "longer inputs are truncated, or refused with truncate=false; fewer length buckets to compile",
    )
    g.add_argument("--max-inputs", type=positive_int, default=2048, help="inputs per request (default: 2048)")
    g.add_argument(
        "--max-request-bytes", type=positive_int, default=16 * 2**20, help="request body size limit (default: 16 MiB)"
    )
    g.add_argument(
        "--inline-request-bytes",
        type=positive_int,
        default=64 * 2**10,
        help="bodies up to this size are parsed and tokenized on the event loop, larger ones in a worker thread, "
        "so that /health and /metrics stay quick while large requests run (default: 64 KiB)",
    )
    g = p.add_argument_group("connections")
    g.add_argument(
        "--read-timeout",
        type=seconds,
        default=30.0,
        help="seconds for a request's line and headers to arrive, and as many again for its body; else 408 and "
        "the connection is closed (default: 30)",
    )
    g.add_argument(
        "--keep-alive-timeout",
        type=seconds,
        default=5.0,
        help="seconds an idle connection stays open between requests (default: 5)",
    )
    g.add_argument(
        "--shutdown-timeout",
        type=seconds,
        default=5.0,
        help="after SIGTERM, seconds before the connections left are closed; one waiting for its vectors is kept "
        "until they are sent, and then as long again (default: 5)",
    )
    g.add_argument(
        "--max-connections",
        type=positive_int,
        default=1000,
        help="open connections at most; one more is answered 503 and closed (default: 1000)",
    )
    add_cache_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = ServerConfig(
        host=args.host,
        port=args.port,
        served_model_name=args.served_model_name,
        api_key=args.api_key,
        max_batch_tokens=args.max_batch_tokens,
        max_batch_size=args.max_batch_size,
        max_queue=args.max_queue,
        batch_timeout_ms=args.batch_timeout_ms,
        warmup_threads=args.warmup_threads,
        max_input_tokens=args.max_input_tokens,
        max_inputs=args.max_inputs,
        max_request_bytes=args.max_request_bytes,
        read_timeout=args.read_timeout,
        keep_alive_timeout=args.keep_alive_timeout,
        shutdown_timeout=args.shutdown_timeout,
        max_connections=args.max_connections,
        inline_request_bytes=args.inline_request_bytes,
    )
    try:
        serve(lambda: load_model(args), args.model, config)
    except WarmUpFailed as e:
        print(f"{PROG} serve: error: {e}", file=sys.stderr)
        return 1
    return 0
