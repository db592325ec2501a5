"""bench_sequential's table from runs known only by their ``.jsonl`` line."""

import json

from benchmarks.sequential_tables import kept_round_lines, mcmc_table, recorded_runs, rounds_table


def _run(method, obs, c2st, **extra):
    row = {"task": "two_moons", "budget": 1000, "method": method, "observation": obs}
    return {**row, "seed": 0, "rounds": 4, "c2st": c2st, "cpu_s": 1.0, "code": "c", **extra}


def test_recorded_runs_come_back_under_the_spec_they_ran_as(tmp_path):
    path = tmp_path / "runs.jsonl"
    lines = [
        _run('simgen_tsnpe:mixing="none"', 0, 0.6, method_as_run="simgen_tsnpe", flow=None),
        _run("sbi_snpec", 1, 0.7, method_as_run=None),
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    first, second = recorded_runs(path)
    assert first["method"] == "simgen_tsnpe" and "method_as_run" not in first
    assert "flow" not in first  # a null field reads as absent, as in a cell without it
    assert second["method"] == "sbi_snpec" and second["c2st"] == 0.7
    assert recorded_runs(tmp_path / "missing.jsonl") == []


def test_per_round_lines_stay_only_for_runs_without_per_round_figures():
    old = [
        "| two_moons | 1000 | a | 1 | 1 | - | 0.3 | 0 |",
        "| two_moons | 1000 | b | 1 | 1 | - | 0.2 | 0 |",
        "| two_moons | 1000 | gone | 1 | 1 | - | 0.1 | 0 |",
    ]
    new = ["| two_moons | 1000 | b | 1 | 2 | - | 0.25 | 0 |"]
    rows = [_run("a", 0, 0.6), _run("b", 0, 0.6, per_round=[{"round": 1}])]
    kept = kept_round_lines(old, new, rows)
    # a: known only from the jsonl, its line stays; b: recomputed; gone: no run any more
    assert kept == [old[0], new[0]]


def test_snle_runs_get_chain_diagnostics_and_no_empty_region_lines():
    chains = {"chains": 10, "draws": 25, "rhat": 1.02, "ess": 180.0, "acceptance_rate": 0.3}
    per_round = [{"round": 1, "energy": None, "mcmc": chains}]
    per_round.append({"round": 2, "energy": 0.2, "mcmc": {**chains, "rhat": 1.2}})
    rows = [_run("simgen_snle", 0, 0.6, per_round=per_round, mcmc={**chains, "ess": 90.0})]
    rows.append(_run("simgen_snle", 1, 0.7, per_round=per_round[:1]))
    lines = mcmc_table(rows)
    assert (
        lines[2] == "| two_moons | 1000 | simgen_snle | 1 | 2 | 10 x 25 | 1.020 | 180 | 0.30 | - |"
    )
    assert lines[3].split(" | ")[6:8] == ["1.200", "180"] and lines[3].endswith("| 0.2 |")
    assert lines[4].startswith("| two_moons | 1000 | simgen_snle | final | 1 |")
    assert mcmc_table([_run("simgen_tsnpe", 0, 0.6)]) == []
    assert rounds_table(rows, (1e-4,))[2:] == []  # no region, no per-round C2ST: no line
