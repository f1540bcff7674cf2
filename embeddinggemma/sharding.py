"""Device meshes and logical-axis sharding rules for EmbeddingGemma.

Every mesh has the three axes `data`, `fsdp` and `tensor` (an axis left out of a spec has size 1):

* `data`   - pure data parallelism: the batch is split, parameters are replicated.
* `fsdp`   - the batch is split *and* parameters (and optimizer state) are sharded, ZeRO-3 style;
             XLA all-gathers a layer's weights where they are used.
* `tensor` - splits the MLP width (1152), the head's Dense width (3072) and the vocabulary.

Every `nnx.Param` in `model.py` names its dimensions (`logical_axes`); a rule table maps each name to
mesh axes. Why these rules, for this model:

* 3 query heads and 1 KV head divide by almost no mesh size, so heads and head_dim are never split;
  attention is data-parallel only.
* The 262144 x 768 embedding table is two thirds of the parameters (201M of 303M). Splitting its
  *vocab* dimension costs one all-reduce of the (B, T, 768) embeddings per step (each shard gathers
  the ids it owns), while its gradient and Adam moments stay sharded, so `vocab` is split over
  every parameter-sharding axis in both modes.
* The per-layer matrices are small (768 x 1152 MLP, 768 x 768 attention). At inference they are
  replicated over `fsdp` (an all-gather per layer per batch buys little memory: bf16 layers are
  ~200 MB); in training they are split over `fsdp` on their `embed` dimension, which divides every
  v5e mesh size up to 256 (768 = 3 * 256), whereas 1152 does not divide 256.

| logical axis            | "inference"        | "train"            | used by                              |
|-------------------------|--------------------|--------------------|--------------------------------------|
| `layers`                | -                  | -                  | the leading axis of a layer stack    |
| `vocab`                 | (fsdp, tensor)     | (fsdp, tensor)     | embedding table rows                 |
| `embed`                 | -                  | fsdp               | model width of every weight matrix   |
| `mlp`                   | tensor             | tensor             | MLP width (1152)                     |
| `dense`                 | tensor             | tensor             | head Dense width (3072)              |
| `q_heads`, `kv_heads`   | -                  | -                  | attention heads (3 and 1)            |
| `head_dim`              | -                  | -                  | 256                                  |
| `batch`                 | (data, fsdp)       | (data, fsdp)       | activations: the batch               |
| `length`, `act_embed`   | -                  | -                  | activations: tokens, model width     |
| `act_mlp`               | tensor             | tensor             | activations: MLP width               |

A dimension that the assigned mesh axes do not divide stays unsplit (e.g. `mlp` = 1152 on tensor=256),
and a mesh axis is used at most once per array (the table's `embed` is not split when `vocab` already
uses `fsdp`). Recommended layouts: inference on v5e-8 `data=8`; training the 300m on v5e-8 `data=8` (parameters
and Adam state fit on each chip: 17% fewer HBM bytes per step than `fsdp=8`, docs/benchmarks.md); larger
models or batches `fsdp=8`; on v5e-256 `data=16,fsdp=16` (parameters + Adam state split 16 ways, gradients
reduced over `data`).
"""

from __future__ import annotations

import logging
import math
import os
import secrets
from collections.abc import Sequence
from typing import Any, Literal, get_args

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

logger = logging.getLogger(__name__)

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the axes that split the batch
Mode = Literal["inference", "train"]
MODES: tuple[Mode, ...] = get_args(Mode)

Rules = tuple[tuple[str, tuple[str, ...]], ...]

# Activation names are shared by both modes: the batch is always split over data and fsdp.
_ACTIVATION_RULES: Rules = (
    ("batch", BATCH_AXES),
    ("length", ()),
    ("act_embed", ()),
    ("act_mlp", ("tensor",)),
)
_PARAM_RULES: dict[str, Rules] = {
    "inference": (
        ("layers", ()),
        ("vocab", ("fsdp", "tensor")),
        ("embed", ()),
        ("mlp", ("tensor",)),
        ("dense", ("tensor",)),
        ("q_heads", ()),
        ("kv_heads", ()),
        ("head_dim", ()),
    ),
    "train": (
        ("layers", ()),
        ("vocab", ("fsdp", "tensor")),
        ("embed", ("fsdp",)),
        ("mlp", ("tensor",)),
        ("dense", ("tensor",)),
        ("q_heads", ()),
        ("kv_heads", ()),
        ("head_dim", ()),
    ),
}


