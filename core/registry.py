"""The model registry: names, immutable versions and the default version of each name.

    models/registry.json   {"models": {NAME: {"default": 2, "versions": {"1": {...}}}}}
    models/NAME/VERSION/   the checkpoint of that version (checkpoint.json, its marker, last)

Both live in the artifact store (core.artifacts): the data directory on one host, or an S3
bucket that API replicas and workers on other hosts share with no common disk.

Versions are integers that only grow and are never rewritten, so workers may cache a
(name, version) forever (worker.cache).  Every change of the index happens under one lock
and rewrites registry.json whole (a rename locally, one PUT on S3, so readers never see half
of it):

- local backend: an exclusive ``flock`` on ``models/.lock`` (processes on one host or
  sharing one volume), as before;
- S3 backend: a Redis lock (``PREFIX:registry-lock``, redis-py's token lock with a timeout,
  so a holder that died frees it) when REDIS_URL is set, which it always is in distributed
  mode.  Chosen over S3 conditional writes (If-Match) because not every S3-compatible server
  implements those, and every replica already shares that Redis.  Without Redis (one host
  using S3) a flock in the cache directory.

A version's files are published before the index names it (marker last), so a version the
index lists is complete; a crash between the two leaves an unlisted prefix whose number is
skipped.  A registration that carries a job id is idempotent: a training task that is
delivered twice registers one version.

Torch-free: checkpoints are read and verified with model.formats.manifest (the same manifest and
checksum rules model.checkpoints loads with); the workers load weights with
model.checkpoints.
"""

from __future__ import annotations

import fcntl
import json
import threading
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from model.formats.errors import UserError
from model.formats.manifest import (MANIFEST, CheckpointError, read_manifest,
                                    verify_checkpoint_files)

from .artifacts import ArtifactMissing, ArtifactsUnavailable, ArtifactStore
from .artifacts.local import LocalStore
from .names import MODEL_NAME_RE


# Seconds a remote store's index (and a version seen complete there) is reused by reads.
INDEX_TTL = 2.0


class RegistryError(UserError, ValueError):
    """Unknown model or version, bad name, or a directory that is not a checkpoint."""


class UnknownModel(RegistryError):
    pass


class CorruptCheckpoint(RegistryError):
    """A version's files are missing, truncated or do not match their SHA-256: refused for
    serving (the API answers 409 and keeps the current default)."""


# Signatures (directory, manifest "files", ((file, size, mtime_ns), ...)) of checkpoints whose
# files were already verified and have not changed since.
_verified: set[tuple] = set()
_verified_lock = threading.Lock()


def _signature(directory: Path, document: dict[str, Any]) -> tuple | None:
    """What a verification result is cached under; None when a listed file cannot be
    stat'ed (the verification then says why)."""
    files = document.get("files")
    if not isinstance(files, dict):
        return None
    stats = []
    for name in sorted(files):
        try:
            stat = (directory / name).stat()
        except (OSError, ValueError):  # ValueError: a NUL in the name
            return None
        stats.append((name, stat.st_size, stat.st_mtime_ns))
    return str(directory.resolve()), json.dumps(files, sort_keys=True), tuple(stats)


def verify_checkpoint(directory: Path) -> dict[str, Any]:
    """Check that every file the manifest lists exists and matches its SHA-256, with the
    rules model.checkpoints.load_checkpoint applies (model.formats.manifest, torch-free, so the API
    can refuse a corrupt version before any worker tries it).  Results are cached by file
    size and mtime, so a version is hashed once, not per request.  Returns the manifest
    summary.  Raises RegistryError when ``directory`` is not a readable checkpoint and
    CorruptCheckpoint when its files fail verification."""
    directory = Path(directory)
    try:
        document = read_manifest(directory)
    except CheckpointError as exc:
        raise RegistryError(str(exc)) from None
    # Taken before hashing: a file changed while (or after) it is hashed changes the key.
    key = _signature(directory, document)
    with _verified_lock:
        cached = key is not None and key in _verified
    if not cached:
        try:
            verified = verify_checkpoint_files(directory)
        except CheckpointError as exc:
            raise CorruptCheckpoint(str(exc)) from None
        if key is not None and verified.get("files") == document.get("files"):
            with _verified_lock:
                if len(_verified) > 1024:
                    _verified.clear()
                _verified.add(key)
        document = verified
    return checkpoint_summary(document)


