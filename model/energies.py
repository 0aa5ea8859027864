"""Energies of the Denoising-EBM and their gradients (paper eqs. 1, 7, 8, 13).

All energies are per sample, shape (B,), summed over dimensions exactly as the paper writes
them.  Every random draw takes an explicit ``torch.Generator`` or an explicit ``noise`` tensor,
so a seed fixes the result (diffusers' habit).
"""

from __future__ import annotations

from typing import Callable

import torch

from .formats.config import NoiseConfig
from .networks import DenoisingUNet, SemanticDecoder

SigmaLike = float | torch.Tensor


def sigma_grid(noise: NoiseConfig, *, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Geometric grid of S noise levels from sigma_max down to sigma_min (paper, S=128)."""
    return torch.logspace(torch.log10(torch.tensor(noise.sigma_max)).item(),
                          torch.log10(torch.tensor(noise.sigma_min)).item(),
                          noise.num_sigmas, device=device, dtype=dtype)


def as_sigma_batch(sigma: SigmaLike, batch: int, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or (B,) sigma to a (B,) tensor on x's device and dtype."""
    if isinstance(sigma, torch.Tensor):
        sigma = sigma.to(device=like.device, dtype=like.dtype)
        return sigma.expand(batch) if sigma.dim() == 0 else sigma
    return torch.full((batch,), float(sigma), device=like.device, dtype=like.dtype)


def draw_noise(shape: torch.Size | tuple[int, ...], *, generator: torch.Generator | None,
               like: torch.Tensor) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


def _flat_sq_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).pow(2).sum(dim=1)


def texture_energy(dae: DenoisingUNet, x: torch.Tensor, sigma: SigmaLike, *,
                   generator: torch.Generator | None = None,
                   noise: torch.Tensor | None = None) -> torch.Tensor:
    """U^c(x, sigma) = ||x - r(x + sigma e, sigma)||^2 / (2 sigma^2)   (eq. 7).

    Stochastic through e; pass ``noise`` (standard normal, x's shape) to fix it."""
    s = as_sigma_batch(sigma, x.shape[0], x)
    if noise is None:
        noise = draw_noise(x.shape, generator=generator, like=x)
    s4 = s[:, None, None, None]
    recon = dae(x + s4 * noise, s)
    return _flat_sq_norm(x - recon) / (2 * s ** 2)


def semantic_energy(dae: DenoisingUNet, decoder: SemanticDecoder, z: torch.Tensor,
                    sigma: SigmaLike, *, generator: torch.Generator | None = None,
                    noise: torch.Tensor | None = None) -> torch.Tensor:
    """U^s(z, sigma) = ||h(z) - r(h(z) + e, sigma)||^2 / (2 sigma^2),  e ~ N(0, sigma^2 I)  (eq. 8).

    It is the texture energy of the semantic image h(z), kept in z's dtype (float32 under
    bf16 autocast, so that sigma and the energy are not rounded to bf16)."""
    return texture_energy(dae, decoder(z).to(z.dtype), sigma, generator=generator, noise=noise)


