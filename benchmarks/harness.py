"""Benchmark tasks, their stored observations and their cached reference posteriors.

Every task of the collection with a reference posterior is evaluated on observations drawn
from its prior predictive with fixed seeds, in two disjoint sets:

- ``tuning``: the observations on which defaults are chosen;
- ``report``: the observations on which the chosen defaults are reported.

The observations (with their true θ and the seeds that drew them) are stored in
``benchmarks/observations/<task>.pt`` and made by ``python -m benchmarks.harness
--make-observations``. Reference posterior samples come from each task's own
``reference_posterior`` (closed form, grid or MCMC) and are cached in
``benchmarks/.cache/references/`` (gitignored; a costly task's, in :data:`REFERENCE_CAPS`, in
the tracked ``benchmarks/cells/references/``), keyed by task, set, index, sample count, seed
and a hash of the task's source and of the observation, so a changed simulator or reference
sampler is recomputed rather than reused; on a fresh checkout ``python -m benchmarks.harness
--references <set>`` computes them. Each cached reference stores its CPU cost and the result
of :func:`check_reference`. A table's references hold ``REFERENCE_SAMPLES`` draws, or fewer
for a task in :data:`REFERENCE_CAPS` (:func:`reference_samples`), drawn with the task's
:data:`REFERENCE_OPTIONS`; a C2ST reads only the first draws of a reference, as many as it
compares. Result cells are tracked in :data:`CELLS` (:mod:`benchmarks.cell_files`).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import time
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

import simulators
from simgen.errors import ConfigError

__all__ = [
    "TASKS",
    "SETS",
    "NUM_OBSERVATIONS",
    "CACHE",
    "CELLS",
    "load_task",
    "observations",
    "make_observations",
    "REFERENCE_CAPS",
    "REFERENCE_OPTIONS",
    "reference_samples",
    "reference",
    "reference_agreement",
    "reference_is_cached",
    "failed_references",
    "check_reference",
    "source_hash",
]

#: Every task of the collection with a reference posterior, cheapest reference first.
TASKS = [
    "gaussian_linear",
    "gaussian_linear_uniform",
    "gaussian_mixture",
    "two_moons",
    "slcp",
    "bernoulli_glm",
    "lotka_volterra",
    "cosmology_field",
    "sir",
    "particle_shower",
]
#: Observation set -> first seed; observation ``i`` of a set is drawn with seed ``base + i``.
SETS = {"tuning": 10_000, "report": 20_000}
NUM_OBSERVATIONS = 10
REFERENCE_SAMPLES = 10_000
#: Tasks whose table references hold fewer than ``REFERENCE_SAMPLES`` draws, and the options
#: their sampler gets there. particle_shower's pseudo-marginal chains stick where the
#: likelihood estimate is noisy: at its default ``thin=4``, the 1,000 draws a C2ST reads have a
#: bulk ESS below 350 on 6 of the 10 report observations and two halves of one reference are
#: told apart (C2ST up to 0.61); ``thin=16`` costs 48-63 CPU s per reference (report set) and holds
#: 1,000 draws as well mixed as the C2ST needs (:func:`reference_agreement`;
#: docs/decisions.md, 2026-12-01).
REFERENCE_CAPS = {"particle_shower": 1_000}
REFERENCE_OPTIONS: dict[str, dict] = {"particle_shower": {"thin": 16}}
OBSERVATIONS = Path(__file__).with_name("observations")
CACHE = Path(__file__).with_name(".cache")
#: Tracked home of every benchmark's result cells, ``benchmarks/cells/<kind>/``: committed
#: with the tables they produce (:mod:`benchmarks.cell_files`); references stay in ``CACHE``.
CELLS = Path(__file__).with_name("cells")
#: The references of a task in :data:`REFERENCE_CAPS` (costly, and small: 1,000 draws) are kept
#: tracked, in ``CELLS / "references"``, so a fresh checkout does not recompute them; every other
#: task's references are cheap to rebuild and large (10,000 draws) and stay in ``CACHE``.

#: Chains run by each MCMC reference for ``n`` samples (the rule in the task's module), so
#: the samples can be cut back into chains for split-R̂.
_CHAINS = {
    "slcp": lambda n: min(n, 1000),
    "bernoulli_glm": lambda n: min(n, 1000),
    "lotka_volterra": lambda n: min(max(100, n // 40), n),
    "sir": lambda n: min(max(50, n // 80), n),
    "particle_shower": lambda n: min(max(4, min(n // 500, 64)), n),
}


def load_task(name: str) -> ModuleType:
    """The simulator module of a benchmark task (``gaussian_linear`` is its 10-D default)."""
    if name not in TASKS:
        raise ConfigError(f"Unknown benchmark task {name!r}; choose from {TASKS}.")
    return simulators.get(name)


def source_hash(name: str) -> str:
    """SHA-256 (16 hex digits) of the task module's source and the shared reference sampler."""
    folder = Path(simulators.__file__).parent
    digest = hashlib.sha256()
    for path in (folder / f"{name}.py", folder / "_mcmc.py"):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _draw(task: ModuleType, seed: int) -> tuple[Tensor, Tensor, int]:
    """θ ~ prior and x ~ p(x | θ) from ``seed``; redrawn (seed + 1,000 k) if x is not finite."""
    for attempt in range(100):
        s = seed + 1000 * attempt
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            theta = task.prior.sample((1,))
        x = task.simulator(theta, generator=torch.Generator().manual_seed(s))
        if torch.isfinite(x).all():
            return theta[0], x[0], s
    raise ConfigError(f"No finite observation in 100 draws from seed {seed}.")


