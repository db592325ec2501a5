"""What sets the width of a TSNPE region on the 10-D tasks (tables of
``benchmarks/results_sequential.md``; run through ``bench_sequential``):

    OMP_NUM_THREADS=1 python -m benchmarks.bench_sequential --true-regions --observations 3 \
        --tasks gaussian_linear_uniform,gaussian_mixture,bernoulli_glm
    OMP_NUM_THREADS=1 python -m benchmarks.bench_sequential --round-one --observations 2
    OMP_NUM_THREADS=1 python -m benchmarks.bench_sequential --glm-round-one --observations 3

:func:`true_regions`: the prior mass of the exact posterior's HPD region. :func:`round_one_regions`:
round 1 of ``simgen.sequential`` at 1k (NPE, nsf, on the 250 prior simulations
``simgen.simulate(..., seed=round_seed(0, 1))``), refitted with each support mode, and the prior
mass of its ε-region from three disjoint sets of 20,000 posterior draws and from 200,000, next
to the exact region's and the share of reference draws outside; with the fit's marginal
standard deviations over the reference's. :func:`glm_round_one`: round 1 on bernoulli_glm
per flow, round-1 size and batch size, against its exact region (what sets the region's size).
"""

from __future__ import annotations

import math
import statistics
import time

import torch

import simgen
from benchmarks import harness, warm_up_torch
from simgen.diagnostics.c2st import c2st
from simgen.sequential import HPDRegion, TruncatedPrior
from simgen.sequential.rounds import round_seed

EPSILONS = (1e-4, 1e-3, 1e-2)
#: ε values of the per-round region sweep of :class:`Scorer` (the default 1e-4 and larger).
SWEEP = EPSILONS
REGION_DRAWS = 20_000


