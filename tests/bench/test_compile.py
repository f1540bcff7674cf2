"""`embeddinggemma benchmark-compile`: both layouts of each program, compiled afresh, in one table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from embeddinggemma import cli


def test_compile_benchmark_times_both_layouts(tiny_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["benchmark-compile", "--model", str(tiny_dir), "--programs", "encode,depth"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| encode")]
    assert [r.split("|")[2].strip() for r in rows] == ["8 x 64", "32 x 256", "8 x 256", "8 x 64"]  # max 256 tokens
    assert "| encode, 8 layers |" in rows[-1]  # the tiny model's 4 layers, twice
    for row in rows:
        (unrolled, scanned) = [tuple(map(float, m)) for m in re.findall(r"([\d.]+) \+ ([\d.]+) = ([\d.]+)", row)]
        for lower, compile_s, total in (unrolled, scanned):
            assert lower > 0 and compile_s > 0 and total == pytest.approx(lower + compile_s, abs=0.011)
        assert float(row.split("|")[5].strip().removesuffix("x")) == pytest.approx(unrolled[2] / scanned[2], abs=0.06)


def test_unknown_programs_are_a_usage_error(tiny_dir: Path) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["benchmark-compile", "--model", str(tiny_dir), "--programs", "encode,nonsense"])
    assert e.value.code == 2
