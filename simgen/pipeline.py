"""The stages of ``simgen run``: simulate → train → sample → diagnose → report.

Each stage reads a :class:`~simgen.project.Project`, writes its files under the project's
``output`` folder and, when it finishes, a record ``stages/<stage>.json`` holding
:meth:`Project.fingerprint` of the settings it depends on. Running a stage again reuses its
files while the record matches; a changed setting is refused with a :class:`ConfigError`
naming the changed keys and what to delete. Simulations go to a bank (``bank.zarr``), so an
interrupted simulate stage resumes where it stopped; a sequential run keeps its rounds in
``sequential/``, which resumes the same way.

Files: ``bank.zarr``, ``posterior.simgen`` (its spec's ``task`` field holds the parameter
names, units, simulator path and the project's settings), ``samples.pt``, ``report.html``
(the diagnostics), ``diagnostics.json``, ``summary.md`` (the report stage).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .project import Project

__all__ = ["STAGES", "run_stage", "run_all", "task_of", "write_task"]

STAGES = ("simulate", "train", "sample", "diagnose", "report")


def find_task(name: str) -> Any:
    """A built-in task (``simulators.get``), or a simulator module importable from the
    current folder (one with ``prior`` and ``simulator``)."""
    import importlib
    import os

    import simulators

    from .errors import UnknownSimulatorError

    try:
        return simulators.get(name)
    except UnknownSimulatorError:
        sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - not a module either: the registry's message
            module = None
        finally:
            sys.path.remove(os.getcwd())
        if module is not None and hasattr(module, "prior") and hasattr(module, "simulator"):
            return module
        raise


def read_data(path: Path) -> dict:
    """The data file's tensors: ``theta``, ``x`` and, if simulated with --joint, the rest."""
    import torch

    from .errors import ModelFileError

    if not path.exists():
        raise ModelFileError(f"{path} does not exist; write one with `simgen simulate`.")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        data["theta"], data["x"]  # noqa: B018 - both must be there
        return data
    except Exception as exc:  # noqa: BLE001
        raise ModelFileError(
            f"{path} is not a simgen data file with 'theta' and 'x' "
            f"({type(exc).__name__}); write one with `simgen simulate`."
        ) from exc


def show_warnings(caught: list, verbose: bool, echo: Callable[[str], None]) -> None:
    """simgen's own warnings as one line each, once; other libraries' only if ``verbose``."""
    seen = set()
    for w in caught:
        ours = type(w.message).__module__.startswith("simgen")
        text = str(w.message).splitlines()[0] if str(w.message) else type(w.message).__name__
        if (ours or verbose) and text not in seen:
            seen.add(text)
            echo(f"warning: {text}")


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _diff(old.get(key), new.get(key), f"{prefix}{'.' if prefix else ''}{key}")
        return out
    return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]


def _done(project: Project, stage: str, files: list[Path]) -> bool:
    """Whether ``stage`` finished with the current settings; refuse a changed config."""
    record = project.out / "stages" / f"{stage}.json"
    if not record.exists():
        return False
    old = json.loads(record.read_text())
    changes = _diff(old, json.loads(json.dumps(project.fingerprint(stage))))
    if changes:
        paths = " and ".join(str(p) for p in [*files, record])
        raise ConfigError(
            f"simgen.toml changed since the {stage} stage ran ({'; '.join(changes[:3])}); "
            f"delete {paths} to redo it, or set output to a new folder."
        )
    return all(p.exists() for p in files)


def _record(project: Project, stage: str) -> None:
    folder = project.out / "stages"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stage}.json").write_text(json.dumps(project.fingerprint(stage), indent=1))


