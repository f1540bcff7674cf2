"""`embeddinggemma benchmark` from a source checkout: python scripts/benchmark.py ARGS."""

from embeddinggemma.cli import run_command

run_command("benchmark")
