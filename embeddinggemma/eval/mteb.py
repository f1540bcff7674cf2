"""MTEB tasks on this encoder, prompted the way mteb's google/embeddinggemma-300m entry is.

That entry is mteb's sentence-transformers wrapper with no prompts of its own, so each task gets one of the
checkpoint's prompts (config_sentence_transformers.json: "Retrieval-query", "Retrieval-document", "STS", ...),
picked by mteb from the task's name, its type and the query/document side. `MtebEncoder` picks with the same mteb
function and encodes with `EmbeddingGemma`, so its scores are the PyTorch entry's up to numerics
(tests/eval/test_mteb.py). mteb is an optional extra, imported only when used.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embeddinggemma.encode.encoder import EmbeddingGemma

if TYPE_CHECKING:
    from mteb import AbsTask
    from mteb.abstasks.task_metadata import TaskMetadata
    from mteb.types import Array, BatchedInput, PromptType
    from torch.utils.data import DataLoader

OFFICIAL_ENTRY = "google/embeddinggemma-300m"  # the mteb model whose prompting MtebEncoder reproduces


def import_mteb() -> Any:
    """The installed mteb, or an ImportError that says how to get it."""
    try:
        import mteb
    except ModuleNotFoundError as e:
        if e.name != "mteb":
            raise
        raise ImportError("mteb is not installed: pip install 'embeddinggemma-jax[mteb]'") from e
    return mteb


class MtebEncoder:
    """`EmbeddingGemma` under mteb's encoder protocol (`mteb.models.EncoderProtocol`). The protocol is checked by
    shape, so this class needs no mteb base class and this module imports without mteb."""

    def __init__(
        self,
        model: EmbeddingGemma,
        *,
        name: str = "embeddinggemma-jax/embeddinggemma-300m",
        truncate_dim: int | None = None,
    ) -> None:
        import_mteb()
        from mteb.models import ModelMeta
        from mteb.models.abs_encoder import AbsEncoder
        from mteb.models.model_meta import ScoringFunction

        self.model = model
        self.truncate_dim = truncate_dim
        # What mteb's sentence-transformers wrapper keeps of a checkpoint's prompts: the keys mteb understands.
        self.model_prompts, _ = AbsEncoder.validate_task_to_prompt_name(model.prompts, raise_for_invalid_keys=False)
        self.mteb_model_meta = ModelMeta.create_empty(
            {
                "name": name,
                "embed_dim": model.check_dim(truncate_dim),
                "max_tokens": model.config.max_seq_length,
                "similarity_fn_name": ScoringFunction.COSINE,
                "framework": ["JAX"],
                "use_instructions": True,
                "adapted_from": OFFICIAL_ENTRY,
                # results of other dtypes and widths go to their own folders, as mteb does for embed_dim
                "experiment_kwargs": {"dtype": model.dtype} | ({"truncate_dim": truncate_dim} if truncate_dim else {}),
            }
        )

    def prompt(self, task_metadata: TaskMetadata, prompt_type: PromptType | None) -> str | None:
        """The prompt mteb's sentence-transformers wrapper gives this task and side (None: the checkpoint's
        default prompt, as sentence-transformers then applies)."""
        from mteb.models.abs_encoder import get_prompt

        return get_prompt(self.model_prompts, task_metadata, prompt_type)

    def encode(
        self,
        inputs: DataLoader[BatchedInput],
        *,
        task_metadata: TaskMetadata,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        texts = [text for batch in inputs for text in batch["text"]]
        return self.model.encode(
            texts,
            prompt=self.prompt(task_metadata, prompt_type),
            truncate_dim=self.truncate_dim,
            batch_size=kwargs.get("batch_size", 32),
            show_progress_bar=kwargs.get("show_progress_bar"),
        )

    def similarity(self, embeddings1: Array, embeddings2: Array) -> Array:
        from mteb.similarity_functions import cos_sim

        return cos_sim(embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1: Array, embeddings2: Array) -> Array:
        from mteb.similarity_functions import pairwise_cos_sim

        return pairwise_cos_sim(embeddings1, embeddings2)


def get_tasks(names: list[str], languages: list[str] | None = None) -> list[AbsTask]:
    """mteb's tasks by name; an unknown name, or a language filter that leaves nothing, is a ValueError."""
    mteb = import_mteb()
    try:
        tasks = list(mteb.get_tasks(tasks=names, languages=languages))
    except KeyError as e:
        raise ValueError(f"MTEB task {str(e.args[0]).removeprefix('KeyError: ')}") from None
    if not tasks:
        raise ValueError(f"no subset of {', '.join(names)} is in the languages {', '.join(languages or [])}")
    return tasks


def evaluate(
    encoder: MtebEncoder, tasks: list[AbsTask], output: str | Path, *, batch_size: int = 32, overwrite: bool = False
) -> list[tuple[str, float]]:
    """(task, main score) of each task, evaluated by mteb into its results folder `output`
    (output/results/<model>/.../<task>.json); tasks with results there are skipped unless `overwrite`."""
    mteb = import_mteb()
    result = mteb.evaluate(
        encoder,
        tasks,
        cache=mteb.ResultCache(output),
        encode_kwargs={"batch_size": batch_size},
        overwrite_strategy="always" if overwrite else "only-missing",
    )
    return [(task_result.task_name, task_result.get_score()) for task_result in result.task_results]
