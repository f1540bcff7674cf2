"""Where a checkpoint is: a local directory as given, a URL (gs://, any fsspec URL) or a Hugging Face Hub id
downloaded to a local cache."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tqdm.auto import tqdm

from embeddinggemma.errors import CheckpointError
from embeddinggemma.files import atomic_dir, cache_dir

DEFAULT_MODEL = "google/embeddinggemma-300m"
HUB_HINT = (
    f"download it where the Hub is reachable: `huggingface-cli download {DEFAULT_MODEL} "
    f"--local-dir DIR` (accept the licence at https://huggingface.co/{DEFAULT_MODEL} first), "
    "then pass DIR or set EMBEDDINGGEMMA_CHECKPOINT=DIR"
)


def locate(path_or_hub_id: str | Path) -> Path:
    """A local directory as is; a URL copied into the model cache (`download`); otherwise a Hub id fetched
    with huggingface_hub (optional dependency)."""
    spec = str(path_or_hub_id).removeprefix("file://")
    if "://" in spec:
        return download(spec)
    path = Path(spec).expanduser()
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


def download(url: str) -> Path:
    """A checkpoint directory at a URL (e.g. an export on gs://), copied once into the model cache
    ($EMBEDDINGGEMMA_MODEL_CACHE, else ~/.cache/embeddinggemma/models). The copy is keyed by every file's
    name and version (fsspec's ukey: the object generation on GCS), so a changed checkpoint is copied again,
    and is written under a temporary name and renamed when complete."""
    try:
        import fsspec

        fs, root = fsspec.core.url_to_fs(url)
    except ImportError as e:  # fsspec itself, or the scheme's filesystem (gcsfs for gs://)
        raise CheckpointError(
            f"{url}: reading a checkpoint from a URL needs fsspec and the URL's filesystem ({e}); "
            "pip install 'embeddinggemma-jax[data,gcs]'"
        ) from e
    except ValueError as e:  # "Protocol not known"
        raise CheckpointError(f"{url}: not a checkpoint directory or a URL fsspec can read ({e})") from e
    root = root.rstrip("/")
    try:
        files = sorted(fs.find(root))
        if not files:
            raise CheckpointError(f"{url}: no such checkpoint directory (nothing under it)")
        key = json.dumps([url] + [[os.path.relpath(f, root), fs.ukey(f)] for f in files])
        dest = cache_dir("models", "EMBEDDINGGEMMA_MODEL_CACHE") / hashlib.sha256(key.encode()).hexdigest()[:32]
        if not dest.is_dir():
            with atomic_dir(dest) as tmp:
                for f in tqdm(files, desc=f"download {url}", unit="file"):
                    local = tmp / os.path.relpath(f, root)
                    local.parent.mkdir(parents=True, exist_ok=True)
                    fs.get_file(f, str(local))
    except CheckpointError:
        raise
    except Exception as e:  # offline, no credentials, no access: gcsfs and google-auth raise many types
        raise CheckpointError(f"could not copy {url} ({e})") from e
    return dest
