"""A re-scoring workload with and without the score cache (worker.score_cache).

    python benchmarks/rescoring.py --images 64 --json /tmp/rescoring.json

Starts the service (benchmarks/service_load.py's starter, ``--mode`` embedded by default)
once with DEBM_SCORE_CACHE_ENTRIES at its default and once with 0, and on each scores the
same ``--images`` MNIST digits ``--passes`` times, ``--per-request`` images per request, one
request at a time: the first pass computes, later passes re-score the same pixels (a data
pipeline re-run).  Reports the seconds of each pass and the cache's hit ratio from /metrics.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import service_load  # noqa: E402  (the service starter, the digits, report())


def one_service(args, entries: str | None, pngs: list[bytes]) -> dict:
    import httpx

    args.env = list(args.base_env) + ([f"DEBM_SCORE_CACHE_ENTRIES={entries}"] if entries
                                      else [])
    with tempfile.TemporaryDirectory(prefix="debm-rescore-") as tmp:
        services = service_load.Services(args, Path(tmp))
        try:
            base = services.start()
            passes = []
            with httpx.Client(base_url=base, headers={"X-API-Key": service_load.KEY},
                              timeout=120) as http:
                for _ in range(args.passes):
                    begin = time.perf_counter()
                    for start in range(0, len(pngs), args.per_request):
                        files = [("files", (f"{i}.png", png, "image/png"))
                                 for i, png in enumerate(pngs[start:start + args.per_request])]
                        http.post("/ood-score", files=files).raise_for_status()
                    passes.append(time.perf_counter() - begin)
                metrics = http.get("/metrics").text
            ratio = re.search(r"^debm_score_cache_hit_ratio (\S+)$", metrics, flags=re.M)
            return {"cache_entries": entries or "default", "pass_seconds": passes,
                    "hit_ratio": float(ratio.group(1)) if ratio else None}
        finally:
            services.stop()


def table(result: dict) -> str:
    lines = [f"mode {result['mode']}, {result['images']} images x {result['passes']} passes, "
             f"{result['per_request']} per request",
             "score cache | " + " | ".join(f"pass {i + 1} s" for i in range(result["passes"]))
             + " | hit ratio", "---" + " | ---" * (result["passes"] + 1)]
    for row in result["rows"]:
        lines.append(f"{row['cache_entries']} | " + " | ".join(
            f"{s:.2f}" for s in row["pass_seconds"]) + f" | {row['hit_ratio']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("embedded",), default="embedded",
                        help="embedded only: /metrics then holds the worker's series")
    parser.add_argument("--checkpoint", default=str(service_load.REPO / "checkpoints" / "demo"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--per-request", type=int, default=8)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--env", action="append", default=[])
    parser.add_argument("--json")
    args = parser.parse_args()
    args.url, args.base_env = None, list(args.env)
    pngs = service_load.digit_pngs(args.images)
    rows = [one_service(args, None, pngs), one_service(args, "0", pngs)]
    service_load.report({"mode": args.mode, "images": args.images, "passes": args.passes,
                         "per_request": args.per_request, "rows": rows},
                        table, args.json, sys.argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
