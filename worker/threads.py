"""Model work that must not leave an OpenMP thread team behind.

With OpenMP (torch's CPU backend on Linux), every thread that runs a parallel region gets a
team of its own, whose worker threads live as long as that thread.  libgomp counts all of them,
and once they outnumber the CPUs it spins only ~100 times before a waiting worker sleeps
(``gomp_throttled_spin_count_var``; ~300,000 otherwise): every parallel region of a forward
then wakes a sleeping thread.  Measured with the demo checkpoint, 2 threads on 2 CPUs, one
image: 22-23 ms when one thread of the process has ever run the model, 41-45 ms once a
second one has (docs/PERFORMANCE.md, round five).  So the batcher's thread is the only
long-lived thread that runs the model in a serving process (and it ends after a second
without requests, ``worker.batching.IDLE_EXIT_SECONDS``); a model load (``worker.cache``) and
a generate chain (``worker.handlers.run_generate``) run on a thread of their own that ends
with the work, and their team with it.
"""

from __future__ import annotations

import threading
from typing import Any, Callable


def on_own_thread(fn: Callable[..., Any], *args: Any, name: str = "debm-model-work",
                  **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` on a new thread that ends when it returns; its result, or its
    exception raised here."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")