def parse_mesh_spec(spec: str) -> dict[str, int]:
    """ "data=2,fsdp=4" -> {"data": 2, "fsdp": 4, "tensor": 1}; one size may be -1 (all the rest)."""
    sizes = dict.fromkeys(AXES, 1)
    seen: set[str] = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in AXES:
            raise ValueError(f"bad mesh spec {spec!r}: expected comma-separated AXIS=SIZE with AXIS in {AXES}")
        if name in seen:
            raise ValueError(f"bad mesh spec {spec!r}: axis {name!r} given twice")
        seen.add(name)
        try:
            sizes[name] = int(value)
        except ValueError:
            raise ValueError(f"bad mesh spec {spec!r}: size of {name!r} is not an int") from None
        if sizes[name] == 0 or sizes[name] < -1:
            raise ValueError(f"bad mesh spec {spec!r}: size of {name!r} must be positive or -1")
    if list(sizes.values()).count(-1) > 1:
        raise ValueError(f"bad mesh spec {spec!r}: at most one axis may be -1")
    return sizes


def make_mesh(spec: str | Mesh, devices: Sequence[Any] | None = None) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh from a spec such as "data=8" or "data=2,fsdp=4".

    The sizes must multiply to the number of `devices` (default: all devices of all hosts). A Mesh is
    returned unchanged. On TPU the device order follows the physical torus (mesh_utils).
    """
    if isinstance(spec, Mesh):
        return spec
    devices = list(jax.devices() if devices is None else devices)
    sizes = parse_mesh_spec(spec)
    if -1 in sizes.values():
        rest = math.prod(s for s in sizes.values() if s != -1)
        if len(devices) % rest:
            raise ValueError(f"mesh {spec!r}: {len(devices)} devices do not divide by {rest}")
        sizes = {k: len(devices) // rest if v == -1 else v for k, v in sizes.items()}
    shape = tuple(sizes[a] for a in AXES)
    if math.prod(shape) != len(devices):
        raise ValueError(f"mesh {spec!r} needs {math.prod(shape)} devices, but there are {len(devices)}")
    try:
        grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    except (NotImplementedError, ValueError, AssertionError):
        grid = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(grid, AXES, axis_types=(AxisType.Auto,) * len(AXES))


def logical_rules(mode: Mode = "inference") -> Rules:
    """The (logical axis, mesh axes) table for "inference" or "train" (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"unknown sharding mode {mode!r}; choose from {MODES}")
    return _PARAM_RULES[mode] + _ACTIVATION_RULES


def logical_to_spec(
    axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh | jax.sharding.AbstractMesh, rules: Rules
) -> PartitionSpec:
    """PartitionSpec for an array of `shape` whose dimensions are named `axes`.

    Mesh axes of size 1, axes already used by an earlier dimension, and axes that would not divide
    the dimension evenly are dropped, so every rule applies to any mesh and any model size.
    """
    table = dict(rules)
    sizes = dict(mesh.shape)
    used: set[str] = set()
    spec: list[tuple[str, ...] | None] = []
    for name, dim in zip(axes, shape, strict=True):
        if name is not None and name not in table:
            raise KeyError(f"no sharding rule for logical axis {name!r}")
        chosen: list[str] = []
        for axis in table.get(name, ()) if name is not None else ():
            if axis in used or sizes.get(axis, 1) == 1:
                continue
            if dim % (math.prod(sizes[a] for a in chosen) * sizes[axis]) == 0:
                chosen.append(axis)
        used.update(chosen)
        spec.append(tuple(chosen) if chosen else None)
    return PartitionSpec(*spec)


