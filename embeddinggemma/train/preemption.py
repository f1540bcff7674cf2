"""Preemption: SIGTERM (a preempted TPU VM) makes a run save a checkpoint after its current step and stop,
on every process at the same step."""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Callable, Iterator
from typing import Any

import jax

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def preemption() -> Iterator[Callable[[int], bool]]:
    """`preempted(step)`: whether to save and stop after `step`, the same step on every process.

    One process: once SIGTERM has arrived. Several: JAX's preemption sync point. Its service (started by
    jax.distributed.initialize) catches the SIGTERM any host gets, and every host answers True at the same
    step; a host stopping at its own step would leave the others waiting in the checkpoint's collectives.
    """
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        yield multihost_utils.reached_preemption_sync_point
        return
    flag = {"set": False}

    def handler(signum: int, frame: Any) -> None:
        logger.warning("SIGTERM: saving a checkpoint after the current step, then exiting")
        flag["set"] = True

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield lambda step: flag["set"]
    finally:
        signal.signal(signal.SIGTERM, previous)
