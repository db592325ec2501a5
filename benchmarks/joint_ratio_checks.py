"""The latent chain and the diagnostics of ``bench_joint_ratio``: ROLR's target forms, their
risk at the exact ratio, and what the joint quantities carry on both simulators.

The latent chain (``simulators._latent_chain``) has a closed-form marginal ratio, so each
loss's posterior KL is exact and each target's noise can be measured against the quantity it
estimates. ROLR's forms other than simgen's (:mod:`simgen.losses.ratio`) are defined here, as
measured alternatives: ``theta_1`` regresses :math:`r(x, z)` on rows drawn at θ₁ and
:math:`1/r(x, z)` on rows drawn at θ (clipped at ``CLIP`` in log), ``weighted`` the same with
each row weighted by :math:`1/(1 + \\hat r)^2` (θ₁ rows) or :math:`1/(1 + 1/\\hat r)^2` (θ
rows), the predictions detached (a weight of (θ, x) alone keeps the minimiser), and ``log``
regresses :math:`\\log r(x, z)` (biased: its minimiser is :math:`\\mathbb E[\\log r(x, z)\\mid
x]`). :func:`rescore_rows` times M references re-scored in one pass against re-simulating.
Its cells go with ``bench_joint_ratio``'s (``benchmarks/cells/joint_ratio/``). Run through
``python -m benchmarks.bench_joint_ratio``.
"""

from __future__ import annotations

import math
import statistics
import time

import torch

import simgen
from benchmarks import cell_files
from simgen.joint_ratio import PriorReferences
from simgen.losses.ratio import ReferenceRatioLoss
from simgen.simulate import run_simulator
from simulators import _latent_chain as chain
from simulators import particle_shower as shower

#: Clip of f and log r(x, z) inside the exponentials of the ``theta_1`` and ``weighted`` forms.
CLIP = 10.0
#: Chain variants: name → (loss, ROLR form or None for simgen's own).
CHAIN_VARIANTS = {
    "nre": ("nre", None),
    "carl": ("carl", None),
    "alices": ("alices", None),
    "cascal": ("cascal", None),
    "rolr": ("rolr", None),
    "rascal": ("rascal", None),
    "rolr-theta_1": ("rolr", "theta_1"),
    "rascal-theta_1": ("rascal", "theta_1"),
    "rolr-weighted": ("rolr", "weighted"),
    "rolr-log": ("rolr", "log"),
    "alices-a0.1": ("alices-a0.1", None),
    "alices-a1": ("alices-a1", None),
    "nrec_soft": ("nrec_soft", None),
    "nrec_soft-k2": ("nrec_soft-k2", None),
}


def _form_risk(form: str, f, log_r, y):
    """Per-row ROLR risk of logits ``f`` against joint log ratios ``log_r`` in ``form``."""
    if form == "mixture":
        r_m = 2 * torch.sigmoid(log_r)
        return (2 * torch.sigmoid(f) - r_m) ** 2 + (2 * torch.sigmoid(-f) - (2 - r_m)) ** 2
    if form == "log":
        return (f - log_r) ** 2
    fc, lr = f.clamp(-CLIP, CLIP), log_r.clamp(-CLIP, CLIP)
    w1 = w0 = 1.0
    if form == "weighted":
        w1, w0 = 1 / (1 + fc.detach().exp()) ** 2, 1 / (1 + (-fc).detach().exp()) ** 2
    return y * w1 * (fc.exp() - lr.exp()) ** 2 + (1 - y) * w0 * ((-fc).exp() - (-lr).exp()) ** 2


class FormLoss(ReferenceRatioLoss):
    """ROLR (and RASCAL's score term) with the ratio term of another ``form``."""

    def __init__(self, loss: ReferenceRatioLoss, form: str):
        super().__init__(loss.classifier, "rolr", loss.weight, loss.scale)
        self.form = form

    def per_row(self, theta, x, from_reference, joint_log_ratio=None, joint_score=None):
        y = from_reference.to(theta.dtype)
        with torch.enable_grad():
            theta = theta.detach().requires_grad_(self.weight > 0)
            f = self.classifier(theta, x)
            if self.weight > 0:
                (grad,) = torch.autograd.grad(f.sum(), theta, create_graph=self.training)
        loss = _form_risk(self.form, f, joint_log_ratio, y)
        if self.weight > 0:
            error = ((grad - joint_score) / self.scale).square().sum(-1)
            loss = loss + self.weight * (1 - y) * error
        return loss


def _form_nre(form: str):
    class FormNRE(simgen.NRE):
        def _loss(self, classifier, extras):
            return FormLoss(super()._loss(classifier, extras), form)

    return FormNRE


