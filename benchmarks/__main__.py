"""Run every benchmark in turn: ``python -m benchmarks [--quick]``.

Each writes its own ``benchmarks/results_*.md``; ``benchmarks/RESULTS.md`` collects them.
"""

from __future__ import annotations

import importlib
import sys

MODULES = [
    "bench_step",
    "bench_npe",
    "bench_simulators",
    "bench_sbc",
    "bench_families",
    "bench_nle_nre",
    "bench_joint_score",
]


def main() -> None:
    args = sys.argv[1:]
    for name in MODULES:
        try:
            module = importlib.import_module(f"benchmarks.{name}")
        except ModuleNotFoundError:
            continue
        print(f"== {name}", flush=True)
        sys.argv = [name, *args]
        module.main()
    from benchmarks import collect

    collect.main()


if __name__ == "__main__":
    main()
