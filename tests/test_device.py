"""Device-correctness of every posterior path, checked on a CPU-only machine.

The bug class: a tensor that stays on the CPU (the prior's bounds, its support bijection,
an x or θ that was not moved, a tensor made without ``device=``) meets the estimator's CUDA
tensors in one op, and that op raises. On a CPU-only machine no op can raise that way, so
these tests **simulate a second device** with :class:`SimulatedDevice`, a
:class:`~torch.overrides.TorchFunctionMode` that gives every tensor a location:

* a tensor that exists before the call is *home* if it is float64 and *off* if it is
  float32: the posterior is moved with ``posterior.to(torch.float64)`` (the same
  ``nn.Module.to`` a device move takes), so its parameters and buffers are home, while the
  caller's θ and x (float32) and any prior term left where it was built are off;
* a tensor made inside the call is off if a factory made it without ``device=`` (on a GPU
  it would be on the CPU), home if made with ``device=`` (float64 is the default dtype
  inside the mode, so ``torch.randn(shape, device=d)`` lands home, as it does on a GPU);
  ``.to(device, dtype)`` lands where its dtype says; ``.cpu()`` is off; any other op's
  output is off if any input is;
* an op (other than a copy) whose non-scalar inputs are both home and off is recorded:
  that is exactly an op that raises "Expected all tensors to be on the same device" on a
  GPU. 0-dim tensors are exempt, as CUDA exempts CPU scalars.

Every NPE family, NLE (with log-scale columns) and NRE run ``sample``, ``sample_batched``,
``log_prob``, ``log_prob_batched`` and ``map`` under the mode and must record nothing. The
control test disables the prior's placement (the code path this module exists for) and
checks that the same audit then records mixed ops, so a pass means something. A structural
check adds that every tensor of the estimator, the placed prior and its bijection shares one
device and dtype. ``load`` is checked on a file whose storages claim CUDA (crafted with
torch's own location tags), and ``benchmarks.gpu_smoke`` for its no-GPU exit.
"""

from __future__ import annotations

import collections
import os
import traceback
import warnings

import pytest
import torch
from torch.distributions import Distribution, Gamma, Independent, MultivariateNormal, Normal
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakTensorKeyDictionary

import simgen
from simgen import NLE, NPE, NRE, BoxUniform
from simgen.devices import Placement, home
from simgen.mcmc.potentials import likelihood_potential
from simgen.priors import RelocatedPrior, in_support, support_transform

HOME, OFF = "home", "off"
_MOVES = {torch.Tensor.to, torch.Tensor.double, torch.Tensor.float, torch.Tensor.type}
_COPIES = _MOVES | {torch.Tensor.cpu, torch.Tensor.cuda, torch.Tensor.copy_}


class SimulatedDevice(TorchFunctionMode):
    """Records ops that would mix two devices (module docstring); ``mixed`` counts them by
    op and ``where`` keeps the first stack of each."""

    def __init__(self) -> None:
        super().__init__()
        self.tags = WeakTensorKeyDictionary()
        self.mixed: collections.Counter[str] = collections.Counter()
        self.where: dict[str, str] = {}

    def __enter__(self):
        self._default = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        return super().__enter__()

    def __exit__(self, *exc):
        torch.set_default_dtype(self._default)
        return super().__exit__(*exc)

    def _place(self, tensor: torch.Tensor) -> str | None:
        if tensor in self.tags:
            return self.tags[tensor]
        if tensor.is_floating_point():
            return HOME if tensor.dtype == torch.float64 else OFF
        return None  # integer and boolean tensors made outside the call: unknown

    def _tag_of(self, func, args, kwargs, places: set, out: torch.Tensor) -> str | None:
        if not [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]:
            dtype = kwargs.get("dtype")
            if kwargs.get("device") is None:
                return OFF
            if dtype is not None and dtype.is_floating_point:
                return HOME if dtype == torch.float64 else OFF
            return HOME
        if func is torch.Tensor.cpu:
            return OFF
        if func in _MOVES:
            targets = (torch.device, str, torch.Tensor)
            moved = "device" in kwargs or any(isinstance(a, targets) for a in args[1:])
            if not moved:
                return self._place(args[0])
            if out.is_floating_point():
                return HOME if out.dtype == torch.float64 else OFF
            return HOME
        return OFF if OFF in places else HOME if HOME in places else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        places = {self._place(t) for t in inputs if t.ndim > 0} - {None}
        if func not in _COPIES and len(places) > 1:
            name = getattr(func, "__qualname__", str(func))
            self.mixed[name] += 1
            self.where.setdefault(name, "".join(traceback.format_stack(limit=10)[:-1]))
        outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        if outputs:
            tag = self._tag_of(func, args, kwargs, places, outputs[0])
            if tag is not None:
                for tensor in outputs:
                    self.tags[tensor] = tag
        return out

    def report(self) -> str:
        return "\n".join(f"{name} x{n}:\n{self.where[name]}" for name, n in self.mixed.items())


