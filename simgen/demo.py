"""The demo: simulate → train NPE → sample → check calibration → plot, on a built-in task.

``python -m simgen demo`` (or ``./run demo``) runs it on ``two_moons`` in about a minute on 2
CPU cores, prints the posterior summary, C2ST against the exact reference posterior and an SBC
calibration check, and writes a corner plot.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

from .diagnostics import c2st, sbc
from .inference import NPE
from .simulate import simulate

__all__ = ["run_demo"]


def run_demo(
    task_name: str = "two_moons",
    num_simulations: int = 5000,
    estimator: str = "nsf",
    out_dir: str | Path = "demo_output",
    seed: int = 0,
    progress: bool = True,
    reference_budget_s: float = float("inf"),
) -> dict[str, float]:
    """Run the demo and return its headline numbers.

    A task's reference posterior is skipped when its ``REFERENCE_SECONDS`` exceeds
    ``reference_budget_s``.
    """
    import simulators

    from . import plots

    task = simulators.get(task_name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    print(f"simgen demo: {task_name}, {num_simulations} simulations, estimator {estimator!r}")

    start = time.perf_counter()
    theta, x = simulate(task.simulator, task.prior, num_simulations, seed=seed)
    print(f"  simulated {len(theta)} pairs in {time.perf_counter() - start:.2f} s")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        posterior = NPE(task.prior, estimator=estimator).fit(
            theta, x, seed=seed, progress=progress, max_epochs=300, patience=15
        )
    model_path = out / f"{task_name}.simgen"
    posterior.save(model_path)  # first: an error in the checks or plots keeps the model
    history = posterior.history
    print(
        f"  trained in {history.seconds:.1f} s ({history.epochs} epochs, best validation "
        f"loss {history.best_validation_loss:.3f})"
    )

    samples = posterior.sample((10_000,), x=task.x_o, seed=seed)
    mean, std = samples.mean(0), samples.std(0)
    print("  posterior at x_o:")
    print("    param    true     mean      std")
    for i, (t, m, s) in enumerate(zip(task.theta_o.tolist(), mean.tolist(), std.tolist())):
        print(f"    theta_{i} {t:8.3f} {m:8.3f} {s:8.3f}")
    results = {"train_seconds": history.seconds}
    reference_seconds = getattr(task, "REFERENCE_SECONDS", 0.0)
    if hasattr(task, "reference_posterior") and reference_seconds > reference_budget_s:
        print(f"  (reference posterior skipped: it takes about {reference_seconds:.0f} s)")
    elif hasattr(task, "reference_posterior"):
        reference = task.reference_posterior(task.x_o, 5_000, seed=seed)
        score = float(c2st(samples[:5000], reference[:5000], seed=seed))
        results["c2st"] = score
        print(f"  C2ST against the reference posterior: {score:.3f} (0.5 = indistinguishable)")

    calibration = sbc(
        posterior, task.prior, task.simulator, num_simulations=300, num_samples=300, seed=seed
    )
    results["sbc_passed"] = calibration.passed
    band = f"{calibration.band_level:.3g}"
    if calibration.passed:
        verdict = f"calibrated: every rank ECDF stays inside its simultaneous {band} band"
    else:
        verdict = f"NOT calibrated at the {band} band: {calibration.failure}"
    print(f"  SBC over 300 simulated observations: {verdict}")

    corner_path = out / f"{task_name}_corner.png"
    plots.corner(samples, truth=task.theta_o, path=corner_path)
    sbc_path = out / f"{task_name}_sbc.png"
    calibration.plot(path=sbc_path)
    print(f"  wrote {corner_path}, {sbc_path} and the model {model_path}")
    return results
