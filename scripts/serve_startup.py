"""Serve start-up: load a checkpoint and warm up the server's batcher as `embeddinggemma serve` does on this
platform, then print the load and warm-up seconds (docs/benchmarks.md, "Serve start-up").

    python scripts/serve_startup.py DIR --threads 1 --cache /tmp/jax-cache   # run twice: cold, then warm
"""

from __future__ import annotations

import argparse
import time

from embeddinggemma import EmbeddingGemma
from embeddinggemma.encode.compilation import enable_compilation_cache
from embeddinggemma.serve.server import ServerConfig, make_batcher


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="checkpoint directory")
    p.add_argument("--threads", type=int, default=1, help="--warmup-threads")
    p.add_argument("--max-input-tokens", type=int, default=512)
    p.add_argument("--cache", help="compilation cache directory (default: none, every shape compiles)")
    args = p.parse_args()
    if args.cache:
        enable_compilation_cache(args.cache)
    start = time.perf_counter()
    model = EmbeddingGemma.from_pretrained(args.model)
    loaded = time.perf_counter() - start
    batcher = make_batcher(model, ServerConfig(max_input_tokens=args.max_input_tokens, warmup_threads=args.threads))
    batcher.start()
    while batcher.state == "warming":
        time.sleep(0.05)
    batcher.close()
    if batcher.error is not None:
        raise SystemExit(f"warm-up failed: {batcher.error}")
    print(
        f"{len(batcher.shapes)} shapes, {args.threads} warm-up thread(s), cache {args.cache or 'none'}: "
        f"model loaded in {loaded:.1f} s, warmed up in {batcher.warmup_seconds:.1f} s"
    )


if __name__ == "__main__":
    main()
