"""Torch-free rules for dataset files, shared by model.data and the API's upload checks.

The API process must not import torch, so the rules that decide whether an archive member is
safe live here rather than in model/data.py.
"""

from __future__ import annotations

import zipfile
from pathlib import PurePosixPath

BUILTIN_DATASETS = ("mnist5k", "digits8x8")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})
ARCHIVE_SUFFIXES = frozenset({".zip", ".gz", ".tar", ".tgz", ".bz2", ".xz", ".7z", ".rar",
                              ".npz"})
MAX_ZIP_MEMBERS = 200_000
MAX_ZIP_UNCOMPRESSED = 2 * 1024 ** 3
MAX_ZIP_RATIO = 200  # a member expanding more than this is treated as a zip bomb


class DatasetError(ValueError):
    """A dataset cannot be read; the message names the file and the problem.

    ``kind`` is "invalid" (malformed or unsafe content) or "too_large" (size limits)."""

    def __init__(self, message: str, *, kind: str = "invalid"):
        super().__init__(message)
        self.kind = kind


def check_zip_member(info: zipfile.ZipInfo) -> None:
    """Refuse path traversal, absolute names, nested archives, encryption and zip bombs."""
    name = info.filename
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or ".." in parts or ":" in name:
        raise DatasetError(f"zip member {name!r} has an unsafe path")
    if PurePosixPath(name).suffix.lower() in ARCHIVE_SUFFIXES:
        raise DatasetError(f"zip member {name!r} is a nested archive; archives inside "
                           "archives are not accepted")
    if info.flag_bits & 0x1:
        raise DatasetError(f"zip member {name!r} is encrypted")
    if info.compress_size == 0 and info.file_size > 0:
        raise DatasetError(f"zip member {name!r} declares no compressed size", kind="too_large")
    if info.compress_size and info.file_size / info.compress_size > MAX_ZIP_RATIO:
        raise DatasetError(f"zip member {name!r} expands {info.file_size // info.compress_size}x;"
                           " refused as a possible zip bomb", kind="too_large")


def is_metadata_member(name: str) -> bool:
    """OS litter (macOS resource forks, dot files) that is skipped rather than refused."""
    return PurePosixPath(name).name.startswith(".") or "__MACOSX" in name
