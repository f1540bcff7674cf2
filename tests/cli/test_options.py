"""Every command keeps its options: options.json holds each option's flags, destination, action, default,
choices, whether required, nargs and metavar, as the single-module CLI defined them before the package was
split into subpackages, plus what later changes added on purpose (benchmark and benchmark-train --layers,
benchmark-train --device and --profile, aot --layers, the benchmark-compile command, serve
--warmup-threads, verify --overwrite, serve's --read-timeout, --keep-alive-timeout, --shutdown-timeout,
--max-connections and --inline-request-bytes). A change that adds, removes or alters an option updates the file
with it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from embeddinggemma.cli import build_parser

BEFORE = json.loads((Path(__file__).with_name("options.json")).read_text(encoding="utf-8"))
PATH_DEFAULTS = ("golden", "compilation_cache")  # where the package or the cache lives: not a choice of the CLI


def options(parser: argparse.ArgumentParser) -> dict[str, list]:
    out = {}
    for a in parser._actions:  # argparse has no public accessor
        if isinstance(a, argparse._HelpAction):
            continue
        default = "<path>" if a.dest in PATH_DEFAULTS else repr(a.default)
        choices = list(a.choices) if a.choices else None
        flags = " ".join(a.option_strings) or a.dest
        out[flags] = [a.dest, type(a).__name__, default, choices, a.required, a.nargs, a.metavar]
    return out


@pytest.fixture(scope="module")
def commands(monkeypatch_module: pytest.MonkeyPatch) -> dict[str, argparse.ArgumentParser]:
    return build_parser()._subparsers._group_actions[0].choices


@pytest.fixture(scope="module")
def monkeypatch_module():
    """Defaults that come from the environment, as the snapshot was taken."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("EMBEDDINGGEMMA_CHECKPOINT", "EMBEDDINGGEMMA_API_KEY"):
            mp.setenv(name, "")
        yield mp


def test_the_same_commands() -> None:
    assert sorted(build_parser()._subparsers._group_actions[0].choices) == sorted(BEFORE)


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_each_command_keeps_its_options(name: str, commands: dict[str, argparse.ArgumentParser]) -> None:
    assert options(commands[name]) == BEFORE[name]
