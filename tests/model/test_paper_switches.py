"""The two switches between Algorithm 1 as written and this project's training:
``training.decoder_trains_encoder`` (does eq. 13's gradient reach the encoder?) and
``network.preconditioning`` (is r(x~, sigma) the plain U-Net output, or EDM-preconditioned?)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from model.checkpoints import load_checkpoint, save_checkpoint
from model.data import to_model_range
from model.formats.config import ExperimentConfig, NetworkConfig
from model.formats.presets import preset
from model.networks import DenoisingEBM, DenoisingUNet
from model.training import Trainer

from .conftest import tiny_network, toy_dataset
from .test_presets import paper_toy_config

ROOT = Path(__file__).resolve().parents[2]
ENCODER_PREFIXES = ("stem.", "down_blocks.", "downsamples.", "to_latent.", "emb_mlp.")


def _replay_reconstruction_draws(trainer: Trainer, n: int):
    """The draws of one reconstruction step, replayed from copies of the trainer's
    generators: the batch (indices, flips), the per-sample sigmas, then the DAE's noise."""
    data_gen = torch.Generator().manual_seed(0)
    data_gen.set_state(trainer.data_generator.get_state())
    gen = torch.Generator().manual_seed(0)
    gen.set_state(trainer.generator.get_state())
    index = torch.randint(len(trainer.dataset), (n,), generator=data_gen)
    flips = torch.rand(n, generator=data_gen) < 0.5
    x = to_model_range(trainer.dataset.images[index])
    x = torch.where(flips[:, None, None, None], x.flip(-1), x)
    sigma = trainer.grid[torch.randint(trainer.grid.numel(), (n,), generator=gen)]
    noise = torch.randn(x.shape, generator=gen)
    return x, sigma, noise


@pytest.mark.parametrize("decoder_trains_encoder", [False, True])
def test_the_decoder_loss_reaches_the_encoder_only_when_switched_on(decoder_trains_encoder):
    """Algorithm 1 line 4: with the switch off, the encoder's gradient from a reconstruction
    step is the gradient of L_DAE (eq. 1) alone, and the decoder's that of L_Dec (eq. 13)."""
    config = paper_toy_config(decoder_trains_encoder=decoder_trains_encoder)
    assert config.training.latent_moment_weight == 0.0  # the paper: no other encoder term
    trainer = Trainer(config, toy_dataset())
    before = copy.deepcopy(trainer.model)
    x, sigma, noise = _replay_reconstruction_draws(trainer, config.training.batch_size)

    trainer.reconstruction_step()  # no parameter clipping in `paper`: .grad is the gradient

    noisy = x + sigma[:, None, None, None] * noise
    loss_dae = (before.dae(noisy, sigma) - x).pow(2).mean()  # eq. 1, unweighted
    grad_dae = torch.autograd.grad(loss_dae, list(before.dae.parameters()))
    loss_dec = (before.decoder(before.dae.latent(noisy, sigma)) - x).pow(2).mean()  # eq. 13
    grad_dec = torch.autograd.grad(loss_dec, list(before.decoder.parameters()))
    names = [name for name, _ in trainer.model.dae.named_parameters()]
    encoder = [i for i, name in enumerate(names) if name.startswith(ENCODER_PREFIXES)]
    assert encoder  # the prefixes still name the encoder f_alpha
    trained = [p.grad for p in trainer.model.dae.parameters()]
    matches = [torch.allclose(trained[i], grad_dae[i], rtol=1e-4, atol=1e-7) for i in encoder]
    if decoder_trains_encoder:
        assert not all(matches)  # eq. 13 adds to the encoder's gradient
    else:
        assert all(matches)
    # The U-Net decoder g_beta sees L_DAE only, and h_gamma L_Dec only, either way.
    for i, name in enumerate(names):
        if i not in encoder:
            assert torch.allclose(trained[i], grad_dae[i], rtol=1e-4, atol=1e-7), name
    for p, g in zip(trainer.model.decoder.parameters(), grad_dec):
        assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-7)


def _edm_by_hand(plain: DenoisingUNet, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """c_skip x~ + c_out F(c_in x~, sigma), with F the plain network (Karras et al. 2022)."""
    sd, s = plain.config.sigma_data, sigma[:, None, None, None]
    c_skip = sd ** 2 / (s ** 2 + sd ** 2)
    c_out = s * sd / torch.sqrt(s ** 2 + sd ** 2)
    c_in = 1 / torch.sqrt(s ** 2 + sd ** 2)
    return c_skip * x + c_out * plain(c_in * x, sigma)


def _inputs(channels: int, size: int, n: int = 3):
    g = torch.Generator().manual_seed(1)
    return (torch.rand((n, channels, size, size), generator=g) * 2 - 1,
            torch.tensor([0.01, 0.1, 1.0][:n]))


def test_plain_reconstruction_is_the_unet_output_and_edm_wraps_it():
    torch.manual_seed(0)
    net = tiny_network()
    edm = DenoisingUNet(net).eval()
    plain = DenoisingUNet(NetworkConfig(**{**net.__dict__, "preconditioning": "none"})).eval()
    plain.load_state_dict(edm.state_dict())  # the same weights: only r's formula differs
    x, sigma = _inputs(1, 8)
    with torch.no_grad():
        assert torch.allclose(edm(x, sigma), _edm_by_hand(plain, x, sigma), atol=1e-6)
        z, skips, emb = plain.encode(x, sigma)
        assert torch.equal(plain(x, sigma), plain.decode(z, skips, emb))  # r = F(x~, sigma)
        assert not torch.allclose(plain(x, sigma), edm(x, sigma))


def test_old_checkpoints_without_the_field_load_as_edm():
    directory = ROOT / "checkpoints" / "demo"
    stored = json.loads((directory / "checkpoint.json").read_text())["config"]["network"]
    assert "preconditioning" not in stored  # written before the setting existed
    loaded = load_checkpoint(directory)
    assert loaded.config.network.preconditioning == "edm"
    dae = loaded.model.dae.eval()
    plain = DenoisingUNet(NetworkConfig(**{**loaded.config.network.__dict__,
                                           "preconditioning": "none"})).eval()
    plain.load_state_dict(dae.state_dict())
    x, sigma = _inputs(1, 28)
    with torch.no_grad():
        assert torch.allclose(dae(x, sigma), _edm_by_hand(plain, x, sigma), atol=1e-5)


def test_checkpoints_record_the_preconditioning(tmp_path):
    config = ExperimentConfig(network=NetworkConfig(**{**tiny_network().__dict__,
                                                       "preconditioning": "none"})).validate()
    torch.manual_seed(0)
    model = DenoisingEBM(config.network)
    save_checkpoint(tmp_path / "ckpt", model=model, config=config, step=0, metadata={})
    stored = json.loads((tmp_path / "ckpt" / "checkpoint.json").read_text())
    assert stored["config"]["network"]["preconditioning"] == "none"
    loaded = load_checkpoint(tmp_path / "ckpt")
    x, sigma = _inputs(1, 8)
    with torch.no_grad():
        assert torch.equal(loaded.model.dae(x, sigma), model.dae(x, sigma))


def test_an_unknown_preconditioning_is_refused():
    from model.formats.config import ConfigError

    with pytest.raises(ConfigError, match="preconditioning must be one of"):
        preset("tiny").replace(network={"preconditioning": "karras"})
