"""Loaded checkpoints, cached per worker process by (name, version).

Versions are immutable (core.registry), so a cached version never goes stale; the cache
only bounds memory (least recently used out).  It is created lazily inside the process that
runs tasks, i.e. after the prefork pool forked, so the parent never touches CUDA.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

from core.prometheus import MODEL_LOAD_SECONDS
from core.registry import ModelRegistry


class ModelCache:
    def __init__(self, registry: ModelRegistry, *, device: str = "auto", capacity: int = 2,
                 options=None):
        self.registry, self.device_spec, self.capacity = registry, device, capacity
        self.options = options  # model.pipeline.InferenceOptions of the serving models
        self.device = None  # resolved on the first load, in the process that runs tasks
        self._items: OrderedDict[tuple[str, int], Any] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # how many times a checkpoint was read from disk (tests, logs)

    def get(self, name: str, version: int):
        from model.checkpoints import load_checkpoint
        from model.pipeline import prepare_for_inference, resolve_device

        key = (name, int(version))
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            if self.device is None:
                self.device = resolve_device(self.device_spec)
            started = time.perf_counter()
            loaded = prepare_for_inference(
                load_checkpoint(self.registry.path(name, int(version)), device=self.device),
                self.options)
            MODEL_LOAD_SECONDS.labels(f"{name}:{version}").observe(
                time.perf_counter() - started)
            self.loads += 1
            self._items[key] = loaded
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
            return loaded

    def __contains__(self, key: tuple[str, int]) -> bool:
        return key in self._items
