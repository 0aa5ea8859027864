"""Dataset files (a folder or zip of images, an .npz of arrays) loaded at the model's size.

Memory is bounded by the result, not by the files: the output array (N, C, S, S) is allocated
once, after its size is checked against ``max_bytes``, and filled as the files are read.
Images are decoded one at a time, shrunk while decoding (model.formats.imagefile) and conformed to the
model's size before the next is read; .npz arrays are streamed from the archive in chunks of
``CHUNK_BYTES``, never loaded whole.  So the peak beyond the result is one decoded image or one
chunk, whatever the dataset holds.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from .formats.archives import (IMAGE_ARRAY_KEYS, IMAGE_SUFFIXES, LABEL_ARRAY_KEYS, MAX_ZIP_MEMBERS,
                       MAX_ZIP_UNCOMPRESSED, DatasetError, check_zip_member,
                       is_metadata_member, npy_layout_problem, pixel_value_scale)
from .conform import conform
from .formats.imagefile import ImageRejected, decode_image, fit_to_model

CHUNK_BYTES = 8 << 20  # raw .npz bytes converted at once


def dataset_bytes(count: int, channels: int, image_size: int) -> int:
    """Bytes of a dataset held at the model's size (uint8 N x C x S x S)."""
    return count * channels * image_size * image_size


def _allocate(count: int, *, image_size: int, channels: int, max_bytes: int | None,
              source: str) -> np.ndarray:
    if count < 1:
        raise DatasetError(f"{source}: no images found")
    size = dataset_bytes(count, channels, image_size)
    if max_bytes is not None and size > max_bytes:
        raise DatasetError(f"{source}: {count} images of {channels}x{image_size}x{image_size} "
                           f"take {size} bytes; the worker's budget allows {max_bytes}",
                           kind="too_large")
    return np.empty((count, channels, image_size, image_size), dtype=np.uint8)


def _fill_from_files(items: Iterable[tuple[str, Callable[[], bytes]]], count: int, *,
                     image_size: int, channels: int, max_pixels: int, max_bytes: int | None,
                     source: str) -> np.ndarray:
    out = _allocate(count, image_size=image_size, channels=channels, max_bytes=max_bytes,
                    source=source)
    n = 0
    for label, read in items:
        try:
            image = decode_image(read(), max_pixels=max_pixels, shrink_to=image_size,
                                 allow_alpha=False).image
        except ImageRejected as exc:
            raise DatasetError(f"{label}: {exc}") from None
        # The same colour conversion and resize as a scored file, so a threshold calibrated
        # on a folder of images holds for the same images sent to the API.
        out[n] = fit_to_model(image, image_size=image_size, channels=channels)
        n += 1
        image.close()
        del image
    return out[:n] if n < count else out


def load_image_folder(path: Path, *, image_size: int, channels: int, max_pixels: int,
                      max_bytes: int | None = None) -> np.ndarray:
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                   and p.is_file())
    return _fill_from_files(((str(f), f.read_bytes) for f in files), len(files),
                            image_size=image_size, channels=channels, max_pixels=max_pixels,
                            max_bytes=max_bytes, source=str(path))


