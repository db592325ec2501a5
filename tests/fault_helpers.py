"""Simulators and checks the fault tests share (``tests/test_faults*.py``).

A module of its own, imported as ``fault_helpers``: pytest puts ``tests/`` first on
``sys.path`` (the folder is no package), and the worker processes of simgen's pool and of a
Dask ``LocalCluster`` start with the parent's ``sys.path`` (multiprocessing's spawn and
forkserver pass it on), so a ``Bad`` pickled by reference in the test process is unpickled
from this same file in every worker.
"""

from __future__ import annotations

import faulthandler
import os
import time
from dataclasses import dataclass

import pytest
import torch

import simgen
from simgen.errors import SimulationWarning
from simgen.simulate import sample_prior


def noisy(theta, generator=None):
    """θ plus Gaussian noise of scale 0.1, drawn from ``generator``."""
    return theta + 0.1 * torch.randn(theta.shape, generator=generator)


class Bad:
    """``noisy``, except for calls holding a row equal to ``target``: ``"raise"``, ``"exit"``
    (the worker process ends at once), ``"abort"`` (``os.abort``) or ``"hang"`` (until the
    file ``release`` exists, at most 120 s); ``log`` gets a line per bad call."""

    def __init__(self, what, target, folder):
        self.what, self.target = what, target
        self.release, self.log = folder / "release", folder / "bad_calls"

    def __call__(self, theta, generator=None):
        if (theta == self.target).all(1).any():
            with open(self.log, "a") as f:
                f.write(f"{len(theta)}\n")
            if self.what == "raise":
                raise RuntimeError("bad theta")
            if self.what == "exit":
                os._exit(3)
            if self.what == "abort":
                faulthandler.disable()  # no traceback of the dying worker in the test log
                os.abort()
            end = time.monotonic() + 120
            while not self.release.exists() and time.monotonic() < end:
                time.sleep(0.02)
        return noisy(theta, generator)

    def calls(self):
        """How many bad calls were made (in any process)."""
        return len(self.log.read_text().split()) if self.log.exists() else 0


@dataclass(frozen=True)
class Case:
    """A fault test's run: ``n`` prior draws of ``simulate(..., seed=seed, batch_size=...)``,
    of which row ``row`` is the bad θ."""

    prior: object
    n: int
    seed: int
    batch_size: int
    row: int

    def target(self):
        """The bad θ: row ``row`` of the run's prior draws."""
        return sample_prior(self.prior, self.n, self.seed)[self.row]

    def serial_with_raise(self, folder):
        """The serial run in which the bad θ merely raises: what every other way of running
        must give for the rows around it."""
        with pytest.warns(SimulationWarning):
            return simgen.simulate(
                Bad("raise", self.target(), folder),
                self.prior,
                self.n,
                seed=self.seed,
                batch_size=self.batch_size,
            )


def same(a, b):
    """Whether two simulation results hold the same θ and x, bit for bit."""
    return torch.equal(a.theta, b.theta) and torch.equal(a.x, b.x)
