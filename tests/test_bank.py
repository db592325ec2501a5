"""Simulation banks: every finished batch is on disk; an interrupted run resumes exactly."""

import warnings

import pytest
import torch

import simgen
from simgen.errors import SimulationError, SimulationInterrupted
from simgen.simulate import read_bank

PRIOR = simgen.BoxUniform(-torch.ones(2), torch.ones(2))


def noisy(theta, generator=None):
    return theta + 0.1 * torch.randn(theta.shape, generator=generator)


class InterruptAt:
    """A simulator that presses Ctrl-C on its ``stop``-th call, counting calls."""

    def __init__(self, stop=None):
        self.stop, self.calls = stop, 0

    def __call__(self, theta, generator=None):
        self.calls += 1
        if self.calls == self.stop:
            raise KeyboardInterrupt
        return noisy(theta, generator)


def test_bank_gives_the_in_memory_result(tmp_path):
    theta, x = simgen.simulate(noisy, PRIOR, 250, seed=3, batch_size=60)
    banked = simgen.simulate(noisy, PRIOR, 250, seed=3, batch_size=60, bank=tmp_path / "b.zarr")
    assert torch.equal(banked.theta, theta) and torch.equal(banked.x, x)
    again = read_bank(tmp_path / "b.zarr")
    assert torch.equal(again.theta, theta) and torch.equal(again.x, x)


def test_interrupted_run_resumes_exactly(tmp_path):
    path = tmp_path / "run.zarr"
    expected = simgen.simulate(noisy, PRIOR, 500, seed=1, batch_size=100)
    with pytest.raises(SimulationInterrupted, match="3 of 5 batches are saved") as info:
        simgen.simulate(InterruptAt(stop=4), PRIOR, 500, seed=1, batch_size=100, bank=path)
    assert isinstance(info.value, KeyboardInterrupt)  # Ctrl-C still stops callers
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing failed, so no SimulationWarning
        partial = read_bank(path)
    assert torch.equal(partial.theta, expected.theta[:300])
    assert torch.equal(partial.x, expected.x[:300])

    resumed_sim = InterruptAt()
    resumed = simgen.simulate(resumed_sim, PRIOR, 500, seed=1, batch_size=100, bank=path)
    assert resumed_sim.calls == 2  # only the two missing batches ran
    assert torch.equal(resumed.theta, expected.theta) and torch.equal(resumed.x, expected.x)
    finished = InterruptAt()
    simgen.simulate(finished, PRIOR, 500, seed=1, batch_size=100, bank=path)
    assert finished.calls == 0  # a complete bank is only read


def test_interrupt_without_bank_keeps_the_finished_batches():
    expected = simgen.simulate(noisy, PRIOR, 400, seed=2, batch_size=100)
    with pytest.raises(SimulationInterrupted, match="exc.partial") as info:
        simgen.simulate(InterruptAt(stop=3), PRIOR, 400, seed=2, batch_size=100)
    theta, x = info.value.partial
    assert torch.equal(theta, expected.theta[:200]) and torch.equal(x, expected.x[:200])


def test_failures_are_recorded_in_the_bank(tmp_path):
    def flaky(theta, generator=None):
        if (theta[:, 0] > 0.8).any():
            raise RuntimeError("diverged")
        x = noisy(theta, generator)
        x[theta[:, 1] > 0.8] = float("nan")
        return x

    with pytest.warns(simgen.errors.SimulationWarning):
        memory = simgen.simulate(flaky, PRIOR, 300, seed=0, batch_size=50)
    with pytest.warns(simgen.errors.SimulationWarning):
        banked = simgen.simulate(flaky, PRIOR, 300, seed=0, batch_size=50, bank=tmp_path / "f")
    assert memory.num_raised > 0 and memory.num_nonfinite > 0
    assert (banked.num_raised, banked.num_nonfinite) == (memory.num_raised, memory.num_nonfinite)
    assert torch.equal(banked.failed_theta, memory.failed_theta)
    assert torch.equal(banked.x, memory.x)
    assert banked.errors == memory.errors == ["RuntimeError: diverged"]


def test_resuming_another_run_or_a_foreign_path_is_refused(tmp_path):
    path = tmp_path / "b.zarr"
    simgen.simulate(noisy, PRIOR, 100, seed=0, batch_size=50, bank=path)
    for kwargs in ({"seed": 1, "batch_size": 50}, {"seed": 0, "batch_size": 25}):
        with pytest.raises(SimulationError, match="made by another run"):
            simgen.simulate(noisy, PRIOR, 100, bank=path, **kwargs)
    with pytest.raises(SimulationError, match="made by another run"):
        simgen.simulate(noisy, PRIOR, 120, seed=0, batch_size=50, bank=path)
    foreign = tmp_path / "notes.txt"
    foreign.write_text("hello")
    with pytest.raises(SimulationError, match="not a zarr simulation bank"):
        simgen.simulate(noisy, PRIOR, 100, seed=0, bank=foreign)
    with pytest.raises(SimulationError, match="No simulation bank"):
        read_bank(tmp_path / "missing.zarr")


def test_executors_give_the_serial_result(tmp_path):
    """A thread pool and a Dask cluster run the batches; seeding makes them agree exactly."""
    from concurrent.futures import ThreadPoolExecutor

    from dask.distributed import Client, LocalCluster

    expected = simgen.simulate(noisy, PRIOR, 450, seed=5, batch_size=40)
    with ThreadPoolExecutor(3) as pool:
        pooled = simgen.simulate(noisy, PRIOR, 450, seed=5, batch_size=40, executor=pool)
    assert torch.equal(pooled.theta, expected.theta) and torch.equal(pooled.x, expected.x)
    with (
        LocalCluster(n_workers=2, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        dasked = simgen.simulate(
            noisy, PRIOR, 450, seed=5, batch_size=40, executor=client, bank=tmp_path / "d.zarr"
        )
    assert torch.equal(dasked.theta, expected.theta) and torch.equal(dasked.x, expected.x)


def test_local_processes_give_the_serial_result():
    from concurrent.futures import ProcessPoolExecutor

    from simulators import two_moons

    expected = simgen.simulate(two_moons.simulator, two_moons.prior, 300, seed=4, batch_size=50)
    with ProcessPoolExecutor(2) as pool:
        result = simgen.simulate(
            two_moons.simulator, two_moons.prior, 300, seed=4, batch_size=50, executor=pool
        )
    assert torch.equal(result.x, expected.x)
