"""Quantized weights (int8 / int4 / mixed, with qwix) on the tiny checkpoint.

Every expected value is computed here from the float checkpoint with NumPy (`reference`: the scheme written
out independently of qwix and of embeddinggemma.model.quantized), never taken from the code under test.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

pytest.importorskip("qwix", reason="needs the quant extra (pip install -e '.[quant]')")

from embeddinggemma import EmbeddingGemma
from embeddinggemma.corpus.readers import bundled_corpus
from embeddinggemma.eval.texts import SHORT, long_text
from embeddinggemma.model import quantized
from embeddinggemma.train import step
from tests.helpers.cli import parse_hits, run_cli

TEXTS = [*SHORT, long_text(150, 1), long_text(400, 2)]  # multilingual, and one longer than the sliding window
needs8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices")

# What each mode does to each weight (the model card's rows; see the module docstring): (bits, block or None).
ATTENTION = re.compile(r"blocks/\w+/self_attn/[qkvo]_proj")
EXPECTED = {
    "int8": lambda path: (8, None),
    "int4": lambda path: (4, 32),
    "mixed": lambda path: (8, None) if ATTENTION.fullmatch(path) else (4, None),
}
# The input (contraction) axes of each weight in the model's einsums; the embedding table's rows are channels.
INPUTS = {"q_proj": (0,), "k_proj": (0,), "v_proj": (0,), "o_proj": (0, 1), "embed_tokens": (1,)}


def input_axes(path: str) -> tuple[int, ...]:
    axes = INPUTS.get(path.rsplit("/", 1)[-1], (0,))  # MLP (D, F) / (F, D) and Dense (in, out): axis 0
    return tuple(a + 1 for a in axes) if path.startswith("blocks/") else axes  # after a stack's layers axis


def reference(w: np.ndarray, inputs: tuple[int, ...], bits: int, block: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(q, scale), symmetric absmax as qwix 0.1.8 computes it under XLA: scale = max|w| / (2^(bits-1) - 0.5)
    over each output channel (block None) or each run of `block` consecutive values along the last input axis
    (the other input axes then keep their own scales); scale 1 where that is below sqrt(float32 tiny); q =
    round-half-to-even(w / scale) clipped to [-2^(bits-1), 2^(bits-1) - 1]. XLA rewrites both divisions (by
    the constant, and by the broadcast scale) as multiplications by a float32 reciprocal, so this does too:
    it decides ties such as a channel's negative extreme, exactly -127.5 by division (-> -128) but
    -127.49999 by the reciprocal (-> -127). `scale` is returned broadcast to w's shape."""
    w = np.asarray(w, np.float32)
    qmax = 2 ** (bits - 1) - 1
    if block is None:
        absmax = np.abs(w).max(axis=inputs, keepdims=True)
    else:
        last = inputs[-1]
        block = block if w.shape[last] % block == 0 else np.gcd(w.shape[last], block)  # 48 wide: blocks of 16
        split = (*w.shape[:last], w.shape[last] // block, block, *w.shape[last + 1 :])
        absmax = np.abs(w.reshape(split)).max(axis=last + 1, keepdims=True)
        absmax = np.broadcast_to(absmax, split).reshape(w.shape)
    scale = absmax * (np.float32(1) / np.float32(qmax + 0.5))
    scale = np.where(scale < np.sqrt(np.finfo(np.float32).tiny), np.float32(1), scale).astype(np.float32)
    scale = np.broadcast_to(scale, w.shape)
    q = np.clip(np.round(w * (np.float32(1) / scale)), -qmax - 1, qmax)
    return q.astype(np.int64), scale


def flat(state: nnx.State) -> dict[str, np.ndarray]:
    return {"/".join(map(str, p)): np.asarray(jax.device_get(v.value)) for p, v in state.flat_state()}


def broadcast(scale: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A per-block scale array (one entry per block) repeated over its block, to `shape`."""
    for axis, (n, s) in enumerate(zip(shape, scale.shape, strict=True)):
        scale = np.repeat(scale, n // s, axis=axis)
    return scale


@pytest.fixture(scope="module")
def float_params(tiny_model) -> dict[str, np.ndarray]:
    return flat(tiny_model.params)


@pytest.fixture(scope="module")
def quantized_models(tiny_dir: Path) -> dict[str, EmbeddingGemma]:
    return {mode: EmbeddingGemma.from_pretrained(tiny_dir, quantization=mode) for mode in quantized.MODES}


@pytest.mark.parametrize("mode", quantized.MODES)
def test_quantized_values_equal_the_numpy_reference(mode, float_params, quantized_models):
    """Every matrix and the embedding table, stored as int8/int4 values and float32 scales equal to the
    NumPy reference bit for bit (per channel, blocks of 32, rounding, clipping); norms stay float32."""
    params = flat(quantized_models[mode].params)
    weights = sorted({k.rsplit("/", 1)[0] for k in params if k.endswith("/qvalue")})
    assert len(weights) == 1 + 2 * 7 + 2  # the table, 7 matrices a layer stack (2 layer types), the 2 Dense layers
    seen_blocks = set()
    for path in weights:
        bits, block = EXPECTED[mode](path)
        w, q, scale = float_params[path], params[f"{path}/qvalue"], params[f"{path}/scale"]
        assert q.dtype == {8: np.int8, 4: jnp.int4}[bits] and scale.dtype == np.float32, path
        ref_q, ref_scale = reference(w, input_axes(path), bits, block)
        np.testing.assert_array_equal(q.astype(np.int64), ref_q, err_msg=path)
        np.testing.assert_array_equal(broadcast(scale, w.shape), ref_scale, err_msg=path)
        n_scales = scale.size
        if block is None:  # one scale per output channel (per table row)
            assert n_scales == w.size // np.prod([w.shape[a] for a in input_axes(path)]), path
        else:
            seen_blocks.add(w.size // n_scales)
        assert q.min() >= -(2 ** (bits - 1)) and q.max() <= 2 ** (bits - 1) - 1
    if mode == "int4":
        assert seen_blocks == {32, 16}  # 32 where it divides the input (96, 256, head_dim 32); 48-wide: 16
    floats = {k for k in params if not k.endswith(("/qvalue", "/scale"))}
    assert floats and all(k.endswith("weight") for k in floats)  # the norms
    for k in floats:
        np.testing.assert_array_equal(params[k], float_params[k])


@pytest.mark.parametrize("mode", quantized.MODES)
def test_quantized_forward_is_the_float_forward_of_the_dequantized_weights(
    mode, tiny_dir, float_params, quantized_models
):
    """The quantized model computes exactly what the float model computes with the reference's q * scale
    as its weights (up to float32 summation order)."""
    float_model = EmbeddingGemma.from_pretrained(tiny_dir)
    deq = {}
    for path, w in float_params.items():
        if path.rsplit("/", 1)[-1] in ("weight",):
            continue
        bits, block = EXPECTED[mode](path)
        q, scale = reference(w, input_axes(path), bits, block)
        deq[path] = (q * scale).astype(np.float32)
    state = float_model.params
    for p, v in state.flat_state():
        key = "/".join(map(str, p))
        if key in deq:
            v.value = jnp.asarray(deq[key])
    float_model.params = state
    np.testing.assert_allclose(quantized_models[mode].encode(TEXTS), float_model.encode(TEXTS), atol=2e-6)


# Cosine to the float32 model over TEXTS, measured on the tiny (random, deliberately large) weights:
#   int8 min 0.9995 mean 0.9998; int4 min 0.895 mean 0.961; mixed min 0.940 mean 0.974.
BOUNDS = {"int8": (0.999, 0.9995), "int4": (0.85, 0.94), "mixed": (0.9, 0.96)}  # (min, mean)


@pytest.mark.parametrize("mode", quantized.MODES)
def test_quantized_forward_stays_close_to_float32(mode, tiny_model, quantized_models):
    ours, ref = quantized_models[mode].encode(TEXTS), tiny_model.encode(TEXTS)
    cos = (ours * ref).sum(axis=1)
    assert np.abs(ours - ref).max() > 1e-4  # really quantized
    lo, mean = BOUNDS[mode]
    assert cos.min() >= lo and cos.mean() >= mean, (cos.min(), cos.mean())


def test_parameters_are_stored_int8_and_int4(tiny_model, quantized_models):
    """Bytes of the parameter state from the shapes: int8 values 1 byte each, int4 half a byte (packed as on
    TPU; XLA:CPU keeps one per byte), scales and norms 4; the device buffers hold int8 at one byte a value."""
    float_bytes = sum(x.size * 4 for x in flat(tiny_model.params).values())
    assert quantized.parameter_bytes(tiny_model.params) == float_bytes
    for mode, model in quantized_models.items():
        params = flat(model.params)
        expected = 0.0
        for key, x in params.items():
            if key.endswith("/qvalue"):
                expected += x.size * (1 if x.dtype == np.int8 else 0.5)
            else:
                assert x.dtype == np.float32
                expected += x.size * 4
        assert quantized.parameter_bytes(model.params) == int(np.ceil(expected))
        assert quantized.parameter_bytes(model.params) < {"int8": 0.3, "int4": 0.2, "mixed": 0.2}[mode] * (float_bytes)
        assert quantized.parameter_count(model.params) == quantized.parameter_count(tiny_model.params)
        for p, v in model.params.flat_state():
            if p[-1] == "qvalue" and v.value.dtype == jnp.int8:
                buffer = v.value.addressable_shards[0].data
                assert buffer.dtype == jnp.int8 and buffer.on_device_size_in_bytes() == v.value.size
    assert set(quantized_models["mixed"].quantized.values()) == {"int8", "int4"}
    assert quantized_models["int8"].quantized["embed_tokens"] == "int8"


@needs8
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_mesh_gives_the_single_device_embeddings(tiny_dir, quantized_models, mode):
    """data=2,fsdp=2,tensor=2: integer values and scales placed by the same logical-axis rules (the table
    split by vocabulary over fsdp and tensor), same embeddings as one device."""
    model = EmbeddingGemma.from_pretrained(tiny_dir, quantization=mode, mesh="data=2,fsdp=2,tensor=2")
    table = model.params["embed_tokens"]
    for leaf in (table["qvalue"].value, table["scale"].value):
        assert leaf.sharding.spec[0] == ("fsdp", "tensor")
        assert leaf.addressable_shards[0].data.shape[0] == leaf.shape[0] // 4
    down = model.params["blocks"]["sliding_attention"]["mlp"]["down_proj"]["qvalue"].value
    assert down.sharding.spec[1] == "tensor"  # the MLP width, as for the float weight (after the layers axis)
    np.testing.assert_allclose(model.encode(TEXTS), quantized_models[mode].encode(TEXTS), atol=2e-6)


def test_int8_activations_multiply_int8_by_int8(tiny_dir, quantized_models):
    """activations="int8" (the TPU default): the int8 weights' matmuls take int8 x int8 -> int32 dots, and
    the result stays within the int8 bound of the float32 model."""
    model = EmbeddingGemma.from_pretrained(tiny_dir, quantization="int8", activations="int8")
    tokens, valid = model.pad_batch(model.tokenizer.encode(TEXTS[:2]))
    hlo = model._forward.lower(model.params, tokens, valid).as_text()
    int_dot = re.compile(r"dot_general.*tensor<[^>]*xi8>.*tensor<[^>]*xi8>\) -> tensor<[^>]*xi32>")
    assert len(int_dot.findall(hlo)) == 2 * 7 + 2  # the scanned program: one block of each type, 2 Dense layers
    weight_only = quantized_models["int8"]._forward.lower(quantized_models["int8"].params, tokens, valid).as_text()
    assert not int_dot.findall(weight_only)
    cos = (model.encode(TEXTS) * quantized_models["int8"].encode(TEXTS)).sum(axis=1)
    assert cos.min() > 0.999


def test_matches_qwix_ptq_interception(tiny_model, quantized_models):
    """qwix's own PTQ route (quantize_model + PtqProvider, which intercepts the einsums) stores the same int8
    values and scales for the attention and MLP weights of a block. (It cannot reach weights inside the
    scanned layer stacks, so each block is given to it alone: a row of a stack merged into a Block.)"""
    import qwix

    provider = qwix.PtqProvider([qwix.QuantizationRule(module_path=".*", weight_qtype=jnp.int8)])
    cfg = tiny_model.config
    h, valid = jnp.ones((2, 8, cfg.hidden_size), jnp.float32), jnp.ones((2, 8), bool)
    ours = flat(quantized_models["int8"].params)
    for kind in cfg.stack_types:
        stack = nnx.merge(tiny_model.graphdef, tiny_model.params).blocks[kind]
        graphdef, state = nnx.split(stack)
        for row in range(cfg.layer_types.count(kind)):
            block = nnx.merge(graphdef, jax.tree.map(lambda x, row=row: x[row], state))
            quantized_block = qwix.quantize_model(block, provider, h, valid, "dense")
            theirs = {"/".join(map(str, p)): np.asarray(v.value) for p, v in nnx.state(quantized_block).flat_state()}
            reached = sorted(k.removesuffix("/array/qvalue") for k in theirs if k.endswith("/array/qvalue"))
            assert len(reached) == 7, reached
            for path in reached:
                mine = f"blocks/{kind}/{path}"
                np.testing.assert_array_equal(theirs[f"{path}/array/qvalue"], ours[f"{mine}/qvalue"][row])
                np.testing.assert_array_equal(theirs[f"{path}/array/scale"], ours[f"{mine}/scale"][row])


def test_refusals(tiny_dir, quantized_models, tmp_path):
    with pytest.raises(ValueError, match="quantization must be one of int8, int4, mixed"):
        EmbeddingGemma.from_pretrained(tiny_dir, quantization="int2")
    with pytest.raises(ValueError, match="activations='int8' needs quantization"):
        EmbeddingGemma.from_pretrained(tiny_dir, activations="int8")
    with pytest.raises(ValueError, match="cannot be saved"):
        quantized_models["int8"].save_pretrained(tmp_path / "out")


def test_cli_search_and_info_with_quantization(tiny_dir, quantized_models):
    """`embeddinggemma search --quantization int8` on the bundled corpus ranks and scores as the quantized API."""
    import json

    corpus = [json.loads(line) for line in bundled_corpus().read_text(encoding="utf-8").splitlines()]
    query = "Which planet is known as the Red Planet?"
    found = parse_hits(run_cli(tiny_dir, "search", "--quantization", "int8", "-q", query, "-k", 5).stdout)
    model = quantized_models["int8"]
    scores = model.similarity(model.encode_query(query), model.encode_document([d["text"] for d in corpus]))[0]
    best = np.argsort(-scores)[:5]
    assert [h[0] for h in found] == [corpus[i]["id"] for i in best]
    np.testing.assert_allclose([h[1] for h in found], scores[best], atol=2e-3)
    info = run_cli(tiny_dir, "info", "--quantization", "int4").stdout
    mib = quantized.parameter_bytes(quantized_models["int4"].params) / 2**20
    assert f"weights     int4, {mib:,.1f} MiB (int4 two a byte, as stored on TPU)" in info
    bad = run_cli(tiny_dir, "search", "-q", query, "--quantization", "int3", ok=False)
    assert bad.returncode == 2 and "invalid choice: 'int3'" in bad.stderr


@needs8
def test_aot_lowers_the_quantized_encoder_program(tiny_dir):
    """`aot.lower_encode(..., quantization=...)` is the program `from_pretrained(..., quantization=...)` runs."""
    from embeddinggemma import sharding
    from embeddinggemma.bench import aot

    model = EmbeddingGemma.from_pretrained(tiny_dir, quantization="mixed", mesh="data=2,fsdp=4")
    tokens, valid = model.pad_batch([[2, 5, 6, 1]] * 8)
    split = sharding.batch_sharding(model.mesh)
    tokens, valid = (jax.make_array_from_callback(x.shape, split, lambda i, x=x: x[i]) for x in (tokens, valid))
    with jax.set_mesh(model.mesh):
        ours = model._forward.lower(model.params, tokens, valid).as_text()
    report = aot.lower_encode(model.config, model.mesh, 8, tokens.shape[1], "auto", np.float32, "mixed")
    assert ours == report.as_text()


def test_int8_encode_compiles_for_v5e_with_int8_matmuls():
    """The int8 encode step of the real 300m shapes for v5e:2x2 (data=2, fsdp=2): every
    matmul int8 x int8 (w8a8), parameters half the bfloat16 model's bytes per chip (0.21 vs 0.41 GB). The
    counts come from an unrolled compile of two of its layers (one of each type, the real widths and
    vocabulary): XLA counts a scanned block once, and 24 unrolled layers would only repeat the same two."""
    pytest.importorskip("libtpu", reason="needs the tpu extra (pip install -e '.[tpu]')")
    from embeddinggemma import sharding
    from embeddinggemma.bench import aot
    from embeddinggemma.model.config import FULL, SLIDING, ModelConfig

    try:
        devices = aot.tpu_devices("v5e:2x2")
    except Exception as e:  # libtpu present but unusable here
        pytest.skip(f"no TPU compiler: {e}")
    cfg = ModelConfig.embeddinggemma_300m()
    mesh = sharding.make_mesh("data=2,fsdp=2", devices)
    lowered = aot.lower_encode(cfg, mesh, 8, 512, "splash", jnp.bfloat16, "int8").as_text()
    int_dot = re.compile(r"dot_general.*tensor<[^>]*xi8>.*tensor<[^>]*xi8>\) -> tensor<[^>]*xi32>")
    assert len(int_dot.findall(lowered)) == len(cfg.stack_types) * 7 + 2  # one block of each type: scanned
    cfg = dataclasses.replace(cfg, num_layers=2, layer_types=(SLIDING, FULL))
    report = aot.compile_encode(cfg, mesh, batch=8, t=512, impl="splash", quantization="int8", scan_layers=False)
    assert report.name == "encode, int8"
    # int8 values (the table split over fsdp=2) + bfloat16 scales and norms: ~0.1 GB table + ~0.1 GB layers
    d, h, f = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    table = cfg.vocab_size * d / 2
    layers = cfg.num_layers * (2 * d * cfg.num_heads * h + 2 * d * cfg.num_kv_heads * h + 3 * d * f)
    layers += sum(a * b for a, b in zip((d, *cfg.dense_features[:-1]), cfg.dense_features, strict=True))  # Dense
    assert table + layers < report.argument < 1.02 * (table + layers) + 2e6
    assert 0 < report.total < aot.V5E_HBM_BYTES
    assert 0.95 < (report.xla_flops + report.kernel_flops) / report.analytic_flops < 1.15


def test_a_bfloat16_checkpoint_loads_as_its_float32_values(tiny_dir, tiny_model, tmp_path):
    """A sentence-transformers directory saved in bfloat16 (numpy, hence safetensors' numpy reader, has no
    bfloat16) loads: every parameter is the float32 checkpoint's rounded to bfloat16, bit for bit, and it
    quantizes like any other. (Google's QAT checkpoints are this architecture's ST directories; whatever
    float dtype their files hold, they load as the base model does.)"""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "bf16"
    shutil.copytree(tiny_dir, copy)
    for file in copy.rglob("model.safetensors"):
        save_file({k: v.to(torch.bfloat16) for k, v in load_file(file).items()}, str(file), metadata={"format": "pt"})
    ours = flat(EmbeddingGemma.from_pretrained(copy).params)
    for key, x in flat(tiny_model.params).items():
        expected = np.asarray(jnp.asarray(x).astype(jnp.bfloat16).astype(jnp.float32))
        np.testing.assert_array_equal(ours[key], expected, err_msg=key)
    assert EmbeddingGemma.from_pretrained(copy, quantization="int4").quantized["embed_tokens"] == "int4"


@pytest.mark.reference
def test_real_checkpoint_quantized_cosine(reference_dir, reference_model):
    """The real checkpoint (when EMBEDDINGGEMMA_CHECKPOINT is set): int8's mean cosine to float32 >= 0.998;
    int4 and mixed a little under what they measured (docs/quantization.md), printed with pytest -s."""
    ref = reference_model.encode(TEXTS)
    for mode, min_bound, mean_bound in (("int8", 0.998, 0.999), ("int4", 0.87, 0.94), ("mixed", 0.85, 0.92)):
        cos = (EmbeddingGemma.from_pretrained(reference_dir, quantization=mode).encode(TEXTS) * ref).sum(axis=1)
        print(f"{mode}: min cosine {cos.min():.5f}, mean {cos.mean():.5f} over {len(TEXTS)} texts")
        assert cos.min() >= min_bound and cos.mean() >= mean_bound, (mode, cos)


# ---------------------------------------------------------------------------------------------- QAT


def test_qat_loss_and_gradients_are_those_of_the_quantized_weights_passed_straight_through(tiny_dir):
    """Under QAT the loss is the float model's loss at the fake-quantized weights fq(w), and the gradient
    with respect to w is the float gradient at fq(w) (straight through: d fq / dw = 1)."""
    from tests.helpers.train import collate, tiny_config, tiny_params

    cfg = tiny_config(quantization="int4")
    graphdef, frozen, params = tiny_params(tiny_dir, cfg)
    batch = collate(tiny_dir, cfg)
    qat = jax.jit(lambda p, b: step.loss_and_grads(cfg, step.embed_fn(graphdef, frozen, "int4"), p, b))
    q_loss, _, q_grads = qat(params, batch)

    fq_module = quantized.fake_quantize_in_place(nnx.merge(graphdef, frozen, params, copy=True), "int4")
    _, fq_frozen, fq_params = step.split_module(fq_module, cfg.freeze_embeddings)
    leaves = zip(jax.tree.leaves(fq_params), jax.tree.leaves(params), strict=True)
    moved = [float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in leaves]
    assert max(moved) > 1e-3  # fake quantization changed the weights
    plain = jax.jit(lambda p, b: step.loss_and_grads(cfg, step.embed_fn(graphdef, fq_frozen), p, b))
    f_loss, _, f_grads = plain(fq_params, batch)
    assert abs(float(q_loss) - float(f_loss)) <= 1e-6 * abs(float(f_loss))
    for q, f in zip(jax.tree.leaves(q_grads), jax.tree.leaves(f_grads), strict=True):
        np.testing.assert_allclose(np.asarray(q), np.asarray(f), rtol=1e-5, atol=1e-7 * np.abs(np.asarray(f)).max())
    assert max(float(np.abs(np.asarray(g)).max()) for g in jax.tree.leaves(q_grads)) > 0


def test_qat_run_evaluates_the_quantized_model_improves_it_and_exports_float(tiny_dir, tmp_path):
    """A short int4 QAT run: its evaluations are the metrics of the model quantized at load (before: the
    base checkpoint; after: the export), the quantized model's held-out nDCG rises, and the export is the
    float sentence-transformers directory."""
    from sentence_transformers import SentenceTransformer

    from embeddinggemma import TrainConfig, train
    from embeddinggemma.encode.prompts import Prompts
    from embeddinggemma.eval import retrieval
    from embeddinggemma.train.sources import examples, open_rows
    from tests.helpers.retrieval import write_split
    from tests.helpers.train import tiny_run_config

    data = write_split(tmp_path / "data")
    overrides = dict(quantization="int4", steps=15, eval_every=None, save_every=1000)
    cfg = TrainConfig.from_dict(tiny_run_config(tiny_dir, data, tmp_path / "run", **overrides))
    result = train(cfg)
    evalset = retrieval.RetrievalSet.from_examples(examples(open_rows(str(data[1]), None)))
    for when, model_dir in (("eval_start", tiny_dir), ("eval_end", Path(result["export"]))):
        model = EmbeddingGemma.from_pretrained(model_dir, quantization="int4")
        prompts = Prompts.for_model(model.config, None, None, cfg.title_prompt)
        expected = retrieval.evaluate(model, evalset, cfg.matryoshka_dims, prompts)
        for dim, values in expected.items():
            for name, value in values.items():
                assert result[when][f"eval/{dim}/{name}"] == pytest.approx(value, abs=1e-6), (when, dim, name)
    before, after = result["eval_start"]["eval/48/ndcg@10"], result["eval_end"]["eval/48/ndcg@10"]
    print(f"int4 QAT held-out nDCG@10 (48-d): {before:.4f} -> {after:.4f}")
    assert after > before + 0.05

    export = Path(result["export"])
    ours = EmbeddingGemma.from_pretrained(export).encode(TEXTS[:4])
    ref = SentenceTransformer(str(export), device="cpu").encode(TEXTS[:4])
    assert (ours * ref).sum(axis=1).min() >= 0.99999  # both unit vectors: the float model, as Google ships QAT
