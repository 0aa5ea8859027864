"""API keys: 401 without a valid key, 403 for the wrong scope, jobs that belong to their key,
constant-time comparison, keys that never reach a log, and the generated key (mode 0600)."""

from __future__ import annotations

import io
import logging
import stat

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from core.settings import Settings
from service import auth
from service.app import create_app
from service.auth import KeyRing, _announce
from tests.support import API_KEY, KEY_HEADERS, USE_HEADERS, USE_KEY
from tests.support.images import digit_png, image_zip

PROTECTED = [("get", "/jobs", None), ("get", "/jobs/" + "0" * 32, None),
             ("get", "/jobs/" + "0" * 32 + "/result", None),
             ("delete", "/jobs/" + "0" * 32, None), ("get", "/models", None),
             ("put", "/models/demo/default", {"version": 1}), ("post", "/generate", {"n": 1}),
             ("post", "/train", {"dataset": "mnist5k"}), ("get", "/datasets", None)]
ADMIN_ONLY = [("post", "/train", {"dataset": "mnist5k", "preset": "tiny"}),
              ("put", "/models/demo/default", {"version": 1}), ("get", "/datasets", None),
              ("get", "/jobs?all=true", None)]


@pytest.mark.parametrize("headers", [
    {}, {"X-API-Key": "wrong-key-0123456789"}, {"Authorization": f"Basic {API_KEY}"},
    {"Authorization": "Bearer "}, {"Authorization": "Bearer wrong-key-0123456789"},
    {"X-API-Key": API_KEY[:-1]}, {"X-API-Key": API_KEY + "x"}, {"X-API-Key": USE_KEY[:-1]}])
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
    for key in (API_KEY, USE_KEY):
        assert client.get("/models", headers={"X-API-Key": key}).status_code == 200
        assert client.get("/models", headers={"Authorization": f"Bearer {key}"}
                          ).status_code == 200


def test_use_keys_get_403_on_admin_routes_and_admin_keys_pass(client):
    for method, path, body in ADMIN_ONLY:
        response = client.request(method, path, json=body, headers=USE_HEADERS)
        assert response.status_code == 403, (method, path, response.text)
        assert "'admin' scope" in response.json()["detail"]
        assert client.request(method, path, json=body, headers=KEY_HEADERS).status_code in (
            200, 202), (method, path)
    zipped = image_zip({"a.png": digit_png()})
    response = client.post("/datasets", files={"file": ("a.zip", zipped)}, headers=USE_HEADERS)
    assert response.status_code == 403
    assert client.post("/datasets", files={"file": ("a.zip", zipped)},
                       headers=KEY_HEADERS).status_code == 201
    # The use scope: generate, score, its own jobs, the model list.
    assert client.post("/generate", json={"n": 1}, headers=USE_HEADERS).status_code == 202
    assert client.post("/ood-score?wait=0", files={"files": ("a.png", digit_png())},
                       headers=USE_HEADERS).status_code == 202
    assert len(client.get("/jobs", headers=USE_HEADERS).json()["jobs"]) == 2
    assert client.get("/models", headers=USE_HEADERS).status_code == 200


def test_a_wrong_key_is_401_before_any_scope_check(client):
    response = client.post("/train", json={"dataset": "mnist5k"},
                           headers={"X-API-Key": "not-a-key-0123456789"})
    assert response.status_code == 401


def test_jobs_belong_to_the_key_that_made_them(make_client):
    client = make_client(api_keys="alice:alice-key-0123456789,bob:bob-key-0123456789ab",
                         admin_keys="ops:ops-key-0123456789abcd")
    alice, bob = {"X-API-Key": "alice-key-0123456789"}, {"X-API-Key": "bob-key-0123456789ab"}
    ops = {"X-API-Key": "ops-key-0123456789abcd"}
    job_id = client.post("/generate", json={"n": 1}, headers=alice).json()["job_id"]
    other = client.post("/generate", json={"n": 1}, headers=bob).json()["job_id"]
    assert [j["job_id"] for j in client.get("/jobs", headers=alice).json()["jobs"]] == [job_id]
    assert client.get("/jobs", headers=alice).json()["jobs"][0]["owner"] == "alice"
    # Another use key can neither read nor cancel it; it answers as if the job did not exist.
    for method, path in (("get", f"/jobs/{job_id}"), ("get", f"/jobs/{job_id}/result"),
                         ("delete", f"/jobs/{job_id}")):
        response = client.request(method, path, headers=bob)
        assert response.status_code == 404, (method, path, response.text)
    assert client.get(f"/jobs/{job_id}", headers=alice).json()["status"] == "queued"
    # An admin key reads any job, lists all of them and cancels another key's job.
    assert client.get(f"/jobs/{job_id}", headers=ops).json()["owner"] == "alice"
    listed = {j["job_id"] for j in client.get("/jobs?all=true", headers=ops).json()["jobs"]}
    assert listed == {job_id, other}
    assert client.get("/jobs", headers=ops).json()["jobs"] == []  # its own, by default
    response = client.delete(f"/jobs/{job_id}", headers=ops)
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert client.get("/jobs?all=true", headers=bob).status_code == 403


