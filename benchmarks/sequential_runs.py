"""The runs behind :mod:`benchmarks.bench_sequential`: one method's rounds at a budget.

:func:`run_simgen` runs ``simgen.sequential`` (TSNPE, SNLE, SNRE, amortised NPE) and
:func:`run_sbi` sbi's TSNPE, SNPE-C or SNLE on the same first round; each returns
``draw(n)``, the ``n`` scored posterior draws for the run's observation. A simgen spec's
:data:`NPE_OPTIONS` go to the flow it trains: NPE's, or SNLE's likelihood flow (NLE's
``**estimator_options``, e.g. ``gaussian_baseline``); SNRE refuses them. Each round's row
records whether its flow used the linear-Gaussian base (``baseline``). For SNLE and
SNRE, ``draw(n, method)`` draws them with another MCMC method from the same final posterior
and seed: the rounds are computed once and every method's draws are of the same likelihood
(or ratio) potential (``bench_sequential --finals``).
"""

from __future__ import annotations

import sys
import time

import torch

import simgen
from benchmarks.sequential_tables import family_of, mcmc_summary
from simgen.errors import ConfigError
from simgen.sequential.rounds import round_seed, split_budget

#: Posterior draws behind sbi's TSNPE threshold: simgen's ``REGION_DRAWS``, not sbi's default
#: 10⁶ (10⁶ leakage-rejected draws of a 10-D posterior took ~25 minutes a round).
THRESHOLD_DRAWS = 20_000
#: Options of a simgen spec that go to ``simgen.NPE`` (the rest go to ``simgen.sequential``).
NPE_OPTIONS = ("support", "mixing", "transforms", "gaussian_baseline", "hidden_features", "bins")


def flow_of(posterior) -> str:
    """The flow a simgen posterior trained: its family options' ``mixing`` (``"none"`` for
    flows built before the option existed; ``"-"`` for estimators that are not flows), so
    the table can say which flow definition each run used."""
    options = getattr(getattr(posterior, "estimator", None), "options", None)
    if not isinstance(options, dict):
        return "-"
    return f"mixing={options.get('mixing', 'none')}"


def sbi_prior(prior):
    if isinstance(prior, simgen.BoxUniform):
        from sbi.utils import BoxUniform as SbiBox

        return SbiBox(prior.low, prior.high)
    return prior


def run_simgen(name: str, options: dict, task, x_o, budget: int, rounds: int, seed: int, scorer):
    options = dict(options)
    estimator = family_of(name, options)
    options.pop("estimator", None)
    method = options.pop("mcmc_method", "rwm")
    mcmc = simgen.MCMCConfig(sampler_options=options.pop("sampler_options", {}), method=method)
    final = {"method": options.pop("final_method")} if "final_method" in options else {}
    npe_options = {k: options.pop(k) for k in NPE_OPTIONS if k in options}
    if name == "simgen_snre" and npe_options:
        raise ConfigError(f"simgen_snre trains a classifier, not a flow: drop {npe_options}.")
    if name == "simgen_snle":  # the flow options go to NLE's likelihood flow
        front = simgen.NLE(task.prior, mcmc=mcmc, **npe_options)
    elif name == "simgen_snre":
        front = simgen.NRE(task.prior, mcmc=mcmc)
    else:
        front = simgen.NPE(task.prior, estimator=estimator, **npe_options)
    options.setdefault("num_rounds", 1 if name == "simgen_npe" else rounds)
    posterior = simgen.sequential(
        front, task.simulator, x_o, num_simulations=budget, seed=seed,
        callback=lambda *a: _with_mcmc(scorer, *a), **options,
    )  # fmt: skip
    scorer.flow = flow_of(posterior)

    def draw(n: int, method: str | None = None):
        chosen = {"method": method} if method else final
        samples = posterior.sample((n,), x=x_o, seed=seed, **chosen)
        scorer.mcmc = mcmc_summary(posterior)
        return samples

    return draw


def _with_mcmc(scorer, record, posterior, proposal) -> None:
    """The scorer's per-round row, with :func:`mcmc_summary` of the round's posterior
    draws (those behind the convergence figure) for SNLE."""
    scorer(record, posterior, proposal)
    summary = mcmc_summary(posterior)
    if summary is not None:
        scorer.rows[-1]["mcmc"] = summary
    used = uses_baseline(posterior)
    if used is not None:
        scorer.rows[-1]["baseline"] = used


def uses_baseline(posterior) -> bool | None:
    """Whether a round's flow models the residual of its linear-Gaussian base (what
    ``gaussian_baseline="auto"`` decided at that round's fit; the flow inside NLE's
    dequantising wrapper); ``None`` where the estimator has no such base."""
    estimator = getattr(posterior, "estimator", None)
    estimator = getattr(estimator, "inner", estimator)
    used = getattr(estimator, "uses_baseline", None)
    return None if used is None else bool(used)


def run_sbi(name: str, options: dict, task, x_o, budget: int, rounds: int, seed: int, scorer):
    from sbi.inference import NLE, NPE_C
    from sbi.utils import RestrictedPrior, get_density_thresholder

    torch.manual_seed(seed)
    prior = sbi_prior(task.prior)
    sizes = split_budget(budget, options.get("num_rounds", rounds))
    inference = (NLE if name == "sbi_snle" else NPE_C)(prior=prior, show_progress_bars=False)
    proposal, posterior = prior, None
    for r, n in enumerate(sizes, start=1):
        if r == 1:  # the same first round as simgen.sequential's
            sims = simgen.simulate(task.simulator, task.prior, n, seed=round_seed(seed, 1))
            theta, x = sims.theta, sims.x
        else:
            torch.manual_seed(round_seed(seed, r))
            theta = proposal.sample((n,)).float()
            x = task.simulator(theta, generator=torch.Generator().manual_seed(round_seed(seed, r)))
            keep = torch.isfinite(x.reshape(n, -1)).all(-1)
            theta, x = theta[keep], x[keep]
        if name == "sbi_tsnpe":
            inference.append_simulations(theta, x).train(force_first_round_loss=True)
        elif name == "sbi_snpec":
            inference.append_simulations(theta, x, proposal=proposal).train()
        else:
            inference.append_simulations(theta, x).train()
        posterior = inference.build_posterior().set_default_x(x_o)
        print(
            f"{name} round {r}: {len(theta)} sims, {time.process_time():.0f} CPU s",
            file=sys.stderr,
            flush=True,
        )
        if r == len(sizes):
            break
        if name == "sbi_tsnpe":
            threshold = get_density_thresholder(
                posterior, quantile=1e-4, num_samples_to_estimate_support=THRESHOLD_DRAWS
            )
            proposal = RestrictedPrior(prior, threshold, sample_with="rejection")
        else:
            proposal = posterior
    return lambda k: posterior.sample((k,), show_progress_bars=False)
