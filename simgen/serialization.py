"""The model file format: weights plus a JSON spec, loadable without executing code.

A ``.simgen`` file is ``torch.save`` of a dict with plain types only::

    {"format": "simgen-model", "version": 1, "spec": "<JSON text>", "state_dict": {...}}

It is read back with ``torch.load(..., weights_only=True)``, which refuses arbitrary objects,
so a foreign or malicious file cannot run code; anything that is not a simgen model of a
known version raises :class:`~simgen.errors.ModelFileError`.
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Any

import torch
from torch import Tensor

from .errors import ModelFileError

__all__ = ["FORMAT", "VERSION", "save_model", "read_model", "load"]

FORMAT = "simgen-model"
VERSION = 1

#: The ``"posterior"`` field of a spec → "module:Class" with a ``_from_file`` classmethod.
POSTERIOR_KINDS: dict[str, str] = {
    "direct": "simgen.posterior:DirectPosterior",
    "mcmc": "simgen.mcmc_posterior:MCMCPosterior",
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
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{os.fspath(path)!r} is corrupt: {exc}.") from exc
    return spec, state


def load(
    path: str | os.PathLike, prior: Any = None, embedding_net: Any = None, device: str = "cpu"
) -> Any:
    """Load a saved posterior.

    Args:
        path: File written by ``posterior.save(path)``.
        prior: Needed only when the model's prior could not be stored as a spec.
        embedding_net: Needed only when the model was trained with a custom embedding net.
        device: Where to put the weights.
    """
    spec, state = read_model(path)
    kind = spec.get("posterior")
    if kind not in POSTERIOR_KINDS:
        raise ModelFileError(f"{os.fspath(path)!r} holds an unknown posterior kind {kind!r}.")
    module_name, cls_name = POSTERIOR_KINDS[kind].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    try:
        return cls._from_file(spec, state, prior=prior, embedding_net=embedding_net, device=device)
    except (KeyError, RuntimeError) as exc:
        raise ModelFileError(f"{os.fspath(path)!r} is corrupt or inconsistent: {exc}") from exc
