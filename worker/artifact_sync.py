"""A training job's files between this host and the artifact store.

With the local backend the job folder (DATA/jobs/JOB) *is* the store, so every function
here does nothing.  With S3 the job trains in this worker's own data directory and:

- ``restore`` (before training) brings back what an earlier attempt published, possibly
  from another host: its snapshot (the resume state, ``jobs/JOB/checkpoint``) and its
  sample grids and metric history (``jobs/JOB/visuals``);
- ``TrainingSync.after_step`` publishes the snapshot each time training saved a new one
  (the manifest's step moved), files first and the manifest last, so a worker that takes
  the job over after a SIGKILL resumes from the last complete snapshot;
- ``TrainingSync.publish_visuals`` uploads new or changed grids and the history, which the
  API serves from the store (``GET /jobs/{id}/files/{name}``).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from core.artifacts import ArtifactMissing, ArtifactStore
from core.artifacts.keys import CHECKPOINT_MARKER, snapshot_prefix, visuals_prefix

log = logging.getLogger("debm.worker")


def in_place(store: ArtifactStore, job_id: str) -> bool:
    """True when the job's folder is the store's own (local backend)."""
    return store.local_path(snapshot_prefix(job_id)) is not None


def _step_of(folder: Path) -> int:
    try:
        return int(json.loads((folder / CHECKPOINT_MARKER).read_text()).get("step") or 0)
    except (OSError, ValueError, AttributeError):
        return -1


def restore(store: ArtifactStore, job_id: str, out_dir: Path, visuals_dir: Path) -> None:
    """Bring the job's published snapshot and visuals here when they are newer than what
    this host has (see the module docstring)."""
    if in_place(store, job_id):
        return
    prefix = snapshot_prefix(job_id)
    if store.tree_complete(prefix, marker=CHECKPOINT_MARKER):
        published = json.loads(store.get_bytes(f"{prefix}/{CHECKPOINT_MARKER}"))
        if int(published.get("step") or 0) > _step_of(out_dir):
            store.fetch_tree(prefix, out_dir, marker=CHECKPOINT_MARKER)
            log.info("job %s: snapshot at step %s fetched from %s", job_id,
                     published.get("step"), store.describe())
    visuals_dir.mkdir(parents=True, exist_ok=True)
    for key, _size in store.list(visuals_prefix(job_id)):
        name = key.rsplit("/", 1)[1]
        try:
            (visuals_dir / name).write_bytes(store.get_bytes(key))
        except ArtifactMissing:
            continue


class TrainingSync:
    """Publishes a running job's snapshot and visuals (a no-op on the local backend)."""

    def __init__(self, store: ArtifactStore, job_id: str, out_dir: Path, visuals_dir: Path):
        self.store, self.job_id = store, job_id
        self.out_dir, self.visuals_dir = out_dir, visuals_dir
        self.active = not in_place(store, job_id)
        self.published_step = _step_of(out_dir) if self.active else -1
        self._sent: dict[str, tuple[int, int]] = {}

    def after_step(self) -> None:
        """Called after every training step: publish a snapshot saved since the last call.
        In the training thread itself, so the folder does not change while it is read."""
        if not self.active:
            return
        step = _step_of(self.out_dir)
        if step > self.published_step:
            self.store.put_tree(snapshot_prefix(self.job_id), self.out_dir,
                                marker=CHECKPOINT_MARKER)
            self.published_step = step
            log.info("job %s: snapshot at step %d published", self.job_id, step)

    def publish_visuals(self) -> None:
        if not self.active or not self.visuals_dir.is_dir():
            return
        for path in sorted(self.visuals_dir.iterdir()):
            if not path.is_file() or path.name.startswith("."):
                continue
            stat = path.stat()
            signature = (stat.st_size, stat.st_mtime_ns)
            if self._sent.get(path.name) != signature:
                self.store.put_file(f"{visuals_prefix(self.job_id)}/{path.name}", path)
                self._sent[path.name] = signature

    def finished(self, job_dir: Path) -> None:
        """The job succeeded and its model is registered: this host's copy goes (the store
        keeps the visuals; the snapshot stays until the job expires)."""
        if self.active:
            shutil.rmtree(job_dir, ignore_errors=True)


def fetch_dataset(store: ArtifactStore, key: str, cache_root: Path) -> Path:
    """A dataset file as a local path: in place on the local backend; streamed into the
    cache folder otherwise (datasets are immutable by id, so a copy there stays valid)."""
    local = store.local_path(key)
    if local is not None:
        return local
    return store.fetch_file(key, cache_root / key)
