"""Torch-free validation of uploaded datasets (a zip of images, or an .npz of arrays).

The API runs these checks before a dataset is stored, so a bad upload is answered with a 4xx
naming the problem; the training worker reads the file again through model.data, which
repeats its own checks (model.data imports torch, so the API cannot use it).  The member rules
are model.formats.archives' (torch-free, shared with model.data): no path traversal, no nested
archives, no zip bombs, every member a PNG/JPEG/WebP image that model.formats.imagefile accepts.
.npz files are read without pickle, one array header and then the data in chunks, so a large
array never sits in API memory whole.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from model.formats.archives import (IMAGE_ARRAY_KEYS, IMAGE_SUFFIXES,
                                    MAX_ZIP_UNCOMPRESSED, DatasetError,
                                    check_zip_member, is_metadata_member,
                                    npy_layout_problem, pixel_value_scale)
from model.formats.imagefile import ImageRejected, decode_image, read_header

CHUNK_BYTES = 8 << 20
# An .npz member is a flat array name; anything else (folders, traversal) is refused.
NPZ_MEMBER_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}\.npy$")
STATUS_OF_KIND = {"invalid": 422, "too_large": 413, "unsupported": 415}


class DatasetRejected(DatasetError):
    """model.formats.archives.DatasetError with the HTTP status the API answers: kind "invalid"
    (422), "too_large" (413) or, for the API only, "unsupported" (415: not a format we
    accept)."""

    def __init__(self, message: str, *, kind: str = "invalid"):
        super().__init__(message, kind=kind)

    @property
    def status(self) -> int:
        return STATUS_OF_KIND.get(self.kind, 422)

    @classmethod
    def wrap(cls, exc: DatasetError) -> "DatasetRejected":
        return exc if isinstance(exc, cls) else cls(str(exc), kind=exc.kind)


@dataclass
class DatasetSummary:
    format: str  # zip | npz
    count: int
    channels: int
    height: int
    width: int


def detect_format(head: bytes, filename: str) -> str:
    """Both formats are zip containers; an .npz holds .npy members."""
    if not head.startswith(b"PK"):
        raise DatasetRejected("not a zip or .npz file (upload a zip of PNG/JPEG/WebP images or "
                              "an .npz of image arrays)", kind="unsupported")
    return "npz" if filename.lower().endswith(".npz") else "zip"


def _open(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise DatasetRejected(f"not a readable zip file ({exc})") from None


def _members(archive: zipfile.ZipFile, *, max_members: int,
             max_uncompressed: int = MAX_ZIP_UNCOMPRESSED) -> list[zipfile.ZipInfo]:
    members = [m for m in archive.infolist() if not m.is_dir()]
    if len(members) > max_members:
        raise DatasetRejected(f"{len(members)} files; the limit is {max_members}",
                              kind="too_large")
    total = sum(m.file_size for m in members)
    if total > max_uncompressed:
        raise DatasetRejected(f"expands to {total} bytes; the limit is {max_uncompressed}",
                              kind="too_large")
    return members


def check_image_zip(path: Path, *, max_images: int, max_pixels: int,
                    max_uncompressed: int = MAX_ZIP_UNCOMPRESSED) -> DatasetSummary:
    with _open(path) as archive:
        members = _members(archive, max_members=max_images + 1000,
                           max_uncompressed=min(max_uncompressed, MAX_ZIP_UNCOMPRESSED))
        count, colour, first = 0, False, None
        for member in members:  # the same rules as model.data.load_image_zip
            try:
                check_zip_member(member)
            except DatasetError as exc:
                raise DatasetRejected.wrap(exc) from None
        for member in members:
            if is_metadata_member(member.filename):
                continue  # OS metadata, skipped by the loader too
            if PurePosixPath(member.filename).suffix.lower() not in IMAGE_SUFFIXES:
                raise DatasetRejected(f"zip member {member.filename!r} is not a PNG, JPEG or "
                                      "WebP image", kind="unsupported")
            try:
                with archive.open(member) as handle:
                    data = handle.read(member.file_size + 1)
            except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
                raise DatasetRejected(f"zip member {member.filename!r} is unreadable "
                                      f"({exc})") from None
            if len(data) > member.file_size:
                raise DatasetRejected(f"zip member {member.filename!r} is larger than declared")
            try:
                header = read_header(data, max_pixels=max_pixels)
                # decoded only to prove it whole: shrunk while decoding, dropped at once
                image = decode_image(data, max_pixels=max_pixels, shrink_to=256,
                                     allow_alpha=False).image
            except ImageRejected as exc:
                raise DatasetRejected(f"zip member {member.filename!r}: {exc}",
                                      kind=_kind_of(exc)) from None
            count += 1
            if count > max_images:
                raise DatasetRejected(f"more than {max_images} images; the limit is "
                                      f"{max_images}", kind="too_large")
            colour = colour or image.mode != "L"
            first = first or (header.width, header.height)
            del image
    if count == 0:
        raise DatasetRejected("the zip holds no images")
    return DatasetSummary("zip", count, 3 if colour else 1, first[1], first[0])


def _kind_of(exc: ImageRejected) -> str:
    return {"too_large": "too_large", "unsupported_format": "unsupported"}.get(exc.kind,
                                                                                "invalid")


def check_npz(path: Path, *, max_images: int, max_pixels: int, max_uncompressed: int
              ) -> DatasetSummary:
    """Arrays of constant images compress far beyond any zip-bomb ratio, so an .npz is
    bounded by its total uncompressed size instead (the worker loads it whole)."""
    with _open(path) as archive:
        members = {m.filename: m for m in _members(archive, max_members=64,
                                                   max_uncompressed=max_uncompressed)}
        for name, member in members.items():
            # Not check_zip_member: arrays of constant images legitimately compress beyond
            # any zip-bomb ratio, so an .npz is bounded by its total size instead.
            if not NPZ_MEMBER_RE.match(name):
                raise DatasetRejected(f"npz member {name!r} is not a flat .npy array name")
            if member.flag_bits & 0x1:
                raise DatasetRejected(f"npz member {name!r} is encrypted")
        keys = [n[:-4] for n in members if n.endswith(".npy")]
        key = next((k for k in IMAGE_ARRAY_KEYS if k in keys), None)  # model.data's order
        if key is None:
            raise DatasetRejected(f"no image array; name it 'x' or 'images' (found {keys})")
        with archive.open(members[key + ".npy"]) as handle:
            try:
                version = np.lib.format.read_magic(handle)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
            except ValueError as exc:
                raise DatasetRejected(f"array {key!r} has no valid .npy header ({exc})") from None
            if dtype.hasobject:
                raise DatasetRejected(f"array {key!r} holds Python objects; refused (they "
                                      "need pickle)")
            problem = npy_layout_problem(tuple(shape), fortran)
            if problem is not None:  # the loader's rule too (model.formats.archives)
                raise DatasetRejected(f"array {key!r}: {problem}")
            if dtype.kind not in "uif" or dtype.itemsize > 8:
                raise DatasetRejected(f"array {key!r} has dtype {dtype}, not an image type")
            summary = _check_shape(key, shape)
            if summary.count > max_images:
                raise DatasetRejected(f"{summary.count} images; the limit is {max_images}",
                                      kind="too_large")
            if summary.height * summary.width > max_pixels:
                raise DatasetRejected(f"images of {summary.width}x{summary.height} pixels; the "
                                      f"limit is {max_pixels}", kind="too_large")
            _check_values(handle, key, dtype, int(np.prod(shape)))
    return summary


def _check_shape(key: str, shape: tuple[int, ...]) -> DatasetSummary:
    if len(shape) == 3:
        n, h, w = shape
        c = 1
    elif len(shape) == 4:
        if shape[1] in (1, 3):
            n, c, h, w = shape
        elif shape[3] in (1, 3):
            n, h, w, c = shape
        else:
            raise DatasetRejected(f"array {key!r} of shape {shape}: images need 1 or 3 channels")
    else:
        raise DatasetRejected(f"array {key!r} has shape {shape}; expected (N, H, W), "
                              "(N, H, W, C) or (N, C, H, W)")
    if n < 1 or h < 1 or w < 1:
        raise DatasetRejected(f"array {key!r} of shape {shape} holds no images")
    return DatasetSummary("npz", int(n), int(c), int(h), int(w))


def _check_values(handle, key: str, dtype: np.dtype, count: int) -> None:
    """Stream the data in chunks: finite, and within a range model.data accepts
    (model.formats.archives.pixel_value_scale, the rule model.data converts pixels with)."""
    per_chunk = max(1, CHUNK_BYTES // dtype.itemsize)
    remaining, lo, hi = count, np.inf, -np.inf
    while remaining:
        take = min(per_chunk, remaining)
        raw = handle.read(take * dtype.itemsize)
        if len(raw) != take * dtype.itemsize:
            raise DatasetRejected(f"array {key!r} is truncated")
        values = np.frombuffer(raw, dtype=dtype)
        if dtype.kind == "f" and not np.isfinite(values).all():
            raise DatasetRejected(f"array {key!r} contains NaN or infinity")
        lo, hi = min(lo, float(values.min())), max(hi, float(values.max()))
        remaining -= take
    try:
        pixel_value_scale(dtype.kind, lo, hi, source=f"array {key!r}")
    except DatasetError as exc:
        raise DatasetRejected.wrap(exc) from None
