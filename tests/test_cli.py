"""The command line, run as a user would: simulate -> train -> sample -> diagnose."""

import pytest
import torch
from typer.testing import CliRunner

from simgen.cli import app

runner = CliRunner()


def _ok(args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "data.pt"
    bank = path.parent / "bank.zarr"
    out = _ok(["simulate", "two_moons", 600, path, "--seed", "1", "--bank", bank])
    assert "wrote 600 simulations" in out and bank.exists()
    stored = torch.load(path, weights_only=True)
    assert stored["theta"].shape == (600, 2) and stored["x"].shape == (600, 2)
    return path


@pytest.mark.parametrize("method", ["npe", "nle", "nre"])
def test_train_sample_diagnose(method, data, tmp_path):
    model = tmp_path / f"{method}.simgen"
    _ok(["train", "two_moons", data, model, "--method", method, "--max-epochs", 3])
    assert model.stat().st_size > 0
    samples_path = tmp_path / "samples.pt"
    out = _ok(["sample", model, "two_moons", "--num-samples", 200, "--out", samples_path])
    assert out.count("theta_") == 2
    assert torch.load(samples_path, weights_only=True)["samples"].shape == (200, 2)
    if method == "npe":
        report = tmp_path / "report.md"
        out = _ok(
            ["diagnose", model, "two_moons", "--report", report]
            + ["--num-simulations", 40, "--num-samples", 30, "--no-reference"]
        )
        assert "report written" in out and report.read_text().strip()


def test_errors_are_one_line_with_exit_code_2(data, tmp_path):
    cases = [
        ["train", "two_moons", tmp_path / "missing.pt", tmp_path / "m.simgen"],
        ["train", "no_such_task", data, tmp_path / "m.simgen"],
        ["train", "two_moons", data, tmp_path / "m.simgen", "--method", "abc"],
        ["sample", data, "two_moons"],  # a data file is not a model file
    ]
    for args in cases:
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 2, (args, result.output)
        assert "error:" in result.output and "Traceback" not in result.output


@pytest.mark.slow  # about a minute on a quiet machine (training, C2ST, SBC)
def test_demo_prints_a_calibrated_posterior_and_writes_plots(tmp_path):
    """`simgen demo` (what `./run demo` runs), on fewer simulations."""
    out = _ok(["demo", "--num-simulations", 1500, "--out", tmp_path, "--no-progress"])
    assert "posterior at x_o" in out and "C2ST against the reference posterior" in out
    assert "SBC over 300 simulated observations" in out
    for name in ("two_moons_corner.png", "two_moons_sbc.png", "two_moons.simgen"):
        assert (tmp_path / name).stat().st_size > 0, name


def test_bad_arguments_and_out_paths_stop_before_any_work(tmp_path):
    cases = [
        (["simulate", "two_moons", "-5", tmp_path / "a.pt"], "num_simulations"),
        (["simulate", "two_moons", "10", tmp_path / "a.pt", "--seed", "-1"], "--seed"),
        (["simulate", "two_moons", "10", tmp_path / "a.pt", "--batch-size", "0"], "--batch-size"),
        (["simulate", "two_moons", "10", tmp_path / "no" / "a.pt"], "does not exist"),
        (["simulate", "two_moons", "10", tmp_path], "is a folder"),
        (["train", "two_moons", tmp_path / "d.pt", tmp_path / "no" / "m.simgen"], "does not exist"),
    ]
    for args, named in cases:
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 2, (args, result.output)
        assert named in result.output and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_without_a_bank_saves_the_finished_simulations(tmp_path, monkeypatch):
    import types

    from simulators import two_moons

    calls = []

    def interrupting(theta, generator=None):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return two_moons.simulator(theta, generator=generator)

    task = types.SimpleNamespace(simulator=interrupting, prior=two_moons.prior)
    monkeypatch.setattr("simgen.cli._task", lambda name: task)
    out = tmp_path / "run.pt"
    result = runner.invoke(app, ["simulate", "two_moons", "500", str(out), "--batch-size", "100"])
    assert result.exit_code == 130, result.output
    partial = tmp_path / "run.partial.pt"
    assert f"saved the 200 finished simulations to {partial}" in result.output
    assert torch.load(partial, weights_only=True)["x"].shape == (200, 2) and not out.exists()


USER_SIMULATOR = """
import torch

def simulate(theta, generator=None):
    # one theta (2,) per call: x = theta + noise, four features
    noise = 0.1 * torch.randn(4, generator=generator)
    return torch.cat([theta, theta]) + noise
"""


def _tiny_project(folder):
    """`simgen init`, then a user's own simulator in a package of its own, a tiny budget."""
    _ok(["init", folder])
    (folder / "userpkg").mkdir()
    (folder / "userpkg" / "__init__.py").write_text("")
    (folder / "userpkg" / "sims.py").write_text(USER_SIMULATOR)
    toml = (folder / "simgen.toml").read_text()
    for old, new in [
        ('"my_simulator:simulate"', '"userpkg.sims:simulate"'),
        ("num_simulations = 1000 ", "num_simulations = 300 "),
        ("max_epochs = 200", "max_epochs = 3"),
        ("num_simulations = 200 ", "num_simulations = 20 "),
        ("num_samples = 200", "num_samples = 20"),
        ("num_samples = 10000", "num_samples = 500"),
    ]:
        assert old in toml, old
        toml = toml.replace(old, new)
    (folder / "simgen.toml").write_text(toml)
    import numpy as np

    np.save(folder / "x_o.npy", np.array([1.0, 0.5, 1.0, 0.5], dtype=np.float32))
    return folder / "simgen.toml"


def test_init_then_run_a_user_simulator_to_a_report_and_resume(tmp_path):
    config = _tiny_project(tmp_path)
    out = _ok(["run", config])
    for stage in ("simulate:", "train:", "sample:", "diagnose:", "report:"):
        assert stage in out, out
    output = tmp_path / "simgen_output"
    summary = (output / "summary.md").read_text()
    assert "| amplitude [mV] |" in summary and "| decay [1/s] |" in summary
    assert (output / "report.html").stat().st_size > 0
    # every stage is reused on a second run, and a stage runs alone with --config
    out = _ok(["run", config])
    assert out.count("reusing") == 4
    assert "reusing" in _ok(["train", "--config", config])
    # the model file remembers its task: sample it with an observation file alone
    model = output / "posterior.simgen"
    out = _ok(["sample", model, "--x-obs", tmp_path / "x_o.npy", "--num-samples", 50])
    assert "amplitude: mean" in out and "mV" in out
    # a changed setting is refused, naming it and the files to delete
    text = config.read_text().replace("max_epochs = 3", "max_epochs = 4")
    config.write_text(text)
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 2
    assert "train.max_epochs: 3 -> 4" in result.output and "posterior.simgen" in result.output


@pytest.mark.parametrize(
    "edit, named",
    [
        (("max_epochs = 200", "max_epoch = 200"), "unknown key 'max_epoch' in [train]"),
        (('file = "x_o.npy"', 'file = "missing.npy"'), "no such file"),
        (('"my_simulator:simulate"', '"not_a_module:simulate"'), "importing 'not_a_module'"),
    ],
)
def test_project_mistakes_are_one_line_with_exit_code_2(tmp_path, edit, named):
    _ok(["init", tmp_path])
    config = tmp_path / "simgen.toml"
    config.write_text(config.read_text().replace(*edit))
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert named in lines[-1] and lines[-1].startswith("error:"), result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "simgen_output" / "bank.zarr").exists()


def test_init_refuses_to_overwrite_and_version_prints(tmp_path):
    _ok(["init", tmp_path])
    result = runner.invoke(app, ["init", str(tmp_path)])
    assert result.exit_code == 2 and "already exist" in result.output
    assert _ok(["--version"]).startswith("simgen ")


def test_train_sequential_prints_the_rounds(tmp_path):
    from simulators import gaussian_linear

    x_obs = tmp_path / "x_o.pt"
    torch.save(gaussian_linear.x_o, x_obs)
    model = tmp_path / "seq.simgen"
    out = _ok(
        ["train", "gaussian_linear", model, "--sequential", "--x-obs", x_obs]
        + ["--num-simulations", 300, "--num-rounds", 2, "--max-epochs", 3]
    )
    assert "| round |" in out and out.count("| truncated") + out.count("| prior") >= 1
    assert model.stat().st_size > 0
    result = runner.invoke(app, ["train", "gaussian_linear", str(model), "--sequential"])
    assert result.exit_code == 2 and "--x-obs" in result.output
