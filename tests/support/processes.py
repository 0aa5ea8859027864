"""Services and workers as OS processes: their environment, their logs, waiting for jobs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import uuid
from pathlib import Path

from . import ADMIN_KEYS_SPEC, KEY_HEADERS, REPO, USE_KEYS_SPEC, wait_until


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def service_env(data_dir: Path, *, redis_url: str | None = None,
                seed_checkpoint: Path | None = None, keys: bool = True,
                **extra: str) -> dict[str, str]:
    """Environment of a service process.  ``keys``: the admin key API_KEY and the use key
    USE_KEY; False: none (the server generates one)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("DEBM_") and k not in ("REDIS_URL",)}
    env.update({"DEBM_DATA_DIR": str(data_dir), "DEBM_TORCH_THREADS": "1",
                "DEBM_HEARTBEAT_SECONDS": "1", "DEBM_LOG_LEVEL": "INFO",
                "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    env["DEBM_SEED_CHECKPOINT"] = str(seed_checkpoint) if seed_checkpoint else ""
    if redis_url:
        env["REDIS_URL"] = redis_url
    if keys:
        env["DEBM_ADMIN_KEYS"] = ADMIN_KEYS_SPEC
        env["DEBM_API_KEYS"] = USE_KEYS_SPEC
    env.update(extra)
    return env


class Proc:
    """An OS process with its output in a log file (shown when a test fails)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path):
        self.name = name
        self.log = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self._handle = open(self.log, "wb")
        self.popen = subprocess.Popen(args, env=env, cwd=REPO, stdout=self._handle,
                                      stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        if not self._handle.closed:
            self._handle.flush()
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.alive():
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._handle.close()
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL the whole process group (a prefork worker's children too)."""
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)
        self._handle.close()


def wait_job(client, job_id: str, *, statuses=("succeeded", "failed", "cancelled"),
             timeout: float = 120, headers=None) -> dict:
    def check():
        body = client.get(f"/jobs/{job_id}", headers=headers or KEY_HEADERS).json()
        return body if body.get("status") in statuses else None
    return wait_until(check, timeout=timeout, what=f"job {job_id} to reach {statuses}")


def wait_healthy(base: str, procs, *, timeout: float = 120) -> None:
    """Until GET /healthz answers 200; a process of ``procs`` that exits meanwhile fails the
    test with every log."""
    import httpx

    def up():
        if not all(p.alive() for p in procs):
            raise AssertionError(dump_logs(*procs))
        try:
            return httpx.get(f"{base}/healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False
    wait_until(up, timeout=timeout, interval=0.5, what="the API")


def dump_logs(*procs: Proc) -> str:
    return "\n".join(f"----- {p.name} ({p.log}) -----\n{p.output()[-6000:]}" for p in procs)
