"""Typed, frozen configuration for the Denoising-EBM.

Every checkpoint stores the full ``ExperimentConfig`` as JSON and the model is rebuilt from
it, so nothing about a trained network lives only in code defaults (nanoGPT's habit).

Each field is declared once with ``setting(default, meaning, range)``
(model/formats/settingspec.py): validate(), the API's override schema (core/override_schema.py),
``debm set-sampler --help`` and docs/CONFIG.md are derived from that declaration, so adding a
setting is one edit here (then ``python -m model.formats.config > docs/CONFIG.md``).
The named presets live in model/formats/presets.py.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from .settingspec import ConfigError, check_declared, setting, settings_table  # noqa: F401

# Names of the registered samplers (model.samplers.SAMPLERS, which imports torch); kept here so
# the torch-free API can validate requests.  tests/model/test_samplers.py keeps them equal.
SAMPLER_NAMES = ("two_stage", "texture_only", "annealed")
# Names of model.augment.AUGMENTATIONS (negative data augmentation for chain starts).
NEGATIVE_AUGMENTATIONS = ("erase", "jigsaw", "rotate")
# Weightings of the DAE loss (eq. 1): "edm" divides each sample's error by c_out(sigma)^2,
# "none" is eq. 1 as written.
DAE_LOSS_WEIGHTINGS = ("edm", "none")
# How r(x~, sigma) is built from the U-Net F: "edm" is c_skip x~ + c_out F(c_in x~, sigma)
# (Karras et al. 2022, sigma_data); "none" is the paper's plain r(x~, sigma) = F(x~, sigma).
PRECONDITIONINGS = ("edm", "none")
PRECISIONS = ("float32", "bfloat16")
# Where two_stage's latent chains start: "normal" is z0 ~ N(0, I) (eq. 15); "prior" draws z0
# from the checkpoint's latent prior, a mixture fitted to the encoder's latents after training
# (model/latent_prior.py).
LATENT_INITS = ("normal", "prior")
# The OOD score: "texture" is -U^c(x, sigma) (paper 5.2); "texture+semantic" is the smaller of
# two standardised features, -log U^c(x, sigma) and -log(U^h / U^c), U^h(x, semantic_sigma)
# being the semantic reconstruction energy (model.energies.semantic_reconstruction_energy):
# an image is as in-distribution as its worse feature (model/scores.py).
SCORES = ("texture", "texture+semantic")


@dataclass(frozen=True)
class NetworkConfig:
    image_size: int = setting(28, "square image side; divisible by 2 ** (levels - 1)",
                              ge=4, le=1 << 16)
    channels: int = setting(1, "1 (grey) or 3 (RGB)", choices=(1, 3))
    base_width: int = setting(32, "channels at full resolution", ge=1, le=1 << 16)
    channel_mults: tuple[int, ...] = setting(
        (1, 2, 2), "width multiplier per resolution level (one entry per level)",
        ge=1, le=1 << 16, min_length=1, max_length=64)
    blocks_per_level: int = setting(1, "ResNet blocks per level in encoder and U-Net decoder",
                                    ge=1, le=64)
    latent_dim: int = setting(64, "size of the flat latent z = f(x~, sigma) (paper 4.1)",
                              ge=1, le=1 << 16)
    decoder_width: int = setting(64, "channels of the semantic decoder h(z)", ge=1, le=1 << 16)
    embedding_dim: int = setting(64, "width of the embedding of log sigma (even)",
                                 ge=2, le=1 << 16)
    sigma_data: float = setting(0.5, "data std of the skip/out preconditioning of r(x~, sigma)",
                                gt=0, le=100)
    groups: int = setting(8, "GroupNorm groups (every width divisible by it)", ge=1, le=1024)
    # "edm" wraps r(x~, sigma) in the skip/out scalings of Karras et al. (2022); "none" is the
    # paper's plain network output.  Checkpoints stored before this setting existed were
    # trained with "edm" and load as "edm" through this default.
    preconditioning: str = setting("edm", "the denoiser's input/output scaling",
                                   choices=PRECONDITIONINGS)

    def validate(self) -> None:
        check_declared(self, "network")
        levels = len(self.channel_mults)
        factor = 2 ** (levels - 1)
        if self.image_size % factor:
            raise ConfigError(
                f"image_size {self.image_size} must be divisible by {factor} "
                f"for {levels} resolution levels"
            )
        for width in [self.base_width * m for m in self.channel_mults] + [self.decoder_width]:
            if width % self.groups:
                raise ConfigError(f"width {width} is not divisible by groups={self.groups}")
        if self.embedding_dim % 2:
            raise ConfigError("embedding_dim must be a positive even number")


@dataclass(frozen=True)
class NoiseConfig:
    # Geometric grid of S noise levels from sigma_max down to sigma_min (paper: S=128, 1 -> 0.01).
    num_sigmas: int = setting(128, "S, levels of the geometric noise grid", ge=1, le=10 ** 9)
    sigma_max: float = setting(1.0, "largest noise level of the grid", gt=0, le=100)
    sigma_min: float = setting(0.01, "smallest noise level of the grid", gt=0, le=100)

    def validate(self) -> None:
        check_declared(self, "noise")
        if not self.sigma_min <= self.sigma_max:
            raise ConfigError("need num_sigmas >= 1 and 0 < sigma_min <= sigma_max")


@dataclass(frozen=True)
class SamplerConfig:
    """Defaults used by generation (the service and ``debm sample``)."""

    steps_latent: int = setting(20, "K, latent Langevin steps (eq. 15)", ge=0, le=10 ** 9)
    steps_pixel: int = setting(90, "T, pixel Langevin steps (eq. 16)", ge=0, le=10 ** 9)
    step_size_latent: float = setting(0.1, "eta1, latent step size", gt=0, le=100)
    step_size_pixel: float = setting(0.01, "eta2, pixel step size", gt=0, le=100)
    # U^s at a moderate sigma sees the global shape; U^c at the OOD-scoring sigma refines
    # texture where the score is defined.
    sigma_latent: float = setting(0.1, "noise level of the latent stage's energy U^s",
                                  gt=0, le=100)
    sigma_pixel: float = setting(0.05, "noise level of the pixel stage's energy U^c",
                                 gt=0, le=100)
    # Langevin noise is sqrt(2 eta) * temperature * e.  The paper uses temperature 1; EBM code
    # bases commonly sample colder to get crisper samples, so it is exposed.
    temperature_latent: float = setting(1.0, "latent Langevin noise scale (paper: 1)",
                                        ge=0, le=100)
    temperature_pixel: float = setting(1.0, "pixel Langevin noise scale (paper: 1)",
                                       ge=0, le=100)
    # Guards against 1/sigma^2 spikes; 0 is eqs. 15-16 as written.
    grad_clip: float = setting(1000.0, "elementwise clip of the energy gradient (0: off)",
                               ge=0, le=1e9)
    clamp_pixels: bool = setting(True, "keep pixel chains inside the data range [-1, 1]")
    # Pixel chains on U^c(., sigma) end in images carrying noise of scale sigma (the energy
    # describes data + N(0, sigma^2)); one Tweedie step x <- r(x, sigma) removes it (NCSNv2).
    # False returns x^T itself, as the paper does.
    final_denoise: bool = setting(True, "one Tweedie denoising step after the chains")
    # "bfloat16" runs the network under torch.autocast (chain states stay float32); on a GPU
    # it is the documented way to run fast (docs/OPERATIONS.md, "GPU").
    precision: str = setting("float32", "network arithmetic in the chains", choices=PRECISIONS)
    latent_init: str = setting("normal", "where latent chains start", choices=LATENT_INITS)
    annealed_steps_per_level: int = setting(8, "annealed baseline: steps per sigma level",
                                            ge=0, le=10 ** 9)
    annealed_levels: int = setting(128, "annealed baseline: levels used from the grid",
                                   ge=0, le=10 ** 9)
    annealed_step_size: float = setting(2e-5, "annealed baseline: NCSN epsilon, scaled by "
                                        "sigma^2 / sigma_min^2", gt=0, le=1)

    def validate(self) -> None:
        check_declared(self, "sampler")


# Absolute bounds of the learning rates (a request's tighter limits are core.trainconfig's).
_LR = dict(gt=0, le=10)
_BETA = dict(ge=0, lt=1)
_WEIGHT = dict(ge=0, le=1e6)
_STEPS = dict(ge=0, le=10 ** 9)


@dataclass(frozen=True)
class TrainingConfig:
    batch_size: int = setting(64, "data images per step", ge=1, le=10 ** 9)
    warmup_steps: int = setting(0, "reconstruction-only steps before the contrastive phase",
                                **_STEPS)
    iterations: int = setting(100, "Algorithm 1 iterations after warm-up", **_STEPS)
    recon_steps: int = setting(3, "L, reconstruction steps per iteration", **_STEPS)
    lr: float = setting(5e-5, "Adam lr of the reconstruction losses (eq. 1, eq. 13)", **_LR)
    betas: tuple[float, float] = setting((0.9, 0.999), "Adam betas of the reconstruction "
                                         "losses", **_BETA)
    contrastive_lr: float = setting(5e-5, "Adam lr of the contrastive updates", **_LR)
    contrastive_betas: tuple[float, float] = setting(
        (0.0, 0.999), "Adam betas of the contrastive updates (beta1=0: the EBM-code habit)",
        **_BETA)
    contrastive_weight: float = setting(1.0, "weight of the phi (texture) contrastive loss",
                                        **_WEIGHT)
    # On a short CPU budget the gamma loss turned decoder outputs into grey haze
    # (docs/RESULTS.md), so demo uses 0.
    semantic_contrastive_weight: float = setting(
        1.0, "weight of the gamma (semantic decoder) contrastive loss (0: skipped)", **_WEIGHT)
    # The decoder stayed stable at 2e-5 where 2e-4, the DAE's rate, collapsed it
    # (docs/RESULTS.md).
    semantic_contrastive_lr: float | None = setting(
        None, "Adam lr of the gamma contrastive update (null: contrastive_lr)", **_LR)
    latent_moment_weight: float = setting(0.01, "keeps encoder latents near N(0, I) moments",
                                          **_WEIGHT)
    energy_penalty: float = setting(0.1, "alpha in alpha * (E+^2 + E-^2), per-dimension "
                                    "energies", **_WEIGHT)
    grad_clip_norm: float = setting(1.0, "clip of the parameter gradient norm (0: off)",
                                    ge=0, le=1e9)
    # Chains used for negatives.  Training chains are shorter than generation ones.
    chain_batch_size: int = setting(32, "negative chains per step", ge=1, le=10 ** 9)
    steps_latent: int = setting(20, "K of the training chains", **_STEPS)
    steps_pixel: int = setting(20, "T of the training chains", **_STEPS)
    step_size_latent: float = setting(0.1, "eta1 of the training chains", gt=0, le=100)
    step_size_pixel: float = setting(0.01, "eta2 of the training chains", gt=0, le=100)
    sigma_latent: float = setting(0.1, "noise level of U^s in the training latent chains",
                                  gt=0, le=100)
    temperature_latent: float = setting(1.0, "latent noise scale of the training chains",
                                        ge=0, le=100)
    temperature_pixel: float = setting(1.0, "pixel noise scale of the training chains",
                                       ge=0, le=100)
    # sigma for U^c / U^s in the contrastive loss is drawn per sample from the grid restricted
    # to [contrastive_sigma_min, contrastive_sigma_max].
    contrastive_sigma_min: float = setting(0.03, "lowest contrastive noise level", gt=0, le=100)
    contrastive_sigma_max: float = setting(0.1, "highest contrastive noise level", gt=0, le=100)
    replay_buffer_size: int = setting(2048, "persistent latent chains (0: off)", **_STEPS)
    replay_prob: float = setting(0.9, "chance a latent chain restarts from the buffer",
                                 ge=0, le=1)
    # PCD / IGEBM replay: chains run long enough over iterations to reach the model's spurious
    # low-energy modes (e.g. near-blank images) that short chains never visit.
    pixel_replay_size: int = setting(0, "persistent pixel chains (0: off)", **_STEPS)
    pixel_replay_fraction: float = setting(0.0, "share of pixel chains continued from the "
                                           "pixel replay", ge=0, le=1)
    noise_chain_fraction: float = setting(0.125, "share of pixel chains started from uniform "
                                          "noise", ge=0, le=1)
    # cutout, jigsaw, rotation (model/augment.py); 0 is the paper's algorithm.
    augmented_chain_fraction: float = setting(0.0, "share of pixel chains started from "
                                              "negative augmentations of data", ge=0, le=1)
    negative_augmentations: tuple[str, ...] = setting(
        NEGATIVE_AUGMENTATIONS, "augmentations used for those chains",
        choices=NEGATIVE_AUGMENTATIONS, max_length=len(NEGATIVE_AUGMENTATIONS))
    # A fast warm-up rate would otherwise wash out the smaller contrastive updates.
    lr_contrastive_phase: float | None = setting(
        None, "reconstruction lr once the contrastive phase starts (null: lr)", **_LR)
    flip: bool = setting(False, "random horizontal flips (wrong for digits)")
    # Eq. 13 with f_alpha and the DAE frozen: a decoder refit on a trained model
    # (`debm train --init-from DIR --iters 0`); every texture score stays exactly as it was.
    freeze_dae: bool = setting(False, "reconstruction steps train the semantic decoder alone")
    # Algorithm 1 line 4 updates the DAE with grad L_DAE and the decoder with grad L_Dec alone
    # ("fix phi", section 4.2): False detaches z before h_gamma.  True (the default, what
    # stored configs were trained with) lets eq. 13 shape z as well.
    decoder_trains_encoder: bool = setting(True, "the decoder loss also updates the encoder")
    # --- switches between the paper's Algorithm 1 and this project's stabilisers -----------
    # (the defaults are the stabilised behaviour the demo was trained with;
    # model/formats/presets.py turns each one to the paper's value in the `paper` preset)
    # Paper: one sigma_i per sample i from the grid, used by sample i's chains and by both its
    # data and negative energy terms.  False: chains and negatives at sigma_latent / a sigma
    # from the contrastive range, the data term at a sigma drawn apart.
    shared_sigma: bool = setting(False, "one sigma per sample for its chains and both energy "
                                 "terms (the paper)")
    # Paper: both contrastive gradients (phi and gamma) at the same parameters, then both
    # Adam steps.  False: the gamma gradient uses the DAE after its phi step.
    simultaneous_updates: bool = setting(False, "both contrastive gradients before either "
                                         "Adam step (the paper)")
    dae_loss_weighting: str = setting("edm", "DAE loss weighting; none is eq. 1 as written",
                                      choices=DAE_LOSS_WEIGHTINGS)
    chain_grad_clip: float = setting(1000.0, "elementwise energy-gradient clip in training "
                                     "chains (0: off)", ge=0, le=1e9)
    clamp_chains: bool = setting(True, "clamp pixel chains and decoded starts to [-1, 1]")
    # Parameters, Adam and chain states stay float32 under bfloat16 autocast; for GPUs.
    precision: str = setting("float32", "network arithmetic in training", choices=PRECISIONS)
    max_energy: float = setting(1e4, "mean energy per dimension above this is a blow-up",
                                gt=0, le=1e12)
    checkpoint_every: int = setting(0, "save every N steps through the CLI/worker (0: end)",
                                    **_STEPS)
    seed: int = setting(0, "seed of every random draw of the run", ge=0, le=2 ** 31 - 1)

    def validate(self) -> None:
        check_declared(self, "training")
        if self.freeze_dae and self.iterations:
            raise ConfigError("freeze_dae is a decoder refit: it needs iterations=0 (the "
                              "contrastive phase updates the DAE)")
        if self.contrastive_sigma_min > self.contrastive_sigma_max:
            raise ConfigError("contrastive_sigma_min must be <= contrastive_sigma_max")
        if (self.noise_chain_fraction + self.pixel_replay_fraction
                + self.augmented_chain_fraction) > 1.0:
            raise ConfigError("noise_chain_fraction + pixel_replay_fraction + "
                              "augmented_chain_fraction must be <= 1")
        if self.pixel_replay_fraction > 0 and self.pixel_replay_size < 1:
            raise ConfigError("pixel_replay_fraction > 0 needs pixel_replay_size >= 1")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = setting("mnist5k", "built-in name or a local path (folder, zip, npz, "
                           "cifar, svhn)", max_length=4096)
    holdout_fraction: float = setting(0.1, "held-out split for calibration and evaluation",
                                      ge=0, lt=1)
    split_seed: int = setting(0, "seed of the train / held-out split", ge=0, le=2 ** 31 - 1)

    def validate(self) -> None:
        check_declared(self, "data")


@dataclass(frozen=True)
class ScoringConfig:
    sigma: float = setting(0.05, "noise level of the OOD score -U^c(x, sigma) (paper 5.2)",
                           gt=0, le=100)
    draws: int = setting(8, "noise draws averaged per image (U^c is stochastic)",
                         ge=1, le=10 ** 9)
    seed: int = setting(0, "seed of the scoring noise", ge=0, le=2 ** 31 - 1)
    score: str = setting("texture", "the OOD score; texture is the paper's", choices=SCORES)
    semantic_sigma: float = setting(0.1, "level of U^h (texture+semantic only)", gt=0, le=100)

    def validate(self) -> None:
        check_declared(self, "scoring")


# The sections of ExperimentConfig, by name: the API's override schema, the docs table and
# `debm set-sampler` walk this.
SECTIONS: dict[str, type] = {"network": NetworkConfig, "noise": NoiseConfig,
                             "sampler": SamplerConfig, "training": TrainingConfig,
                             "data": DataConfig, "scoring": ScoringConfig}


@dataclass(frozen=True)
class ExperimentConfig:
    network: NetworkConfig = field(default_factory=NetworkConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    preset: str = "custom"

    def validate(self) -> "ExperimentConfig":
        for part in (self.network, self.noise, self.sampler, self.training, self.data,
                     self.scoring):
            part.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ExperimentConfig":
        return _build(cls, data).validate()

    def replace(self, **sections: dict[str, Any]) -> "ExperimentConfig":
        """Return a copy with fields of the named sections overridden, e.g.
        ``cfg.replace(training={"iterations": 5})``; unknown names raise ConfigError."""
        current = self.to_dict()
        for section, overrides in sections.items():
            if section == "preset":
                current["preset"] = overrides
                continue
            if section not in current:
                raise ConfigError(f"unknown config section {section!r}")
            for key, value in overrides.items():
                if key not in current[section]:
                    raise ConfigError(f"unknown setting {section}.{key}")
                current[section][key] = value
        return ExperimentConfig.from_dict(current)


def _build(cls: type, data: dict[str, Any]) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping for {cls.__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ConfigError(f"unknown settings for {cls.__name__}: {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        spec = known[name]
        has_factory = spec.default_factory is not dataclasses.MISSING
        default = spec.default_factory() if has_factory else spec.default  # type: ignore[misc]
        if is_dataclass(default):
            kwargs[name] = _build(type(default), value)
        elif isinstance(default, tuple):
            kwargs[name] = tuple(value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{cls.__name__}.{name} must be true or false")
            kwargs[name] = value
        elif isinstance(default, int) and not isinstance(default, bool):
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not math.isfinite(value) or int(value) != value):
                raise ConfigError(f"{cls.__name__}.{name} must be an integer, got {value!r}")
            kwargs[name] = int(value)
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{cls.__name__}.{name} must be a number, got {value!r}")
            kwargs[name] = float(value)
        elif default is None:  # optional numbers, e.g. lr_contrastive_phase
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, (int, float))):
                raise ConfigError(f"{cls.__name__}.{name} must be a number or null")
            kwargs[name] = None if value is None else float(value)
        elif isinstance(default, str):
            if not isinstance(value, str):
                raise ConfigError(f"{cls.__name__}.{name} must be a string")
            kwargs[name] = value
        else:  # pragma: no cover - all fields are typed above
            kwargs[name] = value
    return cls(**kwargs)


if __name__ == "__main__":  # python -m model.formats.config > docs/CONFIG.md
    print(settings_table(SECTIONS), end="")
