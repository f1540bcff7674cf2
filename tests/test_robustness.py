"""Robustness: property-based tests over the API and the CLI's argument space, and fault injection.

The error policy under test: a failure a user can cause is one line on stderr naming the thing and exit
status 1 (2 for usage errors), never a traceback; in the API a ValueError / TypeError / OSError naming it.
Outputs are written atomically, so a corrupt checkpoint file, a full disk, kill -9 or SIGTERM at any point
leaves either no output or a complete one, and rerunning the command succeeds.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from embeddinggemma import EmbeddingGemma, cli, files
from embeddinggemma.config import CheckpointError

SCRIPT = Path(sys.executable).with_name("embeddinggemma")
PROBE = ["The quick brown fox.", "Paris is the capital of France.", "def f(x): return x"]
ARG_NAMES = ("texts", "prompt", "truncate_dim", "batch_size")
# ROBUSTNESS_EXAMPLES=500 fuzzes deeper (and ROBUSTNESS_RANDOM=1 with fresh examples each run).
FUZZ = settings(
    max_examples=int(os.environ.get("ROBUSTNESS_EXAMPLES", 30)),
    deadline=None,
    database=None,  # no .hypothesis/ directory in the checkout
    derandomize=not os.environ.get("ROBUSTNESS_RANDOM"),  # by default the same examples each run: CI is stable
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


def shared_cache() -> Path:
    """The compilation cache the CLI subprocesses of tests/test_cli.py use: warm after a first run."""
    return Path(os.environ.get("PYTEST_CLI_CACHE", Path(tempfile.gettempdir()) / "eg-test-jax-cache"))


def interrupted_cache() -> Path:
    """The compilation cache of processes these tests kill, apart from the shared one: JAX writes a cache
    entry in place (not atomically), so a kill during a write leaves a truncated entry that every later
    process warns about. It persists too (a copy elsewhere would not do: the cache directory is part of
    every entry's key), so only a first run compiles the training step."""
    return shared_cache().with_name(shared_cache().name + "-interrupted")


def cli_env(model_dir: Path, cache: Path | None = None) -> dict[str, str]:
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "EMBEDDINGGEMMA_CHECKPOINT": str(model_dir),
        "EMBEDDINGGEMMA_COMPILATION_CACHE": str(cache or shared_cache()),
    }


