"""Quantized weights (int8, int4 and the model card's mixed precision) with Google's qwix.

`EmbeddingGemma.from_pretrained(path, quantization="int8" | "int4" | "mixed")` reads the float checkpoint
and replaces each weight matrix (and the token embedding table) by a `QuantizedWeight`: integer values
(int8 or int4) plus float scales, quantized by `qwix.quantize` and used through qwix (`dequantize`,
`einsum`), so the parameters are *stored* quantized. Norm weights stay in the float dtype.

| mode    | embedding table (262144 x 768) | attention q/k/v/o     | MLP gate/up/down      | Dense head            |
|---------|--------------------------------|-----------------------|-----------------------|-----------------------|
| "int8"  | int8, a scale per row          | int8, per out channel | int8, per out channel | int8, per out channel |
| "int4"  | int4, blocks of 32 in a row    | int4, blocks of 32 along the input (the Q4_0 layout), everywhere      |
| "mixed" | int4, a scale per row          | int8, per out channel | int4, per out channel | int4, per out channel |

"mixed" is the model card's "per-channel quantization with int4 for embeddings, feedforward, and projection
layers, and int8 for attention (e4_a8_f4_p4)". A weight's "input" is its contraction side in the model's
einsum (q/k/v: the 768 model dims; o_proj: the 3 x 256 head dims together, so a block of 32 never spans two
heads); for the embedding table, where a lookup reads whole rows, each row (token) is a channel and its 768
values are the input side, as llama.cpp lays out `token_embd`. An input dimension that 32 does not divide
(only the tiny test model has one: 48) gets blocks of gcd(dim, 32).

The numbers are qwix's symmetric "absmax" scheme (`qwix._src.core.qarray`), for int8 and int4 alike:
scale = max|w| / (qmax + 0.5) over the channel or block (127.5 for int8, 7.5 for int4; an all-zero
block gets scale 1), q = round-half-to-even(w / scale) clipped to [qmin, qmax] (-128..127, -8..7), and
w ~ q * scale. (XLA computes both divisions as multiplications by a float32 reciprocal, which decides
exact ties: a channel's negative extreme comes out -127, not -128.) This is not bit-identical to
llama.cpp's Q8_0 (blocks of 32, scale max|w| / 127) or Q4_0 (scale = the signed extreme / -8).

What runs where: weight-only everywhere by default: the weight is dequantized (q * scale, in the compute
dtype) right before the float matmul; between calls only the integers and scales are held, the dequantized
weight is a temporary of the compiled step (which XLA may fuse into the matmul). With `activations="int8"`
(what `from_pretrained` picks on TPU for int8 weights: all of "int8" and the attention of "mixed") the
activations are quantized too, per token (absmax over the contracted dims), and qwix runs an
int8 x int8 -> int32 matmul scaled afterwards (w8a8, the v5e MXU's double-rate path). qwix takes that
path only for per-channel weights: blocks of 32 are below its 128-wide minimum tile, so int4
matmuls dequantize first. The embedding lookup is not a matmul: the rows a batch needs are gathered as
integers and dequantized (qwix intercepts jnp.einsum / dot_general, not jnp.take, so the table is quantized
here with qwix.quantize and dequantized with qwix.dequantize directly).

Why not `qwix.quantize_model(model, qwix.PtqProvider(rules), ...)` (interception): measured on this model
(qwix 0.1.8), it quantizes the attention and MLP einsums of a block correctly (tests/model/test_quantized.py
checks that ours are identical), but it fails on the layer stacks under `lax.scan`, silently leaves the
Dense head in float (its kernels sit in an `nnx.List`, where qwix's parameter lookup does not search), cannot
reach the embedding lookup, and calling the quantized module a second time fails in qwix's `WithAux.astype`
(our matmul casts the weight to the compute dtype). The explicit form here uses qwix's numerics (quantize,
dequantize) and, for w8a8, its einsum; the weight-only matmul is the model's own einsum on the dequantized
weight (qwix.einsum puts the weight first, a dot XLA:CPU cannot run in bfloat16 x bfloat16 -> float32). It
is an ordinary NNX module state (sharded by the same logical-axis rules: the scales inherit their weight's
axis names, and `sharding.logical_to_spec` leaves their size-1 dimensions whole), and needs no interception.

qwix is the optional `quant` extra; it is imported only when a model is quantized.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator
from typing import Any, Literal, get_args

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from embeddinggemma import sharding

Mode = Literal["int8", "int4", "mixed"]
MODES: tuple[str, ...] = get_args(Mode)
Activations = Literal["float", "int8"]
BLOCK = 32  # Q4_0's block: 32 consecutive input values share one scale


@dataclasses.dataclass(frozen=True)
class Scheme:
    """How one weight is quantized: `qtype` "int8" or "int4"; `block` None for one scale per output
    channel (per row of the embedding table), else blocks of that many values along the input."""

    qtype: str
    block: int | None = None


_INT8, _INT4, _INT4_BLOCKS = Scheme("int8"), Scheme("int4"), Scheme("int4", BLOCK)
ATTENTION = r"blocks/\w+/self_attn/[qkvo]_proj"

# Per mode, (parameter path regex, scheme): the first match applies; unmatched parameters stay float.
RULES: dict[str, tuple[tuple[str, Scheme], ...]] = {
    "int8": ((".*", _INT8),),
    "int4": ((".*", _INT4_BLOCKS),),
    "mixed": ((ATTENTION, _INT8), (".*", _INT4)),
}

# The input (contraction) axes of every weight, as the model's einsums use it (see modeling.py). A layer stack's
# weights (blocks/<layer type>/...) have a leading "layers" axis before these: each layer gets its own scales.
INPUT_AXES: tuple[tuple[str, tuple[int, ...]], ...] = (
    (r"blocks/\w+/self_attn/[qkv]_proj", (1,)),  # btd,dnh->btnh: (L, D, N, H)
    (r"blocks/\w+/self_attn/o_proj", (1, 2)),  # btnh,nhd->btd: (L, N, H, D)
    (r"blocks/\w+/mlp/(gate|up|down)_proj", (1,)),  # btd,df->btf / btf,fd->btd: (L, D, F) / (L, F, D)
    (r"dense/\d+", (0,)),  # bi,io->bo
    (r"embed_tokens", (1,)),  # a lookup of whole rows: a row is a channel, its values the input side
)


def check_mode(mode: str | None) -> Mode | None:
    """`mode` if it is None or one of MODES; else a ValueError that lists them."""
    if mode is not None and mode not in MODES:
        raise ValueError(f"quantization must be one of {', '.join(MODES)} (or None); got {mode!r}")
    return mode


def _import_qwix():
    try:
        import qwix
    except ImportError as e:
        raise ImportError("weight quantization needs qwix: pip install 'embeddinggemma-jax[quant]'") from e
    return qwix


def block_size(dim: int) -> int:
    """The block for an input dimension of `dim`: 32, or gcd(dim, 32) where 32 does not divide it."""
    return BLOCK if dim % BLOCK == 0 else math.gcd(dim, BLOCK)


def layout(shape: tuple[int, ...], input_axes: tuple[int, ...], scheme: Scheme) -> dict[str, Any]:
    """qwix.quantize's `channelwise_axes` / `tiled_axes` for a weight: every output axis gets its own
    scales; per-channel reduces over all input axes; blocks cut the last input axis into `block`s and give
    the other input axes (o_proj's heads) their own scales, so a block is 32 consecutive input values."""
    outputs = [a for a in range(len(shape)) if a not in input_axes]
    if scheme.block is None:
        return {"channelwise_axes": tuple(outputs), "tiled_axes": {}}
    last = input_axes[-1]
    return {
        "channelwise_axes": tuple(sorted(outputs + list(input_axes[:-1]))),
        "tiled_axes": {last: min(scheme.block, block_size(shape[last]))},
    }


@flax.struct.dataclass
class QuantizedWeight:
    """A weight stored as integers and scales (two `nnx.Param`s carrying the float weight's logical axes),
    used through qwix: `einsum` in the model's matmuls, `take` for the embedding lookup."""

    qvalue: nnx.Param  # int8 / int4, the weight's shape
    scale: nnx.Param  # the compute dtype; 1 on reduced axes, dim / block on a blocked one
    activations: str = flax.struct.field(pytree_node=False, default="float")  # "int8": w8a8 matmuls

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.qvalue.shape)

    def qarray(self, dtype: DTypeLike | None = None):
        """The qwix QArray; `dtype` sets the dequantized dtype (the scale's)."""
        qwix = _import_qwix()
        scale = self.scale[...]
        return qwix.QArray(self.qvalue[...], scale if dtype is None else scale.astype(dtype))

    def dequantize(self, dtype: DTypeLike | None = None) -> jax.Array:
        return _import_qwix().dequantize(self.qarray(dtype))

    def einsum(self, spec: str, x: jax.Array, dtype: DTypeLike) -> jax.Array:
        """`jnp.einsum(spec, x, w)` in `dtype`, accumulated in float32.

        Weight-only: w dequantized (qwix.dequantize), then the float model's own einsum. (qwix.einsum
        does the same but puts the weight first, a dot XLA:CPU cannot run in bfloat16 x bfloat16 ->
        float32.) With int8 activations: x quantized per token (absmax over its contracted axes) and
        qwix.einsum multiplies int8 x int8 -> int32, then applies both scales."""
        qwix = _import_qwix()
        x = x.astype(dtype)
        if self.activations != "int8":
            return jnp.einsum(spec, x, self.dequantize(dtype), preferred_element_type=jnp.float32).astype(dtype)
        x_subs, w_subs = spec.split("->")[0].split(",")
        keep = tuple(i for i, c in enumerate(x_subs) if c not in w_subs)
        qx = qwix.quantize(x, jnp.int8, channelwise_axes=keep)
        return qwix.einsum(spec, qx, self.qarray(dtype), preferred_element_type=jnp.float32).astype(dtype)

    def take(self, ids: jax.Array) -> jax.Array:
        """Rows `ids` of a quantized table, dequantized: the integers and scales are gathered, then scaled."""
        qwix = _import_qwix()
        rows = qwix.QArray(jnp.take(self.qvalue[...], ids, axis=0), jnp.take(self.scale[...], ids, axis=0))
        return qwix.dequantize(rows)


