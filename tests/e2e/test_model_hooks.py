"""The hooks behind live previews: ``on_state`` sees the chain without changing it, and
training snapshots leave the run exactly as it would be without them."""

from __future__ import annotations

import torch

from model.checkpoints import load_checkpoint
from model.formats.presets import preset
from model.pipeline import SNAPSHOT_N, generate, run_training


def test_on_state_sees_the_chain_and_changes_nothing(tiny_checkpoint):
    loaded = load_checkpoint(tiny_checkpoint)
    plain = generate(loaded, n=3, seed=5, steps_latent=4, steps_pixel=3)
    seen: list[tuple[str, int, torch.Tensor]] = []
    watched = generate(loaded, n=3, seed=5, steps_latent=4, steps_pixel=3,
                       on_state=lambda stage, step, images: seen.append(
                           (stage, step, images() if step in (4, 7) else None)))
    assert torch.equal(plain.images, watched.images)
    assert torch.equal(plain.semantic, watched.semantic)
    assert [(s, k) for s, k, _ in seen] == [("latent", 1), ("latent", 2), ("latent", 3),
                                            ("latent", 4), ("pixel", 5), ("pixel", 6),
                                            ("pixel", 7)]
    # the last latent state, rendered, is h(z_K): the semantic images
    assert torch.equal(seen[3][2], plain.semantic)
    assert seen[6][2].shape == plain.images.shape
    annealed = []
    generate(loaded, n=2, seed=1, sampler="annealed",
             on_state=lambda stage, step, images: annealed.append(stage))
    assert set(annealed) == {"annealed"} and len(annealed) > 1


def test_training_snapshots_do_not_change_the_run(tmp_path):
    config = preset("tiny").replace(training={"warmup_steps": 2, "iterations": 3})
    snapshots: list[tuple[int, torch.Tensor]] = []
    run_training(config, tmp_path / "a", device="cpu")
    run_training(config, tmp_path / "b", device="cpu", snapshot_every=2,
                 on_snapshot=lambda step, images: snapshots.append((step, images)))
    assert [s for s, _ in snapshots] == [2, 4, 5]
    assert snapshots[0][1].shape[0] == SNAPSHOT_N
    a, b = load_checkpoint(tmp_path / "a").model, load_checkpoint(tmp_path / "b").model
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name


def test_on_state_renders_only_the_chains_asked_for(tiny_checkpoint):
    loaded = load_checkpoint(tiny_checkpoint)
    full, first_two = {}, {}

    def watch(stage, step, images):
        full[stage], first_two[stage] = images(), images(2)

    result = generate(loaded, n=5, seed=3, steps_latent=2, steps_pixel=2, on_state=watch)
    for stage in ("latent", "pixel"):
        assert first_two[stage].shape[0] == 2 and full[stage].shape[0] == 5
        assert torch.allclose(first_two[stage], full[stage][:2], atol=1e-6)
    assert torch.equal(full["latent"], result.semantic)
