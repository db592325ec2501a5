"""Write ``benchmarks/RESULTS.md`` from the summary below and every ``results_*.md``.

python -m benchmarks.collect
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent

SECTIONS = [
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
        "NLE with the simulator's joint score (SCANDAL) vs plain NLE",
        "python -m benchmarks.bench_joint_score",
    ),
    (
        "results_simulators.md",
        "Simulator throughput (issue 4)",
        "python -m benchmarks.bench_simulators",
    ),
]

HEADER = """# Benchmark results

All runs: CPU only, `OMP_NUM_THREADS=1` unless a section says otherwise, simgen and sbi in
the same process on the same simulations. The machine is a shared 2-core box, so absolute
seconds are noisy; compare the ratios. Each section names the command that produced it;
`./run bench` reruns them all and `python -m benchmarks.collect` rebuilds this page.

"""


def main() -> None:
    parts = [HEADER]
    summary = HERE / "summary.md"
    if summary.exists():
        parts.append(summary.read_text().strip() + "\n\n")
    for name, title, command in SECTIONS:
        path = HERE / name
        if not path.exists():
            parts.append(f"## {title}\n\nNot yet run (`OMP_NUM_THREADS=1 {command}`).\n\n")
            continue
        body = path.read_text().strip()
        if body.startswith("# "):
            body = body.split("\n", 1)[1].strip()
        parts.append(f"## {title}\n\n{body}\n\n")
    (HERE / "RESULTS.md").write_text("".join(parts).rstrip() + "\n")


if __name__ == "__main__":
    main()
