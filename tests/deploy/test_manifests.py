"""deploy/: every kustomize overlay renders, every object validates against the Kubernetes
and KEDA schemas, offline, and the properties the deployment relies on hold.

Rendering uses ``kubectl kustomize`` (kubectl is on the project's machines; the test fails,
never skips, without it).  Kubernetes schemas come from the kubernetes-validate package, strict
(unknown fields are errors); KEDA's from deploy/schemas/ (its README says where from).  No
network is used.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version, major_minor
from referencing import Registry, Resource

from core.names import INFERENCE_QUEUE, TRAINING_QUEUE
from core.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OVERLAYS = sorted(p.name for p in (DEPLOY / "overlays").iterdir() if p.is_dir())
# The oldest Kubernetes docs/DEPLOY.md supports and the newest the schema package knows.
K8S_VERSIONS = ["1.29", major_minor(latest_version())]
KEDA_SCHEMA = json.loads((DEPLOY / "schemas" / "keda-v1alpha1.schema.json").read_text())
WORKERS = {"debm-worker-inference": INFERENCE_QUEUE, "debm-worker-training": TRAINING_QUEUE}
TIME_LIMIT_SETTING = {INFERENCE_QUEUE: "inference_time_limit",
                      TRAINING_QUEUE: "training_time_limit"}
CELERY_HARD_LIMIT_MARGIN = 30  # prefork workers kill a task 30 s after its soft limit
# The one setting only KEDA reads (Redis as host:port).
KEDA_ONLY_SETTINGS = {"DEBM_REDIS_ADDRESS"}


@cache
def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail("kubectl is not on PATH: tests/deploy renders deploy/ with `kubectl "
                    "kustomize`.  Install kubectl >= 1.27 (it bundles kustomize v5; Debian's "
                    "kubernetes-client 1.20 is too old for kustomize components).")
    return path


@cache
def render(overlay: str) -> tuple[dict, ...]:
    proc = subprocess.run([kubectl(), "kustomize", str(DEPLOY / "overlays" / overlay)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"kubectl kustomize {overlay} failed:\n{proc.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def by_kind(objs, kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def pod_spec(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def settings_map(objs) -> dict[str, str]:
    (config,) = [o for o in objs if o["kind"] == "ConfigMap"
                 and o["metadata"]["name"].startswith("debm-settings")]
    return config["data"]


def scaled_objects(objs) -> dict[str, dict]:
    return {o["spec"]["scaleTargetRef"]["name"]: o for o in objs if o["kind"] == "ScaledObject"}


@cache
def keda_validator(k8s_version: str) -> jsonschema.Draft202012Validator:
    """The KEDA schema, with its references to Kubernetes definitions (ObjectMeta, HPA
    behavior) resolved from the kubernetes-validate package, strict variant."""
    package = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    versions = sorted((p.name for p in package.glob(f"v{k8s_version}.*-local-strict")))
    definitions = json.loads((package / versions[-1] / "_definitions.json").read_text())
    registry = Registry().with_resource(definitions["$id"], Resource.from_contents(definitions))
    return jsonschema.Draft202012Validator(KEDA_SCHEMA, registry=registry)


def test_every_overlay_is_tested():
    assert set(OVERLAYS) == {"cpu", "cpu-keda", "gpu", "gpu-keda", "gpu-keda-external-redis"}


@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_objects_validate_against_schemas(overlay, k8s_version):
    objs = render(overlay)
    assert objs, f"{overlay} rendered nothing"
    errors = []
    for obj in objs:
        where = f"{overlay}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        if obj.get("apiVersion", "").startswith("keda.sh/"):
            errors += [f"{where} (KEDA schema): {e.json_path}: {e.message}"
                       for e in keda_validator(k8s_version).iter_errors(obj)]
            continue
        try:
            kubernetes_validate.validate(obj, k8s_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{where} (Kubernetes {k8s_version}): {exc.message} at "
                          f"{'.'.join(map(str, exc.path))}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{where}: no Kubernetes {k8s_version} schema: {exc}")
    assert not errors, "\n".join(errors)


def test_keda_schema_rejects_what_keda_would_not_take():
    """The KEDA schema is not a pass-through: the mistakes it exists to catch fail it."""
    (good,) = [o for o in render("cpu-keda") if o["kind"] == "ScaledObject"
               and o["spec"]["scaleTargetRef"]["name"] == "debm-worker-training"]
    validator = keda_validator(K8S_VERSIONS[-1])
    assert not list(validator.iter_errors(good))
    for break_it in (lambda s: s["spec"].pop("triggers"),
                     lambda s: s["spec"].update(maxReplicas=3),  # HPA's name, not KEDA's
                     lambda s: s["spec"]["triggers"][0]["metadata"].update(listname="x"),
                     lambda s: s["spec"]["triggers"][0]["metadata"].update(listLength=1),
                     lambda s: s["spec"]["advanced"]["horizontalPodAutoscalerConfig"][
                         "behavior"]["scaleDown"].update(policies=[{"type": "Pods"}])):
        bad = json.loads(json.dumps(good))
        break_it(bad)
        assert list(validator.iter_errors(bad)), f"accepted: {bad['spec']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes(overlay):
    objs = render(overlay)
    deployments = by_kind(objs, "Deployment")
    assert set(deployments) == {"debm-api", *WORKERS}
    scale_to_zero = scaled_objects(objs).get("debm-worker-inference", {}).get(
        "spec", {}).get("minReplicaCount") == 0
    (api,) = pod_spec(deployments["debm-api"])["containers"]
    # With inference at zero, /readyz (503 without a live inference worker) would take the API
    # out of its Service and nothing could queue the job that wakes a worker.
    expected_ready = "/healthz" if scale_to_zero else "/readyz"
    assert api["readinessProbe"]["httpGet"]["path"] == expected_ready
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for name in WORKERS:
        (worker,) = pod_spec(deployments[name])["containers"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert worker[probe]["exec"]["command"] == ["python3", "-m", "worker.health"], \
                (name, probe)
    for sts in by_kind(objs, "StatefulSet").values():
        for container in pod_spec(sts)["containers"]:
            assert "readinessProbe" in container and "livenessProbe" in container


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpus_only_in_gpu_overlays_and_only_for_workers(overlay):
    objs = render(overlay)
    gpu_overlay = overlay.startswith("gpu")
    for obj in objs:
        if obj["kind"] not in ("Deployment", "StatefulSet"):
            continue
        spec = pod_spec(obj)
        is_worker = obj["metadata"]["name"] in WORKERS
        for container in spec["containers"]:
            resources = container.get("resources", {})
            assert "nvidia.com/gpu" not in resources.get("requests", {})
            gpus = resources.get("limits", {}).get("nvidia.com/gpu")
            if gpu_overlay and is_worker:
                assert gpus == 1, obj["metadata"]["name"]
                env = {e["name"]: e.get("value") for e in container.get("env", [])}
                assert env.get("DEBM_DEVICE") == "cuda"
            else:
                assert gpus is None, (overlay, obj["metadata"]["name"])
        if gpu_overlay and is_worker:
            assert spec["nodeSelector"] and any(
                t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
        else:
            assert "nvidia.com/gpu" not in json.dumps(spec.get("tolerations", []))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_scales_each_worker_on_its_own_queue(overlay):
    objs = render(overlay)
    scaled = scaled_objects(objs)
    if "keda" not in overlay:
        assert not scaled
        return
    assert set(scaled) == set(WORKERS)
    deployments = by_kind(objs, "Deployment")
    config = settings_map(objs)
    redis_db = urlparse(config["REDIS_URL"]).path.strip("/") or "0"
    for name, queue in WORKERS.items():
        so = scaled[name]["spec"]
        (container,) = pod_spec(deployments[name])["containers"]
        command = container["command"]
        assert command[command.index("-Q") + 1] == queue  # the worker consumes that queue
        assert so["scaleTargetRef"]["kind"] == "Deployment"
        assert so["scaleTargetRef"].get("envSourceContainerName", container["name"]) \
            == container["name"]
        (trigger,) = so["triggers"]
        meta = trigger["metadata"]
        assert trigger["type"] == "redis" and meta["listName"] == queue
        assert meta["databaseIndex"] == redis_db
        # KEDA resolves addressFromEnv from the target container's ConfigMap.
        assert re.fullmatch(r"[^:/]+:\d+", config[meta["addressFromEnv"]])
        assert so["maxReplicaCount"] >= max(so.get("minReplicaCount", 0), 1)
    assert scaled["debm-worker-training"]["spec"]["minReplicaCount"] >= 1
    inference_min = scaled["debm-worker-inference"]["spec"]["minReplicaCount"]
    assert inference_min == (0 if overlay.startswith("gpu-keda") else 1)
    if inference_min == 0:
        assert deployments["debm-worker-inference"]["spec"]["replicas"] == 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_data_volume_is_shared(overlay):
    """The API and the workers share no disk: each pod's volumes are its own scratch
    (emptyDir); artifacts travel through S3 only.  Only Redis keeps a claim of its own."""
    objs = render(overlay)
    for name, deployment in by_kind(objs, "Deployment").items():
        for volume in pod_spec(deployment).get("volumes", []):
            kinds = set(volume) - {"name"}
            assert kinds <= {"emptyDir", "configMap", "secret", "projected"}, (name, volume)
        env_from = pod_spec(deployment)["containers"][0]["envFrom"]
        s3 = [e["secretRef"] for e in env_from if "secretRef" in e
              and e["secretRef"]["name"] == "debm-s3"]
        assert s3 and not s3[0].get("optional"), f"{name} must read the Secret debm-s3"
    assert set(by_kind(objs, "PersistentVolumeClaim")) == set()
    for sts in by_kind(objs, "StatefulSet").values():
        assert sts["metadata"]["name"] == "redis"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_are_known_and_valid(overlay, monkeypatch):
    """Every DEBM_ key of the ConfigMap is a setting (a typo would be ignored silently), and
    the values pass core.settings.Settings' own validation (the visibility timeout above the
    longest task)."""
    config = settings_map(render(overlay))
    known = {f"DEBM_{name.upper()}" for name in Settings.model_fields}
    unknown = {k for k in config if k.startswith("DEBM_")} - known - KEDA_ONLY_SETTINGS
    assert not unknown, f"not settings of core/settings.py: {sorted(unknown)}"
    for key, value in config.items():
        if key.startswith("DEBM_") or key == "REDIS_URL":
            monkeypatch.setenv(key, value)
    Settings()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_exceeds_the_longest_task(overlay):
    objs = render(overlay)
    config = settings_map(objs)
    defaults = Settings.model_fields
    for name, queue in WORKERS.items():
        setting = TIME_LIMIT_SETTING[queue]
        limit = int(config.get(f"DEBM_{setting.upper()}", defaults[setting].default))
        grace = pod_spec(by_kind(objs, "Deployment")[name])["terminationGracePeriodSeconds"]
        assert grace > limit + CELERY_HARD_LIMIT_MARGIN, (name, grace, limit)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_as_non_root_with_resources(overlay):
    images = {"debm-api": "debm-api", "debm-worker-inference": "debm-worker",
              "debm-worker-training": "debm-worker"}
    for obj in render(overlay):
        if obj["kind"] not in ("Deployment", "StatefulSet"):
            continue
        spec = pod_spec(obj)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["requests"]["memory"]
            assert container["resources"]["limits"]["memory"]
            if obj["metadata"]["name"] in images:
                assert container["image"].split(":")[0] == images[obj["metadata"]["name"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_disruption_budgets_cover_every_workload(overlay):
    objs = render(overlay)
    budgets = by_kind(objs, "PodDisruptionBudget").values()
    for obj in objs:
        if obj["kind"] not in ("Deployment", "StatefulSet"):
            continue
        labels = obj["spec"]["template"]["metadata"]["labels"]
        matching = [b for b in budgets if all(labels.get(k) == v for k, v in
                                              b["spec"]["selector"]["matchLabels"].items())]
        assert len(matching) == 1, obj["metadata"]["name"]
        # maxUnavailable: a Deployment scaled to zero must not block node drains.
        assert matching[0]["spec"].get("maxUnavailable") == 1
