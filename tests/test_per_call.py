"""One-θ-per-call Python simulators (``FunctionSimulator(fn, vectorized=False)``) and the
progress line of ``simulate``.

A per-call function gets one θ row and its own seed; the seed of row ``i`` of a call is the
``i``-th integer the call's generator gives (:func:`simgen.external.row_seeds`), and the
call's generator is seeded from ``(seed, batch, start)``. The known-answer tests rebuild the
expected x from that rule by hand, and each has a control (another batch size or seed) that
the same comparison rejects.
"""

import io
import sys

import numpy as np
import pytest
import torch

import simgen
from simgen.batches import batch_generator
from simgen.errors import ShapeError, SimulationStopped, SimulationWarning
from simgen.external import FUNCTION_SEEDS, row_seeds
from simgen.progress import Progress
from simgen.simulate import sample_prior
from simgen.simulator import simulator_identity

PRIOR = simgen.BoxUniform(-torch.ones(2), torch.ones(2))
N, SEED = 12, 5


def one_theta(theta, generator=None):
    """x = θ + noise for one row ``(D,)``."""
    assert theta.shape == (2,)
    return theta + torch.randn(2, generator=generator)


def one_theta_numpy(theta, seed):
    return theta.numpy() + np.random.default_rng(seed).normal(size=2)


def one_theta_global(theta):
    return theta + torch.randn(2)


def raises_for_positive(theta, generator=None):
    if theta[0] > 0.5:
        raise RuntimeError(f"bad theta {theta[0]:.3f}")
    return one_theta(theta, generator)


PER_CALL = simgen.FunctionSimulator(one_theta, vectorized=False)