def checkpoint_summary(document: dict[str, Any]) -> dict[str, Any]:
    """What GET /models shows about a checkpoint, from its manifest (no torch)."""
    config = document.get("config") or {}
    network = config.get("network") or {}
    metadata = document.get("metadata") or {}
    return {"step": document.get("step"), "preset": config.get("preset"),
            "image_size": network.get("image_size"), "channels": network.get("channels"),
            "calibrated": document.get("calibration") is not None,
            "dataset": metadata.get("dataset")}


def parse_model_spec(spec: str) -> tuple[str, int | None]:
    """"name" or "name:version" -> (name, version or None)."""
    name, sep, version = spec.partition(":")
    if not MODEL_NAME_RE.match(name):
        raise RegistryError(f"invalid model name {name!r}")
    if not sep:
        return name, None
    if not version.isdigit() or int(version) < 1 or len(version) > 9:
        raise RegistryError(f"invalid model version {version!r}; versions are 1, 2, ...")
    return name, int(version)


class ModelRegistry:
    """``store``: the artifact store, or (tests, tools) the path of a local ``models``
    folder.  ``lock``: a context manager factory guarding index changes (default: a flock
    beside the index, or ``registry_lock(settings, store)``)."""

    def __init__(self, store: ArtifactStore | Path, *, lock=None):
        if not isinstance(store, ArtifactStore):
            root = Path(store).expanduser().resolve()
            store, self.prefix = LocalStore(root.parent), root.name
        else:
            self.prefix = "models"
        self.store = store
        self.index_key = f"{self.prefix}/registry.json"
        # No lock given on a remote store (tests, one-host tools): a flock in the temp folder
        # guards this host only; services pass registry_lock(settings, store) (Redis).
        self._lock = lock or _flock_in(self._local_root()
                                       or Path(tempfile.gettempdir()) / "debm-registry")
        self._manifests: dict[tuple[str, int], dict[str, Any]] = {}
        # On a remote store, the index read by a request is reused for INDEX_TTL seconds
        # (a new version or default made on another host shows within that time); changes
        # always read it fresh under the lock.  A local read is cheap: never cached.
        self.index_ttl = 0.0 if self._local_root() is not None else INDEX_TTL
        self._index: tuple[float, dict[str, Any]] | None = None
        self._present: dict[tuple[str, int], float] = {}  # remote versions seen complete

    def _local_root(self) -> Path | None:
        return self.store.local_path(self.prefix)

    # -- reading ---------------------------------------------------------------------------
    def read(self, *, fresh: bool = False) -> dict[str, Any]:
        cached = self._index
        if not fresh and cached is not None and time.monotonic() < cached[0]:
            return json.loads(json.dumps(cached[1]))  # a copy: callers may change theirs
        document = self._read_index()
        if self.index_ttl:
            self._index = (time.monotonic() + self.index_ttl, json.loads(json.dumps(document)))
        return document

    def _read_index(self) -> dict[str, Any]:
        try:
            document = json.loads(self.store.get_bytes(self.index_key))
        except ArtifactMissing:
            return {"models": {}}
        except (OSError, json.JSONDecodeError) as exc:
            if isinstance(exc, ArtifactsUnavailable):
                raise
            raise RegistryError(f"{self.index_key} is unreadable ({exc})") from None
        if not isinstance(document, dict) or not isinstance(document.get("models"), dict):
            raise RegistryError(f"{self.index_key} is not a model registry")
        return document

    def resolve_servable(self, spec: str | None, *, default_model: str) -> tuple[str, int]:
        """``resolve``, then refuse a version whose files fail their checksums (409)."""
        name, version = self.resolve(spec, default_model=default_model)
        self.verify(name, version)
        return name, version

    def verify(self, name: str, version: int) -> None:
        """Raise CorruptCheckpoint unless ``name:version`` is intact: every file hashed on a
        local store (cached); on S3, its manifest and every file it lists present (the
        worker's cache checks the hashes when it downloads them)."""
        try:
            local = self.store.local_path(self.prefix_of(name, version))
            if local is not None:
                verify_checkpoint(local)
                return
            if time.monotonic() < self._present.get((name, version), 0.0):
                return
            document = self.manifest(name, version)
            listed = {key.rsplit("/", 1)[1] for key, _ in
                      self.store.list(self.prefix_of(name, version))}
            files = document.get("files")
            if not isinstance(files, dict) or document.get("weights") not in files:
                raise RegistryError("the manifest lists no checksummed weights")
            missing = sorted(set(files) - listed)
            if missing:
                raise RegistryError(f"{', '.join(missing)} missing from the store")
            self._present[(name, int(version))] = time.monotonic() + INDEX_TTL
        except RegistryError as exc:
            raise CorruptCheckpoint(f"model {name}:{version} cannot be served: {exc}") from None

    def manifest(self, name: str, version: int) -> dict[str, Any]:
        """checkpoint.json of a registered version (read once: versions are immutable)."""
        key = (name, int(version))
        if key not in self._manifests:
            try:
                raw = self.store.get_bytes(f"{self.prefix_of(name, version)}/{MANIFEST}")
                document = json.loads(raw)
            except ArtifactMissing:
                raise RegistryError(f"model {name}:{version}: its {MANIFEST} is missing "
                                    "from the store") from None
            except json.JSONDecodeError as exc:
                raise RegistryError(f"model {name}:{version}: unreadable manifest "
                                    f"({exc})") from None
            if len(self._manifests) > 256:
                self._manifests.clear()
            self._manifests[key] = document
        return self._manifests[key]

    def names(self) -> list[str]:
        return sorted(self.read()["models"])

    def prefix_of(self, name: str, version: int) -> str:
        """The store prefix of a version's checkpoint files."""
        if not MODEL_NAME_RE.match(name) or not isinstance(version, int) or version < 1:
            raise RegistryError(f"invalid model {name}:{version}")
        return f"{self.prefix}/{name}/{version}"

    def path(self, name: str, version: int) -> Path:
        """The checkpoint folder on a local store (workers on S3 use worker.cache)."""
        local = self.store.local_path(self.prefix_of(name, version))
        if local is None:
            raise RegistryError(f"model {name}:{version} lives in {self.store.describe()}, "
                                "not in a local folder")
        return local

    def resolve(self, spec: str | None, *, default_model: str) -> tuple[str, int]:
        """A request's ``model`` ("name", "name:version" or None) -> a registered
        (name, version).  None means ``default_model`` if registered, else the first name.
        A name or version the reused index lacks is looked up again in a fresh one (it may
        have been registered on another host a moment ago)."""
        try:
            return self._resolve_in(self.read()["models"], spec, default_model)
        except UnknownModel:
            if not self.index_ttl:
                raise
            return self._resolve_in(self.read(fresh=True)["models"], spec, default_model)

    @staticmethod
    def _resolve_in(models: dict[str, Any], spec: str | None,
                    default_model: str) -> tuple[str, int]:
        if spec is None:
            if not models:
                raise UnknownModel("no model is registered yet")
            name, version = (default_model if default_model in models else sorted(models)[0],
                             None)
        else:
            name, version = parse_model_spec(spec)
        entry = models.get(name)
        if entry is None:
            raise UnknownModel(f"unknown model {name!r}; registered: "
                               f"{', '.join(sorted(models)) or 'none'}")
        if version is None:
            version = int(entry["default"])
        if str(version) not in entry["versions"]:
            raise UnknownModel(f"model {name!r} has no version {version}; versions: "
                               f"{', '.join(sorted(entry['versions'], key=int))}")
        return name, version

    # -- writing ---------------------------------------------------------------------------
    def register(self, name: str, source: Path, *, job_id: str | None = None,
                 make_default: bool | None = None, note: str | None = None) -> int:
        """Publish a checkpoint directory on this host as the next version of ``name``
        (linked where possible on a local store, uploaded to S3) and return that version.
        The first version of a name becomes its default; later ones only when
        ``make_default``.  Idempotent per ``job_id``."""
        if not MODEL_NAME_RE.match(name):
            raise RegistryError(f"invalid model name {name!r}")
        try:
            summary = verify_checkpoint(Path(source))
        except CorruptCheckpoint as exc:
            raise CorruptCheckpoint(f"not registered: {exc}") from None
        with self._lock():
            document = self.read(fresh=True)
            entry = document["models"].setdefault(name, {"default": None, "versions": {}})
            if job_id is not None:
                for version, info in entry["versions"].items():
                    if info.get("job_id") == job_id:
                        return int(version)
            # Prefixes left by a crash between publishing and the index write are skipped.
            taken = [int(v) for v in entry["versions"]] + [
                int(key.split("/")[2]) for key, _ in self.store.list(f"{self.prefix}/{name}")
                if key.split("/")[2].isdigit()]
            version = max(taken, default=0) + 1
            prefix = self.prefix_of(name, version)
            self.store.put_tree(prefix, Path(source), marker=MANIFEST)
            local = self.store.local_path(prefix)
            if local is not None:
                verify_checkpoint(local)  # what was copied is what was verified
            entry["versions"][str(version)] = {
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "job_id": job_id, "note": note, **summary}
            if entry["default"] is None or make_default:
                entry["default"] = version
            try:
                self._write(document)
            except BaseException:
                # The index still lists the old state; drop the files too, so no
                # unregistered copy is left behind.
                self.store.delete_prefix(prefix)
                raise
            return version

    def _write(self, document: dict[str, Any]) -> None:
        self.store.put_bytes(self.index_key,
                             json.dumps(document, indent=2, sort_keys=True).encode())
        self._index = None

    def set_default(self, name: str, version: int) -> dict[str, Any]:
        with self._lock():
            document = self.read(fresh=True)
            entry = document["models"].get(name)
            if entry is None:
                raise UnknownModel(f"unknown model {name!r}")
            if str(version) not in entry["versions"]:
                raise UnknownModel(f"model {name!r} has no version {version}")
            try:  # a reload that fails keeps the current default (as Triton does)
                self.verify(name, int(version))
            except RegistryError as exc:
                raise CorruptCheckpoint(
                    f"{exc}; the default stays {name}:{entry['default']}") from None
            entry["default"] = int(version)
            self._write(document)
            return entry

    def seed(self, name: str, source: Path | None) -> int | None:
        """Register ``source`` as the first version of ``name`` if that name is absent."""
        if source is None or not (Path(source) / MANIFEST).is_file():
            return None
        if name in self.read()["models"]:
            return None
        with self._lock():
            if name in self.read(fresh=True)["models"]:
                return None
        return self.register(name, Path(source), note=f"seeded from {source}")


