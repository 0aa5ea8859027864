"""Units of queued work, which the per-key and total quotas count (not jobs).

One unit is one image to score, or one Langevin step of one chain: a scoring job of k images
weighs k, a generate job weighs n times its sampler steps (K latent + T pixel steps for
two_stage and texture_only, levels times steps per level for annealed).  Thirty-two
one-image scoring requests therefore weigh 32, while one n=64 generate with the demo's 25
steps weighs 1,600.  Training jobs weigh 0 here: they run on their own queue and are bounded
by the job-count limits.  Torch-free: the API computes it from the checkpoint's manifest.

Fairness between keys (the admission rule both job stores apply atomically in ``create``):

1. A job heavier than what one key may queue (``DEBM_MAX_QUEUED_WORK_PER_KEY``) is refused
   up front with a 422 (``JobTooHeavy``), whatever the queue holds: it could never fit.
2. A key's own limits (work and job count per key) hold for every job of that key.
3. The total limits (``DEBM_MAX_QUEUED_WORK``, ``DEBM_MAX_QUEUED_JOBS``) hold only for a key
   that already has a queued or running job.  A key with nothing active always gets its
   first job in (within its own limits), so keys at their limits, however many, never lock
   another key out.  The total can thus be passed by at most one job per key, each no
   heavier than the per-key limit: the bound is ``max_queued_work + keys x per-key work``.
"""

from __future__ import annotations

from typing import Any

from model.formats.errors import UserError


class JobTooHeavy(UserError):
    """A job heavier than one key may ever queue: refused up front (422), never queued."""

    def __init__(self, work: int, limit: int):
        super().__init__(
            f"this job weighs {work} units of work (n x sampler steps for /generate, one per "
            f"image for /ood-score) and one key may queue at most {limit} "
            "(DEBM_MAX_QUEUED_WORK_PER_KEY); ask for fewer images or steps")
        self.work, self.limit = work, limit


def check_weight(work: int, limit: int) -> None:
    """Rule 1 of the module docstring."""
    if work > limit:
        raise JobTooHeavy(int(work), int(limit))


def score_work(images: int) -> int:
    return max(1, int(images))


def generate_work(params: dict[str, Any], sampler_defaults: dict[str, Any]) -> int:
    """``n`` times the steps the sampler will run, request overrides over the checkpoint's
    sampler defaults (``config.sampler`` of its manifest)."""
    n = int(params.get("n") or 1)
    sampler = params.get("sampler") or "two_stage"

    def value(name: str, fallback: int) -> int:
        given = params.get(name)
        if given is None:
            given = sampler_defaults.get(name, fallback)
        try:
            return max(0, int(given))
        except (TypeError, ValueError):
            return fallback

    if sampler == "annealed":
        steps = value("annealed_levels", 1) * value("annealed_steps_per_level", 1)
    else:
        steps = value("steps_latent", 0) + value("steps_pixel", 0)
    return max(1, n * max(1, steps))
