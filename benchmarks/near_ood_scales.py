"""Near-OOD AUROC of the texture energy read at several noise levels, and of combining them.

    .venv/bin/python benchmarks/near_ood_scales.py --checkpoint checkpoints/demo \\
        --sigmas 0.05 0.8 1.0 --json docs/results/v2/near_ood_scales.json

The shipped score is -U^c(x, 0.05) (paper 5.2).  This benchmark asks what other levels, and
the smallest per-level z-score over two levels (mean and std from the training split, never
the held-out images), would give on the transforms of benchmarks/near_ood.py, for the
checkpoint and its DAE-only warm-up baseline side by side.  It measures; it changes nothing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

from model.data import to_model_range
from model.evaluation import model_and_baseline
from model.metrics import auroc
from model.pipeline import load_splits, score_images

sys.path.insert(0, str(Path(__file__).resolve().parent))
from near_ood import TRANSFORMS  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="checkpoints/demo")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.05, 0.8, 1.0])
    parser.add_argument("--n", type=int, default=500, help="held-out (and training) images")
    parser.add_argument("--json")
    args = parser.parse_args()

    scorers = model_and_baseline(args.checkpoint)
    train, holdout = load_splits(scorers["model"].config)
    inside = to_model_range(holdout.images[:args.n])
    reference = to_model_range(train.images[:args.n])
    sets = {"held_out": inside, "train": reference,
            **{name: fn(inside) for name, fn in TRANSFORMS.items()}}
    table: dict[str, dict[str, dict[str, float]]] = {}
    for name, scorer in scorers.items():
        scores = {s: {k: score_images(scorer, x, sigma=s).double().numpy()
                      for k, x in sets.items()} for s in args.sigmas}
        rows: dict[str, dict[str, float]] = {}
        for s in args.sigmas:
            rows[f"sigma {s}"] = {t: auroc(scores[s]["held_out"], scores[s][t])
                                  for t in TRANSFORMS}
        for a, b in itertools.combinations(args.sigmas, 2):
            def combined(key):
                z = [(scores[s][key] - scores[s]["train"].mean()) / scores[s]["train"].std()
                     for s in (a, b)]
                return np.minimum(*z)
            rows[f"min z-score of {a}, {b}"] = {t: auroc(combined("held_out"), combined(t))
                                                for t in TRANSFORMS}
        table[name] = rows
        print(f"{name}:")
        for label, row in rows.items():
            print(f"  {label:<28}" + " ".join(f"{t}={v:.3f}" for t, v in row.items()),
                  flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"checkpoint": args.checkpoint, "n": args.n,
                                               "sigmas": args.sigmas, "auroc": table},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
