"""Run the whole diagnostic suite once and write a Markdown or HTML report with figures.

Simulations and posterior samples are drawn once (:func:`~simgen.diagnostics.draw`) and
shared by SBC, TARP, coverage and the z-scores, so the suite costs about as much as one SBC.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError, NoDensityError
from .c2st import c2st_posterior
from .coverage import coverage
from .predictive import predictive_check
from .sampling import draw, quiet_kwargs, seeded
from .sbc import sbc
from .tarp import tarp
from .zscore import zscore_contraction

__all__ = ["DiagnosisReport", "diagnose"]

_SUMMARY_KEYS = ("p_values", "verdict", "p_value", "atc", "accuracy", "quantile", "mean_zscore")


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
    """

    results: dict[str, Any]
    skipped: dict[str, str] = field(default_factory=dict)
    x_o: Tensor | None = None
    theta_o: Tensor | None = None
    samples_o: Tensor | None = None
    path: Path | None = None

    @property
    def passed(self) -> bool:
        """Every diagnostic that ran passed."""
        return all(r.passed for r in self.results.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary of every result."""
        return {
            "passed": self.passed,
            "results": {name: r.to_dict() for name, r in self.results.items()},
            "skipped": dict(self.skipped),
        }

    def write(self, path: str | Path) -> Path:
        """Write the report; ``.html`` gives one self-contained HTML file, else Markdown
        with figures in ``<stem>_figures/`` next to it."""
        path = Path(path)
        fig_dir = path.parent / f"{path.stem}_figures"
        figures = {}
        for name, result in self.results.items():
            figures[name] = fig_dir / f"{name}.png"
            result.plot(path=figures[name])
        if self.samples_o is not None:
            from .. import plots

            figures["posterior"] = fig_dir / "posterior.png"
            plots.corner(self.samples_o, truth=self.theta_o, path=figures["posterior"])
        text = (
            _html(self, figures)
            if path.suffix.lower() in (".html", ".htm")
            else _markdown(self, figures, path.parent)
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        self.path = path
        return path


def _summary(result: Any) -> str:
    d = result.to_dict()
    parts = []
    for key in _SUMMARY_KEYS:
        if key in d:
            value = d[key]
            if isinstance(value, list):
                value = "[" + ", ".join(f"{v:.3g}" for v in value) + "]"
            elif isinstance(value, float):
                value = f"{value:.3g}"
            parts.append(f"{key}={value}")
    return "; ".join(parts)


def _rows(report: DiagnosisReport) -> list[tuple[str, str, str]]:
    rows = [
        (name, "pass" if r.passed else "**FAIL**", _summary(r))
        for name, r in report.results.items()
    ]
    rows += [(name, "skipped", why) for name, why in report.skipped.items()]
    return rows


def _markdown(report: DiagnosisReport, figures: dict[str, Path], root: Path) -> str:
    verdict = "all diagnostics passed" if report.passed else "some diagnostics FAILED"
    lines = ["# simgen diagnostics report", "", f"Verdict: **{verdict}**.", ""]
    lines += ["| diagnostic | result | summary |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in _rows(report)]
    for name, fig in figures.items():
        lines += ["", f"## {name}", "", f"![{name}]({fig.relative_to(root).as_posix()})"]
    lines += ["", "## Raw numbers", "", "```json", json.dumps(report.to_dict(), indent=1), "```"]
    return "\n".join(lines) + "\n"


def _html(report: DiagnosisReport, figures: dict[str, Path]) -> str:
    verdict = "all diagnostics passed" if report.passed else "some diagnostics FAILED"
    rows = "".join(
        f"<tr><td>{html.escape(a)}</td><td>{html.escape(b.strip('*'))}</td>"
        f"<td>{html.escape(c)}</td></tr>"
        for a, b, c in _rows(report)
    )
    images = "".join(
        f"<h2>{html.escape(name)}</h2><img alt='{html.escape(name)}' "
        f"src='data:image/png;base64,{base64.b64encode(fig.read_bytes()).decode()}'/>"
        for name, fig in figures.items()
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>simgen diagnostics</title>"
        "</head><body><h1>simgen diagnostics report</h1>"
        f"<p>Verdict: <b>{verdict}</b>.</p><table border='1'><tr><th>diagnostic</th>"
        f"<th>result</th><th>summary</th></tr>{rows}</table>{images}"
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
) -> DiagnosisReport:
    """Run SBC, TARP, HPD coverage (if ``log_prob`` works), z-scores and, given ``x_o``, a
    predictive check (and C2ST against ``reference_samples``); optionally write a report.

    Args:
        posterior: Any simgen or sbi posterior, or an object with the same interface.
        prior: Distribution with ``sample``.
        simulator: Batched ``simulator(theta, generator=None) -> x``.
        x_o: An observation for the predictive check, C2ST and the corner plot.
        theta_o: Its true parameters, marked in the corner plot.
        reference_samples: True posterior samples at ``x_o``, for C2ST.
        num_simulations: Simulated observations for the calibration checks.
        num_samples: Posterior samples per observation.
        seed: Makes the whole run deterministic.
        path: Write the report here (``.md`` or ``.html``).

    Returns:
        A :class:`DiagnosisReport`; ``report.passed`` and ``report.to_dict()``.

    Example:
        >>> report = simgen.diagnose(posterior, prior, simulator, x_o=x_o, path="report.html")
        >>> report.passed
    """
    if reference_samples is not None and x_o is None:
        raise ConfigError("reference_samples are posterior samples at x_o: pass x_o as well.")
    draws = draw(posterior, prior, simulator, num_simulations, num_samples, seed)
    results: dict[str, Any] = {
        "sbc": sbc(posterior, prior, simulator, seed=seed, draws=draws),
        "tarp": tarp(posterior, prior, simulator, seed=seed, draws=draws),
    }
    skipped: dict[str, str] = {}
    try:
        results["coverage"] = coverage(posterior, prior, simulator, seed=seed, draws=draws)
    except (NoDensityError, NotImplementedError) as err:
        skipped["coverage"] = f"posterior has no usable log_prob ({err})"
    results["zscore"] = zscore_contraction(posterior, prior, simulator, seed=seed, draws=draws)
    samples_o = None
    if x_o is not None:
        x_o = torch.as_tensor(x_o)
        results["predictive"] = predictive_check(
            posterior, simulator, x_o, num_samples=num_samples, seed=seed
        )
        with seeded(seed + 4), torch.no_grad():
            samples_o = posterior.sample((num_samples,), x=x_o, **quiet_kwargs(posterior.sample))
        if reference_samples is not None:
            results["c2st"] = c2st_posterior(posterior, reference_samples, x_o, seed=seed)
    else:
        skipped["predictive"] = "no x_o given"
    report = DiagnosisReport(results, skipped, x_o, theta_o, samples_o)
    if path is not None:
        report.write(path)
    return report
