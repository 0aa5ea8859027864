"""Peer benchmark: a small diffusers DDPM on the same data and wall-clock budget, judged by
the same classifier as ``debm eval-samples``, beside the EBM's two_stage sampler.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/peer_ddpm.py --budget-minutes 36 \
        --checkpoint checkpoints/demo --json docs/results/peer_ddpm.json

What a user would try instead of this project: a ``UNet2DModel`` (1.06 M parameters, three
resolution levels 28/14/7, widths 32/64/64, no attention) trained with the epsilon loss of
DDPM (Ho et al. 2020, eq. 14: E ||e - e_theta(sqrt(abar_t) x + sqrt(1 - abar_t) e, t)||^2)
on the same 4,500 training digits of MNIST-5k (the split every project benchmark uses), for a
wall-clock budget, then sampled with DDIM (Song et al. 2021, eta=0) at 10, 20 and 50 steps
from the weights' exponential moving average.  In the same run, the EBM checkpoint's
two_stage sampler is sampled with the batches and seeds ``debm eval-samples`` uses, and every
row is judged by the project's feature classifier against the held-out split.

``diffusers`` is an optional dependency (``pip install '.[bench]'``); the service never
imports this file.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.checkpoints import load_checkpoint  # noqa: E402
from model.classifier import classifier_for  # noqa: E402
from model.formats.config import ExperimentConfig  # noqa: E402
from model.formats.presets import preset  # noqa: E402
from model.data import to_model_range  # noqa: E402
from model.evaluation import TIMING_BATCH, sample_in_batches, sample_metrics  # noqa: E402
from model.pipeline import load_splits  # noqa: E402

DEFAULT_WIDTHS = (32, 64, 64)
DEFAULT_DDIM_STEPS = (10, 20, 50)


def build_unet(*, image_size: int = 28, channels: int = 1,
               widths: tuple[int, ...] = DEFAULT_WIDTHS, groups: int = 8):
    """The peer network: diffusers' UNet2DModel, plain ResNet blocks, one per level."""
    from diffusers import UNet2DModel

    down = ("DownBlock2D",) * len(widths)
    up = ("UpBlock2D",) * len(widths)
    return UNet2DModel(sample_size=image_size, in_channels=channels, out_channels=channels,
                       block_out_channels=tuple(widths), layers_per_block=1,
                       down_block_types=down, up_block_types=up, norm_num_groups=groups)


def make_scheduler(timesteps: int = 1000):
    """DDPM's linear beta schedule, 1e-4 -> 0.02 over 1,000 steps (Ho et al. 2020)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=timesteps, beta_schedule="linear",
                         prediction_type="epsilon")


def train_ddpm(images: torch.Tensor, *, budget_seconds: float, max_steps: int | None = None,
               batch_size: int = 64, lr: float = 5e-4, ema_decay: float = 0.999,
               seed: int = 0, widths: tuple[int, ...] = DEFAULT_WIDTHS, groups: int = 8,
               timesteps: int = 1000, log_every: int = 0) -> tuple[Any, Any, dict[str, Any]]:
    """Train on ``images`` (N, C, H, W in [-1, 1]) until the budget or ``max_steps`` ends.

    Returns (EMA network, scheduler, stats).  Every draw (initial weights, batches, t, noise)
    comes from ``seed``."""
    torch.manual_seed(seed)
    unet = build_unet(image_size=images.shape[-1], channels=images.shape[1], widths=widths,
                      groups=groups)
    ema = copy.deepcopy(unet).requires_grad_(False)
    scheduler = make_scheduler(timesteps)
    optimizer = torch.optim.Adam(unet.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    alphas = scheduler.alphas_cumprod
    losses: list[float] = []
    started = time.perf_counter()
    cpu_started = time.process_time()
    step = 0
    unet.train()
    while (max_steps is None or step < max_steps) and \
            time.perf_counter() - started < budget_seconds:
        index = torch.randint(images.shape[0], (batch_size,), generator=generator)
        x0 = images[index]
        t = torch.randint(timesteps, (batch_size,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = F.mse_loss(unet(noisy, t).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # EMA of the weights; a short run warms its decay up so early weights do not dominate.
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), unet.parameters()):
                e.lerp_(p, 1 - decay)
        losses.append(loss.item())
        step += 1
        if log_every and step % log_every == 0:
            recent = sum(losses[-log_every:]) / log_every
            print(f"ddpm step {step} loss {recent:.4f} "
                  f"{time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - started
    # On a shared machine the wall-clock budget buys a varying amount of computation; the
    # process CPU time says how much this run actually got.
    cpu_seconds = time.process_time() - cpu_started
    window = losses[-100:] or [float("nan")]
    stats = {"steps": step, "train_seconds": round(seconds, 1),
             "train_cpu_seconds": round(cpu_seconds, 1), "batch_size": batch_size,
             "lr": lr, "ema_decay": ema_decay, "final_loss": sum(window) / len(window),
             "first_loss": losses[0] if losses else None,
             "parameters": sum(p.numel() for p in unet.parameters())}
    ema.eval()
    return ema, scheduler, stats


@torch.no_grad()
def ddim_sample(unet, train_scheduler, *, n: int, steps: int, seed: int,
                image_shape: tuple[int, int, int]) -> torch.Tensor:
    """n images in [-1, 1] from DDIM with eta=0 and ``steps`` network passes."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(train_scheduler.config)
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *image_shape), generator=generator)
    for t in scheduler.timesteps:
        eps = unet(x, t).sample
        x = scheduler.step(eps, t, x, eta=0.0).prev_sample
    return x.clamp(-1, 1)


