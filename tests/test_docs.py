"""The README and every docs page: their `embeddinggemma` commands run as written, and the README starts a
newcomer (the two commands first, at most 200 lines)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.helpers.cli import SCRIPT, cli_env

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OTHER_TESTS = (
    "train",
    "aot",
    "benchmark",
    "benchmark-train",
    "benchmark-compile",  # tests/bench/test_compile.py runs it
    "verify",  # tests/eval/test_verify.py runs it (its example needs the real checkpoint)
    "mteb",
    "mine",  # its example mines the code-search set; tests/eval/test_mining.py runs the command
    "serve",  # runs until stopped; tests/serve/test_server.py runs it
    "benchmark-serve",  # needs a running server; tests/serve/test_server.py runs it
)  # run in their own tests (slow, or need the real checkpoint or the network)


def cli_commands(page: Path) -> list[str]:
    """The `embeddinggemma ...` commands in a page's bash blocks (backslash continuations joined)."""
    lines = "\n".join(re.findall(r"```bash\n(.*?)```", page.read_text(encoding="utf-8"), re.S))
    lines = lines.replace("\\\n", " ").splitlines()
    return [line.strip() for line in lines if line.startswith("embeddinggemma ") and line.split()[1] not in OTHER_TESTS]


@pytest.mark.parametrize("page", [p for p in PAGES if cli_commands(p)], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_page_commands_run(page: Path, tiny_dir: Path, tmp_path: Path) -> None:
    """Each page's CLI examples run in order, as written, from a fresh directory laid out like the repository
    root, with the tiny checkpoint as the model."""
    (tmp_path / "embeddinggemma").symlink_to(ROOT / "embeddinggemma")
    env = {
        **cli_env(tiny_dir),
        "PATH": f"{SCRIPT.parent}{os.pathsep}{os.environ['PATH']}",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",  # for the `--mesh data=8` examples
    }
    for command in cli_commands(page):
        proc = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{command}\n{proc.stderr}"


def test_readme_opens_with_the_two_commands_and_stays_short() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = re.search(r"```bash\n(.*?)```", readme, re.S)[1]
    assert [line.split()[:2] for line in first_block.splitlines()] == [["make", "demo"], ["make", "test"]]
    assert readme.count("\n") <= 200
    assert cli_commands(ROOT / "README.md"), "the README shows no runnable command"
