"""Page faults and time of CPU scoring with and without model/allocator.py's thresholds.

    .venv/bin/python benchmarks/allocator.py off; .venv/bin/python benchmarks/allocator.py on

Run each mode in its own process (the thresholds are process-wide); it prints, for two rounds
of 8 calls scoring 32 digits with the demo model on one thread, milliseconds per image, user
and system CPU seconds and minor page faults.  Alternate the two commands a few times: this
machine's speed drifts between runs.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from service_load import digit_pngs  # noqa: E402

from model.allocator import keep_freed_memory  # noqa: E402
from model.checkpoints import load_checkpoint  # noqa: E402
from model.formats.imagefile import decode_image  # noqa: E402
from model.images import pil_to_model_tensor  # noqa: E402
from model.pipeline import InferenceOptions, prepare_for_inference, score_images  # noqa: E402


def main() -> int:
    mode = sys.argv[1] if len(sys.argv) > 1 else "on"
    torch.set_num_threads(1)
    if mode == "on":
        keep_freed_memory()
    loaded = prepare_for_inference(load_checkpoint("checkpoints/demo"),
                                   InferenceOptions(keep_freed_memory=False))
    x = pil_to_model_tensor([decode_image(p, max_pixels=1 << 24).image
                             for p in digit_pngs(32)], image_size=28, channels=1)
    score_images(loaded, x)
    for _ in range(2):
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(8):
            score_images(loaded, x)
        after = resource.getrusage(resource.RUSAGE_SELF)
        print(f"{mode}: {1000 * (time.perf_counter() - start) / 256:.1f} ms/image, user "
              f"{after.ru_utime - before.ru_utime:.2f} s, system "
              f"{after.ru_stime - before.ru_stime:.2f} s, minor faults "
              f"{after.ru_minflt - before.ru_minflt}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
