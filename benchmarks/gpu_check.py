"""One check of the whole stack on a CUDA GPU, sized for at most 8 minutes (not yet run on one).

    python benchmarks/gpu_check.py --device cuda --json gpu_check.json \
        [--data ~/cifar-10-batches-py]

1. the model tests on the device (DEBM_TEST_DEVICE=cuda pytest tests/model);
2. 200 Algorithm 1 iterations of the `paper` preset on CIFAR-shaped data (a CIFAR-10 folder
   with --data, else random 32x32x3 images), with iterations per second, and 50 more under
   bf16 autocast (training.precision);
3. 64 two-stage samples at the paper's K=20, T=90, timed in float32 and under bf16 autocast
   (the paper: 8.67 s for 64 samples, against 120.11 s for NCSN);
4. OOD scoring throughput in images per second;
5. the worker's task bodies for one generate and one score job, called directly against a
   SQLite job store and a model registry in a temporary data directory (no Redis, no Celery).

Every number must be finite, and the same seed must give the same samples and the same
training steps (checked by running them twice).  It prints a table, writes one JSON file and
exits 1 if a check fails.  ``--device cpu --small`` runs the same code at toy sizes in a
minute (tests/benchmarks/test_gpu_check.py runs it in CI so that it cannot rot).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

from model.formats.config import ExperimentConfig
from model.formats.presets import preset
from model.data import ImageDataset, load_dataset
from model.energies import texture_score
from model.samplers import sample, with_overrides
from model.training import Trainer

PAPER_SECONDS_64 = 8.67  # paper: 64 two-stage samples at K=20, T=90
NCSN_SECONDS_64 = 120.11


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def check_config(small: bool) -> ExperimentConfig:
    config = preset("paper")
    if small:  # CPU CI: the paper's algorithm on a toy network, same code paths
        config = config.replace(
            network={"base_width": 16, "channel_mults": [1, 2], "blocks_per_level": 1,
                     "latent_dim": 16, "decoder_width": 16, "embedding_dim": 16,
                     "groups": 8},
            training={"batch_size": 8, "chain_batch_size": 8, "steps_latent": 2,
                      "steps_pixel": 3},
            sampler={"steps_latent": 2, "steps_pixel": 3})
    return config.replace(training={"warmup_steps": 0, "checkpoint_every": 0})


def cifar_shaped(data: str | None, n: int, seed: int) -> ImageDataset:
    if data:
        return load_dataset(data, image_size=32, channels=3)
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8))
    return ImageDataset(images, None, "random-32x32x3")


def state_hash(model: torch.nn.Module) -> torch.Tensor:
    return torch.stack([p.detach().double().sum() for p in model.parameters()])


# --- the checks ----------------------------------------------------------------------------

def run_model_tests(device: torch.device, timeout: int) -> dict:
    env = {**os.environ, "DEBM_TEST_DEVICE": str(device), "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "tests/model",
                           "-p", "no:cacheprovider"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or [""]
    return {"passed": done.returncode == 0, "summary": tail[0],
            "seconds": round(time.perf_counter() - start, 1)}


def run_training_check(config: ExperimentConfig, dataset: ImageDataset, device: torch.device,
                       iterations: int) -> tuple[dict, Trainer]:
    trainer = Trainer(config, dataset, device=device)
    losses = []
    trainer.train_step()  # first step pays for CUDA context and kernel selection
    _, seconds = timed(device, lambda: [losses.append(trainer.train_step().losses)
                                        for _ in range(iterations)])
    finite = all(math.isfinite(v) for step in losses for v in step.values())
    # Same seed, same steps: two fresh trainers, two steps each.
    twins = []
    for _ in range(2):
        t = Trainer(config, dataset, device=device)
        t.train_step()
        t.train_step()
        twins.append(state_hash(t.model))
    repro = float((twins[0] - twins[1]).abs().max())
    return {"iterations": iterations, "seconds": round(seconds, 2),
            "it_per_s": round(iterations / seconds, 3), "finite": finite,
            "repro_max_diff": repro, "last_losses": losses[-1] if losses else {},
            "parameters": trainer.model.parameter_count()}, trainer


def run_sampling_check(trainer: Trainer, n: int, device: torch.device) -> dict:
    model, config = trainer.model, trainer.config
    out: dict = {"n": n, "K": config.sampler.steps_latent, "T": config.sampler.steps_pixel}
    for precision in ("float32", "bfloat16"):
        settings = with_overrides(config.sampler, precision=precision)

        def draw():
            return sample(model, sampler="two_stage", n=n, seed=0, settings=settings,
                          noise=config.noise)

        draw()  # warm-up
        first, seconds = timed(device, draw)
        second = draw()
        out[precision] = {
            "seconds": round(seconds, 3),
            "finite": bool(torch.isfinite(first.images).all()),
            "repro_max_diff": float((first.images - second.images).abs().max()),
        }
    out["bf16_speedup"] = round(out["float32"]["seconds"] / out["bfloat16"]["seconds"], 2)
    return out


def run_scoring_check(trainer: Trainer, n: int, device: torch.device) -> dict:
    scoring = trainer.config.scoring
    g = torch.Generator(device=device).manual_seed(0)
    net = trainer.config.network
    x = torch.rand((n, net.channels, net.image_size, net.image_size), generator=g,
                   device=device) * 2 - 1
    trainer.model.eval()

    def score():
        return texture_score(trainer.model.dae, x, sigma=scoring.sigma, draws=scoring.draws,
                             seed=scoring.seed)

    score()
    first, seconds = timed(device, score)
    return {"images": n, "draws": scoring.draws, "seconds": round(seconds, 3),
            "images_per_s": round(n / seconds, 1), "finite": bool(torch.isfinite(first).all()),
            "repro_max_diff": float((first - score()).abs().max())}


def _worker_api():
    """The worker's task bodies and runtime, before or after the worker/ reorganisation."""
    try:
        from worker.handlers import run_generate, run_score  # type: ignore
    except ImportError:
        from worker.tasks import run_generate, run_score
    try:
        from worker.runtime import Reporter, TaskRuntime  # type: ignore
    except ImportError:
        from worker.tasks import Reporter, TaskRuntime
    try:
        from core.jobs import JobRecord  # type: ignore
        from core.settings import Settings  # type: ignore
    except ImportError:
        from service.jobs import JobRecord
        from service.settings import Settings
    return run_generate, run_score, Reporter, TaskRuntime, JobRecord, Settings


