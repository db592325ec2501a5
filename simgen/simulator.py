"""The simulator interface.

A simulator maps parameters to observations, batched: ``simulator(theta) -> x`` with ``theta``
of shape ``(N, D)`` and ``x`` of shape ``(N, *x_shape)``. Randomness comes in as an argument:
simgen passes a seeded :class:`torch.Generator` as ``generator=`` when the callable accepts it,
and otherwise seeds torch's global generator around the call, so that the same seed always
gives the same simulations.

The ways in:

* any batched function (wrapped by :class:`FunctionSimulator`, or passed directly — simgen
  wraps it for you), or a function of one θ, ``FunctionSimulator(fn, vectorized=False)``;
* a subclass of :class:`Simulator`, which may also offer ``trace(theta, seed=...)`` returning
  the latent variables, the joint log-density :math:`\\log p(x, z \\mid \\theta)` and the
  joint score :math:`\\nabla_\\theta \\log p(x, z \\mid \\theta)`;
* a pyro program, wrapped by :func:`from_pyro` into a :class:`PyroSimulator`, whose
  ``trace`` gets all of that from pyro's effect handlers and autograd.
"""

from __future__ import annotations

import abc
import functools
import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["Simulator", "FunctionSimulator", "PyroSimulator", "Trace", "RatioSimulations"]
__all__ += ["as_simulator", "accepts_generator", "simulator_identity", "from_pyro"]


@dataclass
class Trace:
    """One batched run of a simulator with its latent structure exposed.

    Attributes:
        theta: Parameters, ``(N, D)``.
        x: Observables, ``(N, *x_shape)``.
        latents: Name → tensor of every latent site, leading dimension ``N`` (variable-size
            latents are padded, with a boolean ``"<name>_mask"`` entry beside them).
        joint_log_prob: :math:`\\log p(x, z \\mid \\theta)`, ``(N,)``.
        joint_score: :math:`\\nabla_\\theta \\log p(x, z \\mid \\theta)`, ``(N, D)``.
        random_sites: Names of the latents that are random (not masks or deterministic
            sites); these are what re-scoring at another θ conditions on.
    """

    theta: Tensor
    x: Tensor
    latents: dict[str, Tensor] = field(default_factory=dict)
    joint_log_prob: Tensor | None = None
    joint_score: Tensor | None = None
    random_sites: tuple[str, ...] | None = None


@dataclass
class RatioSimulations:
    r"""Training data for the joint-ratio losses of :mod:`simgen.losses.ratio`.

    Rows come in two halves for the same parameters :math:`\theta_i`: the first half is drawn
    at :math:`\theta_i` (``from_reference`` False), the second at the reference
    :math:`\theta_1` (``from_reference`` True), so ``2N`` simulations for ``N`` θs.

    Attributes:
        theta: :math:`\theta_i` of every row, ``(2N, D)``.
        x: Observables, ``(2N, *x_shape)``.
        from_reference: Whether the row was simulated at :math:`\theta_1`, ``(2N,)`` bool.
        joint_log_ratio: :math:`\log p(x, z \mid \theta_i) - \log p(x, z \mid \theta_1)`
            on the row's own latents, ``(2N,)``.
        joint_score: :math:`\nabla_\theta \log p(x, z \mid \theta_i)` on rows drawn at
            :math:`\theta_i`; zero on rows drawn at :math:`\theta_1`, where no loss uses it
            (its conditional mean there is not the marginal score at :math:`\theta_i`).
        theta_1: The reference of every row, ``(2N, D)``.
    """

    theta: Tensor
    x: Tensor
    from_reference: Tensor
    joint_log_ratio: Tensor
    joint_score: Tensor
    theta_1: Tensor

    def extras(self) -> dict[str, Tensor]:
        """The per-row tensors :meth:`simgen.NRE.fit` takes as keywords."""
        names = ("from_reference", "joint_log_ratio", "joint_score")
        return {name: getattr(self, name) for name in names}

    @property
    def simulated_at(self) -> Tensor:
        """The parameter each row's x was drawn at (θ₁ where ``from_reference``), ``(2N, D)``."""
        return torch.where(self.from_reference[:, None], self.theta_1, self.theta)


