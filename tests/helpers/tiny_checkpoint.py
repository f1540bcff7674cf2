"""Build a tiny, random EmbeddingGemma-shaped sentence-transformers checkpoint.

The real google/embeddinggemma-300m is 1.2 GB and gated, so tests use this stand-in instead: it has the same
directory layout, file set, config schema, safetensors key names and tokenizer behaviour (Gemma's sentencepiece
settings, special-token ids, user-defined whitespace pieces), but only ~0.2M parameters. Weights are random and
deliberately far from the default init (RMSNorm scales, embeddings and projections are all large) so a parity test
against the PyTorch reference notices a bug in any single component.
"""

from __future__ import annotations

import io
import json
import pathlib
import random
import shutil
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import sentencepiece as spm
import torch
import transformers
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Dense, Normalize, Transformer
from sentence_transformers.sentence_transformer.modules import Pooling
from sentencepiece import sentencepiece_model_pb2
from tokenizers import AddedToken
from transformers import Gemma3TextConfig, Gemma3TextModel, GemmaTokenizer
from transformers.tokenization_utils_base import generate_merges

from embeddinggemma.model.config import PROMPTS_300M

VOCAB_SIZE = 1536
# 64 would be the obvious choice, but transformers 5 rejects a hidden size that is not a multiple of the head
# count (3, as in the real model); 48 also keeps heads * head_dim (96) != hidden_size, which the real model hides.
HIDDEN_SIZE = 48
DENSE_SIZE = 256
MAX_POSITION_EMBEDDINGS = 512

# Same prompts as the real config_sentence_transformers.json, so prompt handling is exercised identically.
PROMPTS = PROMPTS_300M

# A scaled-down copy of Gemma's user-defined pieces (ids 4.. in the real vocab): a few placeholders, the chat
# markers, newline runs and "▁" (space) runs up to length 31, and some HTML tags. SentencePiece always emits them
# whole, which is what makes whitespace runs tokenize the way they do in Gemma.
USER_DEFINED_SYMBOLS = [
    "<mask>",
    "[multimodal]",
    *(f"<unused{i}>" for i in range(8)),
    "<start_of_turn>",
    "<end_of_turn>",
    *("\n" * n for n in range(1, 32)),
    *("▁" * n for n in range(2, 32)),
    *("<table>", "<tr>", "<td>", "</td>", "</tr>", "</table>", "<b>", "</b>", "<code>", "</code>"),
]
# Marked special in the HF tokenizer, as in the real tokenizer.json.
SPECIAL_USER_DEFINED = {"<start_of_turn>", "<end_of_turn>"}
# sentencepiece ModelProto.SentencePiece.Type values.
CONTROL = 3
USER_DEFINED = 4

_WORDS = {
    "en": "the quick brown fox jumps over lazy dog machine learning models turn text into vectors which planet is "
    "known as red because of its reddish color search results should be ranked by relevance she sells sea shells "
    "shore embedding sentence query document retrieval similarity cluster classify summary title none task Mars "
    "Venus Earth Paris Berlin Tokyo Google Gemma JAX I The What Why How",
    "de": "grüße aus münchen die straße ist sehr schön das wetter heute außergewöhnlich gut können sie mir bitte "
    "helfen übermäßig größer fußball mädchen",
    "fr": "ça va très bien merci beaucoup l'élève a oublié son cahier à école où est la bibliothèque plus proche "
    "garçon français noël hôtel",
    "ru": "привет мир как дела москва столица россии машинное обучение превращает текст в векторы",
    "ar": "مرحبا بالعالم اللغة العربية جميلة جدا أين المكتبة",
}
_CJK = [
    "你好，世界！这是一个测试。",
    "机器学习模型把文本变成向量。",
    "今天天气很好，我们去公园吧。",
    "日本語のテキストです。カタカナとひらがな。",
    "東京は日本の首都です。",
    "今日はいい天気ですね。",
]
_CODE = [
    "def f(x):\n    return x ** 2  # square\n",
    "for (int i = 0; i < 10; ++i) {\n\tsum += a[i];\n}",
    "import numpy as np\n\nprint(np.arange(10).sum())",
    "SELECT id, name FROM users WHERE age >= 18;",
    "const add = (a, b) => a + b;",
    '<div class="row"><span>hi</span></div>',
    "<table><tr><td>1</td></tr></table> <b>bold</b> <code>x</code>",
    "<start_of_turn>user\nhello<end_of_turn>\n<start_of_turn>model\n",
]
_EMOJI = ["😀", "👍", "🎉", "❤️", "🚀", "😍", "🔥", "👍🏽", "🇩🇪", "🇫🇷", "👨‍👩‍👧"]
_SEPARATORS = [" ", " ", " ", "  ", "    ", "\t", "\n", "\n\n", " \t ", "\r\n", "   \n"]


