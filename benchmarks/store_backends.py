"""Artifact store backends side by side: distributed mode on the local backend (the data
directory) and on the S3 backend (moto's S3 server over HTTP), in one run.

    python benchmarks/store_backends.py --json docs/results/store_backends.json

For each backend it starts its own stack (redis-server, the API under uvicorn, an inference
and a training worker: ``service_load.Services``), then measures:

    cold    the first one-image /ood-score (the inference worker has not loaded the model;
            on S3 its checkpoint cache is empty, so the checkpoint is downloaded too)
    p50     sequential one-image /ood-score requests, warm (median and p99)
    32 cl.  images/s with 32 concurrent one-image clients, warm

Every loop is bounded in count and time.  The machine may be shared: compare the two columns
of one run, not seconds across runs.  moto keeps objects in memory and is no performance
reference for a real S3; what is compared is our code's overhead per request (the upload PUT,
the worker's GET and the clean-up DELETE, the registry index read).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from service_load import (KEY, REPO, Services, digit_pngs, free_port,  # noqa: E402
                          percentile, report, score_clients)

S3_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
          "AWS_DEFAULT_REGION": "us-east-1"}


def start_moto(workdir: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    with open(workdir / "moto.log", "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                 "-p", str(port)], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **S3_ENV}, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("moto's S3 server did not start")


def one_image(base: str, png: bytes) -> float:
    import httpx

    start = time.perf_counter()
    response = httpx.post(f"{base}/ood-score", files={"files": ("d.png", png, "image/png")},
                          headers={"X-API-Key": KEY}, timeout=120)
    if response.status_code != 200:
        raise SystemExit(f"/ood-score answered {response.status_code}: {response.text}")
    return time.perf_counter() - start


def measure(args, backend: str, workdir: Path, env: list[str]) -> dict:
    stack_args = argparse.Namespace(url=None, mode="distributed", threads=args.threads,
                                    checkpoint=args.checkpoint, env=env,
                                    inference_pool="-P threads -c 32")
    services = Services(stack_args, workdir)
    pngs = digit_pngs(64)
    try:
        base = services.start()
        cold = one_image(base, pngs[0])
        sequential = [one_image(base, pngs[i % len(pngs)]) for i in range(args.sequential)]
        concurrent = asyncio.run(score_clients(base, KEY, pngs, 32, args.per_client,
                                               args.time_cap))
    finally:
        services.stop()
    return {"backend": backend, "cold_s": cold, "p50_s": statistics.median(sequential),
            "p99_s": percentile(sequential, 99), "requests": len(sequential),
            "clients_32": concurrent}


def run(args) -> dict:
    result = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "cpus": os.cpu_count(), "threads": args.threads,
              "python": platform.python_version(), "arms": {}}
    with tempfile.TemporaryDirectory(prefix="debm-store-bench-") as tmp:
        work = Path(tmp)
        (work / "local").mkdir()
        result["arms"]["local"] = measure(args, "local", work / "local", [])
        (work / "s3").mkdir()
        moto, url = start_moto(work / "s3")
        try:
            env = [f"{k}={v}" for k, v in S3_ENV.items()] + [
                "DEBM_ARTIFACTS=s3://debm-bench/store", f"DEBM_S3_ENDPOINT_URL={url}",
                "DEBM_S3_CREATE_BUCKET=true"]
            result["arms"]["s3"] = measure(args, "s3", work / "s3", env)
        finally:
            moto.terminate()
            moto.wait(10)
    return result


def table(r: dict) -> str:
    local, s3 = r["arms"]["local"], r["arms"]["s3"]
    rows = [("measure", "local", "s3 (moto)", "s3 / local")]
    for label, key in (("first request, cold cache, ms", "cold_s"),
                       ("one image p50 ms (warm)", "p50_s"), ("one image p99 ms (warm)", "p99_s")):
        rows.append((label, f"{1000 * local[key]:.1f}", f"{1000 * s3[key]:.1f}",
                     f"{s3[key] / local[key]:.2f}x"))
    a, b = local["clients_32"], s3["clients_32"]
    rows.append((f"32 clients img/s ({a['requests']} / {b['requests']} requests)",
                 f"{a['images_per_s']:.1f}", f"{b['images_per_s']:.1f}",
                 f"{b['images_per_s'] / a['images_per_s']:.2f}x"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [f"distributed mode, {r['threads']} torch thread(s), {r['cpus']} CPUs, "
             f"{r['started']} (a busy shared machine: compare columns, not runs)"]
    for i, row in enumerate(rows):
        lines.append("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |")
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(REPO / "checkpoints" / "demo"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the workers")
    parser.add_argument("--sequential", type=int, default=30,
                        help="sequential one-image requests for p50/p99")
    parser.add_argument("--per-client", type=int, default=4,
                        help="requests per client in the 32-client phase")
    parser.add_argument("--time-cap", type=float, default=60.0,
                        help="seconds at most for the 32-client phase")
    parser.add_argument("--json", help="write the results here")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    report(run(args), table, args.json, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
