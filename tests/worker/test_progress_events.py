"""Generation previews: each stage's last state always, the rest at most one per
PREVIEW_MIN_SECONDS, and only the first PREVIEW_IMAGES chains are rendered."""

from __future__ import annotations

import torch

from worker import progress_events


class Recorder:
    def __init__(self):
        self.events: list[tuple[str, dict]] = []

    def append(self, job_id, event, data):
        self.events.append((event, data))


def run_chain(monkeypatch, seconds_per_step: float, steps=(("latent", 20), ("pixel", 20))):
    clock = [100.0]
    monkeypatch.setattr(progress_events.time, "monotonic", lambda: clock[0])
    recorder, rendered = Recorder(), []
    events = progress_events.LiveEvents(recorder, "job")
    total = sum(n for _, n in steps)
    step = 0

    def images(limit=None):
        rendered.append(limit)
        return torch.zeros((64, 1, 8, 8))[:limit]

    for stage, count in steps:
        for _ in range(count):
            step += 1
            clock[0] += seconds_per_step
            events.preview(stage, step, total, images)
    return [(d["stage"], d["step"]) for e, d in recorder.events if e == "preview"], rendered


def test_fast_steps_send_few_previews_but_every_stage_end(monkeypatch):
    sent, rendered = run_chain(monkeypatch, seconds_per_step=0.01)
    assert ("latent", 20) in sent and ("pixel", 40) in sent
    assert len(sent) <= 4  # 0.4 s of chain: the first, and each stage's last
    assert set(rendered) == {progress_events.PREVIEW_IMAGES}


def test_slow_steps_send_one_preview_per_tenth_of_the_chain(monkeypatch):
    sent, _ = run_chain(monkeypatch, seconds_per_step=1.0)
    assert [s for _, s in sent] == list(range(4, 41, 4))  # every total // 10 steps
