"""Sampler sweep: sample quality and time of two_stage settings on one checkpoint, side by side.

    .venv/bin/python benchmarks/sampler_sweep.py --checkpoint checkpoints/demo \
        --json docs/results/sampler_sweep.json

Each row overrides the checkpoint's sampler defaults (``SamplerConfig`` field names) and
generates ``--n`` samples in batches of 64 with seeds seed, seed + 1, ... (the batches
``debm eval-samples`` uses), then reports the Frechet distance, mean confidence and largest
class share in the eval classifier's feature space, for the final images and for the semantic
images h(z_K), and the seconds per 64 samples.  This is how the demo checkpoint's generation
defaults were chosen (``debm set-sampler``); FD at n=128 moves by several units between seeds,
so read differences of a few units as ties.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from model.checkpoints import load_checkpoint
from model.classifier import classifier_for
from model.data import to_model_range
from model.evaluation import TIMING_BATCH, sample_in_batches, sample_metrics
from model.pipeline import load_splits, resolve_device

# K (latent steps), T (pixel steps) and the latent chain's temperature; the first row is the
# checkpoint's own defaults.
DEFAULT_GRID: list[dict] = [
    {},
    {"steps_latent": 40, "steps_pixel": 20, "temperature_latent": 1.0},
    {"steps_latent": 20, "steps_pixel": 5, "temperature_latent": 1.0},
    {"steps_latent": 20, "steps_pixel": 5, "temperature_latent": 0.5},
    {"steps_latent": 20, "steps_pixel": 5, "temperature_latent": 0.3},
    {"steps_latent": 20, "steps_pixel": 5, "temperature_latent": 0.0},
    {"steps_latent": 20, "steps_pixel": 0, "temperature_latent": 0.3},
    {"steps_latent": 30, "steps_pixel": 5, "temperature_latent": 0.3},
    {"steps_latent": 40, "steps_pixel": 20, "temperature_latent": 0.3},
    {"steps_latent": 20, "steps_pixel": 5, "temperature_latent": 0.3, "step_size_latent": 0.2},
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="checkpoints/demo")
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", help="JSON list of override objects (default: built in)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    grid = json.loads(args.grid) if args.grid else DEFAULT_GRID
    device = resolve_device(args.device)
    loaded = load_checkpoint(args.checkpoint, device=device)
    splits = load_splits(loaded.config)
    classifier = classifier_for(loaded.config, splits, device=device)
    reference = classifier.features(to_model_range(splits[1].images))

    rows = []
    for overrides in grid:
        images, semantic, _, seconds, _ = sample_in_batches(
            loaded, sampler="two_stage", n=args.n, seed=args.seed, overrides=overrides,
            keep_semantic=True)
        final = sample_metrics(classifier, images, reference)
        latent = sample_metrics(classifier, semantic, reference)
        settings = {**{k: getattr(loaded.config.sampler, k) for k in
                       ("steps_latent", "steps_pixel", "temperature_latent",
                        "step_size_latent")}, **overrides}
        rows.append({"overrides": overrides, "settings": settings, "fd": final["fd"],
                     "confidence": final["confidence"],
                     "max_class_fraction": final["max_class_fraction"],
                     "class_histogram": final["class_histogram"],
                     "semantic_fd": latent["fd"], "semantic_confidence": latent["confidence"],
                     "seconds_per_64": seconds * TIMING_BATCH / args.n})
        row = rows[-1]
        print(f"K={settings['steps_latent']:<3} T={settings['steps_pixel']:<3} "
              f"temp={settings['temperature_latent']:<4} eta1={settings['step_size_latent']:<5} "
              f"fd={row['fd']:7.1f} conf={row['confidence']:.3f} "
              f"maxcls={row['max_class_fraction']:.2f} semantic_fd={row['semantic_fd']:7.1f} "
              f"s/64={row['seconds_per_64']:6.2f}", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "checkpoint": args.checkpoint, "step": loaded.step, "n": args.n, "seed": args.seed,
            "device": str(device), "threads": torch.get_num_threads(),
            "classifier_accuracy": classifier.accuracy, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
