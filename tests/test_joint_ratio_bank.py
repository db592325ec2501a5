"""Banking the joint log ratio: simulate(..., joint=True, theta_1=...), banks, ratio_rows."""

from __future__ import annotations

import pytest
import torch

import simgen
from simgen.batches import batch_generator
from simgen.errors import BankError, ConfigError, ShapeError, SimulationError, SimulationInterrupted
from simgen.joint_ratio import PriorReferences
from simgen.simulate import read_bank, run_simulator
from simgen.simulator import PyroSimulator
from simulators import _latent_chain as latent_chain

SIM, PRIOR = latent_chain.simulator, latent_chain.prior


def _exact_log_ratio(result, seed: int, batch_size: int) -> torch.Tensor:
    """log p(x,z|θ) - log p(x,z|θ₁) in closed form, on latents re-drawn batch by batch with
    the generators simulate seeds (no failures here, so rows line up with batches)."""
    out = []
    for b, start in enumerate(range(0, len(result.theta), batch_size)):
        rows = slice(start, start + batch_size)
        theta = result.theta[rows]
        tr = SIM.trace(theta.clone(), generator=batch_generator(seed, b))
        assert torch.equal(tr.x, result.x[rows])
        ref = result.theta_1[rows]
        exact = latent_chain.joint_log_prob(theta, tr.latents, tr.x)
        out.append(exact - latent_chain.joint_log_prob(ref, tr.latents, tr.x))
    return torch.cat(out)


def test_simulate_banks_the_closed_form_log_ratio():
    """theta_1="prior" keeps θ, x and the joint score of joint=True, and adds the closed-form
    joint log ratio against θ₁ (float32, tolerance 1e-4); θ₁ comes from the prior (mean
    and variance within 4 standard errors of N(0, I), uncorrelated with θ), differs from θ
    and is reproducible."""
    run = simgen.simulate(SIM, PRIOR, 600, seed=3, joint=True, theta_1="prior", batch_size=200)
    plain = simgen.simulate(SIM, PRIOR, 600, seed=3, joint=True, batch_size=200)
    assert torch.equal(run.theta, plain.theta) and torch.equal(run.x, plain.x)
    assert torch.equal(run.joint_score, plain.joint_score) and plain.theta_1 is None
    assert torch.allclose(run.joint_log_ratio, _exact_log_ratio(run, 3, 200), atol=1e-4)
    n = len(run.theta_1)
    assert (run.theta_1.mean(0).abs() < 4 / n**0.5).all()
    assert ((run.theta_1.var(0) - 1).abs() < 4 * (2 / n) ** 0.5).all()
    corr = torch.corrcoef(torch.cat([run.theta, run.theta_1], 1).T)[:2, 2:]
    assert (corr.abs() < 4 / n**0.5).all()  # θ₁ independent of θ
    assert not torch.allclose(run.theta_1, run.theta, atol=0.5)
    again = simgen.simulate(SIM, PRIOR, 600, seed=3, joint=True, theta_1="prior", batch_size=200)
    assert torch.equal(again.theta_1, run.theta_1)
    assert torch.equal(again.joint_log_ratio, run.joint_log_ratio)
    other = simgen.simulate(SIM, PRIOR, 600, seed=4, joint=True, theta_1="prior", batch_size=200)
    assert not torch.allclose(other.theta_1, run.theta_1)
    # The control: the ratio against shuffled references is not the banked one.
    assert not torch.allclose(
        run.joint_log_ratio, _exact_log_ratio(_shuffled(run), 3, 200), atol=1e-2
    )


def _shuffled(run):
    class View:
        theta, x, theta_1 = run.theta, run.x, run.theta_1.flip(0)

    return View


def test_fixed_reference_row():
    """A row (D,) is every simulation's reference; its ratio is the closed form too."""
    row = torch.tensor([0.3, -0.2])
    run = simgen.simulate(SIM, PRIOR, 200, seed=5, joint=True, theta_1=row, batch_size=100)
    assert torch.equal(run.theta_1, row.expand(200, 2))
    assert torch.allclose(run.joint_log_ratio, _exact_log_ratio(run, 5, 100), atol=1e-4)


class _InterruptAt(PyroSimulator):
    """The latent chain, pressing Ctrl-C on its ``stop``-th trace."""

    def __init__(self, stop=None):
        super().__init__(latent_chain.chain)
        self.stop, self.calls = stop, 0

    def trace(self, theta, seed=None, generator=None):
        self.calls += 1
        if self.calls == self.stop:
            raise KeyboardInterrupt
        return super().trace(theta, seed=seed, generator=generator)


