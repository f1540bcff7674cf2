"""bench.profile: XLA ops attributed to the model's components by their name scopes, on a real profile."""

from __future__ import annotations

from pathlib import Path

import pytest

from embeddinggemma.bench import profile
from tests.helpers.train import tiny_config

BODY = "jit(step)/jvp()/while/body/closed_call"


@pytest.mark.parametrize(
    ("op_name", "expected"),
    [
        (f"{BODY}/full_attention/attention/norm/mul", ("full_attention blocks: norms", "forward")),
        (f"{BODY}/full_attention/mlp/norm/rsqrt", ("full_attention blocks: norms", "forward")),
        (
            f"{BODY}/sliding_attention/attention/blocked_attention/exp",
            ("sliding_attention blocks: attention", "forward"),
        ),
        ("jit(step)/jvp(embed)/jit(_take)/gather", ("embedding", "forward")),
        ("jit(step)/transpose(jvp(embed))/jit(_take)/broadcast_in_dim", ("embedding", "backward")),
        (
            "jit(step)/transpose(jvp())/while/body/closed_call/sliding_attention/while/body/closed_call/mlp/dot_general",
            ("sliding_attention blocks: mlp", "backward"),
        ),
        (
            "jit(step)/jvp()/while/body/closed_call/full_attention/attention/norm/mul",
            ("full_attention blocks: norms", "forward"),
        ),
        (
            "jit(step)/jvp()/while/body/closed_call/full_attention/mlp/norm/rsqrt",
            ("full_attention blocks: norms", "forward"),
        ),
        (
            "jit(step)/jvp()/while/body/jit(dynamic_index_in_dim)/dynamic_slice",
            ("layer scan (stack slicing)", "forward"),
        ),
        ("jit(step)/jvp(head)/bi,io->bo/dot_general", ("final norm + head", "forward")),
        ("jit(step)/jvp(final_norm)/norm/mul", ("final norm + head", "forward")),
        ("jit(step)/transpose(jvp(loss))/exp", ("loss", "backward")),
        ("jit(step)/optimizer/jit(clip)/mul", ("optimizer (clip, AdamW)", "update")),
        ("", ("other (layouts, casts)", "forward")),
    ],
)
def test_components_from_name_scopes(op_name: str, expected: tuple[str, str]) -> None:
    assert profile.component(op_name) == expected


def test_a_tiny_train_step_profile_names_every_component(tiny_dir: Path, tmp_path: Path) -> None:
    """Every op in the trace is found in the compiled HLO, and each part of the step gets time."""
    data = tmp_path / "train.jsonl"
    data.write_text("".join(f'{{"query": "q {i}", "positive": "p {i} {i}", "negative": "n {i}"}}\n' for i in range(8)))
    cfg = tiny_config(
        model=str(tiny_dir),
        train_file=str(data),
        output_dir=str(tmp_path / "out"),
        num_negatives=1,
        global_batch_size=8,
    )
    result = profile.profile_train(cfg, steps=2)
    assert result.unmatched_s == 0.0
    names = {name for name, _ in result.ops}
    for part in ("attention", "mlp", "norms"):
        assert {f"sliding_attention blocks: {part}", f"full_attention blocks: {part}"} <= names
    assert {"embedding", "final norm + head", "loss", "optimizer (clip, AdamW)"} <= names
    assert all(seconds >= 0 for seconds in result.ops.values()) and sum(result.ops.values()) > 0
    assert result.ops[("sliding_attention blocks: mlp", "backward")] > 0
    assert result.wall_s > 0 and result.idle_s >= 0
    table = result.table()
    assert table.startswith("| component | forward s | backward s | total s |") and "heaviest ops:" in table
