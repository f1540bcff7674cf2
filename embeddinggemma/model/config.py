"""Model configuration: one frozen dataclass read from a sentence-transformers checkpoint directory.

The checkpoint spreads its settings over several files (config.json for the Gemma 3 encoder,
modules.json + 1_Pooling + 2_Dense + 3_Dense for the head, config_sentence_transformers.json for the
prompts). `ModelConfig.from_checkpoint_dir` reads them all and refuses anything this implementation
would otherwise silently compute differently.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, Literal, get_args

from embeddinggemma.errors import CheckpointError, parse_json

logger = logging.getLogger(__name__)

LayerType = Literal["sliding_attention", "full_attention"]
SLIDING: Final = "sliding_attention"
FULL: Final = "full_attention"
DTypeName = Literal["float32", "bfloat16"]
SUPPORTED_DTYPES: tuple[DTypeName, ...] = get_args(DTypeName)

# config_sentence_transformers.json of google/embeddinggemma-300m.
PROMPTS_300M = {
    "query": "task: search result | query: ",
    "document": "title: none | text: ",
    "BitextMining": "task: search result | query: ",
    "Clustering": "task: clustering | query: ",
    "Classification": "task: classification | query: ",
    "InstructionRetrieval": "task: code retrieval | query: ",
    "MultilabelClassification": "task: classification | query: ",
    "PairClassification": "task: sentence similarity | query: ",
    "Reranking": "task: search result | query: ",
    "Retrieval": "task: search result | query: ",
    "Retrieval-query": "task: search result | query: ",
    "Retrieval-document": "title: none | text: ",
    "STS": "task: sentence similarity | query: ",
    "Summarization": "task: summarization | query: ",
}

MATRYOSHKA_300M = (768, 512, 256, 128)  # the model card's Matryoshka widths

# The sentence-transformers module chain of EmbeddingGemma, in order.
ST_MODULE_TYPES = (
    "sentence_transformers.models.Transformer",
    "sentence_transformers.models.Pooling",
    "sentence_transformers.models.Dense",
    "sentence_transformers.models.Dense",
    "sentence_transformers.models.Normalize",
)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of EmbeddingGemma: the Gemma 3 bidirectional encoder plus the sentence head.

    `sliding_window_radius` is the largest |i - j| a sliding layer may attend over: keys within that
    distance on both sides are visible (256 for the released model, i.e. 513 keys per query).
    """

    vocab_size: int = 262144
    hidden_size: int = 768
    intermediate_size: int = 1152
    num_layers: int = 24
    num_heads: int = 3
    num_kv_heads: int = 1
    head_dim: int = 256
    query_pre_attn_scalar: float = 256.0
    rms_norm_eps: float = 1e-6
    rope_theta_global: float = 1_000_000.0
    rope_theta_local: float = 10_000.0
    sliding_window_radius: int = 256
    layer_types: tuple[LayerType, ...] = tuple(SLIDING if (i + 1) % 6 else FULL for i in range(24))
    max_position_embeddings: int = 2048
    # The sentence head: Dense widths after pooling (no bias, identity activation), then L2 norm.
    dense_features: tuple[int, ...] = (3072, 768)
    max_seq_length: int = 2048
    pad_id: int = 0
    bos_id: int = 2
    eos_id: int = 1
    prompts: tuple[tuple[str, str], ...] = ()
    default_prompt_name: str | None = None
    # The widths the model was trained to be truncated to (Matryoshka), widest first; () means the released
    # model's 768, 512, 256 and 128 that fit within embedding_dim (else embedding_dim alone).
    matryoshka_dims: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.matryoshka_dims:
            dims = tuple(d for d in MATRYOSHKA_300M if d <= self.embedding_dim) or (self.embedding_dim,)
            object.__setattr__(self, "matryoshka_dims", dims)
        if len(set(self.matryoshka_dims)) != len(self.matryoshka_dims) or not all(
            1 <= d <= self.embedding_dim for d in self.matryoshka_dims
        ):
            raise CheckpointError(
                f"matryoshka_dims {list(self.matryoshka_dims)} must be distinct widths in 1..{self.embedding_dim}"
            )
        if len(self.layer_types) != self.num_layers:
            raise CheckpointError(
                f"layer_types has {len(self.layer_types)} entries but num_hidden_layers is {self.num_layers}"
            )
        unknown = sorted(set(self.layer_types) - {SLIDING, FULL})
        if unknown:
            raise CheckpointError(f"unsupported layer_types {unknown}; expected {SLIDING!r} or {FULL!r}")
        if self.num_heads % self.num_kv_heads:
            raise CheckpointError(
                f"num_attention_heads ({self.num_heads}) is not a multiple of num_key_value_heads ({self.num_kv_heads})"
            )
        if self.max_seq_length > self.max_position_embeddings:
            raise CheckpointError(
                f"max_seq_length {self.max_seq_length} exceeds max_position_embeddings {self.max_position_embeddings}"
            )

    @property
    def embedding_dim(self) -> int:
        """Width of the final sentence embedding (the last Dense layer)."""
        return self.dense_features[-1]

    @property
    def prompt_dict(self) -> dict[str, str]:
        return dict(self.prompts)

    @property
    def num_global_layers(self) -> int:
        return self.layer_types.count(FULL)

    # The layers' parameters are stacked, one stack per layer type (`stack_types`): layer i is row
    # `stack_position(i)[1]` of the stack of its type. `layer_pattern` is how a scan walks them.

    @property
    def stack_types(self) -> tuple[LayerType, ...]:
        """The layer types in order of first appearance: one parameter stack each."""
        return tuple(dict.fromkeys(self.layer_types))

    def stack_position(self, layer: int) -> tuple[LayerType, int]:
        """(layer type, row in that type's stack) of layer `layer`."""
        kind = self.layer_types[layer]
        return kind, self.layer_types[:layer].count(kind)

    def stack_layer(self, kind: LayerType, row: int) -> int:
        """The layer index of row `row` of the `kind` stack (the inverse of `stack_position`)."""
        return [i for i, t in enumerate(self.layer_types) if t == kind][row]

    @property
    def layer_pattern(self) -> tuple[tuple[tuple[LayerType, int], ...], int]:
        """(period, repeats): the shortest prefix of layer_types whose repetition is all of it, as runs of one
        type, and how often it repeats. The 300m: (((sliding, 5), (full, 1)), 4)."""
        n = len(self.layer_types)
        p = next(p for p in range(1, n + 1) if n % p == 0 and self.layer_types == self.layer_types[:p] * (n // p))
        runs = [(kind, len(list(group))) for kind, group in itertools.groupby(self.layer_types[:p])]
        return tuple(runs), n // p

    @property
    def layers_loop(self) -> bool:
        """Whether the scanned layers are a loop (a pattern that repeats, or a run of two or more blocks)."""
        runs, repeats = self.layer_pattern
        return repeats > 1 or any(n > 1 for _, n in runs)

    @classmethod
    def embeddinggemma_300m(cls) -> ModelConfig:
        """google/embeddinggemma-300m (the dataclass defaults) with its prompts; tests check it against the
        real checkpoint's files."""
        return cls(prompts=tuple(PROMPTS_300M.items()))

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: Path | None = None) -> ModelConfig:
        """From `to_dict`'s form (a native checkpoint's config, read from `source`), numbers checked by type."""
        d = dict(d)
        for key in ("layer_types", "dense_features", "matryoshka_dims"):
            if key in d:
                d[key] = tuple(d[key])
        if "prompts" in d:
            prompts = d["prompts"]
            d["prompts"] = tuple(prompts.items()) if isinstance(prompts, dict) else tuple(map(tuple, prompts))
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise CheckpointError(f"unknown ModelConfig fields {unknown}")
        hints = typing.get_type_hints(cls)
        for key, value in d.items():
            if hints[key] in (int, float):
                _number(source, key, value, hints[key])
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layer_types"] = list(self.layer_types)
        d["dense_features"] = list(self.dense_features)
        d["matryoshka_dims"] = list(self.matryoshka_dims)
        d["prompts"] = dict(self.prompts)
        return d

    @classmethod
    def from_checkpoint_dir(cls, path: str | Path) -> ModelConfig:
        """Read a sentence-transformers EmbeddingGemma directory (the google/embeddinggemma-300m layout)."""
        root = Path(path)
        hf = _read_json(root / "config.json")
        modules_file = root / "modules.json"
        modules = _read_json(modules_file, list)
        with reading(modules_file):
            _check_modules(root, modules)
            sub_dirs = [str(m["path"]) for m in modules]
        pooling_file = root / sub_dirs[1] / "config.json"
        with reading(pooling_file):
            _check_pooling(pooling_file, _read_json(pooling_file))
        with reading(root / "config.json"):
            encoder = _encoder_fields(root / "config.json", hf)
        dense_features = []
        in_features = encoder["hidden_size"]
        for sub in sub_dirs[2:4]:
            file = root / sub / "config.json"
            dense = _read_json(file)
            with reading(file):
                _check_dense(file, dense, in_features)
                in_features = _number(file, "out_features", dense.get("out_features"), int)
                dense_features.append(in_features)
        st_file = root / "sentence_bert_config.json"
        st = _read_json(st_file) if st_file.exists() else {}
        if st.get("do_lower_case"):
            raise CheckpointError(f"{st_file}: do_lower_case=true is not supported")
        with reading(st_file):
            max_seq_length = st.get("max_seq_length") or encoder["max_position_embeddings"]
            max_seq_length = _number(st_file, "max_seq_length", max_seq_length, int)
        cst_file = root / "config_sentence_transformers.json"
        cst = _read_json(cst_file) if cst_file.exists() else {}
        with reading(cst_file):
            prompts = tuple((cst.get("prompts") or {}).items())
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in prompts):
                raise TypeError("prompts must map names to strings")
            default_prompt_name = cst.get("default_prompt_name")
            if default_prompt_name is not None and not isinstance(default_prompt_name, str):
                raise TypeError(f"default_prompt_name must be a string or null, got {default_prompt_name!r}")
        return cls(
            **encoder,
            dense_features=tuple(dense_features),
            max_seq_length=max_seq_length,
            prompts=prompts,
            default_prompt_name=default_prompt_name,
        )


