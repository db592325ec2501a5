"""Fault battery: a campaign cannot stall (hanging, crashing and flaky simulators).

A simulator here misbehaves for one chosen θ (the row ``TARGET`` of the seeded prior draws):
it hangs until the test releases it, calls ``os.abort()``, or raises. The rows around it
must come out exactly as in a serial run where that θ merely raises (same bisection, same
generators), and the θ itself is recorded as failed with its reason and tries. Cases with
worker processes are ``slow``.
"""

from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest
import torch
from fault_helpers import Bad, Case, noisy, same

import simgen
from simgen.bank import Bank
from simgen.errors import ConfigError, SimulationStopped, SimulationWarning
from simgen.simulate import read_bank

PRIOR = simgen.BoxUniform(-torch.ones(2), torch.ones(2))
N, SEED, BATCH, TARGET = 120, 3, 20, 47
CASE = Case(PRIOR, N, SEED, BATCH, TARGET)


class Flaky:
    """``noisy``, but a call with any row it has not seen before fails (and marks its rows
    seen, in files under ``folder`` so that every process shares them)."""

    def __init__(self, folder):
        self.folder = folder

    def __call__(self, theta, generator=None):
        keys = [self.folder / "_".join(f"{v:.8f}" for v in row.tolist()) for row in theta]
        new = [k for k in keys if not k.exists()]
        for k in new:
            k.touch()
        if new:
            raise OSError("transient failure")
        return noisy(theta, generator)


# -- fast: in this process -----------------------------------------------------------------
def test_retries_recover_a_flaky_simulator_with_the_serial_result(tmp_path):
    expected = simgen.simulate(noisy, PRIOR, N, seed=SEED, batch_size=BATCH)
    (tmp_path / "a").mkdir()
    recovered = simgen.simulate(
        Flaky(tmp_path / "a"), PRIOR, N, seed=SEED, batch_size=BATCH, retries=1
    )
    assert same(recovered, expected) and recovered.errors == []
    # Without retries the failing call is bisected, and its rows get other generators.
    (tmp_path / "b").mkdir()
    bisected = simgen.simulate(Flaky(tmp_path / "b"), PRIOR, N, seed=SEED, batch_size=BATCH)
    assert torch.equal(bisected.theta, expected.theta)
    assert not torch.equal(bisected.x, expected.x)


def test_a_row_that_always_raises_is_tried_retries_plus_one_times(tmp_path):
    sim = Bad("raise", CASE.target(), tmp_path)
    with pytest.warns(SimulationWarning, match="1 raised"):
        result = simgen.simulate(sim, PRIOR, N, seed=SEED, batch_size=BATCH, retries=2)
    assert result.failed_reason == ["raised"] and result.failed_attempts.tolist() == [3]
    assert torch.equal(result.failed_theta, CASE.target()[None])
    # 3 tries of the batch, then 3 of each part holding the row, down to the row itself.
    sizes = [int(n) for n in sim.log.read_text().split()]
    assert sizes == [20] * 3 + [10] * 3 + [5] * 3 + [3] * 3 + [1] * 3


def test_bank_records_reason_and_attempts(tmp_path):
    path = tmp_path / "b.zarr"
    sim = Bad("raise", CASE.target(), tmp_path)
    with pytest.warns(SimulationWarning):
        simgen.simulate(sim, PRIOR, N, seed=SEED, batch_size=BATCH, bank=path, retries=1)
    with pytest.warns(SimulationWarning):
        banked = read_bank(path)
    assert banked.failed_reason == ["raised"] and banked.failed_attempts.tolist() == [2]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"timeout": 0}, "timeout must be a positive number"),
        ({"timeout": -1.0}, "timeout must be a positive number"),
        ({"timeout": float("nan")}, "timeout must be a positive number"),
        ({"timeout": "5"}, "timeout must be a positive number"),
        ({"timeout": True}, "timeout must be a positive number"),
        ({"retries": -1}, "retries must be between 0"),
        ({"retries": 1.5}, "retries must be a whole number"),
        ({"workers": 0}, "workers must be between 1"),
        ({"workers": 2, "executor": ThreadPoolExecutor(1)}, "not both"),
        ({"workers": 2, "simulator": lambda t: t}, "must be picklable"),
    ],
)
def test_bad_worker_options_are_clear_errors(kwargs, match):
    simulator = kwargs.pop("simulator", noisy)
    with pytest.raises(ConfigError, match=match):
        simgen.simulate(simulator, PRIOR, 10, seed=0, **kwargs)


