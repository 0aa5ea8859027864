"""Near-OOD benchmark: transformed held-out images that no training step ever saw.

    .venv/bin/python benchmarks/near_ood.py --checkpoint checkpoints/demo \
        --json docs/results/near_ood.json

These sets are not part of `debm eval-ood` and nothing in training targets them, so they show
how the score generalises.  Each row is the AUROC of held-out images (in-distribution) against
the same images transformed; the checkpoint's DAE-only warm-up baseline is scored side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.nn import functional as F

from model.data import to_model_range
from model.evaluation import model_and_baseline
from model.metrics import auroc
from model.pipeline import load_splits, score_images


def _blur(x: torch.Tensor) -> torch.Tensor:
    kernel = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    kernel = (kernel[:, None] * kernel[None, :]) / kernel.sum() ** 2
    kernel = kernel.view(1, 1, 5, 5).repeat(x.shape[1], 1, 1, 1)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), kernel, groups=x.shape[1])


TRANSFORMS = {
    "mirrored": lambda x: x.flip(-1),
    "upside_down": lambda x: x.flip(-2),
    "rotated_90": lambda x: torch.rot90(x, 1, (-2, -1)),
    "shifted_8px": lambda x: torch.roll(x, 8, -1),
    "blurred": _blur,
    "inverted": lambda x: -x,
    "half_contrast": lambda x: 0.5 * x,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="checkpoints/demo")
    parser.add_argument("--n", type=int, default=500, help="held-out images used")
    parser.add_argument("--json")
    args = parser.parse_args()

    scorers = model_and_baseline(args.checkpoint)
    _, holdout = load_splits(scorers["model"].config)
    x = to_model_range(holdout.images[:args.n])
    table: dict[str, dict[str, float]] = {}
    for name, scorer in scorers.items():
        inside = score_images(scorer, x).numpy()
        table[name] = {t: auroc(inside, score_images(scorer, fn(x)).numpy())
                       for t, fn in TRANSFORMS.items()}
    names = list(scorers)
    print(f"near-OOD AUROC, {x.shape[0]} held-out images vs their transforms: {args.checkpoint}")
    print(f"{'transform':<15}" + "".join(f"{n:>10}" for n in names))
    for t in TRANSFORMS:
        print(f"{t:<15}" + "".join(f"{table[n][t]:>10.3f}" for n in names))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"checkpoint": args.checkpoint,
                                               "n": int(x.shape[0]), "auroc": table}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