def test_bank_round_trip_and_resume(tmp_path):
    """A banked ratio run equals the in-memory one; interrupted after 2 of 4 batches and
    resumed, it runs only the missing batches and ends with the same θ₁ and log ratios;
    read_bank gives them back; another theta_1 is refused by the fingerprint."""
    path = tmp_path / "ratio.zarr"
    options = {"seed": 7, "joint": True, "theta_1": "prior", "batch_size": 50}
    expected = simgen.simulate(_InterruptAt(), PRIOR, 200, **options)
    with pytest.raises(SimulationInterrupted, match="2 of 4 batches"):
        simgen.simulate(_InterruptAt(stop=3), PRIOR, 200, bank=path, **options)
    partial = read_bank(path)
    assert torch.equal(partial.theta_1, expected.theta_1[:100])
    resumed_sim = _InterruptAt()
    resumed = simgen.simulate(resumed_sim, PRIOR, 200, bank=path, **options)
    assert resumed_sim.calls == 2
    for name in ("theta", "x", "joint_score", "joint_log_ratio", "theta_1"):
        assert torch.equal(getattr(resumed, name), getattr(expected, name)), name
        assert torch.equal(getattr(read_bank(path), name), getattr(expected, name)), name
    with pytest.raises(BankError, match="theta_1 'prior'"):
        simgen.simulate(_InterruptAt(), PRIOR, 200, bank=path, **{**options, "theta_1": None})
    with pytest.raises(BankError, match="theta_1"):
        changed = {**options, "theta_1": torch.zeros(2)}
        simgen.simulate(_InterruptAt(), PRIOR, 200, bank=path, **changed)


class _FailsAbove(PyroSimulator):
    """The latent chain, raising for any row with θ₀ > 1 (bisected down to those rows)."""

    def __init__(self):
        super().__init__(latent_chain.chain)

    def trace(self, theta, seed=None, generator=None):
        if (theta[:, 0] > 1).any():
            raise RuntimeError("theta_0 > 1")
        return super().trace(theta, seed=seed, generator=generator)


def test_failed_rows_keep_the_references_aligned(tmp_path):
    """Rows that raise are dropped with their θ₁: every kept row's θ₁ is the one drawn for
    its θ (the run without failures), and the failures are counted."""
    options = {"seed": 2, "joint": True, "theta_1": "prior", "batch_size": 64}
    full = simgen.simulate(SIM, PRIOR, 256, **options)
    with pytest.warns(simgen.errors.SimulationWarning, match="failed"):
        run = simgen.simulate(_FailsAbove(), PRIOR, 256, bank=tmp_path / "f.zarr", **options)
    keep = full.theta[:, 0] <= 1
    assert run.num_raised == int((~keep).sum()) > 0
    assert torch.equal(run.theta, full.theta[keep])
    assert torch.equal(run.theta_1, full.theta_1[keep])
    assert torch.isfinite(run.joint_log_ratio).all()


def test_ratio_rows_swap_and_reference():
    """ratio_rows: the first half is the run, the second each row swapped (θ₁ as the row's
    parameter, x drawn at its reference θ, minus the log ratio). With a run simulated at a
    fixed θ₁ as reference, the second half is that run's rows: over them E[r] is 1 (within 4
    standard errors) and E[log r], minus a KL divergence, is negative."""
    run = simgen.simulate(SIM, PRIOR, 300, seed=1, joint=True, theta_1="prior")
    rows = run.ratio_rows()
    assert rows.from_reference.tolist() == [False] * 300 + [True] * 300
    assert torch.equal(rows.theta[300:], run.theta_1) and torch.equal(rows.x[300:], run.x)
    assert torch.equal(rows.joint_log_ratio[300:], -run.joint_log_ratio)
    assert torch.equal(rows.simulated_at[300:], run.theta)
    assert torch.equal(rows.simulated_at[:300], run.theta)
    assert (rows.joint_score[300:] == 0).all()

    row = torch.zeros(2)
    numerators = 0.2 * simgen.simulate(SIM, PRIOR, 400, seed=2).theta
    at_theta = run_simulator(SIM, numerators, seed=3, joint=True, theta_1=row)
    at_ref = run_simulator(SIM, row.expand(400, 2), seed=4, joint=True, theta_1=numerators)
    fixed = at_theta.ratio_rows(reference=at_ref)
    assert torch.equal(fixed.theta[400:], numerators) and (fixed.theta_1 == 0).all()
    assert (fixed.simulated_at[400:] == 0).all()
    log_r = fixed.joint_log_ratio[400:].double()
    r = log_r.exp()
    assert abs(float(r.mean()) - 1) < 4 * float(r.std()) / 400**0.5
    # E[log r] over draws at θ₁ is minus a KL divergence: negative by more than 3 standard
    # errors, which a swap stored with the wrong sign would fail.
    assert float(log_r.mean()) < -3 * float(log_r.std()) / 400**0.5


