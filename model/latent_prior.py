"""Where the latent chain starts: a Gaussian mixture fitted to the encoder's latents.

The paper starts every latent chain at z0 ~ N(0, I) (eq. 15).  An autoencoder's latents do
not fill N(0, I): they lie on a few class-shaped clusters, so a short chain from N(0, I)
mostly ends between them, and h(z_K) draws blends of digits (FD 128 on the demo model).
Fitting a density to the latents of the training images after training ("ex-post density
estimation", Ghosh et al. 2020, *From Variational to Deterministic Autoencoders*, section 4)
and starting the chains from it puts z0 near the data's latents; the K Langevin steps on
U^s (eq. 15) then refine it as before.  On the demo model this lowered FD from 128 to 52 at
half the latent steps (docs/RESULTS.md, "Demo model v2").

The mixture's size is chosen on held-back training latents (largest validation
log-likelihood), never on the held-out split that evaluation and calibration use, so the
choice adapts to the data set without looking at what it is judged on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .networks import DenoisingEBM

# Mixture sizes tried, smallest first.  More components than ~40 overfit 4,500 latents of 64
# dimensions (validation log-likelihood falls), so the list stops there.
DEFAULT_COMPONENTS = (1, 5, 10, 20, 40)
# Added to every component's covariance diagonal.  Latents are near unit variance (the
# latent-moment penalty), so 1e-2 is a percent of it: it keeps small components from
# collapsing onto a handful of training images.
COVARIANCE_FLOOR = 1e-2
VALIDATION_FRACTION = 0.1


@dataclass
class LatentPrior:
    """A Gaussian mixture over z: weights (k,), means (k, d), scale_tril (k, d, d)."""

    weights: torch.Tensor
    means: torch.Tensor
    scale_tril: torch.Tensor

    @property
    def components(self) -> int:
        return int(self.weights.shape[0])

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "LatentPrior":
        dtype = dtype or self.means.dtype
        return LatentPrior(self.weights.to(device, torch.float32), self.means.to(device, dtype),
                           self.scale_tril.to(device, dtype))

    def sample(self, n: int, *, generator: torch.Generator) -> torch.Tensor:
        """n draws; the component choice and the Gaussian noise both come from ``generator``,
        so a seed gives the same z0."""
        component = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn((n, self.dim), generator=generator, device=self.means.device,
                            dtype=self.means.dtype)
        return self.means[component] + torch.einsum("bij,bj->bi", self.scale_tril[component],
                                                    noise)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"weights": self.weights, "means": self.means, "scale_tril": self.scale_tril}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "LatentPrior":
        try:
            weights, means, tril = (tensors[k].float() for k in ("weights", "means",
                                                                   "scale_tril"))
        except KeyError as exc:
            raise ValueError(f"latent prior lacks the tensor {exc}") from None
        k, d = means.shape if means.dim() == 2 else (-1, -1)
        if weights.shape != (k,) or tril.shape != (k, d, d) or k < 1:
            raise ValueError(f"latent prior tensors do not fit together: weights "
                             f"{tuple(weights.shape)}, means {tuple(means.shape)}, "
                             f"scale_tril {tuple(tril.shape)}")
        if not all(torch.isfinite(t).all() for t in (weights, means, tril)) or \
                bool((weights < 0).any()) or float(weights.sum()) <= 0:
            raise ValueError("latent prior holds non-finite values or negative weights")
        return cls(weights / weights.sum(), means, tril)


@torch.no_grad()
def encode_latents(model: DenoisingEBM, images: torch.Tensor, *, sigma: float, seed: int,
                   batch_size: int = 500) -> torch.Tensor:
    """z = f(x + sigma e, sigma) for every image: the latents the semantic decoder learned to
    invert (eq. 13), at the latent chain's sigma."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        out = []
        for start in range(0, images.shape[0], batch_size):
            x = images[start:start + batch_size].to(device)
            noise = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype)
            sigmas = torch.full((x.shape[0],), float(sigma), device=device, dtype=x.dtype)
            z, _, _ = model.dae.encode(x + sigma * noise, sigmas)
            out.append(z.float().cpu())
        return torch.cat(out)
    finally:
        model.train(was_training)


def fit_latent_prior(model: DenoisingEBM, images: torch.Tensor, *, sigma: float, seed: int = 0,
                     components: tuple[int, ...] = DEFAULT_COMPONENTS
                     ) -> tuple[LatentPrior, dict[str, Any]]:
    """Fit the mixture to the training images' latents; returns (prior, report).

    Each candidate size is fitted on 90% of the latents and scored on the other 10%; the
    best is kept (the report lists every candidate's validation log-likelihood)."""
    from sklearn.mixture import GaussianMixture  # fitting only; sampling is plain torch

    latents = encode_latents(model, images, sigma=sigma, seed=seed).double().numpy()
    order = np.random.default_rng(seed).permutation(latents.shape[0])
    cut = max(1, int(round(latents.shape[0] * (1 - VALIDATION_FRACTION))))
    train, valid = latents[order[:cut]], latents[order[cut:]]
    if valid.shape[0] == 0:
        valid = train
    candidates = [k for k in components if k <= train.shape[0]] or [1]
    scores: dict[int, float] = {}
    best = None
    for k in candidates:
        mixture = GaussianMixture(k, covariance_type="full", reg_covar=COVARIANCE_FLOOR,
                                  max_iter=200, random_state=seed).fit(train)
        scores[k] = float(mixture.score(valid))
        if best is None or scores[k] > scores[best[0]]:
            best = (k, mixture)
    chosen, mixture = best
    prior = LatentPrior.from_tensors({
        "weights": torch.from_numpy(mixture.weights_),
        "means": torch.from_numpy(mixture.means_),
        "scale_tril": torch.linalg.cholesky(torch.from_numpy(mixture.covariances_)),
    })
    report = {"components": chosen, "sigma": float(sigma), "seed": int(seed),
              "fitted_on": int(train.shape[0]), "validated_on": int(valid.shape[0]),
              "covariance_floor": COVARIANCE_FLOOR,
              "validation_log_likelihood": {str(k): round(v, 3) for k, v in scores.items()}}
    return prior, report
