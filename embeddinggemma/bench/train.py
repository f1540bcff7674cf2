"""Fine-tuning speed, ours vs sentence-transformers' trainer, in one run.

Both sides train the same model on the same rows in the same order (sentence-transformers gets our
first `steps` global batches as a dataset read sequentially), with the same batch, maximum lengths,
prompts (query prompt on queries, document prompt on positives and negatives), loss
(MatryoshkaLoss(MultipleNegativesRankingLoss), scale 20, no false-negative masking; with --grad-cache N
the cached / GradCache variant on both sides), optimizer (AdamW, no weight decay, gradient clipping at
1.0), learning-rate schedule (linear decay from the first step) and precision: float32 master weights on
both sides, computing in `dtype` (bfloat16: the trainer's `bf16=True` autocast, our compute_dtype; bfloat16
weights would lose AdamW's updates of ~1e-5, below bfloat16's 8 bits of mantissa). Each side runs in its own child
process, one after the other. Reported per side: the first step's loss (they must agree: same model,
same batch), the median step time after the first step (warm-up), examples/s from it, and peak RSS. Ours
runs twice in its process (`run_ours`): the first pass compiles one program per batch shape, the second is
measured; the first pass's median is shown too, as what a short run pays. Needs torch and sentence-transformers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sysconfig
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from embeddinggemma.bench.child import in_child
from embeddinggemma.bench.encode import PLATFORMS
from embeddinggemma.train.code_search_data import build


@dataclasses.dataclass(frozen=True)
class TrainBenchmark:
    """What `run` trains: a sentence-transformers checkpoint directory for `steps` steps of `batch_size`
    (query, positive, negative) rows of at most `max_length` tokens each, on `data` (default: docstring ->
    code pairs from this Python's standard library)."""

    checkpoint: str
    data: str | None = None
    batch_size: int = 16
    max_length: int = 64
    steps: int = 12
    learning_rate: float = 1e-5
    dtype: Literal["float32", "bfloat16"] = "float32"
    device: Literal["cpu", "gpu"] = "cpu"
    grad_cache: int | None = None  # GradCache chunk (CachedMultipleNegativesRankingLoss on ST's side)
    threads: int = os.cpu_count() or 1  # PyTorch's
    seed: int = 0
    only: Literal["ours", "sentence-transformers"] | None = None
    layers: tuple[str, ...] = ("scanned",)  # ours with the layers under lax.scan and/or "unrolled": a row each
    profile: bool = False  # also where our step's time goes (bench.profile), per layout

    @property
    def matryoshka_dims(self) -> tuple[int, ...]:
        from embeddinggemma.model.config import ModelConfig

        return ModelConfig.from_checkpoint_dir(self.checkpoint).matryoshka_dims


def _config(args: TrainBenchmark, train_file: str, output_dir: str, layers: str = "scanned") -> Any:
    from embeddinggemma.train.config import TrainConfig

    return TrainConfig(
        model=args.checkpoint,
        train_file=train_file,
        output_dir=output_dir,
        num_negatives=1,
        max_query_length=args.max_length,
        max_doc_length=args.max_length,
        mask_false_negatives=False,
        matryoshka_dims=args.matryoshka_dims,
        global_batch_size=args.batch_size,
        grad_cache_chunk=args.grad_cache,
        steps=args.steps,
        learning_rate=args.learning_rate,
        weight_decay=0.0,
        param_dtype="float32",
        compute_dtype=args.dtype,
        mesh="data=-1",  # one CPU device unless XLA_FLAGS makes more
        log_every=1,
        save_every=10**9,
        export=False,
        tensorboard=False,
        scan_layers=layers == "scanned",
        seed=args.seed,
    )


def ordered_rows(args: TrainBenchmark, train_file: str) -> list[dict[str, str]]:
    """The rows of our first `steps` global batches, in order (what sentence-transformers reads)."""
    from embeddinggemma.train.data import shuffled
    from embeddinggemma.train.sources import open_rows

    order = shuffled(open_rows(train_file), args.seed)
    rows = [order[i] for i in range(args.steps * args.batch_size)]
    return [{"anchor": r.query, "positive": r.positive, "negative": r.negatives[0]} for r in rows]


def run_ours(args: TrainBenchmark, train_file: str, layers: str = "scanned") -> dict:
    """In a child: our `train` for `steps` steps, twice with one `TrainSteps`: the first pass compiles a program
    per batch shape (the collator pads to length buckets), the second runs them all compiled. Step times from
    each pass's per-step log; losses from the second (the same as the first's: same model, same batches)."""
    import jax

    from embeddinggemma.train.loop import train
    from embeddinggemma.train.step import TrainSteps

    jax.config.update("jax_platforms", PLATFORMS[args.device])  # before the first device is touched
    compiled, passes = TrainSteps(), []
    for _ in range(2):
        with tempfile.TemporaryDirectory() as out:
            train(_config(args, train_file, out, layers), steps=compiled)
            logged = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
        passes.append([row for row in logged if "loss" in row])
    first, steps = passes
    return {
        "losses": [row["loss"] for row in steps],
        "step_s": [args.batch_size / row["examples_per_s"] for row in steps],
        "first_pass_step_s": [args.batch_size / row["examples_per_s"] for row in first],
    }


def run_profile(args: TrainBenchmark, train_file: str, layers: str = "scanned") -> dict:
    """In a child: our train step on the first batch, under the profiler (`bench.profile`)."""
    import jax

    from embeddinggemma.bench.profile import profile_train

    jax.config.update("jax_platforms", PLATFORMS[args.device])
    with tempfile.TemporaryDirectory() as out:
        return {"table": profile_train(_config(args, train_file, out, layers)).table()}


def run_sentence_transformers(args: TrainBenchmark, rows: list[dict[str, str]]) -> dict:
    """In a child: SentenceTransformerTrainer for `steps` steps on `rows`, read in order."""
    import datasets
    import torch
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers import losses as st_losses
    from sentence_transformers.base.sampler import DefaultBatchSampler
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments
    from torch.utils.data import SequentialSampler
    from transformers import TrainerCallback

    torch.set_num_threads(args.threads)
    device = PLATFORMS[args.device]
    model = SentenceTransformer(args.checkpoint, device=device, model_kwargs={"dtype": torch.float32})
    model.max_seq_length = args.max_length
    if args.grad_cache:
        inner = st_losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=args.grad_cache)
    else:
        inner = st_losses.MultipleNegativesRankingLoss(model)
    loss = st_losses.MatryoshkaLoss(model, inner, list(args.matryoshka_dims))
    losses: list[float] = []
    forward = loss.forward
    loss.forward = lambda *a, **k: _recorded(forward(*a, **k), losses)  # the exact first loss (logs round)
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *_: Any, **__: Any) -> None:
            times.append(time.perf_counter())

        def on_step_end(self, *_: Any, **__: Any) -> None:
            times[-1] = time.perf_counter() - times[-1]

    prompts = model.prompts
    with tempfile.TemporaryDirectory() as out:
        training_args = SentenceTransformerTrainingArguments(
            output_dir=out,
            max_steps=args.steps,
            per_device_train_batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            warmup_steps=0,
            lr_scheduler_type="linear",
            weight_decay=0.0,
            max_grad_norm=1.0,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            dataloader_drop_last=True,
            use_cpu=args.device == "cpu",
            bf16=args.dtype == "bfloat16",  # autocast over float32 weights
            seed=args.seed,
            prompts={"anchor": prompts["query"], "positive": prompts["document"], "negative": prompts["document"]},
            batch_sampler=lambda dataset, **kw: DefaultBatchSampler(SequentialSampler(dataset), **kw),
        )
        trainer = SentenceTransformerTrainer(
            model=model,
            args=training_args,
            train_dataset=datasets.Dataset.from_list(rows),
            loss=loss,
            callbacks=[Clock()],
        )
        trainer.train()
    return {"losses": losses, "step_s": times}


