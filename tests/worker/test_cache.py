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


def test_checkpoint_files_cache_is_bounded_in_bytes_lru_and_survives_a_restart(
        tmp_path, tiny_checkpoint, s3_env):
    """The files cache of a worker on S3 (moto over HTTP): a version is downloaded once,
    the least recently used go when the bytes pass the bound, and a new cache over the same
    folder (a restarted worker) serves what is there without a download."""
    import os
    import time

    from core.artifacts.s3 import S3Store
    from core.prometheus import REGISTRY
    from tests.support.s3_server import new_bucket_name
    from worker.cache import CheckpointFiles

    store = S3Store(new_bucket_name(), "p", endpoint_url=s3_env.url)
    store.check(create=True)
    registry = ModelRegistry(store)
    for _ in range(3):
        registry.register("demo", tiny_checkpoint)
    one = sum(size for _, size in store.list("models/demo/1"))
    files = CheckpointFiles(registry, tmp_path / "cache", max_bytes=int(2.5 * one))
    first = files.path("demo", 1)
    assert files.path("demo", 1) == first and files.downloads == 1  # a hit, no download
    files.path("demo", 2)
    time.sleep(0.01)
    os.utime(first / ".cached")  # 1 used last: 2 is now the least recent
    files.path("demo", 3)  # over the bound: 2 goes
    stamps = (tmp_path / "cache").glob("checkpoints/demo/*/.cached")
    cached = sorted(stamp.parent.name for stamp in stamps)
    assert cached == ["1", "3"] and files.downloads == 3
    assert files.cached_bytes() <= int(2.5 * one)
    assert REGISTRY.get_sample_value("debm_checkpoint_cache_bytes") == files.cached_bytes()
    restarted = CheckpointFiles(registry, tmp_path / "cache", max_bytes=int(2.5 * one))
    assert restarted.path("demo", 3) == tmp_path / "cache" / "checkpoints" / "demo" / "3"
    assert restarted.downloads == 0
    loaded = ModelCache(registry, device="cpu", files=restarted).get("demo", 1)
    assert restarted.downloads == 0 and loaded.calibration is not None
