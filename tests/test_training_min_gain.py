"""``TrainConfig.min_gain_se``: new bests inside the validation noise do not restart patience."""

import math
import warnings

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from simgen.errors import ConfigError
from simgen.stopping import GainTest
from simgen.training import fit, make_config


@pytest.mark.parametrize("bad", [-0.5, math.nan, math.inf, True, "1", None])
def test_min_gain_se_rejects_bad_values(bad):
    with pytest.raises(ConfigError, match="min_gain_se"):
        make_config(min_gain_se=bad)


def test_gain_test_is_a_paired_z_test():
    """Known numbers: the gain over the reference in standard errors of the paired
    per-row difference, and the reference moving only on a pass."""
    one = torch.ones(4, dtype=torch.float64)
    test = GainTest(1.0)
    assert test(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64), one)  # first epoch
    # Differences 0.2, -0.1, 0.2, -0.1: mean 0.05, sd sqrt(0.09 / 3), se = sd / 2.
    values = torch.tensor([0.8, 2.1, 2.8, 4.1], dtype=torch.float64)
    assert not test(values, one)
    assert test.last_z == pytest.approx(0.05 / (math.sqrt(0.03) / 2))  # 0.577
    assert GainTest(0.5)(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64), one)
    half = GainTest(0.5)
    half(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64), one)
    assert half(values, one) and torch.equal(half.reference, values)
    # Every row better by the same 1e-6: no noise at all, so the tiny gain is real.
    assert test(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64) - 1e-6, one)
    assert not test(torch.full((4,), math.nan, dtype=torch.float64), one)


class _Gauss(nn.Module):
    """A conditional Gaussian's mean negative log-density (mean and log-sd linear in x)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Linear(1, 2)

    def forward(self, theta, x):
        out = self.net(x)
        mu, log_sd = out[:, :1], out[:, 1:]
        return (0.5 * ((theta - mu) / log_sd.exp()) ** 2 + log_sd).sum(-1).mean()


def _gauss_fit(**options):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 1, generator=g)
    theta = 2 * x + 0.5 * torch.randn(300, 1, generator=g)
    torch.manual_seed(0)
    loss = _Gauss()
    config = make_config(
        progress=False, seed=0, batch_size=32, learning_rate=1e-2, patience=4, max_epochs=200,
        **options,
    )  # fmt: skip
    return fit(loss, theta, x, config), loss


def _plain_patience_stop(losses: list[float], patience: int) -> int | None:
    """The epoch count at which the plain rule stops (a strict new minimum restarts the
    count; stop once ``patience`` epochs in a row brought none), or None if it never does."""
    best, since = math.inf, 0
    for epoch, value in enumerate(losses):
        since = 0 if value < best else since + 1
        best = min(best, value)
        if since >= patience:
            return epoch + 1
    return None


def _state(loss: nn.Module) -> list[Tensor]:
    return [p.detach().clone() for p in loss.parameters()]


def test_rule_off_is_the_plain_patience_loop():
    """With the rule off (the default, or ``min_gain_se=0``) the loop is plain early stopping:
    both spellings give bit-identical losses and weights, the stop falls where plain patience
    on the recorded validation losses puts it, and the weights kept are the best epoch's. The
    control: the same check on a run with the rule on at 3 se fails (it stops sooner)."""
    plain, plain_loss = _gauss_fit()
    zero, zero_loss = _gauss_fit(min_gain_se=0.0)
    assert plain.validation_loss == zero.validation_loss
    assert all(torch.equal(a, b) for a, b in zip(_state(plain_loss), _state(zero_loss)))
    assert plain.stopped_early and plain.epochs > 20
    assert plain.epochs == _plain_patience_stop(plain.validation_loss, 4)
    assert plain.best_epoch == int(np.argmin(plain.validation_loss))
    assert plain.best_validation_loss == min(plain.validation_loss)
    strict, _ = _gauss_fit(min_gain_se=3.0)
    assert strict.stopped_early
    assert _plain_patience_stop(strict.validation_loss, 4) is None


def test_loss_without_rows_is_tested_on_groups():
    """A loss with no per-row values is evaluated in groups whose size-weighted mean is the
    mean over the rows; the rule still ends training (not necessarily sooner: the learning
    rate then decays on the stalls the rule counts, which changes the path)."""
    off, _ = _gauss_fit()
    on, _ = _gauss_fit(min_gain_se=2.0)
    # Both train identically through the first epoch: the same weights, so the same loss.
    assert on.validation_loss[0] == pytest.approx(off.validation_loss[0], rel=1e-5)
    assert on.stopped_early and off.stopped_early


class _GaussRows(_Gauss):
    """The same loss with its per-row values exposed, so the rule tests rows."""

    def row_losses(self, theta, x):
        out = self.net(x)
        mu, log_sd = out[:, :1], out[:, 1:]
        return (0.5 * ((theta - mu) / log_sd.exp()) ** 2 + log_sd).sum(-1)


def test_rule_on_follows_the_same_path_and_stops_no_later():
    """The rule changes only when patience runs out: the validation losses of a run with it
    on are, bit for bit, the first epochs of the run with it off (same steps, same decays)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 1, generator=g)
    theta = 2 * x + 0.5 * torch.randn(400, 1, generator=g)
    runs = []
    for k in (0.0, 1.0, 3.0):
        torch.manual_seed(0)
        config = make_config(
            progress=False, seed=0, batch_size=32, learning_rate=1e-2, patience=4,
            max_epochs=300, min_gain_se=k,
        )  # fmt: skip
        runs.append(fit(_GaussRows(), theta, x, config))
    off = runs[0]
    for on in runs[1:]:
        assert on.stopped_early
        assert on.validation_loss == off.validation_loss[: on.epochs]
        assert on.best_epoch == int(np.argmin(on.validation_loss))
    assert runs[2].epochs <= runs[1].epochs <= off.epochs
    assert runs[2].epochs < off.epochs  # a bar of 3 se does cut this run


