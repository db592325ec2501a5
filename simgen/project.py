"""The project file ``simgen.toml``: a user's simulator, prior, observation and settings.

``simgen init`` writes an example; ``simgen run simgen.toml`` runs every stage of
:mod:`simgen.pipeline` on it. The file is read with :mod:`tomllib` and checked here, section
by section, into frozen dataclasses: an unknown key, a value of the wrong type or out of
range is a :class:`~simgen.errors.ConfigError` that names ``[section] key`` and the fix.

Sections (all but ``[simulator]``, ``[prior]`` and ``[observation]`` optional)::

    seed, device, output          top level
    [simulator] path, batched     "module:function", importable from the project folder;
                kind = function | pyro; theta_site, x_site (a pyro model's sample sites)
    [prior] kind = box | gaussian | object; low/high, mean/std, or object = "module:name"
    [parameters] names, units
    [observation] file            .npy, .pt or .csv
    [simulate] num_simulations, batch_size
    [train] method, estimator, max_epochs, batch_size, patience, learning_rate
    [sample] num_samples
    [diagnose] num_simulations, num_samples
    [sequential] enabled, num_simulations, num_rounds

Each stage of the pipeline depends on a stated part of this file (:meth:`Project.fingerprint`),
so a finished stage is reused only while that part is unchanged.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import tomllib

from .errors import ConfigError

__all__ = ["Project", "load_project", "import_object", "read_observation"]

METHODS = ("npe", "nle", "nre", "bnre")
PRIOR_KINDS = ("box", "gaussian", "object")

# The accepted TOML types of each annotation used below.
_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "str | None": (str, type(None)),
    "bool": (bool,),
    "int": (int,),
    "int | None": (int, type(None)),
    "float": (int, float),
    "list[float] | None": (list, type(None)),
    "list[str]": (list,),
}


def _where(section: str, key: str) -> str:
    return f"[{section}] {key}" if section else key


def _check_positive(value: int | float | None, section: str, key: str, low: float = 1) -> None:
    if value is not None and value < low:
        raise ConfigError(f"simgen.toml: {_where(section, key)} = {value}; it must be >= {low}.")


@dataclass(frozen=True)
class SimulatorSection:
    """``path``: "module:function"; ``batched``: whether it takes θ ``(N, D)`` (else one θ
    ``(D,)`` a call, run as ``FunctionSimulator(fn, vectorized=False)``, a seed per row);
    ``kind = "pyro"``: the function is a pyro model ``model(num_simulations)`` read through
    :func:`simgen.from_pyro` with its θ and x sample sites ``theta_site`` and ``x_site``."""

    path: str = ""
    batched: bool = False
    kind: str = "function"
    theta_site: str = "theta"
    x_site: str = "x"

    def __post_init__(self) -> None:
        if self.path.count(":") != 1 or not all(self.path.split(":")):
            raise ConfigError(
                f"simgen.toml: [simulator] path = {self.path!r}; write it as "
                '"module:function", e.g. path = "my_simulator:simulate".'
            )
        if self.kind not in ("function", "pyro"):
            raise ConfigError(
                f'simgen.toml: [simulator] kind = {self.kind!r}; use "function" (a Python '
                'simulator) or "pyro" (a pyro model).'
            )


@dataclass(frozen=True)
class PriorSection:
    kind: str = "box"
    low: list[float] | None = None
    high: list[float] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    object: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in PRIOR_KINDS:
            raise ConfigError(
                f"simgen.toml: [prior] kind = {self.kind!r}; use one of {', '.join(PRIOR_KINDS)}."
            )
        need = {"box": ("low", "high"), "gaussian": ("mean", "std"), "object": ("object",)}
        for key in need[self.kind]:
            if getattr(self, key) is None:
                raise ConfigError(f"simgen.toml: [prior] kind = {self.kind!r} needs {key}.")
        a, b = {"box": ("low", "high"), "gaussian": ("mean", "std")}.get(self.kind, (None, None))
        if a is None:
            return
        va, vb = getattr(self, a), getattr(self, b)
        for key, v in ((a, va), (b, vb)):
            if not v or not all(isinstance(e, int | float) and not isinstance(e, bool) for e in v):
                raise ConfigError(f"simgen.toml: [prior] {key} must be a list of numbers.")
        if len(va) != len(vb):
            raise ConfigError(
                f"simgen.toml: [prior] {a} has {len(va)} entries and {b} {len(vb)}; give one "
                "per parameter in both."
            )
        if self.kind == "box" and any(lo >= hi for lo, hi in zip(va, vb)):
            raise ConfigError("simgen.toml: [prior] every low must be below its high.")
        if self.kind == "gaussian" and any(s <= 0 for s in vb):
            raise ConfigError("simgen.toml: [prior] every std must be positive.")


@dataclass(frozen=True)
class ParametersSection:
    names: list[str] = field(default_factory=list)
    units: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ObservationSection:
    file: str = ""

    def __post_init__(self) -> None:
        if Path(self.file).suffix not in (".npy", ".pt", ".csv"):
            raise ConfigError(
                f"simgen.toml: [observation] file = {self.file!r}; give a .npy, .pt or .csv file."
            )


@dataclass(frozen=True)
class SimulateSection:
    num_simulations: int = 1000
    batch_size: int = 100

    def __post_init__(self) -> None:
        _check_positive(self.num_simulations, "simulate", "num_simulations", 2)
        _check_positive(self.batch_size, "simulate", "batch_size")


@dataclass(frozen=True)
class TrainSection:
    """Defaults are ``TrainConfig``'s but 200 epochs, so the example finishes in minutes."""

    method: str = "npe"
    estimator: str = "nsf"
    max_epochs: int = 200
    batch_size: int = 256
    patience: int = 20
    learning_rate: float = 1e-3

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(
                f"simgen.toml: [train] method = {self.method!r}; use one of {', '.join(METHODS)}."
            )
        for key in ("max_epochs", "batch_size", "patience"):
            _check_positive(getattr(self, key), "train", key)
        if not self.learning_rate > 0:
            raise ConfigError("simgen.toml: [train] learning_rate must be positive.")


