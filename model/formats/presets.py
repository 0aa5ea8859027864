"""Named configurations: `tiny` (tests), `demo` (a 2-core CPU), and the paper's settings,
`paper` (= `cifar10`), `paper-stable` and `celeba64`.

`paper` is Algorithm 1 of Zeng (2023) as written, with no stabiliser of this project:
    - chains start as the paper says: z0 ~ N(0, I) (eq. 15), x0 = h(z_K) (eq. 16); no replay
      buffer, no noise-started, replayed or augmented pixel chains;
    - one sigma_i per sample from the S=128 grid (1 -> 0.01), shared by sample i's chains and
      by its data and negative energy terms;
    - the plain reconstruction r(x~, sigma) = F(x~, sigma) (network.preconditioning "none");
    - Algorithm 1 line 4 as written: grad L_DAE updates the DAE and grad L_Dec (eq. 13) the
      semantic decoder only (training.decoder_trains_encoder false);
    - the unweighted DAE loss of eq. 1; no latent-moment or energy-magnitude penalty;
    - plain Adam, lr 5e-5, betas (0.9, 0.999), for every update; no gradient clipping in the
      chains or on the parameters, no clamping of chains;
    - both contrastive gradients (phi and gamma) taken before either Adam step;
    - generation returns x^T (no final Tweedie denoise);
    - the OOD score is one reading of -U^c(x, 0.05) (section 5.2): scoring.draws = 1.

Generation steps: the paper lists K=20, T=90 in its experimental setup (section 5); its timing
claim (section 5.1: 64 samples in 8.67 s against 120.11 s for NCSN) is for 35 latent and 100
pixel steps.  `paper` keeps its chains at section 5's K=20, T=90 because that is the setting
its training chains use, so generation runs the chains the model was trained against.  The
timing claim is measured at its own 35 + 100 steps (benchmarks/paper_timing.py and step (b)
of benchmarks/gpu_check.py); section 5.1's chains are one request away:
``steps_latent=35, steps_pixel=100``.

What the paper does not give, and this preset chooses (tests/model/test_presets.py lists the
paper's values field by field and marks these as choices): the network widths, batch size
(128), the number of iterations (no count is given; 100,000 is a budget, not a citation), the
sigma at which generation runs each stage, and the held-out split.

`paper-stable` keeps the paper's schedule and turns on the stabilisers this project
recommends for real training (see docs/RESULTS.md, "Stabilisers").  `celeba64` is the paper's
CelebA 64x64 setting (K=40, T=100).  This module is torch-free, like config.py beside it
(which never imports it).
"""

from __future__ import annotations

from .config import (ConfigError, DataConfig, ExperimentConfig, NetworkConfig, NoiseConfig,
                     SamplerConfig, ScoringConfig, TrainingConfig)

PAPER_PRESETS = ("paper", "cifar10", "paper-stable", "celeba64")
PRESETS = ("tiny", "demo", "paper", "paper-stable", "cifar10", "celeba64")

# Training settings of Algorithm 1 with every stabiliser off.  Each key is a named setting in
# TrainingConfig; STABILISERS below lists the ones `paper-stable` turns back on.
PAPER_ALGORITHM = dict(
    recon_steps=3,  # L
    lr=5e-5, betas=(0.9, 0.999),  # Adam for eq. 1 + eq. 13
    contrastive_lr=5e-5, contrastive_betas=(0.9, 0.999),  # the same plain Adam
    lr_contrastive_phase=None,
    contrastive_weight=1.0, semantic_contrastive_weight=1.0,  # both contrastive gradients
    warmup_steps=0,  # Algorithm 1 interleaves reconstruction and contrastive steps from step 1
    steps_latent=20, steps_pixel=90,  # K, T
    step_size_latent=0.1, step_size_pixel=0.01,  # eta1, eta2
    temperature_latent=1.0, temperature_pixel=1.0,
    flip=True,  # random horizontal flips, p = 0.5
    # -- stabilisers, all off --
    replay_buffer_size=0, replay_prob=0.0,
    pixel_replay_size=0, pixel_replay_fraction=0.0,
    noise_chain_fraction=0.0, augmented_chain_fraction=0.0,
    shared_sigma=True, contrastive_sigma_min=0.01, contrastive_sigma_max=1.0,
    energy_penalty=0.0, latent_moment_weight=0.0,
    grad_clip_norm=0.0, chain_grad_clip=0.0, clamp_chains=False,
    dae_loss_weighting="none", simultaneous_updates=True,
    decoder_trains_encoder=False,  # Algorithm 1 line 4: eq. 13 trains gamma only
)

PAPER_SAMPLER = dict(steps_latent=20, steps_pixel=90, step_size_latent=0.1,
                     step_size_pixel=0.01, temperature_latent=1.0, temperature_pixel=1.0,
                     grad_clip=0.0, clamp_pixels=False, final_denoise=False)

# The stabilisers `paper-stable` turns on, with the values used.  Why each one, and what it
# changed in measurements, is the stabiliser table of docs/RESULTS.md.
STABILISERS = dict(
    training=dict(
        replay_buffer_size=2048, replay_prob=0.9,  # persistent latent chains (PCD)
        noise_chain_fraction=0.125,  # an eighth of pixel chains start from uniform noise
        contrastive_sigma_min=0.03, contrastive_sigma_max=0.1,  # sigma_i still shared
        energy_penalty=0.1,  # alpha * (E+^2 + E-^2), per-dimension energies
        latent_moment_weight=0.01,
        contrastive_betas=(0.0, 0.999),
        grad_clip_norm=1.0, chain_grad_clip=1000.0, clamp_chains=True,
        dae_loss_weighting="edm",
    ),
    sampler=dict(grad_clip=1000.0, clamp_pixels=True, final_denoise=True),
    # r = c_skip x~ + c_out F(c_in x~): U^c stays O(1) per dimension at every sigma.
    network=dict(preconditioning="edm"),
    # The mean of 8 noise draws per score: U^c is stochastic, and one reading is noisy.
    scoring=dict(draws=8),
)


