"""End to end: fine-tuning improves held-out retrieval, exports to sentence-transformers, resumes
bit-exactly after SIGTERM, and rejects malformed data with file and line."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from embeddinggemma import EmbeddingGemma
from embeddinggemma.config import ModelConfig
from embeddinggemma.train import TrainConfig, train
from embeddinggemma.train.data import Collator, DataError, Example, Prompts, read_jsonl
from tests.retrieval_data import write_split
from tests.texts import long_text
from tests.train_helpers import ROOT, final_state, tiny_run_config


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    return write_split(tmp_path_factory.mktemp("retrieval"))


def test_finetuning_improves_heldout_ndcg_and_exports(tiny_dir, data, tmp_path):
    from sentence_transformers import SentenceTransformer

    result = train(TrainConfig.from_dict(tiny_run_config(tiny_dir, data, tmp_path / "run")))
    before, after = result["eval_start"]["eval/48/ndcg@10"], result["eval_end"]["eval/48/ndcg@10"]
    print(f"held-out nDCG@10 (48-d): {before:.4f} -> {after:.4f}")
    assert result["status"] == "completed" and after > before + 0.05
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "loss@8", "grad_norm", "examples_per_s", "tokens_per_s", "truncated_documents"} <= set(logged[1])
    assert any("eval/8/recall@100" in row for row in logged)

    export = Path(result["export"])
    texts = ["What is the capital of Peru?", "Lima is the capital city of Peru.", "Gold has the symbol Au."]
    ours = EmbeddingGemma.from_pretrained(export).encode(texts)
    ref = SentenceTransformer(str(export), device="cpu").encode(texts)
    cos = (ours * ref).sum(axis=1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.99999
    changed = EmbeddingGemma.from_pretrained(tiny_dir).encode(texts)
    assert np.abs(changed - ours).max() > 1e-3  # the export holds the trained weights


def _train_subprocess(cfg_path: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "train.py"), "--config", str(cfg_path), *extra],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_sigterm_then_resume_is_bit_exact(tiny_dir, data, tmp_path):
    overrides = {"steps": 200, "save_every": 1000, "eval_file": None, "export": False, "log_every": 1}
    overrides |= {"grad_cache_chunk": None}  # one compile fewer per process
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(tiny_run_config(tiny_dir, data, tmp_path / "interrupted", **overrides)))
    proc = _train_subprocess(cfg)
    metrics = tmp_path / "interrupted" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out
    stopped, _ = final_state(tmp_path / "interrupted")
    assert 3 <= stopped < 200, stopped

    refused = _train_subprocess(cfg)  # same output_dir without --resume: an error, nothing overwritten
    out, _ = refused.communicate(timeout=120)
    assert refused.returncode != 0 and "--resume" in out, out

    resumed = _train_subprocess(cfg, "--resume")
    out, _ = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, out

    straight_cfg = tmp_path / "straight.json"
    straight_cfg.write_text(json.dumps(tiny_run_config(tiny_dir, data, tmp_path / "straight", **overrides)))
    straight = _train_subprocess(straight_cfg)
    out, _ = straight.communicate(timeout=180)
    assert straight.returncode == 0, out

    (step_a, a), (step_b, b) = final_state(tmp_path / "interrupted"), final_state(tmp_path / "straight")
    assert step_a == step_b == 200
    for x, y in zip(nnx_leaves(a["params"]), nnx_leaves(b["params"]), strict=True):
        np.testing.assert_array_equal(x, y)


def nnx_leaves(tree) -> list[np.ndarray]:
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"query": "q", "positive": "p"}\n\n{"query": "q2"}\n{"query": 1, "positive": "p"}\nnot json\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:3: malformed example: 'positive' must be a string"):
        read_jsonl(path)
    assert len(read_jsonl(path, skip_malformed=True)) == 1


def test_truncation_is_warned_once_and_counted(tiny_dir, caplog):
    model_cfg = ModelConfig.from_checkpoint_dir(tiny_dir)
    prompts = Prompts.resolve(model_cfg, None, None, "title: {title} | text: ")
    collator = Collator(tiny_dir / "tokenizer.model", model_cfg, prompts, num_negatives=0, max_doc_length=16)
    long_doc = Example("a query", long_text(40, 1), ())
    with caplog.at_level(logging.WARNING, logger="embeddinggemma"):
        batch = collator([long_doc, Example("another query", "short", ())])
        collator([long_doc])
    assert collator.truncated == {"queries": 0, "documents": 2}
    assert batch["d_valid"].shape[-1] == 16 and batch["d_valid"][0].all()
    warnings = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("training documents longer than 16 tokens are truncated")
