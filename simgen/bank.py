"""Simulation banks on disk: every finished batch is saved, and an interrupted run resumes.

A bank (format ``simgen-bank``, version 3) is a zarr group holding

* ``theta`` ``(N, D)`` float32: all parameters, written when the bank is created;
* ``x`` ``(N, *x_shape)``: simulator outputs, created with the first batch that returns;
* with ``joint=True`` also ``joint_log_prob`` ``(N,)`` and ``joint_score`` ``(N, D)``, from the
  simulator's ``trace``, created and written like ``x``; with ``theta_1=`` also
  ``joint_log_ratio`` ``(N,)`` and ``theta_1`` ``(N, D)`` (``(N, M)`` and ``(N, M, D)`` with
  M references per simulation; :mod:`simgen.joint_ratio`);
* ``status`` ``(N,)`` int8: ``-1`` not simulated yet, ``0`` ok, ``1`` the simulator raised,
  ``2`` the output held NaN or inf, ``3`` it ran past the timeout, ``4`` it took its worker
  process down;
* ``attempts`` ``(N,)`` int16: how many times the call that settled each row was tried
  (version 3; a version-2 bank has no attempts and reads as 0);
* attributes: format name and version, the run's fingerprint (``seed``, ``batch_size``,
  ``joint``, ``theta_1``, ``num_simulations``, ``theta_dim``, ``simulator``, ``prior``,
  ``simgen`` version),
  the first error messages, and ``complete``, written last, once every batch is saved and
  has been read back.

Float arrays are filled with NaN, so a row never written reads as NaN, never as a plausible
zero. Every array is chunked by ``batch_size`` rows, so batch ``b`` is one chunk of each.
A batch is written outputs first and ``status`` last; a batch counts as done when its status
chunk says so *and* its output chunks are there and readable (a row marked ok must be
finite), so a run killed in the middle of a write redoes that batch and nothing else, and a
deleted or corrupt chunk is reported by batch and simulated again. Because
:func:`simgen.simulate` seeds batch ``b`` from ``(seed, b)`` alone, the resumed run produces
exactly the simulations an uninterrupted one would have.

Writers are exclusive. A bank is created in a temporary folder beside ``path`` and renamed
into place, so ``path`` never holds a half-created bank; a run killed while creating one
leaves only the temporary folder, which the next run removes. Every writer holds the lock
of :mod:`simgen.bank_lock` for the whole run; a second run on the same path is refused with
a message naming the first.

Resuming checks the fingerprint: a different seed, batch size, θ, ``joint``, ``theta_1``,
simulator or simgen version is refused (the two runs' rows would be mixed), and every
batch's outputs must have the shape and dtype of the first batch's. Version-1 banks (no
fingerprint) are read by :func:`simgen.read_bank` but not resumed, since nothing in them says
which simulator wrote them: read what they hold and start a new bank at another path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .bank_lock import BankLock
from .errors import BankError, ShapeError, SimulationWarning

__all__ = ["Bank", "NOT_RUN", "OK", "RAISED", "NONFINITE", "TIMEOUT", "CRASHED", "check_like"]

FORMAT = "simgen-bank"
VERSION = 3
NOT_RUN, OK, RAISED, NONFINITE, TIMEOUT, CRASHED = -1, 0, 1, 2, 3, 4
#: The arrays a ``joint=True`` bank holds beside ``x``.
JOINT_ARRAYS = ("joint_log_prob", "joint_score")
#: The arrays a bank made with ``theta_1=`` holds beside those (:mod:`simgen.joint_ratio`).
RATIO_ARRAYS = ("joint_log_ratio", "theta_1")
#: The fingerprint fields that must match for a run to resume a bank.
CHECKED = ("seed", "batch_size", "num_simulations", "theta_dim", "joint", "simulator", "simgen")
CHECKED += ("theta_1",)

Layout = dict[str, tuple[tuple[int, ...], np.dtype]]


def layout(outputs: dict[str, Tensor]) -> Layout:
    """Per-row shape and numpy dtype of each named output."""
    return {
        k: (tuple(v.shape[1:]), np.dtype(str(v.dtype).removeprefix("torch.")))
        for k, v in outputs.items()
    }


def check_like(expected: Layout, outputs: dict[str, Tensor], batch: int) -> None:
    """Raise :class:`~simgen.errors.ShapeError` unless ``outputs`` match ``expected``."""
    got = layout(outputs)
    for name, (shape, dtype) in expected.items():
        if name not in got or got[name] != (shape, dtype):
            seen = got.get(name)
            shown = "nothing" if seen is None else f"{seen[0]} {seen[1]}"
            raise ShapeError(
                f"Batch {batch} returned {name} rows of shape/dtype {shown}, but earlier "
                f"batches gave {shape} {dtype}. A simulator must return the same shape and "
                "dtype for every batch; fix it (or cast its output) and simulate again."
            )


def _fill(dtype: np.dtype) -> object:
    return float("nan") if np.issubdtype(dtype, np.floating) else 0


class Bank:
    """A zarr store of simulations for one run.

    Use :meth:`open` (create or resume, as the one writer) and :meth:`close`, or
    :meth:`reader` for reading; :func:`simgen.simulate` opens one when given ``bank=path``,
    and :func:`simgen.read_bank` reads a finished one.
    """

    def __init__(self, group: object, path: Path, lock: BankLock | None = None):
        self.group, self.path, self.lock = group, path, lock
        attrs = dict(group.attrs)
        if attrs.get("format") != FORMAT:
            raise BankError(
                f"{path} is a zarr store without simgen bank attributes (format "
                f"{attrs.get('format')!r}): another program's store, or a bank whose creation "
                "an older simgen did not finish. Choose a new path for bank= (or delete it if "
                "it holds nothing you need)."
            )
        self.version = int(attrs.get("version", 0))
        if self.version > VERSION:
            raise BankError(
                f"{path} was written by a newer simgen (bank version {self.version}); "
                "upgrade simgen to read it."
            )
        self.attrs = attrs
        self.seed, self.batch_size = int(attrs["seed"]), int(attrs["batch_size"])
        self.joint = bool(attrs.get("joint", False))

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def reader(cls, path: str | Path) -> Bank:
        """Open an existing bank read-only."""
        path = Path(path).expanduser()
        if not _holds_something(path):
            raise BankError(f"No simulation bank at {path}; create one with simulate(bank=).")
        return cls(
            _open_group(path, "r", "pass the path of a bank written by simulate(bank=)"), path
        )

    @staticmethod
    def stored_seed(path: str | Path) -> int | None:
        """The seed of the bank at ``path``, or None when there is none to read."""
        try:
            return Bank.reader(path).seed
        except (BankError, KeyError, ValueError):
            return None

    @classmethod
    def open(cls, path: str | Path, theta: Tensor, fingerprint: dict, batch_size: int) -> Bank:
        """Create the bank at ``path`` for ``theta``, or reopen it to resume, as its writer.

        ``fingerprint`` holds the :data:`CHECKED` fields but ``num_simulations``,
        ``theta_dim`` and ``batch_size`` (taken from ``theta`` and ``batch_size``), plus
        ``prior`` (stored for reference). Call :meth:`close` when done.

        Raises:
            BankError: ``path`` holds something else, a bank another run is writing, or a
                bank made by a different run (resuming it would mix two runs).
        """
        path = Path(path).expanduser()
        if not path.parent.is_dir():
            raise BankError(
                f"The folder {path.parent} for bank={path} does not exist; create it first."
            )
        if not os.access(path.parent, os.W_OK):
            raise BankError(f"Cannot write a bank in {path.parent}; choose a writable folder.")
        theta_np = theta.detach().cpu().numpy().astype(np.float32)
        n, d = theta_np.shape
        fingerprint = {
            **fingerprint,
            "batch_size": int(batch_size),
            "num_simulations": int(n),
            "theta_dim": int(d),
        }
        lock = BankLock(path)
        lock.acquire()
        try:
            if not _holds_something(path):
                _create(path, theta_np, fingerprint)
            return cls._resume(path, theta_np, fingerprint, lock)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _resume(cls, path: Path, theta_np: np.ndarray, fingerprint: dict, lock: BankLock) -> Bank:
        group = _open_group(path, "r+", "choose a new path for bank=")
        bank = cls(group, path, lock)
        if bank.version < 2:
            raise BankError(
                f"{path} is a version-{bank.version} bank, written without a fingerprint of "
                "its run, so it cannot be resumed safely. Read what it holds with "
                "simgen.read_bank(path) and simulate into a new bank at another path."
            )
        stored = bank.attrs
        if stored["joint"] != fingerprint["joint"]:
            raise BankError(
                f"The bank {path} was made with joint={stored['joint']}; resume it with "
                f"joint={stored['joint']}, or use a new path for joint={fingerprint['joint']}."
            )
        differ = [k for k in CHECKED if stored.get(k) != fingerprint.get(k)]
        if differ:
            shown = ", ".join(f"{k} {stored.get(k)!r} (now {fingerprint.get(k)!r})" for k in differ)
            raise BankError(
                f"The bank {path} was made by another run: {shown}. Resume it with the same "
                "simulator, prior, num_simulations, seed, batch_size and theta_1 (and this "
                "simgen version), or use a new path for bank=."
            )
        bank._check_theta(theta_np)
        return bank

    def _check_theta(self, theta_np: np.ndarray) -> None:
        try:
            stored = self.group["theta"][:]
        except Exception:  # noqa: BLE001 - a damaged theta is rewritten below
            stored = np.full_like(theta_np, np.nan)
        lost = ~np.isfinite(stored).all(1)
        if not np.array_equal(stored[~lost], theta_np[~lost]):
            raise BankError(
                f"The bank {self.path} was made by another run: its parameters differ from "
                "this run's (another prior?). Resume it with the same prior, or use a new path."
            )
        if lost.any():  # a damaged theta chunk: this run's theta are the same numbers
            self.group["theta"][:] = theta_np

    def close(self) -> None:
        """Release the writer's lock."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self) -> Bank:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- contents ------------------------------------------------------------------------
    @property
    def num_simulations(self) -> int:
        return int(self.group["theta"].shape[0])

    @property
    def complete(self) -> bool:
        """Whether every batch was saved and read back (the last thing a run writes)."""
        return bool(self.group.attrs.get("complete", False))

    def _names(self) -> list[str]:
        ratio = RATIO_ARRAYS if self.attrs.get("theta_1") is not None else ()
        return ["x", *(JOINT_ARRAYS if self.joint else ()), *ratio]

    def _array(self, name: str) -> object | None:
        """The array ``name`` (None if absent), its handle kept once found: the writer holds
        the bank's lock, so an array it has seen is not removed under it, and each lookup
        of zarr metadata costs milliseconds (a row-per-batch campaign's write rate)."""
        handles = self.__dict__.setdefault("_handles", {})
        if name not in handles:
            try:
                handles[name] = self.group[name]
            except KeyError:
                return None
        return handles[name]

    def status(self) -> np.ndarray:
        """Per-row status codes, ``(N,)`` (see the module docstring); a damaged status chunk
        reads as not simulated."""
        array = self.group["status"]
        try:
            return array[:]
        except Exception:  # noqa: BLE001 - read chunk by chunk and keep what is readable
            out = np.full(self.num_simulations, NOT_RUN, dtype=np.int8)
            for start in range(0, len(out), self.batch_size):
                with contextlib.suppress(Exception):  # an unreadable batch is redone
                    out[start : start + self.batch_size] = array[start : start + self.batch_size]
            return out

    def layout(self) -> Layout:
        """Row shape and dtype of the outputs saved so far (empty before the first batch)."""
        out = {}
        for name in self._names():
            array = self._array(name)
            if array is not None:
                out[name] = (tuple(array.shape[1:]), np.dtype(array.dtype))
        return out

    def write(
        self,
        batch: int,
        outputs: dict[str, Tensor] | None,
        status: np.ndarray,
        errors: list[str],
        attempts: np.ndarray | None = None,
    ) -> None:
        """Save batch ``batch``: its outputs by name (None if every row failed), the tries of
        each row, then its status. Outputs whose shape or dtype differ from the saved ones raise
        :class:`~simgen.errors.ShapeError` and nothing of the batch is written."""
        start = batch * self.batch_size
        rows = slice(start, start + len(status))
        if outputs is not None:
            saved = self.layout()
            if saved:
                check_like(saved, outputs, batch)
            for name, value in outputs.items():
                array = value.detach().cpu().numpy()
                if self._array(name) is None:
                    self.group.create_array(
                        name,
                        shape=(self.num_simulations, *array.shape[1:]),
                        dtype=array.dtype,
                        chunks=(self.batch_size, *array.shape[1:]),
                        fill_value=_fill(array.dtype),
                    )
                self._array(name)[rows] = array
        known = list(self.group.attrs.get("errors", []))
        new = [e for e in errors if e not in known]
        if new:
            self.group.attrs["errors"] = (known + new)[:5]
        if attempts is not None and self._array("attempts") is not None:
            self._array("attempts")[rows] = attempts.astype(np.int16)
        self._array("status")[rows] = status.astype(np.int8)

    def attempts(self) -> np.ndarray:
        """Per-row tries, ``(N,)`` (zeros where a version-2 bank does not record them)."""
        array = self._array("attempts")
        try:
            return np.zeros(self.num_simulations, np.int16) if array is None else array[:]
        except Exception:  # noqa: BLE001 - tries are a record, not data: a lost chunk reads 0
            return np.zeros(self.num_simulations, np.int16)

    def scan(self) -> tuple[dict[str, np.ndarray] | None, np.ndarray, dict[int, str]]:
        """``(outputs, status, damaged)``: everything saved, and the batches marked done
        whose chunks are missing or unreadable (batch → what is wrong)."""
        status = self.status()
        n, bs = len(status), self.batch_size
        # A batch needs output chunks when any of its rows ran without raising.
        needs = [
            b
            for b in range(-(-n // bs))
            if np.isin(status[b * bs : (b + 1) * bs], (OK, NONFINITE)).any()
        ]
        damaged: dict[int, str] = {}
        outputs: dict[str, np.ndarray] = {}
        for name in self._names():
            array = self._array(name)
            if array is None:
                for b in needs:
                    damaged.setdefault(b, f"the {name} array is missing")
                continue
            try:
                values = array[:]
            except Exception:  # noqa: BLE001 - find the unreadable chunks one by one
                values = np.full(array.shape, _fill(array.dtype), dtype=array.dtype)
                for b in needs:
                    try:
                        values[b * bs : (b + 1) * bs] = array[b * bs : (b + 1) * bs]
                    except Exception as exc:  # noqa: BLE001
                        damaged.setdefault(b, f"the {name} chunk is unreadable ({exc})")
            outputs[name] = values
            for b in needs:
                key = array.metadata.encode_chunk_key((b,) + (0,) * (array.ndim - 1))
                if not (self.path / name / key).exists():
                    damaged.setdefault(b, f"the {name} chunk is missing")
            if np.issubdtype(values.dtype, np.floating):
                ok = status == OK
                bad = ok & ~np.isfinite(values.reshape(n, -1)).all(1)
                for b in np.unique(np.nonzero(bad)[0] // bs):
                    damaged.setdefault(int(b), f"rows marked ok hold NaN in {name}")
        return (outputs or None), status, damaged

    def repair(self) -> dict[int, str]:
        """Mark damaged batches as not simulated (they are simulated again), warn, and
        return them."""
        _, _, damaged = self.scan()
        if damaged:
            for b in damaged:
                rows = slice(b * self.batch_size, (b + 1) * self.batch_size)
                self.group["status"][rows] = np.full(
                    len(range(*rows.indices(self.num_simulations))), NOT_RUN, dtype=np.int8
                )
            self.group.attrs["complete"] = False
            warnings.warn(
                f"The bank {self.path} has {len(damaged)} batch(es) marked done whose data is "
                f"damaged; they are simulated again: {_listing(damaged)}",
                SimulationWarning,
                stacklevel=3,
            )
        return damaged

    def forget_failures(self, codes: tuple[int, ...]) -> set[int]:
        """Mark the batches holding rows with a status in ``codes`` as not simulated, so that
        they are simulated again (whole, since a batch's rows share one generator)."""
        status, bs = self.status(), self.batch_size
        batches = {int(b) for b in np.nonzero(np.isin(status, codes))[0] // bs}
        for b in batches:
            rows = slice(b * bs, min((b + 1) * bs, len(status)))
            self.group["status"][rows] = np.full(rows.stop - rows.start, NOT_RUN, np.int8)
        if batches:
            self.group.attrs["complete"] = False
        return batches

    def done_batches(self) -> set[int]:
        """Indices of the batches already saved."""
        first_rows = self.status()[:: self.batch_size]
        return {int(b) for b in np.nonzero(first_rows != NOT_RUN)[0]}

    def mark_complete(self) -> None:
        self.group.attrs["complete"] = True

    def read(self) -> tuple[Tensor, dict[str, Tensor] | None, np.ndarray, list[str]]:
        """``(theta, outputs or None, status, errors)`` as saved so far; ``outputs`` maps
        ``"x"`` (and with ``joint`` the two joint arrays) to tensors.

        Raises:
            BankError: A batch marked done has missing or unreadable chunks.
        """
        outputs, status, damaged = self.scan()
        if damaged:
            raise BankError(
                f"The bank {self.path} has damaged batches: {_listing(damaged)}. Call "
                "simulate again with the arguments that made it (and bank=) to simulate them "
                "again."
            )
        theta = torch.from_numpy(self.group["theta"][:])
        errors = list(self.group.attrs.get("errors", []))
        if outputs is None:
            return theta, None, status, errors
        return theta, {k: torch.from_numpy(v) for k, v in outputs.items()}, status, errors


def _listing(damaged: dict[int, str]) -> str:
    shown = "; ".join(f"batch {b}: {why}" for b, why in sorted(damaged.items())[:5])
    return shown + (f"; and {len(damaged) - 5} more" if len(damaged) > 5 else "")


def _holds_something(path: Path) -> bool:
    """Whether ``path`` exists as a file or a non-empty folder."""
    if not path.exists():
        return False
    return not path.is_dir() or any(path.iterdir())


def _create(path: Path, theta_np: np.ndarray, fingerprint: dict) -> None:
    """Write a new bank in a temporary folder and rename it to ``path`` (the caller holds
    the lock, so leftovers of an earlier, killed creation can be removed)."""
    import zarr

    for old in path.parent.glob(f".{path.name}.creating-*"):
        shutil.rmtree(old, ignore_errors=True)
    tmp = path.with_name(f".{path.name}.creating-{uuid.uuid4().hex}")
    try:
        group = zarr.open_group(str(tmp), mode="w")
        n, d = theta_np.shape
        bs = int(fingerprint["batch_size"])
        group.create_array(
            "theta", shape=(n, d), dtype="float32", chunks=(bs, d), fill_value=np.nan
        )
        group["theta"][:] = theta_np
        group.create_array("status", shape=(n,), dtype="int8", chunks=(bs,), fill_value=NOT_RUN)
        group.create_array("attempts", shape=(n,), dtype="int16", chunks=(bs,), fill_value=0)
        group.attrs.update({"format": FORMAT, "version": VERSION, **fingerprint, "complete": False})
        if path.is_dir():  # an empty folder: rename replaces it
            path.rmdir()
        os.rename(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _open_group(path: Path, mode: str, fix: str) -> Any:
    """The zarr group at ``path``; anything unreadable there is a :class:`BankError`."""
    import zarr

    try:
        return zarr.open_group(str(path), mode=mode)
    except Exception as exc:  # noqa: BLE001 - any unreadable store is the same mistake
        raise BankError(f"{path} exists but is not a zarr simulation bank ({exc}); {fix}.") from exc
