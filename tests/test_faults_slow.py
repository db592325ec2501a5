"""Fault battery (slow part): real processes racing for one bank and killed with SIGKILL.

Each writer is a separate Python process running ``SCRIPT``; the bank must end either
refused with a message naming the other run, or holding exactly the simulations an
uninterrupted run of one seed gives, never rows of two runs.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import simgen
from simgen.simulate import read_bank

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent(
    """
    import sys, time, torch, simgen

    def slow(theta, generator=None):
        time.sleep(0.05)
        return theta + 0.1 * torch.randn(theta.shape, generator=generator)

    prior = simgen.BoxUniform(-torch.ones(2), torch.ones(2))
    path, seed = sys.argv[1], int(sys.argv[2])
    try:
        simgen.simulate(slow, prior, 2000, seed=seed, batch_size=50, bank=path)
    except simgen.errors.BankError as exc:
        print("REFUSED", exc)
        sys.exit(3)
    print("DONE")
    """
)


def _expected(seed):
    def slow(theta, generator=None):
        return theta + 0.1 * torch.randn(theta.shape, generator=generator)

    prior = simgen.BoxUniform(-torch.ones(2), torch.ones(2))
    return simgen.simulate(slow, prior, 2000, seed=seed, batch_size=50)


def _start(tmp_path, path, seed):
    script = tmp_path / "writer.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(
        [sys.executable, str(script), str(path), str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


@pytest.mark.parametrize("seeds", [(0, 1), (0, 0)])
def test_concurrent_writers_never_mix_their_rows(tmp_path, seeds):
    path = tmp_path / "b.zarr"
    procs = [_start(tmp_path, path, s) for s in seeds]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    codes = [p.returncode for p in procs]
    # The same run twice may also end with the second one reading the finished bank.
    assert sorted(codes) == [0, 3] or (seeds[0] == seeds[1] and codes == [0, 0]), outputs
    if 3 in codes:
        refused = outputs[codes.index(3)]
        assert "being written by another run: pid" in refused or "made by another run" in refused
    expected = _expected(seeds[codes.index(0)])
    banked = read_bank(path)
    assert torch.equal(banked.theta, expected.theta) and torch.equal(banked.x, expected.x)


def test_kill_9_at_any_moment_then_resume_gives_the_uninterrupted_result(tmp_path):
    path = tmp_path / "b.zarr"
    for delay in (0.3, 0.8, 1.5, 2.5):  # during import, creation, and the batches
        proc = _start(tmp_path, path, 7)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    proc = _start(tmp_path, path, 7)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    expected = _expected(7)
    banked = read_bank(path)
    assert torch.equal(banked.theta, expected.theta) and torch.equal(banked.x, expected.x)
    leftovers = [p.name for p in tmp_path.iterdir() if ".creating-" in p.name]
    assert leftovers == []