def _read_json(path: Path, kind: type = dict) -> Any:
    """A JSON file's content, which must be a `kind` (an object, or modules.json's list)."""
    if not path.is_file():
        raise CheckpointError(f"missing file {path}")
    content = parse_json(path.read_bytes(), str(path), error=CheckpointError)
    if not isinstance(content, kind):
        raise CheckpointError(f"{path}: expected a JSON {'object' if kind is dict else 'list'}, got {content!r:.60}")
    return content


@contextlib.contextmanager
def reading(file: Path) -> Iterator[None]:
    """A value of the wrong type or a missing key while interpreting `file` (corrupt or hand-edited) is a
    CheckpointError naming it, not a KeyError or TypeError from deep inside the parsing."""
    try:
        yield
    except CheckpointError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{file}: unexpected content ({type(e).__name__}: {e})") from e


def _encoder_fields(file: Path, hf: dict[str, Any]) -> dict[str, Any]:
    """Translate HF Gemma3TextConfig keys, rejecting settings that change the math we implement."""

    def need(key: str) -> Any:
        if key not in hf:
            raise CheckpointError(f"{file}: missing key {key!r}")
        return hf[key]

    def setting(key: str, kind: type[int] | type[float], default: float | None = None) -> Any:
        """An integer or number; a missing or null one is `default`, or an error without one."""
        value = hf.get(key)
        if value is None:
            value = need(key) if default is None else default
        return _number(file, key, value, kind)

    if hf.get("model_type") not in ("gemma3_text", "gemma3"):
        raise CheckpointError(f"{file}: model_type {hf.get('model_type')!r} is not 'gemma3_text'")
    if not hf.get("use_bidirectional_attention", False):
        raise CheckpointError(
            f"{file}: use_bidirectional_attention must be true (EmbeddingGemma is a bidirectional encoder)"
        )
    # final_logit_softcapping only acts on LM logits, which an encoder never computes.
    for key in ("attn_logit_softcapping", "rope_scaling"):
        if hf.get(key) is not None:
            raise CheckpointError(f"{file}: {key}={hf[key]!r} is not supported (expected null)")
    if hf.get("attention_bias", False):
        raise CheckpointError(f"{file}: attention_bias=true is not supported")
    act = hf.get("hidden_activation", "gelu_pytorch_tanh")
    if act != "gelu_pytorch_tanh":
        raise CheckpointError(f"{file}: hidden_activation {act!r} is not supported (gelu_pytorch_tanh)")

    # Rope: transformers <5 writes rope_theta / rope_local_base_freq; 5.x writes rope_parameters per
    # layer type. Anything but default rope would need scaling we do not implement.
    rope = hf.get("rope_parameters") or {}
    for layer_type, params in rope.items():
        if params and params.get("rope_type", "default") != "default":
            raise CheckpointError(f"{file}: rope_type {params['rope_type']!r} for {layer_type} not supported")
    theta_global = (rope.get(FULL) or {}).get("rope_theta", hf.get("rope_theta", 1_000_000.0))
    theta_local = (rope.get(SLIDING) or {}).get("rope_theta", hf.get("rope_local_base_freq", 10_000.0))

    # transformers turns the stored window W into an exclusive bound W // 2 + 1 when attention is
    # bidirectional (|i-j| < W//2+1), i.e. a radius of W // 2. We follow transformers exactly, so a
    # file that already holds a converted (odd) value is read the way transformers reads it.
    window = setting("sliding_window", int)
    if window % 2:
        logger.warning(
            "%s: sliding_window=%d is odd, which suggests it was saved already converted; transformers "
            "halves it again (radius %d) and so do we, to stay identical to the reference.",
            file,
            window,
            window // 2,
        )
    num_layers = setting("num_hidden_layers", int)
    pattern = setting("sliding_window_pattern", int, hf.get("_sliding_window_pattern", 6))
    layer_types = hf.get("layer_types") or [SLIDING if (i + 1) % pattern else FULL for i in range(num_layers)]
    num_heads = setting("num_attention_heads", int)
    hidden = setting("hidden_size", int)
    return dict(
        vocab_size=setting("vocab_size", int),
        hidden_size=hidden,
        intermediate_size=setting("intermediate_size", int),
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=setting("num_key_value_heads", int, num_heads),
        head_dim=setting("head_dim", int, hidden // num_heads),
        query_pre_attn_scalar=setting("query_pre_attn_scalar", float),
        rms_norm_eps=setting("rms_norm_eps", float, 1e-6),
        rope_theta_global=_number(file, "rope_theta", theta_global, float),
        rope_theta_local=_number(file, "rope_theta", theta_local, float),
        sliding_window_radius=window // 2,
        layer_types=tuple(layer_types),
        max_position_embeddings=setting("max_position_embeddings", int),
        pad_id=setting("pad_token_id", int, 0),
        bos_id=setting("bos_token_id", int, 2),
        eos_id=_number(file, "eos_token_id", _first(hf.get("eos_token_id", 1)), int),
    )


def _number(file: Path | None, key: str, value: Any, kind: type[int] | type[float]) -> Any:
    """A numeric setting as JSON typed it, named with its value and type when it is not one: int() and float()
    would take a string "48" (int() even 48.7 or true), and a "48" compared with the 48 it should equal read
    'in_features 48 != previous width 48'."""
    ok = isinstance(value, int) if kind is int else isinstance(value, int | float)
    if isinstance(value, bool) or not ok:
        what = "an integer" if kind is int else "a number"
        where = f"{file}: " if file else ""
        raise CheckpointError(f"{where}{key} must be {what}, got {value!r} ({type(value).__name__})")
    return kind(value)


def _first(x: Any) -> Any:
    return x[0] if isinstance(x, list) else x


def _check_modules(root: Path, modules: list[dict[str, Any]]) -> None:
    types = tuple(m.get("type") if isinstance(m, dict) else m for m in modules)
    if types != ST_MODULE_TYPES:
        raise CheckpointError(
            f"{root / 'modules.json'}: expected the module chain {list(ST_MODULE_TYPES)}, found {list(types)}"
        )


def _check_pooling(file: Path, pooling: dict[str, Any]) -> None:
    enabled = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v is True)
    if enabled != ["pooling_mode_mean_tokens"]:
        raise CheckpointError(f"{file}: only mean pooling is supported, found enabled modes {enabled}")
    if not pooling.get("include_prompt", True):
        raise CheckpointError(f"{file}: include_prompt=false is not supported")


def _check_dense(file: Path, dense: dict[str, Any], in_features: Any) -> None:
    if dense.get("bias", True):
        raise CheckpointError(f"{file}: Dense with bias is not supported")
    act = dense.get("activation_function", "")
    if not act.endswith("Identity"):
        raise CheckpointError(f"{file}: activation_function {act!r} is not supported (Identity)")
    if _number(file, "in_features", dense.get("in_features"), int) != in_features:
        raise CheckpointError(f"{file}: in_features {dense['in_features']} != previous width {in_features}")


def check_dtype(dtype: Any) -> DTypeName:
    """The dtype's name if we support it. float16 is refused: this model's activations reach ~1e5-1e6,
    beyond float16's range (~6.5e4)."""
    name = str(getattr(dtype, "name", dtype))
    if name in ("float16", "half"):
        raise ValueError(
            "float16 is not supported: EmbeddingGemma activations exceed float16's range (~6.5e4) and "
            "overflow to inf; use dtype='bfloat16' or 'float32'"
        )
    if name not in SUPPORTED_DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of {SUPPORTED_DTYPES}")
    return name
