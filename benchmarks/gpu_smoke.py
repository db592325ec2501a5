"""GPU smoke test and training throughput on the GPU against the CPU.

    python -m benchmarks.gpu_smoke --out DIR            # under 5 minutes on one GPU

**Smoke.** On a 2-D Gaussian-linear task with a box prior (so every ``support="transform"``
family samples through the prior's logit bijection, the path that must follow the network
to the GPU), every NPE family of the registry, NLE (with log-scale columns) and NRE: train
on CUDA (tiny: 2,000 simulations, 3 epochs), then ``sample`` (on CUDA, finite, inside the
box, the same draws for the same seed), ``log_prob`` (finite, on CUDA; density families),
``sample_batched``, ``map``, ``save``, and ``simgen.load`` on CUDA and on the CPU (the same
log-densities, or the same seeded draws for sample-only families, to 1e-3). NSF NPE and NLE
also run with a Gamma prior (an exp bijection) and a prior simgen cannot rebuild (evaluated
where it lives, :class:`simgen.priors.RelocatedPrior`). Every check runs even when an
earlier one fails; each failure is reported with its error.

**Throughput.** NSF NPE training (the ``fit`` loop: Adam steps plus one validation pass
per epoch) on 20,000 simulations of the 10-D Gaussian-linear task, about 200 steps per run,
at batch sizes 256 and 4,096, on the GPU and on the CPU (``--cpu-threads``, default torch's),
wall-clock seconds (the GPU synchronised), steps per second as the median and range over
``--seeds`` (default 3), after one untimed warm-up fit per device.

Writes ``DIR/results_gpu.md`` and ``DIR/gpu_smoke.json``, and copies the table to
``benchmarks/results_gpu.md`` unless ``--no-copy`` (on a lent machine whose working tree does
not come back, run it with ``--out $OUT`` and commit the returned ``results_gpu.md``).
Without a CUDA device it says so on stderr and exits with status 0 having measured and
written nothing; with one, the status is 1 if any smoke check failed. ``--device cpu``
rehearses the smoke checks on the CPU (to check this script where no GPU is lent): no
throughput, nothing copied into ``benchmarks/``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.distributions import Distribution, Gamma, Independent, Normal

HERE = Path(__file__).parent
COMMAND = "python -m benchmarks.gpu_smoke --out DIR"
#: Small networks and few solver steps: the smoke needs every code path, not accuracy.
FAST_OPTIONS: dict[str, dict[str, Any]] = {
    "flow_matching": {"steps": 8},
    "diffusion": {"steps": 8},
    "consistency": {"steps": 4},
    "vae": {"importance_samples": 8},
}
SAMPLE_ONLY = {"consistency", "gan"}
BATCH_SIZES = (256, 4096)
#: The device under test; ``--device cpu`` rehearses the smoke checks on a CPU-only machine
#: (no throughput, nothing copied into benchmarks/).
DEVICE = "cuda"


class _ShiftedNormal(Distribution):
    """A prior simgen has no spec for: it is relocated, not rebuilt, on the GPU."""

    arg_constraints: dict = {}

    def __init__(self, loc: torch.Tensor):
        self.loc = loc
        super().__init__(torch.Size(), loc.shape, validate_args=False)

    @property
    def support(self) -> Any:
        return torch.distributions.constraints.real_vector

    def sample(self, sample_shape: Sequence[int] = ()) -> torch.Tensor:
        return self.loc + torch.randn(*sample_shape, *self.loc.shape, dtype=self.loc.dtype)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return Normal(self.loc, 1.0).log_prob(value).sum(-1)


def _priors() -> dict[str, Distribution]:
    from simgen import BoxUniform

    return {
        "box": BoxUniform(-2 * torch.ones(2), 2 * torch.ones(2)),
        "gamma": Independent(Gamma(2 * torch.ones(2), torch.ones(2)), 1),
        "custom": _ShiftedNormal(torch.zeros(2)),
    }


def _simulations(prior: Distribution, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    theta = prior.sample((n,))
    x = theta + 0.3 * torch.randn(n, theta.shape[1])
    return theta, x.abs() + 0.1  # positive: NLE models x on the log scale


class Checks:
    """Named checks of one case; a raising check is recorded as failed with its error."""

    def __init__(self, case: str):
        self.case, self.results = case, {}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                value = fn()
            self.results[name] = "ok"
            return value
        except Exception as exc:  # noqa: BLE001 - every failure is reported, none stops the run
            line = traceback.format_exception_only(type(exc), exc)[-1].strip()
            self.results[name] = f"FAILED: {line[:200]}"
            return None


def _on_cuda(t: torch.Tensor) -> None:
    if t.device.type != DEVICE:
        raise AssertionError(f"returned on {t.device}, not on {DEVICE}")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise AssertionError("non-finite values")


def _inside(prior: Distribution, theta: torch.Tensor) -> None:
    from simgen.priors import in_support

    if not bool(in_support(prior, theta.cpu()).all()):
        raise AssertionError("samples outside the prior's support")


def _seeded(fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``fn()`` under torch's generators seeded with 0 (the VAE's density is an importance
    estimate: the same seed gives the same estimate)."""
    devices = [0] if DEVICE == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)
        return fn()


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-3, atol=1e-3):
        raise AssertionError(f"differ by {float((a - b).abs().max()):.3g}")


