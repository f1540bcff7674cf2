"""The command line's argument space fuzzed: every call exits 0, or 1 / 2 with one line naming the problem."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from embeddinggemma import EmbeddingGemma
from tests.helpers.cli import assert_one_line_error
from tests.helpers.faults import (
    FUZZ,
    PROBE,
    encodable,
    run_main,
)

# ------------------------------------------------------------------------------------ the CLI, fuzzed

# Arguments as a shell passes them: any text, with a non-UTF-8 byte arriving as a lone surrogate
# (Python's surrogateescape). A leading "-" would make it an option, so none starts with one.
ARG_TEXT = st.text(st.characters(exclude_categories=()), max_size=10).filter(lambda t: not t.startswith("-"))


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory: pytest.TempPathFactory, tiny_model: EmbeddingGemma) -> Path:
    """Inputs for the CLI fuzzing, good and bad, and a directory for fresh outputs."""
    root = tmp_path_factory.mktemp("cli-fuzz")
    (root / "good.txt").write_text("one text\n\nanother text\n", encoding="utf-8")
    rows = [{"id": f"d{i}", "text": t} for i, t in enumerate(PROBE)]
    (root / "good.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (root / "bad.jsonl").write_text('{"text": "fine"}\nnot json\n', encoding="utf-8")
    (root / "empty.txt").write_text("\n\n", encoding="utf-8")
    (root / "latin1.txt").write_bytes(b"caf\xe9\n")
    np.save(root / "emb.npy", tiny_model.encode_document(PROBE))
    np.save(root / "wide.npy", np.ones((3, 96), np.float32))
    (root / "garbage.npy").write_bytes(random.Random(0).randbytes(300))
    (root / "existing.npy").write_bytes(b"not mine to overwrite")
    (root / "a_dir").mkdir()
    (root / "out").mkdir()
    return root


class Argv:
    """Builds one command line from hypothesis draws, recording whether every part of it is valid and
    what a failure's message may name."""

    def __init__(self, draw: Callable[[st.SearchStrategy], Any], command: str):
        self.draw, self.argv, self.valid, self.names = draw, [command], True, [command]

    def pick(self, option: str | None, good: list[str], bad: list[tuple[str, str]], *, optional: bool = True) -> str:
        """Add `option VALUE` (or VALUE alone): absent (when optional), a good value, or (1 in 4) a bad one,
        which adds what its error message should name. Returns the value ("" when absent)."""
        kind = self.draw(st.sampled_from(["absent", "good", "good", "bad"] if optional else ["good"] * 3 + ["bad"]))
        if kind == "absent" or (kind == "bad" and not bad):
            return ""
        if kind == "good":
            value = self.draw(st.sampled_from(good))
        else:
            value, name = self.draw(st.sampled_from(bad))
            self.valid = False
            self.names.append(name)
        self.argv += [option, value] if option else [value]
        return value

    def texts(self, option: str, max_size: int = 3, *, repeat: bool = False) -> list[str]:
        """`option T1 T2 ...`, or `option T1 option T2 ...` (`repeat`) with arbitrary texts."""
        texts = self.draw(st.lists(ARG_TEXT, min_size=1, max_size=max_size))
        if not all(map(encodable, texts)):
            self.valid = False
            self.names.append("Unicode")
        self.argv += [x for t in texts for x in (option, t)] if repeat else [option, *texts]
        return texts

    def model_args(self, tiny: Path, root: Path, *, dtypes: tuple[str, ...] = ("float32",)) -> None:
        bad = [(str(root / "nope"), "nope"), (str(root / "good.txt"), "good.txt"), ("memory://none", "memory://none")]
        self.pick("--model", [str(tiny)], bad)
        self.pick("--dtype", list(dtypes), [("float16", "float16"), ("int8", "int8")])
        self.pick("--attention", ["auto", "dense"], [("bogus", "bogus")])
        self.pick("--mesh", ["data=-1"], [("data=3", "data=3"), ("nonsense", "nonsense")])

    def prompt_args(self) -> None:
        if self.draw(st.booleans()):
            self.pick("--prompt-name", ["query", "STS", "document"], [("nope", "nope"), ("", "prompt_name")])
        else:
            self.pick("--prompt", ["q: ", ""], [("word " * 300, "prompt"), ("q\udcff: ", "prompt")])
        self.pick("--truncate-dim", ["1", "16", "48"], [("49", "truncate_dim"), ("0", "0"), ("x", "x")])


