"""`embeddinggemma train` from a source checkout: python scripts/train.py ARGS."""

from embeddinggemma.cli import run_command

run_command("train")
