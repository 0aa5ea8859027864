"""Soak benchmark: the service under a steady mix for a bounded time, with faults, sampled
every minute for resource growth, latency drift, errors and lost jobs.

    python benchmarks/soak.py --mode embedded    --json docs/results/soak_embedded.json \
        --plot docs/results/soak_embedded.png                  # 20 minutes by default
    python benchmarks/soak.py --mode distributed --json docs/results/soak_distributed.json \
        --plot docs/results/soak_distributed.png
    python benchmarks/soak.py --url http://host:8000 --key KEY --admin-key KEY  # no faults
    python benchmarks/soak.py --mode embedded --duration 60 --sample-seconds 10   # the test's

``embedded`` starts ``debm serve``; ``distributed`` its own redis-server (append-only file,
so a restart keeps the jobs), the API under uvicorn and a Celery worker per queue.  Both use
a temporary data directory and ``DEBM_RETENTION_SECONDS`` (default 120 s), so jobs expire
during the run.  The mix: 16 scoring clients under 3 keys (one image, or 16 one time in five),
small and large /generate with some cancelled, a tiny training job every few minutes, bad
uploads, event streams opened and dropped.  Faults, once each: the inference worker killed
(SIGKILL) and restarted and Redis restarted (distributed), or the server restarted
(embedded).  Every ``--sample-seconds``: RSS, open descriptors and threads of every process,
data-directory bytes, SQLite file sizes or Redis ``used_memory``, p50/p99 per endpoint and
errors by status.  At the end: every accepted job must be final (or expired, 410), and every
succeeded result must have been readable whenever it was checked before it expired.

Bounded in time (``--duration`` plus at most ``--drain`` seconds) and in count
(``--max-requests``).  On a shared machine, compare within a run, not across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from service_load import REPO, free_port, percentile, report  # noqa: E402
from soak_probes import dir_bytes, proc_figures, process_tree  # noqa: E402
from soak_report import plot, summarise, table  # noqa: E402

ADMIN = "soak-admin-key-0123456789"
KEYS = [f"soak-key-{i}-0123456789abc" for i in range(3)]
FINAL = {"succeeded", "failed", "cancelled"}


def pngs(count: int, seed: int = 0) -> list[bytes]:
    """Grey 28x28 PNGs of random strokes (seeded): what a scorer in a pipeline sends."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        image = np.zeros((28, 28), dtype=np.uint8)
        rows = rng.integers(4, 24, size=2)
        image[rows[0]:rows[1], rng.integers(6, 22)] = 255
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


# --- the service as processes -----------------------------------------------------------------

