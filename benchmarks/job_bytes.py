"""Bytes one job keeps while it is retained: what docs/OPERATIONS.md sizes a data directory
and Redis from.

    python benchmarks/job_bytes.py --mode embedded    --score 200 --generate 10
    python benchmarks/job_bytes.py --mode distributed --score 200 --generate 10

Starts the service like benchmarks/soak.py (temporary data directory; its own redis-server in
distributed mode), sends ``--score`` one-image /ood-score requests one after the other, then
``--generate`` small /generate jobs (n=4, 5 + 3 steps), and reports, per job of each kind, the
growth of the data directory (SQLite files included) and of Redis ``used_memory``.
Retention is the default (7 days), so nothing is reaped during the run.  Bounded by the
counts; prints a table and writes JSON with --json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from service_load import REPO, report  # noqa: E402
from soak import KEYS, Deployment, dir_bytes, pngs  # noqa: E402


def storage(dep: Deployment) -> dict:
    """Sizes after a WAL checkpoint of every SQLite file (a WAL file keeps its largest size
    between checkpoints, which would count pages twice)."""
    import sqlite3

    data = dep.dir / "data"
    for path in data.glob("*.sqlite"):
        with sqlite3.connect(path, timeout=30) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    figures = {"data_dir_bytes": dir_bytes(data),
               "sqlite_bytes": sum(p.stat().st_size for p in data.glob("*.sqlite*"))}
    if dep.args.mode == "distributed":
        import redis

        client = redis.Redis(port=dep.redis_port)
        figures["redis_used_memory"] = int(client.info("memory")["used_memory"])
        client.close()
    return figures


def per_job(before: dict, after: dict, jobs: int) -> dict:
    return {k: round((after[k] - before[k]) / jobs) for k in after}


def run(args) -> dict:
    import httpx

    images = pngs(16, seed=1)
    with tempfile.TemporaryDirectory(prefix="debm-job-bytes-") as tmp:
        args.retention = 7 * 86400
        dep = Deployment(args, Path(tmp))
        try:
            base = dep.start()
            http = httpx.Client(base_url=base, headers={"X-API-Key": KEYS[0]}, timeout=120)
            time.sleep(2)  # start-up writes settle
            start = storage(dep)
            for i in range(args.score):
                response = http.post("/ood-score", files={"files": (
                    "d.png", images[i % len(images)], "image/png")})
                response.raise_for_status()
            scored = storage(dep)
            ids = []
            for i in range(args.generate):
                response = http.post("/generate?wait=60", json={
                    "n": 4, "seed": i, "steps_latent": 5, "steps_pixel": 3})
                response.raise_for_status()
                ids.append(response.json()["job_id"])
            for job_id in ids:
                http.get(f"/jobs/{job_id}?wait=60").raise_for_status()
            generated = storage(dep)
            http.close()
        finally:
            dep.stop()
    return {"mode": args.mode, "score_jobs": args.score, "generate_jobs": args.generate,
            "per_score_job": per_job(start, scored, args.score),
            "per_generate_job": per_job(scored, generated, max(1, args.generate)),
            "start": start, "after_scoring": scored, "after_generate": generated}


def table(result: dict) -> str:
    lines = [f"bytes kept per job ({result['mode']} mode; {result['score_jobs']} one-image "
             f"scores, {result['generate_jobs']} n=4 generates)",
             f"{'':<18}" + "".join(f"{k:>20}" for k in result["per_score_job"])]
    for row in ("per_score_job", "per_generate_job"):
        lines.append(f"{row:<18}" + "".join(f"{v:>20,}" for v in result[row].values()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("embedded", "distributed"), default="embedded")
    parser.add_argument("--score", type=int, default=200)
    parser.add_argument("--generate", type=int, default=10)
    parser.add_argument("--checkpoint", default=str(REPO / "checkpoints" / "demo"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    args.url = None
    report(run(args), table, args.json, sys.argv[1:] if argv is None else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
