"""scripts/device_report.sh: at tiny size on CPU, every section runs for real (the smoke test the compile-time
issue asks CI to run); against a stand-in `embeddinggemma` that records its arguments, the full size's
commands are ones the CLI accepts and a failing section is reported without stopping the rest."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from embeddinggemma.cli import build_parser
from tests.helpers import ROOT
from tests.helpers.cli import SCRIPT, cli_env

SECTIONS = [
    "verify",
    "encode vs sentence-transformers, bfloat16",
    "training vs sentence-transformers' trainer, bfloat16",
    "compile time, layers scanned vs unrolled",
]
STUB = """#!{python}
import json, os, sys
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
print("output of", sys.argv[1])
sys.exit(3 if sys.argv[1] == os.environ.get("STUB_FAILS") else 0)
"""


def _run(tmp_path: Path, size: str, fails: str = "") -> tuple[subprocess.CompletedProcess, str, list[list[str]]]:
    bin_dir, log, report = tmp_path / "bin", tmp_path / "calls.jsonl", tmp_path / "report.md"
    bin_dir.mkdir()
    stub = bin_dir / "embeddinggemma"
    stub.write_text(STUB.format(python=sys.executable))
    stub.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "MODEL": "/models/embeddinggemma-300m",
        "DEVICE": "cpu",
        "SIZE": size,
        "STUB_LOG": str(log),
        "STUB_FAILS": fails,
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "device_report.sh"), str(report)],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    return proc, report.read_text(), calls


@pytest.mark.parametrize("size", ["tiny", "full"])
def test_every_section_runs_a_command_the_cli_accepts(tmp_path: Path, size: str) -> None:
    proc, text, calls = _run(tmp_path, size)
    assert proc.returncode == 0, proc.stderr
    assert re.findall(r"^## (.+)$", text, re.M) == SECTIONS
    assert [call[0] for call in calls] == ["verify", "benchmark", "benchmark-train", "benchmark-compile"]
    parser = build_parser()
    for call in calls:
        args = parser.parse_args(call)  # an option the CLI no longer has exits here, naming it
        assert args.model == "/models/embeddinggemma-300m"
        assert f"$ embeddinggemma {' '.join(call)}" in text and f"output of {call[0]}" in text
    assert text.count("exit status 0") == 4
    verify, encode, train, _ = (parser.parse_args(call) for call in calls)
    assert verify.dtype == ("float32" if size == "tiny" else "float32,bfloat16")
    assert encode.dtype == train.dtype == "bfloat16"
    assert (train.steps, train.batch_size) == ((4, 8) if size == "tiny" else (12, 64))


def test_a_failing_section_is_reported_and_the_rest_still_runs(tmp_path: Path) -> None:
    proc, text, calls = _run(tmp_path, "tiny", fails="benchmark")
    assert proc.returncode == 3
    assert len(calls) == 4 and re.findall(r"^## (.+)$", text, re.M) == SECTIONS
    assert re.findall(r"^exit status (\d+)$", text, re.M) == ["0", "3", "0", "0"]


def test_the_tiny_report_runs_every_section_for_real(tiny_dir: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.md"
    env = {
        **cli_env(tiny_dir),
        "PATH": f"{SCRIPT.parent}{os.pathsep}{os.environ['PATH']}",
        "MODEL": str(tiny_dir),
        "DEVICE": "cpu",
        "SIZE": "tiny",
        "REFERENCE": "sentence-transformers",  # the golden vectors are the official checkpoint's
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "device_report.sh"), str(report)],
        env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    text = report.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert re.findall(r"^## (.+)$", text, re.M) == SECTIONS and text.count("exit status 0") == 4
    assert "PASS: this machine gives the reference vectors" in text
    assert re.search(r"^\| short: .* \| auto \| [\d,]+ \| [\d,]+ \| [\d.]+x \|", text, re.M)  # ours vs ST tok/s
    assert re.search(r"^ours / sentence-transformers: [\d.]+x examples/s", text, re.M)
    assert re.search(r"^\| encode \| 8 x 64 \| [\d.]+ \+ [\d.]+ = [\d.]+ \|", text, re.M)  # the compile table
