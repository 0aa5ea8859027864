"""The raw model of the service benchmarks (benchmarks/service_load.py and the scripts that
use it): the checkpoint in the benchmark's own process, at its best thread count, and
``debm train`` for the training row."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


# --- the raw model ----------------------------------------------------------------------------

class RawModel:
    """The checkpoint in this process, measured right before each service phase (the machine
    may be shared: a reference taken minutes apart would compare different loads)."""

    def __init__(self, args, pngs: list[bytes]):
        import torch

        from model.checkpoints import load_checkpoint
        try:
            from model.formats.imagefile import decode_image
        except ImportError:  # the layout before model/formats/
            from model.imagefile import decode_image
        from model.images import pil_to_model_tensor
        from model.pipeline import prepare_for_inference, resolve_device

        self.args = args
        # Raw is the model alone at its best: each figure is measured at every count here
        # and the better one kept (on 2 cores one thread is sometimes faster for one image).
        # (The A/B scripts pin one count, ``--threads``, for the services and the raw model.)
        pinned = [args.threads] if getattr(args, "threads", None) else None
        self.thread_counts = getattr(args, "raw_threads", None) or pinned or \
            sorted({1, os.cpu_count() or 1})
        torch.set_num_threads(self.thread_counts[-1])
        self.loaded = prepare_for_inference(
            load_checkpoint(args.checkpoint, device=resolve_device(args.device)))
        net = self.loaded.config.network
        images = [decode_image(p, max_pixels=1 << 24).image for p in pngs[:32]]
        self.x = pil_to_model_tensor(images, image_size=net.image_size, channels=net.channels)
        self.score_one()  # warm-up

    def at_best(self, measure, better) -> dict:
        """``measure()`` at each thread count; the better result (``better`` sorts), with
        the thread count it was taken at and the others' figures."""
        import torch

        tried = {}
        for threads in self.thread_counts:
            torch.set_num_threads(threads)
            tried[threads] = measure()
        best = min(tried, key=lambda threads: better(tried[threads]))
        return {**tried[best], "threads": best,
                "tried": {str(t): better(r) for t, r in tried.items()}}

    def score_one(self) -> dict:
        from model.pipeline import score_images

        def measure() -> dict:
            score_images(self.loaded, self.x[:1])  # warm at this thread count
            one = timed(lambda: score_images(self.loaded, self.x[:1]),
                        self.args.raw_repeats * 5)
            return {"p50_s": statistics.median(one), "p99_s": percentile(one, 99)}

        return self.at_best(measure, lambda r: r["p50_s"])

    def score_batch(self) -> dict:
        from model.pipeline import score_images

        def measure() -> dict:
            best = min(timed(lambda: score_images(self.loaded, self.x), self.args.raw_repeats))
            return {"seconds": best, "images_per_s": len(self.x) / best}

        return self.at_best(measure, lambda r: r["seconds"])

    def generate(self, n: int) -> dict:
        from model.pipeline import generate

        def measure() -> dict:
            return {"seconds": min(timed(lambda: generate(self.loaded, n=n, seed=0),
                                         self.args.gen_repeats))}

        return self.at_best(measure, lambda r: r["seconds"])


def raw_training(args, workdir: Path) -> dict:
    """``debm train`` with the same preset, dataset and steps as the service's training job.
    Iterations/s are taken between the first and the last step (its progress lines), so the
    dataset load and the final calibration count in neither row."""
    out = workdir / "cli-train"
    cmd = [sys.executable, "-m", "debm.cli", "train", "--preset", args.train_preset,
           "--dataset", "mnist5k", "--warmup", "0", "--iters", str(args.train_iters),
           "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # torch's default threads, as shipped
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    marks: dict[int, float] = {}
    deadline = time.monotonic() + args.train_timeout
    for line in proc.stderr:  # "step 3/10 contrastive ..." after every step (10 or fewer)
        match = re.match(r"step (\d+)/(\d+)", line)
        if match:
            marks[int(match.group(1))] = time.perf_counter()
        if time.monotonic() > deadline:
            proc.kill()
            break
    proc.wait(60)
    return rate(marks, proc.returncode)


def rate(marks: dict[int, float], returncode: int | None = 0) -> dict:
    if returncode != 0 or len(marks) < 2:
        return {"error": f"exit {returncode}, {len(marks)} steps seen"}
    first, last = min(marks), max(marks)
    return {"steps": last - first, "seconds": marks[last] - marks[first],
            "it_per_s": (last - first) / (marks[last] - marks[first])}
