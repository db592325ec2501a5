"""Run the whole diagnostic suite once and write a Markdown or HTML report with figures.

Simulations and posterior samples are drawn once (:func:`~simgen.diagnostics.draw`) and
shared by SBC, TARP, coverage, the z-scores, L-C2ST and the misspecification test, so the
suite costs about as much as one SBC plus one batched L-C2ST training.

**One verdict.** Each of the :math:`m` hypothesis tests that run (SBC, TARP, coverage,
z-scores, and given ``x_o`` the predictive check, L-C2ST and the misspecification test) is run
at level :math:`\alpha / m`, so that the probability that an exact posterior fails any of them
is at most :math:`\alpha` (Bonferroni; the checks share simulations and are dependent, which
Bonferroni allows). C2ST against reference samples is an accuracy threshold, not a test with
a level, and is reported outside the correction; it still counts in ``passed``.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError, NoDensityError
from .advice import MEANING, advice
from .c2st import c2st_posterior
from .coverage import coverage_from_log_probs, posterior_log_probs
from .lc2st import lc2st_from_samples
from .misspecification import misspecification
from .predictive import predictive_check
from .sampling import draw, quiet_kwargs, seeded, stream_seed
from .sbc import sbc_from_samples
from .tarp import tarp_from_samples
from .zscore import _prior_variance, zscore_from_samples

__all__ = ["DiagnosisReport", "diagnose"]


@dataclass
class DiagnosisReport:
    """Results of :func:`diagnose`.

    Attributes:
        results: Diagnostic name → result object (each with ``passed``, ``to_dict``, ``plot``).
        skipped: Diagnostic name → why it was not run.
        x_o: The observation used for the observation-level checks, if any.
        theta_o: Its true parameters, if known (marked in the corner plot).
        samples_o: Posterior samples at ``x_o`` for the corner plot, if ``x_o`` was given.
        path: Where the report was written, if it was.
        alpha: Family-wise level of the verdict.
        level: Level of each test, ``alpha / m`` (Bonferroni over the ``m`` tests).
        labels: Axis labels of the figures: a :class:`simgen.plots.Labels` (parameter names
            and units, feature names) or one label per parameter; ``None`` for
            :math:`\theta_d` and ``x[f]``.
        reference_samples: Reference posterior samples at ``x_o``, overlaid on the corner plot.
        history: The posterior's training :class:`~simgen.training.History` (or its
            ``to_dict()``), if it has one (drawn as the training curve).
    """

    results: dict[str, Any]
    skipped: dict[str, str] = field(default_factory=dict)
    x_o: Tensor | None = None
    theta_o: Tensor | None = None
    samples_o: Tensor | None = None
    path: Path | None = None
    alpha: float = 0.05
    level: float = 0.05
    labels: Any = None
    reference_samples: Tensor | None = None
    history: Any = None

    @property
    def passed(self) -> bool:
        """Every diagnostic that ran passed."""
        return all(r.passed for r in self.results.values())

    @property
    def num_tests(self) -> int:
        """Tests the Bonferroni correction divides ``alpha`` among (C2ST is not one)."""
        return sum(name != "c2st" for name in self.results)

    @property
    def verdict(self) -> str:
        """One sentence: the overall result and the correction behind it."""
        head = (
            f"{self.num_tests} tests at family-wise level {self.alpha:g} (Bonferroni: each "
            f"at {self.alpha:g}/{self.num_tests} = {self.level:.3g})"
        )
        failed = [name for name, r in self.results.items() if not r.passed]
        if not failed:
            return f"PASSED: all {head}."
        return f"FAILED {', '.join(failed)}: {head}."

    def summary(self) -> str:
        """The verdict, one line per check, and for each failed check what it means and
        what to try; this is what ``print(report)`` shows."""
        lines = [self.verdict]
        for name, result in self.results.items():
            mark = "pass" if result.passed else "FAIL"
            lines.append(f"  {name:<16} {mark}  {_summary(result)}")
        for name, why in self.skipped.items():
            lines.append(f"  {name:<16} skipped  {why}")
        for name, result in self.results.items():
            if not result.passed:
                lines.append(f"{name}: {advice(name, result)}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary of every result."""
        return {
            "passed": self.passed,
            "verdict": self.verdict,
            "alpha": self.alpha,
            "level": self.level,
            "results": {name: r.to_dict() for name, r in self.results.items()},
            "skipped": dict(self.skipped),
        }

    def figures(self) -> dict[str, Any]:
        """Every figure of the report, name → :class:`matplotlib.figure.Figure`, labelled
        with ``labels``: the posterior at ``x_o`` (over the reference when there is one),
        the training curve, then one figure per diagnostic (two for SBC: the ECDF band that
        decides it and the rank histograms). :data:`CAPTIONS` says what each one shows."""
        from .. import plots

        labels = plots.as_labels(self.labels)
        figures: dict[str, Any] = {}
        if self.samples_o is not None:
            sets: Any = self.samples_o
            if self.reference_samples is not None:
                sets = {"posterior": self.samples_o, "reference": self.reference_samples}
            figures["posterior"] = plots.corner(sets, truth=self.theta_o, labels=labels)
        history = self.history
        if isinstance(history, Mapping):  # a History's to_dict(), as a model file keeps it
            losses = history.get("validation_loss")
        else:
            losses = getattr(history, "validation_loss", None)
        if losses:
            figures["training"] = plots.training_curve(history)
        for name, result in self.results.items():
            if name == "sbc":
                figures["sbc"] = plots.sbc_ecdf(result, labels=labels)
                figures["sbc_ranks"] = plots.sbc_ranks(result, labels=labels)
            elif name == "zscore":
                figures[name] = plots.zscore(result, labels=labels)
            elif name == "predictive":
                figures[name] = plots.predictive(result, labels=labels)
            else:
                figures[name] = result.plot()
        return figures

    def write(self, path: str | Path) -> Path:
        """Write the report; ``.html`` gives one self-contained HTML file (figures embedded
        as PNG), else Markdown with figures in ``<stem>_figures/`` next to it."""
        path = Path(path)
        fig_dir = path.parent / f"{path.stem}_figures"
        fig_dir.mkdir(parents=True, exist_ok=True)
        figures = {}
        for name, fig in self.figures().items():
            figures[name] = fig_dir / f"{name}.png"
            fig.savefig(figures[name], dpi=FIGURE_DPI, bbox_inches="tight")
        text = (
            _html(self, figures)
            if path.suffix.lower() in (".html", ".htm")
            else _markdown(self, figures, path.parent)
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        self.path = path
        return path


FIGURE_DPI = 150
CAPTIONS = {
    "posterior": "Posterior samples at x_o (over the reference samples when given); the true "
    "parameters marked where known; axis ranges from the 0.5%-99.5% quantiles.",
    "training": "Training and validation loss per epoch; the dot marks the epoch whose "
    "weights are kept.",
    "sbc": "SBC: ECDF of the normalised ranks minus the uniform CDF; the verdict is whether "
    "every curve stays inside the simultaneous band (its level in the legend).",
    "sbc_ranks": "SBC rank histograms with the pointwise binomial band per bin (level in the "
    "legend): U shape overconfident, cap underconfident, slope biased.",
    "tarp": "TARP expected coverage probability against credibility, with its bootstrap band.",
    "coverage": "Expected HPD coverage against credibility, with its binomial band; below "
    "the diagonal is overconfident.",
    "zscore": "Posterior z-score against contraction, per parameter.",
    "predictive": "Posterior predictive distribution of each feature, x_o marked.",
    "lc2st": "L-C2ST at x_o: local PP plot with its null band, and marginals.",
    "misspecification": "Atypicality of x_o among prior-predictive simulations.",
    "c2st": "C2ST accuracy per fold against chance and the pass threshold.",
}


def _summary(result: Any) -> str:
    """The result's short ``repr`` without its class name and ``passed`` field."""
    text = repr(result)
    inner = text[text.find("(") + 1 : -1] if text.endswith(")") else text
    return inner.removeprefix(f"passed={result.passed}, ")


def _rows(report: DiagnosisReport) -> list[tuple[str, str, str, str]]:
    rows = [
        (
            name,
            "pass" if r.passed else "**FAIL**",
            MEANING.get(name, ""),
            _summary(r) + (f" — {advice(name, r)}" if not r.passed else ""),
        )
        for name, r in report.results.items()
    ]
    rows += [(name, "skipped", MEANING.get(name, ""), why) for name, why in report.skipped.items()]
    return rows


def _markdown(report: DiagnosisReport, figures: dict[str, Path], root: Path) -> str:
    lines = ["# simgen diagnostics report", "", f"Verdict: **{report.verdict}**", ""]
    lines += ["| diagnostic | result | tests that | summary |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in _rows(report)]
    for name, fig in figures.items():
        lines += ["", f"## {name}", "", f"![{name}]({fig.relative_to(root).as_posix()})"]
        lines += ["", CAPTIONS.get(name, "")]
    lines += ["", "## Raw numbers", "", "```json", json.dumps(report.to_dict(), indent=1), "```"]
    return "\n".join(lines) + "\n"


def _html(report: DiagnosisReport, figures: dict[str, Path]) -> str:
    verdict = report.verdict
    rows = "".join(
        f"<tr><td>{html.escape(a)}</td><td>{html.escape(b.strip('*'))}</td>"
        f"<td>{html.escape(c)}</td><td>{html.escape(d)}</td></tr>"
        for a, b, c, d in _rows(report)
    )
    images = "".join(
        f"<figure><h2>{html.escape(name)}</h2><img alt='{html.escape(name)}' "
        f"style='max-width:100%' "
        f"src='data:image/png;base64,{base64.b64encode(fig.read_bytes()).decode()}'/>"
        f"<figcaption>{html.escape(CAPTIONS.get(name, ''))}</figcaption></figure>"
        for name, fig in figures.items()
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>simgen diagnostics</title>"
        "</head><body><h1>simgen diagnostics report</h1>"
        f"<p>Verdict: <b>{html.escape(verdict)}</b></p><table border='1'><tr><th>diagnostic</th>"
        f"<th>result</th><th>tests that</th><th>summary</th></tr>{rows}</table>{images}"
        f"<pre>{html.escape(json.dumps(report.to_dict(), indent=1))}</pre></body></html>\n"
    )


def diagnose(
    posterior: Any,
    prior: Any,
    simulator: Callable[..., Tensor],
    x_o: Tensor | None = None,
    theta_o: Tensor | None = None,
    reference_samples: Tensor | None = None,
    num_simulations: int = 500,
    num_samples: int = 500,
    seed: int = 0,
    path: str | Path | None = None,
    alpha: float = 0.05,
    labels: Any = None,
) -> DiagnosisReport:
    """Run SBC, TARP, HPD coverage (if ``log_prob`` works), z-scores and, given ``x_o``, a
    predictive check, L-C2ST, the misspecification test (and C2ST against
    ``reference_samples``), each at level ``alpha / m`` (Bonferroni over the ``m`` tests);
    optionally write a report.

    Args:
        posterior: Any simgen or sbi posterior, or an object with the same interface.
        prior: Distribution with ``sample``.
        simulator: Batched ``simulator(theta, generator=None) -> x``.
        x_o: An observation for the local checks, C2ST and the corner plot.
        theta_o: Its true parameters, marked in the corner plot.
        reference_samples: True posterior samples at ``x_o``, for C2ST.
        num_simulations: Simulated observations for the calibration checks (and the
            calibration pairs of L-C2ST and reference of the misspecification test).
        num_samples: Posterior samples per observation.
        seed: Makes the whole run deterministic.
        path: Write the report here (``.md`` or ``.html``).
        alpha: Family-wise level: the probability that an exact posterior fails.
        labels: Axis labels of the report's figures, a :class:`simgen.plots.Labels` (names
            and units) or one label per parameter.

    Returns:
        A :class:`DiagnosisReport`; ``report.passed``, ``print(report)`` (verdict, one line
        per check, what each failure means and what to try) and ``report.to_dict()``.

    Example:
        >>> report = simgen.diagnose(posterior, prior, simulator, x_o=x_o, path="report.html")
        >>> print(report)
    """
    if reference_samples is not None and x_o is None:
        raise ConfigError("reference_samples are posterior samples at x_o: pass x_o as well.")
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be a level in (0, 1), got {alpha}.")
    draws = draw(posterior, prior, simulator, num_simulations, num_samples, seed)
    skipped: dict[str, str] = {}
    try:
        log_probs = posterior_log_probs(posterior, draws.theta, draws.x, draws.samples)
    except (NoDensityError, NotImplementedError) as err:
        log_probs = None
        skipped["coverage"] = f"posterior has no usable log_prob ({err})"
    num_tests = 3 + (log_probs is not None) + (3 if x_o is not None else 0)
    level = alpha / num_tests
    results: dict[str, Any] = {
        "sbc": sbc_from_samples(draws.theta, draws.samples, alpha=level),
        "tarp": tarp_from_samples(draws.theta, draws.samples, seed=seed, alpha=level),
    }
    if log_probs is not None:
        results["coverage"] = coverage_from_log_probs(*log_probs, alpha=level)
    results["zscore"] = zscore_from_samples(
        draws.theta,
        draws.samples,
        _prior_variance(prior, stream_seed(seed, "prior variance")),
        alpha=level,
    )
    samples_o = None
    if x_o is not None:
        x_o = torch.as_tensor(x_o)
        results["predictive"] = predictive_check(
            posterior, simulator, x_o, num_samples=num_samples, seed=seed, alpha=level
        )
        with seeded(stream_seed(seed, "draws at x_o")), torch.no_grad():
            samples_o = posterior.sample((num_samples,), x=x_o, **quiet_kwargs(posterior.sample))
        results["lc2st"] = lc2st_from_samples(
            draws.theta,
            draws.x,
            draws.samples[0],
            x_o,
            samples_o.reshape(num_samples, -1),
            num_null=max(100, math.ceil(1.5 / level)),
            alpha=level,
            seed=seed,
        )
        results["misspecification"] = misspecification(
            posterior, x_o, simulations=(draws.theta, draws.x), alpha=level, seed=seed
        )
        if reference_samples is not None:
            results["c2st"] = c2st_posterior(posterior, reference_samples, x_o, seed=seed)
    else:
        for name in ("predictive", "lc2st", "misspecification"):
            skipped[name] = "no x_o given"
    report = DiagnosisReport(
        results,
        skipped,
        x_o,
        theta_o,
        samples_o,
        alpha=alpha,
        level=level,
        labels=labels,
        reference_samples=reference_samples,
        history=getattr(posterior, "history", None),
    )
    if path is not None:
        report.write(path)
    return report
