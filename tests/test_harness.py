"""The benchmark harness: stored observations, cached references, C2ST cells, the table."""

from __future__ import annotations

import sys

import pytest
import torch

from benchmarks import bench_report, evaluation, harness
from simgen.diagnostics.c2st import c2st
from simgen.errors import SimgenError


def _quick_c2st(p, q, seed=0):
    """simgen's C2ST with its classifier stopped sooner (patience 10, at most 100 iterations):
    the harness's plumbing is under test here, the statistic in test_diagnostics_c2st."""
    dim = p.shape[1]
    options = {
        "activation": "relu",
        "hidden_layer_sizes": (10 * dim, 10 * dim),
        "max_iter": 100,
        "solver": "adam",
        "early_stopping": True,
        "n_iter_no_change": 10,
    }
    return c2st(p, q, seed=seed, classifier_kwargs=options)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """Cells and references go to temporary folders, not the repository's."""
    monkeypatch.setattr(harness, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(harness, "CELLS", tmp_path / "cells")
    return tmp_path / "cache"


class _Sampler:
    def __init__(self, draw):
        self.draw = draw

    def sample(self, sample_shape, x):
        return self.draw(sample_shape[0], x)


def _register(monkeypatch):
    """Two test methods: the prior (wrong) and a fresh reference draw (right)."""

    def prior(**_):
        return lambda task, theta, x, seed: _Sampler(lambda n, x_o: task.prior.sample((n,)))

    def exact(**_):
        def fit(task, theta, x, seed):
            return _Sampler(lambda n, x_o: task.reference_posterior(x_o, n, seed=1000 + seed))

        return fit

    monkeypatch.setitem(evaluation.METHODS, "test_prior", ("test", prior))
    monkeypatch.setitem(evaluation.METHODS, "test_exact", ("test", exact))


def test_stored_observations_are_the_seeded_draws_and_the_sets_are_disjoint():
    """The stored sets are the seeded draws: θ bit for bit, x to float32 rounding (slcp's x is a
    polynomial in θ whose last bit differs between CPUs' vector maths: 2e-6 seen on an AMD EPYC
    for x of order 30), while another observation (the control) is far outside that tolerance."""
    for name in ["two_moons", "gaussian_linear", "slcp"]:
        stored = torch.load(harness.OBSERVATIONS / f"{name}.pt", weights_only=True)
        fresh = harness.make_observations(name)
        for set_name in harness.SETS:
            x, again = stored[set_name]["x"], fresh[set_name]["x"]
            assert torch.allclose(x, again, rtol=1e-5, atol=1e-6)
            assert not torch.allclose(x, again.roll(1, 0), rtol=1e-5, atol=1e-6)
            assert torch.equal(stored[set_name]["theta"], fresh[set_name]["theta"])
            assert len(stored[set_name]["x"]) == harness.NUM_OBSERVATIONS
        assert not set(stored["tuning"]["seeds"]) & set(stored["report"]["seeds"])
    for name in harness.TASKS:  # every task has both sets stored
        theta, x = harness.observations(name, "report")
        assert len(theta) == len(x) == harness.NUM_OBSERVATIONS


def test_bad_names_raise_simgen_errors():
    with pytest.raises(SimgenError):
        harness.load_task("nope")
    with pytest.raises(SimgenError):
        harness.observations("two_moons", "validation")
    with pytest.raises(SimgenError):
        evaluation.parse_method("npe_typo")
    with pytest.raises(SimgenError):
        evaluation.parse_method("npe:estimator")


def test_references_are_cached_and_checked(cache):
    first = harness.reference("gaussian_linear", "report", 0, 2000)
    again = harness.reference("gaussian_linear", "report", 0, 2000)
    assert not first["cached"] and again["cached"]
    assert torch.equal(first["samples"], again["samples"])
    assert first["check"]["passed"] and first["check"]["kind"] == "closed form"
    _, x = harness.observations("gaussian_linear", "report")
    # A reference shifted by a quarter of a posterior sd fails the closed-form check.
    wrong = first["samples"] + 0.25 * (0.05**0.5)
    assert not harness.check_reference("gaussian_linear", x[0], wrong)["passed"]
    # An MCMC reference reports its split-R̂.
    lv = harness.reference("lotka_volterra", "report", 0, 4000)
    assert lv["check"]["kind"] == "MCMC" and lv["check"]["max_split_rhat"] < 1.05


def test_harness_end_to_end_scores_wrong_and_right_posteriors(cache, monkeypatch, tmp_path):
    """Tiny run on two_moons, 2 observations, 2 seeds: the table's structure, the prior's
    C2ST near 1 (> 0.85) and an exact posterior's near 0.5 (within 0.07 on 200 samples per
    set: the 5-fold accuracy on 400 points has a standard error of about 0.025, and the
    mean over 2 observations x 2 seeds is taken)."""
    _register(monkeypatch)
    monkeypatch.setattr(evaluation, "c2st", _quick_c2st)
    out = tmp_path / "report.md"
    argv = [
        "--tasks", "two_moons", "--budgets", "200", "--seeds", "0", "1",
        "--observations", "2", "--c2st-samples", "500", "--reference-samples", "1000",
        "--methods", "npe:max_epochs=3,test_prior,test_exact", "--out", str(out),
    ]  # fmt: skip
    bench_report.main(argv)
    text = out.read_text()
    assert text.startswith("# Benchmark on many observations")
    assert "python -m benchmarks.bench_report --tasks two_moons" in text
    lines = [line for line in text.splitlines() if line.startswith("| two_moons | 200 |")]
    assert len(lines) == 6  # the C2ST table, then the cost table
    rows = lines[:3]
    cells = {r.split("|")[3].strip(): [c.strip() for c in r.split("|")[1:-1]] for r in rows}
    assert set(cells) == {"npe:max_epochs=3", "test_prior", "test_exact"}
    for row in cells.values():
        assert row[3] == "2" and len(row) == len(evaluation.HEADER[1].split("|")) - 2
    assert float(cells["test_prior"][4]) > 0.85
    assert abs(float(cells["test_exact"][4]) - 0.5) < 0.07
    assert "(#" in cells["test_exact"][6]
    # Every cell is cached: a second run computes nothing and writes the same table.
    files = sorted(harness.CELLS.rglob("*.json"))
    assert len(files) == 6
    before = {f: f.stat().st_mtime_ns for f in files}
    bench_report.main(argv)
    assert {f: f.stat().st_mtime_ns for f in files} == before
    table = [line for line in out.read_text().splitlines() if line.startswith("| two_moons |")]
    assert table[:3] == rows
    # The cost table: simgen's History gives the epochs run (3 per seed); a method without
    # one reads "unrecorded".
    costs = {line.split("|")[3].strip(): line for line in lines[3:]}
    assert costs["npe:max_epochs=3"].split("|")[5].strip() == "3/3"
    assert costs["test_prior"].split("|")[5].strip() == "unrecorded"


def test_cpu_ratio_is_taken_against_the_baseline_on_the_same_seeds():
    s = {"seeds": 2, "mean": 0.6, "spread": 0.01, "worst_obs": 1, "worst": 0.7}
    results = {
        ("t", 10, "npe"): {**s, "cpu_s": 1.0, "cpu_total": 2.0, "seed_list": [0, 1]},
        ("t", 10, "sbi_npe"): {**s, "cpu_s": 4.0, "cpu_total": 8.0, "seed_list": [0, 1]},
    }
    rows = evaluation.table(results)
    assert rows[2].rstrip(" |").endswith("0.25")
    results[("t", 10, "sbi_npe")]["seed_list"] = [0, 2]
    assert evaluation.table(results)[2].endswith("|  |")


def test_cached_only_writes_the_table_without_computing(cache, tmp_path):
    out = tmp_path / "report.md"
    bench_report.main(
        ["--tasks", "two_moons", "--budgets", "100", "--seeds", "0", "--methods", "npe",
         "--cached-only", "--out", str(out)]
    )  # fmt: skip
    assert "| two_moons | 100 | npe | 0 | not run |" in out.read_text()
    assert not cache.exists() and not harness.CELLS.exists()


def test_cpu_budget_stops_new_cells_and_names_them(cache, monkeypatch, tmp_path):
    """Past --cpu-budget-min no cell starts: a cached cell is still read, the others are
    named in the note and read "not run"; without the budget the same command computes them."""
    _register(monkeypatch)
    monkeypatch.setattr(evaluation, "c2st", _quick_c2st)
    out = tmp_path / "report.md"
    argv = [
        "--tasks", "two_moons", "--budgets", "100", "--observations", "2",
        "--c2st-samples", "200", "--reference-samples", "1000", "--methods", "test_prior",
        "--out", str(out),
    ]  # fmt: skip
    bench_report.main([*argv, "--seeds", "0"])
    bench_report.main([*argv, "--seeds", "0", "1", "--cpu-budget-min", "0"])
    text = out.read_text()
    assert "not run: two_moons n=100 test_prior seed 1." in text
    assert "| two_moons | 100 | test_prior | 1 |" in text  # seed 0, from the cache
    assert len(list(harness.CELLS.rglob("*.json"))) == 1
    bench_report.main([*argv, "--seeds", "0", "1"])
    assert "| two_moons | 100 | test_prior | 2 |" in out.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("name", harness.TASKS)
def test_every_report_reference_passes_its_check(name):
    """The references of results_report.md's table (C2ST on 1,000 samples)."""
    samples, options = harness.reference_samples(name, needed=1000), harness.REFERENCE_OPTIONS
    for i in range(harness.NUM_OBSERVATIONS):
        check = harness.reference(name, "report", i, samples, options=options.get(name))["check"]
        assert check["passed"], (name, i, check)


def test_a_capped_task_holds_fewer_reference_draws_but_never_fewer_than_the_c2st_reads():
    cap = harness.REFERENCE_CAPS["particle_shower"]
    assert harness.reference_samples("particle_shower", needed=500) == cap
    assert harness.reference_samples("particle_shower", needed=cap + 1) == cap + 1
    assert harness.reference_samples("particle_shower", cap - 100, needed=500) == cap - 100
    assert harness.reference_samples("two_moons", needed=1000) == harness.REFERENCE_SAMPLES
    with pytest.raises(SimgenError, match="1000 reference samples"):
        harness.reference_samples("two_moons", 500, needed=1000)


def test_the_table_reads_a_capped_task_s_references_and_says_so(cache, monkeypatch, tmp_path):
    """With two_moons capped at 600 draws from its sampler called with ``thin=3``, a table asking
    for 1,000 reference samples and a C2ST on 500 computes and reads 600-draw references made
    with that option (in their key), names both in its header and its reference table, and a
    --cached-only rerun finds the same cells; a C2ST on 800 (above the cap) gets 800-draw
    references (the control), still below the 1,000 asked for and named."""
    _register(monkeypatch)
    monkeypatch.setattr(evaluation, "c2st", _quick_c2st)
    task = harness.load_task("two_moons")
    exact, calls = task.reference_posterior, []

    def with_thin(x_o, num, seed=0, thin=1):
        calls.append(thin)
        return exact(x_o, num, seed=seed)

    monkeypatch.setattr(task, "reference_posterior", with_thin)
    monkeypatch.setitem(harness.REFERENCE_CAPS, "two_moons", 600)
    monkeypatch.setitem(harness.REFERENCE_OPTIONS, "two_moons", {"thin": 3})
    out = tmp_path / "report.md"
    argv = [
        "--tasks", "two_moons", "--budgets", "100", "--seeds", "0", "--observations", "2",
        "--reference-samples", "1000", "--methods", "test_prior", "--out", str(out),
    ]  # fmt: skip
    bench_report.main([*argv, "--c2st-samples", "500"])
    assert not (cache / "references" / "two_moons").exists()  # a capped task's are tracked
    tracked = tmp_path / "cells" / "references" / "two_moons"
    names = sorted(f.name for f in tracked.iterdir())
    assert len(names) == 2 and all("-n600-" in n and n.endswith("-thin3.pt") for n in names)
    assert calls == [3, 3]
    text = out.read_text()
    assert "against 1000 cached reference samples (two_moons: 600, thin=3; `harness." in text
    assert "| two_moons | exact sampler | 2 | 600 |" in text
    row = "| two_moons | 100 | test_prior | 1 |"
    assert row in text
    bench_report.main([*argv, "--c2st-samples", "500", "--cached-only"])
    assert row in out.read_text() and calls == [3, 3]
    bench_report.main([*argv, "--c2st-samples", "800"])
    names = sorted(f.name for f in tracked.iterdir())
    assert sum("-n800-" in n for n in names) == 2
    assert "(two_moons: 800, thin=3; `harness." in out.read_text()


def test_reference_agreement_tells_two_exact_halves_from_a_shifted_one(cache, monkeypatch):
    """Two halves of 300 of an exact two_moons sample read as one (C2ST within 0.1 of 0.5: the
    5-fold accuracy on 600 points has a standard error of about 0.02) and one shifted by a
    posterior sd does not (above 0.7); cut into 4 chains, iid draws have an ESS near their
    number (above 210 of 300) and no repeats, and chains that hold each state twice repeat
    half their draws (the control)."""
    a = harness.reference_agreement("two_moons", "report", 0, 600, 300, shift_sd=1.0)
    assert abs(a["c2st"] - 0.5) < 0.1 and a["shifted"] > 0.7 and "ess" not in a
    monkeypatch.setitem(harness._CHAINS, "two_moons", lambda n: 4)
    a = harness.reference_agreement("two_moons", "report", 0, 600, 300, shift_sd=1.0)
    assert abs(a["c2st"] - 0.5) < 0.1 and a["shifted"] > 0.7
    assert a["ess"] > 210 and a["repeats"] == 0.0
    exact = harness.load_task("two_moons").reference_posterior

    def sticky(x_o, num, seed=0):  # each chain's states held for two draws
        draws = exact(x_o, num // 2, seed=seed).reshape(num // 8, 1, 4, 2)
        return draws.expand(-1, 2, -1, -1).reshape(num, 2)

    monkeypatch.setattr(harness.load_task("two_moons"), "reference_posterior", sticky)
    a = harness.reference_agreement("two_moons", "report", 1, 600, 300, shift_sd=1.0)
    assert a["repeats"] == pytest.approx(0.5, abs=0.01) and a["ess"] < 210


def test_observations_with_failing_references_are_left_out_and_named(cache, monkeypatch):
    """A reference shifted off the posterior fails its check, is listed by
    failed_references, and its observation leaves every statistic; kept in, it would
    decide the mean and the worst observation (the control)."""
    task = harness.load_task("gaussian_linear")
    exact = task.reference_posterior
    _, xs = harness.observations("gaussian_linear", "report")

    def shifted_at_1(x_o, num, seed=0):
        draws = exact(x_o, num, seed=seed)
        return draws + 1.0 if torch.equal(x_o, xs[1]) else draws

    monkeypatch.setattr(task, "reference_posterior", shifted_at_1)
    for i in range(2):
        harness.reference("gaussian_linear", "report", i, 2000)
    assert harness.failed_references("gaussian_linear", "report", 3, 2000) == [1]  # #2 uncached

    cells = [{"seed": s, "c2st": [0.6, 0.99, 0.7], "train_cpu_s": 1.0, "sample_cpu_s": 0.0}
             for s in (0, 1)]  # fmt: skip
    kept = evaluation.summarise(cells, exclude=[1])
    assert kept["mean"] == pytest.approx(0.65) and kept["worst_obs"] == 2
    assert kept["excluded"] == [1]
    control = evaluation.summarise(cells)
    assert control["mean"] == pytest.approx(0.763, abs=1e-3) and control["worst_obs"] == 1
    row = evaluation.table({("gaussian_linear", 10, "npe"): kept})[2]
    assert row.startswith("| gaussian_linear (without #1) | 10 | npe | 2 | 0.650 |")
    assert bench_report._exclusion_note({("gaussian_linear", 10, "npe"): kept})[0].startswith(
        "Left out of every statistic of their task: gaussian_linear #1,"
    )
    with pytest.raises(SimgenError):
        evaluation.summarise(cells, exclude=[0, 1, 2])


def test_rows_of_different_simgen_versions_name_their_code():
    """Rows whose simgen cells ran different source hashes get a last column naming each
    row's versions; rows of one simgen version (sbi's version aside) keep the plain table."""
    s = {"seeds": 2, "mean": 0.6, "spread": 0.01, "worst_obs": 1, "worst": 0.7, "cpu_s": 1.0}
    s.update(cpu_total=2.0, seed_list=[0, 1])
    one = {
        ("t", 10, "npe"): {**s, "code": ["simgen-aaaaaaaaaaaa"]},
        ("u", 10, "npe"): {**s, "code": ["simgen-aaaaaaaaaaaa"]},
        ("u", 10, "sbi_npe"): {**s, "code": ["sbi-0.27.0"]},
    }
    assert not bench_report.mixed_code(one)  # the control: one simgen version
    mixed = {**one, ("u", 10, "npe"): {**s, "code": ["simgen-aaaaaaaaaaaa", "simgen-bbbbbbbbbbbb"]}}
    mixed[("v", 10, "npe")] = {"seeds": 0, "errors": []}
    assert bench_report.mixed_code(mixed)
    rows = evaluation.table(mixed, show_code=bench_report.mixed_code(mixed))
    assert rows[0].endswith("| code |") and rows[1].count("|") == rows[0].count("|")
    assert rows[2].endswith("| simgen-aaaaaaaaaaaa |")
    assert rows[3].endswith("| simgen-aaaaaaaaaaaa, simgen-bbbbbbbbbbbb |")
    assert rows[4].endswith("| sbi-0.27.0 |")
    assert rows[5].startswith("| v | 10 | npe | 0 | not run |")
    assert all(r.count("|") == rows[0].count("|") for r in rows)
    assert evaluation.table(one) == evaluation.table(one, show_code=False)
    assert "code" not in evaluation.table(one)[0]


def test_the_reference_command_computes_what_a_table_reads(cache, monkeypatch):
    """``python -m benchmarks.harness --references <set>`` draws, per task, the references a
    table reads (``reference_samples``: a capped task's cap), so the table finds them cached;
    ``--samples`` overrides it (the control: a different key, recomputed)."""
    monkeypatch.setitem(harness.REFERENCE_CAPS, "gaussian_linear", 300)
    run = ["harness", "--references", "report", "--tasks", "gaussian_linear"]
    monkeypatch.setattr(sys, "argv", run)
    harness.main()
    table = harness.reference_samples("gaussian_linear", harness.REFERENCE_SAMPLES, 200)
    assert table == 300
    assert all(
        harness.reference_is_cached("gaussian_linear", "report", i, table) for i in range(10)
    )
    assert not harness.reference_is_cached("gaussian_linear", "report", 0, 400)
    monkeypatch.setattr(sys, "argv", [*run, "--samples", "400"])
    harness.main()
    assert harness.reference_is_cached("gaussian_linear", "report", 0, 400)
