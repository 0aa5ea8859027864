"""The ``debm`` command line: train, sample, score, calibrate, evaluate and serve.

Every failure the user can cause (missing file, non-image, wrong checkpoint, bad value) ends
with exit code 2 and one line on stderr; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from model.formats.config import SAMPLER_NAMES, SCORES
from model.formats.presets import PRESETS
from model.formats.errors import Cancelled, UserError, user_message
from model.formats.settingspec import parse_set

EXIT_USAGE = 2
PROGRESS_MODES = ("auto", "bar", "plain", "none")


class CliError(UserError):
    """A user error of the command line itself: printed as one line, exit code 2."""


# --- helpers -------------------------------------------------------------------------------

def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be >= 0")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"{text} must be a positive finite number")
    return value


def _progress_printer(total: int, quiet: bool):
    """A tqdm bar on a terminal, a line every 10% otherwise."""
    if quiet:
        return lambda metrics: None, lambda: None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, unit="step", dynamic_ncols=True)

        def on_step(metrics):
            bar.n = metrics.step
            shown = {k: f"{v:.3g}" for k, v in metrics.losses.items()
                     if k in ("dae", "decoder", "data_energy", "negative_energy")}
            bar.set_postfix(phase=metrics.phase, **shown)
            bar.refresh()

        return on_step, bar.close
    every = max(1, total // 10)

    def on_step_plain(metrics):
        if metrics.step % every == 0 or metrics.step == total:
            losses = " ".join(f"{k}={v:.4g}" for k, v in metrics.losses.items())
            print(f"step {metrics.step}/{total} {metrics.phase} {losses}", file=sys.stderr,
                  flush=True)

    return on_step_plain, lambda: None


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
    on_step, close = _progress_printer(total, args.quiet)
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


def _read_images(paths: Sequence[str], *, max_pixels: int):
    from model.formats.imagefile import ImageRejected, read_image_file

    images = []
    for path in paths:
        try:
            images.append(read_image_file(path, max_pixels=max_pixels, allow_alpha=True).image)
        except ImageRejected as exc:
            raise CliError(f"{path}: {exc}") from None
    return images


def cmd_score(args: argparse.Namespace) -> int:
    from model.images import pil_to_model_tensor
    from model.pipeline import interpret_scores, score_images

    loaded = _load(args.checkpoint, args.device)
    net, scoring = loaded.config.network, loaded.config.scoring
    images = _read_images(args.images, max_pixels=args.max_pixels)
    x = pil_to_model_tensor(images, image_size=net.image_size, channels=net.channels)
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


# --- parser --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="debm", description="Denoising-EBM: train, sample, "
                                     "score OOD, evaluate and serve.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train with Algorithm 1")
    p.add_argument("--dataset", required=True,
                   help="mnist5k, digits8x8, or a local folder / .zip / .npz / CIFAR-10 "
                        "batch folder / SVHN .mat")
    p.add_argument("--preset", choices=PRESETS, default="demo")
    p.add_argument("--iters", type=_non_negative_int, help="contrastive iterations")
    p.add_argument("--warmup", type=_non_negative_int, help="reconstruction-only steps")
    p.add_argument("--seed", type=_non_negative_int)
    p.add_argument("--out", required=True, help="checkpoint directory")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    p.add_argument("--nproc", type=_positive_int, default=1,
                   help="data-parallel processes (one per GPU; gloo on CPU), same total batch")
    p.add_argument("--init-from", help="start from another run's checkpoint (same network): its "
                                       "weights, optimizer, RNG and step, or only its weights "
                                       "if it was exported")
    p.add_argument("--set", nargs="*", metavar="SECTION.NAME=VALUE",
                   help="override config values, e.g. training.lr=1e-4")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="draw samples into a PNG grid")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--n", type=_positive_int, default=64)
    p.add_argument("--seed", type=_non_negative_int, default=0)
    p.add_argument("--sampler", choices=SAMPLER_NAMES,
                   default="two_stage")
    p.add_argument("--steps-latent", type=_non_negative_int)
    p.add_argument("--steps-pixel", type=_non_negative_int)
    p.add_argument("--step-size-latent", type=_positive_float)
    p.add_argument("--step-size-pixel", type=_positive_float)
    p.add_argument("--semantic", action="store_true", help="write h(z_K) instead of x_T")
    p.add_argument("--out", required=True, help="PNG file")
    p.add_argument("--npz", help="also write the samples, shape (N, C, H, W) in [-1, 1]")
    p.add_argument("--device", default="auto")
    p.add_argument("--progress", choices=PROGRESS_MODES, default="auto",
                   help="auto: a bar when stderr is a terminal")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("score", help="OOD scores (-U^c) of image files as JSON")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--sigma", type=_positive_float)
    p.add_argument("--draws", type=_positive_int)
    p.add_argument("--seed", type=_non_negative_int)
    p.add_argument("--max-pixels", type=_positive_int, default=4096 * 4096)
    p.add_argument("--device", default="auto")
    p.add_argument("images", nargs="+")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("calibrate", help="attach held-out score quantiles to a checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--dataset", help="defaults to the checkpoint's training set")
    p.add_argument("--score", choices=SCORES,
                   help="switch the checkpoint's OOD score first (scoring.score): texture is "
                        "the paper's -U^c; texture+semantic adds the semantic reconstruction "
                        "reading (docs/RESULTS.md)")
    p.add_argument("--semantic-sigma", type=_positive_float,
                   help="scoring.semantic_sigma, the level of the semantic reading")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("export", help="copy a checkpoint without its training state "
                                      "(for serving or shipping)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("set-sampler", help="change a checkpoint's generation defaults in "
                                           "place (config.sampler; weights untouched)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("settings", nargs="+", metavar="NAME=VALUE",
                   help="e.g. steps_latent=30 temperature_latent=0.3")
    p.set_defaults(func=cmd_set_sampler)

    p = sub.add_parser("fit-prior", help="fit where latent chains start (a Gaussian mixture "
                                         "over the training images' latents) and use it")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--components", type=_positive_int, nargs="+",
                   help="mixture sizes to try (default 1 5 10 20 40; the best on held-back "
                        "training latents is kept)")
    p.add_argument("--keep-defaults", action="store_true",
                   help="store the prior but leave sampler.latent_init as it is")
    p.set_defaults(func=cmd_fit_prior)

    p = sub.add_parser("eval-ood", help="AUROC / AUPR-in / FPR95 against OOD sets")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--baseline", help="DAE-only checkpoint (default: the checkpoint's recorded "
                                      "warm-up checkpoint, if any)")
    p.add_argument("--per-set", type=_positive_int, default=500)
    p.add_argument("--seed", type=_non_negative_int, default=0)
    p.add_argument("--sets", nargs="*", help="built-in OOD sets to use (default: all; none "
                   "with an empty list)")
    p.add_argument("--ood-data", action="append", metavar="NAME=DATASET",
                   help="an OOD set from any dataset spec (CIFAR-10/100 folder, SVHN .mat, "
                   "image folder, .zip, .npz); repeat for several, e.g. svhn=~/test_32x32.mat")
    p.add_argument("--json")
    p.add_argument("--device", default="auto")
    p.add_argument("--progress", choices=PROGRESS_MODES, default="auto")
    p.set_defaults(func=cmd_eval_ood)

    p = sub.add_parser("eval-samples", help="sample quality in a classifier's feature space")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--n", type=_positive_int, default=128,
                   help="samples per row; compare FD only at equal n")
    p.add_argument("--seed", type=_non_negative_int, default=0)
    p.add_argument("--rows", nargs="*", help="subset of rows to compute")
    p.add_argument("--grids", help="directory for one PNG grid per row")
    p.add_argument("--classifier-cache", help="where the feature classifier is cached")
    p.add_argument("--json")
    p.add_argument("--device", default="auto")
    p.add_argument("--progress", choices=PROGRESS_MODES, default="auto")
    p.set_defaults(func=cmd_eval_samples)

    p = sub.add_parser("serve", help="run the API with an embedded worker (no Redis needed)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_positive_int, default=8000)
    p.add_argument("--data-dir", help="default: $DEBM_DATA_DIR or ./var/debm")
    p.set_defaults(func=cmd_serve)

    from .remote import add_parser as add_remote

    add_remote(sub, _positive_int, _non_negative_int)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "remote":  # a client-only install has no torch: no model imports
        return _main_remote(args)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"debm {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        message = user_message(exc)
        if message is None and isinstance(exc, (FileNotFoundError, PermissionError,
                                                IsADirectoryError, Cancelled)):
            # Every path on the command line comes from the user, so a missing or unreadable
            # file is their error here (inside a worker it would be a bug).
            message = str(exc) or type(exc).__name__
        if message is None:
            raise  # a bug: the traceback is for us
        print(f"debm {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE


def _main_remote(args: argparse.Namespace) -> int:
    from .client import DebmError
    from .remote import RemoteError

    try:
        return args.func(args)
    except (RemoteError, DebmError, UserError, OSError) as exc:
        print(f"debm remote {args.remote_command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"debm remote {args.remote_command}: interrupted (a queued or running job "
              "goes on; `debm remote cancel JOB_ID` stops it)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