def ddim_in_batches(unet, scheduler, *, n: int, steps: int, seed: int,
                    image_shape: tuple[int, int, int]) -> tuple[torch.Tensor, float]:
    """Batches of 64 with seeds seed, seed + 1, ... as ``debm eval-samples`` does; returns
    (images, seconds for all n)."""
    images, seconds = [], 0.0
    for b, start in enumerate(range(0, n, TIMING_BATCH)):
        size = min(TIMING_BATCH, n - start)
        began = time.perf_counter()
        images.append(ddim_sample(unet, scheduler, n=size, steps=steps, seed=seed + b,
                                  image_shape=image_shape))
        seconds += time.perf_counter() - began
    return torch.cat(images), seconds


def _config_for(checkpoint: str | None) -> tuple[ExperimentConfig, Any]:
    if checkpoint:
        loaded = load_checkpoint(checkpoint, device="cpu")
        return loaded.config, loaded
    return preset("demo"), None


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-minutes", type=float, default=36.0,
                        help="wall-clock training budget of the DDPM")
    parser.add_argument("--max-steps", type=int, help="stop training after this many steps")
    parser.add_argument("--checkpoint", default="checkpoints/demo",
                        help="EBM checkpoint sampled beside the DDPM ('' to skip); its data "
                             "config also defines the split")
    parser.add_argument("--ddim-steps", type=int, nargs="+", default=list(DEFAULT_DDIM_STEPS))
    parser.add_argument("--n", type=int, default=512, help="samples per row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--save", help="directory for the EMA weights (diffusers format)")
    parser.add_argument("--grids", help="directory for one PNG grid of 64 per row")
    parser.add_argument("--json")
    return parser.parse_args()


def print_table(rows: dict[str, dict[str, Any]], stats: dict, classifier, args) -> None:
    print(f"DDPM peer ({stats['parameters'] / 1e6:.2f} M parameters, {stats['steps']} steps in "
          f"{stats['train_seconds']:.0f} s wall, {stats['train_cpu_seconds']:.0f} s CPU) vs "
          f"{args.checkpoint or 'no EBM'}; n={args.n}, classifier accuracy "
          f"{classifier.accuracy:.3f}")
    print(f"{'row':<18}{'FD':>8}{'conf':>7}{'max cls':>9}{'steps':>7}{'s/64':>8}  histogram")
    for name, r in rows.items():
        print(f"{name:<18}{r['fd']:8.1f}{r['confidence']:7.3f}{r['max_class_fraction']:9.2f}"
              f"{r['steps']:7d}{r['seconds_per_64']:8.2f}  "
              + " ".join(str(c) for c in r["class_histogram"]))


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)

    config, loaded = _config_for(args.checkpoint)
    splits = load_splits(config)
    train, holdout = splits
    images = to_model_range(train.images)
    print(f"training the DDPM on {images.shape[0]} images for {args.budget_minutes} min "
          f"({args.threads} thread(s))", file=sys.stderr, flush=True)
    unet, scheduler, stats = train_ddpm(images, budget_seconds=args.budget_minutes * 60,
                                        max_steps=args.max_steps, lr=args.lr, seed=args.seed,
                                        log_every=200)
    if args.save:
        unet.save_pretrained(args.save)
    classifier = classifier_for(config, splits, device="cpu")
    reference = classifier.features(to_model_range(holdout.images))
    grid_root = Path(args.grids) if args.grids else None
    if grid_root is not None:
        from model.images import grid_png

        grid_root.mkdir(parents=True, exist_ok=True)

    rows: dict[str, dict[str, Any]] = {}

    def record(name: str, samples: torch.Tensor, steps: int, seconds: float) -> None:
        rows[name] = {**sample_metrics(classifier, samples, reference), "steps": steps,
                      "seconds_per_64": round(seconds * TIMING_BATCH / args.n, 3)}
        if grid_root is not None:
            (grid_root / f"{name}.png").write_bytes(grid_png(samples[:64].nan_to_num(-1.0)))
        r = rows[name]
        print(f"{name:<18} fd={r['fd']:7.1f} conf={r['confidence']:.3f} "
              f"maxcls={r['max_class_fraction']:.2f} s/64={r['seconds_per_64']:6.2f}",
              file=sys.stderr, flush=True)

    shape = tuple(images.shape[1:])
    for steps in args.ddim_steps:
        samples, seconds = ddim_in_batches(unet, scheduler, n=args.n, steps=steps,
                                           seed=args.seed, image_shape=shape)
        record(f"ddpm_ddim_{steps}", samples, steps, seconds)
    if loaded is not None:
        samples, _, steps, seconds, _ = sample_in_batches(loaded, sampler="two_stage", n=args.n,
                                                          seed=args.seed, overrides={})
        record("ebm_two_stage", samples, steps, seconds)

    print_table(rows, stats, classifier, args)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "checkpoint": args.checkpoint, "n": args.n, "seed": args.seed,
            "threads": torch.get_num_threads(), "budget_minutes": args.budget_minutes,
            "ddpm": {**stats, "widths": list(DEFAULT_WIDTHS), "scheduler": "linear, 1000 steps",
                     "sampler": "DDIM eta=0, EMA weights"},
            "classifier_accuracy": classifier.accuracy, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
