"""The lock that keeps a second run off an output store: ``flock``, or a lease in object storage.

:func:`lock_for` is the one place that chooses: :class:`StoreLock` for a
local folder, :class:`pipeline.storage.ObjectStoreLock` (an object
``<store>.lock`` with a holder and a lease, renewed by a heartbeat; conditional
writes on S3) for a store in object storage. Both have the same interface:
``acquire``, ``release``, ``holder``, ``held``, ``lost``, ``check`` and the
context manager.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Any

from pipeline.errors import StoreError, StoreLockedError
from pipeline.storage import ObjectStoreLock
from pipeline.store.group import PathLike, now, store_location

__all__ = ["AnyLock", "StoreLock", "lock_for"]


class StoreLock:
    """An exclusive, non-blocking lock on an output store, held by one process.

    The lock is ``fcntl.flock`` on the file ``<store>.lock`` next to the store
    (outside it, so that deleting and re-creating the store keeps it). The
    kernel drops the lock when the holder's file descriptor closes, which
    includes the process dying (even from SIGKILL): a crashed run never leaves
    a stale lock. The file holds the holder's pid, host and start time for the
    error message; it is left in place on release (removing it would race with
    the next holder). flock is per open file, so a second lock object in the
    same process is refused too. On network filesystems flock may be local to
    one client: run one coordinator per store.

    Example:
        >>> import tempfile
        >>> path = tempfile.mkdtemp() + "/ds.zarr"
        >>> with StoreLock(path) as lock:
        ...     try:
        ...         StoreLock(path).acquire()
        ...     except StoreLockedError as exc:
        ...         print("refused")
        refused
    """

    def __init__(self, path: PathLike) -> None:
        self._fd: int | None = None
        location = store_location(path)
        if not location.is_local:
            raise StoreError(
                f"{path}: StoreLock (flock) locks a local folder; a store in object storage "
                "needs ObjectStoreLock (pipeline.store.lock_for chooses)"
            )
        self.path = Path(location.path)  # symbolic links resolved: one folder, one lock
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    @property
    def lost(self) -> bool:
        """Always False: the kernel keeps an ``flock`` for as long as its holder lives."""
        return False

    def check(self) -> None:
        """Nothing to check: an ``flock`` cannot be lost while it is held."""

    def renew(self) -> None:
        """Nothing to renew: an ``flock`` has no lease (see :meth:`ObjectStoreLock.renew`)."""

    def acquire(self) -> StoreLock:
        """Take the lock or fail at once.

        Raises:
            StoreLockedError: another process (or lock object) holds it; the
                message names the holder's pid and host and the store.
        """
        if self._fd is not None:
            raise StoreError(f"{self.path}: this StoreLock is already held")
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self.holder()
            who = (
                f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('since')}"
                if holder
                else "another process"
            )
            raise StoreLockedError(
                f"{self.path}: the output store is in use by {who} "
                f"(lock file {self.lock_path}); wait for that run to finish"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": now()})
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Release the lock (a no-op when not held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def holder(self) -> dict[str, Any]:
        """Return what the lock file says about its holder (``{}`` when unknown)."""
        try:
            data = json.loads(self.lock_path.read_text() or "{}")
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:  # pragma: no cover
                pass


AnyLock = StoreLock | ObjectStoreLock
"""The lock of a store, as :func:`lock_for` returns it."""


def lock_for(path: PathLike, **lease: Any) -> AnyLock:
    """The lock of the store at ``path``: ``flock`` for a local folder, a lease in object storage.

    A local path (symbolic links resolved, so every path to one folder gets one
    lock) gets :class:`StoreLock`; an object-store URL or location gets
    :class:`pipeline.storage.ObjectStoreLock` with ``lease`` (``lease_s``,
    ``heartbeat_s``, ``settle_s``; ``memory://``, which lives in this process,
    reads back without waiting). The lock is not taken yet.

    Example:
        >>> import tempfile
        >>> type(lock_for(tempfile.mkdtemp() + "/ds.zarr")).__name__
        'StoreLock'
        >>> type(lock_for("memory://doc/ds.zarr")).__name__
        'ObjectStoreLock'
    """
    location = store_location(path)
    if location.is_local:
        return StoreLock(location.path)
    if location.protocol == "memory":  # one process's dict: nothing to wait for when reading back
        lease = {"settle_s": 0.0, **lease}
    return ObjectStoreLock(location, **lease)
