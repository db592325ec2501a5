r"""Fast sampling from zuko's masked autoregressive / coupling flows.

A masked autoregressive transform splits the features into groups :math:`G_0, \dots, G_{P-1}`
(``order``): the parameters of group :math:`g` depend only on the context :math:`c` and the
groups before it,

.. math::
    y_{G_g} = \tau\big(x_{G_g};\ \phi_g(x_{G_{<g}}, c)\big), \qquad
    x_{G_g} = \tau^{-1}\big(y_{G_g};\ \phi_g(x_{G_{<g}}, c)\big),

with :math:`\tau` a monotone univariate map (rational-quadratic spline for ``"nsf"``, affine for
``"maf"``) and :math:`\phi` one masked MLP. zuko inverts it by running the whole network and
building every feature's spline ``P`` times. For sampling ``n`` draws for each of ``B``
contexts, that wastes most of the work; this module computes exactly the same map but

* evaluates group 0 (context-only parameters) on the ``B`` contexts, not on ``n * B`` rows,
  and broadcasts the spline knots over the draws;
* adds the context part of the first layer, :math:`W_c c + b`, once per context;
* evaluates only the last-layer rows and builds only the splines of the group being inverted;
* walks the rows in cache-sized chunks.

A learned linear layer between transforms (zuko's :class:`~zuko.transforms.LULinearTransform`
behind an :class:`~zuko.lazy.UnconditionalTransform`, simgen's ``mixing="lu"``) is inverted
with :math:`W^{-1} = U^{-1} L^{-1}`, computed once per call by two triangular solves, and
applied to every draw as one matrix product.

Coupling ``"nsf"`` (``passes=2``) thus costs one ``n * B``-row network pass per transform
instead of two, and half the spline work per pass. The result equals zuko's inverse to
float rounding (``tests/test_fast_inverse.py``); ``benchmarks/bench_sbc.py`` measures it.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from zuko.flows.autoregressive import MaskedAutoregressiveTransform
from zuko.flows.core import Flow as ZukoFlow
from zuko.lazy import LazyComposedTransform, UnconditionalTransform
from zuko.nn import MaskedLinear
from zuko.transforms import LULinearTransform, MonotonicRQSTransform
from zuko.utils import unpack

__all__ = ["supports_fast_inverse", "sample_flow"]

#: The fast path pays off for coupling flows (2 passes); with one pass per feature (MAF,
#: autoregressive NSF) the per-group overhead outweighs the saving (measured on a 10-d MAF:
#: 1.9x slower), so those keep zuko's inverse.
MAX_PASSES = 2

#: Rows (draws x contexts) per chunk: small enough that the spline tensors stay in cache.
#: Measured on a quiet 2-core machine (SBC 1000 x 1000, `bench_sbc --wall`, 1 / 2 threads):
#: 2048: 12.4 / 8.5 s, 4096: 8.5-10.9 / 6.5-7.5 s, 8192: 13.5 / 6.7 s, 16384: 20 / 11-14 s.
CHUNK_ROWS = 4096


def _is_lu_layer(t: nn.Module) -> bool:
    """Whether ``t`` is a context-free LU linear layer."""
    return isinstance(t, UnconditionalTransform) and isinstance(t(), LULinearTransform)


def supports_fast_inverse(flow: nn.Module) -> bool:
    """Whether ``flow`` is a zuko coupling flow (masked transforms, <= 2 passes, plain MLPs),
    with or without LU linear layers between the transforms."""
    if not isinstance(flow, ZukoFlow) or not isinstance(flow.transform, LazyComposedTransform):
        return False
    for t in flow.transform.transforms:
        if _is_lu_layer(t):
            continue
        if not isinstance(t, MaskedAutoregressiveTransform) or t.order is None:
            return False
        if int(t.passes) > MAX_PASSES:  # fully autoregressive: zuko's full passes are faster
            return False
        linears = [m for m in t.hyper if isinstance(m, MaskedLinear)]
        if len(linears) < 2 or not all(
            isinstance(m, MaskedLinear) or not list(m.parameters()) for m in t.hyper
        ):
            return False
    return True


def _as_slice(index: Tensor) -> slice | Tensor:
    """A contiguous index as a slice (a view, no gather), else the index itself."""
    if len(index) and bool((index == torch.arange(index[0], index[0] + len(index))).all()):
        return slice(int(index[0]), int(index[0]) + len(index))
    return index


class _SplineInverse:
    r"""Inverse of zuko's :class:`~zuko.transforms.MonotonicRQSTransform`, doing only what
    inversion needs.

    With bin probabilities :math:`w = \mathrm{softmax}(\bar u_w)`, :math:`h = \mathrm{softmax}
    (\bar u_h)` (:math:`\bar u = u / (1 + |2u / \log s|)`, :math:`s` the minimum slope), the
    knots are :math:`x_k = B(2 \sum_{j<k} w_j - 1)`, :math:`y_k = B(2\sum_{j<k} h_j - 1)` and
    the inner knot slopes :math:`\delta_k = \exp(u_d / (1 + |u_d / \log s|))` (1 at the ends).
    For :math:`y` in bin :math:`k` (identity outside :math:`[-B, B]`), :math:`x = x_k + \xi
    (x_{k+1} - x_k)` where :math:`\xi` is the root in :math:`[0, 1]` of the rational-quadratic
    equation (Durkan et al., 2019, eq. 6-8), in the stable form :math:`\xi = 2c / (-b -
    \sqrt{b^2 - 4ac})`. Unlike zuko, it gathers the two knot slopes it needs instead of
    exponentiating and padding all of them, and builds no padded knot arrays.
    """

    def __init__(self, uw: Tensor, uh: Tensor, ud: Tensor, bound: float, slope: float):
        scale = abs(math.log(slope))
        self.bound, self.scale = bound, scale
        self.w = torch.softmax(uw / (1 + (2 / scale) * uw.abs()), dim=-1)
        self.h = torch.softmax(uh / (1 + (2 / scale) * uh.abs()), dim=-1)
        self.cw = torch.cumsum(self.w, dim=-1)
        self.ch = torch.cumsum(self.h, dim=-1)
        self.ud = ud
        self.bins = uw.shape[-1]

    def _slope(self, index: Tensor, at_end: Tensor, ud: Tensor) -> Tensor:
        u = ud.gather(-1, index)
        return torch.where(at_end, 1.0, torch.exp(u / (1 + u.abs() / self.scale)))

    def inv(self, y: Tensor) -> Tensor:
        shape = (*y.shape, self.bins)
        w, h, cw, ch = (t.expand(shape) for t in (self.w, self.h, self.cw, self.ch))
        ud = self.ud.expand((*y.shape, self.bins - 1))
        b2 = 2 * self.bound
        # Bin index: the number of inner knots below y (on the unit scale of the cumsums).
        unit = (y + self.bound) / b2
        k = (ch[..., :-1] < unit[..., None]).sum(dim=-1, keepdim=True)
        w_k, h_k = w.gather(-1, k), h.gather(-1, k)
        x1 = b2 * cw.gather(-1, k) - self.bound
        y1 = b2 * ch.gather(-1, k) - self.bound
        dx, dy = b2 * w_k, b2 * h_k
        x0, y0 = x1 - dx, y1 - dy
        d0 = self._slope((k - 1).clamp(min=0), k == 0, ud)
        d1 = self._slope(k.clamp(max=self.bins - 2), k == self.bins - 1, ud)
        s = dy / dx
        rel = y[..., None] - y0
        curv = d0 + d1 - 2 * s
        a = dy * (s - d0) + rel * curv
        b = dy * d0 - rel * curv
        c = -s * rel
        xi = 2 * c / (-b - (b * b - 4 * a * c).clamp(min=0).sqrt())
        x = (x0 + xi * dx).squeeze(-1)
        inside = (y > -self.bound) & (y < self.bound)
        return torch.where(inside, x, y)


def _spline_inverse_factory(univariate: Callable) -> Callable | None:
    """``_SplineInverse`` for zuko's RQS spline (plain or ``partial`` with bound/slope)."""
    func, kwargs = univariate, {}
    if isinstance(univariate, functools.partial) and not univariate.args:
        func, kwargs = univariate.func, dict(univariate.keywords)
    if func is not MonotonicRQSTransform or set(kwargs) - {"bound", "slope"}:
        return None
    defaults = inspect.signature(MonotonicRQSTransform).parameters
    bound = float(kwargs.get("bound", defaults["bound"].default))
    slope = float(kwargs.get("slope", defaults["slope"].default))
    return lambda uw, uh, ud: _SplineInverse(uw, uh, ud, bound, slope)