def test_a_call_past_the_timeout_on_a_passed_pool_stops_the_run_naming_rows(tmp_path):
    sim = Bad("hang", CASE.target(), tmp_path)
    path = tmp_path / "b.zarr"
    pool = ThreadPoolExecutor(2)
    try:
        with pytest.raises(SimulationStopped, match="rows 40 to 59 \\(batch 2\\)") as info:
            simgen.simulate(
                sim, PRIOR, N, seed=SEED, batch_size=BATCH, bank=path, executor=pool, timeout=0.5
            )
    finally:
        (tmp_path / "release").touch()
        pool.shutdown(wait=True)
    assert "timeout=0.5" in str(info.value) and "workers=N" in str(info.value)
    banked = read_bank(path)  # the batches that finished, exactly as a serial run has them
    reference = simgen.simulate(noisy, PRIOR, N, seed=SEED, batch_size=BATCH)
    assert len(banked.theta) >= 2 * BATCH and sim.calls() == 1
    rows = torch.cat([torch.arange(b * BATCH, (b + 1) * BATCH) for b in range(6) if b != 2])
    assert torch.equal(banked.x, reference.x[rows[: len(banked.x)]])


# -- slow: worker processes ----------------------------------------------------------------
@pytest.mark.slow
def test_a_hanging_theta_is_recorded_as_timeout_and_the_resume_does_not_hang(tmp_path):
    expected = CASE.serial_with_raise(tmp_path)
    sim = Bad("hang", CASE.target(), tmp_path)
    path = tmp_path / "b.zarr"
    run = dict(seed=SEED, batch_size=BATCH, bank=path, workers=2, timeout=1.0)
    try:
        with pytest.warns(SimulationWarning, match="1 ran past the timeout"):
            result = simgen.simulate(sim, PRIOR, N, **run)
        assert same(result, expected)
        assert result.failed_reason == ["timeout"] and result.failed_attempts.tolist() == [1]
        calls = sim.calls()
        with pytest.warns(SimulationWarning):  # the resume keeps the row failed
            again = simgen.simulate(sim, PRIOR, N, **run)
        assert same(again, expected) and sim.calls() == calls
    finally:
        (tmp_path / "release").touch()
    # Asked to, the resume simulates that batch again; now it returns, as noisy does.
    retried = simgen.simulate(sim, PRIOR, N, retry_failed=True, **run)
    assert same(retried, simgen.simulate(noisy, PRIOR, N, seed=SEED, batch_size=BATCH))


@pytest.mark.slow
def test_the_default_timeout_worker_stops_a_hang_without_workers(tmp_path):
    sim = Bad("hang", CASE.target(), tmp_path)
    try:
        with pytest.warns(SimulationWarning):
            result = simgen.simulate(sim, PRIOR, N, seed=SEED, batch_size=BATCH, timeout=1.0)
    finally:
        (tmp_path / "release").touch()
    assert same(result, CASE.serial_with_raise(tmp_path)) and result.failed_reason == ["timeout"]


@pytest.mark.slow
def test_an_aborting_theta_is_recorded_as_crash_and_the_run_goes_on(tmp_path):
    expected = CASE.serial_with_raise(tmp_path)
    sim = Bad("abort", CASE.target(), tmp_path)
    path = tmp_path / "b.zarr"
    run = dict(seed=SEED, batch_size=BATCH, bank=path, workers=2, retries=1)
    with pytest.warns(SimulationWarning, match="1 crashed"):
        result = simgen.simulate(sim, PRIOR, N, **run)
    assert same(result, expected)
    assert result.failed_reason == ["crash"] and result.failed_attempts.tolist() == [2]
    calls = sim.calls()
    with pytest.warns(SimulationWarning):
        again = simgen.simulate(sim, PRIOR, N, **run)
    assert same(again, expected) and sim.calls() == calls


@pytest.mark.slow
def test_an_abort_on_a_passed_process_pool_stops_the_run_with_the_bank_intact(tmp_path):
    sim = Bad("abort", CASE.target(), tmp_path)
    path = tmp_path / "b.zarr"
    stop = pytest.raises(SimulationStopped, match="rows 40 to 59 \\(batch 2\\)")
    with ProcessPoolExecutor(1) as pool, stop as info:  # one worker: the breaking batch is known
        simgen.simulate(sim, PRIOR, N, seed=SEED, batch_size=BATCH, bank=path, executor=pool)
    assert "workers=N" in str(info.value)
    # The bank is intact: whatever the pool delivered before it broke is saved exactly.
    # (A broken pool may also fail calls that had finished but not been delivered.)
    _, outputs, status, _ = Bank.reader(path).read()
    reference = simgen.simulate(noisy, PRIOR, N, seed=SEED, batch_size=BATCH)
    saved = torch.from_numpy(status == 0)
    assert (status[40:60] == -1).all()
    if saved.any():
        assert torch.equal(outputs["x"][saved], reference.x[saved])


@pytest.mark.slow
def test_worker_count_does_not_change_the_result(tmp_path):
    expected = simgen.simulate(noisy, PRIOR, N, seed=SEED, batch_size=BATCH)
    results = []
    for workers in (1, 2):
        folder = tmp_path / f"w{workers}"
        folder.mkdir()
        results.append(
            simgen.simulate(
                Flaky(folder), PRIOR, N, seed=SEED, batch_size=BATCH, workers=workers, retries=1
            )
        )
    assert same(results[0], results[1]) and same(results[0], expected)
