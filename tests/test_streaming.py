"""Training from a bank or dataset read in chunks (simgen.streaming): the set-up statistics
equal the in-memory ones, the split is fixed, the shuffle is seeded, the posterior is as good
as in memory, and training from a bank 4x a memory budget stays within that budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

import simgen
from simgen import NLE, NPE, NRE, read_bank, simulate
from simgen.errors import ConfigError, ShapeError, SimulationWarning
from simgen.estimators.registry import build_estimator
from simgen.estimators.transformed import integer_columns
from simgen.moments import CrossMoments, Moments
from simgen.streaming import Stream, StreamConfig
from simgen.training import TrainConfig, fit


def _failing(simulator):
    """The simulator with NaN rows wherever theta[:, 0] > 0.3 (about 17% of the prior)."""

    def run(theta, generator=None):
        x = simulator(theta, generator=generator)
        x[theta[:, 0] > 0.3] = float("nan")
        return x

    return run


@pytest.fixture(scope="module")
def bank(tmp_path_factory, linear2):
    """2,000 rows in chunks of 250, some of them failed."""
    path = tmp_path_factory.mktemp("streaming") / "run.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SimulationWarning)
        simulate(
            _failing(linear2.simulator), linear2.prior, 2000, seed=3, batch_size=250, bank=path
        )
    return path


def _kept(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SimulationWarning)
        sims = read_bank(path)
    return sims.theta, sims.x


def test_moments_merge_equals_the_whole_data():
    """Chunked float64 merges equal torch's statistics of the whole data, also for a mean
    10^4 times the spread (tolerance 1e-6 relative; float32 sums of squares lose it all)."""
    g = torch.Generator().manual_seed(0)
    data = 1e4 + torch.randn(5000, 3, generator=g, dtype=torch.float64)
    moments, cross = Moments(), CrossMoments()
    for part in data.split(333):
        moments.update(part)
        cross.update(part[:, :1], part[:, 1:])
    torch.testing.assert_close(moments.mean, data.mean(0), rtol=1e-12, atol=0)
    torch.testing.assert_close(moments.std, data.std(0), rtol=1e-6, atol=0)
    centred = data - data.mean(0)
    torch.testing.assert_close(cross.cxy, centred[:, 1:].T @ centred[:, :1], rtol=1e-6, atol=1e-6)
    # Control: the float32 one-pass formula the merge avoids is off by far more.
    d32 = data.float()
    naive = ((d32.square().mean(0) - d32.mean(0).square()) * 5000 / 4999).clamp_min(0).sqrt()
    assert (naive - data.std(0)).abs().max() > 1e-2


@pytest.mark.parametrize("family", ["nsf", "flow_matching"])
def test_setup_statistics_from_the_bank_equal_in_memory(bank, linear2, family):
    """z-scoring and the Gaussian baseline set up from three chunked passes over the bank
    equal those from read_bank's tensors (failed rows dropped in both; tolerance 1e-5)."""
    theta, x = _kept(bank)
    memory = build_estimator(family, 2, (2,))
    memory.fit_standardization(theta, x)
    streamed = build_estimator(family, 2, (2,))
    stream = Stream(bank)
    streamed.fit_standardization_chunks(stream.chunks)
    assert stream.kept == len(theta) and stream.dropped == 2000 - len(theta) > 0
    a, b = memory.state_dict(), streamed.state_dict()
    for key in a:
        if "standardizer" in key or key.startswith("baseline.") and key != "baseline.eigvecs":
            torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)
    if family == "flow_matching":
        ma, mb = memory.baseline, streamed.baseline
        cov = lambda m: (m.eigvecs * m.eigvals) @ m.eigvecs.T  # noqa: E731 - sign-free
        torch.testing.assert_close(cov(mb), cov(ma), rtol=1e-5, atol=1e-7)
        assert mb.non_gaussianity == pytest.approx(ma.non_gaussianity, rel=1e-6)
    # Control: statistics of a different sample (half the rows) differ beyond the tolerance.
    half = build_estimator(family, 2, (2,))
    half.fit_standardization(theta[::2], x[::2])
    assert (half.context_standardizer.scale - memory.context_standardizer.scale).abs().max() > 1e-4


def test_integer_columns_from_chunks_equal_in_memory():
    counts = torch.poisson(torch.full((600, 3), 4.0))
    data = torch.cat([counts[:, :2], counts[:, 2:] + 0.5], 1)  # column 2 is not integer
    data[:300, 1] = 7.0  # column 1 varies only across chunks
    assert integer_columns(data.split(100)) == integer_columns(data) == [0, 1]
    assert integer_columns(data[:300].split(100)) == [0]  # constant there: not dequantised


def _stream_batches(path, seed, config=None):
    stream = Stream(path, config)
    stream.chunks().__next__()  # a partial pass leaves the counts untouched
    g = torch.Generator().manual_seed(seed)
    split = stream.split(0.1, g)
    epochs = [list(stream.train_batches(split, 64, g, torch.device("cpu"))) for _ in range(2)]
    return stream, split, epochs


