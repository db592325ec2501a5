"""The soft-label variants of ``benchmarks.joint_ratio_study``: with no change they are
``SoftNRECLoss`` exactly, a bank of more references reads its first K − 1 in validation, and
the two changes that keep the minimiser (a random subset of the bank, the one-hot mixed in)
keep the expected loss at the exact logit, while a temperature moves it."""

from __future__ import annotations

import warnings

import pytest
import torch
from test_joint_ratio_soft import _Offset, _se

import simgen
from benchmarks.joint_ratio_study import StudyLoss
from simgen.joint_ratio import PriorReferences
from simgen.losses.ratio import SoftNRECLoss
from simulators import _latent_chain as latent_chain

K, BANK = 5, 12


@pytest.fixture(scope="module")
def bank_data():
    """20,000 chain simulations with 12 references each (seed 6)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return simgen.simulate(
            latent_chain.simulator,
            latent_chain.prior,
            20_000,
            seed=6,
            joint=True,
            theta_1=PriorReferences(BANK),
        )


def _losses(run, loss, columns: int, chunk: int = 1000) -> torch.Tensor:
    """The loss on each chunk of rows, every chunk's random draws seeded by its index."""
    out = []
    for i, start in enumerate(range(0, len(run.theta), chunk)):
        rows = slice(start, start + chunk)
        torch.manual_seed(i)
        x = run.x[rows].reshape(-1, 1)
        theta_1, log_r = run.theta_1[rows, :columns], run.joint_log_ratio[rows, :columns]
        out.append(float(loss(run.theta[rows], x, theta_1, log_r)))
    return torch.tensor(out, dtype=torch.float64)


def test_study_loss_without_changes_is_soft_nrec(bank_data):
    """Exactly SoftNRECLoss on the same draws; with a bank in eval mode, SoftNRECLoss on its
    first K − 1 columns."""
    f = _Offset(0.5)
    soft = _losses(bank_data, SoftNRECLoss(f, K), K - 1)
    assert torch.equal(_losses(bank_data, StudyLoss(f, K, 1.0), K - 1), soft)
    assert torch.equal(_losses(bank_data, StudyLoss(f, K, 1.0).eval(), BANK), soft)


def test_subsets_and_mixed_labels_keep_the_expected_loss_a_temperature_does_not(bank_data):
    """Paired over 20 chunks at the exact logit: a random K − 1 of 12 references per row and
    the labels half one-hot agree with SoftNRECLoss within 4 standard errors of the paired
    difference; the control, temperature 2, differs by more than 4."""
    f = _Offset(0.0)
    soft = _losses(bank_data, SoftNRECLoss(f, K), K - 1)
    for loss, columns in ((StudyLoss(f, K, 1.0), BANK), (StudyLoss(f, K, 1.0, mix=0.5), K - 1)):
        diff = _losses(bank_data, loss, columns) - soft
        assert abs(float(diff.mean())) < 4 * _se(diff), (float(diff.mean()), _se(diff))
    diff = _losses(bank_data, StudyLoss(f, K, 1.0, temperature=2.0), K - 1) - soft
    assert abs(float(diff.mean())) > 4 * _se(diff), (float(diff.mean()), _se(diff))
