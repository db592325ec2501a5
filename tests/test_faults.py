"""Fault battery (fast part): banks that cannot lie, arguments that are checked.

Each test drives one fault a long campaign meets (a second writer, a killed creation, a
swapped simulator, a lost chunk, a bad argument) and checks that it ends in a clear
:class:`~simgen.errors.SimgenError` or in the exact uninterrupted result, never in silently
wrong data. Kills and races in separate processes are in ``test_faults_slow.py``.
"""

import json
import os
import socket

import numpy as np
import pytest
import torch
from fault_helpers import noisy

import simgen
from simgen.bank import Bank
from simgen.bank_lock import lock_path
from simgen.errors import (
    BankError,
    ConfigError,
    ShapeError,
    SimulationInterrupted,
    SimulationStopped,
    SimulationWarning,
)
from simgen.simulate import read_bank, run_simulator

PRIOR = simgen.BoxUniform(-torch.ones(2), torch.ones(2))


def other(theta, generator=None):
    return 2.0 * theta + torch.randn(theta.shape, generator=generator)


class Until:
    """Behaves like ``noisy`` for ``good`` calls, then does ``then`` (raise Ctrl-C, or
    return a changed output)."""

    def __init__(self, good, then="interrupt"):
        self.good, self.then, self.calls = good, then, 0

    def __call__(self, theta, generator=None):
        self.calls += 1
        x = noisy(theta, generator)
        if self.calls <= self.good:
            return x
        if self.then == "interrupt":
            raise KeyboardInterrupt
        if self.then == "wider":
            return torch.cat([x, x[:, :1]], 1)
        return x.to(torch.int64)


def _run(path, sim=noisy, n=400, **kwargs):
    return simgen.simulate(sim, PRIOR, n, **{"seed": 1, "batch_size": 100, "bank": path, **kwargs})


# -- 1. one writer, atomic creation ------------------------------------------------------
def test_a_second_writer_is_refused_and_told_who_holds_the_bank(tmp_path):
    path = tmp_path / "b.zarr"
    theta = torch.zeros(10, 2)
    fingerprint = {"seed": 5, "joint": False, "simulator": "x", "prior": None, "simgen": "0"}
    holder = Bank.open(path, theta, fingerprint, batch_size=5)
    try:
        for seed in (1, 5):  # the same run or another: both would interleave their writes
            with pytest.raises(BankError, match=f"another run: pid {os.getpid()} on host"):
                _run(path, seed=seed)
    finally:
        holder.close()
    with pytest.raises(BankError, match="made by another run"):
        _run(path)  # released: now it is refused for what it is, not for the lock


def test_a_lock_left_by_a_dead_process_here_is_stale_and_taken_over(tmp_path):
    path = tmp_path / "b.zarr"
    expected = simgen.simulate(noisy, PRIOR, 400, seed=1, batch_size=100)
    with pytest.raises(SimulationInterrupted):
        _run(path, sim=Until(2))
    owner = {"host": socket.gethostname(), "pid": 2**22 + 7, "started": 0, "released": False}
    lock_path(path).write_text(json.dumps(owner))  # what a kill -9 leaves behind
    with pytest.warns(SimulationWarning, match="is gone .* stale"):
        resumed = _run(path, sim=Until(10))
    assert torch.equal(resumed.x, expected.x)


def test_an_unreleased_lock_from_another_host_is_refused_with_the_way_out(tmp_path):
    path = tmp_path / "b.zarr"
    owner = {"host": "node-17.cluster", "pid": 4242, "started": 0, "released": False}
    lock_path(path).write_text(json.dumps(owner))
    with pytest.raises(BankError, match=r"pid 4242 on host 'node-17.cluster'.*delete"):
        _run(path)
    assert not path.exists()


def test_a_creation_that_fails_leaves_no_half_bank_and_the_rerun_creates_it(tmp_path, monkeypatch):
    path = tmp_path / "b.zarr"
    real_rename = os.rename

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "rename", full_disk)
    with pytest.raises(OSError, match="No space"):
        _run(path)
    monkeypatch.setattr(os, "rename", real_rename)
    assert not path.exists()
    (tmp_path / ".b.zarr.creating-deadbeef").mkdir()  # leftover of a creation killed earlier
    result = _run(path)
    assert len(result.theta) == 400
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.zarr.lock", "b.zarr"]


def test_an_empty_folder_at_the_path_becomes_the_bank(tmp_path):
    path = tmp_path / "b.zarr"
    path.mkdir()
    assert len(_run(path).theta) == 400


