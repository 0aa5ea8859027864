"""A training job that asks for 2 processes runs data-parallel ranks (gloo on this CPU) through
the real task body, reports progress, registers its model, and equals a one-process job."""

from __future__ import annotations

import torch

from model.checkpoints import load_checkpoint
from worker.handlers import BODIES
from worker.lifecycle import execute


def _train(runtime, submit, gpus: int, name: str):
    job_id = submit("train", dataset="mnist5k", preset="tiny", name=name, seed=2, gpus=gpus,
                    overrides={"training": {"iterations": 3, "checkpoint_every": 2}})
    outcome = execute(runtime, job_id, "train", BODIES["train"])
    job = runtime.store.get(job_id)
    assert outcome["status"] == "succeeded", job.error
    return job


def test_two_rank_training_job_equals_one_process(runtime, submit):
    torch.set_num_threads(1)
    two = _train(runtime, submit, 2, "ranks")
    one = _train(runtime, submit, 1, "single")
    assert two.progress["fraction"] == 1.0 and two.result["model"] == "ranks:1"
    assert two.result["calibrated"]
    a = load_checkpoint(runtime.registry.path("ranks", 1)).model.state_dict()
    b = load_checkpoint(runtime.registry.path("single", 1)).model.state_dict()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-4, worst
    manifest = load_checkpoint(runtime.registry.path("ranks", 1)).metadata
    assert manifest["world_size"] == 2 and manifest["job_id"] == two.id
