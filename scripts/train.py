"""Fine-tune EmbeddingGemma: `python scripts/train.py --config configs/train_tiny.json [--resume] [--set k=v]`.

Exit status: 0 when the run completed, 143 when it was preempted (SIGTERM) after saving a checkpoint,
so a supervisor can rerun the same command with --resume.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from embeddinggemma.train import TrainConfig, train


def _override(item: str) -> tuple[str, object]:
    key, sep, value = item.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {item!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value  # a bare string


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a JSON TrainConfig (see configs/train_*.json)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output_dir")
    parser.add_argument(
        "--set",
        type=_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field (JSON value), e.g. --set steps=100 --set output_dir=runs/x",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = train(TrainConfig.from_file(args.config, **dict(args.set)), resume=args.resume)
    print(json.dumps(result, indent=2))
    return 143 if result["status"] == "preempted" else 0


if __name__ == "__main__":
    sys.exit(main())
