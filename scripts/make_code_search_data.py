"""A docstring -> code retrieval set from Python sources (`embeddinggemma.train.code_search_data.write`):

python scripts/make_code_search_data.py runs/code-search-data            # this Python's stdlib
python scripts/make_code_search_data.py OUT --source path/to/package     # any tree of .py files
"""

import argparse
import sys
from pathlib import Path

from embeddinggemma.errors import InputError
from embeddinggemma.train.code_search_data import write

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("out_dir", type=Path)
p.add_argument("--source", type=Path, help="a tree of .py files (default: this Python's standard library)")
p.add_argument("--eval-fraction", type=float, default=0.15, help="share of modules held out for eval")
p.add_argument("--max-eval", type=int, default=300, help="eval queries kept")
p.add_argument("--seed", type=int, default=0)
args = p.parse_args()
try:
    n_train, n_eval = write(
        args.out_dir, args.source, eval_fraction=args.eval_fraction, max_eval=args.max_eval, seed=args.seed
    )
except InputError as e:
    sys.exit(f"make_code_search_data: error: {e}")
print(
    f"{args.out_dir}: {n_train} train and {n_eval} eval examples (also eval-beir/) from {args.source or 'the stdlib'}"
)
