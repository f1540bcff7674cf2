"""`python -m tests.helpers.gcs_emulator PORT BUCKET`: gcp-storage-emulator, in memory, with one bucket.

Its media downloads lack the `x-goog-generation` header that real GCS sends and TensorStore reads to
version what it caches (OCDBT manifests: orbax's checkpoints); this adds it, from the object's metadata.
"""

from __future__ import annotations

import sys

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_download = objects.download


def download(request, response, storage, *args, **kwargs):
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        response["x-goog-generation"] = obj["generation"]
        response["x-goog-metageneration"] = obj["metageneration"]
    except NotFound:
        pass
    return _download(request, response, storage, *args, **kwargs)


objects.download = download  # before the server module builds its routing table from it

if __name__ == "__main__":
    from gcp_storage_emulator.server import create_server

    port, bucket = int(sys.argv[1]), sys.argv[2]
    create_server("localhost", port, in_memory=True, default_bucket=bucket).run()
