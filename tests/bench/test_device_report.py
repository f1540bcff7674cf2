"""scripts/device_report.sh at tiny size on the CPU (the smoke test of the GPU machines' report): every
section runs, passes, and lands in the one report file."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.helpers import ROOT
from tests.helpers.cli import SCRIPT, cli_env


def test_device_report_runs_every_section(tiny_dir: Path, tmp_path: Path) -> None:
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
    sections = re.findall(r"^## (.+)$", text, re.M)
    assert sections == [
        "verify",
        "encode vs sentence-transformers, bfloat16",
        "training vs sentence-transformers' trainer, bfloat16",
        "compile time, layers scanned vs unrolled",
    ]
    assert text.count("exit status 0") == 4
    assert "PASS: this machine gives the reference vectors" in text
    assert re.search(r"^\| short: .* \| auto \| [\d,]+ \| [\d,]+ \| [\d.]+x \|", text, re.M)  # ours vs ST tok/s
    assert re.search(r"^ours / sentence-transformers: [\d.]+x examples/s", text, re.M)
    assert re.search(r"^\| serve warm-up \| \d+ shapes", text, re.M)
