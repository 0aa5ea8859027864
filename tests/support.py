"""Helpers for the service, worker and system tests: real images, real processes, real Redis.

Nothing here imitates a component: images are encoded by Pillow, servers and workers are OS
processes, Redis is the machine's server (each test session claims its own DB number).
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
API_KEY = "test-key-0123456789abcdef"  # an admin key, named "tester"
KEY_HEADERS = {"X-API-Key": API_KEY}
USE_KEY = "use-key-0123456789abcdef"  # a use-only key, named "user"
USE_HEADERS = {"X-API-Key": USE_KEY}
ADMIN_KEYS_SPEC = f"tester:{API_KEY}"
USE_KEYS_SPEC = f"user:{USE_KEY}"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


def tiny_total_steps(**training) -> int:
    """Warm-up + iterations of the tiny preset (with overrides), as model.formats.config defines it."""
    from model.formats.config import preset

    config = preset("tiny").replace(training=training) if training else preset("tiny")
    return config.training.warmup_steps + config.training.iterations


def new_job(store, owner="alice", kind="generate", **params):
    """Create a queued job with a random id in ``store``."""
    import uuid

    from core.jobs import JobRecord

    return store.create(JobRecord(id=uuid.uuid4().hex, kind=kind, owner=owner, params=params))


# --- images ---------------------------------------------------------------------------------

def image_bytes(fmt: str = "PNG", *, size=(28, 28), mode: str = "L", seed: int = 0,
                **save) -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3, "RGBA": 4, "LA": 2}[mode]
    shape = (size[1], size[0]) if channels == 1 else (size[1], size[0], channels)
    array = (rng.random(shape) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def digit_png(seed: int = 0) -> bytes:
    """A bright stroke on black, roughly digit-like."""
    image = np.zeros((28, 28), dtype=np.uint8)
    col = 8 + seed % 10
    image[4:24, col:col + 4] = 255
    buffer = io.BytesIO()
    Image.fromarray(image, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def png_16bit() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


def animated_png() -> bytes:
    frames = [Image.new("L", (16, 16), color=c) for c in (0, 128, 255)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="PNG", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def image_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def multipart_fields_only(**fields: str) -> tuple[bytes, str]:
    """A multipart body with text fields and no file part (httpx would send urlencoded)."""
    boundary = "fieldsonly"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
             for k, v in fields.items()]
    body = ("".join(parts) + f"--{boundary}--\r\n").encode()
    return body, f"multipart/form-data; boundary={boundary}"


def decode_png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data), formats=["PNG"])
    image.load()
    return image


# --- processes ------------------------------------------------------------------------------

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


def wait_until(predicate, *, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def wait_job(client, job_id: str, *, statuses=("succeeded", "failed", "cancelled"),
             timeout: float = 120, headers=None) -> dict:
    def check():
        body = client.get(f"/jobs/{job_id}", headers=headers or KEY_HEADERS).json()
        return body if body.get("status") in statuses else None
    return wait_until(check, timeout=timeout, what=f"job {job_id} to reach {statuses}")


def dump_logs(*procs: Proc) -> str:
    return "\n".join(f"----- {p.name} ({p.log}) -----\n{p.output()[-6000:]}" for p in procs)


# --- Redis ----------------------------------------------------------------------------------

OUR_KEY_PREFIXES = (b"debm", b"_kombu", b"celery-task-meta-", b"unacked", b"inference",
                    b"training")
LOCK_KEY = "debm-test:lock"


def claim_redis_db() -> tuple[str, callable]:
    """Claim a Redis DB on 127.0.0.1:6379 for this test session: the first of 15..1 that is
    empty (or holds only keys these tests create) and not locked by a concurrent session.
    Returns (url, release).  DEBM_TEST_REDIS_URL overrides the search."""
    import redis

    override = os.environ.get("DEBM_TEST_REDIS_URL")
    if override:
        client = redis.Redis.from_url(override)
        client.flushdb()
        return override, client.flushdb
    token = uuid.uuid4().hex
    try:
        redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=2).ping()
    except redis.exceptions.ConnectionError as exc:
        raise RuntimeError(f"these tests need Redis at {REDIS_HOST}:{REDIS_PORT} ({exc}); "
                           "start it with: redis-server --daemonize yes --save '' "
                           "--appendonly no (.ci/run does)") from None
    for db in range(15, 0, -1):
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
        if not client.set(LOCK_KEY, token, nx=True, ex=3600):
            continue
        foreign = [k for k in client.scan_iter(count=1000)
                   if k != LOCK_KEY.encode() and not k.startswith(OUR_KEY_PREFIXES)]
        if foreign:
            client.delete(LOCK_KEY)
            continue
        for key in client.scan_iter(count=1000):
            if key != LOCK_KEY.encode():
                client.delete(key)

        def release(client=client):
            if client.get(LOCK_KEY) == token.encode():
                client.flushdb()

        return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}", release
    raise RuntimeError("no free Redis DB in 1..15 for the tests")


def json_of(response) -> dict:
    try:
        return response.json()
    except json.JSONDecodeError:
        return {"raw": response.text[:500]}


class RedisServer:
    """A redis-server of a test's own (``--appendonly yes``, on a free port, in a temp dir),
    for tests that stop and restart Redis; the machine's server on 6379 is never touched."""

    def __init__(self, directory: Path, log_dir: Path):
        self.dir, self.log_dir = Path(directory), Path(log_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: Proc | None = None

    def start(self) -> "RedisServer":
        import redis

        self.proc = Proc("redis", ["redis-server", "--port", str(self.port), "--bind",
                                   "127.0.0.1", "--dir", str(self.dir), "--appendonly", "yes",
                                   "--appendfsync", "always", "--save", "",
                                   "--maxmemory-policy", "noeviction"], os.environ.copy(),
                         self.log_dir)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)

        def up():
            try:
                return client.ping()
            except redis.exceptions.ConnectionError:  # also "LOADING" while it reads the AOF
                return False
        wait_until(up, timeout=20, interval=0.1, what="redis-server to answer")
        return self

    def stop(self) -> None:
        """SIGTERM: Redis finishes the AOF and exits, as `docker compose restart redis` does."""
        if self.proc is not None:
            self.proc.stop(signal.SIGTERM, timeout=20)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()