@dataclass(frozen=True)
class SampleSection:
    num_samples: int = 10_000

    def __post_init__(self) -> None:
        _check_positive(self.num_samples, "sample", "num_samples")


@dataclass(frozen=True)
class DiagnoseSection:
    num_simulations: int = 200
    num_samples: int = 200

    def __post_init__(self) -> None:
        _check_positive(self.num_simulations, "diagnose", "num_simulations", 2)
        _check_positive(self.num_samples, "diagnose", "num_samples")


@dataclass(frozen=True)
class SequentialSection:
    """``num_simulations`` defaults to ``[simulate] num_simulations`` (the total budget)."""

    enabled: bool = False
    num_simulations: int | None = None
    num_rounds: int = 4

    def __post_init__(self) -> None:
        _check_positive(self.num_simulations, "sequential", "num_simulations", 2)
        _check_positive(self.num_rounds, "sequential", "num_rounds")


SECTIONS: dict[str, type] = {
    "simulator": SimulatorSection,
    "prior": PriorSection,
    "parameters": ParametersSection,
    "observation": ObservationSection,
    "simulate": SimulateSection,
    "train": TrainSection,
    "sample": SampleSection,
    "diagnose": DiagnoseSection,
    "sequential": SequentialSection,
}
REQUIRED = ("simulator", "prior", "observation")
TOP_LEVEL: dict[str, tuple[type, ...]] = {"seed": (int,), "device": (str,), "output": (str,)}


