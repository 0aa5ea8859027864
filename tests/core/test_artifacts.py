"""Both artifact backends (core.artifacts) against real storage: the data directory, and
moto's S3 server over HTTP."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from core.artifacts import (ArtifactMissing, ArtifactsMisconfigured, ArtifactsUnavailable,
                            check_key)
from core.artifacts.local import LocalStore
from core.artifacts.s3 import S3Store
from core.prometheus import REGISTRY
from tests.support.processes import free_port
from tests.support.s3_server import new_bucket_name


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "data")
    server = request.getfixturevalue("s3_env")
    s3 = S3Store(new_bucket_name(), "pre/fix", endpoint_url=server.url)
    s3.check(create=True)
    return s3


def _sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_objects_round_trip_list_and_delete(store):
    store.put_bytes("uploads/job1/0000.img", b"one")
    store.put_bytes("uploads/job1/0001.img", b"two!")
    store.put_bytes("uploads/job2/0000.img", b"other")
    assert store.get_bytes("uploads/job1/0001.img") == b"two!"
    assert store.exists("uploads/job1/0000.img")
    assert store.list("uploads/job1") == [("uploads/job1/0000.img", 3),
                                          ("uploads/job1/0001.img", 4)]
    store.delete_prefix("uploads/job1/")
    assert store.list("uploads/job1") == []
    assert not store.exists("uploads/job1/0000.img")
    assert store.get_bytes("uploads/job2/0000.img") == b"other"  # the sibling stays
    with pytest.raises(ArtifactMissing, match="uploads/job1/0000.img"):
        store.get_bytes("uploads/job1/0000.img")


def test_large_file_streams_in_and_out(store, tmp_path):
    """Over the multipart threshold (8 MiB): sent in parts, read back in chunks, and the
    store's byte counters move by the file's size."""
    data = np.random.default_rng(7).bytes(9 << 20)
    source = tmp_path / "data.npz"
    source.write_bytes(data)
    before = _sample("debm_artifact_bytes_total", backend=store.name, operation="put")
    store.put_file("datasets/ds_0123456789abcdef/data.npz", source)
    assert _sample("debm_artifact_bytes_total", backend=store.name,
                   operation="put") - before == len(data)
    fetched = store.fetch_file("datasets/ds_0123456789abcdef/data.npz", tmp_path / "got.npz")
    assert fetched.read_bytes() == data
    with store.open_read("datasets/ds_0123456789abcdef/data.npz") as reader:
        assert reader.read(10) == data[:10]
    if isinstance(store, S3Store):  # a multipart upload's ETag ends in -<parts>
        head = store.client.head_object(Bucket=store.bucket,
                                        Key="pre/fix/datasets/ds_0123456789abcdef/data.npz")
        assert head["ETag"].strip('"').endswith("-2")
        assert store.get_range("datasets/ds_0123456789abcdef/data.npz", 100, 5) == \
            data[100:105]


def _tree(folder, step: int, marker="checkpoint.json"):
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    (folder / f"model-{step:08d}.safetensors").write_bytes(bytes([step]) * 1000)
    (folder / marker).write_text(f'{{"step": {step}}}')
    return folder


def test_tree_marker_last_replacement_and_fetch(store, tmp_path):
    prefix = "jobs/" + "a" * 32 + "/checkpoint"
    assert not store.tree_complete(prefix, marker="checkpoint.json")
    with pytest.raises(ArtifactMissing):
        store.fetch_tree(prefix, tmp_path / "out", marker="checkpoint.json")
    store.put_tree(prefix, _tree(tmp_path / "gen", 1), marker="checkpoint.json")
    store.put_tree(prefix, _tree(tmp_path / "gen", 2), marker="checkpoint.json")
    # The older generation's weights are gone, the new marker names the new ones.
    assert [k.rsplit("/", 1)[1] for k, _ in store.list(prefix)] == [
        "checkpoint.json", "model-00000002.safetensors"]
    local = store.fetch_tree(prefix, tmp_path / "out", marker="checkpoint.json")
    assert (local / "checkpoint.json").read_text() == '{"step": 2}'
    assert (local / "model-00000002.safetensors").read_bytes() == bytes([2]) * 1000


def test_tree_without_its_marker_is_absent(store, tmp_path):
    prefix = "models/tiny/1"
    store.put_bytes(prefix + "/model-00000001.safetensors", b"w" * 10)  # crashed mid-publish
    assert not store.tree_complete(prefix, marker="checkpoint.json")
    with pytest.raises(ArtifactMissing, match="checkpoint.json"):
        store.fetch_tree(prefix, tmp_path / "x", marker="checkpoint.json")


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs", "a//b", "a/../b", "a\\b", ""])
def test_keys_that_are_not_plain_relative_paths_are_refused(key):
    with pytest.raises(ValueError, match="invalid artifact key"):
        check_key(key)


def test_local_swap_is_atomic_for_readers(tmp_path):
    """A result folder replaced while a reader reads it: the reader always finds a complete
    folder (the old or the new), never none (issue 23, error path 3)."""
    store = LocalStore(tmp_path)
    prefix = "results/" + "b" * 32
    staging = tmp_path / "results" / "first"
    staging.mkdir(parents=True)
    (staging / "grid.png").write_bytes(b"0")
    store.put_tree(prefix, staging, marker="grid.png", move=True)
    misses, stop = [], threading.Event()

    def read():
        while not stop.is_set():
            try:
                store.get_bytes(prefix + "/grid.png")
            except ArtifactMissing:
                misses.append(1)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(300):
            staging = tmp_path / "results" / f".new-{i}"
            staging.mkdir()
            (staging / "grid.png").write_bytes(str(i).encode())
            store.put_tree(prefix, staging, marker="grid.png", move=True)
    finally:
        stop.set()
        reader.join()
    assert misses == []
    assert store.get_bytes(prefix + "/grid.png") == b"299"
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["b" * 32]


def test_unreachable_endpoint_is_unavailable_and_names_the_store(s3_env):
    dead = f"http://127.0.0.1:{free_port()}"
    store = S3Store("debm-nowhere", endpoint_url=dead)
    before = _sample("debm_artifact_operations_total", backend="s3", operation="get",
                     outcome="error")
    with pytest.raises(ArtifactsUnavailable,
                       match=f"S3 artifact store s3://debm-nowhere at {dead}"):
        store.get_bytes("models/registry.json")
    assert _sample("debm_artifact_operations_total", backend="s3", operation="get",
                   outcome="error") == before + 1


def test_missing_credentials_are_unavailable(s3_server, monkeypatch):
    """moto accepts any key pair, so the refusal tried here is the client finding no
    credentials in the chain at all."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = S3Store("debm-creds", endpoint_url=s3_server.url)
    with pytest.raises(ArtifactsUnavailable, match="S3 artifact store.*no credentials"):
        store.put_bytes("uploads/x/0000.img", b"x")


def test_missing_bucket_is_a_start_error_unless_creation_is_allowed(s3_env):
    bucket = new_bucket_name()
    store = S3Store(bucket, endpoint_url=s3_env.url)
    with pytest.raises(ArtifactsMisconfigured, match=f"bucket '{bucket}' does not exist.*"
                                                      "DEBM_S3_CREATE_BUCKET"):
        store.check(create=False)
    store.check(create=True)
    store.check(create=False)  # now there
    store.put_bytes("a/b", b"c")
    assert store.get_bytes("a/b") == b"c"


def test_refused_credentials_are_unavailable_and_named(s3_env, tmp_path):
    """A server that checks keys refuses ours (403): unavailable, with the refusal named."""
    from tests.support.s3_server import S3Server

    server = S3Server(tmp_path, authenticate=True)
    try:
        store = S3Store("debm-refused", endpoint_url=server.url)
        with pytest.raises(ArtifactsUnavailable, match="S3 artifact store .* refused .*"
                                                        "InvalidAccessKeyId"):
            store.put_bytes("uploads/x/0000.img", b"x")
        with pytest.raises(ArtifactsUnavailable, match="refused"):
            store.check(create=True)
    finally:
        server.stop()
