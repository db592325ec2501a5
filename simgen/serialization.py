"""The model file format: weights plus a JSON spec, loadable without executing code.

A ``.simgen`` file is ``torch.save`` of a dict with plain types only::

    {"format": "simgen-model", "version": 1, "spec": "<JSON text>", "state_dict": {...}}

It is read back with ``torch.load(..., weights_only=True)``, which refuses arbitrary objects,
so a foreign or malicious file cannot run code; anything that is not a simgen model of a
known version raises :class:`~simgen.errors.ModelFileError`.

A file is also checked before anything is built from it, so that a small hostile or damaged
file can neither allocate gigabytes nor end in a raw ``TypeError``/``RecursionError``:

* the spec is JSON nested at most :data:`MAX_DEPTH` deep, with only the fields in
  :data:`SPEC_FIELDS`, each of the right type (``x_shape`` and ``theta_dim`` positive
  integers, ``default_x`` finite numbers of shape ``x_shape``);
* every stored tensor is finite, and every stored ``scale`` (the z-scoring) is positive;
* the shapes the spec implies for the z-scoring (``theta_dim``, ``x_shape``) equal the
  stored ones, and the network is built under an allocation budget of
  :data:`BUDGET_SLACK` bytes plus :data:`BUDGET_FACTOR` times the stored weights' size: a spec
  that asks for far more than its weights is refused before the memory is taken; after the
  build, every parameter's shape must equal the stored one;
* ``device`` must name a device this machine has.

Every failure is a :class:`~simgen.errors.ModelFileError` naming the field.
"""

from __future__ import annotations

import importlib
import json
import math
import os
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

from .errors import ModelFileError, NotFittedError, SimgenError

__all__ = ["FORMAT", "VERSION", "save_model", "read_model", "load"]

FORMAT = "simgen-model"
VERSION = 1

#: The ``"posterior"`` field of a spec → "module:Class" with a ``_from_file`` classmethod.
POSTERIOR_KINDS: dict[str, str] = {
    "direct": "simgen.posterior:DirectPosterior",
    "mcmc": "simgen.mcmc_posterior:MCMCPosterior",
    "ensemble": "simgen.ensemble:Ensemble",
}


def save_model(
    path: str | os.PathLike, spec: dict[str, Any], state_dict: dict[str, Tensor]
) -> None:
    """Write ``spec`` (JSON-able) and ``state_dict`` (tensors) to ``path`` atomically."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "spec": json.dumps(spec),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
    }
    tmp = f"{os.fspath(path)}.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def read_model(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Read ``(spec, state_dict)`` from a model file, validating its format and version."""
    if not os.path.exists(path):
        raise ModelFileError(f"No model file at {os.fspath(path)!r}.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every unreadable file gets the same clear error
        raise ModelFileError(
            f"{os.fspath(path)!r} is not a simgen model file (it could not be read as one: "
            f"{type(exc).__name__}). Save models with posterior.save(path)."
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(
            f"{os.fspath(path)!r} is a torch file but not a simgen model (no "
            f"'format': {FORMAT!r}). Save models with posterior.save(path)."
        )
    if payload.get("version") != VERSION:
        raise ModelFileError(
            f"{os.fspath(path)!r} has format version {payload.get('version')!r}; this simgen "
            f"reads version {VERSION}. Re-save it with a matching simgen."
        )
    try:
        spec = json.loads(payload["spec"])
        state = dict(payload["state_dict"])
    except RecursionError as exc:
        raise ModelFileError(
            f"{os.fspath(path)!r}: the spec is nested too deeply to read; the file is damaged "
            "or not from simgen."
        ) from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{os.fspath(path)!r} is corrupt: {exc}.") from exc
    return spec, state


#: Fields a saved spec may hold, with the JSON types each may take.
SPEC_FIELDS: dict[str, tuple[type, ...]] = {
    "posterior": (str,),
    "method": (str,),
    "estimator": (dict,),
    "history": (dict, type(None)),
    "support": (str,),
    "x_shape": (list,),
    "theta_dim": (int,),
    "prior": (dict, type(None)),
    "default_x": (list, int, float, type(None)),
    "mcmc": (dict,),
    "task": (dict, type(None)),  # simgen.project: parameter names, simulator, config
    "members": (list,),  # simgen.ensemble: the members' specs
}
REQUIRED_FIELDS = ("posterior", "method", "estimator", "x_shape", "theta_dim")
#: Deeper JSON than this is not something simgen writes (its specs nest about 6 deep).
MAX_DEPTH = 32
#: A spec may make its network allocate this much beyond its stored weights (constructors
#: allocate masks and temporaries next to the parameters, never many times their size).
BUDGET_SLACK, BUDGET_FACTOR = 256 * 2**20, 8


def _check_depth(obj: object, where: str) -> None:
    stack = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ModelFileError(
                f"{where}: the spec is nested more than {MAX_DEPTH} levels deep; simgen never "
                "writes such a spec, so the file is damaged or not from simgen."
            )
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        )
        stack.extend((child, depth + 1) for child in children)


def _positive_ints(value: object, field: str, where: str) -> list[int]:
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in items):
        raise ModelFileError(
            f"{where}: spec field {field!r} must hold positive integers, got {value!r}."
        )
    return items


