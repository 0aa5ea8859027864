"""The container definitions hold what README and docs/OPERATIONS.md promise of them (no
Docker engine needed)."""

from __future__ import annotations

import re

import yaml

from tests.support import REPO


def load_compose(name: str = "docker-compose.yml") -> dict:
    return yaml.safe_load((REPO / name).read_text())


def test_compose_services():
    services = load_compose()["services"]
    assert set(services) == {"redis", "minio", "api", "worker-inference", "worker-training",
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

    # the worker image is built once, by worker-inference; worker-training runs it
    assert services["worker-inference"]["build"]["dockerfile"] == "docker/Dockerfile.worker"
    assert "build" not in services["worker-training"]
    assert services["worker-training"]["pull_policy"] == "never"
    gpu = load_compose("docker-compose.gpu.yml")["services"]
    # Inference on threads of one process (its scoring jobs share forward passes); training
    # one job per process.
    for name, queue, pool, concurrency in (("worker-inference", "inference", "threads", "32"),
                                           ("worker-training", "training", "prefork", "1")):
        worker = services[name]
        assert worker["image"] == "debm-worker:latest"
        command = worker["command"]
        assert command[command.index("-Q") + 1] == queue
        assert command[command.index("-c") + 1] == concurrency
        assert command[command.index("-P") + 1] == pool
        assert worker["environment"]["DEBM_METRICS_PORT"] == "9101"
        # the default file runs anywhere (no GPU reservation); the GPU file adds one each
        assert "deploy" not in worker
        (device,) = gpu[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
        assert worker["healthcheck"]["test"][-2:] == ["-m", "worker.health"]
        assert worker["environment"]["DEBM_WORKER_HEALTH_FILE"]
    assert set(gpu) == {"worker-inference", "worker-training"}


def test_api_and_workers_share_no_data_volume():
    """Artifacts go through MinIO (tests/deploy/test_compose.py checks the S3 settings); each
    service keeps only its own volume."""
    services = load_compose()["services"]
    mounts = {name: services[name]["volumes"] for name in
              ("api", "worker-inference", "worker-training")}
    assert mounts == {"api": ["api-data:/data"], "worker-inference": ["inference-cache:/data"],
                      "worker-training": ["training-cache:/data"]}, mounts
    envs = [services[name]["environment"] for name in mounts]
    assert {e["DEBM_DATA_DIR"] for e in envs} == {"/data/debm"}
    assert {e["REDIS_URL"] for e in envs} == {"redis://redis:6379/0"}
    assert {e["DEBM_ARTIFACTS"] for e in envs} == {"s3://debm/artifacts"}


def test_api_image_has_no_torch_and_worker_image_is_cuda_pytorch():
    api = (REPO / "docker" / "Dockerfile.api").read_text()
    assert re.search(r"pip install '\.\[api\]'", api) and "find_spec('torch')" in api
    assert "torch" not in re.search(r"pip install [^\n]*", api).group(0)
    copied = set(re.findall(r"^COPY (\w+) ", api, re.M))
    assert {"core", "service", "model"} <= copied and "worker" not in copied, copied
    # one --build-arg BASE_IMAGE for the whole compose build: the API image declares it
    assert re.search(r"^ARG BASE_IMAGE$", api, re.M)
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\}$", api, re.M)
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
