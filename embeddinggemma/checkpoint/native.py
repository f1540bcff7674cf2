"""Our native checkpoint: orbax parameters (any dtype) + the ModelConfig + the original ST metadata files.

Layout: `embeddinggemma.json` (format version and config), `params/` (orbax), `hf/` (the
sentence-transformers metadata and tokenizer files, so the model exports back without its source).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import DTypeLike

from embeddinggemma.checkpoint import hf
from embeddinggemma.errors import CheckpointError, parse_json
from embeddinggemma.files import atomic_dir
from embeddinggemma.model.config import ModelConfig, reading
from embeddinggemma.model.modeling import STACKS, EmbeddingGemmaModule

FORMAT = "native"
MARKER = "embeddinggemma.json"
FORMAT_VERSION = 2  # 2: each layer type's blocks in one stack; 1 (per-layer parameters) is stacked as it loads


def is_native(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def read_config(root: Path) -> ModelConfig:
    file = Path(root) / MARKER
    meta = parse_json(file.read_bytes(), str(file), error=CheckpointError)
    with reading(file):
        if meta.get("format_version") not in (1, FORMAT_VERSION):
            raise CheckpointError(f"{file}: unsupported native format version {meta.get('format_version')}")
        return ModelConfig.from_dict(meta["config"], source=file)


def first_line(e: BaseException) -> str:
    """The gist of an orbax / TensorStore error: the innermost cause's first line, without the TensorStore
    spec (pages of JSON) that some of them append."""
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__
    return str(e).splitlines()[0].split(" [tensorstore_spec=")[0] if str(e) else type(e).__name__


ORBAX_LOGGERS = ("absl", "asyncio")  # where orbax and TensorStore's event loops report


class _Muted(logging.Filter):
    """Drops every record (and unraisable exception) it is given, counting them."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        self.count += 1
        return False

    def unraisable(self, unraisable: Any) -> None:
        self.count += 1


@contextlib.contextmanager
def quiet_orbax(path: str | os.PathLike, settle_s: float = 0.2, max_wait_s: float = 2.0) -> Iterator[None]:
    """Orbax reports a failed read or write of `path` (a corrupt file, a full disk) from its worker threads
    too: absl ERROR logs with tracebacks, then, as TensorStore finishes the operation's other reads or writes,
    asyncio's "exception was never retrieved", "Event loop is closed" and never-awaited coroutines. The
    exception the caller raises says it once; the rest would bury it in pages of tracebacks. So they are
    muted while the operation runs and, after a failure, until the stragglers have been quiet for `settle_s`
    (at most `max_wait_s`); then everything is as it was. (Stragglers that come at process exit are the
    command line's to mute.) EMBEDDINGGEMMA_DEBUG=1 keeps them all."""
    if os.environ.get("EMBEDDINGGEMMA_DEBUG"):
        yield
        return
    muted, hook = _Muted(), sys.unraisablehook
    loggers = [logging.getLogger(name) for name in ORBAX_LOGGERS]
    for logger in loggers:
        logger.addFilter(muted)
    sys.unraisablehook = muted.unraisable
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                yield
            except BaseException:
                deadline, seen, quiet_since = time.monotonic() + max_wait_s, -1, time.monotonic()
                while time.monotonic() < deadline and time.monotonic() - quiet_since < settle_s:
                    gc.collect()  # a leftover future or coroutine reports when collected
                    if muted.count != seen:
                        seen, quiet_since = muted.count, time.monotonic()
                    time.sleep(0.05)
                raise
    finally:
        sys.unraisablehook = hook
        for logger in loggers:
            logger.removeFilter(muted)


def metadata_dir(root: Path) -> Path:
    return Path(root) / "hf"


def _lookup(tree: Any, path: hf.ParamPath) -> Any:
    for p in path:
        tree = tree[p] if p in tree else tree[str(p)]
    return tree


def _format_version(root: Path) -> int:
    return json.loads((Path(root) / MARKER).read_text(encoding="utf-8"))["format_version"]