def _unknown(key: str, known: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return ConfigError(
        f"simgen.toml: unknown key {key!r} in {where}; {hint}known keys: {', '.join(known)}."
    )


def _section(name: str, table: Any) -> Any:
    cls = SECTIONS[name]
    if not isinstance(table, dict):
        raise ConfigError(f"simgen.toml: [{name}] must be a table (a [{name}] header).")
    types = {f.name: _TYPES[str(f.type)] for f in fields(cls)}
    for key, value in table.items():
        if key not in types:
            raise _unknown(key, list(types), f"[{name}]")
        ok = isinstance(value, types[key]) and not (
            isinstance(value, bool) and bool not in types[key]
        )
        if not ok:
            wanted = " or ".join("none" if t is type(None) else t.__name__ for t in types[key])
            raise ConfigError(
                f"simgen.toml: [{name}] {key} = {value!r} is a {type(value).__name__}; "
                f"it must be a {wanted}."
            )
    return cls(**table)


@dataclass(frozen=True)
class Project:
    """A checked ``simgen.toml``; paths in it are relative to ``root``, its folder."""

    root: Path
    simulator: SimulatorSection
    prior: PriorSection
    observation: ObservationSection
    parameters: ParametersSection = field(default_factory=ParametersSection)
    simulate: SimulateSection = field(default_factory=SimulateSection)
    train: TrainSection = field(default_factory=TrainSection)
    sample: SampleSection = field(default_factory=SampleSection)
    diagnose: DiagnoseSection = field(default_factory=DiagnoseSection)
    sequential: SequentialSection = field(default_factory=SequentialSection)
    seed: int = 0
    device: str = "cpu"
    output: str = "simgen_output"

    def __post_init__(self) -> None:
        _check_positive(self.seed, "", "seed", 0)
        names, units = self.parameters.names, self.parameters.units
        if units and len(units) != len(names):
            raise ConfigError(
                f"simgen.toml: [parameters] has {len(names)} names and {len(units)} units; "
                'give one unit per name ("" for none).'
            )

    @property
    def out(self) -> Path:
        return self.root / self.output

    def settings(self) -> dict[str, Any]:
        """The file's settings as plain JSON (what model files and stage records store)."""
        data = asdict(self)
        data.pop("root")
        return data

    def fingerprint(self, stage: str) -> dict[str, Any]:
        """The settings ``stage`` depends on, including those of the stages before it."""
        s = self.settings()
        simulate = {"seed": s["seed"], **{k: s[k] for k in ("simulator", "prior", "simulate")}}
        if stage == "simulate":
            return simulate
        if self.sequential.enabled:
            train = {"seed": s["seed"], **{k: s[k] for k in ("simulator", "prior")}}
            train.update(sequential=s["sequential"], observation=self.observation_hash())
            if self.sequential.num_simulations is None:
                train["simulate"] = s["simulate"]
        else:
            train = dict(simulate)
        train.update(train=s["train"], device=s["device"])
        if stage == "train":
            return train
        after = {**train, "observation": self.observation_hash()}
        if stage == "sample":
            return {**after, "sample": s["sample"]}
        if stage == "diagnose":
            return {**after, "diagnose": s["diagnose"]}
        if stage == "report":
            return {**after, "sample": s["sample"], "diagnose": s["diagnose"]}
        raise ConfigError(f"Unknown stage {stage!r}.")

    def observation_path(self) -> Path:
        return (self.root / self.observation.file).expanduser()

    def observation_hash(self) -> str:
        path = self.observation_path()
        if not path.exists():
            raise _missing_observation(self.observation.file, path)
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]

    def x_o(self) -> Any:
        return read_observation(self.observation_path(), self.observation.file)

    def make_prior(self) -> Any:
        import torch

        from .priors import BoxUniform, check_prior

        p = self.prior
        if p.kind == "box":
            prior = BoxUniform(torch.tensor(p.low), torch.tensor(p.high))
        elif p.kind == "gaussian":
            normal = torch.distributions.Normal(torch.tensor(p.mean), torch.tensor(p.std))
            prior = torch.distributions.Independent(normal, 1)
        else:
            prior = import_object(p.object, self.root, "[prior] object")
            if callable(prior) and not isinstance(prior, torch.distributions.Distribution):
                prior = prior()
        check_prior(prior)
        dim = int(prior.event_shape[0]) if prior.event_shape else 1
        names = self.parameters.names
        if names and len(names) != dim:
            raise ConfigError(
                f"simgen.toml: [parameters] names has {len(names)} entries but the prior has "
                f"{dim} parameters; give one name per parameter."
            )
        return prior

    def parameter_names(self, dim: int) -> list[str]:
        return list(self.parameters.names) or [f"theta_{i}" for i in range(dim)]

    def labels(self, dim: int) -> list[str]:
        """Axis labels: each name with its unit in brackets when it has one."""
        units = list(self.parameters.units) or [""] * dim
        return [f"{n} [{u}]" if u else n for n, u in zip(self.parameter_names(dim), units)]

    def make_simulator(self) -> Any:
        fn = import_object(self.simulator.path, self.root, "[simulator] path")
        if not callable(fn):
            raise ConfigError(
                f"simgen.toml: [simulator] path = {self.simulator.path!r} is a "
                f"{type(fn).__name__}, not a function."
            )
        if self.simulator.kind == "pyro":
            from .simulator import from_pyro

            return from_pyro(fn, theta_site=self.simulator.theta_site, x_site=self.simulator.x_site)
        if self.simulator.batched:
            return fn
        from .simulator import FunctionSimulator  # one θ a call, a seed per row (external.py)

        return FunctionSimulator(fn, vectorized=False)


