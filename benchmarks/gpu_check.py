"""One check of the whole stack on a CUDA GPU, planned to fit one lease (never run on a GPU yet).

    PYTHONPATH=. python benchmarks/gpu_check.py --device cuda --budget-seconds 420 \
        --json gpu_check.jsonl [--data ~/cifar-10-batches-py]

The steps run in order of value, and each one's JSON line is printed and appended to the
``--json`` file as it finishes, so a lease that ends early still leaves every figure so far:

  (a) device facts, and 5 Algorithm 1 iterations of the `paper` preset at batch 128 (CIFAR-10
      from --data, else random 32x32x3 images), timed in float32 and under bf16 autocast
      (training.precision), with one same-seed twin step that must reproduce;
  (b) the paper's timing claim as a ratio (benchmarks/paper_timing.py): 64 samples with
      35 latent + 100 pixel steps against NCSN-style annealed Langevin, 10 levels x 100 steps
      (Song & Ermon 2019, section 4.3), the same network; the paper: 8.67 s vs 120.11 s, 13.9x;
  (c) OOD scoring throughput, 1024 images in forwards of 256 rows, the `paper` score (one
      draw at sigma = 0.05), with a same-seed rerun that must reproduce;
  (d) the worker's generate and score task bodies, called directly against a SQLite job
      store and a model registry in a temporary data directory (no Redis, no Celery);
  (e) the model tests on the device (DEBM_TEST_DEVICE=cuda pytest tests/model), last, with
      whatever time is left (skipped under a minute).
The last line is a summary: every check, and whether all passed (exit 1 if not).

The estimate the budget is planned against (one H200; FLOPs counted with
torch.utils.flop_counter on the `paper` network: r_phi forward 7.5 GFLOP per 32x32x3 image,
h_gamma forward 3.2 GFLOP; an input gradient costs about one more forward):
  - one `paper` iteration at batch 128: 3 reconstruction steps (~12 TFLOP), 128 chains of
    20 latent steps (21 GFLOP each) and 90 pixel steps (15 GFLOP each) (~228 TFLOP), the
    contrastive updates (~14 TFLOP): ~254 TFLOP.  At 100-250 TFLOP/s sustained (TF32 or
    bf16 convolutions at 32x32, deterministic cuDNN kernels) that is 1-2.5 s, so (a)'s
    2 x (1 warm-up + 5 timed + 1 twin) iterations take ~15-35 s;
  - (b): two-stage 64 x (35 x 21 + 100 x 15) GFLOP = 144 TFLOP; annealed 64 x 1000 x 7.5
    GFLOP = 480 TFLOP (forwards only): ~5-10 s with warm-ups;
  - (c) ~8 TFLOP, (d) a checkpoint write and 8 samples: ~10 s together;
  - CUDA start-up and imports ~20 s.  About 100 s in all, which leaves ~300 s of the default
    420 for (e).
What it does when short of time: before each step it compares the time left with the step's
estimate, scaled by the iteration time (a) measured.  (a) stops timing once its share is
spent and says how many iterations ran; (b) always times a few steps first and runs the full
chains only if their extrapolated time fits, else reports the extrapolation as such; a step
that does not fit is written as ``{"skipped": reason}``; (e) gets the time left, minus a
margin, as its timeout.

``--device cpu --small`` runs the same code at toy sizes in a minute
(tests/benchmarks/test_gpu_check.py runs it in CI so that it cannot rot).
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from model.data import ImageDataset, load_dataset  # noqa: E402
from model.energies import texture_score  # noqa: E402
from model.formats.config import ExperimentConfig  # noqa: E402
from model.training import EnergyExplosion, Trainer  # noqa: E402
from paper_timing import time_two_stage_vs_annealed, timing_network  # noqa: E402

TRAIN_ITERS = 5
SCORE_ROWS = 256
# Seconds each step is planned at on one H200 (the docstring's estimate, rounded up).
PLANNED = {"a_training": 60, "b_paper_timing": 30, "c_scoring": 10, "d_worker": 30}
PLANNED_ITERATION_SECONDS = 2.5  # one `paper` iteration at batch 128, float32, upper estimate
MIN_TESTS_SECONDS = 60


class Budget:
    """Seconds left of ``--budget-seconds``, counted from the start of the process."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