def chain_rows(n: int, seeds: int) -> list[str]:
    """Posterior KL (``posterior_kl``, 20 observations, nats) of NRE-C and each loss or form on
    the same ``n`` chain simulations per seed, cached per (variant, seed)."""
    from benchmarks.bench_joint_ratio import CELLS, bootstrap, fit, simulations, soft_count

    older = CELLS / f"chain-n{n}-seeds5.json"  # the losses whose definitions are unchanged
    older = cell_files.read_cell(older) or {}
    kls: dict[str, list[float]] = {name: [] for name in CHAIN_VARIANTS}
    for seed in range(seeds):
        sims = None
        for name, (loss, form) in CHAIN_VARIANTS.items():
            if name in ("nre", "carl", "alices", "cascal") and len(older.get(name, [])) > seed:
                kls[name].append(older[name][seed])
                continue
            path = CELLS / f"chain-{name}-n{n}-s{seed}.json"
            if (cached := cell_files.read_cell(path)) is not None:
                kls[name].append(cached["kl"])
                continue
            count = soft_count(loss for loss, _ in CHAIN_VARIANTS.values())
            sims = simulations(chain, n, seed, references=count) if sims is None else sims
            nre_class = simgen.NRE if form is None else _form_nre(form)
            post = fit(chain, loss, sims, n, seed, x_shape=(1,), nre_class=nre_class)
            kls[name].append(chain.posterior_kl(post))
            cell_files.write_cell(path, {"kl": kls[name][-1], "epochs": post.history.epochs})
            print("chain", seed, name, round(kls[name][-1], 3), flush=True)
    rows = [
        "## The latent chain (closed-form posterior)",
        "",
        f"`simulators._latent_chain`, {n:,} simulations per seed, the same for every method "
        "(NRE-C on the pairs, the ratio losses on `ratio_rows()`); posterior KL from the exact "
        "posterior on an 81 × 81 grid, mean over 20 observations (nats, 0 is perfect; the prior "
        f"is 1.33 away), mean over {seeds} seeds with a 95% bootstrap interval and the range "
        "over seeds. `rolr`/`rascal` are simgen's (targets against the balanced mixture); "
        "`-theta_1` is the paper's form, `-weighted` and `-log` the alternatives of "
        "`benchmarks/joint_ratio_checks.py`; `nrec_soft` (K = 5) and `nrec_soft-k2` (K = 2) "
        "are NRE-C with the joint ratio's soft labels, on the pairs with their references.",
        "",
        "| simulations | method | KL | 95% interval | seeds |",
        "|---|---|---|---|---|",
    ]
    for name, values in kls.items():
        low, high = bootstrap(values)
        rows.append(
            f"| {n} | {name} | {sum(values) / len(values):.3f} | [{low:.3f}, {high:.3f}] | "
            f"{min(values):.3f}–{max(values):.3f} |"
        )
    return rows


