"""EmbeddingGemma in Flax NNX: a bidirectional Gemma 3 encoder, mean pooling, two Dense layers, L2 norm.

Shapes use B batch, T tokens, D hidden, N query heads, K key/value heads, H head_dim, F MLP width.
Every parameter carries `logical_axes` metadata; `embeddinggemma.sharding` maps those names to mesh
axes. Parameters live in `param_dtype`; each layer casts them to the compute `dtype` where used, so
float32 master weights with bfloat16 compute is the same module with two arguments changed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Literal, get_args

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name
from jax.typing import DTypeLike

from embeddinggemma.model import mixed
from embeddinggemma.model.attention import IMPLEMENTATIONS, AttentionImpl, attention
from embeddinggemma.model.config import FULL, LayerType, ModelConfig
from embeddinggemma.model.quantized import Activations, Mode, QuantizedWeight, quantize_in_place
from embeddinggemma.sharding import constrain


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str | None, ...], dtype: DTypeLike, std: float):
    return nnx.Param(jax.random.normal(rngs.params(), shape, dtype) * std, logical_axes=axes)


MATMUL = "matmul"  # the checkpoint name of a weight matmul's output


def matmul(spec: str, x: jax.Array, w: nnx.Param | QuantizedWeight, dtype: DTypeLike) -> jax.Array:
    """einsum of activations with a parameter cast to the compute dtype, accumulated in float32.

    Rounding once at the end is what PyTorch does in bfloat16 too, and it is faster: XLA:CPU runs a
    bfloat16 x bfloat16 -> float32 dot about twice as fast as one with a bfloat16 result. The backward
    dots run in the compute dtype as well (`mixed.einsum`). A quantized
    weight (`embeddinggemma.model.quantized`) runs the same einsum through qwix.
    """
    if isinstance(w, QuantizedWeight):
        return w.einsum(spec, x, dtype)
    out = mixed.einsum(spec, x.astype(dtype), w[...].astype(dtype)).astype(dtype)
    return checkpoint_name(out, MATMUL)  # what remat="dots" keeps (its custom VJP hides the dot from the policy)


class RMSNorm(nnx.Module):
    """Gemma RMSNorm: x * rsqrt(mean(x^2) + eps) * (1 + w), computed in float32, cast back."""

    def __init__(self, dim: int, eps: float, axis_name: str, *, param_dtype: DTypeLike):
        self.eps = eps
        self.weight = nnx.Param(jnp.zeros((dim,), param_dtype), logical_axes=(axis_name,))

    def __call__(self, x: jax.Array) -> jax.Array:
        with jax.named_scope("norm"):
            x32 = x.astype(jnp.float32)
            y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
            return (y * (1.0 + self.weight[...].astype(jnp.float32))).astype(x.dtype)


def rope(x: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding, half-split (rotate_half) convention, positions 0..T-1 (right padding)."""
    head_dim = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = jnp.arange(x.shape[1], dtype=jnp.float32)[:, None] * inv_freq[None, :]  # (T, H/2)
    angles = jnp.concatenate([angles, angles], axis=-1)[None, :, None, :]  # (1, T, 1, H)
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


class Attention(nnx.Module):
    def __init__(
        self, cfg: ModelConfig, layer_type: LayerType, *, dtype: DTypeLike, param_dtype: DTypeLike, rngs: nnx.Rngs
    ):
        d, n, k, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        std = d**-0.5
        self.q_proj = _param(rngs, (d, n, h), ("embed", "q_heads", "head_dim"), param_dtype, std)
        self.k_proj = _param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), param_dtype, std)
        self.v_proj = _param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), param_dtype, std)
        self.o_proj = _param(rngs, (n, h, d), ("q_heads", "head_dim", "embed"), param_dtype, (n * h) ** -0.5)
        self.q_norm = RMSNorm(h, cfg.rms_norm_eps, "head_dim", param_dtype=param_dtype)
        self.k_norm = RMSNorm(h, cfg.rms_norm_eps, "head_dim", param_dtype=param_dtype)
        self.is_sliding = layer_type != FULL
        self.radius = cfg.sliding_window_radius if self.is_sliding else None
        self.theta = cfg.rope_theta_local if self.is_sliding else cfg.rope_theta_global
        self.scale = cfg.query_pre_attn_scalar**-0.5
        self.dtype = dtype

    def __call__(self, x: jax.Array, valid: jax.Array, impl: AttentionImpl) -> jax.Array:
        q = rope(self.q_norm(matmul("btd,dnh->btnh", x, self.q_proj, self.dtype)), self.theta)
        k = rope(self.k_norm(matmul("btd,dkh->btkh", x, self.k_proj, self.dtype)), self.theta)
        v = matmul("btd,dkh->btkh", x, self.v_proj, self.dtype)
        out = attention(q, k, v, valid, radius=self.radius, scale=self.scale, impl=impl)
        return matmul("btnh,nhd->btd", out, self.o_proj, self.dtype)


