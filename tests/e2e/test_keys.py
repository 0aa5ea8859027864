"""Keys without restarts or traps (issue 25 item 2), in both modes.

Embedded: a live `debm serve` with DEBM_API_KEYS / DEBM_ADMIN_KEYS set still accepts its
generated key `local` (merged, never replaced); keys added with POST /keys or `debm keys add`
work at the next request and revoked ones fail at the next request; a key's id owns its jobs.
Distributed: two API apps on one Redis see each other's additions and revocations at once."""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import httpx
import pytest
from fastapi.testclient import TestClient

from core.settings import Settings
from service.app import create_app
from service.auth import KeyConflict, load_keys
from tests.support import (ADMIN_KEYS_SPEC, API_KEY, PYTHON, USE_HEADERS, USE_KEY,
                           USE_KEYS_SPEC)

pytestmark = pytest.mark.system
ADMIN = {"X-API-Key": API_KEY}


def _get(live, path, key):
    return httpx.get(f"{live.base}{path}", headers={"X-API-Key": key}, timeout=30)


def test_environment_keys_are_merged_with_the_generated_key(live):
    local = (live.data_dir / "api-key").read_text().strip()
    assert _get(live, "/models", local).status_code == 200
    assert _get(live, "/models", API_KEY).status_code == 200
    assert _get(live, "/models", USE_KEY).status_code == 200
    listed = {k["id"]: k for k in _get(live, "/keys", local).json()["keys"]}
    assert listed["local"] == {"id": "local", "scope": "admin", "created": None,
                               "source": "generated"}
    assert listed["tester"]["source"] == "env" and listed["user"]["scope"] == "use"
    assert not any("key" in k for k in listed.values())
    assert httpx.delete(f"{live.base}/keys/local", headers=ADMIN).status_code == 409
    assert _get(live, "/keys", USE_KEY).status_code == 403


def test_keys_added_and_revoked_through_the_api_count_at_once(live):
    name = f"ci-{uuid.uuid4().hex[:6]}"
    added = httpx.post(f"{live.base}/keys", headers=ADMIN, json={"name": name, "scope": "use"})
    assert added.status_code == 201, added.text
    secret = added.json()["key"]
    assert added.json()["id"] == name and len(secret) >= 43
    assert (live.data_dir / "jobs.sqlite").read_bytes().find(secret.encode()) == -1
    job = httpx.post(f"{live.base}/generate", headers={"X-API-Key": secret},
                     json={"n": 1, "steps_latent": 1, "steps_pixel": 1}).json()
    mine = httpx.get(f"{live.base}/jobs/{job['job_id']}", headers={"X-API-Key": secret}).json()
    assert mine["owner"] == name
    # A use key administers nothing; a second key of the same name is refused.
    assert httpx.post(f"{live.base}/keys", headers={"X-API-Key": secret},
                      json={"name": "x", "scope": "admin"}).status_code == 403
    again = httpx.post(f"{live.base}/keys", headers=ADMIN, json={"name": name})
    assert again.status_code == 409 and "exists" in again.json()["detail"]
    assert httpx.post(f"{live.base}/keys", headers=ADMIN,
                      json={"name": "tester"}).status_code == 409
    assert httpx.post(f"{live.base}/keys", headers=ADMIN,
                      json={"name": "a b"}).status_code == 422

    revoked = httpx.delete(f"{live.base}/keys/{name}", headers=ADMIN)
    assert revoked.status_code == 200 and revoked.json()["id"] == name
    assert _get(live, "/models", secret).status_code == 401
    assert httpx.delete(f"{live.base}/keys/{name}", headers=ADMIN).status_code == 404

    # The same name again owns the earlier job: ids are stable.
    back = httpx.post(f"{live.base}/keys", headers=ADMIN,
                      json={"name": name, "scope": "use"}).json()["key"]
    assert httpx.get(f"{live.base}/jobs/{job['job_id']}",
                     headers={"X-API-Key": back}).status_code == 200


def test_debm_keys_on_the_data_directory_reach_a_running_server(live):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEBM_")}
    env["DEBM_DATA_DIR"] = str(live.data_dir)

    def keys(*args):
        done = subprocess.run([PYTHON, "-m", "debm.cli", "keys", *args], env=env,
                              capture_output=True, text=True, timeout=120, check=False)
        return done

    name = f"ops-{uuid.uuid4().hex[:6]}"
    added = keys("add", name, "--scope", "admin")
    assert added.returncode == 0, added.stderr
    secret = json.loads(added.stdout)["key"]
    assert _get(live, "/keys", secret).status_code == 200  # admin, at once
    listed = keys("list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {"id": name, "scope": "admin", "source": "stored"}.items() <= next(
        k for k in json.loads(listed.stdout) if k["id"] == name).items()
    assert secret not in listed.stdout
    assert keys("revoke", name).returncode == 0
    assert _get(live, "/keys", secret).status_code == 401
    refused = keys("revoke", "local")
    assert refused.returncode == 2 and "configured" in refused.stderr


def test_a_configured_key_cannot_take_the_generated_id(tmp_path):
    settings = Settings(data_dir=tmp_path, admin_keys="local:another-secret-0123456789")
    with pytest.raises(KeyConflict, match="generated key"):
        load_keys(settings)
    (tmp_path / "api-key").write_text("the-same-secret-0123456789\n")
    settings = Settings(data_dir=tmp_path, admin_keys="me:the-same-secret-0123456789")
    with pytest.raises(KeyConflict, match="share"):
        load_keys(settings)
    assert load_keys(Settings(data_dir=tmp_path, local_key=False,
                              admin_keys="me:the-same-secret-0123456789")).key_ids == ["me"]


def test_replicas_on_one_redis_see_added_and_revoked_keys_at_once(tmp_path, redis_url,
                                                                  tiny_checkpoint):
    prefix = f"keys-{uuid.uuid4().hex[:8]}"

    def replica(n: int) -> TestClient:
        return TestClient(create_app(Settings(
            data_dir=tmp_path / "data", seed_checkpoint=tiny_checkpoint, redis_url=redis_url,
            redis_prefix=prefix, api_keys=USE_KEYS_SPEC, admin_keys=ADMIN_KEYS_SPEC)))

    with replica(1) as one, replica(2) as two:
        added = one.post("/keys", headers=ADMIN, json={"name": "shared", "scope": "use"})
        assert added.status_code == 201, added.text
        secret = added.json()["key"]
        assert two.get("/models", headers={"X-API-Key": secret}).status_code == 200
        assert "shared" in {k["id"] for k in two.get("/keys", headers=ADMIN).json()["keys"]}
        assert two.delete("/keys/shared", headers=ADMIN).status_code == 200
        assert one.get("/models", headers={"X-API-Key": secret}).status_code == 401
        assert one.get("/models", headers=USE_HEADERS).status_code == 200
