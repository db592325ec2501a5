"""Simulators that take one θ per call: marked Python functions and external programs.

A simulator that costs seconds per θ is rarely vectorised. Two ways in:

* a Python function ``fn(theta_row) -> x_row`` marked
  ``simgen.FunctionSimulator(fn, vectorized=False)``: it gets one parameter row ``(D,)`` and
  returns one ``x`` of shape ``x_shape`` (tensor, numpy array, list or number);
* an external program, :class:`ExternalSimulator` (``simgen.ExternalSimulator(command)``),
  run once per θ with the protocol below.

Both are ordinary batched simulators to the rest of simgen: a call on ``(N, D)`` runs the
``N`` rows one after the other (:func:`each_row`) and stacks their outputs. Their
``default_batch_size`` is 1, so :func:`simgen.simulate` without ``batch_size=`` sends each θ
to a worker on its own: ``workers=N`` (or a Dask client) keeps N calls running, a row that
fails costs only itself (a batch of several is bisected, which runs its good rows again),
and ``timeout=`` is per simulation. What one row per batch costs is a bank write per row in
the calling process (``benchmarks/results_throughput.md``): nothing next to a call of
seconds; pass a larger ``batch_size`` for calls of a fraction of a second into a bank.

**Seeds.** Row ``i`` of a call gets its own seed :math:`s_i`, the ``i``-th of ``N`` integers
drawn from the call's generator, which :mod:`simgen.batches` seeds from ``(seed, batch,
start)``. So the result depends on ``seed`` and ``batch_size`` alone, never on the number of
workers or the order in which they finish. A function that takes ``generator=`` gets
``torch.Generator().manual_seed(s_i)``; one that takes ``seed=`` gets :math:`s_i` (for
``numpy.random.default_rng(seed)``); one that takes neither runs with torch's global
generator seeded with :math:`s_i` inside ``fork_rng``. Function seeds lie in
``[0, 2**63)``; program seeds in ``[0, 2**31)``, which fits the signed 32-bit seed of most
programs (two rows may then share a seed, at different θ, with probability about
:math:`N^2 / 2^{32}`).

**The program protocol** (:class:`ExternalSimulator`). For each θ:

1. θ goes in as one line, ``text``: its ``D`` numbers separated by spaces (Python's
   shortest round-trip ``repr``), or ``json``: ``{"theta": [...], "seed": s}``. It is written
   to the program's stdin, or, when an argument of ``command`` holds ``{theta_file}``, to
   that file (whose path replaces the placeholder) and stdin is empty.
2. The seed replaces ``{seed}`` in any argument and is in the environment as
   ``SIMGEN_SEED``; θ is also in ``SIMGEN_THETA`` (the text line).
3. x comes back on stdout, or in the file whose path replaces ``{x_file}``: ``text``, any
   whitespace-separated numbers (``nan`` and ``inf`` allowed; the row is then recorded as
   non-finite); ``json``, a (nested) list of numbers or ``{"x": [...]}``. With ``x_shape``
   the numbers are reshaped to it.
4. A non-zero exit status, output that does not parse (or has the wrong size for
   ``x_shape``) or a run past the program's own ``timeout`` raises a
   :class:`~simgen.errors.SimulationError` naming θ, the seed, the exit status and the last
   lines of stderr; :func:`simgen.simulate` records that row as failed (``"raised"``), keeps
   the message in ``result.errors`` (the first five distinct ones) and goes on.

Each run has its own temporary folder for the two files, removed afterwards; the program
runs in ``cwd`` (the caller's folder by default) in a session of its own, so a timeout or a
Ctrl-C ends it and every process it started. On Linux, started from a single-threaded
process such as simgen's own workers (``workers=N``), the program also dies with that
process (``PR_SET_PDEATHSIG``), so when :func:`simgen.simulate` stops a worker past its
``timeout=``, the program goes with it. Dask workers run calls in threads, where that hook
is unsafe; there ``setpriv --pdeathsig KILL`` (util-linux) does the same where it is
installed, so a worker that Dask or simgen ends takes its program with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import inspect
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import ConfigError, ShapeError, SimulationError
from .simulator import _GLOBAL_STATE, Simulator, accepts_generator

__all__ = ["ExternalSimulator", "each_row", "row_seeds", "call_one", "FORMATS"]

#: Seeds of Python functions: any non-negative int64.
FUNCTION_SEEDS = 2**63 - 1
#: Seeds of programs: a signed 32-bit int, what most programs' seed options take.
PROGRAM_SEEDS = 2**31 - 1
#: How θ goes in and x comes back.
FORMATS = ("text", "json")
#: Placeholders replaced in the arguments of a command.
PLACEHOLDERS = ("{seed}", "{theta_file}", "{x_file}")
#: The most of stdout and of stderr a failure's log keeps (their ends).
LOG_CHARS = 1_000_000


def row_seeds(n: int, generator: torch.Generator | None, bound: int) -> list[int]:
    """The seeds of ``n`` rows of one call: ``n`` integers in ``[0, bound)`` drawn from
    ``generator`` (torch's global generator if None)."""
    return torch.randint(0, bound, (n,), generator=generator).tolist()


def _as_row(x: object, i: int) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    try:
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ShapeError(
            f"A one-θ-per-call simulator returned {type(x).__name__} for row {i}; it must "
            "return that θ's x as a tensor, numpy array, list or number."
        ) from exc


def each_row(
    one: Callable[[Tensor, int], object],
    theta: Tensor,
    generator: torch.Generator | None = None,
    bound: int = FUNCTION_SEEDS,
) -> Tensor:
    """Run ``one(theta_row, seed)`` on each row of ``theta`` ``(N, D)`` in turn, with the
    seeds of :func:`row_seeds`, and stack the outputs into ``(N, *x_shape)``.

    Raises:
        ShapeError: ``theta`` is not ``(N, D)``, or the rows' outputs differ in shape or dtype.
    """
    theta = torch.as_tensor(theta)
    if theta.ndim != 2:
        raise ShapeError(f"theta must have shape (N, D); got {tuple(theta.shape)}.")
    rows: list[Tensor] = []
    for i, seed in enumerate(row_seeds(len(theta), generator, bound)):
        x = _as_row(one(theta[i].clone(), seed), i)
        if rows and (x.shape, x.dtype) != (rows[0].shape, rows[0].dtype):
            raise ShapeError(
                f"A one-θ-per-call simulator returned x of shape {tuple(x.shape)} {x.dtype} "
                f"for one θ and {tuple(rows[0].shape)} {rows[0].dtype} for another; it must "
                "return one shape and dtype."
            )
        rows.append(x)
    if not rows:
        return torch.empty(0)
    return torch.stack(rows)


def call_one(fn: Callable, theta_row: Tensor, seed: int) -> object:
    """``fn`` on one θ row with its seed, as the module docstring says."""
    if accepts_generator(fn):
        return fn(theta_row, generator=torch.Generator().manual_seed(seed))
    if _accepts(fn, "seed"):
        return fn(theta_row, seed=seed)
    with _GLOBAL_STATE, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn(theta_row)


def _accepts(fn: Callable, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class ExternalSimulator(Simulator):
    """An external program as a simulator, run once per θ (protocol in the module docstring).

    Example:
        >>> sim = ExternalSimulator("./model --seed {seed}", x_shape=(3,))
        >>> theta, x = simgen.simulate(sim, prior, 1000, seed=0, workers=8, progress=True)

    Args:
        command: The program and its arguments, a list, or a string split like a shell does
            (no shell runs: pass ``["sh", "-c", "..."]`` for pipes); ``{seed}``,
            ``{theta_file}`` and ``{x_file}`` are replaced in every argument.
        x_shape: The shape of one x. Given, output of another size is a failed row;
            without it, x is the numbers as printed (flat for ``text``), and a row of
            another shape stops the run with a :class:`~simgen.errors.ShapeError`.
        format: ``"text"`` (numbers separated by white space) or ``"json"``, both ways.
        timeout: Seconds one run may take before the program is killed and its row
            recorded as failed (None: no limit of its own). It works wherever the program
            runs, in this process and on any executor's workers, including those that
            ``simulate(timeout=)`` cannot stop (:mod:`simgen.workers`).
        env: Variables added to the program's environment.
        cwd: The folder the program runs in (None: the caller's).
        stderr_lines: How many of the last lines of stderr a failure's message keeps.
        log_folder: A folder where each failed run leaves its whole stdout and stderr, in
            ``failed-seed<seed>.log`` (named in the row's message): ``result.errors`` keeps
            only the first five messages of a run. On a cluster, a folder the workers share.
            None: the message's stderr tail only.
    """

    command: str | Sequence[str]
    x_shape: tuple[int, ...] | None = None
    format: str = "text"
    timeout: float | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    stderr_lines: int = 10
    log_folder: str | None = None

    #: One θ per call, so ``simulate`` sends each θ to a worker alone (module docstring).
    default_batch_size = 1

    def __post_init__(self) -> None:
        command = self.command
        if isinstance(command, Path):  # a program's path, spaces and all
            command = (str(command),)
        elif isinstance(command, str):
            command = shlex.split(command)
        if isinstance(command, (bytes, Mapping)) or not isinstance(command, Sequence):
            raise ConfigError(
                f"command must be a string or a list of arguments, got {type(command).__name__}."
            )
        command = tuple(str(a) if isinstance(a, Path) else a for a in command)
        if not command or not all(isinstance(a, str) for a in command):
            raise ConfigError(
                f"command must name a program and its arguments as strings, got {command!r}."
            )
        object.__setattr__(self, "command", command)
        if self.format not in FORMATS:
            raise ConfigError(f"format must be one of {FORMATS}, got {self.format!r}.")
        if self.x_shape is not None:
            shape = (self.x_shape,) if isinstance(self.x_shape, int) else self.x_shape
            try:
                shape = tuple(int(s) for s in shape)
            except (TypeError, ValueError):
                shape = ()
            if not shape or any(s < 1 for s in shape):
                raise ConfigError(
                    f"x_shape must be a tuple of positive ints, e.g. (3,), got {self.x_shape!r}."
                )
            object.__setattr__(self, "x_shape", shape)
        if self.timeout is not None:
            number = self.timeout if isinstance(self.timeout, (int, float)) else None
            if isinstance(self.timeout, bool) or number is None or not 0 < number < math.inf:
                raise ConfigError(
                    f"timeout must be a positive number of seconds, got {self.timeout!r}."
                )
        if not isinstance(self.env, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.env.items()
        ):
            raise ConfigError(f"env must map names to strings, got {self.env!r}.")
        object.__setattr__(self, "env", dict(self.env))
        stderr_lines = self.stderr_lines
        if isinstance(stderr_lines, bool) or not isinstance(stderr_lines, int) or stderr_lines < 0:
            raise ConfigError(f"stderr_lines must be an int >= 0, got {stderr_lines!r}.")
        if self.log_folder is not None:
            if not isinstance(self.log_folder, (str, Path)) or not str(self.log_folder):
                raise ConfigError(
                    f"log_folder must be a folder's path or None, got {self.log_folder!r}."
                )
            object.__setattr__(self, "log_folder", str(Path(self.log_folder).expanduser()))

    def __hash__(self) -> int:  # env is a dict; Dask and caches may hash a simulator
        fields = (self.command, self.x_shape, self.format, self.timeout, self.cwd)
        env = tuple(sorted(self.env.items()))
        return hash((*fields, env, self.stderr_lines, self.log_folder))

    def identity(self) -> str:
        """What a bank's fingerprint records: the command (a resume with another is refused)."""
        return f"external:{shlex.join(self.command)}"

    def __call__(self, theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Run the program on each row of ``theta`` ``(N, D)``; returns ``(N, *x_shape)``."""
        return each_row(self.run_one, theta, generator, PROGRAM_SEEDS)

    def run_one(self, theta_row: Tensor, seed: int) -> Tensor:
        """Run the program once, on one θ ``(D,)`` with its seed; returns its x."""
        values = [float(v) for v in torch.as_tensor(theta_row).reshape(-1).tolist()]
        line = " ".join(repr(v) for v in values)
        payload = line if self.format == "text" else json.dumps({"theta": values, "seed": seed})
        where = f"theta = [{', '.join(f'{v:.6g}' for v in values)}] (seed {seed})"
        suffix = ".txt" if self.format == "text" else ".json"
        with tempfile.TemporaryDirectory(prefix="simgen-run-") as folder:
            theta_file = Path(folder) / f"theta{suffix}"
            x_file = Path(folder) / f"x{suffix}"
            values_of = (str(seed), str(theta_file), str(x_file))
            paths = dict(zip(PLACEHOLDERS, values_of, strict=True))
            argv = [_fill(a, paths) for a in self.command]
            to_file = any("{theta_file}" in a for a in self.command)
            if to_file:
                theta_file.write_text(payload + "\n")
            env = {**os.environ, **self.env, "SIMGEN_SEED": str(seed), "SIMGEN_THETA": line}
            stdout, stderr, status = self._run(argv, None if to_file else payload + "\n", env)
            tail = _tail(stderr, self.stderr_lines)
            try:
                if status is None:
                    raise SimulationError(
                        f"{self._name()} ran past timeout={self.timeout} s at {where} and was "
                        f"killed.{tail}"
                    )
                if status != 0:
                    how = f"was killed by signal {-status}" if status < 0 else f"exited {status}"
                    raise SimulationError(f"{self._name()} {how} at {where}.{tail}")
                if any("{x_file}" in a for a in self.command):
                    if not x_file.exists():
                        raise SimulationError(
                            f"{self._name()} wrote no {{x_file}} at {where}; it must write x "
                            f"to the path that replaces {{x_file}} in its arguments.{tail}"
                        )
                    stdout = x_file.read_text()
                return self._parse(stdout, where, tail)
            except SimulationError as exc:
                if self.log_folder is None:
                    raise
                log = self._log(argv, line, seed, status, stdout, stderr)
                raise SimulationError(f"{exc} {log}") from None

    def _log(self, argv: list[str], line: str, seed: int, status, stdout: str, stderr: str) -> str:
        """Write a failed run's whole output under ``log_folder``; the sentence naming it."""
        path = Path(self.log_folder) / f"failed-seed{seed}.log"
        text = (
            f"command: {shlex.join(argv)}\ntheta: {line}\nseed: {seed}\n"
            f"exit status: {'timeout' if status is None else status}\n"
            f"--- stdout ---\n{(stdout or '')[-LOG_CHARS:]}\n"
            f"--- stderr ---\n{(stderr or '')[-LOG_CHARS:]}\n"
        )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        except OSError as exc:
            return f"(Its output could not be written to {path}: {exc}.)"
        return f"Its whole output: {path}."

    def _run(self, argv: list[str], stdin: str | None, env: dict) -> tuple[str, str, int | None]:
        """The program's stdout, stderr and exit status (None: killed past ``timeout``)."""
        launch, hook = _die_with_parent(argv, self.cwd, env)
        try:
            process = subprocess.Popen(
                launch,
                stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=self.cwd,
                env=env,
                text=True,
                start_new_session=True,
                preexec_fn=hook,
            )
        except OSError as exc:
            raise SimulationError(
                f"Could not start {argv[0]!r} ({type(exc).__name__}: {exc}); check the "
                "program's path (relative paths are resolved from cwd) and that it is "
                "executable on every worker."
            ) from exc
        try:
            stdout, stderr = process.communicate(stdin, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _end(process)
            stdout, stderr = process.communicate()
            return stdout, stderr, None
        except BaseException:  # Ctrl-C, or the run stopping: never leave the program behind
            _end(process)
            raise
        return stdout, stderr, process.returncode

    def _parse(self, text: str, where: str, tail: str) -> Tensor:
        try:
            if self.format == "text":
                values = np.array(text.split(), dtype=np.float64)
            else:
                parsed = json.loads(text)
                parsed = parsed["x"] if isinstance(parsed, dict) else parsed
                values = np.asarray(parsed, dtype=np.float64)
        except (ValueError, TypeError, KeyError) as exc:
            shown = text.strip()[:200] or "nothing"
            raise SimulationError(
                f"{self._name()} printed output that is not {self.format} numbers at {where}: "
                f"{shown!r} ({type(exc).__name__}: {exc}).{tail}"
            ) from None
        if values.size == 0:
            raise SimulationError(f"{self._name()} printed no numbers at {where}.{tail}")
        if self.x_shape is not None:
            if values.size != math.prod(self.x_shape):
                raise SimulationError(
                    f"{self._name()} printed {values.size} numbers at {where}; x_shape="
                    f"{self.x_shape} needs {math.prod(self.x_shape)}.{tail}"
                )
            values = values.reshape(self.x_shape)
        return torch.as_tensor(values, dtype=torch.float32)

    def _name(self) -> str:
        return f"The program {shlex.join(self.command)!r}"


def _fill(argument: str, paths: dict[str, str]) -> str:
    for placeholder, value in paths.items():
        argument = argument.replace(placeholder, value)
    return argument


def _tail(stderr: str | None, lines: int) -> str:
    kept = (stderr or "").strip().splitlines()[-lines:] if lines else []
    if not kept:
        return ""
    text = "\n".join(kept)[-2000:]
    return f" Last lines of its stderr:\n{text}"


def _end(process: subprocess.Popen) -> None:
    """Kill the program's session: it and whatever it started."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        process.kill()
    process.wait()


def _die_with_parent(
    argv: list[str], cwd: str | None, env: dict
) -> tuple[list[str], Callable[[], None] | None]:
    """How to start the program so that, on Linux, it receives SIGKILL when the process (or
    thread) that started it dies: ``(argv to run, hook to run between fork and exec)``.

    A single-threaded process (simgen's own workers) sets ``PR_SET_PDEATHSIG`` in a hook; with
    other threads running (Dask workers), where Python code between fork and exec is unsafe,
    ``setpriv --pdeathsig KILL`` does it instead, if installed (util-linux). Elsewhere the
    program starts as it is."""
    if not sys.platform.startswith("linux"):
        return argv, None
    if threading.active_count() > 1:
        setpriv = shutil.which("setpriv")
        if setpriv is None or not _found(argv[0], cwd, env):
            return argv, None  # Popen names a missing program itself
        return [setpriv, "--pdeathsig", "KILL", "--", *argv], None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return argv, None
    prctl, parent = libc.prctl, os.getpid()

    def hook() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the hook ran
            os._exit(1)

    return argv, hook


def _found(program: str, cwd: str | None, env: dict) -> bool:
    if os.sep in program:
        path = Path(cwd or ".") / program
        return path.is_file() and os.access(path, os.X_OK)
    return shutil.which(program, path=env.get("PATH")) is not None
