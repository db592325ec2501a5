r"""Contrastive losses for neural ratio estimation (NRE-C and balanced NRE).

A classifier :math:`f_\phi(\theta, x)` is trained so that :math:`f_\phi \to \log r(\theta, x)
= \log p(x\mid\theta) - \log p(x)`. Pairs from the joint :math:`p(\theta, x)` are the
simulations; pairs from the product of marginals :math:`p(\theta)p(x)` are made inside the loss
by pairing each x with the θs of *other* rows of the batch (a random permutation). The
classifier is any module called as ``classifier(theta, x) -> (*)`` logits, θ the target and x
the context, broadcast against each other (:class:`~simgen.estimators.classifier.RatioClassifier`).

**NRE-C** (Miller et al., 2022). With :math:`K` atoms :math:`\Theta = (\theta_1, \dots,
\theta_K)` per x, a :math:`(K+1)`-way classifier decides whether none of them (:math:`y=0`)
or :math:`\theta_k` (:math:`y=k`) was drawn jointly with x. With class weights :math:`p(y=0)
= 1/(1+\gamma)`, :math:`\sum_{k\ge1} p(y=k) = \gamma/(1+\gamma)`, the Bayes-optimal classifier
is, writing :math:`r_k = e^{f_\phi(\theta_k, x)}`,

.. math::
    q(y=0 \mid \Theta, x) = \frac{K}{K + \gamma\sum_j r_j},\qquad
    q(y=k \mid \Theta, x) = \frac{\gamma\, r_k}{K + \gamma\sum_j r_j},

and the loss is the weighted cross-entropy

.. math::
    \mathcal L(\phi) = -\tfrac{1}{1+\gamma}\,\mathbb E_{y=0}\log q(y=0\mid\Theta,x)
        - \tfrac{\gamma}{1+\gamma}\,\mathbb E_{y=1}\log q(y=1\mid\Theta,x),

minimised by :math:`f_\phi = \log r` exactly (not only up to a constant in x, unlike NRE-B).

**NRE-C with soft labels from the joint ratio** (``"nrec_soft"``, :class:`SoftNRECLoss`).
Let the K atoms of a joint example be the simulation's own :math:`\theta_{i}` and
:math:`K-1` banked references :math:`\theta_{1,i}^{(m)}`, drawn from the prior independently
of :math:`(\theta_i, x_i, z_i)`, each with its joint log ratio :math:`\log r^{(m)}_i = \log
p(x_i,z_i\mid\theta_i) - \log p(x_i,z_i\mid\theta^{(m)}_{1,i})`. The atoms are then K
independent prior draws, and since :math:`q` above is symmetric in their order, the loss
is unchanged if the position :math:`k^*` of the joint atom is uniform instead of first. Given
the latents, the posterior of that position is

.. math:: w_k = P(k^* = k\mid \Theta, x, z) = \frac{p(x,z\mid\theta_k)}{\sum_j p(x,z\mid
    \theta_j)} = \operatorname{softmax}_k\big(0, -\log r^{(1)}, \dots, -\log r^{(K-1)}\big),

and by the tower property :math:`\mathbb E[w_k\mid\Theta, x] = P(k^*=k\mid\Theta, x)
= p(x\mid\theta_k)/\sum_j p(x\mid\theta_j)`. Replacing the joint term's hard label by
these soft labels, :math:`-\log q(y=k^*) \to -\sum_k w_k \log q(y=k)`, replaces the term by
its conditional expectation given :math:`(\Theta, x, z)`: the expected loss, as a function of
:math:`\phi`, is exactly NRE-C's (the same minimiser :math:`f = \log r`), and its variance
is no larger (the law of total variance). :math:`\gamma` enters only through :math:`q` and
the weight of the joint term, not through :math:`w`: every joint class has the same prior
weight :math:`\gamma/(K(1+\gamma))`, so the position is uniform whatever :math:`\gamma`.
Only the joint term changes (:math:`\log q(y=k)
= \log\gamma + f_k - \log(K + \gamma\sum_j e^{f_j})`, so the soft label enters as
:math:`\sum_k w_k f_k`); the null class :math:`y=0` keeps its hard label and its K atoms from
other rows of the batch, because the probability of the null class given the latents would
need the marginal :math:`p(x, z)`, which no simulator gives. The references must be drawn
from the prior (a fixed :math:`\theta_1` breaks the exchangeability the derivation uses);
``simulate(..., theta_1=PriorReferences(K - 1))`` banks them from the one simulator pass.
K is NRE's ``num_atoms`` (5, NRE-C's default): on particle_shower's tuning observations at
3,300 simulations K = 10 and 20 changed C2ST by −0.006 [−0.021, +0.012] and +0.009
[−0.011, +0.027] against K = 5, at 2.6 times the training CPU, so more atoms are not the
default (``benchmarks/results_joint_ratio.md``: the screen, and the report grid's K = 10
and 20 rows). NRE's training defaults and 3 × 64 classifier serve this loss unchanged: no
width, learning rate, patience, weight decay, batch size, ensemble, K = 40, random subset of
a larger bank of references, added hard term or mixed label beat K = 10 beyond the noise on
the tuning observations, and the two best there moved the report grid by +0.000 and +0.003
(the same file, "What limits nrec_soft"); label temperatures other than 1, which move the
minimiser, were worse by 0.031-0.040.

**BNRE** (Delaunoy et al., 2022). Binary NRE, :math:`-\mathbb E_{p(\theta,x)} \log
\sigma(f_\phi) - \mathbb E_{p(\theta)p(x)} \log(1 - \sigma(f_\phi))`, plus the balancing
penalty

.. math:: \lambda\,\big(\mathbb E_{p(\theta,x)}\sigma(f_\phi) +
          \mathbb E_{p(\theta)p(x)}\sigma(f_\phi) - 1\big)^2,

zero for the Bayes-optimal classifier; it pushes the classifier towards less confident
ratios, hence conservative (under- rather than over-confident) posteriors.

**Losses with a reference and the joint ratio** (Brehmer, Louppe, Pavez & Cranmer, PNAS 2020;
Stoye et al., 2018 for ALICES). These learn :math:`f_\phi(\theta, x) \to \log r(x \mid
\theta, \theta_1) = \log p(x\mid\theta) - \log p(x\mid\theta_1)` for a fixed reference
:math:`\theta_1`. That differs from NRE's :math:`\log p(x\mid\theta) - \log p(x)` by
:math:`\log p(x) - \log p(x\mid\theta_1)`, a constant in :math:`\theta`, so

.. math:: \log p(\theta\mid x) = f_\phi(\theta, x) + \log p(\theta) + c(x),

and MCMC on :func:`~simgen.mcmc.ratio_potential` samples the same posterior. The data
(:meth:`simgen.simulator.PyroSimulator.ratio_simulations`) are rows :math:`(\theta, x, y)`
with :math:`x \sim p(x\mid\theta)` (:math:`y = 0`) or :math:`x \sim p(x\mid\theta_1)`
(:math:`y = 1`, ``from_reference``), as many of each for every :math:`\theta`, with the joint
log ratio :math:`\log r(x,z) = \log p(x,z\mid\theta) - \log p(x,z\mid\theta_1)` on the
row's latents and, for :math:`y=0`, the joint score :math:`t = \nabla_\theta\log p(x,z\mid
\theta)`; :meth:`simgen.simulations.Simulations.ratio_rows` makes them from a
``simulate(..., joint=True, theta_1=...)`` run or bank. Three identities make them worth
more than :math:`(\theta, x)` alone: with :math:`z \sim p(z\mid x, \theta_1)`,
:math:`\mathbb E[r(x,z)\mid x] = \int p(x,z\mid\theta)\,dz / p(x\mid\theta_1) = r(x)`;
with :math:`z\sim p(z\mid x,\theta)`, :math:`\mathbb E[1/r(x,z)\mid x] = 1/r(x)` and
:math:`\mathbb E[t\mid x] = \nabla_\theta \log p(x\mid\theta) = \nabla_\theta \log
r(x\mid\theta,\theta_1)`. Write
:math:`\hat r = e^{f_\phi}`, :math:`\sigma` the logistic function.

* **CARL** (no joint information): :math:`-\mathbb E[(1-y)\log\sigma(f) + y\log\sigma(-f)]`.
  The Bayes classifier of "drawn at θ" is :math:`p(x\mid\theta)/(p(x\mid\theta) + p(x\mid
  \theta_1)) = \sigma(\log r(x))`, so the minimiser is :math:`f = \log r(x)`.
* **ROLR** regresses a ratio whose conditional mean is the marginal one. The balanced
  rows are draws from the mixture :math:`m(x, z) = \tfrac12 p(x,z\mid\theta) + \tfrac12
  p(x,z\mid\theta_1)`, and the ratio against it, :math:`r_m(x, z) = p(x,z\mid\theta) / m(x,
  z) = 2\sigma(\log r(x, z))`, has under :math:`z \sim m(z\mid x)` the mean :math:`\mathbb
  E[r_m\mid x] = p(x\mid\theta)/m(x) = 2\sigma(\log r(x))`, and so has its complement
  :math:`2 - r_m = p(x,z\mid\theta_1)/m(x,z)`. The loss is the squared error of both,
  :math:`\mathbb E[(2\sigma(f) - r_m)^2 + (2\sigma(-f) - (2 - r_m))^2]` over all rows,
  minimised by the conditional mean, :math:`\sigma(f) = \sigma(\log r(x))`, i.e. :math:`f =
  \log r(x)`. The targets lie in :math:`[0, 2]`. The form with :math:`\theta_1` as the
  denominator (Brehmer et al.: :math:`(\hat r - r(x,z))^2` on rows drawn at :math:`\theta_1`,
  :math:`(1/\hat r - 1/r(x,z))^2` on rows drawn at θ) has the same minimiser, but its targets
  are heavy-tailed: their conditional means are carried by rare huge values, most of all
  with a per-row reference θ₁ from the prior, and on the latent chain its empirical risk is
  lower at :math:`f = 0` (the prior) than at the exact ratio, so it trains towards the
  prior; regressing :math:`\log r(x, z)` instead converges to :math:`\mathbb E[\log r(x,z)
  \mid x] \ne \log r(x)`, far off where the latents are informative. The bounded form is
  the one kept because it trains to the exact ratio where those two do not
  (``benchmarks/results_joint_ratio.md``, "ROLR's target").
* **ALICES**: cross-entropy against the soft labels :math:`s = \sigma(\log r(x,z))`,
  :math:`-\mathbb E[s\log\sigma(f) + (1-s)\log\sigma(-f)]`. Its minimiser is
  :math:`\sigma(f) = \mathbb E[s\mid x]` under the balanced mixture :math:`\tfrac12 p(x,z\mid
  \theta) + \tfrac12 p(x,z\mid\theta_1)`, whose posterior over :math:`z` is :math:`(p(x,z\mid
  \theta) + p(x,z\mid\theta_1))/(p(x\mid\theta) + p(x\mid\theta_1))`, so :math:`\mathbb E[s
  \mid x] = p(x\mid\theta)/(p(x\mid\theta) + p(x\mid\theta_1))`: CARL's minimiser, with
  the label noise of one coin flip replaced by the joint ratio's.
* **Score terms**: RASCAL = ROLR, CASCAL = CARL, and ALICES with a positive weight add
  :math:`\lambda\,\mathbb E[(1-y)\sum_d ((\partial_{\theta_d} f - t_d)/s_d)^2]`, minimised
  by :math:`\nabla_\theta f = \nabla_\theta \log r(x\mid\theta,\theta_1)`, which the true
  ratio also satisfies, so the minimiser is unchanged. :math:`s_d` is the standard deviation
  of :math:`t_d`, so :math:`\lambda` is unitless, as in :class:`~simgen.losses.likelihood.
  JointScoreNLELoss`. ALICES keeps λ = 0 by default (it then needs no joint score); λ = 0.1
  (Brehmer et al.'s α) measured slightly better on particle_shower and the latent chain,
  within the noise of the screen that chose it, at about twice the training CPU
  (``benchmarks/results_joint_ratio.md``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.functional import logsigmoid

from ..errors import ConfigError

__all__ = [
    "NRECLoss",
    "SoftNRECLoss",
    "BNRELoss",
    "ReferenceRatioLoss",
    "REFERENCE_LOSSES",
    "reference_ratio_loss",
]


def _marginal_thetas(theta: Tensor, count: int) -> Tensor:
    """``(N, count, D)``: for each row, θs of ``count`` other rows (random, never itself)."""
    n = len(theta)
    offsets = torch.randint(1, max(n, 2), (n, count), device=theta.device)
    idx = (torch.arange(n, device=theta.device)[:, None] + offsets) % n
    return theta[idx]


class NRECLoss(nn.Module):
    """Contrastive NRE loss (NRE-C) with ``num_atoms`` K and class ratio ``gamma``."""

    def __init__(self, classifier: nn.Module, num_atoms: int = 10, gamma: float = 1.0):
        super().__init__()
        if num_atoms < 2 or gamma <= 0:
            raise ConfigError(
                f"NRE-C needs num_atoms >= 2 and gamma > 0; got {num_atoms!r}, {gamma!r}."
            )
        self.classifier = classifier
        self.num_atoms = int(num_atoms)
        self.gamma = float(gamma)

    def forward(self, theta: Tensor, x: Tensor) -> Tensor:
        k, n = self.num_atoms, len(theta)
        xs = x[:, None].expand(n, k, *x.shape[1:])
        # y = 0: K marginal atoms; y = 1: the joint θ first, then K - 1 marginal atoms.
        marginal = self.classifier(_marginal_thetas(theta, k), xs)
        others = _marginal_thetas(theta, k - 1)
        joint = self.classifier(torch.cat([theta[:, None], others], 1), xs)
        log_gamma, log_k = math.log(self.gamma), math.log(k)
        pad = torch.full((n, 1), log_k, device=theta.device, dtype=marginal.dtype)
        log_q0 = log_k - torch.logsumexp(torch.cat([log_gamma + marginal, pad], 1), 1)
        log_q1 = (
            log_gamma + joint[:, 0] - torch.logsumexp(torch.cat([log_gamma + joint, pad], 1), 1)
        )
        w = self.gamma / (1 + self.gamma)
        return -((1 - w) * log_q0 + w * log_q1).mean()


class SoftNRECLoss(NRECLoss):
    """NRE-C whose joint term has soft labels from the joint log ratios against ``K - 1``
    prior-drawn references per simulation (module docstring); K is ``num_atoms``."""

    def forward(self, theta: Tensor, x: Tensor, theta_1: Tensor, joint_log_ratio: Tensor) -> Tensor:
        k, n = self.num_atoms, len(theta)
        theta_1 = theta_1.reshape(n, k - 1, theta.shape[-1])
        log_r = joint_log_ratio.reshape(n, k - 1).to(theta_1.dtype)
        xs = x[:, None].expand(n, k, *x.shape[1:])
        marginal = self.classifier(_marginal_thetas(theta, k), xs)
        joint = self.classifier(torch.cat([theta[:, None], theta_1], 1), xs)
        log_gamma, log_k = math.log(self.gamma), math.log(k)
        pad = torch.full((n, 1), log_k, device=theta.device, dtype=marginal.dtype)
        log_q0 = log_k - torch.logsumexp(torch.cat([log_gamma + marginal, pad], 1), 1)
        labels = torch.softmax(torch.cat([torch.zeros_like(log_r[:, :1]), -log_r], 1), 1)
        norm = torch.logsumexp(torch.cat([log_gamma + joint, pad], 1), 1)
        log_q1 = log_gamma + (labels * joint).sum(1) - norm
        w = self.gamma / (1 + self.gamma)
        return -((1 - w) * log_q0 + w * log_q1).mean()


class BNRELoss(nn.Module):
    """Balanced binary NRE loss with balancing strength ``regularization`` (λ)."""

    def __init__(self, classifier: nn.Module, regularization: float = 100.0):
        super().__init__()
        self.classifier = classifier
        self.regularization = float(regularization)

    def forward(self, theta: Tensor, x: Tensor) -> Tensor:
        joint = self.classifier(theta, x)
        marginal = self.classifier(_marginal_thetas(theta, 1)[:, 0], x)
        bce = -(logsigmoid(joint).mean() + logsigmoid(-marginal).mean())
        balance = torch.sigmoid(joint).mean() + torch.sigmoid(marginal).mean() - 1
        return bce + self.regularization * balance**2


class ReferenceRatioLoss(nn.Module):
    """CARL, ROLR, ALICES and their score-augmented forms (module docstring): ``kind`` picks
    the ratio term (``"carl"``, ``"rolr"``, ``"alices"``), ``weight`` λ the score term."""

    def __init__(
        self, classifier: nn.Module, kind: str, weight: float = 0.0, scale: Tensor | None = None
    ):
        super().__init__()
        if kind not in ("carl", "rolr", "alices"):
            raise ConfigError(f"kind must be 'carl', 'rolr' or 'alices'; got {kind!r}.")
        if weight < 0 or (weight > 0 and scale is None):
            raise ConfigError("The score term needs weight >= 0 and, when positive, a scale.")
        self.classifier, self.kind, self.weight = classifier, kind, float(weight)
        self.register_buffer("scale", None if scale is None else scale.detach().clone())

    def forward(self, theta: Tensor, x: Tensor, **extras: Tensor) -> Tensor:
        return self.per_row(theta, x, **extras).mean()

    def per_row(
        self,
        theta: Tensor,
        x: Tensor,
        from_reference: Tensor,
        joint_log_ratio: Tensor | None = None,
        joint_score: Tensor | None = None,
    ) -> Tensor:
        """The loss of each row, ``(N,)`` (the module's value is their mean)."""
        y = from_reference.to(x.dtype if x.is_floating_point() else theta.dtype)
        with torch.enable_grad():  # the validation pass runs under no_grad
            theta = theta.detach().requires_grad_(self.weight > 0)
            f = self.classifier(theta, x)
            if self.weight > 0:
                (grad,) = torch.autograd.grad(f.sum(), theta, create_graph=self.training)
        if self.kind == "carl":
            loss = -((1 - y) * logsigmoid(f) + y * logsigmoid(-f))
        elif self.kind == "alices":
            s = torch.sigmoid(joint_log_ratio)
            loss = -(s * logsigmoid(f) + (1 - s) * logsigmoid(-f))
        else:  # ROLR against the balanced mixture: r_m = 2 sigma(log r) and 2 - r_m
            r_m = 2 * torch.sigmoid(joint_log_ratio)
            loss = (2 * torch.sigmoid(f) - r_m) ** 2 + (2 * torch.sigmoid(-f) - (2 - r_m)) ** 2
        if self.weight > 0:
            error = ((grad - joint_score) / self.scale).square().sum(-1)
            loss = loss + self.weight * (1 - y) * error
        return loss


#: Name → (ratio term, whether the score term is on by default): the losses NRE takes by name.
REFERENCE_LOSSES = {
    "carl": ("carl", False),
    "cascal": ("carl", True),
    "rolr": ("rolr", False),
    "rascal": ("rolr", True),
    "alices": ("alices", False),
}


def reference_ratio_loss(
    classifier: nn.Module, name: str, weight: float, scale: Tensor | None
) -> ReferenceRatioLoss:
    """The loss called ``name`` in :data:`REFERENCE_LOSSES`, with score weight ``weight``."""
    if name not in REFERENCE_LOSSES:
        raise ConfigError(f"Unknown ratio loss {name!r}; choose one of {list(REFERENCE_LOSSES)}.")
    return ReferenceRatioLoss(classifier, REFERENCE_LOSSES[name][0], weight, scale)
