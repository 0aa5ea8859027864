"""Peak memory of the API and of a worker for the largest requests the defaults allow.

    python benchmarks/memory.py --out docs/results/memory.json
    python benchmarks/memory.py --baseline /tmp/old-tree --out docs/results/memory.json

Runs the real API (uvicorn, embedded SQLite store) as a subprocess of a source tree and sends
it, over HTTP:

- **score**: one ``POST /ood-score`` of 4 RGB PNGs of 4096 x 4096 (the per-request pixel
  budget, DEBM_MAX_REQUEST_PIXELS = 4 x 4096^2; each a few kB compressed), and one of 16
  (the review's request: over the budget, so 413 where the budget exists);
- **dataset**: one ``POST /datasets`` of a zip of 16 grey PNGs of 4096 x 4096 (256 kB);
- **train**: ``POST /train`` on that dataset (preset tiny, 2 steps).

Each job then runs in its own fresh worker process (the real task body, ``execute``), so
every figure is one request's own peak.  Memory is the kernel's count for the process:
VmHWM (peak resident set) and VmRSS from /proc/PID/status, read before and after.
``--baseline DIR`` measures another source tree the same way (e.g. ``git archive`` of an
older commit) and prints the ratios.  Linux only.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

from PIL import Image

KEY = "bench-admin-key-0123456789"
MiB = 2 ** 20

WORKER = r"""
import json, os, sys
def mem():
    out = {}
    for line in open(f"/proc/{os.getpid()}/status"):
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = int(value.split()[0]) * 1024
    return out
try:
    from worker.lifecycle import execute
    from worker.handlers import BODIES
    from worker.runtime import TaskRuntime
    from core.settings import Settings
except ImportError:  # the layout before core/ and worker/handlers.py
    from worker.tasks import BODIES, TaskRuntime, execute
    from service.settings import Settings
import torch
torch.set_num_threads(1)
import model.pipeline, model.data, model.images
runtime = TaskRuntime.create(Settings())
job_id = sys.argv[1]
job = runtime.store.get(job_id)
before = mem()
execute(runtime, job_id, job.kind, BODIES[job.kind])
after = mem()
done = runtime.store.get(job_id)
print(json.dumps({"before": before, "after": after, "status": done.status,
                  "error": done.error}))
"""


def png(size: int, mode: str, seed: int) -> bytes:
    colour = (seed * 40 % 256, 90, 200) if mode == "RGB" else seed * 40 % 256
    buffer = io.BytesIO()
    Image.new(mode, (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(parts: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    boundary = "benchmarkboundary"
    body = b""
    for field, name, data in parts:
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
                 f"filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                 ).encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def request(port: int, method: str, path: str, body: bytes | None = None,
            content_type: str | None = None) -> tuple[int, dict]:
    headers = {"X-API-Key": KEY}
    if content_type:
        headers["Content-Type"] = content_type
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body,
                                 headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=600) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def proc_mem(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0]) * 1024
    return out


def reset_peak(pid: int) -> None:
    """Linux >= 4.0: writing 5 to clear_refs resets VmHWM to the current RSS."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(port: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
            return
        except OSError:
            time.sleep(0.3)