class _ShiftedNormal(Distribution):
    """A prior simgen does not know (no spec): it must be relocated, not rebuilt."""

    arg_constraints: dict = {}

    def __init__(self, loc: torch.Tensor):
        self.loc = loc
        super().__init__(torch.Size(), loc.shape, validate_args=False)

    @property
    def support(self):
        return torch.distributions.constraints.real_vector

    def sample(self, sample_shape=()):
        return self.loc + torch.randn(*sample_shape, *self.loc.shape, dtype=self.loc.dtype)

    def log_prob(self, value):
        return Normal(self.loc, 1.0).log_prob(value).sum(-1)


PRIORS = {
    "box": lambda: BoxUniform(-2 * torch.ones(2), 2 * torch.ones(2)),
    "mvn": lambda: MultivariateNormal(torch.zeros(2), 0.5 * torch.eye(2)),
    "gamma": lambda: Independent(Gamma(2 * torch.ones(2), torch.ones(2)), 1),
    "unknown": lambda: _ShiftedNormal(torch.zeros(2)),
}
NPE_FAMILIES = ["nsf", "maf", "realnvp", "flow_matching", "diffusion", "consistency", "vae", "gan"]
NPE_FAMILIES += ["joint_transformer"]
SAMPLE_ONLY = {"consistency", "gan"}
#: Small networks and few solver steps: the audit needs every op once, not accuracy.
FAST_OPTIONS = {
    "nsf": {"transforms": 2, "hidden_features": (16,)},
    "flow_matching": {"steps": 3, "repeats": 1},
    "diffusion": {"steps": 3, "repeats": 1},
    "consistency": {"steps": 3},
    "vae": {"importance_samples": 4},
    "joint_transformer": {"width": 16, "layers": 1, "heads": 2, "steps": 3},
}


