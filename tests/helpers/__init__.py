"""What the tests share: the tiny random checkpoint, training configs and data, retrieval sets, running the
command line in a subprocess, and the GCS emulator and multi-process workers."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