# -- 2. a bank knows what it holds -------------------------------------------------------
def test_resuming_with_another_simulator_is_refused(tmp_path):
    path = tmp_path / "b.zarr"
    with pytest.raises(SimulationInterrupted):
        _run(path, sim=Until(2))
    with pytest.raises(BankError, match="simulator"):
        _run(path, sim=other)


@pytest.mark.parametrize("then", ["wider", "int"])
def test_a_batch_of_another_shape_or_dtype_stops_the_run_and_keeps_the_rest(tmp_path, then):
    expected = simgen.simulate(noisy, PRIOR, 400, seed=1, batch_size=100)
    path = tmp_path / "b.zarr"
    with pytest.raises(SimulationStopped, match="Batch 2 returned x") as info:
        _run(path, sim=Until(2, then))
    assert "2 of 4 batches saved" in str(info.value)
    saved = read_bank(path)
    assert torch.equal(saved.x, expected.x[:200]) and saved.x.dtype == torch.float32
    with pytest.raises(SimulationStopped, match="Batch 2 returned x") as info:
        simgen.simulate(Until(2, then), PRIOR, 400, seed=1, batch_size=100)
    theta, x = info.value.partial  # without a bank, the finished batches come with the error
    assert torch.equal(x, expected.x[:200]) and torch.equal(theta, expected.theta[:200])


def test_a_first_batch_of_another_shape_raises_the_shape_error_itself():
    with pytest.raises(ShapeError, match="first dimension must be the batch"):
        simgen.simulate(lambda t: t[:1], PRIOR, 10, seed=0)


def test_float_arrays_are_filled_with_nan(tmp_path):
    _run(tmp_path / "b.zarr", n=100)
    group = Bank.reader(tmp_path / "b.zarr").group
    assert np.isnan(group["x"].fill_value) and np.isnan(group["theta"].fill_value)


def _chunk(path, name, batch):
    return path / name / "c" / str(batch) / "0"


@pytest.mark.parametrize("damage", ["delete", "corrupt"])
def test_a_lost_chunk_is_reported_by_batch_and_simulated_again(tmp_path, damage):
    path = tmp_path / "b.zarr"
    expected = _run(path, sim=Until(10))
    chunk = _chunk(path, "x", 1)
    assert chunk.exists()
    if damage == "delete":
        chunk.unlink()
    else:
        chunk.write_bytes(b"\x00garbage")
    with pytest.raises(BankError, match="batch 1: the x chunk is (missing|unreadable)"):
        read_bank(path)
    counting = Until(10)
    with pytest.warns(SimulationWarning, match="batch 1: the x chunk"):
        resumed = _run(path, sim=counting)
    assert counting.calls == 1  # only the damaged batch ran again
    assert torch.equal(resumed.x, expected.x) and torch.equal(resumed.theta, expected.theta)
    assert torch.equal(read_bank(path).x, expected.x)


def test_a_lost_theta_chunk_is_restored_from_the_run(tmp_path):
    path = tmp_path / "b.zarr"
    expected = _run(path)
    _chunk(path, "theta", 2).unlink()
    assert torch.equal(_run(path).theta, expected.theta)


def test_a_bank_without_a_fingerprint_is_read_but_not_resumed(tmp_path):
    import zarr

    path = tmp_path / "v1.zarr"
    group = zarr.open_group(str(path), mode="w")
    group.attrs.update({"format": "simgen-bank", "version": 1, "seed": 0, "batch_size": 2})
    group.create_array("theta", data=np.zeros((4, 2), np.float32), chunks=(2, 2))
    group.create_array("status", data=np.array([0, 0, -1, -1], np.int8), chunks=(2,))
    group.create_array("x", data=np.ones((4, 2), np.float32), chunks=(2, 2))
    assert len(read_bank(path).theta) == 2
    with pytest.raises(BankError, match="version-1 bank.*read_bank.*another path"):
        run_simulator(noisy, torch.zeros(4, 2), seed=0, batch_size=2, bank=path)


def test_a_foreign_zarr_store_is_refused(tmp_path):
    import zarr

    zarr.open_group(str(tmp_path / "z.zarr"), mode="w").create_array("a", shape=(2,), dtype="f4")
    with pytest.raises(BankError, match="without simgen bank attributes"):
        _run(tmp_path / "z.zarr")


def test_a_missing_folder_for_the_bank_is_named_before_any_work(tmp_path):
    calls = Until(10)
    with pytest.raises(BankError, match="does not exist"):
        _run(tmp_path / "no" / "such" / "b.zarr", sim=calls)
    assert calls.calls == 0


