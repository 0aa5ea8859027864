"""OOD sets drawn with Pillow that no benchmark or training step targets: thin lines, capital
letters (resized from 112 px, and drawn at 28 px), three-letter text, circles and smooth
sky-like gradients, each scored by the checkpoint's texture reading alone (the paper's -U^c)
and by its texture+semantic score.

    .venv/bin/python benchmarks/drawn_shapes.py --checkpoint checkpoints/demo \
        --json docs/results/drawn_shapes.json

A check that the texture+semantic score generalises beyond the transforms it was chosen on
(docs/RESULTS.md, "Demo model v3"): AUROC of the held-out split against each set.  Needs a
checkpoint calibrated with score=texture+semantic (its reference standardises the readings).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from model.checkpoints import load_checkpoint
from model.data import conform, to_model_range
from model.metrics import auroc
from model.pipeline import load_splits, prepare_for_inference, score_readings, score_reference
from model.scores import combined_score

CANVAS = 112  # drawn at 4x the demo size, then resized like an upload


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def thin_lines(rng: np.random.Generator) -> Image.Image:
    image = Image.new("L", (CANVAS, CANVAS))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(1, 4)):
        ends = [tuple(int(v) for v in rng.integers(10, CANVAS - 10, 2)) for _ in range(2)]
        draw.line(ends, fill=255, width=int(rng.integers(3, 8)))
    return image


def _centred_text(word: str, size: int, canvas: int = CANVAS) -> Image.Image:
    """White text on black, its box centred as MNIST centres its digits."""
    image = Image.new("L", (canvas, canvas))
    draw, font = ImageDraw.Draw(image), _font(size)
    left, top, right, bottom = draw.textbbox((0, 0), word, font=font)
    draw.text(((canvas - right - left) / 2, (canvas - bottom - top) / 2), word, fill=255,
              font=font)
    return image


def letter(rng: np.random.Generator) -> Image.Image:
    return _centred_text(chr(int(rng.integers(65, 91))), 80)  # a digit's box: 20 of 28 px


def letter_28px(rng: np.random.Generator) -> Image.Image:
    """Drawn at the model's size: thinner, sharper strokes than a resized glyph."""
    return _centred_text(chr(int(rng.integers(65, 91))), 20, canvas=28)


def text(rng: np.random.Generator) -> Image.Image:
    return _centred_text("".join(chr(int(c)) for c in rng.integers(65, 91, 3)), 36)


def circle(rng: np.random.Generator) -> Image.Image:
    image = Image.new("L", (CANVAS, CANVAS))
    r, (cx, cy) = int(rng.integers(20, 45)), (int(v) for v in rng.integers(45, 67, 2))
    ImageDraw.Draw(image).ellipse([cx - r, cy - r, cx + r, cy + r], outline=255,
                                  width=int(rng.integers(6, 14)))
    return image


def sky(rng: np.random.Generator) -> Image.Image:
    top, bottom = rng.uniform(120, 255), rng.uniform(60, 200)
    gradient = np.linspace(top, bottom, CANVAS)[:, None].repeat(CANVAS, 1)
    gradient += rng.normal(0, 3, gradient.shape)
    return Image.fromarray(gradient.clip(0, 255).astype(np.uint8))


SETS = {"thin_lines": thin_lines, "letter": letter, "letter_28px": letter_28px, "text": text,
        "circle": circle, "sky": sky}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="checkpoints/demo")
    parser.add_argument("--n", type=int, default=200, help="images per drawn set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json")
    args = parser.parse_args()

    loaded = prepare_for_inference(load_checkpoint(args.checkpoint))
    if loaded.config.scoring.score != "texture+semantic":
        raise SystemExit("calibrate the checkpoint with --score texture+semantic first")
    reference = score_reference(loaded)
    net = loaded.config.network
    _, holdout = load_splits(loaded.config)

    def scores(x: torch.Tensor) -> dict[str, np.ndarray]:
        readings = score_readings(loaded, x)
        return {"texture": readings["texture"].numpy(),
                "texture+semantic": combined_score(readings, reference).numpy()}

    inside = scores(to_model_range(holdout.images))
    rng = np.random.default_rng(args.seed)
    table: dict[str, dict[str, float]] = {}
    for name, draw in SETS.items():
        drawn = np.stack([np.asarray(draw(rng)) for _ in range(args.n)])[:, None]
        x = to_model_range(conform(torch.from_numpy(drawn), image_size=net.image_size,
                                   channels=net.channels))
        outside = scores(x)
        table[name] = {k: auroc(inside[k], outside[k]) for k in inside}
    print(f"drawn OOD sets, AUROC against {len(holdout)} held-out images: {args.checkpoint}")
    print(f"{'set':<12}{'texture':>10}{'texture+semantic':>18}")
    for name, row in table.items():
        print(f"{name:<12}{row['texture']:>10.3f}{row['texture+semantic']:>18.3f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"checkpoint": args.checkpoint, "n": args.n,
                                               "seed": args.seed, "auroc": table}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