def import_object(spec: str, root: Path, key: str) -> Any:
    """``"module:name"`` imported with ``root`` first on ``sys.path``."""
    module_name, _, name = spec.partition(":")
    root = Path(root).resolve()
    # A module of this name imported from another folder (another project) is dropped, so
    # that this project's file is the one imported.
    top = module_name.split(".")[0]
    cached_file = getattr(sys.modules.get(top), "__file__", None) or ""
    ours = (root / f"{top}.py").exists() or (root / top).is_dir()
    if top in sys.modules and ours and not Path(cached_file).resolve().is_relative_to(root):
        for k in [k for k in sys.modules if k.split(".")[0] == top]:
            del sys.modules[k]
    sys.path.insert(0, str(root))
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any failure of the user's import, one line
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ConfigError(
            f"simgen.toml: {key} = {spec!r}: importing {module_name!r} from {root} failed "
            f"({type(exc).__name__}: {first}); put {module_name.replace('.', '/')}.py in the "
            "project folder or fix the name."
        ) from exc
    finally:
        sys.path.remove(str(root))
    if not hasattr(module, name):
        raise ConfigError(
            f"simgen.toml: {key} = {spec!r}: module {module_name!r} has no {name!r}; "
            f"it has {', '.join(n for n in dir(module) if not n.startswith('_'))}."
        )
    return getattr(module, name)


def _missing_observation(given: str, path: Path) -> ConfigError:
    return ConfigError(
        f"simgen.toml: [observation] file = {given!r}: no such file {path}; save your "
        "observation there (numpy.save, torch.save or a one-row .csv)."
    )


def read_observation(path: Path, given: str | None = None) -> Any:
    """One observation x_o from a ``.npy``, ``.pt`` (a tensor, or a dict with ``x_o``) or
    ``.csv`` (numbers separated by commas) file, as a float32 tensor."""
    import numpy as np
    import torch

    given = str(path) if given is None else given
    path = Path(path).expanduser()
    if not path.exists():
        raise _missing_observation(given, path)
    try:
        if path.suffix == ".npy":
            value = torch.as_tensor(np.load(path, allow_pickle=False))
        elif path.suffix == ".pt":
            value = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(value, dict):
                value = value.get("x_o", value.get("x"))
            value = torch.as_tensor(value)
        elif path.suffix == ".csv":
            value = torch.as_tensor(np.loadtxt(path, delimiter=",", ndmin=1))
        else:
            raise ValueError("the file name must end in .npy, .pt or .csv")
    except Exception as exc:  # noqa: BLE001 - any unreadable file, one line
        raise ConfigError(
            f"observation file {path} could not be read ({type(exc).__name__}); save one "
            "observation as .npy (numpy.save), .pt (torch.save) or .csv."
        ) from exc
    value = value.to(torch.float32)
    if not torch.isfinite(value).all():
        raise ConfigError(f"observation file {path} holds NaN or inf; x_o must be finite.")
    return value


def load_project(path: str | Path) -> Project:
    """Read and check ``simgen.toml`` (see the module docstring for its keys)."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "simgen.toml"
    if not path.exists():
        raise ConfigError(f"No project file at {path}; write an example with `simgen init`.")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}.") from exc
    for name in REQUIRED:
        if name not in data:
            raise ConfigError(f"simgen.toml: the [{name}] section is missing; see `simgen init`.")
    known = [*TOP_LEVEL, *SECTIONS]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS:
            kwargs[key] = _section(key, value)
        elif key in TOP_LEVEL:
            if not isinstance(value, TOP_LEVEL[key]) or isinstance(value, bool):
                raise ConfigError(
                    f"simgen.toml: {key} = {value!r}; it must be a {TOP_LEVEL[key][0].__name__}."
                )
            kwargs[key] = value
        else:
            raise _unknown(key, known, "the top level")
    return Project(root=path.parent.resolve(), **kwargs)