def test_a_full_disk_mid_run_keeps_the_saved_batches_and_resumes(tmp_path, monkeypatch):
    path = tmp_path / "b.zarr"
    expected = simgen.simulate(noisy, PRIOR, 400, seed=1, batch_size=100)
    write = Bank.write

    def fills_up(self, batch, *args):
        if batch == 2:
            raise OSError(28, "No space left on device")
        return write(self, batch, *args)

    monkeypatch.setattr(Bank, "write", fills_up)
    with pytest.raises(SimulationStopped, match="No space.*2 of 4 batches saved"):
        _run(path)
    monkeypatch.setattr(Bank, "write", write)
    assert torch.equal(_run(path).x, expected.x)


# -- 6. arguments ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"seed": -1}, "seed must be between 0"),
        ({"seed": 1.5}, "seed must be a whole number"),
        ({"seed": 2**70}, "seed must be between"),
        ({"seed": "0"}, "seed must be a whole number"),
        ({"num_simulations": 0}, "num_simulations must be between 1"),
        ({"num_simulations": -5}, "num_simulations must be between 1"),
        ({"num_simulations": 10.5}, "num_simulations must be a whole number"),
        ({"num_simulations": True}, "num_simulations must be a whole number"),
        ({"num_simulations": 10**12}, "num_simulations must be between"),
        ({"batch_size": 0}, "batch_size must be between 1"),
        ({"batch_size": 2.5}, "batch_size must be a whole number"),
        ({"batch_size": "10"}, "batch_size must be a whole number"),
        ({"executor": "spark"}, "executor must have submit.*or be .dask."),
        ({"bank": 3}, "bank must be a path"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    args = {"num_simulations": 10, "seed": 0, **kwargs}
    with pytest.raises(ConfigError, match=match):
        simgen.simulate(noisy, PRIOR, **args)


def test_whole_numbers_of_any_type_are_accepted():
    a = simgen.simulate(noisy, PRIOR, np.int64(20), seed=np.int32(3), batch_size=1e1)
    b = simgen.simulate(noisy, PRIOR, 20, seed=3, batch_size=10)
    assert torch.equal(a.x, b.x)


@pytest.mark.parametrize(
    "theta, match",
    [
        (torch.zeros(0, 2), "N >= 1"),
        (torch.zeros(3, 2, dtype=torch.bool), "real numbers"),
        (torch.tensor([[0.0, float("nan")]]), "NaN"),
    ],
)
def test_bad_theta_is_named(theta, match):
    with pytest.raises(ShapeError, match=match):
        run_simulator(noisy, theta, seed=0)


def test_theta_that_requires_grad_is_simulated_as_data():
    theta = torch.zeros(4, 2, requires_grad=True)
    result = run_simulator(noisy, theta, seed=0)
    assert not result.theta.requires_grad and not result.x.requires_grad


def test_a_simulator_that_edits_theta_in_place_cannot_corrupt_the_result():
    def vandal(theta, generator=None):
        x = noisy(theta, generator)
        theta.zero_()
        return x

    honest = simgen.simulate(noisy, PRIOR, 50, seed=2, batch_size=20)
    edited = simgen.simulate(vandal, PRIOR, 50, seed=2, batch_size=20)
    assert torch.equal(edited.theta, honest.theta) and torch.equal(edited.x, honest.x)


def test_seed_none_leaves_the_global_generator_alone_and_resumes_a_bank(tmp_path):
    path = tmp_path / "b.zarr"
    torch.manual_seed(123)
    state = torch.get_rng_state()
    with pytest.raises(SimulationInterrupted):
        simgen.simulate(Until(1), PRIOR, 300, seed=None, batch_size=100, bank=path)
    assert torch.equal(torch.get_rng_state(), state)
    resumed = simgen.simulate(Until(10), PRIOR, 300, seed=None, batch_size=100, bank=path)
    seed = Bank.reader(path).seed
    expected = simgen.simulate(noisy, PRIOR, 300, seed=seed, batch_size=100)
    assert torch.equal(resumed.x, expected.x)
    assert torch.equal(torch.get_rng_state(), state)


def test_a_bank_path_with_a_tilde_is_under_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    simgen.simulate(noisy, PRIOR, 20, seed=0, bank="~/home.zarr")
    assert (tmp_path / "home.zarr").is_dir() and not os.path.exists("~")
    assert len(read_bank("~/home.zarr").theta) == 20
