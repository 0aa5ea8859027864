"""The optional fast paths of a serving model, side by side in one run, and whether each keeps
the scores and seeded samples bit for bit.

    python benchmarks/inference_paths.py --json docs/results/inference_paths.json

Variants: ``plain`` (a checkpoint as loaded: eval mode, parameters requiring gradients,
scoring under no_grad: the state before model.pipeline.prepare_for_inference), ``serving``
(prepare_for_inference: no parameter gradients, scoring under inference_mode; the default),
``channels_last``, ``compile`` (torch.compile of the denoiser) and, on CUDA, ``bf16``.
Rounds alternate between variants so that a shared machine's load hits them alike; each
figure is the median of ``--rounds``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from model.checkpoints import load_checkpoint
from model.energies import texture_score
from model.pipeline import (InferenceOptions, generate, prepare_for_inference,
                            resolve_device, score_images)


def variants(args, device) -> dict:
    out = {"plain": load_checkpoint(args.checkpoint, device=device),
           "serving": prepare_for_inference(load_checkpoint(args.checkpoint, device=device))}
    out["channels_last"] = prepare_for_inference(
        load_checkpoint(args.checkpoint, device=device), InferenceOptions(channels_last=True))
    if device.type != "cuda":  # prepare_for_inference applies it on CUDA only; try it here
        out["channels_last"].model.to(memory_format=torch.channels_last)
    if args.compile:
        out["compile"] = prepare_for_inference(load_checkpoint(args.checkpoint, device=device),
                                               InferenceOptions(compile=True))
    if device.type == "cuda":
        out["bf16"] = prepare_for_inference(load_checkpoint(args.checkpoint, device=device),
                                            InferenceOptions(bf16=True))
    return out


def score(loaded, x, plain: bool):
    if plain:  # the path before: no_grad only, parameters requiring gradients
        s = loaded.config.scoring
        with torch.no_grad():
            return texture_score(loaded.model.dae, x, sigma=s.sigma, draws=s.draws,
                                 seed=s.seed).cpu()
    return score_images(loaded, x)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="checkpoints/demo")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=16, help="samples per generate call")
    parser.add_argument("--compile", action="store_true", help="include torch.compile")
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    models = variants(args, device)
    net = models["plain"].config.network
    x = (torch.rand((32, net.channels, net.image_size, net.image_size),
                    generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)
    reference_scores = score(models["plain"], x, True)
    reference_samples = generate(models["plain"], n=4, seed=1).images.cpu()
    times = {name: {"score1": [], "score32": [], "generate": []} for name in models}
    same = {}
    for name, loaded in models.items():  # warm-up (compiles) and the bit-for-bit checks
        s = score(loaded, x, name == "plain")
        g = generate(loaded, n=4, seed=1).images.cpu()
        same[name] = {"scores": bool(torch.equal(s, reference_scores)),
                      "samples": bool(torch.equal(g, reference_samples)),
                      "max_score_diff": float((s - reference_scores).abs().max())}
    for _ in range(args.rounds):
        for name, loaded in models.items():
            for key, fn in (("score1", lambda: score(loaded, x[:1], name == "plain")),
                            ("score32", lambda: score(loaded, x, name == "plain")),
                            ("generate", lambda: generate(loaded, n=args.n, seed=0))):
                sync(device)
                start = time.perf_counter()
                fn()
                sync(device)
                times[name][key].append(time.perf_counter() - start)
    rows = {name: {key: statistics.median(v) for key, v in t.items()} | same[name]
            for name, t in times.items()}
    base = rows["plain"]
    print(f"{args.checkpoint} on {device}, {torch.get_num_threads()} thread(s), median of "
          f"{args.rounds} alternating rounds")
    print(f"{'variant':<14}{'score 1 ms':>11}{'score 32 ms':>12}{'gen n=' + str(args.n) + ' s':>11}"
          f"{'vs plain':>10}{'same scores':>13}{'same samples':>14}")
    for name, r in rows.items():
        ratio = (r["score32"] / base["score32"] + r["generate"] / base["generate"]) / 2
        print(f"{name:<14}{1000 * r['score1']:>11.1f}{1000 * r['score32']:>12.1f}"
              f"{r['generate']:>11.2f}{ratio:>10.2f}{str(r['scores']):>13}"
              f"{str(r['samples']):>14}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"device": str(device), "rows": rows,
                                               "threads": torch.get_num_threads(),
                                               "rounds": args.rounds}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
