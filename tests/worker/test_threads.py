"""worker.threads: model work on a thread of its own leaves no OpenMP team behind."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from tests.support import wait_until
from worker.threads import on_own_thread


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_result_and_exception_come_back_to_the_caller():
    assert on_own_thread(lambda a, b=0: a + b, 2, b=3) == 5
    names = []
    on_own_thread(lambda: names.append(threading.current_thread().name), name="x-work")
    assert names == ["x-work"]
    with pytest.raises(KeyError, match="gone"):
        on_own_thread(lambda: {}["gone"])


@pytest.mark.skipif(not os.path.isdir("/proc/self/task") or (os.cpu_count() or 1) < 2,
                    reason="needs Linux's /proc and 2 CPUs for a 2-thread OpenMP team")
def test_a_parallel_region_on_its_own_thread_leaves_no_team():
    before_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a = torch.rand(512, 512, generator=torch.Generator().manual_seed(0))

        def work():
            for _ in range(3):
                (a @ a).sum()  # large enough to run in parallel
            return _threads()

        idle = _threads()
        during = on_own_thread(work)
        # While it ran: the thread itself and its team's worker; after: neither.
        assert during >= idle + 2, (idle, during)
        # The team's worker leaves just after its master thread ends: give it a moment.
        wait_until(lambda: _threads() == idle, timeout=5, what="the team to end")
    finally:
        torch.set_num_threads(before_threads)
