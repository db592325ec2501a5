"""bench_sequential's table from runs known only by their ``.jsonl`` line."""

import json

from benchmarks.sequential_tables import kept_round_lines, recorded_runs


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
