"""The user API, shaped like sentence-transformers: `EmbeddingGemma.from_pretrained(...).encode(...)`,
and `build_encode_step`, the one compiled encode program (also what `embeddinggemma.bench.aot` reports on).

Texts are tokenized, cut into batches of one length bucket and padded by `embeddinggemma.encode.batching`, and
each batch runs through the encode step; one batch stays in flight while the next is prepared.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import DTypeLike
from tqdm.auto import tqdm

from embeddinggemma import checkpoint, sharding
from embeddinggemma.encode import batching, vectors
from embeddinggemma.encode.compilation import compiler_options
from embeddinggemma.encode.precision import Precision, check_precision, quantize_embeddings
from embeddinggemma.encode.prompts import TITLE_PROMPT, resolve_prompt
from embeddinggemma.errors import check_int
from embeddinggemma.model import quantized
from embeddinggemma.model.attention import AttentionImpl
from embeddinggemma.model.config import DTypeName, ModelConfig
from embeddinggemma.model.modeling import EmbeddingGemmaModule
from embeddinggemma.model.tokenizer import Tokenizer, text_error

logger = logging.getLogger(__name__)

PROGRESS_MIN_TEXTS = 512  # a progress bar appears by default from this many texts on

EncodeStep = Callable[[nnx.State, jax.Array, jax.Array], jax.Array]


def build_encode_step(graphdef: nnx.GraphDef, mesh: jax.sharding.Mesh | None, dtype: DTypeLike) -> EncodeStep:
    """`(params, ids, valid) -> embeddings` under jax.jit: parameters and batch keep the shardings they
    arrive with (the batch split over the mesh's batch axes); embeddings come back replicated, so every
    host can read all of them."""
    out = sharding.replicated(mesh) if mesh is not None else None
    platform = (mesh.devices.flat[0] if mesh is not None else jax.devices()[0]).platform
    return jax.jit(
        lambda params, ids, valid: nnx.merge(graphdef, params)(ids, valid),
        out_shardings=out,
        compiler_options=compiler_options(platform, dtype),
    )


class EmbeddingGemma:
    """EmbeddingGemma-300m in JAX. Construct with `from_pretrained`."""

    def __init__(
        self,
        module: EmbeddingGemmaModule,
        tokenizer: Tokenizer,
        *,
        metadata_dir: str | Path,
        mesh: jax.sharding.Mesh | None = None,
    ):
        self.config: ModelConfig = module.config
        self.tokenizer = tokenizer
        self.metadata_dir = Path(metadata_dir)
        self.dtype: DTypeName = jnp.dtype(module.dtype).name
        self.graphdef, self.params = nnx.split(module)
        # {parameter path: "int8" | "int4"} of the weights stored quantized (empty for a float model)
        self.quantized: dict[str, str] = quantized.quantized_paths(self.params)
        self.mesh = mesh
        self._batch_multiple = sharding.batch_size_multiple(mesh) if mesh is not None else 1
        self._compiled_shapes: set[tuple[int, int]] = set()
        self._forward = build_encode_step(self.graphdef, mesh, module.dtype)

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | Path,
        *,
        dtype: DTypeName = "float32",
        attention_impl: AttentionImpl = "auto",
        mesh: str | jax.sharding.Mesh | None = None,
        quantization: quantized.Mode | None = None,
        activations: quantized.Activations | None = None,
        scan_layers: bool = True,
    ) -> EmbeddingGemma:
        """Load an HF / sentence-transformers directory, a native checkpoint, or a Hub id.

        `dtype` is "float32" or "bfloat16" (parameters and compute); float16 is refused because this
        model's activations overflow it. `mesh` (a Mesh or a spec such as "data=8" or "data=2,fsdp=4")
        shards the model: each tensor is read straight onto its "inference" sharding (no replicated
        copy on one device first) and `encode` splits every batch over the data and fsdp axes.

        `quantization` ("int8", "int4" or "mixed"; needs the `quant` extra) stores the weights as integers
        and scales (see `embeddinggemma.model.quantized`), quantized from the float32 checkpoint; the
        scales and the remaining parameters are then in `dtype`. `activations` ("float" or "int8") says
        whether int8 weights multiply int8 activations (w8a8); the default is "int8" on TPU, else "float".
        `scan_layers=False` unrolls the layers in the compiled program (the same vectors; slower to compile).
        """
        quantized.check_mode(quantization)
        mesh = sharding.make_mesh(mesh) if mesh is not None else None
        load_dtype = "float32" if quantization else dtype  # quantize from the checkpoint's float32 values
        ckpt = checkpoint.load(path_or_hub_id, dtype=load_dtype, mesh=mesh, purpose="inference")
        module = EmbeddingGemmaModule.abstract(
            ckpt.config, dtype=dtype, param_dtype=load_dtype, attention_impl=attention_impl, scan_layers=scan_layers
        )
        nnx.update(module, ckpt.params)
        if quantization:
            if activations is None:
                platform = (mesh.devices.flat[0] if mesh is not None else jax.devices()[0]).platform
                activations = "int8" if platform == "tpu" else "float"
            module = quantized.quantize(module, quantization, dtype=dtype, activations=activations, mesh=mesh)
        elif activations not in (None, "float"):
            raise ValueError("activations='int8' needs quantization='int8' or 'mixed'")
        return cls(module, Tokenizer(ckpt.tokenizer_file, ckpt.config), metadata_dir=ckpt.metadata_dir, mesh=mesh)

    @property
    def prompts(self) -> dict[str, str]:
        return self.config.prompt_dict

    # ------------------------------------------------------------------ encoding

    def encode(
        self,
        texts: str | Sequence[str],
        *,
        prompt_name: str | None = None,
        prompt: str | None = None,
        truncate_dim: int | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        precision: Precision = "float32",
    ) -> np.ndarray:
        """Embed text(s): (dim,) for a str, (n, dim) for a list. float32, L2-normalized.

        `prompt_name` picks a prompt from `self.prompts`; `prompt` is a literal prefix. `truncate_dim`
        (any 1..768; the model was trained for 768/512/256/128) keeps the first dims and re-normalizes.
        `precision` ("int8", "uint8", "binary", "ubinary") quantizes the result last, as sentence-transformers'
        `encode(precision=...)`: int8/uint8 take their ranges from all the embeddings of this call (so one
        text alone is an error; use `quantization.quantize_embeddings` with calibration embeddings for
        ranges shared between calls), binary/ubinary pack one bit a dim into (n, ceil(dim / 8)) bytes.
        """
        check_precision(precision)
        single, items = _as_list(texts)
        prefix = self.prompt_prefix(prompt_name, prompt)
        emb = self._embed([prefix + t for t in items], truncate_dim, batch_size, show_progress_bar)
        return _finish(emb, single, precision)

    def encode_query(self, texts: str | Sequence[str], **kwargs: Any) -> np.ndarray:
        """`encode` with the "query" prompt ("task: search result | query: ")."""
        if "prompt" not in kwargs:
            kwargs.setdefault("prompt_name", "query")
        return self.encode(texts, **kwargs)

    def encode_document(
        self, texts: str | Sequence[str], titles: str | Sequence[str | None] | None = None, **kwargs: Any
    ) -> np.ndarray:
        """`encode` with the "document" prompt; with `titles`, each text gets `TITLE_PROMPT` (an untitled
        one "title: none")."""
        if titles is None:
            if "prompt" not in kwargs:
                kwargs.setdefault("prompt_name", "document")
            return self.encode(texts, **kwargs)
        if "prompt" in kwargs or "prompt_name" in kwargs:
            raise ValueError("pass titles or a prompt/prompt_name, not both")
        single, items = _as_list(texts)
        title_single, title_items = _as_list(titles, what="titles", allow_none_items=True)
        if title_single != single or len(title_items) != len(items):
            raise ValueError(f"got {len(items)} texts but {len(title_items)} titles")
        titled = zip(title_items, items, strict=True)
        full = [TITLE_PROMPT.format(title="none" if t is None else t) + x for t, x in titled]
        precision = check_precision(kwargs.pop("precision", "float32"))
        emb = self._embed(
            full, kwargs.pop("truncate_dim", None), kwargs.pop("batch_size", 32), kwargs.pop("show_progress_bar", None)
        )
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}")
        return _finish(emb, single, precision)

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine similarity: (n, m) for 2-D inputs; a 1-D input counts as one row."""
        return vectors.cosine_similarity(a, b)

    def prompt_prefix(
        self, prompt_name: str | None = None, prompt: str | None = None, *, max_length: int | None = None
    ) -> str:
        """The literal prefix `encode` puts before each text (for callers that tokenize themselves, see
        `resolve_prompt`); one that leaves no room for the text within `max_length` tokens (default: the
        model's max_seq_length) is an error."""
        prefix, what = resolve_prompt(self.config, prompt_name, prompt)
        self.tokenizer.check_prompt(prefix, what, max_length)
        return prefix

    def check_dim(self, truncate_dim: int | None) -> int:
        """The output width for `truncate_dim` (None: the full embedding); a clear error when invalid."""
        full = self.config.embedding_dim
        return full if truncate_dim is None else check_int(truncate_dim, "truncate_dim", maximum=full)

    def _embed(
        self, texts: list[str], truncate_dim: int | None, batch_size: int, show_progress_bar: bool | None
    ) -> np.ndarray:
        ids = self.tokenizer.encode(texts) if texts else []
        return self.encode_ids(
            ids, truncate_dim=truncate_dim, batch_size=batch_size, show_progress_bar=show_progress_bar
        )

    def encode_ids(
        self,
        ids: list[list[int]],
        *,
        truncate_dim: int | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        on_batch: Callable[[np.ndarray], None] | None = None,
    ) -> np.ndarray:
        """`encode` for pre-tokenized sequences (with `<bos>` / `<eos>`), e.g. when the caller counts tokens.

        `on_batch`, if given, is called with the indices of each batch once it is embedded (for a caller's
        own progress report).
        """
        dim = self.check_dim(truncate_dim)
        batch_size = check_int(batch_size, "batch_size")
        out = np.zeros((len(ids), self.config.embedding_dim), np.float32)
        if ids:
            show = len(ids) >= PROGRESS_MIN_TEXTS if show_progress_bar is None else show_progress_bar
            with tqdm(total=len(ids), desc="encode", unit="text", disable=not show) as bar:

                def collect(idx: np.ndarray, emb: jax.Array) -> None:
                    out[idx] = self.collect(emb, len(idx))
                    bar.update(len(idx))
                    if on_batch is not None:
                        on_batch(idx)

                # One batch in flight: the next batch is padded, sent and queued while the device still
                # computes this one (dispatch is asynchronous), so the accelerator never waits on the host.
                pending = None
                lengths = [len(x) for x in ids]
                for idx in batching.plan(lengths, batch_size, self.config.max_seq_length, self._batch_multiple):
                    launched = idx, self.dispatch([ids[i] for i in idx])
                    if pending is not None:
                        collect(*pending)
                    pending = launched
                collect(*pending)
        return vectors.truncate(out, dim) if dim < out.shape[1] else out

    @property
    def compiled_shapes(self) -> frozenset[tuple[int, int]]:
        """The (rows, length) batch shapes this model has run so far (each one compiled, or loaded from JAX's
        persistent compilation cache, once)."""
        return frozenset(self._compiled_shapes)

    @property
    def batch_multiple(self) -> int:
        """Batch row counts are a multiple of this: the number of batch shards of the mesh (1 without one)."""
        return self._batch_multiple

    def pad_batch(
        self, ids: list[list[int]], rows: int | None = None, length: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, valid) of one batch: `length` columns (default: the encoder's length bucket of its longest
        sequence) and `rows` rows (default: a power-of-two row count that is a multiple of the mesh's batch
        shards)."""
        length = batching.bucket_length(max(map(len, ids)), self.config.max_seq_length) if length is None else length
        rows = batching.padded_rows(len(ids), self._batch_multiple) if rows is None else rows
        return batching.pad(ids, length=length, rows=rows, pad_id=self.config.pad_id)

    def dispatch(self, ids: list[list[int]], rows: int | None = None, length: int | None = None) -> jax.Array:
        """Pad one batch (to `rows` x `length` if given, see `pad_batch`), place it and start the forward pass;
        returns without waiting for the result (`collect` waits). `encode_ids` and the server's batcher
        keep one batch in flight this way."""
        tokens, valid = self.pad_batch(ids, rows, length)
        if tokens.shape not in self._compiled_shapes:
            logger.debug("compiling encode for batch %d x %d tokens", *tokens.shape)
            self._compiled_shapes.add(tokens.shape)
        if self.mesh is None:
            return self._forward(self.params, tokens, valid)
        # every host holds the same batch and places only its own devices' rows
        split = sharding.batch_sharding(self.mesh)
        tokens, valid = (sharding.from_host(x, split) for x in (tokens, valid))
        with jax.set_mesh(self.mesh):
            return self._forward(self.params, tokens, valid)

    @staticmethod
    def collect(emb: jax.Array, n: int) -> np.ndarray:
        """The first n rows of a dispatched batch on the host (waits for it); refuses NaN/inf."""
        result = np.asarray(jax.device_get(emb))[:n]
        if not np.isfinite(result).all():
            raise FloatingPointError("non-finite embedding produced; this is a bug, please report it")
        return result

    # ------------------------------------------------------------------ saving

    def save_pretrained(self, out_dir: str | Path, *, format: checkpoint.Format = "sentence-transformers") -> Path:
        """Write a sentence-transformers directory (default) or our native orbax checkpoint."""
        if self.quantized:
            raise ValueError(
                "a model loaded with quantization= cannot be saved: save the float model and quantize when "
                "loading it (from_pretrained(..., quantization=...))"
            )
        return checkpoint.save(self.params, self.config, self.metadata_dir, out_dir, format=format)


def _finish(emb: np.ndarray, single: bool, precision: Precision) -> np.ndarray:
    """The embeddings of all texts quantized together (the order of sentence-transformers' encode: normalize,
    truncate, then quantize), and the one row of a single text."""
    if precision != "float32":
        emb = quantize_embeddings(emb, precision)
    return emb[0] if single else emb


def _as_list(texts: Any, *, what: str = "texts", allow_none_items: bool = False) -> tuple[bool, list]:
    """(was a single str, list of items), with errors that name the bad item."""
    single = isinstance(texts, str)
    if single:
        items = [texts]
    elif texts is None or isinstance(texts, bytes | dict) or not isinstance(texts, Sequence | np.ndarray):
        raise TypeError(f"{what} must be a str or a list of str, got {type(texts).__name__}")
    else:
        items = list(texts)
    for i, t in enumerate(items):
        if t is None and allow_none_items:
            continue
        if not isinstance(t, str):
            raise TypeError(f"{what}[{i}] must be a str, got {type(t).__name__}")
        problem = text_error(t)
        if problem:
            raise ValueError(f"{what if single else f'{what}[{i}]'}: {problem}")
    return single, items
