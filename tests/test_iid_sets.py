"""NPE on sets of i.i.d. trials of variable size (simgen.iid, simgen.nets.SetPooling and
SetAttention), on the conjugate Gaussian-mean model.

theta ~ N(0, I_2), x_i | theta ~ N(theta, I_2) i.i.d., so given n trials the posterior is
N(sum_i x_i / (n + 1), I_2 / (n + 1)) for every n. Fast here: the set embeddings' order and
padding invariance (each with a control that breaks it), ``simulate(..., trials=)`` and its
bank, the checks, save/load, and one small trained set-NPE whose moments at n = 1, 10, 20
are checked against the closed form, next to a control that sees only the first trial. The
C2ST check at n = 1, 10, 50 (trained on 1..50 trials) with a first-trial control is slow.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal

import simgen
from simgen import iid
from simgen.errors import ConfigError, ShapeError, SimgenError, SimulationError
from simgen.nets import MLP, SetAttention, SetPooling

D = 2
PRIOR = MultivariateNormal(torch.zeros(D), torch.eye(D))
THETA_O = torch.tensor([0.5, -0.3])


def simulator(theta: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    return theta + torch.randn(theta.shape, generator=generator)


def closed_form(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Posterior mean and sd given trials ``x`` ``(n, D)``."""
    return x.sum(0) / (len(x) + 1), (len(x) + 1) ** -0.5


def observation(n: int, seed: int = 1) -> torch.Tensor:
    return THETA_O + torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def padded(n: int, n_max: int, seed: int = 0) -> torch.Tensor:
    x = torch.full((1, n_max, D), float("nan"))
    x[0, :n] = observation(n, seed)
    return x


NETS = {
    "pooling_mean": lambda: SetPooling(D),
    "pooling_sum": lambda: SetPooling(D, pooling="sum"),
    "attention": lambda: SetAttention(D),
    "attention_self": lambda: SetAttention(D, self_attention=True),
}


# -- the embeddings ------------------------------------------------------------------------
@pytest.mark.parametrize("name", NETS)
def test_set_embedding_is_invariant_to_order_and_padding(name: str) -> None:
    """Permuting the present trials, or adding NaN rows, leaves the summary unchanged up to
    float32 rounding (atol 1e-5 on summaries of size ~1); the controls change it by > 1e-3."""
    torch.manual_seed(0)
    net = NETS[name]()
    x = torch.cat([padded(7, 12, seed=s) for s in range(3)])
    x[1, 3:] = float("nan")  # a set of 3
    out = net(x)
    assert out.shape == (3, 32) and torch.isfinite(out).all()
    perm = x.clone()
    perm[0, :7] = x[0, torch.randperm(7)]
    perm[1, :3] = x[1, [2, 0, 1]]
    assert torch.allclose(net(perm), out, atol=1e-5)
    more = torch.cat([x, torch.full((3, 20, D), float("nan"))], 1)
    assert torch.allclose(net(more), out, atol=1e-5)
    assert torch.allclose(net(x[:, :7]), out, atol=1e-5)  # less padding
    # controls: a zero row is a trial, not padding; a different trial changes the summary
    zeros = x.clone()
    zeros[1, 3] = 0.0
    assert (net(zeros)[1] - out[1]).abs().max() > 1e-3
    other = x.clone()
    other[0, 0] += 1.0
    assert (net(other)[0] - out[0]).abs().max() > 1e-3


def test_order_check_fails_for_a_net_that_is_not_a_set_embedding() -> None:
    """Control of the permutation check: an MLP over the flattened set is order-dependent."""
    torch.manual_seed(0)
    net = MLP(7 * D)
    x = observation(7)[None]
    assert (net(x.flatten(1)) - net(x[:, torch.randperm(7)].flatten(1))).abs().max() > 1e-3


def test_set_embeddings_round_trip_through_their_spec() -> None:
    for make in NETS.values():
        net = make()
        rebuilt = simgen.nets.build_embedding(simgen.nets.embedding_spec(net))
        rebuilt.load_state_dict(net.state_dict())
        x = padded(4, 6)
        assert torch.equal(rebuilt(x), net(x))
    with pytest.raises(ConfigError, match="pooling"):
        SetPooling(D, pooling="max")
    with pytest.raises(ConfigError, match="num_heads"):
        SetAttention(D, hidden_features=30, num_heads=4)


