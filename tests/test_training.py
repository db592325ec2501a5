"""The training loop's own pieces: gradient clipping and best-weights snapshots."""

import torch
from torch import nn

from simgen.training import _clip_grad_norm_, _snapshot


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