def test_keys_are_compared_in_constant_time(monkeypatch):
    """Every configured key is compared, with secrets.compare_digest on equal-length SHA-256
    digests, whichever key matches and however long the candidate is."""
    calls: list[tuple[int, int]] = []
    real = auth.secrets.compare_digest

    def counting(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth.secrets, "compare_digest", counting)
    keys = [(f"k{i}", f"secret-number-{i:02d}-0123456789") for i in range(5)]
    ring = KeyRing(keys[:3], keys[3:])
    for candidate in (keys[0][1], keys[4][1], "x" * 17, "y" * 500, keys[2][1][:-1]):
        calls.clear()
        ring.authenticate(candidate)
        assert calls == [(32, 32)] * 5, candidate
    assert ring.authenticate(keys[4][1]).can("admin")
    assert not ring.authenticate(keys[0][1]).can("admin")


def test_keys_never_appear_in_logs(tmp_path, tiny_checkpoint, caplog, capsys):
    admin_secret, use_secret = "admin-SECRET-0123456789", "use-SECRET-0123456789ab"
    near_miss = use_secret[:-1] + "X"
    caplog.set_level(logging.DEBUG)
    settings = Settings(data_dir=tmp_path / "d", seed_checkpoint=tiny_checkpoint,
                        api_keys=f"user:{use_secret}", admin_keys=f"ops:{admin_secret}",
                        log_level="DEBUG")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        for key in (admin_secret, use_secret, near_miss):
            for headers in ({"X-API-Key": key}, {"Authorization": f"Bearer {key}"}):
                client.get("/models", headers=headers)
                client.post("/train", json={"dataset": "mnist5k", "preset": "tiny"},
                            headers=headers)
                client.post("/generate", json={"n": "many"}, headers=headers)
                client.get("/jobs/" + "0" * 32, headers=headers)
    # A configuration error names the entry, not the key.
    with pytest.raises(ValidationError) as error:
        Settings(api_keys=f"bad name:{use_secret},short")
    logged = caplog.text + str(error.value) + "".join(capsys.readouterr())
    assert "401 GET /models" in caplog.text and "lacks the admin scope" in caplog.text
    for secret in (admin_secret, use_secret, near_miss):
        assert secret not in logged


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


def test_generated_key_is_a_private_admin_key_never_logged(tmp_path, tiny_checkpoint, capsys):
    settings = Settings(data_dir=tmp_path / "d", seed_checkpoint=tiny_checkpoint, api_keys="",
                        admin_keys="")
    with TestClient(create_app(settings)) as client:
        key_file = tmp_path / "d" / "api-key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = key_file.read_text().strip()
        assert len(key) >= 32
        err = capsys.readouterr().err
        # stderr is not a terminal here (it is a log): the file is named, the key is not.
        assert key not in err and str(key_file) in err
        assert client.get("/models").status_code == 401
        assert client.post("/train", json={"dataset": "mnist5k", "preset": "tiny"},
                           headers={"X-API-Key": key}).status_code == 202
    with TestClient(create_app(settings)) as client:  # a restart reuses it silently
        assert "generated" not in capsys.readouterr().err
        assert client.get("/models", headers={"Authorization": f"Bearer {key}"}
                          ).status_code == 200


def test_generated_key_is_shown_once_on_a_terminal(tmp_path):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    shown = Terminal()
    _announce("the-secret-0123456789abcdef", tmp_path / "api-key", stream=shown)
    assert "the-secret-0123456789abcdef" in shown.getvalue()
    logged = io.StringIO()
    _announce("the-secret-0123456789abcdef", tmp_path / "api-key", stream=logged)
    assert "the-secret" not in logged.getvalue() and "api-key" in logged.getvalue()


def test_configured_keys_are_validated():
    with pytest.raises(ValidationError, match="shorter than 16"):
        Settings(api_keys="short")
    with pytest.raises(ValidationError, match="twice"):
        Settings(api_keys="a:0123456789abcdef0,a:0123456789abcdef1")
    with pytest.raises(ValidationError, match="name"):
        Settings(api_keys="bad name:0123456789abcdef0")
    with pytest.raises(ValidationError, match="both"):
        Settings(api_keys="a:0123456789abcdef0", admin_keys="a:0123456789abcdef1")
    with pytest.raises(ValidationError, match="twice"):
        Settings(api_keys="a:0123456789abcdef0", admin_keys="b:0123456789abcdef0")


def test_keyring_ids_never_hold_the_secret():
    ring = KeyRing([("ci", "secret-0123456789abcdef")])
    assert ring.authenticate("secret-0123456789abcdef").key_id == "ci"
    assert ring.authenticate("secret-0123456789abcdeg") is None
    assert ring.authenticate(None) is None and ring.authenticate("") is None
    from core.settings import parse_api_keys

    (key_id, secret), = parse_api_keys("secret-0123456789abcdef")
    assert key_id.startswith("key-") and secret not in key_id
