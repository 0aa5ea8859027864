"""An SQLite write refused after opening, through real HTTP (issue 23, error path 1): the API
process runs with a file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored), so once jobs.sqlite's
WAL reaches it every write fails with an I/O error, as on a failing or full volume.  Job
creation then answers 503 with Retry-After, never 500, and reads keep working."""

from __future__ import annotations

import httpx
import pytest

from tests.support import PYTHON, USE_HEADERS
from tests.support.processes import Proc, dump_logs, free_port, service_env, wait_healthy

pytestmark = pytest.mark.system

LIMITED = ("import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
           "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]),) * 2); "
           "os.execv(sys.argv[2], sys.argv[2:])")


def test_a_refused_sqlite_write_is_503_not_500(tmp_path, procs, tiny_checkpoint):
    port = free_port()
    env = service_env(tmp_path / "data", seed_checkpoint=tiny_checkpoint,
                      DEBM_MAX_QUEUED_JOBS="100000", DEBM_MAX_QUEUED_JOBS_PER_KEY="100000",
                      DEBM_MAX_QUEUED_WORK="100000000",
                      DEBM_MAX_QUEUED_WORK_PER_KEY="100000000")
    procs.append(Proc("api", [PYTHON, "-c", LIMITED, str(600_000), PYTHON, "-m", "uvicorn",
                              "--factory", "service.app:create_app", "--host", "127.0.0.1",
                              "--port", str(port)], env, tmp_path))
    base = f"http://127.0.0.1:{port}"

    wait_healthy(base, procs)
    codes = []
    with httpx.Client(base_url=base, headers=USE_HEADERS, timeout=30) as client:
        try:
            for i in range(400):
                response = client.post("/generate", json={"n": 1, "seed": i})
                codes.append(response.status_code)
                if response.status_code != 202:
                    break
            assert codes[-1] == 503, (codes[-5:], response.text)
            assert "Retry-After" in response.headers and 500 not in codes
            assert "job store unavailable: jobs.sqlite" in response.json()["detail"], \
                response.text
            assert client.get("/jobs?limit=5").status_code == 200  # reads still work
            assert procs[-1].alive()
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{dump_logs(*procs)}") from None