def _chain_marginal(rows) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact f* = log p(x|θ) − log p(x) and log p(x|θ) − log p(x|θ₁) of chain rows."""
    x = rows.x
    noise = chain.C**2 * (chain.B**2 * chain.S_P**2 + chain.S_S**2 + chain.S_D**2) + chain.S_X**2
    evidence = torch.distributions.Normal(0.0, math.sqrt(noise + 2 * chain.C**2)).log_prob(x)
    f_star = chain.log_likelihood(rows.theta, x) - evidence
    return f_star, chain.log_ratio(rows.theta, rows.theta_1, x)


def risk_rows(n: int = 2000, seed: int = 0) -> list[str]:
    """Each ROLR form's empirical risk on ``n`` chain simulations (2n rows) at the exact
    minimiser f* and at f = 0 (the prior as the posterior), the paired difference in standard
    errors, and the share of the risk at f* carried by its 10 largest rows; with the joint
    target the loss reads, and with the latents integrated out (closed form)."""
    from benchmarks.bench_joint_ratio import simulations

    rows = simulations(chain, n, seed).ratio_rows()
    f_star, marginal = _chain_marginal(rows)
    y = rows.from_reference.float()
    out = [
        "## ROLR's target: its empirical risk at the true ratio",
        "",
        f"The latent chain, {n:,} simulations (seed {seed}, {2 * n:,} `ratio_rows`). Each "
        "form's risk at the exact minimiser f* = log p(x|θ) − log p(x) and at f = 0 (the "
        "prior as the posterior), their paired difference in standard errors (negative: f* "
        "is preferred, as it must be for training to find it), and the share of the risk at "
        "f* in its 10 largest rows; with the joint target the loss reads, and with the "
        "latents integrated out (p(x|θ)/p(x|θ₁), closed form). `theta_1`: the paper's form, "
        f"clip ±{CLIP:g}; `mixture`: simgen's.",
        "",
        "| form | target | risk at f* | risk at f = 0 | difference (SE) | top 10 rows |",
        "|---|---|---|---|---|---|",
    ]
    for form in ("theta_1", "mixture"):
        for label, target in (("joint log r(x, z)", rows.joint_log_ratio), ("log r(x)", marginal)):
            at_star = _form_risk(form, f_star, target, y)
            at_zero = _form_risk(form, torch.zeros_like(f_star), target, y)
            diff = at_star - at_zero
            z = float(diff.mean() / (diff.std() / len(diff) ** 0.5))
            top = at_star.sort(descending=True).values
            out.append(
                f"| {form} | {label} | {float(at_star.mean()):.3g} | {float(at_zero.mean()):.3g}"
                f" | {z:+.1f} | {float(top[:10].sum() / top.sum()):.2f} |"
            )
    return out


def _shower_explained(n: int, seed: int) -> list[float]:
    """Per observable, the share of Var(x | θ) that the latents explain, Var E[x|z] / Var x,
    at θ_o (the observation's resolution is the rest)."""
    import pyro.poutine as poutine

    theta = shower.theta_o.expand(n, -1).clone()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        tr = poutine.trace(poutine.condition(shower.model, data={"theta": theta})).get_trace(n)
    fn = tr.nodes["x"]["fn"].base_dist
    latent = fn.loc.var(0)
    return (latent / (latent + fn.scale.square().mean(0))).tolist()


def carried_rows(n: int = 5000, seed: int = 0, marginal_rows: int = 200) -> list[str]:
    """What the joint quantities carry on both simulators (see the table's caption)."""
    from benchmarks.bench_joint_ratio import simulations

    out = [
        "## What the joint quantities carry",
        "",
        f"{n:,} simulations from the prior with a per-row θ₁ from the prior, seed {seed}. "
        "*Soft labels*: the share of rows whose σ(log r(x, z)) lies in (0.05, 0.95) (the rest "
        "are almost CARL's hard labels). *R²*: the share of Var log r(x, z) that x explains, "
        "corr²(log r(x, z), log r(x)) on rows drawn at θ (exact on the chain; on the shower "
        f"from {marginal_rows} rows and two independent importance-sampling estimates of log "
        "r(x) of 2,500 showers per θ each, disattenuated: cov(J, M₁)cov(J, M₂)/(Var J "
        "cov(M₁, M₂))). *Label noise*: E(s − σ(log r(x)))² of ALICES's soft label over "
        "CARL's E(y − σ(log r(x)))² on all rows, the variance ALICES's target adds per row "
        "relative to CARL's (exact on the chain; on the shower from the two estimates, each "
        "squared error a product of the two, approximate since σ of an estimated log ratio is "
        "biased). *Score*: Var t_d / Var ∂_d log p(x|θ) per θ "
        "component (chain). *Latents explain*: Var E[x|z] / Var x per observable at θ_o "
        "(shower: jet mass, multiplicity, visible energy, leading and subleading fraction).",
        "",
        "| simulator | soft labels | R² | label noise | score | latents explain |",
        "|---|---|---|---|---|---|",
    ]
    rows = simulations(chain, n, seed).ratio_rows()
    f_star, marginal = _chain_marginal(rows)
    own = ~rows.from_reference
    joint = rows.joint_log_ratio
    soft = torch.sigmoid(joint)
    share = float(((soft > 0.05) & (soft < 0.95)).float().mean())
    r2 = float(torch.corrcoef(torch.stack([joint[own], marginal[own]]))[0, 1] ** 2)
    y = rows.from_reference.float()
    # ALICES's label s and CARL's 1 - y both estimate σ(log p(x|θ) − log p(x|θ₁)).
    truth = torch.sigmoid(marginal)
    noise = float((soft - truth).square().mean() / ((1 - y) - truth).square().mean())
    leaf = rows.theta[own].double().clone().requires_grad_(True)
    (score,) = torch.autograd.grad(chain.log_likelihood(leaf, rows.x[own].double()).sum(), leaf)
    ratio = rows.joint_score[own].double().var(0) / score.var(0)
    spread = chain.C**2 * (chain.B**2 * chain.S_P**2 + chain.S_S**2 + chain.S_D**2)
    explained = spread / (spread + chain.S_X**2)
    out.append(
        f"| latent chain | {share:.2f} | {r2:.2f} | {noise:.2f} | "
        f"{', '.join(f'{float(v):.1f}' for v in ratio)} | {explained:.2f} |"
    )
    run = simulations(shower, n, seed)
    soft = torch.sigmoid(run.joint_log_ratio)
    share = float(((soft > 0.05) & (soft < 0.95)).float().mean())
    m = marginal_rows
    theta, theta_1, x = run.theta[:m], run.theta_1[:m], run.x[:m]
    sim = shower.simulator
    estimates = []
    for half in (0, 1):
        both = sim.marginal_log_prob(torch.cat([theta, theta_1]), x.repeat(2, 1), 2500, seed=half)
        estimates.append((both[:m] - both[m:]).double())
    j = run.joint_log_ratio[:m].double()
    c = torch.cov(torch.stack([j, *estimates]))
    r2 = float(c[0, 1] * c[0, 2] / (c[0, 0] * c[1, 2]))
    # Rows drawn at θ (CARL's label 1); a swapped row gives the same two squared errors.
    s, (t1, t2) = torch.sigmoid(j), (torch.sigmoid(e) for e in estimates)
    noise = float(((s - t1) * (s - t2)).mean() / ((1 - t1) * (1 - t2)).mean())
    explained = ", ".join(f"{v:.2f}" for v in _shower_explained(n, seed))
    out.append(f"| particle_shower | {share:.2f} | {r2:.2f} | {noise:.2f} | — | {explained} |")
    return out


def _cpu(fn, *args, **kwargs) -> float:
    """CPU seconds of one call ``fn(*args, **kwargs)``."""
    start = time.process_time()
    fn(*args, **kwargs)
    return time.process_time() - start


def _resimulate(task, theta, rows) -> None:
    """The re-simulation route: one run of ``theta`` with seed 0 per column of ``rows``."""
    for j in range(rows.shape[1]):
        run_simulator(task.simulator, theta, seed=0, joint=True, theta_1=rows[:, j])


def _rescore_times(task, n: int, counts, reps: int) -> dict[str, list[float]]:
    """CPU seconds of the run alone, the one pass and re-simulating, ``reps`` each."""
    sim, prior = task.simulator, task.prior
    run = simgen.simulate(sim, prior, n, seed=0, joint=True)  # also the warm-up
    times = {
        "joint": [_cpu(simgen.simulate, sim, prior, n, seed=0, joint=True) for _ in range(reps)]
    }
    for m in counts:
        refs, rows = PriorReferences(m), prior.sample((n, m)).float()
        one = [
            _cpu(simgen.simulate, sim, prior, n, seed=0, joint=True, theta_1=refs)
            for _ in range(reps)
        ]
        times[f"one-{m}"] = one
        times[f"again-{m}"] = [_cpu(_resimulate, task, run.theta, rows) for _ in range(reps)]
    return times


def rescore_rows(n: int = 4000, counts=(1, 4, 9, 19), reps: int = 3) -> list[str]:
    """CPU seconds of ``n`` joint simulations with M references re-scored in the one pass
    (``theta_1=PriorReferences(M)``) against the same M references by re-simulation (M more
    ``run_simulator`` runs of the same θs and seed), per simulator; the median of ``reps``
    repeats and their range, cached (timings, not results, so a rerun keeps them)."""
    from benchmarks.bench_joint_ratio import CELLS

    path = CELLS / f"rescore-n{n}-m{'_'.join(map(str, counts))}-r{reps}.json"
    if (measured := cell_files.read_cell(path)) is None:
        measured = {}
        for name, task in (("latent chain", chain), ("particle_shower", shower)):
            measured[name] = _rescore_times(task, n, counts, reps)
        cell_files.write_cell(path, measured)
    out = [
        "## Re-scoring against re-simulating: the CPU cost of M references",
        "",
        f"{n:,} joint simulations (batches of 1,000, one thread) with M prior-drawn references "
        "each. *One pass*: `simulate(..., joint=True, theta_1=PriorReferences(M))`, every "
        "recorded trace re-scored at its M references; *re-simulating*: the run alone "
        "(`joint=True`) and, as `stack_references` needs, M more runs of the same θs and seed, "
        "each re-scored at one column. CPU seconds, the median of "
        f"{reps} repeats (range); *per reference*: (one pass − the run alone) / M over the "
        "run alone, what each reference adds in units of a simulation pass.",
        "",
        "| simulator | M | run alone s | one pass s | re-simulating s | per reference |",
        "|---|---|---|---|---|---|",
    ]
    for name, times in measured.items():
        alone = statistics.median(times["joint"])
        for m in counts:
            one, again = times[f"one-{m}"], times[f"again-{m}"]
            extra = (statistics.median(one) - alone) / m / alone
            out.append(
                f"| {name} | {m} | {alone:.2f} | {statistics.median(one):.2f} "
                f"({min(one):.2f}–{max(one):.2f}) | {alone + statistics.median(again):.2f} "
                f"({alone + min(again):.2f}–{alone + max(again):.2f}) | {extra:.2f} |"
            )
    return out
