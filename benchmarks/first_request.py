"""First-request latency with and without the warm-up before ready (worker.warmup).

    python benchmarks/first_request.py --rounds 2 --json /tmp/first_request.json

Each round starts the service twice (benchmarks/service_load.py's starter, ``--mode``
embedded by default), once with DEBM_WARMUP=true and once with false, in alternating order;
waits for /readyz 200; then times, on the fresh service, the first ``POST /ood-score`` of one
digit, a second one (the warm reference), and the first ``POST /generate?wait=`` of one image.
The rows report the median over the rounds.  Every request and start is bounded in time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import service_load  # noqa: E402  (the service starter, the digits, report())

ARMS = ("true", "false")


def one_start(args, warmup: str, png: bytes) -> dict:
    import httpx

    args.env = [*args.base_env, f"DEBM_WARMUP={warmup}"]
    with tempfile.TemporaryDirectory(prefix="debm-first-") as tmp:
        services = service_load.Services(args, Path(tmp))
        started = time.perf_counter()
        try:
            base = services.start()
            ready = time.perf_counter() - started
            out = {"warmup": warmup, "ready_s": ready}
            with httpx.Client(base_url=base, headers={"X-API-Key": service_load.KEY},
                              timeout=args.timeout) as http:
                for name in ("first_score_s", "second_score_s"):
                    begin = time.perf_counter()
                    response = http.post("/ood-score", files={"files": ("d.png", png,
                                                                        "image/png")})
                    response.raise_for_status()
                    out[name] = time.perf_counter() - begin
                begin = time.perf_counter()
                response = http.post("/generate?wait=60", json={"n": 1, "seed": 0})
                if response.status_code != 200:
                    raise SystemExit(f"generate answered {response.status_code}")
                out["first_generate_s"] = time.perf_counter() - begin
            return out
        finally:
            services.stop()


def run(args) -> dict:
    png = service_load.digit_pngs(1)[0]
    rows: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for round_index in range(args.rounds):
        order = ARMS if round_index % 2 == 0 else tuple(reversed(ARMS))
        for arm in order:
            rows[arm].append(one_start(args, arm, png))
    medians = {arm: {key: statistics.median(r[key] for r in runs)
                     for key in ("ready_s", "first_score_s", "second_score_s",
                                 "first_generate_s")}
               for arm, runs in rows.items()}
    return {"mode": args.mode, "rounds": args.rounds, "checkpoint": args.checkpoint,
            "runs": rows, "median": medians}


def table(result: dict) -> str:
    lines = [f"mode {result['mode']}, median of {result['rounds']} start(s) per arm",
             "warm-up | ready after s | first score ms | second score ms | first generate ms",
             "--- | --- | --- | --- | ---"]
    for arm, m in result["median"].items():
        lines.append(f"{'on' if arm == 'true' else 'off'} | {m['ready_s']:.1f} | "
                     f"{1000 * m['first_score_s']:.0f} | {1000 * m['second_score_s']:.0f} | "
                     f"{1000 * m['first_generate_s']:.0f}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("embedded", "distributed"), default="embedded")
    parser.add_argument("--checkpoint", default=str(service_load.REPO / "checkpoints" / "demo"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the workers")
    parser.add_argument("--rounds", type=int, default=2, help="starts per arm")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--inference-pool", default="-P threads -c 32")
    parser.add_argument("--env", action="append", default=[],
                        help="NAME=VALUE for the service processes (repeatable)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    args.url, args.base_env = None, list(args.env)
    service_load.report(run(args), table, args.json, sys.argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
