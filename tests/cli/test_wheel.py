"""The package works from an installed wheel, in a fresh virtual environment, outside the source checkout:
every command's help, `info` and a 2-step `train` (with a bundled config) on the tiny checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from embeddinggemma.cli import build_parser
from tests.helpers import ROOT
from tests.helpers.retrieval import write_split

pytestmark = pytest.mark.slow


def _run(cmd: list[str | Path], cwd: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(map(str, cmd)), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A fresh venv with the wheel built from this checkout (and its dependencies from the package index)."""
    root = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", root, ROOT], root, env)
    (wheel,) = root.glob("embeddinggemma_jax-*.whl")
    venv.create(root / "venv", with_pip=True)
    python = root / "venv" / "bin" / "python"
    _run([python, "-m", "pip", "install", "-q", wheel], root, env, timeout=900)
    env |= {"PATH": f"{python.parent}{os.pathsep}{env['PATH']}", "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    env["EMBEDDINGGEMMA_COMPILATION_CACHE"] = str(root / "jax-cache")
    work = root / "work"  # outside the checkout: nothing can come from the source tree
    work.mkdir()
    return work, env


def test_installed_package_is_the_wheel(installed) -> None:
    work, env = installed
    where = _run(["python", "-c", "import embeddinggemma, sys; print(embeddinggemma.__file__)"], work, env).stdout
    assert "site-packages" in where and str(ROOT) not in where


def test_every_command_help(installed) -> None:
    work, env = installed
    assert "COMMAND" in _run(["embeddinggemma", "--help"], work, env).stdout
    commands = build_parser()._subparsers._group_actions[0].choices
    for name in commands:
        assert "example:" in _run(["embeddinggemma", name, "--help"], work, env).stdout, name


def test_info_and_two_train_steps(installed, tiny_dir: Path) -> None:
    work, env = installed
    info = _run(["embeddinggemma", "info", "--model", tiny_dir], work, env).stdout
    assert "embedding   48-d" in info
    train, evals = write_split(work / "data")
    sets = {"model": tiny_dir, "train_file": train, "eval_file": evals, "output_dir": work / "run", "steps": 2}
    sets |= {"tensorboard": "false", "log_every": 1}
    cmd = ["embeddinggemma", "train", "--config", "train_tiny", *(f"--set={k}={v}" for k, v in sets.items())]
    result = json.loads(_run(cmd, work, env).stdout)
    assert result["status"] == "completed" and result["step"] == 2
    assert (work / "run" / "export" / "model.safetensors").is_file()
    logged = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged if "loss" in row] == [1, 2]
