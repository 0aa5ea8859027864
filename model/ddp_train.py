"""One rank of a data-parallel training run; torchrun starts N of these.

    torchrun --standalone --nproc_per_node 4 -m model.ddp_train \\
        --config run.json --out runs/cifar [--resume]

``--config`` is an ExperimentConfig JSON (``debm train --print-config`` writes one, or take
``config`` from any checkpoint.json).  Every rank joins the process group torchrun describes
(NCCL on GPUs, gloo on CPUs), trains its share of each global batch, and rank 0 writes the
same checkpoints a one-process run writes; ``--resume`` continues them on any number of ranks.
"""

from __future__ import annotations

import argparse
import json
import sys

from .config import ExperimentConfig
from .distributed import init_from_env, shutdown
from .pipeline import run_training


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="ExperimentConfig JSON file")
    parser.add_argument("--out", required=True, help="checkpoint directory")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads per rank")
    args = parser.parse_args(argv)
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    with open(args.config, encoding="utf-8") as handle:
        raw = json.load(handle)
    config = ExperimentConfig.from_dict(raw.get("config", raw))
    ctx, device = init_from_env(args.device)
    try:
        def report(metrics) -> None:
            print(json.dumps({"step": metrics.step, "of": metrics.total_steps,
                              "phase": metrics.phase, "seconds": round(metrics.seconds, 3)}),
                  flush=True)

        run_training(config, args.out, resume=args.resume, device=str(device),
                     on_step_end=report, dist=ctx)
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
