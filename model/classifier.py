"""The small CNN classifier whose feature space measures sample quality (``debm eval-samples``).

FID needs an Inception network that cannot be downloaded here, and Inception features of
28x28 digits say little anyway.  Instead the project trains its own classifier, the way
MNIST sample-quality papers do: a three-layer CNN trained on the **train split of the
checkpoint's own dataset** (``pipeline.load_splits``: same fixed seed as the model's training,
so the held-out images the samples are compared with were seen by neither network).

    features(x)       the 64-d penultimate layer (after ReLU): Frechet distance lives here
    probabilities(x)  softmax over the classes: confidence and class histogram

It works at the model's image size and channels (adaptive pooling makes the layers size-
agnostic), so 8x8 test models, 28x28 MNIST and 32x32 RGB all go through the same code.  It
needs labels: MNIST-5k, digits8x8, CIFAR-10 batches, SVHN and .npz files with ``y`` have them;
folders and zips do not, and eval-samples refuses those with a clear error.  On CIFAR-10 the
same small CNN reaches far lower accuracy than on digits (the report states it), so its
Frechet distance is a coarse proxy, not comparable with published Inception FIDs.

Training is seeded (initialisation under a forked RNG, batches from an explicit generator)
and the result is cached as safetensors + JSON under a key hashing the settings and the exact
train/test data, so every eval-samples run after the first reuses the same network.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from safetensors.torch import save as serialize_tensors
from torch import nn
from torch.nn import functional as F

from .data import DatasetError, ImageDataset, to_model_range
from .formats.config import ExperimentConfig
from .formats.files import atomic_write_bytes, atomic_write_json

CACHE_ENV = "DEBM_CACHE_DIR"
CODE_VERSION = 2  # bump when DigitCNN or the training loop changes: old caches no longer apply
# CPU training runs on one thread: torch's CPU convolution reductions depend on the thread
# count (a 2-thread run reached held-out accuracy 0.976, a 1-thread run 0.974), so without a
# fixed count the classifier, and every Frechet distance measured with it, would differ
# between machines with the same seed.
TRAINING_THREADS = 1


@dataclass(frozen=True)
class ClassifierSettings:
    widths: tuple[int, int, int] = (16, 32, 64)  # conv channels at full, 1/2 and 1/4 size
    feature_dim: int = 64  # penultimate layer, the Frechet-distance feature space
    epochs: int = 10  # ~15 s on MNIST-5k on one CPU thread; held-out accuracy 0.974
    batch_size: int = 64
    lr: float = 2e-3  # Adam
    seed: int = 0


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "debm")


class DigitCNN(nn.Module):
    """conv-relu-pool x2, conv-relu, adaptive pool to 3x3, linear-relu (features), linear."""

    def __init__(self, channels: int, num_classes: int, settings: ClassifierSettings):
        super().__init__()
        w1, w2, w3 = settings.widths
        self.body = nn.Sequential(
            nn.Conv2d(channels, w1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w1, w2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w2, w3, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(3),
            nn.Flatten(), nn.Linear(w3 * 9, settings.feature_dim), nn.ReLU())
        self.head = nn.Linear(settings.feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return features, self.head(features)


@dataclass
class FeatureClassifier:
    net: DigitCNN
    num_classes: int
    accuracy: float  # on the held-out split
    test_size: int
    settings: ClassifierSettings
    key: str
    path: Path | None = None
    from_cache: bool = False
    train_seconds: float = 0.0

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @torch.no_grad()
    def features_and_probabilities(self, x: torch.Tensor, *, batch_size: int = 512
                                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, feature_dim) features and (N, classes) softmax of float images in [-1, 1]."""
        self.net.eval()
        feats, probs = [], []
        for start in range(0, x.shape[0], batch_size):
            f, logits = self.net(x[start:start + batch_size].to(self.device).float())
            feats.append(f.cpu())
            probs.append(F.softmax(logits, dim=1).cpu())
        if not feats:
            return torch.zeros((0, self.settings.feature_dim)), torch.zeros((0,
                                                                              self.num_classes))
        return torch.cat(feats), torch.cat(probs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_and_probabilities(x)[0]

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_and_probabilities(x)[1]

    def describe(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "test_size": self.test_size,
                "num_classes": self.num_classes, "feature_dim": self.settings.feature_dim,
                "settings": asdict(self.settings), "key": self.key,
                "path": str(self.path) if self.path else None, "from_cache": self.from_cache,
                "train_seconds": self.train_seconds}


def _require_labels(dataset: ImageDataset, role: str) -> torch.Tensor:
    if dataset.labels is None:
        raise DatasetError(
            f"{dataset.name or 'the dataset'}: eval-samples measures samples in the feature "
            f"space of a classifier trained on class labels, and the {role} split has none; "
            "use a labelled dataset (mnist5k, digits8x8, CIFAR-10 batches, SVHN .mat, or .npz "
            "with a 'y' array)")
    return dataset.labels.long()


def cache_key(train: ImageDataset, test: ImageDataset, *, settings: ClassifierSettings,
              num_classes: int) -> str:
    """SHA-256 over the settings, the code version and the exact images and labels of both
    splits: a different split, size, channel count or dataset gives a different network."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"settings": asdict(settings), "code": CODE_VERSION,
                              "classes": num_classes, "train_shape": list(train.images.shape),
                              "test_shape": list(test.images.shape)},
                             sort_keys=True).encode())
    for split in (train, test):
        digest.update(split.images.contiguous().numpy().tobytes())
        digest.update(_require_labels(split, "train").numpy().tobytes())
    return digest.hexdigest()


def train_network(train: ImageDataset, *, channels: int, num_classes: int,
                  settings: ClassifierSettings, device: torch.device | str = "cpu") -> DigitCNN:
    """Adam on cross-entropy over ``settings.epochs`` shuffled passes; seeded end to end."""
    labels = _require_labels(train, "train")
    # Parameter initialisation uses the global RNG inside nn.Module constructors; fork it so
    # the seed fixes the network without changing the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        net = DigitCNN(channels, num_classes, settings)
    net.to(device).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr)
    generator = torch.Generator().manual_seed(settings.seed)
    images = train.images
    threads = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        torch.set_num_threads(TRAINING_THREADS)
    try:
        for _ in range(settings.epochs):
            order = torch.randperm(len(train), generator=generator)
            for start in range(0, len(train), settings.batch_size):
                index = order[start:start + settings.batch_size]
                x = to_model_range(images[index]).to(device)
                _, logits = net(x)
                loss = F.cross_entropy(logits, labels[index].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return net.eval()


@torch.no_grad()
def test_accuracy(net: DigitCNN, test: ImageDataset, *, device: torch.device | str) -> float:
    labels = _require_labels(test, "held-out")
    correct = 0
    for start in range(0, len(test), 512):
        _, logits = net(to_model_range(test.images[start:start + 512]).to(device))
        correct += int((logits.argmax(1).cpu() == labels[start:start + 512]).sum())
    return correct / max(1, len(test))


def load_or_train(train: ImageDataset, test: ImageDataset, *,
                  settings: ClassifierSettings | None = None,
                  cache_dir: str | Path | None = None,
                  device: torch.device | str = "cpu") -> FeatureClassifier:
    """The cached classifier for these splits and settings, training (and caching) it first
    when there is none.  A corrupt cache entry is retrained and overwritten."""
    settings = settings or ClassifierSettings()
    labels = torch.cat([_require_labels(train, "train"), _require_labels(test, "held-out")])
    num_classes = max(2, int(labels.max()) + 1)
    channels = int(train.images.shape[1])
    key = cache_key(train, test, settings=settings, num_classes=num_classes)
    directory = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    weights_path = directory / f"classifier-{key[:24]}.safetensors"
    meta_path = weights_path.with_suffix(".json")

    if weights_path.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("key") == key:
                net = DigitCNN(channels, num_classes, settings)
                net.load_state_dict(load_file(str(weights_path)), strict=True)
                return FeatureClassifier(net.to(device).eval(), num_classes,
                                         float(meta["accuracy"]), int(meta["test_size"]),
                                         settings, key, weights_path, from_cache=True,
                                         train_seconds=float(meta.get("train_seconds", 0)))
        except (OSError, ValueError, KeyError, RuntimeError):
            pass  # unreadable or stale entry: retrain below and replace it

    started = time.perf_counter()
    net = train_network(train, channels=channels, num_classes=num_classes, settings=settings,
                        device=device)
    seconds = round(time.perf_counter() - started, 1)
    accuracy = test_accuracy(net, test, device=device)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(weights_path, serialize_tensors(
        {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}))
    # The JSON is written last: an entry without it (a crash in between) is simply retrained.
    atomic_write_json(meta_path, {"key": key, "accuracy": accuracy, "test_size": len(test),
                                  "train_size": len(train), "num_classes": num_classes,
                                  "settings": asdict(settings), "code_version": CODE_VERSION,
                                  "train_seconds": seconds, "dataset": train.name,
                                  "torch": torch.__version__})
    return FeatureClassifier(net, num_classes, accuracy, len(test), settings, key, weights_path,
                             from_cache=False, train_seconds=seconds)


def classifier_for(config: ExperimentConfig, splits: tuple[ImageDataset, ImageDataset], *,
                   settings: ClassifierSettings | None = None,
                   cache_dir: str | Path | None = None,
                   device: torch.device | str = "cpu") -> FeatureClassifier:
    """The classifier for a checkpoint's config, given its (train, held-out) splits from
    ``pipeline.load_splits(config)``."""
    train, test = splits
    if len(test) == 0:
        raise DatasetError("eval-samples needs a held-out split; data.holdout_fraction is 0")
    expected = (config.network.channels, config.network.image_size, config.network.image_size)
    if tuple(train.images.shape[1:]) != expected:
        raise DatasetError(f"splits have images {tuple(train.images.shape[1:])}, the model "
                           f"{expected}")
    return load_or_train(train, test, settings=settings, cache_dir=cache_dir, device=device)
