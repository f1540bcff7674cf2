"""End to end: fine-tuning improves held-out retrieval, exports to sentence-transformers, resumes
bit-exactly after SIGTERM, and rejects malformed data with file and line."""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from embeddinggemma import EmbeddingGemma, TrainConfig, train
from embeddinggemma.encode.prompts import Prompts
from embeddinggemma.errors import DataError, OutputError
from embeddinggemma.eval.texts import long_text
from embeddinggemma.model.config import ModelConfig
from embeddinggemma.train import step
from embeddinggemma.train.data import Collator
from embeddinggemma.train.metrics import DeviceIdle
from embeddinggemma.train.sources import Example, open_rows
from tests.helpers import ROOT
from tests.helpers.retrieval import write_split
from tests.helpers.train import as_parquet, final_state, tiny_run_config


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    return write_split(tmp_path_factory.mktemp("retrieval"))


STEPS = 20  # nearly 3 epochs of the 117 training rows
SHORT_RUN = {"steps": STEPS, "eval_every": 10}


def test_finetuning_improves_heldout_ndcg_and_exports(tiny_dir, data, tmp_path):
    """Also: an earlier run's export (its checkpoints pruned) is replaced only with overwrite, and a
    profile of two steps is written, its ops named by component. 20 steps (nearly 3 epochs) with an
    evaluation every 10: the (query, document) bucket pair first seen at step 23 would cost a compile."""
    from sentence_transformers import SentenceTransformer

    earlier = tmp_path / "run" / "export"
    earlier.mkdir(parents=True)
    (earlier / "marker").write_text("an earlier fine-tune")
    cfg = TrainConfig.from_dict(tiny_run_config(tiny_dir, data, tmp_path / "run", profile_steps=[4, 5], **SHORT_RUN))
    with pytest.raises(OutputError, match=r"holds an earlier run \(export\): pass --resume .* --overwrite"):
        train(cfg)
    assert (earlier / "marker").read_text() == "an earlier fine-tune"
    result = train(cfg, overwrite=True)
    assert "device-idle" not in [t.name for t in threading.enumerate()]  # the loop's watcher thread ended
    assert not (earlier / "marker").exists()
    (trace,) = (tmp_path / "run" / "profile").rglob("*.trace.json.gz")
    steps = [e for e in json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"] if e.get("name") == "train"]
    assert sorted(int(e["args"]["step_num"]) for e in steps) == [4, 5], steps  # StepTraceAnnotation per step
    (xplane,) = (tmp_path / "run" / "profile").rglob("*.xplane.pb")  # ops carry their named scopes
    scopes = (b"sliding_attention/attention", b"full_attention/mlp", b"/head/")  # a layer type's blocks, the head
    assert all(scope in xplane.read_bytes() for scope in scopes)
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
    env["EMBEDDINGGEMMA_COMPILATION_CACHE"] = str(cfg_path.parent / "jax-cache")  # not the user's cache
    return subprocess.Popen(
        [sys.executable, "-m", "embeddinggemma.cli", "train", "--config", str(cfg_path), *extra],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_sigterm_then_resume_is_bit_exact(tiny_dir, data, tmp_path):
    """From Parquet input (the data position is format-independent: tests/train/test_data.py). 20 steps of
    16 rows: nearly 3 epochs of the 117 training rows, so the resumed run crosses epoch boundaries."""
    overrides = {"steps": STEPS, "save_every": 1000, "eval_file": None, "export": False, "log_every": 1}
    overrides |= {"train_file": str(as_parquet(data[0]))}
    overrides |= {"grad_cache_chunk": None}  # one compile fewer per process
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(tiny_run_config(tiny_dir, data, tmp_path / "interrupted", **overrides)))
    proc = _train_subprocess(cfg)
    metrics = tmp_path / "interrupted" / "metrics.jsonl"
    deadline = time.time() + 400
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 143, out
    stopped, _ = final_state(tmp_path / "interrupted")
    assert 3 <= stopped < STEPS, stopped

    refused = _train_subprocess(cfg)  # same output_dir without --resume: an error, nothing overwritten
    out, _ = refused.communicate(timeout=300)
    assert refused.returncode != 0 and "--resume" in out, out

    resumed = _train_subprocess(cfg, "--resume")
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out

    straight_cfg = tmp_path / "straight.json"
    straight_cfg.write_text(json.dumps(tiny_run_config(tiny_dir, data, tmp_path / "straight", **overrides)))
    straight = _train_subprocess(straight_cfg)
    out, _ = straight.communicate(timeout=600)
    assert straight.returncode == 0, out

    (step_a, a), (step_b, b) = final_state(tmp_path / "interrupted"), final_state(tmp_path / "straight")
    assert step_a == step_b == STEPS
    for x, y in zip(nnx_leaves(a["params"]), nnx_leaves(b["params"]), strict=True):
        np.testing.assert_array_equal(x, y)


def nnx_leaves(tree) -> list[np.ndarray]:
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"query": "q", "positive": "p"}\n\n{"query": "q2"}\n{"query": 1, "positive": "p"}\nnot json\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:3: malformed example: 'positive' must be a string"):
        open_rows(path)
    assert len(open_rows(path, skip_malformed=True)) == 1
    surrogate = tmp_path / "surrogate.jsonl"  # JSON can escape a lone surrogate; it cannot be tokenized
    surrogate.write_text('{"query": "q", "positive": "p"}\n{"query": "x\\udc00", "positive": "p"}\n')
    with pytest.raises(DataError, match=r"surrogate\.jsonl:2: malformed example: 'query' is not valid Unicode: lone"):
        open_rows(surrogate)


