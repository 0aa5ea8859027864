"""The shapes, parameter count and training memory of a configuration, without torch.

The API must not import torch, yet it must refuse a configuration whose network cannot be
built (a GroupNorm whose groups do not divide its channels, a bottleneck smaller than one
pixel) or whose job would not fit a worker (a 67-million-input linear layer is within every
single-field range).  This module walks the same architecture as model.networks layer by layer;
tests/model/test_netshape.py builds random configurations on torch's meta device and holds the
two to the same verdict and the same parameter count.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import ConfigError, ExperimentConfig, NetworkConfig

# Images in the built-in datasets (model.data.load_mnist5k / load_digits8x8).
BUILTIN_DATASET_SIZES = {"mnist5k": (5000, 1), "digits8x8": (1797, 1)}
# What a worker process holds besides the job: the interpreter, torch and its kernels.
PROCESS_BASE_BYTES = 512 * 1024 ** 2
# Bytes per parameter during training: the value, its gradient, and Adam's two moments in
# each of the two optimisers (reconstruction and contrastive, model.training).
BYTES_PER_PARAMETER = 4 * (1 + 1 + 2 + 2)
# Float activations kept for the backward pass, per element the forward writes (inputs to
# GroupNorm, SiLU and the convolutions are saved), with headroom for autograd's buffers.
ACTIVATION_BYTES = 4 * 2


def _norm(channels: int, groups: int, where: str) -> None:
    """nn.GroupNorm(min(groups, channels), channels), as model.networks builds it."""
    g = min(groups, channels)
    if g < 1 or channels % g:
        raise ConfigError(f"network.groups = {groups}: a GroupNorm over {channels} channels "
                          f"({where}) needs a group count that divides it")


def _res_block(cin: int, cout: int, emb: int, groups: int, where: str) -> int:
    _norm(cin, groups, where)
    _norm(cout, groups, where)
    params = 2 * cin + (9 * cin * cout + cout) + 2 * cout + (9 * cout * cout + cout)
    params += (emb * cout + cout) if emb else 0
    params += (cin * cout + cout) if cin != cout else 0
    return params


@dataclass(frozen=True)
class NetworkShape:
    dae_parameters: int
    decoder_parameters: int
    activations_per_image: int  # elements a forward pass of both networks writes

    @property
    def parameters(self) -> int:
        return self.dae_parameters + self.decoder_parameters


def network_shape(net: NetworkConfig) -> NetworkShape:
    """Parameter counts and activation size of model.networks.DenoisingEBM(net), or
    ConfigError naming the field when that network cannot be built."""
    net.validate()
    if net.base_width < 1 or min(net.channel_mults) < 1 or net.decoder_width < 1:
        raise ConfigError("network.base_width, channel_mults and decoder_width must be >= 1")
    if net.blocks_per_level < 1:
        raise ConfigError("network.blocks_per_level must be >= 1")
    c, e, g, size = net.channels, net.embedding_dim, net.groups, net.image_size
    widths = [net.base_width * m for m in net.channel_mults]
    levels = len(widths)
    bottom = size // 2 ** (levels - 1)
    if bottom < 1:
        raise ConfigError(f"network.image_size = {size} is smaller than 2^{levels - 1}")
    res = [size // 2 ** level for level in range(levels)]
    dae = (e * 2 * e + 2 * e) + (2 * e * e + e) + (9 * c * widths[0] + widths[0])
    acts = widths[0] * size * size
    prev = widths[0]
    for level, width in enumerate(widths):
        for _ in range(net.blocks_per_level):
            dae += _res_block(prev, width, e, g, f"encoder level {level}")
            acts += (prev + 6 * width) * res[level] ** 2
            prev = width
        if level < levels - 1:
            dae += 9 * width * width + width
            acts += width * res[level + 1] ** 2
    bottom_features = widths[-1] * bottom * bottom
    _norm(widths[-1], g, "latent head")
    dae += 2 * widths[-1] + bottom_features * net.latent_dim + net.latent_dim
    dae += net.latent_dim * bottom_features + bottom_features
    acts += 3 * bottom_features + 2 * net.latent_dim
    dae += _res_block(widths[-1], widths[-1], e, g, "middle block")
    acts += 7 * widths[-1] * bottom * bottom
    prev = widths[-1]
    for level in reversed(range(levels)):
        width = widths[level]
        for i in range(net.blocks_per_level):
            skip = width if level < levels - 1 and i == 0 else 0
            dae += _res_block(prev + skip, width, e, g, f"decoder level {level}")
            acts += (prev + skip + 6 * width) * res[level] ** 2
            prev = width
        if level > 0:
            dae += 9 * width * widths[level - 1] + widths[level - 1]
            acts += (width + widths[level - 1]) * res[level - 1] ** 2
            prev = widths[level - 1]
    _norm(widths[0], g, "output")
    dae += 2 * widths[0] + 9 * widths[0] * c + c
    acts += 2 * widths[0] * size * size + c * size * size
    d = net.decoder_width
    decoder = net.latent_dim * d * bottom * bottom + d * bottom * bottom
    for level in range(levels):
        decoder += _res_block(d, d, 0, g, f"semantic decoder level {level}")
        acts += 7 * d * res[levels - 1 - level] ** 2
    _norm(d, g, "semantic decoder output")
    decoder += 2 * d + 9 * d * c + c
    acts += 2 * d * size * size + c * size * size
    return NetworkShape(dae, decoder, acts)


def training_memory(config: ExperimentConfig, images: int) -> dict[str, int]:
    """Bytes a training job of ``config`` on ``images`` images claims on its worker: the
    dataset at the network's size (uint8), parameters with gradients and optimiser state,
    activations of the largest batch a step runs (data batch and chains together), replay
    buffers, and the process itself.  An estimate from above (benchmarks/memory.py compares
    it with measured peaks)."""
    net, training = config.network, config.training
    shape = network_shape(net)
    pixels = net.channels * net.image_size ** 2
    parts = {
        "dataset": images * pixels,
        "parameters": shape.parameters * BYTES_PER_PARAMETER,
        "activations": ACTIVATION_BYTES * shape.activations_per_image
        * (training.batch_size + training.chain_batch_size),
        "replay": 4 * (training.replay_buffer_size * net.latent_dim
                       + training.pixel_replay_size * pixels),
        "process": PROCESS_BASE_BYTES,
    }
    parts["total"] = sum(parts.values())
    return parts
