"""A Trainer's resumable state (optimizers, RNG, replay buffers, step) as tensors and JSON.

A checkpoint's ``training_state`` (model/checkpoints.py) holds what these functions return,
so that a resumed run equals an uninterrupted one (tests/model/test_training.py).  They take
the trainer (model/training.py) as an argument and import nothing from it.
"""

from __future__ import annotations

from typing import Any

import torch


def trainer_state(trainer: Any) -> tuple[dict[str, torch.Tensor], dict]:
    """Everything needed to resume, split into tensors and JSON-able metadata."""
    tensors: dict[str, torch.Tensor] = {
        "rng.generator": trainer.generator.get_state(),
        "rng.data_generator": trainer.data_generator.get_state(),
        "replay.buffer": trainer.buffer.detach().cpu(),
        "replay.pixel_buffer": trainer.pixel_buffer.detach().cpu(),
    }
    meta: dict = {"step": trainer.step, "optimizers": {}}
    for name, optimizer in trainer.optimizers().items():
        state = optimizer.state_dict()
        meta["optimizers"][name] = {"param_groups": state["param_groups"], "state": {}}
        for pid, values in state["state"].items():
            keys = []
            for key, value in values.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim.{name}.{pid}.{key}"] = value.detach().cpu()
                    keys.append(key)
            meta["optimizers"][name]["state"][str(pid)] = keys
    return tensors, meta


def restore_trainer_state(trainer: Any, tensors: dict[str, torch.Tensor], meta: dict, *,
                          strict_buffers: bool = True) -> None:
    """Restore optimizer, RNG, buffers and step.  With ``strict_buffers=False`` (starting a
    new config from another run) a replay buffer whose size changed starts afresh."""
    trainer.generator.set_state(tensors["rng.generator"])
    trainer.data_generator.set_state(tensors["rng.data_generator"])
    for key, attribute in (("replay.buffer", "buffer"),
                           ("replay.pixel_buffer", "pixel_buffer")):
        current = getattr(trainer, attribute)
        saved = tensors.get(key)
        if saved is not None and saved.shape == current.shape:
            setattr(trainer, attribute, saved.to(trainer.device))
        elif strict_buffers:
            raise ValueError(f"{key} in the checkpoint is missing or has the wrong shape")
    for name, optimizer in trainer.optimizers().items():
        saved = meta["optimizers"][name]
        # load_state_dict moves moments to the parameters' device and keeps "step" where
        # Adam wants it.
        state = {int(pid): {key: tensors[f"optim.{name}.{pid}.{key}"] for key in keys}
                 for pid, keys in saved["state"].items()}
        optimizer.load_state_dict({"param_groups": saved["param_groups"], "state": state})
    # Saved param_groups carry the saving run's lr and betas; this run's config wins (equal
    # on an exact resume, different when a new config starts from another run's state).
    train = trainer.config.training
    for optimizer, lr, betas in ((trainer.recon_optimizer, train.lr, train.betas),
                                 (trainer.phi_optimizer, train.contrastive_lr,
                                  train.contrastive_betas),
                                 (trainer.gamma_optimizer, trainer.semantic_lr,
                                  train.contrastive_betas)):
        for group in optimizer.param_groups:
            group["lr"], group["betas"] = lr, tuple(betas)
    trainer.step = int(meta["step"])
