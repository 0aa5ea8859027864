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


def test_every_setting_says_in_operations_when_to_change_it():
    """docs/OPERATIONS.md names every setting (issue 21 item 2: a setting pays rent)."""
    from tests.support import REPO

    operations = (REPO / "docs" / "OPERATIONS.md").read_text()
    names = ["REDIS_URL" if name == "redis_url" else f"DEBM_{name.upper()}"
             for name in Settings.model_fields]
    assert [name for name in names if f"`{name}`" not in operations] == []
