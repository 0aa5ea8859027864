"""The artifact store's interface and errors (core.artifacts's docstring says what goes
through it); the backends are core.artifacts.local and core.artifacts.s3."""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from core.jobs.store import StoreUnavailable
from core.prometheus import ARTIFACT_BYTES, ARTIFACT_OPS, ARTIFACT_SECONDS


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
