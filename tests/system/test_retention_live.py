"""The reaper as deployed (issue 23 item 1): with DEBM_RETENTION_SECONDS=60, a `debm serve`
and a distributed API (uvicorn over Redis) each remove a finished job by themselves within
retention + one reaper period, answer 410 for it, show the work in /metrics, and keep the
queued job."""

from __future__ import annotations

import httpx
import pytest

from tests.support import PYTHON, USE_HEADERS, wait_until
from tests.support.processes import (Proc, dump_logs, free_port, service_env, wait_healthy,
                                     wait_job)
from tests.system.conftest import api_server, wait_ready

pytestmark = pytest.mark.system




def test_both_modes_reap_finished_jobs_by_themselves(tmp_path, procs, tiny_checkpoint,
                                                     redis_url, redis_prefix):
    retention = {"DEBM_RETENTION_SECONDS": "60"}
    port = free_port()
    embedded = f"http://127.0.0.1:{port}"
    procs.append(Proc("serve", [PYTHON, "-m", "debm.cli", "serve", "--data-dir",
                                str(tmp_path / "emb"), "--port", str(port)],
                      service_env(tmp_path / "emb", seed_checkpoint=tiny_checkpoint,
                                  **retention), tmp_path))
    port = free_port()
    distributed = f"http://127.0.0.1:{port}"
    procs.append(api_server(service_env(tmp_path / "dist", redis_url=redis_url,
                                        seed_checkpoint=tiny_checkpoint,
                                        DEBM_REDIS_PREFIX=redis_prefix, **retention),
                            tmp_path, port))
    wait_ready(embedded, procs[:1])
    wait_healthy(distributed, procs)
    small = {"n": 1, "seed": 1, "steps_latent": 2, "steps_pixel": 2}
    try:
        with httpx.Client(headers=USE_HEADERS, timeout=30) as client:
            ran = client.post(f"{embedded}/generate", json=small).json()["job_id"]
            wait_job(httpx.Client(base_url=embedded), ran, headers=USE_HEADERS)
            # No worker in the distributed deployment: one job cancelled while queued (final),
            # one left queued.
            cancelled = client.post(f"{distributed}/generate", json=small).json()["job_id"]
            assert client.delete(f"{distributed}/jobs/{cancelled}").status_code == 200
            kept = client.post(f"{distributed}/generate", json=small).json()["job_id"]
            gone = {embedded: [ran], distributed: [cancelled]}
            # retention (60 s) + one reaper period (15 s) + slack for a busy machine
            for base, ids in gone.items():
                for job_id in ids:
                    wait_until(lambda: client.get(f"{base}/jobs/{job_id}").status_code == 410,
                               timeout=150, interval=2, what=f"{job_id} to expire at {base}")
                metrics = client.get(f"{base}/metrics").text
                assert 'debm_reaped_jobs_total{kind="generate"}' in metrics
                assert 'debm_reaper_passes_total{outcome="done"}' in metrics
            assert not (tmp_path / "emb" / "results" / ran).exists()
            queued = client.get(f"{distributed}/jobs/{kept}").json()
            assert queued["status"] == "queued"  # active jobs never expire
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{dump_logs(*procs)}") from None
