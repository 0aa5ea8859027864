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

import re
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Iterator

from core.jobs.store import StoreUnavailable
from core.prometheus import ARTIFACT_BYTES, ARTIFACT_OPS, ARTIFACT_SECONDS

if TYPE_CHECKING:
    from core.settings import Settings

# One path segment: letters, digits and _.+- (a leading dot allowed: hidden markers).
_SEGMENT_RE = re.compile(r"^\.?[A-Za-z0-9_][A-Za-z0-9_.+-]{0,200}$")


class ArtifactError(RuntimeError):
    """Base of the store's own errors."""


class ArtifactsUnavailable(StoreUnavailable, ArtifactError):
    """The store cannot be reached, or refuses our credentials.  A ``StoreUnavailable``, so
    the API answers 503 and a worker waits and retries as it does for Redis."""


class ArtifactMissing(ArtifactError, FileNotFoundError):
    """The object (or the tree's marker) is not in the store."""


class ArtifactsMisconfigured(ArtifactError):
    """A start-up error: the bucket does not exist (and may not be created), bad URL."""


def check_key(key: str) -> str:
    """Keys come from job records and requests: refuse anything that is not a plain
    relative path (no '..', no absolute path, no backslash, no empty segment)."""
    if not isinstance(key, str) or not key or key.startswith("/") or "\\" in key or \
            any(s in ("", ".", "..") or not _SEGMENT_RE.match(s) for s in key.split("/")):
        raise ValueError(f"invalid artifact key {key!r}: a key is a plain relative path "
                         "(no '..', no leading '/') and never leaves the store")
    return key


def check_prefix(prefix: str) -> str:
    return check_key(prefix.rstrip("/")) + "/"


class ArtifactStore(ABC):
    """The interface both backends implement.  ``name`` labels metrics ("local", "s3")."""

    name: str = "?"

    @abstractmethod
    def describe(self) -> str:
        """Where the store is, for messages ("the S3 store s3://b/p at http://..")."""

    # -- single objects ---------------------------------------------------------------------
    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def put_file(self, key: str, path: Path) -> None:
        """Stream a local file in (S3: multipart above the threshold)."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """A small object whole (registry index, manifests, PNGs).  ArtifactMissing."""

    @abstractmethod
    def open_read(self, key: str) -> BinaryIO:
        """A streamed reader of a possibly large object.  ArtifactMissing."""

    @abstractmethod
    def fetch_file(self, key: str, target: Path) -> Path:
        """The object as a local file: the local backend answers its own path (no copy);
        S3 streams it to ``target`` (temp file + rename) unless ``target`` already exists
        (keys that reach here are immutable: datasets, checkpoint files)."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> list[tuple[str, int]]:
        """(key, size) of every object under ``prefix`` (recursive), sorted."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Remove every object under ``prefix`` (absent: nothing to do)."""

    def local_path(self, key: str) -> Path | None:
        """The object's path when the store is this host's data directory, else None.  Lets
        the local backend keep working in place (training snapshots, datasets)."""
        return None

    # -- trees: multi-file artifacts with a marker written last ------------------------------
    @abstractmethod
    def put_tree(self, prefix: str, directory: Path, *, marker: str,
                 move: bool = False) -> None:
        """Publish the files of ``directory`` (flat) under ``prefix``, ``marker`` last.  A
        tree that already exists is replaced; readers see the old or the new one (local: an
        atomic rename exchange; S3: per object, the marker last).  ``move``: the directory
        may be consumed (the local backend renames it into place)."""

    def tree_complete(self, prefix: str, *, marker: str) -> bool:
        return self.exists(check_prefix(prefix) + marker)

    def fetch_tree(self, prefix: str, target: Path, *, marker: str) -> Path:
        """A local copy of a complete tree in ``target`` (staged, then renamed into place);
        ArtifactMissing when its marker is absent.  Local backend: the tree's own folder."""
        prefix = check_prefix(prefix)
        if not self.tree_complete(prefix, marker=marker):
            raise ArtifactMissing(f"{prefix}{marker} is not in {self.describe()}")
        from .localfiles import fetch_tree_into

        return fetch_tree_into(self, prefix, Path(target), marker=marker)

    def check(self, *, create: bool = False) -> None:
        """Start-up check: the store is reachable and usable (S3: the bucket exists, or is
        created when ``create``)."""

    # -- metrics ----------------------------------------------------------------------------
    @contextmanager
    def _op(self, operation: str, size: int = 0) -> Iterator[list[int]]:
        """Counts, times and sizes one operation; the body may add bytes to ``moved[0]``."""
        started = time.perf_counter()
        moved = [size]
        outcome = "error"
        try:
            yield moved
            outcome = "ok"
        except ArtifactMissing:
            outcome = "missing"
            raise
        finally:
            ARTIFACT_OPS.labels(self.name, operation, outcome).inc()
            ARTIFACT_SECONDS.labels(self.name, operation).observe(time.perf_counter() - started)
            if moved[0]:
                ARTIFACT_BYTES.labels(self.name, operation).inc(moved[0])


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
