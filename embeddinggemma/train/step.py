"""The train step under jax.jit: embed -> Matryoshka InfoNCE -> gradients (optionally GradCache) -> AdamW.

A batch is a dict of global arrays, all split over the mesh's batch axes on their leading dimension:
  q_ids, q_valid  (B, Tq)          query tokens
  d_ids, d_valid  (B, 1 + k, Td)   positive then k hard negatives per example
  q_keys (B,), d_keys (B, 1 + k)   text keys for the false-negative mask (losses.MISSING: absent)
Parameters are split in two NNX states: `params` (trained, in the optimizer) and `frozen` (the token
table when `freeze_embeddings`, else empty), so a frozen table has no gradient, no Adam moments and
is not rewritten by checkpoints.

GradCache (Gao et al. 2021): embed all rows in chunks without keeping activations, take the gradient
of the loss with respect to the embeddings, then re-run each chunk under jax.vjp with its slice of
that gradient and sum. Activation memory is one chunk's; the gradient is the full-batch gradient.
"""

from __future__ import annotations

import dataclasses
import json
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from embeddinggemma import sharding
from embeddinggemma.encode.compilation import compiler_options
from embeddinggemma.model import quantized
from embeddinggemma.model.config import ModelConfig, check_dtype
from embeddinggemma.model.modeling import STACKS, EmbeddingGemmaModule
from embeddinggemma.train import losses
from embeddinggemma.train.config import TrainConfig

Batch = dict[str, jax.Array]
EmbedFn = Callable[[nnx.State, jax.Array, jax.Array], jax.Array]
FROZEN = nnx.PathContains("embed_tokens")
# TrainConfig fields that steer only the data, the outputs and the bookkeeping, never the step: runs that
# differ only in these share one compiled step. A field not named here is part of the step's identity.
NOT_IN_STEP = frozenset(
    {"model", "train_file", "output_dir", "eval_file", "columns", "query_prompt", "document_prompt", "title_prompt"}
    | {"skip_malformed", "seed", "prefetch", "data_threads", "steps", "epochs", "save_every", "keep_checkpoints"}
    | {"eval_every", "eval_batch_size", "log_every", "tensorboard", "export", "profile_steps"}
)


def split_module(module: EmbeddingGemmaModule, freeze_embeddings: bool) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graphdef, frozen, params): the token table goes to `frozen` when it is not trained."""
    return nnx.split(module, FROZEN if freeze_embeddings else nnx.Not(nnx.Param), nnx.Param)


def training_module(cfg: TrainConfig, model_cfg: ModelConfig) -> EmbeddingGemmaModule:
    """The abstract module: float32 (param_dtype) master weights, compute in compute_dtype."""
    return EmbeddingGemmaModule.abstract(
        model_cfg,
        dtype=check_dtype(cfg.compute_dtype),
        param_dtype=check_dtype(cfg.param_dtype),
        remat=cfg.remat,
        attention_impl=cfg.attention_impl,
        scan_layers=cfg.scan_layers,
    )


def embed_fn(graphdef: nnx.GraphDef, frozen: nnx.State, quantization: str | None = None) -> EmbedFn:
    """The forward pass the loss differentiates; with `quantization`, through fake-quantized weights (QAT)."""

    def embed(params: nnx.State, ids: jax.Array, valid: jax.Array) -> jax.Array:
        if quantization is None:
            return nnx.merge(graphdef, frozen, params)(ids, valid)
        module = nnx.merge(graphdef, frozen, params, copy=True)  # merge shares Variables: keep `params` as it is
        return quantized.fake_quantize_in_place(module, quantization)(ids, valid)

    return embed


def batch_loss(cfg: TrainConfig, q: jax.Array, d: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Loss of one global batch from its embeddings q (B, D) and d (B, 1 + k, D)."""
    docs = jnp.swapaxes(d, 0, 1)  # (1 + k, B, D): losses.py's candidate order
    loss, terms = losses.matryoshka(
        q,
        docs,
        dims=cfg.matryoshka_dims,
        weights=cfg.matryoshka_weights,
        scale=cfg.scale,
        symmetric=cfg.symmetric,
        hardness_alpha=cfg.hardness_alpha,
        query_keys=batch["q_keys"],
        doc_keys=jnp.swapaxes(batch["d_keys"], 0, 1),
    )
    if cfg.spread_out_weight:
        terms["spread_out"] = losses.spread_out(q) + losses.spread_out(docs[0])
        loss = loss + cfg.spread_out_weight * terms["spread_out"]
    return loss, terms


