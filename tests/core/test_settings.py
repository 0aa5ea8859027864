"""Settings are read from the environment and validated at start (fail fast)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from core.settings import Settings


def test_defaults(monkeypatch):
    for name in ("REDIS_URL", "DEBM_REDIS_URL", "DEBM_DATA_DIR", "DEBM_API_KEYS"):
        monkeypatch.delenv(name, raising=False)
    s = Settings()
    assert s.redis_url is None and not s.distributed
    assert s.data_dir == Path("var/debm")
    assert s.broker_url().startswith("sqla+sqlite:///") and s.broker_url().endswith(
        "broker.sqlite")
    assert s.result_backend().startswith("db+sqlite:///")
    assert s.visibility_timeout > s.training_time_limit > s.inference_time_limit


def test_environment_names(monkeypatch, tmp_path):
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/3")
    monkeypatch.setenv("DEBM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DEBM_MAX_GENERATE_N", "8")
    s = Settings()
    assert s.distributed and s.broker_url() == "redis://127.0.0.1:6379/3"
    assert s.data_root == tmp_path.resolve() and s.max_generate_n == 8


@pytest.mark.parametrize("values, words", [
    ({"redis_url": "http://localhost"}, "REDIS_URL"),
    ({"visibility_timeout": 600, "training_time_limit": 3600}, "VISIBILITY_TIMEOUT"),
    ({"max_queued_jobs": 5, "max_queued_jobs_per_key": 6}, "PER_KEY"),
    ({"max_generate_n": 0}, "max_generate_n"),
    ({"default_model": "Not A Name"}, "model name"),
    ({"log_level": "LOUD"}, "log_level"),
])
def test_bad_values_fail_fast(values, words):
    with pytest.raises(ValidationError, match=words):
        Settings(**values)


def test_env_errors_fail_fast(monkeypatch):
    monkeypatch.setenv("DEBM_MAX_UPLOAD_BYTES", "lots")
    with pytest.raises(ValidationError, match="max_upload_bytes"):
        Settings()


def test_artifact_store_settings(monkeypatch, tmp_path):
    """DEBM_ARTIFACTS and its companions (core.artifacts): names read from the environment,
    the local backend by default, a bad URL refused at start naming the variable."""
    from core.artifacts import open_artifacts
    from core.artifacts.local import LocalStore
    from core.artifacts.s3 import S3Store

    for name in ("DEBM_ARTIFACTS", "DEBM_S3_ENDPOINT_URL", "DEBM_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DEBM_DATA_DIR", str(tmp_path))
    s = Settings()
    assert s.artifacts == "" and s.s3_endpoint_url is None and not s.s3_create_bucket
    assert s.cache_root == tmp_path.resolve() / "cache"
    assert s.checkpoint_cache_bytes == 10 * 1024 ** 3
    assert isinstance(open_artifacts(s), LocalStore)
    monkeypatch.setenv("DEBM_ARTIFACTS", "s3://debm-models/prod/v1")
    monkeypatch.setenv("DEBM_S3_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("DEBM_S3_CREATE_BUCKET", "true")
    monkeypatch.setenv("DEBM_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("DEBM_CHECKPOINT_CACHE_BYTES", str(64 << 20))
    s = Settings()
    store = open_artifacts(s)  # no network at construction
    assert isinstance(store, S3Store) and (store.bucket, store.prefix) == ("debm-models",
                                                                           "prod/v1")
    assert store.describe() == "the S3 artifact store s3://debm-models/prod/v1 at " \
                               "http://minio:9000"
    assert s.s3_create_bucket and s.cache_root == tmp_path / "c"
    assert s.checkpoint_cache_bytes == 64 << 20
    for bad in ("http://bucket/x", "s3://", "s3://Upper_Case", "/data/debm"):
        monkeypatch.setenv("DEBM_ARTIFACTS", bad)
        with pytest.raises(ValidationError, match="DEBM_ARTIFACTS"):
            Settings()
    monkeypatch.setenv("DEBM_ARTIFACTS", "")
    monkeypatch.setenv("DEBM_CHECKPOINT_CACHE_BYTES", "1000")
    with pytest.raises(ValidationError, match="checkpoint_cache_bytes"):
        Settings()


def test_every_setting_says_in_operations_when_to_change_it():
    """docs/OPERATIONS.md names every setting (issue 21 item 2: a setting pays rent)."""
    from tests.support import REPO

    operations = (REPO / "docs" / "OPERATIONS.md").read_text()
    names = ["REDIS_URL" if name == "redis_url" else f"DEBM_{name.upper()}"
             for name in Settings.model_fields]
    assert [name for name in names if f"`{name}`" not in operations] == []
