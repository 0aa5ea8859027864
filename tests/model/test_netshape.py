"""model.formats.netshape (torch-free, used by the API) against the real networks on torch's meta
device: the same verdict on every configuration, and the same parameter count."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model.formats.config import ConfigError, NetworkConfig
from model.formats.presets import preset
from model.formats.netshape import network_shape, training_memory
from model.networks import DenoisingEBM


def _meta_build(net: NetworkConfig) -> dict[str, int] | str:
    try:
        with torch.device("meta"):
            return DenoisingEBM(net).parameter_count()
    except Exception as exc:  # noqa: BLE001 - any refusal counts as "cannot build"
        return type(exc).__name__


def _shape(net: NetworkConfig) -> dict[str, int] | str:
    try:
        shape = network_shape(net)
    except ConfigError:
        return "refused"
    return {"dae": shape.dae_parameters, "decoder": shape.decoder_parameters}


@pytest.mark.parametrize("name", ["tiny", "demo", "paper"])
def test_presets_match_exactly(name):
    net = preset(name).network
    assert _shape(net) == _meta_build(net)


networks = st.builds(
    NetworkConfig,
    image_size=st.sampled_from([4, 6, 8, 12, 16, 32]),
    channels=st.sampled_from([1, 3]),
    base_width=st.integers(1, 24),
    channel_mults=st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple),
    blocks_per_level=st.integers(1, 3),
    latent_dim=st.integers(1, 32),
    decoder_width=st.integers(1, 24),
    embedding_dim=st.sampled_from([2, 4, 6, 8, 16]),
    groups=st.integers(1, 12),
)


def test_random_networks_get_the_same_verdict_and_parameter_count():
    verdicts = {"built": 0, "refused": 0}

    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(net=networks)
    def check(net):
        built, walked = _meta_build(net), _shape(net)
        if isinstance(built, str):
            assert walked == "refused", (net, built)
            verdicts["refused"] += 1
        else:
            assert walked == built, net
            verdicts["built"] += 1

    check()
    assert min(verdicts.values()) >= 10, verdicts  # both kinds of configuration were seen


def test_training_memory_counts_the_dataset_at_the_network_size():
    config = preset("demo")
    small, large = training_memory(config, 1000), training_memory(config, 2000)
    assert large["dataset"] - small["dataset"] == 1000 * 28 * 28
    assert large["total"] - small["total"] == 1000 * 28 * 28
    assert small["parameters"] == 24 * sum(_meta_build(config.network).values())