def _sequences(batch: Batch) -> tuple[tuple[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
    """(ids, valid) of the queries and of the documents, each (n, T): the model sees flat batches."""
    b, k1, td = batch["d_ids"].shape
    return (batch["q_ids"], batch["q_valid"]), (
        batch["d_ids"].reshape(b * k1, td),
        batch["d_valid"].reshape(b * k1, td),
    )


def _to_chunks(x: jax.Array, chunk: int) -> jax.Array:
    """(n, ...) -> (m, chunk, ...), chunk j holding rows {i * m + j}, so every chunk spans all batch shards.

    Rows are padded by repeating the last one (a real sequence: an all-padding row would give NaN
    gradients through the L2 norm); padded rows get a zero cotangent and contribute nothing.
    """
    n = x.shape[0]
    m = -(-n // chunk)
    x = jnp.pad(x, [(0, m * chunk - n)] + [(0, 0)] * (x.ndim - 1), mode="edge")
    return jnp.swapaxes(x.reshape(chunk, m, *x.shape[1:]), 0, 1)


def _from_chunks(y: jax.Array, n: int) -> jax.Array:
    return jnp.swapaxes(y, 0, 1).reshape(-1, *y.shape[2:])[:n]


def _embed_chunked(embed: EmbedFn, params: nnx.State, ids: jax.Array, valid: jax.Array, chunk: int) -> jax.Array:
    def one(x: tuple[jax.Array, jax.Array]) -> jax.Array:
        ids_c, valid_c = (sharding.constrain(a, ("batch", "length")) for a in x)
        return embed(params, ids_c, valid_c)

    return _from_chunks(jax.lax.map(one, (_to_chunks(ids, chunk), _to_chunks(valid, chunk))), ids.shape[0])


def _vjp_chunked(
    embed: EmbedFn,
    params: nnx.State,
    ids: jax.Array,
    valid: jax.Array,
    cotangent: jax.Array,
    chunk: int,
    like: nnx.State,
) -> nnx.State:
    """sum over chunks of d<embed(chunk), cotangent(chunk)>/d params, recomputing each chunk's forward; summed
    in the dtypes of `like` (the master weights: `params` may be their compute-dtype copy)."""

    def body(acc: nnx.State, x: tuple[jax.Array, jax.Array, jax.Array]) -> tuple[nnx.State, None]:
        ids_c, valid_c, g_c = x
        ids_c, valid_c = (sharding.constrain(a, ("batch", "length")) for a in (ids_c, valid_c))
        _, vjp = jax.vjp(lambda p: embed(p, ids_c, valid_c), params)
        return jax.tree.map(lambda a, g: a + g.astype(a.dtype), acc, vjp(g_c)[0]), None

    zero_padded = jnp.pad(cotangent, [(0, -cotangent.shape[0] % chunk), (0, 0)])  # padded rows: no gradient
    xs = (_to_chunks(ids, chunk), _to_chunks(valid, chunk), _to_chunks(zero_padded, chunk))
    zeros = jax.tree.map(jnp.zeros_like, like)
    return jax.lax.scan(body, zeros, xs)[0]


def compute_copy(cfg: TrainConfig, params: nnx.State) -> nnx.State:
    """The trained matrices in the compute dtype, cast once per step: every forward pass and the backward
    share this copy (as PyTorch's autocast caches its casts), instead of each use casting its float32
    master weight again. Norm scales stay in the master dtype (they are applied in float32), as does the
    token table (its gathered rows are cast) and, under QAT, every weight (quantized from the master)."""
    dtype = jnp.dtype(cfg.compute_dtype)
    if cfg.quantization is not None:
        return params

    def cast(path: tuple, x: jax.Array, matrix: bool) -> jax.Array:
        keep = not matrix or x.dtype == dtype or _has_key(path, "embed_tokens")
        return x if keep else x.astype(dtype)

    return jax.tree_util.tree_map_with_path(cast, params, matrices(params))


def loss_and_grads(
    cfg: TrainConfig, embed: EmbedFn, params: nnx.State, batch: Batch
) -> tuple[jax.Array, dict[str, jax.Array], nnx.State]:
    """(loss, loss terms, d loss / d params), full batch or GradCache by `cfg.grad_cache_chunk`."""
    (q_ids, q_valid), (d_ids, d_valid) = _sequences(batch)
    b, k1 = batch["d_keys"].shape

    def loss_of(q: jax.Array, d: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        with jax.named_scope("loss"):
            return batch_loss(cfg, q, d.reshape(b, k1, -1), batch)

    chunk = cfg.grad_cache_chunk
    if chunk is None or chunk >= d_ids.shape[0]:

        def full(p: nnx.State) -> tuple[jax.Array, dict[str, jax.Array]]:
            p = compute_copy(cfg, p)
            return loss_of(embed(p, q_ids, q_valid), embed(p, d_ids, d_valid))

        (loss, terms), grads = jax.value_and_grad(full, has_aux=True)(params)
        return loss, terms, grads

    copy = compute_copy(cfg, params)  # the chunks' gradients are taken with respect to it, summed in float32
    q = _embed_chunked(embed, copy, q_ids, q_valid, chunk)
    d = _embed_chunked(embed, copy, d_ids, d_valid, chunk)
    (loss, terms), (gq, gd) = jax.value_and_grad(loss_of, argnums=(0, 1), has_aux=True)(q, d)
    gq_params = _vjp_chunked(embed, copy, q_ids, q_valid, gq, chunk, params)
    gd_params = _vjp_chunked(embed, copy, d_ids, d_valid, gd, chunk, params)
    return loss, terms, jax.tree.map(jnp.add, gq_params, gd_params)


def learning_rate_schedule(cfg: TrainConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0, then linear or cosine decay to end_learning_rate at total_steps."""
    decay_steps = max(total_steps - cfg.warmup_steps, 1)
    if cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(cfg.learning_rate, decay_steps, cfg.end_learning_rate / cfg.learning_rate)
    else:
        decay = optax.linear_schedule(cfg.learning_rate, cfg.end_learning_rate, decay_steps)
    warmup = optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
    return optax.join_schedules([warmup, decay], [cfg.warmup_steps])


def _has_key(path: tuple, key: str) -> bool:
    """Whether a pytree key path (of an nnx.State) passes through `key`."""
    return any(getattr(k, "key", None) == key for k in path)


def matrices(params: nnx.State) -> Any:
    """True for the parameters weight decay applies to: matrices, not norm scales, by a parameter's own rank
    (a layer stack's leading axis not counted)."""

    def matrix(path: tuple, x: jax.Array) -> bool:
        return x.ndim - _has_key(path, STACKS) >= 2

    return jax.tree_util.tree_map_with_path(matrix, params)


def optimizer(cfg: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW; weight decay on matrices only (not on norm scales)."""
    adamw = optax.adamw(
        learning_rate_schedule(cfg, total_steps),
        b1=cfg.adam_b1,
        b2=cfg.adam_b2,
        eps=cfg.adam_eps,
        weight_decay=cfg.weight_decay,
        mask=matrices,
    )
    if cfg.max_grad_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), adamw)


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """The jitted step `(state, frozen, batch) -> (state, metrics)` and what is needed to call or lower it.

    `state` is {"step", "params", "opt_state"} and is donated. `abstract_state` / `abstract_frozen` carry
    shapes, dtypes and shardings: `fn.lower(abstract_state, abstract_frozen, abstract_batch(...))` under
    `jax.sharding.use_abstract_mesh(mesh.abstract_mesh)` compiles it for compile-only TPU devices
    (embeddinggemma.bench.aot)."""

    fn: Any
    mesh: jax.sharding.Mesh
    graphdef: nnx.GraphDef
    tx: optax.GradientTransformation
    abstract_state: dict[str, Any]
    abstract_frozen: nnx.State
    state_shardings: dict[str, Any]
    frozen_shardings: nnx.State

    def __call__(self, state: dict[str, Any], frozen: nnx.State, batch: Batch) -> tuple[dict[str, Any], dict]:
        with jax.set_mesh(self.mesh):
            return self.fn(state, frozen, batch)

    def init_state(self, params: nnx.State) -> dict[str, Any]:
        """Step 0 state from (sharded) parameters; the Adam moments are created on their shardings."""
        init = jax.jit(
            lambda p: {"step": jnp.zeros((), jnp.int32), "params": p, "opt_state": self.tx.init(p)},
            out_shardings=self.state_shardings,
        )
        return init(params)


class TrainSteps:
    """The train steps a caller has built, each with the programs it compiled for each batch shape.

    `get` returns the step for a config, building it only the first time: runs whose step is the same (a
    resumed run in the same process, a notebook's second run, the same run on other data or into another
    output_dir) reuse the compiled programs, which take most of a short run's time. Configs that differ only
    in fields of NOT_IN_STEP share a step. The last `keep` steps are kept. Hold one across `train()` calls."""

    def __init__(self, keep: int = 4):
        self.keep = keep
        self._built: OrderedDict[tuple, TrainStep] = OrderedDict()

    def get(self, cfg: TrainConfig, model_cfg: ModelConfig, mesh: jax.sharding.Mesh, total_steps: int) -> TrainStep:
        cfg = cfg.for_model(model_cfg)
        step_fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_IN_STEP}
        key = (json.dumps(step_fields, sort_keys=True, default=str), model_cfg, mesh, total_steps)
        if key not in self._built:
            self._built[key] = build_train_step(cfg, model_cfg, mesh, total_steps)
            while len(self._built) > self.keep:
                self._built.popitem(last=False)
        self._built.move_to_end(key)
        return self._built[key]


def build_train_step(cfg: TrainConfig, model_cfg: ModelConfig, mesh: jax.sharding.Mesh, total_steps: int) -> TrainStep:
    """The sharded train step for `mesh` (parameters by sharding.py's "train" rules, batch on data+fsdp)."""
    cfg = cfg.for_model(model_cfg)
    graphdef, frozen, params = split_module(training_module(cfg, model_cfg), cfg.freeze_embeddings)
    tx = optimizer(cfg, total_steps)
    schedule = learning_rate_schedule(cfg, total_steps)
    abstract_state = {
        "step": jax.ShapeDtypeStruct((), jnp.int32),
        "params": params,
        "opt_state": jax.eval_shape(tx.init, params),
    }
    state_shardings = sharding.param_shardings(abstract_state, mesh, "train")
    frozen_shardings = sharding.param_shardings(frozen, mesh, "train")
    batch_shard = sharding.batch_sharding(mesh)
    replicated = sharding.replicated(mesh)

    def step(state: dict[str, Any], frozen: nnx.State, batch: Batch) -> tuple[dict[str, Any], dict]:
        loss, terms, grads = loss_and_grads(cfg, embed_fn(graphdef, frozen, cfg.quantization), state["params"], batch)
        with jax.named_scope("optimizer"):
            updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
            new = {
                "step": state["step"] + 1,
                "params": optax.apply_updates(state["params"], updates),
                "opt_state": opt_state,
            }
        metrics = {
            "loss": loss,
            **terms,
            "grad_norm": optax.global_norm(grads),
            "learning_rate": schedule(state["step"]),
        }
        return new, metrics

    fn = jax.jit(
        step,
        in_shardings=(state_shardings, frozen_shardings, batch_shard),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0,
        compiler_options=compiler_options(mesh.devices.flat[0].platform, cfg.compute_dtype),
    )
    return TrainStep(fn, mesh, graphdef, tx, abstract_state, frozen, state_shardings, frozen_shardings)


def abstract_batch(global_batch: int, num_negatives: int, query_len: int, doc_len: int) -> dict[str, Any]:
    """Shapes and dtypes of a batch, for AOT lowering."""
    b, k1 = global_batch, 1 + num_negatives
    s = jax.ShapeDtypeStruct
    return {
        "q_ids": s((b, query_len), jnp.int32),
        "q_valid": s((b, query_len), jnp.bool_),
        "d_ids": s((b, k1, doc_len), jnp.int32),
        "d_valid": s((b, k1, doc_len), jnp.bool_),
        "q_keys": s((b,), jnp.int32),
        "d_keys": s((b, k1), jnp.int32),
    }