def load_image_zip(source: Path | bytes, *, image_size: int, channels: int, max_pixels: int,
                   max_bytes: int | None = None,
                   max_uncompressed: int = MAX_ZIP_UNCOMPRESSED) -> np.ndarray:
    label = str(source) if isinstance(source, Path) else "upload"
    try:
        archive = zipfile.ZipFile(source if isinstance(source, Path) else io.BytesIO(source))
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(f"{label}: not a readable zip file ({exc})") from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if len(members) > MAX_ZIP_MEMBERS:
            raise DatasetError(f"{label}: {len(members)} files; the limit is {MAX_ZIP_MEMBERS}")
        total = sum(m.file_size for m in members)
        if total > max_uncompressed:
            raise DatasetError(f"{label}: expands to {total} bytes; the limit is "
                               f"{max_uncompressed}")
        images = []
        for member in members:  # every rule before any pixel is decoded
            check_zip_member(member)
            if is_metadata_member(member.filename):
                continue
            if Path(member.filename).suffix.lower() not in IMAGE_SUFFIXES:
                raise DatasetError(f"zip member {member.filename!r} is not a PNG, JPEG or "
                                   "WebP image")
            images.append(member)

        def reader(member: zipfile.ZipInfo) -> Callable[[], bytes]:
            def read() -> bytes:
                with archive.open(member) as handle:
                    data = handle.read(member.file_size + 1)
                if len(data) > member.file_size:
                    raise DatasetError(f"zip member {member.filename!r} is larger than declared")
                return data
            return read

        return _fill_from_files(((f"zip member {m.filename!r}", reader(m)) for m in images),
                                len(images), image_size=image_size, channels=channels,
                                max_pixels=max_pixels, max_bytes=max_bytes, source=label)


# --- arrays --------------------------------------------------------------------------------

def _layout(shape: tuple[int, ...], source: str) -> tuple[bool, bool]:
    """(grey 3-d, channels last) of an image array shape; refuses what is not images."""
    if len(shape) == 3:
        return True, False
    if len(shape) != 4:
        raise DatasetError(f"{source}: expected (N, H, W[, C]) images, got shape {shape}")
    last = shape[1] not in (1, 3) and shape[-1] in (1, 3)
    if (shape[-1] if last else shape[1]) not in (1, 3):
        raise DatasetError(f"{source}: images need 1 or 3 channels, got shape {shape}")
    return False, last


def _as_nchw(array: np.ndarray, grey: bool, last: bool) -> np.ndarray:
    if grey:
        return array[:, None]
    return array.transpose(0, 3, 1, 2) if last else array


def _check_kind(dtype: np.dtype, source: str) -> None:
    if dtype == object or dtype.hasobject:
        raise DatasetError(f"{source}: object arrays are refused (they need pickle)")
    if dtype.kind not in "uif":
        raise DatasetError(f"{source}: dtype {dtype} is not an image type")


def _to_uint8(array: np.ndarray, offset: float, scale: float) -> np.ndarray:
    if (offset, scale) == (0.0, 1.0) and array.dtype.kind in "ui":
        return array.astype(np.uint8)
    return np.clip(np.round((array.astype(np.float64) + offset) * scale), 0, 255
                   ).astype(np.uint8)


def images_from_array(array: np.ndarray, source: str) -> np.ndarray:
    """An in-memory array of (N, H, W), (N, H, W, C) or (N, C, H, W) images, uint8 in
    [0, 255] or float in [0, 1] or [-1, 1] -> uint8 (N, C, H, W); anything else is refused
    with the reason."""
    _check_kind(array.dtype, source)
    grey, last = _layout(array.shape, source)
    array = _as_nchw(array, grey, last)
    if array.shape[0] == 0 or min(array.shape[2:]) < 1:
        raise DatasetError(f"{source}: no images")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise DatasetError(f"{source}: images contain NaN or infinity")
    offset, scale = pixel_value_scale(array.dtype.kind, float(array.min()), float(array.max()),
                                      source=source)
    return _to_uint8(array, offset, scale)


