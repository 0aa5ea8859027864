"""worker.warmup on the real runtime: the default model is loaded and its served shapes run
once; nothing reaches the score cache; ready() follows the warm-up, at once when it is off,
and even when the warm-up fails."""

from __future__ import annotations

import dataclasses
import threading

from worker.warmup import start_when_warm, warm_up


def test_warm_up_loads_the_default_model_and_runs_each_shape(runtime):
    done = warm_up(runtime)
    assert done["model"] == "demo:1" and done["score_batches"] == [1, 64]
    assert ("demo", 1) in runtime.models
    cache = runtime.score_cache()
    assert (cache.hits, cache.misses) == (0, 0)


def test_ready_after_the_warm_up_or_at_once_when_off(runtime, tmp_path):
    order: list[str] = []
    ready = threading.Event()
    thread = start_when_warm(runtime, lambda: (order.append("ready"), ready.set()))
    assert thread is not None and ready.wait(120)
    assert ("demo", 1) in runtime.models and order == ["ready"]

    off = dataclasses.replace(runtime, settings=runtime.settings.model_copy(
        update={"warmup": False}))
    called = []
    assert start_when_warm(off, lambda: called.append(1)) is None and called == [1]

    # No servable model (an empty registry): logged, and ready all the same.
    from core.registry import ModelRegistry
    empty = dataclasses.replace(runtime, registry=ModelRegistry(tmp_path / "no-models"))
    failed = threading.Event()
    start_when_warm(empty, failed.set)
    assert failed.wait(30)
