"""Issue 23, error path 9: decoding from many threads at once must not touch process-wide state.

Before the fix every decode set ``PIL.Image.MAX_IMAGE_PIXELS`` to its caller's limit and swapped
the warning filters (``warnings.catch_warnings``), restoring them afterwards; two overlapping
calls restored each other's values, so a thread could decode under another caller's limit and
the process could be left with a wrong global.  A watcher thread samples both globals while
eight threads decode with different limits; it must only ever see the original values."""

from __future__ import annotations

import io
import threading
import warnings

from PIL import Image

from model.formats.imagefile import ImageRejected, decode_image, model_pixels


def _png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_concurrent_decodes_leave_pillow_and_warning_globals_alone():
    original_limit = Image.MAX_IMAGE_PIXELS
    original_filters = list(warnings.filters)
    small, large = _png((40, 30)), _png((300, 200))
    seen_limits: set = set()
    seen_filters: set = set()
    stop = threading.Event()
    failures: list[BaseException] = []

    def watch():
        while not stop.is_set():
            seen_limits.add(Image.MAX_IMAGE_PIXELS)
            seen_filters.add(len(warnings.filters))

    def decode(limit: int):
        try:
            for _ in range(150):
                decode_image(small, max_pixels=limit + 1200)
                model_pixels(small, image_size=8, channels=1, max_pixels=limit + 1200)
                try:  # 60,000 pixels against a smaller limit: refused, limit per call
                    decode_image(large, max_pixels=limit)
                    failures.append(AssertionError(f"{limit} admitted 300x200"))
                except ImageRejected:
                    pass
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    watcher = threading.Thread(target=watch)
    watcher.start()
    workers = [threading.Thread(target=decode, args=(1000 * (i + 1),)) for i in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    stop.set()
    watcher.join()
    assert not failures, failures[:3]
    assert seen_limits == {original_limit}
    assert seen_filters == {len(original_filters)}
    assert Image.MAX_IMAGE_PIXELS == original_limit
    assert warnings.filters == original_filters
