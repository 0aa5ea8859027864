"""worker.score_cache through the real runtime (real tiny checkpoint, real batcher): a cached
score is the float its fresh forward gave, the key holds everything the score depends on, the
cache is bounded, 0 turns it off, and the hit ratio reaches the metrics."""

from __future__ import annotations

import copy
import dataclasses

import torch
from prometheus_client import generate_latest

from core.prometheus import REGISTRY
from worker.score_cache import ScoreCache


def images(n: int, seed: int, net) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((n, net.channels, net.image_size, net.image_size),
                      generator=generator) * 2 - 1


def test_cached_scores_equal_fresh_ones(runtime):
    from model.pipeline import score_images

    loaded = runtime.models.get("demo", 1)
    x = images(5, 1, loaded.config.network)
    fresh = score_images(loaded, x)
    cache = runtime.score_cache()
    first = runtime.score("demo:1", loaded, x)
    assert torch.equal(first, fresh) and (cache.hits, cache.misses) == (0, 5)
    again = runtime.score("demo:1", loaded, x)
    assert torch.equal(again, fresh) and (cache.hits, cache.misses) == (5, 5)
    # Half seen before, half new: only the new ones are computed; order kept.
    mixed = torch.cat([x[3:], images(2, 2, loaded.config.network), x[:1]])
    got = runtime.score("demo:1", loaded, mixed)
    assert torch.equal(got[[0, 1, 4]], fresh[[3, 4, 0]])  # the very floats first computed
    # The new two were computed in a batch of 2, not of 5: equal up to the float32 rounding
    # of a differently shaped convolution (tests/worker/test_batching.py), as any two fresh
    # scores in different batches are.
    torch.testing.assert_close(got, score_images(loaded, mixed), rtol=1e-6, atol=0.0)
    assert (cache.hits, cache.misses) == (8, 7)
    exposed = generate_latest(REGISTRY).decode()
    assert 'debm_score_cache_lookups_total{result="hit"}' in exposed
    assert "debm_score_cache_hit_ratio" in exposed


def test_the_key_holds_model_load_and_scoring_settings(runtime):
    from model.pipeline import score_images

    loaded = runtime.models.get("demo", 1)
    x = images(3, 4, loaded.config.network)
    base = runtime.score("demo:1", loaded, x)
    cache = runtime.score_cache()
    # Another noise seed (the score's draws come from it) is another score, not a hit.
    reseeded = copy.copy(loaded)
    reseeded.config = dataclasses.replace(loaded.config, scoring=dataclasses.replace(
        loaded.config.scoring, seed=loaded.config.scoring.seed + 1))
    hits = cache.hits
    other = runtime.score("demo:1", reseeded, x)  # same load token, another seed: a miss
    assert cache.hits == hits
    assert torch.equal(other, score_images(reseeded, x)) and not torch.equal(other, base)
    more_draws = copy.copy(reseeded)
    more_draws.config = dataclasses.replace(reseeded.config, scoring=dataclasses.replace(
        reseeded.config.scoring, draws=reseeded.config.scoring.draws + 1))
    hits = cache.hits
    runtime.score("demo:1", more_draws, x)
    assert cache.hits == hits  # other draws: a miss
    # The same weights loaded again (a new load) never answer from the old entries.
    reloaded = copy.copy(loaded)
    vars(reloaded).pop("_score_cache_load", None)
    runtime.score("demo:1", reloaded, x)
    assert cache.hits == hits


def test_bounded_lru_and_off(runtime):
    loaded = runtime.models.get("demo", 1)
    x = images(5, 7, loaded.config.network)
    computed: list[int] = []

    def compute(rows):
        computed.append(len(rows))
        return torch.arange(len(rows), dtype=torch.float32)

    cache = ScoreCache(3)
    cache.scores("demo:1", loaded, x, compute)
    assert len(cache._items) == 3 and computed == [5]
    cache.scores("demo:1", loaded, x[4:], compute)  # the newest: kept
    cache.scores("demo:1", loaded, x[:1], compute)  # the oldest: evicted, computed again
    assert computed == [5, 1] and cache.hits == 1
    off = ScoreCache(0)
    off.scores("demo:1", loaded, x, compute)
    off.scores("demo:1", loaded, x, compute)
    assert computed == [5, 1, 5, 5] and off.hits == 0 and not off._items