def test_truncation_is_warned_once_and_counted(tiny_dir, caplog):
    model_cfg = ModelConfig.from_checkpoint_dir(tiny_dir)
    prompts = Prompts.for_model(model_cfg, None, None, "title: {title} | text: ")
    collator = Collator(tiny_dir / "tokenizer.model", model_cfg, prompts, num_negatives=0, max_doc_length=16)
    long_doc = Example("a query", long_text(40, 1), ())
    with caplog.at_level(logging.WARNING, logger="embeddinggemma"):
        batch = collator([long_doc, Example("another query", "short", ())])
        collator([long_doc])
    assert collator.truncated == {"queries": 0, "documents": 2}
    assert batch["d_valid"].shape[-1] == 16 and batch["d_valid"][0].all()
    warnings = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("training documents longer than 16 tokens are truncated")


def test_output_dir_of_an_earlier_run_is_never_replaced_silently(tiny_dir, data, tmp_path):
    """Checked before anything loads: a fresh run into an earlier run's directory, and a resumed run
    that would replace an existing export, are refused; nothing in the directory changes."""
    out = tmp_path / "run"
    (out / "export").mkdir(parents=True)
    (out / "metrics.jsonl").write_text("{}\n")
    cfg = TrainConfig.from_dict(tiny_run_config(tiny_dir, data, out, model=str(tmp_path / "no-such-model")))
    with pytest.raises(OutputError, match=r"holds an earlier run \(metrics.jsonl, export\)"):
        train(cfg)
    with pytest.raises(OutputError, match="an earlier run's export"):
        train(cfg, resume=True)
    assert sorted(p.name for p in out.iterdir()) == ["export", "metrics.jsonl"]
    assert (out / "metrics.jsonl").read_text() == "{}\n"


def test_nan_learning_rate_stops_with_the_last_good_checkpoint_intact(tiny_dir, data, tmp_path):
    """A learning rate of 1e30 (reached after 2 warmup steps) diverges: the run stops with a clear error at
    the first log step after it, the checkpoints before it restore, and nothing is exported."""
    overrides = {"learning_rate": 1e30, "warmup_steps": 2, "schedule": "linear", "steps": 10, "save_every": 1}
    overrides |= {"log_every": 1, "eval_file": None, "grad_cache_chunk": None}
    cfg = TrainConfig.from_dict(tiny_run_config(tiny_dir, data, tmp_path / "run", **overrides))
    with pytest.raises(FloatingPointError, match=r"non-finite loss \((nan|inf)\) at step (\d+)") as error:
        train(cfg)
    bad = int(re.search(r"at step (\d+)", str(error.value))[1])
    saved = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert 2 <= bad <= 10 and saved == list(range(1, bad))
    assert f"checkpoint is step {bad - 1} in" in str(error.value)
    step, state = final_state(tmp_path / "run")
    assert step == bad - 1 and int(state["step"]) == bad - 1
    assert not (tmp_path / "run" / "export").exists()


class _LossBecomesNaN:
    """A train step whose loss is NaN from step `at` on (as a diverged run's would be)."""

    def __init__(self, step, at: int):
        self.step, self.at, self.calls = step, at, 0

    def __getattr__(self, name):
        return getattr(self.step, name)

    def __call__(self, state, frozen, batch):
        state, metrics = self.step(state, frozen, batch)
        self.calls += 1
        return state, metrics | ({"loss": metrics["loss"] * math.nan} if self.calls >= self.at else {})


def test_non_finite_loss_stops_before_saving_and_names_a_complete_checkpoint(tiny_dir, data, tmp_path):
    """The loss is fetched only at log and save steps: a NaN at step 3 is caught at step 4's save, which
    does not happen; the message names step 2, which is on disk."""

    class NaNSteps(step.TrainSteps):
        def get(self, *args):
            return _LossBecomesNaN(super().get(*args), at=3)

    overrides = {"steps": 8, "save_every": 2, "log_every": 100, "eval_file": None, "export": False}
    cfg = TrainConfig.from_dict(tiny_run_config(tiny_dir, data, tmp_path / "run", **overrides))
    with pytest.raises(FloatingPointError, match=r"non-finite loss \(nan\) at step 3; .* checkpoint is step 2 in"):
        train(cfg, steps=NaNSteps())
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["2"]


class _DeviceLost:
    """A train step that fails when first run (a lost device, an XLA error), before any checkpoint."""

    def __init__(self, step):
        self.step = step

    def __getattr__(self, name):
        return getattr(self.step, name)

    def __call__(self, state, frozen, batch):
        raise RuntimeError("device lost")