def test_nre_trains_from_banked_rows(tmp_path):
    """NRE(loss="alices") trains from read_bank(...).ratio_rows() and gives a posterior
    within 0.5 nats of KL of the exact one (the prior is 1.33 away; 2,000 simulations
    giving 4,000 rows, seed 0)."""
    path = tmp_path / "train.zarr"
    simgen.simulate(SIM, PRIOR, 2000, seed=0, joint=True, theta_1="prior", bank=path)
    rows = read_bank(path).ratio_rows()
    extras = {k: v for k, v in rows.extras().items() if k != "joint_score"}
    posterior = simgen.NRE(PRIOR, loss="alices").fit(
        rows.theta, rows.x.reshape(-1, 1), progress=False, seed=0, **extras
    )
    assert latent_chain.posterior_kl(posterior) < 0.5


def test_theta_1_mistakes_are_refused():
    """theta_1 without joint, on a simulator that cannot re-score, of the wrong shape, or an
    unknown name: each a SimgenError naming the fix; ratio_rows without a log ratio too."""
    with pytest.raises(ConfigError, match="joint=True"):
        simgen.simulate(SIM, PRIOR, 10, seed=0, theta_1="prior")
    with pytest.raises(SimulationError, match="joint_log_ratio"):
        simgen.simulate(_Traced(), PRIOR, 10, seed=0, joint=True, theta_1="prior")
    with pytest.raises(ShapeError, match="theta_1 must be"):
        simgen.simulate(SIM, PRIOR, 10, seed=0, joint=True, theta_1=torch.zeros(3))
    with pytest.raises(ShapeError, match="finite"):
        simgen.simulate(SIM, PRIOR, 10, seed=0, joint=True, theta_1=torch.tensor([0, torch.nan]))
    with pytest.raises(ConfigError, match="'prior'"):
        simgen.simulate(SIM, PRIOR, 10, seed=0, joint=True, theta_1="posterior")
    with pytest.raises(ConfigError, match="needs the prior"):
        run_simulator(SIM, torch.zeros(4, 2), joint=True, theta_1="prior")
    with pytest.raises(ConfigError, match="theta_1='prior'"):
        simgen.simulate(SIM, PRIOR, 10, seed=0, joint=True).ratio_rows()


class _Traced(simgen.simulator.Simulator):
    """A simulator with a trace but no joint_log_ratio."""

    def __call__(self, theta, generator=None):
        return theta

    def trace(self, theta, generator=None):
        return SIM.trace(theta, generator=generator)