def make_observations(name: str, num: int = NUM_OBSERVATIONS) -> dict:
    """Draw both observation sets of a task (deterministic: the same seeds give the same data)."""
    task = load_task(name)
    data: dict = {"task": name, "source": source_hash(name)}
    for set_name, base in SETS.items():
        draws = [_draw(task, base + i) for i in range(num)]
        data[set_name] = {
            "theta": torch.stack([d[0] for d in draws]),
            "x": torch.stack([d[1] for d in draws]),
            "seeds": [d[2] for d in draws],
        }
    return data


def observations(name: str, set_name: str, num: int | None = None) -> tuple[Tensor, Tensor]:
    """The stored ``(theta, x)`` of a task's observation set, shapes ``(K, D)``, ``(K, ...)``."""
    if set_name not in SETS:
        raise ConfigError(f"Unknown observation set {set_name!r}; choose from {list(SETS)}.")
    path = OBSERVATIONS / f"{name}.pt"
    if not path.exists():
        raise ConfigError(
            f"No stored observations for {name!r} ({path}); make them with "
            "`python -m benchmarks.harness --make-observations`."
        )
    obs = torch.load(path, weights_only=True)[set_name]
    k = len(obs["x"]) if num is None else num
    if k > len(obs["x"]):
        raise ConfigError(f"{name} stores {len(obs['x'])} {set_name} observations, not {k}.")
    return obs["theta"][:k], obs["x"][:k]


def reference_samples(name: str, requested: int = REFERENCE_SAMPLES, needed: int = 0) -> int:
    """The draws a task's references hold in a table that asks for ``requested`` and whose C2ST
    reads ``needed``: ``requested``, cut to the task's :data:`REFERENCE_CAPS` entry, but never
    below ``needed`` (a C2ST on more samples than the cap gets references of its size)."""
    if needed > requested:
        raise ConfigError(
            f"A C2ST on {needed} samples needs at least {needed} reference samples, not "
            f"{requested}; raise the reference samples or lower the C2ST samples."
        )
    return max(needed, min(requested, REFERENCE_CAPS.get(name, requested)))