def energy_and_grad(energy_fn, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample energies and d(sum of energies)/d(inputs); the graph is discarded.

    Summing is exact for batched gradients because samples do not interact (GroupNorm
    normalises within a sample)."""
    with torch.enable_grad():
        inputs = inputs.detach().requires_grad_(True)
        energy = energy_fn(inputs)
        (grad,) = torch.autograd.grad(energy.sum(), inputs)
    return energy.detach(), grad


def texture_energy_grad(dae: DenoisingUNet, x: torch.Tensor, sigma: SigmaLike, *,
                        generator: torch.Generator | None = None,
                        noise: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(U^c(x), grad_x U^c(x)) with one noise draw shared by energy and gradient."""
    if noise is None:
        noise = draw_noise(x.shape, generator=generator, like=x)
    return energy_and_grad(lambda v: texture_energy(dae, v, sigma, noise=noise), x)


def semantic_energy_grad(dae: DenoisingUNet, decoder: SemanticDecoder, z: torch.Tensor,
                         sigma: SigmaLike, *, generator: torch.Generator | None = None,
                         noise: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(U^s(z), grad_z U^s(z)); the gradient flows through both h(z) terms of eq. 8."""
    if noise is None:
        size = decoder.config.image_size
        shape = (z.shape[0], decoder.config.channels, size, size)
        noise = draw_noise(shape, generator=generator, like=z)
    return energy_and_grad(lambda v: semantic_energy(dae, decoder, v, sigma, noise=noise), z)


# --- training losses -----------------------------------------------------------------------

def reconstruction_losses(dae: DenoisingUNet, decoder: SemanticDecoder, x: torch.Tensor,
                          sigma: torch.Tensor, *, generator: torch.Generator | None = None,
                          noise: torch.Tensor | None = None, weighting: str = "edm",
                          per_sample: bool = False, decoder_trains_encoder: bool = True
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(DAE loss, decoder loss, latents) from one noise draw and one encoder pass.

    DAE loss, eq. 1: E ||r(x~, sigma) - x||^2, weighted per sample by 1 / c_out(sigma)^2.
    Unweighted, sigma = 1 dominates and the small sigmas that OOD scoring uses are barely
    trained; the EDM weighting gives every level a unit-scale loss.  Mean per dimension.

    ``weighting="none"`` is eq. 1 as the paper writes it (still a mean per dimension, a
    constant factor).

    Decoder loss, eq. 13: E ||h(f(x~, sigma)) - x||^2, mean per dimension.  With
    ``decoder_trains_encoder`` its gradient also reaches the encoder, which makes z carry the
    image's content, not only what skips miss; without it z is detached before h, so eq. 13
    trains gamma alone and the encoder sees grad L_DAE only (Algorithm 1 line 4, "fix phi").

    ``per_sample=True`` returns (B,) losses instead of batch means (data-parallel training
    sums them over ranks).
    """
    if noise is None:
        noise = draw_noise(x.shape, generator=generator, like=x)
    noisy = x + sigma[:, None, None, None] * noise
    z, skips, emb = dae.encode(noisy, sigma)
    recon = dae.denoise_from(noisy, sigma, z, skips, emb)
    per_dae = (recon - x).flatten(1).pow(2).mean(dim=1)
    if weighting == "edm":
        sd = dae.config.sigma_data
        per_dae = (sigma ** 2 + sd ** 2) / (sigma * sd) ** 2 * per_dae
    elif weighting != "none":
        raise ValueError(f"unknown DAE loss weighting {weighting!r}")
    per_decoder = (decoder(z if decoder_trains_encoder else z.detach()) - x
                   ).flatten(1).pow(2).mean(dim=1)
    if per_sample:
        return per_dae, per_decoder, z
    return per_dae.mean(), per_decoder.mean(), z


def latent_moment_penalty(z: torch.Tensor) -> torch.Tensor:
    """Pulls the batch mean of z to 0 and its per-dimension variance to 1, so that the latent
    chains' start z0 ~ N(0, I) (eq. 15) lies where the encoder actually puts images."""
    if z.shape[0] < 2:
        return z.new_zeros(())
    return z.mean(dim=0).pow(2).mean() + (z.var(dim=0) - 1.0).pow(2).mean()


# --- OOD score -----------------------------------------------------------------------------

def semantic_reconstruction_energy(dae: DenoisingUNet, decoder: SemanticDecoder,
                                   x: torch.Tensor, sigma: SigmaLike, *,
                                   generator: torch.Generator | None = None,
                                   noise: torch.Tensor | None = None) -> torch.Tensor:
    """U^h(x, sigma) = ||x - h(f(x + sigma e, sigma))||^2 / (2 sigma^2): the decoder loss of
    eq. 13 for one image, in the scale of eq. 7.

    Why it exists: the U-Net's skip connections let r restore any pattern of strokes, so U^c
    at a small sigma scores a mirrored or rotated digit like a digit.  h sees the image only
    through the latent, which the encoder learned for the training distribution; an image
    the latent cannot describe comes back as a different image (docs/RESULTS.md, near-OOD).
    The ``texture+semantic`` OOD score (``ScoringConfig.score``) reads both."""
    s = as_sigma_batch(sigma, x.shape[0], x)
    if noise is None:
        noise = draw_noise(x.shape, generator=generator, like=x)
    z = dae.latent(x + s[:, None, None, None] * noise, s)
    return _flat_sq_norm(x - decoder(z).to(x.dtype)) / (2 * s ** 2)


def chunk_texture_scores(dae: DenoisingUNet, chunk: torch.Tensor, noises: torch.Tensor,
                         sigma: torch.Tensor, decoder: SemanticDecoder | None = None
                         ) -> torch.Tensor:
    """-U^c(x, sigma) of each image of ``chunk``, averaged over the shared ``noises`` (eq. 7);
    with ``decoder``, -U^h(x, sigma) instead (``semantic_reconstruction_energy``).

    One forward of chunk x draws rows, image-major (row i*draws + m is image i, draw m).
    ``sigma`` is a 0-d tensor, so that one TorchScript trace of this function
    (``ChunkScorer``) serves every scoring level."""
    draws = noises.shape[0]
    rows = chunk.repeat_interleave(draws, dim=0)
    noise = noises.repeat(chunk.shape[0], 1, 1, 1)
    levels = sigma.expand(rows.shape[0])
    if decoder is None:
        energy = texture_energy(dae, rows, levels, noise=noise)
    else:
        energy = semantic_reconstruction_energy(dae, decoder, rows, levels, noise=noise)
    return -energy.view(-1, draws).mean(dim=1)


class ChunkScorer(torch.nn.Module):
    """``chunk_texture_scores`` as a module, so that the whole chunk (repeat, noise, forward,
    squared norm, mean) can be traced as one graph (``model.pipeline.traced_chunk_scorer``).
    With ``decoder`` it scores -U^h, the semantic reconstruction energy."""

    def __init__(self, dae: DenoisingUNet, decoder: SemanticDecoder | None = None):
        super().__init__()
        self.dae, self.decoder = dae, decoder

    def forward(self, chunk: torch.Tensor, noises: torch.Tensor,
                sigma: torch.Tensor) -> torch.Tensor:
        return chunk_texture_scores(self.dae, chunk, noises, sigma, self.decoder)


# Rows (image x noise draw) per scoring forward, by device type.  A CPU is fastest per image
# with small forwards (cache-resident activations: 64 rows took 17.6 ms per image against 26.0
# for 256 rows, demo model, 2 threads); a GPU wants large ones.
SCORE_ROWS = {"cpu": 64, "cuda": 1024}

ChunkScoreFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def texture_score(dae: DenoisingUNet, x: torch.Tensor, *, sigma: float, draws: int,
                  seed: int, batch_size: int | None = None,
                  chunk_scorer: ChunkScoreFn | None = None,
                  decoder: SemanticDecoder | None = None) -> torch.Tensor:
    """OOD score -U^c(x, sigma) averaged over ``draws`` noise draws (paper 5.2); with
    ``decoder``, the semantic reconstruction score -U^h(x, sigma) the same way.

    The draws come from ``seed`` and are shared by every image (common random numbers), so an
    image's score does not depend on which other images share its request or batch, and
    differences between images are not blurred by independent noise.  Images and draws are
    flattened into one batch of up to ``batch_size`` rows, so a request with a single image
    still runs one forward pass, not ``draws`` of them.  The default row count is per device
    (SCORE_ROWS): on a CPU, forwards of 64 rows stay in cache and score an image ~25% faster
    than forwards of 256 (benchmarks/service_load.py runs, docs/PERFORMANCE.md).

    ``chunk_scorer`` replaces the eager ``chunk_texture_scores(dae, ..., decoder)``, e.g. with
    its trace; it must compute the same thing."""
    if batch_size is None:
        batch_size = SCORE_ROWS.get(x.device.type, SCORE_ROWS["cpu"])
    if chunk_scorer is None:
        chunk_scorer = lambda chunk, noises, s: chunk_texture_scores(  # noqa: E731
            dae, chunk, noises, s, decoder)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    noises = torch.randn((draws, *x.shape[1:]), generator=generator, device=x.device,
                         dtype=x.dtype)
    level = torch.tensor(float(sigma), device=x.device, dtype=x.dtype)
    images_per_chunk = max(1, batch_size // draws)
    scores = [chunk_scorer(x[start:start + images_per_chunk], noises, level)
              for start in range(0, x.shape[0], images_per_chunk)]
    return torch.cat(scores) if scores else torch.zeros(0, device=x.device)