class MLP(nnx.Module):
    """down(gelu_tanh(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig, *, dtype: DTypeLike, param_dtype: DTypeLike, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = _param(rngs, (d, f), ("embed", "mlp"), param_dtype, d**-0.5)
        self.up_proj = _param(rngs, (d, f), ("embed", "mlp"), param_dtype, d**-0.5)
        self.down_proj = _param(rngs, (f, d), ("mlp", "embed"), param_dtype, f**-0.5)
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        gate = jax.nn.gelu(matmul("btd,df->btf", x, self.gate_proj, self.dtype), approximate=True)
        hidden = constrain(gate * matmul("btd,df->btf", x, self.up_proj, self.dtype), ("batch", "length", "act_mlp"))
        return matmul("btf,fd->btd", hidden, self.down_proj, self.dtype)


class Block(nnx.Module):
    """h += post_attn_norm(attn(input_norm(h))); h += post_ffw_norm(mlp(pre_ffw_norm(h)))."""

    def __init__(
        self, cfg: ModelConfig, layer_type: LayerType, *, dtype: DTypeLike, param_dtype: DTypeLike, rngs: nnx.Rngs
    ):
        norm = lambda: RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, "embed", param_dtype=param_dtype)  # noqa: E731
        self.input_layernorm = norm()
        self.self_attn = Attention(cfg, layer_type, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.post_attention_layernorm = norm()
        self.pre_feedforward_layernorm = norm()
        self.mlp = MLP(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.post_feedforward_layernorm = norm()

    def __call__(self, h: jax.Array, valid: jax.Array, impl: AttentionImpl) -> jax.Array:
        with jax.named_scope("attention"):
            h = h + self.post_attention_layernorm(self.self_attn(self.input_layernorm(h), valid, impl))
        with jax.named_scope("mlp"):
            return h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))


RematPolicy = Literal["none", "full", "dots"]
REMAT_POLICIES: tuple[RematPolicy, ...] = get_args(RematPolicy)
STACKS = "blocks"  # the state key of the layer stacks: blocks/<layer type>/..., a leading "layers" axis


def checkpoint_policy(remat: RematPolicy) -> Callable | None:
    """The `jax.checkpoint` policy of a remat choice: "full" saves nothing of a block (its input only, the rest
    recomputed for the backward), "dots" saves the outputs of its matmuls (recomputing only the elementwise
    work; the weight matmuls by name, since `mixed.einsum`'s custom VJP hides their dots), "none" is no
    checkpointing (None)."""
    if remat not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {remat!r}; choose from {REMAT_POLICIES}")
    policies = jax.checkpoint_policies
    dots = policies.save_from_both_policies(
        policies.dots_with_no_batch_dims_saveable, policies.save_only_these_names(MATMUL)
    )
    return {"none": None, "full": policies.nothing_saveable, "dots": dots}[remat]


def _stack(
    cfg: ModelConfig, kind: LayerType, n: int, *, dtype: DTypeLike, param_dtype: DTypeLike, rngs: nnx.Rngs
) -> Block:
    """`n` blocks of one layer type as one Block whose parameters have a leading axis of n, named "layers"."""

    @nnx.split_rngs(splits=n)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs: nnx.Rngs) -> Block:
        return Block(cfg, kind, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    stack = make(rngs)
    for _, var in nnx.iter_graph(stack):
        if isinstance(var, nnx.Param):
            var.set_metadata(logical_axes=("layers", *var.get_metadata()["logical_axes"]))
    return stack


def _row(state: nnx.State, row: int | slice) -> nnx.State:
    return jax.tree.map(lambda x: x[row], state)


class EmbeddingGemmaModule(nnx.Module):
    """Token ids -> L2-normalized sentence embedding (B, embedding_dim), float32.

    The blocks of each layer type are one stack (`blocks/<layer type>`, parameters with a leading "layers"
    axis). With `scan_layers` (the default) the forward pass is a `jax.lax.scan` over the repeating layer
    pattern (`ModelConfig.layer_pattern`: for the 300m, 4 periods of 5 sliding blocks and 1 global one), so a
    compiled program holds one block of each type instead of all 24; `scan_layers=False` unrolls the same
    stacks layer by layer (for debugging, and for `token_embeddings(return_hidden=True)`). `remat` is the
    gradient-checkpointing policy of each block (`checkpoint_policy`).
    """

    def __init__(
        self,
        cfg: ModelConfig,
        *,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
        remat: RematPolicy = "none",
        attention_impl: AttentionImpl = "auto",
        scan_layers: bool = True,
    ):
        if attention_impl not in IMPLEMENTATIONS:  # refused here, not at the first forward pass
            raise ValueError(f"unknown attention implementation {attention_impl!r}; choose from {IMPLEMENTATIONS}")
        checkpoint_policy(remat)  # an unknown policy is refused here too
        self.config = cfg
        self.dtype = dtype
        self.attention_impl = attention_impl
        self.remat = remat
        self.scan_layers = scan_layers
        self.embed_tokens = _param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), param_dtype, 1.0)
        self.blocks = nnx.Dict(
            {
                kind: _stack(cfg, kind, cfg.layer_types.count(kind), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                for kind in cfg.stack_types
            }
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, "embed", param_dtype=param_dtype)
        widths = (cfg.hidden_size, *cfg.dense_features)
        self.dense = nnx.List(
            [
                _param(rngs, (i, o), ("embed", "dense") if n == 0 else ("dense", "embed"), param_dtype, i**-0.5)
                for n, (i, o) in enumerate(itertools.pairwise(widths))
            ]
        )

    @classmethod
    def abstract(
        cls,
        cfg: ModelConfig,
        *,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        remat: RematPolicy = "none",
        attention_impl: AttentionImpl = "auto",
        scan_layers: bool = True,
        quantization: Mode | None = None,
        activations: Activations = "float",
    ) -> EmbeddingGemmaModule:
        """The module with shapes and dtypes only (nothing allocated): what loaders fill and AOT lowers. With
        `quantization`, the module `EmbeddingGemma.from_pretrained(..., quantization=...)` builds: weights
        quantized from float32, scales and the other parameters in `dtype` (`param_dtype` is then unused)."""

        def build() -> EmbeddingGemmaModule:
            module = cls(
                cfg,
                dtype=dtype,
                param_dtype=jnp.float32 if quantization else param_dtype,
                rngs=nnx.Rngs(0),
                remat=remat,
                attention_impl=attention_impl,
                scan_layers=scan_layers,
            )
            if quantization:
                quantize_in_place(module, quantization, dtype=dtype, activations=activations)
            return module

        return nnx.eval_shape(build)

    def token_embeddings(
        self, input_ids: jax.Array, valid: jax.Array, *, return_hidden: bool = False
    ) -> jax.Array | tuple[jax.Array, list[jax.Array]]:
        """Final-norm token states (B, T, D); with return_hidden also each block's output (layers unrolled)."""
        with jax.named_scope("embed"):
            if isinstance(self.embed_tokens, QuantizedWeight):  # integer rows gathered, then dequantized
                rows = self.embed_tokens.take(input_ids)
            else:
                rows = jnp.take(self.embed_tokens[...], input_ids, axis=0)
            # The scale is rounded to the parameter dtype first, as in transformers (27.75 in bfloat16).
            scale = jnp.asarray(self.config.hidden_size**0.5, rows.dtype)
            h = (rows * scale).astype(self.dtype)
            h = constrain(h, ("batch", "length", "act_embed"))
        apply = self._block_functions(valid)
        states = {kind: nnx.state(stack) for kind, stack in self.blocks.items()}
        hidden = []
        if self.scan_layers and not return_hidden:
            h = self._scan(apply, states, h)
        else:
            for i in range(self.config.num_layers):
                kind, row = self.config.stack_position(i)
                with jax.named_scope(f"layer_{i}"):
                    h = apply[kind](_row(states[kind], row), h)
                hidden.append(h)
        with jax.named_scope("final_norm"):
            h = self.norm(h)
        return (h, hidden) if return_hidden else h

    def _block_functions(self, valid: jax.Array) -> dict[LayerType, Callable[[nnx.State, jax.Array], jax.Array]]:
        """Per layer type, (one block's state, h) -> the block's output, under the remat policy. Pure functions of
        the split state (not nnx transforms), so they also run where the parameters come from an outer trace,
        e.g. inside GradCache's lax.map / lax.scan."""
        policy, impl = checkpoint_policy(self.remat), self.attention_impl

        def function(graphdef: nnx.GraphDef) -> Callable[[nnx.State, jax.Array], jax.Array]:
            def block(state: nnx.State, h: jax.Array) -> jax.Array:
                return constrain(nnx.merge(graphdef, state)(h, valid, impl), ("batch", "length", "act_embed"))

            return block if policy is None else jax.checkpoint(block, policy=policy)

        return {kind: function(nnx.graphdef(stack)) for kind, stack in self.blocks.items()}

    def _scan(self, apply: dict, states: dict[LayerType, nnx.State], h: jax.Array) -> jax.Array:
        """The blocks as a scan over the periods of the layer pattern; inside a period, a scan over each run of
        blocks of one type (a run of one is a plain call)."""
        runs, repeats = self.config.layer_pattern
        per_period = {kind: sum(n for k, n in runs if k == kind) for kind in states}
        periods = {kind: jax.tree.map(lambda x, n=n: x.reshape(repeats, n, *x.shape[1:]), states[kind])
                   for kind, n in per_period.items()}  # fmt: skip

        def period(h: jax.Array, rows: dict[LayerType, nnx.State]) -> tuple[jax.Array, None]:
            used = dict.fromkeys(rows, 0)
            for kind, n in runs:
                run, used[kind] = _row(rows[kind], slice(used[kind], used[kind] + n)), used[kind] + n
                with jax.named_scope(kind):
                    if n == 1:
                        h = apply[kind](_row(run, 0), h)
                    else:
                        h = jax.lax.scan(lambda h, state, kind=kind: (apply[kind](state, h), None), h, run)[0]
            return h, None

        return jax.lax.scan(period, h, periods)[0] if repeats > 1 else period(h, _row(periods, 0))[0]

    def __call__(self, input_ids: jax.Array, valid: jax.Array) -> jax.Array:
        return self.head(self.token_embeddings(input_ids, valid), valid)

    def head(self, tokens: jax.Array, valid: jax.Array) -> jax.Array:
        """Mean over real tokens (padding excluded), Dense layers, L2 normalize."""
        with jax.named_scope("head"):
            m = valid.astype(jnp.float32)[..., None]
            count = jnp.maximum(m.sum(axis=1), 1.0)  # an all-padding row pools to 0, never NaN
            x = ((tokens.astype(jnp.float32) * m).sum(axis=1) / count).astype(self.dtype)
            for kernel in self.dense:
                x = matmul("bi,io->bo", x, kernel, self.dtype)
            return l2_normalize(x.astype(jnp.float32))


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||, eps), as torch.nn.functional.normalize."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def truncate(emb: jax.Array, dim: int) -> jax.Array:
    """Matryoshka: keep the first `dim` coordinates and re-normalize."""
    return l2_normalize(emb[..., :dim])
