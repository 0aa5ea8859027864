"""Algorithm 1 of the paper as a flat loop of numbered stages.

One contrastive iteration:
    1. L reconstruction steps: Adam on the DAE loss (eq. 1, phi) and decoder loss (eq. 13).
    2. Negatives: K latent Langevin steps on U^s (eq. 15) from a persistent buffer or N(0, I),
       decode x0 = h(z_K), T pixel Langevin steps on U^c (eq. 16).  Optional shares of the
       pixel chains start elsewhere: a pixel replay buffer, negative augmentations of data
       (model/augment.py) or uniform noise.  Negatives are detached: no gradient flows
       through the chains into the parameters.
    3. Contrastive updates (maximum likelihood):
         phi:   minimise mean U^c(x_data) - mean U^c(x_T)            (gamma frozen)
         gamma: minimise mean U^s(z_data) - mean U^s(z_K)            (phi frozen; optional)
       plus alpha * (E_data^2 + E_neg^2) on per-dimension energies (IGEBM's magnitude penalty).
    4. Adam steps with parameter-gradient-norm clipping.

Choices the paper leaves open, and why (measured in docs/RESULTS.md, "What was tried"):
  - Persistent latent chains (a small replay buffer, PCD-style): each chain continues across
    iterations, so chains of K steps per iteration run hundreds of steps in total and reach
    the model's own low-energy regions; fresh N(0, I) starts keep the buffer diverse.
  - Pixel chains and the contrastive loss use a per-sample sigma drawn from the grid within
    [contrastive_sigma_min, contrastive_sigma_max], bracketing the OOD-scoring sigma (0.05):
    each negative is compared at the sigma its chain ran at.  The latent chain uses
    sigma_latent.
  - Energies enter the contrastive loss per dimension (U / d).  With the preconditioned DAE,
    U^c is O(1) per dimension at every sigma (networks.DenoisingUNet), so levels mix without
    one sigma dominating, and alpha has the same meaning for any image size.
  - The reconstruction steps switch to lr_contrastive_phase once the contrastive phase starts,
    so a fast warm-up rate does not wash out the contrastive updates.
  - Blow-ups stop training with EnergyExplosion instead of writing a NaN checkpoint.

Progress goes through ``on_step_end(StepMetrics)`` so that a Celery task can report it without
this module knowing about Celery (minGPT's callback habit).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

from .augment import negative_augment
from .data import ImageDataset, sample_batch
from .energies import (latent_moment_penalty, reconstruction_losses,
                       semantic_energy, sigma_grid, texture_energy)
from .formats.config import ExperimentConfig
from .formats.errors import Cancelled, UserError
from .networks import DenoisingEBM
from .samplers import CancelFn, latent_chain, pixel_chain


class EnergyExplosion(UserError):
    """Energies became NaN or ran away (training diverged); lower the learning rates or raise
    the penalty."""


@dataclass
class StepMetrics:
    step: int  # steps completed (1-based after the step)
    total_steps: int
    phase: str  # "warmup" or "contrastive"
    losses: dict[str, float] = field(default_factory=dict)
    data_energy: float | None = None  # mean U^c(x_data) per dimension
    negative_energy: float | None = None  # mean U^c(x_T) per dimension
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


StepCallback = Callable[[StepMetrics], None]


class Trainer:
    """Holds everything Algorithm 1 mutates, so that a checkpoint can resume it exactly."""

    def __init__(self, config: ExperimentConfig, dataset: ImageDataset, *,
                 device: str | torch.device = "cpu"):
        config.validate()
        net, train = config.network, config.training
        if dataset.images.shape[1:] != (net.channels, net.image_size, net.image_size):
            raise ValueError(f"dataset images have shape {tuple(dataset.images.shape[1:])}; the "
                             f"model expects {(net.channels, net.image_size, net.image_size)}")
        self.config = config
        self.dataset = dataset
        self.device = torch.device(device)
        # Parameters are initialised from the seed, so a config + seed fixes the whole run.
        torch.manual_seed(train.seed)
        self.model = DenoisingEBM(net).to(self.device)
        self.recon_optimizer = torch.optim.Adam(self.model.parameters(), lr=train.lr,
                                                betas=train.betas)
        self.phi_optimizer = torch.optim.Adam(self.model.dae.parameters(),
                                              lr=train.contrastive_lr,
                                              betas=train.contrastive_betas)
        self.gamma_optimizer = torch.optim.Adam(self.model.decoder.parameters(),
                                                lr=train.contrastive_lr,
                                                betas=train.contrastive_betas)
        self.generator = torch.Generator(device=self.device).manual_seed(train.seed)
        self.data_generator = torch.Generator().manual_seed(train.seed + 1)
        self.grid = sigma_grid(config.noise, device=self.device)
        low, high = train.contrastive_sigma_min, train.contrastive_sigma_max
        mask = (self.grid >= low * (1 - 1e-6)) & (self.grid <= high * (1 + 1e-6))
        self.contrastive_grid = self.grid[mask] if mask.any() else \
            self.grid[(self.grid - (low + high) / 2).abs().argmin()].view(1)
        self.buffer = torch.randn((train.replay_buffer_size, net.latent_dim),
                                  generator=self.generator, device=self.device)
        # Pixel chains start as uniform noise, as in IGEBM's replay buffer.
        self.pixel_buffer = torch.rand((train.pixel_replay_size, net.channels, net.image_size,
                                        net.image_size), generator=self.generator,
                                       device=self.device) * 2 - 1
        self.step = 0

    # -- bookkeeping -------------------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        return self.config.training.warmup_steps + self.config.training.iterations

    @property
    def pixel_dims(self) -> int:
        net = self.config.network
        return net.channels * net.image_size ** 2

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"recon": self.recon_optimizer, "phi": self.phi_optimizer,
                "gamma": self.gamma_optimizer}

    def _batch(self, size: int | None = None) -> torch.Tensor:
        train = self.config.training
        x = sample_batch(self.dataset, size or train.batch_size, generator=self.data_generator,
                         flip=train.flip)
        return x.to(self.device)

    def _random_sigmas(self, grid: torch.Tensor, n: int) -> torch.Tensor:
        index = torch.randint(grid.numel(), (n,), generator=self.generator, device=self.device)
        return grid[index]

    def _clip_and_step(self, optimizer: torch.optim.Optimizer, params) -> float:
        norm = nn.utils.clip_grad_norm_(list(params), self.config.training.grad_clip_norm)
        optimizer.step()
        return float(norm)

    def _check_energy(self, name: str, value: torch.Tensor) -> None:
        limit = self.config.training.max_energy
        v = float(value)
        if not math.isfinite(v) or abs(v) > limit:
            raise EnergyExplosion(
                f"step {self.step}: {name} = {v:.4g} per dimension (limit {limit:g}); training "
                "diverged. Lower contrastive_lr, raise energy_penalty or shorten chains.")

    # -- stage 1: reconstruction -------------------------------------------------------------
    def reconstruction_step(self) -> dict[str, float]:
        """One Adam step on eq. 1 + eq. 13 (+ the latent moment penalty) with per-sample
        sigma from the whole grid."""
        x = self._batch()
        sigma = self._random_sigmas(self.grid, x.shape[0])
        self.recon_optimizer.zero_grad(set_to_none=True)
        loss_dae, loss_dec, z = reconstruction_losses(self.model.dae, self.model.decoder, x,
                                                      sigma, generator=self.generator)
        moments = latent_moment_penalty(z)
        total = loss_dae + loss_dec + self.config.training.latent_moment_weight * moments
        self._check_energy("reconstruction loss", total.detach())
        total.backward()
        self._clip_and_step(self.recon_optimizer, self.model.parameters())
        return {"dae": loss_dae.item(), "decoder": loss_dec.item(),
                "latent_moments": moments.item()}

    # -- stage 2: negatives ------------------------------------------------------------------
    def negatives(self, should_cancel: CancelFn | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (x_T, z_K, sigma per negative).

        Rows of x_T, in order: two-stage chains (K latent steps from the latent buffer or
        N(0, I), decode, T pixel steps), persistent pixel chains continued from the pixel
        buffer, chains from negative augmentations of data, then fresh chains from uniform
        noise.  z_K has one row per two-stage chain."""
        train, net = self.config.training, self.config.network
        n = train.chain_batch_size
        n_noise = int(round(n * train.noise_chain_fraction))
        n_replay = min(int(round(n * train.pixel_replay_fraction)), n - n_noise)
        n_augmented = min(int(round(n * train.augmented_chain_fraction)),
                          n - n_noise - n_replay)
        n_latent = n - n_noise - n_replay - n_augmented
        image_shape = (net.channels, net.image_size, net.image_size)
        self.model.eval()  # no dropout/BN here, but keep the convention explicit
        z0 = torch.randn((n_latent, net.latent_dim), generator=self.generator,
                         device=self.device)
        slots = None
        if train.replay_buffer_size > 0 and n_latent > 0:
            slots = torch.randint(train.replay_buffer_size, (n_latent,),
                                  generator=self.generator, device=self.device)
            reuse = torch.rand(n_latent, generator=self.generator,
                               device=self.device) < train.replay_prob
            z0 = torch.where(reuse[:, None], self.buffer[slots], z0)
        z_k = latent_chain(self.model, z0, steps=train.steps_latent,
                           step_size=train.step_size_latent, sigma=train.sigma_latent,
                           temperature=train.temperature_latent, grad_clip=1000.0,
                           generator=self.generator, should_cancel=should_cancel)
        if slots is not None:
            self.buffer[slots] = z_k
        with torch.no_grad():
            x_latent = self.model.decoder(z_k).clamp(-1, 1)
        pixel_slots = torch.randint(max(train.pixel_replay_size, 1), (n_replay,),
                                    generator=self.generator, device=self.device)
        x_replay = self.pixel_buffer[pixel_slots] if n_replay else x_latent[:0]
        augmented = negative_augment(
            sample_batch(self.dataset, n_augmented, generator=self.data_generator,
                         flip=train.flip), train.negative_augmentations,
            generator=self.data_generator).to(self.device) if n_augmented else x_latent[:0]
        noise_start = torch.rand((n_noise, *image_shape), generator=self.generator,
                                 device=self.device) * 2 - 1
        x0 = torch.cat([x_latent, x_replay, augmented, noise_start])
        sigma = self._random_sigmas(self.contrastive_grid, n)
        x_t = pixel_chain(self.model, x0, steps=train.steps_pixel,
                          step_size=train.step_size_pixel, sigma=sigma,
                          temperature=train.temperature_pixel, grad_clip=1000.0, clamp=True,
                          generator=self.generator, should_cancel=should_cancel)
        if train.pixel_replay_size > 0:
            # Replayed chains go back to their slots; new chains replace random slots, which
            # is the buffer's re-initialisation (IGEBM's 5% restarts, here from two-stage).
            fresh = torch.cat([x_t[:n_latent], x_t[n_latent + n_replay:]])  # two-stage, aug, noise
            fresh_slots = torch.randint(train.pixel_replay_size, (fresh.shape[0],),
                                        generator=self.generator, device=self.device)
            self.pixel_buffer[fresh_slots] = fresh
            if n_replay:
                self.pixel_buffer[pixel_slots] = x_t[n_latent:n_latent + n_replay]
        self.model.train()
        return x_t.detach(), z_k.detach(), sigma

    # -- stage 3: contrastive updates --------------------------------------------------------
    def contrastive_step(self, x_neg: torch.Tensor, z_neg: torch.Tensor,
                         sigma_neg: torch.Tensor) -> dict[str, float]:
        train = self.config.training
        alpha, d = train.energy_penalty, self.pixel_dims
        n_from_latent = z_neg.shape[0]
        x_data = self._batch(x_neg.shape[0])
        sigma_data = self._random_sigmas(self.contrastive_grid, x_data.shape[0])

        # phi: lower U^c on data, raise it on negatives (gamma untouched: x_neg is detached).
        self.phi_optimizer.zero_grad(set_to_none=True)
        e_data = texture_energy(self.model.dae, x_data, sigma_data, generator=self.generator) / d
        e_neg = texture_energy(self.model.dae, x_neg, sigma_neg, generator=self.generator) / d
        self._check_energy("data energy", e_data.mean().detach())
        self._check_energy("negative energy", e_neg.mean().detach())
        loss_phi = train.contrastive_weight * (e_data.mean() - e_neg.mean())
        penalty_phi = alpha * (e_data.pow(2).mean() + e_neg.pow(2).mean())
        (loss_phi + penalty_phi).backward()
        self._clip_and_step(self.phi_optimizer, self.model.dae.parameters())

        # gamma: lower U^s at data latents, raise it at chain ends (phi frozen).
        gamma = self._semantic_contrastive(x_data, z_neg) \
            if train.semantic_contrastive_weight > 0 else {}
        losses = {"contrastive_phi": loss_phi.item(), "penalty": penalty_phi.item(),
                  "data_energy": e_data.mean().item(), "negative_energy": e_neg.mean().item(),
                  **gamma}
        # Diagnostics: two-stage chains versus persistent and noise-started pixel chains.
        if n_from_latent:
            losses["negative_energy_two_stage"] = e_neg[:n_from_latent].mean().item()
        if n_from_latent < e_neg.shape[0]:
            losses["negative_energy_other_chains"] = e_neg[n_from_latent:].mean().item()
        return losses

    def _semantic_contrastive(self, x_data: torch.Tensor, z_neg: torch.Tensor
                              ) -> dict[str, float]:
        train = self.config.training
        alpha, d = train.energy_penalty, self.pixel_dims
        self.gamma_optimizer.zero_grad(set_to_none=True)
        for p in self.model.dae.parameters():
            p.requires_grad_(False)
        try:
            sigma_latent = train.sigma_latent
            with torch.no_grad():
                noisy = x_data + sigma_latent * torch.randn(
                    x_data.shape, generator=self.generator, device=self.device)
                z_data = self.model.dae.latent(noisy, torch.full(
                    (x_data.shape[0],), sigma_latent, device=self.device))
            es_data = semantic_energy(self.model.dae, self.model.decoder, z_data, sigma_latent,
                                      generator=self.generator) / d
            if z_neg.shape[0] > 0:
                es_neg = semantic_energy(self.model.dae, self.model.decoder, z_neg,
                                         sigma_latent, generator=self.generator) / d
            else:
                es_neg = torch.zeros(1, device=self.device)
            loss = train.semantic_contrastive_weight * (es_data.mean() - es_neg.mean())
            penalty = alpha * (es_data.pow(2).mean() + es_neg.pow(2).mean())
            (loss + penalty).backward()
            self._clip_and_step(self.gamma_optimizer, self.model.decoder.parameters())
        finally:
            for p in self.model.dae.parameters():
                p.requires_grad_(True)
        return {"contrastive_gamma": loss.item(), "semantic_penalty": penalty.item(),
                "semantic_data_energy": es_data.mean().item(),
                "semantic_negative_energy": es_neg.mean().item()}

    # -- one step, then the loop -------------------------------------------------------------
    def train_step(self, should_cancel: CancelFn | None = None) -> StepMetrics:
        start = time.perf_counter()
        train = self.config.training
        self.model.train()
        warm = self.step < train.warmup_steps
        # Stateless lr choice per phase, so resuming mid-run reproduces it exactly.
        recon_lr = train.lr if warm or train.lr_contrastive_phase is None \
            else train.lr_contrastive_phase
        for group in self.recon_optimizer.param_groups:
            group["lr"] = recon_lr
        if warm:
            losses = self.reconstruction_step()
            metrics = StepMetrics(step=self.step + 1, total_steps=self.total_steps,
                                  phase="warmup", losses=losses)
        else:
            recon: dict[str, float] = {}
            for _ in range(train.recon_steps):
                recon = self.reconstruction_step()
            x_neg, z_neg, sigma_neg = self.negatives(should_cancel)  # may raise Cancelled
            contrast = self.contrastive_step(x_neg, z_neg, sigma_neg)
            metrics = StepMetrics(step=self.step + 1, total_steps=self.total_steps,
                                  phase="contrastive", losses={**recon, **contrast},
                                  data_energy=contrast["data_energy"],
                                  negative_energy=contrast["negative_energy"])
        self.step += 1
        metrics.seconds = time.perf_counter() - start
        return metrics

    def run(self, *, until_step: int | None = None, on_step_end: StepCallback | None = None,
            should_cancel: CancelFn | None = None) -> None:
        """Train until ``until_step`` (default: the configured total)."""
        target = self.total_steps if until_step is None else min(until_step, self.total_steps)
        while self.step < target:
            if should_cancel is not None and should_cancel():
                raise Cancelled("training cancelled")
            metrics = self.train_step(should_cancel)
            if on_step_end is not None:
                on_step_end(metrics)

    # -- exact resume ------------------------------------------------------------------------
    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Everything needed to resume, split into tensors and JSON-able metadata."""
        tensors: dict[str, torch.Tensor] = {
            "rng.generator": self.generator.get_state(),
            "rng.data_generator": self.data_generator.get_state(),
            "replay.buffer": self.buffer.detach().cpu(),
            "replay.pixel_buffer": self.pixel_buffer.detach().cpu(),
        }
        meta: dict = {"step": self.step, "optimizers": {}}
        for name, optimizer in self._optimizers().items():
            state = optimizer.state_dict()
            meta["optimizers"][name] = {"param_groups": state["param_groups"], "state": {}}
            for pid, values in state["state"].items():
                keys = []
                for key, value in values.items():
                    if isinstance(value, torch.Tensor):
                        tensors[f"optim.{name}.{pid}.{key}"] = value.detach().cpu()
                        keys.append(key)
                meta["optimizers"][name]["state"][str(pid)] = keys
        return tensors, meta

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], meta: dict, *,
                           strict_buffers: bool = True) -> None:
        """Restore optimizer, RNG, buffers and step.  With ``strict_buffers=False`` (starting a
        new config from another run) a replay buffer whose size changed starts afresh."""
        self.generator.set_state(tensors["rng.generator"])
        self.data_generator.set_state(tensors["rng.data_generator"])
        for key, attribute in (("replay.buffer", "buffer"),
                               ("replay.pixel_buffer", "pixel_buffer")):
            current = getattr(self, attribute)
            saved = tensors.get(key)
            if saved is not None and saved.shape == current.shape:
                setattr(self, attribute, saved.to(self.device))
            elif strict_buffers:
                raise ValueError(f"{key} in the checkpoint is missing or has the wrong shape")
        for name, optimizer in self._optimizers().items():
            saved = meta["optimizers"][name]
            # load_state_dict moves moments to the parameters' device and keeps "step" where
            # Adam wants it.
            state = {int(pid): {key: tensors[f"optim.{name}.{pid}.{key}"] for key in keys}
                     for pid, keys in saved["state"].items()}
            optimizer.load_state_dict({"param_groups": saved["param_groups"], "state": state})
        # Saved param_groups carry the saving run's lr and betas; this run's config wins (equal
        # on an exact resume, different when a new config starts from another run's state).
        train = self.config.training
        for optimizer, lr, betas in ((self.recon_optimizer, train.lr, train.betas),
                                     (self.phi_optimizer, train.contrastive_lr,
                                      train.contrastive_betas),
                                     (self.gamma_optimizer, train.contrastive_lr,
                                      train.contrastive_betas)):
            for group in optimizer.param_groups:
                group["lr"], group["betas"] = lr, tuple(betas)
        self.step = int(meta["step"])