nnx.register_data_type(QuantizedWeight)


def _path_str(path: tuple) -> str:
    return "/".join(map(str, path))


def scheme_for(mode: Mode, path: str) -> Scheme | None:
    return next((scheme for regex, scheme in RULES[mode] if re.fullmatch(regex, path)), None)


def input_axes_for(path: str) -> tuple[int, ...] | None:
    return next((axes for regex, axes in INPUT_AXES if re.fullmatch(regex, path)), None)


def _targets(module: nnx.Module) -> Iterator[tuple[tuple, str, nnx.Param]]:
    """(path, path string, Param) of every float parameter of `module`."""
    for path, node in nnx.iter_graph(module):
        if isinstance(node, nnx.Param):
            yield path, _path_str(path), node


def quantize_weight(
    w: jax.Array, input_axes: tuple[int, ...], scheme: Scheme, *, scale_dtype: DTypeLike | None = None
) -> tuple[jax.Array, jax.Array]:
    """(qvalue, scale) of one float weight by qwix.quantize."""
    qwix = _import_qwix()
    q = qwix.quantize(w, jnp.dtype(scheme.qtype), calibration_method="absmax", **layout(w.shape, input_axes, scheme))
    return q.qvalue, q.scale.astype(scale_dtype or w.dtype)


def quantize_in_place(
    module: nnx.Module, mode: Mode, *, dtype: DTypeLike | None = None, activations: Activations = "float"
) -> nnx.Module:
    """Replace `module`'s weights by QuantizedWeights following RULES[mode] (quantized from their current,
    ideally float32, values); the other parameters and the scales are cast to `dtype` (default: unchanged).
    `activations="int8"` makes the int8 per-channel weights' matmuls w8a8. Works on concrete, abstract
    (nnx.eval_shape) and traced modules; returns `module`."""
    check_mode(mode)
    if activations not in get_args(Activations):
        raise ValueError(f"activations must be one of {get_args(Activations)}; got {activations!r}")
    replace = []
    for path, name, param in list(_targets(module)):
        scheme, axes = scheme_for(mode, name), input_axes_for(name)
        if scheme is None or axes is None:
            if dtype is not None:
                param.value = param.value.astype(dtype)
            continue
        qvalue, scale = quantize_weight(param.value, axes, scheme, scale_dtype=dtype)
        metadata = param.get_metadata()
        act = "int8" if activations == "int8" and scheme == _INT8 else "float"
        replace.append((path, QuantizedWeight(nnx.Param(qvalue, **metadata), nnx.Param(scale, **metadata), act)))
    for path, weight in replace:
        parent = module
        for p in path[:-1]:
            parent = parent[p] if isinstance(p, int) else getattr(parent, p)
        if isinstance(path[-1], int):
            parent[path[-1]] = weight
        else:
            setattr(parent, path[-1], weight)
    return module