@st.composite
def cli_calls(draw: Callable[[st.SearchStrategy], Any], tiny: Path, root: Path) -> tuple[list[str], bool, list[str]]:
    """(argv, whether it is valid, what a failure may name) for one cheap command."""
    command = draw(st.sampled_from(["similarity", "search", "encode", "info", "convert"]))
    a = Argv(draw, command)
    batch = (["1", "8"], [("0", "0"), ("-2", "-2"), ("many", "many")])
    fresh = str(root / "out" / "{fresh}")  # a new name on each run (hypothesis replays draws)
    if command == "similarity":
        a.texts("-a")
        if draw(st.booleans()):
            a.texts("-b")
        a.prompt_args()
        a.model_args(tiny, root)
    elif command == "search":
        a.texts("--query", max_size=2, repeat=True)
        a.pick("-k", ["1", "3"], [("0", "0"), ("x", "x")])
        corpus = a.pick(
            "--corpus",
            [str(root / "good.jsonl"), str(root / "good.txt"), str(root / "emb.npy")],
            [(str(root / n), n) for n in ("missing.jsonl", "bad.jsonl", "empty.txt", "a_dir", "garbage.npy")]
            + [(str(root / "wide.npy"), "96")],
        )
        if corpus.endswith("emb.npy"):
            a.pick("--texts", [str(root / "good.jsonl")], [(str(root / "good.txt"), "rows")])
        if corpus.endswith("good.jsonl"):
            a.pick("--text-field", ["text"], [("nope", "nope")])
        a.pick("--batch-size", *batch)
        a.model_args(tiny, root)
    elif command == "encode":
        src = a.pick(
            "--input",
            [str(root / "good.txt"), str(root / "good.jsonl")],
            [(str(root / n), n) for n in ("missing.txt", "bad.jsonl", "empty.txt", "latin1.txt")],
            optional=False,
        )
        overwrite = draw(st.booleans())
        out_bad = [(str(root / "a_dir"), "a_dir"), (src or str(root / "good.txt"), "input")]
        out = a.pick(
            "--output",
            [fresh + ".npy"],
            out_bad + ([] if overwrite else [(str(root / "existing.npy"), "exists")]),
            optional=False,
        )
        a.pick("--ids-output", [fresh + ".ids.jsonl"], [(out, "same file")] if out else [])
        if overwrite:
            a.argv.append("--overwrite")
        if src.endswith(".jsonl"):
            a.pick("--text-field", ["text"], [("nope", "nope")])
        a.pick("--shard-size", ["1", "2", "100"], [("0", "0")])
        a.pick("--batch-size", *batch)
        a.prompt_args()
        a.model_args(tiny, root)
        a.argv.append("--no-progress")
    elif command == "info":
        a.model_args(tiny, root, dtypes=("float32", "bfloat16"))
    else:
        a.pick(None, [str(tiny)], [(str(root / "nope"), "nope"), (str(root / "good.txt"), "good.txt")], optional=False)
        a.pick(None, [fresh], [(str(root / "a_dir"), "a_dir")], optional=False)
    return a.argv, a.valid, a.names


RUNS = itertools.count()


@settings(FUZZ, max_examples=max(FUZZ.max_examples - 5, 10))
@given(data=st.data())
def test_cli_argument_space(
    cli_in_process: None, tiny_dir: Path, cli_files: Path, capsys: pytest.CaptureFixture, data: st.DataObject
) -> None:
    """Every command line ends in status 0 (when all of it is valid), 1 with one line naming the problem,
    or 2 (argparse usage); never a traceback. A failed encode leaves no output behind."""
    argv, valid, names = data.draw(cli_calls(tiny_dir, cli_files), label="call")
    fresh = f"run{next(RUNS)}"
    argv = [arg.replace("{fresh}", fresh) for arg in argv]
    status, out, err = run_main(argv, capsys)
    event(f"{argv[0]}: status {status}")  # pytest --hypothesis-show-statistics shows the mix
    assert "Traceback" not in out + err, err
    if valid:
        assert status == 0, f"valid {argv} failed: {err}"
    else:
        assert status in (1, 2), f"invalid {argv} gave status {status}: {out}"
    if status == 1:
        assert_one_line_error(err, argv[0], *names)
    if argv[0] == "encode":
        output = Path(argv[argv.index("--output") + 1])
        if status == 0:
            rows = 2 if argv[argv.index("--input") + 1].endswith(".txt") else len(PROBE)
            width = int(argv[argv.index("--truncate-dim") + 1]) if "--truncate-dim" in argv else 48
            assert np.load(output).shape == (rows, width)
        elif output.parent == cli_files / "out":
            assert not output.exists() and not output.with_name(output.name + ".partial").exists()
        assert (cli_files / "good.txt").read_text() == "one text\n\nanother text\n", "an input was overwritten"
