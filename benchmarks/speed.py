"""Speed benchmark: generation per sampler and OOD scoring throughput, side by side.

    .venv/bin/python benchmarks/speed.py --checkpoint checkpoints/demo --json docs/results/speed.json

Everything is measured in one run and reported as ratios too, because the machine is shared
and absolute seconds are noisy.  Each timing is the best of ``--repeats`` runs (the least
disturbed one).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from model.checkpoints import load_checkpoint
from model.pipeline import generate, resolve_device, score_images


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def add_ratios(rows: dict[str, dict]) -> None:
    """Generation rows relative to two_stage, scoring rows relative to batch 1."""
    reference = rows["generate/two_stage"]["seconds"]
    for name, row in rows.items():
        if name.startswith("generate/"):
            row["ratio_to_two_stage"] = row["seconds"] / reference
    single = rows["score/batch1"]["images_per_second"]
    for name, row in rows.items():
        if name.startswith("score/"):
            row["throughput_ratio_to_batch1"] = row["images_per_second"] / single


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="checkpoints/demo")
    parser.add_argument("--n", type=int, default=16, help="samples per generate call")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    device = resolve_device(args.device)
    loaded = load_checkpoint(args.checkpoint, device=device)
    sampler_cfg = loaded.config.sampler
    net = loaded.config.network
    rows: dict[str, dict] = {}

    # Generation: the paper's claim is that two-stage MCMC needs far fewer steps.
    plans = {
        "two_stage": {"sampler": "two_stage"},
        "semantic_only": {"sampler": "two_stage", "steps_pixel": 0},
        "texture_only": {"sampler": "texture_only"},
        "annealed": {"sampler": "annealed"},
    }
    for name, plan in plans.items():
        steps = {}

        def run(plan=plan):
            result = generate(loaded, n=args.n, seed=0, **plan)
            steps["steps"] = result.steps

        seconds = best_of(args.repeats, run)
        rows[f"generate/{name}"] = {"seconds": seconds, "per_sample_ms": 1000 * seconds / args.n,
                                    "steps": steps["steps"]}

    # Scoring throughput at several batch sizes (the service batches one request's images).
    generator = torch.Generator().manual_seed(0)
    for batch in (1, 16, 64):
        x = torch.rand((batch, net.channels, net.image_size, net.image_size),
                       generator=generator) * 2 - 1
        seconds = best_of(args.repeats, lambda x=x: score_images(loaded, x))
        rows[f"score/batch{batch}"] = {"seconds": seconds,
                                       "images_per_second": batch / seconds,
                                       "draws": loaded.config.scoring.draws}

    add_ratios(rows)
    print(f"checkpoint {args.checkpoint} on {device}, torch threads {torch.get_num_threads()}, "
          f"n={args.n}, best of {args.repeats}; sampler defaults K={sampler_cfg.steps_latent} "
          f"T={sampler_cfg.steps_pixel}")
    print(f"{'benchmark':<26}{'seconds':>9}{'steps':>7}{'ms/sample':>11}{'img/s':>9}{'ratio':>8}")
    for name, row in rows.items():
        ratio = row.get("ratio_to_two_stage", row.get("throughput_ratio_to_batch1"))
        print(f"{name:<26}{row['seconds']:>9.2f}{row.get('steps', ''):>7}"
              f"{row.get('per_sample_ms', float('nan')):>11.1f}"
              f"{row.get('images_per_second', float('nan')):>9.1f}{ratio:>8.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "checkpoint": args.checkpoint, "device": str(device), "n": args.n,
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
