"""Token ids against the Hugging Face tokenizer that sentence-transformers uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from embeddinggemma import ModelConfig
from embeddinggemma.eval.texts import SHORT, long_text
from embeddinggemma.model.tokenizer import Tokenizer

# "<start_of_turn>" is a user-defined piece: one token in both tokenizers.
ORDINARY = [
    *SHORT,
    long_text(80, seed=3),
    "x" * 50,
    "   ",
    "\n",
    "🧑‍🚀 astronaut",
    "naïve café — “quotes”",
    "<start_of_turn>user\nhi<end_of_turn>",
]
# Control-token strings: plain text to SentencePiece, control tokens to the HF fast tokenizer.
SPECIAL_STRINGS = ["<bos>literal", "a <eos> b", "<pad>"]


def _pair(root: Path) -> tuple[Tokenizer, object]:
    from transformers import AutoTokenizer

    cfg = ModelConfig.from_checkpoint_dir(root)
    return Tokenizer(root / "tokenizer.model", cfg), AutoTokenizer.from_pretrained(str(root))


def _check_ordinary_text(root: Path) -> None:
    ours, hf = _pair(root)
    for text in ORDINARY:
        ref = hf(text, truncation=True, max_length=ours.max_seq_length)["input_ids"]
        assert ours.encode([text])[0] == ref, repr(text)


def _check_special_strings_are_text(root: Path) -> None:
    ours, hf = _pair(root)
    specials = {ours.bos_id, ours.eos_id, ours.pad_id}
    for text in SPECIAL_STRINGS:
        ids = ours.encode([text])[0]
        assert not specials & set(ids[1:-1]), f"{text!r} produced a control token: {ids}"
        assert ours.sp.decode(ids[1:-1]) == text
        # The HF fast tokenizer maps the literal to a control token: the documented difference.
        assert ids != hf(text)["input_ids"], text


def test_tiny_ordinary_text_matches_hf(tiny_dir: Path):
    _check_ordinary_text(tiny_dir)


def test_tiny_special_strings_are_plain_text(tiny_dir: Path):
    _check_special_strings_are_text(tiny_dir)


def test_empty_string_is_bos_eos(tiny_dir: Path):
    ours, _ = _pair(tiny_dir)
    assert ours.encode([""]) == [[ours.bos_id, ours.eos_id]]


@pytest.mark.reference
def test_real_ordinary_text_matches_hf(reference_dir: Path):
    _check_ordinary_text(reference_dir)


@pytest.mark.reference
def test_real_special_strings_are_plain_text(reference_dir: Path):
    _check_special_strings_are_text(reference_dir)


@pytest.mark.reference
def test_real_truncation_matches_hf(reference_dir: Path):
    ours, hf = _pair(reference_dir)
    text = long_text(3000, seed=7)
    ids = ours.encode([text])[0]
    assert len(ids) == 2048
    assert ids == hf(text, truncation=True, max_length=2048)["input_ids"]