class StepLog:
    """Prints each step's JSON and appends it to the output file the moment it finishes."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
        self.steps: dict[str, dict] = {}

    def write(self, name: str, record: dict) -> dict:
        record = {"step": name, **record}
        self.steps[name] = record
        line = json.dumps(record, default=float)
        print(line, flush=True)
        with self.path.open("a") as out:
            out.write(line + "\n")
        return record


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
    """The `paper` preset at batch 128 (toy network and chains with ``small``), with the
    EDM-preconditioned r of `paper-stable`: with the paper's plain r = F the unclipped chains
    of a random-init model overflow in the first iteration (benchmarks/preconditioning.py,
    docs/RESULTS.md), and an iteration costs the same either way (three elementwise ops)."""
    config = timing_network(small).replace(network={"preconditioning": "edm"})
    if small:  # CPU CI: the paper's algorithm on a toy network, same code paths
        config = config.replace(training={"batch_size": 8, "chain_batch_size": 8,
                                          "steps_latent": 2, "steps_pixel": 3},
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


def device_facts(device: torch.device) -> dict:
    facts = {"device": str(device), "torch": torch.__version__,
             "python": platform.python_version(), "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts.update(gpu=props.name, memory_gib=round(props.total_memory / 2 ** 30, 1),
                     cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                     capability=f"{props.major}.{props.minor}")
    return facts


# --- (a) training ---------------------------------------------------------------------------

def time_training(config: ExperimentConfig, dataset: ImageDataset, device: torch.device,
                  seconds_allowed: float) -> tuple[dict, Trainer]:
    """One warm-up iteration, then up to TRAIN_ITERS timed ones within ``seconds_allowed``,
    then a same-seed twin of the first iteration that must reproduce it."""
    trainer = Trainer(config, dataset, device=device)
    _, warm_seconds = timed(device, trainer.train_step)
    after_first = state_hash(trainer.model)
    losses, times, diverged = [], [], None
    for _ in range(TRAIN_ITERS):
        if sum(times) + warm_seconds > seconds_allowed:
            break
        try:
            metrics, seconds = timed(device, trainer.train_step)
        except EnergyExplosion as exc:  # a finding, with the iterations timed so far
            diverged = str(exc).split(";")[0]
            break
        losses.append(metrics.losses)
        times.append(seconds)
    twin = Trainer(config, dataset, device=device)
    twin.train_step()
    return {"precision": config.training.precision, "batch_size": config.training.batch_size,
            "warmup_iteration_seconds": round(warm_seconds, 3), "iterations": len(times),
            "seconds_per_iteration": round(sum(times) / len(times), 3) if times else None,
            "finite": diverged is None and all(math.isfinite(v) for step in losses
                                               for v in step.values()),
            "diverged": diverged,
            "repro_max_diff": float((state_hash(twin.model) - after_first).abs().max()),
            "last_losses": losses[-1] if losses else {}}, trainer


def step_a(config, dataset, device, budget: Budget) -> tuple[dict, Trainer]:
    share = min(PLANNED["a_training"], budget.left() / 3) / 2  # per precision
    fp32, trainer = time_training(config, dataset, device, share)
    bf16, _ = time_training(config.replace(training={"precision": "bfloat16"}), dataset,
                            device, share)
    record = {**device_facts(device), "data": dataset.name,
              "parameters": trainer.model.parameter_count(), "float32": fp32, "bfloat16": bf16}
    if fp32["seconds_per_iteration"] and bf16["seconds_per_iteration"]:
        record["bf16_speedup"] = round(fp32["seconds_per_iteration"]
                                       / bf16["seconds_per_iteration"], 2)
    return record, trainer


# --- (b) the timing claim ---------------------------------------------------------------------

def step_b(trainer: Trainer, device: torch.device, budget: Budget, small: bool) -> dict:
    """Extrapolate from 2 steps per stage; run both samplers in full when that fits."""
    model, config = trainer.model, trainer.config
    steps = dict(latent_steps=2, pixel_steps=3, levels=2, steps_per_level=3) if small else {}
    n = 4 if small else 64
    quick = time_two_stage_vs_annealed(model, config, n=n, device=device, measure_steps=2,
                                       **steps)
    full_estimate = 1.5 * (quick["two_stage_seconds"] + quick["annealed_seconds"])
    reserve = PLANNED["c_scoring"] + PLANNED["d_worker"]
    if full_estimate < budget.left() - reserve:
        record = time_two_stage_vs_annealed(model, config, n=n, device=device, **steps)
        record["extrapolated_first"] = {k: quick[k] for k in (
            "two_stage_seconds", "annealed_seconds", "ratio_annealed_over_two_stage")}
        return record
    quick["full_runs_skipped"] = (f"estimated {full_estimate:.0f} s; "
                                  f"{budget.left():.0f} s left")
    return quick


# --- (c) scoring ------------------------------------------------------------------------------

def step_c(trainer: Trainer, n: int, device: torch.device) -> dict:
    scoring, net = trainer.config.scoring, trainer.config.network
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.rand((n, net.channels, net.image_size, net.image_size), generator=g,
                   device=device) * 2 - 1
    trainer.model.eval()

    def score():
        return texture_score(trainer.model.dae, x, sigma=scoring.sigma, draws=scoring.draws,
                             seed=scoring.seed, batch_size=SCORE_ROWS)

    score()
    first, seconds = timed(device, score)
    return {"images": n, "draws": scoring.draws, "sigma": scoring.sigma,
            "rows_per_forward": SCORE_ROWS, "seconds": round(seconds, 3),
            "images_per_s": round(n / seconds, 1), "finite": bool(torch.isfinite(first).all()),
            "repro_max_diff": float((first - score()).abs().max())}


# --- (d) the worker's task bodies -------------------------------------------------------------

def _worker_runtime(tmp: Path, trainer: Trainer, device: torch.device):
    from core.jobs import JobRecord
    from core.settings import Settings
    from model.checkpoints import save_checkpoint
    from worker.runtime import Reporter, TaskRuntime

    save_checkpoint(tmp / "ckpt", model=trainer.model, config=trainer.config,
                    step=trainer.step, metadata={"source": "gpu_check"})
    settings = Settings(data_dir=tmp / "data", redis_url=None, device=str(device),
                        seed_checkpoint=None, api_keys="gpu:0123456789abcdef0123")
    runtime = TaskRuntime.create(settings)
    runtime.registry.register("check", tmp / "ckpt")

    def job(kind: str, params: dict):
        record = runtime.store.create(JobRecord(id=uuid.uuid4().hex, kind=kind,
                                                owner="gpu-check", params=params))
        return record, Reporter(runtime.store, record.id, interval=0.0)

    return runtime, job


def step_d(trainer: Trainer, device: torch.device, n: int) -> dict:
    from worker.handlers import run_generate, run_score

    with tempfile.TemporaryDirectory() as tmp:
        runtime, job = _worker_runtime(Path(tmp), trainer, device)
        record, report = job("generate", {"model_name": "check", "model_version": 1, "n": n,
                                          "seed": 0})
        result, seconds = timed(device, lambda: run_generate(runtime, record, report,
                                                              lambda: False))
        images = [runtime.data.inside(p) for p in result["samples"]]
        out = {"generate": {"seconds": round(seconds, 3), "samples": len(images),
                            "ok": len(images) == n and all(p.stat().st_size > 0
                                                           for p in images)}}
        record, report = job("score", {"model_name": "check", "model_version": 1})
        upload = runtime.data.upload_dir(record.id)
        upload.mkdir(parents=True, exist_ok=True)
        files = []
        for i, image in enumerate(images[:4]):
            path = upload / f"img-{i}.png"
            path.write_bytes(image.read_bytes())
            files.append({"path": runtime.data.relative(path), "filename": path.name})
        record.params["files"] = files
        result, seconds = timed(device, lambda: run_score(runtime, record, report,
                                                           lambda: False))
        scores = [r["score"] for r in result["results"]]
        out["score"] = {"seconds": round(seconds, 3), "images": len(scores),
                        "ok": len(scores) == len(files) and all(map(math.isfinite, scores))}
    return out


# --- (e) the model tests ----------------------------------------------------------------------

def step_e(device: torch.device, timeout: float) -> dict:
    env = {**os.environ, "DEBM_TEST_DEVICE": str(device), "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "tests/model",
                               "-p", "no:cacheprovider"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"passed": None, "summary": f"stopped at the budget ({timeout:.0f} s)",
                "seconds": round(time.perf_counter() - start, 1)}
    tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or [""]
    return {"passed": done.returncode == 0, "summary": tail[0],
            "seconds": round(time.perf_counter() - start, 1)}


# --- the plan ---------------------------------------------------------------------------------

def collect_checks(steps: dict[str, dict], device: torch.device) -> dict[str, bool]:
    """Every check of the steps that ran; a skipped or timed-out step adds none."""
    tol = 0.0 if device.type == "cpu" else 1e-5
    checks: dict[str, bool] = {}
    if "float32" in steps.get("a_training", {}):
        for precision in ("float32", "bfloat16"):
            run = steps["a_training"][precision]
            checks[f"{precision} training finite"] = run["finite"]
            checks[f"{precision} training seeds reproduce"] = run["repro_max_diff"] <= tol
    if "finite" in steps.get("c_scoring", {}):
        checks["scores finite"] = steps["c_scoring"]["finite"]
        checks["scores reproduce"] = steps["c_scoring"]["repro_max_diff"] <= tol
    if "generate" in steps.get("d_worker", {}):
        checks["worker generate"] = steps["d_worker"]["generate"]["ok"]
        checks["worker score"] = steps["d_worker"]["score"]["ok"]
    if steps.get("e_model_tests", {}).get("passed") is not None:
        checks["model tests pass"] = steps["e_model_tests"]["passed"]
    return checks


def measured_scale(training: dict) -> float:
    """How much slower than planned this device ran (a): the later steps' plans scale by it."""
    seconds = training["float32"]["seconds_per_iteration"] or \
        training["float32"]["warmup_iteration_seconds"]
    return max(0.25, seconds / PLANNED_ITERATION_SECONDS)


