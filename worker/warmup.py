"""Warm-up before ready: an inference worker loads the default model and runs one forward
pass of each shape it serves before its first heartbeat, so /readyz (which counts workers by
heartbeat) counts only warm workers and the first request does not pay the load.

Served shapes: scoring batches of 1 image (a lone request) and of the largest batch the
batcher forms (DEBM_MAX_BATCH_SIZE, at most the handler's chunk), at the model's image size;
and one short generate chain (both stages, 2 steps each) for the samplers' code paths.  The
inputs are zeros and the seed is fixed (0): nothing of the warm-up reaches a job, a result or
the score cache (it calls model.pipeline directly).

Runs on a thread of the process that will run the tasks (the embedded server; an inference
worker on ``-P threads`` or ``solo``); a prefork worker's tasks run in child processes that a
warm-up in the parent would not reach, so prefork workers start their heartbeat at once
(docs/OPERATIONS.md runs inference on threads).  DEBM_WARMUP=false skips it (to measure what
it saves).  A failed warm-up (no servable model yet, a broken default checkpoint) is logged
and the worker becomes ready anyway: it can still serve other versions, and /readyz's model
check reports a missing model on its own.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

log = logging.getLogger("debm.worker")

GENERATE_STEPS = 2


def warm_up(runtime) -> dict[str, Any]:
    """Load the default model and run the served shapes once; what was done, with timings."""
    import torch

    from model.pipeline import generate, score_images

    from .handlers import SCORE_BATCH

    started = time.perf_counter()
    settings = runtime.settings
    name, version = runtime.registry.resolve_servable(None,
                                                      default_model=settings.default_model)
    loaded = runtime.models.get(name, version)
    loaded_at = time.perf_counter()
    net = loaded.config.network
    batches = sorted({1, max(1, min(settings.max_batch_size, SCORE_BATCH))})
    for batch in batches:
        score_images(loaded, torch.zeros((batch, net.channels, net.image_size,
                                           net.image_size)))
    generate(loaded, n=1, seed=0, steps_latent=GENERATE_STEPS, steps_pixel=GENERATE_STEPS)
    done = time.perf_counter()
    return {"model": f"{name}:{version}", "score_batches": batches,
            "load_seconds": round(loaded_at - started, 3),
            "passes_seconds": round(done - loaded_at, 3)}


def start_when_warm(runtime, ready: Callable[[], Any]) -> threading.Thread | None:
    """Warm up on a thread, then call ``ready`` (start the heartbeat); at once when
    DEBM_WARMUP is off."""
    if not runtime.settings.warmup:
        ready()
        return None

    def run() -> None:
        try:
            log.info("warm-up done: %s", warm_up(runtime))
        except Exception as exc:  # see the module docstring: ready anyway
            log.warning("warm-up failed (%s); ready without it", exc)
        ready()

    thread = threading.Thread(target=run, name="debm-warmup", daemon=True)
    thread.start()
    return thread
