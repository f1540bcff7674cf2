"""`embeddinggemma convert` from a source checkout: python scripts/convert_checkpoint.py ARGS."""

from embeddinggemma.cli import run_command

run_command("convert")
