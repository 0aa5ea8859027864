"""Unpack an uploaded checkpoint (a .tar, .tar.gz or .zip of a `debm export` folder) safely.

``POST /models/{name}/versions`` streams the archive to a spooled file (its byte count capped
by ``DEBM_MAX_CHECKPOINT_BYTES`` while it arrives: BodyLimitMiddleware), then this module
writes its files into an empty staging folder, member by member:

- every member's path is checked before anything is written: no absolute path, no ``..``, no
  backslash or NUL, no drive letter; symlinks, hard links, devices and FIFOs are refused;
- one leading folder is allowed (``tar -cf x.tar mine/`` as well as ``tar -C mine -cf x.tar .``);
  files inside sub-folders (the warm-up baseline ``warmup/`` that `debm export` writes) are
  checked the same way and skipped: the registry serves the top-level checkpoint only;
- a top-level file is ``checkpoint.json`` or a ``.safetensors`` file (nothing that could be
  unpickled) that the manifest lists; anything else is refused by name;
- the bytes written are counted as they are copied (a zip member's declared size is not
  trusted) and may not pass the same limit, nor the file count ``MAX_MEMBERS``.

The registry then verifies the manifest and every file's SHA-256 (core.registry.verify_checkpoint,
the rule every registered version passes) while it registers the version.
"""

from __future__ import annotations

import json
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from model.formats.errors import UserError
from model.formats.manifest import MANIFEST

MAX_MEMBERS = 64
COPY_CHUNK = 1 << 20


class CheckpointRejected(UserError, ValueError):
    """The archive is not an acceptable checkpoint; ``status`` is the HTTP answer."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def unpack_checkpoint(archive: IO[bytes], target: Path, *, max_bytes: int) -> list[str]:
    """Write the archive's top-level checkpoint files into ``target`` (created, must not
    exist); return their names.  Raises CheckpointRejected saying what was wrong."""
    with _members(archive) as members:
        if len(members) > MAX_MEMBERS:
            raise CheckpointRejected(f"the archive holds {len(members)} entries; a checkpoint "
                                     f"has at most {MAX_MEMBERS}")
        paths = [_safe_parts(name) for name, _, _ in members]
        prefix = _common_folder(paths)
        target.mkdir(parents=True)
        written, total = [], 0
        for (name, kind, open_member), parts in zip(members, paths):
            if kind == "dir":
                continue
            if kind != "file":
                raise CheckpointRejected(f"{name!r} is a {kind}; only regular files are "
                                         "accepted (no symlinks or links)")
            parts = parts[len(prefix):]
            if len(parts) != 1:
                continue  # a sub-checkpoint (warmup/): checked above, not served
            file = parts[0]
            if file != MANIFEST and not file.endswith(".safetensors"):
                raise CheckpointRejected(f"{name!r}: a checkpoint holds {MANIFEST} and "
                                         ".safetensors files only")
            if file in written:
                raise CheckpointRejected(f"{name!r} appears twice in the archive")
            total = _copy(open_member, target / file, total, max_bytes, name)
            written.append(file)
    _check_listed(target, written)
    return written


def _check_listed(target: Path, written: list[str]) -> None:
    if MANIFEST not in written:
        raise CheckpointRejected(f"no {MANIFEST} at the top of the archive (archive the "
                                 "folder `debm export` wrote)")
    try:
        listed = json.loads((target / MANIFEST).read_text()).get("files")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
        raise CheckpointRejected(f"{MANIFEST} is not a readable manifest ({exc})") from None
    extra = sorted(set(written) - {MANIFEST} - set(listed if isinstance(listed, dict) else ()))
    if extra:
        raise CheckpointRejected(f"{', '.join(extra)}: not listed in {MANIFEST}")


def _copy(open_member, path: Path, total: int, max_bytes: int, name: str) -> int:
    with open_member() as source, open(path, "xb") as out:
        for chunk in iter(lambda: source.read(COPY_CHUNK), b""):
            total += len(chunk)
            if total > max_bytes:
                raise CheckpointRejected(
                    f"the checkpoint unpacks to more than {max_bytes} bytes "
                    "(DEBM_MAX_CHECKPOINT_BYTES)", status=413)
            out.write(chunk)
    return total


def _safe_parts(name: str) -> tuple[str, ...]:
    if "\\" in name or "\x00" in name or name.startswith("/") or (
            len(name) > 1 and name[1] == ":"):
        raise CheckpointRejected(f"unsafe path in the archive: {name!r}")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if any(p == ".." for p in parts):
        raise CheckpointRejected(f"unsafe path in the archive: {name!r}")
    return parts


def _common_folder(paths: list[tuple[str, ...]]) -> tuple[str, ...]:
    """One leading folder every entry sits in (e.g. ``mine/``), or none."""
    if any(parts == (MANIFEST,) for parts in paths):
        return ()
    firsts = {parts[0] for parts in paths if parts}
    if len(firsts) == 1 and any(parts[1:] == (MANIFEST,) for parts in paths):
        return (firsts.pop(),)
    return ()


@contextmanager
def _members(archive: IO[bytes]) -> Iterator[list]:
    """(name, kind, open) per member: kind is file, dir, symlink, link or device."""
    archive.seek(0)
    if zipfile.is_zipfile(archive):
        archive.seek(0)
        try:
            with zipfile.ZipFile(archive) as bundle:
                yield [(info.filename, _zip_kind(info),
                        (lambda info=info: bundle.open(info))) for info in bundle.infolist()]
        except (zipfile.BadZipFile, zipfile.LargeZipFile, RuntimeError, EOFError) as exc:
            raise CheckpointRejected(f"a damaged zip archive ({exc})") from None
        return
    archive.seek(0)
    try:
        bundle = tarfile.open(fileobj=archive, mode="r:*")
        listed = bundle.getmembers()
    except (tarfile.TarError, EOFError) as exc:
        raise CheckpointRejected("not a .tar, .tar.gz or .zip archive, or a damaged one "
                                 f"({exc})", status=415) from None
    with bundle:
        yield [(info.name, _tar_kind(info), (lambda info=info: bundle.extractfile(info)))
               for info in listed]


def _zip_kind(info: zipfile.ZipInfo) -> str:
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "symlink"
    if info.is_dir():
        return "dir"
    if info.flag_bits & 0x1:
        raise CheckpointRejected(f"{info.filename!r} is encrypted")
    return "file"


def _tar_kind(info: tarfile.TarInfo) -> str:
    if info.isreg():
        return "file"
    if info.isdir():
        return "dir"
    if info.issym():
        return "symlink"
    return "hard link" if info.islnk() else "device or FIFO"


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
