"""`debm remote ...`: the service from the command line, through debm.client.

    debm remote generate --n 16 --out grid.png        # progress bar fed by the event stream
    debm remote score examples/digit-7.png examples/photo.jpg
    debm remote train --dataset examples/digits.zip --preset tiny --name mine --out-dir runs/mine
    debm remote jobs [--kind train] [--all]
    debm remote models
    debm remote models add mine exported/ [--default]   # a `debm export` folder, packed as tar
    debm remote default mine 2
    debm remote cancel JOB_ID

The service is --url (or $DEBM_URL, default http://127.0.0.1:8000); the key comes from
$DEBM_API_KEY or the file --key-file (default $DEBM_API_KEY_FILE, else the key `debm serve`
generates in its data directory, $DEBM_DATA_DIR or var/debm): never from the command line,
where other users and shell histories would see it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path
from typing import Any

from core.datadir import DataDir
from core.jobs.records import KINDS, STATUSES
from model.formats.config import SAMPLER_NAMES
from model.formats.presets import PRESETS
from model.formats.settingspec import parse_set

from .progress import MODES, StepProgress

DEFAULT_URL = "http://127.0.0.1:8000"


def default_key_file() -> Path:
    """The key `debm serve` generates, in its data directory (core.datadir names the file)."""
    return DataDir(Path(os.environ.get("DEBM_DATA_DIR") or "var/debm")).api_key_file


class RemoteError(Exception):
    """A user error of `debm remote` (exit 2, one line)."""


def _key(args: argparse.Namespace) -> str:
    key = os.environ.get("DEBM_API_KEY", "").strip()
    if key:
        return key
    path = Path(args.key_file or os.environ.get("DEBM_API_KEY_FILE") or default_key_file())
    try:
        key = path.read_text().strip()
    except OSError as exc:
        raise RemoteError(f"no API key: set DEBM_API_KEY or --key-file ({path}: "
                          f"{exc.strerror or exc})") from None
    if not key:
        raise RemoteError(f"no API key: {path} is empty")
    return key


def _client(args: argparse.Namespace):
    from .client import Client

    return Client(args.url, _key(args), timeout=args.timeout)


def _emit(value: Any) -> None:
    print(json.dumps(value, default=str))


def follow(api, job_id: str, progress: StepProgress, *, previews: Path | None = None,
           grids: Path | None = None) -> dict:
    """Feed ``progress`` from the job's event stream until its end event; save generation
    previews into ``previews`` and training sample grids into ``grids``.  Returns the end
    event's data (status, error, result_url)."""
    postfix: dict[str, Any] = {}
    for event in api.events(job_id):
        data = event.data
        if event.event == "progress":
            progress.update(int(data.get("step") or 0), data.get("total"),
                            stage=data.get("stage"), eta=_eta(data.get("eta_seconds")),
                            **postfix)
        elif event.event == "metrics":
            losses = data.get("losses") or {}
            postfix = {k: data.get(k) if k in data else losses.get(k)
                       for k in ("dae", "data_energy", "negative_energy")
                       if data.get(k) is not None or losses.get(k) is not None}
        elif event.event == "preview" and previews is not None and event.image is not None:
            previews.mkdir(parents=True, exist_ok=True)
            event.image.save(previews / f"preview-{int(data.get('step', 0)):06d}.png")
        elif event.event == "grid" and grids is not None and data.get("url"):
            grids.mkdir(parents=True, exist_ok=True)
            response = api.http.get(data["url"])
            if response.status_code == 200:
                (grids / Path(data["url"]).name).write_bytes(response.content)
                progress.note(f"sample grid at step {data.get('step')}: "
                              f"{grids / Path(data['url']).name}")
        elif event.event == "queue":  # while queued: its place (GET /jobs/{id} "queue")
            wait = data.get("estimated_wait_seconds")
            progress.note(f"queued: position {data.get('position')} in {data.get('queue')}"
                          + (f", starts in ~{_eta(wait)} (estimate)" if wait is not None
                             else ""))
        elif event.event == "end":
            progress.close()
            return data
    progress.close()
    return {}


def _eta(seconds: Any) -> str | None:
    if not isinstance(seconds, (int, float)):
        return None
    return str(datetime.timedelta(seconds=int(seconds)))


def _finish(api, job_id: str, end: dict) -> None:
    job = api.job(job_id)
    if job.status != "succeeded":
        reason = f": {job.error}" if job.error else ""
        raise RemoteError(f"job {job_id} {job.status}{reason}")


# --- commands ------------------------------------------------------------------------------

