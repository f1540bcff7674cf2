"""Analytic FLOPs of the forward pass: the yardstick for AOT reports and for model FLOP utilization."""

from __future__ import annotations

import itertools

import numpy as np

from embeddinggemma.model.config import FULL, ModelConfig


def attended_pairs(t: int, radius: int | None) -> int:
    """(query, key) pairs the mask allows in one sequence of t real tokens."""
    if radius is None:
        return t * t
    i = np.arange(t)
    return int((np.minimum(t, i + radius + 1) - np.maximum(0, i - radius)).sum())


def forward_flops(cfg: ModelConfig, t: int) -> tuple[float, float]:
    """(dense-layer matmul FLOPs, attention FLOPs) of one sequence of t tokens: 2 per multiply-add,
    attention counted only over the key pairs the mask allows (masked work is waste, not model work)."""
    d, n, k, h, f = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size
    per_token = 2 * (d * (n + 2 * k) * h + n * h * d + 3 * d * f)
    widths = (d, *cfg.dense_features)
    head = sum(2 * a * b for a, b in itertools.pairwise(widths))
    radius = cfg.sliding_window_radius
    attn = sum(4 * n * h * attended_pairs(t, None if kind == FULL else radius) for kind in cfg.layer_types)
    return cfg.num_layers * t * per_token + head, attn