def check_spec(spec: object, where: str) -> None:
    """Raise :class:`~simgen.errors.ModelFileError` unless ``spec`` is well formed."""
    if not isinstance(spec, dict):
        raise ModelFileError(f"{where}: the spec must be a JSON object, got {type(spec).__name__}.")
    _check_depth(spec, where)
    for field in spec:
        if field not in SPEC_FIELDS:
            raise ModelFileError(
                f"{where}: unknown spec field {field!r} (known: {sorted(SPEC_FIELDS)}); the file "
                "is damaged or from another version of simgen."
            )
        if not isinstance(spec[field], SPEC_FIELDS[field]):
            raise ModelFileError(
                f"{where}: spec field {field!r} has type {type(spec[field]).__name__}; expected "
                f"{' or '.join(t.__name__ for t in SPEC_FIELDS[field])}."
            )
    missing = [f for f in REQUIRED_FIELDS if f not in spec]
    if missing:
        raise ModelFileError(f"{where}: the spec has no {missing} field(s); the file is damaged.")
    x_shape = _positive_ints(spec["x_shape"], "x_shape", where) if spec["x_shape"] else []
    _positive_ints(spec["theta_dim"], "theta_dim", where)
    estimator = spec["estimator"]
    if not isinstance(estimator.get("name"), str):
        raise ModelFileError(f"{where}: spec field 'estimator.name' must be a string.")
    for field in ("target_dim", "context_shape"):
        if field in estimator and estimator[field] != []:
            _positive_ints(estimator[field], f"estimator.{field}", where)
    if spec.get("default_x") is not None:
        try:
            default = torch.tensor(spec["default_x"], dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ModelFileError(
                f"{where}: spec field 'default_x' is not an array ({exc})."
            ) from exc
        if tuple(default.shape[-len(x_shape) :] if x_shape else ()) != tuple(x_shape):
            raise ModelFileError(
                f"{where}: spec field 'default_x' has shape {tuple(default.shape)}, not x_shape "
                f"{tuple(x_shape)}."
            )
        if not torch.isfinite(default).all():
            raise ModelFileError(f"{where}: spec field 'default_x' holds NaN or inf.")


def check_state(spec: dict[str, Any], state: dict[str, Any], where: str) -> None:
    """Stored tensors: real tensors, finite, positive scales, shapes the spec implies."""
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise ModelFileError(f"{where}: weight {key!r} is not a tensor; the file is damaged.")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ModelFileError(f"{where}: weight {key!r} holds NaN or inf; the file is damaged.")
        if key.split(".")[-1] == "scale" and value.is_floating_point() and (value <= 0).any():
            raise ModelFileError(
                f"{where}: weight {key!r} (a z-scoring scale) holds zeros or negative values; "
                "the file is damaged."
            )
    estimator = spec["estimator"]
    implied = {
        "target_standardizer.loc": estimator.get("target_dim"),
        "context_standardizer.loc": estimator.get("context_shape"),
    }
    for key, field in (
        ("target_standardizer.loc", "target_dim"),
        ("context_standardizer.loc", "context_shape"),
    ):
        shape = implied[key]
        if key in state and shape is not None:
            shape = [shape] if isinstance(shape, int) else list(shape)
            if list(state[key].shape) != shape:
                raise ModelFileError(
                    f"{where}: spec field 'estimator.{field}' = {implied[key]!r} does not match "
                    f"the stored weights ({key} has shape {list(state[key].shape)}); the spec "
                    "and the weights are from different models."
                )


_FACTORIES = {
    "empty",
    "empty_strided",
    "zeros",
    "ones",
    "full",
    "rand",
    "randn",
    "randint",
    "normal",
    "eye",
    "arange",
    "linspace",
    "new_empty",
    "new_zeros",
    "new_ones",
    "new_full",
    "new_empty_strided",
}


def _numel(name: str, args: tuple, kwargs: dict) -> int:
    """Elements a factory op is about to allocate (an over-estimate is fine)."""
    if name == "eye":
        return int(args[0]) * int(
            args[1] if len(args) > 1 and isinstance(args[1], int) else args[0]
        )
    if name in ("arange", "linspace"):
        nums = [float(a) for a in args if isinstance(a, (int, float))]
        if name == "linspace":
            return int(nums[-1]) if nums else 0
        start, end, step = (
            (0.0, nums[0], 1.0)
            if len(nums) == 1
            else (*nums[:2], nums[2] if len(nums) > 2 else 1.0)
        )
        return max(0, math.ceil((end - start) / step)) if step else 0
    sizes = [a for a in args if isinstance(a, (list, tuple, torch.Size))]
    size = sizes[0] if sizes else kwargs.get("size", ())
    return math.prod(int(d) for d in size)


def _to_meta(value: object) -> object:
    return value.to("meta") if isinstance(value, Tensor) else value


class _AllocationBudget(TorchDispatchMode):
    """Refuse an allocation before it happens when it would take more than ``budget`` bytes.

    Factory ops (``empty``, ``zeros``, ...: parameters and buffers) are charged cumulatively
    from their size arguments. Every other op that makes a new tensor is first run on the
    ``meta`` device, which gives its output's size for free, and refused when that one output
    alone is over budget (its temporaries are freed again, so they are not summed)."""

    def __init__(self, budget: int, where: str):
        super().__init__()
        self.budget, self.where, self.used = budget, where, 0

    def _refuse(self, nbytes: int) -> None:
        raise ModelFileError(
            f"{self.where}: its spec asks for networks of over {nbytes / 2**20:.0f} MB, far "
            f"more than the {self.budget / 2**20:.0f} MB its weights allow; the spec and the "
            "weights are from different models, or the spec was altered."
        )

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in _FACTORIES:
            dtype = kwargs.get("dtype") or torch.get_default_dtype()
            self.used += _numel(name, args, kwargs) * dtype.itemsize
            if self.used > self.budget:
                self._refuse(self.used)
        elif not any(r.alias_info is not None for r in func._schema.returns):
            try:
                out = func(*tree_map(_to_meta, args), **tree_map(_to_meta, kwargs))
            except Exception:  # noqa: BLE001 - no meta kernel: such ops only shuffle small masks
                out = None
            nbytes = sum(
                t.numel() * t.element_size() for t in tree_leaves(out) if isinstance(t, Tensor)
            )
            if nbytes > self.budget:
                self._refuse(nbytes)
        return func(*args, **kwargs)


def _has_custom_net(spec: dict[str, Any]) -> bool:
    """Whether the estimator spec names a user's own embedding net (not stored in files)."""
    stack: list[object] = [spec]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("name") == "custom":
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def check_device(device: object) -> torch.device:
    """``device`` as a :class:`torch.device` this machine has, else a ModelFileError."""
    try:
        dev = torch.device(device)
    except (TypeError, RuntimeError, ValueError) as exc:
        raise ModelFileError(
            f"device={device!r} is not a torch device; use e.g. 'cpu' or 'cuda'."
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelFileError(f"device={device!r}: this machine has no CUDA device; use 'cpu'.")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelFileError(f"device={device!r}: this machine has no MPS device; use 'cpu'.")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ModelFileError(f"device={device!r} is not supported; use 'cpu', 'cuda' or 'mps'.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ModelFileError(
            f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA devices."
        )
    return dev


def load(
    path: str | os.PathLike, prior: Any = None, embedding_net: Any = None, device: str = "cpu"
) -> Any:
    """Load a saved posterior, checking the file first (see the module docstring).

    Args:
        path: File written by ``posterior.save(path)`` (``~`` expanded).
        prior: Needed only when the model's prior could not be stored as a spec.
        embedding_net: Needed only when the model was trained with a custom embedding net.
        device: Where the posterior computes and returns its tensors (``"cpu"``, ``"cuda"``,
            ``"cuda:1"``, ...; :mod:`simgen.devices`). The weights are read on the CPU
            whatever device saved them (``map_location="cpu"``), checked, then moved, so a
            model trained on a GPU loads on a machine without one.

    Raises:
        ModelFileError: The file is missing, not a simgen model, damaged, or inconsistent;
            or ``device`` is not one this machine has.
    """
    path = os.path.expanduser(os.fspath(path))
    where = repr(path)
    device = check_device(device)
    spec, state = read_model(path)
    check_spec(spec, where)
    kind = spec["posterior"]
    if kind not in POSTERIOR_KINDS:
        raise ModelFileError(
            f"{where}: spec field 'posterior' is {kind!r}; known kinds are "
            f"{sorted(POSTERIOR_KINDS)}."
        )
    check_state(spec, state, where)
    module_name, cls_name = POSTERIOR_KINDS[kind].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    stored = sum(v.numel() * v.element_size() for v in state.values())
    budget = BUDGET_SLACK + BUDGET_FACTOR * stored
    try:
        with _AllocationBudget(budget, where):
            return cls._from_file(
                spec, state, prior=prior, embedding_net=embedding_net, device=str(device)
            )
    except NotFittedError:  # the file is fine; the caller must pass the prior
        raise
    except SimgenError as exc:
        if embedding_net is None and _has_custom_net(spec["estimator"]):
            raise  # the file is fine; the caller must pass the embedding net
        raise ModelFileError(f"{where}: {exc}") from exc
    except (
        KeyError,
        RuntimeError,
        TypeError,
        ValueError,
        AttributeError,
        IndexError,
        RecursionError,
        NotImplementedError,
    ) as exc:
        raise ModelFileError(
            f"{where} is corrupt or inconsistent ({type(exc).__name__}: {exc}); the spec does "
            "not describe its weights. Re-save the model with posterior.save(path)."
        ) from exc