def _npy_header(handle, source: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(handle)
        return np.lib.format.read_array_header_2_0(handle)
    except ValueError as exc:
        if "pickle" in str(exc) or "object" in str(exc):
            raise DatasetError(f"{source}: refused ({exc}); object arrays need pickle") from None
        raise DatasetError(f"{source}: not a valid .npy array ({exc})") from None


def _chunks(archive: zipfile.ZipFile, name: str, source: str):
    """(shape, dtype, chunks) of one .npy member; each call of ``chunks()`` streams the data
    again from the archive as (k, *shape[1:]) arrays of at most CHUNK_BYTES."""
    with archive.open(name) as handle:
        shape, fortran, dtype = _npy_header(handle, source)
    _check_kind(dtype, source)
    shape = tuple(int(n) for n in shape)
    problem = npy_layout_problem(shape, fortran)
    if problem is not None:
        raise DatasetError(f"{source}: {problem}")
    if not shape:
        raise DatasetError(f"{source}: a scalar, not an array of images")
    per_item = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize

    def chunks():
        with archive.open(name) as handle:
            _npy_header(handle, source)
            per_chunk = max(1, CHUNK_BYTES // max(per_item, 1))
            remaining = shape[0]
            while remaining:
                take = min(per_chunk, remaining)
                raw = handle.read(take * per_item)
                if len(raw) != take * per_item:
                    raise DatasetError(f"{source}: the array is truncated")
                yield np.frombuffer(raw, dtype=dtype).reshape((take,) + shape[1:])
                remaining -= take
    return shape, dtype, chunks


def load_npz(source: Path | bytes, *, image_size: int, channels: int,
             max_pixels: int = 4096 * 4096, max_bytes: int | None = None
             ) -> tuple[np.ndarray, np.ndarray | None]:
    """Images (uint8, model size) and labels of an .npz, read without pickle, in chunks.

    Two passes over the image array: the first finds its value range (which decides how
    values map to pixels, model.formats.archives.pixel_value_scale), the second converts."""
    label = str(source) if isinstance(source, Path) else "upload"
    try:
        archive = zipfile.ZipFile(source if isinstance(source, Path) else io.BytesIO(source))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DatasetError(f"{label}: not a readable .npz file ({exc})") from None
    with archive:
        names = {m.filename: m for m in archive.infolist()}
        keys = [n[:-4] for n in names if n.endswith(".npy")]
        key = next((k for k in IMAGE_ARRAY_KEYS if k in keys), None)
        if key is None:
            raise DatasetError(f"{label}: no image array; name it 'x' or 'images' "
                               f"(found {keys})")
        where = f"{label}[{key}]"
        try:
            shape, dtype, chunks = _chunks(archive, key + ".npy", where)
            grey, last = _layout(shape, where)
            count = shape[0]
            height, width = (shape[1:3] if grey or last else shape[2:4])
            if count == 0 or min(height, width) < 1:
                raise DatasetError(f"{where}: no images")
            if height * width > max_pixels:
                raise DatasetError(f"{where}: images of {width}x{height} pixels; the limit is "
                                   f"{max_pixels}", kind="too_large")
            lo, hi = np.inf, -np.inf
            for chunk in chunks():
                if dtype.kind == "f" and not np.isfinite(chunk).all():
                    raise DatasetError(f"{where}: images contain NaN or infinity")
                lo, hi = min(lo, float(chunk.min())), max(hi, float(chunk.max()))
            offset, scale = pixel_value_scale(dtype.kind, lo, hi, source=where)
            out = _allocate(count, image_size=image_size, channels=channels,
                            max_bytes=max_bytes, source=where)
            n = 0
            for chunk in chunks():
                pixels = _to_uint8(_as_nchw(chunk, grey, last), offset, scale)
                out[n:n + len(pixels)] = conform(pixels, image_size=image_size,
                                                 channels=channels).numpy()
                n += len(pixels)
            labels = None
            label_key = next((k for k in LABEL_ARRAY_KEYS if k in keys), None)
            if label_key:
                lshape, ldtype, lchunks = _chunks(archive, label_key + ".npy", label)
                if len(lshape) == 1 and lshape[0] == count and ldtype.kind in "iu":
                    labels = np.concatenate(list(lchunks())).astype(np.int64)
        except DatasetError:
            raise
        except (ValueError, zipfile.BadZipFile, OSError, EOFError, KeyError) as exc:
            raise DatasetError(f"{label}: refused ({exc})") from None
    return out, labels