def _data(prior: Distribution, n: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    theta = prior.sample((n,))
    x = theta + 0.3 * torch.randn(n, 2, generator=torch.Generator().manual_seed(1))
    return theta, x.abs() + 0.1  # positive, so that NLE's log_x columns are valid


def _train(method: str, prior: Distribution, family: str = "nsf"):
    theta, x = _data(prior)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "nle":
            nle = NLE(prior, log_x=True, transforms=2, hidden_features=(16,))
            return nle.fit(theta, x, max_epochs=1), x
        if method == "nre":
            return NRE(prior).fit(theta, x, max_epochs=1), x
        npe = NPE(prior, estimator=family, **FAST_OPTIONS.get(family, {}))
        return npe.fit(theta, x, max_epochs=1), x


def _exercise(posterior, x: torch.Tensor, density: bool, mcmc: bool) -> list[torch.Tensor]:
    """Every posterior path once, on the caller's float32 x; returns what they return."""
    options = {"warmup": 4, "num_chains": 4, "thin": 1} if mcmc else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = [posterior.sample((8,), x=x[0], **options)]
        out.append(posterior.sample_batched((4,), x=x[:3], **options))
        if density:
            out.append(posterior.log_prob(out[0], x=x[0]))
            out.append(posterior.log_prob_batched(out[1], x=x[:3]))
            out.append(posterior.map(x=x[0], num_init=16, num_iter=2))
    return out


def _audit(posterior, x, density=True, mcmc=False) -> SimulatedDevice:
    posterior.to(torch.float64)
    with SimulatedDevice() as audit:
        outputs = _exercise(posterior, x, density, mcmc)
    assert not audit.mixed, "ops mixing the home device with another:\n" + audit.report()
    for value in outputs:
        assert value.dtype == torch.float64 and value.device == posterior.device
    return audit


@pytest.mark.parametrize("family", NPE_FAMILIES)
def test_npe_family_computes_on_its_estimators_device(family):
    posterior, x = _train("npe", PRIORS["box"](), family)
    _audit(posterior, x, density=family not in SAMPLE_ONLY)


@pytest.mark.parametrize("prior_name", sorted(PRIORS))
def test_npe_support_transform_follows_the_estimator_for_every_prior(prior_name):
    posterior, x = _train("npe", PRIORS[prior_name](), "maf")  # maf keeps "transform"
    _audit(posterior, x)


@pytest.mark.parametrize("method", ["nle", "nre"])
@pytest.mark.parametrize("prior_name", ["box", "unknown"])
def test_mcmc_posteriors_compute_on_their_estimators_device(method, prior_name):
    posterior, x = _train(method, PRIORS[prior_name]())
    _audit(posterior, x, mcmc=True)
    with SimulatedDevice() as audit:
        value = posterior.potential(torch.zeros(3, 1, 2), x[:1])  # float32 in, moved home
        if method == "nle":  # the surrogate simulator, seeded by a CPU generator
            generator = torch.Generator().manual_seed(0)
            drawn = posterior.likelihood(torch.zeros(3, 2), generator=generator)
            posterior.likelihood.log_prob(x[:3], torch.zeros(3, 2))
            assert drawn.dtype == torch.float64
    assert not audit.mixed, audit.report()
    assert value.dtype == torch.float64


def test_the_audit_records_a_prior_left_behind(monkeypatch):
    """Control: with the placement disabled (the prior and its bijection stay float32, as
    they stay on the CPU without it), the same audit records mixed ops."""
    posterior, x = _train("npe", PRIORS["box"]())
    monkeypatch.setattr("simgen.devices.prior_on", lambda prior, device, dtype: prior)
    posterior.to(torch.float64)
    with SimulatedDevice() as audit:
        _exercise(posterior, x, density=True, mcmc=False)
    assert audit.mixed, "the audit missed a prior left on another device"


def test_the_audit_records_an_input_left_behind():
    """Control: a θ that is not moved home meets the home network and is recorded."""
    posterior, _ = _train("npe", PRIORS["box"]())
    posterior.to(torch.float64)
    with SimulatedDevice() as audit:
        posterior.estimator(torch.zeros(3, 2))  # float32 context, never moved
    assert audit.mixed


def _tensors(obj: object, depth: int = 0) -> list[torch.Tensor]:
    """Tensors held by a distribution or transform, its parts and their parts."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if depth > 4 or not hasattr(obj, "__dict__"):
        return []
    found = []
    for value in vars(obj).values():
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if isinstance(item, (torch.Tensor, Distribution, torch.distributions.Transform)):
                found += _tensors(item, depth + 1)
    return found


@pytest.mark.parametrize("prior_name", ["box", "mvn", "gamma"])
def test_estimator_prior_and_bijection_share_one_home(prior_name):
    """Structural: after a move, the estimator's tensors, the placed prior's and its
    bijection's all have one dtype and device; moving back rebuilds the placement."""
    posterior, _ = _train("npe", PRIORS[prior_name]())
    for dtype in (torch.float64, torch.float32):
        posterior.to(dtype)
        placed = posterior.placed
        floating = [
            t
            for t in (
                *posterior.estimator.parameters(),
                *posterior.estimator.buffers(),
                *_tensors(placed.prior),
                *_tensors(placed.transform),
                placed.inside,
            )
            if t.is_floating_point()
        ]
        assert len(_tensors(placed.prior)) > 0
        assert {(t.device, t.dtype) for t in floating} == {(posterior.device, dtype)}


def test_a_potential_follows_its_network_after_it_moves():
    """A potential built before the move evaluates at the network's new home, and equals
    the float32 value there."""
    posterior, x = _train("nle", PRIORS["box"]())
    potential = likelihood_potential(posterior.estimator, posterior.prior, (2,))
    theta = torch.tensor([[[0.5, -0.5]], [[3.0, 0.0]]])  # the second outside the box
    before = potential(theta, x[:1])
    posterior.to(torch.float64)
    with SimulatedDevice() as audit:
        after = potential(theta, x[:1])
    assert not audit.mixed, audit.report()
    assert after.dtype == torch.float64
    assert torch.isinf(after[1, 0]) and after[1, 0] < 0
    torch.testing.assert_close(after.float(), before, rtol=1e-4, atol=1e-4)


def test_relocated_prior_evaluates_where_its_base_lives():
    base = PRIORS["unknown"]()
    relocated = RelocatedPrior(base, torch.device("cpu"), torch.float64)
    theta = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    logp = relocated.log_prob(theta)
    assert logp.dtype == torch.float64
    torch.testing.assert_close(logp.float(), base.log_prob(theta.detach().float()))
    (grad,) = torch.autograd.grad(logp.sum(), theta)  # the move is differentiable
    torch.testing.assert_close(grad, -theta.detach(), rtol=1e-5, atol=1e-5)
    assert relocated.sample((3,)).dtype == torch.float64
    assert bool(in_support(relocated, theta.detach()).all())
    transform = support_transform(relocated)
    u = torch.randn(4, 2, dtype=torch.float64)
    assert transform(u).dtype == torch.float64 and transform.inv(transform(u)).dtype == u.dtype


def test_a_known_prior_is_rebuilt_not_relocated():
    """Rebuilt priors compute on the device itself (no round trip) and keep their values."""
    prior = PRIORS["gamma"]()
    placed = Placement(prior).at(torch.device("cpu"), torch.float64)
    assert not isinstance(placed.prior, RelocatedPrior)
    theta = torch.rand(6, 2) + 0.5
    torch.testing.assert_close(
        placed.prior.log_prob(theta.double()).float(), prior.log_prob(theta), rtol=1e-6, atol=0
    )
    assert Placement(prior).at(torch.device("cpu"), torch.float32).prior is prior


def test_box_uniform_moves_and_keeps_its_bounds():
    prior = BoxUniform(torch.zeros(2), torch.ones(2)).to(dtype=torch.float64)
    assert prior.low.dtype == torch.float64 and prior.high.dtype == torch.float64
    assert support_transform(prior)(torch.zeros(1, 2, dtype=torch.float64)).dtype == torch.float64
    assert float(prior.log_prob(torch.tensor([[0.5, 0.5]], dtype=torch.float64))) == 0.0


def _save_as_if_on_cuda(posterior, path, monkeypatch) -> None:
    """Write the file torch writes for CUDA weights: every storage tagged "cuda:0"."""
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        posterior.save(path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("method", ["npe", "nle"])
def test_a_model_saved_on_cuda_loads_on_a_cpu_only_machine(method, tmp_path, monkeypatch):
    posterior, x = _train(method, PRIORS["box"]())
    path = tmp_path / "cuda.simgen"
    _save_as_if_on_cuda(posterior, path, monkeypatch)
    with pytest.raises(RuntimeError, match="CUDA"):  # control: the file really claims CUDA
        torch.load(path, weights_only=True)
    loaded = simgen.load(path, device="cpu")
    assert loaded.device == torch.device("cpu")
    theta = torch.tensor([[0.1, 0.2], [-0.5, 1.0]])
    torch.testing.assert_close(loaded.log_prob(theta, x=x[0]), posterior.log_prob(theta, x=x[0]))
    with pytest.raises(simgen.errors.ModelFileError, match="no CUDA device"):
        simgen.load(path, device="cuda")


def test_load_puts_the_posterior_where_it_is_asked(tmp_path):
    posterior, x = _train("npe", PRIORS["mvn"]())
    posterior.to(torch.float64)  # saved from float64 weights
    path = tmp_path / "m.simgen"
    posterior.save(path)
    loaded = simgen.load(path, device="cpu")
    assert home(loaded.estimator) == (torch.device("cpu"), torch.float32)
    sample = loaded.sample((5,), x=x[0], seed=0)
    assert sample.device == torch.device("cpu") and sample.dtype == torch.float32


def test_gpu_smoke_exits_cleanly_without_cuda(tmp_path, monkeypatch, capsys):
    from benchmarks import gpu_smoke

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_smoke.main(["--out", str(tmp_path)]) == 0
    message = capsys.readouterr().err
    assert "no CUDA device" in message and "nothing was measured" in message
    assert os.listdir(tmp_path) == []


def test_placing_the_prior_leaves_the_callers_random_state_alone():
    """The first call after a move builds the placement (it draws from the prior to learn
    where it lives); it must not advance torch's global generator, or a seeded draw would
    depend on whether it came first."""
    posterior, x = _train("npe", PRIORS["gamma"]())
    posterior.to(torch.float64)
    state = torch.get_rng_state()
    posterior.log_prob(torch.ones(3, 2), x=x[0])
    assert torch.equal(state, torch.get_rng_state())


def test_a_round_trip_through_another_home_changes_nothing():
    """Seeded draws and densities after float32 → float64 → float32 equal those before, and
    the float64 ones agree with them to float32 precision (maf: its ``"transform"`` density is
    deterministic, where nsf's ``"reject"`` normaliser is a Monte-Carlo count that a draw on
    the box's face can move by one at another precision)."""
    posterior, x = _train("npe", PRIORS["box"](), family="maf")
    theta = torch.tensor([[0.3, -0.2], [1.5, 1.9]])
    before = posterior.sample((6,), x=x[0], seed=3), posterior.log_prob(theta, x=x[0])
    wide = posterior.to(torch.float64).log_prob(theta, x=x[0])
    after = posterior.to(torch.float32)
    torch.testing.assert_close(after.sample((6,), x=x[0], seed=3), before[0])
    torch.testing.assert_close(after.log_prob(theta, x=x[0]), before[1])
    torch.testing.assert_close(wide.float(), before[1], rtol=1e-4, atol=1e-4)


def test_diagnostics_meet_posterior_samples_and_theta_on_one_device():
    """SBC, TARP, coverage and z-scores draw θ from the prior (CPU) and samples from the
    posterior (its device): the draws are brought to the CPU, so no op mixes the two."""
    from simgen import diagnostics

    posterior, _ = _train("npe", PRIORS["box"]())
    posterior.to(torch.float64)

    def simulator(theta):
        return theta + 0.3 * torch.randn_like(theta)

    options = {"num_simulations": 10, "num_samples": 20}
    with SimulatedDevice() as audit, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for check in (diagnostics.tarp, diagnostics.coverage, diagnostics.zscore_contraction):
            check(posterior, posterior.prior, simulator, **options)
    assert not audit.mixed, audit.report()


@pytest.mark.parametrize(("method", "family"), [("npe", "flow_matching"), ("nle", "maf")])
def test_iid_trial_sets_compute_on_the_estimators_device(method, family):
    """Trial sets: NPE composes per-trial scores with the placed prior's closed form
    (:mod:`simgen.estimators.compose`); NLE sums per-trial log-likelihoods."""
    posterior, x = _train(method, PRIORS["box"](), family)
    posterior.to(torch.float64)
    options = {"warmup": 3, "num_chains": 4, "thin": 1} if method == "nle" else {}
    with SimulatedDevice() as audit, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        samples = posterior.sample((5,), x=x[:4], **options)  # four trials
    assert not audit.mixed, audit.report()
    assert samples.shape == (5, 2) and samples.dtype == torch.float64


def test_an_ensemble_computes_on_its_members_device():
    """``Ensemble.to`` moves every member's estimator; the mixture's paths follow them."""
    from simgen.ensemble import Ensemble

    first, x = _train("npe", PRIORS["box"]())
    second, _ = _train("npe", PRIORS["box"](), "maf")
    _audit(Ensemble([first, second]), x)
