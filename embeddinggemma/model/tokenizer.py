"""SentencePiece tokenization with EmbeddingGemma's framing: <bos> prompt+text <eos>.

Deliberate choices (tested in tests/model/test_tokenizer.py):
- Text is tokenized as given, prompt prepended, no stripping: sentence-transformers 6 no longer strips
  (5.x did), and the installed reference is what we match.
- Literal special-token strings typed in user text ("<bos>", "<eos>", "<start_of_turn>") are plain
  text to SentencePiece; the HF fast tokenizer would turn them into control tokens. Treating user text
  as text means no input can forge a sequence boundary, and it is what the model saw for such strings
  in ordinary documents. This is the only place our ids may differ from the HF tokenizer's.
- Truncation keeps <bos> and <eos> and cuts the text to max_seq_length - 2 pieces, like HF's
  truncation with special tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm

from embeddinggemma.errors import CheckpointError
from embeddinggemma.model.config import ModelConfig

logger = logging.getLogger(__name__)


def text_error(text: object) -> str | None:
    """Why `text` cannot be tokenized (not a string, or not encodable as UTF-8: a lone surrogate, as
    JSON's \\ud800 escapes or Python strings can hold), or None."""
    if not isinstance(text, str):
        return f"expected a string, got {type(text).__name__}"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"not valid Unicode: lone surrogate {text[e.start]!r} at character {e.start}"
    return None


class Tokenizer:
    def __init__(self, model_file: str | Path, cfg: ModelConfig):
        model_file = Path(model_file)
        if not model_file.is_file():
            raise CheckpointError(f"missing tokenizer file {model_file}")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        except (RuntimeError, OSError) as e:
            raise CheckpointError(f"{model_file}: not a SentencePiece model ({e})") from e
        if self.sp.get_piece_size() > cfg.vocab_size:
            raise CheckpointError(
                f"{model_file}: {self.sp.get_piece_size()} pieces but the model has vocab_size {cfg.vocab_size}"
            )
        self.bos_id, self.eos_id, self.pad_id = cfg.bos_id, cfg.eos_id, cfg.pad_id
        self.max_seq_length = cfg.max_seq_length

    def check_prompt(self, prompt: str, what: str, max_length: int | None = None) -> list[int]:
        """The prompt's pieces. A prompt so long that no text fits after it within `max_length` tokens (default:
        max_seq_length) would make every text's vector the same: it is refused, naming `what`."""
        room = min(max_length or self.max_seq_length, self.max_seq_length)
        pieces = self.sp.encode(prompt) if prompt else []
        if len(pieces) >= room - 2:
            raise ValueError(
                f"{what} {prompt[:60]!r}{'...' if len(prompt) > 60 else ''} is {len(pieces)} tokens: with <bos> and "
                f"<eos> it leaves no room for the text in {room} tokens"
            )
        return pieces

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids with <bos>/<eos>, truncated to max_seq_length (one warning saying how many)."""
        ids, truncated = self.encode_counting(texts)
        if truncated:
            logger.warning(
                "%d of %d texts exceed max_seq_length=%d tokens and were truncated",
                truncated,
                len(ids),
                self.max_seq_length,
            )
        return ids

    def encode_counting(self, texts: Sequence[str]) -> tuple[list[list[int]], int]:
        """`encode` without the warning: (ids, how many texts were truncated), for callers that report it."""
        ids, cut = self.frame(self.pieces(texts))
        return ids, sum(cut)

    def pieces(self, texts: Sequence[str]) -> list[list[int]]:
        """The SentencePiece ids of each text, without <bos>/<eos> and uncut."""
        return self.sp.encode(list(texts)) if texts else []

    def frame(
        self, pieces: Sequence[Sequence[int]], max_length: int | None = None
    ) -> tuple[list[list[int]], list[bool]]:
        """<bos> pieces <eos> for each sequence, the pieces cut so that the whole fits max_length (default:
        max_seq_length), and whether each was cut."""
        room = min(max_length or self.max_seq_length, self.max_seq_length) - 2
        return [[self.bos_id, *p[:room], self.eos_id] for p in pieces], [len(p) > room for p in pieces]
