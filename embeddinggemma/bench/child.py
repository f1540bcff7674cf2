"""Each side of a benchmark in a fresh process of its own, so its memory, threads and cores are its own and a
side that crashes does not take the run down."""

from __future__ import annotations

import multiprocessing as mp
import queue
import resource
import traceback
from collections.abc import Callable
from typing import Any


def _report(fn: Callable[..., dict], args: tuple, out: mp.Queue) -> None:
    try:
        result = fn(*args)
        result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        out.put(result)
    except Exception:
        out.put({"error": traceback.format_exc(limit=3)})


def in_child(fn: Callable[..., dict], *args: Any) -> dict:
    """`fn(*args)` (a module-level function) in a fresh spawned process, so memory, threads and cores are
    its own; adds its peak RSS. An exception, or a crash that reports nothing, comes back as {"error": ...}."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_report, args=(fn, args, out))
    proc.start()
    while True:
        try:
            result = out.get(timeout=10)
            break
        except queue.Empty:
            if not proc.is_alive():
                result = {"error": f"child process exited with code {proc.exitcode} before reporting"}
                break
    proc.join()
    return result
