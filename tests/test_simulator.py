"""The simulator interface: function and pyro-program simulators, traces, joint densities."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import simgen
from simgen.errors import ShapeError, SimulationError
from simgen.simulator import FunctionSimulator, PyroSimulator, Trace, as_simulator, from_pyro

# A linear-Gaussian chain θ → z_p → z_s → z_d → x with every density in closed form.
from simulators._latent_chain import S_D, S_P, S_S, S_X, A, B, C, chain  # noqa: E402
from simulators._latent_chain import log_likelihood as chain_marginal  # noqa: E402


def chain_joint(theta, z, x):
    n = torch.distributions.Normal
    return (
        n(A * theta[:, 0], S_P).log_prob(z["z_p"])
        + n(B * z["z_p"], S_S).log_prob(z["z_s"])
        + n(z["z_s"] + theta[:, 1], S_D).log_prob(z["z_d"])
        + n(C * z["z_d"], S_X).log_prob(x)
    )


def chain_score(theta, z, x):
    d_theta1 = A * (z["z_p"] - A * theta[:, 0]) / S_P**2
    d_theta2 = (z["z_d"] - z["z_s"] - theta[:, 1]) / S_D**2
    return torch.stack([d_theta1, d_theta2], -1)


def fd_score_error(sim, trace: Trace, score=None, h: float = 1e-5) -> float:
    """Max |central finite difference of the joint log-prob − score| over rows and dims."""
    score = trace.joint_score if score is None else score
    z = {k: v for k, v in trace.latents.items() if not k.endswith("_mask")}
    err = 0.0
    for j in range(trace.theta.shape[1]):
        e = torch.zeros_like(trace.theta)
        e[:, j] = h
        up = sim.log_prob(trace.theta + e, z, trace.x)
        down = sim.log_prob(trace.theta - e, z, trace.x)
        err = max(err, float(((up - down) / (2 * h) - score[:, j]).abs().max()))
    return err


@pytest.fixture
def theta64():
    return torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_chain_joint_log_prob_and_score_match_closed_form(theta64):
    tr = from_pyro(chain).trace(theta64, seed=1)
    assert set(tr.latents) == {"z_p", "z_s", "z_d"}
    assert tr.x.shape == (64,) and tr.joint_log_prob.shape == (64,)
    assert tr.joint_score.shape == (64, 2) and tr.joint_score.dtype == torch.float64
    expected = chain_joint(theta64, tr.latents, tr.x)
    torch.testing.assert_close(tr.joint_log_prob, expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(
        tr.joint_score, chain_score(theta64, tr.latents, tr.x), rtol=0, atol=1e-9
    )


def test_joint_score_matches_finite_differences_and_a_wrong_score_fails(theta64):
    sim = from_pyro(chain)
    tr = sim.trace(theta64, seed=2)
    assert fd_score_error(sim, tr) < 1e-5
    wrong = tr.joint_score.clone()
    wrong[:, 1] *= 1.01  # a 1 % error in one component must be caught
    assert fd_score_error(sim, tr, score=wrong) > 1e-3


def test_chain_marginal_likelihood_matches_closed_form(theta64):
    sim = from_pyro(chain)
    x = sim.trace(theta64[:8], seed=3).x
    est = sim.marginal_log_prob(theta64[:8], x, num_particles=20_000, seed=0)
    # 20,000 prior particles: the log-estimate's error is well below 0.05 here.
    torch.testing.assert_close(est, chain_marginal(theta64[:8], x), rtol=0, atol=0.05)


def test_chain_simulations_have_the_closed_form_marginal():
    theta = torch.tensor([[0.5, -1.0]], dtype=torch.float64).repeat(20_000, 1)
    x = from_pyro(chain)(theta, generator=torch.Generator().manual_seed(0))
    mean = C * (B * A * 0.5 - 1.0)
    sd = math.sqrt(C**2 * (B**2 * S_P**2 + S_S**2 + S_D**2) + S_X**2)
    assert abs(float(x.mean()) - mean) < 4 * sd / math.sqrt(20_000)
    assert abs(float(x.std()) / sd - 1) < 0.03


P_MAX = 8


def geometric(n: int) -> None:
    """A random number (1..P_MAX) of emissions, each continuing with probability θ."""
    with pyro.plate("sims", n):
        theta = pyro.sample("theta", dist.Uniform(0.0, 1.0).expand([1]).to_event(1))
        cont = theta[:, :1].expand(n, P_MAX - 1)
        go = pyro.sample("go", dist.Bernoulli(cont).to_event(1))
        alive = torch.cat(
            [torch.ones(n, 1, dtype=torch.bool), torch.cumprod(go, -1).bool()], -1
        )  # emission k exists
        pyro.deterministic("energy_mask", alive)
        e = pyro.sample("energy", dist.Exponential(torch.ones(n, P_MAX)).mask(alive).to_event(1))
        pyro.sample("x", dist.Normal((e * alive).sum(-1), 0.1))


def test_variable_size_latents_are_masked_and_give_the_right_density():
    theta = torch.full((500, 1), 0.6, dtype=torch.float64)
    tr = from_pyro(geometric).trace(theta, seed=0)
    alive = tr.latents["energy_mask"]
    assert alive.shape == (500, P_MAX) and tr.latents["energy"].shape == (500, P_MAX)
    size = alive.sum(-1)
    assert int(size.min()) >= 1 and int(size.max()) <= P_MAX and len(size.unique()) > 3
    # Hand-computed density: Bernoulli "go" terms count in full (the program does not mask
    # them), exponential energies only where the emission exists.
    go = tr.latents["go"]
    lp_go = (go * math.log(0.6) + (1 - go) * math.log(0.4)).sum(-1)
    lp_e = (-tr.latents["energy"] * alive).sum(-1)
    lp_x = torch.distributions.Normal((tr.latents["energy"] * alive).sum(-1), 0.1).log_prob(tr.x)
    torch.testing.assert_close(tr.joint_log_prob, lp_go + lp_e + lp_x, rtol=0, atol=1e-10)
    n_go = go.sum(-1)
    torch.testing.assert_close(tr.joint_score[:, 0], n_go / 0.6 - (P_MAX - 1 - n_go) / 0.4)


def test_seeding_is_deterministic_and_leaves_global_rng_alone(theta64):
    sim = from_pyro(chain)
    state = torch.random.get_rng_state()
    a, b = sim.trace(theta64, seed=5), sim.trace(theta64, seed=5)
    assert torch.equal(a.x, b.x) and torch.equal(a.latents["z_s"], b.latents["z_s"])
    assert not torch.equal(a.x, sim.trace(theta64, seed=6).x)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(sim(theta64, generator=g1), sim(theta64, generator=g2))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_simulate_runs_a_pyro_simulator_reproducibly():
    prior = torch.distributions.Independent(torch.distributions.Normal(torch.zeros(2), 1.0), 1)
    sim = from_pyro(chain)
    t1, x1 = simgen.simulate(sim, prior, 300, seed=0, batch_size=100)
    t2, x2 = simgen.simulate(sim, prior, 300, seed=0, batch_size=100)
    assert x1.shape == (300,) and torch.equal(x1, x2) and torch.equal(t1, t2)


def bad_site_outside_plate(n: int) -> None:
    z = pyro.sample("z", dist.Normal(0.0, 1.0))  # shared by all simulations: not allowed
    with pyro.plate("sims", n):
        pyro.sample("theta", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
        pyro.sample("x", dist.Normal(z.expand(n), 1.0))


def test_errors_say_how_to_fix_the_model(theta64):
    with pytest.raises(SimulationError, match="x_site"):
        from_pyro(chain, x_site="obs")(theta64)
    with pytest.raises(SimulationError, match="inside pyro.plate"):
        from_pyro(bad_site_outside_plate).trace(theta64[:, :1], seed=0)
    with pytest.raises(ShapeError):
        from_pyro(chain)(theta64[0])
    tr = from_pyro(chain).trace(theta64, seed=0)
    with pytest.raises(SimulationError, match="missing"):
        from_pyro(chain).log_prob(theta64, {"z_p": tr.latents["z_p"]}, tr.x)


def test_function_simulators_keep_working():
    def noisy(theta):
        return theta + torch.randn(theta.shape)

    sim = as_simulator(noisy)
    assert isinstance(sim, FunctionSimulator) and not isinstance(sim, PyroSimulator)
    theta = torch.zeros(4, 2)
    a = sim(theta, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, sim(theta, generator=torch.Generator().manual_seed(0)))
    assert as_simulator(from_pyro(chain)).__class__ is PyroSimulator


def test_ctrl_c_during_simulate_is_not_swallowed_by_error_handlers():
    """A Ctrl-C in the simulator reaches ``except KeyboardInterrupt`` (with the finished
    batches in ``partial``) and passes through ``except ValueError`` and ``except
    Exception``, as a plain Ctrl-C does."""
    from simgen.errors import SimgenError, SimulationInterrupted

    prior = simgen.BoxUniform(torch.zeros(1), torch.ones(1))
    calls = {"n": 0}

    def interrupted_on_third_batch(theta):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return theta + 1

    caught = None
    try:
        try:
            simgen.simulate(interrupted_on_third_batch, prior, 100, seed=0, batch_size=25)
        except (ValueError, Exception, SimgenError):  # noqa: BLE001 - must not catch it
            pytest.fail("an error handler caught a Ctrl-C")
    except KeyboardInterrupt as exc:
        caught = exc
    assert isinstance(caught, SimulationInterrupted)
    assert not isinstance(caught, (Exception, SimgenError))
    assert len(caught.partial.theta) == 50
