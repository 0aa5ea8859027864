"""Where one sequential one-image ``/ood-score`` spends its time, stage by stage.

    python benchmarks/request_timeline.py --mode embedded    --json docs/results/timeline_embedded.json
    python benchmarks/request_timeline.py --mode distributed --json docs/results/timeline_distributed.json

Starts the service at its shipped defaults exactly as benchmarks/service_load.py does, with one
difference: each service process turns on the ``debm.timing`` logger alone (DEBUG, into a file
of its own), which writes a ``time.monotonic()`` timestamp at each stage of a scoring request
(service.routers.score, worker.local, worker.batching).  ``time.monotonic`` is one clock for
every process of the host, so the client's, the API's and the worker's stamps line up.

Then, against the same PNG digits:
  floor    a bare FastAPI app (``--serve-floor``, started here) that reads the multipart
           upload and scores inline in its handler with the raw model: what HTTP + multipart +
           one decode + the forward cost with nothing else;
  raw      the model alone in this process (1 and N threads, the better; as service_load);
  service  ``--requests`` sequential requests on each path, alternated: the default (the fast
           path in embedded mode) and ``?wait=60`` (a job record: every request's path before
           issue 24); each stage's offset from the moment the client sent it, the median over
           the requests per stage.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import service_load  # noqa: E402  (the service starter, the digits and the raw model)

# Runs a module as ``python -m MODULE ARGS`` with the debm.timing logger on, into LOGFILE:
#   python -c BOOT LOGFILE MODULE ARGS...
BOOT = """
import logging, runpy, sys
handler = logging.FileHandler(sys.argv.pop(1))
handler.setFormatter(logging.Formatter("%(message)s"))
timing = logging.getLogger("debm.timing")
timing.setLevel(logging.DEBUG); timing.addHandler(handler); timing.propagate = False
module = sys.argv.pop(1)
sys.argv[0] = module
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""

# The order of the stages in a request's life (a worker stamp may come before the API's
# stamp of the step that triggered it: the offsets, not this order, are the timeline).
STAGES = ["client.sent", "api.enter", "api.checked", "api.multipart", "api.decoded",
          "api.stored", "worker.start", "api.created", "batch.arrived", "batch.taken",
          "batch.forward_done", "worker.end", "api.woken", "api.result", "client.received"]


class TimedServices(service_load.Services):
    """service_load's services, each process with the debm.timing logger on."""

    def spawn(self, name: str, cmd: list[str], env: dict) -> None:
        if cmd[:2] == [sys.executable, "-m"]:
            cmd = [sys.executable, "-c", BOOT, str(self.workdir / f"{name}.timing"), *cmd[2:]]
        super().spawn(name, cmd, env)

    redis_url: str | None = None

    def env(self, **extra) -> dict:
        self.redis_url = extra.get("REDIS_URL", self.redis_url)
        return super().env(**extra)

    def redis_calls(self) -> dict[str, int]:
        """Redis's command counts so far (distributed mode), by command."""
        import redis

        stats = redis.Redis.from_url(self.redis_url).info("commandstats")
        return {name.removeprefix("cmdstat_"): value["calls"] for name, value in stats.items()}

    def stamps(self) -> list[tuple[str, str, float]]:
        out = []
        for path in self.workdir.glob("*.timing"):
            for line in path.read_text().splitlines():
                stage, job_id, at = line.split()
                out.append((stage, job_id, float(at)))
        return sorted(out, key=lambda s: s[2])


def service_timeline(base: str, pngs: list[bytes], requests: int, services: TimedServices
                     ) -> dict:
    """``requests`` sequential one-image requests on each path, alternated: ``default`` (no
    query: the fast path where the server has one) and ``job`` (``?wait=60``: a job record,
    the path of every request before issue 24)."""
    import httpx

    paths = {"default": {}, "job": {"wait": 60}}
    sent: dict[str, list] = {name: [] for name in paths}
    calls: dict[str, dict] = {}
    with httpx.Client(base_url=base, headers=service_load.HEADERS, timeout=60) as http:
        for i in range(requests + 3):  # 3 warm-up requests per path, not reported
            for name, params in paths.items():
                if services.redis_url and i == 3:
                    calls[name] = {"before": services.redis_calls(), "at": time.monotonic()}
                start = time.monotonic()
                response = http.post("/ood-score", params=params, files={
                    "files": ("d.png", pngs[i % len(pngs)], "image/png")})
                end = time.monotonic()
                response.raise_for_status()
                if i >= 3:
                    sent[name].append((response.json()["job_id"], start, end))
                time.sleep(0.05)  # the worker's stamps after the response, before the next
    time.sleep(0.5)  # the last stamps reach their files
    stamps = services.stamps()
    out = {name: timeline(requests_sent, stamps) for name, requests_sent in sent.items()}
    if services.redis_url:  # both paths alternate: the Redis calls of one request of each
        idle = services.redis_calls()
        time.sleep(2.0)  # heartbeats, Celery's polls: what Redis sees with no request
        after = services.redis_calls()
        first = calls["default"]
        total = {k: v - first["before"].get(k, 0) for k, v in idle.items()}
        background = sum(after.values()) - sum(idle.values())
        span = time.monotonic() - 2.0 - first["at"]
        out["redis"] = {"commands_per_request_pair": {
            k: round(v / requests, 1) for k, v in sorted(total.items()) if v},
            "all_per_request_pair": round(sum(total.values()) / requests, 1),
            "background_per_second": background / 2.0, "span_s": span}
    return out


