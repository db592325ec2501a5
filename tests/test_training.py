"""The training loop: early stopping, learning-rate decay, gradient clipping, snapshots."""

import pytest
import torch
from torch import nn

from simgen.training import History, _clip_grad_norm_, _snapshot, fit, make_config


def _grads(seed: int, scale: float) -> list[nn.Parameter]:
    torch.manual_seed(seed)
    params = [
        nn.Parameter(torch.randn(5, 3)),
        nn.Parameter(torch.randn(3)),
        nn.Parameter(torch.randn(2)),
    ]
    for p in params[:2]:  # the last one has no gradient, as an unused parameter
        p.grad = scale * torch.randn_like(p)
    return params


def test_clip_grad_norm_matches_torch():
    """Same global-norm scaling as ``torch.nn.utils.clip_grad_norm_``, above and below."""
    for scale, max_norm in ((10.0, 1.0), (0.01, 5.0)):
        ours, theirs = _grads(0, scale), _grads(0, scale)
        _clip_grad_norm_(ours, max_norm)
        nn.utils.clip_grad_norm_(theirs, max_norm)
        for a, b in zip(ours, theirs):
            if b.grad is None:
                assert a.grad is None
            else:
                torch.testing.assert_close(a.grad, b.grad)
    clipped = _grads(1, 10.0)
    _clip_grad_norm_(clipped, 1.0)
    total = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in clipped[:2]]))
    assert abs(float(total) - 1.0) < 1e-4
    _clip_grad_norm_([nn.Parameter(torch.zeros(2))], 1.0)  # no gradients at all: a no-op


def test_snapshot_is_a_detached_copy():
    """Later training steps must not move the saved best weights (or buffers)."""
    net = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    saved = _snapshot(net)
    before = {k: v.clone() for k, v in saved.items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    net.train()(torch.randn(8, 2))  # updates the running statistics in place
    for key, value in saved.items():
        torch.testing.assert_close(value, before[key])
        assert not value.requires_grad
    net.load_state_dict(saved)
    torch.testing.assert_close(net[0].weight, before["0.weight"])


class _Scripted(nn.Module):
    """A loss whose validation value at epoch ``e`` is ``values[e]`` (the last one after)."""

    def __init__(self, values: list[float]):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.values, self.epoch = values, 0

    def forward(self, theta, x):
        if self.training:
            return (self.w - 1.0) ** 2
        value = self.values[min(self.epoch, len(self.values) - 1)]
        self.epoch += 1
        return torch.tensor(value)


def _run(values: list[float], monkeypatch, **options) -> tuple[History, list[float]]:
    """Train on the scripted losses; returns the history and the learning rate of each
    epoch's (single) optimizer step."""
    rates: list[float] = []

    class RecordingAdam(torch.optim.Adam):
        def step(self, closure=None):
            rates.append(self.param_groups[0]["lr"])
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "Adam", RecordingAdam)
    config = make_config(progress=False, batch_size=1000, seed=0, **options)
    history = fit(_Scripted(values), torch.zeros(20, 1), torch.zeros(20, 1), config)
    return history, rates


@pytest.mark.parametrize("patience", [1, 2, 3, 4, 7, 20])
@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_patience_counts_epochs_without_improvement(patience, ema, monkeypatch):
    """Three improving epochs, then none: training stops after exactly ``patience`` more."""
    history, _ = _run([5.0, 4.0, 3.0, 3.5], monkeypatch, patience=patience, ema=ema)
    assert history.stopped_early and history.best_epoch == 2
    assert history.epochs == 3 + patience


@pytest.mark.parametrize("patience", [1, 2, 3, 4, 6, 9])
def test_learning_rate_decays_only_on_stalls(patience, monkeypatch):
    """The rate halves after every ``max(patience // 2, 1)`` epochs in a row without
    improvement, and never after an improving epoch."""
    values = [5.0, 4.0, 4.5, 3.0, 3.5, 3.6, 2.0, 2.5, 2.6, 2.7, 1.0] + [9.0] * 30
    history, rates = _run(values, monkeypatch, patience=patience, max_epochs=40)
    every = max(patience // 2, 1)
    best, since = float("inf"), 0
    expected = [1e-3]
    for epoch in range(history.epochs - 1):  # the rate each next epoch trains with
        value = values[epoch]
        improved = value < best
        best, since = (value, 0) if improved else (best, since + 1)
        decay = not improved and since % every == 0
        expected.append(expected[-1] * (0.5 if decay else 1.0))
        if improved:
            assert rates[epoch + 1] == rates[epoch], f"decayed after improving epoch {epoch}"
    assert rates == pytest.approx(expected)
    if patience > 1:  # with patience 1 the first stall ends training
        assert min(rates) < 1e-3


def test_min_epochs_delays_stopping_not_counting(monkeypatch):
    history, _ = _run([5.0, 6.0], monkeypatch, patience=2, min_epochs=6, max_epochs=50)
    assert history.best_epoch == 0 and history.epochs == 6
