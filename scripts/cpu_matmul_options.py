"""Does this CPU want YNNPACK off in float32? Prints `bench.cpu_options.table`:

JAX_PLATFORMS=cpu python scripts/cpu_matmul_options.py [--tokens 7680] [--repeats 7]
"""

import argparse

from embeddinggemma.bench.cpu_options import table

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--tokens", type=int, default=7680, help="rows of each matmul (batch x length), e.g. 4 x 1920")
p.add_argument("--repeats", type=int, default=7)
args = p.parse_args()
for line in table(args.tokens, args.repeats):
    print(line, flush=True)
