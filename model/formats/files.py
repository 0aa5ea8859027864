"""Atomic file writes, the one helper every layer uses (checkpoints, the model registry, job
results, uploads): a temp file in the same directory, fsync, then rename, so a reader sees the
old file or the new one and never half of one, and a crash leaves at most a stray temp file.

Plain file I/O on purpose: a full disk or a read-only directory surfaces as an OSError with
its errno (core.datadir.DataDir.storage_error turns that into a message)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically.  ``mode``: mkstemp makes 0600, and the API and
    the workers may run as different users."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, document: dict[str, Any]) -> None:
    """``atomic_write_bytes`` of indented, key-sorted JSON."""
    atomic_write_bytes(path, json.dumps(document, indent=2, sort_keys=True).encode())
