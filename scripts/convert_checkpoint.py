"""Convert between the Hugging Face / sentence-transformers layout and our native orbax checkpoint.

The direction follows the source: an HF directory or Hub id becomes a native checkpoint, a native
checkpoint becomes a sentence-transformers directory that `SentenceTransformer(dir)` loads.

    python scripts/convert_checkpoint.py google/embeddinggemma-300m ckpt/native
    python scripts/convert_checkpoint.py ckpt/native ckpt/st-export
"""

from __future__ import annotations

import argparse

from embeddinggemma.checkpoint import convert


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="HF/ST directory, Hub id, or native checkpoint directory")
    parser.add_argument("dst", help="output directory (must not exist; written atomically)")
    args = parser.parse_args()
    print(convert(args.src, args.dst))


if __name__ == "__main__":
    main()
