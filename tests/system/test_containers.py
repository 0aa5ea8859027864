"""The container definitions hold what README and docs/OPERATIONS.md promise of them (no
Docker engine needed)."""

from __future__ import annotations

import re

import yaml

from tests.support import REPO


def load_compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_services():
    services = load_compose()["services"]
    assert set(services) == {"redis", "api", "worker-inference", "worker-training",
                             "prometheus"}
    assert services["prometheus"]["profiles"] == ["metrics"]  # optional

    redis = services["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command
    assert "redis-cli" in " ".join(redis["healthcheck"]["test"])

    api = services["api"]
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "/healthz" in " ".join(api["healthcheck"]["test"])
    assert api["build"]["dockerfile"] == "docker/Dockerfile.api"

    # Inference on threads of one process (its scoring jobs share forward passes); training
    # one job per process.
    for name, queue, pool, concurrency in (("worker-inference", "inference", "threads", "32"),
                                           ("worker-training", "training", "prefork", "1")):
        worker = services[name]
        assert worker["build"]["dockerfile"] == "docker/Dockerfile.worker"
        command = worker["command"]
        assert command[command.index("-Q") + 1] == queue
        assert command[command.index("-c") + 1] == concurrency
        assert command[command.index("-P") + 1] == pool
        assert worker["environment"]["DEBM_METRICS_PORT"] == "9101"
        (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        assert worker["depends_on"]["redis"]["condition"] == "service_healthy"


def test_api_and_workers_share_one_data_volume():
    services = load_compose()["services"]
    mounts = {name: services[name]["volumes"] for name in
              ("api", "worker-inference", "worker-training")}
    assert all(m == ["debm-data:/data"] for m in mounts.values()), mounts
    envs = [services[name]["environment"] for name in mounts]
    assert {e["DEBM_DATA_DIR"] for e in envs} == {"/data/debm"}
    assert {e["REDIS_URL"] for e in envs} == {"redis://redis:6379/0"}


def test_api_image_has_no_torch_and_worker_image_is_cuda_pytorch():
    api = (REPO / "docker" / "Dockerfile.api").read_text()
    assert re.search(r"pip install '\.\[api\]'", api) and "find_spec('torch')" in api
    assert "torch" not in re.search(r"pip install [^\n]*", api).group(0)
    copied = set(re.findall(r"^COPY (\w+) ", api, re.M))
    assert {"core", "service", "model"} <= copied and "worker" not in copied, copied
    worker = (REPO / "docker" / "Dockerfile.worker").read_text()
    base = re.search(r"ARG BASE_IMAGE=(\S+)", worker).group(1)
    assert base.startswith("pytorch/pytorch:") and "cuda" in base
    assert "'.[worker]'" in worker


def test_the_metrics_profile_scrapes_the_api_and_the_workers():
    prometheus = yaml.safe_load((REPO / "docker" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert jobs["debm-api"]["static_configs"][0]["targets"] == ["api:8000"]
    workers = jobs["debm-workers"]["dns_sd_configs"][0]
    assert set(workers["names"]) == {"worker-inference", "worker-training"}
    assert workers["port"] == 9101
