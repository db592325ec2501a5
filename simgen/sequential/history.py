"""The history of a :func:`simgen.sequential` run: one :class:`Round` per round, the
energy distance between successive posteriors, and the bank directory's records
(``sequential.json``, the run's fingerprint; ``round_<r>.json``, each round's row)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import SimulationError

__all__ = ["Round", "RoundHistory", "energy_distance"]

_FINGERPRINT = "sequential.json"


@dataclass
class Round:
    """One round of :func:`sequential`.

    Attributes:
        index: 1, 2, ...
        num_simulations: Successful simulations of this round.
        num_failed: Simulations that raised or returned NaN/inf.
        proposal: What θ was drawn from.
        acceptance: Prior mass of the proposal's region (the rejection sampler's
            acceptance); 1 for the prior, None for an MCMC posterior.
        acceptance_se: Its Monte-Carlo standard error.
        energy_distance: Between this round's and the previous round's posterior draws
            at :math:`x_o` (None in round 1).
        wall_seconds, cpu_seconds: Of the whole round (proposal, simulation, training).
        simulate_seconds: Wall seconds spent in the simulator.
    """

    index: int
    num_simulations: int
    num_failed: int
    proposal: str
    acceptance: float | None
    acceptance_se: float | None
    energy_distance: float | None
    wall_seconds: float
    cpu_seconds: float
    simulate_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


class RoundHistory(list):
    """The rounds of a :func:`sequential` run (a list of :class:`Round`).

    Attributes:
        theta, x: The pooled simulations of every round.
        stopped_early: Whether ``stop_tol`` ended the run before ``num_rounds``.
        proposal: The proposal after the last round (the next round's, had there been one).
    """

    theta: Tensor
    x: Tensor
    stopped_early: bool = False
    proposal: Any = None

    def to_dict(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self]

    def table(self) -> str:
        """The history as a markdown table."""
        rows = [
            "| round | sims | failed | acceptance | energy dist. | wall s | CPU s | proposal |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in self:
            acc = "-" if r.acceptance is None else f"{r.acceptance:.3g}"
            ed = "-" if r.energy_distance is None else f"{r.energy_distance:.3g}"
            rows.append(
                f"| {r.index} | {r.num_simulations} | {r.num_failed} | {acc} | {ed} | "
                f"{r.wall_seconds:.1f} | {r.cpu_seconds:.1f} | {r.proposal} |"
            )
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.table()


def energy_distance(a: Tensor, b: Tensor) -> float:
    """Energy distance between draws ``a`` and ``b`` (``(N, D)``), z-scored by ``a``."""
    a, b = a.double(), b.double()
    mean, std = a.mean(0), a.std(0).clamp_min(1e-12)
    a, b = (a - mean) / std, (b - mean) / std
    ab = torch.cdist(a, b).mean()
    return float(2 * ab - torch.cdist(a, a).mean() - torch.cdist(b, b).mean())


def check_fingerprint(folder: Path, method: Any, *settings: Any) -> None:
    """A bank directory belongs to one run: refuse to mix it with another."""
    fingerprint = {
        "method": type(method).__name__,
        "estimator": getattr(method, "estimator_name", None),
        "settings": [float(s) if isinstance(s, float) else s for s in settings],
    }
    path = folder / _FINGERPRINT
    if path.exists():
        stored = json.loads(path.read_text())
        if stored != fingerprint:
            raise SimulationError(
                f"The bank directory {folder} holds another sequential run ({stored}); "
                f"resume it with the same method, num_simulations, num_rounds, seed, proposal "
                f"and epsilon, or use a new bank path."
            )
        return
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fingerprint))


def load_record(folder: Path | None, r: int) -> Round | None:
    path = None if folder is None else folder / f"round_{r}.json"
    if path is None or not path.exists():
        return None
    return Round(**json.loads(path.read_text()))


def save_record(folder: Path | None, record: Round) -> None:
    if folder is None:
        return
    path = folder / f"round_{record.index}.json"
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(asdict(record), default=_json_default))
    tmp.replace(path)


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)
