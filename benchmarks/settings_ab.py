"""A/B of service settings: two or more services side by side, measured in alternating rounds.

    python benchmarks/settings_ab.py --arm on=DEBM_SHORT_THREADS_YIELD=true \\
        --arm off=DEBM_SHORT_THREADS_YIELD=false --json docs/results/ab_short_threads.json

Each ``--arm NAME=VAR=VALUE[,VAR=VALUE...]`` starts its own service (``--mode embedded``:
``debm serve``; ``distributed``: redis-server, the API and a ``-P threads`` inference worker),
all at once, on the same machine, with the same checkpoint and torch thread count as the raw
model in this process (benchmarks/service_load.py starts them).  Then, ``--rounds`` times,
arm after arm, each measure right after its raw reference:

    32 concurrent one-image clients, images/s   against one raw batched forward
    one image, p50 of sequential requests        against a raw one-image forward (difference)
    /generate n=64 (?wait)                       against the direct sampler
    while that arm runs a /generate n=64: GET /jobs/{id} and one-image /ood-score latency

A single run of service_load.py compares the service with the model; this one compares
settings with each other, round by round, because this machine's speed drifts by 20% within
minutes and one arm measured after the other would compare different machines.  The idle arms
stay up while one is measured (heartbeats only).  Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import service_load  # noqa: E402  (the raw model, the service starter, the load clients)

REPO = service_load.REPO


def parse_arm(text: str) -> tuple[str, list[str]]:
    name, sep, env = text.partition("=")
    if not sep or not name or not env or any("=" not in item for item in env.split(",")):
        raise argparse.ArgumentTypeError(f"--arm NAME=VAR=VALUE[,VAR=VALUE...], got {text!r}")
    return name, env.split(",")


def latency_during_generate(base: str, png: bytes, seconds: float) -> dict:
    """GET /jobs/{id} and one-image /ood-score, one after the other, while a 64-sample chain
    of this service runs; then wait for the chain to end (bounded)."""
    headers = {"X-API-Key": service_load.KEY}
    with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
        job = client.post("/generate", json={"n": 64, "seed": 1})
        if job.status_code != 202:
            return {"error": f"{job.status_code} {job.text[:200]}"}
        job_id = job.json()["job_id"]
        time.sleep(0.5)  # the chain is running
        gets, scores = [], []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            start = time.perf_counter()
            client.get(f"/jobs/{job_id}")
            gets.append(time.perf_counter() - start)
            start = time.perf_counter()
            client.post("/ood-score", files={"files": ("d.png", png, "image/png")})
            scores.append(time.perf_counter() - start)
            time.sleep(0.05)
        finished = time.monotonic() + 300
        while time.monotonic() < finished and client.get(f"/jobs/{job_id}").json()[
                "status"] not in ("succeeded", "failed", "cancelled"):
            time.sleep(0.2)
    return {"requests": len(gets), "get_job_p50_s": statistics.median(gets),
            "get_job_p90_s": service_load.percentile(gets, 90),
            "score_p50_s": statistics.median(scores),
            "score_p90_s": service_load.percentile(scores, 90)}


def measure_round(raw, base: str, pngs: list[bytes], args) -> dict:
    out: dict = {}
    reference = raw.score_batch()
    load = asyncio.run(service_load.score_clients(base, service_load.KEY, pngs, args.clients,
                                                  args.per_client, args.time_cap))
    out["concurrent"] = {"raw_images_per_s": reference["images_per_s"],
                         "service_images_per_s": load["images_per_s"],
                         "ratio": load["images_per_s"] / reference["images_per_s"],
                         "refused_429": load["refused_429"], "codes": load["codes"]}
    one_raw = raw.score_one()
    one = asyncio.run(service_load.score_clients(base, service_load.KEY, pngs, 1,
                                                 args.sequential, args.time_cap))
    out["one_image"] = {"raw_p50_s": one_raw["p50_s"], "service_p50_s": one["p50_s"],
                        "overhead_s": one["p50_s"] - one_raw["p50_s"]}
    if not args.skip_generate:
        raw_s = raw.generate(64)["seconds"]
        service = service_load.generate_once(base, service_load.KEY, 64)
        out["generate64"] = {"raw_s": raw_s, "service_s": service["seconds"],
                             "status": service["status"], "ratio": service["seconds"] / raw_s}
    if not args.skip_mixed:
        out["during_generate"] = latency_during_generate(base, pngs[0], args.mixed_seconds)
    return out


SUMMARY = [  # (label, path into a round, scale, format)
    ("concurrent one-image clients: service / raw batched", ("concurrent", "ratio"), 1,
     "{:.3f}"),
    ("one image p50: service - raw, ms", ("one_image", "overhead_s"), 1000, "{:+.1f}"),
    ("/generate n=64: service / direct", ("generate64", "ratio"), 1, "{:.3f}"),
    ("during a chain: GET /jobs p50, ms", ("during_generate", "get_job_p50_s"), 1000, "{:.1f}"),
    ("during a chain: one-image score p50, ms", ("during_generate", "score_p50_s"), 1000,
     "{:.1f}"),
]


def summarise(result: dict) -> None:
    for arm in result["arms"].values():
        arm["median"] = {}
        for label, (part, key), scale, _ in SUMMARY:
            values = [r[part][key] for r in arm["rounds"] if part in r and key in r[part]]
            if values:
                arm["median"][label] = {"median": statistics.median(values) * scale,
                                        "rounds": [v * scale for v in values]}


def table(result: dict) -> str:
    names = list(result["arms"])
    lines = [f"{result['mode']}, {result['threads']} torch thread(s), {result['clients']} "
             "concurrent clients", "",
             "| measure | " + " | ".join(f"{n}: median (rounds)" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for label, _, _, fmt in SUMMARY:
        cells = []
        for name in names:
            entry = result["arms"][name]["median"].get(label)
            cells.append("-" if entry is None else fmt.format(entry["median"]) + " (" + ", ".join(
                fmt.format(v) for v in entry["rounds"]) + ")")
        if any(c != "-" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(args) -> dict:
    pngs = service_load.digit_pngs(256)
    result: dict = {"mode": args.mode, "threads": args.threads, "clients": args.clients,
                    "checkpoint": args.checkpoint,
                    "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                    "arms": {name: {"env": env, "rounds": []} for name, env in args.arm}}
    raw = service_load.RawModel(args, pngs)
    services, bases, finished = [], {}, False
    try:
        for name, env in args.arm:
            arm_args = argparse.Namespace(**{**vars(args), "env": env, "url": None})
            started = service_load.Services(arm_args, Path(tempfile.mkdtemp(
                prefix=f"debm-ab-{name}-")))
            services.append(started)
            bases[name] = started.start()
            asyncio.run(service_load.score_clients(bases[name], service_load.KEY, pngs, 1, 3,
                                                   60))  # warm: the model is loaded
        for round_index in range(args.rounds):
            for name, _ in args.arm:
                print(f"round {round_index + 1}, arm {name} ...", file=sys.stderr, flush=True)
                result["arms"][name]["rounds"].append(measure_round(raw, bases[name], pngs,
                                                                    args))
        finished = True
    finally:
        for started in services:
            started.stop()
            if finished:  # otherwise keep the logs that the error message points to
                shutil.rmtree(started.workdir, ignore_errors=True)
    summarise(result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arm", type=parse_arm, action="append", required=True,
                        help="NAME=VAR=VALUE[,VAR=VALUE...] (repeat; two or more)")
    parser.add_argument("--mode", choices=("embedded", "distributed"), default="embedded")
    parser.add_argument("--checkpoint", default=str(REPO / "checkpoints" / "demo"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, raw and services")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--per-client", type=int, default=12)
    parser.add_argument("--sequential", type=int, default=20)
    parser.add_argument("--raw-repeats", type=int, default=3)
    parser.add_argument("--gen-repeats", type=int, default=1)
    parser.add_argument("--time-cap", type=float, default=120.0,
                        help="seconds at most per load phase")
    parser.add_argument("--mixed-seconds", type=float, default=5.0,
                        help="seconds of requests while a chain runs")
    parser.add_argument("--skip-generate", action="store_true")
    parser.add_argument("--skip-mixed", action="store_true")
    parser.add_argument("--inference-pool", default="-P threads -c 32")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if len(args.arm) < 2 or len({name for name, _ in args.arm}) != len(args.arm):
        parser.error("give two or more --arm, each with its own name")
    service_load.report(run(args), table, args.json,
                        argv if argv is not None else sys.argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
