"""The `embeddinggemma` console script, run in subprocesses on the tiny checkpoint.

Values printed or written by the CLI are checked against the in-process API on the same checkpoint.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from embeddinggemma import EmbeddingGemma
from embeddinggemma.cli import build_parser
from embeddinggemma.corpus.readers import bundled_corpus
from tests.helpers.cli import SCRIPT, cli_env, parse_hits, run_cli

SHARD = 8
N_DOCS = 1200  # 150 shards: the kill below lands after the first one and long before the last


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """A JSONL corpus of similar-length texts (one compiled batch shape, so each shard after the first is quick)."""
    rows = [
        {"id": f"doc{i}", "text": f"document {i} is about topic {i % 17} and item {i * 7 % 13}"} for i in range(N_DOCS)
    ]
    path = tmp_path_factory.mktemp("docs") / "docs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path, rows


def encode_args(src: Path, out: Path) -> list[str | Path]:
    return ["encode", "-i", src, "-o", out, "--prompt-name", "document", "--shard-size", SHARD, "--batch-size", SHARD]


def test_encode_resume_then_search(tiny_dir: Path, tiny_model: EmbeddingGemma, docs, tmp_path: Path) -> None:
    src, rows = docs
    full, ids = tmp_path / "full.npy", tmp_path / "full.ids.jsonl"
    run_cli(tiny_dir, *encode_args(src, full), "--ids-output", ids)
    expected = tiny_model.encode_document([r["text"] for r in rows])
    np.testing.assert_allclose(np.load(full), expected, atol=1e-5)
    assert [json.loads(line)["id"] for line in ids.read_text().splitlines()] == [r["id"] for r in rows]
    assert not (tmp_path / "full.npy.partial").exists()

    # Kill an encode (SIGKILL: no cleanup) as soon as its first shard is on disk, then rerun it.
    out = tmp_path / "resumed.npy"
    work = tmp_path / "resumed.npy.partial"
    proc = subprocess.Popen(
        [str(SCRIPT), *map(str, encode_args(src, out))], env=cli_env(tiny_dir), stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 600
    while not list(work.glob("shard-*.npy")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = sorted(p.name for p in work.glob("shard-*.npy"))
    n_shards = N_DOCS // SHARD
    assert 1 <= len(finished) < n_shards, "the kill must land mid-run"
    assert not out.exists(), "no output under the final name before the run completes"

    resumed = run_cli(tiny_dir, *encode_args(src, out))
    assert f"resuming: {len(finished)} of {n_shards} shards already done" in resumed.stderr
    result = np.load(out)
    assert result.shape == (N_DOCS, tiny_model.config.embedding_dim)
    np.testing.assert_array_equal(result, np.load(full))  # same rows, same order: nothing redone twice or lost
    assert not work.exists()

    # search reuses the saved embeddings; scores and ranking match the API.
    query = "topic 3 and item 5"
    found = run_cli(tiny_dir, "search", "--corpus", full, "--texts", src, "--query", query, "-k", 3)
    scores = tiny_model.similarity(tiny_model.encode_query(query), expected)[0]
    best = np.argsort(-scores)[:3]
    hits = parse_hits(found.stdout)
    assert [h[0] for h in hits] == [rows[i]["id"] for i in best]
    np.testing.assert_allclose([h[1] for h in hits], scores[best], atol=2e-3)


def test_truncated_embeddings_search_and_default_corpus(tiny_dir: Path, tiny_model: EmbeddingGemma, tmp_path) -> None:
    """Matryoshka embeddings are searched at their width; `search` without --corpus uses the bundled corpus."""
    corpus = [json.loads(line) for line in bundled_corpus().read_text(encoding="utf-8").splitlines()]
    out = tmp_path / "bundled16.npy"
    run_cli(tiny_dir, "encode", "-i", bundled_corpus(), "-o", out, "--prompt-name", "document", "--truncate-dim", 16)
    emb = np.load(out)
    np.testing.assert_allclose(emb, tiny_model.encode_document([d["text"] for d in corpus], truncate_dim=16), atol=1e-5)
    query = "Which planet is known as the Red Planet?"
    for args in (["--corpus", out, "--texts", bundled_corpus()], []):
        found = parse_hits(run_cli(tiny_dir, "search", *args, "-q", query, "-k", 5).stdout)
        docs = emb if args else tiny_model.encode_document([d["text"] for d in corpus])
        scores = tiny_model.similarity(tiny_model.encode_query(query, truncate_dim=docs.shape[1]), docs)[0]
        best = np.argsort(-scores)[:5]
        assert [h[0] for h in found] == [corpus[i]["id"] for i in best]
        np.testing.assert_allclose([h[1] for h in found], scores[best], atol=2e-3)


def test_similarity_info_convert(tiny_dir: Path, tiny_model: EmbeddingGemma, tmp_path: Path) -> None:
    a, b = ["The cat sits outside.", "A man plays guitar."], ["A kitten is outdoors.", "Someone plays music.", "Rain."]
    out = run_cli(tiny_dir, "similarity", "--prompt-name", "STS", "-a", *a, "-b", *b).stdout
    table = [[float(x) for x in re.findall(r"-?\d\.\d{3}", line)] for line in out.splitlines()[1:3]]
    expected = tiny_model.similarity(tiny_model.encode(a, prompt_name="STS"), tiny_model.encode(b, prompt_name="STS"))
    np.testing.assert_allclose(table, expected, atol=2e-3)

    info = run_cli(tiny_dir, "info").stdout
    n_params = sum(x.size for x in jax.tree.leaves(tiny_model.params))
    assert f"parameters  {n_params:,} (float32)" in info
    assert f"embedding   {tiny_model.config.embedding_dim}-d" in info
    assert re.search(r"^devices\s+\d+ x cpu", info, re.M)
    assert "attention   sliding blocked, global blocked (requested 'auto')" in info  # CPU picks blocked for both

    native = tmp_path / "native"
    assert str(native) in run_cli(tiny_dir, "convert", tiny_dir, native).stdout
    text = "a round trip through the native format"
    np.testing.assert_array_equal(EmbeddingGemma.from_pretrained(native).encode(text), tiny_model.encode(text))


def test_second_run_loads_its_programs_from_the_compilation_cache(tiny_dir: Path, tmp_path: Path) -> None:
    """Every program the first `search` compiles is stored; the second finds them all (stores nothing new)."""
    cache = tmp_path / "cache"
    first = run_cli(tiny_dir, "search", "-q", "red planet", "-k", "2", cache=cache).stdout
    stored = sorted(p.name for p in cache.iterdir())
    assert any(name.startswith("jit__lambda") for name in stored), stored  # the encode step among them
    assert run_cli(tiny_dir, "search", "-q", "red planet", "-k", "2", cache=cache).stdout == first
    assert sorted(p.name for p in cache.iterdir()) == stored
    run_cli(tiny_dir, "search", "-q", "red planet", "--no-compilation-cache", cache=tmp_path / "off")
    assert not (tmp_path / "off").exists()


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad")
    (root / "empty.txt").write_text("\n  \n")
    (root / "latin1.txt").write_bytes("fine\ncaf\xe9\n".encode("latin-1"))
    (root / "nofield.jsonl").write_text('{"text": "ok"}\n{"body": "no text field"}\n')
    (root / "surrogate.jsonl").write_text('{"text": "ok"}\n{"text": "half a pair: \\ud83d"}\n')
    (root / "good.txt").write_text("one text\nanother text\n")
    (root / "a_file").write_text("")
    return root


BAD_INPUTS = {
    "missing file": (["-i", "{root}/nope.txt", "-o", "{tmp}/x.npy"], "nope.txt: no such file"),
    "empty file": (["-i", "{root}/empty.txt", "-o", "{tmp}/x.npy"], "no texts in the file"),
    "undecodable bytes": (["-i", "{root}/latin1.txt", "-o", "{tmp}/x.npy"], "latin1.txt:2: not valid UTF-8"),
    "jsonl without text": (["-i", "{root}/nofield.jsonl", "-o", "{tmp}/x.npy"], "nofield.jsonl:2: no string field"),
    "lone surrogate": (
        ["-i", "{root}/surrogate.jsonl", "-o", "{tmp}/x.npy"],
        "surrogate.jsonl:2: field 'text' is not valid Unicode: lone surrogate '\\ud83d' at character 13",
    ),
    "unknown prompt name": (["-i", "{root}/good.txt", "-o", "{tmp}/x.npy", "--prompt-name", "nope"], "unknown prompt"),
    "dim out of range": (["-i", "{root}/good.txt", "-o", "{tmp}/x.npy", "--truncate-dim", "49"], "must be in 1..48"),
    "output under a file": (["-i", "{root}/good.txt", "-o", "{root}/a_file/x.npy"], "cannot write"),
    "output is a directory": (["-i", "{root}/good.txt", "-o", "{tmp}"], "is a directory"),
    "output is the input": (["-i", "{root}/good.txt", "-o", "{root}/good.txt"], "is also an input"),
    "ids output is the input": (
        ["-i", "{root}/good.txt", "-o", "{tmp}/x.npy", "--ids-output", "{root}/good.txt"],
        "is also an input",
    ),
    "ids output is the output": (
        ["-i", "{root}/good.txt", "-o", "{tmp}/x.npy", "--ids-output", "{tmp}/x.npy"],
        "are the same file",
    ),
    "ids output under a file": (
        ["-i", "{root}/good.txt", "-o", "{tmp}/x.npy", "--ids-output", "{root}/a_file/ids.jsonl"],
        "cannot write --ids-output",
    ),
    "output exists": (["-i", "{root}/good.txt", "-o", "{root}/a_file"], "already exists; pass --overwrite"),
    "float16": (["-i", "{root}/good.txt", "-o", "{tmp}/x.npy", "--dtype", "float16"], "float16 is not supported"),
    "no such checkpoint": (["-i", "{root}/good.txt", "-o", "{tmp}/x.npy", "-m", "{root}/nope"], "no such checkpoint"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line(case: str, tiny_dir: Path, bad_files: Path, tmp_path: Path) -> None:
    args, message = BAD_INPUTS[case]
    proc = run_cli(tiny_dir, "encode", *(a.format(root=bad_files, tmp=tmp_path) for a in args), ok=False)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("embeddinggemma encode: error: "), proc.stderr
    assert message in proc.stderr
    assert not list(tmp_path.iterdir()), "a failed run leaves no files behind"
    assert (bad_files / "good.txt").read_text() == "one text\nanother text\n", "the input is intact"
    assert (bad_files / "a_file").read_text() == "", "an existing file is intact"


COMMAND_MISTAKES = {
    "no such config": (["train", "--config", "nope"], 1, "nope: no such config file or bundled config"),
    "config not JSON": (["train", "--config", "{root}/a_file.json"], 1, "a_file.json: invalid JSON"),
    "unknown config key": (["train", "--config", "train_tiny", "--set", "bogus=1"], 1, "unknown TrainConfig keys"),
    "override without key": (["train", "--config", "train_tiny", "--set", "=3"], 2, "expected KEY=VALUE"),
    "config value of the wrong type": (
        ["train", "--config", "train_tiny", "--set", "steps=ten"],
        1,
        "steps must be an integer or null, got 'ten'",
    ),
    "config value out of range": (
        ["train", "--config", "train_tiny", "--set", "adam_b2=1"],
        1,
        "adam_b2 must be in [0, 1)",
    ),
    "matryoshka dim wider than the model": (
        "train --config train_tiny --set model={tiny} --set output_dir={root}/r --set matryoshka_dims=[96,48]".split(),
        1,
        "matryoshka_dims [96, 48]: the model's embeddings are 48 wide",
    ),
    "unknown aot step": (["aot", "--steps", "encode,nope"], 2, "comma-separated list of encode, train"),
    "bad topology": (["aot", "--topology", "v5e:nonsense", "--steps", "encode"], 1, "TPU topology 'v5e:nonsense'"),
    "verify without a model": (["verify", "--model", "{root}/nope"], 1, "no such checkpoint directory"),
    "benchmark without a model": (["benchmark", "--model", "{root}/nope"], 1, "no such checkpoint directory"),
    "convert onto its source": (["convert", "{tiny}", "{tiny}"], 1, "already exists; choose a new output directory"),
    "no warm-up threads": (["serve", "--warmup-threads", "0"], 2, "--warmup-threads: expected a positive integer"),
    "unknown aot layout": (["aot", "--layers", "diagonal"], 2, "--layers: invalid choice: 'diagonal'"),
    "profile without a model": (["benchmark-train", "--profile", "--model", "{root}/nope"], 1, "no such checkpoint"),
}


@pytest.mark.parametrize("case", COMMAND_MISTAKES)
def test_command_mistakes_are_one_line(case: str, tiny_dir: Path, bad_files: Path) -> None:
    args, status, message = COMMAND_MISTAKES[case]
    (bad_files / "a_file.json").write_text("{not json")
    proc = run_cli(tiny_dir, *(a.format(root=bad_files, tiny=tiny_dir) for a in args), ok=False)
    assert proc.returncode == status and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    if status == 1:
        assert proc.stderr.strip().splitlines()[-1].startswith(f"embeddinggemma {args[0]}: error: ")


def test_out_of_device_memory_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """A real XLA out-of-memory (4 TiB on the host device) inside a command: one line saying what to lower."""
    import jax.numpy as jnp

    from embeddinggemma import cli

    def allocate(args) -> None:
        jax.block_until_ready(jnp.zeros((2**40,), jnp.float32) + 1)

    monkeypatch.setattr(cli.info, "run", allocate)
    assert cli.main(["info", "--no-compilation-cache"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("embeddinggemma info: error: out of device memory"), err
    assert "--batch-size" in err and "RESOURCE_EXHAUSTED" in err, err


def test_overwrite_replaces_an_existing_output(tiny_dir: Path, bad_files: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.npy"
    out.write_text("an earlier result")
    run_cli(tiny_dir, "encode", "-i", bad_files / "good.txt", "-o", out, "--overwrite")
    assert np.load(out).shape == (2, 48)


def test_every_command_help_has_an_example() -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # argparse has no public accessor
    expected = {"convert", "encode", "search", "similarity", "info", "train", "aot", "benchmark", "benchmark-train"}
    expected |= {"verify", "mteb", "evaluate", "mine", "serve", "benchmark-serve", "benchmark-compile"}
    assert set(commands) == expected
    for name, sub in commands.items():
        assert "example:\n  embeddinggemma " + name in sub.format_help(), name
