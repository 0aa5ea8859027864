"""A small real filesystem (tmpfs) for the full-disk and read-only tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


class SmallFilesystem:
    """A real size-limited filesystem (tmpfs) mounted at ``path``: writes past its size fail
    with ENOSPC, and ``read_only()`` remounts it so writes fail with EROFS, exactly what a
    full or read-only data volume does.  Mounting needs root (CI runs as root); a non-root
    run fails here with that reason rather than faking the fault."""

    def __init__(self, path: Path, size_mb: int):
        self.path, self.size_mb = Path(path), size_mb
        self.mounted = False

    def mount(self) -> "SmallFilesystem":
        if os.geteuid() != 0:
            raise RuntimeError("the disk-full fault test mounts a small tmpfs and needs root "
                               "(CI runs as root)")
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m,mode=0755",
                        "tmpfs", str(self.path)], check=True)
        self.mounted = True
        return self

    def fill(self, leave: int = 0) -> Path:
        """Fill it up, leaving ``leave`` bytes free."""
        filler = self.path / "filler.bin"
        free = os.statvfs(self.path).f_bavail * os.statvfs(self.path).f_frsize
        with open(filler, "ab") as handle:
            remaining = free - leave
            block = b"\0" * (1 << 20)
            while remaining > 0:
                try:
                    remaining -= handle.write(block[:remaining])
                except OSError:
                    break
        return filler

    def free_up(self) -> None:
        (self.path / "filler.bin").unlink(missing_ok=True)

    def read_only(self, on: bool = True) -> None:
        subprocess.run(["mount", "-o", f"remount,{'ro' if on else 'rw'}", str(self.path)],
                       check=True)

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], check=False)
            self.mounted = False