def test_many_references_in_one_pass_equal_resimulating_and_the_closed_form():
    """theta_1=PriorReferences(3) re-scores each recorded trace at 3 prior rows in the one
    simulator pass: θ, x and the score are joint=True's; column m equals (float32, 1e-6) the
    run that re-simulates the same θs with the same seed at column m's rows, and the closed
    form (1e-4); the columns are prior draws (mean and variance within 4 standard errors of
    N(0, I)), uncorrelated with θ and with each other, and reproducible. The control: the
    closed form against another column's references is not column m's ratio."""
    options = {"seed": 3, "joint": True, "batch_size": 200}
    run = simgen.simulate(SIM, PRIOR, 600, theta_1=PriorReferences(3), **options)
    plain = simgen.simulate(SIM, PRIOR, 600, **options)
    assert run.theta_1.shape == (600, 3, 2) and run.joint_log_ratio.shape == (600, 3)
    for name in ("theta", "x", "joint_score", "joint_log_prob"):
        assert torch.equal(getattr(run, name), getattr(plain, name)), name
    for m in range(3):
        rows = run.theta_1[:, m].clone()
        again = run_simulator(SIM, run.theta, theta_1=rows, **options)
        assert torch.equal(again.x, run.x)
        assert torch.allclose(again.joint_log_ratio, run.joint_log_ratio[:, m], atol=1e-6)
        column = _Column(run, m)
        assert torch.allclose(
            run.joint_log_ratio[:, m], _exact_log_ratio(column, 3, 200), atol=1e-4
        )
        other = _Column(run, (m + 1) % 3)
        assert not torch.allclose(
            run.joint_log_ratio[:, m], _exact_log_ratio(other, 3, 200), atol=1e-2
        )
    refs = run.theta_1.reshape(-1, 2)
    n = len(refs)
    assert (refs.mean(0).abs() < 4 / n**0.5).all()
    assert ((refs.var(0) - 1).abs() < 4 * (2 / n) ** 0.5).all()
    corr = torch.corrcoef(torch.cat([run.theta, run.theta_1.reshape(600, 6)], 1).T)
    off = corr - torch.diag(torch.diag(corr))
    assert (off.abs() < 4 / 600**0.5).all()  # θ and the three columns are independent
    again = simgen.simulate(SIM, PRIOR, 600, theta_1=PriorReferences(3), **options)
    assert torch.equal(again.theta_1, run.theta_1)
    assert torch.equal(again.joint_log_ratio, run.joint_log_ratio)
    # Rows (N, M, D) of one's own give the same as the drawn ones.
    given = run_simulator(SIM, run.theta, theta_1=run.theta_1, **options)
    assert torch.equal(given.joint_log_ratio, run.joint_log_ratio)


class _Column:
    """Column m of a run with several references, as a run with one."""

    def __init__(self, run, m: int):
        self.theta, self.x, self.theta_1 = run.theta, run.x, run.theta_1[:, m]


def test_many_references_bank_and_resume(tmp_path):
    """A bank with PriorReferences(4) holds theta_1 (N, 4, D) and joint_log_ratio (N, 4);
    interrupted after 2 of 4 batches and resumed it equals the in-memory run; another count
    is refused by the fingerprint."""
    path = tmp_path / "many.zarr"
    options = {"seed": 7, "joint": True, "theta_1": PriorReferences(4), "batch_size": 50}
    expected = simgen.simulate(_InterruptAt(), PRIOR, 200, **options)
    with pytest.raises(SimulationInterrupted, match="2 of 4 batches"):
        simgen.simulate(_InterruptAt(stop=3), PRIOR, 200, bank=path, **options)
    assert torch.equal(read_bank(path).joint_log_ratio, expected.joint_log_ratio[:100])
    resumed_sim = _InterruptAt()
    resumed = simgen.simulate(resumed_sim, PRIOR, 200, bank=path, **options)
    assert resumed_sim.calls == 2
    assert read_bank(path).theta_1.shape == (200, 4, 2)
    for name in ("theta", "x", "joint_score", "joint_log_ratio", "theta_1"):
        assert torch.equal(getattr(resumed, name), getattr(expected, name)), name
    with pytest.raises(BankError, match="prior x4"):
        simgen.simulate(
            _InterruptAt(), PRIOR, 200, bank=path, **{**options, "theta_1": PriorReferences(3)}
        )


@pytest.mark.parametrize("count", [0, -1, 1.5, "3", True, None, 10**6])
def test_prior_references_count_is_checked(count):
    """A count that is not a whole number from 1 to MAX_REFERENCES is a ConfigError."""
    with pytest.raises(ConfigError, match="PriorReferences"):
        PriorReferences(count)


def test_many_reference_shapes_are_refused():
    """(N, M, D) rows of the wrong N, D or M = 0, non-finite rows, and ratio_rows of a run
    with several references each give a SimgenError naming what to pass."""
    theta = PRIOR.sample((8,))
    for shape in ((8, 3, 3), (7, 3, 2), (8, 0, 2), (1, 3, 2)):
        with pytest.raises(ShapeError, match=r"\(8, M, 2\)"):
            run_simulator(SIM, theta, joint=True, theta_1=torch.zeros(shape))
    bad = torch.zeros(8, 2, 2)
    bad[3, 1, 0] = torch.inf
    with pytest.raises(ShapeError, match="finite"):
        run_simulator(SIM, theta, joint=True, theta_1=bad)
    with pytest.raises(ConfigError, match="needs the prior"):
        run_simulator(SIM, theta, joint=True, theta_1=PriorReferences(2))
    run = simgen.simulate(SIM, PRIOR, 8, seed=0, joint=True, theta_1=PriorReferences(2))
    with pytest.raises(ConfigError, match="one reference per simulation"):
        run.ratio_rows()
