"""The diagnostics' random streams: consecutive seeds share no draws (sampling.stream_seed)."""

from __future__ import annotations

import torch

from simgen.diagnostics.sampling import draw, seeded, simulate_pairs, stream_seed

PRIOR = torch.distributions.Independent(torch.distributions.Normal(torch.zeros(3), 1.0), 1)


def simulator(theta, generator=None):
    return theta + torch.randn(theta.shape, generator=generator)


class GlobalRngPosterior:
    """Draws standard normals from torch's global generator, as sbi's posteriors do."""

    def sample(self, sample_shape, x=None):
        return torch.randn(*sample_shape, 3)


def test_offset_seeds_would_share_draws():
    # The control: generators seeded with the same integer replay the same numbers, so
    # offsets (θ from seed s + 1, noise from s + 1 of the previous call) coincide exactly.
    with seeded(1):
        theta_next = PRIOR.sample((50,))
    noise = torch.randn((50, 3), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(theta_next, noise)


def test_consecutive_seeds_share_no_stream():
    theta0, x0 = simulate_pairs(PRIOR, simulator, 200, seed=0)
    theta1, x1 = simulate_pairs(PRIOR, simulator, 200, seed=1)
    noise0, noise1 = x0 - theta0, x1 - theta1
    values = [theta0, noise0, theta1, noise1]
    for i in range(4):
        for j in range(i + 1, 4):
            # Independent N(0, 1) columns: |correlation| of 600 pairs above 0.2 is a 5 SE event.
            a, b = values[i].flatten(), values[j].flatten()
            assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 0.2, (i, j)
    again = simulate_pairs(PRIOR, simulator, 200, seed=0)
    torch.testing.assert_close(again[0], theta0)
    torch.testing.assert_close(again[1], x0)


def test_posterior_draws_are_not_another_calls_theta():
    d0 = draw(GlobalRngPosterior(), PRIOR, simulator, 20, 10, seed=0)
    theta2, _ = simulate_pairs(PRIOR, simulator, 20, seed=2)
    first = d0.samples.reshape(-1, 3)[:20]
    assert not torch.allclose(first, theta2)
    assert len({stream_seed(s, p) for s in range(50) for p in ("theta", "x", "posterior")}) == 150