# -- simulating sets -------------------------------------------------------------------------
def test_simulate_trials_pads_with_nan_and_is_seeded() -> None:
    result = simgen.simulate(simulator, PRIOR, 300, seed=3, trials=(2, 9))
    theta, x = result
    assert x.shape == (300, 9, D) and theta.shape == (300, D)
    n = result.counts
    assert n.min() >= 2 and n.max() <= 9 and len(set(n.tolist())) == 8  # all of 2..9 drawn
    assert torch.equal(iid.counts(x, (D,)), n)
    rows = torch.arange(9)[None] < n[:, None]
    assert torch.isfinite(x[rows]).all() and torch.isnan(x[~rows]).all()
    # trials of a set scatter around its own theta (sd 1): the pairing is right
    resid = (x - theta[:, None])[rows]
    assert abs(float(resid.std()) - 1) < 0.05 and abs(float(resid.mean())) < 0.05
    # the same theta as a single-trial run with the same seed; the same sets again
    assert torch.equal(theta, simgen.simulate(simulator, PRIOR, 300, seed=3).theta)
    again = simgen.simulate(simulator, PRIOR, 300, seed=3, trials=(2, 9))
    assert torch.equal(again.counts, n) and torch.equal(again.x.nan_to_num(7), x.nan_to_num(7))
    other = simgen.simulate(simulator, PRIOR, 300, seed=4, trials=(2, 9))
    assert not torch.equal(other.counts, n)
    assert simgen.simulate(simulator, PRIOR, 5, seed=0, trials=4).x.shape == (5, 4, D)


@pytest.mark.parametrize("bad", [(0, 5), (5, 2), (1.0, 3), "10", (1, 2, 3), True])
def test_trials_range_is_checked(bad) -> None:
    with pytest.raises(ConfigError, match="trials must be"):
        simgen.simulate(simulator, PRIOR, 10, seed=0, trials=bad)


