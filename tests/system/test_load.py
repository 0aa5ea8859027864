"""A bounded load test on loopback: mixed generate, score and train traffic from several keys
against the real API and workers, well past the queue limits.  The service must answer 429
(with Retry-After) rather than fail, never 5xx, and every job it accepted must reach a final
state."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import httpx
import pytest

from tests.support import ADMIN_KEYS_SPEC, KEY_HEADERS, wait_until
from tests.support.images import digit_png
from tests.support.processes import dump_logs, service_env
from tests.system.conftest import start_service

pytestmark = pytest.mark.system

USERS = {f"load{i}": f"load-key-{i}-0123456789abcdef" for i in range(3)}
SECONDS = 8  # of traffic
THREADS = 6
MAX_TRAIN_JOBS = 2  # accepted training jobs (each takes seconds on the training worker)


def test_mixed_traffic_past_the_queue_limits(tmp_path, redis_url, redis_prefix, procs,
                                             tiny_checkpoint):
    env = service_env(tmp_path / "data", redis_url=redis_url, seed_checkpoint=tiny_checkpoint,
                      DEBM_REDIS_PREFIX=redis_prefix, DEBM_MAX_QUEUED_JOBS="8",
                      DEBM_MAX_QUEUED_JOBS_PER_KEY="4",
                      DEBM_API_KEYS=",".join(f"{n}:{k}" for n, k in USERS.items()),
                      DEBM_ADMIN_KEYS=ADMIN_KEYS_SPEC)
    base = start_service(env, tmp_path, procs, ("inference", "inference"),
                         ("training", "training"))

    statuses: Counter = Counter()
    accepted: list[str] = []
    problems: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + SECONDS
    image = digit_png()

    def traffic(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=base, timeout=30) as client:
            while time.monotonic() < deadline:
                kind = rng.choice(["generate"] * 3 + ["score"] * 3 + ["train"])
                headers = {"X-API-Key": rng.choice(list(USERS.values()))}
                try:
                    if kind == "generate":
                        response = client.post("/generate", headers=headers, json={
                            "n": rng.randint(1, 3), "seed": rng.randint(0, 99),
                            "steps_latent": 5, "steps_pixel": 5})
                    elif kind == "score":
                        response = client.post("/ood-score?wait=0", headers=headers,
                                               files={"files": ("d.png", image, "image/png")})
                    else:
                        with lock:
                            if statuses["train sent"] >= MAX_TRAIN_JOBS:
                                continue
                            statuses["train sent"] += 1
                        response = client.post("/train", headers=KEY_HEADERS, json={
                            "dataset": "mnist5k", "preset": "tiny", "name": "load",
                            "overrides": {"training": {"iterations": 1}}})
                except httpx.HTTPError as exc:
                    with lock:
                        problems.append(f"{kind}: {type(exc).__name__}: {exc}")
                    continue
                with lock:
                    statuses[f"{kind} {response.status_code}"] += 1
                    if response.status_code == 202:
                        accepted.append(response.json()["job_id"])
                    elif response.status_code == 429:
                        if not response.headers.get("Retry-After", "").isdigit():
                            problems.append("429 without Retry-After")
                    else:
                        problems.append(f"{kind} {response.status_code}: {response.text[:200]}")

    threads = [threading.Thread(target=traffic, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(SECONDS + 60)
    assert not problems, (problems[:10], statuses, dump_logs(*procs))
    del statuses["train sent"]
    refused = sum(n for key, n in statuses.items() if key.endswith(" 429"))
    assert refused > 0 and len(accepted) > 0, statuses
    assert {key.split()[1] for key in statuses} <= {"202", "429"}, statuses

    # Every accepted job reaches a final state; none is lost or stuck.
    with httpx.Client(base_url=base, timeout=30) as client:
        def all_final():
            jobs = {j["job_id"]: j for j in client.get(
                "/jobs?all=true&limit=500", headers=KEY_HEADERS).json()["jobs"]}
            pending = [j for j in accepted if jobs[j]["status"] not in
                       ("succeeded", "failed", "cancelled")]
            return (not pending) and jobs
        try:
            jobs = wait_until(all_final, timeout=180, interval=1, what="every accepted job")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{statuses}\n{dump_logs(*procs)}") from None
        assert set(jobs) == set(accepted)  # nothing refused was recorded as a job
        outcomes = Counter(jobs[j]["status"] for j in accepted)
        assert outcomes == Counter({"succeeded": len(accepted)}), (
            outcomes, [jobs[j]["error"] for j in accepted if jobs[j]["error"]])
        assert client.get("/readyz").status_code == 200
    assert all(proc.alive() for proc in procs)
    print(f"load: {dict(statuses)}; {len(accepted)} jobs accepted, all succeeded")