def smoke_case(method: str, family: str, prior_name: str, out: Path) -> dict[str, str]:
    """Train on CUDA and run every path of one posterior (module docstring)."""
    import simgen

    prior = _priors()[prior_name]
    theta, x = _simulations(prior, 2000, seed=0)
    x_o, xs = x[:1], x[1:4]
    mcmc = method in ("nle", "nre")
    checks = Checks(f"{method}:{family}:{prior_name}")
    sample_options = {"warmup": 20, "seed": 0} if mcmc else {"seed": 0}

    def train() -> Any:
        if method == "nle":
            return simgen.NLE(prior, log_x=True).fit(theta, x, device=DEVICE, max_epochs=3)
        if method == "nre":
            return simgen.NRE(prior).fit(theta, x, device=DEVICE, max_epochs=3)
        npe = simgen.NPE(prior, estimator=family, **FAST_OPTIONS.get(family, {}))
        return npe.fit(theta, x, device=DEVICE, max_epochs=3)

    posterior = checks.run("trains", train)
    if posterior is None:
        return checks.results
    checks.run("on cuda", lambda: _on_cuda(next(posterior.estimator.parameters())))
    samples = checks.run("sample", lambda: posterior.sample((100,), x=x_o, **sample_options))
    if samples is not None:
        checks.run("sample on cuda", lambda: _on_cuda(samples))
        checks.run("sample in support", lambda: _inside(prior, samples))
        again = {"thin": 1} if mcmc else {}
        checks.run(
            "same seed, same draws",
            lambda: _close(
                posterior.sample((20,), x=x_o, **sample_options, **again),
                posterior.sample((20,), x=x_o, **sample_options, **again),
            ),
        )
    density = family not in SAMPLE_ONLY
    probe = prior.sample((10,))
    logp = None
    if density:
        logp = checks.run("log_prob", lambda: _seeded(lambda: posterior.log_prob(probe, x=x_o)))
        if logp is not None:
            checks.run("log_prob on cuda", lambda: _on_cuda(logp))
        checks.run("map", lambda: _on_cuda(posterior.map(x=x_o, num_init=50, num_iter=10)))

    def batched() -> None:
        value = posterior.sample_batched((10,), x=xs, **sample_options)
        _on_cuda(value)
        if tuple(value.shape) != (10, 3, 2):
            raise AssertionError(f"shape {tuple(value.shape)}")

    checks.run("sample_batched", batched)
    if method == "nle":
        checks.run("surrogate simulator", lambda: _on_cuda(posterior.likelihood(probe)))
    path = out / f"{method}_{family}_{prior_name}.simgen"
    checks.run("save", lambda: posterior.save(path))
    passed = {"prior": prior} if prior_name == "custom" else {}
    for device in (DEVICE, "cpu") if DEVICE != "cpu" else ("cpu",):

        def reload(device: str = device) -> None:
            loaded = simgen.load(path, device=device, **passed)
            if loaded.device.type != device:
                raise AssertionError(f"loaded on {loaded.device}")
            if density and logp is not None:
                reference = logp
                if not getattr(posterior.estimator, "exact_density", True):
                    # An importance estimate: the same seed on the same device.
                    moved = copy.deepcopy(posterior).to(device)
                    reference = _seeded(lambda: moved.log_prob(probe, x=x_o))
                _close(_seeded(lambda: loaded.log_prob(probe, x=x_o)), reference)
            elif not mcmc and device == DEVICE:
                _close(loaded.sample((20,), x=x_o, seed=0), posterior.sample((20,), x=x_o, seed=0))

        checks.run(f"load on {device}", reload)
    return checks.results


def smoke(out: Path) -> dict[str, dict[str, str]]:
    from simgen.estimators.registry import ESTIMATORS

    cases = [("npe", family, "box") for family in ESTIMATORS]
    cases += [("nle", "maf", "box"), ("nre", "classifier", "box")]
    cases += [(m, f, p) for p in ("gamma", "custom") for m, f in (("npe", "nsf"), ("nle", "maf"))]
    results = {}
    for method, family, prior_name in cases:
        start = time.perf_counter()
        results[f"{method}:{family}:{prior_name}"] = smoke_case(method, family, prior_name, out)
        print(f"smoke {method} {family} {prior_name}: {time.perf_counter() - start:.1f} s")
    return results


def _fit_seconds(device: str, batch_size: int, seed: int, theta, x) -> tuple[float, int]:
    """Wall seconds of one NSF NPE training run of about 200 steps, and its steps."""
    import simgen
    from simgen.training import TrainConfig

    n_train = len(theta) - round(0.1 * len(theta))
    per_epoch = n_train // batch_size
    epochs = max(1, math.ceil(200 / per_epoch))
    config = TrainConfig(
        batch_size=batch_size,
        max_epochs=epochs,
        min_epochs=epochs,
        patience=epochs + 1,
        device=device,
        seed=seed,
    )
    prior = simgen.BoxUniform(-3 * torch.ones(theta.shape[1]), 3 * torch.ones(theta.shape[1]))
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        simgen.NPE(prior).fit(theta, x, config)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, epochs * per_epoch