def param_shardings(abstract_state: Any, mesh: str | Mesh, rules: Rules | Mode = "inference") -> Any:
    """The NamedSharding of every leaf of an NNX state (parameters, optimizer state, ...).

    Variables carrying `logical_axes` metadata are sharded by `rules` (a table or a mode name); all
    other leaves (step counters, scalars) are replicated. The result has the input's structure, so it
    can be passed as `in_shardings`/`out_shardings` to jax.jit or to the checkpoint loaders.
    """
    mesh = make_mesh(mesh)
    rules = logical_rules(rules) if isinstance(rules, str) else rules

    def one(leaf: Any) -> Any:
        if isinstance(leaf, nnx.Variable):
            axes = leaf.get_metadata().get("logical_axes")
            spec = logical_to_spec(axes, leaf.shape, mesh, rules) if axes is not None else PartitionSpec()
            return leaf.replace(NamedSharding(mesh, spec))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: str | Mesh) -> NamedSharding:
    """Leading (batch) dimension split over data and fsdp; works for arrays of any rank >= 1."""
    return NamedSharding(make_mesh(mesh), PartitionSpec(BATCH_AXES))


def replicated(mesh: str | Mesh) -> NamedSharding:
    return NamedSharding(make_mesh(mesh), PartitionSpec())


def batch_size_multiple(mesh: str | Mesh) -> int:
    """Global batch sizes must be a multiple of this (the number of batch shards)."""
    mesh = make_mesh(mesh)
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Pin an activation's sharding by logical names, under the mesh set with `jax.set_mesh`.

    Without a mesh (single device, or no `jax.set_mesh` around the trace) this is the identity, so
    the model code is the same sharded or not.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or set(mesh.axis_names) != set(AXES):
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(axes, x.shape, mesh, _ACTIVATION_RULES))


def from_host(x: np.ndarray, sharding: NamedSharding | jax.sharding.Sharding) -> jax.Array:
    """A host array that every process holds whole, placed on `sharding`: each device takes only its slice."""
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def host_local_batch(mesh: str | Mesh, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
    """Global arrays from this host's rows: each process passes only its own part of the batch.

    With one process this is `device_put` onto `batch_sharding`; with several (a TPU pod slice,
    after `jax.distributed.initialize()`), process p supplies rows [p*n, (p+1)*n) of the global batch.
    """
    sharding = batch_sharding(mesh)
    return tuple(jax.make_array_from_process_local_data(sharding, a) for a in arrays)


def process_max(name: str, value: int, *, forget: str | None = None, timeout_s: int = 600) -> int:
    """The max of `value` over all processes (a no-op with one), exchanged through the coordination
    service's key-value store under `name`, which must be unique per exchange (e.g. contain the step).
    `forget` names an earlier exchange every process has finished, whose key this process deletes.

    Host-side on purpose: `multihost_utils.process_allgather` runs on the devices, so it would wait
    behind the train step in flight, and issued from data-loading threads in different orders on
    different hosts it could pair up the wrong exchanges. Keys can be exchanged in any order.
    """
    if jax.process_count() == 1:
        return value
    from jax._src import distributed  # the client of jax.distributed.initialize(); no public accessor

    client = distributed.global_state.client
    if forget is not None:
        client.key_value_delete(f"embeddinggemma/{forget}/{jax.process_index()}")
    client.key_value_set(f"embeddinggemma/{name}/{jax.process_index()}", str(value))
    return max(
        int(client.blocking_key_value_get(f"embeddinggemma/{name}/{p}", timeout_s * 1000))
        for p in range(jax.process_count())
    )


def shared_token() -> str:
    """A random hex token that every process agrees on (process 0's): a name unique to one run of a job."""
    token = np.frombuffer(secrets.token_bytes(8), np.uint32)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        token = np.asarray(multihost_utils.broadcast_one_to_all(token), np.uint32)
    return token.tobytes().hex()


def sync_processes(name: str) -> None:
    """Wait for every process at the barrier `name` (a no-op with one)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def maybe_initialize_distributed() -> None:
    """Call `jax.distributed.initialize()` when several processes share the job (a no-op for one).

    On a multi-host Cloud TPU slice the topology comes from the metadata server, so no settings are
    needed. Elsewhere (GPU hosts, several CPU processes) set JAX_COORDINATOR_ADDRESS ("host:port" of
    process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID in every process. It must run before anything
    touches the devices.
    """
    multi_host = "," in os.environ.get("TPU_WORKER_HOSTNAMES", "") or "JAX_COORDINATOR_ADDRESS" in os.environ
    if multi_host and not jax.distributed.is_initialized():
        env = {"num_processes": "JAX_NUM_PROCESSES", "process_id": "JAX_PROCESS_ID"}
        jax.distributed.initialize(**{k: int(os.environ[v]) for k, v in env.items() if v in os.environ})
        logger.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
