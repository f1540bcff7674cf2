"""`train(config)`: the fine-tuning loop (load, shard, step, log, evaluate, checkpoint, resume, export).

Outputs under `output_dir` (a local directory or a gs:// URL: see outputs.py):
  train_config.json   the TrainConfig of the run
  metrics.jsonl       one JSON object per logged step ({"step", "loss", "loss@768", ..., "examples_per_s",
                      "tokens_per_s"}) and per evaluation ({"step", "eval/768/ndcg@10", ...})
  checkpoints/<step>  orbax checkpoints (state + data position), the newest `keep_checkpoints`
  export/             the final model as a sentence-transformers directory
  tensorboard/        the same scalars, when tensorboard is installed
  profile/            a JAX profiler trace of `profile_steps`, when set
A run never deletes what an earlier run left: a fresh run refuses an output_dir holding one (unless
`overwrite`), and the export of a resumed run replaces an existing one only with `overwrite`. A run that
fails before saving a checkpoint removes what it wrote, so the rerun is not refused. Every training row is
checked before the model loads.
The host does not wait for the device between steps: losses are fetched at log, save and eval steps,
where a non-finite one stops the run before anything is saved from it. SIGTERM (a preempted TPU VM)
finishes the current step, saves a checkpoint and returns "preempted".
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from typing import Any, Literal

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from embeddinggemma import checkpoint, sharding
from embeddinggemma.checkpoint import hf
from embeddinggemma.encode.encoder import EmbeddingGemma
from embeddinggemma.encode.prompts import Prompts
from embeddinggemma.errors import OutputError
from embeddinggemma.eval import retrieval
from embeddinggemma.model import quantized
from embeddinggemma.model.tokenizer import Tokenizer
from embeddinggemma.train.checkpointing import RunCheckpoints, saved_steps
from embeddinggemma.train.config import TrainConfig
from embeddinggemma.train.data import Batches, Collator
from embeddinggemma.train.metrics import DeviceIdle, MetricsLog
from embeddinggemma.train.outputs import OutputDir
from embeddinggemma.train.preemption import preemption
from embeddinggemma.train.sources import Columns, Rows, examples, open_rows
from embeddinggemma.train.step import TrainStep, TrainSteps, split_module, training_module

logger = logging.getLogger(__name__)

Status = Literal["completed", "preempted"]
# What a run writes into output_dir (all of it is an earlier run's when a fresh run starts).
RUN_FILES = ("checkpoints", "metrics.jsonl", "train_config.json", "export", "tensorboard", "profile")


def _evalset(spec: str, columns: Columns | None) -> retrieval.RetrievalSet:
    """A BEIR directory (`DIR`, or `DIR:split`; default split test), else rows in a training input format."""
    beir = retrieval.beir_split(spec)
    if beir is not None:
        return retrieval.RetrievalSet.from_beir(*beir)
    return retrieval.RetrievalSet.from_examples(examples(open_rows(spec, columns)))


def check_output_dir(cfg: TrainConfig, out: OutputDir, *, resume: bool, overwrite: bool) -> list[str]:
    """The earlier run's files in output_dir that this run would replace (checked before anything loads).

    A fresh run refuses an output_dir with an earlier run in it; a resumed run refuses to replace an
    existing export at its end. `overwrite` allows both.
    """
    if out.is_file():
        raise OutputError(f"output_dir {out.spec} is a file")
    found = [name for name in RUN_FILES if out.exists(name)]
    if overwrite:
        return found
    if resume and cfg.export and "export" in found:
        raise OutputError(
            f"{out.url('export')} exists (an earlier run's export): the resumed run would replace it at the end; "
            "pass --overwrite to allow that, or set export=false"
        )
    if not resume and found:
        raise OutputError(
            f"{out.spec} holds an earlier run ({', '.join(found)}): pass --resume to continue it, --overwrite to "
            "replace it, or choose a new output_dir"
        )
    return []


def fit_negatives(cfg: TrainConfig, rows: Rows, doc_length: int) -> TrainConfig:
    """num_negatives checked against the data and the machine before any batch is built (one value sizes every
    batch: num_negatives=100000000 once grew to 19 GB before the kernel killed it). More than any row has is
    clamped, with a warning: the slots beyond would only hold masked copies of the positive. A batch whose
    tokens would not fit in host memory is refused."""
    if cfg.num_negatives > rows.max_negatives:
        logger.warning(
            "num_negatives %d: no row of %s has more than %d hard negatives; training with num_negatives=%d",
            cfg.num_negatives,
            rows.name,
            rows.max_negatives,
            rows.max_negatives,
        )
        cfg = dataclasses.replace(cfg, num_negatives=rows.max_negatives)
    documents = cfg.global_batch_size // jax.process_count() * (1 + cfg.num_negatives)
    batches = cfg.prefetch + 2  # prefetched, being placed, being trained on
    need = documents * doc_length * 5 * batches  # int32 token ids and a bool mask per token
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > have:
        raise ValueError(
            f"num_negatives {cfg.num_negatives}: {batches} batches of {documents:,} documents of up to {doc_length} "
            f"tokens need {need / 2**30:,.1f} GiB of host memory, more than this machine's {have / 2**30:,.1f} GiB; "
            "lower num_negatives, global_batch_size, max_doc_length or prefetch"
        )
    return cfg


def _total_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    return cfg.steps if cfg.steps is not None else max(1, math.ceil(cfg.epochs * steps_per_epoch))


@dataclasses.dataclass
class Run:
    """One training run: what `setup` builds, `loop` advances and `finish` exports."""

    cfg: TrainConfig
    out: OutputDir
    mesh: jax.sharding.Mesh
    ts: TrainStep
    frozen: nnx.State
    state: dict[str, Any]
    batches: Batches
    collator: Collator
    ckpts: RunCheckpoints
    log: MetricsLog
    encoder: EmbeddingGemma
    evalset: retrieval.RetrievalSet | None
    total: int
    step: int = dataclasses.field(init=False)
    unchecked: list[tuple[int, jax.Array]] = dataclasses.field(default_factory=list)  # (step, loss) not yet seen

    def __post_init__(self) -> None:
        self.step = int(self.state["step"])  # 0, or the restored step

    @classmethod
    def setup(cls, cfg: TrainConfig, out: OutputDir, steps: TrainSteps, *, resume: bool, replace: list[str]) -> Run:
        """Load the model onto the mesh, read the data, get the step from `steps`, and restore or initialize the
        state. `replace`: an earlier run's files in output_dir to delete before this run writes (--overwrite).
        Every data row is checked first, before the model loads and anything is written."""
        columns = Columns.from_config(cfg.columns) if cfg.columns else None
        rows = open_rows(cfg.train_file, columns, skip_malformed=cfg.skip_malformed)
        evalset = _evalset(cfg.eval_file, columns) if cfg.eval_file else None
        mesh = sharding.make_mesh(cfg.mesh)
        ckpt = checkpoint.load(cfg.model, dtype=cfg.param_dtype, mesh=mesh, purpose="train")
        cfg = fit_negatives(cfg, rows, cfg.max_doc_length or ckpt.config.max_seq_length)
        module = training_module(cfg, ckpt.config)
        nnx.update(module, ckpt.params)
        graphdef, frozen, params = split_module(module, cfg.freeze_embeddings)

        prompts = Prompts.for_model(ckpt.config, cfg.query_prompt, cfg.document_prompt, cfg.title_prompt)
        collator = Collator(
            ckpt.tokenizer_file,
            ckpt.config,
            prompts,
            num_negatives=cfg.num_negatives,
            max_query_length=cfg.max_query_length,
            max_doc_length=cfg.max_doc_length,
            mask_false_negatives=cfg.mask_false_negatives,
            exchange=f"run-{sharding.shared_token()}",
        )
        batches = Batches(rows, collator, cfg.global_batch_size, cfg.seed)
        total = _total_steps(cfg, batches.steps_per_epoch)
        ts = steps.get(cfg, ckpt.config, mesh, total)

        if jax.process_index() == 0:  # the earlier run's export stays until ours is complete (finish)
            for name in (n for n in replace if n != "export"):
                out.remove(name)
            out.local.mkdir(parents=True, exist_ok=True)
            (out.local / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
            out.publish("train_config.json")
        sharding.sync_processes("output_dir ready")
        ckpts = RunCheckpoints(out.checkpoints(), cfg.keep_checkpoints)
        latest = ckpts.latest_step() if resume else None  # a fresh run's directory has none (check_output_dir)
        if latest is not None:
            state, data_state = ckpts.restore(latest, ts.abstract_state, ts.state_shardings)
            batches.check_resume(data_state, latest)
            logger.info("resumed from step %d (epoch %.2f)", latest, batches.epoch(latest))
        else:
            state = ts.init_state(params)
        encoder = EmbeddingGemma(
            nnx.merge(graphdef, frozen, state["params"]),
            Tokenizer(ckpt.tokenizer_file, ckpt.config),
            metadata_dir=ckpt.metadata_dir,
            mesh=mesh,
        )
        log = MetricsLog(out, cfg.tensorboard, step=latest or 0)
        return cls(cfg, out, mesh, ts, frozen, state, batches, collator, ckpts, log, encoder, evalset, total)

    # ------------------------------------------------------------------ the loop

    def evaluate(self) -> dict[str, float]:
        if self.evalset is None:
            return {}
        module = nnx.merge(self.ts.graphdef, self.frozen, self.state["params"], copy=True)
        if self.cfg.quantization is not None:  # QAT: the metrics of the quantized model (weight-only numerics)
            quantized.fake_quantize_in_place(module, self.cfg.quantization)
        self.encoder.params = nnx.state(module)
        dims, prompts = self.cfg.matryoshka_dims, self.collator.prompts
        by_dim = retrieval.evaluate(self.encoder, self.evalset, dims, prompts, batch_size=self.cfg.eval_batch_size)
        metrics = {f"eval/{dim}/{name}": value for dim, values in by_dim.items() for name, value in values.items()}
        self.log.write(self.step, metrics)
        return metrics

    def check_finite(self) -> None:
        """Fetch the losses not yet seen; stop at the first non-finite one, naming the last complete checkpoint."""
        losses = jax.device_get([loss for _, loss in self.unchecked])
        bad = next(
            ((step, x) for (step, _), x in zip(self.unchecked, losses, strict=True) if not math.isfinite(x)), None
        )
        self.unchecked.clear()
        if bad is not None:
            self.ckpts.wait()  # an in-flight save is complete (or failed) before we name it
            latest = self.ckpts.latest_step()
            where = (
                f"step {latest} in {self.ckpts.directory}" if latest is not None else "none (no checkpoint was saved)"
            )
            raise FloatingPointError(
                f"non-finite loss ({bad[1]}) at step {bad[0]}; stopping before it is saved. The last good "
                f"checkpoint is {where} (lower the learning rate or check the data)."
            )

    def place(self, host_batch: dict[str, np.ndarray]) -> tuple[dict[str, jax.Array], int]:
        """This process's rows of a global batch placed on the mesh, and the global token count."""
        tokens = int(host_batch["q_valid"].sum() + host_batch["d_valid"].sum()) * jax.process_count()
        placed = sharding.host_local_batch(self.mesh, *host_batch.values())
        return dict(zip(host_batch, placed, strict=True)), tokens

    def loop(self) -> Status:
        """Train to `total` steps (or until SIGTERM); returns how it ended."""
        cfg = self.cfg
        profile = cfg.profile_steps
        # read, tokenize, pad and place on background threads, `prefetch` batches ahead of the device
        batches = self.batches.iterate(
            self.step, self.total, prefetch=cfg.prefetch, threads=cfg.data_threads, then=self.place
        )
        with (
            preemption() as preempted,
            tqdm(
                total=self.total, initial=self.step, desc="train", unit="step", disable=jax.process_index() != 0
            ) as bar,
            DeviceIdle() as idle,
        ):
            t0, examples, tokens = time.perf_counter(), 0, 0
            while self.step < self.total:
                if profile and self.step + 1 == profile[0]:
                    jax.profiler.start_trace(str(self.out.local / "profile"))
                with jax.profiler.StepTraceAnnotation("train", step_num=self.step + 1):
                    batch, batch_tokens = next(batches)
                    self.state, metrics = self.ts(self.state, self.frozen, batch)
                self.step += 1
                if profile and self.step == profile[1]:
                    jax.block_until_ready(metrics)
                    jax.profiler.stop_trace()
                    self.out.publish("profile")  # each host's trace is its own file
                self.unchecked.append((self.step, metrics["loss"]))
                idle.dispatched(self.step, metrics["loss"])
                tokens, examples = tokens + batch_tokens, examples + cfg.global_batch_size
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == self.total:
                    self.check_finite()
                    dt = time.perf_counter() - t0
                    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    values |= {
                        "examples_per_s": examples / dt,
                        "tokens_per_s": tokens / dt,
                        "epoch": self.batches.epoch(self.step),
                        "device_idle_s": idle.take(),
                    }
                    values |= {f"truncated_{kind}": n for kind, n in self.collator.truncated.items()}
                    self.log.write(self.step, values)
                    bar.set_postfix(
                        loss=f"{values['loss']:.4f}",
                        ex_s=f"{values['examples_per_s']:.1f}",
                        tok_s=f"{values['tokens_per_s']:.0f}",
                    )
                    t0, examples, tokens = time.perf_counter(), 0, 0
                if preempted(self.step):
                    return "preempted"
                if self.step % cfg.save_every == 0 or self.step == self.total:
                    self.check_finite()
                    self.ckpts.save(self.step, self.state, self.batches.state(self.step))
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < self.total:
                    self.check_finite()
                    self.evaluate()
        return "completed"

    def finish(self, status: Status) -> dict[str, Any]:
        """Save a preempted run, wait for checkpoints, then evaluate and export a completed one."""
        if status == "preempted":
            self.check_finite()
            self.ckpts.save(self.step, self.state, self.batches.state(self.step))
        self.ckpts.wait()
        result: dict[str, Any] = {"status": status, "step": self.step}
        if status == "completed":
            result["eval_end"] = self.evaluate()
            if self.cfg.export and jax.process_index() == 0:
                full = nnx.state(nnx.merge(self.ts.graphdef, self.frozen, self.state["params"]))
                hf.write(jax.device_get(full), self.encoder.metadata_dir, self.out.local / "export", replace=True)
                result["export"] = self.out.publish_export()
        return result