class SmallFilesystem:
    """A real size-limited filesystem (tmpfs) mounted at ``path``: writes past its size fail
    with ENOSPC, and ``read_only()`` remounts it so writes fail with EROFS, exactly what a
    full or read-only data volume does.  Mounting needs root (CI runs as root); a non-root
    run fails here with that reason rather than faking the fault."""

    def __init__(self, path: Path, size_mb: int):
        self.path, self.size_mb = Path(path), size_mb
        self.mounted = False

    def mount(self) -> "SmallFilesystem":
        if os.geteuid() != 0:
            raise RuntimeError("the disk-full fault test mounts a small tmpfs and needs root "
                               "(CI runs as root)")
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m,mode=0755",
                        "tmpfs", str(self.path)], check=True)
        self.mounted = True
        return self

    def fill(self, leave: int = 0) -> Path:
        """Fill it up, leaving ``leave`` bytes free."""
        filler = self.path / "filler.bin"
        free = os.statvfs(self.path).f_bavail * os.statvfs(self.path).f_frsize
        with open(filler, "ab") as handle:
            remaining = free - leave
            block = b"\0" * (1 << 20)
            while remaining > 0:
                try:
                    remaining -= handle.write(block[:remaining])
                except OSError:
                    break
        return filler

    def free_up(self) -> None:
        (self.path / "filler.bin").unlink(missing_ok=True)

    def read_only(self, on: bool = True) -> None:
        subprocess.run(["mount", "-o", f"remount,{'ro' if on else 'rw'}", str(self.path)],
                       check=True)

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], check=False)
            self.mounted = False
