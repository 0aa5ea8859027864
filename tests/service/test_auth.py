"""API keys: 401 without a valid key, both header forms, open health/docs, and the key that
is generated (mode 0600, announced once) when none is configured."""

from __future__ import annotations

import stat

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.app import create_app
from service.auth import KeyRing
from service.settings import Settings
from tests.support import API_KEY, digit_png

PROTECTED = [("get", "/jobs", None), ("get", "/jobs/" + "0" * 32, None),
             ("get", "/jobs/" + "0" * 32 + "/result", None),
             ("delete", "/jobs/" + "0" * 32, None), ("get", "/models", None),
             ("put", "/models/demo/default", {"version": 1}), ("post", "/generate", {"n": 1}),
             ("post", "/train", {"dataset": "mnist5k"}), ("get", "/datasets", None)]


@pytest.mark.parametrize("headers", [
    {}, {"X-API-Key": "wrong-key-0123456789"}, {"Authorization": f"Basic {API_KEY}"},
    {"Authorization": "Bearer "}, {"Authorization": "Bearer wrong-key-0123456789"},
    {"X-API-Key": API_KEY[:-1]}, {"X-API-Key": API_KEY + "x"}])
def test_requests_without_a_valid_key_get_401(client, headers):
    for method, path, body in PROTECTED:
        response = client.request(method, path, json=body, headers=headers)
        assert response.status_code == 401, (method, path, headers, response.text)
        assert "API key" in response.json()["detail"]
        assert response.headers["WWW-Authenticate"] == "Bearer"
    # Uploads are refused before the body is looked at.
    response = client.post("/ood-score", files={"files": ("a.png", digit_png())},
                           headers=headers)
    assert response.status_code == 401
    response = client.post("/datasets", files={"file": ("a.zip", b"PK")}, headers=headers)
    assert response.status_code == 401


def test_both_header_forms_work(client):
    assert client.get("/models", headers={"X-API-Key": API_KEY}).status_code == 200
    assert client.get("/models", headers={"Authorization": f"Bearer {API_KEY}"}
                      ).status_code == 200


def test_health_readiness_and_docs_are_open(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    # No worker runs in route tests: not ready, and the body says which check failed.
    assert ready.status_code == 503
    checks = ready.json()["checks"]
    assert checks["broker"]["ok"] and checks["model"]["ok"] and not checks["worker"]["ok"]
    assert client.get("/docs").status_code == 200
    assert client.get("/openapi.json").status_code == 200


def test_readiness_needs_a_model(make_client):
    client = make_client(seed_checkpoint=None)
    checks = client.get("/readyz").json()["checks"]
    assert not checks["model"]["ok"] and "no model" in checks["model"]["detail"]


def test_generated_key_is_private_and_announced_once(tmp_path, tiny_checkpoint, capsys):
    settings = Settings(data_dir=tmp_path / "d", seed_checkpoint=tiny_checkpoint, api_keys="")
    with TestClient(create_app(settings)) as client:
        key_file = tmp_path / "d" / "api-key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = key_file.read_text().strip()
        assert len(key) >= 32
        assert key in capsys.readouterr().err
        assert client.get("/models").status_code == 401
        assert client.get("/models", headers={"X-API-Key": key}).status_code == 200
    with TestClient(create_app(settings)) as client:  # a restart reuses it silently
        assert key not in capsys.readouterr().err
        assert client.get("/models", headers={"Authorization": f"Bearer {key}"}
                          ).status_code == 200


def test_configured_keys_are_validated():
    with pytest.raises(ValidationError, match="at least 16"):
        Settings(api_keys="short")
    with pytest.raises(ValidationError, match="twice"):
        Settings(api_keys="a:0123456789abcdef0,a:0123456789abcdef1")
    with pytest.raises(ValidationError, match="name"):
        Settings(api_keys="bad name:0123456789abcdef0")


def test_keyring_ids_never_hold_the_secret():
    ring = KeyRing([("ci", "secret-0123456789abcdef")])
    assert ring.authenticate("secret-0123456789abcdef").key_id == "ci"
    assert ring.authenticate("secret-0123456789abcdeg") is None
    assert ring.authenticate(None) is None and ring.authenticate("") is None
    from service.settings import parse_api_keys

    (key_id, secret), = parse_api_keys("secret-0123456789abcdef")
    assert key_id.startswith("key-") and secret not in key_id
