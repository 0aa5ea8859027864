"""Backend ``local``: the data directory, in today's layout (core.datadir).

Every write is atomic as before: one file is written to a temp file and renamed
(``atomic_write_bytes``); a tree is staged in a hidden folder beside its place and renamed
in, replacing an existing one with an atomic exchange (``localfiles.swap_into_place``).
Reads are plain file reads; ``local_path`` and ``fetch_file`` answer the file in place, so
nothing is copied on one host.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import BinaryIO

from model.formats.files import atomic_write_bytes

from .base import ArtifactMissing, ArtifactStore, check_key, check_prefix
from .localfiles import swap_into_place, tree_files

CHUNK = 1 << 20


class LocalStore(ArtifactStore):
    name = "local"

    def __init__(self, root: Path):
        self.root = Path(root).expanduser().resolve()

    def describe(self) -> str:
        return f"the data directory {self.root}"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._op("put", len(data)):
            atomic_write_bytes(self._path(key), data)

    def put_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        with self._op("put") as moved:
            if Path(path).resolve() == target:
                return
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as out, open(path, "rb") as source:
                    for chunk in iter(lambda: source.read(CHUNK), b""):
                        out.write(chunk)
                        moved[0] += len(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                os.chmod(tmp, 0o644)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

    def get_bytes(self, key: str) -> bytes:
        with self._op("get") as moved:
            try:
                data = self._path(key).read_bytes()
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                raise ArtifactMissing(f"{key} is not in {self.describe()}") from None
            moved[0] = len(data)
            return data

    def open_read(self, key: str) -> BinaryIO:
        with self._op("open"):
            try:
                return open(self._path(key), "rb")
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                raise ArtifactMissing(f"{key} is not in {self.describe()}") from None

    def fetch_file(self, key: str, target: Path) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise ArtifactMissing(f"{key} is not in {self.describe()}")
        return path

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[tuple[str, int]]:
        base = self.root / check_prefix(prefix)
        with self._op("list"):
            if not base.is_dir():
                return []
            found = []
            for path in base.rglob("*"):
                if path.is_file() and not path.name.startswith("."):
                    found.append((path.relative_to(self.root).as_posix(), path.stat().st_size))
            return sorted(found)

    def delete_prefix(self, prefix: str) -> None:
        with self._op("delete"):
            shutil.rmtree(self.root / check_prefix(prefix), ignore_errors=True)

    def put_tree(self, prefix: str, directory: Path, *, marker: str,
                 move: bool = False) -> None:
        target = self.root / check_prefix(prefix).rstrip("/")
        directory = Path(directory)
        with self._op("put_tree") as moved:
            if directory.resolve() == target:
                return  # written in place already (a training job's own checkpoint folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            if move and directory.parent.resolve() == target.parent:
                swap_into_place(directory, target)
                return
            staging = target.with_name(f".incoming-{uuid.uuid4().hex}")
            staging.mkdir()
            try:
                for item in tree_files(directory):
                    moved[0] += item.stat().st_size
                    if item.name == marker:
                        continue
                    try:  # checkpoint files are immutable once written: a link will do
                        os.link(item, staging / item.name)
                    except OSError:
                        shutil.copy2(item, staging / item.name)
                # The marker (a manifest that a resumed run rewrites in place) is copied,
                # never linked, and written last.
                atomic_write_bytes(staging / marker, (directory / marker).read_bytes())
                swap_into_place(staging, target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise

    def tree_complete(self, prefix: str, *, marker: str) -> bool:
        return (self.root / check_prefix(prefix) / marker).is_file()

    def fetch_tree(self, prefix: str, target: Path, *, marker: str) -> Path:
        folder = self.root / check_prefix(prefix).rstrip("/")
        if not (folder / marker).is_file():
            raise ArtifactMissing(f"{prefix}{marker} is not in {self.describe()}")
        return folder
