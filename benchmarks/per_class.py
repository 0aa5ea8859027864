"""Per-class behaviour of the OOD score on held-out digits: median score and the share of
each class that the calibrated threshold would flag as OOD (the target is 5% overall).

    .venv/bin/python benchmarks/per_class.py --checkpoint checkpoints/demo \
        --json docs/results/per_class.json

A score that is fair across classes flags every class at about the same rate; the DAE-only
warm-up baseline is computed side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from model.data import to_model_range
from model.evaluation import model_and_baseline
from model.pipeline import load_splits, score_images


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="checkpoints/demo")
    parser.add_argument("--json")
    args = parser.parse_args()
    scorers = model_and_baseline(args.checkpoint)
    _, holdout = load_splits(scorers["model"].config)
    if holdout.labels is None:
        raise SystemExit("per_class needs a labelled dataset")
    x = to_model_range(holdout.images)
    classes = sorted(int(c) for c in holdout.labels.unique())
    report: dict[str, dict] = {}
    for name, scorer in scorers.items():
        scores = score_images(scorer, x)
        # Each scorer's own 5% threshold on these held-out scores (what calibration does).
        threshold = torch.quantile(scores, 0.05)
        report[name] = {
            str(c): {"median": float(scores[holdout.labels == c].median()),
                     "flagged": float((scores[holdout.labels == c] < threshold).float().mean())}
            for c in classes}
    print(f"held-out digits per class ({len(holdout)} images): {args.checkpoint}")
    for name, rows in report.items():
        print(f"{name:<9} median " + " ".join(f"{rows[str(c)]['median']:7.1f}" for c in classes))
        print(f"{'':<9} flagged" + " ".join(f"{rows[str(c)]['flagged']:7.2f}" for c in classes))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"checkpoint": args.checkpoint,
                                               "classes": classes, "scorers": report}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
