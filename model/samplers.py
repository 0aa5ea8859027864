"""Langevin samplers: one-step functions, loops that only iterate, and a registry by name.

    two_stage     K latent steps on U^s from z0 ~ N(0, I) (eq. 15), x0 = h(z_K), then T pixel
                  steps on U^c (eq. 16).  The paper's sampler.  With ``latent_init="prior"``
                  z0 comes from the checkpoint's fitted latent prior instead (latent_prior.py).
    texture_only  pixel Langevin on U^c from Gaussian noise (baseline).
    annealed      NCSN-style annealed Langevin over the sigma grid with the DAE's score
                  (r(x, sigma) - x) / sigma^2 (Tweedie; baseline).

Every sampler takes an explicit generator, reports progress through ``on_progress(stage, step,
total)`` and checks ``should_cancel()`` between steps (score_sde_pytorch's registry habit).
``on_state(stage, step, images)`` sees the chain after each step: ``images(limit=None)`` renders
its first ``limit`` chains as images on demand (h(z) in the latent stage), so a caller that
previews a few chains every few steps pays for decoding only those, and only then.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from .energies import semantic_energy_grad, sigma_grid, texture_energy_grad
from .formats.config import ConfigError, NoiseConfig, SamplerConfig
from .formats.errors import Cancelled
from .latent_prior import LatentPrior
from .networks import DenoisingEBM

ProgressFn = Callable[[str, int, int], None]
CancelFn = Callable[[], bool]
# Draws a standard-normal tensor of a given shape.  Training passes one that draws at the
# global batch size and keeps this rank's rows (model/distributed.py); None: the generator.
NoiseFn = Callable[[tuple[int, ...]], torch.Tensor]
StateFn = Callable[[str, int, Callable[..., torch.Tensor]], None]


@dataclass
class SampleResult:
    images: torch.Tensor  # (N, C, H, W), in [-1, 1] when pixel clamping is on
    semantic: torch.Tensor | None = None  # h(z_K), for two_stage
    steps: int = 0  # total Langevin steps run


class Sampler(Protocol):
    def __call__(self, model: DenoisingEBM, *, n: int, generator: torch.Generator,
                 settings: SamplerConfig, noise: NoiseConfig,
                 on_progress: ProgressFn | None = None,
                 should_cancel: CancelFn | None = None,
                 on_state: StateFn | None = None,
                 latent_prior: LatentPrior | None = None) -> SampleResult: ...


# --- one step ------------------------------------------------------------------------------

def langevin_step(state: torch.Tensor, grad: torch.Tensor, *, step_size: float,
                  temperature: float, grad_clip: float | None,
                  generator: torch.Generator | None,
                  noise: torch.Tensor | None = None) -> torch.Tensor:
    """s <- s - eta * grad U(s) + sqrt(2 eta) * temperature * e   (eqs. 15, 16).

    The elementwise gradient clip bounds a step when U's 1/sigma^2 factor spikes (None or 0:
    no clip, the equations as written)."""
    if grad_clip:
        grad = grad.clamp(-grad_clip, grad_clip)
    if noise is None:
        noise = torch.randn(state.shape, generator=generator, device=state.device,
                            dtype=state.dtype)
    return state - step_size * grad + math.sqrt(2.0 * step_size) * temperature * noise


def _check(should_cancel: CancelFn | None) -> None:
    if should_cancel is not None and should_cancel():
        raise Cancelled("sampling cancelled")


# --- chains (loops only iterate) -----------------------------------------------------------

def latent_chain(model: DenoisingEBM, z: torch.Tensor, *, steps: int, step_size: float,
                 sigma: float | torch.Tensor, temperature: float, grad_clip: float | None,
                 generator: torch.Generator, on_progress: ProgressFn | None = None,
                 should_cancel: CancelFn | None = None, progress_offset: int = 0,
                 progress_total: int | None = None,
                 noise_fn: NoiseFn | None = None, on_state: StateFn | None = None,
                 clamp: bool = True) -> torch.Tensor:
    """Stage 1: K Langevin steps on the semantic energy U^s(z, sigma) (eq. 15)."""
    total = progress_total if progress_total is not None else steps
    size, channels = model.decoder.config.image_size, model.decoder.config.channels
    for k in range(steps):
        _check(should_cancel)
        e_noise = noise_fn((z.shape[0], channels, size, size)) if noise_fn else None
        _, grad = semantic_energy_grad(model.dae, model.decoder, z, sigma, generator=generator,
                                       noise=e_noise)
        z = langevin_step(z, grad, step_size=step_size, temperature=temperature,
                          grad_clip=grad_clip, generator=generator,
                          noise=noise_fn(tuple(z.shape)) if noise_fn else None)
        if on_progress is not None:
            on_progress("latent", progress_offset + k + 1, total)
        if on_state is not None:
            on_state("latent", progress_offset + k + 1,
                     lambda limit=None, z=z: decode_latents(model, z[:limit], clamp=clamp))
    return z.detach()


def decode_latents(model: DenoisingEBM, z: torch.Tensor, *, clamp: bool) -> torch.Tensor:
    """h(z): the semantic images of latent states."""
    with torch.no_grad():
        x = model.decoder(z.detach()).to(z.dtype)  # float32 under bf16 autocast too
    return x.clamp(-1.0, 1.0) if clamp else x


def pixel_chain(model: DenoisingEBM, x: torch.Tensor, *, steps: int, step_size: float,
                sigma: float | torch.Tensor, temperature: float, grad_clip: float | None,
                clamp: bool, generator: torch.Generator, on_progress: ProgressFn | None = None,
                should_cancel: CancelFn | None = None, progress_offset: int = 0,
                progress_total: int | None = None,
                noise_fn: NoiseFn | None = None, on_state: StateFn | None = None
                ) -> torch.Tensor:
    """Stage 2: T Langevin steps on the texture energy U^c(x, sigma) (eq. 16).

    Clamping to [-1, 1] keeps chains in the data range, as IGEBM-style samplers do."""
    total = progress_total if progress_total is not None else steps
    for t in range(steps):
        _check(should_cancel)
        e_noise = noise_fn(tuple(x.shape)) if noise_fn else None
        _, grad = texture_energy_grad(model.dae, x, sigma, generator=generator, noise=e_noise)
        x = langevin_step(x, grad, step_size=step_size, temperature=temperature,
                          grad_clip=grad_clip, generator=generator,
                          noise=noise_fn(tuple(x.shape)) if noise_fn else None)
        if clamp:
            x = x.clamp(-1.0, 1.0)
        if on_progress is not None:
            on_progress("pixel", progress_offset + t + 1, total)
        if on_state is not None:
            on_state("pixel", progress_offset + t + 1,
                     lambda limit=None, x=x: x[:limit].detach())
    return x.detach()


def final_denoise(model: DenoisingEBM, x: torch.Tensor, *, sigma: float, clamp: bool
                  ) -> torch.Tensor:
    """x <- r(x, sigma): Tweedie's posterior mean removes the sigma-scale noise that chains
    on U^c(., sigma) leave in their samples (Jolicoeur-Martineau et al. 2020; NCSNv2)."""
    with torch.no_grad():
        x = model.dae(x, torch.full((x.shape[0],), float(sigma), device=x.device,
                                    dtype=x.dtype)).to(x.dtype)
    return x.clamp(-1.0, 1.0) if clamp else x


def _image_shape(model: DenoisingEBM, n: int) -> tuple[int, int, int, int]:
    cfg = model.config
    return (n, cfg.channels, cfg.image_size, cfg.image_size)


def _param_like(model: DenoisingEBM) -> torch.Tensor:
    return next(model.parameters())


def latent_start(model: DenoisingEBM, n: int, *, settings: SamplerConfig,
                 generator: torch.Generator, latent_prior: LatentPrior | None) -> torch.Tensor:
    """z0: N(0, I) as in eq. 15, or the fitted latent prior when ``latent_init="prior"``."""
    like = _param_like(model)
    if settings.latent_init == "prior":
        if latent_prior is None:
            raise ConfigError("latent_init='prior' needs a checkpoint with a fitted latent "
                              "prior (debm fit-prior --checkpoint DIR); this one has none")
        return latent_prior.sample(n, generator=generator).to(like.dtype)
    return torch.randn((n, model.config.latent_dim), generator=generator, device=like.device,
                       dtype=like.dtype)


# --- samplers ------------------------------------------------------------------------------

def two_stage(model: DenoisingEBM, *, n: int, generator: torch.Generator,
              settings: SamplerConfig, noise: NoiseConfig,
              on_progress: ProgressFn | None = None,
              should_cancel: CancelFn | None = None,
              on_state: StateFn | None = None,
              latent_prior: LatentPrior | None = None) -> SampleResult:
    like = _param_like(model)
    total = settings.steps_latent + settings.steps_pixel
    z = latent_start(model, n, settings=settings, generator=generator,
                     latent_prior=latent_prior)
    z = latent_chain(model, z, steps=settings.steps_latent, step_size=settings.step_size_latent,
                     sigma=settings.sigma_latent, temperature=settings.temperature_latent,
                     grad_clip=settings.grad_clip, generator=generator,
                     on_progress=on_progress, should_cancel=should_cancel,
                     progress_total=total, on_state=on_state, clamp=settings.clamp_pixels)
    semantic = decode_latents(model, z, clamp=settings.clamp_pixels)
    x = pixel_chain(model, semantic, steps=settings.steps_pixel,
                    step_size=settings.step_size_pixel, sigma=settings.sigma_pixel,
                    temperature=settings.temperature_pixel, grad_clip=settings.grad_clip,
                    clamp=settings.clamp_pixels, generator=generator, on_progress=on_progress,
                    should_cancel=should_cancel, progress_offset=settings.steps_latent,
                    progress_total=total, on_state=on_state)
    if settings.final_denoise:
        x = final_denoise(model, x, sigma=settings.sigma_pixel, clamp=settings.clamp_pixels)
    return SampleResult(images=x, semantic=semantic, steps=total)


def texture_only(model: DenoisingEBM, *, n: int, generator: torch.Generator,
                 settings: SamplerConfig, noise: NoiseConfig,
                 on_progress: ProgressFn | None = None,
                 should_cancel: CancelFn | None = None,
                 on_state: StateFn | None = None,
                 latent_prior: LatentPrior | None = None) -> SampleResult:
    """Pixel Langevin from N(0, I) noise for steps_latent + steps_pixel steps, so that it is
    compared with two_stage at the same number of energy gradients."""
    like = _param_like(model)
    steps = settings.steps_latent + settings.steps_pixel
    x = torch.randn(_image_shape(model, n), generator=generator, device=like.device,
                    dtype=like.dtype)
    if settings.clamp_pixels:
        x = x.clamp(-1.0, 1.0)
    x = pixel_chain(model, x, steps=steps, step_size=settings.step_size_pixel,
                    sigma=settings.sigma_pixel, temperature=settings.temperature_pixel,
                    grad_clip=settings.grad_clip, clamp=settings.clamp_pixels,
                    generator=generator, on_progress=on_progress, should_cancel=should_cancel,
                    on_state=on_state)
    if settings.final_denoise:
        x = final_denoise(model, x, sigma=settings.sigma_pixel, clamp=settings.clamp_pixels)
    return SampleResult(images=x, steps=steps)


def annealed(model: DenoisingEBM, *, n: int, generator: torch.Generator,
             settings: SamplerConfig, noise: NoiseConfig,
             on_progress: ProgressFn | None = None,
             should_cancel: CancelFn | None = None,
             on_state: StateFn | None = None,
             latent_prior: LatentPrior | None = None) -> SampleResult:
    """Annealed Langevin dynamics (Song & Ermon 2019, Alg. 1) with the DAE's score.

    Step size alpha_i = eps * sigma_i^2 / sigma_L^2; x <- x + alpha/2 s(x, sigma_i) +
    sqrt(alpha) e, s = (r(x, sigma) - x) / sigma^2.  A final denoising step r(x, sigma_L)
    removes the last level's noise (NCSNv2)."""
    like = _param_like(model)
    grid = sigma_grid(noise, device=like.device, dtype=like.dtype)
    levels = max(1, min(settings.annealed_levels, grid.numel()))
    index = torch.linspace(0, grid.numel() - 1, levels).round().long()
    sigmas = grid[index]
    per_level = settings.annealed_steps_per_level
    total = levels * per_level
    x = torch.rand(_image_shape(model, n), generator=generator, device=like.device,
                   dtype=like.dtype) * 2 - 1
    levels_host = sigmas.tolist()  # one transfer, not one per level
    sigma_last = levels_host[-1]
    step = 0
    with torch.no_grad():
        for s in levels_host:
            alpha = settings.annealed_step_size * (s / sigma_last) ** 2
            s_batch = torch.full((n,), s, device=like.device, dtype=like.dtype)
            for _ in range(per_level):
                _check(should_cancel)
                score = (model.dae(x, s_batch) - x) / s ** 2
                e = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = x + 0.5 * alpha * score + math.sqrt(alpha) * e
                step += 1
                if on_progress is not None:
                    on_progress("annealed", step, total)
                if on_state is not None:
                    on_state("annealed", step,
                             lambda limit=None, x=x: x[:limit].clamp(-1.0, 1.0))
        x = model.dae(x, torch.full((n,), sigma_last, device=like.device, dtype=like.dtype)
                      ).to(like.dtype)
    if settings.clamp_pixels:
        x = x.clamp(-1.0, 1.0)
    return SampleResult(images=x.detach(), steps=total)


