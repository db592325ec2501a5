"""One verdict: ``diagnose`` corrects for its number of tests, SBC passes by the band it plots,
and every result prints short and says what a failure means.

Known answers on the 2-d Gaussian conjugate model (closed-form posteriors of
``test_diagnostics``): the exact posterior passes ``diagnose`` at family-wise level 0.05, the
overconfident one fails it with SBC and coverage naming the failure; the SBC verdict equals
"inside the simultaneous band" for all four posteriors and names each failure's kind.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_diagnostics import POSTERIORS, TASK

from simgen.diagnostics import diagnose, sbc
from simgen.errors import ConfigError

SETTINGS = {"x_o": TASK.x_o, "num_simulations": 200, "num_samples": 200, "seed": 0}


@pytest.fixture(scope="module")
def reports() -> dict[str, object]:
    # The local checks (L-C2ST above all) cost most; the overconfident run goes without x_o.
    over = {k: v for k, v in SETTINGS.items() if k != "x_o"}
    return {
        "exact": diagnose(POSTERIORS["exact"], TASK.prior, TASK.simulator, **SETTINGS),
        "overconfident": diagnose(POSTERIORS["overconfident"], TASK.prior, TASK.simulator, **over),
    }


def test_exact_posterior_passes_at_the_corrected_level(reports) -> None:  # noqa: ANN001
    report = reports["exact"]
    assert report.passed, report
    assert report.num_tests == 7 and report.level == pytest.approx(0.05 / 7)
    assert all(r.alpha == pytest.approx(0.05 / 7) for r in report.results.values())
    assert report.verdict.startswith("PASSED: all 7 tests at family-wise level 0.05 (Bonferroni")
    assert "Meaning" not in str(report)


def test_overconfident_posterior_fails_and_says_what_to_try(reports) -> None:  # noqa: ANN001
    report = reports["overconfident"]
    assert not report.passed
    failed = [name for name, r in report.results.items() if not r.passed]
    assert {"sbc", "coverage", "zscore"} <= set(failed), failed
    assert report.num_tests == 4 and set(report.skipped) == {
        "predictive",
        "lc2st",
        "misspecification",
    }
    text = str(report)
    assert report.verdict.startswith("FAILED sbc")
    assert "sbc: dim 0: overconfident (too narrow)" in text
    assert "ensemble" in text and "more simulations" in text
    assert report.to_dict()["verdict"] == report.verdict


def test_print_is_short_and_holds_no_arrays(reports) -> None:  # noqa: ANN001
    for report in reports.values():
        text = repr(report)
        assert len(text) < 4000 and "array(" not in text and "[[" not in text
        for result in report.results.values():
            assert len(repr(result)) < 250 and "array(" not in repr(result)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("exact", ""),
        ("overconfident", "overconfident"),
        ("underconfident", "underconfident"),
        ("biased", "biased"),
    ],
)
def test_sbc_verdict_is_the_band_of_its_plot(name: str, kind: str) -> None:
    result = sbc(POSTERIORS[name], TASK.prior, TASK.simulator, 300, 300, seed=0)
    assert result.passed == bool(result.within_band.all())
    assert result.band_level == pytest.approx(1 - 0.05 / 2)
    assert result.passed == (kind == "")
    assert (kind in result.failure) if kind else result.failure == ""
    # The band the verdict uses is the one plot() draws: it is the result's own band.
    inside = (result.ecdf_diff >= result.band_lower - 1e-12) & (
        result.ecdf_diff <= result.band_upper + 1e-12
    )
    assert np.array_equal(inside.all(1), result.within_band)


def test_bad_level_is_refused() -> None:
    with pytest.raises(ConfigError, match="alpha"):
        diagnose(POSTERIORS["exact"], TASK.prior, TASK.simulator, alpha=1.5)
