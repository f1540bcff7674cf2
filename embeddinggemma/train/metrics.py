"""What a run reports: metrics.jsonl and TensorBoard (`MetricsLog`), and how long the device waits for the
host between steps (`DeviceIdle`)."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import queue
import threading
import time

import jax

from embeddinggemma.errors import InputError, parse_json
from embeddinggemma.files import write_atomic
from embeddinggemma.train.outputs import OutputDir

logger = logging.getLogger(__name__)


def _logged_step(line: str) -> float:
    """The step of a metrics.jsonl row; infinity (dropped) for a line that is not one of ours."""
    try:
        row = parse_json(line)
    except InputError:
        return math.inf
    return row["step"] if isinstance(row, dict) and isinstance(row.get("step"), int) else math.inf


class MetricsLog:
    """metrics.jsonl (appended, so a resumed run continues the file) plus TensorBoard when available;
    both uploaded after each write when output_dir is a URL.

    `step`: where the run starts, a resumed run's checkpoint. The rows logged after it (by a run killed
    later) are dropped at the first write, since those steps are trained and logged again: every step has
    one row, and a run that fails before logging anything leaves the file as it was."""

    def __init__(self, out: OutputDir, tensorboard: bool, *, step: int = 0):
        self.enabled = jax.process_index() == 0
        self.out = out
        self.path = out.local / "metrics.jsonl"
        self.writer = None
        self.start: int | None = step  # rows after it are dropped at the first write
        if self.enabled:
            out.fetch("metrics.jsonl")  # a resumed run continues an uploaded file
        if self.enabled and tensorboard and importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out.local / "tensorboard"))

    def _drop_after(self, step: int) -> None:
        """Keep the rows up to `step`, which the run does not log again (none when it starts from step 0,
        whose evaluation it repeats); a row cut short by a kill is dropped too."""
        if not self.path.is_file():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if step > 0 and _logged_step(line) <= step]
        if len(kept) < len(lines):
            write_atomic(self.path, lambda f: f.write("".join(kept).encode()))
            dropped = len(lines) - len(kept)
            logger.info("%s: dropped %d rows after step %d, which this run logs again", self.path, dropped, step)

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self.start is not None:
            self._drop_after(self.start)
            self.start = None
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)
            self.writer.flush()
            self.out.publish("tensorboard")
        self.out.publish("metrics.jsonl")


class DeviceIdle:
    """How long the device waits for the host between steps (input pipeline, dispatch, host syncs).

    A watcher thread notes when each step's loss is ready, i.e. the step is done; the device then idles
    until the next step is dispatched. Logged per step as `device_idle_s`, the mean over the log interval
    (steps that compile count their compilation: the device waits for it too)."""

    def __init__(self) -> None:
        self._pending: queue.Queue = queue.Queue()
        self._done: dict[int, float] = {}
        self._dispatched: dict[int, float] = {}
        self._watcher: threading.Thread | None = None

    def __enter__(self) -> DeviceIdle:
        self._watcher = threading.Thread(target=self._watch, name="device-idle", daemon=True)
        self._watcher.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._pending.put(None)  # the watcher ends (a run in a notebook leaves no thread behind)
        if self._watcher is not None:
            self._watcher.join()

    def _watch(self) -> None:
        while (item := self._pending.get()) is not None:
            step, loss = item
            jax.block_until_ready(loss)
            self._done[step] = time.perf_counter()
            self._pending.task_done()

    def dispatched(self, step: int, loss: jax.Array) -> None:
        self._dispatched[step] = time.perf_counter()
        self._pending.put((step, loss))

    def take(self) -> float:
        """Mean idle seconds before the steps dispatched since the last call; waits for them to finish."""
        if self._watcher is None or not self._watcher.is_alive():  # join() would wait forever
            raise RuntimeError("DeviceIdle.take() needs the watcher: use it inside `with DeviceIdle() as idle:`")
        self._pending.join()
        idle = [max(0.0, t - self._done[s - 1]) for s, t in self._dispatched.items() if s - 1 in self._done]
        last = max(self._dispatched, default=None)
        self._done = {last: self._done[last]} if last is not None else {}
        self._dispatched = {}
        return sum(idle) / max(len(idle), 1)
