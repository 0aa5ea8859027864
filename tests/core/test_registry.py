"""The model registry: versions, defaults, idempotent registration, concurrent writers."""

from __future__ import annotations

import json
import multiprocessing

import pytest

from core.registry import (CorruptCheckpoint, ModelRegistry, RegistryError,
                           UnknownModel, parse_model_spec)


def test_register_versions_and_defaults(tmp_path, tiny_checkpoint):
    registry = ModelRegistry(tmp_path / "models")
    assert registry.register("demo", tiny_checkpoint) == 1
    assert registry.register("demo", tiny_checkpoint) == 2
    assert registry.resolve(None, default_model="demo") == ("demo", 1)  # first stays default
    assert registry.resolve("demo:2", default_model="x") == ("demo", 2)
    registry.set_default("demo", 2)
    assert registry.resolve("demo", default_model="x") == ("demo", 2)
    assert (registry.path("demo", 2) / "checkpoint.json").is_file()
    with pytest.raises(UnknownModel):
        registry.resolve("demo:3", default_model="demo")
    with pytest.raises(UnknownModel):
        registry.set_default("demo", 5)
    with pytest.raises(RegistryError):
        registry.register("../evil", tiny_checkpoint)
    with pytest.raises(RegistryError):
        registry.register("other", tmp_path)  # not a checkpoint


def test_registration_is_idempotent_per_job(tmp_path, tiny_checkpoint):
    registry = ModelRegistry(tmp_path / "models")
    job = "a" * 32
    assert registry.register("m", tiny_checkpoint, job_id=job) == 1
    assert registry.register("m", tiny_checkpoint, job_id=job) == 1
    assert registry.register("m", tiny_checkpoint, job_id="b" * 32) == 2
    assert sorted(registry.read()["models"]["m"]["versions"]) == ["1", "2"]


def test_seed_only_when_absent(tmp_path, tiny_checkpoint):
    registry = ModelRegistry(tmp_path / "models")
    assert registry.seed("demo", tiny_checkpoint) == 1
    assert registry.seed("demo", tiny_checkpoint) is None
    assert registry.seed("other", tmp_path / "missing") is None


def test_model_specs():
    assert parse_model_spec("demo") == ("demo", None)
    assert parse_model_spec("demo:12") == ("demo", 12)
    for bad in ("Demo", "demo:0", "demo:x", "../x", "", "demo:1:2"):
        with pytest.raises(RegistryError):
            parse_model_spec(bad)


def _register_many(root, source, name, count, out):
    registry = ModelRegistry(root)
    out.put([registry.register(name, source) for _ in range(count)])


def test_concurrent_processes_get_distinct_versions(tmp_path, tiny_checkpoint):
    root = tmp_path / "models"
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_register_many, args=(root, tiny_checkpoint, "m", 4, out))
             for _ in range(3)]
    for p in procs:
        p.start()
    versions = sorted(v for _ in procs for v in out.get(timeout=120))
    for p in procs:
        p.join(30)
    assert versions == list(range(1, 13))
    document = json.loads((root / "registry.json").read_text())
    assert sorted(map(int, document["models"]["m"]["versions"])) == list(range(1, 13))


def _replace(path, data: bytes) -> None:
    """Registered files are hard links to the session's checkpoint: replace, never modify."""
    path.unlink()
    path.write_bytes(data)


def test_corrupt_versions_are_refused_with_the_reason(tmp_path, tiny_checkpoint):
    registry = ModelRegistry(tmp_path / "models")
    for _ in range(4):
        registry.register("demo", tiny_checkpoint)
    manifest = json.loads((tiny_checkpoint / "checkpoint.json").read_text())
    weights = registry.path("demo", 2) / manifest["weights"]
    _replace(weights, weights.read_bytes()[:100])
    (registry.path("demo", 3) / manifest["weights"]).unlink()
    _replace(registry.path("demo", 4) / "checkpoint.json", b'{"format": "debm-checkp')
    registry.verify("demo", 1)
    for version, words in ((2, "corrupt or truncated (checksum mismatch)"),
                           (3, "is missing"), (4, "unreadable checkpoint manifest")):
        with pytest.raises(CorruptCheckpoint, match=r"cannot be served") as info:
            registry.verify("demo", version)
        assert words in str(info.value)
        with pytest.raises(CorruptCheckpoint, match=r"the default stays demo:1"):
            registry.set_default("demo", version)
    assert registry.resolve("demo", default_model="demo") == ("demo", 1)
    # Registering a copy of a corrupt directory is refused too; a non-checkpoint is not corrupt.
    with pytest.raises(CorruptCheckpoint, match=r"not registered: .*checksum mismatch"):
        registry.register("other", registry.path("demo", 2))
    with pytest.raises(RegistryError, match=r"not a checkpoint") as info:
        registry.register("other", tmp_path)
    assert not isinstance(info.value, CorruptCheckpoint)


def test_verification_is_cached_until_a_file_changes(tmp_path, tiny_checkpoint, monkeypatch):
    import model.formats.manifest

    hashed = []
    real = model.formats.manifest.sha256_file
    monkeypatch.setattr(model.formats.manifest, "sha256_file",
                        lambda path: hashed.append(path.name) or real(path))
    registry = ModelRegistry(tmp_path / "models")
    registry.register("demo", tiny_checkpoint)
    files = json.loads((tiny_checkpoint / "checkpoint.json").read_text())["files"]
    # The registered copy is hashed where it lies, at registration ...
    assert set(hashed) == set(files)
    hashed.clear()
    registry.verify("demo", 1)
    registry.verify("demo", 1)
    registry.resolve_servable("demo", default_model="demo")
    assert hashed == []  # ... and not again while nothing changed
    weights = registry.path("demo", 1) / json.loads(
        (tiny_checkpoint / "checkpoint.json").read_text())["weights"]
    data = weights.read_bytes()
    _replace(weights, data[:-1] + bytes([data[-1] ^ 1]))  # same size, new mtime
    with pytest.raises(CorruptCheckpoint, match="checksum mismatch"):
        registry.verify("demo", 1)
