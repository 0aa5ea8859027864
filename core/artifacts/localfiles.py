"""Local-file helpers shared by the backends: atomic folder swaps and staged tree copies."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100
_libc = None


def _renameat2():
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        except OSError:
            _libc = False
    return getattr(_libc, "renameat2", None) if _libc else None


def exchange(staging: Path, target: Path) -> bool:
    """Swap two existing directories in one step (Linux renameat2 RENAME_EXCHANGE): a reader
    of ``target`` sees the old folder or the new one, never none and never a mix.  False
    when the kernel or filesystem cannot (the caller falls back)."""
    call = _renameat2()
    if call is None:
        return False
    result = call(_AT_FDCWD, os.fsencode(staging), _AT_FDCWD, os.fsencode(target),
                  _RENAME_EXCHANGE)
    return result == 0


def swap_into_place(staging: Path, target: Path) -> None:
    """Move the folder ``staging`` to ``target``, replacing a folder already there.  With an
    atomic exchange where the system has one; else rename the old one aside first (readers
    then see the folder absent for an instant, never mixed)."""
    if not target.exists():
        try:
            os.rename(staging, target)
            return
        except OSError:
            if not target.exists():
                raise
    if exchange(staging, target):
        shutil.rmtree(staging, ignore_errors=True)  # now holds the old folder
        return
    aside = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(target, aside)
    os.rename(staging, target)
    shutil.rmtree(aside, ignore_errors=True)


def fetch_tree_into(store: Any, prefix: str, target: Path, *, marker: str) -> Path:
    """``store`` is a core.artifacts.base.ArtifactStore (not imported: base imports this module).
    Download every object of a tree (flat) into a staging folder beside ``target``, the
    marker's bytes last, and swap it into place.  The marker is read *first* and written
    last: the files downloaded are those of that marker's generation or newer."""
    marker_bytes = store.get_bytes(prefix + marker)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        for key, _size in store.list(prefix):
            name = key[len(prefix):]
            if "/" in name or name == marker:
                continue
            store.fetch_file(key, staging / name)
        (staging / marker).write_bytes(marker_bytes)
        swap_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def tree_files(directory: Path) -> list[Path]:
    """The files a tree publishes: regular top-level files, not hidden (temp files)."""
    return sorted(p for p in Path(directory).iterdir()
                  if p.is_file() and not p.name.startswith("."))
