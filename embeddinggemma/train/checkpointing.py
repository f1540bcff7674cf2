"""Run checkpoints with orbax: train state (step, parameters, Adam state) + the data position.

Orbax writes each step into a temporary directory and renames it when complete, so an interrupted save
never shows up as a checkpoint; `latest_step` only sees finished ones. Frozen parameters are not
saved: they are the starting model's, which a resumed run loads again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from embeddinggemma.checkpoint.native import first_line, quiet_orbax
from embeddinggemma.errors import CheckpointError


def saved_steps(directory: str) -> list[int]:
    """The finished checkpoints' steps in `directory` (a path or URL), without opening a manager on it."""
    return ocp.utils.checkpoint_steps(epath.Path(directory))


class RunCheckpoints:
    """Saves run in orbax's background threads while training goes on. A failed one (a full disk) is
    reported there by every thread and event loop involved, hundreds of lines of tracebacks; so those
    reports are muted while a save is in flight (`quiet_orbax`), and the failure surfaces once, as a
    one-line CheckpointError from `wait` or the next `save`."""

    def __init__(self, directory: str, keep: int):
        """`directory`: an absolute local path or a gs:// URL."""
        self.directory = epath.Path(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            # cleanup: a save that failed or was killed leaves STEP.orbax-checkpoint-tmp; the next run removes it
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True),
        )
        self._in_flight: tuple[int, contextlib.ExitStack] | None = None  # the step being saved, its mute

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: dict[str, Any], data_state: dict[str, Any]) -> None:
        """Save (asynchronously; `wait` or the next save blocks until it is on disk)."""
        self.wait()  # the previous save's failure is reported as that save's
        mute = contextlib.ExitStack()
        mute.enter_context(quiet_orbax(self.directory / str(step)))
        self._in_flight = step, mute
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state))
        self._finish(lambda: self.manager.save(step, args=args, force=True), done=False)

    def wait(self) -> None:
        self._finish(self.manager.wait_until_finished, done=True)

    def _finish(self, call: Callable[[], Any], *, done: bool) -> None:
        """Run an orbax call of the in-flight save; a failure unmutes (once the stragglers settle) and is
        raised as a CheckpointError naming the step's directory; `done`: success ends the save too."""
        try:
            call()
        except Exception as e:  # orbax and TensorStore raise many types, down to Exception
            if self._in_flight is None:
                raise
            step, mute = self._in_flight
            self._in_flight = None
            mute.__exit__(type(e), e, e.__traceback__)  # waits for the other threads' reports to settle
            raise CheckpointError(f"{self.directory / str(step)}: cannot save this checkpoint ({first_line(e)})") from e
        if done and self._in_flight is not None:
            self._in_flight[1].close()
            self._in_flight = None

    def restore(self, step: int, abstract_state: Any, shardings: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """The state restored straight onto `shardings`, and the saved data position."""
        target = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings
        )
        where = self.directory / str(step)
        try:
            with quiet_orbax(where):
                restored = self.manager.restore(
                    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore())
                )
        except Exception as e:  # a damaged file: orbax and TensorStore raise many types, down to Exception
            raise CheckpointError(
                f"{where}: cannot restore this checkpoint ({first_line(e)}); if it is damaged, move it out of "
                f"{self.directory} to resume from the one before"
            ) from e
        return restored["state"], restored["data"]

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.manager.close()