def throughput(seeds: Sequence[int]) -> list[dict[str, Any]]:
    from benchmarks import warm_up_torch

    warm_up_torch()
    torch.manual_seed(0)
    theta = 2 * torch.rand(20_000, 10) - 1
    x = theta + 0.1 * torch.randn_like(theta)
    rows = []
    for device in ("cuda", "cpu"):
        _fit_seconds(device, 256, 0, theta[:2000], x[:2000])  # warm-up, untimed
        for batch_size in BATCH_SIZES:
            rates = []
            for seed in seeds:
                seconds, steps = _fit_seconds(device, batch_size, seed, theta, x)
                rates.append(steps / seconds)
            rows.append(
                {
                    "device": device,
                    "batch_size": batch_size,
                    "steps_per_s": rates,
                    "median": statistics.median(rates),
                }
            )
            print(f"throughput {device} batch {batch_size}: {statistics.median(rates):.1f} steps/s")
    return rows


def report(results: dict, rates: list[dict], meta: dict[str, Any]) -> str:
    checks = sorted({name for case in results.values() for name in case}, key=_check_order)
    lines = [
        "# GPU smoke test and training throughput",
        "",
        f"Command: `{COMMAND}`",
        "",
        f"Machine: {meta['gpu']}, torch {meta['torch']}, CUDA {meta['cuda']}; CPU baseline "
        f"with {meta['cpu_threads']} threads. Wall-clock seconds (CPU seconds say nothing of a "
        "GPU).",
        "",
        "## Smoke: every path on CUDA",
        "",
        f"{meta['failures']} failed checks of {meta['checks']}. A blank cell: the check does "
        "not apply (sample-only families have no density).",
        "",
        "| case | " + " | ".join(checks) + " |",
        "|---" * (len(checks) + 1) + "|",
    ]
    for case, got in results.items():
        cells = [("ok" if got.get(c) == "ok" else "**failed**" if c in got else "") for c in checks]
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    failed = [(case, c, v) for case, got in results.items() for c, v in got.items() if v != "ok"]
    if failed:
        lines += ["", "Failures:", ""] + [f"- {case}, {c}: {v[8:]}" for case, c, v in failed]
    if not rates:
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "## Training throughput: NSF NPE, 10-D Gaussian linear, 20,000 simulations",
        "",
        f"Steps per second of the fit loop, median (range) over seeds {meta['seeds']}.",
        "",
        "| batch size | GPU steps/s | CPU steps/s | GPU / CPU |",
        "|---|---|---|---|",
    ]
    by = {(r["device"], r["batch_size"]): r for r in rates}
    for b in BATCH_SIZES:
        gpu, cpu = by[("cuda", b)], by[("cpu", b)]
        lines.append(f"| {b} | {_fmt(gpu)} | {_fmt(cpu)} | {gpu['median'] / cpu['median']:.2f} |")
    return "\n".join(lines) + "\n"


def _fmt(row: dict) -> str:
    return f"{row['median']:.1f} ({min(row['steps_per_s']):.1f}–{max(row['steps_per_s']):.1f})"


def _check_order(name: str) -> tuple[int, str]:
    order = ["trains", "on cuda", "sample", "log_prob", "map", "sample_batched", "save"]
    first = next((i for i, o in enumerate(order) if name.startswith(o)), len(order))
    return first, name


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for the results")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cpu-threads", type=int, default=None)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--no-copy", action="store_true", help="leave benchmarks/ untouched")
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    rehearsal = DEVICE != "cuda"
    if not rehearsal and not torch.cuda.is_available():
        print(
            "gpu_smoke: no CUDA device on this machine (torch.cuda.is_available() is False), "
            "so nothing was measured and nothing written. Run it where a GPU is lent.",
            file=sys.stderr,
        )
        return 0
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results = smoke(args.out)
    rates = [] if args.skip_throughput or rehearsal else throughput(args.seeds)
    failures = sum(v != "ok" for case in results.values() for v in case.values())
    meta = {
        "gpu": f"rehearsal on {DEVICE}" if rehearsal else torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu_threads": torch.get_num_threads(),
        "seeds": args.seeds,
        "failures": failures,
        "checks": sum(len(case) for case in results.values()),
    }
    (args.out / "gpu_smoke.json").write_text(
        json.dumps({"meta": meta, "smoke": results, "throughput": rates}, indent=1)
    )
    text = report(results, rates, meta)
    (args.out / "results_gpu.md").write_text(text)
    if not (args.no_copy or rehearsal or args.skip_throughput):
        (HERE / "results_gpu.md").write_text(text)
    for path in args.out.glob("*.simgen"):
        path.unlink()  # the saved models were only for the round trip
    print(f"gpu_smoke: {failures} failed checks; results in {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
