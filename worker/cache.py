"""Checkpoints on a worker: their files on local disk (``CheckpointFiles``) and loaded
models in memory (``ModelCache``), both keyed by (name, version).

Versions are immutable (core.registry), so a cached version never goes stale:

- ``CheckpointFiles`` is a read-through cache of checkpoint *files* from the artifact store,
  in ``DEBM_CACHE_DIR/checkpoints/NAME/VERSION``, bounded by ``DEBM_CHECKPOINT_CACHE_BYTES``
  (least recently used versions out; use is the mtime of each version's ``.cached`` stamp,
  so the order survives a restart, as the files do).  A version is downloaded once, its
  SHA-256s checked, and only then renamed into place: a version in the cache is complete and
  intact.  With the local backend the files are read where they lie (no copy).
- ``ModelCache`` holds loaded models, bounded in count (least recently used out).  It is
  created lazily inside the process that runs tasks, i.e. after the prefork pool forked, so
  the parent never touches CUDA.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from core.artifacts import ArtifactMissing
from core.prometheus import (CHECKPOINT_CACHE_BYTES, CHECKPOINT_CACHE_HITS,
                             CHECKPOINT_CACHE_MISSES, MODEL_LOAD_SECONDS)
from core.registry import CorruptCheckpoint, ModelRegistry, RegistryError, verify_checkpoint

from .threads import on_own_thread

log = logging.getLogger("debm.worker")
STAMP = ".cached"  # written last into a complete, verified version; its mtime is last use


class CheckpointFiles:
    """See the module docstring.  Safe across threads (one lock) and across processes on
    one host sharing the cache folder (a flock around downloads and evictions)."""

    def __init__(self, registry: ModelRegistry, cache_dir: Path, *, max_bytes: int):
        self.registry, self.max_bytes = registry, max_bytes
        self.root = Path(cache_dir) / "checkpoints"
        self._lock = threading.Lock()
        self.downloads = 0  # versions fetched from the store (tests, logs)

    def path(self, name: str, version: int) -> Path:
        """A local folder holding the complete checkpoint ``name:version``.  Raises
        CorruptCheckpoint (naming the version) when the store lacks it or its files fail
        their checksums; the job fails, the worker goes on."""
        prefix = self.registry.prefix_of(name, int(version))
        local = self.registry.store.local_path(prefix)
        if local is not None:
            return local
        folder = self.root / name / str(int(version))
        with self._lock:
            if (folder / STAMP).is_file():
                CHECKPOINT_CACHE_HITS.inc()
                os.utime(folder / STAMP)
                return folder
            with self._flock():
                if (folder / STAMP).is_file():  # another process fetched it meanwhile
                    CHECKPOINT_CACHE_HITS.inc()
                    return folder
                CHECKPOINT_CACHE_MISSES.inc()
                self._download(name, int(version), prefix, folder)
                self._evict(keep=folder)
        return folder

    def _download(self, name: str, version: int, prefix: str, folder: Path) -> None:
        staging = folder.with_name(f".{folder.name}.incoming")
        shutil.rmtree(staging, ignore_errors=True)
        where = f"model {name}:{version} cannot be loaded from {self.registry.store.describe()}"
        try:
            self.registry.store.fetch_tree(prefix, staging, marker="checkpoint.json")
            verify_checkpoint(staging)
        except ArtifactMissing as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise CorruptCheckpoint(f"{where}: {exc}") from None
        except RegistryError as exc:  # a file missing or failing its checksum
            shutil.rmtree(staging, ignore_errors=True)
            detail = str(exc).replace(f"{staging}: ", "")
            raise CorruptCheckpoint(f"{where}: {detail}") from None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        (staging / STAMP).touch()
        shutil.rmtree(folder, ignore_errors=True)  # an unstamped leftover of a crash
        os.rename(staging, folder)
        self.downloads += 1
        log.info("checkpoint %s:%d fetched into the cache", name, version)

    def _entries(self) -> list[tuple[float, int, Path]]:
        """(last use, bytes, folder) of every complete cached version."""
        entries = []
        for stamp in self.root.glob(f"*/*/{STAMP}"):
            folder = stamp.parent
            try:
                size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
                entries.append((stamp.stat().st_mtime, size, folder))
            except OSError:
                continue
        return entries

    def _evict(self, *, keep: Path) -> None:
        entries = sorted(self._entries())
        total = sum(size for _, size, _ in entries)
        for _, size, folder in entries:
            if total <= self.max_bytes:
                break
            if folder == keep:  # the version a job is about to load stays, even if alone
                continue
            # The stamp goes first: a half-deleted folder is never taken for a cached one.
            (folder / STAMP).unlink(missing_ok=True)
            shutil.rmtree(folder, ignore_errors=True)
            total -= size
            log.info("checkpoint cache: evicted %s (%d bytes)", folder, size)
        CHECKPOINT_CACHE_BYTES.set(total)

    def cached_bytes(self) -> int:
        return sum(size for _, size, _ in self._entries())

    @contextmanager
    def _flock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class ModelCache:
    def __init__(self, registry: ModelRegistry, *, device: str = "auto", capacity: int = 2,
                 options=None, files: CheckpointFiles | None = None):
        self.registry, self.device_spec, self.capacity = registry, device, capacity
        # Where checkpoint files come from (default: a cache in the working directory,
        # only ever used with a non-local store).
        self.files = files or CheckpointFiles(registry, Path("cache"), max_bytes=10 << 30)
        self.options = options  # model.pipeline.InferenceOptions of the serving models
        self.device = None  # resolved on the first load, in the process that runs tasks
        self._items: OrderedDict[tuple[str, int], Any] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # how many times a checkpoint was read from disk (tests, logs)

    def get(self, name: str, version: int):
        from model.checkpoints import load_checkpoint
        from model.pipeline import prepare_for_inference, resolve_device

        key = (name, int(version))
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            if self.device is None:
                self.device = resolve_device(self.device_spec)
            folder = self.files.path(name, int(version))
            started = time.perf_counter()
            # On a thread of its own (loading traces the model: it runs it), so that no
            # long-lived thread keeps an OpenMP team (worker.threads).
            loaded = on_own_thread(lambda: prepare_for_inference(
                load_checkpoint(folder, device=self.device), self.options), name="debm-load")
            MODEL_LOAD_SECONDS.labels(f"{name}:{version}").observe(
                time.perf_counter() - started)
            self.loads += 1
            self._items[key] = loaded
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
            return loaded

    def __contains__(self, key: tuple[str, int]) -> bool:
        return key in self._items
