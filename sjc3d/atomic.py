"""File writes that never leave half a file, and the one place a failed write becomes an error.

Atomic writes: the data goes to a temporary file in the target's folder, is flushed to the
disk (fsync), and the temporary file is renamed onto the target (rename(2) replaces a file in
one step).  A reader, or a run killed with `kill -9` or by a full disk, therefore sees the old
file or the new one, never half of one.  The temporary file is named
`.<stem>.<random>.partial<suffix>`: it keeps the suffix (writers such as imageio choose the
format by it) and `remove_partials` can find what a killed writer left behind.

Permissions: the temporary file is created with mode 0666 and the process umask applies, as
for a plain `open(path, "w")`; a file that already exists keeps its mode.  (tempfile.mkstemp
would create 0600 files, which other users of a shared run directory could not read.)

Errors: an `OSError` raised while writing (no space left, read-only file system, permission
denied, a folder that is a file ...) becomes a `WriteError`, a one-line `UserError` naming the
target and the cause, e.g. `cannot write run/checkpoints/last.pt: no space left on device`.
Every writer in sjc3d goes through `atomic_path` or `reporting_write_errors`, so no call site
wraps its own.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path
from typing import IO, Iterator

from sjc3d.errors import UserError

PARTIAL = ".partial"  # marks temporary files: .<stem>.<random>.partial<suffix>


class WriteError(UserError):
    """A file could not be written (full disk, read-only or unwritable folder, quota).

    What was written before is intact: atomic writes leave the previous file in place.
    """

    exit_code = 5


def describe_os_error(error: OSError) -> str:
    """The cause in the system's words, lower case: ENOSPC -> 'no space left on device'."""
    if error.errno is not None:
        text = os.strerror(error.errno)
        return text[:1].lower() + text[1:]
    return " ".join(str(error).split()) or type(error).__name__


@contextlib.contextmanager
def reporting_write_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn an `OSError` raised in the block into a `WriteError` naming `path`."""
    try:
        yield
    except OSError as e:
        raise WriteError(f"cannot write {path}: {describe_os_error(e)}") from e


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (after a power loss the new name is there, too)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a folder; the rename itself already happened
        pass
    finally:
        os.close(fd)


def _create_partial(path: Path) -> Path:
    """Create an empty temporary file next to `path`, with the mode a plain open() would give."""
    try:
        keep_mode = stat.S_IMODE(os.stat(path).st_mode)  # open(path, "w") keeps an existing file's mode
    except FileNotFoundError:
        keep_mode = None
    for _ in range(100):
        tmp = path.parent / f".{path.stem}.{secrets.token_hex(4)}{PARTIAL}{path.suffix}"
        try:
            # 0o666 & ~umask, applied by the kernel exactly as for open(path, "w").
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        try:
            if keep_mode is not None:
                os.fchmod(fd, keep_mode)
        finally:
            os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path.parent))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; when the block exits cleanly it replaces `path`.

    Use it for writers that want a file name (imageio, trimesh).  If the block raises (an
    exception, Ctrl-C), the temporary file is removed and `path` is untouched; an `OSError`
    from the block or from the rename becomes a `WriteError` naming `path`.
    """
    path = Path(path)
    tmp = None
    try:
        with reporting_write_errors(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = _create_partial(path)
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
            tmp = None
        _fsync_folder(path.parent)
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file for writing; it replaces `path` when the block exits cleanly."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def remove_partials(folder: str | os.PathLike) -> list[Path]:
    """Delete temporary files that a killed writer left in `folder`; returns what was removed.

    Only call it while no other process writes into `folder` (a fit holds the run's lock).
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for tmp in folder.glob(f".*{PARTIAL}*"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed
