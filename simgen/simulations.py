"""The result of a simulation run: successful ``(theta, x)`` and every failure, kept.

:func:`collect` turns per-row outputs and status codes (as in :mod:`simgen.bank`) into a
:class:`Simulations`, warning about the failures, or raising when nothing succeeded.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor

from .bank import CRASHED, JOINT_ARRAYS, NONFINITE, NOT_RUN, OK, RAISED, RATIO_ARRAYS, TIMEOUT
from .batches import Outputs, Piece
from .errors import ConfigError, SimulationError, SimulationWarning
from .simulator import RatioSimulations

__all__ = ["Simulations", "REASONS", "assemble", "collect"]


class Simulations(tuple):
    """``(theta, x)`` of the successful simulations, unpackable as a pair.

    Attributes:
        theta: ``(N_ok, D)``.
        x: ``(N_ok, *x_shape)``.
        failed_theta: ``(N_failed, D)``, parameters whose simulation failed.
        failed_reason: Per failed row, ``"raised"``, ``"nonfinite"`` (NaN or ±inf),
            ``"timeout"`` or ``"crash"`` (it took its worker process down).
        failed_attempts: ``(N_failed,)`` how many times each failed row was tried.
        errors: A few distinct error messages of the simulations that raised.
        num_raised: How many simulations raised.
        num_nonfinite: How many returned NaN or ±inf.
        num_timeout: How many ran past ``timeout``.
        num_crashed: How many took their worker process down.
        joint_log_prob: ``(N_ok,)`` :math:`\\log p(x, z \\mid \\theta)` with ``joint=True``,
            else None.
        joint_score: ``(N_ok, D)`` :math:`\\nabla_\\theta \\log p(x, z \\mid \\theta)` with
            ``joint=True``, else None.
        joint_log_ratio: ``(N_ok,)`` :math:`\\log p(x, z \\mid \\theta) - \\log p(x, z \\mid
            \\theta_1)` with ``theta_1=``, else None (:mod:`simgen.joint_ratio`); ``(N_ok, M)``
            with M references per simulation.
        theta_1: ``(N_ok, D)`` the reference each simulation was re-scored at (``(N_ok, M,
            D)``), or None.
    """

    theta: Tensor
    x: Tensor
    failed_theta: Tensor
    failed_reason: list[str]
    failed_attempts: Tensor
    errors: list[str]
    num_raised: int
    num_nonfinite: int
    num_timeout: int = 0
    num_crashed: int = 0
    joint_log_prob: Tensor | None = None
    joint_score: Tensor | None = None
    joint_log_ratio: Tensor | None = None
    theta_1: Tensor | None = None

    def __new__(cls, theta: Tensor, x: Tensor, **info: object) -> Simulations:
        self = super().__new__(cls, (theta, x))
        self.theta, self.x = theta, x
        for key, value in info.items():
            setattr(self, key, value)
        return self

    def ratio_rows(self, reference: Simulations | None = None) -> RatioSimulations:
        r"""The rows :meth:`simgen.NRE.fit` trains a reference-ratio loss on.

        Without ``reference`` (a run made with ``theta_1="prior"``), each simulation gives
        two rows, itself and its swap: :math:`(\theta_i, x_i)` drawn at its own θ with
        :math:`\log r_i` and the joint score, and :math:`(\theta_{1,i}, x_i)` drawn at the
        reference :math:`\theta_i`, with :math:`-\log r_i`, since θ and θ₁ are exchangeable
        there (:mod:`simgen.joint_ratio`). With ``reference`` (a run simulated *at* the
        references, its ``theta_1`` holding this run's θs, e.g. for one fixed θ₁), the first
        half is this run's rows and the second half ``reference``'s, swapped; each half keeps
        its first ``min`` of the two counts, since the losses need as many of each.
        """
        for run in (self, reference):
            if run is not None and run.joint_log_ratio is None:
                raise ConfigError(
                    "ratio_rows needs simulations with the joint log ratio: simulate(..., "
                    "joint=True, theta_1='prior') (or a fixed theta_1 row)."
                )
            if run is not None and run.joint_log_ratio.ndim != 1:
                raise ConfigError(
                    "ratio_rows takes one reference per simulation; this run has "
                    f"{run.joint_log_ratio.shape[1]} (theta_1=PriorReferences(M) or (N, M, D) "
                    "rows are NRE(loss='nrec_soft')'s: pass run.theta_1 and "
                    "run.joint_log_ratio to fit)."
                )
        ref = self if reference is None else reference
        m = min(len(self.theta), len(ref.theta))
        own = swap = slice(0, m)
        return RatioSimulations(
            theta=torch.cat([self.theta[own], ref.theta_1[swap]]),
            x=torch.cat([self.x[own], ref.x[swap]]),
            from_reference=torch.arange(2 * m) >= m,
            joint_log_ratio=torch.cat([self.joint_log_ratio[own], -ref.joint_log_ratio[swap]]),
            joint_score=torch.cat([self.joint_score[own], torch.zeros_like(ref.theta_1[swap])]),
            theta_1=torch.cat([self.theta_1[own], ref.theta[swap]]),
        )


#: The name of each failure status on :attr:`Simulations.failed_reason`.
REASONS = {RAISED: "raised", NONFINITE: "nonfinite", TIMEOUT: "timeout", CRASHED: "crash"}


def assemble(
    n: int, batch_size: int, kept: dict[int, Piece]
) -> tuple[Outputs | None, np.ndarray, np.ndarray]:
    """In-memory counterpart of a bank: ``(outputs, status, attempts)`` over all ``n`` rows
    from the finished batches ``kept`` (batch → ``(outputs, status, attempts)``)."""
    status = np.full(n, NOT_RUN, dtype=np.int8)
    attempts = np.zeros(n, dtype=np.int16)
    template = next((out for out, _, _ in kept.values() if out is not None), None)
    merged = (
        None
        if template is None
        else {name: v.new_zeros((n, *v.shape[1:])) for name, v in template.items()}
    )
    for b, (outputs, batch_status, tries) in kept.items():
        rows = slice(b * batch_size, b * batch_size + len(batch_status))
        status[rows], attempts[rows] = batch_status, tries
        if outputs is not None:
            for name, value in outputs.items():
                merged[name][rows] = value
    return merged, status, attempts


def collect(
    theta: Tensor,
    outputs: Outputs | None,
    status: np.ndarray,
    errors: list[str],
    attempts: np.ndarray,
    warn: bool = True,
) -> Simulations:
    """The successful rows as :class:`Simulations`, with the failures counted and kept."""
    ran = status != NOT_RUN
    ok, failed = status == OK, np.isin(status, list(REASONS))
    counts = {reason: int((status == code).sum()) for code, reason in REASONS.items()}
    n = int(ran.sum())
    x = None if outputs is None else outputs["x"]
    shown = f"{counts['raised']} raised, {counts['nonfinite']} returned NaN or inf"
    if counts["timeout"] or counts["crash"]:
        shown += f", {counts['timeout']} ran past the timeout, {counts['crash']} crashed"
    if x is None or not ok.any():
        if counts["raised"] == n:
            raise SimulationError(
                f"All {n} simulations raised an exception; first errors: {errors}. Check the "
                "simulator on a single theta, e.g. simulator(prior.sample((1,)))."
            )
        raise SimulationError(
            f"All {n} simulations failed ({shown}). First errors: {errors or 'none'}. Fix "
            "the simulator for this prior range (or raise timeout=)."
        )
    if failed.any() and warn:
        warnings.warn(
            f"{int(failed.sum())} of {n} simulations failed and were excluded ({shown}). "
            f"Their parameters are in result.failed_theta, why in result.failed_reason. "
            f"First errors: {errors or 'none'}.",
            SimulationWarning,
            stacklevel=4,
        )
    ok_t, failed_t = torch.from_numpy(ok), torch.from_numpy(failed)
    names = (*JOINT_ARRAYS, *RATIO_ARRAYS)
    joint = {name: outputs[name][ok_t] for name in names if name in outputs}
    return Simulations(
        theta[ok_t],
        x[ok_t],
        failed_theta=theta[failed_t],
        failed_reason=[REASONS[int(code)] for code in status[failed]],
        failed_attempts=torch.from_numpy(attempts[failed].astype(np.int64)),
        errors=errors,
        num_raised=counts["raised"],
        num_nonfinite=counts["nonfinite"],
        num_timeout=counts["timeout"],
        num_crashed=counts["crash"],
        **joint,
    )
