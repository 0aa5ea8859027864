"""Torch-free rules for dataset files, shared by model.data and the API's upload checks.

The API process must not import torch, so the rules that decide whether an archive member is
safe live here rather than in model/data.py.
"""

from __future__ import annotations

import zipfile
from pathlib import PurePosixPath

from .errors import UserError

BUILTIN_DATASETS = ("mnist5k", "digits8x8")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})
ARCHIVE_SUFFIXES = frozenset({".zip", ".gz", ".tar", ".tgz", ".bz2", ".xz", ".7z", ".rar",
                              ".npz"})
MAX_ZIP_MEMBERS = 200_000
MAX_ZIP_UNCOMPRESSED = 2 * 1024 ** 3
MAX_ZIP_RATIO = 200  # a member expanding more than this is treated as a zip bomb


# .npz archives: the first of these names present holds the images, the next the labels.
IMAGE_ARRAY_KEYS = ("x", "images", "X", "arr_0")
LABEL_ARRAY_KEYS = ("y", "labels", "arr_1")


def npy_layout_problem(shape: tuple[int, ...], fortran_order: bool) -> str | None:
    """The one rule for the memory layout of an .npz array, applied by the API's upload
    check (service.dataset_check) and by the worker's loader (model.loaders) alike, so an
    upload the API accepts is one the loader reads.  Only C order (row-major) for arrays of
    more than one dimension: the loader streams images one slice of the first axis at a
    time, which a Fortran-ordered file does not store contiguously (reading it would need
    the whole array in memory).  None when the layout is accepted."""
    if fortran_order and len(shape) > 1:
        return ("Fortran-ordered arrays are not accepted; save np.ascontiguousarray(x) "
                "(C order) instead")
    return None


class DatasetError(UserError, ValueError):
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


def pixel_value_scale(kind: str, lo: float, hi: float, *, source: str) -> tuple[float, float]:
    """How array values map to uint8 pixels: returns (offset, scale) with
    pixel = (value + offset) * scale, or raises DatasetError naming the range.

    Integers must lie in 0..255.  Floats in [-1, 1] with negatives are the model's range,
    floats in [0, 1] are unit intensities, other floats in [0, 255] are already pixels."""
    if kind in "ui":
        if lo < 0 or hi > 255:
            raise DatasetError(f"{source}: integer pixel values span [{lo:g}, {hi:g}]; "
                               "expected 0..255")
        return 0.0, 1.0
    if kind != "f":
        raise DatasetError(f"{source}: dtype kind {kind!r} is not an image type")
    if lo >= -1.0 - 1e-6 and hi <= 1.0 + 1e-6 and lo < 0:
        return 1.0, 127.5
    if lo >= 0 and hi <= 1.0 + 1e-6:
        return 0.0, 255.0
    if lo >= 0 and hi <= 255:
        return 0.0, 1.0
    raise DatasetError(f"{source}: float pixel values span [{lo:g}, {hi:g}]; expected [0, 1], "
                       "[-1, 1] or [0, 255]")