def test_split_is_fixed_and_shuffle_reproducible(bank):
    """Same seed, same batches; another seed, another order. Each epoch draws every training
    row at most once (all but the ragged rest), never a validation row, and the validation
    rows are the same set every time, about 10% of the rows."""
    config = StreamConfig(shuffle_bytes=600 * 16)  # several buffer fills per epoch
    stream, split, epochs = _stream_batches(bank, 0, config)
    _, _, again = _stream_batches(bank, 0, config)
    _, _, other = _stream_batches(bank, 1, config)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(epochs[0], again[0]))
    assert not torch.equal(epochs[0][0][0], other[0][0][0])
    assert not torch.equal(epochs[0][0][0], epochs[1][0][0])  # a new order each epoch
    validation = torch.cat([t for t, _ in stream.validation_chunks(split)])
    assert torch.equal(validation, torch.cat([t for t, _ in stream.validation_chunks(split)]))
    theta, _ = _kept(bank)
    for epoch in epochs:
        rows = torch.cat([t for t, _ in epoch])
        assert len(torch.unique(rows, dim=0)) == len(rows)
        assert len(theta) - len(validation) - len(rows) < 64
        both = torch.cat([rows, validation])
        assert len(torch.unique(both, dim=0)) == len(both)
    assert 0.07 < len(validation) / len(theta) < 0.13


def test_first_validation_pass_reads_only_chunks_no_training_pass_read(bank):
    """The validation rows a first training epoch holds are the rows a fresh read gives, and
    the first validation pass then reads only the chunks holding no training block. Control:
    with ``validation_bytes`` too small to hold them, it reads every validation chunk."""
    found = {}
    for name, config in (("held", StreamConfig()), ("read", StreamConfig(validation_bytes=1))):
        stream = Stream(bank, config)
        list(stream.chunks())
        g = torch.Generator().manual_seed(0)
        split = stream.split(0.1, g)
        list(stream.train_batches(split, 64, g, torch.device("cpu")))
        reads, source_read = [], stream.source.read
        stream.source.read = lambda i, read=source_read, reads=reads: reads.append(i) or read(i)
        theta = torch.cat([t for t, _ in stream.validation_chunks(split)])
        found[name] = theta[torch.argsort(theta[:, 0])]
        wanted = split.validation_chunks.tolist()
        if name == "held":
            assert sorted(reads) == sorted(set(wanted) - set(split.train_chunks.tolist()))
        else:
            assert reads == wanted and len(wanted) > 1
    assert len(found["held"]) > 100
    assert torch.equal(found["held"], found["read"])


def test_datasets_of_rows_and_of_batches_stream_like_tensors(linear2):
    theta = linear2.prior.sample((1000,))
    x = linear2.simulator(theta)
    x[5] = float("nan")
    rows = list(zip(theta, x))
    batches = [(theta[i : i + 100], x[i : i + 100]) for i in range(0, 1000, 100)]
    keep = torch.isfinite(x).all(1)
    want = Moments.of(x[keep])
    for data in (rows, batches):
        stream = Stream(data, StreamConfig(chunk_rows=128))
        got = Moments()
        for _, xs in stream.chunks():
            got.update(xs)
        assert stream.kept == 999 and stream.dropped == 1
        torch.testing.assert_close(got.std, want.std, rtol=1e-10, atol=0)


def test_fit_from_a_bank_for_npe_nle_nre(bank, linear2):
    x_o = linear2.x_o
    for method in (
        NPE(linear2.prior, transforms=2),
        NLE(linear2.prior, transforms=2),
        NRE(linear2.prior),
    ):
        with pytest.warns(SimulationWarning, match="skipped"):
            posterior = method.fit(bank=bank, max_epochs=2, patience=1, seed=0)
        assert posterior.history.epochs >= 1
        assert posterior.history.num_validation > 0 and posterior.history.num_train > 1000
        assert torch.isfinite(posterior.log_prob(torch.zeros(3, 2), x=x_o)).all()


def test_bad_calls_name_what_to_pass(bank, linear2, tmp_path):
    theta, x = _kept(bank)
    with pytest.raises(ConfigError, match="not both"):
        NPE(linear2.prior).fit(theta, x, bank=bank)
    with pytest.raises(ConfigError, match="needs the simulations"):
        NPE(linear2.prior).fit()
    with pytest.raises(ConfigError, match="not both"):
        fit(torch.nn.Identity(), theta, x, stream=Stream(bank))
    with pytest.raises(ConfigError, match="path or a dataset"):
        NRE(linear2.prior).fit(bank=3)
    with pytest.raises(ShapeError, match=r"\(theta, x\) pair"):
        NPE(linear2.prior).fit(bank=[theta[0]])
    with pytest.raises(ShapeError, match="1-parameter prior"):
        NPE(simgen.BoxUniform(torch.zeros(1), torch.ones(1))).fit(bank=bank)
    with pytest.raises(ConfigError, match="too few"):
        NPE(linear2.prior).fit(bank=Stream([(theta, x)], StreamConfig(min_blocks=1)))
    with pytest.raises(ConfigError, match="prefetch"):
        StreamConfig(prefetch=-1)


