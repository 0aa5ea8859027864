"""keep_freed_memory: freed activation blocks are reused, not faulted in again per forward."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[2] / "checkpoints" / "demo"

PROBE = textwrap.dedent("""
    import resource, sys, torch
    from model.allocator import keep_freed_memory
    applied = keep_freed_memory() if sys.argv[1] == "on" else False
    assert keep_freed_memory() == applied or sys.argv[1] == "off"  # idempotent
    torch.set_num_threads(1)
    from model.checkpoints import load_checkpoint
    from model.energies import texture_score
    dae = load_checkpoint(sys.argv[2]).model.dae  # the shipped demo model: real layer sizes
    x = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    def churn():
        with torch.inference_mode():
            for _ in range(2):
                texture_score(dae, x, sigma=0.05, draws=8, seed=0)
    churn()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    churn()
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def probe(mode: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode, str(DEMO)], capture_output=True,
                         text=True, check=True, timeout=120).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt only")
def test_freed_blocks_are_reused_without_page_faults():
    applied, faults = probe("on")
    assert applied
    # Without it, glibc maps and unmaps activation blocks: ~1,500 faults for these 64
    # images in a fresh process, and 3e5-9e5 per 256 images in a long-running one.
    assert faults < 200, faults


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