def _cifar_network() -> NetworkConfig:
    return NetworkConfig(image_size=32, channels=3, base_width=128, channel_mults=(1, 2, 2, 2),
                         blocks_per_level=2, latent_dim=128, decoder_width=256,
                         embedding_dim=128, groups=32, preconditioning="none")


def _paper(preset: str) -> ExperimentConfig:
    return ExperimentConfig(
        preset=preset,
        network=_cifar_network(),
        noise=NoiseConfig(num_sigmas=128, sigma_max=1.0, sigma_min=0.01),
        sampler=SamplerConfig(**PAPER_SAMPLER),
        training=TrainingConfig(batch_size=128, chain_batch_size=128, iterations=100_000,
                                checkpoint_every=2000, **PAPER_ALGORITHM),
        data=DataConfig(dataset="cifar10"),
        scoring=ScoringConfig(sigma=0.05, draws=1),  # one reading of -U^c(x, 0.05), 5.2
    ).validate()


def paper_preset(name: str) -> ExperimentConfig:
    if name in ("paper", "cifar10"):
        return _paper(name)
    if name == "paper-stable":
        return _paper("paper").replace(preset="paper-stable", **STABILISERS)
    if name == "celeba64":
        # CelebA 64x64: one more resolution level and K=40, T=100 (paper section 5), for
        # training chains and generation alike.  Point data.dataset at a folder of aligned,
        # cropped faces (docs/RESULTS.md, "Bringing the paper's data").
        config = _paper("paper").to_dict()
        config["preset"] = "celeba64"
        config["network"].update(image_size=64, channel_mults=(1, 2, 2, 2, 4))
        config["sampler"].update(steps_latent=40, steps_pixel=100)
        config["training"].update(steps_latent=40, steps_pixel=100, batch_size=64,
                                  chain_batch_size=64)
        config["data"]["dataset"] = "celeba"
        return ExperimentConfig.from_dict(config)
    raise ConfigError(f"unknown paper preset {name!r}")


def preset(name: str) -> ExperimentConfig:
    """Named configurations.

    tiny:  seconds on a CPU, for tests.
    demo:  MNIST-5k on a 2-core CPU in well under an hour (see docs/RESULTS.md for timings).
    paper, cifar10, paper-stable, celeba64: the paper's settings (module docstring).
    """
    if name == "tiny":
        return ExperimentConfig(
            preset="tiny",
            network=NetworkConfig(image_size=8, channels=1, base_width=8, channel_mults=(1, 2),
                                  latent_dim=8, decoder_width=8, embedding_dim=8, groups=4),
            sampler=SamplerConfig(steps_latent=3, steps_pixel=3, annealed_levels=4,
                                  annealed_steps_per_level=2),
            training=TrainingConfig(batch_size=8, warmup_steps=2, iterations=2, recon_steps=1,
                                    chain_batch_size=4, steps_latent=2, steps_pixel=2,
                                    replay_buffer_size=16, lr=1e-3, contrastive_lr=1e-3),
            data=DataConfig(dataset="mnist5k"),
            scoring=ScoringConfig(draws=2),
        ).validate()
    if name == "demo":
        # Tuned on MNIST-5k on a 2-core CPU; every departure from the paper is measured in
        # docs/RESULTS.md.  Warm-up at a high lr (reconstruction only), then a short contrastive
        # phase with persistent latent chains, cold pixel chains and a share of chains seeded
        # from negative augmentations (cutout, jigsaw) of data.
        return ExperimentConfig(
            preset="demo",
            network=NetworkConfig(image_size=28, channels=1, base_width=32,
                                  channel_mults=(1, 2, 2), latent_dim=64, decoder_width=64),
            # Latent chains start from the latent prior fitted after training (a Gaussian
            # mixture over the encoder's latents, model/latent_prior.py) and descend U^s for
            # K=10 steps at temperature 0: better samples than the N(0, I) start in about half
            # the time (the figures: docs/RESULTS.md, "Demo model v2").
            sampler=SamplerConfig(steps_latent=10, steps_pixel=5, step_size_pixel=0.003,
                                  temperature_latent=0.0, temperature_pixel=0.3,
                                  latent_init="prior"),
            training=TrainingConfig(
                batch_size=64, warmup_steps=1500, iterations=150, recon_steps=2, lr=1e-3,
                lr_contrastive_phase=1e-4, contrastive_lr=2e-4, energy_penalty=1.0,
                semantic_contrastive_weight=0.0, chain_batch_size=32, steps_latent=15,
                steps_pixel=5, step_size_pixel=0.001, temperature_pixel=0.1,
                replay_buffer_size=64, replay_prob=0.95, noise_chain_fraction=0.125,
                augmented_chain_fraction=0.125, negative_augmentations=("erase", "jigsaw"),
                checkpoint_every=100),
            data=DataConfig(dataset="mnist5k"),
            # The OOD score also reads the semantic reconstruction energy, which sees global
            # shape: mirrored, upside-down and rotated digits are told apart far better, every
            # easy set unchanged (the figures: docs/RESULTS.md, "Demo model v3").
            scoring=ScoringConfig(score="texture+semantic"),
        ).validate()
    if name in PAPER_PRESETS:
        return paper_preset(name)
    raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")

