"""Service load benchmark: the live service against the raw model, side by side in one run.

    python benchmarks/service_load.py --mode embedded    --json docs/results/service_embedded.json
    python benchmarks/service_load.py --mode distributed --json docs/results/service_distributed.json
    python benchmarks/service_load.py --url http://host:8000 --key KEY   # a running service

``embedded`` starts ``debm serve`` on a free loopback port with a temporary data directory;
``distributed`` starts its own redis-server (temporary directory, free port), the API under
uvicorn and one Celery inference worker (``-Q inference -c 32 -P threads``, as the compose
file runs it; and a training worker for the training row).  **The services run at the shipped
defaults**: no torch thread count or other setting is forced on them (only the data
directory, an admin key and the seed checkpoint; ``--env`` adds settings for an A/B run, and
the report lists them).  The raw model (the same checkpoint) runs in this process right
before each service phase, **at its best thread count**: every raw figure is taken at 1 torch
thread and at one per CPU, the better one is kept and the report says which, so that every
service figure has its reference from the same run:

    /ood-score images/s with 1, 8, 32 concurrent one-image clients  vs  one batched forward
    one-image /ood-score p50 / p99                                   vs  one raw scoring call
    /generate n=16, n=64 end to end (?wait)                          vs  the direct sampler
    worker training iterations/s                                     vs  ``debm train``

Every loop is bounded in count and in time.  Images are MNIST digits (mnist5k), PNG-encoded.
The machine may be shared: compare ratios within one run, not seconds across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from raw_reference import REPO, RawModel, percentile, raw_training, rate  # noqa: F401

KEY = "bench-admin-key-0123456789"
HEADERS = {"X-API-Key": KEY}


# --- helpers ----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def digit_pngs(count: int) -> list[bytes]:
    from PIL import Image

    from model.data import load_mnist5k

    images, _ = load_mnist5k()
    out = []
    for image in images[:count]:
        buffer = io.BytesIO()
        Image.fromarray(image.squeeze()).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


# --- starting the service ---------------------------------------------------------------------

class Services:
    def __init__(self, args, workdir: Path):
        self.args, self.workdir, self.procs, self.logs = args, workdir, [], []
        self.base = args.url

    def env(self, **extra) -> dict:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("DEBM_") and k != "REDIS_URL"}
        env.update({"PYTHONPATH": str(REPO), "DEBM_DATA_DIR": str(self.workdir / "data"),
                    "DEBM_ADMIN_KEYS": f"bench:{KEY}", "DEBM_LOG_LEVEL": "WARNING",
                    "DEBM_SEED_CHECKPOINT": str(Path(self.args.checkpoint).resolve()),
                    "PYTHONUNBUFFERED": "1"})
        threads = getattr(self.args, "threads", None)
        if threads:  # the A/B scripts pin it; service_load leaves the shipped default
            env.update({"OMP_NUM_THREADS": str(threads), "DEBM_TORCH_THREADS": str(threads)})
        for item in self.args.env:
            name, _, value = item.partition("=")
            env[name] = value
        env.update(extra)
        return env

    def spawn(self, name: str, cmd: list[str], env: dict) -> None:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115  (closed in stop())
        self.logs.append(log)
        self.procs.append((name, subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log,
                                                  stderr=subprocess.STDOUT,
                                                  start_new_session=True)))

    def start(self) -> str:
        if self.base:
            return self.base
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        if self.args.mode == "embedded":
            self.spawn("serve", [sys.executable, "-m", "debm.cli", "serve", "--port",
                                 str(port)], self.env())
        else:
            redis_port = free_port()
            (self.workdir / "redis").mkdir()
            self.spawn("redis", ["redis-server", "--port", str(redis_port), "--save", "",
                                 "--appendonly", "no", "--dir", str(self.workdir / "redis")],
                       self.env())
            env = self.env(REDIS_URL=f"redis://127.0.0.1:{redis_port}/0")
            self.spawn("api", [sys.executable, "-m", "uvicorn", "--factory",
                               "service.app:create_app", "--host", "127.0.0.1", "--port",
                               str(port), "--log-level", "warning"], env)
            for queue in ("inference", "training"):
                self.spawn(f"worker-{queue}", worker_command(queue, self.args), env)
        self.wait_ready()
        return self.base

    def wait_ready(self, timeout: float = 180) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs:
                if proc.poll() is not None:
                    raise SystemExit(f"{name} exited; see {self.workdir}/{name}.log")
            try:
                response = httpx.get(f"{self.base}/readyz", timeout=5)
                detail = json.dumps(response.json())
                if response.status_code == 200 and ("training" in detail or self.args.url):
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.3)
        raise SystemExit(f"the service was not ready within {timeout} s")

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for _, proc in reversed(self.procs):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        for log in self.logs:
            log.close()


def worker_command(queue: str, args) -> list[str]:
    """The Celery worker of one queue, as docs/OPERATIONS.md runs it."""
    pool = args.inference_pool if queue == "inference" else "-P prefork -c 1"
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", queue,
            *pool.split(), "-n", f"{queue}-bench@%h", "--without-mingle",
            "--without-gossip", "--loglevel", "WARNING"]


# --- load against the service -----------------------------------------------------------------

async def score_clients(base: str, key: str, pngs: list[bytes], clients: int, per_client: int,
                        time_cap: float, warmup: bool = False) -> dict:
    """``clients`` concurrent clients, ``per_client`` one-image requests each.  With
    ``warmup`` every client first sends one untimed request on its connection and the timed
    phase starts when all have: steady state, not connection set-up."""
    import httpx

    latencies: list[float] = []
    codes: dict[int, int] = {}
    deadline = time.monotonic() + time_cap
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=base, headers={"X-API-Key": key}, timeout=120,
                                 limits=limits) as http:
        warmed = asyncio.Event()
        waiting = [clients]

        async def client(index: int) -> None:
            if warmup:
                await http.post("/ood-score", files={"files": ("d.png", pngs[index % len(pngs)],
                                                               "image/png")})
                waiting[0] -= 1
                if waiting[0] == 0:
                    warmed.set()
                await warmed.wait()
            for i in range(per_client):
                if time.monotonic() > deadline:
                    return
                png = pngs[(index * per_client + i) % len(pngs)]
                start = time.perf_counter()
                response = await http.post("/ood-score", files={"files": ("d.png", png,
                                                                           "image/png")})
                latencies.append(time.perf_counter() - start)
                codes[response.status_code] = codes.get(response.status_code, 0) + 1

        tasks = [asyncio.ensure_future(client(i)) for i in range(clients)]
        if warmup:
            await warmed.wait()
        start = time.perf_counter()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    ok = codes.get(200, 0)
    return {"clients": clients, "requests": sum(codes.values()), "ok": ok,
            "refused_429": codes.get(429, 0), "codes": codes, "seconds": elapsed,
            "images_per_s": ok / elapsed if elapsed else 0.0,
            "p50_s": statistics.median(latencies) if latencies else None,
            "p99_s": percentile(latencies, 99)}


def generate_once(base: str, key: str, n: int) -> dict:
    import httpx

    start = time.perf_counter()
    response = httpx.post(f"{base}/generate?wait=120", json={"n": n, "seed": 0},
                          headers={"X-API-Key": key}, timeout=180)
    return {"status": response.status_code, "seconds": time.perf_counter() - start}


def training_job(base: str, key: str, args) -> dict:
    import httpx

    body = {"dataset": "mnist5k", "preset": args.train_preset, "name": "bench",
            "overrides": {"training": {"warmup_steps": 0, "iterations": args.train_iters}}}
    response = httpx.post(f"{base}/train", json=body, headers={"X-API-Key": key}, timeout=60)
    if response.status_code != 202:
        return {"error": f"{response.status_code} {response.text[:300]}"}
    job_id = response.json()["job_id"]
    marks: dict[int, float] = {}
    deadline = time.monotonic() + args.train_timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{base}/jobs/{job_id}", headers={"X-API-Key": key}, timeout=30).json()
        step = (job.get("progress") or {}).get("step")
        if isinstance(step, int) and step not in marks:
            marks[step] = time.perf_counter()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            if job["status"] != "succeeded":
                return {"error": f"{job['status']}: {job.get('error')}"}
            return rate(marks)
        time.sleep(0.1)
    return {"error": "timed out"}


# --- main -------------------------------------------------------------------------------------

def run(args) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="debm-bench-"))
    pngs = digit_pngs(256)
    result: dict = {"mode": "url" if args.url else args.mode, "threads": "service default",
                    "settings": args.env, "load_average": os.getloadavg(),
                    "checkpoint": args.checkpoint, "python": platform.python_version(),
                    "cpus": os.cpu_count(), "started": time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                                     time.gmtime())}
    print("raw model ...", file=sys.stderr, flush=True)
    raw = RawModel(args, pngs)
    services = Services(args, workdir)
    try:
        base = services.start()
        key = args.key or KEY
        print(f"service at {base}", file=sys.stderr, flush=True)
        asyncio.run(score_clients(base, key, pngs, 1, 3, 60))  # warm: model loaded
        result["one_image"] = {"raw": raw.score_one(), "service": asyncio.run(
            score_clients(base, key, pngs, 1, args.sequential, args.time_cap))}
        result["concurrent"] = {
            clients: interleaved(raw, lambda clients=clients: asyncio.run(score_clients(
                base, key, pngs, clients, max(1, args.images_per_level // clients),
                args.time_cap, warmup=True)), args.rounds)
            for clients in args.clients}
        result["generate"] = {n: generate_rounds(raw, lambda n=n: generate_once(base, key, n),
                                                 n, args.gen_rounds)
                              for n in args.generate_n}
        if not args.skip_training:
            result["training_service"] = training_job(base, key, args)
    finally:
        services.stop()
    if not args.skip_training:
        result["training_cli"] = raw_training(args, workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    return result


def interleaved(raw: RawModel, service_phase, rounds: int) -> dict:
    """Alternate the raw batched reference and a service load phase ``rounds`` times; each
    round's ratio compares phases seconds apart, and the median round is reported.  This
    machine's speed drifts by up to 1.6x within minutes (raw throughput 32 -> 19 images/s
    between two runs a minute apart), so one reference taken before the phase could be
    compared with a phase that ran at another speed."""
    runs = []
    for _ in range(max(1, rounds)):
        reference = raw.score_batch()
        service = service_phase()
        runs.append({"raw": reference, "service": service,
                     "ratio": service["images_per_s"] / reference["images_per_s"]})
    median = sorted(runs, key=lambda run: run["ratio"])[len(runs) // 2]
    return {"raw": median["raw"], "service": median["service"], "ratio": median["ratio"],
            "ratios": [round(run["ratio"], 3) for run in runs],
            "refused_429": sum(run["service"]["refused_429"] for run in runs),
            "requests": sum(run["service"]["requests"] for run in runs), "rounds": runs}


def generate_rounds(raw: RawModel, service_call, n: int, rounds: int) -> dict:
    """The direct sampler and /generate alternated ``rounds`` times; the median round."""
    runs = []
    for _ in range(max(1, rounds)):
        raw_run = raw.generate(n)
        service = service_call()
        runs.append({"raw_s": raw_run["seconds"], "raw_threads": raw_run["threads"],
                     "service": service, "ratio": service["seconds"] / raw_run["seconds"]})
    median = sorted(runs, key=lambda run: run["ratio"])[len(runs) // 2]
    return {**median, "ratios": [round(run["ratio"], 3) for run in runs], "rounds": runs}


def table(r: dict) -> str:
    rows = [("measure", "raw model", "service", "ratio")]
    for clients, c in r["concurrent"].items():
        ref, svc = c["raw"]["images_per_s"], c["service"]
        spread = "" if len(c.get("ratios", [])) < 2 else \
            f" (rounds {min(c['ratios']):.2f}-{max(c['ratios']):.2f})"
        rows.append((f"/ood-score {clients} clients, img/s ({c.get('refused_429', 0)} of "
                     f"{c.get('requests', svc['requests'])} refused)",
                     f"{ref:.1f} (batch of 32, {c['raw'].get('threads')} thr)",
                     f"{svc['images_per_s']:.1f}", f"{svc['images_per_s'] / ref:.2f}x{spread}"))
    one = r["one_image"]
    for q in ("p50", "p99"):
        ref, got = one["raw"][f"{q}_s"], one["service"][f"{q}_s"]
        rows.append((f"one image {q} ms", f"{1000 * ref:.1f} ({one['raw'].get('threads')} thr)",
                     f"{1000 * got:.1f}",
                     f"+{1000 * (got - ref):.1f} ms"))
    for n, g in r["generate"].items():
        svc = g["service"]
        spread = "" if len(g.get("ratios", [])) < 2 else \
            f" (rounds {min(g['ratios']):.2f}-{max(g['ratios']):.2f})"
        rows.append((f"/generate n={n} s (HTTP {svc['status']})",
                     f"{g['raw_s']:.2f} ({g.get('raw_threads')} thr)",
                     f"{svc['seconds']:.2f}", f"{svc['seconds'] / g['raw_s']:.2f}x{spread}"))
    if "training_service" in r:
        svc, cli = r["training_service"], r.get("training_cli", {})
        if "it_per_s" in svc and "it_per_s" in cli:
            rows.append((f"training it/s ({svc['steps']} steps)", f"{cli['it_per_s']:.3f}",
                         f"{svc['it_per_s']:.3f}", f"{svc['it_per_s'] / cli['it_per_s']:.2f}x"))
        else:
            rows.append(("training it/s", str(cli.get("error", ""))[:40],
                         str(svc.get("error", ""))[:40], "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [f"mode {r['mode']}, service at its shipped defaults"
             f"{' + ' + ' '.join(r['settings']) if r.get('settings') else ''}, {r['cpus']} CPUs, "
             f"{r['started']}, load average at the start "
             f"{' '.join(f'{x:.1f}' for x in r.get('load_average', ()))}"]
    for i, row in enumerate(rows):
        lines.append("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |")
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("embedded", "distributed"), default="embedded")
    parser.add_argument("--url", help="benchmark a running service instead of starting one")
    parser.add_argument("--key", help="API key for --url (an admin key for the training row)")
    parser.add_argument("--checkpoint", default=str(REPO / "checkpoints" / "demo"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--raw-threads", type=int, nargs="+",
                        help="torch thread counts to try for the raw model (default: 1 and "
                             "one per CPU; the better is kept). The services always run at "
                             "their shipped default")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--images-per-level", type=int, default=192,
                        help="timed one-image requests per concurrency level (after one "
                             "untimed warm-up request per client)")
    parser.add_argument("--sequential", type=int, default=15,
                        help="sequential one-image requests for p50/p99")
    parser.add_argument("--generate-n", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--rounds", type=int, default=3,
                        help="raw / service rounds per concurrency level (median reported)")
    parser.add_argument("--raw-repeats", type=int, default=3)
    parser.add_argument("--gen-repeats", type=int, default=1)
    parser.add_argument("--gen-rounds", type=int, default=3,
                        help="direct sampler / /generate rounds per n (median reported)")
    parser.add_argument("--time-cap", type=float, default=120.0,
                        help="seconds at most per load phase")
    parser.add_argument("--train-preset", default="demo")
    parser.add_argument("--train-iters", type=int, default=10)
    parser.add_argument("--train-timeout", type=float, default=600.0)
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--inference-pool", default="-P threads -c 32",
                        help="pool arguments of the distributed inference worker "
                             "(the baseline before batching ran '-P prefork -c 1')")
    parser.add_argument("--env", action="append", default=[],
                        help="NAME=VALUE for the service processes (repeatable)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    args.threads = None  # Services: no thread count forced on the service (the shipped default)
    if args.url and not args.key:
        parser.error("--url needs --key")
    report(run(args), table, args.json, sys.argv[1:])
    return 0


def report(result: dict, make_table, json_path: str | None, argv: list[str]) -> None:
    """Record the command that produced ``result``, print its table, write its JSON."""
    result["command"] = "python " + " ".join([Path(sys.argv[0]).as_posix(), *argv])
    print(make_table(result))
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
