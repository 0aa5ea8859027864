"""Workers load a (name, version) once and keep it; least recently used ones go first."""

from __future__ import annotations

from core.registry import ModelRegistry
from worker.cache import ModelCache


def test_loads_once_per_version_and_evicts_lru(tmp_path, tiny_checkpoint):
    registry = ModelRegistry(tmp_path / "models")
    for _ in range(3):
        registry.register("demo", tiny_checkpoint)
    cache = ModelCache(registry, device="cpu", capacity=2)
    first = cache.get("demo", 1)
    assert cache.get("demo", 1) is first and cache.loads == 1
    assert first.path == registry.path("demo", 1) and first.calibration is not None
    cache.get("demo", 2)
    cache.get("demo", 1)  # touch 1: 2 is now least recent
    cache.get("demo", 3)
    assert ("demo", 1) in cache and ("demo", 3) in cache and ("demo", 2) not in cache
    assert cache.loads == 3
    assert cache.get("demo", 1) is first