class _Inverter:
    """One transform's inverse for a block of ``b`` contexts, prepared once per block."""

    def __init__(self, t: MaskedAutoregressiveTransform, c: Tensor):
        self.univariate = _spline_inverse_factory(t.univariate) or t.univariate
        self.shapes = t.shapes
        features = t.order.shape[0]
        groups = [torch.nonzero(t.order.cpu() == g).squeeze(-1) for g in range(int(t.passes))]
        self.groups = [_as_slice(g) for g in groups]
        layers = list(t.hyper)
        first, last = layers[0], layers[-1]
        w_first = first.weight * first.mask
        w_last = last.weight * last.mask
        self.middle = layers[1:-1]
        # Context part of the first layer, once per context: (b, H).
        self.c_part = c @ w_first[:, features:].T + first.bias
        # Per group g: first-layer columns of the groups before it, last-layer rows of g.
        self.w_seen, self.w_out, self.b_out = [], [], []
        for g, group in enumerate(groups):
            seen = torch.cat(groups[:g]) if g else group[:0]
            self.w_seen.append(w_first[:, seen.to(c.device)].T.contiguous())
            rows = (group[:, None] * t.total + torch.arange(t.total)).reshape(-1).to(c.device)
            self.w_out.append(w_last[rows].T.contiguous())
            self.b_out.append(last.bias[rows])
        self.seen = [_as_slice(torch.cat(groups[:g])) if g else None for g in range(len(groups))]
        self.sizes = [len(g) for g in groups]
        # Group 0 depends on the context only: one spline per context, broadcast over draws.
        self.head = self._spline(self.c_part, 0)

    def _spline(self, h: Tensor, g: int):
        for layer in self.middle:
            h = layer(h)
        phi = torch.addmm(self.b_out[g], h.reshape(-1, h.shape[-1]), self.w_out[g])
        phi = phi.reshape(*h.shape[:-1], self.sizes[g], -1)
        return self.univariate(*unpack(phi, self.shapes))

    def inverse(self, y: Tensor) -> Tensor:
        """Invert ``y`` of shape ``(m, b, D)`` (``m`` draws for each of the ``b`` contexts)."""
        x = torch.empty_like(y)
        x[..., self.groups[0]] = self.head.inv(y[..., self.groups[0]])
        for g in range(1, len(self.groups)):
            h = x[..., self.seen[g]] @ self.w_seen[g] + self.c_part
            x[..., self.groups[g]] = self._spline(h, g).inv(y[..., self.groups[g]])
        return x