SAMPLERS: dict[str, Sampler] = {
    "two_stage": two_stage,
    "texture_only": texture_only,
    "annealed": annealed,
}


def get_sampler(name: str) -> Sampler:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}") from None


def sample(model: DenoisingEBM, *, sampler: str, n: int, seed: int, settings: SamplerConfig,
           noise: NoiseConfig, on_progress: ProgressFn | None = None,
           should_cancel: CancelFn | None = None,
           on_state: StateFn | None = None,
           latent_prior: LatentPrior | None = None) -> SampleResult:
    """Draw n samples with the named sampler; the same seed gives the same samples."""
    if n < 1:
        raise ValueError("n must be >= 1")
    settings.validate()
    fn = get_sampler(sampler)
    like = _param_like(model)
    generator = torch.Generator(device=like.device).manual_seed(int(seed))
    was_training = model.training
    model.eval()
    try:
        with precision_context(settings.precision, like.device):
            result = fn(model, n=n, generator=generator, settings=settings, noise=noise,
                        on_progress=on_progress, should_cancel=should_cancel, on_state=on_state,
                        latent_prior=latent_prior)
        if result.images.dtype != torch.float32:
            result.images = result.images.float()
        if result.semantic is not None and result.semantic.dtype != torch.float32:
            result.semantic = result.semantic.float()
        return result
    finally:
        model.train(was_training)


def precision_context(precision: str, device: torch.device):
    """bfloat16 autocast for the network's matmuls and convolutions; chain states, noise and
    Langevin updates stay float32 (autocast leaves elementwise ops alone)."""
    if precision == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def with_overrides(settings: SamplerConfig, **overrides: object) -> SamplerConfig:
    """Copy of ``settings`` with the non-None overrides applied and validated."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    result = dataclasses.replace(settings, **clean)
    result.validate()
    return result
