"""`train(config)`: the fine-tuning loop (load, shard, step, log, evaluate, checkpoint, resume, export).

Outputs under `output_dir`:
  train_config.json   the TrainConfig of the run
  metrics.jsonl       one JSON object per logged step ({"step", "loss", "loss@768", ..., "examples_per_s",
                      "tokens_per_s"}) and per evaluation ({"step", "eval/768/ndcg@10", ...})
  checkpoints/<step>  orbax checkpoints (state + data position), the newest `keep_checkpoints`
  export/             the final model as a sentence-transformers directory
  tensorboard/        the same scalars, when tensorboard is installed
SIGTERM (a preempted TPU VM) finishes the current step, saves a checkpoint and returns "preempted";
a non-finite loss raises FloatingPointError before anything is saved from that step.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
from flax import nnx
from tqdm.auto import tqdm

from embeddinggemma import checkpoint, sharding
from embeddinggemma.config import ModelConfig
from embeddinggemma.encoder import EmbeddingGemma
from embeddinggemma.tokenizer import Tokenizer
from embeddinggemma.train.checkpointing import RunCheckpoints
from embeddinggemma.train.config import TrainConfig
from embeddinggemma.train.data import BatchIterator, Collator, Prompts, read_jsonl
from embeddinggemma.train.evaluate import EvalSet, evaluate
from embeddinggemma.train.step import TrainStep, build_train_step, split_module, training_module

logger = logging.getLogger(__name__)


class MetricsLog:
    """metrics.jsonl (appended, so a resumed run continues the file) plus TensorBoard when available."""

    def __init__(self, output_dir: Path, tensorboard: bool):
        self.enabled = jax.process_index() == 0
        self.path = output_dir / "metrics.jsonl"
        self.writer = None
        if self.enabled and tensorboard and importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(output_dir / "tensorboard"))

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)
            self.writer.flush()


@contextlib.contextmanager
def _sigterm_flag() -> Iterator[dict[str, bool]]:
    """{"set": True} once SIGTERM arrives; the loop checks it between steps."""
    flag = {"set": False}

    def handler(signum: int, frame: Any) -> None:
        logger.warning("SIGTERM: saving a checkpoint after the current step, then exiting")
        flag["set"] = True

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


def _load_model(cfg: TrainConfig, mesh: jax.sharding.Mesh) -> tuple[ModelConfig, Path, nnx.State]:
    """(model config, metadata dir, parameters in param_dtype placed on their "train" shardings)."""
    root = checkpoint.resolve(cfg.model)
    native = checkpoint.is_native(root)
    model_cfg = checkpoint.read_native_config(root) if native else ModelConfig.from_checkpoint_dir(root)
    _, skeleton = checkpoint.abstract_state(model_cfg, cfg.param_dtype)
    shardings = sharding.param_shardings(skeleton, mesh, "train")
    load = checkpoint.load_native_params if native else checkpoint.load_hf_params
    params = load(root, model_cfg, param_dtype=cfg.param_dtype, shardings=shardings)
    return model_cfg, root / "hf" if native else root, params


def _total_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    return cfg.steps if cfg.steps is not None else max(1, math.ceil(cfg.epochs * steps_per_epoch))


def train(cfg: TrainConfig, *, resume: bool = False) -> dict[str, Any]:
    """Fine-tune `cfg.model` on `cfg.train_file`; returns {"status", "step", "metrics", "export"}.

    `resume`: continue from the newest checkpoint in output_dir/checkpoints (starting fresh if there is
    none). Without it an output_dir that already holds checkpoints is an error, never overwritten.
    """
    sharding.maybe_initialize_distributed()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    mesh = sharding.make_mesh(cfg.mesh)
    model_cfg, metadata_dir, loaded = _load_model(cfg, mesh)
    module = training_module(cfg, model_cfg)
    nnx.update(module, loaded)
    graphdef, frozen, params = split_module(module, cfg.freeze_embeddings)

    prompts = Prompts.resolve(model_cfg, cfg.query_prompt, cfg.document_prompt, cfg.title_prompt)
    collator = Collator(
        metadata_dir / "tokenizer.model",
        model_cfg,
        prompts,
        num_negatives=cfg.num_negatives,
        max_query_length=cfg.max_query_length,
        max_doc_length=cfg.max_doc_length,
        mask_false_negatives=cfg.mask_false_negatives,
    )
    batches = BatchIterator(
        read_jsonl(cfg.train_file, skip_malformed=cfg.skip_malformed), collator, cfg.global_batch_size, cfg.seed
    )
    total = _total_steps(cfg, batches.steps_per_epoch)
    ts = build_train_step(cfg, model_cfg, mesh, total)

    ckpts = RunCheckpoints(out / "checkpoints", cfg.keep_checkpoints)
    latest = ckpts.latest_step()
    if latest is not None and not resume:
        raise FileExistsError(f"{out / 'checkpoints'} already holds step {latest}: pass --resume or a new output_dir")
    if latest is not None:
        state, data_state = ckpts.restore(latest, ts.abstract_state, ts.state_shardings)
        batches.restore(data_state)
        logger.info("resumed from step %d (epoch %d, batch %d)", latest, batches.epoch, batches.batch)
    else:
        state = ts.init_state(params)
    del params, loaded  # the state owns the trained parameters now (and is donated each step)
    (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))

    log = MetricsLog(out, cfg.tensorboard)
    encoder = EmbeddingGemma(
        nnx.merge(graphdef, frozen, state["params"]),
        Tokenizer(metadata_dir / "tokenizer.model", model_cfg),
        metadata_dir=metadata_dir,
        mesh=mesh,
    )
    evalset = EvalSet.from_examples(read_jsonl(cfg.eval_file), prompts) if cfg.eval_file else None

    def run_eval(step: int) -> dict[str, float]:
        if evalset is None:
            return {}
        encoder.params = nnx.state(nnx.merge(graphdef, frozen, state["params"]))
        metrics = evaluate(encoder, evalset, cfg.matryoshka_dims, cfg.eval_batch_size)
        log.write(step, metrics)
        return metrics

    step = int(state["step"])
    results: dict[str, Any] = {"eval_start": run_eval(step)} if step == 0 else {}
    status = "completed"
    with (
        _sigterm_flag() as sigterm,
        tqdm(total=total, initial=step, desc="train", unit="step", disable=jax.process_index() != 0) as bar,
    ):
        t0, examples, tokens = time.perf_counter(), 0, 0
        while step < total:
            host_batch = next(batches)
            tokens += int(host_batch["q_valid"].sum() + host_batch["d_valid"].sum()) * jax.process_count()
            examples += cfg.global_batch_size
            batch = dict(zip(host_batch, sharding.host_local_batch(mesh, *host_batch.values()), strict=True))
            state, metrics = ts(state, frozen, batch)
            step += 1
            loss = float(metrics["loss"])
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite loss ({loss}) at step {step}; stopping. The last good checkpoint is step "
                    f"{ckpts.latest_step()} in {ckpts.directory} (lower the learning rate or check the data)."
                )
            bar.update(1)
            if step % cfg.log_every == 0 or step == total:
                dt = time.perf_counter() - t0
                values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                values |= {"examples_per_s": examples / dt, "tokens_per_s": tokens / dt, "epoch": batches.epoch}
                values |= {f"truncated_{kind}": n for kind, n in collator.truncated.items()}
                log.write(step, values)
                bar.set_postfix(
                    loss=f"{loss:.4f}", ex_s=f"{values['examples_per_s']:.1f}", tok_s=f"{values['tokens_per_s']:.0f}"
                )
                t0, examples, tokens = time.perf_counter(), 0, 0
            if sigterm["set"]:
                status = "preempted"
                break
            if step % cfg.save_every == 0 or step == total:
                ckpts.save(step, state, batches.state())
            if cfg.eval_every and step % cfg.eval_every == 0 and step < total:
                run_eval(step)
    if status == "preempted":
        ckpts.save(step, state, batches.state())
    ckpts.wait()
    ckpts.close()
    results |= {"status": status, "step": step}
    if status == "completed":
        results["eval_end"] = run_eval(step)
        if cfg.export and jax.process_index() == 0:
            results["export"] = str(_export(ts, frozen, state, metadata_dir, out / "export"))
    return results


def _export(ts: TrainStep, frozen: nnx.State, state: dict[str, Any], metadata_dir: Path, dest: Path) -> Path:
    """The trained model as a sentence-transformers directory (float32 parameters); replaces `dest`."""
    full = nnx.state(nnx.merge(ts.graphdef, frozen, state["params"]))
    if dest.exists():
        shutil.rmtree(dest)
    return checkpoint.save_hf(jax.device_get(full), metadata_dir, dest)