def run_step(log: StepLog, name: str, budget: Budget, fn, *, scale: float = 1.0):
    """Run ``fn`` if its planned seconds (times ``scale``) fit in the budget, and log it."""
    needed = PLANNED.get(name, 0) * scale
    if needed > budget.left():
        log.write(name, {"skipped": f"planned {needed:.0f} s, {budget.left():.0f} s left"})
        return None
    start = time.perf_counter()
    try:
        result = fn()
    except Exception as exc:  # a failed step is a finding: log it and go on
        log.write(name, {"error": f"{type(exc).__name__}: {exc}"[:2000]})
        return None
    record, extra = result if isinstance(result, tuple) else (result, None)
    log.write(name, {**record, "step_seconds": round(time.perf_counter() - start, 1)})
    return extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--budget-seconds", type=float, default=420.0)
    parser.add_argument("--data", help="a CIFAR-10 batch folder (default: random images)")
    parser.add_argument("--score-n", type=int, default=1024)
    parser.add_argument("--small", action="store_true", help="toy sizes (CPU CI)")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--json", default="gpu_check.jsonl",
                        help="one JSON line per step, appended as each step finishes")
    args = parser.parse_args(argv)
    budget = Budget(args.budget_seconds)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device; run with --device cpu --small for the CPU version")
        return 2
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False  # the same kernels run to run
        torch.backends.cudnn.deterministic = True
    log = StepLog(Path(args.json))
    config = check_config(args.small)
    dataset = cifar_shaped(args.data, 512 if args.small else 10_000, seed=0)
    trainer = run_step(log, "a_training", budget, lambda: step_a(config, dataset, device,
                                                                 budget))
    if trainer is not None:
        scale = measured_scale(log.steps["a_training"])
        run_step(log, "b_paper_timing", budget, lambda: step_b(trainer, device, budget,
                                                               args.small), scale=scale)
        run_step(log, "c_scoring", budget, lambda: step_c(trainer, args.score_n, device),
                 scale=scale)
        run_step(log, "d_worker", budget, lambda: step_d(trainer, device, 4 if args.small
                                                         else 8), scale=scale)
    if args.skip_tests:
        log.write("e_model_tests", {"skipped": "--skip-tests"})
    elif budget.left() < MIN_TESTS_SECONDS:
        log.write("e_model_tests", {"skipped": f"{budget.left():.0f} s left"})
    else:
        log.write("e_model_tests", step_e(device, budget.left() - 15))
    checks = collect_checks(log.steps, device)
    errors = [name for name, record in log.steps.items() if "error" in record]
    passed = bool(checks) and all(checks.values()) and not errors
    log.write("summary", {"checks": checks, "errors": errors, "passed": passed,
                          "budget_seconds": args.budget_seconds,
                          "seconds_left": round(budget.left(), 1)})
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