def _kl_to_truth(posterior, task, seed):
    """Mean over 5 observations of E_p[log p - log q], 500 exact draws each (nats)."""
    g = torch.Generator().manual_seed(seed)
    theta = task.prior.sample((5,))
    xs = task.simulator(theta, generator=g)
    total = 0.0
    for x in xs:
        exact = task.posterior(x)
        draws = exact.sample((500,))
        learned = posterior.log_prob(draws, x=x).detach()
        total += float((exact.log_prob(draws) - learned).mean())
    return total / len(xs)


@pytest.mark.slow
def test_streamed_posterior_is_as_good_as_in_memory(tmp_path, linear2):
    """NPE on the 2-D Gaussian linear task, 3,000 simulations, from memory and from their
    bank: both within 0.1 nats of the closed-form posterior (KL estimate), and within 0.07
    nats of each other. Control: the same check fails (> 0.3 nats) for a posterior trained on
    pairs whose x were shuffled against their theta."""
    path = tmp_path / "run.zarr"
    theta, x = simulate(linear2.simulator, linear2.prior, 3000, seed=5, batch_size=250, bank=path)
    options = dict(max_epochs=200, patience=15, seed=0, progress=False)
    memory = NPE(linear2.prior, transforms=3).fit(theta, x, **options)
    streamed = NPE(linear2.prior, transforms=3).fit(bank=path, **options)
    kl_memory, kl_stream = _kl_to_truth(memory, linear2, 7), _kl_to_truth(streamed, linear2, 7)
    assert kl_memory < 0.1 and kl_stream < 0.1, (kl_memory, kl_stream)
    assert abs(kl_memory - kl_stream) < 0.07
    mismatched = list(zip(theta, x[torch.randperm(len(x))]))
    control = NPE(linear2.prior, transforms=3).fit(bank=mismatched, **options)
    assert _kl_to_truth(control, linear2, 7) > 0.3


WRITER = """
import sys, torch, simgen
prior = simgen.BoxUniform(-torch.ones(2), torch.ones(2))
def simulator(theta, generator=None):
    noise = torch.randn(len(theta), {width}, generator=generator)
    return theta[:, :1] + theta[:, 1:] * torch.linspace(-1, 1, {width}) + 0.1 * noise
simgen.simulate(simulator, prior, {rows}, seed=0, batch_size=1000, bank=sys.argv[1])
"""

TRAINER = """
import json, sys, torch, simgen
from simgen.streaming import Stream
torch.set_num_threads(1)
prior = simgen.BoxUniform(-torch.ones(2), torch.ones(2))
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
# Library start-up is not data: torch imports torch._dynamo on the first Adam and zarr
# loads its codecs and starts its event loop on the first read; pay both first.
torch.optim.Adam([torch.zeros(1, requires_grad=True)])
stream = Stream(sys.argv[1])
stream.peek()
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS
    f.write("5")
if sys.argv[2] == "memory":  # the control: the same bank read into memory
    theta, x = simgen.read_bank(sys.argv[1])
    rows = len(x)
else:
    posterior = simgen.NPE(prior, transforms=2, hidden_features=(32, 32)).fit(
        bank=stream, max_epochs=1, seed=0, progress=False, batch_size=512
    )
    rows = posterior.history.num_train
print(json.dumps({"before": before, "peak": status("VmHWM"), "rows": rows}))
"""


def _peak_growth(path, how, env):
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(TRAINER), str(path), how],
        check=True,
        env=env,
        timeout=900,
        capture_output=True,
        text=True,
    )
    result = json.loads(child.stdout.strip().splitlines()[-1])
    return result["peak"] - result["before"], result["rows"]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_training_from_a_bank_4x_the_memory_budget_stays_within_it(tmp_path):
    """A 400 MB bank (100,000 rows of 1,000 float32) against a 100 MB budget: one epoch of
    NPE from it (set-up pass, training, validation) raises the child's peak RSS (VmHWM, reset
    once torch and zarr have started) by less than 100 MB. Control: reading the bank into
    memory in the same child raises it by more than 300 MB."""
    budget, rows, width = 100e6, 100_000, 1000
    assert rows * width * 4 >= 4 * budget
    path = tmp_path / "big.zarr"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    writer = WRITER.format(width=width, rows=rows)
    subprocess.run([sys.executable, "-c", writer, str(path)], check=True, env=env, timeout=600)
    growth, trained = _peak_growth(path, "stream", env)
    assert trained > 0.85 * rows
    assert growth < budget, f"peak RSS grew by {growth / 1e6:.0f} MB"
    # Control: the same measurement sees the bank read into memory.
    growth, _ = _peak_growth(path, "memory", env)
    assert growth > 3 * budget


def test_train_config_passes_through(bank, linear2):
    """TrainConfig's options reach the streamed loop (batch size, epochs, seed)."""
    config = TrainConfig(max_epochs=1, batch_size=100, seed=2, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = NPE(linear2.prior, transforms=1).fit(bank=bank, config=config)
        b = NPE(linear2.prior, transforms=1).fit(bank=bank, config=config)
    assert a.history.epochs == 1
    assert a.history.train_loss == b.history.train_loss
