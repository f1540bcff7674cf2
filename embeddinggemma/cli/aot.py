"""`embeddinggemma aot`: compile the encode and train steps for a TPU slice without a TPU (`bench.aot`)."""

from __future__ import annotations

import argparse

from embeddinggemma.bench import aot
from embeddinggemma.cli.common import choice_list, subparser
from embeddinggemma.model import attention, quantized
from embeddinggemma.model.config import ModelConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = subparser(
        sub,
        "aot",
        "Compile the encode and train steps for a TPU slice without a TPU and report memory and FLOPs per chip.",
        "embeddinggemma aot --topology v5e:2x4 --steps encode",
        "Needs the tpu extra.",
    )
    p.add_argument("--topology", default="v5e:2x4", help="v5e:2x2 | v5e:2x4 | v5e:4x4 | v5e:16x16 | ...")
    p.add_argument(
        "--steps",
        type=choice_list(aot.STEPS),
        default=list(aot.STEPS),
        help="comma-separated: encode, train (default: both)",
    )
    p.add_argument("--encode-batch", type=int, default=4096)
    p.add_argument("--train-batch", type=int, default=1024, help="(query, document) pairs per step")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--encode-mesh", help="mesh spec (default data=-1)")
    p.add_argument("--train-mesh", help="mesh spec (default fsdp=-1 up to 16 chips, else data=-1,fsdp=16)")
    p.add_argument("--attention", default="splash", choices=[i for i in attention.IMPLEMENTATIONS if i != "auto"])
    p.add_argument("--no-remat", action="store_true", help="keep all activations (no per-block recompute)")
    p.add_argument("--grad-cache", type=int, help="GradCache chunk: sequences embedded at once in the train step")
    p.add_argument(
        "--layers",
        default="scanned",
        choices=["scanned", "unrolled"],
        help="unrolled: complete FLOP and byte counts and the roofline (XLA counts a scanned loop's body once), "
        "at several times the compile time (default: scanned)",
    )
    p.add_argument(
        "--quantization",
        choices=quantized.MODES,
        help="the encode step with int8 / int4 / mixed weights (int8 ones with int8 activations, as on TPU)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Each requested step's row of the table; status 1 if one does not fit in a chip's HBM."""
    devices = aot.tpu_devices(args.topology)
    print(f"{args.topology}: {len(devices)} x {devices[0].device_kind}, attention={args.attention}")
    print(f"parameters: {aot.parameter_count(ModelConfig.embeddinggemma_300m()) / 1e6:.1f}M")
    print(aot.HEADER, flush=True)
    reports = []
    for report in aot.compile_steps(
        devices,
        args.steps,
        encode_batch=args.encode_batch,
        train_batch=args.train_batch,
        seq_len=args.seq_len,
        encode_mesh=args.encode_mesh,
        train_mesh=args.train_mesh,
        attention=args.attention,
        remat="none" if args.no_remat else "full",
        grad_cache=args.grad_cache,
        quantization=args.quantization,
        scan_layers=args.layers == "scanned",
    ):
        reports.append(report)
        print(report.row(), flush=True)
    too_big = [r.name for r in reports if r.total > aot.V5E_HBM_BYTES]
    if too_big:
        print(f"does not fit in 16 GiB per chip: {too_big}")
    return 1 if too_big else 0
