"""Exclusive output locks: two runs writing the same output fail clearly instead of racing.

    with output_lock(out / ".part-0-of-1.lock", f"{out}/part-0-of-1", "python -m pretrain prepare"):
        ...  # only this process writes that output now

``flock`` on a small hidden lock file, removed when done: the kernel drops the lock when the holder
dies (even SIGKILL), so a killed run never leaves a lock that blocks the next one. Works on local filesystems and NFSv4; on
filesystems without flock support the lock is skipped with a warning rather than failing the run.
"""
from __future__ import annotations

import contextlib
import errno
import os
import sys
from pathlib import Path
from typing import Iterator

from .errors import UserError


@contextlib.contextmanager
def output_lock(lock_file: str | os.PathLike, what: str, command: str) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    lock_file = Path(lock_file)
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise UserError(f"{what}: cannot write there ({exc.strerror or exc}: {lock_file})") from None
    locked = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = _same_file(fd, lock_file)  # else the holder just finished and removed it: busy a moment ago
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                _warn_unlocked(lock_file, exc, what)
                yield
                return
        if not locked:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "another process"
            raise UserError(f"{what} is being written by another `{command}` right now (pid {holder}); wait "
                            f"for it to finish, or write to another output")
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        if locked:  # remove it while still holding it: a waiter that opened it sees it was unlinked
            with contextlib.suppress(OSError):
                os.unlink(lock_file)
        os.close(fd)  # releases the lock


def _warn_unlocked(lock_file: Path, exc: OSError, what: str) -> None:
    """A filesystem without flock: run unlocked rather than fail, and say so."""
    print(f"warning: cannot lock {lock_file} ({exc.strerror}); make sure no other run writes {what}", file=sys.stderr)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except OSError:
        return False


@contextlib.contextmanager
def group_lock(folder: str | os.PathLike, group: str, what: str, command: str) -> Iterator[None]:
    """Runs of one group may share ``folder``; a run of another group is refused while any of them runs.

    Each run holds a shared flock on ``.group-<group>.lock`` and then probes every other group's lock
    file with a non-blocking exclusive flock: held by someone means a run of that group is live. A
    run locks its own file before probing, so of two groups starting at once at least one sees the
    other (both may refuse; never both proceed). The last run of a group out removes its file.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    folder = Path(folder)
    mine = folder / f".group-{group}.lock"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = _lock_shared(mine, fcntl)
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):  # a filesystem without flock
            _warn_unlocked(mine, exc, what)
            yield
            return
        raise UserError(f"{what}: cannot write there ({exc.strerror or exc}: {mine})") from None
    try:
        busy = [other.name[len(".group-"):-len(".lock")] for other in sorted(folder.glob(".group-*.lock"))
                if other != mine and _held(other, fcntl)]
        if busy:
            raise UserError(f"{what} is being written by a `{command}` with other settings ({', '.join(busy)}; this "
                            f"run: {group}) right now; wait for it to finish, or write to another output")
        yield
    finally:
        with contextlib.suppress(OSError):  # the last holder of the group removes the file
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _same_file(fd, mine):
                os.unlink(mine)
        os.close(fd)


def _lock_shared(path: Path, fcntl) -> int:
    """A shared flock on ``path``, retried if its last holder removed the file meanwhile."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while another run removes or probes it
        except OSError:
            os.close(fd)
            raise
        if _same_file(fd, path):
            return fd
        os.close(fd)


def _held(lock_file: Path, fcntl) -> bool:
    """Is a run of that group live? A file nobody holds is a killed run's leftover: removed."""
    try:
        fd = os.open(lock_file, os.O_RDWR)
    except OSError:  # removed meanwhile: its group finished
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
    with contextlib.suppress(OSError):  # a run opening it now finds it unlinked and makes a new one
        if _same_file(fd, lock_file):
            os.unlink(lock_file)
    os.close(fd)
    return False
