"""What each stabiliser changes: short runs of the paper's algorithm on MNIST-5k, one row per
setting, side by side.

    .venv/bin/python benchmarks/stabilisers.py --json docs/results/stabilisers.json

A small network (28x28, 2 levels, 16-d latent) so that every row takes about a minute on a
CPU: `paper` (every stabiliser off), `paper-stable`, and `paper-stable` with one stabiliser
turned back to the paper's value.  The learning rate is raised to 1e-3 for all rows so that
instabilities show within the short budget.  Reported: whether and when the energies blew up
(|E| per dimension > max_energy or NaN), final data / negative energies per dimension, and
held-out AUROC of the score -U^c(x, 0.05) against uniform noise and constant images.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


from model.formats.config import ExperimentConfig
from model.formats.presets import preset
from model.data import to_model_range
from model.energies import texture_score
from model.metrics import auroc
from model.ood_sets import build_ood_set
from model.pipeline import load_splits
from model.formats.presets import PAPER_ALGORITHM
from model.training import EnergyExplosion, Trainer

GROUPS = {  # one stabiliser = the settings that make it up
    "EDM-weighted DAE loss": ["dae_loss_weighting"],
    "energy penalty": ["energy_penalty"],
    "gradient clipping (parameters and chains)": ["grad_clip_norm", "chain_grad_clip"],
    "chain clamping": ["clamp_chains"],
    "latent replay buffer": ["replay_buffer_size", "replay_prob"],
    "noise-started chains": ["noise_chain_fraction"],
    "contrastive sigma range": ["contrastive_sigma_min", "contrastive_sigma_max"],
    "latent-moment penalty": ["latent_moment_weight"],
    "contrastive beta1 = 0": ["contrastive_betas"],
}


def small(config: ExperimentConfig, iterations: int) -> ExperimentConfig:
    return config.replace(
        network={"image_size": 28, "channels": 1, "base_width": 16, "channel_mults": [1, 2],
                 "blocks_per_level": 1, "latent_dim": 16, "decoder_width": 16,
                 "embedding_dim": 16, "groups": 8},
        training={"batch_size": 32, "chain_batch_size": 32, "steps_latent": 10,
                  "steps_pixel": 10, "iterations": iterations, "lr": 1e-3,
                  "contrastive_lr": 1e-3, "flip": False, "checkpoint_every": 0,
                  "replay_buffer_size": min(config.training.replay_buffer_size, 256)},
        data={"dataset": "mnist5k"})


def run_row(name: str, config: ExperimentConfig, holdout_x, ood) -> dict:
    train, _ = load_splits(config)
    trainer = Trainer(config, train)
    history, error = [], None
    start = time.perf_counter()
    try:
        trainer.run(on_step_end=history.append)
    except EnergyExplosion as exc:
        error = str(exc).split(";")[0]
    seconds = time.perf_counter() - start
    row = {"row": name, "steps": trainer.step, "blew_up": error, "seconds": round(seconds, 1)}
    last = [m for m in history[-10:] if m.data_energy is not None]
    if last:
        row["data_energy"] = round(sum(m.data_energy for m in last) / len(last), 4)
        row["negative_energy"] = round(sum(m.negative_energy for m in last) / len(last), 4)
    if error is None:
        trainer.model.eval()
        score = lambda x: texture_score(trainer.model.dae, x, sigma=0.05, draws=4, seed=0)  # noqa
        s_in = score(holdout_x)
        for set_name, x in ood.items():
            row[f"auroc_{set_name}"] = round(auroc(s_in, score(x)), 3)
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--json")
    parser.add_argument("--only", nargs="+", metavar="TEXT",
                        help="run only the rows whose name contains one of these; the other "
                        "rows already in --json are kept")
    args = parser.parse_args()
    torch.set_num_threads(1)
    paper = small(preset("paper"), args.iters)
    stable = small(preset("paper-stable"), args.iters)
    _, holdout = load_splits(paper)
    holdout_x = to_model_range(holdout.images[:300])
    ood = {s: build_ood_set(s, n=200, image_size=28, channels=1, seed=0, holdout=holdout)
           for s in ("uniform", "constant")}
    variants = [("paper (all off)", paper), ("paper-stable (all on)", stable)]
    for group, keys in GROUPS.items():
        off = {k: PAPER_ALGORITHM[k] for k in keys}
        variants.append((f"paper-stable without {group}", stable.replace(training=off)))
    measured: dict[str, dict] = {}
    if args.only and args.json and Path(args.json).is_file():
        kept = json.loads(Path(args.json).read_text())
        if kept.get("iterations") != args.iters:
            parser.error(f"{args.json} holds rows of {kept.get('iterations')} iterations")
        measured = {row["row"]: row for row in kept["rows"]}
    for name, config in variants:
        if args.only and not any(text in name for text in args.only):
            continue
        measured[name] = run_row(name, config, holdout_x, ood)
        if args.json:  # after every row: a long run that is stopped keeps what it measured
            rows = [measured[n] for n, _ in variants if n in measured]  # the table's order
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({"iterations": args.iters, "rows": rows},
                                                  indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
