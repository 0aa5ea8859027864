"""Data-parallel training: the rank entry point torchrun starts, and a launcher for it.

    torchrun --standalone --nproc_per_node 4 -m model.ddp_train \\
        --config run.json --out runs/cifar [--resume] [--dataset PATH]

``--config`` is an ExperimentConfig JSON (or a checkpoint.json, whose ``config`` is used).
Every rank joins the process group torchrun describes (NCCL on GPUs, gloo on CPUs), trains
its share of each global batch (model/distributed.py), and rank 0 writes the same checkpoints
a one-process run writes; ``--resume`` continues them on any number of ranks.  Rank 0 prints
one JSON line per step (the StepMetrics), which ``launch_ranks`` turns back into callbacks.

``launch_ranks`` is what `debm train --nproc N` and the training worker call.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from .formats.config import ExperimentConfig

STEP_PREFIX = "DEBM_STEP "


class RanksFailed(RuntimeError):
    """A rank exited with an error; the message carries the end of its output."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="ExperimentConfig JSON file")
    parser.add_argument("--out", required=True, help="checkpoint directory")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--dataset", help="load images from this spec instead of "
                        "config.data.dataset (e.g. a worker's resolved upload)")
    parser.add_argument("--metadata", default="{}", help="JSON stored in the checkpoint")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads per rank")
    args = parser.parse_args(argv)
    import torch

    from .data import load_dataset
    from .distributed import init_from_env, shutdown
    from .pipeline import run_training

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    raw = json.loads(Path(args.config).read_text(encoding="utf-8"))
    config = ExperimentConfig.from_dict(raw.get("config", raw))
    dataset = None
    if args.dataset:
        net = config.network
        dataset = load_dataset(args.dataset, image_size=net.image_size, channels=net.channels)
    ctx, device = init_from_env(args.device)
    try:
        def report(metrics) -> None:
            print(STEP_PREFIX + json.dumps(metrics.to_dict()), flush=True)

        run_training(config, args.out, resume=args.resume, device=str(device),
                     dataset=dataset, on_step_end=report, dist=ctx,
                     extra_metadata=json.loads(args.metadata))
    finally:
        shutdown()
    return 0


def launch_ranks(config: ExperimentConfig, out_dir: str | Path, *, nproc: int,
                 resume: bool = False, device: str = "auto", dataset_path: str | None = None,
                 extra_metadata: dict[str, Any] | None = None,
                 on_step_end: Callable[[Any], None] | None = None,
                 should_cancel: Callable[[], bool] | None = None,
                 threads: int = 0, poll_seconds: float = 0.5) -> Path:
    """Run ``nproc`` ranks under torch.distributed.run on this machine and wait for them.

    Step callbacks receive objects with StepMetrics' fields (and ``to_dict``).  When
    ``should_cancel()`` answers True the ranks are stopped (their last periodic checkpoint
    stays) and Cancelled is raised, as a one-process run would."""
    from .formats.errors import Cancelled

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_file = out_dir.parent / f".{out_dir.name}.ddp-config.json"
    config_file.write_text(json.dumps(config.to_dict()), encoding="utf-8")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "model.ddp_train", "--config", str(config_file),
           "--out", str(out_dir), "--device", device, "--threads", str(threads),
           "--metadata", json.dumps(extra_metadata or {})]
    if resume:
        cmd.append("--resume")
    if dataset_path:
        cmd += ["--dataset", dataset_path]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(root)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    errors: list[str] = []
    cancelled = threading.Event()
    # The with-block closes both pipes whatever happens.
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env, start_new_session=True) as process:
        drain = threading.Thread(target=lambda: errors.extend(process.stderr), daemon=True)
        drain.start()

        def watch() -> None:
            while process.poll() is None:
                if should_cancel is not None and should_cancel():
                    cancelled.set()
                    os.killpg(process.pid, signal.SIGTERM)
                    return
                threading.Event().wait(poll_seconds)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        for line in process.stdout:
            if line.startswith(STEP_PREFIX) and on_step_end is not None:
                data = json.loads(line[len(STEP_PREFIX):])
                on_step_end(SimpleNamespace(**data, to_dict=lambda data=data: dict(data)))
        code = process.wait()
        drain.join(timeout=5)
        watcher.join(timeout=poll_seconds * 2 + 1)
    if cancelled.is_set():
        raise Cancelled("training cancelled")
    if code != 0:
        tail = "".join(errors)[-2000:]
        raise RanksFailed(f"{nproc} training ranks failed (exit {code}): {tail}")
    return out_dir


if __name__ == "__main__":
    sys.exit(main())