def cmd_generate(args: argparse.Namespace) -> int:
    with _client(args) as api:
        job = api.generate(n=args.n, seed=args.seed, sampler=args.sampler,
                           steps_latent=args.steps_latent, steps_pixel=args.steps_pixel,
                           model=args.model, wait=False)
        if args.no_wait:
            _emit({"job_id": job.job_id, "status": job.status})
            return 0
        end = follow(api, job.job_id, StepProgress(args.progress, label="generate"),
                     previews=Path(args.previews) if args.previews else None)
        _finish(api, job.job_id, end)
        out = api.result(job.job_id)
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        out.grid.save(path)
        if args.samples_dir:
            folder = Path(args.samples_dir)
            folder.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(out.images):
                image.save(folder / f"sample-{i:03d}.png")
        _emit({"job_id": job.job_id, "out": str(path), "model": out.model, "n": out.n,
               "seed": out.seed, "sampler": out.sampler, "steps": out.steps})
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    for name in args.images:
        if not Path(name).is_file():
            raise RemoteError(f"{name}: no such file")
    with _client(args) as api:
        scores = api.score(args.images, model=args.model)
    _emit([{"file": path, "score": r.score, "percentile": r.percentile, "is_ood": r.is_ood}
           for path, r in zip(args.images, scores.results)])
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    overrides = parse_set(args.set or [])
    with _client(args) as api:
        dataset = args.dataset
        if Path(dataset).is_file():  # a local zip / npz: upload it first
            info = api.upload_dataset(dataset)
            print(f"uploaded {dataset} as {info.dataset_id} ({info.count} images)",
                  file=sys.stderr)
            dataset = info.dataset_id
        job = api.train(dataset, preset=args.preset, overrides=overrides, seed=args.seed,
                        name=args.name)
        if args.no_wait:
            _emit({"job_id": job.job_id, "status": job.status})
            return 0
        out_dir = Path(args.out_dir) if args.out_dir else None
        end = follow(api, job.job_id, StepProgress(args.progress, label="train"),
                     grids=out_dir / "grids" if out_dir else None)
        _finish(api, job.job_id, end)
        result = api.result(job.job_id)
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "history.json").write_text(json.dumps(result.history, indent=1))
        _emit({"job_id": job.job_id, "model": result.model, "version": result.version,
               "step": result.step, "calibrated": result.calibrated,
               "grids": result.grids})
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    with _client(args) as api:
        jobs = api.jobs(kind=args.kind, status=args.status, limit=args.limit, all=args.all)
    if args.json:
        _emit([j.__dict__ for j in jobs])
        return 0
    print(f"{'job_id':32}  {'kind':8}  {'status':9}  {'progress':8}  {'model':14}  created")
    for j in jobs:
        fraction = (j.progress or {}).get("fraction")
        done = f"{100 * fraction:.0f}%" if isinstance(fraction, (int, float)) else "-"
        created = datetime.datetime.fromtimestamp(j.created).strftime("%Y-%m-%d %H:%M:%S")
        print(f"{j.job_id:32}  {j.kind:8}  {j.status:9}  {done:8}  {j.model or '-':14}  "
              f"{created}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    with _client(args) as api:
        models = api.models()
    if args.json:
        _emit({"default_model": models.default_model,
               "models": [{"name": m.name, "default_version": m.default_version,
                           "versions": [v.__dict__ for v in m.versions]}
                          for m in models.models]})
        return 0
    for m in models.models:
        star = " (default model)" if m.name == models.default_model else ""
        print(f"{m.name}{star}")
        for v in m.versions:
            mark = "*" if v.version == m.default_version else " "
            print(f"  {mark} {v.version:<4} step {v.step!s:<7} {v.preset or '-':6} "
                  f"{'calibrated' if v.calibrated else 'uncalibrated':12} {v.created or ''}")
    return 0


def cmd_models_add(args: argparse.Namespace) -> int:
    """Pack the exported checkpoint folder as a tar and register it (admin key)."""
    if not Path(args.directory).is_dir():
        raise RemoteError(f"{args.directory}: no such folder (give the folder `debm export` "
                          "wrote)")
    with _client(args) as api:
        version = api.add_model_version(args.name, args.directory, make_default=args.default)
    _emit({"name": args.name, **version.__dict__})
    return 0


def cmd_default(args: argparse.Namespace) -> int:
    with _client(args) as api:
        model = api.set_default(args.name, args.version)
    _emit({"name": model.name, "default_version": model.default_version})
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from .client.flows import checked_job_id

    for job_id in args.job_ids:  # every id checked before anything is cancelled
        checked_job_id(job_id)
    with _client(args) as api:
        for job_id in args.job_ids:
            job = api.cancel(job_id)
            _emit({"job_id": job.job_id, "status": job.status,
                   "cancel_requested": job.cancel_requested})
    return 0


def cmd_webhook_secret(args: argparse.Namespace) -> int:
    with _client(args) as api:
        # stdout only: a secret goes where the operator redirects it, never into a log
        print(api.webhook_secret(args.key_id))
    return 0


# --- parser --------------------------------------------------------------------------------

def _common_options() -> argparse.ArgumentParser:
    """--url, --key-file, --timeout and --progress, shared by every remote command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("DEBM_URL", DEFAULT_URL),
                        help=f"the service ($DEBM_URL, default {DEFAULT_URL})")
    common.add_argument("--key-file", help="file holding the API key (default "
                                           "$DEBM_API_KEY_FILE, else the key `debm serve` "
                                           "generated; $DEBM_API_KEY wins)")
    common.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for each HTTP answer")
    common.add_argument("--progress", choices=MODES, default="auto",
                        help="auto: a bar on a terminal, nothing otherwise")
    return common


def _add_generate(rsub, common, positive_int, non_negative_int) -> None:
    p = rsub.add_parser("generate", parents=[common], help="generate samples into a PNG grid")
    p.add_argument("--n", type=positive_int, default=16, help="number of samples")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the chains")
    p.add_argument("--sampler", choices=SAMPLER_NAMES, default="two_stage",
                   help="the chains to run (default two_stage, the paper's)")
    p.add_argument("--steps-latent", type=non_negative_int,
                   help="K, latent steps (default the model's)")
    p.add_argument("--steps-pixel", type=non_negative_int,
                   help="T, pixel steps (default the model's)")
    p.add_argument("--model", help="name or name:version (default the service's default)")
    p.add_argument("--out", default="grid.png", help="PNG file of the grid")
    p.add_argument("--samples-dir", help="also save every sample as a PNG here")
    p.add_argument("--previews", help="save the live chain previews here")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return")
    p.set_defaults(func=cmd_generate)


def _add_score_and_train(rsub, common, non_negative_int) -> None:
    p = rsub.add_parser("score", parents=[common], help="OOD scores of image files")
    p.add_argument("--model", help="name or name:version (default the service's default)")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, WebP, ...)")
    p.set_defaults(func=cmd_score)

    p = rsub.add_parser("train", parents=[common], help="train a model version (admin key)")
    p.add_argument("--dataset", required=True,
                   help="mnist5k, digits8x8, a ds_... id, or a local .zip/.npz to upload")
    p.add_argument("--preset", choices=PRESETS, default="demo",
                   help="the named config the overrides start from")
    p.add_argument("--set", nargs="*", metavar="SECTION.NAME=VALUE",
                   help="override config values, e.g. training.iterations=50 "
                        "(docs/CONFIG.md)")
    p.add_argument("--seed", type=non_negative_int, help="training.seed")
    p.add_argument("--name", default="custom",
                   help="the model name the finished job registers a version of")
    p.add_argument("--out-dir", help="save the sample grids and the metric history here")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return")
    p.set_defaults(func=cmd_train)


def _add_listing(rsub, common, positive_int) -> None:
    p = rsub.add_parser("jobs", parents=[common], help="list jobs, newest first")
    p.add_argument("--kind", choices=KINDS, help="only jobs of this kind")
    p.add_argument("--status", choices=STATUSES, help="only jobs in this state")
    p.add_argument("--limit", type=positive_int, default=20, help="at most this many jobs")
    p.add_argument("--all", action="store_true", help="every key's jobs (admin)")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.set_defaults(func=cmd_jobs)

    p = rsub.add_parser("models", parents=[common], help="models, versions and defaults; "
                                                         "`models add` registers a checkpoint")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.set_defaults(func=cmd_models)
    msub = p.add_subparsers(dest="models_command")
    add = msub.add_parser("add", parents=[common],
                          help="register an exported checkpoint folder as the next version "
                               "of NAME (admin key)")
    add.add_argument("name", help="model name (letters, digits, _.-)")
    add.add_argument("directory", help="the folder `debm export` wrote")
    add.add_argument("--default", action="store_true",
                     help="also make it the default version of NAME")
    add.set_defaults(func=cmd_models_add)

    p = rsub.add_parser("default", parents=[common], help="set a model's default version "
                                                          "(admin)")
    p.add_argument("name", help="model name")
    p.add_argument("version", type=positive_int, help="the version to serve by default")
    p.set_defaults(func=cmd_default)

    p = rsub.add_parser("cancel", parents=[common], help="cancel jobs")
    p.add_argument("job_ids", nargs="+", help="ids of the jobs to cancel")
    p.set_defaults(func=cmd_cancel)

    p = rsub.add_parser("webhook-secret", parents=[common],
                        help="issue or rotate an API key's own webhook secret (admin)")
    p.add_argument("key_id", help="the key's name (GET /session shows yours)")
    p.set_defaults(func=cmd_webhook_secret)


def add_parser(sub, positive_int, non_negative_int) -> None:
    """`debm remote` and its commands, under the `debm` parser's subcommands ``sub``."""
    remote = sub.add_parser("remote", help="use a running service (debm.client)")
    common = _common_options()
    rsub = remote.add_subparsers(dest="remote_command", required=True)
    _add_generate(rsub, common, positive_int, non_negative_int)
    _add_score_and_train(rsub, common, non_negative_int)
    _add_listing(rsub, common, positive_int)
