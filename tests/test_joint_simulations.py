"""``simulate(..., joint=True)``: joint log-density and joint score kept with every simulation."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from typer.testing import CliRunner

import simgen
from simgen.batches import batch_generator
from simgen.cli import app
from simgen.errors import SimulationError, SimulationInterrupted
from simgen.simulate import read_bank
from simgen.simulator import Simulator, from_pyro

PRIOR = torch.distributions.Independent(torch.distributions.Normal(torch.zeros(2), 1.0), 1)


def chain(n: int) -> None:
    """θ → z → x with Gaussian links (a small latent hierarchy)."""
    with pyro.plate("sims", n):
        theta = pyro.sample("theta", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        z = pyro.sample("z", dist.Normal(2.0 * theta[:, 0], 0.5))
        pyro.sample("x", dist.Normal(z + theta[:, 1], 0.2))


class Wrapped(Simulator):
    """Delegates to ``inner``; presses Ctrl-C on trace call ``stop``; NaN scores if asked."""

    def __init__(self, inner, stop=None, nan_above=None):
        self.inner, self.stop, self.nan_above, self.calls = inner, stop, nan_above, 0

    def __call__(self, theta, generator=None):
        return self.inner(theta, generator=generator)

    def trace(self, theta, seed=None, generator=None):
        self.calls += 1
        if self.calls == self.stop:
            raise KeyboardInterrupt
        tr = self.inner.trace(theta, seed=seed, generator=generator)
        if self.nan_above is not None:
            tr.joint_score[theta[:, 0] > self.nan_above] = float("nan")
        return tr


def test_joint_simulations_carry_each_batchs_trace():
    """x is the plain run's x; log-prob and score are the trace's, row for row."""
    sim = from_pyro(chain)
    plain = simgen.simulate(sim, PRIOR, 250, seed=4, batch_size=60)
    joint = simgen.simulate(sim, PRIOR, 250, seed=4, batch_size=60, joint=True)
    assert plain.joint_log_prob is None and plain.joint_score is None
    assert torch.equal(joint.theta, plain.theta) and torch.equal(joint.x, plain.x)
    assert joint.joint_log_prob.shape == (250,) and joint.joint_score.shape == (250, 2)
    for b in range(5):
        rows = slice(60 * b, 60 * (b + 1))
        tr = sim.trace(joint.theta[rows], generator=batch_generator(4, b))
        torch.testing.assert_close(joint.joint_log_prob[rows], tr.joint_log_prob)
        torch.testing.assert_close(joint.joint_score[rows], tr.joint_score)
    # (The trace's own log-prob and score are checked against closed forms and finite
    # differences in test_simulator.py.)


def test_joint_bank_resumes_exactly_and_refuses_the_other_mode(tmp_path):
    path = tmp_path / "joint.zarr"
    sim = from_pyro(chain)
    expected = simgen.simulate(sim, PRIOR, 300, seed=2, batch_size=100, joint=True)
    with pytest.raises(SimulationInterrupted, match="2 of 3 batches are saved"):
        simgen.simulate(
            Wrapped(sim, stop=3), PRIOR, 300, seed=2, batch_size=100, bank=path, joint=True
        )
    partial = read_bank(path)
    assert torch.equal(partial.joint_score, expected.joint_score[:200])
    resumed = simgen.simulate(
        Wrapped(sim), PRIOR, 300, seed=2, batch_size=100, bank=path, joint=True
    )
    for name in ("theta", "x", "joint_log_prob", "joint_score"):
        assert torch.equal(getattr(resumed, name), getattr(expected, name)), name
    with pytest.raises(SimulationError, match="joint=True"):
        simgen.simulate(sim, PRIOR, 300, seed=2, batch_size=100, bank=path)


def test_nonfinite_joint_outputs_are_dropped_with_their_row():
    sim = Wrapped(from_pyro(chain), nan_above=1.0)
    with pytest.warns(simgen.errors.SimulationWarning, match="NaN or inf"):
        res = simgen.simulate(sim, PRIOR, 400, seed=0, batch_size=100, joint=True)
    assert res.num_nonfinite == int((res.failed_theta[:, 0] > 1.0).sum()) > 0
    assert (res.theta[:, 0] <= 1.0).all() and torch.isfinite(res.joint_score).all()
    assert len(res.joint_score) == len(res.theta) == len(res.x)


def test_joint_needs_a_trace():
    with pytest.raises(SimulationError, match="from_pyro"):
        simgen.simulate(lambda t: t + 1.0, PRIOR, 10, seed=0, joint=True)


def test_cli_saves_the_joint_arrays(tmp_path):
    out = tmp_path / "langevin.pt"
    result = CliRunner().invoke(
        app, ["simulate", "langevin", "50", str(out), "--joint", "--batch-size", "25"]
    )
    assert result.exit_code == 0, result.output
    saved = torch.load(out, weights_only=True)
    assert saved["joint_score"].shape == (50, 2) and saved["joint_log_prob"].shape == (50,)
    assert torch.isfinite(saved["joint_score"]).all()
    model = tmp_path / "nle.simgen"
    args = ["train", "langevin", str(out), str(model), "--method", "nle", "--joint-score"]
    trained = CliRunner().invoke(app, [*args, "--max-epochs", "2"])
    assert trained.exit_code == 0 and model.exists(), trained.output
    refused = CliRunner().invoke(app, [*args[:4], "--method", "nre", "--joint-score"])
    assert refused.exit_code == 2 and "NPE or NLE only" in refused.output


def test_joint_on_an_executor_gives_the_serial_result():
    from concurrent.futures import ThreadPoolExecutor

    sim = from_pyro(chain)
    serial = simgen.simulate(sim, PRIOR, 200, seed=7, batch_size=50, joint=True)
    with ThreadPoolExecutor(2) as pool:
        pooled = simgen.simulate(sim, PRIOR, 200, seed=7, batch_size=50, joint=True, executor=pool)
    for name in ("x", "joint_log_prob", "joint_score"):
        assert torch.equal(getattr(pooled, name), getattr(serial, name)), name
