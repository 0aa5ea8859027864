"""The paper's timing claim as a ratio: two-stage MCMC against NCSN-style annealed Langevin,
the same network, one process, one run.

    .venv/bin/python benchmarks/paper_timing.py --measure-steps 2 --json paper_timing.json

The paper (Zeng 2023, section 5.1): "we only run 35 MCMC steps in latent space and 100 MCMC
steps in data space to generate CIFAR-10 samples. And it only takes 8.67 seconds to generate
64 samples, while NCSN takes 120.11 seconds in the same setting" - a ratio of 13.9x.

Here both samplers run with the `paper` preset's network (32x32x3, base width 128, four
levels, two blocks per level) on the given device:
  - two-stage: 35 latent Langevin steps on U^s (eq. 15), decode, 100 pixel steps on U^c
    (eq. 16), the `paper` sampler's step sizes and no clipping or clamping;
  - annealed: NCSN's sampling setting, L = 10 noise levels (geometric, 1 -> 0.01) x T = 100
    Langevin steps per level, epsilon = 2e-5 (Song & Ermon 2019, "Generative Modeling by
    Estimating Gradients of the Data Distribution", section 4.3 and Algorithm 1), with the
    DAE's score (r(x, sigma) - x) / sigma^2 (model.samplers.annealed).

The weights are random: the time of a Langevin step does not depend on what the network
learned (no data-dependent control flow; denormals are flushed so that tiny values do not
slow the CPU), so timing needs no trained model.  The samples are not meant to look like
anything, and with random weights and the paper's unclipped chains they may even overflow
("finite": false in the report); that changes no operation count.

A two-stage step needs the energy's input gradient (a forward and a backward pass, and the
semantic decoder in the latent stage); an annealed step is one forward pass.  With the same
network the ratio is therefore set by the step counts and the cost per step, not by the two
papers' different networks (NCSN's RefineNet is not this U-Net).

``--measure-steps K`` times each stage at 0 and at K steps (after one warm-up call per
sampler); the difference is the time of K chain steps without the per-call work (start,
decode, final denoise), and the full step counts are extrapolated from it, plus that work
once: the output says "EXTRAPOLATED" beside every such figure.  Without it
both samplers run in full, which on a CPU takes a long time at the paper's sizes.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from model.formats.config import ExperimentConfig, NoiseConfig, SamplerConfig
from model.formats.presets import preset
from model.networks import DenoisingEBM
from model.samplers import sample, with_overrides

PAPER_TWO_STAGE_SECONDS_64 = 8.67  # section 5.1, 35 latent + 100 pixel steps
PAPER_NCSN_SECONDS_64 = 120.11  # section 5.1, NCSN "in the same setting"
PAPER_RATIO = round(PAPER_NCSN_SECONDS_64 / PAPER_TWO_STAGE_SECONDS_64, 1)  # 13.9
PAPER_STEPS = {"latent": 35, "pixel": 100}
NCSN_SETTING = {"levels": 10, "steps_per_level": 100, "step_size": 2e-5}  # Song & Ermon 2019


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_sample(model: DenoisingEBM, sampler: str, settings: SamplerConfig,
                  noise: NoiseConfig, n: int, device: torch.device) -> tuple[float, bool]:
    """Seconds for one call of ``sample`` (synchronised on a GPU), and whether the output
    is finite."""
    _sync(device)
    start = time.perf_counter()
    result = sample(model, sampler=sampler, n=n, seed=0, settings=settings, noise=noise)
    _sync(device)
    return time.perf_counter() - start, bool(torch.isfinite(result.images).all())


def stage_settings(config: ExperimentConfig, *, latent: int, pixel: int, levels: int,
                   per_level: int, precision: str) -> SamplerConfig:
    return with_overrides(config.sampler, steps_latent=latent, steps_pixel=pixel,
                          annealed_levels=levels, annealed_steps_per_level=per_level,
                          annealed_step_size=NCSN_SETTING["step_size"], precision=precision)


def time_two_stage_vs_annealed(model: DenoisingEBM, config: ExperimentConfig, *, n: int,
                               device: torch.device, latent_steps: int = 35,
                               pixel_steps: int = 100, levels: int = 10,
                               steps_per_level: int = 100, measure_steps: int | None = None,
                               precision: str = "float32") -> dict:
    """Seconds per ``n`` samples for both samplers and their ratio (annealed / two-stage).

    With ``measure_steps`` each stage runs that many steps (each after a warm-up call of the
    same shape) and the full counts are extrapolated from the per-step times."""
    full = dict(latent=latent_steps, pixel=pixel_steps, levels=levels,
                per_level=steps_per_level, precision=precision)
    out: dict = {"n": n, "latent_steps": latent_steps, "pixel_steps": pixel_steps,
                 "annealed_levels": levels, "annealed_steps_per_level": steps_per_level,
                 "precision": precision, "weights": "random (timing needs no trained model)"}
    if measure_steps is None:
        runs = {"two_stage": ("two_stage", stage_settings(config, **full)),
                "annealed": ("annealed", stage_settings(config, **full))}
        finite = True
        for key, (sampler, settings) in runs.items():
            # Warm-up at one step per stage: kernel selection and allocator growth.
            warm = stage_settings(config, latent=1, pixel=1, levels=1, per_level=1,
                                  precision=precision)
            _timed_sample(model, sampler, warm, config.noise, n, device)
            seconds, ok = _timed_sample(model, sampler, settings, config.noise, n, device)
            out[f"{key}_seconds"], finite = round(seconds, 3), finite and ok
        out["measured"] = "full runs"
    else:
        finite = extrapolate_from_steps(model, config, out, n=n, device=device,
                                        k=measure_steps, precision=precision)
    out["finite"] = finite
    out["ratio_annealed_over_two_stage"] = round(out["annealed_seconds"]
                                                 / out["two_stage_seconds"], 2)
    out["paper_ratio"] = PAPER_RATIO
    out["paper_seconds"] = {"two_stage": PAPER_TWO_STAGE_SECONDS_64,
                            "ncsn": PAPER_NCSN_SECONDS_64, "n": 64}
    return out


def extrapolate_from_steps(model: DenoisingEBM, config: ExperimentConfig, out: dict, *,
                           n: int, device: torch.device, k: int, precision: str) -> bool:
    """Time each stage at 0 and k steps, write per-step seconds and the full step counts'
    extrapolated seconds into ``out``; return whether every output was finite."""
    finite = True
    for sampler in ("two_stage", "annealed"):  # one warm-up per sampler, one step each
        warm = stage_settings(config, latent=1, pixel=1, levels=1, per_level=1,
                              precision=precision)
        _timed_sample(model, sampler, warm, config.noise, n, device)
    seconds: dict[tuple[str, int], float] = {}
    for stage, sampler in (("latent", "two_stage"), ("pixel", "two_stage"),
                           ("annealed", "annealed")):
        # At 0 steps a call still pays its start, decode and final steps; the difference
        # to k steps is the time of k chain steps alone.
        for steps in (0, k):
            if (stage, steps) == ("pixel", 0):
                seconds[stage, 0] = seconds["latent", 0]  # the same call
                continue
            settings = stage_settings(
                config, latent=steps if stage == "latent" else 0,
                pixel=steps if stage == "pixel" else 0, levels=1, per_level=steps,
                precision=precision)
            seconds[stage, steps], ok = _timed_sample(model, sampler, settings,
                                                      config.noise, n, device)
            finite = finite and ok
    per_step = {stage: max(seconds[stage, k] - seconds[stage, 0], 0.0) / k
                for stage in ("latent", "pixel", "annealed")}
    out["seconds_per_step"] = {key: round(v, 4) for key, v in per_step.items()}
    # Start, decode and final steps outside the chains, paid once per call.
    out["seconds_per_call_outside_steps"] = {"two_stage": round(seconds["latent", 0], 4),
                                             "annealed": round(seconds["annealed", 0], 4)}
    out["two_stage_seconds"] = round(out["latent_steps"] * per_step["latent"]
                                     + out["pixel_steps"] * per_step["pixel"]
                                     + seconds["latent", 0], 2)
    annealed_steps = out["annealed_levels"] * out["annealed_steps_per_level"]
    out["annealed_seconds"] = round(annealed_steps * per_step["annealed"]
                                    + seconds["annealed", 0], 2)
    out["measured"] = (f"EXTRAPOLATED from {k} timed steps per stage to "
                       f"{out['latent_steps']}+{out['pixel_steps']} and "
                       f"{out['annealed_levels']}x{out['annealed_steps_per_level']} steps")
    return finite


def timing_network(small: bool) -> ExperimentConfig:
    """The `paper` preset (its network, noise grid and sampler); ``small`` is a toy network
    for the CPU test of this script."""
    config = preset("paper")
    if small:
        config = config.replace(network={"base_width": 16, "channel_mults": [1, 2],
                                         "blocks_per_level": 1, "latent_dim": 16,
                                         "decoder_width": 16, "embedding_dim": 16,
                                         "groups": 8})
    return config


def format_report(report: dict) -> str:
    how = report["measured"]
    n = report["n"]
    return "\n".join([
        f"device {report['device']}, {report['threads']} threads, network: {report['network']}",
        f"two-stage {report['latent_steps']}+{report['pixel_steps']} steps: "
        f"{report['two_stage_seconds']} s per {n} samples ({how})",
        f"annealed {report['annealed_levels']}x{report['annealed_steps_per_level']} steps: "
        f"{report['annealed_seconds']} s per {n} samples ({how})",
        f"ratio annealed / two-stage: {report['ratio_annealed_over_two_stage']}x "
        f"(paper: {PAPER_NCSN_SECONDS_64} s / {PAPER_TWO_STAGE_SECONDS_64} s = "
        f"{PAPER_RATIO}x, on a GPU, with NCSN's own network)",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=64, help="samples per timed call")
    parser.add_argument("--latent-steps", type=int, default=PAPER_STEPS["latent"])
    parser.add_argument("--pixel-steps", type=int, default=PAPER_STEPS["pixel"])
    parser.add_argument("--levels", type=int, default=NCSN_SETTING["levels"])
    parser.add_argument("--steps-per-level", type=int, default=NCSN_SETTING["steps_per_level"])
    parser.add_argument("--measure-steps", type=int,
                        help="time this many steps per stage and extrapolate (say so)")
    parser.add_argument("--precision", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--small", action="store_true", help="toy network (CPU test)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_flush_denormal(True)
    config = timing_network(args.small)
    torch.manual_seed(0)  # random weights, fixed by the seed
    model = DenoisingEBM(config.network).to(device)
    report = time_two_stage_vs_annealed(
        model, config, n=args.n, device=device, latent_steps=args.latent_steps,
        pixel_steps=args.pixel_steps, levels=args.levels, steps_per_level=args.steps_per_level,
        measure_steps=args.measure_steps, precision=args.precision)
    net = config.network
    report.update(device=torch.cuda.get_device_name(device) if device.type == "cuda"
                  else f"cpu ({platform.machine()})", threads=torch.get_num_threads(),
                  network=f"{'toy' if args.small else 'paper'} {net.image_size}x"
                  f"{net.image_size}x{net.channels}, width {net.base_width}, "
                  f"{sum(model.parameter_count().values()):,} parameters",
                  command=" ".join(["benchmarks/paper_timing.py", *(argv or sys.argv[1:])]))
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
