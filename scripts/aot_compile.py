"""`embeddinggemma aot` from a source checkout: python scripts/aot_compile.py ARGS."""

from embeddinggemma.cli import run_command

run_command("aot")
