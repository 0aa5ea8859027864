"""Checkpoints: safetensors + JSON round trip, integrity checks, wrong shapes."""

from __future__ import annotations

import json

import pytest
import torch

from model.checkpoints import (CheckpointError, load_checkpoint, read_manifest,
                               save_checkpoint)
from model.formats.config import ExperimentConfig
from model.formats.presets import preset
from model.networks import DenoisingEBM

from .conftest import tiny_network


def _save(tmp_path, **kwargs):
    config = ExperimentConfig(network=tiny_network()).validate()
    torch.manual_seed(0)
    model = DenoisingEBM(config.network)
    path = save_checkpoint(tmp_path / "ck", model=model, config=config, step=12,
                           metadata={"note": "x"}, **kwargs)
    return path, model, config


def test_round_trip_rebuilds_model_from_stored_config(tmp_path):
    path, model, config = _save(tmp_path, calibration={"threshold": -1.0})
    loaded = load_checkpoint(path)
    assert loaded.config == config and loaded.step == 12
    assert loaded.metadata == {"note": "x"} and loaded.calibration == {"threshold": -1.0}
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)
    assert not any(p.suffix in (".pt", ".pkl", ".bin") for p in path.iterdir())


def test_config_json_round_trip_for_every_preset():
    for name in ("tiny", "demo", "paper"):
        config = preset(name)
        assert ExperimentConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_truncated_weights_are_refused(tmp_path):
    path, _, _ = _save(tmp_path)
    weights = path / read_manifest(path)["weights"]
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_corrupt_manifest_is_refused(tmp_path):
    path, _, _ = _save(tmp_path)
    (path / "checkpoint.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path)


def test_weights_of_the_wrong_shape_are_refused(tmp_path):
    path, _, _ = _save(tmp_path)
    manifest = read_manifest(path)
    manifest["config"]["network"]["latent_dim"] = 7  # config no longer matches the weights
    (path / "checkpoint.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(path)


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(tmp_path / "nothing")


def test_resave_replaces_old_files_atomically(tmp_path):
    path, model, config = _save(tmp_path)
    save_checkpoint(path, model=model, config=config, step=13)
    names = sorted(p.name for p in path.iterdir())
    assert names == ["checkpoint.json", "model-00000013.safetensors"]
    assert load_checkpoint(path).step == 13


def test_write_failures_surface_as_os_errors_with_errno(tmp_path):
    """The service maps errno (ENOSPC, EROFS, ...) to clear job errors."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    config = ExperimentConfig(network=tiny_network()).validate()
    with pytest.raises(OSError) as info:
        save_checkpoint(blocker / "ck", model=DenoisingEBM(config.network), config=config,
                        step=1)
    assert info.value.errno is not None


def test_torch_free_verification_checks_every_listed_file(tmp_path):
    from model.formats.manifest import verify_checkpoint_files

    path, model, config = _save(tmp_path)
    assert verify_checkpoint_files(path)["step"] == 12
    weights = path / read_manifest(path)["weights"]
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        verify_checkpoint_files(path)


def test_export_drops_training_state_and_keeps_the_warmup_baseline(tmp_path):
    from model.checkpoints import export_checkpoint

    config = ExperimentConfig(network=tiny_network()).validate()
    model = DenoisingEBM(config.network)
    source = tmp_path / "run"
    save_checkpoint(source / "warmup", model=model, config=config, step=3)
    state = ({"x": torch.zeros(3)}, {"step": 5, "optimizers": {}})
    save_checkpoint(source, model=model, config=config, step=5,
                    metadata={"warmup_checkpoint": "warmup"}, training_state=state)
    out = export_checkpoint(source, tmp_path / "shipped")
    assert read_manifest(out)["training_state"] is None
    assert not list(out.glob("state-*"))
    assert load_checkpoint(out).step == 5 and load_checkpoint(out / "warmup").step == 3
    with pytest.raises(CheckpointError, match="not empty"):
        export_checkpoint(source, out)
