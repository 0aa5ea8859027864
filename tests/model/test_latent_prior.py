"""The latent prior: fitting and choosing its size, storing it with a checkpoint, and starting
two_stage's latent chains from it."""

from __future__ import annotations

import json

import pytest
import torch

from model.checkpoints import (CheckpointError, attach_latent_prior, export_checkpoint,
                               load_checkpoint, read_manifest, save_checkpoint)
from model.formats.config import ConfigError, ExperimentConfig, SamplerConfig
from model.latent_prior import LatentPrior, encode_latents, fit_latent_prior
from model.networks import DenoisingEBM
from model.samplers import sample

from .conftest import tiny_network, toy_dataset


def _point_prior(dim: int, value: float, spread: float = 1e-4) -> LatentPrior:
    return LatentPrior(weights=torch.ones(1), means=torch.full((1, dim), value),
                       scale_tril=spread * torch.eye(dim)[None])


def _saved(tmp_path) -> tuple:
    config = ExperimentConfig(network=tiny_network()).validate()
    torch.manual_seed(0)
    model = DenoisingEBM(config.network).eval()
    path = save_checkpoint(tmp_path / "ck", model=model, config=config, step=3)
    return path, model, config


def test_samples_follow_the_mixture_and_repeat_with_the_seed():
    prior = LatentPrior(weights=torch.tensor([0.25, 0.75]),
                        means=torch.tensor([[-10.0, 0.0], [10.0, 0.0]]),
                        scale_tril=0.1 * torch.eye(2).repeat(2, 1, 1))
    draws = prior.sample(4000, generator=torch.Generator().manual_seed(1))
    right = (draws[:, 0] > 0).float().mean().item()
    assert 0.72 < right < 0.78  # the weights, not an even split
    assert draws[:, 1].std().item() == pytest.approx(0.1, rel=0.1)
    again = prior.sample(4000, generator=torch.Generator().manual_seed(1))
    assert torch.equal(draws, again)


@pytest.mark.parametrize("tensors, message", [
    ({"weights": torch.ones(2), "means": torch.zeros(3, 4), "scale_tril": torch.zeros(3, 4, 4)},
     "do not fit together"),
    ({"weights": torch.ones(1), "means": torch.zeros(1, 2)}, "lacks the tensor"),
    ({"weights": -torch.ones(1), "means": torch.zeros(1, 2), "scale_tril": torch.eye(2)[None]},
     "negative"),
    ({"weights": torch.ones(1), "means": torch.full((1, 2), float("nan")),
      "scale_tril": torch.eye(2)[None]}, "non-finite"),
])
def test_inconsistent_tensors_are_refused(tensors, message):
    with pytest.raises(ValueError, match=message):
        LatentPrior.from_tensors(tensors)


def test_fit_keeps_the_size_with_the_best_validation_likelihood(tiny_model):
    images = toy_dataset(200).images.float() / 127.5 - 1
    prior, report = fit_latent_prior(tiny_model, images, sigma=0.1, seed=0,
                                     components=(1, 2, 4))
    scores = report["validation_log_likelihood"]
    assert set(scores) == {"1", "2", "4"}
    assert report["components"] == int(max(scores, key=scores.get)) == prior.components
    assert prior.dim == tiny_model.config.latent_dim
    assert report["fitted_on"] + report["validated_on"] == 200
    # Draws land where the encoder puts the data: their mean is the latents' mean.
    latents = encode_latents(tiny_model, images, sigma=0.1, seed=0)
    draws = prior.sample(4000, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(draws.mean(0), latents.mean(0), atol=0.1 * latents.std(0).max())


def test_checkpoint_stores_verifies_and_exports_the_prior(tmp_path):
    path, model, _ = _saved(tmp_path)
    assert load_checkpoint(path).latent_prior is None
    prior = _point_prior(model.config.latent_dim, 0.5)
    attach_latent_prior(path, prior, {"components": 1})
    loaded = load_checkpoint(path)
    assert torch.equal(loaded.latent_prior.means, prior.means)
    assert read_manifest(path)["latent_prior"]["components"] == 1

    exported = export_checkpoint(path, tmp_path / "exported")
    assert torch.equal(load_checkpoint(exported).latent_prior.scale_tril, prior.scale_tril)

    prior_file = path / read_manifest(path)["latent_prior"]["file"]
    prior_file.write_bytes(prior_file.read_bytes()[:-8])  # truncated: refused, not used
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_a_prior_of_the_wrong_width_is_refused(tmp_path):
    path, model, _ = _saved(tmp_path)
    attach_latent_prior(path, _point_prior(model.config.latent_dim + 1, 0.0), {})
    with pytest.raises(CheckpointError, match="dimensions"):
        load_checkpoint(path)


def test_saving_new_weights_drops_the_old_weights_prior(tmp_path):
    path, model, config = _saved(tmp_path)
    attach_latent_prior(path, _point_prior(model.config.latent_dim, 0.0), {})
    save_checkpoint(path, model=model, config=config, step=4)  # e.g. a continued run
    assert load_checkpoint(path).latent_prior is None
    assert not list(path.glob("latent-prior-*"))


def test_two_stage_starts_its_latent_chain_at_the_prior(tiny_model):
    dim = tiny_model.config.latent_dim
    settings = SamplerConfig(steps_latent=0, steps_pixel=0, latent_init="prior")
    result = sample(tiny_model, sampler="two_stage", n=3, seed=0, settings=settings,
                    noise=ExperimentConfig().noise, latent_prior=_point_prior(dim, 2.0))
    with torch.no_grad():
        expected = tiny_model.decoder(torch.full((3, dim), 2.0)).clamp(-1, 1)
    assert torch.allclose(result.semantic, expected, atol=1e-3)

    with pytest.raises(ConfigError, match="fit-prior"):
        sample(tiny_model, sampler="two_stage", n=1, seed=0, settings=settings,
               noise=ExperimentConfig().noise)
    with pytest.raises(ConfigError, match="latent_init"):
        SamplerConfig(latent_init="uniform").validate()


def test_training_with_latent_init_prior_fits_and_uses_it(tmp_path):
    from model.formats.presets import preset
    from model.pipeline import generate, run_training

    config = preset("tiny").replace(sampler={"latent_init": "prior"})
    out = run_training(config, tmp_path / "run", device="cpu")
    loaded = load_checkpoint(out)
    assert loaded.latent_prior is not None
    report = read_manifest(out)["latent_prior"]
    assert report["sigma"] == config.sampler.sigma_latent
    first = generate(loaded, n=4, seed=7).images
    assert torch.equal(first, generate(loaded, n=4, seed=7).images)
    assert not torch.equal(first, generate(loaded, n=4, seed=7, latent_init="normal").images)


def test_cli_fit_prior_switches_the_defaults_and_records_it(tiny_checkpoint, tmp_path, capsys):
    import shutil

    from debm.cli import main

    target = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, target)
    assert main(["fit-prior", "--checkpoint", str(target), "--components", "1", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["components"] in (1, 2)
    document = read_manifest(target)
    assert document["config"]["sampler"]["latent_init"] == "prior"
    assert "fit-prior" in document["metadata"]["sampler_updates"][-1]["note"]
    assert load_checkpoint(target).latent_prior.components == report["components"]
