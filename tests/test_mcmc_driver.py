"""run_mcmc drives any Sampler through the same protocol: init, step, and the warm-up hooks."""

from __future__ import annotations

import inspect

import pytest
import torch

from simgen.errors import ConfigError
from simgen.mcmc import (
    METHODS,
    SAMPLERS,
    HamiltonianMonteCarlo,
    MCMCConfig,
    Sampler,
    State,
    StepInfo,
    driver,
    run_mcmc,
)


def standard_normal(u: torch.Tensor) -> torch.Tensor:
    return -0.5 * (u**2).sum(-1)


class ExactGaussian(Sampler):
    """Independence sampler whose proposal is the target N(0, I): every move is accepted and
    every state is an exact draw. It records the hooks the driver calls."""

    made: list[Sampler] = []

    def __init__(self, potential):
        super().__init__(potential)
        self.calls: list[tuple[str, tuple[int, ...] | None]] = []
        self.made.append(self)

    def init(self, position: torch.Tensor) -> State:
        self.calls.append(("init", tuple(position.shape)))
        return State(position, self.potential(position))

    def step(self, state: State, generator: torch.Generator | None) -> tuple[State, StepInfo]:
        shape = state.position.shape
        new = torch.randn(shape, generator=generator)
        return State(new, self.potential(new)), StepInfo(acceptance_rate=torch.ones(shape[:-1]))

    def adapt(self, positions: torch.Tensor) -> None:
        self.calls.append(("adapt", tuple(positions.shape)))

    def tune(self, info: StepInfo) -> None:
        self.calls.append(("tune", None))

    def end_warmup(self) -> None:
        self.calls.append(("end_warmup", None))

    def report(self) -> dict:
        return {"recorded": len(self.calls)}


class Plain(Sampler):
    """A kernel that defines only init and step: the hooks' no-op defaults must do."""

    def init(self, position: torch.Tensor) -> State:
        return State(position, self.potential(position))

    def step(self, state: State, generator: torch.Generator | None) -> tuple[State, StepInfo]:
        new = torch.randn(state.position.shape, generator=generator)
        return State(new, self.potential(new)), StepInfo(torch.ones(new.shape[:-1]))


@pytest.fixture
def registered(monkeypatch) -> list[Sampler]:
    """The test kernels under the method names "exact" and "plain", for one test; returns
    the list the kernels the driver builds are appended to."""
    made: list[Sampler] = []
    for name, cls in (("exact", ExactGaussian), ("plain", Plain)):
        monkeypatch.setitem(SAMPLERS, name, cls)
    monkeypatch.setattr("simgen.mcmc.config.METHODS", (*METHODS, "exact", "plain"))
    monkeypatch.setattr(ExactGaussian, "made", made, raising=False)
    return made


def test_driver_calls_every_hook_in_order(registered) -> None:
    result = run_mcmc(standard_normal, torch.zeros(6, 3, 2), 50, warmup=40, method="exact",
                      seed=0)  # fmt: skip
    calls = registered[-1].calls
    names = [c[0] for c in calls]
    assert names[0] == "init" and calls[0][1] == (6, 3, 2)
    assert names.count("tune") == 40 and names[-1] == "end_warmup"
    # Ten adaptation windows, each the recent half of warm-up: (chains, T, *batch, D).
    adapts = [shape for name, shape in calls if name == "adapt"]
    assert len(adapts) == 10 and adapts[-1] == (6, 20, 3, 2)
    assert result.extra["recorded"] == len(calls)
    assert result.samples.shape == (6, 50, 3, 2) and result.acceptance_rate == 1.0
    assert "divergences" not in result.extra  # this kernel reports none
    # Exact draws: 6 x 50 x 3 = 900 per coordinate, s.e. of the mean 0.033; tolerance 0.15.
    assert result.samples.mean().abs() < 0.15 and result.rhat < 1.1


def test_kernel_without_hooks_runs_and_thins(registered) -> None:
    result = run_mcmc(standard_normal, torch.zeros(4, 1), 30, warmup=10, thin=3, method="plain",
                      seed=0)  # fmt: skip
    assert result.samples.shape == (4, 30, 1) and result.thin == 3


def test_tune_only_share_stops_adaptation_at_the_end_of_warmup(monkeypatch) -> None:
    """HMC tunes its step size alone in the last 20 % of warm-up (no mass-matrix change)."""
    steps: list[int] = []
    original = HamiltonianMonteCarlo.adapt
    counter = {"tune": 0}

    def adapt(self, positions):
        steps.append(counter["tune"])
        original(self, positions)

    def tune(self, info, _tune=HamiltonianMonteCarlo.tune):
        counter["tune"] += 1
        _tune(self, info)

    monkeypatch.setattr(HamiltonianMonteCarlo, "adapt", adapt)
    monkeypatch.setattr(HamiltonianMonteCarlo, "tune", tune)
    run_mcmc(standard_normal, torch.randn(4, 2), 5, warmup=50, method="hmc", seed=0, warn=False)
    assert steps and max(steps) <= 40  # adaptation windows end at 80 % of 50 steps


def test_one_registry_one_default() -> None:
    assert tuple(SAMPLERS) == METHODS
    assert all(issubclass(cls, Sampler) for cls in SAMPLERS.values())
    default = inspect.signature(run_mcmc).parameters["method"].default
    assert default == MCMCConfig().method == "rwm"


def test_bad_sampler_options_and_thin_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="sampler_options"):
        run_mcmc(standard_normal, torch.zeros(4, 2), 10, method="rwm",
                 sampler_options={"width": 1.0})  # fmt: skip
    with pytest.raises(ConfigError, match="sampler_options"):
        run_mcmc(standard_normal, torch.zeros(2, 2), 10, method="nuts",
                 sampler_options={"tree_depth": 3})  # fmt: skip
    with pytest.raises(ConfigError, match="thin"):
        run_mcmc(standard_normal, torch.zeros(4, 2), 10, thin=None)
    with pytest.raises(ConfigError, match="num_draws"):
        run_mcmc(standard_normal, torch.zeros(4, 2), 0)


def test_the_driver_module_has_no_hasattr_probes() -> None:
    assert "hasattr" not in inspect.getsource(driver)