def assert_one_line_error(stderr: str, command: str, *names: str) -> str:
    """stderr is exactly `embeddinggemma COMMAND: error: ...` naming at least one of `names`."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip("\n").splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"embeddinggemma {command}: error: "), stderr
    assert not names or any(name in lines[0] for name in names), (names, lines[0])
    return lines[0]


def no_partials(directory: Path) -> list[str]:
    """Temporary siblings (`.NAME.partial-*`) left in `directory`: a failed write must remove its own."""
    return sorted(p.name for p in directory.glob(".*.partial-*"))


# ------------------------------------------------------------------------------------ the API, fuzzed

# Any code point (lone surrogates, controls, unassigned ones included), as Python strings can hold them.
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=12)
TEXT = st.one_of(
    ANY_TEXT,
    st.just(""),
    st.text(st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp"]), max_size=8),  # only controls / spaces
    st.builds(lambda s, n: s * n, st.text(min_size=1, max_size=4), st.integers(200, 900)),  # past max_seq_length
)
TEXTS_ARG = st.one_of(
    TEXT,
    st.lists(TEXT, max_size=5),
    st.lists(TEXT, max_size=3).map(tuple),
    st.lists(st.one_of(TEXT, st.integers(), st.none(), st.binary(max_size=3)), min_size=1, max_size=3),
    st.sampled_from([None, 3, 1.5, b"bytes", {"a": "b"}, {"a"}]),
)
INTS_AND_JUNK = [True, False, None, 2.0, 0.5, "8", [8], np.float32(4)]


def is_int(x: Any) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


def encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def valid_encode_call(model: EmbeddingGemma, texts: Any, kwargs: dict[str, Any]) -> bool:
    """Whether the documented contract of `encode` accepts these arguments (an independent oracle)."""
    if isinstance(texts, str):
        items = [texts]
    elif isinstance(texts, list | tuple):
        items = list(texts)
    else:
        return False
    if not all(isinstance(t, str) and encodable(t) for t in items):
        return False
    prompt_name, prompt = kwargs["prompt_name"], kwargs["prompt"]
    if prompt_name is not None and prompt is not None:
        return False
    if prompt is not None:
        if not isinstance(prompt, str) or not encodable(prompt):
            return False
        prefix = prompt
    else:
        name = prompt_name if prompt_name is not None else model.config.default_prompt_name
        if name is not None and (not isinstance(name, str) or name not in model.prompts):
            return False
        prefix = model.prompts[name] if name is not None else ""
    if prefix and len(model.tokenizer.sp.encode(prefix)) >= model.config.max_seq_length - 2:
        return False  # no room left for the text
    dim = kwargs["truncate_dim"]
    if dim is not None and not (is_int(dim) and 1 <= dim <= model.config.embedding_dim):
        return False
    return is_int(kwargs["batch_size"]) and kwargs["batch_size"] >= 1


@FUZZ
@given(
    texts=TEXTS_ARG,
    prompt_name=st.one_of(st.none(), st.sampled_from(["query", "document", "STS", "nope", "", 3, ["query"]])),
    prompt=st.one_of(
        st.none(), ANY_TEXT, st.just("task: x | query: "), st.just("word " * 400), st.sampled_from([3, b"q: "])
    ),
    truncate_dim=st.one_of(
        st.none(), st.integers(-2, 52), st.integers(1, 48).map(np.int64), st.sampled_from(INTS_AND_JUNK)
    ),
    batch_size=st.one_of(st.integers(-1, 9), st.integers(1, 8).map(np.int32), st.sampled_from(INTS_AND_JUNK)),
)
# Failures found by fuzzing, kept as fixed examples: a prompt holding a lone surrogate (what a non-UTF-8
# command-line byte becomes) raised sentencepiece's RuntimeError; a list prompt_name "unhashable type";
# a numpy batch_size was refused although a numpy truncate_dim is accepted.
@example(texts="x", prompt_name=None, prompt="q\udcff: ", truncate_dim=None, batch_size=2)
@example(texts=["x"], prompt_name=["query"], prompt=None, truncate_dim=8, batch_size=2)
@example(texts=["x", ""], prompt_name="query", prompt=None, truncate_dim=np.int64(8), batch_size=np.int32(1))
@example(texts=["x"], prompt_name=None, prompt=None, truncate_dim=True, batch_size=True)
def test_encode_accepts_exactly_the_documented_arguments(
    tiny_model: EmbeddingGemma, texts: Any, prompt_name: Any, prompt: Any, truncate_dim: Any, batch_size: Any
) -> None:
    """Valid arguments give finite, unit-norm float32 rows of the right shape; anything else is a
    ValueError / TypeError naming the argument (never NaN, never another exception type)."""
    kwargs = {"prompt_name": prompt_name, "prompt": prompt, "truncate_dim": truncate_dim, "batch_size": batch_size}
    valid = valid_encode_call(tiny_model, texts, kwargs)
    try:
        out = tiny_model.encode(texts, **kwargs)
    except (ValueError, TypeError) as e:
        assert not valid, f"a valid call raised {e!r}"
        assert any(name in str(e) for name in ARG_NAMES), f"the message names no argument: {e!r}"
        return
    assert valid, f"an invalid call returned {out!r:.200}"
    dim = int(truncate_dim) if truncate_dim is not None else tiny_model.config.embedding_dim
    n = None if isinstance(texts, str) else len(texts)
    assert out.dtype == np.float32 and out.shape == ((dim,) if n is None else (n, dim))
    assert np.isfinite(out).all()
    if out.size:
        np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-5)


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


def run_main(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """`embeddinggemma ARGV` in this process: (exit status, stdout, stderr)."""
    try:
        status = cli.main(argv)
    except SystemExit as e:  # argparse's usage errors
        status = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A persistent compilation cache for this module's in-process CLI runs (each main() builds a new
    model, whose programs would compile again), detached afterwards so no other test writes to it."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    before = jax.config.jax_compilation_cache_dir
    compilation_cache.reset_cache()
    yield tmp_path_factory.mktemp("jax-cache")
    compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", before)


@pytest.fixture
def cli_in_process(tiny_dir: Path, module_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """main() as the console script runs it: the tiny model by default, the module's compilation cache
    (the parser reads both from the environment when it is built, on each call)."""
    monkeypatch.setenv("EMBEDDINGGEMMA_CHECKPOINT", str(tiny_dir))
    monkeypatch.setenv("EMBEDDINGGEMMA_COMPILATION_CACHE", str(module_cache))
    monkeypatch.delenv("EMBEDDINGGEMMA_DEBUG", raising=False)


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


# ------------------------------------------------------------------------------------ corrupt checkpoints

# What a damaged file looks like: an interrupted copy or download, random bytes (same length), or JSON of
# the wrong kind (a hand edit, another tool's file).
DAMAGE: dict[str, Callable[[bytes, str], bytes | None]] = {
    "truncated": lambda data, name: data[: len(data) // 2],
    "garbage": lambda data, name: random.Random(len(data)).randbytes(max(len(data), 64)),
    "wrong JSON": lambda data, name: (b"{}" if name == "modules.json" else b"[1, 2]") if data[:1] in b"{[" else None,
}
# Files a sentence-transformers directory carries that our loader does not read: damage to them changes
# nothing we compute. An export copies them, after checking that the JSON ones parse.
UNREAD = {"README.md", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"}


def damaged_copies(
    src: Path, tmp: Path, damages: Callable[[str], tuple[str, ...]] = lambda rel: tuple(DAMAGE)
) -> Iterator[tuple[str, str, Path]]:
    """(file, damage, directory) for each file of `src` and each of its `damages`, in a fresh copy each time."""
    for file in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = str(file.relative_to(src))
        for damage in damages(rel):
            how = DAMAGE[damage]
            data = how(file.read_bytes(), file.name)
            if data is None:
                continue
            copy = tmp / "damaged"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(src, copy)
            (copy / rel).write_bytes(data)
            yield rel, damage, copy


def leaves(tree_or_model: Any) -> list[np.ndarray]:
    """The parameters (of a model, or any tree of arrays) as host arrays, in tree order."""
    import jax

    tree = tree_or_model.params if isinstance(tree_or_model, EmbeddingGemma) else tree_or_model
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def check_damaged_load(
    copy: Path, rel: str, names: tuple[str, ...], clean: list[np.ndarray], capsys, *, cli: bool = True
) -> str:
    """Load `copy`: either an error naming one of `names` (in the API, and as one line from the CLI),
    or exactly the clean parameters. Returns "error" or "loaded"."""
    try:
        model = EmbeddingGemma.from_pretrained(copy)
    except CheckpointError as e:
        assert any(name in str(e) for name in names), f"{rel}: the error names none of {names}: {e}"
        if not cli:
            return "error"
        status, _, err = run_main(["info", "--model", str(copy)], capsys)
        assert status == 1, f"{rel}: info exited {status}"
        assert_one_line_error(err, "info", *names)
        return "error"
    for a, b in zip(leaves(model), clean, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=f"{rel} damaged, yet loaded with other weights")
    return "loaded"


def test_damaged_sentence_transformers_files_are_named(
    cli_in_process: None, tiny_dir: Path, tiny_model: EmbeddingGemma, tmp_path: Path, capsys
) -> None:
    """Each file of a sentence-transformers directory truncated, overwritten with random bytes or with
    JSON of the wrong kind: loading names that file (API and CLI), or the file is one we never read."""
    clean = leaves(tiny_model)
    outcomes = {}
    for rel, damage, copy in damaged_copies(tiny_dir, tmp_path):
        outcomes[rel, damage] = check_damaged_load(copy, rel, (rel,), clean, capsys)
    loaded = sorted({rel for (rel, _), outcome in outcomes.items() if outcome == "loaded"})
    assert set(loaded) <= UNREAD, f"damaged yet loaded: {loaded}"
    assert {rel for rel, _ in outcomes} >= {"model.safetensors", "2_Dense/model.safetensors", "tokenizer.model"}


@pytest.fixture(scope="module")
def native_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from embeddinggemma.checkpoint import convert

    out = tmp_path_factory.mktemp("native") / "tiny-native"
    convert(tiny_dir, out)
    return out


def test_damaged_native_checkpoint_files_are_named(
    cli_in_process: None, native_dir: Path, tiny_model: EmbeddingGemma, tmp_path: Path, capsys
) -> None:
    """The same for `convert`'s native checkpoint: an error naming the file (the orbax `params` directory
    for its internals) or exactly the clean parameters. Loading does not read the hf/ metadata it carries
    (but tokenizer.model); an export copies it, so exporting checks it first and names a damaged file
    (before, `convert` wrote a complete-looking directory that could not be loaded)."""
    from embeddinggemma.checkpoint import hf

    clean = leaves(tiny_model)
    outcomes, cli_checked = {}, set()

    # orbax's data files are alike (one of zstd chunks): the largest of each directory stands for the rest
    chunks = [p for p in (native_dir / "params").rglob("d/*") if p.is_file()]
    skipped = {
        p for p in chunks if p != max((c for c in chunks if c.parent == p.parent), key=lambda c: c.stat().st_size)
    }

    def damages(rel: str) -> tuple[str, ...]:  # an interrupted copy of each file; all kinds for the JSON ones
        if native_dir / rel in skipped:
            return ()
        return tuple(DAMAGE) if rel in ("embeddinggemma.json", "params/_METADATA") else ("truncated",)

    for rel, damage, copy in damaged_copies(native_dir, tmp_path, damages):
        if rel.startswith("hf/") and rel != "hf/tokenizer.model":
            try:
                hf.check_metadata(copy / "hf")
            except CheckpointError as e:
                assert rel in str(e), (rel, damage, e)
                outcomes[rel, damage] = "error"
                continue
            assert rel == "hf/README.md", f"damaged {rel} ({damage}) would be exported"
            continue
        names = ("params",) if rel.startswith("params/") else (rel,)
        cli = Path(rel).parent not in cli_checked  # the CLI (one more load) once per directory
        cli_checked.add(Path(rel).parent)
        outcomes[rel, damage] = check_damaged_load(copy, rel, names, clean, capsys, cli=cli)
    errors = {rel for (rel, _), outcome in outcomes.items() if outcome == "error"}
    assert {"embeddinggemma.json", "hf/config.json", "hf/tokenizer.json", "hf/tokenizer.model"} <= errors
    assert {"params/_METADATA", "params/manifest.ocdbt"} <= errors
    assert any(rel.startswith("params/ocdbt.process_0/d/") for rel in errors), "no tensor data file was checked"

    # Through `convert` itself: a damaged metadata file is named and nothing is written; an unread one is
    # carried over verbatim and the export holds exactly the clean parameters.
    for rel, expect_error in (("hf/2_Dense/config.json", True), ("hf/README.md", False)):
        copy = tmp_path / "damaged"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(native_dir, copy)
        (copy / rel).write_bytes(b"\x00garbage")
        out = tmp_path / "exported"
        shutil.rmtree(out, ignore_errors=True)
        status, _, err = run_main(["convert", str(copy), str(out)], capsys)
        if expect_error:
            assert status == 1 and not out.exists() and not no_partials(tmp_path)
            assert_one_line_error(err, "convert", rel)
        else:
            assert status == 0, err
            for a, b in zip(leaves(EmbeddingGemma.from_pretrained(out)), clean, strict=True):
                np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------ a full disk


class FullDisk:
    """`open` for `files.write_atomic` on a disk with `room` bytes left: a write past it stores what fits
    and raises ENOSPC, as write(2) does. `written` records each file's size (to size `room` from a clean run)."""

    def __init__(self, room: float = float("inf")):
        self.room, self.written = room, {}

    def __call__(self, path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = open(path, mode, *args, **kwargs)  # noqa: SIM115 (the proxy closes it)
        return self._Proxy(f, self, Path(path).name) if set(mode) & set("wxa") else f

    class _Proxy:
        def __init__(self, f: Any, disk: FullDisk, name: str):
            self._f, self._disk, self._name = f, disk, name

        def write(self, data: Any) -> int:
            n = memoryview(data).nbytes
            if n > self._disk.room:
                self._f.write(memoryview(data).cast("B")[: int(self._disk.room)])
                self._disk.room = 0
                raise OSError(28, os.strerror(28))  # ENOSPC, with no file name, as from write(2)
            self._disk.room -= n
            self._disk.written[self._name] = self._disk.written.get(self._name, 0) + n
            return self._f.write(data)

        def writelines(self, lines: Any) -> None:
            for line in lines:
                self.write(line)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._f, name)

        def __enter__(self) -> FullDisk._Proxy:
            return self

        def __exit__(self, *exc: Any) -> None:
            self._f.close()


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 short JSONL documents: 5 shards of 8."""
    path = tmp_path_factory.mktemp("docs") / "docs.jsonl"
    rows = [{"id": f"doc{i}", "text": f"document {i} is about topic {i % 7}"} for i in range(40)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("where", ["writing a shard", "assembling the output"])
def test_encode_on_a_full_disk_fails_cleanly_and_resumes(
    where: str, cli_in_process: None, docs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """ENOSPC mid-encode: exit 1 with one line naming the file, no output under its final name and no
    temporary left; the rerun, with room again, resumes and writes exactly the clean run's output (before,
    an --ids-output written just before the failed output made every rerun refuse to start)."""

    def argv(out: Path) -> list[str]:
        return ["encode", "-i", str(docs), "-o", str(out), "--ids-output", str(out.with_suffix(".ids.jsonl")),
                "--shard-size", "8", "--no-progress"]  # fmt: skip

    sizes = FullDisk()
    monkeypatch.setattr(files, "open", sizes, raising=False)
    clean = tmp_path / "clean" / "emb.npy"
    assert run_main(argv(clean), capsys)[0] == 0
    shards = sorted(name for name in sizes.written if name.startswith(".shard-"))
    before_final = sum(n for name, n in sizes.written.items() if not name.startswith(".emb.npy"))
    room = sizes.written[shards[0]] * 2.5 if where == "writing a shard" else before_final + 100

    out = tmp_path / "full" / "emb.npy"
    monkeypatch.setattr(files, "open", FullDisk(room), raising=False)
    status, _, err = run_main(argv(out), capsys)
    assert status == 1
    assert_one_line_error(err, "encode", "No space left on device")
    assert ("shard-000002.npy" if where == "writing a shard" else str(out)) in err
    assert not out.exists() and not no_partials(out.parent) and not no_partials(out.parent / "emb.npy.partial")

    monkeypatch.setattr(files, "open", open, raising=False)
    status, _, err = run_main(argv(out), capsys)
    assert status == 0, err
    assert f"resuming: {2 if where == 'writing a shard' else 5} of 5 shards already done" in err
    np.testing.assert_array_equal(np.load(out), np.load(clean))
    assert out.with_suffix(".ids.jsonl").read_text() == clean.with_suffix(".ids.jsonl").read_text()
    assert sorted(p.name for p in out.parent.iterdir()) == ["emb.ids.jsonl", "emb.npy"]


def limited_file_size(limit: int, *argv: str) -> list[str]:
    """`argv` run with no file allowed to grow past `limit` bytes (RLIMIT_FSIZE), a write past it failing with
    EFBIG instead of the default SIGXFSZ kill: what a full disk looks like to every writer, C++ and Rust ones
    too. (A preexec_fn would fork this multithreaded process; a small launcher sets both, then execs.)"""
    launch = (
        "import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); os.execv(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", launch, *argv]


@pytest.mark.parametrize("direction", ["to native", "to sentence-transformers"])
def test_convert_on_a_full_disk_fails_cleanly(
    direction: str, tiny_dir: Path, native_dir: Path, tiny_model: EmbeddingGemma, tmp_path: Path
) -> None:
    """The parameters do not fit (orbax's TensorStore files, safetensors' Rust writer): exit 1 with one line
    naming the output, which does not exist, and no temporary directory left; then it converts."""
    from embeddinggemma.checkpoint import convert

    src = tiny_dir if direction == "to native" else native_dir
    dst = tmp_path / "converted"
    # 250 kB: the metadata files fit (tokenizer.json is 200 kB), the tensors (300-700 kB) do not.
    proc = subprocess.run(
        limited_file_size(250_000, str(SCRIPT), "convert", str(src), str(dst)),
        env=cli_env(tiny_dir, tmp_path / "jax-cache"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    assert_one_line_error(proc.stderr, "convert", str(dst))
    assert "File too large" in proc.stderr
    assert not dst.exists() and not no_partials(tmp_path)
    convert(src, dst)
    for a, b in zip(leaves(EmbeddingGemma.from_pretrained(dst)), leaves(tiny_model), strict=True):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------ kill -9 and SIGTERM


def interrupt(proc: subprocess.Popen, ready: Callable[[], bool], delay: float, sig: int, timeout: float = 240) -> bool:
    """Once `ready()` (or the process ended), wait `delay` seconds and send `sig`; wait for the process.
    Returns whether the signal found it still running (False: it had finished on its own)."""
    deadline = time.monotonic() + timeout
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    running = proc.poll() is None
    if running:
        proc.send_signal(sig)
    proc.wait(timeout=400)
    return running


@pytest.fixture(scope="module")
def many_docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 similar documents: 50 shards of 8, one compiled shape, so the run is long enough to interrupt."""
    path = tmp_path_factory.mktemp("many") / "docs.jsonl"
    rows = [{"id": i, "text": f"document {i} is about topic {i % 17} and item {i * 7 % 13}"} for i in range(400)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_encode_killed_or_terminated_anywhere_resumes_exactly(
    cli_in_process: None, tiny_dir: Path, many_docs: Path, tmp_path: Path, capsys
) -> None:
    """kill -9, then SIGTERM, at seeded random points of an encode: every finished shard on disk holds
    exactly the clean run's rows, the output is absent (or complete), and the rerun resumes to the clean
    output bit for bit."""
    rng = random.Random(6)

    def encode_argv(directory: Path) -> list[str]:
        return ["encode", "-i", str(many_docs), "-o", str(directory / "emb.npy"), "--ids-output",
                str(directory / "ids.jsonl"), "--shard-size", "8", "--batch-size", "8", "--no-progress"]  # fmt: skip

    argv, out, work = encode_argv(tmp_path), tmp_path / "emb.npy", tmp_path / "emb.npy.partial"
    t0 = time.perf_counter()
    assert run_main(encode_argv(tmp_path / "clean"), capsys)[0] == 0
    duration = time.perf_counter() - t0  # the time scale of the random points, so they fall mid-run
    clean = np.load(tmp_path / "clean" / "emb.npy")
    env = cli_env(tiny_dir, interrupted_cache())

    def check() -> None:
        for shard in work.glob("shard-*.npy"):
            index = int(shard.stem.removeprefix("shard-"))
            np.testing.assert_array_equal(np.load(shard), clean[8 * index : 8 * index + 8], err_msg=shard.name)
        if out.exists():
            np.testing.assert_array_equal(np.load(out), clean)

    for sig in (signal.SIGKILL, signal.SIGTERM):
        before = len(list(work.glob("shard-*.npy")))
        proc = subprocess.Popen([str(SCRIPT), *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        more = lambda before=before: len(list(work.glob("shard-*.npy"))) > before  # noqa: E731 (a shard of this run)
        interrupt(proc, more, rng.uniform(0.0, 0.5 * duration), sig)
        check()
        if out.exists():
            break
    if not out.exists():
        status, _, err = run_main(argv, capsys)
        assert status == 0, err
    check()
    assert out.exists() and not work.exists()
    assert (tmp_path / "ids.jsonl").read_text() == (tmp_path / "clean" / "ids.jsonl").read_text()


def test_convert_killed_or_terminated_anywhere_leaves_nothing_or_all(
    tiny_dir: Path, native_dir: Path, tiny_model: EmbeddingGemma, tmp_path: Path
) -> None:
    """kill -9 (to native) and SIGTERM (back to sentence-transformers) at a seeded random point while the
    output is being written: the destination is absent or a complete checkpoint, and converting again works."""
    from embeddinggemma.checkpoint import convert

    rng = random.Random(7)
    clean = leaves(tiny_model)
    for sig, src in ((signal.SIGKILL, tiny_dir), (signal.SIGTERM, native_dir)):
        dst = tmp_path / f"out-{sig.name}"
        env = cli_env(tiny_dir, tmp_path / "jax-cache")
        proc = subprocess.Popen(
            [str(SCRIPT), "convert", str(src), str(dst)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        writing = lambda dst=dst: any(dst.parent.glob(f".{dst.name}.partial-*"))  # noqa: E731
        interrupt(proc, writing, rng.uniform(0.0, 0.4), sig)
        if not dst.exists():
            convert(src, dst)
        for a, b in zip(leaves(EmbeddingGemma.from_pretrained(dst)), clean, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # a first run compiles the train step (about a minute); later runs find it in the cache
def test_training_killed_then_terminated_resumes_to_the_same_model(tiny_dir: Path, tmp_path: Path) -> None:
    """kill -9 and then SIGTERM at seeded random points of a short `train` (resumed with --resume each
    time): the newest checkpoint always restores, export/ exists only when complete, and the run ends with
    exactly the parameters of an uninterrupted one. Then a damaged checkpoint is named on --resume."""
    from tests.retrieval_data import write_split
    from tests.train_helpers import final_state, tiny_run_config

    rng = random.Random(8)
    data = write_split(tmp_path / "data")
    settings_ = dict(steps=16, save_every=4, log_every=1, eval_file=None, eval_every=None, grad_cache_chunk=None)

    log = tmp_path / "train.log"  # a file, not a pipe nobody reads while the run goes on

    def start(name: str, *extra: str) -> subprocess.Popen:
        config = tmp_path / f"{name}.json"
        config.write_text(json.dumps(tiny_run_config(tiny_dir, data, tmp_path / name, **settings_)))
        env = {**cli_env(tiny_dir, interrupted_cache()), "XLA_FLAGS": ""}
        argv = [sys.executable, "-m", "embeddinggemma.cli", "train", "--config", str(config), *extra]
        with log.open("w") as f:
            return subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT)

    straight = start("straight")  # the uninterrupted run
    assert straight.wait(timeout=600) == 0, log.read_text()
    _, expected = final_state(tmp_path / "straight")

    out = tmp_path / "run"
    metrics = out / "metrics.jsonl"

    def logged() -> int:
        return len(metrics.read_text().splitlines()) if metrics.exists() else 0

    def check() -> None:
        if (out / "checkpoints").exists() and any(p.name.isdigit() for p in (out / "checkpoints").iterdir()):
            step, _ = final_state(out)  # every 4 steps, or where SIGTERM stopped it
            assert 1 <= step <= 16, step
        if (out / "export").exists():
            EmbeddingGemma.from_pretrained(out / "export")

    for sig, extra in ((signal.SIGKILL, ()), (signal.SIGTERM, ("--resume",))):
        before = logged()
        proc = start("run", *extra)
        interrupt(proc, lambda before=before: logged() > before, rng.uniform(0.0, 1.0), sig)
        assert proc.returncode in (0, -sig, cli.PREEMPTED), log.read_text()  # 143: saved, then stopped
        check()
    if not (out / "export").exists():  # else the run had completed before the signal
        assert start("run", "--resume").wait(timeout=600) == 0, log.read_text()
    check()
    step, state = final_state(out)
    assert step == 16
    for a, b in zip(leaves(state["params"]), leaves(expected["params"]), strict=True):
        np.testing.assert_array_equal(a, b)

    # A damaged newest checkpoint: --resume names it in its last line, no traceback (before: orbax's bare
    # Exception with pages of TensorStore spec), and says how to go on from the one before.
    newest = out / "checkpoints" / "16"
    chunk = max((newest / "state").rglob("d/*"), key=lambda f: f.stat().st_size)
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    assert start("run", "--resume", "--overwrite").wait(timeout=600) == 1
    lines = log.read_text().strip().splitlines()
    assert "Traceback" not in log.read_text(), lines[-20:]
    assert lines[-1].startswith(f"embeddinggemma train: error: {newest}: cannot restore this checkpoint"), lines[-1]
    assert "move it out of" in lines[-1]
