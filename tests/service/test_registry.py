"""The model registry: versions, defaults, idempotent registration, concurrent writers."""

from __future__ import annotations

import json
import multiprocessing

import pytest

from service.registry import ModelRegistry, RegistryError, UnknownModel, parse_model_spec


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
