"""The model registry: names, immutable versions and the default version of each name.

    DATA/models/registry.json   {"models": {NAME: {"default": 2, "versions": {"1": {...}}}}}
    DATA/models/NAME/VERSION/   the checkpoint directory of that version

Versions are integers that only grow and are never rewritten, so workers may cache a loaded
(name, version) forever.  Every change happens under an exclusive ``flock`` on
``models/.lock`` and rewrites registry.json atomically (temp file + fsync + rename), so API
processes and workers on one host (or sharing one volume) never see a half-written registry.
A registration that carries a job id is idempotent: a training task that is delivered twice
registers one version.

Torch-free: checkpoints are read and verified with model.formats.manifest (the same manifest and
checksum rules model.checkpoints loads with); the workers load weights with
model.checkpoints.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from model.formats.errors import UserError
from model.formats.files import atomic_write_bytes
from model.formats.manifest import (MANIFEST, CheckpointError, read_manifest,
                                    verify_checkpoint_files)

from .names import MODEL_NAME_RE


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
    def __init__(self, root: Path):
        self.root = Path(root)
        self.file = self.root / "registry.json"
        self.lock_file = self.root / ".lock"

    # -- reading ---------------------------------------------------------------------------
    def read(self) -> dict[str, Any]:
        try:
            document = json.loads(self.file.read_text())
        except FileNotFoundError:
            return {"models": {}}
        except (OSError, json.JSONDecodeError) as exc:
            raise RegistryError(f"{self.file} is unreadable ({exc})") from None
        if not isinstance(document, dict) or not isinstance(document.get("models"), dict):
            raise RegistryError(f"{self.file} is not a model registry")
        return document

    def resolve_servable(self, spec: str | None, *, default_model: str) -> tuple[str, int]:
        """``resolve``, then refuse a version whose files fail their checksums (409)."""
        name, version = self.resolve(spec, default_model=default_model)
        self.verify(name, version)
        return name, version

    def verify(self, name: str, version: int) -> None:
        """Raise CorruptCheckpoint unless ``name:version`` is intact on disk (cached)."""
        try:
            verify_checkpoint(self.path(name, version))
        except RegistryError as exc:
            raise CorruptCheckpoint(f"model {name}:{version} cannot be served: {exc}") from None

    def names(self) -> list[str]:
        return sorted(self.read()["models"])

    def path(self, name: str, version: int) -> Path:
        if not MODEL_NAME_RE.match(name) or not isinstance(version, int) or version < 1:
            raise RegistryError(f"invalid model {name}:{version}")
        return self.root / name / str(version)

    def resolve(self, spec: str | None, *, default_model: str) -> tuple[str, int]:
        """A request's ``model`` ("name", "name:version" or None) -> a registered
        (name, version).  None means ``default_model`` if registered, else the first name."""
        models = self.read()["models"]
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
    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.lock_file, "a+") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield self.read()
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _write(self, document: dict[str, Any]) -> None:
        atomic_write_bytes(self.file, json.dumps(document, indent=2, sort_keys=True).encode())

    def register(self, name: str, source: Path, *, job_id: str | None = None,
                 make_default: bool | None = None, note: str | None = None) -> int:
        """Copy (hard-link where possible) a checkpoint directory in as the next version of
        ``name`` and return that version.  The first version of a name becomes its default;
        later ones only when ``make_default``.  Idempotent per ``job_id``."""
        if not MODEL_NAME_RE.match(name):
            raise RegistryError(f"invalid model name {name!r}")
        try:
            summary = verify_checkpoint(Path(source))
        except CorruptCheckpoint as exc:
            raise CorruptCheckpoint(f"not registered: {exc}") from None
        with self._locked() as document:
            entry = document["models"].setdefault(name, {"default": None, "versions": {}})
            if job_id is not None:
                for version, info in entry["versions"].items():
                    if info.get("job_id") == job_id:
                        return int(version)
            model_dir = self.root / name
            model_dir.mkdir(parents=True, exist_ok=True)
            # Directories left by a crash between rename and registry write are skipped over.
            taken = [int(v) for v in entry["versions"]] + [
                int(p.name) for p in model_dir.iterdir() if p.name.isdigit()]
            version = max(taken, default=0) + 1
            staging = model_dir / f".incoming-{uuid.uuid4().hex}"
            target = model_dir / str(version)
            try:
                _copy_checkpoint(Path(source), staging)
                verify_checkpoint(staging)  # what was copied is what was verified
                os.rename(staging, target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            entry["versions"][str(version)] = {
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "job_id": job_id, "note": note, **summary}
            if entry["default"] is None or make_default:
                entry["default"] = version
            try:
                self._write(document)
            except BaseException:
                # registry.json still lists the old state (written by rename); drop the
                # directory too, so no unregistered copy is left behind.
                shutil.rmtree(target, ignore_errors=True)
                raise
            return version

    def set_default(self, name: str, version: int) -> dict[str, Any]:
        with self._locked() as document:
            entry = document["models"].get(name)
            if entry is None:
                raise UnknownModel(f"unknown model {name!r}")
            if str(version) not in entry["versions"]:
                raise UnknownModel(f"model {name!r} has no version {version}")
            try:  # a reload that fails keeps the current default (as Triton does)
                verify_checkpoint(self.path(name, version))
            except RegistryError as exc:
                raise CorruptCheckpoint(
                    f"model {name}:{version} cannot be served, the default stays "
                    f"{name}:{entry['default']}: {exc}") from None
            entry["default"] = int(version)
            self._write(document)
            return entry

    def seed(self, name: str, source: Path | None) -> int | None:
        """Register ``source`` as the first version of ``name`` if that name is absent."""
        if source is None or not (Path(source) / MANIFEST).is_file():
            return None
        if name in self.read()["models"]:
            return None
        with self._locked() as document:
            if name in document["models"]:
                return None
        return self.register(name, Path(source), note=f"seeded from {source}")


def _copy_checkpoint(source: Path, target: Path) -> None:
    """Hard-link checkpoint files (they are immutable once written) or copy them."""
    target.mkdir(parents=True)
    for item in source.iterdir():
        if not item.is_file() or item.name.startswith("."):
            continue
        try:
            os.link(item, target / item.name)
        except OSError:
            shutil.copy2(item, target / item.name)
    # checkpoint.json is rewritten in place by a resumed run (update_calibration), so it is
    # copied, never linked.
    manifest = target / MANIFEST
    if manifest.exists():
        data = (source / MANIFEST).read_bytes()
        manifest.unlink()
        atomic_write_bytes(manifest, data)
