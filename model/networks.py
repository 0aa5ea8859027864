"""Networks of the Denoising-EBM (paper 4.1): a noise-conditioned U-Net DAE and a semantic decoder.

The networks know nothing of energies, noise draws or sampling (that lives in energies.py and
samplers.py), following lucidrains/denoising-diffusion-pytorch.

    r_phi(x~, sigma) = g_beta(f_alpha(x~, sigma))      the DAE
    z                = f_alpha(x~, sigma)              flat latent at the bottleneck
    h_gamma(z)                                          semantic decoder, z alone, no skips

The U-Net decoder g consumes z (projected back to the bottleneck grid) together with skip
connections from the finer encoder levels.  The coarsest level has no skip, so global content
must pass through z; this is what makes z a semantic code that h can decode.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .formats.config import NetworkConfig


def sigma_embedding(sigma: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of log(sigma): noise levels span two decades, so log is the natural
    coordinate.  sigma has shape (B,)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=sigma.device, dtype=sigma.dtype)
                      * (-math.log(100.0) / max(half - 1, 1)))
    # Frequencies 10 .. 0.1 per unit of log(sigma): adjacent grid levels (0.036 apart) stay
    # distinguishable without the top frequencies aliasing.
    angles = torch.log(sigma)[:, None] * 10.0 * freqs[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv residual block; the sigma embedding shifts the hidden features."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch) if emb_dim else None
        self.norm2 = nn.GroupNorm(min(groups, out_ch), out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.emb is not None and emb is not None:
            h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class DenoisingUNet(nn.Module):
    """r_phi(x~, sigma) from the U-Net F, by ``config.preconditioning``:

        "edm":  r = c_skip(sigma) x~ + c_out(sigma) F(c_in(sigma) x~, sigma)  (Karras et al. 2022)
        "none": r = F(x~, sigma)                                            (the paper, 4.1)

    "edm" keeps the network's input and target at unit scale for every sigma in [0.01, 1], so
    one set of weights denoises well across the whole grid, and U^c stays O(1) per dimension
    at every sigma: in effect a stabiliser, which is why `paper` turns it off.  Either way
    eq. 7 is unchanged: the texture energy is ||x - r||^2 / (2 sigma^2) of this r.
    """

    def __init__(self, config: NetworkConfig):
        super().__init__()
        config.validate()
        self.config = config
        c, emb_dim, groups = config.channels, config.embedding_dim, config.groups
        widths = [config.base_width * m for m in config.channel_mults]
        self.emb_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim * 2), nn.SiLU(),
                                     nn.Linear(emb_dim * 2, emb_dim))
        self.stem = nn.Conv2d(c, widths[0], 3, padding=1)

        # Encoder f_alpha: blocks per level, stride-2 conv between levels.
        self.down_blocks = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        prev = widths[0]
        for level, width in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(config.blocks_per_level):
                blocks.append(ResBlock(prev, width, emb_dim, groups))
                prev = width
            self.down_blocks.append(blocks)
            if level < len(widths) - 1:
                self.downsamples.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
        self.bottom_size = config.image_size // 2 ** (len(widths) - 1)
        bottom_features = widths[-1] * self.bottom_size ** 2
        self.to_latent = nn.Sequential(nn.GroupNorm(min(groups, widths[-1]), widths[-1]),
                                       nn.SiLU(), nn.Flatten(),
                                       nn.Linear(bottom_features, config.latent_dim))
        # Decoder g_beta: z -> bottleneck grid, then up through levels with encoder skips.
        self.from_latent = nn.Linear(config.latent_dim, bottom_features)
        self.mid = ResBlock(widths[-1], widths[-1], emb_dim, groups)
        self.up_blocks = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        prev = widths[-1]
        for level in reversed(range(len(widths))):
            width = widths[level]
            blocks = nn.ModuleList()
            for i in range(config.blocks_per_level):
                # The coarsest level has no skip: its content must come through z.
                skip = width if level < len(widths) - 1 and i == 0 else 0
                blocks.append(ResBlock(prev + skip, width, emb_dim, groups))
                prev = width
            self.up_blocks.append(blocks)
            if level > 0:
                self.upsamples.append(nn.Conv2d(width, widths[level - 1], 3, padding=1))
                prev = widths[level - 1]
        self.out_norm = nn.GroupNorm(min(groups, widths[0]), widths[0])
        self.out_conv = nn.Conv2d(widths[0], c, 3, padding=1)

    # -- preconditioning ---------------------------------------------------------------------
    @property
    def preconditioned(self) -> bool:
        return self.config.preconditioning == "edm"

    def _coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(c_skip, c_out, c_in) of the "edm" preconditioning, per sample, (B, 1, 1, 1)."""
        sd = self.config.sigma_data
        s = sigma[:, None, None, None]
        c_skip = sd ** 2 / (s ** 2 + sd ** 2)
        c_out = s * sd / torch.sqrt(s ** 2 + sd ** 2)
        c_in = 1.0 / torch.sqrt(s ** 2 + sd ** 2)
        return c_skip, c_out, c_in

    def _embed(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.emb_mlp(sigma_embedding(sigma, self.config.embedding_dim))

    # -- f_alpha -----------------------------------------------------------------------------
    def encode(self, noisy: torch.Tensor, sigma: torch.Tensor
               ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Return (z, skips, embedding) for noisy images x~ at per-sample noise levels sigma."""
        emb = self._embed(sigma)
        h = self.stem(noisy * self._coefficients(sigma)[2] if self.preconditioned else noisy)
        skips = []
        for level, blocks in enumerate(self.down_blocks):
            for block in blocks:
                h = block(h, emb)
            if level < len(self.downsamples):
                skips.append(h)
                h = self.downsamples[level](h)
        return self.to_latent(h), skips, emb

    def latent(self, noisy: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.encode(noisy, sigma)[0]

    # -- g_beta ------------------------------------------------------------------------------
    def decode(self, z: torch.Tensor, skips: list[torch.Tensor], emb: torch.Tensor
               ) -> torch.Tensor:
        widths = [self.config.base_width * m for m in self.config.channel_mults]
        h = self.from_latent(z).view(z.shape[0], widths[-1], self.bottom_size, self.bottom_size)
        h = self.mid(h, emb)
        pending = list(skips)
        for i, blocks in enumerate(self.up_blocks):
            for j, block in enumerate(blocks):
                if i > 0 and j == 0:
                    h = torch.cat([h, pending.pop()], dim=1)
                h = block(h, emb)
            if i < len(self.upsamples):
                h = F.interpolate(h, scale_factor=2, mode="nearest")
                h = self.upsamples[i](h)
        return self.out_conv(F.silu(self.out_norm(h)))

    def denoise_from(self, noisy: torch.Tensor, sigma: torch.Tensor, z: torch.Tensor,
                     skips: list[torch.Tensor], emb: torch.Tensor) -> torch.Tensor:
        """r from an encoder pass already made (lets the training losses share it)."""
        if not self.preconditioned:
            return self.decode(z, skips, emb)
        c_skip, c_out, _ = self._coefficients(sigma)
        return c_skip * noisy + c_out * self.decode(z, skips, emb)

    def forward(self, noisy: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """r_phi(x~, sigma): the denoised estimate of x."""
        z, skips, emb = self.encode(noisy, sigma)
        return self.denoise_from(noisy, sigma, z, skips, emb)


class SemanticDecoder(nn.Module):
    """h_gamma(z): a plain upsampling ResNet decoder from the latent alone (paper 4.1)."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        config.validate()
        self.config = config
        levels = len(config.channel_mults)
        width, groups = config.decoder_width, config.groups
        self.bottom_size = config.image_size // 2 ** (levels - 1)
        self.inp = nn.Linear(config.latent_dim, width * self.bottom_size ** 2)
        self.blocks = nn.ModuleList(ResBlock(width, width, 0, groups) for _ in range(levels))
        self.out_norm = nn.GroupNorm(min(groups, width), width)
        self.out_conv = nn.Conv2d(width, config.channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        width = self.config.decoder_width
        h = self.inp(z).view(z.shape[0], width, self.bottom_size, self.bottom_size)
        for i, block in enumerate(self.blocks):
            if i > 0:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = block(h)
        return self.out_conv(F.silu(self.out_norm(h)))


class DenoisingEBM(nn.Module):
    """Container for both networks; parameter groups phi (DAE) and gamma (decoder)."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.config = config
        self.dae = DenoisingUNet(config)
        self.decoder = SemanticDecoder(config)

    def parameter_count(self) -> dict[str, int]:
        return {"dae": sum(p.numel() for p in self.dae.parameters()),
                "decoder": sum(p.numel() for p in self.decoder.parameters())}
