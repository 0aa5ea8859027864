"""Score cache: an image's OOD score under a loaded model version, reused when the same
pixels are scored again (data pipelines re-score the same images: deduplication, re-runs).

Keyed by everything the score depends on:

- the model: its "name:version" and the *load* it came from (a token set on the loaded
  checkpoint the first time it is scored), so a version whose files change and are loaded
  again never answers from the old weights;
- the scoring settings of that version: sigma, draws, the seed of the noise draws (the
  checkpoint's ``scoring.seed``: paper 5.2's -U^c(x, sigma) is averaged over ``draws`` noise
  draws from that seed, the same draws for every image, so the score is a function of the
  pixels), the score kind and semantic_sigma;
- the pixels: SHA-256 of the decoded, resized model-input tensor (shape, dtype and bytes),
  i.e. what the network sees, not the file (two encodings of the same pixels share an entry).

An image's score does not depend on the other images of its forward batch
(model.pipeline.score_readings), so a cached score is the float its first forward gave; a
fresh forward in a batch of another size may differ from it by the float32 rounding of a
differently shaped convolution (1-2 ulp, tests/worker/test_batching.py), exactly as two
fresh scores of the image in different batches do.
Bounded in entries (DEBM_SCORE_CACHE_ENTRIES, least recently used evicted; 0 = off), one per
worker process: a process's batcher already serves all its threads.  A shared Redis cache was
not built (see docs/OPERATIONS.md).

Series (core.prometheus registry: /metrics in embedded mode, each worker's exporter in
distributed mode): ``debm_score_cache_lookups_total{result="hit"|"miss"}`` and
``debm_score_cache_hit_ratio`` (hits / lookups since the process started).
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections import OrderedDict
from typing import Callable

from prometheus_client import Counter, Gauge

from core.prometheus import REGISTRY

LOOKUPS = Counter("debm_score_cache_lookups_total", "score-cache lookups, one per image",
                  ["result"], registry=REGISTRY)
HIT_RATIO = Gauge("debm_score_cache_hit_ratio", "score-cache hits / lookups in this process",
                  registry=REGISTRY)
ENTRIES = Gauge("debm_score_cache_entries", "scores held by this process's cache",
                registry=REGISTRY)

_LOAD_TOKEN = "_score_cache_load"


def pixel_digest(image) -> str:
    """SHA-256 of one model-input image tensor (C, H, W)."""
    array = image.detach().contiguous().cpu().numpy()
    digest = hashlib.sha256(f"{array.dtype}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def model_key(model_ref: str, loaded) -> tuple:
    token = getattr(loaded, _LOAD_TOKEN, None)
    if token is None:
        token = uuid.uuid4().hex
        setattr(loaded, _LOAD_TOKEN, token)
    s = loaded.config.scoring
    return (model_ref, token, float(s.sigma), int(s.draws), int(s.seed), s.score,
            float(s.semantic_sigma))


class ScoreCache:
    def __init__(self, entries: int):
        self.capacity = int(entries)
        self._items: OrderedDict[tuple, float] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def scores(self, model_ref: str, loaded, x, compute: Callable):
        """The scores of the images ``x`` (N, C, H, W): cached ones looked up, the others
        computed by ``compute(rows)`` (one call, the misses only) and remembered."""
        if self.capacity <= 0:
            return compute(x)
        keys, found, missing = self.split(model_ref, loaded, x)
        fresh = compute(x[missing] if len(missing) < len(keys) else x) if missing else None
        return self.fill(keys, found, missing, fresh)

    def split(self, model_ref: str, loaded, x) -> tuple[list, dict[int, float], list[int]]:
        """(each image's key, the cached scores by row, the rows to compute); counted."""
        base = model_key(model_ref, loaded)
        keys = [(*base, pixel_digest(image)) for image in x]
        found: dict[int, float] = {}
        with self._lock:
            for i, key in enumerate(keys):
                if key in self._items:
                    self._items.move_to_end(key)
                    found[i] = self._items[key]
        missing = [i for i in range(len(keys)) if i not in found]
        self._count(len(found), len(missing))
        return keys, found, missing

    def fill(self, keys: list, found: dict[int, float], missing: list[int], fresh):
        """Remember ``fresh`` (the scores of the ``missing`` rows) and return every row's."""
        import torch

        if missing:
            values = fresh.detach().float().cpu().tolist()
            with self._lock:
                for i, value in zip(missing, values):
                    found[i] = value
                    self._items[keys[i]] = value
                    self._items.move_to_end(keys[i])
                while len(self._items) > self.capacity:
                    self._items.popitem(last=False)
                ENTRIES.set(len(self._items))
        # float32, as the forward pass returns them: a cached score is the same number.
        return torch.tensor([found[i] for i in range(len(keys))], dtype=torch.float32)

    def _count(self, hits: int, misses: int) -> None:
        with self._lock:
            self.hits += hits
            self.misses += misses
            total = self.hits + self.misses
        if hits:
            LOOKUPS.labels("hit").inc(hits)
        if misses:
            LOOKUPS.labels("miss").inc(misses)
        if total:
            HIT_RATIO.set(self.hits / total)