def _corpus(rng: random.Random, n_lines: int = 4000) -> Iterator[str]:
    """Yield a small mixed corpus that covers every script and whitespace pattern the tests use."""
    words = {lang: text.split() for lang, text in _WORDS.items()}
    for _ in range(n_lines):
        parts = []
        for _ in range(rng.randint(1, 4)):
            kind = rng.random()
            if kind < 0.5:
                lang = rng.choice(list(words))
                sentence = " ".join(rng.choices(words[lang], k=rng.randint(3, 12)))
                parts.append(sentence[0].upper() + sentence[1:] + rng.choice(".!?,:;"))
            elif kind < 0.65:
                parts.append(rng.choice(_CJK))
            elif kind < 0.75:
                parts.append(rng.choice(_CODE))
            elif kind < 0.85:
                parts.append(" ".join(rng.choices(_EMOJI, k=rng.randint(1, 4))))
            else:
                parts.append(f"{rng.uniform(-1e4, 1e4):,.{rng.randint(0, 4)}f} {rng.randint(0, 10**9)}")
        yield "".join(part + rng.choice(_SEPARATORS) for part in parts)


def train_sentencepiece() -> bytes:
    """Train a tiny BPE sentencepiece model with Gemma 3's trainer and normalizer settings.

    The settings mirror the non-default fields of the real tokenizer.model (BPE, byte fallback, digits split,
    scripts split, no whitespace splitting, whitespace-only pieces allowed, identity normalization without dummy
    prefix or whitespace collapsing), its special-token ids (<pad>=0, <eos>=1, <bos>=2, <unk>=3) and its kinds of
    user-defined pieces. The corpus is fixed, so the tokenizer is identical on every build.
    """
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=_corpus(random.Random(0)),
        model_writer=model,
        model_type="bpe",
        vocab_size=VOCAB_SIZE,
        # Defaults, spelled out because the real model relies on them: rare characters (coverage) fall back to
        # bytes, and whitespace attaches to the start of the following piece.
        character_coverage=0.9995,
        treat_whitespace_as_suffix=False,
        split_by_unicode_script=True,
        split_by_whitespace=False,
        split_by_number=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        byte_fallback=True,
        user_defined_symbols=USER_DEFINED_SYMBOLS,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def build_hf_tokenizer(sp_model: bytes, model_max_length: int) -> GemmaTokenizer:
    """Convert the sentencepiece model to a GemmaTokenizer laid out like the real tokenizer.json.

    This repeats what the transformers 4 GemmaConverter did for the real checkpoint: BPE merges ranked by piece
    score, and every control/user-defined piece registered as an unnormalized added token. Ranking by score matters:
    user-defined pieces score 0, so a run of spaces merges greedily into the longest "▁" piece as in sentencepiece.
    Loading a bare tokenizer.model with transformers 5 ranks merges by piece id instead and splits e.g. 40 spaces
    into 16 + 24 rather than sentencepiece's 31 + 9.
    """
    proto = sentencepiece_model_pb2.ModelProto.FromString(sp_model)
    vocab = {piece.piece: i for i, piece in enumerate(proto.pieces)}
    scores = {piece.piece: piece.score for piece in proto.pieces}
    tokenizer = GemmaTokenizer(
        vocab=vocab,
        merges=generate_merges(vocab, scores),
        add_bos_token=True,
        add_eos_token=True,
        padding_side="right",
        model_max_length=model_max_length,
    )
    tokenizer.add_tokens(
        [
            AddedToken(
                piece.piece, normalized=False, special=piece.type == CONTROL or piece.piece in SPECIAL_USER_DEFINED
            )
            for piece in proto.pieces
            if piece.type in (CONTROL, USER_DEFINED)
        ]
    )
    return tokenizer


