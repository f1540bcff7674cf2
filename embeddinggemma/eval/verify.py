"""`embeddinggemma verify`: does this package give the reference vectors on this machine?

The reference is sentence-transformers (PyTorch, float32, CPU) on the official checkpoint, run once by
`scripts/make_golden.py` over a verification set that exercises what ports get wrong (a text longer than
one sliding window, one over the 2048-token limit, scripts and languages, code, an empty string, every
prompt of the model's config, a title, one mixed-length batch) and shipped as golden vectors: float32,
with the SHA-256 of the checkpoint's weight files and the library versions they came from. `verify`
encodes the stored texts with every requested attention backend and dtype on the devices at hand and
compares at each Matryoshka width of the model (768/512/256/128, truncated and re-normalized on both sides): min and
mean cosine, max |diff|, the worst text, PASS/FAIL against BOUNDS. `--reference sentence-transformers`
runs the reference live instead, for fine-tuned or converted checkpoints. Exit status 0 only if every
row passes; the report (platform facts, rows, throughput) is what a bug report needs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import importlib.metadata
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from embeddinggemma.checkpoint import locate, read_config
from embeddinggemma.encode.encoder import EmbeddingGemma
from embeddinggemma.eval.texts import QUERIES, SHORT, long_text
from embeddinggemma.files import check_outputs, write_atomic
from embeddinggemma.model.flops import forward_flops
from embeddinggemma.sharding import make_mesh

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden-embeddinggemma-300m.npz"
# Min cosine (over texts and widths) to the float32 reference that passes. float32 / bfloat16 as the
# parity tests hold them; quantized weights as measured on the real checkpoint (weight_quantization).
BOUNDS = {"float32": 0.99999, "bfloat16": 0.999, "int8": 0.998, "int4": 0.87, "mixed": 0.85}
# Backends `--attention all` tries on each platform, the default ("auto") first: on CPU it is blocked, on TPU
# splash, on GPU cuDNN for global layers and blocked for sliding ones. splash_interpret (Pallas's interpreter
# of the TPU kernel) takes over 10 minutes a row on a CPU: ask for it by name.
ALL_BACKENDS = {
    "cpu": ("blocked", "dense"),
    "gpu": ("auto", "dot_product", "blocked", "dense"),
    "tpu": ("splash", "blocked", "dense"),
}
# Dense bfloat16 peak TFLOP/s per chip, by jax's device_kind, for the MFU figure (datasheets).
PEAK_TFLOPS = {"TPU v5 lite": 197, "TPU v5e": 197, "TPU v5p": 459, "TPU v6 lite": 918, "TPU v4": 275}
PEAK_TFLOPS |= {"NVIDIA H100": 989, "NVIDIA H200": 989, "NVIDIA A100": 312}


@dataclasses.dataclass(frozen=True)
class Item:
    """One text of the verification set and how it is prompted (a prompt name of the model, or a literal)."""

    text: str
    prompt_name: str | None = None
    prompt: str | None = None

    @property
    def label(self) -> str:
        how = f"[{self.prompt_name}] " if self.prompt_name else f"[{self.prompt!r}] " if self.prompt else ""
        text = " ".join(self.text.split())
        return how + (repr(text[:60] + "…") if len(text) > 60 else repr(text))


def verification_set(prompt_names: list[str]) -> list[Item]:
    """The texts: SHORT (languages, scripts, code, whitespace, emoji, ""), documents of ~700 tokens (past one
    sliding window of 513), ~2000 and > 2048 (truncated), a title, and one query per prompt of the model."""
    items = [Item(t) for t in SHORT]
    items += [Item(long_text(420, seed=420)), Item(long_text(1180, seed=1180)), Item(long_text(2000, seed=1))]
    items.append(Item(SHORT[5], prompt="title: 東京 | text: "))
    items.append(Item(long_text(700, seed=700), prompt_name="document" if "document" in prompt_names else None))
    questions = [*QUERIES, *SHORT[:3]]
    items += [Item(questions[i % len(questions)], prompt_name=name) for i, name in enumerate(prompt_names)]
    return items


def encode_items(encode: Any, items: list[Item]) -> np.ndarray:
    """(n, dim) float32: `encode(texts, prompt_name=, prompt=)` once per distinct prompt, so the unprompted
    texts (short and long together) go as one mixed-length batch; rows in `items` order."""
    out: dict[int, np.ndarray] = {}
    groups: dict[tuple[str | None, str | None], list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault((item.prompt_name, item.prompt), []).append(i)
    for (name, prompt), rows in groups.items():
        vectors = encode([items[i].text for i in rows], prompt_name=name, prompt=prompt)
        out.update(zip(rows, np.asarray(vectors, np.float32), strict=True))
    return np.stack([out[i] for i in range(len(items))])


def weight_hashes(directory: Path) -> dict[str, str]:
    """{relative path: SHA-256} of every *.safetensors file under a checkpoint directory."""
    hashes = {}
    for path in sorted(directory.rglob("*.safetensors")):
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
        hashes[path.relative_to(directory).as_posix()] = digest.hexdigest()
    return hashes


def versions(*names: str) -> dict[str, str]:
    """Installed versions of `names` (those installed) and Python's."""
    found = {"python": platform.python_version()}
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


