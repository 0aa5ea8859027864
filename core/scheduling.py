"""CPU scheduling in serving processes: the API's wake-ups do not preempt the model (Linux).

A serving process runs two kinds of threads: a few that run the model (the batcher's scoring
forward, a generation chain) and many short ones (HTTP, multipart parsing, job records,
leases).  Under the default policy every wake-up of a short thread may preempt the model on
its CPU.  Measured with ``/proc/PID/task/TID/schedstat`` under 32 concurrent one-image
clients on this 2-core machine (embedded server, docs/PERFORMANCE.md round four): the
batcher's thread waited 2.4-3.0 ms per image in the run queue although the machine was ~40%
idle, i.e. it was preempted by the API's bursts, not starved.

So a serving process starts under ``SCHED_BATCH`` (``short_threads_yield``): threads it starts
later inherit it, and a ``SCHED_BATCH`` thread that wakes up does not preempt the running one
(sched(7)).  The model's work runs inside ``model_work()``, back under the default policy.
With that, the batcher waited 0.7-1.1 ms per image, and 32 one-image clients were served 2-6%
faster (two A/B runs per mode, benchmarks/settings_ab.py; medians +4% and +3% embedded, +6%
and +2% distributed).
Nothing changes when a CPU is idle (a waking thread takes the idle CPU), so one request's
latency is the same.

Both calls are unprivileged (moving between SCHED_OTHER and SCHED_BATCH needs no capability);
elsewhere than Linux, or where a sandbox forbids the call, they do nothing.
``DEBM_SHORT_THREADS_YIELD=false`` turns it off.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

log = logging.getLogger("debm.scheduling")

_SUPPORTED = all(hasattr(os, name) for name in ("sched_setscheduler", "sched_getscheduler",
                                                   "SCHED_BATCH", "SCHED_OTHER"))


def _set_policy(policy: int) -> bool:
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))  # 0: the calling thread
        return True
    except OSError as exc:  # a seccomp profile may refuse it; scheduling is only a hint
        log.debug("sched_setscheduler(%s): %s", policy, exc)
        return False


def short_threads_yield(enabled: bool = True) -> bool:
    """Put the calling thread, and every thread it starts from now on, under SCHED_BATCH.
    Call it at process start, before the thread pools exist.  True when it applied."""
    if not (enabled and _SUPPORTED):
        return False
    return _set_policy(os.SCHED_BATCH)


@contextlib.contextmanager
def model_work() -> Iterator[None]:
    """Run the block under the default policy (SCHED_OTHER) when the calling thread is under
    SCHED_BATCH, and put it back afterwards."""
    if not _SUPPORTED:
        yield
        return
    try:
        was_batch = os.sched_getscheduler(0) == os.SCHED_BATCH
    except OSError:
        was_batch = False
    switched = was_batch and _set_policy(os.SCHED_OTHER)
    try:
        yield
    finally:
        if switched:
            _set_policy(os.SCHED_BATCH)