def gemma_config(vocab_size: int) -> dict[str, Any]:
    """Return config.json for the tiny model in the real checkpoint's (transformers 4.57) schema.

    transformers 5 would write ``rope_parameters`` instead of ``rope_theta``/``rope_local_base_freq``; keeping the
    real key set means code that parses the real config.json is tested by the tiny one. Both layer types occur, and
    ``sliding_window`` is the on-disk value: transformers 5 turns it into ``16 // 2 + 1 == 9`` when
    ``use_bidirectional_attention`` is set (tokens attend within a distance of 8 on sliding layers).
    """
    return {
        "_sliding_window_pattern": 2,
        "architectures": ["Gemma3TextModel"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_logit_softcapping": None,
        "bos_token_id": 2,
        "dtype": "float32",
        "eos_token_id": 1,
        "final_logit_softcapping": None,
        "head_dim": 32,
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": HIDDEN_SIZE,
        "initializer_range": 0.02,
        "intermediate_size": 96,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
        "model_type": "gemma3_text",
        "num_attention_heads": 3,
        "num_hidden_layers": 4,
        "num_key_value_heads": 1,
        "pad_token_id": 0,
        "query_pre_attn_scalar": 32,
        "rms_norm_eps": 1e-06,
        "rope_local_base_freq": 10000.0,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": 16,
        "transformers_version": transformers.__version__,
        "use_bidirectional_attention": True,
        "use_cache": True,
        "vocab_size": vocab_size,
    }


def build_hf_model(config: dict[str, Any], seed: int) -> Gemma3TextModel:
    """Create a randomly initialised Gemma3TextModel whose every component visibly affects the output.

    The default init leaves RMSNorm scales at 0 (so ``1 + w`` is 1), embeddings tiny and MLP pre-activations in
    GELU's near-linear range; then e.g. a missing ``1 +``, a wrong GELU variant or a dropped embedding scale would
    hardly change the output. Instead norms get N(0, 0.3) and every matrix N(0, 1/fan_in), so activations are O(1).
    The <pad> embedding row is random too, so padding that leaks into attention or pooling shows up.
    """
    torch.manual_seed(seed)
    model = Gemma3TextModel(Gemma3TextConfig.from_dict(config)).float().eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.normal_(0.0, 0.3)
            elif name == "embed_tokens.weight":
                # Gemma scales embeddings by sqrt(hidden_size); this makes the scaled rows unit-RMS.
                param.normal_(0.0, HIDDEN_SIZE**-0.5)
            else:
                param.normal_(0.0, param.shape[1] ** -0.5)
    return model


def _write_json(path: pathlib.Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _rewrite_metadata(out_dir: pathlib.Path, config: dict[str, Any], max_seq_length: int) -> None:
    """Replace the sentence-transformers 6 / transformers 5 metadata with the real checkpoint's older schema.

    The real model was saved by sentence-transformers 5.1: ``sentence_transformers.models.*`` module types, legacy
    pooling/dense keys, ``max_seq_length`` in sentence_bert_config.json and no 4_Normalize folder. Current
    sentence-transformers still loads that schema, so one loader can be tested against both checkpoints.
    """
    _write_json(out_dir / "config.json", config)
    modules = [
        ("", "Transformer"),
        ("1_Pooling", "Pooling"),
        ("2_Dense", "Dense"),
        ("3_Dense", "Dense"),
        ("4_Normalize", "Normalize"),
    ]
    _write_json(
        out_dir / "modules.json",
        [
            {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
            for i, (path, kind) in enumerate(modules)
        ],
    )
    shutil.rmtree(out_dir / "4_Normalize")
    _write_json(out_dir / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False})
    _write_json(
        out_dir / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": HIDDEN_SIZE,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        },
    )
    for folder, in_features, out_features in (
        ("2_Dense", HIDDEN_SIZE, DENSE_SIZE),
        ("3_Dense", DENSE_SIZE, HIDDEN_SIZE),
    ):
        _write_json(
            out_dir / folder / "config.json",
            {
                "in_features": in_features,
                "out_features": out_features,
                "bias": False,
                "activation_function": "torch.nn.modules.linear.Identity",
            },
        )
    tokenizer_config = json.loads((out_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    for key in ("is_local", "local_files_only"):  # artefacts of loading from a local folder
        tokenizer_config.pop(key, None)
    _write_json(out_dir / "tokenizer_config.json", {**tokenizer_config, "add_bos_token": True, "add_eos_token": True})


def build_tiny_checkpoint(out_dir: pathlib.Path, *, seed: int = 0, max_seq_length: int = 256) -> pathlib.Path:
    """Write the tiny checkpoint to ``out_dir`` (created if needed) and return ``out_dir``.

    ``seed`` only changes the weights; the tokenizer is trained on a fixed corpus and is the same for every seed.
    """
    if not 0 < max_seq_length <= MAX_POSITION_EMBEDDINGS:
        raise ValueError(f"max_seq_length must be in (0, {MAX_POSITION_EMBEDDINGS}], got {max_seq_length}")
    out_dir = pathlib.Path(out_dir)
    sp_model = train_sentencepiece()
    tokenizer = build_hf_tokenizer(sp_model, model_max_length=max_seq_length)
    config = gemma_config(len(tokenizer))
    hf_model = build_hf_model(config, seed)
    with tempfile.TemporaryDirectory() as hf_dir:
        hf_model.save_pretrained(hf_dir)
        tokenizer.save_pretrained(hf_dir)
        transformer = Transformer(hf_dir, max_seq_length=max_seq_length)
    model = SentenceTransformer(
        modules=[
            transformer,
            Pooling(HIDDEN_SIZE, pooling_mode="mean", include_prompt=True),
            Dense(HIDDEN_SIZE, DENSE_SIZE, bias=False, activation_function=torch.nn.Identity()),
            Dense(DENSE_SIZE, HIDDEN_SIZE, bias=False, activation_function=torch.nn.Identity()),
            Normalize(),
        ],
        prompts=PROMPTS,
        similarity_fn_name="cosine",
        device="cpu",
    )
    model.save(str(out_dir))
    (out_dir / "tokenizer.model").write_bytes(sp_model)
    _rewrite_metadata(out_dir, config, max_seq_length)
    return out_dir


if __name__ == "__main__":
    print(build_tiny_checkpoint(pathlib.Path(sys.argv[1])))