def fake_quantize_in_place(module: nnx.Module, mode: Mode) -> nnx.Module:
    """Quantization-aware training: each weight RULES[mode] quantizes becomes its quantized-then-dequantized
    value (the numbers the quantized model computes with), with a straight-through gradient, as qwix's QAT
    does (`w + stop_gradient(dequantize(quantize(w)) - w)`): the loss is the quantized model's and the float
    weights learn to land where rounding costs little. Traced or concrete; returns `module`."""
    check_mode(mode)
    qwix = _import_qwix()
    for _, name, param in list(_targets(module)):
        scheme, axes = scheme_for(mode, name), input_axes_for(name)
        if scheme is None or axes is None:
            continue
        w = param.value
        qvalue, scale = quantize_weight(jax.lax.stop_gradient(w), axes, scheme)
        param.value = w + jax.lax.stop_gradient(qwix.dequantize(qwix.QArray(qvalue, scale)).astype(w.dtype) - w)
    return module


def quantize(
    module: nnx.Module,
    mode: Mode,
    *,
    dtype: DTypeLike | None = None,
    activations: Activations = "float",
    mesh: jax.sharding.Mesh | None = None,
) -> nnx.Module:
    """A quantized copy of a concrete `module` (see `quantize_in_place`), computed in one jitted program;
    with a `mesh`, every leaf (integers, scales, norms) lands on its "inference" sharding."""
    graphdef, state = nnx.split(module)

    def build(s: nnx.State) -> nnx.Module:
        return quantize_in_place(nnx.merge(graphdef, s), mode, dtype=dtype, activations=activations)

    qgraphdef, abstract = nnx.split(nnx.eval_shape(build, state))
    out = sharding.param_shardings(abstract, mesh, "inference") if mesh is not None else None
    qstate = jax.jit(lambda s: nnx.state(build(s)), out_shardings=out)(state)
    return nnx.merge(qgraphdef, qstate)


def quantized_paths(state: nnx.State) -> dict[str, str]:
    """{parameter path: "int8" | "int4"} of the quantized weights in a state."""
    out = {}
    for path, leaf in state.flat_state():
        if path[-1] == "qvalue":
            out[_path_str(path[:-1])] = jnp.dtype(leaf.dtype if not hasattr(leaf, "value") else leaf.value.dtype).name
    return out


def parameter_count(state: nnx.State) -> int:
    """Parameters of a state, quantized or not: a quantized weight counts its values, not its scales."""
    return sum(math.prod(leaf.shape) for path, leaf in state.flat_state() if path[-1] != "scale")


def parameter_bytes(state: Any, *, packed_int4: bool = True) -> int:
    """Bytes of a parameter state (arrays or ShapeDtypeStructs): int4 counts half a byte (packed, as XLA
    stores it on TPU; `packed_int4=False` counts one byte, as XLA:CPU stores it)."""
    total = 0.0
    for leaf in jax.tree.leaves(state):
        dt = jnp.dtype(leaf.dtype)
        size = math.prod(leaf.shape)
        total += size * (0.5 if dt == jnp.int4 and packed_int4 else dt.itemsize)
    return math.ceil(total)
