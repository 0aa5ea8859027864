"""Where the CPU goes while a service scores a burst of concurrent one-image requests (Linux).

    python benchmarks/cpu_split.py --json /tmp/cpu_split.json
    python benchmarks/cpu_split.py --env DEBM_SHORT_THREADS_YIELD=false

Starts the service (benchmarks/service_load.py, ``--mode embedded`` or ``distributed``), warms
it, then ``--bursts`` times sends ``--clients`` concurrent clients x ``--per-client`` one-image
requests and reads, around each burst, ``/proc/PID/task/TID/schedstat`` of every thread of the
process that runs the model (CPU time and run-queue wait), ``/proc/stat`` (the machine), and
this process's own CPU time (the load generator).  Everything is reported per image scored:

    model thread   the busiest thread (the batcher's forward): CPU ms, run-queue wait ms
    other threads  all the others summed: CPU ms, run-queue wait ms
    load generator CPU ms of this process
    machine        busy and idle share of all CPUs during the burst

docs/PERFORMANCE.md round four used it to find that the forward waited in the run queue while
the machine was 40% idle.  Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import service_load  # noqa: E402  (the service starter and the load clients)


def thread_schedstat(pid: int) -> dict[int, tuple[int, int]]:
    """(CPU ns, run-queue wait ns) of each thread of ``pid``."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            cpu, wait, _ = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
        except (FileNotFoundError, ValueError):  # the thread ended meanwhile
            continue
        out[int(tid)] = (int(cpu), int(wait))
    return out


def machine_ticks() -> tuple[int, int]:
    """(busy, idle) jiffies of all CPUs; iowait counts as idle."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, idle


def burst(base: str, pngs: list[bytes], pid: int, args) -> dict:
    before, busy0, cpu0 = thread_schedstat(pid), machine_ticks(), time.process_time()
    load = asyncio.run(service_load.score_clients(base, service_load.KEY, pngs, args.clients,
                                                  args.per_client, args.time_cap))
    after, busy1, cpu1 = thread_schedstat(pid), machine_ticks(), time.process_time()
    images = max(1, load["ok"])
    deltas = {tid: (cpu - before.get(tid, (0, 0))[0], wait - before.get(tid, (0, 0))[1])
              for tid, (cpu, wait) in after.items()}
    model_tid = max(deltas, key=lambda tid: deltas[tid][0])
    others = [d for tid, d in deltas.items() if tid != model_tid]
    busy, idle = busy1[0] - busy0[0], busy1[1] - busy0[1]
    per_image_ms = 1e-6 / images
    return {"images": load["ok"], "codes": load["codes"], "seconds": load["seconds"],
            "images_per_s": load["images_per_s"],
            "model_cpu_ms": deltas[model_tid][0] * per_image_ms,
            "model_wait_ms": deltas[model_tid][1] * per_image_ms,
            "others_cpu_ms": sum(c for c, _ in others) * per_image_ms,
            "others_wait_ms": sum(w for _, w in others) * per_image_ms,
            "load_generator_cpu_ms": (cpu1 - cpu0) * 1000 / images,
            "machine_busy_share": busy / max(1, busy + idle)}


COLUMNS = [("images/s", "images_per_s", "{:.1f}"), ("model CPU", "model_cpu_ms", "{:.1f}"),
           ("model run-queue wait", "model_wait_ms", "{:.2f}"),
           ("other threads CPU", "others_cpu_ms", "{:.1f}"),
           ("other threads wait", "others_wait_ms", "{:.1f}"),
           ("load generator CPU", "load_generator_cpu_ms", "{:.2f}"),
           ("machine busy", "machine_busy_share", "{:.0%}")]


def table(result: dict) -> str:
    lines = [f"{result['mode']}, {result['threads']} torch thread(s), {result['clients']} "
             f"clients; per image scored, ms (env: {' '.join(result['env']) or 'defaults'})", "",
             "| burst | " + " | ".join(name for name, _, _ in COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    for i, row in enumerate(result["bursts"], 1):
        lines.append(f"| {i} | " + " | ".join(fmt.format(row[key]) for _, key, fmt in COLUMNS)
                     + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("embedded", "distributed"), default="embedded")
    parser.add_argument("--checkpoint", default=str(service_load.REPO / "checkpoints" / "demo"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the service")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--per-client", type=int, default=12)
    parser.add_argument("--bursts", type=int, default=2)
    parser.add_argument("--time-cap", type=float, default=120.0,
                        help="seconds at most per burst")
    parser.add_argument("--env", action="append", default=[],
                        help="NAME=VALUE for the service processes (repeatable)")
    parser.add_argument("--inference-pool", default="-P threads -c 32")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if not Path("/proc/self/task").is_dir():
        parser.error("needs Linux's /proc")
    args.url = None
    pngs = service_load.digit_pngs(256)
    services = service_load.Services(args, Path(tempfile.mkdtemp(prefix="debm-cpu-split-")))
    result = {"mode": args.mode, "threads": args.threads, "clients": args.clients,
              "env": args.env, "bursts": []}
    try:
        base = services.start()
        # The model runs in `debm serve` (embedded) or in the inference worker (distributed).
        name = "serve" if args.mode == "embedded" else "worker-inference"
        pid = next(proc.pid for proc_name, proc in services.procs if proc_name == name)
        asyncio.run(service_load.score_clients(base, service_load.KEY, pngs, 1, 3, 60))  # warm
        for _ in range(args.bursts):
            result["bursts"].append(burst(base, pngs, pid, args))
    finally:
        services.stop()
    service_load.report(result, table, args.json,
                        argv if argv is not None else sys.argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
