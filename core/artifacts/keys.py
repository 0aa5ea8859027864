"""Where each kind of artifact lives in the store (the data directory's layout, see
core.datadir).  Ids are checked here, before they become keys."""

from __future__ import annotations

from core.datadir import DATASET_ID_RE, JOB_ID_RE

CHECKPOINT_MARKER = "checkpoint.json"  # model.formats.manifest.MANIFEST, written last
DATASET_MARKER = "meta.json"
RESULT_MARKER = "grid.png"  # a generate result folder: the samples first, the grid last


def _job(job_id: str) -> str:
    if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
        raise ValueError(f"invalid job id {job_id!r}")
    return job_id


def upload_prefix(job_id: str) -> str:
    return f"uploads/{_job(job_id)}"


def result_prefix(job_id: str) -> str:
    return f"results/{_job(job_id)}"


def snapshot_prefix(job_id: str) -> str:
    """A training job's resumable checkpoint (its resume state)."""
    return f"jobs/{_job(job_id)}/checkpoint"


def visuals_prefix(job_id: str) -> str:
    """A training job's sample grids and metric history."""
    return f"jobs/{_job(job_id)}/visuals"


def dataset_prefix(dataset_id: str) -> str:
    if not isinstance(dataset_id, str) or not DATASET_ID_RE.match(dataset_id):
        raise ValueError(f"invalid dataset id {dataset_id!r}")
    return f"datasets/{dataset_id}"
