r"""A 2-D Gaussian random field whose power spectrum depends on :math:`(\Omega_m, \sigma_8)`.

A toy weak-lensing / density map on a periodic :math:`32 \times 32` grid. With
:math:`k = |\mathbf k|` in units of the fundamental mode, the power spectrum has a BBKS-like
turnover at a scale set by :math:`\Omega_m` and an amplitude set by :math:`\sigma_8`:

.. math::
    S(k; \Omega_m) = \frac{k}{\big(1 + (k / k_\mathrm{eq})^2\big)^2}, \quad
    k_\mathrm{eq} = 10\,\Omega_m, \qquad
    P_k = \sigma_8^2\, M \frac{S(k)}{\sum_{k'} S(k')}, \quad M = 32^2,

normalised so that the field's pixel variance is exactly :math:`\sigma_8^2`. The field is
:math:`f = U^\dagger \mathrm{diag}(\sqrt{P})\, U \varepsilon` with :math:`U` the unitary DFT and
:math:`\varepsilon` white noise (a circulant, hence stationary, Gaussian field), and the map
is :math:`x = f + \sigma_n \eta` with pixel noise :math:`\sigma_n = 0.1`.

The likelihood is exact in Fourier space: the modes :math:`\hat x_k` (unnormalised DFT) are
independent with variance :math:`M \Lambda_k`, :math:`\Lambda_k = P_k + \sigma_n^2`, so

.. math::
    \log p(x \mid \theta) = -\tfrac12 \sum_k \Big(\frac{|\hat x_k|^2}{M \Lambda_k}
    + \log 2\pi \Lambda_k\Big).

The reference posterior evaluates it on a grid (coarse over the prior, then fine around the
mass) and samples cells with uniform jitter. ``summary`` gives the binned power spectrum.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from simgen.priors import BoxUniform

from ._mcmc import single_thread

__all__ = [
    "prior",
    "simulator",
    "summary",
    "summary_simulator",
    "power_spectrum",
    "log_likelihood",
    "theta_o",
    "x_o",
    "reference_posterior",
    "SIZE",
    "NUM_BINS",
]

SIZE = 32
NOISE = 0.1
NUM_BINS = 8

prior = BoxUniform(low=torch.tensor([0.1, 0.6]), high=torch.tensor([0.5, 1.0]))


@functools.lru_cache(maxsize=4)
def _k(dtype: torch.dtype = torch.float32) -> Tensor:
    f = torch.fft.fftfreq(SIZE, 1 / SIZE, dtype=dtype)
    return torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2)


def power_spectrum(theta: Tensor) -> Tensor:
    r"""Mode variances :math:`P_k` on the full ``(32, 32)`` frequency grid, ``(N, 32, 32)``."""
    k = _k(theta.dtype)
    keq = 10 * theta[:, 0, None, None]
    shape = k / (1 + (k / keq) ** 2) ** 2
    return theta[:, 1, None, None] ** 2 * SIZE**2 * shape / shape.sum((-2, -1), keepdim=True)


def simulator(theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Simulate maps ``(N, 32, 32)`` for ``theta = (Ωm, σ8)`` of shape ``(N, 2)``."""
    # f + σ_n η is itself circulant Gaussian with mode variances Λ = P + σ_n², so one white
    # noise and one pair of FFTs draw it exactly.
    eps = torch.randn((theta.shape[0], SIZE, SIZE), generator=generator, dtype=theta.dtype)
    amp = (power_spectrum(theta)[..., : SIZE // 2 + 1] + NOISE**2).sqrt()
    return torch.fft.irfft2(amp * torch.fft.rfft2(eps), s=(SIZE, SIZE))


@functools.lru_cache(maxsize=4)
def _bins(dtype: torch.dtype = torch.float32) -> Tensor:
    k = _k(dtype).reshape(-1)
    edges = torch.logspace(0, torch.log10(k.max() + 1e-3), NUM_BINS + 1, dtype=dtype)
    idx = torch.bucketize(k, edges, right=True) - 1
    onehot = torch.nn.functional.one_hot(idx.clamp(0, NUM_BINS - 1), NUM_BINS).to(dtype)
    onehot[k < 1] = 0  # the k = 0 mode carries no spectral information
    return onehot / onehot.sum(0)


def summary(x: Tensor) -> Tensor:
    r"""Binned power spectrum, ``(N, 8)``: :math:`\log \langle |\hat x_k|^2 / M \rangle` per bin."""
    power = torch.fft.fft2(x).abs() ** 2 / SIZE**2
    return torch.log(power.reshape(x.shape[0], -1) @ _bins(x.dtype))


def summary_simulator(theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The same simulation observed through :func:`summary`: ``(N, 8)``."""
    return summary(simulator(theta, generator))


def log_likelihood(theta: Tensor, x: Tensor) -> Tensor:
    r"""Exact :math:`\log p(x \mid \theta)` for ``theta`` ``(N, 2)`` and one map ``(32, 32)``."""
    power = torch.fft.fft2(x.to(theta.dtype)).abs() ** 2
    lam = power_spectrum(theta) + NOISE**2
    return -0.5 * (power / (SIZE**2 * lam) + torch.log(2 * torch.pi * lam)).sum((-2, -1))


def _grid(x: Tensor, low: Tensor, high: Tensor, m: int) -> tuple[Tensor, Tensor, Tensor]:
    u = (torch.arange(m, dtype=torch.float64) + 0.5) / m
    g0, g1 = torch.meshgrid(
        low[0] + u * (high[0] - low[0]), low[1] + u * (high[1] - low[1]), indexing="ij"
    )
    theta = torch.stack([g0.reshape(-1), g1.reshape(-1)], -1)
    ll = torch.cat([log_likelihood(t, x) for t in theta.split(4096)])
    return theta, torch.softmax(ll, 0), (high - low) / m


def reference_posterior(x_o: Tensor, num_samples: int, seed: int = 0) -> Tensor:
    """Posterior samples ``(num_samples, 2)`` from the exact likelihood on a refined grid."""
    with single_thread():
        return _sample_posterior(x_o, num_samples, seed)


def _sample_posterior(x_o: Tensor, num_samples: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(x_o, dtype=torch.float64).reshape(SIZE, SIZE)
    low, high = prior.low.double(), prior.high.double()
    theta, w, _ = _grid(x, low, high, 48)
    mean = (w[:, None] * theta).sum(0)
    std = ((w[:, None] * (theta - mean) ** 2).sum(0)).sqrt().clamp(min=(high - low).min() / 48)
    low, high = torch.maximum(low, mean - 8 * std), torch.minimum(high, mean + 8 * std)
    theta, w, cell = _grid(x, low, high, 100)
    idx = torch.multinomial(w, num_samples, replacement=True, generator=g)
    jitter = torch.rand((num_samples, 2), generator=g, dtype=torch.float64) - 0.5
    return (theta[idx] + jitter * cell).float()


theta_o = torch.tensor([0.3, 0.8])
x_o = simulator(theta_o[None], generator=torch.Generator().manual_seed(1))[0]