class _Rows(nn.Module):
    """Scripted validation rows: epoch ``e``'s per-row losses are ``rows[e]``, whose mean
    falls at every epoch; training steps minimise ``(w - 1)^2``."""

    def __init__(self, rows: np.ndarray):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.rows, self.epoch = torch.tensor(rows, dtype=torch.float32), 0

    def row_losses(self, theta, x):
        value = self.rows[min(self.epoch, len(self.rows) - 1)]
        self.epoch += 1
        return value

    def forward(self, theta, x):
        if self.training:
            return (self.w - 1.0) ** 2
        return self.row_losses(theta, x).mean()


def _script(noise: float, epochs: int = 80, n: int = 100, seed: int = 0) -> np.ndarray:
    """Per-row losses a_i + m(e) + noise * z_ei: a real fall 2 exp(-e/5) then 1e-4 an epoch;
    each epoch's z is centred, so the mean falls at every epoch exactly."""
    rng = np.random.default_rng(seed)
    a = rng.normal(0.0, 1.0, n)
    z = rng.normal(0.0, 1.0, (epochs, n))
    z -= z.mean(axis=1, keepdims=True)
    e = np.arange(epochs)[:, None]
    return a + 2.0 * np.exp(-e / 5.0) - 1e-4 * e + noise * z


def _expected_stop(rows: np.ndarray, k: float, patience: int) -> int:
    """Epochs run under the rule, recomputed here: paired z against the last passing epoch."""
    rows = rows.astype(np.float32).astype(np.float64)
    ref, since = rows[0], 0
    for epoch in range(1, len(rows)):
        d = ref - rows[epoch]
        se = d.std(ddof=1) / math.sqrt(len(d))
        if d.mean() > k * se:
            ref, since = rows[epoch], 0
        else:
            since += 1
        if since >= patience:
            return epoch + 1
    return len(rows)


def _run_rows(rows: np.ndarray, **options):
    loss = _Rows(rows)
    config = make_config(
        progress=False, batch_size=1000, seed=0, max_epochs=len(rows), patience=5, **options
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit(loss, torch.zeros(1000, 1), torch.zeros(1000, 1), config)


def test_tiny_late_gains_stop_training_with_the_rule_on():
    """Gains of 1e-4 nats an epoch under row noise 0.05 (paired se about 0.007) reset
    patience at every epoch with the rule off, and stop training with it on at the epoch
    the paired z-test gives; with the same tiny gains and no row noise they are real and
    training runs on (an absolute or unpaired threshold would stop here too)."""
    rows = _script(noise=0.05)
    off = _run_rows(rows)
    assert not off.stopped_early and off.epochs == len(rows)
    assert off.best_epoch == len(rows) - 1  # every epoch a new best
    on = _run_rows(rows, min_gain_se=1.0)
    expected = _expected_stop(rows, 1.0, 5)
    assert on.stopped_early and on.epochs == expected
    assert 15 < expected < 50  # the stop falls where the real fall has faded
    assert on.best_epoch == on.epochs - 1  # the weights kept: the true minimum
    strict = _run_rows(rows, min_gain_se=2.0)
    assert strict.epochs == _expected_stop(rows, 2.0, 5) <= on.epochs
    quiet = _run_rows(_script(noise=1e-6), min_gain_se=1.0)
    assert not quiet.stopped_early and quiet.epochs == len(rows)
