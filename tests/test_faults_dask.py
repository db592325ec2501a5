"""Fault battery on Dask: a hanging θ and a θ that kills its worker process.

The cluster is ``LocalCluster(processes=True, n_workers=2, threads_per_worker=1)``, whose
workers have nannies. A simulator misbehaves for one θ (row ``TARGET`` of the seeded prior
draws): it hangs until the test releases it, or ends its process with ``os._exit``. Where
simgen isolates the row, the others must come out exactly as in a serial run where that θ
merely raises (same bisection, same generators); where it cannot, the run stops naming the
rows and keeps exactly what had finished. Only the cluster of threads (``processes=False``,
whose hanging call cannot be stopped) is in the default run: the worker processes of the
others import torch afresh each time one is ended, about 25 CPU seconds a test.
"""

import pytest
import torch
from fault_helpers import Bad, Case, noisy, same

import simgen
from simgen.bank import Bank
from simgen.errors import SimulationStopped, SimulationWarning

PRIOR = simgen.BoxUniform(-torch.ones(2), torch.ones(2))
N, SEED, BATCH, TARGET = 8, 3, 2, 5
CASE = Case(PRIOR, N, SEED, BATCH, TARGET)


@pytest.fixture
def client():
    import dask
    from dask.distributed import Client, LocalCluster

    # A LocalCluster drops a worker that takes over 15 s to come back after it was ended,
    # as it may on a loaded 2-core machine; simgen's own cluster raises this limit itself.
    with (
        dask.config.set({"distributed.deploy.lost-worker-timeout": "10 minutes"}),
        LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


def test_a_hanging_theta_on_dask_threads_stops_the_run_naming_rows(tmp_path):
    """Threads (no nanny) cannot be stopped: the run stops, and keeps what had finished."""
    from dask.distributed import Client, LocalCluster

    sim = Bad("hang", CASE.target(), tmp_path)
    stop = pytest.raises(SimulationStopped, match="rows 4 to 5 \\(batch 2\\)")
    with (
        LocalCluster(n_workers=2, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as c,
    ):
        try:
            with stop as info:
                simgen.simulate(sim, PRIOR, N, seed=SEED, batch_size=BATCH, executor=c, timeout=1.0)
        finally:
            sim.release.touch()  # before the cluster closes: it waits for its threads
    assert "without a nanny" in str(info.value) and "processes=True" in str(info.value)
    reference = simgen.simulate(noisy, PRIOR, N, seed=SEED, batch_size=BATCH)
    theta, x = info.value.partial  # the batches that finished, exactly as a serial run has them
    rows = [int((reference.theta == t).all(1).nonzero()[0]) for t in theta]
    assert rows and rows == sorted(rows) and not {4, 5} & set(rows)
    assert torch.equal(x, reference.x[rows])


@pytest.mark.slow
def test_a_hanging_theta_on_a_dask_client_is_recorded_as_timeout(tmp_path, client):
    # Control: the serial run where that θ raises is the answer; a run that stopped, or
    # one whose other rows were bisected or lost, would differ from it.
    expected = CASE.serial_with_raise(tmp_path)
    sim = Bad("hang", CASE.target(), tmp_path / "hang")
    (tmp_path / "hang").mkdir()
    try:
        with pytest.warns(SimulationWarning, match="1 ran past the timeout"):
            result = simgen.simulate(
                sim, PRIOR, N, seed=SEED, batch_size=BATCH, executor=client, timeout=1.0
            )
    finally:
        sim.release.touch()
    assert same(result, expected) and len(result.theta) == N - 1
    assert result.failed_reason == ["timeout"] and result.failed_attempts.tolist() == [1]
    assert torch.equal(result.failed_theta, CASE.target()[None])
    assert sim.calls() == 2  # the batch of 2 holding the row, then the row itself
    # The workers whose calls were stopped came back: the client still runs work.
    assert client.submit(sum, [1, 2]).result() == 3


@pytest.mark.slow
def test_a_theta_that_kills_its_worker_on_simgens_dask_cluster_is_recorded_as_crash(tmp_path):
    expected = CASE.serial_with_raise(tmp_path)
    (tmp_path / "exit").mkdir()
    sim = Bad("exit", CASE.target(), tmp_path / "exit")
    path = tmp_path / "b.zarr"
    run = dict(seed=SEED, batch_size=BATCH, bank=path, executor="dask", workers=2, retries=1)
    with pytest.warns(SimulationWarning, match="1 crashed"):
        result = simgen.simulate(sim, PRIOR, N, **run)
    assert same(result, expected)
    assert result.failed_reason == ["crash"] and result.failed_attempts.tolist() == [2]
    calls = sim.calls()
    with pytest.warns(SimulationWarning):  # the resume keeps the row failed, runs nothing
        again = simgen.simulate(sim, PRIOR, N, **run)
    assert same(again, expected) and sim.calls() == calls


@pytest.mark.slow
def test_a_theta_that_kills_workers_of_a_passed_client_stops_the_run_intact(tmp_path, client):
    sim = Bad("exit", CASE.target(), tmp_path)
    path = tmp_path / "b.zarr"
    with pytest.raises(SimulationStopped, match="rows 4 to 5 \\(batch 2\\)") as info:
        simgen.simulate(sim, PRIOR, N, seed=SEED, batch_size=BATCH, bank=path, executor=client)
    assert "KilledWorker" in str(info.value) and "executor='dask'" in str(info.value)
    assert sim.calls() == 4  # Dask's default allowed-failures (3): four workers, then it stops
    _, outputs, status, _ = Bank.reader(path).read()
    reference = simgen.simulate(noisy, PRIOR, N, seed=SEED, batch_size=BATCH)
    saved = torch.from_numpy(status == 0)
    assert (status[4:6] == -1).all()
    assert torch.equal(outputs["x"][saved], reference.x[saved])
    # The resume on simgen's own cluster finishes the run, the row recorded as a crash.
    with pytest.warns(SimulationWarning, match="1 crashed"):
        resumed = simgen.simulate(
            sim, PRIOR, N, seed=SEED, batch_size=BATCH, bank=path, executor="dask", workers=2
        )
    assert same(resumed, CASE.serial_with_raise(tmp_path))
