"""keep_freed_memory: the glibc thresholds are set once, and serving preparation sets them."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PROBE = textwrap.dedent("""
    from model.allocator import keep_freed_memory
    first, second = keep_freed_memory(), keep_freed_memory()
    print(first, second)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux") or
                    __import__("platform").libc_ver()[0] != "glibc", reason="glibc mallopt")
def test_thresholds_apply_once_in_a_fresh_process():
    # A fresh process, so that this test does not depend on which tests ran before.  The
    # speed it buys (no page faults per forward) is measured in docs/PERFORMANCE.md; a fault
    # count depends on the allocation history and is not asserted here.
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True, timeout=120, cwd=REPO).stdout.split()
    assert out == ["True", "True"]


def test_serving_preparation_applies_it(tiny_checkpoint):
    from model import allocator
    from model.checkpoints import load_checkpoint
    from model.pipeline import InferenceOptions, prepare_for_inference

    prepared = prepare_for_inference(load_checkpoint(tiny_checkpoint))
    assert prepared.inference.keep_freed_memory
    assert allocator._applied is not None  # attempted (True on glibc)
    off = prepare_for_inference(load_checkpoint(tiny_checkpoint),
                                InferenceOptions(keep_freed_memory=False))
    assert not off.inference.keep_freed_memory