def _seeded_region(posterior, x_o):
    """200,000 draws at a fixed seed, the HPD region built from the first 20,000, and the
    region's ``log q`` of every draw (the same draws for every setting compared)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        draws = posterior.sample((200_000,), x=x_o).reshape(200_000, -1)
    region = HPDRegion(posterior, x_o, draws=draws[:20_000])
    return draws, region, region.log_q(draws)


def _prior_masses(log_q, q_prior, eps: float):
    """The region's prior mass at the ε-quantile threshold of each of three 20,000-draw
    parts of ``log_q`` (the threshold's noise), and the threshold τ and mass from all draws."""
    masses = []
    for k in range(3):
        part = torch.sort(log_q[k * 20_000 : (k + 1) * 20_000]).values
        masses.append(float((q_prior >= part[int(eps * len(part))]).float().mean()))
    tau = torch.sort(log_q).values[int(eps * len(log_q))]
    return masses, tau, float((q_prior >= tau).float().mean())


class Scorer:
    """Per-round diagnostics of a simgen run against the reference (the callback)."""

    def __init__(self, reference: torch.Tensor, x_o, num_samples: int, per_round: bool):
        self.reference, self.x_o = reference, x_o
        self.num_samples, self.per_round = num_samples, per_round
        self.rows: list[dict] = []
        self.cpu = 0.0
        self.flow: str | None = None

    def __call__(self, record, posterior, proposal) -> None:
        start = time.process_time()
        row: dict = {"round": record.index, "acceptance": record.acceptance}
        row["energy"] = record.energy_distance
        if isinstance(proposal, TruncatedPrior):
            inside = proposal.region.contains(self.reference.float())
            row["next_mass"] = proposal.mass
            row["reference_outside"] = 1 - float(inside.float().mean())
        if isinstance(proposal, TruncatedPrior) and isinstance(proposal.region, HPDRegion):
            row["epsilons"] = self.region_sweep(posterior)
        if self.per_round:
            draws = posterior.sample((self.num_samples,), x=self.x_o, seed=record.index)
            row["c2st"] = float(c2st(self.reference, draws.reshape(self.num_samples, -1)))
        self.rows.append(row)
        self.cpu += time.process_time() - start

    def region_sweep(self, posterior) -> dict:
        """For each ε of :data:`SWEEP`: the prior mass of the HPD region at ε of this round's
        posterior and the reference mass outside it (the same fit, no retraining)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            draws = posterior.sample((REGION_DRAWS,), x=self.x_o).reshape(REGION_DRAWS, -1)
            prior = posterior.prior.sample((REGION_DRAWS,)).float()
        region = HPDRegion(posterior, self.x_o, draws=draws)
        log_q = region.log_q(draws)
        log_q = torch.sort(log_q[torch.isfinite(log_q)]).values
        at_prior, at_reference = region.log_q(prior), region.log_q(self.reference.float())
        out = {}
        for eps in SWEEP:
            tau = log_q[int(eps * len(log_q))]
            out[f"{eps:g}"] = {
                "mass": float((at_prior >= tau).float().mean()),
                "reference_outside": float((at_reference < tau).float().mean()),
            }
        return out


def _log_likelihood(task, name: str, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The closed-form log-likelihood of the two tasks :func:`true_regions` covers."""
    d2 = ((x - theta) ** 2).sum(-1)
    if name == "gaussian_linear_uniform":
        return -0.5 * d2 / task.LIKELIHOOD_VAR
    parts = [-0.5 * d2 / s**2 - theta.shape[-1] * math.log(s) for s in task.SCALES]
    return torch.logaddexp(*parts)


def true_regions(
    num_observations: int, epsilon: float = 1e-4, tasks: tuple = ("gaussian_linear_uniform",)
) -> list[str]:
    """Prior mass of the exact posterior's HPD region holding 1 - ε (the region a perfect
    round-1 fit would give), for those of ``tasks`` with a closed-form likelihood (others
    are skipped). With a uniform prior (gaussian_linear_uniform, gaussian_mixture) the
    posterior density is the likelihood inside the box: 10⁵ exact posterior draws set the
    threshold, 2·10⁵ prior draws the mass. bernoulli_glm's log-posterior is its
    log-likelihood plus the Gaussian prior's log-density; its reference is MCMC, so the
    threshold comes from the harness's cached 10⁴ reference draws (at ε = 1e-4 their lowest
    value: an estimate of the region's size, not a precise one). two_moons: the same with
    its closed-form likelihood (:func:`two_moons_regions`)."""
    lines = ["| task | observation | prior mass of the exact 1e-4 HPD region |", "|---|---|---|"]
    for name in [t for t in ("gaussian_linear_uniform", "gaussian_mixture") if t in tasks]:
        task = harness.load_task(name)
        _, xs = harness.observations(name, "report", num_observations)
        for i, x in enumerate(xs):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(i)
                draws = task.reference_posterior(x, 100_000, seed=1)
                prior = task.prior.sample((200_000,))
            log_q = torch.sort(_log_likelihood(task, name, draws, x)).values
            tau = log_q[int(epsilon * len(log_q))]
            mass = float((_log_likelihood(task, name, prior, x) >= tau).float().mean())
            lines.append(f"| {name} | {i} | {mass:.3f} |")
    if "bernoulli_glm" in tasks:
        lines += _glm_regions(num_observations, epsilon)
    if "two_moons" in tasks:
        lines += two_moons_regions(num_observations, epsilon)
    return lines


def _glm_log_post(task, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return task.log_likelihood(theta, x) + task.prior.log_prob(theta)


def _glm_regions(num_observations: int, epsilon: float) -> list[str]:
    task = harness.load_task("bernoulli_glm")
    _, xs = harness.observations("bernoulli_glm", "report", num_observations)
    lines = []
    for i, x in enumerate(xs):
        draws = harness.reference("bernoulli_glm", "report", i)["samples"].float()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(i)
            prior = task.prior.sample((200_000,))

        tau = torch.sort(_glm_log_post(task, draws, x)).values[int(epsilon * len(draws))]
        mass = float((_glm_log_post(task, prior, x) >= tau).float().mean())
        lines.append(f"| bernoulli_glm | {i} | {mass:.4f} |")
    return lines


def round_one_regions(num_observations: int, n: int = 250) -> list[str]:
    """The round-1 table (module docstring): one line per observation, support mode and ε."""
    warm_up_torch()
    name = "gaussian_linear_uniform"
    task = harness.load_task(name)
    _, xs = harness.observations(name, "report", num_observations)
    sims = simgen.simulate(task.simulator, task.prior, n, seed=round_seed(0, 1))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        prior = task.prior.sample((100_000,)).float()
    lines = [
        "| observation | support | fit sd / reference sd: mean, max | ε | prior mass: three "
        "sets of 20k draws | 200k draws | reference outside (200k) | exact region |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, x_o in enumerate(xs):
        reference = harness.reference(name, "report", i)["samples"][:20_000].float()
        exact = torch.sort(_log_likelihood(task, name, reference, x_o)).values
        at_prior = _log_likelihood(task, name, prior, x_o)
        for support in ("reject", "transform"):
            npe = simgen.NPE(task.prior, support=support)
            posterior = npe.fit(sims.theta, sims.x, seed=round_seed(0, 1))
            draws, region, log_q = _seeded_region(posterior, x_o)
            q_prior, q_reference = region.log_q(prior), region.log_q(reference)
            ratio = draws.std(0) / reference.std(0)
            for eps in EPSILONS:
                masses, tau, mass = _prior_masses(log_q, q_prior, eps)
                outside = float((q_reference < tau).float().mean())
                exact_mass = float((at_prior >= exact[int(eps * len(exact))]).float().mean())
                lines.append(
                    f"| {i} | {support} | {float(ratio.mean()):.2f}, {float(ratio.max()):.2f} | "
                    f"{eps:g} | {', '.join(f'{m:.3f}' for m in masses)} | {mass:.3f} | "
                    f"{outside:.4f} | {exact_mass:.3f} |"
                )
            print(lines[-1], flush=True)
    return lines


#: Round-1 settings of :func:`glm_round_one`: (family, simulations in round 1, training
#: options, ``simgen.NPE`` options such as ``gaussian_baseline``); a family ``name-mixing``
#: is the flow ``name`` with that ``mixing`` between transforms.
GLM_SETTINGS = (
    ("nsf-none", 250, {}, {}),
    ("maf", 250, {}, {}),
    ("nsf-none", 500, {}, {}),
    ("nsf-lu", 250, {}, {}),
)


def _chi2_quantile(dim: int, q: float, draws: int = 2_000_000) -> float:
    """The q-quantile of a chi-square with ``dim`` degrees of freedom (Monte Carlo, seeded)."""
    g = torch.Generator().manual_seed(11)
    d2 = (torch.randn(draws, dim, generator=g, dtype=torch.float64) ** 2).sum(-1)
    return float(torch.quantile(d2[:1_000_000], q))


def _mahalanobis2(theta: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    chol = torch.linalg.cholesky(cov)
    z = torch.linalg.solve_triangular(chol, (theta.double() - mean).T, upper=False)
    return (z**2).sum(0)


def glm_round_one(
    num_observations: int, epsilon: float = 1e-4, settings: tuple = GLM_SETTINGS
) -> list[str]:
    """Round 1 of a 1k TSNPE run on bernoulli_glm, taken apart (``--glm-round-one``).

    For each observation and round-1 setting (:data:`GLM_SETTINGS`: the family, and 250 or
    500 prior simulations ``simgen.simulate(..., seed=round_seed(0, 1))``), one fit, 200,000
    of its draws at x_o and 200,000 prior draws. Columns: the fit's marginal sd over the
    reference's (mean, max); its mean's offset from the reference's in reference sds (max
    over coordinates); the volume ratio det(S_fit)^½ / det(S_ref)^½ of the two covariances;
    the prior mass of the fit's ε-HPD region with τ from 20,000 draws (three disjoint sets)
    and from 200,000; the same mass for the Gaussian ellipsoid of the fit's draws at the
    χ²₁₀ quantile (what the region would be if log q were the Gaussian of the fit's own
    mean and covariance) and for :class:`~simgen.sequential.EllipsoidRegion` (empirical
    quantile, radius × 1.2); the share of the reference outside each; and the exact
    region's mass (τ the lowest log-posterior of the 10⁴ reference draws, as
    :func:`true_regions`).
    """
    from simgen.sequential import EllipsoidRegion

    warm_up_torch()
    task = harness.load_task("bernoulli_glm")
    _, xs = harness.observations("bernoulli_glm", "report", num_observations)
    r2 = _chi2_quantile(task.DIM, 1 - epsilon)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        prior = task.prior.sample((200_000,)).float()
    sims = {
        n: simgen.simulate(task.simulator, task.prior, n, seed=round_seed(0, 1))
        for n in sorted({setting[1] for setting in settings})
    }
    lines = [
        "| obs | round 1 | fit sd / ref sd: mean, max | mean offset (ref sd), max | volume "
        "ratio | HPD mass: 3 x 20k draws | 200k | reference outside (20k, 200k) | Gaussian "
        "ellipsoid of the fit: mass, ref outside | EllipsoidRegion: mass, ref outside | exact |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, x_o in enumerate(xs):
        reference = harness.reference("bernoulli_glm", "report", i)["samples"].float()
        tau_exact = torch.sort(_glm_log_post(task, reference, x_o)).values[
            int(epsilon * len(reference))
        ]
        exact = float((_glm_log_post(task, prior, x_o) >= tau_exact).float().mean())
        ref_mean, ref_cov = reference.double().mean(0), torch.cov(reference.double().T)
        for family, n, train, npe_options in settings:
            name, _, mixing = family.partition("-")
            npe_options = {**npe_options, **({"mixing": mixing} if mixing else {})}
            npe = simgen.NPE(task.prior, estimator=name, **npe_options)
            posterior = npe.fit(sims[n].theta, sims[n].x, seed=round_seed(0, 1), **train)
            extra = {**train, **{k: v for k, v in npe_options.items() if k != "mixing"}}
            label = ", ".join([family, str(n), *(f"{k}={v}" for k, v in extra.items())])
            label += f" ({npe.history.epochs} epochs)"
            draws, region, log_q = _seeded_region(posterior, x_o)
            q_prior, q_ref = region.log_q(prior), region.log_q(reference)
            masses, tau, mass = _prior_masses(log_q, q_prior, epsilon)
            out20 = float((q_ref < region.threshold).float().mean())
            out200 = float((q_ref < tau).float().mean())
            mean, cov = draws.double().mean(0), torch.cov(draws.double().T)
            sd_ratio = cov.diagonal().sqrt() / ref_cov.diagonal().sqrt()
            offset = ((mean - ref_mean).abs() / ref_cov.diagonal().sqrt()).max()
            volume = math.exp(0.5 * (torch.logdet(cov) - torch.logdet(ref_cov)).item())
            gauss_prior = float((_mahalanobis2(prior, mean, cov) <= r2).float().mean())
            gauss_ref = float((_mahalanobis2(reference, mean, cov) > r2).float().mean())
            ellipsoid = EllipsoidRegion(draws[:20_000], epsilon)
            ell_prior = float(ellipsoid.contains(prior).float().mean())
            ell_ref = 1 - float(ellipsoid.contains(reference).float().mean())
            lines.append(
                f"| {i} | {label} | {float(sd_ratio.mean()):.2f}, "
                f"{float(sd_ratio.max()):.2f} | {float(offset):.2f} | {volume:.1f} | "
                f"{', '.join(f'{m:.3f}' for m in masses)} | {mass:.3f} | {out20:.4f}, "
                f"{out200:.4f} | {gauss_prior:.3f}, {gauss_ref:.4f} | {ell_prior:.3f}, "
                f"{ell_ref:.4f} | {exact:.4f} |"
            )
            print(lines[-1], flush=True)
    return lines


def _two_moons_log_likelihood(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """two_moons' closed-form log-likelihood (up to a constant): ``x - shift(θ) - (0.25, 0)``
    is ``r (cos a, sin a)`` with r ~ N(0.1, 0.01²), a ~ U(-π/2, π/2), and the polar map's
    Jacobian is 1/r; -inf where the offset points left (a outside (-π/2, π/2))."""
    s = 1 / math.sqrt(2)
    theta, x = theta.double(), x.double()
    shift = torch.stack(
        [-(theta[:, 0] + theta[:, 1]).abs() * s, (-theta[:, 0] + theta[:, 1]) * s], dim=-1
    )
    v = x - shift - torch.tensor([0.25, 0.0], dtype=torch.float64)
    r = v.norm(dim=-1)
    log_p = -0.5 * ((r - 0.1) / 0.01) ** 2 - torch.log(r)
    return torch.where(v[:, 0] > 0, log_p, torch.full_like(log_p, -math.inf))


def two_moons_regions(num_observations: int, epsilon: float = 1e-4) -> list[str]:
    """Prior mass of two_moons' exact ε-HPD region (the uniform prior makes the posterior
    density the likelihood inside the box): τ from 10⁵ exact posterior draws, the mass from
    2·10⁵ prior draws."""
    task = harness.load_task("two_moons")
    _, xs = harness.observations("two_moons", "report", num_observations)
    lines = []
    for i, x in enumerate(xs):
        draws = task.reference_posterior(x, 100_000, seed=1)
        tau = torch.sort(_two_moons_log_likelihood(draws, x)).values[int(epsilon * 100_000)]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(i)
            prior = task.prior.sample((200_000,))
        mass = float((_two_moons_log_likelihood(prior, x) >= tau).float().mean())
        lines.append(f"| two_moons | {i} | {mass:.4f} |")
    return lines


#: Flow options of a refit setting (the rest are training options).
FLOW_KEYS = ("transforms", "hidden_features", "bins", "mixing", "gaussian_baseline")


def _exact_region_sims(task, x_o, n: int, seed: int, epsilon: float = 1e-4):
    """``n`` simulations from two_moons' prior truncated to the exact ε-HPD region at x_o
    (rejection from the prior; the region of a perfect posterior fit)."""
    draws = task.reference_posterior(x_o, 100_000, seed=1)
    tau = torch.sort(_two_moons_log_likelihood(draws, x_o)).values[int(epsilon * 100_000)]
    g = torch.Generator().manual_seed(seed)
    kept = []
    while sum(len(k) for k in kept) < n:
        theta = torch.rand(200_000, 2, generator=g) * 2 - 1
        kept.append(theta[_two_moons_log_likelihood(theta, x_o) >= tau])
    theta = torch.cat(kept)[:n]
    return theta, task.simulator(theta, generator=torch.Generator().manual_seed(seed + 1))


def bank_folder(task: str, budget: int, spec: str, observation: int, seed: int):
    """Where ``bench_sequential --bank`` keeps a simgen run's rounds (gitignored: bulky)."""
    safe = "".join(c if c.isalnum() or c in "_-" else "_" for c in spec)[:60]
    return harness.CACHE / "sequential_banks" / f"{task}-n{budget}-{safe}-o{observation}-s{seed}"


def final_round_refits(
    task_name: str,
    banks: dict,
    seed: int,
    budget: int,
    rounds: int,
    settings: list[tuple[str, dict]],
    num_samples: int = 2000,
) -> list[str]:
    """What limits the last round (``--final-refits``). Per observation: the
    ``simgen.sequential`` run with NPE's defaults banked in ``banks[observation]`` (read
    back where ``bench_sequential --bank`` ran it, else run), its C2ST after every round,
    then the last round refitted on the same pooled simulations per setting: ``warm`` (from
    round r-1's weights, as the run) or ``scratch`` (fresh initialisation), with flow
    options (:data:`FLOW_KEYS`) and training options; ``seed=k`` shifts the training seed
    by k (the fit's own noise); ``draws`` (``draws=k``, 4) scores the run's own posterior
    on k other sets of draws (the score's own noise); ``oracle`` trains from scratch on
    ``budget`` simulations from the prior truncated to the exact 1e-4 region (two_moons
    only: the fit when the proposals are perfect). C2ST: ``num_samples`` draws
    (``sample(seed=seed)``, as the benchmark scores a run) against as many reference draws;
    the first line scores reference draws against other reference draws (the floor)."""
    from simgen.serialization import load

    warm_up_torch()
    task = harness.load_task(task_name)
    _, xs = harness.observations(task_name, "report", max(banks) + 1)
    lines = [
        "| obs | fit of the last round | epochs (best) | best validation loss | CPU s | C2ST |",
        "|---|---|---|---|---|---|",
    ]

    def score(posterior, x_o, reference, draw_seed=seed):
        draws = posterior.sample((num_samples,), x=x_o, seed=draw_seed).reshape(num_samples, -1)
        return float(c2st(reference, draws))

    for i, folder in banks.items():
        x_o, samples = xs[i], harness.reference(task_name, "report", i)["samples"]
        reference = samples[:num_samples]
        floor = float(c2st(reference, samples[num_samples : 2 * num_samples]))
        lines.append(f"| {i} | reference draws (the floor) | - | - | - | {floor:.3f} |")
        per_round, cpu = [], 0.0

        def callback(record, posterior, proposal, x_o=x_o, reference=reference, out=per_round):
            mass = getattr(proposal, "mass", None) if record.index < rounds else None
            out.append((record.index, score(posterior, x_o, reference), mass))

        start = time.process_time()
        posterior = simgen.sequential(
            simgen.NPE(task.prior), task.simulator, x_o, num_simulations=budget,
            num_rounds=rounds, seed=seed, bank=folder, callback=callback,
        )  # fmt: skip
        cpu = time.process_time() - start
        for r, value, mass in per_round:
            region = f", next region {mass:.3f} of the prior" if mass is not None else ""
            lines.append(f"| {i} | round {r} as run{region} | - | - | - | {value:.3f} |")
        lines.append(f"| {i} | the run (CPU with scoring) | - | - | {cpu:.0f} | - |")
        print("\n".join(lines[-len(per_round) - 2 :]), flush=True)
        theta, x = posterior.rounds.theta, posterior.rounds.x
        init = load(folder / f"round_{rounds - 1}.simgen", prior=task.prior)
        for start_from, options in settings:
            label = ", ".join([start_from, *(f"{k}={v}" for k, v in options.items())])
            if start_from == "draws":  # the run's own posterior, scored on other draws
                values = [
                    score(posterior, x_o, reference, seed + k)
                    for k in range(1, options.get("draws", 4) + 1)
                ]
                spread = f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"
                lines.append(f"| {i} | round {rounds} as run, other draws | - | - | - | {spread} |")
                continue
            options = dict(options)
            flow = {k: options.pop(k) for k in FLOW_KEYS if k in options}
            fit_seed = round_seed(seed, rounds) + options.pop("seed", 0)
            data = (theta, x)
            if start_from == "oracle":
                data = _exact_region_sims(task, x_o, budget, fit_seed)
            npe = simgen.NPE(task.prior, **flow)
            start = time.process_time()
            warm = {"init": init} if start_from == "warm" else {}
            fitted = npe.fit(*data, seed=fit_seed, **warm, **options)
            cpu = time.process_time() - start
            h = npe.history
            lines.append(
                f"| {i} | {label} | {h.epochs} ({h.best_epoch}) | {h.best_validation_loss:.4f} "
                f"| {cpu:.0f} | {score(fitted, x_o, reference):.3f} |"
            )
            print(lines[-1], flush=True)
    return lines