class Deployment:
    def __init__(self, args, workdir: Path):
        self.args, self.dir = args, workdir
        self.procs: dict[str, subprocess.Popen] = {}
        self.base = args.url
        self.port = free_port()
        self.redis_port = free_port()
        self.events: list[dict] = []  # faults, with their time

    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("DEBM_") and k != "REDIS_URL"}
        env.update({"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                    "DEBM_TORCH_THREADS": str(self.args.threads),
                    "DEBM_DATA_DIR": str(self.dir / "data"), "DEBM_LOG_LEVEL": "WARNING",
                    "DEBM_ADMIN_KEYS": f"admin:{ADMIN}",
                    "DEBM_API_KEYS": ",".join(f"k{i}:{k}" for i, k in enumerate(KEYS)),
                    "DEBM_SEED_CHECKPOINT": str(Path(self.args.checkpoint).resolve()),
                    "DEBM_RETENTION_SECONDS": str(self.args.retention),
                    "DEBM_HEARTBEAT_SECONDS": "1", "PYTHONUNBUFFERED": "1"})
        if self.args.mode == "distributed":
            env["REDIS_URL"] = f"redis://127.0.0.1:{self.redis_port}/0"
        return env

    def spawn(self, name: str, cmd: list[str]) -> None:
        with open(self.dir / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(cmd, env=self.env(), cwd=REPO, stdout=log,
                                                stderr=subprocess.STDOUT,
                                                start_new_session=True)

    def start_redis(self) -> None:
        (self.dir / "redis").mkdir(exist_ok=True)
        self.spawn("redis", ["redis-server", "--port", str(self.redis_port), "--bind",
                             "127.0.0.1", "--dir", str(self.dir / "redis"), "--save", "",
                             "--appendonly", "yes", "--appendfsync", "always",
                             "--maxmemory-policy", "noeviction"])
        time.sleep(0.5)

    def start_worker(self, queue: str) -> None:
        pool = ["-P", "threads", "-c", "32"] if queue == "inference" else ["-P", "prefork",
                                                                            "-c", "1"]
        self.spawn(f"worker-{queue}", [sys.executable, "-m", "celery", "-A",
                                       "worker.celery_app", "worker", "-Q", queue, *pool,
                                       "-n", f"{queue}-soak@%h", "--without-mingle",
                                       "--without-gossip", "--loglevel", "WARNING"])

    def start_serve(self) -> None:
        self.spawn("serve", [sys.executable, "-m", "debm.cli", "serve", "--port",
                             str(self.port)])

    def start(self) -> str:
        if self.base:
            return self.base
        self.base = f"http://127.0.0.1:{self.port}"
        if self.args.mode == "embedded":
            self.start_serve()
        else:
            self.start_redis()
            self.start_api()
            self.start_worker("inference")
            self.start_worker("training")
        self.wait_ready()
        return self.base

    def start_api(self) -> None:
        self.spawn("api", [sys.executable, "-m", "uvicorn", "--factory",
                           "service.app:create_app", "--host", "127.0.0.1", "--port",
                           str(self.port), "--log-level", "warning"])

    def supervise(self, started: float) -> None:
        """Restart a process that exited by itself, as compose's ``restart: unless-stopped``
        does, and record it: an unplanned exit is a finding of the run."""
        for name, proc in list(self.procs.items()):
            if proc.poll() is None:
                continue
            self.procs.pop(name)
            self.events.append({"unplanned_exit": name, "code": proc.returncode,
                                "at_s": round(time.monotonic() - started, 1)})
            {"redis": self.start_redis, "api": self.start_api, "serve": self.start_serve,
             "worker-inference": lambda: self.start_worker("inference"),
             "worker-training": lambda: self.start_worker("training")}[name]()

    def wait_ready(self, timeout: float = 180, started: float | None = None) -> None:
        """Until /readyz is 200 with both queues served; with ``started`` (mid-run), exited
        processes are restarted meanwhile (``supervise``)."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if started is not None:
                self.supervise(started)
            try:
                response = httpx.get(f"{self.base}/readyz", timeout=5)
                if response.status_code == 200 and "training" in response.text:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise SystemExit(f"the service was not ready within {timeout} s; see {self.dir}")

    def stop_one(self, name: str, sig=signal.SIGTERM) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, sig)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)

    def fault(self, what: str, started: float) -> None:
        """One fault of the run (see the module docstring), logged with its time."""
        at = time.monotonic() - started
        if what == "worker":
            self.stop_one("worker-inference", signal.SIGKILL)
            self.start_worker("inference")
        elif what == "redis":
            self.stop_one("redis")
            self.start_redis()
        elif what == "server":
            self.stop_one("serve")
            self.start_serve()
        time.sleep(1.0)  # let a process the fault takes down exit before it is supervised
        self.wait_ready(started=started)
        self.events.append({"fault": what, "at_s": round(at, 1),
                            "back_after_s": round(time.monotonic() - started - at, 1)})

    def stop(self) -> None:
        for name in list(self.procs)[::-1]:
            self.stop_one(name)


class Soak:
    def __init__(self, args, deployment: Deployment):
        self.args, self.dep = args, deployment
        self.rng = random.Random(args.seed)  # the mix's choices, reproducible
        self.images = pngs(32, seed=args.seed)
        self.window: dict[str, list[float]] = defaultdict(list)  # endpoint -> latencies
        self.codes: Counter = Counter()  # (endpoint, status) in the window
        self.all_codes: Counter = Counter()
        self.jobs: dict[str, dict] = {}  # accepted job id -> kind, key, accepted, state
        self.unreadable: list[dict] = []
        self.samples: list[dict] = []
        self.requests = 0
        self.started = time.monotonic()

    def over(self) -> bool:
        return (time.monotonic() - self.started >= self.args.duration
                or self.requests >= self.args.max_requests)

    async def call(self, http, method: str, endpoint: str, url: str, key: str, **kw):
        self.requests += 1
        start = time.perf_counter()
        try:
            response = await http.request(method, url, headers={"X-API-Key": key}, **kw)
            status = response.status_code
        except Exception:  # a fault took the service away: counted, not raised
            response, status = None, "conn_error"
        if response is not None:  # a refused connection is an error, not a latency
            self.window[endpoint].append(time.perf_counter() - start)
        self.codes[(endpoint, status)] += 1
        self.all_codes[(endpoint, status)] += 1
        return response

    def accepted(self, response, kind: str, key: str) -> str | None:
        if response is None or response.status_code not in (200, 202):
            return None
        body = response.json()
        job_id = body.get("job_id")
        if job_id and response.status_code == 200 and "results" in body:
            # Scores in the answer itself (the embedded fast path keeps no record of them):
            # nothing is left to lose or to read back.
            self.jobs[job_id] = {"kind": kind, "key": key, "at": time.time(),
                                 "state": "answered", "read": True}
        elif job_id:
            self.jobs[job_id] = {"kind": kind, "key": key, "at": time.time(), "state": None}
        return job_id

    # -- the clients -------------------------------------------------------------------------
    async def scorer(self, http, index: int) -> None:
        key = KEYS[index % len(KEYS)]
        while not self.over():
            many = self.rng.random() < 0.2
            count = 16 if many else 1
            files = [("files", (f"{i}.png", self.rng.choice(self.images), "image/png"))
                     for i in range(count)]
            endpoint = "score16" if many else "score1"
            response = await self.call(http, "POST", endpoint, "/ood-score", key, files=files)
            self.accepted(response, "score", key)
            # A fault took the service away: wait a little longer rather than spin.
            await asyncio.sleep(self.args.pause if response is not None else 1.0)

    async def generator(self, http) -> None:
        tick = 0
        while not self.over():
            key = KEYS[tick % len(KEYS)]
            large = tick % 6 == 5
            body = {"n": 16 if large else 2, "seed": tick, "steps_latent": 40 if large else 5,
                    "steps_pixel": 10 if large else 3}
            response = await self.call(http, "POST", "generate_large" if large else
                                       "generate_small", "/generate", key, json=body)
            job_id = self.accepted(response, "generate", key)
            if job_id and tick % 4 == 3:  # cancel one in four
                await asyncio.sleep(0.5)
                await self.call(http, "DELETE", "cancel", f"/jobs/{job_id}", key)
            tick += 1
            await asyncio.sleep(self.args.generate_every)

    async def trainer(self, http) -> None:
        while not self.over():
            body = {"dataset": "digits8x8", "preset": "tiny", "name": "soak",
                    "seed": self.rng.randrange(1000)}
            response = await self.call(http, "POST", "train", "/train", ADMIN, json=body)
            self.accepted(response, "train", ADMIN)
            await self.pause(self.args.train_every)

    async def nuisance(self, http) -> None:
        """Bad uploads, and event streams opened and dropped."""
        while not self.over():
            key = self.rng.choice(KEYS)
            await self.call(http, "POST", "bad_upload", "/ood-score", key,
                            files=[("files", ("x.png", b"not an image" * 10, "image/png"))])
            mine = [j for j, info in self.jobs.items()  # answered scores have no record
                    if info["key"] == key and info["state"] != "answered"][-50:]
            if mine:
                job_id = self.rng.choice(mine)
                try:
                    async with http.stream("GET", f"/jobs/{job_id}/events",
                                           headers={"X-API-Key": key}, timeout=10) as stream:
                        self.codes[("events", stream.status_code)] += 1
                        self.all_codes[("events", stream.status_code)] += 1
                        async for _ in stream.aiter_lines():
                            break  # dropped after the first line
                except Exception:
                    self.codes[("events", "conn_error")] += 1
            await self.pause(self.args.nuisance_every)

    async def reader(self, http) -> None:
        """Check succeeded results while they must still be readable; learn final states."""
        margin = 10.0
        while not self.over():
            for job_id, info in list(self.jobs.items())[-200:]:
                if info.get("read") and (info["state"] in FINAL or info["state"] == "answered"):
                    continue
                response = await self.call(http, "GET", "job", f"/jobs/{job_id}",
                                           info["key"])
                if response is None or response.status_code != 200:
                    continue
                body = response.json()
                info["state"] = body["status"]
                if body["status"] == "succeeded" and \
                        time.time() - body["finished"] < self.args.retention - margin:
                    result = await self.call(http, "GET", "result", f"/jobs/{job_id}/result",
                                             info["key"])
                    if result is not None and result.status_code != 200:
                        self.unreadable.append({"job_id": job_id, "status":
                                                result.status_code})
                    info["read"] = True
            await self.pause(2.0)

    async def pause(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.over() and time.monotonic() < end:
            await asyncio.sleep(min(0.5, end - time.monotonic()))

    # -- sampling and faults -------------------------------------------------------------------
    def sample(self) -> None:
        tree = process_tree({n: p.pid for n, p in self.dep.procs.items()})
        processes = {name: proc_figures(pids) for name, pids in tree.items()}
        data = self.dep.dir / "data"
        row = {"t_s": round(time.monotonic() - self.started, 1), "processes": processes,
               "data_dir_bytes": dir_bytes(data),
               "sqlite_bytes": {p.name: p.stat().st_size for p in data.glob("*.sqlite*")}
               if data.exists() else {},
               "latency": {e: {"n": len(v), "p50_s": percentile(v, 50),
                               "p99_s": percentile(v, 99)} for e, v in self.window.items()},
               "codes": {f"{e} {s}": n for (e, s), n in sorted(self.codes.items(), key=str)},
               "accepted_jobs": len(self.jobs)}
        if self.args.mode == "distributed" and "redis" in self.dep.procs:
            try:
                import redis

                client = redis.Redis(port=self.dep.redis_port, socket_timeout=2)
                row["redis_used_memory"] = int(client.info("memory")["used_memory"])
                client.close()
            except Exception:
                row["redis_used_memory"] = None
        self.samples.append(row)
        self.window.clear()
        self.codes.clear()

    async def monitor(self) -> None:
        faults = (["worker", "redis"] if self.args.mode == "distributed" else ["server"])
        at = {f: self.args.duration * (0.4 + 0.2 * i) for i, f in enumerate(faults)}
        if self.args.url or self.args.no_faults:
            at = {}
        next_sample = 0.0
        while not self.over():
            now = time.monotonic() - self.started
            if now >= next_sample:
                self.sample()
                next_sample += self.args.sample_seconds
            for fault, when in list(at.items()):
                if now >= when:
                    del at[fault]
                    await asyncio.to_thread(self.dep.fault, fault, self.started)
            if not self.args.url:
                self.dep.supervise(self.started)
            await asyncio.sleep(0.5)
        self.sample()

    async def run(self) -> None:
        import httpx

        async with httpx.AsyncClient(base_url=self.dep.base, timeout=120,
                                     limits=httpx.Limits(max_connections=64)) as http:
            tasks = [self.scorer(http, i) for i in range(self.args.clients)]
            tasks += [self.generator(http), self.trainer(http), self.nuisance(http),
                      self.reader(http), self.monitor()]
            await asyncio.gather(*tasks)
            await self.drain(http)

    async def drain(self, http) -> None:
        """Wait (at most --drain s) for every accepted job to be final or expired (410)."""
        deadline = time.monotonic() + self.args.drain
        pending = {job_id for job_id, info in self.jobs.items() if info["state"] != "answered"}
        while pending and time.monotonic() < deadline:
            for job_id in list(pending):
                info = self.jobs[job_id]
                try:
                    response = await http.get(f"/jobs/{job_id}",
                                              headers={"X-API-Key": info["key"]})
                except Exception:  # the service is coming back: ask again
                    break
                if response.status_code == 410:
                    info["state"] = info["state"] or "expired"
                    pending.discard(job_id)
                elif response.status_code == 200 and response.json()["status"] in FINAL:
                    info["state"] = response.json()["status"]
                    pending.discard(job_id)
            if pending:
                await asyncio.sleep(1.0)
        for job_id in pending:
            self.jobs[job_id]["state"] = "lost"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("embedded", "distributed"), default="embedded")
    parser.add_argument("--url", help="a running service (no faults, no process figures)")
    parser.add_argument("--key", help="with --url: a use key for every client")
    parser.add_argument("--admin-key", help="with --url: an admin key (training)")
    parser.add_argument("--duration", type=float, default=1200.0)
    parser.add_argument("--max-requests", type=int, default=1_000_000)
    parser.add_argument("--drain", type=float, default=180.0)
    parser.add_argument("--retention", type=int, default=120)
    parser.add_argument("--sample-seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--pause", type=float, default=0.5, help="each scorer between calls")
    parser.add_argument("--generate-every", type=float, default=5.0)
    parser.add_argument("--train-every", type=float, default=240.0)
    parser.add_argument("--nuisance-every", type=float, default=10.0)
    parser.add_argument("--no-faults", action="store_true")
    parser.add_argument("--checkpoint", default=str(REPO / "checkpoints" / "demo"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json")
    parser.add_argument("--plot")
    parser.add_argument("--workdir", help="keep the data directory and logs here (default: "
                                          "a temporary directory, removed at the end)")
    args = parser.parse_args(argv)
    if args.url and not (args.key and args.admin_key):
        parser.error("--url needs --key and --admin-key")
    if args.url:
        global ADMIN, KEYS
        ADMIN, KEYS = args.admin_key, [args.key]
    with tempfile.TemporaryDirectory(prefix="debm-soak-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        deployment = Deployment(args, workdir)
        try:
            deployment.start()
            soak = Soak(args, deployment)
            asyncio.run(soak.run())
        finally:
            deployment.stop()
        result = summarise(soak, args)
    report(result, table, args.json, sys.argv[1:] if argv is None else argv)
    if args.plot:
        plot(result, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