def _progress(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


def write_task(path: Path, project: Project, x_shape: list[int], dim: int) -> None:
    """Store the project's task in the model file's spec (its ``task`` field)."""
    from .serialization import read_model, save_model

    spec, state = read_model(path)
    spec["task"] = {
        "parameter_names": project.parameter_names(dim),
        "parameter_units": list(project.parameters.units) or [""] * dim,
        "simulator": project.simulator.path,
        "batched": project.simulator.batched,
        "project": str(project.root),
        "x_shape": list(x_shape),
        "settings": project.settings(),
    }
    save_model(path, spec, state)


def task_of(path: Path) -> dict[str, Any] | None:
    """The ``task`` a model file remembers, or ``None`` for a file trained outside a project."""
    from .serialization import check_spec, read_model

    spec, _ = read_model(path)
    check_spec(spec, repr(str(path)))
    return spec.get("task")


def _method(project: Project, prior: Any) -> Any:
    from .inference import NLE, NPE, NRE

    t = project.train
    if t.method == "npe":
        return NPE(prior, estimator=t.estimator)
    if t.method == "nle":
        return NLE(prior, estimator=t.estimator)
    return NRE(prior, balanced=t.method == "bnre")


def _fit_options(project: Project, quiet: bool) -> dict[str, Any]:
    t = project.train
    return {
        "max_epochs": t.max_epochs,
        "batch_size": t.batch_size,
        "patience": t.patience,
        "learning_rate": t.learning_rate,
        "device": project.device,
        "progress": _progress(quiet),
    }


def stage_simulate(project: Project, echo: Callable[[str], None], quiet: bool) -> None:
    from .simulate import simulate

    if project.sequential.enabled:
        echo("simulate: skipped ([sequential] enabled: the train stage simulates each round)")
        return
    bank = project.out / "bank.zarr"
    if _done(project, "simulate", [bank]):
        echo(f"simulate: reusing {bank}")
        return
    project.out.mkdir(parents=True, exist_ok=True)
    s = project.simulate
    result = simulate(
        project.make_simulator(),
        project.make_prior(),
        s.num_simulations,
        seed=project.seed,
        batch_size=min(s.batch_size, s.num_simulations),
        progress=_progress(quiet),
        bank=bank,
    )
    _record(project, "simulate")
    echo(f"simulate: {len(result.theta)} simulations in {bank}")


def stage_train(project: Project, echo: Callable[[str], None], quiet: bool) -> None:
    from .simulate import read_bank

    model = project.out / "posterior.simgen"
    if _done(project, "train", [model]):
        echo(f"train: reusing {model}")
        return
    prior = project.make_prior()
    options = _fit_options(project, quiet)
    if project.sequential.enabled:
        from .sequential import sequential

        q = project.sequential
        posterior = sequential(
            _method(project, prior),
            project.make_simulator(),
            project.x_o(),
            num_simulations=q.num_simulations or project.simulate.num_simulations,
            num_rounds=q.num_rounds,
            seed=project.seed,
            bank=project.out / "sequential",
            batch_size=project.simulate.batch_size,
            **options,
        )
        lines = [posterior.rounds.table()]
    else:
        if not _done(project, "simulate", [project.out / "bank.zarr"]):
            raise ConfigError(
                "train: no finished simulations for this simgen.toml; run `simgen simulate "
                "--config simgen.toml` (or `simgen run`) first."
            )
        sims = read_bank(project.out / "bank.zarr")
        posterior = _method(project, prior).fit(sims.theta, sims.x, seed=project.seed, **options)
        h = posterior.history
        lines = [
            f"train: {h.epochs} epochs in {h.seconds:.1f} s, best validation loss "
            f"{h.best_validation_loss:.3f}"
        ]
    # Saved before anything else can fail (a closed stdout, a bad setting): no error after
    # training may lose the trained model.
    posterior.save(model)
    write_task(model, project, list(posterior.x_shape), posterior.theta_dim)
    _record(project, "train")
    for line in [*lines, f"train: saved {model}"]:
        echo(line)


def _posterior(project: Project) -> Any:
    from .serialization import load

    model = project.out / "posterior.simgen"
    if not _done(project, "train", [model]):
        raise ConfigError(
            "no trained model for this simgen.toml; run `simgen train --config simgen.toml` "
            "(or `simgen run`) first."
        )
    return load(model, prior=project.make_prior(), device=project.device)


def summary_rows(samples: Any, labels: list[str]) -> list[str]:
    """A markdown table of each parameter's mean, std and 5%-95% interval."""
    import torch

    q = torch.quantile(samples.double(), torch.tensor([0.05, 0.95], dtype=torch.float64), dim=0)
    rows = ["| parameter | mean | std | 5% | 95% |", "|---|---|---|---|---|"]
    for i, label in enumerate(labels):
        col = samples[:, i]
        rows.append(
            f"| {label} | {col.mean():.4g} | {col.std():.4g} | {q[0, i]:.4g} | {q[1, i]:.4g} |"
        )
    return rows


def stage_sample(project: Project, echo: Callable[[str], None], quiet: bool) -> None:
    import torch

    path = project.out / "samples.pt"
    if _done(project, "sample", [path]):
        echo(f"sample: reusing {path}")
        return
    posterior = _posterior(project)
    x_o = project.x_o()
    kwargs = {"seed": project.seed}
    samples = posterior.sample((project.sample.num_samples,), x=x_o, **kwargs)
    torch.save({"samples": samples, "x_o": x_o}, path)
    _record(project, "sample")
    echo(f"sample: {len(samples)} posterior samples at x_o in {path}")
    echo("\n".join(summary_rows(samples, project.labels(samples.shape[-1]))))


def stage_diagnose(project: Project, echo: Callable[[str], None], quiet: bool) -> None:
    from .diagnostics import diagnose
    from .priors import prior_dim
    from .serialization import read_model

    report, data = project.out / "report.html", project.out / "diagnostics.json"
    if _done(project, "diagnose", [report, data]):
        echo(f"diagnose: reusing {report}")
        return
    if project.sequential.enabled:
        data.write_text(json.dumps({"passed": None, "skipped": "sequential"}))
        report.write_text(
            "<p>Calibration over the prior (SBC, TARP, coverage) does not apply to a "
            "sequential posterior, which is trained for x_o only.</p>"
        )
        _record(project, "diagnose")
        echo("diagnose: skipped calibration (a sequential posterior is trained for x_o only)")
        return
    d = project.diagnose
    prior = project.make_prior()
    posterior = _posterior(project)
    if getattr(posterior, "history", None) is None:  # the report's training curve
        posterior.history = read_model(project.out / "posterior.simgen")[0].get("history")
    result = diagnose(
        posterior,
        prior,
        project.make_simulator(),
        x_o=project.x_o(),
        num_simulations=d.num_simulations,
        num_samples=d.num_samples,
        seed=project.seed,
        labels=project.labels(prior_dim(prior)),
    )
    # The results first, then the report and its figures, which may fail on their own.
    data.write_text(
        json.dumps({**result.to_dict(), "summary": result.summary()}, indent=1, default=str)
    )
    result.write(report)
    _record(project, "diagnose")
    echo(f"diagnose: {result.summary()}\ndiagnose: report in {report}")


def stage_report(project: Project, echo: Callable[[str], None], quiet: bool) -> None:
    import torch

    files = [project.out / n for n in ("samples.pt", "diagnostics.json")]
    for stage, path in zip(("sample", "diagnose"), files):
        if not _done(project, stage, [path]):
            raise ConfigError(f"report: run the {stage} stage first (`simgen run` runs all).")
    samples = torch.load(files[0], weights_only=True)["samples"]
    diagnostics = json.loads(files[1].read_text())
    lines = [
        f"# simgen report: {project.simulator.path}",
        "",
        f"Posterior at the observation {project.observation.file} "
        f"({len(samples)} samples, method {project.train.method}, "
        f"estimator {project.train.estimator}, seed {project.seed}).",
        "",
        *summary_rows(samples, project.labels(samples.shape[-1])),
        "",
        "Calibration (details and figures: report.html):",
        "",
        "```",
        diagnostics.get("summary", diagnostics.get("verdict", "")),
        "```",
    ]
    path = project.out / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    _record(project, "report")
    echo(f"report: {path}")


STAGE_FUNCTIONS = {
    "simulate": stage_simulate,
    "train": stage_train,
    "sample": stage_sample,
    "diagnose": stage_diagnose,
    "report": stage_report,
}


def run_stage(
    project: Project, stage: str, echo: Callable[[str], None] = print, quiet: bool = False
) -> None:
    """Run one stage (the ones before it must have finished)."""
    if stage not in STAGE_FUNCTIONS:
        raise ConfigError(f"Unknown stage {stage!r}; the stages are {', '.join(STAGES)}.")
    # every file the project names is checked before any work starts
    project.make_prior(), project.make_simulator(), project.x_o()
    project.out.mkdir(parents=True, exist_ok=True)
    STAGE_FUNCTIONS[stage](project, echo, quiet)


def run_all(project: Project, echo: Callable[[str], None] = print, quiet: bool = False) -> Path:
    """Every stage in turn, each reused where it already finished; returns the summary."""
    for stage in STAGES:
        run_stage(project, stage, echo, quiet)
    return project.out / "summary.md"