def run_worker_jobs(tree: Path, env: dict, label: str, accepted) -> list[dict]:
    """Run each accepted job in a fresh worker process (WORKER): its memory, one row each."""
    rows: list[dict] = []
    for name, answer in accepted:
        job_id = answer.get("job_id")
        if not job_id:
            rows.append({"tree": label, "step": name, "process": "worker",
                         "status": "not accepted"})
            continue
        result = subprocess.run([sys.executable, "-c", WORKER, job_id], cwd=tree,
                                env=env, capture_output=True, text=True, timeout=1800)
        try:
            out = json.loads(result.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            raise SystemExit(f"worker failed:\n{result.stderr[-3000:]}") from None
        rows.append({"tree": label, "step": name, "process": "worker",
                     "status": out["status"], "error": out["error"],
                     "rss_before": out["before"]["VmRSS"],
                     "peak": out["after"]["VmHWM"], "rss_after": out["after"]["VmRSS"]})
    return rows


def measure(tree: Path, label: str) -> list[dict]:
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="debm-memory-") as tmp:
        env = {**os.environ, "PYTHONPATH": str(tree), "DEBM_DATA_DIR": f"{tmp}/data",
               "DEBM_ADMIN_KEYS": f"bench:{KEY}", "DEBM_API_KEYS": "",
               "DEBM_SEED_CHECKPOINT": str(tree / "checkpoints" / "demo"),
               "OMP_NUM_THREADS": "1", "DEBM_TORCH_THREADS": "1", "DEBM_LOG_LEVEL": "WARNING"}
        env.pop("REDIS_URL", None)
        port = free_port()
        api = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory",
                                "service.app:create_app", "--port", str(port),
                                "--log-level", "warning"], cwd=tree, env=env)
        try:
            wait_healthy(port)
            body, ctype = multipart([("files", "warm.png", png(28, "L", 0))])
            request(port, "POST", "/ood-score?wait=0", body, ctype)  # warm the code paths

            def api_step(name: str, method: str, path: str, body: bytes, ctype: str | None):
                reset_peak(api.pid)
                before = proc_mem(api.pid)
                status, answer = request(port, method, path, body, ctype)
                after = proc_mem(api.pid)
                rows.append({"tree": label, "step": name, "process": "api", "status": status,
                             "rss_before": before["VmRSS"], "peak": after["VmHWM"],
                             "rss_after": after["VmRSS"], "body_bytes": len(body)})
                return status, answer

            body, ctype = multipart([("files", f"{i}.png", png(4096, "RGB", i))
                                     for i in range(4)])
            status, scored = api_step("score 4 x 4096^2 RGB", "POST", "/ood-score?wait=0",
                                      body, ctype)
            body, ctype = multipart([("files", f"{i}.png", png(4096, "RGB", i))
                                     for i in range(16)])
            status, scored16 = api_step("score 16 x 4096^2 RGB", "POST", "/ood-score?wait=0",
                                        body, ctype)
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w") as archive:
                for i in range(16):
                    archive.writestr(f"{i}.png", png(4096, "L", i))
            body, ctype = multipart([("file", "big.zip", buffer.getvalue())])
            status, dataset = api_step("dataset 16 x 4096^2 grey", "POST", "/datasets", body,
                                       ctype)
            train_body = json.dumps({"dataset": dataset.get("dataset_id"), "preset": "tiny",
                                     "overrides": {"training": {"warmup_steps": 1,
                                                                "iterations": 1},
                                                   "data": {"holdout_fraction": 0.25}}})
            status, trained = api_step("train on it (tiny, 2 steps)", "POST", "/train",
                                       train_body.encode(), "application/json")
            rows += run_worker_jobs(tree, env, label, [
                ("score 4 x 4096^2 RGB", scored), ("score 16 x 4096^2 RGB", scored16),
                ("train on it (tiny, 2 steps)", trained)])
        finally:
            api.terminate()
            api.wait(30)
    return rows


def estimate(tree: Path) -> dict[str, int] | None:
    """The API's own estimate of the training job (model/formats/netshape.py), if present."""
    code = ("import json; from model.formats.presets import preset; "
            "from model.formats.netshape import training_memory; "
            "c = preset('tiny'); print(json.dumps(training_memory(c, 16)))")
    result = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(tree)})
    return json.loads(result.stdout) if result.returncode == 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--baseline", type=Path, help="another source tree, measured alike")
    parser.add_argument("--out", type=Path, default=Path("docs/results/memory.json"))
    args = parser.parse_args()
    rows = measure(args.tree.resolve(), "this tree")
    if args.baseline:
        rows += measure(args.baseline.resolve(), "baseline")
    print(f"{'step':30} {'process':8} {'tree':10} {'status':>8} {'RSS before':>11} "
          f"{'peak':>9} {'growth':>9} {'RSS after':>10}")
    for row in rows:
        if "peak" not in row:
            print(f"{row['step']:30} {row['process']:8} {row['tree']:10} {row['status']:>8}")
            continue
        row["growth"] = row["peak"] - row["rss_before"]
        print(f"{row['step']:30} {row['process']:8} {row['tree']:10} {str(row['status']):>8} "
              f"{row['rss_before'] / MiB:9.0f} M {row['peak'] / MiB:7.0f} M "
              f"{row['growth'] / MiB:7.0f} M {row['rss_after'] / MiB:8.0f} M")
    if args.baseline:
        print("\ngrowth, this tree / baseline:")
        for row in rows:
            if row["tree"] != "this tree" or "growth" not in row:
                continue
            base = next((r for r in rows if r["tree"] == "baseline" and r["step"] == row["step"]
                         and r["process"] == row["process"] and "growth" in r), None)
            if base and base["growth"] > MiB and row["growth"] > 0:
                print(f"  {row['step']:30} {row['process']:8} "
                      f"{row['growth'] / base['growth']:.3f}")
    est = estimate(args.tree.resolve())
    if est:
        print(f"\nestimate of the training job (tiny, 16 images): {est['total'] / MiB:.0f} MiB "
              f"({', '.join(f'{k} {v / MiB:.1f}' for k, v in est.items() if k != 'total')})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "training_estimate": est}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
