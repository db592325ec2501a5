"""Write ``benchmarks/RESULTS.md``: the headline (``summary.md``) and an index of the tables.

python -m benchmarks.collect

Each ``results_*.md`` holds its benchmark's current tables, written by the command listed
beside it; RESULTS.md points at them rather than copying them, so every table is committed
once.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent

SECTIONS = [
    (
        "results_report.md",
        "Every task on many observations: task x budget x method (issue 24)",
        "python -m benchmarks.bench_report --tasks all --budgets 1000 10000 --seeds 0 1 2"
        " --set report --methods npe,sbi_npe",
    ),
    (
        "results_report_generative.md",
        "Flow matching vs FMPE and diffusion vs NPSE on many observations (issue 24)",
        "python -m benchmarks.bench_report --tasks two_moons slcp --budgets 1000 --seeds 0 1 2"
        " --set report --methods fm,sbi_fmpe,diffusion,sbi_npse --c2st-samples 1000"
        " --out benchmarks/results_report_generative.md",
    ),
    (
        "results_report_settings.md",
        "Named NPE settings for the tasks the default loses (issue 24)",
        "python -m benchmarks.bench_report --set report --methods 'npe:log_context=true'"
        " (and 'npe:bound=3.0;bins=16'), each table's command in the file",
    ),
    (
        "results_defaults.md",
        "NPE default chosen on the tuning observations (issue 24)",
        "python -m benchmarks.bench_defaults --seeds 0 1 --c2st-samples 1000",
    ),
    (
        "results_bin_temperature.md",
        "NSF bin_temperature=8.0 as NPE's default, tuning and report sets (issue 24)",
        "python -m benchmarks.bench_report --set tuning --methods 'npe,npe:bin_temperature=8.0'"
        " (each table's command in the file)",
    ),
    (
        "results_ema.md",
        "Weight averaging (ema=0.99) for diffusion and flow matching, tuning set (issues 19, 24)",
        "python -m benchmarks.bench_report --tasks all --budgets 1000 --set tuning"
        " --methods 'diffusion,diffusion:ema=0.99' --c2st-samples 1000",
    ),
    ("results_npe.md", "NPE vs sbi (issue 3)", "python -m benchmarks.bench_npe"),
    ("results_step.md", "Where sbi's training time goes", "python -m benchmarks.bench_step"),
    (
        "results_families.md",
        "Estimator-family bake-off (issue 5)",
        "python -m benchmarks.bench_families",
    ),
    (
        "results_seeds.md",
        "Flow matching and diffusion vs sbi FMPE / NPSE over seeds (issue 5)",
        "python -m benchmarks.bench_seeds",
    ),
    ("results_nle_nre.md", "NLE / NRE vs sbi (issue 6)", "python -m benchmarks.bench_nle_nre"),
    (
        "results_surrogate.md",
        "NLE surrogate simulator vs the simulator (issue 6)",
        "python -m benchmarks.bench_surrogate",
    ),
    ("results_sbc.md", "SBC vs sbi's run_sbc (issue 7)", "python -m benchmarks.bench_sbc"),
    (
        "results_joint_score.md",
        "NLE and NPE with the simulator's joint score (SCANDAL) vs plain training",
        "python -m benchmarks.bench_joint_score",
    ),
    (
        "results_simulators.md",
        "Simulator throughput (issue 4)",
        "python -m benchmarks.bench_simulators",
    ),
    (
        "results_sequential.md",
        "Sequential (truncated) inference vs sbi's sequential methods (issue 18)",
        "python -m benchmarks.bench_sequential",
    ),
    (
        "results_joint_ratio.md",
        "NRE with the joint likelihood ratio (ROLR, RASCAL, ALICES, CASCAL) vs NRE-C (issue 23)",
        "python -m benchmarks.bench_joint_ratio",
    ),
    (
        "results_joint.md",
        "Joint transformer vs flow matching and sbi FMPE (issue 25)",
        "python -m benchmarks.bench_joint",
    ),
    (
        "results_diagnostics.md",
        "Diagnostics: false-alarm rate and power of diagnose (issue 20)",
        "python -m benchmarks.bench_diagnostics",
    ),
    (
        "results_faults.md",
        "Fault battery: banks, stalls, Dask, late errors, model files (issue 17)",
        "python -m pytest tests/test_faults*.py tests/test_model_files.py; -m slow for kills",
    ),
    (
        "results_gpu.md",
        "GPU smoke (every family on CUDA) and training throughput, GPU vs CPU (issue 22)",
        "python -m benchmarks.gpu_smoke --out DIR",
    ),
    (
        "results_throughput.md",
        "One-theta-per-call simulators on workers and Dask; bank write/read rates (issue 22)",
        "OMP_NUM_THREADS=1 python -m benchmarks.bench_throughput",
    ),
    (
        "results_streaming.md",
        "Training from a bank vs in memory: steps/s and peak memory (issue 22)",
        "python -m benchmarks.bench_streaming",
    ),
    (
        "results_tutorials.md",
        "Tutorials executed as notebooks in fast mode: CPU seconds per tutorial (issue 21)",
        "OMP_NUM_THREADS=1 python -m benchmarks.bench_tutorials",
    ),
    (
        "results_iid.md",
        "Many i.i.d. trials: NLE/NRE sums, composed diffusion/flow matching, set-NPE vs sbi"
        " i.i.d. NLE and NPSE (issue 19)",
        "nice -n 5 python -m benchmarks.bench_iid --budgets 1000 10000 --seeds 0 1",
    ),
    (
        "results_ensemble.md",
        "NPE ensembles (K = 5) vs one member: C2ST and HPD coverage (issue 20)",
        "python -m benchmarks.bench_ensemble --tasks two_moons slcp --sims 1000 --seeds 0 1 2"
        " --k 5 --obs 2 --samples 1000 --coverage 200",
    ),
]

HEADER = """# Benchmark results

All runs: CPU only, `OMP_NUM_THREADS=1` unless a file says otherwise, simgen and sbi in the
same process on the same simulations. The machine is a shared 2-core box, so absolute seconds
are noisy; compare the ratios. Each file below holds its benchmark's current tables (the
current defaults, and the alternatives measured against them), with the exact command above
each table; `./run bench` reruns the benchmarks listed in `benchmarks/__main__.py` (the
others take hours and run by their own command), and `python -m benchmarks.collect` rebuilds
this page. The decisions these tables support are logged in `docs/decisions.md`.

"""


def main() -> None:
    parts = [HEADER]
    summary = HERE / "summary.md"
    if summary.exists():
        parts.append(summary.read_text().strip() + "\n\n")
    parts.append("## Tables\n\n| results | file | command |\n|---|---|---|\n")
    for name, title, command in SECTIONS:
        where = f"[`{name}`]({name})" if (HERE / name).exists() else "not yet run"
        parts.append(f"| {title} | {where} | `OMP_NUM_THREADS=1 {command}` |\n")
    (HERE / "RESULTS.md").write_text("".join(parts).rstrip() + "\n")


if __name__ == "__main__":
    main()
