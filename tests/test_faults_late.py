"""Fault battery: finished work is never thrown away by a late error.

A run that fails after some of its work finished must leave that work reachable: the
finished simulations on the raised error (``exc.partial``) and, from the CLI, in a file it
names; a trained model on disk before anything after training (printing, the report, the
figures) can fail. Each case makes the late step fail and checks what survived.
"""

import time
import types
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from fault_helpers import noisy
from typer.testing import CliRunner

import simgen
from simgen.cli import app
from simgen.errors import SimulationStopped
from simgen.simulate import sample_prior

PRIOR = simgen.BoxUniform(-torch.ones(2), torch.ones(2))
N, SEED, BATCH = 400, 1, 100
LATE = sample_prior(PRIOR, N, SEED)[300:]  # the last batch's θ
SLOW = sample_prior(PRIOR, N, SEED)[200:300]  # batch 2's


def wider_late(theta, generator=None):
    """``noisy``, but one column wider for the calls of the last batch (a late bad batch
    whichever worker or order runs it)."""
    x = noisy(theta, generator)
    if (theta[:1] == LATE).all(1).any():
        return torch.cat([x, x[:, :1]], 1)
    return x


def slow_third_wider_last(theta, generator=None):
    """``wider_late``, but the calls of batch 2 take two seconds: on a pool of two threads,
    batch 3 fails while batch 2 is still running."""
    if (theta[:1] == SLOW).all(1).any():
        time.sleep(2.0)
    return wider_late(theta, generator)


def test_a_batch_in_flight_when_another_fails_is_waited_for_and_kept(monkeypatch):
    """Batch 3 fails (one column too many) while batch 2 is still running on the other thread:
    batch 2 is waited for, and ``exc.partial`` holds batches 0 to 2, each θ with its serial
    x. Control: with no time to wait (``DRAIN_S = 0``) batch 2 is missing."""
    expected = simgen.simulate(noisy, PRIOR, N, seed=SEED, batch_size=BATCH)
    for drain, rows in ((30.0, 300), (0.0, 200)):
        monkeypatch.setattr("simgen.workers.DRAIN_S", drain)
        with (
            ThreadPoolExecutor(2) as pool,
            pytest.raises(SimulationStopped, match="Batch 3 returned x") as info,
        ):
            simgen.simulate(
                slow_third_wider_last, PRIOR, N, seed=SEED, batch_size=BATCH, executor=pool
            )
        theta, x = info.value.partial
        assert torch.equal(theta, expected.theta[:rows]), (drain, len(theta))
        assert torch.equal(x, expected.x[:rows])


def test_the_cli_saves_the_finished_simulations_of_a_stopped_run(tmp_path, monkeypatch):
    task = types.SimpleNamespace(simulator=wider_late, prior=PRIOR)
    monkeypatch.setattr("simgen.cli._task", lambda name: task)
    out = tmp_path / "run.pt"
    args = ["simulate", "mine", str(N), str(out), "--seed", str(SEED), "--batch-size", "100"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "Batch 3 returned x" in result.output, result.output
    partial = tmp_path / "run.partial.pt"
    assert f"saved the 300 finished simulations to {partial}" in result.output
    saved = torch.load(partial, weights_only=True)
    expected = simgen.simulate(noisy, PRIOR, N, seed=SEED, batch_size=BATCH)
    assert torch.equal(saved["x"], expected.x[:300]) and not out.exists()


def _project(folder):
    """The `simgen init` project on a tiny budget."""
    from simgen.project import load_project
    from simgen.templates import write_example

    config = write_example(folder)[0]
    toml = config.read_text()
    for old, new in [
        ("num_simulations = 1000 ", "num_simulations = 200 "),
        ("max_epochs = 200", "max_epochs = 2"),
        ("num_simulations = 200 ", "num_simulations = 20 "),
        ("num_samples = 200", "num_samples = 20"),
    ]:
        assert old in toml, old
        toml = toml.replace(old, new, 1)
    config.write_text(toml)
    return load_project(config)


def test_an_error_after_training_keeps_the_trained_model_and_the_rerun_reuses_it(tmp_path):
    from simgen.pipeline import run_stage

    project = _project(tmp_path)
    run_stage(project, "simulate", lambda line: None)

    def closed_stdout(line):  # `simgen run | head` once head has exited
        if line.startswith("train:"):
            raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(BrokenPipeError):
        run_stage(project, "train", closed_stdout)
    model = project.out / "posterior.simgen"
    assert model.exists()
    simgen.load(model, prior=project.make_prior())  # a whole model file, not a torn one
    lines = []
    run_stage(project, "train", lines.append)
    assert lines == [f"train: reusing {model}"]


def test_a_report_that_cannot_be_written_keeps_the_diagnostics(tmp_path, monkeypatch):
    import json

    from simgen.diagnostics.report import DiagnosisReport
    from simgen.pipeline import run_stage

    project = _project(tmp_path)
    for stage in ("simulate", "train"):
        run_stage(project, stage, lambda line: None)

    def no_figures(self, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(DiagnosisReport, "write", no_figures)
    with pytest.raises(OSError, match="No space"):
        run_stage(project, "diagnose", lambda line: None)
    saved = json.loads((project.out / "diagnostics.json").read_text())
    assert "summary" in saved and saved["summary"]


def test_an_error_in_the_demo_after_training_keeps_the_trained_model(tmp_path, monkeypatch):
    from simgen.demo import run_demo

    def broken(*args, **kwargs):  # the first check after training (the plots come later)
        raise MemoryError("reference check")

    monkeypatch.setattr("simgen.demo.c2st", broken)
    with pytest.raises(MemoryError, match="reference check"):
        run_demo("gaussian_linear", 200, out_dir=tmp_path, progress=False)
    simgen.load(tmp_path / "gaussian_linear.simgen")


def test_ctrl_c_in_a_sequential_cli_run_keeps_the_finished_rounds(tmp_path, monkeypatch):
    from simulators import gaussian_linear

    calls, stop = [], [True]

    def simulator(theta, generator=None):  # Ctrl-C during the second round's simulations
        calls.append(len(theta))
        if len(calls) == 2 and stop[0]:
            raise KeyboardInterrupt
        return gaussian_linear.simulator(theta, generator=generator)

    task = types.SimpleNamespace(simulator=simulator, prior=gaussian_linear.prior)
    monkeypatch.setattr("simgen.cli_common._task", lambda name: task)  # where `train` finds it
    x_obs, model = tmp_path / "x_o.pt", tmp_path / "seq.simgen"
    torch.save(gaussian_linear.x_o, x_obs)
    args = ["train", "gl", str(model), "--sequential", "--x-obs", str(x_obs)]
    args += ["--num-simulations", "200", "--num-rounds", "2", "--max-epochs", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 130, result.output
    folder = tmp_path / "seq.rounds"
    assert f"kept in {folder}" in result.output and list(folder.glob("round_1*"))
    stop[0], calls[:] = False, []
    result = CliRunner().invoke(app, args)  # the same command resumes at the second round
    assert result.exit_code == 0, result.output
    assert len(calls) == 1 and model.exists() and not folder.exists()