def sentence_transformers_encoder(directory: Path) -> tuple[Any, list[str]]:
    """(encode(texts, prompt_name=, prompt=), the model's prompt names) of a live SentenceTransformer,
    float32 on CPU."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise ImportError(
            "--reference sentence-transformers needs torch and sentence-transformers: "
            "pip install torch sentence-transformers"
        ) from e
    model = SentenceTransformer(str(directory), device="cpu")

    def encode(texts: list[str], *, prompt_name: str | None, prompt: str | None) -> np.ndarray:
        return model.encode(texts, prompt_name=prompt_name, prompt=prompt, batch_size=4, convert_to_numpy=True)

    return encode, sorted(model.prompts)


@dataclasses.dataclass(frozen=True)
class Golden:
    vectors: np.ndarray  # (n, dim) float32
    items: list[Item]
    meta: dict[str, Any]  # checkpoint, sha256 {file: hex}, versions, created

    def save(self, path: Path) -> None:
        meta = {**self.meta, "items": [dataclasses.asdict(item) for item in self.items]}
        vectors = self.vectors.astype(np.float32)
        write_atomic(path, lambda f: np.savez_compressed(f, vectors=vectors, meta=np.array(json.dumps(meta))))

    @classmethod
    def load(cls, path: Path) -> Golden:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            vectors = data["vectors"]
        items = [Item(**item) for item in meta.pop("items")]
        if vectors.shape[0] != len(items):
            raise ValueError(f"{path}: {vectors.shape[0]} golden vectors for {len(items)} texts")
        return cls(vectors, items, meta)


def make_golden(model: str, *, name: str) -> Golden:
    """The reference run: sentence-transformers float32 on CPU over verification_set(the model's prompts)."""
    directory = locate(model)
    encode, prompt_names = sentence_transformers_encoder(directory)
    items = verification_set(prompt_names)
    meta = {
        "checkpoint": name,
        "sha256": weight_hashes(directory),
        "versions": versions("torch", "transformers", "sentence-transformers", "numpy"),
        "created": datetime.date.today().isoformat(),
    }
    return Golden(encode_items(encode, items), items, meta)


@dataclasses.dataclass
class Row:
    attention: str
    dtype: str
    quantization: str | None
    min_cosine: float
    mean_cosine: float
    max_abs_diff: float
    worst: str  # the worst text and width
    bound: float

    @property
    def passed(self) -> bool:
        return self.min_cosine >= self.bound  # NaN fails


def compare(
    ours: np.ndarray, ref: np.ndarray, items: list[Item], dims: tuple[int, ...]
) -> tuple[float, float, float, str]:
    """(min cosine, mean cosine, max |diff|, worst text) over texts and the Matryoshka widths `dims`, both
    sides truncated and re-normalized at each width."""
    worst, cosines, max_diff = (np.inf, ""), [], 0.0
    for dim in dims:
        a, b = ours[:, :dim], ref[:, :dim]
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        cos = (a * b).sum(axis=1)
        cos = np.where(np.isfinite(cos), cos, -np.inf)  # a NaN vector is the worst, never a pass
        cosines.append(cos)
        max_diff = max(max_diff, float(np.abs(a - b).max()))
        i = int(np.argmin(cos))
        if cos[i] < worst[0]:
            worst = (float(cos[i]), f"{items[i].label} at {dim} dims")
    all_cos = np.concatenate(cosines)
    return float(all_cos.min()), float(all_cos.mean()), max_diff, worst[1]


def platform_facts(mesh: Any) -> dict[str, Any]:
    devices = jax.devices()
    facts = {
        "versions": versions(
            "embeddinggemma-jax", "jax", "jaxlib", "libtpu", "libtpu-nightly", "jax-cuda12-plugin", "jax-cuda13-plugin"
        ),
        "platform": jax.default_backend(),
        "devices": f"{len(devices)} x {devices[0].device_kind}",
        "processes": jax.process_count(),
        "mesh": dict(mesh.shape) if mesh is not None else "one device",
    }
    return facts


def _quiet_encoder(model: Any, batch_size: int) -> Any:
    """`model.encode` without its truncation warning (the set's over-long text is cut on purpose): the same
    prefix, tokens and vectors, through `encode_ids`."""

    def encode(texts: list[str], *, prompt_name: str | None, prompt: str | None) -> np.ndarray:
        prefix = model.prompt_prefix(prompt_name, prompt)
        ids, _ = model.tokenizer.encode_counting([prefix + t for t in texts])
        return model.encode_ids(ids, batch_size=batch_size)

    return encode


def run_rows(
    directory: Path,
    items: list[Item],
    ref: np.ndarray,
    *,
    backends: tuple[str, ...],
    dtypes: tuple[str, ...],
    quantization: str | None,
    mesh: str | None,
    batch_size: int,
    peak_tflops: float | None,
    report: Callable[[str], None],
) -> tuple[list[Row], dict[str, Any]]:
    """Encode the set with each (attention, dtype): the rows, and the steady-state throughput of the first."""
    rows, speed = [], {}
    for attention in backends:
        for dtype in dtypes:
            kwargs = {"dtype": dtype, "attention_impl": attention, "quantization": quantization}
            model = EmbeddingGemma.from_pretrained(str(directory), **kwargs, **({"mesh": mesh} if mesh else {}))
            encode = _quiet_encoder(model, batch_size)
            bound = BOUNDS[quantization or dtype]
            measured = compare(encode_items(encode, items), ref, items, model.config.matryoshka_dims)
            rows.append(Row(attention, dtype, quantization, *measured, bound))
            report(format_row(rows[-1]))
            speed = speed or {"attention": attention, "dtype": dtype, **throughput(model, encode, items, peak_tflops)}
    return rows, speed


def throughput(model: Any, encode: Any, items: list[Item], peak_tflops: float | None) -> dict[str, Any]:
    """Tokens/s of encoding the set once more (compiled now), and the FLOP utilization given the chip's peak."""
    start = time.perf_counter()
    encode_items(encode, items)
    seconds = time.perf_counter() - start
    prompted = [(item.prompt or model.prompts.get(item.prompt_name or "", "")) + item.text for item in items]
    lengths = [len(x) for x in model.tokenizer.encode_counting(prompted)[0]]  # the tokens encoded, prompts included
    flops = sum(sum(forward_flops(model.config, n)) for n in lengths)
    kind = jax.devices()[0].device_kind
    peak = peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if kind.startswith(k)), None)
    chips = model.mesh.size if model.mesh is not None else 1
    mfu = flops / seconds / (peak * 1e12 * chips) if peak else None
    return {"tokens_per_s": sum(lengths) / seconds, "mfu": mfu, "peak_tflops": peak}