def run_worker_check(trainer: Trainer, device: torch.device, n: int) -> dict:
    from model.checkpoints import save_checkpoint

    run_generate, run_score, Reporter, TaskRuntime, JobRecord, Settings = _worker_api()
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(Path(tmp) / "ckpt", model=trainer.model, config=trainer.config,
                        step=trainer.step, metadata={"source": "gpu_check"})
        settings = Settings(data_dir=Path(tmp) / "data", redis_url=None, device=str(device),
                            seed_checkpoint=None, api_keys="gpu:0123456789abcdef0123")
        runtime = TaskRuntime.create(settings)
        runtime.registry.register("check", Path(tmp) / "ckpt")
        out = {}

        def job(kind: str, params: dict):
            record = runtime.store.create(JobRecord(id=uuid.uuid4().hex, kind=kind,
                                                    owner="gpu-check", params=params))
            return record, Reporter(runtime.store, record.id, interval=0.0)

        record, report = job("generate", {"model_name": "check", "model_version": 1, "n": n,
                                          "seed": 0})
        result, seconds = timed(device, lambda: run_generate(runtime, record, report,
                                                              lambda: False))
        images = [runtime.data.inside(p) for p in result["samples"]]
        out["generate"] = {"seconds": round(seconds, 3), "samples": len(images),
                           "ok": len(images) == n and all(p.stat().st_size > 0
                                                          for p in images)}
        record, report = job("score", {"model_name": "check", "model_version": 1})
        upload = runtime.data.upload_dir(record.id)
        upload.mkdir(parents=True, exist_ok=True)
        files = []
        pngs = [p.read_bytes() for p in images[:4]]
        for i, png in enumerate(pngs):
            path = upload / f"img-{i}.png"
            path.write_bytes(png)
            files.append({"path": runtime.data.relative(path), "filename": path.name})
        record.params["files"] = files
        result, seconds = timed(device, lambda: run_score(runtime, record, report,
                                                           lambda: False))
        scores = [r["score"] for r in result["results"]]
        out["score"] = {"seconds": round(seconds, 3), "images": len(scores),
                        "ok": len(scores) == len(pngs) and all(map(math.isfinite, scores))}
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--data", help="a CIFAR-10 batch folder (default: random images)")
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--bf16-iters", type=int, default=50,
                        help="iterations timed again under bf16 autocast")
    parser.add_argument("--n", type=int, default=64, help="samples per timed generation")
    parser.add_argument("--score-n", type=int, default=1024)
    parser.add_argument("--small", action="store_true", help="toy sizes (CPU CI)")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--test-timeout", type=int, default=240)
    parser.add_argument("--json", default="gpu_check.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device; run with --device cpu --small for the CPU version")
        return 2
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False  # the same kernels run to run
        torch.backends.cudnn.deterministic = True
    report: dict = {"device": str(device), "torch": torch.__version__,
                    "python": platform.python_version(), "small": args.small,
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    if not args.skip_tests:
        report["model_tests"] = run_model_tests(device, args.test_timeout)
    config = check_config(args.small)
    dataset = cifar_shaped(args.data, 512 if args.small else 10_000, seed=0)
    report["data"] = dataset.name
    report["training"], trainer = run_training_check(config, dataset, device, args.iters)
    report["training_bf16"], _ = run_training_check(
        config.replace(training={"precision": "bfloat16"}), dataset, device, args.bf16_iters)
    report["sampling"] = run_sampling_check(trainer, args.n, device)
    report["scoring"] = run_scoring_check(trainer, args.score_n, device)
    report["worker"] = run_worker_check(trainer, device, min(args.n, 8))

    report["checks"] = checks = pass_fail(report, tol=0.0 if device.type == "cpu" else 1e-5)
    report["passed"] = all(checks.values())
    Path(args.json).write_text(json.dumps(report, indent=2, default=float))
    print_table(report, args, device)
    print(f"wrote {args.json}; {'all checks passed' if report['passed'] else 'CHECKS FAILED'}")
    return 0 if report["passed"] else 1


def pass_fail(report: dict, *, tol: float) -> dict[str, bool]:
    """Each check of the report, by name: True when it passed."""
    return {
        "model tests pass": report.get("model_tests", {}).get("passed", True),
        "training finite": report["training"]["finite"],
        "training seeds reproduce": report["training"]["repro_max_diff"] <= tol,
        "bf16 training finite": report["training_bf16"]["finite"],
        "fp32 samples finite": report["sampling"]["float32"]["finite"],
        "bf16 samples finite": report["sampling"]["bfloat16"]["finite"],
        "fp32 seeds reproduce": report["sampling"]["float32"]["repro_max_diff"] <= tol,
        "bf16 seeds reproduce": report["sampling"]["bfloat16"]["repro_max_diff"] <= tol,
        "scores finite": report["scoring"]["finite"],
        "scores reproduce": report["scoring"]["repro_max_diff"] <= tol,
        "worker generate": report["worker"]["generate"]["ok"],
        "worker score": report["worker"]["score"]["ok"],
    }


def print_table(report: dict, args: argparse.Namespace, device: torch.device) -> None:
    checks, s = report["checks"], report["sampling"]
    rows = [
        ("device", report["gpu"] or str(device), ""),
        ("model tests", report.get("model_tests", {}).get("summary", "skipped"), ""),
        (f"paper training, {args.iters} it", f"{report['training']['it_per_s']} it/s",
         f"{report['training']['seconds']} s"),
        (f"paper training bf16, {args.bf16_iters} it",
         f"{report['training_bf16']['it_per_s']} it/s", ""),
        (f"{s['n']} samples K={s['K']} T={s['T']} fp32", f"{s['float32']['seconds']} s",
         f"paper {PAPER_SECONDS_64} s, NCSN {NCSN_SECONDS_64} s (64 samples)"),
        (f"{s['n']} samples bf16 autocast", f"{s['bfloat16']['seconds']} s",
         f"x{s['bf16_speedup']} vs fp32"),
        ("scoring", f"{report['scoring']['images_per_s']} img/s",
         f"{report['scoring']['draws']} draws per image"),
        ("worker generate / score", f"{report['worker']['generate']['seconds']} s / "
         f"{report['worker']['score']['seconds']} s", ""),
    ] + [(name, "ok" if ok else "FAILED", "") for name, ok in checks.items()]
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:<28} {note}")


if __name__ == "__main__":
    sys.exit(main())