def _reference_path(
    name: str, set_name: str, index: int, x: Tensor, num: int, seed: int, options: dict | None
):
    digest = hashlib.sha256(source_hash(name).encode())
    digest.update(x.detach().double().contiguous().numpy().tobytes())
    key = f"{set_name}-{index:02d}-n{num}-s{seed}-{digest.hexdigest()[:16]}"
    key += "".join(f"-{k}{v}" for k, v in sorted((options or {}).items()))
    home = CELLS if name in REFERENCE_CAPS else CACHE
    return home / "references" / name / f"{key}.pt"


def reference_is_cached(
    name: str,
    set_name: str,
    index: int,
    num: int = REFERENCE_SAMPLES,
    seed: int = 0,
    options: dict | None = None,
) -> bool:
    """Whether :func:`reference` would read this reference from disk."""
    x = observations(name, set_name)[1][index]
    return _reference_path(name, set_name, index, x, num, seed, options).exists()


def reference(
    name: str,
    set_name: str,
    index: int,
    num: int = REFERENCE_SAMPLES,
    seed: int = 0,
    options: dict | None = None,
) -> dict:
    """Reference posterior of observation ``index`` of a set: cached on disk after one run.

    ``options`` go to the task's ``reference_posterior`` (and into the cache key), as
    :data:`REFERENCE_OPTIONS` gives them for a table. Returns a dict with ``samples``
    ``(num, D)``, ``cpu_seconds`` (the reference's cost when it was computed), ``cached``
    (whether this call read it from disk) and ``check`` (see :func:`check_reference`).
    """
    _, xs = observations(name, set_name)
    x = xs[index]
    path = _reference_path(name, set_name, index, x, num, seed, options)
    if path.exists():
        return {**torch.load(path, weights_only=True), "cached": True}
    task = load_task(name)
    start = time.process_time()
    samples = task.reference_posterior(x, num, seed=seed, **(options or {}))
    seconds = time.process_time() - start
    entry = {
        "samples": samples,
        "cpu_seconds": seconds,
        "check": check_reference(name, x, samples),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(entry, tmp)
    tmp.replace(path)
    return {**entry, "cached": False}


def failed_references(
    name: str,
    set_name: str,
    num_obs: int,
    num: int = REFERENCE_SAMPLES,
    seed: int = 0,
    options: dict | None = None,
) -> list[int]:
    """The observations among the first ``num_obs`` of a set whose cached reference fails
    :func:`check_reference`: left out of the report's means (and named there), since a C2ST
    against a reference that is not the posterior measures nothing. Uncached references are
    not computed and not listed."""
    return [
        i
        for i in range(num_obs)
        if reference_is_cached(name, set_name, i, num, seed, options)
        and not reference(name, set_name, i, num, seed, options)["check"]["passed"]
    ]


def reference_agreement(
    name: str,
    set_name: str,
    index: int,
    num: int,
    c2st_samples: int,
    shift_sd: float = 0.25,
    options: dict | None = None,
) -> dict:
    """Whether ``c2st_samples`` draws of a reference of ``num`` stand for the posterior.

    ``c2st``: the C2ST between the two halves of the reference, ``c2st_samples`` draws each:
    its first and second half of chains for an MCMC reference (chains run independently from
    the same fitted proposal), its first and second ``c2st_samples`` draws otherwise; about 0.5
    plus the classifier's small-sample bias if both are the posterior, which an exact sampler
    (two_moons) measures. ``shifted``: the same with the second half moved by ``shift_sd`` of
    its standard deviation in every coordinate, the control that must read higher. For MCMC
    references, ``ess``: the smallest bulk effective sample size (arviz) of the first
    ``c2st_samples`` draws (those a table's C2ST reads), cut into the task's chains, and
    ``repeats``: the share of them that repeat their chain's previous draw (a rejected
    proposal).
    """
    import arviz

    from simgen.diagnostics.c2st import c2st

    samples = reference(name, set_name, index, num, options=options)["samples"]
    if len(samples) < 2 * c2st_samples:
        raise ConfigError(f"Two halves of {c2st_samples} draws need {2 * c2st_samples}, not {num}.")
    out: dict = {}
    if name in _CHAINS:
        c = _CHAINS[name](num)
        chains = samples.reshape(num // c, c, -1)
        half = c // 2
        p = chains[:, :half].transpose(0, 1).reshape(-1, samples.shape[1])[:c2st_samples]
        q = chains[:, half:].transpose(0, 1).reshape(-1, samples.shape[1])[:c2st_samples]
        read = samples[:c2st_samples].double().reshape(c2st_samples // c, c, -1)
        ess = arviz.ess(arviz.convert_to_dataset(read.transpose(0, 1).numpy()), method="bulk")
        out["ess"] = float(ess["x"].values.min())
        out["repeats"] = float((read[1:] == read[:-1]).all(-1).double().mean())
    else:
        p, q = samples[:c2st_samples], samples[c2st_samples : 2 * c2st_samples]
    out["c2st"] = float(c2st(p, q, seed=0))
    out["shifted"] = float(c2st(p, q + shift_sd * q.std(0), seed=0))
    return out


def _truncated_normal_moments(loc: Tensor, scale: float, low: float, high: float):
    """Mean, variance and mass in [low, high] of N(loc, scale²) truncated there (per entry)."""
    std = torch.distributions.Normal(0.0, 1.0)
    a, b = (low - loc) / scale, (high - loc) / scale
    mass = std.cdf(b) - std.cdf(a)
    pa, pb = std.log_prob(a).exp(), std.log_prob(b).exp()
    shift = (pa - pb) / mass
    var = scale**2 * (1 + (a * pa - b * pb) / mass - shift**2)
    return loc + scale * shift, var, mass


def _exact_moments(name: str, x: Tensor) -> tuple[Tensor, Tensor] | None:
    """Exact posterior mean and per-coordinate variance of the closed-form tasks (float64)."""
    x = x.double().reshape(-1)
    task = load_task(name)
    if name == "gaussian_linear":
        post = task.posterior(x.float())
        return post.loc.reshape(-1).double(), post.variance.reshape(-1).double()
    if name == "gaussian_linear_uniform":
        mean, var, _ = _truncated_normal_moments(x, task.LIKELIHOOD_VAR**0.5, -1.0, 1.0)
        return mean, var
    if name == "gaussian_mixture":
        parts = [_truncated_normal_moments(x, s, -10.0, 10.0) for s in task.SCALES]
        weights = torch.stack([p[2].prod() for p in parts])
        weights = weights / weights.sum()
        mean = sum(w * p[0] for w, p in zip(weights, parts))
        second = sum(w * (p[1] + p[0] ** 2) for w, p in zip(weights, parts))
        return mean, second - mean**2
    return None


def check_reference(name: str, x: Tensor, samples: Tensor) -> dict:
    """How far a reference can be trusted, by the strongest check the task allows.

    - closed form (gaussian_linear, gaussian_linear_uniform, gaussian_mixture): the largest
      error of the sample mean in posterior standard deviations and of the sample variance
      relative to the exact one; passes below 5 Monte Carlo standard errors
      (:math:`5/\\sqrt n` and :math:`5\\sqrt{2/n}`, the mixture's variance :math:`\\times 3`
      for its heavier tails);
    - MCMC with long chains (lotka_volterra, sir, particle_shower): the largest split-R̂ of
      the task's own chains; passes below 1.05;
    - MCMC with many short chains (slcp, bernoulli_glm: 1,000 chains of 10 kept states):
      the drift between the first and second half of the kept states, in posterior sd,
      of θ and of |θ|; passes below :math:`5\\sqrt{2/(n/2)}`;
    - exact sampler or grid (two_moons, cosmology_field): finite and inside the prior's
      support.

    Every check also requires all samples finite and in the prior's support.
    """
    from simulators._mcmc import split_rhat

    s = samples.double()
    n = len(s)
    task = load_task(name)
    inside = bool(torch.isfinite(s).all()) and bool(
        torch.isfinite(task.prior.log_prob(samples.float())).all()
    )
    result: dict = {"in_support": inside}
    exact = _exact_moments(name, x)
    if exact is not None:
        mean, var = exact
        mean_err = float(((s.mean(0) - mean).abs() / var.sqrt()).max())
        var_err = float(((s.var(0) - var).abs() / var).max())
        var_tol = 5 * math.sqrt(2 / n) * (3 if name == "gaussian_mixture" else 1)
        result.update(kind="closed form", mean_error_sd=mean_err, var_error_rel=var_err)
        result["passed"] = inside and mean_err < 5 / math.sqrt(n) and var_err < var_tol
    elif name in _CHAINS and n % _CHAINS[name](n) == 0:
        c = _CHAINS[name](n)
        chains = s.reshape(n // c, c, -1)
        result.update(kind="MCMC", chains=c, draws=n // c)
        if n // c >= 20:
            rhat = float(split_rhat(chains).max())
            result.update(max_split_rhat=rhat, passed=inside and rhat < 1.05)
        else:
            # Many short chains started near the posterior: split-R̂ over 5-10 states only
            # measures autocorrelation. Check stationarity instead: the first and second half
            # of the kept states (all chains pooled) agree in mean, of θ and of |θ| (slcp's
            # signs are flipped at random after sampling).
            half = n // c // 2
            first, second = (
                chains[:half].reshape(-1, s.shape[1]),
                chains[half:].reshape(-1, s.shape[1]),
            )
            drift = max(
                float(((f.mean(0) - g.mean(0)).abs() / s.std(0)).max())
                for f, g in ((first, second), (first.abs(), second.abs()))
            )
            tol = 5 * math.sqrt(2 / len(first))
            result.update(max_half_drift_sd=drift, passed=inside and drift < tol)
    else:
        result.update(kind="exact sampler" if name == "two_moons" else "grid")
        result["passed"] = inside
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--make-observations", action="store_true")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument(
        "--references",
        default="",
        help="compute references of this set (with the task's REFERENCE_OPTIONS, as a table)",
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=None,
        help="draws per reference (default: what a table reads, reference_samples(task))",
    )
    parser.add_argument(
        "--agreement",
        type=int,
        default=0,
        help="samples per half: C2ST between the two halves of each --references reference",
    )
    parser.add_argument("--indices", type=int, nargs="+", default=None)
    parser.add_argument(
        "--sampler-defaults",
        action="store_true",
        help="run each task's reference sampler with its own defaults, not REFERENCE_OPTIONS",
    )
    args = parser.parse_args()
    for name in args.tasks.split(","):
        options = None if args.sampler_defaults else REFERENCE_OPTIONS.get(name)
        num = reference_samples(name) if args.samples is None else args.samples
        if args.make_observations:
            OBSERVATIONS.mkdir(exist_ok=True)
            torch.save(make_observations(name), OBSERVATIONS / f"{name}.pt")
            print(f"{name}: observations stored", flush=True)
        if args.references and args.agreement:
            indices = args.indices or range(len(observations(name, args.references)[1]))
            print("| task | observation | draws | per half | C2ST of two halves | shifted | "
                  "ESS | repeats |\n|---|---|---|---|---|---|---|---|", flush=True)  # fmt: skip
            for i in indices:
                a = reference_agreement(
                    name, args.references, i, num, args.agreement, options=options
                )  # fmt: skip
                extra = f"{a['ess']:.0f} | {a['repeats']:.2f}" if "ess" in a else "iid | 0"
                print(
                    f"| {name} | {args.references} #{i} | {num} | {args.agreement} | "
                    f"{a['c2st']:.3f} | {a['shifted']:.3f} | {extra} |",
                    flush=True,
                )
        elif args.references:
            for i in range(len(observations(name, args.references)[1])):
                ref = reference(name, args.references, i, num, options=options)
                print(
                    f"{name} {args.references}[{i}] {ref['cpu_seconds']:.1f} CPU s {ref['check']}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
