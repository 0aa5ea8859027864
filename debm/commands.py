"""The local `debm` commands (train, sample, score, calibrate, export, set-sampler, fit-prior,
eval-ood, eval-samples, serve): each ``cmd_X(args)`` runs one command from its parsed
arguments (debm/cli.py builds the parser).  Model code is imported inside each command, so
that `debm remote` and `--help` never load torch.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Sequence

from model.formats.errors import UserError
from model.formats.settingspec import parse_set


class CliError(UserError):
    """A user error of the command line itself: printed as one line, exit code 2."""


def _training_progress(args: argparse.Namespace, total: int):
    """Training steps through debm.progress: a bar on a terminal, a line per 10% otherwise
    (a training run's log keeps its progress), nothing with --quiet."""
    from .progress import StepProgress

    mode = "none" if args.quiet else args.progress
    if mode == "auto" and not sys.stderr.isatty():
        mode = "plain"
    progress = StepProgress(mode, label="train")

    def on_step(metrics):
        shown = {k: v for k, v in metrics.losses.items()
                 if k in ("dae", "decoder", "data_energy", "negative_energy")}
        progress.update(metrics.step, total, stage=metrics.phase, **shown)

    return on_step, progress.close


# --- commands ------------------------------------------------------------------------------

def cmd_train(args: argparse.Namespace) -> int:
    from model.formats.presets import preset
    from model.pipeline import run_training

    config = preset(args.preset)
    overrides = parse_set(args.set or [])
    training = overrides.setdefault("training", {})
    if args.iters is not None:
        training["iterations"] = args.iters
    if args.warmup is not None:
        training["warmup_steps"] = args.warmup
    if args.seed is not None:
        training["seed"] = args.seed
    overrides.setdefault("data", {})["dataset"] = args.dataset
    config = config.replace(**overrides)
    total = config.training.warmup_steps + config.training.iterations
    on_step, close = _training_progress(args, total)
    started = time.perf_counter()
    try:
        command = "debm " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        if args.nproc > 1:
            # Data-parallel: N ranks under torch.distributed.run (model/ddp_train.py).
            from model.ddp_train import launch_ranks

            if args.init_from:
                raise SystemExit("--init-from is not supported with --nproc > 1")
            out = launch_ranks(config, args.out, nproc=args.nproc, resume=args.resume,
                               device=args.device, on_step_end=on_step,
                               extra_metadata={"command": command})
        else:
            out = run_training(config, args.out, resume=args.resume, init_from=args.init_from,
                               device=args.device, on_step_end=on_step,
                               extra_metadata={"command": command})
    finally:
        close()
    from model.checkpoints import read_manifest

    manifest = read_manifest(out)
    summary = {"checkpoint": str(out), "step": manifest["step"],
               "seconds": round(time.perf_counter() - started, 1),
               **{k: manifest["metadata"].get(k) for k in ("final_data_energy",
                                                           "final_negative_energy")}}
    print(json.dumps(summary))
    return 0


def _load(checkpoint: str, device: str):
    from model.checkpoints import load_checkpoint
    from model.pipeline import resolve_device

    return load_checkpoint(checkpoint, device=resolve_device(device))


def cmd_sample(args: argparse.Namespace) -> int:
    import numpy as np

    from model.images import grid_png
    from model.pipeline import generate

    from .progress import StepProgress, sampling_callback

    loaded = _load(args.checkpoint, args.device)
    progress = StepProgress(args.progress, label="sample")
    try:
        result = generate(loaded, n=args.n, seed=args.seed, sampler=args.sampler,
                          steps_latent=args.steps_latent, steps_pixel=args.steps_pixel,
                          step_size_latent=args.step_size_latent,
                          step_size_pixel=args.step_size_pixel,
                          on_progress=sampling_callback(progress))
    finally:
        progress.close()
    images = result.semantic if args.semantic else result.images
    if images is None:
        raise CliError(f"--semantic needs the two_stage sampler, not {args.sampler}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(grid_png(images))
    if args.npz:
        np.savez(args.npz, x=images.cpu().numpy().astype(np.float32))
    print(json.dumps({"out": str(out), "n": args.n, "sampler": args.sampler,
                      "steps": result.steps}))
    return 0


def _read_images(paths: Sequence[str], *, image_size: int, channels: int, max_pixels: int):
    """The model's pixels of each file through ``model_pixels``: the decode, colour conversion
    and resize the API's scoring task uses too, so both give the same score."""
    from model.formats.imagefile import ImageRejected, model_pixels

    pixels = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise CliError(f"{path}: cannot read it: {exc.strerror or exc}") from None
        try:
            pixels.append(model_pixels(data, image_size=image_size, channels=channels,
                                       max_pixels=max_pixels))
        except ImageRejected as exc:
            raise CliError(f"{path}: {exc}") from None
    return pixels


def cmd_score(args: argparse.Namespace) -> int:
    from model.images import model_pixels_to_tensor
    from model.pipeline import interpret_scores, score_images

    loaded = _load(args.checkpoint, args.device)
    net, scoring = loaded.config.network, loaded.config.scoring
    x = model_pixels_to_tensor(_read_images(args.images, image_size=net.image_size,
                                            channels=net.channels, max_pixels=args.max_pixels))
    sigma = args.sigma if args.sigma is not None else scoring.sigma
    draws = args.draws if args.draws is not None else scoring.draws
    seed = args.seed if args.seed is not None else scoring.seed
    scores = score_images(loaded, x, sigma=sigma, draws=draws, seed=seed)
    extra = interpret_scores(loaded.calibration, scores, sigma=sigma, draws=draws, seed=seed,
                             score=scoring.score)
    rows = [{"file": path, "score": float(score), **info}
            for path, score, info in zip(args.images, scores, extra)]
    print(json.dumps(rows, indent=None))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from model.data import to_model_range
    from model.pipeline import calibrate_checkpoint, load_splits

    scoring = {k: v for k, v in (("score", args.score), ("semantic_sigma", args.semantic_sigma))
               if v is not None}
    if scoring:
        from model.checkpoints import update_config_section

        command = "debm " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        update_config_section(args.checkpoint, "scoring", scoring, note=command)
    loaded = _load(args.checkpoint, "cpu")
    config = loaded.config
    if args.dataset:
        config = config.replace(data={"dataset": args.dataset})
    train, holdout = load_splits(config)
    calibration = calibrate_checkpoint(args.checkpoint, to_model_range(holdout.images),
                                       to_model_range(train.images))
    print(json.dumps({k: calibration[k] for k in ("score", "count", "threshold", "sigma",
                                                  "draws")}))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from model.checkpoints import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out)
    print(json.dumps({"out": str(out),
                      "bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file())}))
    return 0


def cmd_set_sampler(args: argparse.Namespace) -> int:
    from model.checkpoints import update_sampler_defaults

    malformed = [pair for pair in args.settings if "=" not in pair]
    if malformed:
        raise CliError(f"expected NAME=VALUE, got {malformed[0]!r}")
    overrides = parse_set([f"sampler.{pair}" for pair in args.settings]).get("sampler", {})
    note = "debm set-sampler " + " ".join(shlex.quote(a) for a in
                                          ["--checkpoint", str(args.checkpoint), *args.settings])
    print(json.dumps(update_sampler_defaults(args.checkpoint, overrides, note=note)))
    return 0


def cmd_fit_prior(args: argparse.Namespace) -> int:
    from model.checkpoints import update_sampler_defaults
    from model.pipeline import fit_prior, load_splits

    loaded = _load(args.checkpoint, "cpu")
    train, _ = load_splits(loaded.config)
    report = fit_prior(args.checkpoint, model=loaded.model, config=loaded.config,
                       train_images=train.images,
                       components=tuple(args.components) if args.components else None)
    if not args.keep_defaults:
        update_sampler_defaults(args.checkpoint, {"latent_init": "prior"},
                                note=f"debm fit-prior --checkpoint {shlex.quote(args.checkpoint)}")
    print(json.dumps(report))
    return 0


def _say(message: str) -> None:
    print(f"debm eval: {message}", file=sys.stderr, flush=True)


def cmd_eval_ood(args: argparse.Namespace) -> int:
    from model.evaluation import evaluate_ood, format_ood_table

    from .progress import PhaseProgress

    datasets = {}
    for item in args.ood_data or []:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            raise SystemExit(f"--ood-data takes NAME=DATASET, got {item!r}")
        datasets[name] = spec
    # phases: one per scorer (the model, its DAE-only baseline, pixel kNN)
    say = PhaseProgress(3, _say, args.progress, label="eval-ood")
    try:
        report = evaluate_ood(args.checkpoint, baseline_checkpoint=args.baseline,
                              per_set=args.per_set, seed=args.seed, device=args.device,
                              sets=tuple(args.sets) if args.sets is not None else None,
                              datasets=datasets, on_progress=say)
    finally:
        say.close()
    print(format_ood_table(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def cmd_eval_samples(args: argparse.Namespace) -> int:
    from model.evaluation import evaluate_samples, format_samples_table

    from model.evaluation import SAMPLE_ROWS

    from .progress import PhaseProgress

    # phases: the classifier, then one per row ("semantic" shares two_stage's run)
    rows = [r for r in (args.rows or SAMPLE_ROWS) if r != "semantic" or
            "two_stage" not in (args.rows or SAMPLE_ROWS)]
    say = PhaseProgress(1 + len(rows), _say, args.progress, label="eval-samples")
    try:
        report = evaluate_samples(args.checkpoint, n=args.n, seed=args.seed,
                                  device=args.device, grids_dir=args.grids, rows=args.rows,
                                  classifier_cache=args.classifier_cache, on_progress=say)
    finally:
        say.close()
    print(format_samples_table(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from debm.serve import serve

    serve(host=args.host, port=args.port, data_dir=args.data_dir)
    return 0
