"""Train methods on shared simulations and score them by C2ST on many observations.

A *method* is a function ``(task, theta, x, seed) -> posterior`` whose posterior has
``.sample((n,), x=x_o)``. :data:`METHODS` holds simgen's front doors and the sbi 0.27
methods they are compared with (:data:`BASELINES`); ``name:key=json;key=json`` adds options
(``TrainConfig`` fields go to ``fit``, the rest to the front door), e.g.
``npe:estimator="maf";learning_rate=5e-4``.

:func:`evaluate_cell` runs one (task, budget, method, seed) cell: it trains on the given
simulations, draws ``num_samples`` at every observation of a set and scores each against the
observation's cached reference. Cells are kept as JSON in ``benchmarks/cells/evaluation/``
(tracked, :mod:`benchmarks.cell_files`), keyed by everything that determines them (task
source, observation data, method spec, the simgen source or the sbi version), so a long run
resumes where it stopped and a changed default recomputes its cells. :func:`summarise` and
:func:`table` turn cells into the task × budget × method table.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import statistics
import time
import warnings
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import torch

import simgen
from benchmarks import cell_files, harness
from simgen.diagnostics.c2st import c2st
from simgen.errors import ConfigError

__all__ = [
    "METHODS",
    "BASELINES",
    "parse_method",
    "training_data",
    "evaluate_cell",
    "summarise",
    "table",
]

Method = Callable[[Any, torch.Tensor, torch.Tensor, int], Any]


class _Quiet:
    """An sbi posterior whose ``sample`` shows no progress bar and takes x flattened.

    sbi's default NPE refuses an x of more than one dimension without an embedding net
    (cosmology_field's (32, 32) fields); simgen's flattens it, so sbi gets the same
    flattened numbers.
    """

    def __init__(self, posterior: Any, epochs: int | None = None):
        self.posterior = posterior
        self.epochs = epochs

    def sample(self, sample_shape, x):
        flat = x.reshape(1, -1) if x.dim() > 1 else x
        return self.posterior.sample(sample_shape, x=flat, show_progress_bars=False)


def _sbi_prior(prior):
    if isinstance(prior, simgen.BoxUniform):
        from sbi.utils import BoxUniform as SbiBox

        return SbiBox(prior.low, prior.high)
    return prior


#: Options of sbi's ``.train`` (the others go to the method's constructor).
_SBI_TRAIN = {
    "training_batch_size",
    "learning_rate",
    "validation_fraction",
    "stop_after_epochs",
    "max_num_epochs",
    "clip_max_norm",
}


def _sbi(cls: str, **options: Any) -> Method:
    train = {k: v for k, v in options.items() if k in _SBI_TRAIN}
    build = {k: v for k, v in options.items() if k not in _SBI_TRAIN}

    def fit(task, theta, x, seed):
        import sbi.inference as si

        torch.manual_seed(seed)
        inference = getattr(si, cls)(
            prior=_sbi_prior(task.prior), show_progress_bars=False, **build
        )
        flat = x.reshape(len(x), -1)
        inference.append_simulations(theta, flat).train(show_train_summary=False, **train)
        epochs = inference._summary["epochs_trained"]
        return _Quiet(inference.build_posterior(), epochs[-1] if epochs else None)

    return fit


_TRAIN_FIELDS = {f.name for f in dataclasses.fields(simgen.TrainConfig)}


def _simgen(front: str, **options: Any) -> Method:
    train = {k: v for k, v in options.items() if k in _TRAIN_FIELDS}
    build = {k: v for k, v in options.items() if k not in _TRAIN_FIELDS}

    def fit(task, theta, x, seed):
        return getattr(simgen, front)(task.prior, **build).fit(
            theta, x, progress=False, seed=seed, **train
        )

    return fit


#: name -> (library, factory of a method from options).
METHODS: dict[str, tuple[str, Callable[..., Method]]] = {
    "npe": ("simgen", lambda **o: _simgen("NPE", **o)),
    "fm": ("simgen", lambda **o: _simgen("NPE", **{"estimator": "flow_matching", **o})),
    "diffusion": ("simgen", lambda **o: _simgen("NPE", **{"estimator": "diffusion", **o})),
    "nle": ("simgen", lambda **o: _simgen("NLE", **o)),
    "nre": ("simgen", lambda **o: _simgen("NRE", **o)),
    "sbi_npe": ("sbi", lambda **o: _sbi("NPE", **{"density_estimator": "nsf", **o})),
    "sbi_fmpe": ("sbi", lambda **o: _sbi("FMPE", **o)),
    "sbi_npse": ("sbi", lambda **o: _sbi("NPSE", **o)),
    "sbi_nle": ("sbi", lambda **o: _sbi("NLE", **o)),
    "sbi_nre": ("sbi", lambda **o: _sbi("NRE_C", **o)),
}
#: simgen method -> the sbi method its CPU-time ratio is taken against.
BASELINES = {
    "npe": "sbi_npe",
    "fm": "sbi_fmpe",
    "diffusion": "sbi_npse",
    "nle": "sbi_nle",
    "nre": "sbi_nre",
}


def parse_method(spec: str) -> tuple[str, str, Method]:
    """``name[:key=json;...]`` -> (base name, library, method)."""
    name, _, opts = spec.partition(":")
    if name not in METHODS:
        raise ConfigError(f"Unknown method {name!r}; choose from {sorted(METHODS)}.")
    library, factory = METHODS[name]
    return name, library, factory(**parse_options(opts))


def parse_options(opts: str) -> dict:
    """``key=json;key=json`` -> a dict of options (the part of a method spec after ``:``)."""
    options = {}
    for item in filter(None, opts.split(";")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"Method option {item!r} must read key=value (value in JSON).")
        options[key] = json.loads(value)
    return options


def _epochs(posterior: Any) -> int | None:
    """The epochs a posterior's training ran (simgen's ``History``, sbi's summary), if known."""
    history = getattr(posterior, "history", None)
    if history is not None:
        return int(history.epochs)
    return getattr(posterior, "epochs", None)


def cell_line(cell: dict) -> str:
    """One cell's mean C2ST and CPU seconds (or its error) for a progress line."""
    scores = cell.get("c2st")
    if not scores:
        return cell.get("error", "")
    cpu = cell["train_cpu_s"] + cell["sample_cpu_s"]
    return f"C2ST {sum(scores) / len(scores):.3f}, {cpu:.1f} CPU s"


def training_data(task, budget: int, seed: int):
    """The training simulations of (task, budget, seed): the same for every method."""
    return simgen.simulate(task.simulator, task.prior, budget, seed=1_000_003 * (seed + 1) + budget)


@functools.lru_cache(maxsize=2)
def _code_key(library: str) -> str:
    """The version of the code a cell ran: sbi's version, or a hash of simgen's source as it
    was when this module was imported (so edits during a long run cannot relabel its cells)."""
    if library == "sbi":
        import sbi

        return f"sbi-{sbi.__version__}"
    digest = hashlib.sha256()
    for path in sorted(Path(simgen.__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return f"simgen-{digest.hexdigest()[:12]}"


_code_key("simgen")


def _cell_path(
    task_name, set_name, budget, spec, seed, num_samples, num_obs, refs, ref_options=None
) -> Path:
    """``<set>-n<budget>-<spec>-s<seed>-<data key>-<code key>.json``: the data key hashes the
    task source, the observations, the spec, the sample counts and the references' options
    (if any); the code key names the library version the cell ran with."""
    _, xs = harness.observations(task_name, set_name, num_obs)
    library = parse_method(spec)[1]
    key = [harness.source_hash(task_name), spec, str(num_samples), str(refs)]
    if ref_options:
        key.append(json.dumps(ref_options, sort_keys=True))
    digest = hashlib.sha256("|".join(key).encode())
    digest.update(xs.double().contiguous().numpy().tobytes())
    safe = "".join(c if c.isalnum() or c in "_-" else "_" for c in spec)[:60]
    name = f"{set_name}-n{budget}-{safe}-s{seed}-{digest.hexdigest()[:16]}-{_code_key(library)}"
    return cell_files.cells("evaluation") / task_name / f"{name}.json"


def cached_cell(
    task_name: str,
    set_name: str,
    budget: int,
    spec: str,
    seed: int,
    num_samples: int = 10_000,
    num_obs: int | None = None,
    reference_samples: int = harness.REFERENCE_SAMPLES,
    any_code: bool = False,
    reference_options: dict | None = None,
) -> dict | None:
    """The cached result of a cell (arguments as :func:`evaluate_cell`), or ``None``.

    With ``any_code``, a cell computed by another version of the library counts too (the
    newest one): for writing a table while the code changes under a long run.
    """
    path = _cell_path(
        task_name, set_name, budget, spec, seed, num_samples, num_obs, reference_samples,
        reference_options,
    )  # fmt: skip
    if (cell := cell_files.read_cell(path)) is not None:
        return cell
    if any_code:
        stem = path.name.rsplit("-", 2)[0]
        found = sorted(path.parent.glob(f"{stem}-*.json"), key=lambda f: f.stat().st_mtime)
        for other in reversed(found):
            if (cell := cell_files.read_cell(other)) is not None:
                return cell
    return None


def evaluate_cell(
    task_name: str,
    set_name: str,
    budget: int,
    spec: str,
    seed: int,
    data: tuple[torch.Tensor, torch.Tensor] | None = None,
    num_samples: int = 10_000,
    num_obs: int | None = None,
    reference_samples: int = harness.REFERENCE_SAMPLES,
    reference_options: dict | None = None,
) -> dict:
    """Train ``spec`` on (task, budget, seed)'s simulations and score every observation.

    ``data`` is the output of :func:`training_data` (pass it to share one simulation among
    methods). ``reference_options`` go to :func:`benchmarks.harness.reference` (a task's
    :data:`~benchmarks.harness.REFERENCE_OPTIONS`). C2ST uses the first ``num_samples``
    reference samples as the first set (the sbibm convention) and as many posterior samples,
    drawn with torch seeded by ``1000 * seed + observation index``. CPU seconds
    (``time.process_time``) of training and of drawing the samples are recorded, and the
    epochs training ran (``epochs``: where a CPU ratio comes from); C2ST itself is not timed.
    A failing method gives a cell with ``error`` set instead of scores.
    """
    _, library, method = parse_method(spec)
    path = _cell_path(
        task_name, set_name, budget, spec, seed, num_samples, num_obs, reference_samples,
        reference_options,
    )  # fmt: skip
    if (cached := cell_files.read_cell(path)) is not None:
        return cached
    task = harness.load_task(task_name)
    _, xs = harness.observations(task_name, set_name, num_obs)
    if num_samples > reference_samples:
        raise ConfigError(f"num_samples={num_samples} exceeds the {reference_samples} references.")
    refs = [
        harness.reference(task_name, set_name, i, reference_samples, options=reference_options)
        for i in range(len(xs))
    ]
    theta, x = training_data(task, budget, seed) if data is None else data
    cell: dict[str, Any] = {
        "code": _code_key(library),
        "task": task_name,
        "set": set_name,
        "budget": budget,
        "method": spec,
        "library": library,
        "seed": seed,
        "num_samples": num_samples,
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = time.process_time()
            posterior = method(task, theta, x, seed)
            cell["train_cpu_s"] = time.process_time() - start
            cell["epochs"] = _epochs(posterior)
            scores, sample_s = [], 0.0
            for i, (x_o, ref) in enumerate(zip(xs, refs)):
                start = time.process_time()
                with torch.random.fork_rng(devices=[]), torch.no_grad():
                    torch.manual_seed(1000 * seed + i)
                    samples = posterior.sample((num_samples,), x=x_o)
                sample_s += time.process_time() - start
                samples = samples.reshape(num_samples, -1)
                finite = torch.isfinite(samples).all(-1)
                # Non-finite draws are dropped; if fewer than 10 remain the observation scores 1.
                if int(finite.sum()) < 10:
                    scores.append(1.0)
                    continue
                scores.append(float(c2st(ref["samples"][:num_samples], samples[finite], seed=0)))
            cell["sample_cpu_s"] = sample_s
            cell["c2st"] = scores
    except Exception as exc:  # a failing method is a result to report, not a crash
        cell["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    cell_files.write_cell(path, cell, indent=1)
    return cell


def summarise(cells: list[dict], exclude: Collection[int] = ()) -> dict:
    """Aggregate the seeds of one (task, budget, method): see :func:`table` for the fields.

    ``exclude`` lists observations (indices in the set) left out of every statistic, those
    whose reference fails its check (:func:`benchmarks.harness.failed_references`); the
    summary names them (``excluded``) so that the table says so.
    """
    ok = [c for c in cells if "error" not in c]
    out: dict[str, Any] = {"seeds": len(ok), "errors": [c["error"] for c in cells if "error" in c]}
    out["excluded"] = sorted(exclude)
    if not ok:
        return out
    kept = [i for i in range(len(ok[0]["c2st"])) if i not in set(exclude)]
    if not kept:
        raise ConfigError(f"Every observation is excluded ({out['excluded']}); nothing to score.")
    per_seed = [statistics.mean(c["c2st"][i] for i in kept) for c in ok]
    per_obs = {i: statistics.mean(c["c2st"][i] for c in ok) for i in kept}
    worst = max(per_obs, key=per_obs.__getitem__)
    out.update(
        mean=statistics.mean(per_seed),
        spread=statistics.stdev(per_seed) if len(per_seed) > 1 else float("nan"),
        worst_obs=worst,
        worst=per_obs[worst],
        cpu_s=statistics.mean(c["train_cpu_s"] + c["sample_cpu_s"] for c in ok),
        cpu_total=sum(c["train_cpu_s"] + c["sample_cpu_s"] for c in ok),
        train_cpu_s=statistics.mean(c["train_cpu_s"] for c in ok),
        sample_cpu_s=statistics.mean(c["sample_cpu_s"] for c in ok),
        epochs=[c.get("epochs") for c in ok],
        seed_list=[c["seed"] for c in ok],
        code=sorted({c.get("code", "unrecorded") for c in ok}),
    )
    return out


HEADER = [
    "| task | sims | method | seeds | mean C2ST | spread | worst obs | CPU s / fit | "
    "CPU simgen/sbi |",
    "|---|---|---|---|---|---|---|---|---|",
]


def table(results: dict[tuple[str, int, str], dict], show_code: bool = False) -> list[str]:
    """Markdown rows from ``{(task, budget, method spec): summarise(...)}``.

    Columns: mean C2ST over observations and seeds; spread = standard deviation over seeds of
    the per-seed mean; worst obs = the observation (index in its set) with the highest C2ST
    averaged over seeds; CPU s / fit = training plus sampling at every observation, mean over
    seeds; CPU simgen/sbi = total CPU of a simgen method over that of its sbi baseline on
    the same seeds (:data:`BASELINES`). A task whose summary excludes observations reads
    ``task (without #i)``. With ``show_code`` a last column names the code versions each row's
    cells ran with (``summarise``'s ``code``), for a table whose rows ran different versions.
    """
    rows = list(HEADER)
    if show_code:
        rows = [rows[0] + " code |", rows[1] + "---|"]
    for (name, budget, spec), s in results.items():
        task = name
        if s.get("excluded"):
            task += " (without " + ", ".join(f"#{i}" for i in s["excluded"]) + ")"
        if not s.get("seeds"):
            # One line, no pipes: an error message must not break the Markdown row.
            first = " ".join(s["errors"][0].replace("|", "/").split()) if s.get("errors") else ""
            err = f"error: {first[:80]}" if first else "not run"
            rows.append(f"| {task} | {budget} | {spec} | 0 | {err} | | | | |" + " |" * show_code)
            continue
        ratio = ""
        base = BASELINES.get(spec.partition(":")[0])
        others = [
            r for (t, b, m), r in results.items()
            if base and (t, b) == (name, budget) and m.partition(":")[0] == base
        ]  # fmt: skip
        other = others[0] if len(others) == 1 else None
        if other and other.get("seeds") and other["seed_list"] == s["seed_list"]:
            ratio = f"{s['cpu_total'] / other['cpu_total']:.2f}"
        rows.append(
            f"| {task} | {budget} | {spec} | {s['seeds']} | {s['mean']:.3f} | "
            f"{s['spread']:.3f} | {s['worst']:.3f} (#{s['worst_obs']}) | {s['cpu_s']:.1f} | "
            f"{ratio} |" + (f" {', '.join(s.get('code', []))} |" if show_code else "")
        )
    return rows
