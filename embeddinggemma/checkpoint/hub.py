"""Where a checkpoint is: a local directory as given, or a Hugging Face Hub id downloaded to the HF cache."""

from __future__ import annotations

from pathlib import Path

from embeddinggemma.config import CheckpointError

DEFAULT_MODEL = "google/embeddinggemma-300m"
HUB_HINT = (
    f"download it where the Hub is reachable: `huggingface-cli download {DEFAULT_MODEL} "
    f"--local-dir DIR` (accept the licence at https://huggingface.co/{DEFAULT_MODEL} first), "
    "then pass DIR or set EMBEDDINGGEMMA_CHECKPOINT=DIR"
)


def locate(path_or_hub_id: str | Path) -> Path:
    """A local directory as is; otherwise a Hub id fetched with huggingface_hub (optional dependency)."""
    path = Path(path_or_hub_id).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is a file; expected a checkpoint directory")
        return path
    name = str(path_or_hub_id)
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise CheckpointError(f"{name}: no such checkpoint directory (and not a Hub id like 'google/x')")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    except ImportError as e:
        raise CheckpointError(
            f"{name} is not a local directory and huggingface_hub is not installed "
            f"(pip install 'embeddinggemma-jax[hub]'), or {HUB_HINT}"
        ) from e
    try:
        return Path(snapshot_download(name))
    except GatedRepoError as e:
        raise CheckpointError(
            f"{name} is gated: accept its licence on https://huggingface.co/{name} and log in "
            "(`huggingface-cli login` or HF_TOKEN)"
        ) from e
    except RepositoryNotFoundError as e:
        raise CheckpointError(f"{name}: no such Hub repository (or no access to it)") from e
    except Exception as e:  # offline, DNS, proxy, timeouts: huggingface_hub raises many types
        raise CheckpointError(f"could not download {name} from the Hugging Face Hub ({e}); {HUB_HINT}") from e
