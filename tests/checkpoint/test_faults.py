"""Damaged checkpoint files are named, and `convert` on a full disk or killed leaves nothing or a whole checkpoint."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from embeddinggemma import EmbeddingGemma
from embeddinggemma.errors import CheckpointError
from tests.helpers.cli import SCRIPT, assert_one_line_error, cli_env, no_partials
from tests.helpers.faults import (
    interrupt,
    leaves,
    limited_file_size,
    run_main,
)

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
            convert(src, dst)  # also sweeps what a kill -9 left
        assert not no_partials(tmp_path)
        for a, b in zip(leaves(EmbeddingGemma.from_pretrained(dst)), clean, strict=True):
            np.testing.assert_array_equal(a, b)
