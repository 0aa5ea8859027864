"""Training overrides are checked completely by the API: every field typed and ranged, the
network's shapes walked, and nothing that goes wrong while checking is a 500.

The property test sends random override dicts to POST /train: each answer is 202 or 422, and
every config answered 202 builds its network and runs one real training step on tiny data.
The client's limits are tight (16-pixel images, batches of 8, width 32, 8 chain steps), so
whatever is accepted is cheap to run by construction.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.override_schema import RANGES, SECTION_MODELS, SECTIONS, check_overrides
from tests.support import KEY_HEADERS

H = KEY_HEADERS


def train(client, overrides, **fields):
    body = {"dataset": "digits8x8", "preset": "tiny", "overrides": overrides, **fields}
    return client.post("/train", json=body, headers=H)


def test_every_field_of_every_section_has_a_declared_range():
    for name, cls in SECTIONS.items():
        missing = {f.name for f in dataclasses.fields(cls)} - set(RANGES[name])
        assert not missing, f"{name}: no range declared for {sorted(missing)}"
        assert not set(RANGES[name]) - {f.name for f in dataclasses.fields(cls)}
        untyped = [field for field, info in SECTION_MODELS[name].model_fields.items()
                   if info.annotation is Any]
        assert not untyped, f"{name}: no schema for the type of {untyped}"


ISSUE_CASES = [
    ({"network": {"groups": 0}}, "network.groups"),
    ({"network": {"groups": -4}}, "network.groups"),
    ({"training": {"iterations": 10 ** 400}}, "training.iterations"),
    ({"training": {"lr": 10 ** 400}}, "training.lr"),
    ({"training": {"seed": 10 ** 400}}, "training.seed"),
    ({"network": {"channel_mults": [1, 1.5]}}, "network.channel_mults"),
    ({"training": {"betas": [0.9, 0.99, 0.999]}}, "training.betas"),
    ({"training": {"betas": ["0.9", "0.999"]}}, "training.betas"),
    ({"training": {"betas": 0.9}}, "training.betas"),
    ({"network": {"base_width": 6, "groups": 4}}, "groups"),  # 6 % 4: the network cannot build
    # every field in range, yet a 256x256x1024 bottleneck feeding a linear layer: too big
    ({"network": {"image_size": 16, "channel_mults": [1], "latent_dim": 1024,
                  "base_width": 1024}}, "DEBM_WORKER_MEMORY_BYTES"),
    ({"training": {"negative_augmentations": ["erase", "melt"]}},
     "training.negative_augmentations"),
    ({"scoring": {"draws": True}}, "scoring.draws"),
]


@pytest.mark.parametrize("overrides, words", ISSUE_CASES, ids=[str(c[0])[:60]
                                                                for c in ISSUE_CASES])
def test_bad_overrides_are_422_naming_the_field_and_queue_nothing(make_client, overrides,
                                                                  words):
    client = make_client(worker_memory_bytes=600 * 2 ** 20)
    response = train(client, overrides)
    assert response.status_code == 422, response.text
    assert words in response.text
    assert client.app.state.services.store.list() == []


def test_a_400_digit_seed_field_and_a_huge_json_number_are_422_not_500(client):
    response = train(client, {}, seed=10 ** 400)
    assert response.status_code == 422 and "seed" in response.text
    # more digits than Python converts by default (4300): still a 4xx, connection reusable
    body = b'{"dataset": "digits8x8", "preset": "tiny", "seed": ' + b"9" * 5000 + b"}"
    response = client.post("/train", content=body,
                           headers={**H, "content-type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    assert client.get("/healthz").status_code == 200


def test_integral_floats_and_lists_are_normalised():
    checked = check_overrides({"training": {"iterations": 3.0, "betas": [0.5, 0.9]}})
    assert checked == {"training": {"iterations": 3, "betas": (0.5, 0.9)}}
    assert isinstance(checked["training"]["iterations"], int)


def test_the_memory_estimate_refuses_a_dataset_too_big_for_the_worker(make_client):
    client = make_client(worker_memory_bytes=600 * 2 ** 20)
    response = train(client, {"network": {"image_size": 256, "channel_mults": [1, 2, 2, 2],
                                          "channels": 3}}, dataset="mnist5k")
    assert response.status_code == 422 and "DEBM_WORKER_MEMORY_BYTES" in response.text
    assert "5000 images at 3x256x256" in response.text
    assert train(client, {}).status_code == 202


# --- the property test -------------------------------------------------------------------

LIMITS = dict(max_training_image_size=16, max_training_batch=8, max_training_width=32,
              max_generate_steps=8, worker_memory_bytes=2 * 2 ** 30,
              max_queued_jobs=100_000, max_queued_jobs_per_key=100_000)

BAD = st.one_of(st.text(max_size=4), st.booleans(), st.none(),
                st.integers(min_value=-(10 ** 30), max_value=10 ** 30),
                st.just(10 ** 400), st.just(-(10 ** 400)),
                st.floats(allow_nan=False, allow_infinity=False, width=64),
                st.lists(st.integers(-3, 3), max_size=3),
                st.lists(st.floats(-2, 2), max_size=3), st.dictionaries(st.text(max_size=2),
                                                                        st.integers(), max_size=1))


def _good(spec, field):
    """Values inside the field's declared range, kept small where size means work."""
    if spec is None:
        return st.booleans()
    if isinstance(spec, int):  # a string's max length (data.dataset: refused on purpose)
        return st.text(max_size=3)
    if isinstance(spec, tuple) and all(isinstance(x, str) for x in spec):  # a string's choices
        return st.sampled_from(spec)
    if isinstance(spec, tuple) and len(spec) == 3 and isinstance(spec[1], int) \
            and isinstance(spec[0], tuple):
        item, low, high = spec
        if all(isinstance(x, str) for x in item):
            return st.lists(st.sampled_from(item), min_size=low, max_size=high)
        return st.lists(_good(item, field), min_size=low, max_size=min(high, 3))
    if spec[0] in ("gt", "lt1"):
        low, high = spec[1], min(spec[2], spec[1] + 2.0)
        return st.floats(low, high, exclude_min=spec[0] == "gt",
                         exclude_max=spec[0] == "lt1" and high == spec[2])
    low, high = spec
    if isinstance(low, float):
        return st.floats(low, min(high, low + 2.0))
    powers = [v for v in (1, 2, 4, 8, 16) if low <= v <= high]  # what widths and sizes take
    return st.one_of(st.integers(low, min(high, low + 40)), st.sampled_from(powers or [low]))


