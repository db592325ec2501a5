"""The ``simgen train``, ``sample`` and ``diagnose`` commands; :mod:`simgen.cli` registers them on
the app, after ``simulate``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from . import cli_common as common
from .errors import SimgenError, SimulationInterrupted


def _method(name: str, prior: Any, estimator: str) -> Any:
    from .errors import ConfigError
    from .inference import NLE, NPE, NRE

    if name == "npe":
        return NPE(prior, estimator=estimator)
    if name == "nle":
        return NLE(prior, estimator=estimator)
    if name in ("nre", "bnre"):
        return NRE(prior, balanced=name == "bnre")
    raise ConfigError(f"Unknown method {name!r}; use one of npe, nle, nre, bnre.")


@common._friendly
def train(
    task: str = typer.Argument(None, help="Built-in task or simulator module."),
    data: Path = typer.Argument(None, help="Data file (with --sequential: OUT)."),
    out: Path = typer.Argument(None),
    config: Path | None = typer.Option(None, help=common.CONFIG_HELP),
    sequential: bool = typer.Option(False, help="Rounds focused on --x-obs (simulates)."),
    x_obs: Path | None = typer.Option(None, help="--sequential: x_o (.npy, .pt or .csv)."),
    num_simulations: int = typer.Option(1000, help="--sequential: total over all rounds."),
    num_rounds: int = typer.Option(4, help="--sequential: rounds."),
    bank: Path | None = typer.Option(
        None, help="--sequential: folder of per-round banks (default: OUT.rounds, until done)."
    ),
    method: str = typer.Option("npe", help="npe, nle, nre or bnre (balanced NRE)."),
    estimator: str = typer.Option("nsf", help="Estimator family for npe/nle."),
    seed: int = 0,
    max_epochs: int = 1000,
    batch_size: int = 256,
    device: str = "cpu",
    joint_score: bool = typer.Option(
        False, help="npe/nle: also fit the joint score saved by `simulate --joint` (SCANDAL)."
    ),
) -> None:
    """Train on a data file written by `simgen simulate` and save the posterior to OUT.

    Examples: `simgen train two_moons data.pt model.simgen --max-epochs 200`;
    `simgen train two_moons model.simgen --sequential --x-obs x_o.npy --num-rounds 4`;
    `simgen train --config simgen.toml`.
    """
    from .errors import ConfigError

    if config is not None:
        return common._stage(config, "train")
    if sequential and out is None:
        data, out = None, data
    common._need(task=task, out=out) if sequential else common._need(task=task, data=data, out=out)
    out = common._out_path(out)
    common._count(seed, "--seed", low=0)
    common._count(max_epochs, "--max-epochs")
    common._count(batch_size, "--batch-size")
    if sequential:
        from .project import read_observation
        from .sequential import sequential as rounds

        if x_obs is None:
            raise ConfigError("--sequential needs --x-obs FILE (.npy, .pt or .csv): the x_o.")
        common._count(num_simulations, "--num-simulations", low=2)
        common._count(num_rounds, "--num-rounds")
        t = common._task(task)
        # Without --bank the rounds are kept beside OUT until the run has finished, so that a
        # late error or Ctrl-C loses no finished round: the same command resumes.
        folder = out.with_name(f"{out.stem}.rounds") if bank is None else bank.expanduser()
        try:
            posterior = rounds(
                _method(method, t.prior, estimator),
                t.simulator,
                read_observation(x_obs.expanduser()),
                num_simulations=num_simulations,
                num_rounds=num_rounds,
                seed=seed,
                bank=folder,
                progress=common._bars(),
                max_epochs=max_epochs,
                batch_size=batch_size,
                device=device,
            )
        except (SimgenError, SimulationInterrupted):
            if any(folder.glob("round_*")):
                typer.echo(f"the finished rounds are kept in {folder}; rerun to resume", err=True)
            raise
        posterior.save(out)
        if bank is None:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
        typer.echo(posterior.rounds.table())
        return common._echo(f"saved {out}")
    from .pipeline import read_data

    stored = read_data(data.expanduser())
    extra = {}
    if joint_score:
        if method not in ("npe", "nle"):
            raise ConfigError(f"--joint-score trains NPE or NLE only; got --method {method}.")
        if "joint_score" not in stored:
            raise ConfigError(f"{data} has no joint score; write it with `simulate --joint`.")
        extra["joint_score"] = stored["joint_score"]
    posterior = _method(method, common._task(task).prior, estimator).fit(
        stored["theta"],
        stored["x"],
        seed=seed,
        max_epochs=max_epochs,
        batch_size=batch_size,
        device=device,
        **extra,
    )
    posterior.save(out)
    h = posterior.history
    typer.echo(f"trained {h.epochs} epochs in {h.seconds:.1f} s; saved {out}")


@common._friendly
def sample(
    model: Path = typer.Argument(None, help="Model file (.simgen)."),
    task: str = typer.Argument(None, help="Built-in task: sample at its x_o."),
    x_obs: Path | None = typer.Option(None, help="Observation file (.npy, .pt or .csv)."),
    config: Path | None = typer.Option(None, help=common.CONFIG_HELP),
    num_samples: int = 10_000,
    out: Path | None = None,
    seed: int = 0,
) -> None:
    """Sample MODEL at an observation; print each parameter's mean and std, save if OUT.

    Examples: `simgen sample model.simgen --x-obs x_o.npy` (a model trained by `simgen run`
    names its parameters); `simgen sample model.simgen two_moons`;
    `simgen sample --config simgen.toml`.
    """
    from .errors import ConfigError
    from .pipeline import task_of
    from .project import read_observation
    from .serialization import load

    if config is not None:
        return common._stage(config, "sample")
    common._need(model=model)
    out = None if out is None else common._out_path(out)
    common._count(num_samples, "--num-samples")
    common._count(seed, "--seed", low=0)
    if (task is None) == (x_obs is None):
        raise ConfigError("Give either TASK (sample at its x_o) or --x-obs FILE, not both.")
    remembered = task_of(model.expanduser()) or {}
    t = None if task is None else common._task(task)
    x_o = t.x_o if t is not None else read_observation(x_obs.expanduser())
    posterior = load(model.expanduser())
    samples = posterior.sample((num_samples,), x=x_o, seed=seed)
    dim = samples.shape[-1]
    names = remembered.get("parameter_names") or [f"theta_{i}" for i in range(dim)]
    units = remembered.get("parameter_units") or [""] * dim
    for i, (m, s) in enumerate(zip(samples.mean(0).tolist(), samples.std(0).tolist())):
        unit = f" {units[i]}" if units[i] else ""
        true = "" if t is None else f" (true {float(t.theta_o[i]):.4f})"
        typer.echo(f"{names[i]}: mean {m:.4f} std {s:.4f}{unit}{true}")
    if out is not None:
        common._save({"samples": samples}, out)


@common._friendly
def diagnose(
    model: Path = typer.Argument(None, help="Model file (.simgen)."),
    task: str = typer.Argument(None, help="Built-in task or simulator module."),
    config: Path | None = typer.Option(None, help=common.CONFIG_HELP),
    report: Path = Path("report.md"),
    num_simulations: int = 500,
    num_samples: int = 500,
    seed: int = 0,
    reference: bool = typer.Option(
        None,
        help="C2ST against the task's reference posterior; by default only when it takes "
        f"under {common.REFERENCE_BUDGET_S:.0f} s (the task's REFERENCE_SECONDS).",
    ),
) -> None:
    """Run SBC, TARP, coverage, z-scores and a predictive check; write a report.

    Examples: `simgen diagnose model.simgen two_moons --report report.html`;
    `simgen diagnose --config simgen.toml`.
    """
    from .diagnostics import diagnose as run
    from .serialization import load

    if config is not None:
        return common._stage(config, "diagnose")
    common._need(model=model, task=task)
    report = common._out_path(report, "--report")
    common._count(num_simulations, "--num-simulations")
    common._count(num_samples, "--num-samples")
    common._count(seed, "--seed", low=0)
    t = common._task(task)
    if reference is None:
        reference = getattr(t, "REFERENCE_SECONDS", 0.0) <= common.REFERENCE_BUDGET_S
        if not reference and hasattr(t, "reference_posterior"):
            typer.echo(
                f"skipping the reference posterior of {task!r} (about "
                f"{t.REFERENCE_SECONDS:.0f} s); pass --reference to compute it"
            )
    reference_samples = None
    if reference and hasattr(t, "reference_posterior"):
        reference_samples = t.reference_posterior(t.x_o, 2000, seed=seed)
    result = run(
        load(model),
        t.prior,
        t.simulator,
        x_o=t.x_o,
        theta_o=t.theta_o,
        reference_samples=reference_samples,
        num_simulations=num_simulations,
        num_samples=num_samples,
        seed=seed,
        path=report,
    )
    typer.echo(f"passed: {result.passed}; report written to {report}")
