"""Simulation banks on disk: every finished batch is saved, and an interrupted run resumes.

A bank is a zarr group holding

* ``theta`` ``(N, D)`` float32: all parameters, written when the bank is created;
* ``x`` ``(N, *x_shape)``: simulator outputs, created with the first batch that succeeds;
* with ``joint=True`` also ``joint_log_prob`` ``(N,)`` and ``joint_score`` ``(N, D)``, from the
  simulator's ``trace``, created and written like ``x``;
* ``status`` ``(N,)`` int8: ``-1`` not simulated yet, ``0`` ok, ``1`` the simulator raised,
  ``2`` the output held NaN or inf;
* attributes: format name and version, ``seed``, ``batch_size``, ``joint`` (absent in banks
  written before it existed: False), the first error messages.

Every array is chunked by ``batch_size`` rows, so batch ``b`` is one chunk of each. A batch
is written outputs first and ``status`` last; a batch counts as done when its status chunk
is, so a run killed in the middle of a write redoes that batch and nothing else. Because
:func:`simgen.simulate` seeds batch ``b`` from ``(seed, b)`` alone, the resumed run produces
exactly the simulations an uninterrupted one would have.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import SimulationError

__all__ = ["Bank", "NOT_RUN", "OK", "RAISED", "NONFINITE"]

FORMAT = "simgen-bank"
VERSION = 1
NOT_RUN, OK, RAISED, NONFINITE = -1, 0, 1, 2
#: The arrays a ``joint=True`` bank holds beside ``x``.
JOINT_ARRAYS = ("joint_log_prob", "joint_score")


class Bank:
    """A zarr store of simulations for one ``(theta, seed, batch_size)``.

    Use :meth:`open` (create or resume); :func:`simgen.simulate` does so when given
    ``bank=path``, and :func:`simgen.simulate.read_bank` reads a finished one.
    """

    def __init__(self, group: object, path: Path):
        self.group, self.path = group, path
        attrs = dict(group.attrs)
        if attrs.get("format") != FORMAT:
            raise SimulationError(
                f"{path} is not a simgen simulation bank (format {attrs.get('format')!r}); "
                "choose a new path for bank=."
            )
        if attrs.get("version", 0) > VERSION:
            raise SimulationError(
                f"{path} was written by a newer simgen (bank version {attrs['version']}); "
                "upgrade simgen to read it."
            )
        self.seed, self.batch_size = int(attrs["seed"]), int(attrs["batch_size"])
        self.joint = bool(attrs.get("joint", False))

    @classmethod
    def open(
        cls, path: str | Path, theta: Tensor, seed: int, batch_size: int, joint: bool = False
    ) -> Bank:
        """Create the bank at ``path`` for ``theta``, or reopen it to resume.

        Raises:
            SimulationError: ``path`` holds something else, or a bank made with a different
                seed, batch size, parameters or ``joint`` (resuming it would mix two runs).
        """
        import zarr

        path = Path(path)
        theta_np = theta.detach().cpu().numpy().astype(np.float32)
        if path.exists():
            try:
                group = zarr.open_group(str(path), mode="r+")
            except Exception as exc:  # noqa: BLE001 - any unreadable store is the same mistake
                raise SimulationError(
                    f"{path} exists but is not a zarr simulation bank ({exc}); choose a new "
                    "path for bank=."
                ) from exc
            bank = cls(group, path)
            stored = group["theta"][:]
            if (bank.seed, bank.batch_size) != (seed, batch_size) or not np.array_equal(
                stored, theta_np
            ):
                raise SimulationError(
                    f"The bank {path} was made by another run (seed {bank.seed}, batch_size "
                    f"{bank.batch_size}, {len(stored)} parameters); resume it with the same "
                    "simulator, prior, num_simulations, seed and batch_size, or use a new path."
                )
            if bank.joint != bool(joint):
                raise SimulationError(
                    f"The bank {path} was made with joint={bank.joint}; resume it with "
                    f"joint={bank.joint}, or use a new path for joint={bool(joint)}."
                )
            return bank
        group = zarr.open_group(str(path), mode="w")
        group.attrs.update(
            {
                "format": FORMAT,
                "version": VERSION,
                "seed": seed,
                "batch_size": batch_size,
                "joint": bool(joint),
            }
        )
        n = theta_np.shape[0]
        group.create_array("theta", data=theta_np, chunks=(batch_size, theta_np.shape[1]))
        group.create_array("status", shape=(n,), dtype="int8", chunks=(batch_size,), fill_value=-1)
        return cls(group, path)

    @property
    def num_simulations(self) -> int:
        return int(self.group["theta"].shape[0])

    def status(self) -> np.ndarray:
        """Per-row status codes, ``(N,)`` (see the module docstring)."""
        return self.group["status"][:]

    def done_batches(self) -> set[int]:
        """Indices of the batches already saved."""
        first_rows = self.status()[:: self.batch_size]
        return {int(b) for b in np.nonzero(first_rows != NOT_RUN)[0]}

    def write(
        self,
        batch: int,
        outputs: dict[str, Tensor] | None,
        status: np.ndarray,
        errors: list[str],
    ) -> None:
        """Save batch ``batch``: its outputs by name (None if every row raised), then its
        status."""
        start = batch * self.batch_size
        rows = slice(start, start + len(status))
        for name, value in (outputs or {}).items():
            array = value.detach().cpu().numpy()
            if name not in self.group:
                self.group.create_array(
                    name,
                    shape=(self.num_simulations, *array.shape[1:]),
                    dtype=array.dtype,
                    chunks=(self.batch_size, *array.shape[1:]),
                    fill_value=0,
                )
            self.group[name][rows] = array
        known = list(self.group.attrs.get("errors", []))
        new = [e for e in errors if e not in known]
        if new:
            self.group.attrs["errors"] = (known + new)[:5]
        self.group["status"][rows] = status.astype(np.int8)

    def read(self) -> tuple[Tensor, dict[str, Tensor] | None, np.ndarray, list[str]]:
        """``(theta, outputs or None, status, errors)`` as saved so far; ``outputs`` maps
        ``"x"`` (and with ``joint`` the two joint arrays) to tensors."""
        theta = torch.from_numpy(self.group["theta"][:])
        if "x" not in self.group:
            return theta, None, self.status(), list(self.group.attrs.get("errors", []))
        names = ["x", *(n for n in JOINT_ARRAYS if n in self.group)]
        outputs = {n: torch.from_numpy(self.group[n][:]) for n in names}
        return theta, outputs, self.status(), list(self.group.attrs.get("errors", []))
