"""Where the train step's time goes: the compiled step run under `jax.profiler`, each XLA op's time summed
by the component its name scope says it belongs to (`embeddinggemma benchmark-train --profile`).

The step is compiled once ahead of time, so the ops in the trace are those of the HLO we read: each op's
`op_name` metadata carries the JAX name scopes (embed, sliding_attention/attention, .../norm, head, loss,
optimizer) and whether it is part of the backward pass (`transpose(jvp(...))`). Ops without a scope are
"other": layouts, casts and the scan's slicing of the layer stacks. Times are per step, summed over the
threads XLA:CPU runs ops on (so they can add up to more than the wall time); "idle" is the part of the
wall time in which no op ran at all (dispatch, host work between ops, waiting).
"""

from __future__ import annotations

import dataclasses
import re
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import jax

CONTROL_FLOW = frozenset({"while", "conditional", "call"})  # their bodies' ops are in the trace on their own
INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?\s([a-z][\w\-]*)\(")
OP_NAME = re.compile(r'op_name="([^"]*)"')
BLOCK_PARTS = ("attention", "mlp")
HEAVIEST = 12


@dataclasses.dataclass(frozen=True)
class StepProfile:
    """Per-step seconds: `ops[(component, "forward" | "backward" | "update")]`, the median wall time, and idle
    time."""

    ops: dict[tuple[str, str], float]
    wall_s: float
    idle_s: float
    unmatched_s: float  # ops of the trace missing from the HLO (should be 0)
    heaviest: list[tuple[float, str, str]]  # (seconds per step, instruction, op_name) of the costliest ops

    def table(self) -> str:
        total = sum(self.ops.values())
        by_name: dict[str, dict[str, float]] = defaultdict(dict)
        for (name, direction), seconds in self.ops.items():
            by_name[name][direction] = seconds
        cell = lambda x: "" if x is None else f"{x:.3f}"  # noqa: E731
        lines = ["| component | forward s | backward s | total s | share of op time |", "|---|---|---|---|---|"]
        for name, parts in sorted(by_name.items(), key=lambda kv: -sum(kv[1].values())):
            both = sum(parts.values())
            fwd, bwd = parts.get("forward"), parts.get("backward")
            lines.append(f"| {name} | {cell(fwd)} | {cell(bwd)} | {both:.3f} | {100 * both / total:.1f}% |")
        lines.append(
            f"\nper step: wall {self.wall_s:.2f} s; op time {total:.2f} s (summed over threads); "
            f"idle {self.idle_s:.2f} s (no op running)\n\nheaviest ops:"
        )
        lines += [f"- {seconds:.3f} s {name} ({op_name or 'no scope'})" for seconds, name, op_name in self.heaviest]
        return "\n".join(lines)


def component(op_name: str) -> tuple[str, str]:
    """(component, pass) of an op from its name-scope path, e.g. "jit(step)/transpose(jvp())/while/body/
    closed_call/sliding_attention/mlp/dot_general" is the backward of a sliding block's MLP."""
    scopes = [s for s in re.split(r"[/()]", op_name) if s]
    direction = "backward" if "transpose" in scopes else "forward"
    if "optimizer" in scopes:
        return "optimizer (clip, AdamW)", "update"
    if "loss" in scopes:
        return "loss", direction
    if "embed" in scopes:
        return "embedding", direction
    for layer_type in ("sliding_attention", "full_attention"):
        if layer_type in scopes:
            inner = scopes[scopes.index(layer_type) + 1 :]
            part = "norms" if "norm" in inner else next((p for p in BLOCK_PARTS if p in inner), "other")
            return f"{layer_type} blocks: {part}", direction
    if "head" in scopes or "final_norm" in scopes:
        return "final norm + head", direction
    if "while" in scopes:
        return "layer scan (stack slicing)", direction
    return "other (layouts, casts)", direction


def hlo_ops(hlo_text: str) -> dict[str, tuple[str, str]]:
    """{instruction name: (opcode, op_name)} of an optimized HLO module's text."""
    ops = {}
    for line in hlo_text.splitlines():
        m = INSTRUCTION.match(line)
        if m:
            scope = OP_NAME.search(line)
            ops[m.group(1)] = (m.group(2), scope.group(1) if scope else "")
    return ops


def _union(intervals: list[tuple[int, int]]) -> int:
    busy, end = 0, None
    for s, e in sorted(intervals):
        if end is None or s > end:
            busy += e - s
            end = e
        elif e > end:
            busy += e - end
            end = e
    return busy


def profile_compiled(compiled: Any, args: tuple, *, steps: int = 3) -> StepProfile:
    """Run the compiled train step `compiled(state, *rest)` `steps` times under the profiler (after one untraced
    run), each call's new state (its donated first argument) going into the next."""
    hlo = compiled.as_text()
    names = hlo_ops(hlo)
    module = hlo.split("\n", 1)[0].split()[1].rstrip(",")  # "HloModule jit_step, ..."

    def call(args: tuple) -> tuple:
        out = compiled(*args)
        jax.block_until_ready(out)
        return (out[0], *args[1:])

    args = call(args)
    walls = []
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(steps):
                t0 = time.perf_counter_ns()
                args = call(args)
                walls.append(time.perf_counter_ns() - t0)
        (xplane,) = Path(trace_dir).rglob("*.xplane.pb")
        data = jax.profiler.ProfileData.from_file(str(xplane))
        events = []
        for plane in data.planes:
            for line in plane.lines:
                for event in line.events:
                    stats = dict(event.stats)
                    if stats.get("hlo_module") == module:
                        events.append((stats.get("hlo_op", event.name), int(event.start_ns), int(event.end_ns)))
    ops: dict[tuple[str, str], float] = defaultdict(float)
    per_op: dict[str, float] = defaultdict(float)
    unmatched, leaf = 0.0, []
    for name, start, end in events:
        spec = names.get(name)
        if spec is None:
            unmatched += (end - start) / 1e9
            continue
        opcode, op_name = spec
        if opcode in CONTROL_FLOW:
            continue
        ops[component(op_name)] += (end - start) / 1e9 / steps
        per_op[name] += (end - start) / 1e9 / steps
        leaf.append((start, end))
    wall = statistics.median(walls) / 1e9
    idle = max(0.0, sum(walls) / 1e9 - _union(leaf) / 1e9) / steps
    heaviest = sorted(((t, n, names[n][1]) for n, t in per_op.items()), reverse=True)[:HEAVIEST]
    return StepProfile(dict(ops), wall, idle, unmatched / steps, heaviest)


def profile_train(cfg: Any, *, steps: int = 3) -> StepProfile:
    """The train step of a TrainConfig (its model, mesh and first batch), compiled and profiled; the run's
    files (its config, an empty checkpoints directory) go to cfg.output_dir, as a run's would."""
    from embeddinggemma.checkpoint import read_config
    from embeddinggemma.train.loop import Run
    from embeddinggemma.train.outputs import OutputDir
    from embeddinggemma.train.step import TrainSteps

    cfg = cfg.for_model(read_config(cfg.model))  # as train() does before its Run
    run = Run.setup(cfg, OutputDir(cfg.output_dir), TrainSteps(), resume=False, replace=[])
    try:
        batch, _ = run.place(run.batches[0])
        with jax.set_mesh(run.mesh):
            compiled = run.ts.fn.lower(run.state, run.frozen, batch).compile()
            return profile_compiled(compiled, (run.state, run.frozen, batch), steps=steps)
    finally:
        run.ckpts.close()
