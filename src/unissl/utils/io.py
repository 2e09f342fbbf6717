"""Atomic writes: a crash never leaves a half-written checkpoint, token store or result file.

Everything is written to a temporary sibling first and moved into place with ``os.replace`` (atomic on
POSIX within one filesystem).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from unissl.errors import UnisslError


def _umask() -> int:
    """The process umask (read without changing it for longer than one call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _ensure_parent(path: Path) -> None:
    """Create ``path``'s parent, or one line naming what is in the way (a file, no permission, a read-only
    or virtual file system)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UnisslError(f"cannot write {path}: a parent of it is a file; choose another output path") from None
    except OSError as e:  # EACCES / EPERM, EROFS, ENOENT under /proc
        raise UnisslError(f"cannot write {path}: {e.strerror or e}; choose a writable output path") from None
    if not os.access(path.parent, os.W_OK):
        raise UnisslError(f"cannot write {path}: {path.parent} is not writable; choose a writable output path")


def check_writable(path: str | os.PathLike, flag: str, kind: str = "dir") -> None:
    """Refuse, before any work, an output ``path`` that can never be written; writes nothing that stays.

    ``kind`` is ``dir`` (a directory that will be created or filled) or ``file`` (a file written in its
    parent). The deepest existing directory on the way is probed by creating and removing an empty temporary
    directory in it, because ``os.access`` says yes on read-only mounts and virtual file systems (``/proc``,
    ``/sys``) where every write fails. ``flag`` names the option to change in the one-line error.
    """
    path = Path(path)
    if kind == "dir" and path.exists() and not path.is_dir():
        raise UnisslError(f"{flag} {path} is a file, not a directory; choose another {flag}")
    if kind == "file" and path.is_dir():
        raise UnisslError(f"{flag} {path} is a directory; pass a file path")
    probe_in = path if (kind == "dir" and path.is_dir()) else path.parent
    while not probe_in.exists() and probe_in != probe_in.parent:
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise UnisslError(f"{flag} {path} cannot be created: {probe_in} is a file; choose another {flag}")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".unissl-write-check.", dir=probe_in))
    except OSError as e:
        why = {errno.EROFS: "is on a read-only file system", errno.EACCES: "is not writable (permission denied)",
               errno.EPERM: "does not allow new files (a virtual file system?)",
               errno.ENOENT: "does not allow new files (a virtual file system?)",
               errno.ENOSPC: "is on a full disk", errno.EDQUOT: "is over its disk quota"}.get(
                   e.errno or 0, f"cannot be written ({e.strerror or e})")
        raise UnisslError(f"{flag} {path} cannot be written: {probe_in} {why}; choose another {flag}") from None


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file next to ``path``; on success fsync it and rename it onto ``path``.

    The file gets the permissions a plain ``open`` would give it (0666 minus the umask), not mkstemp's 0600.
    """
    path = Path(path)
    _ensure_parent(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces ``path`` as a whole.

    If ``path`` exists and ``overwrite`` is true it is moved aside first and deleted only after the new
    directory is in place, so at every moment either the old or the new directory is complete.
    """
    path = Path(path)
    _ensure_parent(path)
    if path.exists() and not overwrite:
        raise UnisslError(f"{path} already exists; remove it or choose another output path")
    remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would otherwise become the directory's mode
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old.{os.getpid()}"
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete ``.NAME.<pid>.*.tmp`` siblings of ``path`` left by a killed writer whose process is gone
    (e.g. a token store that ``unissl tokenize`` was writing); a live writer's directory is kept."""
    path = Path(path)
    removed: list[Path] = []
    if not path.parent.is_dir():
        return removed
    prefix = f".{path.name}."
    for p in path.parent.iterdir():
        if not (p.name.startswith(prefix) and p.name.endswith(".tmp")):
            continue
        pid = p.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_file(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=str)
        f.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, turning a missing or corrupt file into a one-line :class:`UnisslError`."""
    path = Path(path)
    if not path.is_file():
        raise UnisslError(f"{path} not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UnisslError(f"{path} is not valid JSON ({e}); delete it and regenerate it") from e


def git_revision(cwd: str | os.PathLike | None = None) -> str:
    """The current git commit (with ``-dirty`` if the tree has changes), or ``"unknown"``."""
    cwd = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes, read in chunks (the one file digest of unissl)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