class _LinearInverter:
    r"""The inverse of an LU linear layer :math:`y = L U x`: :math:`x = y\, (W^{-1})^T`."""

    def __init__(self, t: UnconditionalTransform):
        lu = t()
        eye = torch.eye(lu.L.shape[-1], dtype=lu.L.dtype, device=lu.L.device)
        inv_l = torch.linalg.solve_triangular(lu.L, eye, upper=False)
        self.w_inv_t = torch.linalg.solve_triangular(
            lu.U, inv_l, upper=True, unitriangular=True
        ).T.contiguous()

    def inverse(self, y: Tensor) -> Tensor:
        return y @ self.w_inv_t


def _inverter(t: nn.Module, c: Tensor) -> _Inverter | _LinearInverter:
    return _LinearInverter(t) if _is_lu_layer(t) else _Inverter(t, c)


@torch.no_grad()
def sample_flow(flow: ZukoFlow, c: Tensor, num: int, chunk_rows: int = CHUNK_ROWS) -> Tensor:
    """``num`` draws from ``flow(c)`` for each of the ``B`` contexts ``c`` (``(B, C)``).

    The base noise is drawn exactly as zuko draws it (shape ``(num, B, D)``), so a seeded
    call gives zuko's samples up to float rounding.

    Returns:
        Samples of shape ``(num, B, D)``, in the flow's (standardised) space.
    """
    z = flow.base(c).expand(c.shape[:-1]).sample((num,))
    out = torch.empty_like(z)
    block = min(c.shape[0], chunk_rows)
    draws = max(1, chunk_rows // block)
    for c0 in range(0, c.shape[0], block):
        cols = slice(c0, c0 + block)
        inverters = [_inverter(t, c[cols]) for t in flow.transform.transforms]
        for d0 in range(0, num, draws):
            y = z[d0 : d0 + draws, cols]
            for inverter in reversed(inverters):
                y = inverter.inverse(y)
            out[d0 : d0 + draws, cols] = y
    return out