def read_params(
    root: str | Path, cfg: ModelConfig, *, dtype: DTypeLike = jnp.float32, shardings: nnx.State | None = None
) -> nnx.State:
    """Restore the parameters, each directly onto its sharding (or the default device), in `dtype`. A
    checkpoint of format version 1 (written before the layers were stacked) is restored per layer and its
    layers stacked (see `hf.stacked`): it loads as it always did, and `convert` writes it anew."""
    import orbax.checkpoint as ocp

    directory = (Path(root) / "params").absolute()
    skeleton = nnx.state(EmbeddingGemmaModule.abstract(cfg, param_dtype=dtype))
    flat_shard = dict(shardings.flat_state()) if shardings is not None else {}
    per_layer = _format_version(root) == 1
    try:
        with quiet_orbax(directory):
            stored = ocp.StandardCheckpointer().metadata(directory)
            stored_tree = getattr(stored, "item_metadata", stored)
            if not stored_tree:  # orbax only logs that it cannot read _METADATA or the array index
                raise CheckpointError(f"{directory}: cannot read the parameters' metadata (a missing or damaged file)")

            def target(path: hf.ParamPath, var: Any) -> jax.ShapeDtypeStruct:
                sharding = flat_shard.get(path)
                sharding = getattr(sharding, "value", sharding) or jax.sharding.SingleDeviceSharding(jax.devices()[0])
                return jax.ShapeDtypeStruct(var.shape, _lookup(stored_tree, path).dtype, sharding=sharding)

            if per_layer:  # on the host, then stacked
                host = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
                abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=host), stored_tree)
            else:
                abstract = hf.nest({p: target(p, v) for p, v in skeleton.flat_state()})
            with ocp.StandardCheckpointer() as ckpt:
                restored = ckpt.restore(directory, abstract)
    except CheckpointError:
        raise
    # A missing, partial, corrupt or foreign orbax directory: orbax and TensorStore raise many types,
    # down to a bare Exception for a chunk that does not decompress.
    except Exception as e:
        raise CheckpointError(f"{directory}: cannot restore the parameters ({first_line(e)})") from e
    if per_layer:
        restored = _stack_layers(restored, skeleton, cfg, flat_shard)
    skeleton.replace_by_pure_dict(jax.tree.map(lambda x: x.astype(dtype), restored))
    return skeleton


def _stack_layers(restored: dict, skeleton: nnx.State, cfg: ModelConfig, shardings: dict) -> dict:
    """A format-1 checkpoint's per-layer arrays as the skeleton's stacks, each placed on its sharding."""
    out = {}
    for path, var in skeleton.flat_state():
        rows = [np.asarray(_lookup(restored, layer)) for layer in hf.unstacked(cfg, path)]
        x = np.stack(rows) if path[0] == STACKS else rows[0]
        if x.shape != var.shape:
            where = ".".join(map(str, path))
            raise CheckpointError(f"{where}: shape {x.shape} in the checkpoint, expected {var.shape}")
        sharding = shardings.get(path)
        out[path] = hf.place(x, getattr(sharding, "value", sharding))
    return hf.nest(out)


def write(state: nnx.State, cfg: ModelConfig, metadata: str | Path, out_dir: str | Path) -> Path:
    """Our checkpoint, written atomically; `metadata` supplies the ST files (see hf.write)."""
    import orbax.checkpoint as ocp

    hf.check_metadata(Path(metadata))
    with atomic_dir(out_dir) as tmp:
        hf.copy_metadata(Path(metadata), tmp / "hf")
        try:
            with quiet_orbax(tmp / "params"), ocp.StandardCheckpointer() as ckpt:
                ckpt.save((tmp / "params").absolute(), nnx.to_pure_dict(state))
        except Exception as e:  # a full disk surfaces as ValueError("OUT_OF_RANGE: ...") with pages of spec
            raise OSError(f"cannot write {out_dir}: {first_line(e)}") from e
        (tmp / MARKER).write_text(json.dumps({"format_version": FORMAT_VERSION, "config": cfg.to_dict()}, indent=2))
    return Path(out_dir)