def _flock_in(folder: Path):
    """A lock factory: an exclusive flock on ``folder/.lock`` (one host, or one volume)."""
    @contextmanager
    def locked() -> Iterator[None]:
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "a+") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return locked


def _redis_lock(url: str, name: str):
    """A lock factory: redis-py's token lock, released by a timeout if its holder dies."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=10)

    @contextmanager
    def locked() -> Iterator[None]:
        from core.jobs.store import StoreUnavailable

        try:
            lock = client.lock(name, timeout=300, blocking_timeout=120)
            if not lock.acquire():
                raise StoreUnavailable(f"the registry lock {name} stayed taken for 120 s")
        except redis.exceptions.ConnectionError as exc:
            raise StoreUnavailable(f"Redis unreachable for the registry lock: {exc}") from None
        try:
            yield
        finally:
            try:
                lock.release()
            except redis.exceptions.LockError:  # expired meanwhile: nothing to release
                pass
    return locked


def open_registry(settings, store: ArtifactStore) -> ModelRegistry:
    """The registry of a service process: its lock chosen as the module docstring says."""
    if store.local_path("models") is not None:
        return ModelRegistry(store)
    if settings.redis_url:
        return ModelRegistry(store, lock=_redis_lock(settings.redis_url,
                                                     f"{settings.redis_prefix}:registry-lock"))
    return ModelRegistry(store, lock=_flock_in(settings.cache_root))
