"""The lock that gives a simulation bank one writer at a time.

The lock is a small JSON file beside the bank, ``.<name>.lock``, held with an exclusive
``flock`` for as long as a run writes to the bank. The kernel drops a ``flock`` when its
process ends, however it ends (``kill -9`` included), so a lock can never outlive its owner
on this host; the file only names the owner (host, pid, start time) so that a refused run
can say who holds the bank. The file is never deleted: deleting it would let a second run
lock a fresh file while a first still holds the old one.

A lock file whose owner did not release it is stale when the owner ran on this host (the
free ``flock`` proves that process is gone); the new run takes it over and says so. When
the owner ran on another host, this host cannot see whether it is still running, so the
bank is refused until the lock file is deleted by hand.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from pathlib import Path

from .errors import BankError, SimulationWarning

__all__ = ["BankLock", "lock_path"]


def lock_path(bank: Path) -> Path:
    """Where the lock of the bank at ``bank`` lives: ``.<name>.lock`` in the same folder."""
    return bank.with_name(f".{bank.name}.lock")


def _describe(owner: dict | None) -> str:
    if not owner:
        return "a run that is starting (its details are not written yet)"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("started", 0)))
    return f"pid {owner.get('pid')} on host {owner.get('host')!r}, started {started}"


class BankLock:
    """An exclusive, process-lifetime lock on one bank (see the module docstring)."""

    def __init__(self, bank: Path):
        self.bank, self.file = bank, lock_path(bank)
        self._fd: int | None = None

    def _read(self) -> dict | None:
        try:
            return json.loads(self.file.read_text() or "null")
        except (OSError, ValueError):
            return None

    def acquire(self) -> None:
        """Take the lock or raise :class:`~simgen.errors.BankError` naming its holder."""
        try:
            import fcntl
        except ImportError:  # no flock on this platform: one writer is the user's promise
            return
        fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BankError(
                f"The bank {self.bank} is being written by another run: "
                f"{_describe(self._read())}. Wait for it to finish (then call simulate "
                "again to read the bank), stop it, or use another path for bank=."
            ) from None
        except OSError as exc:  # a file system without locks
            os.close(fd)
            warnings.warn(
                f"Cannot lock {self.file} ({exc}); make sure no other run writes to "
                f"{self.bank} at the same time.",
                SimulationWarning,
                stacklevel=4,
            )
            return
        previous = self._read()
        host = socket.gethostname()
        if previous and not previous.get("released", True):
            if previous.get("host") != host:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                raise BankError(
                    f"The bank {self.bank} is locked by {_describe(previous)}, which never "
                    f"released it; this host cannot tell whether that run is still going. If "
                    f"it is not, delete {self.file} and call simulate again to resume."
                )
            warnings.warn(
                f"The bank {self.bank} was left locked by {_describe(previous)}, which is "
                "gone (killed or crashed); its lock is stale and this run takes it over.",
                SimulationWarning,
                stacklevel=4,
            )
        self._fd = fd
        self._write({"host": host, "pid": os.getpid(), "started": time.time(), "released": False})

    def _write(self, owner: dict) -> None:
        data = json.dumps(owner).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)

    def release(self) -> None:
        """Mark the lock released and drop it (a no-op when it is not held)."""
        if self._fd is None:
            return
        import fcntl

        owner = self._read() or {}
        self._write({**owner, "released": True})
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
