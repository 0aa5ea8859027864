"""Layout of the data directory.

With the local artifact backend (``DEBM_ARTIFACTS`` empty, core.artifacts.local) this
directory *is* the artifact store, shared by the API and every worker (one host, or one
volume).  With the S3 backend each process has a data directory of its own: scratch space
(a training job's working folder, staging) and the worker's cache (``DEBM_CACHE_DIR``,
default DATA/cache); the same relative paths are then keys in the bucket.

    DATA/
      api-key                     generated API key (mode 0600) when DEBM_API_KEYS is empty
      models/registry.json        model names, versions and defaults (core.registry)
      models/NAME/VERSION/        checkpoint directories (safetensors + checkpoint.json)
      datasets/ID/                an uploaded dataset: data.zip or data.npz + meta.json
      uploads/JOB/                images uploaded for a scoring job (deleted once scored)
      results/JOB/                generated PNGs (grid.png, sample-000.png, ...)
      jobs/JOB/checkpoint/        a training job's resumable checkpoint
      jobs.sqlite, broker.sqlite, results.sqlite    embedded mode only

Names that come from requests (job ids, dataset ids, model names) are checked against strict
patterns before they become paths; ``inside`` refuses anything that resolves outside.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import tempfile
from pathlib import Path

JOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")
DATASET_ID_RE = re.compile(r"^ds_[0-9a-f]{16}$")


class DataDirError(RuntimeError):
    """The data directory cannot be created or written."""


# A write the data directory refused: full disk or quota, read-only or unwritable, I/O error.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
                            errno.EPERM, errno.EFBIG, errno.EIO})


def storage_errno(exc: BaseException | None) -> tuple[int, str | None] | None:
    """(errno, filename) of a refused write: the first OSError with an errno in ``exc``'s
    chain (causes and contexts), when that errno is a storage one; None for any other error.
    Checkpoints are written with plain file I/O (model.checkpoints), so a full disk or a
    read-only directory arrives as an OSError with its errno."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno is not None:
            return (exc.errno, exc.filename) if exc.errno in STORAGE_ERRNOS else None
        exc = exc.__cause__ or exc.__context__
    return None


def new_job_id() -> str:
    return secrets.token_hex(16)


def new_dataset_id() -> str:
    return "ds_" + secrets.token_hex(8)


class DataDir:
    def __init__(self, root: Path):
        self.root = Path(root).expanduser().resolve()

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def uploads(self) -> Path:
        return self.root / "uploads"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def api_key_file(self) -> Path:
        return self.root / "api-key"

    def ensure(self) -> "DataDir":
        """Create the layout and prove it is writable (fail fast at start)."""
        try:
            for path in (self.root, self.models, self.datasets, self.uploads, self.results,
                         self.jobs):
                path.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=self.root)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise DataDirError(f"data directory {self.root} is not usable: "
                               f"{exc.strerror or exc}") from None
        return self

    def job_dir(self, job_id: str) -> Path:
        return _job_path(self.jobs, job_id)

    def result_dir(self, job_id: str) -> Path:
        return _job_path(self.results, job_id)

    def upload_dir(self, job_id: str) -> Path:
        return _job_path(self.uploads, job_id)

    def remove_job_artifacts(self, job_id: str) -> int:
        """Delete what a job left in the data directory (its result files, upload leftovers,
        training folder) and return the bytes freed.  The one place the retention reaper
        (core.jobs.retention) deletes files through; registered models are copies and are
        never touched."""
        import shutil

        freed = 0
        for folder in (self.result_dir(job_id), self.upload_dir(job_id), self.job_dir(job_id)):
            if not folder.exists():
                continue
            for path in folder.rglob("*"):
                try:
                    if path.is_file() and not path.is_symlink():
                        freed += path.stat().st_size
                except OSError:
                    pass
            shutil.rmtree(folder, ignore_errors=True)
        return freed

    def dataset_dir(self, dataset_id: str) -> Path:
        if not DATASET_ID_RE.match(dataset_id):
            raise ValueError(f"invalid dataset id {dataset_id!r}")
        return self.datasets / dataset_id

    def storage_error(self, exc: BaseException) -> str | None:
        """A clear message when ``exc`` is this directory refusing a write, else None."""
        found = storage_errno(exc)
        if found is None:
            return None
        code, filename = found
        where = ""
        if filename:
            try:
                where = f" ({self.relative(Path(filename))})"
            except ValueError:
                where = ""
        return (f"could not write to the data directory{where}: {os.strerror(code)} (disk "
                "full or not writable?); nothing partial was kept or registered")

    def relative(self, path: Path) -> str:
        return Path(path).resolve().relative_to(self.root).as_posix()

    def inside(self, relative: str) -> Path:
        """Resolve a data-dir-relative path taken from a job record; refuse escapes."""
        if not isinstance(relative, str) or relative.startswith("/") or "\\" in relative:
            raise ValueError(f"invalid data path {relative!r}")
        path = (self.root / relative).resolve()
        if path != self.root and self.root not in path.parents:
            raise ValueError(f"data path {relative!r} leaves the data directory")
        return path


def _job_path(parent: Path, job_id: str) -> Path:
    if not JOB_ID_RE.match(job_id):
        raise ValueError(f"invalid job id {job_id!r}")
    return parent / job_id
