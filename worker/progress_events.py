"""What a running job shows while it runs: events in the job's event log (core.jobs.events)
for GET /jobs/{id}/events, and for training jobs the sample grids and metric history saved in
DATA/jobs/ID/visuals/ every DEBM_TRAIN_SNAPSHOT_EVERY steps.

Everything here is best effort: a full event log or an unreachable Redis costs a preview,
never the job.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

from core.jobs import clean_json
from core.jobs.events import EventLog
from model.formats.files import atomic_write_bytes

log = logging.getLogger("debm.worker")

PREVIEWS_PER_STAGE = 10  # preview grids per job (about; plus one at each stage's end)
PREVIEW_IMAGES = 16  # the first 16 chains, as a 4x4 grid
# At most one preview per this many seconds within a stage (the stage's last state is always
# sent).  A preview decodes h(z) and encodes a PNG; one per step of a short chain cost a
# noticeable share of a /generate (measured in docs/PERFORMANCE.md).
PREVIEW_MIN_SECONDS = 0.5
HISTORY_POINTS_PER_SNAPSHOT = 10  # metric history resolution: 10 points per snapshot period
VISUALS = "visuals"


def grid_base64(images, limit: int = PREVIEW_IMAGES) -> tuple[str, bytes]:
    from model.images import grid_png

    png = grid_png(images[:limit].detach().float().cpu().nan_to_num(-1.0))
    return base64.b64encode(png).decode(), png


class LiveEvents:
    """The event-log half of a Reporter (worker.runtime.Reporter calls it)."""

    def __init__(self, events: EventLog | None, job_id: str):
        self.events, self.job_id = events, job_id
        self._origin: tuple[float, int] | None = None  # (time, step) of the first report
        self._stage: str | None = None
        self._pending: tuple[str, int, int, Callable] | None = None  # last state seen
        self._last_preview = float("-inf")
        self._warned = False

    def emit(self, event: str, data: dict[str, Any]) -> None:
        if self.events is None:
            return
        try:
            self.events.append(self.job_id, event, data)
        except Exception as exc:  # best effort: the job goes on without this event
            if not self._warned:
                log.warning("job %s: event not recorded: %s", self.job_id, exc)
                self._warned = True

    def progress(self, progress: dict[str, Any]) -> None:
        """A progress event with the elapsed time and an ETA from this run's own rate (a
        resumed training job counts from where it resumed)."""
        now, step = time.monotonic(), int(progress.get("step") or 0)
        total = progress.get("total")
        if self._origin is None:
            self._origin = (now, step)
        started, first = self._origin
        eta = None
        if total and step > first:
            eta = round((now - started) / (step - first) * (total - step), 1)
        self.emit("progress", {**progress, "elapsed": round(now - started, 2),
                               "eta_seconds": eta})

    def metrics(self, metrics: dict[str, Any]) -> None:
        self.emit("metrics", metrics)

    # -- generation previews -----------------------------------------------------------------
    def preview(self, stage: str, step: int, total: int, images: Callable) -> None:
        """``on_state`` of the samplers: a grid every total / PREVIEWS_PER_STAGE steps, and
        the last state of each stage (h(z_K) before the pixel stage starts)."""
        if self._stage is not None and stage != self._stage and self._pending is not None:
            self._send_preview(*self._pending)  # the previous stage's final state
        self._stage = stage
        every = max(1, total // PREVIEWS_PER_STAGE)
        due = time.monotonic() - self._last_preview >= PREVIEW_MIN_SECONDS
        if step == total or (step % every == 0 and due):
            self._send_preview(stage, step, total, images)
            self._pending = None
        else:
            self._pending = (stage, step, total, images)

    def _send_preview(self, stage: str, step: int, total: int, images: Callable) -> None:
        if self.events is None:
            return
        self._last_preview = time.monotonic()
        try:
            encoded, _ = grid_base64(images(PREVIEW_IMAGES))
        except Exception as exc:  # pragma: no cover - rendering never fails on finite data
            log.warning("job %s: preview not rendered: %s", self.job_id, exc)
            return
        self.emit("preview", {"stage": stage, "step": step, "total": total,
                              "png_base64": encoded})


class TrainingVisuals:
    """Sample grids and the metric history of a training job, saved every ``every`` steps
    in ``folder`` (DATA/jobs/ID/visuals) and announced as ``grid`` events."""

    def __init__(self, folder: Path, job_id: str, every: int, live: LiveEvents):
        self.folder, self.job_id, self.every, self.live = Path(folder), job_id, every, live
        self.history_every = max(1, every // HISTORY_POINTS_PER_SNAPSHOT) if every else 0
        self.history: list[dict[str, Any]] = []
        self.grids: list[dict[str, Any]] = []
        self.folder.mkdir(parents=True, exist_ok=True)
        self._load()

    def _load(self) -> None:
        """A redelivered job resumes: keep what the earlier attempt saved."""
        try:
            self.history = json.loads((self.folder / "history.json").read_text())
        except (OSError, ValueError):
            self.history = []
        self.grids = [{"step": int(p.stem.split("-")[1]), "url": self.url(p.name)}
                      for p in sorted(self.folder.glob("grid-*.png"))]

    def url(self, name: str) -> str:
        return f"/jobs/{self.job_id}/files/{name}"

    def resume_from(self, step: int) -> None:
        self.history = [h for h in self.history if h.get("step", 0) <= step]
        self.grids = [g for g in self.grids if g["step"] <= step]

    def on_metrics(self, metrics) -> None:
        if self.history_every and (metrics.step % self.history_every == 0 or
                                   metrics.step == metrics.total_steps):
            self.history.append(metrics.to_dict())
        if self.every and metrics.step % self.every == 0:
            self.save_history()

    def on_snapshot(self, step: int, images) -> None:
        encoded, png = grid_base64(images)
        name = f"grid-{step:06d}.png"
        atomic_write_bytes(self.folder / name, png)
        self.grids = [g for g in self.grids if g["step"] != step]
        self.grids.append({"step": step, "url": self.url(name)})
        self.live.emit("grid", {"step": step, "url": self.url(name), "png_base64": encoded})

    def save_history(self) -> None:
        atomic_write_bytes(self.folder / "history.json",
                           json.dumps(clean_json(self.history), separators=(",", ":"),
                                      allow_nan=False).encode())

    def summary(self) -> dict[str, Any]:
        self.save_history()
        return {"grids": self.grids, "history_url": self.url("history.json")}
