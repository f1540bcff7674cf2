"""`embeddinggemma info`: the model's configuration, parameters, devices and attention backends."""

from __future__ import annotations

import argparse

import jax

from embeddinggemma.cli.common import add_cache_args, add_model_args, load_model, subparser
from embeddinggemma.model import quantized
from embeddinggemma.model.attention import backend_for


def register(sub: argparse._SubParsersAction) -> None:
    p = subparser(
        sub,
        "info",
        "Print the model's configuration, parameter count, devices and attention backend.",
        "embeddinggemma info --model ~/models/embeddinggemma-300m",
    )
    add_model_args(p, batch=False)
    add_cache_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    model = load_model(args)
    cfg = model.config
    params = quantized.parameter_count(model.params)
    devices = jax.devices()
    rows = {
        "model": args.model,
        "layers": f"{cfg.num_layers} ({cfg.num_global_layers} global, {cfg.num_layers - cfg.num_global_layers} "
        f"sliding with radius {cfg.sliding_window_radius})",
        "hidden": f"{cfg.hidden_size}, MLP {cfg.intermediate_size}, heads {cfg.num_heads} query / "
        f"{cfg.num_kv_heads} key-value x {cfg.head_dim}",
        "vocabulary": cfg.vocab_size,
        "max tokens": cfg.max_seq_length,
        "embedding": f"{cfg.embedding_dim}-d (dense head {' -> '.join(map(str, cfg.dense_features))})",
        "prompts": ", ".join(model.prompts) or "(none)",
        "parameters": f"{params:,} ({model.dtype})",
        "weights": f"{args.quantization or 'not quantized'}, "
        f"{quantized.parameter_bytes(model.params) / 2**20:,.1f} MiB"
        + (" (int4 two a byte, as stored on TPU)" if "int4" in model.quantized.values() else ""),
        "devices": f"{len(devices)} x {devices[0].platform} ({devices[0].device_kind})",
        "mesh": args.mesh or "none (one device)",
        "attention": f"sliding {backend_for(args.attention, cfg.sliding_window_radius)}, global "
        f"{backend_for(args.attention, None)} (requested {args.attention!r})",
    }
    for key, value in rows.items():
        print(f"{key:<11} {value}")