def _recorded(value: Any, into: list[float]) -> Any:
    into.append(float(value))
    return value


def write_data(directory: Path, rows: int) -> str:
    """Docstring -> code pairs from this Python's standard library (real text, no download), as JSONL."""
    train_rows, _ = build(Path(sysconfig.get_paths()["stdlib"]), eval_fraction=0.0)
    if len(train_rows) < rows:
        raise ValueError(f"the standard library gives {len(train_rows)} examples; {rows} are needed")
    path = directory / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in train_rows[:rows]))
    return str(path)


def _summary(result: dict, batch_size: int) -> dict:
    """Medians after the first step: of the measured pass, and of the pass that compiled (ours only)."""
    step = statistics.median(result["step_s"][1:])
    first = result.get("first_pass_step_s")
    compiling = statistics.median(first[1:]) if first else None
    return {**result, "median_step_s": step, "examples_per_s": batch_size / step, "compiling_step_s": compiling}


def run(args: TrainBenchmark, report: Callable[[str], None] = print) -> int:
    """Both sides (each in its own child process), then the table, `report`ed line by line."""
    with tempfile.TemporaryDirectory() as tmp:
        train_file = args.data or write_data(Path(tmp), args.steps * args.batch_size)
        results = {}
        if args.only != "ours":
            results["sentence-transformers"] = in_child(run_sentence_transformers, args, ordered_rows(args, train_file))
        profiles = {}
        for layers in args.layers if args.only != "sentence-transformers" else ():
            results["ours" if layers == "scanned" else f"ours, {layers}"] = in_child(run_ours, args, train_file, layers)
            if args.profile:
                profiles[layers] = in_child(run_profile, args, train_file, layers)
    report(
        f"{args.steps} steps of {args.batch_size} (query, positive, negative) x <= {args.max_length} tokens, "
        f"{args.dtype}, lr {args.learning_rate}" + (f", GradCache {args.grad_cache}" if args.grad_cache else "")
    )
    report(
        "| side | loss at steps 1, 2, 3 | median step s | examples/s | first pass: median step s | peak RSS GiB |\n"
        "|---|---|---|---|---|---|"
    )
    ok = {}
    for side, result in results.items():
        if "error" in result:
            report(f"{side} failed:\n{result['error']}")
            continue
        ok[side] = _summary(result, args.batch_size)
        r = ok[side]
        compiling = "" if r["compiling_step_s"] is None else f"{r['compiling_step_s']:.2f}"
        report(
            f"| {side} | {', '.join(f'{x:.6f}' for x in r['losses'][:3])} | {r['median_step_s']:.2f} | "
            f"{r['examples_per_s']:.2f} | {compiling} | {r['peak_rss_gib']:.2f} |"
        )
    ref = ok.get("sentence-transformers")
    for side, ours in ok.items():
        if ref is not None and side != "sentence-transformers":
            report(
                f"{side} / sentence-transformers: {ours['examples_per_s'] / ref['examples_per_s']:.2f}x examples/s; "
                f"first-step losses differ by {abs(ours['losses'][0] - ref['losses'][0]):.2e}"
            )
    for layers, profile in profiles.items():
        report(f"\nwhere our step's time goes ({layers} layers, the first batch):")
        report(profile.get("table") or f"profile failed:\n{profile['error']}")
    failed = any("error" in p for p in profiles.values())
    return 0 if len(ok) == len(results) and not failed else 1