def timeline(sent: list[tuple[str, float, float]], stamps: list) -> dict:
    per_request = []
    for job_id, start, end in sent:
        offsets = {"client.sent": 0.0, "client.received": end - start}
        for stage, stamp_job, at in stamps:
            # Batch stamps carry no job id: with one request at a time, the batch that ran
            # while this request was open is its own.
            if stamp_job == job_id or (stamp_job == "-" and start <= at <= end):
                offsets.setdefault(stage, at - start)
        per_request.append(offsets)
    return {"requests": per_request, "median_ms": {
        stage: 1000 * statistics.median([r[stage] for r in per_request if stage in r])
        for stage in STAGES if any(stage in r for r in per_request)}}


def floor_latency(base: str, pngs: list[bytes], requests: int) -> dict:
    import httpx

    latencies = []
    with httpx.Client(base_url=base, timeout=60) as http:
        for i in range(requests + 5):
            start = time.monotonic()
            http.post("/score", files={"files": ("d.png", pngs[i % len(pngs)], "image/png")}
                      ).raise_for_status()
            if i >= 5:  # TorchScript optimises the trace over its first calls
                latencies.append(time.monotonic() - start)
    return {"p50_ms": 1000 * statistics.median(latencies), "min_ms": 1000 * min(latencies),
            "all_ms": [round(1000 * s, 1) for s in latencies]}


def serve_floor(port: int, checkpoint: str) -> None:
    """The floor: FastAPI, a multipart upload, one decode, the raw forward, inline in the
    handler (no thread hand-off, no job record, no upload written)."""
    import uvicorn
    from fastapi import FastAPI, Request

    globals()["Request"] = Request  # the handler's annotation is a string (future import)

    from model.checkpoints import load_checkpoint
    from model.formats.imagefile import decode_image
    from model.images import pil_to_model_tensor
    from model.pipeline import prepare_for_inference, score_images

    loaded = prepare_for_inference(load_checkpoint(checkpoint, device="cpu"))
    net = loaded.config.network
    app = FastAPI()

    @app.post("/score")
    async def score(request: Request):
        form = await request.form()
        data = await form["files"].read()
        image = decode_image(data, max_pixels=1 << 24, shrink_to=net.image_size).image
        x = pil_to_model_tensor([image], image_size=net.image_size, channels=net.channels)
        return {"score": float(score_images(loaded, x)[0])}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def run(args) -> dict:
    import subprocess

    import httpx

    pngs = service_load.digit_pngs(64)
    result: dict = {"mode": args.mode, "requests": args.requests, "cpus": os.cpu_count(),
                    "load_average": os.getloadavg(),
                    "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    port = service_load.free_port()
    floor = subprocess.Popen([sys.executable, __file__, "--serve-floor", str(port),
                              "--checkpoint", args.checkpoint],
                             env={**os.environ, "PYTHONPATH": str(service_load.REPO)})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/docs", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        result["floor"] = floor_latency(f"http://127.0.0.1:{port}", pngs, args.requests)
    finally:
        floor.terminate()
        floor.wait(30)
    raw = service_load.RawModel(args, pngs)
    result["raw"] = raw.score_one()
    services = TimedServices(args, Path(tempfile.mkdtemp(prefix="debm-timeline-")))
    try:
        base = services.start()
        result["service"] = service_timeline(base, pngs, args.requests, services)
    finally:
        services.stop()
    result["raw_after"] = raw.score_one()
    return result


def table(r: dict) -> str:
    lines = [f"mode {r['mode']}, shipped defaults, {r['cpus']} CPUs, {r['started']}, load "
             f"average {' '.join(f'{x:.1f}' for x in r['load_average'])}, "
             f"{r['requests']} sequential requests per path (medians)",
             f"raw forward p50 {1000 * r['raw']['p50_s']:.1f} ms ({r['raw']['threads']} thr; "
             f"after the service phase {1000 * r['raw_after']['p50_s']:.1f} ms), "
             f"bare FastAPI floor p50 {r['floor']['p50_ms']:.1f} ms"]
    for path, line in r["service"].items():
        if path == "redis":
            lines += ["", f"Redis commands per pair of requests (one per path): "
                          f"{line['all_per_request_pair']} (background "
                          f"{line['background_per_second']:.1f}/s over {line['span_s']:.1f} s): "
                          f"{line['commands_per_request_pair']}"]
            continue
        lines += ["", f"path {path}", "| stage reached | offset ms | since previous ms |",
                  "|---|---|---|"]
        previous = 0.0
        for stage, offset in sorted(line["median_ms"].items(), key=lambda kv: kv[1]):
            lines.append(f"| {stage} | {offset:.1f} | {offset - previous:+.1f} |")
            previous = offset
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("embedded", "distributed"), default="embedded")
    parser.add_argument("--checkpoint", default=str(service_load.REPO / "checkpoints" / "demo"))
    parser.add_argument("--requests", type=int, default=15)
    parser.add_argument("--raw-threads", type=int, nargs="+")
    parser.add_argument("--raw-repeats", type=int, default=3)
    parser.add_argument("--env", action="append", default=[],
                        help="NAME=VALUE for the service processes (repeatable)")
    parser.add_argument("--serve-floor", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.serve_floor:
        serve_floor(args.serve_floor, args.checkpoint)
        return 0
    # service_load.Services' fields: the shipped defaults, the README's distributed stack.
    args.threads, args.url, args.inference_pool = None, None, "-P threads -c 32"
    args.device = "cpu"
    service_load.report(run(args), table, args.json, sys.argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
