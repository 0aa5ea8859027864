"""The artifact store: everything the API and the workers exchange, behind one interface.

What goes through it (keys are data-directory-relative POSIX paths, the same in every backend):

    uploads/JOB/NNNN.img          images waiting to be scored (deleted once the job finished)
    datasets/ID/data.zip|npz      an uploaded dataset, then datasets/ID/meta.json (its marker)
    models/registry.json          the model registry's index (core.registry)
    models/NAME/VERSION/...       a registered checkpoint, checkpoint.json (its marker) last
    jobs/JOB/checkpoint/...       a training job's snapshot (resume state), marker last
    jobs/JOB/visuals/...          a training job's sample grids and metric history
    results/JOB/...               generated PNGs

Two backends (``open_artifacts`` picks one from ``DEBM_ARTIFACTS``):

- ``local`` (core.artifacts.local): the data directory itself, exactly today's layout and
  behaviour; writes are a temp file + rename, a folder is staged and renamed into place.
- ``s3`` (core.artifacts.s3): any S3-compatible store through boto3.

**Atomic from a reader's point of view.**  One object is either absent or complete (a local
rename; an S3 PUT or completed multipart upload).  A multi-file artifact (a checkpoint, a
snapshot, a result folder) is a *tree*: its files are written first and its *marker* last,
and readers treat a tree without its marker as absent (``fetch_tree``, ``tree_complete``).

**Streaming.**  ``put_file`` / ``fetch_file`` move files in chunks (S3: multipart upload and
a streamed body), so a dataset or checkpoint is never held whole in memory.

**Faults.**  ``ArtifactsUnavailable`` (a ``StoreUnavailable``: the API answers 503, a worker
gives the job back and retries as for a Redis outage) when the store cannot be reached or
refuses our credentials; ``ArtifactMissing`` when an object is not there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import (ArtifactError, ArtifactMissing, ArtifactsMisconfigured, ArtifactStore,
                   ArtifactsUnavailable, check_key, check_prefix)

if TYPE_CHECKING:
    from core.settings import Settings


def open_artifacts(settings: "Settings") -> ArtifactStore:
    """The store ``settings`` name: S3 for ``DEBM_ARTIFACTS=s3://...``, else the data
    directory.  Does not touch the network; call ``check()`` at start."""
    if settings.artifacts:
        from .s3 import S3Store

        return S3Store.from_url(settings.artifacts, endpoint_url=settings.s3_endpoint_url,
                                retry_seconds=settings.store_retry_seconds)
    from .local import LocalStore

    return LocalStore(settings.data_root)


__all__ = ["ArtifactError", "ArtifactMissing", "ArtifactStore", "ArtifactsMisconfigured",
           "ArtifactsUnavailable", "check_key", "check_prefix", "open_artifacts"]
