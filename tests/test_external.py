"""External programs as simulators (``simgen.ExternalSimulator``): the documented protocol
(θ and seed in, x out, through stdin/stdout or files, text or JSON), failures as failed rows
with the stderr tail, timeouts, pickling and banks.

The programs are one-line ``sh`` scripts (a few milliseconds each); the one Python program
checks the JSON protocol. The known answers follow from the protocol: a program that echoes
its input gives back θ and the row's seed, which :func:`simgen.external.row_seeds` predicts.
"""

import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import simgen
from simgen.batches import batch_generator
from simgen.errors import BankError, ConfigError, SimulationError, SimulationWarning
from simgen.external import PROGRAM_SEEDS, ExternalSimulator, row_seeds
from simgen.simulate import sample_prior

PRIOR = simgen.BoxUniform(-torch.ones(2), torch.ones(2))
N, SEED = 8, 11
#: Prints θ and the seed three ways: {seed}, $SIMGEN_SEED and the stdin line.
ECHO = ["sh", "-c", 'read a b; echo "$a $b $1 $SIMGEN_SEED"', "echo", "{seed}"]


def program_seeds(n, seed, batch_size=1):
    """The seeds the protocol gives rows 0..n-1 (batches of ``batch_size``)."""
    seeds = []
    for b in range(-(-n // batch_size)):
        size = min(batch_size, n - b * batch_size)
        seeds += row_seeds(size, batch_generator(seed, b), PROGRAM_SEEDS)
    return torch.tensor(seeds, dtype=torch.float32)


def test_theta_and_seed_in_x_out_on_stdin_and_stdout():
    result = simgen.simulate(ExternalSimulator(ECHO, x_shape=(4,)), PRIOR, N, seed=SEED)
    theta = sample_prior(PRIOR, N, SEED)
    seeds = program_seeds(N, SEED)
    assert torch.equal(result.theta, theta)
    assert torch.equal(result.x[:, :2], theta)  # θ's repr round-trips exactly
    assert torch.equal(result.x[:, 2], seeds) and torch.equal(result.x[:, 3], seeds)
    assert len(set(seeds.tolist())) == N
    # Control: another seed gives other program seeds.
    other = simgen.simulate(ExternalSimulator(ECHO, x_shape=(4,)), PRIOR, N, seed=SEED + 1)
    assert not torch.equal(other.x[:, 2], seeds)


def test_files_instead_of_stdin_and_stdout(tmp_path):
    sim = ExternalSimulator(
        ["sh", "-c", 'read a b < "$1"; echo "$b $a" > "$2"', "files", "{theta_file}", "{x_file}"]
    )
    theta = torch.tensor([[0.25, -0.5], [1.0, 2.0]])
    assert torch.equal(sim(theta), theta.flip(1))
    quiet = ExternalSimulator(["sh", "-c", "cat > /dev/null", "no-x", "{x_file}"])
    with pytest.raises(SimulationError, match=r"wrote no \{x_file\}"):
        quiet(theta)


def test_json_both_ways():
    program = (
        "import json, sys; d = json.load(sys.stdin); "
        "print(json.dumps({'x': [[t, d['seed']] for t in d['theta']]}))"
    )
    sim = ExternalSimulator([sys.executable, "-c", program], format="json")
    theta = torch.tensor([[0.5, -1.0]])
    x = sim(theta, generator=batch_generator(SEED, 0))
    seed = row_seeds(1, batch_generator(SEED, 0), PROGRAM_SEEDS)[0]
    assert x.shape == (1, 2, 2)
    assert torch.equal(x[0], torch.tensor([[0.5, seed], [-1.0, seed]], dtype=torch.float32))


def test_failures_are_failed_rows_with_the_stderr_tail():
    # Rows with θ₀ > 0.3 exit 3 after writing to stderr; rows with θ₀ < -0.3 print garbage.
    script = (
        'read a b; if awk -v a="$a" "BEGIN { exit !(a > 0.3) }"; then '
        'echo "line 1" >&2; echo "solver diverged at $a" >&2; exit 3; fi; '
        'if awk -v a="$a" "BEGIN { exit !(a < -0.3) }"; then echo oops; exit 0; fi; '
        'echo "$a $b"'
    )
    theta = sample_prior(PRIOR, 24, SEED)
    high, low = theta[:, 0] > 0.3, theta[:, 0] < -0.3
    assert high.any() and low.any() and (~high & ~low).any()
    with pytest.warns(SimulationWarning):
        result = simgen.simulate(
            ExternalSimulator(["sh", "-c", script], x_shape=(2,)), PRIOR, 24, seed=SEED
        )
    assert torch.equal(result.theta, theta[~high & ~low])
    assert torch.equal(result.x, theta[~high & ~low])
    assert result.failed_reason == ["raised"] * int((high | low).sum())
    assert any("exited 3" in e and "solver diverged at" in e for e in result.errors)
    assert any("not text numbers" in e and "oops" in e for e in result.errors)


def test_a_log_folder_keeps_each_failed_run_s_whole_output(tmp_path):
    script = 'read a b; for i in $(seq 30); do echo "step $i" >&2; done; echo "out"; exit 2'
    sim = ExternalSimulator(["sh", "-c", script], log_folder=tmp_path / "logs", stderr_lines=2)
    with pytest.raises(SimulationError, match="Its whole output: ") as info:
        sim(torch.zeros(1, 2), generator=batch_generator(SEED, 0))
    seed = row_seeds(1, batch_generator(SEED, 0), PROGRAM_SEEDS)[0]
    log = tmp_path / "logs" / f"failed-seed{seed}.log"
    assert str(log) in str(info.value)
    assert "step 28" not in str(info.value) and "step 30" in str(info.value)
    text = log.read_text()
    assert "exit status: 2" in text and "theta: 0.0 0.0" in text and "out" in text
    assert all(f"step {i}\n" in text for i in range(1, 31))
    timed = ExternalSimulator(["sleep", "5"], timeout=0.1, log_folder=tmp_path / "logs")
    with pytest.raises(SimulationError, match=r"ran past timeout=0.1 s at theta = \[0, 0\]"):
        timed(torch.zeros(1, 2))
    assert sum("exit status: timeout" in p.read_text() for p in log.parent.iterdir()) == 1


def test_unparsable_and_wrong_sized_output():
    theta = torch.zeros(1, 2)
    with pytest.raises(SimulationError, match="printed no numbers"):
        ExternalSimulator(["true"])(theta)
    with pytest.raises(SimulationError, match=r"printed 3 numbers.*needs 2"):
        ExternalSimulator(["echo", "1 2 3"], x_shape=(2,))(theta)
    with pytest.raises(SimulationError, match="not json numbers"):
        ExternalSimulator(["echo", "{"], format="json")(theta)
    with pytest.raises(SimulationError, match="was killed by signal 9"):
        ExternalSimulator(["sh", "-c", "kill -9 $$"])(theta)
    nan = ExternalSimulator(["echo", "nan 1"])(theta)
    assert torch.isnan(nan[0, 0]) and nan[0, 1] == 1


def test_a_missing_program_fails_every_row_with_a_clear_message():
    with pytest.raises(SimulationError, match="Could not start './no-such-program'"):
        ExternalSimulator(["./no-such-program"])(torch.zeros(1, 2))
    with pytest.raises(SimulationError, match="no-such-program"):
        simgen.simulate(ExternalSimulator("./no-such-program"), PRIOR, 3, seed=0)


def test_the_own_timeout_kills_the_program_and_what_it_started(tmp_path):
    pid_file = tmp_path / "pid"
    sim = ExternalSimulator(
        ["sh", "-c", 'sleep 30 & echo $! > "$1"; wait', "slow", str(pid_file)], timeout=0.1
    )
    with pytest.raises(
        SimulationError, match=r"ran past timeout=0.1 s at theta = .* and was killed"
    ):
        sim(torch.zeros(1, 2))
    assert _ends(int(pid_file.read_text())), "the program's child is still running"


def _ends(pid: int) -> bool:
    """Whether process ``pid`` is gone (or a zombie) within two seconds of a kill sent."""
    for _ in range(200):
        try:
            os.kill(pid, 0)
            if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                return True
        except (ProcessLookupError, FileNotFoundError):
            return True
        time.sleep(0.01)
    return False


def test_it_pickles_and_runs_on_workers_with_the_serial_result():
    sim = ExternalSimulator(ECHO, x_shape=(4,), env={"A": "1"}, timeout=30)
    copy = pickle.loads(pickle.dumps(sim))
    assert copy == sim and hash(copy) == hash(sim)
    serial = simgen.simulate(sim, PRIOR, N, seed=SEED)
    two = simgen.simulate(sim, PRIOR, N, seed=SEED, workers=2)
    assert torch.equal(two.theta, serial.theta) and torch.equal(two.x, serial.x)


def test_a_bank_refuses_another_command(tmp_path):
    path = tmp_path / "run.zarr"
    first = simgen.simulate(ExternalSimulator(ECHO, x_shape=(4,)), PRIOR, 4, seed=1, bank=path)
    again = simgen.simulate(ExternalSimulator(ECHO, x_shape=(4,)), PRIOR, 4, seed=1, bank=path)
    assert torch.equal(again.x, first.x)
    other = ExternalSimulator(["sh", "-c", 'read a b; echo "$a $b 0 0"'], x_shape=(4,))
    with pytest.raises(BankError, match="simulator"):
        simgen.simulate(other, PRIOR, 4, seed=1, bank=path)


def test_environment_and_working_folder(tmp_path):
    sim = ExternalSimulator(
        ["sh", "-c", 'cat > /dev/null; echo "$SCALE"; cat ./value'],
        env={"SCALE": "2.5"},
        cwd=str(tmp_path),
    )
    (tmp_path / "value").write_text("7\n")
    assert torch.equal(sim(torch.zeros(1, 2)), torch.tensor([[2.5, 7.0]]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"command": ""}, "must name a program"),
        ({"command": 3}, "must be a string or a list"),
        ({"command": ["a", 1]}, "must name a program"),
        ({"command": "a", "format": "xml"}, "format must be one of"),
        ({"command": "a", "x_shape": (0,)}, "x_shape must be a tuple of positive ints"),
        ({"command": "a", "x_shape": "ab"}, "x_shape must be a tuple of positive ints"),
        ({"command": "a", "timeout": -1}, "timeout must be a positive number"),
        ({"command": "a", "timeout": True}, "timeout must be a positive number"),
        ({"command": "a", "env": {"A": 1}}, "env must map names to strings"),
        ({"command": "a", "stderr_lines": -1}, "stderr_lines must be an int"),
        ({"command": "a", "log_folder": 3}, "log_folder must be a folder's path"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ExternalSimulator(**kwargs)


def test_the_string_form_is_split_like_a_shell():
    sim = ExternalSimulator("prog --out '{x_file}' -n 3", x_shape=3)
    assert sim.command == ("prog", "--out", "{x_file}", "-n", "3") and sim.x_shape == (3,)
    assert sim.default_batch_size == 1
    assert sim.identity() == "external:prog --out '{x_file}' -n 3"
    assert ExternalSimulator(Path("/opt/my solver")).command == ("/opt/my solver",)


@pytest.mark.slow
def test_simulate_timeout_on_workers_ends_the_program_with_its_worker(tmp_path):
    """A hanging program under ``simulate(timeout=, workers=1)``: simgen kills the worker,
    and the program dies with it (PR_SET_PDEATHSIG), so nothing is left running."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    pid_file = tmp_path / "pid"
    sim = ExternalSimulator(["sh", "-c", 'echo $$ > "$1"; exec sleep 60', "hang", str(pid_file)])
    with pytest.raises(SimulationError, match="All 1 simulations failed"):
        simgen.simulate(sim, PRIOR, 1, seed=0, workers=1, timeout=1.0)
    assert _ends(int(pid_file.read_text())), "the program outlived its worker"


@pytest.mark.slow
def test_on_dask_the_own_timeout_fails_one_row_and_the_rest_match_the_serial_run():
    from dask.distributed import Client, LocalCluster

    script = (
        'read a b; if awk -v a="$a" "BEGIN { exit !(a > 0.8) }"; then exec sleep 30; fi; '
        'echo "$a $b $SIMGEN_SEED"'
    )
    sim = ExternalSimulator(["sh", "-c", script], x_shape=(3,), timeout=1.0)
    theta = sample_prior(PRIOR, 16, SEED)
    hangs = theta[:, 0] > 0.8
    assert 0 < int(hangs.sum()) < 16
    with pytest.warns(SimulationWarning):
        serial = simgen.simulate(sim, PRIOR, 16, seed=SEED)
    with (
        LocalCluster(n_workers=2, processes=False, dashboard_address=":0") as cluster,
        Client(cluster) as client,
        pytest.warns(SimulationWarning),
    ):
        result = simgen.simulate(sim, PRIOR, 16, seed=SEED, executor=client)
    for run in (serial, result):
        assert torch.equal(run.failed_theta, theta[hangs])
        assert any("ran past timeout=1.0 s" in e for e in run.errors)
    assert torch.equal(result.theta, serial.theta) and torch.equal(result.x, serial.x)


ORPHAN = """
import shutil, sys, threading, time, torch
from simgen.external import ExternalSimulator
if sys.argv[2] == "no-setpriv":
    shutil.which = lambda *a, **k: None
sim = ExternalSimulator(["sh", "-c", 'echo $$ > "$1"; exec sleep 60', "hang", sys.argv[1]])
threading.Thread(target=lambda: sim(torch.zeros(1, 2)), daemon=True).start()
time.sleep(120)
"""


def _killed_thread_owner(tmp_path, mode):
    """Start a program from a thread of a process, SIGKILL the process; the program's pid."""
    pid_file = tmp_path / f"pid-{mode}"
    owner = subprocess.Popen([sys.executable, "-c", ORPHAN, str(pid_file), mode])
    try:
        for _ in range(600):
            if pid_file.exists() and pid_file.read_text().strip():
                break
            time.sleep(0.1)
    finally:
        owner.kill()
        owner.wait()
    return int(pid_file.read_text())


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) not installed")
def test_a_program_started_from_a_thread_dies_with_its_process(tmp_path):
    """As on a Dask worker that is ended: the program started from a worker thread goes
    too. Control: without setpriv the same program outlives its process."""
    assert _ends(_killed_thread_owner(tmp_path, "setpriv"))
    orphan = _killed_thread_owner(tmp_path, "no-setpriv")
    try:
        assert not _ends(orphan)
    finally:
        os.kill(orphan, signal.SIGKILL)