class Simulator(abc.ABC):
    """A batched stochastic simulator :math:`x \\sim p(x \\mid \\theta)`."""

    @abc.abstractmethod
    def __call__(self, theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Simulate ``x`` of shape ``(N, *x_shape)`` for ``theta`` of shape ``(N, D)``."""


#: Pyro's effect-handler stack and torch's global RNG (seeded inside ``fork_rng``) are
#: process-wide. Threads that use them at once corrupt each other's pyro traces ("Multiple
#: sample sites named 'sims'") and seeds, so simulators that touch them take turns. Process
#: pools and dask workers have their own copies and run in parallel.
_GLOBAL_STATE = threading.RLock()


def _one_thread_at_a_time(method: Callable) -> Callable:
    @functools.wraps(method)
    def locked(*args, **kwargs):
        with _GLOBAL_STATE:
            return method(*args, **kwargs)

    return locked


def accepts_generator(fn: Callable) -> bool:
    """Whether ``fn`` takes a ``generator=`` keyword (then simgen passes a seeded one)."""
    if isinstance(fn, Simulator):
        return True
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "generator" in params


class FunctionSimulator(Simulator):
    """Wrap a plain batched function ``fn(theta) -> x`` (or ``fn(theta, generator=g)``).

    Without a ``generator`` keyword the function draws from torch's global generator, which
    simgen seeds (inside :func:`torch.random.fork_rng`, leaving the caller's state untouched).
    ``vectorized=False`` marks a function of one θ row ``(D,)``, called once per row with its
    own seed and sent to workers alone by ``simulate`` (:mod:`simgen.external`).
    """

    def __init__(self, fn: Callable[..., Tensor], vectorized: bool = True):
        self.fn, self.vectorized = fn, bool(vectorized)
        self._takes_generator = accepts_generator(fn)
        self.default_batch_size = 1000 if self.vectorized else 1

    def __call__(self, theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if not self.vectorized:
            from .external import call_one, each_row

            return each_row(functools.partial(call_one, self.fn), theta, generator)
        if self._takes_generator:
            return self.fn(theta, generator=generator)
        if generator is None:
            return self.fn(theta)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with _GLOBAL_STATE, torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.fn(theta)

    def __repr__(self) -> str:
        flag = "" if self.vectorized else ", vectorized=False"
        return f"FunctionSimulator({getattr(self.fn, '__name__', self.fn)!r}{flag})"


def as_simulator(obj: Callable | Simulator) -> Simulator:
    """Return ``obj`` if it is a :class:`Simulator`, else wrap the callable."""
    if isinstance(obj, Simulator):
        return obj
    if not callable(obj):
        from .errors import SimulationError

        raise SimulationError(
            f"A simulator must be callable as simulator(theta) -> x; got {type(obj).__name__}."
        )
    return FunctionSimulator(obj)


def _qualified(obj: object) -> str:
    target = getattr(obj, "func", obj)  # functools.partial
    if not hasattr(target, "__qualname__"):
        target = type(target)
    return f"{getattr(target, '__module__', '?')}.{target.__qualname__}"


def simulator_identity(sim: Simulator) -> str:
    """A name for the code behind ``sim``, stored in banks so that a resume with another
    simulator is refused: the module and qualified name of the function, class or pyro
    program (not its state, which may legitimately change between runs)."""
    if callable(getattr(sim, "identity", None)):  # e.g. an external program's command
        return sim.identity()
    if isinstance(sim, FunctionSimulator):
        return _qualified(sim.fn) + ("" if getattr(sim, "vectorized", True) else ":per-call")
    if isinstance(sim, PyroSimulator):
        return f"pyro:{_qualified(sim.model)}"
    return _qualified(type(sim))


def _seed_from(generator: torch.Generator | None) -> int | None:
    return None if generator is None else int(torch.randint(0, 2**62, (1,), generator=generator))


class PyroSimulator(Simulator):
    r"""A pyro program as a simulator, with its latent structure exposed.

    The program is written the ordinary pyro way, ``model(num_simulations)``, with the
    parameters drawn at a sample site (``theta_site``, event shape ``(D,)``), every latent
    variable at a sample site, and the observables at ``x_site``, all inside
    ``pyro.plate(plate_name, num_simulations)``. simgen never edits it; it wraps it in effect
    handlers:

    * ``poutine.condition`` fixes :math:`\theta` to the given rows;
    * ``poutine.trace`` records every site, so the latents :math:`z` come back by name;
    * replaying the recorded values with ``poutine.condition`` and a ``theta`` that requires
      grad gives, per simulation,

      .. math::
          \log p(x, z \mid \theta) = \sum_{s \ne \theta} \log p_s(v_s \mid
          \mathrm{pa}(s)), \qquad t(x, z \mid \theta) = \nabla_\theta \log p(x, z \mid \theta),

      the second by autograd (one backward pass for the whole batch: the simulations are
      independent, so the gradient of the sum holds every row's gradient).

    Sample values are detached before the replay, so the score holds :math:`(x, z)` fixed
    (no path-wise term from reparameterised samplers). Variable-size latents (a random number
    of splittings) are written with a fixed maximal size and masked log-densities
    (``dist.mask(...)`` or ``poutine.mask``); record the mask as
    ``pyro.deterministic("<name>_mask", mask)`` and it is returned beside the latent.
    ``pyro.deterministic`` sites are returned as latents but add nothing to the density.

    Args:
        model: The pyro program, called as ``model(num_simulations)``.
        theta_site: Name of the parameter site.
        x_site: Name of the observable site.
        plate_name: Name of the plate over simulations.

    Example:
        >>> def model(n):
        ...     with pyro.plate("sims", n):
        ...         theta = pyro.sample("theta", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
        ...         z = pyro.sample("z", dist.Normal(theta[:, 0], 1.0))
        ...         pyro.sample("x", dist.Normal(z, 0.1))
        >>> sim = from_pyro(model)
        >>> tr = sim.trace(torch.zeros(5, 1), seed=0)
        >>> tr.joint_score.shape
        torch.Size([5, 1])
    """

    def __init__(
        self,
        model: Callable[[int], object],
        theta_site: str = "theta",
        x_site: str = "x",
        plate_name: str = "sims",
    ):
        self.model = model
        self.theta_site = theta_site
        self.x_site = x_site
        self.plate_name = plate_name

    def __repr__(self) -> str:
        return f"PyroSimulator({getattr(self.model, '__name__', self.model)!r})"

    # -- running the program -------------------------------------------------------------
    def _run(self, data: dict[str, Tensor], n: int):
        import pyro.poutine as poutine

        conditioned = poutine.condition(self.model, data=data)
        tr = poutine.trace(conditioned).get_trace(n)
        if self.theta_site not in tr.nodes or self.x_site not in tr.nodes:
            from .errors import SimulationError

            missing = [s for s in (self.theta_site, self.x_site) if s not in tr.nodes]
            raise SimulationError(
                f"The pyro model has no sample site named {missing}; its sites are "
                f"{[k for k, v in tr.nodes.items() if v['type'] == 'sample']}. Pass "
                "theta_site=/x_site= to from_pyro() with the names your model uses."
            )
        return tr

    def _forward(self, theta: Tensor, seed: int | None):
        """Sample every latent and x with θ fixed; returns the pyro trace (no grad)."""
        theta = self._check_theta(theta)
        with torch.no_grad():
            if seed is None:
                return self._run({self.theta_site: theta}, theta.shape[0])
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return self._run({self.theta_site: theta}, theta.shape[0])

    def _check_theta(self, theta: Tensor) -> Tensor:
        theta = torch.as_tensor(theta)
        if not theta.is_floating_point():
            theta = theta.float()
        if theta.ndim != 2:
            from .errors import ShapeError

            raise ShapeError(f"theta must have shape (N, D); got {tuple(theta.shape)}.")
        return theta

    def _is_random(self, name: str, site: dict) -> bool:
        return (
            self._is_value(name, site)
            and name != self.theta_site
            and not site["infer"].get("_deterministic", False)
        )

    @staticmethod
    def _is_value(name: str, site: dict) -> bool:
        """A sample site holding a value (plates also appear as sample sites; skip them)."""
        return site["type"] == "sample" and type(site["fn"]).__name__ != "_Subsample"

    def _per_simulation(self, name: str, site: dict, n: int) -> Tensor:
        """``site['log_prob']`` summed down to shape ``(N,)`` over everything but the plate."""
        lp = site["log_prob"]
        dim = next((f.dim for f in site["cond_indep_stack"] if f.name == self.plate_name), None)
        if dim is None or lp.ndim == 0:
            from .errors import SimulationError

            raise SimulationError(
                f"Site {name!r} is not inside pyro.plate({self.plate_name!r}, N); put every "
                "latent and observable site inside the plate over simulations so that each "
                "simulation has its own log-density."
            )
        lp = lp.movedim(dim, 0)
        return lp.reshape(n, -1).sum(-1) if lp.ndim > 1 else lp

    # -- public ------------------------------------------------------------------------------
    @_one_thread_at_a_time
    def __call__(self, theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Simulate ``x`` (``(N, *x_shape)``) for ``theta`` (``(N, D)``)."""
        return self._forward(theta, _seed_from(generator)).nodes[self.x_site]["value"]

    @_one_thread_at_a_time
    def log_prob(self, theta: Tensor, latents: dict[str, Tensor], x: Tensor) -> Tensor:
        r"""Joint log-density :math:`\log p(x, z \mid \theta)`, shape ``(N,)``.

        ``latents`` maps every random latent site to its value (as in :attr:`Trace.latents`;
        masks and deterministic sites are ignored). Differentiable in ``theta``.
        """
        theta = self._check_theta(theta)
        data = {k: v for k, v in latents.items()}
        data[self.theta_site] = theta
        data[self.x_site] = x
        tr = self._run(data, theta.shape[0])
        missing = [k for k, s in tr.nodes.items() if self._is_random(k, s) and k not in data]
        if missing:
            from .errors import SimulationError

            raise SimulationError(
                f"log_prob needs a value for every latent site; missing {missing}. Pass the "
                "latents of a Trace from this simulator's trace()."
            )
        tr.compute_log_prob()
        n = theta.shape[0]
        terms = [
            self._per_simulation(k, s, n) for k, s in tr.nodes.items() if self._is_random(k, s)
        ]
        return torch.stack(terms).sum(0)

    @_one_thread_at_a_time
    def trace(
        self, theta: Tensor, seed: int | None = None, generator: torch.Generator | None = None
    ) -> Trace:
        """Simulate and return latents, ``x``, joint log-prob ``(N,)`` and joint score ``(N, D)``.

        Args:
            theta: Parameters, ``(N, D)``; float64 gives float64 log-probs and scores.
            seed: Makes the draw reproducible (the global RNG is left as it was).
            generator: Alternatively, a generator from which the seed is drawn.
        """
        if seed is None:
            seed = _seed_from(generator)
        tr = self._forward(theta, seed)
        theta = self._check_theta(theta)
        latents: dict[str, Tensor] = {}
        for name, site in tr.nodes.items():
            if self._is_value(name, site) and name not in (self.theta_site, self.x_site):
                latents[name] = site["value"].detach()
        x = tr.nodes[self.x_site]["value"].detach()
        random = {k: v for k, v in latents.items() if self._is_random(k, tr.nodes[k])}
        with torch.enable_grad():
            theta_g = theta.detach().clone().requires_grad_(True)
            joint = self.log_prob(theta_g, random, x)
            (score,) = torch.autograd.grad(joint.sum(), theta_g, allow_unused=True)
        if score is None:
            score = torch.zeros_like(theta)
        return Trace(theta, x, latents, joint.detach(), score.detach(), tuple(random))

    def _rows(self, theta_1: Tensor, like: Tensor) -> Tensor:
        """``theta_1`` (one row, or one per row of ``like``) as ``(N, D)`` rows."""
        theta_1 = torch.as_tensor(theta_1, dtype=like.dtype)
        theta_1 = theta_1[None] if theta_1.ndim == 1 else theta_1
        n, d = like.shape
        if theta_1.ndim != 2 or theta_1.shape[1] != d or len(theta_1) not in (1, n):
            from .errors import ShapeError

            raise ShapeError(
                f"theta_1 must be one parameter row ({d},) or one row per simulation "
                f"{(n, d)}; got {tuple(theta_1.shape)}."
            )
        return theta_1.expand(n, -1)

    def joint_log_ratio(self, trace: Trace, theta_1: Tensor) -> Tensor:
        r"""The joint log likelihood ratio of each simulation in ``trace``, ``(N,)``:

        .. math::
            \log r(x, z \mid \theta, \theta_1) = \log p(x, z \mid \theta)
              - \log p(x, z \mid \theta_1),

        the recorded latents and ``x`` re-scored at ``theta_1`` (the program conditioned on
        them, one batched pass). Averaged over :math:`z \sim p(z \mid x, \theta_1)` it is
        the marginal ratio :math:`p(x\mid\theta)/p(x\mid\theta_1)`; its gradient in
        :math:`\theta` is the joint score (Brehmer et al., PNAS 2020).

        Args:
            trace: From this simulator's :meth:`trace`.
            theta_1: One row ``(D,)`` for every simulation, or ``(N, D)``, one per simulation.
        """
        if not isinstance(trace, Trace) or trace.joint_log_prob is None:
            from .errors import SimulationError

            raise SimulationError(
                "joint_log_ratio needs a Trace from this simulator's trace(theta, seed=...)."
            )
        theta_1 = self._rows(theta_1, trace.theta)
        names = trace.random_sites if trace.random_sites is not None else trace.latents
        latents = {k: trace.latents[k] for k in names}
        with torch.no_grad():
            other = self.log_prob(theta_1, latents, trace.x)
        return trace.joint_log_prob - other

    def ratio_simulations(
        self, theta: Tensor, theta_1: Tensor, seed: int | None = None
    ) -> RatioSimulations:
        r"""Simulate at each row of ``theta`` (:math:`\theta_i`, ``(N, D)``) and as often at
        ``theta_1`` (one row ``(D,)``, or ``(N, D)`` rows drawn from the prior independently
        of ``theta``: the marginal reference), seeded by ``seed``: the :class:`RatioSimulations`
        of these ``2N`` simulations (:func:`simgen.simulate` banks the same quantities).
        """
        theta = self._check_theta(theta)
        reference = self._rows(theta_1, theta)
        generator = None if seed is None else torch.Generator().manual_seed(int(seed))
        at_theta = self.trace(theta, generator=generator)
        at_reference = self.trace(reference.clone(), generator=generator)
        log_r_own = self.joint_log_ratio(at_theta, reference)
        # Rows from θ₁: log p(x, z | θ_i) - log p(x, z | θ₁) = -(log r(x, z | θ₁, θ_i)).
        log_r_ref = -self.joint_log_ratio(at_reference, theta)
        return RatioSimulations(
            theta=torch.cat([theta, theta]),
            x=torch.cat([at_theta.x, at_reference.x]),
            from_reference=torch.arange(2 * len(theta)) >= len(theta),
            joint_log_ratio=torch.cat([log_r_own, log_r_ref]),
            joint_score=torch.cat([at_theta.joint_score, torch.zeros_like(theta)]),
            theta_1=torch.cat([reference, reference]),
        )

    @_one_thread_at_a_time
    def marginal_log_prob(
        self, theta: Tensor, x: Tensor, num_particles: int = 1000, seed: int = 0
    ) -> Tensor:
        r"""Importance-sampling estimate of :math:`\log p(x \mid \theta)`, shape ``(N,)``.

        Latents are drawn from the program itself with :math:`\theta` and :math:`x`
        conditioned, so the weight of particle :math:`k` is the density of the observed
        site, :math:`\log p(x \mid z^{(k)})`, and

        .. math::
            \log \hat p(x \mid \theta) = \operatorname{logsumexp}_k \log p(x \mid z^{(k)},
            \theta) - \log K,

        unbiased in :math:`\hat p` (not in its log). Good when :math:`x` is not too
        informative about :math:`z`; needs more particles otherwise.
        """
        import pyro.poutine as poutine

        theta = self._check_theta(theta)
        x = torch.as_tensor(x, dtype=theta.dtype)
        n, k = theta.shape[0], int(num_particles)
        theta_k = theta.repeat(k, 1)
        x_k = x.repeat(k, *([1] * (x.ndim - 1)))
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            tr = poutine.trace(
                poutine.condition(self.model, data={self.theta_site: theta_k, self.x_site: x_k})
            ).get_trace(n * k)
            tr.compute_log_prob(site_filter=lambda name, _: name == self.x_site)
            log_w = self._per_simulation(self.x_site, tr.nodes[self.x_site], n * k)
        return torch.logsumexp(log_w.reshape(k, n), 0) - torch.log(torch.tensor(float(k)))


def from_pyro(
    model: Callable[[int], object],
    theta_site: str = "theta",
    x_site: str = "x",
    plate_name: str = "sims",
) -> PyroSimulator:
    """Wrap a pyro program as a :class:`PyroSimulator` (see there for the conventions)."""
    return PyroSimulator(model, theta_site=theta_site, x_site=x_site, plate_name=plate_name)