def _value(section, field):
    # About one value in four out of type or range; hypothesis leans to the simplest
    # choice (0), which is the good one.
    return st.integers(0, 7).flatmap(
        lambda pick: BAD if pick >= 6 else _good(RANGES[section][field], field))


FIELDS = [(s, f) for s in RANGES for f in RANGES[s] if (s, f) != ("data", "dataset")]


@st.composite
def override_dicts(draw):
    chosen = draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=4, unique=True))
    out: dict = {}
    for section, field in chosen:
        out.setdefault(section, {})[field] = draw(_value(section, field))
    return out


@pytest.fixture(scope="module")
def tiny_data():
    import torch

    from model.data import ImageDataset

    generator = torch.Generator().manual_seed(0)

    def make(channels: int, size: int) -> ImageDataset:
        return ImageDataset(torch.randint(0, 256, (16, channels, size, size),
                                          generator=generator, dtype=torch.uint8))
    return make


def _one_training_step(config, tiny_data) -> None:
    import torch

    from model.training import EnergyExplosion, Trainer

    net = config.network
    one = config.replace(training={"warmup_steps": 0, "iterations": 1})
    torch.set_num_threads(1)
    trainer = Trainer(one, tiny_data(net.channels, net.image_size), device="cpu")
    try:
        metrics = trainer.train_step()
    except EnergyExplosion:
        return  # a diverging config is the job's documented failure, not a crash
    assert metrics.step == 1
    assert all(math.isfinite(v) or math.isnan(v) for v in metrics.losses.values())


def test_random_overrides_are_202_or_422_and_every_202_trains(make_client, tiny_data):
    from core.trainconfig import build_training_config, training_limits

    client = make_client(**LIMITS)
    limits = training_limits(client.app.state.services.settings)
    outcomes: dict[int, int] = {202: 0, 422: 0}

    @settings(max_examples=30, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(overrides=override_dicts())
    def check(overrides):
        response = train(client, overrides)
        assert response.status_code in (202, 422), response.text
        outcomes[response.status_code] += 1
        if response.status_code == 422:
            assert "overrides" in response.text or "steps" in response.text, response.text
            return
        config = build_training_config(preset_name="tiny", overrides=overrides, seed=None,
                                       dataset="digits8x8", dataset_images=1797, **limits)
        _one_training_step(config, tiny_data)

    check()
    # both branches were exercised, or the test proves nothing
    assert outcomes[202] >= 5 and outcomes[422] >= 5, outcomes
