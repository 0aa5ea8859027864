"""Torch-free checkpoint manifest rules: read checkpoint.json and verify file checksums.

model.checkpoints builds on this; the API (which must not import torch) uses it directly to
list and vet model versions.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .errors import UserError

FORMAT = "debm-checkpoint"
FORMAT_VERSION = 1
MANIFEST = "checkpoint.json"


class CheckpointError(UserError, ValueError):
    """A checkpoint is missing, corrupt, truncated or does not fit the model."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a checkpoint (no {MANIFEST})")
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint manifest ({exc})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} manifest")
    if document.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported format version "
                              f"{document.get('format_version')}")
    return document


def checked_file(directory: Path, name: Any, document: dict[str, Any]) -> Path:
    """The path of a file the manifest lists, after its SHA-256 matched the manifest."""
    if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
        raise CheckpointError(f"{directory}: manifest names an invalid file {name!r}")
    path = directory / name
    files = document.get("files")
    expected = files.get(name) if isinstance(files, dict) else None
    if not path.is_file():
        raise CheckpointError(f"{directory}: {name} is missing")
    if expected is None or sha256_file(path) != expected:
        raise CheckpointError(f"{directory}: {name} is corrupt or truncated (checksum mismatch)")
    return path


def verify_checkpoint_files(directory: str | Path) -> dict[str, Any]:
    """Read the manifest and verify every file it lists; return the manifest."""
    directory = Path(directory)
    document = read_manifest(directory)
    files = document.get("files")
    if not isinstance(files, dict) or document.get("weights") not in files:
        raise CheckpointError(f"{directory}: the manifest lists no checksummed weights")
    for name in files:
        checked_file(directory, name, document)
    return document
