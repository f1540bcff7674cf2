"""`embeddinggemma verify`: golden vectors made for the tiny checkpoint pass; a wrong sliding radius or a
perturbed weight fails and names the worst text; another checkpoint is refused in golden mode; the live
sentence-transformers reference passes; on the real checkpoint, the shipped golden vectors pass."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from embeddinggemma import cli
from embeddinggemma.eval import verify


@pytest.fixture(scope="module")
def tiny_golden(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("golden") / "tiny.npz"
    verify.make_golden(str(tiny_dir), name="tiny").save(path)
    return path


def run_verify(capsys, out_dir: Path, model: Path, *args: str, golden: Path | None = None) -> tuple:
    """(exit status, stdout + stderr, the --json report or None) of `embeddinggemma verify`."""
    report = out_dir / "report.json"
    report.unlink(missing_ok=True)
    argv = ["verify", "--model", str(model), "--json", str(report), *args]
    rc = cli.main(argv + (["--golden", str(golden)] if golden else []))
    out = capsys.readouterr()
    return rc, out.out + out.err, json.loads(report.read_text()) if report.exists() else None


def test_the_golden_set_exercises_the_traps(tiny_golden, tiny_dir):
    golden = verify.Golden.load(tiny_golden)
    from embeddinggemma import EmbeddingGemma

    model = EmbeddingGemma.from_pretrained(tiny_dir)
    lengths = [len(x) + 2 for x in model.tokenizer.pieces([item.text for item in golden.items])]
    assert max(lengths) > 2048 and any(513 < n < 2048 for n in lengths)  # cut at 2048; past one sliding window
    assert "" in [item.text for item in golden.items]
    assert {item.prompt_name for item in golden.items} >= set(model.prompts)  # every prompt of the config
    assert any(item.prompt and item.prompt.startswith("title: ") for item in golden.items)
    assert golden.vectors.dtype == np.float32 and golden.vectors.shape == (len(golden.items), 48)
    assert golden.meta["sha256"] == verify.weight_hashes(tiny_dir) and "torch" in golden.meta["versions"]


def test_golden_passes_for_each_backend_and_dtype(tiny_dir, tiny_golden, tmp_path, capsys):
    rc, out, report = run_verify(
        capsys, tmp_path, tiny_dir, "--attention", "blocked,dense", "--dtype", "float32,bfloat16", golden=tiny_golden
    )
    assert rc == 0, out
    rows = {(r["attention"], r["dtype"]): r for r in report["rows"]}
    assert set(rows) == {(a, d) for a in ("blocked", "dense") for d in ("float32", "bfloat16")}
    assert all(r["passed"] for r in rows.values()) and report["passed"]
    assert min(r["min_cosine"] for (_, d), r in rows.items() if d == "float32") >= 0.99999
    assert report["platform"]["platform"] == "cpu" and "jax" in report["platform"]["versions"]
    assert report["throughput"]["tokens_per_s"] > 0
    assert "PASS: this machine gives the reference vectors" in out


def test_a_wrong_sliding_radius_fails_and_names_the_worst_text(tiny_dir, tiny_golden, tmp_path, capsys):
    """The classic port bug: the window (16) taken as the radius (8). The weights are the golden ones, so
    golden mode runs, and the vectors say it."""
    broken = tmp_path / "wide-window"
    shutil.copytree(tiny_dir, broken)
    config = json.loads((broken / "config.json").read_text())
    config["sliding_window"] *= 2
    (broken / "config.json").write_text(json.dumps(config))
    rc, out, report = run_verify(capsys, tmp_path, broken, "--attention", "blocked", golden=tiny_golden)
    assert rc == 1
    (row,) = report["rows"]
    assert not row["passed"] and row["min_cosine"] < 0.999 and not report["passed"]
    labels = [item.label for item in verify.Golden.load(tiny_golden).items]
    assert any(row["worst"].startswith(label) for label in labels) and " dims" in row["worst"]
    assert "FAIL" in out and row["worst"] in out


def test_a_perturbed_weight_with_a_matching_hash_fails(tiny_dir, tiny_golden, tmp_path, capsys):
    from safetensors.numpy import load_file, save_file

    broken = tmp_path / "perturbed"
    shutil.copytree(tiny_dir, broken)
    weights = load_file(broken / "model.safetensors")
    name = next(k for k in weights if k.endswith("layers.1.mlp.down_proj.weight"))
    w = weights[name]  # noise, not a scale: the RMSNorm after the MLP would undo a scale
    weights[name] = (w + 0.2 * w.std() * np.random.default_rng(0).standard_normal(w.shape)).astype(w.dtype)
    save_file(weights, broken / "model.safetensors")
    golden = verify.Golden.load(tiny_golden)
    override = tmp_path / "override.npz"
    verify.Golden(golden.vectors, golden.items, {**golden.meta, "sha256": verify.weight_hashes(broken)}).save(override)
    rc, out, report = run_verify(capsys, tmp_path, broken, "--attention", "dense", golden=override)
    assert rc == 1 and not report["rows"][0]["passed"] and "FAIL" in out


def test_golden_mode_refuses_another_checkpoint(tiny_dir, tmp_path, capsys):
    assert verify.GOLDEN.exists()  # shipped in the package
    rc, out, report = run_verify(capsys, tmp_path, tiny_dir)
    assert rc == 1 and report is None
    assert "is not the checkpoint the golden vectors" in out and "google/embeddinggemma-300m" in out
    assert "--reference sentence-transformers" in out


def test_a_report_path_equal_to_an_input_is_refused(tiny_dir, tiny_golden, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    weights = (model / "model.safetensors").read_bytes()
    argv = ["verify", "--model", str(model), "--golden", str(tiny_golden), "--json", str(model / "model.safetensors")]
    assert cli.main(argv) == 1
    assert "is also an input; writing it would destroy the input" in capsys.readouterr().err
    assert (model / "model.safetensors").read_bytes() == weights


def test_an_existing_report_is_replaced_only_with_overwrite(tiny_dir, tiny_golden, tmp_path, capsys):
    report = tmp_path / "report.json"
    report.write_text("an earlier report")
    argv = ["verify", "--model", str(tiny_dir), "--golden", str(tiny_golden), "--json", str(report)]
    assert cli.main(argv) == 1
    assert "already exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert report.read_text() == "an earlier report"
    assert cli.main([*argv, "--overwrite"]) == 0
    assert json.loads(report.read_text())["passed"] is True


def test_live_sentence_transformers_reference_passes(tiny_dir, tmp_path, capsys):
    rc, out, report = run_verify(
        capsys, tmp_path, tiny_dir, "--reference", "sentence-transformers", "--attention", "blocked"
    )
    assert rc == 0, out
    assert report["rows"][0]["min_cosine"] >= 0.99999 and "sentence-transformers float32" in report["reference"]


def test_real_checkpoint_golden_passes(reference_dir, tmp_path, capsys):
    """The shipped golden vectors on the real checkpoint (when EMBEDDINGGEMMA_CHECKPOINT is set): blocked
    float32 and dense bfloat16, so both CPU backends and both dtypes (blocked bfloat16 and float32 on the
    real checkpoint: tests/model/test_reference.py). (splash_interpret, Pallas's interpreter, is far too slow
    for the real checkpoint on a CPU: it is checked against dense on the tiny model, tests/model/test_attention.py.)"""
    rows = []
    for attention, dtype in (("blocked", "float32"), ("dense", "bfloat16")):
        rc, out, report = run_verify(capsys, tmp_path, reference_dir, "--attention", attention, "--dtype", dtype)
        print(out)
        assert rc == 0, out
        rows += report["rows"]
    assert [(r["attention"], r["dtype"]) for r in rows] == [("blocked", "float32"), ("dense", "bfloat16")]
    assert all(r["passed"] for r in rows)
    assert rows[0]["min_cosine"] >= 0.99999
