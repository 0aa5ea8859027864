"""What the plain reconstruction r(x~, sigma) = F(x~, sigma) does to short CPU runs of the
`paper` and `demo` settings, against the EDM-preconditioned r (network.preconditioning).

    .venv/bin/python benchmarks/preconditioning.py --json docs/results/preconditioning.json

Each row trains the same small network as benchmarks/stabilisers.py (28x28 MNIST-5k, 2
levels, 16-d latent) for a few steps, once with each preconditioning, and reports:
  - the loss curve: the DAE loss (eq. 1) and decoder loss (eq. 13) at a few steps, and in the
    contrastive phase the data and negative energies per dimension;
  - whether training blew up (EnergyExplosion: NaN or |E| per dimension > max_energy);
  - the energy scale at the end: mean U^c(x, sigma) per dimension on held-out digits at
    sigma = 0.01, 0.05, 0.3 and 1.0 (eq. 7 scales as 1/sigma^2 unless r follows the noise).

`paper` rows run the paper's Algorithm 1 (every stabiliser off) at lr 1e-3, as the stabiliser
benchmark does, so that instabilities show within the budget; `demo` rows run demo's own
training settings with a shortened warm-up.  With ``--decoder-rows`` two more demo rows
compare training.decoder_trains_encoder on and off.  A couple of minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from model.data import to_model_range
from model.energies import texture_energy
from model.formats.config import ExperimentConfig
from model.formats.presets import preset
from model.pipeline import load_splits
from model.training import EnergyExplosion, Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stabilisers import small  # noqa: E402  (the stabiliser benchmark's small network)

SCALE_SIGMAS = (0.01, 0.05, 0.3, 1.0)


def small_demo(warmup: int, iterations: int) -> ExperimentConfig:
    """demo's training settings on the small network, with a shorter warm-up and phase."""
    config = small(preset("demo"), iterations)
    demo = preset("demo").training
    return config.replace(training={
        "warmup_steps": warmup, "lr": demo.lr, "contrastive_lr": demo.contrastive_lr,
        "replay_buffer_size": demo.replay_buffer_size, "steps_pixel": demo.steps_pixel})


@torch.no_grad()
def energy_scale(trainer: Trainer, holdout_x: torch.Tensor) -> dict[str, float]:
    """Mean U^c(x, sigma) per dimension on held-out images, one fixed noise draw."""
    trainer.model.eval()
    generator = torch.Generator().manual_seed(0)
    d = holdout_x[0].numel()
    return {f"{s:g}": round(float(texture_energy(trainer.model.dae, holdout_x, s,
                                                 generator=generator).mean() / d), 4)
            for s in SCALE_SIGMAS}


def run_row(name: str, config: ExperimentConfig, holdout_x: torch.Tensor,
            curve_points: int = 5) -> dict:
    train, _ = load_splits(config)
    trainer = Trainer(config, train)
    history, error = [], None
    start = time.perf_counter()
    try:
        trainer.run(on_step_end=history.append)
    except EnergyExplosion as exc:
        error = str(exc).split(";")[0]
    row = {"row": name, "preconditioning": config.network.preconditioning,
           "decoder_trains_encoder": config.training.decoder_trains_encoder,
           "steps": trainer.step, "of": trainer.total_steps, "blew_up": error,
           "seconds": round(time.perf_counter() - start, 1)}
    every = max(1, len(history) // curve_points)
    row["curve"] = [{"step": m.step, "phase": m.phase,
                     **{k: round(m.losses[k], 4) for k in ("dae", "decoder", "data_energy",
                                                           "negative_energy")
                        if k in m.losses}}
                    for m in history[every - 1::every]]
    if error is None:
        row["energy_per_dim_at_sigma"] = energy_scale(trainer, holdout_x)
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paper-iters", type=int, default=20)
    parser.add_argument("--demo-warmup", type=int, default=40)
    parser.add_argument("--demo-iters", type=int, default=10)
    parser.add_argument("--decoder-rows", action="store_true",
                        help="also compare demo with decoder_trains_encoder on and off")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    paper = small(preset("paper"), args.paper_iters)
    demo = small_demo(args.demo_warmup, args.demo_iters)
    _, holdout = load_splits(paper)
    holdout_x = to_model_range(holdout.images[:200])
    rows = [("paper, r = F (the paper)", paper),
            ("paper, r EDM-preconditioned", paper.replace(network={"preconditioning": "edm"})),
            ("demo, r EDM-preconditioned (shipped)", demo),
            ("demo, r = F", demo.replace(network={"preconditioning": "none"}))]
    if args.decoder_rows:
        rows.append(("demo, eq. 13 trains gamma only",
                     demo.replace(training={"decoder_trains_encoder": False})))
    measured = []
    for name, config in rows:
        measured.append(run_row(name, config, holdout_x))
        if args.json:  # after every row: a stopped run keeps what it measured
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv),
                                                   "rows": measured}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