def train(
    cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False, steps: TrainSteps | None = None
) -> dict[str, Any]:
    """Fine-tune `cfg.model` on `cfg.train_file`; returns {"status", "step", "eval_start", "eval_end", "export"}.

    `resume`: continue from the newest checkpoint in output_dir/checkpoints (starting fresh if there is
    none). `overwrite`: replace an earlier run in output_dir (its checkpoints, metrics and, once this
    run's is complete, its export); without it a run never deletes or replaces anything. `steps`: the
    compiled train steps to reuse (and add to), e.g. one `TrainSteps()` held across runs in a notebook.
    """
    sharding.maybe_initialize_distributed()
    out = OutputDir(cfg.output_dir)
    try:
        replace = check_output_dir(cfg, out, resume=resume, overwrite=overwrite)
        earlier = set() if overwrite else {name for name in RUN_FILES if out.exists(name)}
        cfg = cfg.for_model(checkpoint.read_config(cfg.model))
        sharding.sync_processes("output_dir checked")  # before any process writes into it
        try:
            run = Run.setup(cfg, out, steps or TrainSteps(), resume=resume, replace=replace if not resume else [])
            try:
                result = {"eval_start": run.evaluate()} if run.step == 0 else {}
                status = run.loop()
                return result | run.finish(status)
            finally:
                run.ckpts.wait()
                run.ckpts.close()
        except BaseException:
            discard_unsaved(out, keep=earlier)
            raise
    finally:
        out.close()


def discard_unsaved(out: OutputDir, *, keep: set[str]) -> None:
    """After a failure before any checkpoint was saved, remove what the run wrote (but `keep`, an earlier
    run's files): otherwise its train_config.json and metrics.jsonl would refuse the rerun that fixes it."""
    if jax.process_index() != 0 or (out.exists("checkpoints") and saved_steps(out.checkpoints())):
        return
    written = [name for name in RUN_FILES if name not in keep and name != "export" and out.exists(name)]
    try:
        for name in written:
            out.remove(name)
    except OSError as e:  # the failure being raised is the one to report
        logger.warning("could not remove %s from %s (%s)", ", ".join(written), out.spec, e)
    else:
        if written:
            logger.info("removed %s from %s: the run failed before saving a checkpoint", ", ".join(written), out.spec)
