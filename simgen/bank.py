"""Simulation banks on disk: every finished batch is saved, and an interrupted run resumes.

A bank is a zarr group holding

* ``theta`` ``(N, D)`` float32: all parameters, written when the bank is created;
* ``x`` ``(N, *x_shape)``: simulator outputs, created with the first batch that succeeds;
* ``status`` ``(N,)`` int8: ``-1`` not simulated yet, ``0`` ok, ``1`` the simulator raised,
  ``2`` the output held NaN or inf;
* attributes: format name and version, ``seed``, ``batch_size``, the first error messages.

Both arrays are chunked by ``batch_size`` rows, so batch ``b`` is one chunk of each. A batch
is written ``x`` first and ``status`` last; a batch counts as done when its status chunk
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

    @classmethod
    def open(cls, path: str | Path, theta: Tensor, seed: int, batch_size: int) -> Bank:
        """Create the bank at ``path`` for ``theta``, or reopen it to resume.

        Raises:
            SimulationError: ``path`` holds something else, or a bank made with a different
                seed, batch size or parameters (resuming it would mix two runs).
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
            return bank
        group = zarr.open_group(str(path), mode="w")
        group.attrs.update(
            {"format": FORMAT, "version": VERSION, "seed": seed, "batch_size": batch_size}
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

    def write(self, batch: int, x: Tensor | None, status: np.ndarray, errors: list[str]) -> None:
        """Save batch ``batch``: its outputs (None if every row raised), then its status."""
        start = batch * self.batch_size
        rows = slice(start, start + len(status))
        if x is not None:
            x_np = x.detach().cpu().numpy()
            if "x" not in self.group:
                self.group.create_array(
                    "x",
                    shape=(self.num_simulations, *x_np.shape[1:]),
                    dtype=x_np.dtype,
                    chunks=(self.batch_size, *x_np.shape[1:]),
                    fill_value=0,
                )
            self.group["x"][rows] = x_np
        known = list(self.group.attrs.get("errors", []))
        new = [e for e in errors if e not in known]
        if new:
            self.group.attrs["errors"] = (known + new)[:5]
        self.group["status"][rows] = status.astype(np.int8)

    def read(self) -> tuple[Tensor, Tensor | None, np.ndarray, list[str]]:
        """``(theta, x or None, status, errors)`` as saved so far."""
        theta = torch.from_numpy(self.group["theta"][:])
        x = torch.from_numpy(self.group["x"][:]) if "x" in self.group else None
        return theta, x, self.status(), list(self.group.attrs.get("errors", []))
