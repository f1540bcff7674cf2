"""`embeddinggemma parity` from a source checkout: python scripts/parity_report.py ARGS."""

from embeddinggemma.cli import run_command

run_command("parity")
