"""Regenerate the golden vectors `embeddinggemma verify` ships (embeddinggemma/data/golden-embeddinggemma-300m.npz):
sentence-transformers float32 on CPU over the verification set, stored with the checkpoint's SHA-256 and the
library versions. Needs torch and sentence-transformers; run once per reference change:

    python scripts/make_golden.py --model ~/models/embeddinggemma-300m
"""

import argparse
from pathlib import Path

from embeddinggemma.eval import verify


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="the official checkpoint: a directory or Hub id")
    p.add_argument("--name", default="google/embeddinggemma-300m", help="what the report calls it")
    p.add_argument("--output", default=str(verify.GOLDEN))
    args = p.parse_args()
    golden = verify.make_golden(args.model, name=args.name)
    golden.save(Path(args.output))
    print(f"{args.output}: {len(golden.items)} vectors of {args.name}, {golden.meta['versions']}")


if __name__ == "__main__":
    main()