def format_row(row: Row) -> str:
    quant = f" {row.quantization}" if row.quantization else ""
    verdict = "PASS" if row.passed else f"FAIL (bound {row.bound})"
    return (
        f"{row.attention:<16} {row.dtype + quant:<16} {row.min_cosine:>12.8f} {row.mean_cosine:>12.8f} "
        f"{row.max_abs_diff:>11.3e}  {verdict:<18} {row.worst}"
    )


def verify(
    model: str,
    *,
    reference: str = "golden",
    golden: str | Path = GOLDEN,
    attention: str = "auto",
    dtypes: tuple[str, ...] = ("float32",),
    quantization: str | None = None,
    mesh: str | None = None,
    batch_size: int = 32,
    peak_tflops: float | None = None,
    json_path: str | Path | None = None,
    overwrite: bool = False,
    report: Callable[[str], None] = print,
) -> bool:
    """Encode the verification set with every requested backend (comma-separated, or "all": this platform's)
    and dtype, compare with the reference ("golden": the shipped vectors of the official checkpoint;
    "sentence-transformers": a live SentenceTransformer), `report` the table, optionally write it as JSON
    (an existing file only with `overwrite`); whether every row passed."""
    directory = locate(model)
    inputs = [p for p in directory.rglob("*") if p.is_file()] + [Path(golden)]
    check_outputs({"--json": json_path}, inputs, overwrite=overwrite)
    if reference == "golden":
        stored = Golden.load(Path(golden))
        hashes = weight_hashes(directory)
        if hashes != stored.meta["sha256"]:
            differ = sorted(set(hashes.items()) ^ set(stored.meta["sha256"].items()))
            raise ValueError(
                f"{model} is not the checkpoint the golden vectors ({golden}) were made from, "
                f"{stored.meta['checkpoint']}: its weight files differ ({differ[0][0]}). For a fine-tuned or "
                "converted checkpoint use --reference sentence-transformers"
            )
        items, ref = stored.items, stored.vectors
        described = f"golden vectors of {stored.meta['checkpoint']} ({stored.meta['versions']})"
    else:
        encode, prompt_names = sentence_transformers_encoder(directory)
        items = verification_set(prompt_names)
        ref = encode_items(encode, items)
        described = f"sentence-transformers float32 on CPU ({versions('torch', 'sentence-transformers')})"

    facts = platform_facts(make_mesh(mesh) if mesh else None)
    report(f"platform: {facts['platform']}, {facts['devices']}, mesh {facts['mesh']}, {facts['processes']} process(es)")
    report("versions: " + ", ".join(f"{k} {v}" for k, v in facts["versions"].items()))
    dims = read_config(directory).matryoshka_dims
    report(f"reference: {described}; {len(items)} texts, widths {', '.join(map(str, dims))}")
    report(f"{'attention':<16} {'dtype':<16} {'min cosine':>12} {'mean cosine':>12} {'max |diff|':>11}  {'':<18} worst")
    backends = ALL_BACKENDS.get(jax.default_backend(), ("auto",)) if attention == "all" else tuple(attention.split(","))
    rows, speed = run_rows(
        directory,
        items,
        ref,
        backends=backends,
        dtypes=dtypes,
        quantization=quantization,
        mesh=mesh,
        batch_size=batch_size,
        peak_tflops=peak_tflops,
        report=report,
    )
    if speed:
        mfu = f", MFU {speed['mfu']:.1%} of {speed['peak_tflops']} TFLOP/s" if speed["mfu"] else ""
        report(
            f"throughput ({speed['attention']}, {speed['dtype']}; the set again, compiled): "
            f"{speed['tokens_per_s']:,.0f} tok/s{mfu}"
        )
    passed = all(row.passed for row in rows)
    report("PASS: this machine gives the reference vectors" if passed else "FAIL: see the rows above")
    if json_path:
        result = {
            "passed": passed,
            "model": model,
            "reference": described,
            "platform": facts,
            "rows": [{**dataclasses.asdict(row), "passed": row.passed} for row in rows],
            "throughput": speed,
        }
        write_atomic(json_path, lambda f: f.write(json.dumps(result, indent=2).encode()))
    return passed
