"""The ``debm`` command line: train, sample, score, calibrate, evaluate and serve.

This module builds the parser (one ``add_X`` per command, every option with its help) and
runs a command; the local commands live in debm/commands.py, `debm remote` in debm/remote.py.
Every failure the user can cause (missing file, non-image, wrong checkpoint, bad value) ends
with exit code 2 and one line on stderr; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from model.formats.config import SAMPLER_NAMES, SCORES
from model.formats.errors import Cancelled, UserError, user_message
from model.formats.presets import PRESETS

from .commands import (CliError, cmd_calibrate, cmd_eval_ood, cmd_eval_samples, cmd_export,
                       cmd_fit_prior, cmd_sample, cmd_score, cmd_serve, cmd_set_sampler,
                       cmd_train)

__all__ = ["CliError", "build_parser", "main"]

EXIT_USAGE = 2


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


# --- parser: one add_parser per command ------------------------------------------------------

DEVICE_HELP = "auto (CUDA when available, else CPU), cpu, cuda or cuda:N"
CHECKPOINT_HELP = "checkpoint directory (a training run's --out, or an export)"


def _progress_option(p: argparse.ArgumentParser) -> None:
    from .progress import MODES

    p.add_argument("--progress", choices=MODES, default="auto",
                   help="auto: a bar when stderr is a terminal, nothing otherwise")


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train with Algorithm 1")
    p.add_argument("--dataset", required=True,
                   help="mnist5k, digits8x8, or a local folder / .zip / .npz / CIFAR-10 "
                        "batch folder / SVHN .mat")
    p.add_argument("--preset", choices=PRESETS, default="demo",
                   help="the named config to start from (docs/CONFIG.md lists every setting)")
    p.add_argument("--iters", type=_non_negative_int, help="contrastive iterations")
    p.add_argument("--warmup", type=_non_negative_int, help="reconstruction-only steps")
    p.add_argument("--seed", type=_non_negative_int, help="training.seed (default the preset's)")
    p.add_argument("--out", required=True, help="checkpoint directory")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    p.add_argument("--nproc", type=_positive_int, default=1,
                   help="data-parallel processes (one per GPU; gloo on CPU), same total batch")
    p.add_argument("--init-from", help="start from another run's checkpoint (same network): its "
                                       "weights, optimizer, RNG and step, or only its weights "
                                       "if it was exported")
    p.add_argument("--set", nargs="*", metavar="SECTION.NAME=VALUE",
                   help="override config values, e.g. training.lr=1e-4 (docs/CONFIG.md)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    _progress_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress at all")
    p.set_defaults(func=cmd_train)


def add_sample(sub) -> None:
    p = sub.add_parser("sample", help="draw samples into a PNG grid")
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--n", type=_positive_int, default=64, help="number of samples")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the chains")
    p.add_argument("--sampler", choices=SAMPLER_NAMES, default="two_stage",
                   help="the chains to run (default two_stage, the paper's)")
    p.add_argument("--steps-latent", type=_non_negative_int,
                   help="K, latent steps (default the checkpoint's sampler.steps_latent)")
    p.add_argument("--steps-pixel", type=_non_negative_int,
                   help="T, pixel steps (default the checkpoint's sampler.steps_pixel)")
    p.add_argument("--step-size-latent", type=_positive_float, help="eta1 (default the "
                   "checkpoint's)")
    p.add_argument("--step-size-pixel", type=_positive_float, help="eta2 (default the "
                   "checkpoint's)")
    p.add_argument("--semantic", action="store_true", help="write h(z_K) instead of x_T")
    p.add_argument("--out", required=True, help="PNG file")
    p.add_argument("--npz", help="also write the samples, shape (N, C, H, W) in [-1, 1]")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    _progress_option(p)
    p.set_defaults(func=cmd_sample)


def add_score(sub) -> None:
    p = sub.add_parser("score", help="OOD scores (-U^c) of image files as JSON")
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--sigma", type=_positive_float, help="noise level (default the "
                   "checkpoint's scoring.sigma)")
    p.add_argument("--draws", type=_positive_int, help="noise draws averaged per image "
                   "(default the checkpoint's scoring.draws)")
    p.add_argument("--seed", type=_non_negative_int, help="seed of the scoring noise "
                   "(default the checkpoint's scoring.seed)")
    p.add_argument("--max-pixels", type=_positive_int, default=4096 * 4096,
                   help="refuse larger images (decompression bombs)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, WebP, ...)")
    p.set_defaults(func=cmd_score)


def add_calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="attach held-out score quantiles to a checkpoint")
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--dataset", help="defaults to the checkpoint's training set")
    p.add_argument("--score", choices=SCORES,
                   help="switch the checkpoint's OOD score first (scoring.score): texture is "
                        "the paper's -U^c; texture+semantic adds the semantic reconstruction "
                        "reading (docs/RESULTS.md)")
    p.add_argument("--semantic-sigma", type=_positive_float,
                   help="scoring.semantic_sigma, the level of the semantic reading")
    p.set_defaults(func=cmd_calibrate)


def add_export(sub) -> None:
    p = sub.add_parser("export", help="copy a checkpoint without its training state "
                                      "(for serving or shipping)")
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--out", required=True, help="directory of the exported checkpoint")
    p.set_defaults(func=cmd_export)


def _sampler_settings_help() -> str:
    """Every setting set-sampler accepts, from its one declaration (docs/CONFIG.md)."""
    from model.formats.config import SamplerConfig
    from model.formats.settingspec import field_specs, type_name

    lines = []
    for name, hint, spec, _ in field_specs(SamplerConfig):
        bounds = f", {spec.bounds_text()}" if spec.bounds_text() else ""
        lines.append(f"  {name} ({type_name(hint)}{bounds}): {spec.meaning}")
    return "settings:\n" + "\n".join(lines)


def add_set_sampler(sub) -> None:
    p = sub.add_parser("set-sampler", help="change a checkpoint's generation defaults in "
                                           "place (config.sampler; weights untouched)",
                       epilog=_sampler_settings_help(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("settings", nargs="+", metavar="NAME=VALUE",
                   help="e.g. steps_latent=30 temperature_latent=0.3 (the list below)")
    p.set_defaults(func=cmd_set_sampler)


def add_fit_prior(sub) -> None:
    p = sub.add_parser("fit-prior", help="fit where latent chains start (a Gaussian mixture "
                                         "over the training images' latents) and use it")
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--components", type=_positive_int, nargs="+",
                   help="mixture sizes to try (default 1 5 10 20 40; the best on held-back "
                        "training latents is kept)")
    p.add_argument("--keep-defaults", action="store_true",
                   help="store the prior but leave sampler.latent_init as it is")
    p.set_defaults(func=cmd_fit_prior)


def _eval_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", help="also write the report as JSON to this file")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    _progress_option(p)


def add_eval_ood(sub) -> None:
    p = sub.add_parser("eval-ood", help="AUROC / AUPR-in / FPR95 against OOD sets (minutes)")
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--baseline", help="DAE-only checkpoint (default: the checkpoint's recorded "
                                      "warm-up checkpoint, if any)")
    p.add_argument("--per-set", type=_positive_int, default=500, help="images per OOD set")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the scoring "
                   "noise and of the sets' draws")
    p.add_argument("--sets", nargs="*", help="built-in OOD sets to use (default: all; none "
                   "with an empty list)")
    p.add_argument("--ood-data", action="append", metavar="NAME=DATASET",
                   help="an OOD set from any dataset spec (CIFAR-10/100 folder, SVHN .mat, "
                   "image folder, .zip, .npz); repeat for several, e.g. svhn=~/test_32x32.mat")
    _eval_options(p)
    p.set_defaults(func=cmd_eval_ood)


def add_eval_samples(sub) -> None:
    p = sub.add_parser("eval-samples", help="sample quality in a classifier's feature space "
                                            "(minutes)")
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--n", type=_positive_int, default=128,
                   help="samples per row; compare FD only at equal n")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the chains")
    p.add_argument("--rows", nargs="*", help="subset of rows to compute")
    p.add_argument("--grids", help="directory for one PNG grid per row")
    p.add_argument("--classifier-cache", help="where the feature classifier is cached")
    _eval_options(p)
    p.set_defaults(func=cmd_eval_samples)


def add_serve(sub) -> None:
    p = sub.add_parser("serve", help="run the API with an embedded worker (no Redis needed)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=_positive_int, default=8000, help="port to listen on")
    p.add_argument("--data-dir", help="default: $DEBM_DATA_DIR or ./var/debm")
    p.set_defaults(func=cmd_serve)


COMMANDS = (add_train, add_sample, add_score, add_calibrate, add_export, add_set_sampler,
            add_fit_prior, add_eval_ood, add_eval_samples, add_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="debm", description="Denoising-EBM: train, sample, "
                                     "score OOD, evaluate and serve.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    from .remote import add_parser as add_remote

    add_remote(sub, _positive_int, _non_negative_int)
    __import__("debm.keys").keys.add_parser(sub)  # debm keys add|list|revoke
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