def expected_x(fn, theta, seed, batch_size):
    """x by the documented rule: row ``i`` of batch ``b`` gets the ``i``-th seed of
    ``batch_generator(seed, b)``."""
    rows = []
    for b in range(-(-len(theta) // batch_size)):
        chunk = theta[b * batch_size : (b + 1) * batch_size]
        seeds = row_seeds(len(chunk), batch_generator(seed, b), FUNCTION_SEEDS)
        rows += [fn(t, s) for t, s in zip(chunk, seeds, strict=True)]
    return torch.stack([torch.as_tensor(r, dtype=torch.float32) for r in rows])


def with_generator(t, s):
    return one_theta(t, torch.Generator().manual_seed(s))


def test_each_row_is_one_call_with_its_own_documented_seed():
    result = simgen.simulate(PER_CALL, PRIOR, N, seed=SEED)
    theta = sample_prior(PRIOR, N, SEED)
    assert torch.equal(result.theta, theta)
    # batch_size defaults to 1 for a per-call simulator: row i is batch i.
    assert torch.equal(result.x, expected_x(with_generator, theta, SEED, 1))
    # Control: the rule with batches of 4 gives other seeds, so other x.
    assert not torch.allclose(result.x, expected_x(with_generator, theta, SEED, 4))
    by_four = simgen.simulate(PER_CALL, PRIOR, N, seed=SEED, batch_size=4)
    assert torch.equal(by_four.x, expected_x(with_generator, theta, SEED, 4))


def test_seed_keyword_and_global_generator_functions():
    theta = sample_prior(PRIOR, N, SEED)
    numpy_sim = simgen.FunctionSimulator(one_theta_numpy, vectorized=False)
    x = simgen.simulate(numpy_sim, PRIOR, N, seed=SEED).x
    assert torch.equal(x, expected_x(one_theta_numpy, theta, SEED, 1))

    def global_rule(t, s):
        torch.manual_seed(s)
        return one_theta_global(t)

    state = torch.get_rng_state()
    global_sim = simgen.FunctionSimulator(one_theta_global, vectorized=False)
    x = simgen.simulate(global_sim, PRIOR, N, seed=SEED).x
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator is untouched
    assert torch.equal(x, expected_x(global_rule, theta, SEED, 1))
    other = simgen.simulate(global_sim, PRIOR, N, seed=SEED + 1).x
    assert not torch.allclose(other, x)


def test_worker_count_does_not_change_the_result():
    serial = simgen.simulate(PER_CALL, PRIOR, N, seed=SEED)
    one = simgen.simulate(PER_CALL, PRIOR, N, seed=SEED, workers=1)
    two = simgen.simulate(PER_CALL, PRIOR, N, seed=SEED, workers=2)
    for result in (one, two):
        assert torch.equal(result.theta, serial.theta) and torch.equal(result.x, serial.x)
    control = simgen.simulate(PER_CALL, PRIOR, N, seed=SEED + 1, workers=2)
    assert not torch.allclose(control.x, serial.x)


@pytest.mark.slow
def test_a_dask_client_gives_the_serial_result():
    from dask.distributed import Client, LocalCluster

    serial = simgen.simulate(PER_CALL, PRIOR, N, seed=SEED)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        result = simgen.simulate(PER_CALL, PRIOR, N, seed=SEED, executor=client)
    assert torch.equal(result.theta, serial.theta) and torch.equal(result.x, serial.x)


def test_a_failing_row_costs_only_itself():
    calls = []

    def counted(theta, generator=None):
        calls.append(theta.clone())
        return raises_for_positive(theta, generator)

    sim = simgen.FunctionSimulator(counted, vectorized=False)
    with pytest.warns(SimulationWarning):
        result = simgen.simulate(sim, PRIOR, N, seed=SEED)
    theta = sample_prior(PRIOR, N, SEED)
    bad = theta[:, 0] > 0.5
    assert 0 < int(bad.sum()) < N  # the seed gives both kinds of rows
    assert len(calls) == N  # one call per θ, none repeated by a bisection
    assert torch.equal(result.failed_theta, theta[bad])
    assert result.failed_reason == ["raised"] * int(bad.sum())
    assert torch.equal(result.theta, theta[~bad])
    assert torch.equal(result.x, expected_x(with_generator, theta, SEED, 1)[~bad])
    assert any("bad theta" in e for e in result.errors)


def test_rows_of_another_shape_stop_the_run():
    def ragged(theta, generator=None):
        return torch.zeros(2 if theta[0] > 0 else 3)

    sim = simgen.FunctionSimulator(ragged, vectorized=False)
    with pytest.raises(ShapeError, match="one shape"):
        sim(sample_prior(PRIOR, N, SEED))
    with pytest.raises(SimulationStopped):
        simgen.simulate(sim, PRIOR, N, seed=SEED)


def test_output_types_and_bad_output():
    theta = torch.zeros(3, 2)
    as_list = simgen.FunctionSimulator(lambda t: [float(t[0]), 1.0], vectorized=False)
    assert as_list(theta).shape == (3, 2)
    as_number = simgen.FunctionSimulator(lambda t: 1.5, vectorized=False)
    assert as_number(theta).shape == (3,)
    nothing = simgen.FunctionSimulator(lambda t: None, vectorized=False)
    with pytest.raises(ShapeError, match="returned NoneType for row 0"):
        nothing(theta)
    with pytest.raises(ShapeError, match=r"\(N, D\)"):
        PER_CALL(torch.zeros(2))


def test_the_marker_is_in_the_name_a_bank_records():
    batched = simgen.FunctionSimulator(one_theta)
    assert batched.vectorized and batched.default_batch_size == 1000
    assert PER_CALL.default_batch_size == 1
    assert simulator_identity(batched).endswith("one_theta")
    assert simulator_identity(PER_CALL).endswith("one_theta:per-call")
    assert "vectorized=False" in repr(PER_CALL) and "vectorized" not in repr(batched)


def test_a_bank_resumes_a_per_call_run(tmp_path):
    path = tmp_path / "run.zarr"
    full = simgen.simulate(PER_CALL, PRIOR, N, seed=SEED, bank=path)
    again = simgen.simulate(PER_CALL, PRIOR, N, seed=SEED, bank=path)
    assert torch.equal(again.x, full.x)
    with pytest.raises(simgen.errors.BankError, match="simulator"):
        simgen.simulate(simgen.FunctionSimulator(one_theta), PRIOR, N, seed=SEED, bank=path)


# -- the progress line ---------------------------------------------------------------------
def test_simulate_is_quiet_by_default(capfd):
    simgen.simulate(PER_CALL, PRIOR, N, seed=SEED)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_progress_off_a_terminal_is_one_summary_line(capsys):
    with pytest.warns(SimulationWarning):
        simgen.simulate(
            simgen.FunctionSimulator(raises_for_positive, vectorized=False),
            PRIOR,
            N,
            seed=SEED,
            progress=True,
        )
    out, err = capsys.readouterr()
    failed = int((sample_prior(PRIOR, N, SEED)[:, 0] > 0.5).sum())
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1
    assert lines[0].startswith(f"simulate: {N} of {N} simulations ({failed} failed) in ")
    assert lines[0].endswith(" simulations/s")


def test_progress_on_a_terminal_is_a_live_line_in_simulations(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    line = Progress(total=10, done=4, enabled=True, stream=stream)
    assert line.bar is not None
    line.update(3, failed=1)
    line.close()
    text = stream.getvalue()
    assert "7/10" in text and "sim/s" in text and "failed=1" in text
    # Off a terminal the same counts give the summary line, and nothing before close.
    plain = io.StringIO()
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    quiet = Progress(total=10, done=4, enabled=True, stream=plain)
    quiet.update(3, failed=1)
    assert quiet.bar is None and plain.getvalue() == ""
    quiet.close()
    assert plain.getvalue().startswith("simulate: 7 of 10 simulations (1 failed) in ")
    assert "4 from the bank" in plain.getvalue()


def test_a_resumed_run_counts_the_bank_s_rows_in_the_total_not_the_rate(tmp_path, capsys):
    path = tmp_path / "run.zarr"

    class StopAt:
        """``one_theta``, but Ctrl-C on the ``stop``-th θ."""

        def __init__(self, stop):
            self.stop, self.calls = stop, 0

        def __call__(self, theta, generator=None):
            self.calls += 1
            if self.calls == self.stop:
                raise KeyboardInterrupt
            return one_theta(theta, generator)

    first = simgen.FunctionSimulator(StopAt(5), vectorized=False)
    with pytest.raises(simgen.errors.SimulationInterrupted):
        simgen.simulate(first, PRIOR, N, seed=SEED, bank=path, progress=True)
    stopped = capsys.readouterr().err.strip().splitlines()
    assert stopped[-1].startswith(f"simulate: 4 of {N} simulations in ")
    resumed = simgen.FunctionSimulator(StopAt(0), vectorized=False)
    result = simgen.simulate(resumed, PRIOR, N, seed=SEED, bank=path, progress=True)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"simulate: {N} of {N} simulations in ")
    assert ", 4 from the bank, " in line and resumed.fn.calls == N - 4
    assert torch.equal(result.x, simgen.simulate(PER_CALL, PRIOR, N, seed=SEED).x)
