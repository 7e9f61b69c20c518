"""One writer per run directory: the lock file `<run>/.lock`.

A fit (new or resumed) holds the lock from before it reads or writes anything in its run
directory until it returns; a second `sjc3d fit --out RUN` or `--resume RUN` while the first
one lives stops at once with a `RunLocked` error naming the owner.

How.  The lock is an flock(2) on the file, taken without waiting.  The kernel ties it to the
open file, not to the file's existence, so it disappears with its process however that process
ends (`kill -9` and the OOM killer included): a lock that can be taken is never held by a
live process on this host, and two processes starting at the same instant cannot both take it.
The file's content, one JSON line `{"pid", "host", "started", "command"}`, serves the messages
and tells what happened before:

- the file names no one, or this process: a normal start;
- a process on this host that died without cleaning up (kill -9, a crash, a lost node): its
  lock is taken over with a warning naming it;
- a process on another host: flock across hosts cannot be trusted on every network file
  system, so sjc3d refuses and says how to remove the lock if you are sure nothing runs
  there.  A caller that knows the other process is dead (the sweep runner retrying a trial
  whose Ray worker died) may pass `take_over_foreign=True`.

On a file system without flock (ENOLCK, EOPNOTSUPP) the lock falls back to the content alone
and a live pid on this host counts as a holder; two processes starting at the same instant
there could both win.

A clean exit removes the file.  It is unlinked while still locked, and a process that locked
a file which is no longer the one at `<run>/.lock` tries again, so a release can never hand
the lock to two processes.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from sjc3d.atomic import reporting_write_errors

try:
    import fcntl
except ImportError:  # not a POSIX system: the lock falls back to the file's content
    fcntl = None
from sjc3d.errors import UserError

LOCK_NAME = ".lock"
NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class RunLocked(UserError):
    """Another process writes this run directory (or might: a lock held on another host)."""

    exit_code = 6


@dataclass(frozen=True)
class Owner:
    """Who holds (or held) a lock: written into the lock file as one JSON line."""

    pid: int
    host: str
    started: str  # local time, ISO 8601, seconds
    command: str

    @classmethod
    def me(cls) -> "Owner":
        return cls(os.getpid(), socket.gethostname(), time.strftime("%Y-%m-%dT%H:%M:%S"), " ".join(sys.argv)[:300])

    @classmethod
    def parse(cls, text: str) -> Optional["Owner"]:
        try:
            data = json.loads(text)
            return cls(int(data["pid"]), str(data["host"]), str(data.get("started", "?")), str(data.get("command", "")))
        except (ValueError, KeyError, TypeError):
            return None  # empty (a lock being created) or not ours

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} (started {self.started})"


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists on this host (it may belong to another user)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_owner(root: Path) -> Optional[Owner]:
    """The owner named in `<root>/.lock`, or None (no file, empty, or unreadable)."""
    try:
        return Owner.parse((Path(root) / LOCK_NAME).read_text())
    except OSError:
        return None


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


class RunLock:
    """The lock of one run directory; a context manager (`with RunLock(root):`).

    `acquire` raises RunLocked when a live process holds it; `released` is idempotent.
    The run directory must exist.
    """

    def __init__(self, root: str | os.PathLike, take_over_foreign: bool = False):
        self.root = Path(root)
        self.path = self.root / LOCK_NAME
        self.take_over_foreign = take_over_foreign
        self.fd: Optional[int] = None
        self.flock_works = True  # False on a file system without flock: the content decides
        self.previous: Optional[Owner] = None  # a dead owner whose lock was taken over

    # -------------------------------------------------------------------- acquire / release

    def acquire(self) -> "RunLock":
        with reporting_write_errors(self.path):
            for _ in range(10):  # more than one round only when an owner released right then
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
                try:
                    self._lock(fd)
                    if self._is_current(fd):
                        self._claim(fd)
                        self.fd = fd
                        return self
                except BaseException:
                    os.close(fd)
                    raise
                os.close(fd)
        raise RunLocked(f"cannot lock {self.path}: it keeps being replaced by another process")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # while still locked (see the module docstring)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # -------------------------------------------------------------------- steps

    def _lock(self, fd: int) -> None:
        """flock without waiting; RunLocked when held.  Without flock, the content decides (_claim)."""
        if fcntl is None:
            self.flock_works = False
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _wait_for_owner(fd)
            who = owner.describe() if owner else "another process"
            raise RunLocked(f"run directory {self.root} is in use by {who}; wait for it to finish or stop it "
                            f"(kill -TERM {owner.pid if owner else 'PID'} writes a checkpoint)") from None
        except OSError as e:
            if e.errno not in NO_FLOCK:
                raise
            self.flock_works = False

    def _is_current(self, fd: int) -> bool:
        """The file we locked is still the one at `path` (not unlinked by a releasing owner)."""
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def _claim(self, fd: int) -> None:
        """Check who held the lock before, then write ourselves into the file."""
        me = Owner.me()
        before = Owner.parse(_read(fd))
        if before is not None and (before.pid, before.host) != (me.pid, me.host):
            if before.host != me.host and not self.take_over_foreign:
                raise RunLocked(f"run directory {self.root} is locked by {before.describe()}, which cannot be checked "
                                f"from {me.host}; if no sjc3d process runs there, delete {self.path} and try again")
            if not self.flock_works and before.host == me.host and pid_alive(before.pid):
                raise RunLocked(f"run directory {self.root} is in use by {before.describe()}")
            self.previous = before
            why = "which is no longer running" if before.host == me.host else "whose process was lost"
            _warn(f"took over the lock of {self.root} from {before.describe()}, {why}")
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(asdict(me)) + "\n").encode(), 0)
        os.fsync(fd)


def _read(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode(errors="replace")


def _wait_for_owner(fd: int, patience: float = 1.0) -> Optional[Owner]:
    """The owner named in a locked file; a holder that has just locked it writes its name within
    moments, so an empty file is read again for up to `patience` seconds."""
    deadline = time.monotonic() + patience
    while True:
        owner = Owner.parse(_read(fd))
        if owner is not None or time.monotonic() > deadline:
            return owner
        time.sleep(0.01)