def test_a_run_failing_before_its_first_checkpoint_leaves_nothing_that_refuses_the_rerun(tiny_dir, data, tmp_path):
    """What the failed run wrote (train_config.json, checkpoints/) is removed, so the same command runs again
    (it does not say the directory holds an earlier run); an earlier run's files there are kept."""

    class FailingSteps(step.TrainSteps):
        def get(self, *args):
            return _DeviceLost(super().get(*args))

    out = tmp_path / "run"
    cfg = TrainConfig.from_dict(tiny_run_config(tiny_dir, data, out, steps=2, eval_file=None, export=False))
    steps = FailingSteps()
    for _ in range(2):
        with pytest.raises(RuntimeError, match="device lost"):
            train(cfg, steps=steps)
        assert not out.exists() or not list(out.iterdir()), list(out.iterdir())
    out.mkdir(exist_ok=True)
    (out / "metrics.jsonl").write_text('{"step": 1}\n')  # an earlier run's, resumed without a checkpoint
    with pytest.raises(RuntimeError, match="device lost"):
        train(cfg, resume=True, steps=steps)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl"]
    assert (out / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_device_idle_is_the_wait_between_a_step_finishing_and_the_next_dispatch():
    """Step 2 is dispatched 0.2 s after step 1 finished, step 3 at once (its wait is 0): mean 0.1 s. The next
    interval measures from the last step of the previous one."""
    import jax.numpy as jnp

    with DeviceIdle() as idle:  # its watcher thread runs inside the block
        idle.dispatched(1, jnp.zeros(()))
        time.sleep(0.2)
        idle.dispatched(2, jnp.zeros(()))
        idle.dispatched(3, jnp.zeros(()))
        assert 0.09 <= idle.take() <= 0.15
        time.sleep(0.3)
        idle.dispatched(4, jnp.zeros(()))
        assert 0.29 <= idle.take() <= 0.4
    with pytest.raises(RuntimeError, match="inside `with DeviceIdle"):  # not a silent hang
        idle.take()


def test_a_resumed_run_continues_metrics_without_repeating_steps(tmp_path):
    """A run killed after logging step 3 resumes from its step-2 checkpoint: the rows after step 2 (and the
    row the kill cut short) give way to the resumed run's, at its first write; from step 0 the file starts over."""
    from embeddinggemma.train.metrics import MetricsLog
    from embeddinggemma.train.outputs import OutputDir

    out = OutputDir(tmp_path)
    rows = [{"step": 0, "eval/48/ndcg@10": 0.5}, *({"step": s, "loss": 2.0 - s / 10} for s in (1, 2, 3))]
    earlier = "".join(json.dumps(row) + "\n" for row in rows) + '{"step": 4, "lo'
    (tmp_path / "metrics.jsonl").write_text(earlier)

    def steps() -> list[int]:
        return [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]

    log = MetricsLog(out, tensorboard=False, step=2)
    assert (tmp_path / "metrics.jsonl").read_text() == earlier, "nothing changes before the run logs"
    log.write(3, {"loss": 1.0})
    log.write(4, {"loss": 1.0})
    assert steps() == [0, 1, 2, 3, 4]
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[3]) == {"step": 3, "loss": 1.0}
    MetricsLog(out, tensorboard=False, step=0).write(0, {"eval/48/ndcg@10": 0.5})
    assert steps() == [0]


BAD_CONFIG_VALUES = {
    "steps": ("10", "steps must be an integer or null, got '10'"),
    "learning_rate": (float("nan"), "learning_rate must be a finite number, got nan"),
    "save_every": (0, "save_every must be > 0, got 0"),
    "grad_cache_chunk": (0, "grad_cache_chunk must be > 0 or null, got 0"),
    "schedule": ("cos", "schedule must be one of 'linear', 'cosine', got 'cos'"),
    "matryoshka_dims": ([64, 64], "matryoshka_dims must be distinct positive widths"),
    "remat": (1, "remat must be one of 'none', 'full', 'dots', got 1"),
    "adam_b1": (-0.1, r"adam_b1 must be in \[0, 1\)"),
    "output_dir": ("", "output_dir must be a path, got ''"),  # not the working directory
    "train_file": (" ", "train_file must be a path, got ' '"),
}


@pytest.mark.parametrize("key", BAD_CONFIG_VALUES)
def test_config_values_are_checked_by_type_and_range(key, tiny_dir, data, tmp_path):
    value, message = BAD_CONFIG_VALUES[key]
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(tiny_run_config(tiny_dir, data, tmp_path, **{key: value}))


def test_a_query_prompt_longer_than_max_query_length_is_refused(tiny_dir):
    cfg = ModelConfig.from_checkpoint_dir(tiny_dir)
    prompts = Prompts.for_model(cfg, None, None, "title: {title} | text: ")
    with pytest.raises(ValueError, match=r"query_prompt 'task: search result \| query: ' is \d+ tokens"):
        Collator(tiny_dir / "tokenizer.model", cfg, prompts, num_negatives=0, max_query_length=6)
