"""docker-compose.yml: the stack shares no data volume between services, and every service
reaches the artifact store (MinIO) the same way.  Read as YAML (merge keys resolved), as compose
reads it; `docker compose config` and ../shared/tools/docker_smoke.sh run the real thing."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
APP_SERVICES = ("api", "worker-inference", "worker-training")


def compose(name: str = "docker-compose.yml") -> dict:
    return yaml.safe_load((REPO / name).read_text())


def named_volumes(service: dict) -> list[str]:
    mounts = [m.split(":")[0] if isinstance(m, str) else m.get("source")
              for m in service.get("volumes", [])]
    return [m for m in mounts if m and not m.startswith((".", "/"))]


def test_no_volume_is_mounted_by_two_services():
    services = compose()["services"]
    counts = Counter(v for svc in services.values() for v in named_volumes(svc))
    assert counts and all(n == 1 for n in counts.values()), counts
    assert set(counts) == set(compose()["volumes"])


def test_api_and_workers_use_the_s3_store_of_the_minio_service():
    doc = compose()
    minio = doc["services"]["minio"]
    assert minio["image"].startswith("minio/minio")
    assert minio["command"][:2] == ["server", "/data"]
    assert "minio/health/live" in " ".join(minio["healthcheck"]["test"])
    for name in APP_SERVICES:
        svc = doc["services"][name]
        env = svc["environment"]
        assert env["DEBM_ARTIFACTS"].startswith("s3://")
        assert env["DEBM_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert env["DEBM_S3_CREATE_BUCKET"] == "true"
        # The MinIO root pair, overridable from the environment, on both sides.
        assert env["AWS_ACCESS_KEY_ID"] == minio["environment"]["MINIO_ROOT_USER"]
        assert env["AWS_SECRET_ACCESS_KEY"] == minio["environment"]["MINIO_ROOT_PASSWORD"]
        assert svc["depends_on"]["minio"]["condition"] == "service_healthy"
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"


def test_gpu_file_only_adds_gpus_to_the_workers():
    gpu = compose("docker-compose.gpu.yml")["services"]
    base = compose()["services"]
    assert set(gpu) == {"worker-inference", "worker-training"} <= set(base)
    for svc in gpu.values():
        assert set(svc) == {"deploy"}
        (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"] and device["count"] == 1
