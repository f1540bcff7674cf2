"""Prompts, in one place: the named prompts of a checkpoint (config_sentence_transformers.json) and the
query / document / title prompts of retrieval, which encoding, training, evaluation and the server share.

A prompt is a literal prefix of the text. `resolve_prompt` turns the (prompt_name, prompt) pair of the
sentence-transformers API into that prefix; `Prompts` holds what a retrieval task puts before queries,
untitled documents and titled ones ("title: {title} | text: ", as the model card prescribes).
"""

from __future__ import annotations

import dataclasses

from embeddinggemma.model.config import ModelConfig
from embeddinggemma.model.tokenizer import text_error

TITLE_PROMPT = "title: {title} | text: "  # the model card's document prompt with a real title


def resolve_prompt(cfg: ModelConfig, prompt_name: str | None = None, prompt: str | None = None) -> tuple[str, str]:
    """(prefix, what to call it in an error) for sentence-transformers' `encode(prompt_name=, prompt=)`: a
    literal `prompt`, the model's prompt `prompt_name`, or else its default prompt (none for EmbeddingGemma)."""
    if prompt is not None and prompt_name is not None:
        raise ValueError("pass either prompt_name or prompt, not both")
    if prompt is not None:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        if problem := text_error(prompt):  # sentencepiece raises RuntimeError on it
            raise ValueError(f"prompt: {problem}")
        return prompt, "prompt"
    if prompt_name is not None and not isinstance(prompt_name, str):
        raise TypeError(f"prompt_name must be a str, got {type(prompt_name).__name__}")
    name = prompt_name if prompt_name is not None else cfg.default_prompt_name
    if name is None:
        return "", "prompt"
    prompts = cfg.prompt_dict
    if name not in prompts:
        raise ValueError(f"unknown prompt_name {name!r}; available: {sorted(prompts)}")
    return prompts[name], f"prompt {name!r}"


@dataclasses.dataclass(frozen=True)
class Prompts:
    """What retrieval puts before queries, untitled documents and titled ones (`title` formats {title})."""

    query: str
    document: str
    title: str = TITLE_PROMPT

    @classmethod
    def for_model(
        cls, cfg: ModelConfig, query: str | None = None, document: str | None = None, title: str = TITLE_PROMPT
    ) -> Prompts:
        """Explicit prompts, else the model's "query" / "document" prompts (empty where it has none)."""
        prompts = cfg.prompt_dict
        return cls(
            query if query is not None else prompts.get("query", ""),
            document if document is not None else prompts.get("document", ""),
            title,
        )

    def format_query(self, text: str) -> str:
        return self.query + text

    def format_document(self, text: str, title: str | None = None) -> str:
        return (self.title.format(title=title) if title is not None else self.document) + text