def test_a_set_with_a_failed_trial_fails_as_a_whole() -> None:
    def flaky(theta: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = simulator(theta, generator)
        x[theta[:, 0] > 1.0, 0] = float("nan")
        return x

    with pytest.warns(simgen.errors.SimulationWarning):
        result = simgen.simulate(flaky, PRIOR, 200, seed=0, trials=(1, 5), batch_size=64)
    assert (result.theta[:, 0] <= 1.0).all() and (result.failed_theta[:, 0] > 1.0).all()
    assert len(result.theta) + len(result.failed_theta) == 200
    assert set(result.failed_reason) == {"nonfinite"}
    assert torch.equal(iid.counts(result.x, (D,)), result.counts)
    assert torch.isfinite(result.x[iid.present(result.x, (D,))]).all()


def test_banked_sets_hold_one_row_per_trial_and_resume(tmp_path) -> None:
    bank = tmp_path / "sets.zarr"
    first = simgen.simulate(simulator, PRIOR, 50, seed=1, trials=(1, 6), bank=bank, batch_size=16)
    flat = simgen.read_bank(bank)
    assert len(flat.theta) == int(first.counts.sum())  # one row per trial, no padding
    assert torch.isfinite(flat.x).all() and len(flat.failed_theta) == 0
    resumed = simgen.simulate(simulator, PRIOR, 50, seed=1, trials=(1, 6), bank=bank, batch_size=16)
    assert torch.equal(resumed.counts, first.counts)
    assert torch.equal(resumed.x.nan_to_num(7), first.x.nan_to_num(7))
    with pytest.raises(simgen.errors.BankError):  # other sets are another run
        simgen.simulate(simulator, PRIOR, 50, seed=1, trials=(1, 7), bank=bank, batch_size=16)


# -- NPE on sets -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def set_posterior():
    """A small set-NPE and its training data (2,000 sets of 1..20 trials, at most 40 epochs)."""
    data = simgen.simulate(simulator, PRIOR, 2000, seed=0, trials=(1, 20))
    torch.manual_seed(0)
    npe = simgen.NPE(PRIOR, embedding_net=SetPooling(D, hidden_features=32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", simgen.errors.ConvergenceWarning)  # short on purpose
        posterior = npe.fit(data.theta, data.x, max_epochs=40, learning_rate=3e-3, seed=0)
    return posterior, data


def test_set_standardization_pools_present_trials(set_posterior) -> None:
    posterior, data = set_posterior
    std = posterior.estimator.context_standardizer
    trials = data.x[iid.present(data.x, (D,))]
    assert std.loc.shape == (20, D) and torch.isfinite(std.loc).all()
    assert torch.allclose(std.loc, trials.mean(0).expand(20, D))
    assert torch.allclose(std.scale, trials.std(0).expand(20, D))


def test_set_npe_moments_at_1_10_20_trials(set_posterior) -> None:
    """Mean within 0.5 posterior sds and sd within 30% at n = 1, 10, 20 (a small net after
    at most 40 epochs on 2,000 sets: measured up to 0.44 and 0.21 over three observations;
    the slow test holds the full-accuracy C2ST check). Control: the same posterior shown
    only the first trial misses the sd at n = 10 and 20 by more than 100%."""
    posterior, _ = set_posterior
    for n in (1, 10, 20):
        x = observation(n)
        mean, sd = closed_form(x)
        samples = posterior.sample((2000,), x=x, seed=0)
        mean_err = float(((samples.mean(0) - mean).abs() / sd).max())
        sd_err = float((samples.std(0) / sd - 1).abs().max())
        assert mean_err < 0.5 and sd_err < 0.3, (n, mean_err, sd_err)
        if n > 1:
            control = posterior.sample((2000,), x=x[:1], seed=0)
            c_mean = float(((control.mean(0) - mean).abs() / sd).max())
            c_sd = float((control.std(0) / sd - 1).abs().max())
            assert c_mean > 0.5 or c_sd > 0.3, (n, c_mean, c_sd)


def test_set_npe_takes_sets_of_any_size_up_to_the_trained_one(set_posterior, tmp_path) -> None:
    posterior, _ = set_posterior
    assert posterior.x_shape == (20, D)
    x7 = observation(7)
    a = posterior.sample((20,), x=x7, seed=1)
    b = posterior.sample((20,), x=padded(7, 20, seed=1)[0], seed=1)  # padded by the caller
    assert torch.equal(a, b)
    assert posterior.sample((3,), x=x7[0]).shape == (3, D)  # one trial without its axis
    lp = posterior.log_prob(a[:5], x=x7)
    assert lp.shape == (5,) and torch.isfinite(lp).all()
    x15 = observation(15)
    assert posterior.sample_batched((20,), [x7, x15], seed=1).shape == (20, 2, D)
    both = posterior.log_prob_batched(a[:5, None].expand(5, 2, D), [x7, x15])
    assert torch.allclose(both[:, 0], lp, atol=1e-5)
    assert torch.allclose(both[:, 1], posterior.log_prob(a[:5], x=x15), atol=1e-5)
    assert posterior.sample_batched((4,), observation(3)).shape == (4, 3, D)  # 3 single trials
    with pytest.raises(ShapeError, match="at most 20"):
        posterior.sample((5,), x=observation(21))
    with pytest.raises(SimulationError, match="finite"):
        posterior.sample((5,), x=torch.tensor([[0.0, float("nan")]]))
    posterior.save(tmp_path / "sets.model")
    loaded = simgen.load(tmp_path / "sets.model")
    assert torch.equal(loaded.sample((20,), x=x7, seed=1), a)


def test_set_observation_pads_and_compacts_to_the_trained_size() -> None:
    x = torch.full((2, 6, D), float("nan"))
    x[0, [0, 4]] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # NaN rows between trials
    x[1, 5] = 7.0
    out = iid.set_observation(x, (D,), 3, batched=True)
    assert out.shape == (2, 3, D)
    assert torch.equal(out[0, :2], x[0, [0, 4]]) and torch.equal(out[1, 0], x[1, 5])
    assert torch.isnan(out[0, 2]).all() and torch.isnan(out[1, 1:]).all()
    one = iid.set_observation(torch.ones(2, D), (D,), 5, batched=False)
    assert one.shape == (1, 5, D) and iid.counts(one, (D,)).tolist() == [2]
    assert iid.set_observation(torch.ones(4, D), (D,), 5, batched=True).shape == (4, 5, D)
    with pytest.raises(ShapeError, match="at most 3"):
        iid.set_observation(torch.ones(4, D), (D,), 3, batched=False)


def test_set_npe_checks_its_training_sets() -> None:
    data = simgen.simulate(simulator, PRIOR, 20, seed=0, trials=(1, 4))
    npe = simgen.NPE(PRIOR, embedding_net=SetPooling(D))
    empty = data.x.clone()
    empty[3] = float("nan")  # a set without trials
    holey = data.x.clone()
    holey[2, 0, 1] = float("nan")  # a present trial with a NaN
    for x in (empty, holey):
        with pytest.raises(SimulationError, match="sets of x"):
            npe.fit(data.theta, x, max_epochs=1)
    with pytest.raises(ShapeError, match="padded sets"):
        npe.fit(data.theta, data.x[:, 0], max_epochs=1)
    with pytest.raises(ConfigError, match="gaussian_baseline=False"):
        simgen.NPE(PRIOR, "flow_matching", SetPooling(D)).fit(data.theta, data.x, max_epochs=1)
    assert issubclass(ConfigError, SimgenError) and issubclass(SimulationError, SimgenError)


# -- accuracy (slow) -------------------------------------------------------------------------
class FirstTrial(nn.Module):
    """Control: a 'set' embedding that sees only the first trial."""

    takes_sets = True

    def __init__(self) -> None:
        super().__init__()
        self.net = MLP(D, 32)
        self.out_features = 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x[:, 0])


C2ST_TOL = 0.6  # of 2,000 vs 2,000 draws; a perfect posterior gives 0.5 +- ~0.01


@pytest.mark.slow
@pytest.mark.parametrize("embedding", ["pooling", "attention"])
def test_set_npe_c2st_at_1_10_50_trials(embedding: str) -> None:
    """Set-NPE trained on 10,000 sets of 1..50 trials: C2ST against the closed-form posterior
    at most 0.6 at n = 1, 10, 50 (three observations each, every one counted); the same
    training with an embedding of the first trial only exceeds 0.6 at n = 10 and 50.
    Measured on seed 0: pooling 0.545-0.558 at n = 1, 0.481-0.519 at 10, 0.487-0.515 at 50
    (69 CPU-s of training); attention 0.553-0.567, 0.492-0.524, 0.495-0.514 (217 CPU-s);
    the control 0.83-0.89 at 10 and 0.93-0.96 at 50. About 6 CPU-minutes for both."""
    data = simgen.simulate(simulator, PRIOR, 10_000, seed=0, trials=(1, 50))
    net = SetPooling(D) if embedding == "pooling" else SetAttention(D)
    posterior = simgen.NPE(PRIOR, embedding_net=net).fit(data.theta, data.x, seed=0)
    control = simgen.NPE(PRIOR, embedding_net=FirstTrial()).fit(data.theta, data.x, seed=0)
    for n in (1, 10, 50):
        for seed in (1, 2, 3):
            x = observation(n, seed)
            mean, sd = closed_form(x)
            reference = mean + sd * torch.randn(2000, D, generator=torch.Generator().manual_seed(0))
            score = simgen.diagnostics.c2st(posterior.sample((2000,), x=x, seed=0), reference)
            assert score < C2ST_TOL, (embedding, n, seed, score)
            if n > 1:
                wrong = simgen.diagnostics.c2st(control.sample((2000,), x=x, seed=0), reference)
                assert wrong > C2ST_TOL, (n, seed, wrong)


# -- particle_shower's many-event observation ------------------------------------------------
def test_particle_shower_events_reference_runs_seeded_with_tiny_settings() -> None:
    """The observation of n events is a set of n i.i.d. trials; the pseudo-marginal reference
    takes it (tiny settings: the contract, not the accuracy), and one event as ``(1, 5)``
    gives the same likelihood estimate as ``(5,)`` under the same generator."""
    from simgen.priors import in_support
    from simulators import particle_shower as ps

    assert ps.x_o_events.shape == (ps.MAX_EVENTS, 5) and torch.isfinite(ps.x_o_events).all()
    theta = ps.prior.sample((4,))
    one = ps.log_likelihood_estimate(theta, ps.x_o, 50, torch.Generator().manual_seed(0))
    row = ps.log_likelihood_estimate(theta, ps.x_o[None], 50, torch.Generator().manual_seed(0))
    assert torch.equal(one, row)
    three = ps.log_likelihood_estimate(theta, ps.x_o_events[:3], 50, torch.Generator())
    assert three.shape == (4,) and torch.isfinite(three).all()
    tiny = dict(num_particles=10, fit_points=32, fit_particles=10)
    s = ps.reference_posterior(ps.x_o_events[:3], 40, seed=0, **tiny)
    assert s.shape == (40, 2) and bool(in_support(ps.prior, s).all())
    assert torch.equal(s, ps.reference_posterior(ps.x_o_events[:3], 40, seed=0, **tiny))
