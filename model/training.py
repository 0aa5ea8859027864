"""Algorithm 1 of the paper as a flat loop of numbered stages.

One contrastive iteration:
    1. L reconstruction steps: Adam on the DAE loss (eq. 1, phi) and decoder loss (eq. 13;
       gamma only unless training.decoder_trains_encoder, Algorithm 1 line 4).
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
  - Energies enter the contrastive loss per dimension (U / d).  With the EDM-preconditioned
    DAE (network.preconditioning "edm"), U^c is O(1) per dimension at every sigma
    (networks.DenoisingUNet), so levels mix without one sigma dominating, and alpha has the
    same meaning for any image size.
  - The reconstruction steps switch to lr_contrastive_phase once the contrastive phase starts,
    so a fast warm-up rate does not wash out the contrastive updates.
  - Blow-ups stop training with EnergyExplosion instead of writing a NaN checkpoint.

The order of the Trainer's random draws is a contract (a resumed run equals an uninterrupted
one, and data-parallel ranks draw the global batch's numbers and keep their own rows,
model/distributed.py), so the stages stay together here; the shared pieces live apart
(energies, samplers, augment, distributed, and the resumable state in trainer_state.py).

Progress goes through ``on_step_end(StepMetrics)``, so a Celery task reports it without this
module knowing Celery (minGPT's callback habit).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

from .augment import negative_augment
from .data import ImageDataset, sample_batch, to_model_range
from .distributed import (SINGLE, DistContext, RankDraws, all_reduce_grads, gather_rows,
                          latent_moment_surrogate)
from .energies import (as_sigma_batch, latent_moment_penalty, reconstruction_losses,
                       semantic_energy, sigma_grid, texture_energy)
from .formats.config import ConfigError, ExperimentConfig
from .formats.errors import Cancelled, UserError
from .networks import DenoisingEBM
from .samplers import CancelFn, latent_chain, pixel_chain, precision_context
from .trainer_state import restore_trainer_state, trainer_state


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
    """Holds everything Algorithm 1 mutates, so that a checkpoint can resume it exactly.

    With ``dist`` (model/distributed.py) the trainer is one rank of a data-parallel run: random
    tensors are drawn at the global batch size on every rank and each rank computes its own
    rows, so N ranks reproduce one process with the same total batch."""

    def __init__(self, config: ExperimentConfig, dataset: ImageDataset, *,
                 device: str | torch.device = "cpu", dist: DistContext = SINGLE):
        config.validate()
        net, train = config.network, config.training
        if dataset.images.shape[1:] != (net.channels, net.image_size, net.image_size):
            raise ValueError(f"dataset images have shape {tuple(dataset.images.shape[1:])}; the "
                             f"model expects {(net.channels, net.image_size, net.image_size)}")
        if train.freeze_dae and dist.active:
            raise ConfigError("freeze_dae (a decoder refit) runs in one process, not data-parallel")
        self.config = config
        self.dataset = dataset
        self.device = torch.device(device)
        self.dist = dist
        # Parameters are initialised from the seed, so a config + seed fixes the whole run.
        torch.manual_seed(train.seed)
        self.model = DenoisingEBM(net).to(self.device)
        self.recon_optimizer = torch.optim.Adam(self.model.parameters(), lr=train.lr,
                                                betas=train.betas)
        self.phi_optimizer = torch.optim.Adam(self.model.dae.parameters(),
                                              lr=train.contrastive_lr,
                                              betas=train.contrastive_betas)
        self.gamma_optimizer = torch.optim.Adam(self.model.decoder.parameters(),
                                                lr=self.semantic_lr,
                                                betas=train.contrastive_betas)
        self.generator = torch.Generator(device=self.device).manual_seed(train.seed)
        self.draws = RankDraws(dist, self.generator, self.device)
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
        # Batches go to a GPU as uint8 from pinned memory by an asynchronous copy.
        self._pinned = self.device.type == "cuda"
        self.step = 0

    # -- bookkeeping -------------------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        return self.config.training.warmup_steps + self.config.training.iterations

    @property
    def semantic_lr(self) -> float:
        train = self.config.training
        return train.contrastive_lr if train.semantic_contrastive_lr is None \
            else train.semantic_contrastive_lr

    @property
    def pixel_dims(self) -> int:
        net = self.config.network
        return net.channels * net.image_size ** 2

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The three Adam optimizers by the name a checkpoint stores them under."""
        return {"recon": self.recon_optimizer, "phi": self.phi_optimizer,
                "gamma": self.gamma_optimizer}

    def _batch(self, size: int | None = None) -> torch.Tensor:
        """This rank's rows of a global mini-batch in [-1, 1] (sample_batch's random draws:
        indices, then flips)."""
        train = self.config.training
        n = size or train.batch_size
        index = torch.randint(len(self.dataset), (n,), generator=self.data_generator)
        flips = torch.rand(n, generator=self.data_generator) < 0.5 if train.flip else None
        start, stop = self.dist.bounds(n)
        images = self.dataset.images[index[start:stop]]
        if self._pinned:
            images = images.pin_memory()
        x = to_model_range(images.to(self.device, non_blocking=self._pinned))
        if flips is not None:
            mask = flips[start:stop].to(self.device, non_blocking=self._pinned)
            x = torch.where(mask[:, None, None, None], x.flip(-1), x)
        return x

    def _clip_and_step(self, optimizer: torch.optim.Optimizer, params) -> None:
        params = list(params)
        all_reduce_grads(self.dist, params)
        clip = self.config.training.grad_clip_norm
        if clip > 0:  # the norm stays on the device: no host round trip per update
            nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()

    def _check_energy(self, name: str, value: torch.Tensor) -> None:
        limit, v = self.config.training.max_energy, float(value)
        if not math.isfinite(v) or abs(v) > limit:
            raise EnergyExplosion(
                f"step {self.step}: {name} = {v:.4g} per dimension (limit {limit:g}); training "
                "diverged. Lower contrastive_lr, raise energy_penalty or shorten chains.")

    # -- stage 1: reconstruction -------------------------------------------------------------
    def reconstruction_step(self) -> dict[str, float]:
        """One Adam step on eq. 1 + eq. 13 (+ the latent moment penalty) with per-sample
        sigma from the whole grid."""
        train = self.config.training
        n = train.batch_size
        x = self._batch()
        sigma = self.dist.rows(self.draws.sigmas(self.grid, n))
        self.recon_optimizer.zero_grad(set_to_none=True)
        if train.freeze_dae:
            return self._decoder_refit_step(x, sigma)
        if not self.dist.active:
            loss_dae, loss_dec, z = reconstruction_losses(
                self.model.dae, self.model.decoder, x, sigma, generator=self.generator,
                weighting=train.dae_loss_weighting,
                decoder_trains_encoder=train.decoder_trains_encoder)
            moments = latent_moment_penalty(z)
            moment_term = moments
        else:
            per_dae, per_dec, z = reconstruction_losses(
                self.model.dae, self.model.decoder, x, sigma, noise=self.draws.normal(
                    (n, *x.shape[1:])), weighting=train.dae_loss_weighting, per_sample=True,
                decoder_trains_encoder=train.decoder_trains_encoder)
            loss_dae, loss_dec = per_dae.sum() / n, per_dec.sum() / n
            moments, moment_term = latent_moment_surrogate(self.dist, z, n)
        total = loss_dae + loss_dec + train.latent_moment_weight * moment_term
        report = self.draws.report({"dae": loss_dae, "decoder": loss_dec})
        moments = float(moments.detach())
        self._check_energy("reconstruction loss", torch.tensor(
            report["dae"] + report["decoder"] + train.latent_moment_weight * moments))
        total.backward()
        self._clip_and_step(self.recon_optimizer, self.model.parameters())
        return {**report, "latent_moments": moments}

    def _decoder_refit_step(self, x: torch.Tensor, sigma: torch.Tensor) -> dict[str, float]:
        """Eq. 13 for gamma alone: the encoder's latents are inputs, not parameters, so the
        DAE (and U^c) does not move.  Parameters without a gradient are skipped by Adam."""
        noise = self.draws.normal(tuple(x.shape))
        with torch.no_grad():
            loss_dae, _, z = reconstruction_losses(
                self.model.dae, self.model.decoder, x, sigma, noise=noise,
                weighting=self.config.training.dae_loss_weighting)
        loss_dec = (self.model.decoder(z) - x).flatten(1).pow(2).mean()
        report = self.draws.report({"dae": loss_dae, "decoder": loss_dec})
        self._check_energy("reconstruction loss", torch.tensor(report["decoder"]))
        loss_dec.backward()
        self._clip_and_step(self.recon_optimizer, self.model.decoder.parameters())
        return {**report, "latent_moments": float(latent_moment_penalty(z))}

    # -- stage 2: negatives ------------------------------------------------------------------
    def negatives(self, should_cancel: CancelFn | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (x_T, z_K, sigma per negative).

        Rows of x_T, in order: two-stage chains (K latent steps from the latent buffer or
        N(0, I), decode, T pixel steps), persistent pixel chains continued from the pixel
        buffer, chains from negative augmentations of data, then fresh chains from uniform
        noise.  z_K has one row per two-stage chain.  With shared_sigma (the paper) sample i's
        latent and pixel chains both run at sigma_i.

        In a data-parallel run x_T holds this rank's rows only; z_K and sigma are global."""
        train = self.config.training
        n = train.chain_batch_size
        n_noise = int(round(n * train.noise_chain_fraction))
        n_replay = min(int(round(n * train.pixel_replay_fraction)), n - n_noise)
        n_augmented = min(int(round(n * train.augmented_chain_fraction)),
                          n - n_noise - n_replay)
        n_latent = n - n_noise - n_replay - n_augmented
        self.model.eval()  # no dropout/BN here, but keep the convention explicit
        z_k, sigma = self._latent_chains(n_latent, n, should_cancel)
        with torch.no_grad():
            x_latent = self.model.decoder(z_k)
            if train.clamp_chains:
                x_latent = x_latent.clamp(-1, 1)
        pixel_slots = torch.randint(max(train.pixel_replay_size, 1), (n_replay,),
                                    generator=self.generator, device=self.device)
        x_replay = self.pixel_buffer[pixel_slots] if n_replay else x_latent[:0]
        augmented = negative_augment(
            sample_batch(self.dataset, n_augmented, generator=self.data_generator,
                         flip=train.flip), train.negative_augmentations,
            generator=self.data_generator).to(self.device) if n_augmented else x_latent[:0]
        noise_start = torch.rand((n_noise, *x_latent.shape[1:]), generator=self.generator,
                                 device=self.device) * 2 - 1
        x0 = torch.cat([x_latent, x_replay, augmented, noise_start])
        if sigma is None:
            sigma = self.draws.sigmas(self.contrastive_grid, n)
        x_t = pixel_chain(self.model, self.dist.rows(x0), steps=train.steps_pixel,
                          step_size=train.step_size_pixel, sigma=self.dist.rows(sigma),
                          temperature=train.temperature_pixel,
                          grad_clip=train.chain_grad_clip or None, clamp=train.clamp_chains,
                          generator=self.generator, should_cancel=should_cancel,
                          noise_fn=self.draws.chain_noise(n))
        if train.pixel_replay_size > 0:
            self._refill_pixel_buffer(gather_rows(self.dist, x_t, n), n_latent, n_replay,
                                      pixel_slots)
        self.model.train()
        return x_t.detach(), z_k.detach(), sigma

    def _latent_chains(self, n_latent: int, n: int, should_cancel: CancelFn | None
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Stage 2's first half: z_K of ``n_latent`` latent chains (eq. 15) from the latent
        replay buffer or N(0, I), written back to the buffer, and the n chains' shared
        sigma_i when shared_sigma (None otherwise: the pixel chains draw theirs later)."""
        train, net = self.config.training, self.config.network
        z0 = torch.randn((n_latent, net.latent_dim), generator=self.generator,
                         device=self.device)
        slots = None
        if train.replay_buffer_size > 0 and n_latent > 0:
            slots = torch.randint(train.replay_buffer_size, (n_latent,),
                                  generator=self.generator, device=self.device)
            reuse = torch.rand(n_latent, generator=self.generator,
                               device=self.device) < train.replay_prob
            z0 = torch.where(reuse[:, None], self.buffer[slots], z0)
        # The paper's per-sample sigma_i is drawn before the chains (it sets their energy);
        # the stabilised path draws the pixel chains' sigma after them, as it always has.
        sigma = self.draws.sigmas(self.contrastive_grid, n) if train.shared_sigma else None
        sigma_latent = sigma[:n_latent] if sigma is not None else train.sigma_latent
        if self.dist.active:
            start, stop = self.dist.bounds(n_latent)
            z_local = z0[start:stop]
            if sigma is not None:
                sigma_latent = sigma_latent[start:stop]
        else:
            z_local = z0
        z_k = latent_chain(self.model, z_local, steps=train.steps_latent,
                           step_size=train.step_size_latent, sigma=sigma_latent,
                           temperature=train.temperature_latent,
                           grad_clip=train.chain_grad_clip or None, generator=self.generator,
                           should_cancel=should_cancel, noise_fn=self.draws.chain_noise(n_latent))
        z_k = gather_rows(self.dist, z_k, n_latent)
        if slots is not None:
            self.buffer[slots] = z_k
        return z_k, sigma

    def _refill_pixel_buffer(self, x_all: torch.Tensor, n_latent: int, n_replay: int,
                             pixel_slots: torch.Tensor) -> None:
        """Replayed chains go back to their slots; new chains replace random slots, which is
        the buffer's re-initialisation (IGEBM's 5% restarts, here from two-stage)."""
        fresh = torch.cat([x_all[:n_latent], x_all[n_latent + n_replay:]])
        fresh_slots = torch.randint(self.config.training.pixel_replay_size, (fresh.shape[0],),
                                    generator=self.generator, device=self.device)
        self.pixel_buffer[fresh_slots] = fresh
        if n_replay:
            self.pixel_buffer[pixel_slots] = x_all[n_latent:n_latent + n_replay]

    # -- stage 3: contrastive updates --------------------------------------------------------
    def contrastive_step(self, x_neg: torch.Tensor, z_neg: torch.Tensor,
                         sigma_neg: torch.Tensor) -> dict[str, float]:
        """Maximum-likelihood updates of phi (U^c) and gamma (U^s).

        x_neg holds this rank's rows of the negatives (all of them in one process); z_neg and
        sigma_neg are global.  With simultaneous_updates (the paper) both gradients are taken
        at the current parameters and then both Adam steps run; otherwise phi steps first and
        the gamma gradient sees the updated DAE."""
        train = self.config.training
        alpha, n, n_from_latent = train.energy_penalty, sigma_neg.shape[0], z_neg.shape[0]
        start, stop = self.dist.bounds(n)
        x_data = self._batch(n)
        sigma_local = sigma_neg[start:stop]
        sigma_data = sigma_local if train.shared_sigma else \
            self.dist.rows(self.draws.sigmas(self.contrastive_grid, n))

        # phi: lower U^c on data, raise it on negatives (gamma untouched: x_neg is detached).
        self.phi_optimizer.zero_grad(set_to_none=True)
        e_data = self._texture_energy_per_dim(x_data, sigma_data, n)
        e_neg = self._texture_energy_per_dim(x_neg, sigma_local, n)
        mean = self.draws.mean
        loss_phi = train.contrastive_weight * (mean(e_data, n) - mean(e_neg, n))
        penalty_phi = alpha * (mean(e_data.pow(2), n) + mean(e_neg.pow(2), n))
        local_latent = max(0, min(stop, n_from_latent) - start)
        stats = {"data_energy": mean(e_data, n), "negative_energy": mean(e_neg, n),
                 "contrastive_phi": loss_phi, "penalty": penalty_phi,
                 "two_stage": mean(e_neg[:local_latent], n_from_latent),
                 "other": mean(e_neg[local_latent:], n - n_from_latent)}
        if not n_from_latent:
            del stats["two_stage"]
        if n_from_latent == n:
            del stats["other"]
        report = self.draws.report(stats)
        self._check_energy("data energy", torch.tensor(report["data_energy"]))
        self._check_energy("negative energy", torch.tensor(report["negative_energy"]))
        (loss_phi + penalty_phi).backward()
        simultaneous = train.simultaneous_updates
        if not simultaneous:
            self._clip_and_step(self.phi_optimizer, self.model.dae.parameters())

        # gamma: lower U^s at data latents, raise it at chain ends (phi frozen).
        gamma = self._semantic_contrastive(x_data, z_neg, sigma_neg, sigma_data) \
            if train.semantic_contrastive_weight > 0 else {}
        if simultaneous:
            # Both gradients exist now, taken at the same parameters: update both.
            self._clip_and_step(self.phi_optimizer, self.model.dae.parameters())
            if gamma:
                self._clip_and_step(self.gamma_optimizer, self.model.decoder.parameters())
        losses = {key: report[key] for key in ("contrastive_phi", "penalty", "data_energy",
                                               "negative_energy")}
        losses.update(gamma)
        # Diagnostics: two-stage chains versus persistent and noise-started pixel chains.
        if n_from_latent:
            losses["negative_energy_two_stage"] = report["two_stage"]
        if n_from_latent < n:
            losses["negative_energy_other_chains"] = report["other"]
        return losses

    def _texture_energy_per_dim(self, x: torch.Tensor, sigma: torch.Tensor, n: int
                                ) -> torch.Tensor:
        """U^c(x, sigma) / d (eq. 7) of this rank's rows; a data-parallel run draws the noise
        at the global size n and keeps its rows."""
        noise = self.draws.normal((n, *x.shape[1:])) if self.dist.active else None
        return texture_energy(self.model.dae, x, sigma, generator=self.generator,
                              noise=noise) / self.pixel_dims

    def _semantic_contrastive(self, x_data: torch.Tensor, z_neg: torch.Tensor,
                              sigma_neg: torch.Tensor, sigma_data: torch.Tensor
                              ) -> dict[str, float]:
        """The gamma gradient (and, unless simultaneous_updates, its Adam step)."""
        train = self.config.training
        alpha, d = train.energy_penalty, self.pixel_dims
        net = self.config.network
        n, n_latent = sigma_neg.shape[0], z_neg.shape[0]
        self.gamma_optimizer.zero_grad(set_to_none=True)
        for p in self.model.dae.parameters():
            p.requires_grad_(False)
        try:
            if train.shared_sigma:
                s_data, s_neg = sigma_data, self.dist.rows(sigma_neg[:n_latent])
                s_data4 = s_data[:, None, None, None]
            else:
                s_data = s_neg = s_data4 = train.sigma_latent
            image = (net.channels, net.image_size, net.image_size)
            with torch.no_grad():
                noisy = x_data + s_data4 * self.draws.normal((n, *image))
                z_data = self.model.dae.latent(noisy, as_sigma_batch(s_data, x_data.shape[0],
                                                                     x_data))
            z_local = self.dist.rows(z_neg)
            es_data = semantic_energy(self.model.dae, self.model.decoder, z_data, s_data,
                                      generator=self.generator,
                                      noise=self.draws.normal((n, *image))
                                      if self.dist.active else None) / d
            if n_latent > 0:
                es_neg = semantic_energy(self.model.dae, self.model.decoder, z_local, s_neg,
                                         generator=self.generator,
                                         noise=self.draws.normal((n_latent, *image))
                                         if self.dist.active else None) / d
            else:
                es_neg = torch.zeros(1, device=self.device)
            m = max(n_latent, 1)
            mean = self.draws.mean
            loss = train.semantic_contrastive_weight * (mean(es_data, n) - mean(es_neg, m))
            penalty = alpha * (mean(es_data.pow(2), n) + mean(es_neg.pow(2), m))
            (loss + penalty).backward()
            report = self.draws.report({"contrastive_gamma": loss, "semantic_penalty": penalty,
                                   "semantic_data_energy": self.draws.mean(es_data, n),
                                   "semantic_negative_energy": self.draws.mean(es_neg, m)})
            if not train.simultaneous_updates:
                self._clip_and_step(self.gamma_optimizer, self.model.decoder.parameters())
        finally:
            for p in self.model.dae.parameters():
                p.requires_grad_(True)
        return report

    # -- one step, then the loop -------------------------------------------------------------
    def train_step(self, should_cancel: CancelFn | None = None) -> StepMetrics:
        with precision_context(self.config.training.precision, self.device):
            return self._train_step(should_cancel)

    def _train_step(self, should_cancel: CancelFn | None) -> StepMetrics:
        start, train = time.perf_counter(), self.config.training
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

    # -- exact resume (model/trainer_state.py) --------------------------------------------
    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        return trainer_state(self)

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], meta: dict, *,
                           strict_buffers: bool = True) -> None:
        restore_trainer_state(self, tensors, meta, strict_buffers=strict_buffers)
